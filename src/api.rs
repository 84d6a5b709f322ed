//! The service's protocol: every request a client or worker sends, and every
//! reply. The same types travel in-process, over HTTP/JSON (one route per
//! request, `POST /api/v1/<method>`), and over the simulator's network.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::env::RunStatus;
use crate::history::{Event, WorkflowTaskFailedCause};
use crate::types::{Failure, Timestamp};
use crate::workflow::Command;

pub use crate::types::IdReusePolicy;

/// Start a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartWorkflowRequest {
    /// Business id of the run.
    pub workflow_id: String,
    /// Registered workflow type.
    pub workflow_type: String,
    /// Queue its workflow tasks go to.
    pub task_queue: String,
    /// Input payload.
    pub input: Value,
    /// Whole-run deadline.
    #[serde(default)]
    pub execution_timeout_ms: Option<u64>,
    /// Each workflow task's deadline (default 10 s).
    #[serde(default)]
    pub workflow_task_timeout_ms: Option<u64>,
    /// What a closed id may be reused for.
    #[serde(default)]
    pub id_reuse_policy: IdReusePolicy,
    /// Retries of the same request return the same run.
    pub request_id: String,
    /// Who asks (shown in history).
    #[serde(default)]
    pub identity: String,
    /// Wait this long before the first workflow task (Temporal's start
    /// delay); the execution timeout counts from its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_delay_ms: Option<u64>,
    /// Retry the workflow as a new run of the same workflow id when it fails
    /// (Temporal's workflow retry policy); `None`: a failed run stays failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<crate::activity::RetryPolicy>,
    /// Start the workflow's runs on this cron schedule (Temporal's cron
    /// workflows; see [`crate::workflow::CronSchedule`]): the first at the
    /// first slot, each next at the first slot after the previous closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_schedule: Option<String>,
    /// The run's search attributes at start (indexed for list queries).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub search_attributes: crate::visibility::SearchAttributes,
    /// The run's memo at start (shown, not indexed).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub memo: crate::visibility::Memo,
}

/// The run started (or the one an earlier identical request started).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartWorkflowResponse {
    /// The run id.
    pub run_id: String,
}

/// Names a run: the current run of `workflow_id`, or a specific one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRef {
    /// Business id.
    pub workflow_id: String,
    /// A specific run; the current one if `None`.
    #[serde(default)]
    pub run_id: Option<String>,
}

/// Start a parent's child workflow on the cluster member that owns the
/// child's shard (servers send it to each other; answered as
/// `StartWorkflow`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartChildWorkflowRequest {
    /// The child's start.
    pub start: StartWorkflowRequest,
    /// Its parent's run and the event that initiated it.
    pub parent: crate::history::ParentExecution,
}

/// Deliver a signal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalWorkflowRequest {
    /// The run.
    #[serde(flatten)]
    pub run: RunRef,
    /// Signal name.
    pub signal_name: String,
    /// Payload.
    pub input: Value,
    /// Retries of the same request deliver the signal once.
    pub request_id: String,
    /// Who asks.
    #[serde(default)]
    pub identity: String,
}

/// Signal the running run of a workflow id, starting it first if none runs
/// (Temporal's SignalWithStartWorkflowExecution): one atomic request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalWithStartWorkflowRequest {
    /// The run to start if none is running; its `request_id` also
    /// de-duplicates the signal, and its `identity` signs both.
    #[serde(flatten)]
    pub start: StartWorkflowRequest,
    /// Signal name.
    pub signal_name: String,
    /// Signal payload.
    #[serde(default)]
    pub signal_input: Value,
}

/// The run signaled, and whether this request started it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalWithStartWorkflowResponse {
    /// The run id.
    pub run_id: String,
    /// True if the run was started by this request (or its first try).
    pub started: bool,
}

