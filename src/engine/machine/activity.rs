//! The activity machine: one per scheduled activity, from its schedule to its
//! close. Attempts and backoffs live here, not in the history: an activity
//! leaves at most Scheduled, Started (written when the last attempt ends) and
//! one outcome.
//!
//! | phase      | input                               | next                 | events written                            |
//! |------------|-------------------------------------|----------------------|-------------------------------------------|
//! | -          | ScheduleActivityTask command        | Scheduled (1)        | ActivityTaskScheduled                     |
//! | Scheduled  | a worker polls it                   | Started              | none                                      |
//! | Scheduled  | schedule-to-start timer             | closed               | [Started], ActivityTaskTimedOut           |
//! | Started    | heartbeat                           | Started              | none (details and time kept)              |
//! | Started    | completed                           | closed               | Started, ActivityTaskCompleted            |
//! | Started    | failed, retry allowed               | BackingOff           | none                                      |
//! | Started    | failed, no retry                    | closed               | Started, ActivityTaskFailed               |
//! | Started    | start-to-close or heartbeat timer, retry allowed | BackingOff | none                              |
//! | Started    | start-to-close or heartbeat timer, no retry      | closed     | Started, ActivityTaskTimedOut     |
//! | Started    | canceled (acknowledged by worker)   | closed               | Started, ActivityTaskCanceled             |
//! | BackingOff | retry timer                         | Scheduled (attempt+1) | none                                     |
//! | any        | schedule-to-close timer             | closed               | [Started], ActivityTaskTimedOut           |
//! | Scheduled, BackingOff | RequestCancelActivityTask | closed              | CancelRequested, [Started], Canceled      |
//! | Started    | RequestCancelActivityTask           | Started, cancel requested | ActivityTaskCancelRequested          |
//!
//! Once cancel is requested, failures and timeouts are not retried.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{RunState, Step, TimerKey, error};
use crate::activity::{RetryDecision, RetryPolicy};
use crate::api::{ActivityTaskResult, ErrorCode, ServiceError, TaskToken};
use crate::history::{
    ActivityTaskCancelRequested, ActivityTaskCanceled, ActivityTaskCompleted, ActivityTaskFailed,
    ActivityTaskScheduled, ActivityTaskStarted, ActivityTaskTimedOut, EventKind,
};
use crate::types::{Failure, RetryState, TimeoutType, Timestamp};
use crate::workflow::ScheduleActivityTask;

/// Where the current attempt is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActivityPhase {
    /// On the queue since `since`.
    Scheduled { since: Timestamp },
    /// A worker runs it.
    Started {
        started_time: Timestamp,
        last_heartbeat_time: Option<Timestamp>,
        identity: String,
    },
    /// Waiting before the next attempt.
    BackingOff { until: Timestamp },
}

/// The last attempt that started (for the `ActivityTaskStarted` written at the end).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastStarted {
    pub attempt: u32,
    pub identity: String,
    /// The failure of the attempt before it.
    pub previous_failure: Option<Failure>,
    /// When it started: the `ActivityTaskStarted` event's time (none in
    /// states stored before it was kept: the event then takes its write's).
    #[serde(default)]
    pub started_time: Option<Timestamp>,
}

/// An open activity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivityState {
    pub activity_id: String,
    pub activity_type: String,
    pub task_queue: String,
    pub scheduled_event_id: u64,
    pub scheduled_time: Timestamp,
    pub schedule_to_close_timeout_ms: Option<u64>,
    pub schedule_to_start_timeout_ms: Option<u64>,
    pub start_to_close_timeout_ms: u64,
    pub heartbeat_timeout_ms: Option<u64>,
    pub retry_policy: RetryPolicy,
    pub attempt: u32,
    pub phase: ActivityPhase,
    /// The failure of the most recent failed attempt.
    pub last_failure: Option<Failure>,
    pub last_started: Option<LastStarted>,
    pub heartbeat_details: Option<Value>,
    pub cancel_requested_event_id: Option<u64>,
}

impl ActivityState {
    fn schedule_to_close_deadline(&self) -> Option<Timestamp> {
        self.schedule_to_close_timeout_ms
            .map(|ms| self.scheduled_time.plus_ms(ms))
    }

