//! Workflow retries and start delays: the model's first look at a workflow
//! id's runs, before [`super::chain`] checks the continue-as-new chain that
//! the last attempt began.
//!
//! | promise                                                              | checked by           |
//! |----------------------------------------------------------------------|----------------------|
//! | the id's first runs are its failed attempts, each retried by the next: exactly as many as the program fails (or the policy allows, when it gives up), none without a policy | [`split`] |
//! | attempt k + 1 starts in the write that failed attempt k, names it, its failure and its number, has the same input and policy, and waits the policy's backoff | [`check_retry_link`] |
//! | an attempt the policy does not retry fails with `MaximumAttemptsReached` and names no next run | [`check_gave_up`] |
//! | a run that gives up under a policy that lists its failure is not retried (`NonRetryableFailure`); without a policy, a failure has no retry state | [`check_last`] |
//! | a run's first workflow task is scheduled no earlier than its start delay or backoff ends (in calm seeds, not much later) | [`check_first_tasks`] |

use std::collections::BTreeMap;

use retrace::history::{ContinueAsNewInitiator, EventKind, History, WorkflowExecutionFailed};
use retrace::types::RetryState;

use super::model::CALM_TOLERANCE_MS;
use super::program::{FLAKY_ATTEMPT_FAILURE, GIVES_UP_FAILURE, RunSpec, WorkflowRetry};

/// A workflow id's runs: its failed attempts, then the rest (the chain the
/// last attempt began).
pub struct Attempts<'h> {
    pub failed: Vec<&'h History>,
    pub rest: Vec<&'h History>,
}

/// Splits the runs of `spec`'s workflow id into failed attempts and the
/// rest, and checks the attempts. `None` when no chain is left to check
/// (the policy gave up: the last attempt is checked here).
pub fn split<'h>(
    spec: &RunSpec,
    histories: &[&'h History],
    problems: &mut Vec<String>,
) -> Option<Attempts<'h>> {
    let by_run: BTreeMap<&str, &History> = histories.iter().map(|h| (h.run_id(), *h)).collect();
    let mut firsts = histories.iter().filter(|h| {
        h.started()
            .is_some_and(|s| s.continued_execution_run_id.is_none())
    });
    let (Some(first), None) = (firsts.next(), firsts.next()) else {
        // No single first run: the chain's check says what is wrong.
        let rest = histories.to_vec();
        return Some(Attempts {
            failed: Vec::new(),
            rest,
        });
    };
    let mut failed = Vec::new();
    let mut current = *first;
    while let Some(failure) = retried(current) {
        let next_run_id = failure.new_execution_run_id.as_deref().expect("retried");
        let Some(next) = by_run.get(next_run_id) else {
            problems.push(format!(
                "attempt {} names a next run {next_run_id} that is not stored",
                failed.len() + 1
            ));
            return None;
        };
        check_retry_link(
            spec,
            failed.len() as u32 + 1,
            current,
            failure,
            next,
            problems,
        );
        failed.push(current);
        current = next;
    }
    check_count(spec.retry, failed.len(), problems);
    if spec.retry.is_some_and(|retry| retry.exhausted()) {
        check_gave_up(current, problems);
        return None;
    }
    let rest = histories
        .iter()
        .copied()
        .filter(|h| !failed.iter().any(|f| f.run_id() == h.run_id()))
        .collect();
    Some(Attempts { failed, rest })
}

/// The close of a run that was retried, if it was.
fn retried(history: &History) -> Option<&WorkflowExecutionFailed> {
    match &history.close_event()?.kind {
        EventKind::WorkflowExecutionFailed(f) if f.new_execution_run_id.is_some() => Some(f),
        _ => None,
    }
}

/// Exactly the attempts the program fails are retried: faults never add a
/// failure or lose a retry.
fn check_count(retry: Option<WorkflowRetry>, failed: usize, problems: &mut Vec<String>) {
    let expected = match retry {
        None => 0,
        Some(retry) if retry.exhausted() => retry.maximum_attempts - 1,
        Some(retry) => retry.failing_attempts,
    };
    if failed != expected as usize {
        problems.push(format!(
            "{failed} failed attempts were retried, expected {expected} (policy {retry:?})"
        ));
    }
}

