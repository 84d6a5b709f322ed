//! `HistoryBuilder`: write histories in tests one event at a time, as Temporal's
//! `TestHistoryBuilder` does. Each `add_*` returns the new event's id, so later
//! events can point at it. Every event is validated as it is added; the builder
//! panics with the validation error if a test builds an invalid history.

use serde_json::Value;

use super::History;
use super::event::*;
use crate::activity::RetryPolicy;
use crate::types::{Failure, RetryState, TimeoutType, Timestamp};

/// 2024-01-01T00:00:00Z, where built histories start.
pub const BUILDER_START_TIME: Timestamp = Timestamp(1_704_067_200_000);
/// Workflow task timeout written by the builder.
pub const BUILDER_WORKFLOW_TASK_TIMEOUT_MS: u64 = 10_000;
/// Start-to-close timeout the builder writes for activities.
pub const BUILDER_START_TO_CLOSE_TIMEOUT_MS: u64 = 10_000;

/// Builds valid histories for tests.
#[derive(Clone, Debug)]
pub struct HistoryBuilder {
    history: History,
    now: Timestamp,
    task_queue: String,
    workflow_task_scheduled: u64,
    workflow_task_started: u64,
    workflow_task_completed: u64,
}

impl HistoryBuilder {
    /// A history whose first event starts `workflow_type` with `input`
    /// (workflow id `test-workflow`, run id `test-run`, task queue `default`).
    pub fn new(workflow_type: &str, input: Value) -> HistoryBuilder {
        HistoryBuilder::for_run("test-workflow", "test-run", workflow_type, input)
    }

    /// Like [`HistoryBuilder::new`] with the given ids.
    pub fn for_run(
        workflow_id: &str,
        run_id: &str,
        workflow_type: &str,
        input: Value,
    ) -> HistoryBuilder {
        let mut builder = HistoryBuilder {
            history: History::new(workflow_id, run_id),
            now: BUILDER_START_TIME,
            task_queue: "default".to_string(),
            workflow_task_scheduled: 0,
            workflow_task_started: 0,
            workflow_task_completed: 0,
        };
        builder.add(EventKind::WorkflowExecutionStarted(
            WorkflowExecutionStarted {
                workflow_type: workflow_type.to_string(),
                workflow_id: workflow_id.to_string(),
                task_queue: "default".to_string(),
                input,
                execution_timeout_ms: None,
                workflow_task_timeout_ms: BUILDER_WORKFLOW_TASK_TIMEOUT_MS,
                attempt: 1,
                identity: "client".to_string(),
                request_id: "request-1".to_string(),
                continued_execution_run_id: None,
                parent: None,
                first_workflow_task_backoff_ms: None,
                retry_policy: None,
                initiator: None,
                continued_failure: None,
                cron_schedule: None,
                last_completion_result: None,
                search_attributes: Default::default(),
                memo: Default::default(),
            },
        ));
        builder
    }

    /// Moves the builder's clock forward; later events carry the new time.
    pub fn advance_ms(&mut self, duration_ms: u64) -> &mut Self {
        self.now = self.now.plus_ms(duration_ms);
        self
    }

    /// The time the next event will carry.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Appends an event of any kind and returns its id.
    ///
    /// # Panics
    /// If the event would make the history invalid (a bug in the test).
    pub fn add(&mut self, kind: EventKind) -> u64 {
        let event_id = self.history.next_event_id();
        let event = Event::new(event_id, self.now, kind);
        if let Err(error) = self.history.append(event) {
            panic!("HistoryBuilder: invalid history: {error}");
        }
        event_id
    }

    /// `WorkflowTaskScheduled`.
    pub fn add_workflow_task_scheduled(&mut self) -> u64 {
        let attributes = WorkflowTaskScheduled {
            task_queue: self.task_queue.clone(),
            start_to_close_timeout_ms: BUILDER_WORKFLOW_TASK_TIMEOUT_MS,
            attempt: 1,
        };
        self.workflow_task_scheduled = self.add(EventKind::WorkflowTaskScheduled(attributes));
        self.workflow_task_scheduled
    }

