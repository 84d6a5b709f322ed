//! Replay speed: a history of 1,000 sequential activities (about 6,000 events),
//! and 200 histories of 10 activities, through the `Replayer`.
//!
//! `cargo bench --bench replay` prints a JSON line last: replays_per_s, events_per_s.
//! `RETRACE_BENCH_SMOKE=1` runs a second-long version (used by `cargo test`).
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time

use std::time::{Duration, Instant};

use retrace::history::{History, HistoryBuilder};
use retrace::workflow::{Replayer, RunResult, WorkflowContext, WorkflowRegistry};
use serde_json::json;

fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn("chain", |ctx: WorkflowContext, steps: u64| async move {
        let mut value = 0u64;
        for _ in 0..steps {
            let next = ctx
                .activity_by_name("step", json!(value))
                .start_to_close(Duration::from_secs(10))
                .await?;
            value = next.as_u64().unwrap_or_default();
        }
        Ok(value)
    });
    registry
}

/// The history a run of `chain(steps)` records.
fn chain_history(steps: u64, run: u64) -> History {
    let mut b = HistoryBuilder::for_run(
        &format!("chain-{run}"),
        &format!("run-{run}"),
        "chain",
        json!(steps),
    );
    for step in 0..steps {
        b.add_full_workflow_task();
        let scheduled = b.add_activity_scheduled(&(step + 1).to_string(), "step", json!(step));
        b.advance_ms(3);
        b.add_activity_completed(scheduled, json!(step + 1));
    }
    b.add_full_workflow_task();
    b.add_workflow_execution_completed(json!(steps));
    b.build()
}

fn measure(replayer: &Replayer, histories: &[History], budget: Duration) -> (f64, f64) {
    let events_each: usize = histories.iter().map(History::len).sum();
    let started = Instant::now();
    let mut rounds = 0u64;
    while rounds == 0 || started.elapsed() < budget {
        for history in histories {
            let outcome = replayer.replay(history).expect("the chain replays");
            assert!(matches!(outcome.result, Some(RunResult::Completed(_))));
        }
        rounds += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let replays = rounds as f64 * histories.len() as f64;
    (
        replays / seconds,
        rounds as f64 * events_each as f64 / seconds,
    )
}

/// Runs the benchmark; `smoke` makes it short. Returns the result line.
pub fn run(smoke: bool) -> serde_json::Value {
    let budget = if smoke {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(5)
    };
    let replayer = Replayer::new(registry());
    let long = vec![chain_history(1_000, 0)];
    let short: Vec<History> = (0..200).map(|run| chain_history(10, run)).collect();
    let (long_replays_per_s, long_events_per_s) = measure(&replayer, &long, budget);
    let (short_replays_per_s, short_events_per_s) = measure(&replayer, &short, budget);
    println!(
        "history of 1,000 activities ({} events): {long_replays_per_s:.1} replays/s, {long_events_per_s:.0} events/s",
        long[0].len()
    );
    println!(
        "200 histories of 10 activities: {short_replays_per_s:.0} replays/s, {short_events_per_s:.0} events/s"
    );
    json!({
        "bench": "replay",
        "smoke": smoke,
        "events_per_history": long[0].len(),
        "replays_per_s": long_replays_per_s,
        "events_per_s": long_events_per_s,
        "short_replays_per_s": short_replays_per_s,
        "short_events_per_s": short_events_per_s,
    })
}

#[allow(dead_code)] // the smoke test includes this file and calls `run`
fn main() {
    let smoke = std::env::var_os("RETRACE_BENCH_SMOKE").is_some();
    println!("{}", run(smoke));
}
