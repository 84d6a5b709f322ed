//! Starting tasks inside a transition, and turning them into what a worker
//! receives. Polls use it, and so does eager dispatch: the reply that
//! completes a workflow task carries the activities it scheduled, already
//! started; the reply to an activity result carries the workflow task it
//! scheduled. Each saves a poll round trip and a storage write.

use serde_json::Value;

use super::machine::{ActivityState, Step, activity, workflow_task};
use std::sync::Arc;

use super::metrics::TaskKindLabel;
use super::service::{Inner, unavailable};
use crate::api::{ActivityTask, ServiceError, TaskToken, WorkflowTask};
use crate::history::EventKind;
use crate::types::Timestamp;

/// Activities handed back in one completion, at most.
pub const EAGER_ACTIVITIES_MAX: u32 = 16;

/// A workflow task started by a transition; its events are read after the commit.
pub(super) struct StartedWorkflowTask {
    token: TaskToken,
    workflow_id: String,
    workflow_type: String,
    previous_started_event_id: u64,
}

/// Starts the run's scheduled workflow task (the one at `scheduled_event_id`,
/// if given). Pure: part of a transition.
pub(super) fn start_workflow_task(
    step: &mut Step<'_>,
    scheduled_event_id: Option<u64>,
    identity: &str,
    request_id: &str,
) -> Option<StartedWorkflowTask> {
    let previous_started_event_id = step.state.previous_started_event_id;
    let started = workflow_task::on_started(step, scheduled_event_id, identity, request_id)?;
    assert!(
        started.started_event_id > previous_started_event_id,
        "a task starts after the previous one"
    );
    let token = TaskToken {
        workflow_id: step.state.workflow_id.clone(),
        run_id: step.state.run_id.clone(),
        scheduled_event_id: started.scheduled_event_id,
        attempt: started.attempt,
        started_event_id: started.started_event_id,
    };
    Some(StartedWorkflowTask {
        token,
        workflow_id: step.state.workflow_id.clone(),
        workflow_type: step.state.workflow_type.clone(),
        previous_started_event_id,
    })
}

/// An activity attempt started by a transition.
pub(super) struct StartedActivity {
    activity: ActivityState,
    workflow_id: String,
    run_id: String,
    started_time: Timestamp,
    /// How long the attempt waited on the queue.
    queued_ms: u64,
    /// The input, when the transition wrote it (else read from storage).
    input: Option<Value>,
}

/// Starts attempt `attempt` of the activity at `scheduled_event_id`, if it is on the queue.
pub(super) fn start_activity(
    step: &mut Step<'_>,
    scheduled_event_id: u64,
    attempt: u32,
    identity: &str,
) -> Option<StartedActivity> {
    let since = match step.state.activities.get(&scheduled_event_id)?.phase {
        activity::ActivityPhase::Scheduled { since } => since,
        _ => return None,
    };
    activity::on_started(step, scheduled_event_id, attempt, identity)?;
    Some(StartedActivity {
        queued_ms: step.now.millis_since(since),
        activity: step.state.activities[&scheduled_event_id].clone(),
        workflow_id: step.state.workflow_id.clone(),
        run_id: step.state.run_id.clone(),
        started_time: step.now,
        input: None,
    })
}

/// Starts up to `max` of the activities this transition scheduled on the
/// run's own task queue (for the worker completing the workflow task).
pub(super) fn start_new_activities(
    step: &mut Step<'_>,
    max: u32,
    identity: &str,
) -> Vec<StartedActivity> {
    let scheduled: Vec<(u64, Value)> = step
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ActivityTaskScheduled(a) if a.task_queue == step.state.task_queue => {
                Some((e.event_id, a.input.clone()))
            }
            _ => None,
        })
        .take(max.min(EAGER_ACTIVITIES_MAX) as usize)
        .collect();
    let mut started = Vec::with_capacity(scheduled.len());
    for (scheduled_event_id, input) in scheduled {
        if let Some(mut activity) = start_activity(step, scheduled_event_id, 1, identity) {
            activity.input = Some(input);
            started.push(activity);
        }
    }
    assert!(started.len() <= max as usize);
    started
}

impl StartedWorkflowTask {
    /// The started task's token.
    pub(super) fn token(&self) -> &TaskToken {
        &self.token
    }

