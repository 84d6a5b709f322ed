//! The timeline: lanes of bars and points over time, drawn as inline SVG.
//!
//! [`history_lanes`] turns one run's history into lanes (workflow tasks on
//! their own lane, one lane per activity, timer and child, signals and markers
//! as points); callers may add lanes of their own (the simulator's failure
//! pages add faults as bands and marks) before [`render`] draws them all on
//! one time axis. Every bar and point carries a `<title>` (hover shows the
//! event) and, where it stands for an event, a link to it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::history::{Event, EventKind};
use crate::types::Timestamp;

use super::html::{cut, duration_ms, escape};

/// Widest the lane labels' column gets (it fits the longest label).
pub const LABEL_WIDTH_PX: u64 = 230;
/// Narrowest the lane labels' column gets.
pub const LABEL_WIDTH_MIN_PX: u64 = 90;
/// Width a label character takes (12 px system sans-serif, generously).
pub const LABEL_CHAR_WIDTH_PX: u64 = 7;
/// Width of the plot at zoom 1.
pub const PLOT_WIDTH_PX: u64 = 940;
/// Room right of the plot for the last tick's label.
pub const RIGHT_MARGIN_PX: u64 = 50;
/// Height of one lane.
pub const LANE_HEIGHT_PX: u64 = 24;
/// Height of a bar inside its lane.
pub const BAR_HEIGHT_PX: u64 = 14;
/// Height of the time axis above the lanes.
pub const AXIS_HEIGHT_PX: u64 = 22;
/// Time axis ticks at zoom 1.
pub const TICKS: u64 = 5;
/// Narrowest bar drawn, so that instant bars stay visible.
pub const BAR_WIDTH_MIN_PX: f64 = 3.0;
/// Largest zoom factor.
pub const ZOOM_MAX: u32 = 32;
/// Characters of a lane label before it is cut.
pub const LABEL_CHARS_MAX: usize = 30;
/// Lanes drawn from one history; the rest are summed up in one last lane.
pub const HISTORY_LANES_MAX: usize = 300;

/// A part of a bar: a waiting time, earlier attempts and their backoffs, the
/// last attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// Where it starts.
    pub start: Timestamp,
    /// Where it ends.
    pub end: Timestamp,
    /// CSS class (`queued`, `retrying`, `running`, …).
    pub class: &'static str,
    /// What hover shows.
    pub title: String,
}

/// A bar (with an end, or open to the timeline's end) or a point.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// Where it starts (or the point's time).
    pub start: Timestamp,
    /// Where it ends; `None` with `open == false` is a point.
    pub end: Option<Timestamp>,
    /// Still going: the bar runs to the timeline's end.
    pub open: bool,
    /// CSS class (`completed`, `failed`, `signal`, `fault`, …).
    pub class: &'static str,
    /// What hover shows.
    pub title: String,
    /// Where a click goes (an event's anchor).
    pub href: Option<String>,
    /// Parts drawn inside the bar.
    pub segments: Vec<Segment>,
}

impl Item {
    /// A point at `at`.
    pub fn point(at: Timestamp, class: &'static str, title: String) -> Item {
        Item {
            start: at,
            end: None,
            open: false,
            class,
            title,
            href: None,
            segments: Vec::new(),
        }
    }

    /// A bar from `start` to `end`.
    pub fn bar(start: Timestamp, end: Timestamp, class: &'static str, title: String) -> Item {
        Item {
            end: Some(end),
            ..Item::point(start, class, title)
        }
    }

    fn last_time(&self) -> Timestamp {
        let segments = self.segments.iter().map(|s| s.end);
        segments.chain(self.end).fold(self.start, Timestamp::max)
    }
}

/// One row of the timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Lane {
    /// The row's name (cut to [`LABEL_CHARS_MAX`] when drawn).
    pub label: String,
    /// CSS class of the row (`workflow-task`, `activity`, `timer`, `fault`, …).
    pub class: &'static str,
    /// What it shows.
    pub items: Vec<Item>,
}

/// Lanes over one time span.
#[derive(Clone, Debug, PartialEq)]
pub struct Timeline {
    /// Left edge.
    pub start: Timestamp,
    /// Right edge (open bars run to it).
    pub end: Timestamp,
    /// Rows, top to bottom.
    pub lanes: Vec<Lane>,
}

impl Timeline {
    /// The lanes on the span from their first to their last time, or to `now`
    /// when some bar is still open.
    pub fn new(lanes: Vec<Lane>, now: Option<Timestamp>) -> Timeline {
        let items = || lanes.iter().flat_map(|lane| &lane.items);
        let start = items().map(|i| i.start).min().unwrap_or(Timestamp(0));
        let mut end = items().map(Item::last_time).max().unwrap_or(start);
        if let Some(now) = now.filter(|_| items().any(|i| i.open)) {
            end = end.max(now);
        }
        Timeline { start, end, lanes }
    }

