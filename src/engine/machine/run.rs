//! The run machine: start, commands, signals, cancel, terminate, timeouts, close.
//!
//! | status  | input                         | next    | events written                                     |
//! |---------|-------------------------------|---------|----------------------------------------------------|
//! | -       | start                         | Running | WorkflowExecutionStarted, WorkflowTaskScheduled     |
//! | -       | start with a start delay      | Running | WorkflowExecutionStarted (the workflow task backs off until the delay ends) |
//! | Running | signal (new request id)       | Running | WorkflowExecutionSignaled (delivered)               |
//! | any     | signal (seen request id)      | same    | none: answered as delivered                         |
//! | Running | cancel request (first)        | Running | WorkflowExecutionCancelRequested (delivered)        |
//! | Running | Complete/Fail/CancelWorkflow command | closed | WorkflowExecutionCompleted / Failed / Canceled |
//! | Running | FailWorkflowExecution under a retry policy | Failed | see [`super::retry`] |
//! | Running | ContinueAsNewWorkflowExecution command | ContinuedAsNew | see [`super::continue_as_new`] |
//! | Running | Signal / RequestCancel external command | Running | see [`super::external`] |
//! | Running | StartChildWorkflowExecution command | Running | see [`super::child`] |
//! | Running | terminate                     | Terminated | [WorkflowTaskFailed (ForceCloseCommand), buffered], WorkflowExecutionTerminated |
//! | Running | execution timeout timer       | TimedOut | [WorkflowTaskFailed (ForceCloseCommand), buffered], WorkflowExecutionTimedOut |
//! | closed  | signal, cancel, terminate     | closed  | none: refused with `run_closed`                     |
//!
//! Closing drops whatever is pending: activities, timers, the workflow task.
//! Closing from outside (terminate, timeout) while a workflow task runs first
//! fails that task and writes the events buffered meanwhile: an acknowledged
//! signal or cancel request is never lost.

use std::collections::{BTreeMap, VecDeque};

use serde_json::Value;

use super::{Limits, RunState, SIGNAL_REQUEST_IDS_MAX, Step, TimerKey, WorkflowTaskState, error};
use crate::api::{ErrorCode, ServiceError, StartWorkflowRequest};
use crate::env::RunStatus;
use crate::history::{
    Event, EventKind, MarkerRecorded, WorkflowExecutionCancelRequested, WorkflowExecutionCanceled,
    WorkflowExecutionCompleted, WorkflowExecutionSignaled, WorkflowExecutionStarted,
    WorkflowExecutionTerminated, WorkflowExecutionTimedOut, WorkflowTaskFailed,
    WorkflowTaskFailedCause,
};
use crate::types::{RetryState, Timestamp};
use crate::workflow::{Command, CronSchedule};

/// Default start-to-close timeout of workflow tasks.
pub const WORKFLOW_TASK_TIMEOUT_MS_DEFAULT: u64 = 10_000;

fn invalid(message: impl Into<String>) -> ServiceError {
    error(ErrorCode::InvalidArgument, message)
}

/// Checks a start request's fields.
pub fn check_start(request: &StartWorkflowRequest) -> Result<(), ServiceError> {
    let fields = [
        ("workflow_id", &request.workflow_id),
        ("workflow_type", &request.workflow_type),
        ("task_queue", &request.task_queue),
        ("request_id", &request.request_id),
    ];
    for (name, value) in fields {
        if value.trim().is_empty() {
            return Err(invalid(format!("{name} must not be empty")));
        }
    }
    if request.execution_timeout_ms == Some(0) || request.workflow_task_timeout_ms == Some(0) {
        return Err(invalid("timeouts must be at least 1 ms"));
    }
    if let Some(policy) = &request.retry_policy {
        policy
            .normalized()
            .map_err(|e| invalid(format!("workflow {e}")))?;
    }
    if let Some(schedule) = &request.cron_schedule {
        CronSchedule::parse(schedule).map_err(|e| invalid(e.to_string()))?;
        if request.start_delay_ms.is_some_and(|ms| ms > 0) {
            return Err(invalid(
                "a cron workflow cannot have a start delay: its schedule says when runs start",
            ));
        }
    }
    let none = crate::visibility::SearchAttributes::new();
    let setter = crate::visibility::Setter::User;
    crate::visibility::validate_merge(&none, &request.search_attributes, setter)
        .map_err(|e| invalid(e.to_string()))?;
    crate::visibility::merge_memo(&Default::default(), &request.memo)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(())
}

