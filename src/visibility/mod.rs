//! Visibility: a run's search attributes and memo, and the list query
//! language that filters runs by them (a small subset of Temporal's).
//!
//! Pure code, no I/O: the types and their limits ([`validate`]), the query
//! parser ([`query`]), its evaluation over records in memory ([`eval`]) and its
//! translation to parameterized SQL ([`sql`]). Every storage answers a query
//! with the same semantics (see ARCHITECTURE.md, "Visibility").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::types::Timestamp;

pub mod eval;
pub mod query;
pub mod sql;

pub use query::{Query, QueryError, parse_query};

/// Search attributes a run may hold at once.
pub const SEARCH_ATTRIBUTES_COUNT_MAX: usize = 32;
/// Bytes of a search attribute's name.
pub const SEARCH_ATTRIBUTE_NAME_BYTES_MAX: usize = 64;
/// Bytes of one keyword or text value.
pub const SEARCH_ATTRIBUTE_VALUE_BYTES_MAX: usize = 2_048;
/// Keywords in a `KeywordList`.
pub const KEYWORD_LIST_LEN_MAX: usize = 64;
/// Bytes of a run's search attributes, encoded as JSON, all together.
pub const SEARCH_ATTRIBUTES_BYTES_MAX: usize = 16 * 1_024;
/// Bytes of a run's memo, encoded as JSON, all together.
pub const MEMO_BYTES_MAX: usize = 32 * 1_024;

/// The search attribute `ctx.patched` upserts (a `KeywordList` of patch ids),
/// as Temporal's SDKs do.
pub const CHANGE_VERSION: &str = "TemporalChangeVersion";

/// The system attributes a query names; reserved as search attribute names.
pub const SYSTEM_ATTRIBUTES: [&str; 7] = [
    "WorkflowId",
    "WorkflowType",
    "RunId",
    "ExecutionStatus",
    "StartTime",
    "CloseTime",
    "TaskQueue",
];

/// More of Temporal's system names, reserved too so a query means the same
/// on both.
const RESERVED_NAMES: [&str; 8] = [
    "ExecutionTime",
    "ExecutionDuration",
    "HistoryLength",
    "HistorySizeBytes",
    "StateTransitionCount",
    "ParentWorkflowId",
    "ParentRunId",
    "BuildIds",
];

/// One search attribute's typed value (Temporal's indexed value types).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum SearchValue {
    /// Compared whole (an id, a status).
    Keyword(String),
    /// Free text; compared whole here (Temporal tokenizes it).
    Text(String),
    Int(i64),
    /// A finite float.
    Double(f64),
    Bool(bool),
    Datetime(Timestamp),
    /// Keywords; a comparison holds if it holds for one of them.
    KeywordList(Vec<String>),
}

/// The kinds of [`SearchValue`], by name.
pub const KINDS: [&str; 7] = [
    "Keyword",
    "Text",
    "Int",
    "Double",
    "Bool",
    "Datetime",
    "KeywordList",
];

impl SearchValue {
    /// The kind's name (one of [`KINDS`]).
    pub fn kind(&self) -> &'static str {
        match self {
            SearchValue::Keyword(_) => "Keyword",
            SearchValue::Text(_) => "Text",
            SearchValue::Int(_) => "Int",
            SearchValue::Double(_) => "Double",
            SearchValue::Bool(_) => "Bool",
            SearchValue::Datetime(_) => "Datetime",
            SearchValue::KeywordList(_) => "KeywordList",
        }
    }

    /// Parses `text` as a value of `kind` (the CLI's `Key:Kind=Value`;
    /// a `KeywordList` is comma separated, a `Datetime` RFC 3339).
    pub fn parse(kind: &str, text: &str) -> Result<SearchValue, SearchAttributeError> {
        let bad = |expected: &str| SearchAttributeError::BadValue {
            kind: kind.to_string(),
            value: text.to_string(),
            expected: expected.to_string(),
        };
        Ok(match kind {
            "Keyword" => SearchValue::Keyword(text.to_string()),
            "Text" => SearchValue::Text(text.to_string()),
            "Int" => SearchValue::Int(text.parse().map_err(|_| bad("a 64-bit integer"))?),
            "Double" => SearchValue::Double(text.parse().map_err(|_| bad("a number"))?),
            "Bool" => SearchValue::Bool(text.parse().map_err(|_| bad("true or false"))?),
            "Datetime" => SearchValue::Datetime(
                parse_time(text).ok_or_else(|| bad("an RFC 3339 time (2026-12-01T00:00:00Z)"))?,
            ),
            "KeywordList" => {
                SearchValue::KeywordList(text.split(',').map(str::to_string).collect())
            }
            other => {
                return Err(SearchAttributeError::UnknownKind {
                    kind: other.to_string(),
                });
            }
        })
    }
}

