//! `HttpNetwork`: a node's connection to a service in another process.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};

use super::server::token_is_valid;
use super::{API_PREFIX, CLUSTER_PATH, HttpError, METHODS, decode_response, encode_request};
use crate::api::{ErrorCode, Reply, Request, ServiceError};
use crate::env::lease::ClusterView;
use crate::env::{BoxFuture, ClusterNetwork, NetError, Network};

/// How long opening a connection may take. Only the connect: requests have no
/// client-side deadline (long polls last up to the service's poll timeout;
/// callers bound every call with their Env clock).
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// How long an idle pooled connection is kept.
pub const POOL_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Bytes of an unexpected (non-JSON) error body quoted in the error message.
const QUOTED_BODY_BYTES_MAX: usize = 200;

/// Calls the service at `base_url` over HTTP/JSON, on a pooled keep-alive client.
///
/// A connection that cannot be opened is [`NetError::Unreachable`] (the
/// service did not act, so the caller may retry freely); a connection lost
/// after the request was sent is [`NetError::Disconnected`] (it may have acted:
/// the engine's request ids and task tokens make retries safe).
#[derive(Clone, Debug)]
pub struct HttpNetwork {
    client: reqwest::Client,
    base_url: String,
    /// Each API method's URL, parsed once (parsing per request showed in profiles).
    method_urls: Arc<BTreeMap<&'static str, reqwest::Url>>,
    authorization: Option<HeaderValue>,
}

impl HttpNetwork {
    /// A network to the service at `base_url` (`http://host:port`), sending
    /// `token` as a bearer token if given.
    pub fn new(base_url: &str, token: Option<&str>) -> Result<HttpNetwork, HttpError> {
        let base_url = check_url(base_url)?;
        let authorization = match token {
            None => None,
            Some("") => return Err(HttpError::EmptyToken),
            Some(token) if !token_is_valid(token) => return Err(HttpError::BadToken),
            Some(token) => {
                let value = HeaderValue::from_str(&format!("Bearer {token}"));
                let mut value = value.map_err(|_| HttpError::BadToken)?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .pool_idle_timeout(Duration::from_millis(POOL_IDLE_TIMEOUT_MS))
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            .map_err(|e| HttpError::Client(chain(&e)))?;
        assert!(!base_url.ends_with('/'));
        let method_urls = Arc::new(method_urls(&base_url)?);
        Ok(HttpNetwork {
            client,
            base_url,
            method_urls,
            authorization,
        })
    }

    /// The service's URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Asks `GET /healthz`: `Ok` if the service answers, healthy or not (one
    /// whose storage cannot write still serves reads; the reason is logged).
    pub async fn health(&self) -> Result<(), NetError> {
        let url = format!("{}/healthz", self.base_url);
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| net_error(&url, &e))?;
        if response.status().is_success() {
            return Ok(());
        }
        let status = response.status();
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            && let Ok(bytes) = response.bytes().await
            && let Ok(body) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && body["status"] == "unhealthy"
        {
            tracing::warn!(reason = %body["reason"], "the service is unhealthy");
            return Ok(());
        }
        Err(NetError::Unreachable(format!(
            "{url} answered {status}: is it a Retrace service?"
        )))
    }

    /// One network per URL of `addresses`, a comma-separated list (one URL
    /// for a single server; every server of a cluster, as they advertise
    /// themselves, for a cluster). Refuses an empty item and a URL listed twice.
    pub fn list(addresses: &str, token: Option<&str>) -> Result<Vec<HttpNetwork>, HttpError> {
        let mut networks: Vec<HttpNetwork> = Vec::new();
        for url in addresses.split(',').map(str::trim) {
            let network = HttpNetwork::new(url, token)?;
            if networks.iter().any(|n| n.base_url == network.base_url) {
                return Err(HttpError::BadUrl {
                    url: url.to_string(),
                    reason: "listed twice".to_string(),
                });
            }
            networks.push(network);
        }
        assert!(!networks.is_empty(), "split yields at least one item");
        Ok(networks)
    }

    /// Asks `GET /api/v1/cluster`: the cluster's members and every shard's
    /// lease, as the server's storage has them; the service's error on a
    /// server that is not a cluster member.
    pub async fn cluster_view(&self) -> Result<Result<ClusterView, ServiceError>, NetError> {
        let url = format!("{}{API_PREFIX}{CLUSTER_PATH}", self.base_url);
        let mut builder = self.client.get(&url);
        if let Some(authorization) = &self.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        let response = builder.send().await.map_err(|e| net_error(&url, &e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| net_error(&url, &e))?;
        if !status.is_success() {
            return Ok(Err(error_of(&url, status, &body)));
        }
        Ok(serde_json::from_slice(&body).map_err(|e| {
            let message = format!("the cluster view from {url} does not decode: {e}");
            ServiceError::new(ErrorCode::Internal, message)
        }))
    }
}

/// The network clients and workers use over `servers`: the one server's
/// own, or a [`ClusterNetwork`] over several (each keyed by its URL, which
/// must be the address the server advertises, so `NotOwner` redirects match).
pub fn network_over(servers: &[HttpNetwork]) -> Arc<dyn Network> {
    match servers {
        [] => panic!("a network needs at least one server"),
        [one] => Arc::new(one.clone()),
        several => {
            let members = several
                .iter()
                .map(|n| (n.base_url.clone(), Arc::new(n.clone()) as Arc<dyn Network>))
                .collect();
            Arc::new(ClusterNetwork::new(members))
        }
    }
}

/// The URL of every API method under `base_url`.
fn method_urls(base_url: &str) -> Result<BTreeMap<&'static str, reqwest::Url>, HttpError> {
    let mut urls = BTreeMap::new();
    for method in METHODS {
        let url = format!("{base_url}{API_PREFIX}{method}");
        let parsed = reqwest::Url::parse(&url).map_err(|e| HttpError::BadUrl {
            url: base_url.to_string(),
            reason: e.to_string(),
        })?;
        urls.insert(*method, parsed);
    }
    assert_eq!(urls.len(), METHODS.len());
    Ok(urls)
}

fn check_url(url: &str) -> Result<String, HttpError> {
    let bad = |reason: &str| HttpError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = url.trim_end_matches('/');
    if trimmed.starts_with("https://") {
        return Err(bad(
            "https is not supported: use http:// (behind a TLS proxy if remote)",
        ));
    }
    let Some(host) = trimmed.strip_prefix("http://") else {
        return Err(bad("expected http://host:port"));
    };
    if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
        return Err(bad("expected http://host:port, without a path"));
    }
    Ok(trimmed.to_string())
}

