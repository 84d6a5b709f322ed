//! Errors seen by workflow code.

use serde_json::Value;

use super::command::ContinueAsNewWorkflowExecution;
use crate::types::{
    ActivityFailureInfo, ChildWorkflowFailureInfo, FAILURE_CAUSES_MAX, Failure, FailureInfo,
    RetryState, TimeoutType,
};

/// A payload that does not (de)serialize into the expected type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("payload for {what} does not fit type {type_name}: {message}")]
pub struct PayloadError {
    /// What the payload was for ("input of workflow checkout", "signal approve", ...).
    pub what: String,
    /// The Rust type it should fit.
    pub type_name: &'static str,
    /// What serde said.
    pub message: String,
}

impl PayloadError {
    /// Decodes `value` into `T`, naming `what` on failure.
    pub fn decode<T: serde::de::DeserializeOwned>(
        what: impl FnOnce() -> String,
        value: Value,
    ) -> Result<T, PayloadError> {
        serde_json::from_value(value).map_err(|error| PayloadError {
            what: what(),
            type_name: std::any::type_name::<T>(),
            message: error.to_string(),
        })
    }

    /// Encodes `value`, naming `what` on failure.
    pub fn encode<T: serde::Serialize>(
        what: impl FnOnce() -> String,
        value: &T,
    ) -> Result<Value, PayloadError> {
        serde_json::to_value(value).map_err(|error| PayloadError {
            what: what(),
            type_name: std::any::type_name::<T>(),
            message: error.to_string(),
        })
    }
}

/// How an activity ended, as seen by the workflow that awaited it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActivityError {
    /// The activity failed and will not be retried.
    #[error("activity failed ({retry_state:?}): {failure}")]
    Failed {
        /// The last attempt's failure.
        failure: Failure,
        /// Why it was not retried.
        retry_state: RetryState,
        /// Which activity, and its events.
        activity: Box<ActivityFailureInfo>,
    },
    /// A timeout fired and the activity will not be retried.
    #[error("activity timed out ({timeout_type} timeout, {retry_state:?})")]
    TimedOut {
        /// Which timeout.
        timeout_type: TimeoutType,
        /// Why it was not retried.
        retry_state: RetryState,
        /// The failure of the last attempt before the timeout, if any.
        last_failure: Option<Box<Failure>>,
        /// Which activity, and its events.
        activity: Box<ActivityFailureInfo>,
        /// The timeout as the history records it, its message naming the
        /// limit (absent in histories written before it was recorded).
        timeout: Option<Box<Failure>>,
    },
    /// The activity was canceled.
    #[error("activity canceled")]
    Canceled,
    /// The activity's options cannot work (for example no start-to-close nor
    /// schedule-to-close timeout); nothing was scheduled.
    #[error("activity {activity_type:?} cannot be scheduled: {reason}")]
    InvalidOptions {
        /// The activity type.
        activity_type: String,
        /// What is wrong.
        reason: String,
    },
    /// The input or result did not fit its type.
    #[error(transparent)]
    Payload(#[from] PayloadError),
}

impl ActivityError {
    /// The `ActivityFailure` of an activity that failed or timed out, whose
    /// cause is the activity's failure or its timeout (itself caused by the
    /// last attempt's failure, if any).
    pub fn to_failure(&self) -> Option<Failure> {
        let (activity, message, cause) = match self {
            ActivityError::Failed {
                failure, activity, ..
            } => {
                let message = format!("activity failed: {}", failure.message);
                (activity, message, failure.clone())
            }
            ActivityError::TimedOut {
                timeout_type,
                last_failure,
                activity,
                timeout,
                ..
            } => {
                let timeout = timeout.as_deref().cloned().unwrap_or_else(|| {
                    let message = format!("activity timed out: its {timeout_type} timeout passed");
                    Failure::timed_out(*timeout_type, message)
                });
                let message = timeout.message.clone();
                (
                    activity,
                    message,
                    timeout.with_cause(last_failure.as_deref().cloned()),
                )
            }
            _ => return None,
        };
        let failure = Failure {
            info: Some(Box::new(FailureInfo::Activity((**activity).clone()))),
            ..Failure::new("ActivityFailure", message)
        };
        Some(failure.with_cause(Some(cause)))
    }
}

