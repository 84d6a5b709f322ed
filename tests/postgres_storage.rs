//! What only `PostgresStorage` must do, beyond the conformance suite: refuse
//! schemas it must not touch (and leave them untouched), migrate once when
//! two servers open a fresh schema, answer a connection dropped mid-commit as
//! an ambiguous write (`Timeout`), give clear retryable errors when the pool
//! is exhausted or a call takes too long, ride through a restart of
//! Postgres, and have `/healthz` follow Postgres down and up again with no
//! other request; and use TLS as the URL's `sslmode` says, against a cluster
//! started with `ssl=on` and certificates made here (`rcgen`). Each test uses
//! a private cluster of `tests/postgres_cluster/` (skipped, loudly, where
//! Postgres is not installed).
// Tests drive real processes and sockets.
#![allow(clippy::disallowed_methods)]

mod postgres_cluster;

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use postgres_cluster::PgCluster;
use retrace::engine::{Service, ServiceConfig};
use retrace::env::{
    Env, PostgresOptions, PostgresStats, PostgresStorage, RunRecord, RunStatus, Storage,
    StorageError, Unconnected, WorkflowIdClaim, WriteBatch,
};
use retrace::history::{Event, EventKind, WorkflowExecutionSignaled};
use retrace::http::{HttpConfig, HttpServer};
use retrace::types::Timestamp;
use serde_json::json;

fn block_on<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    runtime.block_on(future)
}

/// Creates `run_id` with one event and claims `wf-{run_id}`.
fn create(run_id: &str) -> WriteBatch {
    let kind = EventKind::WorkflowExecutionSignaled(WorkflowExecutionSignaled {
        signal_name: "poke".to_string(),
        input: json!({ "run_id": run_id }),
        identity: "test".to_string(),
    });
    let run = RunRecord {
        run_id: run_id.to_string(),
        workflow_id: format!("wf-{run_id}"),
        workflow_type: "postgres-test".to_string(),
        task_queue: "default".to_string(),
        status: RunStatus::Running,
        start_time: Timestamp(1_704_067_200_000),
        close_time: None,
        next_event_id: 2,
        version: 1,
        state: format!("state of {run_id}").into_bytes(),
        search_attributes: Default::default(),
    };
    let claim = WorkflowIdClaim {
        workflow_id: run.workflow_id.clone(),
        previous_run_id: None,
    };
    WriteBatch {
        fence: None,
        run,
        expected_version: None,
        events: vec![Event::new(1, Timestamp(1_704_067_200_001), kind)],
        claim: Some(claim),
        buffered: Default::default(),
        next_run: None,
    }
}

/// The error text of a refused connect.
async fn refused(url: &str) -> String {
    match PostgresStorage::connect(url).await {
        Ok(_) => panic!("{url} opened, but must be refused"),
        Err(StorageError::Io(message)) => message,
        Err(other) => panic!("expected an Io error, got {other:?}"),
    }
}

/// The schema's URL from a `fresh_schema_url`.
fn schema_of(url: &str) -> &str {
    url.rsplit("%3D").next().expect("the URL names a schema")
}

#[test]
fn a_schema_from_a_newer_build_is_refused_untouched() {
    let Some(cluster) = postgres_cluster::shared() else {
        return;
    };
    let url = cluster.fresh_schema_url();
    let schema = schema_of(&url);
    block_on(async {
        let storage = PostgresStorage::connect(&url)
            .await
            .expect("a fresh schema opens");
        storage
            .write(create("run-a"))
            .await
            .expect("the write lands");
    });
    let newer = PostgresStorage::SCHEMA_VERSION + 1;
    cluster.execute(&format!(
        "UPDATE {schema}.retrace_schema SET version = {newer}"
    ));
    let message = block_on(refused(&url));
    assert!(
        message.contains(&format!(
            "schema version {newer}, newer than this build supports"
        )),
        "{message}"
    );
    assert!(message.contains("upgrade retrace"), "{message}");
    // Untouched: still the newer version, the run still there.
    cluster.execute(&format!(
        "DO $$ BEGIN IF (SELECT version FROM {schema}.retrace_schema) <> {newer} \
         OR (SELECT count(*) FROM {schema}.runs) <> 1 THEN RAISE 'touched'; END IF; END $$"
    ));
}

#[test]
fn a_schema_of_another_program_is_refused_untouched() {
    let Some(cluster) = postgres_cluster::shared() else {
        return;
    };
    let url = cluster.fresh_schema_url();
    let schema = schema_of(&url);
    cluster.execute(&format!(
        "CREATE TABLE {schema}.orders (id INT PRIMARY KEY)"
    ));
    let message = block_on(refused(&url));
    assert!(
        message.contains("has tables but no retrace schema version"),
        "{message}"
    );
    assert!(
        message.contains("127.0.0.1"),
        "names the database: {message}"
    );
    assert!(!message.contains("password"), "{message}");
    let marked = cluster.fresh_schema_url();
    let schema = schema_of(&marked);
    cluster.execute(&format!(
        "CREATE TABLE {schema}.retrace_schema (application TEXT, version INT); \
         INSERT INTO {schema}.retrace_schema VALUES ('billing', 1)"
    ));
    let message = block_on(refused(&marked));
    assert!(message.contains("belongs to \"billing\""), "{message}");
    cluster.execute(&format!(
        "DO $$ BEGIN IF to_regclass('{schema}.runs') IS NOT NULL THEN RAISE 'touched'; \
         END IF; END $$"
    ));
}

