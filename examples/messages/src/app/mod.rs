//! The web app: a page on 127.0.0.1 that starts runs, shows their messages as
//! they arrive and sends `proceed`; the engine embedded over SQLite (or a
//! separate `retrace server`); a worker running the workflow and activities
//! against a SQLite message table and HTTP; and stand-ins of the two public
//! APIs, so it all works offline.
//!
//! ```no_run
//! # async fn demo() -> Result<(), retrace_messages::app::AppError> {
//! use retrace_messages::app::{App, AppConfig};
//! let app = App::start(AppConfig::default()).await?;
//! println!("open {}", app.url());
//! app.shutdown().await;
//! # Ok(()) }
//! ```

mod fetch;
mod stand_in;
mod store;
mod web;

pub use fetch::{FETCH_TIMEOUT_MS, HttpFetcher, RESPONSE_BYTES_MAX};
pub use stand_in::{MISBEHAVE_CALLS_MAX, Misbehaviour, StandIns};
pub use store::{MESSAGES_APPLICATION_ID, SqliteMessages};
pub use web::{RunView, WORKFLOW_ID_BYTES_MAX};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use retrace::api::ServiceError;
use retrace::client::Client;
use retrace::engine::{EmbeddedEngine, ServiceConfig};
use retrace::env::{Env, SqliteStorage, StorageError, Watch};
use retrace::http::{HttpConfig, HttpError, HttpNetwork, HttpServer};
use retrace::worker::{Worker, WorkerBuilder};
use tokio::sync::oneshot;

use crate::{FakeInspector, FetchJoke, FetchMessage, FetchPokemon, OrderOfMessages, VerifyMessage};

/// Where the page listens unless told otherwise.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8080";
/// How long shutdown lets requests in flight finish.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;

/// Why the app could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The message database cannot be used; nothing was written to it.
    #[error("message database {}: {reason}", path.display())]
    MessagesDb {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The engine's database cannot be used (the error names the file).
    #[error("engine database: {0}")]
    EngineDb(#[from] StorageError),
    /// The embedded service did not start.
    #[error("the embedded engine did not start: {0}")]
    Engine(#[from] ServiceError),
    /// `--server` is not usable.
    #[error("--server: {0}")]
    Server(#[from] HttpError),
    /// `--ui-listen` is not usable.
    #[error("--ui-listen: {0}")]
    Ui(HttpError),
    /// A fetch URL is not usable.
    #[error("--{flag} {url:?}: {reason}")]
    BadUrl {
        /// The flag.
        flag: &'static str,
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The page's address cannot be used.
    #[error("cannot listen on {address}: {reason}")]
    Listen {
        /// The address asked for.
        address: SocketAddr,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    HttpClient(String),
}

/// How to run the app (the binary's flags).
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// Address of the page and its API (loopback only).
    pub listen: SocketAddr,
    /// The embedded engine's SQLite file (histories); unused with `server`.
    pub db: PathBuf,
    /// The SQLite file holding the `messages` table (created and seeded if missing).
    pub messages_db: PathBuf,
    /// URL of a `retrace server` to use instead of the embedded engine.
    pub server: Option<String>,
    /// Bearer token for `server`.
    pub token: Option<String>,
    /// PokeAPI-shaped base URL (`{url}/{id}`); the app's stand-in if `None`.
    pub pokemon_url: Option<String>,
    /// Dad-joke-API-shaped URL; the app's stand-in if `None`.
    pub joke_url: Option<String>,
    /// The durable timer of each new run.
    pub sleep_ms: u64,
    /// Where to serve Retrace's Web UI (and API) for the embedded engine
    /// (loopback only); none if `None` or with `server`.
    pub ui_listen: Option<SocketAddr>,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            listen: LISTEN_DEFAULT.parse().expect("a valid address"),
            db: PathBuf::from("retrace-messages.db"),
            messages_db: PathBuf::from("messages.db"),
            server: None,
            token: None,
            pokemon_url: None,
            joke_url: None,
            sleep_ms: crate::SLEEP_MS_DEFAULT,
            ui_listen: None,
        }
    }
}

/// The running app.
pub struct App {
    address: SocketAddr,
    env: Env,
    worker: Worker,
    stop: Option<oneshot::Sender<()>>,
    stopped: Arc<Watch<bool>>,
    /// Retrace's Web UI for the embedded engine, if asked for.
    ui: Option<HttpServer>,
    // Held so the embedded service (and its SQLite file) lives as long as the app.
    _engine: Option<EmbeddedEngine>,
}

impl App {
    /// Opens the databases, starts the engine and the worker, and serves the
    /// page. Every startup problem is an [`AppError`] naming what was wrong.
    pub async fn start(config: AppConfig) -> Result<App, AppError> {
        check_config(&config)?;
        let store = SqliteMessages::open(&config.messages_db)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|error| listen_error(config.listen, &error))?;
        let address = listener
            .local_addr()
            .map_err(|error| listen_error(config.listen, &error))?;
        let (engine, env) = connect(&config).await?;
        let ui = match (&engine, config.ui_listen) {
            (Some(engine), Some(listen)) => Some(serve_ui(engine, listen).await?),
            _ => None,
        };
        let base = format!("http://{address}");
        let pokemon_url = config
            .pokemon_url
            .clone()
            .unwrap_or_else(|| format!("{base}{}", stand_in::POKEMON_PATH));
        let joke_url = config
            .joke_url
            .clone()
            .unwrap_or_else(|| format!("{base}{}", stand_in::JOKE_PATH));
        let fetcher = Arc::new(HttpFetcher::new()?);
        let worker = Worker::builder(env.clone(), crate::TASK_QUEUE);
        let worker = with_messages(worker, store.clone(), fetcher, &pokemon_url, &joke_url)
            .identity(&format!("retrace-messages@{address}"))
            .start();
        let state = web::AppState::new(Client::new(env.clone()), env.clone(), store, &config);
        let (stop, stopped) = serve(&env, listener, web::router(state));
        tracing::info!(%address, pokemon_url, joke_url, "serving the order-of-messages page");
        Ok(App {
            address,
            env,
            worker,
            stop: Some(stop),
            stopped,
            ui,
            _engine: engine,
        })
    }

    /// The Web UI's URL, if it is served.
    pub fn ui_url(&self) -> Option<String> {
        self.ui.as_ref().map(HttpServer::url)
    }

    /// The address the page is served on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The page's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops serving (requests in flight finish) and stops the worker.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let stopped = self.stopped.clone();
        let until_stopped = async move {
            let mut seen = stopped.version();
            while !stopped.get() {
                seen = stopped.changed_since(seen).await;
            }
        };
        let waited = self.env.timeout(SHUTDOWN_GRACE_MS, until_stopped).await;
        if waited.is_err() {
            tracing::warn!(
                "requests still in flight after {SHUTDOWN_GRACE_MS} ms; stopping anyway"
            );
        }
        self.worker.shutdown().await;
    }
}

