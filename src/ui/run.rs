//! The run page: what the run is and holds, its actions, its timeline and
//! its history.

use std::fmt::Write as _;

use serde_json::Value;

use crate::api::{PendingActivity, RunDescription};
use crate::history::{Event, EventKind};
use crate::types::{Failure, Timestamp};

use super::html::{duration_ms, escape, pretty_json, query, short_json};
use super::timeline::{self, Timeline};
use super::{flash, live_toggle, page, status_badge};

/// How much of each event the history shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryView {
    /// One line per event; its attributes unfold on demand.
    Compact,
    /// Every event's attributes, unfolded.
    Full,
}

/// Everything the run page shows.
#[derive(Clone, Debug, PartialEq)]
pub struct RunView {
    /// The run as `describe` sees it.
    pub description: RunDescription,
    /// Its history (the first events only when `history_cut`).
    pub events: Vec<Event>,
    /// The history was longer than what was read.
    pub history_cut: bool,
    /// Compact or full history.
    pub view: HistoryView,
    /// Timeline zoom (1 = fits the page).
    pub zoom: u32,
    /// When the page was made.
    pub now: Timestamp,
    /// A message above the page (an action's outcome), and whether it is an error.
    pub flash: Option<(String, bool)>,
}

impl RunView {
    fn href(&self, view: HistoryView, zoom: u32) -> String {
        let d = &self.description;
        let zoom = if zoom > 1 {
            zoom.to_string()
        } else {
            String::new()
        };
        let view = if view == HistoryView::Full {
            "full"
        } else {
            ""
        };
        let pairs = [
            ("id", d.workflow_id.as_str()),
            ("run", d.run_id.as_str()),
            ("view", view),
            ("zoom", zoom.as_str()),
        ];
        format!("/run{}", query(&pairs))
    }

    fn run_query(&self) -> String {
        let d = &self.description;
        query(&[("id", &d.workflow_id), ("run", &d.run_id)])
    }
}

/// The run page.
pub fn run_page(view: &RunView) -> String {
    let d = &view.description;
    let mut body = format!(
        "<p class=\"muted\"><a href=\"/\">Runs</a> / {}</p><h1 id=\"live-head\" data-live>{} {}</h1>",
        escape(&d.workflow_type),
        escape(&d.workflow_id),
        status_badge(d.status)
    );
    if let Some((message, error)) = &view.flash {
        body.push_str(&flash(message, *error));
    }
    let _ = write!(
        body,
        "<div class=\"toolbar\">{}<a href=\"{}\">Refresh</a></div><div id=\"live-region\" data-live>",
        live_toggle(),
        escape(&view.href(view.view, view.zoom))
    );
    body.push_str(&summary(view));
    body.push_str(&outcome(view));
    body.push_str(&pending(d, view.now));
    body.push_str(&timeline_section(view));
    body.push_str("</div>");
    if !d.status.is_closed() {
        body.push_str(&actions(view));
    }
    body.push_str(&history_section(view));
    page(&format!("{} ({})", d.workflow_id, d.status.as_str()), &body)
}

/// The workers that ran the run's tasks, in order of first appearance.
fn workers(events: &[Event]) -> Vec<&str> {
    let mut seen: Vec<&str> = Vec::new();
    for event in events {
        let identity = match &event.kind {
            EventKind::WorkflowTaskStarted(a) => a.identity.as_str(),
            EventKind::ActivityTaskStarted(a) => a.identity.as_str(),
            _ => continue,
        };
        if !identity.is_empty() && !seen.contains(&identity) {
            seen.push(identity);
        }
    }
    seen
}

