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
