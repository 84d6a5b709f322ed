//! The abstract layer: everything the engine needs from the world, as a few
//! small traits bundled in one [`Env`].
//!
//! | trait       | production                         | simulation (`retrace-sim`)          |
//! |-------------|------------------------------------|-------------------------------------|
//! | [`Clock`]   | tokio time (pausable in tests)     | madsim virtual time, per-node skew  |
//! | [`Entropy`] | seeded once from the OS            | seeded from the simulation seed     |
//! | [`Spawner`] | `tokio::spawn`                     | madsim tasks on the node            |
//! | [`Network`] | in-process, or HTTP/JSON           | simulated links with faults         |
//! | [`Storage`] | memory, SQLite, Postgres           | memory with crash semantics         |
//! | [`Faults`]  | never fires                        | BUGGIFY: seed-chosen sites fire     |
//!
//! Engine code outside this module uses only these traits: no tokio::time, no
//! tokio::spawn, no wall clock, no OS randomness (clippy.toml enforces it).
//! Storage belongs to the service alone, so it is handed to the service rather
//! than carried in every node's `Env`.

pub mod conformance;
pub mod lease;
mod memory;
mod network;
#[cfg(feature = "postgres")]
mod postgres;
mod routing;
mod sqlite;
mod storage;
mod tokio_env;
mod watch;

pub use memory::MemoryStorage;
pub use network::{InProcessNetwork, NetError, Network, RequestHandler, Unconnected};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresStats, PostgresStorage, is_postgres_url};
pub use routing::{ClusterNetwork, Connector};
pub use sqlite::{SqliteOptions, SqliteStats, SqliteStorage};
pub use storage::{
    BufferedRead, BufferedWrite, ListQuery, RunRecord, RunStatus, Storage, StorageError,
    WorkflowIdClaim, WriteBatch, check_batch,
};
pub use tokio_env::{OsEntropy, TokioClock, TokioSpawner};
pub use watch::Watch;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::types::Timestamp;

/// A boxed, sendable future (the traits return these to stay object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Time as the node sees it.
pub trait Clock: Send + Sync {
    /// The node's current time.
    fn now(&self) -> Timestamp;
    /// Resolves once `now() >= deadline`.
    fn sleep_until(&self, deadline: Timestamp) -> BoxFuture<'static, ()>;
    /// Microseconds from an arbitrary origin, never going back: for
    /// measuring durations (metrics). By default `now()` in microseconds.
    fn monotonic_us(&self) -> u64 {
        self.now().as_millis().saturating_mul(1_000)
    }
}

/// Seeded randomness: ids, jitter.
pub trait Entropy: Send + Sync {
    /// The next random number.
    fn next_u64(&self) -> u64;
}

/// Runs background tasks on the node.
pub trait Spawner: Send + Sync {
    /// Spawns `future`; it runs until it ends or the node stops.
    fn spawn(&self, name: &'static str, future: BoxFuture<'static, ()>);
}

/// Fault points inside the engine (FoundationDB's BUGGIFY).
pub trait Faults: Send + Sync {
    /// True if the rare path at `site` should be taken now. Always false in
    /// production.
    fn buggify(&self, site: &'static str) -> bool;
}

/// Production faults: none.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFaults;

impl Faults for NoFaults {
    fn buggify(&self, _site: &'static str) -> bool {
        false
    }
}

/// What a node gets from the world.
#[derive(Clone)]
pub struct Env {
    /// The node's clock.
    pub clock: Arc<dyn Clock>,
    /// The node's randomness.
    pub entropy: Arc<dyn Entropy>,
    /// The node's task spawner.
    pub spawner: Arc<dyn Spawner>,
    /// The node's view of the network: it delivers requests to the service.
    pub network: Arc<dyn Network>,
    /// Fault points.
    pub faults: Arc<dyn Faults>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("now", &self.clock.now())
            .finish()
    }
}

/// A future did not finish before its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline passed")]
pub struct Elapsed;

impl Env {
    /// The production environment on the current tokio runtime, talking to
    /// `network`.
    pub fn tokio(network: Arc<dyn Network>) -> Env {
        Env {
            clock: Arc::new(TokioClock::new()),
            entropy: Arc::new(OsEntropy::new()),
            spawner: Arc::new(TokioSpawner),
            network,
            faults: Arc::new(NoFaults),
        }
    }

    /// This env with another network (same clock, entropy, spawner, faults).
    pub fn with_network(&self, network: Arc<dyn Network>) -> Env {
        Env {
            network,
            ..self.clone()
        }
    }

    /// The node's current time.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Sleeps for `duration_ms` of the node's time.
    pub fn sleep_ms(&self, duration_ms: u64) -> BoxFuture<'static, ()> {
        self.clock
            .sleep_until(self.clock.now().plus_ms(duration_ms))
    }

    /// Spawns a background task.
    pub fn spawn(&self, name: &'static str, future: impl Future<Output = ()> + Send + 'static) {
        self.spawner.spawn(name, Box::pin(future));
    }

    /// A random number.
    pub fn random(&self) -> u64 {
        self.entropy.next_u64()
    }

    /// True if the fault point `site` fires now.
    pub fn buggify(&self, site: &'static str) -> bool {
        self.faults.buggify(site)
    }

    /// Runs `future` for at most `duration_ms`.
    pub async fn timeout<T>(
        &self,
        duration_ms: u64,
        future: impl Future<Output = T>,
    ) -> Result<T, Elapsed> {
        let deadline = self.sleep_ms(duration_ms);
        futures::pin_mut!(future);
        match futures::future::select(future, deadline).await {
            futures::future::Either::Left((value, _)) => Ok(value),
            futures::future::Either::Right(((), _)) => Err(Elapsed),
        }
    }

    /// A new id: the time in milliseconds (so ids sort by creation) then 64
    /// random bits, as 28 hex digits.
    pub fn new_id(&self) -> String {
        format!("{:012x}{:016x}", self.now().as_millis(), self.random())
    }
}
