//! Child workflows, as their parent's run records them.
//!
//! | child's state (the parent's)  | input                                 | next     | events written (the parent's history)            |
//! |-------------------------------|---------------------------------------|----------|--------------------------------------------------|
//! | -                             | StartChildWorkflowExecution command   | initiated| StartChildWorkflowExecutionInitiated             |
//! | initiated                     | the child's first run was written     | started  | ChildWorkflowExecutionStarted (delivered)        |
//! | initiated                     | the id is taken (running, or refused by its reuse policy) | - | StartChildWorkflowExecutionFailed (delivered) |
//! | started                       | the child's chain closed              | -        | ChildWorkflowExecutionCompleted / Failed / Canceled / TimedOut / Terminated (delivered) |
//! | any, the parent closed        | the parent close policy was applied   | -        | none (a closed history takes no events)          |
//! | none                          | a late result                         | -        | none                                             |
//!
//! The child is pending in the parent's state from the write that initiated
//! it, so it survives a crash; the service starts it with request id
//! `{parent run id}/{initiated event id}` (a start repeated after a crash
//! finds the same run), and the child's runs name their parent
//! ([`ParentExecution`]) through continue-as-new. A closed parent keeps its
//! children's entries until their parent close policy was applied.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{RunState, Step};
use crate::api::{RunOutcome, StartWorkflowRequest};
use crate::history::{
    ChildWorkflowExecutionCanceled, ChildWorkflowExecutionCompleted, ChildWorkflowExecutionFailed,
    ChildWorkflowExecutionStarted, ChildWorkflowExecutionTerminated,
    ChildWorkflowExecutionTimedOut, Event, EventKind, ParentExecution, StartChildFailedCause,
    StartChildWorkflowExecutionFailed, StartChildWorkflowExecutionInitiated,
};
use crate::types::{IdReusePolicy, ParentClosePolicy};
use crate::workflow::StartChildWorkflowExecution;

/// Child workflows one run may have open (initiated or started), at most.
pub const CHILDREN_PENDING_MAX: usize = 100;

/// A child workflow of this run, not yet closed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildState {
    pub workflow_id: String,
    pub workflow_type: String,
    pub task_queue: String,
    /// The child's input; dropped (null) once the child started.
    pub input: Value,
    pub execution_timeout_ms: Option<u64>,
    pub workflow_task_timeout_ms: Option<u64>,
    pub parent_close_policy: ParentClosePolicy,
    pub id_reuse_policy: IdReusePolicy,
    pub control: String,
    pub started: Option<StartedChild>,
}

/// The child's first run, and the parent's event that recorded its start
/// (0 while that event is buffered).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedChild {
    pub run_id: String,
    pub started_event_id: u64,
}

impl ChildState {
    /// The request that starts the child: the same on every try.
    pub fn start_request(&self, parent: &RunState, initiated: u64) -> StartWorkflowRequest {
        StartWorkflowRequest {
            workflow_id: self.workflow_id.clone(),
            workflow_type: self.workflow_type.clone(),
            task_queue: self.task_queue.clone(),
            input: self.input.clone(),
            execution_timeout_ms: self.execution_timeout_ms,
            workflow_task_timeout_ms: self.workflow_task_timeout_ms,
            id_reuse_policy: self.id_reuse_policy,
            request_id: format!("{}/{initiated}", parent.run_id),
            identity: format!("workflow run {}", parent.run_id),
            start_delay_ms: None,
            retry_policy: None,
            cron_schedule: None,
            search_attributes: Default::default(),
            memo: Default::default(),
        }
    }
}

/// The parent a child run names.
pub fn parent_of(parent: &RunState, initiated: u64) -> ParentExecution {
    ParentExecution {
        workflow_id: parent.workflow_id.clone(),
        run_id: parent.run_id.clone(),
        initiated_event_id: initiated,
    }
}

/// Makes a new run (its state and `WorkflowExecutionStarted`) a child of `parent`.
pub fn adopt(state: &mut RunState, events: &mut [Event], parent: &ParentExecution) {
    let Some(EventKind::WorkflowExecutionStarted(started)) =
        events.first_mut().map(|e| &mut e.kind)
    else {
        unreachable!("a run starts with WorkflowExecutionStarted");
    };
    started.parent = Some(parent.clone());
    state.parent = Some(parent.clone());
}

