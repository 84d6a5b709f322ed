//! Signal-with-start end to end (client, service, two workers, tokio's paused
//! clock): it starts a run with the signal in its first write when none runs,
//! signals the running run otherwise, never starts two, and a retry of it
//! starts and signals once. Every test ends by replaying every history.

mod common;

use common::engine::{StartTwo, TestEngine};
use retrace::api::{
    ErrorCode, IdReusePolicy, Request, Response, RunOutcome, SignalWithStartWorkflowRequest,
    StartWorkflowRequest,
};
use retrace::client::{ClientError, StartOptions};
use retrace::history::History;
use retrace::workflow::{Workflow, WorkflowContext, WorkflowRegistry, WorkflowResult};
use serde_json::{Value, json};

/// Collects signals "item" until one says "done"; returns them in order.
struct Collect;
impl Workflow for Collect {
    const NAME: &'static str = "collect";
    type Input = String;
    type Output = Vec<String>;
    async fn run(ctx: WorkflowContext, first: String) -> WorkflowResult<Vec<String>> {
        let items = ctx.signal::<String>("item");
        let mut seen = vec![first];
        loop {
            let item = items.recv().await?;
            let done = item == "done";
            seen.push(item);
            if done {
                return Ok(seen);
            }
        }
    }
}

fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register::<Collect>();
    registry
}

fn names(history: &History) -> Vec<&'static str> {
    history.events().iter().map(|e| e.kind.name()).collect()
}

fn request(workflow_id: &str, request_id: &str, item: &str) -> SignalWithStartWorkflowRequest {
    SignalWithStartWorkflowRequest {
        start: StartWorkflowRequest {
            workflow_id: workflow_id.to_string(),
            workflow_type: "collect".to_string(),
            task_queue: "q".to_string(),
            input: json!("start"),
            execution_timeout_ms: None,
            workflow_task_timeout_ms: None,
            id_reuse_policy: IdReusePolicy::AllowDuplicate,
            request_id: request_id.to_string(),
            identity: "test".to_string(),
            start_delay_ms: None,
            retry_policy: None,
            cron_schedule: None,
            search_attributes: Default::default(),
            memo: Default::default(),
        },
        signal_name: "item".to_string(),
        signal_input: json!(item),
    }
}

/// Sends `request` as is (its request id included); the run id and `started`.
async fn send(
    engine: &TestEngine,
    request: SignalWithStartWorkflowRequest,
) -> Result<(String, bool), ClientError> {
    match engine
        .client()
        .call(Request::SignalWithStartWorkflow(request))
        .await?
    {
        Response::SignalWithStartWorkflow(r) => Ok((r.run_id, r.started)),
        other => panic!("unexpected response {other:?}"),
    }
}

fn service_error<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Service(error)) => (error.code, error.message),
        other => panic!("expected a service error, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn signal_with_start_starts_a_run_with_the_signal_in_its_first_write() {
    let engine = TestEngine::new(registry()).await;
    let client = engine.client();
    let options = StartOptions::new("order-1", "q");
    let (handle, started) = client
        .signal_with_start::<Collect>(options, "start".to_string(), "item", "a")
        .await
        .unwrap();
    assert!(started, "no run was running: this call started one");
    let history = handle.history().await.unwrap();
    assert_eq!(
        names(&history),
        [
            "WorkflowExecutionStarted",
            "WorkflowTaskScheduled",
            "WorkflowExecutionSignaled"
        ],
        "start and signal in one write, before any workflow task starts"
    );
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    handle.signal("item", "done").await.unwrap();
    assert_eq!(handle.result().await.unwrap(), ["start", "a", "done"]);
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 1);
}

#[tokio::test(start_paused = true)]
async fn signal_with_start_to_a_running_run_only_signals_it() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let (first, started) = send(&engine, request("order-2", "r1", "a")).await.unwrap();
    assert!(started);
    let (second, started) = send(&engine, request("order-2", "r2", "b")).await.unwrap();
    assert_eq!(second, first, "the running run is signaled");
    assert!(!started, "and nothing is started");
    send(&engine, request("order-2", "r3", "done"))
        .await
        .unwrap();
    let handle = engine.client().handle::<Vec<String>>("order-2", None);
    assert_eq!(handle.result().await.unwrap(), ["start", "a", "b", "done"]);
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 1, "one run for the id");
}

