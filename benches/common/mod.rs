//! What the HTTP benchmarks share: the real `retrace server` as a child
//! process over SQLite (durable, no relaxed sync) or, with
//! `RETRACE_BENCH_DB=postgres`, over Postgres (a private cluster started for
//! the run, fsync on, default settings otherwise), a worker in a separate
//! process (this same benchmark binary, re-run in worker mode), clients over
//! HTTP, percentiles and RSS.
// Benchmarks drive real processes and measure real time.
#![allow(clippy::disallowed_methods, dead_code)]

#[path = "../../tests/cluster_members/mod.rs"]
pub mod cluster_members;
#[path = "../../tests/postgres_cluster/mod.rs"]
pub mod postgres_cluster;
#[path = "../../tests/server_process/mod.rs"]
mod server_process;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use retrace::activity::{Activity, ActivityContext, ActivityOptions, ActivityResult};
use retrace::client::Client;
use retrace::env::Env;
use retrace::http::{HttpNetwork, network_over};
use retrace::worker::Worker;
use retrace::workflow::{WorkflowContext, WorkflowRegistry};
pub use server_process::{ServerProcess, free_port};

/// The task queue of every benchmark.
pub const TASK_QUEUE: &str = "bench";
/// Set by the smoke tests: run the worker in-process.
pub const IN_PROCESS_WORKER_VARIABLE: &str = "RETRACE_BENCH_IN_PROCESS_WORKER";
/// Set in a worker process: the service's URL.
pub const WORKER_ROLE_VARIABLE: &str = "RETRACE_BENCH_WORKER";

/// An activity that returns at once.
pub struct Noop;

impl Activity for Noop {
    const NAME: &'static str = "noop";
    type Input = u64;
    type Output = u64;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(30))
    }
    async fn run(&self, _ctx: ActivityContext, step: u64) -> ActivityResult<u64> {
        Ok(step + 1)
    }
}

/// `chain`(n): n sequential `noop` activities; `local_chain`(n): the same as
/// local activities; `wait`(ms): one durable timer.
pub fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn("chain", |ctx: WorkflowContext, steps: u64| async move {
        let mut value = 0;
        for _ in 0..steps {
            value = ctx.activity::<Noop>(value).await?;
        }
        Ok(value)
    });
    registry.register_fn(
        "local_chain",
        |ctx: WorkflowContext, steps: u64| async move {
            let mut value = 0;
            for _ in 0..steps {
                value = ctx.local_activity::<Noop>(value).await?;
            }
            Ok(value)
        },
    );
    registry.register_fn("wait", |ctx: WorkflowContext, wait_ms: u64| async move {
        ctx.sleep(Duration::from_millis(wait_ms)).await?;
        Ok(())
    });
    registry
}

/// An env whose network is HTTP to `url`, or to every server of a
/// comma-separated list (a `ClusterNetwork`).
pub fn env(url: &str) -> Env {
    let servers = HttpNetwork::list(url, None).expect("valid URLs");
    Env::tokio(network_over(&servers))
}

/// A client over HTTP.
pub fn client(url: &str) -> Client {
    Client::new(env(url))
}

/// The benchmark worker (runs until dropped or killed).
pub fn start_worker(url: &str, cache_runs_max: usize) -> Worker {
    Worker::builder(env(url), TASK_QUEUE)
        .workflows(registry())
        .activity(Noop)
        .options(|o| {
            o.workflow_tasks_max = 64;
            o.activities_max = 256;
            o.pollers_max = 16;
            o.cache_runs_max = cache_runs_max;
            // `RETRACE_BENCH_NO_SPECULATION=1` measures without speculative
            // workflow tasks (two requests and writes per activity).
            o.speculative_workflow_tasks =
                std::env::var_os("RETRACE_BENCH_NO_SPECULATION").is_none();
        })
        .start()
}

/// Threads per process: the server's request threads, the worker's and the
/// load generator's runtime. The three share the machine's two cores, and one
/// thread each (plus the server's SQLite threads) measured 560 → 690
/// workflows/s on W10 against a thread per core each: fewer threads than
/// cores means fewer context switches and cross-thread wake-ups per request.
pub const THREADS_PER_PROCESS: usize = 1;

