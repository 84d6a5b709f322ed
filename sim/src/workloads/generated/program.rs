//! The program grammar: what one seed of the `generated` workload runs.
//!
//! A [`Program`] is drawn from the seed alone (splitmix64 over it, like the
//! swarm): a few runs, each a list of [`Step`]s the interpreter workflow
//! executes in order, plus what the client does to each run (signals, queries,
//! cancel, terminate) and when. Activities carry a *script*: what attempt `n`
//! does (succeed, fail retryably or not, hang past start-to-close, hang without
//! heartbeating, heartbeat then fail), so the reference model knows from the
//! program alone what every attempt was told to do.
//!
//! | step         | engine feature                                                        |
//! |--------------|-----------------------------------------------------------------------|
//! | `Activity`   | timeouts (each kind alone and combined), retry policies, scripts      |
//! | `Timer`      | durable timers                                                        |
//! | `Signal`     | a signal the client sends before or after the workflow listens        |
//! | `SideEffect`, `Random`, `Uuid`, `Now`, `Patched` | recorded / replayed values  |
//! | `LocalActivity` | a local activity retried in its task or after a durable timer        |
//! | `Join`       | activities and timers in parallel (`join_all`)                        |
//! | `Select`     | an activity raced against a timer; the loser is dropped (canceled)    |
//! | `TransientBug` | workflow code that panics while the run is young: failed workflow tasks, backoff, retry |
//! | `SignalExternal`, `CancelExternal` | signals and cancel requests to another run of the program |
//! | `Child`      | a child workflow on its own queue and worker, awaited or left to its parent close policy |
//! | `Update`     | waits until the client's update has run its handler (a durable timer); the client also sends updates the validator refuses, and repeats |
//!
//! A run in five is a *chain*: one or two runs first wait 700 ms, drain the
//! signals they received into the next run's input and continue as new
//! (`RunSpec::continue_as_new`); the chain's last run runs the steps, so the
//! client's actions land in any run of the chain ([`super::chain`] checks it).
//!
//! Half the runs also carry a *cancel probe*: an activity that heartbeats while
//! it hangs, dropped by a race against a short timer while its attempt runs,
//! and a timer past its start-to-close, so the cancel must land.
//!
//! Besides its steps, the client may send a run a *shaped* signal (a payload
//! of exactly the byte or depth limit, one past it, or far past it) and start
//! a workflow whose input is over a limit: what is within the limits must be
//! stored once, what is over must be refused and never stored. It may also
//! start a workflow with a flaw the SDK would not send (blank ids, zero
//! timeouts): refused as invalid, never stored.
//!
//! Every feature is named by [`Feature`]; [`Program::features`] lists those a
//! program uses, so a test can show the grammar covers all of them.

use std::collections::BTreeSet;

use retrace::activity::RetryPolicy;
use serde::{Deserialize, Serialize};

use super::cron::CronSpec;
use crate::Swarm;

/// Runs a program starts, at most.
pub const RUNS_MAX: usize = 3;
/// Top-level steps of one run, at most.
pub const STEPS_MAX: usize = 5;
/// Branches of a join, at most.
pub const JOIN_WIDTH_MAX: usize = 3;
/// The workers' window for local activities in one workflow task.
pub const LOCAL_WINDOW_MS: u64 = 5_000;
/// Scripted attempts of one activity, at most (the last one repeats).
pub const SCRIPT_LEN_MAX: usize = 4;
/// The service's payload limit in the `generated` workload (small, so that
/// payloads near it are cheap to simulate).
pub const PAYLOAD_BYTES_MAX: u64 = 12 * 1024;
/// Payload bytes of each signal of a burst.
pub const BURST_SIGNAL_BYTES: u64 = 4 * 1024;
/// Signals of one burst.
pub const BURST_SIGNALS: usize = 6;
/// The service's limit on signal bytes buffered while a workflow task runs,
/// in the `generated` workload: three burst signals exactly, so a third
/// buffered one fits and a fourth is refused (both sides of the bound).
pub const BUFFERED_PAYLOAD_BYTES_MAX: u64 = 3 * BURST_SIGNAL_BYTES;
/// How far below the limit a "near the limit" payload stays.
pub const PAYLOAD_SLACK_BYTES: usize = 256;
/// The failure type retry policies may list as non-retryable.
pub const LISTED_FAILURE_TYPE: &str = "Fatal";
/// Activity capacity of a worker, at most.
pub const ACTIVITIES_MAX_MAX: usize = 4;
/// Workflow cache size of a worker, at most (small: runs are evicted).
pub const CACHE_RUNS_MAX_MAX: usize = 3;

/// What one attempt of a scripted activity does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Behaviour {
    /// Reports an effect to the service, then returns its result.
    Succeed,
    /// Fails with a retryable failure (type `ActivityError`).
    FailRetryable,
    /// Fails with a failure marked non-retryable.
    FailNonRetryable,
    /// Fails with type [`LISTED_FAILURE_TYPE`], which the policy lists.
    FailListed,
    /// Heartbeats its attempt number while it hangs past start-to-close.
    HangHeartbeating,
    /// Hangs without heartbeating.
    HangSilent,
    /// Heartbeats its attempt number, waits for the heartbeat to reach the
    /// service, then fails retryably (type `Flaky`): the next attempt must see
    /// the details.
    HeartbeatThenFail,
    /// Returns a result over the service's payload limit: the service fails
    /// the attempt (type `PayloadTooLarge`), not to be retried.
    ReturnOversize,
}

impl Behaviour {
    /// True if an attempt doing this never returns by itself.
    pub fn hangs(self) -> bool {
        matches!(self, Behaviour::HangHeartbeating | Behaviour::HangSilent)
    }

    /// True if the attempt records heartbeat details.
    pub fn heartbeats(self) -> bool {
        matches!(
            self,
            Behaviour::HangHeartbeating | Behaviour::HeartbeatThenFail
        )
    }

    /// True if the attempt's failure stops the retries.
    pub fn stops_retries(self) -> bool {
        matches!(
            self,
            Behaviour::FailNonRetryable | Behaviour::FailListed | Behaviour::ReturnOversize
        )
    }
}

/// The four activity timeouts (`None`: not set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    pub schedule_to_start_ms: Option<u64>,
    pub start_to_close_ms: Option<u64>,
    pub schedule_to_close_ms: Option<u64>,
    pub heartbeat_ms: Option<u64>,
}

impl Timeouts {
    /// The start-to-close the service applies (it defaults to schedule-to-close).
    pub fn effective_start_to_close_ms(&self) -> u64 {
        let ms = self.start_to_close_ms.or(self.schedule_to_close_ms);
        ms.expect("every generated activity has a start-to-close or schedule-to-close timeout")
    }
}

/// How the workflow gives up on an activity it no longer waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cancellation {
    /// Ask the service to cancel it.
    TryCancel,
    /// Walk away; the activity runs on.
    Abandon,
    /// Ask the service to cancel it, and wait until it closes (a top-level
    /// activity step waits through the run's cancellation).
    WaitCompleted,
}

/// One scheduled activity: its options and its script.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivitySpec {
    /// Unique in the program (`r0s2`, `r1s3j0`, ...).
    pub tag: String,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    /// Attempt `n` does `script[n - 1]`; the last entry repeats.
    pub script: Vec<Behaviour>,
    /// Bytes of padding in the input and the result (0, or near the limit).
    pub pad_bytes: usize,
    pub cancellation: Cancellation,
}

impl ActivitySpec {
    /// What attempt `attempt` (from 1) does.
    pub fn behaviour(&self, attempt: u32) -> Behaviour {
        assert!(attempt >= 1, "attempts are numbered from 1");
        assert!(!self.script.is_empty(), "a script has at least one entry");
        let index = (attempt as usize - 1).min(self.script.len() - 1);
        self.script[index]
    }
}

/// A leaf of a join.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Branch {
    Activity(ActivitySpec),
    Timer { duration_ms: u64 },
}

