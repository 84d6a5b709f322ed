//! End to end through client, service and two workers (in-process, tokio's paused
//! clock): the workflow-level semantics of the engine, each in a test that
//! fails if it breaks, with the shape of the history Temporal users expect.
//! Every test ends by replaying every history to its recorded result.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::engine::{HookedStorage, StartTwo, TestEngine, WriteHook};
use retrace::activity::{
    Activity, ActivityContext, ActivityOptions, ActivityResult, CancelReason, retryable,
};
use retrace::api::{
    CompleteWorkflowTaskRequest, ErrorCode, IdReusePolicy, ListWorkflowsRequest, PollTaskRequest,
    PollWorkflowTaskResponse, Reply, Request, Response, RunDescription, RunOutcome, RunRef,
    SignalWorkflowRequest, StartWorkflowRequest, WorkflowTask,
};
use retrace::client::{ClientError, StartOptions};
use retrace::env::{
    BufferedWrite, Clock, Env, MemoryStorage, RunStatus, Storage, TokioClock, WriteBatch,
};
use retrace::history::{Event, EventKind, History, WorkflowTaskFailedCause};
use retrace::types::Timestamp;
use retrace::worker::{WorkerBuilder, WorkerStats};
use retrace::workflow::{
    Command, PATCH_MARKER_NAME, SIDE_EFFECT_MARKER_NAME, Workflow, WorkflowContext, WorkflowError,
    WorkflowRegistry, WorkflowResult, join,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Activities
// ---------------------------------------------------------------------------

/// Appends its second input to its first: deterministic stand-in work.
struct Append;
impl Activity for Append {
    const NAME: &'static str = "append";
    type Input = (String, String);
    type Output = String;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(
        &self,
        _ctx: ActivityContext,
        (text, suffix): (String, String),
    ) -> ActivityResult<String> {
        Ok(format!("{text}{suffix}"))
    }
}

/// Takes the given number of milliseconds, then returns its text.
struct Timed {
    env: Env,
}
impl Activity for Timed {
    const NAME: &'static str = "timed";
    type Input = (String, u64);
    type Output = String;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(60))
    }
    async fn run(
        &self,
        _ctx: ActivityContext,
        (text, ms): (String, u64),
    ) -> ActivityResult<String> {
        self.env.sleep_ms(ms).await;
        Ok(text)
    }
}

/// Heartbeats until it is told to stop, and records why.
struct Hold {
    env: Env,
    seen: Arc<Mutex<Option<CancelReason>>>,
}
impl Activity for Hold {
    const NAME: &'static str = "hold";
    type Input = String;
    type Output = String;
    fn options() -> ActivityOptions {
        ActivityOptions::default()
            .start_to_close(Duration::from_secs(3_600))
            .heartbeat_timeout(Duration::from_secs(2))
    }
    async fn run(&self, ctx: ActivityContext, _input: String) -> ActivityResult<String> {
        loop {
            ctx.heartbeat(&"holding");
            if let Some(reason) = ctx.cancel_reason() {
                *self.seen.lock().unwrap() = Some(reason);
                return Err(retrace::activity::ActivityRunError::Canceled { details: None });
            }
            self.env.sleep_ms(500).await;
        }
    }
}

/// Fails its first attempt, then takes ten seconds to succeed.
struct FlakyThenSlow {
    env: Env,
}
impl Activity for FlakyThenSlow {
    const NAME: &'static str = "flaky_then_slow";
    type Input = String;
    type Output = String;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(60))
    }
    async fn run(&self, ctx: ActivityContext, input: String) -> ActivityResult<String> {
        if ctx.attempt() == 1 {
            return Err(retryable("attempt 1 failed"));
        }
        self.env.sleep_ms(10_000).await;
        Ok(format!("{input} on attempt {}", ctx.attempt()))
    }
}

/// Values the workflow may only get through its context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Values {
    random: u64,
    uuid: String,
    now: Timestamp,
    side_effect: u64,
}

/// Returns its input; scheduling it writes the input into the history.
struct Record;
impl Activity for Record {
    const NAME: &'static str = "record";
    type Input = Values;
    type Output = Values;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, _ctx: ActivityContext, values: Values) -> ActivityResult<Values> {
        Ok(values)
    }
}

// The order-of-messages app's stand-in activities.

/// A stand-in database fetch: the stored message with the given id.
struct FetchMessage {
    env: Env,
    database: BTreeMap<u32, String>,
}
impl Activity for FetchMessage {
    const NAME: &'static str = "fetch_message";
    type Input = u32;
    type Output = String;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, _ctx: ActivityContext, id: u32) -> ActivityResult<String> {
        self.env.sleep_ms(200).await;
        self.database
            .get(&id)
            .cloned()
            .ok_or_else(|| retrace::activity::non_retryable(format!("no message {id}")))
    }
}

/// A stand-in verification: the name of the inspector who checked the message.
struct Verify {
    env: Env,
}
impl Activity for Verify {
    const NAME: &'static str = "verify";
    type Input = String;
    type Output = String;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, _ctx: ActivityContext, message: String) -> ActivityResult<String> {
        self.env.sleep_ms(300).await;
        Ok(format!("Inspector #{}", message.len()))
    }
}

/// A stand-in web fetch of a pokemon by number.
struct FetchPokemon {
    env: Env,
}
impl Activity for FetchPokemon {
    const NAME: &'static str = "fetch_pokemon";
    type Input = u32;
    type Output = String;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, _ctx: ActivityContext, number: u32) -> ActivityResult<String> {
        self.env.sleep_ms(500).await;
        Ok(if number == 25 {
            "pikachu".to_string()
        } else {
            format!("pokemon #{number}")
        })
    }
}

/// A stand-in web fetch of a joke.
struct FetchJoke {
    env: Env,
}
impl Activity for FetchJoke {
    const NAME: &'static str = "fetch_joke";
    type Input = ();
    type Output = String;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, _ctx: ActivityContext, (): ()) -> ActivityResult<String> {
        self.env.sleep_ms(100).await;
        Ok("there are 10 kinds of people".to_string())
    }
}

// ---------------------------------------------------------------------------
// Workflows
// ---------------------------------------------------------------------------

/// Three activities in sequence, each fed the previous result.
struct Sequential;
impl Workflow for Sequential {
    const NAME: &'static str = "sequential";
    type Input = String;
    type Output = String;
    async fn run(ctx: WorkflowContext, text: String) -> WorkflowResult<String> {
        let a = ctx.activity::<Append>((text, ".1".to_string())).await?;
        let b = ctx.activity::<Append>((a, ".2".to_string())).await?;
        Ok(ctx.activity::<Append>((b, ".3".to_string())).await?)
    }
}

/// Two activities in parallel, taking 1 s and 2 s.
struct Parallel;
impl Workflow for Parallel {
    const NAME: &'static str = "parallel";
    type Input = ();
    type Output = Vec<String>;
    async fn run(ctx: WorkflowContext, (): ()) -> WorkflowResult<Vec<String>> {
        let left = ctx.activity::<Timed>(("left".to_string(), 1_000));
        let right = ctx.activity::<Timed>(("right".to_string(), 2_000));
        let (left, right) = join(left, right).await;
        Ok(vec![left?, right?])
    }
}

/// Sleeps the given milliseconds; returns how long it slept by workflow time.
struct Sleeper;
impl Workflow for Sleeper {
    const NAME: &'static str = "sleeper";
    type Input = u64;
    type Output = u64;
    async fn run(ctx: WorkflowContext, ms: u64) -> WorkflowResult<u64> {
        let before = ctx.now();
        ctx.sleep(Duration::from_millis(ms)).await?;
        Ok(ctx.now().millis_since(before))
    }
}

/// Sleeps, then receives `count` signals named "item", lets one more workflow
/// task pass, and returns what it received and how many more were buffered.
struct SleepThenSignals;
impl Workflow for SleepThenSignals {
    const NAME: &'static str = "sleep_then_signals";
    type Input = (u64, usize);
    type Output = (Vec<String>, usize);
    async fn run(
        ctx: WorkflowContext,
        (sleep_ms, count): (u64, usize),
    ) -> WorkflowResult<(Vec<String>, usize)> {
        ctx.sleep(Duration::from_millis(sleep_ms)).await?;
        let items = ctx.signal::<String>("item");
        let mut received = Vec::new();
        for _ in 0..count {
            received.push(items.recv().await?);
        }
        ctx.sleep(Duration::from_secs(1)).await?;
        let mut extra = 0;
        while let Some(item) = items.try_recv() {
            item?;
            extra += 1;
        }
        Ok((received, extra))
    }
}

/// Answers query "status" (and "status_with_prefix") from its state.
struct StatusQuery;
impl Workflow for StatusQuery {
    const NAME: &'static str = "status_query";
    type Input = ();
    type Output = String;
    async fn run(ctx: WorkflowContext, (): ()) -> WorkflowResult<String> {
        let status = Arc::new(Mutex::new("sleeping".to_string()));
        let shown = status.clone();
        ctx.query_handler("status", move |(): ()| shown.lock().unwrap().clone());
        let shown = status.clone();
        ctx.query_handler("status_with_prefix", move |prefix: String| {
            format!("{prefix}{}", shown.lock().unwrap())
        });
        ctx.sleep(Duration::from_secs(10)).await?;
        *status.lock().unwrap() = "waiting for finish".to_string();
        let by: String = ctx.signal("finish").recv().await?;
        let done = format!("finished by {by}");
        *status.lock().unwrap() = done.clone();
        Ok(done)
    }
}

/// Waits on an activity and a timer at once.
struct TimerAndActivity;
impl Workflow for TimerAndActivity {
    const NAME: &'static str = "timer_and_activity";
    type Input = ();
    type Output = String;
    async fn run(ctx: WorkflowContext, (): ()) -> WorkflowResult<String> {
        let (held, slept) = join(
            ctx.activity::<Hold>("job".to_string()),
            ctx.sleep(Duration::from_secs(60)),
        )
        .await;
        slept?;
        Ok(held?)
    }
}

/// Waits for signal "finish" and returns its payload.
struct AwaitSignal;
impl Workflow for AwaitSignal {
    const NAME: &'static str = "await_signal";
    type Input = ();
    type Output = String;
    async fn run(ctx: WorkflowContext, (): ()) -> WorkflowResult<String> {
        ctx.signal::<String>("finish").recv().await
    }
}

