//! The stored run state equals the state its history implies.
//!
//! The projection is rebuilt here from the events alone, independently of the
//! engine's machine, and compared with the stored `RunRecord` and its state
//! blob (`RunState`). Events that arrived while a workflow task ran are
//! buffered in the state and not yet in the history: the comparison allows
//! them exactly where the machine keeps them (`buffered`, `closing_activities`,
//! timers marked `fired`), and only while a workflow task is started.
//!
//! | part                  | implied by the history                                       |
//! |-----------------------|--------------------------------------------------------------|
//! | start fields          | `WorkflowExecutionStarted` and its time                      |
//! | next event id         | the last event's id + 1                                      |
//! | status, outcome, close time | the close event                                         |
//! | workflow task         | the last workflow task event (scheduled, started, or none / backing off after a failure) |
//! | previous started      | the last `WorkflowTaskCompleted`'s started event             |
//! | open activities       | scheduled and not closed, with their scheduled attributes and cancel request |
//! | open timers           | started, neither fired nor canceled, with their fire time    |
//! | cancel requested      | a `WorkflowExecutionCancelRequested` (or one buffered)       |
//! | buffered rows         | none unless a workflow task is started; signal bytes, closing activities and fired timers as the blob says |
//! | history payload bytes | the payloads of every event after `WorkflowExecutionStarted` (the service counts from there) |
//!
//! A lost write, or one applied on a stale version, leaves state and history
//! disagreeing on one of these.

use std::collections::{BTreeMap, BTreeSet};

use retrace::api::RunOutcome;
use retrace::engine::machine::{Buffered, RunState, WorkflowTaskState};
use retrace::env::{BufferedRead, RunRecord, RunStatus};
use retrace::history::{EventKind, History, payload_size_bytes};
use retrace::types::Timestamp;

use super::{Violation, activities};

/// The workflow task as the history shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Task {
    /// None pending (or backing off after a failure, if `failed`).
    Idle { failed: bool },
    Scheduled {
        scheduled_event_id: u64,
        attempt: u32,
    },
    Started {
        scheduled_event_id: u64,
        started_event_id: u64,
        attempt: u32,
        started_time: Timestamp,
    },
}

fn implied_task(history: &History) -> (Task, u64) {
    let mut task = Task::Idle { failed: false };
    let mut previous_started = 0;
    let mut attempts = BTreeMap::new();
    for e in history.events() {
        task = match &e.kind {
            // A start delay or a retry's backoff: no task until it ends.
            EventKind::WorkflowExecutionStarted(s)
                if s.first_workflow_task_backoff_ms.is_some() =>
            {
                Task::Idle { failed: true }
            }
            EventKind::WorkflowTaskScheduled(a) => {
                attempts.insert(e.event_id, a.attempt);
                Task::Scheduled {
                    scheduled_event_id: e.event_id,
                    attempt: a.attempt,
                }
            }
            EventKind::WorkflowTaskStarted(a) => Task::Started {
                scheduled_event_id: a.scheduled_event_id,
                started_event_id: e.event_id,
                attempt: attempts.get(&a.scheduled_event_id).copied().unwrap_or(0),
                started_time: e.event_time,
            },
            EventKind::WorkflowTaskCompleted(a) => {
                previous_started = a.started_event_id;
                Task::Idle { failed: false }
            }
            EventKind::WorkflowTaskFailed(_) => Task::Idle { failed: true },
            EventKind::WorkflowTaskTimedOut(_) => Task::Idle { failed: false },
            kind if kind.is_terminal() => Task::Idle { failed: false },
            _ => task,
        };
    }
    (task, previous_started)
}

fn stored_task(state: &WorkflowTaskState) -> Task {
    match *state {
        WorkflowTaskState::None => Task::Idle { failed: false },
        WorkflowTaskState::Backoff { .. } => Task::Idle { failed: true },
        WorkflowTaskState::Scheduled {
            scheduled_event_id,
            attempt,
        } => Task::Scheduled {
            scheduled_event_id,
            attempt,
        },
        WorkflowTaskState::Started {
            scheduled_event_id,
            started_event_id,
            attempt,
            started_time,
        } => Task::Started {
            scheduled_event_id,
            started_event_id,
            attempt,
            started_time,
        },
    }
}

