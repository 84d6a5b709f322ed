//! Workers redeployed with new workflow code in the middle of a simulation:
//! a change made without `ctx.patched(..)` is found by the campaign, the same
//! change behind `patched` passes.

use std::time::Duration;

use retrace::activity::{Activity, ActivityContext, ActivityOptions, ActivityResult};
use retrace::client::StartOptions;
use retrace::history::EventKind;
use retrace::workflow::{WorkflowContext, WorkflowRegistry};
use retrace_sim::Simulation;
use serde_json::json;

/// An activity that returns its name.
struct Step(&'static str);

macro_rules! step {
    ($ty:ident, $name:literal) => {
        struct $ty;
        impl Activity for $ty {
            const NAME: &'static str = $name;
            type Input = ();
            type Output = String;
            fn options() -> ActivityOptions {
                ActivityOptions::default().start_to_close(Duration::from_secs(5))
            }
            async fn run(&self, _ctx: ActivityContext, _: ()) -> ActivityResult<String> {
                Ok(Step($name).0.to_string())
            }
        }
    };
}
step!(Reserve, "reserve");
step!(Audit, "audit");
step!(Ship, "ship");

/// v1: reserve, wait 10 s, ship.
fn v1() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn("order", |ctx: WorkflowContext, _: ()| async move {
        let mut done = vec![ctx.activity::<Reserve>(()).await?];
        ctx.sleep(Duration::from_secs(10)).await?;
        done.push(ctx.activity::<Ship>(()).await?);
        Ok(done)
    });
    registry
}

/// v2: an audit step added after the reservation, behind `patched` or not.
fn v2(patched: bool) -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn("order", move |ctx: WorkflowContext, _: ()| async move {
        let mut done = vec![ctx.activity::<Reserve>(()).await?];
        if !patched || ctx.patched("audit") {
            done.push(ctx.activity::<Audit>(()).await?);
        }
        ctx.sleep(Duration::from_secs(10)).await?;
        done.push(ctx.activity::<Ship>(()).await?);
        Ok(done)
    });
    registry
}

fn upgraded(patched: bool) -> Simulation {
    Simulation::new(if patched { "patched" } else { "unpatched" })
        .workflows(v1())
        .upgrade_at(5_000, v2(patched))
        .activity(|_| Reserve)
        .activity(|_| Audit)
        .activity(|_| Ship)
        .safety_ms(20_000)
        .faults_max(2)
        .scenario(|client| async move {
            for i in 0..3 {
                let options = StartOptions::new(format!("order-{i}"), "sim");
                client.start_by_name(options, "order", json!(null)).await?;
                client.sleep_ms(1_000).await;
            }
            // Orders placed after the deploy run the new code from the start.
            client.sleep_ms(6_000).await;
            let options = StartOptions::new("order-late", "sim");
            client.start_by_name(options, "order", json!(null)).await?;
            Ok(())
        })
}

#[test]
fn a_change_without_patched_deployed_mid_run_is_found_as_non_determinism() {
    let runner = upgraded(false).into_runner();
    let report = (0..20)
        .find_map(|seed| runner.check_seed(seed).err())
        .expect("an unpatched change under running workflows fails");
    let violations = &report.result.violations;
    assert!(
        violations
            .iter()
            .any(|v| v.invariant == "determinism" && v.message.contains("\"audit\"")),
        "{report}"
    );
    let deploys = report.result.faults.get("deploy").copied().unwrap_or(0);
    assert!(deploys >= 1, "the redeploy is in the fault trace: {report}");
}

#[test]
fn the_same_change_behind_patched_keeps_every_invariant_over_100_seeds() {
    assert_eq!(upgraded(true).seeds(0..100).run(), 100);
}

#[test]
fn runs_started_after_the_deploy_take_the_new_branch_and_runs_before_it_keep_the_old_one() {
    let runner = upgraded(true).into_runner();
    let (mut old_path, mut new_path) = (0, 0);
    for seed in 0..10 {
        let result = runner.run_seed(seed);
        assert!(result.passed(), "seed {seed}: {:?}", result.violations);
        for history in result.histories.values() {
            let audited = history.events().iter().any(|e| {
                matches!(&e.kind, EventKind::ActivityTaskScheduled(a) if a.activity_type == "audit")
            });
            let marked = history.events().iter().any(|e| {
                matches!(&e.kind, EventKind::MarkerRecorded(m)
                    if m.marker_name == "core_patch" && m.details["patch_id"] == "audit")
            });
            assert_eq!(
                audited,
                marked,
                "seed {seed}: audit runs exactly when the patch is marked:\n{}",
                history.to_json()
            );
            if history.workflow_id() == "order-late" {
                assert!(
                    audited,
                    "seed {seed}: an order placed after the deploy runs v2"
                );
            }
            if audited {
                new_path += 1
            } else {
                old_path += 1
            }
        }
    }
    assert!(
        old_path > 0 && new_path > 0,
        "old {old_path}, new {new_path}"
    );
}
