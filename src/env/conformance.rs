//! The storage conformance suite: the properties every [`Storage`] must have,
//! written once and run against each implementation (memory and SQLite in this
//! crate, the simulator's storage in `retrace-sim`).
//!
//! Each check is its own `pub async fn` taking a fresh, empty storage, and panics
//! with a message that starts with the property's name when the storage breaks
//! it. [`run_all`] runs every check, each on a fresh storage from `make`.
//!
//! The suite is runtime-agnostic: plain async fns, concurrency with
//! `futures::future::join_all`, no spawning and no timers, so any executor
//! (tokio, madsim, `futures::executor`) can drive it.
//!
//! ```
//! use std::sync::Arc;
//! use retrace::env::{MemoryStorage, Storage, conformance};
//!
//! let make = || Arc::new(MemoryStorage::new()) as Arc<dyn Storage>;
//! futures::executor::block_on(conformance::run_all(&make));
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;
use serde_json::{Value, json};

use super::BoxFuture;
use super::lease::{
    ADDRESS_BYTES_MAX, ClusterView, Fence, LEASE_MS_MAX, LeaseAnswer, LeaseRequest, Member,
    MemberBeat, NODE_NAME_BYTES_MAX, ShardLease, shard_of,
};
use super::storage::{
    BufferedRead, BufferedWrite, ListQuery, RunRecord, RunStatus, Storage, StorageError,
    WorkflowIdClaim, WriteBatch,
};
use crate::history::{Event, EventKind, HistoryBuilder, WorkflowExecutionSignaled};
use crate::types::Timestamp;

/// 2024-01-01T00:00:00Z: where the suite's runs start.
const START_TIME: Timestamp = Timestamp(1_704_067_200_000);
/// More events than any check stores for one run (the "read everything" limit).
const EVENTS_READ_MAX: usize = 10_000;
/// More runs than any check stores (the "list everything" limit).
const RUNS_LIST_MAX: usize = 10_000;
/// Runs written concurrently by [`concurrent_writes_to_different_runs_all_land`].
const CONCURRENT_RUNS_COUNT: usize = 64;
/// Batches written to each of those runs, one after the other.
const BATCHES_PER_RUN_COUNT: usize = 5;
/// Writers racing on one run in [`concurrent_updates_of_one_run_admit_exactly_one`].
const RACING_WRITERS_COUNT: usize = 16;
/// Size of the large payload (and of the large state): just under 1 MiB.
const PAYLOAD_LARGE_BYTES: usize = 1024 * 1024 - 1024;

/// Runs every check, each on a fresh storage from `make`.
pub async fn run_all(make: &dyn Fn() -> Arc<dyn Storage>) {
    unknown_run_reads_as_none_and_empty(&*make()).await;
    created_run_reads_back_equal(&*make()).await;
    every_run_status_round_trips(&*make()).await;
    updates_move_a_run_between_status_lists(&*make()).await;
    read_events_pages_by_from_event_id_and_limit(&*make()).await;
    events_appended_in_later_batches_keep_their_order(&*make()).await;
    stale_expected_version_is_refused_and_changes_nothing(&*make()).await;
    creating_an_existing_run_is_refused_and_changes_nothing(&*make()).await;
    non_contiguous_event_ids_are_a_bad_batch(&*make()).await;
    wrong_next_event_id_is_a_bad_batch(&*make()).await;
    version_not_bumped_by_one_is_a_bad_batch(&*make()).await;
    a_write_cannot_change_what_identifies_a_run(&*make()).await;
    first_claim_of_a_workflow_id_takes_it(&*make()).await;
    claim_naming_the_wrong_previous_run_is_refused(&*make()).await;
    claim_naming_the_current_run_reuses_the_workflow_id(&*make()).await;
    claim_is_atomic_with_the_rest_of_the_batch(&*make()).await;
    a_next_run_is_written_with_its_predecessor_or_not_at_all(&*make()).await;
    list_runs_filters_by_status_and_workflow_type(&*make()).await;
    list_runs_orders_by_run_id_and_pages_after_run_id(&*make()).await;
    concurrent_writes_to_different_runs_all_land(&*make()).await;
    concurrent_updates_of_one_run_admit_exactly_one(&*make()).await;
    refused_writes_among_concurrent_ones_fail_alone(&*make()).await;
    payload_near_one_mebibyte_round_trips(&*make()).await;
    buffered_events_append_in_order_and_clear(&*make()).await;
    list_queries_answer_as_the_evaluation_does(&*make()).await;
}

// ---------------------------------------------------------------------------
// Building batches.

/// A running run's record, version 1, with no events yet.
fn record(run_id: &str, workflow_id: &str) -> RunRecord {
    RunRecord {
        run_id: run_id.to_string(),
        workflow_id: workflow_id.to_string(),
        workflow_type: "conformance".to_string(),
        task_queue: "default".to_string(),
        status: RunStatus::Running,
        start_time: START_TIME,
        close_time: None,
        next_event_id: 1,
        version: 1,
        state: format!("{run_id} at version 1").into_bytes(),
        search_attributes: Default::default(),
    }
}

/// `count` signal events from `first_event_id` on, each naming its run and id.
fn signals(run_id: &str, first_event_id: u64, count: usize) -> Vec<Event> {
    (0..count as u64)
        .map(|offset| {
            let event_id = first_event_id + offset;
            let kind = EventKind::WorkflowExecutionSignaled(WorkflowExecutionSignaled {
                signal_name: "poke".to_string(),
                input: json!({ "run_id": run_id, "event_id": event_id }),
                identity: "conformance".to_string(),
            });
            Event::new(event_id, START_TIME.plus_ms(event_id), kind)
        })
        .collect()
}

/// Creates `run_id` (workflow id `wf-{run_id}`) with `count` events, claiming
/// its workflow id for the first time.
fn create(run_id: &str, count: usize) -> WriteBatch {
    create_with(record(run_id, &format!("wf-{run_id}")), count, None)
}

/// Creates `run` with `count` events, claiming its workflow id from `previous_run_id`.
fn create_with(mut run: RunRecord, count: usize, previous_run_id: Option<&str>) -> WriteBatch {
    let events = signals(&run.run_id, 1, count);
    run.next_event_id = 1 + count as u64;
    let claim = WorkflowIdClaim {
        workflow_id: run.workflow_id.clone(),
        previous_run_id: previous_run_id.map(str::to_string),
    };
    WriteBatch {
        fence: None,
        run,
        expected_version: None,
        events,
        claim: Some(claim),
        buffered: BufferedWrite::none(),
        next_run: None,
    }
}

/// Appends `count` events to the stored `run`, bumping its version.
fn append(stored: &RunRecord, count: usize) -> WriteBatch {
    let mut run = stored.clone();
    run.version = stored.version + 1;
    run.next_event_id = stored.next_event_id + count as u64;
    run.state = format!("{} at version {}", run.run_id, run.version).into_bytes();
    let events = signals(&run.run_id, stored.next_event_id, count);
    WriteBatch {
        fence: None,
        run,
        expected_version: Some(stored.version),
        events,
        claim: None,
        buffered: BufferedWrite::none(),
        next_run: None,
    }
}

// ---------------------------------------------------------------------------
// Reading and writing, panicking with the property's name.

async fn write_ok(storage: &dyn Storage, batch: WriteBatch, property: &str) {
    let run_id = batch.run.run_id.clone();
    if let Err(error) = storage.write(batch).await {
        panic!("{property}: writing run {run_id} was refused: {error}");
    }
}

async fn read_run(storage: &dyn Storage, run_id: &str, property: &str) -> Option<RunRecord> {
    match storage.read_run(run_id).await {
        Ok(run) => run,
        Err(error) => panic!("{property}: reading run {run_id} failed: {error}"),
    }
}

async fn read_events(
    storage: &dyn Storage,
    run_id: &str,
    from_event_id: u64,
    limit: usize,
    property: &str,
) -> Vec<Event> {
    match storage.read_events(run_id, from_event_id, limit).await {
        Ok(events) => events,
        Err(error) => panic!("{property}: reading the events of run {run_id} failed: {error}"),
    }
}

async fn current_run(storage: &dyn Storage, workflow_id: &str, property: &str) -> Option<String> {
    match storage.current_run(workflow_id).await {
        Ok(run_id) => run_id,
        Err(error) => panic!("{property}: reading workflow id {workflow_id} failed: {error}"),
    }
}

async fn read_buffered(storage: &dyn Storage, run_id: &str, property: &str) -> BufferedRead {
    match storage.read_buffered(run_id).await {
        Ok(read) => read,
        Err(error) => panic!("{property}: reading the buffered events of {run_id} failed: {error}"),
    }
}

async fn list_runs(storage: &dyn Storage, query: ListQuery, property: &str) -> Vec<RunRecord> {
    match storage.list_runs(query.clone()).await {
        Ok(runs) => runs,
        Err(error) => panic!("{property}: listing runs with {query:?} failed: {error}"),
    }
}

/// Everything a write could touch for one run and one workflow id.
#[derive(Debug, PartialEq)]
struct Snapshot {
    run: Option<RunRecord>,
    events: Vec<Event>,
    current_run: Option<String>,
    runs: Vec<RunRecord>,
    buffered: BufferedRead,
}

async fn snapshot(
    storage: &dyn Storage,
    run_id: &str,
    workflow_id: &str,
    property: &str,
) -> Snapshot {
    let all = ListQuery {
        limit: RUNS_LIST_MAX,
        ..ListQuery::default()
    };
    Snapshot {
        run: read_run(storage, run_id, property).await,
        events: read_events(storage, run_id, 1, EVENTS_READ_MAX, property).await,
        current_run: current_run(storage, workflow_id, property).await,
        runs: list_runs(storage, all, property).await,
        buffered: read_buffered(storage, run_id, property).await,
    }
}

