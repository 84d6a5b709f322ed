//! Workflows and activities shared by the integration tests: the ones the golden
//! histories in `fixtures/histories/` were recorded from, and the engine harness.
#![allow(dead_code)]

pub mod engine;

/// Logs to the test's output when RUST_LOG is set.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

use std::time::Duration;

use retrace::activity::{
    Activity, ActivityContext, ActivityOptions, ActivityResult, RetryPolicy, retryable,
};
use retrace::workflow::{Workflow, WorkflowContext, WorkflowRegistry, WorkflowResult, join};
use serde::{Deserialize, Serialize};

/// Appends a suffix to its input.
pub struct Compose;
impl Activity for Compose {
    const NAME: &'static str = "compose";
    type Input = String;
    type Output = String;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, _ctx: ActivityContext, input: String) -> ActivityResult<String> {
        Ok(format!("{input}!"))
    }
}

/// Always fails (retryably).
pub struct Flaky;
impl Activity for Flaky {
    const NAME: &'static str = "flaky";
    type Input = String;
    type Output = String;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, ctx: ActivityContext, _input: String) -> ActivityResult<String> {
        Err(retryable(format!("attempt {} failed", ctx.attempt())))
    }
}

/// One activity.
pub struct OneActivity;
impl Workflow for OneActivity {
    const NAME: &'static str = "one_activity";
    type Input = String;
    type Output = String;
    async fn run(ctx: WorkflowContext, name: String) -> WorkflowResult<String> {
        Ok(ctx.activity::<Compose>(name).await?)
    }
}

/// Three activities in sequence, each fed the previous result.
pub struct ThreeSequential;
impl Workflow for ThreeSequential {
    const NAME: &'static str = "three_sequential";
    type Input = String;
    type Output = String;
    async fn run(ctx: WorkflowContext, text: String) -> WorkflowResult<String> {
        let a = ctx.activity::<Compose>(text).await?;
        let b = ctx.activity::<Compose>(a).await?;
        Ok(ctx.activity::<Compose>(b).await?)
    }
}

/// Two activities in parallel.
pub struct TwoParallel;
impl Workflow for TwoParallel {
    const NAME: &'static str = "two_parallel";
    type Input = (String, String);
    type Output = Vec<String>;
    async fn run(
        ctx: WorkflowContext,
        (left, right): (String, String),
    ) -> WorkflowResult<Vec<String>> {
        let (a, b) = join(
            ctx.activity::<Compose>(left),
            ctx.activity::<Compose>(right),
        )
        .await;
        Ok(vec![a?, b?])
    }
}

/// Sleeps, then waits for a signal.
pub struct TimerThenSignal;
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub by: String,
}
impl Workflow for TimerThenSignal {
    const NAME: &'static str = "timer_then_signal";
    type Input = u64;
    type Output = String;
    async fn run(ctx: WorkflowContext, seconds: u64) -> WorkflowResult<String> {
        ctx.sleep(Duration::from_secs(seconds)).await?;
        let approval: Approval = ctx.signal("approve").recv().await?;
        Ok(format!("approved by {}", approval.by))
    }
}

/// Waits a day; asked to cancel, cleans up in a shielded scope, then ends
/// canceled.
pub struct CleanupOnCancel;
impl Workflow for CleanupOnCancel {
    const NAME: &'static str = "cleanup_on_cancel";
    type Input = ();
    type Output = ();
    async fn run(ctx: WorkflowContext, (): ()) -> WorkflowResult<()> {
        let waited = ctx.sleep(Duration::from_secs(86_400)).await;
        if let Err(error) = waited {
            let cleanup = ctx.shielded_scope();
            cleanup
                .ctx()
                .activity::<Compose>("cleanup".to_string())
                .await?;
            return Err(error);
        }
        Ok(())
    }
}

/// Counts down one run per second: each run but the last continues as new.
pub struct Countdown;
impl Workflow for Countdown {
    const NAME: &'static str = "countdown";
    type Input = u32;
    type Output = String;
    async fn run(ctx: WorkflowContext, left: u32) -> WorkflowResult<String> {
        if left == 0 {
            return Ok("liftoff".to_string());
        }
        ctx.sleep(Duration::from_secs(1)).await?;
        Err(ctx.continue_as_new(&(left - 1)))
    }
}

/// An activity that fails every attempt; after three the workflow fails.
pub struct RetryThenFail;
impl Workflow for RetryThenFail {
    const NAME: &'static str = "retry_then_fail";
    type Input = String;
    type Output = String;
    async fn run(ctx: WorkflowContext, input: String) -> WorkflowResult<String> {
        let policy = RetryPolicy::default().maximum_attempts(3);
        Ok(ctx.activity::<Flaky>(input).retry(policy).await?)
    }
}

