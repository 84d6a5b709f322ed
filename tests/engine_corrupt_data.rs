//! Damaged stored data is a permanent error of its own (`data_corrupt`), not
//! `unavailable`: clients and workers retry `unavailable` forever, so a row
//! that can never be read must say so once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use retrace::api::ErrorCode;
use retrace::client::StartOptions;
use retrace::engine::{EmbeddedEngine, ServiceConfig};
use retrace::env::{
    BoxFuture, ListQuery, MemoryStorage, RunRecord, Storage, StorageError, WriteBatch,
};
use retrace::history::Event;
use serde_json::json;

/// Memory storage whose event reads fail as corrupt once `damaged` is set.
struct DamagedEvents {
    inner: MemoryStorage,
    damaged: std::sync::atomic::AtomicBool,
    reads: AtomicUsize,
}

impl Storage for DamagedEvents {
    fn write(&self, batch: WriteBatch) -> BoxFuture<'_, Result<(), StorageError>> {
        self.inner.write(batch)
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
        if self.damaged.load(Ordering::SeqCst) {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let message = format!("run {run_id} events {from}..: not JSON");
            return Box::pin(async move { Err(StorageError::Corrupt(message)) });
        }
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

#[tokio::test(start_paused = true)]
async fn a_damaged_history_is_data_corrupt_and_the_client_does_not_retry_it() {
    let storage = Arc::new(DamagedEvents {
        inner: MemoryStorage::new(),
        damaged: false.into(),
        reads: AtomicUsize::new(0),
    });
    let engine = EmbeddedEngine::start(storage.clone(), ServiceConfig::default())
        .await
        .unwrap();
    let client = engine.client();
    client
        .start_by_name(StartOptions::new("w", "q"), "any", json!(null))
        .await
        .unwrap();
    storage.damaged.store(true, Ordering::SeqCst);
    let error = client.history("w", None).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::DataCorrupt), "{error}");
    assert!(error.to_string().contains("not JSON"), "{error}");
    assert_eq!(
        storage.reads.load(Ordering::SeqCst),
        1,
        "asked once, not retried"
    );
    assert_eq!(ErrorCode::DataCorrupt.http_status(), 500);
}
