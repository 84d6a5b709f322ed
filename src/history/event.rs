//! Events of a run's history, named as Temporal names them.
//!
//! Every event has an id (1..n without gaps), the service time it was written at,
//! and typed attributes. Outcome events point at the event that started what they
//! close (`scheduled_event_id`, `started_event_id`), so a history can be checked
//! for well-formedness without any other state (see [`super::validate`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::activity::RetryPolicy;
use crate::types::{Failure, IdReusePolicy, ParentClosePolicy, RetryState, TimeoutType, Timestamp};
use crate::visibility::{Memo, SearchAttributes};

/// One event of a run's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the history, starting at 1, without gaps.
    pub event_id: u64,
    /// Service time at which the event was written.
    pub event_time: Timestamp,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// A new event.
    pub fn new(event_id: u64, event_time: Timestamp, kind: EventKind) -> Event {
        Event {
            event_id,
            event_time,
            kind,
        }
    }
}

/// The event types. Serialized as `{"event_type": "...", "attributes": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "attributes")]
#[allow(missing_docs)]
pub enum EventKind {
    WorkflowExecutionStarted(WorkflowExecutionStarted),
    WorkflowTaskScheduled(WorkflowTaskScheduled),
    WorkflowTaskStarted(WorkflowTaskStarted),
    WorkflowTaskCompleted(WorkflowTaskCompleted),
    WorkflowTaskTimedOut(WorkflowTaskTimedOut),
    WorkflowTaskFailed(WorkflowTaskFailed),
    ActivityTaskScheduled(ActivityTaskScheduled),
    ActivityTaskStarted(ActivityTaskStarted),
    ActivityTaskCompleted(ActivityTaskCompleted),
    ActivityTaskFailed(ActivityTaskFailed),
    ActivityTaskTimedOut(ActivityTaskTimedOut),
    ActivityTaskCancelRequested(ActivityTaskCancelRequested),
    ActivityTaskCanceled(ActivityTaskCanceled),
    TimerStarted(TimerStarted),
    TimerFired(TimerFired),
    TimerCanceled(TimerCanceled),
    WorkflowExecutionSignaled(WorkflowExecutionSignaled),
    MarkerRecorded(MarkerRecorded),
    WorkflowExecutionCancelRequested(WorkflowExecutionCancelRequested),
    WorkflowExecutionCompleted(WorkflowExecutionCompleted),
    WorkflowExecutionFailed(WorkflowExecutionFailed),
    WorkflowExecutionTimedOut(WorkflowExecutionTimedOut),
    WorkflowExecutionCanceled(WorkflowExecutionCanceled),
    WorkflowExecutionTerminated(WorkflowExecutionTerminated),
    WorkflowExecutionContinuedAsNew(WorkflowExecutionContinuedAsNew),
    SignalExternalWorkflowExecutionInitiated(SignalExternalWorkflowExecutionInitiated),
    ExternalWorkflowExecutionSignaled(ExternalWorkflowExecutionSignaled),
    SignalExternalWorkflowExecutionFailed(SignalExternalWorkflowExecutionFailed),
    RequestCancelExternalWorkflowExecutionInitiated(
        RequestCancelExternalWorkflowExecutionInitiated,
    ),
    ExternalWorkflowExecutionCancelRequested(ExternalWorkflowExecutionCancelRequested),
    RequestCancelExternalWorkflowExecutionFailed(RequestCancelExternalWorkflowExecutionFailed),
    StartChildWorkflowExecutionInitiated(StartChildWorkflowExecutionInitiated),
    StartChildWorkflowExecutionFailed(StartChildWorkflowExecutionFailed),
    ChildWorkflowExecutionStarted(ChildWorkflowExecutionStarted),
    ChildWorkflowExecutionCompleted(ChildWorkflowExecutionCompleted),
    ChildWorkflowExecutionFailed(ChildWorkflowExecutionFailed),
    ChildWorkflowExecutionCanceled(ChildWorkflowExecutionCanceled),
    ChildWorkflowExecutionTimedOut(ChildWorkflowExecutionTimedOut),
    ChildWorkflowExecutionTerminated(ChildWorkflowExecutionTerminated),
    WorkflowExecutionUpdateAccepted(WorkflowExecutionUpdateAccepted),
    WorkflowExecutionUpdateCompleted(WorkflowExecutionUpdateCompleted),
    UpsertWorkflowSearchAttributes(UpsertWorkflowSearchAttributes),
    WorkflowPropertiesModified(WorkflowPropertiesModified),
}

