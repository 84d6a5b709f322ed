//! # retrace-sim: deterministic simulation testing for Retrace
//!
//! Your workflows and activities run on the real Retrace engine (the same
//! service, workers and client code you deploy), inside a simulated world
//! driven by one `u64` seed. The seed decides everything: task scheduling,
//! message latencies, which messages are lost or duplicated, when nodes crash,
//! when the network partitions, which storage writes fail or commit ambiguously,
//! how far each node's clock is off. The same seed gives the same run, bit for
//! bit, so every failure reproduces from one line.
//!
//! ## A first simulation
//!
//! ```
//! use std::time::Duration;
//! use retrace::activity::{Activity, ActivityContext, ActivityOptions, ActivityResult, retryable};
//! use retrace::workflow::{Workflow, WorkflowContext, WorkflowResult};
//! use retrace_sim::{Accounts, ServiceClient, Simulation};
//! use serde_json::json;
//!
//! /// Moves money between accounts in a simulated bank.
//! struct Transfer { bank: ServiceClient }
//! impl Activity for Transfer {
//!     const NAME: &'static str = "transfer";
//!     type Input = i64;
//!     type Output = ();
//!     fn options() -> ActivityOptions {
//!         ActivityOptions::default().start_to_close(Duration::from_secs(10))
//!     }
//!     async fn run(&self, ctx: ActivityContext, amount: i64) -> ActivityResult<()> {
//!         // The same key on every retry: the bank applies the transfer once.
//!         let request = json!({"op": "transfer", "from": "alice", "to": "bob",
//!                              "amount": amount, "idempotency_key": ctx.idempotency_key()});
//!         self.bank.call(&ctx, request).await.map_err(retryable)?;
//!         Ok(())
//!     }
//! }
//!
//! struct Pay;
//! impl Workflow for Pay {
//!     const NAME: &'static str = "pay";
//!     type Input = i64;
//!     type Output = ();
//!     async fn run(ctx: WorkflowContext, amount: i64) -> WorkflowResult<()> {
//!         ctx.sleep(Duration::from_secs(5)).await?;
//!         Ok(ctx.activity::<Transfer>(amount).await?)
//!     }
//! }
//!
//! let seeds = Simulation::new("pay")
//!     .workflow::<Pay>()
//!     .activity(|node| Transfer { bank: node.service("bank") })
//!     .service("bank", || Accounts::with([("alice", 100), ("bob", 0)]))
//!     .workers(2)
//!     .scenario(|client| async move {
//!         for i in 0..3 {
//!             client.start_by_name(
//!                 retrace::client::StartOptions::new(format!("pay-{i}"), "sim"),
//!                 "pay",
//!                 json!(10),
//!             ).await?;
//!         }
//!         Ok(())
//!     })
//!     // Your own check of outcomes and of the bank's state: every payment once.
//!     .check(|finished| {
//!         let paid = finished.outcomes.values()
//!             .filter(|o| matches!(o, retrace::api::RunOutcome::Completed { .. })).count();
//!         let bank = finished.service::<Accounts>("bank").ok_or("no bank")?;
//!         let bob = bank.balances()["bob"];
//!         if paid == 3 && bob == 30 { Ok(()) } else { Err(format!("{paid} paid, bob has {bob}")) }
//!     })
//!     .seeds(0..5)
//!     .run();
//! assert_eq!(seeds, 5);
//! ```
//!
//! `run()` simulates each seed in two phases. In the **safety phase** (30 s of
//! simulated time by default) faults happen: the seed's *fault plan* crashes
//! and restarts workers and the service, partitions links (one way too),
//! clogs them, freezes workers so activities overrun their timeouts, and makes
//! storage fail; meanwhile messages are lost, duplicated and reordered at the
//! seed's rates, and BUGGIFY points inside the engine take their rare paths. In
//! the **liveness phase** every fault heals and every run must close within a
//! bounded time. Then the checkers run:
//!
//! - every history is well-formed, and replays (from scratch, incrementally,
//!   and after a cache eviction) to the result it recorded, with the same
//!   state digest the live worker had;
//! - no workflow task failed with non-determinism;
//! - every effect on a simulated service was applied at most once per
//!   activity, and exactly once for activities that completed; an activity's
//!   close carries the result of the attempt its `ActivityTaskStarted` names
//!   (the workers record what each attempt sent, so services that report no
//!   effects are covered too), and no later attempt ran or acted;
//! - every timer and timeout (user timers, each activity timeout, workflow
//!   task and execution timeouts) fired no earlier than its deadline and no
//!   later than the deadline plus a tolerance derived from the fault plan;
//! - each run's stored state is the state its history implies;
//! - retries kept the policy: attempt counts, non-retryable failures, backoff;
//! - no run failed, timed out or was terminated unless the scenario declares
//!   that outcome with `.expect_outcomes(...)`;
//! - no run is stuck (a stuck run names the task it waits for); no worker
//!   exceeded its capacity, and the service never handed a worker more tasks
//!   than it offered room for;
//! - no run ever buffered more signal bytes than the service's limit;
//! - and your own `.check(...)`s.
//!
//! ## When a seed fails
//!
//! The failing fault plan is shrunk (it is a proptest value) to the faults
//! that matter, and `run()` panics with a report like:
//!
//! ```text
//! == retrace-sim: invariant violated ==
//! scenario: pay   seed: 417
//! swarm: latency=1..50ms loss=1.0% duplicate=5.0% partitions=OneWay faults_max=5 ...
//! fault plan (1 faults, shrunk from 5):
//!     t=   12.304s  partition worker-1 -> bank for 2.500s
//! first failing invariant: [effects exactly once] effect "debit:alice" of activity 0190.../1 applied 2 times
//!     run 0190... (workflow pay-2), history position: event 5
//! history of run 0190... up to event 5: ...
//! reproduce: RETRACE_SEED=417 cargo test -p my-app --test payments -- pays_once --exact
//! ```
//!
//! The last line reruns exactly that seed (and shrinks again, to the same plan).
//! `RETRACE_SEEDS=0..10000` widens a test's seed range; `RUST_LOG=debug`
//! prints the engine's logs stamped with simulated time.
//!
//! ## In your own repository
//!
//! retrace-sim runs on madsim, which replaces time, randomness and task
//! scheduling when built with `--cfg madsim`. Add to `.cargo/config.toml`:
//!
//! ```toml
//! [build]
//! rustflags = ["--cfg", "madsim"]
//! rustdocflags = ["--cfg", "madsim"]
//! ```
//!
//! Without it, this crate refuses to compile with an error pointing here: the
//! simulator can never be silently off. The engine crate itself (`retrace`)
//! does not depend on madsim, so the flag changes nothing in what you deploy.
//!
//! ## The world
//!
//! | piece                        | what it simulates                                            |
//! |------------------------------|--------------------------------------------------------------|
//! | [`Swarm`]                    | the seed's options: latency, loss, duplication, partition mode, fault count, storage fault rates, clock skew and drift, BUGGIFY |
//! | [`FaultPlan`]                | crashes, restarts, partitions, clogs, pauses, storage trouble, at times of the safety phase |
//! | network                      | per-link latency, loss, duplication, reordering, clogs, partitions (one-way too) |
//! | storage                      | writes lost on crash unless committed, I/O errors, commits that report a timeout |
//! | [`KvStore`], [`Accounts`], [`HttpApi`] | external services with an effect ledger              |
//! | clocks                       | each node's clock skewed and drifting: the engine must not trust workers' clocks |

