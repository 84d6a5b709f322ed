//! The service's shell around the pure run machine: per-run serialization, one
//! atomic storage write per transition, and the in-memory indexes (task queues,
//! timers) derived from what was committed.
//!
//! Every change to a run goes through [`Inner::transition`]: lock the run, apply
//! a pure machine function to a copy of its state, write the events and the new
//! state in one batch, and only then publish the new state and sync its tasks and
//! timers. A failed (or ambiguous) write drops the cached state; the run is
//! reloaded from storage and re-synced, so a write that committed despite
//! reporting a timeout never loses a task.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Notify, OwnedMutexGuard, Semaphore, oneshot};

use super::eager::{StartedWorkflowTask, start_workflow_task};
use super::machine::WorkflowTaskState;
use super::machine::{self, Limits, RunState, Step, TaskKind};
use super::matching::{Dispatch, Matching, Poller, QueueKind};
use super::metrics::RunTally;
use super::timer_queue::TimerQueue;
use crate::api::{ErrorCode, Reply, Request, RunOutcome, ServiceError};
use crate::env::{
    BoxFuture, Env, ListQuery, RequestHandler, RunRecord, RunStatus, Storage, StorageError,
    WriteBatch,
};
use crate::history::{Event, HistoryLimits};

/// How a run closed, and the run that carries its workflow on (sent to
/// the requests that wait for its result).
pub type RunClosed = (RunOutcome, Option<String>);

/// Tunables of the service. Every bound is named `_max`, every duration `_ms`.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// How long a poll waits for a task before returning empty.
    pub poll_timeout_ms: u64,
    /// How long a query waits for a worker's answer.
    pub query_timeout_ms: u64,
    /// Longest wait of a result long poll.
    pub result_wait_ms_max: u64,
    /// Events per history page.
    pub history_page_size_max: u32,
    /// Runs per list page.
    pub list_page_size_max: u32,
    /// History size limits.
    pub limits: HistoryLimits,
    /// Open runs the service holds at once.
    pub open_runs_max: usize,
    /// Timers fired concurrently.
    pub timers_firing_max: usize,
    /// Attempts to reload a run after a failed write before giving up.
    pub resync_attempts_max: u32,
    /// How long a workflow type advertised by a poller counts as served.
    pub workflow_type_ttl_ms: u64,
    /// Payload bytes a run's history may hold in all (Temporal's 50 MiB); a
    /// run that would pass it is terminated, as at its events limit.
    pub history_payload_bytes_max: u64,
    /// Payload bytes of signals buffered while a workflow task runs; more are
    /// refused (`resource_exhausted`) until the task completes.
    pub buffered_payload_bytes_max: u64,
    /// Payload bytes of one history page (at least one event is returned).
    pub history_page_bytes_max: u64,
    /// Set for a member of a cluster over one shared storage: the server
    /// serves only the shards it holds leases on (see `shards.rs`).
    pub cluster: Option<super::shards::ClusterConfig>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            poll_timeout_ms: 20_000,
            query_timeout_ms: 10_000,
            result_wait_ms_max: 60_000,
            history_page_size_max: 10_000,
            list_page_size_max: 1_000,
            limits: HistoryLimits::default(),
            open_runs_max: 1_000_000,
            timers_firing_max: 64,
            resync_attempts_max: 1_000,
            workflow_type_ttl_ms: 300_000,
            history_payload_bytes_max: 50 * 1024 * 1024,
            buffered_payload_bytes_max: 8 * 1024 * 1024,
            history_page_bytes_max: 4 * 1024 * 1024,
            cluster: None,
        }
    }
}

/// A run's cached state and the stored version it matches.
pub(super) struct Loaded {
    pub state: RunState,
    pub version: u64,
    /// The run's events after its last completed workflow task, as committed
    /// by this process (what the next workflow task carries); `None` when not
    /// known (loaded from storage) or too many to keep.
    pub recent: Option<Vec<Event>>,
}

/// Events kept in memory per run for the next workflow task, at most.
pub const RECENT_EVENTS_MAX: usize = 1_000;

impl Loaded {
    /// A run loaded from storage (its recent events unknown).
    pub fn stored(state: RunState, version: u64) -> Loaded {
        Loaded {
            state,
            version,
            recent: None,
        }
    }

    /// Events `from..=to`, if all are kept in memory.
    pub fn recent_events(&self, from: u64, to: u64) -> Option<Vec<Event>> {
        let recent = self.recent.as_ref()?;
        let first = recent.iter().position(|e| e.event_id == from)?;
        let events: Vec<Event> = recent[first..]
            .iter()
            .take_while(|e| e.event_id <= to)
            .cloned()
            .collect();
        (events.last().map(|e| e.event_id) == Some(to)).then_some(events)
    }
}

/// The recent events after a commit appended `written` to `recent`. An
/// unknown cache starts again at a completion, whose write holds every event
/// after the new `previous_started_event_id`.
fn advance_recent(
    recent: Option<Vec<Event>>,
    written: Vec<Event>,
    previous_started_event_id: u64,
) -> Option<Vec<Event>> {
    let mut recent = match recent {
        Some(recent) => recent,
        None if written
            .first()
            .is_some_and(|e| e.event_id <= previous_started_event_id + 1) =>
        {
            Vec::new()
        }
        None => return None,
    };
    recent.extend(written);
    recent.retain(|e| e.event_id > previous_started_event_id);
    (recent.len() <= RECENT_EVENTS_MAX).then_some(recent)
}

/// Events a batch writes, with those of the run it creates.
fn batch_events(batch: &WriteBatch) -> usize {
    batch.events.len() + batch.next_run.as_ref().map_or(0, |next| next.events.len())
}

/// How long a timer that could not fire (storage failing) waits to try again.
const TIMER_RETRY_MS: u64 = 1_000;

