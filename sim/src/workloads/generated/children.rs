//! What the model holds child workflows to (`Step::Child`): the parent's
//! history and the child's, each against the other, and the parent close
//! policy on both sides (what it must do, and what nothing else may do).
//!
//! | promise                                                               | checked by         |
//! |-----------------------------------------------------------------------|--------------------|
//! | the parent initiated each child of its program once, none other; a parent that completed initiated all | [`check_parent`] |
//! | no start failed (the program's child ids are unique)                  | [`check_parent`]   |
//! | `ChildWorkflowExecutionStarted` names the child's first run           | [`check_parent`]   |
//! | the close the parent recorded is the child chain's (run, kind, result) | [`check_parent`]  |
//! | a parent that awaited its child and completed recorded its close, and reported what the child's history says | [`check_parent`], [`check_report`] |
//! | a child runs only if its parent initiated it, and every run of its chain names that parent | [`check_child`] |
//! | a child terminated by a parent close policy: its policy is Terminate, its parent had closed | [`check_child`] |
//! | a child asked to cancel: its policy is RequestCancel and its parent had closed, or its parent was asked to cancel | [`check_child`] |
//!
//! With the generic checks (every run closes; a close must be allowed) a
//! child that waits forever under Terminate or RequestCancel proves the
//! policy landed: nothing else can end it.

use std::collections::BTreeMap;

use retrace::history::{Event, EventKind, History, ParentExecution};
use retrace::types::ParentClosePolicy;

use super::program::{CHILD_QUEUE, ChildOf, Program, RunSpec};

/// Words of the reason a parent close policy gives a terminate.
const POLICY_REASON: &str = "parent close policy";

/// The parent's events about child `workflow_id`: the initiation, and the
/// events that name it.
struct ParentView<'h> {
    initiated: &'h Event,
    named: Vec<&'h Event>,
}

fn initiated_id(kind: &EventKind) -> Option<u64> {
    match kind {
        EventKind::StartChildWorkflowExecutionFailed(a) => Some(a.initiated_event_id),
        EventKind::ChildWorkflowExecutionStarted(a) => Some(a.initiated_event_id),
        EventKind::ChildWorkflowExecutionCompleted(a) => Some(a.initiated_event_id),
        EventKind::ChildWorkflowExecutionFailed(a) => Some(a.initiated_event_id),
        EventKind::ChildWorkflowExecutionCanceled(a) => Some(a.initiated_event_id),
        EventKind::ChildWorkflowExecutionTimedOut(a) => Some(a.initiated_event_id),
        EventKind::ChildWorkflowExecutionTerminated(a) => Some(a.initiated_event_id),
        _ => None,
    }
}

/// The child's run id and close kind a parent's close event records.
fn recorded_close(kind: &EventKind) -> Option<(&str, &'static str)> {
    let pair = match kind {
        EventKind::ChildWorkflowExecutionCompleted(a) => (a.run_id.as_str(), "Completed"),
        EventKind::ChildWorkflowExecutionFailed(a) => (a.run_id.as_str(), "Failed"),
        EventKind::ChildWorkflowExecutionCanceled(a) => (a.run_id.as_str(), "Canceled"),
        EventKind::ChildWorkflowExecutionTimedOut(a) => (a.run_id.as_str(), "TimedOut"),
        EventKind::ChildWorkflowExecutionTerminated(a) => (a.run_id.as_str(), "Terminated"),
        _ => return None,
    };
    Some(pair)
}

/// How a run closed, in the parent's words; `None` if open or continued.
fn close_name(history: &History) -> Option<&'static str> {
    let name = match &history.close_event()?.kind {
        EventKind::WorkflowExecutionCompleted(_) => "Completed",
        EventKind::WorkflowExecutionFailed(_) => "Failed",
        EventKind::WorkflowExecutionCanceled(_) => "Canceled",
        EventKind::WorkflowExecutionTimedOut(_) => "TimedOut",
        EventKind::WorkflowExecutionTerminated(_) => "Terminated",
        _ => return None,
    };
    Some(name)
}

fn views<'h>(history: &'h History, workflow_id: &str) -> Vec<ParentView<'h>> {
    let events = history.events();
    events
        .iter()
        .filter(|e| {
            matches!(&e.kind, EventKind::StartChildWorkflowExecutionInitiated(a)
                if a.workflow_id == workflow_id)
        })
        .map(|initiated| ParentView {
            initiated,
            named: events
                .iter()
                .filter(|e| initiated_id(&e.kind) == Some(initiated.event_id))
                .collect(),
        })
        .collect()
}

fn runs_of<'h>(histories: &'h BTreeMap<String, History>, workflow_id: &str) -> Vec<&'h History> {
    histories
        .values()
        .filter(|h| h.workflow_id() == workflow_id)
        .collect()
}

/// The chain's closing run (the one that did not continue as new), if closed.
fn chain_close<'h>(runs: &[&'h History]) -> Option<&'h History> {
    runs.iter().copied().find(|h| close_name(h).is_some())
}

