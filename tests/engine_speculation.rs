//! Speculative workflow tasks: a worker that holds a run sends an activity's
//! result with the workflow task it schedules, already run, in one request.
//! The history must be the one the two plain requests write, and the service
//! must refuse the speculation whenever the worker's view is out of date.

mod common;

use std::time::Duration;

use common::engine::TestEngine;
use retrace::activity::{Activity, ActivityContext, ActivityOptions, ActivityResult};
use retrace::api::*;
use retrace::client::StartOptions;
use retrace::history::{EventKind, History};
use retrace::types::Timestamp;
use retrace::worker::WorkerStats;
use retrace::workflow::{
    Command, ScheduleActivityTask, Workflow, WorkflowContext, WorkflowRegistry, WorkflowResult,
};
use serde_json::json;

/// Appends its second input to its first, after 250 ms.
struct Append {
    env: retrace::env::Env,
}
impl Activity for Append {
    const NAME: &'static str = "append";
    type Input = (String, String);
    type Output = String;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, _ctx: ActivityContext, (a, b): (String, String)) -> ActivityResult<String> {
        self.env.sleep_ms(250).await;
        Ok(format!("{a}{b}"))
    }
}

/// Three activities one after another, each stamped with the time the code
/// saw (in ms since its first workflow task).
struct ThreeSteps;
impl Workflow for ThreeSteps {
    const NAME: &'static str = "three_steps";
    type Input = String;
    type Output = String;
    async fn run(ctx: WorkflowContext, text: String) -> WorkflowResult<String> {
        let mut text = text;
        let first = ctx.now();
        for step in 1..=3 {
            let suffix = format!(".{step}@{}", ctx.now().millis_since(first));
            text = ctx.activity::<Append>((text, suffix)).await?;
        }
        Ok(text)
    }
}

fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register::<ThreeSteps>();
    registry
}

/// Runs `ThreeSteps` on one worker; returns the result, history and stats.
async fn three_steps(speculative: bool) -> (String, History, WorkerStats) {
    let engine = TestEngine::new(registry()).await;
    let worker = engine
        .engine
        .worker("q")
        .workflows(engine.registry.clone())
        .activity(Append {
            env: engine.engine.env().clone(),
        })
        .options(|o| o.speculative_workflow_tasks = speculative)
        .start();
    let handle = engine
        .client()
        .start::<ThreeSteps>(StartOptions::new("three", "q"), "go".to_string())
        .await
        .unwrap();
    let result = handle.result().await.unwrap();
    let history = handle.history().await.unwrap();
    let stats = worker.stats();
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 1);
    (result, history, stats)
}

#[tokio::test(start_paused = true)]
async fn a_worker_holding_the_run_sends_each_result_with_the_workflow_task_it_schedules() {
    let (result, history, stats) = three_steps(true).await;
    assert_eq!(stats.speculations_taken, 3, "{stats:?}");
    assert_eq!(stats.speculations_refused, 0, "{stats:?}");
    assert_eq!(
        stats.workflow_tasks, 4,
        "the first task, then three speculative ones"
    );
    assert_eq!(
        stats.cache_misses, 1,
        "only the first task, with nothing to reuse"
    );

    let (plain_result, plain_history, plain_stats) = three_steps(false).await;
    assert_eq!(plain_stats.speculations_taken, 0);
    assert_eq!(result, plain_result);
    assert_eq!(
        history.normalized(),
        plain_history.normalized(),
        "the same history as a result and a completion sent apart"
    );
    // What the code saw as now is the WorkflowTaskStarted time it replays with.
    let started: Vec<u64> = history
        .events()
        .iter()
        .filter(|e| matches!(e.kind, EventKind::WorkflowTaskStarted(_)))
        .map(|e| e.event_time.0)
        .collect();
    let expected: String = started[..3]
        .iter()
        .enumerate()
        .map(|(i, t)| format!(".{}@{}", i + 1, t - started[0]))
        .collect();
    assert_eq!(result, format!("go{expected}"));
    assert_eq!(
        result, "go.1@0.2@250.3@500",
        "each task started as the activity before it ended"
    );
}

// ---------------------------------------------------------------------------
// The protocol, with the test as the worker
// ---------------------------------------------------------------------------

async fn call(engine: &TestEngine, request: Request) -> Response {
    let reply = engine.engine.env().network.call(request).await;
    reply.expect("in-process calls arrive").expect("accepted")
}

/// A run whose first workflow task scheduled activity "1", started for us.
/// Returns the activity task and the id the next event gets.
async fn run_with_started_activity(engine: &TestEngine, workflow_id: &str) -> (ActivityTask, u64) {
    let options = StartOptions::new(workflow_id, "raw");
    engine
        .client()
        .start_by_name(options, "any", json!(null))
        .await
        .unwrap();
    let poll = Request::PollWorkflowTask(PollTaskRequest {
        task_queue: "raw".into(),
        identity: "raw".into(),
        workflow_types: Vec::new(),
    });
    let Response::PollWorkflowTask(PollWorkflowTaskResponse {
        task: Some(task), ..
    }) = call(engine, poll).await
    else {
        panic!("a workflow task waits");
    };
    let schedule = Command::ScheduleActivityTask(ScheduleActivityTask {
        activity_id: "1".into(),
        activity_type: "append".into(),
        task_queue: None,
        input: json!(["a", "b"]),
        schedule_to_close_timeout_ms: None,
        schedule_to_start_timeout_ms: None,
        start_to_close_timeout_ms: Some(10_000),
        heartbeat_timeout_ms: None,
        retry_policy: None,
    });
    let complete = Request::CompleteWorkflowTask(CompleteWorkflowTaskRequest {
        task_token: task.task_token,
        commands: vec![schedule],
        identity: "raw".into(),
        eager_activities_max: 1,
        update_rejections: Vec::new(),
    });
    let Response::CompleteWorkflowTask(answer) = call(engine, complete).await else {
        panic!("a completion answers as one");
    };
    let names: Vec<&str> = answer.events.iter().map(|e| e.kind.name()).collect();
    assert_eq!(names, ["WorkflowTaskCompleted", "ActivityTaskScheduled"]);
    let next_event_id = answer.events.last().expect("two events").event_id + 1;
    let activity = answer.activity_tasks.into_iter().next().expect("eager");
    (activity, next_event_id)
}

