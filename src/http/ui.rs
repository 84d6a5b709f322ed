//! The Web UI's routes: they gather what a page shows from the service (the
//! same requests the API serves) and answer with the pages of [`crate::ui`].
//!
//! Security: pages are read with GET and change nothing; actions are POST
//! forms. Where the server has a token, the UI asks for it once and keeps it
//! in an `HttpOnly; SameSite=Strict` cookie; `/api` still wants the bearer
//! header. Every POST must come from the UI's own pages: a browser's
//! `Sec-Fetch-Site` must say `same-origin` and an `Origin` must be this
//! host, so another site cannot make a visitor's browser act (cross-site
//! request forgery). A server on a loopback address answers the UI only to
//! loopback host names, so a hostile DNS name pointed at 127.0.0.1 (DNS
//! rebinding) cannot read its pages either.
//!
//! Production I/O at the edge, like `server.rs`: it reads the wall clock.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request as HttpRequest, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use serde_json::Value;

use super::server::ClusterSource;
use crate::api::{
    CancelWorkflowRequest, DescribeTaskQueueRequest, ErrorCode, GetHistoryRequest,
    ListWorkflowsRequest, PollerKind, QueryWorkflowRequest, Request, Response, RunDescription,
    RunRef, RunSummary, ServiceError, SignalWorkflowRequest, TerminateWorkflowRequest,
};
use crate::env::{RequestHandler, RunStatus};
use crate::history::{Event, History};
use crate::types::Timestamp;
use crate::ui::{self, HistoryView, Poller, QueueView, RunFilter, RunView, RunsView};

/// Runs the list reads at most (the store lists by run id and the API has
/// no newest-first order, so past this the list says it covers only part).
pub const LIST_SCAN_RUNS_MAX: usize = 10_000;
/// Page size of the list's reads.
pub const LIST_READ_PAGE_SIZE: u32 = 1_000;
/// Events the run page shows at most (the download has them all).
pub const RUN_PAGE_EVENTS_MAX: usize = 5_000;
/// Open runs the task queue page describes for its backlog.
pub const QUEUE_SCAN_RUNS_MAX: usize = 500;
/// The cookie that keeps the token.
pub const TOKEN_COOKIE: &str = "retrace_token";
/// Who the UI's actions are signed by in histories.
pub const UI_IDENTITY: &str = "retrace-ui";
#[derive(Clone)]
struct UiState {
    handler: Arc<dyn RequestHandler>,
    /// Where the cluster page reads from (none outside a cluster).
    cluster: Option<Arc<dyn ClusterSource>>,
    token: Option<Arc<str>>,
    loopback: bool,
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// The UI's routes, with their own token and origin checks.
pub(super) fn router(
    handler: Arc<dyn RequestHandler>,
    cluster: Option<Arc<dyn ClusterSource>>,
    token: Option<&str>,
    loopback: bool,
) -> Router {
    let state = UiState {
        handler,
        cluster,
        token: token.map(Arc::from),
        loopback,
    };
    let pages = Router::new()
        .route("/", get(runs_list))
        .route("/run", get(run_page))
        .route("/run/history.json", get(history_json))
        .route("/task-queues", get(task_queues))
        .route("/cluster", get(cluster_page))
        .route("/run/signal", post(signal))
        .route("/run/query", post(query))
        .route("/run/cancel", post(cancel))
        .route("/run/terminate", post(terminate))
        .layer(middleware::from_fn_with_state(state.clone(), signed_in));
    pages
        .route("/login", post(login))
        .route(ui::STYLESHEET_PATH, get(stylesheet))
        .route(ui::SCRIPT_PATH, get(script))
        .layer(middleware::from_fn_with_state(state.clone(), same_site))
        .with_state(state)
}

/// Pages run only the UI's own script and style, send forms only here, and
/// are framed by no one: an escaping slip could not run a script.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

fn html(status: StatusCode, body: String) -> HttpResponse {
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    ];
    (status, headers, body).into_response()
}

async fn stylesheet() -> HttpResponse {
    let headers = [(header::CONTENT_TYPE, "text/css; charset=utf-8")];
    (StatusCode::OK, headers, ui::stylesheet()).into_response()
}

