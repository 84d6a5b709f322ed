//! Search attributes and memo end to end (client, service, worker): set at
//! start, upserted by the workflow (and by `patched`), recorded once each in
//! the history, shown by describe and list, filtered by list queries; bad
//! ones refused at the edge with clear errors; replay matches the upserts.

mod common;

use common::engine::{StartTwo, TestEngine};
use retrace::api::{ErrorCode, ListWorkflowsRequest};
use retrace::client::{ClientError, StartOptions};
use retrace::history::{EventKind, HistoryBuilder};
use retrace::visibility::{SearchAttributes, SearchValue};
use retrace::workflow::{ReplayError, Replayer, Workflow, WorkflowContext, WorkflowResult};
use serde_json::json;

fn keyword(text: &str) -> SearchValue {
    SearchValue::Keyword(text.to_string())
}

/// Takes patch "v2", upserts its customer, then returns.
struct Patches;
impl Workflow for Patches {
    const NAME: &'static str = "patches";
    type Input = String;
    type Output = bool;
    async fn run(ctx: WorkflowContext, customer: String) -> WorkflowResult<bool> {
        let first = ctx.patched("v2");
        let again = ctx.patched("v2");
        ctx.patched("v3");
        ctx.upsert_search_attributes([("CustomerId".to_string(), keyword(&customer))].into())?;
        Ok(first && again)
    }
}

/// Tries to upsert a reserved name; returns the error text.
struct Reserved;
impl Workflow for Reserved {
    const NAME: &'static str = "reserved";
    type Input = ();
    type Output = String;
    async fn run(ctx: WorkflowContext, _: ()) -> WorkflowResult<String> {
        let attributes = [("WorkflowId".to_string(), keyword("x"))].into();
        Ok(ctx
            .upsert_search_attributes(attributes)
            .unwrap_err()
            .to_string())
    }
}

fn registry() -> retrace::workflow::WorkflowRegistry {
    let mut registry = common::registry();
    registry.register::<Patches>().register::<Reserved>();
    registry
}

#[tokio::test(start_paused = true)]
async fn start_attributes_and_upserts_are_recorded_shown_and_queried() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine
        .engine
        .worker("q")
        .workflows(registry())
        .activity(common::Compose)
        .start_two();
    let client = engine.client();
    let options = StartOptions::new("order-1", "q")
        .search_attribute("CustomerId", keyword("c-1"))
        .memo("origin", json!("test"));
    let run = client
        .start::<common::Indexed>(options, "x".into())
        .await
        .unwrap();
    assert_eq!(run.result().await.unwrap(), "x!");
    let other = client
        .start::<Patches>(StartOptions::new("order-2", "q"), "c-2".into())
        .await
        .unwrap();
    assert!(other.result().await.unwrap());

    let described = run.describe().await.unwrap();
    let expected: SearchAttributes = [
        ("Count".to_string(), SearchValue::Int(1)),
        ("CustomerId".to_string(), keyword("c-1")),
        ("Stage".to_string(), keyword("done")),
    ]
    .into();
    assert_eq!(described.search_attributes, expected);
    assert_eq!(
        described.memo,
        [
            ("origin".to_string(), json!("test")),
            ("input".to_string(), json!("x"))
        ]
        .into()
    );
    let history = run.history().await.unwrap();
    let upserts = history
        .events()
        .iter()
        .filter(|e| matches!(e.kind, EventKind::UpsertWorkflowSearchAttributes(_)))
        .count();
    assert_eq!(upserts, 2, "each upsert is recorded once");

    // patched: core_patch markers and one TemporalChangeVersion upsert per patch.
    let patched = other.describe().await.unwrap();
    let versions = SearchValue::KeywordList(vec!["v2".to_string(), "v3".to_string()]);
    assert_eq!(
        patched.search_attributes.get("TemporalChangeVersion"),
        Some(&versions)
    );
    let history = other.history().await.unwrap();
    let kinds: Vec<String> = history
        .events()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::MarkerRecorded(m) => {
                Some(format!("{} {}", m.marker_name, m.details["patch_id"]))
            }
            EventKind::UpsertWorkflowSearchAttributes(u) => Some(
                u.search_attributes
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "core_patch \"v2\"",
            "TemporalChangeVersion",
            "core_patch \"v3\"",
            "TemporalChangeVersion",
            "CustomerId"
        ]
    );
    Replayer::new(registry())
        .replay_three_ways(&history)
        .unwrap();

    let list = |query: &str| ListWorkflowsRequest {
        query: Some(query.to_string()),
        ..ListWorkflowsRequest::default()
    };
    let page = client
        .list(list("CustomerId = 'c-1' AND Stage = 'done'"))
        .await
        .unwrap();
    let ids: Vec<&str> = page.runs.iter().map(|r| r.workflow_id.as_str()).collect();
    assert_eq!(ids, ["order-1"]);
    assert_eq!(page.runs[0].search_attributes, expected);
    let page = client
        .list(list(
            "CustomerId IN ('c-1', 'c-2') ORDER BY WorkflowId DESC",
        ))
        .await
        .unwrap();
    let ids: Vec<&str> = page.runs.iter().map(|r| r.workflow_id.as_str()).collect();
    assert_eq!(ids, ["order-2", "order-1"]);
    let page = client
        .list(list("TemporalChangeVersion = 'v3'"))
        .await
        .unwrap();
    assert_eq!(page.runs.len(), 1);
    let error = service_error(client.list(list("CustomerId = ")).await.unwrap_err());
    assert_eq!(error.code, ErrorCode::InvalidArgument);
    assert!(
        error.message.contains("at byte 12: expected a value"),
        "{}",
        error.message
    );
    engine.check_histories().await;
    worker.shutdown().await;
}

