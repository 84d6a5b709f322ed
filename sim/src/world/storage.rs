//! Simulated storage with crash semantics.
//!
//! A write takes time; it becomes durable (and visible) all at once at the end
//! of that time, as a synchronous commit does. If the service's node crashes
//! before then, the write's future is dropped with the node and the write is
//! lost: nothing unsynced survives a crash. While faults are on, a write can
//! fail with an I/O error (nothing written), or commit and still report a
//! timeout (an ambiguous commit the engine must tolerate). Reads see only
//! durable data, as SQLite's readers do.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::rand::Rng;
use retrace::env::{
    BoxFuture, ListQuery, MemoryStorage, RunRecord, Storage, StorageError, WriteBatch,
};
use retrace::history::Event;

/// Fault rates of the storage (set from the swarm, cleared when healed).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StorageFaults {
    pub io_error_rate: f64,
    pub ambiguous_rate: f64,
    pub latency_ms_max: u64,
    /// Chance a write stalls (a disk hiccup) for up to `STALL_MS_MAX`.
    pub stall_rate: f64,
}

/// Longest stall of a slow write.
pub const STALL_MS_MAX: u64 = 2_000;

/// The simulated store. Clones share the same data; it outlives node crashes.
#[derive(Clone)]
pub struct SimStorage {
    durable: MemoryStorage,
    faults: Arc<Mutex<StorageFaults>>,
    faults_on: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
}

impl Default for SimStorage {
    fn default() -> Self {
        SimStorage::new()
    }
}

impl SimStorage {
    /// An empty store without faults.
    pub fn new() -> SimStorage {
        SimStorage {
            durable: MemoryStorage::new(),
            faults: Arc::new(Mutex::new(StorageFaults {
                latency_ms_max: 1,
                ..StorageFaults::default()
            })),
            faults_on: Arc::new(AtomicBool::new(false)),
            writes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Sets the fault rates and turns them on or off.
    pub fn set_faults(&self, faults: StorageFaults, on: bool) {
        *self.faults.lock().expect("storage faults lock") = faults;
        self.faults_on.store(on, Ordering::SeqCst);
    }

    /// The durable data (for checkers, which read it directly).
    pub fn durable(&self) -> &MemoryStorage {
        &self.durable
    }

    /// Writes that committed.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn faults(&self) -> (StorageFaults, bool) {
        (
            *self.faults.lock().expect("storage faults lock"),
            self.faults_on.load(Ordering::SeqCst),
        )
    }

    async fn write_inner(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let (faults, on) = self.faults();
        let mut latency_ms = madsim::rand::thread_rng().gen_range(0..=faults.latency_ms_max.max(1));
        if on && faults.stall_rate > 0.0 && madsim::rand::thread_rng().gen_bool(faults.stall_rate) {
            latency_ms += madsim::rand::thread_rng().gen_range(100..=STALL_MS_MAX);
        }
        madsim::time::sleep(Duration::from_millis(latency_ms)).await;
        if on
            && faults.io_error_rate > 0.0
            && madsim::rand::thread_rng().gen_bool(faults.io_error_rate)
        {
            return Err(StorageError::Io("simulated I/O error".to_string()));
        }
        self.durable.apply(batch)?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        if on
            && faults.ambiguous_rate > 0.0
            && madsim::rand::thread_rng().gen_bool(faults.ambiguous_rate)
        {
            return Err(StorageError::Timeout);
        }
        Ok(())
    }
}

impl Storage for SimStorage {
    fn write(&self, batch: WriteBatch) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(self.write_inner(batch))
    }

    fn read_run(&self, run_id: &str) -> BoxFuture<'_, Result<Option<RunRecord>, StorageError>> {
        self.durable.read_run(run_id)
    }

    fn current_run(
        &self,
        workflow_id: &str,
    ) -> BoxFuture<'_, Result<Option<String>, StorageError>> {
        self.durable.current_run(workflow_id)
    }

    fn read_events(
        &self,
        run_id: &str,
        from_event_id: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Event>, StorageError>> {
        self.durable.read_events(run_id, from_event_id, limit)
    }

    fn list_runs(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<RunRecord>, StorageError>> {
        self.durable.list_runs(query)
    }
}
