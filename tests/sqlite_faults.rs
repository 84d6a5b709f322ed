//! `SqliteStorage` under operator faults, with real faults (no hooks):
//!
//! | fault | how it is made | what must happen |
//! |---|---|---|
//! | commits fail (as on a full disk) | `RLIMIT_FSIZE` lowered under the WAL's size: SQLite's writes fail with `EFBIG` | the group gets `Timeout`, later writes are refused at once saying the storage is recovering, health and `/healthz` (503) say why; once the limit is raised the writer reopens by itself and writes again |
//! | the database file or its directory deleted, or the file replaced | `remove_dir_all`, `rename` | every later write refused, health and `/healthz` name the file, nothing acknowledged is lost to the deletion unseen |
//! | two servers on one file | `SqliteStorage::open` twice, `retrace server` twice | the second is refused naming the path, until the first is gone |
//!
//! `RLIMIT_FSIZE` is per process, so the tests of this file take one lock
//! each and never run at once, and the limit is held only around the failing
//! commit and the checks that follow (a few hundred milliseconds): while it
//! is, a test harness writing its output to a regular file (not a pipe)
//! would fail its writes too.
// Tests wait on real time and drive real processes.
#![allow(clippy::disallowed_methods)]

mod common;
mod server_process;

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use retrace::client::{Client, StartOptions};
use retrace::engine::{Service, ServiceConfig};
use retrace::env::{
    Env, RunRecord, RunStatus, SqliteStorage, Storage, StorageError, Unconnected, WriteBatch,
};
use retrace::history::{Event, EventKind, WorkflowExecutionSignaled};
use retrace::http::{HttpConfig, HttpNetwork, HttpServer};
use retrace::types::Timestamp;
use serde_json::{Value, json};
use server_process::{ServerProcess, free_port};

/// How long the writer may take to reopen once the fault is gone: its
/// backoff is at most 5 s, plus a margin for a loaded machine.
const RECOVERY_WAIT_MS_MAX: u64 = 15_000;
/// How fast a write must be refused while the writer is down.
const REFUSAL_MS_MAX: u64 = 500;

/// One test at a time: the file size limit is the whole process's.
static FAULTS: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    FAULTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn block_on<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    runtime.block_on(future)
}

/// Creates `run_id` with one event.
fn create(run_id: &str) -> WriteBatch {
    let kind = EventKind::WorkflowExecutionSignaled(WorkflowExecutionSignaled {
        signal_name: "poke".to_string(),
        input: json!({ "run_id": run_id }),
        identity: "test".to_string(),
    });
    let run = RunRecord {
        run_id: run_id.to_string(),
        workflow_id: format!("wf-{run_id}"),
        workflow_type: "sqlite-faults".to_string(),
        task_queue: "default".to_string(),
        status: RunStatus::Running,
        start_time: Timestamp(1_704_067_200_000),
        close_time: None,
        next_event_id: 2,
        version: 1,
        state: format!("state of {run_id}").into_bytes(),
        search_attributes: Default::default(),
    };
    let events = vec![Event::new(1, Timestamp(1_704_067_200_000), kind)];
    WriteBatch {
        fence: None,
        run,
        expected_version: None,
        events,
        claim: None,
        buffered: Default::default(),
        next_run: None,
    }
}

/// Makes every write to a regular file past `bytes` fail with `EFBIG` (for
/// this whole process) until dropped. SIGXFSZ, which would kill the process,
/// is ignored from the first use on.
struct FileSizeLimit {
    previous: libc::rlimit,
}

impl FileSizeLimit {
    fn set(bytes: u64) -> FileSizeLimit {
        // SAFETY: plain system calls on values owned here; ignoring SIGXFSZ
        // has no handler to race with.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let mut previous: libc::rlimit = std::mem::zeroed();
            assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut previous), 0);
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: previous.rlim_max,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
            FileSizeLimit { previous }
        }
    }
}

impl Drop for FileSizeLimit {
    fn drop(&mut self) {
        // SAFETY: restores the limit read in `set`.
        let restored = unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &self.previous) };
        assert_eq!(restored, 0, "the file size limit could not be restored");
    }
}

/// `write` must be refused as an `Io` error containing `needle`, at once.
async fn expect_refused(storage: &SqliteStorage, batch: WriteBatch, needle: &str) -> String {
    let started = Instant::now();
    let result = storage.write(batch).await;
    let waited = started.elapsed();
    let message = match result {
        Err(StorageError::Io(message)) => message,
        other => panic!("the write should be refused with Io ({needle:?}), got {other:?}"),
    };
    assert!(message.contains(needle), "{message}");
    assert!(
        waited < Duration::from_millis(REFUSAL_MS_MAX),
        "the refusal took {waited:?}"
    );
    message
}

