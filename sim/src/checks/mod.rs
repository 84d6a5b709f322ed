//! The invariants every run must keep, checked on durable storage after the
//! liveness phase (and, for capacity, while it ran).
//!
//! | invariant              | what must hold                                                         |
//! |------------------------|------------------------------------------------------------------------|
//! | history well-formed    | every stored history passes `History::append`'s validation            |
//! | replay                 | every history replays from scratch, incrementally and after eviction, all three the same |
//! | live equals replay     | the worker's digest when its code closed the run equals the replay's, and the replay's result is the recorded close |
//! | determinism            | no workflow task failed with non-determinism while the run was live   |
//! | effects                | no effect applied twice; acknowledged effects of completed activities applied exactly once |
//! | timers                 | no timer or timeout fired before its time                              |
//! | liveness               | every run closed once faults healed (a stuck run names its pending work) |
//! | no task lost           | no run is left with a task on the queue that no worker ever started |
//! | capacity               | no worker ran more activities than its limit                          |

use std::collections::BTreeMap;
use std::fmt;

use retrace::engine::machine::RunState;
use retrace::env::{MemoryStorage, RunRecord, RunStatus, Storage};
use retrace::history::{Event, EventKind, History, HistoryError, WorkflowTaskFailedCause};
use retrace::types::TimeoutType;
use retrace::workflow::{Replayer, RunResult, StateDigest, workflow_task_boundaries};

use crate::world::services::EffectLedger;

/// A broken invariant.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    /// Which invariant.
    pub invariant: &'static str,
    /// What was seen.
    pub message: String,
    /// The run it concerns.
    pub run_id: Option<String>,
    /// The workflow id of that run.
    pub workflow_id: Option<String>,
    /// The history position where it shows.
    pub event_id: Option<u64>,
}

impl Violation {
    pub fn new(invariant: &'static str, message: impl Into<String>) -> Violation {
        Violation {
            invariant,
            message: message.into(),
            run_id: None,
            workflow_id: None,
            event_id: None,
        }
    }

    fn at(mut self, history: &History, event_id: Option<u64>) -> Violation {
        self.run_id = Some(history.run_id().to_string());
        self.workflow_id = Some(history.workflow_id().to_string());
        self.event_id = event_id;
        self
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.invariant, self.message)?;
        if let Some(run_id) = &self.run_id {
            write!(
                f,
                "\n    run {run_id} (workflow {})",
                self.workflow_id.as_deref().unwrap_or("?")
            )?;
        }
        if let Some(event_id) = self.event_id {
            write!(f, ", history position: event {event_id}")?;
        }
        Ok(())
    }
}

/// Every stored run with its history (or why the history is invalid).
pub async fn load_runs(storage: &MemoryStorage) -> Vec<(RunRecord, Result<History, HistoryError>)> {
    let query = retrace::env::ListQuery {
        limit: usize::MAX,
        ..Default::default()
    };
    let records = storage
        .list_runs(query)
        .await
        .expect("memory storage reads never fail");
    let mut runs = Vec::with_capacity(records.len());
    for record in records {
        let events = storage
            .read_events(&record.run_id, 1, usize::MAX)
            .await
            .expect("memory storage reads never fail");
        let history = History::from_events(&record.workflow_id, &record.run_id, events);
        runs.push((record, history));
    }
    runs
}

/// Well-formedness: the stored events validate.
pub fn check_well_formed(
    record: &RunRecord,
    history: &Result<History, HistoryError>,
) -> Option<Violation> {
    let error = history.as_ref().err()?;
    let event_id = match error {
        HistoryError::EventIdGap { found, .. } => Some(*found),
        HistoryError::MissingStart { event_id, .. }
        | HistoryError::AfterClose { event_id, .. }
        | HistoryError::BadLink { event_id, .. }
        | HistoryError::AlreadyClosed { event_id, .. }
        | HistoryError::OutOfOrder { event_id, .. }
        | HistoryError::TimeOutOfRange { event_id, .. }
        | HistoryError::TooManyEvents { event_id, .. }
        | HistoryError::PayloadTooLarge { event_id, .. }
        | HistoryError::PayloadTooDeep { event_id, .. } => Some(*event_id),
    };
    let mut violation = Violation::new("history well-formed", error.to_string());
    violation.run_id = Some(record.run_id.clone());
    violation.workflow_id = Some(record.workflow_id.clone());
    violation.event_id = event_id;
    Some(violation)
}

