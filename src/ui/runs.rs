//! The runs list: counts by status, filters, search by workflow id, paging,
//! newest first.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use crate::api::RunSummary;
use crate::env::RunStatus;
use crate::types::Timestamp;

use super::html::{duration_ms, escape, query};
use super::{live_toggle, page, status_badge};

/// Runs on one page of the list.
pub const RUNS_PAGE_SIZE: usize = 50;

/// What the list is narrowed to (the page's query string).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunFilter {
    /// Only this status.
    pub status: Option<RunStatus>,
    /// Only this workflow type (exact).
    pub workflow_type: String,
    /// Only this task queue (exact).
    pub task_queue: String,
    /// Started at or after: an RFC 3339 time or a duration ago (`15m`).
    pub since: String,
    /// Started before: an RFC 3339 time or a duration ago.
    pub until: String,
    /// Workflow ids containing this.
    pub search: String,
    /// A list query the service answers (see [`crate::visibility::query`]).
    pub query: String,
    /// Page, from 1.
    pub page: usize,
}

impl RunFilter {
    /// The filter a query string's pairs describe (unknown keys are ignored).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> RunFilter {
        let mut filter = RunFilter {
            page: 1,
            ..RunFilter::default()
        };
        for (key, value) in pairs {
            let value = value.trim().to_string();
            match key {
                "status" => filter.status = RunStatus::parse(&value),
                "type" => filter.workflow_type = value,
                "queue" => filter.task_queue = value,
                "since" => filter.since = value,
                "until" => filter.until = value,
                "q" => filter.search = value,
                "query" => filter.query = value,
                "page" => filter.page = value.parse().unwrap_or(1).max(1),
                _ => {}
            }
        }
        filter
    }

    /// The query string of this filter with `status` and `page` replaced.
    fn href(&self, status: Option<RunStatus>, page: usize) -> String {
        let page = if page > 1 {
            page.to_string()
        } else {
            String::new()
        };
        let status = status.map_or("", RunStatus::as_str);
        let pairs = [
            ("status", status),
            ("type", self.workflow_type.as_str()),
            ("queue", self.task_queue.as_str()),
            ("since", self.since.as_str()),
            ("until", self.until.as_str()),
            ("q", self.search.as_str()),
            ("query", self.query.as_str()),
            ("page", page.as_str()),
        ];
        format!("/{}", query(&pairs))
    }

    fn matches(&self, run: &RunSummary, range: &(Option<Timestamp>, Option<Timestamp>)) -> bool {
        (self.workflow_type.is_empty() || run.workflow_type == self.workflow_type)
            && (self.task_queue.is_empty() || run.task_queue == self.task_queue)
            && (self.search.is_empty() || run.workflow_id.contains(&self.search))
            && range.0.is_none_or(|since| run.start_time >= since)
            && range.1.is_none_or(|until| run.start_time < until)
    }
}

/// A time bound: an RFC 3339 time, or a duration before `now` (`15m`, `2h`).
pub fn parse_time(text: &str, now: Timestamp) -> Result<Option<Timestamp>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        let ago_ms = u64::try_from(ago.as_millis()).unwrap_or(u64::MAX);
        return Ok(Some(Timestamp(now.0.saturating_sub(ago_ms))));
    }
    match humantime::parse_rfc3339_weak(text) {
        Ok(time) => {
            let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
            Ok(Some(Timestamp(
                u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX),
            )))
        }
        Err(_) => Err(format!(
            "{text:?} is neither a time (2026-01-31T12:00:00Z) nor a duration ago (15m, 2h)"
        )),
    }
}

/// The list as shown: one page of the runs that match, and what the filters offer.
#[derive(Clone, Debug, PartialEq)]
pub struct RunsView {
    /// The filter in force.
    pub filter: RunFilter,
    /// Runs matching every filter but the status, by status.
    pub counts: Vec<(RunStatus, usize)>,
    /// This page's runs, newest first.
    pub rows: Vec<RunSummary>,
    /// Runs matching every filter.
    pub matching: usize,
    /// Pages of matching runs (at least 1).
    pub pages: usize,
    /// Workflow types and task queues seen, for the filters' choices.
    pub types: Vec<String>,
    /// Task queues seen.
    pub queues: Vec<String>,
    /// Set when only the first runs the store lists were read (it holds more).
    pub scan_limit: Option<usize>,
    /// A filter that could not be understood.
    pub error: Option<String>,
    /// The time the page was made (for open runs' durations).
    pub now: Timestamp,
}

