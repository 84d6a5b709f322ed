//! The names of a simulated cluster's nodes, shared by the world that runs
//! them and the fault plans that target them.

/// Names of the nodes of a cluster.
pub fn worker_name(index: usize) -> String {
    format!("worker-{index}")
}

/// The service node's name.
pub const SERVICE: &str = "service";
/// The client node's name.
pub const CLIENT: &str = "client";
