//! Three real `retrace server --cluster` processes over one Postgres schema
//! (a private Postgres the test starts, see `tests/postgres_cluster/`), with
//! 2 s leases. Workers in this process poll every member through a
//! `ClusterNetwork`; workflows are started through three clients whose
//! server lists are turned, so requests enter at every member and follow
//! `NotOwner` to the shard's owner. While they run, the members are
//! SIGKILLed one after another, each restarted (same node name and port)
//! before the next is killed; one stays down long enough for its leases to
//! lapse and its shards to move to the others. Afterwards:
//!
//! - every workflow completed once, with the result its input determines;
//! - each workflow id has exactly one run, and the runs are those started;
//! - every history has exactly one `ActivityTaskScheduled` and one
//!   `ActivityTaskCompleted` (the activity is at least once: an attempt
//!   whose report a kill lost is run again, so attempts are counted, not
//!   required to be one);
//! - the activity's effect, applied insert-if-absent under its idempotency
//!   key, is there exactly once for each completed activity and for nothing
//!   else.
//!
//! Then `retrace cluster status` shows the three members and every shard
//! held, and a member stopped with SIGTERM hands its shards over at once
//! (well before its lease would lapse).
//!
//! Skipped, loudly, where Postgres is not installed; a failure with
//! `RETRACE_REQUIRE_POSTGRES=1` (as `.ci/run` sets).
// Tests drive real processes and wait on real time.
#![allow(clippy::disallowed_methods)]

mod cluster_members;
mod common;
mod postgres_cluster;
mod server_process;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use cluster_members::Members;
use postgres_cluster::PgCluster;
use retrace::activity::{Activity, ActivityContext, ActivityOptions, ActivityResult, RetryPolicy};
use retrace::api::RunOutcome;
use retrace::client::{Client, StartOptions};
use retrace::env::lease::ClusterView;
use retrace::env::{Env, RunStatus};
use retrace::history::{EventKind, History};
use retrace::worker::Worker;
use retrace::workflow::{Workflow, WorkflowContext, WorkflowRegistry, WorkflowResult};
use serde_json::json;

const TASK_QUEUE: &str = "cluster";
/// Members of the cluster.
const MEMBERS_COUNT: usize = 3;
/// Leases (and memberships) of the members, ms.
const LEASE_MS: u64 = 2_000;
/// Workflows started.
const WORKFLOWS_COUNT: u64 = 60;
/// Pause between two starts.
const START_INTERVAL_MS: u64 = 150;
/// How long a member runs before it is killed.
const UP_MS: u64 = 700;
/// How long each killed member stays down before its restart: the second
/// stays down past its leases, so the others take its shards over (and give
/// them back after its restart); the others come back sooner and take their
/// shards back themselves (a new incarnation of the same node).
const DOWN_MS: [u64; MEMBERS_COUNT] = [400, 2 * LEASE_MS + 500, 400];
/// Deadline for every run to finish once the kills are done.
const DRAIN_TIMEOUT_MS: u64 = 60_000;
/// Attempts of a client call: enough to ride out a member's restart and a
/// lapsed lease (the default's 8 give up after about 5 s).
const CALL_ATTEMPTS_MAX: u32 = 16;
/// How long the activity lingers after its effect, so kills land between
/// the effect and its report.
const LINGER_MS: u64 = 200;
/// How soon after a member's SIGTERM the others must hold its shards:
/// sooner than its leases could have lapsed (renewed every 400 ms, they
/// last 2,000 ms: at least 1,600 ms after the signal), so they did not wait.
const HANDOVER_MS_MAX: u64 = 1_500;

/// The effects of the activity, as applied.
#[derive(Default)]
struct Ledger {
    /// Insert-if-absent by idempotency key: the effect (a workflow id).
    effects: BTreeMap<String, String>,
    /// Attempts per workflow id, retries included.
    attempts: BTreeMap<String, u32>,
}

/// Records its workflow in the ledger; returns `n * 2 + 1`.
#[derive(Clone)]
struct Record {
    ledger: Arc<Mutex<Ledger>>,
}

