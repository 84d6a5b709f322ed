//! Signals and cancel requests from workflow code to other workflows, end to
//! end (client, service, two workers, tokio's paused clock): delivered once,
//! recorded in both histories (Temporal's events), and a clear failure when
//! the target is not running. Every test ends by replaying every history
//! three ways.

mod common;

use common::engine::{StartTwo, TestEngine};
use retrace::api::RunOutcome;
use retrace::client::StartOptions;
use retrace::history::{EventKind, ExternalFailedCause, History};
use retrace::workflow::{
    Workflow, WorkflowContext, WorkflowError, WorkflowRegistry, WorkflowResult,
};
use serde::{Deserialize, Serialize};

/// Signals (or asks to cancel) the workflow it is told to; says how it went.
struct Notifier;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Notify {
    target: String,
    cancel: bool,
}

impl Workflow for Notifier {
    const NAME: &'static str = "notifier";
    type Input = Notify;
    type Output = String;
    async fn run(ctx: WorkflowContext, notify: Notify) -> WorkflowResult<String> {
        let sent = if notify.cancel {
            ctx.cancel_external(&notify.target, None).await
        } else {
            ctx.signal_external(&notify.target, None, "ping", &"hello")
                .await
        };
        match sent {
            Ok(()) => Ok("delivered".to_string()),
            Err(WorkflowError::ExternalWorkflowNotFound { workflow_id }) => {
                Ok(format!("{workflow_id} not found"))
            }
            Err(other) => Err(other),
        }
    }
}

/// Waits for signal "ping" and returns it.
struct Listener;
impl Workflow for Listener {
    const NAME: &'static str = "listener";
    type Input = ();
    type Output = String;
    async fn run(ctx: WorkflowContext, (): ()) -> WorkflowResult<String> {
        ctx.signal::<String>("ping").recv().await
    }
}

/// Asks its target to cancel without waiting for the answer, and completes
/// in the same workflow task.
struct FireAndForget;
impl Workflow for FireAndForget {
    const NAME: &'static str = "fire_and_forget";
    type Input = String;
    type Output = ();
    async fn run(ctx: WorkflowContext, target: String) -> WorkflowResult<()> {
        let _not_awaited = ctx.cancel_external(&target, None);
        Ok(())
    }
}

/// Waits for "go"; the first run, asked to cancel, continues as new instead.
struct Survivor;
impl Workflow for Survivor {
    const NAME: &'static str = "survivor";
    type Input = bool;
    type Output = String;
    async fn run(ctx: WorkflowContext, continued: bool) -> WorkflowResult<String> {
        match ctx.signal::<()>("go").recv().await {
            Ok(()) => Ok("went".to_string()),
            Err(error) if error.is_cancellation() && !continued => Err(ctx.continue_as_new(&true)),
            Err(error) => Err(error),
        }
    }
}

fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry
        .register::<Notifier>()
        .register::<Listener>()
        .register::<FireAndForget>()
        .register::<Survivor>();
    registry
}

fn kinds(history: &History) -> Vec<&EventKind> {
    history.events().iter().map(|e| &e.kind).collect()
}

