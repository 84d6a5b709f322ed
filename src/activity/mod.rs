//! Activities: the side-effecting functions workflows orchestrate.
//!
//! An activity runs at least once; it takes effect exactly once when it uses
//! [`ActivityContext::idempotency_key`], which is the same on every attempt
//! (run id + activity id). Each attempt is bounded by timeouts the service
//! enforces with durable timers; failures are retried under a [`RetryPolicy`].

mod context;
mod options;
mod retry;

pub(crate) use context::ActivityShared;
pub use context::{ActivityContext, ActivityInfo, CancelReason};
pub use options::{ActivityCancellationType, ActivityOptions};
pub use retry::*;

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::types::Failure;

/// What an activity attempt returns.
pub type ActivityResult<T> = Result<T, ActivityRunError>;

/// Why an activity attempt did not return a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActivityRunError {
    /// A failure; retried unless the retry policy says otherwise.
    #[error("{0}")]
    Failed(Failure),
    /// The attempt gave up because the activity was canceled.
    #[error("activity canceled")]
    Canceled {
        /// Details recorded in `ActivityTaskCanceled`.
        details: Option<Value>,
    },
}

/// A retryable failure whose type is `"ActivityError"` and message is `error`'s text.
pub fn retryable(error: impl std::fmt::Display) -> ActivityRunError {
    ActivityRunError::Failed(Failure::new("ActivityError", error.to_string()))
}

/// A failure that is never retried.
pub fn non_retryable(error: impl std::fmt::Display) -> ActivityRunError {
    let mut failure = Failure::new("NonRetryableError", error.to_string());
    failure.non_retryable = true;
    ActivityRunError::Failed(failure)
}

impl ActivityRunError {
    /// A failure with an explicit type (matched against `non_retryable_error_types`).
    pub fn typed(failure_type: impl Into<String>, message: impl Into<String>) -> ActivityRunError {
        ActivityRunError::Failed(Failure::new(failure_type, message))
    }
}

/// An activity type.
///
/// ```
/// use retrace::activity::{Activity, ActivityContext, ActivityResult, ActivityOptions};
/// use std::time::Duration;
///
/// struct Greet;
/// impl Activity for Greet {
///     const NAME: &'static str = "greet";
///     type Input = String;
///     type Output = String;
///     fn options() -> ActivityOptions {
///         ActivityOptions::default().start_to_close(Duration::from_secs(5))
///     }
///     async fn run(&self, _ctx: ActivityContext, name: String) -> ActivityResult<String> {
///         Ok(format!("hello {name}"))
///     }
/// }
/// ```
pub trait Activity: Send + Sync + 'static {
    /// The registered name (the activity type in histories).
    const NAME: &'static str;
    /// Input payload.
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// Result payload.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Default options used when a workflow schedules this activity; the
    /// workflow can override each of them.
    fn options() -> ActivityOptions {
        ActivityOptions::default()
    }

    /// Runs one attempt.
    fn run(
        &self,
        ctx: ActivityContext,
        input: Self::Input,
    ) -> impl Future<Output = ActivityResult<Self::Output>> + Send;
}
