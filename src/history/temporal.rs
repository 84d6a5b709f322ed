//! Temporal's JSON history export (`temporal workflow show --output json`,
//! protojson) read into a [`History`], and a `History` written in that form.
//!
//! `History::from_json` (so `History::from_file`, `Replayer::replay_file` and
//! `retrace history check`) reads this form when the file has none of the
//! canonical form's `format_version`, `workflow_id` and `run_id`.
//!
//! - Event types: `EVENT_TYPE_ACTIVITY_TASK_SCHEDULED` or the older
//!   `ActivityTaskScheduled`; attributes in `activityTaskScheduledEventAttributes`.
//!   Types Retrace does not have (updates, Nexus, properties modified...) are
//!   refused naming the event id.
//! - Payloads: `json/plain` is decoded, `binary/null` is null, other encodings
//!   (protobuf, encrypted, compressed) are refused; already decoded JSON in a
//!   payload's place (the CLI's shorthand) is taken as is. Several payloads
//!   (a multi-argument workflow or activity) become one JSON array.
//! - The workflow id is the start event's `workflowId` (Temporal 1.21 and
//!   later), else `"imported"`; the run id is `originalExecutionRunId`, else
//!   `firstExecutionRunId`, else `"imported"`.
//! - Ids a Temporal SDK chose are rewritten to Retrace's: activities, timers
//!   and side effects are numbered "1", "2", ... in the order of their events,
//!   and signals/cancels to other workflows and children get Retrace's
//!   `control` sequences, since replay matches commands on them.
//! - Markers: the Go SDK's `SideEffect` becomes Retrace's `SideEffect`
//!   `{seq, value}`; the core SDKs' (TypeScript, Python, .NET) `core_patch`
//!   becomes a `Patch` `{id, deprecated}`; others (Go `Version`, local
//!   activities, mutable side effects) are refused naming the event id.
//! - Not carried: headers, memos, search attributes, cron schedules, the
//!   workflow's own retry policy and run timeout, SDK metadata, build ids.

mod export;
mod import;
mod visibility;
mod wire;

use serde_json::{Map, Value, json};

use super::codec::DecodeError;
use super::event::{EVENT_TYPE_NAMES, Event, EventKind};
use super::{EVENTS_PER_RUN_MAX_DEFAULT, History};
use crate::types::Timestamp;
use import::Importer;
use wire::{Attrs, camel_case, pascal_case, screaming_snake};

/// The largest history file read (either form), in bytes.
pub const HISTORY_FILE_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// The workflow id and run id of an imported history whose export does not say.
pub const IMPORTED_ID_PLACEHOLDER: &str = "imported";

/// True when a history file's top level is Temporal's form: it has none of
/// the canonical form's header fields.
pub(super) fn is_temporal_form(
    format_version: Option<u64>,
    workflow_id: Option<&str>,
    run_id: Option<&str>,
) -> bool {
    format_version.is_none() && workflow_id.is_none() && run_id.is_none()
}

/// The two forms `History::from_json` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryForm {
    /// Retrace's canonical form (`format_version`, `workflow_id`, `run_id`, `events`).
    Canonical,
    /// Temporal's JSON export (`events` only).
    Temporal,
}

impl HistoryForm {
    /// Which form `text` is in, as `History::from_json` decides; `None` if
    /// it is not a JSON object.
    pub fn of(text: &str) -> Option<HistoryForm> {
        #[derive(serde::Deserialize)]
        struct Header {
            format_version: Option<serde::de::IgnoredAny>,
            workflow_id: Option<serde::de::IgnoredAny>,
            run_id: Option<serde::de::IgnoredAny>,
        }
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let header: Header = serde_json::from_str(text).ok()?;
        let present = header.format_version.is_some()
            || header.workflow_id.is_some()
            || header.run_id.is_some();
        Some(match present {
            true => HistoryForm::Canonical,
            false => HistoryForm::Temporal,
        })
    }
}

impl History {
    /// Reads Temporal's JSON history export (see the module documentation).
    pub fn from_temporal_json(text: &str) -> Result<History, DecodeError> {
        super::codec::check_size(text)?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut top: Map<String, Value> =
            serde_json::from_str(text).map_err(|e| super::codec::malformed(&e))?;
        match top.remove("events") {
            Some(Value::Array(events)) => from_temporal_events(events),
            _ => Err(DecodeError::Temporal(
                "expected an object with an `events` list".to_string(),
            )),
        }
    }

