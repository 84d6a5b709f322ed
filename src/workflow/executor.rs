//! The deterministic workflow executor: drives a run's future from its history.
//!
//! It is pure: no clock, no I/O, no async runtime. Events go in (a whole history
//! or a slice of it), commands come out. The same code path serves a worker
//! (slices ending at a live `WorkflowTaskStarted`) and the [`super::Replayer`]
//! (whole histories).
//!
//! Walking the events in order:
//!
//! | event                                   | what the executor does                          |
//! |-----------------------------------------|-------------------------------------------------|
//! | `WorkflowExecutionStarted`              | builds the run's future from its input          |
//! | `WorkflowTaskStarted`, next is Completed | replay activation: polls with the task's markers known |
//! | `WorkflowTaskStarted`, last of the slice | live activation: polls and returns the commands  |
//! | `WorkflowTaskStarted`, otherwise         | skipped (the task timed out or failed)          |
//! | a command event                         | matched against the next unmatched command      |
//! | any other event, commands unmatched     | non-determinism: the code produced more          |
//! | activity / timer outcome, signal, cancel | resolves the waiting future                     |
//!
//! Every matched command, applied outcome and the result feed a digest of the
//! run's state, so two executions can be compared with one number.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use serde_json::Value;

use super::command::{
    AcceptUpdate, Command, CommandKey, LEGACY_PATCH_MARKER_NAME, PATCH_MARKER_NAME,
    event_command_key,
};
use super::context::{RunCore, WorkflowContext, WorkflowInfo};
use super::error::{ActivityError, ChildWorkflowError, WorkflowError};
use super::local_activity::{
    LOCAL_ACTIVITY_MARKER_NAME, LocalActivityOutcome, LocalActivityRequest,
};
use super::registry::{WorkflowFuture, WorkflowRegistry};
use super::replay::{NonDeterminism, ReplayError};
use super::update::UpdateFuture;
use crate::history::{Event, EventKind, UpdateOutcome};
use crate::types::{Fnv1a64, Timestamp, fnv1a64, payload_hash};

/// Polls of the root future per activation before the executor stops: a
/// workflow that keeps waking itself without waiting on anything is stuck.
pub const POLLS_PER_ACTIVATION_MAX: u32 = 1_000;

/// How a run ended, as its code decided.
#[derive(Clone, Debug, PartialEq)]
pub enum RunResult {
    /// The workflow returned a value.
    Completed(Value),
    /// The workflow returned an error.
    Failed(crate::types::Failure),
    /// The workflow accepted cancellation.
    Canceled,
    /// The workflow continued as a new run with this input.
    ContinuedAsNew(Value),
}

/// A digest of a run's state: every command, every applied outcome, the result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateDigest(pub u64);

impl std::fmt::Display for StateDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

struct FlagWaker(AtomicBool);

impl Wake for FlagWaker {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What one call of [`WorkflowExecutor::apply`] produced.
#[derive(Debug, Default, PartialEq)]
pub struct Activation {
    /// The commands of a live workflow task (the slice ended at its
    /// `WorkflowTaskStarted`), to send to the service. `None` if the slice
    /// ended elsewhere.
    pub commands: Option<Vec<Command>>,
}

/// Drives one run's workflow code from its history.
pub struct WorkflowExecutor {
    registry: WorkflowRegistry,
    workflow_id: String,
    run_id: String,
    core: Arc<Mutex<RunCore>>,
    future: Option<WorkflowFuture>,
    info: Option<WorkflowInfo>,
    next_event_id: u64,
    /// Commands produced and not yet confirmed by command events.
    unmatched: VecDeque<Command>,
    /// The last activation was live (no lookahead): its commands await the service.
    last_activation_live: bool,
    last_started_event_id: u64,
    activity_ids: BTreeMap<u64, String>,
    /// Activity types by scheduled event id (for failures that name them).
    activity_types: BTreeMap<u64, String>,
    /// Child workflow types by initiated event id (for failures that name them).
    child_types: BTreeMap<u64, String>,
    /// Child workflows' sequence numbers by initiated event id.
    child_seqs: BTreeMap<u64, String>,
    result: Option<RunResult>,
    closed: bool,
    /// A cancel request read since the last activation, applied when the
    /// next one starts: after every other event of its batch, so an activity
    /// that closed or a timer that fired in the same batch is resolved first
    /// and never asked to cancel (the service would refuse that command).
    cancel_requested_pending: bool,
    digest: u64,
    waker_flag: Arc<FlagWaker>,
    /// Updates handed over for the next live activation.
    updates_offered: Vec<AcceptUpdate>,
    /// Update ids this run accepted (in history, or in the live activation).
    accepted_updates: BTreeSet<String>,
    /// Updates the live activation's validators refused: (update id, why).
    update_rejections: Vec<(String, crate::types::Failure)>,
    /// Accepted updates whose handlers run, in acceptance order.
    update_futures: Vec<(String, UpdateFuture)>,
}

impl std::fmt::Debug for WorkflowExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowExecutor")
            .field("run_id", &self.run_id)
            .field("next_event_id", &self.next_event_id)
            .field("result", &self.result)
            .finish()
    }
}

