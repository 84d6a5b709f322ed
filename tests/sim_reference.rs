//! The bundled reference scenarios over many seeds: every invariant holds.
//! `RETRACE_SEEDS=0..100000` widens a run; a failure prints the line that
//! reproduces it.

use retrace_sim::workloads;

#[test]
fn small_scenario_keeps_every_invariant_over_500_seeds() {
    assert_eq!(workloads::small().seeds(0..500).run(), 500);
}

#[test]
fn transfers_scenario_keeps_every_invariant_over_500_seeds() {
    assert_eq!(workloads::transfers().seeds(0..500).run(), 500);
}

#[test]
fn the_simulators_storage_passes_the_storage_conformance_suite() {
    retrace_sim::storage_conformance();
}

/// Every BUGGIFY site in the engine, the worker and the simulated network.
const BUGGIFY_SITES: [&str; 7] = [
    "service.commit.drop_cache",
    "service.timer.fire_early",
    "service.poll.return_empty",
    "service.reply.delay",
    "service.workflow_task.lose_response",
    "worker.cache.drop_entry",
    "net.abandon_request",
];

#[test]
fn every_buggify_site_fires_within_the_first_500_seeds() {
    let runner = workloads::small().into_runner();
    let mut fired = std::collections::BTreeSet::new();
    for seed in 0..500 {
        let result = runner.run_seed(seed);
        assert!(result.passed(), "seed {seed}: {:?}", result.violations);
        for (kind, count) in &result.faults {
            if let Some(site) = kind.strip_prefix("buggify:") {
                assert!(*count > 0);
                fired.insert(site.to_string());
            }
        }
    }
    for site in BUGGIFY_SITES {
        assert!(fired.contains(site), "{site} never fired; fired: {fired:?}");
    }
    assert_eq!(
        fired.len(),
        BUGGIFY_SITES.len(),
        "an unlisted site: {fired:?}"
    );
}

/// Workers run the workflow task an activity result schedules before sending
/// the result (one write per activity). The simulator must see the service
/// take such tasks and refuse them (a signal or timer got there first, the
/// worker's clock is ahead), with every invariant holding either way.
#[test]
fn speculative_workflow_tasks_are_both_taken_and_refused_within_200_seeds() {
    let mut total = retrace_sim::Speculations::default();
    for scenario in [workloads::small(), workloads::transfers()] {
        let runner = scenario.into_runner();
        for seed in 0..100 {
            let result = runner.run_seed(seed);
            assert!(result.passed(), "seed {seed}: {:?}", result.violations);
            total.taken += result.speculations.taken;
            total.refused += result.speculations.refused;
        }
    }
    assert!(total.taken > 0, "never taken: {total:?}");
    assert!(total.refused > 0, "never refused: {total:?}");
}