    /// Number of bars (items with an extent) whose lane has `class`.
    pub fn bars_in(&self, class: &str) -> usize {
        let lanes = self.lanes.iter().filter(|lane| lane.class == class);
        lanes
            .flat_map(|lane| &lane.items)
            .filter(|item| item.end.is_some() || item.open)
            .count()
    }
}

/// What one history's bars are being built from.
#[derive(Default)]
struct Lanes {
    workflow_tasks: Vec<Item>,
    /// Activities and children by the event that scheduled them.
    by_schedule: BTreeMap<u64, Lane>,
    points: Vec<Item>,
}

/// The lanes of one run's `events`. Each item links to `#{anchor_prefix}e{id}`
/// (the event that closed it, or its first).
pub fn history_lanes(events: &[Event], anchor_prefix: &str) -> Vec<Lane> {
    let mut lanes = Lanes::default();
    let times: BTreeMap<u64, &Event> = events.iter().map(|e| (e.event_id, e)).collect();
    let mut open_task: Option<&Event> = None;
    for event in events {
        let href = Some(format!("#{anchor_prefix}e{}", event.event_id));
        if let EventKind::WorkflowTaskScheduled(_) = &event.kind {
            open_task = Some(event);
        } else if let Some(mut item) = workflow_task_item(event, &times) {
            open_task = None;
            item.href = href;
            lanes.workflow_tasks.push(item);
        } else if let Some((scheduled, lane)) = scheduled_lane(event, href.clone()) {
            lanes.by_schedule.insert(scheduled, lane);
        } else if let Some(scheduled) = closes(&event.kind) {
            if let Some(lane) = lanes.by_schedule.get_mut(&scheduled) {
                close_item(lane, event, &times, href);
            }
        } else if let Some(mut point) = point_item(event) {
            point.href = href;
            lanes.points.push(point);
        }
    }
    let closed = events.last().is_some_and(|e| e.kind.is_terminal());
    if let Some(scheduled) = open_task.filter(|_| !closed) {
        let title = format!(
            "workflow task (event {}) not closed yet",
            scheduled.event_id
        );
        let mut item = Item::point(scheduled.event_time, "pending", title);
        item.open = true;
        item.href = Some(format!("#{anchor_prefix}e{}", scheduled.event_id));
        lanes.workflow_tasks.push(item);
    }
    lanes.into_vec()
}

impl Lanes {
    /// Workflow tasks first, then activities, timers and children in the
    /// order they were scheduled, then the points: signals, markers, and the
    /// run's own start, cancel request and close (each on its own lane, so
    /// a signal just before the close stays visible).
    fn into_vec(self) -> Vec<Lane> {
        let mut out = vec![Lane {
            label: "workflow tasks".to_string(),
            class: "workflow-task",
            items: self.workflow_tasks,
        }];
        let scheduled = self.by_schedule.into_values();
        out.extend(scheduled.take(HISTORY_LANES_MAX));
        let point_lanes = [("signals", "signal"), ("markers", "marker"), ("run", "")];
        for (label, class) in point_lanes {
            let items: Vec<Item> = self
                .points
                .iter()
                .filter(|p| {
                    p.class == class
                        || (class.is_empty() && !["signal", "marker"].contains(&p.class))
                })
                .cloned()
                .collect();
            if !items.is_empty() || label == "run" {
                out.push(Lane {
                    label: label.to_string(),
                    class: "points",
                    items,
                });
            }
        }
        out
    }
}

/// A workflow task's bar, drawn when it closes (scheduled, started, closed).
fn workflow_task_item(event: &Event, times: &BTreeMap<u64, &Event>) -> Option<Item> {
    let (scheduled, started, class, how) = match &event.kind {
        EventKind::WorkflowTaskCompleted(a) => (
            a.scheduled_event_id,
            a.started_event_id,
            "completed",
            "completed",
        ),
        EventKind::WorkflowTaskFailed(a) => {
            (a.scheduled_event_id, a.started_event_id, "failed", "failed")
        }
        EventKind::WorkflowTaskTimedOut(a) => (
            a.scheduled_event_id,
            a.started_event_id,
            "timed-out",
            "timed out",
        ),
        _ => return None,
    };
    let scheduled_at = times
        .get(&scheduled)
        .map_or(event.event_time, |e| e.event_time);
    let started_at = times.get(&started).map_or(scheduled_at, |e| e.event_time);
    let identity = match times.get(&started).map(|e| &e.kind) {
        Some(EventKind::WorkflowTaskStarted(s)) => s.identity.as_str(),
        _ => "",
    };
    let ran = duration_ms(event.event_time.millis_since(started_at));
    let title = format!(
        "workflow task {how} (events {scheduled}-{}), ran {ran} on {identity}",
        event.event_id
    );
    let mut item = Item::bar(scheduled_at, event.event_time, class, title);
    item.segments = vec![
        Segment {
            start: scheduled_at,
            end: started_at,
            class: "queued",
            title: format!(
                "waited {}",
                duration_ms(started_at.millis_since(scheduled_at))
            ),
        },
        Segment {
            start: started_at,
            end: event.event_time,
            class: "running",
            title: format!("ran {ran} on {identity}"),
        },
    ];
    Some(item)
}

