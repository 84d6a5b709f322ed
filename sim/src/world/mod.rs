//! The simulated world shared by every node of one seed's run: the swarm
//! options, the network, storage, external services, the trace, and the
//! per-node pieces of the engine's `Env` (clock with skew and drift, entropy,
//! spawner, BUGGIFY).

#[cfg(test)]
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use madsim::rand::Rng;
use retrace::engine::metrics::{Metrics, MetricsSnapshot};
use retrace::env::{BoxFuture, Clock, Entropy, Env, Faults, Spawner};
use retrace::types::{Fnv1a64, Timestamp, fnv1a64};

pub mod cluster;
pub mod net;
pub mod services;
pub mod storage;

use crate::faults::swarm::Swarm;
use crate::faults::trace::{FaultEvent, FaultTrace};
use net::{SimNet, SimNetwork};
use services::ServiceHost;
use storage::SimStorage;

/// Locks a mutex of the world (never poisoned: a panic ends the seed).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .expect("world locks are never held across a panic")
}

/// A running hash of what happened, to prove a seed replays identically.
#[derive(Debug, Default)]
pub struct Trace {
    hash: u64,
    entries: u64,
}

impl Trace {
    /// The new hash is FNV-1a of the old hash, the time and what `what`
    /// feeds the hasher, in that order.
    fn record(&mut self, now_ms: u64, what: impl FnOnce(&mut Fnv1a64)) {
        let mut hasher = Fnv1a64::new();
        hasher.update(&self.hash.to_le_bytes());
        hasher.update(&now_ms.to_le_bytes());
        what(&mut hasher);
        self.hash = hasher.finish();
        self.entries += 1;
    }
}

/// A digest of everything a history holds: its ids and events, as compact
/// JSON, hashed eight bytes at a time (a byte-wise FNV of the pretty JSON
/// cost a tenth of a `small` seed).
fn history_digest(history: &retrace::history::History) -> u64 {
    let content = (history.workflow_id(), history.run_id(), history.events());
    let json = serde_json::to_vec(&content).expect("history types always encode");
    words_hash(&json)
}

/// A 64-bit hash of `bytes`, a word at a time (multiply and rotate, as
/// FNV-1a does per byte); stable across builds and platforms.
fn words_hash(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().expect("chunks of eight"));
        hash = (hash ^ word).wrapping_mul(PRIME).rotate_left(29);
    }
    for byte in words.remainder() {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(PRIME);
    }
    hash
}

/// Shards of a simulated cluster's storage (few, so they move often).
pub const CLUSTER_SHARDS: u32 = 8;

/// Counts of faults injected, by kind.
pub type FaultCounts = BTreeMap<String, u64>;

/// Everything one seed's run shares.
pub struct World {
    pub seed: u64,
    pub swarm: Swarm,
    pub net: SimNet,
    pub storage: SimStorage,
    pub services: ServiceHost,
    /// Faults (crashes, partitions, BUGGIFY, storage, network) happen only
    /// while this is on: the safety phase.
    pub faults_on: AtomicBool,
    trace: Mutex<Trace>,
    fault_trace: Arc<FaultTrace>,
    buggify_sites: Mutex<BTreeMap<&'static str, bool>>,
    /// Draws taken from each fault stream (see `chance`).
    streams: Mutex<BTreeMap<String, u64>>,
    node_handles: Mutex<BTreeMap<String, madsim::runtime::NodeHandle>>,
    /// The runs the service's incarnation that is up set aside when it
    /// recovered (`None` while it is down or recovering).
    quarantined: Mutex<Option<BTreeMap<String, String>>>,
    /// The metrics of every incarnation of the service, oldest first.
    service_metrics: Mutex<Vec<Arc<Metrics>>>,
    /// Clock waits begun and tasks spawned by any node (steps of the budget).
    waits_and_spawns: AtomicU64,
    /// The seed's step budget (see `set_steps_max`).
    steps_max: AtomicU64,
    /// Simulated time at which the run began (the clocks' origin).
    pub start: madsim::time::Instant,
    start_time: SystemTime,
}

