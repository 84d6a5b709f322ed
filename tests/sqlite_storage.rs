//! What only `SqliteStorage` must do, beyond the conformance suite: survive a
//! reopen, refuse files it must not touch (and leave them untouched), report
//! corrupt rows, and keep every write under concurrent load.

use std::future::Future;
use std::path::{Path, PathBuf};

use futures::future::join_all;
use retrace::env::{
    ListQuery, RunRecord, RunStatus, SqliteStorage, Storage, StorageError, WorkflowIdClaim,
    WriteBatch,
};
use retrace::history::{Event, EventKind, WorkflowExecutionSignaled};
use retrace::types::Timestamp;
use serde_json::json;

/// Drives `future` to completion on a fresh multi-threaded tokio runtime.
fn block_on<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    runtime.block_on(future)
}

fn signal(run_id: &str, event_id: u64) -> Event {
    let kind = EventKind::WorkflowExecutionSignaled(WorkflowExecutionSignaled {
        signal_name: "poke".to_string(),
        input: json!({ "run_id": run_id, "event_id": event_id }),
        identity: "test".to_string(),
    });
    Event::new(event_id, Timestamp(1_704_067_200_000 + event_id), kind)
}

/// Creates `run_id` with `count` events and claims `wf-{run_id}`.
fn create(run_id: &str, count: u64) -> WriteBatch {
    let run = RunRecord {
        run_id: run_id.to_string(),
        workflow_id: format!("wf-{run_id}"),
        workflow_type: "sqlite-test".to_string(),
        task_queue: "default".to_string(),
        status: RunStatus::Running,
        start_time: Timestamp(1_704_067_200_000),
        close_time: None,
        next_event_id: count + 1,
        version: 1,
        state: format!("state of {run_id}").into_bytes(),
        search_attributes: Default::default(),
    };
    let claim = WorkflowIdClaim {
        workflow_id: run.workflow_id.clone(),
        previous_run_id: None,
    };
    let events = (1..=count)
        .map(|event_id| signal(run_id, event_id))
        .collect();
    WriteBatch {
        fence: None,
        run,
        expected_version: None,
        events,
        claim: Some(claim),
        buffered: Default::default(),
        next_run: None,
    }
}

/// Appends `count` events to `stored`.
fn append(stored: &RunRecord, count: u64) -> WriteBatch {
    let mut run = stored.clone();
    run.version += 1;
    run.next_event_id += count;
    let events = (0..count)
        .map(|offset| signal(&run.run_id, stored.next_event_id + offset))
        .collect();
    WriteBatch {
        fence: None,
        run,
        expected_version: Some(stored.version),
        events,
        claim: None,
        buffered: Default::default(),
        next_run: None,
    }
}

fn open(path: &Path) -> SqliteStorage {
    match SqliteStorage::open(path) {
        Ok(storage) => storage,
        Err(error) => panic!("opening {} failed: {error}", path.display()),
    }
}

/// Every file in `dir` with its bytes, sorted by name.
fn directory_contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut entries: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("the directory lists")
        .map(|entry| entry.expect("a directory entry").path())
        .map(|path| {
            let bytes = if path.is_file() {
                std::fs::read(&path).expect("the file reads")
            } else {
                Vec::new()
            };
            (path, bytes)
        })
        .collect();
    entries.sort();
    entries
}

/// Opens `path`, which must fail with an `Io` error; returns its message.
fn open_error(path: &Path) -> String {
    match SqliteStorage::open(path) {
        Ok(_) => panic!("opening {} should have failed", path.display()),
        Err(StorageError::Io(message)) => message,
        Err(other) => panic!(
            "opening {} should give an Io error, not {other:?}",
            path.display()
        ),
    }
}

/// A database with one run `run-a` (3 events, written one batch each),
/// closed again. Returns the run's record.
fn database_with_one_run(path: &Path) -> RunRecord {
    let storage = open(path);
    let batch = create("run-a", 1);
    let mut run = batch.run.clone();
    block_on(storage.write(batch)).expect("the write lands");
    for _ in 0..2 {
        let batch = append(&run, 1);
        run = batch.run.clone();
        block_on(storage.write(batch)).expect("the write lands");
    }
    run
}

