//! `SqliteStorage`: the production [`Storage`], one SQLite file in WAL mode.
//!
//! # Threads
//!
//! SQLite calls block, so none runs on an async thread. All writes go to ONE
//! writer thread through a bounded queue (`write_queue_max` batches); reads go to
//! `reader_count` reader threads, each with its own read-only connection, through
//! another bounded queue (WAL lets them read while the writer writes). Callers
//! await a oneshot reply. Dropping the last handle closes both queues; the threads
//! finish what is queued and exit, and the drop joins them.
//!
//! # Group commit
//!
//! The writer takes every batch waiting (up to `group_commit_batches_max` batches
//! and `group_commit_bytes_max` bytes) and applies them in ONE transaction, each
//! inside its own `SAVEPOINT`: a batch is checked with [`check_batch`] against the
//! rows it reads inside the transaction (so it sees the batches before it in the
//! group), and a batch that is refused, or whose statement fails, is rolled back
//! to its savepoint alone and answered with its own error. One `COMMIT` (one
//! fsync, `synchronous=FULL`) then makes the whole group durable, and only then is
//! each caller answered. If the transaction itself fails (`BEGIN`, a busy
//! `COMMIT`, or an error after which SQLite rolled everything back), every batch
//! of the group gets the same `StorageError::Io` and nothing of the group is
//! stored. A `COMMIT` failing otherwise (an fsync error) leaves the outcome
//! unknown: the group gets `StorageError::Timeout` and nothing on that
//! connection is trusted again (see `commit_failed`).
//!
//! # Faults the writer lives through
//!
//! | fault | what the writer does | writes meanwhile | [`Storage::health`] |
//! |---|---|---|---|
//! | a `COMMIT` fails (disk full, fsync error) | drops its connection and reopens the file as a restart would, after 50 ms, doubling up to `RECOVERY_BACKOFF_MS_MAX`; a reopen counts once a probe commit (page 1 rewritten as it is) succeeds | refused at once: `Io("storage is recovering after a failed commit: …")` | the reason, since when, attempts |
//! | the file at the path is deleted or replaced (checked by device and inode before every `COMMIT`) | refuses every write until a restart; never reopens (that would make an empty database) | refused: `Io("the database file … was deleted or replaced …")` | that reason |
//! | its thread panicked (a bug) | gone | `Io("storage stopped")` | says so |
//!
//! # One server per file
//!
//! Opening takes an exclusive `flock` on the database file itself (not on a
//! file beside it), held until the last handle is dropped: a second open of
//! the file, by another process or this one, is refused naming the path.
//! `flock` locks are apart from the POSIX locks SQLite takes, so tools like
//! `sqlite3` still read and write the file. The lock's descriptor is closed
//! only after every connection is (closing any descriptor of a file drops the
//! process's POSIX locks on it).
//!
//! # Schema
//!
//! `PRAGMA user_version` is the number of `MIGRATIONS` applied; each migration
//! runs in its own transaction. A database from a newer build is refused untouched,
//! and so is a file that is not SQLite or a SQLite database of another program
//! (`PRAGMA application_id` marks retrace's).

use std::fmt;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, MAIN_DB, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::BoxFuture;
use super::storage::{
    BufferedRead, ListQuery, RunRecord, RunStatus, Storage, StorageError, WorkflowIdClaim,
    WriteBatch, check_batch,
};
use crate::history::{Event, EventKind};
use crate::types::Timestamp;

/// The schema, one migration per version: `MIGRATIONS[i]` takes the database
/// from version `i` to `i + 1`. Append only; never edit a released migration.
const MIGRATIONS: &[&str] = &[
    "
    PRAGMA application_id = 0x52545243;
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY NOT NULL,
        workflow_id TEXT NOT NULL,
        workflow_type TEXT NOT NULL,
        task_queue TEXT NOT NULL,
        status TEXT NOT NULL,
        start_time_ms INTEGER NOT NULL,
        close_time_ms INTEGER,
        next_event_id INTEGER NOT NULL,
        version INTEGER NOT NULL,
        state BLOB NOT NULL
    ) STRICT;
    CREATE TABLE events (
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        event_id INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (run_id, event_id)
    ) STRICT;
    CREATE TABLE workflow_ids (
        workflow_id TEXT PRIMARY KEY NOT NULL,
        run_id TEXT NOT NULL REFERENCES runs (run_id)
    ) STRICT;
    CREATE INDEX runs_by_status ON runs (status, run_id);
    CREATE INDEX runs_by_workflow_type ON runs (workflow_type, run_id);
",
    "
    CREATE TABLE event_batches (
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        first_event_id INTEGER NOT NULL,
        last_event_id INTEGER NOT NULL,
        events TEXT NOT NULL,
        PRIMARY KEY (run_id, first_event_id)
    ) STRICT;
    INSERT INTO event_batches (run_id, first_event_id, last_event_id, events)
        SELECT run_id, event_id, event_id, '[' || body || ']' FROM events;
    DROP TABLE events;
",
    "
    CREATE TABLE buffered_events (
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        seq INTEGER NOT NULL,
        events TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) STRICT;
",
    "
    ALTER TABLE runs ADD COLUMN search_attributes TEXT NOT NULL DEFAULT '[]';
    CREATE TABLE search_attributes (
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        ord INTEGER NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        s_value TEXT,
        i_value INTEGER,
        d_value REAL,
        PRIMARY KEY (run_id, ord)
    ) STRICT;
    CREATE INDEX search_attributes_by_text ON search_attributes (name, s_value);
    CREATE INDEX search_attributes_by_integer ON search_attributes (name, i_value);
    CREATE INDEX search_attributes_by_double ON search_attributes (name, d_value);
    CREATE INDEX runs_by_start_time ON runs (start_time_ms, run_id);
",
];

/// `PRAGMA application_id` of retrace databases: "RTRC".
const APPLICATION_ID: i64 = 0x5254_5243;

/// The columns of `runs`, in the order [`run_from_row`] reads them.
const RUN_COLUMNS: &str = "run_id, workflow_id, workflow_type, task_queue, status, \
    start_time_ms, close_time_ms, next_event_id, version, state, search_attributes";

/// Upper bound of [`SqliteOptions::reader_count`].
const READER_COUNT_MAX: usize = 16;
/// Upper bound of the queue and group sizes in [`SqliteOptions`].
const QUEUE_MAX: usize = 1 << 20;
/// Prepared statements kept per connection (8 list shapes plus a few others).
const STATEMENT_CACHE_MAX: usize = 32;

/// The first wait before the writer reopens the database after a failed commit.
const RECOVERY_BACKOFF_MS_MIN: u64 = 50;
/// The longest wait between two reopen attempts (the wait doubles up to it).
const RECOVERY_BACKOFF_MS_MAX: u64 = 5_000;
/// While the writer is down, how long it sleeps at most between answering
/// writes that reached its queue (most are refused before they are queued).
const DOWN_POLL_MS_MAX: u64 = 10;

/// The error every call gets once the storage's threads are gone.
fn stopped() -> StorageError {
    StorageError::Io("storage stopped".to_string())
}

/// An `Io` error naming the database, what was being done, and SQLite's reason.
fn io_error(path: &Path, doing: &str, error: impl fmt::Display) -> StorageError {
    StorageError::Io(format!("database {}: {doing}: {error}", path.display()))
}

/// Tuning of a [`SqliteStorage`]. The defaults suit one service process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Batches queued for the writer; `write` waits for room beyond this.
    pub write_queue_max: usize,
    /// Batches the writer commits together in one transaction (one fsync).
    pub group_commit_batches_max: usize,
    /// Bytes (event JSON and state) a group may write, unless its first batch
    /// alone is larger: it bounds the transaction and the WAL growth.
    pub group_commit_bytes_max: usize,
    /// Reads queued for the reader threads; reads wait for room beyond this.
    pub read_queue_max: usize,
    /// Reader threads, each with its own read-only connection.
    pub reader_count: usize,
    /// How long a connection waits for another connection's lock.
    pub busy_timeout_ms: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            write_queue_max: 1024,
            group_commit_batches_max: 256,
            group_commit_bytes_max: 16 * 1024 * 1024,
            read_queue_max: 1024,
            reader_count: 2,
            busy_timeout_ms: 5_000,
        }
    }
}

