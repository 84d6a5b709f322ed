//! The simulator campaign alone, as a test: the command cargo-mutants runs to
//! ask "does the simulator kill this mutant?" (see TESTING.md).
//!
//! Every bundled workload (`retrace_sim::workloads::all()`) runs over a seed
//! range, seed by seed (each seed runs every workload before the next seed,
//! so a mutant any workload notices is killed early). The first seed with a
//! violation fails the test with its report and reproduction line. The plan is
//! not shrunk: a mutant needs a verdict, not the smallest plan.
//!
//! | variable               | meaning                                  | default                     |
//! |------------------------|------------------------------------------|-----------------------------|
//! | `RETRACE_MUTANTS_SEEDS` | seed range `start..end` (end excluded) | `0..MUTANTS_SEEDS_DEFAULT` |
//!
//! The default keeps one unmutated run under a minute in the dev profile on
//! one shared core, so cargo-mutants can try a mutant in about a minute.
//!
//! Each seed's step budget is `MUTANTS_STEPS_MAX`, not the campaign's 200,000:
//! a mutant that makes a run go round without end (a timer that fires again
//! and again at one instant, a workflow task scheduled after every completion)
//! then gets its `budget` verdict in seconds of the dev profile, inside the
//! mutant timeout, instead of timing out.

use std::ops::Range;

use retrace_sim::{Report, workloads};

/// Seeds per workload when `RETRACE_MUTANTS_SEEDS` is not set.
const MUTANTS_SEEDS_DEFAULT: u64 = 100;
/// Steps per seed: above the most any unmutated seed of `0..2000` takes
/// (33,177, `transfers`), far below the campaign's default.
const MUTANTS_STEPS_MAX: u64 = 50_000;
/// Largest seed range the variable may ask for (keeps a run bounded).
const MUTANTS_SEEDS_MAX: u64 = 1_000_000;

fn seed_range() -> Range<u64> {
    let Ok(text) = std::env::var("RETRACE_MUTANTS_SEEDS") else {
        return 0..MUTANTS_SEEDS_DEFAULT;
    };
    let (start, end) = text
        .trim()
        .split_once("..")
        .unwrap_or_else(|| panic!("RETRACE_MUTANTS_SEEDS={text}: expected start..end"));
    let start: u64 = start.trim().parse().expect("RETRACE_MUTANTS_SEEDS start");
    let end: u64 = end.trim().parse().expect("RETRACE_MUTANTS_SEEDS end");
    assert!(start < end, "RETRACE_MUTANTS_SEEDS={text}: empty range");
    assert!(
        end - start <= MUTANTS_SEEDS_MAX,
        "RETRACE_MUTANTS_SEEDS={text}: more than {MUTANTS_SEEDS_MAX} seeds"
    );
    start..end
}

#[test]
fn every_bundled_workload_keeps_every_invariant_over_the_mutants_seed_range() {
    let seeds = seed_range();
    let runners: Vec<_> = workloads::all()
        .into_iter()
        .map(|simulation| {
            // A cluster runs up to five services, each with pollers from
            // every worker and a lease loop: three times the steps.
            let steps_max = if simulation.is_cluster() {
                3 * MUTANTS_STEPS_MAX
            } else {
                MUTANTS_STEPS_MAX
            };
            simulation.steps_max(steps_max).into_runner()
        })
        .collect();
    assert!(!runners.is_empty(), "no bundled workload");
    let mut runs = 0_u64;
    for seed in seeds.clone() {
        for runner in &runners {
            let result = runner.run_seed(seed);
            runs += 1;
            if !result.passed() {
                let report = Report {
                    scenario: runner.name().to_string(),
                    original_faults: result.plan.faults.len(),
                    original_swarm: result.swarm.clone(),
                    background: Vec::new(),
                    shrink_runs: 1,
                    repro: retrace_sim::repro_line(runner.name(), seed),
                    result,
                };
                panic!("after {runs} runs: {report}");
            }
        }
    }
    let expected = (seeds.end - seeds.start) * runners.len() as u64;
    assert_eq!(runs, expected, "every workload ran every seed");
}
