//! The reference model: from the program (and what the client did), which
//! histories are allowed.
//!
//! The model is pure. It is strict where faults cannot matter and lenient
//! exactly where they can; in a calm seed (no faults at all) it is strict
//! about the nominal outcome too.
//!
//! | what                          | always (any faults)                                                   | calm seeds only                  |
//! |-------------------------------|-----------------------------------------------------------------------|----------------------------------|
//! | run outcome                   | Completed, or Canceled / Terminated / TimedOut only if the client or the execution timeout can cause it; never Failed | - |
//! | activity options              | the scheduled event carries the program's timeouts and normalised policy | -                            |
//! | attempt counts                | never above `maximum_attempts`; attempt k starts no earlier than the sum of backoffs before it | the nominal attempt |
//! | completed activity            | attempt k's script succeeds, the result names attempt k and its tag   | -                                |
//! | failed activity               | attempt k's script fails, with its failure type; retry state: CancelRequested, NonRetryableFailure, MaximumAttemptsReached at k = max, or Timeout with a schedule-to-close | - |
//! | timed-out activity            | the timeout is set; retry state as above                              | the script hangs (silently for a heartbeat timeout) |
//! | canceled activity             | its cancel was requested first                                        | -                                |
//! | heartbeat details             | seen details come from an earlier heartbeating attempt                | exactly the last such attempt    |
//! | timers, schedule-to-close, execution timeout | fire no earlier than their deadline, no later than deadline + tolerance (looser with faults) | - |
//! | the workflow's reports        | match the history (activity outcomes, signals, side effects, patches, `now`, uuids) | - |
//! | queries                       | progress answers never go back and never exceed the step count        | -                                |
//! | workflow task failures        | only from a transient bug in the program; the next attempt after the backoff (1 s doubling, ≤ 60 s), not too late | - |
//! | shaped payloads               | within the limits: never refused for a limit, stored once as sent; over: never stored (nor a start's run) | - |

use std::collections::{BTreeMap, BTreeSet};

use retrace::api::RunOutcome;
use retrace::history::{
    ActivityTaskScheduled, ActivityTaskStarted, Event, EventKind, History, WorkflowTaskFailedCause,
};
use retrace::types::{Failure, FailureInfo, RetryState, TimeoutType, Timestamp};
use serde_json::Value;

use super::attempts;
use super::chain;
use super::children;
use super::externals;
use super::interpreter::{
    ActivityReport, GAVE_UP, ScriptInput, ScriptOutput, StepReport, TRANSIENT_BUG,
};
use super::program::{
    ActivitySpec, Behaviour, Branch, CONTINUE_AFTER_MS, Cancellation, ClientAction, Program,
    RunSpec, Shape, Step,
};
use retrace::workflow::{
    LOCAL_ACTIVITY_MARKER_NAME, LocalActivityOutcome, PATCH_MARKER_NAME, SIDE_EFFECT_MARKER_NAME,
};

use crate::EffectLedger;

/// How late a timer or timeout may fire in a calm seed.
pub const CALM_TOLERANCE_MS: u64 = 1_000;
/// How late past the end of the safety phase one may fire in a seed with faults.
pub const FAULTY_TOLERANCE_MS: u64 = 15_000;
/// Attempts the nominal model follows, at most.
pub const NOMINAL_ATTEMPTS_MAX: u32 = 64;

/// What the client did and saw for one action.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientRecord {
    pub action: ClientAction,
    /// The answer of a query, or the error of any call.
    pub result: Result<Option<u64>, String>,
    /// What `describe` answered.
    pub described: Option<Described>,
}

/// The parts of a `describe` answer the model checks.
#[derive(Clone, Debug, PartialEq)]
pub struct Described {
    /// The run described (the workflow id's current run then).
    pub run_id: String,
    pub history_length: u64,
    pub workflow_task: Option<String>,
    /// Each pending activity's id and state.
    pub activities: Vec<(String, String)>,
    /// The workers `DescribeTaskQueue` listed for the run's queue, asked
    /// right after (`None`: that call failed).
    pub pollers: Option<Vec<(String, retrace::api::PollerKind)>>,
}

impl Described {
    pub fn of(description: &retrace::api::RunDescription) -> Described {
        Described {
            run_id: description.run_id.clone(),
            history_length: description.history_length,
            workflow_task: description.workflow_task.clone(),
            activities: description
                .pending_activities
                .iter()
                .map(|a| (a.activity_id.clone(), a.state.clone()))
                .collect(),
            pollers: None,
        }
    }
}

/// The states `describe` may give a pending activity.
const ACTIVITY_STATES: [&str; 4] = ["Scheduled", "Started", "CancelRequested", "BackingOff"];

/// The workflow task `describe` must show after the first events of a
/// history: workflow task events are written with the state they change.
fn workflow_task_after(prefix: &[Event]) -> Option<&'static str> {
    let mut task = None;
    for event in prefix {
        task = match &event.kind {
            // A start delay or a retry's backoff: no task until it ends.
            EventKind::WorkflowExecutionStarted(s)
                if s.first_workflow_task_backoff_ms.is_some() =>
            {
                Some("Backoff")
            }
            EventKind::WorkflowTaskScheduled(_) => Some("Scheduled"),
            EventKind::WorkflowTaskStarted(_) => Some("Started"),
            EventKind::WorkflowTaskFailed(f)
                if matches!(
                    f.cause,
                    WorkflowTaskFailedCause::WorkflowWorkerUnhandledFailure
                        | WorkflowTaskFailedCause::NonDeterministicError
                        | WorkflowTaskFailedCause::BadCommand
                ) =>
            {
                Some("Backoff")
            }
            EventKind::WorkflowTaskCompleted(_)
            | EventKind::WorkflowTaskTimedOut(_)
            | EventKind::WorkflowTaskFailed(_) => None,
            kind if kind.is_terminal() => None,
            _ => task,
        };
    }
    task
}

/// The client's records, by workflow id, in the order it made them.
pub type ClientLog = BTreeMap<String, Vec<ClientRecord>>;

/// Everything the model needs besides the program.
pub struct Observed<'a> {
    pub histories: &'a BTreeMap<String, History>,
    pub outcomes: &'a BTreeMap<String, RunOutcome>,
    pub client: &'a ClientLog,
    /// Effects the services applied, by caller (an activity's idempotency key).
    pub ledger: &'a EffectLedger,
    /// Length of the safety phase (faults happen only in it).
    pub safety_ms: u64,
    /// How far apart the services' clocks read (0 with one service).
    pub clock_spread_ms: u64,
}

/// Checks every run of `program`; the error names each run and what the
/// model expected.
pub fn check(program: &Program, observed: &Observed<'_>) -> Result<(), String> {
    let mut problems = Vec::new();
    for spec in program.runs.iter().chain(program.children()) {
        let mut run = RunCheck {
            program,
            spec,
            observed,
            problems: Vec::new(),
            closed_canceled: false,
            chain: Vec::new(),
            carried: Vec::new(),
            attempts: Vec::new(),
        };
        run.check();
        problems.extend(
            run.problems
                .into_iter()
                .map(|p| format!("run {}: {p}", spec.workflow_id)),
        );
    }
    if let Some(spec) = program.cron {
        super::cron::check(spec, observed.histories, &mut problems);
    }
    if problems.is_empty() {
        return Ok(());
    }
    let calm = if program.calm { "calm" } else { "with faults" };
    Err(format!(
        "the reference model of seed {} ({calm}) rejects the run:\n  {}",
        program.seed,
        problems.join("\n  ")
    ))
}

/// The timer of `duration_ms` that fired, if one did: its start's and its
/// firing's event ids.
fn fired_timer_of(history: &History, duration_ms: u64) -> Option<(u64, u64)> {
    history.events().iter().find_map(|e| match &e.kind {
        EventKind::TimerFired(f) => {
            let started = by_id(history, f.started_event_id)?;
            matches!(&started.kind, EventKind::TimerStarted(s) if s.start_to_fire_timeout_ms == duration_ms)
                .then_some((started.event_id, e.event_id))
        }
        _ => None,
    })
}

/// The start time of the workflow task completed first after event `after`
/// (a failed or timed-out attempt does not count: its retry redid its work).
fn completed_task_time_after(history: &History, after: u64) -> Option<u64> {
    history.events().iter().find_map(|e| match &e.kind {
        EventKind::WorkflowTaskCompleted(c) if e.event_id > after => {
            by_id(history, c.started_event_id).map(|s| s.event_time.as_millis())
        }
        _ => None,
    })
}

/// The start time of the last workflow task completed before event `before`.
fn completed_task_time_before(history: &History, before: u64) -> Option<u64> {
    history.events().iter().rev().find_map(|e| match &e.kind {
        EventKind::WorkflowTaskCompleted(c) if e.event_id < before => {
            by_id(history, c.started_event_id).map(|s| s.event_time.as_millis())
        }
        _ => None,
    })
}

/// The event id of the start of the timer of `duration_ms`, if it started.
fn started_timer_of(history: &History, duration_ms: u64) -> Option<u64> {
    history.events().iter().find_map(|e| match &e.kind {
        EventKind::TimerStarted(s) if s.start_to_fire_timeout_ms == duration_ms => Some(e.event_id),
        _ => None,
    })
}

/// True if a workflow task completed between events `after` and `before`
/// (both excluded): the workflow code ran in between.
fn task_completed_between(history: &History, after: u64, before: u64) -> bool {
    history.events().iter().any(|e| {
        e.event_id > after
            && e.event_id < before
            && matches!(e.kind, EventKind::WorkflowTaskCompleted(_))
    })
}

/// The events of one activity.
struct ActivityEvents<'h> {
    scheduled: &'h Event,
    attributes: &'h ActivityTaskScheduled,
    started: Option<&'h ActivityTaskStarted>,
    close: Option<&'h Event>,
    cancel_requested_before_close: bool,
    cancel_requested: bool,
    /// The `ActivityTaskCancelRequested`, if any.
    cancel_request: Option<&'h Event>,
}