impl RunsView {
    /// Filters, counts, sorts (newest first) and pages `runs`.
    pub fn select(mut runs: Vec<RunSummary>, filter: RunFilter, now: Timestamp) -> RunsView {
        let since = parse_time(&filter.since, now);
        let until = parse_time(&filter.until, now);
        let error = since.as_ref().err().or(until.as_ref().err()).cloned();
        let range = (since.ok().flatten(), until.ok().flatten());
        let mut types: Vec<String> = runs.iter().map(|r| r.workflow_type.clone()).collect();
        let mut queues: Vec<String> = runs.iter().map(|r| r.task_queue.clone()).collect();
        for list in [&mut types, &mut queues] {
            list.retain(|name| !name.is_empty());
            list.sort();
            list.dedup();
        }
        runs.retain(|run| filter.matches(run, &range));
        let counts = RunStatus::ALL
            .iter()
            .map(|s| (*s, runs.iter().filter(|r| r.status == *s).count()))
            .collect();
        runs.retain(|run| filter.status.is_none_or(|s| run.status == s));
        runs.sort_by(|a, b| (b.start_time, &b.run_id).cmp(&(a.start_time, &a.run_id)));
        let matching = runs.len();
        let pages = matching.div_ceil(RUNS_PAGE_SIZE).max(1);
        let first = (filter.page.min(pages) - 1) * RUNS_PAGE_SIZE;
        let rows = runs.into_iter().skip(first).take(RUNS_PAGE_SIZE).collect();
        RunsView {
            filter,
            counts,
            rows,
            matching,
            pages,
            types,
            queues,
            scan_limit: None,
            error,
            now,
        }
    }
}

/// The runs list page.
pub fn runs_page(view: &RunsView) -> String {
    let mut body = String::from("<h1>Workflow runs</h1>");
    if let Some(error) = &view.error {
        body.push_str(&super::flash(error, true));
    }
    if let Some(limit) = view.scan_limit {
        let note = format!(
            "The store holds more than {limit} runs: this list, its counts and filters cover \
             the first {limit} it lists (by run id) only."
        );
        body.push_str(&super::flash(&note, false));
    }
    body.push_str(&filters_form(view));
    let _ = write!(
        body,
        "<div class=\"toolbar\">{}<a href=\"{}\">Refresh</a></div><div id=\"live-region\" data-live>",
        live_toggle(),
        escape(&view.filter.href(view.filter.status, view.filter.page))
    );
    body.push_str(&counts(view));
    body.push_str(&runs_table(view));
    body.push_str(&pager(view));
    body.push_str("</div>");
    page("Workflow runs", &body)
}

fn counts(view: &RunsView) -> String {
    let all: usize = view.counts.iter().map(|(_, n)| n).sum();
    let chip = |label: &str, n: usize, status: Option<RunStatus>| {
        let active = if view.filter.status == status {
            " class=\"active\" aria-current=\"true\""
        } else {
            ""
        };
        format!(
            "<a{active} href=\"{}\" data-status=\"{label}\"><b>{n}</b>{label}</a>",
            escape(&view.filter.href(status, 1))
        )
    };
    let mut out = String::from("<nav class=\"counts\" aria-label=\"runs by status\">");
    out.push_str(&chip("All", all, None));
    for (status, n) in &view.counts {
        out.push_str(&chip(status.as_str(), *n, Some(*status)));
    }
    out.push_str("</nav>");
    out
}

fn options(selected: &str, names: &[String], any: &str) -> String {
    let mut out = format!("<option value=\"\">{any}</option>");
    for name in names {
        let sel = if name == selected { " selected" } else { "" };
        let name = escape(name);
        let _ = write!(out, "<option value=\"{name}\"{sel}>{name}</option>");
    }
    out
}

