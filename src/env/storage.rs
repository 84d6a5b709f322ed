//! The service's persistence: one atomic batch per run transition.
//!
//! A batch appends the run's new events and replaces its record (whose opaque
//! `state` holds the run's mutable state: pending activities, timers, workflow
//! task; tasks and timers are derived from it, so they can never disagree with
//! it). `write` returns `Ok` only once the batch is durable. Every write names the
//! record version it expects, so a stale writer is refused, not merged.
//!
//! Events that arrive while a worker holds the run's workflow task wait, buffered,
//! in rows of their own beside the record (as Temporal's `buffered_events`): a
//! batch appends the new ones, or clears them once they are written to the
//! history, so a write costs what it adds, not what is already buffered.

use serde::{Deserialize, Serialize};

use super::BoxFuture;
use super::lease::{ClusterView, Fence, LeaseAnswer, LeaseRequest, Member, MemberBeat};
use crate::history::{Event, EventKind};
use crate::types::Timestamp;
use crate::visibility::{Query, SearchAttributes};

/// Where a run is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RunStatus {
    /// Not closed yet.
    Running,
    /// The workflow returned a result.
    Completed,
    /// The workflow returned an error.
    Failed,
    /// The workflow accepted cancellation.
    Canceled,
    /// Someone terminated the run.
    Terminated,
    /// The execution timeout fired.
    TimedOut,
    /// The workflow continued as a new run of the same workflow id.
    ContinuedAsNew,
}

impl RunStatus {
    /// True for every status but `Running`.
    pub fn is_closed(self) -> bool {
        self != RunStatus::Running
    }

    /// The status's name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "Running",
            RunStatus::Completed => "Completed",
            RunStatus::Failed => "Failed",
            RunStatus::Canceled => "Canceled",
            RunStatus::Terminated => "Terminated",
            RunStatus::TimedOut => "TimedOut",
            RunStatus::ContinuedAsNew => "ContinuedAsNew",
        }
    }

    /// Every status, open first.
    pub const ALL: [RunStatus; 7] = [
        RunStatus::Running,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Canceled,
        RunStatus::Terminated,
        RunStatus::TimedOut,
        RunStatus::ContinuedAsNew,
    ];

    /// Parses [`RunStatus::as_str`]'s output.
    pub fn parse(text: &str) -> Option<RunStatus> {
        RunStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// A run as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Primary key.
    pub run_id: String,
    /// The business id (several runs over time may share it).
    pub workflow_id: String,
    /// The workflow type.
    pub workflow_type: String,
    /// The run's task queue.
    pub task_queue: String,
    /// Open or how it closed.
    pub status: RunStatus,
    /// When the run started.
    pub start_time: Timestamp,
    /// When it closed.
    pub close_time: Option<Timestamp>,
    /// The id the next event will get (history length + 1).
    pub next_event_id: u64,
    /// Bumped by every write; writes name the version they expect.
    pub version: u64,
    /// The engine's mutable state, opaque to storage.
    pub state: Vec<u8>,
    /// The run's search attributes (indexed for list queries).
    #[serde(default, skip_serializing_if = "SearchAttributes::is_empty")]
    pub search_attributes: SearchAttributes,
}

/// Make `run_id` the current run of `workflow_id`, if the current run is still
/// `previous_run_id` (`None`: the workflow id has never been used).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkflowIdClaim {
    /// The business id.
    pub workflow_id: String,
    /// The run it must currently point at.
    pub previous_run_id: Option<String>,
}

/// One atomic write.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteBatch {
    /// The run's new record; `version` must be `expected_version + 1` (or 1 when creating).
    pub run: RunRecord,
    /// The stored version this write builds on; `None` creates the run.
    pub expected_version: Option<u64>,
    /// Events appended, contiguous from the stored `next_event_id`, ending at
    /// `run.next_event_id - 1`.
    pub events: Vec<Event>,
    /// Workflow id to claim for this run, atomically with the rest.
    pub claim: Option<WorkflowIdClaim>,
    /// Changes to the run's buffered events.
    pub buffered: BufferedWrite,
    /// A run created in the same transaction (continue-as-new): its creating
    /// batch, whose claim takes the workflow id over from this run.
    pub next_run: Option<Box<WriteBatch>>,
    /// The shard and epoch a cluster server writes under (`None`: a single
    /// server). Refused unless the epoch is still the shard's (see
    /// [`super::lease`]); a next run is in the same shard.
    pub fence: Option<Fence>,
}