/// The lane an activity, timer or child starts, open until it closes.
fn scheduled_lane(event: &Event, href: Option<String>) -> Option<(u64, Lane)> {
    let (label, class, title) = match &event.kind {
        EventKind::ActivityTaskScheduled(a) => (
            format!("{} · {}", a.activity_type, a.activity_id),
            "activity",
            format!("activity {} ({}) scheduled", a.activity_id, a.activity_type),
        ),
        EventKind::TimerStarted(a) => (
            format!("timer {}", a.timer_id),
            "timer",
            format!(
                "timer {} started for {}",
                a.timer_id,
                duration_ms(a.start_to_fire_timeout_ms)
            ),
        ),
        EventKind::StartChildWorkflowExecutionInitiated(a) => (
            format!("child {}", a.workflow_id),
            "child",
            format!("child {} ({}) initiated", a.workflow_id, a.workflow_type),
        ),
        EventKind::WorkflowExecutionUpdateAccepted(a) => (
            format!("update {} · {}", a.update_name, a.update_id),
            "update",
            format!("update {} ({}) accepted", a.update_id, a.update_name),
        ),
        _ => return None,
    };
    let mut item = Item::point(event.event_time, "pending", title);
    item.open = true;
    item.href = href;
    let lane = Lane {
        label,
        class,
        items: vec![item],
    };
    Some((event.event_id, lane))
}

/// The event that scheduled what `kind` closes (an activity, a timer, a child).
fn closes(kind: &EventKind) -> Option<u64> {
    use EventKind::*;
    match kind {
        ActivityTaskCompleted(a) => Some(a.scheduled_event_id),
        ActivityTaskFailed(a) => Some(a.scheduled_event_id),
        ActivityTaskTimedOut(a) => Some(a.scheduled_event_id),
        ActivityTaskCanceled(a) => Some(a.scheduled_event_id),
        TimerFired(a) => Some(a.started_event_id),
        TimerCanceled(a) => Some(a.started_event_id),
        StartChildWorkflowExecutionFailed(a) => Some(a.initiated_event_id),
        ChildWorkflowExecutionCompleted(a) => Some(a.initiated_event_id),
        ChildWorkflowExecutionFailed(a) => Some(a.initiated_event_id),
        ChildWorkflowExecutionCanceled(a) => Some(a.initiated_event_id),
        ChildWorkflowExecutionTimedOut(a) => Some(a.initiated_event_id),
        ChildWorkflowExecutionTerminated(a) => Some(a.initiated_event_id),
        WorkflowExecutionUpdateCompleted(a) => Some(a.accepted_event_id),
        _ => None,
    }
}

/// The CSS class of a closing event: how the bar ended.
fn outcome_class(kind: &EventKind) -> &'static str {
    use EventKind::*;
    match kind {
        ActivityTaskCompleted(_) | TimerFired(_) | ChildWorkflowExecutionCompleted(_) => {
            "completed"
        }
        ActivityTaskTimedOut(_) | ChildWorkflowExecutionTimedOut(_) => "timed-out",
        ActivityTaskCanceled(_) | TimerCanceled(_) | ChildWorkflowExecutionCanceled(_) => {
            "canceled"
        }
        WorkflowExecutionUpdateCompleted(a) => match a.outcome {
            crate::history::UpdateOutcome::Success(_) => "completed",
            crate::history::UpdateOutcome::Failure(_) => "failed",
        },
        _ => "failed",
    }
}

