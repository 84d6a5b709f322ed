//! Local activities are at least once until recorded, and never after: a
//! worker may run one again only while no completed workflow task has
//! recorded its marker, and a marker records only an attempt a worker ran.
//!
//! | invariant | what must hold |
//! |---|---|
//! | `local activities: never re-run` | no attempt of a local activity started in a workflow task that began after its marker was written (the worker had the marker in its history) |
//! | `local activities: recorded as run` | every marker's attempt was started by some worker for that run and sequence number |

use std::collections::{BTreeMap, BTreeSet};

use retrace::history::{EventKind, History};
use retrace::workflow::{LOCAL_ACTIVITY_MARKER_NAME, LocalActivityOutcome};

use super::Violation;
use crate::world::cluster::LocalAttemptSeen;

/// Checks every history's local activity markers against the attempts
/// workers started.
pub fn check_local_activities(
    histories: &BTreeMap<String, History>,
    attempts: &[LocalAttemptSeen],
) -> Vec<Violation> {
    let mut started: BTreeMap<(&str, u64), Vec<&LocalAttemptSeen>> = BTreeMap::new();
    for attempt in attempts {
        started
            .entry((attempt.run_id.as_str(), attempt.seq))
            .or_default()
            .push(attempt);
    }
    let mut violations = Vec::new();
    for (run_id, history) in histories {
        for (event_id, outcome) in markers(history) {
            let seen = started
                .get(&(run_id.as_str(), outcome.seq))
                .map_or(&[][..], Vec::as_slice);
            violations.extend(check_marker(history, event_id, &outcome, seen));
        }
    }
    violations
}

fn check_marker(
    history: &History,
    event_id: u64,
    outcome: &LocalActivityOutcome,
    seen: &[&LocalAttemptSeen],
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut violation = |invariant: &'static str, message: String| {
        let mut v = Violation::new(invariant, message);
        v.run_id = Some(history.run_id().to_string());
        v.workflow_id = Some(history.workflow_id().to_string());
        v.event_id = Some(event_id);
        violations.push(v);
    };
    for late in seen.iter().filter(|a| a.task_started_event_id > event_id) {
        violation(
            "local activities: never re-run",
            format!(
                "local activity {} ({}) was recorded at event {event_id}, yet {} ran its attempt {} again in the task started at event {}",
                outcome.seq,
                outcome.activity_type,
                late.node,
                late.attempt,
                late.task_started_event_id
            ),
        );
    }
    let attempts: BTreeSet<u32> = seen.iter().map(|a| a.attempt).collect();
    if !attempts.contains(&outcome.attempt) {
        violation(
            "local activities: recorded as run",
            format!(
                "the marker of local activity {} records attempt {}, which no worker started (started: {attempts:?})",
                outcome.seq, outcome.attempt
            ),
        );
    }
    violations
}

/// The run's local activity markers: event id and outcome.
fn markers(history: &History) -> impl Iterator<Item = (u64, LocalActivityOutcome)> + '_ {
    history
        .events()
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::MarkerRecorded(m) if m.marker_name == LOCAL_ACTIVITY_MARKER_NAME => {
                let outcome = LocalActivityOutcome::from_details(&m.details).ok()?;
                Some((event.event_id, outcome))
            }
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use retrace::history::HistoryBuilder;
    use serde_json::json;

    fn history_with_marker() -> History {
        // Events 1-4: started, then a full workflow task (started at 3).
        let mut b = HistoryBuilder::for_run("wf", "run", "t", json!(null));
        b.add_full_workflow_task();
        b.add_marker(
            LOCAL_ACTIVITY_MARKER_NAME,
            json!({"seq": 1, "activity_type": "local_script", "attempt": 2, "result": 2}),
        );
        b.build()
    }

    fn seen(task_started_event_id: u64, attempt: u32) -> LocalAttemptSeen {
        LocalAttemptSeen {
            run_id: "run".into(),
            seq: 1,
            attempt,
            task_started_event_id,
            node: "worker-0".into(),
        }
    }

    #[test]
    fn attempts_before_the_marker_pass_and_one_after_it_is_a_rerun() {
        let history = history_with_marker();
        let histories = BTreeMap::from([("run".to_string(), history)]);
        let before = [seen(3, 1), seen(3, 2)];
        assert_eq!(check_local_activities(&histories, &before), []);
        let after = [seen(3, 1), seen(3, 2), seen(9, 1)];
        let found = check_local_activities(&histories, &after);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].invariant, "local activities: never re-run");
    }

    #[test]
    fn a_marker_for_an_attempt_nobody_ran_is_a_violation() {
        let history = history_with_marker();
        let histories = BTreeMap::from([("run".to_string(), history)]);
        let found = check_local_activities(&histories, &[seen(3, 1)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].invariant, "local activities: recorded as run");
    }
}