impl Activity for Record {
    const NAME: &'static str = "record";
    type Input = (String, u64);
    type Output = u64;
    fn options() -> ActivityOptions {
        let retry = RetryPolicy::default()
            .initial_interval_ms(100)
            .maximum_interval_ms(500);
        ActivityOptions::default()
            .start_to_close(Duration::from_secs(3))
            .retry(retry)
    }
    async fn run(&self, ctx: ActivityContext, (id, n): (String, u64)) -> ActivityResult<u64> {
        {
            let mut ledger = self.ledger.lock().unwrap();
            *ledger.attempts.entry(id.clone()).or_default() += 1;
            ledger.effects.entry(ctx.idempotency_key()).or_insert(id);
        }
        tokio::time::sleep(Duration::from_millis(LINGER_MS)).await;
        Ok(n * 2 + 1)
    }
}

/// The activity, then a durable timer, so runs span the kills, then a
/// child (its workflow id is most likely on another member's shard: its
/// start and its close cross members).
struct Deliver;
impl Workflow for Deliver {
    const NAME: &'static str = "deliver";
    type Input = u64;
    type Output = u64;
    async fn run(ctx: WorkflowContext, n: u64) -> WorkflowResult<u64> {
        let id = ctx.info().workflow_id.clone();
        let recorded = ctx.activity::<Record>((id, n)).await?;
        ctx.sleep(Duration::from_millis(300)).await?;
        let echoed = ctx
            .child_workflow::<Echo>(n)
            .workflow_id(echo_id(n))
            .await?;
        Ok(recorded + 1_000 + echoed - n)
    }
}

/// The child: gives its input back.
struct Echo;
impl Workflow for Echo {
    const NAME: &'static str = "echo";
    type Input = u64;
    type Output = u64;
    async fn run(_ctx: WorkflowContext, n: u64) -> WorkflowResult<u64> {
        Ok(n)
    }
}

fn echo_id(n: u64) -> String {
    format!("echo-{n}")
}

fn expected_result(n: u64) -> u64 {
    n * 2 + 1 + 1_000
}

fn workflow_id(n: u64) -> String {
    format!("deliver-{n}")
}

fn start_workers(members: &Members, ledger: &Arc<Mutex<Ledger>>) -> Vec<Worker> {
    let worker = |i: usize| {
        let mut registry = WorkflowRegistry::new();
        registry.register::<Deliver>();
        registry.register::<Echo>();
        Worker::builder(Env::tokio(members.network()), TASK_QUEUE)
            .identity(&format!("worker-{i}"))
            .workflows(registry)
            .activity(Record {
                ledger: ledger.clone(),
            })
            .start()
    };
    (0..2).map(worker).collect()
}

/// Clients over every member, each with the member list turned: workflow
/// `n` is started through client `n % 3`.
fn clients(members: &Members) -> Vec<Client> {
    (0..MEMBERS_COUNT)
        .map(|i| {
            let client = Client::new(Env::tokio(members.network_turned(i)));
            client.with_call_attempts_max(CALL_ATTEMPTS_MAX)
        })
        .collect()
}

/// Starts the workflows; returns when the last was started.
async fn drive(clients: Vec<Client>) -> anyhow::Result<Instant> {
    for n in 0..WORKFLOWS_COUNT {
        let client = &clients[(n as usize) % clients.len()];
        let mut options = StartOptions::new(workflow_id(n), TASK_QUEUE);
        options.workflow_task_timeout_ms = Some(2_000);
        let started = client.start::<Deliver>(options, n).await;
        started.with_context(|| format!("start of {}", workflow_id(n)))?;
        tokio::time::sleep(Duration::from_millis(START_INTERVAL_MS)).await;
    }
    Ok(Instant::now())
}

/// Kills each member in turn (while workflows run) and restarts it before
/// the next; returns when each was killed, once the last is back.
async fn kill_each(members: &mut Members) -> Vec<Instant> {
    let mut killed = Vec::new();
    for (index, down_ms) in DOWN_MS.into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(UP_MS)).await;
        members.kill(index);
        killed.push(Instant::now());
        tokio::time::sleep(Duration::from_millis(down_ms)).await;
        members.restart(index).await;
        println!("killed member {index}, restarted it");
    }
    killed
}

