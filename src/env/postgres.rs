//! `PostgresStorage`: a second production [`Storage`], on PostgreSQL, with
//! the same promises as [`SqliteStorage`](super::SqliteStorage) (the same
//! conformance suite runs against both).
//!
//! # Connections
//!
//! A pool (`deadpool-postgres` over `tokio-postgres`) of at most
//! `pool_size_max` connections serves reads and writes alike, handing out
//! the connection used last (LIFO: warm backends). A caller waits
//! at most `pool_wait_ms_max` for a free connection, then gets a retryable
//! `StorageError::Io` that says the pool is exhausted. A connection the
//! server closed (a restart, `pg_terminate_backend`) is dropped from the pool
//! when next handed out, and a new one is opened on demand, so the storage
//! rides through a database restart: calls fail while it is down, and work
//! again once it is back, with no restart of retrace.
//!
//! TLS is rustls, as the URL's `sslmode` (`disable`, `prefer` (the
//! default), `require`, `verify-ca`, `verify-full`) and `sslrootcert` say;
//! see [`tls`].
//!
//! # Health
//!
//! `health` (and so `/healthz`) says what the database did last: every
//! `health_probe_ms` (1 s) a task checks it answers (`SELECT 1` within that
//! time, on a connection of its own), and every call's connection failure
//! or success counts too. It never waits on the database itself.
//!
//! # Writes
//!
//! Writer tasks (`writer_count`) each take every batch queued (up to
//! `group_commit_batches_max`, each run and workflow id once) and commit
//! them in one transaction, so one WAL flush covers the group (group commit
//! by hand, as SQLite's writer thread does). Two paths:
//!
//! - **Fast**: the batches that pass [`check_batch`] against the stored run
//!   and workflow id holder they *expect* ([`check_as_expected`]) are
//!   written by one call of `retrace_write_runs` (a PL/pgSQL function of
//!   migration 2, replaced by 3 and 4), pipelined behind `BEGIN`, then
//!   `COMMIT`: two round trips for the whole group. The function's
//!   conditional writes (`UPDATE … WHERE version = expected AND
//!   next_event_id = … AND` the fixed fields; a plain `INSERT` to create;
//!   the claim `UPDATE … WHERE run_id = previous` or a plain `INSERT`) have
//!   Postgres check the rows are what the batches expect; if one is not, it
//!   raises and the group rolls back.
//! - **Careful**: a batch whose checks fail against what it expects, and
//!   every batch of a group Postgres refused, is written alone ([`transact`]):
//!   `BEGIN` and its rows `SELECT … FOR UPDATE`, [`check_batch`] on what is
//!   stored (so every storage refuses the same writes with the same errors),
//!   the conditional writes, `COMMIT`. A conditional write that matched no
//!   row (a creation raced by another transaction) is answered
//!   `VersionConflict` or `WorkflowIdConflict` with what is stored.
//!
//! Either way Postgres enforces the version, and only `COMMIT` commits.
//!
//! A batch with a [`Fence`](super::lease::Fence) is refused unless its shard
//! is its workflow id's (checked in Rust before it is queued) and the
//! shard's stored epoch is the fence's, checked in the write's transaction
//! with the shard's row locked `FOR SHARE` until `COMMIT`: a takeover (an
//! `UPDATE` that bumps the epoch) waits for the write to commit, or the
//! write waits for the takeover and sees the new epoch. On the fast path
//! the function raises `RT412` (the group is written alone); on the careful
//! path the answer is `Fenced`. Unfenced batches read no shard.
//!
//! # Cluster
//!
//! In cluster mode ([`PostgresOptions::cluster`]) any number of servers
//! share a schema, each leasing shards (table `shards`, 64 rows made by
//! migration 4) and beating in `members`, with the rules of
//! [`super::lease`] and Postgres's clock (see `cluster.rs`).
//!
//! # Faults
//!
//! | fault | answer |
//! |---|---|
//! | no connection (server down, refused, DNS) | `Io`, nothing written; retry |
//! | pool exhausted for `pool_wait_ms_max` | `Io("… all N connections are busy …")`; retry |
//! | a statement fails before `COMMIT` is sent | `Io`, the transaction rolled back |
//! | the connection drops, or `operation_ms_max` passes, once `COMMIT` may have been sent | `Timeout`: the write may or may not have committed; the engine reloads the run |
//!
//! A connection that fails inside a transaction, or whose call timed out, is
//! taken out of the pool and closed (the server rolls back what it had open).
//!
//! # Schema
//!
//! Tables live in the connection's current schema (`search_path`), so one
//! database can hold several retrace instances in separate schemas. The
//! one-row table `retrace_schema` names the application and the number of
//! `MIGRATIONS` applied; each migration runs in its own transaction under an
//! advisory lock, so two servers opening a fresh database do not both apply
//! it. A schema from a newer build is refused untouched, and so is a schema
//! that holds tables but no `retrace_schema` (another program's).
//!
//! A server holds a session advisory lock on its schema while it runs:
//! exclusive for a single server, shared in cluster mode, so cluster servers
//! share a schema with each other and never with a single server.

// A production-only storage (like SQLite's, never in the simulator): its
// connections, writer tasks and deadlines run on tokio directly, as the
// driver does. clippy.toml bans tokio's clock and spawner in core code;
// src/env's production implementations opt out.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use deadpool_postgres::{
    ClientWrapper, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod,
};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Row;
use tokio_postgres::config::Host;
use tokio_postgres::types::ToSql;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::BoxFuture;
use super::lease::{ClusterView, LeaseAnswer, LeaseRequest, Member, MemberBeat, check_fence};
use super::storage::{
    BufferedRead, ListQuery, RunRecord, RunStatus, Storage, StorageError, WorkflowIdClaim,
    WriteBatch, check_batch,
};
use crate::history::{Event, EventKind};
use crate::types::Timestamp;

mod cluster;
mod tls;
use tls::TlsSettings;

/// The schema, one migration per version: `MIGRATIONS[i]` takes the schema
/// from version `i` to `i + 1`. Append only; never edit a released migration.
/// Text keys compare bytewise (`COLLATE "C"`), as SQLite's and Rust's do, so
/// `list_runs` orders and pages the same on every storage.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE retrace_schema (
        singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
        application TEXT NOT NULL,
        version INTEGER NOT NULL
    );
    INSERT INTO retrace_schema (application, version) VALUES ('retrace', 0);
    CREATE TABLE runs (
        run_id TEXT COLLATE \"C\" PRIMARY KEY,
        workflow_id TEXT COLLATE \"C\" NOT NULL,
        workflow_type TEXT COLLATE \"C\" NOT NULL,
        task_queue TEXT NOT NULL,
        status TEXT COLLATE \"C\" NOT NULL,
        start_time_ms BIGINT NOT NULL,
        close_time_ms BIGINT,
        next_event_id BIGINT NOT NULL,
        version BIGINT NOT NULL,
        state BYTEA NOT NULL
    );
    CREATE TABLE event_batches (
        run_id TEXT COLLATE \"C\" NOT NULL REFERENCES runs (run_id),
        first_event_id BIGINT NOT NULL,
        last_event_id BIGINT NOT NULL,
        events TEXT NOT NULL,
        PRIMARY KEY (run_id, first_event_id)
    );
    CREATE TABLE workflow_ids (
        workflow_id TEXT COLLATE \"C\" PRIMARY KEY,
        run_id TEXT COLLATE \"C\" NOT NULL REFERENCES runs (run_id)
    );
    CREATE TABLE buffered_events (
        run_id TEXT COLLATE \"C\" NOT NULL REFERENCES runs (run_id),
        seq BIGINT NOT NULL,
        events TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    );
    CREATE INDEX runs_by_status ON runs (status, run_id);
    CREATE INDEX runs_by_workflow_type ON runs (workflow_type, run_id);
    CREATE INDEX runs_by_status_and_workflow_type ON runs (status, workflow_type, run_id);
",
    "
    -- A run's row is rewritten at every step of the run: room on its page
    -- lets Postgres update it in place of its index entries (HOT updates).
    ALTER TABLE runs SET (fillfactor = 50);
    CREATE FUNCTION retrace_write_runs(
        run_ids TEXT[], workflow_ids TEXT[], workflow_types TEXT[], task_queues TEXT[],
        statuses TEXT[], start_times BIGINT[], close_times BIGINT[], next_event_ids BIGINT[],
        versions BIGINT[], states BYTEA[], expected BIGINT[], stored_next BIGINT[],
        first_event_ids BIGINT[], last_event_ids BIGINT[], events TEXT[],
        claim_ids TEXT[], claim_previous TEXT[], clear_buffered BOOLEAN[], buffered TEXT[]
    ) RETURNS VOID LANGUAGE plpgsql AS $body$
    BEGIN
        FOR i IN 1 .. coalesce(cardinality(run_ids), 0) LOOP
            IF expected[i] IS NULL THEN
                INSERT INTO runs (run_id, workflow_id, workflow_type, task_queue, status,
                    start_time_ms, close_time_ms, next_event_id, version, state)
                VALUES (run_ids[i], workflow_ids[i], workflow_types[i], task_queues[i],
                    statuses[i], start_times[i], close_times[i], next_event_ids[i], versions[i],
                    states[i]);
            ELSE
                UPDATE runs SET status = statuses[i], close_time_ms = close_times[i],
                    next_event_id = next_event_ids[i], version = versions[i], state = states[i]
                WHERE run_id = run_ids[i] AND version = expected[i]
                    AND next_event_id = stored_next[i] AND workflow_id = workflow_ids[i]
                    AND workflow_type = workflow_types[i] AND task_queue = task_queues[i]
                    AND start_time_ms = start_times[i];
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'run % is not stored as the write expects', run_ids[i]
                        USING ERRCODE = 'RT409';
                END IF;
            END IF;
            IF events[i] IS NOT NULL THEN
                INSERT INTO event_batches (run_id, first_event_id, last_event_id, events)
                VALUES (run_ids[i], first_event_ids[i], last_event_ids[i], events[i]);
            END IF;
            IF claim_ids[i] IS NOT NULL AND claim_previous[i] IS NULL THEN
                INSERT INTO workflow_ids (workflow_id, run_id) VALUES (claim_ids[i], run_ids[i]);
            ELSIF claim_ids[i] IS NOT NULL THEN
                UPDATE workflow_ids SET run_id = run_ids[i]
                WHERE workflow_id = claim_ids[i] AND run_id = claim_previous[i];
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'workflow id % is not held as the write expects',
                        claim_ids[i] USING ERRCODE = 'RT409';
                END IF;
            END IF;
            IF clear_buffered[i] THEN
                DELETE FROM buffered_events WHERE run_id = run_ids[i];
            END IF;
            IF buffered[i] IS NOT NULL THEN
                INSERT INTO buffered_events (run_id, seq, events) VALUES (run_ids[i],
                    (SELECT coalesce(max(seq), 0) + 1 FROM buffered_events
                     WHERE run_id = run_ids[i]), buffered[i]);
            END IF;
        END LOOP;
    END
    $body$;
