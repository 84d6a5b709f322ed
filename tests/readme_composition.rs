//! The README's composition examples ("Writing workflows"), compiled and
//! run; a test below checks the README shows exactly this code.

use retrace::client::{Client, ClientError, StartOptions};
use retrace::engine::EmbeddedEngine;
use retrace::workflow::{Workflow, WorkflowContext, WorkflowResult};

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

/// The text between `// README {name} begins` and `ends` in this file.
fn example(name: &str) -> String {
    let this = include_str!("readme_composition.rs");
    let begin_marker = format!("// README {name} begins\n");
    let begin = this.find(&begin_marker).expect("the begin marker") + begin_marker.len();
    let end = this
        .find(&format!("// README {name} ends"))
        .expect("the end marker");
    this[begin..end].to_string()
}

#[test]
fn the_readme_shows_these_examples_verbatim() {
    let readme = include_str!("../README.md");
    for name in ["signal-with-start"] {
        let block = format!("```rust\n{}```\n", example(name));
        assert!(
            readme.contains(&block),
            "README.md's {name} example differs from tests/readme_composition.rs; paste:\n{block}"
        );
    }
}
