//! Temporal's protojson vocabulary, both ways: int64 as strings, durations as
//! `"1.5s"`, payloads as base64 with an encoding in their metadata, failures,
//! task queues, enums with their `TYPE_` prefixes.

use base64::Engine;
use base64::engine::general_purpose::{
    STANDARD, STANDARD_PAD_INDIFFERENT, URL_SAFE_PAD_INDIFFERENT,
};
use serde_json::{Map, Value, json};

use crate::activity::{BACKOFF_COEFFICIENT_DEFAULT, RetryPolicy};
use crate::types::{
    ActivityFailureInfo, ChildWorkflowFailureInfo, FAILURE_CAUSES_MAX, Failure, FailureInfo,
};

/// What went wrong in one event; the caller adds the event id and type.
pub(super) type Fault = String;

/// A protojson message (an event's attributes or a nested message).
#[derive(Clone, Copy)]
pub(super) struct Attrs<'a>(pub &'a Map<String, Value>);

fn describe(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

impl<'a> Attrs<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|value| !value.is_null())
    }

    /// A nested message, if present.
    pub fn message(&self, key: &str) -> Result<Option<Attrs<'a>>, Fault> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Attrs(map))),
            Some(other) => Err(format!(
                "attribute `{key}`: expected an object, got {}",
                describe(other)
            )),
        }
    }

    /// A string; protojson leaves empty strings out, so absent is "".
    pub fn string(&self, key: &str) -> Result<String, Fault> {
        match self.get(key) {
            None => Ok(String::new()),
            Some(Value::String(text)) => Ok(text.clone()),
            Some(other) => Err(format!(
                "attribute `{key}`: expected a string, got {}",
                describe(other)
            )),
        }
    }

    /// A string that must be there and not empty.
    pub fn required_string(&self, key: &str) -> Result<String, Fault> {
        let text = self.string(key)?;
        if text.is_empty() {
            return Err(format!("missing attribute `{key}`"));
        }
        Ok(text)
    }

    /// A string, or `None` when absent or empty.
    pub fn optional_string(&self, key: &str) -> Result<Option<String>, Fault> {
        Ok(Some(self.string(key)?).filter(|text| !text.is_empty()))
    }

    /// `{"name": ...}` messages: workflow and activity types, task queues.
    pub fn name_of(&self, key: &str) -> Result<String, Fault> {
        let message = self
            .message(key)?
            .ok_or_else(|| format!("missing attribute `{key}`"))?;
        message
            .required_string("name")
            .map_err(|_| format!("missing attribute `{key}.name`"))
    }

    /// An integer (int64 is a string in protojson, int32 a number), or
    /// `None` when absent (protojson leaves zeros out).
    pub fn optional_int(&self, key: &str) -> Result<Option<u64>, Fault> {
        let parsed = match self.get(key) {
            None => return Ok(None),
            Some(Value::String(text)) => text.parse::<u64>().ok(),
            Some(Value::Number(number)) => number.as_u64(),
            Some(_) => None,
        };
        match parsed {
            Some(number) => Ok(Some(number)),
            None => Err(format!(
                "attribute `{key}`: expected a non-negative integer, got {}",
                describe(&self.0[key])
            )),
        }
    }

    /// An integer that must be there and not zero (an event id).
    pub fn event_id(&self, key: &str) -> Result<u64, Fault> {
        match self.optional_int(key)? {
            Some(id) if id > 0 => Ok(id),
            _ => Err(format!("missing attribute `{key}`")),
        }
    }

    /// A 32-bit count (attempts), `default` when absent.
    pub fn u32_or(&self, key: &str, default: u32) -> Result<u32, Fault> {
        match self.optional_int(key)? {
            None => Ok(default),
            Some(number) => u32::try_from(number)
                .map_err(|_| format!("attribute `{key}`: {number} is too large")),
        }
    }

    /// A duration in milliseconds; `None` when absent or zero (Temporal's "unset").
    pub fn duration_ms(&self, key: &str) -> Result<Option<u64>, Fault> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let parsed = value.as_str().and_then(parse_duration_ms);
        match parsed {
            Some(0) => Ok(None),
            Some(ms) => Ok(Some(ms)),
            None => Err(format!(
                "attribute `{key}`: expected a duration such as \"10s\", got {}",
                describe(value)
            )),
        }
    }

    /// An enum value with its prefix removed (`TIMEOUT_TYPE_START_TO_CLOSE`
    /// with prefix `TIMEOUT_TYPE_` gives `START_TO_CLOSE`); `None` when absent
    /// or unspecified.
    pub fn enumeration(&self, key: &str, prefix: &str) -> Result<Option<String>, Fault> {
        let text = self.string(key)?;
        let bare = text.strip_prefix(prefix).unwrap_or(&text);
        Ok(Some(bare.to_string()).filter(|bare| !bare.is_empty() && bare != "UNSPECIFIED"))
    }

    /// `Payloads` as one value (see [`decode_payloads`]); null when absent.
    pub fn payloads(&self, key: &str) -> Result<Value, Fault> {
        Ok(self.optional_payloads(key)?.unwrap_or(Value::Null))
    }

    /// `Payloads` as one value, `None` when absent.
    pub fn optional_payloads(&self, key: &str) -> Result<Option<Value>, Fault> {
        let Some(message) = self.message(key)? else {
            return Ok(None);
        };
        decode_payloads(message)
            .map(Some)
            .map_err(|e| format!("`{key}`: {e}"))
    }

    /// A failure, `None` when absent.
    pub fn failure(&self, key: &str) -> Result<Option<Failure>, Fault> {
        let Some(message) = self.message(key)? else {
            return Ok(None);
        };
        decode_failure(message)
            .map(Some)
            .map_err(|e| format!("`{key}`: {e}"))
    }

    /// A failure that must be there.
    pub fn required_failure(&self, key: &str) -> Result<Failure, Fault> {
        self.failure(key)?
            .ok_or_else(|| format!("missing attribute `{key}`"))
    }

    /// A retry policy with Temporal's defaults filled in where it leaves
    /// fields out; the default policy when absent.
    pub fn retry_policy(&self, key: &str) -> Result<RetryPolicy, Fault> {
        let mut policy = RetryPolicy::default();
        let Some(message) = self.message(key)? else {
            return Ok(policy);
        };
        if let Some(ms) = message.duration_ms("initialInterval")? {
            policy.initial_interval_ms = ms;
        }
        policy.backoff_coefficient = match message.get("backoffCoefficient") {
            None => BACKOFF_COEFFICIENT_DEFAULT,
            Some(value) => value
                .as_f64()
                .ok_or_else(|| format!("`{key}.backoffCoefficient`: expected a number"))?,
        };
        policy.maximum_interval_ms = message.duration_ms("maximumInterval")?.unwrap_or(0);
        policy.maximum_attempts = message.u32_or("maximumAttempts", 0)?;
        policy.non_retryable_error_types = match message.get("nonRetryableErrorTypes") {
            None => Vec::new(),
            Some(value) => serde_json::from_value(value.clone()).map_err(|_| {
                format!("`{key}.nonRetryableErrorTypes`: expected a list of strings")
            })?,
        };
        Ok(policy)
    }

    /// `{"workflowId", "runId"}` of a `workflowExecution` message.
    pub fn execution(&self, key: &str) -> Result<(String, Option<String>), Fault> {
        let message = self
            .message(key)?
            .ok_or_else(|| format!("missing attribute `{key}`"))?;
        let workflow_id = message
            .required_string("workflowId")
            .map_err(|_| format!("missing attribute `{key}.workflowId`"))?;
        Ok((workflow_id, message.optional_string("runId")?))
    }
}

