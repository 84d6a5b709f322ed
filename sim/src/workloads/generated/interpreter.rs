//! The interpreter workflow and the scripted activity.
//!
//! [`Interpreter`] takes a [`RunSpec`] as input and runs its steps in order,
//! recording what each step saw in a [`StepReport`]; its result is the list of
//! reports, so the model can compare what the workflow saw with what the
//! history says. An activity's error does not fail the run: the report records
//! it. The run closes as canceled when the client cancels it.
//!
//! [`Scripted`] reads from its input what attempt `n` must do and does it; on
//! success it reports an effect to the `kv` service with its idempotency key,
//! so the effect ledger covers it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::future::Either;
use retrace::activity::{
    Activity, ActivityContext, ActivityOptions, ActivityResult, ActivityRunError, RetryPolicy,
    non_retryable, retryable,
};
use retrace::types::{RetryState, TimeoutType};
use retrace::workflow::{
    ActivityError, ActivityFuture, ChildWorkflowError, Workflow, WorkflowContext, WorkflowError,
    WorkflowResult, join_all, select,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::program::{
    ActivitySpec, Behaviour, Branch, CHILD_QUEUE, Cancellation, FLAKY_ATTEMPT_FAILURE,
    LISTED_FAILURE_TYPE, RunSpec, Step,
};
use crate::ServiceClient;

/// The query a client asks: how many top-level steps are done.
pub const QUERY_PROGRESS: &str = "progress";
/// How often a hanging attempt wakes (to heartbeat) without a heartbeat timeout.
pub const HANG_HEARTBEAT_EVERY_MS_MAX: u64 = 1_000;
/// A hanging attempt gives up after this long (far past any start-to-close).
pub const HANG_MS_MAX: u64 = 600_000;

/// What a scripted activity is given.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScriptInput {
    pub tag: String,
    pub script: Vec<Behaviour>,
    pub heartbeat_ms: Option<u64>,
    pub pad: String,
}

/// What a scripted activity returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScriptOutput {
    pub tag: String,
    /// The attempt that produced this result.
    pub attempt: u32,
    /// The attempt whose heartbeat details this attempt saw.
    pub seen_details: Option<u32>,
    pub pad: String,
}

/// A deliberately wrong activity, for the workload's own tests: each breaks
/// one promise the model checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// A non-retryable failure is reported as retryable (one attempt too many).
    NonRetryableRetried,
    /// A result claims to come from the attempt before the one that ran.
    WrongAttemptResult,
    /// A silent hang heartbeats anyway: its heartbeat timeout never fires
    /// (what the model sees if the service's heartbeat timer were lost).
    SilentHangHeartbeats,
}

/// The scripted activity.
/// The local activity of `Step::LocalActivity`: fails (retryably) every
/// attempt before its input, then returns the attempt that succeeded.
pub struct LocalScript;

impl Activity for LocalScript {
    const NAME: &'static str = "local_script";
    type Input = u32;
    type Output = u32;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(2))
    }
    async fn run(&self, ctx: ActivityContext, succeed_at: u32) -> ActivityResult<u32> {
        let attempt = ctx.attempt();
        if attempt < succeed_at {
            return Err(retryable(format!("local attempt {attempt} fails")));
        }
        Ok(attempt)
    }
}

/// Runs `Step::LocalActivity`: the attempt that succeeded, or how it failed.
async fn local_activity(
    ctx: &WorkflowContext,
    succeed_at: u32,
    backoff_ms: u64,
) -> Result<StepReport, WorkflowError> {
    let policy = RetryPolicy::default()
        .initial_interval_ms(backoff_ms)
        .backoff_coefficient(1.0)
        .maximum_attempts(5);
    let attempt = ctx
        .local_activity::<LocalScript>(succeed_at)
        .retry(policy)
        .await;
    Ok(StepReport::LocalActivity {
        attempt: attempt.map_err(|error| error.to_string()),
    })
}

pub struct Scripted {
    pub kv: ServiceClient,
    pub env: retrace::env::Env,
    pub bug: Option<PlantedBug>,
}