struct RunCheck<'a> {
    program: &'a Program,
    spec: &'a RunSpec,
    observed: &'a Observed<'a>,
    problems: Vec<String>,
    /// The run closed as canceled.
    closed_canceled: bool,
    /// The workflow id's runs, first to last (one unless it continued as new).
    chain: Vec<&'a History>,
    /// Names of the signals the chain's earlier runs received and carried.
    carried: Vec<String>,
    /// The failed attempts a workflow retry policy retried, before the chain.
    attempts: Vec<&'a History>,
}

impl<'a> RunCheck<'a> {
    fn problem(&mut self, message: String) {
        self.problems.push(message);
    }

    fn tolerance_ms(&self, deadline_ms: u64) -> u64 {
        if self.program.calm {
            CALM_TOLERANCE_MS
        } else {
            deadline_ms.max(self.observed.safety_ms) - deadline_ms + FAULTY_TOLERANCE_MS
        }
    }

    /// How late an event due at `due` may be written: the tolerance, from
    /// the end of the workflow task running at `due` if one was (what
    /// happens during a task is written when it ends, and local activities
    /// may keep a task running for up to the worker's window).
    fn late_ms_at(&self, history: &History, due: Timestamp, deadline_ms: u64) -> u64 {
        let tolerance_ms = self.tolerance_ms(deadline_ms);
        busy_until(history, due).map_or(tolerance_ms, |end| end.millis_since(due) + tolerance_ms)
    }

    fn check(&mut self) {
        let (program, histories) = (self.program, self.observed.histories);
        if self.spec.parent.is_some()
            && !children::check_child(
                program,
                self.spec,
                histories,
                self.observed.clock_spread_ms,
                &mut self.problems,
            )
        {
            return;
        }
        let Some(chain) = self.chain() else { return };
        let cancelable = self.may_be_canceled();
        let whole = chain::check_length(self.spec, &chain, cancelable, &mut self.problems);
        self.carried = chain::carried_names(self.spec, &chain);
        self.chain = chain;
        let history = self.chain[self.chain.len() - 1];
        self.closed_canceled = matches!(
            history.close_event().map(|e| &e.kind),
            Some(EventKind::WorkflowExecutionCanceled(_))
        );
        let completed = self.check_outcome(history);
        self.check_earlier_runs();
        if !whole {
            // Ended before the run of the steps: it only waited.
            self.check_timers_of(history, BTreeSet::from([CONTINUE_AFTER_MS]));
            self.check_client_events(history);
            self.check_start_signal(self.chain[0]);
            return;
        }
        let activities = self.check_activities(history, completed);
        self.check_timers(history);
        self.check_task_failures(history);
        self.check_client_events(history);
        self.check_start_signal(self.chain[0]);
        self.check_queries();
        let (histories, spread_ms) = (self.observed.histories, self.observed.clock_spread_ms);
        externals::check_sent(self.spec, history, histories, spread_ms, &mut self.problems);
        externals::check_cancels_sent(self.spec, history, histories, spread_ms, &mut self.problems);
        children::check_parent(self.spec, history, histories, &mut self.problems);
        if completed {
            self.check_reports(history, &activities);
        }
    }

    /// A run asked to cancel cleans up in a shielded scope: the cleanup is
    /// scheduled after the cancel request, never canceled, and completed
    /// before the run closed canceled; a run never asked schedules none.
    fn check_cleanup(
        &mut self,
        history: &History,
        cleanup: &ActivitySpec,
        events: Option<&ActivityEvents<'a>>,
    ) {
        let requested = history.events().iter().find_map(|e| {
            matches!(e.kind, EventKind::WorkflowExecutionCancelRequested(_)).then_some(e.event_id)
        });
        let Some(events) = events else {
            if self.closed_canceled {
                self.problem(format!(
                    "closed canceled without its cleanup {}",
                    cleanup.tag
                ));
            }
            return;
        };
        let mut check = ActivityCheck {
            run: self,
            spec: cleanup,
            events,
            what: format!("cleanup {}", cleanup.tag),
        };
        check.options();
        check.effects(history.run_id());
        if let Some(EventKind::ActivityTaskCompleted(c)) = events.close.map(|e| &e.kind) {
            check.completed(events.started.map(|s| s.attempt), &c.result);
        }
        let scheduled = events.scheduled.event_id;
        if requested.is_none_or(|requested| scheduled < requested) {
            self.problem(format!(
                "cleanup {} was scheduled (event {scheduled}) before any cancel request ({requested:?})",
                cleanup.tag
            ));
        }
        if events.cancel_requested {
            self.problem(format!(
                "cleanup {} was canceled: its scope is shielded",
                cleanup.tag
            ));
        }
        let closed = events.close.map(|e| e.kind.name());
        if self.closed_canceled && closed != Some("ActivityTaskCompleted") {
            self.problem(format!(
                "the run closed canceled, but its cleanup {} ended with {closed:?}",
                cleanup.tag
            ));
        }
    }

    /// The client or another run of the program asks this run to cancel.
    fn may_be_canceled(&self) -> bool {
        self.spec.client_does(|a| matches!(a, ClientAction::Cancel))
            || externals::canceler_of(self.program, &self.spec.workflow_id).is_some()
            || children::may_be_canceled(self.program, self.spec)
    }

    /// A cancel request in the history: the client's, or one another run
    /// of the program initiated.
    fn cancel_request_is_explained(&self) -> bool {
        let id = &self.spec.workflow_id;
        self.spec.client_does(|a| matches!(a, ClientAction::Cancel))
            || externals::cancelers_of(self.program, id).any(|sender| {
                externals::cancel_initiated_by(sender, id, self.observed.histories)
            })
            // A child's cancel requests are held to its parent by `children`.
            || self.spec.parent.is_some()
    }

