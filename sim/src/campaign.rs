//! Campaigns: many seeds of several scenarios, on several job threads, with a
//! summary that is the same whatever the number of jobs.
//!
//! Seeds run in any order on any thread, but their results are folded into the
//! summary in work order (scenario by scenario within each seed), and a failure
//! that stops the campaign stops it at the same place in that order. So seeds,
//! failures, simulated time, every fault count and the digest of every seed's
//! trace hash depend only on the seeds, never on `jobs` or timing.
//!
//! ```no_run
//! use retrace_sim::campaign::{Campaign, CampaignOptions};
//! use retrace_sim::workloads;
//!
//! let runners = workloads::all().into_iter().map(|s| s.into_runner()).collect();
//! let options = CampaignOptions { seeds: 0..100, jobs: 2, ..CampaignOptions::default() };
//! let summary = Campaign::new(runners, options).run(|_| {});
//! assert_eq!(summary.failures, 0, "{summary}");
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use retrace::types::fnv1a64;

use crate::report::Report;
use crate::simulation::SeedRunner;
use crate::world::lock;

/// What a campaign runs.
#[derive(Clone, Debug)]
pub struct CampaignOptions {
    /// Seeds, `start..end`.
    pub seeds: Range<u64>,
    /// This machine's share: seeds with `seed % shards == shard`.
    pub shard: u64,
    pub shards: u64,
    /// Threads running seeds at once.
    pub jobs: usize,
    /// Keep going after a failure (default: stop at the first, in work order).
    pub keep_going: bool,
    /// Where each failing seed's directory is written, if anywhere.
    pub failures_dir: Option<PathBuf>,
}

impl Default for CampaignOptions {
    fn default() -> CampaignOptions {
        CampaignOptions {
            seeds: 0..1_000,
            shard: 0,
            shards: 1,
            jobs: 1,
            keep_going: false,
            failures_dir: None,
        }
    }
}

/// What one seed of one scenario left for the summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedLine {
    pub scenario: String,
    pub seed: u64,
    pub trace_hash: u64,
    pub sim_ms: u64,
    pub steps: u64,
    pub faults: BTreeMap<String, u64>,
    pub passed: bool,
}

/// The campaign's deterministic figures (and its wall time, which is not).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CampaignSummary {
    pub seeds: u64,
    pub failures: u64,
    pub sim_ms: u64,
    pub steps: u64,
    /// The most steps one seed took.
    pub steps_seed_max: u64,
    pub faults: BTreeMap<String, u64>,
    /// A hash over every seed's scenario, seed, trace hash, simulated time and verdict, in work order.
    pub digest: u64,
    /// `(scenario, seed)` of each failure, in work order.
    pub failed: Vec<(String, u64)>,
    /// Wall-clock seconds (not deterministic: left out of equality checks by [`CampaignSummary::figures`]).
    pub wall_s: f64,
}

impl CampaignSummary {
    fn fold(&mut self, line: &SeedLine) {
        self.seeds += 1;
        self.sim_ms += line.sim_ms;
        self.steps += line.steps;
        self.steps_seed_max = self.steps_seed_max.max(line.steps);
        for (kind, count) in &line.faults {
            *self.faults.entry(kind.clone()).or_default() += count;
        }
        if !line.passed {
            self.failures += 1;
            self.failed.push((line.scenario.clone(), line.seed));
        }
        let mut bytes = self.digest.to_le_bytes().to_vec();
        bytes.extend_from_slice(line.scenario.as_bytes());
        for value in [
            line.seed,
            line.trace_hash,
            line.sim_ms,
            u64::from(line.passed),
        ] {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        self.digest = fnv1a64(&bytes);
    }

    /// The summary without its wall time: what must not depend on `jobs`.
    pub fn figures(&self) -> CampaignSummary {
        CampaignSummary {
            wall_s: 0.0,
            ..self.clone()
        }
    }

    /// The summary as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let wall_s = self.wall_s.max(1e-9);
        serde_json::json!({"seeds": self.seeds, "failures": self.failures, "sim_s": self.sim_ms as f64 / 1_000.0,
            "steps": self.steps, "steps_seed_max": self.steps_seed_max, "digest": format!("{:016x}", self.digest),
            "wall_s": self.wall_s, "seeds_per_s": self.seeds as f64 / wall_s,
            "sim_to_wall": self.sim_ms as f64 / 1_000.0 / wall_s, "faults": self.faults,
            "failed": self.failed.iter().map(|(s, seed)| format!("{s} {seed}")).collect::<Vec<_>>()})
    }
}

impl fmt::Display for CampaignSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wall_s = self.wall_s.max(1e-9);
        let sim_s = self.sim_ms as f64 / 1_000.0;
        writeln!(
            f,
            "seeds: {}   failures: {}   simulated time: {sim_s:.0} s   wall: {:.1} s   seeds/s: {:.0}   sim/wall: {:.0}:1",
            self.seeds,
            self.failures,
            self.wall_s,
            self.seeds as f64 / wall_s,
            sim_s / wall_s
        )?;
        writeln!(
            f,
            "steps: {} (most in one seed: {})   digest: {:016x}",
            self.steps, self.steps_seed_max, self.digest
        )?;
        for (scenario, seed) in &self.failed {
            writeln!(f, "failed: {scenario} seed {seed}")?;
        }
        writeln!(f, "faults injected:")?;
        for (kind, count) in &self.faults {
            writeln!(f, "  {kind:<44} {count}")?;
        }
        Ok(())
    }
}

