//! Shards, their leases and fencing: the rules every storage that serves a
//! cluster applies, so several servers can share it and never write the
//! same run at once.
//!
//! A run belongs to shard [`shard_of`]`(workflow_id, count)`; the shard count
//! is fixed when the storage is created. Each shard has one lease row:
//!
//! | field        | meaning                                                        |
//! |--------------|----------------------------------------------------------------|
//! | `owner`      | the node holding it (`""`: nobody)                             |
//! | `incarnation`| which start of that node (a restarted node is a new holder)     |
//! | `epoch`      | the fencing epoch: +1 on every change of holder, never back    |
//! | `expires_ms` | when the lease ends, on the **storage's** clock                |
//!
//! [`decide_acquire`] is the whole acquisition rule: the holder renews
//! (same epoch); anyone takes a free or expired lease, and a node takes one
//! its own earlier incarnation held (epoch + 1 either way). Expiry is judged
//! by the storage's clock alone, so a server whose clock is skewed cannot
//! take a lease early. Every write of a cluster server carries a [`Fence`],
//! its shard and the epoch it holds, and the storage refuses it
//! ([`check_fence`]) unless that epoch is still stored, atomically with the
//! write: a server that lost its shard, however late it learns it, writes
//! nothing more.

use serde::{Deserialize, Serialize};

use super::storage::{StorageError, WriteBatch};
use crate::types::fnv1a64;

/// Shards a storage can be created with, at most.
pub const SHARD_COUNT_MAX: u32 = 4_096;
/// Longest lease a server may ask for.
pub const LEASE_MS_MAX: u64 = 600_000;
/// Longest node name.
pub const NODE_NAME_BYTES_MAX: usize = 128;
/// Longest advertised address.
pub const ADDRESS_BYTES_MAX: usize = 512;

/// The shard of a workflow id among `count`: FNV-1a of its bytes, so the
/// same on every build and platform.
pub fn shard_of(workflow_id: &str, count: u32) -> u32 {
    assert!(count > 0 && count <= SHARD_COUNT_MAX);
    let shard = (fnv1a64(workflow_id.as_bytes()) % u64::from(count)) as u32;
    assert!(shard < count);
    shard
}

/// A write's claim to its shard: the epoch its server holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Fence {
    /// The shard of the batch's workflow id.
    pub shard: u32,
    /// The epoch the writer's lease has.
    pub epoch: u64,
}

/// A shard's lease as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLease {
    /// The shard.
    pub shard: u32,
    /// The node holding it; empty when free.
    pub owner: String,
    /// Which start of `owner` holds it.
    pub incarnation: u64,
    /// Bumped on every change of holder.
    pub epoch: u64,
    /// When the lease ends, in milliseconds on the storage's clock.
    pub expires_ms: u64,
}

impl ShardLease {
    /// A shard nobody has held.
    pub fn free(shard: u32) -> ShardLease {
        ShardLease {
            shard,
            owner: String::new(),
            incarnation: 0,
            epoch: 0,
            expires_ms: 0,
        }
    }

    /// True while `owner` holds it at `now_ms` (storage time).
    pub fn held_at(&self, now_ms: u64) -> bool {
        !self.owner.is_empty() && self.expires_ms > now_ms
    }
}

/// A node asking for (or renewing) a shard's lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The shard.
    pub shard: u32,
    /// The node's name.
    pub owner: String,
    /// The node's incarnation (random per start).
    pub incarnation: u64,
    /// How long the lease lasts from the storage's now.
    pub lease_ms: u64,
}

/// What an acquisition found: the lease as it is after it, and whether the
/// asker holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAnswer {
    /// The lease after the attempt.
    pub lease: ShardLease,
    /// True if the asker holds it now.
    pub granted: bool,
}

/// A node's membership heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberBeat {
    /// The node's name.
    pub node: String,
    /// The node's incarnation.
    pub incarnation: u64,
    /// Where clients and other servers reach it.
    pub address: String,
    /// How long the membership lasts without another beat.
    pub ttl_ms: u64,
}

