//! The simulator earns its keep: it finds the classic bugs of durable
//! execution within a bounded number of seeds, and reports them in a form
//! that reproduces.

use std::time::Duration;

use retrace::activity::{Activity, ActivityContext, ActivityOptions, ActivityResult, retryable};
use retrace::client::StartOptions;
use retrace::workflow::{WorkflowContext, WorkflowRegistry};
use retrace_sim::{Accounts, Report, ServiceClient, Simulation};
use serde_json::json;

/// The classic bug: subtract 10 from a balance with no idempotency key.
struct DebitTen {
    bank: ServiceClient,
}

impl Activity for DebitTen {
    const NAME: &'static str = "debit_ten";
    type Input = ();
    type Output = ();
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(3))
    }
    async fn run(&self, ctx: ActivityContext, _: ()) -> ActivityResult<()> {
        let request = json!({"op": "debit", "account": "alice", "amount": 10});
        self.bank.call(&ctx, request).await.map_err(retryable)?;
        Ok(())
    }
}

fn first_failure(simulation: Simulation, seeds: std::ops::Range<u64>) -> (u64, Box<Report>) {
    let runner = simulation.into_runner();
    for seed in seeds.clone() {
        if let Err(report) = runner.check_seed(seed) {
            return (seed, report);
        }
    }
    panic!("no seed in {seeds:?} found the bug")
}

/// N in "... applied N times ..." (0 if the message does not say).
fn times_applied(message: &str) -> u64 {
    let Some((_, rest)) = message.split_once("applied ") else {
        return 0;
    };
    rest.split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_non_idempotent_activity_is_caught_as_a_double_effect_within_1000_seeds() {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn("pay", |ctx: WorkflowContext, _: ()| async move {
        ctx.activity::<DebitTen>(()).await?;
        Ok(())
    });
    let simulation = Simulation::new("non_idempotent_debit")
        .workflows(registry)
        .activity(|node| DebitTen {
            bank: node.service("bank"),
        })
        .service("bank", || Accounts::with([("alice", 1_000)]))
        .safety_ms(10_000)
        .scenario(|client| async move {
            for i in 0..5 {
                client
                    .start_by_name(
                        StartOptions::new(format!("pay-{i}"), "sim"),
                        "pay",
                        json!(null),
                    )
                    .await?;
            }
            Ok(())
        });
    let (seed, report) = first_failure(simulation, 0..1_000);
    let violation = &report.result.violations[0];
    assert_eq!(violation.invariant, "effects exactly once", "{report}");
    assert!(
        violation.message.contains("debit:alice") && times_applied(&violation.message) >= 2,
        "{report}"
    );
    assert!(
        violation.event_id.is_some(),
        "the report names the history position: {report}"
    );
    let text = report.to_string();
    assert!(
        text.contains(&format!("seed: {seed}"))
            && text.contains("swarm: ")
            && text.contains("fault plan ("),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "RETRACE_SEED={seed} cargo test -p retrace --test sim_catches_bugs"
        )),
        "{text}"
    );
    println!("found after {} seeds:{report}", seed + 1);
}

#[test]
fn a_workflow_that_branches_on_the_wall_clock_is_caught_as_non_determinism() {
    let mut registry = WorkflowRegistry::new();
    // The bug under test: workflow code reading the wall clock instead of ctx.now().
    #[allow(clippy::disallowed_methods)]
    registry.register_fn("clocky", |ctx: WorkflowContext, _: ()| async move {
        ctx.sleep(Duration::from_secs(1)).await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        if now.as_millis().is_multiple_of(2) {
            ctx.sleep(Duration::from_secs(1)).await?;
        }
        Ok(())
    });
    let simulation = Simulation::new("wall_clock")
        .workflows(registry)
        .safety_ms(5_000)
        .scenario(|client| async move {
            client
                .start_by_name(StartOptions::new("clocky", "sim"), "clocky", json!(null))
                .await?;
            Ok(())
        });
    let (seed, report) = first_failure(simulation, 0..1_000);
    let violation = &report.result.violations[0];
    assert_eq!(violation.invariant, "determinism", "{report}");
    assert!(
        violation.message.contains("non-determinism at event"),
        "{report}"
    );
    println!("found after {} seeds:{report}", seed + 1);
}