/// Send an update: a request the workflow validates (a rejection writes
/// nothing) and then handles, answering with its handler's result
/// (Temporal's UpdateWorkflowExecution, waiting for the Completed stage).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateWorkflowRequest {
    /// The run (a workflow id alone follows its successor runs).
    #[serde(flatten)]
    pub run: RunRef,
    /// The update handler's name.
    pub update_name: String,
    /// Its argument.
    #[serde(default)]
    pub input: Value,
    /// Unique within the run: a retry with the same id waits for (or
    /// returns) the first one's outcome; the handler runs once.
    pub update_id: String,
    /// Who asks (shown in history).
    #[serde(default)]
    pub identity: String,
}

/// How an update ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateWorkflowResponse {
    /// The run that took the update.
    pub run_id: String,
    /// The handler's result or error (the validator's error if rejected).
    pub outcome: crate::history::UpdateOutcome,
    /// True if the validator refused it: nothing was written, the handler
    /// never ran, and the same id may be sent again.
    #[serde(default)]
    pub rejected: bool,
}

/// An update a workflow task carries to the worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateRequest {
    /// Its id.
    pub update_id: String,
    /// The handler's name.
    pub update_name: String,
    /// The handler's argument.
    pub input: Value,
    /// Who sent it.
    pub identity: String,
}

/// An update the workflow's validator refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateRejection {
    /// Its id.
    pub update_id: String,
    /// Why.
    pub failure: Failure,
}

/// Ask a question of the run's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueryWorkflowRequest {
    /// The run.
    #[serde(flatten)]
    pub run: RunRef,
    /// Query name.
    pub query_name: String,
    /// Arguments.
    #[serde(default)]
    pub args: Value,
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueryWorkflowResponse {
    /// What the handler returned.
    pub answer: Value,
}

/// Ask the run to cancel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CancelWorkflowRequest {
    /// The run.
    #[serde(flatten)]
    pub run: RunRef,
    /// Why (shown in history).
    #[serde(default)]
    pub reason: String,
    /// Who asks.
    #[serde(default)]
    pub identity: String,
}

/// Close the run now, without running workflow code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TerminateWorkflowRequest {
    /// The run.
    #[serde(flatten)]
    pub run: RunRef,
    /// Why (shown in history).
    #[serde(default)]
    pub reason: String,
    /// Details.
    #[serde(default)]
    pub details: Option<Value>,
    /// Who asks.
    #[serde(default)]
    pub identity: String,
}

/// A pending activity, as `describe` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingActivity {
    /// Id within the run.
    pub activity_id: String,
    /// Activity type.
    pub activity_type: String,
    /// Scheduled, Started, BackingOff or CancelRequested.
    pub state: String,
    /// Current (or next) attempt.
    pub attempt: u32,
    /// The last attempt's failure.
    pub last_failure: Option<Failure>,
    /// Last heartbeat details.
    pub heartbeat_details: Option<Value>,
    /// When the last heartbeat arrived.
    pub last_heartbeat_time: Option<Timestamp>,
    /// When the next attempt is due (while backing off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<Timestamp>,
    /// The worker running the current attempt (while started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_identity: Option<String>,
}

/// A pending timer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingTimer {
    /// Id within the run.
    pub timer_id: String,
    /// When it fires.
    pub fire_time: Timestamp,
}

/// A run, as `describe` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunDescription {
    /// Business id.
    pub workflow_id: String,
    /// Run id.
    pub run_id: String,
    /// Workflow type.
    pub workflow_type: String,
    /// Task queue.
    pub task_queue: String,
    /// Status.
    pub status: RunStatus,
    /// Start time.
    pub start_time: Timestamp,
    /// Close time.
    pub close_time: Option<Timestamp>,
    /// Events in the history.
    pub history_length: u64,
    /// Activities not yet closed.
    pub pending_activities: Vec<PendingActivity>,
    /// Timers not yet fired or canceled.
    pub pending_timers: Vec<PendingTimer>,
    /// Scheduled, Started, or None.
    pub workflow_task: Option<String>,
    /// The last workflow task failure (unknown type, bad input, non-determinism).
    pub last_workflow_task_failure: Option<Failure>,
    /// A cancel was requested.
    pub cancel_requested: bool,
    /// Signals received while a workflow task ran, not yet in the history
    /// (written after the task closes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buffered_signals: Vec<BufferedSignal>,
    /// The run's search attributes.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub search_attributes: crate::visibility::SearchAttributes,
    /// The run's memo.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub memo: crate::visibility::Memo,
}