    /// The state's name for `describe`.
    pub fn phase_name(&self) -> &'static str {
        match (&self.phase, self.cancel_requested_event_id) {
            (ActivityPhase::Started { .. }, Some(_)) => "CancelRequested",
            (ActivityPhase::Scheduled { .. }, _) => "Scheduled",
            (ActivityPhase::Started { .. }, None) => "Started",
            (ActivityPhase::BackingOff { .. }, _) => "BackingOff",
        }
    }

    fn started_event(&self) -> Option<ActivityTaskStarted> {
        self.last_started.as_ref().map(|last| ActivityTaskStarted {
            scheduled_event_id: self.scheduled_event_id,
            identity: last.identity.clone(),
            attempt: last.attempt,
            last_failure: last.previous_failure.clone(),
        })
    }

    /// When the last attempt that started did.
    fn last_started_time(&self) -> Option<Timestamp> {
        self.last_started
            .as_ref()
            .and_then(|last| last.started_time)
    }

    /// The timeout that ends the activity, as a failure whose message says
    /// which limit it was, how long, and at which attempt.
    fn timeout_failure(&self, timeout_type: TimeoutType) -> Failure {
        let limit_ms = match timeout_type {
            TimeoutType::ScheduleToStart => self.schedule_to_start_timeout_ms,
            TimeoutType::StartToClose => Some(self.start_to_close_timeout_ms),
            TimeoutType::ScheduleToClose => self.schedule_to_close_timeout_ms,
            TimeoutType::Heartbeat => self.heartbeat_timeout_ms,
        };
        let limit = humantime::format_duration(std::time::Duration::from_millis(
            limit_ms.unwrap_or_default(),
        ));
        let (name, attempt) = (&self.activity_id, self.attempt);
        let what = match timeout_type {
            TimeoutType::ScheduleToStart => {
                format!(
                    "no worker took attempt {attempt} within its {limit} schedule-to-start timeout"
                )
            }
            TimeoutType::StartToClose => {
                format!("attempt {attempt} ran past its {limit} start-to-close timeout")
            }
            TimeoutType::ScheduleToClose => {
                format!(
                    "it did not complete within its {limit} schedule-to-close timeout ({attempt} attempts)"
                )
            }
            TimeoutType::Heartbeat => {
                format!("attempt {attempt} sent no heartbeat within its {limit} heartbeat timeout")
            }
        };
        let message = format!(
            "activity {name:?} ({}) timed out: {what}",
            self.activity_type
        );
        Failure::timed_out(timeout_type, message)
    }
}

pub(super) fn pending_timers(activity: &ActivityState) -> Vec<(Timestamp, TimerKey)> {
    let scheduled_event_id = activity.scheduled_event_id;
    let attempt = activity.attempt;
    let mut timers = Vec::new();
    if let Some(deadline) = activity.schedule_to_close_deadline() {
        timers.push((deadline, TimerKey::ScheduleToClose { scheduled_event_id }));
    }
    match &activity.phase {
        ActivityPhase::Scheduled { since } => {
            if let Some(timeout_ms) = activity.schedule_to_start_timeout_ms {
                timers.push((
                    since.plus_ms(timeout_ms),
                    TimerKey::ScheduleToStart {
                        scheduled_event_id,
                        attempt,
                    },
                ));
            }
        }
        ActivityPhase::Started {
            started_time,
            last_heartbeat_time,
            ..
        } => {
            let deadline = started_time.plus_ms(activity.start_to_close_timeout_ms);
            timers.push((
                deadline,
                TimerKey::StartToClose {
                    scheduled_event_id,
                    attempt,
                },
            ));
            if let Some(timeout_ms) = activity.heartbeat_timeout_ms {
                let last = last_heartbeat_time
                    .unwrap_or(*started_time)
                    .max(*started_time);
                timers.push((
                    last.plus_ms(timeout_ms),
                    TimerKey::Heartbeat {
                        scheduled_event_id,
                        attempt,
                    },
                ));
            }
        }
        ActivityPhase::BackingOff { until } => {
            timers.push((
                *until,
                TimerKey::RetryBackoff {
                    scheduled_event_id,
                    attempt,
                },
            ));
        }
    }
    timers
}

