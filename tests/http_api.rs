//! The HTTP/JSON API end to end: a server on 127.0.0.1 over a SQLite file, a
//! worker and a client in "another process" (over `HttpNetwork`), and every
//! kind of bad input, each refused with a status, a stable code and a message
//! that says what was wrong, leaving everything stored as it was.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use retrace::api::{ErrorCode, RunOutcome};
use retrace::client::{Client, StartOptions};
use retrace::engine::{Service, ServiceConfig};
use retrace::env::{Env, RunStatus, SqliteStorage, Unconnected};
use retrace::history::EventKind;
use retrace::http::{HttpConfig, HttpError, HttpNetwork, HttpServer};
use retrace::worker::Worker;
use retrace::workflow::{
    Replayer, RunResult, Workflow, WorkflowContext, WorkflowRegistry, WorkflowResult,
};
use serde_json::{Value, json};
use tempfile::TempDir;

/// A small payload limit, so oversize bodies stay small.
const PAYLOAD_BYTES_MAX: u64 = 16 * 1024;
const TOKEN: &str = "s3cret-token";
/// Queries (20 ms apart) until the workflow is seen waiting for its signal.
const QUERY_ATTEMPTS_MAX: usize = 250;

/// Greets through an activity, sleeps, waits for `approve`; `status` tells where it is.
struct Greet;
impl Workflow for Greet {
    const NAME: &'static str = "greet";
    type Input = String;
    type Output = String;
    async fn run(ctx: WorkflowContext, name: String) -> WorkflowResult<String> {
        let status = Arc::new(Mutex::new("composing"));
        let shown = status.clone();
        ctx.query_handler("status", move |(): ()| *shown.lock().unwrap());
        let greeting = ctx
            .activity::<common::Compose>(format!("hello {name}"))
            .await?;
        ctx.sleep(Duration::from_millis(100)).await?;
        *status.lock().unwrap() = "waiting";
        let by: String = ctx.signal("approve").recv().await?;
        Ok(format!("{greeting} approved by {by}"))
    }
}

fn registry() -> WorkflowRegistry {
    let mut registry = common::registry();
    registry.register::<Greet>();
    registry
}

struct Api {
    server: HttpServer,
    _service: Service,
    _dir: TempDir,
}

impl Api {
    async fn start(token: Option<&str>) -> Api {
        common::init_logs();
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(dir.path().join("retrace.db")).unwrap();
        let mut config = ServiceConfig::default();
        config.limits.payload_bytes_max = PAYLOAD_BYTES_MAX;
        let limits = config.limits;
        let env = Env::tokio(Arc::new(Unconnected));
        let service = Service::start(env, Arc::new(storage), config)
            .await
            .unwrap();
        let listen = "127.0.0.1:0".parse().unwrap();
        let http = HttpConfig::new(listen, &limits).with_token(token.map(str::to_string));
        let server = HttpServer::start(service.handler(), http).await.unwrap();
        Api {
            server,
            _service: service,
            _dir: dir,
        }
    }

    fn env(&self, token: Option<&str>) -> Env {
        Env::tokio(Arc::new(
            HttpNetwork::new(&self.server.url(), token).unwrap(),
        ))
    }

    fn client(&self, token: Option<&str>) -> Client {
        Client::new(self.env(token))
    }

    fn worker(&self, token: Option<&str>) -> Worker {
        Worker::builder(self.env(token), "q")
            .workflows(registry())
            .activity(common::Compose)
            .start()
    }

    /// `POST /api/v1/{method}` with a raw body: the status and the JSON reply.
    async fn post(
        &self,
        method: &str,
        body: impl Into<reqwest::Body>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("{}/api/v1/{method}", self.server.url());
        let mut request = reqwest::Client::new().post(url).body(body);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let reply = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {text}"));
        (status, reply)
    }