/// `"10s"`, `"1.5s"`, `"0.000001s"` in milliseconds (rounded down).
pub(super) fn parse_duration_ms(text: &str) -> Option<u64> {
    let seconds = text.strip_suffix('s')?;
    let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let millis: u64 = format!("{fraction:0<3}")[..3].parse().ok()?;
    whole.checked_mul(1_000)?.checked_add(millis)
}

/// Milliseconds as a protojson duration.
pub(super) fn duration(ms: u64) -> Value {
    match ms % 1_000 {
        0 => json!(format!("{}s", ms / 1_000)),
        rest => json!(format!("{}.{rest:03}s", ms / 1_000)),
    }
}

const JSON_PLAIN: &str = "json/plain";
const BINARY_NULL: &str = "binary/null";

pub(super) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    STANDARD_PAD_INDIFFERENT
        .decode(text)
        .or_else(|_| URL_SAFE_PAD_INDIFFERENT.decode(text))
        .ok()
}

/// One payload: `json/plain` data decodes as JSON, `binary/null` is null,
/// any other encoding is refused. A payload that is not an object with
/// `metadata` is taken as already decoded JSON (the Temporal CLI's
/// "shorthand" payloads).
fn decode_payload(index: usize, payload: &Value) -> Result<Value, Fault> {
    let Some(metadata) = payload.get("metadata").and_then(Value::as_object) else {
        return Ok(payload.clone());
    };
    let encoding = match metadata.get("encoding").and_then(Value::as_str) {
        None => return Err(format!("payload {index} has no encoding in its metadata")),
        Some(text) => decode_base64(text)
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| format!("payload {index}: metadata.encoding is not base64 text"))?,
    };
    let data = match payload.get("data") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => {
            decode_base64(text).ok_or_else(|| format!("payload {index}: data is not base64"))?
        }
        Some(_) => return Err(format!("payload {index}: data is not a base64 string")),
    };
    match encoding.as_str() {
        BINARY_NULL => Ok(Value::Null),
        JSON_PLAIN => serde_json::from_slice(&data)
            .map_err(|e| format!("payload {index}: json/plain data is not JSON: {e}")),
        other => Err(format!(
            "payload {index} has encoding {other:?}; Retrace reads only json/plain and \
             binary/null (decode encrypted or compressed payloads with your codec first)"
        )),
    }
}