#[cfg(test)]
thread_local! {
    /// Worlds alive on this thread (a seed's world runs on the thread that
    /// runs the seed): after a seed it must be back to what it was, or the
    /// world leaked with everything it holds.
    static WORLDS_LIVE: Cell<usize> = const { Cell::new(0) };
}

/// Seeds whose thread still held a world after its runtime was dropped.
#[cfg(test)]
static LEAKED_WORLDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Worlds alive on this thread now (0 outside test builds).
pub fn worlds_live() -> usize {
    #[cfg(test)]
    return WORLDS_LIVE.with(Cell::get);
    #[cfg(not(test))]
    0
}

/// Called on a seed's thread once its runtime is gone: every world the seed
/// made must have been freed with everything it holds, so as many live as
/// before it (`before`, from [`worlds_live`]): a thread runs many seeds.
pub fn count_leaked_worlds(before: usize) {
    #[cfg(test)]
    if WORLDS_LIVE.with(Cell::get) != before {
        LEAKED_WORLDS.fetch_add(1, Ordering::SeqCst);
    }
    let _ = before;
}

/// Seeds (of any test in this process) that leaked their world.
#[cfg(test)]
pub fn leaked_worlds() -> usize {
    LEAKED_WORLDS.load(Ordering::SeqCst)
}

#[cfg(test)]
impl Drop for World {
    fn drop(&mut self) {
        WORLDS_LIVE.with(|live| {
            assert!(live.get() > 0, "a world is counted before it drops");
            live.set(live.get() - 1);
        });
    }
}

impl World {
    pub fn new(seed: u64, swarm: Swarm) -> Arc<World> {
        #[cfg(test)]
        WORLDS_LIVE.with(|live| live.set(live.get() + 1));
        let time = madsim::time::TimeHandle::current();
        let fault_trace = Arc::new(FaultTrace::default());
        let storage = match swarm.services {
            1 => SimStorage::new(),
            _ => SimStorage::with_shards(CLUSTER_SHARDS),
        };
        storage.attach_fault_trace(fault_trace.clone(), time.now_instant());
        Arc::new(World {
            seed,
            net: SimNet::new(&swarm),
            storage,
            services: ServiceHost::default(),
            swarm,
            faults_on: AtomicBool::new(true),
            trace: Mutex::new(Trace::default()),
            fault_trace,
            buggify_sites: Mutex::new(BTreeMap::new()),
            streams: Mutex::new(BTreeMap::new()),
            node_handles: Mutex::new(BTreeMap::new()),
            quarantined: Mutex::new(None),
            service_metrics: Mutex::new(Vec::new()),
            waits_and_spawns: AtomicU64::new(0),
            steps_max: AtomicU64::new(u64::MAX),
            start: time.now_instant(),
            start_time: time.now_time(),
        })
    }

    /// Drops what the run's nodes registered in the world (network endpoints,
    /// node handles): they refer back to the world, so it could not be freed.
    pub fn shut_down(&self) {
        self.net.shut_down();
        lock(&self.node_handles).clear();
    }

    /// Notes that an incarnation of the service recovered and set aside
    /// `quarantined` (the world keeps no handle on the service itself: its
    /// lifetime is its node's).
    pub fn service_recovered(&self, quarantined: BTreeMap<String, String>) {
        *lock(&self.quarantined) = Some(quarantined);
    }

    /// The metrics a new incarnation of the service counts into (kept
    /// after it dies: the checks add every incarnation's counts up).
    pub fn new_service_metrics(&self) -> Arc<Metrics> {
        let metrics = Arc::new(Metrics::default());
        lock(&self.service_metrics).push(metrics.clone());
        metrics
    }

    /// What every incarnation of the service counted, oldest first.
    pub fn service_metrics(&self) -> Vec<MetricsSnapshot> {
        lock(&self.service_metrics)
            .iter()
            .map(|metrics| metrics.snapshot())
            .collect()
    }

    /// Notes that the service's node died.
    pub fn service_down(&self) {
        lock(&self.quarantined).take();
    }

    /// True while an incarnation of the service is up (it has recovered).
    pub fn service_up(&self) -> bool {
        lock(&self.quarantined).is_some()
    }

