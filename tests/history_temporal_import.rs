//! Temporal's JSON history export (`temporal workflow show --output json`) read
//! by `History::from_json`, replayed against a Retrace port of the workflow,
//! refused clearly when it does not convert, checked by the CLI, and written
//! back by `History::to_temporal_json`.
//!
//! `fixtures/temporal/greeting.json` is a Go SDK run in protojson, made by hand
//! in the shape the Temporal CLI prints (Go SDK activity and timer ids, sticky
//! queues, int64 as strings, base64 payloads, an activity with two arguments).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use retrace::history::{DecodeError, EventKind, History, HistoryBuilder};
use retrace::types::{Failure, RetryState};
use retrace::visibility::SearchValue;
use retrace::workflow::{
    Replayer, RunResult, Workflow, WorkflowContext, WorkflowRegistry, WorkflowResult,
};
use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn greeting_text() -> String {
    std::fs::read_to_string(fixture("temporal/greeting.json")).unwrap()
}

include!("temporal_port/greeting.rs");

/// The port with the timer moved before the first activity.
struct GreetingChanged;

impl Workflow for GreetingChanged {
    const NAME: &'static str = "greeting";
    type Input = String;
    type Output = String;

    async fn run(ctx: WorkflowContext, name: String) -> WorkflowResult<String> {
        ctx.sleep(Duration::from_secs(60)).await?;
        let greeting = ctx
            .activity_by_name("compose_greeting", json!(["Hello", name]))
            .start_to_close(Duration::from_secs(10))
            .await?;
        Ok(greeting.to_string())
    }
}

fn replayer<W: Workflow>() -> Replayer {
    let mut registry = WorkflowRegistry::new();
    registry.register::<W>();
    Replayer::new(registry)
}

#[test]
fn a_temporal_export_replays_against_its_retrace_port() {
    let outcome = replayer::<Greeting>()
        .replay_file(fixture("temporal/greeting.json"))
        .expect("the port replays the Temporal history");
    let expected = json!("Hello, Ana! (approved by ops, sent)");
    assert_eq!(outcome.result, Some(RunResult::Completed(expected)));

    let history = History::from_file(fixture("temporal/greeting.json")).unwrap();
    let replayed = replayer::<Greeting>().replay_three_ways(&history).unwrap();
    assert_eq!(replayed, outcome);
}

#[test]
fn the_import_maps_ids_payloads_and_failures_to_retraces_form() {
    let history = History::from_json(&greeting_text()).unwrap();
    assert_eq!(history.workflow_id(), "greeting-ana");
    assert_eq!(history.run_id(), "5d4a6c1e-7b0f-4a53-9a63-3f1c2d9e8b71");
    assert_eq!(history.len(), 26);
    assert!(history.is_closed());
    let started = history.started().unwrap();
    assert_eq!(
        (started.input.clone(), started.workflow_task_timeout_ms),
        (json!("Ana"), 10_000)
    );
    assert_eq!(started.execution_timeout_ms, None, "\"0s\" is unlimited");
    let kinds: Vec<&EventKind> = history.events().iter().map(|e| &e.kind).collect();
    let EventKind::ActivityTaskScheduled(first) = kinds[4] else {
        panic!("{:?}", kinds[4])
    };
    // The Go SDK's id "5" becomes Retrace's first activity id.
    assert_eq!(
        (first.activity_id.as_str(), &first.input),
        ("1", &json!(["Hello", "Ana"]))
    );
    assert_eq!(first.start_to_close_timeout_ms, Some(10_000));
    assert_eq!(first.retry_policy.maximum_interval_ms, 100_000);
    let EventKind::TimerStarted(timer) = kinds[10] else {
        panic!("{:?}", kinds[10])
    };
    assert_eq!(
        (timer.timer_id.as_str(), timer.start_to_fire_timeout_ms),
        ("1", 60_000)
    );
    let EventKind::TimerFired(fired) = kinds[11] else {
        panic!("{:?}", kinds[11])
    };
    assert_eq!(fired.timer_id, "1");
    let EventKind::ActivityTaskStarted(retried) = kinds[20] else {
        panic!("{:?}", kinds[20])
    };
    let last = Failure::new("SmtpError", "smtp: connection refused");
    assert_eq!(
        (retried.attempt, retried.last_failure.as_ref()),
        (2, Some(&last))
    );
    assert_eq!(
        history.events()[1].event_time.to_string(),
        "2024-06-01T12:00:00.010Z"
    );
}

#[test]
fn the_older_export_shape_is_read_too() {
    let mut file: Value = serde_json::from_str(&greeting_text()).unwrap();
    for event in file["events"].as_array_mut().unwrap() {
        let event_type = event["eventType"].as_str().unwrap().to_string();
        let bare = event_type.strip_prefix("EVENT_TYPE_").unwrap();
        let pascal: String = bare
            .split('_')
            .map(|w| w[..1].to_string() + &w[1..].to_lowercase())
            .collect();
        event["eventType"] = json!(pascal);
        let id: u64 = event["eventId"].as_str().unwrap().parse().unwrap();
        event["eventId"] = json!(id);
    }
    let older = History::from_json(&file.to_string()).unwrap();
    assert_eq!(older, History::from_json(&greeting_text()).unwrap());
}