    /// `WorkflowTaskStarted` for the scheduled workflow task.
    pub fn add_workflow_task_started(&mut self) -> u64 {
        let attributes = WorkflowTaskStarted {
            scheduled_event_id: self.workflow_task_scheduled,
            identity: "worker".to_string(),
            request_id: format!("request-{}", self.workflow_task_scheduled),
        };
        self.workflow_task_started = self.add(EventKind::WorkflowTaskStarted(attributes));
        self.workflow_task_started
    }

    /// `WorkflowTaskCompleted` for the started workflow task; command events
    /// added next belong to it.
    pub fn add_workflow_task_completed(&mut self) -> u64 {
        let attributes = WorkflowTaskCompleted {
            scheduled_event_id: self.workflow_task_scheduled,
            started_event_id: self.workflow_task_started,
            identity: "worker".to_string(),
        };
        self.workflow_task_completed = self.add(EventKind::WorkflowTaskCompleted(attributes));
        self.workflow_task_completed
    }

    /// Scheduled, Started, Completed; returns the Completed event's id.
    pub fn add_full_workflow_task(&mut self) -> u64 {
        self.add_workflow_task_scheduled();
        self.add_workflow_task_started();
        self.add_workflow_task_completed()
    }

    /// `WorkflowTaskTimedOut` for the started workflow task.
    pub fn add_workflow_task_timed_out(&mut self) -> u64 {
        self.add(EventKind::WorkflowTaskTimedOut(WorkflowTaskTimedOut {
            scheduled_event_id: self.workflow_task_scheduled,
            started_event_id: self.workflow_task_started,
            timeout_type: TimeoutType::StartToClose,
        }))
    }

    /// `WorkflowTaskFailed` for the started workflow task.
    pub fn add_workflow_task_failed(
        &mut self,
        cause: WorkflowTaskFailedCause,
        failure: Failure,
    ) -> u64 {
        self.add(EventKind::WorkflowTaskFailed(WorkflowTaskFailed {
            scheduled_event_id: self.workflow_task_scheduled,
            started_event_id: self.workflow_task_started,
            cause,
            failure,
            identity: "worker".to_string(),
        }))
    }

    /// `ActivityTaskScheduled` with a 10 s start-to-close timeout and the default retry policy.
    pub fn add_activity_scheduled(
        &mut self,
        activity_id: &str,
        activity_type: &str,
        input: Value,
    ) -> u64 {
        let retry_policy = RetryPolicy::default()
            .normalized()
            .expect("the default policy is valid");
        self.add(EventKind::ActivityTaskScheduled(ActivityTaskScheduled {
            activity_id: activity_id.to_string(),
            activity_type: activity_type.to_string(),
            task_queue: self.task_queue.clone(),
            input,
            schedule_to_close_timeout_ms: None,
            schedule_to_start_timeout_ms: None,
            start_to_close_timeout_ms: Some(BUILDER_START_TO_CLOSE_TIMEOUT_MS),
            heartbeat_timeout_ms: None,
            retry_policy,
            workflow_task_completed_event_id: self.workflow_task_completed,
        }))
    }

    /// `ActivityTaskStarted` for the activity scheduled at `scheduled_event_id`.
    pub fn add_activity_started(
        &mut self,
        scheduled_event_id: u64,
        attempt: u32,
        last_failure: Option<Failure>,
    ) -> u64 {
        self.add(EventKind::ActivityTaskStarted(ActivityTaskStarted {
            scheduled_event_id,
            identity: "worker".to_string(),
            attempt,
            last_failure,
        }))
    }

    /// Started (attempt 1) then `ActivityTaskCompleted`; returns the Completed id.
    pub fn add_activity_completed(&mut self, scheduled_event_id: u64, result: Value) -> u64 {
        let started_event_id = self.add_activity_started(scheduled_event_id, 1, None);
        self.add(EventKind::ActivityTaskCompleted(ActivityTaskCompleted {
            scheduled_event_id,
            started_event_id,
            result,
            identity: "worker".to_string(),
        }))
    }

    /// `ActivityTaskFailed` after the given Started event.
    pub fn add_activity_failed(
        &mut self,
        scheduled_event_id: u64,
        started_event_id: u64,
        failure: Failure,
        retry_state: RetryState,
    ) -> u64 {
        self.add(EventKind::ActivityTaskFailed(ActivityTaskFailed {
            scheduled_event_id,
            started_event_id,
            failure,
            retry_state,
            identity: "worker".to_string(),
        }))
    }

