//! Readable views: a history as a timeline, a run description, a run table.

use std::fmt::Write as _;

use retrace::api::{RunDescription, RunSummary};
use retrace::history::{EventKind, History};
use retrace::types::Failure;
use serde_json::Value;

/// Characters of a payload shown inline before it is cut.
const PAYLOAD_CHARS_MAX: usize = 80;

/// A payload as compact JSON, cut at [`PAYLOAD_CHARS_MAX`] characters.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= PAYLOAD_CHARS_MAX {
        return text;
    }
    let cut: String = text.chars().take(PAYLOAD_CHARS_MAX).collect();
    format!("{cut}...")
}

fn failure(failure: &Failure) -> String {
    short(&Value::String(format!(
        "{}: {}",
        failure.failure_type, failure.message
    )))
}

/// A failure and its causes, outermost first: `A: a <- B: b`.
fn failure_chain(failure: &Failure) -> String {
    let links: Vec<String> = failure
        .chain()
        .map(|f| format!("{}: {}", f.failure_type, f.message))
        .collect();
    short(&Value::String(links.join(" <- ")))
}

/// What `describe` adds from the run's history: its input, how it closed,
/// and how long it ran (until `now` if it is open).
pub fn describe_history(history: &History, now: retrace::types::Timestamp) -> String {
    let mut out = String::new();
    if let Some(started) = history.started() {
        let _ = writeln!(out, "input:          {}", short(&started.input));
    }
    let close = history.close_event();
    match close.map(|e| &e.kind) {
        Some(EventKind::WorkflowExecutionCompleted(a)) => {
            let _ = writeln!(out, "result:         {}", short(&a.result));
        }
        Some(EventKind::WorkflowExecutionFailed(a)) => {
            let _ = writeln!(out, "failure:        {}", failure_chain(&a.failure));
        }
        _ => {}
    }
    if let Some(first) = history.events().first() {
        let end = close.map_or(now, |e| e.event_time);
        let ran = duration(end.millis_since(first.event_time));
        let open = if close.is_none() { " so far" } else { "" };
        let _ = writeln!(out, "duration:       {ran}{open}");
    }
    out
}

fn duration(duration_ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(duration_ms)).to_string()
}

fn started_attributes(a: &retrace::history::WorkflowExecutionStarted) -> String {
    let queue = &a.task_queue;
    let mut continued = match &a.continued_execution_run_id {
        Some(run_id) => format!(" continues={run_id}"),
        None => String::new(),
    };
    if let Some(parent) = &a.parent {
        let _ = write!(
            continued,
            " parent={} initiated={}",
            target(&parent.workflow_id, Some(&parent.run_id)),
            parent.initiated_event_id
        );
    }
    format!(
        "type={} queue={queue} input={}{continued}",
        a.workflow_type,
        short(&a.input)
    )
}

/// The attributes of an activity's event.
fn activity_attributes(kind: &EventKind) -> String {
    use EventKind::*;
    match kind {
        ActivityTaskScheduled(a) => format!(
            "activity={} type={} input={}",
            a.activity_id,
            a.activity_type,
            short(&a.input)
        ),
        ActivityTaskStarted(a) => {
            let mut text = format!("scheduled={} attempt={}", a.scheduled_event_id, a.attempt);
            if let Some(last) = &a.last_failure {
                let _ = write!(text, " last_failure={}", failure(last));
            }
            text
        }
        ActivityTaskCompleted(a) => {
            format!(
                "scheduled={} result={}",
                a.scheduled_event_id,
                short(&a.result)
            )
        }
        ActivityTaskFailed(a) => {
            format!(
                "scheduled={} failure={}",
                a.scheduled_event_id,
                failure(&a.failure)
            )
        }
        ActivityTaskTimedOut(a) => format!(
            "scheduled={} timeout={:?} retry_state={:?}",
            a.scheduled_event_id, a.timeout_type, a.retry_state
        ),
        ActivityTaskCancelRequested(a) => format!("scheduled={}", a.scheduled_event_id),
        ActivityTaskCanceled(a) => format!("scheduled={}", a.scheduled_event_id),
        _ => String::new(),
    }
}

