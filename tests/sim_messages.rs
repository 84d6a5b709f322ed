//! The order-of-messages example under the simulator's faults: the same
//! workflow and activities as the web app, with simulated backends.
//! `RETRACE_SEEDS=0..10000` widens the run; a failure prints the line that
//! reproduces it.

use retrace::history::EventKind;
use retrace_sim::workloads;

/// The seed whose histories are snapshotted: its lost messages, paused worker
/// and storage trouble make activities time out and retry, so the snapshot
/// shows retried attempts (`ActivityTaskStarted` with `attempt` > 1).
const SNAPSHOT_SEED: u64 = 33;

#[test]
fn the_messages_scenario_keeps_every_invariant_over_1000_seeds() {
    // `run` panics with a reproducible report at the first broken invariant;
    // RETRACE_SEED / RETRACE_SEEDS override the range.
    let seeds = workloads::messages().seeds(0..1_000).run();
    assert!(seeds >= 1, "no seed ran");
}

#[test]
fn the_messages_scenario_records_the_same_histories_for_a_fixed_seed() {
    let result = workloads::messages().into_runner().run_seed(SNAPSHOT_SEED);
    assert!(
        result.passed(),
        "seed {SNAPSHOT_SEED}: {:?}",
        result.violations
    );
    assert_eq!(
        result.histories.len(),
        3,
        "one history per run the scenario starts"
    );
    for history in result.histories.values() {
        insta::assert_snapshot!(
            format!("messages_seed_{SNAPSHOT_SEED}_{}", history.workflow_id()),
            history.to_json()
        );
    }
}

#[test]
fn the_messages_scenario_runs_the_two_fetches_in_one_workflow_task() {
    let result = workloads::messages().into_runner().run_seed(SNAPSHOT_SEED);
    assert!(result.passed(), "{:?}", result.violations);
    for history in result.histories.values() {
        let scheduled: Vec<(u64, String)> = history
            .events()
            .iter()
            .filter_map(|event| match &event.kind {
                EventKind::ActivityTaskScheduled(scheduled) => Some((
                    scheduled.workflow_task_completed_event_id,
                    scheduled.activity_type.clone(),
                )),
                _ => None,
            })
            .collect();
        let fetches: Vec<u64> = scheduled
            .iter()
            .filter(|(_, activity)| activity == "fetch_pokemon" || activity == "fetch_joke")
            .map(|(task, _)| *task)
            .collect();
        assert_eq!(fetches.len(), 2, "{}: {scheduled:?}", history.workflow_id());
        assert_eq!(
            fetches[0],
            fetches[1],
            "{}: {scheduled:?}",
            history.workflow_id()
        );
    }
}

#[test]
fn the_messages_scenario_is_deterministic() {
    let runner = workloads::messages().into_runner();
    runner.check_determinism(SNAPSHOT_SEED).unwrap();
}
