//! The cluster page: the members and who holds each shard, as the shared
//! storage has them (what `retrace cluster status` prints).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::env::lease::{ClusterView, ShardLease};

use super::html::{duration_ms, escape};
use super::page;

/// The cluster page of `view`, or of why there is none (`Err`: this server
/// is not a member, or the storage could not say).
pub fn cluster_page(view: Result<&ClusterView, &str>) -> String {
    let mut body = String::from(
        "<h1>Cluster</h1><p class=\"muted\">Members and shard leases as the shared storage has \
         them; times are on the storage's clock.</p>",
    );
    match view {
        Err(why) => {
            let _ = write!(body, "<p class=\"card muted\">{}</p>", escape(why));
        }
        Ok(view) => {
            body.push_str(&members_table(view));
            body.push_str(&shards_table(view));
        }
    }
    page("Cluster", &body)
}

/// Shards each node holds now.
fn held_by_node(view: &ClusterView) -> BTreeMap<&str, usize> {
    let mut held = BTreeMap::new();
    for lease in view.shards.iter().filter(|l| l.held_at(view.now_ms)) {
        *held.entry(lease.owner.as_str()).or_insert(0) += 1;
    }
    held
}

fn members_table(view: &ClusterView) -> String {
    let held = held_by_node(view);
    let mut out = String::from(
        "<section class=\"card\"><h2>Members</h2><div class=\"scroll\"><table><thead><tr>\
         <th>Node</th><th>Address</th><th>State</th><th>Shards held</th><th>Membership</th>\
         </tr></thead><tbody>",
    );
    for member in &view.members {
        let _ = write!(
            out,
            "<tr data-member=\"{node}\"><td class=\"id\">{node}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            escape(&member.address),
            if member.alive { "alive" } else { "lapsed" },
            held.get(member.node.as_str()).copied().unwrap_or(0),
            ends(member.expires_ms, view.now_ms),
            node = escape(&member.node),
        );
    }
    if view.members.is_empty() {
        out.push_str("<tr><td colspan=\"5\" class=\"muted\">No member has joined.</td></tr>");
    }
    out.push_str("</tbody></table></div></section>");
    out
}

fn shards_table(view: &ClusterView) -> String {
    let mut out = format!(
        "<section class=\"card\"><h2>Shards ({})</h2><div class=\"scroll\"><table><thead><tr>\
         <th>Shard</th><th>Owner</th><th>Epoch</th><th>Lease</th></tr></thead><tbody>",
        view.shards.len()
    );
    for lease in &view.shards {
        let _ = write!(
            out,
            "<tr data-shard=\"{}\"><td>{}</td><td class=\"id\">{}</td><td>{}</td><td>{}</td></tr>",
            lease.shard,
            lease.shard,
            owner(lease, view.now_ms),
            lease.epoch,
            if lease.owner.is_empty() {
                "—".to_string()
            } else {
                ends(lease.expires_ms, view.now_ms)
            },
        );
    }
    out.push_str("</tbody></table></div></section>");
    out
}

fn owner(lease: &ShardLease, now_ms: u64) -> String {
    if lease.owner.is_empty() {
        "<span class=\"muted\">free</span>".to_string()
    } else if lease.held_at(now_ms) {
        escape(&lease.owner)
    } else {
        format!(
            "{} <span class=\"muted\">(expired)</span>",
            escape(&lease.owner)
        )
    }
}

/// "ends in 3.2s" or "ended 1.5s ago".
fn ends(at_ms: u64, now_ms: u64) -> String {
    if at_ms >= now_ms {
        format!("ends in {}", duration_ms(at_ms - now_ms))
    } else {
        format!("ended {} ago", duration_ms(now_ms - at_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::lease::Member;

    fn lease(shard: u32, owner: &str, epoch: u64, expires_ms: u64) -> ShardLease {
        ShardLease {
            shard,
            owner: owner.to_string(),
            incarnation: 1,
            epoch,
            expires_ms,
        }
    }

    #[test]
    fn the_page_counts_each_members_shards_and_marks_free_and_expired_leases() {
        let member = |node: &str, alive| Member {
            node: node.to_string(),
            incarnation: 1,
            address: format!("http://{node}:7233"),
            expires_ms: 12_000,
            alive,
        };
        let view = ClusterView {
            now_ms: 10_000,
            shards: vec![
                lease(0, "a", 3, 13_000),
                lease(1, "b<x>", 1, 12_500),
                lease(2, "a", 2, 9_000),
                lease(3, "", 4, 0),
            ],
            members: vec![member("a", true), member("b<x>", false)],
        };
        let html = cluster_page(Ok(&view));
        assert!(html.contains("<tr data-member=\"a\"><td class=\"id\">a</td><td>http://a:7233</td><td>alive</td><td>1</td><td>ends in 2.0s</td></tr>"), "{html}");
        assert!(html.contains("b&lt;x&gt;"), "names are escaped: {html}");
        assert!(!html.contains("b<x>"));
        assert!(html.contains("<td>lapsed</td>"));
        assert!(html.contains("a <span class=\"muted\">(expired)</span>"));
        assert!(html.contains("<span class=\"muted\">free</span>"));
        assert!(html.contains("Shards (4)"));
        assert!(html.contains("ended 1.0s ago"));
        let refused = cluster_page(Err("not a member of a cluster"));
        assert!(refused.contains("not a member of a cluster"));
        assert!(!refused.contains("<table"));
    }
}
