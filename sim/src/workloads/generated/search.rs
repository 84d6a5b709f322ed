//! The generated workload's search attributes: what a completed run's
//! program says they end as, against its history.
//!
//! A run starts with its start's attributes (`Tier` for a root run; a
//! continued run those its predecessor ended with); each `Upsert` step sets
//! one, last write wins; each `Patched` step adds its patch to
//! `TemporalChangeVersion`. Every upsert is recorded exactly once: the
//! history holds one `UpsertWorkflowSearchAttributes` per `Upsert` step and
//! one per patch. (That storage holds what the history says, for every run
//! of every workload, is `checks/visibility.rs`.)

use retrace::history::{EventKind, History};
use retrace::visibility::{CHANGE_VERSION, SearchValue};

use super::program::{RunSpec, Step, upsert_value};

pub use crate::checks::visibility::recorded;

/// Problems of a completed run whose every step ran: its recorded
/// attributes are the program's, each upsert recorded once.
pub fn check_completed(spec: &RunSpec, history: &History, problems: &mut Vec<String>) {
    let mut expected = match history.events().first().map(|e| &e.kind) {
        Some(EventKind::WorkflowExecutionStarted(a)) => a.search_attributes.clone(),
        _ => return,
    };
    let mut patches: Vec<String> = Vec::new();
    let mut upserts = 0;
    for step in &spec.steps {
        match step {
            Step::Upsert { name, value } => {
                expected.insert(name.clone(), upsert_value(name, *value));
                upserts += 1;
            }
            Step::Patched { patch_id } if !patches.contains(patch_id) => {
                patches.push(patch_id.clone());
                let versions = SearchValue::KeywordList(patches.clone());
                expected.insert(CHANGE_VERSION.to_string(), versions);
                upserts += 1;
            }
            _ => {}
        }
    }
    let recorded_upserts = history
        .events()
        .iter()
        .filter(|e| matches!(e.kind, EventKind::UpsertWorkflowSearchAttributes(_)))
        .count();
    if recorded_upserts != upserts {
        problems.push(format!(
            "search attributes: the program upserts {upserts} times, the history records {recorded_upserts} upserts"
        ));
    }
    let recorded = recorded(history);
    if recorded != expected {
        problems.push(format!(
            "search attributes: the program ends with {expected:?}, the history with {recorded:?}"
        ));
    }
}