/// The close the history ends with, as status and outcome.
fn implied_close(history: &History) -> (RunStatus, Option<RunOutcome>, Option<Timestamp>) {
    let Some(close) = history.close_event() else {
        return (RunStatus::Running, None, None);
    };
    let (status, outcome) = match &close.kind {
        EventKind::WorkflowExecutionCompleted(a) => (
            RunStatus::Completed,
            RunOutcome::Completed {
                result: a.result.clone(),
            },
        ),
        EventKind::WorkflowExecutionFailed(a) => (
            RunStatus::Failed,
            RunOutcome::Failed {
                failure: a.failure.clone(),
            },
        ),
        EventKind::WorkflowExecutionCanceled(a) => (
            RunStatus::Canceled,
            RunOutcome::Canceled {
                details: a.details.clone(),
            },
        ),
        EventKind::WorkflowExecutionTerminated(a) => (
            RunStatus::Terminated,
            RunOutcome::Terminated {
                reason: a.reason.clone(),
            },
        ),
        EventKind::WorkflowExecutionContinuedAsNew(a) => (
            RunStatus::ContinuedAsNew,
            RunOutcome::ContinuedAsNew {
                new_run_id: a.new_execution_run_id.clone(),
            },
        ),
        _ => (RunStatus::TimedOut, RunOutcome::TimedOut),
    };
    (status, Some(outcome), Some(close.event_time))
}

/// Collects the differences between stored and implied state.
struct Diff {
    differences: Vec<String>,
}

impl Diff {
    fn same<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, stored: T, implied: T) {
        if stored != implied {
            self.differences.push(format!(
                "{what}: stored {stored:?}, history implies {implied:?}"
            ));
        }
    }

    fn holds(&mut self, what: &str, holds: bool) {
        if !holds {
            self.differences.push(what.to_string());
        }
    }
}

/// The stored record, state and buffered rows of a run equal what its
/// history implies. `state` is the record's state blob decoded (the caller
/// decodes it once for this check and the outcome check).
pub fn check_stored_state(
    record: &RunRecord,
    state: serde_json::Result<RunState>,
    rows: &BufferedRead,
    history: &History,
) -> Option<Violation> {
    let mut state = match state {
        Ok(state) => state,
        Err(error) => {
            let message = format!("the stored state does not decode: {error}");
            return Some(Violation::new("stored state", message).of_record(record, None));
        }
    };
    let mut diff = Diff {
        differences: Vec::new(),
    };
    diff.holds(
        "an old state blob's inline buffered events",
        state.buffered.is_empty(),
    );
    diff.same("buffered rows' version", rows.version, Some(record.version));
    state.buffered = Buffered::from_rows(rows.events.clone());
    compare_record(&mut diff, record, &state);
    compare_start(&mut diff, history, &state);
    compare_progress(&mut diff, history, &state);
    compare_activities(&mut diff, history, &state);
    compare_timers(&mut diff, history, &state);
    compare_buffered(&mut diff, &state);
    compare_payload_bytes(&mut diff, history, &state);
    if diff.differences.is_empty() {
        return None;
    }
    let message = format!(
        "the stored state is not the state its history implies: {}",
        diff.differences.join("; ")
    );
    let last = history.events().last().map(|e| e.event_id);
    Some(Violation::new("stored state", message).at(history, last))
}

fn compare_record(diff: &mut Diff, record: &RunRecord, state: &RunState) {
    diff.same("record status", record.status, state.status);
    diff.same(
        "record next event id",
        record.next_event_id,
        state.next_event_id,
    );
    diff.same("record close time", record.close_time, state.close_time);
    diff.same("record start time", record.start_time, state.start_time);
    diff.same(
        "record workflow type",
        &record.workflow_type,
        &state.workflow_type,
    );
    diff.same("record task queue", &record.task_queue, &state.task_queue);
    diff.same("record run id", &record.run_id, &state.run_id);
}

fn compare_start(diff: &mut Diff, history: &History, state: &RunState) {
    let (Some(first), Some(started)) = (history.events().first(), history.started()) else {
        diff.holds("the history has no WorkflowExecutionStarted", false);
        return;
    };
    diff.same(
        "workflow id",
        state.workflow_id.as_str(),
        history.workflow_id(),
    );
    diff.same("run id", state.run_id.as_str(), history.run_id());
    diff.same(
        "workflow type",
        &state.workflow_type,
        &started.workflow_type,
    );
    diff.same("task queue", &state.task_queue, &started.task_queue);
    diff.same("start time", state.start_time, first.event_time);
    // The execution timeout counts from the end of the start delay.
    let delay_ms = started.first_workflow_task_backoff_ms.unwrap_or(0);
    let deadline = started
        .execution_timeout_ms
        .map(|ms| first.event_time.plus_ms(delay_ms).plus_ms(ms));
    diff.same("execution deadline", state.execution_deadline, deadline);
    compare_retry(diff, history, state, started);
    diff.same(
        "workflow task timeout",
        state.workflow_task_timeout_ms,
        started.workflow_task_timeout_ms,
    );
    diff.same(
        "start request id",
        &state.start_request_id,
        &started.request_id,
    );
}

