//! Child workflows: runs a workflow starts, whose result it awaits, and
//! which its close terminates, cancels or abandons (as Temporal's).
//!
//! ```ignore
//! // Start and await the result in one go:
//! let receipt = ctx.child_workflow::<Charge>(order.clone()).await?;
//! // Or await the start, then talk to the child, then await its result:
//! let child = ctx
//!     .child_workflow::<Shipment>(order)
//!     .workflow_id(format!("shipment-{}", order.id))
//!     .parent_close_policy(ParentClosePolicy::Abandon)
//!     .start()
//!     .await?;
//! child.signal("expedite", &()).await?;
//! let tracking = child.result().await?;
//! ```

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Workflow;
use super::command::StartChildWorkflowExecution;
use super::context::{ExternalFuture, WorkflowContext};
use super::error::{ChildWorkflowError, PayloadError, WorkflowError};
use crate::types::{IdReusePolicy, ParentClosePolicy};

/// How a child workflow is started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChildWorkflowOptions {
    /// Its workflow id; `{parent run id}-child-{n}` if `None` (unique, and
    /// the same on replay).
    pub workflow_id: Option<String>,
    /// Its task queue; the parent's if `None`.
    pub task_queue: Option<String>,
    /// Its whole-run deadline (its continue-as-new chain's).
    pub execution_timeout: Option<Duration>,
    /// Each of its workflow tasks' deadline (default 10 s).
    pub workflow_task_timeout: Option<Duration>,
    /// What a closed workflow id may be reused for.
    pub id_reuse_policy: IdReusePolicy,
    /// What happens to it when the parent closes (default: terminated).
    pub parent_close_policy: ParentClosePolicy,
}

/// A child workflow to start ([`WorkflowContext::child_workflow`]):
/// configure it, then `.await` it for its result, or [`ChildWorkflow::start`]
/// it for a handle.
#[must_use = "a child workflow starts when awaited or started"]
pub struct ChildWorkflow<O> {
    ctx: WorkflowContext,
    workflow_type: String,
    input: Result<Value, PayloadError>,
    options: ChildWorkflowOptions,
    _output: PhantomData<fn() -> O>,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl<O> ChildWorkflow<O> {
    pub(super) fn new(
        ctx: WorkflowContext,
        workflow_type: String,
        input: Result<Value, PayloadError>,
    ) -> ChildWorkflow<O> {
        ChildWorkflow {
            ctx,
            workflow_type,
            input,
            options: ChildWorkflowOptions::default(),
            _output: PhantomData,
        }
    }

    /// Replaces every option.
    pub fn options(mut self, options: ChildWorkflowOptions) -> Self {
        self.options = options;
        self
    }

    /// Its workflow id.
    pub fn workflow_id(mut self, workflow_id: impl Into<String>) -> Self {
        self.options.workflow_id = Some(workflow_id.into());
        self
    }

    /// Its task queue.
    pub fn task_queue(mut self, task_queue: impl Into<String>) -> Self {
        self.options.task_queue = Some(task_queue.into());
        self
    }

    /// Its whole-run deadline.
    pub fn execution_timeout(mut self, timeout: Duration) -> Self {
        self.options.execution_timeout = Some(timeout);
        self
    }

    /// What happens to it when the parent closes.
    pub fn parent_close_policy(mut self, policy: ParentClosePolicy) -> Self {
        self.options.parent_close_policy = policy;
        self
    }

    /// What a closed workflow id may be reused for.
    pub fn id_reuse_policy(mut self, policy: IdReusePolicy) -> Self {
        self.options.id_reuse_policy = policy;
        self
    }

    /// Issues the start now; the future resolves once the child's first
    /// run started (or fails with [`ChildWorkflowError::AlreadyStarted`]).
    pub fn start(self) -> ChildStartFuture<O> {
        let input = match self.input {
            Ok(input) => input,
            Err(error) => return ChildStartFuture::failed(self.ctx, error.into()),
        };
        let options = self.options;
        let ctx = self.ctx;
        let workflow_type = self.workflow_type;
        let run_id = ctx.info().run_id.clone();
        let mut workflow_id = String::new();
        let seq = ctx.lock().start_child(ctx.scope(), |seq| {
            workflow_id = options
                .workflow_id
                .unwrap_or_else(|| format!("{run_id}-child-{seq}"));
            StartChildWorkflowExecution {
                seq,
                workflow_id: workflow_id.clone(),
                workflow_type,
                task_queue: options.task_queue,
                input,
                execution_timeout_ms: options.execution_timeout.map(millis),
                workflow_task_timeout_ms: options.workflow_task_timeout.map(millis),
                parent_close_policy: options.parent_close_policy,
                workflow_id_reuse_policy: options.id_reuse_policy,
            }
        });
        ChildStartFuture {
            ctx,
            state: StartState::Pending { seq, workflow_id },
            _output: PhantomData,
        }
    }
}

impl<O: DeserializeOwned + Send + 'static> IntoFuture for ChildWorkflow<O> {
    type Output = Result<O, WorkflowError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<O, WorkflowError>> + Send>>;