    /// The runs the service's incarnation that is up set aside when it
    /// recovered, with why; `None` if the service is down.
    pub fn quarantined(&self) -> Option<BTreeMap<String, String>> {
        lock(&self.quarantined).clone()
    }

    /// Remembers a node's handle (so its own code can find it).
    pub fn set_node_handle(&self, name: &str, node: madsim::runtime::NodeHandle) {
        lock(&self.node_handles).insert(name.to_string(), node);
    }

    /// The handle of node `name`.
    pub fn node_handle(&self, name: &str) -> Option<madsim::runtime::NodeHandle> {
        lock(&self.node_handles).get(name).cloned()
    }

    /// The storage fault rates the swarm asks for.
    pub fn swarm_storage_faults(&self) -> storage::StorageFaults {
        storage::StorageFaults {
            io_error_rate: self.swarm.storage_io_error_rate,
            ambiguous_rate: self.swarm.storage_ambiguous_rate,
            latency_ms_max: self.swarm.storage_latency_ms_max,
            stall_rate: self.swarm.storage_stall_rate,
        }
    }

    /// Milliseconds of simulated time since the run began.
    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Steps the seed has taken: messages sent, storage writes asked for,
    /// clock waits begun and tasks spawned. Deterministic, so a budget on it gives the same
    /// verdict on any machine.
    pub fn steps(&self) -> u64 {
        self.net.messages()
            + self.storage.write_attempts()
            + self.waits_and_spawns.load(Ordering::Relaxed)
    }

    /// Sets the seed's step budget: past it, every node's clock waits never
    /// end, so code that spins at one simulated instant (a timer refused and
    /// re-armed at its own passed deadline) stops, time moves again, and the
    /// supervisor gives the seed its `budget` verdict.
    pub fn set_steps_max(&self, steps_max: u64) {
        self.steps_max.store(steps_max, Ordering::Relaxed);
    }

    /// Clock waits begun and tasks spawned by any node.
    pub fn waits_and_spawns(&self) -> u64 {
        self.waits_and_spawns.load(Ordering::Relaxed)
    }

    fn over_budget(&self) -> bool {
        self.steps() > self.steps_max.load(Ordering::Relaxed)
    }

    /// Milliseconds of simulated time at which node `name`'s clock read `time`
    /// (the inverse of its skew and drift; clamped to the world's start).
    pub fn sim_ms_at(&self, name: &str, time: Timestamp) -> u64 {
        let (skew_ms, drift_ppm) = self.swarm.clock_of(name);
        let offset_ms = time.as_millis() as i128 - self.start_ms() - skew_ms as i128;
        let elapsed_ms = offset_ms * 1_000_000 / (1_000_000 + drift_ppm as i128);
        elapsed_ms.max(0) as u64
    }

    /// Records an event in the trace.
    pub fn trace(&self, what: &str) {
        let now_ms = self.elapsed_ms();
        lock(&self.trace).record(now_ms, |hasher| hasher.update(what.as_bytes()));
    }

    /// Records a history in the trace: the digest of its ids and events.
    pub fn trace_history(&self, history: &retrace::history::History) {
        let now_ms = self.elapsed_ms();
        let digest = history_digest(history);
        lock(&self.trace).record(now_ms, |hasher| hasher.update(&digest.to_le_bytes()));
    }

    /// The trace hash and number of entries so far.
    pub fn trace_hash(&self) -> (u64, u64) {
        let trace = lock(&self.trace);
        (trace.hash, trace.entries)
    }

    /// Records an injected fault in the fault trace (and the trace hash):
    /// `detail` says where (a link, a node), `run_id` the run it touched if known.
    pub fn record_fault(&self, kind: &str, detail: String, run_id: Option<&str>) {
        self.trace(&format!("fault {kind} {detail}"));
        self.fault_trace
            .record(self.elapsed_ms(), kind, detail, run_id);
    }

    /// Faults injected so far, by kind.
    pub fn fault_counts(&self) -> FaultCounts {
        self.fault_trace.counts()
    }

    /// Every fault injected so far, in time order, and how many were not kept.
    pub fn fault_events(&self) -> (Vec<FaultEvent>, u64) {
        self.fault_trace.events()
    }