/// Records a `ScheduleActivityTask` command, with Temporal's defaults filled in:
/// start-to-close defaults to schedule-to-close; the retry policy is normalised.
pub(super) fn schedule(
    step: &mut Step<'_>,
    completed: u64,
    command: &ScheduleActivityTask,
) -> Result<(), String> {
    let activity_id = &command.activity_id;
    let what = || format!("activity {activity_id:?} ({})", command.activity_type);
    if command.activity_type.is_empty() || activity_id.is_empty() {
        return Err(format!(
            "{}: activity_id and activity_type must not be empty",
            what()
        ));
    }
    if step
        .state
        .activities
        .values()
        .any(|a| a.activity_id == *activity_id)
        || step.state.closing_activities.contains_key(activity_id)
    {
        return Err(format!("{}: an open activity already has this id", what()));
    }
    let start_to_close_ms = command
        .start_to_close_timeout_ms
        .or(command.schedule_to_close_timeout_ms);
    let Some(start_to_close_ms) = start_to_close_ms.filter(|ms| *ms > 0) else {
        return Err(format!(
            "{}: neither start_to_close nor schedule_to_close timeout is set",
            what()
        ));
    };
    let policy = command.retry_policy.clone().unwrap_or_default();
    let retry_policy = policy
        .normalized()
        .map_err(|e| format!("{}: {e}", what()))?;
    step.check_payload("activity input", &command.input)
        .map_err(|e| format!("{}: {}", what(), e.message))?;
    let task_queue = command
        .task_queue
        .clone()
        .unwrap_or_else(|| step.state.task_queue.clone());
    let scheduled_event_id = step.emit(EventKind::ActivityTaskScheduled(ActivityTaskScheduled {
        activity_id: activity_id.clone(),
        activity_type: command.activity_type.clone(),
        task_queue: task_queue.clone(),
        input: command.input.clone(),
        schedule_to_close_timeout_ms: command.schedule_to_close_timeout_ms,
        // Temporal fills both from schedule-to-close when they are not set.
        schedule_to_start_timeout_ms: command
            .schedule_to_start_timeout_ms
            .or(command.schedule_to_close_timeout_ms),
        start_to_close_timeout_ms: Some(start_to_close_ms),
        heartbeat_timeout_ms: command.heartbeat_timeout_ms,
        retry_policy: retry_policy.clone(),
        workflow_task_completed_event_id: completed,
    }));
    let activity = ActivityState {
        activity_id: activity_id.clone(),
        activity_type: command.activity_type.clone(),
        task_queue,
        scheduled_event_id,
        scheduled_time: step.now,
        schedule_to_close_timeout_ms: command.schedule_to_close_timeout_ms,
        schedule_to_start_timeout_ms: command.schedule_to_start_timeout_ms,
        start_to_close_timeout_ms: start_to_close_ms,
        heartbeat_timeout_ms: command.heartbeat_timeout_ms,
        retry_policy,
        attempt: 1,
        phase: ActivityPhase::Scheduled { since: step.now },
        last_failure: None,
        last_started: None,
        heartbeat_details: None,
        cancel_requested_event_id: None,
    };
    step.state.activities.insert(scheduled_event_id, activity);
    Ok(())
}

/// A worker takes attempt `attempt`. `None` if that attempt is not on the queue.
pub fn on_started(
    step: &mut Step<'_>,
    scheduled_event_id: u64,
    attempt: u32,
    identity: &str,
) -> Option<()> {
    let now = step.now;
    let activity = step.state.activities.get_mut(&scheduled_event_id)?;
    if activity.attempt != attempt || !matches!(activity.phase, ActivityPhase::Scheduled { .. }) {
        return None;
    }
    activity.last_started = Some(LastStarted {
        attempt,
        identity: identity.to_string(),
        previous_failure: activity.last_failure.clone(),
        started_time: Some(now),
    });
    activity.phase = ActivityPhase::Started {
        started_time: now,
        last_heartbeat_time: None,
        identity: identity.to_string(),
    };
    Some(())
}

