//! Workflow updates end to end (client, service, two workers, tokio's paused
//! clock): a validator that refuses writes nothing; an accepted update is
//! recorded as `WorkflowExecutionUpdateAccepted`, its handler awaits an
//! activity, and `WorkflowExecutionUpdateCompleted` carries what it returned
//! to the caller; one update id runs its handler once, however often sent;
//! an accepted update survives its workers being replaced. Every test ends
//! by replaying every history three ways.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::engine::{StartTwo, TestEngine};
use retrace::activity::{Activity, ActivityContext, ActivityOptions, ActivityResult};
use retrace::client::{ClientError, StartOptions};
use retrace::history::{EventKind, History, UpdateOutcome};
use retrace::workflow::{
    Workflow, WorkflowContext, WorkflowError, WorkflowRegistry, WorkflowResult,
};

/// Prices an item (counting how often it ran): its name's length.
#[derive(Clone, Default)]
struct Price {
    runs: Arc<AtomicU32>,
}

impl Activity for Price {
    const NAME: &'static str = "price";
    type Input = String;
    type Output = u64;
    fn options() -> ActivityOptions {
        ActivityOptions::default()
            .start_to_close(Duration::from_secs(5))
            .task_queue("prices")
    }
    async fn run(&self, _ctx: ActivityContext, item: String) -> ActivityResult<u64> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(item.len() as u64)
    }
}

/// A cart: update `add` (refused for an empty item; fails for "broken")
/// prices an item and returns the cart's total; signal `checkout` closes it
/// with its items once no update runs.
struct Cart;

#[derive(Default)]
struct CartState {
    items: Vec<String>,
    total: u64,
    running: u32,
}

impl Workflow for Cart {
    const NAME: &'static str = "cart";
    type Input = ();
    type Output = Vec<String>;
    async fn run(ctx: WorkflowContext, (): ()) -> WorkflowResult<Vec<String>> {
        let state = Arc::new(Mutex::new(CartState::default()));
        let (handler_state, handler_ctx) = (state.clone(), ctx.clone());
        ctx.update_handler_validated(
            "add",
            |item: &String| match item.is_empty() {
                true => Err("an item needs a name".to_string()),
                false => Ok(()),
            },
            move |item: String| {
                let (state, ctx) = (handler_state.clone(), handler_ctx.clone());
                async move {
                    state.lock().unwrap().running += 1;
                    let price = ctx.activity::<Price>(item.clone()).await;
                    let mut cart = state.lock().unwrap();
                    cart.running -= 1;
                    if item == "broken" {
                        return Err(WorkflowError::application(
                            "Broken",
                            "cannot add a broken item",
                        ));
                    }
                    cart.total += price?;
                    cart.items.push(item);
                    Ok(cart.total)
                }
            },
        );
        let checkout = ctx.signal::<()>("checkout");
        checkout.recv().await?;
        let idle = state.clone();
        ctx.wait_condition(move || idle.lock().unwrap().running == 0)
            .await?;
        let items = state.lock().unwrap().items.clone();
        Ok(items)
    }
}

fn registry() -> WorkflowRegistry {
    let mut registry = WorkflowRegistry::new();
    registry.register::<Cart>();
    registry
}

fn update_events(history: &History) -> Vec<(&'static str, String)> {
    history
        .events()
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::WorkflowExecutionUpdateAccepted(a) => {
                Some((event.kind.name(), a.update_id.clone()))
            }
            EventKind::WorkflowExecutionUpdateCompleted(a) => {
                Some((event.kind.name(), a.update_id.clone()))
            }
            _ => None,
        })
        .collect()
}

struct Shop {
    engine: TestEngine,
    price_runs: Arc<AtomicU32>,
    workers: Vec<retrace::worker::Worker>,
}

impl Shop {
    async fn open() -> Shop {
        let engine = TestEngine::new(registry()).await;
        let price = Price::default();
        let price_runs = price.runs.clone();
        let pricing = engine.engine.worker("prices").activity(price).start();
        let mut shop = Shop {
            engine,
            price_runs,
            workers: vec![pricing],
        };
        shop.start_cart_workers();
        shop
    }

    fn start_cart_workers(&mut self) {
        let two = self
            .engine
            .engine
            .worker("q")
            .workflows(registry())
            .start_two();
        self.workers.extend([two.a, two.b]);
    }

    async fn close(self) -> TestEngine {
        for worker in self.workers {
            worker.shutdown().await;
        }
        self.engine
    }
}

