//! The service: runs' state machines, task queues with long-poll matching,
//! durable timers, signals, queries, cancellation and termination, and
//! workflows that start, signal and cancel other workflows.

mod children;
mod cluster;
pub mod eager;
pub mod edge;
mod embedded;
mod external;
mod handlers;
pub mod machine;
mod matching;
pub mod metrics;
pub mod pollers;
mod service;
pub mod shards;
mod speculation;
mod timer_queue;
mod updates;

pub use embedded::EmbeddedEngine;
pub use service::{Service, ServiceConfig};
pub use shards::ClusterConfig;