impl Activity for Scripted {
    const NAME: &'static str = "scripted";
    type Input = ScriptInput;
    type Output = ScriptOutput;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, ctx: ActivityContext, input: ScriptInput) -> ActivityResult<ScriptOutput> {
        assert!(!input.script.is_empty(), "a script has at least one entry");
        let attempt = ctx.attempt();
        let index = (attempt as usize - 1).min(input.script.len() - 1);
        let seen_details = ctx.heartbeat_details::<u32>();
        match input.script[index] {
            Behaviour::Succeed => self.succeed(&ctx, input, seen_details).await,
            Behaviour::FailRetryable => Err(retryable(format!("attempt {attempt} fails"))),
            Behaviour::FailNonRetryable if self.bug == Some(PlantedBug::NonRetryableRetried) => {
                Err(retryable("planted bug: should have been non-retryable"))
            }
            Behaviour::FailNonRetryable => {
                Err(non_retryable(format!("attempt {attempt} gives up")))
            }
            Behaviour::FailListed => Err(ActivityRunError::typed(LISTED_FAILURE_TYPE, "listed")),
            Behaviour::HangHeartbeating => self.hang(&ctx, input.heartbeat_ms, true).await,
            Behaviour::HangSilent => {
                let heartbeating = self.bug == Some(PlantedBug::SilentHangHeartbeats);
                self.hang(&ctx, input.heartbeat_ms, heartbeating).await
            }
            Behaviour::ReturnOversize => Ok(ScriptOutput {
                tag: input.tag,
                attempt,
                seen_details,
                pad: "x".repeat(super::program::PAYLOAD_BYTES_MAX as usize),
            }),
            Behaviour::HeartbeatThenFail => {
                ctx.heartbeat(&attempt);
                let wait_ms = input
                    .heartbeat_ms
                    .expect("generated with a heartbeat timeout");
                self.env.sleep_ms(wait_ms).await;
                Err(ActivityRunError::typed(
                    "Flaky",
                    format!("attempt {attempt} heartbeat, then failed"),
                ))
            }
        }
    }
}

impl Scripted {
    async fn succeed(
        &self,
        ctx: &ActivityContext,
        input: ScriptInput,
        seen_details: Option<u32>,
    ) -> ActivityResult<ScriptOutput> {
        let attempt = ctx.attempt();
        let request = json!({"op": "put", "key": input.tag, "value": attempt,
                             "idempotency_key": ctx.idempotency_key()});
        self.kv
            .call(ctx, request)
            .await
            .map_err(|e| ActivityRunError::typed("Unavailable", e.to_string()))?;
        let attempt = match self.bug {
            Some(PlantedBug::WrongAttemptResult) if attempt > 1 => attempt - 1,
            _ => attempt,
        };
        Ok(ScriptOutput {
            tag: input.tag,
            attempt,
            seen_details,
            pad: input.pad,
        })
    }

    /// Hangs (heartbeating or not) until canceled, far past any timeout.
    async fn hang(
        &self,
        ctx: &ActivityContext,
        heartbeat_ms: Option<u64>,
        heartbeating: bool,
    ) -> ActivityResult<ScriptOutput> {
        // Often enough to beat the heartbeat timeout; without one the worker
        // sends heartbeats only every 30 s anyway.
        let every_ms = heartbeat_ms.map_or(HANG_HEARTBEAT_EVERY_MS_MAX, |ms| (ms / 3).max(1));
        let mut waited_ms = 0;
        while waited_ms < HANG_MS_MAX {
            if heartbeating {
                ctx.heartbeat(&ctx.attempt());
            }
            let sleep = self.env.sleep_ms(every_ms);
            let cancelled = ctx.cancelled();
            futures::pin_mut!(sleep, cancelled);
            if let Either::Right(_) = select(sleep, cancelled).await {
                return Err(ActivityRunError::Canceled { details: None });
            }
            waited_ms += every_ms;
        }
        Err(retryable("hung for the longest hang"))
    }
}