async fn respond_speculatively(
    engine: &TestEngine,
    activity: &ActivityTask,
    next_event_id: u64,
    started_time: Timestamp,
) -> RespondActivityTaskResponse {
    let request = Request::RespondActivityTask(RespondActivityTaskRequest {
        task_token: activity.task_token.clone(),
        result: ActivityTaskResult::Completed(json!("ab")),
        identity: "raw".into(),
        eager_workflow_task_queue: Some("raw".into()),
        speculative_workflow_task: Some(SpeculativeWorkflowTask {
            next_event_id,
            started_time,
            commands: vec![Command::CompleteWorkflowExecution {
                result: json!("done"),
            }],
            eager_activities_max: 0,
        }),
    });
    let Response::RespondActivityTask(answer) = call(engine, request).await else {
        panic!("a result answers as one");
    };
    answer
}

async fn names(engine: &TestEngine, workflow_id: &str) -> Vec<&'static str> {
    let history = engine.client().history(workflow_id, None).await.unwrap();
    history.events().iter().map(|e| e.kind.name()).collect()
}

/// What a completed result writes on an idle run, with the task it starts.
const RESULT_AND_TASK: [&str; 4] = [
    "ActivityTaskStarted",
    "ActivityTaskCompleted",
    "WorkflowTaskScheduled",
    "WorkflowTaskStarted",
];

const SCHEDULED: [&str; 5] = [
    "WorkflowExecutionStarted",
    "WorkflowTaskScheduled",
    "WorkflowTaskStarted",
    "WorkflowTaskCompleted",
    "ActivityTaskScheduled",
];

#[tokio::test(start_paused = true)]
async fn a_speculative_task_is_taken_when_the_history_is_where_the_worker_saw_it() {
    let engine = TestEngine::new(registry()).await;
    let (activity, next_event_id) = run_with_started_activity(&engine, "taken").await;
    engine.engine.env().sleep_ms(300).await;
    let started_time = engine.engine.env().now();
    engine.engine.env().sleep_ms(200).await;
    let answer = respond_speculatively(&engine, &activity, next_event_id, started_time).await;
    assert!(answer.workflow_task.is_none());
    let completion = answer.speculation.expect("taken");
    let written: Vec<&str> = completion.events.iter().map(|e| e.kind.name()).collect();
    assert_eq!(
        written,
        ["WorkflowTaskCompleted", "WorkflowExecutionCompleted"]
    );
    let mut expected = [&SCHEDULED[..], &RESULT_AND_TASK].concat();
    expected.extend(["WorkflowTaskCompleted", "WorkflowExecutionCompleted"]);
    assert_eq!(names(&engine, "taken").await, expected);
    let history = engine.client().history("taken", None).await.unwrap();
    let task_started = &history.events()[8];
    assert_eq!(
        task_started.event_time, started_time,
        "the time the code saw"
    );
    assert!(
        history.events()[9].event_time > started_time,
        "completed at the service's now"
    );
}

#[tokio::test(start_paused = true)]
async fn a_speculative_task_is_refused_when_a_signal_landed_after_the_workers_view() {
    let engine = TestEngine::new(registry()).await;
    let (activity, next_event_id) = run_with_started_activity(&engine, "moved").await;
    let client = engine.client();
    client.signal("moved", None, "go", "now").await.unwrap();
    let now = engine.engine.env().now();
    let answer = respond_speculatively(&engine, &activity, next_event_id, now).await;
    assert!(
        answer.speculation.is_none(),
        "the worker did not see the signal"
    );
    let task = answer
        .workflow_task
        .expect("the pending task, started for us");
    let carried: Vec<&str> = task.events.iter().map(|e| e.kind.name()).collect();
    assert_eq!(
        carried,
        [
            "WorkflowTaskCompleted",
            "ActivityTaskScheduled",
            "WorkflowExecutionSignaled",
            "WorkflowTaskScheduled",
            "ActivityTaskStarted",
            "ActivityTaskCompleted",
            "WorkflowTaskStarted",
        ],
        "the result joined the signal's task; the speculative commands were dropped"
    );
    let description = client.describe("moved", None).await.unwrap();
    assert_eq!(description.status, retrace::env::RunStatus::Running);
}

#[tokio::test(start_paused = true)]
async fn a_speculative_task_is_refused_when_the_workers_clock_is_ahead() {
    let engine = TestEngine::new(registry()).await;
    let (activity, next_event_id) = run_with_started_activity(&engine, "ahead").await;
    let ahead = engine.engine.env().now().plus_ms(1_000);
    let answer = respond_speculatively(&engine, &activity, next_event_id, ahead).await;
    assert!(answer.speculation.is_none());
    assert!(
        answer.workflow_task.is_some(),
        "the plain eager task instead"
    );
    let expected = [&SCHEDULED[..], &RESULT_AND_TASK].concat();
    assert_eq!(names(&engine, "ahead").await, expected);
}
