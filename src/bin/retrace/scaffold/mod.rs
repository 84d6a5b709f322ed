//! `retrace new`: scaffolds a project, a workflow or an activity.
//!
//! Every scaffold compiles and comes with its simulation test: a project is a
//! worker binary, one workflow, one activity and a simulation of them; a
//! workflow or an activity added later brings its own simulation test and is
//! registered where the project registers the others (the worker binary and
//! the tests' shared `Simulation`), at the marker comments a project has.
//!
//! Nothing existing is overwritten without `--force`, and `--force` replaces
//! only the scaffold's own files: registrations are added once.

mod names;
mod templates;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;

pub use names::Names;

/// Marker line above which `retrace new workflow` registers a workflow.
pub const WORKFLOWS_MARKER: &str = "// retrace new workflow: registrations above this line";
/// Marker line above which `retrace new activity` registers an activity.
pub const ACTIVITIES_MARKER: &str = "// retrace new activity: registrations above this line";

#[derive(Subcommand, Debug)]
pub enum NewCommand {
    /// A new Cargo project: a worker binary, a workflow, an activity, a simulation test.
    Project {
        /// Package name (lowercase letters, digits, `_` and `-`; starts with a letter).
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Depend on the retrace crates at this checkout (default: the one this binary was built from).
        #[arg(long, conflicts_with = "retrace_version")]
        retrace_path: Option<PathBuf>,
        /// Depend on this version of the retrace crates from a registry instead.
        #[arg(long)]
        retrace_version: Option<String>,
        /// Write into a directory that is not empty, replacing the scaffold's files.
        #[arg(long)]
        force: bool,
    },
    /// A workflow with typed input and output, registered, with its simulation test.
    Workflow {
        /// Workflow name in snake_case (`order_payment` gives `OrderPayment`).
        name: String,
        /// The project (default: the current directory or the nearest parent with a Cargo.toml).
        #[arg(long)]
        project: Option<PathBuf>,
        /// Replace the workflow's files if they exist.
        #[arg(long)]
        force: bool,
    },
    /// An activity with typed input and output, registered, with its simulation test.
    Activity {
        /// Activity name in snake_case (`charge_card` gives `ChargeCard`).
        name: String,
        /// The project (default: the current directory or the nearest parent with a Cargo.toml).
        #[arg(long)]
        project: Option<PathBuf>,
        /// Replace the activity's files if they exist.
        #[arg(long)]
        force: bool,
    },
}

/// Where a new project takes the retrace crates from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetraceSource {
    /// A checkout of this repository (`retrace` at the root, `retrace-sim` in `sim/`).
    Path(PathBuf),
    /// A version from a registry.
    Version(String),
}

impl RetraceSource {
    /// The checkout this binary was built from, if it is still there; else
    /// this binary's version.
    pub fn this_build() -> RetraceSource {
        let checkout = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        if checkout.join("sim").join("Cargo.toml").is_file() {
            RetraceSource::Path(checkout)
        } else {
            RetraceSource::Version(env!("CARGO_PKG_VERSION").to_string())
        }
    }
}

/// A new project's options.
#[derive(Clone, Debug)]
pub struct ProjectOptions {
    pub name: String,
    pub dir: PathBuf,
    pub retrace: RetraceSource,
    pub force: bool,
}

/// What a new workflow or activity is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Workflow,
    Activity,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Workflow => "workflow",
            Kind::Activity => "activity",
        }
    }

    fn module_dir(self) -> &'static str {
        match self {
            Kind::Workflow => "workflows",
            Kind::Activity => "activities",
        }
    }
}

/// What a scaffold wrote.
#[derive(Debug, Default)]
pub struct Created {
    /// The project's root.
    pub root: PathBuf,
    /// Files written, relative to the root.
    pub written: Vec<PathBuf>,
    /// Existing files a line was added to, relative to the root.
    pub edited: Vec<PathBuf>,
    /// What the user still has to do, if anything.
    pub notes: Vec<String>,
}

