//! The Web UI in a real browser (headless Chromium through chromedriver),
//! against `retrace server`'s HTTP server with a worker over HTTP; and its
//! token and cross-site rules over plain HTTP.
//!
//! Without chromium and chromedriver the browser tests say loudly that they
//! are skipped; with RETRACE_REQUIRE_BROWSER=1 (as CI sets) that is a failure.
//! RETRACE_UI_SCREENSHOTS=DIR keeps the pages' screenshots in DIR (the ones
//! in docs/ui/ come from `RETRACE_UI_SCREENSHOTS=docs/ui`).
// A real browser runs on the wall clock: waiting for it (bounded tries, no
// timing asserted) needs tokio's timer, not the Env's.
#![allow(clippy::disallowed_methods)]

mod common;
#[path = "web_ui/webdriver.rs"]
mod webdriver;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use retrace::activity::{
    Activity, ActivityContext, ActivityOptions, ActivityResult, RetryPolicy, retryable,
};
use retrace::client::{Client, StartOptions};
use retrace::engine::{Service, ServiceConfig};
use retrace::env::{Env, SqliteStorage, Unconnected};
use retrace::history::History;
use retrace::http::{HttpConfig, HttpNetwork, HttpServer};
use retrace::worker::Worker;
use retrace::workflow::{Workflow, WorkflowContext, WorkflowRegistry, WorkflowResult};
use tempfile::TempDir;
use webdriver::{Browser, Driver, Session};

/// The hostile workflow id every page must show as text.
const HOSTILE_ID: &str = "<script>alert(1)</script>";
/// Tries (100 ms apart) for what the page waits on: the run to reach its
/// signal, live refresh to show it completed.
const WAIT_TRIES_MAX: usize = 600;
const WAIT_STEP_MS: u64 = 100;
const WIDE_PX: u32 = 1280;
const NARROW_PX: u32 = 390;
const TOKEN: &str = "ui-test-token";

/// Fails its first two attempts, then succeeds: the timeline draws the retries.
struct FlakyTwice;
impl Activity for FlakyTwice {
    const NAME: &'static str = "flaky_twice";
    type Input = String;
    type Output = String;
    fn options() -> ActivityOptions {
        let retry = RetryPolicy {
            initial_interval_ms: 150,
            ..RetryPolicy::default()
        };
        ActivityOptions::default()
            .start_to_close(Duration::from_secs(10))
            .retry(retry)
    }
    async fn run(&self, ctx: ActivityContext, input: String) -> ActivityResult<String> {
        if ctx.attempt() < 3 {
            return Err(retryable(format!(
                "mail server busy (attempt {})",
                ctx.attempt()
            )));
        }
        Ok(format!("sent {input}"))
    }
}

/// Composes a greeting, sends it (retried), sleeps, waits for `approve`.
struct Greet;
impl Workflow for Greet {
    const NAME: &'static str = "greet";
    type Input = String;
    type Output = String;
    async fn run(ctx: WorkflowContext, name: String) -> WorkflowResult<String> {
        let status = Arc::new(Mutex::new("composing"));
        let shown = status.clone();
        ctx.query_handler("status", move |(): ()| *shown.lock().unwrap());
        let greeting = ctx
            .activity::<common::Compose>(format!("hello {name}"))
            .await?;
        let sent = ctx.activity::<FlakyTwice>(greeting).await?;
        ctx.sleep(Duration::from_millis(100)).await?;
        *status.lock().unwrap() = "waiting";
        let by: String = ctx.signal("approve").recv().await?;
        Ok(format!("{sent}, approved by {by}"))
    }
}

struct App {
    server: HttpServer,
    _service: Service,
    _worker: Worker,
    _dir: TempDir,
}

impl App {
    async fn start(token: Option<&str>) -> anyhow::Result<App> {
        common::init_logs();
        let dir = tempfile::tempdir()?;
        let storage = SqliteStorage::open(dir.path().join("retrace.db"))?;
        let config = ServiceConfig::default();
        let limits = config.limits;
        let env = Env::tokio(Arc::new(Unconnected));
        let service = Service::start(env, Arc::new(storage), config)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
        let http =
            HttpConfig::new("127.0.0.1:0".parse()?, &limits).with_token(token.map(str::to_string));
        let server = HttpServer::start(service.handler(), http).await?;
        let env = Env::tokio(Arc::new(HttpNetwork::new(&server.url(), token)?));
        let mut registry = WorkflowRegistry::new();
        registry.register::<Greet>();
        let worker = Worker::builder(env, "greetings")
            .identity("worker-1@ui-test")
            .workflows(registry)
            .activity(common::Compose)
            .activity(FlakyTwice)
            .start();
        Ok(App {
            server,
            _service: service,
            _worker: worker,
            _dir: dir,
        })
    }