    /// The workflow id's runs in chain order, their links and inputs checked.
    fn chain(&mut self) -> Option<Vec<&'a History>> {
        let id = &self.spec.workflow_id;
        let histories: Vec<&'a History> = self
            .observed
            .histories
            .values()
            .filter(|h| h.workflow_id() == id)
            .collect();
        if histories.is_empty() {
            self.problem("expected a run, found none".to_string());
            return None;
        }
        let calm = self.program.calm;
        attempts::check_first_tasks(self.spec, &histories, calm, &mut self.problems);
        let attempts = attempts::split(self.spec, &histories, &mut self.problems)?;
        self.attempts = attempts.failed;
        match chain::chain_of(self.spec, &attempts.rest) {
            Ok(chain) => {
                chain::check_links(&chain, &mut self.problems);
                attempts::check_last(self.spec, chain[chain.len() - 1], &mut self.problems);
                chain::check_inputs(self.spec, &chain, &mut self.problems);
                Some(chain)
            }
            Err(problem) => {
                self.problem(problem);
                None
            }
        }
    }

    /// Checks the run's close; returns true if it completed (a run that gives
    /// up right after an activity that failed or timed out fails with that
    /// activity's failure; see [`gave_up_as_expected`]).
    fn check_outcome(&mut self, history: &History) -> bool {
        let Some(close) = history.close_event() else {
            self.problem("never closed".to_string());
            return false;
        };
        let spec = self.spec;
        let allowed = match &close.kind {
            EventKind::WorkflowExecutionCompleted(_) => !spec.gives_up(),
            EventKind::WorkflowExecutionFailed(f) => {
                spec.gives_up() && gave_up_as_expected(spec, history, &f.failure)
            }
            EventKind::WorkflowExecutionCanceled(_) => self.may_be_canceled(),
            EventKind::WorkflowExecutionTerminated(_) => {
                spec.client_does(|a| matches!(a, ClientAction::Terminate))
                    || children::terminated_by_policy(spec, close)
            }
            EventKind::WorkflowExecutionTimedOut(_) => {
                self.check_execution_timeout(close);
                spec.execution_timeout_ms.is_some()
            }
            _ => false,
        };
        if !allowed {
            self.problem(format!(
                "closed with {} (expected {}{}{}{})",
                close.kind.name(),
                if spec.gives_up() {
                    "Failed with GaveUp"
                } else {
                    "Completed"
                },
                if self.may_be_canceled() {
                    ", or Canceled by the client or another run"
                } else {
                    ""
                },
                if spec.client_does(|a| matches!(a, ClientAction::Terminate)) {
                    ", or Terminated by the client"
                } else {
                    ""
                },
                if spec.execution_timeout_ms.is_some() {
                    ", or TimedOut by its execution timeout"
                } else {
                    ""
                },
            ));
        }
        let outcome = self.observed.outcomes.get(&spec.workflow_id);
        let agrees = matches!(
            (&close.kind, outcome),
            (
                EventKind::WorkflowExecutionCompleted(_),
                Some(RunOutcome::Completed { .. })
            ) | (
                EventKind::WorkflowExecutionCanceled(_),
                Some(RunOutcome::Canceled { .. })
            ) | (
                EventKind::WorkflowExecutionTerminated(_),
                Some(RunOutcome::Terminated { .. })
            ) | (
                EventKind::WorkflowExecutionTimedOut(_),
                Some(RunOutcome::TimedOut)
            ) | (
                EventKind::WorkflowExecutionFailed(_),
                Some(RunOutcome::Failed { .. })
            )
        );
        if !agrees {
            self.problem(format!(
                "its stored outcome {outcome:?} disagrees with its close event {}",
                close.kind.name()
            ));
        }
        matches!(close.kind, EventKind::WorkflowExecutionCompleted(_))
    }

    /// The chain shares one deadline, from its first run's start.
    fn check_execution_timeout(&mut self, close: &Event) {
        let (Some(timeout_ms), Some(first)) = (
            self.spec.execution_timeout_ms,
            self.chain[0].events().first(),
        ) else {
            return;
        };
        // The deadline counts from the end of the start delay.
        let delay_ms = self.spec.start_delay_ms.unwrap_or(0);
        let elapsed_ms = close
            .event_time
            .millis_since(first.event_time)
            .saturating_sub(delay_ms);
        let late_ms = self.tolerance_ms(timeout_ms);
        if elapsed_ms < timeout_ms || elapsed_ms > timeout_ms + late_ms {
            self.problem(format!(
                "its execution timeout of {timeout_ms} ms fired after {elapsed_ms} ms (allowed {timeout_ms}..={} ms)",
                timeout_ms + late_ms
            ));
        }
    }

    fn check_timers(&mut self, history: &History) {
        self.check_timers_of(history, self.spec.timer_durations());
    }

    /// The runs of the chain before the last: each only waited, with a
    /// timer of [`CONTINUE_AFTER_MS`], then continued (or was ended).
    fn check_earlier_runs(&mut self) {
        let earlier = self.chain[..self.chain.len() - 1].to_vec();
        for run in earlier {
            self.check_timers_of(run, BTreeSet::from([CONTINUE_AFTER_MS]));
        }
    }

    fn check_timers_of(&mut self, history: &History, durations: BTreeSet<u64>) {
        let events = history.events();
        for event in events {
            match &event.kind {
                EventKind::TimerStarted(s) if !durations.contains(&s.start_to_fire_timeout_ms) => {
                    self.problem(format!(
                        "timer {} of {} ms is not in the program ({durations:?})",
                        s.timer_id, s.start_to_fire_timeout_ms
                    ));
                }
                EventKind::TimerFired(f) => {
                    let Some(started) = by_id(history, f.started_event_id) else {
                        continue;
                    };
                    let EventKind::TimerStarted(s) = &started.kind else {
                        continue;
                    };
                    let duration_ms = s.start_to_fire_timeout_ms;
                    let elapsed_ms = event.event_time.millis_since(started.event_time);
                    let due = started.event_time.plus_ms(duration_ms);
                    let late_ms = self.late_ms_at(history, due, duration_ms);
                    if elapsed_ms < duration_ms || elapsed_ms > duration_ms + late_ms {
                        self.problem(format!(
                            "timer {} of {duration_ms} ms fired after {elapsed_ms} ms (allowed {duration_ms}..={} ms)",
                            f.timer_id,
                            duration_ms + late_ms
                        ));
                    }
                }
                _ => {}
            }
        }
    }

    /// The service never refuses the workflow's commands (`BadCommand`). A
    /// workflow task fails in the code only where the program has a
    /// transient bug, and says so; after a code failure the next task comes
    /// only after the service's backoff for that attempt.
    fn check_task_failures(&mut self, history: &History) {
        let has_bug = self
            .spec
            .steps
            .iter()
            .any(|s| matches!(s, Step::TransientBug { .. }));
        let events = history.events();
        for (index, event) in events.iter().enumerate() {
            let EventKind::WorkflowTaskFailed(failed) = &event.kind else {
                continue;
            };
            if failed.cause == WorkflowTaskFailedCause::BadCommand {
                // The interpreter's commands come from the SDK and are valid:
                // a refusal is the service's mistake.
                self.problem(format!(
                    "the service refused the workflow's commands: {}",
                    failed.failure.message
                ));
                continue;
            }
            if failed.cause != WorkflowTaskFailedCause::WorkflowWorkerUnhandledFailure {
                continue;
            }
            if !has_bug || !failed.failure.message.contains(TRANSIENT_BUG) {
                self.problem(format!(
                    "workflow task failed in the code, but the program has no transient bug there: {}",
                    failed.failure.message
                ));
                continue;
            }
            let attempt = by_id(history, failed.scheduled_event_id).and_then(|e| match &e.kind {
                EventKind::WorkflowTaskScheduled(s) => Some(s.attempt),
                _ => None,
            });
            let next = events[index + 1..].iter().find_map(|e| match &e.kind {
                EventKind::WorkflowTaskScheduled(s) => Some((e, s.attempt)),
                _ => None,
            });
            let (Some(attempt), Some((next, next_attempt))) = (attempt, next) else {
                continue;
            };
            let backoff_ms = (1_000u64 << (attempt.min(16) - 1)).min(60_000);
            let waited_ms = next.event_time.millis_since(event.event_time);
            let late_ms = self.tolerance_ms(backoff_ms);
            if next_attempt != attempt + 1
                || waited_ms < backoff_ms
                || waited_ms > backoff_ms + late_ms
            {
                self.problem(format!(
                    "after workflow task attempt {attempt} failed in the code, attempt {next_attempt} was scheduled {waited_ms} ms later (expected attempt {} after {backoff_ms}..={} ms)",
                    attempt + 1,
                    backoff_ms + late_ms
                ));
            }
        }
    }

    /// A run started by signal-with-start holds its signal in its first
    /// write: the start, the first workflow task's scheduling, the signal.
    fn check_start_signal(&mut self, history: &History) {
        let Some((name, value)) = self.spec.start_signal() else {
            return;
        };
        let delayed = self.spec.start_delay_ms.is_some();
        let first_write: Vec<&EventKind> = history
            .events()
            .iter()
            .take(if delayed { 2 } else { 3 })
            .map(|e| &e.kind)
            .collect();
        // A delayed start schedules no workflow task until the delay ends.
        let holds = match first_write[..] {
            [
                EventKind::WorkflowExecutionStarted(_),
                EventKind::WorkflowTaskScheduled(_),
                EventKind::WorkflowExecutionSignaled(s),
            ] if !delayed => s.signal_name == name && s.input == value,
            [
                EventKind::WorkflowExecutionStarted(_),
                EventKind::WorkflowExecutionSignaled(s),
            ] if delayed => s.signal_name == name && s.input == value,
            _ => false,
        };
        if !holds {
            let names: Vec<&str> = first_write.iter().map(|k| k.name()).collect();
            self.problem(format!(
                "started by signal-with-start with {name}={value}, but its first events are {names:?}"
            ));
        }
    }

    /// A condition that held did so in the workflow task that first saw its
    /// signal once the wait had begun (a signal already there: the task that
    /// began the wait, known by the timer it started), not later.
    fn check_condition_time(&mut self, history: &History, name: &str, timeout_ms: u64, at_ms: u64) {
        if self.carried.iter().any(|n| n == name) {
            return; // held at once, from the input
        }
        let signaled = history.events().iter().find_map(|e| match &e.kind {
            EventKind::WorkflowExecutionSignaled(s) if s.signal_name == name => Some(e.event_id),
            _ => None,
        });
        let (Some(signaled), Some(started)) = (signaled, started_timer_of(history, timeout_ms))
        else {
            return;
        };
        let expected = if signaled > started {
            completed_task_time_after(history, signaled)
        } else {
            completed_task_time_before(history, started)
        };
        if expected.is_some_and(|expected| expected != at_ms) {
            self.problem(format!(
                "condition {name} held at {at_ms} ms, not in the workflow task of {expected:?} ms \
                 that first saw its signal (event {signaled}; the wait began by event {started})"
            ));
        }
    }

    /// Signals, cancel requests and terminations the client could have caused,
    /// in every run of the chain. A signal is delivered once per run (its
    /// request id is remembered by the run, as in Temporal).
    fn check_client_events(&mut self, history: &History) {
        let mut signals: BTreeMap<&str, u64> = BTreeMap::new();
        for run in self.chain.clone() {
            let counts = self.check_run_events(run);
            for (name, count) in counts {
                let seen = signals.entry(name).or_default();
                *seen = (*seen).max(count);
            }
        }
        for (name, count) in &signals {
            if *count > 1 {
                self.problem(format!(
                    "signal {name} was delivered {count} times to one run (sent once)"
                ));
            }
        }
        self.check_accepted_calls(history, &signals);
        self.check_shaped_refusals();
        self.check_describes();
        self.check_updates(history);
    }

    fn check_updates(&mut self, history: &History) {
        let records = self.observed.client.get(&self.spec.workflow_id);
        let answers: Vec<(ClientAction, Result<Option<u64>, String>)> = records
            .into_iter()
            .flatten()
            .map(|r| (r.action.clone(), r.result.clone()))
            .collect();
        let mut problems = Vec::new();
        super::updates::check(self.spec, history, &answers, &mut problems);
        for problem in problems {
            self.problem(problem);
        }
    }

    /// The client events of one run; returns how often each signal came.
    fn check_run_events(&mut self, run: &'a History) -> BTreeMap<&'a str, u64> {
        let mut signals: BTreeMap<&str, u64> = BTreeMap::new();
        for event in run.events() {
            match &event.kind {
                EventKind::WorkflowExecutionSignaled(s) => {
                    *signals.entry(s.signal_name.as_str()).or_default() += 1;
                    if let Some(shape) = self.shaped_signal(&s.signal_name) {
                        self.check_stored_shape(shape, &s.signal_name, &s.input);
                        continue;
                    }
                    if self.external_signal_checked(&s.signal_name, &s.input) {
                        continue;
                    }
                    let sent = self.spec.client.iter().any(|t| matches!(&t.action,
                        ClientAction::Signal { name, value, .. } if *name == s.signal_name && s.input == *value));
                    if !sent {
                        self.problem(format!(
                            "signal {} with {} was never sent",
                            s.signal_name, s.input
                        ));
                    }
                }
                EventKind::WorkflowExecutionCancelRequested(_)
                    if !self.cancel_request_is_explained() =>
                {
                    self.problem(
                        "a cancel was requested, but neither the client nor another run asked"
                            .to_string(),
                    );
                }
                _ => {}
            }
        }
        signals
    }

    fn check_transient_bug(&mut self, until_ms: u64, age_ms: u64) {
        if age_ms < until_ms {
            self.problem(format!(
                "its transient bug lasts {until_ms} ms, yet the code passed it at {age_ms} ms"
            ));
        }
    }

    /// `describe` shows the workflow task the history up to its length
    /// implies, and pending activities in known states.
    fn check_describes(&mut self) {
        let records = self.observed.client.get(&self.spec.workflow_id);
        let described: Vec<Described> = records
            .into_iter()
            .flatten()
            .filter_map(|r| r.described.clone())
            .collect();
        for d in described {
            let mut runs = self.attempts.iter().chain(&self.chain);
            let Some(history) = runs.find(|h| h.run_id() == d.run_id).copied() else {
                self.problem(format!(
                    "describe showed run {}, not of the chain",
                    d.run_id
                ));
                continue;
            };
            let Some(prefix) = history.events().get(..d.history_length as usize) else {
                self.problem(format!(
                    "describe showed {} events, the history has {}",
                    d.history_length,
                    history.len()
                ));
                continue;
            };
            let expected = workflow_task_after(prefix);
            if d.workflow_task.as_deref() != expected {
                self.problem(format!(
                    "describe at {} events showed workflow task {:?}, the history implies {expected:?}",
                    d.history_length, d.workflow_task
                ));
            }
            for (id, state) in &d.activities {
                if !ACTIVITY_STATES.contains(&state.as_str()) {
                    self.problem(format!("describe showed activity {id} in state {state:?}"));
                }
            }
            self.check_pollers(d.pollers.as_deref());
        }
    }

    /// The task queue's pollers are the program's workers (or its rogue
    /// worker); in a calm seed, where no service restart empties the log,
    /// at least one of them has polled for workflow tasks by then.
    fn check_pollers(&mut self, pollers: Option<&[(String, retrace::api::PollerKind)]>) {
        let Some(pollers) = pollers else { return };
        for (identity, _) in pollers {
            let known = identity.starts_with("worker-") || identity == super::rogue::IDENTITY;
            if !known {
                self.problem(format!(
                    "DescribeTaskQueue listed a poller {identity:?} that does not exist"
                ));
            }
        }
        let polled = pollers
            .iter()
            .any(|(_, kind)| *kind == retrace::api::PollerKind::Workflow);
        if self.program.calm && !polled {
            self.problem("DescribeTaskQueue listed no workflow poller in a calm seed".to_string());
        }
    }

    /// True if signal `name` with `input` is another run's external signal
    /// (then checked: that run's history initiated it).
    fn external_signal_checked(&mut self, name: &str, input: &Value) -> bool {
        let id = &self.spec.workflow_id;
        let value = input.as_u64().unwrap_or(u64::MAX);
        let Some(sender) = externals::sender_of(self.program, id, name, value) else {
            return false;
        };
        if !externals::sent_by(sender, name, self.observed.histories) {
            self.problem(format!(
                "signal {name} from {} was stored, but {} never initiated it",
                sender.workflow_id, sender.workflow_id
            ));
        }
        true
    }

    /// The shape of the run's shaped signal named `name`, if it is one.
    fn shaped_signal(&self, name: &str) -> Option<Shape> {
        self.spec.client.iter().find_map(|t| match &t.action {
            ClientAction::ShapedSignal { name: n, shape } if n == name => Some(*shape),
            _ => None,
        })
    }

    /// A stored shaped signal was within the limits and is stored as sent.
    fn check_stored_shape(&mut self, shape: Shape, name: &str, input: &Value) {
        if !shape.within_limits() {
            self.problem(format!(
                "signal {name} of shape {shape:?} is over a limit, yet it was stored"
            ));
        } else if *input != shape.payload() {
            self.problem(format!(
                "signal {name} of shape {shape:?} was stored with another payload"
            ));
        }
    }

    /// A payload within the limits is never refused for a limit; one over
    /// a limit is never stored (refused starts: no run has their id).
    fn check_shaped_refusals(&mut self) {
        let records = self.observed.client.get(&self.spec.workflow_id);
        for record in records.into_iter().flatten() {
            let shape = match &record.action {
                ClientAction::ShapedSignal { shape, .. } => *shape,
                ClientAction::ShapedStart { shape, .. } => *shape,
                _ => continue,
            };
            if let Err(error) = &record.result
                && shape.within_limits()
                && error.contains(shape.refusal_marker())
            {
                self.problem(format!(
                    "{:?} is within the limits, yet it was refused: {error}",
                    record.action
                ));
            }
            if let Err(error) = &record.result
                && let Some(problem) = unjustified_buffered_refusal(shape, error)
            {
                self.problem(problem);
            }
        }
        self.check_invalid_starts();
        for timed in &self.spec.client {
            let ClientAction::ShapedStart { workflow_id, shape } = &timed.action else {
                continue;
            };
            let stored = self.observed.histories.values();
            let runs = stored.filter(|h| h.workflow_id() == workflow_id).count();
            if runs > 0 {
                self.problem(format!(
                    "a start of {workflow_id} with an input of shape {shape:?} (over a limit) was stored: {runs} run(s)"
                ));
            }
        }
    }

    /// A start with a flaw is refused as invalid, naming what is wrong, and
    /// no run has its workflow id.
    fn check_invalid_starts(&mut self) {
        let records = self.observed.client.get(&self.spec.workflow_id);
        for record in records.into_iter().flatten() {
            let ClientAction::InvalidStart { workflow_id, flaw } = &record.action else {
                continue;
            };
            match &record.result {
                Ok(_) => self.problem(format!("a start with {flaw:?} was accepted")),
                Err(error) if !error.contains(flaw.refusal_marker()) => self.problem(format!(
                    "a start with {flaw:?} was refused, but not as invalid ({:?}): {error}",
                    flaw.refusal_marker()
                )),
                Err(_) => {}
            }
            let id = flaw.workflow_id(workflow_id);
            let stored = self.observed.histories.values();
            let runs = stored.filter(|h| h.workflow_id() == id).count();
            if runs > 0 {
                self.problem(format!(
                    "a start of {id:?} with {flaw:?} was stored: {runs} run(s)"
                ));
            }
        }
    }

    /// A client call the service accepted took effect: the service refuses
    /// calls on closed runs, and answers only after its write is durable.
    fn check_accepted_calls(&mut self, history: &History, signals: &BTreeMap<&str, u64>) {
        let records = self.observed.client.get(&self.spec.workflow_id);
        let accepted = records.into_iter().flatten().filter(|r| r.result.is_ok());
        let cancel_requested = self.chain.iter().any(|run| {
            run.events()
                .iter()
                .any(|e| matches!(e.kind, EventKind::WorkflowExecutionCancelRequested(_)))
        });
        let terminated = matches!(
            history.close_event().map(|e| &e.kind),
            Some(EventKind::WorkflowExecutionTerminated(_))
        );
        let mut missing = Vec::new();
        for record in accepted {
            if let ClientAction::ShapedSignal { shape, .. }
            | ClientAction::ShapedStart { shape, .. } = &record.action
                && !shape.within_limits()
            {
                self.problem(format!(
                    "the service accepted {:?}, over a limit: it must refuse it",
                    record.action
                ));
                continue;
            }
            let took_effect = match &record.action {
                ClientAction::Signal { name, .. } | ClientAction::RepeatSignal { name, .. } => {
                    signals.contains_key(name.as_str())
                }
                ClientAction::Cancel => cancel_requested,
                ClientAction::Terminate => terminated,
                ClientAction::Query => true,
                ClientAction::ShapedSignal { name, shape } => {
                    shape.within_limits() && signals.contains_key(name.as_str())
                }
                ClientAction::ShapedStart { .. } | ClientAction::InvalidStart { .. } => false,
                ClientAction::Describe => true,
                ClientAction::Update { update_id, .. } => {
                    super::updates::completed(history, update_id)
                }
            };
            if !took_effect {
                missing.push(record.action.clone());
            }
        }
        for action in missing {
            self.problem(format!(
                "the service accepted {action:?}, but the history does not show it"
            ));
        }
    }

    fn check_queries(&mut self) {
        let steps = self.spec.steps.len() as u64;
        let records = self.observed.client.get(&self.spec.workflow_id);
        let answers: Vec<u64> = records
            .into_iter()
            .flatten()
            .filter(|r| r.action == ClientAction::Query)
            .filter_map(|r| r.result.clone().ok().flatten())
            .collect();
        for pair in answers.windows(2) {
            if pair[1] < pair[0] {
                self.problem(format!(
                    "query progress went back from {} to {} ({answers:?})",
                    pair[0], pair[1]
                ));
            }
        }
        if let Some(over) = answers.iter().find(|a| **a > steps) {
            self.problem(format!("query progress {over} exceeds the {steps} steps"));
        }
    }
}

