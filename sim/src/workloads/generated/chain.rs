//! The chain of runs of one workflow id (continue-as-new), and what it must
//! be: the model's first check of a run, before it looks at the last run's
//! history as it looks at a run that never continued.
//!
//! | promise                                                        | checked by          |
//! |----------------------------------------------------------------|---------------------|
//! | every run of the id is in one chain, first to last             | [`chain_of`]        |
//! | a run's `WorkflowExecutionContinuedAsNew` names the next run,  | [`check_links`]     |
//! | whose `WorkflowExecutionStarted` names it back, same time      |                     |
//! | only the last run of the chain may be open (one at a time)     | [`check_links`]     |
//! | run `k`'s input is the program's, at position `k`, carrying    | [`check_inputs`]    |
//! | every signal runs `0..k` received, in order per name: none     |                     |
//! | lost, none made up                                             |                     |
//! | the chain has the program's length, unless the client or the   | [`check_length`]    |
//! | execution timeout ended it early                               |                     |

use std::collections::BTreeMap;

use retrace::history::{EventKind, History};

use super::program::{ClientAction, RunSpec};

/// The runs of `spec`'s workflow id in chain order, or what is wrong.
pub fn chain_of<'h>(spec: &RunSpec, histories: &[&'h History]) -> Result<Vec<&'h History>, String> {
    let by_run: BTreeMap<&str, &History> = histories.iter().map(|h| (h.run_id(), *h)).collect();
    // The first run continues none of these (a retried attempt it
    // continues is checked by `attempts`).
    let firsts: Vec<&History> = histories
        .iter()
        .copied()
        .filter(|h| {
            h.started().is_some_and(|s| {
                s.continued_execution_run_id
                    .as_deref()
                    .is_none_or(|previous| !by_run.contains_key(previous))
            })
        })
        .collect();
    let [first] = firsts[..] else {
        return Err(format!(
            "expected one first run (started by the client), found {} among {} runs",
            firsts.len(),
            histories.len()
        ));
    };
    let mut chain = vec![first];
    while let Some(next) = next_run_id(chain[chain.len() - 1]) {
        let Some(history) = by_run.get(next) else {
            return Err(format!("a run continued as {next}, which is not stored"));
        };
        if chain.len() > usize::from(spec.continue_as_new) {
            return Err(format!(
                "the chain is longer than the program's {} continues",
                spec.continue_as_new
            ));
        }
        chain.push(history);
    }
    if chain.len() != histories.len() {
        return Err(format!(
            "{} runs of the id are stored, but its chain has {}",
            histories.len(),
            chain.len()
        ));
    }
    Ok(chain)
}

fn next_run_id(history: &History) -> Option<&str> {
    match &history.close_event()?.kind {
        EventKind::WorkflowExecutionContinuedAsNew(a) => Some(&a.new_execution_run_id),
        _ => None,
    }
}

/// Each link is written both ways, at one instant: a run continues only by
/// closing, and its successor starts in the same write.
pub fn check_links(chain: &[&History], problems: &mut Vec<String>) {
    for pair in chain.windows(2) {
        let (earlier, later) = (pair[0], pair[1]);
        let close = earlier
            .close_event()
            .expect("a run with a successor closed");
        let start = &later.events()[0];
        let names_back = later
            .started()
            .and_then(|s| s.continued_execution_run_id.as_deref());
        if names_back != Some(earlier.run_id()) {
            problems.push(format!(
                "run {} follows run {}, but its start names {names_back:?}",
                later.run_id(),
                earlier.run_id()
            ));
        }
        if close.event_time != start.event_time {
            problems.push(format!(
                "run {} closed at {} but run {} started at {}: not one write",
                earlier.run_id(),
                close.event_time,
                later.run_id(),
                start.event_time
            ));
        }
    }
}

/// Run `k`'s input is the program's run at position `k`, carrying the
/// signals of runs `0..k`: each run's, by name (the interpreter drains one
/// name after another), in the order they were written.
pub fn check_inputs(spec: &RunSpec, chain: &[&History], problems: &mut Vec<String>) {
    let mut carried: Vec<(String, u64)> = Vec::new();
    for (position, history) in chain.iter().enumerate() {
        let expected = spec.continued_as(position as u8, carried.clone());
        let expected = serde_json::to_value(&expected).expect("a program encodes");
        match history.started() {
            Some(started) if started.input == expected => {}
            Some(started) => problems.push(format!(
                "run {position} of the chain got input {}, expected {expected} \
                 (a signal of an earlier run lost, invented or reordered?)",
                started.input
            )),
            None => problems.push(format!("run {position} of the chain has no start")),
        }
        let mut received = received_signals(spec, history);
        received.sort_by(|a, b| a.0.cmp(&b.0)); // stable: per name, in order
        carried.extend(received);
    }
}

/// The client's plain signals written to `history`, in order.
fn received_signals(spec: &RunSpec, history: &History) -> Vec<(String, u64)> {
    let names = spec.signal_names();
    history
        .events()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::WorkflowExecutionSignaled(s) if names.contains(s.signal_name.as_str()) => {
                Some((s.signal_name.clone(), s.input.as_u64()?))
            }
            _ => None,
        })
        .collect()
}

/// A chain shorter than the program's ends in a run that was canceled (by
/// the client or another run: `cancelable`) or the client terminated, or whose execution timeout fired (the last run may be open).
/// Returns true if the chain is whole: its last run ran the steps.
pub fn check_length(
    spec: &RunSpec,
    chain: &[&History],
    cancelable: bool,
    problems: &mut Vec<String>,
) -> bool {
    let whole = chain.len() == usize::from(spec.continue_as_new) + 1;
    if whole {
        return true;
    }
    let last = chain[chain.len() - 1];
    let ended_early = match last.close_event().map(|e| &e.kind) {
        Some(EventKind::WorkflowExecutionCanceled(_)) => cancelable,
        Some(EventKind::WorkflowExecutionTerminated(_)) => {
            let close = last.close_event().expect("matched a close");
            spec.client_does(|a| matches!(a, ClientAction::Terminate))
                || super::children::terminated_by_policy(spec, close)
        }
        Some(EventKind::WorkflowExecutionTimedOut(_)) => spec.execution_timeout_ms.is_some(),
        None => true, // never closed: the model says so
        Some(_) => false,
    };
    if !ended_early {
        let name = last.close_event().map(|e| e.kind.name());
        problems.push(format!(
            "the chain has {} of {} runs, and its last closed with {name:?}",
            chain.len(),
            usize::from(spec.continue_as_new) + 1
        ));
    }
    false
}

/// The signals the chain's runs before the last received (carried into it).
pub fn carried_names(spec: &RunSpec, chain: &[&History]) -> Vec<String> {
    chain[..chain.len() - 1]
        .iter()
        .flat_map(|h| received_signals(spec, h))
        .map(|(name, _)| name)
        .collect()
}
