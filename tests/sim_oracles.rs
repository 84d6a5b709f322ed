//! The simulator's built-in oracles on real runs: they hold on a correct
//! engine over many faulty seeds (no false alarms), and they catch a scenario
//! whose runs end in outcomes it did not declare.

use std::time::Duration;

use retrace::activity::{
    Activity, ActivityContext, ActivityOptions, ActivityResult, ActivityRunError, RetryPolicy,
};
use retrace::api::RunOutcome;
use retrace::client::StartOptions;
use retrace::env::Env;
use retrace::history::EventKind;
use retrace::types::TimeoutType;
use retrace::workflow::{WorkflowContext, WorkflowRegistry, join_all};
use retrace_sim::{Finished, Simulation};
use serde_json::json;

/// Works for 4 s without a heartbeat: only its 1 s heartbeat timeout (not
/// its 20 s start-to-close timeout) ends each attempt.
struct Silent {
    env: Env,
}

impl Activity for Silent {
    const NAME: &'static str = "silent";
    type Input = ();
    type Output = ();
    fn options() -> ActivityOptions {
        ActivityOptions::default()
            .start_to_close(Duration::from_secs(20))
            .heartbeat_timeout(Duration::from_secs(1))
            .retry(
                RetryPolicy::default()
                    .maximum_attempts(3)
                    .initial_interval_ms(500),
            )
    }
    async fn run(&self, _ctx: ActivityContext, _: ()) -> ActivityResult<()> {
        self.env.sleep_ms(4_000).await;
        Ok(())
    }
}

/// Fails its first two attempts (the second with a type the policy does not
/// retry when `fatal`), then returns the attempt that succeeded.
struct Flaky;

impl Activity for Flaky {
    const NAME: &'static str = "flaky";
    type Input = bool;
    type Output = u32;
    fn options() -> ActivityOptions {
        ActivityOptions::default()
            .start_to_close(Duration::from_secs(5))
            .retry(
                RetryPolicy::default()
                    .maximum_attempts(4)
                    .initial_interval_ms(300)
                    .backoff_coefficient(3.0)
                    .non_retryable("Fatal"),
            )
    }
    async fn run(&self, ctx: ActivityContext, fatal: bool) -> ActivityResult<u32> {
        match ctx.attempt() {
            1 => Err(ActivityRunError::typed("Transient", "try again")),
            2 if fatal => Err(ActivityRunError::typed("Fatal", "give up")),
            2 => Err(ActivityRunError::typed("Transient", "once more")),
            attempt => Ok(attempt),
        }
    }
}

fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn("silent", |ctx: WorkflowContext, _: ()| async move {
        // Every attempt times out; the workflow reports it and completes.
        Ok(ctx.activity::<Silent>(()).await.is_err())
    });
    registry.register_fn("flaky", |ctx: WorkflowContext, fatal: bool| async move {
        Ok(ctx.activity::<Flaky>(fatal).await?)
    });
    // One workflow task schedules three activities at once.
    registry.register_fn("fan_out", |ctx: WorkflowContext, _: ()| async move {
        let results = join_all((0..3).map(|_| ctx.activity::<Flaky>(false))).await;
        Ok(results.iter().filter(|r| r.is_ok()).count())
    });
    registry
}

fn simulation(name: &str, starts: &'static [(&'static str, serde_json::Value)]) -> Simulation {
    Simulation::new(name)
        .workflows(registry())
        .activity(|node| Silent { env: node.env() })
        .activity(|_| Flaky)
        .safety_ms(10_000)
        .scenario(move |client| async move {
            for (i, (workflow, input)) in starts.iter().enumerate() {
                let options = StartOptions::new(format!("{workflow}-{i}"), "sim");
                client
                    .start_by_name(options, workflow, input.clone())
                    .await?;
            }
            Ok(())
        })
}

/// Every attempt of the silent activity that the history records ended by
/// its heartbeat timeout.
fn heartbeat_timeouts_only(finished: &Finished) -> Result<(), String> {
    let silent = finished
        .histories
        .values()
        .filter(|h| h.workflow_id().starts_with("silent"));
    for history in silent {
        for event in history.events() {
            if let EventKind::ActivityTaskTimedOut(t) = &event.kind
                && t.timeout_type != TimeoutType::Heartbeat
            {
                return Err(format!("an attempt ended by {:?}", t.timeout_type));
            }
        }
    }
    Ok(())
}

#[test]
fn heartbeat_timeouts_retries_and_attempt_results_raise_no_false_alarm_over_100_faulty_seeds() {
    static STARTS: [(&str, serde_json::Value); 3] = [
        ("silent", json!(null)),
        ("flaky", json!(false)),
        ("flaky", json!(true)),
    ];
    let seeds = simulation("oracles_hold", &STARTS)
        .expect_outcomes(|workflow_id, outcome| match outcome {
            RunOutcome::Completed { .. } => true,
            // The fatal failure of attempt 2 is not retried; lost results
            // can use up the attempts of the others.
            RunOutcome::Failed { failure } => {
                workflow_id.starts_with("flaky")
                    && (failure.message.contains("give up")
                        || failure.message.contains("timed out"))
            }
            _ => false,
        })
        .check(heartbeat_timeouts_only)
        .seeds(0..100)
        .run();
    assert_eq!(seeds, 100);
}

#[test]
fn a_run_that_fails_is_a_violation_unless_the_scenario_expects_it() {
    static STARTS: [(&str, serde_json::Value); 1] = [("flaky", json!(true))];
    let runner = simulation("undeclared_failure", &STARTS)
        .faults_max(0)
        .into_runner();
    let report = runner
        .check_seed(0)
        .expect_err("a failed run is a violation");
    let invariants: Vec<&str> = report
        .result
        .violations
        .iter()
        .map(|v| v.invariant)
        .collect();
    assert_eq!(invariants, ["outcomes"], "{report}");
    assert!(
        report.result.violations[0].message.contains("flaky-0"),
        "{report}"
    );
    let declared = simulation("declared_failure", &STARTS)
        .faults_max(0)
        .expect_outcomes(|_, outcome| matches!(outcome, RunOutcome::Failed { .. }))
        .into_runner();
    assert!(declared.check_seed(0).is_ok());
}

#[test]
fn a_worker_with_room_for_one_activity_is_never_handed_more_over_50_faulty_seeds() {
    static STARTS: [(&str, serde_json::Value); 2] =
        [("fan_out", json!(null)), ("fan_out", json!(null))];
    let seeds = simulation("room_for_one", &STARTS)
        .worker_options(|options| options.activities_max = 1)
        .seeds(0..50)
        .run();
    assert_eq!(seeds, 50);
}
