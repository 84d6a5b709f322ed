//! Child workflows end to end (client, service, workers on two task queues,
//! tokio's paused clock): the parent awaits the child's start and result,
//! both histories name each other (Temporal's events), a taken id fails the
//! start, parent close policies land, and a service that stops between the
//! parent's command and the child's start, or between the parent's close
//! and its policy, finishes the job when it starts again. Every test ends by
//! replaying every history three ways.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::engine::{HookedStorage, StartTwo, TestEngine, WriteHook};
use retrace::api::{
    CompleteWorkflowTaskRequest, ErrorCode, PollTaskRequest, Request, Response, RunOutcome,
};
use retrace::client::StartOptions;
use retrace::engine::{EmbeddedEngine, ServiceConfig};
use retrace::env::{MemoryStorage, RunStatus, Storage, StorageError};
use retrace::history::{EventKind, History, StartChildFailedCause};
use retrace::types::ParentClosePolicy;
use retrace::workflow::{
    ChildWorkflowError, Command, StartChildWorkflowExecution, Workflow, WorkflowContext,
    WorkflowError, WorkflowRegistry, WorkflowResult,
};
use serde::{Deserialize, Serialize};

/// Doubles its input after a second; fails on negative numbers.
struct Doubler;
impl Workflow for Doubler {
    const NAME: &'static str = "doubler";
    type Input = i64;
    type Output = i64;
    async fn run(ctx: WorkflowContext, n: i64) -> WorkflowResult<i64> {
        ctx.sleep(Duration::from_secs(1)).await?;
        if n < 0 {
            return Err(WorkflowError::application("Negative", format!("{n} < 0")));
        }
        Ok(n * 2)
    }
}

/// Waits for signal "go" (an hour at most), then returns it; continues as
/// new once first if told to.
struct Waiter;
impl Workflow for Waiter {
    const NAME: &'static str = "waiter";
    type Input = bool;
    type Output = String;
    async fn run(ctx: WorkflowContext, continue_first: bool) -> WorkflowResult<String> {
        if continue_first {
            return Err(ctx.continue_as_new(&false));
        }
        ctx.signal::<String>("go").recv().await
    }
}

/// What a parent does with its child.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Plan {
    /// Awaits a doubler of `n` on queue "children" under id `id`.
    Double { id: String, n: i64 },
    /// Starts a waiter `id` with `policy`, and completes without waiting.
    StartAndLeave {
        id: String,
        policy: ParentClosePolicy,
    },
    /// Starts a waiter (continuing once if told), signals it "go", returns its result.
    Signal { id: String, continue_first: bool },
    /// Starts a waiter and awaits it (cancel the parent to cancel both).
    Await { id: String },
}

struct Parent;
impl Workflow for Parent {
    const NAME: &'static str = "parent";
    type Input = Plan;
    type Output = String;
    async fn run(ctx: WorkflowContext, plan: Plan) -> WorkflowResult<String> {
        match plan {
            Plan::Double { id, n } => {
                let child = ctx.child_workflow::<Doubler>(n).workflow_id(id);
                match child.task_queue("children").await {
                    Ok(doubled) => Ok(doubled.to_string()),
                    Err(WorkflowError::Child(error)) => Ok(format!("child: {error}")),
                    Err(other) => Err(other),
                }
            }
            Plan::StartAndLeave { id, policy } => {
                let child = ctx.child_workflow::<Waiter>(false).workflow_id(id);
                let child = child.parent_close_policy(policy).start().await?;
                Ok(child.run_id().to_string())
            }
            Plan::Signal { id, continue_first } => {
                let child = ctx.child_workflow::<Waiter>(continue_first).workflow_id(id);
                let child = child.start().await?;
                child.signal("go", &"went").await?;
                child.result().await
            }
            Plan::Await { id } => ctx.child_workflow::<Waiter>(false).workflow_id(id).await,
        }
    }
}

fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry
        .register::<Parent>()
        .register::<Doubler>()
        .register::<Waiter>();
    registry
}

fn kinds(history: &History) -> Vec<&EventKind> {
    history.events().iter().map(|e| &e.kind).collect()
}

