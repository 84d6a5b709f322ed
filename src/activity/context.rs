//! `ActivityContext`: what an activity attempt knows and can do.

use std::sync::{Arc, Mutex};

use crate::env::Watch;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::types::Timestamp;

/// Facts about the attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivityInfo {
    /// Workflow id of the run that scheduled the activity.
    pub workflow_id: String,
    /// Run id of the run that scheduled the activity.
    pub run_id: String,
    /// The activity's id within the run.
    pub activity_id: String,
    /// The activity type.
    pub activity_type: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// When the activity was scheduled (service time).
    pub scheduled_time: Timestamp,
    /// When this attempt started (service time).
    pub started_time: Timestamp,
    /// Start-to-close timeout of the attempt, if any.
    pub start_to_close_timeout_ms: Option<u64>,
    /// Heartbeat timeout, if any.
    pub heartbeat_timeout_ms: Option<u64>,
    /// Details of the last heartbeat of an earlier attempt.
    pub heartbeat_details: Option<Value>,
}

/// Why an activity is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// The workflow requested cancellation.
    CancelRequested,
    /// The run is closed (completed, terminated, timed out) or the attempt is no
    /// longer the current one: nobody will take the result.
    NotFound,
    /// The worker is shutting down.
    WorkerShutdown,
    /// The attempt's start-to-close timeout passed (on the worker's clock).
    TimedOut,
}

/// State shared between an attempt and the worker that runs it.
#[derive(Debug)]
pub(crate) struct ActivityShared {
    pub(crate) details: Mutex<Option<Value>>,
    /// Bumped by every heartbeat (the worker sends them, throttled).
    pub(crate) heartbeat_pending: Watch<()>,
    pub(crate) cancel: Watch<Option<CancelReason>>,
}

impl ActivityShared {
    pub(crate) fn new() -> Arc<ActivityShared> {
        Arc::new(ActivityShared {
            details: Mutex::new(None),
            heartbeat_pending: Watch::new(()),
            cancel: Watch::new(None),
        })
    }

    pub(crate) fn request_cancel(&self, reason: CancelReason) {
        self.cancel.modify_if(|current| {
            let first = current.is_none();
            if first {
                *current = Some(reason);
            }
            first
        });
    }
}

/// What an activity attempt is given.
#[derive(Clone, Debug)]
pub struct ActivityContext {
    info: Arc<ActivityInfo>,
    shared: Arc<ActivityShared>,
}

impl ActivityContext {
    pub(crate) fn new(info: ActivityInfo, shared: Arc<ActivityShared>) -> ActivityContext {
        ActivityContext {
            info: Arc::new(info),
            shared,
        }
    }

    /// A context for calling an activity directly in a unit test (attempt 1,
    /// no heartbeat details, never canceled).
    pub fn for_test(activity_type: &str) -> ActivityContext {
        let info = ActivityInfo {
            workflow_id: "test-workflow".to_string(),
            run_id: "test-run".to_string(),
            activity_id: "1".to_string(),
            activity_type: activity_type.to_string(),
            attempt: 1,
            scheduled_time: Timestamp(0),
            started_time: Timestamp(0),
            start_to_close_timeout_ms: None,
            heartbeat_timeout_ms: None,
            heartbeat_details: None,
        };
        ActivityContext::new(info, ActivityShared::new())
    }

    /// Facts about this attempt.
    pub fn info(&self) -> &ActivityInfo {
        &self.info
    }

    /// Attempt number, from 1.
    pub fn attempt(&self) -> u32 {
        self.info.attempt
    }

    /// The same on every attempt of this activity: `"{run_id}/{activity_id}"`.
    /// Pass it to external services so a retried attempt does not apply its
    /// effect twice.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.info.run_id, self.info.activity_id)
    }

    /// The last heartbeat details of an earlier attempt, decoded.
    pub fn heartbeat_details<T: DeserializeOwned>(&self) -> Option<T> {
        let details = self.info.heartbeat_details.clone()?;
        serde_json::from_value(details).ok()
    }

    /// Records progress. The worker sends it to the service (throttled); the
    /// service keeps the latest details for the next attempt, and answers with
    /// cancellation if it was requested.
    pub fn heartbeat<T: Serialize>(&self, details: &T) {
        let value = serde_json::to_value(details).unwrap_or(Value::Null);
        *self
            .shared
            .details
            .lock()
            .expect("heartbeat details lock is never poisoned") = Some(value);
        self.shared.heartbeat_pending.modify(|()| {});
    }

    /// Why the attempt is asked to stop, if it is.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        self.shared.cancel.get()
    }

    /// True once the attempt is asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel_reason().is_some()
    }

    /// Resolves when the attempt is asked to stop.
    pub async fn cancelled(&self) -> CancelReason {
        let mut seen = self.shared.cancel.version();
        loop {
            if let Some(reason) = self.shared.cancel.get() {
                return reason;
            }
            seen = self.shared.cancel.changed_since(seen).await;
        }
    }
}