impl WorkflowExecutor {
    /// An executor for one run; feed it the run's events from event 1.
    pub fn new(registry: &WorkflowRegistry, workflow_id: &str, run_id: &str) -> WorkflowExecutor {
        WorkflowExecutor {
            registry: registry.clone(),
            workflow_id: workflow_id.to_string(),
            run_id: run_id.to_string(),
            core: Arc::new(Mutex::new(RunCore::new(run_id))),
            future: None,
            info: None,
            next_event_id: 1,
            unmatched: VecDeque::new(),
            last_activation_live: false,
            last_started_event_id: 0,
            activity_ids: BTreeMap::new(),
            activity_types: BTreeMap::new(),
            child_types: BTreeMap::new(),
            child_seqs: BTreeMap::new(),
            result: None,
            closed: false,
            cancel_requested_pending: false,
            digest: fnv1a64(run_id.as_bytes()),
            waker_flag: Arc::new(FlagWaker(AtomicBool::new(false))),
            updates_offered: Vec::new(),
            accepted_updates: BTreeSet::new(),
            update_rejections: Vec::new(),
            update_futures: Vec::new(),
        }
    }

    /// Hands over the updates of the live workflow task the next `apply`
    /// ends at: each is validated there, then accepted or refused.
    pub fn offer_updates(&mut self, updates: Vec<AcceptUpdate>) {
        self.updates_offered = updates;
    }

    /// The updates the last live activation refused: (update id, why).
    pub fn take_update_rejections(&mut self) -> Vec<(String, crate::types::Failure)> {
        std::mem::take(&mut self.update_rejections)
    }

    /// The id of the next event the executor expects.
    pub fn next_event_id(&self) -> u64 {
        self.next_event_id
    }

    /// The `WorkflowTaskStarted` of the last activation (0 before the first).
    pub fn last_started_event_id(&self) -> u64 {
        self.last_started_event_id
    }

    /// How the code ended the run, once it has.
    pub fn result(&self) -> Option<&RunResult> {
        self.result.as_ref()
    }

    /// True once the history holds a terminal event.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The digest of the run's state so far.
    pub fn digest(&self) -> StateDigest {
        StateDigest(self.digest)
    }

    /// Facts about the run, once its start event was applied.
    pub fn info(&self) -> Option<&WorkflowInfo> {
        self.info.as_ref()
    }

    /// Commands of the last replayed workflow task that the history has not
    /// (yet) confirmed.
    pub fn unmatched_commands(&self) -> Vec<Command> {
        self.unmatched.iter().cloned().collect()
    }

    /// True if the last activation was replayed (not live) and left commands
    /// the history does not have.
    pub fn has_leftover_commands(&self) -> bool {
        !self.last_activation_live && !self.unmatched.is_empty()
    }

    /// The new digest is FNV-1a of the old digest's bytes and `what` as
    /// text, hashed as it is formatted (no string built).
    fn mix(&mut self, what: std::fmt::Arguments<'_>) {
        let mut hasher = Fnv1a64::new();
        hasher.update(&self.digest.to_le_bytes());
        hasher.write_fmt(what).expect("hashing never fails");
        self.digest = hasher.finish();
    }

    fn mix_key(&mut self, key: &CommandKey) {
        self.mix(format_args!(
            "{}|{}|{}|{:?}",
            key.kind, key.id, key.type_name, key.input_hash
        ));
    }

