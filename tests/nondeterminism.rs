//! One test per kind of non-determinism: each replays a recorded history
//! against changed code and checks the error names the right event and key.

mod common;

use retrace::history::{History, HistoryBuilder};
use retrace::workflow::{
    ActivityFuture, NonDeterminism, ReplayError, Replayer, WorkflowContext, WorkflowRegistry,
    WorkflowResult, join,
};
use serde_json::json;

/// The recorded run: activity "compose"("a") then "compose"("a!"), completed.
///
///  1 WorkflowExecutionStarted      7 WorkflowTaskScheduled
///  2 WorkflowTaskScheduled         8 WorkflowTaskStarted
///  3 WorkflowTaskStarted           9 WorkflowTaskCompleted
///  4 WorkflowTaskCompleted        10 ActivityTaskScheduled "2"
///  5 ActivityTaskScheduled "1"    11 ActivityTaskStarted
///  6 ActivityTaskStarted, then    12 ActivityTaskCompleted
///    7' ActivityTaskCompleted     13..15 workflow task, 16 WorkflowExecutionCompleted
fn two_step_history() -> History {
    let mut b = HistoryBuilder::new("flow", json!("a"));
    b.add_full_workflow_task();
    let first = b.add_activity_scheduled("1", "compose", json!("a"));
    b.add_activity_completed(first, json!("a!"));
    b.add_full_workflow_task();
    let second = b.add_activity_scheduled("2", "compose", json!("a!"));
    b.add_activity_completed(second, json!("a!!"));
    b.add_full_workflow_task();
    b.add_workflow_execution_completed(json!("a!!"));
    b.build()
}

/// An activity by name with a start-to-close timeout.
fn act(
    ctx: &WorkflowContext,
    activity_type: &str,
    input: serde_json::Value,
) -> ActivityFuture<serde_json::Value> {
    ctx.activity_by_name(activity_type, input)
        .start_to_close(std::time::Duration::from_secs(10))
}