/// One step of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Step {
    Activity(ActivitySpec),
    Timer {
        duration_ms: u64,
    },
    /// Waits for signal `name` (the client sends it exactly once).
    Signal {
        name: String,
    },
    SideEffect {
        value: u64,
    },
    Random,
    Uuid,
    Now,
    Patched {
        patch_id: String,
    },
    /// `ctx.upsert_search_attributes` of one attribute ([`UPSERT_NAMES`]),
    /// its value made by [`upsert_value`] from `value`.
    Upsert {
        name: String,
        value: i64,
    },
    Join(Vec<Branch>),
    /// Workflow code with a transient bug: it panics while the run is younger
    /// than `until_ms`, so its workflow tasks fail and come back after the
    /// service's backoff until the bug has passed.
    TransientBug {
        until_ms: u64,
    },
    /// The workflow gives up: it returns an application failure, so the run
    /// closes Failed (always the run's last step).
    Fail,
    /// The activity raced against a timer of `timer_ms`; the loser is dropped.
    Select {
        activity: ActivitySpec,
        timer_ms: u64,
    },
    /// `ctx.wait_condition` (with a timeout of `timeout_ms` if set) on a flag
    /// that a second branch, waiting for signal `name`, sets: the waiter is
    /// polled first, so only the executor's re-check can wake it.
    Condition {
        name: String,
        timeout_ms: Option<u64>,
    },
    /// `ctx.signal_external` to another run of the program (its workflow id's
    /// current run), which waits for nothing: the signal is stored if that
    /// run is open when it is delivered, and the sender is told which.
    SignalExternal {
        target: String,
        name: String,
        value: u64,
    },
    /// `ctx.cancel_external` of another run of the program: that run may be
    /// canceled although its client never asks.
    CancelExternal {
        target: String,
    },
    /// A local activity (`local_script`) that fails its attempts before
    /// `succeed_at`, retried after `backoff_ms`: inside the workflow task
    /// while the backoff ends within the worker's window, else after a
    /// durable timer.
    LocalActivity {
        succeed_at: u32,
        backoff_ms: u64,
    },
    /// A child workflow running this spec (which names its parent, its
    /// parent close policy and whether the parent awaits its result) on
    /// [`CHILD_QUEUE`].
    Child(Box<RunSpec>),
    /// Waits until update `name`'s handler ran (the client sends it once
    /// with a value under [`UPDATE_REFUSED_FROM`], maybe again with the
    /// same id, and maybe a refused one with another id).
    Update {
        name: String,
    },
}

/// Update values from this one on are refused by the validator.
pub const UPDATE_REFUSED_FROM: u64 = 1_000_000;
/// The durable timer each update handler sleeps on before it returns
/// (a duration no other step uses, so its timers can be counted).
pub const UPDATE_HANDLER_SLEEP_MS: u64 = 450;

/// The task queue of child workflows (one worker polls it in a program with
/// children).
pub const CHILD_QUEUE: &str = "sim-children";

/// A child's place: its parent's workflow id, what the parent's close does
/// to it, and whether the parent awaits its result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildOf {
    pub parent: String,
    pub policy: retrace::types::ParentClosePolicy,
    pub wait: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// What the client does to a run, `at_ms` after it started all runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientAction {
    /// Signal `name` with `value`, once (request id `{workflow_id}/{name}`).
    /// `with_start`: sent by signal-with-start: at 0 ms it starts the run
    /// (the signal in its first write); later it must find the run running
    /// and only signal it (id reuse policy RejectDuplicate: never a second run).
    Signal {
        name: String,
        value: u64,
        #[serde(default, skip_serializing_if = "is_false")]
        with_start: bool,
    },
    Query,
    Cancel,
    Terminate,
    /// Asks the service to describe the run.
    Describe,
    /// A signal to a name the workflow never reads, with a payload of
    /// `shape`: stored once if within the limits, refused and never stored
    /// if over one.
    ShapedSignal {
        name: String,
        shape: Shape,
    },
    /// A start of a new workflow id whose input has `shape`, always over a
    /// limit: refused, never stored.
    ShapedStart {
        workflow_id: String,
        shape: Shape,
    },
    /// The earlier [`ClientAction::Signal`] named `name` sent again with its
    /// request id, as a client whose reply was lost retries it: answered,
    /// never delivered twice.
    RepeatSignal {
        name: String,
        value: u64,
    },
    /// A start with a `flaw` the SDK's own checks would not send: refused
    /// as invalid, never stored.
    InvalidStart {
        workflow_id: String,
        flaw: StartFlaw,
    },
    /// Update `name` with `value` as `update_id`: accepted and answered
    /// with `value + 1` if under [`UPDATE_REFUSED_FROM`], else refused.
    Update {
        name: String,
        value: u64,
        update_id: String,
    },
}

/// What is wrong with an [`ClientAction::InvalidStart`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartFlaw {
    /// A workflow id of blanks only (not empty, so it passes the edge).
    BlankWorkflowId,
    /// A task queue of blanks only.
    BlankTaskQueue,
    /// An execution timeout of 0 ms.
    ZeroExecutionTimeout,
    /// A workflow task timeout of 0 ms.
    ZeroWorkflowTaskTimeout,
}

impl StartFlaw {
    /// The workflow id the start uses (blanks for `BlankWorkflowId`).
    pub fn workflow_id(self, workflow_id: &str) -> String {
        match self {
            StartFlaw::BlankWorkflowId => "   ".to_string(),
            _ => workflow_id.to_string(),
        }
    }

    /// Words the service's refusal must contain.
    pub fn refusal_marker(self) -> &'static str {
        match self {
            StartFlaw::BlankWorkflowId | StartFlaw::BlankTaskQueue => "must not be empty",
            StartFlaw::ZeroExecutionTimeout | StartFlaw::ZeroWorkflowTaskTimeout => {
                "timeouts must be at least 1 ms"
            }
        }
    }
}

/// A payload at or past one of the service's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shape {
    /// A JSON string of exactly this many encoded bytes.
    Bytes(u64),
    /// Arrays nested this many levels deep.
    Depth(u64),
}

impl Shape {
    /// The payload itself.
    pub fn payload(self) -> serde_json::Value {
        match self {
            Shape::Bytes(bytes) => {
                let quotes = 2;
                serde_json::Value::String("x".repeat(bytes.saturating_sub(quotes) as usize))
            }
            Shape::Depth(depth) => {
                let mut value = serde_json::Value::Array(Vec::new());
                for _ in 1..depth {
                    value = serde_json::Value::Array(vec![value]);
                }
                value
            }
        }
    }

    /// True if the service must accept it.
    pub fn within_limits(self) -> bool {
        match self {
            Shape::Bytes(bytes) => bytes <= PAYLOAD_BYTES_MAX,
            Shape::Depth(depth) => depth as usize <= retrace::history::PAYLOAD_DEPTH_MAX,
        }
    }

    /// What the service's refusal of it says (an error code or its words).
    pub fn refusal_marker(self) -> &'static str {
        match self {
            Shape::Bytes(_) => "PayloadTooLarge",
            Shape::Depth(_) => "levels deep, more than the limit",
        }
    }
}

/// A client action and its time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timed {
    pub at_ms: u64,
    pub action: ClientAction,
}

/// One workflow run: the interpreter's input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub workflow_id: String,
    pub steps: Vec<Step>,
    /// The run's execution timeout.
    pub execution_timeout_ms: Option<u64>,
    /// What the client does to it (sorted by time).
    pub client: Vec<Timed>,
    /// Runs that continue as new before the one that runs the steps: each
    /// sleeps [`CONTINUE_AFTER_MS`], drains the signals it got into
    /// `carried`, and continues as new (so the client's actions can land
    /// in any run of the chain).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub continue_as_new: u8,
    /// Which run of the chain this is (0: the first); set by the interpreter.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub continued: u8,
    /// Signals the earlier runs of the chain received, in order, carried into
    /// this run's input by the interpreter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub carried: Vec<(String, u64)>,
    /// An activity the workflow runs in a shielded cancellation scope once
    /// the run is asked to cancel, before it ends canceled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<ActivitySpec>,
    /// Set on a child workflow's spec (`Step::Child`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ChildOf>,
    /// The run is started with this start delay: its first workflow task
    /// waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_delay_ms: Option<u64>,
    /// The run is started with a workflow retry policy, and its first
    /// attempts fail on purpose (see [`WorkflowRetry`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<WorkflowRetry>,
}

/// A workflow retry policy, and how many attempts fail before one runs the
/// steps: an attempt up to `failing_attempts` fails at once, in its first
/// workflow task, with [`FLAKY_ATTEMPT_FAILURE`] (so it does nothing the
/// model would count). With `failing_attempts >= maximum_attempts` (not 0)
/// the policy gives up and the workflow fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowRetry {
    /// The policy's `maximum_attempts` (0: unlimited).
    pub maximum_attempts: u32,
    pub failing_attempts: u32,
}

/// The failure type of an attempt that fails on purpose.
pub const FLAKY_ATTEMPT_FAILURE: &str = "FlakyAttempt";
/// The failure type of a run that gives up by itself: the workflow retry
/// policy lists it as non-retryable.
pub const GIVES_UP_FAILURE: &str = "GaveUp";
/// The first backoff of a workflow retry policy (doubling after it).
pub const WORKFLOW_RETRY_INTERVAL_MS: u64 = 250;
/// Start delays a run may be drawn with.
pub const START_DELAYS_MS: [u64; 3] = [300, 1_500, 4_000];