    /// Applies the next events (which must continue where the last call ended).
    /// Returns the commands of a live workflow task if the slice ends at one.
    pub fn apply(&mut self, events: &[Event]) -> Result<Activation, ReplayError> {
        let mut activation = Activation::default();
        for (index, event) in events.iter().enumerate() {
            if event.event_id != self.next_event_id {
                return Err(ReplayError::EventOutOfSequence {
                    expected: self.next_event_id,
                    found: event.event_id,
                });
            }
            self.check_unmatched_before(event)?;
            if let EventKind::WorkflowTaskStarted(_) = event.kind {
                activation.commands = self.on_workflow_task_started(event, &events[index + 1..])?;
            } else if event.kind.command_of().is_some() {
                self.on_command_event(event)?;
            } else {
                self.on_other_event(event)?;
            }
            self.next_event_id += 1;
        }
        debug_assert!(
            events
                .last()
                .is_none_or(|e| e.event_id + 1 == self.next_event_id)
        );
        Ok(activation)
    }

    /// Commands left unmatched when a non-command event arrives mean the code
    /// produced more than the history recorded.
    fn check_unmatched_before(&self, event: &Event) -> Result<(), ReplayError> {
        let Some(extra) = self.unmatched.front() else {
            return Ok(());
        };
        let is_command = event.kind.command_of().is_some();
        let is_completion = matches!(event.kind, EventKind::WorkflowTaskCompleted(_));
        if is_command || is_completion {
            return Ok(());
        }
        Err(ReplayError::NonDeterminism(NonDeterminism {
            event_id: event.event_id,
            history: format!("{} (no command at this position)", event.kind.name()),
            code: extra.key().to_string(),
            compared: "command kind",
        }))
    }

    fn on_workflow_task_started(
        &mut self,
        event: &Event,
        rest: &[Event],
    ) -> Result<Option<Vec<Command>>, ReplayError> {
        match rest.first().map(|e| &e.kind) {
            None => {
                let offered = std::mem::take(&mut self.updates_offered);
                let commands = self.activate(event, false, Vec::new(), offered)?;
                self.last_activation_live = true;
                Ok(Some(commands))
            }
            Some(EventKind::WorkflowTaskCompleted(_)) => {
                let commands = || {
                    rest[1..]
                        .iter()
                        .take_while(|e| e.kind.command_of().is_some())
                };
                let markers = commands()
                    .filter_map(|e| match &e.kind {
                        EventKind::MarkerRecorded(m) => {
                            Some((m.marker_name.clone(), m.details.clone()))
                        }
                        EventKind::UpsertWorkflowSearchAttributes(u) => Some((
                            super::visibility::UPSERT_LOOKAHEAD.to_string(),
                            serde_json::to_value(&u.search_attributes).unwrap_or_default(),
                        )),
                        _ => None,
                    })
                    .collect();
                let accepted = commands()
                    .filter_map(|e| match super::command::update_command(&e.kind) {
                        Some(Command::AcceptUpdate(accept)) => Some(accept),
                        _ => None,
                    })
                    .collect();
                self.activate(event, true, markers, accepted)?;
                self.last_activation_live = false;
                Ok(None)
            }
            Some(_) => Ok(None),
        }
    }

    /// Polls the workflow at a workflow task; the commands become unmatched
    /// until command events confirm them.
    fn activate(
        &mut self,
        event: &Event,
        replaying: bool,
        markers: Vec<(String, Value)>,
        updates: Vec<AcceptUpdate>,
    ) -> Result<Vec<Command>, ReplayError> {
        assert!(
            self.unmatched.is_empty(),
            "commands are matched before the next activation"
        );
        self.last_started_event_id = event.event_id;
        {
            let mut core = self.core.lock().expect("run core lock");
            core.now = event.event_time;
            core.replaying = replaying;
            core.expected_markers = markers;
            if std::mem::take(&mut self.cancel_requested_pending) {
                core.on_cancel_requested();
            }
        }
        self.poll_workflow(event.event_id)?;
        if self.deliver_updates(event.event_id, replaying, updates)? {
            self.poll_workflow(event.event_id)?;
        }
        if replaying {
            self.replay_local_activity_rounds(event.event_id)?;
        }
        let commands = std::mem::take(&mut self.core.lock().expect("run core lock").commands);
        for command in &commands {
            self.mix_key(&command.key());
        }
        self.unmatched = commands.iter().cloned().collect();
        Ok(commands)
    }

