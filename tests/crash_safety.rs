//! Crash safety of the real server: `retrace server` runs as a child process
//! over a SQLite file and is killed with SIGKILL several times, at seeded
//! random moments, while two workers (over HTTP) run a stream of workflows with
//! activities, durable timers and signals. Each time it restarts on the same
//! database and port. Afterwards:
//!
//! - every started workflow completed, with the result its inputs determine;
//! - each workflow id has exactly one run, and the runs are exactly those started;
//! - every history is well-formed and replays (three ways) to its recorded result;
//! - every activity's effect happened exactly once: activities apply it to a
//!   ledger keyed by their idempotency key (insert if absent), and the ledger
//!   holds exactly the completed activities of the histories, each once.
//!
//! The same test runs on Postgres (a private cluster the test starts, see
//! `tests/postgres_cluster/`), where the schedule also restarts Postgres
//! itself under load (`pg_ctl stop -m immediate`, as in a crash, then start)
//! while the server runs: the server rides through with retries, and the
//! same checks hold.
//!
//! `RETRACE_CRASH_SEED=<n>` repeats a kill schedule (the threads' timing still varies).
// Tests drive real processes and wait on real time.
#![allow(clippy::disallowed_methods)]

mod common;
mod postgres_cluster;
mod server_process;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres_cluster::PgCluster;
use retrace::activity::{Activity, ActivityContext, ActivityOptions, ActivityResult, RetryPolicy};
use retrace::api::RunOutcome;
use retrace::client::{Client, StartOptions};
use retrace::env::{Env, RunStatus};
use retrace::history::{EventKind, History};
use retrace::http::HttpNetwork;
use retrace::worker::Worker;
use retrace::workflow::{
    Replayer, RunResult, Workflow, WorkflowContext, WorkflowRegistry, WorkflowResult, join,
};
use serde_json::json;
use server_process::{ServerProcess, free_port};

const TASK_QUEUE: &str = "crash";
/// Workflows started.
const WORKFLOWS_COUNT: u64 = 60;
/// Pause between two starts.
const START_INTERVAL_MS: u64 = 40;
/// Workflows started before the first one is signaled (signals lag starts).
const SIGNAL_LAG: u64 = 4;
/// SIGKILLs of the server.
const KILLS_COUNT: u32 = 5;
/// Time between a restart and the next kill: drawn from this range.
const UP_MS_MIN: u64 = 300;
const UP_MS_MAX: u64 = 1_000;
/// Time Postgres stays down when the schedule restarts it: drawn from this range.
const PG_DOWN_MS_MIN: u64 = 100;
const PG_DOWN_MS_MAX: u64 = 1_500;
/// Time the server stays dead: drawn from this range.
const DOWN_MS_MIN: u64 = 20;
const DOWN_MS_MAX: u64 = 300;
/// Deadline for every run to finish once the last restart is done.
const DRAIN_TIMEOUT_MS: u64 = 25_000;
/// Activities whose input is a multiple of this outlast their first attempt's timeout.
const SLOW_EVERY: u64 = 7;
/// How long those first attempts take (more than the 2 s start-to-close timeout).
const SLOW_LINGER_MS: u64 = 2_500;
/// A short workflow task timeout, so tasks lost in a crash are retried quickly.
const WORKFLOW_TASK_TIMEOUT_MS: u64 = 2_000;

/// The effects of the simulated external service, as the activities applied them.
#[derive(Default)]
struct Ledger {
    /// Insert-if-absent: the idempotent effect, in the order applied.
    effects: Vec<(String, u64)>,
    /// Every attempt, including retries whose effect was already there.
    attempts: BTreeMap<String, u32>,
}

impl Ledger {
    fn apply(&mut self, key: &str, amount: u64) {
        *self.attempts.entry(key.to_string()).or_default() += 1;
        if !self.effects.iter().any(|(applied, _)| applied == key) {
            self.effects.push((key.to_string(), amount));
        }
    }
}

/// Applies `amount` to the ledger under the attempt's idempotency key; returns `amount + 1`.
#[derive(Clone)]
struct Apply {
    ledger: Arc<Mutex<Ledger>>,
}