/// A signal waiting to be written to a run's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BufferedSignal {
    /// Signal name.
    pub signal_name: String,
    /// Payload.
    pub input: Value,
    /// Who sent it.
    pub identity: String,
}

/// List runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ListWorkflowsRequest {
    /// Only runs with this status.
    #[serde(default)]
    pub status: Option<RunStatus>,
    /// Only runs of this type.
    #[serde(default)]
    pub workflow_type: Option<String>,
    /// From the previous page's `next_page_token`.
    #[serde(default)]
    pub page_token: Option<String>,
    /// Page size (capped by the service).
    #[serde(default)]
    pub page_size: u32,
    /// A list query (see [`crate::visibility::query`]): a filter over system
    /// and search attributes, and an order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// A run in a listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Business id.
    pub workflow_id: String,
    /// Run id.
    pub run_id: String,
    /// Workflow type.
    pub workflow_type: String,
    /// Task queue (empty from servers that did not send it).
    #[serde(default)]
    pub task_queue: String,
    /// Status.
    pub status: RunStatus,
    /// Start time.
    pub start_time: Timestamp,
    /// Close time.
    pub close_time: Option<Timestamp>,
    /// Why the run is set aside, if its stored state cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
    /// The run's search attributes.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub search_attributes: crate::visibility::SearchAttributes,
}

/// A page of runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListWorkflowsResponse {
    /// The runs, by run id.
    pub runs: Vec<RunSummary>,
    /// Pass to get the next page; `None` on the last.
    pub next_page_token: Option<String>,
}

/// Read a run's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetHistoryRequest {
    /// The run.
    #[serde(flatten)]
    pub run: RunRef,
    /// First event to return.
    #[serde(default = "first_event_id")]
    pub from_event_id: u64,
    /// Page size (capped by the service).
    #[serde(default)]
    pub page_size: u32,
}

fn first_event_id() -> u64 {
    1
}

/// A page of events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetHistoryResponse {
    /// Business id.
    pub workflow_id: String,
    /// Run id.
    pub run_id: String,
    /// Events, in order.
    pub events: Vec<Event>,
    /// The next page's `from_event_id`; `None` if this page reaches the end.
    pub next_event_id: Option<u64>,
}

/// Wait for a run's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetResultRequest {
    /// The run.
    #[serde(flatten)]
    pub run: RunRef,
    /// Wait up to this long for the run to close (capped by the service).
    #[serde(default)]
    pub wait_ms: u64,
}

/// How a run closed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status")]
pub enum RunOutcome {
    /// Returned a value.
    Completed {
        /// The value.
        result: Value,
    },
    /// Returned an error.
    Failed {
        /// The failure.
        failure: Failure,
    },
    /// Accepted cancellation.
    Canceled {
        /// Details.
        details: Option<Value>,
    },
    /// Was terminated.
    Terminated {
        /// Why.
        reason: String,
    },
    /// Its execution timeout fired.
    TimedOut,
    /// Continued as a new run of the same workflow id.
    ContinuedAsNew {
        /// The run that carries on.
        new_run_id: String,
    },
}

/// The result, if the run closed in time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetResultResponse {
    /// The run.
    pub run_id: String,
    /// `None` if the run was still open when the wait ended.
    pub outcome: Option<RunOutcome>,
    /// The run that carries the workflow on after this one closed: the one
    /// it continued as, or the one that retries it (Temporal's
    /// `newExecutionRunId`). Clients that follow runs go there next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_id: Option<String>,
}

/// Identifies a started task; completions must present it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskToken {
    /// The run's workflow id: in a cluster, a server that does not own the
    /// run's shard says so without reading storage (empty in tokens handed
    /// out before it was carried).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workflow_id: String,
    /// The run.
    pub run_id: String,
    /// The task's scheduled event (workflow task) or the activity's scheduled event.
    pub scheduled_event_id: u64,
    /// The attempt.
    pub attempt: u32,
    /// The `WorkflowTaskStarted` event (workflow tasks; 0 for activities).
    pub started_event_id: u64,
}

