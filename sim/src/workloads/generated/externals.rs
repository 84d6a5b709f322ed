//! What the model holds signals between runs to (`Step::SignalExternal`):
//! both histories, each against the other.
//!
//! | promise                                                            | checked by        |
//! |--------------------------------------------------------------------|-------------------|
//! | the sender initiated only the signals its program sends, each once | [`check_sent`]    |
//! | `ExternalWorkflowExecutionSignaled` names a run of the target that  | [`check_sent`]    |
//! | has the signal exactly once                                        |                   |
//! | `SignalExternalWorkflowExecutionFailed`: no run of the target was   | [`check_sent`]    |
//! | open from before the signal was sent until the failure             |                   |
//! | an open sender has an outcome for every signal (delivered in time)  | [`check_sent`]    |
//! | a run got an external signal only if its sender initiated it        | [`sent_by`]       |
//! | the step's report says delivered exactly when the history does      | [`delivered`]     |
//! | the same for cancel requests (`Step::CancelExternal`): initiated by | [`check_cancels_sent`], |
//! | the program, recorded by the run named, or not found                | [`cancel_initiated_by`] |

use std::collections::BTreeMap;

use retrace::history::{
    Event, EventKind, History, RequestCancelExternalWorkflowExecutionInitiated,
    SignalExternalWorkflowExecutionInitiated,
};

use super::program::{Program, RunSpec, Step};

/// A request the sender's history initiated, and the event that ended it.
type Sent<'h, A> = (&'h Event, &'h A, Option<&'h Event>);

/// The requests `initiated` picks out of the history, each with the event
/// that names it in its `initiated_event_id` (`ended`), if any.
fn initiations<'h, A>(
    history: &'h History,
    initiated: impl Fn(&'h EventKind) -> Option<&'h A>,
    ended: impl Fn(&EventKind) -> Option<u64>,
) -> Vec<Sent<'h, A>> {
    let events = history.events();
    let outcome = |id: u64| events.iter().find(|o| ended(&o.kind) == Some(id));
    events
        .iter()
        .filter_map(|e| initiated(&e.kind).map(|a| (e, a, outcome(e.event_id))))
        .collect()
}

/// The signals the sender's history initiated, with their outcome events.
fn sends(history: &History) -> Vec<Sent<'_, SignalExternalWorkflowExecutionInitiated>> {
    fn initiated(kind: &EventKind) -> Option<&SignalExternalWorkflowExecutionInitiated> {
        match kind {
            EventKind::SignalExternalWorkflowExecutionInitiated(a) => Some(a),
            _ => None,
        }
    }
    let ended = |kind: &EventKind| match kind {
        EventKind::ExternalWorkflowExecutionSignaled(s) => Some(s.initiated_event_id),
        EventKind::SignalExternalWorkflowExecutionFailed(f) => Some(f.initiated_event_id),
        _ => None,
    };
    initiations(history, initiated, ended)
}

fn is_step_of(spec: &RunSpec, initiated: &SignalExternalWorkflowExecutionInitiated) -> bool {
    spec.steps.iter().any(|step| {
        matches!(step, Step::SignalExternal { target, name, value }
            if *target == initiated.workflow_id
                && *name == initiated.signal_name
                && initiated.input.as_u64() == Some(*value))
    })
}

/// Times the signal `name` with `value` is stored in `history`.
fn stored(history: &History, name: &str, value: u64) -> usize {
    history
        .events()
        .iter()
        .filter(|e| {
            matches!(&e.kind, EventKind::WorkflowExecutionSignaled(s)
            if s.signal_name == name && s.input.as_u64() == Some(value))
        })
        .count()
}