async fn script() -> HttpResponse {
    let headers = [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")];
    (StatusCode::OK, headers, ui::script()).into_response()
}

fn refused(status: StatusCode, title: &str, message: &str) -> HttpResponse {
    html(status, ui::error_page(title, message))
}

/// The host name of a `Host` header (without its port).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

fn is_loopback_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refuses rebinding hosts (loopback servers) and cross-site POSTs.
async fn same_site(State(state): State<UiState>, request: HttpRequest, next: Next) -> HttpResponse {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if state.loopback && !is_loopback_name(host_name(host)) {
        let message =
            "this server listens on a loopback address: open it as 127.0.0.1 or localhost";
        return refused(StatusCode::MISDIRECTED_REQUEST, "Wrong host", message);
    }
    if request.method() == axum::http::Method::POST && !same_origin(headers, host) {
        let message = "this action did not come from this server's own pages";
        return refused(StatusCode::FORBIDDEN, "Refused", message);
    }
    next.run(request).await
}

/// True when the headers a browser sends show the request came from this
/// origin (a client that sends neither is not a browser a site can drive).
fn same_origin(headers: &HeaderMap, host: &str) -> bool {
    let fetch_site = headers.get("sec-fetch-site").map(HeaderValue::as_bytes);
    if fetch_site.is_some_and(|site| site != b"same-origin" && site != b"none") {
        return false;
    }
    match headers.get(header::ORIGIN).map(HeaderValue::as_bytes) {
        None => true,
        Some(origin) => {
            origin == format!("http://{host}").as_bytes()
                || origin == format!("https://{host}").as_bytes()
        }
    }
}

/// The token kept in the UI's cookie, if any.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    let cookies = headers.get_all(header::COOKIE);
    let pairs = cookies
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'));
    pairs.map(str::trim).find_map(|pair| {
        let value = pair.strip_prefix(TOKEN_COOKIE)?.strip_prefix('=')?;
        let pair = format!("t={value}");
        let decoded = form_urlencoded::parse(pair.as_bytes())
            .next()?
            .1
            .into_owned();
        Some(decoded)
    })
}

/// Where the server has a token, pages need the cookie that holds it.
async fn signed_in(State(state): State<UiState>, request: HttpRequest, next: Next) -> HttpResponse {
    let Some(expected) = &state.token else {
        return next.run(request).await;
    };
    match cookie_token(request.headers()) {
        Some(token) if super::server::same_bytes(token.as_bytes(), expected.as_bytes()) => {
            next.run(request).await
        }
        _ => html(StatusCode::UNAUTHORIZED, ui::login_page(false)),
    }
}

/// Pairs of a form body or a query string.
fn pairs(bytes: &[u8]) -> BTreeMap<String, String> {
    form_urlencoded::parse(bytes).into_owned().collect()
}

async fn login(State(state): State<UiState>, body: Bytes) -> HttpResponse {
    let Some(expected) = &state.token else {
        return redirect("/", None);
    };
    let form = pairs(&body);
    let given = form.get("token").map_or("", String::as_str);
    if !super::server::same_bytes(given.as_bytes(), expected.as_bytes()) {
        return html(StatusCode::UNAUTHORIZED, ui::login_page(true));
    }
    let cookie = format!(
        "{TOKEN_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        ui::html::url_param(given)
    );
    redirect("/", Some(cookie))
}

