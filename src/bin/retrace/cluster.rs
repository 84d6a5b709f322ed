//! `retrace cluster status`: a cluster's members and every shard's lease,
//! as the shared storage has them (`GET /api/v1/cluster` of any member).

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Subcommand;
use retrace::api::ServiceError;
use retrace::env::lease::ClusterView;
use retrace::http::HttpNetwork;

use crate::timeline::table;
use crate::workflow::{EXIT_BAD_INPUT, EXIT_REFUSED, EXIT_UNREACHABLE, exit};

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Shows the members (node, address, alive, membership expiry) and every
    /// shard's owner, epoch and lease expiry, asked of the first server in
    /// --address that answers. Expiries are in ms from the storage's now
    /// (negative: past).
    Status {
        /// Prints the storage's view as JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(
    command: ClusterCommand,
    address: &str,
    token: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let ClusterCommand::Status { json } = command;
    let servers =
        HttpNetwork::list(address, token).map_err(|e| exit(EXIT_BAD_INPUT, e.to_string()))?;
    let view = ask(&servers).await?;
    match json {
        true => println!(
            "{}",
            serde_json::to_string_pretty(&view).expect("a view always encodes")
        ),
        false => print!("{}", status_text(&view)),
    }
    Ok(ExitCode::SUCCESS)
}

/// The view of the first server that gives one. A refusal that is not
/// transient (a server outside any cluster) ends the search.
async fn ask(servers: &[HttpNetwork]) -> anyhow::Result<ClusterView> {
    let mut failures = Vec::new();
    for server in servers {
        let url = server.base_url();
        match server.cluster_view().await {
            Ok(Ok(view)) => return Ok(view),
            Ok(Err(error)) if error.code.is_transient() => {
                failures.push(format!("{url}: {}", describe(&error)));
            }
            Ok(Err(error)) => {
                return Err(exit(EXIT_REFUSED, format!("{url}: {}", describe(&error))));
            }
            Err(error) => failures.push(format!("{url}: {error}")),
        }
    }
    let message = format!(
        "no server gave the cluster's view: {} (is `retrace server --cluster` running there?)",
        failures.join("; ")
    );
    Err(exit(EXIT_UNREACHABLE, message))
}

fn describe(error: &ServiceError) -> String {
    let code = serde_json::to_value(error.code).unwrap_or_default();
    format!("{} [{}]", error.message, code.as_str().unwrap_or("unknown"))
}

/// Milliseconds from the storage's now to `at` (negative: past).
fn from_now(view: &ClusterView, at: u64) -> i128 {
    i128::from(at) - i128::from(view.now_ms)
}

/// A summary line, the members' table and the shards' table.
pub fn status_text(view: &ClusterView) -> String {
    let members: Vec<Vec<String>> = view
        .members
        .iter()
        .map(|m| {
            let alive = if m.alive { "yes" } else { "no" };
            let expires = from_now(view, m.expires_ms).to_string();
            vec![m.node.clone(), m.address.clone(), alive.into(), expires]
        })
        .collect();
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    let shards: Vec<Vec<String>> = view
        .shards
        .iter()
        .map(|lease| {
            let (owner, state, expires) = if lease.owner.is_empty() {
                ("-".to_string(), "free", "-".to_string())
            } else if lease.held_at(view.now_ms) {
                *held.entry(lease.owner.as_str()).or_default() += 1;
                let expires = from_now(view, lease.expires_ms).to_string();
                (lease.owner.clone(), "held", expires)
            } else {
                let expires = from_now(view, lease.expires_ms).to_string();
                (lease.owner.clone(), "expired", expires)
            };
            let shard = lease.shard.to_string();
            vec![shard, owner, lease.epoch.to_string(), state.into(), expires]
        })
        .collect();
    let alive = view.members.iter().filter(|m| m.alive).count();
    let spread: Vec<String> = held.iter().map(|(n, c)| format!("{n} {c}")).collect();
    let unheld = view.shards.len() - held.values().sum::<usize>();
    let mut out = format!(
        "{alive} of {} members alive; {} shards: {} held ({}), {unheld} not held\n\n",
        view.members.len(),
        view.shards.len(),
        view.shards.len() - unheld,
        spread.join(", "),
    );
    let member_header = ["NODE", "ADDRESS", "ALIVE", "EXPIRES IN (ms)"];
    out += &table(&member_header, &members);
    out += "\n";
    let shard_header = ["SHARD", "OWNER", "EPOCH", "LEASE", "EXPIRES IN (ms)"];
    out += &table(&shard_header, &shards);
    out
}

#[cfg(test)]
mod tests {
    use retrace::env::lease::{Member, ShardLease};

    use super::*;

    #[test]
    fn the_status_shows_members_and_shards_with_expiries_from_the_storages_now() {
        let member = |node: &str, alive, expires_ms| Member {
            node: node.into(),
            incarnation: 1,
            address: format!("http://{node}:7233"),
            expires_ms,
            alive,
        };
        let lease = |shard, owner: &str, epoch, expires_ms| ShardLease {
            shard,
            owner: owner.into(),
            incarnation: 1,
            epoch,
            expires_ms,
        };
        let view = ClusterView {
            now_ms: 10_000,
            members: vec![member("a", true, 12_000), member("b", false, 9_000)],
            shards: vec![
                lease(0, "a", 3, 11_500),
                lease(1, "b", 2, 9_500),
                lease(2, "", 1, 0),
            ],
        };
        let text = status_text(&view);
        assert!(text.starts_with("1 of 2 members alive; 3 shards: 1 held (a 1), 2 not held\n"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2], "NODE  ADDRESS        ALIVE  EXPIRES IN (ms)");
        assert_eq!(lines[3], "a     http://a:7233  yes    2000");
        assert_eq!(lines[4], "b     http://b:7233  no     -1000");
        assert_eq!(lines[7], "0      a      3      held     1500");
        assert_eq!(lines[8], "1      b      2      expired  -500");
        assert_eq!(lines[9], "2      -      1      free     -");
    }
}