    /// Resolves each round of local activities from the task's markers, as
    /// the worker did live (see `local_activity`): a request without a
    /// marker stays unresolved, as it was when the task completed.
    fn replay_local_activity_rounds(&mut self, event_id: u64) -> Result<(), ReplayError> {
        loop {
            let outcomes: Vec<LocalActivityOutcome> = {
                let mut core = self.core.lock().expect("run core lock");
                let requests = core.local_activities.take_requests();
                requests
                    .iter()
                    .filter_map(|request| {
                        let seq = request.seq.to_string();
                        let details = core.expected_marker(LOCAL_ACTIVITY_MARKER_NAME, &seq)?;
                        LocalActivityOutcome::from_details(details).ok()
                    })
                    .collect()
            };
            if outcomes.is_empty() {
                return Ok(());
            }
            self.resolve_round(outcomes, event_id)?;
        }
    }

    /// Resolves a round's local activities (each recording its marker, in
    /// sequence order) and polls the workflow on.
    fn resolve_round(
        &mut self,
        mut outcomes: Vec<LocalActivityOutcome>,
        event_id: u64,
    ) -> Result<(), ReplayError> {
        outcomes.sort_by_key(|outcome| outcome.seq);
        {
            let mut core = self.core.lock().expect("run core lock");
            for outcome in outcomes {
                let details = outcome.to_details();
                if core.local_activities.resolve(outcome) {
                    core.commands.push(Command::RecordMarker {
                        marker_name: LOCAL_ACTIVITY_MARKER_NAME.to_string(),
                        details,
                    });
                }
            }
        }
        self.poll_workflow(event_id)
    }

    /// The local activities the live activation (or its last round) asked
    /// for, each handed out once, in sequence order.
    pub fn take_local_activity_requests(&mut self) -> Vec<LocalActivityRequest> {
        if !self.last_activation_live {
            return Vec::new();
        }
        let mut core = self.core.lock().expect("run core lock");
        core.local_activities.take_requests()
    }

    /// Resolves a round of the live activation's local activities with the
    /// worker's outcomes and lets the workflow go on. Returns the commands
    /// that adds, the round's markers first; the task completes with the
    /// activation's commands followed by every round's.
    pub fn resolve_local_activities(
        &mut self,
        outcomes: Vec<LocalActivityOutcome>,
    ) -> Result<Vec<Command>, ReplayError> {
        assert!(
            self.last_activation_live,
            "local activities are run in a live activation"
        );
        self.resolve_round(outcomes, self.last_started_event_id)?;
        let commands = std::mem::take(&mut self.core.lock().expect("run core lock").commands);
        for command in &commands {
            self.mix_key(&command.key());
        }
        self.unmatched.extend(commands.iter().cloned());
        Ok(commands)
    }