fn filters_form(view: &RunsView) -> String {
    let f = &view.filter;
    let statuses: Vec<String> = RunStatus::ALL
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    let status = f.status.map_or("", RunStatus::as_str);
    let field = |id: &str, label: &str, value: &str, hint: &str| {
        format!(
            "<div><label for=\"f-{id}\">{label}</label><input id=\"f-{id}\" name=\"{id}\" \
             value=\"{}\" placeholder=\"{hint}\"></div>",
            escape(value)
        )
    };
    format!(
        "<form class=\"filters card\" method=\"get\" action=\"/\" role=\"search\">\
         {}<div><label for=\"f-status\">Status</label><select id=\"f-status\" name=\"status\">{}</select></div>\
         <div><label for=\"f-type\">Workflow type</label><select id=\"f-type\" name=\"type\">{}</select></div>\
         <div><label for=\"f-queue\">Task queue</label><select id=\"f-queue\" name=\"queue\">{}</select></div>\
         {}{}<div class=\"query\"><label for=\"f-query\">List query</label><input id=\"f-query\" \
         name=\"query\" value=\"{}\" placeholder=\"CustomerId = &quot;c-1&quot; AND ExecutionStatus = &quot;Running&quot;\" \
         size=\"60\"></div>\
         <div><button type=\"submit\" class=\"primary\">Apply</button> <a href=\"/\">Clear</a></div></form>",
        field("q", "Workflow id contains", &f.search, "order-42"),
        options(status, &statuses, "any"),
        options(&f.workflow_type, &view.types, "any"),
        options(&f.task_queue, &view.queues, "any"),
        field(
            "since",
            "Started since",
            &f.since,
            "15m or 2026-01-31T12:00:00Z"
        ),
        field("until", "Started before", &f.until, "time or duration ago"),
        escape(&f.query),
    )
}

