//! The tools that drive a Retrace service over HTTP, as `retrace workflow` does.

use retrace::api::ListWorkflowsRequest;
use retrace::client::{Client, ClientError, RESULT_WAIT_MS_MAX, StartOptions};
use retrace::env::{Env, RunStatus};
use retrace::http::{HttpNetwork, network_over};
use rmcp::schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ToolResult;

/// Runs `list_workflows` returns by default.
const LIST_LIMIT_DEFAULT: usize = 100;
/// Runs `list_workflows` returns at most.
const LIST_LIMIT_MAX: usize = 10_000;
/// The service's page size cap for listings.
const LIST_PAGE_SIZE: usize = 1_000;
/// Longest client-side wait for a query's answer.
const QUERY_TIMEOUT_MS_MAX: u64 = 60_000;

/// A workflow run: its workflow id and, optionally, one run.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// Workflow id (the business id given at start).
    pub workflow_id: String,
    /// A specific run of that workflow id (default: its current run).
    pub run_id: Option<String>,
}

/// Arguments of `describe_workflow`.
pub type DescribeArgs = RunArgs;

/// Arguments of `start_workflow`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct StartArgs {
    /// Workflow type: the name the workflow is registered under in the worker.
    pub workflow_type: String,
    /// Workflow id: a business id you choose (e.g. "order-42"); a closed id may be reused.
    pub workflow_id: String,
    /// Task queue the workflow's workers poll.
    pub task_queue: String,
    /// The workflow's input, any JSON value (default: null).
    pub input: Option<Value>,
    /// Whole-run deadline in milliseconds (default: none).
    pub execution_timeout_ms: Option<u64>,
}

/// Arguments of `signal_with_start`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct SignalWithStartArgs {
    /// Workflow type to start if no run of the workflow id is running.
    pub workflow_type: String,
    /// Workflow id: its running run is signaled, or a new run started.
    pub workflow_id: String,
    /// Task queue the workflow's workers poll.
    pub task_queue: String,
    /// The input of a run this starts, any JSON value (default: null).
    pub input: Option<Value>,
    /// Whole-run deadline in milliseconds of a run this starts (default: none).
    pub execution_timeout_ms: Option<u64>,
    /// Signal name, as the workflow's code waits for it.
    pub name: String,
    /// The signal's payload, any JSON value (default: null).
    pub payload: Option<Value>,
}

/// Arguments of `signal_workflow`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct SignalArgs {
    /// Workflow id.
    pub workflow_id: String,
    /// A specific run (default: the workflow id's current run).
    pub run_id: Option<String>,
    /// Signal name, as the workflow's code waits for it.
    pub name: String,
    /// The signal's payload, any JSON value (default: null).
    pub payload: Option<Value>,
}

/// Arguments of `query_workflow`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct QueryArgs {
    /// Workflow id.
    pub workflow_id: String,
    /// A specific run (default: the workflow id's current run).
    pub run_id: Option<String>,
    /// Query name, as the workflow's code handles it.
    pub name: String,
    /// The query's arguments, any JSON value (default: null).
    pub args: Option<Value>,
    /// Give up after this many milliseconds (at most 60000; default: the server's query timeout, 10 s).
    pub timeout_ms: Option<u64>,
}

/// Arguments of `get_result`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct ResultArgs {
    /// Workflow id.
    pub workflow_id: String,
    /// A specific run (default: the workflow id's current run).
    pub run_id: Option<String>,
    /// Wait up to this many milliseconds for the run to close (default 0: answer at once; at most 60000).
    pub wait_ms: Option<u64>,
}

/// Arguments of `list_workflows`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Only runs with this status.
    #[schemars(extend("enum" = ["Running", "Completed", "Failed", "Canceled", "Terminated", "TimedOut"]))]
    pub status: Option<String>,
    /// Only runs of this workflow type.
    pub workflow_type: Option<String>,
    /// At most this many runs (default 100, at most 10000).
    #[schemars(range(min = 1, max = 10_000))]
    pub limit: Option<usize>,
}

