//! The service's metrics, in Prometheus's text format at `GET /metrics`.
//!
//! Counters and histograms are updated where the work happens (a write's
//! task, a poll, a dispatch); gauges are read from the service's state when
//! scraped. Every name starts with `retrace_`; times are in seconds.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `retrace_runs_started_total` | counter | | runs created (starts, continue-as-new, retries, cron, children) |
//! | `retrace_runs_closed_total` | counter | `status` | runs closed: `completed`, `failed`, `canceled`, `terminated`, `timed_out`, `continued_as_new` |
//! | `retrace_runs_open` | gauge | | open runs the service holds |
//! | `retrace_runs_quarantined` | gauge | | runs set aside because their stored state cannot be read |
//! | `retrace_timers_queued` | gauge | | durable timers and timeouts waiting to fire |
//! | `retrace_tasks_dispatched_total` | counter | `kind` | workflow and activity tasks handed to workers (by poll, sync match or eagerly) |
//! | `retrace_polls_total` | counter | `kind`, `outcome` | polls answered with a task (`task`), a query (`query`) or nothing (`empty`) |
//! | `retrace_poll_wait_seconds` | histogram | `kind` | how long a poll waited before its answer |
//! | `retrace_activity_schedule_to_start_seconds` | histogram | | from an activity attempt's scheduling to its start |
//! | `retrace_storage_writes_total` | counter | `outcome` | storage writes: `ok`, `failed` (nothing written), `ambiguous` (may have committed) |
//! | `retrace_storage_write_seconds` | histogram | | one storage write, from asking to its answer |
//! | `retrace_storage_write_events` | histogram | | events in one storage write (its batch size) |
//! | `retrace_cluster_shard_moves_total` | counter | `direction` | shards this server `gained` and `lost` (cluster mode) |
//! | `retrace_cluster_fenced_writes_total` | counter | | writes refused because the shard's lease had moved on (cluster mode) |
//!
//! A write's runs are counted when it commits, from the events it carried;
//! an ambiguous write's are not (they may or may not have happened), so the
//! run counters plus what ambiguous writes held equal what storage holds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::env::{RunStatus, WriteBatch};
use crate::history::EventKind;

/// How a run closed, as the `status` label names it (in this order).
pub const CLOSE_STATUSES: [&str; 6] = [
    "completed",
    "failed",
    "canceled",
    "terminated",
    "timed_out",
    "continued_as_new",
];

/// The kinds of task, as the `kind` label names them.
pub const TASK_KINDS: [&str; 2] = ["workflow", "activity"];

/// A poll's outcome, as the `outcome` label names it.
pub const POLL_OUTCOMES: [&str; 3] = ["task", "query", "empty"];

/// A storage write's outcome, as the `outcome` label names it.
pub const WRITE_OUTCOMES: [&str; 3] = ["ok", "failed", "ambiguous"];

/// Upper bounds (seconds) of the time histograms' buckets.
const SECONDS_BUCKETS: [f64; 14] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// Upper bounds of the batch-size histogram's buckets (events).
const EVENTS_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 256.0];

/// A task's kind, indexing [`TASK_KINDS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKindLabel {
    Workflow = 0,
    Activity = 1,
}

/// How a poll was answered, indexing [`POLL_OUTCOMES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollOutcome {
    Task = 0,
    Query = 1,
    Empty = 2,
}

