//! A cancel request lands wherever the workflow waits: on a signal as on a
//! timer or an activity. The workflow sees `WorkflowError::Canceled` and may
//! handle it; unhandled, the run closes as Canceled.

mod common;

use common::engine::{StartTwo, TestEngine};
use retrace::api::RunOutcome;
use retrace::client::StartOptions;
use retrace::workflow::{WorkflowContext, WorkflowError, WorkflowRegistry};
use serde_json::json;

fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn("waits", |ctx: WorkflowContext, _: ()| async move {
        let approved: bool = ctx.signal("approve").recv().await?;
        Ok(approved)
    });
    registry.register_fn("cleans_up", |ctx: WorkflowContext, _: ()| async move {
        match ctx.signal::<bool>("approve").recv().await {
            Ok(approved) => Ok(json!({ "approved": approved })),
            Err(WorkflowError::Canceled) => Ok(json!("cleaned up")),
            Err(other) => Err(other),
        }
    });
    registry
}

async fn cancel_while_waiting(workflow_type: &str) -> RunOutcome {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let client = engine.client();
    let run_id = client
        .start_by_name(StartOptions::new("w", "q"), workflow_type, json!(null))
        .await
        .unwrap();
    engine.engine.env().sleep_ms(2_000).await;
    client.cancel("w", None, "user asked").await.unwrap();
    let outcome = client
        .outcome_within("w", Some(&run_id), 60_000)
        .await
        .unwrap()
        .expect("the run closes within a minute of the cancel request");
    worker.shutdown().await;
    engine.check_histories().await;
    outcome
}

#[tokio::test(start_paused = true)]
async fn cancel_closes_a_run_that_waits_for_a_signal_as_canceled() {
    let outcome = cancel_while_waiting("waits").await;
    assert!(
        matches!(outcome, RunOutcome::Canceled { .. }),
        "{outcome:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_workflow_can_handle_the_cancellation_of_its_signal_wait() {
    let outcome = cancel_while_waiting("cleans_up").await;
    assert_eq!(
        outcome,
        RunOutcome::Completed {
            result: json!("cleaned up")
        }
    );
}

/// Waits for an activity, then (canceled or not) for a 10 s timer.
fn waits_for_work() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn(
        "work_then_sleep",
        |ctx: WorkflowContext, _: ()| async move {
            let done = ctx
                .activity_by_name("work", json!(null))
                .start_to_close(std::time::Duration::from_secs(10))
                .await;
            ctx.sleep(std::time::Duration::from_secs(10)).await?;
            Ok(done.is_ok())
        },
    );
    registry
}

#[test]
fn a_cancel_request_and_an_activity_close_in_one_batch_never_ask_to_cancel_the_closed_activity() {
    use retrace::history::HistoryBuilder;
    use retrace::workflow::{Command, WorkflowExecutor};
    let mut b = HistoryBuilder::new("work_then_sleep", json!(null));
    b.add_full_workflow_task();
    let scheduled = b.add_activity_scheduled("1", "work", json!(null));
    // The run is asked to cancel, and the activity completes, before the next
    // workflow task starts: one batch for the code.
    b.add_cancel_requested();
    b.add_activity_completed(scheduled, json!("done"));
    b.add_workflow_task_scheduled();
    b.add_workflow_task_started();
    let history = b.build();
    let mut executor = WorkflowExecutor::new(&waits_for_work(), "w", "r");
    let activation = executor
        .apply(history.events())
        .expect("the history applies");
    let commands = activation.commands.expect("a live workflow task");
    assert!(
        !commands
            .iter()
            .any(|c| matches!(c, Command::RequestCancelActivityTask { .. })),
        "the completed activity is resolved before the cancel: {commands:?}"
    );
}