/// Every event type name, in declaration order (used for clear errors on unknown types).
pub const EVENT_TYPE_NAMES: [&str; 43] = [
    "WorkflowExecutionStarted",
    "WorkflowTaskScheduled",
    "WorkflowTaskStarted",
    "WorkflowTaskCompleted",
    "WorkflowTaskTimedOut",
    "WorkflowTaskFailed",
    "ActivityTaskScheduled",
    "ActivityTaskStarted",
    "ActivityTaskCompleted",
    "ActivityTaskFailed",
    "ActivityTaskTimedOut",
    "ActivityTaskCancelRequested",
    "ActivityTaskCanceled",
    "TimerStarted",
    "TimerFired",
    "TimerCanceled",
    "WorkflowExecutionSignaled",
    "MarkerRecorded",
    "WorkflowExecutionCancelRequested",
    "WorkflowExecutionCompleted",
    "WorkflowExecutionFailed",
    "WorkflowExecutionTimedOut",
    "WorkflowExecutionCanceled",
    "WorkflowExecutionTerminated",
    "WorkflowExecutionContinuedAsNew",
    "SignalExternalWorkflowExecutionInitiated",
    "ExternalWorkflowExecutionSignaled",
    "SignalExternalWorkflowExecutionFailed",
    "RequestCancelExternalWorkflowExecutionInitiated",
    "ExternalWorkflowExecutionCancelRequested",
    "RequestCancelExternalWorkflowExecutionFailed",
    "StartChildWorkflowExecutionInitiated",
    "StartChildWorkflowExecutionFailed",
    "ChildWorkflowExecutionStarted",
    "ChildWorkflowExecutionCompleted",
    "ChildWorkflowExecutionFailed",
    "ChildWorkflowExecutionCanceled",
    "ChildWorkflowExecutionTimedOut",
    "ChildWorkflowExecutionTerminated",
    "WorkflowExecutionUpdateAccepted",
    "WorkflowExecutionUpdateCompleted",
    "UpsertWorkflowSearchAttributes",
    "WorkflowPropertiesModified",
];