/// Wait for a task on a queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PollTaskRequest {
    /// The queue.
    pub task_queue: String,
    /// The worker (shown in history).
    pub identity: String,
    /// Workflow types the worker runs (workflow polls): the service refuses to
    /// start a type no recent poller of the queue serves.
    #[serde(default)]
    pub workflow_types: Vec<String>,
}

/// A workflow task: run the code up to its next wait.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowTask {
    /// Present when completing.
    pub task_token: TaskToken,
    /// Business id.
    pub workflow_id: String,
    /// Workflow type.
    pub workflow_type: String,
    /// The `WorkflowTaskStarted` of the last completed workflow task (0 if none):
    /// a worker that has the run cached exactly there applies `events`; any
    /// other worker first reads events `1..=previous_started_event_id`.
    pub previous_started_event_id: u64,
    /// Events after `previous_started_event_id`, through this task's `WorkflowTaskStarted`.
    pub events: Vec<Event>,
    /// Updates waiting for the workflow to accept or reject them, in the
    /// order they arrived: the completion answers each (an accept command,
    /// or a rejection in `update_rejections`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub updates: Vec<UpdateRequest>,
}

/// A query to answer from a run's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueryTask {
    /// Answer with this id.
    pub query_id: String,
    /// Business id.
    pub workflow_id: String,
    /// Run id.
    pub run_id: String,
    /// Workflow type.
    pub workflow_type: String,
    /// Query name.
    pub query_name: String,
    /// Arguments.
    pub args: Value,
    /// The `WorkflowTaskStarted` of the run's last completed workflow task:
    /// the state a query sees. A worker whose cached run is elsewhere (another
    /// worker ran later tasks) answers from a replay up to there instead.
    #[serde(default)]
    pub previous_started_event_id: u64,
}

/// What a workflow-queue poll returns: a workflow task, a query, or nothing
/// (the long poll expired).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PollWorkflowTaskResponse {
    /// A workflow task.
    pub task: Option<WorkflowTask>,
    /// A query.
    pub query: Option<QueryTask>,
}

/// Commands of a completed workflow task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompleteWorkflowTaskRequest {
    /// The task.
    pub task_token: TaskToken,
    /// The commands, in order.
    pub commands: Vec<Command>,
    /// The worker.
    pub identity: String,
    /// Activities of the run's own queue the worker can start right away
    /// (eager dispatch): the service starts up to this many of the activities
    /// these commands schedule and returns them, saving a poll and a write each.
    #[serde(default)]
    pub eager_activities_max: u32,
    /// The task's updates the workflow's validators refused: not written
    /// to history (as Temporal), only answered to their callers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub update_rejections: Vec<UpdateRejection>,
}

/// The answer to a workflow task completion.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompleteWorkflowTaskResponse {
    /// Activities started for this worker (eager dispatch).
    #[serde(default)]
    pub activity_tasks: Vec<ActivityTask>,
    /// The events the completion wrote, from its `WorkflowTaskCompleted` on.
    /// A worker that keeps the run applies them at once, so it knows the whole
    /// history and can offer the run's next workflow task speculatively (see
    /// [`SpeculativeWorkflowTask`]). Empty if the completion was refused.
    #[serde(default)]
    pub events: Vec<Event>,
}

/// A workflow task the worker could not complete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailWorkflowTaskRequest {
    /// The task.
    pub task_token: TaskToken,
    /// Why.
    pub cause: WorkflowTaskFailedCause,
    /// Details.
    pub failure: Failure,
    /// The worker.
    pub identity: String,
}

/// The answer to a query task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RespondQueryRequest {
    /// The query.
    pub query_id: String,
    /// The answer, or why there is none.
    pub answer: Result<Value, String>,
}

