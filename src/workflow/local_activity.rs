//! Local activities: run by the worker inside the workflow task that asks for
//! them, with no round trip through a task queue, and recorded as a
//! `MarkerRecorded` (name [`LOCAL_ACTIVITY_MARKER_NAME`]) holding the outcome.
//! Replay returns the recorded outcome and never runs the activity again.
//!
//! # Rounds
//!
//! An activation polls the workflow until it waits. The local activities it
//! asked for meanwhile form a round: the worker runs them all, then resolves
//! them together, each with its marker command in sequence order, and polls
//! the workflow again; that may ask for another round. Replay resolves each
//! round from the task's markers at the same point, so the commands come in
//! the same order live and replayed. A local activity asked for in a task
//! whose completion has no marker for it (its future was dropped first, or
//! the worker died) stays unresolved in replay, as it was live.
//!
//! # Retries
//!
//! The worker retries a failed attempt in the same task while the backoff
//! ends inside its window (a part of the workflow task timeout). A backoff
//! that does not fits becomes a durable timer: the marker records the failure,
//! its attempt and the backoff, the future sleeps, then asks again with the
//! next attempt number (a new sequence number, so a new marker).
//!
//! | state | on | next |
//! |---|---|---|
//! | `Unrequested` | polled | `Requested` (a request for the round) |
//! | `Requested` | resolved `Completed` | done: `Ok(result)` |
//! | `Requested` | resolved `Failed` without backoff | done: `Err(Failed)` |
//! | `Requested` | resolved `Failed` with a backoff | `BackingOff` (a durable timer) |
//! | `BackingOff` | timer fired | `Unrequested` with the next attempt |

use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::context::{Slot, TimerFuture, WorkflowContext};
use super::{ActivityError, PayloadError};
use crate::activity::RetryPolicy;
use crate::types::{ActivityFailureInfo, Failure, RetryState, Timestamp};

/// The marker name of a local activity's outcome.
pub const LOCAL_ACTIVITY_MARKER_NAME: &str = "LocalActivity";

/// Longest timeout a local activity may have: it runs inside a workflow task.
pub const LOCAL_ACTIVITY_TIMEOUT_MS_MAX: u64 = 3_600_000;

/// How a local activity runs. One of the two timeouts is required.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LocalActivityOptions {
    /// Each attempt's run (also bounded by the worker's window per task).
    pub start_to_close_timeout_ms: Option<u64>,
    /// All attempts, across tasks and timers.
    pub schedule_to_close_timeout_ms: Option<u64>,
    /// Retry policy; Temporal's default if `None`.
    pub retry_policy: Option<RetryPolicy>,
}

impl LocalActivityOptions {
    /// What is wrong with these options, if anything.
    pub fn problem(&self) -> Option<String> {
        let timeouts = [
            ("start_to_close", self.start_to_close_timeout_ms),
            ("schedule_to_close", self.schedule_to_close_timeout_ms),
        ];
        if timeouts.iter().all(|(_, ms)| ms.is_none()) {
            return Some("a start_to_close or schedule_to_close timeout is required".into());
        }
        for (name, ms) in timeouts {
            match ms {
                Some(0) => return Some(format!("{name} timeout must be positive")),
                Some(ms) if ms > LOCAL_ACTIVITY_TIMEOUT_MS_MAX => {
                    return Some(format!(
                        "{name} timeout of {ms} ms is over the {LOCAL_ACTIVITY_TIMEOUT_MS_MAX} ms a local activity may take"
                    ));
                }
                _ => {}
            }
        }
        let policy = self.retry_policy.as_ref()?;
        policy.normalized().err().map(|error| error.to_string())
    }

    /// The retry policy in force, its defaults filled in.
    pub fn policy(&self) -> RetryPolicy {
        let policy = self.retry_policy.clone().unwrap_or_default();
        policy.normalized().unwrap_or(policy)
    }
}

/// A local activity the worker is asked to run in this task.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalActivityRequest {
    /// Its sequence number in the run (its marker's `seq`).
    pub seq: u64,
    pub activity_type: String,
    pub input: Value,
    /// The first attempt to run now (above 1 after a durable backoff).
    pub attempt: u32,
    pub options: LocalActivityOptions,
    /// When its first attempt was asked for (for schedule-to-close).
    pub scheduled_time: Timestamp,
}

