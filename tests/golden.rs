//! Golden histories: each fixture in `fixtures/histories/` is replayed from
//! scratch, incrementally, and after a cache eviction, and must give the
//! recorded result; its canonical JSON is an insta snapshot.

mod common;

use std::path::PathBuf;

use retrace::activity::RetryPolicy;
use retrace::history::{
    ActivityTaskScheduled, ChildWorkflowExecutionCompleted, ChildWorkflowExecutionStarted,
    EventKind, History, HistoryBuilder, ParentExecution, StartChildFailedCause,
    StartChildWorkflowExecutionFailed, StartChildWorkflowExecutionInitiated, UpdateOutcome,
    WorkflowExecutionUpdateAccepted, WorkflowExecutionUpdateCompleted,
};
use retrace::types::{
    ActivityFailureInfo, Failure, FailureInfo, IdReusePolicy, ParentClosePolicy, RetryState,
};
use retrace::visibility::SearchValue;
use retrace::workflow::{ReplayError, Replayer, RunResult, WorkflowContext, WorkflowRegistry};
use serde_json::json;

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/histories")
        .join(format!("{name}.json"))
}

/// The fixture workflows, and the child workflow fixtures'.
fn registry() -> WorkflowRegistry {
    let mut registry = common::registry();
    common::register_child_workflows(&mut registry);
    registry
}

fn one_activity() -> History {
    let mut b = HistoryBuilder::new("one_activity", json!("world"));
    b.add_full_workflow_task();
    let scheduled = b.add_activity_scheduled("1", "compose", json!("world"));
    b.advance_ms(12);
    b.add_activity_completed(scheduled, json!("world!"));
    b.add_full_workflow_task();
    b.add_workflow_execution_completed(json!("world!"));
    b.build()
}

fn three_sequential() -> History {
    let mut b = HistoryBuilder::new("three_sequential", json!("a"));
    let mut text = "a".to_string();
    for activity_id in ["1", "2", "3"] {
        b.add_full_workflow_task();
        let scheduled = b.add_activity_scheduled(activity_id, "compose", json!(text));
        text.push('!');
        b.advance_ms(10);
        b.add_activity_completed(scheduled, json!(text));
    }
    b.add_full_workflow_task();
    b.add_workflow_execution_completed(json!(text));
    b.build()
}

fn two_parallel() -> History {
    let mut b = HistoryBuilder::new("two_parallel", json!(["l", "r"]));
    b.add_full_workflow_task();
    let left = b.add_activity_scheduled("1", "compose", json!("l"));
    let right = b.add_activity_scheduled("2", "compose", json!("r"));
    b.advance_ms(10);
    b.add_activity_completed(left, json!("l!"));
    // The second completion lands while the workflow task is scheduled but not
    // started, so it joins that task.
    b.add_workflow_task_scheduled();
    b.add_activity_completed(right, json!("r!"));
    b.add_workflow_task_started();
    b.add_workflow_task_completed();
    b.add_workflow_execution_completed(json!(["l!", "r!"]));
    b.build()
}

fn timer_then_signal() -> History {
    let mut b = HistoryBuilder::new("timer_then_signal", json!(5));
    b.add_full_workflow_task();
    let timer = b.add_timer_started("1", 5_000);
    b.advance_ms(5_000);
    b.add_timer_fired("1", timer);
    b.add_full_workflow_task();
    b.advance_ms(2_000);
    b.add_signal("approve", json!({"by": "ana"}));
    b.add_full_workflow_task();
    b.add_workflow_execution_completed(json!("approved by ana"));
    b.build()
}

/// Started by signal-with-start: the signal is in the run's first write,
/// before its first workflow task starts (Temporal writes it before the
/// `WorkflowTaskScheduled`; see ARCHITECTURE.md), and the code reads it
/// after its timer.
fn signal_with_start() -> History {
    let mut b = HistoryBuilder::new("timer_then_signal", json!(5));
    b.add_workflow_task_scheduled();
    b.add_signal("approve", json!({"by": "bo"}));
    b.add_workflow_task_started();
    b.add_workflow_task_completed();
    let timer = b.add_timer_started("1", 5_000);
    b.advance_ms(5_000);
    b.add_timer_fired("1", timer);
    b.add_full_workflow_task();
    b.add_workflow_execution_completed(json!("approved by bo"));
    b.build()
}