/// Takes a new path behind patch "v2".
pub struct Patched;
impl Workflow for Patched {
    const NAME: &'static str = "patched";
    type Input = String;
    type Output = String;
    async fn run(ctx: WorkflowContext, input: String) -> WorkflowResult<String> {
        if ctx.patched("v2") {
            let first = ctx.activity::<Compose>(format!("v2 {input}")).await?;
            Ok(ctx.activity::<Compose>(first).await?)
        } else {
            Ok(ctx.activity::<Compose>(input).await?)
        }
    }
}

/// Composes locally (a local activity), then with an ordinary activity.
pub struct LocalThenRemote;
impl Workflow for LocalThenRemote {
    const NAME: &'static str = "local_then_remote";
    type Input = String;
    type Output = String;
    async fn run(ctx: WorkflowContext, name: String) -> WorkflowResult<String> {
        let local = ctx.local_activity::<Compose>(name).await?;
        Ok(ctx.activity::<Compose>(local).await?)
    }
}

/// Every fixture workflow.
pub fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry
        .register::<OneActivity>()
        .register::<ThreeSequential>()
        .register::<TwoParallel>()
        .register::<TimerThenSignal>()
        .register::<RetryThenFail>()
        .register::<Patched>()
        .register::<Countdown>()
        .register::<CleanupOnCancel>()
        .register::<LocalThenRemote>()
        .register::<ComposeOnUpdate>()
        .register::<Indexed>();
    registry
}

/// Update `compose` (refused for an empty input) runs `Compose` on its
/// input and returns the result; signal `done` closes the run with every
/// result so far.
pub struct ComposeOnUpdate;
impl Workflow for ComposeOnUpdate {
    const NAME: &'static str = "compose_on_update";
    type Input = ();
    type Output = Vec<String>;
    async fn run(ctx: WorkflowContext, (): ()) -> WorkflowResult<Vec<String>> {
        let composed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (results, handler_ctx) = (composed.clone(), ctx.clone());
        ctx.update_handler_validated(
            "compose",
            |input: &String| match input.is_empty() {
                true => Err("nothing to compose".to_string()),
                false => Ok(()),
            },
            move |input: String| {
                let (results, ctx) = (results.clone(), handler_ctx.clone());
                async move {
                    let out = ctx.activity::<Compose>(input).await?;
                    results.lock().unwrap().push(out.clone());
                    Ok(out)
                }
            },
        );
        ctx.signal::<()>("done").recv().await?;
        let all = composed.lock().unwrap().clone();
        Ok(all)
    }
}

/// Marks its progress in search attributes and its memo: stage "started"
/// (and the input in the memo), composes, then stage "done" and a count.
pub struct Indexed;
impl Workflow for Indexed {
    const NAME: &'static str = "indexed";
    type Input = String;
    type Output = String;
    async fn run(ctx: WorkflowContext, input: String) -> WorkflowResult<String> {
        use retrace::visibility::SearchValue;
        let stage = |s: &str| ("Stage".to_string(), SearchValue::Keyword(s.to_string()));
        ctx.upsert_search_attributes([stage("started")].into())?;
        ctx.upsert_memo([("input".to_string(), serde_json::json!(input))].into())?;
        let composed = ctx.activity::<Compose>(input).await?;
        let count = ("Count".to_string(), SearchValue::Int(1));
        ctx.upsert_search_attributes([stage("done"), count].into())?;
        Ok(composed)
    }
}

/// Doubles its input after a second: the child of [`DoubleInChild`].
pub struct Doubler;
impl Workflow for Doubler {
    const NAME: &'static str = "doubler";
    type Input = i64;
    type Output = i64;
    async fn run(ctx: WorkflowContext, n: i64) -> WorkflowResult<i64> {
        ctx.sleep(Duration::from_secs(1)).await?;
        Ok(n * 2)
    }
}

/// Awaits a [`Doubler`] child `double-{n}` on task queue "children"; says
/// so if that workflow id is taken.
pub struct DoubleInChild;
impl Workflow for DoubleInChild {
    const NAME: &'static str = "double_in_child";
    type Input = i64;
    type Output = String;
    async fn run(ctx: WorkflowContext, n: i64) -> WorkflowResult<String> {
        let child = ctx
            .child_workflow::<Doubler>(n)
            .workflow_id(format!("double-{n}"))
            .task_queue("children");
        match child.await {
            Ok(doubled) => Ok(format!("{n} doubled is {doubled}")),
            Err(retrace::workflow::WorkflowError::Child(
                error @ retrace::workflow::ChildWorkflowError::AlreadyStarted { .. },
            )) => Ok(error.to_string()),
            Err(other) => Err(other),
        }
    }
}

/// The child workflow fixtures' workflows (not in [`registry`]).
pub fn register_child_workflows(registry: &mut WorkflowRegistry) {
    registry.register::<DoubleInChild>().register::<Doubler>();
}