/// The attributes of a signal or cancel request to another workflow.
fn external_attributes(kind: &EventKind) -> String {
    use EventKind::*;
    match kind {
        SignalExternalWorkflowExecutionInitiated(a) => format!(
            "to={} signal={} input={}",
            target(&a.workflow_id, a.run_id.as_deref()),
            a.signal_name,
            short(&a.input)
        ),
        RequestCancelExternalWorkflowExecutionInitiated(a) => {
            format!("to={}", target(&a.workflow_id, a.run_id.as_deref()))
        }
        ExternalWorkflowExecutionSignaled(a) => format!(
            "initiated={} run={}",
            a.initiated_event_id,
            target(&a.workflow_id, Some(&a.run_id))
        ),
        ExternalWorkflowExecutionCancelRequested(a) => format!(
            "initiated={} run={}",
            a.initiated_event_id,
            target(&a.workflow_id, Some(&a.run_id))
        ),
        SignalExternalWorkflowExecutionFailed(a) => {
            format!("initiated={} cause={:?}", a.initiated_event_id, a.cause)
        }
        RequestCancelExternalWorkflowExecutionFailed(a) => {
            format!("initiated={} cause={:?}", a.initiated_event_id, a.cause)
        }
        _ => String::new(),
    }
}

/// The attributes of a child workflow's event: where the child runs (its
/// workflow id and run id, to look it up) and how it ended.
fn child_attributes(kind: &EventKind) -> String {
    use EventKind::*;
    let closed = |initiated: u64, workflow_id: &str, run_id: &str, how: String| {
        let run = target(workflow_id, Some(run_id));
        format!("initiated={initiated} child={run} {how}")
    };
    match kind {
        StartChildWorkflowExecutionInitiated(a) => format!(
            "child={} type={} queue={} policy={:?} input={}",
            a.workflow_id,
            a.workflow_type,
            a.task_queue,
            a.parent_close_policy,
            short(&a.input)
        ),
        StartChildWorkflowExecutionFailed(a) => {
            format!("initiated={} cause={:?}", a.initiated_event_id, a.cause)
        }
        ChildWorkflowExecutionStarted(a) => format!(
            "initiated={} child={}",
            a.initiated_event_id,
            target(&a.workflow_id, Some(&a.run_id))
        ),
        ChildWorkflowExecutionCompleted(a) => closed(
            a.initiated_event_id,
            &a.workflow_id,
            &a.run_id,
            format!("result={}", short(&a.result)),
        ),
        ChildWorkflowExecutionFailed(a) => closed(
            a.initiated_event_id,
            &a.workflow_id,
            &a.run_id,
            format!("failure={}", failure(&a.failure)),
        ),
        ChildWorkflowExecutionCanceled(a) => closed(
            a.initiated_event_id,
            &a.workflow_id,
            &a.run_id,
            String::new(),
        ),
        ChildWorkflowExecutionTimedOut(a) => closed(
            a.initiated_event_id,
            &a.workflow_id,
            &a.run_id,
            String::new(),
        ),
        ChildWorkflowExecutionTerminated(a) => closed(
            a.initiated_event_id,
            &a.workflow_id,
            &a.run_id,
            format!("reason={}", short(&a.reason.clone().into())),
        ),
        _ => String::new(),
    }
}

/// A workflow id, with its run id when one is named.
fn target(workflow_id: &str, run_id: Option<&str>) -> String {
    match run_id {
        Some(run_id) => format!("{workflow_id}/{run_id}"),
        None => workflow_id.to_string(),
    }
}

