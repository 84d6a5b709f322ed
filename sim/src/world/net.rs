//! The simulated network: per-link latency, loss, duplication, reordering (from
//! random latencies), clogging (messages held until the link clears) and
//! partitions (messages dropped), one-way too.
//!
//! A call is two flights: the request to the target, the reply back. Flights
//! run on a dedicated "net" node, so a message in flight survives its sender's
//! crash; the handler runs on the target node, so the target's crash resets the
//! call. A lost message is silence: the caller waits until its own timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::oneshot;
use madsim::rand::Rng;
use retrace::api::{Reply, Request};
use retrace::env::Watch;
use retrace::env::{BoxFuture, NetError, Network, RequestHandler};
use retrace::types::fnv1a64;

use crate::faults::swarm::Swarm;
use crate::nodes::SERVICE;
use crate::world::{World, lock};

/// A node that serves engine requests.
#[derive(Clone)]
struct Endpoint {
    handler: Arc<dyn RequestHandler>,
    node: madsim::runtime::NodeHandle,
}

struct NetState {
    latency_ms_min: u64,
    latency_ms_max: u64,
    loss_rate: f64,
    duplicate_rate: f64,
    /// Directed links that drop every message.
    cut: BTreeSet<(String, String)>,
    /// Directed links that hold every message until cleared.
    clogged: BTreeSet<(String, String)>,
    endpoints: BTreeMap<String, Endpoint>,
    net_node: Option<madsim::runtime::NodeHandle>,
}

/// The network of one run.
pub struct SimNet {
    state: Mutex<NetState>,
    /// Messages sent (a step of the seed's budget).
    messages: std::sync::atomic::AtomicU64,
    /// Bumped whenever the links change (cut, clogged, healed).
    changed: Watch<()>,
}

/// What the caller learns.
type Delivery<T> = Result<T, NetError>;