/// The causes of an error on one line, without reqwest's own "error sending
/// request for url (...)" wrapper: "client error (Connect): tcp connect error:
/// Connection refused (os error 111)".
fn chain(error: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    if parts.is_empty() {
        parts.push(error.to_string());
    }
    parts.join(": ")
}

/// The innermost cause ("Connection refused (os error 111)").
fn root_cause(error: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn net_error(url: &str, error: &reqwest::Error) -> NetError {
    if error.is_connect() {
        NetError::Unreachable(format!("cannot connect to {url}: {}", root_cause(error)))
    } else if error.is_timeout() {
        NetError::Timeout
    } else {
        NetError::Disconnected(format!("{url}: {}", chain(error)))
    }
}

impl Network for HttpNetwork {
    fn call(&self, request: Request) -> BoxFuture<'static, Result<Reply, NetError>> {
        let method = request.method();
        let url = self
            .method_urls
            .get(method)
            .expect("every request's method is in METHODS")
            .clone();
        let body = encode_request(&request);
        let mut builder = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, "application/json");
        if let Some(authorization) = &self.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        let sent = builder.body(body).send();
        Box::pin(async move {
            let url = url.as_str();
            let response = sent.await.map_err(|e| net_error(url, &e))?;
            let status = response.status();
            let body = response.bytes().await.map_err(|e| net_error(url, &e))?;
            Ok(reply_of(method, url, status, &body))
        })
    }
}

/// The service's reply in a response: the method's response, or its error.
fn reply_of(method: &str, url: &str, status: StatusCode, body: &[u8]) -> Reply {
    if status.is_success() {
        return decode_response(method, body).map_err(|e| {
            let message = format!("the reply to {method} from {url} does not decode: {e}");
            ServiceError::new(ErrorCode::Internal, message)
        });
    }
    Err(error_of(url, status, body))
}

/// The service's error in a refusal, or one made of its status and body.
fn error_of(url: &str, status: StatusCode, body: &[u8]) -> ServiceError {
    if let Ok(error) = serde_json::from_slice::<ServiceError>(body) {
        return error;
    }
    // Not the service's error JSON: a proxy, or another program on the port.
    let quoted: String = String::from_utf8_lossy(body)
        .chars()
        .take(QUOTED_BODY_BYTES_MAX)
        .collect();
    let message = format!("{url} answered {status}: {quoted}");
    ServiceError::new(code_of_status(status), message)
}

fn code_of_status(status: StatusCode) -> ErrorCode {
    match status.as_u16() {
        400 => ErrorCode::MalformedRequest,
        401 | 403 => ErrorCode::Unauthenticated,
        404 => ErrorCode::NotFound,
        413 => ErrorCode::PayloadTooLarge,
        429 => ErrorCode::ResourceExhausted,
        502..=504 => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_urls_must_be_plain_http_without_a_path() {
        assert_eq!(
            check_url("http://127.0.0.1:7233/").unwrap(),
            "http://127.0.0.1:7233"
        );
        for bad in [
            "127.0.0.1:7233",
            "https://x:1",
            "http://",
            "http://h:1/api",
            "ftp://h",
        ] {
            assert!(check_url(bad).is_err(), "{bad} is refused");
        }
    }

    #[test]
    fn an_error_body_that_is_not_the_services_keeps_its_status() {
        let url = "http://127.0.0.1:1/api/v1/StartWorkflow";
        let error = reply_of("StartWorkflow", url, StatusCode::BAD_GATEWAY, b"<html>").unwrap_err();
        assert_eq!(error.code, ErrorCode::Unavailable);
        assert!(error.message.contains("502") && error.message.contains("<html>"));
        let body = br#"{"code":"run_closed","message":"closed"}"#;
        let error = reply_of("SignalWorkflow", url, StatusCode::CONFLICT, body).unwrap_err();
        assert_eq!(error, ServiceError::new(ErrorCode::RunClosed, "closed"));
    }
}
