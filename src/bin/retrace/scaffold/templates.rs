//! The scaffolds' files: templates with `__NAME__` placeholders, filled in.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{Names, RetraceSource};

/// A file to write: its path in the project and its text.
pub type File = (PathBuf, String);

const CARGO_TOML: &str = include_str!("templates/Cargo.toml.tmpl");
const CARGO_CONFIG: &str = include_str!("templates/config.toml.tmpl");
const GITIGNORE: &str = include_str!("templates/gitignore.tmpl");
const README: &str = include_str!("templates/README.md.tmpl");
const LIB: &str = include_str!("templates/lib.rs.tmpl");
const MAIN: &str = include_str!("templates/main.rs.tmpl");
const WORKFLOWS_MOD: &str = include_str!("templates/workflows_mod.rs.tmpl");
const ACTIVITIES_MOD: &str = include_str!("templates/activities_mod.rs.tmpl");
const COMMON: &str = include_str!("templates/common.rs.tmpl");
const GREET: &str = include_str!("templates/greet.rs.tmpl");
const COMPOSE_GREETING: &str = include_str!("templates/compose_greeting.rs.tmpl");
const SIM_GREET: &str = include_str!("templates/sim_greet.rs.tmpl");
const WORKFLOW: &str = include_str!("templates/workflow.rs.tmpl");
const WORKFLOW_TEST: &str = include_str!("templates/workflow_test.rs.tmpl");
const ACTIVITY: &str = include_str!("templates/activity.rs.tmpl");
const ACTIVITY_TEST: &str = include_str!("templates/activity_test.rs.tmpl");

/// Fills `template`'s placeholders.
fn fill(template: &str, pairs: &[(&str, &str)]) -> String {
    let text = pairs
        .iter()
        .fold(template.to_string(), |text, (key, value)| {
            text.replace(key, value)
        });
    debug_assert!(!text.contains("__CRATE__") && !text.contains("__SNAKE__"));
    text
}

/// A dependency line for a crate of this repository.
fn dependency(name: &str, retrace: &RetraceSource, subdir: &str) -> anyhow::Result<String> {
    Ok(match retrace {
        RetraceSource::Path(root) => {
            let root = std::path::absolute(root)
                .with_context(|| format!("cannot resolve {}", root.display()))?;
            let path = root.join(subdir);
            let shown = path.to_string_lossy().replace('\\', "/");
            format!("{name} = {{ path = {shown:?} }}")
        }
        RetraceSource::Version(version) => format!("{name} = {version:?}"),
    })
}

/// A new project's files.
pub fn project(names: &Names, retrace: &RetraceSource) -> anyhow::Result<Vec<File>> {
    let retrace_dep = dependency("retrace", retrace, "")?;
    let sim_dep = dependency("retrace-sim", retrace, "sim")?;
    let pairs = [
        ("__PACKAGE__", names.typed.as_str()),
        ("__CRATE__", names.snake.as_str()),
        ("__RETRACE_DEP__", retrace_dep.as_str()),
        ("__RETRACE_SIM_DEP__", sim_dep.as_str()),
    ];
    let files = [
        ("Cargo.toml", CARGO_TOML),
        (".cargo/config.toml", CARGO_CONFIG),
        (".gitignore", GITIGNORE),
        ("README.md", README),
        ("src/lib.rs", LIB),
        ("src/main.rs", MAIN),
        ("src/workflows/mod.rs", WORKFLOWS_MOD),
        ("src/workflows/greet.rs", GREET),
        ("src/activities/mod.rs", ACTIVITIES_MOD),
        ("src/activities/compose_greeting.rs", COMPOSE_GREETING),
        ("tests/common/mod.rs", COMMON),
        ("tests/sim_greet.rs", SIM_GREET),
    ];
    let mut out: Vec<File> = files
        .iter()
        .map(|(path, template)| (PathBuf::from(path), fill(template, &pairs)))
        .collect();
    if let RetraceSource::Path(root) = retrace
        && let Ok(lock) = std::fs::read_to_string(root.join("Cargo.lock"))
    {
        // The versions retrace is tested with: the first build needs no
        // resolution and matches what the repository's own tests ran.
        out.push((PathBuf::from("Cargo.lock"), lock));
    }
    Ok(out)
}

/// A new workflow's files: its module and its simulation test.
pub fn workflow(names: &Names, crate_name: &str) -> Vec<File> {
    item(names, crate_name, "workflows", WORKFLOW, WORKFLOW_TEST)
}

/// A new activity's files: its module and its simulation test.
pub fn activity(names: &Names, crate_name: &str) -> Vec<File> {
    item(names, crate_name, "activities", ACTIVITY, ACTIVITY_TEST)
}

fn item(names: &Names, crate_name: &str, dir: &str, module: &str, test: &str) -> Vec<File> {
    let pairs = [
        ("__CRATE__", crate_name),
        ("__SNAKE__", names.snake.as_str()),
        ("__CAMEL__", names.camel.as_str()),
    ];
    let module_path = Path::new("src")
        .join(dir)
        .join(format!("{}.rs", names.snake));
    let test_path = Path::new("tests").join(format!("sim_{}.rs", names.snake));
    vec![
        (module_path, fill(module, &pairs)),
        (test_path, fill(test, &pairs)),
    ]
}