fn recorded_result(history: &History) -> Option<RunResult> {
    match &history.close_event()?.kind {
        EventKind::WorkflowExecutionCompleted(a) => Some(RunResult::Completed(a.result.clone())),
        EventKind::WorkflowExecutionFailed(a) => Some(RunResult::Failed(a.failure.clone())),
        EventKind::WorkflowExecutionCanceled(_) => Some(RunResult::Canceled),
        _ => None,
    }
}

/// Replay three ways; the result must be the recorded close and the digest
/// the live executor's.
pub fn check_replay(
    replayer: &Replayer,
    history: &History,
    live: Option<StateDigest>,
) -> Vec<Violation> {
    let scratch = match replayer.replay(history) {
        Ok(outcome) => outcome,
        Err(error) => {
            let event_id = error.non_determinism().map(|nd| nd.event_id);
            let invariant = if event_id.is_some() {
                "determinism"
            } else {
                "replay"
            };
            return vec![
                Violation::new(invariant, format!("the history does not replay: {error}"))
                    .at(history, event_id),
            ];
        }
    };
    let mut violations = Vec::new();
    let tasks = workflow_task_boundaries(history.events()).len();
    let others = [
        ("incrementally", replayer.replay_incrementally(history)),
        (
            "after eviction",
            replayer.replay_with_eviction(history, Some(tasks / 2)),
        ),
    ];
    for (how, other) in others {
        match other {
            Ok(outcome) if outcome == scratch => {}
            Ok(outcome) => violations.push(
                Violation::new(
                    "replay",
                    format!("replay {how} gives {outcome:?}, from scratch {scratch:?}"),
                )
                .at(history, None),
            ),
            Err(error) => violations.push(
                Violation::new("replay", format!("replay {how} fails: {error}")).at(history, None),
            ),
        }
    }
    if let Some(recorded) = recorded_result(history)
        && scratch.result.as_ref() != Some(&recorded)
    {
        let close = history.close_event().map(|e| e.event_id);
        let message = format!(
            "the history closed with {recorded:?} but replay gives {:?}",
            scratch.result
        );
        violations.push(Violation::new("live equals replay", message).at(history, close));
    }
    if let Some(live) = live
        && live != scratch.digest
    {
        let message = format!(
            "live state digest {live} differs from the replayed state digest {}",
            scratch.digest
        );
        violations.push(Violation::new("live equals replay", message).at(history, None));
    }
    violations
}

/// Workflow tasks that failed with non-determinism while the run was live.
pub fn check_determinism(history: &History) -> Option<Violation> {
    history.events().iter().find_map(|event| match &event.kind {
        EventKind::WorkflowTaskFailed(a)
            if a.cause == WorkflowTaskFailedCause::NonDeterministicError =>
        {
            Some(
                Violation::new(
                    "determinism",
                    format!("a worker found non-determinism: {}", a.failure.message),
                )
                .at(history, Some(event.event_id)),
            )
        }
        _ => None,
    })
}

fn event(history: &History, event_id: u64) -> Option<&Event> {
    history.events().get(event_id.checked_sub(1)? as usize)
}

/// No timer or timeout fires before its time (all times are the service's clock).
pub fn check_timers(history: &History) -> Vec<Violation> {
    let mut violations = Vec::new();
    for fired in history.events() {
        let (start_id, duration_ms, what) = match &fired.kind {
            EventKind::TimerFired(a) => {
                let Some(EventKind::TimerStarted(s)) =
                    event(history, a.started_event_id).map(|e| &e.kind)
                else {
                    continue;
                };
                (
                    a.started_event_id,
                    s.start_to_fire_timeout_ms,
                    format!("timer {:?}", a.timer_id),
                )
            }
            EventKind::ActivityTaskTimedOut(a)
                if a.timeout_type == TimeoutType::ScheduleToClose =>
            {
                let Some(EventKind::ActivityTaskScheduled(s)) =
                    event(history, a.scheduled_event_id).map(|e| &e.kind)
                else {
                    continue;
                };
                let Some(timeout_ms) = s.schedule_to_close_timeout_ms else {
                    continue;
                };
                (
                    a.scheduled_event_id,
                    timeout_ms,
                    format!("activity {:?} schedule-to-close timeout", s.activity_id),
                )
            }
            EventKind::WorkflowTaskTimedOut(a) => {
                let Some(EventKind::WorkflowTaskScheduled(s)) =
                    event(history, a.scheduled_event_id).map(|e| &e.kind)
                else {
                    continue;
                };
                (
                    a.started_event_id,
                    s.start_to_close_timeout_ms,
                    "workflow task timeout".to_string(),
                )
            }
            EventKind::WorkflowExecutionTimedOut(_) => {
                let Some(timeout_ms) = history.started().and_then(|s| s.execution_timeout_ms)
                else {
                    continue;
                };
                (1, timeout_ms, "the run's execution timeout".to_string())
            }
            _ => continue,
        };
        let started = event(history, start_id).expect("validated links point at events");
        let elapsed_ms = fired.event_time.millis_since(started.event_time);
        if elapsed_ms < duration_ms {
            let message =
                format!("{what} fired after {elapsed_ms} ms, before its {duration_ms} ms");
            violations.push(
                Violation::new("timers never fire early", message)
                    .at(history, Some(fired.event_id)),
            );
        }
    }
    violations
}

