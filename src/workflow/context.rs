//! `WorkflowContext`: the only door from workflow code to the world.
//!
//! Every operation either reads state the executor restored from history (time,
//! signals, results) or records a [`Command`]. Futures resolve only when the
//! executor applies the event that resolves them, so the code's path depends on
//! the history alone.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::command::StartChildWorkflowExecution;
use super::command::{
    Command, ContinueAsNewWorkflowExecution, LEGACY_PATCH_MARKER_NAME, PATCH_MARKER_NAME,
    RequestCancelExternalWorkflowExecution, SIDE_EFFECT_MARKER_NAME, ScheduleActivityTask,
    SignalExternalWorkflowExecution, marker_id,
};
use super::error::{ActivityError, ChildWorkflowError, PayloadError, WorkflowError};
use super::local_activity::{LocalActivityFuture, LocalActivityOptions};
use crate::activity::{Activity, ActivityCancellationType, ActivityOptions};
use crate::types::{Timestamp, fnv1a64};

/// Facts about the run, fixed for its lifetime.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowInfo {
    /// The workflow id.
    pub workflow_id: String,
    /// The run id.
    pub run_id: String,
    /// The workflow type.
    pub workflow_type: String,
    /// The run's task queue (activities go there unless told otherwise).
    pub task_queue: String,
    /// When the run started.
    pub start_time: Timestamp,
    /// The run's attempt: 1, or one more than the failed run it retries
    /// (under the workflow's retry policy).
    pub attempt: u32,
    /// The failure of the run this one retries, if it retries one (or of
    /// the cron workflow's run before this one, if that failed).
    pub continued_failure: Option<crate::types::Failure>,
    /// The result of the cron workflow's last run that completed.
    pub last_completion_result: Option<serde_json::Value>,
    /// The search attributes the run started with.
    pub search_attributes: crate::visibility::SearchAttributes,
    /// The memo the run started with.
    pub memo: crate::visibility::Memo,
}

/// A query handler: arguments in, answer out.
pub type QueryFn = dyn Fn(Value) -> Result<Value, String> + Send + Sync;

pub(crate) enum Slot<T> {
    Pending { waker: Option<Waker> },
    Resolved(T),
    Taken,
}

impl<T> Slot<T> {
    pub(crate) fn resolve(&mut self, value: T) {
        if let Slot::Pending { waker } = self {
            if let Some(waker) = waker.take() {
                waker.wake();
            }
            *self = Slot::Resolved(value);
        }
    }

    pub(crate) fn is_pending(&self) -> bool {
        matches!(self, Slot::Pending { .. })
    }

    pub(crate) fn poll_take(&mut self, waker: &Waker) -> Poll<T> {
        match std::mem::replace(self, Slot::Taken) {
            Slot::Resolved(value) => Poll::Ready(value),
            Slot::Pending { .. } => {
                *self = Slot::Pending {
                    waker: Some(waker.clone()),
                };
                Poll::Pending
            }
            Slot::Taken => panic!("a workflow future was polled after it completed"),
        }
    }
}

struct ActivitySlot {
    slot: Slot<Result<Value, ActivityError>>,
    cancellation_type: ActivityCancellationType,
    cancel_requested: bool,
    /// The cancellation scope it was scheduled in.
    scope: usize,
}

/// Cancellation scopes a run may open, at most (the root included).
pub const SCOPES_MAX: usize = 10_000;

/// A cancellation scope: the root (the run) or one the code opened.
struct ScopeState {
    parent: Option<usize>,
    /// Shielded: its parent's cancellation does not reach it.
    shielded: bool,
    cancelled: bool,
}

/// The run's deterministic state, shared by the context and its futures.
pub(crate) struct RunCore {
    pub(crate) now: Timestamp,
    pub(crate) replaying: bool,
    rng_state: u64,
    pub(crate) commands: Vec<Command>,
    next_activity_seq: u64,
    next_timer_seq: u64,
    next_side_effect_seq: u64,
    activities: BTreeMap<String, ActivitySlot>,
    timers: BTreeMap<String, Slot<Result<(), WorkflowError>>>,
    signals: BTreeMap<String, VecDeque<Value>>,
    signal_wakers: BTreeMap<String, Vec<Waker>>,
    cancel_requested: bool,
    cancel_wakers: Vec<Waker>,
    patches: BTreeMap<String, bool>,
    /// Markers of the workflow task being replayed (lookahead for `patched` and
    /// `side_effect`): (marker name, details).
    pub(crate) expected_markers: Vec<(String, Value)>,
    query_handlers: BTreeMap<String, Arc<QueryFn>>,
    /// Conditions waited on and false when last polled, by sequence: the
    /// executor re-checks them whenever the workflow stops making progress.
    conditions: BTreeMap<u64, (Arc<ConditionFn>, Waker)>,
    next_condition_seq: u64,
    /// Signals and cancel requests to other workflows, by sequence ("1", ...).
    externals: BTreeMap<String, Slot<Result<(), WorkflowError>>>,
    next_external_seq: u64,
    /// Cancellation scopes by id; 0 is the run's own.
    scopes: Vec<ScopeState>,
    /// The scope each timer was started in, by timer id.
    timer_scopes: BTreeMap<String, usize>,
    /// Child workflows by sequence ("1", ...).
    children: BTreeMap<String, ChildSlot>,
    next_child_seq: u64,
    /// Local activities: asked for, and resolved by the worker or replay.
    pub(crate) local_activities: super::local_activity::LocalActivities,
    /// Update handlers by update name.
    pub(crate) update_handlers: BTreeMap<String, Arc<super::update::UpdateHandler>>,
    /// Search attributes and memo as the code set them.
    pub(crate) visibility: super::visibility::VisibilityCore,
}