/// A run that sleeps, then continues as new; and the run it continues as.
fn continue_as_new() -> History {
    let mut b = HistoryBuilder::new("countdown", json!(1));
    b.add_full_workflow_task();
    let timer = b.add_timer_started("1", 1_000);
    b.advance_ms(1_000);
    b.add_timer_fired("1", timer);
    b.add_full_workflow_task();
    b.add_workflow_execution_continued_as_new("test-run-2", json!(0));
    b.build()
}

fn continued_run() -> History {
    let mut b = HistoryBuilder::for_run("test-workflow", "test-run-2", "countdown", json!(0));
    b.continues("test-run");
    b.add_full_workflow_task();
    b.add_workflow_execution_completed(json!("liftoff"));
    b.build()
}

/// Asked to cancel while its timer runs: the timer is canceled, and the
/// cleanup (in a shielded scope) runs before the run closes canceled.
fn shielded_cleanup() -> History {
    let mut b = HistoryBuilder::new("cleanup_on_cancel", json!(null));
    b.add_full_workflow_task();
    let timer = b.add_timer_started("1", 86_400_000);
    b.advance_ms(1_000);
    b.add_cancel_requested();
    b.add_full_workflow_task();
    b.add_timer_canceled("1", timer);
    let scheduled = b.add_activity_scheduled("1", "compose", json!("cleanup"));
    b.advance_ms(10);
    b.add_activity_completed(scheduled, json!("cleanup!"));
    b.add_full_workflow_task();
    b.add_workflow_execution_canceled();
    b.build()
}

/// The child workflow `double-21` of the `child_workflow` fixture: its
/// first run, on task queue "children".
const CHILD_ID: &str = "double-21";
const CHILD_RUN: &str = "child-run";
/// The `child_workflow` fixture's event that initiated the child.
const CHILD_INITIATED: u64 = 5;

/// `StartChildWorkflowExecutionInitiated` for `double_in_child`'s child (a
/// command of the workflow task just completed), as the engine writes it.
fn initiate_doubler(b: &mut HistoryBuilder, completed: u64) -> u64 {
    b.add(EventKind::StartChildWorkflowExecutionInitiated(
        StartChildWorkflowExecutionInitiated {
            workflow_id: CHILD_ID.to_string(),
            workflow_type: "doubler".to_string(),
            task_queue: "children".to_string(),
            input: json!(21),
            execution_timeout_ms: None,
            workflow_task_timeout_ms: None,
            parent_close_policy: ParentClosePolicy::Terminate,
            workflow_id_reuse_policy: IdReusePolicy::AllowDuplicate,
            control: "1".to_string(),
            workflow_task_completed_event_id: completed,
        },
    ))
}

/// A parent that starts a child on another task queue and awaits its
/// result: the child's start and close are each delivered to the parent
/// with a workflow task.
fn child_workflow() -> History {
    let mut b = HistoryBuilder::new("double_in_child", json!(21));
    let completed = b.add_full_workflow_task();
    let initiated = initiate_doubler(&mut b, completed);
    assert_eq!(initiated, CHILD_INITIATED);
    let started = b.add(EventKind::ChildWorkflowExecutionStarted(
        ChildWorkflowExecutionStarted {
            initiated_event_id: initiated,
            workflow_id: CHILD_ID.to_string(),
            run_id: CHILD_RUN.to_string(),
            workflow_type: "doubler".to_string(),
        },
    ));
    b.add_full_workflow_task();
    b.advance_ms(1_000);
    b.add(EventKind::ChildWorkflowExecutionCompleted(
        ChildWorkflowExecutionCompleted {
            initiated_event_id: initiated,
            started_event_id: started,
            workflow_id: CHILD_ID.to_string(),
            run_id: CHILD_RUN.to_string(),
            result: json!(42),
        },
    ));
    b.add_full_workflow_task();
    b.add_workflow_execution_completed(json!("21 doubled is 42"));
    b.build()
}