impl SimNet {
    pub fn new(swarm: &Swarm) -> SimNet {
        SimNet {
            state: Mutex::new(NetState {
                latency_ms_min: swarm.latency_ms_min,
                latency_ms_max: swarm.latency_ms_max.max(swarm.latency_ms_min),
                loss_rate: swarm.loss_rate,
                duplicate_rate: swarm.duplicate_rate,
                cut: BTreeSet::new(),
                clogged: BTreeSet::new(),
                endpoints: BTreeMap::new(),
                net_node: None,
            }),
            changed: Watch::new(()),
            messages: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Forgets every endpoint and the net node: the run is over. Endpoints'
    /// handlers hold their node's Env, which holds the World that holds this
    /// net, a cycle of `Arc`s that would otherwise never be freed.
    pub fn shut_down(&self) {
        let mut state = lock(&self.state);
        state.endpoints.clear();
        state.net_node = None;
    }

    /// Messages sent so far.
    pub fn messages(&self) -> u64 {
        self.messages.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The node flights run on.
    pub fn set_net_node(&self, node: madsim::runtime::NodeHandle) {
        lock(&self.state).net_node = Some(node);
    }

    /// `name` serves engine requests (its node just started).
    pub fn register(
        &self,
        name: &str,
        handler: Arc<dyn RequestHandler>,
        node: madsim::runtime::NodeHandle,
    ) {
        lock(&self.state)
            .endpoints
            .insert(name.to_string(), Endpoint { handler, node });
    }

    /// The handler `name` serves with now (`None` while it is down).
    pub fn handler(&self, name: &str) -> Option<Arc<dyn RequestHandler>> {
        let state = lock(&self.state);
        state.endpoints.get(name).map(|e| e.handler.clone())
    }

    /// `name` is down: calls to it are refused.
    pub fn unregister(&self, name: &str) {
        lock(&self.state).endpoints.remove(name);
    }

    fn notify(&self) {
        self.changed.modify(|()| {});
    }

    /// Drops messages from `from` to `to` (and back, unless one-way).
    pub fn cut(&self, from: &str, to: &str, one_way: bool) {
        let mut state = lock(&self.state);
        state.cut.insert((from.to_string(), to.to_string()));
        if !one_way {
            state.cut.insert((to.to_string(), from.to_string()));
        }
    }

    /// Holds messages between `a` and `b` both ways until cleared.
    pub fn clog(&self, a: &str, b: &str) {
        let mut state = lock(&self.state);
        state.clogged.insert((a.to_string(), b.to_string()));
        state.clogged.insert((b.to_string(), a.to_string()));
    }

    /// Restores the links between `a` and `b`.
    pub fn repair(&self, a: &str, b: &str) {
        {
            let mut state = lock(&self.state);
            for link in [
                (a.to_string(), b.to_string()),
                (b.to_string(), a.to_string()),
            ] {
                state.cut.remove(&link);
                state.clogged.remove(&link);
            }
        }
        self.notify();
    }

    /// Every link healthy, no loss or duplication, 1 ms latency.
    pub fn heal(&self) {
        {
            let mut state = lock(&self.state);
            state.cut.clear();
            state.clogged.clear();
            state.loss_rate = 0.0;
            state.duplicate_rate = 0.0;
            state.latency_ms_min = 1;
            state.latency_ms_max = 1;
        }
        self.notify();
    }

    fn endpoint(&self, name: &str) -> Option<Endpoint> {
        lock(&self.state).endpoints.get(name).cloned()
    }

    /// Latency of one message on the link: the swarm's range, stretched on
    /// some links (each link's factor is fixed for the seed).
    fn latency_ms(&self, world: &World, from: &str, to: &str) -> u64 {
        let (low, high) = {
            let state = lock(&self.state);
            (state.latency_ms_min, state.latency_ms_max)
        };
        // Fixed per link and seed; hashed without allocating (this runs per message).
        let link = fnv1a64(from.as_bytes()).rotate_left(17) ^ fnv1a64(to.as_bytes()) ^ world.seed;
        let factor = 1 + (link.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 63);
        madsim::rand::thread_rng().gen_range(low..=high) * factor
    }

    /// Decides one message's fate: the delays of its copies (none: lost).
    /// Waits while the link is clogged.
    async fn transmit(&self, world: &World, from: &str, to: &str) -> Vec<u64> {
        self.messages
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        loop {
            let seen = self.changed.version();
            let (cut, clogged, loss, duplicate) = {
                let state = lock(&self.state);
                (
                    holds_link(&state.cut, from, to),
                    holds_link(&state.clogged, from, to),
                    state.loss_rate,
                    state.duplicate_rate,
                )
            };
            if cut {
                world.record_fault("net:partition_drop", format!("{from}->{to}"), None);
                return Vec::new();
            }
            if clogged {
                self.changed.changed_since(seen).await;
                continue;
            }
            if world.chance("net:loss", loss) {
                world.record_fault("net:loss", format!("{from}->{to}"), None);
                return Vec::new();
            }
            let copies = if world.chance("net:duplicate", duplicate) {
                world.record_fault("net:duplicate", format!("{from}->{to}"), None);
                2
            } else {
                1
            };
            return (0..copies)
                .map(|_| self.latency_ms(world, from, to))
                .collect();
        }
    }

    fn spawn_flight(&self, flight: impl std::future::Future<Output = ()> + Send + 'static) {
        let node = lock(&self.state).net_node.clone();
        match node {
            Some(node) => drop(node.spawn(flight)),
            None => drop(madsim::task::spawn(flight)),
        }
    }
}

/// Whether `links` holds the directed link `from` -> `to` (without building
/// the pair of `String`s a lookup would take: this runs per message).
fn holds_link(links: &BTreeSet<(String, String)>, from: &str, to: &str) -> bool {
    links.iter().any(|(a, b)| a == from && b == to)
}

/// The one-shot reply slot of a call, shared by the copies of its messages.
struct ReplySlot<T> {
    sender: Mutex<Option<oneshot::Sender<Delivery<T>>>>,
}

impl<T> ReplySlot<T> {
    fn deliver(&self, delivery: Delivery<T>) {
        if let Some(sender) = lock(&self.sender).take() {
            let _ = sender.send(delivery);
        }
    }
}

/// Serves one copy of a request at its target; `None` if the target is down.
type Serve<T> = Arc<dyn Fn(Arc<World>) -> Option<BoxFuture<'static, Option<T>>> + Send + Sync>;

/// A call from `from` to `to`: request flight, service, reply flight.
pub async fn rpc<T: Send + 'static>(
    world: &Arc<World>,
    from: &str,
    to: &str,
    serve: Serve<T>,
) -> Result<T, NetError> {
    let (sender, receiver) = oneshot::channel();
    let slot = Arc::new(ReplySlot {
        sender: Mutex::new(Some(sender)),
    });
    let (flight_world, from_name, to_name) = (world.clone(), from.to_string(), to.to_string());
    world.net.spawn_flight(async move {
        let delays = flight_world
            .net
            .transmit(&flight_world, &from_name, &to_name)
            .await;
        for delay_ms in delays {
            let (world, slot, serve) = (flight_world.clone(), slot.clone(), serve.clone());
            let (from, to) = (from_name.clone(), to_name.clone());
            flight_world.net.spawn_flight(async move {
                madsim::time::sleep(Duration::from_millis(delay_ms)).await;
                serve_copy(world, &from, &to, slot, serve).await;
            });
        }
    });
    match receiver.await {
        Ok(delivery) => delivery,
        // Every copy was lost: silence, until the caller's own deadline.
        Err(_) => futures::future::pending().await,
    }
}

async fn serve_copy<T: Send + 'static>(
    world: Arc<World>,
    from: &str,
    to: &str,
    slot: Arc<ReplySlot<T>>,
    serve: Serve<T>,
) {
    let Some(serving) = serve(world.clone()) else {
        // Nobody listens: the refusal travels back.
        madsim::time::sleep(Duration::from_millis(
            world.net.latency_ms(&world, to, from),
        ))
        .await;
        slot.deliver(Err(NetError::Unreachable(format!("{to} is down"))));
        return;
    };
    let Some(reply) = serving.await else {
        slot.deliver(Err(NetError::Disconnected(format!(
            "{to} crashed while serving the request"
        ))));
        return;
    };
    let delays = world.net.transmit(&world, to, from).await;
    if let Some(delay_ms) = delays.first() {
        madsim::time::sleep(Duration::from_millis(*delay_ms)).await;
        slot.deliver(Ok(reply));
    }
}

/// A node's `Network`: engine requests to the service.
pub struct SimNetwork {
    world: Arc<World>,
    name: String,
    to: String,
}

impl SimNetwork {
    /// Node `name`'s connection to the service.
    pub fn new(world: Arc<World>, name: &str) -> SimNetwork {
        SimNetwork::to(world, name, SERVICE)
    }