/// Attempt `attempt` failed on purpose and `next` retries it.
fn check_retry_link(
    spec: &RunSpec,
    attempt: u32,
    history: &History,
    failure: &WorkflowExecutionFailed,
    next: &History,
    problems: &mut Vec<String>,
) {
    let Some(retry) = spec.retry else {
        problems.push(format!(
            "attempt {attempt} was retried without a retry policy"
        ));
        return;
    };
    let (Some(started), Some(next_started)) = (history.started(), next.started()) else {
        problems.push(format!("attempt {attempt} or its retry has no start"));
        return;
    };
    let policy = retry.policy().normalized().expect("a valid policy");
    let backoff_ms = policy.backoff_ms(attempt);
    let close = history.close_event().expect("a retried attempt closed");
    let checks = [
        (started.attempt == attempt, "the attempt's number"),
        (
            failure.failure.failure_type == FLAKY_ATTEMPT_FAILURE,
            "the failure's type",
        ),
        (
            failure.retry_state == Some(RetryState::InProgress),
            "the retry state",
        ),
        (
            next_started.attempt == attempt + 1,
            "the next attempt's number",
        ),
        (
            next_started.initiator == Some(ContinueAsNewInitiator::Retry),
            "the next run's initiator",
        ),
        (
            next_started.continued_execution_run_id.as_deref() == Some(history.run_id()),
            "the run the next one continues",
        ),
        (
            next_started.continued_failure.as_deref() == Some(&failure.failure),
            "the failure the next run carries",
        ),
        (next_started.input == started.input, "the next run's input"),
        (
            next_started.retry_policy.as_deref() == Some(&policy),
            "the next run's retry policy",
        ),
        (
            next_started.first_workflow_task_backoff_ms == Some(backoff_ms),
            "the backoff",
        ),
        (
            next.events()[0].event_time == close.event_time,
            "one write for the close and the next start",
        ),
    ];
    for (holds, what) in checks {
        if !holds {
            problems.push(format!(
                "attempt {attempt} (run {}) and its retry (run {}) disagree on {what}",
                history.run_id(),
                next.run_id()
            ));
        }
    }
}

/// The last attempt of a policy that gives up.
fn check_gave_up(last: &History, problems: &mut Vec<String>) {
    match last.close_event().map(|e| &e.kind) {
        Some(EventKind::WorkflowExecutionFailed(f))
            if f.retry_state == Some(RetryState::MaximumAttemptsReached)
                && f.new_execution_run_id.is_none()
                && f.failure.failure_type == FLAKY_ATTEMPT_FAILURE => {}
        other => problems.push(format!(
            "the last attempt should fail with MaximumAttemptsReached, it closed with {:?}",
            other.map(|kind| kind.name())
        )),
    }
}

/// Every run's first workflow task waits for its start delay or backoff:
/// the first run's is the program's start delay, a retry's the policy's
/// backoff, a continue-as-new's none.
pub fn check_first_tasks(
    spec: &RunSpec,
    histories: &[&History],
    calm: bool,
    problems: &mut Vec<String>,
) {
    for history in histories {
        let Some(started) = history.started() else {
            continue;
        };
        let expected_ms = match started.initiator {
            None if started.continued_execution_run_id.is_none() => spec.start_delay_ms,
            Some(ContinueAsNewInitiator::Retry) => started.first_workflow_task_backoff_ms,
            _ => None,
        };
        if started.first_workflow_task_backoff_ms != expected_ms {
            problems.push(format!(
                "run {} waits {:?} ms for its first workflow task, expected {expected_ms:?}",
                history.run_id(),
                started.first_workflow_task_backoff_ms
            ));
        }
        let start_ms = history.events()[0].event_time;
        let scheduled = history
            .events()
            .iter()
            .find(|e| matches!(e.kind, EventKind::WorkflowTaskScheduled(_)));
        let (Some(scheduled), Some(wait_ms)) = (scheduled, expected_ms) else {
            continue;
        };
        let waited_ms = scheduled.event_time.millis_since(start_ms);
        let late = calm && waited_ms > wait_ms + CALM_TOLERANCE_MS;
        if waited_ms < wait_ms || late {
            problems.push(format!(
                "run {}'s first workflow task was scheduled {waited_ms} ms after its start, \
                 its delay is {wait_ms} ms",
                history.run_id()
            ));
        }
    }
}

/// The chain's last run, if it failed: not retried, and with the retry
/// state its policy (or the lack of one) gives.
pub fn check_last(spec: &RunSpec, last: &History, problems: &mut Vec<String>) {
    let Some(EventKind::WorkflowExecutionFailed(f)) = last.close_event().map(|e| &e.kind) else {
        return;
    };
    let expected = match spec.retry {
        None => None,
        Some(_) if f.failure.failure_type == GIVES_UP_FAILURE => {
            Some(RetryState::NonRetryableFailure)
        }
        // Only a plain give-up is drawn with a policy: nothing else fails.
        Some(_) => return,
    };
    if f.retry_state != expected || f.new_execution_run_id.is_some() {
        problems.push(format!(
            "run {} failed with {:?} and retry state {:?}, next run {:?}: expected {expected:?} and none",
            last.run_id(),
            f.failure.failure_type,
            f.retry_state,
            f.new_execution_run_id
        ));
    }
}
