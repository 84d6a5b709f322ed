//! `WorkflowRegistry`: workflow types by name.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::context::WorkflowContext;
use super::error::{PayloadError, WorkflowError};
use super::{Workflow, WorkflowResult};

/// A workflow run's future, its output encoded.
pub type WorkflowFuture = Pin<Box<dyn Future<Output = Result<Value, WorkflowError>> + Send>>;

/// Builds a run's future from its context and encoded input.
pub type WorkflowFactory =
    Arc<dyn Fn(WorkflowContext, Value) -> Result<WorkflowFuture, PayloadError> + Send + Sync>;

/// Workflow types by name.
#[derive(Clone, Default)]
pub struct WorkflowRegistry {
    workflows: BTreeMap<String, WorkflowFactory>,
}

impl std::fmt::Debug for WorkflowRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowRegistry")
            .field("workflows", &self.names())
            .finish()
    }
}

fn encode_output<O: Serialize>(workflow_type: &str, output: &O) -> Result<Value, WorkflowError> {
    let what = || format!("result of workflow {workflow_type}");
    PayloadError::encode(what, output).map_err(WorkflowError::from)
}

impl WorkflowRegistry {
    /// An empty registry.
    pub fn new() -> WorkflowRegistry {
        WorkflowRegistry::default()
    }

    /// Registers workflow type `W` under `W::NAME` (replacing an earlier one).
    pub fn register<W: Workflow>(&mut self) -> &mut Self {
        let factory =
            move |ctx: WorkflowContext, input: Value| -> Result<WorkflowFuture, PayloadError> {
                let what = || format!("input of workflow {}", W::NAME);
                let input: W::Input = PayloadError::decode(what, input)?;
                Ok(Box::pin(async move {
                    let output = W::run(ctx, input).await?;
                    encode_output(W::NAME, &output)
                }))
            };
        self.workflows
            .insert(W::NAME.to_string(), Arc::new(factory));
        self
    }

    /// Registers an async function as workflow type `name`.
    ///
    /// ```
    /// use retrace::workflow::{WorkflowContext, WorkflowRegistry};
    ///
    /// let mut registry = WorkflowRegistry::new();
    /// registry.register_fn("double", |_ctx: WorkflowContext, n: u64| async move { Ok(n * 2) });
    /// assert_eq!(registry.names(), vec!["double".to_string()]);
    /// ```
    pub fn register_fn<I, O, F, Fut>(&mut self, name: &str, f: F) -> &mut Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(WorkflowContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = WorkflowResult<O>> + Send + 'static,
    {
        let workflow_type = name.to_string();
        let factory =
            move |ctx: WorkflowContext, input: Value| -> Result<WorkflowFuture, PayloadError> {
                let input: I =
                    PayloadError::decode(|| format!("input of workflow {workflow_type}"), input)?;
                let future = f(ctx, input);
                let workflow_type = workflow_type.clone();
                Ok(Box::pin(async move {
                    let output = future.await?;
                    encode_output(&workflow_type, &output)
                }))
            };
        self.workflows.insert(name.to_string(), Arc::new(factory));
        self
    }

    /// The factory of `workflow_type`.
    pub fn get(&self, workflow_type: &str) -> Option<WorkflowFactory> {
        self.workflows.get(workflow_type).cloned()
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.workflows.keys().cloned().collect()
    }
}