/// An activity task: run one attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivityTask {
    /// Present when completing and heartbeating.
    pub task_token: TaskToken,
    /// Business id of the run.
    pub workflow_id: String,
    /// Run id.
    pub run_id: String,
    /// Id within the run.
    pub activity_id: String,
    /// Activity type.
    pub activity_type: String,
    /// Input payload.
    pub input: Value,
    /// Attempt, from 1.
    pub attempt: u32,
    /// When the activity was scheduled.
    pub scheduled_time: Timestamp,
    /// When this attempt started.
    pub started_time: Timestamp,
    /// Each attempt's deadline.
    pub start_to_close_timeout_ms: Option<u64>,
    /// Maximum gap between heartbeats.
    pub heartbeat_timeout_ms: Option<u64>,
    /// The last heartbeat details of an earlier attempt.
    pub heartbeat_details: Option<Value>,
}

/// What an activity-queue poll returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PollActivityTaskResponse {
    /// The task, or `None` if the long poll expired.
    pub task: Option<ActivityTask>,
}

/// How an activity attempt ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ActivityTaskResult {
    /// It returned a value.
    Completed(Value),
    /// It failed (retried per policy).
    Failed(Failure),
    /// It acknowledged cancellation.
    Canceled(Option<Value>),
}

/// Report an activity attempt's end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RespondActivityTaskRequest {
    /// The task.
    pub task_token: TaskToken,
    /// How it ended.
    pub result: ActivityTaskResult,
    /// The worker.
    pub identity: String,
    /// The workflow task queue the worker serves, if it can run the workflow
    /// task this result schedules right away (eager dispatch).
    #[serde(default)]
    pub eager_workflow_task_queue: Option<String>,
    /// The workflow task this result schedules, already run by the worker
    /// that holds the run: recorded in the same write as the result if the
    /// history is still where the worker saw it.
    #[serde(default)]
    pub speculative_workflow_task: Option<SpeculativeWorkflowTask>,
}

/// A workflow task run by a worker before the service scheduled it: the
/// worker holds the run at the end of its history, so it appends the result
/// (`ActivityTaskStarted`, `ActivityTaskCompleted`), the task's
/// `WorkflowTaskScheduled` and `WorkflowTaskStarted` itself, runs the code,
/// and sends the commands with the result. One request and one durable write
/// per activity instead of two. The service takes it only if its history has
/// exactly `next_event_id - 1` events, no workflow task is pending, and
/// `started_time` lies between the attempt's start and the service's now;
/// otherwise it records the result alone, as without speculation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpeculativeWorkflowTask {
    /// The id the worker gave the result's `ActivityTaskStarted`.
    pub next_event_id: u64,
    /// The `WorkflowTaskStarted` time: what the code saw as now.
    pub started_time: Timestamp,
    /// The commands, in order.
    pub commands: Vec<Command>,
    /// As in [`CompleteWorkflowTaskRequest`].
    #[serde(default)]
    pub eager_activities_max: u32,
}

/// The answer to an activity result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RespondActivityTaskResponse {
    /// The workflow task the result scheduled, started for this worker.
    #[serde(default)]
    pub workflow_task: Option<WorkflowTask>,
    /// The speculative workflow task was taken: its completion's answer.
    /// `None` if it was refused (or none was offered).
    #[serde(default)]
    pub speculation: Option<CompleteWorkflowTaskResponse>,
}

/// Report progress of an activity attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// The task.
    pub task_token: TaskToken,
    /// Progress details, kept for the next attempt.
    pub details: Option<Value>,
    /// The worker.
    pub identity: String,
}

/// The service's answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The workflow asked for the activity to be canceled.
    pub cancel_requested: bool,
}

