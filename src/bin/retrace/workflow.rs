//! `retrace workflow ...`: the client commands, over HTTP.

use std::process::ExitCode;

use anyhow::anyhow;
use clap::{Args, Subcommand, ValueEnum};
use retrace::activity::RetryPolicy;
use retrace::api::{IdReusePolicy, RunOutcome};
use retrace::client::{Client, ClientError, StartOptions};
use retrace::env::{Env, RunStatus};
use retrace::http::{HttpNetwork, network_over};
use retrace::types::Timestamp;
use retrace::visibility::SearchValue;
use serde_json::Value;

use crate::timeline;

/// A run: a workflow id and, optionally, one of its runs.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Workflow id.
    #[arg(long)]
    id: String,
    /// A specific run (default: the workflow id's current run).
    #[arg(long)]
    run_id: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ReusePolicy {
    AllowDuplicate,
    AllowDuplicateFailedOnly,
    RejectDuplicate,
}

/// What to start.
#[derive(Args, Debug)]
pub struct StartArgs {
    /// Workflow type.
    #[arg(long = "type")]
    workflow_type: String,
    /// Workflow id.
    #[arg(long)]
    id: String,
    /// Task queue its workers poll.
    #[arg(long)]
    task_queue: String,
    /// Input, as JSON (`'"ana"'`, `'{"n": 1}'`).
    #[arg(long)]
    input: Option<String>,
    /// Whole-run deadline, across continue-as-new (90s, 5m, 2h).
    #[arg(long, value_parser = humantime::parse_duration)]
    execution_timeout: Option<std::time::Duration>,
    /// The same in milliseconds (kept for scripts written before `--execution-timeout`).
    #[arg(long, hide = true, conflicts_with = "execution_timeout")]
    execution_timeout_ms: Option<u64>,
    /// What a closed workflow id may be reused for.
    #[arg(long, value_enum, default_value = "allow-duplicate")]
    id_reuse_policy: ReusePolicy,
    /// Wait this long before the first workflow task (30s, 5m, 2h).
    #[arg(long, value_parser = humantime::parse_duration)]
    start_delay: Option<std::time::Duration>,
    /// Retry a failed run as a new run, this many attempts in all (0: unlimited).
    #[arg(long)]
    retry_attempts: Option<u32>,
    /// The first retry's backoff (doubling after it; 1s by default).
    #[arg(long, value_parser = humantime::parse_duration, requires = "retry_attempts")]
    retry_interval: Option<std::time::Duration>,
    /// Start the workflow's runs on a cron schedule, in UTC ("0 2 * * *",
    /// "@hourly", "@every 10m"), until it is canceled or terminated.
    #[arg(long, conflicts_with = "start_delay")]
    cron: Option<String>,
    /// A search attribute the run starts with, `Key=Value` (repeatable): the
    /// value's kind from its JSON (`"x"` or bare text Keyword, `3` Int,
    /// `2.5` Double, `true` Bool, `["a","b"]` KeywordList), or named,
    /// `Key:Kind=Value` (Text, Datetime as RFC 3339, ...).
    #[arg(long = "search-attr", value_name = "KEY=VALUE")]
    search_attrs: Vec<String>,
    /// A memo key the run starts with, `Key=JSON` (repeatable; bare text is a string).
    #[arg(long = "memo", value_name = "KEY=JSON")]
    memos: Vec<String>,
}

/// `--search-attr Key=Value` or `Key:Kind=Value`.
fn parse_search_attr(text: &str) -> anyhow::Result<(String, SearchValue)> {
    let Some((key, value)) = text.split_once('=') else {
        anyhow::bail!("--search-attr {text:?}: expected Key=Value or Key:Kind=Value");
    };
    if let Some((name, kind)) = key.split_once(':') {
        let value = SearchValue::parse(kind, value)
            .map_err(|e| anyhow::anyhow!("--search-attr {name}: {e}"))?;
        return Ok((name.to_string(), value));
    }
    let value = match serde_json::from_str::<Value>(value) {
        Ok(Value::Bool(b)) => SearchValue::Bool(b),
        Ok(Value::Number(n)) if n.is_i64() => SearchValue::Int(n.as_i64().unwrap_or_default()),
        Ok(Value::Number(n)) => SearchValue::Double(n.as_f64().unwrap_or_default()),
        Ok(Value::String(s)) => SearchValue::Keyword(s),
        Ok(Value::Array(items)) => {
            let keywords = items.iter().map(|i| i.as_str().map(str::to_string));
            let keywords: Option<Vec<String>> = keywords.collect();
            let Some(keywords) = keywords else {
                anyhow::bail!("--search-attr {key}: a KeywordList holds strings only");
            };
            SearchValue::KeywordList(keywords)
        }
        Ok(_) => anyhow::bail!("--search-attr {key}: {value} is no search attribute value"),
        Err(_) => SearchValue::Keyword(value.to_string()),
    };
    Ok((key.to_string(), value))
}