/// A connection to the service at one address, made once and checked per call.
#[derive(Clone)]
pub struct Service {
    address: String,
    connection: Result<Connection, String>,
}

#[derive(Clone)]
struct Connection {
    /// The server, or a cluster's servers.
    servers: Vec<HttpNetwork>,
    env: Env,
    client: Client,
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("protocol types always encode")
}

impl Service {
    /// The service at `address` (a cluster's servers: comma-separated),
    /// with `token` as bearer token if given. A bad address or token is
    /// reported by each call.
    pub fn new(address: &str, token: Option<&str>) -> Service {
        let connection = HttpNetwork::list(address, token)
            .map(|servers| {
                let env = Env::tokio(network_over(&servers));
                let client = Client::new(env.clone()).with_identity("retrace-mcp");
                Connection {
                    servers,
                    env,
                    client,
                }
            })
            .map_err(|error| format!("cannot use Retrace address {address}: {error}"));
        Service {
            address: address.to_string(),
            connection,
        }
    }

    /// The connection, once the service answers its health check: fails fast
    /// with the address rather than after the client's retries.
    async fn connect(&self) -> Result<&Connection, String> {
        let connection = self.connection.as_ref().map_err(Clone::clone)?;
        let mut failure = None;
        for server in &connection.servers {
            match server.health().await {
                Ok(()) => return Ok(connection),
                Err(error) => failure = Some(error),
            }
        }
        let error = failure.expect("a connection has at least one server");
        Err(format!(
            "cannot reach the Retrace server at {}: {error} (is `retrace server` running there? \
             `retrace mcp` takes --address or RETRACE_ADDRESS)",
            self.address
        ))
    }

    /// One line for a failed call: what the service said and its code, or
    /// why it could not be reached.
    fn explain(&self, error: ClientError) -> String {
        match error {
            ClientError::Service(error) => {
                let code = serde_json::to_value(error.code).unwrap_or(Value::Null);
                let code = code.as_str().unwrap_or("unknown").to_string();
                format!("{} [{code}]", error.message)
            }
            ClientError::Network(error) => {
                format!("{error} (is `retrace server` running at {}?)", self.address)
            }
            other => other.to_string(),
        }
    }

    pub async fn start(&self, args: StartArgs) -> ToolResult {
        let client = &self.connect().await?.client;
        let mut options = StartOptions::new(&args.workflow_id, args.task_queue);
        options.execution_timeout_ms = args.execution_timeout_ms;
        let input = args.input.unwrap_or(Value::Null);
        let run_id = client
            .start_by_name(options, &args.workflow_type, input)
            .await
            .map_err(|e| self.explain(e))?;
        Ok(pretty(
            &json!({"workflow_id": args.workflow_id, "run_id": run_id}),
        ))
    }

    pub async fn signal_with_start(&self, args: SignalWithStartArgs) -> ToolResult {
        let client = &self.connect().await?.client;
        let mut options = StartOptions::new(&args.workflow_id, args.task_queue);
        options.execution_timeout_ms = args.execution_timeout_ms;
        let input = args.input.unwrap_or(Value::Null);
        let payload = args.payload.unwrap_or(Value::Null);
        let sent = client
            .signal_with_start_by_name(options, &args.workflow_type, input, &args.name, payload)
            .await
            .map_err(|e| self.explain(e))?;
        Ok(pretty(&json!({
            "workflow_id": args.workflow_id,
            "run_id": sent.run_id,
            "started": sent.started,
        })))
    }

    pub async fn signal(&self, args: SignalArgs) -> ToolResult {
        let client = &self.connect().await?.client;
        let payload = args.payload.unwrap_or(Value::Null);
        let run_id = args.run_id.as_deref();
        client
            .signal(&args.workflow_id, run_id, &args.name, payload)
            .await
            .map_err(|e| self.explain(e))?;
        Ok(pretty(&json!({
            "signaled": args.name, "workflow_id": args.workflow_id, "run_id": args.run_id,
        })))
    }