/// Writes `batch`, which must be refused, checks that the run, its events, the
/// claimed workflow id and the list of runs are all as before, and returns why
/// it was refused.
async fn refuse(storage: &dyn Storage, batch: WriteBatch, property: &str) -> StorageError {
    let run_id = batch.run.run_id.clone();
    let workflow_id = match &batch.claim {
        Some(claim) => claim.workflow_id.clone(),
        None => batch.run.workflow_id.clone(),
    };
    let before = snapshot(storage, &run_id, &workflow_id, property).await;
    let error = match storage.write(batch).await {
        Ok(()) => panic!("{property}: a write to run {run_id} that must be refused was accepted"),
        Err(error) => error,
    };
    let after = snapshot(storage, &run_id, &workflow_id, property).await;
    assert_eq!(
        after, before,
        "{property}: the refused write ({error}) changed stored data"
    );
    error
}

fn assert_bad_batch(error: &StorageError, run_id: &str, property: &str) {
    match error {
        StorageError::BadBatch {
            run_id: refused, ..
        } if refused == run_id => {}
        other => panic!("{property}: expected BadBatch for run {run_id}, got {other:?}"),
    }
}

fn version_conflict(run_id: &str, expected: Option<u64>, found: Option<u64>) -> StorageError {
    StorageError::VersionConflict {
        run_id: run_id.to_string(),
        expected,
        found,
    }
}

fn workflow_id_conflict(
    workflow_id: &str,
    expected: Option<&str>,
    current: Option<&str>,
) -> StorageError {
    StorageError::WorkflowIdConflict {
        workflow_id: workflow_id.to_string(),
        expected: expected.map(str::to_string),
        current: current.map(str::to_string),
    }
}

// ---------------------------------------------------------------------------
// Reading back.

/// Nothing stored: an unknown run reads as `None` and no events, an unknown
/// workflow id has no current run, and the list is empty; still so once
/// another run exists.
pub async fn unknown_run_reads_as_none_and_empty(storage: &dyn Storage) {
    let property = "unknown_run_reads_as_none_and_empty";
    for (index, round) in ["empty storage", "after another run was created"]
        .into_iter()
        .enumerate()
    {
        let run = read_run(storage, "run-unknown", property).await;
        assert_eq!(
            run, None,
            "{property}: {round}: an unknown run read as a record"
        );
        let events = read_events(storage, "run-unknown", 1, EVENTS_READ_MAX, property).await;
        assert!(
            events.is_empty(),
            "{property}: {round}: an unknown run has events"
        );
        let buffered = read_buffered(storage, "run-unknown", property).await;
        assert_eq!(
            buffered,
            BufferedRead::default(),
            "{property}: {round}: an unknown run has buffered events"
        );
        let current = current_run(storage, "wf-unknown", property).await;
        assert_eq!(
            current, None,
            "{property}: {round}: an unknown workflow id has a run"
        );
        let query = ListQuery {
            workflow_type: Some("unknown".to_string()),
            limit: 10,
            ..ListQuery::default()
        };
        let runs = list_runs(storage, query, property).await;
        assert!(
            runs.is_empty(),
            "{property}: {round}: listing an unknown type found runs"
        );
        if index == 0 {
            write_ok(storage, create("run-other", 2), property).await;
        }
    }
    let all = ListQuery {
        limit: RUNS_LIST_MAX,
        ..ListQuery::default()
    };
    let runs = list_runs(storage, all, property).await;
    assert_eq!(
        runs.len(),
        1,
        "{property}: listing everything should find run-other alone"
    );
}

/// A history with most event kinds: start, workflow tasks, an activity, a
/// timer, a marker, completion.
fn rich_history(workflow_id: &str, run_id: &str) -> Vec<Event> {
    let mut builder =
        HistoryBuilder::for_run(workflow_id, run_id, "order", json!({ "items": [1, 2, 3] }));
    builder.add_full_workflow_task();
    let scheduled = builder.add_activity_scheduled("1", "charge", json!({ "cents": 1250 }));
    builder.advance_ms(250);
    builder.add_activity_completed(scheduled, json!("charge-1"));
    builder.add_full_workflow_task();
    let timer = builder.add_timer_started("1", 5_000);
    builder.advance_ms(5_000);
    builder.add_timer_fired("1", timer);
    builder.add_full_workflow_task();
    builder.add_marker(
        "side_effect",
        json!({ "value": 0.5, "text": "é \"quoted\" \n" }),
    );
    builder.add_workflow_execution_completed(json!({ "receipt": "r-1", "null": null }));
    builder.build().events().to_vec()
}

/// A created run reads back equal: its record, its events, its workflow id,
/// and its row in the list.
pub async fn created_run_reads_back_equal(storage: &dyn Storage) {
    let property = "created_run_reads_back_equal";
    let events = rich_history("wf-rich", "run-rich");
    let mut run = record("run-rich", "wf-rich");
    run.workflow_type = "order".to_string();
    run.status = RunStatus::Completed;
    run.close_time = Some(START_TIME.plus_ms(5_250));
    run.next_event_id = events.len() as u64 + 1;
    run.state = vec![0, 1, 2, 0xfe, 0xff, 0, b'\n'];
    let claim = WorkflowIdClaim {
        workflow_id: "wf-rich".to_string(),
        previous_run_id: None,
    };
    let batch = WriteBatch {
        fence: None,
        run: run.clone(),
        expected_version: None,
        events: events.clone(),
        claim: Some(claim),
        buffered: BufferedWrite::none(),
        next_run: None,
    };
    write_ok(storage, batch, property).await;

    let stored = read_run(storage, "run-rich", property).await;
    assert_eq!(
        stored.as_ref(),
        Some(&run),
        "{property}: the record read back differs"
    );
    let stored_events = read_events(storage, "run-rich", 1, EVENTS_READ_MAX, property).await;
    assert_eq!(
        stored_events, events,
        "{property}: the events read back differ"
    );
    let current = current_run(storage, "wf-rich", property).await;
    assert_eq!(
        current.as_deref(),
        Some("run-rich"),
        "{property}: the workflow id was not claimed"
    );
    let all = ListQuery {
        limit: RUNS_LIST_MAX,
        ..ListQuery::default()
    };
    let listed = list_runs(storage, all, property).await;
    assert_eq!(listed, vec![run], "{property}: the listed record differs");
}

/// Every status is stored and read back as itself, and listing by a status
/// finds exactly the run that has it.
pub async fn every_run_status_round_trips(storage: &dyn Storage) {
    let property = "every_run_status_round_trips";
    let statuses = [
        RunStatus::Running,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Canceled,
        RunStatus::Terminated,
        RunStatus::TimedOut,
    ];
    let mut runs = BTreeMap::new();
    for status in statuses {
        let run_id = format!("run-{}", status.as_str());
        let mut batch = create(&run_id, 1);
        batch.run.status = status;
        batch.run.close_time = status.is_closed().then_some(START_TIME.plus_ms(1_000));
        runs.insert(status, batch.run.clone());
        write_ok(storage, batch, property).await;
    }
    for (status, run) in &runs {
        let stored = read_run(storage, &run.run_id, property).await;
        assert_eq!(
            stored.as_ref(),
            Some(run),
            "{property}: status {status:?} read back differs"
        );
        let query = ListQuery {
            status: Some(*status),
            limit: RUNS_LIST_MAX,
            ..ListQuery::default()
        };
        let listed = list_runs(storage, query, property).await;
        assert_eq!(
            listed,
            vec![run.clone()],
            "{property}: listing status {status:?}"
        );
    }
}

/// Updates keep the state, the status and the close time they write: a run
/// updated while running stays listed as running, and one that closes moves
/// from the running list to its closed status's list.
pub async fn updates_move_a_run_between_status_lists(storage: &dyn Storage) {
    let property = "updates_move_a_run_between_status_lists";
    let created = create("run-closing", 1);
    let mut stored = created.run.clone();
    write_ok(storage, created, property).await;
    let listed = |status: RunStatus| ListQuery {
        status: Some(status),
        limit: RUNS_LIST_MAX,
        ..ListQuery::default()
    };
    let steps = [
        (RunStatus::Running, None, b"still running".to_vec()),
        (
            RunStatus::Failed,
            Some(START_TIME.plus_ms(5_000)),
            b"closed".to_vec(),
        ),
    ];
    for (status, close_time, state) in steps {
        let mut batch = append(&stored, 1);
        batch.run.status = status;
        batch.run.close_time = close_time;
        batch.run.state = state;
        stored = batch.run.clone();
        write_ok(storage, batch, property).await;
        let read = read_run(storage, "run-closing", property).await;
        assert_eq!(read.as_ref(), Some(&stored), "{property}: {status:?}");
        for other in [RunStatus::Running, RunStatus::Failed] {
            let runs = list_runs(storage, listed(other), property).await;
            let expected = if other == status {
                vec![stored.clone()]
            } else {
                Vec::new()
            };
            assert_eq!(
                runs, expected,
                "{property}: listing {other:?} after {status:?}"
            );
        }
    }
}

/// `read_events` returns up to `limit` events from `from_event_id` on: pages
/// tile the history, a page past the end is empty, limit 0 is empty, and
/// `from_event_id` 0 reads from the first event (ids start at 1).
pub async fn read_events_pages_by_from_event_id_and_limit(storage: &dyn Storage) {
    let property = "read_events_pages_by_from_event_id_and_limit";
    let batch = create("run-pages", 10);
    let events = batch.events.clone();
    write_ok(storage, batch, property).await;
    let cases: [(u64, usize, std::ops::Range<usize>); 10] = [
        (1, 3, 0..3),
        (4, 3, 3..6),
        (7, 3, 6..9),
        (10, 3, 9..10),
        (9, 5, 8..10),
        (1, 10, 0..10),
        (0, 2, 0..2),
        (11, 5, 10..10),
        (1_000, 5, 10..10),
        (1, 0, 0..0),
    ];
    for (from_event_id, limit, expected) in cases {
        let page = read_events(storage, "run-pages", from_event_id, limit, property).await;
        assert_eq!(
            page,
            events[expected.clone()],
            "{property}: from_event_id {from_event_id}, limit {limit} should give the events \
             at indexes {expected:?}"
        );
    }
    let page = read_events(storage, "run-pages", u64::MAX, 5, property).await;
    assert!(
        page.is_empty(),
        "{property}: from_event_id u64::MAX should give no events"
    );
}

