//! Bad input to the history codec and the replayer: each a clear typed error,
//! never a panic.

mod common;

use retrace::history::{DecodeError, History, HistoryBuilder};
use retrace::workflow::{
    ActivityError, ReplayError, Replayer, RunResult, WorkflowContext, WorkflowRegistry,
};
use serde_json::json;

fn valid_json() -> String {
    let mut b = HistoryBuilder::new("one_activity", json!("world"));
    b.add_full_workflow_task();
    b.build().to_json()
}

#[test]
fn malformed_json_is_a_typed_error_with_its_position() {
    let error = History::from_json("{\"format_version\": 1, \"events\": [").unwrap_err();
    let DecodeError::Malformed { line, column, .. } = &error else {
        panic!("{error:?}")
    };
    assert_eq!((*line, *column), (1, 33));
    assert!(error.to_string().contains("line 1, column 33"), "{error}");
}

#[test]
fn unknown_event_type_names_it_and_its_index() {
    let text = valid_json().replace("\"WorkflowTaskStarted\"", "\"WorkflowTaskTeleported\"");
    let error = History::from_json(&text).unwrap_err();
    let DecodeError::UnknownEventType {
        index, event_type, ..
    } = &error
    else {
        panic!("{error:?}")
    };
    assert_eq!((*index, event_type.as_str()), (2, "WorkflowTaskTeleported"));
    assert!(
        error.to_string().contains("WorkflowTaskTeleported"),
        "{error}"
    );
}

