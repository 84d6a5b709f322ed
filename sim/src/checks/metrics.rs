//! The service's metrics against what happened: `/metrics` must tell an
//! operator the truth through crashes and ambiguous writes.
//!
//! | invariant | what must hold |
//! |---|---|
//! | `metrics: runs` | the runs every incarnation counted started and closed (by status), plus those of writes that committed but answered a timeout, are exactly the runs storage holds, by status: none missed, none counted twice |
//! | `metrics: dispatches` | every activity attempt a worker ran was counted as dispatched; each dispatch observed its schedule-to-start latency |
//! | `metrics: writes` | every write answered was counted once by outcome, with its latency and size |
//! | `metrics: gauges` | once every run closed, the scrape says no run is open and no timer queued |

use std::collections::BTreeMap;

use retrace::engine::metrics::{MetricsSnapshot, RunTally, status_label};
use retrace::env::RunRecord;

use super::Violation;

/// The run counters against storage: `counted` (each incarnation's) plus
/// `ambiguous` (runs of writes that committed unbeknown to the service)
/// must equal `records` (every run but torn ones), both ways.
pub fn check_run_counters(
    counted: &[MetricsSnapshot],
    ambiguous: &RunTally,
    records: &[RunRecord],
) -> Vec<Violation> {
    let mut expected = RunTally {
        started: records.len() as u64,
        closed: BTreeMap::new(),
    };
    for label in records.iter().filter_map(|r| status_label(r.status)) {
        *expected.closed.entry(label).or_default() += 1;
    }
    let mut seen = ambiguous.clone();
    for snapshot in counted {
        seen.add(&snapshot.runs);
    }
    if seen == expected {
        return Vec::new();
    }
    let message = format!(
        "metrics counted runs {} (ambiguous writes held {}) over {} incarnations; storage holds {}",
        describe(&seen),
        describe(ambiguous),
        counted.len(),
        describe(&expected)
    );
    vec![Violation::new("metrics: runs", message)]
}

fn describe(tally: &RunTally) -> String {
    let closed: Vec<String> = tally
        .closed
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(status, count)| format!("{status}={count}"))
        .collect();
    format!("started={} closed[{}]", tally.started, closed.join(" "))
}

/// Dispatch and write counters: at least `attempts_run` activity tasks
/// dispatched (distinct attempts workers ran), a latency per dispatch, and
/// per write answered.
pub fn check_task_and_write_counters(
    counted: &[MetricsSnapshot],
    attempts_run: usize,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let sum = |f: &dyn Fn(&MetricsSnapshot) -> u64| counted.iter().map(f).sum::<u64>();
    let dispatched = sum(&|m| m.tasks_dispatched.get("activity").copied().unwrap_or(0));
    if dispatched < attempts_run as u64 {
        let message = format!(
            "workers ran {attempts_run} activity attempts; the metrics counted {dispatched} dispatched"
        );
        violations.push(Violation::new("metrics: dispatches", message));
    }
    let observed = sum(&|m| m.schedule_to_start_count);
    if observed != dispatched {
        let message = format!(
            "{dispatched} activity tasks dispatched but {observed} schedule-to-start latencies observed"
        );
        violations.push(Violation::new("metrics: dispatches", message));
    }
    let writes = sum(&|m| m.storage_writes.values().sum());
    let (latencies, sizes) = (
        sum(&|m| m.storage_write_count),
        sum(&|m| m.storage_write_events_count),
    );
    if writes != latencies || writes != sizes {
        let message = format!(
            "{writes} writes counted by outcome, {latencies} latencies and {sizes} sizes observed"
        );
        violations.push(Violation::new("metrics: writes", message));
    }
    violations
}

/// The scrape's gauges once every run closed: none open, no timer queued.
/// `scrape` is the service's `/metrics` text (`None`: it keeps none).
pub fn check_gauges_when_all_closed(scrape: Option<&str>) -> Vec<Violation> {
    let Some(text) = scrape else {
        return vec![Violation::new(
            "metrics: gauges",
            "the service keeps no metrics",
        )];
    };
    let mut violations = Vec::new();
    for name in ["retrace_runs_open", "retrace_timers_queued"] {
        match gauge(text, name) {
            Some(0) => {}
            Some(value) => violations.push(Violation::new(
                "metrics: gauges",
                format!("every run closed, yet {name} is {value}"),
            )),
            None => violations.push(Violation::new(
                "metrics: gauges",
                format!("the scrape has no sample {name}"),
            )),
        }
    }
    violations
}

/// The value of the unlabelled sample `name` in a Prometheus text scrape.
pub fn gauge(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use retrace::env::RunStatus;
    use retrace::types::Timestamp;

    fn record(run_id: &str, status: RunStatus) -> RunRecord {
        RunRecord {
            run_id: run_id.into(),
            workflow_id: run_id.into(),
            workflow_type: "t".into(),
            task_queue: "q".into(),
            status,
            start_time: Timestamp(0),
            close_time: None,
            next_event_id: 2,
            version: 1,
            state: Vec::new(),
            search_attributes: Default::default(),
        }
    }

    fn counted(started: u64, closed: &[(&'static str, u64)]) -> MetricsSnapshot {
        MetricsSnapshot {
            runs: RunTally {
                started,
                closed: closed.iter().copied().collect(),
            },
            ..MetricsSnapshot::default()
        }
    }

    #[test]
    fn runs_counted_across_incarnations_and_ambiguous_writes_match_storage() {
        let records = [
            record("a", RunStatus::Completed),
            record("b", RunStatus::TimedOut),
            record("c", RunStatus::Running),
        ];
        let incarnations = [counted(2, &[("completed", 1)]), counted(0, &[])];
        let ambiguous = RunTally {
            started: 1,
            closed: [("timed_out", 1)].into_iter().collect(),
        };
        assert_eq!(check_run_counters(&incarnations, &ambiguous, &records), []);
    }

    #[test]
    fn a_close_counted_under_the_wrong_status_is_a_violation() {
        let records = [record("a", RunStatus::TimedOut)];
        let incarnations = [counted(1, &[("failed", 1)])];
        let found = check_run_counters(&incarnations, &RunTally::default(), &records);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].message.contains("failed=1"),
            "{}",
            found[0].message
        );
        assert!(
            found[0].message.contains("timed_out=1"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn a_start_counted_twice_is_a_violation() {
        let records = [record("a", RunStatus::Running)];
        let found = check_run_counters(&[counted(2, &[])], &RunTally::default(), &records);
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn gauges_are_read_from_the_scrape() {
        let text = "# TYPE retrace_runs_open gauge\nretrace_runs_open 2\nretrace_timers_queued 0\n";
        assert_eq!(gauge(text, "retrace_runs_open"), Some(2));
        let found = check_gauges_when_all_closed(Some(text));
        assert_eq!(found.len(), 1);
        assert!(found[0].message.contains("retrace_runs_open is 2"));
    }
}