/// The attributes of an event worth a glance.
fn attributes(kind: &EventKind) -> String {
    use EventKind::*;
    match kind {
        WorkflowExecutionStarted(a) => started_attributes(a),
        WorkflowTaskScheduled(a) => format!("queue={} attempt={}", a.task_queue, a.attempt),
        WorkflowTaskStarted(a) => format!("scheduled={} by={}", a.scheduled_event_id, a.identity),
        WorkflowTaskCompleted(a) => format!("started={}", a.started_event_id),
        WorkflowTaskTimedOut(a) => format!("started={} {:?}", a.started_event_id, a.timeout_type),
        WorkflowTaskFailed(a) => format!("cause={:?} failure={}", a.cause, failure(&a.failure)),
        ActivityTaskScheduled(_)
        | ActivityTaskStarted(_)
        | ActivityTaskCompleted(_)
        | ActivityTaskFailed(_)
        | ActivityTaskTimedOut(_)
        | ActivityTaskCancelRequested(_)
        | ActivityTaskCanceled(_) => activity_attributes(kind),
        TimerStarted(a) => {
            format!(
                "timer={} fires_after={}",
                a.timer_id,
                duration(a.start_to_fire_timeout_ms)
            )
        }
        TimerFired(a) => format!("timer={}", a.timer_id),
        TimerCanceled(a) => format!("timer={}", a.timer_id),
        WorkflowExecutionSignaled(a) => {
            format!("signal={} input={}", a.signal_name, short(&a.input))
        }
        MarkerRecorded(a) => format!("marker={} details={}", a.marker_name, short(&a.details)),
        UpsertWorkflowSearchAttributes(a) => format!(
            "search_attributes={}",
            short(&serde_json::to_value(&a.search_attributes).unwrap_or_default())
        ),
        WorkflowPropertiesModified(a) => format!(
            "memo={}",
            short(&serde_json::to_value(&a.upserted_memo).unwrap_or_default())
        ),
        WorkflowExecutionCancelRequested(a) => format!("cause={}", short(&a.cause.clone().into())),
        WorkflowExecutionCompleted(a) => format!("result={}", short(&a.result)),
        WorkflowExecutionFailed(a) => format!("failure={}", failure(&a.failure)),
        WorkflowExecutionTimedOut(a) => format!("retry_state={:?}", a.retry_state),
        WorkflowExecutionCanceled(_) => String::new(),
        WorkflowExecutionTerminated(a) => format!("reason={}", short(&a.reason.clone().into())),
        SignalExternalWorkflowExecutionInitiated(_)
        | RequestCancelExternalWorkflowExecutionInitiated(_)
        | ExternalWorkflowExecutionSignaled(_)
        | ExternalWorkflowExecutionCancelRequested(_)
        | SignalExternalWorkflowExecutionFailed(_)
        | RequestCancelExternalWorkflowExecutionFailed(_) => external_attributes(kind),
        StartChildWorkflowExecutionInitiated(_)
        | StartChildWorkflowExecutionFailed(_)
        | ChildWorkflowExecutionStarted(_)
        | ChildWorkflowExecutionCompleted(_)
        | ChildWorkflowExecutionFailed(_)
        | ChildWorkflowExecutionCanceled(_)
        | ChildWorkflowExecutionTimedOut(_)
        | ChildWorkflowExecutionTerminated(_) => child_attributes(kind),
        WorkflowExecutionContinuedAsNew(a) => format!(
            "new_run={} type={} input={}",
            a.new_execution_run_id,
            a.workflow_type,
            short(&a.input)
        ),
        WorkflowExecutionUpdateAccepted(a) => format!(
            "update={} name={} input={}",
            a.update_id,
            a.update_name,
            short(&a.input)
        ),
        WorkflowExecutionUpdateCompleted(a) => match &a.outcome {
            retrace::history::UpdateOutcome::Success(result) => {
                format!("update={} result={}", a.update_id, short(result))
            }
            retrace::history::UpdateOutcome::Failure(f) => {
                format!("update={} failure={}", a.update_id, failure(f))
            }
        },
    }
}

