//! `retrace mcp`: the real binary as an MCP server over stdio, driven by
//! rmcp's client. Every tool is called at least once: the scaffolding tools
//! into temporary directories, the service tools against a real
//! `retrace server`, the simulation tools with a `retrace-sim` built here.
// Tests drive real processes (cargo, the server, the MCP server) and wait on real time.
#![allow(clippy::disallowed_methods)]

mod server_process;

use std::path::{Path, PathBuf};
use std::time::Instant;

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use server_process::{RETRACE, ServerProcess, free_port};

/// Every tool `retrace mcp` offers.
const TOOLS: [&str; 13] = [
    "describe_workflow",
    "get_history",
    "get_result",
    "list_workflows",
    "new_activity",
    "new_project",
    "new_workflow",
    "query_workflow",
    "read_failure_report",
    "run_campaign",
    "signal_with_start",
    "signal_workflow",
    "start_workflow",
];

type Mcp = RunningService<RoleClient, ()>;

/// `retrace mcp --address ADDRESS`, with `envs` set, connected and initialized.
async fn mcp_with(address: &str, envs: &[(&str, &str)]) -> Mcp {
    let command = tokio::process::Command::new(RETRACE).configure(|command| {
        command
            .args(["mcp", "--address", address])
            .env_remove("RETRACE_TOKEN")
            .env_remove("RETRACE_ADDRESS")
            .env_remove("RETRACE_SIM")
            .env_remove("RUST_LOG");
        for (key, value) in envs {
            command.env(key, value);
        }
    });
    let transport = TokioChildProcess::new(command).expect("retrace mcp starts");
    ().serve(transport)
        .await
        .expect("retrace mcp completes the MCP handshake")
}

/// `retrace mcp` with an address no test server uses.
async fn mcp() -> Mcp {
    mcp_with(&format!("http://127.0.0.1:{}", free_port()), &[]).await
}

async fn call(mcp: &Mcp, tool: &str, arguments: Value) -> CallToolResult {
    let Value::Object(arguments) = arguments else {
        panic!("tool arguments are a JSON object");
    };
    let params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
    mcp.call_tool(params)
        .await
        .unwrap_or_else(|error| panic!("{tool}: a protocol error instead of a result: {error}"))
}

fn text_of(result: &CallToolResult) -> String {
    let texts: Vec<String> = result
        .content
        .iter()
        .filter_map(|content| content.as_text().map(|text| text.text.clone()))
        .collect();
    texts.join("\n")
}

/// The text of a successful call.
async fn ok(mcp: &Mcp, tool: &str, arguments: Value) -> String {
    let result = call(mcp, tool, arguments).await;
    let text = text_of(&result);
    assert_ne!(result.is_error, Some(true), "{tool} failed: {text}");
    text
}

/// The message of a call that is a tool error.
async fn tool_error(mcp: &Mcp, tool: &str, arguments: Value) -> String {
    let result = call(mcp, tool, arguments).await;
    let text = text_of(&result);
    assert_eq!(result.is_error, Some(true), "{tool} should fail: {text}");
    assert!(!text.trim().is_empty(), "{tool}: a tool error says why");
    text
}

/// The JSON a successful call returns.
async fn ok_json(mcp: &Mcp, tool: &str, arguments: Value) -> Value {
    let text = ok(mcp, tool, arguments).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{tool} returns JSON ({e}): {text}"))
}

#[tokio::test]
async fn listing_tools_returns_every_tool_with_a_description_and_an_object_input_schema() {
    let mcp = mcp().await;
    let tools = mcp.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|tool| tool.name.as_ref()).collect();
    names.sort();
    assert_eq!(names, TOOLS);
    for tool in &tools {
        let description = tool.description.as_deref().unwrap_or_default();
        assert!(description.len() > 40, "{}: {description:?}", tool.name);
        let schema = &tool.input_schema;
        assert_eq!(schema.get("type"), Some(&json!("object")), "{}", tool.name);
        let properties = schema.get("properties").and_then(Value::as_object);
        assert!(properties.is_some_and(|p| !p.is_empty()), "{}", tool.name);
    }
    mcp.cancel().await.unwrap();
}

#[tokio::test]
async fn new_project_then_new_workflow_and_new_activity_scaffold_files_inside_it() {
    let temp = tempfile::tempdir().unwrap();
    let project = temp.path().join("shop");
    let mcp = mcp().await;
    let dir = project.to_str().unwrap();
    let created = ok(&mcp, "new_project", json!({"name": "shop", "dir": dir})).await;
    assert!(
        created.contains("created") && created.contains("next: cd"),
        "{created}"
    );
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "src/main.rs",
        "tests/sim_greet.rs",
    ] {
        assert!(project.join(file).is_file(), "{file} missing:\n{created}");
    }
    let workflow = json!({"name": "order_payment", "project": dir});
    let created = ok(&mcp, "new_workflow", workflow.clone()).await;
    assert!(created.contains("order_payment"), "{created}");
    let activity = json!({"name": "charge_card", "project": dir});
    let created = ok(&mcp, "new_activity", activity).await;
    assert!(created.contains("charge_card"), "{created}");
    for file in [
        "src/workflows/order_payment.rs",
        "tests/sim_order_payment.rs",
        "src/activities/charge_card.rs",
        "tests/sim_charge_card.rs",
    ] {
        assert!(project.join(file).is_file(), "{file} missing");
    }
    let again = tool_error(&mcp, "new_workflow", workflow).await;
    assert!(
        again.contains("order_payment.rs") && again.contains("force"),
        "names the existing file and the way out: {again}"
    );
    mcp.cancel().await.unwrap();
}

