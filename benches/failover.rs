//! Cluster: failover time and throughput of `retrace server --cluster` over
//! one Postgres (a private cluster started for the run).
//!
//! Failover: three members with `RETRACE_BENCH_LEASE_MS` leases (default
//! 2,000 ms), a worker process polling all three, 16 lanes of `chain`(3)
//! workflows flowing. `KILLS` times, a member (in turn) is SIGKILLed. For
//! every shard it held: the time from the kill until the cluster's view
//! shows another member holding it, and, with a probe workflow (one
//! activity) started on it at the kill, the time until the probe's result
//! (what a client sees, its retry backoff included). The runs in flight on
//! its shards when it died are timed too (kill to result). Then the member
//! is restarted and the cluster settles before the next kill. Reports
//! p50/p99/max of each; runs that took over three leases are printed with
//! their event timeline.
//!
//! Throughput: W10 (32 lanes of `chain`(10), as `benches/w10.rs`) against
//! one Postgres server without `--cluster`, then 1, 2 and 3 members.
//!
//! Every process (members, worker, this load generator) has one runtime
//! thread; they share the machine's cores with Postgres.
//! `RETRACE_BENCH_LOGS=DIR` keeps the servers' logs there;
//! `RETRACE_BENCH_PART=failover` (or `throughput`) runs one part.
//! `cargo bench --bench failover`; the JSON line is printed last.
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster_members::Members;
use common::postgres_cluster::PgCluster;
use retrace::client::{Client, StartOptions};
use retrace::env::lease::shard_of;
use serde_json::json;
use tokio::sync::Mutex;

/// Kills measured (each of the three members in turn).
const KILLS: usize = 12;
/// Members of the failover cluster.
const MEMBERS: usize = 3;
/// Lanes of background workflows during the failover runs.
const FAILOVER_LANES: usize = 16;
/// Activities per background workflow during the failover runs.
const FAILOVER_STEPS: u64 = 3;
/// W10's lanes and steps (as `benches/w10.rs`).
const W10_LANES: usize = 32;
const W10_STEPS: u64 = 10;
/// Attempts of a client call: enough to outlast a lapsing lease.
const CALL_ATTEMPTS_MAX: u32 = 30;