fn runs_table(view: &RunsView) -> String {
    if view.rows.is_empty() {
        return "<p class=\"card muted\">No runs match.</p>".to_string();
    }
    let mut out = String::from(
        "<div class=\"scroll\"><table class=\"runs\"><thead><tr><th>Status</th><th>Workflow id</th>\
         <th>Type</th><th class=\"wide\">Task queue</th><th class=\"wide\">Run id</th><th>Started</th>\
         <th class=\"wide\">Duration</th></tr></thead><tbody>",
    );
    for run in &view.rows {
        let href = format!(
            "/run{}",
            query(&[("id", &run.workflow_id), ("run", &run.run_id)])
        );
        let end = run.close_time.unwrap_or(view.now);
        let open = if run.close_time.is_none() {
            " so far"
        } else {
            ""
        };
        let damaged = match &run.damaged {
            Some(why) => format!(
                " <span class=\"status Failed\" title=\"{}\">DAMAGED</span>",
                escape(why)
            ),
            None => String::new(),
        };
        let _ = write!(
            out,
            "<tr data-run=\"{}\"><td>{}{damaged}</td><td class=\"id\"><a href=\"{}\">{}</a></td>\
             <td>{}</td><td class=\"wide\">{}</td><td class=\"id wide\"><code>{}</code></td>\
             <td><time datetime=\"{start}\">{start}</time></td><td class=\"wide\">{}{open}</td></tr>",
            escape(&run.run_id),
            status_badge(run.status),
            escape(&href),
            escape(&run.workflow_id),
            escape(&run.workflow_type),
            escape(&run.task_queue),
            escape(&run.run_id),
            duration_ms(end.millis_since(run.start_time)),
            start = run.start_time,
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

fn pager(view: &RunsView) -> String {
    let f = &view.filter;
    let current = f.page.min(view.pages);
    let mut out = String::from("<nav class=\"pager\" aria-label=\"pages\">");
    if current > 1 {
        let _ = write!(
            out,
            "<a rel=\"prev\" href=\"{}\">← Newer</a>",
            escape(&f.href(f.status, current - 1))
        );
    }
    let _ = write!(
        out,
        "<span class=\"muted\">Page {current} of {} · {} run(s)</span>",
        view.pages, view.matching
    );
    if current < view.pages {
        let _ = write!(
            out,
            "<a rel=\"next\" href=\"{}\">Older →</a>",
            escape(&f.href(f.status, current + 1))
        );
    }
    out.push_str("</nav>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, status: RunStatus, start_ms: u64) -> RunSummary {
        RunSummary {
            workflow_id: id.to_string(),
            run_id: format!("r-{id}"),
            workflow_type: "greet".to_string(),
            task_queue: "q".to_string(),
            status,
            start_time: Timestamp(start_ms),
            close_time: None,
            damaged: None,
            search_attributes: Default::default(),
        }
    }

    #[test]
    fn the_list_is_newest_first_counts_by_status_and_pages() {
        let runs: Vec<RunSummary> = (0..(RUNS_PAGE_SIZE as u64 + 3))
            .map(|i| {
                run(
                    &format!("w{i}"),
                    if i % 2 == 0 {
                        RunStatus::Running
                    } else {
                        RunStatus::Completed
                    },
                    i,
                )
            })
            .collect();
        let view = RunsView::select(
            runs,
            RunFilter::from_pairs([("page", "2")]),
            Timestamp(1_000),
        );
        assert_eq!(view.pages, 2);
        assert_eq!(view.rows.len(), 3);
        assert_eq!(view.rows[0].workflow_id, "w2", "page 2 holds the oldest");
        assert_eq!(view.counts[0], (RunStatus::Running, 27));
        assert_eq!(view.counts[1], (RunStatus::Completed, 26));
    }

    #[test]
    fn filters_narrow_by_status_id_and_start_time() {
        let runs = vec![
            run("order-1", RunStatus::Running, 10_000),
            run("order-2", RunStatus::Completed, 20_000),
            run("other", RunStatus::Running, 30_000),
        ];
        let filter = RunFilter::from_pairs([("q", "order"), ("status", "Running")]);
        let view = RunsView::select(runs.clone(), filter, Timestamp(40_000));
        let ids: Vec<&str> = view.rows.iter().map(|r| r.workflow_id.as_str()).collect();
        assert_eq!(ids, ["order-1"]);
        let filter = RunFilter::from_pairs([("since", "25s")]);
        let view = RunsView::select(runs, filter, Timestamp(40_000));
        let ids: Vec<&str> = view.rows.iter().map(|r| r.workflow_id.as_str()).collect();
        assert_eq!(ids, ["other", "order-2"], "newest first");
    }

    #[test]
    fn a_hostile_workflow_id_is_shown_as_text() {
        let runs = vec![run("<script>alert(1)</script>", RunStatus::Running, 1)];
        let html = runs_page(&RunsView::select(
            runs,
            RunFilter::from_pairs([]),
            Timestamp(2),
        ));
        assert!(!html.contains("<script>alert(1)"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }

    #[test]
    fn a_bad_time_filter_is_reported_not_ignored() {
        let view = RunsView::select(
            vec![],
            RunFilter::from_pairs([("since", "yesterday-ish")]),
            Timestamp(0),
        );
        assert!(view.error.unwrap().contains("yesterday-ish"));
    }
}

#[cfg(test)]
mod query_tests {
    use super::*;

    #[test]
    fn the_query_box_keeps_its_query_and_shows_its_error() {
        let query = "CustomerId = \"c-1\" AND";
        let filter = RunFilter::from_pairs([("query", query)]);
        assert_eq!(filter.query, query);
        assert!(filter.href(None, 2).contains("query=CustomerId"));
        let mut view = RunsView::select(Vec::new(), filter, Timestamp(0));
        view.error =
            Some("bad list query: query error at byte 22: expected an attribute name".into());
        let html = runs_page(&view);
        assert!(
            html.contains("name=\"query\" value=\"CustomerId = &quot;c-1&quot; AND\""),
            "{html}"
        );
        assert!(
            html.contains("at byte 22: expected an attribute name"),
            "{html}"
        );
    }
}