/// Parses an RFC 3339 time (as the query language and the CLI write them).
pub fn parse_time(text: &str) -> Option<Timestamp> {
    let time = humantime::parse_rfc3339_weak(text).ok()?;
    let since = time.duration_since(std::time::UNIX_EPOCH).ok()?;
    let millis = u64::try_from(since.as_millis()).ok()?;
    (millis <= crate::types::TIMESTAMP_MAX.0).then_some(Timestamp(millis))
}

/// A run's search attributes, by name.
pub type SearchAttributes = BTreeMap<String, SearchValue>;

/// A run's memo: unindexed values by name.
pub type Memo = BTreeMap<String, Value>;

/// Search attributes or a memo the engine refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SearchAttributeError {
    /// The name is not `[A-Za-z_][A-Za-z0-9_]*` of at most 64 bytes.
    #[error(
        "search attribute name {name:?} is invalid: names are a letter or '_' followed by \
         letters, digits or '_', at most {SEARCH_ATTRIBUTE_NAME_BYTES_MAX} bytes"
    )]
    BadName {
        /// The name.
        name: String,
    },
    /// The name is a system attribute's (or reserved by Temporal).
    #[error("search attribute name {name:?} is reserved for the system")]
    Reserved {
        /// The name.
        name: String,
    },
    /// The value does not fit its kind.
    #[error("search attribute {name:?} ({kind}): {reason}")]
    BadKindValue {
        /// The attribute.
        name: String,
        /// Its kind.
        kind: String,
        /// What is wrong.
        reason: String,
    },
    /// Text given for a kind does not parse as one.
    #[error("{value:?} is not a {kind} value: expected {expected}")]
    BadValue {
        /// The kind.
        kind: String,
        /// The text.
        value: String,
        /// What the kind takes.
        expected: String,
    },
    /// The kind is not one of Temporal's.
    #[error("unknown search attribute kind {kind:?}; the kinds are {KINDS:?}")]
    UnknownKind {
        /// The kind given.
        kind: String,
    },
    /// The run would hold too many.
    #[error(
        "a run holds at most {SEARCH_ATTRIBUTES_COUNT_MAX} search attributes, this makes {count}"
    )]
    TooMany {
        /// How many it would hold.
        count: usize,
    },
    /// The run's attributes or memo would be too large.
    #[error("the run's {what} would take {bytes} bytes, over the limit of {max}")]
    TooLarge {
        /// "search attributes" or "memo".
        what: &'static str,
        /// Their encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
}

/// Who sets attributes: only the SDK's `patched` may set [`CHANGE_VERSION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setter {
    /// A client's start options, or the workflow's own upsert.
    User,
    /// The engine checking a workflow's command (which `patched` may have made).
    Command,
}

/// Checks one attribute's name and value.
pub fn validate_one(
    name: &str,
    value: &SearchValue,
    setter: Setter,
) -> Result<(), SearchAttributeError> {
    let name_ok = name.len() <= SEARCH_ATTRIBUTE_NAME_BYTES_MAX
        && name.chars().enumerate().all(|(index, c)| {
            c == '_' || c.is_ascii_alphabetic() || (index > 0 && c.is_ascii_digit())
        })
        && !name.is_empty();
    if !name_ok {
        return Err(SearchAttributeError::BadName {
            name: name.to_string(),
        });
    }
    let change_version = name == CHANGE_VERSION && setter == Setter::Command;
    let reserved = SYSTEM_ATTRIBUTES.contains(&name)
        || RESERVED_NAMES.contains(&name)
        || (name.starts_with("Temporal") && !change_version);
    if reserved {
        return Err(SearchAttributeError::Reserved {
            name: name.to_string(),
        });
    }
    validate_value(name, value)
}