/// The child of `child_workflow`: its first event names its parent (and the
/// parent's initiated event), and it runs on the parent's chosen queue.
fn child_workflow_child() -> History {
    let mut b = HistoryBuilder::for_run(CHILD_ID, CHILD_RUN, "doubler", json!(21));
    b.add_full_workflow_task();
    let timer = b.add_timer_started("1", 1_000);
    b.advance_ms(1_000);
    b.add_timer_fired("1", timer);
    b.add_full_workflow_task();
    b.add_workflow_execution_completed(json!(42));
    // The builder starts runs from a client on queue "default"; the engine
    // starts a child from its parent, on the queue the parent asked for.
    let mut events = b.build().events().to_vec();
    for event in &mut events {
        match &mut event.kind {
            EventKind::WorkflowExecutionStarted(started) => {
                started.task_queue = "children".to_string();
                started.identity = "workflow run test-run".to_string();
                started.request_id = format!("test-run/{CHILD_INITIATED}");
                started.parent = Some(ParentExecution {
                    workflow_id: "test-workflow".to_string(),
                    run_id: "test-run".to_string(),
                    initiated_event_id: CHILD_INITIATED,
                });
            }
            EventKind::WorkflowTaskScheduled(scheduled) => {
                scheduled.task_queue = "children".to_string();
            }
            _ => {}
        }
    }
    History::from_events(CHILD_ID, CHILD_RUN, events).expect("a valid child history")
}

/// The child's workflow id is taken: its start fails, and the parent's code
/// gets `ChildWorkflowError::AlreadyStarted` and completes saying so.
fn child_workflow_already_started() -> History {
    let mut b = HistoryBuilder::new("double_in_child", json!(21));
    let completed = b.add_full_workflow_task();
    let initiated = initiate_doubler(&mut b, completed);
    b.add(EventKind::StartChildWorkflowExecutionFailed(
        StartChildWorkflowExecutionFailed {
            initiated_event_id: initiated,
            workflow_id: CHILD_ID.to_string(),
            workflow_type: "doubler".to_string(),
            cause: StartChildFailedCause::WorkflowAlreadyExists,
            control: "1".to_string(),
        },
    ));
    b.add_full_workflow_task();
    b.add_workflow_execution_completed(json!(ALREADY_STARTED));
    b.build()
}

const ALREADY_STARTED: &str =
    "child workflow \"double-21\" was not started: its workflow id is taken";

fn attempt_failure(attempt: u32) -> Failure {
    Failure::new("ActivityError", format!("attempt {attempt} failed"))
}

fn retry_then_fail() -> History {
    let mut b = HistoryBuilder::new("retry_then_fail", json!("x"));
    let completed = b.add_full_workflow_task();
    let scheduled = b.add(EventKind::ActivityTaskScheduled(ActivityTaskScheduled {
        activity_id: "1".to_string(),
        activity_type: "flaky".to_string(),
        task_queue: "default".to_string(),
        input: json!("x"),
        schedule_to_close_timeout_ms: None,
        schedule_to_start_timeout_ms: None,
        start_to_close_timeout_ms: Some(10_000),
        heartbeat_timeout_ms: None,
        retry_policy: RetryPolicy::default()
            .maximum_attempts(3)
            .normalized()
            .unwrap(),
        workflow_task_completed_event_id: completed,
    }));
    // Attempts 1 and 2 and their backoffs (1 s, 2 s) leave no events.
    b.advance_ms(3_000);
    let started = b.add_activity_started(scheduled, 3, Some(attempt_failure(2)));
    b.add_activity_failed(
        scheduled,
        started,
        attempt_failure(3),
        RetryState::MaximumAttemptsReached,
    );
    b.add_full_workflow_task();
    b.add_workflow_execution_failed(expected_retry_failure());
    b.build()
}