    /// The events the task carries: after the last completed task, through its start.
    pub(super) fn event_range(&self) -> (u64, u64) {
        (
            self.previous_started_event_id + 1,
            self.token.started_event_id,
        )
    }

    /// The task a worker receives, given its events.
    pub(super) fn into_task(self, events: Vec<crate::history::Event>) -> WorkflowTask {
        let (from, to) = self.event_range();
        assert_eq!(
            events.len() as u64,
            to - from + 1,
            "a workflow task carries every event since the last one"
        );
        assert_eq!(
            events.last().map(|e| e.event_id),
            Some(to),
            "the task's events end at its start"
        );
        WorkflowTask {
            task_token: self.token,
            workflow_id: self.workflow_id,
            workflow_type: self.workflow_type,
            previous_started_event_id: self.previous_started_event_id,
            events,
            updates: Vec::new(),
        }
    }
}

impl Inner {
    /// The task a worker receives for a started workflow task: its events
    /// since the last completed task, from memory or storage. `None` (and the
    /// task given back) if they cannot be read.
    pub(super) async fn workflow_task_of(
        self: &Arc<Self>,
        started: StartedWorkflowTask,
    ) -> Option<WorkflowTask> {
        let (from, to) = started.event_range();
        let recent = self.recent_events(&started.token.run_id, from, to).await;
        self.task_with_events(started, recent).await
    }

    /// The task, with `recent` as its events if known, else read from storage.
    pub(super) async fn task_with_events(
        self: &Arc<Self>,
        started: StartedWorkflowTask,
        recent: Option<Vec<crate::history::Event>>,
    ) -> Option<WorkflowTask> {
        let (from, to) = started.event_range();
        let events = match recent {
            Some(events) => events,
            None => match self.read_task_events(&started.token.run_id, from, to).await {
                Ok(events) => events,
                Err(error) => {
                    tracing::warn!(%error, "cannot read a started workflow task's events; giving it back");
                    self.give_back(started.token);
                    return None;
                }
            },
        };
        self.metrics.on_dispatched(TaskKindLabel::Workflow);
        let mut task = started.into_task(events);
        task.updates =
            super::service::lock(&self.updates).pending_for_task(&task.task_token.run_id);
        Some(task)
    }

    /// Events `from..=to` from storage.
    pub(super) async fn read_task_events(
        &self,
        run_id: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<crate::history::Event>, ServiceError> {
        let read = self
            .storage
            .read_events(run_id, from, (to - from + 1) as usize)
            .await;
        read.map_err(|e| unavailable(&e))
    }

    /// The task a worker receives for a started activity attempt.
    pub(super) async fn activity_task_of(
        &self,
        started: StartedActivity,
    ) -> Result<ActivityTask, ServiceError> {
        let activity = started.activity;
        let input = match started.input {
            Some(input) => input,
            None => {
                self.scheduled_input(&started.run_id, activity.scheduled_event_id)
                    .await?
            }
        };
        self.metrics.on_dispatched(TaskKindLabel::Activity);
        self.metrics.on_activity_started(started.queued_ms);
        Ok(ActivityTask {
            task_token: TaskToken {
                workflow_id: started.workflow_id.clone(),
                run_id: started.run_id.clone(),
                scheduled_event_id: activity.scheduled_event_id,
                attempt: activity.attempt,
                started_event_id: 0,
            },
            workflow_id: started.workflow_id,
            run_id: started.run_id,
            activity_id: activity.activity_id,
            activity_type: activity.activity_type,
            input,
            attempt: activity.attempt,
            scheduled_time: activity.scheduled_time,
            started_time: started.started_time,
            start_to_close_timeout_ms: Some(activity.start_to_close_timeout_ms),
            heartbeat_timeout_ms: activity.heartbeat_timeout_ms,
            heartbeat_details: activity.heartbeat_details,
        })
    }

    async fn scheduled_input(
        &self,
        run_id: &str,
        scheduled_event_id: u64,
    ) -> Result<Value, ServiceError> {
        let read = self
            .storage
            .read_events(run_id, scheduled_event_id, 1)
            .await;
        match read
            .map_err(|e| unavailable(&e))?
            .into_iter()
            .next()
            .map(|e| e.kind)
        {
            Some(EventKind::ActivityTaskScheduled(scheduled)) => Ok(scheduled.input),
            _ => Err(ServiceError::new(
                crate::api::ErrorCode::Internal,
                "the activity's scheduled event is missing",
            )),
        }
    }
}