impl fmt::Display for Created {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for path in &self.written {
            writeln!(f, "created {}", self.root.join(path).display())?;
        }
        for path in &self.edited {
            writeln!(f, "updated {}", self.root.join(path).display())?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

/// Runs a `retrace new` command and prints what it wrote.
pub fn run(command: NewCommand) -> anyhow::Result<()> {
    let created = match command {
        NewCommand::Project {
            name,
            dir,
            retrace_path,
            retrace_version,
            force,
        } => {
            let retrace = match (retrace_path, retrace_version) {
                (Some(path), _) => RetraceSource::Path(path),
                (None, Some(version)) => RetraceSource::Version(version),
                (None, None) => RetraceSource::this_build(),
            };
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let created = new_project(&ProjectOptions {
                name,
                dir,
                retrace,
                force,
            })?;
            let shown = created.root.display();
            println!("{created}next: cd {shown} && cargo test");
            return Ok(());
        }
        NewCommand::Workflow {
            name,
            project,
            force,
        } => new_item(Kind::Workflow, &name, &project_or_cwd(project)?, force)?,
        NewCommand::Activity {
            name,
            project,
            force,
        } => new_item(Kind::Activity, &name, &project_or_cwd(project)?, force)?,
    };
    print!("{created}");
    Ok(())
}

fn project_or_cwd(project: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match project {
        Some(project) => Ok(project),
        None => std::env::current_dir().context("cannot read the current directory"),
    }
}

/// Creates a new project in `options.dir`.
pub fn new_project(options: &ProjectOptions) -> anyhow::Result<Created> {
    let names = Names::of_package(&options.name)?;
    let root = options.dir.clone();
    if root.exists() && !options.force && !is_empty_dir(&root)? {
        bail!(
            "{} exists and is not empty: choose another --dir, or pass --force to write the scaffold's files into it",
            root.display()
        );
    }
    if let RetraceSource::Path(path) = &options.retrace
        && !path.join("sim").join("Cargo.toml").is_file()
    {
        bail!(
            "{} is not a checkout of retrace (no sim/Cargo.toml there): pass --retrace-path with the repository's root, or --retrace-version",
            path.display()
        );
    }
    let mut created = Created {
        root: root.clone(),
        ..Created::default()
    };
    for (path, text) in templates::project(&names, &options.retrace)? {
        write_file(&root, &path, &text)?;
        created.written.push(path);
    }
    Ok(created)
}

fn is_empty_dir(dir: &Path) -> anyhow::Result<bool> {
    let mut entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    Ok(entries.next().is_none())
}

fn write_file(root: &Path, path: &Path, text: &str) -> anyhow::Result<()> {
    let full = root.join(path);
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&full, text).with_context(|| format!("cannot write {}", full.display()))
}

/// Adds a workflow or an activity named `name` to the project at or above `start`.
pub fn new_item(kind: Kind, name: &str, start: &Path, force: bool) -> anyhow::Result<Created> {
    let names = Names::of_item(name)?;
    let root = find_project(start)?;
    let crate_name = retrace_crate_name(&root)?;
    let files = match kind {
        Kind::Workflow => templates::workflow(&names, &crate_name),
        Kind::Activity => templates::activity(&names, &crate_name),
    };
    if !force {
        for (path, _) in &files {
            if root.join(path).exists() {
                bail!(
                    "{} exists: pass --force to replace the {} {name}'s files",
                    root.join(path).display(),
                    kind.noun()
                );
            }
        }
    }
    let mut created = Created {
        root: root.clone(),
        ..Created::default()
    };
    for (path, text) in &files {
        write_file(&root, path, text)?;
        created.written.push(path.clone());
    }
    register(kind, &names, &crate_name, &mut created)?;
    Ok(created)
}

/// The nearest directory at or above `start` with a Cargo.toml.
fn find_project(start: &Path) -> anyhow::Result<PathBuf> {
    let start = std::path::absolute(start)
        .with_context(|| format!("cannot resolve {}", start.display()))?;
    if !start.is_dir() {
        bail!("{} is not a directory", start.display());
    }
    let mut dir = start.as_path();
    loop {
        if dir.join("Cargo.toml").is_file() {
            return Ok(dir.to_path_buf());
        }
        dir = match dir.parent() {
            Some(parent) => parent,
            None => bail!(
                "no Cargo.toml in {} or any parent: run this inside a Rust project (`retrace new project NAME` makes one)",
                start.display()
            ),
        };
    }
}

/// The project's own crate name (for `use NAME::...` in its tests), after
/// checking it depends on retrace.
fn retrace_crate_name(root: &Path) -> anyhow::Result<String> {
    let manifest_path = root.join("Cargo.toml");
    let manifest = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let depends = manifest.lines().any(|line| {
        line.trim_start().starts_with("retrace ") || line.trim_start().starts_with("retrace=")
    });
    if !depends {
        bail!(
            "{} does not depend on retrace: add it under [dependencies] first (`retrace new project NAME` makes a project that does)",
            manifest_path.display()
        );
    }
    if !root.join("src").join("lib.rs").is_file() {
        bail!(
            "{} has no src/lib.rs: workflows and activities live in the library so the worker and the tests share them",
            root.display()
        );
    }
    let name = manifest
        .lines()
        .skip_while(|line| line.trim() != "[package]")
        .find_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == "name").then(|| value.trim().trim_matches('"').to_string())
        })
        .with_context(|| format!("{} has no [package] name", manifest_path.display()))?;
    Ok(name.replace('-', "_"))
}