/// Closes the open bar of `lane` with `event`; an activity's bar gets its
/// waiting or retrying part (up to the last attempt's start) and its last attempt.
fn close_item(lane: &mut Lane, event: &Event, times: &BTreeMap<u64, &Event>, href: Option<String>) {
    let Some(item) = lane.items.first_mut() else {
        return;
    };
    item.open = false;
    item.end = Some(event.event_time);
    item.class = outcome_class(&event.kind);
    item.href = href;
    let took = duration_ms(event.event_time.millis_since(item.start));
    let _ = write!(item.title, "; {} after {took}", event.kind.name());
    let started = started_of(&event.kind).and_then(|id| times.get(&id));
    if let Some(Event {
        event_time,
        kind: EventKind::ActivityTaskStarted(s),
        ..
    }) = started.copied()
    {
        item.segments = attempt_segments(item.start, *event_time, event.event_time, s);
        let policy = times
            .get(&s.scheduled_event_id)
            .and_then(|e| match &e.kind {
                EventKind::ActivityTaskScheduled(a) => Some(&a.retry_policy),
                _ => None,
            });
        if let Some(policy) = policy {
            let (start, end) = (item.start, *event_time);
            item.segments
                .extend(earlier_attempts(start, end, s.attempt, policy));
        }
        let _ = write!(item.title, "; {} attempt(s)", s.attempt);
    }
}

/// The `ActivityTaskStarted` an activity's closing event names.
fn started_of(kind: &EventKind) -> Option<u64> {
    match kind {
        EventKind::ActivityTaskCompleted(a) => Some(a.started_event_id),
        EventKind::ActivityTaskFailed(a) => Some(a.started_event_id),
        EventKind::ActivityTaskTimedOut(a) => a.started_event_id,
        EventKind::ActivityTaskCanceled(a) => a.started_event_id,
        _ => None,
    }
}

/// An activity's bar inside: before the last attempt (waiting for a worker,
/// or the earlier attempts with their backoffs), then the last attempt.
fn attempt_segments(
    scheduled: Timestamp,
    last_started: Timestamp,
    closed: Timestamp,
    started: &crate::history::ActivityTaskStarted,
) -> Vec<Segment> {
    let before = if started.attempt > 1 {
        let last = started
            .last_failure
            .as_ref()
            .map(|f| format!("; last failure {}: {}", f.failure_type, f.message))
            .unwrap_or_default();
        Segment {
            start: scheduled,
            end: last_started,
            class: "retrying",
            title: format!(
                "attempts 1-{} and their backoffs, {}{last}",
                started.attempt - 1,
                duration_ms(last_started.millis_since(scheduled))
            ),
        }
    } else {
        Segment {
            start: scheduled,
            end: last_started,
            class: "queued",
            title: format!(
                "waited {} for a worker",
                duration_ms(last_started.millis_since(scheduled))
            ),
        }
    };
    let last = Segment {
        start: last_started,
        end: closed,
        class: "running",
        title: format!(
            "attempt {} on {}, ran {}",
            started.attempt,
            started.identity,
            duration_ms(closed.millis_since(last_started))
        ),
    };
    vec![before, last]
}

/// Narrowest an earlier attempt is drawn.
pub const ATTEMPT_WIDTH_MIN_PX: f64 = 2.0;
/// Earlier attempts a bar draws one by one, at most.
pub const ATTEMPTS_DRAWN_MAX: u32 = 50;

/// The earlier attempts of an activity between its scheduling and its last
/// attempt's start, each followed by its backoff. The backoffs' lengths are
/// exact (the policy has no jitter); the history records no earlier
/// attempt's start, so the time left is shared evenly among the attempts,
/// and their titles say so. Nothing when the backoffs do not fit (or there
/// are too many attempts to draw).
fn earlier_attempts(
    scheduled: Timestamp,
    last_started: Timestamp,
    attempt: u32,
    policy: &crate::activity::RetryPolicy,
) -> Vec<Segment> {
    if !(2..=ATTEMPTS_DRAWN_MAX).contains(&attempt) {
        return Vec::new();
    }
    let earlier = attempt - 1;
    let backoffs: Vec<u64> = (1..=earlier).map(|k| policy.backoff_ms(k)).collect();
    let total_ms = last_started.millis_since(scheduled);
    let backoff_ms: u64 = backoffs.iter().sum();
    let Some(running_ms) = total_ms.checked_sub(backoff_ms) else {
        return Vec::new();
    };
    let share_ms = running_ms / u64::from(earlier);
    let mut at = scheduled;
    let mut out = Vec::new();
    for (k, backoff) in (1..=earlier).zip(backoffs) {
        let title =
            format!("attempt {k}: failed (its own start and end are not recorded: placed evenly)");
        out.push(Segment {
            start: at,
            end: at.plus_ms(share_ms),
            class: "attempt",
            title,
        });
        at = at.plus_ms(share_ms);
        let title = format!(
            "backoff after attempt {k}: {} (retry policy)",
            duration_ms(backoff)
        );
        out.push(Segment {
            start: at,
            end: at.plus_ms(backoff),
            class: "backoff",
            title,
        });
        at = at.plus_ms(backoff);
    }
    out
}