/// What is wrong with a refusal of a signal of `shape` for the buffered
/// limit, if it is one: the bytes it names must be the signal's, the limit
/// the workload's, and the two must pass the limit (a refusal at the limit
/// exactly, or for bytes the run does not hold, is the service's mistake).
fn unjustified_buffered_refusal(shape: Shape, error: &str) -> Option<String> {
    let number_after = |marker: &str| -> Option<u64> {
        let rest = &error[error.find(marker)? + marker.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    // Known by its code, not its words: a refusal whose text changed must
    // fail here, not leave the check silent.
    if !error.contains("ResourceExhausted") {
        return None;
    }
    let (Some(held), Some(bytes), Some(max)) = (
        number_after("holds "),
        number_after("runs; "),
        number_after("the limit of "),
    ) else {
        return Some(format!(
            "a buffered-limit refusal without its figures: {error}"
        ));
    };
    let size = retrace::history::payload_size_bytes(&shape.payload());
    let limit = super::program::BUFFERED_PAYLOAD_BYTES_MAX;
    let justified = bytes == size && max == limit && held <= max && held + bytes > max;
    (!justified).then(|| {
        format!(
            "a signal of {size} bytes was refused for the buffered limit ({limit} bytes) without cause: {error}"
        )
    })
}

fn by_id(history: &History, event_id: u64) -> Option<&Event> {
    let index = usize::try_from(event_id.checked_sub(1)?).ok()?;
    history
        .events()
        .get(index)
        .filter(|e| e.event_id == event_id)
}

/// The activities of a history, by tag.
fn activities_of(history: &History) -> BTreeMap<String, ActivityEvents<'_>> {
    let mut by_scheduled: BTreeMap<u64, ActivityEvents<'_>> = BTreeMap::new();
    for event in history.events() {
        let (scheduled_event_id, close) = match &event.kind {
            EventKind::ActivityTaskScheduled(a) => {
                by_scheduled.insert(
                    event.event_id,
                    ActivityEvents {
                        scheduled: event,
                        attributes: a,
                        started: None,
                        close: None,
                        cancel_requested_before_close: false,
                        cancel_requested: false,
                        cancel_request: None,
                    },
                );
                continue;
            }
            EventKind::ActivityTaskStarted(a) => {
                if let Some(entry) = by_scheduled.get_mut(&a.scheduled_event_id) {
                    entry.started = Some(a);
                }
                continue;
            }
            EventKind::ActivityTaskCancelRequested(a) => {
                if let Some(entry) = by_scheduled.get_mut(&a.scheduled_event_id) {
                    entry.cancel_requested = true;
                    entry.cancel_requested_before_close = entry.close.is_none();
                    entry.cancel_request = Some(event);
                }
                continue;
            }
            EventKind::ActivityTaskCompleted(a) => (a.scheduled_event_id, event),
            EventKind::ActivityTaskFailed(a) => (a.scheduled_event_id, event),
            EventKind::ActivityTaskTimedOut(a) => (a.scheduled_event_id, event),
            EventKind::ActivityTaskCanceled(a) => (a.scheduled_event_id, event),
            _ => continue,
        };
        if let Some(entry) = by_scheduled.get_mut(&scheduled_event_id) {
            entry.close = Some(close);
        }
    }
    by_scheduled
        .into_values()
        .map(|a| {
            let tag = serde_json::from_value::<ScriptInput>(a.attributes.input.clone())
                .map(|i| i.tag)
                .unwrap_or_else(|_| {
                    format!("<undecodable input of event {}>", a.scheduled.event_id)
                });
            (tag, a)
        })
        .collect()
}

/// What a calm world must give, when the schedule-to-close timeout does not
/// interfere: the close's kind, the attempt, and the retry state.
#[derive(Clone, Debug, PartialEq)]
pub enum Nominal {
    Completed {
        attempt: u32,
    },
    Failed {
        attempt: u32,
        retry_state: RetryState,
    },
    TimedOut {
        attempt: u32,
        timeout_type: TimeoutType,
        retry_state: RetryState,
    },
}

/// The nominal close of `spec` in a calm world (schedule-to-close aside).
pub fn nominal(spec: &ActivitySpec) -> Option<Nominal> {
    let max = spec.retry.maximum_attempts;
    for attempt in 1..=NOMINAL_ATTEMPTS_MAX {
        let last = max > 0 && attempt >= max;
        let retry_state = RetryState::MaximumAttemptsReached;
        match spec.behaviour(attempt) {
            Behaviour::Succeed => return Some(Nominal::Completed { attempt }),
            b if b.stops_retries() => {
                let retry_state = RetryState::NonRetryableFailure;
                return Some(Nominal::Failed {
                    attempt,
                    retry_state,
                });
            }
            Behaviour::FailRetryable | Behaviour::HeartbeatThenFail if last => {
                return Some(Nominal::Failed {
                    attempt,
                    retry_state,
                });
            }
            Behaviour::HangSilent if last && spec.timeouts.heartbeat_ms.is_some() => {
                let timeout_type = TimeoutType::Heartbeat;
                return Some(Nominal::TimedOut {
                    attempt,
                    timeout_type,
                    retry_state,
                });
            }
            Behaviour::HangSilent | Behaviour::HangHeartbeating if last => {
                let timeout_type = TimeoutType::StartToClose;
                return Some(Nominal::TimedOut {
                    attempt,
                    timeout_type,
                    retry_state,
                });
            }
            _ => {}
        }
    }
    None
}

/// The failure types attempt behaviour `b` may close with (`calm`: no faults).
fn failure_types(b: Behaviour, calm: bool) -> &'static [&'static str] {
    match (b, calm) {
        (Behaviour::FailRetryable, _) => &["ActivityError"],
        (Behaviour::FailNonRetryable, _) => &["NonRetryableError"],
        (Behaviour::FailListed, _) => &[super::program::LISTED_FAILURE_TYPE],
        (Behaviour::HeartbeatThenFail, _) => &["Flaky"],
        (Behaviour::ReturnOversize, _) => &[retrace::engine::machine::activity::RESULT_OVER_LIMIT],
        (Behaviour::Succeed, false) => &["Unavailable"],
        (Behaviour::HangHeartbeating | Behaviour::HangSilent, false) => &["WorkerShutdown"],
        (_, true) => &[],
    }
}