/// How an activity ended, as the workflow saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ActivityReport {
    Completed {
        attempt: u32,
        seen_details: Option<u32>,
        pad_bytes: usize,
    },
    Failed {
        failure_type: String,
        retry_state: RetryState,
    },
    TimedOut {
        timeout_type: TimeoutType,
        retry_state: RetryState,
    },
    Canceled,
    /// Anything else (bad options, a payload that did not decode).
    Error(String),
}

/// What one step saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StepReport {
    Activity {
        tag: String,
        report: ActivityReport,
    },
    Timer,
    Signal {
        value: u64,
    },
    /// The value update's handler ran with.
    Update {
        value: u64,
    },
    /// A condition wait: the signal's value, whether the condition held
    /// before its timeout, and the workflow's time when the wait ended.
    Condition {
        value: u64,
        held: bool,
        at_ms: u64,
    },
    SideEffect {
        value: u64,
    },
    /// The attempt that succeeded, or why it failed.
    LocalActivity {
        attempt: Result<u32, String>,
    },
    Random {
        value: u64,
    },
    Uuid {
        value: String,
    },
    Now {
        ms: u64,
    },
    Patched {
        taken: bool,
    },
    Upsert,
    Join(Vec<StepReport>),
    /// The run's age when the bug had passed.
    TransientBug {
        age_ms: u64,
    },
    /// Whether the signal to another workflow was delivered.
    External {
        delivered: bool,
    },
    /// How the child ended as its parent saw it ("Completed", "Failed",
    /// "Canceled", "TimedOut", "Terminated"), or "Started" if the parent
    /// did not wait.
    Child {
        outcome: String,
    },
    /// Which side won the race, and the activity's report if it won.
    Select {
        activity_won: bool,
        report: Option<ActivityReport>,
    },
}

/// The failure type of a run that gives up (`Step::Fail`).
pub const GAVE_UP: &str = super::program::GIVES_UP_FAILURE;

/// What a transient bug's panic says (the panic hook keeps it quiet).
pub const TRANSIENT_BUG: &str = "generated transient workflow bug";

/// Keeps the planned panics of `TransientBug` steps off stderr; any other
/// panic is reported as before.
pub fn quiet_transient_bug_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .unwrap_or_default();
            if !message.starts_with(TRANSIENT_BUG) {
                previous(info);
            }
        }));
    });
}

/// The interpreter workflow.
pub struct Interpreter;

impl Workflow for Interpreter {
    const NAME: &'static str = "interpreter";
    type Input = RunSpec;
    type Output = Vec<StepReport>;
    async fn run(ctx: WorkflowContext, spec: RunSpec) -> WorkflowResult<Vec<StepReport>> {
        let attempt = ctx.info().attempt;
        if let Some(retry) = spec.retry
            && spec.continued == 0
            && attempt <= retry.failing_attempts
        {
            let message = format!("attempt {attempt} fails on purpose");
            return Err(WorkflowError::application(FLAKY_ATTEMPT_FAILURE, message));
        }
        if spec.continued < spec.continue_as_new {
            return Err(continue_chain(&ctx, &spec).await);
        }
        let ended = run_steps(&ctx, &spec).await;
        match (&spec.cleanup, ended) {
            (Some(cleanup), Err(error)) if error.is_cancellation() && ctx.is_cancel_requested() => {
                // Shielded: the run's cancellation does not reach it.
                let shielded = ctx.shielded_scope();
                let _cleaned = schedule(shielded.ctx(), cleanup).await;
                Err(WorkflowError::Canceled)
            }
            (_, ended) => ended,
        }
    }
}