/// The workflow retry policy, cron schedule, attempt, kept input and next
/// run are the ones the history names.
fn compare_retry(
    diff: &mut Diff,
    history: &History,
    state: &RunState,
    started: &retrace::history::WorkflowExecutionStarted,
) {
    diff.same(
        "retry policy",
        state.retry_policy.as_ref(),
        started.retry_policy.as_deref(),
    );
    diff.same("attempt", state.attempt, started.attempt);
    let keeps = started.retry_policy.is_some() || started.cron_schedule.is_some();
    let kept = keeps.then_some(&started.input);
    diff.same("kept input", state.kept_input.as_ref(), kept);
    let successor = match history.close_event().map(|e| &e.kind) {
        Some(EventKind::WorkflowExecutionFailed(f)) => f.new_execution_run_id.clone(),
        Some(EventKind::WorkflowExecutionCompleted(c)) => c.new_execution_run_id.clone(),
        _ => None,
    };
    diff.same("successor run", &state.successor_run_id, &successor);
    let cron = state.cron.as_ref();
    diff.same(
        "cron schedule",
        cron.map(|c| &c.schedule),
        started.cron_schedule.as_ref(),
    );
    diff.same(
        "last completion result",
        cron.and_then(|c| c.last_completion_result.as_ref()),
        started.last_completion_result.as_ref(),
    );
}

fn compare_progress(diff: &mut Diff, history: &History, state: &RunState) {
    diff.same(
        "next event id",
        state.next_event_id,
        history.next_event_id(),
    );
    let (status, outcome, close_time) = implied_close(history);
    diff.same("status", state.status, status);
    diff.same("outcome", &state.outcome, &outcome);
    diff.same("close time", state.close_time, close_time);
    let (task, previous_started) = implied_task(history);
    diff.same("workflow task", stored_task(&state.workflow_task), task);
    diff.same(
        "previous started event id",
        state.previous_started_event_id,
        previous_started,
    );
    let requested = history
        .events()
        .iter()
        .any(|e| matches!(e.kind, EventKind::WorkflowExecutionCancelRequested(_)));
    let buffered_request = state
        .buffered
        .iter()
        .any(|k| matches!(k, EventKind::WorkflowExecutionCancelRequested(_)));
    diff.same(
        "cancel requested",
        state.cancel_requested,
        requested || buffered_request,
    );
    let task_started = state.workflow_task.is_started();
    diff.holds(
        "events are buffered while no workflow task is started",
        task_started || (state.buffered.is_empty() && state.closing_activities.is_empty()),
    );
}

