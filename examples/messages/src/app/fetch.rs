//! `HttpFetcher`: GETs JSON over HTTP (HTTPS with the `tls` feature).

use std::error::Error as _;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderValue};
use retrace::activity::ActivityContext;
use retrace::env::BoxFuture;
use serde_json::Value;

use super::AppError;
use crate::{BackendError, Fetcher, shorten};

/// Deadline of one GET, connect to last byte (below the activity's
/// start-to-close timeout, so a slow server fails the attempt cleanly).
pub const FETCH_TIMEOUT_MS: u64 = 5_000;
/// Largest response body read (PokeAPI's Pokémon documents are big).
pub const RESPONSE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Characters of a bad body quoted in the failure.
const QUOTED_CHARS_MAX: usize = 80;
/// Sent as `User-Agent`, as icanhazdadjoke asks of its clients.
const USER_AGENT: &str = "retrace-messages (the order-of-messages example of Retrace)";

/// GETs JSON documents with a pooled client.
#[derive(Clone, Debug)]
pub struct HttpFetcher {
    client: reqwest::Client,
}

impl HttpFetcher {
    /// A fetcher with the deadlines above.
    pub fn new() -> Result<HttpFetcher, AppError> {
        #[cfg(feature = "tls")]
        {
            // Err: a provider is already installed, which is as good.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(FETCH_TIMEOUT_MS))
            .connect_timeout(Duration::from_millis(FETCH_TIMEOUT_MS))
            .user_agent(USER_AGENT)
            .build()
            .map_err(|error| AppError::HttpClient(chain(&error)))?;
        Ok(HttpFetcher { client })
    }

    async fn get(&self, url: &str) -> Result<Value, BackendError> {
        let unavailable = |error: reqwest::Error| {
            BackendError::Unavailable(format!("GET {url}: {}", chain(&error)))
        };
        let mut response = self
            .client
            .get(url)
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .send()
            .await
            .map_err(unavailable)?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(BackendError::NotFound(format!("GET {url}: 404 Not Found")));
        }
        if !status.is_success() {
            return Err(BackendError::Unavailable(format!(
                "GET {url}: status {status}"
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unavailable)? {
            if body.len() + chunk.len() > RESPONSE_BYTES_MAX {
                let reason = format!("GET {url}: body over {RESPONSE_BYTES_MAX} bytes");
                return Err(BackendError::BadResponse(reason));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|error| {
            let text = shorten(&String::from_utf8_lossy(&body), QUOTED_CHARS_MAX);
            BackendError::BadResponse(format!("GET {url}: body is not JSON ({error}): {text:?}"))
        })
    }
}

impl Fetcher for HttpFetcher {
    fn get_json<'a>(
        &'a self,
        _ctx: &'a ActivityContext,
        url: &'a str,
    ) -> BoxFuture<'a, Result<Value, BackendError>> {
        Box::pin(self.get(url))
    }
}

/// Refuses URLs this build cannot fetch, at startup rather than at every attempt.
pub(crate) fn check_url(flag: &'static str, url: &str) -> Result<(), AppError> {
    let bad = |reason: &str| AppError::BadUrl {
        flag,
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if let Some(rest) = url.strip_prefix("https://") {
        if cfg!(not(feature = "tls")) {
            return Err(bad(
                "https needs the `tls` feature: cargo run -p retrace-messages --features tls -- ...",
            ));
        }
        rest
    } else {
        return Err(bad("the URL must start with http:// or https://"));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("the URL has no host"));
    }
    reqwest::Url::parse(url).map_err(|error| bad(&error.to_string()))?;
    Ok(())
}

/// An error and its causes, on one line ("error sending request: connection refused").
fn chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
