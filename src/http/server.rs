//! The HTTP/JSON server: axum routes in front of a [`RequestHandler`].
//!
//! This is production I/O at the edge, like `src/env/tokio_env.rs`: it uses
//! tokio's listener, `tokio::spawn` for the accept loop, and tokio's timer for
//! the shutdown grace period. None of it runs in the simulator, which drives the
//! service through its own network.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request as HttpRequest, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::ui;
use super::{
    API_PREFIX, CLUSTER_PATH, DecodeRequestError, HttpError, METHODS, decode_request,
    encode_response,
};
use super::{response_fits, to_json};
use crate::api::{ErrorCode, ServiceError};
use crate::env::lease::ClusterView;
use crate::env::{BoxFuture, RequestHandler};
use crate::history::HistoryLimits;

/// Payloads a request body may carry at full size (a workflow task completion
/// carries several commands).
pub const BODY_PAYLOADS_MAX: usize = 2;
/// Room in a body for what surrounds its payloads.
pub const BODY_ENVELOPE_BYTES: usize = 256 * 1024;
/// Longest token accepted (it travels in every request's header).
pub const TOKEN_BYTES_MAX: usize = 1024;

/// How the server listens and whom it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Address to bind (port 0: an ephemeral port).
    pub listen: SocketAddr,
    /// Bearer token every API request must carry; required off loopback.
    pub token: Option<String>,
    /// Largest request body; larger ones get 413 `payload_too_large`.
    pub body_bytes_max: usize,
}

impl HttpConfig {
    /// Listens on `listen` without a token, with the body limit that fits `limits`.
    pub fn new(listen: SocketAddr, limits: &HistoryLimits) -> HttpConfig {
        HttpConfig {
            listen,
            token: None,
            body_bytes_max: body_bytes_max_for(limits),
        }
    }

    /// The same config with a bearer token (or none).
    pub fn with_token(mut self, token: Option<String>) -> HttpConfig {
        self.token = token;
        self
    }

    /// Refuses a config that would expose the service or could never match.
    pub fn check(&self) -> Result<(), HttpError> {
        assert!(self.body_bytes_max > 0, "body_bytes_max must be positive");
        match &self.token {
            None if !self.listen.ip().is_loopback() => Err(HttpError::TokenRequired {
                address: self.listen,
            }),
            None => Ok(()),
            Some(token) if token.is_empty() => Err(HttpError::EmptyToken),
            Some(token) if !token_is_valid(token) => Err(HttpError::BadToken),
            Some(_) => Ok(()),
        }
    }
}

/// Printable ASCII without spaces, as a header value carries it, bounded.
pub(super) fn token_is_valid(token: &str) -> bool {
    token.len() <= TOKEN_BYTES_MAX && token.bytes().all(|b| b.is_ascii_graphic())
}

/// The largest request body the service can need under `limits`.
pub fn body_bytes_max_for(limits: &HistoryLimits) -> usize {
    let payload_bytes_max = usize::try_from(limits.payload_bytes_max).unwrap_or(usize::MAX);
    let body_bytes_max = payload_bytes_max
        .saturating_mul(BODY_PAYLOADS_MAX)
        .saturating_add(BODY_ENVELOPE_BYTES);
    assert!(body_bytes_max > payload_bytes_max);
    body_bytes_max
}

#[derive(Clone)]
struct AppState {
    handler: Arc<dyn RequestHandler>,
    body_bytes_max: usize,
}

/// What `GET /api/v1/cluster` answers from: the cluster's members and
/// shard leases as the storage has them, or why there are none.
pub trait ClusterSource: Send + Sync {
    /// The view, or the service's refusal (`invalid_argument` outside a
    /// cluster, `unavailable` when the storage cannot say).
    fn cluster_view(&self) -> BoxFuture<'static, Result<ClusterView, ServiceError>>;
}

impl ClusterSource for crate::engine::Service {
    fn cluster_view(&self) -> BoxFuture<'static, Result<ClusterView, ServiceError>> {
        let service = self.clone();
        Box::pin(async move { crate::engine::Service::cluster_view(&service).await })
    }
}

/// A running HTTP server. Dropping it stops the server at once.
#[derive(Debug)]
pub struct HttpServer {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// A bound address, not yet serving: bind first, so that a taken port is
/// reported before anything else (like opening a database) is done.
#[derive(Debug)]
pub struct HttpListener {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    config: HttpConfig,
}

impl HttpListener {
    /// The address bound (with the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `handler` in the background.
    pub fn serve(self, handler: Arc<dyn RequestHandler>) -> HttpServer {
        self.serve_with_cluster(handler, None)
    }