/// The lock of one run; `None` until loaded (or after a failed write).
#[derive(Default)]
pub(super) struct RunSlot {
    pub loaded: Option<Loaded>,
    /// Cluster mode: the shard epoch the state was loaded under. A state
    /// cached under another epoch is stale (the shard moved away and back,
    /// and others wrote meanwhile): it is read again.
    pub epoch: u64,
    /// The run's workflow id once any state of it was loaded here, kept
    /// while the state is dropped to be read again: a cluster member that
    /// lost the run's shard says so without reading storage (which may be
    /// what it lost the shard to).
    pub workflow_id: Option<String>,
}

impl RunSlot {
    /// The run's workflow id, if this member has loaded the run.
    fn known_workflow_id(&self) -> Option<String> {
        match &self.loaded {
            Some(loaded) => Some(loaded.state.workflow_id.clone()),
            None => self.workflow_id.clone(),
        }
    }
}

pub(super) struct Inner {
    pub env: Env,
    pub storage: Arc<dyn Storage>,
    pub config: ServiceConfig,
    runs: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<RunSlot>>>>,
    pub matching: Mutex<Matching>,
    timers: Mutex<TimerQueue>,
    timer_wake: Arc<Notify>,
    timer_permits: Arc<Semaphore>,
    pub result_waiters: Mutex<BTreeMap<String, Vec<oneshot::Sender<RunClosed>>>>,
    pub queries: Mutex<BTreeMap<String, oneshot::Sender<Result<serde_json::Value, String>>>>,
    /// Updates admitted and not yet accepted, and their waiting callers.
    pub updates: Mutex<super::updates::UpdateRegistry>,
    /// Workflow tasks started by sync match (for tests and metrics).
    pub sync_matches: std::sync::atomic::AtomicU64,
    /// Who polled which task queue, and when last.
    pollers: Mutex<super::pollers::PollerLog>,
    /// Workflow types advertised by pollers, per task queue, with when last seen.
    pub workflow_types: Mutex<BTreeMap<String, BTreeMap<String, crate::types::Timestamp>>>,
    /// Runs whose stored state cannot be read, with why: set aside so the
    /// service serves every other run (bounded by the runs in storage).
    pub quarantined: Mutex<BTreeMap<String, String>>,
    /// Signals and cancel requests to other workflows, to deliver.
    externals: Mutex<super::external::ExternalQueue>,
    externals_wake: Arc<Notify>,
    /// Child workflows to start, report or apply close policies to.
    children: Mutex<super::children::ChildQueue>,
    pub children_wake: Arc<Notify>,
    /// Counters and histograms for `GET /metrics`.
    pub metrics: Arc<super::metrics::Metrics>,
    /// The shards this server holds (cluster mode).
    pub shards: Mutex<super::shards::Shards>,
    /// This start of the server, random: a restarted server is a new holder.
    pub incarnation: u64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.timer_wake.notify_one();
    }
}

/// The Retrace service. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

/// A storage error as the service reports it: damaged data is `DataCorrupt`
/// (permanent: clients and workers must not retry it), anything else
/// `Unavailable` (transient: retry).
pub(super) fn unavailable(error: &StorageError) -> ServiceError {
    let code = match error {
        StorageError::Corrupt(_) => ErrorCode::DataCorrupt,
        StorageError::Fenced { .. } => ErrorCode::NotOwner,
        _ => ErrorCode::Unavailable,
    };
    ServiceError::new(code, format!("storage: {error}"))
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .expect("service locks are never held across a panic")
}

/// Reads of a run's record and buffered rows tried before giving up, when
/// a write lands between them each time.
const LOAD_ATTEMPTS_MAX: u32 = 3;

fn changed_while_loading(run_id: &str) -> ServiceError {
    let message = format!("run {run_id} changed while it was loaded; try again");
    ServiceError::new(ErrorCode::Unavailable, message)
}

pub(super) fn decode_state(record: &RunRecord) -> Result<RunState, ServiceError> {
    serde_json::from_slice(&record.state).map_err(|e| {
        let message = format!("run {}: stored state does not decode: {e}", record.run_id);
        ServiceError::new(ErrorCode::DataCorrupt, message)
    })
}

pub(super) fn record_of(state: &RunState, version: u64) -> RunRecord {
    RunRecord {
        run_id: state.run_id.clone(),
        workflow_id: state.workflow_id.clone(),
        workflow_type: state.workflow_type.clone(),
        task_queue: state.task_queue.clone(),
        status: state.status,
        start_time: state.start_time,
        close_time: state.close_time,
        next_event_id: state.next_event_id,
        version,
        state: serde_json::to_vec(state).expect("run state always encodes"),
        search_attributes: state.search_attributes.clone(),
    }
}

impl Service {
    /// Starts the service over `storage`: loads every open run, rebuilds task
    /// queues and timers from their state, and starts the timer loop.
    pub async fn start(
        env: Env,
        storage: Arc<dyn Storage>,
        config: ServiceConfig,
    ) -> Result<Service, ServiceError> {
        let metrics = Arc::new(super::metrics::Metrics::default());
        Service::start_with_metrics(env, storage, config, metrics).await
    }