/// A new run: its state and its first events.
pub fn start(
    request: &StartWorkflowRequest,
    run_id: &str,
    now: Timestamp,
    limits: Limits,
) -> Result<(RunState, Vec<Event>), ServiceError> {
    check_start(request)?;
    let delay_ms = match &request.cron_schedule {
        // A cron workflow's first run waits for the first slot.
        Some(schedule) => super::cron::wait_ms(schedule, now),
        None => request.start_delay_ms.filter(|ms| *ms > 0),
    };
    let mut state = initial_state(request, run_id, now, delay_ms);
    let workflow_task_timeout_ms = state.workflow_task_timeout_ms;
    let mut step = Step::new(&mut state, now, limits);
    step.check_payload("workflow input", &request.input)?;
    step.emit(EventKind::WorkflowExecutionStarted(
        WorkflowExecutionStarted {
            workflow_type: request.workflow_type.clone(),
            workflow_id: request.workflow_id.clone(),
            task_queue: request.task_queue.clone(),
            input: request.input.clone(),
            execution_timeout_ms: request.execution_timeout_ms,
            workflow_task_timeout_ms,
            attempt: 1,
            identity: request.identity.clone(),
            request_id: request.request_id.clone(),
            continued_execution_run_id: None,
            parent: None,
            first_workflow_task_backoff_ms: delay_ms,
            retry_policy: step.state.retry_policy.clone().map(Box::new),
            initiator: None,
            continued_failure: None,
            cron_schedule: request.cron_schedule.clone(),
            last_completion_result: None,
            search_attributes: request.search_attributes.clone(),
            memo: request.memo.clone(),
        },
    ));
    match delay_ms {
        // The first workflow task waits out the delay as a failed task waits
        // out its backoff: events that arrive meanwhile schedule no task.
        Some(delay_ms) => {
            let until = now.plus_ms(delay_ms);
            step.state.workflow_task = WorkflowTaskState::Backoff { attempt: 1, until }
        }
        None => step.schedule_workflow_task(1),
    }
    let events = std::mem::take(&mut step.events);
    debug_assert_eq!(events.len(), if delay_ms.is_some() { 1 } else { 2 });
    Ok((state, events))
}

/// The state of a run `request` starts at `now`, before its first events.
fn initial_state(
    request: &StartWorkflowRequest,
    run_id: &str,
    now: Timestamp,
    delay_ms: Option<u64>,
) -> RunState {
    // The execution timeout counts from the end of the start delay.
    let execution_start = now.plus_ms(delay_ms.unwrap_or(0));
    RunState {
        workflow_id: request.workflow_id.clone(),
        run_id: run_id.to_string(),
        workflow_type: request.workflow_type.clone(),
        task_queue: request.task_queue.clone(),
        status: RunStatus::Running,
        start_time: now,
        close_time: None,
        execution_deadline: request
            .execution_timeout_ms
            .map(|ms| execution_start.plus_ms(ms)),
        workflow_task_timeout_ms: request
            .workflow_task_timeout_ms
            .unwrap_or(WORKFLOW_TASK_TIMEOUT_MS_DEFAULT),
        start_request_id: request.request_id.clone(),
        next_event_id: 1,
        workflow_task: WorkflowTaskState::None,
        previous_started_event_id: 0,
        activities: BTreeMap::new(),
        timers: BTreeMap::new(),
        buffered: super::Buffered::default(),
        closing_activities: BTreeMap::new(),
        cancel_requested: false,
        signal_request_ids: VecDeque::new(),
        last_workflow_task_failure: None,
        outcome: None,
        history_payload_bytes: 0,
        buffered_payload_bytes: 0,
        externals: BTreeMap::new(),
        children: BTreeMap::new(),
        parent: None,
        retry_policy: request
            .retry_policy
            .as_ref()
            .map(|policy| policy.normalized().expect("checked by check_start")),
        attempt: 1,
        kept_input: (request.retry_policy.is_some() || request.cron_schedule.is_some())
            .then(|| request.input.clone()),
        successor_run_id: None,
        cron: request
            .cron_schedule
            .as_ref()
            .map(|schedule| super::CronRuns {
                schedule: schedule.clone(),
                execution_timeout_ms: request.execution_timeout_ms,
                last_completion_result: None,
            }),
        updates: BTreeMap::new(),
        search_attributes: request.search_attributes.clone(),
        memo: request.memo.clone(),
    }
}