impl Activity for Apply {
    const NAME: &'static str = "apply";
    type Input = u64;
    type Output = u64;
    fn options() -> ActivityOptions {
        let retry = RetryPolicy::default()
            .initial_interval_ms(100)
            .maximum_interval_ms(400);
        ActivityOptions::default()
            .start_to_close(Duration::from_secs(2))
            .retry(retry)
    }
    async fn run(&self, ctx: ActivityContext, amount: u64) -> ActivityResult<u64> {
        // Attempts take a while after their effect, so kills land between the
        // effect and its report; some first attempts outlast their
        // start-to-close timeout, so they are retried after their effect (the
        // retry must not apply it again).
        let linger_ms = match ctx.attempt() {
            1 if amount.is_multiple_of(SLOW_EVERY) => SLOW_LINGER_MS,
            attempt => (amount + u64::from(attempt)) % 4 * 40,
        };
        self.ledger
            .lock()
            .unwrap()
            .apply(&ctx.idempotency_key(), amount);
        tokio::time::sleep(Duration::from_millis(linger_ms)).await;
        Ok(amount + 1)
    }
}

/// An activity, a durable timer, a signal, then two activities in parallel.
struct Transfer;
impl Workflow for Transfer {
    const NAME: &'static str = "transfer";
    type Input = u64;
    type Output = u64;
    async fn run(ctx: WorkflowContext, n: u64) -> WorkflowResult<u64> {
        let first = ctx.activity::<Apply>(n).await?;
        ctx.sleep(Duration::from_millis(150)).await?;
        let bonus: u64 = ctx.signal("go").recv().await?;
        let (second, third) = join(
            ctx.activity::<Apply>(n * 10),
            ctx.activity::<Apply>(n * 100),
        )
        .await;
        Ok(first + second? + third? + bonus)
    }
}

/// What `transfer(n)` returns when signaled with `bonus(n)`.
fn expected_result(n: u64) -> u64 {
    (n + 1) + (n * 10 + 1) + (n * 100 + 1) + bonus(n)
}

fn bonus(n: u64) -> u64 {
    n * 7 + 3
}

fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register::<Transfer>();
    registry
}

/// splitmix64: the kill schedule's randomness.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn between(&mut self, min: u64, max: u64) -> u64 {
        min + self.next() % (max - min + 1)
    }
}

fn seed() -> u64 {
    match std::env::var("RETRACE_CRASH_SEED") {
        Ok(text) => text.parse().expect("RETRACE_CRASH_SEED is a u64"),
        Err(_) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        }
    }
}

fn workflow_id(n: u64) -> String {
    format!("transfer-{n}")
}

/// Starts the stream of workflows and signals each a little later. The client
/// retries across restarts with the same request ids.
async fn drive(client: Client) {
    for n in 0..WORKFLOWS_COUNT + SIGNAL_LAG {
        if n < WORKFLOWS_COUNT {
            let mut options = StartOptions::new(workflow_id(n), TASK_QUEUE);
            options.workflow_task_timeout_ms = Some(WORKFLOW_TASK_TIMEOUT_MS);
            let started = client.start::<Transfer>(options, n).await;
            started
                .unwrap_or_else(|e| panic!("start of {} survives restarts: {e}", workflow_id(n)));
        }
        if let Some(signaled) = n.checked_sub(SIGNAL_LAG) {
            let sent = client
                .signal(&workflow_id(signaled), None, "go", bonus(signaled))
                .await;
            sent.unwrap_or_else(|e| {
                panic!("signal to {} survives restarts: {e}", workflow_id(signaled))
            });
        }
        tokio::time::sleep(Duration::from_millis(START_INTERVAL_MS)).await;
    }
}

/// Kills the server at seeded random moments and restarts it on the same
/// database and port; with a Postgres `cluster`, every other crash is of
/// Postgres instead, with the server left running.
async fn crash_repeatedly(
    server: &mut ServerProcess,
    db: &std::path::Path,
    cluster: Option<&PgCluster>,
    rng: &mut Rng,
) -> Vec<(&'static str, u64)> {
    let mut kill_times_ms = Vec::new();
    let started = Instant::now();
    for kill in 0..KILLS_COUNT {
        tokio::time::sleep(Duration::from_millis(rng.between(UP_MS_MIN, UP_MS_MAX))).await;
        if let Some(cluster) = cluster.filter(|_| kill % 2 == 1) {
            tokio::task::block_in_place(|| cluster.stop_immediately());
            kill_times_ms.push(("postgres", started.elapsed().as_millis() as u64));
            let down_ms = rng.between(PG_DOWN_MS_MIN, PG_DOWN_MS_MAX);
            tokio::time::sleep(Duration::from_millis(down_ms)).await;
            tokio::task::block_in_place(|| cluster.start_again());
            continue;
        }
        server.kill();
        kill_times_ms.push(("server", started.elapsed().as_millis() as u64));
        tokio::time::sleep(Duration::from_millis(rng.between(DOWN_MS_MIN, DOWN_MS_MAX))).await;
        *server = ServerProcess::spawn(db, server.port, &server.log_path);
        server.wait_ready().await;
    }
    kill_times_ms
}