impl EventKind {
    /// Temporal's name of this event type.
    pub fn name(&self) -> &'static str {
        use EventKind::*;
        let index = match self {
            WorkflowExecutionStarted(_) => 0,
            WorkflowTaskScheduled(_) => 1,
            WorkflowTaskStarted(_) => 2,
            WorkflowTaskCompleted(_) => 3,
            WorkflowTaskTimedOut(_) => 4,
            WorkflowTaskFailed(_) => 5,
            ActivityTaskScheduled(_) => 6,
            ActivityTaskStarted(_) => 7,
            ActivityTaskCompleted(_) => 8,
            ActivityTaskFailed(_) => 9,
            ActivityTaskTimedOut(_) => 10,
            ActivityTaskCancelRequested(_) => 11,
            ActivityTaskCanceled(_) => 12,
            TimerStarted(_) => 13,
            TimerFired(_) => 14,
            TimerCanceled(_) => 15,
            WorkflowExecutionSignaled(_) => 16,
            MarkerRecorded(_) => 17,
            WorkflowExecutionCancelRequested(_) => 18,
            WorkflowExecutionCompleted(_) => 19,
            WorkflowExecutionFailed(_) => 20,
            WorkflowExecutionTimedOut(_) => 21,
            WorkflowExecutionCanceled(_) => 22,
            WorkflowExecutionTerminated(_) => 23,
            WorkflowExecutionContinuedAsNew(_) => 24,
            SignalExternalWorkflowExecutionInitiated(_) => 25,
            ExternalWorkflowExecutionSignaled(_) => 26,
            SignalExternalWorkflowExecutionFailed(_) => 27,
            RequestCancelExternalWorkflowExecutionInitiated(_) => 28,
            ExternalWorkflowExecutionCancelRequested(_) => 29,
            RequestCancelExternalWorkflowExecutionFailed(_) => 30,
            StartChildWorkflowExecutionInitiated(_) => 31,
            StartChildWorkflowExecutionFailed(_) => 32,
            ChildWorkflowExecutionStarted(_) => 33,
            ChildWorkflowExecutionCompleted(_) => 34,
            ChildWorkflowExecutionFailed(_) => 35,
            ChildWorkflowExecutionCanceled(_) => 36,
            ChildWorkflowExecutionTimedOut(_) => 37,
            ChildWorkflowExecutionTerminated(_) => 38,
            WorkflowExecutionUpdateAccepted(_) => 39,
            WorkflowExecutionUpdateCompleted(_) => 40,
            UpsertWorkflowSearchAttributes(_) => 41,
            WorkflowPropertiesModified(_) => 42,
        };
        EVENT_TYPE_NAMES[index]
    }

    /// True for the events that close a run: nothing may follow them.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventKind::WorkflowExecutionCompleted(_)
                | EventKind::WorkflowExecutionFailed(_)
                | EventKind::WorkflowExecutionTimedOut(_)
                | EventKind::WorkflowExecutionCanceled(_)
                | EventKind::WorkflowExecutionTerminated(_)
                | EventKind::WorkflowExecutionContinuedAsNew(_)
        )
    }

    /// The workflow task completion a command event was produced by, if this event
    /// records a command (the events a workflow's code emits).
    pub fn command_of(&self) -> Option<u64> {
        use EventKind::*;
        match self {
            ActivityTaskScheduled(a) => Some(a.workflow_task_completed_event_id),
            ActivityTaskCancelRequested(a) => Some(a.workflow_task_completed_event_id),
            TimerStarted(a) => Some(a.workflow_task_completed_event_id),
            TimerCanceled(a) => Some(a.workflow_task_completed_event_id),
            MarkerRecorded(a) => Some(a.workflow_task_completed_event_id),
            WorkflowExecutionCompleted(a) => Some(a.workflow_task_completed_event_id),
            WorkflowExecutionFailed(a) => Some(a.workflow_task_completed_event_id),
            WorkflowExecutionCanceled(a) => Some(a.workflow_task_completed_event_id),
            WorkflowExecutionContinuedAsNew(a) => Some(a.workflow_task_completed_event_id),
            SignalExternalWorkflowExecutionInitiated(a) => Some(a.workflow_task_completed_event_id),
            RequestCancelExternalWorkflowExecutionInitiated(a) => {
                Some(a.workflow_task_completed_event_id)
            }
            StartChildWorkflowExecutionInitiated(a) => Some(a.workflow_task_completed_event_id),
            WorkflowExecutionUpdateAccepted(a) => Some(a.workflow_task_completed_event_id),
            WorkflowExecutionUpdateCompleted(a) => Some(a.workflow_task_completed_event_id),
            UpsertWorkflowSearchAttributes(a) => Some(a.workflow_task_completed_event_id),
            WorkflowPropertiesModified(a) => Some(a.workflow_task_completed_event_id),
            _ => None,
        }
    }

    /// Every payload the event carries (inputs, results, details), for size limits.
    pub fn payloads<'a>(&'a self) -> Vec<&'a Value> {
        use EventKind::*;
        let mut out: Vec<&Value> = Vec::new();
        let details =
            |failure: &'a Failure| failure.chain().filter_map(|cause| cause.details.as_ref());
        match self {
            ActivityTaskFailed(a) => out.extend(details(&a.failure)),
            WorkflowTaskFailed(a) => out.extend(details(&a.failure)),
            WorkflowExecutionFailed(a) => out.extend(details(&a.failure)),
            ActivityTaskStarted(a) => out.extend(a.last_failure.iter().flat_map(details)),
            WorkflowExecutionStarted(a) => out.push(&a.input),
            ActivityTaskScheduled(a) => out.push(&a.input),
            ActivityTaskCompleted(a) => out.push(&a.result),
            ActivityTaskTimedOut(a) => {
                out.extend(a.last_heartbeat_details.as_ref());
                out.extend(a.last_failure.iter().flat_map(details));
            }
            ActivityTaskCanceled(a) => out.extend(a.details.as_ref()),
            WorkflowExecutionSignaled(a) => out.push(&a.input),
            MarkerRecorded(a) => out.push(&a.details),
            WorkflowExecutionCompleted(a) => out.push(&a.result),
            WorkflowExecutionCanceled(a) => out.extend(a.details.as_ref()),
            WorkflowExecutionTerminated(a) => out.extend(a.details.as_ref()),
            WorkflowExecutionContinuedAsNew(a) => out.push(&a.input),
            SignalExternalWorkflowExecutionInitiated(a) => out.push(&a.input),
            StartChildWorkflowExecutionInitiated(a) => out.push(&a.input),
            ChildWorkflowExecutionCompleted(a) => out.push(&a.result),
            ChildWorkflowExecutionFailed(a) => out.extend(details(&a.failure)),
            ChildWorkflowExecutionCanceled(a) => out.extend(a.details.as_ref()),
            WorkflowExecutionUpdateAccepted(a) => out.push(&a.input),
            WorkflowExecutionUpdateCompleted(a) => match &a.outcome {
                UpdateOutcome::Success(result) => out.push(result),
                UpdateOutcome::Failure(failure) => out.extend(details(failure)),
            },
            _ => {}
        }
        out
    }
}