/// Temporal's shape: an `ActivityFailure` naming the activity, its events
/// and retry state, caused by the last attempt's failure.
fn expected_retry_failure() -> Failure {
    let activity = ActivityFailureInfo {
        scheduled_event_id: 5,
        started_event_id: 6,
        identity: "worker".to_string(),
        activity_type: "flaky".to_string(),
        activity_id: "1".to_string(),
        retry_state: RetryState::MaximumAttemptsReached,
    };
    let failure = Failure {
        info: Some(Box::new(FailureInfo::Activity(activity))),
        ..Failure::new("ActivityFailure", "activity failed: attempt 3 failed")
    };
    failure.with_cause(Some(attempt_failure(3)))
}

fn patched() -> History {
    let mut b = HistoryBuilder::new("patched", json!("x"));
    b.add_full_workflow_task();
    b.add_marker("Patch", json!({"id": "v2", "deprecated": false}));
    let first = b.add_activity_scheduled("1", "compose", json!("v2 x"));
    b.add_activity_completed(first, json!("v2 x!"));
    b.add_full_workflow_task();
    let second = b.add_activity_scheduled("2", "compose", json!("v2 x!"));
    b.add_activity_completed(second, json!("v2 x!!"));
    b.add_full_workflow_task();
    b.add_workflow_execution_completed(json!("v2 x!!"));
    b.build()
}

/// The same run recorded as Retrace records `patched` now (Temporal's way):
/// a `core_patch` marker and the `TemporalChangeVersion` upsert. (The
/// `patched` fixture, recorded before, has a `Patch` marker and no upsert:
/// both replay.)
fn patched_core() -> History {
    let mut b = HistoryBuilder::new("patched", json!("x"));
    b.add_full_workflow_task();
    b.add_marker("core_patch", json!({"patch_id": "v2", "deprecated": false}));
    let versions = SearchValue::KeywordList(vec!["v2".to_string()]);
    b.add_search_attributes_upserted([("TemporalChangeVersion".to_string(), versions)].into());
    let first = b.add_activity_scheduled("1", "compose", json!("v2 x"));
    b.add_activity_completed(first, json!("v2 x!"));
    b.add_full_workflow_task();
    let second = b.add_activity_scheduled("2", "compose", json!("v2 x!"));
    b.add_activity_completed(second, json!("v2 x!!"));
    b.add_full_workflow_task();
    b.add_workflow_execution_completed(json!("v2 x!!"));
    b.build()
}

/// Search attributes and memo at start, upserted by the workflow.
fn search_attributes() -> History {
    let keyword = |s: &str| SearchValue::Keyword(s.to_string());
    let mut b = HistoryBuilder::new("indexed", json!("x"));
    b.with_start_visibility(
        [("CustomerId".to_string(), keyword("c-1"))].into(),
        [("origin".to_string(), json!("golden"))].into(),
    );
    b.add_full_workflow_task();
    b.add_search_attributes_upserted([("Stage".to_string(), keyword("started"))].into());
    b.add_properties_modified([("input".to_string(), json!("x"))].into());
    let scheduled = b.add_activity_scheduled("1", "compose", json!("x"));
    b.add_activity_completed(scheduled, json!("x!"));
    b.add_full_workflow_task();
    let count = ("Count".to_string(), SearchValue::Int(1));
    b.add_search_attributes_upserted([("Stage".to_string(), keyword("done")), count].into());
    b.add_workflow_execution_completed(json!("x!"));
    b.build()
}

fn local_activity() -> History {
    let mut b = HistoryBuilder::new("local_then_remote", json!("x"));
    b.add_full_workflow_task();
    let details = json!({"seq": 1, "activity_type": "compose", "attempt": 1, "result": "x!"});
    b.add_marker("LocalActivity", details);
    let scheduled = b.add_activity_scheduled("1", "compose", json!("x!"));
    b.add_activity_completed(scheduled, json!("x!!"));
    b.add_full_workflow_task();
    b.add_workflow_execution_completed(json!("x!!"));
    b.build()
}