impl<'a> RunCheck<'a> {
    fn check_activities(
        &mut self,
        history: &'a History,
        completed: bool,
    ) -> BTreeMap<String, ActivityEvents<'a>> {
        let activities = activities_of(history);
        let run_canceled = history
            .events()
            .iter()
            .any(|e| matches!(e.kind, EventKind::WorkflowExecutionCancelRequested(_)));
        let scheduled = history
            .events()
            .iter()
            .filter(|e| matches!(e.kind, EventKind::ActivityTaskScheduled(_)))
            .count();
        if scheduled != activities.len() {
            let tags = activities.len();
            self.problem(format!(
                "{scheduled} activities scheduled for {tags} distinct tags"
            ));
        }
        let specs = self.spec.activities();
        let cleanup = self.spec.cleanup.as_ref();
        if let Some(cleanup) = cleanup {
            self.check_cleanup(history, cleanup, activities.get(&cleanup.tag));
        }
        for (tag, events) in &activities {
            if cleanup.is_some_and(|c| c.tag == *tag) {
                continue;
            }
            let Some((spec, droppable)) = specs.iter().find(|(s, _)| s.tag == *tag) else {
                self.problem(format!("activity {tag} is not in the program"));
                continue;
            };
            let mut check = ActivityCheck {
                run: self,
                spec,
                events,
                what: format!("activity {tag}"),
            };
            check.options();
            check.effects(history.run_id());
            check.close(completed, *droppable, run_canceled);
        }
        if completed {
            for (spec, _) in &specs {
                if !activities.contains_key(&spec.tag) {
                    self.problem(format!(
                        "activity {} was never scheduled though the run completed",
                        spec.tag
                    ));
                }
            }
        }
        activities
    }
}

struct ActivityCheck<'c, 'a> {
    run: &'c mut RunCheck<'a>,
    spec: &'c ActivitySpec,
    events: &'c ActivityEvents<'a>,
    what: String,
}

impl ActivityCheck<'_, '_> {
    fn problem(&mut self, message: String) {
        let message = format!("{}: {message}", self.what);
        self.run.problem(message);
    }

    /// The scheduled event carries the program's options and script.
    fn options(&mut self) {
        let a = self.events.attributes;
        let t = &self.spec.timeouts;
        let expected_policy = self
            .spec
            .retry
            .normalized()
            .expect("generated policies are valid");
        // The service records schedule-to-start filled from schedule-to-close.
        let schedule_to_start_ms = t.schedule_to_start_ms.or(t.schedule_to_close_ms);
        let same = a.schedule_to_start_timeout_ms == schedule_to_start_ms
            && a.schedule_to_close_timeout_ms == t.schedule_to_close_ms
            && a.start_to_close_timeout_ms == Some(t.effective_start_to_close_ms())
            && a.heartbeat_timeout_ms == t.heartbeat_ms
            && a.retry_policy == expected_policy;
        if !same {
            self.problem(format!("scheduled with options {a:?}, expected timeouts {t:?} and policy {expected_policy:?}"));
        }
        match serde_json::from_value::<ScriptInput>(a.input.clone()) {
            Ok(input)
                if input.script == self.spec.script && input.pad.len() == self.spec.pad_bytes => {}
            _ => self.problem("its input is not the program's script".to_string()),
        }
    }

    fn close(&mut self, run_completed: bool, droppable: bool, run_canceled: bool) {
        let spec = self.spec;
        let events = self.events;
        if events.cancel_requested
            && !run_canceled
            && !(droppable && spec.cancellation != Cancellation::Abandon)
        {
            self.problem(
                "a cancel was requested, but the workflow never asked for one".to_string(),
            );
        }
        let attempt = events.started.map(|s| s.attempt);
        if let Some(k) = attempt {
            let max = spec.retry.maximum_attempts;
            if k == 0 || (max > 0 && k > max) {
                self.problem(format!(
                    "attempt {k} started, but maximum_attempts is {max}"
                ));
            }
        }
        let Some(close) = events.close else {
            // A cancel resolves the workflow's future at once (TryCancel), and
            // an abandoned one is not waited for; a waited-for one is.
            let abandoned = droppable && spec.cancellation == Cancellation::Abandon;
            let waited = self.run.spec.waits_through_cancel(&spec.tag);
            let may_stay_open = !run_completed || (events.cancel_requested && !waited) || abandoned;
            if !may_stay_open {
                self.problem("never closed though the run completed".to_string());
            }
            if waited && events.cancel_requested && self.run.closed_canceled {
                self.problem("the run closed canceled before this activity, which it waits for (WaitCancellationCompleted), closed".to_string());
            }
            return;
        };
        if let Some(k) = attempt {
            self.minimum_elapsed(close, k);
        }
        match &close.kind {
            EventKind::ActivityTaskCompleted(c) => self.completed(attempt, &c.result),
            EventKind::ActivityTaskFailed(f) => {
                let failure_type = f.failure.failure_type.clone();
                self.failed(attempt, &failure_type, f.retry_state);
            }
            EventKind::ActivityTaskTimedOut(t) => {
                self.timed_out(close, attempt, t.timeout_type, t.retry_state);
                self.heartbeat_details(attempt, t.last_heartbeat_details.as_ref());
            }
            EventKind::ActivityTaskCanceled(_) if !events.cancel_requested_before_close => {
                self.problem("closed canceled, but no cancel was requested before".to_string());
            }
            _ => {}
        }
        if self.run.program.calm && !events.cancel_requested {
            self.nominal(close, attempt);
        }
        if self.run.program.calm {
            self.cancel_landed(close, attempt);
        }
    }

    /// In a calm seed, a cancel requested while an attempt hangs heartbeating
    /// reaches it with the next heartbeat's reply: the activity closes
    /// canceled, not by a timeout that comes due well after that.
    fn cancel_landed(&mut self, close: &Event, attempt: Option<u32>) {
        let (Some(request), Some(k), Some(heartbeat_ms)) = (
            self.events.cancel_request,
            attempt,
            self.spec.timeouts.heartbeat_ms,
        ) else {
            return;
        };
        let EventKind::ActivityTaskTimedOut(timed_out) = &close.kind else {
            return;
        };
        if !self.events.cancel_requested_before_close
            || self.spec.behaviour(k) != Behaviour::HangHeartbeating
        {
            return;
        }
        // The worker's heartbeat throttle, the script's beat, and slack.
        let lands_within_ms = heartbeat_ms * 4 / 5 + heartbeat_ms / 3 + CALM_TOLERANCE_MS;
        let after_ms = close.event_time.millis_since(request.event_time);
        if after_ms > lands_within_ms {
            self.problem(format!(
                "its cancel was requested while attempt {k} heartbeated every {} ms, so it should have closed canceled within {lands_within_ms} ms; it timed out ({:?}) {after_ms} ms later",
                heartbeat_ms / 3,
                timed_out.timeout_type
            ));
        }
    }

