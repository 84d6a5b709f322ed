//! `retrace new` as a newcomer runs it: a project that passes its own
//! simulation tests on the first try, workflows and activities added to it
//! with theirs, and a simulation test that fails when the workflow is wrong.
//! Bad names and places get errors that say what was wrong.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::Context;

fn retrace(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_retrace"))
        .args(args)
        .output()
        .expect("runs retrace")
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn succeeds(args: &[&str]) -> String {
    let output = retrace(args);
    assert!(
        output.status.success(),
        "retrace {args:?}: {}",
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Fails, and says `why` on stderr.
fn fails_saying(args: &[&str], why: &str) {
    let output = retrace(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "retrace {args:?} succeeded: {}",
        text(&output)
    );
    assert!(
        stderr.contains(why),
        "retrace {args:?} should say {why:?}: {}",
        text(&output)
    );
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// The workspace's target directory: the project's build reuses what the
/// workspace's own build compiled.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    )
}

fn cargo_test(project: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .arg("test")
        .arg("--offline")
        .args(args)
        .current_dir(project)
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .context("runs cargo test in the new project")
}

fn new_project(dir: &Path) -> PathBuf {
    let project = dir.join("shop");
    let workspace = env!("CARGO_MANIFEST_DIR");
    let stdout = succeeds(&[
        "new",
        "project",
        "shop",
        "--dir",
        path(&project),
        "--retrace-path",
        workspace,
    ]);
    assert!(stdout.contains("next: cd"), "{stdout}");
    project
}

#[test]
fn a_new_project_with_a_new_workflow_and_activity_passes_its_simulation_tests_and_catches_a_wrong_output()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let project = new_project(dir.path());
    succeeds(&[
        "new",
        "workflow",
        "order_payment",
        "--project",
        path(&project),
    ]);
    succeeds(&[
        "new",
        "activity",
        "charge_card",
        "--project",
        path(&project),
    ]);
    let passed = cargo_test(&project, &[])?;
    let shown = text(&passed);
    assert!(passed.status.success(), "{shown}");
    for test in [
        "every_greet_run_completes_with_its_greeting_under_faults ... ok",
        "every_order_payment_run_completes_with_its_output_under_faults ... ok",
        "every_charge_card_call_returns_its_output_under_faults ... ok",
    ] {
        assert!(shown.contains(test), "{test} missing:\n{shown}");
    }
    // The workflow's simulation test checks its output: a wrong one fails it.
    let module = project.join("src/workflows/order_payment.rs");
    let code = std::fs::read_to_string(&module)?;
    let broken = code.replace(
        "OrderPaymentOutput { id: input.id }",
        "OrderPaymentOutput { id: input.id + \"!\" }",
    );
    assert_ne!(broken, code, "the template returns its input's id");
    std::fs::write(&module, broken)?;
    let failed = cargo_test(&project, &["--test", "sim_order_payment"])?;
    let shown = text(&failed);
    assert!(!failed.status.success(), "{shown}");
    assert!(shown.contains("order_payment-0 closed with"), "{shown}");
    assert!(
        shown.contains("RETRACE_SEED="),
        "a failure says how to reproduce it:\n{shown}"
    );
    Ok(())
}

#[test]
fn adding_a_workflow_twice_is_refused_and_force_replaces_it_without_registering_it_twice()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let project = new_project(dir.path());
    let at = path(&project);
    succeeds(&["new", "workflow", "refund", "--project", at]);
    fails_saying(
        &["new", "workflow", "refund", "--project", at],
        "refund.rs exists: pass --force",
    );
    succeeds(&["new", "workflow", "refund", "--project", at, "--force"]);
    succeeds(&[
        "new",
        "activity",
        "refund_card",
        "--project",
        &format!("{at}/src"),
    ]);
    let lib = std::fs::read_to_string(project.join("src/lib.rs"))?;
    assert_eq!(
        lib.matches("workflows::refund::Refund>").count(),
        1,
        "{lib}"
    );
    let workflows = std::fs::read_to_string(project.join("src/workflows/mod.rs"))?;
    assert_eq!(
        workflows.matches("pub mod refund;").count(),
        1,
        "{workflows}"
    );
    for file in ["src/main.rs", "tests/common/mod.rs"] {
        let registered = std::fs::read_to_string(project.join(file))?;
        assert!(
            registered.contains("shop::activities::refund_card::RefundCard"),
            "{file}: {registered}"
        );
    }
    Ok(())
}

#[test]
fn scaffolds_refuse_bad_names_and_places_saying_what_was_wrong() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty)?;
    fails_saying(
        &["new", "workflow", "refund", "--project", path(&empty)],
        "no Cargo.toml in",
    );
    let project = new_project(dir.path());
    let at = path(&project);
    fails_saying(
        &["new", "workflow", "Refund", "--project", at],
        "must start with a lowercase letter",
    );
    fails_saying(
        &["new", "activity", "type", "--project", at],
        "is a Rust keyword",
    );
    fails_saying(&["new", "activity", "bad-name", "--project", at], "has '-'");
    fails_saying(&["new", "project", "shop", "--dir", at], "is not empty");
    fails_saying(
        &[
            "new",
            "project",
            "serde",
            "--dir",
            path(&dir.path().join("x")),
        ],
        "cannot name a project",
    );
    let not_retrace = dir.path().join("plain");
    std::fs::create_dir_all(not_retrace.join("src"))?;
    std::fs::write(
        not_retrace.join("Cargo.toml"),
        "[package]\nname = \"plain\"\n",
    )?;
    fails_saying(
        &["new", "workflow", "refund", "--project", path(&not_retrace)],
        "does not depend on retrace",
    );
    let elsewhere = dir.path().join("nowhere");
    let elsewhere = path(&elsewhere);
    fails_saying(
        &[
            "new",
            "project",
            "shop2",
            "--dir",
            elsewhere,
            "--retrace-path",
            "/",
        ],
        "is not a checkout of retrace",
    );
    Ok(())
}