    /// `ActivityTaskTimedOut`.
    pub fn add_activity_timed_out(
        &mut self,
        scheduled_event_id: u64,
        started_event_id: Option<u64>,
        timeout_type: TimeoutType,
        retry_state: RetryState,
    ) -> u64 {
        self.add(EventKind::ActivityTaskTimedOut(ActivityTaskTimedOut {
            scheduled_event_id,
            started_event_id,
            timeout_type,
            retry_state,
            last_failure: None,
            last_heartbeat_details: None,
            failure: Some(Failure::timed_out(
                timeout_type,
                format!("activity timed out: its {timeout_type} timeout passed"),
            )),
        }))
    }

    /// `ActivityTaskCancelRequested` (a command of the last completed workflow task).
    pub fn add_activity_cancel_requested(&mut self, scheduled_event_id: u64) -> u64 {
        self.add(EventKind::ActivityTaskCancelRequested(
            ActivityTaskCancelRequested {
                scheduled_event_id,
                workflow_task_completed_event_id: self.workflow_task_completed,
            },
        ))
    }

    /// `ActivityTaskCanceled`.
    pub fn add_activity_canceled(
        &mut self,
        scheduled_event_id: u64,
        started_event_id: Option<u64>,
        cancel_requested_event_id: u64,
    ) -> u64 {
        self.add(EventKind::ActivityTaskCanceled(ActivityTaskCanceled {
            scheduled_event_id,
            started_event_id,
            latest_cancel_requested_event_id: cancel_requested_event_id,
            details: None,
            identity: "worker".to_string(),
        }))
    }

    /// `TimerStarted` (a command of the last completed workflow task).
    pub fn add_timer_started(&mut self, timer_id: &str, duration_ms: u64) -> u64 {
        self.add(EventKind::TimerStarted(TimerStarted {
            timer_id: timer_id.to_string(),
            start_to_fire_timeout_ms: duration_ms,
            workflow_task_completed_event_id: self.workflow_task_completed,
        }))
    }

    /// `TimerFired`.
    pub fn add_timer_fired(&mut self, timer_id: &str, started_event_id: u64) -> u64 {
        self.add(EventKind::TimerFired(TimerFired {
            timer_id: timer_id.to_string(),
            started_event_id,
        }))
    }

    /// `TimerCanceled` (a command of the last completed workflow task).
    pub fn add_timer_canceled(&mut self, timer_id: &str, started_event_id: u64) -> u64 {
        self.add(EventKind::TimerCanceled(TimerCanceled {
            timer_id: timer_id.to_string(),
            started_event_id,
            workflow_task_completed_event_id: self.workflow_task_completed,
        }))
    }

    /// `WorkflowExecutionSignaled`.
    pub fn add_signal(&mut self, signal_name: &str, input: Value) -> u64 {
        self.add(EventKind::WorkflowExecutionSignaled(
            WorkflowExecutionSignaled {
                signal_name: signal_name.to_string(),
                input,
                identity: "client".to_string(),
            },
        ))
    }

    /// `MarkerRecorded` (a command of the last completed workflow task).
    pub fn add_marker(&mut self, marker_name: &str, details: Value) -> u64 {
        self.add(EventKind::MarkerRecorded(MarkerRecorded {
            marker_name: marker_name.to_string(),
            details,
            workflow_task_completed_event_id: self.workflow_task_completed,
        }))
    }

    /// Sets the search attributes and memo of the start event.
    pub fn with_start_visibility(
        &mut self,
        search_attributes: crate::visibility::SearchAttributes,
        memo: crate::visibility::Memo,
    ) -> &mut Self {
        let Some(EventKind::WorkflowExecutionStarted(started)) =
            self.history.events.first_mut().map(|e| &mut e.kind)
        else {
            unreachable!("a builder's history starts with WorkflowExecutionStarted")
        };
        started.search_attributes = search_attributes;
        started.memo = memo;
        self
    }

