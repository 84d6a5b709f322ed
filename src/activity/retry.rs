//! RetryPolicy with Temporal's fields and defaults, and the pure retry decision.
//!
//! Defaults: `initial_interval` 1 s, `backoff_coefficient` 2.0, `maximum_interval`
//! 100 x initial, `maximum_attempts` 0 (unlimited), `non_retryable_error_types`
//! matched exactly against a failure's type.

use serde::{Deserialize, Serialize};

use crate::types::{Failure, RetryState};

/// Default first backoff.
pub const INITIAL_INTERVAL_MS_DEFAULT: u64 = 1_000;
/// Default growth of the backoff per attempt.
pub const BACKOFF_COEFFICIENT_DEFAULT: f64 = 2.0;
/// Default cap of the backoff, as a multiple of the initial interval.
pub const MAXIMUM_INTERVAL_MULTIPLE_DEFAULT: u64 = 100;

/// How an activity is retried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Backoff before the second attempt.
    pub initial_interval_ms: u64,
    /// Each backoff is the previous one times this (at least 1.0).
    pub backoff_coefficient: f64,
    /// Cap of the backoff; 0 means 100 x `initial_interval_ms`.
    pub maximum_interval_ms: u64,
    /// Attempts in all, the first included; 0 means unlimited.
    pub maximum_attempts: u32,
    /// Failure types that are never retried (exact match).
    pub non_retryable_error_types: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_interval_ms: INITIAL_INTERVAL_MS_DEFAULT,
            backoff_coefficient: BACKOFF_COEFFICIENT_DEFAULT,
            maximum_interval_ms: 0,
            maximum_attempts: 0,
            non_retryable_error_types: Vec::new(),
        }
    }
}

/// A retry policy that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RetryPolicyError {
    /// The first backoff is zero.
    #[error("retry policy: initial_interval_ms must be at least 1, got 0")]
    InitialIntervalZero,
    /// The coefficient would shrink the backoff (or is not a number).
    #[error("retry policy: backoff_coefficient must be at least 1.0, got {0}")]
    CoefficientBelowOne(f64),
    /// The cap is below the first backoff.
    #[error(
        "retry policy: maximum_interval_ms {maximum_ms} is below initial_interval_ms {initial_ms}"
    )]
    MaximumBelowInitial {
        /// The cap given.
        maximum_ms: u64,
        /// The first backoff given.
        initial_ms: u64,
    },
}

/// What to do after an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this backoff.
    Retry {
        /// Wait before the next attempt.
        backoff_ms: u64,
    },
    /// Stop; the activity's outcome is final.
    Stop(RetryState),
}

impl RetryPolicy {
    /// Sets the maximum number of attempts (0 = unlimited).
    pub fn maximum_attempts(mut self, attempts: u32) -> Self {
        self.maximum_attempts = attempts;
        self
    }

    /// Sets the first backoff.
    pub fn initial_interval_ms(mut self, interval_ms: u64) -> Self {
        self.initial_interval_ms = interval_ms;
        self
    }

    /// Sets the backoff coefficient.
    pub fn backoff_coefficient(mut self, coefficient: f64) -> Self {
        self.backoff_coefficient = coefficient;
        self
    }

    /// Sets the backoff cap.
    pub fn maximum_interval_ms(mut self, interval_ms: u64) -> Self {
        self.maximum_interval_ms = interval_ms;
        self
    }

    /// Adds a failure type that is never retried.
    pub fn non_retryable(mut self, failure_type: impl Into<String>) -> Self {
        self.non_retryable_error_types.push(failure_type.into());
        self
    }

    /// The policy with defaults filled in (`maximum_interval_ms` = 100 x initial when 0),
    /// or why it cannot be used. This is what the service writes into
    /// `ActivityTaskScheduled`.
    pub fn normalized(&self) -> Result<RetryPolicy, RetryPolicyError> {
        let mut policy = self.clone();
        if policy.initial_interval_ms == 0 {
            return Err(RetryPolicyError::InitialIntervalZero);
        }
        let coefficient_ok = policy.backoff_coefficient >= 1.0;
        if !coefficient_ok {
            return Err(RetryPolicyError::CoefficientBelowOne(
                policy.backoff_coefficient,
            ));
        }
        if policy.maximum_interval_ms == 0 {
            policy.maximum_interval_ms = policy
                .initial_interval_ms
                .saturating_mul(MAXIMUM_INTERVAL_MULTIPLE_DEFAULT);
        }
        if policy.maximum_interval_ms < policy.initial_interval_ms {
            return Err(RetryPolicyError::MaximumBelowInitial {
                maximum_ms: policy.maximum_interval_ms,
                initial_ms: policy.initial_interval_ms,
            });
        }
        debug_assert!(policy.maximum_interval_ms >= policy.initial_interval_ms);
        Ok(policy)
    }

