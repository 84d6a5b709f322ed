//! `MemoryStorage`: the in-memory Storage, for tests, embedding and as the
//! simulator's base. Writes are atomic (one lock) and "durable" as long as the
//! process lives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::lease::{
    self, ClusterView, LeaseAnswer, LeaseRequest, Member, MemberBeat, SHARD_COUNT_MAX, ShardLease,
    check_fence, check_lease_request,
};
use super::storage::{
    BufferedRead, ListQuery, RunRecord, Storage, StorageError, WriteBatch, check_batch,
};
use super::{BoxFuture, Clock};
use crate::history::{Event, EventKind};
use crate::visibility::eval;

#[derive(Clone, Debug, Default)]
struct Tables {
    runs: BTreeMap<String, RunRecord>,
    events: BTreeMap<String, Vec<Event>>,
    workflow_ids: BTreeMap<String, String>,
    buffered: BTreeMap<String, Vec<EventKind>>,
    /// Every shard's lease, by shard (empty: a single-server store).
    shards: Vec<ShardLease>,
    members: BTreeMap<String, Member>,
}

/// The clock a store judges leases by.
#[derive(Clone)]
struct LeaseClock(Arc<dyn Clock>);

impl std::fmt::Debug for LeaseClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseClock")
    }
}

/// In-memory storage. Clones share the same data.
#[derive(Clone, Debug, Default)]
pub struct MemoryStorage {
    tables: Arc<Mutex<Tables>>,
    clock: Option<LeaseClock>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    /// An empty store of `count` shards for a cluster, judging leases by
    /// `clock` (the storage's clock, not any server's).
    pub fn with_shards(count: u32, clock: Arc<dyn Clock>) -> MemoryStorage {
        assert!(count > 0 && count <= SHARD_COUNT_MAX);
        let store = MemoryStorage {
            tables: Arc::default(),
            clock: Some(LeaseClock(clock)),
        };
        store.lock().shards = (0..count).map(ShardLease::free).collect();
        store
    }

    /// A deep copy of the data (the simulator snapshots durable state with it).
    pub fn deep_clone(&self) -> MemoryStorage {
        let tables = self.lock().clone();
        MemoryStorage {
            tables: Arc::new(Mutex::new(tables)),
            clock: self.clock.clone(),
        }
    }

    fn now_ms(&self) -> Result<u64, StorageError> {
        match &self.clock {
            Some(clock) => Ok(clock.0.now().as_millis()),
            None => Err(StorageError::Io(
                "this store has no shards; create it with MemoryStorage::with_shards".into(),
            )),
        }
    }

    /// Shards the store has (0: a single-server store).
    pub fn shard_count(&self) -> u32 {
        self.lock().shards.len() as u32
    }

    /// Shard `shard`'s lease as stored.
    pub fn shard_lease(&self, shard: u32) -> Option<ShardLease> {
        self.lock().shards.get(shard as usize).cloned()
    }

    /// [`Storage::cluster_view`] at storage time `now_ms`.
    pub fn cluster_view_at(&self, now_ms: u64) -> ClusterView {
        let tables = self.lock();
        let members = tables.members.values().map(|m| Member {
            alive: m.expires_ms > now_ms,
            ..m.clone()
        });
        ClusterView {
            now_ms,
            shards: tables.shards.clone(),
            members: members.collect(),
        }
    }

    /// [`Storage::acquire_shard`] at storage time `now_ms`.
    pub fn acquire_shard_at(
        &self,
        now_ms: u64,
        request: &LeaseRequest,
    ) -> Result<LeaseAnswer, StorageError> {
        let mut tables = self.lock();
        check_lease_request(request, tables.shards.len() as u32)?;
        let stored = &mut tables.shards[request.shard as usize];
        let answer = lease::decide_acquire(stored, request, now_ms);
        *stored = answer.lease.clone();
        Ok(answer)
    }

    /// [`Storage::release_shard`].
    pub fn release_shard_now(&self, request: &LeaseRequest) -> Result<bool, StorageError> {
        let mut tables = self.lock();
        check_lease_request(request, tables.shards.len() as u32)?;
        let stored = &mut tables.shards[request.shard as usize];
        let released = lease::decide_release(stored, &request.owner, request.incarnation);
        Ok(released.map(|free| *stored = free).is_some())
    }

    /// [`Storage::beat`] at storage time `now_ms`.
    pub fn beat_at(&self, now_ms: u64, beat: &MemberBeat) -> Result<Vec<Member>, StorageError> {
        lease::check_beat(beat)?;
        let member = Member {
            node: beat.node.clone(),
            incarnation: beat.incarnation,
            address: beat.address.clone(),
            expires_ms: now_ms + beat.ttl_ms,
            alive: true,
        };
        self.lock().members.insert(beat.node.clone(), member);
        Ok(self.cluster_view_at(now_ms).members)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables
            .lock()
            .expect("memory storage lock is never held across a panic")
    }

    /// Applies a batch at once (the synchronous core of `write`).
    pub fn apply(&self, mut batch: WriteBatch) -> Result<(), StorageError> {
        let mut tables = self.lock();
        let epoch = batch
            .fence
            .and_then(|fence| tables.shards.get(fence.shard as usize))
            .map(|lease| lease.epoch);
        check_fence(&batch, tables.shards.len() as u32, epoch)?;
        Self::check(&tables, &batch)?;
        if let Some(next) = batch.next_run.take() {
            // The first batch claims nothing: the next run's claim, checked
            // against the workflow id's current run, still holds after it.
            Self::check(&tables, &next)?;
            Self::apply_checked(&mut tables, batch);
            Self::apply_checked(&mut tables, *next);
        } else {
            Self::apply_checked(&mut tables, batch);
        }
        Ok(())
    }