/// A child workflow as its parent's code sees it.
struct ChildSlot {
    workflow_id: String,
    /// Its first run's id, or why it did not start.
    started: Slot<Result<String, WorkflowError>>,
    result: Slot<Result<Value, WorkflowError>>,
    /// The cancellation scope it was started in.
    scope: usize,
    /// A cancel request was sent to it (its scope was cancelled).
    cancel_sent: bool,
}

/// A condition a workflow waits for (`WorkflowContext::wait_condition`).
pub type ConditionFn = dyn Fn() -> bool + Send + Sync;

impl RunCore {
    /// Wakes the first waiting condition that now holds (and forgets it
    /// until its future is polled again); false if none holds. Conditions
    /// run without the core locked: they may read the context.
    pub(crate) fn wake_a_true_condition(core: &Mutex<RunCore>) -> bool {
        let lock = || {
            core.lock()
                .expect("the run core lock is never held across a panic")
        };
        let waiting: Vec<(u64, Arc<ConditionFn>)> = lock()
            .conditions
            .iter()
            .map(|(seq, (condition, _))| (*seq, condition.clone()))
            .collect();
        // A condition that panics here wakes its future: its poll runs it
        // again inside the executor's catch, which fails the workflow task.
        let holds = |f: &ConditionFn| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(true)
        };
        let Some(seq) = waiting
            .into_iter()
            .find_map(|(seq, f)| holds(f.as_ref()).then_some(seq))
        else {
            return false;
        };
        let (_, waker) = lock().conditions.remove(&seq).expect("a waiting condition");
        waker.wake();
        true
    }

    pub(crate) fn new(run_id: &str) -> RunCore {
        RunCore {
            now: Timestamp(0),
            replaying: false,
            rng_state: fnv1a64(run_id.as_bytes()),
            commands: Vec::new(),
            next_activity_seq: 1,
            next_timer_seq: 1,
            next_side_effect_seq: 1,
            activities: BTreeMap::new(),
            timers: BTreeMap::new(),
            signals: BTreeMap::new(),
            signal_wakers: BTreeMap::new(),
            cancel_requested: false,
            cancel_wakers: Vec::new(),
            patches: BTreeMap::new(),
            expected_markers: Vec::new(),
            query_handlers: BTreeMap::new(),
            conditions: BTreeMap::new(),
            next_condition_seq: 1,
            externals: BTreeMap::new(),
            next_external_seq: 1,
            scopes: vec![ScopeState {
                parent: None,
                shielded: false,
                cancelled: false,
            }],
            timer_scopes: BTreeMap::new(),
            children: BTreeMap::new(),
            next_child_seq: 1,
            local_activities: Default::default(),
            update_handlers: BTreeMap::new(),
            visibility: Default::default(),
        }
    }

    /// splitmix64: small, fast, and the same on every platform.
    fn next_random(&mut self) -> u64 {
        self.rng_state = self.rng_state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn resolve_activity(
        &mut self,
        activity_id: &str,
        result: Result<Value, ActivityError>,
    ) {
        if let Some(activity) = self.activities.get_mut(activity_id) {
            activity.slot.resolve(result);
        }
    }

    pub(crate) fn resolve_external(&mut self, seq: &str, result: Result<(), WorkflowError>) {
        if let Some(slot) = self.externals.get_mut(seq) {
            slot.resolve(result);
        }
    }

    /// Issues a signal or cancel request to another workflow: its command
    /// now, its outcome later (by its sequence number).
    fn start_external(&mut self, command: impl FnOnce(String) -> Command) -> String {
        let seq = self.next_external_seq.to_string();
        self.next_external_seq += 1;
        self.externals
            .insert(seq.clone(), Slot::Pending { waker: None });
        self.commands.push(command(seq.clone()));
        seq
    }

    /// Issues a child workflow's start in `scope`: its command now (none if
    /// the scope is cancelled: the child ends `Canceled` at once), its
    /// start and result later (by its sequence number).
    pub(crate) fn start_child(
        &mut self,
        scope: usize,
        command: impl FnOnce(String) -> StartChildWorkflowExecution,
    ) -> String {
        let seq = self.next_child_seq.to_string();
        self.next_child_seq += 1;
        let command = command(seq.clone());
        let mut slot = ChildSlot {
            workflow_id: command.workflow_id.clone(),
            started: Slot::Pending { waker: None },
            result: Slot::Pending { waker: None },
            scope,
            cancel_sent: false,
        };
        if self.scope_cancelled(scope) {
            let canceled = WorkflowError::from(ChildWorkflowError::Canceled {
                workflow_id: command.workflow_id,
            });
            slot.started.resolve(Err(canceled.clone()));
            slot.result.resolve(Err(canceled));
        } else {
            self.commands
                .push(Command::StartChildWorkflowExecution(command));
        }
        self.children.insert(seq.clone(), slot);
        seq
    }

    /// The child `seq` started as run `run_id`, or did not start. A child
    /// whose scope was cancelled before it started is asked to cancel now.
    pub(crate) fn resolve_child_started(
        &mut self,
        seq: &str,
        started: Result<String, WorkflowError>,
    ) {
        let Some(slot) = self.children.get_mut(seq) else {
            return;
        };
        if let Err(error) = &started {
            slot.result.resolve(Err(error.clone()));
        }
        slot.started.resolve(started);
        let scope = slot.scope;
        if self.scope_cancelled(scope) {
            self.cancel_child(seq);
        }
    }

    pub(crate) fn resolve_child_result(&mut self, seq: &str, result: Result<Value, WorkflowError>) {
        if let Some(slot) = self.children.get_mut(seq) {
            slot.result.resolve(result);
        }
    }

    /// Asks a started child whose result is pending to cancel, once.
    fn cancel_child(&mut self, seq: &str) {
        let Some(slot) = self.children.get_mut(seq) else {
            return;
        };
        if slot.cancel_sent || slot.started.is_pending() || !slot.result.is_pending() {
            return;
        }
        slot.cancel_sent = true;
        let workflow_id = slot.workflow_id.clone();
        self.start_external(|seq| {
            Command::RequestCancelExternalWorkflowExecution(
                RequestCancelExternalWorkflowExecution {
                    seq,
                    workflow_id,
                    run_id: None,
                },
            )
        });
    }

    pub(crate) fn poll_child_started(
        &mut self,
        seq: &str,
        waker: &Waker,
    ) -> Poll<Result<String, WorkflowError>> {
        let slot = self.children.get_mut(seq).expect("issued");
        slot.started.poll_take(waker)
    }

    pub(crate) fn poll_child_result(
        &mut self,
        seq: &str,
        waker: &Waker,
    ) -> Poll<Result<Value, WorkflowError>> {
        let slot = self.children.get_mut(seq).expect("issued");
        slot.result.poll_take(waker)
    }

    pub(crate) fn resolve_timer(&mut self, timer_id: &str) {
        if let Some(slot) = self.timers.get_mut(timer_id) {
            slot.resolve(Ok(()));
        }
    }

    pub(crate) fn deliver_signal(&mut self, name: &str, input: Value) {
        self.signals
            .entry(name.to_string())
            .or_default()
            .push_back(input);
        for waker in self.signal_wakers.remove(name).unwrap_or_default() {
            waker.wake();
        }
    }

    /// The run was asked to cancel: its scope is cancelled.
    pub(crate) fn on_cancel_requested(&mut self) {
        if self.cancel_requested {
            return;
        }
        self.cancel_requested = true;
        self.cancel_scope(0);
    }

    /// Opens a scope inside `parent`; its id.
    fn open_scope(&mut self, parent: usize, shielded: bool) -> usize {
        assert!(
            self.scopes.len() < SCOPES_MAX,
            "a run opened more than {SCOPES_MAX} cancellation scopes"
        );
        // A scope opened inside a cancelled one starts cancelled, unless shielded.
        let cancelled = !shielded && self.scopes[parent].cancelled;
        self.scopes.push(ScopeState {
            parent: Some(parent),
            shielded,
            cancelled,
        });
        self.scopes.len() - 1
    }

    /// True if `scope` was cancelled (the root: the run was asked to cancel).
    pub(crate) fn scope_cancelled(&self, scope: usize) -> bool {
        self.scopes[scope].cancelled
    }

    /// `scope` and the scopes inside it that are not shielded from it.
    fn reached_by(&self, scope: usize) -> BTreeSet<usize> {
        let mut reached = BTreeSet::from([scope]);
        // Scopes are opened after their parents: one pass in id order.
        for (id, state) in self.scopes.iter().enumerate().skip(scope + 1) {
            if !state.shielded && state.parent.is_some_and(|p| reached.contains(&p)) {
                reached.insert(id);
            }
        }
        reached
    }

    /// Cancels `scope`: every pending activity and timer started in it or in
    /// a scope it reaches (in id order, so the commands are deterministic),
    /// and wakes whoever waits.
    fn cancel_scope(&mut self, scope: usize) {
        let reached = self.reached_by(scope);
        for &id in &reached {
            self.scopes[id].cancelled = true;
        }
        let pending: Vec<String> = self
            .activities
            .iter()
            .filter(|(_, a)| {
                a.slot.is_pending() && !a.cancel_requested && reached.contains(&a.scope)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for activity_id in pending {
            self.cancel_activity(&activity_id);
        }
        let timers: Vec<String> = self
            .timers
            .iter()
            .filter(|(id, t)| {
                t.is_pending()
                    && reached.contains(&self.timer_scopes.get(*id).copied().unwrap_or(0))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for timer_id in timers {
            self.cancel_timer(&timer_id);
            if let Some(slot) = self.timers.get_mut(&timer_id) {
                slot.resolve(Err(WorkflowError::Canceled));
            }
        }
        let children: Vec<String> = self
            .children
            .iter()
            .filter(|(_, child)| reached.contains(&child.scope))
            .map(|(seq, _)| seq.clone())
            .collect();
        for seq in children {
            self.cancel_child(&seq);
        }
        for waker in self.cancel_wakers.drain(..) {
            waker.wake();
        }
    }

    fn cancel_activity(&mut self, activity_id: &str) {
        let Some(activity) = self.activities.get_mut(activity_id) else {
            return;
        };
        if !activity.slot.is_pending() || activity.cancel_requested {
            return;
        }
        activity.cancel_requested = true;
        let cancellation_type = activity.cancellation_type;
        if cancellation_type != ActivityCancellationType::WaitCancellationCompleted {
            activity.slot.resolve(Err(ActivityError::Canceled));
        }
        if cancellation_type != ActivityCancellationType::Abandon {
            let activity_id = activity_id.to_string();
            self.commands
                .push(Command::RequestCancelActivityTask { activity_id });
        }
    }

    fn cancel_timer(&mut self, timer_id: &str) {
        let pending = self.timers.get(timer_id).is_some_and(Slot::is_pending);
        if pending {
            self.commands.push(Command::CancelTimer {
                timer_id: timer_id.to_string(),
            });
        }
    }

    pub(crate) fn is_cancel_requested(&self) -> bool {
        self.cancel_requested
    }

    pub(crate) fn query_handler(&self, name: &str) -> Option<Arc<QueryFn>> {
        self.query_handlers.get(name).cloned()
    }

    pub(crate) fn query_names(&self) -> Vec<String> {
        self.query_handlers.keys().cloned().collect()
    }

    pub(crate) fn expected_marker(&self, marker_name: &str, id: &str) -> Option<&Value> {
        self.expected_markers
            .iter()
            .find(|(name, details)| name == marker_name && marker_id(name, details) == id)
            .map(|(_, details)| details)
    }
}

/// The handle workflow code uses for everything that touches the world.
/// Cheap to clone; all clones share the run's state.
#[derive(Clone)]
pub struct WorkflowContext {
    core: Arc<Mutex<RunCore>>,
    info: Arc<WorkflowInfo>,
    /// The cancellation scope what this context starts belongs to (0: the run's).
    scope: usize,
}

impl WorkflowContext {
    pub(crate) fn new(core: Arc<Mutex<RunCore>>, info: WorkflowInfo) -> WorkflowContext {
        WorkflowContext {
            core,
            info: Arc::new(info),
            scope: 0,
        }
    }

    /// Opens a cancellation scope inside this context's: what its context
    /// starts (activities, timers, waits) is cancelled when the scope is
    /// ([`CancellationScope::cancel`]) or when this context's scope is (the
    /// run's: a cancel request).
    pub fn cancellation_scope(&self) -> CancellationScope {
        self.open_scope(false)
    }

    /// Opens a scope shielded from this context's cancellation: work started
    /// in it goes on when the run is asked to cancel (cleanup after a
    /// cancel, as Temporal's non-cancellable scopes and disconnected
    /// contexts). It can still be cancelled itself.
    pub fn shielded_scope(&self) -> CancellationScope {
        self.open_scope(true)
    }

    fn open_scope(&self, shielded: bool) -> CancellationScope {
        let scope = self.lock().open_scope(self.scope, shielded);
        CancellationScope {
            ctx: WorkflowContext {
                scope,
                ..self.clone()
            },
        }
    }

    /// The cancellation scope this context starts work in.
    pub(super) fn scope(&self) -> usize {
        self.scope
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, RunCore> {
        self.core
            .lock()
            .expect("the run core lock is never held across a panic")
    }

    /// Facts about the run.
    pub fn info(&self) -> &WorkflowInfo {
        &self.info
    }

    /// The time of the current workflow task (the same on replay).
    pub fn now(&self) -> Timestamp {
        self.lock().now
    }

    /// True while the executor replays recorded history (useful to silence logs).
    pub fn is_replaying(&self) -> bool {
        self.lock().replaying
    }

    /// A random number, seeded from the run id, the same on replay.
    pub fn random(&self) -> u64 {
        self.lock().next_random()
    }

    /// A random UUID (version 4 layout), the same on replay.
    pub fn uuid(&self) -> String {
        let (high, low) = {
            let mut core = self.lock();
            (core.next_random(), core.next_random())
        };
        let high = (high & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
        let low = (low & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            high >> 32,
            (high >> 16) & 0xffff,
            high & 0xffff,
            low >> 48,
            low & 0xffff_ffff_ffff
        )
    }

    /// Schedules activity `A` with its default options; configure the returned
    /// future (timeouts, retry policy, queue) before awaiting it.
    pub fn activity<A: Activity>(&self, input: A::Input) -> ActivityFuture<A::Output> {
        let what = || format!("input of activity {}", A::NAME);
        let input = PayloadError::encode(what, &input);
        ActivityFuture::new(self.clone(), A::NAME.to_string(), input, A::options())
    }

    /// Schedules an activity by name with a JSON input.
    pub fn activity_by_name(&self, activity_type: &str, input: Value) -> ActivityFuture<Value> {
        ActivityFuture::new(
            self.clone(),
            activity_type.to_string(),
            Ok(input),
            ActivityOptions::default(),
        )
    }

    /// Runs activity `A` as a local activity: in the worker, inside this
    /// workflow task, with no task queue in between; its outcome is
    /// recorded as a marker and replayed, never run again once recorded.
    /// Its timeouts and retry policy start from `A::options()`. For short
    /// work: an attempt is also bounded by the worker's window per task.
    pub fn local_activity<A: Activity>(&self, input: A::Input) -> LocalActivityFuture<A::Output> {
        let what = || format!("input of local activity {}", A::NAME);
        let input = PayloadError::encode(what, &input);
        let defaults = A::options();
        LocalActivityFuture::new(self.clone(), A::NAME.to_string(), input).options(
            LocalActivityOptions {
                start_to_close_timeout_ms: defaults.start_to_close_timeout_ms,
                schedule_to_close_timeout_ms: defaults.schedule_to_close_timeout_ms,
                retry_policy: defaults.retry_policy,
            },
        )
    }

    /// Runs a local activity by name with a JSON input.
    pub fn local_activity_by_name(
        &self,
        activity_type: &str,
        input: Value,
    ) -> LocalActivityFuture<Value> {
        LocalActivityFuture::new(self.clone(), activity_type.to_string(), Ok(input))
    }

    /// A durable timer: resolves after `duration` of service time, even across
    /// worker and service restarts. A zero duration resolves at once.
    pub fn sleep(&self, duration: Duration) -> TimerFuture {
        let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        TimerFuture {
            ctx: self.clone(),
            state: TimerState::Unstarted { duration_ms },
        }
    }

    /// The channel of signals named `name`. Signals are buffered from the start
    /// of the run, delivered in the order they arrived, each once.
    pub fn signal<T: DeserializeOwned>(&self, name: &str) -> SignalChannel<T> {
        SignalChannel {
            ctx: self.clone(),
            name: name.to_string(),
            _type: PhantomData,
        }
    }

    /// Ends this run and starts a new run of the same workflow id, type and
    /// task queue with `input`, in one write: return the error this makes.
    /// The new run gets a fresh history (so a workflow that loops forever
    /// this way keeps each history bounded) and what is left of the
    /// execution timeout. Signals this run received but did not take are not
    /// carried over: drain them (`try_recv`) into `input` first.
    ///
    /// ```ignore
    /// if iteration % 100 == 99 {
    ///     return Err(ctx.continue_as_new(&state));
    /// }
    /// ```
    pub fn continue_as_new<T: Serialize>(&self, input: &T) -> WorkflowError {
        self.continue_as_new_with(input, ContinueAsNewOptions::default())
    }

    /// [`WorkflowContext::continue_as_new`], with another workflow type or
    /// task queue for the new run.
    pub fn continue_as_new_with<T: Serialize>(
        &self,
        input: &T,
        options: ContinueAsNewOptions,
    ) -> WorkflowError {
        let what = || {
            format!(
                "continue-as-new input of workflow {}",
                self.info().workflow_type
            )
        };
        match PayloadError::encode(what, input) {
            Ok(input) => WorkflowError::ContinueAsNew(Box::new(ContinueAsNewWorkflowExecution {
                input,
                workflow_type: options.workflow_type,
                task_queue: options.task_queue,
            })),
            Err(error) => WorkflowError::Payload(error),
        }
    }

    /// Signals another workflow: its current run, or the run named (as
    /// Temporal's `SignalExternalWorkflowExecution`). The command is issued
    /// now; the future resolves once the signal was delivered, or fails with
    /// [`WorkflowError::ExternalWorkflowNotFound`] if no such run is open.
    /// Delivered once, even across crashes.
    pub fn signal_external<T: Serialize>(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
        signal_name: &str,
        input: &T,
    ) -> ExternalFuture {
        let what = || format!("input of signal {signal_name} to workflow {workflow_id}");
        let input = match PayloadError::encode(what, input) {
            Ok(input) => input,
            Err(error) => return ExternalFuture::failed(self, WorkflowError::Payload(error)),
        };
        let seq = self.lock().start_external(|seq| {
            Command::SignalExternalWorkflowExecution(SignalExternalWorkflowExecution {
                seq,
                workflow_id: workflow_id.to_string(),
                run_id: run_id.map(str::to_string),
                signal_name: signal_name.to_string(),
                input,
            })
        });
        ExternalFuture::pending(self, seq)
    }

    /// Asks another workflow (its current run, or the run named) to cancel.
    /// The future resolves once the request was recorded by that run, or
    /// fails with [`WorkflowError::ExternalWorkflowNotFound`].
    pub fn cancel_external(&self, workflow_id: &str, run_id: Option<&str>) -> ExternalFuture {
        let seq = self.lock().start_external(|seq| {
            Command::RequestCancelExternalWorkflowExecution(
                RequestCancelExternalWorkflowExecution {
                    seq,
                    workflow_id: workflow_id.to_string(),
                    run_id: run_id.map(str::to_string),
                },
            )
        });
        ExternalFuture::pending(self, seq)
    }

    /// True once this context's scope was cancelled (the run's context:
    /// once the run was asked to cancel).
    pub fn is_cancelled(&self) -> bool {
        self.lock().scope_cancelled(self.scope)
    }

    /// True once the run was asked to cancel.
    pub fn is_cancel_requested(&self) -> bool {
        self.lock().cancel_requested
    }

    /// Resolves when this context's scope is cancelled (the run's context:
    /// when the run is asked to cancel).
    pub fn cancelled(&self) -> CancelledFuture {
        CancelledFuture { ctx: self.clone() }
    }

    /// Resolves once `condition` holds: checked when awaited, and again
    /// whenever the workflow's code has run as far as it can (after a
    /// signal, a timer, an activity's result, or another branch changing the
    /// state the condition reads). Once the run is asked to cancel, a wait
    /// whose condition does not hold ends with `Err(WorkflowError::Canceled)`.
    /// The condition must read only workflow state (deterministic), and must
    /// not block.
    pub fn wait_condition(
        &self,
        condition: impl Fn() -> bool + Send + Sync + 'static,
    ) -> ConditionFuture {
        ConditionFuture {
            ctx: self.clone(),
            condition: Arc::new(condition),
            seq: None,
        }
    }

    /// [`WorkflowContext::wait_condition`] bounded by a durable timer of
    /// `timeout`: `Ok(true)` if the condition held first, `Ok(false)` if the
    /// timer fired first. The timer is canceled when the condition holds.
    pub async fn wait_condition_timeout(
        &self,
        timeout: Duration,
        condition: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Result<bool, WorkflowError> {
        let waited = self.wait_condition(condition);
        let timer = self.sleep(timeout);
        match futures::future::select(waited, timer).await {
            futures::future::Either::Left((held, _timer)) => held.map(|()| true),
            futures::future::Either::Right((fired, _waited)) => fired.map(|()| false),
        }
    }

    /// Runs `f` once and records its value; replay returns the recorded value
    /// without running `f`. For small nondeterministic values (a generated id).
    pub fn side_effect<T: Serialize + DeserializeOwned>(
        &self,
        f: impl FnOnce() -> T,
    ) -> Result<T, PayloadError> {
        let (seq, recorded) = {
            let mut core = self.lock();
            let seq = core.next_side_effect_seq;
            core.next_side_effect_seq += 1;
            let recorded = if core.replaying {
                core.expected_marker(SIDE_EFFECT_MARKER_NAME, &seq.to_string())
                    .cloned()
            } else {
                None
            };
            (seq, recorded)
        };
        let value = match recorded {
            Some(details) => details.get("value").cloned().unwrap_or(Value::Null),
            None => PayloadError::encode(|| format!("side effect {seq}"), &f())?,
        };
        let details = serde_json::json!({ "seq": seq, "value": value });
        let marker_name = SIDE_EFFECT_MARKER_NAME.to_string();
        self.lock().commands.push(Command::RecordMarker {
            marker_name,
            details,
        });
        PayloadError::decode(|| format!("side effect {seq}"), value)
    }

    /// Whether this run takes the code path of patch `patch_id`.
    ///
    /// New runs take it (and record a marker); runs whose history was written
    /// before the patch existed replay without it. The answer is fixed for the
    /// rest of the run once asked.
    pub fn patched(&self, patch_id: &str) -> bool {
        self.patch_marker(patch_id, false)
    }

    /// Marks a patch as deprecated: every running history has passed it, so
    /// only the new code path remains. Records a deprecated marker.
    pub fn deprecate_patch(&self, patch_id: &str) {
        self.patch_marker(patch_id, true);
    }

    /// Records patch `patch_id` as Temporal does: a `core_patch` marker and,
    /// the first time a run takes a patch, an upsert of the
    /// `TemporalChangeVersion` search attribute. Histories recorded before
    /// (a `Patch` marker, no upsert) replay as recorded.
    fn patch_marker(&self, patch_id: &str, deprecated: bool) -> bool {
        let mut core = self.lock();
        if let Some(answer) = core.patches.get(patch_id) {
            return *answer;
        }
        let legacy = core.replaying
            && core.expected_marker(PATCH_MARKER_NAME, patch_id).is_none()
            && core
                .expected_marker(LEGACY_PATCH_MARKER_NAME, patch_id)
                .is_some();
        let answer = !core.replaying
            || legacy
            || core.expected_marker(PATCH_MARKER_NAME, patch_id).is_some();
        core.patches.insert(patch_id.to_string(), answer);
        if !answer {
            return false;
        }
        if legacy {
            let details = serde_json::json!({ "id": patch_id, "deprecated": deprecated });
            let marker_name = LEGACY_PATCH_MARKER_NAME.to_string();
            core.commands.push(Command::RecordMarker {
                marker_name,
                details,
            });
            return true;
        }
        let details = serde_json::json!({ "patch_id": patch_id, "deprecated": deprecated });
        let marker_name = PATCH_MARKER_NAME.to_string();
        core.commands.push(Command::RecordMarker {
            marker_name,
            details,
        });
        if !deprecated {
            let lookahead = core.replaying.then(|| core.expected_markers.clone());
            let upsert = core
                .visibility
                .change_version_upsert(patch_id, lookahead.as_deref());
            core.commands.extend(upsert);
        }
        true
    }

    /// Registers a query handler. Queries are answered from the run's replayed
    /// state; a handler must only read.
    pub fn query_handler<A, R>(&self, name: &str, handler: impl Fn(A) -> R + Send + Sync + 'static)
    where
        A: DeserializeOwned,
        R: Serialize,
    {
        let query = name.to_string();
        let erased = move |args: Value| -> Result<Value, String> {
            let args: A = serde_json::from_value(args)
                .map_err(|e| format!("query {query:?}: arguments do not fit: {e}"))?;
            serde_json::to_value(handler(args))
                .map_err(|e| format!("query {query:?}: answer does not encode: {e}"))
        };
        self.lock()
            .query_handlers
            .insert(name.to_string(), Arc::new(erased));
    }
}

/// An activity: configure it, then await it (alone or in `join!`/`select`).
/// The command is recorded when the future is first polled; dropping the
/// future before it resolves cancels the activity.
#[must_use = "an activity is scheduled only when its future is awaited or polled"]
pub struct ActivityFuture<T> {
    ctx: WorkflowContext,
    state: ActivityState,
    _type: PhantomData<fn() -> T>,
}

enum ActivityState {
    Unscheduled {
        activity_type: String,
        input: Result<Value, PayloadError>,
        options: ActivityOptions,
    },
    Scheduled {
        activity_id: String,
        activity_type: String,
    },
    Done,
}

impl<T> ActivityFuture<T> {
    fn new(
        ctx: WorkflowContext,
        activity_type: String,
        input: Result<Value, PayloadError>,
        options: ActivityOptions,
    ) -> Self {
        ActivityFuture {
            ctx,
            state: ActivityState::Unscheduled {
                activity_type,
                input,
                options,
            },
            _type: PhantomData,
        }
    }

    fn options_mut(&mut self) -> &mut ActivityOptions {
        match &mut self.state {
            ActivityState::Unscheduled { options, .. } => options,
            _ => panic!("activity options must be set before the activity is awaited"),
        }
    }

    /// Replaces all options.
    pub fn options(mut self, options: ActivityOptions) -> Self {
        *self.options_mut() = options;
        self
    }

    /// Sets the start-to-close timeout (each attempt).
    pub fn start_to_close(mut self, timeout: Duration) -> Self {
        let options = std::mem::take(self.options_mut());
        *self.options_mut() = options.start_to_close(timeout);
        self
    }

    /// Sets the schedule-to-close timeout (all attempts).
    pub fn schedule_to_close(mut self, timeout: Duration) -> Self {
        let options = std::mem::take(self.options_mut());
        *self.options_mut() = options.schedule_to_close(timeout);
        self
    }

    /// Sets the schedule-to-start timeout (each attempt's wait in the queue).
    pub fn schedule_to_start(mut self, timeout: Duration) -> Self {
        let options = std::mem::take(self.options_mut());
        *self.options_mut() = options.schedule_to_start(timeout);
        self
    }

    /// Sets the heartbeat timeout.
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        let options = std::mem::take(self.options_mut());
        *self.options_mut() = options.heartbeat_timeout(timeout);
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, policy: crate::activity::RetryPolicy) -> Self {
        self.options_mut().retry_policy = Some(policy);
        self
    }

    /// Sends the activity to another task queue.
    pub fn task_queue(mut self, task_queue: &str) -> Self {
        self.options_mut().task_queue = Some(task_queue.to_string());
        self
    }

    /// Sets what cancellation does.
    pub fn cancellation(mut self, cancellation_type: ActivityCancellationType) -> Self {
        self.options_mut().cancellation_type = cancellation_type;
        self
    }

    /// Records the command; returns the activity id, or the error that
    /// resolves the future at once.
    fn schedule(&mut self) -> Result<(String, String), ActivityError> {
        let state = std::mem::replace(&mut self.state, ActivityState::Done);
        let ActivityState::Unscheduled {
            activity_type,
            input,
            options,
        } = state
        else {
            unreachable!("schedule is only called on unscheduled activities")
        };
        let input = input?;
        if let Some(reason) = options.problem() {
            return Err(ActivityError::InvalidOptions {
                activity_type,
                reason,
            });
        }
        let mut core = self.ctx.lock();
        if core.scope_cancelled(self.ctx.scope) {
            // Started in a cancelled scope: never scheduled.
            return Err(ActivityError::Canceled);
        }
        let activity_id = core.next_activity_seq.to_string();
        core.next_activity_seq += 1;
        let slot = ActivitySlot {
            slot: Slot::Pending { waker: None },
            cancellation_type: options.cancellation_type,
            cancel_requested: false,
            scope: self.ctx.scope,
        };
        core.activities.insert(activity_id.clone(), slot);
        core.commands
            .push(Command::ScheduleActivityTask(ScheduleActivityTask {
                activity_id: activity_id.clone(),
                activity_type: activity_type.clone(),
                task_queue: options.task_queue,
                input,
                schedule_to_close_timeout_ms: options.schedule_to_close_timeout_ms,
                schedule_to_start_timeout_ms: options.schedule_to_start_timeout_ms,
                start_to_close_timeout_ms: options.start_to_close_timeout_ms,
                heartbeat_timeout_ms: options.heartbeat_timeout_ms,
                retry_policy: options.retry_policy,
            }));
        Ok((activity_id, activity_type))
    }
}

impl<T: DeserializeOwned> Future for ActivityFuture<T> {
    type Output = Result<T, ActivityError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if matches!(this.state, ActivityState::Unscheduled { .. }) {
            match this.schedule() {
                Ok((activity_id, activity_type)) => {
                    this.state = ActivityState::Scheduled {
                        activity_id,
                        activity_type,
                    };
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        let ActivityState::Scheduled {
            activity_id,
            activity_type,
        } = &this.state
        else {
            panic!("an activity future was polled after it completed");
        };
        let result = {
            let mut core = this.ctx.lock();
            let slot = core
                .activities
                .get_mut(activity_id)
                .expect("a scheduled activity has a slot");
            match slot.slot.poll_take(cx.waker()) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => result,
            }
        };
        let what = || format!("result of activity {activity_type}");
        let output =
            result.and_then(|value| PayloadError::decode(what, value).map_err(ActivityError::from));
        this.state = ActivityState::Done;
        Poll::Ready(output)
    }
}

impl<T> Drop for ActivityFuture<T> {
    fn drop(&mut self) {
        if let ActivityState::Scheduled { activity_id, .. } = &self.state
            && let Ok(mut core) = self.ctx.core.lock()
        {
            core.cancel_activity(activity_id);
        }
    }
}

/// A durable timer; dropping it before it fires cancels it.
#[must_use = "a timer starts only when its future is awaited or polled"]
pub struct TimerFuture {
    ctx: WorkflowContext,
    state: TimerState,
}

enum TimerState {
    Unstarted { duration_ms: u64 },
    Started { timer_id: String },
    Done,
}

impl Future for TimerFuture {
    type Output = Result<(), WorkflowError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut core = this.ctx.lock();
        if let TimerState::Unstarted { duration_ms } = this.state {
            if duration_ms == 0 {
                this.state = TimerState::Done;
                return Poll::Ready(Ok(()));
            }
            if core.scope_cancelled(this.ctx.scope) {
                // Started in a cancelled scope: never started.
                this.state = TimerState::Done;
                return Poll::Ready(Err(WorkflowError::Canceled));
            }
            let timer_id = core.next_timer_seq.to_string();
            core.next_timer_seq += 1;
            core.timers
                .insert(timer_id.clone(), Slot::Pending { waker: None });
            core.timer_scopes.insert(timer_id.clone(), this.ctx.scope);
            let command = Command::StartTimer {
                timer_id: timer_id.clone(),
                start_to_fire_timeout_ms: duration_ms,
            };
            core.commands.push(command);
            this.state = TimerState::Started { timer_id };
        }
        let TimerState::Started { timer_id } = &this.state else {
            panic!("a timer future was polled after it completed");
        };
        let slot = core
            .timers
            .get_mut(timer_id)
            .expect("a started timer has a slot");
        let result = std::task::ready!(slot.poll_take(cx.waker()));
        drop(core);
        this.state = TimerState::Done;
        Poll::Ready(result)
    }
}

impl Drop for TimerFuture {
    fn drop(&mut self) {
        if let TimerState::Started { timer_id } = &self.state
            && let Ok(mut core) = self.ctx.core.lock()
        {
            core.cancel_timer(timer_id);
            core.timers.remove(timer_id);
            core.timer_scopes.remove(timer_id);
        }
    }
}

/// The signals of one name.
pub struct SignalChannel<T> {
    ctx: WorkflowContext,
    name: String,
    _type: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> SignalChannel<T> {
    /// The next signal, waiting for one if none is buffered. Once the run is
    /// asked to cancel, a wait with no signal buffered ends with
    /// `Err(WorkflowError::Canceled)`, which the workflow may handle.
    pub fn recv(&self) -> SignalFuture<'_, T> {
        SignalFuture { channel: self }
    }

    /// The next buffered signal, if there is one.
    pub fn try_recv(&self) -> Option<Result<T, PayloadError>> {
        let value = self.ctx.lock().signals.get_mut(&self.name)?.pop_front()?;
        Some(PayloadError::decode(
            || format!("signal {}", self.name),
            value,
        ))
    }
}

/// The next signal of a channel.
pub struct SignalFuture<'a, T> {
    channel: &'a SignalChannel<T>,
}

impl<T: DeserializeOwned> Future for SignalFuture<'_, T> {
    type Output = Result<T, WorkflowError>;

    /// A buffered signal first; else, once the run was asked to cancel,
    /// `Err(WorkflowError::Canceled)` (a cancel request interrupts a wait for a
    /// signal as it does a timer or an activity); else waits for either.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(result) = self.channel.try_recv() {
            return Poll::Ready(result.map_err(WorkflowError::from));
        }
        let name = self.channel.name.clone();
        let mut core = self.channel.ctx.lock();
        if core.scope_cancelled(self.channel.ctx.scope) {
            return Poll::Ready(Err(WorkflowError::Canceled));
        }
        add_waker(core.signal_wakers.entry(name).or_default(), cx.waker());
        add_waker(&mut core.cancel_wakers, cx.waker());
        Poll::Pending
    }
}

/// Resolves once a condition holds ([`WorkflowContext::wait_condition`]).
#[must_use = "a condition is waited for only when its future is awaited"]
pub struct ConditionFuture {
    ctx: WorkflowContext,
    condition: Arc<ConditionFn>,
    /// Its place among the waiting conditions, once it has waited.
    seq: Option<u64>,
}

impl Future for ConditionFuture {
    type Output = Result<(), WorkflowError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let held = (this.condition)();
        let mut core = this.ctx.lock();
        let seq = *this.seq.get_or_insert_with(|| {
            core.next_condition_seq += 1;
            core.next_condition_seq - 1
        });
        if held || core.scope_cancelled(this.ctx.scope) {
            core.conditions.remove(&seq);
            return Poll::Ready(if held {
                Ok(())
            } else {
                Err(WorkflowError::Canceled)
            });
        }
        core.conditions
            .insert(seq, (this.condition.clone(), cx.waker().clone()));
        add_waker(&mut core.cancel_wakers, cx.waker());
        Poll::Pending
    }
}

impl Drop for ConditionFuture {
    fn drop(&mut self) {
        if let Some(seq) = self.seq {
            // Even after a panic poisoned the lock: a registration left
            // behind would hold the context it captured (a cycle, a leak).
            let mut core = self
                .ctx
                .core
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            core.conditions.remove(&seq);
        }
    }
}

/// Resolves when the context's scope is cancelled (the run's context: when
/// the run is asked to cancel).
pub struct CancelledFuture {
    ctx: WorkflowContext,
}

impl Future for CancelledFuture {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut core = self.ctx.lock();
        if core.scope_cancelled(self.ctx.scope) {
            return Poll::Ready(());
        }
        add_waker(&mut core.cancel_wakers, cx.waker());
        Poll::Pending
    }
}

/// Remembers `waker` unless an equivalent one is already there: a future
/// polled on every activation must not grow the list without bound.
fn add_waker(wakers: &mut Vec<Waker>, waker: &Waker) {
    if !wakers.iter().any(|known| known.will_wake(waker)) {
        wakers.push(waker.clone());
    }
}

/// What a continued run changes; by default nothing but its input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContinueAsNewOptions {
    /// The new run's workflow type, if not this run's.
    pub workflow_type: Option<String>,
    /// The new run's task queue, if not this run's.
    pub task_queue: Option<String>,
}

