//! The campaign runner: many seeds of the bundled scenarios, with a progress
//! bar, parallel jobs, sharding across machines, and a summary.
//!
//! ```text
//! cargo run --release -p retrace-sim -- --seeds 0..100000 --jobs 2
//! cargo run --release -p retrace-sim -- --scenario small --seeds 0..10000 --shard 1/4
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use retrace_sim::{SeedRunner, workloads};

#[derive(Parser, Debug)]
#[command(
    name = "retrace-sim",
    about = "Runs seeds of Retrace's simulation scenarios"
)]
struct Args {
    /// Seed range, `start..end` (end excluded).
    #[arg(long, default_value = "0..1000")]
    seeds: String,
    /// Scenario to run (default: every bundled scenario).
    #[arg(long)]
    scenario: Option<String>,
    /// Threads running seeds at once.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// This machine's share of the seeds, `i/n` (1-based): seeds with seed % n == i - 1.
    #[arg(long)]
    shard: Option<String>,
    /// Keep going after a failure (default: stop at the first).
    #[arg(long)]
    keep_going: bool,
    /// Print the one-line summary as JSON too.
    #[arg(long)]
    json: bool,
}

#[derive(Default)]
struct Totals {
    seeds: AtomicU64,
    failures: AtomicU64,
    sim_ms: AtomicU64,
    faults: Mutex<BTreeMap<String, u64>>,
}

fn parse_range(text: &str) -> anyhow::Result<(u64, u64)> {
    let (a, b) = text
        .split_once("..")
        .context("--seeds takes start..end, e.g. 0..1000")?;
    let (a, b): (u64, u64) = (a.trim().parse()?, b.trim().parse()?);
    if a >= b {
        bail!("--seeds {text}: the range is empty");
    }
    Ok((a, b))
}

fn parse_shard(text: &str) -> anyhow::Result<(u64, u64)> {
    let (i, n) = text
        .split_once('/')
        .context("--shard takes i/n, e.g. 1/4")?;
    let (i, n): (u64, u64) = (i.trim().parse()?, n.trim().parse()?);
    if n == 0 || i == 0 || i > n {
        bail!("--shard {text}: needs 1 <= i <= n");
    }
    Ok((i - 1, n))
}

/// What every job thread shares.
struct Campaign {
    work: Vec<(usize, u64)>,
    runners: Vec<SeedRunner>,
    totals: Totals,
    stop: AtomicBool,
    next: AtomicU64,
    bar: ProgressBar,
    keep_going: bool,
}

impl Campaign {
    /// Takes seeds until none is left (or a failure stops the campaign).
    fn run_jobs(&self) {
        while !self.stop.load(Ordering::SeqCst) {
            let index = self.next.fetch_add(1, Ordering::SeqCst) as usize;
            let Some(&(runner, seed)) = self.work.get(index) else {
                return;
            };
            let outcome = self.runners[runner].check_seed(seed);
            let result = match &outcome {
                Ok(result) => result,
                Err(report) => &report.result,
            };
            self.totals.seeds.fetch_add(1, Ordering::Relaxed);
            self.totals
                .sim_ms
                .fetch_add(result.sim_ms, Ordering::Relaxed);
            let mut faults = self.totals.faults.lock().expect("totals lock");
            for (kind, count) in &result.faults {
                *faults.entry(kind.clone()).or_default() += count;
            }
            drop(faults);
            if let Err(report) = outcome {
                self.totals.failures.fetch_add(1, Ordering::Relaxed);
                self.bar.suspend(|| eprintln!("{report}"));
                if !self.keep_going {
                    self.stop.store(true, Ordering::SeqCst);
                }
            }
            self.bar.inc(1);
        }
    }
}

fn runners(scenario: Option<&str>) -> anyhow::Result<Vec<SeedRunner>> {
    Ok(match scenario {
        Some(name) => vec![
            workloads::by_name(name)
                .with_context(|| format!("no scenario {name:?} (try small, transfers, messages)"))?
                .into_runner(),
        ],
        None => workloads::all()
            .into_iter()
            .map(|s| s.into_runner())
            .collect(),
    })
}

#[allow(clippy::disallowed_methods)] // a campaign measures wall time and spawns its job threads
fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    retrace_sim::init_logging();
    let (start, end) = parse_range(&args.seeds)?;
    let (shard, shards) = match &args.shard {
        Some(text) => parse_shard(text)?,
        None => (0, 1),
    };
    let runners = runners(args.scenario.as_deref())?;
    let work: Vec<(usize, u64)> = (start..end)
        .filter(|seed| seed % shards == shard)
        .flat_map(|seed| (0..runners.len()).map(move |r| (r, seed)))
        .collect();
    let bar = ProgressBar::new(work.len() as u64);
    let style =
        ProgressStyle::with_template("{bar:40} {pos}/{len} seeds  {per_sec}  eta {eta}  {msg}");
    bar.set_style(style.expect("template is valid"));
    let campaign = Arc::new(Campaign {
        work,
        runners,
        totals: Totals::default(),
        stop: AtomicBool::new(false),
        next: AtomicU64::new(0),
        bar,
        keep_going: args.keep_going,
    });
    let started = Instant::now();
    let threads: Vec<_> = (0..args.jobs.max(1))
        .map(|_| {
            let campaign = campaign.clone();
            std::thread::spawn(move || campaign.run_jobs())
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a job thread panicked"))?;
    }
    campaign.bar.finish_and_clear();
    summarize(&campaign.totals, started.elapsed().as_secs_f64(), args.json);
    if campaign.totals.failures.load(Ordering::Relaxed) > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn summarize(totals: &Totals, wall_s: f64, json: bool) {
    let seeds = totals.seeds.load(Ordering::Relaxed);
    let failures = totals.failures.load(Ordering::Relaxed);
    let sim_s = totals.sim_ms.load(Ordering::Relaxed) as f64 / 1_000.0;
    let faults = totals.faults.lock().expect("totals lock").clone();
    let seeds_per_s = seeds as f64 / wall_s.max(1e-9);
    let sim_to_wall = sim_s / wall_s.max(1e-9);
    println!(
        "seeds: {seeds}   failures: {failures}   simulated time: {sim_s:.0} s   wall: {wall_s:.1} s   seeds/s: {seeds_per_s:.0}   sim/wall: {sim_to_wall:.0}:1"
    );
    println!("faults injected:");
    for (kind, count) in &faults {
        println!("  {kind:<40} {count}");
    }
    if json {
        let summary = serde_json::json!({"seeds": seeds, "failures": failures, "sim_s": sim_s, "wall_s": wall_s,
            "seeds_per_s": seeds_per_s, "sim_to_wall": sim_to_wall, "faults": faults});
        println!("{summary}");
    }
}
