//! What a history says about failures and timeouts, where it carries meaning
//! as Temporal records it: the start of an activity's last attempt, the
//! activity a workflow failure came from, the limit that ended a timed-out
//! activity, and the timeouts Temporal fills in from schedule-to-close.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::engine::{StartTwo, TestEngine};
use retrace::activity::{
    Activity, ActivityContext, ActivityOptions, ActivityResult, ActivityRunError, RetryPolicy,
    non_retryable,
};
use retrace::api::RunOutcome;
use retrace::client::StartOptions;
use retrace::env::{BoxFuture, Env};
use retrace::history::{Event, EventKind, History};
use retrace::types::{
    ChildWorkflowFailureInfo, FAILURE_CAUSES_MAX, Failure, FailureInfo, RetryState, TimeoutType,
};
use retrace::workflow::{ChildWorkflowError, WorkflowContext, WorkflowError, WorkflowRegistry};

type Body =
    Arc<dyn Fn(ActivityContext, ()) -> BoxFuture<'static, ActivityResult<String>> + Send + Sync>;

/// An activity named "step" whose body each test scripts.
#[derive(Clone)]
struct Step(Body);

impl Activity for Step {
    const NAME: &'static str = "step";
    type Input = ();
    type Output = String;
    async fn run(&self, ctx: ActivityContext, input: ()) -> ActivityResult<String> {
        (self.0)(ctx, input).await
    }
}

fn step<F, Fut>(f: F) -> Step
where
    F: Fn(ActivityContext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ActivityResult<String>> + Send + 'static,
{
    Step(Arc::new(move |ctx, ()| Box::pin(f(ctx))))
}

/// "propagate" runs "step" with the options its input names and returns its
/// error with `?`, so the run fails with what the SDK makes of it.
fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn(
        "propagate",
        |ctx: WorkflowContext, options: ActivityOptions| async move {
            let value: String = ctx.activity::<Step>(()).options(options).await?;
            Ok::<String, WorkflowError>(value)
        },
    );
    registry
}

async fn run(engine: &TestEngine, id: &str, options: ActivityOptions) -> (RunOutcome, History) {
    let client = engine.client();
    let input = serde_json::to_value(options).unwrap();
    let run_id = client
        .start_by_name(StartOptions::new(id, "q"), "propagate", input)
        .await
        .unwrap();
    let outcome = client.run_outcome(id, Some(&run_id)).await.unwrap();
    let history = client.handle::<String>(id, Some(&run_id)).history().await;
    (outcome, history.unwrap())
}

fn event<'h>(history: &'h History, event_type: &str) -> &'h Event {
    let mut found = history
        .events()
        .iter()
        .filter(|e| e.kind.name() == event_type);
    let first = found.next().unwrap_or_else(|| panic!("no {event_type}"));
    assert!(found.next().is_none(), "one {event_type}");
    first
}