    pub async fn query(&self, args: QueryArgs) -> ToolResult {
        let connection = self.connect().await?;
        let query_args = args.args.unwrap_or(Value::Null);
        let (id, run_id, name) = (&args.workflow_id, args.run_id.as_deref(), &args.name);
        let query = connection
            .client
            .query::<Value>(id, run_id, name, query_args);
        let answer = match args.timeout_ms {
            None => query.await,
            Some(ms) => {
                let ms = ms.min(QUERY_TIMEOUT_MS_MAX);
                connection.env.timeout(ms, query).await.map_err(|_| {
                    format!(
                        "workflow {id}: no answer to query {name} within {ms} ms: is a worker \
                         polling the run's task queue? (a worker running the workflow's code answers queries)"
                    )
                })?
            }
        };
        Ok(pretty(&answer.map_err(|e| self.explain(e))?))
    }

    pub async fn describe(&self, args: DescribeArgs) -> ToolResult {
        let client = &self.connect().await?.client;
        let description = client
            .describe(&args.workflow_id, args.run_id.as_deref())
            .await
            .map_err(|e| self.explain(e))?;
        Ok(pretty(&description))
    }

    pub async fn history(&self, args: RunArgs) -> ToolResult {
        let client = &self.connect().await?.client;
        let history = client
            .history(&args.workflow_id, args.run_id.as_deref())
            .await
            .map_err(|e| self.explain(e))?;
        Ok(history.to_json())
    }

    pub async fn result(&self, args: ResultArgs) -> ToolResult {
        let client = &self.connect().await?.client;
        let wait_ms = args.wait_ms.unwrap_or(0).min(RESULT_WAIT_MS_MAX);
        let outcome = client
            .outcome_within(&args.workflow_id, args.run_id.as_deref(), wait_ms)
            .await
            .map_err(|e| self.explain(e))?;
        Ok(pretty(&match outcome {
            Some(outcome) => json!({"closed": true, "outcome": outcome}),
            None => json!({"closed": false, "waited_ms": wait_ms}),
        }))
    }

    pub async fn list(&self, args: ListArgs) -> ToolResult {
        let status = match args.status.as_deref() {
            None => None,
            Some(text) => Some(parse_status(text)?),
        };
        let limit = args.limit.unwrap_or(LIST_LIMIT_DEFAULT);
        if limit == 0 || limit > LIST_LIMIT_MAX {
            return Err(format!(
                "limit must be between 1 and {LIST_LIMIT_MAX}, not {limit}"
            ));
        }
        let client = &self.connect().await?.client;
        let mut request = ListWorkflowsRequest {
            status,
            workflow_type: args.workflow_type,
            page_token: None,
            page_size: u32::try_from(limit.min(LIST_PAGE_SIZE)).expect("at most 1000"),
            query: None,
        };
        let mut runs = Vec::new();
        loop {
            let page = client
                .list(request.clone())
                .await
                .map_err(|e| self.explain(e))?;
            runs.extend(page.runs);
            match page.next_page_token {
                Some(token) if runs.len() < limit => request.page_token = Some(token),
                next => {
                    let more = next.is_some() || runs.len() > limit;
                    runs.truncate(limit);
                    return Ok(pretty(&json!({"runs": runs, "more": more})));
                }
            }
        }
    }
}

/// A status by name, in any case.
fn parse_status(text: &str) -> Result<RunStatus, String> {
    let names = [
        "Running",
        "Completed",
        "Failed",
        "Canceled",
        "Terminated",
        "TimedOut",
    ];
    names
        .iter()
        .find(|name| name.eq_ignore_ascii_case(text.trim()))
        .and_then(|name| RunStatus::parse(name))
        .ok_or_else(|| format!("status {text:?}: expected one of {}", names.join(", ")))
}
