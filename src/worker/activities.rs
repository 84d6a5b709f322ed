//! Activity tasks on the worker: run one attempt, heartbeat it, report how it ended.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::future::Either;

use super::{Shared, enter};
use tokio::sync::OwnedSemaphorePermit;

use crate::activity::{
    ActivityContext, ActivityInfo, ActivityRunError, ActivityShared, CancelReason,
};
use crate::api::*;
use crate::types::Failure;

/// Polls activity tasks while the worker has capacity.
pub(super) async fn poll_loop(shared: Arc<Shared>) {
    let mut failures = 0;
    loop {
        let Some(permit) = shared.permit(&shared.activity_permits).await else {
            return;
        };
        let request = Request::PollActivityTask(PollTaskRequest {
            task_queue: shared.options.task_queue.clone(),
            identity: shared.options.identity.clone(),
            workflow_types: Vec::new(),
        });
        let poll = shared.call_once(request, shared.options.poll_rpc_timeout_ms);
        let Some(polled) = shared.unless_stopping(poll).await else {
            return;
        };
        match polled {
            Ok(Response::PollActivityTask(PollActivityTaskResponse { task: Some(task) })) => {
                failures = 0;
                spawn_attempt(&shared, task, permit);
            }
            Ok(_) => failures = 0,
            Err(error) => {
                shared.log_poll_failure("activity", failures, &error);
                drop(permit);
                failures += 1;
                shared.poll_backoff(failures).await;
            }
        }
    }
}

fn info_of(task: &ActivityTask) -> ActivityInfo {
    ActivityInfo {
        workflow_id: task.workflow_id.clone(),
        run_id: task.run_id.clone(),
        activity_id: task.activity_id.clone(),
        activity_type: task.activity_type.clone(),
        attempt: task.attempt,
        scheduled_time: task.scheduled_time,
        started_time: task.started_time,
        start_to_close_timeout_ms: task.start_to_close_timeout_ms,
        heartbeat_timeout_ms: task.heartbeat_timeout_ms,
        heartbeat_details: task.heartbeat_details.clone(),
    }
}

/// Runs one attempt to its end, its heartbeats beside it.
/// Runs an attempt in its own task, holding one unit of activity capacity.
pub(super) fn spawn_attempt(
    shared: &Arc<Shared>,
    task: ActivityTask,
    permit: OwnedSemaphorePermit,
) {
    let shared = shared.clone();
    shared.clone().spawn("worker-activity", async move {
        enter(&shared.activities_now, &shared.activities_peak);
        run_attempt(&shared, task).await;
        shared.activities_now.fetch_sub(1, Ordering::SeqCst);
        drop(permit);
    });
}

async fn run_attempt(shared: &Arc<Shared>, task: ActivityTask) {
    shared.activities_run.fetch_add(1, Ordering::Relaxed);
    if let Some(observer) = &shared.observer {
        observer.activity_started(&task);
    }
    let activity_shared = ActivityShared::new();
    let slot = shared.next_activity_slot.fetch_add(1, Ordering::Relaxed);
    shared
        .running_activities
        .lock()
        .expect("lock")
        .insert(slot, activity_shared.clone());
    let result = match shared.activities.get(&task.activity_type) {
        Some(activity) => {
            // Read before the attempt runs, so its first heartbeat is seen.
            let pending = activity_shared.heartbeat_pending.version();
            let ctx = ActivityContext::new(info_of(&task), activity_shared.clone());
            let attempt = activity(ctx, task.input.clone());
            let heartbeats = heartbeat_loop(shared, &task, &activity_shared, pending);
            futures::pin_mut!(attempt, heartbeats);
            match futures::future::select(attempt, heartbeats).await {
                Either::Left((result, _)) => Some(result),
                Either::Right(((), _)) => None,
            }
        }
        None => {
            let message = format!(
                "activity type {:?} is not registered on worker {}",
                task.activity_type, shared.options.identity
            );
            Some(Err(ActivityRunError::Failed(Failure::new(
                "ActivityTypeNotRegistered",
                message,
            ))))
        }
    };
    shared
        .running_activities
        .lock()
        .expect("lock")
        .remove(&slot);
    if let Some(observer) = &shared.observer {
        observer.activity_finished(&task);
    }
    let Some(result) = result else { return };
    let reason = activity_shared.cancel.get();
    respond(shared, &task, to_task_result(result, reason)).await;
}

