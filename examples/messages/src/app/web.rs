//! The page and its JSON API.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the page (self-contained HTML, vanilla JS) |
//! | `POST /api/runs` | starts a run; body `{}` or `{"message_id": 2, "workflow_id": "my-run"}` |
//! | `GET /api/runs/{id}` | the run's [`RunView`]: status, stage, messages so far, timer, retries |
//! | `POST /api/runs/{id}/proceed` | sends the signal `proceed` |
//! | `GET /api/runs/{id}/history` | the run's history, canonical JSON |
//! | `GET /healthz` | `{"status": "ok"}` |
//! | `/stand-in/...` | the stand-in APIs (see `stand_in`) |
//!
//! Errors are `{"code": "...", "message": "..."}` with a 4xx/5xx status.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use retrace::api::{
    ErrorCode, GetResultRequest, PendingActivity, Request, Response as ApiResponse, RunOutcome,
    RunRef,
};
use retrace::client::{Client, ClientError, StartOptions};
use retrace::env::{Env, RunStatus};
use retrace::types::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::stand_in::{JOKE_PATH, MisbehaveRequest, POKEMON_PATH, StandIns};
use super::{AppConfig, SqliteMessages};
use crate::{MESSAGES_QUERY, Message, OrderInput, OrderOfMessages, PROCEED_SIGNAL, Progress};

/// Longest workflow id the API accepts.
pub const WORKFLOW_ID_BYTES_MAX: usize = 64;
/// How long a status request waits for the worker to answer the query.
const QUERY_WAIT_MS: u64 = 3_000;
/// Largest request body the API reads.
const REQUEST_BYTES_MAX: usize = 4 * 1024;

const PAGE: &str = include_str!("page.html");

/// What the handlers share.
pub(crate) struct AppState {
    client: Client,
    env: Env,
    store: SqliteMessages,
    sleep_ms: u64,
    starts: AtomicU64,
    stand_ins: StandIns,
}

impl AppState {
    pub(crate) fn new(
        client: Client,
        env: Env,
        store: SqliteMessages,
        config: &AppConfig,
    ) -> Arc<AppState> {
        Arc::new(AppState {
            client,
            env,
            store,
            sleep_ms: config.sleep_ms,
            starts: AtomicU64::new(0),
            stand_ins: StandIns::default(),
        })
    }
}

/// The app's routes.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/api/runs", post(start))
        .route("/api/runs/{workflow_id}", get(status))
        .route("/api/runs/{workflow_id}/proceed", post(proceed))
        .route("/api/runs/{workflow_id}/history", get(history))
        .route(&format!("{POKEMON_PATH}/{{id}}"), get(stand_in_pokemon))
        .route(JOKE_PATH, get(stand_in_joke))
        .route("/stand-in/misbehave", post(stand_in_misbehave))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_route",
                "no such page or endpoint",
            )
        })
        .with_state(state)
}

/// A refusal: status, stable code, message for people.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn no_run(workflow_id: &str) -> ApiError {
        let message = format!("there is no run with workflow id {workflow_id:?}: start one first");
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A client error, in the words of this app.
    fn from_client(workflow_id: &str, error: &ClientError) -> ApiError {
        match error.code() {
            Some(ErrorCode::NotFound) => ApiError::no_run(workflow_id),
            Some(ErrorCode::RunClosed) => already_closed(workflow_id, "closed"),
            Some(ErrorCode::AlreadyStarted) => ApiError::new(
                StatusCode::CONFLICT,
                "already_started",
                format!("a run with workflow id {workflow_id:?} is already running"),
            ),
            Some(_) => ApiError::new(StatusCode::BAD_GATEWAY, "engine_error", error.to_string()),
            None => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "engine_unreachable",
                error.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"code": self.code, "message": self.message});
        (self.status, axum::Json(body)).into_response()
    }
}

/// A blocking database task that panicked or was cancelled (a bug).
fn internal(error: &tokio::task::JoinError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        error.to_string(),
    )
}

fn already_closed(workflow_id: &str, how: &str) -> ApiError {
    let message = format!(
        "run {workflow_id:?} has already {how}: proceed changes nothing (start a new run instead)"
    );
    let code = if how == "completed" {
        "already_completed"
    } else {
        "already_closed"
    };
    ApiError::new(StatusCode::CONFLICT, code, message)
}

/// What `POST /api/runs` accepts (every field optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    workflow_id: Option<String>,
    message_id: Option<u32>,
}