#[test]
fn data_survives_drop_and_reopen() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("retrace.db");
    let storage = open(&path);
    let created = create("run-a", 3);
    let update = append(&created.run, 2);
    let mut expected = created.events.clone();
    expected.extend(update.events.iter().cloned());
    let last = update.run.clone();
    block_on(async {
        storage.write(created).await.expect("the create lands");
        storage.write(update).await.expect("the update lands");
    });
    drop(storage);

    let reopened = open(&path);
    block_on(async {
        let run = reopened.read_run("run-a").await.expect("the run reads");
        assert_eq!(run.as_ref(), Some(&last));
        let events = reopened
            .read_events("run-a", 1, 100)
            .await
            .expect("the events read");
        assert_eq!(events, expected);
        let current = reopened
            .current_run("wf-run-a")
            .await
            .expect("the workflow id reads");
        assert_eq!(current.as_deref(), Some("run-a"));
        reopened
            .write(append(&last, 1))
            .await
            .expect("writing continues after a reopen");
    });
}

#[test]
fn fresh_database_has_the_documented_schema_in_wal_mode() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("retrace.db");
    drop(open(&path));
    let connection = rusqlite::Connection::open(&path).expect("the file opens");
    let version: i64 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .expect("user_version");
    assert_eq!(version, i64::from(SqliteStorage::SCHEMA_VERSION));
    let mode: String = connection
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
    let application_id: i64 = connection
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .expect("application_id");
    assert_eq!(
        application_id, 0x5254_5243,
        "retrace marks its databases \"RTRC\""
    );
    let mut statement = connection
        .prepare(
            "SELECT type, name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' \
             ORDER BY type, name",
        )
        .expect("the schema query prepares");
    let names: Vec<(String, String)> = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("the schema lists")
        .collect::<Result<_, _>>()
        .expect("schema rows decode");
    let expected = [
        ("index", "runs_by_start_time"),
        ("index", "runs_by_status"),
        ("index", "runs_by_workflow_type"),
        ("index", "search_attributes_by_double"),
        ("index", "search_attributes_by_integer"),
        ("index", "search_attributes_by_text"),
        ("table", "buffered_events"),
        ("table", "event_batches"),
        ("table", "runs"),
        ("table", "search_attributes"),
        ("table", "workflow_ids"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(t, n)| (t.to_string(), n.to_string()))
        .collect();
    assert_eq!(names, expected);
}

#[test]
fn database_from_a_newer_schema_version_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("retrace.db");
    database_with_one_run(&path);
    let newer = SqliteStorage::SCHEMA_VERSION + 1;
    {
        let connection = rusqlite::Connection::open(&path).expect("the file opens");
        connection
            .pragma_update(None, "user_version", newer)
            .expect("user_version is set");
    }
    let before = directory_contents(dir.path());

    let message = open_error(&path);
    let expected = format!(
        "database {} has schema version {newer}, newer than this build supports ({}); \
         upgrade retrace",
        path.display(),
        SqliteStorage::SCHEMA_VERSION
    );
    assert_eq!(message, expected);
    assert_eq!(
        directory_contents(dir.path()),
        before,
        "a refused open changed files"
    );
}

#[test]
fn path_that_is_a_directory_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("not-a-file");
    std::fs::create_dir(&path).expect("the directory is made");

    let message = open_error(&path);
    assert!(
        message.contains(&path.display().to_string()),
        "the error names the path: {message}"
    );
    assert!(
        message.contains("is a directory"),
        "the error says it is a directory: {message}"
    );
    let inside = std::fs::read_dir(&path)
        .expect("the directory lists")
        .count();
    assert_eq!(inside, 0, "a refused open wrote into the directory");
}

