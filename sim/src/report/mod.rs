//! The failure report: seed, swarm options, shrunk fault plan, the first failing
//! invariant, the history around where it shows, the faults injected while the
//! failing run lived, and one line to reproduce it; and the failure directory
//! that other tools can read.

mod failure_dir;
mod failure_page;

pub use failure_dir::{FAILURE_PAGE, write_failure_dir};
pub use failure_page::failure_page;

use std::fmt;

use std::collections::BTreeMap;

use retrace::history::History;

use crate::checks::Violation;
use crate::faults::FaultPlan;
use crate::faults::swarm::Swarm;
use crate::faults::trace::FaultEvent;
use crate::world::FaultCounts;
use crate::world::cluster::Speculations;

/// Violations listed in a report besides the first.
pub const REPORT_VIOLATIONS_MAX: usize = 5;
/// Events shown before the history position of the failure.
pub const REPORT_CONTEXT_EVENTS: usize = 4;

/// One seed's run.
#[derive(Clone, Debug)]
pub struct SeedResult {
    pub seed: u64,
    pub swarm: Swarm,
    pub plan: FaultPlan,
    pub violations: Vec<Violation>,
    pub trace_hash: u64,
    pub faults: FaultCounts,
    /// Simulated milliseconds the run lasted.
    pub sim_ms: u64,
    /// Every run's history, by run id.
    pub histories: BTreeMap<String, History>,
    pub buggify_sites: BTreeMap<&'static str, bool>,
    /// Speculative workflow tasks taken and refused by the service.
    pub speculations: Speculations,
    /// Every fault injected (the first `FAULT_TRACE_EVENTS_MAX`), in time order.
    pub fault_events: Vec<FaultEvent>,
    /// Faults injected beyond those kept.
    pub fault_events_dropped: u64,
    /// Each run's life in simulated milliseconds (first to last event), by run id.
    pub run_windows_ms: BTreeMap<String, (u64, u64)>,
    /// Steps the seed took (messages and storage writes), against its budget.
    pub steps: u64,
}

impl SeedResult {
    /// True if every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Why a seed failed, after shrinking.
#[derive(Debug)]
pub struct Report {
    pub scenario: String,
    /// Faults in the plan the seed generated, before shrinking.
    pub original_faults: usize,
    /// The swarm the seed drew, before background faults were turned off.
    pub original_swarm: Swarm,
    /// Each background fault shrinking tried to turn off, and whether the
    /// failure needed it (turned off and the seed passed).
    pub background: Vec<(&'static str, bool)>,
    /// Seeds run while shrinking (the first included).
    pub shrink_runs: usize,
    /// The smallest failing run found.
    pub result: SeedResult,
    pub repro: String,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let result = &self.result;
        writeln!(f, "\n== retrace-sim: invariant violated ==")?;
        writeln!(f, "scenario: {}   seed: {}", self.scenario, result.seed)?;
        writeln!(f, "swarm: {}", result.swarm)?;
        let sites: Vec<&str> = result
            .buggify_sites
            .iter()
            .filter(|(_, on)| **on)
            .map(|(site, _)| *site)
            .collect();
        if !sites.is_empty() {
            writeln!(f, "buggify sites on: {}", sites.join(", "))?;
        }
        let faults = result.plan.faults.len();
        writeln!(
            f,
            "fault plan ({faults} faults, shrunk from {}):",
            self.original_faults
        )?;
        write!(f, "{}", result.plan)?;
        self.write_background(f)?;
        let first = &result.violations[0];
        writeln!(f, "first failing invariant: {first}")?;
        self.write_faults_near(f)?;
        self.write_context(f)?;
        if result.violations.len() > 1 {
            writeln!(f, "also ({} more):", result.violations.len() - 1)?;
            for violation in result.violations.iter().skip(1).take(REPORT_VIOLATIONS_MAX) {
                writeln!(f, "  {violation}")?;
            }
        }
        writeln!(f, "reproduce: {}", self.repro)
    }
}

/// Faults a report lists around the failing run, at most.
pub const REPORT_FAULTS_MAX: usize = 24;

impl Report {
    fn write_background(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.result.swarm != self.original_swarm {
            writeln!(f, "swarm as drawn: {}", self.original_swarm)?;
        }
        let off: Vec<&str> = self
            .background
            .iter()
            .filter(|(_, n)| !n)
            .map(|(k, _)| *k)
            .collect();
        let needed: Vec<&str> = self
            .background
            .iter()
            .filter(|(_, n)| *n)
            .map(|(k, _)| *k)
            .collect();
        writeln!(
            f,
            "background faults: turned off (not needed): {}; needed: {}   ({} runs shrinking)",
            list_or_none(&off),
            list_or_none(&needed),
            self.shrink_runs
        )?;
        writeln!(
            f,
            "  (not shrinkable one by one: BUGGIFY sites go together; message latency and reordering stay)"
        )
    }