/// A member as stored, judged by the storage's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node's name.
    pub node: String,
    /// Its latest incarnation.
    pub incarnation: u64,
    /// Its advertised address.
    pub address: String,
    /// When its membership ends, on the storage's clock.
    pub expires_ms: u64,
    /// True if it beat within its time to live.
    pub alive: bool,
}

/// Everything a storage knows of its cluster, read at once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The storage's clock when read, in milliseconds.
    pub now_ms: u64,
    /// Every shard's lease, by shard.
    pub shards: Vec<ShardLease>,
    /// Every member, by name.
    pub members: Vec<Member>,
}

/// The acquisition rule (see the module's table): the lease after `request`
/// at storage time `now_ms`, and whether it was granted.
pub fn decide_acquire(stored: &ShardLease, request: &LeaseRequest, now_ms: u64) -> LeaseAnswer {
    assert_eq!(stored.shard, request.shard);
    let holder = stored.owner == request.owner && stored.incarnation == request.incarnation;
    let takeable = !stored.held_at(now_ms) || stored.owner == request.owner;
    let answer = if holder && stored.held_at(now_ms) {
        LeaseAnswer {
            lease: ShardLease {
                expires_ms: now_ms + request.lease_ms,
                ..stored.clone()
            },
            granted: true,
        }
    } else if takeable {
        LeaseAnswer {
            lease: ShardLease {
                shard: stored.shard,
                owner: request.owner.clone(),
                incarnation: request.incarnation,
                epoch: stored.epoch + 1,
                expires_ms: now_ms + request.lease_ms,
            },
            granted: true,
        }
    } else {
        LeaseAnswer {
            lease: stored.clone(),
            granted: false,
        }
    };
    assert!(answer.lease.epoch >= stored.epoch);
    answer
}

/// The lease after its holder releases it (nothing if `request` is not the
/// holder): free at once, and the epoch bumped, so a write the holder still
/// has in flight is refused (the simulator found this: a write sent just
/// before a release landed after it, under the old epoch).
pub fn decide_release(stored: &ShardLease, owner: &str, incarnation: u64) -> Option<ShardLease> {
    let holder = stored.owner == owner && stored.incarnation == incarnation;
    holder.then(|| ShardLease {
        owner: String::new(),
        incarnation: 0,
        expires_ms: 0,
        epoch: stored.epoch + 1,
        ..stored.clone()
    })
}

/// Checks a lease request and a heartbeat at the storage's edge.
pub fn check_lease_request(request: &LeaseRequest, count: u32) -> Result<(), StorageError> {
    check_node(&request.owner)?;
    if request.shard >= count {
        return Err(StorageError::Io(format!(
            "shard {} does not exist: the storage has {count} shards",
            request.shard
        )));
    }
    if request.lease_ms == 0 || request.lease_ms > LEASE_MS_MAX {
        return Err(StorageError::Io(format!(
            "a lease lasts 1 to {LEASE_MS_MAX} ms, not {}",
            request.lease_ms
        )));
    }
    Ok(())
}

/// Checks a membership heartbeat at the storage's edge.
pub fn check_beat(beat: &MemberBeat) -> Result<(), StorageError> {
    check_node(&beat.node)?;
    if beat.address.len() > ADDRESS_BYTES_MAX {
        return Err(StorageError::Io(format!(
            "a member's address is at most {ADDRESS_BYTES_MAX} bytes"
        )));
    }
    if beat.ttl_ms == 0 || beat.ttl_ms > LEASE_MS_MAX {
        return Err(StorageError::Io(format!(
            "a membership lasts 1 to {LEASE_MS_MAX} ms, not {}",
            beat.ttl_ms
        )));
    }
    Ok(())
}

fn check_node(node: &str) -> Result<(), StorageError> {
    if node.is_empty() || node.len() > NODE_NAME_BYTES_MAX {
        return Err(StorageError::Io(format!(
            "a node name is 1 to {NODE_NAME_BYTES_MAX} bytes, not {}",
            node.len()
        )));
    }
    Ok(())
}