/// How a local activity's attempts in one task ended: what its marker holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalActivityOutcome {
    pub seq: u64,
    pub activity_type: String,
    /// The last attempt run.
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Why it is not retried (set on a final failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_state: Option<RetryState>,
    /// Retried after this durable backoff (a failure the task could not wait out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
}

impl LocalActivityOutcome {
    /// The marker's details.
    pub fn to_details(&self) -> Value {
        serde_json::to_value(self).expect("an outcome always encodes")
    }

    /// The outcome a marker's details hold.
    pub fn from_details(details: &Value) -> Result<LocalActivityOutcome, String> {
        serde_json::from_value(details.clone())
            .map_err(|e| format!("a {LOCAL_ACTIVITY_MARKER_NAME} marker does not decode: {e}"))
    }
}

/// The run's local activities (part of its deterministic state).
#[derive(Default)]
pub(crate) struct LocalActivities {
    next_seq: u64,
    slots: BTreeMap<u64, Slot<LocalActivityOutcome>>,
    /// Asked for in this round, not yet handed out.
    requests: Vec<LocalActivityRequest>,
}

impl LocalActivities {
    fn request(&mut self, mut request: LocalActivityRequest) -> u64 {
        self.next_seq += 1;
        request.seq = self.next_seq;
        self.slots
            .insert(request.seq, Slot::Pending { waker: None });
        self.requests.push(request);
        self.next_seq
    }

    /// The requests of the round, in sequence order, handed out once.
    pub(crate) fn take_requests(&mut self) -> Vec<LocalActivityRequest> {
        std::mem::take(&mut self.requests)
    }

    /// Resolves request `seq`; false if it is not waiting (unknown, or done).
    pub(crate) fn resolve(&mut self, outcome: LocalActivityOutcome) -> bool {
        match self.slots.get_mut(&outcome.seq) {
            Some(slot) if slot.is_pending() => {
                slot.resolve(outcome);
                true
            }
            _ => false,
        }
    }
}

/// A local activity: configure it, then await it.
#[must_use = "a local activity runs only when its future is awaited or polled"]
pub struct LocalActivityFuture<T> {
    ctx: WorkflowContext,
    activity_type: String,
    input: Result<Value, PayloadError>,
    options: LocalActivityOptions,
    scheduled_time: Option<Timestamp>,
    state: LocalState,
    _type: PhantomData<fn() -> T>,
}

enum LocalState {
    Unrequested {
        attempt: u32,
    },
    Requested {
        seq: u64,
    },
    BackingOff {
        timer: Pin<Box<TimerFuture>>,
        next_attempt: u32,
    },
    Done,
}

impl<T> LocalActivityFuture<T> {
    pub(crate) fn new(
        ctx: WorkflowContext,
        activity_type: String,
        input: Result<Value, PayloadError>,
    ) -> Self {
        LocalActivityFuture {
            ctx,
            activity_type,
            input,
            options: LocalActivityOptions::default(),
            scheduled_time: None,
            state: LocalState::Unrequested { attempt: 1 },
            _type: PhantomData,
        }
    }

    fn unrequested(&self) {
        assert!(
            matches!(self.state, LocalState::Unrequested { attempt: 1 })
                && self.scheduled_time.is_none(),
            "local activity options must be set before it is awaited"
        );
    }

    /// Replaces all options.
    pub fn options(mut self, options: LocalActivityOptions) -> Self {
        self.unrequested();
        self.options = options;
        self
    }

    /// Sets the start-to-close timeout (each attempt).
    pub fn start_to_close(mut self, timeout: Duration) -> Self {
        self.unrequested();
        self.options.start_to_close_timeout_ms = Some(millis(timeout));
        self
    }

    /// Sets the schedule-to-close timeout (all attempts).
    pub fn schedule_to_close(mut self, timeout: Duration) -> Self {
        self.unrequested();
        self.options.schedule_to_close_timeout_ms = Some(millis(timeout));
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.unrequested();
        self.options.retry_policy = Some(policy);
        self
    }