fn validate_value(name: &str, value: &SearchValue) -> Result<(), SearchAttributeError> {
    let bad = |reason: String| SearchAttributeError::BadKindValue {
        name: name.to_string(),
        kind: value.kind().to_string(),
        reason,
    };
    let long = |text: &str| text.len() > SEARCH_ATTRIBUTE_VALUE_BYTES_MAX;
    match value {
        SearchValue::Keyword(text) | SearchValue::Text(text) if long(text) => Err(bad(format!(
            "{} bytes, over the limit of {SEARCH_ATTRIBUTE_VALUE_BYTES_MAX}",
            text.len()
        ))),
        SearchValue::Double(number) if !number.is_finite() => {
            Err(bad(format!("{number} is not a finite number")))
        }
        SearchValue::Datetime(time) if *time > crate::types::TIMESTAMP_MAX => {
            Err(bad("the time is past year 9999".to_string()))
        }
        SearchValue::KeywordList(list) if list.is_empty() || list.len() > KEYWORD_LIST_LEN_MAX => {
            Err(bad(format!(
                "a keyword list holds 1 to {KEYWORD_LIST_LEN_MAX} keywords, this one {}",
                list.len()
            )))
        }
        SearchValue::KeywordList(list) if list.iter().any(|k| long(k)) => Err(bad(format!(
            "a keyword is over the limit of {SEARCH_ATTRIBUTE_VALUE_BYTES_MAX} bytes"
        ))),
        _ => Ok(()),
    }
}

/// Checks every attribute of `upsert`, then the run's attributes once
/// `upsert` is merged into `current`: their count and encoded size.
pub fn validate_merge(
    current: &SearchAttributes,
    upsert: &SearchAttributes,
    setter: Setter,
) -> Result<SearchAttributes, SearchAttributeError> {
    for (name, value) in upsert {
        validate_one(name, value, setter)?;
    }
    let mut merged = current.clone();
    merged.extend(upsert.iter().map(|(k, v)| (k.clone(), v.clone())));
    if merged.len() > SEARCH_ATTRIBUTES_COUNT_MAX {
        return Err(SearchAttributeError::TooMany {
            count: merged.len(),
        });
    }
    let bytes = serde_json::to_vec(&merged).map_or(usize::MAX, |json| json.len());
    if bytes > SEARCH_ATTRIBUTES_BYTES_MAX {
        return Err(SearchAttributeError::TooLarge {
            what: "search attributes",
            bytes,
            max: SEARCH_ATTRIBUTES_BYTES_MAX,
        });
    }
    assert!(merged.len() >= current.len());
    Ok(merged)
}

/// Merges a memo upsert into the run's memo (a `null` value removes its key),
/// checking the merged memo's size.
pub fn merge_memo(current: &Memo, upsert: &Memo) -> Result<Memo, SearchAttributeError> {
    let mut merged = current.clone();
    for (key, value) in upsert {
        if value.is_null() {
            merged.remove(key);
        } else {
            merged.insert(key.clone(), value.clone());
        }
    }
    let bytes = serde_json::to_vec(&merged).map_or(usize::MAX, |json| json.len());
    if bytes > MEMO_BYTES_MAX {
        return Err(SearchAttributeError::TooLarge {
            what: "memo",
            bytes,
            max: MEMO_BYTES_MAX,
        });
    }
    Ok(merged)
}

/// One indexed row: (name, kind, text, integer, double). A `KeywordList`
/// makes a row per keyword; `Bool` and `Datetime` are integers (0/1, ms).
pub type IndexRow = (String, String, Option<String>, Option<i64>, Option<f64>);

/// The rows SQL storages index a run's attributes as, in name order.
pub fn index_rows(attributes: &SearchAttributes) -> Vec<IndexRow> {
    let mut rows = Vec::with_capacity(attributes.len());
    for (name, value) in attributes {
        let row = |s: Option<String>, i: Option<i64>, d: Option<f64>| {
            (name.clone(), value.kind().to_string(), s, i, d)
        };
        match value {
            SearchValue::Keyword(s) | SearchValue::Text(s) => {
                rows.push(row(Some(s.clone()), None, None))
            }
            SearchValue::Int(i) => rows.push(row(None, Some(*i), None)),
            SearchValue::Double(d) => rows.push(row(None, None, Some(*d))),
            SearchValue::Bool(b) => rows.push(row(None, Some(i64::from(*b)), None)),
            SearchValue::Datetime(t) => rows.push(row(None, Some(millis(*t)), None)),
            SearchValue::KeywordList(list) => {
                rows.extend(list.iter().map(|k| row(Some(k.clone()), None, None)));
            }
        }
    }
    assert!(rows.len() >= attributes.len());
    rows
}

fn millis(time: Timestamp) -> i64 {
    i64::try_from(time.as_millis()).unwrap_or(i64::MAX)
}

/// The attributes as stored in a run's row (JSON of [`index_rows`]).
pub fn encode_index(attributes: &SearchAttributes) -> String {
    serde_json::to_string(&index_rows(attributes)).expect("index rows encode")
}