#[test]
fn a_second_server_on_the_same_schema_is_refused_until_the_first_is_gone() {
    let Some(cluster) = postgres_cluster::shared() else {
        return;
    };
    let url = cluster.fresh_schema_url();
    let impatient = PostgresOptions {
        server_lock_wait_ms_max: 200,
        ..PostgresOptions::default()
    };
    block_on(async {
        let (first, second) = tokio::join!(
            PostgresStorage::connect_with(&url, impatient),
            PostgresStorage::connect_with(&url, impatient)
        );
        let (first, refused) = match (first, second) {
            (Ok(first), Err(refused)) | (Err(refused), Ok(first)) => (first, refused),
            other => panic!("exactly one of two servers opens a schema: {other:?}"),
        };
        let StorageError::Io(message) = refused else {
            panic!("expected Io, got {refused:?}")
        };
        assert!(
            message.contains("another retrace server holds this database"),
            "{message}"
        );
        first.write(create("run-a")).await.expect("the write lands");
        // Another schema of the same database is another instance: it opens.
        let other = PostgresStorage::connect(&cluster.fresh_schema_url()).await;
        other.expect("another schema opens beside it");
        drop(first);
        // Once the first is gone the lock is released (when Postgres sees its
        // connection close); the default wait covers that.
        let second = PostgresStorage::connect(&url)
            .await
            .expect("the schema opens again");
        let read = second.read_run("run-a").await.expect("the read works");
        assert_eq!(read.map(|run| run.version), Some(1));
    });
}

/// A TCP proxy in front of Postgres that, once armed, cuts the connection
/// that sends `COMMIT`: after passing it on (`forward`: the server commits)
/// or before (it does not). Either way the client never hears the answer.
struct CommitCutter {
    port: u16,
    armed: Arc<AtomicBool>,
}

impl CommitCutter {
    fn start(postgres_port: u16, forward: bool) -> CommitCutter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let armed_in = armed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let server = TcpStream::connect(("127.0.0.1", postgres_port)).expect("Postgres");
                let muted = Arc::new(AtomicBool::new(false));
                let (client_out, server_in) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let muted_in = muted.clone();
                std::thread::spawn(move || relay_answers(server_in, client_out, &muted_in));
                let armed = armed_in.clone();
                std::thread::spawn(move || relay_cutting(client, server, &armed, &muted, forward));
            }
        });
        CommitCutter { port, armed }
    }
}

/// Copies server to client; once `muted`, the next answer (the commit's)
/// is dropped and both sides are cut: the client hears nothing of it.
fn relay_answers(mut server: TcpStream, mut client: TcpStream, muted: &AtomicBool) {
    let mut buffer = vec![0u8; 64 * 1024];
    while let Ok(read) = server.read(&mut buffer) {
        if read == 0 || muted.load(Ordering::SeqCst) {
            break;
        }
        if client.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// Copies client to server until an armed proxy sees `COMMIT`: then it
/// passes the `COMMIT` on (`forward`) and mutes the answers, so the client
/// is cut off only once the server has committed; or it cuts both sides at
/// once, and the server rolls back.
fn relay_cutting(
    mut client: TcpStream,
    mut server: TcpStream,
    armed: &AtomicBool,
    muted: &AtomicBool,
    forward: bool,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    while let Ok(read) = client.read(&mut buffer) {
        if read == 0 {
            break;
        }
        let chunk = &buffer[..read];
        let commits = chunk.windows(7).any(|window| window == b"COMMIT\0");
        if commits && armed.swap(false, Ordering::SeqCst) {
            if forward {
                muted.store(true, Ordering::SeqCst);
                server.write_all(chunk).expect("the COMMIT is passed on");
                return; // `relay_answers` cuts both sides after the answer.
            }
            break;
        }
        if server.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// A write whose connection drops once `COMMIT` is sent (or about to be) is
/// answered `Timeout`; the storage then works on, and a read tells whether it
/// committed.
fn dropped_commit_is_ambiguous(forward: bool) {
    let Some(cluster) = postgres_cluster::shared() else {
        return;
    };
    let direct = cluster.fresh_schema_url();
    let cutter = CommitCutter::start(cluster.port, forward);
    let url = direct.replace(
        &format!(":{}/", cluster.port),
        &format!(":{}/", cutter.port),
    );
    block_on(async {
        let storage = PostgresStorage::connect(&url)
            .await
            .expect("it opens through the proxy");
        cutter.armed.store(true, Ordering::SeqCst);
        let outcome = storage.write(create("run-a")).await;
        assert_eq!(
            outcome,
            Err(StorageError::Timeout),
            "a commit cut off is ambiguous"
        );
        assert_eq!(storage.stats().writes_ambiguous, 1);
        let stored = storage
            .read_run("run-a")
            .await
            .expect("the storage works on");
        assert_eq!(
            stored.is_some(),
            forward,
            "committed exactly when COMMIT reached the server"
        );
        storage
            .write(create("run-b"))
            .await
            .expect("later writes land");
    });
}

#[test]
fn a_connection_dropped_after_commit_was_sent_is_a_timeout_and_the_write_landed() {
    dropped_commit_is_ambiguous(true);
}

#[test]
fn a_connection_dropped_before_commit_arrived_is_a_timeout_and_nothing_landed() {
    dropped_commit_is_ambiguous(false);
}

/// Holds the row of `run_id` locked from another session until dropped.
struct RowLock {
    release: std::sync::mpsc::Sender<()>,
    done: std::thread::JoinHandle<()>,
}

fn lock_row(cluster: &PgCluster, url: &str, run_id: &str) -> RowLock {
    let (url, run_id) = (url.to_string(), run_id.to_string());
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let _ = cluster;
    let done = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connects");
            tokio::spawn(connection);
            client.batch_execute("BEGIN").await.unwrap();
            client
                .execute(
                    "SELECT 1 FROM runs WHERE run_id = $1 FOR UPDATE",
                    &[&run_id],
                )
                .await
                .unwrap();
            locked_tx.send(()).unwrap();
            let _ = tokio::task::spawn_blocking(move || release_rx.recv()).await;
            client.batch_execute("ROLLBACK").await.unwrap();
        });
    });
    locked_rx.recv().expect("the row is locked");
    RowLock { release, done }
}