async fn assert_results(client: &Client, members: &Members) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(DRAIN_TIMEOUT_MS);
    for n in 0..WORKFLOWS_COUNT {
        let id = workflow_id(n);
        let outcome = tokio::time::timeout_at(deadline, client.outcome(&id, None)).await;
        let Ok(outcome) = outcome else {
            bail!("{id} did not finish in time\n{}", members.logs());
        };
        match outcome.with_context(|| format!("outcome of {id}"))? {
            RunOutcome::Completed { result } => {
                ensure!(result == json!(expected_result(n)), "{id}: {result}")
            }
            other => bail!("{id} completes, but {other:?}"),
        }
    }
    Ok(())
}

/// Every run's history; each workflow id has exactly one run, completed.
async fn histories(client: &Client) -> anyhow::Result<Vec<History>> {
    let runs = client.list_all(None).await?;
    let mut runs_per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for run in &runs {
        *runs_per_id.entry(run.workflow_id.as_str()).or_default() += 1;
        ensure!(run.status == RunStatus::Completed, "{run:?}");
    }
    let parents = (0..WORKFLOWS_COUNT).map(workflow_id);
    let started: BTreeSet<String> = parents.chain((0..WORKFLOWS_COUNT).map(echo_id)).collect();
    let stored: BTreeSet<String> = runs_per_id.keys().map(|id| id.to_string()).collect();
    ensure!(
        stored == started,
        "the runs stored are the workflows started"
    );
    ensure!(runs_per_id.values().all(|c| *c == 1), "one run per id");
    let mut histories = Vec::new();
    for run in &runs {
        let history = client.history(&run.workflow_id, Some(&run.run_id)).await;
        histories.push(history.with_context(|| format!("history of {}", run.run_id))?);
    }
    Ok(histories)
}

/// One scheduled and one completed activity per history; the ledger's
/// effects are exactly the completed activities, each once.
fn check_effects(histories: &[History], ledger: &Ledger) -> anyhow::Result<()> {
    let mut completed: BTreeMap<String, String> = BTreeMap::new();
    for history in histories {
        let count = |name: &str| {
            let named = history.events().iter().filter(|e| e.kind.name() == name);
            named.count()
        };
        let id = history.workflow_id().to_string();
        if id.starts_with("echo-") {
            ensure!(
                count("ActivityTaskScheduled") == 0,
                "{id}: a child runs none"
            );
            continue;
        }
        ensure!(
            count("ChildWorkflowExecutionCompleted") == 1,
            "{id}: its child once"
        );
        ensure!(count("ActivityTaskScheduled") == 1, "{id}: one activity");
        ensure!(count("ActivityTaskCompleted") == 1, "{id}: completed once");
        for event in history.events() {
            if let EventKind::ActivityTaskScheduled(a) = &event.kind {
                let key = format!("{}/{}", history.run_id(), a.activity_id);
                completed.insert(key, id.clone());
            }
        }
    }
    ensure!(
        ledger.effects == completed,
        "the effects applied are exactly the completed activities'"
    );
    for id in completed.values() {
        let attempts = ledger.attempts.get(id).copied().unwrap_or(0);
        ensure!(attempts >= 1, "{id} ran");
    }
    Ok(())
}

/// Runs `retrace cluster status --json` against every member.
fn cluster_status(members: &Members) -> anyhow::Result<ClusterView> {
    let output = server_process::retrace_command()
        .args(["--address", &members.address_list(), "cluster", "status"])
        .arg("--json")
        .output()?;
    let stdout = String::from_utf8(output.stdout)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "{stderr}");
    Ok(serde_json::from_str(&stdout)?)
}