/// Refuses a fenced batch whose epoch is not the one stored for its shard,
/// or whose shard is not its workflow id's. `stored_epoch` is `None` when the
/// storage has no such shard. Unfenced batches pass (single-server storage).
pub fn check_fence(
    batch: &WriteBatch,
    count: u32,
    stored_epoch: Option<u64>,
) -> Result<(), StorageError> {
    let Some(fence) = batch.fence else {
        return Ok(());
    };
    let run_id = &batch.run.run_id;
    if count == 0 || fence.shard != shard_of(&batch.run.workflow_id, count) {
        return Err(StorageError::BadBatch {
            run_id: run_id.clone(),
            reason: format!(
                "fenced with shard {} but workflow id {:?} is not in it",
                fence.shard, batch.run.workflow_id
            ),
        });
    }
    if stored_epoch != Some(fence.epoch) {
        return Err(StorageError::Fenced {
            shard: fence.shard,
            epoch: fence.epoch,
            stored: stored_epoch.unwrap_or(0),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(owner: &str, incarnation: u64) -> LeaseRequest {
        LeaseRequest {
            shard: 3,
            owner: owner.to_string(),
            incarnation,
            lease_ms: 1_000,
        }
    }

    #[test]
    fn a_free_shard_is_taken_with_the_next_epoch() {
        let answer = decide_acquire(&ShardLease::free(3), &ask("a", 1), 500);
        assert!(answer.granted);
        assert_eq!((answer.lease.epoch, answer.lease.expires_ms), (1, 1_500));
    }

    #[test]
    fn a_held_lease_is_renewed_by_its_holder_only() {
        let held = decide_acquire(&ShardLease::free(3), &ask("a", 1), 0).lease;
        let renewed = decide_acquire(&held, &ask("a", 1), 999);
        assert!(renewed.granted);
        assert_eq!((renewed.lease.epoch, renewed.lease.expires_ms), (1, 1_999));
        let refused = decide_acquire(&held, &ask("b", 7), 999);
        assert!(!refused.granted);
        assert_eq!(refused.lease, held);
    }

    #[test]
    fn an_expired_lease_is_taken_by_anyone_with_a_new_epoch() {
        let held = decide_acquire(&ShardLease::free(3), &ask("a", 1), 0).lease;
        let taken = decide_acquire(&held, &ask("b", 7), 1_000);
        assert!(taken.granted);
        assert_eq!((taken.lease.owner.as_str(), taken.lease.epoch), ("b", 2));
        let late = decide_acquire(&taken.lease, &ask("a", 1), 1_001);
        assert!(!late.granted, "the old holder cannot renew what it lost");
    }

    #[test]
    fn a_restarted_node_takes_its_own_lease_at_once_with_a_new_epoch() {
        let held = decide_acquire(&ShardLease::free(3), &ask("a", 1), 0).lease;
        let again = decide_acquire(&held, &ask("a", 2), 10);
        assert!(again.granted);
        assert_eq!((again.lease.incarnation, again.lease.epoch), (2, 2));
    }

    #[test]
    fn a_release_frees_the_shard_and_fences_the_old_holder_at_once() {
        let held = decide_acquire(&ShardLease::free(3), &ask("a", 1), 0).lease;
        assert_eq!(decide_release(&held, "b", 7), None);
        let free = decide_release(&held, "a", 1).expect("the holder releases");
        assert!(!free.held_at(1));
        assert_eq!(free.epoch, 2, "a write a still has in flight is refused");
        assert_eq!(decide_acquire(&free, &ask("b", 7), 1).lease.epoch, 3);
    }

    #[test]
    fn shards_spread_workflow_ids_and_never_change() {
        assert_eq!(shard_of("order-1", 64), shard_of("order-1", 64));
        let used: std::collections::BTreeSet<u32> = (0..1_000)
            .map(|i| shard_of(&format!("wf-{i}"), 16))
            .collect();
        assert_eq!(used.len(), 16);
        assert_eq!(shard_of("", 64), (0xcbf2_9ce4_8422_2325u64 % 64) as u32);
    }
}