fn parse_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.len() > REQUEST_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "the body is over {REQUEST_BYTES_MAX} bytes"
        )));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|error| {
        ApiError::bad_request(format!(
            "the body is not valid JSON of the expected shape: {error}"
        ))
    })
}

fn check_workflow_id(workflow_id: &str) -> Result<(), ApiError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if workflow_id.is_empty()
        || workflow_id.len() > WORKFLOW_ID_BYTES_MAX
        || !workflow_id.chars().all(allowed)
    {
        return Err(ApiError::bad_request(format!(
            "workflow id {:?}: use 1 to {WORKFLOW_ID_BYTES_MAX} letters, digits, '-', '_' or '.'",
            crate::shorten(workflow_id, WORKFLOW_ID_BYTES_MAX)
        )));
    }
    Ok(())
}

async fn read_message(state: &AppState, message_id: u32) -> Result<Option<String>, ApiError> {
    let store = state.store.clone();
    let read = tokio::task::spawn_blocking(move || store.read(message_id)).await;
    let read = read.map_err(|error| internal(&error))?;
    read.map_err(|error| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database",
            error.to_string(),
        )
    })
}

/// The message a new run fetches: the one asked for, or the next in turn.
async fn message_for(state: &AppState, asked: Option<u32>) -> Result<u32, ApiError> {
    let starts = state.starts.fetch_add(1, Ordering::Relaxed);
    let message_id = match asked {
        Some(message_id) => message_id,
        None => {
            let store = state.store.clone();
            let count = tokio::task::spawn_blocking(move || store.count()).await;
            let count = count.map_err(|error| internal(&error))?;
            let count = count.map_err(|error| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database",
                    error.to_string(),
                )
            })?;
            u32::try_from(starts % u64::from(count.max(1))).expect("below a u32") + 1
        }
    };
    if read_message(state, message_id).await?.is_none() {
        return Err(ApiError::bad_request(format!(
            "there is no stored message {message_id} in {}",
            state.store.path().display()
        )));
    }
    Ok(message_id)
}

async fn start(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let request: StartRequest = parse_body(&body)?;
    let workflow_id = match request.workflow_id {
        Some(workflow_id) => workflow_id,
        None => {
            let now = state.env.now().as_millis();
            format!("messages-{now}-{:04x}", state.env.random() & 0xffff)
        }
    };
    check_workflow_id(&workflow_id)?;
    let message_id = message_for(&state, request.message_id).await?;
    let input = OrderInput {
        message_id,
        sleep_ms: state.sleep_ms,
    };
    let options = StartOptions::new(workflow_id.clone(), crate::TASK_QUEUE);
    let handle = state
        .client
        .start::<OrderOfMessages>(options, input)
        .await
        .map_err(|error| ApiError::from_client(&workflow_id, &error))?;
    tracing::info!(
        workflow_id,
        run_id = handle.run_id,
        message_id,
        "started a run"
    );
    let body =
        json!({"workflow_id": workflow_id, "run_id": handle.run_id, "message_id": message_id});
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// What `GET /api/runs/{id}` answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    /// The workflow id.
    pub workflow_id: String,
    /// The run id.
    pub run_id: String,
    /// Running, Completed, Failed, ...
    pub status: RunStatus,
    /// The app's clock now (the page counts the timer down against it).
    pub now: Timestamp,
    /// The workflow's own account (its query `messages`), if it answered.
    pub progress: Option<Progress>,
    /// The messages so far; a completed run's result.
    pub messages: Vec<Message>,
    /// When the pending durable timer fires.
    pub timer_fires_at: Option<Timestamp>,
    /// Activities not finished, with their attempt and last failure.
    pub pending_activities: Vec<PendingActivity>,
    /// Events in the history.
    pub history_length: u64,
    /// Why the run failed, if it did.
    pub failure: Option<String>,
    /// Why `progress` is missing, if it is.
    pub note: Option<String>,
}