    /// True during the safety phase.
    pub fn faults_enabled(&self) -> bool {
        self.faults_on.load(Ordering::SeqCst)
    }

    /// A draw with probability `p` from the fault stream `stream`, only while
    /// faults are on. Each kind of fault draws from its own stream (a hash of
    /// the seed, the stream's name and its count of draws), not from madsim's
    /// generator: turning one kind off while shrinking leaves the draws of the
    /// others, and madsim's schedule, as they were.
    pub fn chance(&self, stream: &str, p: f64) -> bool {
        if !self.faults_enabled() || p <= 0.0 {
            return false;
        }
        let count = {
            let mut streams = lock(&self.streams);
            // `get_mut` first: a stream's name is copied only at its first draw.
            let count = match streams.get_mut(stream) {
                Some(count) => count,
                None => streams.entry(stream.to_string()).or_default(),
            };
            *count += 1;
            *count
        };
        let mut hasher = Fnv1a64::new();
        hasher.update(&self.seed.to_le_bytes());
        hasher.update(&count.to_le_bytes());
        hasher.update(stream.as_bytes());
        let draw = splitmix64(hasher.finish());
        ((draw >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// Whether BUGGIFY site `site` fires now: a site is enabled for the whole
    /// seed with the swarm's probability (decided once, from the seed and the
    /// site's name), then fires with the swarm's fire probability.
    pub fn buggify_site(&self, site: &'static str, node: &str) -> bool {
        if !self.faults_enabled() || !self.swarm.buggify {
            return false;
        }
        let enabled = *lock(&self.buggify_sites).entry(site).or_insert_with(|| {
            let draw = fnv1a64(format!("{}:{site}", self.seed).as_bytes());
            (draw % 100) < 25
        });
        if enabled && self.chance(site, 0.25) {
            self.record_fault(&format!("buggify:{site}"), format!("on {node}"), None);
            return true;
        }
        false
    }

    /// The BUGGIFY sites the engine asked about, and whether each is enabled.
    pub fn buggify_sites(&self) -> BTreeMap<&'static str, bool> {
        lock(&self.buggify_sites).clone()
    }

    /// The engine's `Env` for node `name`, with its clock skew and drift.
    pub fn env(self: &Arc<World>, name: &str) -> Env {
        let (skew_ms, drift_ppm) = self.swarm.clock_of(name);
        Env {
            clock: Arc::new(SimClock {
                world: self.clone(),
                skew_ms,
                drift_ppm,
            }),
            entropy: Arc::new(SimEntropy),
            spawner: Arc::new(SimSpawner {
                world: self.clone(),
            }),
            network: self.network_of(name),
            faults: Arc::new(SimFaults {
                world: self.clone(),
                node: name.to_string(),
            }),
        }
    }

    /// Node `name`'s network: to the service, or over every service of a
    /// cluster (a service node itself reaches no one).
    fn network_of(self: &Arc<World>, name: &str) -> Arc<dyn retrace::env::Network> {
        if self.swarm.services == 1 {
            return Arc::new(SimNetwork::new(self.clone(), name));
        }
        let servers = (0..self.swarm.services)
            .map(|index| {
                let to = crate::nodes::service_name(index);
                let network = SimNetwork::to(self.clone(), name, &to);
                (to, Arc::new(network) as Arc<dyn retrace::env::Network>)
            })
            .collect();
        Arc::new(retrace::env::ClusterNetwork::new(servers))
    }

    fn start_ms(&self) -> i128 {
        self.start_time
            .duration_since(UNIX_EPOCH)
            .expect("madsim starts after 1970")
            .as_millis() as i128
    }
}

/// splitmix64's finaliser: spreads a hash's bits.
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A node's clock: simulated time plus a fixed skew and a drift.
struct SimClock {
    world: Arc<World>,
    skew_ms: i64,
    drift_ppm: i64,
}

impl SimClock {
    fn node_ms(&self, elapsed_ms: i128) -> i128 {
        let drift = elapsed_ms * self.drift_ppm as i128 / 1_000_000;
        self.world.start_ms() + elapsed_ms + drift + self.skew_ms as i128
    }
}

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        let elapsed_ms = self.world.start.elapsed().as_millis() as i128;
        Timestamp(self.node_ms(elapsed_ms).max(0) as u64)
    }