/// The activity the token names, if that attempt is the one running.
pub fn check_token<'s>(
    state: &'s RunState,
    token: &TaskToken,
) -> Result<&'s ActivityState, ServiceError> {
    let running = state
        .activities
        .get(&token.scheduled_event_id)
        .filter(|a| a.attempt == token.attempt && matches!(a.phase, ActivityPhase::Started { .. }));
    running.ok_or_else(|| {
        let message = format!(
            "activity task {}/{} attempt {} is not running (completed, timed out, retried, or the run closed)",
            token.run_id, token.scheduled_event_id, token.attempt
        );
        error(ErrorCode::TaskNotFound, message)
    })
}

/// Counts loading a run from storage as a heartbeat of each attempt that
/// runs with a heartbeat timeout. Heartbeats are held in the memory of the
/// member that received them, not written, so whoever loads the run (a
/// member that gained its shard, a restarted server, a cache refill) cannot
/// know the last one; timing the attempt out at once would fail a worker
/// that is heartbeating. A worker that is gone still times out, one
/// heartbeat timeout after the load.
pub fn count_load_as_heartbeat(state: &mut RunState, now: Timestamp) {
    for activity in state.activities.values_mut() {
        if activity.heartbeat_timeout_ms.is_none() {
            continue;
        }
        if let ActivityPhase::Started {
            last_heartbeat_time,
            ..
        } = &mut activity.phase
        {
            let last = last_heartbeat_time.map_or(now, |last| last.max(now));
            *last_heartbeat_time = Some(last);
        }
    }
}

/// Records a heartbeat; returns whether cancellation was requested.
pub fn on_heartbeat(
    step: &mut Step<'_>,
    token: &TaskToken,
    details: Option<Value>,
) -> Result<bool, ServiceError> {
    check_token(step.state, token)?;
    if let Some(details) = &details {
        step.check_payload("heartbeat details", details)?;
    }
    let now = step.now;
    let activity = step
        .state
        .activities
        .get_mut(&token.scheduled_event_id)
        .expect("checked");
    if let ActivityPhase::Started {
        last_heartbeat_time,
        ..
    } = &mut activity.phase
    {
        *last_heartbeat_time = Some(now);
    }
    if details.is_some() {
        activity.heartbeat_details = details;
    }
    Ok(activity.cancel_requested_event_id.is_some())
}

/// A result's payloads fit the limits (before any of it reaches the state).
fn check_result_payloads(step: &Step<'_>, result: &ActivityTaskResult) -> Result<(), ServiceError> {
    match result {
        ActivityTaskResult::Completed(value) => step.check_payload("activity result", value),
        ActivityTaskResult::Failed(failure) => step.check_failure("activity failure", failure),
        ActivityTaskResult::Canceled(Some(details)) => {
            step.check_payload("cancel details", details)
        }
        ActivityTaskResult::Canceled(None) => Ok(()),
    }
}

/// Failure type of an attempt whose result passed the payload limits.
pub const RESULT_OVER_LIMIT: &str = "PayloadTooLarge";

/// The result, or, if its payloads pass the limits, a failure of the attempt
/// that says so and is not retried (as Temporal's frontend does): the same
/// code would return the same payload, and refusing it would leave the
/// attempt to time out with the reason lost.
fn within_limits(step: &Step<'_>, result: ActivityTaskResult) -> ActivityTaskResult {
    match check_result_payloads(step, &result) {
        Ok(()) => result,
        Err(error) => ActivityTaskResult::Failed(Failure {
            non_retryable: true,
            ..Failure::new(RESULT_OVER_LIMIT, error.message)
        }),
    }
}

/// The worker reports how the attempt ended.
pub fn on_result(
    step: &mut Step<'_>,
    token: &TaskToken,
    result: ActivityTaskResult,
    identity: &str,
) -> Result<(), ServiceError> {
    let activity = check_token(step.state, token)?.clone();
    let scheduled_event_id = activity.scheduled_event_id;
    match within_limits(step, result) {
        ActivityTaskResult::Completed(result) => {
            let outcome = EventKind::ActivityTaskCompleted(ActivityTaskCompleted {
                scheduled_event_id,
                started_event_id: 0,
                result,
                identity: identity.to_string(),
            });
            close(step, &activity, outcome);
        }
        ActivityTaskResult::Failed(failure) => on_attempt_failed(step, &activity, failure, None),
        ActivityTaskResult::Canceled(details) if activity.cancel_requested_event_id.is_some() => {
            close_canceled(step, &activity, details, identity);
        }
        ActivityTaskResult::Canceled(_) => {
            let failure = Failure::new(
                "Canceled",
                "the activity reported cancellation nobody requested",
            );
            on_attempt_failed(step, &activity, failure, None);
        }
    }
    Ok(())
}