async fn notify(engine: &TestEngine, id: &str, target: &str, cancel: bool) -> String {
    let notify = Notify {
        target: target.to_string(),
        cancel,
    };
    let handle = engine
        .client()
        .start::<Notifier>(StartOptions::new(id, "q"), notify)
        .await
        .unwrap();
    handle.result().await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_signal_from_a_workflow_reaches_the_other_once_and_both_histories_show_it() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let listener = engine
        .client()
        .start::<Listener>(StartOptions::new("listener", "q"), ())
        .await
        .unwrap();
    assert_eq!(
        notify(&engine, "notifier", "listener", false).await,
        "delivered"
    );
    assert_eq!(listener.result().await.unwrap(), "hello");

    let sent = engine.client().history("notifier", None).await.unwrap();
    let initiated = kinds(&sent).into_iter().find_map(|k| match k {
        EventKind::SignalExternalWorkflowExecutionInitiated(a) => Some(a.clone()),
        _ => None,
    });
    let initiated = initiated.expect("the notifier initiated the signal");
    assert_eq!(
        (
            initiated.workflow_id.as_str(),
            initiated.signal_name.as_str()
        ),
        ("listener", "ping")
    );
    let signaled = kinds(&sent).into_iter().find_map(|k| match k {
        EventKind::ExternalWorkflowExecutionSignaled(a) => Some(a.clone()),
        _ => None,
    });
    let signaled = signaled.expect("the notifier recorded the delivery");
    assert_eq!(
        signaled.run_id, listener.run_id,
        "names the run that got it"
    );
    let got = engine.client().history("listener", None).await.unwrap();
    let signals: Vec<_> = kinds(&got)
        .into_iter()
        .filter_map(|k| match k {
            EventKind::WorkflowExecutionSignaled(a) => Some(a.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(signals.len(), 1, "delivered once");
    assert!(signals[0].identity.contains(sent.run_id()), "{signals:?}");
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 2);
}

#[tokio::test(start_paused = true)]
async fn a_signal_to_a_workflow_that_is_not_running_fails_as_not_found_in_the_senders_history() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    assert_eq!(
        notify(&engine, "lonely", "nobody", false).await,
        "nobody not found"
    );
    let history = engine.client().history("lonely", None).await.unwrap();
    let failed = kinds(&history).into_iter().find_map(|k| match k {
        EventKind::SignalExternalWorkflowExecutionFailed(a) => Some(a.cause),
        _ => None,
    });
    assert_eq!(
        failed,
        Some(ExternalFailedCause::ExternalWorkflowExecutionNotFound)
    );
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_request_from_a_workflow_cancels_the_other() {
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let listener = engine
        .client()
        .start::<Listener>(StartOptions::new("victim", "q"), ())
        .await
        .unwrap();
    assert_eq!(
        notify(&engine, "canceler", "victim", true).await,
        "delivered"
    );
    let outcome = listener.outcome().await.unwrap();
    assert!(
        matches!(outcome, RunOutcome::Canceled { .. }),
        "{outcome:?}"
    );
    let history = engine.client().history("canceler", None).await.unwrap();
    let requested = kinds(&history)
        .into_iter()
        .any(|k| matches!(k, EventKind::ExternalWorkflowExecutionCancelRequested(_)));
    assert!(requested, "the canceler recorded the request");
    // Asking a closed workflow to cancel fails as not found.
    assert_eq!(
        notify(&engine, "canceler-2", "victim", true).await,
        "victim not found"
    );
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 3);
}

#[tokio::test(start_paused = true)]
async fn a_request_left_pending_by_a_closed_sender_is_delivered_once_not_again_when_it_is_reloaded()
{
    let engine = TestEngine::new(registry()).await;
    let worker = engine.engine.worker("q").workflows(registry()).start_two();
    let client = engine.client();
    client
        .start::<Survivor>(StartOptions::new("survivor", "q"), false)
        .await
        .unwrap();
    let sender = client
        .start::<FireAndForget>(StartOptions::new("sender", "q"), "survivor".to_string())
        .await
        .unwrap();
    sender.result().await.unwrap();
    engine.engine.env().sleep_ms(2_000).await;
    assert_eq!(
        client.list_all(None).await.unwrap().len(),
        3,
        "the survivor continued once"
    );
    // Anything that loads the closed sender again (here a refused signal)
    // must not send its cancel request again, to the survivor's new run.
    let refused = client.signal("sender", None, "poke", ()).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(retrace::api::ErrorCode::RunClosed),
        "{refused}"
    );
    engine.engine.env().sleep_ms(2_000).await;
    let current = client.describe("survivor", None).await.unwrap();
    assert_eq!(
        current.status,
        retrace::env::RunStatus::Running,
        "{current:?}"
    );
    client.signal("survivor", None, "go", ()).await.unwrap();
    let went: String = client.handle("survivor", None).result().await.unwrap();
    assert_eq!(went, "went");
    let history = client.history("sender", None).await.unwrap();
    assert!(
        !kinds(&history)
            .iter()
            .any(|k| matches!(k, EventKind::ExternalWorkflowExecutionCancelRequested(_))),
        "a closed history takes no more events"
    );
    worker.shutdown().await;
    assert_eq!(engine.check_histories().await, 3);
}