impl WorkflowRetry {
    /// The retry policy the run is started with.
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy::default()
            .initial_interval_ms(WORKFLOW_RETRY_INTERVAL_MS)
            .backoff_coefficient(2.0)
            .maximum_attempts(self.maximum_attempts)
            .non_retryable(GIVES_UP_FAILURE)
    }

    /// True if the policy gives up before an attempt runs the steps.
    pub fn exhausted(&self) -> bool {
        self.maximum_attempts != 0 && self.failing_attempts >= self.maximum_attempts
    }
}

/// How long each run of a chain waits before it continues as new.
pub const CONTINUE_AFTER_MS: u64 = 700;

fn is_zero(value: &u8) -> bool {
    *value == 0
}

impl RunSpec {
    /// The chain's position `continued`, carrying `carried`: what run
    /// `continued` of the chain must get as input.
    pub fn continued_as(&self, continued: u8, carried: Vec<(String, u64)>) -> RunSpec {
        RunSpec {
            continued,
            carried,
            ..self.clone()
        }
    }

    /// The names of the signals the client sends with `ClientAction::Signal`.
    pub fn signal_names(&self) -> BTreeSet<&str> {
        self.client
            .iter()
            .filter_map(|t| match &t.action {
                ClientAction::Signal { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Every activity of the run, with whether the workflow may drop it.
    pub fn activities(&self) -> Vec<(&ActivitySpec, bool)> {
        let mut out = Vec::new();
        for step in &self.steps {
            match step {
                Step::Activity(a) => out.push((a, false)),
                Step::Select { activity, .. } => out.push((activity, true)),
                Step::Join(branches) => out.extend(branches.iter().filter_map(|b| match b {
                    Branch::Activity(a) => Some((a, false)),
                    Branch::Timer { .. } => None,
                })),
                _ => {}
            }
        }
        out
    }

    /// Every timer duration the run may start.
    pub fn timer_durations(&self) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        for step in &self.steps {
            match step {
                Step::Update { .. } => {
                    out.insert(UPDATE_HANDLER_SLEEP_MS);
                }
                Step::Timer { duration_ms } => {
                    out.insert(*duration_ms);
                }
                Step::Select { timer_ms, .. } => {
                    out.insert(*timer_ms);
                }
                Step::Join(branches) => {
                    for branch in branches {
                        if let Branch::Timer { duration_ms } = branch {
                            out.insert(*duration_ms);
                        }
                    }
                }
                Step::Condition {
                    timeout_ms: Some(timeout_ms),
                    ..
                } => {
                    out.insert(*timeout_ms);
                }
                // Retries whose backoff outlasts the task's window wait on
                // a durable timer of the backoff.
                Step::LocalActivity { backoff_ms, .. } => {
                    out.insert(*backoff_ms);
                }
                _ => {}
            }
        }
        out
    }

    /// True if the workflow waits for activity `tag` to close even when the
    /// run is canceled (a top-level step with `WaitCompleted`).
    pub fn waits_through_cancel(&self, tag: &str) -> bool {
        self.steps.iter().any(|step| {
            matches!(step, Step::Activity(a)
                if a.tag == tag && a.cancellation == Cancellation::WaitCompleted)
        })
    }

    /// True if the run's last step gives up (the run must close Failed).
    pub fn gives_up(&self) -> bool {
        self.steps.last() == Some(&Step::Fail)
    }

    /// True if the run gives up with its own failure (type
    /// [`GIVES_UP_FAILURE`]), not an activity's or a child's it propagates.
    pub fn gives_up_plainly(&self) -> bool {
        let before = self.steps.len().checked_sub(2).map(|at| &self.steps[at]);
        self.gives_up() && !matches!(before, Some(Step::Activity(_) | Step::Child(_)))
    }

    /// The runs this run asks to cancel (`Step::CancelExternal`).
    pub fn cancels(&self) -> impl Iterator<Item = &str> {
        self.steps.iter().filter_map(|step| match step {
            Step::CancelExternal { target } => Some(target.as_str()),
            _ => None,
        })
    }

    /// The children this run starts.
    pub fn children(&self) -> impl Iterator<Item = &RunSpec> {
        self.steps.iter().filter_map(|step| match step {
            Step::Child(child) => Some(child.as_ref()),
            _ => None,
        })
    }

    /// True if one of the client's actions on the run satisfies `what`.
    pub fn client_does(&self, what: fn(&ClientAction) -> bool) -> bool {
        self.client.iter().any(|t| what(&t.action))
    }

    /// The signal the run is started with (by signal-with-start), if any.
    pub fn start_signal(&self) -> Option<(&str, u64)> {
        self.client.iter().find_map(|t| match &t.action {
            ClientAction::Signal {
                name,
                value,
                with_start: true,
            } if t.at_ms == 0 => Some((name.as_str(), *value)),
            _ => None,
        })
    }
}

/// Everything one seed runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Program {
    pub seed: u64,
    /// The seed's world has no faults at all: the model is strict.
    pub calm: bool,
    pub runs: Vec<RunSpec>,
    /// Activity capacity of each worker (by worker index).
    pub activities_max: Vec<usize>,
    /// Cache size of each worker (by worker index).
    pub cache_runs_max: Vec<usize>,
    /// A cron workflow the client starts beside the runs, and cancels.
    pub cron: Option<CronSpec>,
}

/// Workers of the `generated` workload.
pub const WORKERS: usize = 2;

/// Every feature the grammar can draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    ScheduleToStartTimeout,
    StartToCloseTimeout,
    ScheduleToCloseAlone,
    ScheduleToCloseExpiring,
    HeartbeatTimeout,
    AllTimeoutsCombined,
    MaximumAttempts,
    Backoff,
    NonRetryableListed,
    NonRetryableFlag,
    ScriptSucceed,
    ScriptFailRetryable,
    ScriptHang,
    ScriptHangSilent,
    ScriptHeartbeatThenFail,
    ActivityCancelTry,
    ActivityAbandon,
    ActivityCancelWait,
    Timer,
    SignalBeforeListen,
    SignalAfterListen,
    QueryEarly,
    QueryLate,
    SideEffect,
    Random,
    Uuid,
    Now,
    Patched,
    Join,
    Select,
    PayloadNearLimit,
    PayloadAtLimit,
    PayloadOverLimit,
    PayloadAtDepthLimit,
    PayloadTooDeep,
    RefusedStart,
    InvalidStart,
    TransientWorkflowBug,
    WorkflowFails,
    Describe,
    WorkflowCancel,
    CancelEndsSignalWait,
    WorkflowTerminate,
    ExecutionTimeout,
    WorkerCapacityOne,
    WorkerCapacityMany,
    CacheEviction,
    CalmWorld,
    SignalBurst,
    SignalRepeated,
    ResultOverLimit,
    RogueWorker,
    SignalWithStart,
    SignalWithStartRunning,
    WaitCondition,
    WaitConditionTimeout,
    SignalExternal,
    CancelExternal,
    ShieldedCleanup,
    ScopeCancel,
    ContinueAsNew,
    ContinueAsNewTwice,
    /// A signal the client sends while the chain is still continuing: it
    /// lands in an earlier run and must be carried.
    ContinueAsNewCarriesSignal,
    /// A child workflow whose result the parent awaits.
    ChildWorkflow,
    /// A child the parent starts and leaves: its parent close policy decides.
    ChildStartedAndLeft,
    ChildTerminatedWithParent,
    ChildCanceledWithParent,
    ChildAbandoned,
    /// A child that waits for a signal nobody sends: only its parent's close
    /// (or cancel) ends it.
    ChildWaitsForever,
    /// A child that fails: the parent sees its failure.
    ChildFails,
    ChildContinuesAsNew,
    /// A run started with a start delay.
    StartDelay,
    /// A run whose first attempts fail and are retried by its workflow
    /// retry policy, until one runs the steps.
    WorkflowRetry,
    /// A run whose retry policy gives up: every attempt fails.
    WorkflowRetryExhausted,
    /// A cron workflow, canceled by the client.
    CronWorkflow,
    /// A local activity that succeeds at its first attempt.
    LocalActivity,
    /// A local activity retried inside its workflow task.
    LocalActivityRetried,
    /// A local activity whose backoff outlasts the task's window: retried
    /// after a durable timer.
    LocalActivityDurableBackoff,
    /// An update accepted, its handler run once, its result answered.
    Update,
    /// An update the workflow's validator refuses: nothing recorded.
    UpdateRefused,
    /// The workflow upserts a search attribute.
    SearchAttributeUpsert,
}

/// Every feature, for coverage tests.
pub const FEATURES: [Feature; 81] = [
    Feature::ScheduleToStartTimeout,
    Feature::StartToCloseTimeout,
    Feature::ScheduleToCloseAlone,
    Feature::ScheduleToCloseExpiring,
    Feature::HeartbeatTimeout,
    Feature::AllTimeoutsCombined,
    Feature::MaximumAttempts,
    Feature::Backoff,
    Feature::NonRetryableListed,
    Feature::NonRetryableFlag,
    Feature::ScriptSucceed,
    Feature::ScriptFailRetryable,
    Feature::ScriptHang,
    Feature::ScriptHangSilent,
    Feature::ScriptHeartbeatThenFail,
    Feature::ActivityCancelTry,
    Feature::ActivityAbandon,
    Feature::ActivityCancelWait,
    Feature::Timer,
    Feature::SignalBeforeListen,
    Feature::SignalAfterListen,
    Feature::QueryEarly,
    Feature::QueryLate,
    Feature::SideEffect,
    Feature::Random,
    Feature::Uuid,
    Feature::Now,
    Feature::Patched,
    Feature::Join,
    Feature::Select,
    Feature::PayloadNearLimit,
    Feature::PayloadAtLimit,
    Feature::PayloadOverLimit,
    Feature::PayloadAtDepthLimit,
    Feature::PayloadTooDeep,
    Feature::RefusedStart,
    Feature::InvalidStart,
    Feature::TransientWorkflowBug,
    Feature::WorkflowFails,
    Feature::Describe,
    Feature::WorkflowCancel,
    Feature::CancelEndsSignalWait,
    Feature::WorkflowTerminate,
    Feature::ExecutionTimeout,
    Feature::WorkerCapacityOne,
    Feature::WorkerCapacityMany,
    Feature::CacheEviction,
    Feature::CalmWorld,
    Feature::SignalBurst,
    Feature::SignalRepeated,
    Feature::ResultOverLimit,
    Feature::RogueWorker,
    Feature::SignalWithStart,
    Feature::SignalWithStartRunning,
    Feature::WaitCondition,
    Feature::WaitConditionTimeout,
    Feature::ContinueAsNew,
    Feature::ContinueAsNewTwice,
    Feature::ContinueAsNewCarriesSignal,
    Feature::SignalExternal,
    Feature::CancelExternal,
    Feature::ShieldedCleanup,
    Feature::ScopeCancel,
    Feature::ChildWorkflow,
    Feature::ChildStartedAndLeft,
    Feature::ChildTerminatedWithParent,
    Feature::ChildCanceledWithParent,
    Feature::ChildAbandoned,
    Feature::ChildWaitsForever,
    Feature::ChildFails,
    Feature::ChildContinuesAsNew,
    Feature::StartDelay,
    Feature::WorkflowRetry,
    Feature::WorkflowRetryExhausted,
    Feature::CronWorkflow,
    Feature::LocalActivity,
    Feature::LocalActivityRetried,
    Feature::LocalActivityDurableBackoff,
    Feature::Update,
    Feature::UpdateRefused,
    Feature::SearchAttributeUpsert,
];

/// splitmix64 over the seed: the program's own stream.
pub(crate) struct Draws(u64);

impl Draws {
    pub(crate) fn new(seed: u64) -> Draws {
        Draws(seed ^ 0x4745_4e45_5241_5445)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        assert!(!choices.is_empty());
        choices[(self.next() % choices.len() as u64) as usize]
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next() % bound
    }
}

/// Whether a seed's world is calm, decided from its swarm's own draw (the
/// swarm adjustment sees only the swarm; the program recomputes it from the
/// seed): one seed in four.
pub fn calm_from_salt(clock_salt: u64) -> bool {
    retrace::types::fnv1a64(&clock_salt.to_le_bytes()).is_multiple_of(4)
}

impl Program {
    /// The program of `seed`.
    pub fn generate(seed: u64) -> Program {
        let mut draws = Draws::new(seed);
        let calm = calm_from_salt(Swarm::from_seed(seed).clock_salt);
        let runs_count = 1 + draws.below(RUNS_MAX as u64) as usize;
        let mut runs: Vec<RunSpec> = (0..runs_count).map(|i| run(&mut draws, i)).collect();
        add_shaped_actions(seed, &mut runs);
        add_pressure_actions(seed, &mut runs);
        add_signal_with_start(seed, &mut runs);
        add_conditions(seed, &mut runs);
        add_external_signals(seed, &mut runs);
        add_cleanups(seed, &mut runs);
        add_children(seed, &mut runs);
        add_updates(seed, &mut runs);
        add_start_options(seed, &mut runs);
        let activities_max = (0..WORKERS)
            .map(|_| 1 + draws.below(ACTIVITIES_MAX_MAX as u64) as usize)
            .collect();
        let cache_runs_max = (0..WORKERS)
            .map(|_| 1 + draws.below(CACHE_RUNS_MAX_MAX as u64) as usize)
            .collect();
        let program = Program {
            seed,
            calm,
            runs,
            activities_max,
            cache_runs_max,
            cron: cron_spec(seed),
        };
        assert!((1..=RUNS_MAX).contains(&program.runs.len()));
        program
    }

