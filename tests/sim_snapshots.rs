//! The canonical histories of fixed seeds of the reference scenarios, as insta
//! snapshots: any change of engine behaviour shows as a readable diff
//! (`cargo insta review` to accept an intended one).

use retrace_sim::workloads;

fn snapshot(scenario: retrace_sim::Simulation, seed: u64) {
    let name = scenario.name().to_string();
    let result = scenario.into_runner().run_seed(seed);
    assert!(
        result.passed(),
        "{name} seed {seed}: {:?}",
        result.violations
    );
    assert!(!result.histories.is_empty());
    for history in result.histories.values() {
        insta::assert_snapshot!(
            format!("{name}_seed_{seed}_{}", history.workflow_id()),
            history.to_json()
        );
    }
}

#[test]
fn small_scenario_seed_7_records_the_same_histories() {
    snapshot(workloads::small(), 7);
}

#[test]
fn transfers_scenario_seed_11_records_the_same_histories() {
    snapshot(workloads::transfers(), 11);
}
