//! Events that arrived while a workflow task was started, waiting to be
//! written to the history when it closes.
//!
//! They are not part of the state blob: storage keeps them in rows of their
//! own, and a write appends only the new ones ([`Buffered::pending_write`]), so
//! a signal costs what it adds, not what is already buffered. The type tracks
//! which events storage already holds, so no caller can forget to clear rows
//! after removing events. Each event sits behind an `Arc`, so copying a run's
//! state for a transition does not copy the events' payloads.
//!
//! | operation            | events                  | storage rows after the next write |
//! |----------------------|-------------------------|-----------------------------------|
//! | `push`               | one more at the end     | the new ones appended             |
//! | `take`, `clear`      | none                    | cleared                           |
//! | `retain` removes any | fewer                   | cleared, then all rewritten       |
//! | loaded from rows     | the rows, in order      | unchanged                         |

use std::sync::Arc;

use serde::{Deserialize, Deserializer};

use crate::env::BufferedWrite;
use crate::history::EventKind;

/// A run's buffered events and what storage holds of them.
#[derive(Clone, Debug, Default)]
pub struct Buffered {
    events: Vec<Arc<EventKind>>,
    /// The first `stored` events are in storage's rows (unless `clear_rows`).
    stored: usize,
    /// Events were removed since the last write: the rows must be cleared first.
    clear_rows: bool,
}

impl PartialEq for Buffered {
    /// Equal events; what storage holds of them is bookkeeping.
    fn eq(&self, other: &Buffered) -> bool {
        self.events == other.events
    }
}

impl Buffered {
    /// Events as loaded from storage's rows (all of them stored).
    pub fn from_rows(events: Vec<EventKind>) -> Buffered {
        let stored = events.len();
        Buffered {
            events: events.into_iter().map(Arc::new).collect(),
            stored,
            clear_rows: false,
        }
    }

    /// Adds storage's rows to events decoded from an old state blob (which
    /// kept them inline): the next write stores them all.
    pub fn with_rows(mut self, rows: Vec<EventKind>) -> Buffered {
        if self.events.is_empty() {
            return Buffered::from_rows(rows);
        }
        self.clear_rows = !rows.is_empty();
        self.stored = 0;
        self.events.extend(rows.into_iter().map(Arc::new));
        self
    }

    pub fn push(&mut self, kind: EventKind) {
        self.events.push(Arc::new(kind));
    }

    /// Removes and returns every event.
    pub fn take(&mut self) -> Vec<EventKind> {
        self.forget_rows();
        let events = std::mem::take(&mut self.events);
        events.into_iter().map(Arc::unwrap_or_clone).collect()
    }

    /// Keeps the events `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&EventKind) -> bool) {
        let before = self.events.len();
        self.events.retain(|kind| keep(kind));
        if self.events.len() != before {
            self.forget_rows();
        }
    }

    fn forget_rows(&mut self) {
        self.clear_rows |= self.stored > 0;
        self.stored = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn iter(&self) -> Iter<'_> {
        self.events.iter().map(|kind| &**kind)
    }

    /// What the next write must do to storage's rows.
    pub fn pending_write(&self) -> BufferedWrite {
        assert!(self.stored <= self.events.len());
        assert!(!self.clear_rows || self.stored == 0);
        BufferedWrite {
            clear: self.clear_rows,
            append: self.events[self.stored..]
                .iter()
                .map(|kind| EventKind::clone(kind))
                .collect(),
        }
    }

    /// The write of [`Buffered::pending_write`] committed.
    pub fn written(&mut self) {
        self.stored = self.events.len();
        self.clear_rows = false;
    }
}

/// The events, in order.
pub type Iter<'a> =
    std::iter::Map<std::slice::Iter<'a, Arc<EventKind>>, fn(&Arc<EventKind>) -> &EventKind>;

impl<'a> IntoIterator for &'a Buffered {
    type Item = &'a EventKind;
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Reads the events an old state blob kept inline (none in a new blob); they
/// are not stored as rows yet.
pub fn deserialize_inline<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Buffered, D::Error> {
    let events = Vec::<EventKind>::deserialize(deserializer)?;
    Ok(Buffered {
        events: events.into_iter().map(Arc::new).collect(),
        stored: 0,
        clear_rows: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{TimerFired, WorkflowExecutionSignaled};

    fn signal(name: &str) -> EventKind {
        EventKind::WorkflowExecutionSignaled(WorkflowExecutionSignaled {
            signal_name: name.to_string(),
            input: serde_json::Value::Null,
            identity: String::new(),
        })
    }

    fn fired(timer_id: &str) -> EventKind {
        EventKind::TimerFired(TimerFired {
            timer_id: timer_id.to_string(),
            started_event_id: 5,
        })
    }

    #[test]
    fn a_write_appends_only_the_events_pushed_since_the_last_write() {
        let mut buffered = Buffered::from_rows(vec![signal("a")]);
        buffered.push(signal("b"));
        let write = buffered.pending_write();
        assert!(!write.clear);
        assert_eq!(write.append, [signal("b")]);
        buffered.written();
        assert_eq!(buffered.pending_write(), BufferedWrite::none());
    }

    #[test]
    fn taking_the_events_clears_the_rows_once() {
        let mut buffered = Buffered::from_rows(vec![signal("a")]);
        assert_eq!(buffered.take(), [signal("a")]);
        buffered.push(signal("b"));
        let write = buffered.pending_write();
        assert!(write.clear, "the stored row of a must go");
        assert_eq!(write.append, [signal("b")]);
        buffered.written();
        assert!(!buffered.pending_write().clear);
    }

    #[test]
    fn removing_one_event_rewrites_the_rest() {
        let mut buffered = Buffered::from_rows(vec![signal("a"), fired("t"), signal("b")]);
        buffered.retain(|kind| !matches!(kind, EventKind::TimerFired(_)));
        let write = buffered.pending_write();
        assert!(write.clear);
        assert_eq!(write.append, [signal("a"), signal("b")]);
    }

    #[test]
    fn retaining_everything_rewrites_nothing() {
        let mut buffered = Buffered::from_rows(vec![signal("a")]);
        buffered.retain(|_| true);
        assert_eq!(buffered.pending_write(), BufferedWrite::none());
    }

    #[test]
    fn taking_events_storage_never_held_clears_no_rows() {
        let mut buffered = Buffered::default();
        buffered.push(signal("a"));
        assert_eq!(buffered.take(), [signal("a")]);
        assert_eq!(buffered.pending_write(), BufferedWrite::none());
    }

    #[test]
    fn events_of_an_old_inline_blob_are_all_written_as_rows() {
        let old: Buffered = serde_json::from_str::<Wrapper>(
            &serde_json::json!({ "buffered": [signal("a")] }).to_string(),
        )
        .expect("an old blob decodes")
        .buffered;
        let loaded = old.with_rows(Vec::new());
        let write = loaded.pending_write();
        assert!(!write.clear);
        assert_eq!(write.append, [signal("a")]);
    }

    #[derive(Deserialize)]
    struct Wrapper {
        #[serde(deserialize_with = "deserialize_inline")]
        buffered: Buffered,
    }
}
