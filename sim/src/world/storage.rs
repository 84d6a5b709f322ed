//! Simulated storage with crash semantics.
//!
//! A write takes time; it becomes durable (and visible) all at once at the end
//! of that time, as a synchronous commit does. If the service's node crashes
//! before then, the write's future is dropped with the node and the write is
//! lost: nothing unsynced survives a crash. While faults are on, a write can
//! fail with an I/O error (nothing written), or commit and still report a
//! timeout (an ambiguous commit the engine must tolerate). Reads see only
//! durable data, as SQLite's readers do.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use madsim::rand::Rng;
use retrace::engine::metrics::RunTally;
use retrace::env::lease::{ClusterView, LeaseAnswer, LeaseRequest, Member, MemberBeat};
use retrace::env::{
    BoxFuture, BufferedRead, BufferedWrite, ListQuery, MemoryStorage, RunRecord, Storage,
    StorageError, WriteBatch,
};
use retrace::history::{Event, EventKind};

use crate::faults::trace::FaultTrace;
use crate::world::lock;

/// Fault rates of the storage (set from the swarm, cleared when healed).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StorageFaults {
    pub io_error_rate: f64,
    pub ambiguous_rate: f64,
    pub latency_ms_max: u64,
    /// Chance a write stalls (a disk hiccup) for up to `STALL_MS_MAX`.
    pub stall_rate: f64,
}

/// Where storage faults are recorded, and the world's start (for their times).
type TraceSink = (Arc<FaultTrace>, madsim::time::Instant);

/// Longest stall of a slow write.
pub const STALL_MS_MAX: u64 = 2_000;

/// The simulated store. Clones share the same data; it outlives node crashes.
#[derive(Clone)]
pub struct SimStorage {
    durable: MemoryStorage,
    faults: Arc<Mutex<StorageFaults>>,
    faults_on: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    write_attempts: Arc<AtomicU64>,
    /// Rows torn on purpose (`tear_a_row`).
    torn_rows: Arc<AtomicU64>,
    /// Where the world records storage faults, and its start (for their times).
    fault_trace: Arc<Mutex<Option<TraceSink>>>,
    /// Signal payload bytes each run's buffered rows hold now, and the most
    /// they ever held (for the buffered-limit check).
    buffered_signal_bytes: Arc<Mutex<BTreeMap<String, BufferedBytes>>>,
    /// Runs started and closed by writes that committed but reported a
    /// timeout (the service cannot count them; the metrics check adds them).
    ambiguous_runs: Arc<Mutex<RunTally>>,
    /// Activity attempts the service started, as its committed writes
    /// record them: when each started (first seen), by attempt.
    service_starts: Arc<Mutex<ServiceStarts>>,
    /// Cluster mode: the service nodes cut off from storage now.
    cut_off: Arc<Mutex<BTreeSet<String>>>,
    /// Writes a node got accepted for a shard it did not hold (the fencing
    /// oracle; empty unless the storage forgot to fence).
    foreign_writes: Arc<Mutex<Vec<String>>>,
    /// Fenced writes accepted, by node.
    fenced_writes: Arc<Mutex<BTreeMap<String, u64>>>,
    /// A planted bug for the simulator's own tests: writes are not fenced.
    fencing_off: Arc<AtomicBool>,
}

/// The storage's own clock for leases: simulated time, unskewed (as a
/// database server's clock is one clock for every service).
struct StorageClock(madsim::time::Instant);

impl retrace::env::Clock for StorageClock {
    fn now(&self) -> retrace::types::Timestamp {
        retrace::types::Timestamp(1 + self.0.elapsed().as_millis() as u64)
    }

    fn sleep_until(&self, deadline: retrace::types::Timestamp) -> BoxFuture<'static, ()> {
        let at = self.0 + Duration::from_millis(deadline.as_millis().saturating_sub(1));
        Box::pin(madsim::time::sleep_until(at))
    }
}

/// Activity attempts by (run id, scheduled event id, attempt): when the
/// service started each, on its clock.
pub type ServiceStarts = BTreeMap<(String, u64, u32), retrace::types::Timestamp>;

/// The attempts a run's state holds as started.
fn started_attempts(state: &[u8]) -> Vec<(u64, u32, retrace::types::Timestamp)> {
    use retrace::engine::machine::{ActivityPhase, RunState};
    // Most writes hold no started attempt: skip decoding those (an
    // activity's started phase is encoded as `{"Started":{"started_time"`;
    // a started workflow task's, which most writes hold, differs).
    const STARTED_ACTIVITY: &[u8] = b"\"Started\":{\"started_time\"";
    if !state
        .windows(STARTED_ACTIVITY.len())
        .any(|w| w == STARTED_ACTIVITY)
    {
        return Vec::new();
    }
    let Ok(state) = serde_json::from_slice::<RunState>(state) else {
        return Vec::new(); // A torn or foreign row: nothing to learn.
    };
    state
        .activities
        .values()
        .filter_map(|a| match a.phase {
            ActivityPhase::Started { started_time, .. } => {
                Some((a.scheduled_event_id, a.attempt, started_time))
            }
            _ => None,
        })
        .collect()
}

