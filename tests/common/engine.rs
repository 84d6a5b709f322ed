//! An in-process engine for end-to-end tests, and the check every test ends
//! with: each history is well-formed and replays to its recorded result.

use std::sync::Arc;

use retrace::api::RunOutcome;
use retrace::client::Client;
use retrace::engine::{EmbeddedEngine, ServiceConfig};
use retrace::env::{
    BoxFuture, ListQuery, MemoryStorage, RunRecord, Storage, StorageError, WriteBatch,
};
use retrace::history::{Event, EventKind};
use retrace::worker::{Worker, WorkerBuilder};
use retrace::workflow::{Replayer, RunResult, WorkflowRegistry};

/// Two workers with one setup on one task queue, as the end-to-end tests run:
/// each task may go to either, so runs move between workers and their caches.
pub struct Workers {
    pub a: Worker,
    pub b: Worker,
}

impl Workers {
    /// Shuts both down, giving back what they hold.
    pub async fn shutdown(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

/// `builder.start_two()`: two workers, "worker-a" and "worker-b".
pub trait StartTwo {
    fn start_two(self) -> Workers;
}

impl StartTwo for WorkerBuilder {
    fn start_two(self) -> Workers {
        let a = self.clone().identity("worker-a").start();
        let b = self.identity("worker-b").start();
        Workers { a, b }
    }
}

/// The engine and the workflow code its workers run.
pub struct TestEngine {
    pub engine: EmbeddedEngine,
    pub registry: WorkflowRegistry,
}

impl TestEngine {
    pub async fn new(registry: WorkflowRegistry) -> TestEngine {
        let engine = EmbeddedEngine::in_memory()
            .await
            .expect("an in-memory engine starts");
        TestEngine { engine, registry }
    }

    /// An engine over `storage` with the default configuration.
    pub async fn over(storage: Arc<dyn Storage>, registry: WorkflowRegistry) -> TestEngine {
        let engine = EmbeddedEngine::start(storage, ServiceConfig::default())
            .await
            .expect("the engine starts");
        TestEngine { engine, registry }
    }

    pub fn client(&self) -> Client {
        self.engine.client()
    }

    /// Every run's history is well-formed (the client validates each event as it
    /// reads) and replays from scratch, incrementally and after eviction to the
    /// outcome the service recorded.
    pub async fn check_histories(&self) -> usize {
        let client = self.client();
        let runs = client.list_all(None).await.expect("list works");
        let replayer = Replayer::new(self.registry.clone());
        for run in &runs {
            let history = client
                .history(&run.workflow_id, Some(&run.run_id))
                .await
                .expect("history is well-formed");
            let replayed = replayer
                .replay_three_ways(&history)
                .unwrap_or_else(|e| panic!("run {} does not replay: {e}", run.run_id));
            let outcome = client.run_outcome(&run.workflow_id, Some(&run.run_id));
            let recorded = if run.status.is_closed() {
                Some(outcome.await.expect("closed runs have outcomes"))
            } else {
                None
            };
            match (recorded, replayed.result) {
                (Some(RunOutcome::Completed { result }), Some(RunResult::Completed(value))) => {
                    assert_eq!(result, value)
                }
                (Some(RunOutcome::Failed { failure }), Some(RunResult::Failed(replayed))) => {
                    assert_eq!(failure, replayed)
                }
                (Some(RunOutcome::Canceled { .. }), Some(RunResult::Canceled)) => {}
                (
                    Some(RunOutcome::ContinuedAsNew { new_run_id }),
                    Some(RunResult::ContinuedAsNew(input)),
                ) => {
                    let next = client
                        .history(&run.workflow_id, Some(&new_run_id))
                        .await
                        .expect("the next run is stored");
                    let EventKind::WorkflowExecutionStarted(started) = &next.events()[0].kind
                    else {
                        panic!("run {new_run_id} does not start with WorkflowExecutionStarted");
                    };
                    assert_eq!(started.input, input, "run {new_run_id} got another input");
                }
                (Some(RunOutcome::Terminated { .. } | RunOutcome::TimedOut), _) => {}
                (None, _) => {}
                (recorded, replayed) => panic!(
                    "run {}: recorded {recorded:?}, replay gives {replayed:?}",
                    run.run_id
                ),
            }
        }
        runs.len()
    }
}

/// The write of a [`HookedStorage`]: given the inner storage and the batch.
pub type WriteHook = Box<
    dyn Fn(&Arc<MemoryStorage>, WriteBatch) -> BoxFuture<'static, Result<(), StorageError>>
        + Send
        + Sync,
>;

/// In-memory storage whose writes go through a test's hook (to delay their
/// acknowledgment, hold them, run them detached); reads go straight through.
pub struct HookedStorage {
    pub inner: Arc<MemoryStorage>,
    pub write: WriteHook,
}

impl HookedStorage {
    pub fn new(inner: Arc<MemoryStorage>, write: WriteHook) -> Arc<HookedStorage> {
        Arc::new(HookedStorage { inner, write })
    }
}

impl Storage for HookedStorage {
    fn write(&self, batch: WriteBatch) -> BoxFuture<'_, Result<(), StorageError>> {
        (self.write)(&self.inner, batch)
    }
    fn read_run(&self, run_id: &str) -> BoxFuture<'_, Result<Option<RunRecord>, StorageError>> {
        self.inner.read_run(run_id)
    }
    fn current_run(
        &self,
        workflow_id: &str,
    ) -> BoxFuture<'_, Result<Option<String>, StorageError>> {
        self.inner.current_run(workflow_id)
    }
    fn read_events(
        &self,
        run_id: &str,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Event>, StorageError>> {
        self.inner.read_events(run_id, from, limit)
    }
    fn list_runs(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<RunRecord>, StorageError>> {
        self.inner.list_runs(query)
    }
    fn read_buffered(
        &self,
        run_id: &str,
    ) -> BoxFuture<'_, Result<retrace::env::BufferedRead, StorageError>> {
        self.inner.read_buffered(run_id)
    }
}
