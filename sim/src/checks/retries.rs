//! Retries follow the activity's retry policy.
//!
//! | check                 | from                                  | what must hold                                    |
//! |-----------------------|---------------------------------------|---------------------------------------------------|
//! | attempt count         | `ActivityTaskStarted.attempt`, the attempts workers ran | never more than `maximum_attempts` (0: unbounded) |
//! | non-retryable stops   | `ActivityTaskStarted.last_failure` (the attempt before's failure) | no attempt follows a non-retryable failure |
//! | retry state           | `ActivityTaskFailed`                  | a non-retryable failure says so; a retryable one before the last attempt is not "maximum attempts reached" |
//! | backoff               | the start times workers recorded      | attempt n+1 starts no sooner than backoff(n) after attempt n started |
//!
//! The backoff is computed here from the policy's fields (initial interval x
//! coefficient^(n-1), capped by the maximum interval, 100 x initial if unset),
//! not with the engine's own function.

use std::collections::BTreeMap;

use retrace::activity::RetryPolicy;
use retrace::history::{EventKind, History};
use retrace::types::{Failure, RetryState};

use super::{ActivityView, Violation, activities};
use crate::world::cluster::{AttemptKey, AttemptSeen};

/// The policy's backoff after failed attempt `attempt`, by its definition.
pub fn expected_backoff_ms(policy: &RetryPolicy, attempt: u32) -> u64 {
    assert!(attempt >= 1);
    let cap_ms = match policy.maximum_interval_ms {
        0 => policy.initial_interval_ms.saturating_mul(100),
        ms => ms,
    };
    let mut backoff_ms = policy.initial_interval_ms as f64;
    for _ in 1..attempt.min(64) {
        backoff_ms *= policy.backoff_coefficient;
    }
    let backoff_ms = if backoff_ms.is_finite() && backoff_ms < cap_ms as f64 {
        backoff_ms as u64
    } else {
        cap_ms
    };
    assert!(backoff_ms <= cap_ms);
    backoff_ms
}

fn non_retryable(policy: &RetryPolicy, failure: &Failure) -> bool {
    failure.non_retryable
        || policy
            .non_retryable_error_types
            .contains(&failure.failure_type)
}

/// Every activity's attempts keep its retry policy.
pub fn check_retries(
    history: &History,
    attempts: &BTreeMap<AttemptKey, AttemptSeen>,
    early_ms: u64,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let run_id = history.run_id().to_string();
    for view in activities(history) {
        let scheduled = view.scheduled.event_id;
        let ran: Vec<(u32, &AttemptSeen)> = attempts
            .range((run_id.clone(), scheduled, 0)..=(run_id.clone(), scheduled, u32::MAX))
            .map(|((_, _, attempt), seen)| (*attempt, seen))
            .collect();
        let found = [
            attempt_count(&view, &ran),
            retried_non_retryable(&view),
            retry_state(&view),
            backoff(&view, &ran, early_ms),
        ];
        for (message, at) in found.into_iter().flatten() {
            let message = format!("activity {:?} {message}", view.attrs.activity_id);
            violations.push(Violation::new("retries", message).at(history, Some(at)));
        }
    }
    violations
}

/// A violation's message and the event it shows at.
type Found = Option<(String, u64)>;

fn attempt_count(view: &ActivityView<'_>, ran: &[(u32, &AttemptSeen)]) -> Found {
    let maximum = view.attrs.retry_policy.maximum_attempts;
    let most = ran
        .iter()
        .map(|(attempt, _)| *attempt)
        .chain(view.started.map(|(_, s)| s.attempt))
        .max()
        .unwrap_or(0);
    (maximum != 0 && most > maximum).then(|| {
        let message = format!("ran attempt {most}, more than its maximum of {maximum}");
        (message, view.scheduled.event_id)
    })
}

fn retried_non_retryable(view: &ActivityView<'_>) -> Found {
    let (started_event, started) = view.started?;
    let previous = started.last_failure.as_ref()?;
    non_retryable(&view.attrs.retry_policy, previous).then(|| {
        let message = format!(
            "ran attempt {} after attempt {} failed with non-retryable {previous}",
            started.attempt,
            started.attempt - 1
        );
        (message, started_event.event_id)
    })
}