    fn check(tables: &Tables, batch: &WriteBatch) -> Result<(), StorageError> {
        let current = batch
            .claim
            .as_ref()
            .and_then(|c| tables.workflow_ids.get(&c.workflow_id))
            .map(String::as_str);
        check_batch(batch, tables.runs.get(&batch.run.run_id), current)
    }

    fn apply_checked(tables: &mut Tables, batch: WriteBatch) {
        assert!(batch.next_run.is_none());
        let run_id = batch.run.run_id.clone();
        if let Some(claim) = batch.claim {
            tables
                .workflow_ids
                .insert(claim.workflow_id, run_id.clone());
        }
        tables
            .events
            .entry(run_id.clone())
            .or_default()
            .extend(batch.events);
        if batch.buffered.clear {
            tables.buffered.remove(&run_id);
        }
        if !batch.buffered.append.is_empty() {
            tables
                .buffered
                .entry(run_id.clone())
                .or_default()
                .extend(batch.buffered.append);
        }
        tables.runs.insert(run_id, batch.run);
    }

    /// The run's buffered events and record version, at once.
    pub fn buffered(&self, run_id: &str) -> BufferedRead {
        let tables = self.lock();
        BufferedRead {
            version: tables.runs.get(run_id).map(|run| run.version),
            events: tables.buffered.get(run_id).cloned().unwrap_or_default(),
        }
    }

    /// Number of runs stored.
    pub fn run_count(&self) -> usize {
        self.lock().runs.len()
    }

    /// Runs matching the query's filters, in its order, from its offset; the
    /// list query is evaluated directly ([`crate::visibility::eval`]).
    fn list(&self, query: &ListQuery) -> Vec<RunRecord> {
        use std::ops::Bound::{Excluded, Unbounded};
        let tables = self.lock();
        let start = match &query.after_run_id {
            Some(after) => Excluded(after.clone()),
            None => Unbounded,
        };
        let mut runs: Vec<RunRecord> = tables
            .runs
            .range((start, Unbounded))
            .map(|(_, run)| run)
            .filter(|run| query.status.is_none_or(|s| s == run.status))
            .filter(|run| {
                query
                    .workflow_type
                    .as_ref()
                    .is_none_or(|t| *t == run.workflow_type)
            })
            .filter(|run| {
                query
                    .query
                    .as_ref()
                    .is_none_or(|q| eval::matches_query(run, q))
            })
            .cloned()
            .collect();
        eval::order(&mut runs, query.query.as_ref().and_then(|q| q.order_by));
        let page: Vec<RunRecord> = runs
            .into_iter()
            .skip(query.offset)
            .take(query.limit)
            .collect();
        assert!(page.len() <= query.limit);
        page
    }
}

impl Storage for MemoryStorage {
    fn write(&self, batch: WriteBatch) -> BoxFuture<'_, Result<(), StorageError>> {
        let result = self.apply(batch);
        Box::pin(async move { result })
    }

    fn read_run(&self, run_id: &str) -> BoxFuture<'_, Result<Option<RunRecord>, StorageError>> {
        let run = self.lock().runs.get(run_id).cloned();
        Box::pin(async move { Ok(run) })
    }

    fn current_run(
        &self,
        workflow_id: &str,
    ) -> BoxFuture<'_, Result<Option<String>, StorageError>> {
        let run_id = self.lock().workflow_ids.get(workflow_id).cloned();
        Box::pin(async move { Ok(run_id) })
    }

    fn read_events(
        &self,
        run_id: &str,
        from_event_id: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Event>, StorageError>> {
        let events = {
            let tables = self.lock();
            let all = tables
                .events
                .get(run_id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let skip = usize::try_from(from_event_id.saturating_sub(1)).unwrap_or(usize::MAX);
            all.iter().skip(skip).take(limit).cloned().collect()
        };
        Box::pin(async move { Ok(events) })
    }

    fn list_runs(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<RunRecord>, StorageError>> {
        let runs = self.list(&query);
        Box::pin(async move { Ok(runs) })
    }

    fn read_buffered(&self, run_id: &str) -> BoxFuture<'_, Result<BufferedRead, StorageError>> {
        let read = self.buffered(run_id);
        Box::pin(async move { Ok(read) })
    }

    fn cluster_view(&self) -> BoxFuture<'_, Result<ClusterView, StorageError>> {
        let view = self.now_ms().map(|now_ms| self.cluster_view_at(now_ms));
        Box::pin(async move { view })
    }

    fn acquire_shard(
        &self,
        request: LeaseRequest,
    ) -> BoxFuture<'_, Result<LeaseAnswer, StorageError>> {
        let answer = self
            .now_ms()
            .and_then(|now_ms| self.acquire_shard_at(now_ms, &request));
        Box::pin(async move { answer })
    }

    fn release_shard(&self, request: LeaseRequest) -> BoxFuture<'_, Result<bool, StorageError>> {
        let released = self.release_shard_now(&request);
        Box::pin(async move { released })
    }

    fn beat(&self, beat: MemberBeat) -> BoxFuture<'_, Result<Vec<Member>, StorageError>> {
        let members = self.now_ms().and_then(|now_ms| self.beat_at(now_ms, &beat));
        Box::pin(async move { members })
    }
}