fn redirect(to: &str, cookie: Option<String>) -> HttpResponse {
    let mut reply = (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response();
    if let Some(cookie) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        reply.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    reply
}

async fn call(state: &UiState, request: Request) -> Result<Response, ServiceError> {
    state.handler.handle(request).await
}

/// Every run the store lists, up to [`LIST_SCAN_RUNS_MAX`]; true if there were more.
async fn all_runs(
    state: &UiState,
    status: Option<RunStatus>,
    query: Option<String>,
) -> Result<(Vec<RunSummary>, bool), ServiceError> {
    let mut runs = Vec::new();
    let mut page_token = None;
    loop {
        let request = ListWorkflowsRequest {
            status,
            workflow_type: None,
            page_token,
            page_size: LIST_READ_PAGE_SIZE,
            query: query.clone(),
        };
        let Response::ListWorkflows(page) = call(state, Request::ListWorkflows(request)).await?
        else {
            return Err(ServiceError::new(
                crate::api::ErrorCode::Internal,
                "ListWorkflows answered with another reply",
            ));
        };
        runs.extend(page.runs);
        page_token = page.next_page_token;
        if page_token.is_none() {
            return Ok((runs, false));
        }
        if runs.len() >= LIST_SCAN_RUNS_MAX {
            return Ok((runs, true));
        }
    }
}

fn service_error_page(error: &ServiceError) -> HttpResponse {
    let status =
        StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    refused(status, "The service refused", &error.message)
}

async fn runs_list(State(state): State<UiState>, uri: Uri) -> HttpResponse {
    let query = pairs(uri.query().unwrap_or("").as_bytes());
    let filter = RunFilter::from_pairs(query.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let list_query = Some(filter.query.clone()).filter(|q| !q.is_empty());
    match all_runs(&state, None, list_query).await {
        Ok((runs, capped)) => {
            let mut view = RunsView::select(runs, filter, now());
            view.scan_limit = capped.then_some(LIST_SCAN_RUNS_MAX);
            html(StatusCode::OK, ui::runs_page(&view))
        }
        // A query the service cannot parse: the page says where and why.
        Err(error) if error.code == crate::api::ErrorCode::InvalidArgument => {
            let mut view = RunsView::select(Vec::new(), filter, now());
            view.error = Some(error.message);
            html(StatusCode::BAD_REQUEST, ui::runs_page(&view))
        }
        Err(error) => service_error_page(&error),
    }
}

/// The run a query string or form names (`id`, and `run` if given).
fn run_ref(fields: &BTreeMap<String, String>) -> Option<RunRef> {
    let workflow_id = fields.get("id").filter(|id| !id.is_empty())?.clone();
    let run_id = fields.get("run").filter(|run| !run.is_empty()).cloned();
    Some(RunRef {
        workflow_id,
        run_id,
    })
}

async fn describe(state: &UiState, run: RunRef) -> Result<RunDescription, ServiceError> {
    match call(state, Request::DescribeWorkflow(run)).await? {
        Response::DescribeWorkflow(description) => Ok(description),
        _ => Err(ServiceError::new(
            crate::api::ErrorCode::Internal,
            "DescribeWorkflow answered with another reply",
        )),
    }
}

/// The run's events from the first, up to `events_max`; true if there were more.
async fn events(
    state: &UiState,
    run: &RunRef,
    events_max: usize,
) -> Result<(Vec<Event>, bool), ServiceError> {
    let mut events = Vec::new();
    let mut from_event_id = 1;
    loop {
        let request = GetHistoryRequest {
            run: run.clone(),
            from_event_id,
            page_size: 0,
        };
        let Response::GetHistory(page) = call(state, Request::GetHistory(request)).await? else {
            return Err(ServiceError::new(
                crate::api::ErrorCode::Internal,
                "GetHistory answered with another reply",
            ));
        };
        events.extend(page.events);
        match page.next_event_id {
            None => return Ok((events, false)),
            Some(_) if events.len() >= events_max => {
                events.truncate(events_max);
                return Ok((events, true));
            }
            Some(next) => from_event_id = next,
        }
    }
}

async fn render_run(
    state: &UiState,
    fields: &BTreeMap<String, String>,
    flash: Option<(String, bool)>,
) -> HttpResponse {
    let Some(run) = run_ref(fields) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "No run",
            "the address names no workflow id (?id=…)",
        );
    };
    let description = match describe(state, run.clone()).await {
        Ok(description) => description,
        Err(error) => return service_error_page(&error),
    };
    // The history of the run described, even if a newer run took the id meanwhile.
    let run = RunRef {
        workflow_id: run.workflow_id,
        run_id: Some(description.run_id.clone()),
    };
    let (events, history_cut) = match events(state, &run, RUN_PAGE_EVENTS_MAX).await {
        Ok(read) => read,
        Err(error) => return service_error_page(&error),
    };
    let view = RunView {
        description,
        events,
        history_cut,
        view: if fields.get("view").is_some_and(|v| v == "full") {
            HistoryView::Full
        } else {
            HistoryView::Compact
        },
        zoom: fields.get("zoom").and_then(|z| z.parse().ok()).unwrap_or(1),
        now: now(),
        flash: flash.or_else(|| done_message(fields)),
    };
    html(StatusCode::OK, ui::run_page(&view))
}

