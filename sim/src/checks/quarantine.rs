//! A run whose stored row cannot be read is set aside, and only such a run:
//! after a `TornRow` fault the service comes back up, quarantines exactly
//! the rows the world tore, never writes to them, and serves every other
//! run (the liveness and history checks see to the others).

use std::collections::BTreeMap;

use futures::FutureExt;
use retrace::env::{ListQuery, MemoryStorage, RunRecord, Storage};

use super::Violation;
use crate::nodes::is_torn_run;

/// `quarantined` is the service's set-aside runs (`None`: no incarnation of
/// the service is up); `storage` holds the torn rows.
pub fn check_quarantine(
    quarantined: Option<&BTreeMap<String, String>>,
    storage: &MemoryStorage,
) -> Vec<Violation> {
    let torn = torn_rows(storage);
    let Some(quarantined) = quarantined else {
        let message = "the service is not up at the end of the seed";
        return vec![Violation::new("quarantine", message)];
    };
    let mut violations = Vec::new();
    for record in &torn {
        if !quarantined.contains_key(&record.run_id) {
            let message =
                "a torn row was not set aside: the service read it as a run, or never read it";
            violations.push(on_run(message.to_string(), record));
        }
        if record.version != 1 {
            let message = format!(
                "the service wrote to a torn row (version {}, torn at 1)",
                record.version
            );
            violations.push(on_run(message, record));
        }
    }
    for (run_id, reason) in quarantined {
        if !is_torn_run(run_id) {
            let mut violation = Violation::new(
                "quarantine",
                format!("a healthy run was set aside as damaged: {reason}"),
            );
            violation.run_id = Some(run_id.clone());
            violations.push(violation);
        }
    }
    violations
}

fn on_run(message: String, record: &RunRecord) -> Violation {
    let mut violation = Violation::new("quarantine", message);
    violation.run_id = Some(record.run_id.clone());
    violation.workflow_id = Some(record.workflow_id.clone());
    violation
}

fn torn_rows(storage: &MemoryStorage) -> Vec<RunRecord> {
    let query = ListQuery {
        limit: usize::MAX,
        ..ListQuery::default()
    };
    storage
        .list_runs(query)
        .now_or_never()
        .expect("memory storage answers at once")
        .expect("memory storage reads never fail")
        .into_iter()
        .filter(|record| is_torn_run(&record.run_id))
        .collect()
}

#[cfg(test)]
mod tests {
    use retrace::env::{RunStatus, WriteBatch};
    use retrace::types::Timestamp;

    use super::*;

    fn store(storage: &MemoryStorage, run_id: &str) {
        let run = RunRecord {
            run_id: run_id.to_string(),
            workflow_id: run_id.to_string(),
            workflow_type: "t".to_string(),
            task_queue: "q".to_string(),
            status: RunStatus::Running,
            start_time: Timestamp(0),
            close_time: None,
            next_event_id: 1,
            version: 1,
            state: b"{".to_vec(),
            search_attributes: Default::default(),
        };
        let batch = WriteBatch {
            fence: None,
            run,
            expected_version: None,
            events: Vec::new(),
            claim: None,
            buffered: Default::default(),
            next_run: None,
        };
        storage.apply(batch).expect("fresh run");
    }

    fn set_aside(ids: &[&str]) -> BTreeMap<String, String> {
        ids.iter()
            .map(|id| (id.to_string(), "cannot decode".to_string()))
            .collect()
    }

    #[test]
    fn a_torn_row_the_service_set_aside_passes() {
        let storage = MemoryStorage::new();
        store(&storage, "torn-3");
        store(&storage, "healthy");
        assert!(check_quarantine(Some(&set_aside(&["torn-3"])), &storage).is_empty());
    }

    #[test]
    fn a_torn_row_the_service_did_not_set_aside_is_a_violation() {
        let storage = MemoryStorage::new();
        store(&storage, "torn-3");
        let violations = check_quarantine(Some(&set_aside(&[])), &storage);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].message.contains("not set aside"));
    }

    #[test]
    fn a_healthy_run_set_aside_is_a_violation() {
        let storage = MemoryStorage::new();
        store(&storage, "healthy");
        let violations = check_quarantine(Some(&set_aside(&["healthy"])), &storage);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].message.contains("healthy run"));
    }

    #[test]
    fn no_service_up_at_the_end_is_a_violation() {
        let storage = MemoryStorage::new();
        assert_eq!(check_quarantine(None, &storage).len(), 1);
    }
}