fn summary(view: &RunView) -> String {
    let d = &view.description;
    let end = d.close_time.unwrap_or(view.now);
    let so_far = if d.close_time.is_none() {
        " so far"
    } else {
        ""
    };
    let close = d.close_time.map_or("—".to_string(), |t| t.to_string());
    let workers = workers(&view.events)
        .iter()
        .map(|w| escape(w))
        .collect::<Vec<_>>()
        .join(", ");
    let mut rows = vec![
        (
            "Workflow id",
            format!("<code>{}</code>", escape(&d.workflow_id)),
        ),
        ("Run id", format!("<code>{}</code>", escape(&d.run_id))),
        ("Workflow type", escape(&d.workflow_type)),
        (
            "Task queue",
            format!("<a href=\"/task-queues\">{}</a>", escape(&d.task_queue)),
        ),
        ("Status", status_badge(d.status)),
        ("Started", d.start_time.to_string()),
        ("Closed", close),
        (
            "Duration",
            format!("{}{so_far}", duration_ms(end.millis_since(d.start_time))),
        ),
        ("History", format!("{} events", d.history_length)),
        (
            "Workers",
            if workers.is_empty() {
                "—".to_string()
            } else {
                workers
            },
        ),
    ];
    rows.extend(related_runs(&d.workflow_id, &view.events));
    if let Some(task) = &d.workflow_task {
        rows.push(("Workflow task", escape(task)));
    }
    if d.cancel_requested {
        rows.push(("Cancel", "requested".to_string()));
    }
    if !d.search_attributes.is_empty() {
        rows.push(("Search attributes", search_attributes(d)));
    }
    if !d.memo.is_empty() {
        let memo = serde_json::to_string(&d.memo).unwrap_or_default();
        rows.push(("Memo", format!("<code>{}</code>", escape(&memo))));
    }
    let mut out =
        String::from("<section class=\"card\" aria-label=\"summary\"><dl class=\"summary\">");
    for (name, value) in rows {
        let _ = write!(out, "<dt>{name}</dt><dd>{value}</dd>");
    }
    out.push_str("</dl></section>");
    out
}

/// The run's search attributes, one per line: name, value and kind.
fn search_attributes(d: &RunDescription) -> String {
    let mut out = String::from("<ul class=\"search-attributes\">");
    for (name, value) in &d.search_attributes {
        let _ = write!(
            out,
            "<li><code>{}</code> = <code>{}</code> <small>{}</small></li>",
            escape(name),
            escape(&crate::visibility::display_value(value)),
            value.kind()
        );
    }
    out.push_str("</ul>");
    out
}

fn run_link(workflow_id: &str, run_id: &str) -> String {
    let href = format!("/run{}", query(&[("id", workflow_id), ("run", run_id)]));
    format!(
        "<a href=\"{}\"><code>{}</code> <code>{}</code></a>",
        escape(&href),
        escape(workflow_id),
        escape(run_id)
    )
}

/// Links to the runs this one is tied to: its parent, the run it continues,
/// the run that continues it, its children.
fn related_runs(workflow_id: &str, events: &[Event]) -> Vec<(&'static str, String)> {
    let mut rows = Vec::new();
    let mut children = Vec::new();
    for event in events {
        match &event.kind {
            EventKind::WorkflowExecutionStarted(a) => {
                if let Some(parent) = &a.parent {
                    rows.push(("Parent", run_link(&parent.workflow_id, &parent.run_id)));
                }
                if let Some(run_id) = &a.continued_execution_run_id {
                    rows.push(("Continues", run_link(workflow_id, run_id)));
                }
            }
            EventKind::WorkflowExecutionContinuedAsNew(a) => {
                rows.push((
                    "Continued as",
                    run_link(workflow_id, &a.new_execution_run_id),
                ));
            }
            EventKind::ChildWorkflowExecutionStarted(a) => {
                children.push(run_link(&a.workflow_id, &a.run_id));
            }
            _ => {}
        }
    }
    if !children.is_empty() {
        rows.push(("Children", children.join("<br>")));
    }
    rows
}

/// A failure and its causes, outermost first.
fn failure_chain(failure: &Failure) -> String {
    let mut out = String::from("<ol class=\"chain\">");
    for link in failure.chain() {
        let _ = write!(
            out,
            "<li><b>{}</b>: {}{}</li>",
            escape(&link.failure_type),
            escape(&link.message),
            link.details
                .as_ref()
                .map(|d| format!(" <code>{}</code>", short_json(d)))
                .unwrap_or_default()
        );
    }
    out.push_str("</ol>");
    out
}

