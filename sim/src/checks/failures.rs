//! Failures say what failed, as Temporal records it, and agree with the
//! history they are in:
//!
//! - an `ActivityTaskTimedOut`'s failure is a timeout of its own type whose
//!   message names that limit;
//! - a run failed by an activity (`ActivityFailure`) names an activity the
//!   history scheduled and closed unsuccessfully, with that close's started
//!   event and retry state, and is caused by that close's failure (or, for a
//!   timeout, by the timeout);
//! - a run failed by a child (`ChildWorkflowFailure`) names a child the
//!   history initiated and recorded as failed, with that close's started
//!   event and run, and is caused by the child's failure.

use retrace::history::{Event, EventKind, History};
use retrace::types::{
    ActivityFailureInfo, ChildWorkflowFailureInfo, Failure, FailureInfo, TimeoutType,
};

use super::Violation;

const INVARIANT: &str = "failures name their cause";

/// Every timed-out activity's failure and the run's failure, if an activity's.
pub fn check_failures(history: &History) -> Vec<Violation> {
    let mut violations = Vec::new();
    for event in history.events() {
        let message = match &event.kind {
            EventKind::ActivityTaskTimedOut(a) => a
                .failure
                .as_ref()
                .and_then(|failure| timeout_mismatch(a.timeout_type, failure)),
            EventKind::WorkflowExecutionFailed(a) => match a.failure.info.as_deref() {
                Some(FailureInfo::Activity(info)) => activity_mismatch(history, info, &a.failure),
                Some(FailureInfo::ChildWorkflow(info)) => child_mismatch(history, info, &a.failure),
                _ => None,
            },
            _ => None,
        };
        if let Some(message) = message {
            violations.push(Violation::new(INVARIANT, message).at(history, Some(event.event_id)));
        }
    }
    violations
}

/// Why a timeout's failure does not say which timeout it was, if it does not.
fn timeout_mismatch(timeout_type: TimeoutType, failure: &Failure) -> Option<String> {
    let info = FailureInfo::Timeout { timeout_type };
    if failure.info.as_deref() != Some(&info) {
        return Some(format!(
            "a {timeout_type} timeout's failure says {:?}",
            failure.info
        ));
    }
    let named = failure.message.contains(&timeout_type.to_string());
    (!named).then(|| {
        format!(
            "a {timeout_type} timeout's message does not name it: {:?}",
            failure.message
        )
    })
}

/// Why the run's `ActivityFailure` does not match the activity it names.
fn activity_mismatch(
    history: &History,
    info: &ActivityFailureInfo,
    failure: &Failure,
) -> Option<String> {
    let event = |id: u64| history.events().get((id as usize).checked_sub(1)?);
    let Some(EventKind::ActivityTaskScheduled(scheduled)) =
        event(info.scheduled_event_id).map(|e| &e.kind)
    else {
        return Some(format!(
            "the run's failure names activity event {}, which is not an ActivityTaskScheduled",
            info.scheduled_event_id
        ));
    };
    if (
        scheduled.activity_id.as_str(),
        scheduled.activity_type.as_str(),
    ) != (info.activity_id.as_str(), info.activity_type.as_str())
    {
        return Some(format!(
            "the run's failure names activity {:?} ({}), but event {} scheduled {:?} ({})",
            info.activity_id,
            info.activity_type,
            info.scheduled_event_id,
            scheduled.activity_id,
            scheduled.activity_type
        ));
    }
    let close = history
        .events()
        .iter()
        .find(|e| closes(e, info.scheduled_event_id));
    let Some(close) = close else {
        return Some(format!(
            "the run's failure names activity {:?}, which never failed or timed out",
            info.activity_id
        ));
    };
    close_mismatch(close, info, failure)
}

/// Why the run's `ChildWorkflowFailure` does not match the child it names.
fn child_mismatch(
    history: &History,
    info: &ChildWorkflowFailureInfo,
    failure: &Failure,
) -> Option<String> {
    let initiated = history
        .events()
        .get((info.initiated_event_id as usize).checked_sub(1)?)
        .map(|e| &e.kind);
    let Some(EventKind::StartChildWorkflowExecutionInitiated(initiated)) = initiated else {
        return Some(format!(
            "the run's failure names child event {}, which is not a StartChildWorkflowExecutionInitiated",
            info.initiated_event_id
        ));
    };
    let same_child = (
        initiated.workflow_id.as_str(),
        initiated.workflow_type.as_str(),
    ) == (info.workflow_id.as_str(), info.workflow_type.as_str());
    let failed = history.events().iter().find_map(|e| match &e.kind {
        EventKind::ChildWorkflowExecutionFailed(a)
            if a.initiated_event_id == info.initiated_event_id =>
        {
            Some(a)
        }
        _ => None,
    });
    let Some(failed) = failed.filter(|_| same_child) else {
        return Some(format!(
            "the run's failure names child {:?} ({}) initiated at event {}, which the history does not record as that child failing",
            info.workflow_id, info.workflow_type, info.initiated_event_id
        ));
    };
    let recorded = (failed.started_event_id, failed.run_id.as_str());
    let cause_matches = failure
        .cause
        .as_deref()
        .is_some_and(|c| c.message == failed.failure.message);
    if recorded != (info.started_event_id, info.run_id.as_str()) || !cause_matches {
        return Some(format!(
            "the run's failure says child run {} started at event {}, caused by {:?}; the history says {} at {}, caused by {:?}",
            info.run_id,
            info.started_event_id,
            failure.cause,
            failed.run_id,
            failed.started_event_id,
            failed.failure
        ));
    }
    None
}

