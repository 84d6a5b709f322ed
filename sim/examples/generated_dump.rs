//! Prints the program of one seed of the `generated` workload, its histories
//! (one event a line, long payloads cut) and its violations:
//! `cargo run --release -p retrace-sim --example generated_dump -- SEED [WORKFLOW_ID]`.

fn main() {
    let seed: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("usage: generated_dump SEED [WORKFLOW_ID]");
    let filter = std::env::args().nth(2);
    let result = retrace_sim::workloads::generated()
        .into_runner()
        .run_seed(seed);
    let program = retrace_sim::workloads::generated::program::Program::generate(seed);
    println!(
        "{}",
        serde_json::to_string_pretty(&program).expect("a program encodes")
    );
    for (id, h) in &result.histories {
        if filter.as_deref().is_some_and(|f| h.workflow_id() != f) {
            continue;
        }
        println!("== {id} {}", h.workflow_id());
        for e in h.events() {
            let mut s = serde_json::to_string(e).expect("an event encodes");
            if s.len() > 400 {
                s.truncate(400);
            }
            println!("{s}");
        }
    }
    for v in &result.violations {
        println!("VIOLATION {v:?}");
    }
}