/// An update accepted in the second task (its handler schedules an
/// activity), completed in the third; then the signal that closes the run.
fn update() -> History {
    let mut b = HistoryBuilder::new("compose_on_update", json!(null));
    b.add_full_workflow_task();
    let completed = b.add_full_workflow_task();
    let accepted = b.add(EventKind::WorkflowExecutionUpdateAccepted(
        WorkflowExecutionUpdateAccepted {
            update_id: "u-1".to_string(),
            update_name: "compose".to_string(),
            input: json!("x"),
            identity: "client".to_string(),
            workflow_task_completed_event_id: completed,
        },
    ));
    let scheduled = b.add_activity_scheduled("1", "compose", json!("x"));
    b.add_activity_completed(scheduled, json!("x!"));
    let completed = b.add_full_workflow_task();
    b.add(EventKind::WorkflowExecutionUpdateCompleted(
        WorkflowExecutionUpdateCompleted {
            update_id: "u-1".to_string(),
            accepted_event_id: accepted,
            outcome: UpdateOutcome::Success(json!("x!")),
            workflow_task_completed_event_id: completed,
        },
    ));
    b.add_signal("done", json!(null));
    b.add_full_workflow_task();
    b.add_workflow_execution_completed(json!(["x!"]));
    b.build()
}

/// (fixture name, how it was built, the result its replay must give)
fn fixtures() -> Vec<(&'static str, History, RunResult)> {
    vec![
        (
            "one_activity",
            one_activity(),
            RunResult::Completed(json!("world!")),
        ),
        (
            "three_sequential",
            three_sequential(),
            RunResult::Completed(json!("a!!!")),
        ),
        (
            "two_parallel",
            two_parallel(),
            RunResult::Completed(json!(["l!", "r!"])),
        ),
        (
            "timer_then_signal",
            timer_then_signal(),
            RunResult::Completed(json!("approved by ana")),
        ),
        (
            "retry_then_fail",
            retry_then_fail(),
            RunResult::Failed(expected_retry_failure()),
        ),
        ("patched", patched(), RunResult::Completed(json!("v2 x!!"))),
        (
            "patched_core",
            patched_core(),
            RunResult::Completed(json!("v2 x!!")),
        ),
        (
            "search_attributes",
            search_attributes(),
            RunResult::Completed(json!("x!")),
        ),
        (
            "local_activity",
            local_activity(),
            RunResult::Completed(json!("x!!")),
        ),
        ("update", update(), RunResult::Completed(json!(["x!"]))),
        (
            "signal_with_start",
            signal_with_start(),
            RunResult::Completed(json!("approved by bo")),
        ),
        (
            "continue_as_new",
            continue_as_new(),
            RunResult::ContinuedAsNew(json!(0)),
        ),
        (
            "continued_run",
            continued_run(),
            RunResult::Completed(json!("liftoff")),
        ),
        ("shielded_cleanup", shielded_cleanup(), RunResult::Canceled),
        (
            "child_workflow",
            child_workflow(),
            RunResult::Completed(json!("21 doubled is 42")),
        ),
        (
            "child_workflow_child",
            child_workflow_child(),
            RunResult::Completed(json!(42)),
        ),
        (
            "child_workflow_already_started",
            child_workflow_already_started(),
            RunResult::Completed(json!(ALREADY_STARTED)),
        ),
    ]
}

/// The fixture files are exactly the histories above. Set
/// `RETRACE_WRITE_FIXTURES=1` to rewrite them after an intended change.
#[test]
fn fixture_files_hold_the_recorded_histories() {
    for (name, history, _) in fixtures() {
        let path = fixture_path(name);
        if std::env::var_os("RETRACE_WRITE_FIXTURES").is_some() {
            std::fs::write(&path, history.to_json() + "\n").unwrap();
        }
        let on_disk = History::from_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            on_disk, history,
            "fixture {name} differs from its recorded history"
        );
    }
}

#[test]
fn golden_histories_replay_three_ways_to_their_results() {
    let replayer = Replayer::new(registry());
    for (name, _, expected) in fixtures() {
        let history = History::from_file(fixture_path(name)).unwrap();
        let outcome = replayer
            .replay_three_ways(&history)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(outcome.result, Some(expected), "{name}");
        assert!(
            outcome.pending_commands.is_empty(),
            "{name}: a closed run has nothing left to do"
        );
        insta::assert_snapshot!(name, history.to_json());
    }
}

