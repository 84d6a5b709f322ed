//! The storage conformance suite (`retrace::env::conformance`) against every
//! production storage. Each property is its own test for each implementation,
//! so a failure names both: `sqlite_storage::stale_expected_version_...`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use retrace::env::{MemoryStorage, PostgresStorage, SqliteStorage, Storage, conformance};

mod postgres_cluster;

/// Drives `future` to completion on a fresh tokio runtime.
fn block_on<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    runtime.block_on(future)
}

/// A fresh SQLite storage in its own temporary directory (kept alive with it).
fn sqlite_storage() -> (tempfile::TempDir, SqliteStorage) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let storage =
        SqliteStorage::open(dir.path().join("retrace.db")).expect("a fresh database opens");
    (dir, storage)
}

/// A fresh Postgres storage: a new, empty schema on this process's private
/// cluster. `None` where Postgres is not installed (the tests skip, loudly).
async fn postgres_storage() -> Option<PostgresStorage> {
    let cluster = postgres_cluster::shared()?;
    let url = cluster.fresh_schema_url();
    let storage = PostgresStorage::connect(&url).await;
    Some(storage.unwrap_or_else(|e| panic!("a fresh Postgres schema opens: {e}")))
}

/// A multi-thread runtime: `run_all`'s `make` opens storages from inside it.
fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

macro_rules! conformance_tests {
    ($($property:ident),* $(,)?) => {
        mod memory_storage {
            use super::*;

            $(
                #[test]
                fn $property() {
                    block_on(conformance::$property(&MemoryStorage::new()));
                }
            )*

            #[test]
            fn run_all_passes() {
                let make = || Arc::new(MemoryStorage::new()) as Arc<dyn Storage>;
                block_on(conformance::run_all(&make));
            }
        }

        mod sqlite_storage {
            use super::*;

            $(
                #[test]
                fn $property() {
                    let (_dir, storage) = sqlite_storage();
                    block_on(conformance::$property(&storage));
                }
            )*

            #[test]
            fn run_all_passes() {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let opened = AtomicUsize::new(0);
                let make = || {
                    let index = opened.fetch_add(1, Ordering::Relaxed);
                    let path = dir.path().join(format!("retrace-{index}.db"));
                    let storage = SqliteStorage::open(&path).expect("a fresh database opens");
                    Arc::new(storage) as Arc<dyn Storage>
                };
                block_on(conformance::run_all(&make));
                let opened = opened.load(Ordering::Relaxed);
                assert!(opened > 1, "run_all gives each check a fresh storage");
            }
        }

        mod postgres_storage {
            use super::*;

            $(
                #[test]
                fn $property() {
                    block_on(async {
                        if let Some(storage) = postgres_storage().await {
                            conformance::$property(&storage).await;
                        }
                    });
                }
            )*

            #[test]
            fn run_all_passes() {
                if postgres_cluster::shared().is_none() {
                    return; // Skipped, loudly.
                }
                let opened = AtomicUsize::new(0);
                let make = || {
                    opened.fetch_add(1, Ordering::Relaxed);
                    let opening = postgres_storage();
                    let handle = tokio::runtime::Handle::current();
                    let storage = tokio::task::block_in_place(|| handle.block_on(opening));
                    Arc::new(storage.expect("the cluster runs")) as Arc<dyn Storage>
                };
                multi_thread_runtime().block_on(conformance::run_all(&make));
                let opened = opened.load(Ordering::Relaxed);
                assert!(opened > 1, "run_all gives each check a fresh storage");
            }
        }
    };
}

conformance_tests!(
    unknown_run_reads_as_none_and_empty,
    created_run_reads_back_equal,
    every_run_status_round_trips,
    updates_move_a_run_between_status_lists,
    read_events_pages_by_from_event_id_and_limit,
    events_appended_in_later_batches_keep_their_order,
    stale_expected_version_is_refused_and_changes_nothing,
    creating_an_existing_run_is_refused_and_changes_nothing,
    non_contiguous_event_ids_are_a_bad_batch,
    wrong_next_event_id_is_a_bad_batch,
    version_not_bumped_by_one_is_a_bad_batch,
    a_write_cannot_change_what_identifies_a_run,
    first_claim_of_a_workflow_id_takes_it,
    claim_naming_the_wrong_previous_run_is_refused,
    claim_naming_the_current_run_reuses_the_workflow_id,
    claim_is_atomic_with_the_rest_of_the_batch,
    a_next_run_is_written_with_its_predecessor_or_not_at_all,
    list_runs_filters_by_status_and_workflow_type,
    list_runs_orders_by_run_id_and_pages_after_run_id,
    concurrent_writes_to_different_runs_all_land,
    concurrent_updates_of_one_run_admit_exactly_one,
    refused_writes_among_concurrent_ones_fail_alone,
    payload_near_one_mebibyte_round_trips,
    list_queries_answer_as_the_evaluation_does,
);