/// A Prometheus histogram with fixed buckets; observations in micro-units
/// (microseconds, or events × 10⁶) so the sum stays an integer.
struct Histogram {
    bounds: &'static [f64],
    /// Observations at or under each bound (not cumulative), then above all.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]));
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe_micros(&self, micros: u64) {
        let value = micros as f64 / 1e6;
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (index, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[index].load(Ordering::Relaxed);
            let le = format!("le=\"{bound}\"");
            let _ = writeln!(out, "{name}_bucket{{{}}} {cumulative}", join(labels, &le));
        }
        let count = self.count();
        let inf = join(labels, "le=\"+Inf\"");
        let _ = writeln!(out, "{name}_bucket{{{inf}}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

fn join(labels: &str, label: &str) -> String {
    if labels.is_empty() {
        label.to_string()
    } else {
        format!("{labels},{label}")
    }
}

fn braces(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// The service's counters and histograms. One per service process; the
/// host may make it (to keep reading it after the service is gone, as the
/// simulator does across a crash).
pub struct Metrics {
    runs_started: AtomicU64,
    runs_closed: [AtomicU64; CLOSE_STATUSES.len()],
    tasks_dispatched: [AtomicU64; TASK_KINDS.len()],
    /// By kind, then by [`POLL_OUTCOMES`].
    polls: [[AtomicU64; POLL_OUTCOMES.len()]; TASK_KINDS.len()],
    poll_wait: [Histogram; TASK_KINDS.len()],
    schedule_to_start: Histogram,
    storage_writes: [AtomicU64; WRITE_OUTCOMES.len()],
    storage_write: Histogram,
    storage_write_events: Histogram,
    /// Shards gained, lost.
    shard_moves: [AtomicU64; 2],
    fenced_writes: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            runs_started: AtomicU64::new(0),
            runs_closed: counters(),
            tasks_dispatched: counters(),
            polls: [counters(), counters()],
            poll_wait: [
                Histogram::new(&SECONDS_BUCKETS),
                Histogram::new(&SECONDS_BUCKETS),
            ],
            schedule_to_start: Histogram::new(&SECONDS_BUCKETS),
            storage_writes: counters(),
            storage_write: Histogram::new(&SECONDS_BUCKETS),
            storage_write_events: Histogram::new(&EVENTS_BUCKETS),
            shard_moves: counters(),
            fenced_writes: AtomicU64::new(0),
        }
    }
}

/// What a write batch did to runs: runs created, and runs closed by status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunTally {
    /// Runs created.
    pub started: u64,
    /// Runs closed, by `status` label.
    pub closed: BTreeMap<&'static str, u64>,
}

impl RunTally {
    /// The runs `batch` (and the run it creates with it) starts and closes.
    pub fn of_batch(batch: &WriteBatch) -> RunTally {
        let mut tally = RunTally::default();
        let nested = batch.next_run.as_deref();
        for event in batch
            .events
            .iter()
            .chain(nested.into_iter().flat_map(|b| &b.events))
        {
            if matches!(event.kind, EventKind::WorkflowExecutionStarted(_)) {
                tally.started += 1;
            } else if let Some(status) = close_status(&event.kind) {
                *tally.closed.entry(status).or_default() += 1;
            }
        }
        tally
    }

    /// Adds `other` to this tally.
    pub fn add(&mut self, other: &RunTally) {
        self.started += other.started;
        for (status, count) in &other.closed {
            *self.closed.entry(status).or_default() += count;
        }
    }
}

/// The `status` label of a close event; `None` for any other event.
pub fn close_status(kind: &EventKind) -> Option<&'static str> {
    let status = match kind {
        EventKind::WorkflowExecutionCompleted(_) => "completed",
        EventKind::WorkflowExecutionFailed(_) => "failed",
        EventKind::WorkflowExecutionCanceled(_) => "canceled",
        EventKind::WorkflowExecutionTerminated(_) => "terminated",
        EventKind::WorkflowExecutionTimedOut(_) => "timed_out",
        EventKind::WorkflowExecutionContinuedAsNew(_) => "continued_as_new",
        _ => return None,
    };
    Some(status)
}

/// The `status` label of a closed run's status; `None` while it runs.
pub fn status_label(status: RunStatus) -> Option<&'static str> {
    let label = match status {
        RunStatus::Running => return None,
        RunStatus::Completed => "completed",
        RunStatus::Failed => "failed",
        RunStatus::Canceled => "canceled",
        RunStatus::Terminated => "terminated",
        RunStatus::TimedOut => "timed_out",
        RunStatus::ContinuedAsNew => "continued_as_new",
    };
    Some(label)
}

/// The counters a check reads (the simulator's metrics oracle).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Runs created and closed by writes that committed.
    pub runs: RunTally,
    /// Tasks handed to workers, by `kind` label.
    pub tasks_dispatched: BTreeMap<&'static str, u64>,
    /// Activity schedule-to-start observations.
    pub schedule_to_start_count: u64,
    /// Storage writes by `outcome` label.
    pub storage_writes: BTreeMap<&'static str, u64>,
    /// Storage write latency and batch size observations.
    pub storage_write_count: u64,
    pub storage_write_events_count: u64,
}

/// The gauges, read from the service when scraped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    pub runs_open: u64,
    pub runs_quarantined: u64,
    pub timers_queued: u64,
}

