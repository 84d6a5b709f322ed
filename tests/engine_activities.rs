//! End to end through client, service and two workers (in-process, tokio's paused
//! clock): every activity semantic, each in a test that fails if it breaks.
//! Every test ends by replaying every history to its recorded result.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::engine::{StartTwo, TestEngine};
use retrace::activity::{
    Activity, ActivityCancellationType, ActivityContext, ActivityOptions, ActivityResult,
    ActivityRunError, CancelReason, RetryPolicy, non_retryable, retryable,
};
use retrace::api::{ActivityTask, RunOutcome};
use retrace::client::StartOptions;
use retrace::env::{BoxFuture, Env};
use retrace::history::{Event, EventKind, History};
use retrace::types::{RetryState, TimeoutType};
use retrace::worker::WorkerObserver;
use retrace::workflow::{ActivityError, WorkflowContext, WorkflowError, WorkflowRegistry};
use serde_json::json;

type Body = Arc<
    dyn Fn(ActivityContext, String) -> BoxFuture<'static, ActivityResult<String>> + Send + Sync,
>;

/// An activity named "work" whose body each test scripts.
#[derive(Clone)]
struct Work(Body);

impl Activity for Work {
    const NAME: &'static str = "work";
    type Input = String;
    type Output = String;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, ctx: ActivityContext, input: String) -> ActivityResult<String> {
        (self.0)(ctx, input).await
    }
}

fn work<F, Fut>(f: F) -> Work
where
    F: Fn(ActivityContext, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ActivityResult<String>> + Send + 'static,
{
    Work(Arc::new(move |ctx, input| Box::pin(f(ctx, input))))
}

/// A workflow "run" that runs "work" once with the options its input names,
/// and returns its result or a description of its error.
fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn(
        "run",
        |ctx: WorkflowContext, options: ActivityOptions| async move {
            let result = ctx
                .activity::<Work>("job".to_string())
                .options(options)
                .await;
            Ok(match result {
                Ok(value) => value,
                Err(error) => format!("error: {error:?}"),
            })
        },
    );
    registry.register_fn(
        "cancellable",
        |ctx: WorkflowContext, wait: bool| async move {
            let cancellation = if wait {
                ActivityCancellationType::WaitCancellationCompleted
            } else {
                ActivityCancellationType::TryCancel
            };
            let options = ActivityOptions::default()
                .start_to_close(Duration::from_secs(600))
                .heartbeat_timeout(Duration::from_secs(5))
                .cancellation(cancellation);
            let result: Result<String, ActivityError> = ctx
                .activity::<Work>("job".to_string())
                .options(options)
                .await;
            Ok::<String, WorkflowError>(result?)
        },
    );
    registry
}

fn events_of<'h>(history: &'h History, event_type: &str) -> Vec<&'h Event> {
    history
        .events()
        .iter()
        .filter(|e| e.kind.name() == event_type)
        .collect()
}

fn started_attempt(history: &History) -> (u32, Option<String>) {
    let started = events_of(history, "ActivityTaskStarted");
    assert_eq!(
        started.len(),
        1,
        "an activity leaves one Started event however many attempts it took"
    );
    let EventKind::ActivityTaskStarted(a) = &started[0].kind else {
        unreachable!()
    };
    (
        a.attempt,
        a.last_failure.as_ref().map(|f| f.message.clone()),
    )
}

async fn run_once(engine: &TestEngine, id: &str, options: ActivityOptions) -> (String, History) {
    let client = engine.client();
    let input = serde_json::to_value(options).unwrap();
    let run_id = client
        .start_by_name(StartOptions::new(id, "q"), "run", input)
        .await
        .unwrap();
    let handle = client.handle::<String>(id, Some(&run_id));
    let result = handle.result().await.unwrap();
    (result, handle.history().await.unwrap())
}

#[tokio::test(start_paused = true)]
async fn schedule_to_start_timeout_fires_with_no_worker_and_is_not_retried() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let options = ActivityOptions::default()
        .task_queue("nobody-polls-this")
        .schedule_to_start(Duration::from_secs(2))
        .start_to_close(Duration::from_secs(10));
    let (result, history) = run_once(&engine, "s2s", options).await;
    assert!(
        result.contains("TimedOut") && result.contains("ScheduleToStart"),
        "{result}"
    );
    assert!(
        events_of(&history, "ActivityTaskStarted").is_empty(),
        "no attempt ever started"
    );
    let timed_out = events_of(&history, "ActivityTaskTimedOut");
    let EventKind::ActivityTaskTimedOut(a) = &timed_out[0].kind else {
        unreachable!()
    };
    assert_eq!(
        (a.timeout_type, a.retry_state, a.started_event_id),
        (TimeoutType::ScheduleToStart, RetryState::Timeout, None)
    );
    let scheduled_at = events_of(&history, "ActivityTaskScheduled")[0].event_time;
    assert!(
        timed_out[0].event_time.millis_since(scheduled_at) >= 2_000,
        "a timeout never fires early"
    );
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 1);
}

