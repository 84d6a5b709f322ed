//! Effects, ledgered by idempotency key and by attempt, and the attempt a
//! close's result came from.
//!
//! | check                  | from                            | what must hold                                   |
//! |------------------------|---------------------------------|--------------------------------------------------|
//! | at most once           | the service ledger, by key      | no effect applied twice for the same activity    |
//! | exactly once           | the service ledger, by key      | an acknowledged effect of a completed activity applied once |
//! | no later attempt acted | the service ledger, by attempt  | no attempt after the one `ActivityTaskStarted` names applied an effect |
//! | result from its attempt | the workers' own record of what each attempt sent (built in: no service needs to report) | a close's result is the one its attempt sent; the close's identity is the worker that ran that attempt; no attempt after it ran |

use std::collections::BTreeMap;

use retrace::api::ActivityTaskResult;
use retrace::engine::machine::activity::RESULT_OVER_LIMIT;
use retrace::history::{Event, EventKind, History};

use super::{ActivityView, Violation, activities};
use crate::world::cluster::{AttemptKey, AttemptSeen};
use crate::world::services::EffectLedger;

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

/// The last attempt of each activity, by idempotency key (`run/activity`):
/// the one its `ActivityTaskStarted` names (0 if it closed before any
/// attempt started). Open activities are left out.
fn last_attempts(histories: &BTreeMap<String, History>) -> BTreeMap<String, (u64, u32, &History)> {
    let mut last = BTreeMap::new();
    for (run_id, history) in histories {
        for view in activities(history) {
            if view.close.is_none() {
                continue;
            }
            let attempt = view.started.map_or(0, |(_, started)| started.attempt);
            let key = format!("{run_id}/{}", view.attrs.activity_id);
            last.insert(key, (view.scheduled.event_id, attempt, history));
        }
    }
    last
}

/// No attempt after the one a closed activity's `ActivityTaskStarted` names
/// applied an effect (the per-attempt ledger).
pub fn check_later_attempts_acted(
    ledger: &EffectLedger,
    histories: &BTreeMap<String, History>,
) -> Vec<Violation> {
    let last = last_attempts(histories);
    let mut violations = Vec::new();
    for (caller, attempt, effect) in ledger.by_attempt.keys() {
        let Some((scheduled, last_attempt, history)) = last.get(caller) else {
            continue;
        };
        if attempt > last_attempt {
            let message = format!(
                "activity {caller} closed with attempt {last_attempt}, but attempt {attempt} applied effect {effect:?}"
            );
            violations.push(
                Violation::new("result from its attempt", message).at(history, Some(*scheduled)),
            );
        }
    }
    violations
}

/// What an attempt sent, compared with the close the service wrote for it.
fn sent_matches(sent: &ActivityTaskResult, close: &EventKind) -> bool {
    match (sent, close) {
        // A payload over the limit fails the attempt, naming its size.
        (sent, EventKind::ActivityTaskFailed(f)) if f.failure.failure_type == RESULT_OVER_LIMIT => {
            sent_size_bytes(sent).is_some_and(|bytes| {
                f.failure
                    .message
                    .contains(&format!(" is {bytes} bytes, more than the limit"))
            })
        }
        (ActivityTaskResult::Completed(value), EventKind::ActivityTaskCompleted(c)) => {
            *value == c.result
        }
        (ActivityTaskResult::Failed(failure), EventKind::ActivityTaskFailed(f)) => {
            *failure == f.failure
        }
        // A cancellation nobody requested is recorded as a failure.
        (ActivityTaskResult::Canceled(_), EventKind::ActivityTaskFailed(f)) => {
            f.failure.failure_type == "Canceled"
        }
        (ActivityTaskResult::Canceled(details), EventKind::ActivityTaskCanceled(c)) => {
            *details == c.details
        }
        _ => false,
    }
}

/// The size the service measures of a result: its payload's, or the whole
/// failure's (message, causes and details).
fn sent_size_bytes(sent: &ActivityTaskResult) -> Option<u64> {
    let failure;
    let payload = match sent {
        ActivityTaskResult::Completed(value) => value,
        ActivityTaskResult::Failed(sent) => {
            failure = serde_json::to_value(sent).expect("failures encode");
            &failure
        }
        ActivityTaskResult::Canceled(details) => details.as_ref()?,
    };
    Some(retrace::history::payload_size_bytes(payload))
}

