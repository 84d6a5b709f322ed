//! The rogue worker: a raw client of the wire protocol that runs one workflow
//! by hand and sends, between valid completions, what the SDK never sends.
//! The service must refuse each bad completion (`BadCommand`, the worker told
//! why, nothing recorded but the failed task) and go on as if it had not
//! been sent. It plays in calm seeds only: there every call is answered once,
//! so each answer can be held to exactly what it must be.
//!
//! | step | the rogue sends                                              | the service must               |
//! |-----:|--------------------------------------------------------------|--------------------------------|
//! | 1    | `ScheduleActivityTask` with an empty activity type            | refuse: "must not be empty"    |
//! | 2    | one with start-to-close 0 and no schedule-to-close            | refuse: "timeout is set"       |
//! | 3    | two with the same activity id in one completion               | refuse: "already has this id"  |
//! | 4    | a valid `ScheduleActivityTask`                                | accept                         |
//! | 5    | its attempt 1 reports `Canceled`, never asked to              | record a failure and retry     |
//! | 6    | (after a signal) `RequestCancelActivityTask` twice            | refuse: "already asked"        |
//! | 7    | one `RequestCancelActivityTask`                               | accept                         |
//! | 8    | attempt 2 reports `Canceled`, as asked                        | close the activity as canceled |
//! | 9    | `CompleteWorkflowExecution`                                   | accept: the run completes      |
//!
//! The run has no workflow code (its type is raw: it is not replayed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use retrace::activity::RetryPolicy;
use retrace::api::{
    ActivityTask, ActivityTaskResult, CompleteWorkflowTaskRequest, PollTaskRequest, Request,
    RespondActivityTaskRequest, Response, TaskToken, WorkflowTask,
};
use retrace::client::StartOptions;
use retrace::history::{EventKind, History};
use retrace::workflow::{Command, ScheduleActivityTask};
use serde_json::json;

use crate::SimClient;

/// The rogue run's workflow type (no code runs it).
pub const ROGUE_TYPE: &str = "rogue";
/// Its workflow id.
pub const ROGUE_WORKFLOW_ID: &str = "rogue";
/// What the run returns.
pub const ROGUE_RESULT: &str = "rogue done";
/// How long the rogue waits for its run's next task before it gives up
/// (several long polls of each server).
const TASK_WAIT_MS_MAX: u64 = 300_000;
/// How long a poller waits after a poll that failed before the next.
const POLL_RETRY_MS: u64 = 1_000;
const WORKFLOW_QUEUE: &str = "rogue";
/// Longer than `TASK_WAIT_MS_MAX` for each of the protocol's steps.
const START_TO_CLOSE_MS: u64 = 3_600_000;
const ACTIVITY_QUEUE: &str = "rogue-activities";
pub const IDENTITY: &str = "rogue-worker";

/// One step of the protocol and what the service answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Played {
    pub step: &'static str,
    /// What a refusal must say (`None`: the step must be accepted).
    pub refusal: Option<&'static str>,
    pub answer: Result<(), String>,
}

/// What the rogue did: every step, and whether it reached the end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RogueLog {
    pub played: Vec<Played>,
    pub finished: bool,
}

/// Runs the protocol of the table above; a step the service does not answer
/// as it must ends it (the log says where).
pub async fn play(client: &SimClient) -> RogueLog {
    let mut log = RogueLog::default();
    let mut pollers = Pollers::start(client);
    let ended = protocol(client, &mut pollers, &mut log).await;
    pollers.stop();
    log.finished = ended.is_ok();
    log
}

async fn protocol(
    client: &SimClient,
    pollers: &mut Pollers,
    log: &mut RogueLog,
) -> Result<(), String> {
    let options = StartOptions::new(ROGUE_WORKFLOW_ID, WORKFLOW_QUEUE);
    client
        .start_by_name(options, ROGUE_TYPE, json!(null))
        .await
        .map_err(|e| e.to_string())?;
    let refusals: [(&'static str, &'static str, Vec<Command>); 3] = [
        (
            "empty activity type",
            "must not be empty",
            vec![schedule("")],
        ),
        (
            "no close timeout",
            "timeout is set",
            vec![no_close_timeout()],
        ),
        (
            "one activity id twice",
            "already has this id",
            vec![schedule("work"), schedule("work")],
        ),
    ];
    for (step, marker, commands) in refusals {
        complete(client, pollers, log, step, Some(marker), commands).await?;
    }
    complete(
        client,
        pollers,
        log,
        "schedule",
        None,
        vec![schedule("work")],
    )
    .await?;
    let first = pollers.activity_task(client).await?;
    let unasked = ActivityTaskResult::Canceled(None);
    respond(client, log, "canceled unasked", &first.task_token, unasked).await?;
    let second = pollers.activity_task(client).await?;
    client
        .signal(ROGUE_WORKFLOW_ID, None, "go", json!(null))
        .await
        .map_err(|e| e.to_string())?;
    let cancel = || Command::RequestCancelActivityTask {
        activity_id: "a".to_string(),
    };
    let twice = vec![cancel(), cancel()];
    complete(
        client,
        pollers,
        log,
        "cancel twice",
        Some("already asked"),
        twice,
    )
    .await?;
    complete(client, pollers, log, "cancel", None, vec![cancel()]).await?;
    let asked = ActivityTaskResult::Canceled(None);
    respond(client, log, "canceled as asked", &second.task_token, asked).await?;
    let result = json!(ROGUE_RESULT);
    let close = vec![Command::CompleteWorkflowExecution { result }];
    complete(client, pollers, log, "complete", None, close).await
}

