//! The update oracle of the `generated` workload: what a run's history and
//! the client's answers must say about the updates its program sends.
//!
//! | what                                  | must                                                        |
//! |---------------------------------------|-------------------------------------------------------------|
//! | a refused value (≥ `UPDATE_REFUSED_FROM`) | never accepted, never answered with a result             |
//! | an accepted update                    | one the client sent, accepted once, completed once with `value + 1` |
//! | its handler                           | one durable timer per acceptance (it ran once, even across crashes and replays) |
//! | an answer with a result               | `value + 1`, and the history shows the update completed     |
//! | a run that completed                  | accepted and completed each update its steps waited for     |

use std::collections::BTreeMap;

use retrace::history::{EventKind, History, UpdateOutcome};

use super::program::{ClientAction, RunSpec, Step, UPDATE_HANDLER_SLEEP_MS, UPDATE_REFUSED_FROM};

/// True if `history` shows update `update_id` completed.
pub fn completed(history: &History, update_id: &str) -> bool {
    history.events().iter().any(|e| {
        matches!(&e.kind, EventKind::WorkflowExecutionUpdateCompleted(a) if a.update_id == update_id)
    })
}

/// The updates the client sends the run: update id to (name, value).
fn sent(spec: &RunSpec) -> BTreeMap<&str, (&str, u64)> {
    spec.client
        .iter()
        .filter_map(|t| match &t.action {
            ClientAction::Update {
                name,
                value,
                update_id,
            } => Some((update_id.as_str(), (name.as_str(), *value))),
            _ => None,
        })
        .collect()
}

/// Checks the run's last history against its program and the client's
/// answers (`answers`: each update action and what the client got).
pub fn check(
    spec: &RunSpec,
    history: &History,
    answers: &[(ClientAction, Result<Option<u64>, String>)],
    problems: &mut Vec<String>,
) {
    let sent = sent(spec);
    let accepted = check_history(history, &sent, problems);
    for (action, answer) in answers {
        let ClientAction::Update {
            value, update_id, ..
        } = action
        else {
            continue;
        };
        match answer {
            Ok(Some(got)) if *value >= UPDATE_REFUSED_FROM => problems.push(format!(
                "update {update_id} with {value}, which the validator refuses, was answered {got}"
            )),
            Ok(Some(got)) if *got != value + 1 => problems.push(format!(
                "update {update_id} with {value} was answered {got}, not {}",
                value + 1
            )),
            _ => {}
        }
    }
    let closed_completed = matches!(
        history.close_event().map(|e| &e.kind),
        Some(EventKind::WorkflowExecutionCompleted(_))
    );
    if !closed_completed {
        return;
    }
    for step in &spec.steps {
        let Step::Update { name } = step else {
            continue;
        };
        let valid = sent
            .iter()
            .find(|(_, (n, value))| n == name && *value < UPDATE_REFUSED_FROM);
        match valid {
            Some((update_id, _)) if accepted.get(*update_id) == Some(&true) => {}
            _ => problems.push(format!(
                "the run completed, but its update {name} was not accepted and completed once"
            )),
        }
    }
}

/// Checks each update event; returns the updates accepted (true once completed).
fn check_history(
    history: &History,
    sent: &BTreeMap<&str, (&str, u64)>,
    problems: &mut Vec<String>,
) -> BTreeMap<String, bool> {
    let mut accepted: BTreeMap<String, bool> = BTreeMap::new();
    let mut succeeded = 0;
    // The run's cancel reaches its handlers: their sleep ends Canceled.
    let cancel_requested = history
        .events()
        .iter()
        .any(|e| matches!(e.kind, EventKind::WorkflowExecutionCancelRequested(_)));
    for event in history.events() {
        match &event.kind {
            EventKind::WorkflowExecutionUpdateAccepted(a) => {
                let expected = sent.get(a.update_id.as_str());
                let fits = expected.is_some_and(|(name, value)| {
                    *name == a.update_name && a.input == serde_json::json!(value)
                });
                if !fits || expected.is_some_and(|(_, value)| *value >= UPDATE_REFUSED_FROM) {
                    problems.push(format!(
                        "event {}: update {} ({} {}) accepted; the client sent {expected:?}",
                        event.event_id, a.update_id, a.update_name, a.input
                    ));
                }
                if accepted.insert(a.update_id.clone(), false).is_some() {
                    problems.push(format!("update {} accepted twice", a.update_id));
                }
            }
            EventKind::WorkflowExecutionUpdateCompleted(a) => {
                let value = sent.get(a.update_id.as_str()).map(|(_, value)| *value);
                let expected = value.map(|v| UpdateOutcome::Success(serde_json::json!(v + 1)));
                let canceled = matches!(&a.outcome,
                    UpdateOutcome::Failure(f) if f.failure_type == "Canceled");
                succeeded += usize::from(expected.as_ref() == Some(&a.outcome));
                if expected.as_ref() != Some(&a.outcome) && !(canceled && cancel_requested) {
                    problems.push(format!(
                        "event {}: update {} completed with {:?}, not {expected:?}",
                        event.event_id, a.update_id, a.outcome
                    ));
                }
                if accepted.insert(a.update_id.clone(), true) != Some(false) {
                    problems.push(format!(
                        "update {} completed without one acceptance",
                        a.update_id
                    ));
                }
            }
            _ => {}
        }
    }
    check_handler_timers(history, accepted.len(), succeeded, problems);
    accepted
}

/// Each acceptance started its handler's timer once: a handler that ran
/// twice (a replay that re-ran it live, a duplicate acceptance) starts two.
fn check_handler_timers(
    history: &History,
    accepted: usize,
    succeeded: usize,
    problems: &mut Vec<String>,
) {
    let timers = history
        .events()
        .iter()
        .filter(|e| {
            matches!(&e.kind, EventKind::TimerStarted(t) if t.start_to_fire_timeout_ms == UPDATE_HANDLER_SLEEP_MS)
        })
        .count();
    if timers > accepted || timers < succeeded {
        problems.push(format!(
            "{timers} update handler timers for {accepted} accepted and {succeeded} succeeded updates"
        ));
    }
}
