//! The cluster of one run: a service node, worker nodes, a client node, as
//! madsim nodes that can crash, restart and pause; and the fault injector that
//! plays a fault plan against them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::runtime::{Handle, NodeHandle};
use retrace::api::{ActivityTask, ActivityTaskResult};
use retrace::engine::{Service, ServiceConfig};
use retrace::types::Timestamp;
use retrace::worker::{Worker, WorkerBuilder, WorkerObserver, WorkerOptions};
use retrace::workflow::StateDigest;
use retrace::workflow::WorkflowRegistry;

use crate::faults::{Fault, FaultKind, FaultPlan};
use crate::nodes::{CLIENT, SERVICE, is_service, service_name, worker_name};
use crate::world::storage::StorageFaults;
use crate::world::{World, lock};

/// Installs one activity on a worker node's builder.
pub type Installer = Arc<dyn Fn(&NodeCtx, WorkerBuilder) -> WorkerBuilder + Send + Sync>;
/// Adjusts a worker's options.
pub type OptionsFn = Arc<dyn Fn(&mut WorkerOptions) + Send + Sync>;

/// A redeploy of every worker with new workflow code, at a simulated time.
#[derive(Clone)]
pub struct Upgrade {
    /// Milliseconds after the seed's world began.
    pub at_ms: u64,
    /// The workflow code the workers run from then on.
    pub registry: WorkflowRegistry,
}

/// What the service and worker nodes run.
#[derive(Clone)]
pub struct NodeSpec {
    /// The workflow code workers start with.
    pub registry: WorkflowRegistry,
    /// Redeploys, in time order: a worker (re)started at or after an
    /// upgrade's time runs its code.
    pub upgrades: Vec<Upgrade>,
    pub activities: Vec<Installer>,
    pub workers: usize,
    pub task_queue: String,
    pub worker_options: OptionsFn,
    pub service_config: ServiceConfig,
}

impl Default for NodeSpec {
    fn default() -> NodeSpec {
        NodeSpec {
            registry: WorkflowRegistry::new(),
            upgrades: Vec::new(),
            activities: Vec::new(),
            workers: 2,
            task_queue: "sim".to_string(),
            worker_options: Arc::new(|_| {}),
            service_config: ServiceConfig::default(),
        }
    }
}

impl NodeSpec {
    /// The workflow code a worker started at `elapsed_ms` runs.
    pub fn registry_at(&self, elapsed_ms: u64) -> &WorkflowRegistry {
        debug_assert!(self.upgrades.is_sorted_by_key(|u| u.at_ms));
        self.upgrades
            .iter()
            .rev()
            .find(|upgrade| upgrade.at_ms <= elapsed_ms)
            .map_or(&self.registry, |upgrade| &upgrade.registry)
    }

    /// The newest workflow code (what histories are replayed against).
    pub fn registry_last(&self) -> &WorkflowRegistry {
        self.upgrades.last().map_or(&self.registry, |u| &u.registry)
    }
}

/// What a worker node's code gets: its name and the world (for services).
#[derive(Clone)]
pub struct NodeCtx {
    world: Arc<World>,
    name: String,
}

impl NodeCtx {
    /// The node's name (`worker-0`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A client of simulated service `service`, calling from this node.
    pub fn service(&self, service: &str) -> crate::world::services::ServiceClient {
        crate::world::services::ServiceClient::new(self.world.clone(), &self.name, service)
    }

    /// The node's engine environment (its clock, for activities that wait).
    pub fn env(&self) -> retrace::env::Env {
        self.world.env(&self.name)
    }
}

/// How the service answered workers' speculative workflow tasks in a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Speculations {
    /// Recorded with their activity's result, in one write.
    pub taken: u64,
    /// Refused (the history had moved on, or the clocks disagreed).
    pub refused: u64,
}

