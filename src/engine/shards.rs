//! Which shards this server owns, and until when it may act on them.
//!
//! A cluster server serves a run only while it holds the lease of the run's
//! shard ([`crate::env::lease::shard_of`] of its workflow id). It trusts a
//! lease until `sent + lease_ms - margin_ms` on its own monotonic clock,
//! where `sent` is when it asked the storage for it: the storage started
//! the lease no earlier than that, so as long as this server's clock does
//! not run slower than the storage's by more than `margin_ms` per lease,
//! it stops before anyone else can take the shard. Its writes carry the
//! lease's epoch anyway, so a server whose clock lies (or that stalls past
//! its lease) cannot write: the storage refuses the fence.
//!
//! Balance: the shards go round-robin over the live members in name order
//! ([`desired_owner`]); every server computes the same assignment from the
//! same membership, releases what is no longer its own and takes what is
//! once free or expired.

use std::collections::BTreeMap;

use crate::api::{ErrorCode, ServiceError};
use crate::env::lease::{Fence, Member, shard_of};

/// A server's place in a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This server's node name, unique in the cluster.
    pub node: String,
    /// Where clients and other servers reach it (a URL; a node name in the
    /// simulator).
    pub address: String,
    /// How long a shard lease and a membership last without renewal.
    pub lease_ms: u64,
    /// How often leases and membership are renewed and the balance redone.
    pub renew_ms: u64,
    /// How much earlier than the lease's end the server stops serving it.
    pub margin_ms: u64,
}

impl ClusterConfig {
    /// A member named `node` reached at `address`, with 10 s leases renewed
    /// every 2 s and trusted until 2 s before they end.
    pub fn new(node: &str, address: &str) -> ClusterConfig {
        ClusterConfig {
            node: node.to_string(),
            address: address.to_string(),
            lease_ms: 10_000,
            renew_ms: 2_000,
            margin_ms: 2_000,
        }
    }
}

/// A shard held: the epoch to fence writes with, and until when (this
/// server's monotonic microseconds) it is trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub epoch: u64,
    pub until_us: u64,
}

/// The shards this server holds and what it last saw of the others.
#[derive(Debug, Default)]
pub struct Shards {
    /// The storage's shard count (0 until the first view).
    pub count: u32,
    pub held: BTreeMap<u32, Held>,
    /// The node each shard was last seen held by.
    pub owners: BTreeMap<u32, String>,
    /// Live members' addresses by node.
    pub addresses: BTreeMap<String, String>,
    /// The server left the cluster: it holds nothing and takes nothing.
    pub left: bool,
}

impl Shards {
    /// The fence for a write of `workflow_id`'s run at monotonic `now_us`,
    /// or `NotOwner` naming the owner's address if known.
    pub fn fence(&self, workflow_id: &str, now_us: u64) -> Result<Fence, ServiceError> {
        if self.count == 0 {
            let message = "this server has not joined its cluster yet; retry";
            return Err(ServiceError::new(ErrorCode::NotOwner, message));
        }
        let shard = shard_of(workflow_id, self.count);
        match self.held.get(&shard) {
            Some(held) if held.until_us > now_us => Ok(Fence {
                shard,
                epoch: held.epoch,
            }),
            _ => Err(self.not_owner(shard)),
        }
    }

    /// The shard of `workflow_id` (`None` before the first view).
    pub fn shard_of(&self, workflow_id: &str) -> Option<u32> {
        (self.count > 0).then(|| shard_of(workflow_id, self.count))
    }

    fn not_owner(&self, shard: u32) -> ServiceError {
        let owner = self.owners.get(&shard);
        let address = owner.and_then(|node| self.addresses.get(node)).cloned();
        let message = match owner {
            Some(node) => format!("shard {shard} is owned by node {node:?}; retry there"),
            None => format!("shard {shard} has no owner yet; retry"),
        };
        ServiceError {
            owner: address,
            ..ServiceError::new(ErrorCode::NotOwner, message)
        }
    }

    /// Shards whose trust ran out by `now_us`.
    pub fn expired(&self, now_us: u64) -> Vec<u32> {
        let expired = self.held.iter().filter(|(_, held)| held.until_us <= now_us);
        expired.map(|(shard, _)| *shard).collect()
    }
}

/// The node that should own `shard`: round-robin over the live members in
/// name order. `None` with no live member.
pub fn desired_owner(shard: u32, members: &[Member]) -> Option<&str> {
    let mut alive: Vec<&str> = members
        .iter()
        .filter(|m| m.alive)
        .map(|m| m.node.as_str())
        .collect();
    alive.sort_unstable();
    alive.dedup();
    let index = (shard as usize).checked_rem(alive.len())?;
    Some(alive[index])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node: &str, alive: bool) -> Member {
        Member {
            node: node.to_string(),
            incarnation: 1,
            address: format!("http://{node}"),
            expires_ms: 0,
            alive,
        }
    }

    #[test]
    fn shards_spread_evenly_over_the_live_members_only() {
        let members = [member("b", true), member("a", true), member("c", false)];
        let owners: Vec<&str> = (0..4)
            .map(|shard| desired_owner(shard, &members).expect("a live member"))
            .collect();
        assert_eq!(owners, ["a", "b", "a", "b"]);
        assert_eq!(desired_owner(0, &[member("c", false)]), None);
    }

    #[test]
    fn a_shard_is_served_until_its_trust_runs_out_then_redirects() {
        let mut shards = Shards {
            count: 1,
            ..Shards::default()
        };
        let held = Held {
            epoch: 4,
            until_us: 1_000,
        };
        shards.held.insert(0, held);
        let fence = shards.fence("any", 999).expect("held");
        assert_eq!((fence.shard, fence.epoch), (0, 4));
        shards.owners.insert(0, "b".into());
        shards.addresses.insert("b".into(), "http://b".into());
        let error = shards.fence("any", 1_000).expect_err("trust ran out");
        assert_eq!(error.code, ErrorCode::NotOwner);
        assert_eq!(error.owner.as_deref(), Some("http://b"));
        assert_eq!(shards.expired(1_000), [0]);
    }
}