    /// This history in Temporal's JSON export form. Reading it back with
    /// [`History::from_temporal_json`] gives this history, except for what
    /// Temporal's events have no field for: the start event's `request_id`
    /// and a terminated child's `reason` come back empty.
    pub fn to_temporal_json(&self) -> String {
        let events: Vec<Value> = self.events.iter().map(|e| self.temporal_event(e)).collect();
        serde_json::to_string_pretty(&json!({ "events": events }))
            .expect("a serde_json::Value always encodes")
    }

    fn temporal_event(&self, event: &Event) -> Value {
        let name = event.kind.name();
        let attributes = match &event.kind {
            EventKind::WorkflowExecutionStarted(a) => export::started_with_run(a, &self.run_id),
            kind => export::attributes(kind),
        };
        let mut value = json!({
            "eventId": event.event_id.to_string(),
            "eventTime": event.event_time.to_string(),
            "eventType": format!("EVENT_TYPE_{}", screaming_snake(name)),
        });
        value[format!("{}EventAttributes", camel_case(name))] = attributes;
        value
    }
}

/// Converts and validates the events of a Temporal export.
pub(super) fn from_temporal_events(events: Vec<Value>) -> Result<History, DecodeError> {
    if events.len() as u64 > EVENTS_PER_RUN_MAX_DEFAULT {
        return Err(DecodeError::Temporal(format!(
            "{} events, over the limit of {EVENTS_PER_RUN_MAX_DEFAULT} per run",
            events.len()
        )));
    }
    let (workflow_id, run_id) = run_ids(events.first());
    let mut importer = Importer::default();
    importer.workflow_id = workflow_id.clone();
    let mut history = History::new(workflow_id, run_id);
    for (index, raw) in events.iter().enumerate() {
        let event = convert_event(&mut importer, index, raw)?;
        history.append(event)?;
    }
    Ok(history)
}

/// The workflow id and run id the start event names, or the placeholder.
fn run_ids(first: Option<&Value>) -> (String, String) {
    let attributes = first.and_then(|e| e.get("workflowExecutionStartedEventAttributes"));
    let field = |key: &str| {
        attributes
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .filter(|text| !text.is_empty())
            .map(str::to_string)
    };
    let workflow_id = field("workflowId");
    let run_id = field("originalExecutionRunId").or_else(|| field("firstExecutionRunId"));
    let placeholder = || IMPORTED_ID_PLACEHOLDER.to_string();
    (
        workflow_id.unwrap_or_else(placeholder),
        run_id.unwrap_or_else(placeholder),
    )
}

/// Retrace's name of a Temporal event type, either spelling.
fn retrace_name(event_type: &str) -> String {
    match event_type.strip_prefix("EVENT_TYPE_") {
        Some(rest) => pascal_case(rest),
        None => event_type.to_string(),
    }
}

fn convert_event(importer: &mut Importer, index: usize, raw: &Value) -> Result<Event, DecodeError> {
    let at_index =
        |message: &str| DecodeError::Temporal(format!("event at index {index}: {message}"));
    let object = raw.as_object().ok_or_else(|| at_index("not an object"))?;
    let event_id = Attrs(object)
        .event_id("eventId")
        .map_err(|_| at_index("no valid `eventId`"))?;
    let event_type = object
        .get("eventType")
        .and_then(Value::as_str)
        .unwrap_or("");
    let fail = |message: String| DecodeError::TemporalEvent {
        event_id,
        event_type: event_type.to_string(),
        message,
    };
    if event_type.is_empty() {
        return Err(fail("missing `eventType`".to_string()));
    }
    let name = retrace_name(event_type);
    if !EVENT_TYPE_NAMES.contains(&name.as_str()) {
        return Err(fail(format!(
            "this event type has no Retrace equivalent; Retrace reads {}",
            EVENT_TYPE_NAMES.join(", ")
        )));
    }
    let time = object.get("eventTime").cloned().unwrap_or(Value::Null);
    let event_time: Timestamp =
        serde_json::from_value(time).map_err(|e| fail(format!("`eventTime`: {e}")))?;
    let key = format!("{}EventAttributes", camel_case(&name));
    let attributes = match object.get(&key) {
        Some(Value::Object(attributes)) => attributes,
        _ => return Err(fail(format!("missing `{key}`"))),
    };
    let kind = importer
        .convert(event_id, &name, Attrs(attributes))
        .map_err(fail)?;
    Ok(Event::new(event_id, event_time, kind))
}