/// One activity attempt as the worker that ran it saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptSeen {
    /// The worker node that ran it (the first, if it reached several).
    pub node: String,
    /// When the service started it, on the service's clock (from the task).
    pub started_time: Timestamp,
    /// Heartbeats the attempt sent.
    pub heartbeats: u32,
    /// How the attempt said it ended (`None`: it never reported).
    pub result: Option<ActivityTaskResult>,
}

/// An attempt: (run id, scheduled event id, attempt number).
pub type AttemptKey = (String, u64, u32);

/// Live observations the checkers need.
#[derive(Default)]
pub struct Observed {
    /// Every activity attempt a worker ran.
    pub attempts: Mutex<BTreeMap<AttemptKey, AttemptSeen>>,
    /// Answers that handed a worker more tasks than it offered room for.
    pub handed_violations: Mutex<Vec<String>>,
    /// The executor's digest when its code closed the run, by run id.
    pub final_digests: Mutex<BTreeMap<String, StateDigest>>,
    /// Capacity violations seen while activities ran.
    pub capacity_violations: Mutex<Vec<String>>,
    /// Speculative workflow tasks the service took and refused.
    pub speculations: Mutex<Speculations>,
    /// Every local activity attempt a worker started.
    pub local_attempts: Mutex<Vec<LocalAttemptSeen>>,
}

/// A local activity attempt as a worker started it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalAttemptSeen {
    pub run_id: String,
    /// The local activity's sequence number in its run (its marker's `seq`).
    pub seq: u64,
    pub attempt: u32,
    /// The `WorkflowTaskStarted` of the task that ran it: the worker knew
    /// the history up to there.
    pub task_started_event_id: u64,
    pub node: String,
}

/// One worker incarnation's observer.
pub(crate) struct NodeObserver {
    observed: Arc<Observed>,
    node: String,
    running: AtomicUsize,
    activities_max: usize,
}

impl NodeObserver {
    /// The observer of worker `node`, which runs at most `activities_max` activities.
    pub(crate) fn new(observed: Arc<Observed>, node: &str, activities_max: usize) -> NodeObserver {
        NodeObserver {
            observed,
            node: node.to_string(),
            running: AtomicUsize::new(0),
            activities_max,
        }
    }
}

impl WorkerObserver for NodeObserver {
    fn workflow_task_completed(&self, run_id: &str, digest: StateDigest, closed: bool) {
        if closed {
            lock(&self.observed.final_digests).insert(run_id.to_string(), digest);
        }
    }

    fn activity_started(&self, task: &ActivityTask) {
        let seen = AttemptSeen {
            node: self.node.clone(),
            started_time: task.started_time,
            heartbeats: 0,
            result: None,
        };
        lock(&self.observed.attempts)
            .entry(attempt_key(task))
            .or_insert(seen);
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        if running > self.activities_max {
            let message = format!(
                "{} runs {running} activities at once (limit {}) when starting {}/{}",
                self.node, self.activities_max, task.run_id, task.activity_id
            );
            lock(&self.observed.capacity_violations).push(message);
        }
    }

    fn activity_finished(&self, _task: &ActivityTask) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }

    fn activity_heartbeat_sent(&self, task: &ActivityTask) {
        if let Some(seen) = lock(&self.observed.attempts).get_mut(&attempt_key(task)) {
            seen.heartbeats += 1;
        }
    }

    fn activity_result_sent(&self, task: &ActivityTask, result: &ActivityTaskResult) {
        if let Some(seen) = lock(&self.observed.attempts).get_mut(&attempt_key(task))
            && seen.result.is_none()
        {
            seen.result = Some(result.clone());
        }
    }

    fn tasks_handed(&self, run_id: &str, kind: &'static str, room: usize, handed: usize) {
        if handed > room {
            let message = format!(
                "the service handed {} {handed} {kind} tasks of run {run_id} with room for {room}",
                self.node
            );
            lock(&self.observed.handed_violations).push(message);
        }
    }

    fn local_activity_started(
        &self,
        task: &retrace::api::TaskToken,
        request: &retrace::workflow::LocalActivityRequest,
        attempt: u32,
    ) {
        lock(&self.observed.local_attempts).push(LocalAttemptSeen {
            run_id: task.run_id.clone(),
            seq: request.seq,
            attempt,
            task_started_event_id: task.started_event_id,
            node: self.node.clone(),
        });
    }

    fn speculative_workflow_task(&self, _run_id: &str, taken: bool) {
        let mut speculations = lock(&self.observed.speculations);
        if taken {
            speculations.taken += 1;
        } else {
            speculations.refused += 1;
        }
    }
}