pub(crate) fn refuse_closed(state: &RunState) -> Result<(), ServiceError> {
    if state.status.is_closed() {
        let message = format!(
            "run {} of workflow {:?} is closed ({})",
            state.run_id,
            state.workflow_id,
            state.status.as_str()
        );
        return Err(error(ErrorCode::RunClosed, message));
    }
    Ok(())
}

/// Applies one command of a completed workflow task.
pub(super) fn apply_command(
    step: &mut Step<'_>,
    completed: u64,
    command: &Command,
    follow_ups: &mut Vec<EventKind>,
) -> Result<(), String> {
    match command {
        Command::ScheduleActivityTask(schedule) => {
            super::activity::schedule(step, completed, schedule)
        }
        Command::RequestCancelActivityTask { activity_id } => {
            super::activity::request_cancel(step, completed, activity_id, follow_ups)
        }
        Command::StartTimer {
            timer_id,
            start_to_fire_timeout_ms,
        } => super::timer::start(step, completed, timer_id, *start_to_fire_timeout_ms),
        Command::CancelTimer { timer_id } => super::timer::cancel(step, completed, timer_id),
        Command::RecordMarker {
            marker_name,
            details,
        } => {
            step.check_payload("marker details", details)
                .map_err(|e| e.message)?;
            let marker = MarkerRecorded {
                marker_name: marker_name.clone(),
                details: details.clone(),
                workflow_task_completed_event_id: completed,
            };
            step.emit(EventKind::MarkerRecorded(marker));
            Ok(())
        }
        Command::CompleteWorkflowExecution { .. }
        | Command::FailWorkflowExecution { .. }
        | Command::CancelWorkflowExecution { .. } => apply_close_command(step, completed, command),
        Command::ContinueAsNewWorkflowExecution(command) => {
            super::continue_as_new::on_command(step, completed, command)
        }
        Command::SignalExternalWorkflowExecution(command) => {
            super::external::on_signal_command(step, completed, command)
        }
        Command::RequestCancelExternalWorkflowExecution(command) => {
            super::external::on_cancel_command(step, completed, command)
        }
        Command::StartChildWorkflowExecution(command) => {
            super::child::on_start_command(step, completed, command)
        }
        Command::AcceptUpdate(command) => {
            super::update::on_accept_command(step, completed, command)
        }
        Command::CompleteUpdate { update_id, outcome } => {
            super::update::on_complete_command(step, completed, update_id, outcome)
        }
        Command::UpsertWorkflowSearchAttributes { search_attributes } => {
            upsert_search_attributes(step, completed, search_attributes)
        }
        Command::ModifyWorkflowProperties { upserted_memo } => {
            modify_properties(step, completed, upserted_memo)
        }
    }
}