/// Applies a `StartChildWorkflowExecution` command.
pub fn on_start_command(
    step: &mut Step<'_>,
    completed: u64,
    command: &StartChildWorkflowExecution,
) -> Result<(), String> {
    let task_queue = command
        .task_queue
        .clone()
        .unwrap_or_else(|| step.state.task_queue.clone());
    for (name, value) in [
        ("workflow_id", &command.workflow_id),
        ("workflow_type", &command.workflow_type),
        ("task_queue", &task_queue),
    ] {
        if value.trim().is_empty() {
            return Err(format!(
                "StartChildWorkflowExecution: {name} must not be empty"
            ));
        }
    }
    if command.execution_timeout_ms == Some(0) || command.workflow_task_timeout_ms == Some(0) {
        return Err("StartChildWorkflowExecution: timeouts must be at least 1 ms".to_string());
    }
    if step.state.children.len() >= CHILDREN_PENDING_MAX {
        return Err(format!(
            "more than {CHILDREN_PENDING_MAX} child workflows open in one run"
        ));
    }
    step.check_payload("child workflow input", &command.input)
        .map_err(|e| e.message)?;
    let initiated = step.emit(EventKind::StartChildWorkflowExecutionInitiated(
        StartChildWorkflowExecutionInitiated {
            workflow_id: command.workflow_id.clone(),
            workflow_type: command.workflow_type.clone(),
            task_queue: task_queue.clone(),
            input: command.input.clone(),
            execution_timeout_ms: command.execution_timeout_ms,
            workflow_task_timeout_ms: command.workflow_task_timeout_ms,
            parent_close_policy: command.parent_close_policy,
            workflow_id_reuse_policy: command.workflow_id_reuse_policy,
            control: command.seq.clone(),
            workflow_task_completed_event_id: completed,
        },
    ));
    let child = ChildState {
        workflow_id: command.workflow_id.clone(),
        workflow_type: command.workflow_type.clone(),
        task_queue,
        input: command.input.clone(),
        execution_timeout_ms: command.execution_timeout_ms,
        workflow_task_timeout_ms: command.workflow_task_timeout_ms,
        parent_close_policy: command.parent_close_policy,
        id_reuse_policy: command.workflow_id_reuse_policy,
        control: command.seq.clone(),
        started: None,
    };
    step.state.children.insert(initiated, child);
    Ok(())
}

/// The child's first run `run_id` was written. Recorded in the history if
/// the parent is open; a closed parent keeps it for its close policy.
pub fn on_started(step: &mut Step<'_>, initiated: u64, run_id: &str) {
    let Some(child) = step.state.children.get_mut(&initiated) else {
        return;
    };
    if child.started.is_some() {
        return;
    }
    child.input = Value::Null;
    child.started = Some(StartedChild {
        run_id: run_id.to_string(),
        started_event_id: 0,
    });
    if step.state.status.is_closed() {
        return;
    }
    let kind = ChildWorkflowExecutionStarted {
        initiated_event_id: initiated,
        workflow_id: child.workflow_id.clone(),
        run_id: run_id.to_string(),
        workflow_type: child.workflow_type.clone(),
    };
    step.deliver(EventKind::ChildWorkflowExecutionStarted(kind));
}

/// The child could not start: its workflow id is taken.
pub fn on_start_failed(step: &mut Step<'_>, initiated: u64) {
    let is_initiated = step
        .state
        .children
        .get(&initiated)
        .is_some_and(|child| child.started.is_none());
    if !is_initiated {
        return;
    }
    let child = step.state.children.remove(&initiated).expect("checked");
    if step.state.status.is_closed() {
        return;
    }
    let kind = StartChildWorkflowExecutionFailed {
        initiated_event_id: initiated,
        workflow_id: child.workflow_id,
        workflow_type: child.workflow_type,
        cause: StartChildFailedCause::WorkflowAlreadyExists,
        control: child.control,
    };
    step.deliver(EventKind::StartChildWorkflowExecutionFailed(kind));
}