/// Events appended in later batches (some batches with none) follow the
/// earlier ones in order; the record is the last batch's.
pub async fn events_appended_in_later_batches_keep_their_order(storage: &dyn Storage) {
    let property = "events_appended_in_later_batches_keep_their_order";
    let batch = create("run-append", 3);
    let mut expected = batch.events.clone();
    let mut stored = batch.run.clone();
    write_ok(storage, batch, property).await;
    for count in [2, 0, 4, 1] {
        let mut batch = append(&stored, count);
        if count == 1 {
            batch.run.status = RunStatus::Completed;
            batch.run.close_time = Some(START_TIME.plus_ms(60_000));
        }
        expected.extend(batch.events.iter().cloned());
        stored = batch.run.clone();
        write_ok(storage, batch, property).await;
    }
    assert_eq!(stored.version, 5);
    assert_eq!(stored.next_event_id, 11);
    let run = read_run(storage, "run-append", property).await;
    assert_eq!(
        run,
        Some(stored),
        "{property}: the record is not the last batch's"
    );
    let events = read_events(storage, "run-append", 1, EVENTS_READ_MAX, property).await;
    assert_eq!(
        events, expected,
        "{property}: the events are not in the order written"
    );
    let ids: Vec<u64> = events.iter().map(|event| event.event_id).collect();
    assert_eq!(
        ids,
        (1..=10).collect::<Vec<u64>>(),
        "{property}: event ids are not 1..=10"
    );
}

// ---------------------------------------------------------------------------
// Refused writes.

/// A write naming a version other than the stored one is refused with
/// `VersionConflict` (stale, ahead, or of a run that does not exist), and
/// nothing changes.
pub async fn stale_expected_version_is_refused_and_changes_nothing(storage: &dyn Storage) {
    let property = "stale_expected_version_is_refused_and_changes_nothing";
    let created = create("run-stale", 2);
    let version_1 = created.run.clone();
    write_ok(storage, created, property).await;
    let update = append(&version_1, 1);
    let version_2 = update.run.clone();
    write_ok(storage, update, property).await;

    let stale = append(&version_1, 3);
    let error = refuse(storage, stale, property).await;
    assert_eq!(
        error,
        version_conflict("run-stale", Some(1), Some(2)),
        "{property}: stale"
    );

    let mut ahead = append(&version_2, 1);
    ahead.expected_version = Some(7);
    ahead.run.version = 8;
    let error = refuse(storage, ahead, property).await;
    assert_eq!(
        error,
        version_conflict("run-stale", Some(7), Some(2)),
        "{property}: ahead"
    );

    let missing = append(&record("run-missing", "wf-run-missing"), 1);
    let error = refuse(storage, missing, property).await;
    assert_eq!(
        error,
        version_conflict("run-missing", Some(1), None),
        "{property}: missing run"
    );
}

/// Creating a run that exists is refused with `VersionConflict`, and nothing changes.
pub async fn creating_an_existing_run_is_refused_and_changes_nothing(storage: &dyn Storage) {
    let property = "creating_an_existing_run_is_refused_and_changes_nothing";
    let created = create("run-twice", 2);
    let version_1 = created.run.clone();
    write_ok(storage, created, property).await;
    let mut again = create("run-twice", 4);
    again.claim = None;
    let error = refuse(storage, again, property).await;
    assert_eq!(
        error,
        version_conflict("run-twice", None, Some(1)),
        "{property}: at version 1"
    );

    write_ok(storage, append(&version_1, 1), property).await;
    let again = create("run-twice", 1);
    let error = refuse(storage, again, property).await;
    assert_eq!(
        error,
        version_conflict("run-twice", None, Some(2)),
        "{property}: at version 2"
    );
}

/// Event ids must continue the stored history without gaps: a gap, a
/// duplicate, or a wrong first id is `BadBatch`, and nothing changes.
pub async fn non_contiguous_event_ids_are_a_bad_batch(storage: &dyn Storage) {
    let property = "non_contiguous_event_ids_are_a_bad_batch";
    let mut gap_on_create = create("run-ids", 3);
    gap_on_create.events.remove(1);
    gap_on_create.run.next_event_id = 3;
    assert_bad_batch(
        &refuse(storage, gap_on_create, property).await,
        "run-ids",
        property,
    );

    let mut not_from_one = create("run-ids", 0);
    not_from_one.events = signals("run-ids", 2, 2);
    not_from_one.run.next_event_id = 4;
    assert_bad_batch(
        &refuse(storage, not_from_one, property).await,
        "run-ids",
        property,
    );

    let created = create("run-ids", 3);
    let stored = created.run.clone();
    write_ok(storage, created, property).await;

    let mut skips_one = append(&stored, 2);
    skips_one.events = signals("run-ids", 5, 2);
    assert_bad_batch(
        &refuse(storage, skips_one, property).await,
        "run-ids",
        property,
    );

    let mut repeats_stored = append(&stored, 2);
    repeats_stored.events = signals("run-ids", 3, 2);
    assert_bad_batch(
        &refuse(storage, repeats_stored, property).await,
        "run-ids",
        property,
    );

    let mut duplicate = append(&stored, 2);
    duplicate.events[1].event_id = duplicate.events[0].event_id;
    assert_bad_batch(
        &refuse(storage, duplicate, property).await,
        "run-ids",
        property,
    );
}

/// The record's `next_event_id` must be one past the last event: anything
/// else is `BadBatch`, and nothing changes.
pub async fn wrong_next_event_id_is_a_bad_batch(storage: &dyn Storage) {
    let property = "wrong_next_event_id_is_a_bad_batch";
    for next_event_id in [1, 2, 4, 100] {
        let mut batch = create("run-next", 2);
        batch.run.next_event_id = next_event_id;
        assert_bad_batch(
            &refuse(storage, batch, property).await,
            "run-next",
            property,
        );
    }
    let created = create("run-next", 2);
    let stored = created.run.clone();
    write_ok(storage, created, property).await;
    for (count, next_event_id) in [(0, 4), (0, 2), (2, 4), (2, 6)] {
        let mut batch = append(&stored, count);
        batch.run.next_event_id = next_event_id;
        assert_bad_batch(
            &refuse(storage, batch, property).await,
            "run-next",
            property,
        );
    }
}

/// A created record has version 1 and every write bumps it by exactly one:
/// anything else is `BadBatch`, and nothing changes.
pub async fn version_not_bumped_by_one_is_a_bad_batch(storage: &dyn Storage) {
    let property = "version_not_bumped_by_one_is_a_bad_batch";
    for version in [0, 2] {
        let mut batch = create("run-version", 1);
        batch.run.version = version;
        assert_bad_batch(
            &refuse(storage, batch, property).await,
            "run-version",
            property,
        );
    }
    let created = create("run-version", 1);
    let stored = created.run.clone();
    write_ok(storage, created, property).await;
    for version in [0, 1, 3] {
        let mut batch = append(&stored, 1);
        batch.run.version = version;
        assert_bad_batch(
            &refuse(storage, batch, property).await,
            "run-version",
            property,
        );
    }
}

/// A run's workflow id, workflow type, task queue and start time are fixed
/// when it is created: a write changing any of them is `BadBatch`, and
/// nothing changes.
pub async fn a_write_cannot_change_what_identifies_a_run(storage: &dyn Storage) {
    let property = "a_write_cannot_change_what_identifies_a_run";
    let created = create("run-fixed", 1);
    let stored = created.run.clone();
    write_ok(storage, created, property).await;
    let changes: [fn(&mut RunRecord); 4] = [
        |run| run.workflow_id.push_str("-other"),
        |run| run.workflow_type.push_str("-other"),
        |run| run.task_queue.push_str("-other"),
        |run| run.start_time = run.start_time.plus_ms(1),
    ];
    for change in changes {
        let mut batch = append(&stored, 1);
        change(&mut batch.run);
        assert_bad_batch(
            &refuse(storage, batch, property).await,
            "run-fixed",
            property,
        );
    }
    write_ok(storage, append(&stored, 1), property).await;
}

// ---------------------------------------------------------------------------
// Workflow ids.

/// A workflow id that was never used is claimed by a claim naming no previous
/// run; a claim naming a previous run for a free id is refused.
pub async fn first_claim_of_a_workflow_id_takes_it(storage: &dyn Storage) {
    let property = "first_claim_of_a_workflow_id_takes_it";
    let naming_a_ghost = create_with(record("run-a", "wf-first"), 1, Some("run-ghost"));
    let error = refuse(storage, naming_a_ghost, property).await;
    let expected = workflow_id_conflict("wf-first", Some("run-ghost"), None);
    assert_eq!(
        error, expected,
        "{property}: a claim naming a run on a free id"
    );

    let current = current_run(storage, "wf-first", property).await;
    assert_eq!(
        current, None,
        "{property}: the id is taken before any claim"
    );
    write_ok(
        storage,
        create_with(record("run-a", "wf-first"), 1, None),
        property,
    )
    .await;
    let current = current_run(storage, "wf-first", property).await;
    assert_eq!(
        current.as_deref(),
        Some("run-a"),
        "{property}: the first claim did not take the id"
    );
}

/// While a workflow id points at a run, a claim naming another previous run
/// (or none) is refused with `WorkflowIdConflict`, and nothing changes.
pub async fn claim_naming_the_wrong_previous_run_is_refused(storage: &dyn Storage) {
    let property = "claim_naming_the_wrong_previous_run_is_refused";
    write_ok(
        storage,
        create_with(record("run-a", "wf-held"), 1, None),
        property,
    )
    .await;
    for previous_run_id in [None, Some("run-z"), Some("run-b")] {
        let batch = create_with(record("run-b", "wf-held"), 2, previous_run_id);
        let error = refuse(storage, batch, property).await;
        let expected = workflow_id_conflict("wf-held", previous_run_id, Some("run-a"));
        assert_eq!(
            error, expected,
            "{property}: claim naming {previous_run_id:?}"
        );
    }
}

