//! The canonical JSON form of a history and the normalised form used for diffs.
//!
//! Canonical form: `{"format_version", "workflow_id", "run_id", "events"}`,
//! pretty-printed with two-space indents; struct fields in declaration order,
//! payload object keys sorted. Encoding the same history always gives the same bytes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::event::{EVENT_TYPE_NAMES, Event};
use super::{History, HistoryError};

/// The history file format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Why a history file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("history is not valid JSON at line {line}, column {column}: {message}")]
    Malformed {
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// The file was written by a newer (or unknown) format.
    #[error(
        "history format_version {found} is not supported: this build reads version {supported}"
    )]
    UnsupportedFormatVersion {
        /// The version in the file.
        found: u64,
        /// The version this build reads.
        supported: u32,
    },
    /// An event type this build does not know.
    #[error("event at index {index}: unknown event type {event_type:?} (known types: {known})")]
    UnknownEventType {
        /// Position in the `events` array.
        index: usize,
        /// The type found.
        event_type: String,
        /// The types this build knows.
        known: String,
    },
    /// An event's attributes do not fit its type.
    #[error("event at index {index} ({event_type}): bad attributes: {message}")]
    BadEvent {
        /// Position in the `events` array.
        index: usize,
        /// The event type.
        event_type: String,
        /// What the parser said.
        message: String,
    },
    /// The events decode but do not form a valid history.
    #[error("history is not well-formed: {0}")]
    Invalid(#[from] HistoryError),
    /// The file could not be read.
    #[error("cannot read history file {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        message: String,
    },
}

#[derive(Serialize)]
struct FileRef<'a> {
    format_version: u32,
    workflow_id: &'a str,
    run_id: &'a str,
    events: &'a [Event],
}

#[derive(Deserialize)]
struct FileHeader {
    format_version: Option<u64>,
    workflow_id: String,
    run_id: String,
    events: Vec<Value>,
}

fn malformed(error: &serde_json::Error) -> DecodeError {
    DecodeError::Malformed {
        line: error.line(),
        column: error.column(),
        message: error.to_string(),
    }
}

impl History {
    /// The canonical JSON form (pretty-printed, stable bytes).
    pub fn to_json(&self) -> String {
        let file = FileRef {
            format_version: FORMAT_VERSION,
            workflow_id: &self.workflow_id,
            run_id: &self.run_id,
            events: &self.events,
        };
        serde_json::to_string_pretty(&file).expect("history types always encode")
    }

    /// Reads the canonical JSON form, validating every event. A leading
    /// UTF-8 byte order mark (as some editors write) is skipped.
    pub fn from_json(text: &str) -> Result<History, DecodeError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let header: FileHeader = serde_json::from_str(text).map_err(|e| malformed(&e))?;
        let found = header.format_version.unwrap_or(0);
        if found != u64::from(FORMAT_VERSION) {
            return Err(DecodeError::UnsupportedFormatVersion {
                found,
                supported: FORMAT_VERSION,
            });
        }
        let mut history = History::new(header.workflow_id, header.run_id);
        for (index, raw) in header.events.into_iter().enumerate() {
            let event = decode_event(index, raw)?;
            history.append(event)?;
        }
        Ok(history)
    }

    /// Reads a history file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<History, DecodeError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| DecodeError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        History::from_json(&text)
    }

    /// The normalised form: what legitimately varies between real runs (event
    /// times, identities, request ids, the run id) is replaced by placeholders, so
    /// two runs of the same code and inputs compare equal.
    pub fn normalized(&self) -> Value {
        let events: Vec<Value> = self.events.iter().map(normalize_event).collect();
        serde_json::json!({
            "format_version": FORMAT_VERSION,
            "workflow_id": self.workflow_id,
            "events": events,
        })
    }
}

fn decode_event(index: usize, raw: Value) -> Result<Event, DecodeError> {
    let event_type = raw
        .get("event_type")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(event_type) = &event_type
        && !EVENT_TYPE_NAMES.contains(&event_type.as_str())
    {
        return Err(DecodeError::UnknownEventType {
            index,
            event_type: event_type.clone(),
            known: EVENT_TYPE_NAMES.join(", "),
        });
    }
    serde_json::from_value(raw).map_err(|e| DecodeError::BadEvent {
        index,
        event_type: event_type.unwrap_or_else(|| "<missing event_type>".to_string()),
        message: e.to_string(),
    })
}

/// Attribute names whose values vary between real runs of the same code.
const VARYING_ATTRIBUTES: [&str; 2] = ["identity", "request_id"];

/// One event in normalised form (see [`History::normalized`]).
pub(crate) fn normalize_event(event: &Event) -> Value {
    let mut value = serde_json::to_value(event).expect("events always encode");
    let object = value
        .as_object_mut()
        .expect("an event encodes as an object");
    object.remove("event_time");
    if let Some(Value::Object(attributes)) = object.get_mut("attributes") {
        for name in VARYING_ATTRIBUTES {
            if attributes.contains_key(name) {
                attributes.insert(name.to_string(), Value::String("<varies>".to_string()));
            }
        }
    }
    value
}
