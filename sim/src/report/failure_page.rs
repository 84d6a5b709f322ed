//! A failing seed as one self-contained HTML page (`failure.html` in its
//! failure directory), drawn by the Web UI's own renderer
//! ([`retrace::ui::timeline`]): the timeline of every run the failure
//! touches, with the injected faults on lanes above them (crashes, pauses,
//! partitions and storage trouble as bands on their node's lane; lost,
//! duplicated and dropped messages, storage errors, BUGGIFY sites and clock
//! skew as marks), the broken invariant, the shrunk plan and the one line
//! that reproduces it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use retrace::history::{Event, History};
use retrace::types::Timestamp;
use retrace::ui;
use retrace::ui::html::escape;
use retrace::ui::timeline::{self, Item, Lane, Timeline};

use super::Report;
use crate::faults::{Fault, FaultKind, Target};

/// Runs drawn when the violations name none (every run of the seed, up to this).
pub const FAILURE_PAGE_RUNS_MAX: usize = 12;
/// Marks drawn on one fault lane; the rest are counted in its label.
pub const FAULT_MARKS_PER_LANE_MAX: usize = 400;
/// Characters of a workflow id in a lane label.
pub const LANE_ID_CHARS_MAX: usize = 12;

/// The page of `report`.
pub fn failure_page(report: &Report) -> String {
    let result = &report.result;
    let runs = touched_runs(report);
    let mut lanes = fault_lanes(report);
    lanes.push(invariant_lane(report, &runs));
    for (index, (run_id, events)) in runs.iter().enumerate() {
        let workflow_id = result.histories[*run_id].workflow_id();
        let short = retrace::ui::html::cut(workflow_id, LANE_ID_CHARS_MAX);
        for mut lane in timeline::history_lanes(events, &format!("r{index}-")) {
            lane.label = format!("{short} · {}", lane.label);
            lanes.push(lane);
        }
    }
    let title = format!(
        "{} seed {}: {}",
        report.scenario,
        result.seed,
        first_invariant(report)
    );
    let mut body = header(report);
    let _ = write!(
        body,
        "<section id=\"timeline\"><h2>Timeline (simulated time)</h2><p class=\"muted\">Fault lanes \
         first (bands: a node down, paused or cut off; marks: one message or write), then each run's \
         lanes. Hover a bar or mark to see it; run bars link to their events below.</p>\
         <div class=\"timeline-wrap\" tabindex=\"0\">{}</div></section>",
        timeline::render(&Timeline::new(lanes, None), 1)
    );
    for (index, (run_id, events)) in runs.iter().enumerate() {
        let history = &result.histories[*run_id];
        let _ = write!(
            body,
            "<section><h2>Run {} <code>{}</code></h2><p><a href=\"histories/{}.json\">History as \
             JSON</a> (beside this page)</p><details open><summary>{} events</summary>{}</details></section>",
            escape(history.workflow_id()),
            escape(run_id),
            escape(&ui::html::url_param(&run_id.replace(['/', '\\'], "_"))),
            events.len(),
            retrace::ui::history_table(events, &format!("r{index}-"), false)
        );
    }
    let _ = write!(
        body,
        "<section><h2>Report</h2><details><summary>as printed</summary><pre>{}</pre></details></section>",
        escape(&report.to_string())
    );
    retrace::ui::standalone_page(&title, &body)
}

fn first_invariant(report: &Report) -> &str {
    report.result.violations.first().map_or("", |v| v.invariant)
}

fn header(report: &Report) -> String {
    let result = &report.result;
    let mut out = format!(
        "<h1>{} seed {}</h1><section class=\"card\" aria-label=\"the failure\"><dl class=\"summary\">",
        escape(&report.scenario),
        result.seed
    );
    for violation in &result.violations {
        let _ = write!(
            out,
            "<dt>Broken invariant</dt><dd><b>{}</b>: {}</dd>",
            escape(violation.invariant),
            escape(&violation.message)
        );
    }
    let plan: Vec<String> = result
        .plan
        .in_time_order()
        .iter()
        .map(|f| escape(&f.to_string()))
        .collect();
    let _ = write!(
        out,
        "<dt>Reproduce</dt><dd><pre id=\"repro\">{}</pre></dd><dt>Swarm</dt><dd><code>{}</code></dd>\
         <dt>Shrunk plan</dt><dd>{} fault(s), from {}<pre id=\"plan\">{}</pre></dd></dl></section>",
        escape(&report.repro),
        escape(&result.swarm.to_string()),
        result.plan.faults.len(),
        report.original_faults,
        if plan.is_empty() {
            "(none)".to_string()
        } else {
            plan.join("\n")
        }
    );
    out
}

/// The runs drawn (those the violations name, else every run up to
/// [`FAILURE_PAGE_RUNS_MAX`]), with their events moved onto the simulated
/// timeline (milliseconds since the seed's world began).
fn touched_runs(report: &Report) -> Vec<(&String, Vec<Event>)> {
    let result = &report.result;
    let mut named: Vec<&String> = result
        .violations
        .iter()
        .filter_map(|v| v.run_id.as_ref())
        .collect();
    named.dedup();
    named.retain(|run_id| result.histories.contains_key(*run_id));
    if named.is_empty() {
        named = result
            .histories
            .keys()
            .take(FAILURE_PAGE_RUNS_MAX)
            .collect();
    }
    named
        .into_iter()
        .map(|run_id| {
            let history = &result.histories[run_id];
            let start_ms = result.run_windows_ms.get(run_id).map_or(0, |w| w.0);
            (run_id, on_sim_time(history, start_ms))
        })
        .collect()
}