#[test]
fn file_that_is_not_a_sqlite_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("garbage.db");
    let garbage: Vec<u8> = (0..8192u32).map(|index| (index * 31 % 256) as u8).collect();
    std::fs::write(&path, &garbage).expect("the garbage is written");
    let before = directory_contents(dir.path());

    let message = open_error(&path);
    assert!(
        message.contains(&path.display().to_string()),
        "the error names the path: {message}"
    );
    assert!(
        message.contains("not a database"),
        "the error says it is not a database: {message}"
    );
    assert_eq!(
        directory_contents(dir.path()),
        before,
        "a refused open changed files"
    );
}

#[test]
fn sqlite_database_of_another_program_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cases = [
        ("notes.db", "CREATE TABLE notes (body TEXT);"),
        ("marked.db", "PRAGMA application_id = 42;"),
    ];
    for (name, sql) in cases {
        let path = dir.path().join(name);
        rusqlite::Connection::open(&path)
            .and_then(|connection| connection.execute_batch(sql))
            .expect("the other program's database is made");
        let before = directory_contents(dir.path());
        let message = open_error(&path);
        assert!(
            message.contains(&path.display().to_string()),
            "the error names the path: {message}"
        );
        assert!(
            message.contains("another program"),
            "the error says whose it is: {message}"
        );
        assert_eq!(
            directory_contents(dir.path()),
            before,
            "a refused open changed files"
        );
    }
}

#[test]
fn read_only_database_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("retrace.db");
    database_with_one_run(&path);
    let mut permissions = std::fs::metadata(&path)
        .expect("the file exists")
        .permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(&path, permissions.clone()).expect("the file is made read-only");
    let before = directory_contents(dir.path());

    let message = open_error(&path);
    assert!(
        message.contains(&path.display().to_string()),
        "the error names the path: {message}"
    );
    assert!(
        message.contains("read-only"),
        "the error says it is read-only: {message}"
    );
    assert_eq!(
        directory_contents(dir.path()),
        before,
        "a refused open changed files"
    );
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&path, permissions).expect("the file is made writable again");
}

#[test]
fn path_in_a_missing_directory_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("missing").join("retrace.db");
    let message = open_error(&path);
    assert!(
        message.contains(&path.display().to_string()),
        "the error names the path: {message}"
    );
    assert!(
        !dir.path().join("missing").exists(),
        "a refused open made the directory"
    );
}

/// Opens `path`, changes it with `sql`, and reopens it as storage.
fn tamper(path: &Path, sql: &str) -> SqliteStorage {
    {
        let connection = rusqlite::Connection::open(path).expect("the file opens");
        connection
            .execute_batch(sql)
            .expect("the tampering applies");
    }
    open(path)
}

fn expect_corrupt<T: std::fmt::Debug>(result: Result<T, StorageError>, needles: &[&str]) {
    match result {
        Err(StorageError::Corrupt(message)) => {
            for needle in needles {
                assert!(
                    message.contains(needle),
                    "the error should name {needle:?}: {message}"
                );
            }
        }
        other => panic!("expected a Corrupt error naming {needles:?}, got {other:?}"),
    }
}

#[test]
fn event_with_bad_json_reads_as_corrupt_naming_the_run_and_the_event() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("retrace.db");
    database_with_one_run(&path);
    let storage = tamper(
        &path,
        "UPDATE event_batches SET events = '[{\"event_id\": 2, oops' WHERE first_event_id = 2",
    );
    block_on(async {
        expect_corrupt(
            storage.read_events("run-a", 1, 10).await,
            &["run run-a events 2..=2", "JSON"],
        );
        let first = storage
            .read_events("run-a", 1, 1)
            .await
            .expect("events before the bad one read");
        assert_eq!(first.len(), 1);
    });
}

#[test]
fn history_with_a_missing_event_reads_as_corrupt() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("retrace.db");
    database_with_one_run(&path);
    let storage = tamper(&path, "DELETE FROM event_batches WHERE first_event_id = 2");
    block_on(async {
        expect_corrupt(
            storage.read_events("run-a", 1, 10).await,
            &["run run-a", "event 2 is missing"],
        );
    });
}