impl Metrics {
    /// A write committed: count its batch's size, latency and runs.
    pub fn on_write_committed(&self, batch: &RunTally, events: usize, micros: u64) {
        self.on_write_answered(0, events, micros);
        self.runs_started
            .fetch_add(batch.started, Ordering::Relaxed);
        for (status, count) in &batch.closed {
            let index = CLOSE_STATUSES
                .iter()
                .position(|s| s == status)
                .expect("close statuses come from close_status");
            self.runs_closed[index].fetch_add(*count, Ordering::Relaxed);
        }
    }

    /// A write failed (`ambiguous`: it may have committed).
    pub fn on_write_failed(&self, ambiguous: bool, events: usize, micros: u64) {
        self.on_write_answered(if ambiguous { 2 } else { 1 }, events, micros);
    }

    fn on_write_answered(&self, outcome: usize, events: usize, micros: u64) {
        self.storage_writes[outcome].fetch_add(1, Ordering::Relaxed);
        self.storage_write.observe_micros(micros);
        self.storage_write_events
            .observe_micros(events as u64 * 1_000_000);
    }

    /// This server gained (or lost) a shard.
    pub fn on_shard_moved(&self, gained: bool) {
        self.shard_moves[usize::from(!gained)].fetch_add(1, Ordering::Relaxed);
    }