    /// Serves `handler` in the background, and `GET /api/v1/cluster` from
    /// `cluster` (without one, that route answers `invalid_argument`).
    pub fn serve_with_cluster(
        self,
        handler: Arc<dyn RequestHandler>,
        cluster: Option<Arc<dyn ClusterSource>>,
    ) -> HttpServer {
        let HttpListener {
            listener,
            local_addr,
            config,
        } = self;
        let listener = listener.tap_io(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        });
        let app = router(handler, cluster, &config);
        let (stop, stopped) = oneshot::channel::<()>();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        let task = tokio::spawn(async move { serve.await });
        let token = config.token.is_some();
        tracing::info!(address = %local_addr, token, "HTTP API listening");
        HttpServer {
            local_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

impl HttpServer {
    /// Checks `config` and binds its address.
    pub async fn bind(config: HttpConfig) -> Result<HttpListener, HttpError> {
        config.check()?;
        let bind_error = |e: std::io::Error| HttpError::Bind {
            address: config.listen,
            message: e.to_string(),
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        assert!(config.listen.port() == 0 || local_addr.port() == config.listen.port());
        Ok(HttpListener {
            listener,
            local_addr,
            config,
        })
    }

    /// Checks `config`, binds its address and serves `handler` in the background.
    pub async fn start(
        handler: Arc<dyn RequestHandler>,
        config: HttpConfig,
    ) -> Result<HttpServer, HttpError> {
        Ok(HttpServer::bind(config).await?.serve(handler))
    }

    /// The address bound (with the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The URL clients use: `http://{local_addr}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Stops accepting connections, lets requests in flight finish for up to
    /// `grace_ms`, then cuts the rest (long polls included: the service's state
    /// is durable at every acknowledged step, so cutting them loses nothing).
    pub async fn shutdown(mut self, grace_ms: u64) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self
            .task
            .take()
            .expect("the task is taken only here and in drop");
        let abort = task.abort_handle();
        let result = match tokio::time::timeout(Duration::from_millis(grace_ms), task).await {
            Ok(Ok(served)) => served,
            Ok(Err(join_error)) if join_error.is_cancelled() => Ok(()),
            Ok(Err(join_error)) => Err(std::io::Error::other(join_error.to_string())),
            Err(_) => {
                tracing::info!(
                    grace_ms,
                    "requests still in flight after the grace period: cut"
                );
                abort.abort();
                Ok(())
            }
        };
        assert!(self.task.is_none() && self.stop.is_none());
        result
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn router(
    handler: Arc<dyn RequestHandler>,
    cluster: Option<Arc<dyn ClusterSource>>,
    config: &HttpConfig,
) -> Router {
    let health_handler = Arc::clone(&handler);
    let metrics_handler = Arc::clone(&handler);
    let loopback = config.listen.ip().is_loopback();
    let pages = ui::router(
        Arc::clone(&handler),
        cluster.clone(),
        config.token.as_deref(),
        loopback,
    );
    let state = AppState {
        handler,
        body_bytes_max: config.body_bytes_max,
    };
    let api_path = format!("{API_PREFIX}{{method}}");
    let mut router = Router::new()
        .route(&api_path, post(call).fallback(method_not_allowed))
        .route(
            "/metrics",
            get(move || metrics(Arc::clone(&metrics_handler))),
        )
        .route(
            &format!("{API_PREFIX}{CLUSTER_PATH}"),
            get(move || cluster_view(cluster.clone())),
        )
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(config.body_bytes_max))
        .with_state(state);
    if let Some(token) = &config.token {
        let expected: Arc<str> = Arc::from(token.as_str());
        router = router.layer(middleware::from_fn_with_state(expected, authenticate));
    }
    // Merged after the token layer, so they are outside it: the UI checks
    // the token in its cookie, health needs none.
    router
        .merge(pages)
        .route("/healthz", get(move || health(Arc::clone(&health_handler))))
}

/// `GET /healthz`: 200 `{"status":"ok"}`, or 503
/// `{"status":"unhealthy","reason":…}` while the service cannot write.
async fn health(handler: Arc<dyn RequestHandler>) -> HttpResponse {
    match handler.health() {
        Ok(()) => json_reply(StatusCode::OK, br#"{"status":"ok"}"#.to_vec()),
        Err(reason) => {
            let body = serde_json::json!({ "status": "unhealthy", "reason": reason });
            json_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                body.to_string().into_bytes(),
            )
        }
    }
}

/// `GET /metrics`: every metric in Prometheus's text format (behind the
/// token, like the API: Prometheus sends it as a bearer token).
async fn metrics(handler: Arc<dyn RequestHandler>) -> HttpResponse {
    match handler.metrics() {
        Some(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => refuse(ErrorCode::NotFound, "this server keeps no metrics"),
    }
}

/// `GET /api/v1/cluster`: the cluster's members and shard leases (behind
/// the token, like the API).
async fn cluster_view(cluster: Option<Arc<dyn ClusterSource>>) -> HttpResponse {
    let Some(cluster) = cluster else {
        let message = "this server is not a member of a cluster (`retrace server --cluster`)";
        return refuse(ErrorCode::InvalidArgument, message);
    };
    match cluster.cluster_view().await {
        Ok(view) => json_reply(StatusCode::OK, to_json(&view)),
        Err(error) => error_reply(&error),
    }
}

fn json_reply(status: StatusCode, body: Vec<u8>) -> HttpResponse {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error_reply(error: &ServiceError) -> HttpResponse {
    let status = StatusCode::from_u16(error.code.http_status()).expect("codes map to statuses");
    assert!(status.is_client_error() || status.is_server_error());
    json_reply(status, to_json(error))
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> HttpResponse {
    error_reply(&ServiceError::new(code, message))
}

/// Equal-time comparison, so the token cannot be guessed byte by byte.
pub(super) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authenticate(
    State(expected): State<Arc<str>>,
    headers: HeaderMap,
    request: HttpRequest,
    next: Next,
) -> HttpResponse {
    let given = headers
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes());
    match given.map(bearer_token) {
        Some(Some(token)) if same_bytes(token, expected.as_bytes()) => next.run(request).await,
        Some(Some(_)) => refuse(ErrorCode::Unauthenticated, "the bearer token is wrong"),
        Some(None) => refuse(
            ErrorCode::Unauthenticated,
            "the Authorization header is not of the form `Bearer <token>`",
        ),
        None => refuse(
            ErrorCode::Unauthenticated,
            "this server requires a token and none was sent: send the header `Authorization: Bearer <token>`",
        ),
    }
}

/// The token of an `Authorization: Bearer <token>` header; the scheme's name
/// is case-insensitive (RFC 7235), blanks after it are skipped.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    let (scheme, rest) = value.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) || rest.first().is_none_or(|b| *b != b' ') {
        return None;
    }
    let token = rest.trim_ascii_start();
    (!token.is_empty()).then_some(token)
}

async fn call(
    State(state): State<AppState>,
    Path(method): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_refused(&rejection, state.body_bytes_max),
    };
    assert!(body.len() <= state.body_bytes_max);
    let request = match decode_request(&method, &body) {
        Ok(request) => request,
        Err(error @ DecodeRequestError::UnknownMethod { .. }) => {
            return refuse(ErrorCode::NotFound, error.to_string());
        }
        Err(error @ DecodeRequestError::Malformed { .. }) => {
            return refuse(ErrorCode::MalformedRequest, error.to_string());
        }
    };
    let method = request.method();
    match state.handler.handle(request).await {
        Ok(response) => {
            assert!(
                response_fits(method, &response),
                "{method} answered with {response:?}"
            );
            json_reply(StatusCode::OK, encode_response(&response))
        }
        Err(error) => {
            let message = &error.message;
            if error.code.http_status() >= 500 {
                tracing::warn!(method, code = ?error.code, message, "request failed");
            } else {
                tracing::debug!(method, code = ?error.code, message, "request refused");
            }
            error_reply(&error)
        }
    }
}

fn body_refused(rejection: &BytesRejection, body_bytes_max: usize) -> HttpResponse {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        let message = format!(
            "request body is larger than this server's limit of {body_bytes_max} bytes \
             (twice the payload limit plus {BODY_ENVELOPE_BYTES} bytes)"
        );
        return refuse(ErrorCode::PayloadTooLarge, message);
    }
    let message = format!("cannot read the request body: {}", rejection.body_text());
    refuse(ErrorCode::MalformedRequest, message)
}

async fn method_not_allowed(request: HttpRequest) -> HttpResponse {
    let message = format!(
        "{} {}: API methods are called with POST and a JSON body",
        request.method(),
        request.uri().path()
    );
    let mut reply = refuse(ErrorCode::MalformedRequest, message);
    *reply.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    reply
}

async fn no_route(request: HttpRequest) -> HttpResponse {
    let message = format!(
        "no route {} {}: the API is POST {API_PREFIX}{{method}} with methods {}",
        request.method(),
        request.uri().path(),
        METHODS.join(", ")
    );
    refuse(ErrorCode::NotFound, message)
}