async fn status(
    State(state): State<Arc<AppState>>,
    Path(workflow_id): Path<String>,
) -> Result<axum::Json<RunView>, ApiError> {
    check_workflow_id(&workflow_id)?;
    let describe = state.client.describe(&workflow_id, None).await;
    let description = describe.map_err(|error| ApiError::from_client(&workflow_id, &error))?;
    let query =
        state
            .client
            .query::<Progress>(&workflow_id, Some(&description.run_id), MESSAGES_QUERY, ());
    let (progress, note) = match state.env.timeout(QUERY_WAIT_MS, query).await {
        Ok(Ok(progress)) => (Some(progress), None),
        Ok(Err(error)) => (
            None,
            Some(format!("the query {MESSAGES_QUERY:?} failed: {error}")),
        ),
        Err(_) => (
            None,
            Some(format!("no worker answered within {QUERY_WAIT_MS} ms")),
        ),
    };
    let mut view = RunView {
        workflow_id: workflow_id.clone(),
        run_id: description.run_id.clone(),
        status: description.status,
        now: state.env.now(),
        messages: progress
            .as_ref()
            .map(|p| p.messages.clone())
            .unwrap_or_default(),
        progress,
        timer_fires_at: description.pending_timers.first().map(|t| t.fire_time),
        pending_activities: description.pending_activities,
        history_length: description.history_length,
        failure: None,
        note,
    };
    if description.status.is_closed() {
        add_outcome(&state, &mut view).await?;
    }
    Ok(axum::Json(view))
}

/// Fills a closed run's result (the authoritative messages) or failure.
async fn add_outcome(state: &AppState, view: &mut RunView) -> Result<(), ApiError> {
    let request = GetResultRequest {
        run: RunRef {
            workflow_id: view.workflow_id.clone(),
            run_id: Some(view.run_id.clone()),
        },
        wait_ms: 0,
    };
    let reply = state.client.call(Request::GetResult(request)).await;
    let reply = reply.map_err(|error| ApiError::from_client(&view.workflow_id, &error))?;
    let ApiResponse::GetResult(result) = reply else {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "engine_error",
            "unexpected reply",
        ));
    };
    match result.outcome {
        Some(RunOutcome::Completed { result }) => {
            view.messages = serde_json::from_value(result).map_err(|error| {
                ApiError::new(StatusCode::BAD_GATEWAY, "engine_error", error.to_string())
            })?;
        }
        Some(RunOutcome::Failed { failure }) => view.failure = Some(failure.to_string()),
        Some(other) => view.failure = Some(format!("{other:?}")),
        None => {}
    }
    Ok(())
}

async fn proceed(
    State(state): State<Arc<AppState>>,
    Path(workflow_id): Path<String>,
) -> Result<Response, ApiError> {
    check_workflow_id(&workflow_id)?;
    let describe = state.client.describe(&workflow_id, None).await;
    let description = describe.map_err(|error| ApiError::from_client(&workflow_id, &error))?;
    match description.status {
        RunStatus::Running => {}
        RunStatus::Completed => return Err(already_closed(&workflow_id, "completed")),
        other => return Err(already_closed(&workflow_id, &format!("closed ({other:?})"))),
    }
    let query =
        state
            .client
            .query::<Progress>(&workflow_id, Some(&description.run_id), MESSAGES_QUERY, ());
    if let Ok(Ok(progress)) = state.env.timeout(QUERY_WAIT_MS, query).await
        && let Some(at) = progress.proceeded_at
    {
        let message =
            format!("run {workflow_id:?} already received proceed at {at}; nothing changed");
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_proceeded",
            message,
        ));
    }
    state
        .client
        .signal(
            &workflow_id,
            Some(&description.run_id),
            PROCEED_SIGNAL,
            json!({"by": "the page"}),
        )
        .await
        .map_err(|error| ApiError::from_client(&workflow_id, &error))?;
    tracing::info!(workflow_id, "sent proceed");
    let body = json!({"workflow_id": workflow_id, "signal": PROCEED_SIGNAL, "sent": true});
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

async fn history(
    State(state): State<Arc<AppState>>,
    Path(workflow_id): Path<String>,
) -> Result<Response, ApiError> {
    check_workflow_id(&workflow_id)?;
    let history = state.client.history(&workflow_id, None).await;
    let history = history.map_err(|error| ApiError::from_client(&workflow_id, &error))?;
    Ok(([(CONTENT_TYPE, "application/json")], history.to_json()).into_response())
}

async fn stand_in_pokemon(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    state.stand_ins.pokemon(&id)
}

async fn stand_in_joke(State(state): State<Arc<AppState>>) -> Response {
    state.stand_ins.joke()
}

async fn stand_in_misbehave(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            r#"give {"endpoint": "pokemon"|"joke", "mode": "down"|"garbage"|"wrong_shape", "calls": N}"#,
        ));
    }
    let request: MisbehaveRequest = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_request(format!("the body does not fit: {error}")))?;
    state
        .stand_ins
        .misbehave(&request)
        .map_err(ApiError::bad_request)?;
    Ok(axum::Json(
        serde_json::to_value(&request).expect("a request encodes"),
    ))
}
