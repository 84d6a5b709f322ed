//! The network as a node sees it: requests to the service, replies back.
//!
//! Calls are at-most-once and may fail or time out without telling whether the
//! service acted, so retries and de-duplication live in the engine (request ids,
//! task tokens), never here.

use std::sync::Arc;

use super::BoxFuture;
use crate::api::{Reply, Request};

/// Why a call got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// No reply in time; the service may or may not have acted.
    #[error("request timed out (the service may have acted on it)")]
    Timeout,
    /// The service could not be reached; it did not act.
    #[error("service unreachable: {0}")]
    Unreachable(String),
    /// The connection broke after the request was sent; the service may have acted.
    #[error("connection lost: {0}")]
    Disconnected(String),
}

/// A node's connection to the service.
pub trait Network: Send + Sync {
    /// Sends `request` and waits for the reply. Long polls wait as long as the
    /// service holds them; callers bound the wait with their clock.
    fn call(&self, request: Request) -> BoxFuture<'static, Result<Reply, NetError>>;

    /// How many servers the network reaches (a worker polls each with at
    /// least one poller of each kind).
    fn servers(&self) -> usize {
        1
    }
}

/// What serves requests (the service).
pub trait RequestHandler: Send + Sync {
    /// Handles one request.
    fn handle(&self, request: Request) -> BoxFuture<'static, Reply>;
    /// `Err` with the reason while the handler cannot do its work (its
    /// storage cannot write); what `GET /healthz` reports.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
    /// Its metrics in Prometheus's text format (`GET /metrics`); `None` if
    /// it keeps none.
    fn metrics(&self) -> Option<String> {
        None
    }
}

/// Calls the service directly in the same process.
#[derive(Clone)]
pub struct InProcessNetwork {
    handler: Arc<dyn RequestHandler>,
}

impl InProcessNetwork {
    /// A network whose every call goes to `handler`.
    pub fn new(handler: Arc<dyn RequestHandler>) -> InProcessNetwork {
        InProcessNetwork { handler }
    }
}

impl Network for InProcessNetwork {
    fn call(&self, request: Request) -> BoxFuture<'static, Result<Reply, NetError>> {
        let reply = self.handler.handle(request);
        Box::pin(async move { Ok(reply.await) })
    }
}

/// A network that reaches nothing (for a node that only serves, like the service).
#[derive(Clone, Copy, Debug, Default)]
pub struct Unconnected;

impl Network for Unconnected {
    fn call(&self, request: Request) -> BoxFuture<'static, Result<Reply, NetError>> {
        let method = request.method();
        Box::pin(async move {
            Err(NetError::Unreachable(format!(
                "{method}: this node has no connection to a service"
            )))
        })
    }
}