/// A claim naming the current run moves the workflow id to the new run; the
/// old run stays readable; a later claim naming the old run is refused.
pub async fn claim_naming_the_current_run_reuses_the_workflow_id(storage: &dyn Storage) {
    let property = "claim_naming_the_current_run_reuses_the_workflow_id";
    let first = create_with(record("run-a", "wf-reused"), 2, None);
    let run_a = first.run.clone();
    write_ok(storage, first, property).await;
    write_ok(
        storage,
        create_with(record("run-b", "wf-reused"), 3, Some("run-a")),
        property,
    )
    .await;
    let current = current_run(storage, "wf-reused", property).await;
    assert_eq!(
        current.as_deref(),
        Some("run-b"),
        "{property}: the id did not move to run-b"
    );
    let old = read_run(storage, "run-a", property).await;
    assert_eq!(old, Some(run_a), "{property}: the previous run changed");

    let stale = create_with(record("run-c", "wf-reused"), 1, Some("run-a"));
    let error = refuse(storage, stale, property).await;
    let expected = workflow_id_conflict("wf-reused", Some("run-a"), Some("run-b"));
    assert_eq!(
        error, expected,
        "{property}: a claim naming the replaced run"
    );
}

/// A claim lands with its batch or not at all: a refused batch takes no id,
/// and a refused claim writes nothing of its batch.
pub async fn claim_is_atomic_with_the_rest_of_the_batch(storage: &dyn Storage) {
    let property = "claim_is_atomic_with_the_rest_of_the_batch";
    let mut bad_events = create_with(record("run-a", "wf-atomic"), 3, None);
    bad_events.events.remove(0);
    assert_bad_batch(
        &refuse(storage, bad_events, property).await,
        "run-a",
        property,
    );

    let created = create("run-b", 1);
    let run_b = created.run.clone();
    write_ok(storage, created, property).await;
    let mut stale_with_claim = append(&run_b, 1);
    stale_with_claim.expected_version = Some(5);
    stale_with_claim.run.version = 6;
    stale_with_claim.claim = Some(WorkflowIdClaim {
        workflow_id: "wf-atomic".to_string(),
        previous_run_id: None,
    });
    let error = refuse(storage, stale_with_claim, property).await;
    assert_eq!(
        error,
        version_conflict("run-b", Some(5), Some(1)),
        "{property}: stale batch"
    );

    write_ok(
        storage,
        create_with(record("run-c", "wf-atomic"), 1, None),
        property,
    )
    .await;
    let conflicting = create_with(record("run-d", "wf-atomic"), 4, None);
    let error = refuse(storage, conflicting, property).await;
    let expected = workflow_id_conflict("wf-atomic", None, Some("run-c"));
    assert_eq!(error, expected, "{property}: conflicting claim");
    let run_d = read_run(storage, "run-d", property).await;
    assert_eq!(
        run_d, None,
        "{property}: a batch whose claim was refused created its run"
    );
}

/// `stored`'s closing batch (continue-as-new) carrying the creation of
/// `next_run_id`, which claims the workflow id from `previous`.
fn continue_pair(stored: &RunRecord, next_run_id: &str, previous: &str) -> WriteBatch {
    let mut batch = append(stored, 1);
    batch.run.status = RunStatus::ContinuedAsNew;
    batch.run.close_time = Some(START_TIME.plus_ms(1_000));
    let next = create_with(record(next_run_id, &stored.workflow_id), 2, Some(previous));
    batch.next_run = Some(Box::new(next));
    batch
}

/// Continue-as-new: a run's close and the creation of the run that takes its
/// workflow id over land together, or neither does.
pub async fn a_next_run_is_written_with_its_predecessor_or_not_at_all(storage: &dyn Storage) {
    let property = "a_next_run_is_written_with_its_predecessor_or_not_at_all";
    let created = create_with(record("run-a", "wf-chain"), 1, None);
    let run_a = created.run.clone();
    write_ok(storage, created, property).await;

    let wrong_claim = continue_pair(&run_a, "run-b", "run-x");
    assert_bad_batch(
        &refuse(storage, wrong_claim, property).await,
        "run-a",
        property,
    );
    let mut stale = continue_pair(&run_a, "run-b", "run-a");
    stale.expected_version = Some(7);
    stale.run.version = 8;
    let error = refuse(storage, stale, property).await;
    assert_eq!(
        error,
        version_conflict("run-a", Some(7), Some(1)),
        "{property}"
    );
    let mut gap = continue_pair(&run_a, "run-b", "run-a");
    gap.next_run.as_mut().expect("a pair").events.remove(0);
    assert_bad_batch(&refuse(storage, gap, property).await, "run-b", property);
    let mut nested = continue_pair(&run_a, "run-b", "run-a");
    let inner = continue_pair(&record("run-b", "wf-chain"), "run-c", "run-b");
    nested.next_run.as_mut().expect("a pair").next_run = Some(Box::new(inner));
    assert_bad_batch(&refuse(storage, nested, property).await, "run-a", property);
    assert_eq!(
        read_run(storage, "run-b", property).await,
        None,
        "{property}: refused pairs created run-b"
    );

    write_ok(storage, continue_pair(&run_a, "run-b", "run-a"), property).await;
    let closed = read_run(storage, "run-a", property).await.expect("run-a");
    assert_eq!(closed.status, RunStatus::ContinuedAsNew, "{property}");
    let next = read_run(storage, "run-b", property)
        .await
        .expect("run-b was created");
    assert_eq!(
        (next.status, next.next_event_id),
        (RunStatus::Running, 3),
        "{property}"
    );
    let events = read_events(storage, "run-b", 1, EVENTS_READ_MAX, property).await;
    assert_eq!(events.len(), 2, "{property}: run-b's events");
    let current = current_run(storage, "wf-chain", property).await;
    assert_eq!(
        current.as_deref(),
        Some("run-b"),
        "{property}: the id moved to run-b"
    );
}

// ---------------------------------------------------------------------------
// Listing.

/// Writes `count` runs in a scrambled order; run `i` has type `alpha` or
/// `beta` and one of three statuses. Returns them by run id.
async fn write_listed_runs(
    storage: &dyn Storage,
    count: usize,
    property: &str,
) -> BTreeMap<String, RunRecord> {
    assert!(count > 0 && count < 100);
    let statuses = [RunStatus::Running, RunStatus::Completed, RunStatus::Failed];
    let mut runs = BTreeMap::new();
    for index in 0..count {
        let scrambled = (index * 7 + 3) % count;
        let run_id = format!("run-{scrambled:02}");
        let mut batch = create(&run_id, 1);
        batch.run.workflow_type = if scrambled.is_multiple_of(2) {
            "alpha"
        } else {
            "beta"
        }
        .to_string();
        batch.run.status = statuses[scrambled % statuses.len()];
        runs.insert(run_id, batch.run.clone());
        write_ok(storage, batch, property).await;
    }
    assert_eq!(runs.len(), count, "the scramble must be a permutation");
    runs
}

/// `list_runs` returns exactly the runs matching the status and the workflow
/// type, ordered by run id.
pub async fn list_runs_filters_by_status_and_workflow_type(storage: &dyn Storage) {
    let property = "list_runs_filters_by_status_and_workflow_type";
    let runs = write_listed_runs(storage, 12, property).await;
    let statuses = [
        None,
        Some(RunStatus::Running),
        Some(RunStatus::Completed),
        Some(RunStatus::Failed),
        Some(RunStatus::TimedOut),
    ];
    let workflow_types = [None, Some("alpha"), Some("beta"), Some("gamma")];
    for status in statuses {
        for workflow_type in workflow_types {
            let query = ListQuery {
                status,
                workflow_type: workflow_type.map(str::to_string),
                after_run_id: None,
                limit: RUNS_LIST_MAX,
                ..ListQuery::default()
            };
            let expected: Vec<RunRecord> = runs
                .values()
                .filter(|run| status.is_none_or(|status| run.status == status))
                .filter(|run| workflow_type.is_none_or(|t| run.workflow_type == t))
                .cloned()
                .collect();
            let listed = list_runs(storage, query.clone(), property).await;
            assert_eq!(listed, expected, "{property}: {query:?}");
        }
    }
}

/// Lists every run matching `query` a page of `query.limit` at a time, each page
/// after the previous page's last run id.
async fn list_in_pages(
    storage: &dyn Storage,
    mut query: ListQuery,
    property: &str,
) -> Vec<RunRecord> {
    let mut listed: Vec<RunRecord> = Vec::new();
    for _ in 0..RUNS_LIST_MAX {
        let page = list_runs(storage, query.clone(), property).await;
        let limit = query.limit;
        assert!(
            page.len() <= limit,
            "{property}: a page of {} runs is over its limit {limit}",
            page.len()
        );
        let Some(last) = page.last() else {
            return listed;
        };
        query.after_run_id = Some(last.run_id.clone());
        listed.extend(page);
    }
    panic!("{property}: paging through runs did not end after {RUNS_LIST_MAX} pages");
}

/// Pages of `limit` runs, each after the previous page's last run id, list
/// every run once in run id order; with filters too; limit 0 and a page after
/// the last run are empty; `after_run_id` need not be a stored run.
pub async fn list_runs_orders_by_run_id_and_pages_after_run_id(storage: &dyn Storage) {
    let property = "list_runs_orders_by_run_id_and_pages_after_run_id";
    let runs = write_listed_runs(storage, 25, property).await;
    let filters = [
        (None, None),
        (Some(RunStatus::Completed), None),
        (None, Some("beta")),
    ];
    for (status, workflow_type) in filters {
        let workflow_type = workflow_type.map(str::to_string);
        let query = ListQuery {
            status,
            workflow_type: workflow_type.clone(),
            after_run_id: None,
            limit: 4,
            ..ListQuery::default()
        };
        let paged = list_in_pages(storage, query, property).await;
        let expected: Vec<RunRecord> = runs
            .values()
            .filter(|run| status.is_none_or(|status| run.status == status))
            .filter(|run| {
                workflow_type
                    .as_ref()
                    .is_none_or(|t| run.workflow_type == *t)
            })
            .cloned()
            .collect();
        assert_eq!(
            paged, expected,
            "{property}: paging {status:?} {workflow_type:?}"
        );
    }
    let none = ListQuery {
        limit: 0,
        ..ListQuery::default()
    };
    let listed = list_runs(storage, none, property).await;
    assert!(listed.is_empty(), "{property}: limit 0 listed runs");
    let after = |run_id: &str, limit| ListQuery {
        after_run_id: Some(run_id.to_string()),
        limit,
        ..ListQuery::default()
    };
    let listed = list_runs(storage, after("run-24", 10), property).await;
    assert!(
        listed.is_empty(),
        "{property}: listed runs after the last one"
    );
    let listed = list_runs(storage, after("run-10a", 2), property).await;
    let ids: Vec<&str> = listed.iter().map(|run| run.run_id.as_str()).collect();
    assert_eq!(
        ids,
        ["run-11", "run-12"],
        "{property}: listing after an id that is not stored"
    );
}

