//! The README's composition examples ("Writing workflows"), compiled and
//! run; a test below checks the README shows exactly this code.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use retrace::client::{Client, ClientError, StartOptions};
use retrace::engine::EmbeddedEngine;
use retrace::workflow::{Workflow, WorkflowContext, WorkflowError, WorkflowResult, join};

/// A cart: collects items signaled as "add" until one is "checkout".
struct Cart;
impl Workflow for Cart {
    const NAME: &'static str = "cart";
    type Input = ();
    type Output = Vec<String>;
    async fn run(ctx: WorkflowContext, (): ()) -> WorkflowResult<Vec<String>> {
        let adds = ctx.signal::<String>("add");
        let mut items = Vec::new();
        loop {
            let item = adds.recv().await?;
            if item == "checkout" {
                return Ok(items);
            }
            items.push(item);
        }
    }
}

// README signal-with-start begins
/// Adds `item` to the cart's running run, or starts the cart with it: one
/// atomic request, so two shoppers never start two carts.
async fn add_to_cart(client: &Client, cart_id: &str, item: &str) -> Result<bool, ClientError> {
    let options = StartOptions::new(cart_id, "shop");
    let (_cart, started) = client
        .signal_with_start::<Cart>(options, (), "add", item)
        .await?;
    Ok(started) // true if this call started the run
}
// README signal-with-start ends

#[tokio::test(start_paused = true)]
async fn the_readme_signal_with_start_example_starts_a_cart_once_and_adds_to_it() {
    let engine = EmbeddedEngine::in_memory().await.unwrap();
    let mut registry = retrace::workflow::WorkflowRegistry::new();
    registry.register::<Cart>();
    let worker = engine.worker("shop").workflows(registry).start();
    let client = engine.client();
    assert!(add_to_cart(&client, "cart-1", "socks").await.unwrap());
    assert!(!add_to_cart(&client, "cart-1", "hat").await.unwrap());
    assert!(!add_to_cart(&client, "cart-1", "checkout").await.unwrap());
    let cart = client.handle::<Vec<String>>("cart-1", None);
    assert_eq!(cart.result().await.unwrap(), ["socks", "hat"]);
    worker.shutdown().await;
}

/// An order that ships once paid and packed, whichever comes first: two
/// signals set the state, one condition waits on it.
struct Shipment;
impl Workflow for Shipment {
    const NAME: &'static str = "shipment";
    type Input = ();
    type Output = bool;
    // README wait-condition begins
    async fn run(ctx: WorkflowContext, (): ()) -> WorkflowResult<bool> {
        let state = Arc::new(Mutex::new((false, false))); // (paid, packed)
        let (paid, packed) = (state.clone(), state.clone());
        let on_paid = ctx.signal::<()>("paid");
        let on_packed = ctx.signal::<()>("packed");
        let listen = async {
            on_paid.recv().await?;
            paid.lock().unwrap().0 = true;
            on_packed.recv().await?;
            packed.lock().unwrap().1 = true;
            Ok::<(), WorkflowError>(())
        };
        let ready = move || *state.lock().unwrap() == (true, true);
        // Resumes as soon as `ready` holds; false if a day passes first.
        let wait = ctx.wait_condition_timeout(Duration::from_secs(86_400), ready);
        let (shipped, listened) = join(wait, listen).await;
        listened?;
        shipped
    }
    // README wait-condition ends
}

#[tokio::test(start_paused = true)]
async fn the_readme_wait_condition_example_ships_once_paid_and_packed() {
    let engine = EmbeddedEngine::in_memory().await.unwrap();
    let mut registry = retrace::workflow::WorkflowRegistry::new();
    registry.register::<Shipment>();
    let worker = engine.worker("shop").workflows(registry).start();
    let client = engine.client();
    let order = client
        .start::<Shipment>(StartOptions::new("order-9", "shop"), ())
        .await
        .unwrap();
    order.signal("paid", ()).await.unwrap();
    order.signal("packed", ()).await.unwrap();
    assert!(
        order.result().await.unwrap(),
        "shipped before the day was out"
    );
    worker.shutdown().await;
}

/// The lines between `// README {name} begins` and `ends` in this file,
/// without the indentation they share.
fn example(name: &str) -> String {
    let this = include_str!("readme_composition.rs");
    let lines: Vec<&str> = this.lines().collect();
    let marker = |what: &str| {
        let marker = format!("// README {name} {what}");
        lines
            .iter()
            .position(|l| l.trim() == marker)
            .expect("the marker")
    };
    let body = &lines[marker("begins") + 1..marker("ends")];
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    body.iter()
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect()
}

#[test]
fn the_readme_shows_these_examples_verbatim() {
    let readme = include_str!("../README.md");
    for name in ["signal-with-start", "wait-condition"] {
        let block = format!("```rust\n{}```\n", example(name));
        assert!(
            readme.contains(&block),
            "README.md's {name} example differs from tests/readme_composition.rs; paste:\n{block}"
        );
    }
}
