//! `small`: one workflow of three activities on two workers, one fault, and
//! a client polling its status.

use std::time::Duration;

use retrace::activity::{Activity, ActivityContext, ActivityOptions, ActivityResult, retryable};
use retrace::api::RunOutcome;
use retrace::client::StartOptions;
use retrace::workflow::{Workflow, WorkflowContext, WorkflowResult};
use serde_json::json;

use crate::{KvStore, ServiceClient, Simulation};

/// Stores a value under a key, once per activity.
pub struct Put {
    kv: ServiceClient,
}

impl Activity for Put {
    const NAME: &'static str = "put";
    type Input = (String, u64);
    type Output = String;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(5))
    }
    async fn run(
        &self,
        ctx: ActivityContext,
        (key, value): (String, u64),
    ) -> ActivityResult<String> {
        let request = json!({"op": "put", "key": key, "value": value, "idempotency_key": ctx.idempotency_key()});
        self.kv.call(&ctx, request).await.map_err(retryable)?;
        Ok(format!("{key}={value}"))
    }
}

/// Three puts in sequence.
pub struct ThreeSteps;

impl Workflow for ThreeSteps {
    const NAME: &'static str = "three_steps";
    type Input = String;
    type Output = Vec<String>;
    async fn run(ctx: WorkflowContext, name: String) -> WorkflowResult<Vec<String>> {
        let mut done = Vec::new();
        for step in 1..=3u64 {
            done.push(
                ctx.activity::<Put>((format!("{name}/{step}"), step))
                    .await?,
            );
        }
        Ok(done)
    }
}

/// The small reference scenario.
pub fn small() -> Simulation {
    Simulation::new("small")
        // Every run of the scenario must complete: a failed, timed out,
        // terminated or canceled run is a violation.
        .expect_outcomes(|_, outcome| matches!(outcome, RunOutcome::Completed { .. }))
        .workflow::<ThreeSteps>()
        .activity(|node| Put {
            kv: node.service("kv"),
        })
        .service("kv", KvStore::default)
        .workers(2)
        .faults_max(1)
        .safety_ms(10_000)
        .scenario(|client| async move {
            client
                .start_by_name(
                    StartOptions::new("small-1", "sim"),
                    "three_steps",
                    json!("small-1"),
                )
                .await?;
            // A dashboard polling the run's status while it runs: reads that
            // load the run concurrently with its writes.
            for _ in 0..40 {
                client.sleep_ms(250).await;
                let described = client.describe("small-1", None).await?;
                if described.status.is_closed() {
                    break;
                }
            }
            Ok(())
        })
        .check(|finished| match finished.outcomes.get("small-1") {
            Some(RunOutcome::Completed { result })
                if *result == json!(["small-1/1=1", "small-1/2=2", "small-1/3=3"]) =>
            {
                Ok(())
            }
            other => Err(format!(
                "small-1 should complete with its three puts, got {other:?}"
            )),
        })
}