/// Runs the program's steps, recording what each saw.
async fn run_steps(ctx: &WorkflowContext, spec: &RunSpec) -> WorkflowResult<Vec<StepReport>> {
    let shared = Shared {
        ctx: ctx.clone(),
        carried: std::sync::Arc::new(std::sync::Mutex::new(spec.carried.clone())),
        losers: Losers::default(),
        failed_step: Default::default(),
        updates_done: Default::default(),
    };
    register_updates(ctx, spec, &shared.updates_done);
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = progress.clone();
    ctx.query_handler(QUERY_PROGRESS, move |(): ()| {
        seen.load(std::sync::atomic::Ordering::SeqCst)
    });
    let mut reports = Vec::with_capacity(spec.steps.len());
    for step in &spec.steps {
        let run = run_step(ctx, &shared, step);
        let waits_through_cancel =
            matches!(step, Step::Activity(a) if a.cancellation == Cancellation::WaitCompleted);
        let signal_wait = matches!(
            step,
            Step::Signal { .. } | Step::Condition { .. } | Step::Update { .. }
        );
        if waits_through_cancel || signal_wait {
            // An activity that waits for its cancellation to complete; a
            // signal wait, which the SDK itself must end with Canceled
            // when the run is asked to cancel (no race with `cancelled()`
            // here, or a wait the cancel never reaches would go unseen).
            reports.push(run.await?);
        } else {
            let cancelled = ctx.cancelled();
            futures::pin_mut!(cancelled);
            match select(run, cancelled).await {
                Either::Left((report, _)) => reports.push(report?),
                Either::Right(_) => return Err(WorkflowError::Canceled),
            }
        }
        if !matches!(step, Step::Activity(_) | Step::Child(_)) {
            // Only a top-level activity step right before `Fail` counts.
            *shared.failed_step.lock().expect("failed step lock") = None;
        }
        progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if ctx.is_cancel_requested() {
            return Err(WorkflowError::Canceled);
        }
    }
    Ok(reports)
}

/// A run of a chain that is not the last: waits, drains the signals it got
/// into the input of the next run, and continues as new (or ends as
/// canceled if asked to meanwhile).
async fn continue_chain(ctx: &WorkflowContext, spec: &RunSpec) -> WorkflowError {
    let wait = ctx.sleep(Duration::from_millis(super::program::CONTINUE_AFTER_MS));
    let cancelled = ctx.cancelled();
    futures::pin_mut!(wait, cancelled);
    match select(wait, cancelled).await {
        Either::Left((Ok(()), _)) => {}
        Either::Left((Err(error), _)) => return error,
        Either::Right(_) => return WorkflowError::Canceled,
    }
    // A cancel request is the run's own: the next run would never see it
    // (the timer and the request may both be in this activation).
    if ctx.is_cancel_requested() {
        return WorkflowError::Canceled;
    }
    let mut carried = spec.carried.clone();
    for name in spec.signal_names() {
        while let Some(value) = ctx.signal::<u64>(name).try_recv() {
            match value {
                Ok(value) => carried.push((name.to_string(), value)),
                Err(error) => return error.into(),
            }
        }
    }
    ctx.continue_as_new(&spec.continued_as(spec.continued + 1, carried))
}

/// What the steps of a run share: where their signals come from (those
/// carried from earlier runs of the chain first, then the run's own), and
/// the activities that lost a race.
#[derive(Clone)]
struct Shared {
    ctx: WorkflowContext,
    carried: std::sync::Arc<std::sync::Mutex<Vec<(String, u64)>>>,
    /// Races' losing activities, kept (not dropped) until the run ends: only
    /// their scope's cancel may cancel them, so a broken one shows.
    losers: Losers,
    /// How the step just run ended, if it was an activity that failed or
    /// timed out, or a child awaited that failed: a `Step::Fail` right after
    /// it fails the run with it.
    failed_step: std::sync::Arc<std::sync::Mutex<Option<WorkflowError>>>,
    /// The values the update handlers ran with, by update name.
    updates_done: UpdatesDone,
}

type UpdatesDone = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>;

