//! Several services over one sharded storage, in one process: the shards
//! split over the members, any member takes any request (a client and a
//! worker given every member follow `NotOwner` to the owner), and a member
//! that leaves or loses its storage hands its shards over.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use retrace::activity::{Activity, ActivityContext, ActivityOptions, ActivityResult, RetryPolicy};
use retrace::client::{Client, StartOptions};
use retrace::engine::{ClusterConfig, Service, ServiceConfig};
use retrace::env::lease::{ClusterView, LeaseAnswer, LeaseRequest, Member, MemberBeat, shard_of};
use retrace::env::{
    BoxFuture, BufferedRead, ClusterNetwork, Env, InProcessNetwork, ListQuery, MemoryStorage,
    Network, RunRecord, Storage, StorageError, Unconnected, WriteBatch,
};
use retrace::history::Event;
use retrace::worker::Worker;
use retrace::workflow::{WorkflowContext, WorkflowRegistry};
use serde_json::json;

const SHARDS: u32 = 16;

fn config(node: &str) -> ServiceConfig {
    let cluster = ClusterConfig {
        lease_ms: 3_000,
        renew_ms: 500,
        margin_ms: 500,
        ..ClusterConfig::new(node, node)
    };
    ServiceConfig {
        cluster: Some(cluster),
        poll_timeout_ms: 1_000,
        ..ServiceConfig::default()
    }
}

/// A storage a test can cut one member off from (every call fails `Io`).
struct Cuttable {
    inner: MemoryStorage,
    cut: Arc<AtomicBool>,
}

impl Cuttable {
    fn check(&self) -> Result<(), StorageError> {
        match self.cut.load(Ordering::SeqCst) {
            true => Err(StorageError::Io("cut off from storage".into())),
            false => Ok(()),
        }
    }
}

impl Cuttable {
    /// `call` on the store, or `Io` while cut off.
    fn gate<'a, T: Send + 'a>(
        &'a self,
        call: impl FnOnce(&'a MemoryStorage) -> BoxFuture<'a, Result<T, StorageError>>,
    ) -> BoxFuture<'a, Result<T, StorageError>> {
        match self.check() {
            Ok(()) => call(&self.inner),
            Err(error) => Box::pin(async move { Err(error) }),
        }
    }
}

impl Storage for Cuttable {
    fn write(&self, batch: WriteBatch) -> BoxFuture<'_, Result<(), StorageError>> {
        self.gate(|inner| inner.write(batch))
    }
    fn read_run(&self, run_id: &str) -> BoxFuture<'_, Result<Option<RunRecord>, StorageError>> {
        self.gate(|inner| inner.read_run(run_id))
    }
    fn current_run(&self, id: &str) -> BoxFuture<'_, Result<Option<String>, StorageError>> {
        self.gate(|inner| inner.current_run(id))
    }
    fn read_events(
        &self,
        run_id: &str,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Event>, StorageError>> {
        self.gate(|inner| inner.read_events(run_id, from, limit))
    }
    fn list_runs(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<RunRecord>, StorageError>> {
        self.gate(|inner| inner.list_runs(query))
    }
    fn read_buffered(&self, run_id: &str) -> BoxFuture<'_, Result<BufferedRead, StorageError>> {
        self.gate(|inner| inner.read_buffered(run_id))
    }
    fn cluster_view(&self) -> BoxFuture<'_, Result<ClusterView, StorageError>> {
        self.gate(|inner| inner.cluster_view())
    }
    fn acquire_shard(&self, r: LeaseRequest) -> BoxFuture<'_, Result<LeaseAnswer, StorageError>> {
        self.gate(|inner| inner.acquire_shard(r))
    }
    fn release_shard(&self, r: LeaseRequest) -> BoxFuture<'_, Result<bool, StorageError>> {
        self.gate(|inner| inner.release_shard(r))
    }
    fn beat(&self, beat: MemberBeat) -> BoxFuture<'_, Result<Vec<Member>, StorageError>> {
        self.gate(|inner| inner.beat(beat))
    }
}

struct Cluster {
    env: Env,
    storage: MemoryStorage,
    services: Vec<Service>,
    cuts: Vec<Arc<AtomicBool>>,
}

impl Cluster {
    async fn start(nodes: &[&str]) -> Cluster {
        let env = Env::tokio(Arc::new(Unconnected));
        let storage = MemoryStorage::with_shards(SHARDS, env.clock.clone());
        let (mut services, mut cuts) = (Vec::new(), Vec::new());
        for node in nodes {
            let cut = Arc::new(AtomicBool::new(false));
            let member = Cuttable {
                inner: storage.clone(),
                cut: cut.clone(),
            };
            let service = Service::start(env.clone(), Arc::new(member), config(node)).await;
            services.push(service.expect("a member starts"));
            cuts.push(cut);
        }
        Cluster {
            env,
            storage,
            services,
            cuts,
        }
    }

    /// An env whose network reaches every member.
    fn member_env(&self, nodes: &[&str]) -> Env {
        let servers = nodes
            .iter()
            .zip(&self.services)
            .map(|(node, service)| {
                let network = InProcessNetwork::new(service.handler());
                (node.to_string(), Arc::new(network) as Arc<dyn Network>)
            })
            .collect();
        self.env
            .with_network(Arc::new(ClusterNetwork::new(servers)))
    }

    fn held(&self) -> Vec<usize> {
        self.services
            .iter()
            .map(|s| s.held_shards().len())
            .collect()
    }
}

