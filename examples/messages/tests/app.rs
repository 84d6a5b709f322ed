//! The web app end to end over HTTP on 127.0.0.1 (port 0), with real reqwest
//! calls: a run from Start to its four messages, and every kind of bad input
//! (a proceed before the run exists, a second proceed after completion, a
//! stand-in that is down or answers garbage, a missing or unusable database).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use retrace::engine::{Service, ServiceConfig};
use retrace::env::{Env, RunStatus, SqliteStorage, Unconnected};
use retrace::history::{EventKind, History};
use retrace::http::{HttpConfig, HttpServer};
use retrace_messages::app::{App, AppConfig, AppError, RunView, SqliteMessages};
use retrace_messages::{MESSAGES_COUNT, SEED_MESSAGES, Source, Stage, check_messages};
use serde_json::Value;
use tempfile::TempDir;

/// The durable timer of the test runs (the app's default is 5 s).
const SLEEP_MS: u64 = 300;
/// Polls of a run's status before a test gives up.
const POLLS_MAX: u32 = 400;
/// Between two polls.
const POLL_INTERVAL_MS: u64 = 50;

/// An app on an ephemeral port over databases in a temporary directory.
struct TestApp {
    app: App,
    http: reqwest::Client,
    dir: TempDir,
}

fn config(dir: &Path) -> AppConfig {
    AppConfig {
        listen: "127.0.0.1:0".parse().expect("an address"),
        db: dir.join("engine.db"),
        messages_db: dir.join("messages.db"),
        sleep_ms: SLEEP_MS,
        ..AppConfig::default()
    }
}

impl TestApp {
    async fn start() -> anyhow::Result<TestApp> {
        TestApp::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut AppConfig)) -> anyhow::Result<TestApp> {
        let dir = tempfile::tempdir()?;
        let mut config = config(dir.path());
        adjust(&mut config);
        let app = App::start(config).await?;
        Ok(TestApp {
            app,
            http: reqwest::Client::new(),
            dir,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.app.url())
    }

    /// `method path` with an optional JSON body: the status and the JSON reply.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = match method {
            "GET" => self.http.get(self.url(path)),
            "POST" => self.http.post(self.url(path)),
            other => bail!("no method {other}"),
        };
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let reply = serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?;
        Ok((status, reply))
    }

    async fn start_run(&self, body: &str) -> anyhow::Result<String> {
        let (status, reply) = self.call("POST", "/api/runs", Some(body)).await?;
        ensure!(status == 201, "start answered {status}: {reply}");
        let workflow_id = reply["workflow_id"].as_str().context("a workflow id")?;
        Ok(workflow_id.to_string())
    }

    async fn view(&self, workflow_id: &str) -> anyhow::Result<RunView> {
        let (status, reply) = self
            .call("GET", &format!("/api/runs/{workflow_id}"), None)
            .await?;
        ensure!(status == 200, "status answered {status}: {reply}");
        Ok(serde_json::from_value(reply)?)
    }

    /// Polls the run until `done` holds (bounded).
    async fn wait_for(
        &self,
        workflow_id: &str,
        what: &str,
        done: impl Fn(&RunView) -> bool,
    ) -> anyhow::Result<RunView> {
        let mut last = None;
        for _ in 0..POLLS_MAX {
            let view = self.view(workflow_id).await?;
            if done(&view) {
                return Ok(view);
            }
            last = Some(view);
            pause(POLL_INTERVAL_MS).await;
        }
        bail!("{workflow_id} never reached {what}; last status: {last:#?}")
    }

    async fn proceed(&self, workflow_id: &str) -> anyhow::Result<(u16, Value)> {
        self.call("POST", &format!("/api/runs/{workflow_id}/proceed"), None)
            .await
    }

    async fn history(&self, workflow_id: &str) -> anyhow::Result<History> {
        let url = self.url(&format!("/api/runs/{workflow_id}/history"));
        let text = self
            .http
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(History::from_json(&text)?)
    }

    /// Runs `workflow_id` from its wait to completion.
    async fn proceed_to_completion(&self, workflow_id: &str) -> anyhow::Result<RunView> {
        self.wait_for(workflow_id, "waiting for proceed", waits_for_proceed)
            .await?;
        let (status, reply) = self.proceed(workflow_id).await?;
        ensure!(status == 202, "proceed answered {status}: {reply}");
        self.wait_for(workflow_id, "completion", |v| v.status.is_closed())
            .await
    }

    async fn shutdown(self) {
        self.app.shutdown().await;
    }
}