/// `--memo Key=JSON` (bare text is a string).
fn parse_memo(text: &str) -> anyhow::Result<(String, Value)> {
    let Some((key, value)) = text.split_once('=') else {
        anyhow::bail!("--memo {text:?}: expected Key=JSON");
    };
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::from(value));
    Ok((key.to_string(), value))
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl StartArgs {
    /// The start's options and input.
    fn options(self) -> anyhow::Result<(StartOptions, String, Value)> {
        let input = parse_json("--input", self.input.as_deref())?;
        let mut options = StartOptions::new(self.id, self.task_queue);
        let timeout_ms = self.execution_timeout.map(millis);
        options.execution_timeout_ms = timeout_ms.or(self.execution_timeout_ms);
        options.start_delay_ms = self.start_delay.map(millis);
        options.cron_schedule = self.cron;
        for text in &self.search_attrs {
            let (name, value) = parse_search_attr(text)?;
            options.search_attributes.insert(name, value);
        }
        for text in &self.memos {
            let (key, value) = parse_memo(text)?;
            options.memo.insert(key, value);
        }
        options.retry_policy = self.retry_attempts.map(|attempts| {
            let policy = RetryPolicy::default().maximum_attempts(attempts);
            match self.retry_interval {
                Some(interval) => policy.initial_interval_ms(millis(interval)),
                None => policy,
            }
        });
        options.id_reuse_policy = match self.id_reuse_policy {
            ReusePolicy::AllowDuplicate => IdReusePolicy::AllowDuplicate,
            ReusePolicy::AllowDuplicateFailedOnly => IdReusePolicy::AllowDuplicateFailedOnly,
            ReusePolicy::RejectDuplicate => IdReusePolicy::RejectDuplicate,
        };
        Ok((options, self.workflow_type, input))
    }
}

