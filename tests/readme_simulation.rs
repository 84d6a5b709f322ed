//! The README's simulation example, compiled and run; a test below checks the
//! README shows exactly this code.

// README example begins
use std::time::Duration;

use retrace::activity::{Activity, ActivityContext, ActivityOptions, ActivityResult, retryable};
use retrace::api::RunOutcome;
use retrace::client::StartOptions;
use retrace::workflow::{Workflow, WorkflowContext, WorkflowResult};
use retrace_sim::{Accounts, ServiceClient, Simulation};
use serde_json::json;

/// Pays the shop from alice's account in a simulated bank. The idempotency
/// key is the same on every retry, so the bank applies each payment once.
struct Charge {
    bank: ServiceClient,
}

impl Activity for Charge {
    const NAME: &'static str = "charge";
    type Input = i64;
    type Output = ();
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, ctx: ActivityContext, amount: i64) -> ActivityResult<()> {
        let request = json!({"op": "transfer", "from": "alice", "to": "shop", "amount": amount,
                             "idempotency_key": ctx.idempotency_key()});
        self.bank.call(&ctx, request).await.map_err(retryable)?;
        Ok(())
    }
}

/// Waits for the order's approval, then charges it.
struct Checkout;

impl Workflow for Checkout {
    const NAME: &'static str = "checkout";
    type Input = i64;
    type Output = bool;
    async fn run(ctx: WorkflowContext, amount: i64) -> WorkflowResult<bool> {
        let approved: bool = ctx.signal::<bool>("approve").recv().await?;
        if approved {
            ctx.activity::<Charge>(amount).await?;
        }
        Ok(approved)
    }
}

#[test]
fn checkout_survives_crashes_and_partitions() {
    let seeds = Simulation::new("checkout")
        .workflow::<Checkout>()
        .activity(|node| Charge {
            bank: node.service("bank"),
        }) // built on each worker node
        .service("bank", || Accounts::with([("alice", 1_000), ("shop", 0)])) // with an effect ledger
        .workers(3)
        .scenario(|client| async move {
            for i in 0..5 {
                let options = StartOptions::new(format!("order-{i}"), "sim");
                client.start_by_name(options, "checkout", json!(10)).await?;
            }
            client.sleep_ms(10_000).await;
            for i in 0..5 {
                client
                    .signal(&format!("order-{i}"), None, "approve", true)
                    .await?;
            }
            Ok(())
        })
        // Your own expectations, over outcomes, histories, the effect ledger
        // and the simulated services' state.
        .check(|finished| {
            let approved = RunOutcome::Completed {
                result: json!(true),
            };
            let charged = finished
                .outcomes
                .values()
                .filter(|o| **o == approved)
                .count();
            if charged != 5 {
                return Err(format!(
                    "{charged} of 5 orders charged: {:?}",
                    finished.outcomes
                ));
            }
            let bank = finished.service::<Accounts>("bank").ok_or("no bank")?;
            let balances = bank.balances();
            if balances["alice"] != 950 || balances["shop"] != 50 {
                return Err(format!("each order charged once: {balances:?}"));
            }
            Ok(())
        })
        .seeds(0..50)
        .run(); // on failure: seed, swarm options, shrunk fault plan, the invariant, one repro line
    assert_eq!(seeds, 50);
}
// README example ends

#[test]
fn the_readme_shows_this_example_verbatim() {
    let this = include_str!("readme_simulation.rs");
    let begin = this
        .find("// README example begins\n")
        .expect("the begin marker");
    let end = this.find("// README example ends").expect("the end marker");
    let example = &this[begin + "// README example begins\n".len()..end];
    let readme = include_str!("../README.md");
    let block = format!("```rust\n{example}```\n");
    assert!(
        readme.contains(&block),
        "README.md's simulation example differs from tests/readme_simulation.rs; paste:\n{block}"
    );
}
