//! A small W3C WebDriver client over reqwest, driving headless Chromium
//! through chromedriver: just what the UI tests use.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::{Value, json};

/// The key W3C WebDriver gives an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How often chromedriver is asked whether it is up.
const STARTUP_POLL_MS: u64 = 50;
/// Tries before chromedriver is declared dead.
const STARTUP_POLLS_MAX: u32 = 400;

/// Where Chromium and chromedriver are, if installed.
pub struct Browser {
    pub chromium: PathBuf,
    pub chromedriver: PathBuf,
}

fn find(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    let dirs = std::env::var_os("PATH")?;
    std::env::split_paths(&dirs)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|path| path.is_file())
}

impl Browser {
    /// The installed browser; `None` (with a loud message) if there is none
    /// and RETRACE_REQUIRE_BROWSER is unset; a panic if it is set.
    pub fn installed() -> Option<Browser> {
        let chromium = find(
            "RETRACE_CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        );
        let chromedriver = find("RETRACE_CHROMEDRIVER", &["chromedriver"]);
        match (chromium, chromedriver) {
            (Some(chromium), Some(chromedriver)) => Some(Browser {
                chromium,
                chromedriver,
            }),
            _ if std::env::var_os("RETRACE_REQUIRE_BROWSER").is_some_and(|v| v == "1") => {
                panic!(
                    "RETRACE_REQUIRE_BROWSER=1 but chromium or chromedriver is not installed \
                        (apt-get install -y chromium chromium-driver)"
                )
            }
            _ => {
                // Written to the process's stderr, past the test harness's capture.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** SKIPPED: the Web UI browser tests need chromium and chromedriver \
                     (apt-get install -y chromium chromium-driver); set RETRACE_REQUIRE_BROWSER=1 \
                     to make their absence a failure ***\n"
                );
                None
            }
        }
    }
}

/// A running chromedriver; killed on drop.
pub struct Driver {
    process: Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Driver {
    pub async fn start(browser: &Browser) -> anyhow::Result<Driver> {
        let port = free_port()?;
        let process = Command::new(&browser.chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", browser.chromedriver.display()))?;
        let driver = Driver {
            process,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        for _ in 0..STARTUP_POLLS_MAX {
            let status = driver
                .http
                .get(format!("{}/status", driver.url))
                .send()
                .await;
            if let Ok(reply) = status {
                let body: Value = serde_json::from_slice(&reply.bytes().await?)?;
                if body["value"]["ready"] == true {
                    return Ok(driver);
                }
            }
            tokio::time::sleep(Duration::from_millis(STARTUP_POLL_MS)).await;
        }
        bail!("chromedriver did not come up on port {port}")
    }

    /// A new headless browser window of `width` x `height` pixels.
    pub async fn session(
        &self,
        browser: &Browser,
        profile: &Path,
        javascript: bool,
    ) -> anyhow::Result<Session> {
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--hide-scrollbars".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        if !javascript {
            args.push("--blink-settings=scriptEnabled=false".into());
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": browser.chromium, "args": args},
        }}});
        let reply = send(
            &self.http,
            reqwest::Method::POST,
            &format!("{}/session", self.url),
            Some(capabilities),
        )
        .await?;
        let id = reply["sessionId"]
            .as_str()
            .context("no session id")?
            .to_string();
        Ok(Session {
            http: self.http.clone(),
            base: format!("{}/session/{id}", self.url),
        })
    }
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let reply = request
        .send()
        .await
        .with_context(|| format!("webdriver {url}"))?;
    let status = reply.status();
    let body: Value = serde_json::from_slice(&reply.bytes().await?)?;
    if !status.is_success() {
        bail!("webdriver {url}: {status}: {}", body["value"]["message"]);
    }
    Ok(body["value"].clone())
}

/// One browser window.
pub struct Session {
    http: reqwest::Client,
    base: String,
}

/// An element of the page.
#[derive(Clone, Debug)]
pub struct Element(String);

impl Session {
    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        send(
            &self.http,
            reqwest::Method::POST,
            &format!("{}{path}", self.base),
            Some(body),
        )
        .await
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        send(
            &self.http,
            reqwest::Method::GET,
            &format!("{}{path}", self.base),
            None,
        )
        .await
    }

    pub async fn resize(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.post("/window/rect", json!({"width": width, "height": height}))
            .await?;
        Ok(())
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.post("/url", json!({"url": url})).await?;
        Ok(())
    }

    pub async fn current_url(&self) -> anyhow::Result<String> {
        Ok(self
            .get("/url")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    pub async fn find_all(&self, css: &str) -> anyhow::Result<Vec<Element>> {
        let found = self
            .post("/elements", json!({"using": "css selector", "value": css}))
            .await?;
        let list = found.as_array().cloned().unwrap_or_default();
        Ok(list
            .iter()
            .filter_map(|e| e[ELEMENT_KEY].as_str())
            .map(|id| Element(id.to_string()))
            .collect())
    }

    pub async fn find(&self, css: &str) -> anyhow::Result<Element> {
        let found = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await?;
        let id = found[ELEMENT_KEY]
            .as_str()
            .with_context(|| format!("no element {css}"))?;
        Ok(Element(id.to_string()))
    }

    pub async fn click(&self, element: &Element) -> anyhow::Result<()> {
        self.post(&format!("/element/{}/click", element.0), json!({}))
            .await?;
        Ok(())
    }

    pub async fn clear(&self, element: &Element) -> anyhow::Result<()> {
        self.post(&format!("/element/{}/clear", element.0), json!({}))
            .await?;
        Ok(())
    }

    pub async fn type_into(&self, element: &Element, text: &str) -> anyhow::Result<()> {
        self.post(
            &format!("/element/{}/value", element.0),
            json!({"text": text}),
        )
        .await?;
        Ok(())
    }

    pub async fn text(&self, element: &Element) -> anyhow::Result<String> {
        Ok(self
            .get(&format!("/element/{}/text", element.0))
            .await?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Presses and releases one key (a WebDriver key code: Tab is `\u{E004}`).
    pub async fn press(&self, key: char) -> anyhow::Result<()> {
        let key = key.to_string();
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]});
        self.post("/actions", actions).await?;
        Ok(())
    }

    /// Runs `script` in the page and returns what it returns.
    pub async fn execute(&self, script: &str) -> anyhow::Result<Value> {
        self.post("/execute/sync", json!({"script": script, "args": []}))
            .await
    }

    /// A PNG of the whole page (the window grown to the page's height first).
    pub async fn screenshot(&self, width: u32, path: &Path) -> anyhow::Result<()> {
        let height = self
            .execute("return document.documentElement.scrollHeight")
            .await?;
        let height = height.as_u64().unwrap_or(800).clamp(400, 4000) as u32;
        self.resize(width, height + 140).await?;
        let data = self.get("/screenshot").await?;
        let png =
            base64::engine::general_purpose::STANDARD.decode(data.as_str().unwrap_or_default())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    pub async fn close(self) -> anyhow::Result<()> {
        send(&self.http, reqwest::Method::DELETE, &self.base, None).await?;
        Ok(())
    }
}