fn replay_with<F, Fut>(history: &History, code: F) -> Result<(), ReplayError>
where
    F: Fn(WorkflowContext, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = WorkflowResult<String>> + Send + 'static,
{
    let mut registry = WorkflowRegistry::new();
    registry.register_fn("flow", code);
    Replayer::new(registry).replay(history).map(|_| ())
}

fn expect_non_determinism(result: Result<(), ReplayError>) -> NonDeterminism {
    match result {
        Err(ReplayError::NonDeterminism(nd)) => nd,
        other => panic!("expected non-determinism, got {other:?}"),
    }
}

fn event_id_of(history: &History, event_type: &str, nth: usize) -> u64 {
    history
        .events()
        .iter()
        .filter(|e| e.kind.name() == event_type)
        .nth(nth)
        .expect("event exists")
        .event_id
}

#[test]
fn unchanged_code_replays_without_error() {
    let result = replay_with(&two_step_history(), |ctx, input| async move {
        let a = act(&ctx, "compose", json!(input)).await?;
        let b: String = act(&ctx, "compose", a)
            .await
            .map(|v| v.as_str().unwrap().to_string())?;
        Ok(b)
    });
    assert!(result.is_ok(), "{result:?}");
}

#[test]
fn changed_activity_type_names_the_scheduled_event() {
    let history = two_step_history();
    let nd = expect_non_determinism(replay_with(&history, |ctx, input| async move {
        let a = act(&ctx, "compose", json!(input)).await?;
        act(&ctx, "shout", a).await?;
        Ok(String::new())
    }));
    assert_eq!(
        nd.event_id,
        event_id_of(&history, "ActivityTaskScheduled", 1)
    );
    assert_eq!(nd.compared, "type name");
    assert!(
        nd.history.contains("\"compose\"") && nd.code.contains("\"shout\""),
        "{nd}"
    );
}

#[test]
fn changed_input_names_the_scheduled_event_and_the_input_hash() {
    let history = two_step_history();
    let nd = expect_non_determinism(replay_with(&history, |ctx, _input| async move {
        act(&ctx, "compose", json!("b")).await?;
        Ok(String::new())
    }));
    assert_eq!(
        nd.event_id,
        event_id_of(&history, "ActivityTaskScheduled", 0)
    );
    assert_eq!(nd.compared, "input hash");
}

#[test]
fn reordered_commands_name_the_first_command_event() {
    let mut b = HistoryBuilder::new("flow", json!("a"));
    b.add_full_workflow_task();
    let timer = b.add_timer_started("1", 1_000);
    let scheduled = b.add_activity_scheduled("1", "compose", json!("a"));
    b.add_timer_fired("1", timer);
    b.add_activity_completed(scheduled, json!("a!"));
    b.add_full_workflow_task();
    b.add_workflow_execution_completed(json!("a!"));
    let history = b.build();
    let nd = expect_non_determinism(replay_with(&history, |ctx, input| async move {
        let activity = act(&ctx, "compose", json!(input));
        let timer = ctx.sleep(std::time::Duration::from_secs(1));
        let (result, _) = join(activity, timer).await;
        Ok(result?.as_str().unwrap_or_default().to_string())
    }));
    assert_eq!(nd.event_id, timer);
    assert_eq!(nd.compared, "command kind");
    assert!(
        nd.history.starts_with("StartTimer") && nd.code.starts_with("ScheduleActivityTask"),
        "{nd}"
    );
}

#[test]
fn removed_command_names_the_event_the_code_no_longer_produces() {
    let history = two_step_history();
    let nd = expect_non_determinism(replay_with(&history, |ctx, input| async move {
        let a = act(&ctx, "compose", json!(input)).await?;
        Ok(a.as_str().unwrap_or_default().to_string())
    }));
    // The code completes where the history schedules activity "2".
    assert_eq!(
        nd.event_id,
        event_id_of(&history, "ActivityTaskScheduled", 1)
    );
    assert!(nd.code.starts_with("CompleteWorkflowExecution"), "{nd}");
}

#[test]
fn removed_command_at_the_end_of_a_task_names_it_with_code_producing_nothing() {
    let mut b = HistoryBuilder::new("flow", json!("a"));
    b.add_full_workflow_task();
    b.add_timer_started("1", 1_000);
    let scheduled = b.add_activity_scheduled("1", "compose", json!("a"));
    let history = b.build();
    let nd = expect_non_determinism(replay_with(&history, |ctx, _input| async move {
        ctx.sleep(std::time::Duration::from_secs(1)).await?;
        Ok(String::new())
    }));
    assert_eq!(nd.event_id, scheduled);
    assert_eq!(nd.code, "nothing");
}

#[test]
fn extra_command_names_the_event_after_the_recorded_commands() {
    let history = two_step_history();
    let nd = expect_non_determinism(replay_with(&history, |ctx, input| async move {
        let (a, _) = join(
            act(&ctx, "compose", json!(input)),
            act(&ctx, "audit", json!(1)),
        )
        .await;
        Ok(a?.as_str().unwrap_or_default().to_string())
    }));
    // Event 6 (ActivityTaskStarted) is where the history moved on while the
    // code had produced a second command.
    assert_eq!(
        nd.event_id,
        event_id_of(&history, "ActivityTaskScheduled", 0) + 1
    );
    assert!(nd.code.contains("\"audit\""), "{nd}");
}

#[test]
fn completed_run_whose_code_now_does_more_names_the_completion_event() {
    let history = two_step_history();
    let nd = expect_non_determinism(replay_with(&history, |ctx, input| async move {
        let a = act(&ctx, "compose", json!(input)).await?;
        let b = act(&ctx, "compose", a).await?;
        act(&ctx, "notify", b).await?;
        Ok(String::new())
    }));
    assert_eq!(
        nd.event_id,
        event_id_of(&history, "WorkflowExecutionCompleted", 0)
    );
    assert!(
        nd.history.starts_with("CompleteWorkflowExecution") && nd.code.contains("\"notify\""),
        "{nd}"
    );
}

#[test]
fn changed_result_names_the_completion_event_and_the_hash() {
    let history = two_step_history();
    let nd = expect_non_determinism(replay_with(&history, |ctx, input| async move {
        let a = act(&ctx, "compose", json!(input)).await?;
        act(&ctx, "compose", a).await?;
        Ok("different".to_string())
    }));
    assert_eq!(
        nd.event_id,
        event_id_of(&history, "WorkflowExecutionCompleted", 0)
    );
    assert_eq!(nd.compared, "input hash");
}

#[test]
fn marker_only_workflow_task_is_checked() {
    let mut b = HistoryBuilder::new("flow", json!("a"));
    b.add_full_workflow_task();
    let marker = b.add_marker("SideEffect", json!({"seq": 1, "value": 7}));
    b.add_timer_started("1", 1_000);
    let history = b.build();
    // The code no longer records the side effect.
    let nd = expect_non_determinism(replay_with(&history, |ctx, _input| async move {
        ctx.sleep(std::time::Duration::from_secs(1)).await?;
        Ok(String::new())
    }));
    assert_eq!(nd.event_id, marker);
    // And the recorded value is what replay returns, whatever the closure says.
    let ok = replay_with(&history, |ctx, _input| async move {
        let value: u64 = ctx.side_effect(|| 999)?;
        assert_eq!(value, 7, "replay returns the recorded side effect");
        ctx.sleep(std::time::Duration::from_secs(1)).await?;
        Ok(String::new())
    });
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn non_determinism_display_names_event_history_code_and_key() {
    let history = two_step_history();
    let error = replay_with(&history, |ctx, _input| async move {
        act(&ctx, "other", json!("a")).await?;
        Ok(String::new())
    })
    .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("event 5"), "{text}");
    assert!(
        text.contains("history has ScheduleActivityTask(id \"1\", type \"compose\""),
        "{text}"
    );
    assert!(
        text.contains("code produced ScheduleActivityTask(id \"1\", type \"other\""),
        "{text}"
    );
    assert!(text.contains("compared: type name"), "{text}");
}
