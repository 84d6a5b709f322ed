//! Continue-as-new: a run closes and a new run of the same workflow id starts
//! in the same write.
//!
//! | status  | input                                  | next           | events written                                   |
//! |---------|----------------------------------------|----------------|--------------------------------------------------|
//! | Running | ContinueAsNewWorkflowExecution command | ContinuedAsNew | WorkflowExecutionContinuedAsNew (this run)       |
//! | -       | (the same write)                       | Running        | WorkflowExecutionStarted, WorkflowTaskScheduled (the new run) |
//!
//! The new run keeps the workflow id, and by default the type and task queue;
//! it gets what is left of the execution timeout (the chain shares one
//! deadline, as under Temporal's workflow execution timeout) and the same
//! workflow task timeout, and the request id of the start that began the
//! chain (a retry of that start is answered with the chain's current run),
//! and its parent if it is a child workflow.
//! Its `WorkflowExecutionStarted` names the run it continues. A completion that closes the run while events are buffered is
//! refused before any command is applied (see [`super::workflow_task`]), so a
//! signal acknowledged to this run is never dropped by the new one.

use super::{Limits, RunState, Step};
use crate::api::StartWorkflowRequest;
use crate::history::{Event, EventKind, WorkflowExecutionContinuedAsNew};
use crate::workflow::ContinueAsNewWorkflowExecution;

/// The run a continue-as-new started: its state and first events.
#[derive(Clone, Debug, PartialEq)]
pub struct NextRun {
    pub state: RunState,
    pub events: Vec<Event>,
}

/// Applies a `ContinueAsNewWorkflowExecution` command of the workflow task
/// completed at event `completed`.
pub fn on_command(
    step: &mut Step<'_>,
    completed: u64,
    command: &ContinueAsNewWorkflowExecution,
) -> Result<(), String> {
    assert!(
        !step.state.status.is_closed(),
        "only a running run continues"
    );
    assert!(
        step.continued.is_none(),
        "one continue-as-new per completion"
    );
    step.check_payload("continue-as-new input", &command.input)
        .map_err(|e| e.message)?;
    // The service draws the id before a completion that continues as new
    // (speculative completions never do).
    let Some(run_id) = step.next_run_id.clone() else {
        return Err("ContinueAsNewWorkflowExecution: no run id was drawn for the new run".into());
    };
    // The new run is started by the worker that completed this task.
    let identity = step
        .events
        .iter()
        .find_map(|event| match &event.kind {
            EventKind::WorkflowTaskCompleted(a) if event.event_id == completed => {
                Some(a.identity.clone())
            }
            _ => None,
        })
        .unwrap_or_default();
    let request = next_request(step.state, step.now, command, &identity);
    let next = start_next(&request, step.state, &run_id, step.now, step.limits)?;
    let kind = WorkflowExecutionContinuedAsNew {
        new_execution_run_id: run_id,
        workflow_type: request.workflow_type,
        task_queue: request.task_queue,
        input: request.input,
        execution_timeout_ms: request.execution_timeout_ms,
        workflow_task_timeout_ms: next.state.workflow_task_timeout_ms,
        workflow_task_completed_event_id: completed,
    };
    super::run::close(step, EventKind::WorkflowExecutionContinuedAsNew(kind));
    step.continued = Some(next);
    assert!(step.state.status.is_closed());
    Ok(())
}

/// The start request of the next run, as if a client had sent it.
fn next_request(
    state: &RunState,
    now: crate::types::Timestamp,
    command: &ContinueAsNewWorkflowExecution,
    identity: &str,
) -> StartWorkflowRequest {
    // What is left of the chain's deadline; at least 1 ms (a deadline that
    // passed has its timer firing right behind this write).
    let mut request = successor_request(state, command.input.clone());
    request.execution_timeout_ms = state
        .execution_deadline
        .map(|deadline| deadline.millis_since(now).max(1));
    if let Some(workflow_type) = &command.workflow_type {
        request.workflow_type = workflow_type.clone();
    }
    if let Some(task_queue) = &command.task_queue {
        request.task_queue = task_queue.clone();
    }
    request.identity = identity.to_string();
    request
}

/// The start request of a run that takes `state`'s place (continue-as-new,
/// a retry, a cron workflow's next run), with `input`: the same workflow id,
/// type, queue, workflow task timeout, retry policy and cron schedule, and
/// the request id of the start that began the chain, so a retry of that
/// start finds the chain's current run, never starts another. Callers set
/// the execution timeout and delay their way.
pub(super) fn successor_request(
    state: &RunState,
    input: serde_json::Value,
) -> StartWorkflowRequest {
    StartWorkflowRequest {
        workflow_id: state.workflow_id.clone(),
        workflow_type: state.workflow_type.clone(),
        task_queue: state.task_queue.clone(),
        input,
        request_id: state.start_request_id.clone(),
        execution_timeout_ms: None,
        workflow_task_timeout_ms: Some(state.workflow_task_timeout_ms),
        id_reuse_policy: crate::api::IdReusePolicy::default(),
        identity: String::new(),
        start_delay_ms: None,
        // Continue-as-new keeps the policy (its count starts over), as
        // Temporal's does.
        retry_policy: state.retry_policy.clone(),
        cron_schedule: state.cron.as_ref().map(|cron| cron.schedule.clone()),
        // The next run keeps the search attributes and memo, as Temporal's
        // does, but for the patches this run took: the next run's code
        // records its own.
        search_attributes: state
            .search_attributes
            .iter()
            .filter(|(name, _)| *name != crate::visibility::CHANGE_VERSION)
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect(),
        memo: state.memo.clone(),
    }
}

/// Starts the run that takes `previous`'s place, linked back to it (and
/// adopted by its parent).
pub(super) fn start_next(
    request: &StartWorkflowRequest,
    previous: &RunState,
    run_id: &str,
    now: crate::types::Timestamp,
    limits: Limits,
) -> Result<NextRun, String> {
    let (state, mut events) =
        super::run::start(request, run_id, now, limits).map_err(|e| e.message)?;
    let EventKind::WorkflowExecutionStarted(started) = &mut events[0].kind else {
        unreachable!("a run starts with WorkflowExecutionStarted");
    };
    started.continued_execution_run_id = Some(previous.run_id.clone());
    started.initiator = Some(crate::history::ContinueAsNewInitiator::Workflow);
    let mut state = state;
    if let Some(parent) = &previous.parent {
        super::child::adopt(&mut state, &mut events, parent);
    }
    Ok(NextRun { state, events })
}