/// A valid schedule of activity "a" of type `activity_type`, retried soon.
/// Its start-to-close outlasts the whole protocol even if every step waits
/// its longest for a task: an attempt that timed out meanwhile would change
/// what the next steps must be answered (a cancel of an attempt waiting to
/// retry closes it at once; the simulator found this when the rogue polled
/// one server of a cluster at a time).
fn schedule(activity_type: &str) -> Command {
    Command::ScheduleActivityTask(ScheduleActivityTask {
        activity_id: "a".to_string(),
        activity_type: activity_type.to_string(),
        task_queue: Some(ACTIVITY_QUEUE.to_string()),
        input: json!(null),
        schedule_to_close_timeout_ms: None,
        schedule_to_start_timeout_ms: None,
        start_to_close_timeout_ms: Some(START_TO_CLOSE_MS),
        heartbeat_timeout_ms: None,
        retry_policy: Some(RetryPolicy::default().initial_interval_ms(100)),
    })
}

fn no_close_timeout() -> Command {
    let Command::ScheduleActivityTask(mut attributes) = schedule("work") else {
        unreachable!("schedule builds a ScheduleActivityTask")
    };
    attributes.start_to_close_timeout_ms = Some(0);
    Command::ScheduleActivityTask(attributes)
}

/// Polls the run's next workflow task and completes it with `commands`;
/// logs the answer, and fails if it is not the one the step must get.
async fn complete(
    client: &SimClient,
    pollers: &mut Pollers,
    log: &mut RogueLog,
    step: &'static str,
    refusal: Option<&'static str>,
    commands: Vec<Command>,
) -> Result<(), String> {
    let task = pollers.workflow_task(client).await?;
    let request = Request::CompleteWorkflowTask(CompleteWorkflowTaskRequest {
        task_token: task.task_token,
        commands,
        identity: IDENTITY.to_string(),
        eager_activities_max: 0,
        update_rejections: Vec::new(),
    });
    let answer = client
        .call(request)
        .await
        .map(drop)
        .map_err(|e| e.to_string());
    record(log, step, refusal, answer)
}

async fn respond(
    client: &SimClient,
    log: &mut RogueLog,
    step: &'static str,
    token: &TaskToken,
    result: ActivityTaskResult,
) -> Result<(), String> {
    let request = Request::RespondActivityTask(RespondActivityTaskRequest {
        task_token: token.clone(),
        result,
        identity: IDENTITY.to_string(),
        eager_workflow_task_queue: None,
        speculative_workflow_task: None,
    });
    let answer = client
        .call(request)
        .await
        .map(drop)
        .map_err(|e| e.to_string());
    record(log, step, None, answer)
}

fn record(
    log: &mut RogueLog,
    step: &'static str,
    refusal: Option<&'static str>,
    answer: Result<(), String>,
) -> Result<(), String> {
    let as_it_must = match (&answer, refusal) {
        (Ok(()), None) => true,
        (Err(error), Some(marker)) => error.contains(marker),
        _ => false,
    };
    log.played.push(Played {
        step,
        refusal,
        answer,
    });
    as_it_must
        .then_some(())
        .ok_or_else(|| format!("step {step:?} was not answered as it must be"))
}

/// The rogue's pollers: one for each server and queue, as a worker runs
/// them (in a cluster a poll reaches one server, which hands out only its
/// own shards' tasks, so polling one server after another would wait out a
/// long poll at each). Tasks wait in channels until the protocol takes them.
struct Pollers {
    workflow_tasks: UnboundedReceiver<WorkflowTask>,
    activity_tasks: UnboundedReceiver<ActivityTask>,
    stopped: Arc<AtomicBool>,
}

impl Pollers {
    fn start(client: &SimClient) -> Pollers {
        let stopped = Arc::new(AtomicBool::new(false));
        let (workflow_sender, workflow_tasks) = unbounded();
        let (activity_sender, activity_tasks) = unbounded();
        for _ in 0..client.env().network.servers() {
            let workflow = poller(
                client.clone(),
                stopped.clone(),
                Request::PollWorkflowTask,
                WORKFLOW_QUEUE,
                |answer| match answer {
                    Response::PollWorkflowTask(answer) => answer.task,
                    _ => None,
                },
                workflow_sender.clone(),
            );
            client.env().spawn("rogue workflow poller", workflow);
            let activity = poller(
                client.clone(),
                stopped.clone(),
                Request::PollActivityTask,
                ACTIVITY_QUEUE,
                |answer| match answer {
                    Response::PollActivityTask(answer) => answer.task,
                    _ => None,
                },
                activity_sender.clone(),
            );
            client.env().spawn("rogue activity poller", activity);
        }
        Pollers {
            workflow_tasks,
            activity_tasks,
            stopped,
        }
    }

