//! `retrace server`: storage (a SQLite file, or Postgres), the service, and
//! the HTTP/JSON API; with `--cluster`, one member of a cluster of servers
//! sharing a Postgres database.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use retrace::engine::{ClusterConfig, Service, ServiceConfig};
use retrace::env::lease::{ADDRESS_BYTES_MAX, LEASE_MS_MAX, NODE_NAME_BYTES_MAX};
use retrace::env::{Env, SqliteStorage, Storage, StorageError, Unconnected};
#[cfg(feature = "postgres")]
use retrace::env::{PostgresStorage, is_postgres_url};
use retrace::http::{HttpConfig, HttpNetwork, HttpServer};

/// How long requests in flight may finish after Ctrl-C (long polls are cut).
const SHUTDOWN_GRACE_MS: u64 = 2_000;

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// The database: a SQLite file (created if missing), or a Postgres URL
    /// (`postgres://user[:password]@host:port/db`; add `?sslmode=require` for TLS).
    #[arg(
        long,
        env = "RETRACE_DB",
        default_value = "./retrace.db",
        hide_env_values = true
    )]
    db: String,
    /// Address to listen on; any non-loopback address needs --token.
    #[arg(long, default_value = "127.0.0.1:7233")]
    listen: SocketAddr,
    /// Threads serving requests (the SQLite writer and readers have their own).
    /// Default: one per core. Fewer helps when workers share the machine.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// Serve as one member of a cluster sharing a Postgres database (`--db
    /// postgres://…`): each member serves the shards it holds leases on.
    #[arg(long)]
    cluster: bool,
    /// This member's name, unique in the cluster (1 to 128 bytes; a
    /// restarted member takes its shards back at once under the same name).
    /// Default: the host name and the port (`host:7233`).
    #[arg(long, requires = "cluster")]
    node: Option<String>,
    /// The base URL clients and the other members reach this member at,
    /// exactly as clients list it in --address. Default: `http://<listen address>`.
    #[arg(long, requires = "cluster")]
    advertise: Option<String>,
    /// How long a member's shard leases and membership last without renewal
    /// (ms): a member that dies unannounced is replaced after about this long.
    #[arg(
        long,
        requires = "cluster",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(LEASE_MS_MIN..=LEASE_MS_MAX)
    )]
    lease_ms: u64,
}

/// Shortest lease `--lease-ms` takes: renewals come every fifth of it.
const LEASE_MS_MIN: u64 = 100;

/// Leases are renewed every this fraction of their length, and trusted
/// until this fraction before their end.
const LEASE_FRACTION: u64 = 5;

pub async fn run(args: ServerArgs, token: Option<String>) -> anyhow::Result<()> {
    check_cluster_db(&args)?;
    let mut config = ServiceConfig::default();
    let peer_token = token.clone();
    let http_config = HttpConfig::new(args.listen, &config.limits).with_token(token);
    // Refuse a bad listen/token combination or a taken port before touching
    // the database.
    let listener = HttpServer::bind(http_config).await?;
    config.cluster = match args.cluster {
        true => Some(cluster_config(&args, listener.local_addr())?),
        false => None,
    };
    let (storage, db_name) = open_storage(&args.db, args.cluster).await?;
    let env = Env::tokio(peers(config.cluster.as_ref(), peer_token)?);
    let cluster = config.cluster.clone();
    let service = Service::start(env, storage, config)
        .await
        .map_err(|error| anyhow::anyhow!("the service did not start: {}", error.message))?;
    let view = Arc::new(service.clone());
    let server = listener.serve_with_cluster(service.handler(), Some(view));
    match &cluster {
        Some(c) => tracing::info!(url = %server.url(), db = %db_name, node = %c.node,
            advertise = %c.address, lease_ms = c.lease_ms, "retrace server ready (cluster member)"),
        None => tracing::info!(url = %server.url(), db = %db_name, "retrace server ready"),
    }
    tracing::info!("web UI: {}/", server.url());
    shutdown_signal().await?;
    if cluster.is_some() {
        // Hand the shards over at once rather than when the leases run out.
        service.leave().await;
        tracing::info!("left the cluster: every shard released");
    }
    tracing::info!(grace_ms = SHUTDOWN_GRACE_MS, "shutting down");
    server
        .shutdown(SHUTDOWN_GRACE_MS)
        .await
        .context("the HTTP server failed")?;
    drop(service);
    tracing::info!("stopped");
    Ok(())
}

/// Refuses `--cluster` over anything but Postgres (exit status 2).
fn check_cluster_db(args: &ServerArgs) -> anyhow::Result<()> {
    let postgres = args.db.starts_with("postgres://") || args.db.starts_with("postgresql://");
    if args.cluster && !postgres {
        let message = format!(
            "--cluster needs a Postgres database that every member shares (--db \
             postgres://…); {} is a SQLite file, which one server holds alone",
            args.db
        );
        return Err(bad_input(message));
    }
    Ok(())
}

