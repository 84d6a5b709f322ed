//! Buffered signals: what one signal costs while a worker holds the run's
//! workflow task and the signals before it wait, buffered, for the task to end.
//! The engine over SQLite (durable), in-process; signals of 64 KiB each until
//! 7 MiB are buffered (the default limit is 8 MiB).
//!
//! A write must cost what it adds, not what is already buffered: the mean
//! latency of the last ten signals should be close to that of the first ten.
//!
//! `cargo bench --bench buffered`; the JSON line is printed last.
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time

use std::sync::Arc;
use std::time::{Duration, Instant};

use retrace::api::{PollTaskRequest, PollWorkflowTaskResponse, Request, Response};
use retrace::client::StartOptions;
use retrace::engine::{EmbeddedEngine, ServiceConfig};
use retrace::env::SqliteStorage;
use serde_json::json;

const SIGNAL_BYTES: usize = 64 * 1024;
const BUFFERED_BYTES_TARGET: usize = 7 << 20;

/// Holds the run's first workflow task, as a worker would, and never completes it.
async fn hold_workflow_task(engine: &EmbeddedEngine, queue: &str) {
    let request = Request::PollWorkflowTask(PollTaskRequest {
        task_queue: queue.to_string(),
        identity: "bench".to_string(),
        workflow_types: Vec::new(),
    });
    for _ in 0..10 {
        if let Ok(Ok(Response::PollWorkflowTask(PollWorkflowTaskResponse {
            task: Some(_), ..
        }))) = engine.env().network.call(request.clone()).await
        {
            return;
        }
    }
    panic!("no workflow task on queue {queue}");
}

fn mean_ms(samples: &[Duration]) -> f64 {
    samples.iter().map(Duration::as_secs_f64).sum::<f64>() * 1_000.0 / samples.len() as f64
}

/// Runs the benchmark; `smoke` buffers less. Returns the result line.
pub async fn run(smoke: bool) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("a temp dir");
    let storage = SqliteStorage::open(dir.path().join("bench.db")).expect("the database opens");
    let engine = EmbeddedEngine::start(Arc::new(storage), ServiceConfig::default())
        .await
        .expect("the engine starts");
    let client = engine.client();
    let mut options = StartOptions::new("buffered", "bench");
    options.workflow_task_timeout_ms = Some(3_600_000);
    let run_id = client
        .start_by_name(options, "listener", json!(null))
        .await
        .expect("start");
    hold_workflow_task(&engine, "bench").await;
    let target = if smoke {
        1 << 20
    } else {
        BUFFERED_BYTES_TARGET
    };
    let payload = "x".repeat(SIGNAL_BYTES);
    let mut samples = Vec::new();
    let started = Instant::now();
    while samples.len() * SIGNAL_BYTES < target {
        let begin = Instant::now();
        client
            .signal("buffered", Some(&run_id), "data", &payload)
            .await
            .expect("the signal is accepted");
        samples.push(begin.elapsed());
    }
    let wall_s = started.elapsed().as_secs_f64();
    let signals_per_s = samples.len() as f64 / wall_s;
    let (first_ms, last_ms) = (
        mean_ms(&samples[..10]),
        mean_ms(&samples[samples.len() - 10..]),
    );
    println!(
        "buffered: {} signals of {} KiB in {wall_s:.2} s: {signals_per_s:.0} signals/s; \
         first ten {first_ms:.2} ms each, last ten {last_ms:.2} ms each",
        samples.len(),
        SIGNAL_BYTES / 1024
    );
    json!({"bench": "buffered", "smoke": smoke, "signals": samples.len(), "signals_per_s": signals_per_s, "first_ms": first_ms, "last_ms": last_ms})
}

/// The benchmark (`cargo bench --bench buffered`).
#[allow(dead_code)] // the smoke test includes this file and calls `run`
pub fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let smoke = std::env::var_os("RETRACE_BENCH_SMOKE").is_some();
    println!("{}", runtime.block_on(run(smoke)));
}
