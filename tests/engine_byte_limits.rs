//! Bytes are bounded, not only counts: a run's history in all, the signals a
//! run buffers while its workflow task runs, and one page of history. Each
//! limit refuses with an error that names it, and nothing stored is lost.

mod common;

use std::sync::Arc;

use retrace::api::ErrorCode;
use retrace::client::StartOptions;
use retrace::engine::{EmbeddedEngine, ServiceConfig};
use retrace::env::{MemoryStorage, RunStatus};
use serde_json::json;

async fn engine(config: ServiceConfig) -> EmbeddedEngine {
    EmbeddedEngine::start(Arc::new(MemoryStorage::new()), config)
        .await
        .unwrap()
}

/// An engine with `config` and a run "w" started on `task_queue`.
async fn started(
    config: ServiceConfig,
    task_queue: &str,
) -> (EmbeddedEngine, retrace::client::Client) {
    let engine = engine(config).await;
    let client = engine.client();
    client
        .start_by_name(StartOptions::new("w", task_queue), "any", json!(null))
        .await
        .unwrap();
    (engine, client)
}

fn signals_in(history: &retrace::history::History) -> usize {
    history
        .events()
        .iter()
        .filter(|e| e.kind.name() == "WorkflowExecutionSignaled")
        .count()
}

fn kilobytes(count: usize) -> serde_json::Value {
    json!("x".repeat(count * 1024))
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_history_would_pass_its_payload_bytes_is_terminated_naming_the_limit() {
    let config = ServiceConfig {
        history_payload_bytes_max: 10 * 1024,
        ..ServiceConfig::default()
    };
    let (_engine, client) = started(config, "nobody").await;
    for _ in 0..3 {
        client.signal("w", None, "s", kilobytes(3)).await.unwrap();
    }
    let error = client
        .signal("w", None, "s", kilobytes(3))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::HistoryTooLarge), "{error}");
    assert!(error.to_string().contains("10240 payload bytes"), "{error}");
    let described = client.describe("w", None).await.unwrap();
    assert_eq!(described.status, RunStatus::Terminated);
    let history = client.history("w", None).await.unwrap();
    let signals = signals_in(&history);
    assert_eq!(
        signals, 3,
        "the accepted signals stay, the refused one is not written"
    );
}

#[tokio::test(start_paused = true)]
async fn a_history_page_holds_at_most_its_bytes_and_the_client_reads_every_page() {
    let config = ServiceConfig {
        history_page_bytes_max: 8 * 1024,
        ..ServiceConfig::default()
    };
    let (engine, client) = started(config, "nobody").await;
    for _ in 0..6 {
        client.signal("w", None, "s", kilobytes(3)).await.unwrap();
    }
    let request = retrace::api::Request::GetHistory(retrace::api::GetHistoryRequest {
        run: retrace::api::RunRef {
            workflow_id: "w".into(),
            run_id: None,
        },
        from_event_id: 1,
        page_size: 0,
    });
    let retrace::api::Response::GetHistory(page) = engine.service().handle(request).await.unwrap()
    else {
        panic!("a history page")
    };
    let bytes: u64 = page
        .events
        .iter()
        .flat_map(|e| e.kind.payloads())
        .map(retrace::history::payload_size_bytes)
        .sum();
    assert!(bytes <= 8 * 1024, "{bytes} bytes in one page");
    assert!(page.next_event_id.is_some(), "more pages follow");
    let history = client.history("w", None).await.unwrap();
    assert_eq!(signals_in(&history), 6);
}

#[tokio::test(start_paused = true)]
async fn signals_buffered_during_a_workflow_task_are_bounded_in_bytes() {
    let config = ServiceConfig {
        buffered_payload_bytes_max: 8 * 1024,
        ..ServiceConfig::default()
    };
    let engine = engine(config).await;
    let client = engine.client();
    client
        .start_by_name(StartOptions::new("w", "q"), "slow", json!(null))
        .await
        .unwrap();
    // Start the workflow task by hand and keep it running: signals buffer.
    let poll = retrace::api::Request::PollWorkflowTask(retrace::api::PollTaskRequest {
        task_queue: "q".into(),
        identity: "by-hand".into(),
        workflow_types: vec!["slow".into()],
    });
    let started = engine.service().handle(poll).await.unwrap();
    assert!(matches!(
        started,
        retrace::api::Response::PollWorkflowTask(_)
    ));
    client.signal("w", None, "s", kilobytes(3)).await.unwrap();
    client.signal("w", None, "s", kilobytes(3)).await.unwrap();
    let error = client
        .signal("w", None, "s", kilobytes(3))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::ResourceExhausted), "{error}");
    assert!(error.to_string().contains("limit of 8192 bytes"), "{error}");
}