/// `{"payloads": [...]}` as one value: none is null, one is its value,
/// several are an array of their values (a Retrace workflow takes one input:
/// port a multi-argument Temporal workflow to a tuple or an array).
pub(super) fn decode_payloads(message: Attrs<'_>) -> Result<Value, Fault> {
    let items = match message.get("payloads") {
        None => return Ok(Value::Null),
        Some(Value::Array(items)) => items,
        Some(_) => return Err("`payloads` is not a list".to_string()),
    };
    let mut values = items
        .iter()
        .enumerate()
        .map(|(index, item)| decode_payload(index, item))
        .collect::<Result<Vec<Value>, Fault>>()?;
    Ok(match values.len() {
        0 => Value::Null,
        1 => values.remove(0),
        _ => Value::Array(values),
    })
}

/// A value as `{"payloads": [one payload]}`: null as `binary/null`, anything
/// else as `json/plain`.
pub(super) fn payloads(value: &Value) -> Value {
    let payload = match value {
        Value::Null => json!({"metadata": {"encoding": STANDARD.encode(BINARY_NULL)}}),
        _ => {
            let data = serde_json::to_vec(value).expect("a serde_json::Value always encodes");
            json!({
                "metadata": {"encoding": STANDARD.encode(JSON_PLAIN)},
                "data": STANDARD.encode(data),
            })
        }
    };
    json!({ "payloads": [payload] })
}

/// A failure: an application failure's type, flags and details; other kinds
/// (timeout, canceled, terminated, server) take their kind as type; a wrapper
/// (activity or child workflow failure) is read through to its cause.
/// A failure and its causes, at most [`FAILURE_CAUSES_MAX`] deep.
fn decode_failure(message: Attrs<'_>) -> Result<Failure, Fault> {
    decode_failure_within(message, FAILURE_CAUSES_MAX)
}

fn decode_failure_within(message: Attrs<'_>, causes_max: usize) -> Result<Failure, Fault> {
    let cause = match message.message("cause")? {
        Some(_) if causes_max <= 1 => {
            return Err(format!(
                "a failure with more than {FAILURE_CAUSES_MAX} causes"
            ));
        }
        Some(cause) => Some(decode_failure_within(cause, causes_max - 1)?),
        None => None,
    };
    Ok(decode_one_failure(message)?.with_cause(cause))
}

