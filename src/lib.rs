//! # Retrace
//!
//! A durable workflow engine for Rust, with deterministic simulation testing built in.
//!
//! (The full tutorial is written as the engine lands; see README.md.)
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
pub mod types;
pub mod worker;
pub mod workflow;
