//! Workflow retries: a run that fails under a retry policy closes, and the
//! next attempt starts as a new run of the same workflow id, in the same write.
//!
//! | status  | input                                   | next    | events written                                              |
//! |---------|-----------------------------------------|---------|-------------------------------------------------------------|
//! | Running | FailWorkflowExecution, no retry policy  | Failed  | WorkflowExecutionFailed                                      |
//! | Running | FailWorkflowExecution, the policy stops | Failed  | WorkflowExecutionFailed (retry state: why it stopped)        |
//! | Running | FailWorkflowExecution, the policy retries | Failed | WorkflowExecutionFailed (InProgress, the next run's id)     |
//! | -       | (the same write)                        | Running | WorkflowExecutionStarted (attempt + 1, initiator Retry, first workflow task backoff) |
//! | Running | (the backoff ends)                      | Running | WorkflowTaskScheduled (see [`super::workflow_task`])         |
//!
//! The policy decides as it does for activities: a non-retryable failure, the
//! last of `maximum_attempts`, or a backoff that would not end before the
//! chain's execution deadline stops the retries. The next run keeps the
//! workflow id, type, task queue, input, parent, request id and what is left of
//! the execution timeout (the chain shares one deadline, as Temporal's workflow
//! execution timeout covers retries); it waits out the backoff with no workflow
//! task, so a signal sent meanwhile is recorded and read when it ends.
//! Timeouts, cancellation and termination are never retried.

use super::continue_as_new::NextRun;
use super::{RunState, Step};
use crate::activity::RetryDecision;
use crate::history::{ContinueAsNewInitiator, EventKind, WorkflowExecutionFailed};
use crate::types::{Failure, RetryState, Timestamp};

/// Applies a `FailWorkflowExecution` command of the workflow task completed
/// at event `completed`: closes the run, and starts the next attempt if the
/// retry policy says so.
pub fn on_fail_command(
    step: &mut Step<'_>,
    completed: u64,
    failure: &Failure,
) -> Result<(), String> {
    assert!(!step.state.status.is_closed(), "only a running run fails");
    let mut kind = WorkflowExecutionFailed {
        failure: failure.clone(),
        workflow_task_completed_event_id: completed,
        retry_state: None,
        new_execution_run_id: None,
    };
    let mut next = None;
    if step.state.retry_policy.is_some() {
        match decide(step.state, step.now, failure) {
            RetryDecision::Stop(retry_state) => kind.retry_state = Some(retry_state),
            RetryDecision::Retry { backoff_ms } => {
                next = Some(start_next(step, failure, backoff_ms)?);
                kind.retry_state = Some(RetryState::InProgress);
            }
        }
    }
    // Retries done, a cron workflow's next run starts at its next slot.
    if next.is_none() && step.state.cron.is_some() {
        next = super::cron::start_next(step, Err(failure))?;
    }
    if let Some(next) = next {
        kind.new_execution_run_id = Some(next.state.run_id.clone());
        step.state.successor_run_id = Some(next.state.run_id.clone());
        step.continued = Some(next);
    }
    super::run::close(step, EventKind::WorkflowExecutionFailed(kind));
    assert!(step.state.status.is_closed());
    Ok(())
}

/// What the run's retry policy does with `failure` at `now`.
fn decide(state: &RunState, now: Timestamp, failure: &Failure) -> RetryDecision {
    let policy = state.retry_policy.as_ref().expect("checked by the caller");
    let remaining_ms = state
        .execution_deadline
        .map(|deadline| deadline.millis_since(now));
    policy.decide(state.attempt, failure, remaining_ms)
}

/// The next attempt: a run started by the service as a client's start
/// would be, then marked as a retry of this one.
fn start_next(step: &Step<'_>, failure: &Failure, backoff_ms: u64) -> Result<NextRun, String> {
    let state = &*step.state;
    // The service draws the id before a completion that may start a run
    // (speculative completions never do).
    let Some(run_id) = step.next_run_id.clone() else {
        return Err("FailWorkflowExecution: no run id was drawn for the retry".into());
    };
    let input = state
        .kept_input
        .clone()
        .expect("a run with a retry policy keeps its input");
    let mut request = super::continue_as_new::successor_request(state, input);
    // What is left of the chain's deadline once the backoff ends (the
    // policy retries only if some is left).
    request.execution_timeout_ms = state.execution_deadline.map(|deadline| {
        deadline
            .millis_since(step.now)
            .saturating_sub(backoff_ms)
            .max(1)
    });
    request.start_delay_ms = Some(backoff_ms);
    // A cron workflow's retry waits its backoff, not the next slot: its
    // schedule is carried below.
    request.cron_schedule = None;
    let mut next =
        super::continue_as_new::start_next(&request, state, &run_id, step.now, step.limits)?;
    next.state.attempt = state.attempt + 1;
    let EventKind::WorkflowExecutionStarted(started) = &mut next.events[0].kind else {
        unreachable!("a run starts with WorkflowExecutionStarted");
    };
    started.attempt = state.attempt + 1;
    started.initiator = Some(ContinueAsNewInitiator::Retry);
    started.continued_failure = Some(Box::new(failure.clone()));
    // A cron workflow's retries keep its schedule.
    if let Some(cron) = &state.cron {
        started.cron_schedule = Some(cron.schedule.clone());
        started.last_completion_result = cron.last_completion_result.clone();
        next.state.cron = Some(cron.clone());
        next.state.kept_input = state.kept_input.clone();
    }
    assert!(next.state.workflow_task.name() == Some("Backoff"));
    Ok(next)
}
