//! Continue-as-new end to end (client, service, two workers, tokio's paused
//! clock): a run closes with `WorkflowExecutionContinuedAsNew` and a new run of
//! the same workflow id starts in the same write; the client follows the
//! chain to its last run; each history stays as long as one run's work; the
//! chain shares one execution deadline; a signal that arrives while the
//! continuing task runs is not lost; a bad input changes nothing. Every test
//! that runs workers ends by replaying every history three ways.

mod common;

use std::time::Duration;

use common::engine::{StartTwo, TestEngine};
use retrace::api::{
    CompleteWorkflowTaskRequest, ErrorCode, PollTaskRequest, Request, Response, RunOutcome,
    TaskToken,
};
use retrace::client::StartOptions;
use retrace::env::RunStatus;
use retrace::history::{EventKind, History};
use retrace::workflow::{
    Command, ContinueAsNewWorkflowExecution, Workflow, WorkflowContext, WorkflowRegistry,
    WorkflowResult,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Counts to `until`, one run per count: each run sleeps a second, then
/// continues as new with the next count, carrying the signals it took.
struct Counter;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Count {
    n: u32,
    until: u32,
    heard: Vec<String>,
}

impl Workflow for Counter {
    const NAME: &'static str = "counter";
    type Input = Count;
    type Output = Count;
    async fn run(ctx: WorkflowContext, mut count: Count) -> WorkflowResult<Count> {
        ctx.sleep(Duration::from_secs(1)).await?;
        // Signals this run received go with it into the next.
        while let Some(heard) = ctx.signal::<String>("note").try_recv() {
            count.heard.push(heard?);
        }
        if count.n >= count.until {
            return Ok(count);
        }
        count.n += 1;
        Err(ctx.continue_as_new(&count))
    }
}

fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register::<Counter>();
    registry
}

fn count(until: u32) -> Count {
    Count {
        n: 0,
        until,
        heard: Vec::new(),
    }
}

/// The chain of runs of `workflow_id`, first to last, read by following each
/// `WorkflowExecutionContinuedAsNew` to the run it names.
async fn chain(engine: &TestEngine, workflow_id: &str, first_run_id: &str) -> Vec<History> {
    let client = engine.client();
    let mut histories = Vec::new();
    let mut run_id = first_run_id.to_string();
    loop {
        let history = client.history(workflow_id, Some(&run_id)).await.unwrap();
        let next = match history.events().last().map(|e| &e.kind) {
            Some(EventKind::WorkflowExecutionContinuedAsNew(a)) => {
                Some(a.new_execution_run_id.clone())
            }
            _ => None,
        };
        histories.push(history);
        match next {
            Some(next) => run_id = next,
            None => return histories,
        }
    }
}