    /// Backoff after attempt `attempt` (1-based) failed:
    /// `initial x coefficient^(attempt-1)`, capped at `maximum_interval_ms`.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        assert!(attempt >= 1, "attempts are numbered from 1");
        let maximum_ms = if self.maximum_interval_ms == 0 {
            self.initial_interval_ms
                .saturating_mul(MAXIMUM_INTERVAL_MULTIPLE_DEFAULT)
        } else {
            self.maximum_interval_ms
        };
        let exponent = i32::try_from(attempt - 1).unwrap_or(i32::MAX);
        let backoff = self.initial_interval_ms as f64 * self.backoff_coefficient.powi(exponent);
        let backoff_ms = if backoff.is_finite() && backoff < maximum_ms as f64 {
            backoff as u64
        } else {
            maximum_ms
        };
        debug_assert!(backoff_ms <= maximum_ms);
        backoff_ms
    }

    /// Whether attempt `attempt` that failed with `failure` is retried.
    ///
    /// `remaining_ms` is the time left before the schedule-to-close deadline, if
    /// there is one: a retry whose backoff would not end before it is not made.
    pub fn decide(
        &self,
        attempt: u32,
        failure: &Failure,
        remaining_ms: Option<u64>,
    ) -> RetryDecision {
        assert!(attempt >= 1, "attempts are numbered from 1");
        let listed = self
            .non_retryable_error_types
            .contains(&failure.failure_type);
        if failure.non_retryable || listed {
            return RetryDecision::Stop(RetryState::NonRetryableFailure);
        }
        if self.maximum_attempts != 0 && attempt >= self.maximum_attempts {
            return RetryDecision::Stop(RetryState::MaximumAttemptsReached);
        }
        let backoff_ms = self.backoff_ms(attempt);
        if let Some(remaining_ms) = remaining_ms
            && backoff_ms >= remaining_ms
        {
            return RetryDecision::Stop(RetryState::Timeout);
        }
        RetryDecision::Retry { backoff_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_temporal() {
        let policy = RetryPolicy::default().normalized().unwrap();
        assert_eq!(policy.initial_interval_ms, 1_000);
        assert_eq!(policy.backoff_coefficient, 2.0);
        assert_eq!(policy.maximum_interval_ms, 100_000);
        assert_eq!(policy.maximum_attempts, 0);
    }

    #[test]
    fn backoff_grows_geometrically_then_caps() {
        let policy = RetryPolicy::default().maximum_interval_ms(5_000);
        let backoffs: Vec<u64> = (1..=5).map(|a| policy.backoff_ms(a)).collect();
        assert_eq!(backoffs, vec![1_000, 2_000, 4_000, 5_000, 5_000]);
        assert_eq!(
            policy.backoff_ms(1_000),
            5_000,
            "huge exponents saturate at the cap"
        );
    }

    #[test]
    fn non_retryable_types_stop_at_once() {
        let policy = RetryPolicy::default().non_retryable("Fatal");
        let decision = policy.decide(1, &Failure::new("Fatal", "no"), None);
        assert_eq!(
            decision,
            RetryDecision::Stop(RetryState::NonRetryableFailure)
        );
        let decision = policy.decide(1, &Failure::new("Other", "again"), None);
        assert_eq!(decision, RetryDecision::Retry { backoff_ms: 1_000 });
    }

    #[test]
    fn maximum_attempts_counts_the_first_attempt() {
        let policy = RetryPolicy::default().maximum_attempts(3);
        let failure = Failure::new("E", "x");
        assert!(matches!(
            policy.decide(2, &failure, None),
            RetryDecision::Retry { .. }
        ));
        let decision = policy.decide(3, &failure, None);
        assert_eq!(
            decision,
            RetryDecision::Stop(RetryState::MaximumAttemptsReached)
        );
    }

    #[test]
    fn no_retry_when_backoff_outlives_schedule_to_close() {
        let policy = RetryPolicy::default();
        let decision = policy.decide(1, &Failure::new("E", "x"), Some(500));
        assert_eq!(decision, RetryDecision::Stop(RetryState::Timeout));
    }

    #[test]
    fn bad_policies_are_rejected_with_reasons() {
        let zero = RetryPolicy::default().initial_interval_ms(0).normalized();
        assert_eq!(zero, Err(RetryPolicyError::InitialIntervalZero));
        let shrink = RetryPolicy::default().backoff_coefficient(0.5).normalized();
        assert!(shrink.unwrap_err().to_string().contains("0.5"));
        let cap = RetryPolicy::default().maximum_interval_ms(10).normalized();
        assert!(matches!(
            cap,
            Err(RetryPolicyError::MaximumBelowInitial { .. })
        ));
    }
}