    /// A write was refused by its shard's fence.
    pub fn on_write_fenced(&self) {
        self.fenced_writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes refused by fences so far.
    pub fn fenced_writes(&self) -> u64 {
        self.fenced_writes.load(Ordering::Relaxed)
    }

    /// A task was handed to a worker.
    pub fn on_dispatched(&self, kind: TaskKindLabel) {
        self.tasks_dispatched[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// An activity attempt started `waited_ms` after it was scheduled.
    pub fn on_activity_started(&self, waited_ms: u64) {
        self.schedule_to_start.observe_micros(waited_ms * 1_000);
    }

    /// A poll was answered after `waited_ms`, with `outcome` (an index of
    /// [`POLL_OUTCOMES`]).
    pub fn on_poll(&self, kind: TaskKindLabel, outcome: PollOutcome, waited_ms: u64) {
        self.polls[kind as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.poll_wait[kind as usize].observe_micros(waited_ms * 1_000);
    }

    /// The counters, for checks.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let labelled = |names: &[&'static str], counters: &[AtomicU64]| {
            names
                .iter()
                .copied()
                .zip(counters.iter().map(load))
                .collect()
        };
        let closed: BTreeMap<&'static str, u64> = labelled(&CLOSE_STATUSES, &self.runs_closed);
        MetricsSnapshot {
            runs: RunTally {
                started: load(&self.runs_started),
                closed: closed.into_iter().filter(|(_, n)| *n > 0).collect(),
            },
            tasks_dispatched: labelled(&TASK_KINDS, &self.tasks_dispatched),
            schedule_to_start_count: self.schedule_to_start.count(),
            storage_writes: labelled(&WRITE_OUTCOMES, &self.storage_writes),
            storage_write_count: self.storage_write.count(),
            storage_write_events_count: self.storage_write_events.count(),
        }
    }

    /// Every metric in Prometheus's text exposition format (version 0.0.4).
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::with_capacity(8 * 1024);
        self.render_runs(&mut out, gauges);
        self.render_tasks(&mut out);
        self.render_storage(&mut out);
        assert!(out.ends_with('\n'));
        out
    }

    fn render_runs(&self, out: &mut String, gauges: Gauges) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        header(
            out,
            "retrace_runs_started_total",
            "counter",
            "Runs created.",
        );
        let _ = writeln!(
            out,
            "retrace_runs_started_total {}",
            load(&self.runs_started)
        );
        header(
            out,
            "retrace_runs_closed_total",
            "counter",
            "Runs closed, by how.",
        );
        for (status, counter) in CLOSE_STATUSES.iter().zip(&self.runs_closed) {
            let _ = writeln!(
                out,
                "retrace_runs_closed_total{{status=\"{status}\"}} {}",
                load(counter)
            );
        }
        let gauges = [
            (
                "retrace_runs_open",
                "Open runs the service holds.",
                gauges.runs_open,
            ),
            (
                "retrace_runs_quarantined",
                "Runs set aside because their stored state cannot be read.",
                gauges.runs_quarantined,
            ),
            (
                "retrace_timers_queued",
                "Durable timers and timeouts waiting to fire.",
                gauges.timers_queued,
            ),
        ];
        for (name, help, value) in gauges {
            header(out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
    }

    fn render_tasks(&self, out: &mut String) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let name = "retrace_tasks_dispatched_total";
        header(out, name, "counter", "Tasks handed to workers.");
        for (kind, counter) in TASK_KINDS.iter().zip(&self.tasks_dispatched) {
            let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {}", load(counter));
        }
        let name = "retrace_polls_total";
        header(
            out,
            name,
            "counter",
            "Polls answered: a task, a query or none.",
        );
        for (kind, counters) in TASK_KINDS.iter().zip(&self.polls) {
            for (outcome, counter) in POLL_OUTCOMES.iter().zip(counters) {
                let labels = format!("kind=\"{kind}\",outcome=\"{outcome}\"");
                let _ = writeln!(out, "{name}{{{labels}}} {}", load(counter));
            }
        }
        let name = "retrace_poll_wait_seconds";
        header(
            out,
            name,
            "histogram",
            "How long a poll waited for its answer.",
        );
        for (kind, histogram) in TASK_KINDS.iter().zip(&self.poll_wait) {
            histogram.render(out, name, &format!("kind=\"{kind}\""));
        }
        let name = "retrace_activity_schedule_to_start_seconds";
        let help = "From an activity attempt's scheduling to its start.";
        header(out, name, "histogram", help);
        self.schedule_to_start.render(out, name, "");
    }

    fn render_storage(&self, out: &mut String) {
        let name = "retrace_storage_writes_total";
        header(out, name, "counter", "Storage writes, by outcome.");
        for (outcome, counter) in WRITE_OUTCOMES.iter().zip(&self.storage_writes) {
            let count = counter.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {count}");
        }
        let name = "retrace_storage_write_seconds";
        header(
            out,
            name,
            "histogram",
            "One storage write, from asking to its answer.",
        );
        self.storage_write.render(out, name, "");
        let name = "retrace_storage_write_events";
        header(out, name, "histogram", "Events in one storage write.");
        self.storage_write_events.render(out, name, "");
        self.render_cluster(out);
    }

    fn render_cluster(&self, out: &mut String) {
        let name = "retrace_cluster_shard_moves_total";
        header(out, name, "counter", "Shards this server gained and lost.");
        for (direction, counter) in ["gained", "lost"].iter().zip(&self.shard_moves) {
            let count = counter.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{direction=\"{direction}\"}} {count}");
        }
        let name = "retrace_cluster_fenced_writes_total";
        let help = "Writes refused because the shard's lease had moved on.";
        header(out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", self.fenced_writes());
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, line_start: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(line_start)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample {line_start:?} in\n{text}"))
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_every_observation() {
        let metrics = Metrics::default();
        for micros in [100, 700, 700, 3_000, 40_000_000] {
            metrics.storage_write.observe_micros(micros);
        }
        let text = metrics.render(Gauges::default());
        let name = "retrace_storage_write_seconds";
        assert_eq!(
            sample(&text, &format!("{name}_bucket{{le=\"0.00025\"}}")),
            1.0
        );
        assert_eq!(
            sample(&text, &format!("{name}_bucket{{le=\"0.001\"}}")),
            3.0
        );
        assert_eq!(
            sample(&text, &format!("{name}_bucket{{le=\"0.005\"}}")),
            4.0
        );
        assert_eq!(sample(&text, &format!("{name}_bucket{{le=\"30\"}}")), 4.0);
        assert_eq!(sample(&text, &format!("{name}_bucket{{le=\"+Inf\"}}")), 5.0);
        assert_eq!(sample(&text, &format!("{name}_count")), 5.0);
        assert!((sample(&text, &format!("{name}_sum")) - 40.0045).abs() < 1e-9);
    }

    #[test]
    fn every_metric_has_help_and_type_before_its_samples() {
        let metrics = Metrics::default();
        metrics.on_poll(TaskKindLabel::Activity, PollOutcome::Task, 12);
        let text = metrics.render(Gauges {
            runs_open: 3,
            runs_quarantined: 0,
            timers_queued: 7,
        });
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().expect("a name").to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().expect("a name");
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .filter(|base| declared.iter().any(|d| d == base))
                    .unwrap_or(name);
                assert_eq!(declared.last().map(String::as_str), Some(base), "{line}");
            }
        }
        assert_eq!(sample(&text, "retrace_runs_open "), 3.0);
        assert_eq!(sample(&text, "retrace_timers_queued "), 7.0);
        let polls = "retrace_polls_total{kind=\"activity\",outcome=\"task\"}";
        assert_eq!(sample(&text, polls), 1.0);
    }
}
