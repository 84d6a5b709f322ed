//! The membership and lease loop of a cluster server.
//!
//! Every `renew_ms` the server:
//!
//! | step | does                                                                  |
//! |------|-----------------------------------------------------------------------|
//! | beat | renews its membership row; learns the live members                     |
//! | view | reads every shard's lease                                             |
//! | shed | stops serving, then releases, the shards it holds but no longer should |
//! | take | asks for (or renews) every shard it should hold                        |
//! | gain | rebuilds the runs, timers and task queues of the shards it got         |
//! | drop | stops serving any shard whose trust ran out (a renewal never came)    |
//!
//! A shard is dropped before it is released, and rebuilt after it is got,
//! so no two servers act on a shard at once as long as clocks hold to the
//! margin; the fence on every write covers the rest.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};

use futures::future::join_all;

use super::service::{Inner, lock};
use super::shards::{ClusterConfig, Held, desired_owner};
use crate::api::{ErrorCode, Request, Response, ServiceError};
use crate::env::StorageError;
use crate::env::lease::{ClusterView, LeaseRequest, MemberBeat};

/// Runs the loop until the service is gone, a round every `renew_ms`. The
/// first round comes a round after the member joined (see
/// [`Inner::join_cluster`]): members that start together then see each
/// other and split the shards at once, rather than the first taking them
/// all and handing most over a round later.
pub async fn lease_loop(weak: Weak<Inner>, incarnation: u64) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let Some(config) = inner.config.cluster.clone() else {
            return;
        };
        let env = inner.env.clone();
        drop(inner);
        env.sleep_ms(config.renew_ms).await;
        let Some(inner) = weak.upgrade() else { return };
        inner.cluster_tick(&config, incarnation).await;
    }
}

impl Inner {
    /// One round of the loop (see the module's table).
    pub(super) async fn cluster_tick(self: &Arc<Self>, config: &ClusterConfig, incarnation: u64) {
        if lock(&self.shards).left {
            return;
        }
        // A shard whose trust ran out since the last round is lost first,
        // even if the lease is renewed below: meanwhile its queued tasks
        // were refused and dropped, so it must be rebuilt as newly gained.
        self.drop_expired();
        let sent_us = self.env.clock.monotonic_us();
        let view = match self.cluster_read(config, incarnation).await {
            Ok(view) => view,
            Err(error) => {
                tracing::warn!(%error, "cluster: cannot reach the storage; keeping leases until they run out");
                self.drop_expired();
                return;
            }
        };
        self.learn(&view);
        let mine: BTreeSet<u32> = (0..view.shards.len() as u32)
            .filter(|shard| desired_owner(*shard, &view.members) == Some(config.node.as_str()))
            .collect();
        self.shed(config, incarnation, &mine).await;
        let gained = self.take(config, incarnation, &mine, sent_us).await;
        if !gained.is_empty() {
            self.rebuild(&gained).await;
        }
        self.drop_expired();
        self.offer_open_children();
    }

    /// Beats the membership once, so others count this member when they
    /// next balance (a failure is retried by the first round).
    pub(super) async fn join_cluster(&self, config: &ClusterConfig, incarnation: u64) {
        if let Err(error) = self.storage.beat(member_beat(config, incarnation)).await {
            tracing::warn!(%error, "cluster: cannot join yet; the first round retries");
        }
    }

    async fn cluster_read(
        &self,
        config: &ClusterConfig,
        incarnation: u64,
    ) -> Result<ClusterView, StorageError> {
        // The view is read after the beat, so it holds this member alive.
        self.storage.beat(member_beat(config, incarnation)).await?;
        self.storage.cluster_view().await
    }

    /// Remembers who holds what and where members are (for redirects).
    fn learn(&self, view: &ClusterView) {
        let mut shards = lock(&self.shards);
        shards.count = view.shards.len() as u32;
        shards.owners = view
            .shards
            .iter()
            .filter(|lease| lease.held_at(view.now_ms))
            .map(|lease| (lease.shard, lease.owner.clone()))
            .collect();
        shards.addresses = view
            .members
            .iter()
            .filter(|m| m.alive)
            .map(|m| (m.node.clone(), m.address.clone()))
            .collect();
    }

    /// Stops serving, then releases, the shards held but no longer ours.
    async fn shed(&self, config: &ClusterConfig, incarnation: u64, mine: &BTreeSet<u32>) {
        let held: Vec<u32> = lock(&self.shards).held.keys().copied().collect();
        let shed: Vec<u32> = held.into_iter().filter(|s| !mine.contains(s)).collect();
        for shard in &shed {
            self.lose_shard(*shard, "rebalanced to another member");
        }
        let releases = shed.iter().map(|shard| {
            let request = lease_request(config, incarnation, *shard);
            self.storage.release_shard(request)
        });
        for (shard, released) in shed.iter().zip(join_all(releases).await) {
            if let Err(error) = released {
                tracing::warn!(shard, %error, "cluster: release failed; the lease runs out instead");
            }
        }
    }