// ---------------------------------------------------------------------------
// Concurrency and size.

/// Writes one run's batches one after the other; returns the last record and
/// all its events.
async fn write_run_in_batches(
    storage: &dyn Storage,
    run_id: String,
    property: &str,
) -> (RunRecord, Vec<Event>) {
    let batch = create(&run_id, 2);
    let mut stored = batch.run.clone();
    let mut events = batch.events.clone();
    write_ok(storage, batch, property).await;
    for _ in 1..BATCHES_PER_RUN_COUNT {
        let batch = append(&stored, 2);
        stored = batch.run.clone();
        events.extend(batch.events.iter().cloned());
        write_ok(storage, batch, property).await;
    }
    (stored, events)
}

/// Many runs written at once, each in several batches, all land with the
/// right records and events.
pub async fn concurrent_writes_to_different_runs_all_land(storage: &dyn Storage) {
    let property = "concurrent_writes_to_different_runs_all_land";
    let writers = (0..CONCURRENT_RUNS_COUNT)
        .map(|index| write_run_in_batches(storage, format!("run-{index:03}"), property));
    let written = join_all(writers).await;
    for (run, events) in &written {
        assert_eq!(run.version, BATCHES_PER_RUN_COUNT as u64);
        let stored = read_run(storage, &run.run_id, property).await;
        assert_eq!(
            stored.as_ref(),
            Some(run),
            "{property}: run {} differs",
            run.run_id
        );
        let stored_events = read_events(storage, &run.run_id, 1, EVENTS_READ_MAX, property).await;
        assert_eq!(
            &stored_events, events,
            "{property}: the events of run {} differ",
            run.run_id
        );
        let current = current_run(storage, &run.workflow_id, property).await;
        assert_eq!(
            current.as_ref(),
            Some(&run.run_id),
            "{property}: {} lost its claim",
            run.run_id
        );
    }
    let all = ListQuery {
        limit: RUNS_LIST_MAX,
        ..ListQuery::default()
    };
    let listed = list_runs(storage, all, property).await;
    let expected: Vec<RunRecord> = written.into_iter().map(|(run, _)| run).collect();
    assert_eq!(listed, expected, "{property}: the list of runs differs");
}

/// Writers racing to update one run from the same version: exactly one wins,
/// every other gets `VersionConflict`, and the run holds the winner's write.
pub async fn concurrent_updates_of_one_run_admit_exactly_one(storage: &dyn Storage) {
    let property = "concurrent_updates_of_one_run_admit_exactly_one";
    let created = create("run-race", 1);
    let stored = created.run.clone();
    write_ok(storage, created, property).await;
    let batches: Vec<WriteBatch> = (0..RACING_WRITERS_COUNT)
        .map(|index| {
            let mut batch = append(&stored, 1 + index % 3);
            batch.run.state = format!("writer {index}").into_bytes();
            batch
        })
        .collect();
    let results = join_all(batches.iter().map(|batch| storage.write(batch.clone()))).await;
    let winners: Vec<&WriteBatch> = batches
        .iter()
        .zip(&results)
        .filter(|(_, result)| result.is_ok())
        .map(|(batch, _)| batch)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "{property}: {} racing writers won, not 1",
        winners.len()
    );
    for result in &results {
        if let Err(error) = result {
            assert_eq!(
                *error,
                version_conflict("run-race", Some(1), Some(2)),
                "{property}: a loser"
            );
        }
    }
    let winner = winners[0];
    let run = read_run(storage, "run-race", property).await;
    assert_eq!(
        run.as_ref(),
        Some(&winner.run),
        "{property}: the record is not the winner's"
    );
    let events = read_events(storage, "run-race", 2, EVENTS_READ_MAX, property).await;
    assert_eq!(
        events, winner.events,
        "{property}: the appended events are not the winner's"
    );
}

/// Refused writes sent at the same time as good ones (to the same runs and
/// others) fail alone: every good write lands, every bad one is refused.
pub async fn refused_writes_among_concurrent_ones_fail_alone(storage: &dyn Storage) {
    let property = "refused_writes_among_concurrent_ones_fail_alone";
    let mut stored = Vec::new();
    for index in 0..CONCURRENT_RUNS_COUNT / 2 {
        let batch = create(&format!("run-{index:03}"), 1);
        stored.push(batch.run.clone());
        write_ok(storage, batch, property).await;
    }
    let mut batches: Vec<(WriteBatch, bool)> = Vec::new();
    for run in &stored {
        batches.push((append(run, 2), true));
        let mut ahead = append(run, 1);
        ahead.expected_version = Some(99);
        ahead.run.version = 100;
        batches.push((ahead, false));
        let mut gap = append(run, 2);
        gap.events.remove(0);
        gap.expected_version = Some(98);
        batches.push((gap, false));
    }
    let results = join_all(
        batches
            .iter()
            .map(|(batch, _)| storage.write(batch.clone())),
    )
    .await;
    for ((batch, good), result) in batches.iter().zip(&results) {
        let run_id = &batch.run.run_id;
        match (good, result) {
            (true, Ok(())) | (false, Err(_)) => {}
            (true, Err(error)) => {
                panic!("{property}: the good write to {run_id} was refused: {error}")
            }
            (false, Ok(())) => panic!("{property}: a bad write to {run_id} was accepted"),
        }
    }
    for (batch, _) in batches.iter().filter(|(_, good)| *good) {
        let run = read_run(storage, &batch.run.run_id, property).await;
        assert_eq!(
            run.as_ref(),
            Some(&batch.run),
            "{property}: run {} differs",
            batch.run.run_id
        );
        let events = read_events(storage, &batch.run.run_id, 2, EVENTS_READ_MAX, property).await;
        assert_eq!(
            events, batch.events,
            "{property}: events of {} differ",
            batch.run.run_id
        );
    }
}

/// A string of about `bytes` bytes with characters JSON must escape and
/// multi-byte ones.
fn large_text(bytes: usize) -> String {
    let pattern = "retrace \"payload\" \\ é ✓ 😀 \n\t\u{0} ";
    let mut text = String::with_capacity(bytes + pattern.len());
    while text.len() < bytes {
        text.push_str(pattern);
    }
    text
}

/// An event payload and a state of almost 1 MiB each round-trip unchanged.
pub async fn payload_near_one_mebibyte_round_trips(storage: &dyn Storage) {
    let property = "payload_near_one_mebibyte_round_trips";
    let mut batch = create("run-large", 1);
    let payload = Value::String(large_text(PAYLOAD_LARGE_BYTES));
    let EventKind::WorkflowExecutionSignaled(signal) = &mut batch.events[0].kind else {
        unreachable!("create() writes signals");
    };
    signal.input = payload.clone();
    batch.run.state = (0..PAYLOAD_LARGE_BYTES)
        .map(|index| (index % 251) as u8)
        .collect();
    let events = batch.events.clone();
    let stored = batch.run.clone();
    write_ok(storage, batch, property).await;
    let mut update = append(&stored, 1);
    let EventKind::WorkflowExecutionSignaled(signal) = &mut update.events[0].kind else {
        unreachable!("append() writes signals");
    };
    signal.input = json!({ "again": payload });
    let mut expected = events;
    expected.extend(update.events.iter().cloned());
    let last = update.run.clone();
    write_ok(storage, update, property).await;
    let run = read_run(storage, "run-large", property).await;
    assert!(
        run.as_ref() == Some(&last),
        "{property}: the large state read back differs"
    );
    let stored_events = read_events(storage, "run-large", 1, EVENTS_READ_MAX, property).await;
    assert!(
        stored_events == expected,
        "{property}: the large events read back differ"
    );
}

// ---------------------------------------------------------------------------
// Buffered events.

/// A signal's event kind, as buffered.
fn buffered_signal(name: &str) -> EventKind {
    EventKind::WorkflowExecutionSignaled(WorkflowExecutionSignaled {
        signal_name: name.to_string(),
        input: json!({ "name": name }),
        identity: "conformance".to_string(),
    })
}

fn buffered_write(clear: bool, names: &[&str]) -> BufferedWrite {
    BufferedWrite {
        clear,
        append: names.iter().map(|name| buffered_signal(name)).collect(),
    }
}

/// Writes `buffered` in the next version of `stored` (no events), checks the
/// run's buffered events are then `expected`, and returns the new record.
async fn write_buffered(
    storage: &dyn Storage,
    stored: &RunRecord,
    buffered: BufferedWrite,
    expected: &[&str],
    property: &str,
) -> RunRecord {
    let mut batch = append(stored, 0);
    batch.buffered = buffered;
    let run = batch.run.clone();
    write_ok(storage, batch, property).await;
    let read = read_buffered(storage, &run.run_id, property).await;
    let expected: Vec<EventKind> = expected.iter().map(|name| buffered_signal(name)).collect();
    assert_eq!(
        read,
        BufferedRead {
            version: Some(run.version),
            events: expected
        },
        "{property}: after version {}",
        run.version
    );
    run
}

/// Buffered events are appended in order across batches, kept by a batch that
/// does not touch them, cleared before a batch's own appends, read with the
/// run's version, kept per run, and left as they were by a refused batch.
pub async fn buffered_events_append_in_order_and_clear(storage: &dyn Storage) {
    let property = "buffered_events_append_in_order_and_clear";
    let mut created = create("run-buffered", 1);
    created.buffered = buffered_write(false, &["a"]);
    let mut run = created.run.clone();
    write_ok(storage, created, property).await;
    let mut other = create("run-other", 1);
    other.buffered = buffered_write(false, &["other"]);
    write_ok(storage, other, property).await;

    run = write_buffered(
        storage,
        &run,
        buffered_write(false, &["b", "c"]),
        &["a", "b", "c"],
        property,
    )
    .await;
    run = write_buffered(
        storage,
        &run,
        BufferedWrite::none(),
        &["a", "b", "c"],
        property,
    )
    .await;
    let mut stale = append(&record("run-buffered", "wf-run-buffered"), 0);
    stale.buffered = buffered_write(true, &["lost"]);
    refuse(storage, stale, property).await;
    run = write_buffered(
        storage,
        &run,
        buffered_write(true, &["d"]),
        &["d"],
        property,
    )
    .await;
    write_buffered(storage, &run, buffered_write(true, &[]), &[], property).await;

    let kept = read_buffered(storage, "run-other", property).await;
    assert_eq!(
        kept.events,
        [buffered_signal("other")],
        "{property}: another run's"
    );
}