/// Fails if asked to, else completes.
struct MaybeFail;
impl Workflow for MaybeFail {
    const NAME: &'static str = "maybe_fail";
    type Input = bool;
    type Output = String;
    async fn run(_ctx: WorkflowContext, fail: bool) -> WorkflowResult<String> {
        if fail {
            return Err(WorkflowError::application("Refused", "asked to fail"));
        }
        Ok("fine".to_string())
    }
}

/// Activity, sleep, activity, activity: four workflow tasks.
struct MultiStep;
impl Workflow for MultiStep {
    const NAME: &'static str = "multi_step";
    type Input = String;
    type Output = String;
    async fn run(ctx: WorkflowContext, text: String) -> WorkflowResult<String> {
        let a = ctx.activity::<Append>((text, ".a".to_string())).await?;
        ctx.sleep(Duration::from_secs(1)).await?;
        let b = ctx.activity::<Append>((a, ".b".to_string())).await?;
        Ok(ctx.activity::<Append>((b, ".c".to_string())).await?)
    }
}

/// Activity, wait for signal "go", activity.
struct StepSignalStep;
impl Workflow for StepSignalStep {
    const NAME: &'static str = "step_signal_step";
    type Input = String;
    type Output = String;
    async fn run(ctx: WorkflowContext, text: String) -> WorkflowResult<String> {
        let a = ctx.activity::<Append>((text, ".a".to_string())).await?;
        let go: String = ctx.signal("go").recv().await?;
        Ok(ctx.activity::<Append>((a, go)).await?)
    }
}

/// Runs one activity, then hits a bug.
struct Panics;
impl Workflow for Panics {
    const NAME: &'static str = "panics";
    type Input = String;
    type Output = String;
    async fn run(ctx: WorkflowContext, text: String) -> WorkflowResult<String> {
        let a = ctx.activity::<Append>((text, ".a".to_string())).await?;
        if !a.is_empty() {
            panic!("boom: the workflow code has a bug");
        }
        Ok(a)
    }
}

/// Takes a new path behind patch "v2".
struct PatchedWorkflow;
impl Workflow for PatchedWorkflow {
    const NAME: &'static str = "patched_workflow";
    type Input = String;
    type Output = String;
    async fn run(ctx: WorkflowContext, text: String) -> WorkflowResult<String> {
        let suffix = if ctx.patched("v2") {
            " took v2"
        } else {
            " took v1"
        };
        Ok(ctx.activity::<Append>((text, suffix.to_string())).await?)
    }
}

/// An activity retried once, beside a 60 s timer.
struct DescribeMe;
impl Workflow for DescribeMe {
    const NAME: &'static str = "describe_me";
    type Input = ();
    type Output = String;
    async fn run(ctx: WorkflowContext, (): ()) -> WorkflowResult<String> {
        let (done, slept) = join(
            ctx.activity::<FlakyThenSlow>("job".to_string()),
            ctx.sleep(Duration::from_secs(60)),
        )
        .await;
        slept?;
        Ok(done?)
    }
}

/// A message of the order-of-messages app, with when the workflow saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct TimedMessage {
    at: Timestamp,
    text: String,
}

/// The order-of-messages app: sleep, database fetch, verification, wait for a
/// signal, two parallel fetches; returns every message in chronological order.
struct OrderOfMessages;
impl Workflow for OrderOfMessages {
    const NAME: &'static str = "order_of_messages";
    type Input = u32;
    type Output = Vec<TimedMessage>;
    async fn run(ctx: WorkflowContext, message_id: u32) -> WorkflowResult<Vec<TimedMessage>> {
        let note = |text: String| TimedMessage {
            at: ctx.now(),
            text,
        };
        let mut log = vec![note("started".to_string())];
        ctx.sleep(Duration::from_secs(5)).await?;
        log.push(note("slept 5 s".to_string()));
        let message = ctx.activity::<FetchMessage>(message_id).await?;
        log.push(note(format!("message: {message}")));
        let inspector = ctx.activity::<Verify>(message).await?;
        log.push(note(format!("verified by {inspector}")));
        let proceed: String = ctx.signal("proceed").recv().await?;
        log.push(note(format!("proceed: {proceed}")));
        let pokemon = async { (ctx.activity::<FetchPokemon>(25).await, ctx.now()) };
        let joke = async { (ctx.activity::<FetchJoke>(()).await, ctx.now()) };
        let ((pokemon, pokemon_at), (joke, joke_at)) = join(pokemon, joke).await;
        log.push(TimedMessage {
            at: pokemon_at,
            text: format!("pokemon: {}", pokemon?),
        });
        log.push(TimedMessage {
            at: joke_at,
            text: format!("joke: {}", joke?),
        });
        log.sort_by_key(|m| m.at);
        Ok(log)
    }
}

/// Every workflow of this file (the unknown-type test adds one workers lack,
/// and the values test one with a counter).
fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry
        .register::<Sequential>()
        .register::<Parallel>()
        .register::<Sleeper>()
        .register::<SleepThenSignals>()
        .register::<StatusQuery>()
        .register::<TimerAndActivity>()
        .register::<AwaitSignal>()
        .register::<MaybeFail>()
        .register::<MultiStep>()
        .register::<StepSignalStep>()
        .register::<Panics>()
        .register::<PatchedWorkflow>()
        .register::<DescribeMe>()
        .register::<OrderOfMessages>();
    registry
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A worker of `queue` running every workflow and activity of this file.
fn worker(engine: &TestEngine, queue: &str) -> WorkerBuilder {
    let env = engine.engine.env().clone();
    let database = BTreeMap::from([(7, "hello from the database".to_string())]);
    engine
        .engine
        .worker(queue)
        .workflows(engine.registry.clone())
        .activity(Append)
        .activity(Timed { env: env.clone() })
        .activity(Hold {
            env: env.clone(),
            seen: Arc::default(),
        })
        .activity(FlakyThenSlow { env: env.clone() })
        .activity(Record)
        .activity(FetchMessage {
            env: env.clone(),
            database,
        })
        .activity(Verify { env: env.clone() })
        .activity(FetchPokemon { env: env.clone() })
        .activity(FetchJoke { env })
}

fn names(history: &History) -> Vec<&'static str> {
    history.events().iter().map(|e| e.kind.name()).collect()
}

fn events_of<'h>(history: &'h History, event_type: &str) -> Vec<&'h Event> {
    history
        .events()
        .iter()
        .filter(|e| e.kind.name() == event_type)
        .collect()
}

fn event_time(history: &History, event_type: &str) -> Timestamp {
    events_of(history, event_type)
        .first()
        .unwrap_or_else(|| panic!("no {event_type}"))
        .event_time
}

/// The `workflow_task_completed_event_id` of each `ActivityTaskScheduled`, by activity type.
fn scheduling_tasks(history: &History) -> BTreeMap<String, u64> {
    history
        .events()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ActivityTaskScheduled(a) => {
                Some((a.activity_type.clone(), a.workflow_task_completed_event_id))
            }
            _ => None,
        })
        .collect()
}

async fn sleep_ms(engine: &TestEngine, ms: u64) {
    engine.engine.env().sleep_ms(ms).await;
}

/// Describes the current run of `workflow_id` until `ready` holds (50 ms of
/// service time between looks, 60 s at most).
async fn wait_for(
    engine: &TestEngine,
    workflow_id: &str,
    what: &str,
    ready: impl Fn(&RunDescription) -> bool,
) -> RunDescription {
    let client = engine.client();
    for _ in 0..1_200 {
        let description = client.describe(workflow_id, None).await.unwrap();
        if ready(&description) {
            return description;
        }
        sleep_ms(engine, 50).await;
    }
    panic!("workflow {workflow_id} never got to: {what}");
}

/// The run waits for something only the outside world can send: nothing
/// pending, no workflow task.
fn waits_for_a_signal(d: &RunDescription) -> bool {
    d.status == RunStatus::Running
        && d.pending_activities.is_empty()
        && d.pending_timers.is_empty()
        && d.workflow_task.is_none()
        && d.history_length > 2
}

fn code_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Service(error)) => (error.code, error.message),
        other => panic!("expected a service error, got {other:?}"),
    }
}

fn start_request(
    workflow_id: &str,
    workflow_type: &str,
    input: Value,
    request_id: &str,
) -> StartWorkflowRequest {
    StartWorkflowRequest {
        workflow_id: workflow_id.to_string(),
        workflow_type: workflow_type.to_string(),
        task_queue: "q".to_string(),
        input,
        execution_timeout_ms: None,
        workflow_task_timeout_ms: None,
        id_reuse_policy: IdReusePolicy::default(),
        request_id: request_id.to_string(),
        identity: "test".to_string(),
        start_delay_ms: None,
        retry_policy: None,
        cron_schedule: None,
        search_attributes: Default::default(),
        memo: Default::default(),
    }
}

fn with_policy(workflow_id: &str, policy: IdReusePolicy) -> StartOptions {
    let mut options = StartOptions::new(workflow_id, "q");
    options.id_reuse_policy = policy;
    options
}

const WORKFLOW_TASK: [&str; 3] = [
    "WorkflowTaskScheduled",
    "WorkflowTaskStarted",
    "WorkflowTaskCompleted",
];