    /// [`Service::start`], counting into `metrics` (which the caller may
    /// keep reading after the service is gone).
    pub async fn start_with_metrics(
        env: Env,
        storage: Arc<dyn Storage>,
        config: ServiceConfig,
        metrics: Arc<super::metrics::Metrics>,
    ) -> Result<Service, ServiceError> {
        // Drawn only in a cluster, so a single server's ids stay as they were.
        let incarnation = match config.cluster {
            Some(_) => env.entropy.next_u64(),
            None => 0,
        };
        let inner = Arc::new(Inner {
            metrics,
            timer_permits: Arc::new(Semaphore::new(config.timers_firing_max)),
            env,
            storage,
            config,
            runs: Mutex::new(BTreeMap::new()),
            matching: Mutex::new(Matching::default()),
            timers: Mutex::new(TimerQueue::default()),
            timer_wake: Arc::new(Notify::new()),
            result_waiters: Mutex::new(BTreeMap::new()),
            queries: Mutex::new(BTreeMap::new()),
            updates: Mutex::new(super::updates::UpdateRegistry::default()),
            workflow_types: Mutex::new(BTreeMap::new()),
            pollers: Mutex::new(super::pollers::PollerLog::default()),
            sync_matches: std::sync::atomic::AtomicU64::new(0),
            quarantined: Mutex::new(BTreeMap::new()),
            externals: Mutex::new(super::external::ExternalQueue::default()),
            externals_wake: Arc::new(Notify::new()),
            children: Mutex::new(super::children::ChildQueue::default()),
            children_wake: Arc::new(Notify::new()),
            shards: Mutex::new(super::shards::Shards::default()),
            incarnation,
        });
        let weak = Arc::downgrade(&inner);
        let wake = inner.externals_wake.clone();
        inner.env.spawn(
            "service-externals",
            super::external::external_loop(weak, wake),
        );
        let weak = Arc::downgrade(&inner);
        let wake = inner.children_wake.clone();
        inner
            .env
            .spawn("service-children", super::children::child_loop(weak, wake));
        match inner.config.cluster.clone() {
            None => inner.recover_where(&|_| true).await?,
            Some(config) => {
                inner.join_cluster(&config, inner.incarnation).await;
                let weak = Arc::downgrade(&inner);
                let leases = super::cluster::lease_loop(weak, inner.incarnation);
                inner.env.spawn("service-leases", leases);
            }
        }
        let weak = Arc::downgrade(&inner);
        let wake = inner.timer_wake.clone();
        inner.env.spawn("service-timers", timer_loop(weak, wake));
        Ok(Service { inner })
    }

    /// The request handler, for a network to serve.
    pub fn handler(&self) -> Arc<dyn RequestHandler> {
        Arc::new(self.clone())
    }

    /// Handles one request.
    pub async fn handle(&self, request: Request) -> Reply {
        self.inner.clone().handle(request).await
    }

    /// Gives up every shard this cluster member holds, at once, so others
    /// take them without waiting for the leases to run out (a graceful
    /// stop). Nothing outside a cluster.
    pub async fn leave(&self) {
        self.inner.leave_cluster(self.inner.incarnation).await;
    }

    /// Every member and shard lease as the storage has them (cluster mode;
    /// `InvalidArgument` on a single server).
    pub async fn cluster_view(&self) -> Result<crate::env::lease::ClusterView, ServiceError> {
        if self.inner.config.cluster.is_none() {
            let message = "this server is not a member of a cluster (`retrace server --cluster`)";
            return Err(ServiceError::new(ErrorCode::InvalidArgument, message));
        }
        let view = self.inner.storage.cluster_view().await;
        view.map_err(|error| unavailable(&error))
    }

    /// The shards this cluster member holds now, with their epochs.
    pub fn held_shards(&self) -> BTreeMap<u32, u64> {
        let shards = lock(&self.inner.shards);
        shards.held.iter().map(|(s, h)| (*s, h.epoch)).collect()
    }

    /// Open runs held in memory.
    pub fn open_runs(&self) -> usize {
        self.inner.open_run_count()
    }

    /// Runs set aside because their stored state cannot be read, with why.
    pub fn quarantined(&self) -> BTreeMap<String, String> {
        lock(&self.inner.quarantined).clone()
    }

    /// Durable timers queued in memory (a closed run's are dropped as it closes).
    pub fn queued_timers(&self) -> usize {
        lock(&self.inner.timers).len()
    }

    /// Workflow tasks started by sync match so far (each saved a write and a poll).
    pub fn sync_matches(&self) -> u64 {
        self.inner
            .sync_matches
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every metric in Prometheus's text format (see [`super::metrics`]).
    pub fn metrics_text(&self) -> String {
        let gauges = super::metrics::Gauges {
            runs_open: self.open_runs() as u64,
            runs_quarantined: lock(&self.inner.quarantined).len() as u64,
            timers_queued: self.queued_timers() as u64,
        };
        self.inner.metrics.render(gauges)
    }

    /// The service's counters (for checks).
    pub fn metrics(&self) -> Arc<super::metrics::Metrics> {
        self.inner.metrics.clone()
    }

    /// Tasks waiting in a workflow (or activity) queue.
    pub fn backlog(&self, task_queue: &str, activities: bool) -> usize {
        let kind = if activities {
            QueueKind::Activity
        } else {
            QueueKind::Workflow
        };
        lock(&self.inner.matching).backlog(kind, task_queue)
    }
}

impl RequestHandler for Service {
    fn handle(&self, request: Request) -> BoxFuture<'static, Reply> {
        Box::pin(self.inner.clone().handle(request))
    }

    /// The storage's health: the service works while its storage writes.
    fn health(&self) -> Result<(), String> {
        self.inner.storage.health()
    }

    fn metrics(&self) -> Option<String> {
        Some(self.metrics_text())
    }
}

impl Inner {
    pub fn limits(&self) -> Limits {
        Limits {
            payload_bytes_max: self.config.limits.payload_bytes_max,
            buffered_payload_bytes_max: self.config.buffered_payload_bytes_max,
        }
    }

