//! Workflow tasks and queries on the worker.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::OwnedSemaphorePermit;

use super::{Shared, enter};
use crate::api::*;
use crate::engine::eager::EAGER_ACTIVITIES_MAX;
use crate::history::{Event, WorkflowTaskFailedCause};
use crate::types::Failure;
use crate::workflow::{ReplayError, WorkflowExecutor};

/// Polls workflow tasks while the worker has capacity.
pub(super) async fn poll_loop(shared: Arc<Shared>) {
    let mut failures = 0;
    loop {
        let Some(permit) = shared.permit(&shared.workflow_permits).await else {
            return;
        };
        let request = Request::PollWorkflowTask(PollTaskRequest {
            task_queue: shared.options.task_queue.clone(),
            identity: shared.options.identity.clone(),
            workflow_types: shared.workflows.names(),
        });
        let poll = shared.call_once(request, shared.options.poll_rpc_timeout_ms);
        let Some(polled) = shared.unless_stopping(poll).await else {
            return;
        };
        match polled {
            Ok(Response::PollWorkflowTask(PollWorkflowTaskResponse {
                task: Some(task), ..
            })) => {
                failures = 0;
                spawn_task(&shared, task, permit);
            }
            Ok(Response::PollWorkflowTask(PollWorkflowTaskResponse {
                query: Some(query), ..
            })) => {
                failures = 0;
                let shared = shared.clone();
                shared.clone().spawn("worker-query", async move {
                    answer_query(&shared, query).await;
                    drop(permit);
                });
            }
            Ok(_) => failures = 0,
            Err(error) => {
                shared.log_poll_failure("workflow", failures, &error);
                drop(permit);
                failures += 1;
                shared.poll_backoff(failures).await;
            }
        }
    }
}