/// The run was started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowExecutionStarted {
    pub workflow_type: String,
    pub workflow_id: String,
    pub task_queue: String,
    pub input: Value,
    /// Whole-run deadline (Temporal's workflow execution timeout); `None` is unbounded.
    pub execution_timeout_ms: Option<u64>,
    /// Start-to-close timeout of each workflow task.
    pub workflow_task_timeout_ms: u64,
    pub attempt: u32,
    pub identity: String,
    pub request_id: String,
    /// The run this one continues, when it was started by continue-as-new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continued_execution_run_id: Option<String>,
    /// The parent, when this run is a child workflow (or continues one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentExecution>,
    /// How long the first workflow task waits: the start delay, or a
    /// retry's backoff (Temporal's `firstWorkflowTaskBackoff`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_workflow_task_backoff_ms: Option<u64>,
    /// The workflow's retry policy: a failed run is retried as a new run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<Box<RetryPolicy>>,
    /// What started this run in place of `continued_execution_run_id`:
    /// `None` for a first run (and for continue-as-new in histories written
    /// before this field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<ContinueAsNewInitiator>,
    /// The failure of the run this one retries (or of the cron run before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continued_failure: Option<Box<Failure>>,
    /// The cron schedule the workflow's runs start on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_schedule: Option<String>,
    /// The result of the cron workflow's last run that completed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::types::some_value"
    )]
    pub last_completion_result: Option<Value>,
    /// The search attributes the run starts with.
    #[serde(default, skip_serializing_if = "SearchAttributes::is_empty")]
    pub search_attributes: SearchAttributes,
    /// The memo the run starts with (Temporal carries it here too).
    #[serde(default, skip_serializing_if = "Memo::is_empty")]
    pub memo: Memo,
}

/// Why a run started in place of another (Temporal's `ContinueAsNewInitiator`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContinueAsNewInitiator {
    /// The workflow continued as new.
    Workflow,
    /// The workflow failed and its retry policy started it again.
    Retry,
    /// The cron schedule started the next run.
    CronSchedule,
}

/// A child's parent: its run, and the event that initiated the child.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentExecution {
    pub workflow_id: String,
    pub run_id: String,
    pub initiated_event_id: u64,
}

/// A workflow task was put on the task queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowTaskScheduled {
    pub task_queue: String,
    pub start_to_close_timeout_ms: u64,
    pub attempt: u32,
}

/// A worker took the workflow task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowTaskStarted {
    pub scheduled_event_id: u64,
    pub identity: String,
    pub request_id: String,
}

