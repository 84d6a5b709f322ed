//! Signals and cancel requests from workflow code to other workflows.
//!
//! | state of the request | input                                   | next      | events written (the sender's history)                 |
//! |----------------------|-----------------------------------------|-----------|-------------------------------------------------------|
//! | -                    | SignalExternalWorkflowExecution command | pending   | SignalExternalWorkflowExecutionInitiated              |
//! | -                    | RequestCancelExternal… command          | pending   | RequestCancelExternalWorkflowExecutionInitiated       |
//! | pending              | delivered to run R                      | -         | ExternalWorkflowExecutionSignaled / …CancelRequested (delivered: a workflow task) |
//! | pending              | no such run, or it is closed            | -         | SignalExternalWorkflowExecutionFailed / RequestCancel…Failed (delivered) |
//! | pending, the sender closed | delivered or not             | -         | none (a closed history takes no events)               |
//! | none (done)          | a late delivery result                  | -         | none                                                  |
//!
//! A pending request is in the run's state, so it survives a crash: the
//! service delivers every pending request of every run it loads
//! (`pending_externals`), each with request id `{run_id}/{initiated event id}`,
//! so a delivery repeated after a crash signals the target once.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Step;
use crate::history::{
    EventKind, ExternalFailedCause, ExternalWorkflowExecutionCancelRequested,
    ExternalWorkflowExecutionSignaled, RequestCancelExternalWorkflowExecutionFailed,
    RequestCancelExternalWorkflowExecutionInitiated, SignalExternalWorkflowExecutionFailed,
    SignalExternalWorkflowExecutionInitiated,
};
use crate::workflow::{RequestCancelExternalWorkflowExecution, SignalExternalWorkflowExecution};

/// Signals and cancel requests pending in one run, at most.
pub const EXTERNALS_PENDING_MAX: usize = 100;

/// What a pending request asks of its target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ExternalAsk {
    Signal { signal_name: String, input: Value },
    Cancel,
}

/// A signal or cancel request not yet delivered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExternalRequest {
    pub workflow_id: String,
    pub run_id: Option<String>,
    pub control: String,
    pub ask: ExternalAsk,
}

impl ExternalRequest {
    /// The request id its delivery carries: the same on every try.
    pub fn request_id(run_id: &str, initiated_event_id: u64) -> String {
        format!("{run_id}/{initiated_event_id}")
    }
}

/// How a delivery ended: the run that took it, or why none did.
pub type Delivery = Result<String, ExternalFailedCause>;

fn check_room(step: &Step<'_>, workflow_id: &str) -> Result<(), String> {
    if workflow_id.trim().is_empty() {
        return Err("the target workflow_id must not be empty".to_string());
    }
    if step.state.externals.len() >= EXTERNALS_PENDING_MAX {
        return Err(format!(
            "more than {EXTERNALS_PENDING_MAX} signals and cancel requests to other workflows pending"
        ));
    }
    Ok(())
}

/// Applies a `SignalExternalWorkflowExecution` command.
pub fn on_signal_command(
    step: &mut Step<'_>,
    completed: u64,
    command: &SignalExternalWorkflowExecution,
) -> Result<(), String> {
    check_room(step, &command.workflow_id)?;
    step.check_payload("signal input", &command.input)
        .map_err(|e| e.message)?;
    let initiated = step.emit(EventKind::SignalExternalWorkflowExecutionInitiated(
        SignalExternalWorkflowExecutionInitiated {
            workflow_id: command.workflow_id.clone(),
            run_id: command.run_id.clone(),
            signal_name: command.signal_name.clone(),
            input: command.input.clone(),
            control: command.seq.clone(),
            workflow_task_completed_event_id: completed,
        },
    ));
    let ask = ExternalAsk::Signal {
        signal_name: command.signal_name.clone(),
        input: command.input.clone(),
    };
    let request = ExternalRequest {
        workflow_id: command.workflow_id.clone(),
        run_id: command.run_id.clone(),
        control: command.seq.clone(),
        ask,
    };
    step.state.externals.insert(initiated, request);
    Ok(())
}

/// Applies a `RequestCancelExternalWorkflowExecution` command.
pub fn on_cancel_command(
    step: &mut Step<'_>,
    completed: u64,
    command: &RequestCancelExternalWorkflowExecution,
) -> Result<(), String> {
    check_room(step, &command.workflow_id)?;
    let initiated = step.emit(EventKind::RequestCancelExternalWorkflowExecutionInitiated(
        RequestCancelExternalWorkflowExecutionInitiated {
            workflow_id: command.workflow_id.clone(),
            run_id: command.run_id.clone(),
            control: command.seq.clone(),
            workflow_task_completed_event_id: completed,
        },
    ));
    let request = ExternalRequest {
        workflow_id: command.workflow_id.clone(),
        run_id: command.run_id.clone(),
        control: command.seq.clone(),
        ask: ExternalAsk::Cancel,
    };
    step.state.externals.insert(initiated, request);
    Ok(())
}

/// Records how the delivery of the request initiated at `initiated` ended:
/// no longer pending, and its outcome in the history if the run is open
/// (a closed run's history takes no more events). Nothing if it was not
/// pending (recorded already).
pub fn on_delivered(step: &mut Step<'_>, initiated: u64, delivery: Delivery) {
    let Some(request) = step.state.externals.remove(&initiated) else {
        return;
    };
    if step.state.status.is_closed() {
        return;
    }
    let (workflow_id, control) = (request.workflow_id, request.control);
    let kind = match (request.ask, delivery) {
        (ExternalAsk::Signal { .. }, Ok(run_id)) => {
            EventKind::ExternalWorkflowExecutionSignaled(ExternalWorkflowExecutionSignaled {
                initiated_event_id: initiated,
                workflow_id,
                run_id,
                control,
            })
        }
        (ExternalAsk::Signal { .. }, Err(cause)) => {
            EventKind::SignalExternalWorkflowExecutionFailed(
                SignalExternalWorkflowExecutionFailed {
                    initiated_event_id: initiated,
                    workflow_id,
                    run_id: request.run_id,
                    cause,
                    control,
                },
            )
        }
        (ExternalAsk::Cancel, Ok(run_id)) => EventKind::ExternalWorkflowExecutionCancelRequested(
            ExternalWorkflowExecutionCancelRequested {
                initiated_event_id: initiated,
                workflow_id,
                run_id,
                control,
            },
        ),
        (ExternalAsk::Cancel, Err(cause)) => {
            EventKind::RequestCancelExternalWorkflowExecutionFailed(
                RequestCancelExternalWorkflowExecutionFailed {
                    initiated_event_id: initiated,
                    workflow_id,
                    run_id: request.run_id,
                    cause,
                    control,
                },
            )
        }
    };
    step.deliver(kind);
}