    /// `UpsertWorkflowSearchAttributes` (a command of the last completed workflow task).
    pub fn add_search_attributes_upserted(
        &mut self,
        search_attributes: crate::visibility::SearchAttributes,
    ) -> u64 {
        self.add(EventKind::UpsertWorkflowSearchAttributes(
            super::event::UpsertWorkflowSearchAttributes {
                search_attributes,
                workflow_task_completed_event_id: self.workflow_task_completed,
            },
        ))
    }

    /// `WorkflowPropertiesModified` (a command of the last completed workflow task).
    pub fn add_properties_modified(&mut self, upserted_memo: crate::visibility::Memo) -> u64 {
        self.add(EventKind::WorkflowPropertiesModified(
            super::event::WorkflowPropertiesModified {
                upserted_memo,
                workflow_task_completed_event_id: self.workflow_task_completed,
            },
        ))
    }

    /// `WorkflowExecutionCancelRequested`.
    pub fn add_cancel_requested(&mut self) -> u64 {
        self.add(EventKind::WorkflowExecutionCancelRequested(
            WorkflowExecutionCancelRequested {
                cause: "test".to_string(),
                identity: "client".to_string(),
            },
        ))
    }

    /// `WorkflowExecutionCompleted` (a command of the last completed workflow task).
    pub fn add_workflow_execution_completed(&mut self, result: Value) -> u64 {
        self.add(EventKind::WorkflowExecutionCompleted(
            WorkflowExecutionCompleted {
                result,
                workflow_task_completed_event_id: self.workflow_task_completed,
                new_execution_run_id: None,
            },
        ))
    }

    /// `WorkflowExecutionFailed` (a command of the last completed workflow task).
    pub fn add_workflow_execution_failed(&mut self, failure: Failure) -> u64 {
        self.add(EventKind::WorkflowExecutionFailed(
            WorkflowExecutionFailed {
                failure,
                workflow_task_completed_event_id: self.workflow_task_completed,
                retry_state: None,
                new_execution_run_id: None,
            },
        ))
    }

    /// `WorkflowExecutionCanceled` (a command of the last completed workflow task).
    pub fn add_workflow_execution_canceled(&mut self) -> u64 {
        self.add(EventKind::WorkflowExecutionCanceled(
            WorkflowExecutionCanceled {
                details: None,
                workflow_task_completed_event_id: self.workflow_task_completed,
            },
        ))
    }

    /// `WorkflowExecutionTerminated`.
    pub fn add_workflow_execution_terminated(&mut self, reason: &str) -> u64 {
        self.add(EventKind::WorkflowExecutionTerminated(
            WorkflowExecutionTerminated {
                reason: reason.to_string(),
                details: None,
                identity: "client".to_string(),
            },
        ))
    }

    /// `WorkflowExecutionContinuedAsNew` (a command of the last completed
    /// workflow task): the run continues as `new_run_id` with `input`, same
    /// type and task queue, no execution timeout.
    pub fn add_workflow_execution_continued_as_new(
        &mut self,
        new_run_id: &str,
        input: Value,
    ) -> u64 {
        let EventKind::WorkflowExecutionStarted(started) = &self.history.events[0].kind else {
            unreachable!("a builder's history starts with WorkflowExecutionStarted");
        };
        let kind = WorkflowExecutionContinuedAsNew {
            new_execution_run_id: new_run_id.to_string(),
            workflow_type: started.workflow_type.clone(),
            task_queue: started.task_queue.clone(),
            input,
            execution_timeout_ms: None,
            workflow_task_timeout_ms: started.workflow_task_timeout_ms,
            workflow_task_completed_event_id: self.workflow_task_completed,
        };
        self.add(EventKind::WorkflowExecutionContinuedAsNew(kind))
    }

    /// Marks the run as started by continue-as-new from `run_id`.
    pub fn continues(&mut self, run_id: &str) -> &mut Self {
        let EventKind::WorkflowExecutionStarted(started) = &mut self.history.events[0].kind else {
            unreachable!("a builder's history starts with WorkflowExecutionStarted");
        };
        started.continued_execution_run_id = Some(run_id.to_string());
        self
    }

    /// The history built so far.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The finished history.
    pub fn build(self) -> History {
        self.history
    }
}