fn retry_state(view: &ActivityView<'_>) -> Found {
    let (close, (_, started)) = (view.close?, view.started?);
    let EventKind::ActivityTaskFailed(failed) = &close.kind else {
        return None;
    };
    let policy = &view.attrs.retry_policy;
    let stops = non_retryable(policy, &failed.failure);
    // A cancel request stops retries before the failure is looked at.
    let stopped_as = [RetryState::NonRetryableFailure, RetryState::CancelRequested];
    if stops && !stopped_as.contains(&failed.retry_state) {
        let message = format!(
            "failed with non-retryable {}, recorded as {:?}",
            failed.failure, failed.retry_state
        );
        return Some((message, close.event_id));
    }
    let below_max = policy.maximum_attempts == 0 || started.attempt < policy.maximum_attempts;
    let claims_max = failed.retry_state == RetryState::MaximumAttemptsReached;
    (!stops && below_max && claims_max).then(|| {
        let message = format!(
            "stopped at attempt {} of {} as if it had reached its maximum",
            started.attempt, policy.maximum_attempts
        );
        (message, close.event_id)
    })
}

/// Attempt k+1 starts a backoff after attempt k; in a cluster the two may
/// be started by members whose clocks read up to `early_ms` apart.
fn backoff(view: &ActivityView<'_>, ran: &[(u32, &AttemptSeen)], early_ms: u64) -> Found {
    ran.windows(2).find_map(|pair| {
        let ((attempt, first), (next, second)) = (pair[0], pair[1]);
        let backoff_ms = expected_backoff_ms(&view.attrs.retry_policy, attempt);
        let hurried =
            second.started_time.plus_ms(early_ms) < first.started_time.plus_ms(backoff_ms);
        (next == attempt + 1 && hurried).then(|| {
            let gap_ms = second.started_time.millis_since(first.started_time);
            let message = format!(
                "attempt {next} started {gap_ms} ms after attempt {attempt} started, within the {backoff_ms} ms backoff"
            );
            (message, view.scheduled.event_id)
        })
    })
}