    fn client(&self, token: Option<&str>) -> anyhow::Result<Client> {
        Ok(Client::new(Env::tokio(Arc::new(HttpNetwork::new(
            &self.server.url(),
            token,
        )?))))
    }

    /// Starts `greeter-1` and waits until it waits for its signal; starts
    /// the hostile id on a queue nobody polls.
    async fn seed(&self, token: Option<&str>) -> anyhow::Result<()> {
        let client = self.client(token)?;
        let handle = client
            .start::<Greet>(StartOptions::new("greeter-1", "greetings"), "ana".into())
            .await?;
        let mut status = String::new();
        for _ in 0..WAIT_TRIES_MAX {
            status = handle.query("status", ()).await?;
            if status == "waiting" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(WAIT_STEP_MS)).await;
        }
        anyhow::ensure!(status == "waiting", "greeter-1 never reached its signal");
        client
            .start_by_name(
                StartOptions::new(HOSTILE_ID, "nobody-polls"),
                "greet",
                serde_json::json!("x"),
            )
            .await?;
        Ok(())
    }
}

/// Where screenshots go: RETRACE_UI_SCREENSHOTS, or a temporary directory.
fn screenshot_dir(temp: &TempDir) -> PathBuf {
    match std::env::var_os("RETRACE_UI_SCREENSHOTS") {
        Some(dir) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir),
        None => temp.path().join("shots"),
    }
}

/// Waits until the page's `css` element's text contains `wanted`.
async fn wait_for_text(page: &Session, css: &str, wanted: &str) -> anyhow::Result<String> {
    let mut text = String::new();
    for _ in 0..WAIT_TRIES_MAX {
        if let Ok(element) = page.find(css).await {
            text = page.text(&element).await.unwrap_or_default();
            if text.contains(wanted) {
                return Ok(text);
            }
        }
        tokio::time::sleep(Duration::from_millis(WAIT_STEP_MS)).await;
    }
    anyhow::bail!("{css} never showed {wanted:?}; last: {text:?}")
}

async fn count(page: &Session, css: &str) -> anyhow::Result<usize> {
    Ok(page.find_all(css).await?.len())
}

/// The list shows both runs (the hostile id as text) and leads to greeter-1.
async fn open_the_list_and_the_run(
    page: &Session,
    url: &str,
    shots: &std::path::Path,
) -> anyhow::Result<()> {
    page.goto(&format!("{url}/")).await?;
    let links = page.find_all("table.runs td.id a").await?;
    let mut ids = Vec::new();
    for link in &links {
        ids.push(page.text(link).await?);
    }
    assert_eq!(ids.len(), 2, "both runs are listed: {ids:?}");
    assert!(
        ids.contains(&HOSTILE_ID.to_string()),
        "the hostile id shows as text: {ids:?}"
    );
    let alerted = page
        .execute("return document.querySelectorAll('td script').length")
        .await?;
    assert_eq!(alerted, 0, "no script element came from a workflow id");
    let running = page
        .text(&page.find("nav.counts a[data-status=Running] b").await?)
        .await?;
    assert_eq!(running, "2", "both runs count as running");
    page.screenshot(WIDE_PX, &shots.join("runs.png")).await?;
    page.resize(NARROW_PX, 800).await?;
    page.screenshot(NARROW_PX, &shots.join("runs-390.png"))
        .await?;
    page.resize(WIDE_PX, 900).await?;
    let greeter = page.find("tr td.id a[href*='id=greeter-1']").await?;
    page.click(&greeter).await?;
    let title = page.text(&page.find("h1").await?).await?;
    assert!(
        title.contains("greeter-1") && title.contains("Running"),
        "{title}"
    );
    Ok(())
}