/// What a batch does to the run's buffered events: clear them, then append.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BufferedWrite {
    /// Remove every buffered event stored for the run first.
    pub clear: bool,
    /// Then append these, in order.
    pub append: Vec<EventKind>,
}

impl BufferedWrite {
    /// Leaves the buffered events as they are.
    pub fn none() -> BufferedWrite {
        BufferedWrite::default()
    }
}

/// A run's buffered events and the record version they belong to, read in
/// one snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BufferedRead {
    /// The run's record version when read (`None`: no such run).
    pub version: Option<u64>,
    /// The buffered events, in the order appended.
    pub events: Vec<EventKind>,
}

/// Which runs to list, and the page.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListQuery {
    /// Only runs with this status.
    pub status: Option<RunStatus>,
    /// Only runs of this workflow type.
    pub workflow_type: Option<String>,
    /// Runs with a run id greater than this (the previous page's last).
    pub after_run_id: Option<String>,
    /// Page size.
    pub limit: usize,
    /// A parsed list query: its filter, and its order (by run id if it has
    /// none). Every storage answers it with the semantics of
    /// [`crate::visibility::eval`].
    pub query: Option<Query>,
    /// Runs skipped, in the query's order, before the page (how pages of an
    /// `ORDER BY` query go on).
    pub offset: usize,
}

/// A storage failure. Every variant leaves stored data unchanged, except
/// `Timeout`, after which the write may or may not have committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The stored version is not the one the write expected.
    #[error("run {run_id}: stored version is {found:?}, the write expected {expected:?}")]
    VersionConflict {
        /// The run.
        run_id: String,
        /// The version the write named (`None`: it expected no run).
        expected: Option<u64>,
        /// The version stored (`None`: no run).
        found: Option<u64>,
    },
    /// The workflow id's current run is not the one the claim named.
    #[error(
        "workflow id {workflow_id:?} is held by run {current:?}, the claim expected {expected:?}"
    )]
    WorkflowIdConflict {
        /// The workflow id.
        workflow_id: String,
        /// The run the claim expected.
        expected: Option<String>,
        /// The run it points at.
        current: Option<String>,
    },
    /// The batch is inconsistent in itself (events not contiguous, version not bumped).
    #[error("bad write batch for run {run_id}: {reason}")]
    BadBatch {
        /// The run.
        run_id: String,
        /// What is wrong.
        reason: String,
    },
    /// The storage failed; nothing was written.
    #[error("storage I/O error: {0}")]
    Io(String),
    /// The write's outcome is unknown: it may have committed.
    #[error("storage timed out; the write may or may not have committed")]
    Timeout,
    /// Stored data could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The writer's lease on the shard is gone: another server holds the
    /// shard at a newer epoch. Nothing was written.
    #[error("shard {shard} is fenced: the write holds epoch {epoch}, the shard is at {stored}")]
    Fenced {
        /// The shard.
        shard: u32,
        /// The epoch the write carried.
        epoch: u64,
        /// The epoch stored.
        stored: u64,
    },
}

/// The answer of a storage that serves one server only.
fn single_server<T>() -> BoxFuture<'static, Result<T, StorageError>> {
    Box::pin(async {
        Err(StorageError::Io(
            "this storage serves one server; a cluster needs Postgres".to_string(),
        ))
    })
}

