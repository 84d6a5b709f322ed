//! The simulated cluster: several services over one sharded storage.

use retrace_sim::workloads;

/// Seeds the planted bug is hunted over.
const PLANTED_SEEDS: std::ops::Range<u64> = 0..120;

#[test]
fn the_fencing_oracle_catches_a_storage_that_does_not_fence() {
    let runner = workloads::cluster()
        .plant_storage_without_fencing()
        .into_runner();
    let caught = PLANTED_SEEDS
        .map(|seed| runner.run_seed(seed))
        .find(|result| {
            result
                .violations
                .iter()
                .any(|violation| violation.invariant == "fencing")
        });
    let caught = caught.expect("a stale server's write lands somewhere in the seeds");
    let violation = caught
        .violations
        .iter()
        .find(|violation| violation.invariant == "fencing")
        .expect("found above");
    assert!(
        violation.message.contains("while"),
        "the violation names the holder: {}",
        violation.message
    );
}

#[test]
fn a_seed_of_the_cluster_replays_identically() {
    let runner = workloads::cluster().into_runner();
    for seed in [0, 1, 2] {
        runner
            .check_determinism(seed)
            .unwrap_or_else(|e| panic!("cluster seed {seed} does not replay: {e}"));
    }
}
