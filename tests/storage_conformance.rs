//! The storage conformance suite (`retrace::env::conformance`) against every
//! production storage. Each property is its own test for each implementation,
//! so a failure names both: `sqlite_storage::stale_expected_version_...`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use retrace::env::{
    BoxFuture, Clock, MemoryStorage, PostgresStorage, SqliteStorage, Storage, conformance,
};
use retrace::types::Timestamp;

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

/// The clock a memory storage with shards judges leases by, moved by hand.
struct ManualClock {
    now_ms: AtomicU64,
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now_ms.load(Ordering::SeqCst))
    }

    /// The storage never sleeps on its lease clock: ready at once.
    fn sleep_until(&self, _deadline: Timestamp) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Shards a memory storage is made with, as a Postgres schema has.
const SHARD_COUNT: u32 = 64;

/// A fresh memory storage with shards, and its manual clock's step.
fn memory_with_shards() -> conformance::LeaseSetup {
    let clock = Arc::new(ManualClock {
        now_ms: AtomicU64::new(1_704_067_200_000),
    });
    let storage = MemoryStorage::with_shards(SHARD_COUNT, clock.clone());
    let advance = move |ms: u64| -> BoxFuture<'static, ()> {
        clock.now_ms.fetch_add(ms, Ordering::SeqCst);
        Box::pin(std::future::ready(()))
    };
    (Arc::new(storage), Box::new(advance))
}

/// A real sleep: Postgres judges leases by its own clock. A little over
/// `ms`, as Postgres's clock is the wall clock and tokio's is monotonic.
#[allow(clippy::disallowed_methods)] // The test waits on real time.
fn sleep_ms(ms: u64) -> BoxFuture<'static, ()> {
    Box::pin(tokio::time::sleep(std::time::Duration::from_millis(ms + 2)))
}

/// A fresh Postgres schema opened in cluster mode, and a real sleep.
async fn postgres_with_shards() -> Option<conformance::LeaseSetup> {
    let cluster = postgres_cluster::shared()?;
    let url = cluster.fresh_schema_url();
    let storage = PostgresStorage::connect_cluster(&url).await;
    let storage = storage.unwrap_or_else(|e| panic!("a fresh Postgres schema opens: {e}"));
    assert_eq!(storage.shard_count(), SHARD_COUNT);
    Some((Arc::new(storage), Box::new(sleep_ms)))
}

macro_rules! lease_tests {
    ($($property:ident),* $(,)?) => {
        mod memory_storage_leases {
            use super::*;

            $(
                #[test]
                fn $property() {
                    let (storage, advance) = memory_with_shards();
                    block_on(conformance::$property(&*storage, &*advance));
                }
            )*

            #[test]
            fn run_leases_passes() {
                block_on(conformance::run_leases(&memory_with_shards));
            }
        }

        mod postgres_storage_leases {
            use super::*;

            $(
                #[test]
                fn $property() {
                    multi_thread_runtime().block_on(async {
                        if let Some((storage, advance)) = postgres_with_shards().await {
                            conformance::$property(&*storage, &*advance).await;
                        }
                    });
                }
            )*

            #[test]
            fn run_leases_passes() {
                if postgres_cluster::shared().is_none() {
                    return; // Skipped, loudly.
                }
                let make = || {
                    let opening = postgres_with_shards();
                    let handle = tokio::runtime::Handle::current();
                    let setup = tokio::task::block_in_place(|| handle.block_on(opening));
                    setup.expect("the cluster runs")
                };
                multi_thread_runtime().block_on(conformance::run_leases(&make));
            }
        }
    };
}

lease_tests!(
    a_free_shard_is_granted_at_epoch_1,
    the_holder_renews_and_keeps_the_epoch,
    another_node_is_refused_while_the_lease_is_held,
    an_expired_lease_is_taken_with_the_next_epoch_and_the_old_holder_cannot_renew,
    a_restarted_node_takes_its_shard_at_once_with_a_new_epoch,
    a_release_frees_the_shard_and_the_next_holder_bumps_the_epoch,
    a_fenced_write_with_the_current_epoch_lands,
    a_fenced_write_with_an_old_epoch_is_refused_and_changes_nothing,
    a_fence_naming_another_shard_than_the_workflow_ids_is_a_bad_batch,
    racing_acquisitions_of_a_free_shard_grant_exactly_one,
    members_beat_alive_and_are_dead_after_their_ttl,
    bad_lease_requests_are_refused_and_change_nothing,
    an_unfenced_write_keeps_working_on_a_sharded_store,
);
