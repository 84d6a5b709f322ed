//! A history's own checks: it is well-formed, it replays the same three ways,
//! the replay ends as the history closed and as the live worker saw it, and no
//! workflow task failed with non-determinism while the run was live, and it
//! survives a round trip through Temporal's JSON export form.

use retrace::env::RunRecord;
use retrace::history::{Event, EventKind, History, HistoryError, WorkflowTaskFailedCause};
use retrace::workflow::{Replayer, RunResult, StateDigest, workflow_task_boundaries};

use super::Violation;

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
        EventKind::WorkflowExecutionContinuedAsNew(a) => {
            Some(RunResult::ContinuedAsNew(a.input.clone()))
        }
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

/// Temporal round trip: the history written in Temporal's JSON export form
/// reads back as itself, but for what Temporal's events have no field for
/// (the start's `request_id`, a terminated child's `reason`, read back empty).
/// The import renumbers activity and timer ids and `control`s as Retrace's
/// SDK numbers them: a history made without the SDK (`sdk_ids` false: a raw
/// workflow type, such as the rogue worker's) is compared without them.
pub fn check_temporal_round_trip(history: &History, sdk_ids: bool) -> Option<Violation> {
    let violation = |message: String, event_id: Option<u64>| {
        Some(Violation::new("temporal round trip", message).at(history, event_id))
    };
    let back = match History::from_json(&history.to_temporal_json()) {
        Ok(back) => back,
        Err(error) => {
            return violation(
                format!("the Temporal export does not read back: {error}"),
                None,
            );
        }
    };
    if (back.workflow_id(), back.run_id()) != (history.workflow_id(), history.run_id()) {
        let ids = format!("{} / {}", back.workflow_id(), back.run_id());
        return violation(format!("the Temporal export reads back as run {ids}"), None);
    }
    let differs = history
        .events()
        .iter()
        .zip(back.events())
        .find(|(sent, read)| !same_but_for_temporal_gaps(sent, read, sdk_ids));
    if let Some((sent, read)) = differs {
        let message = format!("event reads back as {:?}, was {:?}", read.kind, sent.kind);
        return violation(message, Some(sent.event_id));
    }
    if back.len() != history.len() {
        let message = format!("{} events read back, {} written", back.len(), history.len());
        return violation(message, None);
    }
    None
}

/// `read` is `sent` with the fields Temporal drops cleared (and, unless
/// `sdk_ids`, the ids the import renumbers).
fn same_but_for_temporal_gaps(sent: &Event, read: &Event, sdk_ids: bool) -> bool {
    if !sdk_ids && sent != read {
        return same_without_ids(sent, read);
    }
    let mut expected = match &sent.kind {
        EventKind::WorkflowExecutionStarted(_) | EventKind::ChildWorkflowExecutionTerminated(_) => {
            sent.clone()
        }
        _ => return sent == read,
    };
    match &mut expected.kind {
        EventKind::WorkflowExecutionStarted(a) => a.request_id.clear(),
        EventKind::ChildWorkflowExecutionTerminated(a) => a.reason.clear(),
        _ => {}
    }
    expected == *read
}

/// The events' canonical forms equal once the ids the import renumbers are
/// dropped.
fn same_without_ids(sent: &Event, read: &Event) -> bool {
    let without_ids = |event: &Event| {
        let mut value = serde_json::to_value(event).expect("events always encode");
        if let Some(serde_json::Value::Object(attributes)) = value.get_mut("attributes") {
            for key in ["activity_id", "timer_id", "control", "request_id", "reason"] {
                attributes.remove(key);
            }
        }
        value
    };
    without_ids(sent) == without_ids(read)
}

#[cfg(test)]
mod temporal_round_trip_tests {
    use retrace::history::HistoryBuilder;
    use serde_json::json;

    use super::*;

    #[test]
    fn an_sdk_history_passes_and_what_does_not_read_back_is_a_violation() {
        let mut b = HistoryBuilder::new("flow", json!({"n": 1}));
        b.add_full_workflow_task();
        let timer = b.add_timer_started("1", 1_000);
        b.add_timer_fired("1", timer);
        b.add_full_workflow_task();
        b.add_marker("SideEffect", json!({"seq": 1, "value": "x"}));
        b.add_workflow_execution_completed(json!("done"));
        assert_eq!(check_temporal_round_trip(b.history(), true), None);

        // A timer id Retrace's SDK would not give reads back renumbered.
        let mut b = HistoryBuilder::new("flow", json!(null));
        b.add_full_workflow_task();
        let timer = b.add_timer_started("t-9", 1_000);
        b.add_timer_fired("t-9", timer);
        let violation = check_temporal_round_trip(b.history(), true).expect("renumbered");
        assert_eq!(
            (violation.invariant, violation.event_id),
            ("temporal round trip", Some(5))
        );
        assert_eq!(
            check_temporal_round_trip(b.history(), false),
            None,
            "raw: ids not compared"
        );

        // A marker no SDK of Retrace's records does not read back at all.
        let mut b = HistoryBuilder::new("flow", json!(null));
        b.add_full_workflow_task();
        b.add_marker("Custom", json!({}));
        let violation = check_temporal_round_trip(b.history(), true).expect("refused");
        assert!(
            violation.message.contains("marker \"Custom\""),
            "{}",
            violation.message
        );
    }
}