fn bad_input(message: String) -> anyhow::Error {
    anyhow::Error::new(crate::workflow::Exit::new(
        crate::workflow::EXIT_BAD_INPUT,
        message,
    ))
}

/// This member's place in the cluster, from the flags and the bound address.
/// The service's own network: none for a single server; for a cluster
/// member, the other members, reached as `NotOwner` answers name them (it
/// forwards signals, cancels and child starts to their shards' owners).
fn peers(
    cluster: Option<&ClusterConfig>,
    token: Option<String>,
) -> anyhow::Result<Arc<dyn retrace::env::Network>> {
    let Some(cluster) = cluster else {
        return Ok(Arc::new(Unconnected));
    };
    let own = retrace::http::HttpNetwork::new(&cluster.address, token.as_deref())?;
    let connector: retrace::env::Connector = Arc::new(move |address| {
        let network = retrace::http::HttpNetwork::new(address, token.as_deref());
        network
            .ok()
            .map(|n| Arc::new(n) as Arc<dyn retrace::env::Network>)
    });
    let servers = vec![(cluster.address.clone(), Arc::new(own) as _)];
    Ok(Arc::new(retrace::env::ClusterNetwork::growing(
        servers, connector,
    )))
}

fn cluster_config(args: &ServerArgs, bound: SocketAddr) -> anyhow::Result<ClusterConfig> {
    let node = match &args.node {
        Some(node) => node.clone(),
        None => format!("{}:{}", host_name(), bound.port()),
    };
    if node.is_empty() || node.len() > NODE_NAME_BYTES_MAX {
        let message = format!(
            "the node name {node:?} is {} bytes: a node name is 1 to {NODE_NAME_BYTES_MAX} \
             bytes (pass --node)",
            node.len()
        );
        return Err(bad_input(message));
    }
    let advertise = match &args.advertise {
        Some(url) => url.clone(),
        None if bound.ip().is_unspecified() => {
            let message = format!(
                "listening on {bound}, which is no address to reach this member at: pass \
                 --advertise http://<host>:{}",
                bound.port()
            );
            return Err(bad_input(message));
        }
        None => format!("http://{bound}"),
    };
    // The form clients key their routes by: no trailing slash.
    let checked = HttpNetwork::new(&advertise, None).map_err(|e| bad_input(e.to_string()))?;
    let address = checked.base_url().to_string();
    if address.len() > ADDRESS_BYTES_MAX {
        let message = format!("--advertise is at most {ADDRESS_BYTES_MAX} bytes");
        return Err(bad_input(message));
    }
    let fraction = (args.lease_ms / LEASE_FRACTION).max(1);
    Ok(ClusterConfig {
        lease_ms: args.lease_ms,
        renew_ms: fraction,
        margin_ms: fraction,
        ..ClusterConfig::new(&node, &address)
    })
}

/// The machine's host name (Linux's, else `$HOSTNAME`, else `localhost`).
fn host_name() -> String {
    let from_files = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|text| text.trim().to_string())
        .find(|name| !name.is_empty());
    from_files
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| "localhost".to_string())
}

/// Opens the storage `db` names: a Postgres URL (shared with the other
/// members in `cluster` mode), or else a SQLite file. Returns it with the
/// name to log (a Postgres URL without its password).
async fn open_storage(db: &str, cluster: bool) -> anyhow::Result<(Arc<dyn Storage>, String)> {
    let named = |error: StorageError| match error {
        // Names the database and what is wrong with it.
        StorageError::Io(message) => anyhow::anyhow!(message),
        other => anyhow::anyhow!("database {db}: {other}"),
    };
    #[cfg(feature = "postgres")]
    if is_postgres_url(db) {
        let connected = match cluster {
            true => PostgresStorage::connect_cluster(db).await,
            false => PostgresStorage::connect(db).await,
        };
        let storage = connected.map_err(named)?;
        let name = storage.target().to_string();
        return Ok((Arc::new(storage), name));
    }
    #[cfg(not(feature = "postgres"))]
    if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        anyhow::bail!("this retrace was built without the `postgres` feature: it cannot use {db}");
    }
    let path = std::path::PathBuf::from(db);
    let opened = tokio::task::spawn_blocking(move || SqliteStorage::open(&path)).await;
    let storage = opened
        .context("the database opener panicked")?
        .map_err(named)?;
    Ok((Arc::new(storage), db.to_string()))
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted.context("cannot watch Ctrl-C")?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot watch Ctrl-C")?;
    Ok(())
}