fn lease_ms() -> u64 {
    std::env::var("RETRACE_BENCH_LEASE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn client(list: &str) -> Client {
    common::client(list).with_call_attempts_max(CALL_ATTEMPTS_MAX)
}

/// Start-to-result of the background runs, by workflow id, while a flag holds.
type InFlight = Arc<Mutex<BTreeMap<String, Instant>>>;

/// One lane of `chain`(steps): workflows one after another until `stop`;
/// each run in flight is in `in_flight` with its start; returns the
/// start-to-result samples.
async fn lane(
    client: Client,
    name: String,
    steps: u64,
    until: Instant,
    in_flight: InFlight,
) -> Vec<Duration> {
    let mut samples = Vec::new();
    let mut n = 0u64;
    while Instant::now() < until {
        let id = format!("{name}-{n}");
        let begin = Instant::now();
        let options = StartOptions::new(&id, common::TASK_QUEUE);
        let run_id = client
            .start_by_name(options, "chain", json!(steps))
            .await
            .expect("start");
        in_flight.lock().await.insert(id.clone(), begin);
        let result = client.handle::<u64>(&id, Some(&run_id)).result().await;
        assert_eq!(result.expect("the workflow completes"), steps);
        in_flight.lock().await.remove(&id);
        samples.push(begin.elapsed());
        n += 1;
    }
    samples
}

/// A workflow id on `shard` of `count`, unused so far (`probe-{kill}-…`).
fn id_on_shard(kill: usize, shard: u32, count: u32) -> String {
    (0u64..)
        .map(|i| format!("probe-{kill}-{shard}-{i}"))
        .find(|id| shard_of(id, count) == shard)
        .expect("some id hashes to every shard")
}

/// What one kill measured: per shard of the victim, kill to a survivor
/// holding it (the cluster's view) and kill to a probe's result; per run in
/// flight on its shards, kill to its result.
struct Kill {
    takeovers: Vec<Duration>,
    probes: Vec<Duration>,
    in_flight: Vec<Duration>,
}

/// Polls the cluster's view until every one of `shards` is held by a
/// member other than `victim`; returns when each was first seen so.
async fn takeovers(
    members: &Members,
    victim: &str,
    shards: &[u32],
    killed: Instant,
) -> Vec<Duration> {
    let mut seen: BTreeMap<u32, Duration> = BTreeMap::new();
    while seen.len() < shards.len() {
        if let Some(view) = members.view().await {
            for lease in &view.shards {
                let moved = lease.owner != victim && lease.held_at(view.now_ms);
                if moved && shards.contains(&lease.shard) {
                    seen.entry(lease.shard).or_insert_with(|| killed.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen.into_values().collect()
}

/// Kills a member (in turn) with workflows flowing and measures (see [`Kill`]).
async fn kill_once(members: &mut Members, kill: usize, list: &str, runs: &InFlight) -> Kill {
    let victim = kill % MEMBERS;
    let view = members.settled().await;
    let count = view.shards.len() as u32;
    let node = Members::node(victim);
    let shards: Vec<u32> = view
        .shards
        .iter()
        .filter(|lease| lease.owner == node)
        .map(|lease| lease.shard)
        .collect();
    let on_victim: Vec<String> = runs
        .lock()
        .await
        .keys()
        .filter(|id| shards.contains(&shard_of(id, count)))
        .cloned()
        .collect();
    members.kill(victim);
    let killed = Instant::now();
    let wait = |id: String, client: Client| async move {
        let outcome = client.outcome(&id, None).await;
        outcome.unwrap_or_else(|e| panic!("{id}: {e}"));
        let took = killed.elapsed();
        if took > Duration::from_millis(3 * lease_ms()) {
            println!(
                "  slow: {id} after {took:?}: {}",
                timeline(&client, &id).await
            );
        }
        took
    };
    let probes = shards.iter().map(|shard| {
        let (id, client) = (id_on_shard(kill, *shard, count), client(list));
        async move {
            let options = StartOptions::new(&id, common::TASK_QUEUE);
            let started = client.start_by_name(options, "chain", json!(1)).await;
            started.unwrap_or_else(|e| panic!("probe {id}: {e}"));
            wait(id, client).await
        }
    });
    let in_flight = on_victim.into_iter().map(|id| wait(id, client(list)));
    let (takeovers, probes, in_flight) = tokio::join!(
        takeovers(members, &node, &shards, killed),
        futures::future::join_all(probes),
        futures::future::join_all(in_flight)
    );
    members.restart(victim).await;
    Kill {
        takeovers,
        probes,
        in_flight,
    }
}

/// A run's events as `name@ms` (from its first event), to see where a
/// slow run waited.
async fn timeline(client: &Client, id: &str) -> String {
    let Ok(history) = client.history(id, None).await else {
        return "(no history)".to_string();
    };
    let first = history.events()[0].event_time;
    let events = history.events().iter().map(|e| {
        let at = e.event_time.millis_since(first);
        format!("{}@{at}", e.kind.name())
    });
    events.collect::<Vec<_>>().join(" ")
}

fn percentiles(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    (
        common::percentile_ms(samples, 50.0),
        common::percentile_ms(samples, 99.0),
        common::percentile_ms(samples, 100.0),
    )
}

/// The failover runs; returns their JSON.
async fn failover(postgres: &PgCluster, smoke: bool) -> serde_json::Value {
    let (_temporary, dir) = log_dir("failover");
    let db = postgres.fresh_schema_url();
    let lease = lease_ms();
    let threads = ["--threads", "1"];
    let mut members = Members::start(&db, &dir, MEMBERS, lease, &threads).await;
    let list = members.address_list();
    let worker = common::spawn_worker(&list, 1_000);
    let kills = if smoke { MEMBERS } else { KILLS };
    let runs: InFlight = Arc::default();
    // Lanes run until well after the last kill; the kills end them early.
    let until = Instant::now() + Duration::from_secs(3_600);
    let lanes: Vec<_> = (0..FAILOVER_LANES)
        .map(|i| {
            let lane = lane(
                client(&list),
                format!("bg-{i}"),
                FAILOVER_STEPS,
                until,
                runs.clone(),
            );
            tokio::spawn(lane)
        })
        .collect();
    let (mut held, mut probes, mut in_flight) = (Vec::new(), Vec::new(), Vec::new());
    for kill in 0..kills {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let measured = kill_once(&mut members, kill, &list, &runs).await;
        let worst = |samples: &[Duration]| samples.iter().max().copied().unwrap_or_default();
        println!(
            "kill {kill} (member {}): its {} shards held by others after at most {:?}, served \
             (a probe's result) after at most {:?}; {} runs were in flight on them",
            kill % MEMBERS,
            measured.probes.len(),
            worst(&measured.takeovers),
            worst(&measured.probes),
            measured.in_flight.len()
        );
        held.extend(measured.takeovers);
        probes.extend(measured.probes);
        in_flight.extend(measured.in_flight);
    }
    for lane in lanes {
        lane.abort();
    }
    drop(worker);
    let (held_p50, held_p99, held_max) = percentiles(&mut held);
    let (p50, p99, max) = percentiles(&mut probes);
    let (run_p50, run_p99, run_max) = percentiles(&mut in_flight);
    println!(
        "failover ({kills} kills, {lease} ms leases, {} shard samples): a shard of the killed \
         member was held by another after p50 {held_p50:.0} ms, p99 {held_p99:.0} ms, max \
         {held_max:.0} ms; a probe started on it at the kill returned after p50 {p50:.0} ms, \
         p99 {p99:.0} ms, max {max:.0} ms; the {} runs in flight on it completed after p50 \
         {run_p50:.0} ms, p99 {run_p99:.0} ms, max {run_max:.0} ms",
        probes.len(),
        in_flight.len()
    );
    json!({"kills": kills, "lease_ms": lease, "shard_samples": probes.len(),
           "held_p50_ms": held_p50, "held_p99_ms": held_p99, "held_max_ms": held_max,
           "probe_p50_ms": p50, "probe_p99_ms": p99, "probe_max_ms": max,
           "run_samples": in_flight.len(), "run_p50_ms": run_p50, "run_p99_ms": run_p99,
           "run_max_ms": run_max})
}

/// W10 against `list` for `duration`: workflows/s and p50/p99 ms.
async fn w10(list: &str, duration: Duration) -> (f64, f64, f64) {
    let worker = common::spawn_worker(list, 1_000);
    let started = Instant::now();
    let until = started + duration;
    let runs: InFlight = Arc::default();
    let lanes: Vec<_> = (0..W10_LANES)
        .map(|i| {
            let lane = lane(
                client(list),
                format!("w10-{i}"),
                W10_STEPS,
                until,
                runs.clone(),
            );
            tokio::spawn(lane)
        })
        .collect();
    let mut samples = Vec::new();
    for lane in lanes {
        samples.extend(lane.await.expect("a lane panicked"));
    }
    let wall_s = started.elapsed().as_secs_f64();
    drop(worker);
    let (p50, p99, _) = percentiles(&mut samples);
    (samples.len() as f64 / wall_s, p50, p99)
}

/// Where the servers log: `RETRACE_BENCH_LOGS` if set (kept), else a
/// temporary directory.
fn log_dir(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let temporary = tempfile::tempdir().expect("a temp dir");
    let path = match std::env::var_os("RETRACE_BENCH_LOGS") {
        Some(dir) => std::path::PathBuf::from(dir).join(name),
        None => temporary.path().to_path_buf(),
    };
    std::fs::create_dir_all(&path).expect("the log directory can be made");
    (temporary, path)
}

/// W10 on one plain Postgres server, then on 1, 2 and 3 cluster members.
async fn throughput(postgres: &PgCluster, smoke: bool) -> serde_json::Value {
    let duration = Duration::from_millis(if smoke { 1_500 } else { 20_000 });
    let threads = ["--threads", "1"];
    let db = postgres.fresh_schema_url();
    let (_temporary, dir) = log_dir("throughput");
    let log = dir.join("single.log");
    let single = common::ServerProcess::start_with(
        std::path::Path::new(&db),
        common::free_port(),
        &log,
        &threads,
    )
    .await;
    let mut figures = vec![("single", w10(&single.url(), duration).await)];
    drop(single);
    for count in 1..=MEMBERS {
        let db = postgres.fresh_schema_url();
        let dir = dir.join(format!("members-{count}"));
        std::fs::create_dir_all(&dir).expect("the log directory can be made");
        let members = Members::start(&db, &dir, count, lease_ms(), &threads).await;
        members.settled().await;
        figures.push((
            ["", "1", "2", "3"][count],
            w10(&members.address_list(), duration).await,
        ));
    }
    let mut line = serde_json::Map::new();
    for (servers, (per_s, p50, p99)) in figures {
        println!(
            "W10, {servers:>6} server(s): {per_s:.0} workflows/s, p50 {p50:.1} ms, p99 {p99:.1} ms"
        );
        line.insert(
            format!("w10_{servers}"),
            json!({"workflows_per_s": per_s, "p50_ms": p50, "p99_ms": p99}),
        );
    }
    serde_json::Value::Object(line)
}

async fn run(smoke: bool) -> serde_json::Value {
    let postgres = PgCluster::start().expect("Postgres (initdb, pg_ctl) is installed");
    let part = std::env::var("RETRACE_BENCH_PART").unwrap_or_default();
    let failover = match part.as_str() {
        "" | "failover" => failover(&postgres, smoke).await,
        _ => serde_json::Value::Null,
    };
    let throughput = match part.as_str() {
        "" | "throughput" => throughput(&postgres, smoke).await,
        _ => serde_json::Value::Null,
    };
    json!({"bench": "failover", "smoke": smoke, "failover": failover, "throughput": throughput})
}

fn main() {
    common::run_worker_if_asked();
    println!("{}", common::runtime().block_on(run(common::smoke())));
}