impl RowLock {
    fn release(self) {
        let _ = self.release.send(());
        self.done.join().expect("the lock holder ends");
    }
}

#[test]
fn a_write_that_takes_too_long_is_refused_as_retryable_and_writes_nothing() {
    let Some(cluster) = postgres_cluster::shared() else {
        return;
    };
    let url = cluster.fresh_schema_url();
    let options = PostgresOptions {
        operation_ms_max: 300,
        ..PostgresOptions::default()
    };
    block_on(async {
        let storage = PostgresStorage::connect_with(&url, options)
            .await
            .expect("it opens");
        storage
            .write(create("run-a"))
            .await
            .expect("the write lands");
        let stored = storage.read_run("run-a").await.unwrap().unwrap();
        let lock = lock_row(cluster, &url, "run-a");
        let mut update = create("run-a");
        update.run.version = 2;
        update.expected_version = Some(1);
        update.events.clear();
        update.run.next_event_id = 2;
        update.claim = None;
        // Blocked on the row lock, before COMMIT: nothing committed, so Io.
        match storage.write(update.clone()).await {
            Err(StorageError::Io(message)) => {
                assert!(
                    message.contains("nothing was committed")
                        || message.contains("statement timeout"),
                    "{message}"
                )
            }
            other => panic!("expected Io, got {other:?}"),
        }
        lock.release();
        assert_eq!(storage.read_run("run-a").await.unwrap(), Some(stored));
        storage
            .write(update)
            .await
            .expect("the same write lands once the lock is gone");
    });
}

/// Returns once some session waits for a lock.
async fn wait_for_a_lock_waiter(cluster: &PgCluster) {
    let (client, connection) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
        .await
        .expect("connects");
    tokio::spawn(connection);
    loop {
        let row = client
            .query_one("SELECT count(*) FROM pg_locks WHERE NOT granted", &[])
            .await
            .expect("pg_locks reads");
        if row.get::<_, i64>(0) > 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
}

#[test]
fn an_exhausted_pool_gives_a_clear_retryable_error() {
    let Some(cluster) = postgres_cluster::shared() else {
        return;
    };
    let url = cluster.fresh_schema_url();
    let options = PostgresOptions {
        pool_size_max: 1,
        writer_count: 1,
        pool_wait_ms_max: 100,
        ..PostgresOptions::default()
    };
    block_on(async {
        let storage = PostgresStorage::connect_with(&url, options)
            .await
            .expect("it opens");
        storage
            .write(create("run-a"))
            .await
            .expect("the write lands");
        let lock = lock_row(cluster, &url, "run-a");
        let mut update = create("run-a");
        update.run.version = 2;
        update.expected_version = Some(1);
        update.events.clear();
        update.claim = None;
        // Takes the only connection and waits on the lock.
        let blocked = storage.write(update);
        let read = async {
            // Once the blocked write waits on the lock, it holds the connection.
            wait_for_a_lock_waiter(cluster).await;
            storage.read_run("run-a").await
        };
        let mut blocked = Box::pin(blocked);
        let read = tokio::select! {
            read = read => read,
            _ = &mut blocked => panic!("the write finished while the row was locked"),
        };
        lock.release();
        blocked
            .await
            .expect("the write lands once the lock is gone");
        match read {
            Err(StorageError::Io(message)) => {
                assert!(
                    message.contains("all 1 connections of the pool are busy"),
                    "{message}"
                );
                assert!(message.contains("retry"), "{message}");
            }
            other => panic!("expected Io for an exhausted pool, got {other:?}"),
        }
    });
}

#[test]
fn the_storage_rides_through_a_postgres_restart() {
    // A cluster of its own: this test restarts it.
    let Some(cluster) = PgCluster::start() else {
        return;
    };
    let url = cluster.url();
    block_on(async {
        let storage = PostgresStorage::connect(&url).await.expect("it opens");
        storage
            .write(create("run-a"))
            .await
            .expect("the write lands");
        tokio::task::block_in_place(|| cluster.stop_immediately());
        match storage.write(create("run-b")).await {
            Err(StorageError::Io(_) | StorageError::Timeout) => {}
            other => panic!("a write while Postgres is down must fail retryably: {other:?}"),
        }
        let health = storage.health().expect_err("health says Postgres is down");
        assert!(health.contains("cannot reach Postgres"), "{health}");
        tokio::task::block_in_place(|| cluster.start_again());
        // The pooled connections died with the server; new ones are opened.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match storage.write(create("run-b")).await {
                Ok(()) => break,
                Err(error) if attempts < 3 => eprintln!("retrying after: {error}"),
                Err(error) => panic!("writes work again after the restart: {error}"),
            }
        }
        assert!(
            storage.read_run("run-a").await.unwrap().is_some(),
            "nothing lost"
        );
        assert_eq!(storage.health(), Ok(()));
    });
}

/// Writes `count` runs at once; returns the counters.
fn write_concurrently(url: &str, options: PostgresOptions, count: usize) -> PostgresStats {
    block_on(async {
        let storage = PostgresStorage::connect_with(url, options)
            .await
            .expect("it opens");
        let batches: Vec<WriteBatch> = (0..count).map(|i| create(&format!("run-{i}"))).collect();
        let writes = batches.iter().map(|batch| storage.write(batch.clone()));
        for result in futures::future::join_all(writes).await {
            result.expect("every write lands");
        }
        assert_eq!(storage.list_runs(all_runs()).await.unwrap().len(), count);
        storage.stats()
    })
}

fn all_runs() -> retrace::env::ListQuery {
    retrace::env::ListQuery {
        limit: 10_000,
        ..Default::default()
    }
}