impl SqliteOptions {
    fn assert_valid(&self) {
        assert!(self.write_queue_max > 0, "write_queue_max must be positive");
        assert!(
            self.write_queue_max <= QUEUE_MAX,
            "write_queue_max is over {QUEUE_MAX}"
        );
        assert!(
            self.group_commit_batches_max > 0,
            "group_commit_batches_max must be positive"
        );
        assert!(self.group_commit_batches_max <= QUEUE_MAX);
        assert!(
            self.group_commit_bytes_max > 0,
            "group_commit_bytes_max must be positive"
        );
        assert!(self.read_queue_max > 0, "read_queue_max must be positive");
        assert!(
            self.read_queue_max <= QUEUE_MAX,
            "read_queue_max is over {QUEUE_MAX}"
        );
        assert!(self.reader_count > 0, "reader_count must be positive");
        assert!(
            self.reader_count <= READER_COUNT_MAX,
            "reader_count is over {READER_COUNT_MAX}"
        );
    }
}

/// The writer's counters, for monitoring (and for tests that check batches
/// were grouped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SqliteStats {
    /// Transactions committed that wrote at least one batch: one fsync each.
    pub commits: u64,
    /// Batches that landed (refused ones are not counted).
    pub batches_written: u64,
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    batches_written: AtomicU64,
}

/// SQLite-backed storage: durable, one file, WAL. Clones share the same
/// database and threads. Dropping the last clone lets the threads finish what
/// is queued and joins them (it blocks for that long, usually one commit).
#[derive(Clone)]
pub struct SqliteStorage {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    write_sender: mpsc::Sender<WriteJob>,
    read_sender: mpsc::Sender<ReadJob>,
    counters: Arc<Counters>,
    health: Arc<WriterHealth>,
    /// The file opened and locked: the path must keep naming it.
    identity: FileIdentity,
    /// Never read: held to join the threads on drop. Declared after the
    /// senders, so it drops after them: by then the queues are closed and the
    /// joins end.
    #[expect(dead_code, reason = "held only to join the threads on drop")]
    threads: Threads,
    /// Never read: the exclusive lock on the database file. Declared last, so
    /// it is released (and its descriptor closed) after every connection is.
    #[expect(dead_code, reason = "held only to keep the lock until drop")]
    lock: File,
}

impl fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStorage")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl SqliteStorage {
    /// The schema version this build writes (the number of migrations).
    pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

    /// Opens (creating if missing) the database at `path` with default options.
    ///
    /// Blocks while it opens and migrates the file: call it at startup (or from
    /// a blocking task), not from inside a hot async path.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStorage, StorageError> {
        SqliteStorage::open_with(path, SqliteOptions::default())
    }

    /// Opens (creating if missing) the database at `path`.
    ///
    /// A path that is a directory, a read-only file, a file that is not a SQLite
    /// database, or a database from a newer build gives `StorageError::Io`
    /// naming the path and the reason, and leaves the file as it was.
    ///
    /// # Panics
    /// If `options` are out of their bounds (a bug in the caller).
    pub fn open_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<SqliteStorage, StorageError> {
        options.assert_valid();
        let path = path.as_ref().to_path_buf();
        check_path(&path)?;
        // Declared first, so on an error below it is released after the connections close.
        let (lock, identity) = lock_file(&path)?;
        let setup = WriterSetup {
            path: path.clone(),
            options,
            identity,
            counters: Arc::new(Counters::default()),
            health: Arc::new(WriterHealth::default()),
        };
        let writer = Writer::open(setup, true)?;
        let mut readers = Vec::with_capacity(options.reader_count);
        for _ in 0..options.reader_count {
            readers.push(open_reader(&path, &options)?);
        }
        let storage = spawn_threads(writer, readers, lock)?;
        assert!(!storage.inner.write_sender.is_closed());
        assert!(!storage.inner.read_sender.is_closed());
        Ok(storage)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The writer's counters so far.
    pub fn stats(&self) -> SqliteStats {
        let counters = &self.inner.counters;
        let stats = SqliteStats {
            commits: counters.commits.load(Ordering::Acquire),
            batches_written: counters.batches_written.load(Ordering::Relaxed),
        };
        assert!(stats.commits <= stats.batches_written);
        stats
    }

    /// Runs `query` on a reader thread and awaits its answer.
    fn read<T: Send + 'static>(
        &self,
        doing: String,
        query: impl FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, StorageError>> {
        let (reply, answer) = oneshot::channel();
        let job: ReadJob = Box::new(move |connection| {
            // The caller may have stopped waiting; then nobody needs the answer.
            let _ = reply.send(query(connection));
        });
        Box::pin(async move {
            self.inner
                .read_sender
                .send(job)
                .await
                .map_err(|_| stopped())?;
            let result = answer.await.map_err(|_| stopped())?;
            result.map_err(|error| error.into_storage(&self.inner.path, &doing))
        })
    }
}

/// Creates the database file if missing and takes an exclusive lock on it
/// (`flock`, released when the returned file is closed); returns the lock and
/// the identity of the file locked.
fn lock_file(path: &Path) -> Result<(File, FileIdentity), StorageError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|error| io_error(path, "cannot open", error))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let reason = "another retrace server (in this process or another) holds it \
                          locked; stop that server, or give this one another file";
            return Err(io_error(path, "cannot open", reason));
        }
        Err(std::fs::TryLockError::Error(error)) => {
            return Err(io_error(path, "cannot lock the file", error));
        }
    }
    let metadata = file
        .metadata()
        .map_err(|error| io_error(path, "cannot stat", error))?;
    Ok((file, FileIdentity::of(&metadata)))
}

/// Which file a path named: its device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
}

impl FileIdentity {
    fn of(metadata: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            device: metadata.dev(),
            inode: metadata.ino(),
        }
    }
}

/// What the database path names now, against the file opened.
enum PathCheck {
    /// Still the file opened.
    Same,
    /// Deleted, replaced, or its directory gone: the reason, for good.
    Lost(String),
    /// `stat` failed otherwise (permissions, I/O): not known, maybe passing.
    Unknown(std::io::Error),
}

/// One `stat` of `path` (a few microseconds), compared with `identity`.
fn check_identity(path: &Path, identity: FileIdentity) -> PathCheck {
    let lost = |what: String| {
        PathCheck::Lost(format!(
            "the database file {} was deleted or replaced while the server ran ({what}); \
             nothing written since is kept: restart the server once it is restored",
            path.display()
        ))
    };
    match std::fs::metadata(path) {
        Ok(metadata) if FileIdentity::of(&metadata) == identity => PathCheck::Same,
        Ok(metadata) => lost(format!(
            "the path now names another file: device {} inode {}, opened device {} inode {}",
            metadata.dev(),
            metadata.ino(),
            identity.device,
            identity.inode
        )),
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            lost(format!("the path or its directory is gone: {error}"))
        }
        Err(error) => PathCheck::Unknown(error),
    }
}

/// The writer's trouble, shared with every handle: `write` refuses at once
/// while the writer is down, and [`Storage::health`] reports it.
#[derive(Debug, Default)]
struct WriterHealth {
    /// True while writes are refused (one load on the write path).
    down: AtomicBool,
    trouble: Mutex<Option<Trouble>>,
}

#[derive(Clone, Debug)]
struct Trouble {
    /// For good (the file is lost) or until a reopen succeeds.
    lost: bool,
    /// The last error.
    reason: String,
    /// When the trouble began.
    since: SystemTime,
    /// Reopen attempts that failed so far.
    attempts_failed: u64,
}

impl WriterHealth {
    fn trouble(&self) -> std::sync::MutexGuard<'_, Option<Trouble>> {
        // Nothing panics while holding it; a poisoned one still holds a valid value.
        self.trouble
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The error a write gets while the writer is down; `None` when it is up.
    fn refusal(&self) -> Option<StorageError> {
        if !self.down.load(Ordering::Acquire) {
            return None;
        }
        let trouble = self.trouble().clone()?;
        Some(StorageError::Io(if trouble.lost {
            trouble.reason
        } else {
            format!(
                "storage is recovering after a failed commit: {}",
                trouble.reason
            )
        }))
    }

    /// `Err` with the reason and since when, while there is trouble.
    fn report(&self) -> Result<(), String> {
        let Some(trouble) = self.trouble().clone() else {
            return Ok(());
        };
        let since = humantime::format_rfc3339_seconds(trouble.since);
        if trouble.lost {
            return Err(format!("{} (since {since})", trouble.reason));
        }
        Err(format!(
            "storage is recovering after a failed commit (since {since}, {} reopen attempts \
             failed): {}",
            trouble.attempts_failed, trouble.reason
        ))
    }