/// A request to the service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Request {
    StartWorkflow(StartWorkflowRequest),
    StartChildWorkflow(StartChildWorkflowRequest),
    SignalWorkflow(SignalWorkflowRequest),
    SignalWithStartWorkflow(SignalWithStartWorkflowRequest),
    QueryWorkflow(QueryWorkflowRequest),
    CancelWorkflow(CancelWorkflowRequest),
    TerminateWorkflow(TerminateWorkflowRequest),
    DescribeWorkflow(RunRef),
    ListWorkflows(ListWorkflowsRequest),
    GetHistory(GetHistoryRequest),
    GetResult(GetResultRequest),
    PollWorkflowTask(PollTaskRequest),
    CompleteWorkflowTask(CompleteWorkflowTaskRequest),
    FailWorkflowTask(FailWorkflowTaskRequest),
    RespondQuery(RespondQueryRequest),
    PollActivityTask(PollTaskRequest),
    RespondActivityTask(RespondActivityTaskRequest),
    HeartbeatActivityTask(HeartbeatRequest),
    DescribeTaskQueue(DescribeTaskQueueRequest),
    UpdateWorkflow(UpdateWorkflowRequest),
}

impl Request {
    /// The workflow id whose run the request acts on, if it names one: in
    /// a cluster, the owner of its shard serves it.
    pub fn workflow_id(&self) -> Option<&str> {
        let run = match self {
            Request::StartWorkflow(r) => return Some(&r.workflow_id),
            Request::StartChildWorkflow(r) => return Some(&r.start.workflow_id),
            Request::SignalWithStartWorkflow(r) => return Some(&r.start.workflow_id),
            Request::SignalWorkflow(r) => &r.run,
            Request::QueryWorkflow(r) => &r.run,
            Request::CancelWorkflow(r) => &r.run,
            Request::TerminateWorkflow(r) => &r.run,
            Request::DescribeWorkflow(r) => r,
            Request::GetHistory(r) => &r.run,
            Request::GetResult(r) => &r.run,
            Request::UpdateWorkflow(r) => &r.run,
            _ => {
                return self
                    .task_token()
                    .map(|t| t.workflow_id.as_str())
                    .filter(|id| !id.is_empty());
            }
        };
        Some(&run.workflow_id)
    }

    /// The task token the request presents, if it completes or reports on a task.
    fn task_token(&self) -> Option<&TaskToken> {
        match self {
            Request::CompleteWorkflowTask(r) => Some(&r.task_token),
            Request::FailWorkflowTask(r) => Some(&r.task_token),
            Request::RespondActivityTask(r) => Some(&r.task_token),
            Request::HeartbeatActivityTask(r) => Some(&r.task_token),
            _ => None,
        }
    }

    /// The request's method name (the HTTP route's last segment).
    pub fn method(&self) -> &'static str {
        match self {
            Request::StartWorkflow(_) => "StartWorkflow",
            Request::StartChildWorkflow(_) => "StartChildWorkflow",
            Request::SignalWorkflow(_) => "SignalWorkflow",
            Request::SignalWithStartWorkflow(_) => "SignalWithStartWorkflow",
            Request::QueryWorkflow(_) => "QueryWorkflow",
            Request::CancelWorkflow(_) => "CancelWorkflow",
            Request::TerminateWorkflow(_) => "TerminateWorkflow",
            Request::DescribeWorkflow(_) => "DescribeWorkflow",
            Request::ListWorkflows(_) => "ListWorkflows",
            Request::GetHistory(_) => "GetHistory",
            Request::GetResult(_) => "GetResult",
            Request::PollWorkflowTask(_) => "PollWorkflowTask",
            Request::CompleteWorkflowTask(_) => "CompleteWorkflowTask",
            Request::FailWorkflowTask(_) => "FailWorkflowTask",
            Request::RespondQuery(_) => "RespondQuery",
            Request::PollActivityTask(_) => "PollActivityTask",
            Request::RespondActivityTask(_) => "RespondActivityTask",
            Request::HeartbeatActivityTask(_) => "HeartbeatActivityTask",
            Request::DescribeTaskQueue(_) => "DescribeTaskQueue",
            Request::UpdateWorkflow(_) => "UpdateWorkflow",
        }
    }
}

/// The pollers of a task queue (of every queue if `task_queue` is `None`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DescribeTaskQueueRequest {
    /// The queue; every queue the service has seen polled if `None`.
    #[serde(default)]
    pub task_queue: Option<String>,
}

/// The pollers a task queue has seen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskQueueDescription {
    /// By queue, the latest poll first within one.
    pub pollers: Vec<PollerInfo>,
}

