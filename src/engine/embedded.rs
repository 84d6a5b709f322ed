//! The engine embedded in one process: service, workers and clients talking
//! in-process, on the tokio runtime.

use std::sync::Arc;

use super::{Service, ServiceConfig};
use crate::api::ServiceError;
use crate::client::Client;
use crate::env::{Env, InProcessNetwork, MemoryStorage, Storage, Unconnected};
use crate::worker::{Worker, WorkerBuilder};

/// A service with its storage, and the env its workers and clients share.
///
/// ```
/// use retrace::engine::EmbeddedEngine;
/// use retrace::client::StartOptions;
/// use retrace::workflow::WorkflowContext;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let engine = EmbeddedEngine::in_memory().await.expect("memory storage starts");
/// let worker = engine
///     .worker("greetings")
///     .workflows({
///         let mut registry = retrace::workflow::WorkflowRegistry::new();
///         registry.register_fn("greet", |_ctx: WorkflowContext, name: String| async move {
///             Ok(format!("hello {name}"))
///         });
///         registry
///     })
///     .start();
/// let run_id = engine
///     .client()
///     .start_by_name(StartOptions::new("greet-1", "greetings"), "greet", serde_json::json!("ana"))
///     .await
///     .expect("the service accepts the start");
/// let handle = engine.client().handle::<String>("greet-1", Some(&run_id));
/// assert_eq!(handle.result().await.unwrap(), "hello ana");
/// worker.shutdown().await;
/// # }
/// ```
#[derive(Clone)]
pub struct EmbeddedEngine {
    service: Service,
    env: Env,
}

impl EmbeddedEngine {
    /// An engine over in-memory storage.
    pub async fn in_memory() -> Result<EmbeddedEngine, ServiceError> {
        EmbeddedEngine::start(Arc::new(MemoryStorage::new()), ServiceConfig::default()).await
    }

    /// An engine over `storage`.
    pub async fn start(
        storage: Arc<dyn Storage>,
        config: ServiceConfig,
    ) -> Result<EmbeddedEngine, ServiceError> {
        let base = Env::tokio(Arc::new(Unconnected));
        let service = Service::start(base.clone(), storage, config).await?;
        let env = base.with_network(Arc::new(InProcessNetwork::new(service.handler())));
        Ok(EmbeddedEngine { service, env })
    }

    /// The service.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// The env workers and clients use (in-process network to the service).
    pub fn env(&self) -> &Env {
        &self.env
    }

    /// A client.
    pub fn client(&self) -> Client {
        Client::new(self.env.clone())
    }

    /// A worker builder for `task_queue`.
    pub fn worker(&self, task_queue: &str) -> WorkerBuilder {
        Worker::builder(self.env.clone(), task_queue)
    }
}