fn outcome(view: &RunView) -> String {
    let mut out = String::from("<section class=\"card\" aria-label=\"input and outcome\">");
    let started = view.events.iter().find_map(|e| match &e.kind {
        EventKind::WorkflowExecutionStarted(a) => Some(a),
        _ => None,
    });
    if let Some(started) = started {
        let _ = write!(
            out,
            "<h2>Input</h2><pre>{}</pre>",
            pretty_json(&started.input)
        );
    }
    let close = view.events.iter().rev().find(|e| e.kind.is_terminal());
    match close.map(|e| &e.kind) {
        Some(EventKind::WorkflowExecutionCompleted(a)) => {
            let _ = write!(
                out,
                "<h2>Result</h2><pre id=\"result\">{}</pre>",
                pretty_json(&a.result)
            );
        }
        Some(EventKind::WorkflowExecutionFailed(a)) => {
            let _ = write!(out, "<h2>Failure</h2>{}", failure_chain(&a.failure));
        }
        Some(EventKind::WorkflowExecutionTerminated(a)) => {
            let _ = write!(out, "<h2>Terminated</h2><p>{}</p>", escape(&a.reason));
        }
        Some(kind) => {
            let _ = write!(out, "<h2>Closed</h2><p>{}</p>", kind.name());
        }
        None => {}
    }
    if let Some(failure) = &view.description.last_workflow_task_failure {
        let _ = write!(
            out,
            "<h2>Last workflow task failure</h2>{}",
            failure_chain(failure)
        );
    }
    out.push_str("</section>");
    out
}

fn pending_activity_row(a: &PendingActivity, now: Timestamp) -> String {
    let failure = a
        .last_failure
        .as_ref()
        .map(failure_chain)
        .unwrap_or_else(|| "—".to_string());
    let heartbeat = match (&a.last_heartbeat_time, &a.heartbeat_details) {
        (Some(at), details) => format!(
            "{} ago{}",
            duration_ms(now.millis_since(*at)),
            details
                .as_ref()
                .map(|d| format!(" <code>{}</code>", short_json(d)))
                .unwrap_or_default()
        ),
        (None, _) => "—".to_string(),
    };
    let next = a.next_attempt_time.map_or("—".to_string(), |t| {
        format!("{t} (in {})", duration_ms(t.millis_since(now)))
    });
    format!(
        "<tr><td class=\"id\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{failure}</td>\
         <td>{heartbeat}</td><td>{next}</td></tr>",
        escape(&a.activity_id),
        escape(&a.activity_type),
        escape(&a.state),
        a.attempt,
        a.worker_identity
            .as_deref()
            .map(escape)
            .unwrap_or_else(|| "—".to_string()),
    )
}

fn pending(d: &RunDescription, now: Timestamp) -> String {
    let mut out = String::new();
    if !d.pending_activities.is_empty() {
        out.push_str(
            "<h2>Pending activities</h2><div class=\"scroll\"><table><thead><tr><th>Id</th><th>Type</th>\
             <th>State</th><th>Attempt</th><th>Worker</th><th>Last failure</th><th>Last heartbeat</th>\
             <th>Next retry</th></tr></thead><tbody>",
        );
        for a in &d.pending_activities {
            out.push_str(&pending_activity_row(a, now));
        }
        out.push_str("</tbody></table></div>");
    }
    if !d.buffered_signals.is_empty() {
        out.push_str(
            "<h2>Buffered signals</h2><p class=\"muted\">Received while a workflow task ran; \
             written to the history when it closes.</p><div class=\"scroll\"><table><thead><tr>\
             <th>Name</th><th>Input</th><th>Sent by</th></tr></thead><tbody>",
        );
        for signal in &d.buffered_signals {
            let _ = write!(
                out,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                escape(&signal.signal_name),
                short_json(&signal.input),
                escape(&signal.identity)
            );
        }
        out.push_str("</tbody></table></div>");
    }
    if !d.pending_timers.is_empty() {
        out.push_str("<h2>Pending timers</h2><div class=\"scroll\"><table><thead><tr><th>Id</th><th>Fires at</th><th>In</th></tr></thead><tbody>");
        for t in &d.pending_timers {
            let _ = write!(
                out,
                "<tr><td class=\"id\">{}</td><td>{}</td><td>{}</td></tr>",
                escape(&t.timer_id),
                t.fire_time,
                duration_ms(t.fire_time.millis_since(now))
            );
        }
        out.push_str("</tbody></table></div>");
    }
    out
}

