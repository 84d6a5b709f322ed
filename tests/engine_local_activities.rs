//! Local activities end to end (client, service, two workers, tokio's paused
//! clock): a local activity runs in the worker inside the workflow task, its
//! outcome recorded as a `LocalActivity` marker and never run again once
//! recorded; failures are retried inside the task while the backoff fits its
//! window, and on a durable timer after that. Every test ends by replaying
//! every history three ways.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::engine::{StartTwo, TestEngine, Workers};
use retrace::activity::{
    Activity, ActivityContext, ActivityOptions, ActivityResult, RetryPolicy, non_retryable,
    retryable,
};
use retrace::client::StartOptions;
use retrace::history::{EventKind, History};
use retrace::types::RetryState;
use retrace::workflow::{
    ActivityError, LOCAL_ACTIVITY_MARKER_NAME, LocalActivityOutcome, Replayer, Workflow,
    WorkflowContext, WorkflowRegistry, WorkflowResult,
};

/// Counts its attempts; fails (retryably) until attempt `input` succeeds,
/// then returns the attempt. An input of 0 fails for good.
#[derive(Clone, Default)]
struct Counted {
    runs: Arc<AtomicU32>,
}

impl Activity for Counted {
    const NAME: &'static str = "counted";
    type Input = u32;
    type Output = u32;
    fn options() -> ActivityOptions {
        let policy = RetryPolicy::default()
            .initial_interval_ms(100)
            .backoff_coefficient(1.0)
            .maximum_attempts(10);
        ActivityOptions::default()
            .start_to_close(Duration::from_secs(2))
            .retry(policy)
    }
    async fn run(&self, ctx: ActivityContext, succeed_at: u32) -> ActivityResult<u32> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        match ctx.attempt() {
            _ if succeed_at == 0 => Err(non_retryable("never works")),
            attempt if attempt < succeed_at => Err(retryable(format!("attempt {attempt} fails"))),
            attempt => Ok(attempt),
        }
    }
}

/// Runs `Counted` locally with the input, then once more with 1, and returns both.
struct TwoLocal;

impl Workflow for TwoLocal {
    const NAME: &'static str = "two_local";
    type Input = u32;
    type Output = (u32, u32);
    async fn run(ctx: WorkflowContext, succeed_at: u32) -> WorkflowResult<(u32, u32)> {
        let first = ctx.local_activity::<Counted>(succeed_at).await?;
        let second = ctx.local_activity::<Counted>(1).await?;
        Ok((first, second))
    }
}

/// Returns how its local activity failed, as the workflow sees it.
struct Failing;

impl Workflow for Failing {
    const NAME: &'static str = "failing";
    type Input = ();
    type Output = String;
    async fn run(ctx: WorkflowContext, (): ()) -> WorkflowResult<String> {
        match ctx.local_activity::<Counted>(0).await {
            Ok(attempt) => Ok(format!("succeeded at {attempt}")),
            Err(ActivityError::Failed {
                failure,
                retry_state,
                ..
            }) => Ok(format!("{retry_state:?}: {}", failure.message)),
            Err(other) => Ok(format!("other: {other}")),
        }
    }
}

fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register::<TwoLocal>();
    registry.register::<Failing>();
    registry
}

fn markers(history: &History) -> Vec<LocalActivityOutcome> {
    history
        .events()
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::MarkerRecorded(m) if m.marker_name == LOCAL_ACTIVITY_MARKER_NAME => {
                Some(LocalActivityOutcome::from_details(&m.details).expect("a marker decodes"))
            }
            _ => None,
        })
        .collect()
}

fn names(history: &History) -> Vec<&'static str> {
    history.events().iter().map(|e| e.kind.name()).collect()
}

/// Two workers with a local activity window of `window_ms`, and the count
/// of `Counted`'s attempts they run.
fn start_workers(engine: &TestEngine, window_ms: u64) -> (Workers, Arc<AtomicU32>) {
    let counted = Counted::default();
    let runs = counted.runs.clone();
    let workers = engine
        .engine
        .worker("q")
        .workflows(registry())
        .activity(counted)
        .options(|o| o.local_activity_window_ms = window_ms)
        .start_two();
    (workers, runs)
}

