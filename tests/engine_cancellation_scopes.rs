//! Cancellation scopes end to end (client, service, two workers, tokio's
//! paused clock): a scope cancels what was started in it and nothing else;
//! a shielded scope runs cleanup after the run is asked to cancel; scopes
//! inside a cancelled scope are cancelled unless shielded; work started in a
//! cancelled scope never reaches the history. Every test ends by replaying
//! every history three ways.

mod common;

use std::time::Duration;

use common::Compose;
use common::engine::{StartTwo, TestEngine};
use retrace::api::RunOutcome;
use retrace::client::StartOptions;
use retrace::history::History;
use retrace::workflow::{
    ActivityError, Workflow, WorkflowContext, WorkflowError, WorkflowRegistry, WorkflowResult, join,
};

const HOUR: Duration = Duration::from_secs(3_600);

/// Waits a day; once asked to cancel, runs a cleanup activity in a shielded
/// scope, then ends canceled.
struct CleansUp;
impl Workflow for CleansUp {
    const NAME: &'static str = "cleans_up";
    type Input = ();
    type Output = ();
    async fn run(ctx: WorkflowContext, (): ()) -> WorkflowResult<()> {
        let waited = ctx.sleep(24 * HOUR).await;
        assert_eq!(waited, Err(WorkflowError::Canceled));
        let cleanup = ctx.shielded_scope();
        let done: String = cleanup.ctx().activity::<Compose>("cleanup".into()).await?;
        assert_eq!(done, "cleanup!");
        Err(WorkflowError::Canceled)
    }
}

/// Cancels a scope with a long timer in it after a short root timer; the
/// run goes on and completes.
struct CancelsAScope;
impl Workflow for CancelsAScope {
    const NAME: &'static str = "cancels_a_scope";
    type Input = ();
    type Output = String;
    async fn run(ctx: WorkflowContext, (): ()) -> WorkflowResult<String> {
        let outer = ctx.cancellation_scope();
        let inner = outer.ctx().cancellation_scope();
        let shielded = outer.ctx().shielded_scope();
        let long = outer.ctx().sleep(HOUR);
        let nested = inner.ctx().sleep(HOUR);
        let kept = shielded.ctx().sleep(Duration::from_secs(2));
        let cancel_after_a_second = async {
            ctx.sleep(Duration::from_secs(1)).await?;
            outer.cancel();
            assert!(
                inner.is_cancelled(),
                "a scope inside reaches the inner scope"
            );
            assert!(!shielded.is_cancelled(), "a shielded scope is not reached");
            Ok::<(), WorkflowError>(())
        };
        let (long, nested, kept, cancelled) = join!(long, nested, kept, cancel_after_a_second);
        cancelled?;
        assert_eq!(long, Err(WorkflowError::Canceled));
        assert_eq!(nested, Err(WorkflowError::Canceled));
        kept?;
        let late = outer.ctx().activity::<Compose>("late".into()).await;
        assert_eq!(late, Err(ActivityError::Canceled), "never scheduled");
        ctx.sleep(Duration::from_secs(1)).await?;
        let done: String = ctx.activity::<Compose>("done".into()).await?;
        Ok(done)
    }
}

fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register::<CleansUp>().register::<CancelsAScope>();
    registry
}

/// An engine and two workers on queue "q" with the `compose` activity.
async fn engine_with_workers() -> (TestEngine, common::engine::Workers) {
    let engine = TestEngine::new(registry()).await;
    let workers = engine
        .engine
        .worker("q")
        .workflows(registry())
        .activity(Compose)
        .start_two();
    (engine, workers)
}

fn names(history: &History) -> Vec<&'static str> {
    history.events().iter().map(|e| e.kind.name()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_shielded_scope_runs_cleanup_after_the_run_is_asked_to_cancel() {
    let (engine, worker) = engine_with_workers().await;
    let handle = engine
        .client()
        .start::<CleansUp>(StartOptions::new("cleans-up", "q"), ())
        .await
        .unwrap();
    engine.engine.env().sleep_ms(1_000).await;
    handle.cancel("stop").await.unwrap();
    let outcome = handle.outcome().await.unwrap();
    assert!(
        matches!(outcome, RunOutcome::Canceled { .. }),
        "{outcome:?}"
    );
    let history = handle.history().await.unwrap();
    let names = names(&history);
    let position = |name| names.iter().position(|n| *n == name);
    let requested = position("WorkflowExecutionCancelRequested").unwrap();
    let scheduled = position("ActivityTaskScheduled").unwrap();
    let completed = position("ActivityTaskCompleted").unwrap();
    let canceled = position("WorkflowExecutionCanceled").unwrap();
    assert!(
        requested < scheduled && scheduled < completed && completed < canceled,
        "the cleanup ran after the cancel request and before the close: {names:?}"
    );
    assert!(names.contains(&"TimerCanceled"), "{names:?}");
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 1);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_scope_cancels_what_it_started_and_the_run_goes_on() {
    let (engine, worker) = engine_with_workers().await;
    let handle = engine
        .client()
        .start::<CancelsAScope>(StartOptions::new("scoped", "q"), ())
        .await
        .unwrap();
    assert_eq!(handle.result().await.unwrap(), "done!");
    let history = handle.history().await.unwrap();
    let names = names(&history);
    let count = |name| names.iter().filter(|n| **n == name).count();
    assert_eq!(
        count("TimerStarted"),
        5,
        "three in the scopes, two at the root: {names:?}"
    );
    assert_eq!(
        count("TimerCanceled"),
        2,
        "the outer and inner hour timers: {names:?}"
    );
    assert_eq!(
        count("TimerFired"),
        3,
        "the shielded and the root timers: {names:?}"
    );
    assert_eq!(
        count("ActivityTaskScheduled"),
        1,
        "the late activity never was: {names:?}"
    );
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 1);
}