/// One failure of a chain, without its cause.
fn decode_one_failure(message: Attrs<'_>) -> Result<Failure, Fault> {
    let text = message.string("message")?;
    if let Some(info) = message.message("applicationFailureInfo")? {
        let mut failure = Failure::new(info.string("type")?, text);
        failure.non_retryable = info.0.get("nonRetryable").and_then(Value::as_bool) == Some(true);
        failure.details = info.optional_payloads("details")?;
        return Ok(failure);
    }
    if let Some(info) = message.message("activityFailureInfo")? {
        let activity = activity_failure_info(info)?;
        return Ok(Failure {
            info: Some(Box::new(FailureInfo::Activity(activity))),
            ..Failure::new("ActivityFailure", text)
        });
    }
    if let Some(info) = message.message("timeoutFailureInfo")? {
        let timeout_type =
            super::import::timeout_type(info.enumeration("timeoutType", "TIMEOUT_TYPE_")?)?;
        return Ok(Failure::timed_out(timeout_type, text));
    }
    if let Some(info) = message.message("childWorkflowExecutionFailureInfo")? {
        let child = child_failure_info(info)?;
        return Ok(Failure {
            info: Some(Box::new(FailureInfo::ChildWorkflow(child))),
            ..Failure::new("ChildWorkflowFailure", text)
        });
    }
    let kinds = [
        ("timeoutFailureInfo", "Timeout"),
        ("canceledFailureInfo", "Canceled"),
        ("terminatedFailureInfo", "Terminated"),
        ("serverFailureInfo", "ServerFailure"),
        ("resetWorkflowFailureInfo", "ResetWorkflow"),
    ];
    let kind = kinds
        .iter()
        .find(|(key, _)| message.0.contains_key(*key))
        .map_or("Failure", |(_, kind)| kind);
    Ok(Failure::new(kind, text))
}

/// Temporal's `ChildWorkflowExecutionFailureInfo`.
fn child_failure_info(info: Attrs<'_>) -> Result<ChildWorkflowFailureInfo, Fault> {
    let execution = info
        .message("workflowExecution")?
        .ok_or("missing attribute `workflowExecution`")?;
    let workflow_type = info
        .message("workflowType")?
        .ok_or("missing attribute `workflowType`")?
        .string("name")?;
    Ok(ChildWorkflowFailureInfo {
        workflow_id: execution.string("workflowId")?,
        run_id: execution.optional_string("runId")?.unwrap_or_default(),
        workflow_type,
        initiated_event_id: info.optional_int("initiatedEventId")?.unwrap_or_default(),
        started_event_id: info.optional_int("startedEventId")?.unwrap_or_default(),
        retry_state: super::import::retry_state(info)?,
    })
}

/// Temporal's `ActivityFailureInfo`.
fn activity_failure_info(info: Attrs<'_>) -> Result<ActivityFailureInfo, Fault> {
    let activity_type = info
        .message("activityType")?
        .ok_or("missing attribute `activityType`")?
        .string("name")?;
    Ok(ActivityFailureInfo {
        scheduled_event_id: info.optional_int("scheduledEventId")?.unwrap_or_default(),
        started_event_id: info.optional_int("startedEventId")?.unwrap_or_default(),
        identity: info.optional_string("identity")?.unwrap_or_default(),
        activity_type,
        activity_id: info.string("activityId")?,
        retry_state: super::import::retry_state(info)?,
    })
}

/// A failure and its causes: an activity or timeout failure with its
/// Temporal failure info, anything else as an application failure (its
/// type, flags and details).
pub(super) fn failure(failure: &Failure) -> Value {
    let mut value = json!({ "message": failure.message, "source": "Retrace" });
    match failure.info.as_deref() {
        Some(FailureInfo::Activity(a)) => {
            value["activityFailureInfo"] = json!({
                "scheduledEventId": a.scheduled_event_id.to_string(),
                "startedEventId": a.started_event_id.to_string(),
                "identity": a.identity,
                "activityType": { "name": a.activity_type },
                "activityId": a.activity_id,
                "retryState": super::export::retry_state(a.retry_state),
            });
        }
        Some(FailureInfo::Timeout { timeout_type }) => {
            let timeout_type = super::export::timeout_type(*timeout_type);
            value["timeoutFailureInfo"] = json!({ "timeoutType": timeout_type });
        }
        Some(FailureInfo::ChildWorkflow(c)) => {
            value["childWorkflowExecutionFailureInfo"] = json!({
                "workflowExecution": { "workflowId": c.workflow_id, "runId": c.run_id },
                "workflowType": { "name": c.workflow_type },
                "initiatedEventId": c.initiated_event_id.to_string(),
                "startedEventId": c.started_event_id.to_string(),
                "retryState": super::export::retry_state(c.retry_state),
            });
        }
        None => {
            let mut info = json!({ "type": failure.failure_type });
            if failure.non_retryable {
                info["nonRetryable"] = json!(true);
            }
            if let Some(details) = &failure.details {
                info["details"] = payloads(details);
            }
            value["applicationFailureInfo"] = info;
        }
    }
    if let Some(cause) = &failure.cause {
        value["cause"] = self::failure(cause);
    }
    value
}