    /// A completed run ("done") and an open one nobody works on ("idle"), so
    /// that "nothing changed" covers both kinds.
    async fn seed(&self, token: Option<&str>) -> Worker {
        let worker = self.worker(token);
        let client = self.client(token);
        let run_id = client
            .start_by_name(StartOptions::new("done", "q"), "one_activity", json!("x"))
            .await
            .unwrap();
        let handle = client.handle::<String>("done", Some(&run_id));
        assert_eq!(handle.result().await.unwrap(), "x!");
        client
            .start_by_name(
                StartOptions::new("idle", "nobody-polls"),
                "one_activity",
                json!("y"),
            )
            .await
            .unwrap();
        worker
    }

    /// Everything stored, as text: every run, its description and its history.
    async fn stored(&self, token: Option<&str>) -> String {
        let client = self.client(token);
        let mut text = String::new();
        for run in client.list_all(None).await.unwrap() {
            let description = client
                .describe(&run.workflow_id, Some(&run.run_id))
                .await
                .unwrap();
            let history = client
                .history(&run.workflow_id, Some(&run.run_id))
                .await
                .unwrap();
            text += &format!("{run:?}\n{description:?}\n{}\n", history.to_json());
        }
        assert!(!text.is_empty(), "the seed runs are stored");
        text
    }
}

fn assert_refused(reply: &(u16, Value), status: u16, code: &str, says: &[&str]) {
    let (got_status, body) = reply;
    assert_eq!(*got_status, status, "status of {body}");
    assert_eq!(body["code"], code, "code of {body}");
    let message = body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("a message in {body}"));
    for part in says {
        assert!(
            message.contains(part),
            "the message says {part:?}: {message}"
        );
    }
}