    /// Asks for every shard that should be ours; the shards newly got.
    async fn take(
        &self,
        config: &ClusterConfig,
        incarnation: u64,
        mine: &BTreeSet<u32>,
        sent_us: u64,
    ) -> BTreeSet<u32> {
        let asks = mine.iter().map(|shard| {
            let request = lease_request(config, incarnation, *shard);
            self.storage.acquire_shard(request)
        });
        let answers = join_all(asks).await;
        let until_us = sent_us + (config.lease_ms.saturating_sub(config.margin_ms)) * 1_000;
        let mut gained = BTreeSet::new();
        for (shard, answer) in mine.iter().zip(answers) {
            match answer {
                Ok(answer) if answer.granted => {
                    let held = Held {
                        epoch: answer.lease.epoch,
                        until_us,
                    };
                    let mut shards = lock(&self.shards);
                    if shards.left {
                        break;
                    }
                    let before = shards.held.insert(*shard, held);
                    if before.is_none_or(|b| b.epoch != held.epoch) {
                        gained.insert(*shard);
                    }
                }
                Ok(answer) => {
                    if lock(&self.shards).held.contains_key(shard) {
                        self.lose_shard(*shard, "another member took it");
                    }
                    tracing::debug!(
                        shard,
                        owner = answer.lease.owner,
                        "cluster: shard still held elsewhere"
                    );
                }
                Err(error) => tracing::warn!(shard, %error, "cluster: cannot renew the lease"),
            }
        }
        gained
    }

    fn drop_expired(&self) {
        let now_us = self.env.clock.monotonic_us();
        let expired = lock(&self.shards).expired(now_us);
        for shard in expired {
            self.lose_shard(shard, "its lease ran out before a renewal");
        }
    }

    /// Stops serving `shard`: forgets its runs (their timers and waiters);
    /// queued tasks of them are refused when taken.
    fn lose_shard(&self, shard: u32, why: &str) {
        let held = lock(&self.shards).held.remove(&shard);
        if held.is_none() {
            return;
        }
        self.metrics.on_shard_moved(false);
        tracing::info!(shard, why, "cluster: shard lost");
        self.forget_shard(shard);
    }

    /// Loads the open runs of the shards just got.
    async fn rebuild(self: &Arc<Self>, gained: &BTreeSet<u32>) {
        for _ in gained {
            self.metrics.on_shard_moved(true);
        }
        tracing::info!(shards = ?gained, "cluster: shards gained");
        let count = lock(&self.shards).count;
        let wanted =
            |workflow_id: &str| gained.contains(&crate::env::lease::shard_of(workflow_id, count));
        if let Err(error) = self.recover_where(&wanted).await {
            tracing::warn!(%error, "cluster: rebuilding gained shards failed; their runs load on demand");
        }
    }

    /// Gives every held shard up (a graceful stop), so others take them at once.
    pub(super) async fn leave_cluster(&self, incarnation: u64) {
        let Some(config) = self.config.cluster.clone() else {
            return;
        };
        lock(&self.shards).left = true;
        let held: Vec<u32> = lock(&self.shards).held.keys().copied().collect();
        for shard in &held {
            self.lose_shard(*shard, "the server is stopping");
        }
        let releases = held.iter().map(|shard| {
            self.storage
                .release_shard(lease_request(&config, incarnation, *shard))
        });
        join_all(releases).await;
        // A membership that ends at once: the others rebalance without it now.
        let beat = MemberBeat {
            node: config.node.clone(),
            incarnation,
            address: config.address.clone(),
            ttl_ms: 1,
        };
        if let Err(error) = self.storage.beat(beat).await {
            tracing::warn!(%error, "cluster: could not end the membership; it lapses instead");
        }
    }
}

fn member_beat(config: &ClusterConfig, incarnation: u64) -> MemberBeat {
    MemberBeat {
        node: config.node.clone(),
        incarnation,
        address: config.address.clone(),
        ttl_ms: config.lease_ms,
    }
}

/// How long a request forwarded to another member may take.
const FORWARD_TIMEOUT_MS: u64 = 10_000;

impl Inner {
    /// Sends `request` to the member that owns its run, through the
    /// service's network (a `ClusterNetwork` over the members, which follows
    /// `NotOwner`). A request that got no answer may have been acted on:
    /// every request forwarded carries what makes it idempotent.
    pub(super) async fn forward(&self, request: Request) -> Result<Response, ServiceError> {
        let method = request.method();
        let call = self.env.network.call(request);
        match self.env.timeout(FORWARD_TIMEOUT_MS, call).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => Err(ServiceError::new(
                ErrorCode::Unavailable,
                format!("{method} forwarded to the owner's member failed: {error}"),
            )),
            Err(_) => Err(ServiceError::new(
                ErrorCode::Unavailable,
                format!("{method} forwarded to the owner's member got no answer in time"),
            )),
        }
    }
}

fn lease_request(config: &ClusterConfig, incarnation: u64, shard: u32) -> LeaseRequest {
    LeaseRequest {
        shard,
        owner: config.node.clone(),
        incarnation,
        lease_ms: config.lease_ms,
    }
}
