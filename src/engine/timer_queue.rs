//! The service's in-memory index of durable timers (rebuilt from run state on
//! start). Ordered by deadline, ties broken by insertion sequence.

use std::collections::{BTreeMap, BTreeSet};

use super::machine::TimerKey;
use crate::types::Timestamp;

/// Timers by deadline.
#[derive(Default, Debug)]
pub struct TimerQueue {
    heap: BTreeSet<(Timestamp, u64, String, TimerKey)>,
    present: BTreeMap<(String, TimerKey), Timestamp>,
    next_seq: u64,
}

impl TimerQueue {
    /// Adds a timer unless the same one is already due no later. Returns true
    /// if it became the earliest timer (the timer loop should wake).
    pub fn insert(&mut self, run_id: &str, key: TimerKey, deadline: Timestamp) -> bool {
        let id = (run_id.to_string(), key);
        if self
            .present
            .get(&id)
            .is_some_and(|existing| *existing <= deadline)
        {
            return false;
        }
        let earliest = self.next_deadline().is_none_or(|next| deadline < next);
        self.next_seq += 1;
        self.heap
            .insert((deadline, self.next_seq, id.0.clone(), id.1.clone()));
        self.present.insert(id, deadline);
        earliest
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.heap.first().map(|(deadline, ..)| *deadline)
    }

    /// Removes and returns every timer due at `now`, earliest first.
    pub fn pop_due(&mut self, now: Timestamp) -> Vec<(String, TimerKey)> {
        let mut due = Vec::new();
        while let Some((deadline, ..)) = self.heap.first() {
            if *deadline > now {
                break;
            }
            let (deadline, _, run_id, key) = self.heap.pop_first().expect("first exists");
            let id = (run_id, key);
            if self.present.get(&id) == Some(&deadline) {
                self.present.remove(&id);
            }
            due.push(id);
        }
        due
    }

    /// True if no timer is queued.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
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
    fn a_later_copy_of_a_queued_timer_is_not_added() {
        let mut timers = TimerQueue::default();
        assert!(timers.insert("r", user("1"), Timestamp(100)));
        assert!(!timers.insert("r", user("1"), Timestamp(200)));
        assert_eq!(timers.len(), 1);
        assert!(
            timers.insert("r", user("1"), Timestamp(50)),
            "an earlier deadline is added and wakes the loop"
        );
    }
}