/// Reads [`encode_index`]'s output back.
pub fn decode_index(json: &str) -> Result<SearchAttributes, String> {
    let rows: Vec<IndexRow> =
        serde_json::from_str(json).map_err(|e| format!("bad search attributes JSON: {e}"))?;
    let mut attributes = SearchAttributes::new();
    for (name, kind, s, i, d) in rows {
        let value = match (kind.as_str(), s, i, d) {
            ("Keyword", Some(s), None, None) => SearchValue::Keyword(s),
            ("Text", Some(s), None, None) => SearchValue::Text(s),
            ("Int", None, Some(i), None) => SearchValue::Int(i),
            ("Double", None, None, Some(d)) => SearchValue::Double(d),
            ("Bool", None, Some(i), None) => SearchValue::Bool(i != 0),
            ("Datetime", None, Some(i), None) => {
                SearchValue::Datetime(Timestamp(u64::try_from(i).unwrap_or(0)))
            }
            ("KeywordList", Some(s), None, None) => {
                if let Some(SearchValue::KeywordList(list)) = attributes.get_mut(&name) {
                    list.push(s);
                    continue;
                }
                SearchValue::KeywordList(vec![s])
            }
            (kind, ..) => return Err(format!("search attribute {name:?}: bad {kind} row")),
        };
        attributes.insert(name, value);
    }
    Ok(attributes)
}

/// A short text of the value, as the CLI and the UI show it.
pub fn display_value(value: &SearchValue) -> String {
    match value {
        SearchValue::Keyword(s) | SearchValue::Text(s) => s.clone(),
        SearchValue::Int(i) => i.to_string(),
        SearchValue::Double(d) => d.to_string(),
        SearchValue::Bool(b) => b.to_string(),
        SearchValue::Datetime(t) => t.to_string(),
        SearchValue::KeywordList(list) => list.join(","),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_kinds_and_sizes_are_checked() {
        let keyword = SearchValue::Keyword("c-1".to_string());
        assert!(validate_one("CustomerId", &keyword, Setter::User).is_ok());
        for bad in ["", "1abc", "a-b", &"x".repeat(65)] {
            let error = validate_one(bad, &keyword, Setter::User).unwrap_err();
            assert!(
                matches!(error, SearchAttributeError::BadName { .. }),
                "{bad}"
            );
        }
        for reserved in [
            "WorkflowId",
            "ExecutionStatus",
            "TemporalFoo",
            CHANGE_VERSION,
        ] {
            let error = validate_one(reserved, &keyword, Setter::User).unwrap_err();
            assert!(matches!(error, SearchAttributeError::Reserved { .. }));
        }
        let list = SearchValue::KeywordList(vec!["p1".to_string()]);
        assert!(validate_one(CHANGE_VERSION, &list, Setter::Command).is_ok());
        let nan = SearchValue::Double(f64::NAN);
        assert!(validate_one("Score", &nan, Setter::User).is_err());
        assert!(validate_one("Tags", &SearchValue::KeywordList(vec![]), Setter::User).is_err());
        let many: SearchAttributes = (0..33)
            .map(|i| (format!("A{i}"), SearchValue::Int(i)))
            .collect();
        let error = validate_merge(&SearchAttributes::new(), &many, Setter::User).unwrap_err();
        assert_eq!(error, SearchAttributeError::TooMany { count: 33 });
        let big: SearchAttributes = (0..10)
            .map(|i| (format!("A{i}"), SearchValue::Text("x".repeat(2_000))))
            .collect();
        let error = validate_merge(&SearchAttributes::new(), &big, Setter::User).unwrap_err();
        assert!(error.to_string().contains("over the limit"), "{error}");
    }

    #[test]
    fn index_rows_round_trip() {
        let attributes: SearchAttributes = [
            ("A", SearchValue::Keyword("k".into())),
            ("B", SearchValue::Text("t".into())),
            ("C", SearchValue::Int(-3)),
            ("D", SearchValue::Double(0.1)),
            ("E", SearchValue::Bool(true)),
            ("F", SearchValue::Datetime(Timestamp(1_700_000_000_123))),
            ("G", SearchValue::KeywordList(vec!["x".into(), "y".into()])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let json = encode_index(&attributes);
        assert_eq!(decode_index(&json).unwrap(), attributes);
        assert_eq!(index_rows(&attributes).len(), 8);
    }

    #[test]
    fn values_parse_by_kind() {
        assert_eq!(
            SearchValue::parse("Int", "42").unwrap(),
            SearchValue::Int(42)
        );
        assert!(SearchValue::parse("Int", "x").is_err());
        assert!(SearchValue::parse("Nope", "x").is_err());
        let time = SearchValue::parse("Datetime", "2026-12-01T00:00:00Z").unwrap();
        assert_eq!(time, SearchValue::Datetime(Timestamp(1_796_083_200_000)));
    }
}
