//! Cron workflows: each run starts at a slot of the workflow's schedule, the
//! next one in the write that closes the run before it.
//!
//! | status  | input                                         | next      | events written                                             |
//! |---------|-----------------------------------------------|-----------|------------------------------------------------------------|
//! | -       | start with a cron schedule                    | Running   | WorkflowExecutionStarted (the first task waits for the first slot) |
//! | Running | CompleteWorkflowExecution                     | Completed | WorkflowExecutionCompleted (the next run's id)             |
//! | Running | FailWorkflowExecution, not retried            | Failed    | WorkflowExecutionFailed (the next run's id)                |
//! | -       | (the same write)                              | Running   | WorkflowExecutionStarted (initiator CronSchedule, the wait for the next slot, the last completion result) |
//!
//! The next run's slot is the schedule's first after the close, so a slot
//! that passed while a run ran is skipped, never run late or twice, and two
//! runs of one cron workflow never overlap. A failure is retried first
//! ([`super::retry`]), under the workflow's retry policy, within the slot.
//! Cancellation, termination and the execution timeout (each run has its
//! own) end the cron workflow, and so does a run asked to cancel that
//! completes or fails instead; so does a schedule with no slot left within
//! [`crate::workflow::CRON_HORIZON_DAYS_MAX`] days.

use serde_json::Value;

use super::Step;
use super::continue_as_new::NextRun;
use crate::history::{ContinueAsNewInitiator, EventKind};
use crate::types::{Failure, Timestamp};
use crate::workflow::CronSchedule;

/// How long a run started at `now` waits for its slot: the schedule's first
/// after `now`. `None` if it has none (the schedule was checked at start, so
/// only a slot past the horizon).
pub fn wait_ms(schedule: &str, now: Timestamp) -> Option<u64> {
    let schedule = CronSchedule::parse(schedule).ok()?;
    let slot = schedule.next_after(now)?;
    debug_assert!(slot > now);
    Some(slot.millis_since(now))
}

/// The cron workflow's next run, after this one closed with `outcome`;
/// `None` if its schedule has no slot left.
pub fn start_next(
    step: &Step<'_>,
    outcome: Result<&Value, &Failure>,
) -> Result<Option<NextRun>, String> {
    let state = &*step.state;
    let cron = state.cron.as_ref().expect("checked by the caller");
    // A cancel request stops the cron workflow, even when the run it
    // reached completes or fails instead of accepting it.
    if state.cancel_requested || wait_ms(&cron.schedule, step.now).is_none() {
        return Ok(None);
    }
    // The service draws the id before a completion that may start a run.
    let Some(run_id) = step.next_run_id.clone() else {
        return Err("no run id was drawn for the cron workflow's next run".into());
    };
    let input = state
        .kept_input
        .clone()
        .expect("a cron run keeps its input");
    // Each run gets the whole execution timeout; the schedule sets its wait.
    let mut request = super::continue_as_new::successor_request(state, input);
    request.execution_timeout_ms = cron.execution_timeout_ms;
    let mut next =
        super::continue_as_new::start_next(&request, state, &run_id, step.now, step.limits)?;
    let last_completion_result = match outcome {
        Ok(result) => Some(result.clone()),
        Err(_) => cron.last_completion_result.clone(),
    };
    let EventKind::WorkflowExecutionStarted(started) = &mut next.events[0].kind else {
        unreachable!("a run starts with WorkflowExecutionStarted");
    };
    started.initiator = Some(ContinueAsNewInitiator::CronSchedule);
    started.continued_failure = outcome.err().cloned().map(Box::new);
    started.last_completion_result = last_completion_result.clone();
    let next_cron = next.state.cron.as_mut().expect("started with a schedule");
    next_cron.last_completion_result = last_completion_result;
    assert!(next.state.workflow_task.name() == Some("Backoff"));
    Ok(Some(next))
}