/// Event names: the start, then each group in turn.
fn shape(groups: &[&[&'static str]]) -> Vec<&'static str> {
    let mut names = vec!["WorkflowExecutionStarted"];
    for group in groups {
        names.extend_from_slice(group);
    }
    names
}

// ---------------------------------------------------------------------------
// Activities in sequence and in parallel
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn sequential_activities_each_run_after_the_previous_one_in_its_own_workflow_task() {
    let engine = TestEngine::new(registry()).await;
    let worker = worker(&engine, "q").start_two();
    let handle = engine
        .client()
        .start::<Sequential>(StartOptions::new("seq", "q"), "go".to_string())
        .await
        .unwrap();
    assert_eq!(handle.result().await.unwrap(), "go.1.2.3");
    let history = handle.history().await.unwrap();
    let activity = [
        "ActivityTaskScheduled",
        "ActivityTaskStarted",
        "ActivityTaskCompleted",
    ];
    let expected = shape(&[
        &WORKFLOW_TASK,
        &activity,
        &WORKFLOW_TASK,
        &activity,
        &WORKFLOW_TASK,
        &activity,
        &WORKFLOW_TASK,
        &["WorkflowExecutionCompleted"],
    ]);
    assert_eq!(names(&history), expected);
    let inputs: Vec<Value> = history
        .events()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ActivityTaskScheduled(a) => Some(a.input.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        inputs,
        [
            json!(["go", ".1"]),
            json!(["go.1", ".2"]),
            json!(["go.1.2", ".3"])
        ]
    );
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 1);
}

#[tokio::test(start_paused = true)]
async fn parallel_activities_are_scheduled_in_one_workflow_task() {
    let engine = TestEngine::new(registry()).await;
    let worker = worker(&engine, "q").start_two();
    let handle = engine
        .client()
        .start::<Parallel>(StartOptions::new("par", "q"), ())
        .await
        .unwrap();
    assert_eq!(handle.result().await.unwrap(), ["left", "right"]);
    let history = handle.history().await.unwrap();
    let scheduled = events_of(&history, "ActivityTaskScheduled");
    assert_eq!(scheduled.len(), 2);
    assert_eq!(
        (scheduled[0].event_id, scheduled[1].event_id),
        (5, 6),
        "both right after the first WorkflowTaskCompleted"
    );
    let tasks: Vec<u64> = scheduled
        .iter()
        .map(|e| match &e.kind {
            EventKind::ActivityTaskScheduled(a) => a.workflow_task_completed_event_id,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(tasks, [4, 4], "both commands of workflow task 4");
    let left_done = events_of(&history, "ActivityTaskCompleted")[0].event_time;
    let started = event_time(&history, "WorkflowExecutionStarted");
    assert!(
        left_done.millis_since(started) < 2_000,
        "they ran at the same time, not one after the other"
    );
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_completion_that_lands_while_a_workflow_task_is_scheduled_joins_it() {
    let engine = TestEngine::new(registry()).await;
    let activities = engine
        .engine
        .worker("q")
        .identity("activities")
        .activity(Timed {
            env: engine.engine.env().clone(),
        })
        .start();
    let first = engine
        .engine
        .worker("q")
        .identity("first")
        .workflows(registry())
        .start();
    let client = engine.client();
    let handle = client
        .start::<Parallel>(StartOptions::new("join", "q"), ())
        .await
        .unwrap();
    wait_for(&engine, "join", "both activities started", |d| {
        d.pending_activities.len() == 2 && d.pending_activities.iter().all(|a| a.state == "Started")
    })
    .await;
    // No workflow worker while the activities end (at 1 s and 2 s): the first
    // completion schedules a workflow task, the second joins it.
    first.shutdown().await;
    sleep_ms(&engine, 3_000).await;
    let description = handle.describe().await.unwrap();
    assert_eq!(description.workflow_task.as_deref(), Some("Scheduled"));
    let history = handle.history().await.unwrap();
    let tail = &names(&history)[6..];
    let expected = [
        "ActivityTaskStarted",
        "ActivityTaskCompleted",
        "WorkflowTaskScheduled",
        "ActivityTaskStarted",
        "ActivityTaskCompleted",
    ];
    assert_eq!(tail, expected);

    let second = engine
        .engine
        .worker("q")
        .identity("second")
        .workflows(registry())
        .start();
    assert_eq!(handle.result().await.unwrap(), ["left", "right"]);
    let history = handle.history().await.unwrap();
    let activities_done = [
        "ActivityTaskScheduled",
        "ActivityTaskScheduled",
        "ActivityTaskStarted",
        "ActivityTaskCompleted",
        "WorkflowTaskScheduled",
        "ActivityTaskStarted",
        "ActivityTaskCompleted",
        "WorkflowTaskStarted",
        "WorkflowTaskCompleted",
        "WorkflowExecutionCompleted",
    ];
    assert_eq!(names(&history), shape(&[&WORKFLOW_TASK, &activities_done]));
    assert_eq!(
        events_of(&history, "WorkflowTaskCompleted").len(),
        2,
        "no extra workflow task"
    );
    second.shutdown().await;
    activities.shutdown().await;
    engine.check_histories().await;
}

// ---------------------------------------------------------------------------
// Durable timers
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_durable_sleep_fires_without_a_worker_and_never_early() {
    let engine = TestEngine::new(registry()).await;
    let first = worker(&engine, "q").identity("first").start();
    let handle = engine
        .client()
        .start::<Sleeper>(StartOptions::new("nap", "q"), 7_500)
        .await
        .unwrap();
    wait_for(&engine, "nap", "the timer started", |d| {
        !d.pending_timers.is_empty()
    })
    .await;
    first.shutdown().await;
    sleep_ms(&engine, 8_000).await;
    let description = handle.describe().await.unwrap();
    assert!(
        description.pending_timers.is_empty(),
        "the service fired the timer with no worker running"
    );
    assert_eq!(description.workflow_task.as_deref(), Some("Scheduled"));

    let second = worker(&engine, "q").identity("second").start();
    let slept_ms = handle.result().await.unwrap();
    assert!(slept_ms >= 7_500, "the workflow saw {slept_ms} ms pass");
    let history = handle.history().await.unwrap();
    let expected = shape(&[
        &WORKFLOW_TASK,
        &["TimerStarted", "TimerFired"],
        &WORKFLOW_TASK,
        &["WorkflowExecutionCompleted"],
    ]);
    assert_eq!(names(&history), expected);
    let EventKind::TimerStarted(started) = &events_of(&history, "TimerStarted")[0].kind else {
        unreachable!()
    };
    assert_eq!(started.start_to_fire_timeout_ms, 7_500);
    let fired_after =
        event_time(&history, "TimerFired").millis_since(event_time(&history, "TimerStarted"));
    assert!(
        fired_after >= 7_500,
        "the timer fired after {fired_after} ms, before its 7500 ms"
    );
    second.shutdown().await;
    engine.check_histories().await;
}

// ---------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_signal_sent_before_the_workflow_listens_is_buffered_and_delivered_once() {
    let engine = TestEngine::new(registry()).await;
    let worker = worker(&engine, "q").start_two();
    let client = engine.client();
    let handle = client
        .start::<SleepThenSignals>(StartOptions::new("early", "q"), (10_000, 1))
        .await
        .unwrap();
    sleep_ms(&engine, 1_000).await;
    handle.signal("item", "early bird").await.unwrap();
    let (received, extra) = handle.result().await.unwrap();
    assert_eq!(received, ["early bird"]);
    assert_eq!(extra, 0, "delivered once");
    let history = handle.history().await.unwrap();
    assert_eq!(events_of(&history, "WorkflowExecutionSignaled").len(), 1);
    let signaled = events_of(&history, "WorkflowExecutionSignaled")[0].event_id;
    let fired = events_of(&history, "TimerFired")[0].event_id;
    assert!(
        signaled < fired,
        "the signal arrived while the workflow slept"
    );
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_signal_schedules_a_workflow_task_even_when_the_code_is_not_listening() {
    let engine = TestEngine::new(registry()).await;
    let worker = worker(&engine, "q").start_two();
    let client = engine.client();
    let handle = client
        .start::<Sleeper>(StartOptions::new("deaf", "q"), 10_000)
        .await
        .unwrap();
    sleep_ms(&engine, 1_000).await;
    handle
        .signal("ignored", json!({"anything": 1}))
        .await
        .unwrap();
    assert!(handle.result().await.unwrap() >= 10_000);
    let history = handle.history().await.unwrap();
    let expected = shape(&[
        &WORKFLOW_TASK,
        &["TimerStarted", "WorkflowExecutionSignaled"],
        &WORKFLOW_TASK, // completed with no commands: the code does not read "ignored"
        &["TimerFired"],
        &WORKFLOW_TASK,
        &["WorkflowExecutionCompleted"],
    ]);
    assert_eq!(names(&history), expected);
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_signal_sent_before_the_first_workflow_task_starts_joins_that_task() {
    let engine = TestEngine::new(registry()).await;
    let client = engine.client();
    let handle = client
        .start::<AwaitSignal>(StartOptions::new("first-task", "q"), ())
        .await
        .unwrap();
    handle.signal("finish", "before any worker").await.unwrap();
    let worker = worker(&engine, "q").start_two();
    assert_eq!(handle.result().await.unwrap(), "before any worker");
    let history = handle.history().await.unwrap();
    let expected = shape(&[
        &[
            "WorkflowTaskScheduled",
            "WorkflowExecutionSignaled",
            "WorkflowTaskStarted",
            "WorkflowTaskCompleted",
        ],
        &["WorkflowExecutionCompleted"],
    ]);
    assert_eq!(
        names(&history),
        expected,
        "one workflow task saw the start and the signal"
    );
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn signals_of_one_name_arrive_in_the_order_they_were_sent() {
    let engine = TestEngine::new(registry()).await;
    let worker = worker(&engine, "q").start_two();
    let client = engine.client();
    let handle = client
        .start::<SleepThenSignals>(StartOptions::new("order", "q"), (5_000, 6))
        .await
        .unwrap();
    sleep_ms(&engine, 1_000).await;
    for n in 1..=3 {
        handle.signal("item", format!("s{n}")).await.unwrap();
    }
    wait_for(
        &engine,
        "order",
        "listening after the sleep",
        waits_for_a_signal,
    )
    .await;
    for n in 4..=6 {
        handle.signal("item", format!("s{n}")).await.unwrap();
    }
    let (received, extra) = handle.result().await.unwrap();
    assert_eq!(received, ["s1", "s2", "s3", "s4", "s5", "s6"]);
    assert_eq!(extra, 0);
    let history = handle.history().await.unwrap();
    let inputs: Vec<Value> = history
        .events()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::WorkflowExecutionSignaled(s) => Some(s.input.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        inputs,
        [
            json!("s1"),
            json!("s2"),
            json!("s3"),
            json!("s4"),
            json!("s5"),
            json!("s6")
        ]
    );
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_retried_signal_request_is_delivered_once() {
    let engine = TestEngine::new(registry()).await;
    let worker = worker(&engine, "q").start_two();
    let client = engine.client();
    let handle = client
        .start::<SleepThenSignals>(StartOptions::new("retried", "q"), (2_000, 1))
        .await
        .unwrap();
    sleep_ms(&engine, 100).await;
    let request = Request::SignalWorkflow(SignalWorkflowRequest {
        run: RunRef {
            workflow_id: "retried".to_string(),
            run_id: None,
        },
        signal_name: "item".to_string(),
        input: json!("once"),
        request_id: "signal-request-1".to_string(),
        identity: "test".to_string(),
    });
    let network = engine.engine.env().network.clone();
    for _ in 0..2 {
        let reply = network
            .call(request.clone())
            .await
            .expect("in-process calls arrive");
        assert_eq!(
            reply,
            Ok(Response::Empty),
            "the retry is acknowledged like the first request"
        );
    }
    let (received, extra) = handle.result().await.unwrap();
    assert_eq!((received, extra), (vec!["once".to_string()], 0));
    let history = handle.history().await.unwrap();
    assert_eq!(events_of(&history, "WorkflowExecutionSignaled").len(), 1);
    worker.shutdown().await;
    engine.check_histories().await;
}

// ---------------------------------------------------------------------------
// Workflow tasks, seen through the raw protocol (the test acts as the worker)
// ---------------------------------------------------------------------------

/// Polls queue `queue` as a worker would, until it gets a workflow task.
async fn poll_workflow_task(engine: &TestEngine, queue: &str) -> WorkflowTask {
    let request = Request::PollWorkflowTask(PollTaskRequest {
        task_queue: queue.to_string(),
        identity: "raw".to_string(),
        workflow_types: Vec::new(),
    });
    for _ in 0..10 {
        match engine.engine.env().network.call(request.clone()).await {
            Ok(Ok(Response::PollWorkflowTask(PollWorkflowTaskResponse {
                task: Some(task),
                ..
            }))) => return task,
            Ok(Ok(Response::PollWorkflowTask(_))) => continue,
            other => panic!("poll failed: {other:?}"),
        }
    }
    panic!("no workflow task on queue {queue}");
}

async fn complete_workflow_task(
    engine: &TestEngine,
    task: &WorkflowTask,
    commands: Vec<Command>,
) -> Reply {
    let request = Request::CompleteWorkflowTask(CompleteWorkflowTaskRequest {
        eager_activities_max: 0,
        update_rejections: Vec::new(),
        task_token: task.task_token.clone(),
        commands,
        identity: "raw".to_string(),
    });
    engine
        .engine
        .env()
        .network
        .call(request)
        .await
        .expect("in-process calls arrive")
}

/// What one write did to the run's buffered events, and its state blob size.
#[derive(Clone, Copy, Debug)]
struct BufferedWriteSeen {
    state_bytes: usize,
    appended: usize,
    cleared: bool,
}

/// Memory storage that records each write's buffered change.
fn recording_buffered_writes() -> (Arc<HookedStorage>, Arc<Mutex<Vec<BufferedWriteSeen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let write: WriteHook = Box::new(move |inner, batch| {
        log.lock().unwrap().push(BufferedWriteSeen {
            state_bytes: batch.run.state.len(),
            appended: batch.buffered.append.len(),
            cleared: batch.buffered.clear,
        });
        let written = inner.apply(batch);
        Box::pin(async move { written })
    });
    (
        HookedStorage::new(Arc::new(MemoryStorage::new()), write),
        seen,
    )
}

#[tokio::test(start_paused = true)]
async fn a_signal_buffered_while_a_task_runs_costs_one_row_and_survives_a_restart() {
    let (storage, seen) = recording_buffered_writes();
    let engine = TestEngine::over(storage.clone(), registry()).await;
    let client = engine.client();
    let handle = client
        .start::<AwaitSignal>(StartOptions::new("rows", "raw"), ())
        .await
        .unwrap();
    let _held = poll_workflow_task(&engine, "raw").await;
    let payload = "x".repeat(10_000);
    for n in 0..3 {
        handle
            .signal("finish", format!("{n}{payload}"))
            .await
            .unwrap();
    }
    let signals: Vec<BufferedWriteSeen> = seen.lock().unwrap()[2..].to_vec();
    assert_eq!(signals.len(), 3, "one write per signal: {signals:?}");
    for write in &signals {
        assert_eq!((write.appended, write.cleared), (1, false), "{signals:?}");
    }
    assert!(
        signals[2].state_bytes < signals[0].state_bytes + 1_000,
        "the state blob does not carry the buffered signals: {signals:?}"
    );

    // A new service over the same storage (a restart) reads the rows back.
    drop(engine);
    let engine = TestEngine::over(storage.inner.clone(), registry()).await;
    let worker = worker(&engine, "raw").start_two();
    let handle = engine.client().handle::<String>("rows", None);
    assert_eq!(handle.result().await.unwrap(), format!("0{payload}"));
    worker.shutdown().await;
    let history = handle.history().await.unwrap();
    let signaled = history
        .events()
        .iter()
        .filter(|e| matches!(e.kind, EventKind::WorkflowExecutionSignaled(_)))
        .count();
    assert_eq!(signaled, 3, "every buffered signal reached the history");
    let rows = storage.inner.buffered(history.run_id());
    assert!(rows.events.is_empty(), "the rows are cleared once written");
    engine.check_histories().await;
}

/// Rewrites the run's stored state as an older build wrote it: the buffered
/// events inside the state blob, no buffered rows.
fn move_buffered_rows_into_the_blob(storage: &MemoryStorage, run_id: &str) {
    let record = futures::executor::block_on(storage.read_run(run_id))
        .unwrap()
        .unwrap();
    let rows = storage.buffered(run_id);
    assert!(!rows.events.is_empty());
    let mut state: Value = serde_json::from_slice(&record.state).unwrap();
    state["buffered"] = serde_json::to_value(&rows.events).unwrap();
    let mut run = record.clone();
    run.version += 1;
    run.state = serde_json::to_vec(&state).unwrap();
    let batch = WriteBatch {
        fence: None,
        run,
        expected_version: Some(record.version),
        events: Vec::new(),
        claim: None,
        buffered: BufferedWrite {
            clear: true,
            append: Vec::new(),
        },
        next_run: None,
    };
    storage.apply(batch).unwrap();
}

#[tokio::test(start_paused = true)]
async fn signals_an_older_build_buffered_inside_the_state_blob_are_delivered() {
    let storage = Arc::new(MemoryStorage::new());
    let engine = TestEngine::over(storage.clone(), registry()).await;
    let handle = engine
        .client()
        .start::<AwaitSignal>(StartOptions::new("old-blob", "raw"), ())
        .await
        .unwrap();
    let _held = poll_workflow_task(&engine, "raw").await;
    handle.signal("finish", "kept inline").await.unwrap();
    let run_id = handle.describe().await.unwrap().run_id;
    drop(engine);
    move_buffered_rows_into_the_blob(&storage, &run_id);

    let engine = TestEngine::over(storage.clone(), registry()).await;
    let worker = worker(&engine, "raw").start_two();
    let handle = engine.client().handle::<String>("old-blob", None);
    let env = engine.engine.env().clone();
    let result = env.timeout(600_000, handle.result()).await;
    assert_eq!(
        result
            .expect("the signal kept inline reaches the workflow")
            .unwrap(),
        "kept inline"
    );
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_signal_arriving_while_a_workflow_task_runs_is_written_after_it_with_a_new_task() {
    let engine = TestEngine::new(registry()).await;
    let client = engine.client();
    let handle = client
        .start::<AwaitSignal>(StartOptions::new("buffered", "raw"), ())
        .await
        .unwrap();
    let task = poll_workflow_task(&engine, "raw").await;
    handle.signal("finish", "while running").await.unwrap();
    let history = handle.history().await.unwrap();
    assert_eq!(
        names(&history),
        shape(&[&WORKFLOW_TASK[..2]]),
        "held back while the task runs"
    );
    let Ok(Response::CompleteWorkflowTask(answer)) =
        complete_workflow_task(&engine, &task, Vec::new()).await
    else {
        panic!("the completion is accepted");
    };
    assert!(answer.activity_tasks.is_empty());
    let history = handle.history().await.unwrap();
    let expected = shape(&[
        &WORKFLOW_TASK,
        &["WorkflowExecutionSignaled", "WorkflowTaskScheduled"],
    ]);
    assert_eq!(names(&history), expected);
    assert_eq!(
        answer.events[..],
        history.events()[3..],
        "the answer carries what the completion wrote"
    );

    let worker = worker(&engine, "raw").start_two();
    assert_eq!(handle.result().await.unwrap(), "while running");
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn closing_the_run_while_a_signal_is_buffered_fails_the_task_so_the_code_sees_the_signal() {
    let engine = TestEngine::new(registry()).await;
    let client = engine.client();
    let handle = client
        .start::<MaybeFail>(StartOptions::new("unhandled", "raw"), false)
        .await
        .unwrap();
    let task = poll_workflow_task(&engine, "raw").await;
    handle.signal("late", "news").await.unwrap();
    let close = Command::CompleteWorkflowExecution {
        result: json!("fine"),
    };
    let refused = complete_workflow_task(&engine, &task, vec![close])
        .await
        .expect_err(
            "the task is failed, not completed: the worker must not take the close as written",
        );
    assert_eq!(
        refused.code,
        retrace::api::ErrorCode::TaskNotFound,
        "{refused:?}"
    );
    assert!(refused.message.contains("UnhandledCommand"), "{refused:?}");
    let history = handle.history().await.unwrap();
    let expected = shape(&[
        &WORKFLOW_TASK[..2],
        &[
            "WorkflowTaskFailed",
            "WorkflowExecutionSignaled",
            "WorkflowTaskScheduled",
        ],
    ]);
    assert_eq!(names(&history), expected, "the run did not close");
    let EventKind::WorkflowTaskFailed(failed) = &history.events()[3].kind else {
        unreachable!()
    };
    assert_eq!(failed.cause, WorkflowTaskFailedCause::UnhandledCommand);
    assert_eq!(handle.describe().await.unwrap().status, RunStatus::Running);

    let worker = worker(&engine, "raw").start_two();
    assert_eq!(handle.result().await.unwrap(), "fine");
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_workflow_task_not_completed_in_time_times_out_and_is_retried() {
    let engine = TestEngine::new(registry()).await;
    let client = engine.client();
    let mut options = StartOptions::new("slow-task", "raw");
    options.workflow_task_timeout_ms = Some(3_000);
    let handle = client.start::<MaybeFail>(options, false).await.unwrap();
    let abandoned = poll_workflow_task(&engine, "raw").await;
    sleep_ms(&engine, 3_500).await;
    let (code, _) = match complete_workflow_task(&engine, &abandoned, Vec::new()).await {
        Err(error) => (error.code, error.message),
        other => panic!("a timed-out task's token must be refused, got {other:?}"),
    };
    assert_eq!(code, ErrorCode::TaskNotFound);

    let worker = worker(&engine, "raw").start_two();
    assert_eq!(handle.result().await.unwrap(), "fine");
    let history = handle.history().await.unwrap();
    let expected = shape(&[
        &WORKFLOW_TASK[..2],
        &["WorkflowTaskTimedOut"],
        &WORKFLOW_TASK,
        &["WorkflowExecutionCompleted"],
    ]);
    assert_eq!(names(&history), expected);
    let timed_out_after = history.events()[3]
        .event_time
        .millis_since(history.events()[2].event_time);
    assert!(
        timed_out_after >= 3_000,
        "timed out after {timed_out_after} ms"
    );
    let EventKind::WorkflowTaskScheduled(retry) = &history.events()[4].kind else {
        unreachable!()
    };
    assert_eq!(retry.attempt, 2);
    worker.shutdown().await;
    engine.check_histories().await;
}

/// In-memory storage whose writes commit at once but are acknowledged 10 ms
/// later, as a real database's are (SQLite commits on its writer thread).
fn slow_acks() -> Arc<HookedStorage> {
    let clock = TokioClock::new();
    let write: WriteHook = Box::new(move |inner, batch| {
        let written = inner.apply(batch);
        let acknowledged = clock.sleep_until(clock.now().plus_ms(10));
        Box::pin(async move {
            acknowledged.await;
            written
        })
    });
    HookedStorage::new(Arc::new(MemoryStorage::new()), write)
}

/// A poll that gives up (its deadline passes, the worker shuts down, the HTTP
/// connection drops) while the service writes the `WorkflowTaskStarted` of the
/// task it is handing over: the write commits, the request is dropped before
/// the acknowledgment. The run must still finish (the started task times out
/// and is retried), as the service promises for ambiguous writes.
#[tokio::test(start_paused = true)]
async fn a_poll_dropped_while_its_workflow_task_start_is_written_does_not_strand_the_run() {
    let storage = slow_acks();
    let engine = TestEngine::over(storage, registry()).await;
    let client = engine.client();
    let mut options = StartOptions::new("dropped-poll", "raw");
    options.workflow_task_timeout_ms = Some(1_000);
    let handle = client.start::<MaybeFail>(options, false).await.unwrap();
    let env = engine.engine.env().clone();
    let poll = Request::PollWorkflowTask(PollTaskRequest {
        task_queue: "raw".to_string(),
        identity: "impatient".to_string(),
        workflow_types: Vec::new(),
    });
    let impatient = env.timeout(5, env.network.call(poll)).await;
    assert!(
        impatient.is_err(),
        "the poll was dropped before the service answered: {impatient:?}"
    );
    let stored = handle.history().await.unwrap();
    assert_eq!(
        names(&stored),
        shape(&[&WORKFLOW_TASK[..2]]),
        "the task's start was committed"
    );

    let worker = worker(&engine, "raw").start_two();
    let outcome = env.timeout(60_000, handle.outcome()).await;
    let description = handle.describe().await.unwrap();
    assert!(
        outcome.is_ok(),
        "the run is stranded: describe says workflow task {:?} (history has {} events, describe {}), history {:?}",
        description.workflow_task,
        handle.history().await.unwrap().len(),
        description.history_length,
        names(&handle.history().await.unwrap())
    );
    assert_eq!(
        outcome.unwrap().unwrap(),
        RunOutcome::Completed {
            result: json!("fine")
        }
    );
    worker.shutdown().await;
    engine.check_histories().await;
}

// ---------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_query_before_the_first_workflow_task_completed_is_not_ready_then_answered() {
    // Found by the simulator (generated seed 15688): a query answered from
    // a first workflow task still running showed a state the run never
    // reached once that task timed out and a cancel request came first.
    let engine = TestEngine::new(registry()).await;
    let client = engine.client();
    let handle = client
        .start::<StatusQuery>(StartOptions::new("early", "q"), ())
        .await
        .unwrap();
    let once = engine.client().with_call_attempts_max(1);
    let error = once
        .query::<String>("early", None, "status", ())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unavailable), "{error}");
    assert!(
        error
            .to_string()
            .contains("has not completed its first workflow task"),
        "{error}"
    );
    let worker = worker(&engine, "q").start_two();
    // The client retries a run that is not ready yet.
    let status: String = handle.query("status", ()).await.unwrap();
    assert!(
        ["sleeping", "waiting for finish"].contains(&status.as_str()),
        "{status}"
    );
    worker.shutdown().await;

    let never = client
        .start::<StatusQuery>(StartOptions::new("never", "nobody-polls"), ())
        .await
        .unwrap();
    never.terminate("before its first task").await.unwrap();
    let error = never.query::<String>("status", ()).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::QueryFailed), "{error}");
    assert!(
        error
            .to_string()
            .contains("closed before its first workflow task"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_query_is_answered_from_the_state_of_the_waiting_run() {
    let engine = TestEngine::new(registry()).await;
    let worker = worker(&engine, "q").start_two();
    let client = engine.client();
    let handle = client
        .start::<StatusQuery>(StartOptions::new("asked", "q"), ())
        .await
        .unwrap();
    sleep_ms(&engine, 1_000).await;
    assert_eq!(
        handle.query::<String>("status", ()).await.unwrap(),
        "sleeping"
    );
    wait_for(&engine, "asked", "waiting for finish", waits_for_a_signal).await;
    assert_eq!(
        handle.query::<String>("status", ()).await.unwrap(),
        "waiting for finish"
    );
    let prefixed: String = handle.query("status_with_prefix", "now: ").await.unwrap();
    assert_eq!(prefixed, "now: waiting for finish");
    let before = handle.history().await.unwrap().len();
    handle.signal("finish", "ana").await.unwrap();
    assert_eq!(handle.result().await.unwrap(), "finished by ana");
    assert!(handle.history().await.unwrap().len() > before);
    let queried = names(&handle.history().await.unwrap())
        .iter()
        .filter(|n| n.contains("Query"))
        .count();
    assert_eq!(queried, 0, "queries leave no events");
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_query_on_a_closed_run_is_answered_by_replaying_its_history() {
    let engine = TestEngine::new(registry()).await;
    let first = worker(&engine, "q").identity("first").start();
    let client = engine.client();
    let handle = client
        .start::<StatusQuery>(StartOptions::new("closed", "q"), ())
        .await
        .unwrap();
    wait_for(&engine, "closed", "waiting for finish", waits_for_a_signal).await;
    handle.signal("finish", "bo").await.unwrap();
    assert_eq!(handle.result().await.unwrap(), "finished by bo");
    first.shutdown().await;
    // A worker that never saw the run can only answer by replaying it.
    let second = worker(&engine, "q").identity("second").start();
    assert_eq!(
        handle.query::<String>("status", ()).await.unwrap(),
        "finished by bo"
    );
    assert_eq!(second.stats().workflow_tasks, 0);
    second.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn an_unknown_query_name_fails_with_query_failed_naming_the_known_queries() {
    let engine = TestEngine::new(registry()).await;
    let worker = worker(&engine, "q").start_two();
    let client = engine.client();
    let handle = client
        .start::<StatusQuery>(StartOptions::new("unknown-query", "q"), ())
        .await
        .unwrap();
    sleep_ms(&engine, 1_000).await;
    let (code, message) = code_of(handle.query::<String>("balance", ()).await);
    assert_eq!(code, ErrorCode::QueryFailed);
    assert!(
        message.contains("balance") && message.contains("status"),
        "{message}"
    );
    let (code, message) = code_of(handle.query::<String>("status_with_prefix", 42).await);
    assert_eq!(
        code,
        ErrorCode::QueryFailed,
        "arguments that do not fit fail the query too"
    );
    assert!(message.contains("status_with_prefix"), "{message}");
    assert_eq!(
        handle.query::<String>("status", ()).await.unwrap(),
        "sleeping",
        "the run is unharmed"
    );
    handle.terminate("done testing").await.unwrap();
    worker.shutdown().await;
    engine.check_histories().await;
}

// ---------------------------------------------------------------------------
// Terminate and the execution timeout
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn terminate_while_waiting_on_a_timer_and_an_activity_closes_the_run_at_once() {
    let engine = TestEngine::new(registry()).await;
    let seen = Arc::new(Mutex::new(None));
    let hold = Hold {
        env: engine.engine.env().clone(),
        seen: seen.clone(),
    };
    let worker = worker(&engine, "q").activity(hold).start_two();
    let client = engine.client();
    let handle = client
        .start::<TimerAndActivity>(StartOptions::new("term", "q"), ())
        .await
        .unwrap();
    wait_for(
        &engine,
        "term",
        "the activity runs and the timer is set",
        |d| {
            d.pending_timers.len() == 1
                && d.pending_activities
                    .first()
                    .is_some_and(|a| a.state == "Started")
        },
    )
    .await;
    let terminated_at = engine.engine.env().now();
    handle.terminate("operator said so").await.unwrap();
    let outcome = handle.outcome().await.unwrap();
    assert_eq!(
        outcome,
        RunOutcome::Terminated {
            reason: "operator said so".to_string()
        }
    );

    let history = handle.history().await.unwrap();
    let expected = shape(&[
        &WORKFLOW_TASK,
        &[
            "ActivityTaskScheduled",
            "TimerStarted",
            "WorkflowExecutionTerminated",
        ],
    ]);
    assert_eq!(
        names(&history),
        expected,
        "no workflow task ran for the terminate"
    );
    let last = history.events().last().unwrap();
    assert_eq!(last.event_time, terminated_at, "closed at once");
    let EventKind::WorkflowExecutionTerminated(terminated) = &last.kind else {
        unreachable!()
    };
    assert_eq!(terminated.reason, "operator said so");

    let description = handle.describe().await.unwrap();
    assert_eq!(description.status, RunStatus::Terminated);
    assert!(description.pending_activities.is_empty() && description.pending_timers.is_empty());
    assert_eq!(description.workflow_task, None);
    assert_eq!(description.close_time, Some(terminated_at));

    let (code, message) = code_of(handle.signal("item", "late").await);
    assert_eq!(code, ErrorCode::RunClosed, "{message}");
    assert_eq!(
        code_of(handle.terminate("again").await).0,
        ErrorCode::RunClosed
    );

    sleep_ms(&engine, 70_000).await;
    assert_eq!(
        handle.history().await.unwrap().len(),
        history.len(),
        "the dropped timer never fires"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        Some(CancelReason::NotFound),
        "the activity learned through its heartbeat"
    );
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn the_workflow_execution_timeout_closes_the_run_as_timed_out() {
    let engine = TestEngine::new(registry()).await;
    let worker = worker(&engine, "q").start_two();
    let mut options = StartOptions::new("late", "q");
    options.execution_timeout_ms = Some(5_000);
    let handle = engine
        .client()
        .start::<Sleeper>(options, 60_000)
        .await
        .unwrap();
    assert_eq!(handle.outcome().await.unwrap(), RunOutcome::TimedOut);
    assert!(matches!(
        handle.result().await,
        Err(ClientError::Workflow(RunOutcome::TimedOut))
    ));
    let history = handle.history().await.unwrap();
    let expected = shape(&[
        &WORKFLOW_TASK,
        &["TimerStarted", "WorkflowExecutionTimedOut"],
    ]);
    assert_eq!(names(&history), expected);
    let timed_out_after = event_time(&history, "WorkflowExecutionTimedOut")
        .millis_since(event_time(&history, "WorkflowExecutionStarted"));
    assert!(
        (5_000..60_000).contains(&timed_out_after),
        "timed out after {timed_out_after} ms"
    );
    let description = handle.describe().await.unwrap();
    assert_eq!(description.status, RunStatus::TimedOut);
    assert!(description.pending_timers.is_empty());
    worker.shutdown().await;
    engine.check_histories().await;
}

// ---------------------------------------------------------------------------
// Workflow id reuse
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_running_workflow_id_is_refused_but_a_retried_start_returns_the_same_run() {
    let engine = TestEngine::new(registry()).await;
    let worker = worker(&engine, "q").start_two();
    let client = engine.client();
    let network = engine.engine.env().network.clone();
    let request = Request::StartWorkflow(start_request(
        "busy",
        "await_signal",
        json!(null),
        "start-request-1",
    ));
    let mut run_ids = Vec::new();
    for _ in 0..2 {
        match network.call(request.clone()).await {
            Ok(Ok(Response::StartWorkflow(started))) => run_ids.push(started.run_id),
            other => panic!("start refused: {other:?}"),
        }
    }
    assert_eq!(
        run_ids[0], run_ids[1],
        "the same request id returns the same run"
    );

    let (code, message) = code_of(
        client
            .start_by_name(StartOptions::new("busy", "q"), "await_signal", json!(null))
            .await,
    );
    assert_eq!(code, ErrorCode::AlreadyStarted);
    assert!(message.contains(&run_ids[0]), "{message}");
    let (code, _) = code_of(
        client
            .start_by_name(
                with_policy("busy", IdReusePolicy::AllowDuplicate),
                "sleeper",
                json!(1),
            )
            .await,
    );
    assert_eq!(
        code,
        ErrorCode::AlreadyStarted,
        "a running id is refused whatever the policy"
    );
    assert_eq!(client.list_all(None).await.unwrap().len(), 1);

    client.signal("busy", None, "finish", "done").await.unwrap();
    assert_eq!(
        client
            .handle::<String>("busy", Some(&run_ids[0]))
            .result()
            .await
            .unwrap(),
        "done"
    );
    match network.call(request).await {
        Ok(Ok(Response::StartWorkflow(started))) => {
            assert_eq!(
                started.run_id, run_ids[0],
                "a start retried after its run closed starts nothing new"
            );
        }
        other => panic!("retried start refused: {other:?}"),
    }
    assert_eq!(client.list_all(None).await.unwrap().len(), 1);
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_closed_workflow_id_is_reused_as_its_id_reuse_policy_says() {
    let engine = TestEngine::new(registry()).await;
    let worker = worker(&engine, "q").start_two();
    let client = engine.client();
    let start = |policy, fail: bool| {
        let client = client.clone();
        async move {
            client
                .start_by_name(with_policy("reuse", policy), "maybe_fail", json!(fail))
                .await
        }
    };
    let completed = start(IdReusePolicy::AllowDuplicate, false).await.unwrap();
    assert_eq!(
        client.outcome("reuse", Some(&completed)).await.unwrap(),
        RunOutcome::Completed {
            result: json!("fine")
        }
    );

    let (code, message) = code_of(start(IdReusePolicy::RejectDuplicate, false).await);
    assert_eq!(code, ErrorCode::AlreadyStarted);
    assert!(message.contains("RejectDuplicate"), "{message}");
    let (code, message) = code_of(start(IdReusePolicy::AllowDuplicateFailedOnly, false).await);
    assert_eq!(
        code,
        ErrorCode::AlreadyStarted,
        "the previous run completed"
    );
    assert!(message.contains("Completed"), "{message}");

    let failed = start(IdReusePolicy::AllowDuplicate, true).await.unwrap();
    assert_ne!(failed, completed);
    assert!(matches!(
        client.outcome("reuse", Some(&failed)).await.unwrap(),
        RunOutcome::Failed { .. }
    ));
    assert_eq!(
        client.describe("reuse", None).await.unwrap().run_id,
        failed,
        "the id names its newest run"
    );

    let (code, _) = code_of(start(IdReusePolicy::RejectDuplicate, false).await);
    assert_eq!(code, ErrorCode::AlreadyStarted);
    let after_failure = start(IdReusePolicy::AllowDuplicateFailedOnly, false)
        .await
        .unwrap();
    assert!(![&completed, &failed].contains(&&after_failure));
    assert_eq!(
        client.outcome("reuse", Some(&after_failure)).await.unwrap(),
        RunOutcome::Completed {
            result: json!("fine")
        }
    );

    let runs = client.list_all(None).await.unwrap();
    assert_eq!(runs.iter().filter(|r| r.workflow_id == "reuse").count(), 3);
    assert_eq!(
        client
            .describe("reuse", Some(&completed))
            .await
            .unwrap()
            .status,
        RunStatus::Completed,
        "old runs stay readable"
    );
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 3);
}

// ---------------------------------------------------------------------------
// Cache eviction
// ---------------------------------------------------------------------------

/// What one engine did: results, normalised histories, the worker's counters.
struct Finished<R> {
    results: R,
    histories: Vec<Value>,
    stats: WorkerStats,
    engine: TestEngine,
}

/// Runs `multi_step` under four workflow ids at once on one worker (stopped
/// before returning).
async fn four_concurrent_runs(cache_runs_max: usize) -> Finished<Vec<String>> {
    let engine = TestEngine::new(registry()).await;
    let worker = worker(&engine, "q").cache_runs_max(cache_runs_max).start();
    let client = engine.client();
    let mut handles = Vec::new();
    for i in 0..4 {
        let options = StartOptions::new(format!("multi-{i}"), "q");
        handles.push(
            client
                .start::<MultiStep>(options, format!("r{i}"))
                .await
                .unwrap(),
        );
    }
    let mut results = Vec::new();
    let mut histories = Vec::new();
    for handle in &handles {
        results.push(handle.result().await.unwrap());
        histories.push(handle.history().await.unwrap().normalized());
    }
    worker.shutdown().await;
    let stats = worker.stats();
    Finished {
        results,
        histories,
        stats,
        engine,
    }
}

#[tokio::test(start_paused = true)]
async fn runs_evicted_from_a_small_cache_mid_run_end_with_the_same_results_and_histories() {
    let evicted = four_concurrent_runs(1).await;
    let kept = four_concurrent_runs(1_000).await;
    assert_eq!(
        evicted.results,
        ["r0.a.b.c", "r1.a.b.c", "r2.a.b.c", "r3.a.b.c"]
    );
    assert_eq!(evicted.results, kept.results);
    assert_eq!(
        evicted.histories, kept.histories,
        "identical in normalised form"
    );
    assert_eq!(
        kept.stats.cache_misses, 4,
        "without eviction only each run's first task misses"
    );
    let stats = &evicted.stats;
    assert!(
        stats.cache_misses > 4,
        "with one cached run, later tasks replayed: {stats:?}"
    );
    assert_eq!(evicted.stats.workflow_tasks, kept.stats.workflow_tasks);
    assert_eq!(kept.engine.check_histories().await, 4);
    assert_eq!(evicted.engine.check_histories().await, 4);
}

/// Runs `step_signal_step`, clearing the worker's cache while it waits if
/// asked (the worker is stopped before returning).
async fn step_signal_step(clear_cache: bool) -> Finished<String> {
    let engine = TestEngine::new(registry()).await;
    let worker = worker(&engine, "q").start();
    let handle = engine
        .client()
        .start::<StepSignalStep>(StartOptions::new("cleared", "q"), "x".to_string())
        .await
        .unwrap();
    wait_for(&engine, "cleared", "waiting for go", waits_for_a_signal).await;
    if clear_cache {
        worker.clear_cache();
    }
    handle.signal("go", ".go").await.unwrap();
    let results = handle.result().await.unwrap();
    let histories = vec![handle.history().await.unwrap().normalized()];
    worker.shutdown().await;
    let stats = worker.stats();
    Finished {
        results,
        histories,
        stats,
        engine,
    }
}

#[tokio::test(start_paused = true)]
async fn clearing_the_cache_in_the_middle_of_a_run_gives_the_same_result_and_history() {
    let cleared = step_signal_step(true).await;
    let kept = step_signal_step(false).await;
    assert_eq!(cleared.results, "x.a.go");
    assert_eq!(cleared.results, kept.results);
    assert_eq!(
        cleared.histories, kept.histories,
        "identical in normalised form"
    );
    assert_eq!(kept.stats.cache_misses, 1);
    assert_eq!(
        cleared.stats.cache_misses, 2,
        "the task after the clear replayed from history"
    );
    kept.engine.check_histories().await;
    cleared.engine.check_histories().await;
}

/// The `values` workflow: reads random, uuid, now and a side effect whose
/// function counts its calls; records them through an activity (so the history
/// holds what the code saw live), sleeps, and returns them.
fn values_registry(side_effect_calls: Arc<AtomicU64>) -> WorkflowRegistry {
    let mut registry = registry();
    registry.register_fn("values", move |ctx: WorkflowContext, (): ()| {
        let calls = side_effect_calls.clone();
        async move {
            let values = Values {
                random: ctx.random(),
                uuid: ctx.uuid(),
                now: ctx.now(),
                side_effect: ctx.side_effect(|| 1_000 + calls.fetch_add(1, Ordering::SeqCst))?,
            };
            let recorded = ctx.activity::<Record>(values.clone()).await?;
            ctx.sleep(Duration::from_secs(5)).await?;
            assert_eq!(recorded, values);
            Ok::<Values, WorkflowError>(values)
        }
    });
    registry
}

fn recorded_values(history: &History) -> Values {
    let EventKind::ActivityTaskScheduled(scheduled) =
        &events_of(history, "ActivityTaskScheduled")[0].kind
    else {
        unreachable!()
    };
    serde_json::from_value(scheduled.input.clone()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn side_effect_random_uuid_and_now_are_stable_across_a_cache_eviction() {
    let calls = Arc::new(AtomicU64::new(0));
    let engine = TestEngine::new(values_registry(calls.clone())).await;
    let worker = worker(&engine, "q").start();
    let client = engine.client();
    let mut seen = Vec::new();
    for (workflow_id, evict) in [("evicted", true), ("kept", false)] {
        let misses_before = worker.stats().cache_misses;
        client
            .start_by_name(StartOptions::new(workflow_id, "q"), "values", json!(null))
            .await
            .unwrap();
        wait_for(&engine, workflow_id, "sleeping", |d| {
            !d.pending_timers.is_empty()
        })
        .await;
        if evict {
            worker.clear_cache();
        }
        let handle = client.handle::<Values>(workflow_id, None);
        let values = handle.result().await.unwrap();
        let history = handle.history().await.unwrap();
        assert_eq!(
            values,
            recorded_values(&history),
            "{workflow_id}: the result is what the code saw live"
        );
        assert_eq!(
            values.now,
            event_time(&history, "WorkflowTaskStarted"),
            "now is the first workflow task's time"
        );
        assert_eq!(values.uuid.len(), 36);
        assert_eq!(
            values.uuid.as_bytes()[14],
            b'4',
            "a version 4 uuid: {}",
            values.uuid
        );
        let marker = events_of(&history, "MarkerRecorded")[0];
        let EventKind::MarkerRecorded(marker) = &marker.kind else {
            unreachable!()
        };
        assert_eq!(marker.marker_name, SIDE_EFFECT_MARKER_NAME);
        assert_eq!(marker.details["value"], json!(values.side_effect));
        let misses = worker.stats().cache_misses - misses_before;
        assert_eq!(misses, if evict { 2 } else { 1 }, "{workflow_id}");
        seen.push(values);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "each run's side effect ran once, never on replay"
    );
    assert_eq!((seen[0].side_effect, seen[1].side_effect), (1_000, 1_001));
    assert_ne!(seen[0].random, seen[1].random, "random is seeded per run");
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_query_replayed_after_eviction_reads_the_side_effect_back_instead_of_running_it() {
    let calls = Arc::new(AtomicU64::new(0));
    let mut registry = registry();
    let counted = calls.clone();
    registry.register_fn("side_effect_query", move |ctx: WorkflowContext, (): ()| {
        let calls = counted.clone();
        async move {
            let value = ctx.side_effect(|| 1_000 + calls.fetch_add(1, Ordering::SeqCst))?;
            ctx.query_handler("value", move |(): ()| value);
            let _: String = ctx.signal("finish").recv().await?;
            Ok::<u64, WorkflowError>(value)
        }
    });
    let engine = TestEngine::new(registry.clone()).await;
    let worker = engine.engine.worker("q").workflows(registry).start();
    let client = engine.client();
    client
        .start_by_name(
            StartOptions::new("once", "q"),
            "side_effect_query",
            json!(null),
        )
        .await
        .unwrap();
    wait_for(&engine, "once", "waiting for finish", waits_for_a_signal).await;
    worker.clear_cache();
    let handle = client.handle::<u64>("once", None);
    for _ in 0..2 {
        let answer: u64 = handle.query("value", ()).await.unwrap();
        assert_eq!(answer, 1_000, "the recorded value, read back by the replay");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the side effect ran once, live"
    );
    handle.signal("finish", "ana").await.unwrap();
    assert_eq!(handle.result().await.unwrap(), 1_000);
    worker.shutdown().await;
    engine.check_histories().await;
}

// ---------------------------------------------------------------------------
// Failing workflow code, unknown types, patches
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_panicking_workflow_task_fails_is_retried_with_backoff_and_can_be_terminated() {
    let engine = TestEngine::new(registry()).await;
    let worker = worker(&engine, "q").start_two();
    let client = engine.client();
    let handle = client
        .start::<Panics>(StartOptions::new("buggy", "q"), "x".to_string())
        .await
        .unwrap();
    sleep_ms(&engine, 10_000).await;

    let description = handle.describe().await.unwrap();
    assert_eq!(description.status, RunStatus::Running);
    let failure = description
        .last_workflow_task_failure
        .expect("describe says why the task fails");
    assert_eq!(failure.failure_type, "Panic");
    assert!(
        failure
            .message
            .contains("boom: the workflow code has a bug"),
        "{}",
        failure.message
    );

    let history = handle.history().await.unwrap();
    let failed = events_of(&history, "WorkflowTaskFailed");
    assert!(failed.len() >= 3, "retried: {:?}", names(&history));
    for event in &failed {
        let EventKind::WorkflowTaskFailed(f) = &event.kind else {
            unreachable!()
        };
        assert_eq!(
            f.cause,
            WorkflowTaskFailedCause::WorkflowWorkerUnhandledFailure
        );
        assert!(f.failure.message.contains("boom"), "{}", f.failure.message);
    }
    // Each retry waits longer: at least 1 s, 2 s, 4 s after the failure before it.
    let events = history.events();
    for (n, event) in failed.iter().enumerate().take(3) {
        let index = (event.event_id - 1) as usize;
        let retry = &events[index + 1];
        let EventKind::WorkflowTaskScheduled(scheduled) = &retry.kind else {
            panic!(
                "a failed task is followed by its retry, got {}",
                retry.kind.name()
            )
        };
        assert_eq!(scheduled.attempt, n as u32 + 2);
        let waited = retry.event_time.millis_since(event.event_time);
        assert!(
            waited >= 1_000 << n,
            "retry {} came after {waited} ms",
            n + 1
        );
    }
    assert!(
        events_of(&history, "WorkflowExecutionFailed").is_empty(),
        "a bug does not fail the run"
    );

    handle.terminate("fixing the bug").await.unwrap();
    assert!(matches!(
        handle.outcome().await.unwrap(),
        RunOutcome::Terminated { .. }
    ));
    let closed = handle.history().await.unwrap();
    assert_eq!(
        closed.events().last().unwrap().kind.name(),
        "WorkflowExecutionTerminated"
    );
    assert_eq!(handle.describe().await.unwrap().workflow_task, None);
    worker.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn an_unknown_workflow_type_fails_its_workflow_task_and_is_refused_once_workers_poll() {
    // The replay check knows "mystery"; the workers do not.
    let mut with_mystery = registry();
    with_mystery.register_fn("mystery", |_ctx: WorkflowContext, (): ()| async move {
        Ok("solved".to_string())
    });
    let engine = TestEngine::new(with_mystery).await;
    let client = engine.client();
    let options = StartOptions::new("mystery-1", "fresh");
    let run_id = client
        .start_by_name(options, "mystery", json!(null))
        .await
        .expect("no worker polled this queue yet");

    let worker = engine.engine.worker("fresh").workflows(registry()).start();
    let description = wait_for(&engine, "mystery-1", "its workflow task failed", |d| {
        d.last_workflow_task_failure.is_some()
    })
    .await;
    let failure = description.last_workflow_task_failure.unwrap();
    assert_eq!(failure.failure_type, "UnknownWorkflowType");
    assert!(
        failure.message.contains("\"mystery\"") && failure.message.contains("sequential"),
        "{}",
        failure.message
    );
    let history = client.history("mystery-1", Some(&run_id)).await.unwrap();
    let EventKind::WorkflowTaskFailed(failed) = &events_of(&history, "WorkflowTaskFailed")[0].kind
    else {
        unreachable!()
    };
    assert_eq!(
        failed.cause,
        WorkflowTaskFailedCause::WorkflowWorkerUnhandledFailure
    );

    let refused = client
        .start_by_name(
            StartOptions::new("mystery-2", "fresh"),
            "mystery",
            json!(null),
        )
        .await;
    let (code, message) = code_of(refused);
    assert_eq!(code, ErrorCode::UnknownWorkflowType);
    assert!(
        message.contains("\"mystery\"") && message.contains("\"fresh\""),
        "{message}"
    );
    assert!(
        client.describe("mystery-2", None).await.is_err(),
        "nothing was stored for the refused start"
    );

    client
        .terminate("mystery-1", None, "no worker runs it")
        .await
        .unwrap();
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_new_run_takes_the_patched_path_and_records_a_patch_marker() {
    let engine = TestEngine::new(registry()).await;
    let worker = worker(&engine, "q").start_two();
    let handle = engine
        .client()
        .start::<PatchedWorkflow>(StartOptions::new("patch", "q"), "x".to_string())
        .await
        .unwrap();
    assert_eq!(handle.result().await.unwrap(), "x took v2");
    let history = handle.history().await.unwrap();
    let expected = shape(&[
        &WORKFLOW_TASK,
        &[
            "MarkerRecorded",
            "UpsertWorkflowSearchAttributes",
            "ActivityTaskScheduled",
            "ActivityTaskStarted",
            "ActivityTaskCompleted",
        ],
        &WORKFLOW_TASK,
        &["WorkflowExecutionCompleted"],
    ]);
    assert_eq!(names(&history), expected);
    let EventKind::MarkerRecorded(marker) = &history.events()[4].kind else {
        unreachable!()
    };
    assert_eq!(marker.marker_name, PATCH_MARKER_NAME);
    assert_eq!(marker.marker_name, "core_patch", "Temporal's name");
    assert_eq!(
        marker.details,
        json!({"patch_id": "v2", "deprecated": false})
    );
    assert_eq!(marker.workflow_task_completed_event_id, 4);
    let EventKind::UpsertWorkflowSearchAttributes(upsert) = &history.events()[5].kind else {
        unreachable!()
    };
    let versions = retrace::visibility::SearchValue::KeywordList(vec!["v2".to_string()]);
    let expected = [("TemporalChangeVersion".to_string(), versions)].into();
    assert_eq!(upsert.search_attributes, expected);
    worker.shutdown().await;
    engine.check_histories().await;
}

// ---------------------------------------------------------------------------
// List and describe
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn list_filters_by_status_and_pages_through_every_run() {
    let engine = TestEngine::new(registry()).await;
    let worker = worker(&engine, "q").start_two();
    let client = engine.client();
    for i in 0..5 {
        client
            .start::<AwaitSignal>(StartOptions::new(format!("list-{i}"), "q"), ())
            .await
            .unwrap();
    }
    for i in 0..3 {
        let handle = client.handle::<String>(&format!("list-{i}"), None);
        handle.signal("finish", "ok").await.unwrap();
        handle.result().await.unwrap();
    }
    let ids = |runs: Vec<retrace::api::RunSummary>| {
        let mut ids: Vec<String> = runs.into_iter().map(|r| r.workflow_id).collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(client.list_all(Some(RunStatus::Completed)).await.unwrap()),
        ["list-0", "list-1", "list-2"]
    );
    assert_eq!(
        ids(client.list_all(Some(RunStatus::Running)).await.unwrap()),
        ["list-3", "list-4"]
    );
    assert!(
        client
            .list_all(Some(RunStatus::Failed))
            .await
            .unwrap()
            .is_empty()
    );

    let mut pages = Vec::new();
    let mut page_token = None;
    loop {
        let request = ListWorkflowsRequest {
            page_size: 2,
            page_token,
            ..Default::default()
        };
        let page = client.list(request).await.unwrap();
        pages.push(page.runs.len());
        page_token = page.next_page_token;
        if page_token.is_none() {
            break;
        }
        assert!(pages.len() < 10, "paging must end");
    }
    assert_eq!(pages, [2, 2, 1]);
    let mut all = Vec::new();
    let mut page_token = None;
    for _ in 0..3 {
        let request = ListWorkflowsRequest {
            page_size: 2,
            page_token,
            ..Default::default()
        };
        let page = client.list(request).await.unwrap();
        all.extend(page.runs);
        page_token = page.next_page_token;
    }
    assert_eq!(
        ids(all),
        ["list-0", "list-1", "list-2", "list-3", "list-4"],
        "every run once"
    );

    let request = ListWorkflowsRequest {
        status: Some(RunStatus::Running),
        page_size: 1,
        ..Default::default()
    };
    let first = client.list(request.clone()).await.unwrap();
    assert_eq!(first.runs.len(), 1);
    let second = client
        .list(ListWorkflowsRequest {
            page_token: first.next_page_token,
            ..request
        })
        .await
        .unwrap();
    assert_eq!(second.runs.len(), 1);
    assert_ne!(first.runs[0].run_id, second.runs[0].run_id);
    assert!(second.runs.iter().all(|r| r.status == RunStatus::Running));

    for i in 3..5 {
        client
            .signal(&format!("list-{i}"), None, "finish", "ok")
            .await
            .unwrap();
        client
            .handle::<String>(&format!("list-{i}"), None)
            .result()
            .await
            .unwrap();
    }
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 5);
}

#[tokio::test(start_paused = true)]
async fn describe_shows_a_running_runs_pending_activity_and_timer() {
    let engine = TestEngine::new(registry()).await;
    let worker = worker(&engine, "q").start_two();
    let handle = engine
        .client()
        .start::<DescribeMe>(StartOptions::new("described", "q"), ())
        .await
        .unwrap();
    let backing_off = wait_for(&engine, "described", "the activity backs off", |d| {
        d.pending_activities
            .first()
            .is_some_and(|a| a.state == "BackingOff")
    })
    .await;
    let activity = &backing_off.pending_activities[0];
    assert_eq!(
        (
            activity.activity_id.as_str(),
            activity.activity_type.as_str()
        ),
        ("1", "flaky_then_slow")
    );
    assert_eq!(
        activity.last_failure.as_ref().map(|f| f.message.as_str()),
        Some("attempt 1 failed")
    );

    sleep_ms(&engine, 1_500).await;
    let description = handle.describe().await.unwrap();
    assert_eq!(description.status, RunStatus::Running);
    assert_eq!(description.workflow_type, "describe_me");
    assert_eq!(description.workflow_task, None);
    let activity = &description.pending_activities[0];
    assert_eq!((activity.state.as_str(), activity.attempt), ("Started", 2));
    assert_eq!(
        activity.last_failure.as_ref().map(|f| f.message.as_str()),
        Some("attempt 1 failed")
    );
    let history = handle.history().await.unwrap();
    assert_eq!(description.history_length, history.len() as u64);
    assert_eq!(description.pending_timers.len(), 1);
    let timer = &description.pending_timers[0];
    assert_eq!(timer.timer_id, "1");
    assert_eq!(
        timer.fire_time,
        event_time(&history, "TimerStarted").plus_ms(60_000)
    );

    assert_eq!(handle.result().await.unwrap(), "job on attempt 2");
    let description = handle.describe().await.unwrap();
    assert_eq!(description.status, RunStatus::Completed);
    assert!(description.pending_activities.is_empty() && description.pending_timers.is_empty());
    worker.shutdown().await;
    engine.check_histories().await;
}

// ---------------------------------------------------------------------------
// The order-of-messages app
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_order_of_messages_workflow_runs_end_to_end_on_two_workers() {
    let engine = TestEngine::new(registry()).await;
    let alpha = worker(&engine, "messages").identity("alpha").start();
    let beta = worker(&engine, "messages").identity("beta").start();
    let client = engine.client();
    let handle = client
        .start::<OrderOfMessages>(StartOptions::new("order-7", "messages"), 7)
        .await
        .unwrap();

    let waiting = wait_for(
        &engine,
        "order-7",
        "waiting for proceed",
        waits_for_a_signal,
    )
    .await;
    assert_eq!(waiting.status, RunStatus::Running);
    let history = handle.history().await.unwrap();
    assert_eq!(
        events_of(&history, "ActivityTaskCompleted").len(),
        2,
        "fetched and verified"
    );
    assert!(events_of(&history, "WorkflowExecutionSignaled").is_empty());
    handle.signal("proceed", "go ahead").await.unwrap();

    let log = handle.result().await.unwrap();
    let texts: Vec<&str> = log.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "started",
            "slept 5 s",
            "message: hello from the database",
            "verified by Inspector #23",
            "proceed: go ahead",
            "joke: there are 10 kinds of people",
            "pokemon: pikachu",
        ]
    );
    assert!(
        log.windows(2).all(|w| w[0].at <= w[1].at),
        "chronological: {log:?}"
    );
    let at = |text: &str| log.iter().find(|m| m.text.starts_with(text)).unwrap().at;
    assert!(at("slept").millis_since(at("started")) >= 5_000);
    assert!(at("message").millis_since(at("slept")) >= 200);
    assert!(at("verified").millis_since(at("message")) >= 300);
    assert!(at("joke").millis_since(at("proceed")) >= 100);
    assert!(at("pokemon").millis_since(at("proceed")) >= 500);

    let history = handle.history().await.unwrap();
    let fired_after =
        event_time(&history, "TimerFired").millis_since(event_time(&history, "TimerStarted"));
    assert!(fired_after >= 5_000, "a durable 5 s timer");
    let tasks = scheduling_tasks(&history);
    assert_eq!(
        tasks["fetch_pokemon"], tasks["fetch_joke"],
        "the two fetches were scheduled in one workflow task"
    );
    assert!(tasks["verify"] < tasks["fetch_pokemon"]);
    let completed_tasks = events_of(&history, "WorkflowTaskCompleted").len() as u64;
    alpha.shutdown().await;
    beta.shutdown().await;
    assert_eq!(
        alpha.stats().workflow_tasks + beta.stats().workflow_tasks,
        completed_tasks
    );
    for event in history.events() {
        if let EventKind::WorkflowTaskStarted(started) = &event.kind {
            assert!(
                ["alpha", "beta"].contains(&started.identity.as_str()),
                "{}",
                started.identity
            );
        }
    }
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_workflow_task_scheduled_while_a_poller_waits_starts_in_the_same_write() {
    let storage = std::sync::Arc::new(retrace::env::MemoryStorage::new());
    let engine = TestEngine::over(storage.clone(), registry()).await;
    let worker = worker(&engine, "sync").start_two();
    // Let the worker's polls reach the service and wait there.
    engine.engine.env().sleep_ms(10).await;
    let before = engine.engine.service().sync_matches();
    let handle = engine
        .client()
        .start::<AwaitSignal>(StartOptions::new("sync-match", "sync"), ())
        .await
        .unwrap();
    handle.signal("finish", "now").await.unwrap();
    assert_eq!(handle.result().await.unwrap(), "now");
    assert_eq!(
        engine.engine.service().sync_matches() - before,
        2,
        "the start's task and the signal's task"
    );
    let stored = retrace::env::Storage::read_run(&*storage, &handle.run_id)
        .await
        .unwrap()
        .unwrap();
    // Four writes: the start with its task started, the first completion, the
    // signal with its task started, the closing completion. Polling would
    // have taken two more, one per task start.
    assert_eq!(
        stored.version, 4,
        "each matched task started in the write that scheduled it"
    );
    worker.shutdown().await;
    engine.check_histories().await;
}
