//! A failing fault plan shrinks to the faults that matter.

use retrace::client::StartOptions;
use retrace::workflow::{WorkflowContext, WorkflowRegistry};
use retrace_sim::{FaultKind, Simulation, Target};
use serde_json::json;

/// A planted failure: the check fails whenever the run saw both a service
/// crash and a worker crash, however many other faults happened.
fn planted() -> Simulation {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn("idle", |ctx: WorkflowContext, _: ()| async move {
        ctx.sleep(std::time::Duration::from_secs(20)).await?;
        Ok(())
    });
    Simulation::new("planted")
        .workflows(registry)
        .workers(3)
        .faults_max(20)
        .safety_ms(30_000)
        .scenario(|client| async move {
            client
                .start_by_name(StartOptions::new("idle", "sim"), "idle", json!(null))
                .await?;
            Ok(())
        })
        .check(|finished| {
            let crashed = |kind: &str| finished.faults.get(kind).copied().unwrap_or(0) > 0;
            if crashed("crash_service") && crashed("crash_worker") {
                return Err(
                    "planted failure: a service crash and a worker crash in one run".to_string(),
                );
            }
            Ok(())
        })
}

#[test]
fn a_planted_failure_in_a_20_fault_plan_shrinks_to_the_two_faults_that_matter() {
    let runner = planted().into_runner();
    let is_crash = |kind: &FaultKind| {
        matches!(
            kind,
            FaultKind::CrashService { .. } | FaultKind::CrashWorker { .. }
        )
    };
    let seed = (0..10_000)
        .find(|&seed| {
            let plan = runner.plan(seed);
            plan.faults.len() == 20
                && plan.faults.iter().filter(|f| !is_crash(&f.kind)).count() >= 10
        })
        .expect("some seed generates a 20-fault plan");
    let report = runner
        .check_seed(seed)
        .expect_err("the plan holds both kinds of crash");
    assert_eq!(report.original_faults, 20);
    let kinds: Vec<&'static str> = report
        .result
        .plan
        .faults
        .iter()
        .map(|f| f.kind.name())
        .collect();
    assert_eq!(kinds.len(), 2, "shrunk to {kinds:?}\n{report}");
    assert!(
        kinds.contains(&"crash_service") && kinds.contains(&"crash_worker"),
        "{report}"
    );
    assert_eq!(report.result.violations[0].invariant, "scenario check");
    let page = retrace_sim::failure_page(&report);
    assert_eq!(
        page.matches("class=\"bar fault\"").count(),
        2,
        "both crashes are drawn as bands"
    );
    let worker = report
        .result
        .plan
        .faults
        .iter()
        .find_map(|f| match f.kind {
            FaultKind::CrashWorker { worker, .. } => Some(worker),
            _ => None,
        })
        .expect("a worker crash");
    let worker_lane = format!("faults: {}", Target::Worker(worker).name());
    assert!(page.contains("faults: service"), "the service's lane");
    assert!(page.contains(&worker_lane), "the crashed worker's lane");
    if let Some(dir) = std::env::var_os("RETRACE_UI_SCREENSHOTS") {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        std::fs::write(dir.join("failure-crashes.html"), &page).expect("written");
    }
}
