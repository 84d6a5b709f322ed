//! `diff(a, b)`: the first event where two histories diverge, with context.
//!
//! Histories are compared in normalised form (see `History::normalized`), so times,
//! identities and request ids do not count as differences.

use std::fmt;

use serde_json::Value;

use super::History;
use super::codec::normalize_event;

/// Events of context shown before the divergence.
pub const DIFF_CONTEXT_EVENTS_MAX: usize = 3;

/// Where two histories first diverge.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryDiff {
    /// The id of the first event that differs (or is missing on one side).
    pub event_id: u64,
    /// The event on the left, normalised; `None` if the left history ended.
    pub left: Option<Value>,
    /// The event on the right, normalised; `None` if the right history ended.
    pub right: Option<Value>,
    /// The attributes that differ, as `path: left != right`.
    pub differences: Vec<String>,
    /// Up to [`DIFF_CONTEXT_EVENTS_MAX`] events before the divergence (equal on both sides).
    pub context: Vec<Value>,
}

/// The first divergence between `left` and `right`, or `None` if they are equal
/// in normalised form.
pub fn diff(left: &History, right: &History) -> Option<HistoryDiff> {
    let length_max = left.len().max(right.len());
    for index in 0..length_max {
        let a = left.events().get(index).map(normalize_event);
        let b = right.events().get(index).map(normalize_event);
        if a == b {
            continue;
        }
        let mut differences = Vec::new();
        if let (Some(a), Some(b)) = (&a, &b) {
            collect_differences("", a, b, &mut differences);
        }
        let context_start = index.saturating_sub(DIFF_CONTEXT_EVENTS_MAX);
        let context = left.events()[context_start..index]
            .iter()
            .map(normalize_event)
            .collect();
        return Some(HistoryDiff {
            event_id: index as u64 + 1,
            left: a,
            right: b,
            differences,
            context,
        });
    }
    None
}

fn collect_differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let null = Value::Null;
                collect_differences(
                    &child,
                    x.get(key).unwrap_or(&null),
                    y.get(key).unwrap_or(&null),
                    out,
                );
            }
        }
        _ if a != b => out.push(format!("{path}: {a} != {b}")),
        _ => {}
    }
}

fn one_line(event: &Value) -> String {
    let id = event
        .get("event_id")
        .map(Value::to_string)
        .unwrap_or_default();
    let kind = event
        .get("event_type")
        .and_then(Value::as_str)
        .unwrap_or("?");
    let attributes = event
        .get("attributes")
        .map(Value::to_string)
        .unwrap_or_default();
    format!("{id:>5} {kind} {attributes}")
}

impl fmt::Display for HistoryDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "histories diverge at event {}", self.event_id)?;
        for event in &self.context {
            writeln!(f, "    {}", one_line(event))?;
        }
        match &self.left {
            Some(event) => writeln!(f, "  - {}", one_line(event))?,
            None => writeln!(f, "  - (left history ends)")?,
        }
        match &self.right {
            Some(event) => writeln!(f, "  + {}", one_line(event))?,
            None => writeln!(f, "  + (right history ends)")?,
        }
        for difference in &self.differences {
            writeln!(f, "  differs: {difference}")?;
        }
        Ok(())
    }
}