    fn poll_workflow(&mut self, event_id: u64) -> Result<(), ReplayError> {
        if self.future.is_none() {
            return Ok(());
        }
        let waker = Waker::from(self.waker_flag.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..POLLS_PER_ACTIVATION_MAX {
            self.waker_flag.0.store(false, Ordering::Relaxed);
            let future = self.future.as_mut().expect("polled while open");
            let polled =
                std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)));
            match polled {
                Err(panic) => {
                    self.future = None;
                    return Err(ReplayError::Panicked {
                        event_id,
                        message: panic_message(&panic),
                    });
                }
                Ok(Poll::Ready(output)) => {
                    self.future = None;
                    // Handlers still running end with the run: nothing may
                    // follow its close.
                    self.update_futures.clear();
                    self.finish(output);
                    return Ok(());
                }
                Ok(Poll::Pending) => self.poll_update_handlers(&mut cx, event_id)?,
            }
            if self.waker_flag.0.load(Ordering::Relaxed)
                // The code ran as far as it can: a condition it waits on may
                // hold now (another branch changed what it reads).
                || RunCore::wake_a_true_condition(&self.core)
            {
                continue;
            }
            return Ok(());
        }
        Ok(())
    }

    /// Polls each running update handler once; one that returned records
    /// its `CompleteUpdate`.
    fn poll_update_handlers(
        &mut self,
        cx: &mut Context<'_>,
        event_id: u64,
    ) -> Result<(), ReplayError> {
        let mut index = 0;
        while index < self.update_futures.len() {
            let (update_id, future) = &mut self.update_futures[index];
            let polled = std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx)));
            let output = match polled {
                Err(panic) => {
                    let message = format!("update {update_id:?}: {}", panic_message(&panic));
                    return Err(ReplayError::Panicked { event_id, message });
                }
                Ok(Poll::Pending) => {
                    index += 1;
                    continue;
                }
                Ok(Poll::Ready(output)) => output,
            };
            let (update_id, _) = self.update_futures.remove(index);
            let outcome = match output {
                Ok(result) => UpdateOutcome::Success(result),
                Err(error) => UpdateOutcome::Failure(error.to_failure()),
            };
            let command = Command::CompleteUpdate { update_id, outcome };
            self.core
                .lock()
                .expect("run core lock")
                .commands
                .push(command);
        }
        Ok(())
    }

    /// Delivers the offered updates once the code ran as far as it can:
    /// live, each passes its validator or is refused; in replay, each is one
    /// the history accepted here. Returns true if any was accepted.
    fn deliver_updates(
        &mut self,
        event_id: u64,
        replaying: bool,
        offered: Vec<AcceptUpdate>,
    ) -> Result<bool, ReplayError> {
        let mut accepted_any = false;
        for update in offered {
            if self.accepted_updates.contains(&update.update_id) && !replaying {
                continue; // Accepted by an earlier task; its handler runs.
            }
            let handler = self
                .core
                .lock()
                .expect("run core lock")
                .update_handlers
                .get(&update.update_name)
                .cloned();
            let refusal = match (&handler, self.future.is_some()) {
                (_, false) => Some("the workflow closed before accepting it".to_string()),
                (None, _) => Some(format!("no handler for update {:?}", update.update_name)),
                (Some(_), _) if replaying => None,
                (Some(handler), _) => run_validator(handler, &update.input).err(),
            };
            if let Some(message) = refusal {
                if replaying {
                    return Err(ReplayError::NonDeterminism(NonDeterminism {
                        event_id,
                        history: format!("AcceptUpdate(id {:?})", update.update_id),
                        code: message,
                        compared: "update handler",
                    }));
                }
                let failure = crate::types::Failure::new("UpdateRejected", message);
                self.update_rejections.push((update.update_id, failure));
                continue;
            }
            let handler = handler.expect("refused without one");
            let future = (handler.handle)(update.input.clone());
            self.accepted_updates.insert(update.update_id.clone());
            self.update_futures.push((update.update_id.clone(), future));
            let command = Command::AcceptUpdate(update);
            self.core
                .lock()
                .expect("run core lock")
                .commands
                .push(command);
            accepted_any = true;
        }
        Ok(accepted_any)
    }

    fn finish(&mut self, output: Result<Value, WorkflowError>) {
        let mut core = self.core.lock().expect("run core lock");
        let cancel_requested = core.is_cancel_requested();
        let (result, command) = match output {
            Ok(value) => (
                RunResult::Completed(value.clone()),
                Command::CompleteWorkflowExecution { result: value },
            ),
            Err(WorkflowError::ContinueAsNew(command)) => (
                RunResult::ContinuedAsNew(command.input.clone()),
                Command::ContinueAsNewWorkflowExecution(*command),
            ),
            Err(error) if error.is_cancellation() && cancel_requested => (
                RunResult::Canceled,
                Command::CancelWorkflowExecution { details: None },
            ),
            Err(error) => {
                let failure = error.to_failure();
                (
                    RunResult::Failed(failure.clone()),
                    Command::FailWorkflowExecution { failure },
                )
            }
        };
        core.commands.push(command);
        drop(core);
        self.result = Some(result);
    }

    fn on_command_event(&mut self, event: &Event) -> Result<(), ReplayError> {
        let activity_ids = &self.activity_ids;
        let key = event_command_key(&event.kind, |scheduled| {
            activity_ids.get(&scheduled).cloned().unwrap_or_default()
        })
        .expect("command events have keys");
        let deprecated_patch = is_deprecated_patch(&event.kind);
        let matched = match self.unmatched.front() {
            None if deprecated_patch => return Ok(()),
            None => {
                return Err(ReplayError::NonDeterminism(NonDeterminism {
                    event_id: event.event_id,
                    history: key.to_string(),
                    code: "nothing".to_string(),
                    compared: "command kind",
                }));
            }
            Some(command) => command.key(),
        };
        if let Some(compared) = key.first_difference(&matched) {
            if deprecated_patch {
                return Ok(());
            }
            return Err(ReplayError::NonDeterminism(NonDeterminism {
                event_id: event.event_id,
                history: key.to_string(),
                code: matched.to_string(),
                compared,
            }));
        }
        self.unmatched.pop_front();
        match &event.kind {
            EventKind::ActivityTaskScheduled(a) => {
                self.activity_ids
                    .insert(event.event_id, a.activity_id.clone());
                self.activity_types
                    .insert(event.event_id, a.activity_type.clone());
            }
            EventKind::StartChildWorkflowExecutionInitiated(a) => {
                self.child_seqs.insert(event.event_id, a.control.clone());
                self.child_types
                    .insert(event.event_id, a.workflow_type.clone());
            }
            EventKind::WorkflowExecutionUpdateAccepted(a) => {
                self.accepted_updates.insert(a.update_id.clone());
            }
            kind if kind.is_terminal() => self.closed = true,
            _ => {}
        }
        Ok(())
    }

    fn on_other_event(&mut self, event: &Event) -> Result<(), ReplayError> {
        use EventKind::*;
        match &event.kind {
            WorkflowExecutionStarted(started) => self.on_started(event, started)?,
            ActivityTaskCompleted(a) => self.resolve_activity(
                event,
                a.scheduled_event_id,
                Ok(a.result.clone()),
                payload_hash(&a.result),
            ),
            ActivityTaskFailed(_) | ActivityTaskTimedOut(_) => {
                let (scheduled_event_id, error) = self.activity_error(&event.kind);
                self.resolve_activity(event, scheduled_event_id, Err(error), 0);
            }
            ActivityTaskCanceled(a) => {
                self.resolve_activity(event, a.scheduled_event_id, Err(ActivityError::Canceled), 0)
            }
            TimerFired(a) => {
                self.mix(format_args!("TimerFired|{}", a.timer_id));
                self.core
                    .lock()
                    .expect("run core lock")
                    .resolve_timer(&a.timer_id);
            }
            WorkflowExecutionSignaled(a) => {
                self.mix(format_args!(
                    "Signaled|{}|{}",
                    a.signal_name,
                    payload_hash(&a.input)
                ));
                self.core
                    .lock()
                    .expect("run core lock")
                    .deliver_signal(&a.signal_name, a.input.clone());
            }
            WorkflowExecutionCancelRequested(_) => {
                self.mix(format_args!("CancelRequested"));
                self.cancel_requested_pending = true;
            }
            WorkflowExecutionTerminated(_) | WorkflowExecutionTimedOut(_) => self.closed = true,
            ExternalWorkflowExecutionSignaled(a) => self.resolve_external(&a.control, Ok(())),
            ExternalWorkflowExecutionCancelRequested(a) => {
                self.resolve_external(&a.control, Ok(()))
            }
            SignalExternalWorkflowExecutionFailed(a) => {
                let workflow_id = a.workflow_id.clone();
                let error = WorkflowError::ExternalWorkflowNotFound { workflow_id };
                self.resolve_external(&a.control, Err(error));
            }
            RequestCancelExternalWorkflowExecutionFailed(a) => {
                let workflow_id = a.workflow_id.clone();
                let error = WorkflowError::ExternalWorkflowNotFound { workflow_id };
                self.resolve_external(&a.control, Err(error));
            }
            kind => self.on_child_event(kind),
        }
        Ok(())
    }

    /// The error an activity's failure or timeout resolves its future with,
    /// and the activity's scheduled event id.
    fn activity_error(&self, kind: &EventKind) -> (u64, ActivityError) {
        match kind {
            EventKind::ActivityTaskFailed(a) => {
                let id = a.scheduled_event_id;
                let info = |s: &Self| {
                    s.activity_info(id, a.started_event_id, a.identity.clone(), a.retry_state)
                };
                let error = ActivityError::Failed {
                    failure: a.failure.clone(),
                    retry_state: a.retry_state,
                    activity: info(self),
                };
                (id, error)
            }
            EventKind::ActivityTaskTimedOut(a) => {
                let id = a.scheduled_event_id;
                let started = a.started_event_id.unwrap_or_default();
                let error = ActivityError::TimedOut {
                    timeout_type: a.timeout_type,
                    retry_state: a.retry_state,
                    last_failure: a.last_failure.clone().map(Box::new),
                    activity: self.activity_info(id, started, String::new(), a.retry_state),
                    timeout: a.failure.clone().map(Box::new),
                };
                (id, error)
            }
            _ => unreachable!("only an activity's failure or timeout"),
        }
    }

    /// The error a failed child resolves its parent's await with.
    fn child_failed(&self, a: &crate::history::ChildWorkflowExecutionFailed) -> ChildWorkflowError {
        let workflow_type = self.child_types.get(&a.initiated_event_id).cloned();
        let child = Box::new(crate::types::ChildWorkflowFailureInfo {
            workflow_id: a.workflow_id.clone(),
            run_id: a.run_id.clone(),
            workflow_type: workflow_type.unwrap_or_default(),
            initiated_event_id: a.initiated_event_id,
            started_event_id: a.started_event_id,
            retry_state: crate::types::RetryState::RetryPolicyNotSet,
        });
        ChildWorkflowError::Failed {
            workflow_id: a.workflow_id.clone(),
            failure: Box::new(a.failure.clone()),
            child,
        }
    }

    /// A child workflow's start or close resolves what its parent awaits.
    fn on_child_event(&mut self, kind: &EventKind) {
        use EventKind::*;
        let (initiated, started, result) = match kind {
            ChildWorkflowExecutionStarted(a) => (a.initiated_event_id, Ok(a.run_id.clone()), None),
            StartChildWorkflowExecutionFailed(a) => {
                let workflow_id = a.workflow_id.clone();
                let error = ChildWorkflowError::AlreadyStarted { workflow_id };
                (a.initiated_event_id, Err(error.into()), None)
            }
            ChildWorkflowExecutionCompleted(a) => (
                a.initiated_event_id,
                Ok(String::new()),
                Some(Ok(a.result.clone())),
            ),
            ChildWorkflowExecutionFailed(a) => {
                let error = self.child_failed(a);
                (
                    a.initiated_event_id,
                    Ok(String::new()),
                    Some(Err(error.into())),
                )
            }
            ChildWorkflowExecutionCanceled(a) => {
                let workflow_id = a.workflow_id.clone();
                let error = ChildWorkflowError::Canceled { workflow_id };
                (
                    a.initiated_event_id,
                    Ok(String::new()),
                    Some(Err(error.into())),
                )
            }
            ChildWorkflowExecutionTimedOut(a) => {
                let workflow_id = a.workflow_id.clone();
                let error = ChildWorkflowError::TimedOut { workflow_id };
                (
                    a.initiated_event_id,
                    Ok(String::new()),
                    Some(Err(error.into())),
                )
            }
            ChildWorkflowExecutionTerminated(a) => {
                let (workflow_id, reason) = (a.workflow_id.clone(), a.reason.clone());
                let error = ChildWorkflowError::Terminated {
                    workflow_id,
                    reason,
                };
                (
                    a.initiated_event_id,
                    Ok(String::new()),
                    Some(Err(error.into())),
                )
            }
            _ => return,
        };
        let Some(seq) = self.child_seqs.get(&initiated).cloned() else {
            return;
        };
        match result {
            None => {
                self.mix(format_args!("Child|{seq}|started|{}", started.is_ok()));
                let mut core = self.core.lock().expect("run core lock");
                core.resolve_child_started(&seq, started);
            }
            Some(result) => {
                let hash = result.as_ref().map_or(0, payload_hash);
                self.mix(format_args!("Child|{seq}|closed|{}|{hash}", result.is_ok()));
                let mut core = self.core.lock().expect("run core lock");
                core.resolve_child_result(&seq, result);
            }
        }
    }

    fn resolve_external(&mut self, control: &str, result: Result<(), WorkflowError>) {
        self.mix(format_args!("External|{control}|{}", result.is_ok()));
        self.core
            .lock()
            .expect("run core lock")
            .resolve_external(control, result);
    }

    fn on_started(
        &mut self,
        event: &Event,
        started: &crate::history::WorkflowExecutionStarted,
    ) -> Result<(), ReplayError> {
        let factory = self.registry.get(&started.workflow_type).ok_or_else(|| {
            ReplayError::UnknownWorkflowType {
                workflow_type: started.workflow_type.clone(),
                known: self.registry.names(),
            }
        })?;
        let info = WorkflowInfo {
            workflow_id: self.workflow_id.clone(),
            run_id: self.run_id.clone(),
            workflow_type: started.workflow_type.clone(),
            task_queue: started.task_queue.clone(),
            start_time: event.event_time,
            attempt: started.attempt,
            continued_failure: started.continued_failure.as_deref().cloned(),
            last_completion_result: started.last_completion_result.clone(),
            search_attributes: started.search_attributes.clone(),
            memo: started.memo.clone(),
        };
        {
            let mut core = self.core.lock().expect("run core lock");
            core.visibility.search_attributes = started.search_attributes.clone();
            core.visibility.memo = started.memo.clone();
        }
        let ctx = WorkflowContext::new(self.core.clone(), info.clone());
        self.future = Some(factory(ctx, started.input.clone())?);
        self.info = Some(info);
        self.mix(format_args!(
            "Started|{}|{}",
            started.workflow_type,
            payload_hash(&started.input)
        ));
        Ok(())
    }

    /// The activity scheduled at `scheduled_event_id`, for its failure.
    fn activity_info(
        &self,
        scheduled_event_id: u64,
        started_event_id: u64,
        identity: String,
        retry_state: crate::types::RetryState,
    ) -> Box<crate::types::ActivityFailureInfo> {
        let known = |map: &BTreeMap<u64, String>| map.get(&scheduled_event_id).cloned();
        Box::new(crate::types::ActivityFailureInfo {
            scheduled_event_id,
            started_event_id,
            identity,
            activity_type: known(&self.activity_types).unwrap_or_default(),
            activity_id: known(&self.activity_ids).unwrap_or_default(),
            retry_state,
        })
    }

    fn resolve_activity(
        &mut self,
        event: &Event,
        scheduled_event_id: u64,
        result: Result<Value, ActivityError>,
        hash: u64,
    ) {
        self.mix(format_args!(
            "{}|{scheduled_event_id}|{hash}",
            event.kind.name()
        ));
        if let Some(activity_id) = self.activity_ids.get(&scheduled_event_id) {
            self.core
                .lock()
                .expect("run core lock")
                .resolve_activity(activity_id, result);
        }
    }

    /// Answers a query from the run's current state.
    pub fn query(&self, name: &str, args: Value) -> Result<Value, QueryError> {
        let (handler, known) = {
            let core = self.core.lock().expect("run core lock");
            (core.query_handler(name), core.query_names())
        };
        let handler = handler.ok_or_else(|| QueryError::Unknown {
            name: name.to_string(),
            known,
        })?;
        handler(args).map_err(QueryError::Failed)
    }

    /// The time of the last activation.
    pub fn now(&self) -> Timestamp {
        self.core.lock().expect("run core lock").now
    }
}