/// The worker returned the commands of the workflow task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowTaskCompleted {
    pub scheduled_event_id: u64,
    pub started_event_id: u64,
    pub identity: String,
}

/// The workflow task was not completed in time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowTaskTimedOut {
    pub scheduled_event_id: u64,
    pub started_event_id: u64,
    pub timeout_type: TimeoutType,
}

/// Why a workflow task failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkflowTaskFailedCause {
    /// The workflow code panicked or could not be set up (unknown type, bad input).
    WorkflowWorkerUnhandledFailure,
    /// The code did not replay to the recorded history.
    NonDeterministicError,
    /// The commands were rejected by the service.
    BadCommand,
    /// The worker gave the task back (for example while shutting down).
    WorkerShutdown,
    /// The task would close the run, but new events arrived while it ran:
    /// it runs again so the workflow sees them.
    UnhandledCommand,
    /// The run was closed from outside (terminated, timed out) while the task
    /// ran; what arrived meanwhile is written before the run's end.
    ForceCloseCommand,
}

/// The workflow task failed; a new one is scheduled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowTaskFailed {
    pub scheduled_event_id: u64,
    pub started_event_id: u64,
    pub cause: WorkflowTaskFailedCause,
    pub failure: Failure,
    pub identity: String,
}

/// The workflow scheduled an activity. Timeouts and the retry policy are written
/// with their defaults filled in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivityTaskScheduled {
    pub activity_id: String,
    pub activity_type: String,
    pub task_queue: String,
    pub input: Value,
    pub schedule_to_close_timeout_ms: Option<u64>,
    pub schedule_to_start_timeout_ms: Option<u64>,
    pub start_to_close_timeout_ms: Option<u64>,
    pub heartbeat_timeout_ms: Option<u64>,
    pub retry_policy: RetryPolicy,
    pub workflow_task_completed_event_id: u64,
}

/// The activity's last attempt started. Written when the attempt ends, just before
/// the outcome, with the attempt number and the previous attempt's failure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivityTaskStarted {
    pub scheduled_event_id: u64,
    pub identity: String,
    pub attempt: u32,
    pub last_failure: Option<Failure>,
}

/// The activity returned a result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivityTaskCompleted {
    pub scheduled_event_id: u64,
    pub started_event_id: u64,
    pub result: Value,
    pub identity: String,
}

/// The activity failed and will not be retried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivityTaskFailed {
    pub scheduled_event_id: u64,
    pub started_event_id: u64,
    pub failure: Failure,
    pub retry_state: RetryState,
    pub identity: String,
}

/// A timeout of the activity fired and it will not be retried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivityTaskTimedOut {
    pub scheduled_event_id: u64,
    /// `None` when no attempt ever started (a schedule-to-start timeout).
    pub started_event_id: Option<u64>,
    pub timeout_type: TimeoutType,
    pub retry_state: RetryState,
    pub last_failure: Option<Failure>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::types::some_value"
    )]
    pub last_heartbeat_details: Option<Value>,
    /// The timeout as a failure (Temporal's `failure`, with its
    /// `TimeoutFailureInfo`): its message says which limit ended the
    /// activity, how long it was and at which attempt. Absent in histories
    /// written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

/// The workflow asked for the activity to be canceled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivityTaskCancelRequested {
    pub scheduled_event_id: u64,
    pub workflow_task_completed_event_id: u64,
}

/// The activity was canceled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivityTaskCanceled {
    pub scheduled_event_id: u64,
    /// `None` when the activity was canceled before any attempt started.
    pub started_event_id: Option<u64>,
    pub latest_cancel_requested_event_id: u64,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::types::some_value"
    )]
    pub details: Option<Value>,
    pub identity: String,
}

/// The workflow started a durable timer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimerStarted {
    pub timer_id: String,
    pub start_to_fire_timeout_ms: u64,
    pub workflow_task_completed_event_id: u64,
}

/// A durable timer fired.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimerFired {
    pub timer_id: String,
    pub started_event_id: u64,
}

