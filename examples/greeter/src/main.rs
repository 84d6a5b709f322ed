//! A worker in its own process, connected to `retrace server` by URL.
//!
//! ```text
//! terminal 1: cargo run --release -- server
//! terminal 2: cargo run --release -p retrace-greeter
//! terminal 3: cargo run --release -- workflow start --type greet --id g1 --task-queue greetings --input '"ana"'
//!             cargo run --release -- workflow signal --id g1 --name approve
//!             cargo run --release -- workflow result --id g1
//!             cargo run --release -- workflow history --id g1
//! ```
//!
//! `greet` composes a greeting in an activity, sleeps on a durable timer (kill
//! the server or this worker meanwhile: the run carries on after a restart),
//! waits for the signal `approve`, and returns. `workflow query --id g1 --name
//! status` tells where it is.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use retrace::activity::{Activity, ActivityContext, ActivityOptions, ActivityResult};
use retrace::env::Env;
use retrace::http::{HttpNetwork, network_over};
use retrace::worker::Worker;
use retrace::workflow::{Workflow, WorkflowContext, WorkflowRegistry, WorkflowResult};

/// How long `greet` sleeps between its greeting and its approval.
const GREETING_SLEEP_MS: u64 = 3_000;

#[derive(Parser, Debug)]
#[command(about = "Runs the `greet` workflow and its activity for a Retrace server")]
struct Args {
    /// URL of the Retrace service; for a cluster, its servers' URLs
    /// separated by commas.
    #[arg(long, env = "RETRACE_ADDRESS", default_value = "http://127.0.0.1:7233")]
    address: String,
    /// Bearer token, if the server requires one.
    #[arg(long, env = "RETRACE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Task queue to poll.
    #[arg(long, default_value = "greetings")]
    task_queue: String,
}

/// Composes the greeting (an activity: it could call any service).
struct ComposeGreeting;

impl Activity for ComposeGreeting {
    const NAME: &'static str = "compose_greeting";
    type Input = String;
    type Output = String;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, ctx: ActivityContext, name: String) -> ActivityResult<String> {
        tracing::info!(
            key = ctx.idempotency_key(),
            attempt = ctx.attempt(),
            "composing a greeting"
        );
        Ok(format!("Hello, {name}!"))
    }
}

/// Greets, sleeps durably, waits for approval.
struct Greet;

impl Workflow for Greet {
    const NAME: &'static str = "greet";
    type Input = String;
    type Output = String;
    async fn run(ctx: WorkflowContext, name: String) -> WorkflowResult<String> {
        let status = Arc::new(Mutex::new("composing the greeting"));
        let shown = status.clone();
        ctx.query_handler("status", move |(): ()| *shown.lock().expect("status lock"));
        let greeting = ctx.activity::<ComposeGreeting>(name).await?;
        *status.lock().expect("status lock") = "sleeping";
        ctx.sleep(Duration::from_millis(GREETING_SLEEP_MS)).await?;
        *status.lock().expect("status lock") = "waiting for the signal approve";
        let approver: Option<String> = ctx.signal("approve").recv().await?;
        *status.lock().expect("status lock") = "done";
        Ok(match approver {
            Some(approver) => format!("{greeting} (approved by {approver})"),
            None => format!("{greeting} (approved)"),
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let servers = HttpNetwork::list(&args.address, args.token.as_deref())?;
    for server in &servers {
        if let Err(error) = server.health().await {
            tracing::warn!(%error, "the service is not reachable yet; the worker keeps trying");
        }
    }
    let mut registry = WorkflowRegistry::new();
    registry.register::<Greet>();
    let worker = Worker::builder(Env::tokio(network_over(&servers)), &args.task_queue)
        .workflows(registry)
        .activity(ComposeGreeting)
        .start();
    tracing::info!(
        address = args.address,
        task_queue = args.task_queue,
        "worker started"
    );
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    worker.shutdown().await;
    Ok(())
}
