//! Determinism is proven, not hoped for: a seed replays to the same trace,
//! and different seeds explore different runs.

use std::collections::BTreeSet;

use retrace_sim::workloads;

#[test]
fn the_same_seed_twice_gives_the_same_trace_hash() {
    for scenario in [workloads::small(), workloads::transfers()] {
        let runner = scenario.into_runner();
        for seed in [0, 1, 17, 42] {
            runner
                .check_determinism(seed)
                .unwrap_or_else(|e| panic!("{}: {e}", runner.name()));
        }
    }
}

#[test]
fn different_seeds_give_different_trace_hashes() {
    let runner = workloads::transfers().into_runner();
    let hashes: BTreeSet<u64> = (0..20)
        .map(|seed| runner.run_seed(seed).trace_hash)
        .collect();
    assert_eq!(hashes.len(), 20, "every seed is its own run");
}
