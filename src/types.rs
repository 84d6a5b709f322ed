//! The small shared vocabulary: timestamps, failures, timeout kinds, retry states.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A point in time, in milliseconds since the Unix epoch, as written by the service.
///
/// Serialized as RFC 3339 with milliseconds (`2024-01-01T00:00:05.000Z`), so
/// histories read as times.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// This time plus a number of milliseconds, saturating at `TIMESTAMP_MAX`
    /// (the end of year 9999): a deadline that far is never reached, and every
    /// time the engine makes can be written and read back.
    pub fn plus_ms(self, duration_ms: u64) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(duration_ms)
                .min(TIMESTAMP_MAX.0.max(self.0)),
        )
    }

    /// Milliseconds from `earlier` to `self`, or 0 if `earlier` is later.
    pub fn millis_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The same instant as a `SystemTime`.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// A `SystemTime` rounded down to milliseconds (times before 1970 become 0).
    pub fn from_system_time(time: SystemTime) -> Timestamp {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 (UTC, milliseconds); a time past year 9999, which RFC 3339
    /// cannot write, shows as its milliseconds since 1970.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self > TIMESTAMP_MAX {
            return write!(f, "{} ms after 1970 (past year 9999)", self.0);
        }
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(self.to_system_time())
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if *self > TIMESTAMP_MAX {
            let message = format!("time {} ms after 1970 is past year 9999", self.0);
            return Err(serde::ser::Error::custom(message));
        }
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let time = humantime::parse_rfc3339_weak(&text).map_err(|error| {
            serde::de::Error::custom(format!("bad timestamp {text:?}: {error}"))
        })?;
        Ok(Timestamp::from_system_time(time))
    }
}

/// Which timeout fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TimeoutType {
    /// The task waited in its queue too long (never retried).
    ScheduleToStart,
    /// One attempt ran too long (retried).
    StartToClose,
    /// The whole activity, all attempts included, ran too long.
    ScheduleToClose,
    /// The activity stopped heartbeating (retried).
    Heartbeat,
}

impl fmt::Display for TimeoutType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            TimeoutType::ScheduleToStart => "schedule-to-start",
            TimeoutType::StartToClose => "start-to-close",
            TimeoutType::ScheduleToClose => "schedule-to-close",
            TimeoutType::Heartbeat => "heartbeat",
        };
        f.write_str(name)
    }
}

/// Why an activity (or run) stopped being retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RetryState {
    /// The failure was not retryable (its type is listed, or it said so).
    NonRetryableFailure,
    /// The schedule-to-close timeout leaves no room for another attempt.
    Timeout,
    /// `maximum_attempts` were made.
    MaximumAttemptsReached,
    /// The activity was being canceled.
    CancelRequested,
    /// Nothing retries this kind of outcome (for example a run's timeout).
    RetryPolicyNotSet,
    /// The run failed and its retry policy started the next attempt.
    InProgress,
}

/// A failure, as recorded in histories and carried between workers and the service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// What went wrong, for people.
    pub message: String,
    /// The error's type name, matched exactly against `non_retryable_error_types`.
    #[serde(rename = "type")]
    pub failure_type: String,
    /// The code said: do not retry this.
    pub non_retryable: bool,
    /// Application details, if any.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::types::some_value"
    )]
    pub details: Option<Value>,
    /// The failure that caused this one (Temporal's `cause`): an activity
    /// failure's cause is the activity's own failure, a timeout's the last
    /// attempt's. At most [`FAILURE_CAUSES_MAX`] deep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Box<Failure>>,
    /// What failed, when the SDK or the service made the failure (Temporal's
    /// `failure_info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<FailureInfo>>,
}

/// A failure's chain of causes is this long at most (the service refuses
/// longer ones from workers).
pub const FAILURE_CAUSES_MAX: usize = 8;

/// What a failure made by the SDK or the service is about.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FailureInfo {
    /// An activity did not complete (Temporal's `ActivityFailureInfo`).
    #[serde(rename = "activity_failure_info")]
    Activity(ActivityFailureInfo),
    /// A timeout fired (Temporal's `TimeoutFailureInfo`).
    #[serde(rename = "timeout_failure_info")]
    Timeout {
        /// Which timeout.
        timeout_type: TimeoutType,
    },
    /// A child workflow did not complete (Temporal's
    /// `ChildWorkflowExecutionFailureInfo`).
    #[serde(rename = "child_workflow_execution_failure_info")]
    ChildWorkflow(ChildWorkflowFailureInfo),
}

/// The child workflow a child workflow failure is about, as Temporal
/// records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildWorkflowFailureInfo {
    /// The child's workflow id.
    pub workflow_id: String,
    /// The child's run that closed its chain.
    pub run_id: String,
    /// The child's workflow type.
    pub workflow_type: String,
    /// The parent's `StartChildWorkflowExecutionInitiated` event.
    pub initiated_event_id: u64,
    /// The parent's `ChildWorkflowExecutionStarted` event.
    pub started_event_id: u64,
    /// Why it was not retried (Retrace has no workflow retries yet:
    /// `RetryPolicyNotSet`).
    pub retry_state: RetryState,
}

/// The activity an activity failure is about, as Temporal records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityFailureInfo {
    /// Its `ActivityTaskScheduled` event.
    pub scheduled_event_id: u64,
    /// Its `ActivityTaskStarted` event, 0 if no attempt started.
    pub started_event_id: u64,
    /// The worker of the last attempt, empty if none.
    pub identity: String,
    /// The activity type.
    pub activity_type: String,
    /// The activity id.
    pub activity_id: String,
    /// Why it was not retried.
    pub retry_state: RetryState,
}