/// Merges the workflow's upsert into the run's search attributes (checked:
/// names, kinds, count and size), recording it.
fn upsert_search_attributes(
    step: &mut Step<'_>,
    completed: u64,
    search_attributes: &crate::visibility::SearchAttributes,
) -> Result<(), String> {
    let setter = crate::visibility::Setter::Command;
    let current = &step.state.search_attributes;
    let merged = crate::visibility::validate_merge(current, search_attributes, setter)
        .map_err(|e| e.to_string())?;
    step.state.search_attributes = merged;
    let event = crate::history::UpsertWorkflowSearchAttributes {
        search_attributes: search_attributes.clone(),
        workflow_task_completed_event_id: completed,
    };
    step.emit(EventKind::UpsertWorkflowSearchAttributes(event));
    Ok(())
}

/// Applies the workflow's memo modification (checked: size), recording it.
fn modify_properties(
    step: &mut Step<'_>,
    completed: u64,
    upserted_memo: &crate::visibility::Memo,
) -> Result<(), String> {
    let merged = crate::visibility::merge_memo(&step.state.memo, upserted_memo)
        .map_err(|e| e.to_string())?;
    step.state.memo = merged;
    let event = crate::history::WorkflowPropertiesModified {
        upserted_memo: upserted_memo.clone(),
        workflow_task_completed_event_id: completed,
    };
    step.emit(EventKind::WorkflowPropertiesModified(event));
    Ok(())
}

/// A command that closes the run: complete, fail or cancel.
fn apply_close_command(
    step: &mut Step<'_>,
    completed: u64,
    command: &Command,
) -> Result<(), String> {
    match command {
        Command::CompleteWorkflowExecution { result } => {
            step.check_payload("workflow result", result)
                .map_err(|e| e.message)?;
            let workflow_task_completed_event_id = completed;
            let mut kind = WorkflowExecutionCompleted {
                result: result.clone(),
                workflow_task_completed_event_id,
                new_execution_run_id: None,
            };
            let next = match step.state.cron {
                Some(_) => super::cron::start_next(step, Ok(result))?,
                None => None,
            };
            if let Some(next) = next {
                kind.new_execution_run_id = Some(next.state.run_id.clone());
                step.state.successor_run_id = Some(next.state.run_id.clone());
                step.continued = Some(next);
            }
            close(step, EventKind::WorkflowExecutionCompleted(kind));
            Ok(())
        }
        Command::FailWorkflowExecution { failure } => {
            step.check_failure("workflow failure", failure)
                .map_err(|e| e.message)?;
            super::retry::on_fail_command(step, completed, failure)
        }
        Command::CancelWorkflowExecution { details } => {
            if !step.state.cancel_requested {
                return Err(
                    "CancelWorkflowExecution: no cancel was requested for this run".to_string(),
                );
            }
            let workflow_task_completed_event_id = completed;
            let kind = WorkflowExecutionCanceled {
                details: details.clone(),
                workflow_task_completed_event_id,
            };
            close(step, EventKind::WorkflowExecutionCanceled(kind));
            Ok(())
        }
        _ => unreachable!("apply_command passes only close commands"),
    }
}

/// Writes the terminal event and drops everything pending.
pub fn close(step: &mut Step<'_>, kind: EventKind) {
    let (status, outcome) = super::outcome_of(&kind).expect("close is given a terminal event");
    assert!(!step.state.status.is_closed(), "a run closes once");
    step.emit(kind);
    let state = &mut *step.state;
    state.status = status;
    state.outcome = Some(outcome);
    state.close_time = Some(step.now);
    state.workflow_task = WorkflowTaskState::None;
    state.activities.clear();
    state.timers.clear();
    // A completion that would close the run while events are buffered is
    // refused, and a forced close flushes them first: nothing is dropped.
    assert!(
        state.buffered.is_empty(),
        "buffered events are written before a run closes"
    );
    state.buffered_payload_bytes = 0;
    state.closing_activities.clear();
}