/// `run_id` from `expected` to the next version, with one event, `event_id`.
fn update(run_id: &str, expected: u64, event_id: u64) -> WriteBatch {
    let mut batch = create(run_id);
    let kind = batch.events[0].kind.clone();
    batch.expected_version = Some(expected);
    batch.run.version = expected + 1;
    batch.events = vec![Event::new(event_id, Timestamp(1_704_067_200_002), kind)];
    batch.run.next_event_id = event_id + 1;
    batch.claim = None;
    batch
}

#[test]
fn writes_as_expected_take_the_fast_path_and_the_others_get_the_careful_paths_answers() {
    let Some(cluster) = postgres_cluster::shared() else {
        return;
    };
    let url = cluster.fresh_schema_url();
    block_on(async {
        let storage = PostgresStorage::connect(&url).await.expect("it opens");
        storage.write(create("run-a")).await.expect("created");
        storage.write(update("run-a", 1, 2)).await.expect("updated");
        let stats = storage.stats();
        assert_eq!((stats.batches_written, stats.batches_alone), (2, 0));
        // Stale: Postgres finds version 2, not 1.
        let stale = storage.write(update("run-a", 1, 2)).await;
        let conflict = StorageError::VersionConflict {
            run_id: "run-a".to_string(),
            expected: Some(1),
            found: Some(2),
        };
        assert_eq!(stale, Err(conflict));
        // Consistent in itself, but the stored run's next event is 3, not 4.
        match storage.write(update("run-a", 2, 4)).await {
            Err(StorageError::BadBatch { reason, .. }) => {
                assert_eq!(reason, "event 4 should have id 3")
            }
            other => panic!("expected BadBatch, got {other:?}"),
        }
        // A creation of a stored run, and a claim of a held workflow id.
        let created_again = storage.write(create("run-a")).await;
        let conflict = StorageError::VersionConflict {
            run_id: "run-a".to_string(),
            expected: None,
            found: Some(2),
        };
        assert_eq!(created_again, Err(conflict));
        let mut taker = create("run-b");
        taker.claim.as_mut().unwrap().workflow_id = "wf-run-a".to_string();
        taker.run.workflow_id = "wf-run-a".to_string();
        match storage.write(taker).await {
            Err(StorageError::WorkflowIdConflict { current, .. }) => {
                assert_eq!(current.as_deref(), Some("run-a"))
            }
            other => panic!("expected WorkflowIdConflict, got {other:?}"),
        }
        assert_eq!(storage.stats().batches_alone, 4, "each refused, then alone");
        assert_eq!(storage.stats().batches_written, 2, "nothing more landed");
        let stored = storage.read_run("run-a").await.unwrap().unwrap();
        assert_eq!(stored.version, 2);
        assert_eq!(storage.read_run("run-b").await.unwrap(), None);
    });
}

#[test]
fn concurrent_writes_are_committed_in_groups_bounded_by_group_commit_batches_max() {
    let Some(cluster) = postgres_cluster::shared() else {
        return;
    };
    let grouped = write_concurrently(&cluster.fresh_schema_url(), PostgresOptions::default(), 50);
    assert_eq!(grouped.batches_written, 50);
    assert!(grouped.commits < 50, "nothing was grouped: {grouped:?}");
    let one_batch = PostgresOptions {
        group_commit_batches_max: 1,
        ..PostgresOptions::default()
    };
    let alone = write_concurrently(&cluster.fresh_schema_url(), one_batch, 50);
    assert_eq!((alone.commits, alone.batches_written), (50, 50));
}

#[test]
fn a_search_path_naming_no_schema_is_refused_with_a_clear_error() {
    let Some(cluster) = postgres_cluster::shared() else {
        return;
    };
    let url = format!("{}?options=-csearch_path%3Dnowhere", cluster.url());
    let message = block_on(refused(&url));
    assert!(
        message.contains("no schema on the search_path (nowhere) exists"),
        "{message}"
    );
}

#[test]
fn require_against_a_server_without_tls_is_refused_saying_the_server_does_not_offer_it() {
    let Some(cluster) = postgres_cluster::shared() else {
        return;
    };
    for mode in ["require", "verify-ca", "verify-full"] {
        let url = format!("{}?sslmode={mode}", cluster.url());
        let message = block_on(refused(&url));
        assert!(
            message.contains(&format!(
                "the server does not offer TLS, and sslmode={mode} requires it"
            )),
            "{message}"
        );
        assert!(
            message.contains("127.0.0.1"),
            "names the database: {message}"
        );
    }
}

#[test]
fn an_unknown_sslmode_is_refused_naming_the_modes() {
    let Some(cluster) = postgres_cluster::shared() else {
        return;
    };
    let message = block_on(refused(&format!("{}?sslmode=allow", cluster.url())));
    assert!(
        message.contains(
            "sslmode=\"allow\" is not one of disable, prefer, require, verify-ca, verify-full"
        ),
        "{message}"
    );
}

/// A CA named `ca_name`, and a server certificate it signed for `names`
/// (PEM: the CA's certificate, the server's certificate and key).
fn certificates(ca_name: &str, names: &[&str]) -> (String, String, String) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_certificate = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let server = rcgen::CertificateParams::new(names).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_certificate = server.signed_by(&server_key, &issuer).unwrap();
    (
        ca_certificate.pem(),
        server_certificate.pem(),
        server_key.serialize_pem(),
    )
}

/// A cluster offering TLS with a certificate for `names`, and the file
/// holding its CA's certificate.
fn tls_cluster(names: &[&str]) -> Option<(PgCluster, tempfile::TempDir, String)> {
    let (ca, certificate, key) = certificates("retrace test CA", names);
    let cluster = PgCluster::start_with_tls(&certificate, &key)?;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca).unwrap();
    let ca_path = ca_path.display().to_string();
    Some((cluster, dir, ca_path))
}