/// Registers the handler of every update step: refuses values from
/// [`UPDATE_REFUSED_FROM`] on; sleeps on a durable timer, records the value
/// and answers `value + 1`.
fn register_updates(ctx: &WorkflowContext, spec: &RunSpec, done: &UpdatesDone) {
    use super::program::{UPDATE_HANDLER_SLEEP_MS, UPDATE_REFUSED_FROM};
    for step in &spec.steps {
        let Step::Update { name } = step else {
            continue;
        };
        let (ctx_handler, done, name_handler) = (ctx.clone(), done.clone(), name.clone());
        ctx.update_handler_validated(
            name,
            |value: &u64| match *value >= UPDATE_REFUSED_FROM {
                true => Err(format!("{value} is too large")),
                false => Ok(()),
            },
            move |value: u64| {
                let (ctx, done, name) = (ctx_handler.clone(), done.clone(), name_handler.clone());
                async move {
                    ctx.sleep(Duration::from_millis(UPDATE_HANDLER_SLEEP_MS))
                        .await?;
                    done.lock().expect("updates lock").insert(name, value);
                    Ok(value + 1)
                }
            },
        );
    }
}

/// Activities that lost a race, held until the run ends.
type Losers = std::sync::Arc<std::sync::Mutex<Vec<Pin<Box<ActivityFuture<ScriptOutput>>>>>>;

impl Shared {
    async fn recv(&self, name: &str) -> WorkflowResult<u64> {
        let carried = {
            let mut carried = self.carried.lock().expect("carried signals lock");
            let at = carried.iter().position(|(n, _)| n == name);
            at.map(|at| carried.remove(at).1)
        };
        match carried {
            Some(value) => Ok(value),
            None => Ok(self.ctx.signal::<u64>(name).recv().await?),
        }
    }
}

/// Waits on a flag that a second branch sets once signal `name` came; the
/// waiter is polled first, so only the executor's re-check wakes it.
async fn condition(
    ctx: &WorkflowContext,
    shared: &Shared,
    name: &str,
    timeout_ms: Option<u64>,
) -> WorkflowResult<StepReport> {
    let came = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (set, seen) = (came.clone(), came);
    let listen = async move {
        let value = shared.recv(name).await?;
        set.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok::<u64, WorkflowError>(value)
    };
    let holds = move || seen.load(std::sync::atomic::Ordering::SeqCst);
    let wait = async move {
        match timeout_ms {
            None => ctx.wait_condition(holds).await.map(|()| true),
            Some(ms) => {
                ctx.wait_condition_timeout(Duration::from_millis(ms), holds)
                    .await
            }
        }
    };
    let (held, value) = futures::join!(wait, listen);
    Ok(StepReport::Condition {
        value: value?,
        held: held?,
        at_ms: ctx.now().as_millis(),
    })
}

type StepFuture<'a> = Pin<Box<dyn Future<Output = WorkflowResult<StepReport>> + Send + 'a>>;

/// Runs a top-level activity step, remembering its error if it failed or
/// timed out (for a `Step::Fail` right after it).
async fn run_activity(ctx: &WorkflowContext, shared: &Shared, spec: &ActivitySpec) -> StepReport {
    let result = schedule(ctx, spec).await;
    let failed = match &result {
        Err(error @ (ActivityError::Failed { .. } | ActivityError::TimedOut { .. })) => {
            Some(WorkflowError::Activity(error.clone()))
        }
        _ => None,
    };
    *shared.failed_step.lock().expect("failed step lock") = failed;
    StepReport::Activity {
        tag: spec.tag.clone(),
        report: activity_report(result),
    }
}

/// The error a `Step::Fail` ends the run with: right after a failed
/// activity or child, its error, as `?` on it would (Temporal's
/// ActivityFailure or ChildWorkflowFailure); otherwise an application
/// failure.
fn give_up(shared: &Shared) -> WorkflowError {
    let failed = shared.failed_step.lock().expect("failed step lock").take();
    failed
        .unwrap_or_else(|| WorkflowError::application(GAVE_UP, "the program's last step gives up"))
}