    /// The writer is down until a reopen succeeds; keeps when it began.
    // The wall clock only dates the trouble for operators; nothing depends on it.
    #[allow(clippy::disallowed_methods)]
    fn recovering(&self, reason: String, reopen_failed: bool) {
        let mut trouble = self.trouble();
        let previous = trouble.take().filter(|t| !t.lost);
        assert!(trouble.is_none());
        *trouble = Some(Trouble {
            lost: false,
            reason,
            since: previous.as_ref().map_or_else(SystemTime::now, |t| t.since),
            attempts_failed: previous.map_or(0, |t| t.attempts_failed) + u64::from(reopen_failed),
        });
        self.down.store(true, Ordering::Release);
    }

    /// The file is lost: writes are refused until a restart.
    #[allow(clippy::disallowed_methods)]
    fn lost(&self, reason: String) {
        let mut trouble = self.trouble();
        *trouble = Some(Trouble {
            lost: true,
            reason,
            since: SystemTime::now(),
            attempts_failed: 0,
        });
        self.down.store(true, Ordering::Release);
    }

    /// The writer works again; `false` if the file was found lost meanwhile
    /// (by a health check), which no reopen undoes.
    fn recovered(&self) -> bool {
        let mut trouble = self.trouble();
        assert!(trouble.is_some(), "recovered without trouble");
        if trouble.as_ref().is_some_and(|t| t.lost) {
            return false;
        }
        *trouble = None;
        self.down.store(false, Ordering::Release);
        true
    }
}

/// Refuses paths SQLite would open badly: directories, and files the OS marks
/// read-only (SQLite would fall back to read-only, and root ignores the mode).
fn check_path(path: &Path) -> Result<(), StorageError> {
    if path.is_dir() {
        return Err(io_error(
            path,
            "cannot open",
            "the path is a directory, not a database file",
        ));
    }
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.is_dir()
    {
        let reason = format!("its directory {} does not exist", parent.display());
        return Err(io_error(path, "cannot open", reason));
    }
    if let Ok(metadata) = std::fs::metadata(path)
        && metadata.permissions().readonly()
    {
        let reason = "the file is read-only; retrace must be able to write it";
        return Err(io_error(path, "cannot open", reason));
    }
    Ok(())
}

fn open_reader(path: &Path, options: &SqliteOptions) -> Result<Connection, StorageError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags)
        .map_err(|error| io_error(path, "cannot open a reader", error))?;
    let busy_timeout = Duration::from_millis(options.busy_timeout_ms);
    connection
        .busy_timeout(busy_timeout)
        .map_err(|error| io_error(path, "busy_timeout", error))?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_MAX);
    assert!(connection.is_autocommit());
    Ok(connection)
}

/// Reads `PRAGMA user_version`; this only reads the header, so it is the first
/// thing done with a file (a file that is not a database fails here, untouched).
fn schema_version(connection: &Connection) -> rusqlite::Result<i64> {
    connection.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// What the writer needs to open (and reopen) its connection, shared with
/// the handles where it says so.
#[derive(Clone)]
struct WriterSetup {
    path: PathBuf,
    options: SqliteOptions,
    /// The file locked at open: the path must keep naming it.
    identity: FileIdentity,
    /// Shared with the handles.
    counters: Arc<Counters>,
    /// Shared with the handles.
    health: Arc<WriterHealth>,
}

/// The writer thread's connection and what it needs to report errors.
struct Writer {
    connection: Connection,
    setup: WriterSetup,
    /// Set when a commit failed in a way that leaves its outcome unknown:
    /// nothing on this connection is trusted again; the writer reopens.
    failed: bool,
    /// Set when the file at the path is no longer the one opened.
    lost: bool,
}

impl Writer {
    /// Opens the connection; `create`: make the file if it is missing (only
    /// at first open: a reopen must never make an empty database).
    fn open(setup: WriterSetup, create: bool) -> Result<Writer, StorageError> {
        let path_buf = setup.path.clone();
        let path = path_buf.as_path();
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let connection = Connection::open_with_flags(path, flags)
            .map_err(|error| io_error(path, "cannot open", error))?;
        let busy_timeout = Duration::from_millis(setup.options.busy_timeout_ms);
        connection
            .busy_timeout(busy_timeout)
            .map_err(|error| io_error(path, "cannot open", error))?;
        let version = schema_version(&connection)
            .map_err(|error| io_error(path, "cannot read the schema version", error))?;
        let read_only = connection.is_readonly(MAIN_DB).unwrap_or(true);
        if read_only {
            return Err(io_error(
                path,
                "cannot open",
                "SQLite could only open it read-only",
            ));
        }
        check_schema_version(path, version)?;
        check_application(&connection, path, version)?;
        let mut writer = Writer {
            connection,
            setup,
            failed: false,
            lost: false,
        };
        writer.configure()?;
        writer.migrate()?;
        match check_identity(&writer.setup.path, writer.setup.identity) {
            PathCheck::Same => {}
            PathCheck::Lost(reason) => return Err(StorageError::Io(reason)),
            PathCheck::Unknown(error) => return Err(io_error(path, "cannot stat", error)),
        }
        assert!(writer.connection.is_autocommit());
        Ok(writer)
    }

    fn path(&self) -> &Path {
        &self.setup.path
    }

    /// One write transaction that changes nothing (page 1 rewritten as it
    /// is) and commits with its fsync: proves a reopened connection writes.
    fn probe(&self) -> Result<(), StorageError> {
        let fail = |error| io_error(self.path(), "cannot write (probe after a reopen)", error);
        let version = schema_version(&self.connection).map_err(fail)?;
        self.connection
            .execute_batch(&format!(
                "BEGIN IMMEDIATE; PRAGMA user_version = {version}; COMMIT"
            ))
            .map_err(fail)?;
        if !self.connection.is_autocommit() {
            return Err(io_error(self.path(), "probe", "the commit did not end"));
        }
        Ok(())
    }

    /// WAL, fsync on every commit, foreign keys. Only called once the file is
    /// known to be a database of a schema version this build knows.
    fn configure(&self) -> Result<(), StorageError> {
        let path = self.path();
        let mode: String = self
            .connection
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|error| io_error(path, "cannot switch to WAL", error))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(io_error(
                path,
                "cannot switch to WAL",
                format!("journal mode is {mode}"),
            ));
        }
        let pragmas = [("synchronous", "FULL"), ("foreign_keys", "ON")];
        for (name, value) in pragmas {
            self.connection
                .pragma_update(None, name, value)
                .map_err(|error| io_error(path, &format!("cannot set {name}"), error))?;
        }
        self.connection
            .set_prepared_statement_cache_capacity(STATEMENT_CACHE_MAX);
        Ok(())
    }

    /// Applies the migrations the file lacks, one transaction each. Re-reads the
    /// version inside each transaction, so two processes opening a fresh file
    /// at once do not both apply a migration.
    fn migrate(&mut self) -> Result<(), StorageError> {
        let path = self.setup.path.clone();
        let fail = |error: rusqlite::Error| io_error(&path, "cannot migrate the schema", error);
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            let version_target = i64::try_from(index + 1).expect("migration count fits i64");
            let transaction = self
                .connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(fail)?;
            let version = schema_version(&transaction).map_err(fail)?;
            check_schema_version(&path, version)?;
            if version >= version_target {
                continue; // Dropping the transaction rolls back nothing done.
            }
            assert_eq!(version + 1, version_target, "migrations apply in order");
            transaction.execute_batch(migration).map_err(fail)?;
            transaction
                .pragma_update(None, "user_version", version_target)
                .map_err(fail)?;
            transaction.commit().map_err(fail)?;
        }
        let version = schema_version(&self.connection).map_err(fail)?;
        assert_eq!(version, i64::from(SqliteStorage::SCHEMA_VERSION));
        Ok(())
    }
}

/// Refuses SQLite databases of other programs: one marked with another
/// application id, or one that has tables but no retrace schema version.
fn check_application(
    connection: &Connection,
    path: &Path,
    version: i64,
) -> Result<(), StorageError> {
    let fail = |error| io_error(path, "cannot read the schema", error);
    let application_id: i64 = connection
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(fail)?;
    if application_id != 0 && application_id != APPLICATION_ID {
        let reason = format!(
            "application id {application_id:#x} is not retrace's; it belongs to another program"
        );
        return Err(io_error(path, "cannot open", reason));
    }
    let objects: i64 = connection
        .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
        .map_err(fail)?;
    if version == 0 && objects > 0 {
        let reason = "it has tables but no retrace schema version; it belongs to another program";
        return Err(io_error(path, "cannot open", reason));
    }
    Ok(())
}