/// A role of its own with a schema of its own on `cluster`, so its
/// connections can be told apart; the URL connects as it.
fn role_url(cluster: &PgCluster, role: &str) -> String {
    cluster.execute(&format!(
        "CREATE ROLE {role} LOGIN SUPERUSER; CREATE SCHEMA {role} AUTHORIZATION {role}"
    ));
    format!(
        "postgres://{role}@127.0.0.1:{}/postgres?options=-csearch_path%3D{role}",
        cluster.port
    )
}

/// The open connections of `role`: how many, and how many use TLS
/// (`pg_stat_ssl`, as the server sees them).
async fn connections_of(cluster: &PgCluster, role: &str) -> (i64, i64) {
    let (client, connection) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
        .await
        .expect("connects");
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.usename = $1",
            &[&role],
        )
        .await
        .expect("pg_stat_ssl reads");
    (row.get(0), row.get(1))
}

/// Opens `url`, writes a run and reads it back; returns the role's
/// connections (all, over TLS) while the storage is open.
async fn write_and_read(cluster: &PgCluster, url: &str, role: &str) -> (i64, i64) {
    let storage = PostgresStorage::connect(url).await.expect("it opens");
    storage
        .write(create("run-a"))
        .await
        .expect("the write lands");
    let run = storage
        .read_run("run-a")
        .await
        .unwrap()
        .expect("it reads back");
    assert_eq!(run, create("run-a").run);
    connections_of(cluster, role).await
}

#[test]
fn over_verify_full_every_connection_is_encrypted_and_writes_and_reads_work() {
    let Some((cluster, _dir, ca)) = tls_cluster(&["localhost", "127.0.0.1"]) else {
        return;
    };
    let url = role_url(&cluster, "verified");
    let url = format!("{url}&sslmode=verify-full&sslrootcert={ca}");
    let (all, encrypted) = block_on(write_and_read(&cluster, &url, "verified"));
    // The server lock's and the pool's (and the health check's, once it ran).
    assert!(all >= 2, "{all} connections");
    assert_eq!(encrypted, all, "every connection uses TLS");
}

#[test]
fn prefer_the_default_and_require_encrypt_without_checking_the_certificate_and_disable_does_not() {
    let Some((cluster, _dir, _ca)) = tls_cluster(&["localhost", "127.0.0.1"]) else {
        return;
    };
    // No sslmode: prefer. The CA is in no root store, and that is not checked.
    let url = role_url(&cluster, "preferring");
    let (all, encrypted) = block_on(write_and_read(&cluster, &url, "preferring"));
    assert!(all >= 2 && encrypted == all, "{encrypted} of {all} use TLS");
    let url = role_url(&cluster, "requiring");
    let url = format!("{url}&sslmode=require");
    let (all, encrypted) = block_on(write_and_read(&cluster, &url, "requiring"));
    assert!(all >= 2 && encrypted == all, "{encrypted} of {all} use TLS");
    let url = role_url(&cluster, "plain");
    let url = format!("{url}&sslmode=disable");
    let (all, encrypted) = block_on(write_and_read(&cluster, &url, "plain"));
    assert!(all >= 2 && encrypted == 0, "{encrypted} of {all} use TLS");
}

#[test]
fn a_server_certificate_from_another_ca_is_refused_as_not_trusted() {
    let Some((cluster, dir, _ca)) = tls_cluster(&["localhost", "127.0.0.1"]) else {
        return;
    };
    // Another CA, named otherwise or (an impostor) the same.
    for (index, ca_name) in ["another CA", "retrace test CA"].iter().enumerate() {
        let (other_ca, _, _) = certificates(ca_name, &["127.0.0.1"]);
        let other_path = dir.path().join(format!("other-ca-{index}.pem"));
        std::fs::write(&other_path, other_ca).unwrap();
        refused_as_not_trusted(&cluster, &other_path);
    }
}

/// Every mode that checks certificates refuses `cluster` with `ca_path`'s CA.
fn refused_as_not_trusted(cluster: &PgCluster, other_path: &std::path::Path) {
    for mode in ["verify-full", "verify-ca", "require"] {
        let url = format!(
            "{}?sslmode={mode}&sslrootcert={}",
            cluster.url(),
            other_path.display()
        );
        let message = block_on(refused(&url));
        assert!(
            message.contains(&format!(
                "the server's certificate is not trusted (sslmode={mode}): no certificate in \
                 sslrootcert {} signed it",
                other_path.display()
            )),
            "{message}"
        );
    }
}

#[test]
fn verify_full_refuses_a_certificate_for_another_host_and_verify_ca_accepts_it() {
    let Some((cluster, _dir, ca)) = tls_cluster(&["db.example"]) else {
        return;
    };
    let url = format!("{}?sslmode=verify-full&sslrootcert={ca}", cluster.url());
    let message = block_on(refused(&url));
    assert!(
        message.contains("the server's certificate does not name the host the URL connects to"),
        "{message}"
    );
    let url = role_url(&cluster, "chain_only");
    let url = format!("{url}&sslmode=verify-ca&sslrootcert={ca}");
    let (all, encrypted) = block_on(write_and_read(&cluster, &url, "chain_only"));
    assert!(all >= 2 && encrypted == all, "{encrypted} of {all} use TLS");
}

/// `GET /healthz` on `url`: the status and the JSON body.
async fn healthz(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("{url}/healthz")).await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