#[tokio::test(start_paused = true)]
async fn a_retried_signal_with_start_starts_and_signals_once() {
    let engine = TestEngine::new(registry()).await;
    let first = send(&engine, request("order-3", "once", "a"))
        .await
        .unwrap();
    let again = send(&engine, request("order-3", "once", "a"))
        .await
        .unwrap();
    assert_eq!(again, first, "the retry names the run it started");
    // A retry of a signal-with-start that signaled a running run.
    let signaled = send(&engine, request("order-3", "twice", "b"))
        .await
        .unwrap();
    let again = send(&engine, request("order-3", "twice", "b"))
        .await
        .unwrap();
    assert_eq!((signaled.1, again), (false, signaled.clone()));
    let history = engine.client().history("order-3", None).await.unwrap();
    let signals = names(&history)
        .iter()
        .filter(|n| **n == "WorkflowExecutionSignaled")
        .count();
    assert_eq!(signals, 2, "a and b, each once: {:?}", names(&history));
    assert_eq!(engine.check_histories().await, 1);
}

#[tokio::test(start_paused = true)]
async fn after_the_run_closed_signal_with_start_starts_a_new_one_as_the_reuse_policy_says() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let (first, _) = send(&engine, request("order-4", "r1", "done"))
        .await
        .unwrap();
    let outcome = engine.client().outcome("order-4", Some(&first)).await;
    let done = RunOutcome::Completed {
        result: json!(["start", "done"]),
    };
    assert_eq!(outcome.unwrap(), done);
    let mut refused = request("order-4", "r2", "x");
    refused.start.id_reuse_policy = IdReusePolicy::RejectDuplicate;
    let (code, message) = service_error(send(&engine, refused).await);
    assert_eq!(code, ErrorCode::AlreadyStarted);
    assert!(message.contains("RejectDuplicate"), "{message}");
    let (second, started) = send(&engine, request("order-4", "r3", "done"))
        .await
        .unwrap();
    assert!(started && second != first, "a new run, signal included");
    let outcome = engine.client().outcome("order-4", Some(&second)).await;
    assert_eq!(outcome.unwrap(), done);
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 2);
}

#[tokio::test(start_paused = true)]
async fn a_bad_signal_with_start_is_refused_saying_why_and_stores_nothing() {
    let engine = TestEngine::new(registry()).await;
    let mut blank = request("order-5", "r1", "a");
    blank.signal_name = " ".to_string();
    let (code, message) = service_error(send(&engine, blank).await);
    assert_eq!(code, ErrorCode::InvalidArgument);
    assert!(message.contains("signal_name"), "{message}");
    let mut huge = request("order-5", "r2", "a");
    huge.signal_input = Value::String("x".repeat(3 << 20));
    let (code, message) = service_error(send(&engine, huge).await);
    assert_eq!(code, ErrorCode::PayloadTooLarge);
    assert!(message.contains("signal input"), "{message}");
    let mut unknown = request("order-5", "r3", "a");
    unknown.start.workflow_id = String::new();
    let (code, _) = service_error(send(&engine, unknown).await);
    assert_eq!(code, ErrorCode::InvalidArgument);
    assert_eq!(engine.check_histories().await, 0, "nothing was stored");
}

#[tokio::test(start_paused = true)]
async fn a_signal_that_would_start_a_history_over_its_limit_is_refused_and_nothing_stored() {
    let config = retrace::engine::ServiceConfig {
        history_payload_bytes_max: 100,
        ..Default::default()
    };
    let storage = std::sync::Arc::new(retrace::env::MemoryStorage::new());
    let engine = retrace::engine::EmbeddedEngine::start(storage, config)
        .await
        .unwrap();
    let engine = TestEngine {
        engine,
        registry: registry(),
    };
    let mut large = request("order-6", "r1", "a");
    large.signal_input = Value::String("x".repeat(200));
    let (code, message) = service_error(send(&engine, large).await);
    assert_eq!(code, ErrorCode::HistoryTooLarge);
    assert!(message.contains("limit of 100"), "{message}");
    assert_eq!(engine.check_histories().await, 0, "nothing was stored");
    let (_, started) = send(&engine, request("order-6", "r2", "a")).await.unwrap();
    assert!(started, "a small signal still starts the run");
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_the_run_it_signaled_closed_is_answered_and_starts_nothing() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let (first, _) = send(&engine, request("order-7", "r1", "a")).await.unwrap();
    let (closing, started) = send(&engine, request("order-7", "r2", "done"))
        .await
        .unwrap();
    assert_eq!((closing.as_str(), started), (first.as_str(), false));
    let outcome = engine.client().outcome("order-7", Some(&first)).await;
    assert!(matches!(outcome.unwrap(), RunOutcome::Completed { .. }));
    // Its reply lost, the client retries once the run has closed.
    let again = send(&engine, request("order-7", "r2", "done"))
        .await
        .unwrap();
    assert_eq!(
        again,
        (first, false),
        "answered as delivered, not a new run"
    );
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 1, "one run for the id");
}