fn service_error(error: ClientError) -> retrace::api::ServiceError {
    match error {
        ClientError::Service(error) => error,
        other => panic!("expected a service error, got {other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn bad_attributes_are_refused_at_the_edge_with_clear_errors() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let client = engine.client();
    let cases = [
        ("WorkflowId", keyword("x"), "reserved for the system"),
        (
            "TemporalChangeVersion",
            keyword("x"),
            "reserved for the system",
        ),
        ("bad-name", keyword("x"), "is invalid"),
        (
            "Score",
            SearchValue::Double(f64::INFINITY),
            "not a finite number",
        ),
        (
            "Tags",
            SearchValue::KeywordList(Vec::new()),
            "keyword list holds 1 to",
        ),
    ];
    for (index, (name, value, message)) in cases.into_iter().enumerate() {
        let options = StartOptions::new(format!("bad-{index}"), "q").search_attribute(name, value);
        let error = client
            .start::<common::Indexed>(options, "x".into())
            .await
            .unwrap_err();
        let error = service_error(error);
        assert_eq!(error.code, ErrorCode::InvalidArgument, "{name}");
        assert!(error.message.contains(message), "{name}: {}", error.message);
    }
    let mut options = StartOptions::new("too-many", "q");
    for index in 0..33 {
        options = options.search_attribute(format!("A{index}"), SearchValue::Int(index));
    }
    let error = client
        .start::<common::Indexed>(options, "x".into())
        .await
        .unwrap_err();
    let error = service_error(error);
    assert!(
        error.message.contains("at most 32 search attributes"),
        "{}",
        error.message
    );
    let run = client
        .start::<Reserved>(StartOptions::new("reserved", "q"), ())
        .await
        .unwrap();
    let refused = run.result().await.unwrap();
    assert!(refused.contains("\"WorkflowId\" is reserved"), "{refused}");
    worker.shutdown().await;
}

#[test]
fn a_changed_upsert_is_non_determinism_naming_the_command() {
    let mut b = HistoryBuilder::new("indexed", json!("x"));
    b.add_full_workflow_task();
    b.add_search_attributes_upserted([("Stage".to_string(), keyword("begun"))].into());
    b.add_properties_modified([("input".to_string(), json!("x"))].into());
    let error = Replayer::new(registry()).replay(&b.build()).unwrap_err();
    let ReplayError::NonDeterminism(nde) = error else {
        panic!("expected non-determinism, got {error}");
    };
    assert!(
        nde.code.contains("UpsertWorkflowSearchAttributes"),
        "{nde:?}"
    );
    assert!(
        nde.history.contains("UpsertWorkflowSearchAttributes"),
        "{nde:?}"
    );
    assert_eq!(nde.compared, "input hash");
}

#[test]
fn a_history_from_before_core_patch_replays_without_the_upsert() {
    let mut b = HistoryBuilder::new("patches", json!("c-9"));
    b.add_full_workflow_task();
    b.add_marker("Patch", json!({"id": "v2", "deprecated": false}));
    b.add_marker("Patch", json!({"id": "v3", "deprecated": false}));
    b.add_search_attributes_upserted([("CustomerId".to_string(), keyword("c-9"))].into());
    b.add_workflow_execution_completed(json!(true));
    let outcome = Replayer::new(registry())
        .replay_three_ways(&b.build())
        .unwrap();
    assert_eq!(
        outcome.result,
        Some(retrace::workflow::RunResult::Completed(json!(true)))
    );
}
