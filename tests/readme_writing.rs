//! The README's "Writing workflows" example, compiled and run end to end.
//! `readme_writing/snippet.rs` is the README's code block byte for byte (a
//! test checks it; rustfmt does not touch an `include!`d file); what it
//! leaves to the reader (the bank, the order, the shipping and mail
//! activities) is defined here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use retrace::engine::EmbeddedEngine;
use serde::{Deserialize, Serialize};

include!("readme_writing/snippet.rs");
include!("readme_writing/replay.rs");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    id: String,
    amount_cents: i64,
}

type ChargeId = String;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Approval {
    by: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Receipt {
    charge: ChargeId,
    approval: Approval,
    label: String,
    mail: String,
}

/// A bank that applies each idempotency key's charge once.
#[derive(Clone, Default)]
struct BankClient {
    charges: Arc<Mutex<BTreeMap<String, i64>>>,
}

impl BankClient {
    async fn charge(&self, key: String, amount_cents: i64) -> Result<ChargeId, String> {
        let mut charges = self.charges.lock().map_err(|e| e.to_string())?;
        charges.entry(key.clone()).or_insert(amount_cents);
        Ok(format!("charge-{key}"))
    }
}

/// Prints a shipping label.
struct Ship;
impl Activity for Ship {
    const NAME: &'static str = "ship";
    type Input = Order;
    type Output = String;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, _ctx: ActivityContext, order: Order) -> ActivityResult<String> {
        Ok(format!("label for {}", order.id))
    }
}

/// Sends the confirmation mail.
struct Email;
impl Activity for Email {
    const NAME: &'static str = "email";
    type Input = Order;
    type Output = String;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, _ctx: ActivityContext, order: Order) -> ActivityResult<String> {
        Ok(format!("mail about {}", order.id))
    }
}

#[tokio::test(start_paused = true)]
async fn the_readme_checkout_charges_once_waits_for_approval_and_ships() {
    let engine = EmbeddedEngine::in_memory().await.unwrap();
    let bank = BankClient::default();
    let mut registry = retrace::workflow::WorkflowRegistry::new();
    registry.register::<Checkout>();
    let worker = engine
        .worker("shop")
        .workflows(registry)
        .activity(Charge { bank: bank.clone() })
        .activity(Ship)
        .activity(Email)
        .start();
    let order = Order {
        id: "o-1".to_string(),
        amount_cents: 1_250,
    };
    let options = retrace::client::StartOptions::new("checkout-o-1", "shop");
    let client = engine.client();
    let handle = client.start::<Checkout>(options, order).await.unwrap();
    handle
        .signal("approve", Approval { by: "ana".into() })
        .await
        .unwrap();
    let receipt = handle.result().await.unwrap();
    assert_eq!(receipt.approval.by, "ana");
    assert_eq!(
        (receipt.label.as_str(), receipt.mail.as_str()),
        ("label for o-1", "mail about o-1")
    );
    let charges = bank.charges.lock().unwrap().clone();
    assert_eq!(
        charges.values().collect::<Vec<_>>(),
        [&1_250],
        "charged once"
    );
    worker.shutdown().await;
    // The README's replay test reads this run's history from the fixture;
    // `RETRACE_WRITE_FIXTURES=1` writes it again after an intended change.
    let history = handle.history().await.unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(CHECKOUT_FIXTURE);
    if std::env::var_os("RETRACE_WRITE_FIXTURES").is_some() {
        std::fs::write(&fixture, history.to_json() + "\n").unwrap();
    }
    let saved = retrace::history::History::from_file(&fixture).unwrap();
    let names = |h: &retrace::history::History| -> Vec<&str> {
        h.events().iter().map(|e| e.kind.name()).collect()
    };
    assert_eq!(
        names(&saved),
        names(&history),
        "the fixture is a run of this code"
    );
}

/// A saved history of the checkout above (read by the README's replay test).
const CHECKOUT_FIXTURE: &str = "fixtures/histories/checkout.json";

#[test]
fn the_readme_shows_these_examples_verbatim() {
    let readme = include_str!("../README.md");
    let snippets = [
        (
            "## Writing workflows\n\n",
            include_str!("readme_writing/snippet.rs"),
        ),
        (
            "your current code:\n\n",
            include_str!("readme_writing/replay.rs"),
        ),
    ];
    for (before, snippet) in snippets {
        let block = format!("{before}```rust\n{snippet}```\n");
        assert!(
            readme.contains(&block),
            "README.md differs from tests/readme_writing/: paste\n{block}"
        );
    }
}