/// Which tasks a poller asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PollerKind {
    /// Workflow tasks.
    Workflow,
    /// Activity tasks.
    Activity,
}

/// A worker that polled a task queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PollerInfo {
    /// The queue it polled.
    pub task_queue: String,
    /// For which tasks.
    pub kind: PollerKind,
    /// Who it is.
    pub identity: String,
    /// When it last polled.
    pub last_poll_time: Timestamp,
    /// The workflow types it serves (workflow pollers).
    pub workflow_types: Vec<String>,
}

/// A successful reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Response {
    Empty,
    StartWorkflow(StartWorkflowResponse),
    SignalWithStartWorkflow(SignalWithStartWorkflowResponse),
    QueryWorkflow(QueryWorkflowResponse),
    DescribeWorkflow(RunDescription),
    ListWorkflows(ListWorkflowsResponse),
    GetHistory(GetHistoryResponse),
    GetResult(GetResultResponse),
    PollWorkflowTask(PollWorkflowTaskResponse),
    PollActivityTask(PollActivityTaskResponse),
    HeartbeatActivityTask(HeartbeatResponse),
    CompleteWorkflowTask(CompleteWorkflowTaskResponse),
    RespondActivityTask(RespondActivityTaskResponse),
    DescribeTaskQueue(TaskQueueDescription),
    UpdateWorkflow(UpdateWorkflowResponse),
}

/// Stable error codes (part of the HTTP API).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A field is missing or wrong.
    InvalidArgument,
    /// The body is not valid JSON of the request's shape.
    MalformedRequest,
    /// No such run (or workflow id).
    NotFound,
    /// A run with this workflow id is running (or the id may not be reused).
    AlreadyStarted,
    /// The run is closed.
    RunClosed,
    /// No worker serves this workflow type on this queue.
    UnknownWorkflowType,
    /// A payload exceeds the size limit.
    PayloadTooLarge,
    /// The history would exceed its size limit.
    HistoryTooLarge,
    /// A token is required and was missing or wrong.
    Unauthenticated,
    /// The task token is stale: the task was completed, timed out, or retried.
    TaskNotFound,
    /// The query handler failed or does not exist.
    QueryFailed,
    /// No worker answered the query in time.
    QueryTimeout,
    /// A limit of the service was reached.
    ResourceExhausted,
    /// Storage failed; retry.
    Unavailable,
    /// Stored data cannot be read back (a damaged row): retrying will not help.
    DataCorrupt,
    /// A bug.
    Internal,
    /// Another server of the cluster owns the run's shard (or none does
    /// yet): retry at `ServiceError::owner` if it names one, else at
    /// another server.
    NotOwner,
}

impl ErrorCode {
    /// True for failures a retry may cure: storage unavailable, or the
    /// cluster's shard owner elsewhere or not settled yet.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorCode::Unavailable | ErrorCode::NotOwner)
    }

    /// The HTTP status the code maps to.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument
            | ErrorCode::MalformedRequest
            | ErrorCode::UnknownWorkflowType => 400,
            ErrorCode::QueryFailed => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::NotFound | ErrorCode::TaskNotFound => 404,
            ErrorCode::AlreadyStarted | ErrorCode::RunClosed => 409,
            ErrorCode::PayloadTooLarge | ErrorCode::HistoryTooLarge => 413,
            ErrorCode::ResourceExhausted => 429,
            ErrorCode::Internal | ErrorCode::DataCorrupt => 500,
            ErrorCode::Unavailable => 503,
            ErrorCode::QueryTimeout => 504,
            ErrorCode::NotOwner => 421,
        }
    }
}

/// An error the service returns: a stable code and a message that says what
/// was wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ServiceError {
    /// Stable code.
    pub code: ErrorCode,
    /// What was wrong, for people.
    pub message: String,
    /// `NotOwner`: the address of the server that owns the shard, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl ServiceError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ServiceError {
        ServiceError {
            code,
            message: message.into(),
            owner: None,
        }
    }
}

/// A reply: a response or a service error.
pub type Reply = Result<Response, ServiceError>;