/// The sender's side (its history is the chain's last run, which ran the steps).
pub fn check_sent(
    spec: &RunSpec,
    history: &History,
    histories: &BTreeMap<String, History>,
    clock_spread_ms: u64,
    problems: &mut Vec<String>,
) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (event, initiated, outcome) in sends(history) {
        let name = initiated.signal_name.as_str();
        *seen.entry(name).or_default() += 1;
        if !is_step_of(spec, initiated) {
            problems.push(format!(
                "initiated signal {name} to {}, which its program does not send",
                initiated.workflow_id
            ));
            continue;
        }
        let value = initiated.input.as_u64().unwrap_or_default();
        match outcome.map(|o| (o, &o.kind)) {
            Some((_, EventKind::ExternalWorkflowExecutionSignaled(signaled))) => {
                match histories.get(&signaled.run_id) {
                    Some(target) if target.workflow_id() == initiated.workflow_id => {
                        let count = stored(target, name, value);
                        if count != 1 {
                            problems.push(format!(
                                "signal {name} was recorded as delivered to run {}, which stored it {count} times",
                                signaled.run_id
                            ));
                        }
                    }
                    _ => problems.push(format!(
                        "signal {name} was recorded as delivered to run {}, not a run of {}",
                        signaled.run_id, initiated.workflow_id
                    )),
                }
            }
            Some((failed, _)) => {
                let what = format!("signal {name}");
                check_not_found(
                    &initiated.workflow_id,
                    &what,
                    (event, failed),
                    histories,
                    clock_spread_ms,
                    problems,
                );
            }
            None if history.close_event().is_none() => problems.push(format!(
                "signal {name} to {} was never delivered nor failed",
                initiated.workflow_id
            )),
            None => {}
        }
    }
    for (name, count) in seen {
        if count > 1 {
            problems.push(format!(
                "initiated signal {name} {count} times (its step runs once)"
            ));
        }
    }
}

/// A signal that failed as not found: no run of the target was visibly open
/// from the signal's initiation until its failure (the delivery is between).
/// A run is visible once its creation committed, which an event's time does
/// not show (a start is stamped before its write lands): its first completed
/// workflow task is a later write, so it was visible by then. Same-instant
/// events are not ordered. In a cluster the sender's and the target's
/// events are stamped by different members' clocks, which read up to
/// `clock_spread_ms` apart: the target's times count only beyond that.
fn check_not_found(
    target: &str,
    what: &str,
    (sent, failed): (&Event, &Event),
    histories: &BTreeMap<String, History>,
    clock_spread_ms: u64,
    problems: &mut Vec<String>,
) {
    for history in histories.values().filter(|h| h.workflow_id() == target) {
        let visible = history.events().iter().find_map(|e| {
            matches!(e.kind, EventKind::WorkflowTaskCompleted(_)).then_some(e.event_time)
        });
        let Some(visible) = visible else { continue };
        let open_until = history.close_event().map(|e| e.event_time);
        let open_throughout = visible.plus_ms(clock_spread_ms) < sent.event_time
            && open_until.is_none_or(|close| close > failed.event_time.plus_ms(clock_spread_ms));
        if open_throughout {
            problems.push(format!(
                "{what} failed as not found, but run {} of {target} was open from before it was sent ({}) until after it failed ({})",
                history.run_id(),
                sent.event_time,
                failed.event_time
            ));
        }
    }
}

/// The run that sends signal `name` with `value` to `workflow_id`, if a run
/// of the program does.
pub fn sender_of<'p>(
    program: &'p Program,
    workflow_id: &str,
    name: &str,
    value: u64,
) -> Option<&'p RunSpec> {
    program.runs.iter().find(|run| {
        run.steps.iter().any(|step| {
            matches!(step, Step::SignalExternal { target, name: n, value: v }
                if target == workflow_id && n == name && *v == value)
        })
    })
}

/// The sender's runs initiated the signal (a stored external signal is
/// never made up).
pub fn sent_by(sender: &RunSpec, name: &str, histories: &BTreeMap<String, History>) -> bool {
    histories
        .values()
        .filter(|h| h.workflow_id() == sender.workflow_id)
        .any(|h| sends(h).iter().any(|(_, a, _)| a.signal_name == name))
}

/// Whether the history records signal `name` as delivered.
pub fn delivered(history: &History, name: &str) -> bool {
    sends(history).iter().any(|(_, a, outcome)| {
        a.signal_name == name
            && outcome
                .is_some_and(|o| matches!(o.kind, EventKind::ExternalWorkflowExecutionSignaled(_)))
    })
}

