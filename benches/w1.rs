//! W1: one-activity workflows started one after another, over the real HTTP
//! API, the worker in a separate process, SQLite durable. Reports p50, p99 and
//! max of start-to-result.
//!
//! `cargo bench --bench w1`; the JSON line is printed last.
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time

mod common;

use std::time::{Duration, Instant};

use retrace::client::StartOptions;
use serde_json::json;

/// Runs the benchmark; `smoke` makes it short. Returns the result line:
/// `p50_ms`.. for a workflow of one activity, `local_p50_ms`.. for one
/// local activity (run in the workflow task).
pub async fn run(smoke: bool) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = common::server(dir.path()).await;
    let worker = common::spawn_worker(&server.url(), 1_000);
    let client = common::client(&server.url());
    let plain = measure(&client, "chain", smoke).await;
    let local = measure(&client, "local_chain", smoke).await;
    drop(worker);
    let figures = |samples: &[Duration]| {
        (
            common::percentile_ms(samples, 50.0),
            common::percentile_ms(samples, 99.0),
            common::percentile_ms(samples, 100.0),
        )
    };
    let (p50, p99, max) = figures(&plain);
    let (local_p50, local_p99, local_max) = figures(&local);
    println!(
        "W1: {} workflows: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms; with a local activity, {} workflows: p50 {local_p50:.2} ms, p99 {local_p99:.2} ms, max {local_max:.2} ms",
        plain.len(),
        local.len()
    );
    json!({"bench": "w1", "db": common::db_kind(), "smoke": smoke, "workflows": plain.len(), "p50_ms": p50, "p99_ms": p99, "max_ms": max,
        "local_workflows": local.len(), "local_p50_ms": local_p50, "local_p99_ms": local_p99, "local_max_ms": local_max})
}

/// Start-to-result times of `workflow_type`(1) run one after another, sorted
/// (after a warm-up).
async fn measure(
    client: &retrace::client::Client,
    workflow_type: &str,
    smoke: bool,
) -> Vec<Duration> {
    let budget = if smoke {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(10)
    };
    let warmup = if smoke { 5 } else { 200 };
    let mut samples = Vec::new();
    let started = Instant::now();
    let mut n = 0u64;
    while (started.elapsed() < budget || samples.is_empty()) && samples.len() < 100_000 {
        let begin = Instant::now();
        let id = format!("w1-{workflow_type}-{n}");
        let run_id = client
            .start_by_name(
                StartOptions::new(&id, common::TASK_QUEUE),
                workflow_type,
                json!(1),
            )
            .await
            .expect("start");
        let result = client
            .handle::<u64>(&id, Some(&run_id))
            .result()
            .await
            .expect("the workflow completes");
        assert_eq!(result, 1);
        if n >= warmup {
            samples.push(begin.elapsed());
        }
        n += 1;
    }
    samples.sort();
    samples
}

/// The benchmark (`benches/targets/NAME.rs` calls this).
#[allow(dead_code)] // the smoke test includes this file and calls `run`
pub fn main() {
    common::run_worker_if_asked();
    println!("{}", common::runtime().block_on(run(common::smoke())));
}