async fn run_workflows(env: &Env, prefix: &str, count: usize) {
    let client = Client::new(env.clone());
    let mut handles = Vec::new();
    for i in 0..count {
        let options = StartOptions::new(format!("{prefix}-{i}"), "cluster");
        let handle = client
            .start::<common::OneActivity>(options, format!("{prefix}{i}"))
            .await
            .expect("any member takes a start");
        handles.push((i, handle));
    }
    for (i, handle) in handles {
        let result = handle.result().await.expect("the workflow completes");
        assert_eq!(result, format!("{prefix}{i}!"));
    }
}

fn worker(env: &Env) -> Worker {
    Worker::builder(env.clone(), "cluster")
        .workflows(common::registry())
        .activity(common::Compose)
        .start()
}

#[tokio::test(start_paused = true)]
async fn shards_split_evenly_and_workflows_through_any_member_complete() {
    let nodes = ["a", "b"];
    let cluster = Cluster::start(&nodes).await;
    cluster.env.sleep_ms(2_000).await;
    assert_eq!(cluster.held(), [8, 8], "16 shards over two members");
    let env = cluster.member_env(&nodes);
    let worker = worker(&env);
    run_workflows(&env, "split", 24).await;
    worker.shutdown().await;
    assert_eq!(cluster.storage.run_count(), 24);
}

#[tokio::test(start_paused = true)]
async fn a_member_that_leaves_hands_its_shards_over_at_once() {
    let nodes = ["a", "b"];
    let cluster = Cluster::start(&nodes).await;
    cluster.env.sleep_ms(2_000).await;
    cluster.services[1].leave().await;
    cluster.env.sleep_ms(600).await;
    assert_eq!(
        cluster.held(),
        [16, 0],
        "a takes b's shards within a renewal"
    );
    let env = cluster.member_env(&nodes);
    let worker = worker(&env);
    run_workflows(&env, "left", 12).await;
    worker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_member_cut_off_from_storage_stops_serving_and_the_other_takes_over() {
    let nodes = ["a", "b"];
    let cluster = Cluster::start(&nodes).await;
    cluster.env.sleep_ms(2_000).await;
    let env = cluster.member_env(&nodes);
    let worker = worker(&env);
    run_workflows(&env, "before", 8).await;
    cluster.cuts[1].store(true, Ordering::SeqCst);
    // b trusts its leases until 500 ms before they end; a takes them once
    // the storage sees them expire and b's membership lapse.
    cluster.env.sleep_ms(2_600).await;
    assert_eq!(
        cluster.held()[1],
        0,
        "b stopped serving before its leases ended"
    );
    cluster.env.sleep_ms(2_000).await;
    assert_eq!(cluster.held(), [16, 0]);
    run_workflows(&env, "during", 12).await;
    cluster.cuts[1].store(false, Ordering::SeqCst);
    cluster.env.sleep_ms(2_000).await;
    assert_eq!(cluster.held(), [8, 8], "b takes its share back once it can");
    run_workflows(&env, "after", 12).await;
    worker.shutdown().await;
}

/// Heartbeats every 250 ms for 8 s.
struct Heartbeating(Env);
impl Activity for Heartbeating {
    const NAME: &'static str = "heartbeating";
    type Input = ();
    type Output = u32;
    async fn run(&self, ctx: ActivityContext, _input: ()) -> ActivityResult<u32> {
        for beat in 0..32_u32 {
            ctx.heartbeat(&beat);
            self.0.sleep_ms(250).await;
        }
        Ok(32)
    }
}

fn heartbeating_registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn("heartbeating", |ctx: WorkflowContext, (): ()| async move {
        let options = ActivityOptions::default()
            .start_to_close(Duration::from_secs(60))
            .heartbeat_timeout(Duration::from_secs(3))
            .retry(RetryPolicy::default().maximum_attempts(1));
        Ok(ctx.activity::<Heartbeating>(()).options(options).await?)
    });
    registry
}

#[tokio::test(start_paused = true)]
async fn an_activity_heartbeating_through_a_failover_longer_than_its_heartbeat_timeout_is_not_timed_out()
 {
    common::init_logs();
    let nodes = ["a", "b"];
    let cluster = Cluster::start(&nodes).await;
    cluster.env.sleep_ms(2_000).await;
    let env = cluster.member_env(&nodes);
    let worker = Worker::builder(env.clone(), "cluster")
        .workflows(heartbeating_registry())
        .activity(Heartbeating(env.clone()))
        .start();
    let workflow_id = "beats";
    let shard = shard_of(workflow_id, SHARDS);
    let owner = (0..2)
        .find(|i| cluster.services[*i].held_shards().contains_key(&shard))
        .expect("one member holds the run's shard");
    let client = Client::new(env.clone());
    let options = StartOptions::new(workflow_id, "cluster");
    let run_id = client
        .start_by_name(options, "heartbeating", json!(null))
        .await
        .expect("started");
    let handle = client.handle::<u32>(workflow_id, Some(&run_id));
    // The owner is cut off from storage: the heartbeats it gets are not
    // stored from now on, and its shards stay unserved until its leases
    // end, longer than the heartbeat timeout. The member that takes the
    // shard over cannot know when the worker last heartbeated.
    cluster.env.sleep_ms(1_000).await;
    cluster.cuts[owner].store(true, Ordering::SeqCst);
    let result = handle.result().await.expect("the workflow completes");
    assert_eq!(result, 32, "the one attempt ran to its end");
    let other = 1 - owner;
    assert!(cluster.services[other].held_shards().contains_key(&shard));
    let history = handle.history().await.expect("history");
    let timed_out = history
        .events()
        .iter()
        .filter(|e| e.kind.name() == "ActivityTaskTimedOut")
        .count();
    assert_eq!(timed_out, 0, "no timeout across the failover");
    worker.shutdown().await;
}
