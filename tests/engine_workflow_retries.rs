//! Start delay and workflow retry policies end to end (client, service, two
//! workers, tokio's paused clock): a delayed run exists at once and gets its
//! first workflow task when the delay ends; a failed run under a retry policy
//! is followed by its next attempt, a new run of the same workflow id, after
//! the policy's backoff, until an attempt succeeds or the policy gives up; the
//! client follows the attempts to the last. Every test that runs workers ends
//! by replaying every history three ways.

mod common;

use common::engine::{StartTwo, TestEngine};
use retrace::activity::RetryPolicy;
use retrace::api::{ErrorCode, RunOutcome};
use retrace::client::{ClientError, StartOptions};
use retrace::env::RunStatus;
use retrace::history::{
    ContinueAsNewInitiator, EventKind, History, WorkflowExecutionFailed, WorkflowExecutionStarted,
};
use retrace::types::RetryState;
use retrace::workflow::{
    Workflow, WorkflowContext, WorkflowError, WorkflowRegistry, WorkflowResult,
};

/// Fails its first `input` attempts with a "Flaky" failure, then returns
/// the attempt that succeeded and the failure it was told its last
/// predecessor had.
struct Flaky;

impl Workflow for Flaky {
    const NAME: &'static str = "flaky";
    type Input = u32;
    type Output = (u32, Option<String>);
    async fn run(
        ctx: WorkflowContext,
        failing_attempts: u32,
    ) -> WorkflowResult<(u32, Option<String>)> {
        let info = ctx.info();
        if info.attempt <= failing_attempts {
            let message = format!("attempt {} fails", info.attempt);
            return Err(WorkflowError::application("Flaky", message));
        }
        let previous = info.continued_failure.as_ref().map(|f| f.message.clone());
        Ok((info.attempt, previous))
    }
}

/// Waits for one "go" signal and returns it.
struct Waiter;

impl Workflow for Waiter {
    const NAME: &'static str = "waiter";
    type Input = ();
    type Output = String;
    async fn run(ctx: WorkflowContext, _: ()) -> WorkflowResult<String> {
        ctx.signal::<String>("go").recv().await
    }
}

fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register::<Flaky>();
    registry.register::<Waiter>();
    registry
}

fn policy(maximum_attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .initial_interval_ms(1_000)
        .backoff_coefficient(2.0)
        .maximum_attempts(maximum_attempts)
}

fn started_of(history: &History) -> &WorkflowExecutionStarted {
    match &history.events()[0].kind {
        EventKind::WorkflowExecutionStarted(started) => started,
        other => panic!("a history starts with WorkflowExecutionStarted, not {other:?}"),
    }
}

/// The run's close, which must be `WorkflowExecutionFailed`.
fn failed_close(history: &History) -> &WorkflowExecutionFailed {
    match &history.events().last().expect("a history has events").kind {
        EventKind::WorkflowExecutionFailed(failed) => failed,
        other => panic!(
            "run {} closed with {}, not failed",
            history.run_id(),
            other.name()
        ),
    }
}

/// The runs of `workflow_id`, first to last, read by following each
/// close's `new_execution_run_id` (a retry's, or a cron workflow's next run).
async fn runs_of(engine: &TestEngine, workflow_id: &str, first_run_id: &str) -> Vec<History> {
    let client = engine.client();
    let mut histories = Vec::new();
    let mut run_id = Some(first_run_id.to_string());
    while let Some(id) = run_id {
        let history = client.history(workflow_id, Some(&id)).await.unwrap();
        run_id = match history.events().last().map(|e| &e.kind) {
            Some(EventKind::WorkflowExecutionCompleted(a)) => a.new_execution_run_id.clone(),
            Some(EventKind::WorkflowExecutionFailed(a)) => a.new_execution_run_id.clone(),
            _ => None,
        };
        histories.push(history);
    }
    histories
}