#[tokio::test(start_paused = true)]
async fn start_to_close_timeout_retries_and_the_next_attempt_completes() {
    let engine = TestEngine::new(registry()).await;
    let env = engine.engine.env().clone();
    let slow_first = work(move |ctx, _| {
        let env = env.clone();
        async move {
            if ctx.attempt() == 1 {
                env.sleep_ms(60_000).await;
            }
            Ok(format!("done on attempt {}", ctx.attempt()))
        }
    });
    let worker = engine
        .engine
        .worker("q")
        .workflows(registry())
        .activity(slow_first)
        .start_two();
    let options = ActivityOptions::default().start_to_close(Duration::from_secs(2));
    let (result, history) = run_once(&engine, "s2c", options).await;
    assert_eq!(result, "done on attempt 2");
    let (attempt, last_failure) = started_attempt(&history);
    assert_eq!(attempt, 2);
    assert_eq!(
        last_failure.as_deref(),
        Some("activity start-to-close timeout")
    );
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_closed_run_leaves_no_timer_queued_to_fire_later() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine
        .engine
        .worker("q")
        .workflows(registry())
        .activity(work(|_, input| async move { Ok(input) }))
        .start_two();
    let options = ActivityOptions::default()
        .start_to_close(Duration::from_secs(3_600))
        .schedule_to_close(Duration::from_secs(7_200));
    let (result, _) = run_once(&engine, "no-stale-timers", options).await;
    assert!(!result.is_empty());
    // The activity's and the workflow tasks' timeouts were queued while the run
    // was open; none of them has anything left to do once it closed.
    assert_eq!(engine.engine.service().queued_timers(), 0);
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn schedule_to_close_timeout_ends_the_retries() {
    let engine = TestEngine::new(registry()).await;
    let env = engine.engine.env().clone();
    let always_slow = work(move |_, _| {
        let env = env.clone();
        async move {
            env.sleep_ms(60_000).await;
            Ok("never".to_string())
        }
    });
    let worker = engine
        .engine
        .worker("q")
        .workflows(registry())
        .activity(always_slow)
        .start_two();
    let options = ActivityOptions::default()
        .start_to_close(Duration::from_secs(2))
        .schedule_to_close(Duration::from_millis(4_500));
    let (result, history) = run_once(&engine, "stc", options).await;
    assert!(result.contains("ScheduleToClose"), "{result}");
    let (attempt, _) = started_attempt(&history);
    assert_eq!(
        attempt, 2,
        "attempt 1 timed out at 2 s, attempt 2 started at 3 s, the whole activity ended at 4.5 s"
    );
    let timed_out = events_of(&history, "ActivityTaskTimedOut")[0];
    let scheduled = events_of(&history, "ActivityTaskScheduled")[0];
    assert!(timed_out.event_time.millis_since(scheduled.event_time) >= 4_500);
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn heartbeat_timeout_retries_and_the_details_reach_the_next_attempt() {
    common::init_logs();
    let engine = TestEngine::new(registry()).await;
    let env = engine.engine.env().clone();
    let resumable = work(move |ctx, _| {
        let env = env.clone();
        async move {
            if let Some(progress) = ctx.heartbeat_details::<u32>() {
                return Ok(format!(
                    "resumed at {progress} on attempt {}",
                    ctx.attempt()
                ));
            }
            ctx.heartbeat(&7u32);
            env.sleep_ms(600_000).await;
            Ok("hung".to_string())
        }
    });
    let worker = engine
        .engine
        .worker("q")
        .workflows(registry())
        .activity(resumable)
        .start_two();
    let options = ActivityOptions::default()
        .start_to_close(Duration::from_secs(60))
        .heartbeat_timeout(Duration::from_secs(1));
    let (result, history) = run_once(&engine, "hb", options).await;
    assert_eq!(result, "resumed at 7 on attempt 2");
    let (attempt, last_failure) = started_attempt(&history);
    assert_eq!(
        (attempt, last_failure.as_deref()),
        (2, Some("activity heartbeat timeout"))
    );
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_then_succeed() {
    let engine = TestEngine::new(registry()).await;
    let flaky = work(|ctx, _| async move {
        match ctx.attempt() {
            1 | 2 => Err(retryable(format!("attempt {} failed", ctx.attempt()))),
            n => Ok(format!("ok on attempt {n}")),
        }
    });
    let worker = engine
        .engine
        .worker("q")
        .workflows(registry())
        .activity(flaky)
        .start_two();
    let options = ActivityOptions::default()
        .start_to_close(Duration::from_secs(5))
        .retry(RetryPolicy::default());
    let (result, history) = run_once(&engine, "retry", options).await;
    assert_eq!(result, "ok on attempt 3");
    let (attempt, last_failure) = started_attempt(&history);
    assert_eq!(
        (attempt, last_failure.as_deref()),
        (3, Some("attempt 2 failed"))
    );
    let scheduled = events_of(&history, "ActivityTaskScheduled")[0].event_time;
    let completed = events_of(&history, "ActivityTaskCompleted")[0].event_time;
    assert!(
        completed.millis_since(scheduled) >= 3_000,
        "backoffs of 1 s then 2 s"
    );
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn maximum_attempts_end_the_retries_with_the_last_failure() {
    let engine = TestEngine::new(registry()).await;
    let failing =
        work(|ctx, _| async move { Err(retryable(format!("attempt {} failed", ctx.attempt()))) });
    let worker = engine
        .engine
        .worker("q")
        .workflows(registry())
        .activity(failing)
        .start_two();
    let options = ActivityOptions::default()
        .start_to_close(Duration::from_secs(5))
        .retry(
            RetryPolicy::default()
                .maximum_attempts(4)
                .initial_interval_ms(100),
        );
    let (result, history) = run_once(&engine, "max", options).await;
    assert!(
        result.contains("MaximumAttemptsReached") && result.contains("attempt 4 failed"),
        "{result}"
    );
    assert_eq!(started_attempt(&history).0, 4);
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn non_retryable_errors_fail_the_activity_on_the_first_attempt() {
    let engine = TestEngine::new(registry()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let fatal = work(move |_, input| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            Err(ActivityRunError::typed(
                "CardDeclined",
                format!("card declined for {input}"),
            ))
        }
    });
    let worker = engine
        .engine
        .worker("q")
        .workflows(registry())
        .activity(fatal)
        .start_two();
    let options = ActivityOptions::default()
        .start_to_close(Duration::from_secs(5))
        .retry(RetryPolicy::default().non_retryable("CardDeclined"));
    let (result, history) = run_once(&engine, "fatal", options).await;
    assert!(
        result.contains("NonRetryableFailure") && result.contains("card declined"),
        "{result}"
    );
    assert_eq!(started_attempt(&history).0, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn an_error_marked_non_retryable_by_the_activity_is_not_retried() {
    let engine = TestEngine::new(registry()).await;
    let fatal = work(|_, _| async move { Err(non_retryable("bad input")) });
    let worker = engine
        .engine
        .worker("q")
        .workflows(registry())
        .activity(fatal)
        .start_two();
    let (result, history) = run_once(
        &engine,
        "nr",
        ActivityOptions::default().start_to_close(Duration::from_secs(5)),
    )
    .await;
    assert!(result.contains("NonRetryableFailure"), "{result}");
    assert_eq!(started_attempt(&history).0, 1);
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_result_over_the_payload_limit_fails_the_activity_once_naming_the_limit() {
    let engine = TestEngine::new(registry()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let limit = retrace::history::PAYLOAD_BYTES_MAX_DEFAULT as usize;
    let huge = work(move |_, _| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move { Ok("x".repeat(limit)) }
    });
    let worker = engine
        .engine
        .worker("q")
        .workflows(registry())
        .activity(huge)
        .start_two();
    let options = ActivityOptions::default().start_to_close(Duration::from_secs(5));
    let (result, history) = run_once(&engine, "huge", options).await;
    assert!(
        result.contains("NonRetryableFailure")
            && result.contains("PayloadTooLarge")
            && result.contains(&format!("more than the limit of {limit} bytes")),
        "{result}"
    );
    assert_eq!(started_attempt(&history).0, 1, "not retried");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(events_of(&history, "ActivityTaskCompleted").is_empty());
    assert!(events_of(&history, "ActivityTaskTimedOut").is_empty());
    worker.shutdown().await;
    engine.check_histories().await;
}

/// An activity that heartbeats until it is asked to stop, and records why.
fn wait_for_cancel(env: Env, seen: Arc<Mutex<Option<CancelReason>>>) -> Work {
    work(move |ctx, _| {
        let (env, seen) = (env.clone(), seen.clone());
        async move {
            loop {
                ctx.heartbeat(&"waiting");
                if let Some(reason) = ctx.cancel_reason() {
                    *seen.lock().unwrap() = Some(reason);
                    return Err(ActivityRunError::Canceled {
                        details: Some(json!("stopped")),
                    });
                }
                env.sleep_ms(500).await;
            }
        }
    })
}

async fn cancel_while_running(wait: bool) -> (History, Option<CancelReason>, RunOutcome) {
    let engine = TestEngine::new(registry()).await;
    let seen = Arc::new(Mutex::new(None));
    let activity = wait_for_cancel(engine.engine.env().clone(), seen.clone());
    let worker = engine
        .engine
        .worker("q")
        .workflows(registry())
        .activity(activity)
        .start_two();
    let client = engine.client();
    let run_id = client
        .start_by_name(StartOptions::new("c", "q"), "cancellable", json!(wait))
        .await
        .unwrap();
    engine.engine.env().sleep_ms(3_000).await;
    assert_eq!(
        client.describe("c", None).await.unwrap().pending_activities[0].state,
        "Started"
    );
    client.cancel("c", None, "user asked").await.unwrap();
    let outcome = client.outcome("c", Some(&run_id)).await.unwrap();
    engine.engine.env().sleep_ms(10_000).await;
    let history = client.history("c", None).await.unwrap();
    worker.shutdown().await;
    engine.check_histories().await;
    let reason = *seen.lock().unwrap();
    (history, reason, outcome)
}

#[tokio::test(start_paused = true)]
async fn cancel_during_an_activity_closes_the_run_as_canceled_at_once() {
    let (history, reason, outcome) = cancel_while_running(false).await;
    assert!(
        matches!(outcome, RunOutcome::Canceled { .. }),
        "{outcome:?}"
    );
    let names: Vec<&str> = history.events().iter().map(|e| e.kind.name()).collect();
    let tail = &names[names.len() - 6..];
    assert_eq!(
        tail,
        [
            "WorkflowExecutionCancelRequested",
            "WorkflowTaskScheduled",
            "WorkflowTaskStarted",
            "WorkflowTaskCompleted",
            "ActivityTaskCancelRequested",
            "WorkflowExecutionCanceled"
        ]
    );
    assert!(
        reason.is_some(),
        "the running activity learned through its heartbeat that it should stop"
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_waiting_for_the_activity_records_its_cancellation_before_the_close() {
    let (history, reason, outcome) = cancel_while_running(true).await;
    assert!(
        matches!(outcome, RunOutcome::Canceled { .. }),
        "{outcome:?}"
    );
    let names: Vec<&str> = history.events().iter().map(|e| e.kind.name()).collect();
    let canceled = names
        .iter()
        .position(|n| *n == "ActivityTaskCanceled")
        .expect("the activity acknowledged");
    let closed = names
        .iter()
        .position(|n| *n == "WorkflowExecutionCanceled")
        .expect("the run closed");
    assert!(canceled < closed);
    assert_eq!(
        reason,
        Some(CancelReason::CancelRequested),
        "delivered through the heartbeat response"
    );
    let EventKind::ActivityTaskCanceled(a) = &history.events()[canceled].kind else {
        unreachable!()
    };
    assert_eq!(a.details, Some(json!("stopped")));
}

#[derive(Default)]
struct Capacity {
    running: AtomicUsize,
    peak: AtomicUsize,
}

impl WorkerObserver for Capacity {
    fn activity_started(&self, _task: &ActivityTask) {
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(running, Ordering::SeqCst);
    }
    fn activity_finished(&self, _task: &ActivityTask) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_worker_never_runs_more_activities_than_its_capacity() {
    let engine = TestEngine::new(registry()).await;
    let env = engine.engine.env().clone();
    let second = work(move |_, _| {
        let env = env.clone();
        async move {
            env.sleep_ms(1_000).await;
            Ok("done".to_string())
        }
    });
    let capacity = Arc::new(Capacity::default());
    let worker = engine
        .engine
        .worker("q")
        .workflows(registry())
        .activity(second)
        .max_concurrent_activities(2)
        .observer(capacity.clone())
        .start();
    let client = engine.client();
    let options =
        serde_json::to_value(ActivityOptions::default().start_to_close(Duration::from_secs(60)))
            .unwrap();
    let mut handles = Vec::new();
    for i in 0..8 {
        let id = format!("cap-{i}");
        let run_id = client
            .start_by_name(StartOptions::new(&id, "q"), "run", options.clone())
            .await
            .unwrap();
        handles.push(client.handle::<String>(&id, Some(&run_id)));
    }
    for handle in handles {
        assert_eq!(handle.result().await.unwrap(), "done");
    }
    assert_eq!(
        capacity.peak.load(Ordering::SeqCst),
        2,
        "the capacity was used, never exceeded"
    );
    assert_eq!(worker.stats().activities_peak, 2);
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 8);
}

#[tokio::test(start_paused = true)]
async fn a_crashed_workers_activity_times_out_and_finishes_on_the_other_worker() {
    let engine = TestEngine::new(registry()).await;
    let env = engine.engine.env().clone();
    let hang = work(move |_, _| {
        let env = env.clone();
        async move {
            env.sleep_ms(3_600_000).await;
            Ok("from the crashed worker".to_string())
        }
    });
    let first = engine
        .engine
        .worker("q")
        .identity("first")
        .workflows(registry())
        .activity(hang)
        .start();
    let client = engine.client();
    let options =
        serde_json::to_value(ActivityOptions::default().start_to_close(Duration::from_secs(5)))
            .unwrap();
    let run_id = client
        .start_by_name(StartOptions::new("crash", "q"), "run", options)
        .await
        .unwrap();
    engine.engine.env().sleep_ms(1_000).await;
    assert_eq!(
        client
            .describe("crash", None)
            .await
            .unwrap()
            .pending_activities[0]
            .state,
        "Started"
    );
    first.crash();
    let quick =
        work(|ctx, _| async move { Ok(format!("attempt {} on the second worker", ctx.attempt())) });
    let second = engine
        .engine
        .worker("q")
        .identity("second")
        .workflows(registry())
        .activity(quick)
        .start();
    let handle = client.handle::<String>("crash", Some(&run_id));
    assert_eq!(
        handle.result().await.unwrap(),
        "attempt 2 on the second worker"
    );
    let history = handle.history().await.unwrap();
    let EventKind::ActivityTaskStarted(started) =
        &events_of(&history, "ActivityTaskStarted")[0].kind
    else {
        unreachable!()
    };
    assert_eq!((started.attempt, started.identity.as_str()), (2, "second"));
    second.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_gives_a_running_activity_back_to_be_retried_elsewhere() {
    let engine = TestEngine::new(registry()).await;
    let seen = Arc::new(Mutex::new(None));
    let stoppable = wait_for_cancel(engine.engine.env().clone(), seen.clone());
    let first = engine
        .engine
        .worker("q")
        .identity("first")
        .workflows(registry())
        .activity(stoppable)
        .options(|o| o.shutdown_grace_ms = 1_000)
        .start();
    let client = engine.client();
    let options =
        serde_json::to_value(ActivityOptions::default().start_to_close(Duration::from_secs(600)))
            .unwrap();
    let run_id = client
        .start_by_name(StartOptions::new("shut", "q"), "run", options)
        .await
        .unwrap();
    engine.engine.env().sleep_ms(1_000).await;
    first.shutdown().await;
    assert_eq!(*seen.lock().unwrap(), Some(CancelReason::WorkerShutdown));
    let quick = work(|ctx, _| async move { Ok(format!("attempt {}", ctx.attempt())) });
    let second = engine
        .engine
        .worker("q")
        .identity("second")
        .workflows(registry())
        .activity(quick)
        .start();
    let handle = client.handle::<String>("shut", Some(&run_id));
    assert_eq!(handle.result().await.unwrap(), "attempt 2");
    let (_, last_failure) = started_attempt(&handle.history().await.unwrap());
    assert!(last_failure.unwrap().contains("WorkerShutdown"));
    second.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn an_activity_without_close_timeouts_fails_at_once_and_schedules_nothing() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let (result, history) = run_once(&engine, "none", ActivityOptions::default()).await;
    assert!(
        result.contains("InvalidOptions")
            && result.contains("neither start_to_close nor schedule_to_close"),
        "{result}"
    );
    assert!(events_of(&history, "ActivityTaskScheduled").is_empty());
    worker.shutdown().await;
    engine.check_histories().await;
}