    /// Node `name`'s connection to service node `to` (of a cluster).
    pub fn to(world: Arc<World>, name: &str, to: &str) -> SimNetwork {
        SimNetwork {
            world,
            name: name.to_string(),
            to: to.to_string(),
        }
    }
}

impl Network for SimNetwork {
    fn call(&self, request: Request) -> BoxFuture<'static, Result<Reply, NetError>> {
        let world = self.world.clone();
        let (from, to) = (self.name.clone(), self.to.clone());
        let target = to.clone();
        let serve: Serve<Reply> = Arc::new(move |world: Arc<World>| {
            let endpoint = world.net.endpoint(&target)?;
            let request = request.clone();
            // BUGGIFY: the caller hangs up mid-request (an HTTP disconnect), so
            // the service drops the handler's future wherever it is.
            let abandon_ms = world
                .buggify_site("net.abandon_request", &target)
                .then(|| madsim::rand::thread_rng().gen_range(0..20u64));
            Some(Box::pin(async move {
                let (sender, receiver) = oneshot::channel();
                let handling = endpoint.handler.handle(request);
                drop(endpoint.node.spawn(async move {
                    let Some(abandon_ms) = abandon_ms else {
                        let _ = sender.send(handling.await);
                        return;
                    };
                    let hang_up = madsim::time::sleep(Duration::from_millis(abandon_ms));
                    futures::pin_mut!(handling, hang_up);
                    if let futures::future::Either::Left((reply, _)) =
                        futures::future::select(handling, hang_up).await
                    {
                        let _ = sender.send(reply);
                    }
                }));
                receiver.await.ok()
            }) as BoxFuture<'static, Option<Reply>>)
        });
        Box::pin(async move { rpc(&world, &from, &to, serve).await })
    }
}
