//! One run whose stored state cannot be read never stops the service: it is
//! set aside (quarantined) at recovery, listed as damaged with the reason,
//! refused as `data_corrupt`, and every other run is served as before.

mod common;

use std::sync::Arc;

use retrace::api::ErrorCode;
use retrace::client::StartOptions;
use retrace::engine::{EmbeddedEngine, ServiceConfig};
use retrace::env::{RunStatus, SqliteStorage};
use retrace::workflow::{WorkflowContext, WorkflowRegistry};
use serde_json::json;

fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn("waits", |ctx: WorkflowContext, _: ()| async move {
        let word: String = ctx.signal("go").recv().await?;
        Ok(word)
    });
    registry
}

/// The engine over the database at `path`. An engine dropped just before
/// may still hold the file's lock for a moment (its detached tasks end on
/// their own time), so a lock held by another is waited out, up to 10 s.
async fn engine(path: &std::path::Path) -> EmbeddedEngine {
    let mut tries = 0;
    let storage = loop {
        match SqliteStorage::open(path) {
            Err(error) if error.to_string().contains("holds it locked") && tries < 200 => {
                tries += 1;
                // Real time: the other engine's tasks run on this runtime's threads.
                #[allow(clippy::disallowed_methods)]
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            opened => break opened.expect("the database opens"),
        }
    };
    EmbeddedEngine::start(Arc::new(storage), ServiceConfig::default())
        .await
        .expect("the service starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_state_cannot_be_read_is_quarantined_and_the_rest_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("retrace.db");
    let (good, bad) = {
        let engine = engine(&path).await;
        let client = engine.client();
        let start = |id: &'static str| {
            let client = client.clone();
            async move {
                client
                    .start_by_name(StartOptions::new(id, "q"), "waits", json!(null))
                    .await
                    .unwrap()
            }
        };
        (start("good").await, start("bad").await)
    };
    {
        let connection = rusqlite::Connection::open(&path).unwrap();
        let damaged = connection
            .execute(
                "UPDATE runs SET state = CAST('{\"not\": \"a run state\"' AS BLOB) WHERE run_id = ?1",
                [&bad],
            )
            .unwrap();
        assert_eq!(damaged, 1);
    }
    let engine = engine(&path).await;
    assert_eq!(engine.service().quarantined().len(), 1);
    assert!(engine.service().quarantined().contains_key(&bad));
    let client = engine.client();
    let runs = client.list_all(None).await.unwrap();
    let listed = |run_id: &str| runs.iter().find(|r| r.run_id == run_id).unwrap().clone();
    let reason = listed(&bad).damaged.expect("listed as damaged");
    assert!(reason.contains("stored state does not decode"), "{reason}");
    assert_eq!(listed(&good).damaged, None);
    let refused = client.describe("bad", None).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::DataCorrupt), "{refused}");
    let worker = engine.worker("q").workflows(registry()).start();
    client.signal("good", None, "go", "on").await.unwrap();
    let handle = client.handle::<String>("good", Some(&good));
    assert_eq!(handle.result().await.unwrap(), "on");
    let described = client.describe("good", None).await.unwrap();
    assert_eq!(described.status, RunStatus::Completed);
    worker.shutdown().await;
}

/// Holds the first workflow task on queue `queue` as a worker would.
async fn hold_workflow_task(engine: &EmbeddedEngine, queue: &str) {
    use retrace::api::{PollTaskRequest, PollWorkflowTaskResponse, Request, Response};
    let request = Request::PollWorkflowTask(PollTaskRequest {
        task_queue: queue.to_string(),
        identity: "holder".to_string(),
        workflow_types: Vec::new(),
    });
    for _ in 0..10 {
        if let Ok(Ok(Response::PollWorkflowTask(PollWorkflowTaskResponse {
            task: Some(_), ..
        }))) = engine.env().network.call(request.clone()).await
        {
            return;
        }
    }
    panic!("no workflow task on queue {queue}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_buffered_signals_cannot_be_read_is_quarantined_at_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("retrace.db");
    let bad = {
        let engine = engine(&path).await;
        let client = engine.client();
        let mut options = StartOptions::new("bad", "held");
        options.workflow_task_timeout_ms = Some(3_600_000);
        let bad = client
            .start_by_name(options, "waits", json!(null))
            .await
            .unwrap();
        hold_workflow_task(&engine, "held").await;
        client.signal("bad", None, "go", "buffered").await.unwrap();
        bad
    };
    {
        let connection = rusqlite::Connection::open(&path).unwrap();
        let damaged = connection
            .execute(
                "UPDATE buffered_events SET events = '[{\"torn\"' WHERE run_id = ?1",
                [&bad],
            )
            .unwrap();
        assert_eq!(damaged, 1, "the signal waits in one buffered row");
    }
    let engine = engine(&path).await;
    let reason = engine.service().quarantined().get(&bad).cloned();
    let reason = reason.expect("the run is quarantined");
    assert!(reason.contains("buffered events"), "{reason}");
    let client = engine.client();
    let refused = client.describe("bad", None).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::DataCorrupt), "{refused}");
    client
        .start_by_name(StartOptions::new("after", "q"), "waits", json!(null))
        .await
        .expect("the service serves new runs");
}
