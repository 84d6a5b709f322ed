//! The bundled reference scenarios over many seeds: every invariant holds.
//! `RETRACE_SEEDS=0..100000` widens a run; a failure prints the line that
//! reproduces it.

use retrace_sim::scenarios;

#[test]
fn small_scenario_keeps_every_invariant_over_500_seeds() {
    assert_eq!(scenarios::small().seeds(0..500).run(), 500);
}

#[test]
fn transfers_scenario_keeps_every_invariant_over_500_seeds() {
    assert_eq!(scenarios::transfers().seeds(0..500).run(), 500);
}

#[test]
fn the_simulators_storage_passes_the_storage_conformance_suite() {
    retrace_sim::storage_conformance();
}