#![cfg_attr(not(madsim), allow(unused))]

#[cfg(not(madsim))]
compile_error!(
    "retrace-sim must be built with `--cfg madsim`: add `[build] rustflags = [\"--cfg\", \"madsim\"]` \
     (and the same `rustdocflags`) to .cargo/config.toml (see the README, \"Simulation tests of your own\")"
);

// The rooms, bottom up: `nodes` and `faults` (what can go wrong) know nothing
// of the rest; `world` (network, storage, clocks, services, the cluster) plays
// faults; `checks` read what the world left; `report` describes a seed;
// `simulation` ties them together; `workloads` are scenarios built on the
// public API.
pub mod campaign;
mod checks;
mod faults;
mod nodes;
mod report;
mod seed_thread;
mod simulation;
pub mod workloads;
mod world;

pub use checks::Violation;
pub use faults::swarm::{PartitionMode, Swarm};
pub use faults::{Fault, FaultKind, FaultPlan, Target};
pub use report::{FAILURE_PAGE, Report, SeedResult, failure_page, repro_line, write_failure_dir};
pub use simulation::{Finished, SeedRunner, SimClient, Simulation};
pub use world::FaultCounts;
pub use world::cluster::{NodeCtx, Speculations};
pub use world::services::{
    Accounts, EffectLedger, HttpApi, KvStore, ServiceCallError, ServiceClient, SimService,
};
pub use world::storage::SimStorage;

/// Installs a log subscriber stamped with simulated time, if `RUST_LOG` is set.
pub fn init_logging() {
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::FormatTime;

    struct SimTime;
    impl FormatTime for SimTime {
        fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
            match madsim::time::TimeHandle::try_current() {
                Some(time) => write!(w, "sim+{:>10.3}s", time.elapsed().as_secs_f64()),
                None => write!(w, "sim (no runtime)"),
            }
        }
    }
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_timer(SimTime)
            .with_test_writer()
            .try_init();
    }
}

/// Runs the storage conformance suite against the simulator's storage, inside
/// a madsim runtime (storage faults off).
pub fn storage_conformance() {
    let runtime = madsim::runtime::Runtime::with_seed_and_config(1, madsim::Config::default());
    runtime.block_on(async {
        let make =
            || std::sync::Arc::new(SimStorage::new()) as std::sync::Arc<dyn retrace::env::Storage>;
        retrace::env::conformance::run_all(&make).await;
    });
}
