//! The `retrace` binary as a user runs it: a server subprocess on 127.0.0.1
//! with a temp database, a worker (in this process, over HTTP), and the CLI's
//! commands; history files checked and diffed; databases it must refuse.

mod common;
mod server_process;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use retrace::env::Env;
use retrace::history::History;
use retrace::http::HttpNetwork;
use retrace::worker::Worker;
use retrace::workflow::{Workflow, WorkflowContext, WorkflowRegistry, WorkflowResult};
use server_process::{ServerProcess, free_port, retrace_command};

/// Greets through an activity, then waits for `approve`.
struct Greet;
impl Workflow for Greet {
    const NAME: &'static str = "greet";
    type Input = String;
    type Output = String;
    async fn run(ctx: WorkflowContext, name: String) -> WorkflowResult<String> {
        let greeting = ctx
            .activity::<common::Compose>(format!("hello {name}"))
            .await?;
        ctx.sleep(Duration::from_millis(50)).await?;
        let by: String = ctx.signal("approve").recv().await?;
        Ok(format!("{greeting} approved by {by}"))
    }
}

/// What a command did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn of(output: Output) -> Run {
        Run {
            code: output
                .status
                .code()
                .expect("the CLI exits, it is not killed"),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }

    /// Succeeded, printing nothing on stderr.
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "{self:?}");
        assert!(self.stderr.is_empty(), "{self:?}");
        self
    }

    /// Failed with `code` and one clear line on stderr that says `says`.
    fn failed(self, code: i32, says: &[&str]) -> Run {
        assert_eq!(self.code, code, "{self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {self:?}");
        assert!(lines[0].starts_with("error: "), "{self:?}");
        for part in says {
            assert!(lines[0].contains(part), "stderr says {part:?}: {self:?}");
        }
        assert!(!self.stderr.contains("panicked"), "{self:?}");
        self
    }
}

/// Runs `retrace <line>` (split at spaces) against `address`, blocking off
/// the async threads.
async fn cli(address: &str, line: &str) -> Run {
    let mut command = retrace_command();
    command
        .env("RETRACE_ADDRESS", address)
        .args(line.split_whitespace());
    Run::of(
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap(),
    )
}

fn cli_offline(args: &[&str]) -> Run {
    Run::of(retrace_command().args(args).output().unwrap())
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/histories")
        .join(name)
}

fn worker(url: &str) -> Worker {
    let env = Env::tokio(Arc::new(HttpNetwork::new(url, None).unwrap()));
    let mut registry = WorkflowRegistry::new();
    registry
        .register::<Greet>()
        .register::<common::Countdown>()
        .register::<common::ComposeOnUpdate>();
    Worker::builder(env, "greetings")
        .workflows(registry)
        .activity(common::Compose)
        .start()
}