/// Polls `health` until it is `Ok`; panics after `RECOVERY_WAIT_MS_MAX`.
async fn wait_healthy(health: impl Fn() -> Result<(), String>) {
    let started = Instant::now();
    while let Err(reason) = health() {
        assert!(
            started.elapsed() < Duration::from_millis(RECOVERY_WAIT_MS_MAX),
            "still unhealthy: {reason}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Makes the next commit fail for real: the writer's next WAL write past one
/// byte fails with `EFBIG` (SQLite: disk full or I/O error). Returns the
/// failed write's outcome, which must be `Timeout`.
async fn fail_a_commit(storage: &SqliteStorage, run_id: &str) -> FileSizeLimit {
    let limit = FileSizeLimit::set(1);
    let outcome = storage.write(create(run_id)).await;
    assert_eq!(
        outcome,
        Err(StorageError::Timeout),
        "a failed commit's outcome is unknown"
    );
    limit
}

#[test]
fn writer_refuses_writes_while_commits_fail_and_recovers_by_itself_once_they_work() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("retrace.db");
    let storage = SqliteStorage::open(&path).unwrap();
    block_on(async {
        storage.write(create("before")).await.unwrap();
        assert_eq!(storage.health(), Ok(()));
        let limit = fail_a_commit(&storage, "during").await;
        let message = expect_refused(&storage, create("refused"), "recovering").await;
        assert!(
            message.contains("storage is recovering after a failed commit")
                && message.contains("cannot commit"),
            "{message}"
        );
        let reason = storage
            .health()
            .expect_err("health must report the failed commit");
        assert!(
            reason.contains("recovering") && reason.contains("since"),
            "{reason}"
        );
        // Reopen attempts fail while the fault lasts (their probe commit fails).
        tokio::time::sleep(Duration::from_millis(400)).await;
        let reason = storage.health().expect_err("still failing");
        assert!(!reason.contains(" 0 reopen attempts failed"), "{reason}");
        expect_refused(&storage, create("refused-2"), "recovering").await;
        drop(limit);
        wait_healthy(|| storage.health()).await;
        storage.write(create("after")).await.unwrap();
        for run_id in ["before", "after"] {
            let run = storage.read_run(run_id).await.unwrap();
            assert_eq!(
                run,
                Some(create(run_id).run),
                "acknowledged run {run_id} lost"
            );
        }
        for run_id in ["refused", "refused-2"] {
            assert_eq!(
                storage.read_run(run_id).await,
                Ok(None),
                "a refused write landed"
            );
        }
    });
    drop(storage);
    // What was acknowledged survives a restart; the unknown outcome is settled one way.
    let reopened = SqliteStorage::open(&path).unwrap();
    block_on(async {
        for run_id in ["before", "after"] {
            assert!(reopened.read_run(run_id).await.unwrap().is_some());
        }
        let during = reopened.read_run("during").await.unwrap();
        assert!(during.is_none_or(|run| run == create("during").run));
    });
}

#[test]
fn deleting_the_database_directory_refuses_every_later_write_and_fails_health() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let path = data.join("retrace.db");
    let storage = SqliteStorage::open(&path).unwrap();
    block_on(async {
        storage.write(create("before")).await.unwrap();
        std::fs::remove_dir_all(&data).unwrap();
        let message = expect_refused(&storage, create("after-1"), "deleted or replaced").await;
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("restart the server"), "{message}");
        expect_refused(&storage, create("after-2"), "deleted or replaced").await;
        let reason = storage.health().expect_err("health must fail");
        assert!(reason.contains("deleted or replaced"), "{reason}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        expect_refused(&storage, create("after-3"), "deleted or replaced").await;
    });
    assert!(!data.exists(), "the storage made the directory again");
}

#[test]
fn replacing_the_database_file_refuses_writes_and_health_fails_without_a_write() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("retrace.db");
    let storage = SqliteStorage::open(&path).unwrap();
    block_on(async {
        storage.write(create("before")).await.unwrap();
        // A restore from backup: another file renamed over the path.
        let other = dir.path().join("restored.db");
        std::fs::copy(&path, &other).unwrap();
        std::fs::rename(&other, &path).unwrap();
        let reason = storage
            .health()
            .expect_err("health sees it without a write");
        assert!(reason.contains("now names another file"), "{reason}");
        expect_refused(&storage, create("after"), "deleted or replaced").await;
    });
}