fn timeline_section(view: &RunView) -> String {
    let mut lanes = timeline::history_lanes(&view.events, "");
    show_pending_activities(&mut lanes, &view.description, view.now);
    let open = !view.description.status.is_closed();
    let timeline = Timeline::new(lanes, open.then_some(view.now));
    let mut zooms = String::new();
    for zoom in [1, 2, 4, 8, 16] {
        let current = if zoom == view.zoom.max(1) {
            " aria-current=\"true\""
        } else {
            ""
        };
        let _ = write!(
            zooms,
            " <a{current} href=\"{}#timeline\">{zoom}×</a>",
            escape(&view.href(view.view, zoom))
        );
    }
    format!(
        "<section id=\"timeline\" aria-label=\"timeline\"><h2>Timeline</h2><div class=\"toolbar\">\
         <span class=\"muted\">Zoom:</span>{zooms}<span class=\"muted\">Hover a bar to see its event; \
         bars link to it. Activity bars: the wait for a worker (light) or each earlier attempt \
         (red) and its backoff (light), then the last attempt.</span></div><div class=\"timeline-wrap\" tabindex=\"0\">{}</div>\
         <p id=\"timeline-detail\" class=\"muted\" aria-live=\"polite\"></p></section>",
        timeline::render(&timeline, view.zoom)
    )
}

/// What `describe` knows of an open activity, on its open bar: the attempt,
/// the last failure and the next retry (an activity retrying draws its
/// attempts so far as a dashed part).
fn show_pending_activities(lanes: &mut [timeline::Lane], d: &RunDescription, now: Timestamp) {
    for pending in &d.pending_activities {
        let label = format!("{} · {}", pending.activity_type, pending.activity_id);
        let lane = lanes
            .iter_mut()
            .find(|l| l.class == "activity" && l.label == label);
        let Some(item) = lane.and_then(|l| l.items.first_mut()).filter(|i| i.open) else {
            continue;
        };
        let _ = write!(
            item.title,
            "; {} attempt {}",
            pending.state, pending.attempt
        );
        if let Some(failure) = &pending.last_failure {
            let _ = write!(
                item.title,
                "; last failure {}: {}",
                failure.failure_type, failure.message
            );
        }
        if let Some(next) = pending.next_attempt_time {
            let _ = write!(item.title, "; next attempt at {next}");
        }
        if pending.attempt > 1 {
            item.segments.push(timeline::Segment {
                start: item.start,
                end: now,
                class: "retrying",
                title: item.title.clone(),
            });
        }
    }
}

fn actions(view: &RunView) -> String {
    let hidden = format!(
        "<input type=\"hidden\" name=\"id\" value=\"{}\"><input type=\"hidden\" name=\"run\" value=\"{}\">",
        escape(&view.description.workflow_id),
        escape(&view.description.run_id)
    );
    format!(
        "<section id=\"actions\" data-live aria-label=\"actions\"><h2>Actions</h2><div class=\"actions\">\
         <form method=\"post\" action=\"/run/signal\" id=\"signal-form\"><h3>Signal</h3>{hidden}\
         <label for=\"signal-name\">Name</label><input id=\"signal-name\" name=\"name\" required>\
         <label for=\"signal-input\">Input (JSON)</label><textarea id=\"signal-input\" name=\"input\" rows=\"2\">null</textarea>\
         <button class=\"primary\" type=\"submit\">Send signal</button></form>\
         <form method=\"post\" action=\"/run/query\" id=\"query-form\"><h3>Query</h3>{hidden}\
         <label for=\"query-name\">Name</label><input id=\"query-name\" name=\"name\" required>\
         <label for=\"query-args\">Arguments (JSON)</label><textarea id=\"query-args\" name=\"args\" rows=\"2\">null</textarea>\
         <button type=\"submit\">Run query</button></form>\
         <form method=\"post\" action=\"/run/cancel\" id=\"cancel-form\"><h3>Cancel</h3>{hidden}\
         <label for=\"cancel-reason\">Reason</label><input id=\"cancel-reason\" name=\"reason\">\
         <label class=\"check\"><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> I want to cancel this run</label>\
         <button type=\"submit\">Request cancellation</button></form>\
         <form method=\"post\" action=\"/run/terminate\" id=\"terminate-form\"><h3>Terminate</h3>{hidden}\
         <label for=\"terminate-reason\">Reason</label><input id=\"terminate-reason\" name=\"reason\">\
         <label class=\"check\"><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> I want to terminate this run now</label>\
         <button class=\"danger\" type=\"submit\">Terminate</button></form></div></section>"
    )
}