#[cfg(test)]
mod tests {
    use retrace::history::{ActivityTaskScheduled, ActivityTaskStarted, HistoryBuilder};
    use retrace::types::Timestamp;
    use serde_json::json;

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial_interval_ms: 1_000,
            backoff_coefficient: 2.0,
            maximum_interval_ms: 3_000,
            maximum_attempts: 3,
            non_retryable_error_types: vec!["Fatal".into()],
        }
    }

    /// An activity with `policy()` whose last attempt `attempt` failed with
    /// `failure` after the one before failed with `previous`.
    fn failed_at(
        attempt: u32,
        previous: Option<Failure>,
        failure: Failure,
        retry_state: RetryState,
    ) -> History {
        let mut builder = HistoryBuilder::for_run("wf", "run-1", "pay", json!(null));
        let completed = builder.add_full_workflow_task();
        let scheduled = builder.add(EventKind::ActivityTaskScheduled(ActivityTaskScheduled {
            activity_id: "1".into(),
            activity_type: "charge".into(),
            task_queue: "default".into(),
            input: json!(null),
            schedule_to_close_timeout_ms: None,
            schedule_to_start_timeout_ms: None,
            start_to_close_timeout_ms: Some(5_000),
            heartbeat_timeout_ms: None,
            retry_policy: policy(),
            workflow_task_completed_event_id: completed,
        }));
        builder.advance_ms(10_000);
        let started = builder.add(EventKind::ActivityTaskStarted(ActivityTaskStarted {
            scheduled_event_id: scheduled,
            identity: "worker-0".into(),
            attempt,
            last_failure: previous,
        }));
        builder.add_activity_failed(scheduled, started, failure, retry_state);
        builder.build()
    }

    fn invariants(violations: &[Violation]) -> Vec<&'static str> {
        violations.iter().map(|v| v.invariant).collect()
    }

    #[test]
    fn the_backoff_follows_the_policy_definition() {
        let backoffs: Vec<u64> = (1..=4).map(|a| expected_backoff_ms(&policy(), a)).collect();
        assert_eq!(backoffs, [1_000, 2_000, 3_000, 3_000]);
    }

    #[test]
    fn attempts_within_the_policy_pass() {
        let flaky = Failure::new("Flaky", "again");
        let history = failed_at(
            3,
            Some(flaky.clone()),
            flaky,
            RetryState::MaximumAttemptsReached,
        );
        assert!(check_retries(&history, &BTreeMap::new(), 0).is_empty());
    }

    #[test]
    fn an_attempt_beyond_maximum_attempts_is_caught() {
        let flaky = Failure::new("Flaky", "again");
        let history = failed_at(
            4,
            Some(flaky.clone()),
            flaky,
            RetryState::MaximumAttemptsReached,
        );
        let violations = check_retries(&history, &BTreeMap::new(), 0);
        assert_eq!(invariants(&violations), ["retries"]);
        assert!(violations[0].message.contains("more than its maximum of 3"));
    }

    #[test]
    fn a_retry_after_a_non_retryable_failure_is_caught() {
        let history = failed_at(
            2,
            Some(Failure::new("Fatal", "no")),
            Failure::new("Flaky", "again"),
            RetryState::Timeout,
        );
        let violations = check_retries(&history, &BTreeMap::new(), 0);
        assert_eq!(invariants(&violations), ["retries"], "{violations:?}");
        assert!(violations[0].message.contains("non-retryable"));
    }

    #[test]
    fn a_retry_state_that_contradicts_the_policy_is_caught() {
        let early_stop = failed_at(
            1,
            None,
            Failure::new("Flaky", "again"),
            RetryState::MaximumAttemptsReached,
        );
        assert_eq!(
            invariants(&check_retries(&early_stop, &BTreeMap::new(), 0)),
            ["retries"]
        );
        let fatal_as_max = failed_at(
            1,
            None,
            Failure::new("Fatal", "no"),
            RetryState::MaximumAttemptsReached,
        );
        assert_eq!(
            invariants(&check_retries(&fatal_as_max, &BTreeMap::new(), 0)),
            ["retries"]
        );
        let fatal_while_canceling = failed_at(
            1,
            None,
            Failure::new("Fatal", "no"),
            RetryState::CancelRequested,
        );
        assert!(check_retries(&fatal_while_canceling, &BTreeMap::new(), 0).is_empty());
    }

    #[test]
    fn an_attempt_started_before_its_backoff_ended_is_caught() {
        let flaky = Failure::new("Flaky", "again");
        let history = failed_at(2, Some(flaky.clone()), flaky, RetryState::Timeout);
        let seen = |started_ms: u64| AttemptSeen {
            node: "worker-0".into(),
            started_time: Timestamp(started_ms),
            heartbeats: 0,
            result: None,
        };
        let key = |attempt| ("run-1".to_string(), 5, attempt);
        let kept = BTreeMap::from([(key(1), seen(10_000)), (key(2), seen(11_000))]);
        assert!(check_retries(&history, &kept, 0).is_empty());
        let hurried = BTreeMap::from([(key(1), seen(10_000)), (key(2), seen(10_999))]);
        let violations = check_retries(&history, &hurried, 0);
        assert_eq!(invariants(&violations), ["retries"]);
        assert!(violations[0].message.contains("within the 1000 ms backoff"));
        // Started by two members whose clocks read up to 300 ms apart: a gap
        // of 700 ms may be the whole backoff, one of 699 ms may not.
        let skewed = BTreeMap::from([(key(1), seen(10_000)), (key(2), seen(10_700))]);
        assert!(check_retries(&history, &skewed, 300).is_empty());
        let hurried = BTreeMap::from([(key(1), seen(10_000)), (key(2), seen(10_699))]);
        assert_eq!(
            invariants(&check_retries(&history, &hurried, 300)),
            ["retries"]
        );
    }
}