fn attempt_key(task: &ActivityTask) -> AttemptKey {
    let token = &task.task_token;
    (
        token.run_id.clone(),
        token.scheduled_event_id,
        token.attempt,
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum NodeState {
    Up,
    /// Down since the fault with this number.
    Down(u64),
}

/// The nodes of a run and their state.
pub struct Cluster {
    pub world: Arc<World>,
    pub observed: Arc<Observed>,
    nodes: BTreeMap<String, NodeHandle>,
    /// Carries the network's messages in flight.
    net_node: NodeHandle,
    /// Tasks on the main node (fault injection and undo), ended by `shut_down`.
    main_tasks: Mutex<Vec<madsim::task::JoinHandle<()>>>,
    states: Mutex<BTreeMap<String, NodeState>>,
    paused: Mutex<BTreeMap<String, u64>>,
    next_fault: AtomicUsize,
}

impl Cluster {
    /// Starts the net, service, worker and client nodes.
    pub fn start(world: Arc<World>, setup: Arc<NodeSpec>) -> Arc<Cluster> {
        let handle = Handle::current();
        let net = handle.create_node().name("net").build();
        world.net.set_net_node(net.clone());
        let observed = Arc::new(Observed::default());
        let mut nodes = BTreeMap::new();
        for index in 0..world.swarm.services {
            let name = service_name(index);
            let config = service_config(&world, &setup.service_config, &name);
            let service = start_service_node(&handle, &world, config, &name);
            nodes.insert(name, service);
        }
        for index in 0..setup.workers {
            let node = start_worker_node(&handle, &world, &setup, &observed, index);
            nodes.insert(worker_name(index), node);
        }
        nodes.insert(
            CLIENT.to_string(),
            handle.create_node().name(CLIENT).build(),
        );
        for name in nodes.keys() {
            let (skew_ms, drift_ppm) = world.swarm.clock_of(name);
            if skew_ms != 0 || drift_ppm != 0 {
                let detail = format!("{name} reads {skew_ms:+} ms, drifts {drift_ppm:+} ppm");
                world.record_fault("clock:skew", detail, None);
            }
        }
        let states = nodes
            .keys()
            .map(|name| (name.clone(), NodeState::Up))
            .collect();
        Arc::new(Cluster {
            world,
            observed,
            nodes,
            net_node: net,
            main_tasks: Mutex::new(Vec::new()),
            states: Mutex::new(states),
            paused: Mutex::new(BTreeMap::new()),
            next_fault: AtomicUsize::new(1),
        })
    }

    /// The client node, where scenarios run.
    pub fn client_node(&self) -> &NodeHandle {
        &self.nodes[CLIENT]
    }

    fn node(&self, name: &str) -> &NodeHandle {
        &self.nodes[name]
    }

    /// Kills node `name` (its tasks end at once; unsynced writes are lost).
    fn crash(&self, name: &str, fault: u64) -> bool {
        let mut states = lock(&self.states);
        if states.get(name) != Some(&NodeState::Up) {
            return false;
        }
        states.insert(name.to_string(), NodeState::Down(fault));
        drop(states);
        if is_service(name) {
            self.world.net.unregister(name);
            self.world.service_down();
        }
        Handle::current().kill(self.node(name).id());
        true
    }

    /// Restarts node `name` if it is still down from fault `fault` (any fault if `None`).
    fn restart(&self, name: &str, fault: Option<u64>) {
        let mut states = lock(&self.states);
        match states.get(name) {
            Some(NodeState::Down(down)) if fault.is_none_or(|f| f == *down) => {
                states.insert(name.to_string(), NodeState::Up);
            }
            _ => return,
        }
        drop(states);
        lock(&self.paused).remove(name);
        Handle::current().restart(self.node(name).id());
    }

    /// Kills the service and, while it is down, tears one run's row.
    fn crash_tearing_a_row(&self, fault: u64) -> bool {
        if !self.crash(SERVICE, fault) {
            return false;
        }
        let run_id = self.world.storage.tear_a_row(fault);
        self.world.record_fault(
            "storage:torn_row",
            format!("{run_id}: its state is cut short"),
            Some(&run_id),
        );
        true
    }

    fn pause(&self, name: &str, fault: u64) -> bool {
        if lock(&self.states).get(name) != Some(&NodeState::Up)
            || lock(&self.paused).contains_key(name)
        {
            return false;
        }
        lock(&self.paused).insert(name.to_string(), fault);
        Handle::current().pause(self.node(name).id());
        true
    }

    fn resume(&self, name: &str, fault: Option<u64>) {
        let mut paused = lock(&self.paused);
        match paused.get(name) {
            Some(f) if fault.is_none_or(|x| x == *f) => {
                paused.remove(name);
            }
            _ => return,
        }
        drop(paused);
        Handle::current().resume(self.node(name).id());
    }

    /// Plays `plan` (spawned on the supervisor).
    /// Starts injecting `plan`'s faults, each at its time, from a task on the
    /// current node.
    pub fn start_injecting(self: &Arc<Self>, plan: FaultPlan) {
        let task = madsim::task::spawn(self.clone().inject(plan));
        lock(&self.main_tasks).push(task);
    }

    /// Redeploys the workers at each upgrade's time, all at once: every
    /// worker that is up or paused restarts with the new code (a worker down
    /// gets it when it restarts). All at once, because a rolling deploy lets
    /// an old worker replay a history the new code wrote, which fails with
    /// non-determinism even for a correctly patched change.
    pub fn start_upgrades(self: &Arc<Self>, upgrades: &[Upgrade]) {
        for (index, upgrade) in upgrades.iter().enumerate() {
            let (cluster, at_ms) = (self.clone(), upgrade.at_ms);
            let task = madsim::task::spawn(async move {
                madsim::time::sleep_until(cluster.world.start + Duration::from_millis(at_ms)).await;
                cluster.redeploy(index + 1);
            });
            lock(&self.main_tasks).push(task);
        }
    }

    fn redeploy(&self, version: usize) {
        let workers = self.nodes.keys().filter(|n| n.starts_with("worker-"));
        for name in workers {
            let up = lock(&self.states).get(name) == Some(&NodeState::Up);
            let detail = if up {
                if lock(&self.paused).remove(name).is_some() {
                    Handle::current().resume(self.node(name).id());
                }
                Handle::current().restart(self.node(name).id());
                format!("{name} restarts with workflow code v{version}")
            } else {
                format!("{name} is down: it starts with v{version} when it restarts")
            };
            self.world.record_fault("deploy", detail, None);
        }
    }

    /// Ends the run's world: aborts the fault tasks and kills every node, so
    /// their tasks (pollers, timer loops, messages in flight) are dropped now.
    /// madsim does not drop a task still pending when its runtime is dropped
    /// (madsim-rs/madsim#242), so without this each seed leaked every
    /// long-lived task and all it held: 170-400 KB a seed, gigabytes a campaign.
    pub fn shut_down(&self) {
        for task in lock(&self.main_tasks).drain(..) {
            task.abort();
        }
        let handle = Handle::current();
        for node in self.nodes.values() {
            handle.kill(node.id());
        }
        handle.kill(self.net_node.id());
        self.world.shut_down();
        assert!(lock(&self.main_tasks).is_empty());
    }

    async fn inject(self: Arc<Self>, plan: FaultPlan) {
        for fault in plan.in_time_order() {
            let at = self.world.start + Duration::from_millis(fault.at_ms);
            madsim::time::sleep_until(at).await;
            if !self.world.faults_enabled() {
                return;
            }
            self.apply(&fault);
        }
    }

    fn apply(self: &Arc<Self>, fault: &Fault) {
        let number = self.next_fault.fetch_add(1, Ordering::SeqCst) as u64;
        let (applied, undo_after_ms) = match &fault.kind {
            FaultKind::CrashWorker { worker, down_ms } => {
                (self.crash(&worker_name(*worker), number), *down_ms)
            }
            FaultKind::CrashService { down_ms } => (self.crash(SERVICE, number), *down_ms),
            FaultKind::TornRow { down_ms } => (self.crash_tearing_a_row(number), *down_ms),
            FaultKind::Partition {
                from,
                to,
                one_way,
                duration_ms,
            } => {
                self.world.net.cut(&from.name(), &to.name(), *one_way);
                (true, *duration_ms)
            }
            FaultKind::Clog { a, b, duration_ms } => {
                self.world.net.clog(&a.name(), &b.name());
                (true, *duration_ms)
            }
            FaultKind::PauseWorker {
                worker,
                duration_ms,
            } => (self.pause(&worker_name(*worker), number), *duration_ms),
            FaultKind::CrashServiceNode { service, down_ms } => {
                (self.crash(&service_name(*service), number), *down_ms)
            }
            FaultKind::PauseService {
                service,
                duration_ms,
            } => (self.pause(&service_name(*service), number), *duration_ms),
            FaultKind::CutFromStorage {
                service,
                duration_ms,
            } => {
                self.world
                    .storage
                    .set_cut_off(&service_name(*service), true);
                (true, *duration_ms)
            }
            FaultKind::StorageTrouble {
                duration_ms,
                io_error_percent,
                ambiguous_percent,
            } => {
                let faults = StorageFaults {
                    io_error_rate: f64::from(*io_error_percent) / 100.0,
                    ambiguous_rate: f64::from(*ambiguous_percent) / 100.0,
                    latency_ms_max: self.world.swarm.storage_latency_ms_max,
                    stall_rate: self.world.swarm.storage_stall_rate,
                };
                self.world.storage.set_faults(faults, true);
                (true, *duration_ms)
            }
        };
        if !applied {
            return;
        }
        self.world
            .record_fault(fault.kind.name(), fault.kind.to_string(), None);
        let cluster = self.clone();
        let kind = fault.kind.clone();
        let task = madsim::task::spawn(async move {
            madsim::time::sleep(Duration::from_millis(undo_after_ms)).await;
            cluster.undo(&kind, number);
        });
        lock(&self.main_tasks).push(task);
    }

    fn undo(&self, kind: &FaultKind, number: u64) {
        match kind {
            FaultKind::CrashWorker { worker, .. } => {
                self.restart(&worker_name(*worker), Some(number))
            }
            FaultKind::CrashService { .. } | FaultKind::TornRow { .. } => {
                self.restart(SERVICE, Some(number))
            }
            FaultKind::Partition { from, to, .. } => {
                self.world.net.repair(&from.name(), &to.name())
            }
            FaultKind::Clog { a, b, .. } => self.world.net.repair(&a.name(), &b.name()),
            FaultKind::PauseWorker { worker, .. } => {
                self.resume(&worker_name(*worker), Some(number))
            }
            FaultKind::CrashServiceNode { service, .. } => {
                self.restart(&service_name(*service), Some(number))
            }
            FaultKind::PauseService { service, .. } => {
                self.resume(&service_name(*service), Some(number))
            }
            FaultKind::CutFromStorage { service, .. } => self
                .world
                .storage
                .set_cut_off(&service_name(*service), false),
            FaultKind::StorageTrouble { .. } => {
                let on = self.world.faults_enabled();
                self.world
                    .storage
                    .set_faults(self.world.swarm_storage_faults(), on);
            }
        }
    }

    /// Ends the safety phase: every fault off, every node up and running.
    pub fn heal(&self) {
        self.world.faults_on.store(false, Ordering::SeqCst);
        self.world.net.heal();
        self.world
            .storage
            .set_faults(StorageFaults::default(), false);
        self.world.storage.join_all();
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in &names {
            self.resume(name, None);
            self.restart(name, None);
        }
    }
}

/// Service node `name`'s configuration: a cluster member's when the world
/// has several, with leases short enough to move during a seed.
fn service_config(world: &World, base: &ServiceConfig, name: &str) -> ServiceConfig {
    let mut config = base.clone();
    if world.swarm.services > 1 {
        config.cluster = Some(retrace::engine::ClusterConfig {
            lease_ms: CLUSTER_LEASE_MS,
            renew_ms: CLUSTER_LEASE_MS / 5,
            margin_ms: CLUSTER_LEASE_MS / 5,
            ..retrace::engine::ClusterConfig::new(name, name)
        });
    }
    config
}

/// Lease length of a simulated cluster's services.
pub const CLUSTER_LEASE_MS: u64 = 2_000;

fn start_service_node(
    handle: &Handle,
    world: &Arc<World>,
    config: ServiceConfig,
    name: &str,
) -> NodeHandle {
    let registry = world.clone();
    let world = world.clone();
    let node_name = name.to_string();
    let node = handle
        .create_node()
        .name(name)
        .init(move || {
            let (world, config, name) = (world.clone(), config.clone(), node_name.clone());
            async move {
                let env = world.env(&name);
                let storage: Arc<dyn retrace::env::Storage> = match world.swarm.services {
                    1 => Arc::new(world.storage.clone()),
                    _ => Arc::new(world.storage.for_node(&name)),
                };
                let metrics = world.new_service_metrics();
                let service = loop {
                    let started = Service::start_with_metrics(
                        env.clone(),
                        storage.clone(),
                        config.clone(),
                        metrics.clone(),
                    );
                    match started.await {
                        Ok(service) => break service,
                        Err(error) => {
                            tracing::debug!(%error, "service start failed; retrying");
                            madsim::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                };
                // The node's current handle: a handle taken before a restart
                // spawns onto the dead incarnation.
                let id = world
                    .node_handle(&name)
                    .expect("the service node is registered before it runs")
                    .id();
                let node = Handle::current()
                    .get_node(id)
                    .expect("the service node exists");
                world.net.register(&name, service.handler(), node);
                world.service_recovered(service.quarantined());
                futures::future::pending::<()>().await;
            }
        })
        .build();
    registry.set_node_handle(name, node.clone());
    node
}

fn start_worker_node(
    handle: &Handle,
    world: &Arc<World>,
    setup: &Arc<NodeSpec>,
    observed: &Arc<Observed>,
    index: usize,
) -> NodeHandle {
    let (world, setup, observed) = (world.clone(), setup.clone(), observed.clone());
    let name = worker_name(index);
    let node_name = name.clone();
    handle
        .create_node()
        .name(&name)
        .init(move || {
            let (world, setup, observed, name) = (
                world.clone(),
                setup.clone(),
                observed.clone(),
                node_name.clone(),
            );
            async move {
                let ctx = NodeCtx {
                    world: world.clone(),
                    name: name.clone(),
                };
                let mut options = WorkerOptions::new(&setup.task_queue);
                options.identity = name.clone();
                (setup.worker_options)(&mut options);
                let observer = Arc::new(NodeObserver::new(observed, &name, options.activities_max));
                let registry = setup.registry_at(world.elapsed_ms()).clone();
                let mut builder = Worker::builder(world.env(&name), &setup.task_queue)
                    .workflows(registry)
                    .options(|o| *o = options)
                    .observer(observer);
                for activity in &setup.activities {
                    builder = activity(&ctx, builder);
                }
                let _worker = builder.start();
                futures::future::pending::<()>().await;
            }
        })
        .build()
}
