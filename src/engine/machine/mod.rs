//! The run state machine: pure functions from (run state, input, now) to
//! (new run state, events). No async, no clock, no storage: the service feeds
//! it and persists what it returns.
//!
//! One machine per file, each with its transition table on top:
//! [`workflow_task`], [`activity`], [`timer`], and [`run`] (start, signals,
//! cancel, terminate, timeouts, close). Tasks and timers are derived from the
//! state ([`pending_tasks`], [`pending_timers`]), so what is dispatched and what
//! is persisted can never disagree.

pub mod activity;
pub mod buffered;
pub mod child;
pub mod continue_as_new;
pub mod cron;
pub mod external;
pub mod retry;
pub mod run;
pub mod timer;
pub mod update;
pub mod workflow_task;

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::api::{ErrorCode, RunOutcome, ServiceError};
use crate::env::RunStatus;
use crate::history::{ActivityTaskStarted, Event, EventKind, WorkflowTaskScheduled};
use crate::types::{FAILURE_CAUSES_MAX, Failure, Timestamp};

pub use activity::{ActivityPhase, ActivityState, LastStarted};
pub use buffered::Buffered;
pub use workflow_task::WorkflowTaskState;

/// Signal request ids remembered per run for de-duplication.
pub const SIGNAL_REQUEST_IDS_MAX: usize = 1_000;

/// A run's mutable state, as persisted with every transition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub workflow_id: String,
    pub run_id: String,
    pub workflow_type: String,
    pub task_queue: String,
    pub status: RunStatus,
    pub start_time: Timestamp,
    pub close_time: Option<Timestamp>,
    pub execution_deadline: Option<Timestamp>,
    pub workflow_task_timeout_ms: u64,
    pub start_request_id: String,
    /// The id the next event gets.
    pub next_event_id: u64,
    pub workflow_task: WorkflowTaskState,
    /// The `WorkflowTaskStarted` of the last completed workflow task.
    pub previous_started_event_id: u64,
    /// Open activities by scheduled event id.
    pub activities: BTreeMap<u64, ActivityState>,
    /// Open timers by timer id: (started event id, fire time).
    pub timers: BTreeMap<String, TimerState>,
    /// Events that arrived while a workflow task was started; written after it
    /// closes. Stored in rows of their own, not in the state blob (old blobs
    /// kept them inline; those are read).
    #[serde(
        default,
        skip_serializing,
        deserialize_with = "buffered::deserialize_inline"
    )]
    pub buffered: Buffered,
    /// Activities whose close is buffered (by activity id), still open in the history.
    pub closing_activities: BTreeMap<String, ClosingActivity>,
    pub cancel_requested: bool,
    pub signal_request_ids: VecDeque<String>,
    pub last_workflow_task_failure: Option<Failure>,
    pub outcome: Option<RunOutcome>,
    /// Payload bytes of every event written so far (bounded by the service).
    #[serde(default)]
    pub history_payload_bytes: u64,
    /// Payload bytes of the signals in `buffered`.
    #[serde(default)]
    pub buffered_payload_bytes: u64,
    /// Signals and cancel requests to other workflows not yet delivered, by
    /// their initiated event id.
    #[serde(default)]
    pub externals: BTreeMap<u64, external::ExternalRequest>,
    /// Child workflows not yet closed (or whose parent close policy is not
    /// yet applied), by their initiated event id.
    #[serde(default)]
    pub children: BTreeMap<u64, child::ChildState>,
    /// The parent, if this run is a child workflow.
    #[serde(default)]
    pub parent: Option<crate::history::ParentExecution>,
    /// The workflow's retry policy (normalized), if it has one. (These
    /// fields are left out of the stored state when unset: it is written on
    /// every transition.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<crate::activity::RetryPolicy>,
    /// This run's attempt: 1, or one more than the run it retries.
    #[serde(default = "first_attempt", skip_serializing_if = "is_first_attempt")]
    pub attempt: u32,
    /// The run's input, kept for the next run by runs with a retry policy
    /// or a cron schedule only (others never need it, and the state is
    /// rewritten on every transition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_input: Option<serde_json::Value>,
    /// The run that retries this one, or the cron workflow's next run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor_run_id: Option<String>,
    /// The cron schedule the workflow's runs start on, with the execution
    /// timeout each run gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<CronRuns>,
    /// Updates the workflow accepted, by update id (bounded by
    /// `update::UPDATES_PER_RUN_MAX`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub updates: BTreeMap<String, update::UpdateState>,
    /// The run's search attributes: the start's, with every upsert merged in.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub search_attributes: crate::visibility::SearchAttributes,
    /// The run's memo: the start's, with every modification applied.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub memo: crate::visibility::Memo,
}

