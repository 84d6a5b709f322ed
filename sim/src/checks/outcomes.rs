//! A run that fails, times out or is terminated is a violation unless the
//! scenario declares that outcome expected (`Simulation::expect_outcomes`).
//! Without a declaration, completed and canceled runs are the expected ones.

use std::sync::Arc;

use retrace::api::RunOutcome;
use retrace::env::RunRecord;

use super::Violation;

/// Which outcomes a scenario expects: `(workflow id, outcome) -> expected`.
pub type ExpectedOutcomes = Arc<dyn Fn(&str, &RunOutcome) -> bool + Send + Sync>;

/// The outcomes expected when a scenario declares none: completed or
/// canceled (or continued as new: the chain's last run is checked too).
pub fn completed_or_canceled(_workflow_id: &str, outcome: &RunOutcome) -> bool {
    matches!(
        outcome,
        RunOutcome::Completed { .. }
            | RunOutcome::Canceled { .. }
            | RunOutcome::ContinuedAsNew { .. }
    )
}

/// The run's outcome is one the scenario expects.
pub fn check_outcome(
    record: &RunRecord,
    outcome: Option<&RunOutcome>,
    expected: Option<&ExpectedOutcomes>,
) -> Option<Violation> {
    let outcome = outcome?;
    let is_expected = match expected {
        Some(expected) => expected(&record.workflow_id, outcome),
        None => completed_or_canceled(&record.workflow_id, outcome),
    };
    if is_expected {
        return None;
    }
    let message = format!(
        "workflow {} closed {outcome:?}, which the scenario does not expect (declare it with Simulation::expect_outcomes)",
        record.workflow_id
    );
    let close = record.next_event_id.checked_sub(1);
    Some(Violation::new("outcomes", message).of_record(record, close))
}