/// Signal payload bytes in a run's buffered rows: now, and at most.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufferedBytes {
    pub now: u64,
    pub peak: u64,
}

/// Payload bytes of the signals among `events` (what the buffered limit counts).
fn signal_bytes(events: &[EventKind]) -> u64 {
    let inputs = events.iter().filter_map(|kind| match kind {
        EventKind::WorkflowExecutionSignaled(signaled) => Some(&signaled.input),
        _ => None,
    });
    inputs.map(retrace::history::payload_size_bytes).sum()
}

impl Default for SimStorage {
    fn default() -> Self {
        SimStorage::new()
    }
}

impl SimStorage {
    /// An empty store without faults.
    pub fn new() -> SimStorage {
        SimStorage::over(MemoryStorage::new())
    }

    /// An empty store of `count` shards for a cluster of services, judging
    /// leases by simulated time.
    pub fn with_shards(count: u32) -> SimStorage {
        let clock = Arc::new(StorageClock(madsim::time::TimeHandle::current().now_instant()));
        SimStorage::over(MemoryStorage::with_shards(count, clock))
    }

    fn over(durable: MemoryStorage) -> SimStorage {
        SimStorage {
            durable,
            faults: Arc::new(Mutex::new(StorageFaults {
                latency_ms_max: 1,
                ..StorageFaults::default()
            })),
            faults_on: Arc::new(AtomicBool::new(false)),
            writes: Arc::new(AtomicU64::new(0)),
            write_attempts: Arc::new(AtomicU64::new(0)),
            torn_rows: Arc::new(AtomicU64::new(0)),
            fault_trace: Arc::new(Mutex::new(None)),
            buffered_signal_bytes: Arc::new(Mutex::new(BTreeMap::new())),
            ambiguous_runs: Arc::new(Mutex::new(RunTally::default())),
            service_starts: Arc::new(Mutex::new(BTreeMap::new())),
            cut_off: Arc::default(),
            foreign_writes: Arc::default(),
            fenced_writes: Arc::default(),
            fencing_off: Arc::default(),
        }
    }

    /// The storage as service node `node` reaches it (cut off or not).
    pub fn for_node(&self, node: &str) -> NodeStorage {
        NodeStorage {
            storage: self.clone(),
            node: node.to_string(),
        }
    }

    /// Cuts service node `node` off from storage, or joins it again.
    pub fn set_cut_off(&self, node: &str, cut: bool) {
        let mut cut_off = lock(&self.cut_off);
        if cut {
            cut_off.insert(node.to_string());
        } else {
            cut_off.remove(node);
        }
    }

    /// Joins every node to storage again.
    pub fn join_all(&self) {
        lock(&self.cut_off).clear();
    }

    fn is_cut_off(&self, node: &str) -> bool {
        lock(&self.cut_off).contains(node)
    }

    /// Plants a bug for the simulator's tests: the storage stops fencing.
    pub fn plant_no_fencing(&self) {
        self.fencing_off.store(true, Ordering::SeqCst);
    }

    /// Writes accepted from a node that did not hold their shard.
    pub fn foreign_writes(&self) -> Vec<String> {
        lock(&self.foreign_writes).clone()
    }

    /// Fenced writes accepted, by node.
    pub fn fenced_writes(&self) -> BTreeMap<String, u64> {
        lock(&self.fenced_writes).clone()
    }

    /// The fencing oracle, before a write by `node` is applied: who holds
    /// the batch's shard now. After it is accepted, `judge_write` compares.
    fn holder_of(&self, batch: &WriteBatch) -> Option<(u32, String, u64)> {
        let shards = self.durable.shard_count();
        if shards == 0 {
            return None;
        }
        let shard = retrace::env::lease::shard_of(&batch.run.workflow_id, shards);
        let lease = self.durable.shard_lease(shard)?;
        Some((shard, lease.owner, lease.epoch))
    }

    fn judge_write(&self, node: &str, holder: Option<(u32, String, u64)>, fenced: bool) {
        let Some((shard, owner, epoch)) = holder else {
            return;
        };
        *lock(&self.fenced_writes)
            .entry(node.to_string())
            .or_default() += u64::from(fenced);
        if owner != node || !fenced {
            let message = format!(
                "{node} wrote to shard {shard} (fenced: {fenced}) while {owner:?} held it at epoch {epoch}"
            );
            lock(&self.foreign_writes).push(message);
        }
    }