/// The status shows three live members and every shard held, spread over
/// them; the table form says the same.
fn check_status(members: &Members) -> anyhow::Result<()> {
    let view = cluster_status(members)?;
    let alive: Vec<&str> = view.members.iter().map(|m| m.node.as_str()).collect();
    ensure!(alive == ["n0", "n1", "n2"], "{view:?}");
    ensure!(view.members.iter().all(|m| m.alive), "{view:?}");
    let mut spread: BTreeMap<&str, usize> = BTreeMap::new();
    for lease in &view.shards {
        ensure!(lease.held_at(view.now_ms), "shard {} is held", lease.shard);
        *spread.entry(lease.owner.as_str()).or_default() += 1;
    }
    ensure!(
        spread.len() == MEMBERS_COUNT,
        "every member holds shards: {spread:?}"
    );
    let table = server_process::retrace_command()
        .args(["--address", &members.address_list(), "cluster", "status"])
        .output()?;
    let table = String::from_utf8(table.stdout)?;
    let summary = format!("3 of 3 members alive; {} shards: ", view.shards.len());
    ensure!(table.starts_with(&summary), "{table}");
    Ok(())
}

/// A member stopped with SIGTERM leaves: the others hold every shard soon
/// after, long before its lease would have lapsed.
async fn check_graceful_leave(members: &mut Members) -> anyhow::Result<u128> {
    let stopped = Instant::now();
    let exited = members.terminate(2);
    let view = members.settled().await;
    let waited_ms = stopped.elapsed().as_millis();
    let status = exited.await?;
    let log = members.log(2);
    ensure!(status.success(), "{status}: {log}");
    ensure!(
        log.contains("left the cluster: every shard released"),
        "{log}"
    );
    ensure!(
        view.shards.iter().all(|l| l.owner != Members::node(2)),
        "{view:?}"
    );
    let cluster_lines: Vec<String> = members
        .logs()
        .lines()
        .filter(|l| l.contains("===") || l.contains("cluster") || l.contains("shard"))
        .map(str::to_string)
        .collect();
    ensure!(
        waited_ms < u128::from(HANDOVER_MS_MAX),
        "the shards of a member that left were taken after {waited_ms} ms\n{}",
        cluster_lines.join("\n")
    );
    Ok(waited_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_cluster_servers_killed_in_turn_complete_every_workflow_once() -> anyhow::Result<()> {
    let Some(postgres) = PgCluster::start() else {
        return Ok(()); // Skipped, loudly (or a failure where Postgres is required).
    };
    common::init_logs();
    let dir = tempfile::tempdir()?;
    let db = postgres.fresh_schema_url();
    let mut members = Members::start(&db, dir.path(), MEMBERS_COUNT, LEASE_MS, &[]).await;
    members.settled().await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let workers = start_workers(&members, &ledger);
    let clients = clients(&members);
    let begun = Instant::now();
    let (driven, killed) = tokio::join!(drive(clients.clone()), kill_each(&mut members));
    let last_start = driven?;
    println!(
        "starts and kills done after {} ms",
        begun.elapsed().as_millis()
    );
    // Every kill landed while workflows were still being started (so runs
    // were open on the member killed).
    ensure!(
        killed.iter().all(|k| *k < last_start),
        "a kill came after the starts"
    );

    assert_results(&clients[0], &members).await?;
    let histories = histories(&clients[0]).await?;
    for worker in &workers {
        worker.shutdown().await;
    }
    {
        let ledger = ledger.lock().unwrap();
        check_effects(&histories, &ledger)?;
        let attempts: u32 = ledger.attempts.values().sum();
        let timeouts = |name: &str| {
            let events = histories.iter().flat_map(|h| h.events());
            events.filter(|e| e.kind.name() == name).count()
        };
        println!(
            "{WORKFLOWS_COUNT} workflows completed in {} ms; {} effects, {attempts} attempts; \
             {} workflow task and {} activity timeouts",
            begun.elapsed().as_millis(),
            ledger.effects.len(),
            timeouts("WorkflowTaskTimedOut"),
            timeouts("ActivityTaskTimedOut"),
        );
    }
    members.settled().await;
    check_status(&members)?;
    let waited_ms = check_graceful_leave(&mut members).await?;
    println!("a member that left was replaced on every shard after {waited_ms} ms");
    Ok(())
}