",
    "
    -- Search attributes: the run's row holds them (JSON rows of
    -- crate::visibility::index_rows); a trigger keeps one row per value in
    -- search_attributes, typed per kind, for list queries.
    ALTER TABLE runs ADD COLUMN search_attributes TEXT NOT NULL DEFAULT '[]';
    CREATE TABLE search_attributes (
        run_id TEXT COLLATE \"C\" NOT NULL REFERENCES runs (run_id),
        ord INTEGER NOT NULL,
        name TEXT COLLATE \"C\" NOT NULL,
        kind TEXT COLLATE \"C\" NOT NULL,
        s_value TEXT COLLATE \"C\",
        i_value BIGINT,
        d_value DOUBLE PRECISION,
        PRIMARY KEY (run_id, ord)
    );
    CREATE INDEX search_attributes_by_text ON search_attributes (name, s_value);
    CREATE INDEX search_attributes_by_integer ON search_attributes (name, i_value);
    CREATE INDEX search_attributes_by_double ON search_attributes (name, d_value);
    CREATE INDEX runs_by_start_time ON runs (start_time_ms, run_id);
    CREATE FUNCTION retrace_index_search_attributes() RETURNS trigger LANGUAGE plpgsql AS $body$
    BEGIN
        DELETE FROM search_attributes WHERE run_id = NEW.run_id;
        INSERT INTO search_attributes (run_id, ord, name, kind, s_value, i_value, d_value)
        SELECT NEW.run_id, t.ord - 1, t.e->>0, t.e->>1, t.e->>2, (t.e->>3)::bigint,
            (t.e->>4)::double precision
        FROM jsonb_array_elements(NEW.search_attributes::jsonb) WITH ORDINALITY AS t(e, ord);
        RETURN NULL;
    END
    $body$;
    CREATE TRIGGER runs_index_search_attributes_on_insert AFTER INSERT ON runs
        FOR EACH ROW WHEN (NEW.search_attributes <> '[]')
        EXECUTE FUNCTION retrace_index_search_attributes();
    CREATE TRIGGER runs_index_search_attributes_on_update
        AFTER UPDATE OF search_attributes ON runs
        FOR EACH ROW WHEN (OLD.search_attributes IS DISTINCT FROM NEW.search_attributes)
        EXECUTE FUNCTION retrace_index_search_attributes();
    DROP FUNCTION retrace_write_runs(TEXT[], TEXT[], TEXT[], TEXT[], TEXT[], BIGINT[],
        BIGINT[], BIGINT[], BIGINT[], BYTEA[], BIGINT[], BIGINT[], BIGINT[], BIGINT[], TEXT[],
        TEXT[], TEXT[], BOOLEAN[], TEXT[]);
    CREATE FUNCTION retrace_write_runs(
        run_ids TEXT[], workflow_ids TEXT[], workflow_types TEXT[], task_queues TEXT[],
        statuses TEXT[], start_times BIGINT[], close_times BIGINT[], next_event_ids BIGINT[],
        versions BIGINT[], states BYTEA[], expected BIGINT[], stored_next BIGINT[],
        first_event_ids BIGINT[], last_event_ids BIGINT[], events TEXT[],
        claim_ids TEXT[], claim_previous TEXT[], clear_buffered BOOLEAN[], buffered TEXT[],
        search_attribute_rows TEXT[]
    ) RETURNS VOID LANGUAGE plpgsql AS $body$
    BEGIN
        FOR i IN 1 .. coalesce(cardinality(run_ids), 0) LOOP
            IF expected[i] IS NULL THEN
                INSERT INTO runs (run_id, workflow_id, workflow_type, task_queue, status,
                    start_time_ms, close_time_ms, next_event_id, version, state,
                    search_attributes)
                VALUES (run_ids[i], workflow_ids[i], workflow_types[i], task_queues[i],
                    statuses[i], start_times[i], close_times[i], next_event_ids[i], versions[i],
                    states[i], search_attribute_rows[i]);
            ELSE
                UPDATE runs SET status = statuses[i], close_time_ms = close_times[i],
                    next_event_id = next_event_ids[i], version = versions[i], state = states[i],
                    search_attributes = search_attribute_rows[i]
                WHERE run_id = run_ids[i] AND version = expected[i]
                    AND next_event_id = stored_next[i] AND workflow_id = workflow_ids[i]
                    AND workflow_type = workflow_types[i] AND task_queue = task_queues[i]
                    AND start_time_ms = start_times[i];
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'run % is not stored as the write expects', run_ids[i]
                        USING ERRCODE = 'RT409';
                END IF;
            END IF;
            IF events[i] IS NOT NULL THEN
                INSERT INTO event_batches (run_id, first_event_id, last_event_id, events)
                VALUES (run_ids[i], first_event_ids[i], last_event_ids[i], events[i]);
            END IF;
            IF claim_ids[i] IS NOT NULL AND claim_previous[i] IS NULL THEN
                INSERT INTO workflow_ids (workflow_id, run_id) VALUES (claim_ids[i], run_ids[i]);
            ELSIF claim_ids[i] IS NOT NULL THEN
                UPDATE workflow_ids SET run_id = run_ids[i]
                WHERE workflow_id = claim_ids[i] AND run_id = claim_previous[i];
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'workflow id % is not held as the write expects',
                        claim_ids[i] USING ERRCODE = 'RT409';
                END IF;
            END IF;
            IF clear_buffered[i] THEN
                DELETE FROM buffered_events WHERE run_id = run_ids[i];
            END IF;
            IF buffered[i] IS NOT NULL THEN
                INSERT INTO buffered_events (run_id, seq, events) VALUES (run_ids[i],
                    (SELECT coalesce(max(seq), 0) + 1 FROM buffered_events
                     WHERE run_id = run_ids[i]), buffered[i]);
            END IF;
        END LOOP;
    END
    $body$;
",
    "
    -- Cluster (src/env/lease.rs): a lease per shard, the shard count being
    -- the number of rows (fixed here), and the members' heartbeats. Times
    -- are milliseconds on Postgres's clock. A write may carry a fence: the
    -- function checks its shard's epoch, the row locked FOR SHARE until
    -- COMMIT, and raises RT412 if it moved.
    CREATE TABLE shards (
        shard INTEGER PRIMARY KEY,
        owner TEXT COLLATE \"C\" NOT NULL DEFAULT '',
        incarnation BIGINT NOT NULL DEFAULT 0,
        epoch BIGINT NOT NULL DEFAULT 0,
        expires_ms BIGINT NOT NULL DEFAULT 0
    );
    INSERT INTO shards (shard) SELECT generate_series(0, 63);
    CREATE TABLE members (
        node TEXT COLLATE \"C\" PRIMARY KEY,
        incarnation BIGINT NOT NULL,
        address TEXT NOT NULL,
        expires_ms BIGINT NOT NULL
    );
    DROP FUNCTION retrace_write_runs(TEXT[], TEXT[], TEXT[], TEXT[], TEXT[], BIGINT[],
        BIGINT[], BIGINT[], BIGINT[], BYTEA[], BIGINT[], BIGINT[], BIGINT[], BIGINT[], TEXT[],
        TEXT[], TEXT[], BOOLEAN[], TEXT[], TEXT[]);
    CREATE FUNCTION retrace_write_runs(
        run_ids TEXT[], workflow_ids TEXT[], workflow_types TEXT[], task_queues TEXT[],
        statuses TEXT[], start_times BIGINT[], close_times BIGINT[], next_event_ids BIGINT[],
        versions BIGINT[], states BYTEA[], expected BIGINT[], stored_next BIGINT[],
        first_event_ids BIGINT[], last_event_ids BIGINT[], events TEXT[],
        claim_ids TEXT[], claim_previous TEXT[], clear_buffered BOOLEAN[], buffered TEXT[],
        search_attribute_rows TEXT[], fence_shards INTEGER[], fence_epochs BIGINT[]
    ) RETURNS VOID LANGUAGE plpgsql AS $body$
    BEGIN
        FOR i IN 1 .. coalesce(cardinality(run_ids), 0) LOOP
            IF fence_shards[i] IS NOT NULL THEN
                -- Held until COMMIT: a takeover (epoch + 1) waits for it.
                PERFORM 1 FROM shards WHERE shard = fence_shards[i]
                    AND epoch = fence_epochs[i] FOR SHARE;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'shard % is no longer at epoch %', fence_shards[i],
                        fence_epochs[i] USING ERRCODE = 'RT412';
                END IF;
            END IF;
            IF expected[i] IS NULL THEN
                INSERT INTO runs (run_id, workflow_id, workflow_type, task_queue, status,
                    start_time_ms, close_time_ms, next_event_id, version, state,
                    search_attributes)
                VALUES (run_ids[i], workflow_ids[i], workflow_types[i], task_queues[i],
                    statuses[i], start_times[i], close_times[i], next_event_ids[i], versions[i],
                    states[i], search_attribute_rows[i]);
            ELSE
                UPDATE runs SET status = statuses[i], close_time_ms = close_times[i],
                    next_event_id = next_event_ids[i], version = versions[i], state = states[i],
                    search_attributes = search_attribute_rows[i]
                WHERE run_id = run_ids[i] AND version = expected[i]
                    AND next_event_id = stored_next[i] AND workflow_id = workflow_ids[i]
                    AND workflow_type = workflow_types[i] AND task_queue = task_queues[i]
                    AND start_time_ms = start_times[i];
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'run % is not stored as the write expects', run_ids[i]
                        USING ERRCODE = 'RT409';
                END IF;
            END IF;
            IF events[i] IS NOT NULL THEN
                INSERT INTO event_batches (run_id, first_event_id, last_event_id, events)
                VALUES (run_ids[i], first_event_ids[i], last_event_ids[i], events[i]);
            END IF;
            IF claim_ids[i] IS NOT NULL AND claim_previous[i] IS NULL THEN
                INSERT INTO workflow_ids (workflow_id, run_id) VALUES (claim_ids[i], run_ids[i]);
            ELSIF claim_ids[i] IS NOT NULL THEN
                UPDATE workflow_ids SET run_id = run_ids[i]
                WHERE workflow_id = claim_ids[i] AND run_id = claim_previous[i];
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'workflow id % is not held as the write expects',
                        claim_ids[i] USING ERRCODE = 'RT409';
                END IF;
            END IF;
            IF clear_buffered[i] THEN
                DELETE FROM buffered_events WHERE run_id = run_ids[i];
            END IF;
            IF buffered[i] IS NOT NULL THEN
                INSERT INTO buffered_events (run_id, seq, events) VALUES (run_ids[i],
                    (SELECT coalesce(max(seq), 0) + 1 FROM buffered_events
                     WHERE run_id = run_ids[i]), buffered[i]);
            END IF;
        END LOOP;
    END
    $body$;
",
];

/// What `retrace_schema.application` holds in retrace's schemas.
const APPLICATION: &str = "retrace";

/// Key of the advisory lock that serializes migrations ("RTRC").
const MIGRATION_LOCK_KEY: i64 = 0x5254_5243;

/// First key of the advisory lock a server holds on its schema while it
/// runs ("RTRD"); the second is the schema's name hashed.
const SERVER_LOCK_KEY: i32 = 0x5254_5244;
/// Takes the server lock if it is free; never waits.
const SERVER_LOCK_SQL: &str = "SELECT pg_try_advisory_lock($1, hashtext(current_schema())), \
    current_setting('search_path')";
/// Takes the server lock shared, as a server in cluster mode does: any
/// number of them hold it together, and none while a single server holds
/// it exclusively (nor it while they do). Never waits.
const SERVER_LOCK_SHARED_SQL: &str = "SELECT \
    pg_try_advisory_lock_shared($1, hashtext(current_schema())), current_setting('search_path')";
/// Whether the server lock's holders hold it shared (cluster servers):
/// true, false, or NULL when nobody holds it (any more).
const SERVER_LOCK_HOLDERS_SQL: &str = "SELECT bool_and(mode = 'ShareLock') FROM pg_locks \
    WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database \
    WHERE datname = current_database()) AND classid = $1::int4::oid \
    AND objid = hashtext(current_schema())::oid AND objsubid = 2";
/// Between two tries at the server lock.
const SERVER_LOCK_RETRY_MS: u64 = 100;
/// The longest wait between two reconnects of the lock's connection.
const SERVER_LOCK_BACKOFF_MS_MAX: u64 = 2_000;