/// An attempt ended badly (failure, or a start-to-close / heartbeat timeout):
/// retry, or close the activity.
fn on_attempt_failed(
    step: &mut Step<'_>,
    activity: &ActivityState,
    failure: Failure,
    timeout: Option<TimeoutType>,
) {
    let remaining_ms = activity
        .schedule_to_close_deadline()
        .map(|deadline| deadline.millis_since(step.now));
    let decision = if activity.cancel_requested_event_id.is_some() {
        RetryDecision::Stop(RetryState::CancelRequested)
    } else {
        activity
            .retry_policy
            .decide(activity.attempt, &failure, remaining_ms)
    };
    match decision {
        RetryDecision::Retry { backoff_ms } => {
            let state = step
                .state
                .activities
                .get_mut(&activity.scheduled_event_id)
                .expect("open activity");
            state.last_failure = Some(failure);
            state.phase = ActivityPhase::BackingOff {
                until: step.now.plus_ms(backoff_ms),
            };
        }
        RetryDecision::Stop(retry_state) => {
            let scheduled_event_id = activity.scheduled_event_id;
            let outcome = match timeout {
                Some(timeout_type) => EventKind::ActivityTaskTimedOut(ActivityTaskTimedOut {
                    scheduled_event_id,
                    started_event_id: None,
                    timeout_type,
                    retry_state,
                    last_failure: activity.last_failure.clone(),
                    last_heartbeat_details: activity.heartbeat_details.clone(),
                    failure: Some(activity.timeout_failure(timeout_type)),
                }),
                None => EventKind::ActivityTaskFailed(ActivityTaskFailed {
                    scheduled_event_id,
                    started_event_id: 0,
                    failure,
                    retry_state,
                    identity: identity_of(activity),
                }),
            };
            close(step, activity, outcome);
        }
    }
}

fn identity_of(activity: &ActivityState) -> String {
    activity
        .last_started
        .as_ref()
        .map(|l| l.identity.clone())
        .unwrap_or_default()
}

/// Removes the activity and delivers its Started (if any) and outcome.
fn close(step: &mut Step<'_>, activity: &ActivityState, outcome: EventKind) {
    let removed = step.state.activities.remove(&activity.scheduled_event_id);
    assert!(removed.is_some(), "only open activities close");
    if step.state.workflow_task.is_started() {
        let closing = super::ClosingActivity {
            scheduled_event_id: activity.scheduled_event_id,
            cancel_requested: activity.cancel_requested_event_id.is_some(),
            started_time: activity.last_started_time(),
        };
        step.state
            .closing_activities
            .insert(activity.activity_id.clone(), closing);
    }
    if let Some(started_time) = activity.last_started_time() {
        step.activity_started_at(activity.scheduled_event_id, started_time);
    }
    step.deliver_activity_close(activity.started_event(), outcome);
}

fn close_canceled(
    step: &mut Step<'_>,
    activity: &ActivityState,
    details: Option<Value>,
    identity: &str,
) {
    let cancel_requested = activity
        .cancel_requested_event_id
        .expect("cancel was requested");
    let outcome = EventKind::ActivityTaskCanceled(ActivityTaskCanceled {
        scheduled_event_id: activity.scheduled_event_id,
        started_event_id: None,
        latest_cancel_requested_event_id: cancel_requested,
        details,
        identity: identity.to_string(),
    });
    close(step, activity, outcome);
}