fn names(history: &History) -> Vec<&'static str> {
    history.events().iter().map(|e| e.kind.name()).collect()
}

async fn run_parent(engine: &TestEngine, id: &str, plan: Plan) -> String {
    let client = engine.client();
    let options = StartOptions::new(id, "q");
    let handle = client.start::<Parent>(options, plan).await.unwrap();
    handle.result().await.unwrap()
}

async fn status(engine: &TestEngine, workflow_id: &str) -> RunStatus {
    let described = engine.client().describe(workflow_id, None).await.unwrap();
    described.status
}

#[tokio::test(start_paused = true)]
async fn a_parent_awaits_its_childs_result_on_another_queue_and_the_histories_name_each_other() {
    let engine = TestEngine::new(registry()).await;
    let parents = engine.engine.worker("q").workflows(registry()).start_two();
    let children = engine
        .engine
        .worker("children")
        .workflows(registry())
        .start();
    let plan = Plan::Double {
        id: "double-21".to_string(),
        n: 21,
    };
    assert_eq!(run_parent(&engine, "parent", plan).await, "42");

    let parent = engine.client().history("parent", None).await.unwrap();
    let child = engine.client().history("double-21", None).await.unwrap();
    let initiated = parent.events().iter().find_map(|e| match &e.kind {
        EventKind::StartChildWorkflowExecutionInitiated(a) => Some((e.event_id, a.clone())),
        _ => None,
    });
    let (initiated_id, initiated) = initiated.expect("the parent initiated the child");
    assert_eq!(
        (
            initiated.workflow_type.as_str(),
            initiated.task_queue.as_str()
        ),
        ("doubler", "children")
    );
    let EventKind::WorkflowExecutionStarted(started) = &child.events()[0].kind else {
        panic!("a run starts with WorkflowExecutionStarted");
    };
    let named = started.parent.clone().expect("the child names its parent");
    assert_eq!(
        (named.run_id.as_str(), named.initiated_event_id),
        (parent.run_id(), initiated_id)
    );
    let recorded: Vec<_> = kinds(&parent)
        .into_iter()
        .filter_map(|k| match k {
            EventKind::ChildWorkflowExecutionStarted(a) => Some(format!("started {}", a.run_id)),
            EventKind::ChildWorkflowExecutionCompleted(a) => {
                Some(format!("completed {}", a.result))
            }
            _ => None,
        })
        .collect();
    let expected = [
        format!("started {}", child.run_id()),
        "completed 42".to_string(),
    ];
    assert_eq!(recorded, expected);
    parents.shutdown().await;
    children.shutdown().await;
    assert_eq!(engine.check_histories().await, 2);
}

#[tokio::test(start_paused = true)]
async fn a_child_that_fails_fails_the_parents_await_with_its_failure() {
    let engine = TestEngine::new(registry()).await;
    let parents = engine.engine.worker("q").workflows(registry()).start();
    let children = engine
        .engine
        .worker("children")
        .workflows(registry())
        .start();
    let plan = Plan::Double {
        id: "negative".to_string(),
        n: -1,
    };
    let said = run_parent(&engine, "parent", plan).await;
    assert!(
        said.starts_with("child: child workflow \"negative\" failed"),
        "{said}"
    );
    assert!(said.contains("-1 < 0"), "{said}");
    let parent = engine.client().history("parent", None).await.unwrap();
    assert!(names(&parent).contains(&"ChildWorkflowExecutionFailed"));
    parents.shutdown().await;
    children.shutdown().await;
    assert_eq!(engine.check_histories().await, 2);
}

