//! The invariants every run must keep, checked on durable storage after the
//! liveness phase (and, for capacity, while it ran). All are on by default.
//!
//! | file          | invariant              | what must hold                                                         |
//! |---------------|------------------------|------------------------------------------------------------------------|
//! | `history.rs`  | history well-formed    | every stored history passes `History::append`'s validation            |
//! | `history.rs`  | replay                 | every history replays from scratch, incrementally and after eviction, all three the same |
//! | `history.rs`  | live equals replay     | the worker's digest when its code closed the run equals the replay's, and the replay's result is the recorded close |
//! | `history.rs`  | determinism            | no workflow task failed with non-determinism while the run was live   |
//! | `effects.rs`  | effects                | no effect applied twice; acknowledged effects of completed activities applied exactly once |
//! | `effects.rs`  | result from its attempt | a close's result is the one the attempt its `ActivityTaskStarted` names sent; no later attempt ran or acted |
//! | `effects.rs`  | started when its attempt started | an `ActivityTaskStarted` is stamped with the time the service started the attempt it names |
//! | `failures.rs` | failures name their cause | a timeout's failure names its limit; a run failed by an activity names that activity, its events, retry state and cause |
//! | `timers.rs`   | timers never fire early | no timer or timeout fires before its deadline                         |
//! | `timers.rs`   | timers never fire late | every timer and timeout fires by its deadline plus a tolerance derived from the fault plan |
//! | `state.rs`    | stored state           | each run's stored state is the state its history implies              |
//! | `retries.rs`  | retries                | attempts within `maximum_attempts`, none after a non-retryable failure, backoff kept |
//! | `outcomes.rs` | outcomes               | no run fails, times out or is terminated unless the scenario expects it |
//! | `liveness.rs` | liveness               | every run closed once faults healed (a stuck run names its pending work) |
//! | `liveness.rs` | no task lost           | no run is left with a task on the queue that no worker ever started |
//! | `buffered.rs` | buffered limit         | no run ever buffered more signal bytes during a workflow task than the service's limit |
//! | `local_activities.rs` | local activities | no local activity attempt ran in a task that began after its marker was written; every marker records an attempt a worker ran |
//! | `metrics.rs`  | metrics                | the runs `/metrics` counted started and closed (by status), through crashes and ambiguous writes, are the runs storage holds; dispatches and writes are all counted; once every run closed, no run is open and no timer queued |
//! | `visibility.rs` | search attributes, list queries | stored search attributes are the history's (last write wins), carried to continued runs, each patch upserted once; list queries answer as a filter by hand |
//! | `capacity.rs` | capacity               | no worker ran more activities than its limit; the service never handed a worker more tasks than it offered room for |

pub mod buffered;
pub mod capacity;
pub mod effects;
pub mod failures;
pub mod fencing;
pub mod history;
pub mod liveness;
pub mod local_activities;
pub mod metrics;
pub mod outcomes;
pub mod quarantine;
pub mod retries;
pub mod state;
pub mod timers;
pub mod visibility;
pub mod workflow_tasks;

use std::collections::BTreeMap;
use std::fmt;

use retrace::api::RunOutcome;
use retrace::engine::machine::RunState;
use retrace::env::{MemoryStorage, RunRecord, Storage};
use retrace::history::{
    ActivityTaskScheduled, ActivityTaskStarted, Event, EventKind, History, HistoryError,
};
use retrace::workflow::{Replayer, StateDigest};

use crate::world::cluster::{AttemptKey, AttemptSeen};

pub use effects::{check_attempts, check_effects, check_later_attempts_acted};
pub use history::{check_determinism, check_replay, check_temporal_round_trip, check_well_formed};
pub use liveness::check_closed;
pub use timers::{ServiceClock, Tolerance, check_timers};

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

    pub(crate) fn at(mut self, history: &History, event_id: Option<u64>) -> Violation {
        self.run_id = Some(history.run_id().to_string());
        self.workflow_id = Some(history.workflow_id().to_string());
        self.event_id = event_id;
        self
    }

    pub(crate) fn of_record(mut self, record: &RunRecord, event_id: Option<u64>) -> Violation {
        self.run_id = Some(record.run_id.clone());
        self.workflow_id = Some(record.workflow_id.clone());
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

/// Every stored run with its history (or why the history is invalid), but
/// the rows the world tore on purpose.
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
        if crate::nodes::is_torn_run(&record.run_id) {
            continue; // torn on purpose: `quarantine` checks it
        }
        let events = storage
            .read_events(&record.run_id, 1, usize::MAX)
            .await
            .expect("memory storage reads never fail");
        let history = History::from_events(&record.workflow_id, &record.run_id, events);
        runs.push((record, history));
    }
    runs
}

/// The event with id `event_id`.
pub(crate) fn event(history: &History, event_id: u64) -> Option<&Event> {
    history.events().get(event_id.checked_sub(1)? as usize)
}