async fn start_server(dir: &Path) -> ServerProcess {
    ServerProcess::start(&dir.join("r.db"), free_port(), &dir.join("log")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_starts_signals_and_inspects_a_run_that_a_worker_executes() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(dir.path()).await;
    let url = server.url();
    let worker = worker(&url);
    let start = "workflow start --type greet --id g1 --task-queue greetings --input \"ana\"";
    let started = cli(&url, start).await.ok();
    let run_id = started.stdout.trim().to_string();
    let is_id = run_id.len() == 28 && run_id.chars().all(|c| c.is_ascii_hexdigit());
    assert!(is_id, "start prints the run id: {started:?}");
    let signal = "workflow signal --id g1 --name approve --input \"bob\"";
    assert!(cli(&url, signal).await.ok().stdout.contains("approve"));
    let result = cli(&url, "workflow result --id g1").await.ok();
    assert_eq!(result.stdout, "\"hello ana! approved by bob\"\n");
    let history = assert_history_is_shown(&url, &run_id).await;
    assert_describe_and_list_show(&url, &history).await;
    worker.shutdown().await;
    let status = server.interrupt();
    let log = server.log();
    assert!(
        status.success(),
        "Ctrl-C stops the server cleanly: {status}\n{log}"
    );
    assert!(
        log.contains("shutting down") && log.contains("stopped"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_warns_when_no_worker_polls_an_open_runs_task_queue_and_start_takes_retry_and_cron()
 {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let url = server.url();
    let worker = worker(&url);
    let polled = "workflow start --type greet --id polled --task-queue greetings --input \"ana\" \
                  --retry-attempts 3 --retry-interval 2s";
    cli(&url, polled).await.ok();
    let orphan = "workflow start --type greet --id orphan --task-queue nobody --input \"ana\" \
                  --start-delay 1m";
    cli(&url, orphan).await.ok();
    let cron = "workflow start --type greet --id nightly --task-queue nobody --input \"x\" \
                --cron @daily";
    cli(&url, cron).await.ok();
    let client =
        retrace::client::Client::new(Env::tokio(Arc::new(HttpNetwork::new(&url, None).unwrap())));
    // The worker's first poll may still be on its way.
    let mut described = cli(&url, "workflow describe --id polled").await;
    for _ in 0..50 {
        if described.stderr.is_empty() {
            break;
        }
        client.env().sleep_ms(100).await;
        described = cli(&url, "workflow describe --id polled").await;
    }
    assert_eq!(described.code, 0, "{described:?}");
    assert!(
        described.stderr.is_empty(),
        "a worker polls greetings: {described:?}"
    );
    let orphan = cli(&url, "workflow describe --id orphan").await;
    assert_eq!(orphan.code, 0, "{orphan:?}");
    assert!(
        orphan
            .stderr
            .contains("no worker has polled task queue \"nobody\""),
        "{orphan:?}"
    );
    let started = |id: &'static str| {
        let client = client.clone();
        async move {
            let history = client.history(id, None).await.unwrap();
            match &history.events()[0].kind {
                retrace::history::EventKind::WorkflowExecutionStarted(s) => s.clone(),
                other => panic!("{other:?}"),
            }
        }
    };
    let polled = started("polled").await;
    let policy = polled.retry_policy.expect("--retry-attempts sets a policy");
    assert_eq!(
        (policy.maximum_attempts, policy.initial_interval_ms),
        (3, 2_000)
    );
    assert_eq!(
        started("orphan").await.first_workflow_task_backoff_ms,
        Some(60_000)
    );
    assert_eq!(
        started("nightly").await.cron_schedule.as_deref(),
        Some("@daily")
    );
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_an_update_prints_its_result_and_runs_one_update_id_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let url = server.url();
    let worker = worker(&url);
    let start = "workflow start --type compose_on_update --id u1 --task-queue greetings";
    cli(&url, start).await.ok();
    let update = "workflow update --id u1 --name compose --input \"x\" --update-id first";
    assert_eq!(cli(&url, update).await.ok().stdout, "\"x!\"\n");
    // The same id again: answered from the first, the handler not run again.
    assert_eq!(cli(&url, update).await.ok().stdout, "\"x!\"\n");
    let refused = cli(&url, "workflow update --id u1 --name compose --input \"\"").await;
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused.stderr.contains("was rejected: nothing to compose"),
        "{refused:?}"
    );
    cli(&url, "workflow signal --id u1 --name done").await.ok();
    let result = cli(&url, "workflow result --id u1").await.ok();
    assert_eq!(result.stdout, "[\n  \"x!\"\n]\n");
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_signals_with_start_starting_the_run_once_then_signaling_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let url = server.url();
    let sws = "workflow signal-with-start --type greet --id g2 --task-queue greetings --input \"cy\" --name approve --signal-input \"dee\"";
    let started = cli(&url, sws).await.ok();
    assert!(
        started.stdout.contains("(started and signaled)"),
        "{started:?}"
    );
    let again = cli(&url, sws).await.ok();
    assert!(
        again.stdout.contains("(signaled)"),
        "the run is running: {again:?}"
    );
    let run_id = |run: &Run| {
        run.stdout
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(run_id(&again), run_id(&started), "no second run");
    let bad = sws.replace("--signal-input \"dee\"", "--signal-input {");
    cli(&url, &bad)
        .await
        .failed(2, &["--signal-input is not valid JSON"]);
    let worker = worker(&url);
    let result = cli(&url, "workflow result --id g2").await.ok();
    assert_eq!(result.stdout, "\"hello cy! approved by dee\"\n");
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_follows_a_chain_of_continued_runs_and_shows_its_links() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let url = server.url();
    let worker = worker(&url);
    let start = "workflow start --type countdown --id c1 --task-queue greetings --input 2";
    let first = cli(&url, start).await.ok().stdout.trim().to_string();
    let result = cli(&url, "workflow result --id c1").await.ok();
    assert_eq!(result.stdout, "\"liftoff\"\n", "result follows the chain");
    let from_first = cli(&url, &format!("workflow result --id c1 --run-id {first}")).await;
    assert_eq!(
        from_first.ok().stdout,
        "\"liftoff\"\n",
        "from its first run too"
    );
    let history = cli(&url, &format!("workflow history --id c1 --run-id {first}")).await;
    let history = history.ok().stdout;
    let close = history.lines().last().unwrap_or_default();
    assert!(
        close.contains("WorkflowExecutionContinuedAsNew"),
        "{history}"
    );
    let next = close
        .split_whitespace()
        .find_map(|word| word.strip_prefix("new_run="))
        .expect("the close names the next run")
        .to_string();
    let next_history = cli(&url, &format!("workflow history --id c1 --run-id {next}")).await;
    let next_history = next_history.ok().stdout;
    assert!(
        next_history.contains(&format!("continues={first}")),
        "{next_history}"
    );
    let list = cli(&url, "workflow list").await.ok().stdout;
    assert_eq!(list.matches("ContinuedAsNew").count(), 2, "{list}");
    worker.shutdown().await;
}

/// `history --json` prints the canonical form; `history` one line per event.
async fn assert_history_is_shown(url: &str, run_id: &str) -> History {
    let json = cli(url, "workflow history --id g1 --json").await.ok();
    let history = History::from_json(&json.stdout).expect("--json prints a history");
    assert_eq!(
        json.stdout.trim_end(),
        history.to_json(),
        "byte for byte canonical"
    );
    assert_eq!(history.run_id(), run_id);
    let temporal = cli(url, "workflow history --id g1 --temporal").await.ok();
    assert_eq!(temporal.stdout.trim_end(), history.to_temporal_json());
    let imported = History::from_json(&temporal.stdout).expect("--temporal reads back");
    assert_eq!(imported.events().last(), history.events().last());
    let timeline = cli(url, "workflow history --id g1").await.ok().stdout;
    let lines: Vec<&str> = timeline.lines().collect();
    assert_eq!(
        lines.len(),
        history.len() + 1,
        "a header, then one line per event:\n{timeline}"
    );
    for (line, event) in lines[1..].iter().zip(history.events()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let expected = [
            &event.event_id.to_string(),
            &event.event_time.to_string(),
            event.kind.name(),
        ];
        assert_eq!(words[..3], expected, "id, time, type: {line}");
    }
    assert!(
        timeline.contains("signal=approve input=\"bob\""),
        "{timeline}"
    );
    assert!(timeline.contains("fires_after=50ms"), "{timeline}");
    history
}

async fn assert_describe_and_list_show(url: &str, history: &History) {
    let described = cli(url, "workflow describe --id g1").await.ok().stdout;
    assert!(
        described.contains("status:         Completed"),
        "{described}"
    );
    let length = format!("history:        {} events", history.len());
    assert!(described.contains(&length), "{described}");
    assert!(
        described.contains("input:          \"ana\"\n"),
        "{described}"
    );
    let result = "result:         \"hello ana! approved by bob\"\n";
    assert!(described.contains(result), "{described}");
    let (first, last) = (&history.events()[0], history.events().last().unwrap());
    let ran = std::time::Duration::from_millis(last.event_time.millis_since(first.event_time));
    let ran = format!("duration:       {}\n", humantime::format_duration(ran));
    assert!(described.contains(&ran), "{described}");
    let described = cli(url, "workflow describe --id g1 --json")
        .await
        .ok()
        .stdout;
    let described: serde_json::Value = serde_json::from_str(&described).unwrap();
    assert_eq!(described["status"], "Completed");
    assert_eq!(described["run_id"], history.run_id());
    let listed = cli(url, "workflow list").await.ok().stdout;
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("g1 ") && l.contains(" Completed ")),
        "{listed}"
    );
    let running = cli(url, "workflow list --status Running").await.ok().stdout;
    assert_eq!(running.lines().count(), 1, "only the header: {running}");
    assert_list_filters(url, history).await;
}

/// The ids `workflow list --json <filters>` prints.
async fn listed_ids(url: &str, filters: &str) -> Vec<String> {
    let listed = cli(url, &format!("workflow list --json {filters}"))
        .await
        .ok();
    let runs: Vec<retrace::api::RunSummary> = serde_json::from_str(&listed.stdout)
        .unwrap_or_else(|e| panic!("list --json prints runs ({e}): {listed:?}"));
    runs.into_iter().map(|r| r.workflow_id).collect()
}

/// Filters by status (in any case), type and start time, newest first, and
/// refuses what it cannot read.
async fn assert_list_filters(url: &str, history: &History) {
    let g1 = vec!["g1".to_string()];
    assert_eq!(listed_ids(url, "--status completed --type greet").await, g1);
    assert_eq!(listed_ids(url, "--status COMPLETED --since 1h").await, g1);
    assert!(listed_ids(url, "--type countdown").await.is_empty());
    assert!(
        listed_ids(url, "--since 2999-01-01T00:00:00Z")
            .await
            .is_empty()
    );
    let since = history.events()[0].event_time.to_string();
    assert_eq!(listed_ids(url, &format!("--since {since}")).await, g1);
    let start = "workflow start --type greet --id g2 --task-queue greetings --input \"bo\"";
    cli(url, start).await.ok();
    assert_eq!(listed_ids(url, "").await, ["g2", "g1"], "newest first");
    assert_eq!(listed_ids(url, "--limit 1").await, ["g2"]);
    for (filters, says) in [
        ("--status done", ["Running, Completed", "any case"]),
        ("--since yesterday", ["RFC 3339", "\"yesterday\""]),
    ] {
        let refused = cli(url, &format!("workflow list {filters}")).await;
        assert_eq!(refused.code, 2, "{refused:?}");
        assert!(
            says.iter().all(|part| refused.stderr.contains(part)),
            "{refused:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_errors_are_one_clear_line_and_an_exit_status_that_says_which_kind() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let url = server.url();
    let start = "workflow start --type greet --id g2 --task-queue nobody";
    let bad_input = cli(&url, &format!("{start} --input {{bad")).await;
    bad_input.failed(2, &["--input is not valid JSON", "line 1"]);
    let nobody = cli(&url, "workflow describe --id nobody").await;
    nobody.failed(3, &["\"nobody\"", "[not_found]"]);
    cli(&url, &format!("{start} --execution-timeout 1h"))
        .await
        .ok();
    let history = cli(&url, "workflow history --id g2 --json")
        .await
        .ok()
        .stdout;
    let history = History::from_json(&history).unwrap();
    let started = history.started().expect("a start event");
    assert_eq!(
        started.execution_timeout_ms,
        Some(3_600_000),
        "--execution-timeout 1h"
    );
    let open = cli(&url, "workflow result --id g2 --timeout 300ms").await;
    open.failed(124, &["g2", "still open after 300ms"]);
    cli(&url, "workflow terminate --id g2 --reason testing")
        .await
        .ok();
    let result = cli(&url, "workflow result --id g2").await;
    result.failed(1, &["g2", "was terminated: testing"]);
    let late = cli(&url, "workflow signal --id g2 --name late").await;
    late.failed(4, &["closed", "[run_closed]"]);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let unreachable = cli(&dead, "workflow list").await;
    unreachable.failed(
        5,
        &["cannot connect", "refused", "is `retrace server` running"],
    );
    let no_scheme = cli(&url, "--address localhost:7233 workflow list").await;
    no_scheme.failed(2, &["http://host:port"]);
    let help = cli_offline(&["--help"]).ok().stdout;
    for status in [
        "2 bad input",
        "3 no such workflow",
        "4 refused",
        "5 service unreachable",
    ] {
        assert!(
            help.contains(status),
            "--help documents exit status {status:?}: {help}"
        );
    }
}

#[test]
fn history_check_accepts_every_golden_fixture() {
    for entry in std::fs::read_dir(fixture("")).unwrap() {
        let path = entry.unwrap().path();
        let checked = cli_offline(&["history", "check", path.to_str().unwrap()]).ok();
        assert!(checked.stdout.starts_with("ok: "), "{checked:?}");
    }
}

#[test]
fn history_check_names_what_is_wrong_in_a_corrupted_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(fixture("one_activity.json")).unwrap();
    let gap = dir.path().join("gap.json");
    std::fs::write(
        &gap,
        good.replacen("\"event_id\": 5,", "\"event_id\": 6,", 1),
    )
    .unwrap();
    cli_offline(&["history", "check", gap.to_str().unwrap()])
        .failed(1, &["gap.json", "event id 6", "expected event id 5"]);
    let cut = dir.path().join("cut.json");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    cli_offline(&["history", "check", cut.to_str().unwrap()])
        .failed(1, &["cut.json", "not valid JSON at line"]);
    let unknown = dir.path().join("unknown.json");
    std::fs::write(
        &unknown,
        good.replacen("\"ActivityTaskStarted\"", "\"ActivityTaskBegun\"", 1),
    )
    .unwrap();
    cli_offline(&["history", "check", unknown.to_str().unwrap()])
        .failed(1, &["unknown event type \"ActivityTaskBegun\""]);
    cli_offline(&["history", "check", "no/such/file.json"])
        .failed(1, &["no/such/file.json", "cannot read"]);
}

#[test]
fn history_diff_exits_0_when_equal_1_when_different_and_2_on_bad_input() {
    let one = fixture("one_activity.json");
    let one = one.to_str().unwrap();
    let equal = cli_offline(&["history", "diff", one, one]).ok();
    assert!(equal.stdout.contains("equal"), "{equal:?}");
    let dir = tempfile::tempdir().unwrap();
    let changed = dir.path().join("changed.json");
    let text = std::fs::read_to_string(one)
        .unwrap()
        .replacen("\"world!\"", "\"mars!\"", 1);
    std::fs::write(&changed, text).unwrap();
    let different = cli_offline(&["history", "diff", one, changed.to_str().unwrap()]);
    assert_eq!(different.code, 1, "{different:?}");
    assert!(
        different.stdout.contains("histories diverge at event"),
        "{different:?}"
    );
    assert!(
        different.stdout.contains("\"world!\" != \"mars!\""),
        "{different:?}"
    );
    let other = fixture("three_sequential.json");
    let different = cli_offline(&["history", "diff", one, other.to_str().unwrap()]);
    assert_eq!(different.code, 1, "{different:?}");
    cli_offline(&["history", "diff", one, "missing.json"]).failed(2, &["missing.json"]);
}

/// `retrace server` on `db` must refuse it: exit non-zero, say why, change nothing.
fn assert_server_refuses(db: &Path, says: &[&str]) {
    let before = std::fs::read(db).ok();
    let listen = format!("127.0.0.1:{}", free_port());
    let db_arg = db.to_str().unwrap();
    let run = cli_offline(&["server", "--db", db_arg, "--listen", &listen]);
    assert_ne!(run.code, 0, "{run:?}");
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{run:?}");
    for part in says {
        assert!(last.contains(part), "says {part:?}: {run:?}");
    }
    assert_eq!(std::fs::read(db).ok(), before, "the file is unchanged");
}

#[test]
fn the_server_refuses_a_database_it_cannot_open_or_write_and_leaves_it_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    assert_server_refuses(dir.path(), &["is a directory"]);
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, "these are not the bytes of a database\n".repeat(200)).unwrap();
    assert_server_refuses(&junk, &["junk.db", "not a database"]);
    let read_only = dir.path().join("read_only.db");
    drop(retrace::env::SqliteStorage::open(&read_only).unwrap());
    let mut permissions = std::fs::metadata(&read_only).unwrap().permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(&read_only, permissions).unwrap();
    assert_server_refuses(&read_only, &["read_only.db", "read-only"]);
    assert_server_refuses(&dir.path().join("no/such/dir/x.db"), &["does not exist"]);
}

