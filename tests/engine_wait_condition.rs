//! `ctx.wait_condition` end to end (client, service, two workers, tokio's
//! paused clock): a condition another branch makes true resumes its waiter
//! in the same workflow task; with a timeout it says which came first and
//! cancels the timer it no longer needs; a cancel request ends the wait.
//! Every test ends by replaying every history three ways.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::engine::{StartTwo, TestEngine};
use retrace::api::RunOutcome;
use retrace::client::StartOptions;
use retrace::history::History;
use retrace::workflow::{
    Workflow, WorkflowContext, WorkflowError, WorkflowRegistry, WorkflowResult, join,
};

/// Waits until signal "approve" has been heard by another branch; with a
/// timeout (ms, 0 for none) says whether the approval came first.
struct Approval;
impl Workflow for Approval {
    const NAME: &'static str = "approval";
    type Input = u64;
    type Output = String;
    async fn run(ctx: WorkflowContext, timeout_ms: u64) -> WorkflowResult<String> {
        let approved = Arc::new(AtomicBool::new(false));
        let (heard, seen) = (approved.clone(), approved);
        let listener = ctx.clone();
        let listen = async move {
            let by: String = listener.signal("approve").recv().await?;
            heard.store(true, Ordering::SeqCst);
            Ok::<String, WorkflowError>(by)
        };
        let condition = move || seen.load(Ordering::SeqCst);
        if timeout_ms == 0 {
            // The waiter is polled before the branch that makes it true.
            let (held, by) = join(ctx.wait_condition(condition), listen).await;
            held?;
            return Ok(format!("approved by {}", by?));
        }
        let timeout = Duration::from_millis(timeout_ms);
        let (held, by) = join(ctx.wait_condition_timeout(timeout, condition), listen).await;
        let first = if held? {
            "approval first"
        } else {
            "timeout first"
        };
        Ok(format!("{first}, approved by {}", by?))
    }
}

fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register::<Approval>();
    registry
}

fn names(history: &History) -> Vec<&'static str> {
    history.events().iter().map(|e| e.kind.name()).collect()
}

/// The events after the (only) signal, up to the close.
fn after_signal(history: &History) -> Vec<&'static str> {
    let names = names(history);
    let at = names
        .iter()
        .position(|n| *n == "WorkflowExecutionSignaled")
        .expect("a signal");
    names[at + 1..].to_vec()
}

async fn start(
    engine: &TestEngine,
    id: &str,
    timeout_ms: u64,
) -> retrace::client::WorkflowHandle<String> {
    engine
        .client()
        .start::<Approval>(StartOptions::new(id, "q"), timeout_ms)
        .await
        .unwrap()
}

/// The run's result, or a failure if it is still open a minute of service
/// time later (a waiter nobody woke).
async fn result_within_a_minute(engine: &TestEngine, id: &str) -> String {
    let outcome = engine
        .client()
        .outcome_within(id, None, 60_000)
        .await
        .unwrap();
    match outcome {
        Some(RunOutcome::Completed { result }) => result.as_str().unwrap_or_default().to_string(),
        other => panic!("{id} did not complete within a minute: {other:?}"),
    }
}

async fn sleep_ms(engine: &TestEngine, ms: u64) {
    engine.engine.env().sleep_ms(ms).await;
}

#[tokio::test(start_paused = true)]
async fn a_condition_another_branch_makes_true_resumes_its_waiter_in_the_same_workflow_task() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let handle = start(&engine, "plain", 0).await;
    sleep_ms(&engine, 100).await;
    handle.signal("approve", "ana").await.unwrap();
    assert_eq!(
        result_within_a_minute(&engine, "plain").await,
        "approved by ana"
    );
    let history = handle.history().await.unwrap();
    assert_eq!(
        after_signal(&history),
        [
            "WorkflowTaskScheduled",
            "WorkflowTaskStarted",
            "WorkflowTaskCompleted",
            "WorkflowExecutionCompleted"
        ],
        "the task that delivered the signal also saw the condition hold"
    );
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_condition_that_holds_before_its_timeout_cancels_the_timer() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let handle = start(&engine, "in-time", 60_000).await;
    sleep_ms(&engine, 100).await;
    handle.signal("approve", "bo").await.unwrap();
    assert_eq!(
        handle.result().await.unwrap(),
        "approval first, approved by bo"
    );
    let history = handle.history().await.unwrap();
    let names = names(&history);
    assert!(names.contains(&"TimerCanceled"), "{names:?}");
    assert!(!names.contains(&"TimerFired"), "{names:?}");
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_condition_that_does_not_hold_in_time_returns_false_when_its_timer_fires() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let handle = start(&engine, "late", 1_000).await;
    sleep_ms(&engine, 5_000).await;
    handle.signal("approve", "cy").await.unwrap();
    assert_eq!(
        handle.result().await.unwrap(),
        "timeout first, approved by cy"
    );
    let history = handle.history().await.unwrap();
    let names = names(&history);
    let fired = names.iter().position(|n| *n == "TimerFired");
    let signaled = names.iter().position(|n| *n == "WorkflowExecutionSignaled");
    assert!(fired < signaled && fired.is_some(), "{names:?}");
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_request_ends_a_condition_wait_with_canceled() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let handle = start(&engine, "canceled", 0).await;
    sleep_ms(&engine, 100).await;
    handle.cancel("no longer needed").await.unwrap();
    let outcome = handle.outcome().await.unwrap();
    assert!(
        matches!(outcome, RunOutcome::Canceled { .. }),
        "{outcome:?}"
    );
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 1);
}

/// Its condition indexes a list another branch empties: it panics in the
/// executor's re-check, after the signal.
struct Fragile;
impl Workflow for Fragile {
    const NAME: &'static str = "fragile";
    type Input = ();
    type Output = ();
    async fn run(ctx: WorkflowContext, (): ()) -> WorkflowResult<()> {
        let items = Arc::new(std::sync::Mutex::new(vec![1]));
        let (emptied, read) = (items.clone(), items);
        let listener = ctx.clone();
        let listen = async move {
            let _: String = listener.signal("empty").recv().await?;
            emptied.lock().unwrap().clear();
            Ok::<(), WorkflowError>(())
        };
        let condition = move || read.lock().unwrap()[0] == 0;
        let (held, heard) = join(ctx.wait_condition(condition), listen).await;
        held?;
        heard
    }
}

#[tokio::test(start_paused = true)]
async fn a_condition_that_panics_fails_the_workflow_task_and_the_worker_carries_on() {
    let mut registry = registry();
    registry.register::<Fragile>();
    let engine = TestEngine::new(registry.clone()).await;
    let worker = engine.engine.worker("q").workflows(registry).start_two();
    let client = engine.client();
    let fragile = client
        .start::<Fragile>(StartOptions::new("fragile", "q"), ())
        .await
        .unwrap();
    sleep_ms(&engine, 100).await;
    fragile.signal("empty", "now").await.unwrap();
    sleep_ms(&engine, 2_000).await;
    let history = fragile.history().await.unwrap();
    let names = names(&history);
    assert!(
        names.contains(&"WorkflowTaskFailed"),
        "the panic fails the task, at once: {names:?}"
    );
    let approval = start(&engine, "after", 0).await;
    approval.signal("approve", "dee").await.unwrap();
    let result = result_within_a_minute(&engine, "after").await;
    assert_eq!(result, "approved by dee", "the workers still serve runs");
    fragile.terminate("done").await.unwrap();
    worker.shutdown().await;
}
