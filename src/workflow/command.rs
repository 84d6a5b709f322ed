//! Commands: what workflow code asks the service to do. Each accepted command
//! becomes one event; replay matches the code's commands against those events on
//! a [`CommandKey`].

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::activity::RetryPolicy;
use crate::history::{EventKind, UpdateOutcome};
use crate::types::{Failure, IdReusePolicy, ParentClosePolicy, fnv1a64, payload_hash};

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
    /// Close the run and start a new run of the same workflow id in its place.
    ContinueAsNewWorkflowExecution(ContinueAsNewWorkflowExecution),
    /// Signal another workflow.
    SignalExternalWorkflowExecution(SignalExternalWorkflowExecution),
    /// Ask another workflow to cancel.
    RequestCancelExternalWorkflowExecution(RequestCancelExternalWorkflowExecution),
    /// Start a child workflow.
    StartChildWorkflowExecution(StartChildWorkflowExecution),
    /// Set search attributes of this run (Temporal's command name).
    UpsertWorkflowSearchAttributes {
        search_attributes: crate::visibility::SearchAttributes,
    },
    /// Set memo keys of this run (Temporal's `ModifyWorkflowProperties`).
    ModifyWorkflowProperties {
        upserted_memo: crate::visibility::Memo,
    },
    /// Accept an update the workflow task carried: its validator let it in.
    AcceptUpdate(AcceptUpdate),
    /// Record what an accepted update's handler returned.
    CompleteUpdate {
        update_id: String,
        outcome: UpdateOutcome,
    },
}

/// Accept an update: the request as the workflow task carried it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AcceptUpdate {
    pub update_id: String,
    pub update_name: String,
    pub input: Value,
    pub identity: String,
}

/// Start a child workflow: a run whose close is reported to this one, and
/// which this run's close may terminate or cancel (its parent close policy).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartChildWorkflowExecution {
    /// Stable id within the run (the SDK numbers them "1", "2", ...).
    pub seq: String,
    pub workflow_id: String,
    pub workflow_type: String,
    /// The child's task queue; the parent's if `None`.
    pub task_queue: Option<String>,
    pub input: Value,
    pub execution_timeout_ms: Option<u64>,
    pub workflow_task_timeout_ms: Option<u64>,
    pub parent_close_policy: ParentClosePolicy,
    pub workflow_id_reuse_policy: IdReusePolicy,
}

/// Signal another workflow (its current run, or the run named).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalExternalWorkflowExecution {
    /// Stable id within the run (the SDK numbers them "1", "2", ...).
    pub seq: String,
    pub workflow_id: String,
    pub run_id: Option<String>,
    pub signal_name: String,
    pub input: Value,
}

/// Ask another workflow (its current run, or the run named) to cancel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestCancelExternalWorkflowExecution {
    /// Stable id within the run, numbered with the signals' (one sequence).
    pub seq: String,
    pub workflow_id: String,
    pub run_id: Option<String>,
}

/// Continue as a new run: the new run's input, and what it changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContinueAsNewWorkflowExecution {
    /// The new run's input.
    pub input: Value,
    /// The new run's workflow type; this run's if `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_type: Option<String>,
    /// The new run's task queue; this run's if `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_queue: Option<String>,
}

