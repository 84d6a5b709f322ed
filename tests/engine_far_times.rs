//! Times past year 9999 never reach a request handler: a run's timeouts over
//! 100 years are refused with a clear error, and a timer of any length in
//! workflow code (`ctx.sleep(Duration::MAX)`) waits until the end of year
//! 9999 instead of panicking every request that writes or reads the run.

mod common;

use std::time::Duration;

use common::engine::{StartTwo, TestEngine};
use retrace::api::ErrorCode;
use retrace::client::StartOptions;
use retrace::env::RunStatus;
use retrace::history::EventKind;
use retrace::workflow::{WorkflowContext, WorkflowRegistry};
use serde_json::json;

fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn("forever", |ctx: WorkflowContext, _: ()| async move {
        ctx.sleep(Duration::MAX).await?;
        Ok(())
    });
    registry
}

#[tokio::test(start_paused = true)]
async fn a_timer_of_duration_max_waits_until_year_9999_and_the_run_stays_readable() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let client = engine.client();
    client
        .start_by_name(StartOptions::new("w", "q"), "forever", json!(null))
        .await
        .unwrap();
    engine.engine.env().sleep_ms(30_000).await;
    let described = client.describe("w", None).await.unwrap();
    assert_eq!(described.status, RunStatus::Running);
    assert!(
        described.last_workflow_task_failure.is_none(),
        "{described:?}"
    );
    assert_eq!(described.pending_timers.len(), 1, "{described:?}");
    let history = client.history("w", None).await.unwrap();
    assert!(
        history
            .events()
            .iter()
            .any(|e| matches!(e.kind, EventKind::TimerStarted(_))),
        "the timer is recorded and the history reads back"
    );
    client.terminate("w", None, "done").await.unwrap();
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn an_execution_timeout_over_100_years_is_refused_naming_the_limit() {
    let engine = TestEngine::new(registry()).await;
    let client = engine.client();
    let mut options = StartOptions::new("w2", "q");
    options.execution_timeout_ms = Some(u64::MAX - 5);
    let error = client
        .start_by_name(options, "forever", json!(null))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::InvalidArgument), "{error}");
    assert!(
        error.to_string().contains("execution_timeout_ms")
            && error.to_string().contains("100 years"),
        "{error}"
    );
    assert!(
        client.list_all(None).await.unwrap().is_empty(),
        "nothing stored"
    );
}