// ---------------------------------------------------------------------------
// Search attributes and list queries.

/// Queries every storage must answer as [`crate::visibility::eval`] does.
const LIST_QUERIES: [&str; 24] = [
    "CustomerId = 'c-1'",
    "CustomerId != 'c-1'",
    "CustomerId > 'c-1' AND CustomerId <= 'c-3'",
    "CustomerId IN ('c-0', 'c-2', 'nobody')",
    "Amount > 10",
    "Amount >= 10.5 OR Amount < -1",
    "Amount BETWEEN 5 AND 20",
    "Amount != 12",
    "Score < 0.3",
    "Score BETWEEN 0.25 AND 1",
    "Vip = true",
    "Vip != true",
    "Tags = 'blue'",
    "Tags != 'blue'",
    "Tags IN ('red', 'green')",
    "Due > '2024-01-01T00:00:10Z'",
    "Due BETWEEN '2024-01-01T00:00:05Z' AND '2024-01-01T00:00:20Z'",
    "Note = 'hello world' OR Note < 'b'",
    "WorkflowType = 'alpha' AND (ExecutionStatus = 'Running' OR CustomerId = 'c-2')",
    "ExecutionStatus != 'Running' AND CloseTime > '2024-01-01T00:00:03Z'",
    "StartTime >= '2024-01-01T00:00:06Z' ORDER BY StartTime DESC",
    "Amount > 0 ORDER BY CloseTime",
    "TaskQueue = 'q-1' OR RunId IN ('run-03', 'run-07') ORDER BY WorkflowId DESC",
    "ORDER BY ExecutionStatus",
];

/// The search attributes of listed run `index`: every kind, some missing.
fn listed_attributes(index: usize) -> crate::visibility::SearchAttributes {
    use crate::visibility::SearchValue as V;
    let mut attributes = crate::visibility::SearchAttributes::new();
    let mut set = |name: &str, value: V| attributes.insert(name.to_string(), value);
    if index % 5 != 4 {
        set("CustomerId", V::Keyword(format!("c-{}", index % 4)));
    }
    if !index.is_multiple_of(3) {
        set("Amount", V::Int(index as i64 * 3 - 8));
    } else {
        set("Amount", V::Double(index as f64 + 0.5));
    }
    set("Score", V::Double(index as f64 / 16.0));
    set("Vip", V::Bool(index.is_multiple_of(2)));
    let colors = ["red", "green", "blue"];
    set(
        "Tags",
        V::KeywordList(vec![
            colors[index % 3].into(),
            colors[(index / 3) % 3].into(),
        ]),
    );
    set("Due", V::Datetime(START_TIME.plus_ms(index as u64 * 1_000)));
    if index % 4 == 1 {
        set("Note", V::Text(["hello world", "again"][index % 2].into()));
    }
    attributes
}

/// Writes `count` runs with search attributes, then rewrites some (an
/// upsert changes values, a run closes): the index follows the last write.
async fn write_attributed_runs(
    storage: &dyn Storage,
    count: usize,
    property: &str,
) -> Vec<RunRecord> {
    let mut runs = Vec::new();
    for index in 0..count {
        let scrambled = (index * 7 + 3) % count;
        let run_id = format!("run-{scrambled:02}");
        let mut batch = create(&run_id, 1);
        batch.run.workflow_type = ["alpha", "beta"][scrambled % 2].to_string();
        batch.run.task_queue = format!("q-{}", scrambled % 3);
        batch.run.start_time = START_TIME.plus_ms(scrambled as u64 * 1_000);
        batch.run.search_attributes = listed_attributes(scrambled);
        write_ok(storage, batch.clone(), property).await;
        let mut run = batch.run;
        if scrambled % 3 != 1 {
            let mut next = append(&run, 1);
            next.run.search_attributes = listed_attributes(scrambled + 7);
            if scrambled % 2 == 1 {
                next.run.status = RunStatus::Completed;
                next.run.close_time = Some(START_TIME.plus_ms(scrambled as u64 * 700));
            }
            write_ok(storage, next.clone(), property).await;
            run = next.run;
        }
        assert_eq!(
            read_run(storage, &run_id, property).await.as_ref(),
            Some(&run)
        );
        runs.push(run);
    }
    runs
}

/// Every storage answers a list query as [`crate::visibility::eval`] does:
/// the same runs, in the same order, paged by offset the same; search
/// attributes of every kind read back equal after upserts.
pub async fn list_queries_answer_as_the_evaluation_does(storage: &dyn Storage) {
    use crate::visibility::{eval, parse_query};
    let property = "list_queries_answer_as_the_evaluation_does";
    let runs = write_attributed_runs(storage, 24, property).await;
    for text in LIST_QUERIES {
        let query = parse_query(text).unwrap_or_else(|e| panic!("{property}: {text}: {e}"));
        let mut expected: Vec<RunRecord> = runs
            .iter()
            .filter(|run| eval::matches_query(run, &query))
            .cloned()
            .collect();
        eval::order(&mut expected, query.order_by);
        let all = ListQuery {
            query: Some(query.clone()),
            limit: RUNS_LIST_MAX,
            ..ListQuery::default()
        };
        let listed = list_runs(storage, all, property).await;
        let ids = |runs: &[RunRecord]| runs.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&listed), ids(&expected), "{property}: {text}");
        assert_eq!(listed, expected, "{property}: {text}: records");
        for offset in (0..expected.len() + 1).step_by(5) {
            let page = ListQuery {
                query: Some(query.clone()),
                limit: 5,
                offset,
                ..ListQuery::default()
            };
            let page = list_runs(storage, page, property).await;
            let end = (offset + 5).min(expected.len());
            assert_eq!(
                ids(&page),
                ids(&expected[offset..end]),
                "{property}: {text} @{offset}"
            );
        }
    }
    // The evaluation itself is not vacuous: a few answers by hand.
    let hits = |text: &str| {
        let query = parse_query(text).expect("parses");
        runs.iter()
            .filter(|run| eval::matches_query(run, &query))
            .count()
    };
    assert_eq!(hits("Vip = true OR Vip = false"), runs.len());
    assert_eq!(hits("Note = 'hello world'"), 0);
    assert!(hits("Tags = 'blue'") > 0 && hits("Tags = 'blue'") < runs.len());
}

// ---------------------------------------------------------------------------
// Shards, leases and fences: what a storage serving a cluster must do (see
// [`crate::env::lease`]). Each check takes a fresh storage with shards and
// `advance`, which moves the storage's clock on by at least that many
// milliseconds (a manual clock's step, or a real sleep for a database that
// judges leases by its own clock).

/// Moves the storage's clock on by at least this many milliseconds.
pub type Advance = dyn Fn(u64) -> BoxFuture<'static, ()>;

/// A fresh storage with shards, and how to advance its clock.
pub type LeaseSetup = (Arc<dyn Storage>, Box<Advance>);

/// A lease no check outlives.
const LEASE_LONG_MS: u64 = 60_000;
/// A lease the checks wait out: short, so a real clock is waited on briefly.
const LEASE_SHORT_MS: u64 = 300;
/// Nodes racing for one free shard.
const RACING_NODES_COUNT: u64 = 8;
/// The incarnation of a restarted node: past `i64::MAX`, as random ones are.
const INCARNATION_LARGE: u64 = u64::MAX - 7;

/// Runs every lease check, each on a fresh storage from `make`.
pub async fn run_leases(make: &dyn Fn() -> LeaseSetup) {
    let (storage, advance) = make();
    a_free_shard_is_granted_at_epoch_1(&*storage, &*advance).await;
    let (storage, advance) = make();
    the_holder_renews_and_keeps_the_epoch(&*storage, &*advance).await;
    let (storage, advance) = make();
    another_node_is_refused_while_the_lease_is_held(&*storage, &*advance).await;
    let (storage, advance) = make();
    an_expired_lease_is_taken_with_the_next_epoch_and_the_old_holder_cannot_renew(
        &*storage, &*advance,
    )
    .await;
    let (storage, advance) = make();
    a_restarted_node_takes_its_shard_at_once_with_a_new_epoch(&*storage, &*advance).await;
    let (storage, advance) = make();
    a_release_frees_the_shard_and_the_next_holder_bumps_the_epoch(&*storage, &*advance).await;
    let (storage, advance) = make();
    a_fenced_write_with_the_current_epoch_lands(&*storage, &*advance).await;
    let (storage, advance) = make();
    a_fenced_write_with_an_old_epoch_is_refused_and_changes_nothing(&*storage, &*advance).await;
    let (storage, advance) = make();
    a_fence_naming_another_shard_than_the_workflow_ids_is_a_bad_batch(&*storage, &*advance).await;
    let (storage, advance) = make();
    racing_acquisitions_of_a_free_shard_grant_exactly_one(&*storage, &*advance).await;
    let (storage, advance) = make();
    members_beat_alive_and_are_dead_after_their_ttl(&*storage, &*advance).await;
    let (storage, advance) = make();
    bad_lease_requests_are_refused_and_change_nothing(&*storage, &*advance).await;
    let (storage, advance) = make();
    an_unfenced_write_keeps_working_on_a_sharded_store(&*storage, &*advance).await;
}

fn ask(shard: u32, owner: &str, incarnation: u64, lease_ms: u64) -> LeaseRequest {
    LeaseRequest {
        shard,
        owner: owner.to_string(),
        incarnation,
        lease_ms,
    }
}

async fn cluster_view(storage: &dyn Storage, property: &str) -> ClusterView {
    match storage.cluster_view().await {
        Ok(view) => view,
        Err(error) => panic!("{property}: reading the cluster failed: {error}"),
    }
}