fn check_schema_version(path: &Path, version: i64) -> Result<(), StorageError> {
    let supported = SqliteStorage::SCHEMA_VERSION;
    if version < 0 {
        let reason =
            format!("schema version {version} is negative; this is not a retrace database");
        return Err(io_error(path, "cannot open", reason));
    }
    if version > i64::from(supported) {
        return Err(StorageError::Io(format!(
            "database {} has schema version {version}, newer than this build supports \
             ({supported}); upgrade retrace",
            path.display()
        )));
    }
    Ok(())
}

/// What the writer thread does with a batch: the batch, its events already
/// encoded as JSON by the caller (so encoding runs on many threads, not the
/// writer), and where to send the outcome.
struct WriteJob {
    batch: WriteBatch,
    /// The batch's events as one JSON array; `None` if it has none.
    events: Option<String>,
    /// The buffered events it appends as one JSON array; `None` if none.
    buffered: Option<String>,
    /// The events of the batch's next run (continue-as-new), encoded the same way.
    next_events: Option<String>,
    /// The bytes the batch writes (event bodies and state), for the group bound.
    size_bytes: usize,
    reply: oneshot::Sender<Result<(), StorageError>>,
}

/// A read, run on one of the reader threads.
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// The writer and reader threads; dropping joins them (their queues must be
/// closed first, see [`Inner`]).
struct Threads {
    handles: Vec<JoinHandle<()>>,
}

impl Drop for Threads {
    fn drop(&mut self) {
        for handle in self.handles.drain(..) {
            let name = handle
                .thread()
                .name()
                .unwrap_or("sqlite storage")
                .to_string();
            if handle.join().is_err() {
                tracing::error!(thread = %name, "sqlite storage thread panicked");
            }
        }
    }
}

/// Starts the writer and the readers, and hands back the storage that feeds them.
// The one place this module starts OS threads: SQLite calls block, and the
// Env's Spawner runs async tasks, which must never block. clippy.toml bans
// thread spawning in core code; src/env's production implementations opt out.
#[allow(clippy::disallowed_methods)]
fn spawn_threads(
    writer: Writer,
    readers: Vec<Connection>,
    lock: File,
) -> Result<SqliteStorage, StorageError> {
    let options = writer.setup.options;
    let path = writer.setup.path.clone();
    assert_eq!(readers.len(), options.reader_count);
    let counters = Arc::clone(&writer.setup.counters);
    let health = Arc::clone(&writer.setup.health);
    let identity = writer.setup.identity;
    let mut threads = Threads {
        handles: Vec::with_capacity(1 + readers.len()),
    };
    let (write_sender, write_receiver) = mpsc::channel(options.write_queue_max);
    let (read_sender, read_receiver) = mpsc::channel(options.read_queue_max);
    let read_receiver = Arc::new(Mutex::new(read_receiver));
    let spawned = std::thread::Builder::new()
        .name("retrace-sqlite-writer".to_string())
        .spawn(move || writer_loop(writer, write_receiver));
    let mut result = spawned.map(|handle| threads.handles.push(handle));
    for (index, connection) in readers.into_iter().enumerate() {
        if result.is_err() {
            break;
        }
        let receiver = Arc::clone(&read_receiver);
        let spawned = std::thread::Builder::new()
            .name(format!("retrace-sqlite-reader-{index}"))
            .spawn(move || reader_loop(connection, receiver));
        result = result.and_then(|()| spawned.map(|handle| threads.handles.push(handle)));
    }
    if let Err(error) = result {
        // Close the queues before `threads` drops and joins what did start.
        drop(write_sender);
        drop(read_sender);
        return Err(io_error(&path, "cannot start a storage thread", error));
    }
    assert_eq!(threads.handles.len(), 1 + options.reader_count);
    let inner = Inner {
        path,
        write_sender,
        read_sender,
        counters,
        health,
        identity,
        threads,
        lock,
    };
    Ok(SqliteStorage {
        inner: Arc::new(inner),
    })
}

fn reader_loop(connection: Connection, receiver: Arc<Mutex<mpsc::Receiver<ReadJob>>>) {
    loop {
        let job = match receiver.lock() {
            Ok(mut receiver) => receiver.blocking_recv(),
            Err(_) => return, // Another reader panicked while waiting: stop too.
        };
        let Some(job) = job else {
            return; // Every handle is gone.
        };
        job(&connection);
        assert!(connection.is_autocommit(), "a read left a transaction open");
    }
}

fn writer_loop(mut writer: Writer, mut receiver: mpsc::Receiver<WriteJob>) {
    let options = writer.setup.options;
    let mut group: Vec<WriteJob> = Vec::with_capacity(options.group_commit_batches_max);
    // A job that would have taken its group over the byte bound starts the next.
    let mut carried: Option<WriteJob> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match receiver.blocking_recv() {
                Some(job) => job,
                None => return, // Every handle is gone and the queue is drained.
            },
        };
        assert!(group.is_empty());
        let mut group_bytes = first.size_bytes;
        group.push(first);
        while group.len() < options.group_commit_batches_max {
            let Ok(job) = receiver.try_recv() else {
                break; // Empty (or closed: answer this group first).
            };
            if group_bytes + job.size_bytes > options.group_commit_bytes_max {
                carried = Some(job);
                break;
            }
            group_bytes += job.size_bytes;
            group.push(job);
        }
        assert!(group.len() == 1 || group_bytes <= options.group_commit_bytes_max);
        let results = writer.commit_group(&group);
        assert_eq!(results.len(), group.len());
        for (job, result) in group.drain(..).zip(results) {
            // A caller that stopped waiting does not need its answer.
            let _ = job.reply.send(result);
        }
        if writer.lost {
            refuse_until_closed(&writer.setup.health, carried, &mut receiver);
            return;
        }
        if writer.failed {
            let setup = writer.setup.clone();
            drop(writer); // Nothing on this connection is trusted again.
            let Some(reopened) = recover(&setup, carried.take(), &mut receiver) else {
                return;
            };
            writer = reopened;
        }
    }
}

/// Answers `job` with the error writes get while the writer is down.
fn refuse(health: &WriterHealth, job: WriteJob) {
    let error = health.refusal().unwrap_or_else(stopped);
    // A caller that stopped waiting does not need its answer.
    let _ = job.reply.send(Err(error));
}

/// The file is lost: refuses every write until every handle is gone.
fn refuse_until_closed(
    health: &WriterHealth,
    carried: Option<WriteJob>,
    receiver: &mut mpsc::Receiver<WriteJob>,
) {
    assert!(health.refusal().is_some());
    carried.into_iter().for_each(|job| refuse(health, job));
    while let Some(job) = receiver.blocking_recv() {
        refuse(health, job);
    }
}

/// After a failed commit, with the old connection dropped: reopens the file as
/// a restart would, waiting `RECOVERY_BACKOFF_MS_MIN` doubling up to
/// `RECOVERY_BACKOFF_MS_MAX` between attempts and refusing writes meanwhile.
/// `None`: every handle is gone, or the file is lost (then writes were
/// refused until every handle was gone).
fn recover(
    setup: &WriterSetup,
    carried: Option<WriteJob>,
    receiver: &mut mpsc::Receiver<WriteJob>,
) -> Option<Writer> {
    let health = &setup.health;
    assert!(health.refusal().is_some(), "recovering without trouble");
    carried.into_iter().for_each(|job| refuse(health, job));
    let mut backoff_ms = RECOVERY_BACKOFF_MS_MIN;
    loop {
        assert!(backoff_ms <= RECOVERY_BACKOFF_MS_MAX);
        if !wait_refusing(health, receiver, backoff_ms) {
            return None;
        }
        match reopen(setup) {
            Ok(writer) => {
                if !health.recovered() {
                    drop(writer); // A health check found the file lost meanwhile.
                    refuse_until_closed(health, None, receiver);
                    return None;
                }
                let path = setup.path.display();
                tracing::warn!(%path, "sqlite storage: the writer reopened the database and writes again");
                assert!(!writer.failed && !writer.lost);
                return Some(writer);
            }
            Err(Reopen::Lost(reason)) => {
                tracing::error!(%reason, "sqlite storage: the database file is lost; every write is refused");
                health.lost(reason);
                refuse_until_closed(health, None, receiver);
                return None;
            }
            Err(Reopen::Failed(error)) => {
                let path = setup.path.display();
                tracing::warn!(%error, %path, backoff_ms, "sqlite storage: reopening failed; retrying");
                let reason = match error {
                    StorageError::Io(message) => message,
                    other => other.to_string(),
                };
                health.recovering(reason, true);
                backoff_ms = (backoff_ms * 2).min(RECOVERY_BACKOFF_MS_MAX);
            }
        }
    }
}

