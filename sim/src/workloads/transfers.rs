//! `transfers`: money moves between accounts under every kind of fault.
//!
//! Each workflow waits a durable timer, reserves the amount (an idempotent
//! transfer to escrow), waits for the client's approval signal, then pays out
//! and notifies two parties in parallel. Money is conserved and every
//! transfer happens exactly once.

use std::time::Duration;

use retrace::activity::{
    Activity, ActivityContext, ActivityOptions, ActivityResult, RetryPolicy, retryable,
};
use retrace::api::RunOutcome;
use retrace::client::StartOptions;
use retrace::workflow::{Workflow, WorkflowContext, WorkflowResult, join};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{Accounts, HttpApi, ServiceClient, Simulation};

/// Workflows a transfers run starts.
pub const TRANSFERS: usize = 4;
/// Every account's opening balance.
pub const OPENING_BALANCE: i64 = 1_000;

/// A transfer between two accounts, idempotent per activity.
pub struct Move {
    bank: ServiceClient,
}

/// What to move.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Movement {
    pub from: String,
    pub to: String,
    pub amount: i64,
}

impl Activity for Move {
    const NAME: &'static str = "move";
    type Input = Movement;
    type Output = ();
    fn options() -> ActivityOptions {
        ActivityOptions::default()
            .start_to_close(Duration::from_secs(5))
            .retry(
                RetryPolicy::default()
                    .initial_interval_ms(200)
                    .maximum_interval_ms(2_000),
            )
    }
    async fn run(&self, ctx: ActivityContext, movement: Movement) -> ActivityResult<()> {
        let request = json!({"op": "transfer", "from": movement.from, "to": movement.to,
                             "amount": movement.amount, "idempotency_key": ctx.idempotency_key()});
        self.bank.call(&ctx, request).await.map_err(retryable)?;
        Ok(())
    }
}

/// Posts a notification, once per activity.
pub struct Notify {
    api: ServiceClient,
}

impl Activity for Notify {
    const NAME: &'static str = "notify";
    type Input = String;
    type Output = u64;
    fn options() -> ActivityOptions {
        ActivityOptions::default()
            .start_to_close(Duration::from_secs(5))
            .heartbeat_timeout(Duration::from_secs(2))
    }
    async fn run(&self, ctx: ActivityContext, path: String) -> ActivityResult<u64> {
        ctx.heartbeat(&"posting");
        let request =
            json!({"method": "POST", "path": path, "idempotency_key": ctx.idempotency_key()});
        let reply = self.api.call(&ctx, request).await.map_err(retryable)?;
        Ok(reply["status"].as_u64().unwrap_or_default())
    }
}

/// The transfer workflow.
pub struct Transfer;

impl Workflow for Transfer {
    const NAME: &'static str = "transfer";
    type Input = Movement;
    type Output = String;
    async fn run(ctx: WorkflowContext, movement: Movement) -> WorkflowResult<String> {
        ctx.sleep(Duration::from_secs(2)).await?;
        let escrow = format!("escrow-{}", ctx.info().workflow_id);
        let reserve = Movement {
            from: movement.from.clone(),
            to: escrow.clone(),
            amount: movement.amount,
        };
        ctx.activity::<Move>(reserve).await?;
        let approved: bool = ctx.signal("approve").recv().await?;
        let target = if approved {
            movement.to.clone()
        } else {
            movement.from.clone()
        };
        let payout = Movement {
            from: escrow,
            to: target.clone(),
            amount: movement.amount,
        };
        ctx.activity::<Move>(payout).await?;
        let (a, b) = join(
            ctx.activity::<Notify>(format!("/notify/{}", movement.from)),
            ctx.activity::<Notify>(format!("/notify/{target}")),
        )
        .await;
        Ok(format!(
            "{} -> {target}: {} ({}, {})",
            movement.from, movement.amount, a?, b?
        ))
    }
}

fn account(index: usize) -> &'static str {
    ["alice", "bob", "carol", "dave"][index % 4]
}

/// The transfers reference scenario.
pub fn transfers() -> Simulation {
    transfers_of("transfers", TRANSFERS)
}

/// `cluster`: transfers, more of them, on a cluster of 2 to 5 services over
/// one sharded storage: shards move while money does.
pub fn cluster() -> Simulation {
    transfers_of("cluster", 12).cluster()
}

fn transfers_of(name: &str, transfers: usize) -> Simulation {
    Simulation::new(name)
        // Every run of the scenario must complete: a failed, timed out,
        // terminated or canceled run is a violation.
        .expect_outcomes(|_, outcome| matches!(outcome, RunOutcome::Completed { .. }))
        .workflow::<Transfer>()
        .activity(|node| Move { bank: node.service("bank") })
        .activity(|node| Notify { api: node.service("api") })
        .service("bank", || Accounts::with((0..4).map(|i| (account(i), OPENING_BALANCE))))
        .service("api", HttpApi::default)
        .workers(3)
        .safety_ms(30_000)
        .scenario(move |client| async move {
            for i in 0..transfers {
                let movement = Movement { from: account(i).to_string(), to: account(i + 1).to_string(), amount: 10 * (i as i64 + 1) };
                client.start_by_name(StartOptions::new(format!("transfer-{i}"), "sim"), "transfer", serde_json::to_value(movement)?).await?;
            }
            client.sleep_ms(5_000).await;
            for i in 0..transfers {
                client.signal(&format!("transfer-{i}"), None, "approve", i % 3 != 0).await?;
            }
            Ok(())
        })
        .check(move |finished| {
            for i in 0..transfers {
                match finished.outcomes.get(&format!("transfer-{i}")) {
                    Some(RunOutcome::Completed { .. }) => {}
                    other => return Err(format!("transfer-{i} should complete, got {other:?}")),
                }
            }
            let applied: u64 = finished.ledger.applied.values().sum();
            let expected = transfers as u64 * 4;
            if applied != expected {
                return Err(format!("{applied} effects applied, expected {expected} (2 moves and 2 posts per transfer)"));
            }
            Ok(())
        })
}