#[test]
fn the_server_refuses_a_non_loopback_address_without_a_token_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("never.db");
    let run = cli_offline(&[
        "server",
        "--db",
        db.to_str().unwrap(),
        "--listen",
        "0.0.0.0:7233",
    ]);
    let run = run.failed(1, &["0.0.0.0:7233", "not a loopback address", "--token"]);
    assert!(run.stdout.is_empty());
    assert!(!db.exists(), "no database is created for a refused start");
}

#[test]
fn the_server_refuses_zero_threads_before_opening_its_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("never.db");
    let db_arg = db.to_str().unwrap();
    let run = cli_offline(&["server", "--db", db_arg, "--threads", "0"]);
    assert_eq!(run.code, 2, "a usage error: {run:?}");
    assert!(run.stderr.contains("--threads"), "{run:?}");
    assert!(run.stderr.contains("not in 1..=1024"), "{run:?}");
    assert!(!db.exists(), "no database is created for a refused start");
}

/// Runs `retrace <args>` against `address` (arguments as given, spaces kept).
async fn cli_args(address: &str, args: &[&str]) -> Run {
    let mut command = retrace_command();
    command.env("RETRACE_ADDRESS", address).args(args);
    Run::of(
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_starts_with_search_attributes_and_lists_by_a_query() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(dir.path()).await;
    let url = server.url();
    for (id, customer) in [("o1", "c-1"), ("o2", "c-2")] {
        let attr = format!("CustomerId={customer}");
        let args = [
            "workflow",
            "start",
            "--type",
            "greet",
            "--id",
            id,
            "--task-queue",
            "nobody",
            "--search-attr",
            &attr,
            "--search-attr",
            "Due:Datetime=2026-12-01T00:00:00Z",
            "--search-attr",
            "Tags=[\"a\",\"b\"]",
            "--memo",
            "note={\"n\":1}",
        ];
        let started = cli_args(&url, &args).await;
        assert_eq!(started.code, 0, "{started:?}");
    }
    let query = "CustomerId = \"c-1\" AND Due >= \"2026-12-01T00:00:00Z\" AND Tags = \"b\"";
    let listed = cli_args(&url, &["workflow", "list", "--json", "--query", query])
        .await
        .ok();
    let runs: Vec<retrace::api::RunSummary> = serde_json::from_str(&listed.stdout).unwrap();
    let ids: Vec<&str> = runs.iter().map(|r| r.workflow_id.as_str()).collect();
    assert_eq!(ids, ["o1"]);
    let table = cli_args(
        &url,
        &["workflow", "list", "--query", "ORDER BY WorkflowId DESC"],
    )
    .await
    .ok();
    assert!(table.stdout.contains("SEARCH ATTRIBUTES"), "{table:?}");
    assert!(table.stdout.contains("CustomerId=c-2"), "{table:?}");
    // (Nobody polls the runs' queue: describe warns of it on stderr.)
    let described = cli_args(&url, &["workflow", "describe", "--id", "o1"]).await;
    assert_eq!(described.code, 0, "{described:?}");
    assert!(
        described
            .stdout
            .contains("search attr:    CustomerId=c-1 (Keyword)"),
        "{described:?}"
    );
    assert!(
        described
            .stdout
            .contains("memo:           {\"note\":{\"n\":1}}"),
        "{described:?}"
    );
    let bad = cli_args(&url, &["workflow", "list", "--query", "CustomerId = "]).await;
    assert_ne!(bad.code, 0, "{bad:?}");
    assert!(
        bad.stderr.contains("at byte 12: expected a value"),
        "{bad:?}"
    );
    let bad = [
        "workflow",
        "start",
        "--type",
        "greet",
        "--id",
        "o3",
        "--task-queue",
        "q",
        "--search-attr",
        "Amount:Int=many",
    ];
    let bad = cli_args(&url, &bad).await;
    assert!(
        bad.stderr.contains("\"many\" is not a Int value"),
        "{bad:?}"
    );
    server.interrupt();
}

#[test]
fn the_server_refuses_cluster_mode_over_sqlite_and_cluster_flags_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("never.db");
    let db_arg = db.to_str().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let sqlite = cli_offline(&["server", "--cluster", "--db", db_arg, "--listen", &listen]);
    sqlite.failed(2, &["--cluster needs a Postgres database", "never.db"]);
    for flags in [
        &["--node", "a"][..],
        &["--advertise", "http://a:1"],
        &["--lease-ms", "2000"],
    ] {
        let run = cli_offline(&[&["server", "--db", db_arg][..], flags].concat());
        assert_eq!(run.code, 2, "a usage error: {run:?}");
        assert!(run.stderr.contains("--cluster"), "{run:?}");
    }
    let short = cli_offline(&["server", "--cluster", "--lease-ms", "50", "--db", db_arg]);
    assert_eq!(short.code, 2, "a usage error: {short:?}");
    assert!(short.stderr.contains("not in 100..=600000"), "{short:?}");
    assert!(!db.exists(), "no database is created for a refused start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_of_a_single_server_says_it_is_no_cluster_and_lists_pass_over_dead_servers()
{
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let single = cli(&server.url(), "cluster status").await;
    single.failed(4, &["not a member of a cluster", "[invalid_argument]"]);
    let both = format!("{dead},{}", server.url());
    let status = cli(&both, "cluster status --json").await;
    status.failed(4, &["not a member of a cluster"]);
    let nobody = cli(&dead, "cluster status").await;
    nobody.failed(5, &["no server gave the cluster's view", "refused"]);
    let listed = cli(&both, "workflow list").await;
    assert_eq!(listed.code, 0, "one server of the list answers: {listed:?}");
    assert!(listed.stdout.starts_with("WORKFLOW ID"), "{listed:?}");
    assert!(listed.stderr.contains("warning:"), "{listed:?}");
    let twice = cli(&format!("{0},{0}", server.url()), "workflow list").await;
    twice.failed(2, &["listed twice"]);
}