/// The message after an action's redirect (fixed texts, never echoed input).
fn done_message(fields: &BTreeMap<String, String>) -> Option<(String, bool)> {
    let message = match fields.get("done")?.as_str() {
        "signal" => "Signal sent.",
        "cancel" => "Cancellation requested.",
        "terminate" => "Run terminated.",
        _ => return None,
    };
    Some((message.to_string(), false))
}

async fn run_page(State(state): State<UiState>, uri: Uri) -> HttpResponse {
    let fields = pairs(uri.query().unwrap_or("").as_bytes());
    render_run(&state, &fields, None).await
}

async fn history_json(State(state): State<UiState>, uri: Uri) -> HttpResponse {
    let fields = pairs(uri.query().unwrap_or("").as_bytes());
    let Some(run) = run_ref(&fields) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "No run",
            "the address names no workflow id (?id=…)",
        );
    };
    let description = match describe(&state, run.clone()).await {
        Ok(description) => description,
        Err(error) => return service_error_page(&error),
    };
    let run = RunRef {
        workflow_id: run.workflow_id,
        run_id: Some(description.run_id.clone()),
    };
    let events = match events(&state, &run, usize::MAX).await {
        Ok((events, _)) => events,
        Err(error) => return service_error_page(&error),
    };
    let history = match History::from_events(&description.workflow_id, &description.run_id, events)
    {
        Ok(history) => history,
        Err(error) => {
            return refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Bad history",
                &error.to_string(),
            );
        }
    };
    let name: String = description
        .run_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let disposition = format!("attachment; filename=\"history-{name}.json\"");
    let headers = [
        (header::CONTENT_TYPE, "application/json".to_string()),
        (header::CONTENT_DISPOSITION, disposition),
    ];
    (StatusCode::OK, headers, history.to_json()).into_response()
}

/// A request id no other UI action has (the service de-duplicates by it).
fn request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("ui-{}-{}", now().0, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A JSON field of a form; empty means `null`.
fn json_field(fields: &BTreeMap<String, String>, name: &str) -> Result<Value, String> {
    let text = fields.get(name).map_or("", |t| t.trim());
    if text.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(text)
        .map_err(|e| format!("the {name} is not JSON ({e}); a string needs quotes: \"text\""))
}

/// Runs an action and answers with a redirect to the run page, or the page with the error.
async fn act(
    state: &UiState,
    fields: &BTreeMap<String, String>,
    done: &str,
    make: impl FnOnce(RunRef) -> Result<Request, String>,
) -> HttpResponse {
    let Some(run) = run_ref(fields) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "No run",
            "the form names no workflow id",
        );
    };
    let outcome = match make(run.clone()) {
        Ok(request) => call(state, request).await.map_err(|e| e.message),
        Err(message) => Err(message),
    };
    match outcome {
        Ok(_) => {
            let run_id = run.run_id.unwrap_or_default();
            let to = format!(
                "/run{}",
                ui::html::query(&[("id", &run.workflow_id), ("run", &run_id), ("done", done)])
            );
            redirect(&to, None)
        }
        Err(message) => render_run(state, fields, Some((message, true))).await,
    }
}

async fn signal(State(state): State<UiState>, body: Bytes) -> HttpResponse {
    let fields = pairs(&body);
    let name = fields.get("name").cloned().unwrap_or_default();
    let input = json_field(&fields, "input");
    act(&state, &fields, "signal", |run| {
        Ok(Request::SignalWorkflow(SignalWorkflowRequest {
            run,
            signal_name: name,
            input: input?,
            request_id: request_id(),
            identity: UI_IDENTITY.to_string(),
        }))
    })
    .await
}

async fn cancel(State(state): State<UiState>, body: Bytes) -> HttpResponse {
    let fields = pairs(&body);
    let reason = fields.get("reason").cloned().unwrap_or_default();
    let confirmed = fields.get("confirm").is_some_and(|c| c == "yes");
    act(&state, &fields, "cancel", |run| {
        confirmed
            .then_some(())
            .ok_or("tick the box to confirm the cancellation")?;
        Ok(Request::CancelWorkflow(CancelWorkflowRequest {
            run,
            reason,
            identity: UI_IDENTITY.to_string(),
        }))
    })
    .await
}

