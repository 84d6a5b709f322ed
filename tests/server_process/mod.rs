//! The real `retrace server` binary as a child process, for the CLI and crash
//! tests: on 127.0.0.1 only, on a port picked free, logging to a file.
// Tests drive real processes and wait on real time.
#![allow(clippy::disallowed_methods, dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use retrace::http::HttpNetwork;

/// The `retrace` binary built for these tests.
pub const RETRACE: &str = env!("CARGO_BIN_EXE_retrace");

/// How long a server may take to answer its health check after starting.
pub const READY_TIMEOUT_MS: u64 = 20_000;

/// A port nothing listens on right now (the OS's pick, released at once).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("an ephemeral port");
    listener.local_addr().unwrap().port()
}

/// A `retrace` command with a clean environment (no address or token leaks in).
pub fn retrace_command() -> Command {
    let mut command = Command::new(RETRACE);
    command
        .env_remove("RETRACE_TOKEN")
        .env_remove("RETRACE_ADDRESS")
        .env_remove("RUST_LOG");
    command
}

/// A running `retrace server`; killed when dropped.
pub struct ServerProcess {
    child: Option<Child>,
    /// The port it listens on.
    pub port: u16,
    /// Its log (stdout and stderr).
    pub log_path: PathBuf,
}

impl ServerProcess {
    /// Starts `retrace server --db <db> --listen 127.0.0.1:<port>`; does not wait.
    pub fn spawn(db: &Path, port: u16, log_path: &Path) -> ServerProcess {
        ServerProcess::spawn_with(db, port, log_path, &[])
    }

    /// As [`ServerProcess::spawn`], with more arguments for `retrace server`.
    pub fn spawn_with(db: &Path, port: u16, log_path: &Path, args: &[&str]) -> ServerProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap();
        let child = retrace_command()
            .args(["server", "--db"])
            .arg(db)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the retrace binary starts");
        ServerProcess {
            child: Some(child),
            port,
            log_path: log_path.to_path_buf(),
        }
    }

    /// Starts a server and waits until it answers.
    pub async fn start(db: &Path, port: u16, log_path: &Path) -> ServerProcess {
        ServerProcess::start_with(db, port, log_path, &[]).await
    }

    /// As [`ServerProcess::start`], with more arguments for `retrace server`.
    pub async fn start_with(db: &Path, port: u16, log_path: &Path, args: &[&str]) -> ServerProcess {
        let mut server = ServerProcess::spawn_with(db, port, log_path, args);
        server.wait_ready().await;
        server
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until `GET /healthz` answers; panics with the log if the server
    /// exits or takes too long.
    pub async fn wait_ready(&mut self) {
        let network = HttpNetwork::new(&self.url(), None).unwrap();
        let started = Instant::now();
        loop {
            if network.health().await.is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the server exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            let waited = started.elapsed();
            assert!(
                waited < Duration::from_millis(READY_TIMEOUT_MS),
                "server not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL: no shutdown code runs, as in a power cut of the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGINT (Ctrl-C); waits for the exit.
    pub fn interrupt(&mut self) -> ExitStatus {
        self.signal("-INT")
    }

    /// SIGTERM (as a service manager stops it); waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM")
    }

    fn signal(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().expect("the server is running");
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill {signal} works");
        child.wait().unwrap()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