    /// Effects are applied at most once; only attempts scripted to succeed
    /// report one, and an activity that completed reported it exactly once.
    fn effects(&mut self, run_id: &str) {
        let caller = format!("{run_id}/{}", self.events.attributes.activity_id);
        let effect = format!("put:{}", self.spec.tag);
        let applied = self
            .run
            .observed
            .ledger
            .applied
            .get(&(caller, effect))
            .copied()
            .unwrap_or(0);
        if applied > 1 {
            self.problem(format!(
                "its effect was applied {applied} times, though the service dedupes by idempotency key"
            ));
        }
        let Some(close) = self.events.close else {
            return;
        };
        let attempts = self.events.started.map_or(0, |s| s.attempt);
        let may_succeed = (1..=attempts).any(|j| self.spec.behaviour(j) == Behaviour::Succeed);
        let completed = matches!(close.kind, EventKind::ActivityTaskCompleted(_));
        if (completed && applied != 1) || (applied > 0 && !may_succeed) {
            self.problem(format!(
                "its effect was applied {applied} times; it closed with {} after {attempts} attempts",
                close.kind.name()
            ));
        }
    }

    /// Attempt k cannot start before the backoffs of the attempts before it,
    /// and an attempt that timed out ran at least its timeout.
    fn minimum_elapsed(&mut self, close: &Event, attempt: u32) {
        let backoffs_ms: u64 = (1..attempt).map(|a| self.spec.retry.backoff_ms(a)).sum();
        let t = &self.spec.timeouts;
        let ran_ms = match &close.kind {
            EventKind::ActivityTaskTimedOut(o) => match o.timeout_type {
                TimeoutType::StartToClose => t.effective_start_to_close_ms(),
                TimeoutType::Heartbeat => t.heartbeat_ms.unwrap_or(0),
                TimeoutType::ScheduleToStart | TimeoutType::ScheduleToClose => 0,
            },
            _ => 0,
        };
        let minimum_ms = backoffs_ms + ran_ms;
        let elapsed_ms = close
            .event_time
            .millis_since(self.events.scheduled.event_time);
        // Scheduled and closed on different members: their clocks differ.
        let spread_ms = self.run.observed.clock_spread_ms;
        if elapsed_ms + spread_ms < minimum_ms {
            self.problem(format!(
                "attempt {attempt} closed {elapsed_ms} ms after scheduling, before its {backoffs_ms} ms of backoffs and {ran_ms} ms of its own timeout"
            ));
        }
    }

    fn completed(&mut self, attempt: Option<u32>, result: &Value) {
        let Some(k) = attempt else {
            self.problem("completed without a started attempt".to_string());
            return;
        };
        if self.spec.behaviour(k) != Behaviour::Succeed {
            let b = self.spec.behaviour(k);
            self.problem(format!("completed at attempt {k}, whose script is {b:?}"));
        }
        let Ok(output) = serde_json::from_value::<ScriptOutput>(result.clone()) else {
            self.problem(format!("its result does not decode: {result}"));
            return;
        };
        if output.attempt != k
            || output.tag != self.spec.tag
            || output.pad.len() != self.spec.pad_bytes
        {
            self.problem(format!(
                "its result comes from attempt {} of {} ({} pad bytes), but ActivityTaskStarted records attempt {k} of {} ({} pad bytes)",
                output.attempt, output.tag, output.pad.len(), self.spec.tag, self.spec.pad_bytes
            ));
        }
        self.seen_details(k, output.seen_details);
    }

    fn seen_details(&mut self, attempt: u32, seen: Option<u32>) {
        let heartbeat = self.spec.timeouts.heartbeat_ms.is_some();
        let last_heartbeating = (1..attempt)
            .rev()
            .find(|j| heartbeat && self.spec.behaviour(*j).heartbeats());
        match seen {
            Some(j) if j >= attempt || !self.spec.behaviour(j).heartbeats() => {
                let b = self.spec.behaviour(j);
                self.problem(format!("attempt {attempt} saw heartbeat details of attempt {j}, which is not an earlier heartbeating attempt ({b:?})"));
            }
            _ if self.run.program.calm && seen != last_heartbeating => {
                self.problem(format!("attempt {attempt} saw heartbeat details {seen:?}, expected {last_heartbeating:?}"));
            }
            _ => {}
        }
    }

    fn heartbeat_details(&mut self, attempt: Option<u32>, details: Option<&Value>) {
        let Some(details) = details else { return };
        let j = details.as_u64().and_then(|j| u32::try_from(j).ok());
        let ok = j.is_some_and(|j| {
            j >= 1 && attempt.is_some_and(|k| j <= k) && self.spec.behaviour(j).heartbeats()
        });
        if !ok {
            self.problem(format!("last heartbeat details {details} do not come from a heartbeating attempt up to {attempt:?}"));
        }
    }

    /// The retry states an attempt `k` ending with a failure may close with.
    /// A cancel requested before the close in the history may still have
    /// come after it: the service delivers a close that happens while a
    /// workflow task runs after that task's commands.
    fn expected_retry_states(&self, k: u32, stops: bool) -> Vec<RetryState> {
        let mut states: Vec<RetryState> =
            self.uncanceled_retry_state(k, stops).into_iter().collect();
        if self.events.cancel_requested_before_close {
            states.push(RetryState::CancelRequested);
        }
        states
    }

    fn uncanceled_retry_state(&self, k: u32, stops: bool) -> Option<RetryState> {
        let max = self.spec.retry.maximum_attempts;
        if stops {
            Some(RetryState::NonRetryableFailure)
        } else if max > 0 && k >= max {
            Some(RetryState::MaximumAttemptsReached)
        } else if self.spec.timeouts.schedule_to_close_ms.is_some() {
            Some(RetryState::Timeout)
        } else {
            None
        }
    }

    fn failed(&mut self, attempt: Option<u32>, failure_type: &str, retry_state: RetryState) {
        let Some(k) = attempt else {
            self.problem("failed without a started attempt".to_string());
            return;
        };
        let b = self.spec.behaviour(k);
        let types = failure_types(b, self.run.program.calm);
        if !types.contains(&failure_type) {
            self.problem(format!(
                "attempt {k} ({b:?}) failed with type {failure_type}, expected one of {types:?}"
            ));
        }
        let stops = b.stops_retries() && types.contains(&failure_type);
        let expected = self.expected_retry_states(k, stops);
        if !expected.contains(&retry_state) {
            self.problem(format!("failed at attempt {k} ({b:?}) with retry state {retry_state:?}, expected {expected:?}"));
        }
    }

    fn timed_out(
        &mut self,
        close: &Event,
        attempt: Option<u32>,
        timeout_type: TimeoutType,
        retry_state: RetryState,
    ) {
        let t = self.spec.timeouts;
        let set = match timeout_type {
            TimeoutType::ScheduleToStart => t.schedule_to_start_ms.is_some(),
            TimeoutType::StartToClose => attempt.is_some(),
            TimeoutType::ScheduleToClose => t.schedule_to_close_ms.is_some(),
            TimeoutType::Heartbeat => t.heartbeat_ms.is_some() && attempt.is_some(),
        };
        if !set {
            self.problem(format!(
                "timed out ({timeout_type:?}) at attempt {attempt:?}, a timeout it cannot have"
            ));
        }
        let expected = match (timeout_type, attempt) {
            (TimeoutType::ScheduleToStart | TimeoutType::ScheduleToClose, _) => {
                vec![RetryState::Timeout]
            }
            (_, Some(k)) => self.expected_retry_states(k, false),
            (_, None) => Vec::new(),
        };
        if !expected.contains(&retry_state) {
            self.problem(format!("timed out ({timeout_type:?}) at attempt {attempt:?} with retry state {retry_state:?}, expected {expected:?}"));
        }
        if timeout_type == TimeoutType::ScheduleToClose {
            self.schedule_to_close_timing(close);
        }
        if let (true, Some(k), TimeoutType::StartToClose | TimeoutType::Heartbeat) =
            (self.run.program.calm, attempt, timeout_type)
        {
            let b = self.spec.behaviour(k);
            let silent_with_heartbeat = b == Behaviour::HangSilent && t.heartbeat_ms.is_some();
            let fits =
                b.hangs() && (silent_with_heartbeat == (timeout_type == TimeoutType::Heartbeat));
            if !fits {
                self.problem(format!(
                    "attempt {k} ({b:?}) timed out ({timeout_type:?}) in a calm world"
                ));
            }
        }
    }

    fn schedule_to_close_timing(&mut self, close: &Event) {
        let Some(timeout_ms) = self.spec.timeouts.schedule_to_close_ms else {
            return;
        };
        let scheduled = self.events.scheduled.event_time;
        let elapsed_ms = close.event_time.millis_since(scheduled);
        let due = scheduled.plus_ms(timeout_ms);
        let late_ms = match self.run.chain.last() {
            Some(history) => self.run.late_ms_at(history, due, timeout_ms),
            None => self.run.tolerance_ms(timeout_ms),
        };
        if elapsed_ms < timeout_ms || elapsed_ms > timeout_ms + late_ms {
            self.problem(format!(
                "its schedule-to-close timeout of {timeout_ms} ms fired after {elapsed_ms} ms (allowed {timeout_ms}..={} ms)",
                timeout_ms + late_ms
            ));
        }
    }