fn to_task_result(
    result: Result<serde_json::Value, ActivityRunError>,
    reason: Option<CancelReason>,
) -> ActivityTaskResult {
    match (result, reason) {
        (Ok(value), _) => ActivityTaskResult::Completed(value),
        (Err(ActivityRunError::Failed(failure)), _) => ActivityTaskResult::Failed(failure),
        (Err(ActivityRunError::Canceled { details }), Some(CancelReason::CancelRequested)) => {
            ActivityTaskResult::Canceled(details)
        }
        (Err(ActivityRunError::Canceled { .. }), reason) => {
            let message =
                format!("the attempt stopped ({reason:?}) without a cancel request; it is retried");
            ActivityTaskResult::Failed(Failure::new("WorkerShutdown", message))
        }
    }
}

/// Delivers the attempt's end (retried: the token makes it idempotent). If
/// this worker has room for a workflow task, it offers to take the one the
/// result schedules (eager dispatch) and runs it.
async fn respond(shared: &Arc<Shared>, task: &ActivityTask, result: ActivityTaskResult) {
    if let Some(observer) = &shared.observer {
        observer.activity_result_sent(task, &result);
    }
    let mut permit = shared.try_permit(
        &shared.workflow_permits,
        !shared.workflows.names().is_empty(),
    );
    if let (Some(room), ActivityTaskResult::Completed(value)) = (permit.take(), &result) {
        if !shared.options.speculative_workflow_tasks {
            permit = Some(room);
        } else {
            permit = super::speculation::respond(shared, task, value, room).await;
            if permit.is_none() {
                return;
            }
        }
    }
    let request = Request::RespondActivityTask(RespondActivityTaskRequest {
        task_token: task.task_token.clone(),
        result,
        identity: shared.options.identity.clone(),
        eager_workflow_task_queue: permit.as_ref().map(|_| shared.options.task_queue.clone()),
        speculative_workflow_task: None,
    });
    match shared.call_idempotent(request).await {
        Ok(Response::RespondActivityTask(RespondActivityTaskResponse {
            workflow_task: Some(next),
            ..
        })) => {
            // A service hands a task only to a worker that offered room; an
            // older or wrong one might not: that task then times out and retries.
            if let Some(observer) = &shared.observer {
                let room = usize::from(permit.is_some());
                observer.tasks_handed(&next.task_token.run_id, "workflow", room, 1);
            }
            match permit {
                Some(permit) => super::workflows::spawn_task(shared, next, permit),
                None => tracing::warn!(
                    run_id = next.task_token.run_id,
                    "got a workflow task without offering room; dropped"
                ),
            }
        }
        Ok(_) => {}
        Err(error) => {
            tracing::debug!(%error, "activity result not accepted (the attempt timed out, or the run closed)")
        }
    }
}

/// Sends heartbeats while the attempt runs (throttled), relays cancellation,
/// and stops the attempt when its start-to-close deadline passes on this
/// worker's clock. Resolves only to stop the attempt.
async fn heartbeat_loop(
    shared: &Shared,
    task: &ActivityTask,
    activity: &Arc<ActivityShared>,
    mut heartbeats_seen: u64,
) {
    let throttle_ms = match task.heartbeat_timeout_ms {
        Some(timeout_ms) => (timeout_ms * 4 / 5).max(1),
        None => shared.options.heartbeat_throttle_ms_max,
    };
    let deadline = task
        .start_to_close_timeout_ms
        .map(|ms| shared.env.now().plus_ms(ms));
    let mut last_sent = shared.env.now();
    loop {
        let changed = activity.heartbeat_pending.changed_since(heartbeats_seen);
        let expire = match deadline {
            Some(deadline) => shared.env.clock.sleep_until(deadline),
            None => Box::pin(futures::future::pending()),
        };
        futures::pin_mut!(changed);
        match futures::future::select(changed, expire).await {
            Either::Left((version, _)) => heartbeats_seen = version,
            Either::Right(_) => {
                activity.request_cancel(CancelReason::TimedOut);
                return;
            }
        }
        let wait_ms = last_sent
            .plus_ms(throttle_ms)
            .millis_since(shared.env.now());
        if wait_ms > 0 {
            shared.env.sleep_ms(wait_ms).await;
        }
        last_sent = shared.env.now();
        if let Some(observer) = &shared.observer {
            observer.activity_heartbeat_sent(task);
        }
        let details = activity.details.lock().expect("details lock").clone();
        let request = Request::HeartbeatActivityTask(HeartbeatRequest {
            task_token: task.task_token.clone(),
            details,
            identity: shared.options.identity.clone(),
        });
        match shared
            .call_once(request, shared.options.rpc_timeout_ms)
            .await
        {
            Ok(Response::HeartbeatActivityTask(HeartbeatResponse {
                cancel_requested: true,
            })) => {
                activity.request_cancel(CancelReason::CancelRequested);
            }
            Err(error) if error.code() == Some(ErrorCode::TaskNotFound) => {
                activity.request_cancel(CancelReason::NotFound);
            }
            _ => {}
        }
    }
}