    /// The run of `workflow_id` (a child's too).
    pub fn run(&self, workflow_id: &str) -> Option<&RunSpec> {
        let mut all = self.runs.iter().chain(self.children());
        all.find(|r| r.workflow_id == workflow_id)
    }

    /// The children the runs start (`Step::Child`), in run order.
    pub fn children(&self) -> impl Iterator<Item = &RunSpec> {
        self.runs.iter().flat_map(|run| run.children())
    }

    /// True if a rogue worker plays beside the runs (every calm seed: there
    /// each of its calls is answered once, so every answer is held to what
    /// it must be).
    pub fn rogue(&self) -> bool {
        self.calm
    }

    /// The features this program uses.
    pub fn features(&self) -> BTreeSet<Feature> {
        let mut out = BTreeSet::new();
        if self.calm {
            out.insert(Feature::CalmWorld);
        }
        if self.rogue() {
            out.insert(Feature::RogueWorker);
        }
        if self.activities_max.contains(&1) {
            out.insert(Feature::WorkerCapacityOne);
        }
        if self.activities_max.iter().any(|m| *m > 1) {
            out.insert(Feature::WorkerCapacityMany);
        }
        let runs = self.runs.len();
        if self.cache_runs_max.iter().any(|c| *c < runs) {
            out.insert(Feature::CacheEviction);
        }
        for run in &self.runs {
            run_features(run, &mut out);
        }
        for child in self.children() {
            child_features(child, &mut out);
        }
        if self.cron.is_some() {
            out.insert(Feature::CronWorkflow);
        }
        out
    }

