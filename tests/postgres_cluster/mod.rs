//! A private PostgreSQL cluster for the tests (and the Postgres benchmarks):
//! `initdb` into a temporary directory, `pg_ctl start` on 127.0.0.1 at a free
//! port, `pg_ctl stop` when dropped. Nothing else on the machine is touched.
//! [`PgCluster::start_with_tls`] starts one with `ssl=on` and a certificate
//! the caller made.
//!
//! `initdb` refuses to run as root, so as root every Postgres command runs as
//! the machine's `postgres` user (`runuser -u postgres --`), in a directory
//! it owns. Where `initdb` and `pg_ctl` are not on `PATH` the Postgres tests
//! skip, saying so loudly on stderr; with `RETRACE_REQUIRE_POSTGRES=1` (set
//! by `.ci/run`) they fail instead.
// Tests drive real processes and wait on real time.
#![allow(clippy::disallowed_methods, dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// More server settings for the benchmarks' clusters (`-c name=value …`).
pub const SETTINGS_VARIABLE: &str = "RETRACE_BENCH_PG_SETTINGS";
/// Set to make a missing or broken Postgres a failure, not a skip.
pub const REQUIRE_VARIABLE: &str = "RETRACE_REQUIRE_POSTGRES";
/// Tries at a free port (another process may take the one picked).
const START_ATTEMPTS_MAX: u32 = 3;
/// How long `pg_ctl` waits for the server to start or stop, in seconds.
const PG_CTL_WAIT_S: u32 = 60;

/// A running private cluster; stopped (immediately) and deleted when dropped.
pub struct PgCluster {
    dir: tempfile::TempDir,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    schemas: AtomicUsize,
    /// Server settings of this cluster's own (`-c name=value …`).
    settings: String,
}

/// The shared cluster of this test process, started on first use; `None`
/// (after a loud message) where Postgres is not installed. A watchdog stops
/// it once the test process exits (statics are never dropped).
pub fn shared() -> Option<&'static PgCluster> {
    static SHARED: OnceLock<Option<PgCluster>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let cluster = PgCluster::start()?;
            cluster.stop_when_process_exits();
            Some(cluster)
        })
        .as_ref()
}

/// True if Postgres must be there (`RETRACE_REQUIRE_POSTGRES` set, not `0`).
pub fn required() -> bool {
    std::env::var(REQUIRE_VARIABLE).is_ok_and(|value| !value.is_empty() && value != "0")
}

/// Skips (loudly) or, if Postgres is required, panics with `reason`.
fn unavailable(reason: &str) -> Option<PgCluster> {
    if required() {
        panic!("{REQUIRE_VARIABLE} is set but Postgres cannot run here: {reason}");
    }
    static WARNED: OnceLock<()> = OnceLock::new();
    WARNED.get_or_init(|| {
        eprintln!(
            "\n*** POSTGRES TESTS SKIPPED: {reason}.\n*** Install PostgreSQL (initdb and \
             pg_ctl on PATH) to run them; {REQUIRE_VARIABLE}=1 makes this a failure.\n"
        );
    });
    None
}