fn started_of(history: &History) -> &retrace::history::WorkflowExecutionStarted {
    match &history.events()[0].kind {
        EventKind::WorkflowExecutionStarted(started) => started,
        other => panic!("a history starts with WorkflowExecutionStarted, not {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_that_continues_as_new_is_followed_by_one_linked_run_under_the_same_workflow_id() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let handle = engine
        .client()
        .start::<Counter>(StartOptions::new("counter", "q"), count(3))
        .await
        .unwrap();
    let first_run_id = handle.run_id.clone();
    let result = handle.result().await.unwrap();
    assert_eq!(result.n, 3, "the client followed the chain to its last run");

    let histories = chain(&engine, "counter", &first_run_id).await;
    assert_eq!(histories.len(), 4, "counts 0, 1, 2 continue; 3 completes");
    for (earlier, later) in histories.iter().zip(&histories[1..]) {
        let started = started_of(later);
        assert_eq!(
            started.continued_execution_run_id.as_deref(),
            Some(earlier.run_id())
        );
        let EventKind::WorkflowExecutionContinuedAsNew(continued) =
            &earlier.events().last().unwrap().kind
        else {
            panic!("every run but the last continues as new");
        };
        assert_eq!(continued.input, started.input, "the new run got the input");
        assert_eq!(continued.workflow_type, "counter");
        assert_eq!(continued.task_queue, "q");
        assert_eq!(
            earlier.events().last().unwrap().event_time,
            later.events()[0].event_time,
            "closed and started in the same write"
        );
    }
    let runs = engine.client().list_all(None).await.unwrap();
    let statuses: Vec<RunStatus> = histories
        .iter()
        .map(|h| runs.iter().find(|r| r.run_id == h.run_id()).unwrap().status)
        .collect();
    assert_eq!(
        statuses,
        [
            RunStatus::ContinuedAsNew,
            RunStatus::ContinuedAsNew,
            RunStatus::ContinuedAsNew,
            RunStatus::Completed
        ]
    );
    let current = engine.client().describe("counter", None).await.unwrap();
    assert_eq!(
        current.run_id,
        histories[3].run_id(),
        "the id names the last run"
    );
    let first = engine
        .client()
        .run_outcome("counter", Some(&first_run_id))
        .await
        .unwrap();
    assert_eq!(
        first,
        RunOutcome::ContinuedAsNew {
            new_run_id: histories[1].run_id().to_string()
        },
        "one run's own outcome names its successor"
    );
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 4);
}

#[tokio::test(start_paused = true)]
async fn a_workflow_that_continues_as_new_a_hundred_times_keeps_every_history_short() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let handle = engine
        .client()
        .start::<Counter>(StartOptions::new("long", "q"), count(100))
        .await
        .unwrap();
    assert_eq!(handle.result().await.unwrap().n, 100);
    let runs = engine.client().list_all(None).await.unwrap();
    assert_eq!(runs.len(), 101);
    let longest = {
        let mut longest = 0;
        for run in &runs {
            let history = engine
                .client()
                .history("long", Some(&run.run_id))
                .await
                .unwrap();
            longest = longest.max(history.events().len());
        }
        longest
    };
    // Started, a task, the timer, a task, the close: whatever the count.
    assert!(longest <= 10, "a run's history grew to {longest} events");
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn the_runs_of_a_chain_share_one_execution_deadline() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let mut options = StartOptions::new("deadline", "q");
    options.execution_timeout_ms = Some(3_500);
    let handle = engine
        .client()
        .start::<Counter>(options, count(10))
        .await
        .unwrap();
    let outcome = handle.outcome().await.unwrap();
    assert_eq!(outcome, RunOutcome::TimedOut);
    let histories = chain(&engine, "deadline", &handle.run_id).await;
    assert_eq!(
        histories.len(),
        4,
        "three one-second runs fit in 3.5 s; the fourth times out"
    );
    let first_start = histories[0].events()[0].event_time;
    let close = histories[3].events().last().unwrap().event_time;
    assert_eq!(close.millis_since(first_start), 3_500);
    let left = started_of(&histories[3]).execution_timeout_ms.unwrap();
    assert!(left < 1_000, "the last run got what was left: {left} ms");
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn signals_are_carried_into_the_next_run_by_the_code_that_drains_them() {
    let engine = TestEngine::new(registry()).await;
    let client = engine.client();
    let handle = client
        .start::<Counter>(StartOptions::new("notes", "q"), count(1))
        .await
        .unwrap();
    client.signal("notes", None, "note", "first").await.unwrap();
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    engine.engine.env().sleep_ms(1_500).await;
    // Sent to the workflow id: lands in whichever run is current.
    client
        .signal("notes", None, "note", "second")
        .await
        .unwrap();
    let result = handle.result().await.unwrap();
    assert_eq!(result.heard, ["first", "second"]);
    worker.shutdown().await;
    engine.check_histories().await;
}

async fn poll_by_hand(engine: &TestEngine) -> TaskToken {
    let poll = Request::PollWorkflowTask(PollTaskRequest {
        task_queue: "q".into(),
        identity: "by-hand".into(),
        workflow_types: vec!["counter".into()],
    });
    match engine.engine.service().handle(poll).await.unwrap() {
        Response::PollWorkflowTask(response) => response.task.expect("a task").task_token,
        other => panic!("{other:?}"),
    }
}

async fn complete_by_hand(
    engine: &TestEngine,
    token: TaskToken,
    commands: Vec<Command>,
) -> Result<Response, retrace::api::ServiceError> {
    let complete = Request::CompleteWorkflowTask(CompleteWorkflowTaskRequest {
        task_token: token,
        commands,
        identity: "by-hand".into(),
        eager_activities_max: 0,
        update_rejections: Vec::new(),
    });
    engine.engine.service().handle(complete).await
}

fn continue_with(input: serde_json::Value) -> Command {
    Command::ContinueAsNewWorkflowExecution(ContinueAsNewWorkflowExecution {
        input,
        workflow_type: None,
        task_queue: None,
    })
}

#[tokio::test(start_paused = true)]
async fn a_signal_that_arrives_while_the_continuing_task_runs_refuses_the_continue_and_is_seen_next()
 {
    let engine = TestEngine::new(registry()).await;
    let client = engine.client();
    client
        .start_by_name(StartOptions::new("w", "q"), "counter", json!(count(0)))
        .await
        .unwrap();
    let token = poll_by_hand(&engine).await;
    client.signal("w", None, "note", "late").await.unwrap();
    let refused = complete_by_hand(&engine, token, vec![continue_with(json!(count(0)))])
        .await
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::TaskNotFound, "{refused}");
    assert!(refused.message.contains("UnhandledCommand"), "{refused}");
    let description = client.describe("w", None).await.unwrap();
    assert_eq!(description.status, RunStatus::Running, "nothing continued");

    let token = poll_by_hand(&engine).await;
    complete_by_hand(&engine, token, vec![continue_with(json!(count(0)))])
        .await
        .unwrap();
    let runs = client.list_all(None).await.unwrap();
    assert_eq!(runs.len(), 2);
    let first = runs
        .iter()
        .find(|r| r.run_id == description.run_id)
        .unwrap();
    assert_eq!(first.status, RunStatus::ContinuedAsNew);
    let history = client
        .history("w", Some(&description.run_id))
        .await
        .unwrap();
    let names: Vec<&str> = history.events().iter().map(|e| e.kind.name()).collect();
    let signaled = names.iter().position(|n| *n == "WorkflowExecutionSignaled");
    let continued = names
        .iter()
        .position(|n| *n == "WorkflowExecutionContinuedAsNew");
    assert!(signaled.is_some() && signaled < continued, "{names:?}");
}