/// The workflow canceled a durable timer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimerCanceled {
    pub timer_id: String,
    pub started_event_id: u64,
    pub workflow_task_completed_event_id: u64,
}

/// A signal was delivered to the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowExecutionSignaled {
    pub signal_name: String,
    pub input: Value,
    pub identity: String,
}

/// A marker: a side effect's value, or a patch (`{"id", "deprecated"}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MarkerRecorded {
    pub marker_name: String,
    pub details: Value,
    pub workflow_task_completed_event_id: u64,
}

/// Someone asked for the run to be canceled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowExecutionCancelRequested {
    pub cause: String,
    pub identity: String,
}

/// The workflow returned a result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowExecutionCompleted {
    pub result: Value,
    pub workflow_task_completed_event_id: u64,
    /// The cron workflow's next run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_execution_run_id: Option<String>,
}

/// The workflow returned an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowExecutionFailed {
    pub failure: Failure,
    pub workflow_task_completed_event_id: u64,
    /// Whether the workflow's retry policy retries it, and if not why; `None`
    /// when the run has no retry policy (Temporal's `RetryPolicyNotSet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_state: Option<RetryState>,
    /// The run that retries this one (or the cron workflow's next run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_execution_run_id: Option<String>,
}

/// The run's execution timeout fired.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowExecutionTimedOut {
    pub retry_state: RetryState,
}

/// The workflow accepted a cancel request and stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowExecutionCanceled {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::types::some_value"
    )]
    pub details: Option<Value>,
    pub workflow_task_completed_event_id: u64,
}

/// The run was terminated from outside; no workflow code ran for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowExecutionTerminated {
    pub reason: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::types::some_value"
    )]
    pub details: Option<Value>,
    pub identity: String,
}

/// The run closed by continuing as a new run of the same workflow id, started
/// in the same write (Temporal's `WorkflowExecutionContinuedAsNew`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowExecutionContinuedAsNew {
    /// The run started in its place.
    pub new_execution_run_id: String,
    pub workflow_type: String,
    pub task_queue: String,
    /// The new run's input.
    pub input: Value,
    /// What is left of the execution timeout: the chain shares one deadline.
    pub execution_timeout_ms: Option<u64>,
    pub workflow_task_timeout_ms: u64,
    pub workflow_task_completed_event_id: u64,
}

/// Workflow code asked to signal another workflow (Temporal's
/// `SignalExternalWorkflowExecutionInitiated`); `control` is the command's
/// sequence number, which the outcome events repeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalExternalWorkflowExecutionInitiated {
    pub workflow_id: String,
    /// A specific run; the workflow id's current run if `None`.
    pub run_id: Option<String>,
    pub signal_name: String,
    pub input: Value,
    pub control: String,
    pub workflow_task_completed_event_id: u64,
}

/// The signal was delivered to the run named.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExternalWorkflowExecutionSignaled {
    pub initiated_event_id: u64,
    pub workflow_id: String,
    /// The run that got the signal.
    pub run_id: String,
    pub control: String,
}

/// Why a signal or cancel request to another workflow was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExternalFailedCause {
    /// No run of that id (or not that run), or it is closed.
    ExternalWorkflowExecutionNotFound,
}

/// The signal was not delivered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalExternalWorkflowExecutionFailed {
    pub initiated_event_id: u64,
    pub workflow_id: String,
    pub run_id: Option<String>,
    pub cause: ExternalFailedCause,
    pub control: String,
}

/// Workflow code asked to cancel another workflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestCancelExternalWorkflowExecutionInitiated {
    pub workflow_id: String,
    pub run_id: Option<String>,
    pub control: String,
    pub workflow_task_completed_event_id: u64,
}

/// The cancel request was recorded by the run named.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExternalWorkflowExecutionCancelRequested {
    pub initiated_event_id: u64,
    pub workflow_id: String,
    pub run_id: String,
    pub control: String,
}

/// The cancel request was not delivered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestCancelExternalWorkflowExecutionFailed {
    pub initiated_event_id: u64,
    pub workflow_id: String,
    pub run_id: Option<String>,
    pub cause: ExternalFailedCause,
    pub control: String,
}