/// Registers the workflow and its four activities on `builder`, backed by
/// `store`, `fetcher` and the [`FakeInspector`].
pub fn with_messages(
    builder: WorkerBuilder,
    store: SqliteMessages,
    fetcher: Arc<HttpFetcher>,
    pokemon_url: &str,
    joke_url: &str,
) -> WorkerBuilder {
    builder
        .workflow::<OrderOfMessages>()
        .activity(FetchMessage::new(store))
        .activity(VerifyMessage::new(FakeInspector))
        .activity(FetchPokemon::new(fetcher.clone(), pokemon_url))
        .activity(FetchJoke::new(fetcher, joke_url))
}

fn listen_error(address: SocketAddr, error: &std::io::Error) -> AppError {
    AppError::Listen {
        address,
        reason: error.to_string(),
    }
}

fn check_config(config: &AppConfig) -> Result<(), AppError> {
    if !config.listen.ip().is_loopback() {
        return Err(AppError::Listen {
            address: config.listen,
            reason: "the example has no authentication, so it serves loopback addresses only \
                     (127.0.0.1 or [::1])"
                .to_string(),
        });
    }
    if config.server.is_none() && config.db == config.messages_db {
        return Err(AppError::MessagesDb {
            path: config.messages_db.clone(),
            reason: "--messages-db must not be the engine's --db file".to_string(),
        });
    }
    let urls = [
        ("pokemon-url", &config.pokemon_url),
        ("joke-url", &config.joke_url),
    ];
    for (flag, url) in urls {
        if let Some(url) = url {
            fetch::check_url(flag, url)?;
        }
    }
    Ok(())
}

/// Serves the embedded engine's Web UI and API on `listen` (loopback: no token).
async fn serve_ui(engine: &EmbeddedEngine, listen: SocketAddr) -> Result<HttpServer, AppError> {
    let limits = ServiceConfig::default().limits;
    let server = HttpServer::start(engine.service().handler(), HttpConfig::new(listen, &limits))
        .await
        .map_err(AppError::Ui)?;
    tracing::info!(url = %server.url(), "serving Retrace's Web UI for the embedded engine");
    Ok(server)
}

/// The engine to talk to: embedded over `config.db`, or `config.server`.
async fn connect(config: &AppConfig) -> Result<(Option<EmbeddedEngine>, Env), AppError> {
    if let Some(url) = &config.server {
        let network = HttpNetwork::new(url, config.token.as_deref())?;
        if let Err(error) = network.health().await {
            tracing::warn!(%error, url, "the retrace server is not reachable yet; retrying");
        }
        return Ok((None, Env::tokio(Arc::new(network))));
    }
    let db = config.db.clone();
    let storage = tokio::task::spawn_blocking(move || SqliteStorage::open(db))
        .await
        .map_err(|error| StorageError::Io(format!("opening the engine database: {error}")))??;
    let engine = EmbeddedEngine::start(Arc::new(storage), ServiceConfig::default()).await?;
    let env = engine.env().clone();
    Ok((Some(engine), env))
}

/// Serves `router` on `listener` until the returned sender fires; the
/// receiver turns true once the server stopped.
fn serve(
    env: &Env,
    listener: tokio::net::TcpListener,
    router: axum::Router,
) -> (oneshot::Sender<()>, Arc<Watch<bool>>) {
    let (stop, stop_requested) = oneshot::channel::<()>();
    let stopped = Arc::new(Watch::new(false));
    let stopped_sender = stopped.clone();
    env.spawn("messages-http", async move {
        let shutdown = async {
            let _ = stop_requested.await;
        };
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the page's server failed");
        }
        stopped_sender.modify(|stopped| *stopped = true);
    });
    (stop, stopped)
}