fn closes(event: &Event, scheduled_event_id: u64) -> bool {
    match &event.kind {
        EventKind::ActivityTaskFailed(a) => a.scheduled_event_id == scheduled_event_id,
        EventKind::ActivityTaskTimedOut(a) => a.scheduled_event_id == scheduled_event_id,
        _ => false,
    }
}

/// Why the run's failure disagrees with the activity's close event.
fn close_mismatch(close: &Event, info: &ActivityFailureInfo, failure: &Failure) -> Option<String> {
    let cause = failure.cause.as_deref();
    let (started, retry_state, cause_matches) = match &close.kind {
        EventKind::ActivityTaskFailed(a) => (
            a.started_event_id,
            a.retry_state,
            cause.is_some_and(|c| c.message == a.failure.message),
        ),
        EventKind::ActivityTaskTimedOut(a) => (
            a.started_event_id.unwrap_or_default(),
            a.retry_state,
            cause.is_some_and(|c| {
                c.info.as_deref()
                    == Some(&FailureInfo::Timeout {
                        timeout_type: a.timeout_type,
                    })
            }),
        ),
        _ => unreachable!("closes() matched"),
    };
    if (started, retry_state) != (info.started_event_id, info.retry_state) {
        return Some(format!(
            "the run's failure says started event {} and {:?}, but its close (event {}) says {started} and {retry_state:?}",
            info.started_event_id, info.retry_state, close.event_id
        ));
    }
    (!cause_matches).then(|| {
        format!(
            "the run's failure is not caused by what event {} recorded: its cause is {cause:?}",
            close.event_id
        )
    })
}

#[cfg(test)]
mod tests {
    use retrace::history::HistoryBuilder;
    use retrace::types::RetryState;
    use serde_json::json;

    use super::*;

    fn failed_by_activity(info: ActivityFailureInfo) -> History {
        let mut b = HistoryBuilder::new("w", json!(null));
        b.add_full_workflow_task();
        let scheduled = b.add_activity_scheduled("1", "charge", json!(null));
        let started = b.add_activity_started(scheduled, 1, None);
        let declined = Failure::new("Declined", "card declined");
        b.add_activity_failed(
            scheduled,
            started,
            declined.clone(),
            RetryState::NonRetryableFailure,
        );
        b.add_full_workflow_task();
        let failure = Failure {
            info: Some(Box::new(FailureInfo::Activity(info))),
            ..Failure::new("ActivityFailure", "activity failed: card declined")
        };
        b.add_workflow_execution_failed(failure.with_cause(Some(declined)));
        b.build()
    }

    fn info(scheduled_event_id: u64, started_event_id: u64) -> ActivityFailureInfo {
        ActivityFailureInfo {
            scheduled_event_id,
            started_event_id,
            identity: "worker".to_string(),
            activity_type: "charge".to_string(),
            activity_id: "1".to_string(),
            retry_state: RetryState::NonRetryableFailure,
        }
    }

    #[test]
    fn a_run_failure_that_names_its_activity_rightly_passes() {
        assert_eq!(check_failures(&failed_by_activity(info(5, 6))), []);
    }

    #[test]
    fn a_run_failure_naming_the_wrong_started_event_is_caught() {
        let violations = check_failures(&failed_by_activity(info(5, 0)));
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].message.contains("started event 0"),
            "{violations:?}"
        );
    }

    #[test]
    fn a_run_failure_naming_an_event_that_scheduled_nothing_is_caught() {
        let violations = check_failures(&failed_by_activity(info(4, 6)));
        assert!(
            violations[0]
                .message
                .contains("not an ActivityTaskScheduled"),
            "{violations:?}"
        );
    }

    #[test]
    fn a_timeout_whose_failure_names_another_limit_is_caught() {
        let failure = Failure::timed_out(TimeoutType::Heartbeat, "heartbeat timeout");
        let found = timeout_mismatch(TimeoutType::StartToClose, &failure);
        assert!(found.is_some_and(|m| m.contains("start-to-close")));
        let unnamed = Failure::timed_out(TimeoutType::StartToClose, "timed out");
        assert!(timeout_mismatch(TimeoutType::StartToClose, &unnamed).is_some());
    }
}
