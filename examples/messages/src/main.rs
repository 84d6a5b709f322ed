//! `retrace-messages`: the order-of-messages web app.
//!
//! ```text
//! cargo run -p retrace-messages                      # open http://127.0.0.1:8080
//! cargo run -p retrace-messages -- --sleep-ms 1000 --listen 127.0.0.1:9000
//! cargo run -p retrace-messages --features tls -- \
//!     --pokemon-url https://pokeapi.co/api/v2/pokemon --joke-url https://icanhazdadjoke.com/
//! cargo run -p retrace-messages -- --server http://127.0.0.1:7233   # with `retrace server`
//! ```
//!
//! Startup problems (an unusable database, a bad URL, a busy port) are one
//! line on stderr and exit status 2.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use retrace_messages::app::{App, AppConfig, LISTEN_DEFAULT};
use retrace_messages::{SLEEP_MS_DEFAULT, SLEEP_MS_MAX};

/// Exit status when the app cannot start.
const EXIT_STARTUP: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "retrace-messages",
    version,
    about = "The order-of-messages example: a web page driving a durable Retrace workflow"
)]
struct Args {
    /// Address of the page (loopback only).
    #[arg(long, default_value = LISTEN_DEFAULT)]
    listen: SocketAddr,
    /// SQLite file of the embedded engine (run histories); created if missing.
    #[arg(long, default_value = "retrace-messages.db")]
    db: PathBuf,
    /// SQLite file with the `messages` table; created and seeded if missing.
    #[arg(long, default_value = "messages.db")]
    messages_db: PathBuf,
    /// Use a separate `retrace server` at this URL instead of the embedded engine.
    #[arg(long, env = "RETRACE_ADDRESS")]
    server: Option<String>,
    /// Bearer token for --server.
    #[arg(long, env = "RETRACE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PokeAPI-shaped base URL, e.g. https://pokeapi.co/api/v2/pokemon (default: the local stand-in).
    #[arg(long)]
    pokemon_url: Option<String>,
    /// Dad-joke-API-shaped URL, e.g. https://icanhazdadjoke.com/ (default: the local stand-in).
    #[arg(long)]
    joke_url: Option<String>,
    /// Length of each run's durable timer, in milliseconds.
    #[arg(long, default_value_t = SLEEP_MS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(0..=SLEEP_MS_MAX))]
    sleep_ms: u64,
    /// Also serve Retrace's Web UI for the embedded engine here (e.g. 127.0.0.1:7233).
    #[arg(long)]
    ui_listen: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config = AppConfig {
        listen: args.listen,
        db: args.db,
        messages_db: args.messages_db,
        server: args.server,
        token: args.token,
        pokemon_url: args.pokemon_url,
        joke_url: args.joke_url,
        sleep_ms: args.sleep_ms,
        ui_listen: args.ui_listen,
    };
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("retrace-messages: {error:#}");
            ExitCode::from(EXIT_STARTUP)
        }
    }
}

/// Ctrl-C, or SIGTERM where there is one.
async fn stop_requested() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted,
            _ = terminate.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}

async fn run(config: AppConfig) -> anyhow::Result<()> {
    let app = App::start(config).await?;
    // stdout carries only this line, so scripts and tests can read the address.
    println!("retrace-messages listening on {}", app.url());
    if let Some(url) = app.ui_url() {
        tracing::info!("Retrace's Web UI: {url}/");
    }
    stop_requested().await?;
    tracing::info!("shutting down");
    app.shutdown().await;
    Ok(())
}
