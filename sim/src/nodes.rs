//! The names of a simulated cluster's nodes, shared by the world that runs
//! them and the fault plans that target them.

/// Names of the nodes of a cluster.
pub fn worker_name(index: usize) -> String {
    format!("worker-{index}")
}

/// The service node's name (the first service's, in a cluster).
pub const SERVICE: &str = "service";

/// Service node `index` of a cluster: `service`, `service-1`, `service-2`…
pub fn service_name(index: usize) -> String {
    match index {
        0 => SERVICE.to_string(),
        _ => format!("service-{index}"),
    }
}

/// True for a service node's name.
pub fn is_service(name: &str) -> bool {
    name == SERVICE || name.starts_with("service-")
}
/// The client node's name.
pub const CLIENT: &str = "client";

/// Run and workflow ids of rows the world tears on purpose (a `TornRow`
/// fault): the service must quarantine them; the workload's checks skip them.
pub const TORN_RUN_PREFIX: &str = "torn-";

/// True for a run the world tore on purpose.
pub fn is_torn_run(run_id: &str) -> bool {
    run_id.starts_with(TORN_RUN_PREFIX)
}