/// Declares the new module and registers it where the project registers
/// the others; says what to do by hand where a marker is missing.
fn register(
    kind: Kind,
    names: &Names,
    crate_name: &str,
    created: &mut Created,
) -> anyhow::Result<()> {
    let root = created.root.clone();
    let dir = kind.module_dir();
    let module_line = format!("pub mod {};", names.snake);
    let parent = PathBuf::from("src").join(dir).join("mod.rs");
    if add_line(&root, &parent, &module_line, None)? {
        created.edited.push(parent.clone());
    }
    let lib = PathBuf::from("src/lib.rs");
    if add_line(&root, &lib, &format!("pub mod {dir};"), None)? {
        created.edited.push(lib.clone());
    }
    let item = format!("{dir}::{}::{}", names.snake, names.camel);
    let registrations = match kind {
        Kind::Workflow => vec![(
            lib,
            WORKFLOWS_MARKER,
            format!("registry.register::<{item}>();"),
        )],
        Kind::Activity => vec![
            (
                PathBuf::from("src/main.rs"),
                ACTIVITIES_MARKER,
                format!(".activity({crate_name}::{item})"),
            ),
            (
                PathBuf::from("tests/common/mod.rs"),
                ACTIVITIES_MARKER,
                format!(".activity(|_| {crate_name}::{item})"),
            ),
        ],
    };
    for (path, marker, line) in registrations {
        if !root.join(&path).is_file() {
            created.notes.push(format!(
                "{} does not exist: register it yourself with `{line}`",
                path.display()
            ));
            continue;
        }
        if add_line(&root, &path, &line, Some(marker))? {
            created.edited.push(path);
        } else if !contains_marker(&root.join(&path), marker)? {
            created.notes.push(format!(
                "{} has no line `{marker}`: register it yourself with `{line}`",
                path.display()
            ));
        }
    }
    Ok(())
}

fn contains_marker(path: &Path, marker: &str) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.lines().any(|l| l.trim() == marker))
}

/// Adds `line` to `path` (created if missing) above `marker`, or at the end
/// without one; false if the line is already there or the marker is not.
fn add_line(root: &Path, path: &Path, line: &str, marker: Option<&str>) -> anyhow::Result<bool> {
    let full = root.join(path);
    let text = if full.exists() {
        std::fs::read_to_string(&full).with_context(|| format!("cannot read {}", full.display()))?
    } else {
        String::new()
    };
    if text.lines().any(|l| l.trim() == line.trim()) {
        return Ok(false);
    }
    let updated = match marker {
        None => {
            let mut updated = text.clone();
            if !updated.is_empty() && !updated.ends_with('\n') {
                updated.push('\n');
            }
            updated.push_str(line);
            updated.push('\n');
            updated
        }
        Some(marker) => {
            let Some(at) = text.lines().position(|l| l.trim() == marker) else {
                return Ok(false);
            };
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            let indent: String = lines[at]
                .chars()
                .take_while(|c| c.is_whitespace())
                .collect();
            lines.insert(at, format!("{indent}{line}"));
            lines.join("\n") + "\n"
        }
    };
    write_file(root, path, &updated)?;
    Ok(true)
}