#[tokio::test(start_paused = true)]
async fn a_delayed_run_exists_at_once_and_its_first_workflow_task_waits_for_the_delay() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let options = StartOptions::new("delayed", "q").start_delay_ms(30_000);
    let handle = engine.client().start::<Waiter>(options, ()).await.unwrap();
    let started_at = engine.engine.env().now();
    engine.engine.env().sleep_ms(1_000).await;
    let early = engine.client().history("delayed", None).await.unwrap();
    assert_eq!(
        early.events().len(),
        1,
        "only the start is written: {early:?}"
    );
    assert_eq!(
        started_of(&early).first_workflow_task_backoff_ms,
        Some(30_000)
    );
    // A signal during the delay is recorded and waits for the first task.
    engine
        .client()
        .signal("delayed", None, "go", "now")
        .await
        .unwrap();
    engine.engine.env().sleep_ms(1_000).await;
    let signaled = engine.client().history("delayed", None).await.unwrap();
    let names: Vec<&str> = signaled.events().iter().map(|e| e.kind.name()).collect();
    assert_eq!(
        names,
        ["WorkflowExecutionStarted", "WorkflowExecutionSignaled"]
    );

    assert_eq!(handle.result().await.unwrap(), "now");
    let history = engine.client().history("delayed", None).await.unwrap();
    let scheduled = history
        .events()
        .iter()
        .find(|e| e.kind.name() == "WorkflowTaskScheduled")
        .unwrap();
    assert_eq!(
        scheduled.event_time.millis_since(started_at),
        30_000,
        "the first workflow task is scheduled when the delay ends"
    );
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_run_is_retried_as_a_new_run_after_the_backoff_until_an_attempt_succeeds() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let options = StartOptions::new("flaky", "q").retry(policy(5));
    let handle = engine.client().start::<Flaky>(options, 2).await.unwrap();
    let (attempt, previous) = handle.result().await.unwrap();
    assert_eq!(attempt, 3, "the client followed the attempts to the last");
    assert_eq!(previous.as_deref(), Some("attempt 2 fails"));

    let histories = runs_of(&engine, "flaky", &handle.run_id).await;
    assert_eq!(histories.len(), 3);
    let backoffs: Vec<Option<u64>> = histories
        .iter()
        .map(|h| started_of(h).first_workflow_task_backoff_ms)
        .collect();
    assert_eq!(
        backoffs,
        [None, Some(1_000), Some(2_000)],
        "1 s, then doubled"
    );
    for (number, (earlier, later)) in histories.iter().zip(&histories[1..]).enumerate() {
        let failed = failed_close(earlier);
        assert_eq!(failed.retry_state, Some(RetryState::InProgress));
        let started = started_of(later);
        assert_eq!(started.attempt, number as u32 + 2);
        assert_eq!(started.initiator, Some(ContinueAsNewInitiator::Retry));
        assert_eq!(
            started.continued_execution_run_id.as_deref(),
            Some(earlier.run_id())
        );
        assert_eq!(started.continued_failure.as_deref(), Some(&failed.failure));
        assert_eq!(started.input, started_of(earlier).input, "the same input");
        let waited = later.events()[1]
            .event_time
            .millis_since(earlier.events().last().unwrap().event_time);
        assert_eq!(waited, started.first_workflow_task_backoff_ms.unwrap());
    }
    let runs = engine.client().list_all(None).await.unwrap();
    let failed = runs
        .iter()
        .filter(|r| r.status == RunStatus::Failed)
        .count();
    assert_eq!(failed, 2, "each retried attempt stays failed: {runs:?}");
    let current = engine.client().describe("flaky", None).await.unwrap();
    assert_eq!(
        current.run_id,
        histories[2].run_id(),
        "the id names the last attempt"
    );
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 3);
}

#[tokio::test(start_paused = true)]
async fn a_retry_policy_stops_at_maximum_attempts_and_the_last_failure_is_the_outcome() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let options = StartOptions::new("doomed", "q").retry(policy(3));
    let handle = engine.client().start::<Flaky>(options, 10).await.unwrap();
    let error = handle.result().await.unwrap_err();
    let ClientError::Workflow(RunOutcome::Failed { failure }) = error else {
        panic!("the last attempt's failure is the outcome, not {error:?}");
    };
    assert_eq!(failure.message, "attempt 3 fails");
    let histories = runs_of(&engine, "doomed", &handle.run_id).await;
    assert_eq!(histories.len(), 3);
    let last = failed_close(&histories[2]);
    assert_eq!(last.retry_state, Some(RetryState::MaximumAttemptsReached));
    assert_eq!(last.new_execution_run_id, None);
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_non_retryable_failure_type_is_not_retried() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let options = StartOptions::new("fatal", "q").retry(policy(0).non_retryable("Flaky"));
    let handle = engine.client().start::<Flaky>(options, 1).await.unwrap();
    assert!(handle.result().await.is_err());
    let histories = runs_of(&engine, "fatal", &handle.run_id).await;
    assert_eq!(histories.len(), 1);
    let failed = failed_close(&histories[0]);
    assert_eq!(failed.retry_state, Some(RetryState::NonRetryableFailure));
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn retries_share_the_execution_timeout_and_stop_when_a_backoff_would_outlive_it() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let mut options = StartOptions::new("bounded", "q").retry(policy(0));
    // Backoffs of 1, 2, 4 s: the fourth attempt would start after 7 s.
    options.execution_timeout_ms = Some(5_000);
    let handle = engine.client().start::<Flaky>(options, 100).await.unwrap();
    assert!(handle.result().await.is_err());
    let histories = runs_of(&engine, "bounded", &handle.run_id).await;
    assert_eq!(
        histories.len(),
        3,
        "attempts at 0, 1 and 3 s; a 4 s backoff does not fit"
    );
    let last = failed_close(&histories[2]);
    assert_eq!(last.retry_state, Some(RetryState::Timeout));
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn bad_retry_policies_and_start_delays_are_refused_with_what_is_wrong() {
    let engine = TestEngine::new(registry()).await;
    let client = engine.client();
    let zero = StartOptions::new("bad", "q").retry(RetryPolicy::default().initial_interval_ms(0));
    let error = client.start::<Flaky>(zero, 1).await.unwrap_err();
    let ClientError::Service(refusal) = &error else {
        panic!("refused by the service, not {error:?}");
    };
    assert_eq!(refusal.code, ErrorCode::InvalidArgument);
    assert!(
        error
            .to_string()
            .contains("initial_interval_ms must be at least 1"),
        "{error}"
    );
    let far = StartOptions::new("bad", "q").start_delay_ms(u64::MAX);
    let error = client.start::<Flaky>(far, 1).await.unwrap_err();
    assert!(error.to_string().contains("start_delay_ms"), "{error}");
    let many = RetryPolicy {
        non_retryable_error_types: (0..1_000).map(|i| format!("T{i}")).collect(),
        ..RetryPolicy::default()
    };
    let error = client
        .start::<Flaky>(StartOptions::new("bad", "q").retry(many), 1)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("non_retryable_error_types"),
        "{error}"
    );
    assert!(
        client.list_all(None).await.unwrap().is_empty(),
        "nothing was started"
    );
}