enum Reopen {
    /// The path no longer names the file opened: never reopen it.
    Lost(String),
    /// Not yet: try again later.
    Failed(StorageError),
}

/// Opens the writer's connection again, if the path still names the file
/// opened at first, and proves it writes.
fn reopen(setup: &WriterSetup) -> Result<Writer, Reopen> {
    match check_identity(&setup.path, setup.identity) {
        PathCheck::Same => {}
        PathCheck::Lost(reason) => return Err(Reopen::Lost(reason)),
        PathCheck::Unknown(error) => {
            return Err(Reopen::Failed(io_error(&setup.path, "cannot stat", error)));
        }
    }
    let writer = Writer::open(setup.clone(), false).map_err(Reopen::Failed)?;
    writer.probe().map_err(Reopen::Failed)?;
    Ok(writer)
}

/// Sleeps `wait_ms`, refusing writes that reach the queue meanwhile; `false`
/// if every handle is gone.
// Real time: the writer is an OS thread waiting on a real disk.
#[allow(clippy::disallowed_methods)]
fn wait_refusing(
    health: &WriterHealth,
    receiver: &mut mpsc::Receiver<WriteJob>,
    wait_ms: u64,
) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_millis(wait_ms);
    loop {
        loop {
            match receiver.try_recv() {
                Ok(job) => refuse(health, job),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return true;
        }
        let slice = Duration::from_millis(DOWN_POLL_MS_MAX).min(deadline - now);
        std::thread::sleep(slice);
    }
}

/// Why a statement failed: SQLite itself, or the storage refusing the data.
#[derive(Debug)]
enum DbError {
    Sqlite(rusqlite::Error),
    Storage(StorageError),
}

impl From<rusqlite::Error> for DbError {
    fn from(error: rusqlite::Error) -> Self {
        DbError::Sqlite(error)
    }
}

impl DbError {
    fn into_storage(self, path: &Path, doing: &str) -> StorageError {
        match self {
            DbError::Sqlite(error) => io_error(path, doing, error),
            DbError::Storage(error) => error,
        }
    }
}

fn corrupt(reason: String) -> DbError {
    DbError::Storage(StorageError::Corrupt(reason))
}

/// The outcome of one batch inside a group, or the whole group's failure.
type BatchOutcome = Result<Result<(), StorageError>, StorageError>;

impl Writer {
    /// Applies `group` in one transaction, each batch in its own savepoint, and
    /// commits once. Returns one result per batch, in order.
    fn commit_group(&mut self, group: &[WriteJob]) -> Vec<Result<(), StorageError>> {
        assert!(!group.is_empty());
        assert!(group.len() <= self.setup.options.group_commit_batches_max);
        assert!(self.connection.is_autocommit());
        assert!(!self.failed && !self.lost);
        if let Err(error) = run_cached(&self.connection, "BEGIN IMMEDIATE") {
            let error = io_error(self.path(), "cannot begin a transaction", error);
            return self.abort_group(group.len(), error);
        }
        let mut results = Vec::with_capacity(group.len());
        for job in group {
            match self.apply_in_savepoint(job) {
                Ok(result) => results.push(result),
                Err(error) => return self.abort_group(group.len(), error),
            }
        }
        if let Err(error) = self.check_file() {
            return self.abort_group(group.len(), error);
        }
        if let Err(error) = run_cached(&self.connection, "COMMIT") {
            return self.commit_failed(group.len(), error);
        }
        assert!(self.connection.is_autocommit());
        assert_eq!(results.len(), group.len());
        let written = results.iter().filter(|result| result.is_ok()).count() as u64;
        if written > 0 {
            // Batches first, and Release: a reader that sees this commit sees its batches.
            let counters = &self.setup.counters;
            counters
                .batches_written
                .fetch_add(written, Ordering::Relaxed);
            counters.commits.fetch_add(1, Ordering::Release);
        }
        results
    }

    /// Before a commit: the path must still name the file opened (one `stat`,
    /// measured at about 1 µs). If the file was deleted or replaced, a commit
    /// would go to a file nobody will open again: the writer refuses every
    /// write from now on and health says why.
    fn check_file(&mut self) -> Result<(), StorageError> {
        match check_identity(self.path(), self.setup.identity) {
            PathCheck::Same => Ok(()),
            PathCheck::Lost(reason) => {
                tracing::error!(%reason, "sqlite storage: the database file is lost; every write is refused");
                self.lost = true;
                self.setup.health.lost(reason.clone());
                Err(StorageError::Io(reason))
            }
            PathCheck::Unknown(error) => Err(io_error(self.path(), "cannot stat", error)),
        }
    }

    /// A failed `COMMIT`. Busy: nothing was written, the group gets `Io`. Any
    /// other failure (an fsync error, a full disk) may have left the commit
    /// record in the WAL, to be recovered on the next open: the group gets
    /// `Timeout` (outcome unknown), and as after a failed fsync nothing on this
    /// connection can be trusted (PostgreSQL's "fsyncgate"), the writer drops
    /// it and reopens the file (see [`recover`]), refusing writes until then.
    fn commit_failed(
        &mut self,
        count: usize,
        error: rusqlite::Error,
    ) -> Vec<Result<(), StorageError>> {
        assert!(count > 0);
        let busy = error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy);
        let reason = format!("database {}: cannot commit: {error}", self.path().display());
        if busy {
            return self.abort_group(count, StorageError::Io(reason));
        }
        let path = self.path().display();
        tracing::error!(%error, %path, "sqlite storage: commit failed; the writer reopens the database");
        if !self.connection.is_autocommit()
            && let Err(rollback) = self.connection.execute_batch("ROLLBACK")
        {
            // The connection is dropped anyway.
            tracing::warn!(%rollback, "sqlite storage: rollback after a failed commit failed");
        }
        self.failed = true;
        self.setup.health.recovering(reason, false);
        vec![Err(StorageError::Timeout); count]
    }

    /// Rolls the transaction back (if SQLite has not already) and gives every
    /// batch of the group `error`: none of them is stored.
    fn abort_group(&mut self, count: usize, error: StorageError) -> Vec<Result<(), StorageError>> {
        assert!(count > 0);
        if !self.connection.is_autocommit()
            && let Err(rollback) = self.connection.execute_batch("ROLLBACK")
        {
            tracing::error!(%rollback, "sqlite storage: rollback failed");
        }
        assert!(
            self.connection.is_autocommit(),
            "the writer could not roll back"
        );
        tracing::warn!(%error, count, "sqlite storage: group commit failed");
        vec![Err(error); count]
    }

    /// Applies one batch inside a savepoint. `Ok(Err(..))`: the batch alone was
    /// refused and rolled back; `Err(..)`: the whole transaction is lost.
    fn apply_in_savepoint(&mut self, job: &WriteJob) -> BatchOutcome {
        assert!(!self.connection.is_autocommit());
        let path = self.setup.path.clone();
        // Prepared once and cached: parsing these on every batch cost more than
        // the writes themselves under load.
        let savepoint = |sql: &str| {
            let fail = |error| io_error(&path, &format!("cannot run {sql}"), error);
            let mut statement = self.connection.prepare_cached(sql).map_err(fail)?;
            statement.execute([]).map(drop).map_err(fail)
        };
        savepoint("SAVEPOINT batch")?;
        let outcome = apply_batch(&self.connection, job);
        let refused = match outcome {
            Ok(()) => {
                savepoint("RELEASE batch")?;
                return Ok(Ok(()));
            }
            Err(DbError::Storage(error)) => error,
            Err(DbError::Sqlite(error)) => {
                let doing = format!("cannot write run {}", job.batch.run.run_id);
                let error = io_error(&path, &doing, error);
                if self.connection.is_autocommit() {
                    return Err(error); // SQLite rolled the whole transaction back.
                }
                error
            }
        };
        savepoint("ROLLBACK TO batch")?;
        savepoint("RELEASE batch")?;
        assert!(!self.connection.is_autocommit());
        Ok(Err(refused))
    }
}

