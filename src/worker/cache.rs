//! The worker's run cache: executors of recently seen runs, so the next
//! workflow task of a run applies only its new events. Bounded; the least
//! recently used entry not in use is evicted, and a miss replays from history.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::workflow::WorkflowExecutor;

/// One cached run; `None` while empty (evicted, or not yet replayed).
pub type CacheEntry = Arc<Mutex<Option<WorkflowExecutor>>>;

/// Cached runs by run id.
pub struct RunCache {
    entries: BTreeMap<String, (CacheEntry, u64)>,
    tick: u64,
    runs_max: usize,
    evictions: u64,
}

impl RunCache {
    /// A cache of at most `runs_max` runs (at least 1).
    pub fn new(runs_max: usize) -> RunCache {
        RunCache {
            entries: BTreeMap::new(),
            tick: 0,
            runs_max: runs_max.max(1),
            evictions: 0,
        }
    }

    /// The entry of `run_id` (created empty if absent), marked most recently used.
    pub fn entry(&mut self, run_id: &str) -> CacheEntry {
        self.tick += 1;
        let tick = self.tick;
        let entry = self
            .entries
            .entry(run_id.to_string())
            .or_insert_with(|| (Arc::new(Mutex::new(None)), tick));
        entry.1 = tick;
        let handle = entry.0.clone();
        self.evict_over_limit();
        handle
    }

    /// The entry of `run_id` if the run is cached, marked most recently used.
    pub fn get(&mut self, run_id: &str) -> Option<CacheEntry> {
        self.tick += 1;
        let entry = self.entries.get_mut(run_id)?;
        entry.1 = self.tick;
        Some(entry.0.clone())
    }

    /// Drops a run's entry.
    pub fn remove(&mut self, run_id: &str) {
        self.entries.remove(run_id);
    }

    /// Evicts least recently used entries nobody holds until within the limit.
    fn evict_over_limit(&mut self) {
        while self.entries.len() > self.runs_max {
            let idle = self
                .entries
                .iter()
                .filter(|(_, (entry, _))| Arc::strong_count(entry) == 1)
                .min_by_key(|(_, (_, tick))| *tick)
                .map(|(run_id, _)| run_id.clone());
            let Some(run_id) = idle else { return };
            self.entries.remove(&run_id);
            self.evictions += 1;
        }
    }

    /// Runs cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries evicted for space so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_idle_run_is_evicted_first() {
        let mut cache = RunCache::new(2);
        drop(cache.entry("a"));
        drop(cache.entry("b"));
        drop(cache.entry("a"));
        drop(cache.entry("c"));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.evictions(), 1);
        assert!(cache.entries.contains_key("a") && cache.entries.contains_key("c"));
    }

    #[test]
    fn an_entry_in_use_is_never_evicted() {
        let mut cache = RunCache::new(1);
        let held = cache.entry("a");
        drop(cache.entry("b"));
        assert!(cache.entries.contains_key("a"), "a is held");
        drop(held);
        drop(cache.entry("c"));
        assert_eq!(cache.len(), 1);
    }
}