/// A cron workflow's schedule, carried from run to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronRuns {
    pub schedule: String,
    /// Each run's own execution timeout (a cron run's deadline is its own).
    pub execution_timeout_ms: Option<u64>,
    /// The result of the last run that completed.
    pub last_completion_result: Option<serde_json::Value>,
}

fn first_attempt() -> u32 {
    1
}

fn is_first_attempt(attempt: &u32) -> bool {
    *attempt == 1
}

impl RunState {
    /// The run that carries this one's workflow on after it closed: the
    /// run it continued as, or the run that retries it.
    pub fn successor(&self) -> Option<&str> {
        match &self.outcome {
            Some(RunOutcome::ContinuedAsNew { new_run_id }) => Some(new_run_id),
            _ => self.successor_run_id.as_deref(),
        }
    }

    /// Whether completing a workflow task with `commands` may start a new
    /// run (the service draws its id first): a continue-as-new, or a
    /// failure under a retry policy.
    pub fn may_start_next_run(&self, commands: &[crate::workflow::Command]) -> bool {
        use crate::workflow::Command;
        commands.iter().any(|command| match command {
            Command::ContinueAsNewWorkflowExecution(_) => true,
            Command::FailWorkflowExecution { .. } => {
                self.retry_policy.is_some() || self.cron.is_some()
            }
            Command::CompleteWorkflowExecution { .. } => self.cron.is_some(),
            _ => false,
        })
    }
}

/// An activity whose close is buffered: closed for the service, still open in
/// the history until the buffer is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosingActivity {
    pub scheduled_event_id: u64,
    /// Its cancel was requested (in the history): it may not be requested again.
    pub cancel_requested: bool,
    /// When its last attempt started: the time of its buffered
    /// `ActivityTaskStarted` once written.
    #[serde(default)]
    pub started_time: Option<Timestamp>,
}

/// An open durable timer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerState {
    pub started_event_id: u64,
    pub fire_time: Timestamp,
    /// Fired while a workflow task was started: its `TimerFired` is buffered.
    pub fired: bool,
}

/// A task to dispatch, derived from a run's state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskKey {
    pub run_id: String,
    pub task_queue: String,
    pub kind: TaskKind,
}

/// Which task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaskKind {
    Workflow {
        scheduled_event_id: u64,
    },
    Activity {
        scheduled_event_id: u64,
        attempt: u32,
    },
}

/// A durable timer of the engine (user timers and every timeout), derived from state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKey {
    User {
        timer_id: String,
    },
    WorkflowTaskTimeout {
        scheduled_event_id: u64,
    },
    WorkflowTaskBackoff {
        attempt: u32,
    },
    ScheduleToStart {
        scheduled_event_id: u64,
        attempt: u32,
    },
    StartToClose {
        scheduled_event_id: u64,
        attempt: u32,
    },
    Heartbeat {
        scheduled_event_id: u64,
        attempt: u32,
    },
    ScheduleToClose {
        scheduled_event_id: u64,
    },
    RetryBackoff {
        scheduled_event_id: u64,
        attempt: u32,
    },
    ExecutionTimeout,
}

/// Inputs the machine needs besides state and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload a command or request may carry.
    pub payload_bytes_max: u64,
    /// Payload bytes of signals a run may buffer while a workflow task runs.
    pub buffered_payload_bytes_max: u64,
}

