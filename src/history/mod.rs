//! A run's event history: the events, their validation, the canonical JSON form,
//! a normalised form for diffs, and `diff`.
//!
//! ```
//! use retrace::history::{History, HistoryBuilder};
//!
//! let mut builder = HistoryBuilder::new("greet", serde_json::json!("world"));
//! builder.add_full_workflow_task();
//! builder.add_workflow_execution_completed(serde_json::json!("hello world"));
//! let history: History = builder.build();
//!
//! let json = history.to_json();
//! let back = History::from_json(&json).expect("a canonical history decodes");
//! assert_eq!(back, history);
//! assert!(history.is_closed());
//! ```

mod builder;
mod codec;
mod diff;
mod event;
mod temporal;
mod validate;

pub use builder::HistoryBuilder;
pub use codec::{DecodeError, FORMAT_VERSION};
pub use diff::{HistoryDiff, diff};
pub use event::*;
pub use temporal::{HISTORY_FILE_BYTES_MAX, HistoryForm, IMPORTED_ID_PLACEHOLDER};
pub use validate::{HistoryError, Validator};

use serde_json::Value;

/// Temporal's default limit of events per run.
pub const EVENTS_PER_RUN_MAX_DEFAULT: u64 = 51_200;
/// Temporal's default limit of one payload's size.
pub const PAYLOAD_BYTES_MAX_DEFAULT: u64 = 2 * 1024 * 1024;

/// Size limits of a history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Events a run may have.
    pub events_per_run_max: u64,
    /// Bytes one payload (input, result, details) may take, JSON-encoded.
    pub payload_bytes_max: u64,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            events_per_run_max: EVENTS_PER_RUN_MAX_DEFAULT,
            payload_bytes_max: PAYLOAD_BYTES_MAX_DEFAULT,
        }
    }
}

/// How deep a payload may nest (arrays and objects inside each other). Far
/// below the JSON decoder's limit of 128, so that whatever holds a payload
/// (an event, a run's state, a request) still decodes.
pub const PAYLOAD_DEPTH_MAX: usize = 64;

/// How deep `value` nests: 0 for a scalar, 1 for a flat array or object.
/// Counts no further than `PAYLOAD_DEPTH_COUNTED_MAX + 1` (far past the
/// limit, so errors still say how deep a value is), so a value built in
/// memory of any depth is measured safely, and without allocating.
pub fn payload_depth(value: &Value) -> usize {
    fn depth(value: &Value, limit: usize) -> usize {
        let children: &mut dyn Iterator<Item = &Value> = match value {
            Value::Array(items) => &mut items.iter(),
            Value::Object(map) => &mut map.values(),
            _ => return 0,
        };
        if limit == 0 {
            return 1;
        }
        1 + children
            .map(|child| depth(child, limit - 1))
            .max()
            .unwrap_or(0)
    }
    depth(value, PAYLOAD_DEPTH_COUNTED_MAX)
}

/// The deepest nesting `payload_depth` counts exactly.
pub const PAYLOAD_DEPTH_COUNTED_MAX: usize = 1_000;

/// The size of a payload as encoded JSON.
pub fn payload_size_bytes(value: &Value) -> u64 {
    struct Counter(u64);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value).expect("a serde_json::Value always encodes");
    counter.0
}

/// The events of one run, valid by construction: every event went through
/// [`History::append`].
#[derive(Clone, Debug)]
pub struct History {
    workflow_id: String,
    run_id: String,
    events: Vec<Event>,
    validator: Validator,
}

impl PartialEq for History {
    fn eq(&self, other: &Self) -> bool {
        self.workflow_id == other.workflow_id
            && self.run_id == other.run_id
            && self.events == other.events
    }
}

impl History {
    /// An empty history with the default limits.
    pub fn new(workflow_id: impl Into<String>, run_id: impl Into<String>) -> History {
        History::with_limits(workflow_id, run_id, HistoryLimits::default())
    }

    /// An empty history with the given limits.
    pub fn with_limits(
        workflow_id: impl Into<String>,
        run_id: impl Into<String>,
        limits: HistoryLimits,
    ) -> History {
        History {
            workflow_id: workflow_id.into(),
            run_id: run_id.into(),
            events: Vec::new(),
            validator: Validator::new(limits),
        }
    }

    /// A history of the given events, each validated in turn.
    pub fn from_events(
        workflow_id: impl Into<String>,
        run_id: impl Into<String>,
        events: impl IntoIterator<Item = Event>,
    ) -> Result<History, HistoryError> {
        let mut history = History::new(workflow_id, run_id);
        for event in events {
            history.append(event)?;
        }
        Ok(history)
    }

    /// Appends an event after checking that the history stays well-formed.
    /// On error the history is unchanged.
    pub fn append(&mut self, event: Event) -> Result<(), HistoryError> {
        self.validator.check_and_apply(&event)?;
        self.events.push(event);
        debug_assert_eq!(self.events.len() as u64 + 1, self.validator.next_event_id());
        Ok(())
    }

    /// The workflow id of the run.
    pub fn workflow_id(&self) -> &str {
        &self.workflow_id
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The events, in order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True if there are no events.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The id the next appended event must have.
    pub fn next_event_id(&self) -> u64 {
        self.validator.next_event_id()
    }

    /// True once a terminal event was appended.
    pub fn is_closed(&self) -> bool {
        self.validator.closed_by().is_some()
    }

    /// The start event's attributes, if the history has one.
    pub fn started(&self) -> Option<&WorkflowExecutionStarted> {
        match self.events.first().map(|e| &e.kind) {
            Some(EventKind::WorkflowExecutionStarted(started)) => Some(started),
            _ => None,
        }
    }

    /// The terminal event, if the run is closed.
    pub fn close_event(&self) -> Option<&Event> {
        self.events.last().filter(|e| e.kind.is_terminal())
    }
}