#[test]
fn changed_code_is_non_determinism_at_the_first_differing_event() {
    let error = replayer::<GreetingChanged>()
        .replay_file(fixture("temporal/greeting.json"))
        .unwrap_err();
    let Some(nd) = error.non_determinism() else {
        panic!("{error}")
    };
    assert_eq!(nd.event_id, 5, "{nd}");
    assert!(nd.history.contains("compose_greeting"), "{nd}");
    assert!(nd.code.contains("StartTimer"), "{nd}");
}

/// The fixture with `edit` applied to event `event_id` (1-based).
fn edited(event_id: usize, edit: impl FnOnce(&mut Value)) -> String {
    let mut file: Value = serde_json::from_str(&greeting_text()).unwrap();
    edit(&mut file["events"][event_id - 1]);
    file.to_string()
}

fn refusal(text: &str) -> String {
    let error = History::from_json(text).unwrap_err();
    assert!(
        matches!(
            error,
            DecodeError::TemporalEvent { .. } | DecodeError::Temporal(_)
        ),
        "{error:?}"
    );
    error.to_string()
}

#[test]
fn an_unknown_event_type_is_refused_naming_the_event() {
    let text = edited(16, |event| {
        event["eventType"] = json!("EVENT_TYPE_NEXUS_OPERATION_SCHEDULED");
    });
    let message = refusal(&text);
    assert!(
        message.contains("event 16 (EVENT_TYPE_NEXUS_OPERATION_SCHEDULED)"),
        "{message}"
    );
    assert!(message.contains("no Retrace equivalent"), "{message}");
}

#[test]
fn a_payload_encoding_other_than_json_is_refused_naming_the_event() {
    let text = edited(7, |event| {
        let payload = &mut event["activityTaskCompletedEventAttributes"]["result"]["payloads"][0];
        payload["metadata"]["encoding"] = json!("YmluYXJ5L2VuY3J5cHRlZA=="); // binary/encrypted
    });
    let message = refusal(&text);
    assert!(
        message.contains("event 7 (EVENT_TYPE_ACTIVITY_TASK_COMPLETED)"),
        "{message}"
    );
    assert!(message.contains("\"binary/encrypted\""), "{message}");
}

#[test]
fn a_missing_attribute_is_refused_naming_the_event_and_the_field() {
    let text = edited(5, |event| {
        let attributes = event["activityTaskScheduledEventAttributes"]
            .as_object_mut()
            .unwrap();
        attributes.remove("activityType");
    });
    let message = refusal(&text);
    assert!(
        message.contains("event 5 (EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)"),
        "{message}"
    );
    assert!(
        message.contains("missing attribute `activityType`"),
        "{message}"
    );

    let no_attributes = edited(12, |event| {
        event
            .as_object_mut()
            .unwrap()
            .remove("timerFiredEventAttributes");
    });
    let message = refusal(&no_attributes);
    assert!(
        message.contains("event 12 (EVENT_TYPE_TIMER_FIRED): missing `timerFiredEventAttributes`"),
        "{message}"
    );

    let bad_link = edited(12, |event| {
        event["timerFiredEventAttributes"]["startedEventId"] = json!("twelve");
    });
    let message = refusal(&bad_link);
    assert!(
        message.contains("event 12") && message.contains("`startedEventId`"),
        "{message}"
    );
}

#[test]
fn markers_other_than_side_effects_and_patches_are_refused() {
    let text = edited(5, |event| {
        *event = json!({
            "eventId": "5",
            "eventTime": "2024-06-01T12:00:00.050Z",
            "eventType": "EVENT_TYPE_MARKER_RECORDED",
            "markerRecordedEventAttributes": {
                "markerName": "Version",
                "details": {},
                "workflowTaskCompletedEventId": "4",
            },
        });
    });
    let message = refusal(&text);
    assert!(
        message.contains("event 5") && message.contains("marker \"Version\""),
        "{message}"
    );
}

#[test]
fn not_an_export_at_all_is_an_error_not_a_panic() {
    for text in [
        "{}",
        "{\"events\": 3}",
        "{\"events\": [7]}",
        "{\"events\": [{}]}",
        "[]",
    ] {
        assert!(History::from_json(text).is_err(), "{text}");
    }
    let canonical_without_id = "{\"format_version\": 1, \"run_id\": \"r\", \"events\": []}";
    let error = History::from_json(canonical_without_id).unwrap_err();
    assert!(error.to_string().contains("no `workflow_id`"), "{error}");
}