/// The timeline: two activities (the second with its retries inside its
/// bar), one timer, a workflow task per step.
async fn check_the_timeline(page: &Session) -> anyhow::Result<()> {
    assert_eq!(
        count(page, "svg.timeline .lane.activity rect.bar").await?,
        2,
        "activity bars"
    );
    assert_eq!(
        count(page, "svg.timeline .lane.timer rect.bar").await?,
        1,
        "timer bars"
    );
    assert_eq!(
        count(page, "svg.timeline .lane.workflow-task rect.bar").await?,
        4,
        "workflow task bars"
    );
    assert_eq!(
        count(page, "svg.timeline .lane.activity rect.segment.retrying").await?,
        1,
        "the retries drawn"
    );
    let retry = page
        .execute(
            "return document.querySelector('svg.timeline rect.segment.retrying title').textContent",
        )
        .await?;
    let retry = retry.as_str().unwrap_or_default();
    assert!(
        retry.contains("attempts 1-2") && retry.contains("mail server busy (attempt 2)"),
        "{retry}"
    );
    let backoffs = page
        .execute(
            "return [].map.call(document.querySelectorAll('svg.timeline rect.segment.backoff title'), \
             function(t){return t.textContent})",
        )
        .await?;
    let expected = serde_json::json!([
        "backoff after attempt 1: 150ms (retry policy)",
        "backoff after attempt 2: 300ms (retry policy)"
    ]);
    assert_eq!(backoffs, expected, "each backoff inside the bar");
    assert_eq!(
        count(page, "svg.timeline rect.segment.attempt").await?,
        2,
        "attempts 1 and 2"
    );
    Ok(())
}