/// Asks `/healthz` until it answers `status`, for at most 20 s; the last body.
async fn healthz_until(url: &str, status: u16) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        let (now, body) = healthz(url).await;
        if now == status {
            return body;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "/healthz still answers {now} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[test]
fn healthz_answers_503_while_postgres_is_down_and_200_once_it_is_back_with_no_other_request() {
    // A cluster of its own: this test stops it.
    let Some(cluster) = PgCluster::start() else {
        return;
    };
    block_on(async {
        let storage = PostgresStorage::connect(&cluster.url())
            .await
            .expect("it opens");
        let env = Env::tokio(Arc::new(Unconnected));
        let config = ServiceConfig::default();
        let http = HttpConfig::new("127.0.0.1:0".parse().unwrap(), &config.limits);
        let service = Service::start(env, Arc::new(storage), config)
            .await
            .unwrap();
        let server = HttpServer::start(service.handler(), http).await.unwrap();
        let url = server.url();
        assert_eq!(healthz(&url).await, (200, json!({ "status": "ok" })));
        tokio::task::block_in_place(|| cluster.stop_immediately());
        let body = healthz_until(&url, 503).await;
        assert_eq!(body["status"], "unhealthy");
        let reason = body["reason"].as_str().unwrap();
        assert!(reason.contains("cannot reach Postgres"), "{reason}");
        assert!(reason.contains("127.0.0.1"), "{reason}");
        tokio::task::block_in_place(|| cluster.start_again());
        let body = healthz_until(&url, 200).await;
        assert_eq!(body, json!({ "status": "ok" }));
    });
}

// ---------------------------------------------------------------------------
// Cluster mode: shards, leases, fences, and the shared server lock.

use retrace::env::lease::{Fence, LeaseAnswer, LeaseRequest, shard_of};

/// A lease that outlives the test.
const LEASE_LONG_MS: u64 = 60_000;

fn lease(shard: u32, owner: &str, incarnation: u64, lease_ms: u64) -> LeaseRequest {
    LeaseRequest {
        shard,
        owner: owner.to_string(),
        incarnation,
        lease_ms,
    }
}

fn fenced(mut batch: WriteBatch, shard: u32, epoch: u64) -> WriteBatch {
    batch.fence = Some(Fence { shard, epoch });
    batch
}

async fn acquire(storage: &PostgresStorage, request: LeaseRequest) -> LeaseAnswer {
    let asked = format!("{request:?}");
    let answer = storage.acquire_shard(request).await;
    answer.unwrap_or_else(|error| panic!("acquiring {asked} failed: {error}"))
}

/// The shard of `run_id`'s workflow id (`wf-{run_id}`, as `create` claims).
fn shard_of_run(storage: &PostgresStorage, run_id: &str) -> u32 {
    shard_of(&format!("wf-{run_id}"), storage.shard_count())
}

fn cluster_options() -> PostgresOptions {
    PostgresOptions {
        cluster: true,
        ..PostgresOptions::default()
    }
}

#[test]
fn a_server_that_lost_its_shard_to_another_writes_nothing_more() {
    let Some(cluster) = postgres_cluster::shared() else {
        return;
    };
    let url = cluster.fresh_schema_url();
    block_on(async {
        let a = PostgresStorage::connect_cluster(&url)
            .await
            .expect("A opens");
        let b = PostgresStorage::connect_cluster(&url)
            .await
            .expect("B opens the same schema beside A");
        let shard = shard_of_run(&a, "run-a");
        let held = acquire(&a, lease(shard, "node-a", 1, 300)).await;
        assert!(held.granted && held.lease.epoch == 1, "{held:?}");
        let refused = acquire(&b, lease(shard, "node-b", 1, LEASE_LONG_MS)).await;
        assert!(!refused.granted, "B took a held shard: {refused:?}");
        let epoch_a = held.lease.epoch;
        a.write(fenced(create("run-a"), shard, epoch_a))
            .await
            .expect("A's write fenced with its epoch lands");
        tokio::time::sleep(std::time::Duration::from_millis(320)).await;
        let taken = acquire(&b, lease(shard, "node-b", 1, LEASE_LONG_MS)).await;
        assert!(
            taken.granted,
            "B could not take the expired lease: {taken:?}"
        );
        assert_eq!(taken.lease.epoch, epoch_a + 1);
        let late = a.write(fenced(update("run-a", 1, 2), shard, epoch_a)).await;
        let fenced_out = StorageError::Fenced {
            shard,
            epoch: epoch_a,
            stored: epoch_a + 1,
        };
        assert_eq!(late, Err(fenced_out));
        let stored = b.read_run("run-a").await.unwrap().expect("run-a is stored");
        assert_eq!(
            (stored.version, stored.next_event_id),
            (1, 2),
            "A's write landed"
        );
        assert_eq!(b.read_events("run-a", 1, 100).await.unwrap().len(), 1);
        let renewal = acquire(&a, lease(shard, "node-a", 1, 300)).await;
        assert!(!renewal.granted, "A renewed a lease it lost: {renewal:?}");
        b.write(fenced(update("run-a", 1, 2), shard, taken.lease.epoch))
            .await
            .expect("B's write, fenced with the new epoch, lands");
    });
}

/// Holds a transaction open on another session after running `sql` in it,
/// until told to end it (with `COMMIT`).
struct OpenTransaction {
    /// The session's backend.
    pid: i32,
    end: std::sync::mpsc::Sender<()>,
    done: std::thread::JoinHandle<()>,
}

fn open_transaction(url: &str, sql: &str) -> OpenTransaction {
    let (url, sql) = (url.to_string(), sql.to_string());
    let (ran_tx, ran_rx) = std::sync::mpsc::channel();
    let (end, end_rx) = std::sync::mpsc::channel::<()>();
    let done = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connects");
            tokio::spawn(connection);
            let row = client.query_one("SELECT pg_backend_pid()", &[]).await;
            let pid: i32 = row.unwrap().get(0);
            client.batch_execute("BEGIN").await.unwrap();
            client.batch_execute(&sql).await.unwrap();
            ran_tx.send(pid).unwrap();
            let _ = tokio::task::spawn_blocking(move || end_rx.recv()).await;
            client.batch_execute("COMMIT").await.unwrap();
        });
    });
    let pid = ran_rx.recv().expect("the statement ran");
    OpenTransaction { pid, end, done }
}

impl OpenTransaction {
    fn commit(self) {
        let _ = self.end.send(());
        self.done.join().expect("the transaction ends");
    }
}