#[tokio::test]
async fn scaffolding_tools_refuse_bad_input_with_a_tool_error() {
    let temp = tempfile::tempdir().unwrap();
    let mcp = mcp().await;
    let dir = temp.path().to_str().unwrap();
    let outside = tool_error(&mcp, "new_workflow", json!({"name": "pay", "project": dir})).await;
    assert!(outside.contains("Cargo.toml"), "{outside}");
    let target = temp.path().join("x");
    let both = json!({"name": "shop", "dir": target, "retrace_path": "/a", "retrace_version": "1"});
    let refused = tool_error(&mcp, "new_project", both).await;
    assert!(refused.contains("at most one"), "{refused}");
    let missing = tool_error(&mcp, "new_activity", json!({"project": dir})).await;
    assert!(
        missing.contains("name"),
        "a missing argument is named: {missing}"
    );
    mcp.cancel().await.unwrap();
}

async fn start_server(dir: &Path) -> ServerProcess {
    let db = dir.join("retrace.db");
    ServerProcess::start(&db, free_port(), &dir.join("server.log")).await
}

#[tokio::test]
async fn service_tools_start_describe_list_signal_and_read_a_run_on_a_real_server() {
    let temp = tempfile::tempdir().unwrap();
    let server = start_server(temp.path()).await;
    let mcp = mcp_with(&server.url(), &[]).await;
    let start = json!({"workflow_type": "greet", "workflow_id": "g1", "task_queue": "greetings",
        "input": "ana", "execution_timeout_ms": 600_000});
    let started = ok_json(&mcp, "start_workflow", start).await;
    assert_eq!(started["workflow_id"], "g1");
    let run_id = started["run_id"].as_str().expect("a run id").to_string();
    let run = json!({"workflow_id": "g1"});
    let described = ok_json(&mcp, "describe_workflow", run.clone()).await;
    assert_eq!(described["status"], "Running", "{described}");
    assert_eq!(described["run_id"], run_id.as_str());
    let signal = json!({"workflow_id": "g1", "name": "approve", "payload": {"by": "bo"}});
    ok_json(&mcp, "signal_workflow", signal).await;
    let history = ok(
        &mcp,
        "get_history",
        json!({"workflow_id": "g1", "run_id": &run_id}),
    )
    .await;
    assert!(history.contains("WorkflowExecutionStarted"), "{history}");
    assert!(
        history.contains("approve"),
        "the signal is recorded: {history}"
    );
    let result = ok_json(&mcp, "get_result", run).await;
    assert_eq!(result["closed"], false, "{result}");
    assert_run_is_listed(&mcp, &run_id).await;
    let sws = json!({"workflow_type": "greet", "workflow_id": "g1", "task_queue": "greetings",
        "name": "approve", "payload": "cy"});
    let signaled = ok_json(&mcp, "signal_with_start", sws.clone()).await;
    assert_eq!(
        (&signaled["run_id"], &signaled["started"]),
        (&json!(run_id), &json!(false))
    );
    let mut other = sws;
    other["workflow_id"] = json!("g2");
    let started = ok_json(&mcp, "signal_with_start", other).await;
    assert_eq!(
        started["started"], true,
        "no run of g2 was running: {started}"
    );
    mcp.cancel().await.unwrap();
}

async fn assert_run_is_listed(mcp: &Mcp, run_id: &str) {
    let listed = ok_json(mcp, "list_workflows", json!({"status": "running"})).await;
    let runs = listed["runs"].as_array().expect("runs");
    assert!(runs.iter().any(|r| r["run_id"] == run_id), "{listed}");
    assert_eq!(listed["more"], false);
    let other_type = json!({"workflow_type": "other", "limit": 5});
    let listed = ok_json(mcp, "list_workflows", other_type).await;
    assert_eq!(listed["runs"], json!([]), "{listed}");
    let bad = tool_error(mcp, "list_workflows", json!({"status": "Sleeping"})).await;
    assert!(bad.contains("Running") && bad.contains("TimedOut"), "{bad}");
}

#[tokio::test]
async fn query_workflow_is_a_clear_tool_error_when_no_worker_answers_or_no_run_exists() {
    let temp = tempfile::tempdir().unwrap();
    let server = start_server(temp.path()).await;
    let mcp = mcp_with(&server.url(), &[]).await;
    let start = json!({"workflow_type": "greet", "workflow_id": "q1", "task_queue": "nobody"});
    ok_json(&mcp, "start_workflow", start).await;
    let started = Instant::now();
    let query = json!({"workflow_id": "q1", "name": "state", "timeout_ms": 300});
    let unanswered = tool_error(&mcp, "query_workflow", query).await;
    assert!(
        unanswered.contains("no answer") && unanswered.contains("worker"),
        "{unanswered}"
    );
    assert!(
        started.elapsed().as_secs() < 5,
        "the query gave up at its timeout"
    );
    let query = json!({"workflow_id": "nope", "name": "state"});
    let unknown = tool_error(&mcp, "query_workflow", query).await;
    assert!(
        unknown.contains("nope") || unknown.contains("NotFound"),
        "{unknown}"
    );
    mcp.cancel().await.unwrap();
}