/// Delivers a signal once per request id. Returns false for a repeated request.
pub fn on_signal(
    step: &mut Step<'_>,
    signal_name: &str,
    input: Value,
    identity: &str,
    request_id: &str,
) -> Result<bool, ServiceError> {
    if signal_name.trim().is_empty() {
        return Err(invalid("signal_name must not be empty"));
    }
    // A retry of a delivered signal is answered as delivered, even once the
    // run has closed since.
    if step
        .state
        .signal_request_ids
        .iter()
        .any(|id| id == request_id)
    {
        return Ok(false);
    }
    refuse_closed(step.state)?;
    step.check_payload("signal input", &input)?;
    if step.state.workflow_task.is_started() {
        let bytes = crate::history::payload_size_bytes(&input);
        let buffered = step.state.buffered_payload_bytes;
        let max = step.limits.buffered_payload_bytes_max;
        if buffered + bytes > max {
            let message = format!(
                "the run holds {buffered} bytes of signals while its workflow task runs; \
                 {bytes} more would pass the limit of {max} bytes: retry once the task completes"
            );
            return Err(error(ErrorCode::ResourceExhausted, message));
        }
        step.state.buffered_payload_bytes += bytes;
    }
    let ids = &mut step.state.signal_request_ids;
    if ids.len() == SIGNAL_REQUEST_IDS_MAX {
        ids.pop_front();
    }
    ids.push_back(request_id.to_string());
    step.deliver(EventKind::WorkflowExecutionSignaled(
        WorkflowExecutionSignaled {
            signal_name: signal_name.to_string(),
            input,
            identity: identity.to_string(),
        },
    ));
    Ok(true)
}

/// Records a cancel request (once); the workflow decides what to do.
pub fn on_cancel_requested(
    step: &mut Step<'_>,
    reason: &str,
    identity: &str,
) -> Result<(), ServiceError> {
    refuse_closed(step.state)?;
    if step.state.cancel_requested {
        return Ok(());
    }
    step.state.cancel_requested = true;
    step.deliver(EventKind::WorkflowExecutionCancelRequested(
        WorkflowExecutionCancelRequested {
            cause: reason.to_string(),
            identity: identity.to_string(),
        },
    ));
    Ok(())
}

/// Closes the run at once, without workflow code.
pub fn on_terminate(
    step: &mut Step<'_>,
    reason: &str,
    details: Option<Value>,
    identity: &str,
) -> Result<(), ServiceError> {
    refuse_closed(step.state)?;
    let kind = WorkflowExecutionTerminated {
        reason: reason.to_string(),
        details,
        identity: identity.to_string(),
    };
    force_close(step, EventKind::WorkflowExecutionTerminated(kind));
    Ok(())
}

/// Closes the run from outside its code (terminate, execution timeout). A
/// workflow task in flight is failed first (`ForceCloseCommand`) and what
/// arrived while it ran is written, so every signal and cancel request the
/// service acknowledged is in the history before the run's end.
fn force_close(step: &mut Step<'_>, kind: EventKind) {
    if let WorkflowTaskState::Started {
        scheduled_event_id,
        started_event_id,
        ..
    } = step.state.workflow_task
    {
        let failure = crate::types::Failure::new(
            "ForceClose",
            "the run was closed while this workflow task ran",
        );
        step.emit(EventKind::WorkflowTaskFailed(WorkflowTaskFailed {
            scheduled_event_id,
            started_event_id,
            cause: WorkflowTaskFailedCause::ForceCloseCommand,
            failure,
            identity: String::new(),
        }));
        step.state.workflow_task = WorkflowTaskState::None;
        step.flush_buffered();
    }
    assert!(step.state.buffered.is_empty() || !step.state.workflow_task.is_started());
    close(step, kind);
}

