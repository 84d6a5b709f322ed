//! The service's in-memory index of durable timers (rebuilt from run state on
//! start). Ordered by deadline, ties broken by insertion sequence.

use std::collections::{BTreeMap, BTreeSet};

use super::machine::TimerKey;
use crate::types::Timestamp;

/// Timers by deadline, and by run (a closed run's timers are dropped at once
/// rather than firing later to find nothing to do).
#[derive(Default, Debug)]
pub struct TimerQueue {
    heap: BTreeSet<(Timestamp, u64, String, TimerKey)>,
    /// Each run's queued timers: deadline and insertion sequence (the heap key).
    by_run: BTreeMap<String, BTreeMap<TimerKey, (Timestamp, u64)>>,
    next_seq: u64,
}

impl TimerQueue {
    /// Adds a timer unless the same one is already due no later (an earlier
    /// deadline replaces a later one). Returns true if it became the earliest
    /// timer (the timer loop should wake).
    pub fn insert(&mut self, run_id: &str, key: TimerKey, deadline: Timestamp) -> bool {
        let run = self.by_run.entry(run_id.to_string()).or_default();
        let replaced = match run.get(&key) {
            Some((existing, _)) if *existing <= deadline => return false,
            Some(&(existing, seq)) => Some((existing, seq)),
            None => None,
        };
        if let Some((existing, seq)) = replaced {
            let removed = self
                .heap
                .remove(&(existing, seq, run_id.to_string(), key.clone()));
            assert!(removed, "a run's timer is in the heap");
        }
        self.next_seq += 1;
        run.insert(key.clone(), (deadline, self.next_seq));
        let earliest = self.next_deadline().is_none_or(|next| deadline < next);
        self.heap
            .insert((deadline, self.next_seq, run_id.to_string(), key));
        earliest
    }

    /// Drops every timer of `run_id` (the run closed: nothing is left to fire).
    pub fn remove_run(&mut self, run_id: &str) {
        let Some(run) = self.by_run.remove(run_id) else {
            return;
        };
        for (key, (deadline, seq)) in run {
            let removed = self.heap.remove(&(deadline, seq, run_id.to_string(), key));
            assert!(removed, "a run's timer is in the heap");
        }
        assert!(!self.by_run.contains_key(run_id));
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.heap.first().map(|(deadline, ..)| *deadline)
    }

    /// Removes and returns every timer due at `now`, earliest first.
    pub fn pop_due(&mut self, now: Timestamp) -> Vec<(String, TimerKey)> {
        let mut due = Vec::new();
        while self.next_deadline().is_some_and(|deadline| deadline <= now) {
            due.extend(self.pop_first());
        }
        assert!(self.next_deadline().is_none_or(|next| next > now));
        due
    }

    /// Removes and returns the earliest timer, due or not.
    pub fn pop_first(&mut self) -> Option<(String, TimerKey)> {
        let (_, _, run_id, key) = self.heap.pop_first()?;
        let run = self
            .by_run
            .get_mut(&run_id)
            .expect("a queued timer's run is indexed");
        run.remove(&key).expect("a queued timer is indexed");
        if run.is_empty() {
            self.by_run.remove(&run_id);
        }
        Some((run_id, key))
    }

    /// How many timers are queued.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True if no timer is queued.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> TimerKey {
        TimerKey::User {
            timer_id: id.to_string(),
        }
    }

    #[test]
    fn equal_deadlines_pop_in_insertion_order() {
        let mut timers = TimerQueue::default();
        timers.insert("b", user("1"), Timestamp(10));
        timers.insert("a", user("1"), Timestamp(10));
        timers.insert("c", user("1"), Timestamp(5));
        let due: Vec<String> = timers
            .pop_due(Timestamp(10))
            .into_iter()
            .map(|(run, _)| run)
            .collect();
        assert_eq!(due, vec!["c", "b", "a"]);
        assert!(timers.is_empty());
    }

    #[test]
    fn nothing_pops_before_its_deadline() {
        let mut timers = TimerQueue::default();
        timers.insert("r", user("1"), Timestamp(100));
        assert!(timers.pop_due(Timestamp(99)).is_empty());
        assert_eq!(timers.pop_due(Timestamp(100)).len(), 1);
    }

    #[test]
    fn pop_first_takes_the_earliest_timer_before_its_deadline() {
        let mut timers = TimerQueue::default();
        timers.insert("run-a", user("late"), Timestamp(200));
        timers.insert("run-b", user("early"), Timestamp(100));
        assert_eq!(
            timers.pop_first(),
            Some(("run-b".to_string(), user("early")))
        );
        assert_eq!(timers.next_deadline(), Some(Timestamp(200)));
        assert_eq!(
            timers.pop_first(),
            Some(("run-a".to_string(), user("late")))
        );
        assert!(timers.is_empty());
        assert_eq!(timers.pop_first(), None);
    }

    #[test]
    fn a_later_copy_of_a_queued_timer_is_not_added() {
        let mut timers = TimerQueue::default();
        assert!(timers.insert("r", user("1"), Timestamp(100)));
        assert!(!timers.insert("r", user("1"), Timestamp(200)));
        assert_eq!(timers.len(), 1);
        assert!(
            timers.insert("r", user("1"), Timestamp(50)),
            "an earlier deadline is added and wakes the loop"
        );
        assert_eq!(timers.len(), 1, "and replaces the later one");
        assert_eq!(timers.pop_due(Timestamp(1_000)).len(), 1);
    }

    #[test]
    fn removing_a_run_drops_its_timers_and_no_other() {
        let mut timers = TimerQueue::default();
        timers.insert("closed", user("1"), Timestamp(10));
        timers.insert("closed", user("2"), Timestamp(30));
        timers.insert("open", user("1"), Timestamp(20));
        timers.remove_run("closed");
        timers.remove_run("never-queued");
        assert_eq!(timers.len(), 1);
        assert_eq!(timers.next_deadline(), Some(Timestamp(20)));
        let due = timers.pop_due(Timestamp(100));
        assert_eq!(due, vec![("open".to_string(), user("1"))]);
        assert!(timers.is_empty());
    }
}