    /// Signal bytes in each run's buffered rows, now and at most (runs that
    /// never buffered a signal are absent).
    pub fn buffered_signal_bytes(&self) -> BTreeMap<String, BufferedBytes> {
        self.buffered_signal_bytes
            .lock()
            .expect("buffered bytes lock")
            .clone()
    }

    /// Follows a committed batch's buffered rows.
    fn count_buffered(&self, run_id: &str, clear: bool, added: u64) {
        let mut counts = self
            .buffered_signal_bytes
            .lock()
            .expect("buffered bytes lock");
        if !clear && added == 0 && !counts.contains_key(run_id) {
            return;
        }
        let bytes = counts.entry(run_id.to_string()).or_default();
        if clear {
            bytes.now = 0;
        }
        bytes.now += added;
        bytes.peak = bytes.peak.max(bytes.now);
    }

    /// Records this storage's faults in `trace`, timed from `start`.
    pub fn attach_fault_trace(&self, trace: Arc<FaultTrace>, start: madsim::time::Instant) {
        *self.fault_trace.lock().expect("storage trace lock") = Some((trace, start));
    }

    fn record_fault(&self, kind: &str, run_id: &str, detail: String) {
        let attached = self.fault_trace.lock().expect("storage trace lock").clone();
        if let Some((trace, start)) = attached {
            let at_ms = start.elapsed().as_millis() as u64;
            trace.record(at_ms, kind, detail, Some(run_id));
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

    /// Leaves a torn row, as a damaged page would: a running run (id
    /// `torn-<fault>`) whose state is the first half of another run's state
    /// (or of `{}` when nothing is stored yet), so it cannot be decoded.
    /// Returns its run id.
    pub fn tear_a_row(&self, fault: u64) -> String {
        let query = ListQuery {
            limit: 1,
            ..ListQuery::default()
        };
        let source = self
            .durable
            .list_runs(query)
            .now_or_never()
            .expect("memory storage answers at once")
            .expect("memory storage reads never fail")
            .pop();
        let run_id = format!("{}{fault}", crate::nodes::TORN_RUN_PREFIX);
        let state = source.as_ref().map_or(b"{}".to_vec(), |r| r.state.clone());
        let torn = state[..state.len() / 2].to_vec();
        let run = RunRecord {
            run_id: run_id.clone(),
            workflow_id: run_id.clone(),
            workflow_type: source
                .as_ref()
                .map_or("torn".into(), |r| r.workflow_type.clone()),
            task_queue: source
                .as_ref()
                .map_or("torn".into(), |r| r.task_queue.clone()),
            status: retrace::env::RunStatus::Running,
            start_time: source
                .as_ref()
                .map_or(retrace::types::Timestamp(0), |r| r.start_time),
            close_time: None,
            next_event_id: 1,
            version: 1,
            state: torn,
            search_attributes: Default::default(),
        };
        let batch = WriteBatch {
            fence: None,
            run,
            expected_version: None,
            events: Vec::new(),
            claim: None,
            buffered: BufferedWrite::none(),
            next_run: None,
        };
        self.durable.apply(batch).expect("a torn run's id is fresh");
        self.torn_rows.fetch_add(1, Ordering::Relaxed);
        run_id
    }

    /// Runs started and closed by writes that committed but answered a timeout.
    pub fn ambiguous_runs(&self) -> RunTally {
        lock(&self.ambiguous_runs).clone()
    }

    /// The activity attempts the service's committed writes started (an
    /// attempt no worker saw, its task lost in transit or its start
    /// committed by a write that reported a timeout, is here).
    pub fn service_starts(&self) -> ServiceStarts {
        lock(&self.service_starts).clone()
    }

    /// Rows torn on purpose so far.
    pub fn torn_rows(&self) -> u64 {
        self.torn_rows.load(Ordering::Relaxed)
    }

    /// Writes asked for (committed or not).
    pub fn write_attempts(&self) -> u64 {
        self.write_attempts.load(Ordering::Relaxed)
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

    async fn write_inner(&self, mut batch: WriteBatch, node: &str) -> Result<(), StorageError> {
        self.write_attempts.fetch_add(1, Ordering::Relaxed);
        let (faults, on) = self.faults();
        let mut latency_ms = madsim::rand::thread_rng().gen_range(0..=faults.latency_ms_max.max(1));
        if on && faults.stall_rate > 0.0 && madsim::rand::thread_rng().gen_bool(faults.stall_rate) {
            let stall_ms = madsim::rand::thread_rng().gen_range(100..=STALL_MS_MAX);
            latency_ms += stall_ms;
            self.record_fault(
                "storage:stall",
                &batch.run.run_id,
                format!("write stalls {stall_ms} ms"),
            );
        }
        madsim::time::sleep(Duration::from_millis(latency_ms)).await;
        if on
            && faults.io_error_rate > 0.0
            && madsim::rand::thread_rng().gen_bool(faults.io_error_rate)
        {
            self.record_fault(
                "storage:io_error",
                &batch.run.run_id,
                "write fails, nothing written".into(),
            );
            return Err(StorageError::Io("simulated I/O error".to_string()));
        }
        let run_id = batch.run.run_id.clone();
        let (clear, added) = (batch.buffered.clear, signal_bytes(&batch.buffered.append));
        let may_be_ambiguous = on && faults.ambiguous_rate > 0.0;
        let tally = may_be_ambiguous.then(|| RunTally::of_batch(&batch));
        let started = started_attempts(&batch.run.state);
        if self.is_cut_off(node) {
            return Err(StorageError::Io(format!("{node} is cut off from storage")));
        }
        let holder = self.holder_of(&batch);
        let fenced = batch.fence.is_some();
        if self.fencing_off.load(Ordering::Relaxed) {
            batch.fence = None;
        }
        self.durable.apply(batch)?;
        self.judge_write(node, holder, fenced);
        let mut starts = lock(&self.service_starts);
        for (scheduled_event_id, attempt, started_time) in started {
            let key = (run_id.clone(), scheduled_event_id, attempt);
            starts.entry(key).or_insert(started_time);
        }
        drop(starts);
        self.count_buffered(&run_id, clear, added);
        self.writes.fetch_add(1, Ordering::Relaxed);
        if on
            && faults.ambiguous_rate > 0.0
            && madsim::rand::thread_rng().gen_bool(faults.ambiguous_rate)
        {
            let detail = "write commits, reports a timeout".to_string();
            self.record_fault("storage:ambiguous", &run_id, detail);
            let tally = tally.expect("counted whenever the write may be ambiguous");
            lock(&self.ambiguous_runs).add(&tally);
            return Err(StorageError::Timeout);
        }
        Ok(())
    }
}

impl Storage for SimStorage {
    fn write(&self, batch: WriteBatch) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(self.write_inner(batch, crate::nodes::SERVICE))
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

    fn read_buffered(&self, run_id: &str) -> BoxFuture<'_, Result<BufferedRead, StorageError>> {
        self.durable.read_buffered(run_id)
    }
}

/// The storage as one service node reaches it: every call fails while the
/// node is cut off from it (a partition between service and database).
pub struct NodeStorage {
    storage: SimStorage,
    node: String,
}

impl NodeStorage {
    fn reach(&self) -> Result<(), StorageError> {
        match self.storage.is_cut_off(&self.node) {
            true => Err(StorageError::Io(format!(
                "{} is cut off from storage",
                self.node
            ))),
            false => Ok(()),
        }
    }

    fn then<'a, T: Send + 'a>(
        &'a self,
        call: impl FnOnce(&'a SimStorage) -> BoxFuture<'a, Result<T, StorageError>>,
    ) -> BoxFuture<'a, Result<T, StorageError>> {
        match self.reach() {
            Ok(()) => call(&self.storage),
            Err(error) => Box::pin(async move { Err(error) }),
        }
    }
}

impl Storage for NodeStorage {
    fn write(&self, batch: WriteBatch) -> BoxFuture<'_, Result<(), StorageError>> {
        self.then(move |s| Box::pin(s.write_inner(batch, &self.node)))
    }

    fn read_run(&self, run_id: &str) -> BoxFuture<'_, Result<Option<RunRecord>, StorageError>> {
        self.then(|s| s.read_run(run_id))
    }

