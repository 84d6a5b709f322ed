//! The update machine: one per update id of a run.
//!
//! | state     | input                                  | next      | events written                    |
//! |-----------|----------------------------------------|-----------|-----------------------------------|
//! | -         | a caller sends it                      | admitted  | none (kept in the service's memory; a workflow task is scheduled if none is) |
//! | admitted  | the validator refuses it               | -         | none (only the caller is told)    |
//! | admitted  | AcceptUpdate command                   | accepted  | WorkflowExecutionUpdateAccepted   |
//! | accepted  | CompleteUpdate command                 | completed | WorkflowExecutionUpdateCompleted  |
//! | accepted  | the run closes                         | -         | none (callers are told it closed) |
//! | completed | a caller sends the same id again       | completed | none (the outcome is read back)   |
//!
//! Only `accepted` and `completed` are durable: they live in the run's
//! state (here) and history. An admitted update lives in the service's
//! memory (`engine::updates`), as Temporal's update registry does; a
//! crash of the service loses it, and the caller's retry admits it again.

use serde::{Deserialize, Serialize};

use super::Step;
use crate::history::{
    EventKind, WorkflowExecutionUpdateAccepted, WorkflowExecutionUpdateCompleted,
};
use crate::workflow::AcceptUpdate;

/// Updates a run may accept over its life (Temporal's default limit).
pub const UPDATES_PER_RUN_MAX: usize = 2_000;
/// Updates a run may have accepted and not completed at once.
pub const UPDATES_IN_FLIGHT_MAX: usize = 10;
/// The longest update id.
pub const UPDATE_ID_BYTES_MAX: usize = 256;
/// The longest update name.
pub const UPDATE_NAME_BYTES_MAX: usize = 256;

/// An accepted update, by id in [`super::RunState::updates`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateState {
    /// Its `WorkflowExecutionUpdateAccepted`.
    pub accepted_event_id: u64,
    /// Its `WorkflowExecutionUpdateCompleted`, once its handler returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_event_id: Option<u64>,
}

/// Updates accepted and not yet completed.
pub fn in_flight(state: &super::RunState) -> usize {
    state
        .updates
        .values()
        .filter(|update| update.completed_event_id.is_none())
        .count()
}

/// An `AcceptUpdate` command of a completed workflow task.
pub(super) fn on_accept_command(
    step: &mut Step<'_>,
    completed: u64,
    command: &AcceptUpdate,
) -> Result<(), String> {
    let update_id = &command.update_id;
    if update_id.is_empty() || update_id.len() > UPDATE_ID_BYTES_MAX {
        return Err(format!(
            "AcceptUpdate: the update id must be 1 to {UPDATE_ID_BYTES_MAX} bytes"
        ));
    }
    if step.state.updates.contains_key(update_id) {
        return Err(format!(
            "AcceptUpdate {update_id:?}: this run already accepted an update with this id"
        ));
    }
    if step.state.updates.len() >= UPDATES_PER_RUN_MAX {
        return Err(format!(
            "AcceptUpdate {update_id:?}: the run accepted {UPDATES_PER_RUN_MAX} updates, its limit"
        ));
    }
    step.check_payload("update input", &command.input)
        .map_err(|e| e.message)?;
    let accepted_event_id = step.emit(EventKind::WorkflowExecutionUpdateAccepted(
        WorkflowExecutionUpdateAccepted {
            update_id: update_id.clone(),
            update_name: command.update_name.clone(),
            input: command.input.clone(),
            identity: command.identity.clone(),
            workflow_task_completed_event_id: completed,
        },
    ));
    let update = UpdateState {
        accepted_event_id,
        completed_event_id: None,
    };
    step.state.updates.insert(update_id.clone(), update);
    Ok(())
}

/// A `CompleteUpdate` command of a completed workflow task.
pub(super) fn on_complete_command(
    step: &mut Step<'_>,
    completed: u64,
    update_id: &str,
    outcome: &crate::history::UpdateOutcome,
) -> Result<(), String> {
    let Some(update) = step.state.updates.get(update_id) else {
        return Err(format!(
            "CompleteUpdate {update_id:?}: the run accepted no update with this id"
        ));
    };
    if update.completed_event_id.is_some() {
        return Err(format!(
            "CompleteUpdate {update_id:?}: the update already completed"
        ));
    }
    let accepted_event_id = update.accepted_event_id;
    match outcome {
        crate::history::UpdateOutcome::Success(result) => {
            step.check_payload("update result", result)
        }
        crate::history::UpdateOutcome::Failure(failure) => {
            step.check_failure("update failure", failure)
        }
    }
    .map_err(|e| e.message)?;
    let completed_event_id = step.emit(EventKind::WorkflowExecutionUpdateCompleted(
        WorkflowExecutionUpdateCompleted {
            update_id: update_id.to_string(),
            accepted_event_id,
            outcome: outcome.clone(),
            workflow_task_completed_event_id: completed,
        },
    ));
    let update = step.state.updates.get_mut(update_id).expect("checked");
    update.completed_event_id = Some(completed_event_id);
    debug_assert!(update.completed_event_id > Some(update.accepted_event_id));
    Ok(())
}