async fn terminate(State(state): State<UiState>, body: Bytes) -> HttpResponse {
    let fields = pairs(&body);
    let reason = fields.get("reason").cloned().unwrap_or_default();
    let confirmed = fields.get("confirm").is_some_and(|c| c == "yes");
    act(&state, &fields, "terminate", |run| {
        confirmed
            .then_some(())
            .ok_or("tick the box to confirm the termination")?;
        Ok(Request::TerminateWorkflow(TerminateWorkflowRequest {
            run,
            reason,
            details: None,
            identity: UI_IDENTITY.to_string(),
        }))
    })
    .await
}

async fn query(State(state): State<UiState>, body: Bytes) -> HttpResponse {
    let fields = pairs(&body);
    let Some(run) = run_ref(&fields) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "No run",
            "the form names no workflow id",
        );
    };
    let name = fields.get("name").cloned().unwrap_or_default();
    let answer = match json_field(&fields, "args") {
        Ok(args) => {
            let request = QueryWorkflowRequest {
                run,
                query_name: name.clone(),
                args,
            };
            match call(&state, Request::QueryWorkflow(request)).await {
                Ok(Response::QueryWorkflow(reply)) => Ok(reply.answer),
                Ok(_) => Err("QueryWorkflow answered with another reply".to_string()),
                Err(error) => Err(error.message),
            }
        }
        Err(message) => Err(message),
    };
    let flash = match answer {
        Ok(answer) => (format!("Query {name} answered: {answer}"), false),
        Err(message) => (format!("Query {name} failed: {message}"), true),
    };
    render_run(&state, &fields, Some(flash)).await
}

/// The cluster page: members and shard leases (or why there are none).
async fn cluster_page(State(state): State<UiState>) -> HttpResponse {
    let Some(cluster) = &state.cluster else {
        let why = "This server is not a member of a cluster (`retrace server --cluster`).";
        return html(StatusCode::OK, ui::cluster_page(Err(why)));
    };
    match cluster.cluster_view().await {
        Ok(view) => html(StatusCode::OK, ui::cluster_page(Ok(&view))),
        Err(error) => service_error_page(&error),
    }
}

async fn task_queues(State(state): State<UiState>) -> HttpResponse {
    let (open, _) = match all_runs(&state, Some(RunStatus::Running), None).await {
        Ok(read) => read,
        Err(error) => return service_error_page(&error),
    };
    let request = Request::DescribeTaskQueue(DescribeTaskQueueRequest::default());
    let pollers = match call(&state, request).await {
        Ok(Response::DescribeTaskQueue(description)) => description.pollers,
        Ok(other) => {
            let message = format!("DescribeTaskQueue answered {other:?}");
            return service_error_page(&ServiceError::new(ErrorCode::Internal, message));
        }
        Err(error) => return service_error_page(&error),
    };
    let mut queues: BTreeMap<String, QueueView> = BTreeMap::new();
    for poller in pollers {
        let queue = queues
            .entry(poller.task_queue.clone())
            .or_insert_with(|| QueueView {
                name: poller.task_queue.clone(),
                ..QueueView::default()
            });
        queue.pollers.push(Poller {
            identity: poller.identity,
            kind: match poller.kind {
                PollerKind::Workflow => "workflow",
                PollerKind::Activity => "activity",
            },
            last_poll: poller.last_poll_time,
            workflow_types: poller.workflow_types,
        });
    }
    for run in open.iter().take(QUEUE_SCAN_RUNS_MAX) {
        let queue = queues
            .entry(run.task_queue.clone())
            .or_insert_with(|| QueueView {
                name: run.task_queue.clone(),
                ..QueueView::default()
            });
        queue.open_runs += 1;
        let run = RunRef {
            workflow_id: run.workflow_id.clone(),
            run_id: Some(run.run_id.clone()),
        };
        let Ok(description) = describe(&state, run).await else {
            continue;
        };
        queue.workflow_backlog +=
            usize::from(description.workflow_task.as_deref() == Some("Scheduled"));
        queue.activity_backlog += description
            .pending_activities
            .iter()
            .filter(|a| a.state == "Scheduled")
            .count();
    }
    let queues: Vec<QueueView> = queues.into_values().collect();
    html(StatusCode::OK, ui::task_queues_page(&queues, now()))
}