/// A marker's title: a local activity's names its type, attempt and outcome.
fn marker_title(marker: &crate::history::MarkerRecorded) -> String {
    use crate::workflow::{LOCAL_ACTIVITY_MARKER_NAME, LocalActivityOutcome};
    if marker.marker_name != LOCAL_ACTIVITY_MARKER_NAME {
        return format!("marker {}", marker.marker_name);
    }
    match LocalActivityOutcome::from_details(&marker.details) {
        Ok(o) if o.result.is_some() => {
            format!(
                "local activity {} completed (attempt {})",
                o.activity_type, o.attempt
            )
        }
        Ok(o) => format!(
            "local activity {} failed (attempt {})",
            o.activity_type, o.attempt
        ),
        Err(_) => format!("marker {}", marker.marker_name),
    }
}

/// Signals, markers, cancel requests and the run's own start and close as points.
fn point_item(event: &Event) -> Option<Item> {
    use EventKind::*;
    let (class, title) = match &event.kind {
        WorkflowExecutionSignaled(a) => ("signal", format!("signal {}", a.signal_name)),
        MarkerRecorded(a) => ("marker", marker_title(a)),
        WorkflowExecutionCancelRequested(_) => ("cancel", "cancel requested".to_string()),
        WorkflowExecutionStarted(a) => ("start", format!("started {}", a.workflow_type)),
        kind if kind.is_terminal() => ("close", kind.name().to_string()),
        _ => return None,
    };
    let title = format!("{title} (event {}, {})", event.event_id, event.event_time);
    Some(Item::point(event.event_time, class, title))
}

/// Maps times to x positions.
struct Scale {
    start: Timestamp,
    span_ms: f64,
    width_px: f64,
    label_px: f64,
}

impl Scale {
    fn x(&self, at: Timestamp) -> f64 {
        let offset_ms = at.millis_since(self.start) as f64;
        self.label_px + offset_ms / self.span_ms * self.width_px
    }
}

/// The labels' column: as wide as the longest (cut) label, within bounds,
/// so that a phone's width shows more of the plot.
pub fn label_width_px(timeline: &Timeline) -> u64 {
    let longest = timeline
        .lanes
        .iter()
        .map(|lane| lane.label.chars().count().min(LABEL_CHARS_MAX + 1))
        .max()
        .unwrap_or(0) as u64;
    (longest * LABEL_CHAR_WIDTH_PX + 12).clamp(LABEL_WIDTH_MIN_PX, LABEL_WIDTH_PX)
}

/// The timeline as an `<svg>` element, `zoom` times wider than at zoom 1
/// (clamped to 1..=[`ZOOM_MAX`]).
pub fn render(timeline: &Timeline, zoom: u32) -> String {
    let zoom = zoom.clamp(1, ZOOM_MAX);
    let width_px = PLOT_WIDTH_PX * u64::from(zoom);
    let label_px = label_width_px(timeline);
    let scale = Scale {
        start: timeline.start,
        span_ms: timeline.end.millis_since(timeline.start).max(1) as f64,
        width_px: width_px as f64,
        label_px: label_px as f64,
    };
    let lanes = timeline.lanes.len() as u64;
    let height_px = AXIS_HEIGHT_PX + lanes * LANE_HEIGHT_PX + 4;
    let total_px = label_px + width_px + RIGHT_MARGIN_PX;
    let mut out = format!(
        "<svg class=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{total_px}\" \
         height=\"{height_px}\" viewBox=\"0 0 {total_px} {height_px}\" role=\"group\" \
         aria-label=\"timeline\">"
    );
    axis(&mut out, &scale, zoom, height_px);
    for (index, lane) in timeline.lanes.iter().enumerate() {
        let top = AXIS_HEIGHT_PX + index as u64 * LANE_HEIGHT_PX;
        draw_lane(&mut out, lane, top, &scale, timeline.end);
    }
    out.push_str("</svg>");
    out
}

fn axis(out: &mut String, scale: &Scale, zoom: u32, height_px: u64) {
    let ticks = TICKS * u64::from(zoom);
    for tick in 0..=ticks {
        let offset_ms = (scale.span_ms * tick as f64 / ticks as f64) as u64;
        let x = scale.x(Timestamp(scale.start.0 + offset_ms));
        let _ = write!(
            out,
            "<line class=\"tick\" x1=\"{x:.1}\" y1=\"{AXIS_HEIGHT_PX}\" x2=\"{x:.1}\" \
             y2=\"{height_px}\"/><text class=\"tick-label\" x=\"{x:.1}\" y=\"14\">+{}</text>",
            duration_ms(offset_ms)
        );
    }
}