/// A signal or cancel request to another workflow
/// ([`WorkflowContext::signal_external`], [`WorkflowContext::cancel_external`]).
pub struct ExternalFuture {
    ctx: WorkflowContext,
    state: ExternalState,
}

enum ExternalState {
    Pending { seq: String },
    Failed(Option<WorkflowError>),
}

impl ExternalFuture {
    fn pending(ctx: &WorkflowContext, seq: String) -> ExternalFuture {
        ExternalFuture {
            ctx: ctx.clone(),
            state: ExternalState::Pending { seq },
        }
    }

    fn failed(ctx: &WorkflowContext, error: WorkflowError) -> ExternalFuture {
        ExternalFuture {
            ctx: ctx.clone(),
            state: ExternalState::Failed(Some(error)),
        }
    }
}

impl Future for ExternalFuture {
    type Output = Result<(), WorkflowError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            ExternalState::Failed(error) => {
                Poll::Ready(Err(error.take().expect("polled after it completed")))
            }
            ExternalState::Pending { seq } => {
                let mut core = this.ctx.lock();
                let slot = core.externals.get_mut(seq.as_str()).expect("issued");
                slot.poll_take(cx.waker())
            }
        }
    }
}

/// A cancellation scope ([`WorkflowContext::cancellation_scope`],
/// [`WorkflowContext::shielded_scope`]): start work with its context; cancel
/// it to cancel all of that work (activities get their cancellation type,
/// timers end with `Canceled`, waits end with `Canceled`).
pub struct CancellationScope {
    ctx: WorkflowContext,
}

impl CancellationScope {
    /// The context whose activities, timers and waits belong to this scope.
    pub fn ctx(&self) -> &WorkflowContext {
        &self.ctx
    }

    /// Cancels the scope and the scopes inside it that are not shielded.
    pub fn cancel(&self) {
        self.ctx.lock().cancel_scope(self.ctx.scope);
    }

    /// True once the scope was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.ctx.is_cancelled()
    }
}
