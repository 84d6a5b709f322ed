//! W10: workflows of 10 sequential activities (each returns at once), 32
//! workflows in flight, over the real HTTP API, the worker in a separate
//! process, SQLite durable. Reports workflows/s, activities/s, and p50/p99 of
//! start-to-result.
//!
//! `cargo bench --bench w10`; the JSON line is printed last.
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use retrace::client::StartOptions;
use serde_json::json;
use tokio::sync::Mutex;

/// Workflows in flight at once.
pub const IN_FLIGHT: usize = 32;
/// Activities per workflow.
pub const STEPS: u64 = 10;

/// Runs the benchmark; `smoke` makes it short. Returns the result line.
pub async fn run(smoke: bool) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = common::server(dir.path()).await;
    let worker = common::spawn_worker(&server.url(), 1_000);
    let duration = if smoke {
        Duration::from_millis(1_500)
    } else {
        Duration::from_secs(20)
    };
    let samples = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut lanes = Vec::new();
    for lane in 0..IN_FLIGHT {
        let (client, samples, url) = (common::client(&server.url()), samples.clone(), server.url());
        lanes.push(tokio::spawn(async move {
            let _ = url;
            let mut n = 0u64;
            while started.elapsed() < duration {
                let begin = Instant::now();
                let id = format!("w10-{lane}-{n}");
                let run_id = client
                    .start_by_name(
                        StartOptions::new(&id, common::TASK_QUEUE),
                        "chain",
                        json!(STEPS),
                    )
                    .await
                    .expect("start");
                let result = client
                    .handle::<u64>(&id, Some(&run_id))
                    .result()
                    .await
                    .expect("the workflow completes");
                assert_eq!(result, STEPS);
                samples.lock().await.push(begin.elapsed());
                n += 1;
            }
        }));
    }
    for lane in lanes {
        lane.await.expect("a lane panicked");
    }
    let wall_s = started.elapsed().as_secs_f64();
    drop(worker);
    let mut samples = samples.lock().await.clone();
    samples.sort();
    let workflows = samples.len() as f64;
    let (workflows_per_s, activities_per_s) =
        (workflows / wall_s, workflows * STEPS as f64 / wall_s);
    let (p50, p99) = (
        common::percentile_ms(&samples, 50.0),
        common::percentile_ms(&samples, 99.0),
    );
    println!(
        "W10: {workflows} workflows in {wall_s:.1} s: {workflows_per_s:.0} workflows/s, {activities_per_s:.0} activities/s, p50 {p50:.1} ms, p99 {p99:.1} ms"
    );
    json!({"bench": "w10", "db": common::db_kind(), "smoke": smoke, "workflows": samples.len(), "workflows_per_s": workflows_per_s,
           "activities_per_s": activities_per_s, "p50_ms": p50, "p99_ms": p99})
}

/// The benchmark (`benches/targets/NAME.rs` calls this).
#[allow(dead_code)] // the smoke test includes this file and calls `run`
pub fn main() {
    common::run_worker_if_asked();
    println!("{}", common::runtime().block_on(run(common::smoke())));
}