/// The child's chain closed with `outcome` in run `run_id` (never
/// `ContinuedAsNew`: the chain goes on). Nothing if the child is not
/// started here, or the parent closed (its policy has nothing left to do).
pub fn on_child_closed(step: &mut Step<'_>, initiated: u64, run_id: &str, outcome: &RunOutcome) {
    assert!(!matches!(outcome, RunOutcome::ContinuedAsNew { .. }));
    let is_started = step
        .state
        .children
        .get(&initiated)
        .is_some_and(|child| child.started.is_some());
    if !is_started {
        return;
    }
    let child = step.state.children.remove(&initiated).expect("checked");
    if step.state.status.is_closed() {
        return;
    }
    let started_event_id = child.started.expect("checked").started_event_id;
    let kind = close_event(
        initiated,
        started_event_id,
        child.workflow_id,
        run_id,
        outcome,
    );
    step.deliver(kind);
}

fn close_event(
    initiated_event_id: u64,
    started_event_id: u64,
    workflow_id: String,
    run_id: &str,
    outcome: &RunOutcome,
) -> EventKind {
    let run_id = run_id.to_string();
    match outcome.clone() {
        RunOutcome::Completed { result } => {
            EventKind::ChildWorkflowExecutionCompleted(ChildWorkflowExecutionCompleted {
                initiated_event_id,
                started_event_id,
                workflow_id,
                run_id,
                result,
            })
        }
        RunOutcome::Failed { failure } => {
            EventKind::ChildWorkflowExecutionFailed(ChildWorkflowExecutionFailed {
                initiated_event_id,
                started_event_id,
                workflow_id,
                run_id,
                failure,
            })
        }
        RunOutcome::Canceled { details } => {
            EventKind::ChildWorkflowExecutionCanceled(ChildWorkflowExecutionCanceled {
                initiated_event_id,
                started_event_id,
                workflow_id,
                run_id,
                details,
            })
        }
        RunOutcome::TimedOut => {
            EventKind::ChildWorkflowExecutionTimedOut(ChildWorkflowExecutionTimedOut {
                initiated_event_id,
                started_event_id,
                workflow_id,
                run_id,
            })
        }
        RunOutcome::Terminated { reason } => {
            EventKind::ChildWorkflowExecutionTerminated(ChildWorkflowExecutionTerminated {
                initiated_event_id,
                started_event_id,
                workflow_id,
                run_id,
                reason,
            })
        }
        RunOutcome::ContinuedAsNew { .. } => unreachable!("checked by the caller"),
    }
}

/// The closed parent's policy for this child was applied (or there was
/// nothing to apply it to): the parent forgets the child.
pub fn on_policy_applied(step: &mut Step<'_>, initiated: u64) {
    assert!(
        step.state.status.is_closed(),
        "policies apply to closed parents"
    );
    step.state.children.remove(&initiated);
}

/// Written event `event_id`: a child's start records its id in the child's
/// entry (its close names it).
pub fn on_emitted(state: &mut RunState, event_id: u64, kind: &EventKind) {
    if let EventKind::ChildWorkflowExecutionStarted(a) = kind {
        let started = state
            .children
            .get_mut(&a.initiated_event_id)
            .and_then(|child| child.started.as_mut());
        if let Some(started) = started {
            started.started_event_id = event_id;
        }
    }
}

/// A close event written after its child's start in one flush of buffered
/// events gets that start's id (the child closed while both were buffered).
pub fn with_started_event_id(kind: EventKind, starts: &[(u64, u64)]) -> EventKind {
    let find = |initiated: u64| {
        starts
            .iter()
            .find(|(i, _)| *i == initiated)
            .map(|(_, started)| *started)
    };
    macro_rules! fill {
        ($variant:ident, $a:ident) => {{
            let mut a = $a;
            if a.started_event_id == 0 {
                a.started_event_id = find(a.initiated_event_id).unwrap_or(0);
            }
            EventKind::$variant(a)
        }};
    }
    match kind {
        EventKind::ChildWorkflowExecutionCompleted(a) => fill!(ChildWorkflowExecutionCompleted, a),
        EventKind::ChildWorkflowExecutionFailed(a) => fill!(ChildWorkflowExecutionFailed, a),
        EventKind::ChildWorkflowExecutionCanceled(a) => fill!(ChildWorkflowExecutionCanceled, a),
        EventKind::ChildWorkflowExecutionTimedOut(a) => fill!(ChildWorkflowExecutionTimedOut, a),
        EventKind::ChildWorkflowExecutionTerminated(a) => {
            fill!(ChildWorkflowExecutionTerminated, a)
        }
        other => other,
    }
}