#[tokio::test(start_paused = true)]
async fn a_continue_as_new_whose_input_is_over_the_limit_fails_the_task_and_starts_nothing() {
    let engine = TestEngine::new(registry()).await;
    let client = engine.client();
    client
        .start_by_name(StartOptions::new("big", "q"), "counter", json!(count(0)))
        .await
        .unwrap();
    let token = poll_by_hand(&engine).await;
    let limit = retrace::engine::ServiceConfig::default()
        .limits
        .payload_bytes_max as usize;
    let huge = json!("x".repeat(limit + 1));
    let refused = complete_by_hand(&engine, token, vec![continue_with(huge)])
        .await
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::InvalidArgument, "{refused}");
    assert!(
        refused.message.contains("continue-as-new input"),
        "{refused}"
    );
    let runs = client.list_all(None).await.unwrap();
    assert_eq!(runs.len(), 1, "no run was started");
    assert_eq!(runs[0].status, RunStatus::Running);
    let history = client.history("big", None).await.unwrap();
    let last = history.events().last().unwrap().kind.name();
    assert!(
        ["WorkflowTaskFailed", "WorkflowTaskScheduled"].contains(&last),
        "the task failed and is tried again: {last}"
    );
}

/// A start with a fixed request id, as a client's retry would send it again.
async fn start_once(engine: &TestEngine) -> String {
    let start = Request::StartWorkflow(retrace::api::StartWorkflowRequest {
        workflow_id: "retried".into(),
        workflow_type: "counter".into(),
        task_queue: "q".into(),
        input: json!(count(2)),
        execution_timeout_ms: None,
        workflow_task_timeout_ms: None,
        id_reuse_policy: retrace::api::IdReusePolicy::AllowDuplicate,
        request_id: "the-one-start".into(),
        identity: "client".into(),
        start_delay_ms: None,
        retry_policy: None,
        cron_schedule: None,
        search_attributes: Default::default(),
        memo: Default::default(),
    });
    match engine.engine.service().handle(start).await.unwrap() {
        Response::StartWorkflow(started) => started.run_id,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_of_the_start_that_began_a_chain_finds_the_chain_and_starts_nothing() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let client = engine.client();
    start_once(&engine).await;
    let ended: Count = client.handle("retried", None).result().await.unwrap();
    assert_eq!(ended.n, 2);
    // The chain is closed now, and its id may be reused: still, a retry of
    // the start that began it is not a new start.
    let retried = start_once(&engine).await;
    let runs = client.list_all(None).await.unwrap();
    assert_eq!(runs.len(), 3, "no run was started by the retry");
    let last = client.describe("retried", None).await.unwrap();
    assert_eq!(
        retried, last.run_id,
        "answered with the chain's current run"
    );
    worker.shutdown().await;
    engine.check_histories().await;
}