/// Workflow code asked to start a child workflow (Temporal's
/// `StartChildWorkflowExecutionInitiated`); `control` is the command's
/// sequence number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartChildWorkflowExecutionInitiated {
    pub workflow_id: String,
    pub workflow_type: String,
    pub task_queue: String,
    pub input: Value,
    pub execution_timeout_ms: Option<u64>,
    pub workflow_task_timeout_ms: Option<u64>,
    pub parent_close_policy: ParentClosePolicy,
    pub workflow_id_reuse_policy: IdReusePolicy,
    pub control: String,
    pub workflow_task_completed_event_id: u64,
}

/// Why a child workflow was not started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartChildFailedCause {
    /// The workflow id is running, or its reuse policy refuses a new run.
    WorkflowAlreadyExists,
}

/// The child was not started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartChildWorkflowExecutionFailed {
    pub initiated_event_id: u64,
    pub workflow_id: String,
    pub workflow_type: String,
    pub cause: StartChildFailedCause,
    pub control: String,
}

/// The child's first run started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildWorkflowExecutionStarted {
    pub initiated_event_id: u64,
    pub workflow_id: String,
    pub run_id: String,
    pub workflow_type: String,
}

/// The child completed; `run_id` is the run that closed (the last of a
/// continue-as-new chain).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildWorkflowExecutionCompleted {
    pub initiated_event_id: u64,
    pub started_event_id: u64,
    pub workflow_id: String,
    pub run_id: String,
    pub result: Value,
}

/// The child failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildWorkflowExecutionFailed {
    pub initiated_event_id: u64,
    pub started_event_id: u64,
    pub workflow_id: String,
    pub run_id: String,
    pub failure: Failure,
}

/// The child was canceled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildWorkflowExecutionCanceled {
    pub initiated_event_id: u64,
    pub started_event_id: u64,
    pub workflow_id: String,
    pub run_id: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::types::some_value"
    )]
    pub details: Option<Value>,
}

/// The child's execution timeout fired.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildWorkflowExecutionTimedOut {
    pub initiated_event_id: u64,
    pub started_event_id: u64,
    pub workflow_id: String,
    pub run_id: String,
}

/// The child was terminated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildWorkflowExecutionTerminated {
    pub initiated_event_id: u64,
    pub started_event_id: u64,
    pub workflow_id: String,
    pub run_id: String,
    pub reason: String,
}

/// The workflow accepted an update: its validator let it in, and its handler
/// runs (Temporal's `WorkflowExecutionUpdateAccepted`; a rejected update
/// writes nothing). Written by the completion of the workflow task that
/// accepted it, with the request as the worker received it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowExecutionUpdateAccepted {
    /// The update's id, unique within the run (Temporal's `protocolInstanceId`).
    pub update_id: String,
    /// The update handler's name.
    pub update_name: String,
    /// The handler's argument.
    pub input: Value,
    /// Who sent the update.
    pub identity: String,
    pub workflow_task_completed_event_id: u64,
}

/// An accepted update's handler returned (Temporal's
/// `WorkflowExecutionUpdateCompleted`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowExecutionUpdateCompleted {
    pub update_id: String,
    /// Its `WorkflowExecutionUpdateAccepted`.
    pub accepted_event_id: u64,
    pub outcome: UpdateOutcome,
    pub workflow_task_completed_event_id: u64,
}

/// What an update's handler returned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateOutcome {
    /// The handler's result.
    Success(Value),
    /// The handler's error.
    Failure(Failure),
}

/// The workflow upserted search attributes (a command; Temporal's name).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpsertWorkflowSearchAttributes {
    /// The attributes set; others keep their values.
    pub search_attributes: SearchAttributes,
    pub workflow_task_completed_event_id: u64,
}

/// The workflow modified its memo (a command; Temporal's name).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowPropertiesModified {
    /// The memo keys set (a `null` value removes its key).
    pub upserted_memo: Memo,
    pub workflow_task_completed_event_id: u64,
}