/// Reads events `1..=last_event_id` of a run.
async fn read_history(
    shared: &Shared,
    run_id: &str,
    workflow_id: &str,
    last_event_id: u64,
) -> Result<Vec<Event>, String> {
    let mut events: Vec<Event> = Vec::new();
    while (events.len() as u64) < last_event_id {
        let run = RunRef {
            workflow_id: workflow_id.to_string(),
            run_id: Some(run_id.to_string()),
        };
        let from_event_id = events.len() as u64 + 1;
        let request = Request::GetHistory(GetHistoryRequest {
            run,
            from_event_id,
            page_size: 0,
        });
        match shared
            .call_once(request, shared.options.rpc_timeout_ms)
            .await
        {
            Ok(Response::GetHistory(page)) if !page.events.is_empty() => events.extend(page.events),
            Ok(other) => {
                return Err(format!(
                    "history ends before event {last_event_id}: {other:?}"
                ));
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    events.truncate(last_event_id as usize);
    Ok(events)
}

/// Runs a workflow task: applies its events to the cached executor (or one
/// rebuilt from the full history), and completes it with the commands.
/// Runs a workflow task in its own task, holding one unit of workflow capacity.
pub(super) fn spawn_task(shared: &Arc<Shared>, task: WorkflowTask, permit: OwnedSemaphorePermit) {
    let shared = shared.clone();
    shared.clone().spawn("worker-workflow-task", async move {
        enter(&shared.workflow_tasks_now, &shared.workflow_tasks_peak);
        handle_task(&shared, task).await;
        shared.workflow_tasks_now.fetch_sub(1, Ordering::SeqCst);
        drop(permit);
    });
}

async fn handle_task(shared: &Arc<Shared>, task: WorkflowTask) {
    let run_id = task.task_token.run_id.clone();
    let entry = shared.cache.lock().expect("cache lock").entry(&run_id);
    let mut slot = entry.lock().await;
    let Some((mut executor, events)) = executor_for(shared, &task, slot.take()).await else {
        return;
    };
    executor.offer_updates(task.updates.iter().map(accept_of).collect());
    let commands = match executor.apply(&events) {
        Ok(activation) => activation.commands,
        Err(error) => {
            fail_task(shared, &task, &error).await;
            return;
        }
    };
    let Some(mut commands) = commands else {
        tracing::error!(
            run_id,
            "a workflow task's events must end at its WorkflowTaskStarted"
        );
        return;
    };
    if let Err(error) = run_local_activities(shared, &task, &mut executor, &mut commands).await {
        fail_task(shared, &task, &error).await;
        return;
    }
    let closed = commands.iter().any(crate::workflow::Command::is_terminal);
    let completion = Completion {
        commands,
        update_rejections: rejections_of(executor.take_update_rejections()),
        digest: executor.digest(),
        closed,
    };
    let written = complete_task(shared, &task, completion).await;
    // The executor stays cached whatever the answer: if the completion did not
    // land, the next task's `previous_started_event_id` will not match it and
    // it is replaced by a replay from history.
    if closed {
        drop(slot);
        shared.cache.lock().expect("cache lock").remove(&run_id);
    } else {
        *slot = keep_with(executor, &written);
    }
}

/// Runs the local activities the activation asks for, round after round,
/// adding each round's commands (its markers first) to `commands`.
async fn run_local_activities(
    shared: &Arc<Shared>,
    task: &WorkflowTask,
    executor: &mut WorkflowExecutor,
    commands: &mut Vec<crate::workflow::Command>,
) -> Result<(), ReplayError> {
    let window_ends = shared
        .env
        .now()
        .plus_ms(shared.options.local_activity_window_ms);
    for _ in 0..LOCAL_ACTIVITY_ROUNDS_MAX {
        let requests = executor.take_local_activity_requests();
        if requests.is_empty() {
            return Ok(());
        }
        let outcomes =
            super::local_activities::run_round(shared, task, window_ends, requests).await;
        commands.extend(executor.resolve_local_activities(outcomes)?);
    }
    Err(ReplayError::Panicked {
        event_id: task.task_token.started_event_id,
        message: format!(
            "the workflow asked for more than {LOCAL_ACTIVITY_ROUNDS_MAX} rounds of local activities in one task"
        ),
    })
}

/// Rounds of local activities one workflow task may run.
pub const LOCAL_ACTIVITY_ROUNDS_MAX: usize = 1_000;

/// The executor to keep after a completion: with the events the completion
/// wrote applied (so it knows the whole history), or none if they do not fit
/// (the next task then replays from history).
pub(super) fn keep_with(
    mut executor: WorkflowExecutor,
    written: &[Event],
) -> Option<WorkflowExecutor> {
    match executor.apply(written) {
        Ok(_) => Some(executor),
        Err(error) => {
            tracing::warn!(%error, "a completion's events do not apply to the cached run; dropping it");
            None
        }
    }
}

/// The executor to apply `task` to, and the events to apply: the cached one
/// if its last task is the one this task follows (it may already have applied
/// the first of the task's events, those its completion wrote), else a fresh
/// one with the run's whole history (a cache miss). `None` if the history
/// cannot be read.
async fn executor_for(
    shared: &Shared,
    task: &WorkflowTask,
    cached: Option<WorkflowExecutor>,
) -> Option<(WorkflowExecutor, Vec<Event>)> {
    let previous = task.previous_started_event_id;
    let cached = cached
        .and_then(|executor| {
            let seen = executor.next_event_id().checked_sub(previous + 1)?;
            let fits =
                executor.last_started_event_id() == previous && (seen as usize) < task.events.len();
            fits.then_some((executor, seen as usize))
        })
        .filter(|_| !shared.env.buggify("worker.cache.drop_entry"));
    if let Some((executor, seen)) = cached {
        return Some((executor, task.events[seen..].to_vec()));
    }
    shared.cache_misses.fetch_add(1, Ordering::Relaxed);
    let run_id = &task.task_token.run_id;
    let mut events = match read_history(shared, run_id, &task.workflow_id, previous).await {
        Ok(events) => events,
        Err(error) => {
            tracing::warn!(
                run_id,
                error,
                "cannot read history; the task will time out and retry"
            );
            return None;
        }
    };
    events.extend(task.events.iter().cloned());
    Some((
        WorkflowExecutor::new(&shared.workflows, &task.workflow_id, run_id),
        events,
    ))
}

/// Room for the activities `commands` schedule on our queue (eager dispatch).
pub(super) fn eager_permits(
    shared: &Shared,
    commands: &[crate::workflow::Command],
) -> Vec<OwnedSemaphorePermit> {
    let eager_wanted = commands
        .iter()
        .filter(|c| schedules_on(c, &shared.options.task_queue))
        .count();
    shared.try_permits(
        &shared.activity_permits,
        eager_wanted.min(EAGER_ACTIVITIES_MAX as usize),
    )
}

/// Runs the activities a completion started for us, each with its unit of room.
pub(super) fn run_eager_activities(
    shared: &Arc<Shared>,
    run_id: &str,
    activity_tasks: Vec<ActivityTask>,
    permits: Vec<OwnedSemaphorePermit>,
) {
    let handed = activity_tasks.len();
    if let Some(observer) = &shared.observer {
        observer.tasks_handed(run_id, "activity", permits.len(), handed);
    }
    if handed > permits.len() {
        // Never from a correct service: the extra attempts time out and retry.
        tracing::warn!(
            run_id,
            handed,
            room = permits.len(),
            "got more activities than we had room for"
        );
    }
    for (activity, permit) in activity_tasks.into_iter().zip(permits) {
        super::activities::spawn_attempt(shared, activity, permit);
    }
}

/// What a workflow task's completion carries.
struct Completion {
    commands: Vec<crate::workflow::Command>,
    update_rejections: Vec<crate::api::UpdateRejection>,
    digest: crate::workflow::StateDigest,
    closed: bool,
}

/// An update as the executor takes it.
fn accept_of(update: &crate::api::UpdateRequest) -> crate::workflow::AcceptUpdate {
    crate::workflow::AcceptUpdate {
        update_id: update.update_id.clone(),
        update_name: update.update_name.clone(),
        input: update.input.clone(),
        identity: update.identity.clone(),
    }
}

fn rejections_of(
    rejections: Vec<(String, crate::types::Failure)>,
) -> Vec<crate::api::UpdateRejection> {
    rejections
        .into_iter()
        .map(|(update_id, failure)| crate::api::UpdateRejection { update_id, failure })
        .collect()
}

/// Completes the task with `commands`, offering room for the activities they
/// schedule on our queue (the service starts them and hands them back).
/// Returns the events the completion wrote (none if it did not land).
async fn complete_task(
    shared: &Arc<Shared>,
    task: &WorkflowTask,
    completion: Completion,
) -> Vec<Event> {
    let Completion {
        commands,
        update_rejections,
        digest,
        closed,
    } = completion;
    let permits = eager_permits(shared, &commands);
    let request = Request::CompleteWorkflowTask(CompleteWorkflowTaskRequest {
        task_token: task.task_token.clone(),
        commands,
        identity: shared.options.identity.clone(),
        eager_activities_max: permits.len() as u32,
        update_rejections,
    });
    let run_id = &task.task_token.run_id;
    match shared.call_idempotent(request).await {
        Ok(response) => {
            shared.workflow_tasks.fetch_add(1, Ordering::Relaxed);
            if let Some(observer) = &shared.observer {
                observer.workflow_task_completed(run_id, digest, closed);
            }
            let Response::CompleteWorkflowTask(answer) = response else {
                return Vec::new();
            };
            run_eager_activities(shared, run_id, answer.activity_tasks, permits);
            answer.events
        }
        Err(error) => {
            tracing::debug!(run_id, %error, "workflow task completion not accepted");
            Vec::new()
        }
    }
}

async fn fail_task(shared: &Shared, task: &WorkflowTask, error: &ReplayError) {
    let cause = match error {
        ReplayError::NonDeterminism(_) => WorkflowTaskFailedCause::NonDeterministicError,
        _ => WorkflowTaskFailedCause::WorkflowWorkerUnhandledFailure,
    };
    let failure_type = match error {
        ReplayError::NonDeterminism(_) => "NonDeterminism",
        ReplayError::Panicked { .. } => "Panic",
        ReplayError::UnknownWorkflowType { .. } => "UnknownWorkflowType",
        ReplayError::Input(_) => "PayloadError",
        _ => "WorkflowTaskError",
    };
    tracing::warn!(run_id = task.task_token.run_id, %error, "workflow task failed");
    let request = Request::FailWorkflowTask(FailWorkflowTaskRequest {
        task_token: task.task_token.clone(),
        cause,
        failure: Failure::new(failure_type, error.to_string()),
        identity: shared.options.identity.clone(),
    });
    if let Err(error) = shared
        .call_once(request, shared.options.rpc_timeout_ms)
        .await
    {
        tracing::debug!(%error, "could not report the workflow task failure; it will time out");
    }
    shared
        .cache
        .lock()
        .expect("cache lock")
        .remove(&task.task_token.run_id);
}

/// Answers a query from the cached run if it is where the run's last
/// completed workflow task left it, or else from a replay of its history.
async fn answer_query(shared: &Shared, query: QueryTask) {
    let entry = shared
        .cache
        .lock()
        .expect("cache lock")
        .entry(&query.run_id);
    let cached = {
        let slot = entry.lock().await;
        slot.as_ref()
            .filter(|executor| executor.last_started_event_id() == query.previous_started_event_id)
            .map(|executor| {
                executor
                    .query(&query.query_name, query.args.clone())
                    .map_err(|e| e.to_string())
            })
    };
    // A replay builds its own executor: the run's cached one is not held
    // (its next workflow task need not wait for the replay's reads).
    let answer = match cached {
        Some(answer) => answer,
        None => replay_and_query(shared, &query).await,
    };
    let request = Request::RespondQuery(RespondQueryRequest {
        query_id: query.query_id.clone(),
        answer,
    });
    if let Err(error) = shared
        .call_once(request, shared.options.rpc_timeout_ms)
        .await
    {
        tracing::debug!(%error, "could not answer the query");
    }
}

/// Replays the run through its last completed workflow task (or, before its
/// first, through all it has) and asks the query of that state.
async fn replay_and_query(shared: &Shared, query: &QueryTask) -> Result<serde_json::Value, String> {
    let length = history_length(shared, query).await?;
    let events = read_history(shared, &query.run_id, &query.workflow_id, length).await?;
    let events = through_workflow_task(events, query.previous_started_event_id);
    let mut executor = WorkflowExecutor::new(&shared.workflows, &query.workflow_id, &query.run_id);
    executor.apply(&events).map_err(|e| e.to_string())?;
    assert!(
        query.previous_started_event_id == 0
            || executor.last_started_event_id() == query.previous_started_event_id
    );
    executor
        .query(&query.query_name, query.args.clone())
        .map_err(|e| e.to_string())
}

/// The events through the completion of the workflow task started at
/// `started_event_id` and the commands it recorded: a replay of them ends
/// where the completing worker was, its markers (`side_effect`, `patched`)
/// read back rather than run again. With 0 (no task had completed when the
/// query was asked; the service now refuses such queries as not ready, so
/// only an older service sends one), the events through the first
/// `WorkflowTaskStarted`: what the first task sees. All events would let a replay made later run
/// the workflow over events no completed task has seen (signals that came
/// after), answering from a state that a later query, made after the first
/// task completed, goes back from.
fn through_workflow_task(mut events: Vec<Event>, started_event_id: u64) -> Vec<Event> {
    if started_event_id == 0 {
        let first_started = events
            .iter()
            .position(|e| matches!(e.kind, crate::history::EventKind::WorkflowTaskStarted(_)));
        if let Some(index) = first_started {
            events.truncate(index + 1);
        }
        return events;
    }
    let completed_index = usize::try_from(started_event_id).expect("event ids fit usize");
    let mut end = (completed_index + 1).min(events.len());
    while end < events.len() && events[end].kind.command_of().is_some() {
        end += 1;
    }
    events.truncate(end);
    assert!(events.get(completed_index).is_none_or(|completed| {
        completed.event_id == started_event_id + 1
            && matches!(
                completed.kind,
                crate::history::EventKind::WorkflowTaskCompleted(_)
            )
    }));
    events
}

async fn history_length(shared: &Shared, query: &QueryTask) -> Result<u64, String> {
    let run = RunRef {
        workflow_id: query.workflow_id.clone(),
        run_id: Some(query.run_id.clone()),
    };
    let request = Request::DescribeWorkflow(run);
    match shared
        .call_once(request, shared.options.rpc_timeout_ms)
        .await
    {
        Ok(Response::DescribeWorkflow(description)) => Ok(description.history_length),
        Ok(other) => Err(format!("unexpected response {other:?}")),
        Err(error) => Err(error.to_string()),
    }
}

/// True if `command` schedules an activity on `task_queue` (the default queue
/// of an activity is its workflow's, which this worker polls).
fn schedules_on(command: &crate::workflow::Command, task_queue: &str) -> bool {
    match command {
        crate::workflow::Command::ScheduleActivityTask(a) => {
            a.task_queue.as_deref().is_none_or(|q| q == task_queue)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The history of seed 1260 of the `generated` workload when its first
    /// task's completion had not been written yet: a signal arrived while
    /// that task ran, and a second task started.
    fn history_with_signals_after_the_first_task() -> Vec<Event> {
        let kinds = [
            r#"{"event_type":"WorkflowExecutionStarted","attributes":{"workflow_type":"w","workflow_id":"w1","task_queue":"q","input":null,"execution_timeout_ms":null,"workflow_task_timeout_ms":10000,"attempt":1,"identity":"client","request_id":"r"}}"#,
            r#"{"event_type":"WorkflowTaskScheduled","attributes":{"task_queue":"q","start_to_close_timeout_ms":10000,"attempt":1}}"#,
            r#"{"event_type":"WorkflowTaskStarted","attributes":{"scheduled_event_id":2,"identity":"worker-0","request_id":"a"}}"#,
            r#"{"event_type":"WorkflowTaskCompleted","attributes":{"scheduled_event_id":2,"started_event_id":3,"identity":"worker-0"}}"#,
            r#"{"event_type":"WorkflowExecutionSignaled","attributes":{"signal_name":"s","input":1,"identity":"client"}}"#,
            r#"{"event_type":"WorkflowTaskScheduled","attributes":{"task_queue":"q","start_to_close_timeout_ms":10000,"attempt":1}}"#,
            r#"{"event_type":"WorkflowTaskStarted","attributes":{"scheduled_event_id":6,"identity":"worker-1","request_id":"b"}}"#,
        ];
        kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                let kind = serde_json::from_str(kind).expect("a valid event");
                Event::new(i as u64 + 1, crate::types::Timestamp(0), kind)
            })
            .collect()
    }

    #[test]
    fn a_query_asked_before_any_task_completed_replays_only_what_the_first_task_saw() {
        let events = through_workflow_task(history_with_signals_after_the_first_task(), 0);
        let ids: Vec<u64> = events.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, [1, 2, 3], "not the signal, nor the second task");
    }

    #[test]
    fn a_query_replays_through_the_task_it_was_asked_after() {
        let events = through_workflow_task(history_with_signals_after_the_first_task(), 3);
        let ids: Vec<u64> = events.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
    }

    #[test]
    fn a_query_before_the_first_task_started_replays_everything() {
        let mut events = history_with_signals_after_the_first_task();
        events.truncate(2);
        assert_eq!(through_workflow_task(events, 0).len(), 2);
    }
}