/// Marker name of `patched` markers.
pub const PATCH_MARKER_NAME: &str = "core_patch";
/// The patch marker's name in histories recorded before Retrace wrote
/// Temporal's (details `{"id", "deprecated"}`); replayed as recorded.
pub const LEGACY_PATCH_MARKER_NAME: &str = "Patch";
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
        "patch_id"
    } else if marker_name == LEGACY_PATCH_MARKER_NAME {
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
            Command::CompleteWorkflowExecution { .. }
            | Command::FailWorkflowExecution { .. }
            | Command::CancelWorkflowExecution { .. } => return self.close_key(),
            // Input only: the type and queue default to this run's, which a
            // history records but the code need not name.
            Command::ContinueAsNewWorkflowExecution(a) => (
                "ContinueAsNewWorkflowExecution",
                String::new(),
                String::new(),
                Some(payload_hash(&a.input)),
            ),
            Command::SignalExternalWorkflowExecution(a) => (
                "SignalExternalWorkflowExecution",
                a.seq.clone(),
                a.signal_name.clone(),
                Some(payload_hash(&a.input) ^ fnv1a64(a.workflow_id.as_bytes())),
            ),
            Command::RequestCancelExternalWorkflowExecution(a) => (
                "RequestCancelExternalWorkflowExecution",
                a.seq.clone(),
                String::new(),
                Some(fnv1a64(a.workflow_id.as_bytes())),
            ),
            Command::StartChildWorkflowExecution(a) => (
                "StartChildWorkflowExecution",
                a.seq.clone(),
                a.workflow_type.clone(),
                Some(payload_hash(&a.input) ^ fnv1a64(a.workflow_id.as_bytes())),
            ),
            Command::AcceptUpdate(_) | Command::CompleteUpdate { .. } => self.update_key(),
            Command::UpsertWorkflowSearchAttributes { .. }
            | Command::ModifyWorkflowProperties { .. } => return self.visibility_key(),
        };
        CommandKey {
            kind,
            id,
            type_name,
            input_hash,
        }
    }

    /// The key parts of an update's command.
    fn update_key(&self) -> (&'static str, String, String, Option<u64>) {
        match self {
            Command::AcceptUpdate(a) => (
                "AcceptUpdate",
                a.update_id.clone(),
                a.update_name.clone(),
                Some(payload_hash(&a.input)),
            ),
            Command::CompleteUpdate { update_id, outcome } => {
                let result_hash = match outcome {
                    UpdateOutcome::Success(result) => Some(payload_hash(result)),
                    UpdateOutcome::Failure(_) => None,
                };
                (
                    "CompleteUpdate",
                    update_id.clone(),
                    String::new(),
                    result_hash,
                )
            }
            _ => unreachable!("only update commands"),
        }
    }

    /// The key of a close command (complete, fail, cancel).
    fn close_key(&self) -> CommandKey {
        let (kind, input_hash) = match self {
            Command::CompleteWorkflowExecution { result } => {
                ("CompleteWorkflowExecution", Some(payload_hash(result)))
            }
            Command::FailWorkflowExecution { .. } => ("FailWorkflowExecution", None),
            Command::CancelWorkflowExecution { .. } => ("CancelWorkflowExecution", None),
            _ => unreachable!("close_key is asked of close commands"),
        };
        CommandKey {
            kind,
            id: String::new(),
            type_name: String::new(),
            input_hash,
        }
    }

    /// The key of a search attribute or memo upsert: matched on what it
    /// sets, so a different value is a different decision.
    fn visibility_key(&self) -> CommandKey {
        let (kind, set) = match self {
            Command::UpsertWorkflowSearchAttributes { search_attributes } => (
                "UpsertWorkflowSearchAttributes",
                serde_json::to_value(search_attributes),
            ),
            Command::ModifyWorkflowProperties { upserted_memo } => (
                "ModifyWorkflowProperties",
                serde_json::to_value(upserted_memo),
            ),
            _ => unreachable!("visibility_key is asked of upserts"),
        };
        CommandKey {
            kind,
            id: String::new(),
            type_name: String::new(),
            input_hash: Some(payload_hash(&set.unwrap_or_default())),
        }
    }

    /// True for the commands that close the run.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Command::CompleteWorkflowExecution { .. }
                | Command::FailWorkflowExecution { .. }
                | Command::CancelWorkflowExecution { .. }
                | Command::ContinueAsNewWorkflowExecution(_)
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
    if let Some(key) = direct_event_key(kind) {
        return Some(key);
    }
    let command = match kind {
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
        EventKind::SignalExternalWorkflowExecutionInitiated(a) => {
            Command::SignalExternalWorkflowExecution(SignalExternalWorkflowExecution {
                seq: a.control.clone(),
                workflow_id: a.workflow_id.clone(),
                run_id: a.run_id.clone(),
                signal_name: a.signal_name.clone(),
                input: a.input.clone(),
            })
        }
        EventKind::RequestCancelExternalWorkflowExecutionInitiated(a) => {
            Command::RequestCancelExternalWorkflowExecution(
                RequestCancelExternalWorkflowExecution {
                    seq: a.control.clone(),
                    workflow_id: a.workflow_id.clone(),
                    run_id: a.run_id.clone(),
                },
            )
        }
        EventKind::StartChildWorkflowExecutionInitiated(a) => {
            Command::StartChildWorkflowExecution(StartChildWorkflowExecution {
                seq: a.control.clone(),
                workflow_id: a.workflow_id.clone(),
                workflow_type: a.workflow_type.clone(),
                task_queue: Some(a.task_queue.clone()),
                input: a.input.clone(),
                execution_timeout_ms: a.execution_timeout_ms,
                workflow_task_timeout_ms: a.workflow_task_timeout_ms,
                parent_close_policy: a.parent_close_policy,
                workflow_id_reuse_policy: a.workflow_id_reuse_policy,
            })
        }
        EventKind::WorkflowExecutionContinuedAsNew(a) => {
            Command::ContinueAsNewWorkflowExecution(ContinueAsNewWorkflowExecution {
                input: a.input.clone(),
                workflow_type: Some(a.workflow_type.clone()),
                task_queue: Some(a.task_queue.clone()),
            })
        }
        EventKind::WorkflowExecutionUpdateAccepted(_)
        | EventKind::WorkflowExecutionUpdateCompleted(_) => update_command(kind)?,
        _ => return None,
    };
    Some(command.key())
}

/// The command an update's event records (`None` for other events).
pub fn update_command(kind: &EventKind) -> Option<Command> {
    match kind {
        EventKind::WorkflowExecutionUpdateAccepted(a) => {
            Some(Command::AcceptUpdate(AcceptUpdate {
                update_id: a.update_id.clone(),
                update_name: a.update_name.clone(),
                input: a.input.clone(),
                identity: a.identity.clone(),
            }))
        }
        EventKind::WorkflowExecutionUpdateCompleted(a) => Some(Command::CompleteUpdate {
            update_id: a.update_id.clone(),
            outcome: a.outcome.clone(),
        }),
        _ => None,
    }
}

/// The keys of command events not rebuilt as their command first.
fn direct_event_key(kind: &EventKind) -> Option<CommandKey> {
    let command = match kind {
        EventKind::ActivityTaskScheduled(a) => {
            return Some(CommandKey {
                kind: "ScheduleActivityTask",
                id: a.activity_id.clone(),
                type_name: a.activity_type.clone(),
                input_hash: Some(payload_hash(&a.input)),
            });
        }
        EventKind::UpsertWorkflowSearchAttributes(a) => Command::UpsertWorkflowSearchAttributes {
            search_attributes: a.search_attributes.clone(),
        },
        EventKind::WorkflowPropertiesModified(a) => Command::ModifyWorkflowProperties {
            upserted_memo: a.upserted_memo.clone(),
        },
        _ => return None,
    };
    Some(command.key())
}