/// The cancel requests the sender's history initiated, with their outcomes.
fn cancel_sends(
    history: &History,
) -> Vec<Sent<'_, RequestCancelExternalWorkflowExecutionInitiated>> {
    fn initiated(kind: &EventKind) -> Option<&RequestCancelExternalWorkflowExecutionInitiated> {
        match kind {
            EventKind::RequestCancelExternalWorkflowExecutionInitiated(a) => Some(a),
            _ => None,
        }
    }
    let ended = |kind: &EventKind| match kind {
        EventKind::ExternalWorkflowExecutionCancelRequested(r) => Some(r.initiated_event_id),
        EventKind::RequestCancelExternalWorkflowExecutionFailed(f) => Some(f.initiated_event_id),
        _ => None,
    };
    initiations(history, initiated, ended)
}

/// The sender's cancel requests: each one its program makes, once; recorded
/// by a run of the target, or failed when none was visibly open.
pub fn check_cancels_sent(
    spec: &RunSpec,
    history: &History,
    histories: &BTreeMap<String, History>,
    clock_spread_ms: u64,
    problems: &mut Vec<String>,
) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (event, initiated, outcome) in cancel_sends(history) {
        let target = initiated.workflow_id.as_str();
        *seen.entry(target).or_default() += 1;
        // A parent asked to cancel passes it on to its children.
        let child = spec.children().any(|c| c.workflow_id == target);
        if !spec.cancels().any(|t| t == target) && !child {
            problems.push(format!(
                "asked {target} to cancel, which its program does not"
            ));
            continue;
        }
        match outcome.map(|o| (o, &o.kind)) {
            Some((_, EventKind::ExternalWorkflowExecutionCancelRequested(requested))) => {
                let recorded = histories.get(&requested.run_id).is_some_and(|h| {
                    h.workflow_id() == target
                        && h.events().iter().any(|e| {
                            matches!(e.kind, EventKind::WorkflowExecutionCancelRequested(_))
                        })
                });
                if !recorded {
                    problems.push(format!(
                        "the cancel of {target} was recorded as requested of run {}, which has no cancel request",
                        requested.run_id
                    ));
                }
            }
            Some((failed, _)) => {
                let what = format!("the cancel of {target}");
                let sent = (event, failed);
                check_not_found(target, &what, sent, histories, clock_spread_ms, problems);
            }
            None if history.close_event().is_none() => problems.push(format!(
                "the cancel of {target} was never delivered nor failed"
            )),
            None => {}
        }
    }
    for (target, count) in seen {
        if count > 1 {
            problems.push(format!(
                "asked {target} to cancel {count} times (its step runs once)"
            ));
        }
    }
}

/// The run of the program that asks `workflow_id` to cancel, if one does.
pub fn canceler_of<'p>(program: &'p Program, workflow_id: &str) -> Option<&'p RunSpec> {
    program
        .runs
        .iter()
        .find(|run| run.cancels().any(|target| target == workflow_id))
}

/// Every run of the program that asks `workflow_id` to cancel (several
/// runs may).
pub fn cancelers_of<'p>(
    program: &'p Program,
    workflow_id: &'p str,
) -> impl Iterator<Item = &'p RunSpec> + 'p {
    program
        .runs
        .iter()
        .filter(move |run| run.cancels().any(|target| target == workflow_id))
}

/// The sender's runs initiated a cancel request of `target`.
pub fn cancel_initiated_by(
    sender: &RunSpec,
    target: &str,
    histories: &BTreeMap<String, History>,
) -> bool {
    histories
        .values()
        .filter(|h| h.workflow_id() == sender.workflow_id)
        .any(|h| {
            cancel_sends(h)
                .iter()
                .any(|(_, a, _)| a.workflow_id == target)
        })
}

/// Whether the history records its cancel request of `target` as delivered.
pub fn cancel_delivered(history: &History, target: &str) -> bool {
    cancel_sends(history).iter().any(|(_, a, outcome)| {
        a.workflow_id == target
            && outcome.is_some_and(|o| {
                matches!(
                    o.kind,
                    EventKind::ExternalWorkflowExecutionCancelRequested(_)
                )
            })
    })
}
