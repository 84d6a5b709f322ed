//! Each benchmark's harness works and gives sane figures (short runs, the
//! worker in-process; speed targets are measured by `cargo bench`, never by
//! tests).
// Each benchmark is its own crate under `cargo bench` and loads `common`;
// included together here, `common` is loaded once per benchmark.
#![allow(clippy::duplicate_mod)]

#[path = "../benches/buffered.rs"]
mod buffered_bench;
#[path = "../benches/memory.rs"]
mod memory_bench;
#[path = "../benches/replay.rs"]
mod replay_bench;
#[path = "../benches/w10.rs"]
mod w10_bench;
#[path = "../benches/w1.rs"]
mod w1_bench;

fn positive(line: &serde_json::Value, figure: &str) -> f64 {
    let value = line[figure]
        .as_f64()
        .unwrap_or_else(|| panic!("{figure} missing: {line}"));
    assert!(value.is_finite() && value > 0.0, "{figure}: {line}");
    value
}

fn in_process_worker() {
    // Safety of set_var: set before any thread of this test reads it, same value always.
    unsafe { std::env::set_var("RETRACE_BENCH_IN_PROCESS_WORKER", "1") };
}

#[test]
fn the_replay_benchmark_runs_and_reports_sane_figures() {
    let line = replay_bench::run(true);
    assert_eq!(line["bench"], "replay");
    assert_eq!(
        line["events_per_history"], 6_005,
        "1,000 activities make 6,005 events"
    );
    for figure in [
        "replays_per_s",
        "events_per_s",
        "short_replays_per_s",
        "short_events_per_s",
    ] {
        positive(&line, figure);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_w1_benchmark_runs_and_reports_sane_latencies() {
    in_process_worker();
    let line = w1_bench::run(true).await;
    let (p50, p99, max) = (
        positive(&line, "p50_ms"),
        positive(&line, "p99_ms"),
        positive(&line, "max_ms"),
    );
    assert!(p50 <= p99 && p99 <= max, "{line}");
    let (p50, p99, max) = (
        positive(&line, "local_p50_ms"),
        positive(&line, "local_p99_ms"),
        positive(&line, "local_max_ms"),
    );
    assert!(p50 <= p99 && p99 <= max, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_w10_benchmark_runs_and_reports_sane_throughput() {
    in_process_worker();
    let line = w10_bench::run(true).await;
    let (workflows, activities) = (
        positive(&line, "workflows_per_s"),
        positive(&line, "activities_per_s"),
    );
    assert!(
        (activities / workflows - 10.0).abs() < 1e-6,
        "ten activities per workflow: {line}"
    );
    assert!(
        positive(&line, "p50_ms") <= positive(&line, "p99_ms"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_benchmark_runs_and_reports_sane_figures() {
    in_process_worker();
    let line = memory_bench::run(true).await;
    assert_eq!(line["open_runs"], 200);
    assert!(
        positive(&line, "rss_mb") >= positive(&line, "idle_rss_mb") * 0.5,
        "{line}"
    );
    positive(&line, "worker_rss_mb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buffered_signals_benchmark_runs_and_reports_sane_figures() {
    let line = buffered_bench::run(true).await;
    assert_eq!(line["signals"], 16, "1 MiB of 64 KiB signals");
    for figure in ["signals_per_s", "first_ms", "last_ms"] {
        positive(&line, figure);
    }
}