/// The columns of `runs`, in the order [`run_from_row`] reads them.
const RUN_COLUMNS: &str = "run_id, workflow_id, workflow_type, task_queue, status, \
    start_time_ms, close_time_ms, next_event_id, version, state, search_attributes";

/// Upper bound of [`PostgresOptions::pool_size_max`].
const POOL_SIZE_MAX: usize = 256;

/// Tuning of a [`PostgresStorage`]. The defaults suit one service process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Connections open at most, for reads and writes together.
    pub pool_size_max: usize,
    /// How long a call waits for a free connection before it is refused.
    pub pool_wait_ms_max: u64,
    /// How long opening a connection may take.
    pub connect_ms_max: u64,
    /// How long one call (a read, or a write's whole transaction) may take;
    /// also each statement's `statement_timeout` on the server.
    pub operation_ms_max: u64,
    /// Batches queued for the writers; `write` waits for room beyond this.
    pub write_queue_max: usize,
    /// Batches a writer commits together in one transaction (one WAL flush).
    pub group_commit_batches_max: usize,
    /// Writer tasks, each committing one group at a time on its own connection.
    pub writer_count: usize,
    /// How long opening waits for the server lock another server holds
    /// (one just killed holds it until Postgres notices), then refuses.
    pub server_lock_wait_ms_max: u64,
    /// How often `health` is checked against the database (`SELECT 1` on a
    /// connection of its own), and how long one check may take: `health`
    /// is never older than about twice this.
    pub health_probe_ms: u64,
    /// Cluster mode: share the schema with other cluster servers (each
    /// writing the shards it leases, its writes fenced), holding the server
    /// lock shared. A single server (false) holds it alone, so the two
    /// kinds never share a schema.
    pub cluster: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            pool_size_max: 16,
            pool_wait_ms_max: 5_000,
            connect_ms_max: 5_000,
            operation_ms_max: 10_000,
            server_lock_wait_ms_max: 5_000,
            health_probe_ms: 1_000,
            write_queue_max: 1024,
            group_commit_batches_max: 128,
            writer_count: 2,
            cluster: false,
        }
    }
}

impl PostgresOptions {
    fn assert_valid(&self) {
        assert!(self.pool_size_max > 0, "pool_size_max must be positive");
        assert!(
            self.pool_size_max <= POOL_SIZE_MAX,
            "pool_size_max is over {POOL_SIZE_MAX}"
        );
        assert!(
            self.pool_wait_ms_max > 0,
            "pool_wait_ms_max must be positive"
        );
        assert!(self.connect_ms_max > 0, "connect_ms_max must be positive");
        assert!(
            self.operation_ms_max > 0,
            "operation_ms_max must be positive"
        );
        assert!(self.health_probe_ms > 0, "health_probe_ms must be positive");
    }
}

/// Counters, for monitoring (and for tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PostgresStats {
    /// Transactions committed that wrote at least one batch.
    pub commits: u64,
    /// Batches committed.
    pub batches_written: u64,
    /// Writes answered `Timeout` (outcome unknown).
    pub writes_ambiguous: u64,
    /// Batches written alone, on the careful path: the fast path refused
    /// them (a run or workflow id not stored as they expect) or could not
    /// take them (their checks fail against what they expect).
    pub batches_alone: u64,
}

/// PostgreSQL-backed storage. Clones share the same pool.
#[derive(Clone)]
pub struct PostgresStorage {
    inner: Arc<Inner>,
}

struct Inner {
    /// To the writer tasks; they end once every handle is gone.
    write_sender: mpsc::Sender<WriteJob>,
    pool: Pool,
    /// `postgres://user@host:port/db`, without the password: for messages.
    target: String,
    /// How connections use TLS (to explain their failures).
    tls: Tls,
    options: PostgresOptions,
    commits: AtomicU64,
    batches_written: AtomicU64,
    writes_ambiguous: AtomicU64,
    batches_alone: AtomicU64,
    /// The last connection failure, until a call or health check succeeds.
    trouble: Mutex<Option<String>>,
    /// Set for good if another server took the server lock while this one
    /// had lost it (Postgres restarted): every write is refused.
    lock_lost: Arc<Mutex<Option<String>>>,
    /// The task holding the server lock; aborted on drop, which closes its
    /// connection and so releases the lock.
    lock_task: tokio::task::AbortHandle,
    /// The schema's shard count (rows of `shards`), read once migrated.
    shard_count: std::sync::OnceLock<u32>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.lock_task.abort();
    }
}

impl fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("target", &self.inner.target)
            .finish()
    }
}

/// True if `db` names a Postgres database (`postgres://` or `postgresql://`)
/// rather than a SQLite file.
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// An `Io` error naming the database, what was being done, and the reason.
fn io_error(target: &str, doing: &str, error: impl fmt::Display) -> StorageError {
    StorageError::Io(format!("database {target}: {doing}: {error}"))
}

/// `postgres://user@host:port/db` for `config`, with no password.
fn describe(config: &tokio_postgres::Config) -> String {
    let user = config.get_user().unwrap_or("");
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let port = config.get_ports().get(index).or(config.get_ports().first());
            let port = port.copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{}/{db}", hosts.join(","))
}

impl PostgresStorage {
    /// The schema version this build writes (the number of migrations).
    pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

    /// Connects to the database at `url` with default options.
    pub async fn connect(url: &str) -> Result<PostgresStorage, StorageError> {
        PostgresStorage::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects as a server of a cluster (`cluster: true`, the other
    /// options their defaults): it shares the schema with the cluster's
    /// other servers, never with a single server.
    pub async fn connect_cluster(url: &str) -> Result<PostgresStorage, StorageError> {
        let options = PostgresOptions {
            cluster: true,
            ..PostgresOptions::default()
        };
        PostgresStorage::connect_with(url, options).await
    }

    /// Connects to the database at `url` (a `postgres://` URL, or libpq's
    /// `key=value` form), checks it is retrace's (or empty) and not from a
    /// newer build, and migrates it. Errors name the database (never its
    /// password) and the reason, and leave it as it was.
    ///
    /// # Panics
    /// If `options` are out of their bounds (a bug in the caller).
    pub async fn connect_with(
        url: &str,
        options: PostgresOptions,
    ) -> Result<PostgresStorage, StorageError> {
        options.assert_valid();
        let parse_error =
            |error: String| StorageError::Io(format!("cannot parse the Postgres URL: {error}"));
        let (rest, tls_settings) = TlsSettings::split(url).map_err(parse_error)?;
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|error| parse_error(error.to_string()))?;
        config.ssl_mode(tls_settings.driver_mode());
        let target = describe(&config);
        let tls = Tls {
            connector: tls_settings
                .connector()
                .map_err(|error| io_error(&target, "cannot set up TLS", error))?,
            settings: tls_settings,
        };
        let extra = format!("-c statement_timeout={}", options.operation_ms_max);
        let server_options = match config.get_options() {
            Some(given) => format!("{given} {extra}"),
            None => extra,
        };
        config
            .options(&server_options)
            .application_name("retrace")
            .connect_timeout(Duration::from_millis(options.connect_ms_max));
        let lock_lost = Arc::new(Mutex::new(None));
        let lock_task = take_server_lock(&config, &tls, &target, &options, &lock_lost).await?;
        let probe_config = config.clone();
        let pool = match build_pool(config, &tls, &options) {
            Ok(pool) => pool,
            Err(error) => {
                lock_task.abort();
                return Err(io_error(&target, "cannot build the connection pool", error));
            }
        };
        let (write_sender, write_receiver) = mpsc::channel(options.write_queue_max);
        let storage = PostgresStorage {
            inner: Arc::new(Inner {
                write_sender,
                pool,
                target,
                tls,
                options,
                commits: AtomicU64::new(0),
                batches_written: AtomicU64::new(0),
                writes_ambiguous: AtomicU64::new(0),
                batches_alone: AtomicU64::new(0),
                trouble: Mutex::new(None),
                lock_lost,
                lock_task,
                shard_count: std::sync::OnceLock::new(),
            }),
        };
        storage.migrate().await?;
        let shard_count = storage.read_shard_count().await?;
        assert!(storage.inner.shard_count.set(shard_count).is_ok());
        tokio::spawn(probe_health(Arc::downgrade(&storage.inner), probe_config));
        let write_receiver = Arc::new(tokio::sync::Mutex::new(write_receiver));
        for _ in 0..options.writer_count {
            let weak = Arc::downgrade(&storage.inner);
            tokio::spawn(writer_loop(weak, write_receiver.clone()));
        }
        assert_eq!(storage.inner.pool.status().max_size, options.pool_size_max);
        Ok(storage)
    }

    /// The database, as `postgres://user@host:port/db` (no password).
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// The counters so far.
    pub fn stats(&self) -> PostgresStats {
        PostgresStats {
            commits: self.inner.commits.load(Ordering::Relaxed),
            batches_written: self.inner.batches_written.load(Ordering::Relaxed),
            writes_ambiguous: self.inner.writes_ambiguous.load(Ordering::Relaxed),
            batches_alone: self.inner.batches_alone.load(Ordering::Relaxed),
        }
    }

    /// A connection from the pool, or a retryable `Io` saying why not.
    async fn connection(&self) -> Result<Object, StorageError> {
        let target = &self.inner.target;
        match self.inner.pool.get().await {
            Ok(object) => Ok(object),
            Err(PoolError::Timeout(_)) => {
                let reason = format!(
                    "all {} connections of the pool are busy (waited {} ms); retry",
                    self.inner.options.pool_size_max, self.inner.options.pool_wait_ms_max
                );
                Err(io_error(target, "no free connection", reason))
            }
            Err(PoolError::Backend(error)) => {
                let error = io_error(target, "cannot connect", self.inner.tls.describe(&error));
                self.troubled(&error);
                Err(error)
            }
            Err(error) => {
                let error = io_error(target, "cannot connect", error);
                self.troubled(&error);
                Err(error)
            }
        }
    }

    fn troubled(&self, error: &StorageError) {
        let mut trouble = lock(&self.inner.trouble);
        *trouble = Some(error.to_string());
    }

    fn untroubled(&self) {
        let mut trouble = lock(&self.inner.trouble);
        *trouble = None;
    }

    /// Applies the migrations the schema lacks, one transaction each.
    async fn migrate(&self) -> Result<(), StorageError> {
        let target = self.inner.target.clone();
        let fail = |error: tokio_postgres::Error| {
            io_error(&target, "cannot migrate the schema", describe_error(&error))
        };
        let mut connection = self.connection().await?;
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            let version_target = i32::try_from(index + 1).expect("migration count fits i32");
            let transaction = connection.transaction().await.map_err(fail)?;
            transaction
                .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
                .await
                .map_err(fail)?;
            let version = schema_version(&transaction, &target).await?;
            if version >= version_target {
                continue; // Dropping the transaction rolls back nothing done.
            }
            assert_eq!(version + 1, version_target, "migrations apply in order");
            transaction.batch_execute(migration).await.map_err(fail)?;
            transaction
                .execute("UPDATE retrace_schema SET version = $1", &[&version_target])
                .await
                .map_err(fail)?;
            transaction.commit().await.map_err(fail)?;
        }
        let version = schema_version(&connection, &target).await?;
        assert_eq!(version, PostgresStorage::SCHEMA_VERSION as i32);
        Ok(())
    }
}

/// The connection pool (not yet connected).
fn build_pool(
    config: tokio_postgres::Config,
    tls: &Tls,
    options: &PostgresOptions,
) -> Result<Pool, deadpool::managed::BuildError> {
    let manager = Manager::from_config(
        config,
        tls.connector.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(options.pool_size_max)
        // The connection used last: its backend is warm, and under a
        // light load the others stay idle rather than take turns.
        .queue_mode(deadpool::managed::QueueMode::Lifo)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_millis(options.pool_wait_ms_max)))
        .create_timeout(Some(Duration::from_millis(options.connect_ms_max)))
        .build()
}

