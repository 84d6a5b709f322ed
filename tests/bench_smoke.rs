//! Each benchmark's harness works and gives sane figures (short runs; speed
//! targets are measured by `cargo bench`, never by tests).

#[path = "../benches/replay.rs"]
mod replay_bench;

#[test]
fn the_replay_benchmark_runs_and_reports_sane_figures() {
    let line = replay_bench::run(true);
    assert_eq!(line["bench"], "replay");
    assert_eq!(line["events_per_history"], 6_005, "1,000 activities make 6,005 events");
    for figure in ["replays_per_s", "events_per_s", "short_replays_per_s", "short_events_per_s"] {
        assert!(line[figure].as_f64().is_some_and(|v| v.is_finite() && v > 0.0), "{figure}: {line}");
    }
}