/// A retry policy, every field written.
pub(super) fn retry_policy(policy: &RetryPolicy) -> Value {
    let mut value = json!({
        "initialInterval": duration(policy.initial_interval_ms),
        "backoffCoefficient": policy.backoff_coefficient,
        "maximumAttempts": policy.maximum_attempts,
        "nonRetryableErrorTypes": policy.non_retryable_error_types,
    });
    if policy.maximum_interval_ms > 0 {
        value["maximumInterval"] = duration(policy.maximum_interval_ms);
    }
    value
}

/// A task queue message.
pub(super) fn task_queue(name: &str) -> Value {
    json!({ "name": name, "kind": "TASK_QUEUE_KIND_NORMAL" })
}

/// `SCREAMING_SNAKE` as `PascalCase` (`ACTIVITY_TASK_SCHEDULED` gives
/// `ActivityTaskScheduled`).
pub(super) fn pascal_case(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split('_') {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(chars.map(|c| c.to_ascii_lowercase()));
        }
    }
    out
}

/// `PascalCase` as `SCREAMING_SNAKE`.
pub(super) fn screaming_snake(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for (index, c) in text.chars().enumerate() {
        if c.is_ascii_uppercase() && index > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// `PascalCase` as `camelCase`.
pub(super) fn camel_case(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_write_protojson() {
        assert_eq!(parse_duration_ms("10s"), Some(10_000));
        assert_eq!(parse_duration_ms("1.5s"), Some(1_500));
        assert_eq!(parse_duration_ms("0.000001s"), Some(0));
        assert_eq!(parse_duration_ms("3.123456789s"), Some(3_123));
        for bad in ["10", "s", "-1s", "1.2.3s", "1.0000000001s", "1e3s", ".5s"] {
            assert_eq!(parse_duration_ms(bad), None, "{bad}");
        }
        assert_eq!(duration(10_000), json!("10s"));
        assert_eq!(duration(1_005), json!("1.005s"));
        for ms in [0, 1, 999, 1_000, 86_400_123] {
            assert_eq!(parse_duration_ms(duration(ms).as_str().unwrap()), Some(ms));
        }
    }

    #[test]
    fn names_convert_between_cases() {
        assert_eq!(
            pascal_case("ACTIVITY_TASK_SCHEDULED"),
            "ActivityTaskScheduled"
        );
        assert_eq!(
            screaming_snake("ActivityTaskScheduled"),
            "ACTIVITY_TASK_SCHEDULED"
        );
        assert_eq!(camel_case("ActivityTaskScheduled"), "activityTaskScheduled");
    }

    #[test]
    fn payloads_round_trip_and_refuse_other_encodings() {
        for value in [
            json!(null),
            json!("hi"),
            json!([1, 2]),
            json!({"a": {"b": 1.5}}),
        ] {
            let encoded = payloads(&value);
            let back = decode_payloads(Attrs(encoded.as_object().unwrap())).unwrap();
            assert_eq!(back, value);
        }
        let two = json!({"payloads": ["a", {"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": "MQ=="}]});
        assert_eq!(
            decode_payloads(Attrs(two.as_object().unwrap())).unwrap(),
            json!(["a", 1])
        );
        let proto = json!({"payloads": [{"metadata": {"encoding": STANDARD.encode("binary/protobuf")}, "data": "AA=="}]});
        let error = decode_payloads(Attrs(proto.as_object().unwrap())).unwrap_err();
        assert!(error.contains("\"binary/protobuf\""), "{error}");
    }
}