/// Counts its runs through the cron schedule: returns one more than the
/// last run that completed, after `input` ms of work (a timer).
struct Tick;

impl Workflow for Tick {
    const NAME: &'static str = "tick";
    type Input = u64;
    type Output = u64;
    async fn run(ctx: WorkflowContext, work_ms: u64) -> WorkflowResult<u64> {
        ctx.sleep(std::time::Duration::from_millis(work_ms)).await?;
        let last = ctx.info().last_completion_result.clone();
        let count = last.and_then(|v| v.as_u64()).unwrap_or(0);
        Ok(count + 1)
    }
}

fn cron_registry() -> WorkflowRegistry {
    let mut registry = registry();
    registry.register::<Tick>();
    registry
}

/// When a run's first workflow task was due: its start plus its wait.
fn slot_of(history: &History) -> u64 {
    let wait_ms = started_of(history)
        .first_workflow_task_backoff_ms
        .unwrap_or(0);
    history.events()[0].event_time.as_millis() + wait_ms
}

#[tokio::test(start_paused = true)]
async fn a_cron_workflow_runs_once_per_slot_and_skips_the_slots_a_long_run_overlaps() {
    let engine = TestEngine::new(cron_registry()).await;
    let worker = engine
        .engine
        .worker("q")
        .workflows(cron_registry())
        .start_two();
    let options = StartOptions::new("ticker", "q").cron("@every 10s");
    // Each run works 15 s: it overlaps the next slot, which is skipped.
    let handle = engine
        .client()
        .start::<Tick>(options, 15_000)
        .await
        .unwrap();
    engine.engine.env().sleep_ms(75_000).await;
    engine
        .client()
        .cancel("ticker", None, "enough")
        .await
        .unwrap();
    engine.engine.env().sleep_ms(30_000).await;
    let runs = runs_of(&engine, "ticker", &handle.run_id).await;
    assert!(runs.len() >= 3, "{} runs", runs.len());
    let slots: Vec<u64> = runs.iter().map(slot_of).collect();
    for (number, (run, slot)) in runs.iter().zip(&slots).enumerate() {
        assert_eq!(slot % 10_000, 0, "run {number} starts on a slot");
        let started = started_of(run);
        assert_eq!(started.cron_schedule.as_deref(), Some("@every 10s"));
        if number > 0 {
            assert_eq!(
                started.initiator,
                Some(ContinueAsNewInitiator::CronSchedule)
            );
            assert_eq!(
                started.last_completion_result,
                Some(serde_json::json!(number as u64)),
                "run {number} is told what the run before it returned"
            );
        }
    }
    for (pair, window) in runs.windows(2).zip(slots.windows(2)) {
        let closed = pair[0].events().last().unwrap().event_time.as_millis();
        // The first slot after the close: never one the run overlapped.
        assert_eq!(window[1], (closed / 10_000 + 1) * 10_000);
        assert_eq!(window[1] - window[0], 20_000, "15 s of work skips one slot");
    }
    let last = runs.last().unwrap().events().last().unwrap();
    assert_eq!(
        last.kind.name(),
        "WorkflowExecutionCanceled",
        "cancel ends the cron"
    );
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_bad_cron_schedule_is_refused_with_what_is_wrong() {
    let engine = TestEngine::new(cron_registry()).await;
    let client = engine.client();
    let bad = StartOptions::new("bad", "q").cron("61 * * * *");
    let error = client.start::<Tick>(bad, 0).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("minute field: 61 is outside 0-59"),
        "{error}"
    );
    let delayed = StartOptions::new("bad", "q")
        .cron("@hourly")
        .start_delay_ms(5);
    let error = client.start::<Tick>(delayed, 0).await.unwrap_err();
    assert!(
        error.to_string().contains("cannot have a start delay"),
        "{error}"
    );
    assert!(
        client.list_all(None).await.unwrap().is_empty(),
        "nothing was started"
    );
}