#[test]
fn future_format_version_is_refused_with_both_versions() {
    let text = valid_json().replace("\"format_version\": 1", "\"format_version\": 7");
    let error = History::from_json(&text).unwrap_err();
    assert!(
        matches!(
            error,
            DecodeError::UnsupportedFormatVersion {
                found: 7,
                supported: 1
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("format_version 7"), "{error}");
}

#[test]
fn missing_format_version_is_refused() {
    let text = valid_json().replace("\"format_version\": 1,", "");
    let error = History::from_json(&text).unwrap_err();
    assert!(
        matches!(
            error,
            DecodeError::UnsupportedFormatVersion { found: 0, .. }
        ),
        "{error:?}"
    );
}

#[test]
fn bad_attributes_name_the_event_and_the_field() {
    let text = valid_json().replace(
        "\"scheduled_event_id\": 2",
        "\"scheduled_event_id\": \"two\"",
    );
    let error = History::from_json(&text).unwrap_err();
    let DecodeError::BadEvent {
        index, event_type, ..
    } = &error
    else {
        panic!("{error:?}")
    };
    assert_eq!((*index, event_type.as_str()), (2, "WorkflowTaskStarted"));
}

#[test]
fn decoded_but_invalid_history_says_which_rule_broke() {
    let text = valid_json().replace("\"event_id\": 3", "\"event_id\": 4");
    let error = History::from_json(&text).unwrap_err();
    assert!(matches!(error, DecodeError::Invalid(_)), "{error:?}");
    assert!(error.to_string().contains("expected event id 3"), "{error}");
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let error = Replayer::new(common::registry())
        .replay_file("/nonexistent/history.json")
        .unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/history.json"),
        "{error}"
    );
}

#[test]
fn input_that_does_not_fit_the_workflow_is_a_payload_error() {
    let mut b = HistoryBuilder::new("one_activity", json!({"not": "a string"}));
    b.add_full_workflow_task();
    let error = Replayer::new(common::registry())
        .replay(&b.build())
        .unwrap_err();
    let ReplayError::Input(payload) = &error else {
        panic!("{error:?}")
    };
    assert_eq!(payload.what, "input of workflow one_activity");
    assert!(
        error
            .to_string()
            .contains("does not fit type alloc::string::String"),
        "{error}"
    );
}

#[test]
fn unknown_workflow_type_lists_the_registered_ones() {
    let b = HistoryBuilder::new("no_such_workflow", json!(null));
    let error = Replayer::new(common::registry())
        .replay(&b.build())
        .unwrap_err();
    let ReplayError::UnknownWorkflowType {
        workflow_type,
        known,
    } = &error
    else {
        panic!("{error:?}")
    };
    assert_eq!(workflow_type, "no_such_workflow");
    assert!(known.contains(&"one_activity".to_string()));
}

#[test]
fn activity_result_that_does_not_fit_fails_the_awaiting_code_not_the_replay() {
    let mut b = HistoryBuilder::new("one_activity", json!("world"));
    b.add_full_workflow_task();
    let scheduled = b.add_activity_scheduled("1", "compose", json!("world"));
    b.add_activity_completed(scheduled, json!(42));
    b.add_workflow_task_scheduled();
    b.add_workflow_task_started();
    let outcome = Replayer::new(common::registry())
        .replay(&b.build())
        .unwrap();
    let Some(RunResult::Failed(failure)) = outcome.result else {
        panic!("{:?}", outcome.result)
    };
    assert_eq!(failure.failure_type, "PayloadError");
    assert!(
        failure.message.contains("result of activity compose"),
        "{}",
        failure.message
    );
}

#[test]
fn workflow_panic_is_a_typed_error_naming_the_task() {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn("boom", |_ctx: WorkflowContext, _: ()| async move {
        if true {
            panic!("deliberate");
        }
        Ok(())
    });
    let mut b = HistoryBuilder::new("boom", json!(null));
    b.add_workflow_task_scheduled();
    let started = b.add_workflow_task_started();
    let error = Replayer::new(registry).replay(&b.build()).unwrap_err();
    assert!(
        matches!(&error, ReplayError::Panicked { event_id, message } if *event_id == started && message == "deliberate")
    );
}

#[test]
fn activity_without_any_close_timeout_fails_at_once_with_a_clear_error() {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn("no_timeout", |ctx: WorkflowContext, _: ()| async move {
        match ctx.activity_by_name("compose", json!("x")).await {
            Err(ActivityError::InvalidOptions { reason, .. }) => Ok(reason),
            other => Ok(format!("unexpected: {other:?}")),
        }
    });
    let mut b = HistoryBuilder::new("no_timeout", json!(null));
    b.add_workflow_task_scheduled();
    b.add_workflow_task_started();
    let outcome = Replayer::new(registry).replay(&b.build()).unwrap();
    let Some(RunResult::Completed(reason)) = outcome.result else {
        panic!("{:?}", outcome.result)
    };
    assert!(
        reason
            .as_str()
            .unwrap()
            .contains("neither start_to_close nor schedule_to_close"),
        "{reason}"
    );
    assert_eq!(
        outcome.pending_commands.len(),
        1,
        "only the completion: nothing was scheduled"
    );
}

#[test]
fn a_history_with_a_payload_nested_past_the_limit_is_refused_naming_its_depth() {
    let max = retrace::history::PAYLOAD_DEPTH_MAX;
    let nested = |depth: usize| (0..depth).fold(json!(1), |inner, _| json!([inner]));
    assert_eq!(retrace::history::payload_depth(&nested(max)), max);
    let fine = HistoryBuilder::new("deep", nested(max)).build().to_json();
    History::from_json(&fine).expect("a payload at the limit is accepted");
    let mut value: serde_json::Value = serde_json::from_str(&fine).unwrap();
    value["events"][0]["attributes"]["input"] = nested(max + 1);
    let text = value.to_string();
    let error = History::from_json(&text).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "nested {} levels deep exceeds the limit of {max}",
            max + 1
        )),
        "{message}"
    );
}

#[test]
fn a_history_file_starting_with_a_utf8_byte_order_mark_reads() {
    let text = format!("\u{feff}{}", valid_json());
    let history = History::from_json(&text).expect("the mark is skipped");
    assert_eq!(history.to_json(), valid_json());
}
