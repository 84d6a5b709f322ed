//! The workflow SDK: the [`Workflow`] trait, [`WorkflowContext`], the
//! deterministic [`WorkflowExecutor`] and the [`Replayer`].
//!
//! Workflow code is ordinary async Rust that touches the world only through its
//! context. Parallelism uses the deterministic combinators re-exported here
//! (`join`, `join_all`, `select`, `try_join`, the `join!` and `select_biased!`
//! macros); they poll in a fixed order, so replay takes the same path.
//! (`futures::select!` picks branches at random and is banned by clippy.toml.)
//!
//! ```
//! use std::time::Duration;
//! use retrace::workflow::{Workflow, WorkflowContext, WorkflowResult};
//!
//! struct Reminder;
//! impl Workflow for Reminder {
//!     const NAME: &'static str = "reminder";
//!     type Input = String;
//!     type Output = String;
//!     async fn run(ctx: WorkflowContext, text: String) -> WorkflowResult<String> {
//!         ctx.sleep(Duration::from_secs(60)).await?;
//!         let ack: String = ctx.signal("ack").recv().await?;
//!         Ok(format!("{text}: {ack}"))
//!     }
//! }
//! ```

mod child;
mod command;
mod context;
mod cron;
mod error;
mod executor;
mod local_activity;
mod registry;
mod replay;
mod update;
mod visibility;

pub use child::{
    ChildResultFuture, ChildStartFuture, ChildWorkflow, ChildWorkflowHandle, ChildWorkflowOptions,
};
pub use command::{
    AcceptUpdate, Command, CommandKey, ContinueAsNewWorkflowExecution, LEGACY_PATCH_MARKER_NAME,
    PATCH_MARKER_NAME, RequestCancelExternalWorkflowExecution, SIDE_EFFECT_MARKER_NAME,
    ScheduleActivityTask, SignalExternalWorkflowExecution, StartChildWorkflowExecution,
    event_command_key,
};
pub use context::{
    ActivityFuture, CancellationScope, CancelledFuture, ConditionFn, ConditionFuture,
    ContinueAsNewOptions, ExternalFuture, QueryFn, SignalChannel, SignalFuture, TimerFuture,
    WorkflowContext, WorkflowInfo,
};
pub use cron::{CRON_HORIZON_DAYS_MAX, CRON_SCHEDULE_BYTES_MAX, CronError, CronSchedule};
pub use error::{ActivityError, ChildWorkflowError, PayloadError, WorkflowError};
pub use executor::{
    Activation, POLLS_PER_ACTIVATION_MAX, QueryError, RunResult, StateDigest, WorkflowExecutor,
};
pub use local_activity::{
    LOCAL_ACTIVITY_MARKER_NAME, LOCAL_ACTIVITY_TIMEOUT_MS_MAX, LocalActivityFuture,
    LocalActivityOptions, LocalActivityOutcome, LocalActivityRequest,
};
pub use registry::{WorkflowFactory, WorkflowFuture, WorkflowRegistry};
pub use replay::{NonDeterminism, ReplayError, ReplayOutcome, Replayer, workflow_task_boundaries};

pub use futures::future::{join, join_all, select, select_all, try_join, try_join_all};
pub use futures::{join, select_biased, try_join};

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// What a workflow returns.
pub type WorkflowResult<T> = Result<T, WorkflowError>;

/// A workflow type: deterministic async code of (context, input) -> output.
pub trait Workflow: Send + Sync + 'static {
    /// The registered name (the workflow type in histories).
    const NAME: &'static str;
    /// Input payload.
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// Result payload.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// The workflow's code.
    fn run(
        ctx: WorkflowContext,
        input: Self::Input,
    ) -> impl Future<Output = WorkflowResult<Self::Output>> + Send;
}