#[test]
fn run_with_an_unknown_status_reads_as_corrupt_naming_the_run() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("retrace.db");
    let run = database_with_one_run(&path);
    let storage = tamper(
        &path,
        "UPDATE runs SET status = 'Paused' WHERE run_id = 'run-a'",
    );
    block_on(async {
        expect_corrupt(storage.read_run("run-a").await, &["run run-a", "Paused"]);
        let all = ListQuery {
            limit: 10,
            ..ListQuery::default()
        };
        expect_corrupt(storage.list_runs(all).await, &["run run-a", "Paused"]);
        expect_corrupt(
            storage.write(append(&run, 1)).await,
            &["run run-a", "Paused"],
        );
    });
    drop(storage);
    let connection = rusqlite::Connection::open(&path).expect("the file opens");
    let count: i64 = connection
        .query_row(
            "SELECT max(last_event_id) FROM event_batches WHERE run_id = 'run-a'",
            [],
            |row| row.get(0),
        )
        .expect("events count");
    assert_eq!(count, 3, "a write refused as corrupt appended events");
}

#[test]
fn batch_whose_row_holds_other_event_ids_reads_as_corrupt() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("retrace.db");
    database_with_one_run(&path);
    let storage = tamper(
        &path,
        "UPDATE event_batches SET last_event_id = 3 WHERE first_event_id = 2",
    );
    block_on(async {
        expect_corrupt(
            storage.read_events("run-a", 1, 10).await,
            &["run run-a events 2..=3", "holds events [2]"],
        );
    });
}

/// The schema of version 1, before events were stored one row per batch.
const SCHEMA_1: &str = "
    PRAGMA application_id = 0x52545243;
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY NOT NULL, workflow_id TEXT NOT NULL,
        workflow_type TEXT NOT NULL, task_queue TEXT NOT NULL, status TEXT NOT NULL,
        start_time_ms INTEGER NOT NULL, close_time_ms INTEGER,
        next_event_id INTEGER NOT NULL, version INTEGER NOT NULL, state BLOB NOT NULL
    ) STRICT;
    CREATE TABLE events (
        run_id TEXT NOT NULL REFERENCES runs (run_id), event_id INTEGER NOT NULL,
        body TEXT NOT NULL, PRIMARY KEY (run_id, event_id)
    ) STRICT;
    CREATE TABLE workflow_ids (
        workflow_id TEXT PRIMARY KEY NOT NULL, run_id TEXT NOT NULL REFERENCES runs (run_id)
    ) STRICT;
    CREATE INDEX runs_by_status ON runs (status, run_id);
    CREATE INDEX runs_by_workflow_type ON runs (workflow_type, run_id);
    PRAGMA user_version = 1;
";

#[test]
fn a_version_1_database_is_migrated_and_keeps_every_event() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("retrace.db");
    let events: Vec<Event> = (1..=3).map(|id| signal("run-a", id)).collect();
    {
        let connection = rusqlite::Connection::open(&path).expect("the file opens");
        connection
            .execute_batch(SCHEMA_1)
            .expect("schema 1 applies");
        connection
            .execute(
                "INSERT INTO runs VALUES ('run-a', 'wf-run-a', 'sqlite-test', 'default', \
                 'Running', 1704067200000, NULL, 4, 1, X'00')",
                [],
            )
            .expect("the run inserts");
        for event in &events {
            let body = serde_json::to_string(event).expect("events encode");
            connection
                .execute(
                    "INSERT INTO events VALUES ('run-a', ?1, ?2)",
                    rusqlite::params![event.event_id as i64, body],
                )
                .expect("the event inserts");
        }
    }
    let storage = open(&path);
    block_on(async {
        let read = storage.read_events("run-a", 1, 10).await.expect("readable");
        assert_eq!(read, events);
        let run = storage
            .read_run("run-a")
            .await
            .expect("readable")
            .expect("kept");
        storage
            .write(append(&run, 2))
            .await
            .expect("writable after the migration");
        let read = storage.read_events("run-a", 2, 10).await.expect("readable");
        let ids: Vec<u64> = read.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, [2, 3, 4, 5]);
    });
}