/// One line per event: id, time, type, key attributes.
pub fn timeline(history: &History) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "workflow {} run {}: {} events",
        history.workflow_id(),
        history.run_id(),
        history.len()
    );
    for event in history.events() {
        let kind = event.kind.name();
        let details = attributes(&event.kind);
        let line = format!(
            "{:>5}  {}  {kind:<34} {details}",
            event.event_id, event.event_time
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// A run's state, one fact per line.
pub fn describe(run: &RunDescription) -> String {
    let mut out = String::new();
    let close_time = run.close_time.map_or("-".to_string(), |t| t.to_string());
    let workflow_task = run.workflow_task.as_deref().unwrap_or("-");
    let _ = writeln!(out, "workflow id:    {}", run.workflow_id);
    let _ = writeln!(out, "run id:         {}", run.run_id);
    let _ = writeln!(out, "type:           {}", run.workflow_type);
    let _ = writeln!(out, "task queue:     {}", run.task_queue);
    let _ = writeln!(out, "status:         {}", run.status.as_str());
    let _ = writeln!(out, "started:        {}", run.start_time);
    let _ = writeln!(out, "closed:         {close_time}");
    let _ = writeln!(out, "history:        {} events", run.history_length);
    let _ = writeln!(out, "workflow task:  {workflow_task}");
    if run.cancel_requested {
        let _ = writeln!(out, "cancel:         requested");
    }
    if let Some(last) = &run.last_workflow_task_failure {
        let _ = writeln!(out, "last task failure: {}", failure(last));
    }
    for a in &run.pending_activities {
        let _ = write!(
            out,
            "activity:       {} {} {} attempt {}",
            a.activity_id, a.activity_type, a.state, a.attempt
        );
        match &a.last_failure {
            Some(last) => _ = writeln!(out, " last_failure={}", failure(last)),
            None => _ = writeln!(out),
        }
    }
    for t in &run.pending_timers {
        let _ = writeln!(
            out,
            "timer:          {} fires at {}",
            t.timer_id, t.fire_time
        );
    }
    for (name, value) in &run.search_attributes {
        let shown = retrace::visibility::display_value(value);
        let _ = writeln!(out, "search attr:    {name}={shown} ({})", value.kind());
    }
    if !run.memo.is_empty() {
        let memo = serde_json::to_string(&run.memo).unwrap_or_default();
        let _ = writeln!(out, "memo:           {memo}");
    }
    out
}

/// A run's search attributes on one line (`Key=value, ...`).
fn attributes_cell(run: &RunSummary) -> String {
    let shown: Vec<String> = run
        .search_attributes
        .iter()
        .map(|(name, value)| format!("{name}={}", retrace::visibility::display_value(value)))
        .collect();
    shown.join(", ")
}

/// Runs as an aligned table.
pub fn run_table(runs: &[RunSummary]) -> String {
    let mut header = vec![
        "WORKFLOW ID",
        "RUN ID",
        "TYPE",
        "STATUS",
        "STARTED",
        "CLOSED",
    ];
    // A column of search attributes when a run has some.
    let attributes = runs.iter().any(|r| !r.search_attributes.is_empty());
    if attributes {
        header.push("SEARCH ATTRIBUTES");
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let mut row = vec![
                r.workflow_id.clone(),
                r.run_id.clone(),
                r.workflow_type.clone(),
                match &r.damaged {
                    Some(_) => format!("{} (DAMAGED: see describe)", r.status.as_str()),
                    None => r.status.as_str().to_string(),
                },
                r.start_time.to_string(),
                r.close_time.map_or("-".to_string(), |t| t.to_string()),
            ];
            if attributes {
                row.push(attributes_cell(r));
            }
            row
        })
        .collect();
    table(&header, &rows)
}

/// `rows` under `header` in columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths.iter().copied())
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod describe_tests {
    use retrace::history::HistoryBuilder;
    use retrace::types::{Failure, Timestamp};
    use serde_json::json;

    use super::describe_history;

    #[test]
    fn describe_shows_a_failed_runs_input_failure_chain_and_duration() {
        let mut b = HistoryBuilder::new("pay", json!(1999));
        b.add_full_workflow_task();
        b.advance_ms(90_000);
        let declined = Failure::new("Declined", "card declined");
        let failure = Failure::new("ActivityFailure", "activity failed: card declined");
        b.add_workflow_execution_failed(failure.with_cause(Some(declined)));
        let shown = describe_history(&b.build(), Timestamp(0));
        let expected = concat!(
            "input:          1999\n",
            "failure:        \"ActivityFailure: activity failed: card declined <- Declined: card declined\"\n",
            "duration:       1m 30s\n",
        );
        assert_eq!(shown, expected);
    }

    #[test]
    fn describe_counts_an_open_runs_duration_until_now() {
        let mut b = HistoryBuilder::new("wait", json!(null));
        b.add_full_workflow_task();
        let history = b.build();
        let now = history.events()[0].event_time.plus_ms(5_000);
        assert!(describe_history(&history, now).ends_with("duration:       5s so far\n"));
    }
}
