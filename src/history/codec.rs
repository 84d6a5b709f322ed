//! The canonical JSON form of a history and the normalised form used for diffs.
//!
//! Canonical form: `{"format_version", "workflow_id", "run_id", "events"}`,
//! pretty-printed with two-space indents; struct fields in declaration order,
//! payload object keys sorted. Encoding the same history always gives the same bytes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::event::{EVENT_TYPE_NAMES, Event};
use super::temporal::{HISTORY_FILE_BYTES_MAX, from_temporal_events, is_temporal_form};
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
    /// A canonical history without one of its header fields.
    #[error(
        "history has no `{0}` (a canonical history has format_version, workflow_id, run_id and events)"
    )]
    MissingField(&'static str),
    /// The text is larger than `HISTORY_FILE_BYTES_MAX`.
    #[error("history is {bytes} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The size found.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A Temporal export that cannot be read as a whole.
    #[error("Temporal history: {0}")]
    Temporal(String),
    /// An event of a Temporal export that does not convert.
    #[error("Temporal history, event {event_id} ({event_type}): {message}")]
    TemporalEvent {
        /// The event's `eventId`.
        event_id: u64,
        /// The event's `eventType`, as written.
        event_type: String,
        /// What is wrong.
        message: String,
    },
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
    workflow_id: Option<String>,
    run_id: Option<String>,
    events: Vec<Value>,
}

pub(super) fn malformed(error: &serde_json::Error) -> DecodeError {
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
    ///
    /// A Temporal JSON export (no `format_version`, `workflow_id` or
    /// `run_id`, an `events` list) is converted as
    /// [`History::from_temporal_json`] does.
    pub fn from_json(text: &str) -> Result<History, DecodeError> {
        check_size(text)?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let header: FileHeader = serde_json::from_str(text).map_err(|e| malformed(&e))?;
        let (workflow_id, run_id) = (header.workflow_id.as_deref(), header.run_id.as_deref());
        if is_temporal_form(header.format_version, workflow_id, run_id) {
            return from_temporal_events(header.events);
        }
        let found = header.format_version.unwrap_or(0);
        if found != u64::from(FORMAT_VERSION) {
            return Err(DecodeError::UnsupportedFormatVersion {
                found,
                supported: FORMAT_VERSION,
            });
        }
        let workflow_id = header
            .workflow_id
            .ok_or(DecodeError::MissingField("workflow_id"))?;
        let run_id = header.run_id.ok_or(DecodeError::MissingField("run_id"))?;
        let mut history = History::new(workflow_id, run_id);
        for (index, raw) in header.events.into_iter().enumerate() {
            let event = decode_event(index, raw)?;
            history.append(event)?;
        }
        Ok(history)
    }

    /// Reads a history file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<History, DecodeError> {
        let path = path.as_ref();
        let io_error = |e: std::io::Error| DecodeError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let bytes = std::fs::metadata(path).map_err(io_error)?.len();
        if bytes > HISTORY_FILE_BYTES_MAX {
            let limit = HISTORY_FILE_BYTES_MAX;
            return Err(DecodeError::TooLarge { bytes, limit });
        }
        let text = std::fs::read_to_string(path).map_err(io_error)?;
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

/// Refuses a text over `HISTORY_FILE_BYTES_MAX`.
pub(super) fn check_size(text: &str) -> Result<(), DecodeError> {
    let bytes = text.len() as u64;
    if bytes > HISTORY_FILE_BYTES_MAX {
        let limit = HISTORY_FILE_BYTES_MAX;
        return Err(DecodeError::TooLarge { bytes, limit });
    }
    Ok(())
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