/// The storage's shard count (at least two: the checks use two shards).
async fn shard_count(storage: &dyn Storage, property: &str) -> u32 {
    let count = cluster_view(storage, property).await.shards.len();
    assert!(count >= 2, "{property}: the storage has {count} shards");
    u32::try_from(count).expect("at most SHARD_COUNT_MAX shards")
}

async fn lease_of(storage: &dyn Storage, shard: u32, property: &str) -> ShardLease {
    let view = cluster_view(storage, property).await;
    view.shards[shard as usize].clone()
}

async fn acquire(storage: &dyn Storage, request: LeaseRequest, property: &str) -> LeaseAnswer {
    let asked = format!("{request:?}");
    match storage.acquire_shard(request).await {
        Ok(answer) => answer,
        Err(error) => panic!("{property}: acquiring {asked} failed: {error}"),
    }
}

/// Acquires a lease that must be granted; returns it.
async fn granted(storage: &dyn Storage, request: LeaseRequest, property: &str) -> ShardLease {
    let asked = format!("{request:?}");
    let answer = acquire(storage, request, property).await;
    assert!(
        answer.granted,
        "{property}: {asked} was refused: {answer:?}"
    );
    answer.lease
}

/// Acquires a lease that must be refused; returns the lease it lost to.
async fn refused(storage: &dyn Storage, request: LeaseRequest, property: &str) -> ShardLease {
    let asked = format!("{request:?}");
    let answer = acquire(storage, request, property).await;
    assert!(
        !answer.granted,
        "{property}: {asked} was granted: {answer:?}"
    );
    answer.lease
}

/// A run id whose workflow id (`wf-{run id}`) is in `shard` of `count`.
fn run_in_shard(prefix: &str, shard: u32, count: u32) -> String {
    let run_id = (0..)
        .map(|index| format!("{prefix}-{index}"))
        .find(|run_id| shard_of(&format!("wf-{run_id}"), count) == shard)
        .expect("some id falls in every shard");
    assert_eq!(shard_of(&format!("wf-{run_id}"), count), shard);
    run_id
}

fn fenced(mut batch: WriteBatch, shard: u32, epoch: u64) -> WriteBatch {
    batch.fence = Some(Fence { shard, epoch });
    batch
}

/// A shard nobody has held is granted at epoch 1, until storage time plus
/// the lease, and the cluster view shows it so.
pub async fn a_free_shard_is_granted_at_epoch_1(storage: &dyn Storage, _advance: &Advance) {
    let property = "a_free_shard_is_granted_at_epoch_1";
    let count = shard_count(storage, property).await;
    let before = cluster_view(storage, property).await;
    assert!(
        before
            .shards
            .iter()
            .zip(0..)
            .all(|(lease, shard)| *lease == ShardLease::free(shard)),
        "{property}: a fresh storage's shards are not all free: {:?}",
        before.shards
    );
    let lease = granted(
        storage,
        ask(count - 1, "node-a", 1, LEASE_LONG_MS),
        property,
    )
    .await;
    assert_eq!(
        (
            lease.shard,
            lease.owner.as_str(),
            lease.incarnation,
            lease.epoch
        ),
        (count - 1, "node-a", 1, 1),
        "{property}: the lease granted"
    );
    let after = cluster_view(storage, property).await;
    assert!(
        lease.expires_ms >= before.now_ms + LEASE_LONG_MS
            && lease.expires_ms <= after.now_ms + LEASE_LONG_MS,
        "{property}: expires at {} (storage time {}..={})",
        lease.expires_ms,
        before.now_ms,
        after.now_ms
    );
    assert_eq!(
        after.shards[(count - 1) as usize],
        lease,
        "{property}: the view"
    );
    assert!(
        after.shards[..(count - 1) as usize]
            .iter()
            .all(|l| l.epoch == 0),
        "{property}: another shard changed"
    );
}

/// The holder renews its lease: granted, the epoch kept, the expiry later.
pub async fn the_holder_renews_and_keeps_the_epoch(storage: &dyn Storage, advance: &Advance) {
    let property = "the_holder_renews_and_keeps_the_epoch";
    let first = granted(storage, ask(0, "node-a", 1, LEASE_LONG_MS), property).await;
    advance(10).await;
    let renewed = granted(storage, ask(0, "node-a", 1, LEASE_LONG_MS), property).await;
    assert_eq!(renewed.epoch, first.epoch, "{property}: the epoch moved");
    assert!(
        renewed.expires_ms >= first.expires_ms + 10,
        "{property}: renewed until {}, first until {}",
        renewed.expires_ms,
        first.expires_ms
    );
    assert_eq!(
        lease_of(storage, 0, property).await,
        renewed,
        "{property}: the view"
    );
}

/// Another node (even with the holder's incarnation number) is refused
/// while the lease is held, and is answered the holder's lease unchanged.
pub async fn another_node_is_refused_while_the_lease_is_held(
    storage: &dyn Storage,
    _advance: &Advance,
) {
    let property = "another_node_is_refused_while_the_lease_is_held";
    let held = granted(storage, ask(1, "node-a", 1, LEASE_LONG_MS), property).await;
    for (node, incarnation) in [("node-b", 2), ("node-b", 1), ("node-a-2", 1)] {
        let lost_to = refused(storage, ask(1, node, incarnation, LEASE_LONG_MS), property).await;
        assert_eq!(
            lost_to, held,
            "{property}: {node} was answered another lease"
        );
    }
    assert_eq!(
        lease_of(storage, 1, property).await,
        held,
        "{property}: the view"
    );
}

/// Once its lease has run out, a shard is taken by another node at the next
/// epoch, and the old holder cannot renew it.
pub async fn an_expired_lease_is_taken_with_the_next_epoch_and_the_old_holder_cannot_renew(
    storage: &dyn Storage,
    advance: &Advance,
) {
    let property = "an_expired_lease_is_taken_with_the_next_epoch_and_the_old_holder_cannot_renew";
    let old = granted(storage, ask(2, "node-a", 1, LEASE_SHORT_MS), property).await;
    advance(LEASE_SHORT_MS).await;
    let taken = granted(storage, ask(2, "node-b", 2, LEASE_LONG_MS), property).await;
    assert_eq!(
        (taken.owner.as_str(), taken.epoch),
        ("node-b", old.epoch + 1),
        "{property}: the lease taken"
    );
    let lost_to = refused(storage, ask(2, "node-a", 1, LEASE_LONG_MS), property).await;
    assert_eq!(lost_to, taken, "{property}: the old holder renewed");
}

/// A node restarted (same name, new incarnation) takes the shard its
/// earlier incarnation held at once, with a new epoch.
pub async fn a_restarted_node_takes_its_shard_at_once_with_a_new_epoch(
    storage: &dyn Storage,
    _advance: &Advance,
) {
    let property = "a_restarted_node_takes_its_shard_at_once_with_a_new_epoch";
    let old = granted(storage, ask(3, "node-a", 1, LEASE_LONG_MS), property).await;
    let request = ask(3, "node-a", INCARNATION_LARGE, LEASE_LONG_MS);
    let restarted = granted(storage, request, property).await;
    assert_eq!(
        (restarted.incarnation, restarted.epoch),
        (INCARNATION_LARGE, old.epoch + 1),
        "{property}: the lease taken"
    );
    assert_eq!(
        lease_of(storage, 3, property).await,
        restarted,
        "{property}: the view"
    );
    let lost_to = refused(storage, ask(3, "node-b", 1, LEASE_LONG_MS), property).await;
    assert_eq!(lost_to, restarted, "{property}: another node");
}

/// Only the holder releases; a released shard is free at once with its
/// epoch bumped (a write the old holder still has in flight is refused),
/// and its next holder gets the epoch after that.
pub async fn a_release_frees_the_shard_and_the_next_holder_bumps_the_epoch(
    storage: &dyn Storage,
    _advance: &Advance,
) {
    let property = "a_release_frees_the_shard_and_the_next_holder_bumps_the_epoch";
    let release = |request: LeaseRequest| async move {
        let asked = format!("{request:?}");
        match storage.release_shard(request).await {
            Ok(released) => released,
            Err(error) => panic!("{property}: releasing {asked} failed: {error}"),
        }
    };
    let held = granted(storage, ask(4, "node-a", 1, LEASE_LONG_MS), property).await;
    for (node, incarnation) in [("node-b", 1), ("node-a", 2)] {
        let released = release(ask(4, node, incarnation, LEASE_LONG_MS)).await;
        assert!(
            !released,
            "{property}: {node}/{incarnation} released a lease it does not hold"
        );
        assert_eq!(
            lease_of(storage, 4, property).await,
            held,
            "{property}: the view"
        );
    }
    assert!(
        release(ask(4, "node-a", 1, LEASE_LONG_MS)).await,
        "{property}: the holder"
    );
    let free = ShardLease {
        epoch: held.epoch + 1,
        ..ShardLease::free(4)
    };
    assert_eq!(
        lease_of(storage, 4, property).await,
        free,
        "{property}: released"
    );
    assert!(
        !release(ask(4, "node-a", 1, LEASE_LONG_MS)).await,
        "{property}: twice"
    );
    let next = granted(storage, ask(4, "node-b", 1, LEASE_LONG_MS), property).await;
    assert_eq!(
        next.epoch,
        held.epoch + 2,
        "{property}: the next holder's epoch"
    );
}

/// Writes fenced with the epoch the shard is at land (a creation, an
/// append, and a continue-as-new pair), as unfenced ones would.
pub async fn a_fenced_write_with_the_current_epoch_lands(
    storage: &dyn Storage,
    _advance: &Advance,
) {
    let property = "a_fenced_write_with_the_current_epoch_lands";
    let count = shard_count(storage, property).await;
    let run_id = run_in_shard("run-fenced", 5 % count, count);
    let lease = granted(
        storage,
        ask(5 % count, "node-a", 1, LEASE_LONG_MS),
        property,
    )
    .await;
    let created = create(&run_id, 2);
    let version_1 = created.run.clone();
    write_ok(storage, fenced(created, lease.shard, lease.epoch), property).await;
    let appended = append(&version_1, 1);
    let version_2 = appended.run.clone();
    write_ok(
        storage,
        fenced(appended, lease.shard, lease.epoch),
        property,
    )
    .await;
    assert_eq!(
        read_run(storage, &run_id, property).await,
        Some(version_2.clone())
    );
    let events = read_events(storage, &run_id, 1, EVENTS_READ_MAX, property).await;
    assert_eq!(events.len(), 3, "{property}: the events");
    let next_run_id = format!("{run_id}-next");
    let pair = continue_pair(&version_2, &next_run_id, &run_id);
    write_ok(storage, fenced(pair, lease.shard, lease.epoch), property).await;
    let current = current_run(storage, &version_2.workflow_id, property).await;
    assert_eq!(current, Some(next_run_id), "{property}: the continued run");
}

