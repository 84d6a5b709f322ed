//! The simulator benchmark's harness works and gives sane figures (a short
//! run; speed targets are measured by `cargo bench --bench sim`, not here).

#[path = "../benches/sim.rs"]
mod sim_bench;

#[test]
fn the_sim_benchmark_runs_and_reports_sane_figures() {
    let line = sim_bench::run(true);
    assert_eq!(line["bench"], "sim");
    assert!(
        line["seeds_per_s"].as_f64().is_some_and(|v| v > 0.0),
        "{line}"
    );
    assert!(
        line["sim_to_wall"].as_f64().is_some_and(|v| v > 1.0),
        "simulated time runs faster than wall time: {line}"
    );
    for scenario in line["scenarios"]
        .as_array()
        .expect("one entry per scenario")
    {
        assert_eq!(scenario["failures"], 0, "{scenario}");
        assert!(
            scenario["seeds"].as_u64().is_some_and(|n| n >= 1),
            "{scenario}"
        );
    }
}