#[test]
fn patched_workflow_replays_a_history_from_before_the_patch() {
    let mut b = HistoryBuilder::new("patched", json!("x"));
    b.add_full_workflow_task();
    let scheduled = b.add_activity_scheduled("1", "compose", json!("x"));
    b.add_activity_completed(scheduled, json!("x!"));
    b.add_full_workflow_task();
    b.add_workflow_execution_completed(json!("x!"));
    let outcome = Replayer::new(registry())
        .replay_three_ways(&b.build())
        .unwrap();
    assert_eq!(outcome.result, Some(RunResult::Completed(json!("x!"))));
}

#[test]
fn digests_differ_between_runs_that_saw_different_results() {
    let replayer = Replayer::new(registry());
    let a = replayer.replay(&one_activity()).unwrap();
    let mut b = HistoryBuilder::new("one_activity", json!("world"));
    b.add_full_workflow_task();
    let scheduled = b.add_activity_scheduled("1", "compose", json!("world"));
    b.add_activity_completed(scheduled, json!("other"));
    b.add_full_workflow_task();
    b.add_workflow_execution_completed(json!("other"));
    let b = replayer.replay(&b.build()).unwrap();
    assert_ne!(a.digest, b.digest);
}

#[test]
fn an_open_history_returns_the_commands_of_its_live_workflow_task() {
    let mut b = HistoryBuilder::new("three_sequential", json!("a"));
    b.add_full_workflow_task();
    let scheduled = b.add_activity_scheduled("1", "compose", json!("a"));
    b.add_activity_completed(scheduled, json!("a!"));
    b.add_workflow_task_scheduled();
    b.add_workflow_task_started();
    let outcome = Replayer::new(registry())
        .replay_three_ways(&b.build())
        .unwrap();
    assert_eq!(outcome.result, None);
    assert_eq!(outcome.pending_commands.len(), 1);
    let key = outcome.pending_commands[0].key();
    assert_eq!(
        (key.kind, key.id.as_str(), key.type_name.as_str()),
        ("ScheduleActivityTask", "2", "compose")
    );
}

#[test]
fn code_that_now_continues_as_new_where_the_history_completed_is_named_in_the_non_determinism() {
    let mut b = HistoryBuilder::new("countdown", json!(1));
    b.add_full_workflow_task();
    let timer = b.add_timer_started("1", 1_000);
    b.advance_ms(1_000);
    b.add_timer_fired("1", timer);
    b.add_full_workflow_task();
    b.add_workflow_execution_completed(json!("liftoff"));
    let error = Replayer::new(registry())
        .replay(&b.build())
        .unwrap_err()
        .to_string();
    assert!(error.contains("ContinueAsNewWorkflowExecution"), "{error}");
    assert!(error.contains("CompleteWorkflowExecution"), "{error}");
}

#[test]
fn code_that_now_starts_another_child_type_is_named_in_the_non_determinism() {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn(
        "double_in_child",
        |ctx: WorkflowContext, n: i64| async move {
            let tripled = ctx
                .child_workflow_by_name("tripler", json!(n))
                .workflow_id(format!("double-{n}"))
                .task_queue("children")
                .await?;
            Ok(format!("{n} doubled is {tripled}"))
        },
    );
    let error = Replayer::new(registry)
        .replay(&child_workflow())
        .unwrap_err();
    let ReplayError::NonDeterminism(nd) = &error else {
        panic!("expected non-determinism, got {error:?}");
    };
    assert_eq!(nd.event_id, CHILD_INITIATED, "{error}");
    assert_eq!(nd.compared, "type name", "{error}");
    let error = error.to_string();
    assert!(
        error.contains("StartChildWorkflowExecution(id \"1\", type \"doubler\""),
        "{error}"
    );
    assert!(
        error.contains("StartChildWorkflowExecution(id \"1\", type \"tripler\""),
        "{error}"
    );
}