#[tokio::test(start_paused = true)]
async fn a_child_whose_workflow_id_is_running_is_not_started_and_the_parent_is_told_why() {
    let engine = TestEngine::new(registry()).await;
    let workers = engine.engine.worker("q").workflows(registry()).start();
    let children = engine
        .engine
        .worker("children")
        .workflows(registry())
        .start();
    let taken = engine.client();
    let taken = taken.start::<Waiter>(StartOptions::new("taken", "q"), false);
    let taken = taken.await.unwrap();
    let plan = Plan::Double {
        id: "taken".to_string(),
        n: 1,
    };
    let said = run_parent(&engine, "parent", plan).await;
    let expected = ChildWorkflowError::AlreadyStarted {
        workflow_id: "taken".to_string(),
    };
    assert_eq!(said, format!("child: {expected}"));
    let parent = engine.client().history("parent", None).await.unwrap();
    let cause = kinds(&parent).into_iter().find_map(|k| match k {
        EventKind::StartChildWorkflowExecutionFailed(a) => Some(a.cause),
        _ => None,
    });
    assert_eq!(cause, Some(StartChildFailedCause::WorkflowAlreadyExists));
    let runs = engine.client().list_all(None).await.unwrap();
    let of_taken = runs.iter().filter(|r| r.workflow_id == "taken").count();
    assert_eq!(of_taken, 1, "no second run of the taken id");
    assert_eq!(
        status(&engine, "taken").await,
        RunStatus::Running,
        "untouched"
    );
    taken.terminate("test over").await.unwrap();
    workers.shutdown().await;
    children.shutdown().await;
    assert_eq!(engine.check_histories().await, 2);
}

#[tokio::test(start_paused = true)]
async fn each_parent_close_policy_does_what_it_says_when_the_parent_completes() {
    let engine = TestEngine::new(registry()).await;
    let workers = engine.engine.worker("q").workflows(registry()).start_two();
    let policies = [
        (
            "terminated",
            ParentClosePolicy::Terminate,
            RunStatus::Terminated,
        ),
        (
            "canceled",
            ParentClosePolicy::RequestCancel,
            RunStatus::Canceled,
        ),
        ("abandoned", ParentClosePolicy::Abandon, RunStatus::Running),
    ];
    for (id, policy, _) in policies {
        let plan = Plan::StartAndLeave {
            id: id.to_string(),
            policy,
        };
        run_parent(&engine, &format!("parent-{id}"), plan).await;
    }
    for (id, _, expected) in policies {
        let mut seen = status(&engine, id).await;
        for _ in 0..100 {
            if seen == expected {
                break;
            }
            engine.engine.env().sleep_ms(100).await;
            seen = status(&engine, id).await;
        }
        assert_eq!(seen, expected, "child {id}");
    }
    let terminated = engine.client().history("terminated", None).await.unwrap();
    let reason = kinds(&terminated).into_iter().find_map(|k| match k {
        EventKind::WorkflowExecutionTerminated(a) => Some(a.reason.clone()),
        _ => None,
    });
    let reason = reason.expect("terminated");
    assert!(reason.contains("parent close policy Terminate"), "{reason}");
    let abandoned = engine.client().handle::<String>("abandoned", None);
    abandoned.signal("go", &"still here").await.unwrap();
    assert_eq!(abandoned.result().await.unwrap(), "still here");
    workers.shutdown().await;
    assert_eq!(engine.check_histories().await, 6);
}

