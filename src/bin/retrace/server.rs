//! `retrace server`: SQLite storage, the service, and the HTTP/JSON API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use retrace::engine::{Service, ServiceConfig};
use retrace::env::{Env, SqliteStorage, StorageError, Unconnected};
use retrace::http::{HttpConfig, HttpServer};

/// How long requests in flight may finish after Ctrl-C (long polls are cut).
const SHUTDOWN_GRACE_MS: u64 = 2_000;

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// SQLite database file (created if missing).
    #[arg(long, default_value = "./retrace.db")]
    db: PathBuf,
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
    let db = args.db.clone();
    let opened = tokio::task::spawn_blocking(move || SqliteStorage::open(&db)).await;
    let storage = opened
        .context("the database opener panicked")?
        .map_err(|error| match error {
            // Names the database and what is wrong with it.
            StorageError::Io(message) => anyhow::anyhow!(message),
            other => anyhow::anyhow!("database {}: {other}", args.db.display()),
        })?;
    let env = Env::tokio(Arc::new(Unconnected));
    let service = Service::start(env, Arc::new(storage), config)
        .await
        .map_err(|error| anyhow::anyhow!("the service did not start: {}", error.message))?;
    let server = listener.serve(service.handler());
    tracing::info!(url = %server.url(), db = %args.db.display(), "retrace server ready");
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