/// A write fenced with an epoch the shard is no longer at (or not yet at) is
/// refused `Fenced` with the stored epoch, and changes nothing: no update,
/// no creation, no continue-as-new.
pub async fn a_fenced_write_with_an_old_epoch_is_refused_and_changes_nothing(
    storage: &dyn Storage,
    _advance: &Advance,
) {
    let property = "a_fenced_write_with_an_old_epoch_is_refused_and_changes_nothing";
    let count = shard_count(storage, property).await;
    let shard = 6 % count;
    let run_id = run_in_shard("run-old", shard, count);
    let old = granted(storage, ask(shard, "node-a", 1, LEASE_LONG_MS), property).await;
    let created = create(&run_id, 2);
    let stored = created.run.clone();
    write_ok(storage, fenced(created, shard, old.epoch), property).await;
    let new = granted(storage, ask(shard, "node-a", 2, LEASE_LONG_MS), property).await;
    let other_run_id = run_in_shard(&format!("{run_id}-other"), shard, count);
    let batches = [
        (append(&stored, 1), old.epoch),
        (append(&stored, 1), new.epoch + 1),
        (create(&other_run_id, 1), old.epoch),
        (continue_pair(&stored, "run-old-next", &run_id), old.epoch),
    ];
    for (batch, epoch) in batches {
        let error = refuse(storage, fenced(batch, shard, epoch), property).await;
        let expected = StorageError::Fenced {
            shard,
            epoch,
            stored: new.epoch,
        };
        assert_eq!(error, expected, "{property}: fenced at epoch {epoch}");
    }
    assert_eq!(read_run(storage, "run-old-next", property).await, None);
    assert_eq!(
        read_run(storage, &run_id, property).await,
        Some(stored.clone())
    );
    write_ok(
        storage,
        fenced(append(&stored, 1), shard, new.epoch),
        property,
    )
    .await;
}

/// A fence naming a shard that is not its workflow id's (another one, or
/// one that does not exist) is a `BadBatch`, whatever its epoch.
pub async fn a_fence_naming_another_shard_than_the_workflow_ids_is_a_bad_batch(
    storage: &dyn Storage,
    _advance: &Advance,
) {
    let property = "a_fence_naming_another_shard_than_the_workflow_ids_is_a_bad_batch";
    let count = shard_count(storage, property).await;
    let run_id = "run-misfenced";
    let own = shard_of(&format!("wf-{run_id}"), count);
    let other = (own + 1) % count;
    let lease = granted(storage, ask(other, "node-a", 1, LEASE_LONG_MS), property).await;
    for (shard, epoch) in [(other, lease.epoch), (count, 1), (u32::MAX, 0)] {
        let error = refuse(storage, fenced(create(run_id, 1), shard, epoch), property).await;
        assert_bad_batch(&error, run_id, property);
    }
}

/// Nodes racing to acquire one free shard: exactly one is granted (epoch
/// 1), and every other is answered the winner's lease.
pub async fn racing_acquisitions_of_a_free_shard_grant_exactly_one(
    storage: &dyn Storage,
    _advance: &Advance,
) {
    let property = "racing_acquisitions_of_a_free_shard_grant_exactly_one";
    let requests = (0..RACING_NODES_COUNT)
        .map(|index| ask(7, &format!("racer-{index}"), index + 1, LEASE_LONG_MS));
    let answers = join_all(requests.map(|request| acquire(storage, request, property))).await;
    let winners: Vec<&LeaseAnswer> = answers.iter().filter(|answer| answer.granted).collect();
    assert_eq!(
        winners.len(),
        1,
        "{property}: {} granted, not 1",
        winners.len()
    );
    let winner = winners[0].lease.clone();
    assert_eq!(winner.epoch, 1, "{property}: the winner's epoch");
    for answer in answers.iter().filter(|answer| !answer.granted) {
        assert_eq!(answer.lease, winner, "{property}: a loser's answer");
    }
    assert_eq!(
        lease_of(storage, 7, property).await,
        winner,
        "{property}: the view"
    );
}

async fn beat(storage: &dyn Storage, beat: MemberBeat, property: &str) -> Vec<Member> {
    let node = beat.node.clone();
    match storage.beat(beat).await {
        Ok(members) => members,
        Err(error) => panic!("{property}: the heartbeat of {node} failed: {error}"),
    }
}

fn member_beat(node: &str, incarnation: u64, ttl_ms: u64) -> MemberBeat {
    MemberBeat {
        node: node.to_string(),
        incarnation,
        address: format!("{node}:7233"),
        ttl_ms,
    }
}

/// `(node, incarnation, alive)` of each member, in the order answered.
fn liveness(members: &[Member]) -> Vec<(&str, u64, bool)> {
    let seen = members
        .iter()
        .map(|m| (m.node.as_str(), m.incarnation, m.alive));
    seen.collect()
}

/// Members beat and read back alive, by name, with their address and
/// latest incarnation; one whose time to live ran out reads back dead,
/// until it beats again.
pub async fn members_beat_alive_and_are_dead_after_their_ttl(
    storage: &dyn Storage,
    advance: &Advance,
) {
    let property = "members_beat_alive_and_are_dead_after_their_ttl";
    beat(storage, member_beat("node-a", 1, LEASE_LONG_MS), property).await;
    let members = beat(storage, member_beat("node-c", 3, LEASE_SHORT_MS), property).await;
    assert_eq!(
        liveness(&members),
        [("node-a", 1, true), ("node-c", 3, true)],
        "{property}"
    );
    assert_eq!(members[1].address, "node-c:7233", "{property}: the address");
    advance(LEASE_SHORT_MS).await;
    let members = beat(storage, member_beat("node-b", 2, LEASE_LONG_MS), property).await;
    let expected = [
        ("node-a", 1, true),
        ("node-b", 2, true),
        ("node-c", 3, false),
    ];
    assert_eq!(
        liveness(&members),
        expected,
        "{property}: after node-c's ttl"
    );
    let view = cluster_view(storage, property).await;
    assert_eq!(liveness(&view.members), expected, "{property}: the view");
    let node_c = &view.members[2];
    assert!(
        node_c.expires_ms <= view.now_ms,
        "{property}: node-c {node_c:?} at {}",
        view.now_ms
    );
    let members = beat(
        storage,
        member_beat("node-c", INCARNATION_LARGE, LEASE_LONG_MS),
        property,
    )
    .await;
    let expected = [
        ("node-a", 1, true),
        ("node-b", 2, true),
        ("node-c", INCARNATION_LARGE, true),
    ];
    assert_eq!(liveness(&members), expected, "{property}: node-c restarted");
}

/// Lease requests and heartbeats out of bounds (an empty node name, a shard
/// that does not exist, a lease or time to live of 0 or over the maximum,
/// an address too long) are refused, and change nothing.
pub async fn bad_lease_requests_are_refused_and_change_nothing(
    storage: &dyn Storage,
    _advance: &Advance,
) {
    let property = "bad_lease_requests_are_refused_and_change_nothing";
    let count = shard_count(storage, property).await;
    let before = cluster_view(storage, property).await;
    let requests = [
        ask(0, "", 1, LEASE_LONG_MS),
        ask(count, "node-a", 1, LEASE_LONG_MS),
        ask(u32::MAX, "node-a", 1, LEASE_LONG_MS),
        ask(0, "node-a", 1, 0),
        ask(0, "node-a", 1, LEASE_MS_MAX + 1),
        ask(0, &"n".repeat(NODE_NAME_BYTES_MAX + 1), 1, LEASE_LONG_MS),
    ];
    for request in requests {
        let asked = format!("{request:?}");
        let acquired = storage.acquire_shard(request.clone()).await;
        assert!(
            acquired.is_err(),
            "{property}: {asked} was answered {acquired:?}"
        );
        let released = storage.release_shard(request).await;
        assert!(
            released.is_err(),
            "{property}: releasing {asked}: {released:?}"
        );
    }
    let beats = [
        member_beat("", 1, LEASE_LONG_MS),
        member_beat("node-a", 1, 0),
        member_beat("node-a", 1, LEASE_MS_MAX + 1),
        MemberBeat {
            address: "a".repeat(ADDRESS_BYTES_MAX + 1),
            ..member_beat("node-a", 1, LEASE_LONG_MS)
        },
    ];
    for bad in beats {
        let asked = format!("{bad:?}");
        let answered = storage.beat(bad).await;
        assert!(
            answered.is_err(),
            "{property}: {asked} was answered {answered:?}"
        );
    }
    let after = cluster_view(storage, property).await;
    assert_eq!(
        after.shards, before.shards,
        "{property}: the shards changed"
    );
    assert_eq!(
        after.members, before.members,
        "{property}: the members changed"
    );
}

/// Unfenced writes (a single server's) land on a storage with shards as on
/// any other, whoever holds their shard.
pub async fn an_unfenced_write_keeps_working_on_a_sharded_store(
    storage: &dyn Storage,
    _advance: &Advance,
) {
    let property = "an_unfenced_write_keeps_working_on_a_sharded_store";
    let count = shard_count(storage, property).await;
    let run_id = "run-unfenced";
    let shard = shard_of(&format!("wf-{run_id}"), count);
    granted(storage, ask(shard, "node-a", 1, LEASE_LONG_MS), property).await;
    let created = create(run_id, 2);
    let version_1 = created.run.clone();
    write_ok(storage, created, property).await;
    let appended = append(&version_1, 3);
    let version_2 = appended.run.clone();
    write_ok(storage, appended, property).await;
    assert_eq!(read_run(storage, run_id, property).await, Some(version_2));
    let events = read_events(storage, run_id, 1, EVENTS_READ_MAX, property).await;
    assert_eq!(events.len(), 5, "{property}: the events");
}