/// The error a workflow returns. `?` converts activity errors and payload errors.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkflowError {
    /// An activity the workflow awaited did not complete.
    #[error(transparent)]
    Activity(#[from] ActivityError),
    /// The run was asked to cancel; returning this closes it as Canceled.
    #[error("workflow canceled")]
    Canceled,
    /// An application failure; closes the run as Failed with this failure.
    #[error("{0}")]
    Application(Failure),
    /// A signal or other payload did not fit its type.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// Not a failure: the run continues as a new run of the same workflow id
    /// (made by [`crate::workflow::WorkflowContext::continue_as_new`]);
    /// returning it closes this run with `WorkflowExecutionContinuedAsNew`.
    #[error("continue as new")]
    ContinueAsNew(Box<ContinueAsNewWorkflowExecution>),
    /// A signal or cancel request to another workflow found no open run.
    #[error("workflow {workflow_id:?} was not found, or is closed")]
    ExternalWorkflowNotFound {
        /// The workflow signaled or asked to cancel.
        workflow_id: String,
    },
    /// A child workflow did not start, or did not complete.
    #[error(transparent)]
    Child(#[from] ChildWorkflowError),
}

/// How a child workflow did not complete, as its parent sees it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChildWorkflowError {
    /// Not started: its workflow id is running, or its id reuse policy
    /// refuses a new run (Temporal's `WorkflowAlreadyExists`).
    #[error("child workflow {workflow_id:?} was not started: its workflow id is taken")]
    AlreadyStarted {
        /// The child's workflow id.
        workflow_id: String,
    },
    /// The child failed.
    #[error("child workflow {workflow_id:?} failed: {failure}")]
    Failed {
        /// The child's workflow id.
        workflow_id: String,
        /// The child's failure.
        failure: Box<Failure>,
        /// Which child, and the parent's events for it.
        child: Box<ChildWorkflowFailureInfo>,
    },
    /// The child was canceled.
    #[error("child workflow {workflow_id:?} was canceled")]
    Canceled {
        /// The child's workflow id.
        workflow_id: String,
    },
    /// The child's execution timeout fired.
    #[error("child workflow {workflow_id:?} timed out")]
    TimedOut {
        /// The child's workflow id.
        workflow_id: String,
    },
    /// The child was terminated.
    #[error("child workflow {workflow_id:?} was terminated: {reason}")]
    Terminated {
        /// The child's workflow id.
        workflow_id: String,
        /// Why.
        reason: String,
    },
    /// Its result did not fit the parent's type.
    #[error(transparent)]
    Payload(#[from] PayloadError),
}

impl WorkflowError {
    /// An application failure of the given type.
    pub fn application(
        failure_type: impl Into<String>,
        message: impl Into<String>,
    ) -> WorkflowError {
        WorkflowError::Application(Failure::new(failure_type, message))
    }

    /// True if this error means the run was canceled (directly, or through an
    /// activity canceled because of the run's cancellation).
    pub fn is_cancellation(&self) -> bool {
        matches!(
            self,
            WorkflowError::Canceled
                | WorkflowError::Activity(ActivityError::Canceled)
                | WorkflowError::Child(ChildWorkflowError::Canceled { .. })
        )
    }

    /// The failure recorded when the run fails with this error. An activity's
    /// or child's failure is wrapped as Temporal wraps it: an
    /// `ActivityFailure` (with the activity's type, id, events and retry
    /// state) or `ChildWorkflowFailure` whose cause is what failed; at most
    /// [`FAILURE_CAUSES_MAX`] deep.
    pub fn to_failure(&self) -> Failure {
        let failure = match self {
            WorkflowError::Application(failure) => failure.clone(),
            WorkflowError::Activity(error) => match error.to_failure() {
                Some(failure) => failure,
                None => Failure::new(error_type_name(self), self.to_string()),
            },
            WorkflowError::Child(ChildWorkflowError::Failed {
                workflow_id,
                failure,
                child,
            }) => Failure {
                info: Some(Box::new(FailureInfo::ChildWorkflow((**child).clone()))),
                ..Failure::new(
                    "ChildWorkflowFailure",
                    format!("child workflow {workflow_id:?} failed: {}", failure.message),
                )
            }
            .with_cause(Some((**failure).clone())),
            other => Failure::new(error_type_name(other), other.to_string()),
        };
        failure.with_causes_at_most(FAILURE_CAUSES_MAX)
    }
}

fn error_type_name(error: &WorkflowError) -> &'static str {
    match error {
        WorkflowError::Activity(ActivityError::TimedOut { .. }) => "ActivityTimeout",
        WorkflowError::Activity(ActivityError::Canceled) | WorkflowError::Canceled => "Canceled",
        WorkflowError::Activity(ActivityError::InvalidOptions { .. }) => "InvalidActivityOptions",
        WorkflowError::Activity(ActivityError::Payload(_)) | WorkflowError::Payload(_) => {
            "PayloadError"
        }
        WorkflowError::Activity(ActivityError::Failed { .. }) => "ActivityFailure",
        WorkflowError::Application(_) => "ApplicationError",
        WorkflowError::ContinueAsNew(_) => "ContinueAsNew",
        WorkflowError::ExternalWorkflowNotFound { .. } => "ExternalWorkflowExecutionNotFound",
        WorkflowError::Child(ChildWorkflowError::AlreadyStarted { .. }) => "WorkflowAlreadyExists",
        WorkflowError::Child(ChildWorkflowError::Payload(_)) => "PayloadError",
        WorkflowError::Child(_) => "ChildWorkflowFailure",
    }
}
