//! Options of a scheduled activity.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::RetryPolicy;

/// What happens to an activity when the workflow cancels it (or drops its future).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActivityCancellationType {
    /// Ask the service to cancel it and resolve at once as canceled.
    #[default]
    TryCancel,
    /// Ask the service to cancel it and wait for the activity to acknowledge
    /// (`ActivityTaskCanceled`) or finish.
    WaitCancellationCompleted,
    /// Do not ask the service; resolve at once as canceled.
    Abandon,
}

/// Options of an activity: queue, the four timeouts, retry policy, cancellation.
/// `None` leaves the service's rule in place (see `ActivityTaskScheduled`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ActivityOptions {
    /// Queue to dispatch to; the workflow's own queue if `None`.
    pub task_queue: Option<String>,
    /// Whole activity, retries included.
    pub schedule_to_close_timeout_ms: Option<u64>,
    /// Each attempt's wait in the queue (never retried).
    pub schedule_to_start_timeout_ms: Option<u64>,
    /// Each attempt's run (retried).
    pub start_to_close_timeout_ms: Option<u64>,
    /// Maximum gap between heartbeats (retried).
    pub heartbeat_timeout_ms: Option<u64>,
    /// Retry policy; Temporal's default if `None`.
    pub retry_policy: Option<RetryPolicy>,
    /// What cancellation does.
    pub cancellation_type: ActivityCancellationType,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl ActivityOptions {
    /// Sets the task queue.
    pub fn task_queue(mut self, task_queue: impl Into<String>) -> Self {
        self.task_queue = Some(task_queue.into());
        self
    }

    /// Sets the schedule-to-close timeout.
    pub fn schedule_to_close(mut self, timeout: Duration) -> Self {
        self.schedule_to_close_timeout_ms = Some(millis(timeout));
        self
    }

    /// Sets the schedule-to-start timeout.
    pub fn schedule_to_start(mut self, timeout: Duration) -> Self {
        self.schedule_to_start_timeout_ms = Some(millis(timeout));
        self
    }

    /// Sets the start-to-close timeout.
    pub fn start_to_close(mut self, timeout: Duration) -> Self {
        self.start_to_close_timeout_ms = Some(millis(timeout));
        self
    }

    /// Sets the heartbeat timeout.
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.heartbeat_timeout_ms = Some(millis(timeout));
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry_policy = Some(policy);
        self
    }

    /// Sets the cancellation type.
    pub fn cancellation(mut self, cancellation_type: ActivityCancellationType) -> Self {
        self.cancellation_type = cancellation_type;
        self
    }

    /// Why these options cannot schedule an activity, if they cannot:
    /// an activity needs a start-to-close or a schedule-to-close timeout.
    pub fn problem(&self) -> Option<String> {
        if self.start_to_close_timeout_ms.is_none() && self.schedule_to_close_timeout_ms.is_none() {
            return Some(
                "neither start_to_close nor schedule_to_close timeout is set \
                 (set one on the call or in the activity's options())"
                    .to_string(),
            );
        }
        let zero = |t: Option<u64>| t == Some(0);
        if zero(self.start_to_close_timeout_ms) || zero(self.schedule_to_close_timeout_ms) {
            return Some("timeouts must be at least 1 ms".to_string());
        }
        if let Some(policy) = &self.retry_policy
            && let Err(error) = policy.normalized()
        {
            return Some(error.to_string());
        }
        None
    }
}