#[tokio::test(start_paused = true)]
async fn a_parent_signals_its_child_and_gets_the_result_of_the_childs_last_run() {
    let engine = TestEngine::new(registry()).await;
    let workers = engine.engine.worker("q").workflows(registry()).start_two();
    let plan = Plan::Signal {
        id: "continuing".to_string(),
        continue_first: true,
    };
    assert_eq!(run_parent(&engine, "parent", plan).await, "went");
    let parent = engine.client().history("parent", None).await.unwrap();
    let child_runs: Vec<(String, String)> = kinds(&parent)
        .into_iter()
        .filter_map(|k| match k {
            EventKind::ChildWorkflowExecutionStarted(a) => {
                Some(("started".into(), a.run_id.clone()))
            }
            EventKind::ChildWorkflowExecutionCompleted(a) => {
                Some(("completed".into(), a.run_id.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(child_runs.len(), 2, "{child_runs:?}");
    assert_ne!(
        child_runs[0].1, child_runs[1].1,
        "the chain's last run closed it"
    );
    let last = engine.client().history("continuing", None).await.unwrap();
    assert_eq!(last.run_id(), child_runs[1].1);
    let EventKind::WorkflowExecutionStarted(started) = &last.events()[0].kind else {
        panic!("a run starts with WorkflowExecutionStarted");
    };
    assert_eq!(
        started.parent.as_ref().map(|p| p.run_id.as_str()),
        Some(parent.run_id()),
        "a continued child keeps its parent"
    );
    workers.shutdown().await;
    assert_eq!(engine.check_histories().await, 3);
}

#[tokio::test(start_paused = true)]
async fn canceling_a_parent_cancels_the_child_it_awaits_and_both_close_canceled() {
    let engine = TestEngine::new(registry()).await;
    let workers = engine.engine.worker("q").workflows(registry()).start_two();
    let client = engine.client();
    let plan = Plan::Await {
        id: "awaited".to_string(),
    };
    let parent = client.start::<Parent>(StartOptions::new("parent", "q"), plan);
    let parent = parent.await.unwrap();
    while client.describe("awaited", None).await.is_err() {
        engine.engine.env().sleep_ms(10).await;
    }
    parent.cancel("enough").await.unwrap();
    let outcome = parent.outcome().await.unwrap();
    assert!(
        matches!(outcome, RunOutcome::Canceled { .. }),
        "{outcome:?}"
    );
    assert_eq!(status(&engine, "awaited").await, RunStatus::Canceled);
    let history = client.history("parent", None).await.unwrap();
    let names = names(&history);
    for name in [
        "RequestCancelExternalWorkflowExecutionInitiated",
        "ChildWorkflowExecutionCanceled",
        "WorkflowExecutionCanceled",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    workers.shutdown().await;
    assert_eq!(engine.check_histories().await, 2);
}

/// Storage whose writes to workflow `blocked`'s runs fail while `on` holds
/// (all of them, or all but its creation).
fn blocking(
    memory: Arc<MemoryStorage>,
    on: Arc<std::sync::atomic::AtomicBool>,
    creation_too: bool,
) -> Arc<HookedStorage> {
    let write: WriteHook = Box::new(move |inner, batch| {
        let is_creation = batch.expected_version.is_none();
        let blocked = batch.run.workflow_id == "blocked"
            && on.load(std::sync::atomic::Ordering::SeqCst)
            && (creation_too || !is_creation);
        let written = if blocked {
            Err(StorageError::Io("the disk is gone".to_string()))
        } else {
            inner.apply(batch)
        };
        Box::pin(async move { written })
    });
    HookedStorage::new(memory, write)
}

fn giving_up_soon() -> ServiceConfig {
    ServiceConfig {
        resync_attempts_max: 2,
        ..ServiceConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_child_not_started_when_the_service_stopped_is_started_once_after_a_restart() {
    let memory = Arc::new(MemoryStorage::new());
    let on = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let storage = blocking(memory.clone(), on.clone(), true);
    let first = EmbeddedEngine::start(storage, giving_up_soon())
        .await
        .unwrap();
    let worker = first.worker("q").workflows(registry()).start();
    let plan = Plan::Signal {
        id: "blocked".to_string(),
        continue_first: false,
    };
    let client = first.client();
    let parent = client.start::<Parent>(StartOptions::new("parent", "q"), plan);
    let parent_run = parent.await.unwrap().run_id;
    // The parent's command is written; every start of the child fails.
    first.env().sleep_ms(30_000).await;
    assert_eq!(memory.current_run("blocked").await.unwrap(), None);
    worker.shutdown().await;
    drop(first);

    on.store(false, std::sync::atomic::Ordering::SeqCst);
    let engine = TestEngine::over(memory.clone(), registry()).await;
    let workers = engine.engine.worker("q").workflows(registry()).start_two();
    let handle = engine
        .client()
        .handle::<String>("parent", Some(&parent_run));
    assert_eq!(handle.result().await.unwrap(), "went");
    let runs = engine.client().list_all(None).await.unwrap();
    let children = runs.iter().filter(|r| r.workflow_id == "blocked").count();
    assert_eq!(children, 1, "started once");
    workers.shutdown().await;
    assert_eq!(engine.check_histories().await, 2);
}

#[tokio::test(start_paused = true)]
async fn a_parent_close_policy_not_applied_when_the_service_stopped_is_applied_after_a_restart() {
    common::init_logs();
    let memory = Arc::new(MemoryStorage::new());
    let on = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let storage = blocking(memory.clone(), on.clone(), false);
    let first = EmbeddedEngine::start(storage, giving_up_soon())
        .await
        .unwrap();
    let worker = first.worker("q").workflows(registry()).start();
    let plan = Plan::StartAndLeave {
        id: "blocked".to_string(),
        policy: ParentClosePolicy::Terminate,
    };
    let client = first.client();
    let parent = client.start::<Parent>(StartOptions::new("parent", "q"), plan);
    let parent = parent.await.unwrap();
    // The child is created; nothing after that reaches its run.
    let handle = first
        .client()
        .handle::<String>("parent", Some(&parent.run_id));
    handle.result().await.unwrap();
    first.env().sleep_ms(30_000).await;
    let child = first.client().describe("blocked", None).await.unwrap();
    assert_eq!(
        child.status,
        RunStatus::Running,
        "the terminate could not land"
    );
    worker.shutdown().await;
    drop(first);

    on.store(false, std::sync::atomic::Ordering::SeqCst);
    let engine = TestEngine::over(memory.clone(), registry()).await;
    let client = engine.client();
    let outcome = client
        .outcome_within("blocked", None, 60_000)
        .await
        .unwrap();
    assert!(
        matches!(outcome, Some(RunOutcome::Terminated { .. })),
        "the child is not terminated: {outcome:?}"
    );
    assert_eq!(engine.check_histories().await, 2);
}

async fn complete_by_hand(
    engine: &TestEngine,
    command: StartChildWorkflowExecution,
) -> retrace::api::ServiceError {
    let poll = Request::PollWorkflowTask(PollTaskRequest {
        task_queue: "q".into(),
        identity: "by-hand".into(),
        workflow_types: vec!["parent".into()],
    });
    let token = match engine.engine.service().handle(poll).await.unwrap() {
        Response::PollWorkflowTask(response) => response.task.expect("a task").task_token,
        other => panic!("{other:?}"),
    };
    let complete = Request::CompleteWorkflowTask(CompleteWorkflowTaskRequest {
        task_token: token,
        commands: vec![Command::StartChildWorkflowExecution(command)],
        identity: "by-hand".into(),
        eager_activities_max: 0,
        update_rejections: Vec::new(),
    });
    let refused = engine.engine.service().handle(complete).await;
    refused.expect_err("the command is refused")
}

fn start_child(workflow_id: &str, input: serde_json::Value) -> StartChildWorkflowExecution {
    StartChildWorkflowExecution {
        seq: "1".into(),
        workflow_id: workflow_id.into(),
        workflow_type: "doubler".into(),
        task_queue: None,
        input,
        execution_timeout_ms: None,
        workflow_task_timeout_ms: None,
        parent_close_policy: ParentClosePolicy::Terminate,
        workflow_id_reuse_policy: retrace::types::IdReusePolicy::AllowDuplicate,
    }
}

#[tokio::test(start_paused = true)]
async fn a_child_with_an_input_over_the_limit_or_a_blank_id_fails_the_task_and_starts_nothing() {
    let engine = TestEngine::new(registry()).await;
    let client = engine.client();
    let plan = Plan::Await {
        id: "unused".into(),
    };
    let options = StartOptions::new("parent", "q");
    client.start::<Parent>(options, plan).await.unwrap();
    let limit = ServiceConfig::default().limits.payload_bytes_max as usize;
    let huge = serde_json::json!("x".repeat(limit + 1));
    let refused = complete_by_hand(&engine, start_child("big", huge)).await;
    assert_eq!(refused.code, ErrorCode::InvalidArgument, "{refused}");
    assert!(
        refused.message.contains("child workflow input is"),
        "{refused}"
    );
    let refused = complete_by_hand(&engine, start_child("  ", serde_json::json!(1))).await;
    assert!(
        refused.message.contains("workflow_id must not be empty"),
        "{refused}"
    );
    let runs = client.list_all(None).await.unwrap();
    assert_eq!(runs.len(), 1, "no child was started: {runs:?}");
    let history = client.history("parent", None).await.unwrap();
    assert!(
        !names(&history).contains(&"StartChildWorkflowExecutionInitiated"),
        "nothing was initiated"
    );
}