fn failure_of(outcome: RunOutcome) -> Failure {
    match outcome {
        RunOutcome::Failed { failure } => failure,
        other => panic!("the run should fail, not {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn activity_task_started_is_stamped_with_the_last_attempts_start_not_its_end() {
    let engine = TestEngine::new(registry()).await;
    let env: Env = engine.engine.env().clone();
    let slow = step(move |ctx| {
        let env = env.clone();
        async move {
            env.sleep_ms(3_000).await;
            match ctx.attempt() {
                1 => Err(ActivityRunError::Failed(Failure::new("Flaky", "once"))),
                _ => Ok("done".to_string()),
            }
        }
    });
    let worker = engine
        .engine
        .worker("q")
        .workflows(registry())
        .activity(slow)
        .start_two();
    let retry = RetryPolicy::default().initial_interval_ms(1_000);
    let options = ActivityOptions::default()
        .start_to_close(Duration::from_secs(10))
        .retry(retry);
    let (outcome, history) = run(&engine, "started-time", options).await;
    assert!(
        matches!(outcome, RunOutcome::Completed { .. }),
        "{outcome:?}"
    );
    let scheduled = event(&history, "ActivityTaskScheduled").event_time;
    let started = event(&history, "ActivityTaskStarted");
    let completed = event(&history, "ActivityTaskCompleted").event_time;
    // Attempt 1 ran 3 s, backed off 1 s; attempt 2 started then and ran 3 s.
    assert_eq!(
        started.event_time.millis_since(scheduled),
        4_000,
        "{history:#?}"
    );
    assert_eq!(completed.millis_since(started.event_time), 3_000);
    assert!(started.event_id < event(&history, "ActivityTaskCompleted").event_id);
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_run_failed_by_an_activity_names_the_activity_its_events_and_retry_state() {
    let engine = TestEngine::new(registry()).await;
    let refuses = step(|_| async { Err(non_retryable("card declined")) });
    let worker = engine
        .engine
        .worker("q")
        .workflows(registry())
        .activity(refuses)
        .start_two();
    let options = ActivityOptions::default().start_to_close(Duration::from_secs(10));
    let (outcome, history) = run(&engine, "activity-failure", options).await;
    let failure = failure_of(outcome);
    let EventKind::WorkflowExecutionFailed(recorded) =
        &event(&history, "WorkflowExecutionFailed").kind
    else {
        unreachable!()
    };
    assert_eq!(
        recorded.failure, failure,
        "the history records what the client sees"
    );
    let Some(FailureInfo::Activity(info)) = failure.info.as_deref() else {
        panic!("an activity failure names its activity: {failure:?}")
    };
    assert_eq!(failure.failure_type, "ActivityFailure");
    assert_eq!(
        info.scheduled_event_id,
        event(&history, "ActivityTaskScheduled").event_id
    );
    assert_eq!(
        info.started_event_id,
        event(&history, "ActivityTaskStarted").event_id
    );
    assert_eq!(
        (info.activity_type.as_str(), info.activity_id.as_str()),
        ("step", "1")
    );
    assert_eq!(info.retry_state, RetryState::NonRetryableFailure);
    assert!(!info.identity.is_empty(), "the worker that ran it");
    let cause = failure
        .cause
        .as_deref()
        .expect("caused by the activity's failure");
    assert_eq!(
        (cause.failure_type.as_str(), cause.message.as_str()),
        ("NonRetryableError", "card declined")
    );
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_activity_says_which_limit_ended_it_and_how_long_it_was() {
    let engine = TestEngine::new(registry()).await;
    let env: Env = engine.engine.env().clone();
    let hangs = step(move |_| {
        let env = env.clone();
        async move {
            env.sleep_ms(600_000).await;
            Ok("too late".to_string())
        }
    });
    let worker = engine
        .engine
        .worker("q")
        .workflows(registry())
        .activity(hangs)
        .start_two();
    let options = ActivityOptions::default()
        .start_to_close(Duration::from_secs(2))
        .retry(RetryPolicy::default().maximum_attempts(1));
    let (outcome, history) = run(&engine, "timed-out", options).await;
    let EventKind::ActivityTaskTimedOut(timed_out) = &event(&history, "ActivityTaskTimedOut").kind
    else {
        unreachable!()
    };
    let timeout = timed_out
        .failure
        .as_ref()
        .expect("the timeout as a failure");
    assert!(
        timeout.message.contains("start-to-close"),
        "{}",
        timeout.message
    );
    assert!(
        timeout.message.contains("2s") && timeout.message.contains("attempt 1"),
        "{}",
        timeout.message
    );
    let start_to_close = FailureInfo::Timeout {
        timeout_type: TimeoutType::StartToClose,
    };
    assert_eq!(timeout.info.as_deref(), Some(&start_to_close));
    let failure = failure_of(outcome);
    let chain: Vec<&str> = failure.chain().map(|f| f.failure_type.as_str()).collect();
    assert_eq!(chain, ["ActivityFailure", "TimeoutFailure"]);
    assert_eq!(
        failure.cause.as_deref(),
        Some(timeout),
        "the run's failure is caused by it"
    );
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn schedule_to_start_and_start_to_close_are_filled_from_schedule_to_close() {
    let engine = TestEngine::new(registry()).await;
    let quick = step(|_| async { Ok("quick".to_string()) });
    let worker = engine
        .engine
        .worker("q")
        .workflows(registry())
        .activity(quick)
        .start_two();
    let options = ActivityOptions::default().schedule_to_close(Duration::from_secs(30));
    let (_, history) = run(&engine, "filled", options).await;
    let EventKind::ActivityTaskScheduled(a) = &event(&history, "ActivityTaskScheduled").kind else {
        unreachable!()
    };
    let timeouts = (
        a.schedule_to_close_timeout_ms,
        a.schedule_to_start_timeout_ms,
        a.start_to_close_timeout_ms,
    );
    assert_eq!(timeouts, (Some(30_000), Some(30_000), Some(30_000)));
    worker.shutdown().await;
    engine.check_histories().await;
}

/// A failure whose chain of causes is `length` long.
fn chain_of(length: usize) -> Failure {
    (1..length).fold(Failure::new("Root", "the first"), |cause, n| {
        Failure::new("Wrap", format!("wrap {n}")).with_cause(Some(cause))
    })
}

#[tokio::test(start_paused = true)]
async fn an_activity_failure_with_too_many_causes_fails_the_attempt_naming_the_limit() {
    let engine = TestEngine::new(registry()).await;
    let deep = step(|_| async { Err(ActivityRunError::Failed(chain_of(FAILURE_CAUSES_MAX + 1))) });
    let worker = engine
        .engine
        .worker("q")
        .workflows(registry())
        .activity(deep)
        .start_two();
    let options = ActivityOptions::default().start_to_close(Duration::from_secs(10));
    let (outcome, history) = run(&engine, "deep-failure", options).await;
    let EventKind::ActivityTaskFailed(failed) = &event(&history, "ActivityTaskFailed").kind else {
        unreachable!()
    };
    let expected = format!(
        "chain of {} causes, more than the limit of {FAILURE_CAUSES_MAX}",
        FAILURE_CAUSES_MAX + 1
    );
    assert!(
        failed.failure.message.contains(&expected),
        "{}",
        failed.failure.message
    );
    assert_eq!(
        failed.retry_state,
        RetryState::NonRetryableFailure,
        "the same code fails the same way"
    );
    assert!(failure_of(outcome).chain().count() <= FAILURE_CAUSES_MAX);
    worker.shutdown().await;
    engine.check_histories().await;
}

#[test]
fn a_workflow_failure_keeps_at_most_the_limit_of_causes_dropping_the_innermost() {
    let failure = chain_of(FAILURE_CAUSES_MAX + 3).with_causes_at_most(FAILURE_CAUSES_MAX);
    let types: Vec<&str> = failure.chain().map(|f| f.failure_type.as_str()).collect();
    assert_eq!(types.len(), FAILURE_CAUSES_MAX);
    assert!(
        types.iter().all(|t| *t == "Wrap"),
        "the root cause went first: {types:?}"
    );
    let short = chain_of(2);
    assert_eq!(short.clone().with_causes_at_most(FAILURE_CAUSES_MAX), short);
}

#[test]
fn a_run_failed_by_a_child_names_the_child_its_events_and_its_failure() {
    let child = ChildWorkflowFailureInfo {
        workflow_id: "pick-7".to_string(),
        run_id: "run-2".to_string(),
        workflow_type: "pick".to_string(),
        initiated_event_id: 5,
        started_event_id: 6,
        retry_state: RetryState::RetryPolicyNotSet,
    };
    let error = WorkflowError::Child(ChildWorkflowError::Failed {
        workflow_id: "pick-7".to_string(),
        failure: Box::new(Failure::new("OutOfStock", "no socks")),
        child: Box::new(child.clone()),
    });
    let failure = error.to_failure();
    assert_eq!(failure.failure_type, "ChildWorkflowFailure");
    assert_eq!(
        failure.info.as_deref(),
        Some(&FailureInfo::ChildWorkflow(child))
    );
    let cause = failure
        .cause
        .as_deref()
        .expect("caused by the child's failure");
    assert_eq!(
        (cause.failure_type.as_str(), cause.message.as_str()),
        ("OutOfStock", "no socks")
    );
}
