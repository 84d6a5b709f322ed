//! Local activities on the worker: a round's requests run at once inside the
//! workflow task, each retried here while its backoff ends within the
//! task's window (see `crate::workflow::local_activity`).

use std::sync::Arc;

use futures::future::Either;

use super::Shared;
use crate::activity::{
    ActivityContext, ActivityInfo, ActivityRunError, ActivityShared, RetryDecision,
};
use crate::api::WorkflowTask;
use crate::types::{Failure, Timestamp};
use crate::workflow::{LocalActivityOutcome, LocalActivityRequest};

/// Runs every request of a round, all at once; outcomes in request order.
pub(super) async fn run_round(
    shared: &Arc<Shared>,
    task: &WorkflowTask,
    window_ends: Timestamp,
    requests: Vec<LocalActivityRequest>,
) -> Vec<LocalActivityOutcome> {
    assert!(!requests.is_empty(), "a round has requests");
    let count = requests.len();
    let runs = requests
        .into_iter()
        .map(|request| run_attempts(shared, task, window_ends, request));
    let outcomes = futures::future::join_all(runs).await;
    assert_eq!(outcomes.len(), count);
    outcomes
}

/// Runs attempts from `request.attempt` until one completes, the policy
/// stops, or the next backoff does not end inside the window (the workflow
/// then waits it out on a durable timer).
async fn run_attempts(
    shared: &Arc<Shared>,
    task: &WorkflowTask,
    window_ends: Timestamp,
    request: LocalActivityRequest,
) -> LocalActivityOutcome {
    let policy = request.options.policy();
    let mut attempt = request.attempt;
    loop {
        let failure = match run_attempt(shared, task, window_ends, &request, attempt).await {
            Ok(result) => return outcome(&request, attempt, Ok(result)),
            Err(failure) => failure,
        };
        let now = shared.env.now();
        let remaining_ms = request
            .options
            .schedule_to_close_timeout_ms
            .map(|ms| request.scheduled_time.plus_ms(ms).millis_since(now));
        let backoff_ms = match policy.decide(attempt, &failure, remaining_ms) {
            RetryDecision::Stop(state) => {
                let mut stopped = outcome(&request, attempt, Err(failure));
                stopped.retry_state = Some(state);
                return stopped;
            }
            RetryDecision::Retry { backoff_ms } => backoff_ms,
        };
        if now.plus_ms(backoff_ms) >= window_ends {
            let mut later = outcome(&request, attempt, Err(failure));
            later.backoff_ms = Some(backoff_ms.max(1));
            return later;
        }
        shared.env.sleep_ms(backoff_ms).await;
        attempt += 1;
    }
}

fn outcome(
    request: &LocalActivityRequest,
    attempt: u32,
    result: Result<serde_json::Value, Failure>,
) -> LocalActivityOutcome {
    let (result, failure) = match result {
        Ok(value) => (Some(value), None),
        Err(failure) => (None, Some(failure)),
    };
    LocalActivityOutcome {
        seq: request.seq,
        activity_type: request.activity_type.clone(),
        attempt,
        result,
        failure,
        retry_state: None,
        backoff_ms: None,
    }
}

/// One attempt, bounded by its start-to-close timeout, the schedule-to-close
/// deadline and the task's window, whichever ends first.
async fn run_attempt(
    shared: &Arc<Shared>,
    task: &WorkflowTask,
    window_ends: Timestamp,
    request: &LocalActivityRequest,
    attempt: u32,
) -> Result<serde_json::Value, Failure> {
    let Some(activity) = shared.activities.get(&request.activity_type) else {
        let message = format!(
            "activity type {:?} is not registered on worker {}",
            request.activity_type, shared.options.identity
        );
        let mut failure = Failure::new("ActivityTypeNotRegistered", message);
        failure.non_retryable = true;
        return Err(failure);
    };
    let now = shared.env.now();
    let (limit, deadline) = deadline(request, now, window_ends);
    if let Some(observer) = &shared.observer {
        observer.local_activity_started(&task.task_token, request, attempt);
    }
    let ctx = ActivityContext::new(info(task, request, attempt, now), ActivityShared::new());
    let run = activity(ctx, request.input.clone());
    let timeout = shared.env.clock.sleep_until(deadline);
    futures::pin_mut!(run);
    match futures::future::select(run, timeout).await {
        Either::Left((Ok(value), _)) => Ok(value),
        Either::Left((Err(ActivityRunError::Failed(failure)), _)) => Err(failure),
        Either::Left((Err(ActivityRunError::Canceled { .. }), _)) => Err(Failure::new(
            "Canceled",
            "the local activity returned canceled, which nobody asked for",
        )),
        Either::Right(((), _)) => Err(Failure::new(
            "LocalActivityTimeout",
            format!("attempt {attempt} ran past its {limit}"),
        )),
    }
}

/// When the attempt must end, and which limit that is.
fn deadline(
    request: &LocalActivityRequest,
    now: Timestamp,
    window_ends: Timestamp,
) -> (String, Timestamp) {
    let options = &request.options;
    let mut limits = vec![("workflow task's window".to_string(), window_ends)];
    if let Some(ms) = options.start_to_close_timeout_ms {
        limits.push((
            format!("start_to_close timeout of {ms} ms"),
            now.plus_ms(ms),
        ));
    }
    if let Some(ms) = options.schedule_to_close_timeout_ms {
        let at = request.scheduled_time.plus_ms(ms);
        limits.push((format!("schedule_to_close timeout of {ms} ms"), at));
    }
    limits
        .into_iter()
        .min_by_key(|(_, at)| *at)
        .expect("the window is always a limit")
}

fn info(
    task: &WorkflowTask,
    request: &LocalActivityRequest,
    attempt: u32,
    now: Timestamp,
) -> ActivityInfo {
    ActivityInfo {
        workflow_id: task.workflow_id.clone(),
        run_id: task.task_token.run_id.clone(),
        activity_id: format!("local-{}", request.seq),
        activity_type: request.activity_type.clone(),
        attempt,
        scheduled_time: request.scheduled_time,
        started_time: now,
        start_to_close_timeout_ms: request.options.start_to_close_timeout_ms,
        heartbeat_timeout_ms: None,
        heartbeat_details: None,
    }
}