fn draw_lane(out: &mut String, lane: &Lane, top: u64, scale: &Scale, end: Timestamp) {
    let label = escape(&cut(&lane.label, LABEL_CHARS_MAX));
    let full = escape(&lane.label);
    let mid = top + LANE_HEIGHT_PX / 2;
    let _ = write!(
        out,
        "<g class=\"lane {}\"><text class=\"lane-label\" x=\"4\" y=\"{}\"><title>{full}</title>\
         {label}</text><line class=\"lane-rule\" x1=\"0\" y1=\"{}\" x2=\"{:.1}\" y2=\"{}\"/>",
        lane.class,
        mid + 4,
        top + LANE_HEIGHT_PX,
        scale.x(end) + 10.0,
        top + LANE_HEIGHT_PX,
    );
    for item in &lane.items {
        draw_item(out, item, top, scale, end);
    }
    out.push_str("</g>");
}

fn draw_item(out: &mut String, item: &Item, top: u64, scale: &Scale, end: Timestamp) {
    let title = escape(&item.title);
    match &item.href {
        Some(href) => {
            let _ = write!(out, "<a href=\"{}\">", escape(href));
        }
        None => out.push_str("<g tabindex=\"0\">"),
    }
    let x = scale.x(item.start);
    let y = top + (LANE_HEIGHT_PX - BAR_HEIGHT_PX) / 2;
    let bar_end = if item.open { Some(end) } else { item.end };
    match bar_end {
        Some(bar_end) => {
            let width = (scale.x(bar_end) - x).max(BAR_WIDTH_MIN_PX);
            let open = if item.open { " open" } else { "" };
            let _ = write!(
                out,
                "<rect class=\"bar {}{open}\" data-bar=\"1\" x=\"{x:.1}\" y=\"{y}\" \
                 width=\"{width:.1}\" height=\"{BAR_HEIGHT_PX}\" rx=\"2\"><title>{title}</title></rect>",
                item.class
            );
            for segment in &item.segments {
                draw_segment(out, segment, y, scale);
            }
        }
        None => {
            let mid = top + LANE_HEIGHT_PX / 2;
            let _ = write!(
                out,
                "<circle class=\"point {}\" data-point=\"1\" cx=\"{x:.1}\" cy=\"{mid}\" r=\"5\">\
                 <title>{title}</title></circle>",
                item.class
            );
        }
    }
    out.push_str(if item.href.is_some() { "</a>" } else { "</g>" });
}

fn draw_segment(out: &mut String, segment: &Segment, y: u64, scale: &Scale) {
    let x = scale.x(segment.start);
    let mut width = scale.x(segment.end) - x;
    if segment.class == "attempt" {
        // An attempt that failed at once still shows as a sliver.
        width = width.max(ATTEMPT_WIDTH_MIN_PX);
    }
    if width < 1.0 {
        return;
    }
    let _ = write!(
        out,
        "<rect class=\"segment {}\" x=\"{x:.1}\" y=\"{}\" width=\"{width:.1}\" height=\"{}\">\
         <title>{}</title></rect>",
        segment.class,
        y + 2,
        BAR_HEIGHT_PX - 4,
        escape(&segment.title)
    );
}

