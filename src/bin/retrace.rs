//! `retrace`: run the service, drive workflows, inspect histories.
//!
//! ```text
//! retrace server [--db ./retrace.db] [--listen 127.0.0.1:7233] [--token T]
//! retrace server --cluster --db postgres://… [--node N] [--advertise URL] [--lease-ms 10000]
//! retrace --address http://a:7233,http://b:7233 cluster status [--json]
//! retrace workflow start --type greet --id g1 --task-queue greetings --input '"ana"'
//! retrace workflow signal --id g1 --name approve
//! retrace workflow result --id g1
//! retrace workflow history --id g1 [--json]
//! retrace history diff A.json B.json
//! retrace history check FILE
//! retrace new project shop | new workflow NAME | new activity NAME
//! retrace mcp
//! ```
//!
//! Every failure is one line on stderr and a non-zero exit status.

/// mimalloc: the server allocates per request (JSON bodies, events, run state);
/// a faster allocator is measurable on the W10 benchmark.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "retrace/cluster.rs"]
mod cluster;
#[path = "retrace/mcp/mod.rs"]
mod mcp;
#[path = "retrace/scaffold/mod.rs"]
mod scaffold;
#[path = "retrace/server.rs"]
mod server;
#[path = "retrace/timeline.rs"]
mod timeline;
#[path = "retrace/workflow.rs"]
mod workflow;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use retrace::history::{History, HistoryForm};

/// Exit status of `history diff` when the histories differ.
const EXIT_DIFFERENT: u8 = 1;
/// Exit status for bad input (a file that cannot be read or is not a history).
use workflow::EXIT_BAD_INPUT;

#[derive(Parser, Debug)]
#[command(
    name = "retrace",
    version,
    about = "A durable workflow engine: server, workflows, histories",
    after_help = "Exit status: 0 success; 1 failure (a run that did not complete, a history that \
does not check, histories that differ); 2 bad input (flags, JSON values, the address; for \
`history diff`, a file that is not a history); 3 no such workflow or run; 4 refused by the service \
(closed run, taken id, a limit); 5 service unreachable; 124 `workflow result --timeout` passed \
with the run still open."
)]
struct Cli {
    /// URL of the Retrace service; for a cluster, its servers' URLs
    /// separated by commas, as the servers advertise them.
    #[arg(
        long,
        global = true,
        env = "RETRACE_ADDRESS",
        default_value = "http://127.0.0.1:7233"
    )]
    address: String,
    /// Bearer token: required by the server on a non-loopback address, then sent by clients.
    #[arg(long, global = true, env = "RETRACE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the service: SQLite storage and the HTTP/JSON API.
    Server(server::ServerArgs),
    /// Starts, signals, queries and inspects workflow runs.
    #[command(subcommand)]
    Workflow(workflow::WorkflowCommand),
    /// Shows a cluster of servers: its members and who holds each shard.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Works on history files (no service needed).
    #[command(subcommand)]
    History(HistoryCommand),
    /// Scaffolds a project, a workflow or an activity (each with its simulation test).
    #[command(subcommand)]
    New(scaffold::NewCommand),
    /// Serves the Model Context Protocol over stdio: tools for AI agents.
    Mcp,
}

#[derive(Subcommand, Debug)]
enum HistoryCommand {
    /// Shows where two history files first diverge (exit 0 equal, 1 different, 2 bad input).
    Diff {
        /// The first (expected) history.
        left: PathBuf,
        /// The second (actual) history.
        right: PathBuf,
    },
    /// Checks that a history file is well-formed (exit 0 if it is). Reads
    /// Retrace's canonical JSON or Temporal's export
    /// (`temporal workflow show --output json`).
    Check {
        /// The history file.
        file: PathBuf,
    },
    /// Prints a history file (either form) in the form asked for.
    Convert {
        /// The history file.
        file: PathBuf,
        /// `retrace` (the canonical JSON) or `temporal` (Temporal's JSON export).
        #[arg(long, value_parser = ["retrace", "temporal"])]
        to: String,
    },
}

fn init_logs(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_server = matches!(cli.command, Command::Server(_));
    init_logs(if is_server { "info" } else { "warn" });
    let mut builder = match &cli.command {
        Command::Server(args) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(threads) = args.threads {
                builder.worker_threads(usize::from(threads));
            }
            builder
        }
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            match error.downcast_ref::<workflow::Exit>() {
                Some(exit) => ExitCode::from(exit.code),
                None => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Server(args) => server::run(args, cli.token)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Workflow(command) => {
            workflow::run(command, &cli.address, cli.token.as_deref()).await
        }
        Command::Cluster(command) => {
            cluster::run(command, &cli.address, cli.token.as_deref()).await
        }
        Command::History(HistoryCommand::Diff { left, right }) => Ok(diff_files(&left, &right)),
        Command::History(HistoryCommand::Check { file }) => Ok(check_file(&file)),
        Command::History(HistoryCommand::Convert { file, to }) => Ok(convert_file(&file, &to)),
        Command::New(command) => scaffold::run(command).map(|()| ExitCode::SUCCESS),
        Command::Mcp => mcp::run(&cli.address, cli.token.as_deref())
            .await
            .map(|()| ExitCode::SUCCESS),
    }
}

fn read_history(path: &std::path::Path) -> Result<History, String> {
    History::from_file(path).map_err(|error| match error {
        // Names the file already.
        retrace::history::DecodeError::Io { .. } => error.to_string(),
        _ => format!("{}: {error}", path.display()),
    })
}

fn diff_files(left: &std::path::Path, right: &std::path::Path) -> ExitCode {
    let (left_history, right_history) = match (read_history(left), read_history(right)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    match retrace::history::diff(&left_history, &right_history) {
        None => {
            let events = left_history.len();
            println!("histories are equal ({events} events, compared in normalised form)");
            ExitCode::SUCCESS
        }
        Some(difference) => {
            println!("--- {}\n+++ {}", left.display(), right.display());
            print!("{difference}");
            ExitCode::from(EXIT_DIFFERENT)
        }
    }
}

fn check_file(path: &std::path::Path) -> ExitCode {
    match read_history(path) {
        Ok(history) => {
            let state = if history.is_closed() {
                "closed"
            } else {
                "open"
            };
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let form = match HistoryForm::of(&text) {
                Some(HistoryForm::Temporal) => ", converted from Temporal's export",
                _ => "",
            };
            println!(
                "ok: {}: {} events, workflow {} run {} ({state}{form})",
                path.display(),
                history.len(),
                history.workflow_id(),
                history.run_id()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn convert_file(path: &std::path::Path, to: &str) -> ExitCode {
    match read_history(path) {
        Ok(history) if to == "temporal" => println!("{}", history.to_temporal_json()),
        Ok(history) => println!("{}", history.to_json()),
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    }
    ExitCode::SUCCESS
}
