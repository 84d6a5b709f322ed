//! `retrace mcp`: a Model Context Protocol server over stdio, so an AI agent
//! can scaffold projects, drive a Retrace service and run simulation
//! campaigns through typed tools.
//!
//! stdout carries the protocol: nothing else may be printed there (logs go to
//! stderr). Every failure a caller can act on comes back as a tool error (an
//! `is_error` result with one clear message), never as a protocol error.

mod scaffolding;
mod service;
mod simulation;

use anyhow::Context;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, ServiceExt, tool, tool_handler, tool_router};

use scaffolding::{NewItemArgs, NewProjectArgs};
use service::{
    DescribeArgs, ListArgs, QueryArgs, ResultArgs, RunArgs, Service, SignalArgs,
    SignalWithStartArgs, StartArgs,
};
use simulation::{CampaignArgs, FailureReportArgs};

/// What a tool answers: its text, or the message of a tool error.
type ToolResult = Result<String, String>;

const INSTRUCTIONS: &str = "Retrace is a durable workflow engine with a deterministic simulator. \
Scaffold with new_project, then new_workflow / new_activity inside it (each comes with a simulation test: \
run `cargo test` in the project). Drive a running `retrace server` with start_workflow, signal_with_start, signal_workflow, \
query_workflow, describe_workflow, get_history, get_result and list_workflows. Run the engine's own \
simulation campaigns with run_campaign and read a failing seed's report with read_failure_report.";

/// The MCP server: one per `retrace mcp` process.
#[derive(Clone)]
pub struct RetraceMcp {
    service: Service,
    tool_router: ToolRouter<RetraceMcp>,
}

/// Serves MCP over stdin/stdout until the client closes it.
pub async fn run(address: &str, token: Option<&str>) -> anyhow::Result<()> {
    let server = RetraceMcp::new(address, token);
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .context("the MCP client did not complete the handshake")?;
    let reason = running.waiting().await.context("the MCP session failed")?;
    tracing::debug!(?reason, "MCP session ended");
    Ok(())
}

impl RetraceMcp {
    /// A server driving the Retrace service at `address`.
    pub fn new(address: &str, token: Option<&str>) -> RetraceMcp {
        RetraceMcp {
            service: Service::new(address, token),
            tool_router: RetraceMcp::tool_router(),
        }
    }
}

#[tool_router]
impl RetraceMcp {
    #[tool(
        description = "Create a new Cargo project using Retrace: a worker binary, one workflow, one activity and a simulation test. Then run `cargo test` in it. Fails if the directory exists and is not empty (unless force).",
        annotations(destructive_hint = false, open_world_hint = false)
    )]
    async fn new_project(&self, Parameters(args): Parameters<NewProjectArgs>) -> ToolResult {
        scaffolding::new_project(args)
    }

    #[tool(
        description = "Add a workflow (typed input and output, registered with the project's worker and tests, with its own simulation test) to a project made by new_project. Refuses to overwrite existing files unless force.",
        annotations(destructive_hint = false, open_world_hint = false)
    )]
    async fn new_workflow(&self, Parameters(args): Parameters<NewItemArgs>) -> ToolResult {
        scaffolding::new_item(crate::scaffold::Kind::Workflow, args)
    }

    #[tool(
        description = "Add an activity (typed input and output, registered with the project's worker and tests, with its own simulation test) to a project made by new_project. Refuses to overwrite existing files unless force.",
        annotations(destructive_hint = false, open_world_hint = false)
    )]
    async fn new_activity(&self, Parameters(args): Parameters<NewItemArgs>) -> ToolResult {
        scaffolding::new_item(crate::scaffold::Kind::Activity, args)
    }

    #[tool(
        description = "Start a workflow run on the Retrace server. Returns JSON {workflow_id, run_id}. A worker polling task_queue executes it; without one the run stays open.",
        annotations(destructive_hint = false, idempotent_hint = false)
    )]
    async fn start_workflow(&self, Parameters(args): Parameters<StartArgs>) -> ToolResult {
        self.service.start(args).await
    }

    #[tool(
        description = "Signal the running run of workflow_id, or start one (workflow_type, task_queue, input) with the signal in its first write if none runs: one atomic request. Returns JSON {workflow_id, run_id, started}.",
        annotations(destructive_hint = false, idempotent_hint = false)
    )]
    async fn signal_with_start(
        &self,
        Parameters(args): Parameters<SignalWithStartArgs>,
    ) -> ToolResult {
        self.service.signal_with_start(args).await
    }

    #[tool(
        description = "Send a signal (a named message with an optional JSON payload) to a workflow run. Delivered once, recorded in the history.",
        annotations(destructive_hint = false, idempotent_hint = false)
    )]
    async fn signal_workflow(&self, Parameters(args): Parameters<SignalArgs>) -> ToolResult {
        self.service.signal(args).await
    }

    #[tool(
        description = "Ask a workflow run's query handler for its state. A worker running the workflow's code must answer it: with no worker polling the run's task queue this fails after timeout_ms (or the server's own query timeout, 10 s). Returns the answer as JSON.",
        annotations(read_only_hint = true)
    )]
    async fn query_workflow(&self, Parameters(args): Parameters<QueryArgs>) -> ToolResult {
        self.service.query(args).await
    }

    #[tool(
        description = "Describe a workflow run: type, task queue, status, start/close times, history length, pending activities and timers, the last workflow task failure. Returns JSON.",
        annotations(read_only_hint = true)
    )]
    async fn describe_workflow(&self, Parameters(args): Parameters<DescribeArgs>) -> ToolResult {
        self.service.describe(args).await
    }

    #[tool(
        description = "A workflow run's full event history in the canonical JSON form (the format `retrace history check` and `retrace history diff` read).",
        annotations(read_only_hint = true)
    )]
    async fn get_history(&self, Parameters(args): Parameters<RunArgs>) -> ToolResult {
        self.service.history(args).await
    }

    #[tool(
        description = "How a workflow run closed, without blocking by default: JSON {closed: false} while it is open, else {closed: true, outcome: {status: Completed|Failed|Canceled|Terminated|TimedOut, ...}}. wait_ms waits up to that long for it to close.",
        annotations(read_only_hint = true)
    )]
    async fn get_result(&self, Parameters(args): Parameters<ResultArgs>) -> ToolResult {
        self.service.result(args).await
    }

    #[tool(
        description = "List workflow runs, optionally only those with a status and/or of a workflow type. Returns JSON {runs: [...], more: bool}; more is true if limit cut the list short.",
        annotations(read_only_hint = true)
    )]
    async fn list_workflows(&self, Parameters(args): Parameters<ListArgs>) -> ToolResult {
        self.service.list(args).await
    }

    #[tool(
        description = "Run a deterministic simulation campaign of the Retrace engine (the retrace-sim binary) over a seed range, with injected faults. Returns JSON {summary: {seeds, failures, digest, faults, failed, ...}, failure_dirs: [...]}; read a failing seed's report with read_failure_report. Seeds per call are bounded (100000).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn run_campaign(&self, Parameters(args): Parameters<CampaignArgs>) -> ToolResult {
        simulation::run_campaign(args).await
    }

    #[tool(
        description = "Read the report of a failing simulation seed from a failure directory listed by run_campaign (or written by `retrace-sim --failures-dir`): violations, the fault plan, the reproduction command. Also lists the directory's other files (seed.json, faults.json, histories/).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn read_failure_report(
        &self,
        Parameters(args): Parameters<FailureReportArgs>,
    ) -> ToolResult {
        simulation::read_failure_report(args)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for RetraceMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("retrace", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}