/// Where an activity (by idempotency key `run/activity`) is in the histories.
fn locate<'h>(
    histories: &'h BTreeMap<String, History>,
    caller: &str,
) -> Option<(&'h History, u64, bool)> {
    let (run_id, activity_id) = caller.split_once('/')?;
    let history = histories.get(run_id)?;
    let scheduled = history.events().iter().find_map(|e| match &e.kind {
        EventKind::ActivityTaskScheduled(a) if a.activity_id == activity_id => Some(e.event_id),
        _ => None,
    })?;
    let completed = history.events().iter().any(|e| matches!(&e.kind, EventKind::ActivityTaskCompleted(a) if a.scheduled_event_id == scheduled));
    Some((history, scheduled, completed))
}

/// Each effect applied at most once per caller; exactly once for the
/// acknowledged effects of completed activities.
pub fn check_effects(
    ledger: &EffectLedger,
    histories: &BTreeMap<String, History>,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    for ((caller, effect), applied) in &ledger.applied {
        if *applied > 1 {
            let message = format!(
                "effect {effect:?} of activity {caller} applied {applied} times (at most once allowed)"
            );
            let mut violation = Violation::new("effects exactly once", message);
            if let Some((history, scheduled, _)) = locate(histories, caller) {
                violation = violation.at(history, Some(scheduled));
            }
            violations.push(violation);
        }
    }
    for (caller, effect) in ledger.acknowledged.keys() {
        let Some((history, scheduled, true)) = locate(histories, caller) else {
            continue;
        };
        let applied = ledger
            .applied
            .get(&(caller.clone(), effect.clone()))
            .copied()
            .unwrap_or(0);
        if applied != 1 {
            let message = format!(
                "completed activity {caller} acknowledged effect {effect:?}, which was applied {applied} times"
            );
            violations
                .push(Violation::new("effects exactly once", message).at(history, Some(scheduled)));
        }
    }
    violations
}

/// A run still open after the liveness phase, with what it waits for.
pub fn check_closed(record: &RunRecord) -> Option<Violation> {
    if record.status != RunStatus::Running {
        return None;
    }
    let state = serde_json::from_slice::<RunState>(&record.state);
    let waits = match &state {
        Ok(state) => describe_waits(state),
        Err(error) => format!("(its state does not decode: {error})"),
    };
    // A task still on the queue after the liveness phase was lost by matching.
    let queued = state
        .as_ref()
        .is_ok_and(|s| !retrace::engine::machine::pending_tasks(s).is_empty());
    let invariant = if queued { "no task lost" } else { "liveness" };
    let message = format!("run still open after faults healed; {waits}");
    let mut violation = Violation::new(invariant, message);
    violation.run_id = Some(record.run_id.clone());
    violation.workflow_id = Some(record.workflow_id.clone());
    violation.event_id = Some(record.next_event_id - 1);
    Some(violation)
}

fn describe_waits(state: &RunState) -> String {
    let mut parts = vec![format!("workflow task: {:?}", state.workflow_task)];
    for activity in state.activities.values() {
        parts.push(format!(
            "activity {:?} {} attempt {}",
            activity.activity_id,
            activity.phase_name(),
            activity.attempt
        ));
    }
    for (timer_id, timer) in &state.timers {
        parts.push(format!("timer {timer_id:?} fires at {}", timer.fire_time));
    }
    if let Some(failure) = &state.last_workflow_task_failure {
        parts.push(format!("last workflow task failure: {failure}"));
    }
    if state.activities.is_empty()
        && state.timers.is_empty()
        && state.workflow_task == retrace::engine::machine::WorkflowTaskState::None
    {
        parts.push("nothing pending: the workflow waits for a signal that never came".to_string());
    }
    parts.join("; ")
}