#[test]
fn second_open_of_a_database_is_refused_until_the_first_is_dropped() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("retrace.db");
    let first = SqliteStorage::open(&path).unwrap();
    let clone = first.clone();
    match SqliteStorage::open(&path) {
        Err(StorageError::Io(message)) => {
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("another retrace server"), "{message}");
        }
        other => panic!("a second open should be refused, got {other:?}"),
    }
    drop(first);
    assert!(
        SqliteStorage::open(&path).is_err(),
        "a clone still holds the database"
    );
    drop(clone);
    let second = SqliteStorage::open(&path).expect("the lock is released on drop");
    block_on(second.write(create("second"))).unwrap();
}

/// `GET /healthz` on `url`: the status and the JSON body.
async fn healthz(url: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{url}/healthz")).await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

#[test]
fn healthz_answers_503_with_the_reason_while_commits_fail_and_200_once_they_work() {
    let _serial = serial();
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::open(dir.path().join("retrace.db")).unwrap();
    block_on(async {
        let config = ServiceConfig::default();
        let limits = config.limits;
        let env = Env::tokio(Arc::new(Unconnected));
        let service = Service::start(env, Arc::new(storage.clone()), config)
            .await
            .unwrap();
        let http = HttpConfig::new("127.0.0.1:0".parse().unwrap(), &limits);
        let server = HttpServer::start(service.handler(), http).await.unwrap();
        let url = server.url();
        assert_eq!(healthz(&url).await, (200, json!({ "status": "ok" })));
        let limit = fail_a_commit(&storage, "during").await;
        let (status, body) = healthz(&url).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["status"], "unhealthy");
        let reason = body["reason"].as_str().unwrap();
        assert!(
            reason.contains("recovering after a failed commit"),
            "{reason}"
        );
        drop(limit);
        let started = Instant::now();
        while healthz(&url).await.0 != 200 {
            assert!(started.elapsed() < Duration::from_millis(RECOVERY_WAIT_MS_MAX));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(healthz(&url).await, (200, json!({ "status": "ok" })));
    });
}

/// A client that tries each call once, so a refusal comes back at once.
fn client(url: &str) -> Client {
    let network = HttpNetwork::new(url, None).unwrap();
    Client::new(Env::tokio(Arc::new(network))).with_call_attempts_max(1)
}

async fn start(client: &Client, workflow_id: &str) -> Result<String, String> {
    client
        .start_by_name(StartOptions::new(workflow_id, "q"), "any", json!(null))
        .await
        .map_err(|error| error.to_string())
}

#[test]
fn retrace_server_whose_database_directory_is_deleted_refuses_starts_and_fails_healthz() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let db = data.join("retrace.db");
    block_on(async {
        let log = dir.path().join("server.log");
        let server = ServerProcess::start(&db, free_port(), &log).await;
        let client = client(&server.url());
        start(&client, "before").await.unwrap();
        std::fs::remove_dir_all(&data).unwrap();
        let (status, body) = healthz(&server.url()).await;
        assert_eq!(status, 503, "{body}");
        let reason = body["reason"].as_str().unwrap();
        assert!(reason.contains("deleted or replaced"), "{reason}");
        assert!(reason.contains(&db.display().to_string()), "{reason}");
        // Refused by the read before the write (SQLite's readers fail on the
        // deleted files) or by the write itself: never acknowledged.
        let refused = start(&client, "after")
            .await
            .expect_err("no write is acknowledged");
        assert!(refused.contains("Unavailable: storage:"), "{refused}");
        assert!(server.log().contains("the database file is lost"));
    });
}

#[test]
fn second_retrace_server_on_the_same_database_exits_naming_the_path() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("retrace.db");
    block_on(async {
        let first_log = dir.path().join("first.log");
        let _first = ServerProcess::start(&db, free_port(), &first_log).await;
        let second_log = dir.path().join("second.log");
        let mut second = server_process::retrace_command()
            .args(["server", "--db"])
            .arg(&db)
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&second_log).unwrap())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = second.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_millis(server_process::READY_TIMEOUT_MS) {
                let _ = second.kill();
                let _ = second.wait();
                panic!("the second server is running on the same database");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(!status.success(), "the second server started");
        let stderr = std::fs::read_to_string(&second_log).unwrap();
        assert!(stderr.contains("another retrace server"), "{stderr}");
        assert!(stderr.contains(&db.display().to_string()), "{stderr}");
    });
}