/// The parent's side, over its history that ran the steps.
pub fn check_parent(
    spec: &RunSpec,
    history: &History,
    histories: &BTreeMap<String, History>,
    problems: &mut Vec<String>,
) {
    let completed = matches!(
        history.close_event().map(|e| &e.kind),
        Some(EventKind::WorkflowExecutionCompleted(_))
    );
    for child in spec.children() {
        let id = child.workflow_id.as_str();
        let views = views(history, id);
        match views.as_slice() {
            [] if completed => problems.push(format!("completed without starting child {id}")),
            [] => {}
            [view] => check_view(spec, child, history, view, histories, problems),
            _ => problems.push(format!("initiated child {id} {} times", views.len())),
        }
    }
    let initiated = history.events().iter().filter_map(|e| match &e.kind {
        EventKind::StartChildWorkflowExecutionInitiated(a) => Some(a.workflow_id.as_str()),
        _ => None,
    });
    for id in initiated {
        if !spec.children().any(|c| c.workflow_id == id) {
            problems.push(format!(
                "initiated child {id}, which its program does not start"
            ));
        }
    }
}

fn check_view(
    spec: &RunSpec,
    child: &RunSpec,
    history: &History,
    view: &ParentView<'_>,
    histories: &BTreeMap<String, History>,
    problems: &mut Vec<String>,
) {
    let id = &child.workflow_id;
    let of = child.parent.as_ref().expect("a child names its parent");
    if let EventKind::StartChildWorkflowExecutionInitiated(a) = &view.initiated.kind
        && (a.task_queue != CHILD_QUEUE || a.parent_close_policy != of.policy)
    {
        problems.push(format!(
            "initiated child {id} on {} under {:?} (the program says {CHILD_QUEUE}, {:?})",
            a.task_queue, a.parent_close_policy, of.policy
        ));
    }
    let runs = runs_of(histories, id);
    let mut closed = false;
    for event in &view.named {
        match &event.kind {
            EventKind::StartChildWorkflowExecutionFailed(_) => {
                problems.push(format!(
                    "child {id} failed to start: its id is the program's alone"
                ));
            }
            EventKind::ChildWorkflowExecutionStarted(a) => {
                let first = runs.iter().find(|h| h.run_id() == a.run_id);
                let parent = ParentExecution {
                    workflow_id: spec.workflow_id.clone(),
                    run_id: history.run_id().to_string(),
                    initiated_event_id: view.initiated.event_id,
                };
                let names = first.and_then(|h| started_parent(h).map(|p| (p, continued(h))));
                if names != Some((Some(&parent), false)) {
                    problems.push(format!(
                        "child {id} was recorded started as run {}, which is not its first run naming this parent",
                        a.run_id
                    ));
                }
            }
            kind => {
                let Some((run_id, how)) = recorded_close(kind) else {
                    continue;
                };
                closed = true;
                let closing = chain_close(&runs);
                let actual = closing.map(|h| (h.run_id(), close_name(h)));
                if actual != Some((run_id, Some(how))) {
                    problems.push(format!(
                        "recorded child {id} closed {how} in run {run_id}; its chain closed {actual:?}"
                    ));
                }
                check_result(kind, closing, id, problems);
            }
        }
    }
    let completed = matches!(
        history.close_event().map(|e| &e.kind),
        Some(EventKind::WorkflowExecutionCompleted(_))
    );
    if completed && of.wait && !closed {
        problems.push(format!(
            "completed after awaiting child {id}, whose close it never recorded"
        ));
    }
}

fn started_parent(history: &History) -> Option<Option<&ParentExecution>> {
    match &history.events().first()?.kind {
        EventKind::WorkflowExecutionStarted(a) => Some(a.parent.as_ref()),
        _ => None,
    }
}

fn continued(history: &History) -> bool {
    matches!(&history.events().first().map(|e| &e.kind),
        Some(EventKind::WorkflowExecutionStarted(a)) if a.continued_execution_run_id.is_some())
}

fn check_result(kind: &EventKind, closing: Option<&History>, id: &str, problems: &mut Vec<String>) {
    let EventKind::ChildWorkflowExecutionCompleted(a) = kind else {
        return;
    };
    let result = closing.and_then(|h| match &h.close_event()?.kind {
        EventKind::WorkflowExecutionCompleted(c) => Some(&c.result),
        _ => None,
    });
    if result != Some(&a.result) {
        problems.push(format!(
            "recorded child {id}'s result, which is not the one it returned"
        ));
    }
}

/// The parent's report of a child step against the child's history.
pub fn check_report(
    child: &RunSpec,
    outcome: &str,
    histories: &BTreeMap<String, History>,
    problems: &mut Vec<String>,
) {
    let of = child.parent.as_ref().expect("a child names its parent");
    let id = &child.workflow_id;
    let expected = if of.wait {
        chain_close(&runs_of(histories, id)).and_then(close_name)
    } else {
        Some("Started")
    };
    if expected != Some(outcome) {
        problems.push(format!(
            "the workflow saw child {id} end {outcome}; its history says {expected:?}"
        ));
    }
}

