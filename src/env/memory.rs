//! `MemoryStorage`: the in-memory Storage, for tests, embedding and as the
//! simulator's base. Writes are atomic (one lock) and "durable" as long as the
//! process lives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::BoxFuture;
use super::storage::{
    BufferedRead, ListQuery, RunRecord, Storage, StorageError, WriteBatch, check_batch,
};
use crate::history::{Event, EventKind};
use crate::visibility::eval;

#[derive(Clone, Debug, Default)]
struct Tables {
    runs: BTreeMap<String, RunRecord>,
    events: BTreeMap<String, Vec<Event>>,
    workflow_ids: BTreeMap<String, String>,
    buffered: BTreeMap<String, Vec<EventKind>>,
}

/// In-memory storage. Clones share the same data.
#[derive(Clone, Debug, Default)]
pub struct MemoryStorage {
    tables: Arc<Mutex<Tables>>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    /// A deep copy of the data (the simulator snapshots durable state with it).
    pub fn deep_clone(&self) -> MemoryStorage {
        let tables = self.lock().clone();
        MemoryStorage {
            tables: Arc::new(Mutex::new(tables)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables
            .lock()
            .expect("memory storage lock is never held across a panic")
    }

    /// Applies a batch at once (the synchronous core of `write`).
    pub fn apply(&self, mut batch: WriteBatch) -> Result<(), StorageError> {
        let mut tables = self.lock();
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
}