async fn run_two_local(
    succeed_at: u32,
    window_ms: u64,
) -> (TestEngine, History, (u32, u32), Arc<AtomicU32>) {
    let engine = TestEngine::new(registry()).await;
    let (workers, runs) = start_workers(&engine, window_ms);
    let options = StartOptions::new("local", "q");
    let handle = engine
        .client()
        .start::<TwoLocal>(options, succeed_at)
        .await
        .unwrap();
    let result = handle.result().await.unwrap();
    let history = handle.history().await.unwrap();
    workers.shutdown().await;
    (engine, history, result, runs)
}

#[tokio::test(start_paused = true)]
async fn a_local_activity_runs_in_the_workflow_task_and_is_recorded_as_a_marker() {
    let (engine, history, result, runs) = run_two_local(1, 5_000).await;
    assert_eq!(result, (1, 1));
    assert_eq!(
        names(&history),
        [
            "WorkflowExecutionStarted",
            "WorkflowTaskScheduled",
            "WorkflowTaskStarted",
            "WorkflowTaskCompleted",
            "MarkerRecorded",
            "MarkerRecorded",
            "WorkflowExecutionCompleted",
        ],
        "both local activities run in the first task, with no activity task"
    );
    let recorded = markers(&history);
    assert_eq!(recorded.len(), 2);
    assert_eq!((recorded[0].seq, recorded[1].seq), (1, 2));
    assert_eq!(recorded[0].result, Some(serde_json::json!(1)));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(engine.check_histories().await, 1);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "replay takes the markers and runs nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_attempt_is_retried_inside_the_task_while_the_backoff_fits_its_window() {
    let (engine, history, result, runs) = run_two_local(3, 5_000).await;
    assert_eq!(result, (3, 1));
    let recorded = markers(&history);
    assert_eq!(
        recorded.len(),
        2,
        "one marker per local activity, not per attempt"
    );
    assert_eq!(recorded[0].attempt, 3);
    assert!(
        !names(&history).contains(&"TimerStarted"),
        "{:?}",
        names(&history)
    );
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_backoff_past_the_window_waits_on_a_durable_timer_and_the_next_attempt_runs_after_it() {
    // A window of 50 ms cannot hold the 100 ms backoff.
    let (engine, history, result, runs) = run_two_local(3, 50).await;
    assert_eq!(result, (3, 1));
    let recorded = markers(&history);
    let attempts: Vec<(u32, Option<u64>)> =
        recorded.iter().map(|m| (m.attempt, m.backoff_ms)).collect();
    assert_eq!(
        attempts,
        [(1, Some(100)), (2, Some(100)), (3, None), (1, None)]
    );
    let timers = names(&history)
        .iter()
        .filter(|name| **name == "TimerFired")
        .count();
    assert_eq!(timers, 2, "{:?}", names(&history));
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_non_retryable_failure_reaches_the_workflow_at_once() {
    let engine = TestEngine::new(registry()).await;
    let (workers, runs) = start_workers(&engine, 5_000);
    let handle = engine
        .client()
        .start::<Failing>(StartOptions::new("failing", "q"), ())
        .await
        .unwrap();
    let said = handle.result().await.unwrap();
    assert_eq!(
        said,
        format!("{:?}: never works", RetryState::NonRetryableFailure)
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let history = handle.history().await.unwrap();
    assert_eq!(
        markers(&history)[0].retry_state,
        Some(RetryState::NonRetryableFailure)
    );
    workers.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn replaying_with_another_local_activity_order_is_a_nondeterminism_error() {
    let (_engine, history, _, _) = run_two_local(1, 5_000).await;
    /// Skips the first local activity the history recorded.
    struct Shortened;
    impl Workflow for Shortened {
        const NAME: &'static str = "two_local";
        type Input = u32;
        type Output = (u32, u32);
        async fn run(ctx: WorkflowContext, _: u32) -> WorkflowResult<(u32, u32)> {
            let only = ctx.local_activity::<Counted>(1).await?;
            Ok((only, only))
        }
    }
    let mut changed = WorkflowRegistry::new();
    changed.register::<Shortened>();
    let error = Replayer::new(changed).replay(&history).unwrap_err();
    assert!(
        matches!(error, retrace::workflow::ReplayError::NonDeterminism(_)),
        "{error}"
    );
    assert!(error.to_string().contains("RecordMarker"), "{error}");
}