    /// Starts the child and awaits its result.
    fn into_future(self) -> Self::IntoFuture {
        let started = self.start();
        Box::pin(async move { started.await?.result().await })
    }
}

/// The start of a child workflow ([`ChildWorkflow::start`]).
pub struct ChildStartFuture<O> {
    ctx: WorkflowContext,
    state: StartState,
    _output: PhantomData<fn() -> O>,
}

enum StartState {
    Pending { seq: String, workflow_id: String },
    Failed(Option<WorkflowError>),
}

impl<O> ChildStartFuture<O> {
    fn failed(ctx: WorkflowContext, error: WorkflowError) -> ChildStartFuture<O> {
        ChildStartFuture {
            ctx,
            state: StartState::Failed(Some(error)),
            _output: PhantomData,
        }
    }
}

impl<O> Future for ChildStartFuture<O> {
    type Output = Result<ChildWorkflowHandle<O>, WorkflowError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            StartState::Failed(error) => {
                Poll::Ready(Err(error.take().expect("polled after it completed")))
            }
            StartState::Pending { seq, workflow_id } => {
                let started = this.ctx.lock().poll_child_started(seq, cx.waker());
                started.map(|started| {
                    started.map(|run_id| ChildWorkflowHandle {
                        ctx: this.ctx.clone(),
                        seq: seq.clone(),
                        workflow_id: workflow_id.clone(),
                        run_id,
                        _output: PhantomData,
                    })
                })
            }
        }
    }
}

/// A started child workflow.
pub struct ChildWorkflowHandle<O> {
    ctx: WorkflowContext,
    seq: String,
    workflow_id: String,
    run_id: String,
    _output: PhantomData<fn() -> O>,
}

impl<O> ChildWorkflowHandle<O> {
    /// The child's workflow id.
    pub fn workflow_id(&self) -> &str {
        &self.workflow_id
    }

    /// The child's first run.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Signals the child (its current run).
    pub fn signal<T: Serialize>(&self, signal_name: &str, input: &T) -> ExternalFuture {
        self.ctx
            .signal_external(&self.workflow_id, None, signal_name, input)
    }

    /// Asks the child (its current run) to cancel; its result then ends
    /// `Canceled` if the child accepts.
    pub fn cancel(&self) -> ExternalFuture {
        self.ctx.cancel_external(&self.workflow_id, None)
    }

    /// The child's result, once its chain of runs closed. Await it once.
    pub fn result(&self) -> ChildResultFuture<O> {
        ChildResultFuture {
            ctx: self.ctx.clone(),
            seq: self.seq.clone(),
            workflow_id: self.workflow_id.clone(),
            _output: PhantomData,
        }
    }
}

/// A child workflow's result ([`ChildWorkflowHandle::result`]).
pub struct ChildResultFuture<O> {
    ctx: WorkflowContext,
    seq: String,
    workflow_id: String,
    _output: PhantomData<fn() -> O>,
}

impl<O: DeserializeOwned> Future for ChildResultFuture<O> {
    type Output = Result<O, WorkflowError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = this.ctx.lock().poll_child_result(&this.seq, cx.waker());
        result.map(|result| {
            let value = result?;
            let what = || format!("result of child workflow {}", this.workflow_id);
            PayloadError::decode(what, value)
                .map_err(|error| ChildWorkflowError::Payload(error).into())
        })
    }
}

impl WorkflowContext {
    /// A child workflow of type `W`: `.await` it for its result, or
    /// configure it first (workflow id, task queue, timeouts, id reuse and
    /// parent close policies) and [`ChildWorkflow::start`] it for a handle
    /// that can signal and cancel it.
    pub fn child_workflow<W: Workflow>(&self, input: W::Input) -> ChildWorkflow<W::Output> {
        let what = || format!("input of child workflow {}", W::NAME);
        let input = PayloadError::encode(what, &input);
        ChildWorkflow::new(self.clone(), W::NAME.to_string(), input)
    }

    /// A child workflow by type name, with a JSON input and result.
    pub fn child_workflow_by_name(
        &self,
        workflow_type: &str,
        input: Value,
    ) -> ChildWorkflow<Value> {
        ChildWorkflow::new(self.clone(), workflow_type.to_string(), Ok(input))
    }
}
