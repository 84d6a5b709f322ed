//! Liveness: every run closed once faults healed; a run still open names what
//! it waits for, and a task still on the queue is reported as lost.

use retrace::engine::machine::RunState;
use retrace::env::{RunRecord, RunStatus};

use super::Violation;

/// A run still open after the liveness phase, with what it waits for.
pub fn check_closed(record: &RunRecord) -> Option<Violation> {
    if record.status != RunStatus::Running {
        return None;
    }
    let state = serde_json::from_slice::<RunState>(&record.state);
    let waits = match &state {
        Ok(state) => describe_waits(state),
        Err(error) => format!("(its state does not decode: {error})"),
    };
    // A task still on the queue after the liveness phase was lost by matching.
    let queued = state
        .as_ref()
        .is_ok_and(|s| !retrace::engine::machine::pending_tasks(s).is_empty());
    let invariant = if queued { "no task lost" } else { "liveness" };
    let message = format!("run still open after faults healed; {waits}");
    let mut violation = Violation::new(invariant, message);
    violation.run_id = Some(record.run_id.clone());
    violation.workflow_id = Some(record.workflow_id.clone());
    violation.event_id = Some(record.next_event_id - 1);
    Some(violation)
}

fn describe_waits(state: &RunState) -> String {
    let mut parts = vec![format!("workflow task: {:?}", state.workflow_task)];
    for activity in state.activities.values() {
        parts.push(format!(
            "activity {:?} {} attempt {}",
            activity.activity_id,
            activity.phase_name(),
            activity.attempt
        ));
    }
    for (timer_id, timer) in &state.timers {
        parts.push(format!("timer {timer_id:?} fires at {}", timer.fire_time));
    }
    if let Some(failure) = &state.last_workflow_task_failure {
        parts.push(format!("last workflow task failure: {failure}"));
    }
    if state.activities.is_empty()
        && state.timers.is_empty()
        && state.workflow_task == retrace::engine::machine::WorkflowTaskState::None
    {
        parts.push("nothing pending: the workflow waits for a signal that never came".to_string());
    }
    parts.join("; ")
}
