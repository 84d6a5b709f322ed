//! A cluster of real `retrace server --cluster` processes over one Postgres
//! database, for the cluster tests and the failover benchmark: member `i` is
//! node `n{i}` on its own free port of 127.0.0.1, advertising
//! `http://127.0.0.1:<port>`, logging to `member-{i}.log`; a killed member
//! restarts under the same name and port.
// Tests drive real processes and wait on real time.
#![allow(clippy::disallowed_methods, dead_code)]

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use retrace::env::Network;
use retrace::env::lease::ClusterView;
use retrace::http::{HttpNetwork, network_over};

use super::server_process::{ServerProcess, free_port};

/// How long a view where every member is alive and every shard held may take.
pub const SETTLE_TIMEOUT_MS: u64 = 30_000;

/// The members of a cluster, each a `retrace server --cluster` process.
pub struct Members {
    db: String,
    dir: PathBuf,
    lease_ms: u64,
    extra: Vec<String>,
    /// Member `i`'s process (`None` while killed) and port.
    servers: Vec<(Option<ServerProcess>, u16)>,
}

impl Members {
    /// Starts `count` members over Postgres database `db` (a URL), with
    /// leases of `lease_ms` and `extra` arguments for `retrace server`, and
    /// waits until each answers its health check.
    pub async fn start(
        db: &str,
        dir: &Path,
        count: usize,
        lease_ms: u64,
        extra: &[&str],
    ) -> Members {
        let mut members = Members {
            db: db.to_string(),
            dir: dir.to_path_buf(),
            lease_ms,
            extra: extra.iter().map(|a| a.to_string()).collect(),
            servers: (0..count).map(|_| (None, free_port())).collect(),
        };
        for index in 0..count {
            members.restart(index).await;
        }
        members
    }

    /// Node `i`'s name.
    pub fn node(index: usize) -> String {
        format!("n{index}")
    }

    /// Every member's URL (as it advertises itself), in member order.
    pub fn urls(&self) -> Vec<String> {
        let url = |port: &u16| format!("http://127.0.0.1:{port}");
        self.servers.iter().map(|(_, port)| url(port)).collect()
    }

    /// The comma-separated list of URLs (`--address`, `RETRACE_ADDRESS`).
    pub fn address_list(&self) -> String {
        self.urls().join(",")
    }

    /// A `ClusterNetwork` over every member, as clients and workers use.
    pub fn network(&self) -> Arc<dyn Network> {
        let servers = HttpNetwork::list(&self.address_list(), None).expect("valid URLs");
        network_over(&servers)
    }

    /// The same with the list turned by `by`, so the first server asked
    /// for a workflow id differs from one such network to the next.
    pub fn network_turned(&self, by: usize) -> Arc<dyn Network> {
        let mut urls = self.urls();
        let by = by % urls.len();
        urls.rotate_left(by);
        let servers = HttpNetwork::list(&urls.join(","), None).expect("valid URLs");
        network_over(&servers)
    }

    /// SIGKILLs member `index`: no shutdown code runs, its leases lapse.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut server) = self.servers[index].0.take() {
            server.kill();
        }
    }

    /// SIGTERMs member `index`: it leaves the cluster, releasing its
    /// shards, and exits. The task returned waits for the exit.
    pub fn terminate(&mut self, index: usize) -> tokio::task::JoinHandle<ExitStatus> {
        let mut server = self.servers[index].0.take().expect("the member runs");
        tokio::task::spawn_blocking(move || server.terminate())
    }

    /// Starts member `index` (again) under its name and port; waits until
    /// it answers.
    pub async fn restart(&mut self, index: usize) {
        self.kill(index);
        let port = self.servers[index].1;
        let log = self.dir.join(format!("member-{index}.log"));
        let lease_ms = self.lease_ms.to_string();
        let node = Members::node(index);
        let mut args = vec!["--cluster", "--node", &node, "--lease-ms", &lease_ms];
        args.extend(self.extra.iter().map(String::as_str));
        let server = ServerProcess::start_with(Path::new(&self.db), port, &log, &args).await;
        self.servers[index].0 = Some(server);
    }

    /// Member `index`'s log so far.
    pub fn log(&self, index: usize) -> String {
        let path = self.dir.join(format!("member-{index}.log"));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Every member's log, each under a header.
    pub fn logs(&self) -> String {
        (0..self.servers.len())
            .map(|i| format!("=== member {i} ===\n{}", self.log(i)))
            .collect()
    }

    /// The storage's view, from the first member that gives one.
    pub async fn view(&self) -> Option<ClusterView> {
        for url in self.urls() {
            let network = HttpNetwork::new(&url, None).expect("a valid URL");
            if let Ok(Ok(view)) = network.cluster_view().await {
                return Some(view);
            }
        }
        None
    }

    /// Waits until exactly the running members are alive and every shard is
    /// held by the one the balance gives it (round-robin over the running
    /// members in name order, as the servers assign them); returns that view.
    pub async fn settled(&self) -> ClusterView {
        let mut running: Vec<String> = (0..self.servers.len())
            .filter(|i| self.servers[*i].0.is_some())
            .map(Members::node)
            .collect();
        running.sort();
        let started = Instant::now();
        loop {
            if let Some(view) = self.view().await {
                let alive: Vec<String> = view
                    .members
                    .iter()
                    .filter(|m| m.alive)
                    .map(|m| m.node.clone())
                    .collect();
                let held = view.shards.iter().all(|l| {
                    let desired = &running[l.shard as usize % running.len()];
                    l.held_at(view.now_ms) && l.owner == *desired
                });
                if alive == running && held {
                    return view;
                }
            }
            let waited = started.elapsed();
            if waited > Duration::from_millis(SETTLE_TIMEOUT_MS) {
                panic!(
                    "the cluster did not settle on {running:?}: {:?}\n{}",
                    self.view().await,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