/// Returns once at least `count` sessions wait, directly or through each
/// other, on the transaction `holder` holds open (other tests' lock waits
/// on the shared cluster do not count); panics if they do not within 10 s.
async fn wait_for_waiters_behind(cluster: &PgCluster, holder: &OpenTransaction, count: i64) {
    let (client, connection) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
        .await
        .expect("connects");
    tokio::spawn(connection);
    let started = std::time::Instant::now();
    loop {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{count} sessions never waited behind session {} at once",
            holder.pid
        );
        let row = client
            .query_one(
                "WITH RECURSIVE behind AS (SELECT $1::int AS pid UNION SELECT a.pid \
                 FROM pg_stat_activity a JOIN behind b ON b.pid = ANY(pg_blocking_pids(a.pid))) \
                 SELECT count(*) - 1 FROM behind",
                &[&holder.pid],
            )
            .await
            .expect("pg_stat_activity reads");
        if row.get::<_, i64>(0) >= count {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Locks run-a's row (until the transaction ends).
const LOCK_RUN_A: &str = "SELECT 1 FROM runs WHERE run_id = 'run-a' FOR UPDATE";

/// `count` run ids whose workflow ids fall in distinct shards.
fn runs_in_distinct_shards(storage: &PostgresStorage, prefix: &str, count: usize) -> Vec<String> {
    let mut used = std::collections::BTreeSet::new();
    let runs: Vec<String> = (0..)
        .map(|index| format!("{prefix}-{index}"))
        .filter(|run_id| used.insert(shard_of_run(storage, run_id)))
        .take(count)
        .collect();
    assert_eq!(runs.len(), count);
    runs
}

#[test]
fn a_write_holding_its_shard_makes_a_takeover_wait_and_lands_before_it() {
    let Some(cluster) = postgres_cluster::shared() else {
        return;
    };
    let url = cluster.fresh_schema_url();
    block_on(async {
        let a = PostgresStorage::connect_cluster(&url)
            .await
            .expect("A opens");
        let b = PostgresStorage::connect_cluster(&url)
            .await
            .expect("B opens");
        let shard = shard_of_run(&a, "run-a");
        let held = acquire(&a, lease(shard, "node-a", 1, 200)).await.lease;
        a.write(fenced(create("run-a"), shard, held.epoch))
            .await
            .expect("created");
        tokio::time::sleep(std::time::Duration::from_millis(220)).await;
        // A's write checks its fence (the shard's row locked FOR SHARE),
        // then waits on the run's row, locked here.
        let lock = open_transaction(&url, LOCK_RUN_A);
        let a_write = a.clone();
        let write = tokio::spawn(async move {
            let batch = fenced(update("run-a", 1, 2), shard, held.epoch);
            a_write.write(batch).await
        });
        wait_for_waiters_behind(cluster, &lock, 1).await;
        let b_take = b.clone();
        let takeover = tokio::spawn(async move {
            let answer = acquire(&b_take, lease(shard, "node-b", 1, LEASE_LONG_MS)).await;
            let seen = b_take.read_run("run-a").await.unwrap();
            (answer, seen)
        });
        wait_for_waiters_behind(cluster, &lock, 2).await;
        assert!(
            !takeover.is_finished(),
            "the takeover did not wait for the write"
        );
        lock.commit();
        write
            .await
            .unwrap()
            .expect("the write lands before the takeover");
        let (answer, seen) = takeover.await.unwrap();
        assert!(
            answer.granted && answer.lease.epoch == held.epoch + 1,
            "{answer:?}"
        );
        assert_eq!(
            seen.map(|run| run.version),
            Some(2),
            "the new holder sees the write"
        );
    });
}

#[test]
fn a_write_behind_an_uncommitted_takeover_is_refused_once_it_commits() {
    let Some(cluster) = postgres_cluster::shared() else {
        return;
    };
    let url = cluster.fresh_schema_url();
    block_on(async {
        let a = PostgresStorage::connect_cluster(&url)
            .await
            .expect("A opens");
        let shard = shard_of_run(&a, "run-a");
        let held = acquire(&a, lease(shard, "node-a", 1, LEASE_LONG_MS))
            .await
            .lease;
        a.write(fenced(create("run-a"), shard, held.epoch))
            .await
            .expect("created");
        let takeover = open_transaction(
            &url,
            &format!(
                "UPDATE shards SET owner = 'node-b', incarnation = 1, epoch = epoch + 1 \
                 WHERE shard = {shard}"
            ),
        );
        let a_write = a.clone();
        let write = tokio::spawn(async move {
            let batch = fenced(update("run-a", 1, 2), shard, held.epoch);
            a_write.write(batch).await
        });
        wait_for_waiters_behind(cluster, &takeover, 1).await;
        assert!(
            !write.is_finished(),
            "the write did not wait for the takeover"
        );
        takeover.commit();
        let refused = StorageError::Fenced {
            shard,
            epoch: held.epoch,
            stored: held.epoch + 1,
        };
        assert_eq!(write.await.unwrap(), Err(refused));
        let stored = a.read_run("run-a").await.unwrap().map(|run| run.version);
        assert_eq!(stored, Some(1), "the refused write changed the run");
    });
}

#[test]
fn writes_racing_takeovers_land_before_them_or_are_refused_never_after() {
    const ROUNDS: usize = 24;
    let Some(cluster) = postgres_cluster::shared() else {
        return;
    };
    let url = cluster.fresh_schema_url();
    block_on(async {
        let a = PostgresStorage::connect_cluster(&url)
            .await
            .expect("A opens");
        let b = PostgresStorage::connect_cluster(&url)
            .await
            .expect("B opens");
        let runs = runs_in_distinct_shards(&a, "race", ROUNDS);
        let mut epochs = Vec::new();
        for run_id in &runs {
            let shard = shard_of_run(&a, run_id);
            let held = acquire(&a, lease(shard, "node-a", 1, 100)).await.lease;
            a.write(fenced(create(run_id), shard, held.epoch))
                .await
                .expect("created");
            epochs.push((shard, held.epoch));
        }
        tokio::time::sleep(std::time::Duration::from_millis(120)).await;
        let (mut landed, mut refused) = (0, 0);
        for (round, (run_id, (shard, epoch))) in runs.iter().zip(epochs).enumerate() {
            // The write starts after 0 to 920 yields, the takeover at once
            // or after 1 ms: some writes land first, some are refused, and
            // some race the takeover in Postgres.
            let write = async {
                for _ in 0..round * 40 {
                    tokio::task::yield_now().await;
                }
                a.write(fenced(update(run_id, 1, 2), shard, epoch)).await
            };
            let takeover = async {
                if round % 2 == 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                let answer = acquire(&b, lease(shard, "node-b", 1, LEASE_LONG_MS)).await;
                let seen = b.read_run(run_id).await.unwrap().expect("stored");
                (answer, seen.version)
            };
            let (written, (answer, seen)) = tokio::join!(write, takeover);
            assert!(
                answer.granted && answer.lease.epoch == epoch + 1,
                "{answer:?}"
            );
            let stored = b.read_run(run_id).await.unwrap().expect("stored").version;
            match written {
                Ok(()) => {
                    assert_eq!(seen, 2, "{run_id}: the write landed after the takeover");
                    landed += 1;
                }
                Err(error) => {
                    let expected = StorageError::Fenced {
                        shard,
                        epoch,
                        stored: epoch + 1,
                    };
                    assert_eq!(error, expected, "{run_id}");
                    assert_eq!((seen, stored), (1, 1), "{run_id}: a refused write landed");
                    refused += 1;
                }
            }
        }
        assert_eq!(landed + refused, ROUNDS);
        eprintln!("writes racing takeovers: {landed} landed before, {refused} refused");
    });
}

#[test]
fn a_fenced_batch_refused_with_its_group_lands_alone_on_the_careful_path() {
    let Some(cluster) = postgres_cluster::shared() else {
        return;
    };
    let url = cluster.fresh_schema_url();
    let options = PostgresOptions {
        writer_count: 1,
        ..cluster_options()
    };
    block_on(async {
        let storage = PostgresStorage::connect_with(&url, options)
            .await
            .expect("it opens");
        let shard = shard_of_run(&storage, "run-b");
        let held = acquire(&storage, lease(shard, "node-a", 1, LEASE_LONG_MS)).await;
        let epoch = held.lease.epoch;
        for run_id in ["run-a", "run-c"] {
            storage.write(create(run_id)).await.expect("created");
        }
        storage
            .write(fenced(create("run-b"), shard, epoch))
            .await
            .expect("created, fenced");
        // The only writer waits on run-a's row while the next two queue.
        let lock = open_transaction(&url, LOCK_RUN_A);
        let writer = storage.clone();
        let first = tokio::spawn(async move { writer.write(update("run-a", 1, 2)).await });
        wait_for_waiters_behind(cluster, &lock, 1).await;
        let good = storage.write(fenced(update("run-b", 1, 2), shard, epoch));
        let stale = storage.write(update("run-c", 5, 2));
        let release = async {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            lock.commit();
        };
        let (good, stale, ()) = tokio::join!(good, stale, release);
        let first = first.await.unwrap();
        first.expect("the first write lands once the lock is gone");
        good.expect("the fenced write lands on the careful path");
        assert!(
            matches!(stale, Err(StorageError::VersionConflict { .. })),
            "{stale:?}"
        );
        let stats = storage.stats();
        assert_eq!(stats.batches_alone, 2, "the group fell back: {stats:?}");
        let run_b = storage.read_run("run-b").await.unwrap().unwrap();
        assert_eq!(run_b.version, 2);
    });
}

#[test]
fn a_single_server_and_cluster_servers_never_share_a_schema() {
    let Some(cluster) = postgres_cluster::shared() else {
        return;
    };
    let url = cluster.fresh_schema_url();
    let impatient_single = PostgresOptions {
        server_lock_wait_ms_max: 200,
        ..PostgresOptions::default()
    };
    let impatient_cluster = PostgresOptions {
        server_lock_wait_ms_max: 200,
        ..cluster_options()
    };
    let refusal = |opened: Result<PostgresStorage, StorageError>| match opened {
        Ok(_) => panic!("the schema opened, but must be refused"),
        Err(StorageError::Io(message)) => message,
        Err(other) => panic!("expected Io, got {other:?}"),
    };
    block_on(async {
        let single = PostgresStorage::connect_with(&url, impatient_single)
            .await
            .expect("a single server opens a fresh schema");
        let message = refusal(PostgresStorage::connect_with(&url, impatient_cluster).await);
        assert!(
            message.contains("holds this database (schema) open as a single server")
                && message.contains("a cluster server cannot share it"),
            "{message}"
        );
        drop(single);
        let a = PostgresStorage::connect_with(&url, cluster_options())
            .await
            .expect("a cluster server opens once the single server is gone");
        let b = PostgresStorage::connect_cluster(&url)
            .await
            .expect("a second cluster server opens beside it");
        let message = refusal(PostgresStorage::connect_with(&url, impatient_single).await);
        assert!(
            message.contains("retrace servers in cluster mode hold this database")
                && message.contains("a single server cannot share it"),
            "{message}"
        );
        drop(a);
        let message = refusal(PostgresStorage::connect_with(&url, impatient_single).await);
        assert!(message.contains("cluster mode"), "{message}");
        b.write(create("run-b")).await.expect("B still writes");
        drop(b);
        let single = PostgresStorage::connect(&url)
            .await
            .expect("a single server opens once every cluster server is gone");
        assert_eq!(
            single.read_run("run-b").await.unwrap().map(|r| r.version),
            Some(1)
        );
    });
}