#[tokio::test]
async fn service_tools_name_the_address_when_no_server_listens_there() {
    let address = format!("http://127.0.0.1:{}", free_port());
    let mcp = mcp_with(&address, &[]).await;
    for (tool, arguments) in [
        ("describe_workflow", json!({"workflow_id": "g1"})),
        ("list_workflows", json!({})),
    ] {
        let error = tool_error(&mcp, tool, arguments).await;
        assert!(error.contains(&address), "{tool}: {error}");
    }
    mcp.cancel().await.unwrap();
}

/// Builds `retrace-sim` next to this test's `retrace` binary (same profile and
/// target directory) and returns its path.
fn build_retrace_sim() -> PathBuf {
    let bin_dir = Path::new(RETRACE).parent().unwrap();
    let profile = match bin_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "retrace-sim",
            "--profile",
            profile,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build -p retrace-sim failed");
    let simulator = bin_dir.join(format!("retrace-sim{}", std::env::consts::EXE_SUFFIX));
    assert!(simulator.is_file(), "{} was not built", simulator.display());
    simulator
}

#[tokio::test]
async fn run_campaign_runs_seeds_of_a_scenario_and_returns_the_json_summary() {
    let simulator = build_retrace_sim();
    let mcp = mcp_with(
        "http://127.0.0.1:1",
        &[("RETRACE_SIM", simulator.to_str().unwrap())],
    )
    .await;
    let campaign = json!({"scenario": "small", "seeds": "0..5", "jobs": 2});
    let answer = ok_json(&mcp, "run_campaign", campaign).await;
    assert_eq!(answer["summary"]["seeds"], 5, "{answer}");
    assert_eq!(answer["summary"]["failures"], 0, "{answer}");
    assert_eq!(answer["failure_dirs"], json!([]), "{answer}");
    let unknown = json!({"scenario": "nosuch", "seeds": "0..1"});
    let error = tool_error(&mcp, "run_campaign", unknown).await;
    assert!(error.contains("nosuch"), "{error}");
    mcp.cancel().await.unwrap();
}

#[tokio::test]
async fn run_campaign_rejects_malformed_or_too_large_seed_ranges_and_says_how_to_get_retrace_sim() {
    let mcp = mcp_with(
        "http://127.0.0.1:1",
        &[("RETRACE_SIM", "/nonexistent/retrace-sim")],
    )
    .await;
    for (seeds, says) in [
        ("200", "START..END"),
        ("a..b", "START..END"),
        ("5..5", "empty"),
        ("0..100001", "at most 100000"),
    ] {
        let error = tool_error(&mcp, "run_campaign", json!({"seeds": seeds})).await;
        assert!(error.contains(says), "{seeds}: {error}");
    }
    let error = tool_error(&mcp, "run_campaign", json!({"seeds": "0..5", "jobs": 0})).await;
    assert!(error.contains("jobs"), "{error}");
    let error = tool_error(&mcp, "run_campaign", json!({"seeds": "0..5"})).await;
    assert!(
        error.contains("cargo build --release -p retrace-sim"),
        "{error}"
    );
    mcp.cancel().await.unwrap();
}

#[tokio::test]
async fn read_failure_report_returns_the_report_and_lists_the_directory_or_says_what_is_missing() {
    let temp = tempfile::tempdir().unwrap();
    let mcp = mcp().await;
    let empty = temp.path().to_str().unwrap();
    let error = tool_error(&mcp, "read_failure_report", json!({"dir": empty})).await;
    assert!(
        error.contains("report.txt") && error.contains(empty),
        "{error}"
    );
    let gone = temp.path().join("gone");
    let error = tool_error(&mcp, "read_failure_report", json!({"dir": gone})).await;
    assert!(error.contains("not a directory"), "{error}");
    // A directory laid out as retrace-sim's write_failure_dir writes one.
    let dir = temp.path().join("small-7");
    std::fs::create_dir_all(dir.join("histories")).unwrap();
    std::fs::write(
        dir.join("report.txt"),
        "seed 7 of small failed: invariant X",
    )
    .unwrap();
    std::fs::write(dir.join("seed.json"), "{}").unwrap();
    std::fs::write(dir.join("histories").join("run-1.json"), "{}").unwrap();
    let report = ok(&mcp, "read_failure_report", json!({"dir": dir})).await;
    assert!(
        report.starts_with("seed 7 of small failed: invariant X"),
        "{report}"
    );
    assert!(
        report.contains("seed.json") && report.contains("run-1.json"),
        "{report}"
    );
    mcp.cancel().await.unwrap();
}