/// One transition in progress: the state being changed, its time, the events
/// written so far.
pub struct Step<'a> {
    pub state: &'a mut RunState,
    pub now: Timestamp,
    pub limits: Limits,
    pub events: Vec<Event>,
    /// The id a run started by continue-as-new gets; the service draws it
    /// before a completion that continues as new.
    pub next_run_id: Option<String>,
    /// The run this step started by continue-as-new: written in the same batch.
    pub continued: Option<continue_as_new::NextRun>,
    /// When the last attempt of each activity closing here started, by
    /// scheduled event id: its `ActivityTaskStarted` is written with that
    /// time, as Temporal writes it, not the attempt's end.
    activity_started_times: BTreeMap<u64, Timestamp>,
}

pub(crate) fn error(code: ErrorCode, message: impl Into<String>) -> ServiceError {
    ServiceError::new(code, message)
}

impl<'a> Step<'a> {
    pub fn new(state: &'a mut RunState, now: Timestamp, limits: Limits) -> Step<'a> {
        Step {
            state,
            now,
            limits,
            events: Vec::new(),
            next_run_id: None,
            continued: None,
            activity_started_times: BTreeMap::new(),
        }
    }

    /// The activity scheduled at `scheduled_event_id` last started at
    /// `started_time` (its Started event, written in this step, takes it).
    pub fn activity_started_at(&mut self, scheduled_event_id: u64, started_time: Timestamp) {
        self.activity_started_times
            .insert(scheduled_event_id, started_time);
    }

    /// Writes an event now; returns its id.
    pub fn emit(&mut self, kind: EventKind) -> u64 {
        let event_id = self.state.next_event_id;
        self.state.next_event_id += 1;
        child::on_emitted(self.state, event_id, &kind);
        let event_time = match &kind {
            EventKind::ActivityTaskStarted(a) => self
                .activity_started_times
                .get(&a.scheduled_event_id)
                .copied()
                .unwrap_or(self.now),
            _ => self.now,
        };
        self.events.push(Event::new(event_id, event_time, kind));
        event_id
    }

    /// An event the workflow must see: buffered while a workflow task is
    /// started, else written at once with a workflow task scheduled for it.
    pub fn deliver(&mut self, kind: EventKind) {
        if self.state.workflow_task.is_started() {
            self.state.buffered.push(kind);
        } else {
            self.emit(kind);
            self.ensure_workflow_task();
        }
    }

    /// An activity's close: its `ActivityTaskStarted` (if an attempt ever
    /// started) directly followed by the outcome, whose `started_event_id` is
    /// filled in when written.
    pub fn deliver_activity_close(
        &mut self,
        started: Option<ActivityTaskStarted>,
        outcome: EventKind,
    ) {
        if let Some(started) = started {
            self.deliver_pair(EventKind::ActivityTaskStarted(started), outcome);
        } else {
            self.deliver(outcome);
        }
    }

    fn deliver_pair(&mut self, started: EventKind, outcome: EventKind) {
        if self.state.workflow_task.is_started() {
            self.state.buffered.push(started);
            self.state.buffered.push(outcome);
        } else {
            let started_event_id = self.emit(started);
            self.emit(with_started_event_id(outcome, started_event_id));
            self.ensure_workflow_task();
        }
    }

    /// Writes the buffered events (after a workflow task closed).
    pub fn flush_buffered(&mut self) {
        let buffered = self.state.buffered.take();
        self.state.buffered_payload_bytes = 0;
        let closing = std::mem::take(&mut self.state.closing_activities);
        for closed in closing.into_values() {
            if let Some(started_time) = closed.started_time {
                self.activity_started_at(closed.scheduled_event_id, started_time);
            }
        }
        self.state.timers.retain(|_, timer| !timer.fired);
        self.emit_all(buffered);
        debug_assert!(self.state.buffered.is_empty());
    }

    /// Writes events in order; an outcome that follows an `ActivityTaskStarted`
    /// gets that event's id as its `started_event_id`, and a child's close
    /// its start's, if written here too.
    pub fn emit_all(&mut self, kinds: Vec<EventKind>) {
        let mut started_event_id = None;
        let mut child_starts: Vec<(u64, u64)> = Vec::new();
        for kind in kinds {
            let kind = match started_event_id.take() {
                Some(id) => with_started_event_id(kind, id),
                None => child::with_started_event_id(kind, &child_starts),
            };
            let is_started = matches!(kind, EventKind::ActivityTaskStarted(_));
            let child_initiated = match &kind {
                EventKind::ChildWorkflowExecutionStarted(a) => Some(a.initiated_event_id),
                _ => None,
            };
            let event_id = self.emit(kind);
            if is_started {
                started_event_id = Some(event_id);
            }
            if let Some(initiated) = child_initiated {
                child_starts.push((initiated, event_id));
            }
        }
    }

    /// Schedules a workflow task unless one is scheduled, started or backing off.
    pub fn ensure_workflow_task(&mut self) {
        if !matches!(self.state.workflow_task, WorkflowTaskState::None)
            || self.state.status.is_closed()
        {
            return;
        }
        self.schedule_workflow_task(1);
    }

    pub fn schedule_workflow_task(&mut self, attempt: u32) {
        assert!(
            !self.state.workflow_task.is_started(),
            "one workflow task at a time"
        );
        let scheduled_event_id =
            self.emit(EventKind::WorkflowTaskScheduled(WorkflowTaskScheduled {
                task_queue: self.state.task_queue.clone(),
                start_to_close_timeout_ms: self.state.workflow_task_timeout_ms,
                attempt,
            }));
        self.state.workflow_task = WorkflowTaskState::Scheduled {
            scheduled_event_id,
            attempt,
        };
    }

    /// Checks a payload against the size and nesting limits.
    pub fn check_payload(
        &self,
        what: &str,
        payload: &serde_json::Value,
    ) -> Result<(), ServiceError> {
        check_depth(what, payload)?;
        let bytes = crate::history::payload_size_bytes(payload);
        if bytes > self.limits.payload_bytes_max {
            let message = format!(
                "{what} is {bytes} bytes, more than the limit of {} bytes",
                self.limits.payload_bytes_max
            );
            return Err(error(ErrorCode::PayloadTooLarge, message));
        }
        Ok(())
    }

    /// Checks a failure from a worker: its chain of causes is at most
    /// [`FAILURE_CAUSES_MAX`] long, and the whole of it (messages and
    /// details) fits the payload limits.
    pub fn check_failure(&self, what: &str, failure: &Failure) -> Result<(), ServiceError> {
        let causes = failure.chain().count();
        if causes > FAILURE_CAUSES_MAX {
            let message = format!(
                "{what} has a chain of {causes} causes, more than the limit of {FAILURE_CAUSES_MAX}"
            );
            return Err(error(ErrorCode::InvalidArgument, message));
        }
        let value = serde_json::to_value(failure).expect("failures always encode");
        self.check_payload(what, &value)
    }
}

fn with_started_event_id(kind: EventKind, started_event_id: u64) -> EventKind {
    match kind {
        EventKind::ActivityTaskCompleted(mut a) => {
            a.started_event_id = started_event_id;
            EventKind::ActivityTaskCompleted(a)
        }
        EventKind::ActivityTaskFailed(mut a) => {
            a.started_event_id = started_event_id;
            EventKind::ActivityTaskFailed(a)
        }
        EventKind::ActivityTaskTimedOut(mut a) => {
            a.started_event_id = Some(started_event_id);
            EventKind::ActivityTaskTimedOut(a)
        }
        EventKind::ActivityTaskCanceled(mut a) => {
            a.started_event_id = Some(started_event_id);
            EventKind::ActivityTaskCanceled(a)
        }
        other => other,
    }
}

/// A payload nests no deeper than `PAYLOAD_DEPTH_MAX`: deeper, the records
/// that hold it (events, the run's state) could not be read back.
pub fn check_depth(what: &str, payload: &serde_json::Value) -> Result<(), ServiceError> {
    let depth = crate::history::payload_depth(payload);
    if depth > crate::history::PAYLOAD_DEPTH_MAX {
        let message = format!(
            "{what} is nested {depth} levels deep, more than the limit of {}",
            crate::history::PAYLOAD_DEPTH_MAX
        );
        return Err(error(ErrorCode::InvalidArgument, message));
    }
    Ok(())
}

/// Every payload of `events` fits the limits (the same list of payloads the
/// history validator checks, so the service never writes what it would
/// refuse). Returns their bytes in all.
pub fn check_event_payloads(events: &[Event], limits: Limits) -> Result<u64, ServiceError> {
    let mut total_bytes = 0;
    for event in events {
        for payload in event.kind.payloads() {
            check_depth(event.kind.name(), payload)?;
            let bytes = crate::history::payload_size_bytes(payload);
            total_bytes += bytes;
            if bytes > limits.payload_bytes_max {
                let message = format!(
                    "{} would carry a payload of {bytes} bytes, more than the limit of {} bytes",
                    event.kind.name(),
                    limits.payload_bytes_max
                );
                return Err(error(ErrorCode::PayloadTooLarge, message));
            }
        }
    }
    Ok(total_bytes)
}

/// The tasks the run waits on a worker for.
pub fn pending_tasks(state: &RunState) -> Vec<TaskKey> {
    let mut tasks = Vec::new();
    if state.status.is_closed() {
        return tasks;
    }
    if let WorkflowTaskState::Scheduled {
        scheduled_event_id, ..
    } = state.workflow_task
    {
        let kind = TaskKind::Workflow { scheduled_event_id };
        tasks.push(TaskKey {
            run_id: state.run_id.clone(),
            task_queue: state.task_queue.clone(),
            kind,
        });
    }
    for (scheduled_event_id, activity) in &state.activities {
        if let ActivityPhase::Scheduled { .. } = activity.phase {
            let kind = TaskKind::Activity {
                scheduled_event_id: *scheduled_event_id,
                attempt: activity.attempt,
            };
            tasks.push(TaskKey {
                run_id: state.run_id.clone(),
                task_queue: activity.task_queue.clone(),
                kind,
            });
        }
    }
    tasks
}

/// Every durable timer the run has, with its deadline.
pub fn pending_timers(state: &RunState) -> Vec<(Timestamp, TimerKey)> {
    let mut timers = Vec::new();
    if state.status.is_closed() {
        return timers;
    }
    if let Some(deadline) = state.execution_deadline {
        timers.push((deadline, TimerKey::ExecutionTimeout));
    }
    timers.extend(workflow_task::pending_timers(state));
    for (timer_id, timer) in &state.timers {
        if !timer.fired {
            timers.push((
                timer.fire_time,
                TimerKey::User {
                    timer_id: timer_id.clone(),
                },
            ));
        }
    }
    for activity in state.activities.values() {
        timers.extend(activity::pending_timers(activity));
    }
    timers
}

/// The outcome of a run closed with `kind`, if `kind` closes runs.
pub fn outcome_of(kind: &EventKind) -> Option<(RunStatus, RunOutcome)> {
    let pair = match kind {
        EventKind::WorkflowExecutionCompleted(a) => (
            RunStatus::Completed,
            RunOutcome::Completed {
                result: a.result.clone(),
            },
        ),
        EventKind::WorkflowExecutionFailed(a) => (
            RunStatus::Failed,
            RunOutcome::Failed {
                failure: a.failure.clone(),
            },
        ),
        EventKind::WorkflowExecutionCanceled(a) => (
            RunStatus::Canceled,
            RunOutcome::Canceled {
                details: a.details.clone(),
            },
        ),
        EventKind::WorkflowExecutionTerminated(a) => (
            RunStatus::Terminated,
            RunOutcome::Terminated {
                reason: a.reason.clone(),
            },
        ),
        EventKind::WorkflowExecutionTimedOut(_) => (RunStatus::TimedOut, RunOutcome::TimedOut),
        EventKind::WorkflowExecutionContinuedAsNew(a) => (
            RunStatus::ContinuedAsNew,
            RunOutcome::ContinuedAsNew {
                new_run_id: a.new_execution_run_id.clone(),
            },
        ),
        _ => return None,
    };
    Some(pair)
}