    /// In a calm world the close is the nominal one, unless a queue or
    /// schedule-to-close timeout (which depend on timing) ended it.
    fn nominal(&mut self, close: &Event, attempt: Option<u32>) {
        let Some(expected) = nominal(self.spec) else {
            return;
        };
        let actual = match &close.kind {
            EventKind::ActivityTaskCompleted(_) => {
                attempt.map(|attempt| Nominal::Completed { attempt })
            }
            EventKind::ActivityTaskFailed(f) => attempt.map(|attempt| Nominal::Failed {
                attempt,
                retry_state: f.retry_state,
            }),
            EventKind::ActivityTaskTimedOut(t) => {
                let by_timing = matches!(
                    t.timeout_type,
                    TimeoutType::ScheduleToStart | TimeoutType::ScheduleToClose
                ) || t.retry_state == RetryState::Timeout;
                if by_timing {
                    return;
                }
                attempt.map(|attempt| Nominal::TimedOut {
                    attempt,
                    timeout_type: t.timeout_type,
                    retry_state: t.retry_state,
                })
            }
            _ => None,
        };
        if let EventKind::ActivityTaskFailed(f) = &close.kind
            && f.retry_state == RetryState::Timeout
        {
            return;
        }
        if actual.as_ref() != Some(&expected) {
            self.problem(format!(
                "in a calm world it must close as {expected:?}, but closed as {actual:?} ({})",
                close.kind.name()
            ));
        }
    }
}

impl<'a> RunCheck<'a> {
    /// The workflow's own reports agree with its history.
    fn check_reports(
        &mut self,
        history: &History,
        activities: &BTreeMap<String, ActivityEvents<'_>>,
    ) {
        let Some(EventKind::WorkflowExecutionCompleted(c)) = history.close_event().map(|e| &e.kind)
        else {
            return;
        };
        let reports: Vec<StepReport> = match serde_json::from_value(c.result.clone()) {
            Ok(reports) => reports,
            Err(e) => return self.problem(format!("its result does not decode: {e}")),
        };
        if reports.len() != self.spec.steps.len() {
            let (got, steps) = (reports.len(), self.spec.steps.len());
            return self.problem(format!("reported {got} steps, the program has {steps}"));
        }
        let mut last_now_ms = history
            .events()
            .first()
            .map_or(0, |e| e.event_time.as_millis());
        for (step, report) in self.spec.steps.iter().zip(&reports) {
            self.check_report(history, activities, step, report, &mut last_now_ms);
        }
        super::search::check_completed(self.spec, history, &mut self.problems);
    }

    /// A signal the workflow received, or one it sent to another workflow.
    fn check_message_report(&mut self, history: &History, step: &Step, report: &StepReport) {
        match (step, report) {
            (Step::SignalExternal { name, .. }, StepReport::External { delivered }) => {
                if *delivered != externals::delivered(history, name) {
                    self.problem(format!(
                        "the workflow saw signal {name} delivered={delivered}, its history says otherwise"
                    ));
                }
            }
            (Step::CancelExternal { target }, StepReport::External { delivered }) => {
                if *delivered != externals::cancel_delivered(history, target) {
                    self.problem(format!(
                        "the workflow saw its cancel of {target} delivered={delivered}, its history says otherwise"
                    ));
                }
            }
            (Step::Update { name }, StepReport::Update { value }) => {
                let sent = self.spec.client.iter().any(|t| {
                    matches!(&t.action,
                    ClientAction::Update { name: n, value: v, .. } if n == name && v == value)
                });
                if !sent || *value >= super::program::UPDATE_REFUSED_FROM {
                    self.problem(format!(
                        "update {name}'s handler ran with {value}, which the client never sent or the validator refuses"
                    ));
                }
            }
            (Step::Signal { name }, StepReport::Signal { value }) => {
                let sent = self.spec.client.iter().any(|t| {
                    matches!(&t.action,
                    ClientAction::Signal { name: n, value: v, .. } if n == name && v == value)
                });
                if !sent {
                    self.problem(format!(
                        "the workflow received {value} on {name}, which the client never sent"
                    ));
                }
            }
            _ => self.problem(format!("step {step:?} reported {report:?}")),
        }
    }

    fn check_report(
        &mut self,
        history: &History,
        activities: &BTreeMap<String, ActivityEvents<'_>>,
        step: &Step,
        report: &StepReport,
        last_now_ms: &mut u64,
    ) {
        match (step, report) {
            (Step::Activity(spec), StepReport::Activity { tag, report }) if *tag == spec.tag => {
                self.check_activity_report(activities, spec, report);
            }
            (Step::Timer { .. }, StepReport::Timer) => {}
            (
                Step::SignalExternal { .. }
                | Step::Signal { .. }
                | Step::CancelExternal { .. }
                | Step::Update { .. },
                _,
            ) => {
                self.check_message_report(history, step, report);
            }
            (Step::Child(child), StepReport::Child { outcome }) => {
                let histories = self.observed.histories;
                children::check_report(child, outcome, histories, &mut self.problems);
            }
            (Step::SideEffect { value }, StepReport::SideEffect { value: got }) => {
                self.check_side_effect(history, *value, *got);
            }
            (
                Step::LocalActivity {
                    succeed_at,
                    backoff_ms,
                },
                StepReport::LocalActivity { attempt },
            ) => {
                self.check_local_activity(history, *succeed_at, *backoff_ms, attempt);
            }
            (Step::TransientBug { until_ms }, StepReport::TransientBug { age_ms }) => {
                self.check_transient_bug(*until_ms, *age_ms);
            }
            (Step::Random, StepReport::Random { .. }) => {}
            (Step::Upsert { .. }, StepReport::Upsert) => {}
            (Step::Uuid, StepReport::Uuid { value }) if !is_uuid_v4(value) => {
                self.problem(format!("uuid {value} is not a version 4 uuid"));
            }
            (Step::Uuid, StepReport::Uuid { .. }) => {}
            (Step::Now, StepReport::Now { ms }) => self.check_now(history, *ms, last_now_ms),
            (Step::Patched { patch_id }, StepReport::Patched { taken }) => {
                let recorded = markers(history, PATCH_MARKER_NAME)
                    .any(|d| d.get("patch_id") == Some(&Value::from(patch_id.as_str())));
                if !taken || !recorded {
                    self.problem(format!("a new run must take patch {patch_id} and record it (taken {taken}, recorded {recorded})"));
                }
            }
            (Step::Join(branches), StepReport::Join(reports))
                if branches.len() == reports.len() =>
            {
                self.check_join(activities, branches, reports);
            }
            (
                Step::Select { activity, .. },
                StepReport::Select {
                    activity_won,
                    report,
                },
            ) => {
                self.check_select(activities, activity, *activity_won, report.as_ref());
            }
            (
                Step::Condition { name, timeout_ms },
                StepReport::Condition { value, held, at_ms },
            ) => self.check_condition_report(history, name, *timeout_ms, (*value, *held, *at_ms)),
            _ => self.problem(format!("step {step:?} reported {report:?}")),
        }
    }

    /// A condition step's report: (value, held, at_ms).
    fn check_condition_report(
        &mut self,
        history: &History,
        name: &str,
        timeout_ms: Option<u64>,
        (value, held, at_ms): (u64, bool, u64),
    ) {
        self.check_condition(history, name, timeout_ms, value, held);
        if held && let Some(ms) = timeout_ms {
            self.check_condition_time(history, name, ms, at_ms);
        }
    }

    /// A condition wait. Its value was sent; it held iff its signal came
    /// before its timer fired: a `false` needs its timer (known by its
    /// duration) fired, a `true` needs the signal in the history before any
    /// firing of that timer; without a timeout it always holds.
    fn check_condition(
        &mut self,
        history: &History,
        name: &str,
        timeout_ms: Option<u64>,
        value: u64,
        held: bool,
    ) {
        let sent = self.spec.client.iter().any(|t| {
            matches!(&t.action, ClientAction::Signal { name: n, value: v, .. } if n == name && *v == value)
        });
        if !sent {
            self.problem(format!(
                "condition {name} saw {value}, which the client never sent"
            ));
        }
        if self.carried.iter().any(|n| n == name) {
            // Its signal was carried from an earlier run: it held at once.
            if !held {
                self.problem(format!(
                    "condition {name} did not hold, but its signal was carried in the input"
                ));
            }
            return;
        }
        let signaled = history.events().iter().find_map(|e| match &e.kind {
            EventKind::WorkflowExecutionSignaled(s) if s.signal_name == name => Some(e.event_id),
            _ => None,
        });
        let timer = timeout_ms.and_then(|ms| fired_timer_of(history, ms));
        let fired = timer.map(|(_, fired)| fired);
        let consistent = match (timeout_ms, held, timer) {
            (None, held, _) => held,
            (Some(_), false, None) => false,
            // Timed out: the signal came after the firing, or after the
            // wait began with no workflow code run between it and the firing
            // (a signal already there when the wait began, or seen by a later
            // workflow task, makes the condition hold at once).
            (Some(_), false, Some((started, fired))) => signaled.is_none_or(|s| {
                s > fired || (s > started && !task_completed_between(history, s, fired))
            }),
            (Some(_), true, _) => signaled.is_some_and(|s| fired.is_none_or(|f| s < f)),
        };
        if !consistent {
            self.problem(format!(
                "condition {name} (timeout {timeout_ms:?}) reported held={held}, \
                 but its signal is at event {signaled:?} and its timer fired at {fired:?}"
            ));
        }
    }

    fn check_join(
        &mut self,
        activities: &BTreeMap<String, ActivityEvents<'_>>,
        branches: &[Branch],
        reports: &[StepReport],
    ) {
        for (branch, report) in branches.iter().zip(reports) {
            match (branch, report) {
                (Branch::Activity(spec), StepReport::Activity { tag, report })
                    if *tag == spec.tag =>
                {
                    self.check_activity_report(activities, spec, report);
                }
                (Branch::Timer { .. }, StepReport::Timer) => {}
                _ => self.problem(format!("join branch {branch:?} reported {report:?}")),
            }
        }
    }

