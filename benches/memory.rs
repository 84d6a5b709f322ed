//! Memory: the server's resident memory with 10,000 open runs waiting on a
//! durable timer, and the worker's with its run cache full (1,000 runs).
//!
//! `cargo bench --bench memory`; the JSON line is printed last (`rss_mb` is the
//! server's, `worker_rss_mb` the worker's).
#![allow(clippy::disallowed_methods)] // a benchmark measures real processes

mod common;

use std::sync::Arc;
use std::time::Duration;

use retrace::client::StartOptions;
use retrace::history::EventKind;
use serde_json::json;

/// Starts at once while filling the server.
pub const STARTERS: usize = 64;
/// Runs the worker keeps cached.
pub const CACHE_RUNS_MAX: usize = 1_000;

async fn start_waiting_runs(url: &str, runs: usize) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut starters = Vec::new();
    for _ in 0..STARTERS {
        let (client, next) = (common::client(url), next.clone());
        starters.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n >= runs {
                    return;
                }
                let options = StartOptions::new(format!("wait-{n}"), common::TASK_QUEUE);
                client
                    .start_by_name(options, "wait", json!(3_600_000))
                    .await
                    .expect("start");
            }
        }));
    }
    for starter in starters {
        starter.await.expect("a starter panicked");
    }
}

/// Waits until run `workflow_id` has started its timer (the runs started
/// before it have, too, give or take the last few).
async fn wait_for_timer(url: &str, workflow_id: &str) {
    let client = common::client(url);
    for _ in 0..600 {
        let history = client.history(workflow_id, None).await.expect("history");
        if history
            .events()
            .iter()
            .any(|e| matches!(e.kind, EventKind::TimerStarted(_)))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{workflow_id} never started its timer");
}

/// Runs the benchmark; `smoke` makes it short. Returns the result line.
pub async fn run(smoke: bool) -> serde_json::Value {
    let runs = if smoke { 200 } else { 10_000 };
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = common::server(dir.path()).await;
    let worker = common::spawn_worker(&server.url(), CACHE_RUNS_MAX);
    let idle_mb = common::rss_mb(server.pid());
    start_waiting_runs(&server.url(), runs).await;
    wait_for_timer(&server.url(), &format!("wait-{}", runs - 1)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_mb, worker_rss_mb) = (common::rss_mb(server.pid()), common::rss_mb(worker.pid()));
    let open = common::client(&server.url())
        .list_all(Some(retrace::env::RunStatus::Running))
        .await
        .expect("list")
        .len();
    assert_eq!(open, runs, "every run is open, waiting on its timer");
    println!(
        "memory: {runs} open runs on timers: server RSS {rss_mb:.1} MB (idle {idle_mb:.1} MB), worker RSS {worker_rss_mb:.1} MB with {} runs cached",
        CACHE_RUNS_MAX.min(runs)
    );
    json!({"bench": "memory", "smoke": smoke, "open_runs": runs, "rss_mb": rss_mb, "idle_rss_mb": idle_mb,
           "worker_rss_mb": worker_rss_mb, "worker_cached_runs": CACHE_RUNS_MAX.min(runs)})
}

/// The benchmark (`benches/targets/NAME.rs` calls this).
#[allow(dead_code)] // the smoke test includes this file and calls `run`
pub fn main() {
    common::run_worker_if_asked();
    println!("{}", common::runtime().block_on(run(common::smoke())));
}
