//! Production implementations on tokio. This module and `src/bin/` are the only
//! places allowed to read the wall clock, the OS's randomness and tokio's timer.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::{BoxFuture, Clock, Entropy, Spawner};
use crate::types::Timestamp;

/// Tokio time, anchored to the wall clock when created. It follows
/// `tokio::time::pause`/`advance`, so tests with paused time run instantly.
#[derive(Clone, Debug)]
pub struct TokioClock {
    base_time: Timestamp,
    base_instant: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading the wall clock now and tokio's instants from then on.
    pub fn new() -> TokioClock {
        TokioClock {
            base_time: Timestamp::from_system_time(SystemTime::now()),
            base_instant: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        let elapsed = self.base_instant.elapsed();
        self.base_time
            .plus_ms(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    }

    fn monotonic_us(&self) -> u64 {
        let elapsed = self.base_instant.elapsed();
        u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
    }

    fn sleep_until(&self, deadline: Timestamp) -> BoxFuture<'static, ()> {
        let offset = Duration::from_millis(deadline.millis_since(self.base_time));
        let instant = self.base_instant + offset;
        Box::pin(tokio::time::sleep_until(instant))
    }
}

/// Spawns on the current tokio runtime.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioSpawner;

impl Spawner for TokioSpawner {
    fn spawn(&self, _name: &'static str, future: BoxFuture<'static, ()>) {
        tokio::spawn(future);
    }
}

/// splitmix64 seeded once from the OS (wall clock nanos and the process id).
#[derive(Debug)]
pub struct OsEntropy {
    state: AtomicU64,
}

impl OsEntropy {
    /// Seeded from the OS.
    pub fn new() -> OsEntropy {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let seed = (nanos as u64) ^ (u64::from(std::process::id()) << 32) ^ 0x5851_f42d_4c95_7f2d;
        OsEntropy::with_seed(seed)
    }

    /// Seeded with `seed` (for reproducible tests).
    pub fn with_seed(seed: u64) -> OsEntropy {
        OsEntropy {
            state: AtomicU64::new(seed),
        }
    }
}

impl Default for OsEntropy {
    fn default() -> Self {
        OsEntropy::new()
    }
}

impl Entropy for OsEntropy {
    fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