/// One line of what an event says: its attributes as compact JSON.
fn event_attributes(event: &Event) -> Value {
    let value = serde_json::to_value(&event.kind).unwrap_or(Value::Null);
    value.get("attributes").cloned().unwrap_or(Value::Null)
}

fn history_section(view: &RunView) -> String {
    let full = view.view == HistoryView::Full;
    let other = if full {
        HistoryView::Compact
    } else {
        HistoryView::Full
    };
    let mut out = format!(
        "<section id=\"history\" data-live aria-label=\"event history\"><h2>Event history</h2><div class=\"toolbar\">\
         <a href=\"{}#history\">{} view</a><a href=\"/run/history.json{}\" download>Download JSON</a>\
         <span class=\"muted\">{} events</span></div>",
        escape(&view.href(other, view.zoom)),
        if full { "Compact" } else { "Full" },
        escape(&view.run_query()),
        view.events.len()
    );
    if view.history_cut {
        out.push_str(&flash(
            "Only the first events are shown; download the JSON for all of them.",
            false,
        ));
    }
    out.push_str(&history_table(&view.events, "", full));
    out.push_str("</section>");
    out
}

/// A history as a table, one row per event (`id="{anchor_prefix}e{id}"`, the
/// timeline's links), its attributes unfolded when `full`.
pub fn history_table(events: &[Event], anchor_prefix: &str, full: bool) -> String {
    let mut out = String::from(
        "<div class=\"scroll\"><table class=\"history\"><thead><tr><th>Id</th><th>Time</th>\
         <th>Type</th><th>Attributes</th></tr></thead><tbody>",
    );
    let first = events.first().map_or(Timestamp(0), |e| e.event_time);
    let open = if full { " open" } else { "" };
    let prefix = escape(anchor_prefix);
    for event in events {
        let attributes = event_attributes(event);
        let _ = write!(
            out,
            "<tr id=\"{prefix}e{id}\"><td>{id}</td><td title=\"{time}\">+{}</td><td>{}</td><td>\
             <details class=\"event\" id=\"{prefix}d{id}\"{open}><summary><code>{}</code></summary>\
             <pre>{}</pre></details></td></tr>",
            duration_ms(event.event_time.millis_since(first)),
            event.kind.name(),
            short_json(&attributes),
            pretty_json(&attributes),
            id = event.event_id,
            time = event.event_time,
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::env::RunStatus;
    use crate::history::HistoryBuilder;

    fn view(workflow_id: &str, events: Vec<Event>, status: RunStatus) -> RunView {
        RunView {
            description: RunDescription {
                workflow_id: workflow_id.to_string(),
                run_id: "r1".to_string(),
                workflow_type: "greet".to_string(),
                task_queue: "q".to_string(),
                status,
                start_time: Timestamp(1_000),
                close_time: None,
                history_length: events.len() as u64,
                pending_activities: Vec::new(),
                pending_timers: Vec::new(),
                workflow_task: None,
                last_workflow_task_failure: None,
                cancel_requested: false,
                buffered_signals: Vec::new(),
                search_attributes: Default::default(),
                memo: Default::default(),
            },
            events,
            history_cut: false,
            view: HistoryView::Compact,
            zoom: 1,
            now: Timestamp(5_000),
            flash: None,
        }
    }

    #[test]
    fn hostile_ids_payloads_and_failures_are_shown_as_text() {
        let hostile = "<script>alert(1)</script>";
        let mut b = HistoryBuilder::for_run(hostile, "r1", "greet", json!({"x": hostile}));
        b.add_full_workflow_task();
        let failure = Failure::new("<b>Type</b>", hostile);
        b.add_workflow_execution_failed(failure);
        let html = run_page(&view(
            hostile,
            b.build().events().to_vec(),
            RunStatus::Failed,
        ));
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<b>Type</b>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(
            html.contains("<h2>Failure</h2><ol class=\"chain\"><li><b>&lt;b&gt;Type&lt;/b&gt;</b>")
        );
    }

    #[test]
    fn a_closed_run_has_no_action_forms_and_an_open_one_has_all_four() {
        let mut b = HistoryBuilder::new("greet", json!(null));
        b.add_full_workflow_task();
        let open = run_page(&view(
            "w",
            b.history().events().to_vec(),
            RunStatus::Running,
        ));
        for form in ["signal", "query", "cancel", "terminate"] {
            assert!(open.contains(&format!("action=\"/run/{form}\"")), "{form}");
        }
        b.add_workflow_execution_completed(json!("done"));
        let closed = run_page(&view(
            "w",
            b.build().events().to_vec(),
            RunStatus::Completed,
        ));
        assert!(!closed.contains("method=\"post\""));
        assert!(closed.contains("<pre id=\"result\">&quot;done&quot;</pre>"));
    }

    #[test]
    fn the_full_view_unfolds_every_event_and_the_compact_view_none() {
        let mut b = HistoryBuilder::new("greet", json!(null));
        b.add_full_workflow_task();
        let events = b.build().events().to_vec();
        assert_eq!(
            history_table(&events, "", true)
                .matches("<details class=\"event\" id=\"d")
                .count(),
            4
        );
        assert_eq!(
            history_table(&events, "", true).matches(" open>").count(),
            4
        );
        assert_eq!(
            history_table(&events, "", false).matches(" open>").count(),
            0
        );
    }

    #[test]
    fn an_activity_still_retrying_shows_its_attempt_last_failure_and_next_retry_on_its_bar() {
        let mut b = HistoryBuilder::new("greet", json!(null));
        b.add_full_workflow_task();
        b.add_activity_scheduled("1", "send", json!(null));
        let events = b.build().events().to_vec();
        let last = events.last().expect("events").event_time;
        let mut run = view("w", events, RunStatus::Running);
        run.now = last.plus_ms(5_000);
        run.description.pending_activities.push(PendingActivity {
            activity_id: "1".to_string(),
            activity_type: "send".to_string(),
            state: "BackingOff".to_string(),
            attempt: 3,
            last_failure: Some(Failure::new("Busy", "mail server busy")),
            heartbeat_details: None,
            last_heartbeat_time: None,
            next_attempt_time: Some(last.plus_ms(9_000)),
            worker_identity: None,
        });
        let html = run_page(&run);
        let svg = &html[html.find("<svg").expect("a timeline")..];
        assert!(
            svg.contains("BackingOff attempt 3; last failure Busy: mail server busy"),
            "{svg}"
        );
        assert!(svg.contains("class=\"segment retrying\""), "{svg}");
        assert!(
            html.contains("(in 4.0s)"),
            "the next retry in the pending table"
        );
    }

    #[test]
    fn a_continued_run_links_the_run_it_continues_and_a_child_its_parent() {
        let mut b = HistoryBuilder::for_run("w&1", "r2", "greet", json!(null));
        b.continues("r1");
        let html = run_page(&view(
            "w&1",
            b.build().events().to_vec(),
            RunStatus::Running,
        ));
        assert!(
            html.contains("<dt>Continues</dt><dd><a href=\"/run?id=w%261&amp;run=r1\">"),
            "{html}"
        );
    }

    #[test]
    fn a_workflow_task_not_closed_yet_is_an_open_bar() {
        let mut b = HistoryBuilder::new("greet", json!(null));
        b.add_workflow_task_scheduled();
        let events = b.build().events().to_vec();
        let timeline = Timeline::new(
            timeline::history_lanes(&events, ""),
            Some(Timestamp(u64::MAX / 2)),
        );
        assert_eq!(timeline.bars_in("workflow-task"), 1);
    }
}