/// Takes the server lock on a connection of its own (waiting up to
/// `server_lock_wait_ms_max` for a server that just died to let go of it),
/// and spawns the task that holds it: when Postgres restarts, the task
/// reconnects and takes it again; if another server took it meanwhile,
/// `lock_lost` says so and every write is refused from then on.
async fn take_server_lock(
    config: &tokio_postgres::Config,
    tls: &Tls,
    target: &str,
    options: &PostgresOptions,
    lock_lost: &Arc<Mutex<Option<String>>>,
) -> Result<tokio::task::AbortHandle, StorageError> {
    let mut waited_ms = 0;
    let cluster = options.cluster;
    let (client, connection) = loop {
        let (client, connection) = connect_for_lock(config, tls, target).await?;
        match try_server_lock(&client, cluster).await {
            Ok(true) => break (client, connection),
            Ok(false) if waited_ms < options.server_lock_wait_ms_max => {}
            Ok(false) => {
                let reason = lock_refusal(&client, cluster).await;
                return Err(io_error(target, "cannot open", reason));
            }
            Err(error) => return Err(io_error(target, "cannot take the server lock", error)),
        }
        drop(client);
        connection.abort();
        tokio::time::sleep(Duration::from_millis(SERVER_LOCK_RETRY_MS)).await;
        waited_ms += SERVER_LOCK_RETRY_MS;
    };
    let holder = hold_server_lock(
        LockSite {
            config: config.clone(),
            tls: tls.clone(),
            target: target.to_string(),
            cluster,
        },
        client,
        connection,
        lock_lost.clone(),
    );
    Ok(tokio::spawn(holder).abort_handle())
}

type LockConnection = (tokio_postgres::Client, tokio::task::JoinHandle<()>);

async fn connect_for_lock(
    config: &tokio_postgres::Config,
    tls: &Tls,
    target: &str,
) -> Result<LockConnection, StorageError> {
    let (client, connection) = config
        .connect(tls.connector.clone())
        .await
        .map_err(|error| io_error(target, "cannot connect", tls.describe(&error)))?;
    let connection = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "postgres storage: the server lock's connection ended");
        }
    });
    Ok((client, connection))
}

/// Why the server lock was refused: who holds it, and what to do.
async fn lock_refusal(client: &tokio_postgres::Client, cluster: bool) -> String {
    let shared = client
        .query_one(SERVER_LOCK_HOLDERS_SQL, &[&SERVER_LOCK_KEY])
        .await
        .ok()
        .and_then(|row| row.get::<_, Option<bool>>(0));
    let reason = match (shared, cluster) {
        (Some(true), false) => {
            "retrace servers in cluster mode hold this database (schema) open; a single server \
             cannot share it with them: open this one in cluster mode, or stop them"
        }
        (Some(false), true) => {
            "another retrace server holds this database (schema) open as a single server; a \
             cluster server cannot share it: stop that server, or give the cluster another \
             database or schema"
        }
        _ => {
            "another retrace server holds this database (schema) open; stop that server, or \
             give this one another database or schema"
        }
    };
    assert!(!reason.is_empty());
    reason.to_string()
}

/// Tries the server lock, shared in cluster mode; never waits.
async fn try_server_lock(client: &tokio_postgres::Client, cluster: bool) -> Result<bool, String> {
    let sql = match cluster {
        true => SERVER_LOCK_SHARED_SQL,
        false => SERVER_LOCK_SQL,
    };
    let row = client
        .query_one(sql, &[&SERVER_LOCK_KEY])
        .await
        .map_err(|error| describe_error(&error))?;
    // NULL when no schema on the search_path exists (nothing to lock).
    row.get::<_, Option<bool>>(0).ok_or_else(|| {
        let search_path: String = row.get(1);
        format!("no schema on the search_path ({search_path}) exists; create one or fix it")
    })
}

/// Where the server lock is taken, and how (shared in cluster mode).
struct LockSite {
    config: tokio_postgres::Config,
    tls: Tls,
    target: String,
    cluster: bool,
}

/// Holds the server lock for as long as the storage lives (see
/// [`take_server_lock`]).
async fn hold_server_lock(
    site: LockSite,
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
    lock_lost: Arc<Mutex<Option<String>>>,
) {
    let LockSite {
        config,
        tls,
        target,
        cluster,
    } = site;
    let (mut _client, mut connection) = (client, connection);
    loop {
        let _ = (&mut connection).await; // Ends when Postgres closes it.
        tracing::warn!(%target, "postgres storage: the server lock's connection was lost; taking the lock again");
        let mut backoff_ms = SERVER_LOCK_RETRY_MS;
        loop {
            tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
            backoff_ms = (backoff_ms * 2).min(SERVER_LOCK_BACKOFF_MS_MAX);
            let Ok((client, reconnected)) = connect_for_lock(&config, &tls, &target).await else {
                continue;
            };
            match try_server_lock(&client, cluster).await {
                Ok(true) => {
                    (_client, connection) = (client, reconnected);
                    break;
                }
                Ok(false) => {
                    let reason = format!(
                        "database {target}: another retrace server took this database over \
                         while Postgres restarted; every write is refused: restart this server"
                    );
                    tracing::error!(%reason, "postgres storage: server lock lost");
                    *lock(&lock_lost) = Some(reason);
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "postgres storage: cannot take the server lock yet");
                    reconnected.abort();
                }
            }
        }
    }
}

/// Every `health_probe_ms`, checks the database answers (`SELECT 1`, within
/// `health_probe_ms`, on a connection of its own so a busy pool cannot hold
/// it up) and records the outcome where `health` reads it. Ends with the
/// storage.
async fn probe_health(weak: Weak<Inner>, config: tokio_postgres::Config) {
    let mut connection: Option<LockConnection> = None;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let (tls, every_ms) = (inner.tls.clone(), inner.options.health_probe_ms);
        drop(inner); // The storage may go while this sleeps.
        let every = Duration::from_millis(every_ms);
        tokio::time::sleep(every).await;
        let probe = probe_once(&mut connection, &config, &tls);
        let outcome = match tokio::time::timeout(every, probe).await {
            Ok(outcome) => outcome,
            Err(_elapsed) => Err(format!("no answer within {every_ms} ms")),
        };
        if outcome.is_err()
            && let Some((_, task)) = connection.take()
        {
            task.abort(); // Closes it; the next probe connects anew.
        }
        let Some(inner) = weak.upgrade() else { return };
        let storage = PostgresStorage { inner };
        match outcome {
            Ok(()) => storage.untroubled(),
            Err(reason) => {
                let error = io_error(&storage.inner.target, "health check", reason);
                storage.troubled(&error);
            }
        }
    }
}

/// One health check: connects if need be, then `SELECT 1`.
async fn probe_once(
    connection: &mut Option<LockConnection>,
    config: &tokio_postgres::Config,
    tls: &Tls,
) -> Result<(), String> {
    if connection
        .as_ref()
        .is_none_or(|(client, _)| client.is_closed())
    {
        let (client, driver) = config
            .connect(tls.connector.clone())
            .await
            .map_err(|error| tls.describe(&error))?;
        let task = tokio::spawn(async move {
            let _ = driver.await; // Its failure shows in the next query.
        });
        *connection = Some((client, task));
    }
    let (client, _) = connection.as_ref().expect("connected above");
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|error| describe_error(&error))?;
    Ok(())
}

/// How connections use TLS, and the connector that does it.
#[derive(Clone)]
struct Tls {
    settings: TlsSettings,
    connector: MakeRustlsConnect,
}

impl Tls {
    /// A connection's failure, a TLS one explained.
    fn describe(&self, error: &tokio_postgres::Error) -> String {
        self.settings
            .explain(error)
            .unwrap_or_else(|| describe_error(error))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A driver error with the server's message, detail and code when it has one.
fn describe_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail}; SQLSTATE {})", db.message(), db.code().code()),
            None => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        },
        None => error.to_string(),
    }
}