    async fn workflow_task(&mut self, client: &SimClient) -> Result<WorkflowTask, String> {
        next_task(client, &mut self.workflow_tasks, WORKFLOW_QUEUE).await
    }

    async fn activity_task(&mut self, client: &SimClient) -> Result<ActivityTask, String> {
        next_task(client, &mut self.activity_tasks, ACTIVITY_QUEUE).await
    }

    /// The pollers poll no more (each ends when its poll in flight returns).
    fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }
}

/// Polls `task_queue` until stopped, sending each task polled;
/// `task_of` takes it out of an answer.
async fn poller<T>(
    client: SimClient,
    stopped: Arc<AtomicBool>,
    request: fn(PollTaskRequest) -> Request,
    task_queue: &'static str,
    task_of: fn(Response) -> Option<T>,
    tasks: UnboundedSender<T>,
) {
    while !stopped.load(Ordering::Relaxed) {
        let asked = request(PollTaskRequest {
            task_queue: task_queue.to_string(),
            identity: IDENTITY.to_string(),
            workflow_types: Vec::new(),
        });
        match client.call(asked).await {
            Ok(answer) => {
                if let Some(task) = task_of(answer) {
                    // The protocol gone (it gave up): nobody takes the task.
                    let _ = tasks.unbounded_send(task);
                }
            }
            Err(error) => {
                tracing::debug!(%error, task_queue, "rogue: a poll failed");
                client.sleep_ms(POLL_RETRY_MS).await;
            }
        }
    }
}

/// The next task of `task_queue`, waited for at most `TASK_WAIT_MS_MAX`.
async fn next_task<T>(
    client: &SimClient,
    tasks: &mut UnboundedReceiver<T>,
    task_queue: &str,
) -> Result<T, String> {
    match client.env().timeout(TASK_WAIT_MS_MAX, tasks.next()).await {
        Ok(Some(task)) => Ok(task),
        Ok(None) => Err(format!("the pollers of {task_queue} ended")),
        Err(_) => Err(format!(
            "no task on {task_queue} within {TASK_WAIT_MS_MAX} ms"
        )),
    }
}

/// The rogue's log and its run's history say the service kept the protocol.
pub fn check(log: &RogueLog, history: Option<&History>) -> Result<(), String> {
    if !log.finished {
        return Err(format!("the rogue worker stopped: {:?}", log.played));
    }
    let history = history.ok_or("the rogue run was not stored")?;
    let events = history.events();
    let bad_commands = events
        .iter()
        .filter(|e| {
            matches!(&e.kind, EventKind::WorkflowTaskFailed(f)
            if f.cause == retrace::history::WorkflowTaskFailedCause::BadCommand)
        })
        .count();
    if bad_commands != 4 {
        return Err(format!(
            "the rogue sent 4 bad completions; the history records {bad_commands}"
        ));
    }
    let started = events.iter().rev().find_map(|e| match &e.kind {
        EventKind::ActivityTaskStarted(s) => Some(s),
        _ => None,
    });
    let unasked_failed = started.is_some_and(|s| {
        s.attempt == 2
            && s.last_failure
                .as_ref()
                .is_some_and(|f| f.failure_type == "Canceled")
    });
    if !unasked_failed {
        return Err(format!(
            "an attempt that reported Canceled unasked must fail and be retried; the last attempt started is {started:?}"
        ));
    }
    let asked = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::ActivityTaskCancelRequested(_)))
        .count();
    let canceled = events
        .iter()
        .any(|e| matches!(e.kind, EventKind::ActivityTaskCanceled(_)));
    let completed = matches!(history.close_event().map(|e| &e.kind),
        Some(EventKind::WorkflowExecutionCompleted(c)) if c.result == json!(ROGUE_RESULT));
    if asked != 1 || !canceled || !completed {
        return Err(format!(
            "expected one cancel request, the activity canceled and the run completed; got {asked} request(s), canceled: {canceled}, completed: {completed}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_completion_the_service_accepted_stops_the_rogue_and_fails_the_check() {
        let mut log = RogueLog::default();
        let stopped = record(
            &mut log,
            "empty activity type",
            Some("must not be empty"),
            Ok(()),
        );
        assert!(
            stopped.is_err(),
            "an accepted bad completion is not as it must be"
        );
        let error = check(&log, None).expect_err("the rogue stopped");
        assert!(error.contains("empty activity type"), "{error}");
    }

    #[test]
    fn a_refusal_that_does_not_say_why_is_not_as_it_must_be() {
        let mut log = RogueLog::default();
        let vague = Err("service error: InvalidArgument: no".to_string());
        assert!(record(&mut log, "no close timeout", Some("timeout is set"), vague).is_err());
        let named = Err("... neither start_to_close nor schedule_to_close timeout is set".into());
        assert!(record(&mut log, "no close timeout", Some("timeout is set"), named).is_ok());
        assert!(record(&mut log, "schedule", None, Err("refused".into())).is_err());
    }
}