fn compare_activities(diff: &mut Diff, history: &History, state: &RunState) {
    let mut cancel_requests: BTreeMap<u64, u64> = BTreeMap::new();
    for e in history.events() {
        if let EventKind::ActivityTaskCancelRequested(a) = &e.kind {
            cancel_requests.insert(a.scheduled_event_id, e.event_id);
        }
    }
    let open: BTreeMap<u64, _> = activities(history)
        .into_iter()
        .filter(|v| v.close.is_none() && !history.is_closed())
        .map(|v| (v.scheduled.event_id, v))
        .collect();
    let stored: BTreeSet<u64> = state.activities.keys().copied().collect();
    let closing: BTreeSet<u64> = state
        .closing_activities
        .values()
        .map(|c| c.scheduled_event_id)
        .collect();
    diff.holds(
        "an activity is both open and closing",
        stored.is_disjoint(&closing),
    );
    let implied: BTreeSet<u64> = open.keys().copied().collect();
    let stored_all: BTreeSet<u64> = stored.union(&closing).copied().collect();
    diff.same("open activities", stored_all, implied);
    for (id, activity) in &state.activities {
        let Some(view) = open.get(id) else { continue };
        let attrs = view.attrs;
        let what = |field: &str| format!("activity {id} {field}");
        diff.same(&what("id"), &activity.activity_id, &attrs.activity_id);
        diff.same(&what("type"), &activity.activity_type, &attrs.activity_type);
        diff.same(&what("task queue"), &activity.task_queue, &attrs.task_queue);
        diff.same(
            &what("scheduled time"),
            activity.scheduled_time,
            view.scheduled.event_time,
        );
        diff.same(
            &what("schedule-to-close"),
            activity.schedule_to_close_timeout_ms,
            attrs.schedule_to_close_timeout_ms,
        );
        // The history records schedule-to-start filled from
        // schedule-to-close, as Temporal does; the state keeps what was set.
        diff.same(
            &what("schedule-to-start"),
            activity
                .schedule_to_start_timeout_ms
                .or(activity.schedule_to_close_timeout_ms),
            attrs.schedule_to_start_timeout_ms,
        );
        diff.same(
            &what("start-to-close"),
            Some(activity.start_to_close_timeout_ms),
            attrs.start_to_close_timeout_ms,
        );
        diff.same(
            &what("heartbeat timeout"),
            activity.heartbeat_timeout_ms,
            attrs.heartbeat_timeout_ms,
        );
        diff.same(
            &what("retry policy"),
            &activity.retry_policy,
            &attrs.retry_policy,
        );
        diff.same(
            &what("cancel request"),
            activity.cancel_requested_event_id,
            cancel_requests.get(id).copied(),
        );
        diff.holds(&what("attempt is at least 1"), activity.attempt >= 1);
    }
}

/// The running total the service bounds a history by (its payload bytes)
/// against the payloads the history holds. The start's input is not in the
/// total: the service counts from the first transition on.
fn compare_payload_bytes(diff: &mut Diff, history: &History, state: &RunState) {
    let bytes: u64 = history
        .events()
        .iter()
        .filter(|e| !matches!(e.kind, EventKind::WorkflowExecutionStarted(_)))
        .flat_map(|e| e.kind.payloads())
        .map(payload_size_bytes)
        .sum();
    diff.same("history payload bytes", state.history_payload_bytes, bytes);
}

/// The buffered rows (in `state.buffered`) against what the blob says of them.
fn compare_buffered(diff: &mut Diff, state: &RunState) {
    let mut signal_bytes = 0;
    let mut closing = BTreeSet::new();
    let mut fired = BTreeSet::new();
    for kind in &state.buffered {
        match kind {
            EventKind::WorkflowExecutionSignaled(a) => signal_bytes += payload_size_bytes(&a.input),
            EventKind::TimerFired(a) => {
                fired.insert(a.timer_id.clone());
            }
            kind => closing.extend(super::activity_closed_by(kind)),
        }
    }
    diff.same(
        "buffered signal bytes",
        state.buffered_payload_bytes,
        signal_bytes,
    );
    let stored_closing: BTreeSet<u64> = state
        .closing_activities
        .values()
        .map(|c| c.scheduled_event_id)
        .collect();
    diff.same("buffered activity closes", stored_closing, closing);
    let stored_fired: BTreeSet<String> = state
        .timers
        .iter()
        .filter(|(_, t)| t.fired)
        .map(|(id, _)| id.clone())
        .collect();
    diff.same("buffered timer fires", stored_fired, fired);
}

fn compare_timers(diff: &mut Diff, history: &History, state: &RunState) {
    let mut open = BTreeMap::new();
    for e in history.events() {
        match &e.kind {
            EventKind::TimerStarted(a) => {
                let fire_time = e.event_time.plus_ms(a.start_to_fire_timeout_ms);
                open.insert(a.timer_id.clone(), (e.event_id, fire_time));
            }
            EventKind::TimerFired(a) => {
                open.remove(&a.timer_id);
            }
            EventKind::TimerCanceled(a) => {
                open.remove(&a.timer_id);
            }
            kind if kind.is_terminal() => open.clear(),
            _ => {}
        }
    }
    let stored: BTreeMap<String, (u64, Timestamp)> = state
        .timers
        .iter()
        .map(|(id, t)| (id.clone(), (t.started_event_id, t.fire_time)))
        .collect();
    diff.same("open timers (started event, fire time)", stored, open);
    let fired_buffered = state.timers.values().any(|t| t.fired);
    diff.holds(
        "a timer is marked fired while no workflow task is started",
        !fired_buffered || state.workflow_task.is_started(),
    );
}