    /// Loads every open run whose workflow id `wanted` accepts, and
    /// rebuilds its tasks, timers and children's work.
    pub(super) async fn recover_where(
        self: &Arc<Self>,
        wanted: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<(), ServiceError> {
        let mut after_run_id = None;
        loop {
            let query = ListQuery {
                status: Some(RunStatus::Running),
                after_run_id,
                limit: 1_000,
                ..ListQuery::default()
            };
            let page = self
                .storage
                .list_runs(query)
                .await
                .map_err(|e| unavailable(&e))?;
            for record in page.iter().filter(|r| wanted(&r.workflow_id)) {
                let mut state = match self.state_of(record).await {
                    Ok(Some(state)) => state,
                    Ok(None) => return Err(changed_while_loading(&record.run_id)),
                    Err(error) if error.code == ErrorCode::DataCorrupt => continue,
                    Err(error) => return Err(error),
                };
                self.take_loaded(&mut state);
                self.offer_children(super::children::recovery_offers(&state), false);
                let loaded = Loaded::stored(state, record.version);
                self.insert_slot(
                    record.run_id.clone(),
                    RunSlot {
                        workflow_id: Some(record.workflow_id.clone()),
                        loaded: Some(loaded),
                        epoch: self
                            .fence_for(&record.workflow_id)
                            .ok()
                            .flatten()
                            .map_or(0, |f| f.epoch),
                    },
                );
            }
            match page.last() {
                Some(last) if page.len() == 1_000 => after_run_id = Some(last.run_id.clone()),
                _ => break,
            }
        }
        tracing::info!(
            open_runs = lock(&self.runs).len(),
            quarantined = lock(&self.quarantined).len(),
            "service recovered open runs"
        );
        Ok(())
    }

    /// Makes a run just loaded from storage this member's: its attempts'
    /// heartbeats restart from now, and its tasks and timers are installed.
    fn take_loaded(&self, state: &mut RunState) {
        super::machine::activity::count_load_as_heartbeat(state, self.env.now());
        self.sync(state);
    }

    /// Sets run `run_id` aside: its stored state cannot be read. It stays in
    /// storage as it is; list and describe say why.
    pub fn quarantine(&self, run_id: &str, error: &ServiceError) {
        tracing::error!(run_id, %error, "run quarantined: its stored state cannot be read");
        lock(&self.quarantined).insert(run_id.to_string(), error.message.clone());
    }

    /// Why run `run_id` is quarantined, if it is.
    pub fn quarantine_reason(&self, run_id: &str) -> Option<String> {
        lock(&self.quarantined).get(run_id).cloned()
    }

    /// Locks a run and loads its state. Closed runs are loaded but not kept.
    pub async fn lock_run(
        self: &Arc<Self>,
        run_id: &str,
    ) -> Result<OwnedMutexGuard<RunSlot>, ServiceError> {
        let slot = lock(&self.runs)
            .entry(run_id.to_string())
            .or_default()
            .clone();
        let mut guard = slot.lock_owned().await;
        if let Some(workflow_id) = guard.known_workflow_id() {
            match self.fence_for(&workflow_id) {
                Ok(fence) if fence.is_some_and(|f| f.epoch != guard.epoch) => guard.loaded = None,
                Ok(_) => {}
                Err(error) => {
                    self.forget(run_id);
                    return Err(error);
                }
            }
        }
        if guard.loaded.is_none() {
            let (mut state, version) = self.read_state(run_id).await?;
            match self.fence_for(&state.workflow_id) {
                Ok(fence) => guard.epoch = fence.map_or(0, |f| f.epoch),
                Err(error) => {
                    self.forget(run_id);
                    return Err(error);
                }
            }
            self.take_loaded(&mut state);
            guard.workflow_id = Some(state.workflow_id.clone());
            guard.loaded = Some(Loaded::stored(state, version));
        }
        if guard
            .loaded
            .as_ref()
            .is_some_and(|l| l.state.status.is_closed())
        {
            self.forget(run_id);
        }
        Ok(guard)
    }

    /// The run's state: this member's if it owns the run's shard, else as
    /// stored (a cluster member reads other shards' runs, never writes them).
    pub(super) async fn peek_run(self: &Arc<Self>, run_id: &str) -> Result<RunState, ServiceError> {
        match self.lock_run(run_id).await {
            Ok(guard) => Ok(guard.loaded.as_ref().expect("loaded").state.clone()),
            Err(error) if error.code == ErrorCode::NotOwner => {
                self.read_state(run_id).await.map(|(state, _)| state)
            }
            Err(error) => Err(error),
        }
    }

    /// Offers the children's work of every open run held (cluster mode):
    /// a child on another member's shard closes there, and this sweep is
    /// how the parent's member learns it.
    pub(super) fn offer_open_children(&self) {
        let slots: Vec<Arc<tokio::sync::Mutex<RunSlot>>> =
            lock(&self.runs).values().cloned().collect();
        let mut keys = Vec::new();
        for slot in slots {
            let Ok(guard) = slot.try_lock() else { continue };
            if let Some(loaded) = &guard.loaded {
                let children = loaded.state.children.keys();
                keys.extend(children.map(|initiated| (loaded.state.run_id.clone(), *initiated)));
            }
        }
        self.offer_children(keys, false);
    }

    /// Reads run `run_id`'s record and buffered events from storage. A run
    /// that cannot be decoded is quarantined.
    async fn read_state(self: &Arc<Self>, run_id: &str) -> Result<(RunState, u64), ServiceError> {
        for _ in 0..LOAD_ATTEMPTS_MAX {
            let record = match self.storage.read_run(run_id).await {
                Ok(Some(record)) => record,
                Ok(None) => {
                    self.forget(run_id);
                    let message = format!("no run with id {run_id:?}");
                    return Err(ServiceError::new(ErrorCode::NotFound, message));
                }
                Err(error) => return Err(unavailable(&error)),
            };
            if let Some(state) = self.state_of(&record).await? {
                return Ok((state, record.version));
            }
        }
        Err(changed_while_loading(run_id))
    }

    /// The run state of `record`, with its buffered rows; `None` if the rows
    /// belong to another version. A run whose state or rows cannot be
    /// decoded is quarantined (`DataCorrupt`).
    async fn state_of(&self, record: &RunRecord) -> Result<Option<RunState>, ServiceError> {
        let set_aside = |error: &ServiceError| {
            if error.code == ErrorCode::DataCorrupt {
                self.forget(&record.run_id);
                self.quarantine(&record.run_id, error);
            }
        };
        let mut state = decode_state(record).inspect_err(set_aside)?;
        let joined = self
            .join_buffered(&mut state, record.version)
            .await
            .inspect_err(set_aside)?;
        Ok(joined.then_some(state))
    }

    /// Adds the run's buffered rows to its state decoded from the record of
    /// `version`. Only a run whose workflow task is started has any. Returns
    /// false if the rows belong to another version (a write landed between
    /// the two reads).
    async fn join_buffered(
        &self,
        state: &mut RunState,
        version: u64,
    ) -> Result<bool, ServiceError> {
        if !state.workflow_task.is_started() {
            return Ok(true);
        }
        let read = self
            .storage
            .read_buffered(&state.run_id)
            .await
            .map_err(|e| unavailable(&e))?;
        if read.version != Some(version) {
            return Ok(false);
        }
        let inline = std::mem::take(&mut state.buffered);
        state.buffered = inline.with_rows(read.events);
        Ok(true)
    }

    /// The slot of a run about to be created, locked (nobody else can know
    /// the new run id yet, so the lock is free).
    pub fn lock_new_slot(&self, run_id: &str) -> OwnedMutexGuard<RunSlot> {
        let slot = Arc::new(tokio::sync::Mutex::new(RunSlot::default()));
        let guard = slot
            .clone()
            .try_lock_owned()
            .expect("a slot just made is unlocked");
        let previous = lock(&self.runs).insert(run_id.to_string(), slot);
        assert!(previous.is_none(), "run ids are unique");
        guard
    }

    /// Caches a run's slot unless one is there already (a request that found
    /// the run meanwhile may have loaded, or even changed, it).
    pub fn insert_slot(&self, run_id: String, slot: RunSlot) {
        lock(&self.runs)
            .entry(run_id)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(slot)));
    }

    /// `Ok` unless this server is a cluster member that does not hold the
    /// shard of `workflow_id` now (`NotOwner`, naming the owner if known).
    pub fn check_owner(&self, workflow_id: &str) -> Result<(), ServiceError> {
        self.fence_for(workflow_id).map(drop)
    }

    /// The fence a write of `workflow_id`'s run carries (`None` outside a
    /// cluster), or `NotOwner`.
    pub fn fence_for(
        &self,
        workflow_id: &str,
    ) -> Result<Option<crate::env::lease::Fence>, ServiceError> {
        if self.config.cluster.is_none() {
            return Ok(None);
        }
        let now_us = self.env.clock.monotonic_us();
        lock(&self.shards).fence(workflow_id, now_us).map(Some)
    }

    /// Forgets every cached run of `shard` (a shard this server lost), with
    /// their timers; their result waiters are dropped, so they retry.
    pub(super) fn forget_shard(&self, shard: u32) {
        let count = lock(&self.shards).count;
        let in_shard = |workflow_id: &str| crate::env::lease::shard_of(workflow_id, count) == shard;
        let slots: Vec<(String, Arc<tokio::sync::Mutex<RunSlot>>)> = lock(&self.runs)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (run_id, slot) in slots {
            let Ok(guard) = slot.try_lock() else {
                // In use: its write is fenced, and the next lock refuses it.
                continue;
            };
            if guard.known_workflow_id().is_some_and(|id| in_shard(&id)) {
                drop(guard);
                self.forget(&run_id);
                lock(&self.result_waiters).remove(&run_id);
            }
        }
    }

    /// Drops a closed (or missing) run from memory, with its timers: a closed
    /// run has none left to fire.
    pub(super) fn forget(&self, run_id: &str) {
        lock(&self.runs).remove(run_id);
        lock(&self.timers).remove_run(run_id);
    }

    pub fn open_run_count(&self) -> usize {
        lock(&self.runs).len()
    }

    /// Events `from..=to` of a run if the service holds them in memory.
    pub async fn recent_events(&self, run_id: &str, from: u64, to: u64) -> Option<Vec<Event>> {
        let slot = lock(&self.runs).get(run_id).cloned()?;
        let guard = slot.lock().await;
        guard.loaded.as_ref()?.recent_events(from, to)
    }

    /// Applies `f` to a copy of the run's state and commits the result.
    /// `f` is pure: it sees the state and the service's time, nothing else.
    pub async fn transition<T>(
        self: &Arc<Self>,
        run_id: &str,
        f: impl FnOnce(&mut Step<'_>) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        let mut guard = self.lock_run(run_id).await?;
        let loaded = guard.loaded.as_ref().expect("lock_run loads the run");
        let mut next = loaded.state.clone();
        let mut step = Step::new(&mut next, self.env.now(), self.limits());
        let value = f(&mut step)?;
        self.schedule_for_updates(&mut step);
        let payload_bytes = machine::check_event_payloads(&step.events, self.limits())?;
        step.state.history_payload_bytes += payload_bytes;
        if step.state.next_event_id > self.config.limits.events_per_run_max
            || step.state.history_payload_bytes > self.config.history_payload_bytes_max
        {
            drop(step);
            return self.terminate_oversized(&mut guard).await;
        }
        let matched = self.sync_match(&mut step);
        let events = std::mem::take(&mut step.events);
        let continued = step.continued.take();
        if events.is_empty() && next == loaded.state {
            return Ok(value);
        }
        match continued {
            None => self.commit(&mut guard, next, events).await?,
            Some(run) => self.commit_continued(&mut guard, next, events, run).await?,
        }
        if let Some((poller, started)) = matched {
            self.sync_matches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (from, to) = started.event_range();
            let recent = guard
                .loaded
                .as_ref()
                .and_then(|loaded| loaded.recent_events(from, to));
            drop(guard);
            if let Some(task) = self.task_with_events(started, recent).await {
                self.hand_over(poller, Box::new(task));
            }
        }
        Ok(value)
    }

    /// The run would exceed its events limit: terminate it instead (as
    /// Temporal does), and refuse the request that would have overflowed it.
    async fn terminate_oversized<T>(
        self: &Arc<Self>,
        slot: &mut RunSlot,
    ) -> Result<T, ServiceError> {
        let loaded = slot.loaded.as_ref().expect("the run is loaded");
        let (events_max, bytes_max) = (
            self.config.limits.events_per_run_max,
            self.config.history_payload_bytes_max,
        );
        let mut next = loaded.state.clone();
        let mut step = Step::new(&mut next, self.env.now(), self.limits());
        let reason = format!(
            "the history would exceed its limit of {events_max} events or {bytes_max} payload bytes"
        );
        machine::run::on_terminate(&mut step, &reason, None, "service")?;
        let events = std::mem::take(&mut step.events);
        self.commit(slot, next, events).await?;
        Err(ServiceError::new(
            ErrorCode::HistoryTooLarge,
            format!("run terminated: {reason}"),
        ))
    }

    /// Sends a sync-matched task to its poller. If the poller left meanwhile
    /// (its request was dropped), the task is given back at once rather than
    /// left to time out.
    pub fn hand_over(self: &Arc<Self>, poller: Poller, task: Box<crate::api::WorkflowTask>) {
        let Err(Dispatch::Started(task)) = poller.sender.send(Dispatch::Started(task)) else {
            return;
        };
        tracing::debug!(
            run_id = task.task_token.run_id,
            "the matched poller left; giving the workflow task back"
        );
        self.give_back(task.task_token);
    }

    /// A started workflow task nobody will run (its poller left, or its events
    /// could not be read): fail it at once so it is scheduled again, rather
    /// than wait out its timeout.
    pub fn give_back(self: &Arc<Self>, token: crate::api::TaskToken) {
        let inner = self.clone();
        self.env.spawn("service-give-back", async move {
            let run_id = token.run_id.clone();
            let given_back = inner
                .transition(&run_id, |step| {
                    if super::machine::workflow_task::check_token(step.state, &token).is_ok() {
                        let failure = crate::types::Failure::new(
                            "PollerGone",
                            "nobody received the started task",
                        );
                        let cause = crate::history::WorkflowTaskFailedCause::WorkerShutdown;
                        super::machine::workflow_task::on_failed(
                            step, &token, cause, failure, "service",
                        );
                    }
                    Ok(())
                })
                .await;
            if let Err(error) = given_back {
                tracing::debug!(%error, "could not give the workflow task back; it will time out");
            }
        });
    }

    /// Sync match: if the step left a workflow task scheduled and a poller is
    /// waiting for one, start it in this same write for that poller.
    pub fn sync_match(&self, step: &mut Step<'_>) -> Option<(Poller, StartedWorkflowTask)> {
        if !matches!(
            step.state.workflow_task,
            WorkflowTaskState::Scheduled { .. }
        ) || step.state.status.is_closed()
        {
            return None;
        }
        let poller = lock(&self.matching).reserve_workflow_poller(&step.state.task_queue)?;
        let request_id = self.env.new_id();
        let started = start_workflow_task(step, None, &poller.identity, &request_id)?;
        Some((poller, started))
    }

    /// Writes the new state and events in one batch; publishes them once durable.
    ///
    /// The cached state is taken out of the slot for the write: if the write
    /// fails, is ambiguous, or this future is dropped while it is in flight
    /// (a client disconnects), the slot stays empty and the run is reloaded
    /// from storage and re-synced, so a write that committed is never lost.
    async fn commit(
        self: &Arc<Self>,
        slot: &mut RunSlot,
        next: RunState,
        events: Vec<Event>,
    ) -> Result<(), ServiceError> {
        self.commit_with(slot, next, events, None).await
    }

    /// Commits a run's close by continue-as-new and the new run it started, in
    /// one batch; then publishes the new run like a fresh start.
    async fn commit_continued(
        self: &Arc<Self>,
        slot: &mut RunSlot,
        next: RunState,
        events: Vec<Event>,
        run: machine::continue_as_new::NextRun,
    ) -> Result<(), ServiceError> {
        assert_eq!(next.successor(), Some(run.state.run_id.as_str()));
        let new_run_id = run.state.run_id.clone();
        let batch = WriteBatch {
            fence: None,
            run: record_of(&run.state, 1),
            expected_version: None,
            events: run.events.clone(),
            claim: Some(crate::env::WorkflowIdClaim {
                workflow_id: run.state.workflow_id.clone(),
                previous_run_id: Some(next.run_id.clone()),
            }),
            buffered: crate::env::BufferedWrite::none(),
            next_run: None,
        };
        // Locked before the write, as a start does: a request that finds the
        // new run by its workflow id waits until it is published.
        let mut new_slot = self.lock_new_slot(&new_run_id);
        let committed = self.commit_with(slot, next, events, Some(batch)).await;
        match committed {
            Ok(()) => {
                self.sync(&run.state);
                new_slot.loaded = Some(Loaded {
                    recent: Some(run.events),
                    state: run.state,
                    version: 1,
                });
                Ok(())
            }
            Err(error) => {
                // The pair may have committed (an ambiguous write): reload both.
                drop(new_slot);
                self.forget(&new_run_id);
                self.spawn_resync(new_run_id);
                Err(error)
            }
        }
    }

    async fn commit_with(
        self: &Arc<Self>,
        slot: &mut RunSlot,
        mut next: RunState,
        events: Vec<Event>,
        next_run: Option<WriteBatch>,
    ) -> Result<(), ServiceError> {
        let loaded = slot.loaded.take().expect("commit follows a load");
        if slot.workflow_id.is_none() {
            slot.workflow_id = Some(loaded.state.workflow_id.clone());
        }
        assert_eq!(
            events.first().map_or(next.next_event_id, |e| e.event_id),
            loaded.state.next_event_id
        );
        let version = loaded.version + 1;
        let written = events.clone();
        let batch = WriteBatch {
            fence: None,
            run: record_of(&next, version),
            expected_version: Some(loaded.version),
            events,
            claim: None,
            buffered: next.buffered.pending_write(),
            next_run: next_run.map(Box::new),
        };
        let run_id = next.run_id.clone();
        let outcome = self.write(batch).await;
        match outcome {
            Ok(()) => {
                next.buffered.written();
                self.after_commit_updates(&next, &written);
                self.after_commit(&next);
                if !self.env.buggify("service.commit.drop_cache") {
                    let recent =
                        advance_recent(loaded.recent, written, next.previous_started_event_id);
                    slot.loaded = Some(Loaded {
                        state: next,
                        version,
                        recent,
                    });
                }
                Ok(())
            }
            Err(error) => {
                tracing::warn!(run_id, %error, "write failed; the run will be reloaded from storage");
                self.spawn_resync(run_id);
                Err(unavailable(&error))
            }
        }
    }

    /// Writes `batch` in a task of its own: once begun, a write finishes even
    /// if its caller goes away (an HTTP client hangs up), as SQLite's does; only
    /// a crash of the service stops it. If the caller is gone when it finishes,
    /// the task reloads the run, so what it committed is published.
    pub async fn write(self: &Arc<Self>, mut batch: WriteBatch) -> Result<(), StorageError> {
        batch.fence = match self.fence_for(&batch.run.workflow_id) {
            Ok(fence) => fence,
            Err(error) => {
                tracing::debug!(%error, "write refused: this server does not own the run's shard");
                return Err(StorageError::Fenced {
                    shard: lock(&self.shards)
                        .shard_of(&batch.run.workflow_id)
                        .unwrap_or(0),
                    epoch: 0,
                    stored: 0,
                });
            }
        };
        let (sender, receiver) = oneshot::channel();
        let (inner, run_id) = (self.clone(), batch.run.run_id.clone());
        let next_run_id = batch.next_run.as_ref().map(|next| next.run.run_id.clone());
        self.env.spawn("service-write", async move {
            let (tally, events) = (RunTally::of_batch(&batch), batch_events(&batch));
            let began_us = inner.env.clock.monotonic_us();
            let outcome = inner.storage.write(batch).await;
            // Counted in the same step as the write's answer, so a crash
            // cannot fall between a commit and its count.
            let micros = inner.env.clock.monotonic_us().saturating_sub(began_us);
            match &outcome {
                Ok(()) => inner.metrics.on_write_committed(&tally, events, micros),
                Err(StorageError::Fenced { .. }) => {
                    inner.metrics.on_write_fenced();
                    inner.metrics.on_write_failed(false, events, micros);
                }
                Err(error) => {
                    let ambiguous = matches!(error, StorageError::Timeout);
                    inner.metrics.on_write_failed(ambiguous, events, micros);
                }
            }
            if sender.send(outcome).is_err() {
                tracing::debug!(run_id, "a write's caller went away; reloading the run");
                inner.spawn_resync(run_id);
                if let Some(next_run_id) = next_run_id {
                    inner.spawn_resync(next_run_id);
                }
            }
        });
        receiver
            .await
            .unwrap_or_else(|_| Err(StorageError::Io("the write's task stopped".to_string())))
    }

    /// A run with updates admitted and not yet accepted needs a workflow
    /// task to carry them (whatever else the step did).
    fn schedule_for_updates(&self, step: &mut Step<'_>) {
        if step.state.status.is_closed() {
            return;
        }
        let pending = lock(&self.updates).pending(&step.state.run_id, &step.state.updates);
        if !pending.is_empty() {
            step.ensure_workflow_task();
        }
    }

    /// After a durable commit: tell the callers of the updates it accepted,
    /// completed or ended by closing the run.
    fn after_commit_updates(&self, state: &RunState, written: &[Event]) {
        let mut updates = lock(&self.updates);
        for event in written {
            match &event.kind {
                crate::history::EventKind::WorkflowExecutionUpdateAccepted(a) => {
                    updates.on_accepted(&state.run_id, &a.update_id);
                }
                crate::history::EventKind::WorkflowExecutionUpdateCompleted(a) => {
                    updates.on_completed(&state.run_id, &a.update_id, &a.outcome);
                }
                _ => {}
            }
        }
        if state.status.is_closed() {
            updates.on_closed(&state.run_id, state.status.as_str());
        }
    }

    /// After a durable commit: publish tasks and timers, wake result waiters.
    pub fn after_commit(&self, state: &RunState) {
        self.sync(state);
        self.offer_children(super::children::offers(state), true);
        if let Some(outcome) = &state.outcome {
            self.forget(&state.run_id);
            let waiters = lock(&self.result_waiters)
                .remove(&state.run_id)
                .unwrap_or_default();
            let successor = state.successor().map(str::to_string);
            for waiter in waiters {
                let _ = waiter.send((outcome.clone(), successor.clone()));
            }
        }
    }

    /// The log of pollers by task queue.
    pub(super) fn lock_pollers(&self) -> std::sync::MutexGuard<'_, super::pollers::PollerLog> {
        lock(&self.pollers)
    }

    /// The queue of signals and cancel requests to other workflows.
    pub(super) fn lock_externals(
        &self,
    ) -> std::sync::MutexGuard<'_, super::external::ExternalQueue> {
        lock(&self.externals)
    }

    /// The queue of child workflows to reconcile.
    pub(super) fn lock_children(&self) -> std::sync::MutexGuard<'_, super::children::ChildQueue> {
        lock(&self.children)
    }

    fn offer_children(&self, keys: Vec<super::children::ChildKey>, again: bool) {
        if keys.is_empty() {
            return;
        }
        let mut wake = false;
        {
            let mut children = lock(&self.children);
            for key in keys {
                wake |= children.offer(key, again);
            }
        }
        if wake {
            self.children_wake.notify_one();
        }
    }

    /// Offers the run's pending tasks and queues its timers, its requests
    /// to other workflows and its children's work (idempotent).
    pub fn sync(&self, state: &RunState) {
        if !state.externals.is_empty() && lock(&self.externals).offer(state) {
            self.externals_wake.notify_one();
        }
        self.offer_children(super::children::offers(state), false);
        let tasks = machine::pending_tasks(state);
        if !tasks.is_empty() {
            let mut matching = lock(&self.matching);
            for key in tasks {
                let kind = match key.kind {
                    TaskKind::Workflow { .. } => QueueKind::Workflow,
                    TaskKind::Activity { .. } => QueueKind::Activity,
                };
                let queue = key.task_queue.clone();
                matching.offer(kind, &queue, Dispatch::Task(key));
            }
        }
        let mut wake = false;
        {
            let mut timers = lock(&self.timers);
            for (deadline, key) in machine::pending_timers(state) {
                wake |= timers.insert(&state.run_id, key, deadline);
            }
        }
        if wake {
            self.timer_wake.notify_one();
        }
    }

    /// Drops the run's cached state and loads it again from storage (whatever
    /// was cached may predate a write that landed without its caller).
    async fn reload_run(self: &Arc<Self>, run_id: &str) -> Result<(), ServiceError> {
        let slot = lock(&self.runs)
            .entry(run_id.to_string())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(loaded) = slot.loaded.take() {
            slot.workflow_id = Some(loaded.state.workflow_id);
        }
        drop(slot);
        self.lock_run(run_id).await.map(drop)
    }

    /// Reloads a run after a failed write until storage answers again.
    pub fn spawn_resync(self: &Arc<Self>, run_id: String) {
        let weak = Arc::downgrade(self);
        let attempts_max = self.config.resync_attempts_max;
        let env = self.env.clone();
        self.env.spawn("service-resync", async move {
            for attempt in 0..attempts_max {
                env.sleep_ms(50u64 << attempt.min(5)).await;
                let Some(inner) = weak.upgrade() else { return };
                match inner.reload_run(&run_id).await {
                    Ok(()) => return,
                    Err(error) if error.code == ErrorCode::NotFound => return,
                    Err(error) if error.code == ErrorCode::NotOwner => return,
                    Err(error) => {
                        tracing::warn!(run_id, %error, attempt, "resync failed; retrying")
                    }
                }
            }
            tracing::error!(
                run_id,
                "gave up reloading the run; it resumes when the service restarts"
            );
        });
    }

    /// Fires one durable timer: applies it if it still holds, and re-syncs the
    /// run either way (a heartbeat may have moved the deadline).
    async fn fire_timer(self: Arc<Self>, run_id: String, key: machine::TimerKey) {
        let fired = self
            .transition(&run_id, |step| Ok(machine::run::on_timer(step, &key)))
            .await;
        match fired {
            Ok(true) => {}
            // Not due (a heartbeat moved the deadline): queue its new deadline.
            Ok(false) => {
                if let Ok(guard) = self.lock_run(&run_id).await
                    && let Some(loaded) = &guard.loaded
                {
                    self.sync(&loaded.state);
                }
            }
            Err(error) if error.code == ErrorCode::NotFound => {}
            // A failed read or write: the timer left the queue, so queue it
            // again a little later rather than lose it (a failed write's own
            // resync may queue it sooner; the queue keeps one per key).
            Err(error) => {
                tracing::warn!(run_id, ?key, %error, "timer could not fire; retrying it");
                let retry_at = self.env.now().plus_ms(TIMER_RETRY_MS);
                if lock(&self.timers).insert(&run_id, key, retry_at) {
                    self.timer_wake.notify_one();
                }
            }
        }
    }

    fn due_timers(
        &self,
    ) -> (
        Vec<(String, machine::TimerKey)>,
        Option<crate::types::Timestamp>,
    ) {
        let mut timers = lock(&self.timers);
        let mut due = timers.pop_due(self.env.now());
        // A timer woken before its deadline (as a clock that steps, or a
        // coarse timer wheel, would wake it): the machines refuse to fire it
        // early, and `fire_timer` queues it again.
        if due.is_empty()
            && timers.next_deadline().is_some()
            && self.env.buggify("service.timer.fire_early")
        {
            due.extend(timers.pop_first());
        }
        (due, timers.next_deadline())
    }
}

/// Fires timers as their deadlines pass. Holds the service weakly: it ends
/// when the service is dropped.
async fn timer_loop(weak: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let (due, next) = inner.due_timers();
        for (run_id, key) in due {
            let permit = inner
                .timer_permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let firing = inner.clone();
            inner.env.spawn("service-fire-timer", async move {
                firing.fire_timer(run_id, key).await;
                drop(permit);
            });
        }
        let sleep = match next {
            Some(deadline) => inner.env.clock.sleep_until(deadline),
            None => inner.env.sleep_ms(3_600_000),
        };
        drop(inner);
        let notified = wake.notified();
        futures::pin_mut!(notified);
        futures::future::select(sleep, notified).await;
    }
}