#[test]
fn group_commit_keeps_all_of_200_concurrent_writes() {
    const WRITES_COUNT: usize = 200;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("retrace.db");
    let storage = open(&path);
    let batches: Vec<WriteBatch> = (0..WRITES_COUNT)
        .map(|index| create(&format!("run-{index:03}"), 3))
        .collect();
    let results = block_on(join_all(
        batches.iter().map(|batch| storage.write(batch.clone())),
    ));
    for (batch, result) in batches.iter().zip(&results) {
        assert_eq!(
            result,
            &Ok(()),
            "the write of {} was refused",
            batch.run.run_id
        );
    }
    let stats = storage.stats();
    assert_eq!(stats.batches_written, WRITES_COUNT as u64);
    assert!(
        stats.commits < WRITES_COUNT as u64,
        "no two batches shared a commit: {stats:?}"
    );
    drop(storage);

    let reopened = open(&path);
    block_on(async {
        let all = ListQuery {
            limit: WRITES_COUNT + 1,
            ..ListQuery::default()
        };
        let runs = reopened.list_runs(all).await.expect("the runs list");
        let expected: Vec<RunRecord> = batches.iter().map(|batch| batch.run.clone()).collect();
        assert_eq!(runs, expected);
        for batch in &batches {
            let events = reopened
                .read_events(&batch.run.run_id, 1, 10)
                .await
                .expect("the events read");
            assert_eq!(
                events, batch.events,
                "the events of {} differ",
                batch.run.run_id
            );
        }
    });
}

#[test]
fn clones_share_one_database_and_outlive_the_original() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("retrace.db");
    let original = open(&path);
    let clone = original.clone();
    block_on(original.write(create("run-a", 1))).expect("the write lands");
    drop(original);
    block_on(async {
        let run = clone.read_run("run-a").await.expect("the run reads");
        assert!(run.is_some(), "the clone sees the original's write");
        clone
            .write(create("run-b", 1))
            .await
            .expect("the clone still writes");
    });
    assert_eq!(clone.path(), path);
}

/// A database whose `workflow_ids` refuses the claim of `wf-poisoned`: the
/// claim's statement fails after the run and its events were written.
fn database_with_a_poisoned_claim(path: &Path, raise: &str) -> SqliteStorage {
    drop(open(path));
    tamper(
        path,
        &format!(
            "CREATE TRIGGER poison BEFORE INSERT ON workflow_ids \
             WHEN NEW.workflow_id = 'wf-poisoned' \
             BEGIN SELECT RAISE({raise}, 'poisoned claim'); END;"
        ),
    )
}

fn poisoned_batch() -> WriteBatch {
    let mut batch = create("poisoned", 4);
    batch.run.workflow_id = "wf-poisoned".to_string();
    batch.claim = Some(WorkflowIdClaim {
        workflow_id: "wf-poisoned".to_string(),
        previous_run_id: None,
    });
    batch
}

#[test]
fn batch_whose_statement_fails_midway_is_rolled_back_alone() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let storage = database_with_a_poisoned_claim(&dir.path().join("retrace.db"), "ABORT");
    let batches = [create("good-1", 2), poisoned_batch(), create("good-2", 2)];
    let results = block_on(join_all(
        batches.iter().map(|batch| storage.write(batch.clone())),
    ));
    assert_eq!(results[0], Ok(()));
    assert_eq!(results[2], Ok(()));
    match &results[1] {
        Err(StorageError::Io(message)) => assert!(message.contains("poisoned claim"), "{message}"),
        other => panic!("the poisoned batch should fail with Io, got {other:?}"),
    }
    block_on(async {
        assert_eq!(
            storage.read_run("poisoned").await,
            Ok(None),
            "the run of the failed batch was kept"
        );
        assert_eq!(
            storage.read_events("poisoned", 1, 10).await,
            Ok(Vec::new()),
            "its events were kept"
        );
        for batch in [&batches[0], &batches[2]] {
            let run = storage
                .read_run(&batch.run.run_id)
                .await
                .expect("the run reads");
            assert_eq!(
                run.as_ref(),
                Some(&batch.run),
                "a good batch beside the failed one was lost"
            );
        }
    });
}

