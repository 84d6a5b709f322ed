//! The fencing oracle of a cluster: the storage accepts a write only from
//! the node that holds the write's shard, at the epoch it holds.
//!
//! The storage notes, at every accepted write of a sharded store, who held
//! the shard at that instant; a write accepted from any other node (a
//! server that stalled past its lease, or was cut off and came back) or
//! without a fence is a violation. Two-sided: a cluster whose writes were
//! never fenced at all did not exercise the rule, which is a violation too.

use std::collections::BTreeMap;

use super::Violation;

/// Checks the storage's record of writes (`fenced_writes` by node).
pub fn check_fencing(
    services: usize,
    foreign_writes: &[String],
    fenced_writes: &BTreeMap<String, u64>,
) -> Vec<Violation> {
    if services < 2 {
        assert!(
            foreign_writes.is_empty(),
            "a single service writes unsharded"
        );
        return Vec::new();
    }
    let mut violations: Vec<Violation> = foreign_writes
        .iter()
        .take(5)
        .map(|message| Violation::new("fencing", message.clone()))
        .collect();
    if fenced_writes.values().sum::<u64>() == 0 {
        let message = format!("a cluster of {services} services made no fenced write");
        violations.push(Violation::new("fencing", message));
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_from_a_node_without_the_lease_is_a_violation() {
        let fenced = BTreeMap::from([("service".to_string(), 3)]);
        assert!(check_fencing(2, &[], &fenced).is_empty());
        let foreign = ["service-1 wrote to shard 2 …".to_string()];
        assert_eq!(check_fencing(2, &foreign, &fenced).len(), 1);
        assert_eq!(check_fencing(3, &[], &BTreeMap::new()).len(), 1);
    }
}