/// The program's path if it is on `PATH`.
fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command for a Postgres program: as the `postgres` user when we are root.
fn pg_command(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Runs `command`; `Err` with its output if it fails.
fn run(mut command: Command) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("{command:?} did not start: {error}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// The uid and gid of the `postgres` user.
fn postgres_ids() -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
    let line = passwd
        .lines()
        .find(|line| line.starts_with("postgres:"))
        .ok_or("no postgres user in /etc/passwd (initdb refuses to run as root)")?;
    let fields: Vec<&str> = line.split(':').collect();
    let id = |index: usize| fields.get(index).and_then(|field| field.parse().ok());
    id(2)
        .zip(id(3))
        .ok_or_else(|| format!("bad /etc/passwd line {line:?}"))
}

/// Writes the server's certificate and key into `dir` (the key readable by
/// the server's user alone, as Postgres insists) and returns the settings
/// that turn TLS on with them.
fn tls_settings(dir: &Path, certificate_pem: &str, key_pem: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let (certificate, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&certificate, certificate_pem).expect("the certificate is written");
    std::fs::write(&key, key_pem).expect("the key is written");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .expect("the key's mode is set");
    if running_as_root() {
        let (uid, gid) = postgres_ids().expect("a postgres user (checked by the caller)");
        for file in [&certificate, &key] {
            std::os::unix::fs::chown(file, Some(uid), Some(gid))
                .expect("the certificate files can be given to postgres");
        }
    }
    format!(
        "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
        certificate.display(),
        key.display()
    )
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("an ephemeral port");
    listener.local_addr().unwrap().port()
}

impl PgCluster {
    /// `initdb` and start a cluster; `None` (after a loud message) if
    /// Postgres is not installed. Panics if it is but does not work.
    pub fn start() -> Option<PgCluster> {
        PgCluster::start_with(None)
    }

    /// As [`PgCluster::start`], with `ssl=on` and this certificate and key
    /// (PEM): it offers TLS, and still accepts connections in the clear.
    pub fn start_with_tls(certificate_pem: &str, key_pem: &str) -> Option<PgCluster> {
        PgCluster::start_with(Some((certificate_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Option<PgCluster> {
        let (Some(initdb), Some(_)) = (on_path("initdb"), on_path("pg_ctl")) else {
            return unavailable("initdb and pg_ctl are not on PATH");
        };
        let dir = tempfile::Builder::new()
            .prefix("retrace-pg-")
            .tempdir()
            .expect("a temporary directory");
        if running_as_root() {
            let (uid, gid) = match postgres_ids() {
                Ok(ids) => ids,
                Err(reason) => return unavailable(&reason),
            };
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("the cluster's directory can be given to postgres");
        }
        let mut command = pg_command(&initdb);
        command
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions", "-D"])
            .arg(dir.path().join("data"));
        if let Err(reason) = run(command) {
            panic!("initdb failed: {reason}");
        }
        let settings = match tls {
            Some((certificate, key)) => tls_settings(dir.path(), certificate, key),
            None => String::new(),
        };
        let mut cluster = PgCluster {
            dir,
            port: 0,
            schemas: AtomicUsize::new(0),
            settings,
        };
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS_MAX {
            cluster.port = free_port();
            match cluster.pg_ctl_start() {
                Ok(()) => return Some(cluster),
                Err(reason) => last_error = reason,
            }
        }
        panic!(
            "the private Postgres cluster did not start: {last_error}\n{}",
            cluster.log()
        );
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl(&self) -> Command {
        let pg_ctl = on_path("pg_ctl").expect("pg_ctl is on PATH");
        let mut command = pg_command(&pg_ctl);
        command.arg("-D").arg(self.data_dir());
        command
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let settings = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 \
             -c shared_buffers=64MB {} {}",
            self.port,
            self.dir.path().display(),
            self.settings,
            std::env::var(SETTINGS_VARIABLE).unwrap_or_default()
        );
        let mut command = self.pg_ctl();
        command
            .args([
                "-w",
                "-t",
                &PG_CTL_WAIT_S.to_string(),
                "-o",
                &settings,
                "-l",
            ])
            .arg(self.dir.path().join("postgres.log"))
            .arg("start");
        run(command)
    }

    /// Starts the cluster again (after [`PgCluster::stop_immediately`]).
    pub fn start_again(&self) {
        if let Err(reason) = self.pg_ctl_start() {
            panic!("Postgres did not start again: {reason}\n{}", self.log());
        }
    }

    /// `pg_ctl stop -m immediate`: every server process exits at once, as in
    /// a crash; the next start recovers from the WAL.
    pub fn stop_immediately(&self) {
        let mut command = self.pg_ctl();
        command.args(["-w", "-m", "immediate", "stop"]);
        if let Err(reason) = run(command) {
            panic!("Postgres did not stop: {reason}");
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// The URL of database `postgres` as user `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A new, empty schema, and a URL whose connections use it (`search_path`):
    /// a fresh, empty storage for each test.
    pub fn fresh_schema_url(&self) -> String {
        let index = self.schemas.fetch_add(1, Ordering::Relaxed);
        let schema = format!("test_{index}");
        self.execute(&format!("CREATE SCHEMA {schema}"));
        format!("{}?options=-csearch_path%3D{schema}", self.url())
    }

    /// Runs `sql` (one or more statements) in database `postgres`.
    pub fn execute(&self, sql: &str) {
        let url = self.url();
        let sql = sql.to_string();
        // Its own thread and runtime: callers may be inside another runtime.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
                let connection = tokio::spawn(connection);
                client
                    .batch_execute(&sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                drop(client);
                let _ = connection.await;
            });
        })
        .join()
        .expect("the SQL ran");
    }

    /// Stops the cluster and deletes its directory once this process exits,
    /// however it exits (for the shared cluster, which is never dropped).
    fn stop_when_process_exits(&self) {
        let pg_ctl = on_path("pg_ctl").expect("pg_ctl is on PATH");
        let as_postgres = if running_as_root() {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {as_postgres}{pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            pg_ctl = pg_ctl.display(),
            data = self.data_dir().display(),
            dir = self.dir.path().display(),
        );
        use std::os::unix::process::CommandExt;
        // Never waited for: it outlives this process, which is its purpose.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("the cluster's watchdog starts");
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let mut command = self.pg_ctl();
        command.args(["-w", "-m", "immediate", "stop"]);
        // Already stopped is fine: the directory goes either way.
        let _ = run(command);
    }
}
