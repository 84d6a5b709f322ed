//! Commands: what workflow code asks the service to do. Each accepted command
//! becomes one event; replay matches the code's commands against those events on
//! a [`CommandKey`].

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::activity::RetryPolicy;
use crate::history::EventKind;
use crate::types::{Failure, payload_hash};

/// Schedule an activity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleActivityTask {
    /// Stable id within the run (the SDK numbers them "1", "2", ...).
    pub activity_id: String,
    /// The registered activity name.
    pub activity_type: String,
    /// Queue to dispatch to; the workflow's own queue if `None`.
    pub task_queue: Option<String>,
    /// The input payload.
    pub input: Value,
    /// Deadline of the whole activity, retries included.
    pub schedule_to_close_timeout_ms: Option<u64>,
    /// Deadline of each attempt's wait in the queue (never retried).
    pub schedule_to_start_timeout_ms: Option<u64>,
    /// Deadline of each attempt's run (retried).
    pub start_to_close_timeout_ms: Option<u64>,
    /// Maximum gap between heartbeats.
    pub heartbeat_timeout_ms: Option<u64>,
    /// How failures are retried; the default policy if `None`.
    pub retry_policy: Option<RetryPolicy>,
}

/// A command of workflow code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command_type", content = "attributes")]
#[allow(missing_docs)]
pub enum Command {
    ScheduleActivityTask(ScheduleActivityTask),
    RequestCancelActivityTask {
        activity_id: String,
    },
    StartTimer {
        timer_id: String,
        start_to_fire_timeout_ms: u64,
    },
    CancelTimer {
        timer_id: String,
    },
    RecordMarker {
        marker_name: String,
        details: Value,
    },
    CompleteWorkflowExecution {
        result: Value,
    },
    FailWorkflowExecution {
        failure: Failure,
    },
    CancelWorkflowExecution {
        details: Option<Value>,
    },
}

/// Marker name of `patched` markers.
pub const PATCH_MARKER_NAME: &str = "Patch";
/// Marker name of `side_effect` markers.
pub const SIDE_EFFECT_MARKER_NAME: &str = "SideEffect";

/// What replay compares between a command and its event: kind, stable id, type
/// name, and a hash of the input (or of the result, for completion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandKey {
    /// The command kind, e.g. `ScheduleActivityTask`.
    pub kind: &'static str,
    /// Activity id, timer id, or marker id.
    pub id: String,
    /// Activity type or marker name; empty where there is none.
    pub type_name: String,
    /// Hash of the input (activities) or result (completion).
    pub input_hash: Option<u64>,
}

impl CommandKey {
    /// The part of two keys that differs, in the order replay compares them.
    pub fn first_difference(&self, other: &CommandKey) -> Option<&'static str> {
        if self.kind != other.kind {
            Some("command kind")
        } else if self.id != other.id {
            Some("stable id")
        } else if self.type_name != other.type_name {
            Some("type name")
        } else if self.input_hash != other.input_hash {
            Some("input hash")
        } else {
            None
        }
    }
}

impl fmt::Display for CommandKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(id {:?}", self.kind, self.id)?;
        if !self.type_name.is_empty() {
            write!(f, ", type {:?}", self.type_name)?;
        }
        if let Some(hash) = self.input_hash {
            write!(f, ", input #{hash:016x}")?;
        }
        write!(f, ")")
    }
}

/// The id a marker is matched on: a patch's id, or a side effect's sequence number.
pub fn marker_id(marker_name: &str, details: &Value) -> String {
    let key = if marker_name == PATCH_MARKER_NAME {
        "id"
    } else {
        "seq"
    };
    match details.get(key) {
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

impl Command {
    /// The key replay compares.
    pub fn key(&self) -> CommandKey {
        let (kind, id, type_name, input_hash) = match self {
            Command::ScheduleActivityTask(a) => (
                "ScheduleActivityTask",
                a.activity_id.clone(),
                a.activity_type.clone(),
                Some(payload_hash(&a.input)),
            ),
            Command::RequestCancelActivityTask { activity_id } => (
                "RequestCancelActivityTask",
                activity_id.clone(),
                String::new(),
                None,
            ),
            Command::StartTimer { timer_id, .. } => {
                ("StartTimer", timer_id.clone(), String::new(), None)
            }
            Command::CancelTimer { timer_id } => {
                ("CancelTimer", timer_id.clone(), String::new(), None)
            }
            Command::RecordMarker {
                marker_name,
                details,
            } => (
                "RecordMarker",
                marker_id(marker_name, details),
                marker_name.clone(),
                None,
            ),
            Command::CompleteWorkflowExecution { result } => (
                "CompleteWorkflowExecution",
                String::new(),
                String::new(),
                Some(payload_hash(result)),
            ),
            Command::FailWorkflowExecution { .. } => {
                ("FailWorkflowExecution", String::new(), String::new(), None)
            }
            Command::CancelWorkflowExecution { .. } => (
                "CancelWorkflowExecution",
                String::new(),
                String::new(),
                None,
            ),
        };
        CommandKey {
            kind,
            id,
            type_name,
            input_hash,
        }
    }

    /// True for the commands that close the run.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Command::CompleteWorkflowExecution { .. }
                | Command::FailWorkflowExecution { .. }
                | Command::CancelWorkflowExecution { .. }
        )
    }
}

/// The key of a command event. `activity_id_of` maps a `scheduled_event_id` to
/// its activity id (for `ActivityTaskCancelRequested`). `None` for events that
/// are not commands.
pub fn event_command_key(
    kind: &EventKind,
    activity_id_of: impl Fn(u64) -> String,
) -> Option<CommandKey> {
    let command = match kind {
        EventKind::ActivityTaskScheduled(a) => {
            return Some(CommandKey {
                kind: "ScheduleActivityTask",
                id: a.activity_id.clone(),
                type_name: a.activity_type.clone(),
                input_hash: Some(payload_hash(&a.input)),
            });
        }
        EventKind::ActivityTaskCancelRequested(a) => Command::RequestCancelActivityTask {
            activity_id: activity_id_of(a.scheduled_event_id),
        },
        EventKind::TimerStarted(a) => Command::StartTimer {
            timer_id: a.timer_id.clone(),
            start_to_fire_timeout_ms: a.start_to_fire_timeout_ms,
        },
        EventKind::TimerCanceled(a) => Command::CancelTimer {
            timer_id: a.timer_id.clone(),
        },
        EventKind::MarkerRecorded(a) => Command::RecordMarker {
            marker_name: a.marker_name.clone(),
            details: a.details.clone(),
        },
        EventKind::WorkflowExecutionCompleted(a) => Command::CompleteWorkflowExecution {
            result: a.result.clone(),
        },
        EventKind::WorkflowExecutionFailed(a) => Command::FailWorkflowExecution {
            failure: a.failure.clone(),
        },
        EventKind::WorkflowExecutionCanceled(a) => Command::CancelWorkflowExecution {
            details: a.details.clone(),
        },
        _ => return None,
    };
    Some(command.key())
}
