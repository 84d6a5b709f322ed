//! What a first build compiles: the worker a newcomer starts builds no
//! simulator, and the simulator builds none of the example web app (only the
//! example's workflow library). Checked on the dependency graph (`cargo tree`
//! on the lockfile), so a dependency added by mistake fails here.

use std::process::Command;

/// The crates `package` builds (normal and build dependencies, this host).
fn crates_of(package: &str) -> Vec<String> {
    let args = ["-e", "normal,build", "--format", "{p}", "-p", package];
    tree(&args)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_greeter_worker_builds_no_simulator() {
    let crates = crates_of("retrace-greeter");
    assert!(crates.iter().any(|c| c == "retrace"), "{crates:?}");
    for simulator in ["retrace-sim", "madsim", "proptest", "insta"] {
        assert!(
            !crates.iter().any(|c| c == simulator),
            "retrace-greeter builds {simulator}"
        );
    }
}

/// What `cargo tree` prints for `args` (on the lockfile).
fn tree(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "--locked", "--prefix", "none"])
        .args(args)
        .output()
        .expect("cargo runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "cargo tree {args:?}: {stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_simulator_builds_the_example_workflows_but_not_the_example_web_app() {
    let crates = crates_of("retrace-sim");
    assert!(crates.iter().any(|c| c == "retrace-messages"), "{crates:?}");
    // The example's library without its `app` feature: no web server, page,
    // message table or outside API clients of its own.
    let features = [
        "-e",
        "features",
        "-p",
        "retrace-sim",
        "-i",
        "retrace-messages",
    ];
    let enabled = tree(&features);
    assert!(enabled.contains("retrace-messages v"), "{enabled}");
    assert!(
        !enabled.contains("feature \"app\""),
        "retrace-sim enables the web app: {enabled}"
    );
    // The check can fail: the app itself enables it.
    let app = tree(&[
        "-e",
        "features",
        "-p",
        "retrace-messages",
        "-i",
        "retrace-messages",
    ]);
    assert!(app.contains("feature \"app\""), "{app}");
}