impl Failure {
    /// A retryable failure of the given type.
    pub fn new(failure_type: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            failure_type: failure_type.into(),
            non_retryable: false,
            details: None,
            cause: None,
            info: None,
        }
    }

    /// A failure recording that a timeout fired.
    pub fn timeout(timeout_type: TimeoutType) -> Failure {
        Failure::new("Timeout", format!("activity {timeout_type} timeout"))
    }

    /// A non-retryable failure saying that a timeout of `timeout_type` fired.
    pub fn timed_out(timeout_type: TimeoutType, message: impl Into<String>) -> Failure {
        Failure {
            non_retryable: true,
            info: Some(Box::new(FailureInfo::Timeout { timeout_type })),
            ..Failure::new("TimeoutFailure", message)
        }
    }

    /// This failure with `cause` as its cause.
    pub fn with_cause(mut self, cause: Option<Failure>) -> Failure {
        self.cause = cause.map(Box::new);
        self
    }

    /// This failure with its chain of causes cut to `causes_max` failures
    /// (itself included), dropping the innermost.
    pub fn with_causes_at_most(mut self, causes_max: usize) -> Failure {
        assert!(causes_max >= 1, "a failure is its own first cause");
        if self.chain().count() <= causes_max {
            return self;
        }
        let mut link = &mut self;
        for _ in 1..causes_max {
            link = link.cause.as_deref_mut().expect("the chain is longer");
        }
        link.cause = None;
        assert_eq!(self.chain().count(), causes_max);
        self
    }

    /// This failure and its causes, outermost first.
    pub fn chain(&self) -> impl Iterator<Item = &Failure> {
        std::iter::successors(Some(self), |failure| failure.cause.as_deref())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.failure_type, self.message)
    }
}

/// Deserializes a present field as `Some(value)`, `null` included, so
/// `Some(Value::Null)` survives a round trip (serde maps it to `None` otherwise).
/// Pair with `#[serde(default, skip_serializing_if = "Option::is_none")]`.
pub fn some_value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// The latest time a history may hold: 9999-12-31T23:59:59.999Z (RFC 3339 has four-digit years).
pub const TIMESTAMP_MAX: Timestamp = Timestamp(253_402_300_799_999);

/// Stable 64-bit FNV-1a hash, for digests and input hashes that must not change
/// between builds or platforms.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hasher = Fnv1a64::new();
    hasher.update(bytes);
    hasher.finish()
}

/// FNV-1a fed in pieces: the hash of the pieces' concatenation, as
/// `fnv1a64` gives, without building it. As an `io::Write` it hashes what a
/// serializer writes (a value's JSON hashed without a `String` of it).
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a64(u64);

impl Fnv1a64 {
    pub fn new() -> Fnv1a64 {
        Fnv1a64(0xcbf2_9ce4_8422_2325)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a64 {
    fn default() -> Fnv1a64 {
        Fnv1a64::new()
    }
}

impl std::io::Write for Fnv1a64 {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Hash of a JSON value's canonical encoding (object keys sorted).
pub fn payload_hash(value: &Value) -> u64 {
    let mut hasher = Fnv1a64::new();
    serde_json::to_writer(&mut hasher, value).expect("a serde_json::Value always encodes");
    hasher.finish()
}

/// What a closed workflow id may be reused for (Temporal's id reuse policy).
/// A running workflow id is always refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdReusePolicy {
    /// A new run may start once the previous one closed, however it closed.
    #[default]
    AllowDuplicate,
    /// Only if the previous run did not complete successfully.
    AllowDuplicateFailedOnly,
    /// Never reuse the id.
    RejectDuplicate,
}

/// What happens to a child workflow when its parent's run closes
/// (Temporal's parent close policy), however it closes: continue-as-new
/// included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParentClosePolicy {
    /// The child is terminated.
    #[default]
    Terminate,
    /// The child is asked to cancel.
    RequestCancel,
    /// The child goes on alone.
    Abandon,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips_through_rfc3339() {
        let time = Timestamp(1_700_000_000_123);
        let text = serde_json::to_string(&time).unwrap();
        assert_eq!(text, "\"2023-11-14T22:13:20.123Z\"");
        let back: Timestamp = serde_json::from_str(&text).unwrap();
        assert_eq!(back, time);
    }

    #[test]
    fn timestamp_rejects_garbage_with_the_text_in_the_error() {
        let error = serde_json::from_str::<Timestamp>("\"yesterday\"").unwrap_err();
        assert!(error.to_string().contains("yesterday"), "{error}");
    }

    #[test]
    fn deadlines_saturate_at_year_9999_and_later_times_never_panic() {
        let far = Timestamp(1_700_000_000_000).plus_ms(u64::MAX);
        assert_eq!(
            far, TIMESTAMP_MAX,
            "deadlines saturate at the end of year 9999"
        );
        assert!(serde_json::to_string(&far).is_ok());
        let past = Timestamp(u64::MAX);
        assert!(past.to_string().contains("past year 9999"));
        let error = serde_json::to_string(&past).unwrap_err();
        assert!(error.to_string().contains("past year 9999"), "{error}");
    }

    #[test]
    fn payload_hash_ignores_key_order() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":2}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":2,"a":1}"#).unwrap();
        assert_eq!(payload_hash(&a), payload_hash(&b));
        assert_ne!(
            payload_hash(&a),
            payload_hash(&serde_json::json!({"a": 2, "b": 2}))
        );
    }
}