/// The schema's retrace version (0: an empty schema), refusing another
/// program's schema and a newer build's.
async fn schema_version(
    client: &impl deadpool_postgres::GenericClient,
    target: &str,
) -> Result<i32, StorageError> {
    let fail = |error: tokio_postgres::Error| {
        io_error(
            target,
            "cannot read the schema version",
            describe_error(&error),
        )
    };
    let row = client
        .query_one(
            "SELECT to_regclass('retrace_schema') IS NOT NULL, \
                    (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'm', 'p', 'f')), \
                    current_schema()",
            &[],
        )
        .await
        .map_err(fail)?;
    let (marked, objects, schema): (bool, i64, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    let Some(schema) = schema else {
        let reason = "no schema on the search_path exists; create one or fix search_path";
        return Err(io_error(target, "cannot open", reason));
    };
    if !marked {
        if objects > 0 {
            let reason = format!(
                "schema {schema:?} has tables but no retrace schema version; it belongs to \
                 another program"
            );
            return Err(io_error(target, "cannot open", reason));
        }
        return Ok(0);
    }
    let row = client
        .query_one("SELECT application, version FROM retrace_schema", &[])
        .await
        .map_err(fail)?;
    let (application, version): (String, i32) = (row.get(0), row.get(1));
    if application != APPLICATION {
        let reason = format!("schema {schema:?} belongs to {application:?}, not retrace");
        return Err(io_error(target, "cannot open", reason));
    }
    check_schema_version(target, version)?;
    Ok(version)
}

fn check_schema_version(target: &str, version: i32) -> Result<(), StorageError> {
    let supported = PostgresStorage::SCHEMA_VERSION;
    if version < 0 {
        let reason =
            format!("schema version {version} is negative; this is not a retrace database");
        return Err(io_error(target, "cannot open", reason));
    }
    if version as u32 > supported {
        return Err(StorageError::Io(format!(
            "database {target} has schema version {version}, newer than this build supports \
             ({supported}); upgrade retrace"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Writes.

/// The run's row as [`check_batch`] compares it (no state), locked until the
/// transaction ends.
const SELECT_HEADER_FOR_UPDATE: &str = "SELECT run_id, workflow_id, workflow_type, task_queue, \
    status, start_time_ms, close_time_ms, next_event_id, version, ''::bytea, search_attributes \
    FROM runs WHERE run_id = $1 FOR UPDATE";
const SELECT_CLAIM_FOR_UPDATE: &str =
    "SELECT run_id FROM workflow_ids WHERE workflow_id = $1 FOR UPDATE";
/// A fenced batch's shard: its epoch, the row locked so that a takeover
/// (`UPDATE … epoch + 1`) waits for the write's transaction to end.
const SELECT_EPOCH_FOR_SHARE: &str = "SELECT epoch FROM shards WHERE shard = $1 FOR SHARE";
const INSERT_RUN: &str = "INSERT INTO runs (run_id, workflow_id, workflow_type, task_queue, \
    status, start_time_ms, close_time_ms, next_event_id, version, state, search_attributes) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (run_id) DO NOTHING";
/// The conditional update: it matches no row unless the stored version is
/// the one the batch expects.
const UPDATE_RUN: &str = "UPDATE runs SET status = $2, close_time_ms = $3, next_event_id = $4, \
    version = $5, state = $6, search_attributes = $8 WHERE run_id = $1 AND version = $7";
const INSERT_EVENTS: &str = "INSERT INTO event_batches (run_id, first_event_id, last_event_id, \
    events) VALUES ($1, $2, $3, $4)";
/// The claim, conditional too: it takes the workflow id only from the run
/// the claim names (`NULL`: from nobody).
const UPSERT_CLAIM: &str = "INSERT INTO workflow_ids (workflow_id, run_id) VALUES ($1, $2) \
    ON CONFLICT (workflow_id) DO UPDATE SET run_id = excluded.run_id \
    WHERE workflow_ids.run_id IS NOT DISTINCT FROM $3::text";
const DELETE_BUFFERED: &str = "DELETE FROM buffered_events WHERE run_id = $1";
const INSERT_BUFFERED: &str = "INSERT INTO buffered_events (run_id, seq, events) VALUES ($1, \
    (SELECT coalesce(max(seq), 0) + 1 FROM buffered_events WHERE run_id = $1), $2)";

/// A batch's JSON, encoded by the caller before it takes a connection.
struct Encoded {
    events: Option<String>,
    buffered: Option<String>,
    next_events: Option<String>,
}

impl Encoded {
    fn of(batch: &WriteBatch) -> Result<Encoded, StorageError> {
        Ok(Encoded {
            events: super::sqlite::encode_events(batch)?,
            buffered: super::sqlite::encode_buffered(batch)?,
            next_events: match &batch.next_run {
                Some(next) => super::sqlite::encode_events(next)?,
                None => None,
            },
        })
    }
}

/// Why a write's transaction did not commit.
enum Failure {
    /// Refused by [`check_batch`]: roll back and answer this.
    Refused(StorageError),
    /// The conditional write of the run matched no row (another writer got
    /// there first): roll back, read what is stored, answer `VersionConflict`.
    RunConflict {
        run_id: String,
        expected: Option<u64>,
    },
    /// The conditional claim matched no row: as above, `WorkflowIdConflict`.
    ClaimConflict(WorkflowIdClaim),
    /// A statement failed (the server refused it, or the connection broke).
    Statement(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Failure::Statement(error)
    }
}

/// A pooled connection inside a transaction: if the transaction is still
/// open when this drops (an error, a timeout), the connection is taken out
/// of the pool and closed, and the server rolls the transaction back.
struct InTransaction {
    object: Option<Object>,
    open: bool,
    /// Set just before `COMMIT` is sent: from then on the outcome of a lost
    /// connection is unknown.
    commit_sent: bool,
}

impl InTransaction {
    fn client(&self) -> &ClientWrapper {
        self.object
            .as_ref()
            .expect("the connection is held until drop")
    }
}

impl Drop for InTransaction {
    fn drop(&mut self) {
        if self.open
            && let Some(object) = self.object.take()
        {
            drop(Object::take(object)); // Closes the connection.
        }
    }
}

type Execution<'a> = BoxFuture<'a, Result<u64, tokio_postgres::Error>>;

/// How [`apply_run`] writes one run of a batch.
struct RunWrite<'a> {
    /// The run's events, encoded.
    events: Option<&'a str>,
    /// Its buffered events to append, encoded.
    buffered: Option<&'a str>,
    /// Send `BEGIN` first, in the same round trip as the reads.
    begin: bool,
    /// The storage's shard count, to check the batch's fence (`None`: the
    /// next run of a batch, under its predecessor's fence).
    shard_count: Option<u32>,
}

/// Checks one run's part of a batch against the locked rows (its shard's
/// row locked `FOR SHARE` if it is fenced, so a takeover waits for this
/// transaction), then writes it with its statements pipelined.
async fn apply_run(
    client: &ClientWrapper,
    batch: &WriteBatch,
    how: RunWrite<'_>,
) -> Result<(), Failure> {
    assert_eq!(how.events.is_some(), !batch.events.is_empty());
    let run_id = batch.run.run_id.as_str();
    let header = client.prepare_cached(SELECT_HEADER_FOR_UPDATE);
    let claim = client.prepare_cached(SELECT_CLAIM_FOR_UPDATE);
    let (header, claim) = futures::try_join!(header, claim)?;
    let fenced = how.shard_count.zip(batch.fence);
    let shard_read = match fenced {
        Some((_, fence)) => {
            let statement = client.prepare_cached(SELECT_EPOCH_FOR_SHARE).await?;
            Some((statement, fence.shard))
        }
        None => None,
    };
    let begun = async {
        if how.begin {
            client.batch_execute("BEGIN").await?;
        }
        Ok::<(), tokio_postgres::Error>(())
    };
    let epoch = select_epoch_for_share(client, shard_read.as_ref());
    let stored = async { client.query_opt(&header, &[&run_id]).await };
    let current = async {
        match &batch.claim {
            Some(c) => client.query_opt(&claim, &[&c.workflow_id]).await,
            None => Ok(None),
        }
    };
    let ((), epoch, stored, current) = futures::try_join!(begun, epoch, stored, current)?;
    if let Some((shard_count, fence)) = fenced {
        let epoch = match epoch {
            Some(epoch) => Some(stored_epoch(fence.shard, epoch).map_err(Failure::Refused)?),
            None => None,
        };
        check_fence(batch, shard_count, epoch).map_err(Failure::Refused)?;
    }
    let stored = match stored {
        Some(row) => Some(run_from_row(&row).map_err(Failure::Refused)?),
        None => None,
    };
    let current: Option<String> = current.map(|row| row.get(0));
    check_batch(batch, stored.as_ref(), current.as_deref()).map_err(Failure::Refused)?;
    write_run(client, batch, how.events, how.buffered).await
}

/// The shard's stored epoch, its row locked `FOR SHARE` until the
/// transaction ends (nothing read for an unfenced batch).
async fn select_epoch_for_share(
    client: &ClientWrapper,
    shard_read: Option<&(tokio_postgres::Statement, u32)>,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let Some((statement, shard)) = shard_read else {
        return Ok(None);
    };
    // The fence was checked to name the workflow id's shard, below the count.
    let shard = i32::try_from(*shard).expect("a shard is below SHARD_COUNT_MAX");
    let row = client.query_opt(statement, &[&shard]).await?;
    Ok(row.map(|row| row.get(0)))
}

/// A shard's epoch read back, or `Corrupt` if negative.
fn stored_epoch(shard: u32, epoch: i64) -> Result<u64, StorageError> {
    u64::try_from(epoch).map_err(|_| {
        StorageError::Corrupt(format!(
            "shard {shard}: column epoch holds negative {epoch}"
        ))
    })
}

/// The writes of one checked run, pipelined; refuses the run if a
/// conditional write matched no row.
async fn write_run(
    client: &ClientWrapper,
    batch: &WriteBatch,
    events: Option<&str>,
    buffered: Option<&str>,
) -> Result<(), Failure> {
    let values = RunValues::of(batch).map_err(Failure::Refused)?;
    let statements = prepare_writes(client).await?;
    let executions = run_writes(client, &statements, batch, &values, events, buffered);
    let results = futures::future::join_all(executions).await;
    check_writes(batch, events.is_some(), results)
}

/// A run's numbers as Postgres stores them (BIGINT), converted before any
/// statement is sent.
struct RunValues {
    start_time_ms: i64,
    close_time_ms: Option<i64>,
    next_event_id: i64,
    version: i64,
    expected: Option<i64>,
    first_event_id: i64,
    last_event_id: i64,
    /// The search attributes as the row holds them (index rows as JSON).
    search_attributes: String,
    /// The batch's fence: its shard and epoch (`None`: unfenced).
    fence: Option<(i32, i64)>,
}

impl RunValues {
    /// `BadBatch` if a number is over `i64::MAX`.
    fn of(batch: &WriteBatch) -> Result<RunValues, StorageError> {
        let run = &batch.run;
        let stored = |field: &str, value: u64| to_stored(&run.run_id, field, value);
        let (first_event_id, last_event_id) = match (batch.events.first(), batch.events.last()) {
            (Some(first), Some(last)) => (
                stored("event_id", first.event_id)?,
                stored("event_id", last.event_id)?,
            ),
            _ => (0, 0),
        };
        Ok(RunValues {
            start_time_ms: stored("start_time", run.start_time.as_millis())?,
            close_time_ms: match run.close_time {
                Some(time) => Some(stored("close_time", time.as_millis())?),
                None => None,
            },
            next_event_id: stored("next_event_id", run.next_event_id)?,
            version: stored("version", run.version)?,
            expected: match batch.expected_version {
                Some(expected) => Some(stored("version", expected)?),
                None => None,
            },
            first_event_id,
            last_event_id,
            search_attributes: crate::visibility::encode_index(&run.search_attributes),
            fence: match batch.fence {
                Some(fence) => Some((
                    i32::try_from(stored("fence shard", u64::from(fence.shard))?).map_err(
                        |_| StorageError::BadBatch {
                            run_id: run.run_id.clone(),
                            reason: format!("fence shard {} does not exist", fence.shard),
                        },
                    )?,
                    stored("fence epoch", fence.epoch)?,
                )),
                None => None,
            },
        })
    }
}

/// The statements that write one checked run, in the order
/// [`check_writes`] reads their row counts; not yet sent.
fn run_writes<'a>(
    client: &'a ClientWrapper,
    statements: &'a WriteStatements,
    batch: &'a WriteBatch,
    values: &'a RunValues,
    events: Option<&'a str>,
    buffered: Option<&'a str>,
) -> Vec<Execution<'a>> {
    let run = &batch.run;
    let id = run.run_id.as_str();
    let status = run.status.as_str();
    let mut executions: Vec<Execution<'a>> = Vec::with_capacity(5);
    executions.push(match &values.expected {
        None => Box::pin(async move {
            let params: [&(dyn ToSql + Sync); 11] = [
                &id,
                &run.workflow_id,
                &run.workflow_type,
                &run.task_queue,
                &status,
                &values.start_time_ms,
                &values.close_time_ms,
                &values.next_event_id,
                &values.version,
                &run.state,
                &values.search_attributes,
            ];
            client.execute(&statements.insert_run, &params).await
        }),
        Some(expected) => Box::pin(async move {
            let params: [&(dyn ToSql + Sync); 8] = [
                &id,
                &status,
                &values.close_time_ms,
                &values.next_event_id,
                &values.version,
                &run.state,
                expected,
                &values.search_attributes,
            ];
            client.execute(&statements.update_run, &params).await
        }),
    });
    if let Some(events) = events {
        executions.push(Box::pin(async move {
            let params: [&(dyn ToSql + Sync); 4] =
                [&id, &values.first_event_id, &values.last_event_id, &events];
            client.execute(&statements.insert_events, &params).await
        }));
    }
    if let Some(claim) = &batch.claim {
        executions.push(Box::pin(async move {
            let previous = claim.previous_run_id.as_deref();
            let params: [&(dyn ToSql + Sync); 3] = [&claim.workflow_id, &id, &previous];
            client.execute(&statements.upsert_claim, &params).await
        }));
    }
    if batch.buffered.clear {
        executions.push(Box::pin(async move {
            client.execute(&statements.delete_buffered, &[&id]).await
        }));
    }
    if let Some(buffered) = buffered {
        executions.push(Box::pin(async move {
            let params: [&(dyn ToSql + Sync); 2] = [&id, &buffered];
            client.execute(&statements.insert_buffered, &params).await
        }));
    }
    executions
}

/// The row counts of [`write_run`]'s pipeline: a conditional write that
/// matched nothing refuses the batch, before any statement error (a
/// statement after a refused write may fail because of it).
fn check_writes(
    batch: &WriteBatch,
    has_events: bool,
    results: Vec<Result<u64, tokio_postgres::Error>>,
) -> Result<(), Failure> {
    assert!(!results.is_empty());
    if let Ok(0) = results[0] {
        return Err(Failure::RunConflict {
            run_id: batch.run.run_id.clone(),
            expected: batch.expected_version,
        });
    }
    let claim_index = 1 + usize::from(has_events);
    if let Some(claim) = &batch.claim
        && let Ok(0) = results[claim_index]
    {
        return Err(Failure::ClaimConflict(claim.clone()));
    }
    let delete_index = claim_index + usize::from(batch.claim.is_some());
    for (index, result) in results.into_iter().enumerate() {
        let changed = result?;
        // Every statement but the clearing of buffered events writes one row.
        let clears = batch.buffered.clear && index == delete_index;
        assert!(
            clears || changed == 1,
            "write {index} changed {changed} rows"
        );
    }
    Ok(())
}

/// The write statements, prepared once per connection (the pool's cache).
struct WriteStatements {
    insert_run: tokio_postgres::Statement,
    update_run: tokio_postgres::Statement,
    insert_events: tokio_postgres::Statement,
    upsert_claim: tokio_postgres::Statement,
    delete_buffered: tokio_postgres::Statement,
    insert_buffered: tokio_postgres::Statement,
}

async fn prepare_writes(client: &ClientWrapper) -> Result<WriteStatements, tokio_postgres::Error> {
    let (insert_run, update_run, insert_events, upsert_claim, delete_buffered, insert_buffered) = futures::try_join!(
        client.prepare_cached(INSERT_RUN),
        client.prepare_cached(UPDATE_RUN),
        client.prepare_cached(INSERT_EVENTS),
        client.prepare_cached(UPSERT_CLAIM),
        client.prepare_cached(DELETE_BUFFERED),
        client.prepare_cached(INSERT_BUFFERED),
    )?;
    Ok(WriteStatements {
        insert_run,
        update_run,
        insert_events,
        upsert_claim,
        delete_buffered,
        insert_buffered,
    })
}

/// A u64 as Postgres's BIGINT, or a `BadBatch` naming the field.
fn to_stored(run_id: &str, field: &str, value: u64) -> Result<i64, StorageError> {
    i64::try_from(value).map_err(|_| StorageError::BadBatch {
        run_id: run_id.to_string(),
        reason: format!(
            "{field} {value} is over the largest storable value {}",
            i64::MAX
        ),
    })
}

/// A BIGINT read back as u64, or `Corrupt` naming the run and the column.
fn from_stored(run_id: &str, column: &str, value: i64) -> Result<u64, StorageError> {
    u64::try_from(value).map_err(|_| {
        StorageError::Corrupt(format!(
            "run {run_id}: column {column} holds negative {value}"
        ))
    })
}

impl PostgresStorage {
    /// Queues `batch` for a writer task and awaits its answer.
    async fn write_batch(&self, batch: WriteBatch) -> Result<(), StorageError> {
        if let Some(reason) = lock(&self.inner.lock_lost).clone() {
            return Err(StorageError::Io(reason));
        }
        if let Some(fence) = batch.fence {
            // Its shard must be its workflow id's; the epoch is checked by
            // Postgres, in the write's transaction.
            check_fence(&batch, self.shard_count(), Some(fence.epoch))?;
        }
        let encoded = Encoded::of(&batch)?;
        let (reply, answer) = oneshot::channel();
        let job = WriteJob {
            batch,
            encoded,
            reply,
        };
        let stopped = || StorageError::Io("storage stopped".to_string());
        self.inner
            .write_sender
            .send(job)
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// One batch, one transaction (the path of a group of one, and of each
    /// batch of a group that failed as a whole).
    async fn write_alone(&self, batch: &WriteBatch, encoded: &Encoded) -> Result<(), StorageError> {
        let object = self.connection().await?;
        let mut transaction = InTransaction {
            object: Some(object),
            open: true,
            commit_sent: false,
        };
        let duration = Duration::from_millis(self.inner.options.operation_ms_max);
        let shard_count = self.shard_count();
        let transacting = transact(&mut transaction, batch, encoded, shard_count);
        let outcome = tokio::time::timeout(duration, transacting).await;
        let target = &self.inner.target;
        let run_id = &batch.run.run_id;
        let result = match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failure)) => self.failed(&mut transaction, failure).await,
            Err(_elapsed) if transaction.commit_sent => Err(StorageError::Timeout),
            Err(_elapsed) => Err(io_error(
                target,
                &format!("cannot write run {run_id}"),
                format!(
                    "no answer within {} ms; nothing was committed",
                    self.inner.options.operation_ms_max
                ),
            )),
        };
        match &result {
            Ok(()) => {
                assert!(!transaction.open);
                self.inner.batches_written.fetch_add(1, Ordering::Relaxed);
                self.inner.commits.fetch_add(1, Ordering::Relaxed);
                self.untroubled();
            }
            Err(StorageError::Timeout) => {
                self.inner.writes_ambiguous.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%run_id, target = %self.inner.target, "postgres storage: the connection was lost while committing; the write may or may not have committed");
            }
            Err(_) => {}
        }
        result
    }

    /// After a failed transaction: rolls back (or leaves the connection to
    /// be closed, see [`InTransaction`]) and says what the caller gets.
    async fn failed(
        &self,
        transaction: &mut InTransaction,
        failure: Failure,
    ) -> Result<(), StorageError> {
        let target = &self.inner.target;
        if let Failure::Statement(error) = &failure {
            let doing = "cannot write";
            if transaction.commit_sent && error.as_db_error().is_none() {
                return Err(StorageError::Timeout); // Lost with COMMIT on its way.
            }
            let storage_error = io_error(target, doing, describe_error(error));
            if error.is_closed() || error.as_db_error().is_none() {
                self.troubled(&storage_error);
                return Err(storage_error); // The connection is closed on drop.
            }
            let _ = rollback(transaction).await;
            return Err(storage_error);
        }
        if let Err(error) = rollback(transaction).await {
            return Err(io_error(target, "cannot roll back", describe_error(&error)));
        }
        let client = transaction.client();
        let read_fail = |error: tokio_postgres::Error| {
            io_error(
                target,
                "cannot read after a conflict",
                describe_error(&error),
            )
        };
        match failure {
            Failure::Refused(error) => Err(error),
            Failure::RunConflict { run_id, expected } => {
                let row = client
                    .query_opt("SELECT version FROM runs WHERE run_id = $1", &[&run_id])
                    .await
                    .map_err(read_fail)?;
                let found = match row {
                    Some(row) => Some(from_stored(&run_id, "version", row.get(0))?),
                    None => None,
                };
                Err(StorageError::VersionConflict {
                    run_id,
                    expected,
                    found,
                })
            }
            Failure::ClaimConflict(claim) => {
                let row = client
                    .query_opt(
                        "SELECT run_id FROM workflow_ids WHERE workflow_id = $1",
                        &[&claim.workflow_id],
                    )
                    .await
                    .map_err(read_fail)?;
                Err(StorageError::WorkflowIdConflict {
                    workflow_id: claim.workflow_id,
                    expected: claim.previous_run_id,
                    current: row.map(|row| row.get(0)),
                })
            }
            Failure::Statement(_) => unreachable!("answered above"),
        }
    }
}