fn run_step<'a>(ctx: &'a WorkflowContext, shared: &'a Shared, step: &'a Step) -> StepFuture<'a> {
    Box::pin(async move {
        Ok(match step {
            Step::Activity(spec) => run_activity(ctx, shared, spec).await,
            Step::Timer { duration_ms } => {
                ctx.sleep(Duration::from_millis(*duration_ms)).await?;
                StepReport::Timer
            }
            Step::Signal { name } => StepReport::Signal {
                value: shared.recv(name).await?,
            },
            Step::Update { name } => {
                let (done, wanted) = (shared.updates_done.clone(), name.clone());
                let ran = move || done.lock().expect("updates lock").contains_key(&wanted);
                ctx.wait_condition(ran).await?;
                let done = shared.updates_done.lock().expect("updates lock");
                StepReport::Update { value: done[name] }
            }
            Step::Condition { name, timeout_ms } => {
                condition(ctx, shared, name, *timeout_ms).await?
            }
            Step::SideEffect { value } => StepReport::SideEffect {
                value: ctx.side_effect(|| *value)?,
            },
            Step::LocalActivity {
                succeed_at,
                backoff_ms,
            } => local_activity(ctx, *succeed_at, *backoff_ms).await?,
            Step::Random => StepReport::Random {
                value: ctx.random(),
            },
            Step::Uuid => StepReport::Uuid { value: ctx.uuid() },
            Step::Now => StepReport::Now {
                ms: ctx.now().as_millis(),
            },
            Step::Patched { patch_id } => StepReport::Patched {
                taken: ctx.patched(patch_id),
            },
            Step::Upsert { name, value } => {
                let value = super::program::upsert_value(name, *value);
                ctx.upsert_search_attributes([(name.clone(), value)].into())?;
                StepReport::Upsert
            }
            Step::Join(branches) => StepReport::Join(run_join(ctx, branches).await?),
            Step::Fail => return Err(give_up(shared)),
            Step::TransientBug { until_ms } => {
                let age_ms = ctx.now().millis_since(ctx.info().start_time);
                if age_ms < *until_ms {
                    panic!(
                        "{TRANSIENT_BUG}: the run is {age_ms} ms old, the bug lasts {until_ms} ms"
                    );
                }
                StepReport::TransientBug { age_ms }
            }
            Step::Select { activity, timer_ms } => {
                race(ctx, activity, *timer_ms, &shared.losers).await?
            }
            Step::SignalExternal {
                target,
                name,
                value,
            } => match ctx.signal_external(target, None, name, value).await {
                Ok(()) => StepReport::External { delivered: true },
                Err(WorkflowError::ExternalWorkflowNotFound { .. }) => {
                    StepReport::External { delivered: false }
                }
                Err(error) => return Err(error),
            },
            Step::Child(child) => run_child(ctx, shared, child).await?,
            Step::CancelExternal { target } => match ctx.cancel_external(target, None).await {
                Ok(()) => StepReport::External { delivered: true },
                Err(WorkflowError::ExternalWorkflowNotFound { .. }) => {
                    StepReport::External { delivered: false }
                }
                Err(error) => return Err(error),
            },
        })
    })
}

/// Starts the child on the children's queue; awaits it if the parent waits.
async fn run_child(
    ctx: &WorkflowContext,
    shared: &Shared,
    child: &RunSpec,
) -> WorkflowResult<StepReport> {
    *shared.failed_step.lock().expect("failed step lock") = None;
    let of = child
        .parent
        .as_ref()
        .expect("a child's spec names its parent");
    let mut start = ctx
        .child_workflow::<Interpreter>(child.clone())
        .workflow_id(&child.workflow_id)
        .task_queue(CHILD_QUEUE)
        .parent_close_policy(of.policy);
    if let Some(ms) = child.execution_timeout_ms {
        start = start.execution_timeout(Duration::from_millis(ms));
    }
    let handle = start.start().await?;
    if !of.wait {
        let outcome = "Started".to_string();
        return Ok(StepReport::Child { outcome });
    }
    let result = handle.result().await;
    if let Err(failed @ WorkflowError::Child(ChildWorkflowError::Failed { .. })) = &result {
        *shared.failed_step.lock().expect("failed step lock") = Some(failed.clone());
    }
    let outcome = match result {
        Ok(_) => "Completed",
        Err(WorkflowError::Child(ChildWorkflowError::Failed { .. })) => "Failed",
        Err(WorkflowError::Child(ChildWorkflowError::Canceled { .. })) => "Canceled",
        Err(WorkflowError::Child(ChildWorkflowError::TimedOut { .. })) => "TimedOut",
        Err(WorkflowError::Child(ChildWorkflowError::Terminated { .. })) => "Terminated",
        Err(error) => return Err(error),
    };
    Ok(StepReport::Child {
        outcome: outcome.to_string(),
    })
}

