//! Search attributes and memo in Temporal's layout: `searchAttributes.
//! indexedFields` and `memo.fields` map names to one payload each; a search
//! attribute's payload names its kind in `metadata.type`, as Temporal's SDKs
//! write it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use super::wire::{Attrs, Fault, decode_base64, decode_payloads, payloads};
use crate::types::Timestamp;
use crate::visibility::{Memo, SearchAttributes, SearchValue};

/// One value as one payload (`json/plain`).
fn payload(value: &Value) -> Value {
    payloads(value)["payloads"][0].clone()
}

fn decode_one(name: &str, payload: &Value) -> Result<Value, Fault> {
    decode_payloads(Attrs(
        json!({ "payloads": [payload] })
            .as_object()
            .expect("an object"),
    ))
    .map_err(|e| format!("`{name}`: {e}"))
}

/// `{"indexedFields": {name: payload}}`.
pub(super) fn search_attributes(attributes: &SearchAttributes) -> Value {
    let fields: Map<String, Value> = attributes
        .iter()
        .map(|(name, value)| {
            let plain = match value {
                SearchValue::Keyword(s) | SearchValue::Text(s) => json!(s),
                SearchValue::Int(i) => json!(i),
                SearchValue::Double(d) => json!(d),
                SearchValue::Bool(b) => json!(b),
                SearchValue::Datetime(t) => json!(t.to_string()),
                SearchValue::KeywordList(list) => json!(list),
            };
            let mut encoded = payload(&plain);
            encoded["metadata"]["type"] = json!(STANDARD.encode(value.kind()));
            (name.clone(), encoded)
        })
        .collect();
    json!({ "indexedFields": fields })
}

/// `{"fields": {key: payload}}`.
pub(super) fn memo(memo: &Memo) -> Value {
    let fields: Map<String, Value> = memo
        .iter()
        .map(|(key, value)| (key.clone(), payload(value)))
        .collect();
    json!({ "fields": fields })
}

/// The search attributes of `key` (`searchAttributes`), empty when absent.
/// A payload without `metadata.type` takes its kind from its JSON.
pub(super) fn decode_search_attributes(a: Attrs<'_>, key: &str) -> Result<SearchAttributes, Fault> {
    let mut out = SearchAttributes::new();
    let Some(message) = a.message(key)? else {
        return Ok(out);
    };
    let Some(fields) = message.message("indexedFields")? else {
        return Ok(out);
    };
    for (name, encoded) in fields.0 {
        let kind = encoded
            .get("metadata")
            .and_then(|m| m.get("type"))
            .and_then(Value::as_str)
            .and_then(decode_base64)
            .and_then(|bytes| String::from_utf8(bytes).ok());
        let value = decode_one(name, encoded)?;
        out.insert(name.clone(), typed(name, kind.as_deref(), value)?);
    }
    Ok(out)
}

fn typed(name: &str, kind: Option<&str>, value: Value) -> Result<SearchValue, Fault> {
    let bad = || format!("search attribute `{name}`: {value} is not a {kind:?} value");
    let text = || value.as_str().map(str::to_string).ok_or_else(bad);
    Ok(match (kind, &value) {
        (Some("Keyword"), _) | (None, Value::String(_)) => SearchValue::Keyword(text()?),
        (Some("Text"), _) => SearchValue::Text(text()?),
        (Some("Int"), _) => SearchValue::Int(value.as_i64().ok_or_else(bad)?),
        (None, Value::Number(n)) if n.is_i64() => SearchValue::Int(value.as_i64().ok_or_else(bad)?),
        (Some("Double"), _) | (None, Value::Number(_)) => {
            SearchValue::Double(value.as_f64().ok_or_else(bad)?)
        }
        (Some("Bool"), _) | (None, Value::Bool(_)) => {
            SearchValue::Bool(value.as_bool().ok_or_else(bad)?)
        }
        (Some("Datetime"), _) => {
            let time: Timestamp = serde_json::from_value(value.clone()).map_err(|_| bad())?;
            SearchValue::Datetime(time)
        }
        (Some("KeywordList"), _) | (None, Value::Array(_)) => {
            SearchValue::KeywordList(serde_json::from_value(value.clone()).map_err(|_| bad())?)
        }
        _ => return Err(bad()),
    })
}

/// The memo of `key` (`memo`, `upsertedMemo`), empty when absent.
pub(super) fn decode_memo(a: Attrs<'_>, key: &str) -> Result<Memo, Fault> {
    let mut out = Memo::new();
    let Some(message) = a.message(key)? else {
        return Ok(out);
    };
    let Some(fields) = message.message("fields")? else {
        return Ok(out);
    };
    for (name, encoded) in fields.0 {
        out.insert(name.clone(), decode_one(name, encoded)?);
    }
    Ok(out)
}