impl Drop for WorkflowExecutor {
    fn drop(&mut self) {
        // Drop the future first: its futures lock the core in their own drops.
        self.future = None;
    }
}

/// A query that could not be answered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// No handler of that name is registered (yet) by the run.
    #[error("unknown query {name:?}; the run answers {known:?}")]
    Unknown {
        /// The query asked.
        name: String,
        /// The queries the run answers.
        known: Vec<String>,
    },
    /// The handler failed.
    #[error("query failed: {0}")]
    Failed(String),
}

fn is_deprecated_patch(kind: &EventKind) -> bool {
    match kind {
        EventKind::MarkerRecorded(m)
            if m.marker_name == PATCH_MARKER_NAME || m.marker_name == LEGACY_PATCH_MARKER_NAME =>
        {
            m.details
                .get("deprecated")
                .and_then(Value::as_bool)
                .unwrap_or(false)
        }
        _ => false,
    }
}

/// Runs a validator, a panic in it refusing the update.
fn run_validator(handler: &super::update::UpdateHandler, input: &Value) -> Result<(), String> {
    let validated = std::panic::catch_unwind(AssertUnwindSafe(|| (handler.validate)(input)));
    validated
        .unwrap_or_else(|panic| Err(format!("the validator panicked: {}", panic_message(&panic))))
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "workflow code panicked".to_string()
    }
}