/// `ROLLBACK`; the transaction is over either way (a failed rollback leaves
/// the connection to be closed on drop).
async fn rollback(transaction: &mut InTransaction) -> Result<(), tokio_postgres::Error> {
    assert!(transaction.open);
    transaction.client().batch_execute("ROLLBACK").await?;
    transaction.open = false;
    Ok(())
}

/// The batch's transaction: `BEGIN`, the run (and its next run, in the same
/// shard, under the same fence), `COMMIT`.
async fn transact(
    transaction: &mut InTransaction,
    batch: &WriteBatch,
    encoded: &Encoded,
    shard_count: u32,
) -> Result<(), Failure> {
    assert!(transaction.open && !transaction.commit_sent);
    let client = transaction.client();
    let (events, buffered) = (encoded.events.as_deref(), encoded.buffered.as_deref());
    let first = RunWrite {
        events,
        buffered,
        begin: true,
        shard_count: Some(shard_count),
    };
    apply_run(client, batch, first).await?;
    if let Some(next) = &batch.next_run {
        // Checked after the first: the workflow id is still the first run's.
        let events = encoded.next_events.as_deref();
        let then = RunWrite {
            events,
            buffered: None,
            begin: false,
            shard_count: None,
        };
        apply_run(client, next, then).await?;
    }
    transaction.commit_sent = true;
    transaction.client().batch_execute("COMMIT").await?;
    transaction.open = false;
    Ok(())
}

// ---------------------------------------------------------------------------
// Reads.

/// Why a read failed.
enum ReadError {
    Statement(tokio_postgres::Error),
    Storage(StorageError),
}

impl From<tokio_postgres::Error> for ReadError {
    fn from(error: tokio_postgres::Error) -> Self {
        ReadError::Statement(error)
    }
}

impl From<StorageError> for ReadError {
    fn from(error: StorageError) -> Self {
        ReadError::Storage(error)
    }
}

impl PostgresStorage {
    /// Runs `read` on a pooled connection within `operation_ms_max`.
    async fn read<T>(
        &self,
        doing: String,
        read: impl AsyncFnOnce(&ClientWrapper) -> Result<T, ReadError>,
    ) -> Result<T, StorageError> {
        let object = self.connection().await?;
        let duration = Duration::from_millis(self.inner.options.operation_ms_max);
        let target = &self.inner.target;
        match tokio::time::timeout(duration, read(&object)).await {
            Ok(Ok(value)) => {
                self.untroubled();
                Ok(value)
            }
            Ok(Err(ReadError::Storage(error))) => Err(error),
            Ok(Err(ReadError::Statement(error))) => {
                let error_closed = error.is_closed() || error.as_db_error().is_none();
                let storage_error = io_error(target, &doing, describe_error(&error));
                if error_closed {
                    self.troubled(&storage_error);
                }
                Err(storage_error)
            }
            Err(_elapsed) => {
                drop(Object::take(object)); // Its answer may still come: close it.
                let reason = format!(
                    "no answer within {} ms",
                    self.inner.options.operation_ms_max
                );
                Err(io_error(target, &doing, reason))
            }
        }
    }
}

async fn select_run(client: &ClientWrapper, run_id: &str) -> Result<Option<RunRecord>, ReadError> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1");
    let statement = client.prepare_cached(&sql).await?;
    let run = match client.query_opt(&statement, &[&run_id]).await? {
        Some(row) => Some(run_from_row(&row)?),
        None => None,
    };
    assert!(run.as_ref().is_none_or(|run| run.run_id == run_id));
    Ok(run)
}

async fn select_current_run(
    client: &ClientWrapper,
    workflow_id: &str,
) -> Result<Option<String>, ReadError> {
    let statement = client
        .prepare_cached("SELECT run_id FROM workflow_ids WHERE workflow_id = $1")
        .await?;
    let row = client.query_opt(&statement, &[&workflow_id]).await?;
    Ok(row.map(|row| row.get(0)))
}

/// Up to `limit` events of `run_id` from `from_event_id` on, from the batch
/// that holds `from_event_id` forward; checks each batch decodes, holds the
/// ids its row says, and that no id is missing.
async fn select_events(
    client: &ClientWrapper,
    run_id: &str,
    from_event_id: u64,
    limit: usize,
) -> Result<Vec<Event>, ReadError> {
    let from_event_id = from_event_id.max(1);
    let Ok(from_stored_id) = i64::try_from(from_event_id) else {
        return Ok(Vec::new()); // Past any storable id.
    };
    let statement = client
        .prepare_cached(
            "SELECT first_event_id, last_event_id, events FROM event_batches \
             WHERE run_id = $1 AND first_event_id >= coalesce((SELECT first_event_id \
                 FROM event_batches WHERE run_id = $1 AND first_event_id <= $2 \
                 ORDER BY first_event_id DESC LIMIT 1), $2) \
             ORDER BY first_event_id LIMIT $3",
        )
        .await?;
    // At most one row per event wanted, and the one holding `from_event_id`.
    let rows_max = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
    let rows = client
        .query(&statement, &[&run_id, &from_stored_id, &rows_max])
        .await?;
    let mut events: Vec<Event> = Vec::new();
    for row in rows {
        if events.len() == limit {
            break;
        }
        let first = from_stored(run_id, "first_event_id", row.get(0))?;
        let last = from_stored(run_id, "last_event_id", row.get(1))?;
        let json: &str = row.get(2);
        for event in decode_batch(run_id, first, last, json)? {
            if event.event_id < from_event_id || events.len() == limit {
                continue;
            }
            let expected = from_event_id + events.len() as u64;
            if event.event_id != expected {
                let reason = format!("run {run_id}: event {expected} is missing");
                return Err(StorageError::Corrupt(reason).into());
            }
            events.push(event);
        }
    }
    assert!(events.len() <= limit);
    Ok(events)
}