/// The result a close carries came from the attempt its `ActivityTaskStarted`
/// names, as the workers recorded each attempt (no service involved), and no
/// attempt after that one ever ran.
pub fn check_attempts(
    history: &History,
    attempts: &BTreeMap<AttemptKey, AttemptSeen>,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let run_id = history.run_id().to_string();
    for view in activities(history) {
        let Some(close) = view.close else { continue };
        let scheduled = view.scheduled.event_id;
        let ran: Vec<(u32, &AttemptSeen)> = attempts
            .range((run_id.clone(), scheduled, 0)..=(run_id.clone(), scheduled, u32::MAX))
            .map(|((_, _, attempt), seen)| (*attempt, seen))
            .collect();
        let messages = later_attempts_ran(&view, &ran)
            .into_iter()
            .chain(close_from_other_attempt(&view, close, &ran));
        for message in messages {
            let message = format!("activity {:?}: {message}", view.attrs.activity_id);
            violations.push(
                Violation::new("result from its attempt", message)
                    .at(history, Some(close.event_id)),
            );
        }
        if let Some((started, message)) = started_at_other_time(&view, &ran) {
            let message = format!("activity {:?}: {message}", view.attrs.activity_id);
            violations.push(
                Violation::new("started when its attempt started", message)
                    .at(history, Some(started)),
            );
        }
    }
    violations
}

/// The `ActivityTaskStarted` event is stamped with the time the service
/// started the attempt it names (as the attempt's task told its worker),
/// not the time the attempt ended; if not, its event id and why.
fn started_at_other_time(
    view: &ActivityView<'_>,
    ran: &[(u32, &AttemptSeen)],
) -> Option<(u64, String)> {
    let (event, started) = view.started?;
    let (_, seen) = ran
        .iter()
        .find(|(attempt, _)| *attempt == started.attempt)?;
    (event.event_time != seen.started_time).then(|| {
        let message = format!(
            "its ActivityTaskStarted (attempt {}) is stamped {}, but the service started that attempt at {}",
            started.attempt, event.event_time, seen.started_time
        );
        (event.event_id, message)
    })
}

/// Attempts after the last one the history names that ran all the same.
fn later_attempts_ran(view: &ActivityView<'_>, ran: &[(u32, &AttemptSeen)]) -> Vec<String> {
    let last = view.started.map_or(0, |(_, s)| s.attempt);
    ran.iter()
        .filter(|(attempt, _)| *attempt > last)
        .map(|(attempt, seen)| {
            format!(
                "closed with attempt {last} (its ActivityTaskStarted), but attempt {attempt} ran on {}",
                seen.node
            )
        })
        .collect()
}

/// Why the close's result is not the one the attempt it names sent, if it is not.
fn close_from_other_attempt(
    view: &ActivityView<'_>,
    close: &Event,
    ran: &[(u32, &AttemptSeen)],
) -> Option<String> {
    let (started_event, started) = view.started?;
    let identity = match &close.kind {
        EventKind::ActivityTaskCompleted(c) => &c.identity,
        EventKind::ActivityTaskFailed(f) => &f.identity,
        EventKind::ActivityTaskCanceled(c) if !c.identity.is_empty() => &c.identity,
        _ => return None,
    };
    let last = started.attempt;
    if *identity != started.identity {
        return Some(format!(
            "its close came from {identity}, but its ActivityTaskStarted says attempt {last} ran on {}",
            started.identity
        ));
    }
    let (_, seen) = ran.iter().find(|(attempt, _)| *attempt == last)?;
    let sent = |s: &AttemptSeen| {
        s.result
            .as_ref()
            .is_some_and(|r| sent_matches(r, &close.kind))
    };
    if sent(seen) {
        return None;
    }
    let senders: Vec<u32> = ran
        .iter()
        .filter(|(_, s)| sent(s))
        .map(|(attempt, _)| *attempt)
        .collect();
    Some(format!(
        "event {} records attempt {last}, which sent {:?}; the close's {} was sent by attempts {senders:?}",
        started_event.event_id,
        seen.result,
        close.kind.name()
    ))
}

#[cfg(test)]
mod tests {
    use retrace::history::{ActivityTaskCompleted, ActivityTaskStarted, HistoryBuilder};
    use retrace::types::Timestamp;
    use serde_json::{Value, json};