    fn current_run(&self, id: &str) -> BoxFuture<'_, Result<Option<String>, StorageError>> {
        self.then(|s| s.current_run(id))
    }

    fn read_events(
        &self,
        run_id: &str,
        from_event_id: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Event>, StorageError>> {
        self.then(|s| s.read_events(run_id, from_event_id, limit))
    }

    fn list_runs(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<RunRecord>, StorageError>> {
        self.then(|s| s.list_runs(query))
    }

    fn read_buffered(&self, run_id: &str) -> BoxFuture<'_, Result<BufferedRead, StorageError>> {
        self.then(|s| s.read_buffered(run_id))
    }

    fn cluster_view(&self) -> BoxFuture<'_, Result<ClusterView, StorageError>> {
        self.then(|s| s.durable.cluster_view())
    }

    fn acquire_shard(
        &self,
        request: LeaseRequest,
    ) -> BoxFuture<'_, Result<LeaseAnswer, StorageError>> {
        self.then(|s| s.durable.acquire_shard(request))
    }

    fn release_shard(&self, request: LeaseRequest) -> BoxFuture<'_, Result<bool, StorageError>> {
        self.then(|s| s.durable.release_shard(request))
    }

    fn beat(&self, beat: MemberBeat) -> BoxFuture<'_, Result<Vec<Member>, StorageError>> {
        self.then(|s| s.durable.beat(beat))
    }
}