/// A runtime of [`THREADS_PER_PROCESS`] threads.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS_PER_PROCESS)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// If this process was started as a worker, runs the worker until killed and
/// never returns.
pub fn run_worker_if_asked() {
    let Ok(url) = std::env::var(WORKER_ROLE_VARIABLE) else {
        return;
    };
    let cache_runs_max: usize = std::env::var("RETRACE_BENCH_CACHE_RUNS_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    runtime().block_on(async move {
        let _worker = start_worker(&url, cache_runs_max);
        futures::future::pending::<()>().await;
    });
    std::process::exit(0);
}

/// The worker: a separate process (benchmarks), or in this process (the
/// smoke tests, whose test binary cannot run itself as a worker).
pub enum WorkerProcess {
    Separate(Child),
    InProcess(Worker),
}

impl WorkerProcess {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        match self {
            WorkerProcess::Separate(child) => child.id(),
            WorkerProcess::InProcess(_) => std::process::id(),
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        match self {
            WorkerProcess::Separate(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            WorkerProcess::InProcess(worker) => worker.crash(),
        }
    }
}

/// Starts a worker of `url`: this binary run again as a worker process, or
/// in-process when smoke-testing.
pub fn spawn_worker(url: &str, cache_runs_max: usize) -> WorkerProcess {
    if std::env::var_os(IN_PROCESS_WORKER_VARIABLE).is_some() {
        return WorkerProcess::InProcess(start_worker(url, cache_runs_max));
    }
    let child = Command::new(std::env::current_exe().expect("the benchmark knows its path"))
        .env(WORKER_ROLE_VARIABLE, url)
        .env("RETRACE_BENCH_CACHE_RUNS_MAX", cache_runs_max.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the benchmark binary starts as a worker");
    WorkerProcess::Separate(child)
}

/// Set to `postgres` to run the server on Postgres instead of SQLite.
pub const DB_VARIABLE: &str = "RETRACE_BENCH_DB";

/// The benchmark's server and, on Postgres, its private cluster (stopped
/// after the server, when this drops).
pub struct BenchServer {
    server: ServerProcess,
    _cluster: Option<postgres_cluster::PgCluster>,
}

impl std::ops::Deref for BenchServer {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.server
    }
}

/// The storage the benchmarks run on: `"sqlite"` or `"postgres"`.
pub fn db_kind() -> &'static str {
    match std::env::var(DB_VARIABLE).as_deref() {
        Ok("postgres") => "postgres",
        Ok("sqlite") | Err(_) => "sqlite",
        Ok(other) => panic!("{DB_VARIABLE}={other}: expected sqlite or postgres"),
    }
}

/// A server on a fresh SQLite file in `dir` (or a fresh Postgres cluster), ready.
pub async fn server(dir: &std::path::Path) -> BenchServer {
    let threads = THREADS_PER_PROCESS.to_string();
    let log = dir.join("server.log");
    let (db, cluster) = if db_kind() == "postgres" {
        let cluster = postgres_cluster::PgCluster::start()
            .expect("Postgres (initdb, pg_ctl) is installed for RETRACE_BENCH_DB=postgres");
        (std::path::PathBuf::from(cluster.url()), Some(cluster))
    } else {
        (dir.join("bench.db"), None)
    };
    let server = ServerProcess::start_with(&db, free_port(), &log, &["--threads", &threads]).await;
    BenchServer {
        server,
        _cluster: cluster,
    }
}

/// The `p`-th percentile (0..=100) of sorted samples, in ms.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentiles need samples");
    let index = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[index].as_secs_f64() * 1_000.0
}

/// Resident memory of process `pid`, in MB (from /proc).
pub fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .unwrap_or(0.0);
    kb / 1_024.0
}

/// True for a short run (`RETRACE_BENCH_SMOKE`, and the smoke tests).
pub fn smoke() -> bool {
    std::env::var_os("RETRACE_BENCH_SMOKE").is_some()
}