/// An activity timer fired. Returns false if it no longer applies.
pub fn on_timer(step: &mut Step<'_>, key: &TimerKey) -> bool {
    let scheduled_event_id = match key {
        TimerKey::ScheduleToStart {
            scheduled_event_id, ..
        }
        | TimerKey::StartToClose {
            scheduled_event_id, ..
        }
        | TimerKey::Heartbeat {
            scheduled_event_id, ..
        }
        | TimerKey::ScheduleToClose { scheduled_event_id }
        | TimerKey::RetryBackoff {
            scheduled_event_id, ..
        } => *scheduled_event_id,
        _ => return false,
    };
    let Some(activity) = step.state.activities.get(&scheduled_event_id).cloned() else {
        return false;
    };
    let due = pending_timers(&activity)
        .iter()
        .any(|(deadline, k)| k == key && *deadline <= step.now);
    if !due {
        return false;
    }
    match key {
        TimerKey::ScheduleToStart { .. } | TimerKey::ScheduleToClose { .. } => {
            let timeout_type = match key {
                TimerKey::ScheduleToStart { .. } => TimeoutType::ScheduleToStart,
                _ => TimeoutType::ScheduleToClose,
            };
            let outcome = EventKind::ActivityTaskTimedOut(ActivityTaskTimedOut {
                scheduled_event_id,
                started_event_id: None,
                timeout_type,
                retry_state: RetryState::Timeout,
                last_failure: activity.last_failure.clone(),
                last_heartbeat_details: activity.heartbeat_details.clone(),
                failure: Some(activity.timeout_failure(timeout_type)),
            });
            close(step, &activity, outcome);
        }
        TimerKey::StartToClose { .. } => {
            on_attempt_failed(
                step,
                &activity,
                Failure::timeout(TimeoutType::StartToClose),
                Some(TimeoutType::StartToClose),
            );
        }
        TimerKey::Heartbeat { .. } => {
            on_attempt_failed(
                step,
                &activity,
                Failure::timeout(TimeoutType::Heartbeat),
                Some(TimeoutType::Heartbeat),
            );
        }
        TimerKey::RetryBackoff { .. } => {
            let now = step.now;
            let state = step
                .state
                .activities
                .get_mut(&scheduled_event_id)
                .expect("open activity");
            state.attempt += 1;
            state.phase = ActivityPhase::Scheduled { since: now };
        }
        _ => unreachable!("activity timers only"),
    }
    true
}

/// Records a `RequestCancelActivityTask` command. An activity no worker runs is
/// canceled at once (its `ActivityTaskCanceled` goes to `follow_ups`, written
/// after the task's command events); a running one learns it from its next
/// heartbeat.
pub(super) fn request_cancel(
    step: &mut Step<'_>,
    completed: u64,
    activity_id: &str,
    follow_ups: &mut Vec<EventKind>,
) -> Result<(), String> {
    let open = step
        .state
        .activities
        .values()
        .find(|a| a.activity_id == activity_id)
        .cloned();
    let already = || {
        format!("RequestCancelActivityTask: activity {activity_id:?} was already asked to cancel")
    };
    let scheduled_event_id = match &open {
        Some(activity) if activity.cancel_requested_event_id.is_some() => return Err(already()),
        Some(activity) => activity.scheduled_event_id,
        None => {
            let missing =
                || format!("RequestCancelActivityTask: no open activity has id {activity_id:?}");
            let closing = step
                .state
                .closing_activities
                .get_mut(activity_id)
                .ok_or_else(missing)?;
            if closing.cancel_requested {
                return Err(already());
            }
            closing.cancel_requested = true;
            closing.scheduled_event_id
        }
    };
    let cancel_requested = step.emit(EventKind::ActivityTaskCancelRequested(
        ActivityTaskCancelRequested {
            scheduled_event_id,
            workflow_task_completed_event_id: completed,
        },
    ));
    let Some(activity) = open else { return Ok(()) };
    if matches!(activity.phase, ActivityPhase::Started { .. }) {
        let state = step
            .state
            .activities
            .get_mut(&scheduled_event_id)
            .expect("open activity");
        state.cancel_requested_event_id = Some(cancel_requested);
        return Ok(());
    }
    step.state.activities.remove(&scheduled_event_id);
    if let Some(started) = activity.started_event() {
        if let Some(started_time) = activity.last_started_time() {
            step.activity_started_at(scheduled_event_id, started_time);
        }
        follow_ups.push(EventKind::ActivityTaskStarted(started));
    }
    follow_ups.push(EventKind::ActivityTaskCanceled(ActivityTaskCanceled {
        scheduled_event_id,
        started_event_id: None,
        latest_cancel_requested_event_id: cancel_requested,
        details: None,
        identity: String::new(),
    }));
    Ok(())
}