/// `history`'s events with times counted from the world's start, the first at `start_ms`.
fn on_sim_time(history: &History, start_ms: u64) -> Vec<Event> {
    let first = history
        .events()
        .first()
        .map_or(Timestamp(0), |e| e.event_time);
    history
        .events()
        .iter()
        .map(|event| {
            let mut event = event.clone();
            event.event_time = Timestamp(start_ms + event.event_time.millis_since(first));
            event
        })
        .collect()
}

/// Where a plan fault is drawn, and for how long.
fn plan_band(fault: &Fault) -> (String, u64) {
    match &fault.kind {
        FaultKind::CrashWorker { worker, down_ms } => (Target::Worker(*worker).name(), *down_ms),
        FaultKind::PauseWorker {
            worker,
            duration_ms,
        } => (Target::Worker(*worker).name(), *duration_ms),
        FaultKind::CrashService { down_ms } | FaultKind::TornRow { down_ms } => {
            (Target::Service.name(), *down_ms)
        }
        FaultKind::Partition { duration_ms, .. } | FaultKind::Clog { duration_ms, .. } => {
            ("network".to_string(), *duration_ms)
        }
        FaultKind::StorageTrouble { duration_ms, .. } => ("storage".to_string(), *duration_ms),
        FaultKind::CrashServiceNode { service, down_ms } => {
            (crate::nodes::service_name(*service), *down_ms)
        }
        FaultKind::PauseService {
            service,
            duration_ms,
        }
        | FaultKind::CutFromStorage {
            service,
            duration_ms,
        } => (crate::nodes::service_name(*service), *duration_ms),
    }
}

/// The lane a traced fault's mark goes on (plan faults are drawn as bands from the plan).
fn mark_lane(kind: &str) -> Option<&'static str> {
    let (prefix, _) = kind.split_once(':').unwrap_or((kind, ""));
    match prefix {
        "net" => Some("network"),
        "storage" => Some("storage"),
        "buggify" => Some("buggify"),
        "clock" => Some("clock"),
        "deploy" => Some("deploy"),
        _ => None,
    }
}

fn lane_mut<'a>(lanes: &'a mut BTreeMap<String, Lane>, name: &str) -> &'a mut Lane {
    lanes.entry(name.to_string()).or_insert_with(|| Lane {
        label: format!("faults: {name}"),
        class: "fault",
        items: Vec::new(),
    })
}

fn fault_lanes(report: &Report) -> Vec<Lane> {
    let result = &report.result;
    let mut lanes: BTreeMap<String, Lane> = BTreeMap::new();
    for fault in result.plan.in_time_order() {
        let (name, duration_ms) = plan_band(&fault);
        let start = Timestamp(fault.at_ms);
        let item = Item::bar(
            start,
            start.plus_ms(duration_ms),
            "fault",
            fault.kind.to_string(),
        );
        lane_mut(&mut lanes, &name).items.push(item);
    }
    let mut left_out: BTreeMap<&'static str, usize> = BTreeMap::new();
    for event in &result.fault_events {
        let Some(name) = mark_lane(&event.kind) else {
            continue;
        };
        let target = lane_mut(&mut lanes, name);
        if target.items.len() >= FAULT_MARKS_PER_LANE_MAX {
            *left_out.entry(name).or_default() += 1;
            continue;
        }
        let run = event
            .run_id
            .as_ref()
            .map(|r| format!(" (run {r})"))
            .unwrap_or_default();
        let title = format!("t={} ms {} {}{run}", event.at_ms, event.kind, event.detail);
        target
            .items
            .push(Item::point(Timestamp(event.at_ms), "fault", title));
    }
    for (name, count) in left_out {
        let _ = write!(lane_mut(&mut lanes, name).label, " (+{count} not drawn)");
    }
    lanes.into_values().collect()
}

/// A mark where the first violation shows (its event, or the end of its run).
fn invariant_lane(report: &Report, runs: &[(&String, Vec<Event>)]) -> Lane {
    let mut items = Vec::new();
    if let Some(violation) = report.result.violations.first() {
        let events = runs
            .iter()
            .find(|(run_id, _)| violation.run_id.as_ref() == Some(*run_id))
            .or(runs.first())
            .map(|(_, events)| events);
        let at = events.and_then(|events| {
            let by_id = violation
                .event_id
                .and_then(|id| events.iter().find(|e| e.event_id == id));
            by_id.or(events.last()).map(|e| e.event_time)
        });
        let at = at.unwrap_or(Timestamp(report.result.sim_ms));
        let title = format!("{}: {}", violation.invariant, violation.message);
        items.push(Item::point(at, "fault", title));
    }
    Lane {
        label: "broken invariant".to_string(),
        class: "fault",
        items,
    }
}