#[cfg(test)]
mod tests {
    use retrace::api::{StartWorkflowRequest, TaskToken};
    use retrace::engine::machine::{Limits, Step, activity, run, workflow_task};
    use retrace::history::Event;
    use retrace::workflow::{Command, ScheduleActivityTask};
    use serde_json::json;

    use super::*;

    const LIMITS: Limits = Limits {
        payload_bytes_max: 1 << 20,
        buffered_payload_bytes_max: 4 << 20,
    };

    /// Applies one transition at `at_ms`, appending its events.
    fn step(
        state: &mut RunState,
        events: &mut Vec<Event>,
        at_ms: u64,
        f: impl FnOnce(&mut Step<'_>),
    ) {
        let mut step = Step::new(state, Timestamp(1_000_000 + at_ms), LIMITS);
        f(&mut step);
        // What the service does after each transition.
        let bytes = retrace::engine::machine::check_event_payloads(&step.events, LIMITS).unwrap();
        step.state.history_payload_bytes += bytes;
        events.append(&mut step.events);
    }

    /// A run driven through the engine's machine: started, a workflow task
    /// that schedules an activity and a timer, the activity's attempt
    /// started. Returns its state and events after each transition.
    fn driven_run() -> Vec<(RunState, Vec<Event>)> {
        let request = StartWorkflowRequest {
            workflow_id: "wf".into(),
            workflow_type: "pay".into(),
            task_queue: "q".into(),
            input: json!(null),
            execution_timeout_ms: Some(60_000),
            workflow_task_timeout_ms: None,
            id_reuse_policy: Default::default(),
            request_id: "request-1".into(),
            identity: "client".into(),
            start_delay_ms: None,
            retry_policy: None,
            cron_schedule: None,
            search_attributes: Default::default(),
            memo: Default::default(),
        };
        let (mut state, mut events) =
            run::start(&request, "run-1", Timestamp(1_000_000), LIMITS).unwrap();
        let mut snapshots = vec![(state.clone(), events.clone())];
        let mut token = None;
        step(&mut state, &mut events, 5, |step| {
            let started = workflow_task::on_started(step, None, "worker-0", "poll-1").unwrap();
            token = Some(TaskToken {
                workflow_id: step.state.workflow_id.clone(),
                run_id: "run-1".into(),
                scheduled_event_id: started.scheduled_event_id,
                attempt: started.attempt,
                started_event_id: started.started_event_id,
            });
        });
        snapshots.push((state.clone(), events.clone()));
        let commands = [
            Command::ScheduleActivityTask(ScheduleActivityTask {
                activity_id: "1".into(),
                activity_type: "charge".into(),
                task_queue: None,
                input: json!(7),
                schedule_to_close_timeout_ms: Some(30_000),
                schedule_to_start_timeout_ms: None,
                start_to_close_timeout_ms: Some(5_000),
                heartbeat_timeout_ms: None,
                retry_policy: None,
            }),
            Command::StartTimer {
                timer_id: "t".into(),
                start_to_fire_timeout_ms: 10_000,
            },
        ];
        step(&mut state, &mut events, 10, |step| {
            workflow_task::on_completed(step, &token.unwrap(), &commands, "worker-0").unwrap();
        });
        snapshots.push((state.clone(), events.clone()));
        step(&mut state, &mut events, 20, |step| {
            activity::on_started(step, 5, 1, "worker-1").unwrap();
        });
        snapshots.push((state, events));
        snapshots
    }

    /// The record's state blob decoded, as `check_stored_runs` passes it.
    fn decode(record: &RunRecord) -> serde_json::Result<RunState> {
        serde_json::from_slice(&record.state)
    }

    fn stored(state: &RunState, events: &[Event]) -> (RunRecord, BufferedRead, History) {
        let record = RunRecord {
            run_id: state.run_id.clone(),
            workflow_id: state.workflow_id.clone(),
            workflow_type: state.workflow_type.clone(),
            task_queue: state.task_queue.clone(),
            status: state.status,
            start_time: state.start_time,
            close_time: state.close_time,
            next_event_id: state.next_event_id,
            version: 1,
            state: serde_json::to_vec(state).unwrap(),
            search_attributes: Default::default(),
        };
        let history = History::from_events("wf", "run-1", events.to_vec()).unwrap();
        let rows = BufferedRead {
            version: Some(1),
            events: state.buffered.iter().cloned().collect(),
        };
        (record, rows, history)
    }

    #[test]
    fn the_state_after_every_transition_of_a_real_run_is_the_one_its_history_implies() {
        for (state, events) in driven_run() {
            let (record, rows, history) = stored(&state, &events);
            assert_eq!(
                check_stored_state(&record, decode(&record), &rows, &history),
                None
            );
        }
    }

    #[test]
    fn a_lost_history_write_under_a_newer_state_is_caught() {
        let snapshots = driven_run();
        let (state, _) = &snapshots[2];
        let (_, older_events) = &snapshots[1];
        let (record, rows, history) = stored(state, older_events);
        let violation =
            check_stored_state(&record, decode(&record), &rows, &history).expect("caught");
        assert_eq!(violation.invariant, "stored state");
        assert!(violation.message.contains("open activities"), "{violation}");
    }

    #[test]
    fn a_state_written_on_a_stale_version_is_caught() {
        let snapshots = driven_run();
        let (stale_state, _) = &snapshots[1];
        let (_, events) = &snapshots[3];
        let (record, rows, history) = stored(stale_state, events);
        let violation =
            check_stored_state(&record, decode(&record), &rows, &history).expect("caught");
        assert!(violation.message.contains("next event id"), "{violation}");
        assert!(violation.message.contains("open timers"), "{violation}");
    }

    /// The run of [`driven_run`] after its workflow task started, with two
    /// signals buffered while the task runs.
    fn run_with_buffered_signals() -> (RunState, Vec<Event>) {
        let (mut state, mut events) = driven_run().swap_remove(1);
        assert!(state.workflow_task.is_started());
        for (at_ms, id) in [(6, "signal-1"), (7, "signal-2")] {
            step(&mut state, &mut events, at_ms, |step| {
                run::on_signal(step, "go", json!({ "id": id }), "client", id).unwrap();
            });
        }
        assert_eq!(state.buffered.iter().count(), 2);
        (state, events)
    }

    #[test]
    fn buffered_rows_that_match_the_blob_pass() {
        let (state, events) = run_with_buffered_signals();
        let (record, rows, history) = stored(&state, &events);
        assert_eq!(
            check_stored_state(&record, decode(&record), &rows, &history),
            None
        );
    }

    #[test]
    fn a_lost_append_of_a_buffered_signal_is_caught() {
        let (state, events) = run_with_buffered_signals();
        let (record, mut rows, history) = stored(&state, &events);
        rows.events.pop();
        let violation =
            check_stored_state(&record, decode(&record), &rows, &history).expect("caught");
        assert!(
            violation.message.contains("buffered signal bytes"),
            "{violation}"
        );
    }

    #[test]
    fn buffered_rows_left_after_the_task_ended_are_caught() {
        let (state, events) = driven_run().swap_remove(2);
        assert!(!state.workflow_task.is_started());
        let (record, mut rows, history) = stored(&state, &events);
        let (buffered, _) = run_with_buffered_signals();
        rows.events = buffered.buffered.iter().cloned().collect();
        let violation =
            check_stored_state(&record, decode(&record), &rows, &history).expect("caught");
        assert!(
            violation
                .message
                .contains("events are buffered while no workflow task is started"),
            "{violation}"
        );
    }

    #[test]
    fn a_history_payload_total_that_misses_an_event_is_caught() {
        let (mut state, events) = driven_run().pop().unwrap();
        state.history_payload_bytes = 0;
        let (record, rows, history) = stored(&state, &events);
        let violation =
            check_stored_state(&record, decode(&record), &rows, &history).expect("caught");
        assert!(
            violation.message.contains("history payload bytes"),
            "{violation}"
        );
    }

    type Tamper = fn(&mut RunState);

    #[test]
    fn a_tampered_field_of_the_stored_state_is_caught() {
        let (state, events) = driven_run().pop().unwrap();
        let tampers: [(&str, Tamper); 4] = [
            ("cancel requested", |s| s.cancel_requested = true),
            ("activity 5 retry policy", |s| {
                s.activities
                    .get_mut(&5)
                    .unwrap()
                    .retry_policy
                    .maximum_attempts = 9
            }),
            ("open timers", |s| {
                s.timers.get_mut("t").unwrap().fire_time = Timestamp(0)
            }),
            ("execution deadline", |s| s.execution_deadline = None),
        ];
        for (what, tamper) in tampers {
            let mut tampered = state.clone();
            tamper(&mut tampered);
            let (record, rows, history) = stored(&tampered, &events);
            let violation =
                check_stored_state(&record, decode(&record), &rows, &history).expect(what);
            assert!(violation.message.contains(what), "{what}: {violation}");
        }
    }
}