/// The service's persistence.
pub trait Storage: Send + Sync {
    /// Applies `batch` atomically and durably, or not at all (see `StorageError`).
    fn write(&self, batch: WriteBatch) -> BoxFuture<'_, Result<(), StorageError>>;
    /// The run's record.
    fn read_run(&self, run_id: &str) -> BoxFuture<'_, Result<Option<RunRecord>, StorageError>>;
    /// The current run of a workflow id.
    fn current_run(&self, workflow_id: &str)
    -> BoxFuture<'_, Result<Option<String>, StorageError>>;
    /// Up to `limit` events of the run from `from_event_id` on, in order.
    fn read_events(
        &self,
        run_id: &str,
        from_event_id: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Event>, StorageError>>;
    /// Runs matching `query`, ordered by its `ORDER BY` then run id.
    fn list_runs(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<RunRecord>, StorageError>>;
    /// The run's buffered events with its record version, in one snapshot.
    fn read_buffered(&self, run_id: &str) -> BoxFuture<'_, Result<BufferedRead, StorageError>>;
    /// `Err` with a reason an operator can act on while the storage cannot
    /// write (recovering from a failed commit, its file lost); `Ok` otherwise.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
    /// The shards' leases and the members, with the storage's clock.
    fn cluster_view(&self) -> BoxFuture<'_, Result<ClusterView, StorageError>> {
        single_server()
    }
    /// Takes or renews a shard's lease ([`super::lease::decide_acquire`]).
    fn acquire_shard(
        &self,
        _request: LeaseRequest,
    ) -> BoxFuture<'_, Result<LeaseAnswer, StorageError>> {
        single_server()
    }
    /// Gives a held shard up at once; false if the asker did not hold it.
    fn release_shard(&self, _request: LeaseRequest) -> BoxFuture<'_, Result<bool, StorageError>> {
        single_server()
    }
    /// Records a member's heartbeat and answers every member.
    fn beat(&self, _beat: MemberBeat) -> BoxFuture<'_, Result<Vec<Member>, StorageError>> {
        single_server()
    }
}

/// Checks a batch against itself and the stored record; shared by every
/// implementation so they refuse the same writes with the same errors.
pub fn check_batch(
    batch: &WriteBatch,
    stored: Option<&RunRecord>,
    current: Option<&str>,
) -> Result<(), StorageError> {
    let run_id = &batch.run.run_id;
    let found = stored.map(|r| r.version);
    if found != batch.expected_version {
        return Err(StorageError::VersionConflict {
            run_id: run_id.clone(),
            expected: batch.expected_version,
            found,
        });
    }
    let bad = |reason: String| StorageError::BadBatch {
        run_id: run_id.clone(),
        reason,
    };
    let version_next = batch.expected_version.map_or(1, |v| v + 1);
    if batch.run.version != version_next {
        return Err(bad(format!(
            "record version {} should be {version_next}",
            batch.run.version
        )));
    }
    if let Some(stored) = stored {
        let fixed = |r: &RunRecord| {
            (
                r.workflow_id.clone(),
                r.workflow_type.clone(),
                r.task_queue.clone(),
                r.start_time,
            )
        };
        if fixed(stored) != fixed(&batch.run) {
            return Err(bad(format!(
                "a run's workflow id, type, task queue and start time cannot change: \
                 stored {:?}, written {:?}",
                fixed(stored),
                fixed(&batch.run)
            )));
        }
    }
    let first_event_id = stored.map_or(1, |r| r.next_event_id);
    for (offset, event) in batch.events.iter().enumerate() {
        if event.event_id != first_event_id + offset as u64 {
            let expected = first_event_id + offset as u64;
            return Err(bad(format!(
                "event {} should have id {expected}",
                event.event_id
            )));
        }
    }
    let next_event_id = first_event_id + batch.events.len() as u64;
    if batch.run.next_event_id != next_event_id {
        return Err(bad(format!(
            "next_event_id {} should be {next_event_id}",
            batch.run.next_event_id
        )));
    }
    if let Some(claim) = &batch.claim
        && claim.previous_run_id.as_deref() != current
    {
        return Err(StorageError::WorkflowIdConflict {
            workflow_id: claim.workflow_id.clone(),
            expected: claim.previous_run_id.clone(),
            current: current.map(str::to_string),
        });
    }
    if let Some(next) = &batch.next_run {
        check_next_run(batch, next).map_err(bad)?;
    }
    Ok(())
}

/// The shape a continue-as-new pair must have: the next run is created (no
/// stored version, nothing after it) and takes the workflow id over from the
/// run that continues, which claims nothing itself. The next run's own batch
/// is checked by `check_batch` like any creation.
fn check_next_run(batch: &WriteBatch, next: &WriteBatch) -> Result<(), String> {
    let takes_over = next.claim.as_ref().is_some_and(|claim| {
        claim.workflow_id == batch.run.workflow_id
            && claim.previous_run_id.as_deref() == Some(batch.run.run_id.as_str())
    });
    if batch.claim.is_some() || next.next_run.is_some() || next.expected_version.is_some() {
        return Err("a next run is created, alone, by a batch that claims nothing".to_string());
    }
    if !takes_over || next.run.run_id == batch.run.run_id {
        return Err(format!(
            "the next run {} must claim workflow id {:?} from run {}",
            next.run.run_id, batch.run.workflow_id, batch.run.run_id
        ));
    }
    Ok(())
}