/// The parent's runs (by its program's spec), first to last by start.
fn parent_runs<'h>(of: &ChildOf, histories: &'h BTreeMap<String, History>) -> Vec<&'h History> {
    let mut runs = runs_of(histories, &of.parent);
    runs.sort_by_key(|h| h.events().first().map(|e| e.event_time));
    runs
}

/// The parent run that initiated the child, and the initiation.
fn initiator<'h>(runs: &[&'h History], id: &str) -> Option<(&'h History, &'h Event)> {
    runs.iter()
        .find_map(|h| views(h, id).first().map(|v| (*h, v.initiated)))
}

/// The child's side. Returns false if it has no runs (then nothing else is
/// to be checked of it).
pub fn check_child(
    program: &Program,
    child: &RunSpec,
    histories: &BTreeMap<String, History>,
    clock_spread_ms: u64,
    problems: &mut Vec<String>,
) -> bool {
    let of = child.parent.as_ref().expect("a child names its parent");
    let id = &child.workflow_id;
    let runs = runs_of(histories, id);
    let parents = parent_runs(of, histories);
    let Some((parent, initiated)) = initiator(&parents, id) else {
        if !runs.is_empty() {
            problems.push("ran, though its parent never initiated it".to_string());
        }
        return false;
    };
    if runs.is_empty() {
        // The parent closed before the start: it is never started then.
        let started = views(parent, id).iter().any(|v| !v.named.is_empty());
        if started || parent.close_event().is_none() {
            problems.push("initiated by its parent, but never started".to_string());
        }
        return false;
    }
    let named = ParentExecution {
        workflow_id: of.parent.clone(),
        run_id: parent.run_id().to_string(),
        initiated_event_id: initiated.event_id,
    };
    for run in &runs {
        if started_parent(run) != Some(Some(&named)) {
            problems.push(format!(
                "run {} does not name its parent {named:?}",
                run.run_id()
            ));
        }
    }
    let parent = (parent, clock_spread_ms);
    check_policy(program, of, parent, &runs, problems);
    true
}

/// What the parent's close did to the child, and that nothing else did it.
/// In a cluster the parent's and the child's events may be stamped by
/// different members, whose clocks read up to `clock_spread_ms` apart: an
/// act of the policy may then seem to come that much before the close.
fn check_policy(
    program: &Program,
    of: &ChildOf,
    (parent, clock_spread_ms): (&History, u64),
    runs: &[&History],
    problems: &mut Vec<String>,
) {
    let parent_closed = parent.close_event().map(|e| e.event_time);
    let after_close = |event: &Event| {
        parent_closed.is_some_and(|t| t <= event.event_time.plus_ms(clock_spread_ms))
    };
    for run in runs {
        for event in run.events() {
            match &event.kind {
                EventKind::WorkflowExecutionTerminated(a)
                    if a.reason.contains(POLICY_REASON)
                        && (of.policy != ParentClosePolicy::Terminate || !after_close(event)) =>
                {
                    problems.push(format!(
                        "terminated by a parent close policy (its policy: {:?}; parent closed at {parent_closed:?}, terminated at {})",
                        of.policy, event.event_time
                    ));
                }
                EventKind::WorkflowExecutionCancelRequested(_) => {
                    let by_policy =
                        of.policy == ParentClosePolicy::RequestCancel && after_close(event);
                    if !by_policy && !parent_asked_to_cancel(program, of) {
                        problems.push(format!(
                            "asked to cancel at {}, though neither its policy ({:?}, parent closed at {parent_closed:?}) nor its parent's cancel explains it",
                            event.event_time, of.policy
                        ));
                    }
                }
                _ => {}
            }
        }
    }
}

/// True if the parent may be asked to cancel (then it asks its children).
fn parent_asked_to_cancel(program: &Program, of: &ChildOf) -> bool {
    program.run(&of.parent).is_some_and(|parent| {
        parent.client_does(|a| matches!(a, super::program::ClientAction::Cancel))
            || super::externals::canceler_of(program, &parent.workflow_id).is_some()
    })
}

/// True if `spec` is a child its parent may cancel: by its policy, or by
/// passing on its own cancel.
pub fn may_be_canceled(program: &Program, spec: &RunSpec) -> bool {
    spec.parent.as_ref().is_some_and(|of| {
        of.policy == ParentClosePolicy::RequestCancel || parent_asked_to_cancel(program, of)
    })
}

/// True if `close` is a terminate by the child's parent close policy (the
/// rest is [`check_child`]'s).
pub fn terminated_by_policy(spec: &RunSpec, close: &Event) -> bool {
    let by_policy = matches!(&close.kind,
        EventKind::WorkflowExecutionTerminated(a) if a.reason.contains(POLICY_REASON));
    by_policy
        && spec
            .parent
            .as_ref()
            .is_some_and(|of| of.policy == ParentClosePolicy::Terminate)
}