/// Runs a parameterless statement through the statement cache.
fn run_cached(connection: &Connection, sql: &str) -> rusqlite::Result<()> {
    connection.prepare_cached(sql)?.execute([]).map(drop)
}

/// Checks `job`'s batch against the rows as they are inside the transaction,
/// then writes the run, its new events and its workflow id claim.
fn apply_batch(connection: &Connection, job: &WriteJob) -> Result<(), DbError> {
    let batch = &job.batch;
    apply_run(
        connection,
        batch,
        job.events.as_deref(),
        job.buffered.as_deref(),
    )?;
    if let Some(next) = &batch.next_run {
        // Checked after the first: the workflow id is still the first run's.
        apply_run(connection, next, job.next_events.as_deref(), None)?;
    }
    Ok(())
}

/// One run's part of a batch: checks it against the rows, then writes it.
fn apply_run(
    connection: &Connection,
    batch: &WriteBatch,
    events: Option<&str>,
    buffered: Option<&str>,
) -> Result<(), DbError> {
    assert_eq!(events.is_some(), !batch.events.is_empty());
    assert!(!connection.is_autocommit());
    let run_id = &batch.run.run_id;
    let stored = select_run_header(connection, run_id)?;
    let current = match &batch.claim {
        Some(claim) => select_current_run(connection, &claim.workflow_id)?,
        None => None,
    };
    check_batch(batch, stored.as_ref(), current.as_deref()).map_err(DbError::Storage)?;
    upsert_run(connection, &batch.run)?;
    let indexed = stored.as_ref().map(|run| &run.search_attributes);
    if indexed.unwrap_or(&Default::default()) != &batch.run.search_attributes {
        index_search_attributes(connection, &batch.run)?;
    }
    if let Some(events) = events {
        insert_events(connection, batch, events)?;
    }
    if let Some(claim) = &batch.claim {
        upsert_claim(connection, claim, run_id)?;
    }
    if batch.buffered.clear {
        run_cached_with(
            connection,
            "DELETE FROM buffered_events WHERE run_id = ?1",
            run_id,
        )?;
    }
    if let Some(buffered) = buffered {
        insert_buffered(connection, run_id, buffered)?;
    }
    assert!(!connection.is_autocommit());
    Ok(())
}

/// Runs a statement with the run id as its one parameter, through the cache.
fn run_cached_with(connection: &Connection, sql: &str, run_id: &str) -> rusqlite::Result<()> {
    connection.prepare_cached(sql)?.execute([run_id]).map(drop)
}

/// Appends one row of buffered events after the run's last.
fn insert_buffered(connection: &Connection, run_id: &str, events: &str) -> Result<(), DbError> {
    let mut statement = connection.prepare_cached(
        "INSERT INTO buffered_events (run_id, seq, events) VALUES (?1, \
             (SELECT coalesce(max(seq), 0) + 1 FROM buffered_events WHERE run_id = ?1), ?2)",
    )?;
    let inserted = statement.execute(rusqlite::params![run_id, events])?;
    assert_eq!(inserted, 1);
    Ok(())
}

/// The run's record version and buffered events, in one read transaction.
fn select_buffered(connection: &Connection, run_id: &str) -> Result<BufferedRead, DbError> {
    let transaction = connection.unchecked_transaction()?;
    let version = match select_run_header(&transaction, run_id)? {
        Some(run) => Some(run.version),
        None => None,
    };
    let mut statement = transaction
        .prepare_cached("SELECT seq, events FROM buffered_events WHERE run_id = ?1 ORDER BY seq")?;
    let mut rows = statement.query([run_id])?;
    let mut events = Vec::new();
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let json: String = row.get(1)?;
        let batch: Vec<EventKind> = serde_json::from_str(&json).map_err(|error| {
            corrupt(format!(
                "run {run_id}: buffered events row {seq}: bad JSON: {error}"
            ))
        })?;
        events.extend(batch);
    }
    drop(rows);
    drop(statement);
    transaction.commit()?;
    Ok(BufferedRead { version, events })
}

/// A u64 as SQLite's i64, or a `BadBatch` naming the field.
fn to_stored(run_id: &str, field: &str, value: u64) -> Result<i64, DbError> {
    i64::try_from(value).map_err(|_| {
        DbError::Storage(StorageError::BadBatch {
            run_id: run_id.to_string(),
            reason: format!(
                "{field} {value} is over the largest storable value {}",
                i64::MAX
            ),
        })
    })
}

/// An i64 read back as u64, or `Corrupt` naming the run and the column.
fn from_stored(run_id: &str, column: &str, value: i64) -> Result<u64, DbError> {
    u64::try_from(value).map_err(|_| {
        corrupt(format!(
            "run {run_id}: column {column} holds negative {value}"
        ))
    })
}

fn upsert_run(connection: &Connection, run: &RunRecord) -> Result<(), DbError> {
    let id = &run.run_id;
    let start_time_ms = to_stored(id, "start_time", run.start_time.as_millis())?;
    let close_time_ms = match run.close_time {
        Some(time) => Some(to_stored(id, "close_time", time.as_millis())?),
        None => None,
    };
    let next_event_id = to_stored(id, "next_event_id", run.next_event_id)?;
    let version = to_stored(id, "version", run.version)?;
    let mut statement = connection.prepare_cached(
        "INSERT INTO runs (run_id, workflow_id, workflow_type, task_queue, status, \
             start_time_ms, close_time_ms, next_event_id, version, state, search_attributes) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
         ON CONFLICT (run_id) DO UPDATE SET workflow_id = excluded.workflow_id, \
             workflow_type = excluded.workflow_type, task_queue = excluded.task_queue, \
             status = excluded.status, start_time_ms = excluded.start_time_ms, \
             close_time_ms = excluded.close_time_ms, next_event_id = excluded.next_event_id, \
             version = excluded.version, state = excluded.state, \
             search_attributes = excluded.search_attributes",
    )?;
    let changed = statement.execute(rusqlite::params![
        id,
        run.workflow_id,
        run.workflow_type,
        run.task_queue,
        run.status.as_str(),
        start_time_ms,
        close_time_ms,
        next_event_id,
        version,
        run.state,
        crate::visibility::encode_index(&run.search_attributes),
    ])?;
    assert_eq!(changed, 1);
    Ok(())
}