    /// Asks for attempt `attempt` in this round; `Err` resolves the future.
    fn request(&mut self, attempt: u32) -> Result<u64, ActivityError> {
        let input = match &self.input {
            Ok(input) => input.clone(),
            Err(error) => return Err(error.clone().into()),
        };
        if let Some(reason) = self.options.problem() {
            return Err(ActivityError::InvalidOptions {
                activity_type: self.activity_type.clone(),
                reason,
            });
        }
        let mut core = self.ctx.lock();
        if core.scope_cancelled(self.ctx.scope()) {
            return Err(ActivityError::Canceled);
        }
        let scheduled_time = *self.scheduled_time.get_or_insert(core.now);
        Ok(core.local_activities.request(LocalActivityRequest {
            seq: 0,
            activity_type: self.activity_type.clone(),
            input,
            attempt,
            options: self.options.clone(),
            scheduled_time,
        }))
    }

    /// What a resolved outcome makes of the future: done, or a durable backoff.
    fn on_outcome(
        &mut self,
        outcome: LocalActivityOutcome,
    ) -> Option<Result<Value, ActivityError>> {
        if let Some(result) = outcome.result {
            return Some(Ok(result));
        }
        let failure = outcome.failure.unwrap_or_else(|| {
            Failure::new(
                "LocalActivityOutcome",
                "the marker holds neither result nor failure",
            )
        });
        if let Some(backoff_ms) = outcome.backoff_ms {
            let timer = Box::pin(self.ctx.sleep(Duration::from_millis(backoff_ms)));
            self.state = LocalState::BackingOff {
                timer,
                next_attempt: outcome.attempt + 1,
            };
            return None;
        }
        let retry_state = outcome
            .retry_state
            .unwrap_or(RetryState::NonRetryableFailure);
        Some(Err(ActivityError::Failed {
            failure,
            retry_state,
            activity: Box::new(ActivityFailureInfo {
                scheduled_event_id: 0,
                started_event_id: 0,
                identity: String::new(),
                activity_type: outcome.activity_type,
                activity_id: format!("local-{}", outcome.seq),
                retry_state,
            }),
        }))
    }

    fn poll_state(&mut self, cx: &mut Context<'_>) -> Poll<Result<Value, ActivityError>> {
        loop {
            match &mut self.state {
                LocalState::Unrequested { attempt } => {
                    let attempt = *attempt;
                    match self.request(attempt) {
                        Ok(seq) => self.state = LocalState::Requested { seq },
                        Err(error) => return Poll::Ready(Err(error)),
                    }
                }
                LocalState::Requested { seq } => {
                    let seq = *seq;
                    let polled = {
                        let mut core = self.ctx.lock();
                        let slot = core
                            .local_activities
                            .slots
                            .get_mut(&seq)
                            .expect("a requested local activity has a slot");
                        slot.poll_take(cx.waker())
                    };
                    let Poll::Ready(outcome) = polled else {
                        return Poll::Pending;
                    };
                    self.ctx.lock().local_activities.slots.remove(&seq);
                    if let Some(done) = self.on_outcome(outcome) {
                        return Poll::Ready(done);
                    }
                }
                LocalState::BackingOff {
                    timer,
                    next_attempt,
                } => {
                    let next_attempt = *next_attempt;
                    match timer.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        // A durable timer fails only by cancellation.
                        Poll::Ready(Err(_)) => return Poll::Ready(Err(ActivityError::Canceled)),
                        Poll::Ready(Ok(())) => {
                            self.state = LocalState::Unrequested {
                                attempt: next_attempt,
                            };
                        }
                    }
                }
                LocalState::Done => panic!("a local activity future was polled after it completed"),
            }
        }
    }
}

impl<T: DeserializeOwned> Future for LocalActivityFuture<T> {
    type Output = Result<T, ActivityError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = match this.poll_state(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result,
        };
        this.state = LocalState::Done;
        let what = || format!("result of local activity {}", this.activity_type);
        Poll::Ready(
            result.and_then(|value| PayloadError::decode(what, value).map_err(ActivityError::from)),
        )
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