    /// The faults injected while the failing run lived (every fault if the
    /// violation names no run), from the fault trace.
    fn write_faults_near(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let result = &self.result;
        let window = result.violations[0]
            .run_id
            .as_ref()
            .and_then(|run_id| Some((run_id, *result.run_windows_ms.get(run_id)?)));
        let near: Vec<&FaultEvent> = result
            .fault_events
            .iter()
            .filter(|e| match window {
                Some((run_id, (first_ms, last_ms))) => e
                    .run_id
                    .as_ref()
                    .map_or(e.at_ms >= first_ms && e.at_ms <= last_ms, |r| r == run_id),
                None => true,
            })
            .collect();
        let total: u64 = result.faults.values().sum();
        match window {
            Some((run_id, (first_ms, last_ms))) => writeln!(
                f,
                "faults while run {run_id} lived (t={first_ms}..{last_ms} ms): {} of {total} injected",
                near.len()
            )?,
            None => writeln!(f, "faults injected: {total}")?,
        }
        for event in near.iter().take(REPORT_FAULTS_MAX) {
            writeln!(f, "    {event}")?;
        }
        if near.len() > REPORT_FAULTS_MAX {
            writeln!(
                f,
                "    ... {} more (the failure directory has all)",
                near.len() - REPORT_FAULTS_MAX
            )?;
        }
        Ok(())
    }

    fn write_context(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = &self.result.violations[0];
        let (Some(run_id), Some(event_id)) = (&first.run_id, first.event_id) else {
            return Ok(());
        };
        let Some(history) = self.result.histories.get(run_id) else {
            return Ok(());
        };
        writeln!(f, "history of run {run_id} up to event {event_id}:")?;
        let end = (event_id as usize).min(history.len());
        for event in &history.events()[end.saturating_sub(REPORT_CONTEXT_EVENTS + 1)..end] {
            let attributes = serde_json::to_value(event)
                .ok()
                .and_then(|v| v.get("attributes").cloned());
            let marker = if event.event_id == event_id { ">" } else { " " };
            writeln!(
                f,
                "  {marker}{:>5} {} {}",
                event.event_id,
                event.kind.name(),
                attributes.unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// One command that reproduces `seed` of scenario `scenario`, from what cargo
/// tells the running test binary about itself.
pub fn repro_line(scenario: &str, seed: u64) -> String {
    let package = std::env::var("CARGO_PKG_NAME").unwrap_or_else(|_| "<package>".to_string());
    let exe = std::env::current_exe().ok();
    let binary = exe
        .as_ref()
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let target = binary
        .rsplit_once('-')
        .map_or(binary.clone(), |(name, _hash)| name.to_string());
    let thread = std::thread::current();
    let test = thread
        .name()
        .filter(|name| *name != "main")
        .map(str::to_string);
    match test {
        Some(test) => {
            let selector = if target.replace('-', "_") == package.replace('-', "_") {
                "--lib".to_string()
            } else {
                format!("--test {target}")
            };
            format!("RETRACE_SEED={seed} cargo test -p {package} {selector} -- {test} --exact")
        }
        None => format!(
            "cargo run --release -p retrace-sim -- --scenario {scenario} --seeds {seed}..{}",
            seed + 1
        ),
    }
}