/// What the caller hears as seeds finish (for a progress bar).
pub enum Progress<'a> {
    /// A seed finished.
    Done(&'a SeedLine),
    /// A seed failed: its report (after shrinking), and its directory if written.
    Failed(&'a Report, Option<&'a PathBuf>),
}

/// Results that finished out of work order wait here until the ones before
/// them are folded.
#[derive(Default)]
struct Folding {
    next: usize,
    waiting: BTreeMap<usize, SeedLine>,
    summary: CampaignSummary,
}

/// A campaign over scenarios and seeds.
pub struct Campaign {
    runners: Vec<SeedRunner>,
    options: CampaignOptions,
    work: Vec<(usize, u64)>,
    next: AtomicUsize,
    /// Work index of the first failure (in work order); `usize::MAX` if none.
    stop_at: AtomicUsize,
    folding: Mutex<Folding>,
    running: AtomicU64,
    stopped: AtomicBool,
}

impl Campaign {
    /// A campaign of `runners` over `options.seeds` (this shard's share).
    pub fn new(runners: Vec<SeedRunner>, options: CampaignOptions) -> Campaign {
        assert!(!runners.is_empty(), "a campaign runs at least one scenario");
        assert!(options.shards >= 1 && options.shard < options.shards);
        let (shard, shards) = (options.shard, options.shards);
        let work: Vec<(usize, u64)> = options
            .seeds
            .clone()
            .filter(|seed| seed % shards == shard)
            .flat_map(|seed| (0..runners.len()).map(move |r| (r, seed)))
            .collect();
        Campaign {
            runners,
            options,
            work,
            next: AtomicUsize::new(0),
            stop_at: AtomicUsize::new(usize::MAX),
            folding: Mutex::new(Folding::default()),
            running: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        }
    }

    /// Seeds of all scenarios this campaign would run.
    pub fn len(&self) -> usize {
        self.work.len()
    }

    /// True if there is nothing to run.
    pub fn is_empty(&self) -> bool {
        self.work.is_empty()
    }

    /// Runs every seed on `options.jobs` threads; `progress` hears each one.
    #[allow(clippy::disallowed_methods)] // a campaign measures wall time
    pub fn run(self, progress: impl Fn(Progress<'_>) + Sync) -> CampaignSummary {
        let started = std::time::Instant::now();
        let campaign = Arc::new(self);
        std::thread::scope(|scope| {
            for _ in 0..campaign.options.jobs.max(1) {
                let (campaign, progress) = (campaign.clone(), &progress);
                crate::seed_thread::spawn_scoped(scope, move || campaign.run_jobs(progress))
                    .expect("a campaign starts its job threads");
            }
        });
        let mut summary = std::mem::take(&mut lock(&campaign.folding).summary);
        assert!(
            campaign.stopped.load(Ordering::SeqCst)
                || summary.seeds as usize == campaign.work.len()
        );
        summary.wall_s = started.elapsed().as_secs_f64();
        summary
    }

    fn run_jobs(&self, progress: &(impl Fn(Progress<'_>) + Sync)) {
        loop {
            let index = self.next.fetch_add(1, Ordering::SeqCst);
            if index >= self.work.len() || index > self.stop_at.load(Ordering::SeqCst) {
                return;
            }
            self.running.fetch_add(1, Ordering::SeqCst);
            let (runner, seed) = self.work[index];
            let line = self.run_one(index, &self.runners[runner], seed, progress);
            self.running.fetch_sub(1, Ordering::SeqCst);
            progress(Progress::Done(&line));
            self.fold(index, line);
        }
    }

    fn run_one(
        &self,
        index: usize,
        runner: &SeedRunner,
        seed: u64,
        progress: &(impl Fn(Progress<'_>) + Sync),
    ) -> SeedLine {
        let outcome = runner.check_seed(seed);
        let result = match &outcome {
            Ok(result) => result,
            Err(report) => &report.result,
        };
        let line = SeedLine {
            scenario: runner.name().to_string(),
            seed,
            trace_hash: result.trace_hash,
            sim_ms: result.sim_ms,
            steps: result.steps,
            faults: result.faults.clone(),
            passed: outcome.is_ok(),
        };
        if let Err(report) = &outcome {
            if !self.options.keep_going {
                self.stop_at.fetch_min(index, Ordering::SeqCst);
                self.stopped.store(true, Ordering::SeqCst);
            }
            let dir = self.options.failures_dir.as_ref().and_then(|dir| {
                crate::report::write_failure_dir(dir, report)
                    .inspect_err(|e| tracing::warn!(%e, "could not write the failure directory"))
                    .ok()
            });
            progress(Progress::Failed(report, dir.as_ref()));
        }
        line
    }

    /// Folds `line` (work item `index`) and every waiting line after it, in order.
    fn fold(&self, index: usize, line: SeedLine) {
        let mut folding = lock(&self.folding);
        folding.waiting.insert(index, line);
        let stop_at = self.stop_at.load(Ordering::SeqCst);
        loop {
            let next = folding.next;
            if next > stop_at {
                folding.waiting.clear();
                return;
            }
            let Some(line) = folding.waiting.remove(&next) else {
                return;
            };
            folding.summary.fold(&line);
            folding.next += 1;
        }
    }
}
