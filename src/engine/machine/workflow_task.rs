//! The workflow task machine: one task at a time per run.
//!
//! | state     | input                     | next                     | events written                                  |
//! |-----------|---------------------------|--------------------------|-------------------------------------------------|
//! | None      | an event to deliver       | Scheduled                | WorkflowTaskScheduled                           |
//! | Scheduled | a worker polls it         | Started                  | WorkflowTaskStarted                             |
//! | Scheduled | an event to deliver       | Scheduled (joins it)     | the event                                       |
//! | Started   | an event to deliver       | Started                  | none: buffered                                  |
//! | Started   | completed with commands   | None, or Scheduled if anything arrived or followed | WorkflowTaskCompleted, command events, follow-ups, buffered, [WorkflowTaskScheduled] |
//! | Started   | completed, closing the run while events are buffered | Scheduled | WorkflowTaskFailed (UnhandledCommand), buffered, WorkflowTaskScheduled |
//! | Started   | bad commands / failed     | Backoff or Scheduled     | WorkflowTaskFailed, buffered, [WorkflowTaskScheduled] |
//! | Started   | start-to-close timer      | Scheduled (attempt + 1)  | WorkflowTaskTimedOut, buffered, WorkflowTaskScheduled |
//! | Backoff   | backoff timer             | Scheduled                | WorkflowTaskScheduled                           |
//! | any       | the run closes            | None                     | (the close event)                               |

use serde::{Deserialize, Serialize};

use super::{RunState, Step, TimerKey, error};
use crate::api::{ErrorCode, ServiceError, TaskToken};
use crate::history::{
    EventKind, WorkflowTaskCompleted, WorkflowTaskFailed, WorkflowTaskFailedCause,
    WorkflowTaskStarted, WorkflowTaskTimedOut,
};
use crate::types::{Failure, TimeoutType, Timestamp};
use crate::workflow::Command;

/// Longest wait before retrying a failed workflow task.
pub const WORKFLOW_TASK_BACKOFF_MS_MAX: u64 = 60_000;

/// Where the run's workflow task is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkflowTaskState {
    /// No task: the workflow waits for something to happen.
    None,
    /// On the queue.
    Scheduled {
        scheduled_event_id: u64,
        attempt: u32,
    },
    /// A worker runs it.
    Started {
        scheduled_event_id: u64,
        started_event_id: u64,
        attempt: u32,
        started_time: Timestamp,
    },
    /// Failed; retried when the backoff ends.
    Backoff { attempt: u32, until: Timestamp },
}

impl WorkflowTaskState {
    /// True while a worker runs the task.
    pub fn is_started(&self) -> bool {
        matches!(self, WorkflowTaskState::Started { .. })
    }

    /// A short name for `describe`.
    pub fn name(&self) -> Option<&'static str> {
        match self {
            WorkflowTaskState::None => None,
            WorkflowTaskState::Scheduled { .. } => Some("Scheduled"),
            WorkflowTaskState::Started { .. } => Some("Started"),
            WorkflowTaskState::Backoff { .. } => Some("Backoff"),
        }
    }
}

pub(super) fn pending_timers(state: &RunState) -> Vec<(Timestamp, TimerKey)> {
    match state.workflow_task {
        WorkflowTaskState::Started {
            scheduled_event_id,
            started_time,
            ..
        } => {
            let deadline = started_time.plus_ms(state.workflow_task_timeout_ms);
            vec![(
                deadline,
                TimerKey::WorkflowTaskTimeout { scheduled_event_id },
            )]
        }
        WorkflowTaskState::Backoff { attempt, until } => {
            vec![(until, TimerKey::WorkflowTaskBackoff { attempt })]
        }
        _ => Vec::new(),
    }
}

fn stale(token: &TaskToken) -> ServiceError {
    let message = format!(
        "workflow task {}/{} is not the run's started workflow task (completed, timed out or retried)",
        token.run_id, token.scheduled_event_id
    );
    error(ErrorCode::TaskNotFound, message)
}

/// What `on_started` started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartedTask {
    pub scheduled_event_id: u64,
    pub started_event_id: u64,
    pub attempt: u32,
}

/// A worker takes the scheduled task (the one at `scheduled_event_id`, if
/// given). `None` if no such task is scheduled.
pub fn on_started(
    step: &mut Step<'_>,
    scheduled_event_id: Option<u64>,
    identity: &str,
    request_id: &str,
) -> Option<StartedTask> {
    let WorkflowTaskState::Scheduled {
        scheduled_event_id: scheduled,
        attempt,
    } = step.state.workflow_task
    else {
        return None;
    };
    if scheduled_event_id.is_some_and(|wanted| wanted != scheduled) || step.state.status.is_closed()
    {
        return None;
    }
    let started_event_id = step.emit(EventKind::WorkflowTaskStarted(WorkflowTaskStarted {
        scheduled_event_id: scheduled,
        identity: identity.to_string(),
        request_id: request_id.to_string(),
    }));
    let started_time = step.now;
    step.state.workflow_task = WorkflowTaskState::Started {
        scheduled_event_id: scheduled,
        started_event_id,
        attempt,
        started_time,
    };
    Some(StartedTask {
        scheduled_event_id: scheduled,
        started_event_id,
        attempt,
    })
}

