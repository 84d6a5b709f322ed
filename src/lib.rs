//! # Retrace
//!
//! A durable workflow engine for Rust, with deterministic simulation testing
//! built in (see the `retrace-sim` crate).
//!
//! A **workflow** is ordinary async Rust that orchestrates **activities**
//! (functions with side effects: charge a card, send a mail). The engine
//! records every decision the workflow makes in an **event history**. If a
//! worker dies, another one replays the history through the same code and
//! carries on from exactly where the run was. Activities are retried under a
//! retry policy and bounded by timeouts; workflows sleep on durable timers,
//! wait for signals, answer queries, and can be canceled or terminated.
//!
//! ## A workflow and its activity
//!
//! ```
//! use std::time::Duration;
//! use retrace::activity::{Activity, ActivityContext, ActivityOptions, ActivityResult, RetryPolicy};
//! use retrace::client::StartOptions;
//! use retrace::engine::EmbeddedEngine;
//! use retrace::workflow::{Workflow, WorkflowContext, WorkflowResult};
//!
//! /// An activity: any async code; here, a greeting.
//! struct Compose;
//! impl Activity for Compose {
//!     const NAME: &'static str = "compose";
//!     type Input = String;
//!     type Output = String;
//!     fn options() -> ActivityOptions {
//!         ActivityOptions::default()
//!             .start_to_close(Duration::from_secs(10))
//!             .retry(RetryPolicy::default().maximum_attempts(5))
//!     }
//!     async fn run(&self, _ctx: ActivityContext, name: String) -> ActivityResult<String> {
//!         Ok(format!("hello {name}"))
//!     }
//! }
//!
//! /// A workflow: deterministic code that only touches the world through `ctx`.
//! struct Greet;
//! impl Workflow for Greet {
//!     const NAME: &'static str = "greet";
//!     type Input = String;
//!     type Output = String;
//!     async fn run(ctx: WorkflowContext, name: String) -> WorkflowResult<String> {
//!         let greeting = ctx.activity::<Compose>(name).await?;     // retried, timed out
//!         ctx.sleep(Duration::from_millis(10)).await?;            // a durable timer
//!         let who: String = ctx.signal("approve").recv().await?;  // waits for a signal
//!         Ok(format!("{greeting}, approved by {who}"))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Service, worker and client in one process (`retrace server` runs the
//! // service on SQLite with an HTTP API instead).
//! let engine = EmbeddedEngine::in_memory().await.expect("the engine starts");
//! let worker = engine.worker("greetings").workflow::<Greet>().activity(Compose).start();
//! let client = engine.client();
//! let run = client.start::<Greet>(StartOptions::new("greet-ana", "greetings"), "ana".into()).await.unwrap();
//! run.signal("approve", "bob").await.unwrap();
//! assert_eq!(run.result().await.unwrap(), "hello ana, approved by bob");
//!
//! // The history is Temporal's: WorkflowExecutionStarted, WorkflowTaskScheduled, ...
//! let history = run.history().await.unwrap();
//! assert_eq!(history.events()[0].kind.name(), "WorkflowExecutionStarted");
//! worker.shutdown().await;
//! # }
//! ```
//!
//! ## Determinism
//!
//! Workflow code must make the same decisions when replayed. Use `ctx.now()`,
//! `ctx.random()`, `ctx.uuid()` and `ctx.side_effect(..)` instead of the wall
//! clock or OS randomness; run things in parallel with the deterministic
//! combinators re-exported from [`workflow`] (`join`, `select`, ...). Changing
//! code under running workflows is done behind `ctx.patched("id")`. The
//! [`workflow::Replayer`] replays recorded histories (`retrace workflow history
//! --json` writes them) against your current code and names the first event
//! where they part ways.
//!
//! ## Layout
//!
//! [`history`] (events, validation, JSON, diff), [`workflow`] (SDK, executor,
//! replay), [`activity`] (activities, retry policy), [`engine`] (the service and
//! its pure state machines), [`worker`], [`client`], [`env`] (the abstract
//! layer: clock, network, storage, entropy, spawner, fault points), [`api`]
//! (the protocol), [`http`] (HTTP/JSON server and client).
//!
//! ## Glossary
//!
//! - **Run**: one execution of a workflow, identified by a run id (a workflow id
//!   names the current run of a business process).
//! - **Event**: one entry of a run's history (Temporal's event names).
//! - **Command**: what workflow code asks for (schedule an activity, start a
//!   timer, complete); each accepted command becomes an event.
//! - **Task**: a unit of work on a task queue: a workflow task (run the code up
//!   to its next wait) or an activity task (run one attempt of an activity).
//! - **Attempt**: one try of an activity; retries make more attempts, never more events.

pub mod activity;
pub mod api;
pub mod client;
pub mod engine;
pub mod env;
pub mod history;
pub mod http;
pub mod types;
pub mod ui;
pub mod visibility;
pub mod worker;
pub mod workflow;