#[allow(clippy::disallowed_methods)] // the app runs on the wall clock; so do its tests
async fn pause(duration_ms: u64) {
    tokio::time::sleep(Duration::from_millis(duration_ms)).await;
}

fn waits_for_proceed(view: &RunView) -> bool {
    view.progress
        .as_ref()
        .is_some_and(|p| p.stage == Stage::WaitingForProceed)
}

fn stage(view: &RunView) -> Option<&Stage> {
    view.progress.as_ref().map(|p| &p.stage)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_started_from_the_page_shows_its_timer_then_its_messages_in_order()
-> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let page = app.http.get(app.url("/")).send().await?;
    ensure!(page.status() == 200);
    let html = page.text().await?;
    ensure!(html.contains("<button id=\"start\">Start</button>") && html.contains("Proceed"));

    let workflow_id = app.start_run("").await?;
    let first = app.view(&workflow_id).await?;
    ensure!(first.status == RunStatus::Running);
    ensure!(
        first.messages.is_empty(),
        "nothing before the timer: {first:?}"
    );
    let sleeping = app
        .wait_for(&workflow_id, "its timer", |v| v.timer_fires_at.is_some())
        .await?;
    ensure!(
        matches!(stage(&sleeping), Some(Stage::Sleeping { .. })),
        "{sleeping:?}"
    );

    let waiting = app
        .wait_for(&workflow_id, "waiting for proceed", waits_for_proceed)
        .await?;
    let sources: Vec<Source> = waiting.messages.iter().map(|m| m.source).collect();
    ensure!(
        sources == [Source::Database, Source::Inspector],
        "{waiting:?}"
    );
    ensure!(waiting.messages[0].text == SEED_MESSAGES[0]);
    ensure!(
        waiting.messages[1]
            .text
            .starts_with("Verified by inspector ")
    );
    let started = waiting.progress.as_ref().context("progress")?.started_at;
    ensure!(
        waiting.messages[0].at.millis_since(started) >= SLEEP_MS,
        "the timer came first"
    );

    let done = app.proceed_to_completion(&workflow_id).await?;
    ensure!(done.status == RunStatus::Completed, "{done:?}");
    check_messages(&done.messages).map_err(anyhow::Error::msg)?;
    ensure!(done.messages.len() == MESSAGES_COUNT);
    ensure!(
        done.messages[..2] == waiting.messages[..],
        "the first two did not change"
    );
    let proceeded = done
        .progress
        .as_ref()
        .and_then(|p| p.proceeded_at)
        .context("proceeded")?;
    ensure!(
        done.messages[2].at >= proceeded,
        "the fetches came after proceed"
    );
    app.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_has_the_timer_the_signal_and_both_fetches_in_one_workflow_task()
-> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let workflow_id = app
        .start_run(r#"{"workflow_id": "history-1", "message_id": 3}"#)
        .await?;
    ensure!(workflow_id == "history-1");
    let done = app.proceed_to_completion(&workflow_id).await?;
    ensure!(done.messages[0].text == SEED_MESSAGES[2]);
    let history = app.history(&workflow_id).await?;
    let names: Vec<&str> = history.events().iter().map(|e| e.kind.name()).collect();
    ensure!(
        names[..4]
            == [
                "WorkflowExecutionStarted",
                "WorkflowTaskScheduled",
                "WorkflowTaskStarted",
                "WorkflowTaskCompleted"
            ]
    );
    ensure!(
        names[4] == "TimerStarted" && names[5] == "TimerFired",
        "{names:?}"
    );
    ensure!(names.contains(&"WorkflowExecutionSignaled"));
    ensure!(names.last() == Some(&"WorkflowExecutionCompleted"));
    let fetches: Vec<u64> = history
        .events()
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::ActivityTaskScheduled(s)
                if s.activity_type.starts_with("fetch_") && s.activity_type != "fetch_message" =>
            {
                Some(s.workflow_task_completed_event_id)
            }
            _ => None,
        })
        .collect();
    ensure!(
        fetches.len() == 2 && fetches[0] == fetches[1],
        "one task scheduled both: {fetches:?}"
    );
    app.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proceed_before_the_run_exists_is_a_404_that_says_to_start_one() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let (status, reply) = app.proceed("never-started").await?;
    ensure!(status == 404, "{status}: {reply}");
    ensure!(reply["code"] == "not_found", "{reply}");
    let message = reply["message"].as_str().context("a message")?;
    ensure!(
        message.contains("never-started") && message.contains("start one first"),
        "{message}"
    );
    let (status, _) = app.call("GET", "/api/runs/never-started", None).await?;
    ensure!(status == 404);
    app.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_proceed_after_completion_says_already_completed_and_changes_nothing()
-> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let workflow_id = app.start_run("{}").await?;
    let done = app.proceed_to_completion(&workflow_id).await?;
    let before = app.history(&workflow_id).await?;
    let (status, reply) = app.proceed(&workflow_id).await?;
    ensure!(status == 409, "{status}: {reply}");
    ensure!(reply["code"] == "already_completed", "{reply}");
    ensure!(
        reply["message"]
            .as_str()
            .context("message")?
            .contains("already completed")
    );
    ensure!(
        app.history(&workflow_id).await? == before,
        "the history changed"
    );
    ensure!(app.view(&workflow_id).await?.messages == done.messages);
    app.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_proceed_while_the_fetches_run_is_refused() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let (status, _) = app
        .call(
            "POST",
            "/stand-in/misbehave",
            Some(r#"{"endpoint": "joke", "mode": "down", "calls": 2}"#),
        )
        .await?;
    ensure!(status == 200);
    let workflow_id = app.start_run("{}").await?;
    app.wait_for(&workflow_id, "waiting for proceed", waits_for_proceed)
        .await?;
    ensure!(app.proceed(&workflow_id).await?.0 == 202);
    app.wait_for(&workflow_id, "the fetches", |v| {
        v.progress
            .as_ref()
            .is_some_and(|p| p.proceeded_at.is_some())
    })
    .await?;
    let (status, reply) = app.proceed(&workflow_id).await?;
    // The joke stand-in is down for two calls (0.5 s and 1 s of backoff), so
    // the run is still fetching when the second click lands.
    ensure!(status == 409, "{status}: {reply}");
    ensure!(reply["code"] == "already_proceeded", "{reply}");
    app.wait_for(&workflow_id, "completion", |v| {
        v.status == RunStatus::Completed
    })
    .await?;
    let signals = app
        .history(&workflow_id)
        .await?
        .events()
        .iter()
        .filter(|e| e.kind.name() == "WorkflowExecutionSignaled")
        .count();
    ensure!(signals == 1, "{signals} signals");
    app.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stand_in_answering_garbage_fails_the_fetch_which_is_retried_as_the_history_shows()
-> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let misbehave = r#"{"endpoint": "pokemon", "mode": "garbage", "calls": 2}"#;
    ensure!(
        app.call("POST", "/stand-in/misbehave", Some(misbehave))
            .await?
            .0
            == 200
    );
    let workflow_id = app.start_run("{}").await?;
    let done = app.proceed_to_completion(&workflow_id).await?;
    ensure!(done.status == RunStatus::Completed, "{done:?}");
    check_messages(&done.messages).map_err(anyhow::Error::msg)?;
    let history = app.history(&workflow_id).await?;
    let (attempt, failure) = last_attempt(&history, "fetch_pokemon")?;
    ensure!(
        attempt == 3,
        "two garbage answers, then a good one: attempt {attempt}"
    );
    let failure = failure.context("the third attempt carries the second one's failure")?;
    ensure!(failure.failure_type == "BadResponse", "{failure:?}");
    ensure!(failure.message.contains("not JSON"), "{failure:?}");
    let (joke_attempt, _) = last_attempt(&history, "fetch_joke")?;
    ensure!(joke_attempt == 1, "the joke fetch was not disturbed");
    app.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stand_in_that_is_down_or_answers_the_wrong_shape_is_retried_too() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let down = r#"{"endpoint": "joke", "mode": "down", "calls": 1}"#;
    ensure!(app.call("POST", "/stand-in/misbehave", Some(down)).await?.0 == 200);
    let shape = r#"{"endpoint": "pokemon", "mode": "wrong_shape", "calls": 1}"#;
    ensure!(
        app.call("POST", "/stand-in/misbehave", Some(shape))
            .await?
            .0
            == 200
    );
    let workflow_id = app.start_run("{}").await?;
    app.proceed_to_completion(&workflow_id).await?;
    let history = app.history(&workflow_id).await?;
    let (attempt, failure) = last_attempt(&history, "fetch_joke")?;
    let failure = failure.context("a last failure")?;
    ensure!(
        attempt == 2 && failure.failure_type == "Unavailable",
        "{failure:?}"
    );
    ensure!(failure.message.contains("503"), "{failure:?}");
    let (attempt, failure) = last_attempt(&history, "fetch_pokemon")?;
    let failure = failure.context("a last failure")?;
    ensure!(
        attempt == 2 && failure.message.contains("no string field \"name\""),
        "{failure:?}"
    );
    app.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pokemon_url_on_a_closed_port_keeps_the_fetch_retrying_with_its_last_failure_shown()
-> anyhow::Result<()> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = closed.local_addr()?.port();
    drop(closed);
    let app = TestApp::start_with(|c| {
        c.pokemon_url = Some(format!("http://127.0.0.1:{port}/api/v2/pokemon"))
    })
    .await?;
    let workflow_id = app.start_run("{}").await?;
    app.wait_for(&workflow_id, "waiting for proceed", waits_for_proceed)
        .await?;
    ensure!(app.proceed(&workflow_id).await?.0 == 202);
    let retrying = app
        .wait_for(&workflow_id, "a retried fetch", |view| {
            view.pending_activities.iter().any(|a| {
                a.activity_type == "fetch_pokemon" && a.attempt >= 2 && a.last_failure.is_some()
            })
        })
        .await?;
    ensure!(retrying.status == RunStatus::Running);
    let pending = &retrying.pending_activities[0];
    let failure = pending.last_failure.as_ref().context("a failure")?;
    ensure!(failure.failure_type == "Unavailable", "{failure:?}");
    ensure!(
        failure.message.contains(&format!("127.0.0.1:{port}")),
        "names the URL: {failure:?}"
    );
    let joke = app
        .wait_for(&workflow_id, "the joke", |v| {
            v.messages.iter().any(|m| m.source == Source::Joke)
        })
        .await?;
    ensure!(
        joke.status == RunStatus::Running,
        "the run waits for the Pokémon"
    );
    app.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_start_requests_are_refused_with_what_was_wrong() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let cases = [
        ("{not json", "not valid JSON"),
        (r#"{"colour": "red"}"#, "unknown field `colour`"),
        (r#"{"workflow_id": "has spaces"}"#, "letters, digits"),
        (r#"{"message_id": 99}"#, "no stored message 99"),
    ];
    for (body, expected) in cases {
        let (status, reply) = app.call("POST", "/api/runs", Some(body)).await?;
        ensure!(status == 400, "{body}: {status} {reply}");
        let message = reply["message"].as_str().context("a message")?;
        ensure!(message.contains(expected), "{body}: {message}");
    }
    let first = app.start_run(r#"{"workflow_id": "twice"}"#).await?;
    let (status, reply) = app
        .call("POST", "/api/runs", Some(r#"{"workflow_id": "twice"}"#))
        .await?;
    ensure!(
        status == 409 && reply["code"] == "already_started",
        "{first}: {reply}"
    );
    let (status, reply) = app
        .call(
            "POST",
            "/stand-in/misbehave",
            Some(r#"{"endpoint": "moon"}"#),
        )
        .await?;
    ensure!(status == 400, "{reply}");
    let (status, _) = app.call("GET", "/no/such/page", None).await?;
    ensure!(status == 404);
    app.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_message_database_is_created_and_seeded() -> anyhow::Result<()> {
    let app =
        TestApp::start_with(|c| c.messages_db = c.messages_db.with_file_name("new.db")).await?;
    let TestApp { app, dir, .. } = app;
    let path = dir.path().join("new.db");
    ensure!(path.exists(), "created");
    app.shutdown().await;
    let store = SqliteMessages::open(&path)?;
    ensure!(store.count()? as usize == SEED_MESSAGES.len());
    ensure!(store.read(1)?.as_deref() == Some(SEED_MESSAGES[0]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_database_that_is_not_sqlite_is_a_startup_error_naming_it_and_is_left_unchanged()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("garbage.db");
    let garbage = b"these are not the bytes of a SQLite database\n".repeat(100);
    std::fs::write(&path, &garbage)?;
    let mut config = config(dir.path());
    config.messages_db = path.clone();
    let error = match App::start(config).await {
        Ok(_) => bail!("the app started over a garbage database"),
        Err(error) => error,
    };
    ensure!(matches!(error, AppError::MessagesDb { .. }), "{error:?}");
    let text = error.to_string();
    ensure!(
        text.contains(&path.display().to_string()),
        "names the file: {text}"
    );
    ensure!(text.contains("not a SQLite database"), "{text}");
    ensure!(std::fs::read(&path)? == garbage, "the file changed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_another_program_or_a_directory_is_refused_untouched() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let other = dir.path().join("other.db");
    let connection = rusqlite::Connection::open(&other)?;
    connection.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total INTEGER);")?;
    drop(connection);
    let bytes = std::fs::read(&other)?;
    let error = SqliteMessages::open(&other).err().context("refused")?;
    ensure!(
        error.to_string().contains("belongs to another program"),
        "{error}"
    );
    ensure!(std::fs::read(&other)? == bytes, "the file changed");

    let engine_db = dir.path().join("engine.db");
    drop(SqliteStorage::open(&engine_db)?);
    let error = SqliteMessages::open(&engine_db).err().context("refused")?;
    ensure!(
        error.to_string().contains("retrace engine database"),
        "{error}"
    );

    let error = SqliteMessages::open(dir.path()).err().context("refused")?;
    ensure!(error.to_string().contains("is a directory"), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_refuses_addresses_other_than_loopback_and_urls_it_cannot_fetch()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = config(dir.path());
    config.listen = "0.0.0.0:0".parse()?;
    let error = App::start(config).await.err().context("refused")?;
    ensure!(error.to_string().contains("loopback"), "{error}");
    let mut config = self::config(dir.path());
    config.joke_url = Some("ftp://example.invalid/joke".to_string());
    let error = App::start(config).await.err().context("refused")?;
    ensure!(error.to_string().contains("--joke-url"), "{error}");
    Ok(())
}

/// The app against a separate retrace service over HTTP, as `--server` runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_completes_against_a_separate_retrace_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let storage = SqliteStorage::open(dir.path().join("server.db"))?;
    let config = ServiceConfig::default();
    let limits = config.limits;
    let service =
        Service::start(Env::tokio(Arc::new(Unconnected)), Arc::new(storage), config).await?;
    let http = HttpConfig::new("127.0.0.1:0".parse()?, &limits);
    let server = HttpServer::start(service.handler(), http).await?;
    let app = TestApp::start_with(|c| c.server = Some(server.url())).await?;
    let workflow_id = app.start_run("{}").await?;
    let done = app.proceed_to_completion(&workflow_id).await?;
    check_messages(&done.messages).map_err(anyhow::Error::msg)?;
    ensure!(
        !app.dir.path().join("engine.db").exists(),
        "no embedded engine ran"
    );
    app.shutdown().await;
    server.shutdown(1_000).await?;
    Ok(())
}

/// The last `ActivityTaskStarted` of `activity_type`: its attempt and last failure.
fn last_attempt(
    history: &History,
    activity_type: &str,
) -> anyhow::Result<(u32, Option<retrace::types::Failure>)> {
    let mut scheduled = None;
    let mut found = None;
    for event in history.events() {
        match &event.kind {
            EventKind::ActivityTaskScheduled(s) if s.activity_type == activity_type => {
                scheduled = Some(event.event_id)
            }
            EventKind::ActivityTaskStarted(s) if Some(s.scheduled_event_id) == scheduled => {
                found = Some((s.attempt, s.last_failure.clone()));
            }
            _ => {}
        }
    }
    found.with_context(|| format!("no ActivityTaskStarted of {activity_type}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ui_listen_the_embedded_engine_serves_the_web_ui_with_the_run_and_its_timeline()
-> anyhow::Result<()> {
    let app = TestApp::start_with(|config| {
        config.ui_listen = Some("127.0.0.1:0".parse().expect("an address"))
    })
    .await?;
    let ui = app.app.ui_url().context("the UI is served")?;
    let workflow_id = app
        .start_run(r#"{"workflow_id": "ui-1", "message_id": 1}"#)
        .await?;
    app.proceed_to_completion(&workflow_id).await?;
    let list = app.http.get(format!("{ui}/")).send().await?.text().await?;
    ensure!(
        list.contains("href=\"/run?id=ui-1"),
        "the list links the run: {list}"
    );
    let page = app
        .http
        .get(format!("{ui}/run?id=ui-1"))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        page.contains("<svg class=\"timeline\""),
        "the run page draws its timeline"
    );
    ensure!(
        page.contains("fetch_pokemon") && page.contains("Completed"),
        "{page}"
    );
    app.shutdown().await;
    Ok(())
}