    fn check_select(
        &mut self,
        activities: &BTreeMap<String, ActivityEvents<'_>>,
        spec: &ActivitySpec,
        activity_won: bool,
        report: Option<&ActivityReport>,
    ) {
        match (activity_won, report) {
            (true, Some(report)) => self.check_activity_report(activities, spec, report),
            (false, None) => {
                let requested = activities
                    .get(&spec.tag)
                    .is_some_and(|a| a.cancel_requested);
                if requested != (spec.cancellation != Cancellation::Abandon) {
                    self.problem(format!(
                        "activity {} lost its race; cancel requested: {requested}, its cancellation is {:?}",
                        spec.tag, spec.cancellation
                    ));
                }
            }
            _ => self.problem(format!(
                "select of {} reported {activity_won} with {report:?}",
                spec.tag
            )),
        }
    }

    fn check_activity_report(
        &mut self,
        activities: &BTreeMap<String, ActivityEvents<'_>>,
        spec: &ActivitySpec,
        report: &ActivityReport,
    ) {
        let Some(events) = activities.get(&spec.tag) else {
            return self.problem(format!(
                "activity {} reported {report:?} but was never scheduled",
                spec.tag
            ));
        };
        let attempt = events.started.map(|s| s.attempt);
        let agrees = match (report, events.close.map(|e| &e.kind)) {
            (
                ActivityReport::Completed {
                    attempt: a,
                    pad_bytes,
                    ..
                },
                Some(EventKind::ActivityTaskCompleted(c)),
            ) => {
                let output = serde_json::from_value::<ScriptOutput>(c.result.clone()).ok();
                Some(*a) == attempt
                    && output.is_some_and(|o| o.attempt == *a && o.pad.len() == *pad_bytes)
            }
            (
                ActivityReport::Failed {
                    failure_type,
                    retry_state,
                },
                Some(EventKind::ActivityTaskFailed(f)),
            ) => *failure_type == f.failure.failure_type && *retry_state == f.retry_state,
            (
                ActivityReport::TimedOut {
                    timeout_type,
                    retry_state,
                },
                Some(EventKind::ActivityTaskTimedOut(t)),
            ) => *timeout_type == t.timeout_type && *retry_state == t.retry_state,
            (ActivityReport::Canceled, _) => events.cancel_requested,
            _ => false,
        };
        if !agrees {
            let close = events.close.map(|e| e.kind.name());
            self.problem(format!(
                "activity {}: the workflow saw {report:?}, the history says {close:?} at attempt {attempt:?}",
                spec.tag
            ));
        }
    }
}

fn is_uuid_v4(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.len() == 36 && bytes[14] == b'4' && bytes.iter().filter(|b| **b == b'-').count() == 4
}

impl RunCheck<'_> {
    /// `ctx.now()` never goes back, nor past the run's close.
    fn check_now(&mut self, history: &History, ms: u64, last_now_ms: &mut u64) {
        let closed_ms = history
            .close_event()
            .map_or(u64::MAX, |e| e.event_time.as_millis());
        if ms < *last_now_ms || ms > closed_ms {
            self.problem(format!(
                "now {ms} went back (last {last_now_ms}) or past the close ({closed_ms})"
            ));
        }
        *last_now_ms = ms.max(*last_now_ms);
    }

    fn check_side_effect(&mut self, history: &History, value: u64, got: u64) {
        let recorded = markers(history, SIDE_EFFECT_MARKER_NAME)
            .any(|d| d.get("value") == Some(&Value::from(value)));
        if got != value || !recorded {
            self.problem(format!(
                "side effect {value} reported {got}, recorded: {recorded}"
            ));
        }
    }

    /// A local activity succeeds at the attempt its script says, whatever
    /// the faults (a rerun of an unrecorded attempt ends the same way); its
    /// success is recorded, and a backoff past the window was waited out on
    /// a durable timer (a marker holding it).
    fn check_local_activity(
        &mut self,
        history: &History,
        succeed_at: u32,
        backoff_ms: u64,
        attempt: &Result<u32, String>,
    ) {
        if attempt.as_ref() != Ok(&succeed_at) {
            self.problem(format!(
                "local activity scripted to succeed at attempt {succeed_at} reported {attempt:?}"
            ));
        }
        let outcomes: Vec<LocalActivityOutcome> = markers(history, LOCAL_ACTIVITY_MARKER_NAME)
            .filter_map(|details| LocalActivityOutcome::from_details(details).ok())
            .collect();
        let succeeded = outcomes
            .iter()
            .any(|o| o.attempt == succeed_at && o.result == Some(Value::from(succeed_at)));
        if !succeeded {
            self.problem(format!(
                "no marker records local attempt {succeed_at} succeeding: {outcomes:?}"
            ));
        }
        let past_window = backoff_ms >= super::program::LOCAL_WINDOW_MS;
        let durable = outcomes.iter().any(|o| o.backoff_ms == Some(backoff_ms));
        if succeed_at > 1 && past_window && !durable {
            self.problem(format!(
                "a local backoff of {backoff_ms} ms outlasts the window, yet no marker waits for it: {outcomes:?}"
            ));
        }
    }
}

/// When the workflow task running at `at` ended, if one was.
fn busy_until(history: &History, at: Timestamp) -> Option<Timestamp> {
    let mut started = None;
    for event in history.events() {
        match &event.kind {
            EventKind::WorkflowTaskStarted(_) => started = Some(event.event_time),
            EventKind::WorkflowTaskCompleted(_)
            | EventKind::WorkflowTaskFailed(_)
            | EventKind::WorkflowTaskTimedOut(_) => {
                if started.is_some_and(|s| s <= at) && event.event_time >= at {
                    return Some(event.event_time);
                }
                started = None;
            }
            _ => {}
        }
    }
    None
}

fn markers<'h>(history: &'h History, name: &'h str) -> impl Iterator<Item = &'h Value> + 'h {
    history.events().iter().filter_map(move |e| match &e.kind {
        EventKind::MarkerRecorded(m) if m.marker_name == name => Some(&m.details),
        _ => None,
    })
}

/// A run that gives up fails with `GaveUp`, unless the step before is an
/// activity that failed or timed out, or an awaited child that failed: then
/// with an `ActivityFailure` or `ChildWorkflowFailure` naming it (its events
/// and cause are checked against the history by the `failures name their
/// cause` invariant).
fn gave_up_as_expected(spec: &RunSpec, history: &History, failure: &Failure) -> bool {
    let before = spec.steps.len().checked_sub(2).map(|at| &spec.steps[at]);
    let named = match before {
        Some(Step::Activity(activity)) => failed_activity(history, &activity.tag).map(Ok),
        Some(Step::Child(child)) if child.parent.as_ref().is_some_and(|of| of.wait) => {
            failed_child(history, &child.workflow_id).map(Err)
        }
        _ => None,
    };
    match (named, failure.info.as_deref()) {
        (None, _) => failure.failure_type == GAVE_UP,
        (Some(Ok(scheduled)), Some(FailureInfo::Activity(info))) => {
            info.scheduled_event_id == scheduled
        }
        (Some(Err(initiated)), Some(FailureInfo::ChildWorkflow(info))) => {
            info.initiated_event_id == initiated
        }
        _ => false,
    }
}

/// The scheduled event id of the activity tagged `tag`, if it failed or timed out.
fn failed_activity(history: &History, tag: &str) -> Option<u64> {
    let scheduled = history.events().iter().find(|e| match &e.kind {
        EventKind::ActivityTaskScheduled(a) => {
            serde_json::from_value::<ScriptInput>(a.input.clone())
                .is_ok_and(|input| input.tag == tag)
        }
        _ => false,
    })?;
    let failed = history.events().iter().any(|e| match &e.kind {
        EventKind::ActivityTaskFailed(a) => a.scheduled_event_id == scheduled.event_id,
        EventKind::ActivityTaskTimedOut(a) => a.scheduled_event_id == scheduled.event_id,
        _ => false,
    });
    failed.then_some(scheduled.event_id)
}

/// The initiated event id of the child `workflow_id`, if it failed.
fn failed_child(history: &History, workflow_id: &str) -> Option<u64> {
    let initiated = history.events().iter().find(|e| {
        matches!(&e.kind, EventKind::StartChildWorkflowExecutionInitiated(a) if a.workflow_id == workflow_id)
    })?;
    let failed = history.events().iter().any(|e| {
        matches!(&e.kind, EventKind::ChildWorkflowExecutionFailed(a) if a.initiated_event_id == initiated.event_id)
    });
    failed.then_some(initiated.event_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::generated::program::{LISTED_FAILURE_TYPE, Timeouts};
    use retrace::activity::RetryPolicy;

    fn spec(script: Vec<Behaviour>, max: u32, heartbeat_ms: Option<u64>) -> ActivitySpec {
        ActivitySpec {
            tag: "a".into(),
            timeouts: Timeouts {
                start_to_close_ms: Some(2_000),
                heartbeat_ms,
                ..Timeouts::default()
            },
            retry: RetryPolicy::default()
                .maximum_attempts(max)
                .non_retryable(LISTED_FAILURE_TYPE),
            script,
            pad_bytes: 0,
            cancellation: Cancellation::TryCancel,
        }
    }

    #[test]
    fn the_nominal_close_follows_the_script_and_the_policy() {
        use Behaviour::*;
        assert_eq!(
            nominal(&spec(vec![FailRetryable, Succeed], 0, None)),
            Some(Nominal::Completed { attempt: 2 })
        );
        assert_eq!(
            nominal(&spec(vec![FailNonRetryable, Succeed], 5, None)),
            Some(Nominal::Failed {
                attempt: 1,
                retry_state: RetryState::NonRetryableFailure
            })
        );
        assert_eq!(
            nominal(&spec(vec![FailRetryable], 3, None)),
            Some(Nominal::Failed {
                attempt: 3,
                retry_state: RetryState::MaximumAttemptsReached
            })
        );
        assert_eq!(
            nominal(&spec(vec![HangSilent], 2, Some(500))),
            Some(Nominal::TimedOut {
                attempt: 2,
                timeout_type: TimeoutType::Heartbeat,
                retry_state: RetryState::MaximumAttemptsReached
            })
        );
        assert_eq!(
            nominal(&spec(vec![HangHeartbeating], 1, Some(500))),
            Some(Nominal::TimedOut {
                attempt: 1,
                timeout_type: TimeoutType::StartToClose,
                retry_state: RetryState::MaximumAttemptsReached
            })
        );
    }
}