    use super::*;

    /// An activity closed with `result`, its `ActivityTaskStarted` naming
    /// attempt 2 on worker-1.
    fn completed_by_attempt_2(result: Value) -> History {
        let mut builder = HistoryBuilder::for_run("wf", "run-1", "pay", json!(null));
        builder.add_full_workflow_task();
        let scheduled = builder.add_activity_scheduled("1", "charge", json!(null));
        builder.advance_ms(3_000);
        let started = builder.add(EventKind::ActivityTaskStarted(ActivityTaskStarted {
            scheduled_event_id: scheduled,
            identity: "worker-1".into(),
            attempt: 2,
            last_failure: None,
        }));
        builder.add(EventKind::ActivityTaskCompleted(ActivityTaskCompleted {
            scheduled_event_id: scheduled,
            started_event_id: started,
            result,
            identity: "worker-1".into(),
        }));
        builder.build()
    }

    /// When `completed_by_attempt_2` stamps its `ActivityTaskStarted`:
    /// 2024-01-01T00:00:03Z.
    const STARTED: Timestamp = Timestamp(1_704_067_203_000);

    fn sent(node: &str, result: Option<Value>) -> AttemptSeen {
        AttemptSeen {
            node: node.into(),
            started_time: STARTED,
            heartbeats: 0,
            result: result.map(ActivityTaskResult::Completed),
        }
    }

    fn attempts(list: Vec<(u32, AttemptSeen)>) -> BTreeMap<AttemptKey, AttemptSeen> {
        list.into_iter()
            .map(|(attempt, seen)| (("run-1".to_string(), 5, attempt), seen))
            .collect()
    }

    #[test]
    fn a_completion_carrying_the_result_of_the_attempt_it_names_passes() {
        let history = completed_by_attempt_2(json!("second"));
        let ran = attempts(vec![
            (1, sent("worker-0", Some(json!("first")))),
            (2, sent("worker-1", Some(json!("second")))),
        ]);
        assert!(check_attempts(&history, &ran).is_empty());
    }

    #[test]
    fn an_activity_started_stamped_other_than_its_attempts_start_is_caught() {
        let history = completed_by_attempt_2(json!("second"));
        let mut seen = sent("worker-1", Some(json!("second")));
        seen.started_time = Timestamp(STARTED.0 - 1_000);
        let violations = check_attempts(&history, &attempts(vec![(2, seen)]));
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].invariant, "started when its attempt started");
        assert_eq!(violations[0].event_id, Some(6));
    }

    #[test]
    fn a_late_result_of_a_timed_out_attempt_accepted_for_its_retry_is_caught() {
        // Attempt 1 timed out but its result arrived and was taken while
        // attempt 2 still ran: the history names attempt 2 with attempt 1's result.
        let history = completed_by_attempt_2(json!("first"));
        let ran = attempts(vec![
            (1, sent("worker-0", Some(json!("first")))),
            (2, sent("worker-1", None)),
        ]);
        let violations = check_attempts(&history, &ran);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].invariant, "result from its attempt");
        assert!(
            violations[0].message.contains("attempts [1]"),
            "{}",
            violations[0]
        );
    }

    #[test]
    fn an_attempt_after_the_one_the_close_names_is_caught_even_if_its_service_reports_nothing() {
        let history = completed_by_attempt_2(json!("second"));
        let ran = attempts(vec![
            (2, sent("worker-1", Some(json!("second")))),
            (3, sent("worker-0", None)),
        ]);
        let violations = check_attempts(&history, &ran);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].message.contains("attempt 3 ran"),
            "{}",
            violations[0]
        );
    }

    #[test]
    fn an_effect_ledgered_by_a_later_attempt_is_caught() {
        let history = completed_by_attempt_2(json!("second"));
        let histories = BTreeMap::from([("run-1".to_string(), history)]);
        let mut ledger = EffectLedger::default();
        ledger
            .by_attempt
            .insert(("run-1/1".into(), 2, "debit:alice".into()), 1);
        assert!(check_later_attempts_acted(&ledger, &histories).is_empty());
        ledger
            .by_attempt
            .insert(("run-1/1".into(), 3, "debit:alice".into()), 1);
        let violations = check_later_attempts_acted(&ledger, &histories);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].message.contains("attempt 3 applied"));
    }
}