    /// True if a run starts children (then the last worker polls [`CHILD_QUEUE`]).
    pub fn has_children(&self) -> bool {
        self.children().next().is_some()
    }
}

fn run_features(run: &RunSpec, out: &mut BTreeSet<Feature>) {
    if run.execution_timeout_ms.is_some() {
        out.insert(Feature::ExecutionTimeout);
    }
    if run.start_delay_ms.is_some() {
        out.insert(Feature::StartDelay);
    }
    match run.retry {
        Some(retry) if retry.exhausted() => out.insert(Feature::WorkflowRetryExhausted),
        Some(_) => out.insert(Feature::WorkflowRetry),
        None => false,
    };
    continue_features(run, out);
    if run.cleanup.is_some() {
        out.insert(Feature::ShieldedCleanup);
    }
    // A race's loser is canceled through the cancellation scope it ran in.
    if run.steps.iter().any(|s| matches!(s, Step::Select { .. })) {
        out.insert(Feature::ScopeCancel);
    }
    for timed in &run.client {
        match &timed.action {
            ClientAction::Cancel => out.insert(Feature::WorkflowCancel),
            ClientAction::Terminate => out.insert(Feature::WorkflowTerminate),
            ClientAction::Query if timed.at_ms < 1_000 => out.insert(Feature::QueryEarly),
            ClientAction::Query => out.insert(Feature::QueryLate),
            ClientAction::Signal {
                with_start: true, ..
            } if timed.at_ms == 0 => out.insert(Feature::SignalWithStart),
            ClientAction::Signal {
                with_start: true, ..
            } => out.insert(Feature::SignalWithStartRunning),
            ClientAction::Signal { .. } if timed.at_ms == 0 => {
                out.insert(Feature::SignalBeforeListen)
            }
            ClientAction::Signal { .. } => out.insert(Feature::SignalAfterListen),
            ClientAction::ShapedSignal { name, .. } if is_burst_signal(name) => {
                out.insert(Feature::SignalBurst)
            }
            ClientAction::ShapedSignal { shape, .. } => out.insert(shape_feature(*shape)),
            ClientAction::RepeatSignal { .. } => out.insert(Feature::SignalRepeated),
            ClientAction::ShapedStart { .. } => out.insert(Feature::RefusedStart),
            ClientAction::InvalidStart { .. } => out.insert(Feature::InvalidStart),
            ClientAction::Describe => out.insert(Feature::Describe),
            ClientAction::Update { value, .. } if *value >= UPDATE_REFUSED_FROM => {
                out.insert(Feature::UpdateRefused)
            }
            ClientAction::Update { .. } => out.insert(Feature::Update),
        };
    }
    step_features(run, out);
    let canceled = run.client_does(|a| matches!(a, ClientAction::Cancel));
    if canceled && run.steps.iter().any(|s| matches!(s, Step::Signal { .. })) {
        out.insert(Feature::CancelEndsSignalWait);
    }
    for (activity, dropped) in run.activities() {
        activity_features(activity, dropped, out);
        if canceled && run.waits_through_cancel(&activity.tag) {
            out.insert(Feature::ActivityCancelWait);
        }
    }
}

fn local_activity_feature(succeed_at: u32, backoff_ms: u64) -> Feature {
    match (succeed_at, backoff_ms) {
        (1, _) => Feature::LocalActivity,
        (_, backoff_ms) if backoff_ms < LOCAL_WINDOW_MS / 2 => Feature::LocalActivityRetried,
        _ => Feature::LocalActivityDurableBackoff,
    }
}

fn step_features(run: &RunSpec, out: &mut BTreeSet<Feature>) {
    for step in &run.steps {
        let feature = match step {
            Step::Timer { .. } => Feature::Timer,
            Step::SideEffect { .. } => Feature::SideEffect,
            Step::LocalActivity {
                succeed_at,
                backoff_ms,
            } => local_activity_feature(*succeed_at, *backoff_ms),
            Step::Random => Feature::Random,
            Step::Uuid => Feature::Uuid,
            Step::Now => Feature::Now,
            Step::TransientBug { .. } => Feature::TransientWorkflowBug,
            Step::Fail => Feature::WorkflowFails,
            Step::Patched { .. } => Feature::Patched,
            Step::Upsert { .. } => Feature::SearchAttributeUpsert,
            Step::Join(_) => Feature::Join,
            Step::Select { .. } => Feature::Select,
            Step::Condition {
                timeout_ms: None, ..
            } => Feature::WaitCondition,
            Step::Condition { .. } => Feature::WaitConditionTimeout,
            Step::SignalExternal { .. } => Feature::SignalExternal,
            Step::CancelExternal { .. } => Feature::CancelExternal,
            Step::Child(_) | Step::Signal { .. } | Step::Activity(_) | Step::Update { .. } => {
                continue;
            }
        };
        out.insert(feature);
    }
}

fn continue_features(run: &RunSpec, out: &mut BTreeSet<Feature>) {
    if run.continue_as_new == 0 {
        return;
    }
    out.insert(Feature::ContinueAsNew);
    if run.continue_as_new > 1 {
        out.insert(Feature::ContinueAsNewTwice);
    }
    let chain_ms = u64::from(run.continue_as_new) * CONTINUE_AFTER_MS;
    let early = |t: &Timed| matches!(t.action, ClientAction::Signal { .. }) && t.at_ms < chain_ms;
    if run.client.iter().any(early) {
        out.insert(Feature::ContinueAsNewCarriesSignal);
    }
}

fn activity_features(a: &ActivitySpec, dropped: bool, out: &mut BTreeSet<Feature>) {
    let t = &a.timeouts;
    let mut add = |cond: bool, feature| {
        if cond {
            out.insert(feature);
        }
    };
    add(
        t.schedule_to_start_ms.is_some(),
        Feature::ScheduleToStartTimeout,
    );
    add(t.start_to_close_ms.is_some(), Feature::StartToCloseTimeout);
    let s2c_alone = t.schedule_to_close_ms.is_some() && t.start_to_close_ms.is_none();
    add(s2c_alone, Feature::ScheduleToCloseAlone);
    let expiring = t.schedule_to_close_ms.is_some() && a.script.iter().all(|b| b.hangs());
    add(expiring, Feature::ScheduleToCloseExpiring);
    add(t.heartbeat_ms.is_some(), Feature::HeartbeatTimeout);
    let all = t.schedule_to_start_ms.is_some()
        && t.start_to_close_ms.is_some()
        && t.schedule_to_close_ms.is_some()
        && t.heartbeat_ms.is_some();
    add(all, Feature::AllTimeoutsCombined);
    add(a.retry.maximum_attempts > 0, Feature::MaximumAttempts);
    add(a.retry.backoff_coefficient > 1.0, Feature::Backoff);
    add(a.pad_bytes > 0, Feature::PayloadNearLimit);
    add(
        dropped && a.cancellation == Cancellation::TryCancel,
        Feature::ActivityCancelTry,
    );
    add(
        dropped && a.cancellation == Cancellation::Abandon,
        Feature::ActivityAbandon,
    );
    for b in &a.script {
        let feature = match b {
            Behaviour::Succeed => Feature::ScriptSucceed,
            Behaviour::FailRetryable => Feature::ScriptFailRetryable,
            Behaviour::FailNonRetryable => Feature::NonRetryableFlag,
            Behaviour::FailListed => Feature::NonRetryableListed,
            Behaviour::HangHeartbeating => Feature::ScriptHang,
            Behaviour::HangSilent => Feature::ScriptHangSilent,
            Behaviour::HeartbeatThenFail => Feature::ScriptHeartbeatThenFail,
            Behaviour::ReturnOversize => Feature::ResultOverLimit,
        };
        out.insert(feature);
    }
}

fn shape_feature(shape: Shape) -> Feature {
    match (shape, shape.within_limits()) {
        (Shape::Bytes(_), true) => Feature::PayloadAtLimit,
        (Shape::Bytes(_), false) => Feature::PayloadOverLimit,
        (Shape::Depth(_), true) => Feature::PayloadAtDepthLimit,
        (Shape::Depth(_), false) => Feature::PayloadTooDeep,
    }
}

/// Payloads at and just past the limits, and far past them.
fn shape(draws: &mut Draws) -> Shape {
    let depth_max = retrace::history::PAYLOAD_DEPTH_MAX as u64;
    match draws.below(6) {
        0 => Shape::Bytes(PAYLOAD_BYTES_MAX),
        1 => Shape::Bytes(PAYLOAD_BYTES_MAX + 1),
        2 => Shape::Bytes(PAYLOAD_BYTES_MAX + 2 + draws.below(PAYLOAD_BYTES_MAX)),
        3 => Shape::Depth(depth_max),
        4 => Shape::Depth(depth_max + 1),
        _ => Shape::Depth(depth_max + 2 + draws.below(200)),
    }
}

/// True if `name` is the name of a burst's signal.
pub fn is_burst_signal(name: &str) -> bool {
    name.contains("-burst")
}

/// Bursts of signals (sent at once, so some arrive while a workflow task
/// runs and are buffered up to the limit), and repeats of signals already
/// sent, drawn from their own stream.
fn add_pressure_actions(seed: u64, runs: &mut [RunSpec]) {
    let mut draws = Draws(seed ^ 0x4255_5253_5452_4550);
    for (index, run) in runs.iter_mut().enumerate() {
        if draws.chance(35) {
            let at_ms = draws.pick(&[50, 600, 2_000, 5_000]);
            for signal in 0..BURST_SIGNALS {
                let name = format!("r{index}-burst-{signal}");
                let action = ClientAction::ShapedSignal {
                    name,
                    shape: Shape::Bytes(BURST_SIGNAL_BYTES),
                };
                run.client.push(Timed { at_ms, action });
            }
        }
        let first_signal = run.client.iter().find_map(|t| match &t.action {
            ClientAction::Signal { name, value, .. } => Some((name.clone(), *value)),
            _ => None,
        });
        if let Some((name, value)) = first_signal.filter(|_| draws.chance(40)) {
            // After every other signal of the run, so a window that forgot
            // older request ids would deliver it again.
            let last_ms = run.client.iter().map(|t| t.at_ms).max().unwrap_or(0);
            let at_ms = last_ms + draws.pick(&[10, 400]);
            let action = ClientAction::RepeatSignal { name, value };
            run.client.push(Timed { at_ms, action });
        }
        run.client.sort_by_key(|t| t.at_ms);
        if draws.chance(20) {
            // Before a last step that gives up, so the run still gives up.
            let places = run.steps.len() + usize::from(!run.gives_up());
            let at = draws.below(places as u64) as usize;
            let activity = oversize_activity(&format!("r{index}oversize"));
            run.steps.insert(at, Step::Activity(activity));
        }
    }
}

/// Signals sent by signal-with-start, drawn from their own stream: a run's
/// first signal at 0 ms may start it; a later one finds it running.
fn add_signal_with_start(seed: u64, runs: &mut [RunSpec]) {
    let mut draws = Draws(seed ^ 0x5357_5354_4152_5421);
    for run in runs.iter_mut() {
        let mut starts = 0;
        for timed in &mut run.client {
            let ClientAction::Signal { with_start, .. } = &mut timed.action else {
                continue;
            };
            // The start carries one signal.
            let may = timed.at_ms > 0 || starts == 0;
            if may && draws.chance(30) {
                *with_start = true;
                starts += usize::from(timed.at_ms == 0);
            }
        }
    }
}

/// Timeouts of condition waits: no step's timer has them, so the model
/// knows each condition's timer by its duration.
pub const CONDITION_TIMEOUTS_MS: [u64; 2] = [2_345, 7_777];

/// Condition waits, drawn from their own stream: at most one per run, with
/// the signal that makes it hold sent at 0, 1.5 or 5 s.
fn add_conditions(seed: u64, runs: &mut [RunSpec]) {
    let mut draws = Draws(seed ^ 0x434f_4e44_4954_494f);
    for (index, run) in runs.iter_mut().enumerate() {
        if !draws.chance(25) {
            continue;
        }
        let name = format!("r{index}-condition");
        let timeout_ms = draws.chance(50).then(|| draws.pick(&CONDITION_TIMEOUTS_MS));
        // Before a last step that gives up, so the run still gives up.
        let places = run.steps.len() + usize::from(!run.gives_up());
        let at = draws.below(places as u64) as usize;
        let step = Step::Condition {
            name: name.clone(),
            timeout_ms,
        };
        run.steps.insert(at, step);
        let at_ms = draws.pick(&[0, 1_500, 5_000]);
        let value = draws.below(1_000);
        let action = ClientAction::Signal {
            name,
            value,
            with_start: false,
        };
        run.client.push(Timed { at_ms, action });
        run.client.sort_by_key(|t| t.at_ms);
    }
}

/// In a program of several runs, a run in four signals another with
/// `ctx.signal_external` (one in five of those asks it to cancel instead,
/// with `ctx.cancel_external`), at a step drawn among its own.
fn add_external_signals(seed: u64, runs: &mut [RunSpec]) {
    let mut draws = Draws(seed ^ 0x4558_5445_524e_414c);
    let count = runs.len();
    if count < 2 {
        return;
    }
    for (index, run) in runs.iter_mut().enumerate() {
        if !draws.chance(25) {
            continue;
        }
        let other = (index + 1 + draws.below(count as u64 - 1) as usize) % count;
        let places = run.steps.len() + usize::from(!run.gives_up());
        let at = draws.below(places as u64) as usize;
        let target = format!("gen-{other}");
        let step = if draws.chance(20) {
            Step::CancelExternal { target }
        } else {
            Step::SignalExternal {
                target,
                name: format!("r{index}-external"),
                value: draws.below(1_000),
            }
        };
        run.steps.insert(at, step);
    }
}

/// A cron workflow in one program in five, drawn from its own stream: every
/// 1 to 3 s, each run working 0.2 to 2.5 s (so some overlap their next
/// slot), canceled by the client between 5 and 12 s.
fn cron_spec(seed: u64) -> Option<CronSpec> {
    let mut draws = Draws(seed ^ 0x4352_4f4e_5449_434b);
    draws.chance(20).then(|| CronSpec {
        every_s: 1 + draws.below(3),
        work_ms: draws.pick(&[200, 1_500, 2_500]),
        cancel_at_ms: 5_000 + draws.below(7_000),
    })
}

/// Start delays and workflow retry policies, drawn from their own stream:
/// a run in six waits before its first workflow task; a run in three that
/// nothing sends messages to (no signals, cancels or terminations: they
/// would land in an attempt that fails) and that has no execution timeout
/// and no children is retried, its first one to three attempts failing.
fn add_start_options(seed: u64, runs: &mut [RunSpec]) {
    let mut draws = Draws(seed ^ 0x5354_4152_5444_4c59);
    let targets: BTreeSet<String> = runs
        .iter()
        .flat_map(|run| run.steps.iter())
        .filter_map(|step| match step {
            Step::SignalExternal { target, .. } | Step::CancelExternal { target } => {
                Some(target.clone())
            }
            _ => None,
        })
        .collect();
    for run in runs.iter_mut() {
        if draws.chance(17) {
            run.start_delay_ms = Some(draws.pick(&START_DELAYS_MS));
        }
        let quiet = run.client.iter().all(|t| {
            matches!(
                t.action,
                ClientAction::Query
                    | ClientAction::Describe
                    | ClientAction::ShapedStart { .. }
                    | ClientAction::InvalidStart { .. }
            )
        });
        // A run that gives up is not retried: its failure type is listed
        // as non-retryable (one that fails with an activity's failure
        // would be retried, and run its steps again).
        let plain = run.execution_timeout_ms.is_none()
            && (!run.gives_up() || run.gives_up_plainly())
            && run.children().next().is_none()
            && !targets.contains(&run.workflow_id);
        if quiet && plain && draws.chance(45) {
            run.retry = Some(WorkflowRetry {
                maximum_attempts: draws.pick(&[0, 2, 3, 4]),
                failing_attempts: 1 + draws.below(3) as u32,
            });
        }
    }
}

/// A run in four (not a chain, which would drop an update its earlier run
/// accepted) waits for an update at a step drawn among its own; the
/// client sends it, maybe repeats it with the same id, and maybe first
/// sends one the validator refuses.
fn add_updates(seed: u64, runs: &mut [RunSpec]) {
    let mut draws = Draws(seed ^ 0x5550_4441_5445_5321);
    for (index, run) in runs.iter_mut().enumerate() {
        if run.continue_as_new > 0 || !draws.chance(25) {
            continue;
        }
        let name = format!("r{index}-update");
        let last = run.steps.len() - usize::from(run.gives_up());
        let at = draws.below(last as u64 + 1) as usize;
        run.steps.insert(at, Step::Update { name: name.clone() });
        let value = draws.below(1_000);
        let update_id = format!("{}/{name}", run.workflow_id);
        let at_ms = draws.pick(&[200, 1_500, 5_000]);
        let action = ClientAction::Update {
            name: name.clone(),
            value,
            update_id: update_id.clone(),
        };
        run.client.push(Timed {
            at_ms,
            action: action.clone(),
        });
        if draws.chance(30) {
            run.client.push(Timed {
                at_ms: at_ms + 2_000,
                action,
            });
        }
        if draws.chance(40) {
            let value = UPDATE_REFUSED_FROM + draws.below(1_000);
            let update_id = format!("{update_id}/refused");
            let at_ms = draws.pick(&[200, 1_000, 3_000]);
            run.client.push(Timed {
                at_ms,
                action: ClientAction::Update {
                    name,
                    value,
                    update_id,
                },
            });
        }
        run.client.sort_by_key(|t| t.at_ms);
    }
}

/// Half the runs that may be canceled (by the client or another run) clean
/// up after the cancel request: an activity in a shielded scope.
fn add_cleanups(seed: u64, runs: &mut [RunSpec]) {
    let mut draws = Draws(seed ^ 0x434c_4541_4e55_5021);
    let cancelers: Vec<String> = runs
        .iter()
        .flat_map(|run| run.cancels().map(str::to_string).collect::<Vec<_>>())
        .collect();
    for (index, run) in runs.iter_mut().enumerate() {
        let canceled = run.client_does(|a| matches!(a, ClientAction::Cancel))
            || cancelers.contains(&run.workflow_id);
        if canceled && draws.chance(50) {
            run.cleanup = Some(cleanup_activity(&format!("r{index}-cleanup")));
        }
    }
}

/// A child's features.
fn child_features(child: &RunSpec, out: &mut BTreeSet<Feature>) {
    use retrace::types::ParentClosePolicy;
    let Some(of) = &child.parent else { return };
    out.insert(if of.wait {
        Feature::ChildWorkflow
    } else {
        Feature::ChildStartedAndLeft
    });
    out.insert(match of.policy {
        ParentClosePolicy::Terminate => Feature::ChildTerminatedWithParent,
        ParentClosePolicy::RequestCancel => Feature::ChildCanceledWithParent,
        ParentClosePolicy::Abandon => Feature::ChildAbandoned,
    });
    if child.steps.iter().any(|s| matches!(s, Step::Signal { .. })) {
        out.insert(Feature::ChildWaitsForever);
    }
    if child.gives_up() {
        out.insert(Feature::ChildFails);
    }
    if child.continue_as_new > 0 {
        out.insert(Feature::ChildContinuesAsNew);
    }
}

/// One run in four starts a child workflow at a step drawn among its own:
/// a short run of activities and timers (which may fail, time out or
/// continue as new) on [`CHILD_QUEUE`], awaited or left to its parent close
/// policy. A child left under a policy that closes it may wait for a signal
/// nobody sends: only the policy ends it.
fn add_children(seed: u64, runs: &mut [RunSpec]) {
    use retrace::types::ParentClosePolicy;
    let mut draws = Draws(seed ^ 0x4348_494c_4452_454e);
    for (index, run) in runs.iter_mut().enumerate() {
        if !draws.chance(25) {
            continue;
        }
        let policy = draws.pick(&[
            ParentClosePolicy::Terminate,
            ParentClosePolicy::RequestCancel,
            ParentClosePolicy::Abandon,
        ]);
        let wait = draws.chance(50);
        let mut child = child_run(&mut draws, index);
        if !wait && policy != ParentClosePolicy::Abandon && draws.chance(50) {
            let name = format!("r{index}c-never");
            child.steps.push(Step::Signal { name });
        } else if draws.chance(20) {
            child.steps.push(Step::Fail);
        }
        child.parent = Some(ChildOf {
            parent: run.workflow_id.clone(),
            policy,
            wait,
        });
        let places = run.steps.len() + usize::from(!run.gives_up());
        let at = draws.below(places as u64) as usize;
        run.steps.insert(at, Step::Child(Box::new(child)));
    }
}

/// A child's spec: one or two activities or timers, no client.
fn child_run(draws: &mut Draws, index: usize) -> RunSpec {
    let steps = (0..1 + draws.below(2))
        .map(|s| {
            let tag = format!("r{index}c{s}");
            if draws.chance(60) {
                Step::Activity(activity(draws, &tag))
            } else {
                Step::Timer {
                    duration_ms: draws.pick(&[100, 1_000, 3_500]),
                }
            }
        })
        .collect();
    RunSpec {
        workflow_id: format!("gen-{index}-child"),
        steps,
        execution_timeout_ms: draws.chance(10).then_some(3_000),
        client: Vec::new(),
        continue_as_new: u8::from(draws.chance(20)),
        continued: 0,
        carried: Vec::new(),
        cleanup: None,
        parent: None,
        start_delay_ms: None,
        retry: None,
    }
}

/// A cleanup: succeeds, retried until it does.
fn cleanup_activity(tag: &str) -> ActivitySpec {
    single_behaviour_activity(tag, Behaviour::Succeed)
}

/// An activity whose result is over the payload limit: its first attempt
/// fails, not to be retried.
fn oversize_activity(tag: &str) -> ActivitySpec {
    single_behaviour_activity(tag, Behaviour::ReturnOversize)
}

/// An activity whose every attempt does `behaviour`, with a 5 s
/// start-to-close and the default retry policy.
fn single_behaviour_activity(tag: &str, behaviour: Behaviour) -> ActivitySpec {
    let activity = ActivitySpec {
        tag: tag.to_string(),
        timeouts: Timeouts {
            start_to_close_ms: Some(5_000),
            ..Timeouts::default()
        },
        retry: RetryPolicy::default(),
        script: vec![behaviour],
        pad_bytes: 0,
        cancellation: Cancellation::TryCancel,
    };
    assert!(terminates(&activity));
    activity
}

/// Shaped signals, refused starts and transient bugs, drawn from their own
/// stream so the rest of a seed's program does not depend on them.
fn add_shaped_actions(seed: u64, runs: &mut [RunSpec]) {
    let mut draws = Draws(seed ^ 0x5348_4150_4544_2121);
    for (index, run) in runs.iter_mut().enumerate() {
        if draws.chance(35) {
            let action = ClientAction::ShapedSignal {
                name: format!("r{index}-shaped"),
                shape: shape(&mut draws),
            };
            let at_ms = draws.pick(&[0, 700, 4_000, 15_000]);
            run.client.push(Timed { at_ms, action });
        }
        if draws.chance(15) {
            let shape = match shape(&mut draws) {
                Shape::Bytes(_) => Shape::Bytes(PAYLOAD_BYTES_MAX + 1 + draws.below(100)),
                Shape::Depth(d) => {
                    Shape::Depth(d.max(retrace::history::PAYLOAD_DEPTH_MAX as u64 + 1))
                }
            };
            let action = ClientAction::ShapedStart {
                workflow_id: format!("gen-{index}-refused"),
                shape,
            };
            let at_ms = draws.pick(&[0, 2_500]);
            run.client.push(Timed { at_ms, action });
        }
        if draws.chance(15) {
            let flaw = draws.pick(&[
                StartFlaw::BlankWorkflowId,
                StartFlaw::BlankTaskQueue,
                StartFlaw::ZeroExecutionTimeout,
                StartFlaw::ZeroWorkflowTaskTimeout,
            ]);
            let action = ClientAction::InvalidStart {
                workflow_id: format!("gen-{index}-invalid"),
                flaw,
            };
            let at_ms = draws.pick(&[0, 1_200]);
            run.client.push(Timed { at_ms, action });
        }
        run.client.sort_by_key(|t| t.at_ms);
        if draws.chance(40) {
            let at_ms = draws.pick(&[300, 1_500, 4_000, 9_000]);
            let action = ClientAction::Describe;
            run.client.push(Timed { at_ms, action });
            run.client.sort_by_key(|t| t.at_ms);
        }
        if draws.chance(50) {
            let at = draws.below(run.steps.len() as u64 + 1) as usize;
            let probe = cancel_probe(&format!("r{index}probe"));
            run.steps.splice(at..at, probe);
        }
        if draws.chance(8) {
            run.steps.push(Step::Fail);
        }
        if draws.chance(20) {
            let at = draws.below(run.steps.len() as u64) as usize;
            let until_ms = draws.pick(&[800, 2_500, 6_000]);
            run.steps.insert(at, Step::TransientBug { until_ms });
        }
    }
}

/// A cancel that must land: an activity that heartbeats while it hangs loses
/// a race against a short timer, so the workflow asks to cancel it while its
/// attempt runs, then waits past the attempt's start-to-close. The cancel
/// reaches the attempt with its next heartbeat's reply: in a calm world the
/// activity closes canceled (`cancel_landed`), not by the timeout, and not
/// failed.
fn cancel_probe(tag: &str) -> [Step; 2] {
    let activity = ActivitySpec {
        tag: tag.to_string(),
        timeouts: Timeouts {
            start_to_close_ms: Some(PROBE_START_TO_CLOSE_MS),
            heartbeat_ms: Some(300),
            ..Timeouts::default()
        },
        retry: RetryPolicy::default().maximum_attempts(1),
        script: vec![Behaviour::HangHeartbeating],
        pad_bytes: 0,
        cancellation: Cancellation::TryCancel,
    };
    assert!(terminates(&activity));
    [
        Step::Select {
            activity,
            timer_ms: 700,
        },
        Step::Timer {
            duration_ms: PROBE_START_TO_CLOSE_MS + 1_000,
        },
    ]
}

/// Start-to-close of a cancel probe's activity.
const PROBE_START_TO_CLOSE_MS: u64 = 4_000;

fn run(draws: &mut Draws, index: usize) -> RunSpec {
    let workflow_id = format!("gen-{index}");
    let steps_count = 1 + draws.below(STEPS_MAX as u64) as usize;
    let mut client = Vec::new();
    let mut steps = Vec::new();
    for s in 0..steps_count {
        let tag = format!("r{index}s{s}");
        steps.push(step(draws, &tag, &mut client));
    }
    let queries = 1 + draws.below(3);
    for _ in 0..queries {
        let at_ms = draws.pick(&[0, 500, 2_000, 6_000, 12_000, 20_000]);
        client.push(Timed {
            at_ms,
            action: ClientAction::Query,
        });
    }
    if draws.chance(12) {
        let at_ms = 500 + draws.below(12_000);
        client.push(Timed {
            at_ms,
            action: ClientAction::Cancel,
        });
        // A canceled run never gets its signals: a signal wait only the
        // cancel request can end (the SDK must end it with Canceled).
        client.retain(|t| !matches!(t.action, ClientAction::Signal { .. }));
    } else if draws.chance(10) {
        let at_ms = 500 + draws.below(12_000);
        client.push(Timed {
            at_ms,
            action: ClientAction::Terminate,
        });
    }
    client.sort_by_key(|t| t.at_ms);
    // The run's spec is the workflow's input: it stays well under the limit.
    while steps.len() > 1 && encoded_bytes(&steps) > PAYLOAD_BYTES_MAX as usize / 2 {
        steps.pop();
    }
    let execution_timeout_ms = draws
        .chance(12)
        .then(|| draws.pick(&[3_000, 8_000, 30_000]));
    let continue_as_new = if draws.chance(20) {
        1 + draws.below(2) as u8
    } else {
        0
    };
    RunSpec {
        workflow_id,
        steps,
        execution_timeout_ms,
        client,
        continue_as_new,
        continued: 0,
        carried: Vec::new(),
        cleanup: None,
        parent: None,
        start_delay_ms: None,
        retry: None,
    }
}

/// The search attributes the generated workflows upsert (and start with:
/// every root run starts with `Tier`, the number of its steps).
pub const UPSERT_NAMES: [&str; 4] = ["Stage", "Tier", "Score", "Flag"];

/// The value an `Upsert` step sets: `Stage` a keyword, `Tier` an integer,
/// `Score` a double, `Flag` a boolean.
pub fn upsert_value(name: &str, value: i64) -> retrace::visibility::SearchValue {
    use retrace::visibility::SearchValue;
    match name {
        "Stage" => SearchValue::Keyword(format!("s{value}")),
        "Tier" => SearchValue::Int(value),
        "Score" => SearchValue::Double(value as f64 / 4.0),
        _ => SearchValue::Bool(value % 2 == 0),
    }
}

fn encoded_bytes(steps: &[Step]) -> usize {
    serde_json::to_vec(steps).map_or(usize::MAX, |bytes| bytes.len())
}

fn step(draws: &mut Draws, tag: &str, client: &mut Vec<Timed>) -> Step {
    match draws.below(23) {
        0..=6 => Step::Activity(activity(draws, tag)),
        7..=8 => Step::Timer {
            duration_ms: draws.pick(&[100, 1_000, 3_500]),
        },
        9..=10 => {
            let name = format!("{tag}-signal");
            let at_ms = draws.pick(&[0, 0, 1_500, 5_000]);
            let value = draws.below(1_000);
            let action = ClientAction::Signal {
                name: name.clone(),
                value,
                with_start: false,
            };
            client.push(Timed { at_ms, action });
            Step::Signal { name }
        }
        11 => Step::SideEffect {
            value: draws.below(1 << 20),
        },
        12 => match draws.below(3) {
            0 => Step::Random,
            1 => Step::Uuid,
            _ => Step::Now,
        },
        13 => Step::Patched {
            patch_id: format!("{tag}-patch"),
        },
        14..=16 => join(draws, tag),
        21..=22 => Step::Upsert {
            name: UPSERT_NAMES[draws.below(UPSERT_NAMES.len() as u64) as usize].to_string(),
            value: draws.below(4) as i64,
        },
        20 => Step::LocalActivity {
            succeed_at: draws.pick(&[1, 1, 2, 3]) as u32,
            backoff_ms: draws.pick(&[50, LOCAL_WINDOW_MS / 2, LOCAL_WINDOW_MS + 1_000]),
        },
        _ => Step::Select {
            activity: activity(draws, tag),
            timer_ms: draws.pick(&[300, 1_500, 5_000]),
        },
    }
}

fn join(draws: &mut Draws, tag: &str) -> Step {
    let width = 2 + draws.below(JOIN_WIDTH_MAX as u64 - 1) as usize;
    let branches = (0..width)
        .map(|j| {
            if draws.chance(75) {
                Branch::Activity(activity(draws, &format!("{tag}j{j}")))
            } else {
                Branch::Timer {
                    duration_ms: draws.pick(&[200, 1_200]),
                }
            }
        })
        .collect();
    Step::Join(branches)
}

fn activity(draws: &mut Draws, tag: &str) -> ActivitySpec {
    let timeouts = timeouts(draws);
    let retry = retry_policy(draws);
    let mut spec = ActivitySpec {
        tag: tag.to_string(),
        timeouts,
        retry,
        script: Vec::new(),
        pad_bytes: if draws.chance(3) {
            PAYLOAD_BYTES_MAX as usize - PAYLOAD_SLACK_BYTES
        } else {
            0
        },
        cancellation: draws.pick(&[
            Cancellation::TryCancel,
            Cancellation::TryCancel,
            Cancellation::Abandon,
            Cancellation::WaitCompleted,
        ]),
    };
    spec.script = script(draws, &spec);
    if spec.script.contains(&Behaviour::FailListed) {
        spec.retry = spec.retry.non_retryable(LISTED_FAILURE_TYPE);
    }
    if timeouts.schedule_to_close_ms.is_some() && draws.chance(40) {
        // A schedule-to-close that expires: every attempt hangs.
        spec.script = vec![draws.pick(&[Behaviour::HangHeartbeating, Behaviour::HangSilent])];
        let first = spec.timeouts.effective_start_to_close_ms();
        spec.timeouts.schedule_to_close_ms = Some(first + first / 2);
        if spec.timeouts.start_to_close_ms.is_none() {
            spec.timeouts.start_to_close_ms = Some(first);
        }
    }
    assert!(
        terminates(&spec),
        "generated activity {tag} must end: {spec:?}"
    );
    spec
}

/// An activity ends by itself: it has a schedule-to-close, a maximum number
/// of attempts, or a script whose repeated last attempt ends it.
fn terminates(spec: &ActivitySpec) -> bool {
    let last = *spec.script.last().expect("non-empty script");
    spec.timeouts.schedule_to_close_ms.is_some()
        || spec.retry.maximum_attempts > 0
        || last == Behaviour::Succeed
        || last.stops_retries()
}

fn timeouts(draws: &mut Draws) -> Timeouts {
    let start_to_close = draws.pick(&[1_000, 2_000, 4_000]);
    let mut t = Timeouts::default();
    match draws.below(6) {
        0 => t.schedule_to_close_ms = Some(start_to_close),
        1 => t.start_to_close_ms = Some(start_to_close),
        _ => {
            t.start_to_close_ms = Some(start_to_close);
            if draws.chance(50) {
                t.heartbeat_ms = Some(draws.pick(&[300, 500]).min(start_to_close / 2));
            }
            if draws.chance(40) {
                t.schedule_to_start_ms = Some(draws.pick(&[2_000, 15_000]));
            }
            if draws.chance(40) {
                t.schedule_to_close_ms = Some(draws.pick(&[15_000, 30_000]));
            }
        }
    }
    t
}

fn retry_policy(draws: &mut Draws) -> RetryPolicy {
    let initial_ms = draws.pick(&[100, 300, 1_000]);
    let mut policy = RetryPolicy::default()
        .initial_interval_ms(initial_ms)
        .backoff_coefficient(draws.pick(&[1.0, 1.5, 2.0, 3.0]))
        .maximum_interval_ms(initial_ms * draws.pick(&[0, 1, 2, 4]))
        .maximum_attempts(draws.pick(&[0, 0, 1, 2, 3, 5]));
    if draws.chance(20) {
        policy = policy.non_retryable(LISTED_FAILURE_TYPE);
    }
    policy
}

fn script(draws: &mut Draws, spec: &ActivitySpec) -> Vec<Behaviour> {
    let heartbeat = spec.timeouts.heartbeat_ms.is_some();
    let len = 1 + draws.below(SCRIPT_LEN_MAX as u64) as usize;
    let mut script: Vec<Behaviour> = (0..len)
        .map(|_| {
            let b = draws.pick(&[
                Behaviour::Succeed,
                Behaviour::Succeed,
                Behaviour::FailRetryable,
                Behaviour::FailRetryable,
                Behaviour::FailNonRetryable,
                Behaviour::FailListed,
                Behaviour::HangHeartbeating,
                Behaviour::HangSilent,
                Behaviour::HeartbeatThenFail,
            ]);
            // Heartbeat-then-fail needs a heartbeat timeout: without one the
            // worker sends heartbeats only every 30 s.
            if b == Behaviour::HeartbeatThenFail && !heartbeat {
                Behaviour::FailRetryable
            } else {
                b
            }
        })
        .collect();
    let last = *script.last().expect("non-empty");
    let unbounded =
        spec.timeouts.schedule_to_close_ms.is_none() && spec.retry.maximum_attempts == 0;
    if unbounded && last != Behaviour::Succeed && !last.stops_retries() {
        script.push(Behaviour::Succeed);
    }
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_program() {
        assert_eq!(Program::generate(42), Program::generate(42));
        assert_ne!(Program::generate(42), Program::generate(43));
    }

    #[test]
    fn every_generated_activity_ends_by_itself() {
        for seed in 0..2_000 {
            for run in Program::generate(seed).runs {
                for (activity, _) in run.activities() {
                    assert!(terminates(activity), "seed {seed}: {activity:?}");
                    let input = serde_json::to_vec(&run).expect("a run encodes").len();
                    assert!(
                        input < PAYLOAD_BYTES_MAX as usize,
                        "seed {seed}: input of {input} bytes"
                    );
                    assert!(activity.script.len() <= SCRIPT_LEN_MAX + 1);
                }
            }
        }
    }
}