/// One scheduled activity as its history shows it.
pub(crate) struct ActivityView<'h> {
    pub scheduled: &'h Event,
    pub attrs: &'h ActivityTaskScheduled,
    /// The `ActivityTaskStarted` of its last attempt (written at its close).
    pub started: Option<(&'h Event, &'h ActivityTaskStarted)>,
    /// Its outcome event.
    pub close: Option<&'h Event>,
}

/// The scheduled event id an activity outcome event closes.
pub(crate) fn activity_closed_by(kind: &EventKind) -> Option<u64> {
    match kind {
        EventKind::ActivityTaskCompleted(a) => Some(a.scheduled_event_id),
        EventKind::ActivityTaskFailed(a) => Some(a.scheduled_event_id),
        EventKind::ActivityTaskTimedOut(a) => Some(a.scheduled_event_id),
        EventKind::ActivityTaskCanceled(a) => Some(a.scheduled_event_id),
        _ => None,
    }
}

/// Every activity the history schedules, in schedule order.
pub(crate) fn activities(history: &History) -> Vec<ActivityView<'_>> {
    let mut views: BTreeMap<u64, ActivityView<'_>> = BTreeMap::new();
    for event in history.events() {
        match &event.kind {
            EventKind::ActivityTaskScheduled(attrs) => {
                let view = ActivityView {
                    scheduled: event,
                    attrs,
                    started: None,
                    close: None,
                };
                views.insert(event.event_id, view);
            }
            EventKind::ActivityTaskStarted(started) => {
                if let Some(view) = views.get_mut(&started.scheduled_event_id) {
                    view.started = Some((event, started));
                }
            }
            kind => {
                if let Some(view) = activity_closed_by(kind).and_then(|id| views.get_mut(&id)) {
                    view.close = Some(event);
                }
            }
        }
    }
    views.into_values().collect()
}

/// What the built-in checks of stored runs read besides storage.
pub struct RunChecks<'a> {
    pub replayer: &'a Replayer,
    /// The live executors' digests when their code closed each run.
    pub digests: &'a BTreeMap<String, StateDigest>,
    /// The activity attempts the workers ran.
    pub attempts: &'a BTreeMap<AttemptKey, AttemptSeen>,
    /// The activity attempts the service started (by its committed writes),
    /// with when: some no worker ever saw.
    pub service_starts: &'a crate::world::storage::ServiceStarts,
    /// How late a timer may fire in this run.
    pub tolerance: &'a Tolerance,
    /// The outcomes the scenario expects (`None`: completed or canceled).
    pub expected: Option<&'a outcomes::ExpectedOutcomes>,
    /// Workflow types run without code (not replayed).
    pub raw_types: &'a std::collections::BTreeSet<String>,
}

/// What the stored runs left: violations, histories by run id, and the
/// outcome of each workflow id's latest run.
pub struct StoredRuns {
    pub violations: Vec<Violation>,
    pub histories: BTreeMap<String, History>,
    pub outcomes: BTreeMap<String, RunOutcome>,
}

/// Runs every per-run check over the stored runs.
pub async fn check_stored_runs(storage: &MemoryStorage, checks: &RunChecks<'_>) -> StoredRuns {
    let mut stored = StoredRuns {
        violations: Vec::new(),
        histories: BTreeMap::new(),
        outcomes: BTreeMap::new(),
    };
    for (record, history) in load_runs(storage).await {
        let violations = &mut stored.violations;
        violations.extend(check_well_formed(&record, &history));
        violations.extend(check_closed(&record));
        let Ok(history) = history else { continue };
        violations.extend(check_determinism(&history));
        let sdk_ids = !checks.raw_types.contains(&record.workflow_type);
        violations.extend(check_temporal_round_trip(&history, sdk_ids));
        let attempts = (checks.attempts, checks.service_starts);
        violations.extend(check_timers(&history, checks.tolerance, attempts));
        violations.extend(check_attempts(&history, checks.attempts));
        violations.extend(failures::check_failures(&history));
        violations.extend(retries::check_retries(
            &history,
            checks.attempts,
            checks.tolerance.early_ms,
        ));
        violations.extend(workflow_tasks::check_workflow_task_attempts(&history));
        let rows = storage.buffered(&record.run_id);
        let state = serde_json::from_slice::<RunState>(&record.state);
        let outcome = state.as_ref().ok().and_then(|state| state.outcome.clone());
        violations.extend(state::check_stored_state(&record, state, &rows, &history));
        if !checks.raw_types.contains(&record.workflow_type) {
            violations.extend(check_replay(
                checks.replayer,
                &history,
                checks.digests.get(&record.run_id).copied(),
            ));
        }
        violations.extend(outcomes::check_outcome(
            &record,
            outcome.as_ref(),
            checks.expected,
        ));
        // A workflow id's outcome is its chain's: a run that continued as
        // new never hides how the chain's last run closed.
        if let Some(outcome) = outcome {
            let continued = matches!(outcome, RunOutcome::ContinuedAsNew { .. });
            let outcomes = &mut stored.outcomes;
            if !continued || !outcomes.contains_key(&record.workflow_id) {
                outcomes.insert(record.workflow_id.clone(), outcome);
            }
        }
        stored.histories.insert(record.run_id.clone(), history);
    }
    stored
}