/// Rewrites the run's indexed search attributes (one row per value).
fn index_search_attributes(connection: &Connection, run: &RunRecord) -> Result<(), DbError> {
    run_cached_with(
        connection,
        "DELETE FROM search_attributes WHERE run_id = ?1",
        &run.run_id,
    )?;
    let mut statement = connection.prepare_cached(
        "INSERT INTO search_attributes (run_id, ord, name, kind, s_value, i_value, d_value) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for (ord, (name, kind, s, i, d)) in crate::visibility::index_rows(&run.search_attributes)
        .into_iter()
        .enumerate()
    {
        let ord = i64::try_from(ord).expect("a run's rows are few");
        statement.execute(rusqlite::params![run.run_id, ord, name, kind, s, i, d])?;
    }
    Ok(())
}

/// The batch's events, one row for all of them: one statement, one index
/// entry and one foreign key check per batch instead of per event (the writer
/// spent most of its statements here).
fn insert_events(connection: &Connection, batch: &WriteBatch, events: &str) -> Result<(), DbError> {
    let run_id = &batch.run.run_id;
    let (Some(first), Some(last)) = (batch.events.first(), batch.events.last()) else {
        unreachable!("a batch without events has no events row");
    };
    let first_event_id = to_stored(run_id, "event_id", first.event_id)?;
    let last_event_id = to_stored(run_id, "event_id", last.event_id)?;
    let mut statement = connection.prepare_cached(
        "INSERT INTO event_batches (run_id, first_event_id, last_event_id, events) \
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    let params = rusqlite::params![run_id, first_event_id, last_event_id, events];
    let inserted = statement.execute(params)?;
    assert_eq!(inserted, 1);
    Ok(())
}

fn upsert_claim(
    connection: &Connection,
    claim: &WorkflowIdClaim,
    run_id: &str,
) -> Result<(), DbError> {
    let mut statement = connection.prepare_cached(
        "INSERT INTO workflow_ids (workflow_id, run_id) VALUES (?1, ?2) \
         ON CONFLICT (workflow_id) DO UPDATE SET run_id = excluded.run_id",
    )?;
    let changed = statement.execute(rusqlite::params![claim.workflow_id, run_id])?;
    assert_eq!(changed, 1);
    Ok(())
}

fn select_run(connection: &Connection, run_id: &str) -> Result<Option<RunRecord>, DbError> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?1");
    let mut statement = connection.prepare_cached(&sql)?;
    let mut rows = statement.query([run_id])?;
    let run = match rows.next()? {
        Some(row) => Some(run_from_row(row)?),
        None => None,
    };
    assert!(run.as_ref().is_none_or(|run| run.run_id == run_id));
    Ok(run)
}

/// The run's record without its state (empty): what [`check_batch`] compares.
/// Copying the state blob out on every write cost the writer more than its
/// comparison needs.
fn select_run_header(connection: &Connection, run_id: &str) -> Result<Option<RunRecord>, DbError> {
    let mut statement = connection.prepare_cached(
        "SELECT run_id, workflow_id, workflow_type, task_queue, status, start_time_ms, \
             close_time_ms, next_event_id, version, X'', search_attributes FROM runs \
         WHERE run_id = ?1",
    )?;
    let mut rows = statement.query([run_id])?;
    let run = match rows.next()? {
        Some(row) => Some(run_from_row(row)?),
        None => None,
    };
    assert!(
        run.as_ref()
            .is_none_or(|run| run.run_id == run_id && run.state.is_empty())
    );
    Ok(run)
}

fn select_current_run(
    connection: &Connection,
    workflow_id: &str,
) -> Result<Option<String>, DbError> {
    let mut statement =
        connection.prepare_cached("SELECT run_id FROM workflow_ids WHERE workflow_id = ?1")?;
    Ok(statement
        .query_row([workflow_id], |row| row.get(0))
        .optional()?)
}

/// Decodes a `runs` row selected with [`RUN_COLUMNS`].
fn run_from_row(row: &Row<'_>) -> Result<RunRecord, DbError> {
    let run_id: String = row.get(0)?;
    let status_text: String = row.get(4)?;
    let Some(status) = RunStatus::parse(&status_text) else {
        return Err(corrupt(format!(
            "run {run_id}: unknown status {status_text:?}"
        )));
    };
    let start_time_ms = from_stored(&run_id, "start_time_ms", row.get(5)?)?;
    let close_time_ms = match row.get::<_, Option<i64>>(6)? {
        Some(value) => Some(from_stored(&run_id, "close_time_ms", value)?),
        None => None,
    };
    let next_event_id = from_stored(&run_id, "next_event_id", row.get(7)?)?;
    let version = from_stored(&run_id, "version", row.get(8)?)?;
    if next_event_id == 0 || version == 0 {
        return Err(corrupt(format!(
            "run {run_id}: next_event_id and version start at 1"
        )));
    }
    let search_attributes: String = row.get(10)?;
    let search_attributes = crate::visibility::decode_index(&search_attributes)
        .map_err(|reason| corrupt(format!("run {run_id}: {reason}")))?;
    Ok(RunRecord {
        search_attributes,
        workflow_id: row.get(1)?,
        workflow_type: row.get(2)?,
        task_queue: row.get(3)?,
        status,
        start_time: Timestamp(start_time_ms),
        close_time: close_time_ms.map(Timestamp),
        next_event_id,
        version,
        state: row.get(9)?,
        run_id,
    })
}

/// Up to `limit` events of `run_id` from `from_event_id` on, from the batch
/// that holds `from_event_id` forward; checks each batch decodes, holds the
/// ids its row says, and that no id is missing.
fn select_events(
    connection: &Connection,
    run_id: &str,
    from_event_id: u64,
    limit: usize,
) -> Result<Vec<Event>, DbError> {
    let from_event_id = from_event_id.max(1);
    let Ok(from_stored_id) = i64::try_from(from_event_id) else {
        return Ok(Vec::new()); // Past any storable id.
    };
    let mut statement = connection.prepare_cached(
        "SELECT first_event_id, last_event_id, events FROM event_batches \
         WHERE run_id = ?1 AND first_event_id >= coalesce((SELECT first_event_id \
             FROM event_batches WHERE run_id = ?1 AND first_event_id <= ?2 \
             ORDER BY first_event_id DESC LIMIT 1), ?2) \
         ORDER BY first_event_id",
    )?;
    let mut rows = statement.query(rusqlite::params![run_id, from_stored_id])?;
    let mut events: Vec<Event> = Vec::new();
    while events.len() < limit {
        let Some(row) = rows.next()? else { break };
        let first = from_stored(run_id, "first_event_id", row.get(0)?)?;
        let last = from_stored(run_id, "last_event_id", row.get(1)?)?;
        let json: String = row.get(2)?;
        let batch = decode_batch(run_id, first, last, &json)?;
        for event in batch {
            if event.event_id < from_event_id || events.len() == limit {
                continue;
            }
            let expected = from_event_id + events.len() as u64;
            if event.event_id != expected {
                return Err(corrupt(format!(
                    "run {run_id}: event {expected} is missing"
                )));
            }
            events.push(event);
        }
    }
    assert!(events.len() <= limit);
    Ok(events)
}

/// The events of one stored batch, checked to be exactly `first..=last`.
fn decode_batch(run_id: &str, first: u64, last: u64, json: &str) -> Result<Vec<Event>, DbError> {
    let batch: Vec<Event> = serde_json::from_str(json).map_err(|error| {
        corrupt(format!(
            "run {run_id} events {first}..={last}: bad JSON: {error}"
        ))
    })?;
    let ids_match = batch
        .iter()
        .zip(first..)
        .all(|(event, expected)| event.event_id == expected);
    if !ids_match || first + batch.len() as u64 != last + 1 {
        let ids: Vec<u64> = batch.iter().map(|e| e.event_id).collect();
        return Err(corrupt(format!(
            "run {run_id} events {first}..={last}: the row holds events {ids:?}"
        )));
    }
    Ok(batch)
}

/// Runs matching `query`, in its order. Only the filters present go in the
/// SQL, so SQLite can use the status and workflow type indexes; a list query
/// is translated to parameterized SQL ([`crate::visibility::sql`]),.
fn select_runs(connection: &Connection, query: &ListQuery) -> Result<Vec<RunRecord>, DbError> {
    use crate::visibility::sql::{Dialect, SqlParam, list_statement};
    let statement = list_statement(Dialect::Sqlite, RUN_COLUMNS, query);
    let values: Vec<SqlValue> = statement
        .params
        .into_iter()
        .map(|param| match param {
            SqlParam::Text(text) => SqlValue::Text(text),
            SqlParam::Int(int) => SqlValue::Integer(int),
            SqlParam::Double(double) => SqlValue::Real(double),
        })
        .collect();
    // A list query's statement is prepared uncached: its shapes are the users'.
    match query.query {
        None => read_runs(
            &mut *connection.prepare_cached(&statement.sql)?,
            values,
            query,
        ),
        Some(_) => read_runs(&mut connection.prepare(&statement.sql)?, values, query),
    }
}

fn read_runs(
    statement: &mut rusqlite::Statement<'_>,
    values: Vec<SqlValue>,
    query: &ListQuery,
) -> Result<Vec<RunRecord>, DbError> {
    let mut rows = statement.query(rusqlite::params_from_iter(values))?;
    let mut runs: Vec<RunRecord> = Vec::new();
    while let Some(row) = rows.next()? {
        let run = run_from_row(row)?;
        let ordered_by_id = query.query.as_ref().is_none_or(|q| q.order_by.is_none());
        assert!(!ordered_by_id || runs.last().is_none_or(|last| last.run_id < run.run_id));
        assert!(query.status.is_none_or(|status| status == run.status));
        runs.push(run);
    }
    assert!(runs.len() <= query.limit);
    Ok(runs)
}

/// The batch's events as one JSON array, in order (`None` if it has none);
/// done by the caller so the writer only writes.
pub(super) fn encode_events(batch: &WriteBatch) -> Result<Option<String>, StorageError> {
    if batch.events.is_empty() {
        return Ok(None);
    }
    let mut events = Vec::with_capacity(256 * batch.events.len());
    events.push(b'[');
    for (index, event) in batch.events.iter().enumerate() {
        if index > 0 {
            events.push(b',');
        }
        serde_json::to_writer(&mut events, event).map_err(|error| StorageError::BadBatch {
            run_id: batch.run.run_id.clone(),
            reason: format!("event {} does not encode as JSON: {error}", event.event_id),
        })?;
    }
    events.push(b']');
    Ok(Some(
        String::from_utf8(events).expect("serde_json writes UTF-8"),
    ))
}

/// The buffered events the batch appends as one JSON array (`None` if none).
pub(super) fn encode_buffered(batch: &WriteBatch) -> Result<Option<String>, StorageError> {
    let append = &batch.buffered.append;
    if append.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(append)
        .map(Some)
        .map_err(|error| StorageError::BadBatch {
            run_id: batch.run.run_id.clone(),
            reason: format!("buffered events do not encode as JSON: {error}"),
        })
}

impl Storage for SqliteStorage {
    fn write(&self, batch: WriteBatch) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            if let Some(error) = self.inner.health.refusal() {
                return Err(error); // The writer is down: answer now, do not queue.
            }
            if batch.fence.is_some() {
                return Err(StorageError::BadBatch {
                    run_id: batch.run.run_id.clone(),
                    reason: "fenced for a cluster, but SQLite serves one server and has no \
                             shards; a cluster needs Postgres"
                        .to_string(),
                });
            }
            let events = encode_events(&batch)?;
            let buffered = encode_buffered(&batch)?;
            let next_events = match &batch.next_run {
                Some(next) => encode_events(next)?,
                None => None,
            };
            let (reply, answer) = oneshot::channel();
            let size_bytes = batch.run.state.len()
                + batch
                    .next_run
                    .as_ref()
                    .map_or(0, |next| next.run.state.len())
                + [&events, &buffered, &next_events]
                    .iter()
                    .map(|encoded| encoded.as_ref().map_or(0, String::len))
                    .sum::<usize>();
            let job = WriteJob {
                batch,
                events,
                buffered,
                next_events,
                size_bytes,
                reply,
            };
            self.inner
                .write_sender
                .send(job)
                .await
                .map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        })
    }

    fn read_run(&self, run_id: &str) -> BoxFuture<'_, Result<Option<RunRecord>, StorageError>> {
        let run_id = run_id.to_string();
        let doing = format!("cannot read run {run_id}");
        self.read(doing, move |connection| select_run(connection, &run_id))
    }

    fn current_run(
        &self,
        workflow_id: &str,
    ) -> BoxFuture<'_, Result<Option<String>, StorageError>> {
        let workflow_id = workflow_id.to_string();
        let doing = format!("cannot read workflow id {workflow_id:?}");
        self.read(doing, move |connection| {
            select_current_run(connection, &workflow_id)
        })
    }

    fn read_events(
        &self,
        run_id: &str,
        from_event_id: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Event>, StorageError>> {
        let run_id = run_id.to_string();
        let doing = format!("cannot read the events of run {run_id}");
        self.read(doing, move |connection| {
            select_events(connection, &run_id, from_event_id, limit)
        })
    }

    fn list_runs(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<RunRecord>, StorageError>> {
        let doing = "cannot list runs".to_string();
        self.read(doing, move |connection| select_runs(connection, &query))
    }

    fn read_buffered(&self, run_id: &str) -> BoxFuture<'_, Result<BufferedRead, StorageError>> {
        let run_id = run_id.to_string();
        let doing = format!("cannot read the buffered events of run {run_id}");
        self.read(doing, move |connection| {
            select_buffered(connection, &run_id)
        })
    }

    /// The writer's trouble: recovering after a failed commit, the file lost
    /// (checked here too, with one `stat`, so an idle server reports it), or
    /// the writer thread gone.
    fn health(&self) -> Result<(), String> {
        let inner = &self.inner;
        if inner.write_sender.is_closed() {
            return Err(format!(
                "storage stopped: the writer thread of database {} is gone (see the log)",
                inner.path.display()
            ));
        }
        if inner.health.refusal().is_none()
            && let PathCheck::Lost(reason) = check_identity(&inner.path, inner.identity)
        {
            tracing::error!(%reason, "sqlite storage: the database file is lost; every write is refused");
            inner.health.lost(reason);
        }
        inner.health.report()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{EventKind, WorkflowExecutionSignaled};

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        runtime.block_on(future)
    }

    /// Creates `run_id` with one event.
    fn create(run_id: &str) -> WriteBatch {
        let kind = EventKind::WorkflowExecutionSignaled(WorkflowExecutionSignaled {
            signal_name: "poke".to_string(),
            input: serde_json::json!(null),
            identity: "test".to_string(),
        });
        let run = RunRecord {
            run_id: run_id.to_string(),
            workflow_id: format!("wf-{run_id}"),
            workflow_type: "test".to_string(),
            task_queue: "default".to_string(),
            status: RunStatus::Running,
            start_time: Timestamp(0),
            close_time: None,
            next_event_id: 2,
            version: 1,
            state: Vec::new(),
            search_attributes: Default::default(),
        };
        let events = vec![Event::new(1, Timestamp(0), kind)];
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

    #[test]
    fn writer_thread_loss_answers_storage_stopped() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let storage = SqliteStorage::open(dir.path().join("retrace.db")).expect("it opens");
        block_on(storage.write(create("run-a"))).expect("the write lands");
        // An events row for no event breaks the writer's own invariant: it panics and stops.
        let mut broken = create("run-b");
        broken.events.clear();
        let (reply, answer) = oneshot::channel();
        let job = WriteJob {
            batch: broken,
            events: Some("[]".to_string()),
            buffered: None,
            next_events: None,
            size_bytes: 2,
            reply,
        };
        block_on(storage.inner.write_sender.send(job)).expect("the writer was running");
        assert!(block_on(answer).is_err(), "the broken job got an answer");
        assert_eq!(block_on(storage.write(create("run-c"))), Err(stopped()));
        let run = block_on(storage.read_run("run-a")).expect("the readers still serve");
        assert!(run.is_some());
        drop(storage); // Joins the threads; the writer's panic is logged, not raised.
    }

    #[test]
    fn reader_thread_loss_answers_storage_stopped() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let options = SqliteOptions {
            reader_count: 1,
            ..SqliteOptions::default()
        };
        let storage =
            SqliteStorage::open_with(dir.path().join("retrace.db"), options).expect("it opens");
        let panicking = storage.read("panicking".to_string(), |_| -> Result<(), DbError> {
            panic!("a read that panics (on purpose)")
        });
        assert_eq!(block_on(panicking), Err(stopped()));
        assert_eq!(block_on(storage.read_run("run-a")), Err(stopped()));
        block_on(storage.write(create("run-a"))).expect("the writer still writes");
    }

    /// Writes `count` runs at once and returns the writer's counters.
    fn write_concurrently(options: SqliteOptions, count: usize) -> SqliteStats {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let storage =
            SqliteStorage::open_with(dir.path().join("retrace.db"), options).expect("it opens");
        let batches: Vec<WriteBatch> = (0..count)
            .map(|index| create(&format!("run-{index}")))
            .collect();
        let writes = batches.iter().map(|batch| storage.write(batch.clone()));
        for result in block_on(futures::future::join_all(writes)) {
            result.expect("every write lands");
        }
        storage.stats()
    }

    #[test]
    fn group_commit_is_bounded_by_batches_and_by_bytes() {
        let grouped = write_concurrently(SqliteOptions::default(), 50);
        assert_eq!(grouped.batches_written, 50);
        assert!(grouped.commits < 50, "nothing was grouped: {grouped:?}");
        let one_batch = SqliteOptions {
            group_commit_batches_max: 1,
            ..SqliteOptions::default()
        };
        let stats = write_concurrently(one_batch, 50);
        assert_eq!(
            stats,
            SqliteStats {
                commits: 50,
                batches_written: 50
            }
        );
        // Every batch is over one byte: each group holds one, the rest carried over.
        let one_byte = SqliteOptions {
            group_commit_bytes_max: 1,
            ..SqliteOptions::default()
        };
        let stats = write_concurrently(one_byte, 50);
        assert_eq!(
            stats,
            SqliteStats {
                commits: 50,
                batches_written: 50
            }
        );
    }

    #[test]
    fn dropping_the_last_handle_closes_the_database() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("retrace.db");
        let storage = SqliteStorage::open(&path).expect("it opens");
        let clone = storage.clone();
        block_on(storage.write(create("run-a"))).expect("the write lands");
        drop(storage);
        assert!(
            dir.path().join("retrace.db-wal").exists(),
            "a clone keeps the database open"
        );
        drop(clone);
        // SQLite removes the WAL when the last connection closes cleanly.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("the directory lists")
            .map(|entry| {
                entry
                    .expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["retrace.db"]);
    }
}