/// What Temporal's events cannot carry: the start's request id and a
/// terminated child's reason; and a patch marker recorded before Retrace
/// wrote Temporal's (`Patch`, `id`) comes back as Temporal's (`core_patch`).
fn without_what_temporal_drops(history: &History) -> History {
    let events = history.events().iter().cloned().map(|mut event| {
        match &mut event.kind {
            EventKind::WorkflowExecutionStarted(a) => a.request_id.clear(),
            EventKind::ChildWorkflowExecutionTerminated(a) => a.reason.clear(),
            EventKind::MarkerRecorded(m) if m.marker_name == "Patch" => {
                m.marker_name = "core_patch".to_string();
                m.details =
                    json!({"patch_id": m.details["id"], "deprecated": m.details["deprecated"]});
            }
            _ => {}
        }
        event
    });
    History::from_events(history.workflow_id(), history.run_id(), events).unwrap()
}

#[test]
fn every_golden_history_round_trips_through_temporals_form() {
    let mut checked = 0;
    for entry in std::fs::read_dir(fixture("histories")).unwrap() {
        let path = entry.unwrap().path();
        let history = History::from_file(&path).unwrap();
        let back = History::from_json(&history.to_temporal_json())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            back,
            without_what_temporal_drops(&history),
            "{}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} golden histories");
}

#[test]
fn side_effects_patches_and_failures_round_trip() {
    let mut b = HistoryBuilder::new("flow", json!({"n": [1, 2.5, null]}));
    b.add_full_workflow_task();
    b.add_marker("SideEffect", json!({"seq": 1, "value": {"coin": "heads"}}));
    b.add_marker("Patch", json!({"id": "v2", "deprecated": false}));
    b.add_marker("core_patch", json!({"patch_id": "v3", "deprecated": true}));
    let versions = SearchValue::KeywordList(vec!["v2".to_string()]);
    b.add_search_attributes_upserted([("TemporalChangeVersion".to_string(), versions)].into());
    let attributes = [
        (
            "Due",
            SearchValue::Datetime(retrace::types::Timestamp(1_796_083_200_123)),
        ),
        ("Score", SearchValue::Double(0.1)),
        ("Big", SearchValue::Int(-7)),
        ("Vip", SearchValue::Bool(true)),
        ("Note", SearchValue::Text("hi".to_string())),
    ];
    b.add_search_attributes_upserted(attributes.map(|(k, v)| (k.to_string(), v)).into());
    b.add_properties_modified([("note".to_string(), json!({"a": [1]}))].into());
    let scheduled = b.add_activity_scheduled("1", "charge", Value::Null);
    let mut failure = Failure::new("CardDeclined", "no funds");
    failure.non_retryable = true;
    failure.details = Some(json!([1, "two"]));
    let started = b.add_activity_started(scheduled, 3, Some(Failure::new("Timeout", "slow")));
    let retry = RetryState::NonRetryableFailure;
    b.add_activity_failed(scheduled, started, failure.clone(), retry);
    b.add_full_workflow_task();
    b.add_workflow_execution_failed(failure);
    let history = b.build();
    let text = history.to_temporal_json();
    assert!(
        text.contains("EVENT_TYPE_MARKER_RECORDED") && text.contains("core_patch"),
        "{text}"
    );
    for layout in [
        "EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES",
        "upsertWorkflowSearchAttributesEventAttributes",
        "indexedFields",
        "EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED",
        "workflowPropertiesModifiedEventAttributes",
        "upsertedMemo",
    ] {
        assert!(text.contains(layout), "{layout}: {text}");
    }
    let back = History::from_temporal_json(&text).unwrap();
    assert_eq!(back, without_what_temporal_drops(&history));
}

#[test]
fn retrace_history_check_reads_a_temporal_export() {
    let path = fixture("temporal/greeting.json");
    let output = Command::new(env!("CARGO_BIN_EXE_retrace"))
        .args(["history", "check", path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.starts_with("ok: "), "{stdout}");
    assert!(
        stdout.contains(
            "26 events, workflow greeting-ana run 5d4a6c1e-7b0f-4a53-9a63-3f1c2d9e8b71 (closed, converted from Temporal's export)"
        ),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        edited(5, |e| {
            e["eventType"] = json!("EVENT_TYPE_NEXUS_OPERATION_SCHEDULED")
        }),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_retrace"))
        .args(["history", "check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{output:?}");
    assert!(
        stderr.contains("event 5 (EVENT_TYPE_NEXUS_OPERATION_SCHEDULED)"),
        "{stderr}"
    );
}

#[test]
fn retrace_history_convert_writes_temporals_form_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let temporal = dir.path().join("temporal.json");
    let canonical = dir.path().join("canonical.json");
    let convert = |input: &Path, to: &str, output: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_retrace"))
            .args(["history", "convert", input.to_str().unwrap(), "--to", to])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        std::fs::write(output, &out.stdout).unwrap();
    };
    let golden = fixture("histories/one_activity.json");
    convert(&golden, "temporal", &temporal);
    assert!(
        std::fs::read_to_string(&temporal)
            .unwrap()
            .contains("EVENT_TYPE_ACTIVITY_TASK_SCHEDULED")
    );
    convert(&temporal, "retrace", &canonical);
    let original = History::from_file(&golden).unwrap();
    assert_eq!(
        History::from_file(&canonical).unwrap(),
        without_what_temporal_drops(&original)
    );
}