async fn run_join(ctx: &WorkflowContext, branches: &[Branch]) -> WorkflowResult<Vec<StepReport>> {
    let futures = branches.iter().map(|branch| async move {
        match branch {
            Branch::Activity(spec) => Ok(StepReport::Activity {
                tag: spec.tag.clone(),
                report: activity_report(schedule(ctx, spec).await),
            }),
            Branch::Timer { duration_ms } => ctx
                .sleep(Duration::from_millis(*duration_ms))
                .await
                .map(|()| StepReport::Timer),
        }
    });
    join_all(futures).await.into_iter().collect()
}

async fn race(
    ctx: &WorkflowContext,
    spec: &ActivitySpec,
    timer_ms: u64,
    losers: &Losers,
) -> WorkflowResult<StepReport> {
    // The activity runs in a scope of its own, cancelled if the timer wins;
    // the loser is kept, not dropped (a drop would cancel it as well).
    let scope = ctx.cancellation_scope();
    let activity = Box::pin(schedule(scope.ctx(), spec));
    let timer = ctx.sleep(Duration::from_millis(timer_ms));
    futures::pin_mut!(timer);
    // The activity first: when both are ready in one activation it wins.
    match select(activity, timer).await {
        Either::Left((result, _timer)) => Ok(StepReport::Select {
            activity_won: true,
            report: Some(activity_report(result)),
        }),
        Either::Right((fired, activity)) => {
            scope.cancel();
            losers.lock().expect("losers lock").push(activity);
            fired?;
            Ok(StepReport::Select {
                activity_won: false,
                report: None,
            })
        }
    }
}

/// The activity future of `spec`, with its options.
pub fn schedule(ctx: &WorkflowContext, spec: &ActivitySpec) -> ActivityFuture<ScriptOutput> {
    let input = ScriptInput {
        tag: spec.tag.clone(),
        script: spec.script.clone(),
        heartbeat_ms: spec.timeouts.heartbeat_ms,
        pad: "p".repeat(spec.pad_bytes),
    };
    let t = &spec.timeouts;
    let mut options = ActivityOptions::default().retry(spec.retry.clone());
    options.schedule_to_start_timeout_ms = t.schedule_to_start_ms;
    options.start_to_close_timeout_ms = t.start_to_close_ms;
    options.schedule_to_close_timeout_ms = t.schedule_to_close_ms;
    options.heartbeat_timeout_ms = t.heartbeat_ms;
    options.cancellation_type = match spec.cancellation {
        Cancellation::TryCancel => retrace::activity::ActivityCancellationType::TryCancel,
        Cancellation::Abandon => retrace::activity::ActivityCancellationType::Abandon,
        Cancellation::WaitCompleted => {
            retrace::activity::ActivityCancellationType::WaitCancellationCompleted
        }
    };
    ctx.activity::<Scripted>(input).options(options)
}

fn activity_report(result: Result<ScriptOutput, ActivityError>) -> ActivityReport {
    match result {
        Ok(output) => ActivityReport::Completed {
            attempt: output.attempt,
            seen_details: output.seen_details,
            pad_bytes: output.pad.len(),
        },
        Err(ActivityError::Failed {
            failure,
            retry_state,
            ..
        }) => ActivityReport::Failed {
            failure_type: failure.failure_type,
            retry_state,
        },
        Err(ActivityError::TimedOut {
            timeout_type,
            retry_state,
            ..
        }) => ActivityReport::TimedOut {
            timeout_type,
            retry_state,
        },
        Err(ActivityError::Canceled) => ActivityReport::Canceled,
        Err(other) => ActivityReport::Error(other.to_string()),
    }
}