#[derive(Subcommand, Debug)]
pub enum WorkflowCommand {
    /// Starts a run; prints its run id.
    Start(StartArgs),
    /// Signals the workflow id's running run, starting it first if none runs
    /// (one atomic request); prints the run id and whether it started.
    SignalWithStart {
        #[command(flatten)]
        start: StartArgs,
        /// Signal name.
        #[arg(long)]
        name: String,
        /// Signal payload, as JSON.
        #[arg(long)]
        signal_input: Option<String>,
    },
    /// Sends a signal.
    Signal {
        #[command(flatten)]
        run: RunArgs,
        /// Signal name.
        #[arg(long)]
        name: String,
        /// Payload, as JSON.
        #[arg(long)]
        input: Option<String>,
    },
    /// Sends an update and waits for its handler; prints its result. Sent
    /// again with the same `--update-id`, the handler still runs once.
    Update {
        #[command(flatten)]
        run: RunArgs,
        /// Update name.
        #[arg(long)]
        name: String,
        /// Its argument, as JSON.
        #[arg(long)]
        input: Option<String>,
        /// Its id (a fresh one if not given).
        #[arg(long)]
        update_id: Option<String>,
    },
    /// Asks a query of the run's state; prints the answer.
    Query {
        #[command(flatten)]
        run: RunArgs,
        /// Query name.
        #[arg(long)]
        name: String,
        /// Arguments, as JSON.
        #[arg(long)]
        args: Option<String>,
    },
    /// Asks the run to cancel.
    Cancel {
        #[command(flatten)]
        run: RunArgs,
        /// Why (recorded in the history).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Closes the run now, without running workflow code.
    Terminate {
        #[command(flatten)]
        run: RunArgs,
        /// Why (recorded in the history).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Shows a run's state.
    Describe {
        #[command(flatten)]
        run: RunArgs,
        /// Prints JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Lists runs, newest first.
    List {
        #[command(flatten)]
        filter: ListFilter,
        /// Prints a JSON array instead.
        #[arg(long)]
        json: bool,
    },
    /// Waits for the run to close, following continue-as-new to the last run;
    /// prints its result (non-zero exit if it did not complete).
    Result {
        #[command(flatten)]
        run: RunArgs,
        /// Wait at most this long (e.g. 30s, 5m); exit 124 if the run is still open.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Shows a run's history: a timeline, the canonical JSON with --json, or
    /// Temporal's JSON export form with --temporal.
    History {
        #[command(flatten)]
        run: RunArgs,
        /// Prints the canonical JSON form.
        #[arg(long, conflicts_with = "temporal")]
        json: bool,
        /// Prints Temporal's JSON export form (`temporal workflow show --output json`).
        #[arg(long)]
        temporal: bool,
    },
}

/// Which runs `workflow list` shows.
#[derive(Args, Debug)]
pub struct ListFilter {
    /// Only runs with this status, in any case (running, Completed, FAILED, ...).
    #[arg(long, value_parser = parse_status)]
    status: Option<RunStatus>,
    /// Only runs of this workflow type.
    #[arg(long = "type")]
    workflow_type: Option<String>,
    /// Only runs started since: a duration back from now (90s, 5m, 2h, 1day)
    /// or an RFC 3339 time (2026-12-01T00:00:00Z).
    #[arg(long, value_parser = parse_since)]
    since: Option<Since>,
    /// Shows at most this many runs (the newest).
    #[arg(long)]
    limit: Option<usize>,
    /// A list query over system attributes (WorkflowId, WorkflowType, RunId,
    /// ExecutionStatus, StartTime, CloseTime, TaskQueue) and search
    /// attributes: `WorkflowType = "checkout" AND StartTime > "2026-12-01T00:00:00Z"`
    /// (=, !=, <, >, <=, >=, IN, BETWEEN, AND, OR, parentheses, ORDER BY).
    #[arg(long)]
    query: Option<String>,
}

fn parse_status(text: &str) -> Result<RunStatus, String> {
    let found = RunStatus::ALL
        .into_iter()
        .find(|status| status.as_str().eq_ignore_ascii_case(text));
    found.ok_or_else(|| {
        let names: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
        format!("expected one of {} (in any case)", names.join(", "))
    })
}

/// `--since`: a duration back from now, or a time.
#[derive(Clone, Copy, Debug)]
enum Since {
    Ago(std::time::Duration),
    At(std::time::SystemTime),
}

impl Since {
    /// The earliest start time it lets through, `now` being the clock's.
    fn earliest(self, now: Timestamp) -> Timestamp {
        match self {
            Since::Ago(ago) => {
                let ago_ms = u64::try_from(ago.as_millis()).unwrap_or(u64::MAX);
                Timestamp(now.0.saturating_sub(ago_ms))
            }
            Since::At(time) => Timestamp::from_system_time(time),
        }
    }
}

fn parse_since(text: &str) -> Result<Since, String> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(Since::Ago(ago));
    }
    humantime::parse_rfc3339_weak(text)
        .map(Since::At)
        .map_err(|_| {
            format!(
                "expected a duration back from now (90s, 5m, 2h) or an RFC 3339 time, not {text:?}"
            )
        })
}

/// Every run the filter selects, newest first.
async fn list_runs(
    client: &Client,
    filter: &ListFilter,
) -> Result<Vec<retrace::api::RunSummary>, ClientError> {
    let request = retrace::api::ListWorkflowsRequest {
        status: filter.status,
        workflow_type: filter.workflow_type.clone(),
        query: filter.query.clone(),
        ..Default::default()
    };
    let mut runs = client.list_matching(&request).await?;
    if let Some(since) = filter.since {
        let earliest = since.earliest(client.env().now());
        runs.retain(|run| run.start_time >= earliest);
    }
    // A query's ORDER BY orders the runs; newest first otherwise.
    let ordered = filter
        .query
        .as_deref()
        .is_some_and(|q| q.to_ascii_uppercase().contains("ORDER BY"));
    if !ordered {
        runs.sort_by(|a, b| (b.start_time, &b.run_id).cmp(&(a.start_time, &a.run_id)));
    }
    runs.truncate(filter.limit.unwrap_or(usize::MAX));
    Ok(runs)
}

fn parse_json(flag: &str, text: Option<&str>) -> anyhow::Result<Value> {
    let Some(text) = text else {
        return Ok(Value::Null);
    };
    serde_json::from_str(text).map_err(|error| {
        let message = format!("{flag} is not valid JSON ({error}); pass a JSON value such as '\"ana\"' or '{{\"n\": 1}}'");
        exit(EXIT_BAD_INPUT, message)
    })
}

/// One line for a failed call: what the service said and its code, or why it
/// could not be reached.
/// A failure the CLI exits with a status of its own for (see `retrace --help`).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    /// The process's exit status.
    pub code: u8,
    message: String,
}

impl Exit {
    /// A failure exiting with `code`.
    pub fn new(code: u8, message: String) -> Exit {
        Exit { code, message }
    }
}

/// Exit status: the input (a flag, a JSON value, the address) is bad.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit status: no such workflow or run.
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit status: the service refused the request (closed run, taken id, a limit).
pub const EXIT_REFUSED: u8 = 4;
/// Exit status: the service could not be reached.
pub const EXIT_UNREACHABLE: u8 = 5;

pub fn exit(code: u8, message: String) -> anyhow::Error {
    anyhow::Error::new(Exit { code, message })
}

fn explain(error: ClientError, address: &str) -> anyhow::Error {
    match error {
        ClientError::Service(error) => {
            let code = serde_json::to_value(error.code).unwrap_or(Value::Null);
            let code = code.as_str().unwrap_or("unknown").to_string();
            let status = match error.code {
                retrace::api::ErrorCode::NotFound => EXIT_NOT_FOUND,
                _ => EXIT_REFUSED,
            };
            exit(status, format!("{} [{code}]", error.message))
        }
        ClientError::Network(error) => unreachable(&error, address),
        other => anyhow!("{other}"),
    }
}

fn unreachable(error: &dyn std::fmt::Display, address: &str) -> anyhow::Error {
    let message = format!("{error} (is `retrace server` running at {address}?)");
    exit(EXIT_UNREACHABLE, message)
}

/// A client of the server at `address`, or of a cluster's servers (a
/// comma-separated list): over one of them, or over all with
/// [`network_over`], once at least one answers.
async fn connect(address: &str, token: Option<&str>) -> anyhow::Result<Client> {
    let servers = servers(address, token).await?;
    Ok(Client::new(Env::tokio(network_over(&servers))).with_identity("retrace-cli"))
}

/// The servers `address` lists, checked to answer: fails fast with a clear
/// message rather than after the client's retries. A cluster's server that
/// does not answer is passed over with a warning while another does.
pub async fn servers(address: &str, token: Option<&str>) -> anyhow::Result<Vec<HttpNetwork>> {
    let servers =
        HttpNetwork::list(address, token).map_err(|e| exit(EXIT_BAD_INPUT, e.to_string()))?;
    let mut failures = Vec::new();
    for server in &servers {
        if let Err(error) = server.health().await {
            failures.push(error);
        }
    }
    if failures.len() == servers.len() {
        return Err(unreachable(&failures[0], address));
    }
    for failure in &failures {
        eprintln!("warning: {failure}; using the other servers");
    }
    Ok(servers)
}

pub async fn run(
    command: WorkflowCommand,
    address: &str,
    token: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let client = connect(address, token).await?;
    let fail = |error: ClientError| explain(error, address);
    match command {
        WorkflowCommand::Start(start) => {
            let (options, workflow_type, input) = start.options()?;
            let started = client.start_by_name(options, &workflow_type, input).await;
            println!("{}", started.map_err(fail)?);
        }
        WorkflowCommand::SignalWithStart {
            start,
            name,
            signal_input,
        } => {
            let signal_input = parse_json("--signal-input", signal_input.as_deref())?;
            let (options, workflow_type, input) = start.options()?;
            let sent = client
                .signal_with_start_by_name(options, &workflow_type, input, &name, signal_input)
                .await
                .map_err(fail)?;
            let how = if sent.started {
                "started and signaled"
            } else {
                "signaled"
            };
            println!("{} ({how})", sent.run_id);
        }
        WorkflowCommand::Signal { run, name, input } => {
            let input = parse_json("--input", input.as_deref())?;
            let sent = client
                .signal(&run.id, run.run_id.as_deref(), &name, input)
                .await;
            sent.map_err(fail)?;
            println!("signal {name} sent to {}", run.id);
        }
        WorkflowCommand::Update {
            run,
            name,
            input,
            update_id,
        } => {
            let input = parse_json("--input", input.as_deref())?;
            let update_id = update_id.unwrap_or_else(|| client.env().new_id());
            let run_id = run.run_id.as_deref();
            let update = client.update_with_id::<Value>(&run.id, run_id, &name, &update_id, input);
            println!("{}", pretty(&update.await.map_err(fail)?));
        }
        WorkflowCommand::Query { run, name, args } => {
            let args = parse_json("--args", args.as_deref())?;
            let query = client.query::<Value>(&run.id, run.run_id.as_deref(), &name, args);
            println!("{}", pretty(&query.await.map_err(fail)?));
        }
        WorkflowCommand::Cancel { run, reason } => {
            client
                .cancel(&run.id, run.run_id.as_deref(), &reason)
                .await
                .map_err(fail)?;
            println!("cancel requested for {}", run.id);
        }
        WorkflowCommand::Terminate { run, reason } => {
            client
                .terminate(&run.id, run.run_id.as_deref(), &reason)
                .await
                .map_err(fail)?;
            println!("terminated {}", run.id);
        }
        other => return inspect(&client, other, address).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// How recent a workflow poll must be for `describe` not to warn.
const POLL_RECENT_MS: u64 = 60_000;

/// Warns on stderr when no worker polled the run's task queue for workflow
/// tasks lately: the run cannot progress until one does (Temporal's UI
/// shows the same warning). Silent if the service cannot say.
async fn warn_without_pollers(client: &Client, task_queue: &str) {
    let Ok(pollers) = client.describe_task_queue(Some(task_queue)).await else {
        return;
    };
    let now = client.env().now();
    let recent = pollers.iter().any(|p| {
        p.kind == retrace::api::PollerKind::Workflow
            && now.millis_since(p.last_poll_time) <= POLL_RECENT_MS
    });
    if !recent {
        eprintln!(
            "warning: no worker has polled task queue {task_queue:?} for workflow tasks in the \
             last {}s: the run makes no progress until one does",
            POLL_RECENT_MS / 1_000
        );
    }
}

/// The read-only commands.
async fn inspect(
    client: &Client,
    command: WorkflowCommand,
    address: &str,
) -> anyhow::Result<ExitCode> {
    let fail = |error: ClientError| explain(error, address);
    match command {
        WorkflowCommand::Describe { run, json } => {
            let description = client
                .describe(&run.id, run.run_id.as_deref())
                .await
                .map_err(fail)?;
            if json {
                println!("{}", pretty(&description));
                return Ok(ExitCode::SUCCESS);
            }
            let history = client
                .history(&run.id, Some(&description.run_id))
                .await
                .map_err(fail)?;
            print!("{}", timeline::describe(&description));
            print!(
                "{}",
                timeline::describe_history(&history, client.env().now())
            );
            if !description.status.is_closed() {
                warn_without_pollers(client, &description.task_queue).await;
            }
        }
        WorkflowCommand::List { filter, json } => {
            let runs = list_runs(client, &filter).await.map_err(fail)?;
            match json {
                true => println!("{}", pretty(&runs)),
                false => print!("{}", timeline::run_table(&runs)),
            }
        }
        WorkflowCommand::Result { run, timeout } => {
            let timeout_ms = timeout.map_or(u64::MAX, |t| {
                u64::try_from(t.as_millis()).unwrap_or(u64::MAX)
            });
            let outcome = client
                .outcome_within(&run.id, run.run_id.as_deref(), timeout_ms)
                .await
                .map_err(fail)?;
            let Some(outcome) = outcome else {
                let waited = humantime::format_duration(timeout.unwrap_or_default());
                eprintln!("error: workflow {} is still open after {waited}", run.id);
                return Ok(ExitCode::from(EXIT_STILL_OPEN));
            };
            return Ok(print_outcome(&run.id, outcome));
        }
        WorkflowCommand::History {
            run,
            json,
            temporal,
        } => {
            let history = client
                .history(&run.id, run.run_id.as_deref())
                .await
                .map_err(fail)?;
            match (json, temporal) {
                (true, _) => println!("{}", history.to_json()),
                (_, true) => println!("{}", history.to_temporal_json()),
                _ => print!("{}", timeline::timeline(&history)),
            }
        }
        other => unreachable!("{other:?} is handled by run"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit code of `workflow result --timeout` when the run is still open (as timeout(1)).
const EXIT_STILL_OPEN: u8 = 124;

fn pretty<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("protocol types always encode")
}

/// Prints the result of a completed run; explains any other close on stderr.
fn print_outcome(workflow_id: &str, outcome: RunOutcome) -> ExitCode {
    let why = match outcome {
        RunOutcome::Completed { result } => {
            println!("{}", pretty(&result));
            return ExitCode::SUCCESS;
        }
        RunOutcome::Failed { failure } => {
            format!("failed: {}: {}", failure.failure_type, failure.message)
        }
        RunOutcome::Canceled { details: None } => "was canceled".to_string(),
        RunOutcome::Canceled {
            details: Some(details),
        } => {
            format!("was canceled (details: {details})")
        }
        RunOutcome::Terminated { reason } if reason.is_empty() => "was terminated".to_string(),
        RunOutcome::Terminated { reason } => format!("was terminated: {reason}"),
        RunOutcome::TimedOut => "timed out (its execution timeout passed)".to_string(),
        // The client follows the chain to its last run: shown only to a
        // caller that asked for one run's outcome.
        RunOutcome::ContinuedAsNew { new_run_id } => {
            format!("continued as new: its next run is {new_run_id}")
        }
    };
    eprintln!("error: workflow {workflow_id} {why}");
    ExitCode::FAILURE
}