/// Every run's history, validated by the client as it reads.
async fn histories(client: &Client) -> Vec<History> {
    let runs = client.list_all(None).await.unwrap();
    let mut runs_per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for run in &runs {
        *runs_per_id.entry(run.workflow_id.as_str()).or_default() += 1;
    }
    let started: BTreeSet<String> = (0..WORKFLOWS_COUNT).map(workflow_id).collect();
    let stored: BTreeSet<String> = runs_per_id.keys().map(|id| id.to_string()).collect();
    assert_eq!(
        stored, started,
        "the runs stored are exactly the workflows started"
    );
    for (id, count) in &runs_per_id {
        assert_eq!(*count, 1, "workflow {id} has exactly one run");
    }
    let mut histories = Vec::new();
    for run in &runs {
        assert_eq!(run.status, RunStatus::Completed, "{run:?}");
        let history = client.history(&run.workflow_id, Some(&run.run_id)).await;
        histories.push(
            history.unwrap_or_else(|e| panic!("history of {} is well-formed: {e}", run.run_id)),
        );
    }
    histories
}

/// The ledger holds exactly the histories' completed activities, each once,
/// with the input the history scheduled and the result it recorded.
fn check_effects(histories: &[History], ledger: &Ledger) {
    let mut completed: BTreeMap<String, u64> = BTreeMap::new();
    for history in histories {
        let mut scheduled: BTreeMap<u64, (String, u64)> = BTreeMap::new();
        for event in history.events() {
            match &event.kind {
                EventKind::ActivityTaskScheduled(a) => {
                    let input = a.input.as_u64().expect("apply's input is a number");
                    scheduled.insert(event.event_id, (a.activity_id.clone(), input));
                }
                EventKind::ActivityTaskCompleted(a) => {
                    let (activity_id, input) = scheduled[&a.scheduled_event_id].clone();
                    assert_eq!(
                        a.result.as_u64(),
                        Some(input + 1),
                        "apply's recorded result"
                    );
                    let key = format!("{}/{activity_id}", history.run_id());
                    assert!(
                        completed.insert(key.clone(), input).is_none(),
                        "{key} completes once"
                    );
                }
                _ => {}
            }
        }
    }
    assert_eq!(
        completed.len() as u64,
        WORKFLOWS_COUNT * 3,
        "three activities per workflow"
    );
    let mut applied: BTreeMap<String, u64> = BTreeMap::new();
    for (key, amount) in &ledger.effects {
        assert!(
            applied.insert(key.clone(), *amount).is_none(),
            "effect {key} applied once"
        );
    }
    for (key, input) in &completed {
        assert_eq!(
            applied.get(key),
            Some(input),
            "the effect of completed activity {key} happened"
        );
    }
    let unaccounted: Vec<&String> = applied
        .keys()
        .filter(|key| !completed.contains_key(*key))
        .collect();
    assert!(
        unaccounted.is_empty(),
        "effects no history accounts for: {unaccounted:?}"
    );
}

fn start_workers(env: &Env, ledger: &Arc<Mutex<Ledger>>) -> Vec<Worker> {
    let worker = |i: usize| {
        Worker::builder(env.clone(), TASK_QUEUE)
            .identity(&format!("worker-{i}"))
            .workflows(registry())
            .activity(Apply {
                ledger: ledger.clone(),
            })
            .start()
    };
    (0..2).map(worker).collect()
}