/// The token names the run's started workflow task.
pub fn check_token(state: &RunState, token: &TaskToken) -> Result<(), ServiceError> {
    match state.workflow_task {
        WorkflowTaskState::Started {
            scheduled_event_id,
            started_event_id,
            ..
        } if scheduled_event_id == token.scheduled_event_id
            && started_event_id == token.started_event_id =>
        {
            Ok(())
        }
        _ => Err(stale(token)),
    }
}

/// Why a completion was refused; the service records it as a failed task.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub cause: WorkflowTaskFailedCause,
    pub message: String,
}

/// The worker completed the task with `commands`.
pub fn on_completed(
    step: &mut Step<'_>,
    token: &TaskToken,
    commands: &[Command],
    identity: &str,
) -> Result<(), Rejection> {
    check_token(step.state, token).expect("the service checks the token before completing");
    let closes = commands.iter().any(Command::is_terminal);
    if closes && !step.state.buffered.is_empty() {
        let message =
            "new events arrived while the workflow task ran; it runs again to see them".to_string();
        return Err(Rejection {
            cause: WorkflowTaskFailedCause::UnhandledCommand,
            message,
        });
    }
    let started_event_id = token.started_event_id;
    let completed = step.emit(EventKind::WorkflowTaskCompleted(WorkflowTaskCompleted {
        scheduled_event_id: token.scheduled_event_id,
        started_event_id,
        identity: identity.to_string(),
    }));
    step.state.workflow_task = WorkflowTaskState::None;
    step.state.previous_started_event_id = started_event_id;
    step.state.last_workflow_task_failure = None;
    let mut follow_ups = Vec::new();
    for (index, command) in commands.iter().enumerate() {
        if step.state.status.is_closed() {
            let message = format!(
                "command {index} ({}) comes after the command that closed the run",
                command.key().kind
            );
            return Err(Rejection {
                cause: WorkflowTaskFailedCause::BadCommand,
                message,
            });
        }
        super::run::apply_command(step, completed, command, &mut follow_ups).map_err(
            |message| Rejection {
                cause: WorkflowTaskFailedCause::BadCommand,
                message,
            },
        )?;
    }
    if step.state.status.is_closed() {
        return Ok(());
    }
    let delivered = !follow_ups.is_empty() || !step.state.buffered.is_empty();
    step.emit_all(follow_ups);
    step.flush_buffered();
    if delivered {
        step.ensure_workflow_task();
    }
    Ok(())
}

/// The task failed (reported by the worker, or its commands were rejected).
pub fn on_failed(
    step: &mut Step<'_>,
    token: &TaskToken,
    cause: WorkflowTaskFailedCause,
    failure: Failure,
    identity: &str,
) {
    check_token(step.state, token).expect("the service checks the token before failing");
    let WorkflowTaskState::Started { attempt, .. } = step.state.workflow_task else {
        unreachable!("checked")
    };
    step.emit(EventKind::WorkflowTaskFailed(WorkflowTaskFailed {
        scheduled_event_id: token.scheduled_event_id,
        started_event_id: token.started_event_id,
        cause,
        failure: failure.clone(),
        identity: identity.to_string(),
    }));
    step.state.workflow_task = WorkflowTaskState::None;
    step.state.last_workflow_task_failure = Some(failure);
    step.flush_buffered();
    let code_failed = matches!(
        cause,
        WorkflowTaskFailedCause::WorkflowWorkerUnhandledFailure
            | WorkflowTaskFailedCause::NonDeterministicError
            | WorkflowTaskFailedCause::BadCommand
    );
    if code_failed {
        let backoff_ms = (1_000u64 << (attempt.min(16) - 1)).min(WORKFLOW_TASK_BACKOFF_MS_MAX);
        let until = step.now.plus_ms(backoff_ms);
        step.state.workflow_task = WorkflowTaskState::Backoff {
            attempt: attempt + 1,
            until,
        };
    } else {
        step.schedule_workflow_task(1);
    }
}

/// The start-to-close timer of the started task fired.
pub fn on_timeout(step: &mut Step<'_>, scheduled_event_id: u64) -> bool {
    let WorkflowTaskState::Started {
        scheduled_event_id: scheduled,
        started_event_id,
        attempt,
        started_time,
    } = step.state.workflow_task
    else {
        return false;
    };
    let deadline = started_time.plus_ms(step.state.workflow_task_timeout_ms);
    if scheduled != scheduled_event_id || step.now < deadline {
        return false;
    }
    step.emit(EventKind::WorkflowTaskTimedOut(WorkflowTaskTimedOut {
        scheduled_event_id,
        started_event_id,
        timeout_type: TimeoutType::StartToClose,
    }));
    step.state.workflow_task = WorkflowTaskState::None;
    step.flush_buffered();
    step.schedule_workflow_task(attempt + 1);
    true
}

/// The backoff after a failed task ended.
pub fn on_backoff_fired(step: &mut Step<'_>, attempt: u32) -> bool {
    match step.state.workflow_task {
        WorkflowTaskState::Backoff {
            attempt: waiting,
            until,
        } if waiting == attempt && step.now >= until => {
            step.state.workflow_task = WorkflowTaskState::None;
            step.schedule_workflow_task(attempt);
            true
        }
        _ => false,
    }
}
