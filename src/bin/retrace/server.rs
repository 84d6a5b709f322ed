//! `retrace server`: storage (a SQLite file, or Postgres), the service, and
//! the HTTP/JSON API.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use retrace::engine::{Service, ServiceConfig};
use retrace::env::{Env, SqliteStorage, Storage, StorageError, Unconnected};
#[cfg(feature = "postgres")]
use retrace::env::{PostgresStorage, is_postgres_url};
use retrace::http::{HttpConfig, HttpServer};

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
}

pub async fn run(args: ServerArgs, token: Option<String>) -> anyhow::Result<()> {
    let config = ServiceConfig::default();
    let http_config = HttpConfig::new(args.listen, &config.limits).with_token(token);
    // Refuse a bad listen/token combination or a taken port before touching
    // the database.
    let listener = HttpServer::bind(http_config).await?;
    let (storage, db_name) = open_storage(&args.db).await?;
    let env = Env::tokio(Arc::new(Unconnected));
    let service = Service::start(env, storage, config)
        .await
        .map_err(|error| anyhow::anyhow!("the service did not start: {}", error.message))?;
    let server = listener.serve(service.handler());
    tracing::info!(url = %server.url(), db = %db_name, "retrace server ready");
    tracing::info!("web UI: {}/", server.url());
    shutdown_signal().await?;
    tracing::info!(grace_ms = SHUTDOWN_GRACE_MS, "shutting down");
    server
        .shutdown(SHUTDOWN_GRACE_MS)
        .await
        .context("the HTTP server failed")?;
    drop(service);
    tracing::info!("stopped");
    Ok(())
}

/// Opens the storage `db` names: a Postgres URL, or else a SQLite file.
/// Returns it with the name to log (a Postgres URL without its password).
async fn open_storage(db: &str) -> anyhow::Result<(Arc<dyn Storage>, String)> {
    let named = |error: StorageError| match error {
        // Names the database and what is wrong with it.
        StorageError::Io(message) => anyhow::anyhow!(message),
        other => anyhow::anyhow!("database {db}: {other}"),
    };
    #[cfg(feature = "postgres")]
    if is_postgres_url(db) {
        let storage = PostgresStorage::connect(db).await.map_err(named)?;
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