    fn sleep_until(&self, deadline: Timestamp) -> BoxFuture<'static, ()> {
        self.world.waits_and_spawns.fetch_add(1, Ordering::Relaxed);
        if self.world.over_budget() {
            return Box::pin(futures::future::pending());
        }
        // Invert node_ms: the simulated elapsed time at which this node's
        // clock reads `deadline` (rounded up, so sleeps never end early).
        let target = deadline.as_millis() as i128 - self.world.start_ms() - self.skew_ms as i128;
        let scale = 1_000_000 + self.drift_ppm as i128;
        let elapsed_ms = (target * 1_000_000 + scale - 1).div_euclid(scale).max(0);
        let mut at = self.world.start + Duration::from_millis(elapsed_ms as u64);
        while self.node_ms(at.duration_since(self.world.start).as_millis() as i128)
            < deadline.as_millis() as i128
        {
            at += Duration::from_millis(1);
        }
        Box::pin(madsim::time::sleep_until(at))
    }
}

/// Randomness from the simulation's seeded generator.
struct SimEntropy;

impl Entropy for SimEntropy {
    fn next_u64(&self) -> u64 {
        madsim::rand::thread_rng().r#gen()
    }
}

/// Spawns on the current node: a crash of the node ends its tasks. Past the
/// seed's step budget nothing more is spawned (a spawn is a step), so a loop
/// that spawns work at one simulated instant stops too.
struct SimSpawner {
    world: Arc<World>,
}

impl Spawner for SimSpawner {
    fn spawn(&self, _name: &'static str, future: BoxFuture<'static, ()>) {
        self.world.waits_and_spawns.fetch_add(1, Ordering::Relaxed);
        if self.world.over_budget() {
            return;
        }
        madsim::task::spawn(future);
    }
}

struct SimFaults {
    world: Arc<World>,
    node: String,
}

impl Faults for SimFaults {
    fn buggify(&self, site: &'static str) -> bool {
        self.world.buggify_site(site, &self.node)
    }
}

#[cfg(test)]
mod tests {
    use super::leaked_worlds;
    use crate::workloads;

    #[test]
    fn every_seed_frees_its_world_and_all_its_nodes_held() {
        for simulation in workloads::all() {
            let runner = simulation.into_runner();
            for seed in 0..3 {
                let result = runner.run_seed(seed);
                assert!(result.sim_ms > 0, "the seed ran");
                assert_eq!(
                    leaked_worlds(),
                    0,
                    "{} seed {seed} (or a seed of a test beside it) leaked its world",
                    runner.name()
                );
            }
        }
    }
}

#[cfg(test)]
mod digest_tests {
    use retrace::history::{EventKind, HistoryBuilder};
    use serde_json::json;

    use super::{history_digest, words_hash};

    #[test]
    fn the_history_digest_changes_with_any_byte_of_any_event() {
        let mut builder = HistoryBuilder::for_run("wf", "run-1", "pay", json!("input"));
        builder.add_full_workflow_task();
        let history = builder.build();
        let digest = history_digest(&history);
        assert_eq!(
            digest,
            history_digest(&history),
            "the same history, the same digest"
        );
        let mut events = history.events().to_vec();
        if let EventKind::WorkflowExecutionStarted(started) = &mut events[0].kind {
            started.input = json!("inpuT");
        }
        let changed = retrace::history::History::from_events("wf", "run-1", events).unwrap();
        assert_ne!(digest, history_digest(&changed));
    }

    #[test]
    fn the_words_hash_sees_every_byte_and_the_length() {
        let bytes = b"0123456789abcdef-tail";
        let base = words_hash(bytes);
        for index in 0..bytes.len() {
            let mut changed = bytes.to_vec();
            changed[index] ^= 1;
            assert_ne!(words_hash(&changed), base, "byte {index}");
        }
        assert_ne!(
            words_hash(&bytes[..16]),
            words_hash(&[&bytes[..16], &[0][..]].concat())
        );
    }
}