/// The timeline's styles (shared by the UI's pages and the simulator's
/// self-contained failure pages).
pub const TIMELINE_CSS: &str = r#"
.timeline-wrap{overflow-x:auto;border:1px solid #d0d7de;border-radius:6px;background:#fff}
svg.timeline{display:block;font:12px system-ui,sans-serif}
svg.timeline .tick{stroke:#eef1f4}
svg.timeline .tick-label{fill:#57606a;font-size:11px}
svg.timeline .lane-rule{stroke:#f0f2f4}
svg.timeline .lane-label{fill:#24292f}
svg.timeline .bar{stroke:none}
svg.timeline .bar.completed{fill:#2da44e}
svg.timeline .bar.failed{fill:#cf222e}
svg.timeline .bar.timed-out{fill:#bc4c00}
svg.timeline .bar.canceled{fill:#8c959f}
svg.timeline .bar.open{fill:#0969da;fill-opacity:.55}
svg.timeline .bar.fault{fill:#cf222e;fill-opacity:.45;stroke:#cf222e;stroke-width:1}
svg.timeline .segment.queued{fill:#fff;fill-opacity:.55}
svg.timeline .segment.retrying{fill:url(#none);fill:#fff;fill-opacity:.35;stroke:#fff;stroke-dasharray:3 2}
svg.timeline .segment.running{fill:none}
svg.timeline .segment.attempt{fill:#cf222e;fill-opacity:.55}
svg.timeline .segment.backoff{fill:#fff;fill-opacity:.8}
svg.timeline .point{stroke:#fff;stroke-width:1.5}
svg.timeline .point.signal{fill:#8250df}
svg.timeline .point.marker{fill:#bf8700}
svg.timeline .point.cancel,svg.timeline .point.fault{fill:#cf222e}
svg.timeline .point.start,svg.timeline .point.close{fill:#24292f}
svg.timeline a:focus rect,svg.timeline a:focus circle,svg.timeline a:hover rect,svg.timeline a:hover circle{stroke:#0969da;stroke-width:2}
"#;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::history::{ActivityTaskCompleted, HistoryBuilder};
    use crate::types::Failure;

    /// A run: a workflow task, an activity that succeeded on its third
    /// attempt, a timer still running, a signal.
    fn history() -> Vec<Event> {
        let mut b = HistoryBuilder::new("greet", json!("ana"));
        b.add_full_workflow_task();
        let scheduled = b.add_activity_scheduled("1", "<send>", json!(null));
        b.advance_ms(900);
        let failure = Failure::new("Busy", "mail server busy");
        let started = b.add_activity_started(scheduled, 3, Some(failure));
        b.advance_ms(100);
        b.add(EventKind::ActivityTaskCompleted(ActivityTaskCompleted {
            scheduled_event_id: scheduled,
            started_event_id: started,
            result: json!("sent"),
            identity: "worker".to_string(),
        }));
        b.add_full_workflow_task();
        b.add_timer_started("t1", 60_000);
        b.add_signal("approve", json!(null));
        b.build().events().to_vec()
    }

    #[test]
    fn an_activity_bar_holds_its_earlier_attempts_and_backoffs_then_its_last_attempt() {
        let lanes = history_lanes(&history(), "");
        let activity = lanes
            .iter()
            .find(|l| l.class == "activity")
            .expect("an activity lane");
        let bar = &activity.items[0];
        assert_eq!(bar.class, "completed");
        let classes: Vec<&str> = bar.segments.iter().map(|s| s.class).collect();
        assert_eq!(classes, ["retrying", "running"]);
        assert!(
            bar.segments[0].title.contains("attempts 1-2"),
            "{}",
            bar.segments[0].title
        );
        assert!(bar.segments[0].title.contains("mail server busy"));
        assert_eq!(bar.segments[1].end.millis_since(bar.segments[1].start), 100);
    }

    #[test]
    fn earlier_attempts_and_their_policy_backoffs_are_drawn_one_by_one_inside_the_bar() {
        let mut b = HistoryBuilder::new("greet", json!(null));
        b.add_full_workflow_task();
        let scheduled = b.add_activity_scheduled("1", "send", json!(null));
        let scheduled_at = b.now();
        b.advance_ms(5_000);
        let failure = Failure::new("Busy", "busy");
        let started = b.add_activity_started(scheduled, 3, Some(failure));
        b.add(EventKind::ActivityTaskCompleted(ActivityTaskCompleted {
            scheduled_event_id: scheduled,
            started_event_id: started,
            result: json!(null),
            identity: "worker".to_string(),
        }));
        let lanes = history_lanes(b.build().events(), "");
        let bar = &lanes
            .iter()
            .find(|l| l.class == "activity")
            .expect("activity")
            .items[0];
        let parts: Vec<(&str, u64, u64)> = bar
            .segments
            .iter()
            .filter(|s| s.class == "attempt" || s.class == "backoff")
            .map(|s| {
                (
                    s.class,
                    s.start.millis_since(scheduled_at),
                    s.end.millis_since(scheduled_at),
                )
            })
            .collect();
        // The default policy backs off 1 s then 2 s; the 2 s left are shared by attempts 1 and 2.
        let expected = [
            ("attempt", 0, 1_000),
            ("backoff", 1_000, 2_000),
            ("attempt", 2_000, 3_000),
            ("backoff", 3_000, 5_000),
        ];
        assert_eq!(parts, expected);
        assert!(
            bar.segments
                .iter()
                .any(|s| s.title == "backoff after attempt 2: 2.0s (retry policy)")
        );
    }

    #[test]
    fn an_update_is_a_lane_from_its_acceptance_to_its_completion() {
        use crate::history::{
            UpdateOutcome, WorkflowExecutionUpdateAccepted, WorkflowExecutionUpdateCompleted,
        };
        let mut b = HistoryBuilder::new("cart", json!(null));
        let completed = b.add_full_workflow_task();
        let accepted = b.add(EventKind::WorkflowExecutionUpdateAccepted(
            WorkflowExecutionUpdateAccepted {
                update_id: "u-1".into(),
                update_name: "add".into(),
                input: json!("apple"),
                identity: "client".into(),
                workflow_task_completed_event_id: completed,
            },
        ));
        b.advance_ms(1_500);
        let completed = b.add_full_workflow_task();
        b.add(EventKind::WorkflowExecutionUpdateCompleted(
            WorkflowExecutionUpdateCompleted {
                update_id: "u-1".into(),
                accepted_event_id: accepted,
                outcome: UpdateOutcome::Failure(Failure::new("Full", "the cart is full")),
                workflow_task_completed_event_id: completed,
            },
        ));
        let lanes = history_lanes(b.build().events(), "");
        let update = lanes
            .iter()
            .find(|l| l.class == "update")
            .expect("an update lane");
        assert_eq!(update.label, "update add · u-1");
        let bar = &update.items[0];
        assert_eq!(bar.class, "failed");
        assert_eq!(bar.end.map(|end| end.millis_since(bar.start)), Some(1_500));
        assert!(
            bar.title.contains("WorkflowExecutionUpdateCompleted"),
            "{}",
            bar.title
        );
    }

    #[test]
    fn a_local_activity_marker_is_a_point_naming_its_type_attempt_and_outcome() {
        let mut b = HistoryBuilder::new("pay", json!(null));
        b.add_full_workflow_task();
        let details =
            json!({"seq": 1, "activity_type": "check_card", "attempt": 2, "result": true});
        b.add_marker("LocalActivity", details);
        b.add_marker("Patch", json!({"id": "v2"}));
        let titles: Vec<String> = b
            .build()
            .events()
            .iter()
            .filter_map(point_item)
            .map(|item| item.title)
            .collect();
        assert!(
            titles[1].starts_with("local activity check_card completed (attempt 2)"),
            "{titles:?}"
        );
        assert!(titles[2].starts_with("marker Patch"), "{titles:?}");
    }

    #[test]
    fn an_open_timer_runs_to_now_and_signals_are_points() {
        let events = history();
        let last = events.last().expect("events").event_time;
        let now = last.plus_ms(5_000);
        let timeline = Timeline::new(history_lanes(&events, ""), Some(now));
        assert_eq!(
            timeline.end, now,
            "the open timer stretches the span to now"
        );
        assert_eq!(timeline.bars_in("timer"), 1);
        assert_eq!(timeline.bars_in("activity"), 1);
        assert_eq!(timeline.bars_in("workflow-task"), 2);
        let points = timeline
            .lanes
            .iter()
            .find(|l| l.label == "signals")
            .expect("a signals lane");
        assert!(
            points
                .items
                .iter()
                .any(|i| i.class == "signal" && i.end.is_none())
        );
    }

    #[test]
    fn the_svg_escapes_labels_and_links_every_bar_to_its_event() {
        let events = history();
        let svg = render(&Timeline::new(history_lanes(&events, "r0-"), None), 1);
        assert!(
            svg.contains("&lt;send&gt;") && !svg.contains("<send>"),
            "{svg}"
        );
        let closing = events
            .iter()
            .find(|e| e.kind.name() == "ActivityTaskCompleted")
            .expect("closed");
        assert!(svg.contains(&format!("href=\"#r0-e{}\"", closing.event_id)));
        assert_eq!(
            svg.matches("data-bar=\"1\"").count(),
            4,
            "2 workflow tasks, 1 activity, 1 timer"
        );
    }

    #[test]
    fn zoom_widens_the_plot_and_is_bounded() {
        let timeline = Timeline::new(history_lanes(&history(), ""), None);
        let width = |zoom| {
            let svg = render(&timeline, zoom);
            let start = svg.find("width=\"").expect("a width") + 7;
            svg[start..]
                .split('"')
                .next()
                .expect("a number")
                .parse::<u64>()
                .expect("digits")
        };
        let label = label_width_px(&timeline);
        assert!(
            (LABEL_WIDTH_MIN_PX..LABEL_WIDTH_PX).contains(&label),
            "{label}"
        );
        assert_eq!(width(1), label + PLOT_WIDTH_PX + RIGHT_MARGIN_PX);
        assert_eq!(width(4), label + 4 * PLOT_WIDTH_PX + RIGHT_MARGIN_PX);
        assert_eq!(width(1_000), width(ZOOM_MAX));
    }
}