fn start_body(workflow_id: &str, workflow_type: &str, input: Value) -> String {
    json!({
        "workflow_id": workflow_id, "workflow_type": workflow_type, "task_queue": "q",
        "input": input, "request_id": format!("req-{workflow_id}"),
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_http_runs_a_workflow_end_to_end() {
    let api = Api::start(None).await;
    let worker = api.worker(None);
    let client = api.client(None);
    let handle = client
        .start::<Greet>(StartOptions::new("g1", "q"), "ana".to_string())
        .await
        .unwrap();
    let env = api.env(None);
    let mut status = String::new();
    for _ in 0..QUERY_ATTEMPTS_MAX {
        status = handle.query("status", ()).await.unwrap();
        if status == "waiting" {
            break;
        }
        env.sleep_ms(20).await;
    }
    assert_eq!(status, "waiting", "the query reaches the workflow's state");
    handle.signal("approve", "bob").await.unwrap();
    assert_eq!(handle.result().await.unwrap(), "hello ana! approved by bob");

    let history = handle.history().await.unwrap();
    let kinds: Vec<&str> = history.events().iter().map(|e| e.kind.name()).collect();
    for kind in [
        "ActivityTaskCompleted",
        "TimerFired",
        "WorkflowExecutionSignaled",
        "WorkflowExecutionCompleted",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let EventKind::WorkflowExecutionCompleted(completed) = &history.events().last().unwrap().kind
    else {
        panic!("the history ends with the run's completion: {kinds:?}")
    };
    let replayed = Replayer::new(registry())
        .replay_three_ways(&history)
        .unwrap();
    assert_eq!(
        replayed.result,
        Some(RunResult::Completed(completed.result.clone()))
    );

    let description = handle.describe().await.unwrap();
    assert_eq!(description.status, RunStatus::Completed);
    assert_eq!(description.history_length, history.len() as u64);
    let runs = client.list_all(Some(RunStatus::Completed)).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (runs[0].workflow_id.as_str(), runs[0].run_id.as_str()),
        ("g1", handle.run_id.as_str())
    );
    let outcome = handle.outcome().await.unwrap();
    assert!(
        matches!(outcome, RunOutcome::Completed { .. }),
        "{outcome:?}"
    );
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_body_gets_400_naming_the_line_column_and_fault_and_stores_nothing() {
    let api = Api::start(None).await;
    let worker = api.seed(None).await;
    let before = api.stored(None).await;
    let cut_short = api
        .post("StartWorkflow", "{\n  \"workflow_id\": \"m1\",", None)
        .await;
    assert_refused(
        &cut_short,
        400,
        "malformed_request",
        &["StartWorkflowRequest", "EOF", "line 2 column"],
    );
    let wrong_type = api
        .post("StartWorkflow", r#"{"workflow_id": 7}"#, None)
        .await;
    assert_refused(
        &wrong_type,
        400,
        "malformed_request",
        &["invalid type: integer `7`", "line 1 column"],
    );
    let missing = api
        .post("SignalWorkflow", r#"{"workflow_id": "done"}"#, None)
        .await;
    assert_refused(
        &missing,
        400,
        "malformed_request",
        &["SignalWorkflowRequest", "missing field `signal_name`"],
    );
    let not_json = api.post("DescribeWorkflow", "workflow_id=done", None).await;
    assert_refused(
        &not_json,
        400,
        "malformed_request",
        &["expected value at line 1 column 1"],
    );
    assert_eq!(api.stored(None).await, before);
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_workflow_type_is_refused_while_workers_serve_the_queue() {
    let api = Api::start(None).await;
    let worker = api.seed(None).await;
    let before = api.stored(None).await;
    let reply = api
        .post(
            "StartWorkflow",
            start_body("u1", "no_such_type", json!(1)),
            None,
        )
        .await;
    assert_refused(
        &reply,
        400,
        "unknown_workflow_type",
        &["\"no_such_type\"", "\"q\"", "one_activity"],
    );
    assert_eq!(api.stored(None).await, before);
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_run_is_404_not_found() {
    let api = Api::start(None).await;
    let worker = api.seed(None).await;
    let before = api.stored(None).await;
    let described = api
        .post("DescribeWorkflow", r#"{"workflow_id": "nobody"}"#, None)
        .await;
    assert_refused(&described, 404, "not_found", &["\"nobody\""]);
    let body = json!({"workflow_id": "done", "run_id": "no-such-run", "signal_name": "s", "input": 1, "request_id": "r"});
    let signaled = api.post("SignalWorkflow", body.to_string(), None).await;
    assert_refused(&signaled, 404, "not_found", &["no-such-run"]);
    let method = api.post("Frobnicate", "{}", None).await;
    assert_refused(
        &method,
        404,
        "not_found",
        &["\"Frobnicate\"", "StartWorkflow", "HeartbeatActivityTask"],
    );
    assert_eq!(api.stored(None).await, before);
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_to_a_closed_run_is_409_run_closed() {
    let api = Api::start(None).await;
    let worker = api.seed(None).await;
    let before = api.stored(None).await;
    let body =
        json!({"workflow_id": "done", "signal_name": "late", "input": 1, "request_id": "r1"});
    let reply = api.post("SignalWorkflow", body.to_string(), None).await;
    assert_refused(
        &reply,
        409,
        "run_closed",
        &["\"done\"", "closed", "Completed"],
    );
    let error = api
        .client(None)
        .signal("done", None, "late", 1)
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Some(ErrorCode::RunClosed),
        "the client gets the code back: {error}"
    );
    assert_eq!(api.stored(None).await, before);
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_payload_is_413_payload_too_large_from_the_body_limit_or_the_service() {
    let api = Api::start(None).await;
    let worker = api.seed(None).await;
    let before = api.stored(None).await;
    let limit = retrace::http::body_bytes_max_for(&retrace::history::HistoryLimits {
        payload_bytes_max: PAYLOAD_BYTES_MAX,
        ..Default::default()
    });
    let huge = "x".repeat(limit + 1);
    let body_too_large = api
        .post(
            "StartWorkflow",
            start_body("big1", "one_activity", json!(huge)),
            None,
        )
        .await;
    assert_refused(
        &body_too_large,
        413,
        "payload_too_large",
        &["request body", &format!("{limit} bytes")],
    );
    let payload = "x".repeat(PAYLOAD_BYTES_MAX as usize + 1);
    let payload_too_large = api
        .post(
            "StartWorkflow",
            start_body("big2", "one_activity", json!(payload)),
            None,
        )
        .await;
    assert_refused(
        &payload_too_large,
        413,
        "payload_too_large",
        &[&format!("limit of {PAYLOAD_BYTES_MAX} bytes")],
    );
    let signal =
        json!({"workflow_id": "idle", "signal_name": "s", "input": payload, "request_id": "r2"});
    let signal_too_large = api.post("SignalWorkflow", signal.to_string(), None).await;
    assert_refused(&signal_too_large, 413, "payload_too_large", &["bytes"]);
    assert_eq!(api.stored(None).await, before);
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_api_request_must_carry_it() {
    let api = Api::start(Some(TOKEN)).await;
    let worker = api.seed(Some(TOKEN)).await;
    let before = api.stored(Some(TOKEN)).await;
    let start = || start_body("t1", "one_activity", json!(1));
    let without = api.post("StartWorkflow", start(), None).await;
    assert_refused(
        &without,
        401,
        "unauthenticated",
        &["none was sent", "Authorization: Bearer"],
    );
    let raw = |authorization: String| {
        let url = format!("{}/api/v1/DescribeWorkflow", api.server.url());
        let body = json!({"workflow_id": "done"}).to_string();
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .header("authorization", authorization)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (
                status,
                serde_json::from_str::<Value>(&response.text().await.unwrap()).unwrap(),
            )
        }
    };
    for scheme in ["bearer", "BEARER", "Bearer  "] {
        let (status, body) = raw(format!("{scheme} {TOKEN}")).await;
        assert_eq!(
            status, 200,
            "the scheme {scheme:?} is case-insensitive: {body}"
        );
    }
    let basic = raw(format!("Basic {TOKEN}")).await;
    assert_refused(
        &basic,
        401,
        "unauthenticated",
        &["not of the form `Bearer <token>`"],
    );
    let wrong = api
        .post("StartWorkflow", start(), Some("not-the-token"))
        .await;
    assert_refused(&wrong, 401, "unauthenticated", &["wrong"]);
    let unknown_route = api.post("Frobnicate", "{}", None).await;
    assert_refused(&unknown_route, 401, "unauthenticated", &["token"]);
    let error = api
        .client(Some("not-the-token"))
        .list_all(None)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unauthenticated), "{error}");
    assert_eq!(api.stored(Some(TOKEN)).await, before);
    let health = reqwest::get(format!("{}/healthz", api.server.url()))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200, "health needs no token");
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_http_method_or_route_gets_a_json_error() {
    let api = Api::start(None).await;
    let url = api.server.url();
    let get = reqwest::get(format!("{url}/api/v1/StartWorkflow"))
        .await
        .unwrap();
    assert_eq!(get.status().as_u16(), 405);
    let body: Value = get.json_or_panic().await;
    assert_eq!(body["code"], "malformed_request");
    assert!(body["message"].as_str().unwrap().contains("POST"), "{body}");
    let nowhere = reqwest::get(format!("{url}/v2/things")).await.unwrap();
    assert_eq!(nowhere.status().as_u16(), 404);
    let body: Value = nowhere.json_or_panic().await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("/api/v1/{method}"),
        "{body}"
    );
}

#[tokio::test]
async fn listening_off_loopback_without_a_token_is_refused_before_binding() {
    let env = Env::tokio(Arc::new(Unconnected));
    let storage = Arc::new(retrace::env::MemoryStorage::new());
    let service = Service::start(env, storage, ServiceConfig::default())
        .await
        .unwrap();
    let limits = retrace::history::HistoryLimits::default();
    for address in ["0.0.0.0:0", "[::]:0", "192.0.2.1:7233"] {
        let config = HttpConfig::new(address.parse().unwrap(), &limits);
        let refused = HttpServer::start(service.handler(), config)
            .await
            .unwrap_err();
        assert!(
            matches!(refused, HttpError::TokenRequired { .. }),
            "{refused}"
        );
        let message = refused.to_string();
        assert!(
            message.contains(address) && message.contains("--token"),
            "{message}"
        );
    }
    let empty =
        HttpConfig::new("0.0.0.0:0".parse().unwrap(), &limits).with_token(Some(String::new()));
    assert!(matches!(empty.check(), Err(HttpError::EmptyToken)));
    let with_token =
        HttpConfig::new("0.0.0.0:0".parse().unwrap(), &limits).with_token(Some(TOKEN.into()));
    assert!(
        with_token.check().is_ok(),
        "a token makes any address acceptable (not bound here)"
    );
}

#[tokio::test]
async fn a_client_of_a_server_that_is_not_running_gets_unreachable() {
    let network = HttpNetwork::new("http://127.0.0.1:1", None).unwrap();
    let error = network.health().await.unwrap_err();
    assert!(
        matches!(error, retrace::env::NetError::Unreachable(_)),
        "{error}"
    );
    assert!(error.to_string().contains("refused"), "{error}");
}

trait JsonOrPanic {
    async fn json_or_panic(self) -> Value;
}

impl JsonOrPanic for reqwest::Response {
    async fn json_or_panic(self) -> Value {
        let text = self.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }
}

#[test]
fn a_client_refuses_a_url_it_could_never_call_when_it_is_made() {
    let bad_urls = [
        ("https://127.0.0.1:7233", "https is not supported"),
        ("http://127.0.0.1:7233/api", "without a path"),
        ("http://127.0.0.1:99999", "invalid port"),
        ("127.0.0.1:7233", "http://host:port"),
    ];
    for (url, says) in bad_urls {
        let error = HttpNetwork::new(url, None).expect_err(url);
        assert!(matches!(error, HttpError::BadUrl { .. }), "{url}: {error}");
        assert!(error.to_string().contains(url), "names the URL: {error}");
        assert!(error.to_string().contains(says), "{url}: {error}");
    }
}

/// `depth` arrays inside each other around a number.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!([inner]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_or_overlong_ids_and_deeply_nested_payloads_get_400_and_change_nothing() {
    let api = Api::start(None).await;
    let worker = api.seed(None).await;
    let before = api.stored(None).await;
    let signal = |request_id: &str, input: Value| {
        json!({"workflow_id": "idle", "signal_name": "s", "input": input, "request_id": request_id})
            .to_string()
    };
    let empty_id = api.post("SignalWorkflow", signal("", json!(1)), None).await;
    assert_refused(
        &empty_id,
        400,
        "invalid_argument",
        &["request_id must not be empty"],
    );
    let long_id = "r".repeat(2_000);
    let long = api
        .post("SignalWorkflow", signal(&long_id, json!(1)), None)
        .await;
    assert_refused(
        &long,
        400,
        "invalid_argument",
        &["request_id is 2000 bytes", "limit of 256"],
    );
    let deep = api
        .post("SignalWorkflow", signal("r3", nested(124)), None)
        .await;
    assert_refused(
        &deep,
        400,
        "invalid_argument",
        &["signal input is nested 124 levels deep", "limit of 64"],
    );
    let deep_start = api
        .post(
            "StartWorkflow",
            start_body("deep", "one_activity", nested(65)),
            None,
        )
        .await;
    assert_refused(
        &deep_start,
        400,
        "invalid_argument",
        &["workflow input is nested 65 levels deep"],
    );
    let long_workflow_id = "w".repeat(3_000);
    let long_start = api
        .post(
            "StartWorkflow",
            start_body(&long_workflow_id, "one_activity", json!(1)),
            None,
        )
        .await;
    assert_refused(
        &long_start,
        400,
        "invalid_argument",
        &["workflow_id is 3000 bytes", "limit of 1000"],
    );
    let poll = json!({"task_queue": "", "identity": "w"}).to_string();
    let empty_queue = api.post("PollActivityTask", poll, None).await;
    assert_refused(
        &empty_queue,
        400,
        "invalid_argument",
        &["task_queue must not be empty"],
    );
    assert_eq!(api.stored(None).await, before, "nothing stored changed");
    let fine = api
        .post("SignalWorkflow", signal("r4", nested(64)), None)
        .await;
    assert_eq!(fine.0, 200, "64 levels is within the limit: {:?}", fine.1);
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_reused_with_other_parameters_is_a_conflict_not_the_old_run() {
    let api = Api::start(None).await;
    let first = api
        .post(
            "StartWorkflow",
            start_body("r1", "one_activity", json!("a")),
            None,
        )
        .await;
    assert_eq!(first.0, 200, "{:?}", first.1);
    let retry = api
        .post(
            "StartWorkflow",
            start_body("r1", "one_activity", json!("a")),
            None,
        )
        .await;
    assert_eq!(retry, first, "a retry gets the same run");
    let before = api.stored(None).await;
    let other = api
        .post(
            "StartWorkflow",
            start_body("r1", "one_activity", json!("b")),
            None,
        )
        .await;
    assert_refused(
        &other,
        409,
        "already_started",
        &["request_id \"req-r1\"", "another input"],
    );
    assert_eq!(api.stored(None).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_with_start_over_http_starts_and_signals_once_and_refuses_a_blank_signal_name() {
    let api = Api::start(None).await;
    let worker = api.worker(None);
    let body = |request_id: &str, by: &str| {
        json!({
            "workflow_id": "sws", "workflow_type": "greet", "task_queue": "q",
            "input": "ana", "request_id": request_id,
            "signal_name": "approve", "signal_input": by,
        })
        .to_string()
    };
    let (status, started) = api
        .post("SignalWithStartWorkflow", body("r1", "bo"), None)
        .await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["started"], true, "{started}");
    let (status, retried) = api
        .post("SignalWithStartWorkflow", body("r1", "bo"), None)
        .await;
    assert_eq!(
        (status, &retried),
        (200, &started),
        "a retry answers the same"
    );
    let result = api
        .client(None)
        .handle::<String>("sws", None)
        .result()
        .await;
    assert_eq!(result.unwrap(), "hello ana! approved by bo");
    let blank = json!({"workflow_id": "sws2", "workflow_type": "greet", "task_queue": "q",
        "input": "x", "request_id": "r2", "signal_name": "", "signal_input": 1});
    let reply = api
        .post("SignalWithStartWorkflow", blank.to_string(), None)
        .await;
    assert_refused(&reply, 400, "invalid_argument", &["signal_name"]);
    let history = api.client(None).history("sws", None).await.unwrap();
    let signals = history
        .events()
        .iter()
        .filter(|e| e.kind.name() == "WorkflowExecutionSignaled")
        .count();
    assert_eq!(signals, 1, "signaled once");
    worker.shutdown().await;
}

/// The value of sample `series` (name and labels, as written) in a scrape.
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{scrape}"))
}

async fn scrape(api: &Api, token: Option<&str>) -> (u16, String, String) {
    let mut request = reqwest::Client::new().get(format!("{}/metrics", api.server.url()));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    (status, content_type, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_runs_tasks_and_writes_a_workflow_made() {
    let api = Api::start(Some(TOKEN)).await;
    let (status, _, body) = scrape(&api, None).await;
    assert_eq!(
        status, 401,
        "metrics are behind the token like the API: {body}"
    );
    let worker = api.seed(Some(TOKEN)).await;
    let (status, content_type, text) = scrape(&api, Some(TOKEN)).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    // `seed` started "done" (completed, one activity) and "idle" (open).
    assert_eq!(sample(&text, "retrace_runs_started_total"), 2.0);
    assert_eq!(
        sample(&text, "retrace_runs_closed_total{status=\"completed\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "retrace_runs_closed_total{status=\"failed\"}"),
        0.0
    );
    assert_eq!(sample(&text, "retrace_runs_open"), 1.0);
    let activities = "retrace_tasks_dispatched_total{kind=\"activity\"}";
    assert_eq!(sample(&text, activities), 1.0);
    // The first workflow task is dispatched; the one after the activity may
    // be run by the worker with the activity's result (speculatively).
    assert!(sample(&text, "retrace_tasks_dispatched_total{kind=\"workflow\"}") >= 1.0);
    assert_eq!(
        sample(&text, "retrace_activity_schedule_to_start_seconds_count"),
        1.0
    );
    let writes = sample(&text, "retrace_storage_writes_total{outcome=\"ok\"}");
    assert!(writes >= 4.0, "start, task, activity, close: {writes}");
    assert_eq!(sample(&text, "retrace_storage_write_seconds_count"), writes);
    assert_eq!(
        sample(&text, "retrace_storage_write_seconds_bucket{le=\"+Inf\"}"),
        writes
    );
    assert_eq!(
        sample(&text, "retrace_storage_writes_total{outcome=\"failed\"}"),
        0.0
    );
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_attributes_set_at_start_are_listed_by_a_query_over_sqlite() {
    let api = Api::start(None).await;
    for (id, customer, amount) in [("o1", "c-1", 12), ("o2", "c-2", 5), ("o3", "c-1", 3)] {
        let mut body: Value = serde_json::from_str(&start_body(id, "greet", json!("x"))).unwrap();
        body["search_attributes"] =
            json!({"CustomerId": {"Keyword": customer}, "Amount": {"Int": amount}});
        body["memo"] = json!({"note": id});
        let (status, reply) = api.post("StartWorkflow", body.to_string(), None).await;
        assert_eq!(status, 200, "{reply}");
    }
    let list = |query: &str| json!({ "query": query }).to_string();
    let query =
        "CustomerId = 'c-1' AND Amount > 4 OR WorkflowId IN ('o2') ORDER BY WorkflowId DESC";
    let (status, reply) = api.post("ListWorkflows", list(query), None).await;
    assert_eq!(status, 200, "{reply}");
    let ids: Vec<&str> = reply["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["workflow_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["o2", "o1"]);
    assert_eq!(
        reply["runs"][1]["search_attributes"]["Amount"],
        json!({"Int": 12})
    );
    let (status, described) = api
        .post(
            "DescribeWorkflow",
            json!({"workflow_id": "o3"}).to_string(),
            None,
        )
        .await;
    assert_eq!(status, 200, "{described}");
    assert_eq!(described["memo"], json!({"note": "o3"}));
    let refused = api.post("ListWorkflows", list("Amount > "), None).await;
    assert_refused(
        &refused,
        400,
        "invalid_argument",
        &["at byte 8", "expected a value"],
    );
    let mut body: Value = serde_json::from_str(&start_body("o4", "greet", json!("x"))).unwrap();
    body["search_attributes"] = json!({"ExecutionStatus": {"Keyword": "x"}});
    let refused = api.post("StartWorkflow", body.to_string(), None).await;
    assert_refused(
        &refused,
        400,
        "invalid_argument",
        &["\"ExecutionStatus\" is reserved"],
    );
}

/// Members "a" and "b" of a cluster over one memory storage of 8 shards,
/// each configured by `adjust`.
async fn two_members(
    adjust: impl Fn(retrace::engine::ClusterConfig) -> retrace::engine::ClusterConfig,
) -> (Env, Vec<Service>) {
    let env = Env::tokio(Arc::new(Unconnected));
    let storage = retrace::env::MemoryStorage::with_shards(8, env.clock.clone());
    let mut members = Vec::new();
    for node in ["a", "b"] {
        let cluster = retrace::engine::ClusterConfig::new(node, &format!("http://{node}:7233"));
        let config = ServiceConfig {
            cluster: Some(adjust(cluster)),
            ..ServiceConfig::default()
        };
        let started = Service::start(env.clone(), Arc::new(storage.clone()), config).await;
        members.push(started.unwrap());
    }
    (env, members)
}

/// `GET /api/v1/cluster`: a cluster member answers its storage's view (every
/// member, every shard's lease, behind the token); a single server, and an
/// HTTP server given no cluster, answer `invalid_argument`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_route_answers_members_and_leases_and_refuses_outside_a_cluster() {
    common::init_logs();
    let (_env, members) = two_members(|config| config).await;
    let limits = ServiceConfig::default().limits;
    let http = HttpConfig::new("127.0.0.1:0".parse().unwrap(), &limits)
        .with_token(Some(TOKEN.to_string()));
    let listener = HttpServer::bind(http).await.unwrap();
    let source = Arc::new(members[0].clone());
    let server = listener.serve_with_cluster(members[0].handler(), Some(source));
    let with_token = HttpNetwork::new(&server.url(), Some(TOKEN)).unwrap();
    let view = with_token.cluster_view().await.unwrap().unwrap();
    let nodes: Vec<(&str, &str, bool)> = view
        .members
        .iter()
        .map(|m| (m.node.as_str(), m.address.as_str(), m.alive))
        .collect();
    assert_eq!(
        nodes,
        [("a", "http://a:7233", true), ("b", "http://b:7233", true)]
    );
    assert_eq!(view.shards.len(), 8);
    assert!(
        view.shards
            .iter()
            .all(|lease| lease.owner.is_empty() || lease.held_at(view.now_ms))
    );
    let without = HttpNetwork::new(&server.url(), None).unwrap();
    let refused = without.cluster_view().await.unwrap().unwrap_err();
    assert_eq!(refused.code, ErrorCode::Unauthenticated);

    let single = Api::start(None).await;
    let network = HttpNetwork::new(&single.server.url(), None).unwrap();
    let refused = network.cluster_view().await.unwrap().unwrap_err();
    assert_eq!(refused.code, ErrorCode::InvalidArgument);
    assert!(
        refused.message.contains("not a member of a cluster"),
        "{refused:?}"
    );
    let served = single._service.cluster_view().await.unwrap_err();
    assert_eq!(served.code, ErrorCode::InvalidArgument);
}

/// The Web UI's cluster page shows what `retrace cluster status` does: every
/// member with the shards it holds, and every shard's owner and epoch; a
/// single server's page says it is not a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_page_shows_each_member_its_shards_and_every_shards_owner() {
    use retrace::engine::ClusterConfig;
    common::init_logs();
    let (env, members) = two_members(|config| ClusterConfig {
        lease_ms: 2_000,
        renew_ms: 50,
        margin_ms: 500,
        ..config
    })
    .await;
    let held = || {
        members
            .iter()
            .map(|m| m.held_shards().len())
            .collect::<Vec<_>>()
    };
    for _ in 0..100 {
        if held() == [4, 4] {
            break;
        }
        env.sleep_ms(20).await;
    }
    assert_eq!(held(), [4, 4], "the shards split");
    let limits = ServiceConfig::default().limits;
    let http = HttpConfig::new("127.0.0.1:0".parse().unwrap(), &limits);
    let listener = HttpServer::bind(http).await.unwrap();
    let source = Arc::new(members[1].clone());
    let server = listener.serve_with_cluster(members[1].handler(), Some(source));
    let page = reqwest::get(format!("{}/cluster", server.url()))
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    for node in ["a", "b"] {
        let row = format!(
            "<tr data-member=\"{node}\"><td class=\"id\">{node}</td><td>http://{node}:7233</td><td>alive</td><td>4</td>"
        );
        assert!(html.contains(&row), "{node}'s row in {html}");
    }
    assert!(html.contains("Shards (8)"), "{html}");
    for (member, owner) in members.iter().zip(["a", "b"]) {
        for (shard, epoch) in member.held_shards() {
            let row = format!(
                "<tr data-shard=\"{shard}\"><td>{shard}</td><td class=\"id\">{owner}</td><td>{epoch}</td>"
            );
            assert!(html.contains(&row), "shard {shard} in {html}");
        }
    }

    let single = Api::start(None).await;
    let page = reqwest::get(format!("{}/cluster", single.server.url()))
        .await
        .unwrap();
    let html = page.text().await.unwrap();
    assert!(html.contains("not a member of a cluster"), "{html}");
}
