//! Speculative workflow tasks on the worker: when an activity completes and
//! this worker holds its run at the end of the history, it appends what the
//! result will write, runs the workflow task the result schedules, and sends
//! result and commands in one request (see [`crate::api::SpeculativeWorkflowTask`]).
//!
//! | service answer        | the worker                                              |
//! |-----------------------|---------------------------------------------------------|
//! | taken                 | keeps the run (with the completion's events applied), runs the eager activities |
//! | refused               | drops the run from its cache; runs the workflow task the result scheduled, if handed one |
//! | error (unknown fate)  | drops the run from its cache                            |

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::Value;
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit};

use super::{Shared, enter};
use crate::api::*;
use crate::history::{
    ActivityTaskCompleted, ActivityTaskStarted, Event, EventKind, WorkflowTaskScheduled,
    WorkflowTaskStarted,
};
use crate::types::Timestamp;
use crate::workflow::{Command, WorkflowExecutor};

/// Sends `value` as the result of `task` with the workflow task it schedules,
/// if the run is cached here and idle. Returns the permit if it did not try
/// (the caller then sends the result alone).
pub(super) async fn respond(
    shared: &Arc<Shared>,
    task: &ActivityTask,
    value: &Value,
    permit: OwnedSemaphorePermit,
) -> Option<OwnedSemaphorePermit> {
    let entry = shared.cache.lock().expect("cache lock").get(&task.run_id);
    let Some(mut slot) = entry.and_then(|entry| entry.try_lock_owned().ok()) else {
        return Some(permit);
    };
    if shared.env.buggify("worker.cache.drop_entry") {
        *slot = None;
    }
    let Some(executor) = slot.as_mut().filter(|e| knows_whole_history(e)) else {
        return Some(permit);
    };
    let next_event_id = executor.next_event_id();
    let started_time = shared.env.now();
    let events = result_events(shared, task, value, next_event_id, started_time);
    let commands = match executor.apply(&events) {
        // Local activities run in a plain workflow task, not a speculative one.
        Ok(_) if !executor.take_local_activity_requests().is_empty() => {
            *slot = None;
            return Some(permit);
        }
        Ok(activation) => activation
            .commands
            .expect("the events end at a WorkflowTaskStarted"),
        Err(error) => {
            // The plain path runs the task again and reports the failure.
            tracing::debug!(%error, "speculative workflow task failed; sending the result alone");
            *slot = None;
            return Some(permit);
        }
    };
    enter(&shared.workflow_tasks_now, &shared.workflow_tasks_peak);
    let ran = Ran {
        digest: executor.digest(),
        closed: commands.iter().any(Command::is_terminal),
        activity_permits: super::workflows::eager_permits(shared, &commands),
    };
    let request = Request::RespondActivityTask(RespondActivityTaskRequest {
        task_token: task.task_token.clone(),
        result: ActivityTaskResult::Completed(value.clone()),
        identity: shared.options.identity.clone(),
        eager_workflow_task_queue: Some(shared.options.task_queue.clone()),
        speculative_workflow_task: Some(SpeculativeWorkflowTask {
            next_event_id,
            started_time,
            commands,
            eager_activities_max: ran.activity_permits.len() as u32,
        }),
    });
    let answer = shared.call_idempotent(request).await;
    shared.workflow_tasks_now.fetch_sub(1, Ordering::SeqCst);
    on_answer(shared, &task.run_id, answer, slot, ran, permit);
    None
}

/// What the speculative workflow task produced besides its commands.
struct Ran {
    digest: crate::workflow::StateDigest,
    closed: bool,
    activity_permits: Vec<OwnedSemaphorePermit>,
}

/// Acts on the service's answer (the table on top).
fn on_answer(
    shared: &Arc<Shared>,
    run_id: &str,
    answer: Result<Response, crate::client::ClientError>,
    mut slot: OwnedMutexGuard<Option<WorkflowExecutor>>,
    ran: Ran,
    permit: OwnedSemaphorePermit,
) {
    let answer = match answer {
        Ok(Response::RespondActivityTask(answer)) => answer,
        Ok(other) => {
            tracing::warn!(run_id, ?other, "unexpected answer to an activity result");
            *slot = None;
            return;
        }
        Err(error) => {
            tracing::debug!(run_id, %error, "activity result with speculative workflow task not accepted");
            *slot = None;
            return;
        }
    };
    if let Some(observer) = &shared.observer {
        observer.speculative_workflow_task(run_id, answer.speculation.is_some());
    }
    let Some(completion) = answer.speculation else {
        shared.speculations_refused.fetch_add(1, Ordering::Relaxed);
        *slot = None;
        drop(slot);
        if let Some(next) = answer.workflow_task {
            super::workflows::spawn_task(shared, next, permit);
        }
        return;
    };
    shared.speculations_taken.fetch_add(1, Ordering::Relaxed);
    shared.workflow_tasks.fetch_add(1, Ordering::Relaxed);
    if let Some(observer) = &shared.observer {
        observer.workflow_task_completed(run_id, ran.digest, ran.closed);
    }
    let kept = slot
        .take()
        .and_then(|executor| super::workflows::keep_with(executor, &completion.events));
    *slot = kept.filter(|_| !ran.closed);
    drop(slot);
    if ran.closed {
        shared.cache.lock().expect("cache lock").remove(run_id);
    }
    let tasks = completion.activity_tasks;
    super::workflows::run_eager_activities(shared, run_id, tasks, ran.activity_permits);
}

/// True if the executor has applied everything up to the history's end:
/// its last workflow task's completion came back with the events it wrote.
fn knows_whole_history(executor: &WorkflowExecutor) -> bool {
    !executor.is_closed() && executor.next_event_id() > executor.last_started_event_id() + 1
}

/// What a completed result appends to an idle run, as this worker can know
/// it: ids, kinds, links, the result and the time are the service's; fields
/// only the service knows (the attempt's earlier failure, the task timeout,
/// request ids) are left empty, and the executor reads none of them. The
/// service writes its own events, and takes the commands only if its ids match.
fn result_events(
    shared: &Shared,
    task: &ActivityTask,
    value: &Value,
    next_event_id: u64,
    now: Timestamp,
) -> Vec<Event> {
    let identity = &shared.options.identity;
    let scheduled_event_id = task.task_token.scheduled_event_id;
    let kinds = [
        EventKind::ActivityTaskStarted(ActivityTaskStarted {
            scheduled_event_id,
            identity: identity.clone(),
            attempt: task.attempt,
            last_failure: None,
        }),
        EventKind::ActivityTaskCompleted(ActivityTaskCompleted {
            scheduled_event_id,
            started_event_id: next_event_id,
            result: value.clone(),
            identity: identity.clone(),
        }),
        EventKind::WorkflowTaskScheduled(WorkflowTaskScheduled {
            task_queue: shared.options.task_queue.clone(),
            start_to_close_timeout_ms: 0,
            attempt: 1,
        }),
        EventKind::WorkflowTaskStarted(WorkflowTaskStarted {
            scheduled_event_id: next_event_id + 2,
            identity: identity.clone(),
            request_id: String::new(),
        }),
    ];
    let events: Vec<Event> = kinds
        .into_iter()
        .zip(next_event_id..)
        .map(|(kind, event_id)| Event::new(event_id, now, kind))
        .collect();
    assert_eq!(events.len(), 4);
    events
}