/// The events of one stored batch, checked to be exactly `first..=last`.
fn decode_batch(
    run_id: &str,
    first: u64,
    last: u64,
    json: &str,
) -> Result<Vec<Event>, StorageError> {
    let batch: Vec<Event> = serde_json::from_str(json).map_err(|error| {
        StorageError::Corrupt(format!(
            "run {run_id} events {first}..={last}: bad JSON: {error}"
        ))
    })?;
    let ids_match = batch
        .iter()
        .zip(first..)
        .all(|(event, expected)| event.event_id == expected);
    if !ids_match || first + batch.len() as u64 != last + 1 {
        let ids: Vec<u64> = batch.iter().map(|e| e.event_id).collect();
        return Err(StorageError::Corrupt(format!(
            "run {run_id} events {first}..={last}: the row holds events {ids:?}"
        )));
    }
    Ok(batch)
}

/// Runs matching `query`, in its order. Only the filters present go in the
/// SQL, so Postgres can use the status and workflow type indexes; a list
/// query is translated to parameterized SQL ([`crate::visibility::sql`]),
/// its statement not cached (its shapes are the users').
async fn select_runs(
    client: &ClientWrapper,
    query: &ListQuery,
) -> Result<Vec<RunRecord>, ReadError> {
    use crate::visibility::sql::{Dialect, SqlParam, list_statement};
    let statement = list_statement(Dialect::Postgres, RUN_COLUMNS, query);
    let boxed: Vec<Box<dyn ToSql + Sync + Send>> = statement
        .params
        .into_iter()
        .map(|param| -> Box<dyn ToSql + Sync + Send> {
            match param {
                SqlParam::Text(text) => Box::new(text),
                SqlParam::Int(int) => Box::new(int),
                SqlParam::Double(double) => Box::new(double),
            }
        })
        .collect();
    let values: Vec<&(dyn ToSql + Sync)> = boxed
        .iter()
        .map(|value| value.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = match query.query {
        None => {
            let prepared = client.prepare_cached(&statement.sql).await?;
            client.query(&prepared, &values).await?
        }
        Some(_) => client.query(statement.sql.as_str(), &values).await?,
    };
    let mut runs: Vec<RunRecord> = Vec::with_capacity(rows.len());
    let ordered_by_id = query.query.as_ref().is_none_or(|q| q.order_by.is_none());
    for row in rows {
        let run = run_from_row(&row)?;
        assert!(!ordered_by_id || runs.last().is_none_or(|last| last.run_id < run.run_id));
        assert!(query.status.is_none_or(|status| status == run.status));
        runs.push(run);
    }
    assert!(runs.len() <= query.limit);
    Ok(runs)
}

/// The run's record version and buffered events, in one statement (one snapshot).
async fn select_buffered(client: &ClientWrapper, run_id: &str) -> Result<BufferedRead, ReadError> {
    let statement = client
        .prepare_cached(
            "SELECT r.version, b.seq, b.events FROM runs r \
             LEFT JOIN buffered_events b ON b.run_id = r.run_id \
             WHERE r.run_id = $1 ORDER BY b.seq",
        )
        .await?;
    let rows = client.query(&statement, &[&run_id]).await?;
    let mut read = BufferedRead::default();
    for row in rows {
        read.version = Some(from_stored(run_id, "version", row.get(0))?);
        let Some(json) = row.get::<_, Option<&str>>(2) else {
            continue; // The run has no buffered events.
        };
        let seq: i64 = row.get(1);
        let batch: Vec<EventKind> = serde_json::from_str(json).map_err(|error| {
            StorageError::Corrupt(format!(
                "run {run_id}: buffered events row {seq}: bad JSON: {error}"
            ))
        })?;
        read.events.extend(batch);
    }
    assert!(read.version.is_some() || read.events.is_empty());
    Ok(read)
}

/// Decodes a `runs` row selected with [`RUN_COLUMNS`].
fn run_from_row(row: &Row) -> Result<RunRecord, StorageError> {
    let run_id: String = row.get(0);
    let status_text: &str = row.get(4);
    let Some(status) = RunStatus::parse(status_text) else {
        return Err(StorageError::Corrupt(format!(
            "run {run_id}: unknown status {status_text:?}"
        )));
    };
    let start_time_ms = from_stored(&run_id, "start_time_ms", row.get(5))?;
    let close_time_ms = match row.get::<_, Option<i64>>(6) {
        Some(value) => Some(from_stored(&run_id, "close_time_ms", value)?),
        None => None,
    };
    let next_event_id = from_stored(&run_id, "next_event_id", row.get(7))?;
    let version = from_stored(&run_id, "version", row.get(8))?;
    if next_event_id == 0 || version == 0 {
        return Err(StorageError::Corrupt(format!(
            "run {run_id}: next_event_id and version start at 1"
        )));
    }
    let search_attributes = crate::visibility::decode_index(row.get(10))
        .map_err(|reason| StorageError::Corrupt(format!("run {run_id}: {reason}")))?;
    Ok(RunRecord {
        search_attributes,
        workflow_id: row.get(1),
        workflow_type: row.get(2),
        task_queue: row.get(3),
        status,
        start_time: Timestamp(start_time_ms),
        close_time: close_time_ms.map(Timestamp),
        next_event_id,
        version,
        state: row.get(9),
        run_id,
    })
}

impl Storage for PostgresStorage {
    fn write(&self, batch: WriteBatch) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(self.write_batch(batch))
    }

    fn read_run(&self, run_id: &str) -> BoxFuture<'_, Result<Option<RunRecord>, StorageError>> {
        let run_id = run_id.to_string();
        let doing = format!("cannot read run {run_id}");
        Box::pin(async move {
            self.read(doing, async |c| select_run(c, &run_id).await)
                .await
        })
    }

    fn current_run(
        &self,
        workflow_id: &str,
    ) -> BoxFuture<'_, Result<Option<String>, StorageError>> {
        let workflow_id = workflow_id.to_string();
        let doing = format!("cannot read workflow id {workflow_id:?}");
        Box::pin(async move {
            self.read(doing, async |c| select_current_run(c, &workflow_id).await)
                .await
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
        Box::pin(async move {
            self.read(doing, async |c| {
                select_events(c, &run_id, from_event_id, limit).await
            })
            .await
        })
    }

    fn list_runs(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<RunRecord>, StorageError>> {
        let doing = "cannot list runs".to_string();
        Box::pin(async move {
            self.read(doing, async |c| select_runs(c, &query).await)
                .await
        })
    }

    fn read_buffered(&self, run_id: &str) -> BoxFuture<'_, Result<BufferedRead, StorageError>> {
        let run_id = run_id.to_string();
        let doing = format!("cannot read the buffered events of run {run_id}");
        Box::pin(async move {
            self.read(doing, async |c| select_buffered(c, &run_id).await)
                .await
        })
    }

    fn cluster_view(&self) -> BoxFuture<'_, Result<ClusterView, StorageError>> {
        Box::pin(self.view())
    }

    fn acquire_shard(
        &self,
        request: LeaseRequest,
    ) -> BoxFuture<'_, Result<LeaseAnswer, StorageError>> {
        Box::pin(self.acquire(request))
    }

    fn release_shard(&self, request: LeaseRequest) -> BoxFuture<'_, Result<bool, StorageError>> {
        Box::pin(self.release(request))
    }

    fn beat(&self, beat: MemberBeat) -> BoxFuture<'_, Result<Vec<Member>, StorageError>> {
        Box::pin(self.beat_now(beat))
    }

    /// What the last call or health check (at most `health_probe_ms` ago)
    /// found: a connection failure, until a call or check succeeds again.
    fn health(&self) -> Result<(), String> {
        if let Some(reason) = lock(&self.inner.lock_lost).clone() {
            return Err(reason);
        }
        match lock(&self.inner.trouble).clone() {
            Some(reason) => Err(format!("cannot reach Postgres: {reason}")),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------
// Group commit.

/// A batch queued for a writer task, its JSON encoded by the caller.
struct WriteJob {
    batch: WriteBatch,
    encoded: Encoded,
    reply: oneshot::Sender<Result<(), StorageError>>,
}

impl WriteJob {
    /// The run ids and workflow ids the batch touches.
    fn keys(&self) -> (Vec<&str>, Vec<&str>) {
        let mut runs = vec![self.batch.run.run_id.as_str()];
        let mut workflow_ids: Vec<&str> = self
            .batch
            .claim
            .iter()
            .map(|claim| claim.workflow_id.as_str())
            .collect();
        if let Some(next) = &self.batch.next_run {
            runs.push(next.run.run_id.as_str());
            workflow_ids.extend(next.claim.iter().map(|claim| claim.workflow_id.as_str()));
        }
        (runs, workflow_ids)
    }

    fn answer(self, result: Result<(), StorageError>) {
        // A caller that stopped waiting does not need its answer.
        let _ = self.reply.send(result);
    }
}

/// The keys a group holds: a batch touching one of them waits for the next
/// group, so a group's batches are independent of each other.
#[derive(Default)]
struct GroupKeys {
    runs: BTreeSet<String>,
    workflow_ids: BTreeSet<String>,
}

impl GroupKeys {
    /// Adds `job`'s keys if none is taken yet; false (and nothing added) if one is.
    fn take(&mut self, job: &WriteJob) -> bool {
        let (runs, workflow_ids) = job.keys();
        let free = runs.iter().all(|run| !self.runs.contains(*run))
            && workflow_ids
                .iter()
                .all(|id| !self.workflow_ids.contains(*id));
        if free {
            self.runs.extend(runs.into_iter().map(str::to_string));
            self.workflow_ids
                .extend(workflow_ids.into_iter().map(str::to_string));
        }
        free
    }
}

type SharedReceiver = Arc<tokio::sync::Mutex<mpsc::Receiver<WriteJob>>>;

/// A writer task: takes every batch waiting (up to `group_commit_batches_max`,
/// each run and workflow id once) and commits them in one transaction. Ends
/// once every handle is gone and the queue is drained.
async fn writer_loop(weak: Weak<Inner>, receiver: SharedReceiver) {
    let mut carried: VecDeque<WriteJob> = VecDeque::new();
    loop {
        // With batches carried over, never wait for the queue: another writer
        // may be waiting on it, and the carried batches' callers wait on us.
        let mut queue = match carried.is_empty() {
            true => Some(receiver.lock().await),
            false => receiver.try_lock().ok(),
        };
        let first = match carried.pop_front() {
            Some(job) => job,
            None => {
                let queue = queue.as_mut().expect("locked when nothing is carried");
                match queue.recv().await {
                    Some(job) => job,
                    None => return, // Every handle is gone and the queue is drained.
                }
            }
        };
        let Some(inner) = weak.upgrade() else { return };
        let group_max = inner.options.group_commit_batches_max;
        let mut keys = GroupKeys::default();
        assert!(keys.take(&first));
        let mut group = vec![first];
        let mut waiting = std::mem::take(&mut carried);
        while group.len() < group_max {
            let job = match waiting.pop_front() {
                Some(job) => job,
                None => match queue.as_mut().map(|queue| queue.try_recv()) {
                    Some(Ok(job)) => job,
                    _ => break, // Empty, closed (write this group first), or not ours.
                },
            };
            if keys.take(&job) {
                group.push(job);
            } else {
                carried.push_back(job); // Touches a key of this group: the next one.
            }
        }
        drop(queue);
        carried.extend(waiting);
        assert!(!group.is_empty() && group.len() <= group_max);
        PostgresStorage { inner }.write_group(group).await;
    }
}

impl PostgresStorage {
    /// Writes `group` and answers each batch. The batches whose checks pass
    /// against the rows they expect to find go in one transaction that has
    /// Postgres check those rows are what is stored (see [`WRITE_RUNS`]);
    /// the others, and all of them if that transaction is refused, are
    /// written alone, each finding its own answer.
    async fn write_group(&self, mut group: Vec<WriteJob>) {
        // Rows are locked in run id order, so two groups never deadlock on runs.
        group.sort_by(|a, b| a.batch.run.run_id.cmp(&b.batch.run.run_id));
        let mut fast: Vec<(WriteJob, RunValues, Option<RunValues>)> = Vec::new();
        let mut alone: Vec<WriteJob> = Vec::new();
        for job in group {
            match check_as_expected(&job.batch) {
                Ok((values, next_values)) => fast.push((job, values, next_values)),
                Err(_) => alone.push(job),
            }
        }
        futures::join!(self.write_each_alone(alone), self.write_fast(fast));
    }

    /// Each batch in a transaction of its own, at once.
    async fn write_each_alone(&self, jobs: Vec<WriteJob>) {
        let count = jobs.len() as u64;
        self.inner.batches_alone.fetch_add(count, Ordering::Relaxed);
        let writes = jobs
            .iter()
            .map(|job| self.write_alone(&job.batch, &job.encoded));
        let results = futures::future::join_all(writes).await;
        for (job, result) in jobs.into_iter().zip(results) {
            job.answer(result);
        }
    }

    /// The fast path: the whole group in one transaction of two round trips.
    async fn write_fast(&self, group: Vec<(WriteJob, RunValues, Option<RunValues>)>) {
        if group.is_empty() {
            return;
        }
        let object = match self.connection().await {
            Ok(object) => object,
            Err(error) => return answer_all(group, &error),
        };
        let mut transaction = InTransaction {
            object: Some(object),
            open: true,
            commit_sent: false,
        };
        let duration = Duration::from_millis(self.inner.options.operation_ms_max);
        let outcome = tokio::time::timeout(duration, transact_fast(&mut transaction, &group)).await;
        match outcome {
            Ok(Ok(())) => {
                let batches = group.len() as u64;
                self.inner
                    .batches_written
                    .fetch_add(batches, Ordering::Relaxed);
                self.inner.commits.fetch_add(1, Ordering::Relaxed);
                self.untroubled();
                group.into_iter().for_each(|(job, ..)| job.answer(Ok(())));
            }
            Ok(Err(GroupFailure::WriteAlone)) => {
                let _ = rollback(&mut transaction).await;
                drop(transaction);
                let jobs = group.into_iter().map(|(job, ..)| job).collect();
                self.write_each_alone(jobs).await;
            }
            Ok(Err(GroupFailure::Connection(error))) => {
                let error = self.group_error(&transaction, &describe_error(&error));
                answer_all(group, &error);
            }
            Err(_elapsed) => {
                let reason = format!(
                    "no answer within {} ms",
                    self.inner.options.operation_ms_max
                );
                let error = self.group_error(&transaction, &reason);
                answer_all(group, &error);
            }
        }
    }

    /// What every batch of a group gets when its connection failed or its
    /// transaction took too long: `Timeout` once `COMMIT` may have been sent,
    /// `Io` before (the transaction is rolled back when the connection closes).
    fn group_error(&self, transaction: &InTransaction, reason: &str) -> StorageError {
        if transaction.commit_sent {
            self.inner.writes_ambiguous.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target = %self.inner.target, reason, "postgres storage: a group commit's outcome is unknown");
            return StorageError::Timeout;
        }
        let reason = format!("{reason}; nothing was committed");
        let error = io_error(&self.inner.target, "cannot write", reason);
        self.troubled(&error);
        error
    }
}

fn answer_all(group: Vec<(WriteJob, RunValues, Option<RunValues>)>, error: &StorageError) {
    for (job, ..) in group {
        job.answer(Err(error.clone()));
    }
}

/// Why a group's transaction did not commit.
enum GroupFailure {
    /// Postgres refused it (a run or workflow id not stored as a batch
    /// expects, or any other statement error): it rolled back, and each
    /// batch is written alone, which gives each its own answer.
    WriteAlone,
    /// The connection failed: nothing committed unless `COMMIT` was sent.
    Connection(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for GroupFailure {
    fn from(error: tokio_postgres::Error) -> Self {
        if error.as_db_error().is_some() {
            GroupFailure::WriteAlone
        } else {
            GroupFailure::Connection(error)
        }
    }
}

/// `check_batch` against the run and the workflow id's holder the batch
/// expects to find, and the batch's numbers as BIGINTs. `check_batch` reads
/// of the stored run only its version, next event id and fixed fields, and
/// of the holder only its run id: [`WRITE_RUNS`] writes nothing unless
/// Postgres finds exactly those stored, so a batch it writes passes
/// `check_batch` against what is stored, as on the careful path.
fn check_as_expected(batch: &WriteBatch) -> Result<(RunValues, Option<RunValues>), StorageError> {
    let check = |batch: &WriteBatch| {
        let stored = batch.expected_version.map(|version| {
            let run = &batch.run;
            RunRecord {
                run_id: run.run_id.clone(),
                workflow_id: run.workflow_id.clone(),
                workflow_type: run.workflow_type.clone(),
                task_queue: run.task_queue.clone(),
                status: run.status,
                start_time: run.start_time,
                close_time: None,
                next_event_id: stored_next_event_id(batch),
                version,
                state: Vec::new(),
                search_attributes: Default::default(),
            }
        });
        let holder = batch
            .claim
            .as_ref()
            .and_then(|c| c.previous_run_id.as_deref());
        check_batch(batch, stored.as_ref(), holder)?;
        RunValues::of(batch)
    };
    let values = check(batch)?;
    let next_values = match &batch.next_run {
        Some(next) => Some(check(next)?),
        None => None,
    };
    Ok((values, next_values))
}

/// The `next_event_id` the stored run must have for `batch` to follow it.
fn stored_next_event_id(batch: &WriteBatch) -> u64 {
    match batch.events.first() {
        Some(first) => first.event_id,
        None => batch.run.next_event_id,
    }
}

/// Writes every run of a group (one element of each array per run, in
/// order), or raises if one is not stored as its batch expects (SQLSTATE
/// `RT409`) or a fenced one's shard is not at its epoch (`RT412`, the shard's
/// row locked `FOR SHARE` otherwise); installed by migration 4.
const WRITE_RUNS: &str = "SELECT retrace_write_runs($1::text[], $2::text[], $3::text[], \
    $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], \
    $10::bytea[], $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::text[], \
    $16::text[], $17::text[], $18::boolean[], $19::text[], $20::text[], $21::integer[], \
    $22::bigint[])";

/// The arguments of [`WRITE_RUNS`]: a column per array.
#[derive(Default)]
struct RunArrays<'a> {
    run_ids: Vec<&'a str>,
    workflow_ids: Vec<&'a str>,
    workflow_types: Vec<&'a str>,
    task_queues: Vec<&'a str>,
    statuses: Vec<&'static str>,
    start_times: Vec<i64>,
    close_times: Vec<Option<i64>>,
    next_event_ids: Vec<i64>,
    versions: Vec<i64>,
    states: Vec<&'a [u8]>,
    expected: Vec<Option<i64>>,
    stored_next: Vec<i64>,
    first_event_ids: Vec<i64>,
    last_event_ids: Vec<i64>,
    events: Vec<Option<&'a str>>,
    claim_ids: Vec<Option<&'a str>>,
    claim_previous: Vec<Option<&'a str>>,
    clear_buffered: Vec<bool>,
    buffered: Vec<Option<&'a str>>,
    search_attributes: Vec<String>,
    fence_shards: Vec<Option<i32>>,
    fence_epochs: Vec<Option<i64>>,
}

impl<'a> RunArrays<'a> {
    fn push(
        &mut self,
        batch: &'a WriteBatch,
        values: &RunValues,
        events: Option<&'a str>,
        buffered: Option<&'a str>,
    ) {
        let run = &batch.run;
        self.run_ids.push(&run.run_id);
        self.workflow_ids.push(&run.workflow_id);
        self.workflow_types.push(&run.workflow_type);
        self.task_queues.push(&run.task_queue);
        self.statuses.push(run.status.as_str());
        self.start_times.push(values.start_time_ms);
        self.close_times.push(values.close_time_ms);
        self.next_event_ids.push(values.next_event_id);
        self.versions.push(values.version);
        self.states.push(&run.state);
        self.expected.push(values.expected);
        self.stored_next.push(match events {
            Some(_) => values.first_event_id,
            None => values.next_event_id,
        });
        self.first_event_ids.push(values.first_event_id);
        self.last_event_ids.push(values.last_event_id);
        self.events.push(events);
        let claim = batch.claim.as_ref();
        self.claim_ids.push(claim.map(|c| c.workflow_id.as_str()));
        self.claim_previous
            .push(claim.and_then(|c| c.previous_run_id.as_deref()));
        self.clear_buffered.push(batch.buffered.clear);
        self.buffered.push(buffered);
        self.search_attributes
            .push(values.search_attributes.clone());
        self.fence_shards.push(values.fence.map(|(shard, _)| shard));
        self.fence_epochs.push(values.fence.map(|(_, epoch)| epoch));
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 22] {
        [
            &self.run_ids,
            &self.workflow_ids,
            &self.workflow_types,
            &self.task_queues,
            &self.statuses,
            &self.start_times,
            &self.close_times,
            &self.next_event_ids,
            &self.versions,
            &self.states,
            &self.expected,
            &self.stored_next,
            &self.first_event_ids,
            &self.last_event_ids,
            &self.events,
            &self.claim_ids,
            &self.claim_previous,
            &self.clear_buffered,
            &self.buffered,
            &self.search_attributes,
            &self.fence_shards,
            &self.fence_epochs,
        ]
    }
}

/// The fast path's transaction: `BEGIN` and [`WRITE_RUNS`] with every run of
/// the group (one round trip), then `COMMIT`.
async fn transact_fast(
    transaction: &mut InTransaction,
    group: &[(WriteJob, RunValues, Option<RunValues>)],
) -> Result<(), GroupFailure> {
    assert!(transaction.open && !transaction.commit_sent);
    let client = transaction.client();
    let statement = client.prepare_cached(WRITE_RUNS).await?;
    let mut arrays = RunArrays::default();
    for (job, values, next_values) in group {
        let (batch, encoded) = (&job.batch, &job.encoded);
        let events = encoded.events.as_deref();
        arrays.push(batch, values, events, encoded.buffered.as_deref());
        if let (Some(next), Some(next_values)) = (&batch.next_run, next_values) {
            arrays.push(next, next_values, encoded.next_events.as_deref(), None);
        }
    }
    let params = arrays.params();
    let (begun, written) = futures::join!(
        client.batch_execute("BEGIN"),
        client.execute(&statement, &params)
    );
    begun?;
    written?;
    transaction.commit_sent = true;
    transaction.client().batch_execute("COMMIT").await?;
    transaction.open = false;
    Ok(())
}