#[test]
fn statement_that_rolls_back_the_transaction_fails_its_group_and_writing_goes_on() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let storage = database_with_a_poisoned_claim(&dir.path().join("retrace.db"), "ROLLBACK");
    let batches = [create("good-1", 2), poisoned_batch(), create("good-2", 2)];
    let results = block_on(join_all(
        batches.iter().map(|batch| storage.write(batch.clone())),
    ));
    assert!(
        matches!(&results[1], Err(StorageError::Io(message)) if message.contains("poisoned claim"))
    );
    block_on(async {
        assert_eq!(
            storage.read_run("poisoned").await,
            Ok(None),
            "the run of the failed batch was kept"
        );
        for (batch, result) in batches.iter().zip(&results) {
            let run = storage
                .read_run(&batch.run.run_id)
                .await
                .expect("the run reads");
            match result {
                Ok(()) => assert_eq!(
                    run.as_ref(),
                    Some(&batch.run),
                    "an acknowledged batch was lost"
                ),
                Err(StorageError::Io(_)) => assert_eq!(run, None, "a failed batch was kept"),
                Err(other) => panic!("a batch of the lost group got {other:?}, not Io"),
            }
        }
        storage
            .write(create("after", 1))
            .await
            .expect("writes go on after a lost group");
    });
}

#[test]
fn sqlite_serves_one_server_refusing_cluster_calls_and_fenced_writes_but_writing_unfenced_ones() {
    use retrace::env::lease::{Fence, LeaseRequest, MemberBeat};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let storage = open(&dir.path().join("retrace.db"));
    let request = LeaseRequest {
        shard: 0,
        owner: "node-a".to_string(),
        incarnation: 1,
        lease_ms: 1_000,
    };
    let beat = MemberBeat {
        node: "node-a".to_string(),
        incarnation: 1,
        address: "node-a:7233".to_string(),
        ttl_ms: 1_000,
    };
    let errors = block_on(async {
        [
            storage.cluster_view().await.map(|_| ()).unwrap_err(),
            storage
                .acquire_shard(request.clone())
                .await
                .map(|_| ())
                .unwrap_err(),
            storage
                .release_shard(request)
                .await
                .map(|_| ())
                .unwrap_err(),
            storage.beat(beat).await.map(|_| ()).unwrap_err(),
        ]
    });
    for error in errors {
        let StorageError::Io(message) = &error else {
            panic!("expected Io, got {error:?}")
        };
        assert!(message.contains("serves one server"), "{message}");
        assert!(message.contains("a cluster needs Postgres"), "{message}");
    }
    let mut fenced = create("run-fenced", 1);
    fenced.fence = Some(Fence { shard: 0, epoch: 1 });
    match block_on(storage.write(fenced)) {
        Err(StorageError::BadBatch { run_id, reason }) => {
            assert_eq!(run_id, "run-fenced");
            assert!(reason.contains("a cluster needs Postgres"), "{reason}");
        }
        other => panic!("expected BadBatch, got {other:?}"),
    }
    assert_eq!(block_on(storage.read_run("run-fenced")).unwrap(), None);
    let created = create("run-a", 2);
    let run = created.run.clone();
    block_on(storage.write(created)).expect("an unfenced creation lands");
    let appended = append(&run, 1);
    let run = appended.run.clone();
    block_on(storage.write(appended)).expect("an unfenced append lands");
    assert_eq!(block_on(storage.read_run("run-a")).unwrap(), Some(run));
}