/// A durable timer of the run fired. Returns false if it no longer applies
/// (the activity closed, the heartbeat moved the deadline, ...).
pub fn on_timer(step: &mut Step<'_>, key: &TimerKey) -> bool {
    if step.state.status.is_closed() {
        return false;
    }
    match key {
        TimerKey::User { timer_id } => super::timer::on_fired(step, timer_id),
        TimerKey::WorkflowTaskTimeout { scheduled_event_id } => {
            super::workflow_task::on_timeout(step, *scheduled_event_id)
        }
        TimerKey::WorkflowTaskBackoff { attempt } => {
            super::workflow_task::on_backoff_fired(step, *attempt)
        }
        TimerKey::ExecutionTimeout => {
            let due = step
                .state
                .execution_deadline
                .is_some_and(|deadline| step.now >= deadline);
            if due {
                let kind = WorkflowExecutionTimedOut {
                    retry_state: RetryState::RetryPolicyNotSet,
                };
                force_close(step, EventKind::WorkflowExecutionTimedOut(kind));
            }
            due
        }
        _ => super::activity::on_timer(step, key),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engine::eager;
    use crate::history::History;

    const LIMITS: Limits = Limits {
        payload_bytes_max: 1 << 20,
        buffered_payload_bytes_max: 4 << 20,
    };

    /// A run whose first workflow task is started (by a worker) at t = 1,000 ms.
    fn run_with_a_started_task(execution_timeout_ms: Option<u64>) -> (RunState, Vec<Event>) {
        let request = StartWorkflowRequest {
            workflow_id: "w".into(),
            workflow_type: "Flow".into(),
            task_queue: "q".into(),
            input: json!(null),
            execution_timeout_ms,
            workflow_task_timeout_ms: None,
            id_reuse_policy: Default::default(),
            request_id: "r".into(),
            identity: "client".into(),
            start_delay_ms: None,
            retry_policy: None,
            cron_schedule: None,
            search_attributes: Default::default(),
            memo: Default::default(),
        };
        let (mut state, mut events) = start(&request, "run", Timestamp(1_000), LIMITS).unwrap();
        let mut step = Step::new(&mut state, Timestamp(1_000), LIMITS);
        eager::start_workflow_task(&mut step, None, "worker", "wt-1").expect("scheduled");
        events.append(&mut step.events);
        assert!(state.workflow_task.is_started());
        (state, events)
    }

    fn history(events: Vec<Event>) -> History {
        History::from_events("w", "run", events).expect("the history is well-formed")
    }

    #[test]
    fn terminate_during_a_workflow_task_writes_the_signals_it_buffered_before_the_end() {
        let (mut state, mut events) = run_with_a_started_task(None);
        let mut step = Step::new(&mut state, Timestamp(1_500), LIMITS);
        assert!(on_signal(&mut step, "go", json!(1), "client", "s1").unwrap());
        assert!(step.events.is_empty(), "buffered while the task runs");
        on_cancel_requested(&mut step, "please", "client").unwrap();
        on_terminate(&mut step, "stop", None, "client").unwrap();
        events.append(&mut step.events);
        let names: Vec<&str> = events[events.len() - 4..]
            .iter()
            .map(|e| e.kind.name())
            .collect();
        assert_eq!(
            names,
            [
                "WorkflowTaskFailed",
                "WorkflowExecutionSignaled",
                "WorkflowExecutionCancelRequested",
                "WorkflowExecutionTerminated"
            ]
        );
        history(events);
    }

    #[test]
    fn an_execution_timeout_during_a_workflow_task_writes_the_signals_it_buffered() {
        let (mut state, mut events) = run_with_a_started_task(Some(2_000));
        let mut step = Step::new(&mut state, Timestamp(1_500), LIMITS);
        assert!(on_signal(&mut step, "go", json!(1), "client", "s1").unwrap());
        events.append(&mut step.events);
        let mut step = Step::new(&mut state, Timestamp(3_000), LIMITS);
        assert!(on_timer(&mut step, &TimerKey::ExecutionTimeout));
        events.append(&mut step.events);
        assert!(
            events
                .iter()
                .any(|e| matches!(e.kind, EventKind::WorkflowExecutionSignaled(_))),
            "the acknowledged signal is in the history"
        );
        assert!(matches!(
            events.last().map(|e| &e.kind),
            Some(EventKind::WorkflowExecutionTimedOut(_))
        ));
        history(events);
    }
}
