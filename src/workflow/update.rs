//! Workflow updates as workflow code sees them: a handler per update name,
//! with an optional validator.
//!
//! The worker hands a workflow task's updates to the executor, which runs
//! each one's validator against the run's state once the code has run as far
//! as it can. A refusal writes nothing (the caller alone is told); an
//! acceptance records an `AcceptUpdate` command and starts the handler, which
//! runs beside the workflow's main future, may await activities and timers,
//! and records a `CompleteUpdate` command with its result. Replay accepts the
//! updates its history accepted at the same point, without their validators.
//!
//! | step                     | live workflow task                      | replay                              |
//! |--------------------------|-----------------------------------------|-------------------------------------|
//! | an update is handed over | validator; AcceptUpdate or a rejection   | the task's `…UpdateAccepted` events |
//! | handler returns          | CompleteUpdate                          | matched against `…UpdateCompleted`  |
//! | the run closes first     | the handler is dropped; the caller is told the run closed | same              |

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::context::WorkflowContext;
use super::error::WorkflowError;

/// A running update handler.
pub(crate) type UpdateFuture = Pin<Box<dyn Future<Output = Result<Value, WorkflowError>> + Send>>;

/// A type-erased validator: `Err` says why the update is refused.
type ValidateFn = dyn Fn(&Value) -> Result<(), String> + Send + Sync;

/// A type-erased update handler and its validator.
pub(crate) struct UpdateHandler {
    pub(crate) validate: Box<ValidateFn>,
    pub(crate) handle: Box<dyn Fn(Value) -> UpdateFuture + Send + Sync>,
}

impl WorkflowContext {
    /// Registers the handler of update `name`: it receives the update's
    /// input, may await activities, timers and anything else, and its result
    /// is the caller's answer. Register handlers before the workflow's first
    /// await: an update delivered to a run without its handler is rejected.
    pub fn update_handler<A, R, Fut>(
        &self,
        name: &str,
        handler: impl Fn(A) -> Fut + Send + Sync + 'static,
    ) where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        Fut: Future<Output = Result<R, WorkflowError>> + Send + 'static,
    {
        self.update_handler_validated(name, |_: &A| Ok(()), handler);
    }

    /// [`WorkflowContext::update_handler`] with a validator, run before the
    /// update is accepted: an `Err` refuses the update and nothing is
    /// recorded. A validator must only read the workflow's state.
    pub fn update_handler_validated<A, R, Fut>(
        &self,
        name: &str,
        validator: impl Fn(&A) -> Result<(), String> + Send + Sync + 'static,
        handler: impl Fn(A) -> Fut + Send + Sync + 'static,
    ) where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        Fut: Future<Output = Result<R, WorkflowError>> + Send + 'static,
    {
        let update = name.to_string();
        let decode = move |input: &Value| -> Result<A, String> {
            serde_json::from_value(input.clone())
                .map_err(|e| format!("update {update:?}: the input does not fit: {e}"))
        };
        let decode_again = decode.clone();
        let validate = move |input: &Value| validator(&decode(input)?);
        let handler = Arc::new(handler);
        let handle = move |input: Value| -> UpdateFuture {
            let args = decode_again(&input);
            let handler = handler.clone();
            Box::pin(async move {
                let args =
                    args.map_err(|message| WorkflowError::application("BadInput", message))?;
                let result = handler(args).await?;
                serde_json::to_value(result).map_err(|e| {
                    let message = format!("the update's result does not encode: {e}");
                    WorkflowError::application("BadResult", message)
                })
            })
        };
        let erased = UpdateHandler {
            validate: Box::new(validate),
            handle: Box::new(handle),
        };
        self.lock()
            .update_handlers
            .insert(name.to_string(), Arc::new(erased));
    }
}
