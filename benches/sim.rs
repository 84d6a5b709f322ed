//! Simulator speed: seeds per second and simulated-to-wall time ratio of the
//! bundled scenarios, on one core (seeds run one after another on this thread).
//!
//! `cargo bench --bench sim` prints a JSON line last with `seeds_per_s` and
//! `sim_to_wall` per scenario. `RETRACE_BENCH_SMOKE=1` runs a short version
//! (used by `cargo test`).
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time

use std::time::{Duration, Instant};

use retrace_sim::workloads;

/// The same allocator as the campaign binary (`retrace-sim`), so the figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use serde_json::json;

fn measure(scenario: retrace_sim::Simulation, budget: Duration) -> serde_json::Value {
    let name = scenario.name().to_string();
    let runner = scenario.into_runner();
    let started = Instant::now();
    let (mut seeds, mut sim_ms, mut failures) = (0u64, 0u64, 0u64);
    while seeds == 0 || started.elapsed() < budget {
        let result = runner.run_seed(seeds);
        sim_ms += result.sim_ms;
        failures += u64::from(!result.passed());
        seeds += 1;
    }
    let wall_s = started.elapsed().as_secs_f64();
    let seeds_per_s = seeds as f64 / wall_s;
    let sim_to_wall = sim_ms as f64 / 1_000.0 / wall_s;
    println!(
        "{name:<10} {seeds:>6} seeds in {wall_s:.2} s: {seeds_per_s:.0} seeds/s, simulated/wall {sim_to_wall:.0}:1, failures {failures}"
    );
    json!({"scenario": name, "seeds": seeds, "seeds_per_s": seeds_per_s, "sim_to_wall": sim_to_wall, "failures": failures})
}

/// Runs the benchmark; `smoke` makes it short. Returns the result line.
pub fn run(smoke: bool) -> serde_json::Value {
    let budget = if smoke {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(5)
    };
    let results: Vec<serde_json::Value> = workloads::all()
        .into_iter()
        .map(|s| measure(s, budget))
        .collect();
    let small = &results[0];
    json!({"bench": "sim", "smoke": smoke, "seeds_per_s": small["seeds_per_s"], "sim_to_wall": small["sim_to_wall"], "scenarios": results})
}

#[allow(dead_code)] // the smoke test includes this file and calls `run`
fn main() {
    let smoke = std::env::var_os("RETRACE_BENCH_SMOKE").is_some();
    println!("{}", run(smoke));
}