/// Sends `approve` from the page's form and waits for live refresh to show
/// the run completed.
async fn signal_from_the_page(page: &Session) -> anyhow::Result<()> {
    let name = page.find("#signal-name").await?;
    page.type_into(&name, "approve").await?;
    let input = page.find("#signal-input").await?;
    page.clear(&input).await?;
    page.type_into(&input, "\"ana's boss\"").await?;
    page.click(&page.find("#signal-form button[type=submit]").await?)
        .await?;
    wait_for_text(page, ".flash", "Signal sent.").await?;
    wait_for_text(page, "#live-region dl.summary", "Completed").await?;
    let result = wait_for_text(page, "#result", "approved by").await?;
    assert!(
        result.contains("sent hello ana!, approved by ana's boss"),
        "{result}"
    );
    wait_for_text(page, "h1", "Completed").await?;
    wait_for_text(page, "table.history", "WorkflowExecutionCompleted").await?;
    assert_eq!(
        count(page, "#actions").await?,
        0,
        "a closed run offers no actions"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_the_list_leads_to_the_run_whose_timeline_and_signal_form_complete_it()
-> anyhow::Result<()> {
    let Some(browser) = Browser::installed() else {
        return Ok(());
    };
    let app = App::start(None).await?;
    app.seed(None).await?;
    let temp = tempfile::tempdir()?;
    let shots = screenshot_dir(&temp);
    let driver = Driver::start(&browser).await?;
    let page = driver
        .session(&browser, &temp.path().join("profile"), true)
        .await?;
    page.resize(WIDE_PX, 900).await?;
    let url = app.server.url();
    open_the_list_and_the_run(&page, &url, &shots).await?;
    check_the_timeline(&page).await?;
    page.screenshot(WIDE_PX, &shots.join("run-waiting.png"))
        .await?;
    signal_from_the_page(&page).await?;
    page.screenshot(WIDE_PX, &shots.join("run-completed.png"))
        .await?;
    page.resize(NARROW_PX, 800).await?;
    page.screenshot(NARROW_PX, &shots.join("run-390.png"))
        .await?;
    page.resize(WIDE_PX, 900).await?;
    page.goto(&format!("{url}/task-queues")).await?;
    let queue = wait_for_text(&page, "section[data-queue=greetings]", "worker-1@ui-test").await?;
    assert!(
        queue.contains("greet"),
        "the poller's workflow types: {queue}"
    );
    page.screenshot(WIDE_PX, &shots.join("task-queues.png"))
        .await?;
    page.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_javascript_the_list_the_run_and_its_history_still_read() -> anyhow::Result<()> {
    let Some(browser) = Browser::installed() else {
        return Ok(());
    };
    let app = App::start(None).await?;
    app.seed(None).await?;
    let temp = tempfile::tempdir()?;
    let driver = Driver::start(&browser).await?;
    let page = driver
        .session(&browser, &temp.path().join("profile"), false)
        .await?;
    page.resize(WIDE_PX, 900).await?;
    let url = app.server.url();
    page.goto(&format!("{url}/")).await?;
    assert_eq!(count(&page, "table.runs tbody tr").await?, 2);
    page.click(&page.find("tr td.id a[href*='id=greeter-1']").await?)
        .await?;
    let history = app.client(None)?.history("greeter-1", None).await?;
    assert_eq!(
        count(&page, "table.history tbody tr").await?,
        history.len(),
        "every event is a row"
    );
    assert_eq!(
        count(&page, "svg.timeline .lane.activity rect.bar").await?,
        2
    );
    let hidden = page.find_all(".live-toggle[hidden]").await?;
    assert_eq!(
        hidden.len(),
        1,
        "the live switch stays hidden without scripts"
    );
    page.click(&page.find("#history .toolbar a").await?).await?;
    assert!(page.current_url().await?.contains("view=full"));
    let open = count(&page, "table.history details[open]").await?;
    assert_eq!(open, history.len(), "the full view unfolds every event");
    page.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_a_token_server_asks_for_the_token_once() -> anyhow::Result<()> {
    let Some(browser) = Browser::installed() else {
        return Ok(());
    };
    let app = App::start(Some(TOKEN)).await?;
    app.seed(Some(TOKEN)).await?;
    let temp = tempfile::tempdir()?;
    let driver = Driver::start(&browser).await?;
    let page = driver
        .session(&browser, &temp.path().join("profile"), true)
        .await?;
    let url = app.server.url();
    page.goto(&format!("{url}/")).await?;
    page.type_into(&page.find("#token").await?, TOKEN).await?;
    page.click(&page.find("form button[type=submit]").await?)
        .await?;
    wait_for_text(&page, "h1", "Workflow runs").await?;
    page.goto(&format!("{url}/run?id=greeter-1")).await?;
    wait_for_text(&page, "h1", "greeter-1").await?;
    let cookie = page.execute("return document.cookie").await?;
    assert_eq!(
        cookie, "",
        "the token cookie is HttpOnly: scripts cannot read it"
    );
    page.close().await?;
    Ok(())
}

async fn get(
    url: &str,
    cookie: Option<&str>,
) -> anyhow::Result<(u16, String, reqwest::header::HeaderMap)> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut request = http.get(url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let reply = request.send().await?;
    let status = reply.status().as_u16();
    let headers = reply.headers().clone();
    Ok((status, reply.text().await?, headers))
}

async fn post_form(
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String, reqwest::header::HeaderMap)> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut request = http
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let reply = request.send().await?;
    let status = reply.status().as_u16();
    let headers = reply.headers().clone();
    Ok((status, reply.text().await?, headers))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_pages_need_the_cookie_and_the_api_still_needs_the_bearer_header()
-> anyhow::Result<()> {
    let app = App::start(Some(TOKEN)).await?;
    let url = app.server.url();
    let (status, body, _) = get(&format!("{url}/"), None).await?;
    assert_eq!(status, 401);
    assert!(
        body.contains("name=\"token\""),
        "the page asks for the token: {body}"
    );
    let (status, _, _) = post_form(&format!("{url}/login"), "token=wrong", &[]).await?;
    assert_eq!(status, 401);
    let (status, _, headers) =
        post_form(&format!("{url}/login"), &format!("token={TOKEN}"), &[]).await?;
    assert_eq!(status, 303);
    let cookie = headers
        .get("set-cookie")
        .context("a cookie")?
        .to_str()?
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().context("cookie pair")?;
    let (status, body, _) = get(&format!("{url}/"), Some(pair)).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Workflow runs"));
    let api = reqwest::Client::new()
        .post(format!("{url}/api/v1/ListWorkflows"))
        .header("cookie", pair)
        .body("{}")
        .send()
        .await?;
    assert_eq!(
        api.status().as_u16(),
        401,
        "the API wants the bearer header, not the cookie"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_from_another_site_or_host_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let app = App::start(None).await?;
    app.seed(None).await?;
    let url = app.server.url();
    let form = "id=greeter-1&name=approve&input=%22mallory%22";
    let signal = format!("{url}/run/signal");
    let cross_site = [
        ("sec-fetch-site", "cross-site"),
        ("origin", "https://evil.example"),
    ];
    let (status, _, _) = post_form(&signal, form, &cross_site).await?;
    assert_eq!(status, 403, "a cross-site form post");
    let (status, _, _) = post_form(&signal, form, &[("origin", "http://evil.example")]).await?;
    assert_eq!(status, 403, "another origin");
    let (status, _, _) = post_form(&signal, form, &[("host", "evil.example")]).await?;
    assert_eq!(status, 421, "a rebound host name");
    let (status, _, _) = get(&format!("{url}/"), None).await?;
    assert_eq!(status, 200);
    let history = app.client(None)?.history("greeter-1", None).await?;
    let signaled = history
        .events()
        .iter()
        .filter(|e| e.kind.name() == "WorkflowExecutionSignaled")
        .count();
    assert_eq!(signaled, 0, "no refused signal reached the run");
    let origin = url.clone();
    let (status, _, headers) = post_form(
        &signal,
        form,
        &[("sec-fetch-site", "same-origin"), ("origin", &origin)],
    )
    .await?;
    assert_eq!(status, 303, "the page's own form is accepted");
    assert!(headers.get("location").is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_download_is_the_canonical_json() -> anyhow::Result<()> {
    let app = App::start(None).await?;
    app.seed(None).await?;
    let url = app.server.url();
    let (status, body, headers) =
        get(&format!("{url}/run/history.json?id=greeter-1"), None).await?;
    assert_eq!(status, 200);
    assert!(
        headers
            .get("content-disposition")
            .context("a file name")?
            .to_str()?
            .starts_with("attachment")
    );
    let history = app.client(None)?.history("greeter-1", None).await?;
    assert_eq!(body, history.to_json());
    assert_eq!(History::from_json(&body)?.len(), history.len());
    Ok(())
}

/// `POST /api/v1/{method}` with a JSON body: the reply.
async fn api(
    url: &str,
    method: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let reply = reqwest::Client::new()
        .post(format!("{url}/api/v1/{method}"))
        .body(body.to_string())
        .send()
        .await?;
    anyhow::ensure!(reply.status().is_success(), "{method}: {}", reply.status());
    Ok(serde_json::from_slice(&reply.bytes().await?)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_received_while_a_workflow_task_runs_shows_as_buffered() -> anyhow::Result<()> {
    let app = App::start(None).await?;
    let url = app.server.url();
    let start = serde_json::json!({"workflow_id": "by-hand-1", "workflow_type": "greet",
        "task_queue": "by-hand", "input": "x", "request_id": "start-1"});
    api(&url, "StartWorkflow", start).await?;
    let poll = serde_json::json!({"task_queue": "by-hand", "identity": "a hand"});
    let task = api(&url, "PollWorkflowTask", poll).await?;
    assert!(
        task.to_string().contains("task_token"),
        "the task is taken: {task}"
    );
    let signal = serde_json::json!({"workflow_id": "by-hand-1", "signal_name": "approve",
        "input": "<b>early</b>", "request_id": "signal-1", "identity": "ops"});
    api(&url, "SignalWorkflow", signal).await?;
    let (status, page, _) = get(&format!("{url}/run?id=by-hand-1"), None).await?;
    assert_eq!(status, 200);
    assert!(page.contains("<h2>Buffered signals</h2>"), "{page}");
    assert!(
        page.contains("&quot;&lt;b&gt;early&lt;/b&gt;&quot;"),
        "the input, escaped"
    );
    let signaled = app.client(None)?.history("by-hand-1", None).await?;
    let in_history = signaled
        .events()
        .iter()
        .any(|e| e.kind.name() == "WorkflowExecutionSignaled");
    assert!(!in_history, "not in the history yet");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_answers_on_the_page_and_terminate_needs_its_confirmation() -> anyhow::Result<()> {
    let app = App::start(None).await?;
    app.seed(None).await?;
    let url = app.server.url();
    let own = [("sec-fetch-site", "same-origin"), ("origin", url.as_str())];
    let (status, page, _) = post_form(
        &format!("{url}/run/query"),
        "id=greeter-1&name=status&args=",
        &own,
    )
    .await?;
    assert_eq!(status, 200);
    assert!(
        page.contains("Query status answered: &quot;waiting&quot;"),
        "{page}"
    );
    let terminate = format!("{url}/run/terminate");
    let (_, page, _) = post_form(&terminate, "id=greeter-1&reason=tests", &own).await?;
    assert!(
        page.contains("tick the box to confirm the termination"),
        "{page}"
    );
    let client = app.client(None)?;
    let running = client.describe("greeter-1", None).await?.status;
    assert_eq!(
        running,
        retrace::env::RunStatus::Running,
        "not terminated unconfirmed"
    );
    let (status, _, _) =
        post_form(&terminate, "id=greeter-1&reason=tests&confirm=yes", &own).await?;
    assert_eq!(status, 303);
    let status = client.describe("greeter-1", None).await?.status;
    assert_eq!(status, retrace::env::RunStatus::Terminated);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_live_refresh_shows_the_run_completing_without_a_reload() -> anyhow::Result<()>
{
    let Some(browser) = Browser::installed() else {
        return Ok(());
    };
    let app = App::start(None).await?;
    app.seed(None).await?;
    let temp = tempfile::tempdir()?;
    let driver = Driver::start(&browser).await?;
    let page = driver
        .session(&browser, &temp.path().join("profile"), true)
        .await?;
    page.goto(&format!("{}/run?id=greeter-1", app.server.url()))
        .await?;
    wait_for_text(&page, "h1", "Running").await?;
    page.execute("window.notReloaded = true; return null")
        .await?;
    let client = app.client(None)?;
    client
        .signal("greeter-1", None, "approve", "from the API")
        .await?;
    wait_for_text(&page, "h1", "Completed").await?;
    wait_for_text(&page, "#result", "approved by from the API").await?;
    let same_page = page.execute("return window.notReloaded === true").await?;
    assert_eq!(same_page, true, "the page updated in place");
    assert_eq!(
        count(&page, "#actions").await?,
        0,
        "the actions went with the run"
    );
    page.close().await?;
    Ok(())
}

/// WebDriver's key codes.
const TAB: char = '\u{E004}';
const ENTER: char = '\u{E007}';
/// Tab presses a test allows to reach an element.
const TABS_MAX: usize = 60;

/// Presses Tab until the focused element matches `css`.
async fn tab_to(page: &Session, css: &str) -> anyhow::Result<()> {
    let script = format!("return document.activeElement.matches({css:?})");
    for _ in 0..TABS_MAX {
        page.press(TAB).await?;
        if page.execute(&script).await? == true {
            return Ok(());
        }
    }
    anyhow::bail!("{TABS_MAX} Tab presses never reached {css}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_the_keyboard_alone_opens_a_run_and_reaches_its_timeline_and_forms()
-> anyhow::Result<()> {
    let Some(browser) = Browser::installed() else {
        return Ok(());
    };
    let app = App::start(None).await?;
    app.seed(None).await?;
    let temp = tempfile::tempdir()?;
    let driver = Driver::start(&browser).await?;
    let page = driver
        .session(&browser, &temp.path().join("profile"), true)
        .await?;
    page.goto(&format!("{}/", app.server.url())).await?;
    tab_to(&page, "a.skip").await?;
    tab_to(&page, "td.id a[href*='id=greeter-1']").await?;
    page.press(ENTER).await?;
    wait_for_text(&page, "h1", "greeter-1").await?;
    tab_to(&page, "svg.timeline a").await?;
    let focused = page
        .execute("return document.activeElement.querySelector('title').textContent")
        .await?;
    let focused = focused.as_str().unwrap_or_default().to_string();
    assert!(!focused.is_empty(), "a focused bar says what it is");
    let detail = page.text(&page.find("#timeline-detail").await?).await?;
    assert_eq!(
        detail, focused,
        "the detail line shows the focused bar's event"
    );
    tab_to(&page, "#signal-name").await?;
    page.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_carry_a_policy_that_runs_only_the_uis_own_script_and_style() -> anyhow::Result<()> {
    let app = App::start(None).await?;
    let url = app.server.url();
    let (status, body, headers) = get(&format!("{url}/"), None).await?;
    assert_eq!(status, 200);
    let policy = headers
        .get("content-security-policy")
        .context("a policy")?
        .to_str()?;
    assert!(
        policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"),
        "{policy}"
    );
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert!(
        !body.contains("<script>") && !body.contains("<style>"),
        "no inline code: {body}"
    );
    for asset in ["/assets/retrace.css", "/assets/retrace.js"] {
        let (status, text, _) = get(&format!("{url}{asset}"), None).await?;
        assert_eq!(status, 200, "{asset}");
        assert!(!text.is_empty());
    }
    Ok(())
}