#[tokio::test(start_paused = true)]
async fn an_accepted_update_returns_its_handlers_result_recorded_as_accepted_then_completed() {
    let shop = Shop::open().await;
    let client = shop.engine.client();
    let cart = client
        .start::<Cart>(StartOptions::new("cart-1", "q"), ())
        .await
        .unwrap();
    let total: u64 = cart.update("add", "apple").await.unwrap();
    assert_eq!(total, 5);
    let total: u64 = cart.update("add", "kiwi").await.unwrap();
    assert_eq!(total, 9);
    cart.signal("checkout", ()).await.unwrap();
    assert_eq!(cart.result().await.unwrap(), ["apple", "kiwi"]);
    let history = cart.history().await.unwrap();
    let kinds: Vec<&str> = update_events(&history).iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        [
            "WorkflowExecutionUpdateAccepted",
            "WorkflowExecutionUpdateCompleted",
            "WorkflowExecutionUpdateAccepted",
            "WorkflowExecutionUpdateCompleted"
        ]
    );
    let completed = history.events().iter().find_map(|e| match &e.kind {
        EventKind::WorkflowExecutionUpdateCompleted(a) => Some(a.outcome.clone()),
        _ => None,
    });
    assert_eq!(
        completed,
        Some(UpdateOutcome::Success(serde_json::json!(5)))
    );
    assert_eq!(shop.price_runs.load(Ordering::SeqCst), 2);
    let engine = shop.close().await;
    assert_eq!(engine.check_histories().await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_refused_update_writes_nothing_and_its_caller_learns_why() {
    let shop = Shop::open().await;
    let client = shop.engine.client();
    let cart = client
        .start::<Cart>(StartOptions::new("cart-2", "q"), ())
        .await
        .unwrap();
    let refused = cart.update::<u64>("add", "").await.unwrap_err();
    match &refused {
        ClientError::Update {
            failure, rejected, ..
        } => {
            assert!(*rejected);
            assert_eq!(failure.message, "an item needs a name");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let unknown = cart.update::<u64>("remove", "apple").await.unwrap_err();
    assert!(
        matches!(&unknown, ClientError::Update { rejected: true, failure, .. }
            if failure.message.contains("no handler for update \"remove\"")),
        "{unknown:?}"
    );
    cart.signal("checkout", ()).await.unwrap();
    assert!(cart.result().await.unwrap().is_empty());
    let history = cart.history().await.unwrap();
    assert_eq!(update_events(&history), [], "a rejection is not recorded");
    assert_eq!(shop.price_runs.load(Ordering::SeqCst), 0, "no handler ran");
    shop.close().await.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_handler_completes_its_update_with_the_failure() {
    let shop = Shop::open().await;
    let client = shop.engine.client();
    let cart = client
        .start::<Cart>(StartOptions::new("cart-3", "q"), ())
        .await
        .unwrap();
    let failed = cart.update::<u64>("add", "broken").await.unwrap_err();
    assert!(
        matches!(&failed, ClientError::Update { rejected: false, failure, .. }
            if failure.message == "cannot add a broken item"),
        "{failed:?}"
    );
    cart.signal("checkout", ()).await.unwrap();
    cart.result().await.unwrap();
    let history = cart.history().await.unwrap();
    assert_eq!(
        update_events(&history).len(),
        2,
        "accepted, then completed with the failure"
    );
    shop.close().await.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn one_update_id_sent_three_times_runs_its_handler_once() {
    let shop = Shop::open().await;
    let client = shop.engine.client();
    let cart = client
        .start::<Cart>(StartOptions::new("cart-4", "q"), ())
        .await
        .unwrap();
    let send = || client.update_with_id::<u64>("cart-4", None, "add", "same-id", "pear");
    // Two at once (one admits, the other joins it), then one after it completed.
    let (first, second) = tokio::join!(send(), send());
    let third = send().await;
    assert_eq!((first.unwrap(), second.unwrap(), third.unwrap()), (4, 4, 4));
    assert_eq!(shop.price_runs.load(Ordering::SeqCst), 1);
    cart.signal("checkout", ()).await.unwrap();
    assert_eq!(cart.result().await.unwrap(), ["pear"]);
    let history = cart.history().await.unwrap();
    assert_eq!(update_events(&history).len(), 2);
    shop.close().await.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn an_accepted_update_completes_on_new_workers_after_its_workers_stop() {
    let engine = TestEngine::new(registry()).await;
    let two = engine.engine.worker("q").workflows(registry()).start_two();
    let client = engine.client();
    let cart = client
        .start::<Cart>(StartOptions::new("cart-5", "q"), ())
        .await
        .unwrap();
    // No worker prices yet: the handler waits on its activity. Meanwhile
    // the run's workers stop and new ones (and a pricing worker) start.
    let update = client.update_with_id::<u64>("cart-5", None, "add", "u-1", "plum");
    let replace_workers = async {
        let accepted = loop {
            let history = cart.history().await.unwrap();
            if !update_events(&history).is_empty() {
                break update_events(&history);
            }
            engine.engine.env().sleep_ms(50).await;
        };
        assert_eq!(
            accepted,
            [("WorkflowExecutionUpdateAccepted", "u-1".to_string())]
        );
        two.shutdown().await;
        let price = Price::default();
        let price_runs = price.runs.clone();
        let pricing = engine.engine.worker("prices").activity(price).start();
        let fresh = engine.engine.worker("q").workflows(registry()).start_two();
        (price_runs, pricing, fresh)
    };
    let (answer, (price_runs, pricing, fresh)) = tokio::join!(update, replace_workers);
    assert_eq!(answer.unwrap(), 4);
    cart.signal("checkout", ()).await.unwrap();
    assert_eq!(cart.result().await.unwrap(), ["plum"]);
    assert_eq!(price_runs.load(Ordering::SeqCst), 1);
    let history = cart.history().await.unwrap();
    assert_eq!(update_events(&history).len(), 2);
    fresh.shutdown().await;
    pricing.shutdown().await;
    engine.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn an_update_to_a_closed_run_is_refused_as_closed() {
    let shop = Shop::open().await;
    let client = shop.engine.client();
    let cart = client
        .start::<Cart>(StartOptions::new("cart-6", "q"), ())
        .await
        .unwrap();
    cart.signal("checkout", ()).await.unwrap();
    cart.result().await.unwrap();
    let late = cart.update::<u64>("add", "fig").await.unwrap_err();
    assert_eq!(
        late.code(),
        Some(retrace::api::ErrorCode::RunClosed),
        "{late:?}"
    );
    shop.close().await.check_histories().await;
}

#[tokio::test(start_paused = true)]
async fn a_run_takes_ten_updates_in_flight_and_refuses_the_eleventh_until_one_completes() {
    use retrace::engine::machine::update::UPDATES_IN_FLIGHT_MAX;
    let engine = TestEngine::new(registry()).await;
    let two = engine.engine.worker("q").workflows(registry()).start_two();
    let client = engine.client();
    let cart = client
        .start::<Cart>(StartOptions::new("cart-7", "q"), ())
        .await
        .unwrap();
    // No worker prices yet: every accepted handler waits on its activity.
    let send = |n: usize| {
        let client = client.clone();
        async move {
            let update_id = format!("u-{n}");
            client
                .update_with_id::<u64>("cart-7", None, "add", &update_id, "fig")
                .await
        }
    };
    let in_flight = futures::future::join_all((0..UPDATES_IN_FLIGHT_MAX).map(send));
    let over_then_price = async {
        loop {
            let history = cart.history().await.unwrap();
            if update_events(&history).len() == UPDATES_IN_FLIGHT_MAX {
                break;
            }
            engine.engine.env().sleep_ms(50).await;
        }
        let over = send(UPDATES_IN_FLIGHT_MAX).await.unwrap_err();
        let price = Price::default();
        let pricing = engine.engine.worker("prices").activity(price).start();
        (over, pricing)
    };
    let (answers, (over, pricing)) = tokio::join!(in_flight, over_then_price);
    assert_eq!(
        over.code(),
        Some(retrace::api::ErrorCode::ResourceExhausted),
        "{over:?}"
    );
    let mut totals: Vec<u64> = answers.into_iter().map(Result::unwrap).collect();
    totals.sort();
    let expected: Vec<u64> = (1..=UPDATES_IN_FLIGHT_MAX as u64).map(|n| 3 * n).collect();
    assert_eq!(totals, expected, "the ten in flight each added a fig");
    // With room again, the eleventh is taken.
    assert_eq!(send(UPDATES_IN_FLIGHT_MAX).await.unwrap(), 33);
    cart.signal("checkout", ()).await.unwrap();
    assert_eq!(
        cart.result().await.unwrap().len(),
        UPDATES_IN_FLIGHT_MAX + 1
    );
    two.shutdown().await;
    pricing.shutdown().await;
    engine.check_histories().await;
}
