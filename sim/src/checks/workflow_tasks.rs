//! Workflow task attempts follow from how the task before ended.
//!
//! | the task before              | the next `WorkflowTaskScheduled`'s attempt |
//! |------------------------------|--------------------------------------------|
//! | none (the run's first task)  | 1                                          |
//! | completed                    | 1                                          |
//! | timed out (start-to-close)   | its attempt + 1                            |
//! | failed by its code (`WorkflowWorkerUnhandledFailure`, `NonDeterministicError`, `BadCommand`) | its attempt + 1 |
//! | failed otherwise (given back, unhandled events, force-closed) | 1             |
//!
//! The attempt is what a worker shows its code and what the backoff after a
//! code failure doubles with, so a count that does not advance (or resets)
//! hides a stuck task from both.

use std::collections::BTreeMap;

use retrace::history::{EventKind, History, WorkflowTaskFailedCause};

use super::Violation;

fn code_failed(cause: WorkflowTaskFailedCause) -> bool {
    matches!(
        cause,
        WorkflowTaskFailedCause::WorkflowWorkerUnhandledFailure
            | WorkflowTaskFailedCause::NonDeterministicError
            | WorkflowTaskFailedCause::BadCommand
    )
}

/// Every `WorkflowTaskScheduled` carries the attempt the task before implies.
pub fn check_workflow_task_attempts(history: &History) -> Option<Violation> {
    let mut attempts: BTreeMap<u64, u32> = BTreeMap::new();
    let mut expected: (u32, &str) = (1, "the run's first task");
    for event in history.events() {
        let attempt_of = |scheduled: u64| attempts.get(&scheduled).copied().unwrap_or(0);
        match &event.kind {
            EventKind::WorkflowTaskScheduled(s) => {
                if s.attempt != expected.0 {
                    let message = format!(
                        "workflow task scheduled with attempt {}; after {} it should be {}",
                        s.attempt, expected.1, expected.0
                    );
                    let violation = Violation::new("workflow task attempts", message);
                    return Some(violation.at(history, Some(event.event_id)));
                }
                attempts.insert(event.event_id, s.attempt);
            }
            EventKind::WorkflowTaskCompleted(_) => expected = (1, "a completed task"),
            EventKind::WorkflowTaskTimedOut(t) => {
                expected = (attempt_of(t.scheduled_event_id) + 1, "a timed-out task");
            }
            EventKind::WorkflowTaskFailed(f) if code_failed(f.cause) => {
                expected = (
                    attempt_of(f.scheduled_event_id) + 1,
                    "a task its code failed",
                );
            }
            EventKind::WorkflowTaskFailed(_) => expected = (1, "a task given back or refused"),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use retrace::history::{HistoryBuilder, WorkflowTaskScheduled};
    use serde_json::json;

    use super::*;

    /// A run whose first task times out, then the next is scheduled with `attempt`.
    fn timed_out_then_scheduled(attempt: u32) -> History {
        let mut builder = HistoryBuilder::new("t", json!(null));
        builder.add_workflow_task_scheduled();
        builder.add_workflow_task_started();
        builder.advance_ms(10_000).add_workflow_task_timed_out();
        builder.add(EventKind::WorkflowTaskScheduled(WorkflowTaskScheduled {
            task_queue: "default".into(),
            start_to_close_timeout_ms: 10_000,
            attempt,
        }));
        builder.build()
    }

    #[test]
    fn the_task_after_a_timeout_is_the_next_attempt() {
        assert_eq!(
            check_workflow_task_attempts(&timed_out_then_scheduled(2)),
            None
        );
    }

    #[test]
    fn a_timeout_that_does_not_advance_the_attempt_is_caught() {
        let violation = check_workflow_task_attempts(&timed_out_then_scheduled(1)).expect("caught");
        assert_eq!(violation.invariant, "workflow task attempts");
        assert!(
            violation.message.contains("a timed-out task"),
            "{violation}"
        );
    }
}