/// Every workflow completes, with the result its input and signal determine.
async fn assert_results(client: &Client, server: &ServerProcess) {
    let drain_deadline = tokio::time::Instant::now() + Duration::from_millis(DRAIN_TIMEOUT_MS);
    for n in 0..WORKFLOWS_COUNT {
        let id = workflow_id(n);
        let outcome = tokio::time::timeout_at(drain_deadline, client.outcome(&id, None)).await;
        let outcome = outcome.unwrap_or_else(|_| panic!("{id} finishes in time\n{}", server.log()));
        match outcome.unwrap() {
            RunOutcome::Completed { result } => {
                assert_eq!(result, json!(expected_result(n)), "{id}")
            }
            other => panic!("{id} completes, but {other:?}\n{}", server.log()),
        }
    }
}

/// Every history replays, from scratch, incrementally and after eviction, to its result.
fn assert_replays(histories: &[History]) {
    let replayer = Replayer::new(registry());
    for history in histories {
        let run_id = history.run_id();
        let replayed = replayer.replay_three_ways(history);
        let replayed = replayed.unwrap_or_else(|e| panic!("{run_id} replays: {e}"));
        let close = &history.close_event().expect("every run is closed").kind;
        let EventKind::WorkflowExecutionCompleted(completed) = close else {
            panic!("{run_id} closes by completing: {close:?}")
        };
        assert_eq!(
            replayed.result,
            Some(RunResult::Completed(completed.result.clone()))
        );
    }
}

/// Prints what the crashes did; asserts that some activity ran twice.
fn report(histories: &[History], ledger: &Ledger, elapsed_ms: u128) {
    let attempts: u32 = ledger.attempts.values().sum();
    let retried = ledger.attempts.values().filter(|count| **count > 1).count();
    let timeouts: usize = histories
        .iter()
        .map(|h| {
            h.events()
                .iter()
                .filter(|e| e.kind.name() == "WorkflowTaskTimedOut")
                .count()
        })
        .sum();
    println!(
        "{WORKFLOWS_COUNT} workflows, {} effects, {attempts} attempts ({retried} keys run more \
         than once), {timeouts} workflow task timeouts, {elapsed_ms} ms",
        ledger.effects.len(),
    );
    assert!(
        retried > 0,
        "some activities ran more than once (their effect still once)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_server_loses_no_run_and_applies_every_effect_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("retrace.db");
    crash_test(&db, None, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_sigkilled_server_and_crashed_postgres_lose_no_run_and_apply_every_effect_once()
{
    // A cluster of its own: the test crashes it.
    let Some(cluster) = PgCluster::start() else {
        return; // Skipped, loudly (or a failure where Postgres is required).
    };
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.url();
    crash_test(std::path::Path::new(&url), Some(&cluster), dir.path()).await;
}

/// The test, on the SQLite file or Postgres URL `db`.
async fn crash_test(db: &std::path::Path, cluster: Option<&PgCluster>, dir: &std::path::Path) {
    common::init_logs();
    let seed = seed();
    println!("crash_safety seed={seed} (RETRACE_CRASH_SEED={seed} repeats the kill schedule)");
    let mut rng = Rng(seed);
    let mut server = ServerProcess::start(db, free_port(), &dir.join("server.log")).await;
    let env = Env::tokio(Arc::new(HttpNetwork::new(&server.url(), None).unwrap()));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let workers = start_workers(&env, &ledger);
    let client = Client::new(env.clone());
    let begun = Instant::now();
    let crashes = crash_repeatedly(&mut server, db, cluster, &mut rng);
    let (kill_times_ms, ()) = tokio::join!(crashes, drive(client.clone()));
    let elapsed_ms = begun.elapsed().as_millis();
    println!("killed at {kill_times_ms:?} ms; stream and kills done after {elapsed_ms} ms");

    assert_results(&client, &server).await;
    let histories = histories(&client).await;
    assert_replays(&histories);
    for worker in &workers {
        worker.shutdown().await;
    }
    let ledger = ledger.lock().unwrap();
    check_effects(&histories, &ledger);
    report(&histories, &ledger, begun.elapsed().as_millis());
    let log = server.log();
    let refused = log
        .lines()
        .filter(|line| line.contains("write failed"))
        .count();
    println!("the server logged {refused} failed writes");
    // The Postgres crashes land while workflows still start (the first one
    // within the stream of starts): the server must have met them.
    assert!(
        cluster.is_none() || refused > 0,
        "crashing Postgres failed no write: the test did not test the ride-through"
    );
}
