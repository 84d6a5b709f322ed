//! The README's composition examples ("Writing workflows"), compiled and
//! run; a test below checks the README shows exactly this code.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use retrace::activity::{Activity, ActivityContext, ActivityOptions, ActivityResult, RetryPolicy};
use retrace::api::{ListWorkflowsRequest, RunOutcome, RunSummary};
use retrace::client::{Client, ClientError, StartOptions};
use retrace::engine::EmbeddedEngine;
use retrace::types::FailureInfo;
use retrace::visibility::SearchValue;
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

/// Whether a site answers; here every third probe finds it down.
struct Probe;
impl Activity for Probe {
    const NAME: &'static str = "probe";
    type Input = u32;
    type Output = bool;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, _ctx: ActivityContext, check: u32) -> ActivityResult<bool> {
        Ok(!check.is_multiple_of(3))
    }
}

/// Checks a site every minute for as long as it lives.
struct Monitor;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Checks {
    done: u32,
    down: u32,
    until: u32,
}

impl Workflow for Monitor {
    const NAME: &'static str = "monitor";
    type Input = Checks;
    type Output = Checks;
    // README continue-as-new begins
    async fn run(ctx: WorkflowContext, mut checks: Checks) -> WorkflowResult<Checks> {
        for _ in 0..100 {
            if checks.done == checks.until {
                return Ok(checks);
            }
            let up = ctx.activity::<Probe>(checks.done).await?;
            checks.down += u32::from(!up);
            checks.done += 1;
            ctx.sleep(Duration::from_secs(60)).await?;
        }
        // A fresh history every 100 checks: this run closes and a new run
        // of the same workflow id starts with `checks`, in one write.
        Err(ctx.continue_as_new(&checks))
    }
    // README continue-as-new ends
}

#[tokio::test(start_paused = true)]
async fn the_readme_continue_as_new_example_checks_across_runs_and_the_client_follows_them() {
    let engine = EmbeddedEngine::in_memory().await.unwrap();
    let mut registry = retrace::workflow::WorkflowRegistry::new();
    registry.register::<Monitor>();
    let worker = engine
        .worker("ops")
        .workflows(registry)
        .activity(Probe)
        .start();
    let client = engine.client();
    let checks = Checks {
        done: 0,
        down: 0,
        until: 250,
    };
    let monitor = client
        .start::<Monitor>(StartOptions::new("monitor-1", "ops"), checks)
        .await
        .unwrap();
    let ended = monitor.result().await.unwrap();
    assert_eq!(
        (ended.done, ended.down),
        (250, 84),
        "checks 0, 3, ..., 249 found it down"
    );
    let runs = client.list_all(None).await.unwrap();
    assert_eq!(runs.len(), 3, "100 + 100 + 50 checks");
    worker.shutdown().await;
}

/// Tells a waiting order that its payment cleared, from another workflow.
struct Payments;
impl Workflow for Payments {
    const NAME: &'static str = "payments";
    type Input = String;
    type Output = bool;
    // README signal-external begins
    async fn run(ctx: WorkflowContext, order_id: String) -> WorkflowResult<bool> {
        // Delivered once, even across crashes; recorded in both histories.
        match ctx.signal_external(&order_id, None, "paid", &()).await {
            Ok(()) => Ok(true),
            Err(WorkflowError::ExternalWorkflowNotFound { .. }) => Ok(false), // closed or unknown
            Err(other) => Err(other),
        }
    }
    // README signal-external ends
}

#[tokio::test(start_paused = true)]
async fn the_readme_signal_external_example_tells_a_waiting_order_it_was_paid() {
    let engine = EmbeddedEngine::in_memory().await.unwrap();
    let mut registry = retrace::workflow::WorkflowRegistry::new();
    registry.register::<Shipment>().register::<Payments>();
    let worker = engine.worker("shop").workflows(registry).start();
    let client = engine.client();
    let order = client
        .start::<Shipment>(StartOptions::new("order-12", "shop"), ())
        .await
        .unwrap();
    let payments = client
        .start::<Payments>(StartOptions::new("pay-12", "shop"), "order-12".to_string())
        .await
        .unwrap();
    assert!(payments.result().await.unwrap(), "the order was running");
    order.signal("packed", ()).await.unwrap();
    assert!(
        order.result().await.unwrap(),
        "paid by the other workflow, then packed"
    );
    let late = client
        .start::<Payments>(StartOptions::new("pay-13", "shop"), "order-12".to_string())
        .await
        .unwrap();
    assert!(!late.result().await.unwrap(), "the order has closed");
    worker.shutdown().await;
}

/// Gives back what an order held.
struct Release;
impl Activity for Release {
    const NAME: &'static str = "release";
    type Input = String;
    type Output = ();
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, _ctx: ActivityContext, _order: String) -> ActivityResult<()> {
        Ok(())
    }
}

/// Holds stock for an order until it is approved; releases it if canceled.
struct Hold;
impl Workflow for Hold {
    const NAME: &'static str = "hold";
    type Input = String;
    type Output = ();
    // README cancellation-scopes begins
    async fn run(ctx: WorkflowContext, order: String) -> WorkflowResult<()> {
        let approved = ctx.signal::<()>("approved").recv().await;
        if let Err(error) = approved {
            if error.is_cancellation() {
                // Shielded: the run's cancellation does not reach the release.
                let cleanup = ctx.shielded_scope();
                cleanup.ctx().activity::<Release>(order).await?;
            }
            return Err(error);
        }
        Ok(())
    }
    // README cancellation-scopes ends
}

#[tokio::test(start_paused = true)]
async fn the_readme_cancellation_scope_example_releases_the_stock_after_a_cancel() {
    let engine = EmbeddedEngine::in_memory().await.unwrap();
    let mut registry = retrace::workflow::WorkflowRegistry::new();
    registry.register::<Hold>();
    let worker = engine
        .worker("shop")
        .workflows(registry)
        .activity(Release)
        .start();
    let client = engine.client();
    let hold = client
        .start::<Hold>(StartOptions::new("hold-1", "shop"), "order-1".to_string())
        .await
        .unwrap();
    hold.cancel("customer left").await.unwrap();
    let outcome = hold.outcome().await.unwrap();
    assert!(
        matches!(outcome, retrace::api::RunOutcome::Canceled { .. }),
        "{outcome:?}"
    );
    let history = hold.history().await.unwrap();
    let released = history
        .events()
        .iter()
        .any(|e| e.kind.name() == "ActivityTaskCompleted");
    assert!(released, "the release ran after the cancel");
    worker.shutdown().await;
}

/// An order's items and where it ships.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Order {
    id: u32,
    items: Vec<String>,
}

/// Picks and packs an order's items, two to a box: the warehouse's own
/// workflow, run by the warehouse's workers.
struct Pick;
impl Workflow for Pick {
    const NAME: &'static str = "pick";
    type Input = Vec<String>;
    type Output = usize;
    async fn run(ctx: WorkflowContext, items: Vec<String>) -> WorkflowResult<usize> {
        ctx.sleep(Duration::from_secs(60)).await?;
        Ok(items.len().div_ceil(2))
    }
}

/// Fulfills an order: the warehouse picks it, in a child workflow.
struct Fulfill;
impl Workflow for Fulfill {
    const NAME: &'static str = "fulfill";
    type Input = Order;
    type Output = String;
    // README child-workflows begins
    async fn run(ctx: WorkflowContext, order: Order) -> WorkflowResult<String> {
        // Starts the child on the warehouse's task queue and awaits its result.
        let boxes = ctx
            .child_workflow::<Pick>(order.items)
            .workflow_id(format!("pick-{}", order.id))
            .task_queue("warehouse")
            .await?;
        Ok(format!("order {} packed in {boxes} boxes", order.id))
    }
    // README child-workflows ends
}

#[tokio::test(start_paused = true)]
async fn the_readme_child_workflow_example_has_the_warehouse_pick_the_order() {
    let engine = EmbeddedEngine::in_memory().await.unwrap();
    let mut shop = retrace::workflow::WorkflowRegistry::new();
    shop.register::<Fulfill>();
    let mut warehouse = retrace::workflow::WorkflowRegistry::new();
    warehouse.register::<Pick>();
    let shop = engine.worker("shop").workflows(shop).start();
    let warehouse = engine.worker("warehouse").workflows(warehouse).start();
    let client = engine.client();
    let order = Order {
        id: 7,
        items: vec!["socks".into(), "hat".into(), "scarf".into()],
    };
    let fulfill = client
        .start::<Fulfill>(StartOptions::new("order-7", "shop"), order)
        .await
        .unwrap();
    assert_eq!(fulfill.result().await.unwrap(), "order 7 packed in 2 boxes");
    let pick = client.history("pick-7", None).await.unwrap();
    let started = pick.started().expect("the child's first event");
    assert_eq!(started.task_queue, "warehouse");
    let parent = started.parent.as_ref().expect("the child names its parent");
    assert_eq!(
        (parent.workflow_id.as_str(), parent.run_id.as_str()),
        ("order-7", fulfill.run_id.as_str())
    );
    let history = fulfill.history().await.unwrap();
    let completed = history
        .events()
        .iter()
        .any(|e| e.kind.name() == "ChildWorkflowExecutionCompleted");
    assert!(completed, "the parent recorded the child's result");
    shop.shutdown().await;
    warehouse.shutdown().await;
}

/// Charges a card that is always declined.
struct Decline;
impl Activity for Decline {
    const NAME: &'static str = "charge";
    type Input = u64;
    type Output = ();
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, _ctx: ActivityContext, _cents: u64) -> ActivityResult<()> {
        Err(retrace::activity::non_retryable("card declined"))
    }
}

/// Pays with `?`: a failed charge fails the run with it.
struct Pay;
impl Workflow for Pay {
    const NAME: &'static str = "pay";
    type Input = u64;
    type Output = ();
    async fn run(ctx: WorkflowContext, cents: u64) -> WorkflowResult<()> {
        ctx.activity::<Decline>(cents).await?;
        Ok(())
    }
}

// README activity-failure begins
/// Which activity failed a run, and with what: the run's failure is an
/// `ActivityFailure` naming the activity, caused by the activity's own failure.
fn failed_activity(outcome: &RunOutcome) -> Option<(String, String)> {
    let RunOutcome::Failed { failure } = outcome else {
        return None;
    };
    let Some(FailureInfo::Activity(activity)) = failure.info.as_deref() else {
        return None;
    };
    let cause = failure.cause.as_deref()?;
    Some((activity.activity_type.clone(), cause.message.clone()))
}
// README activity-failure ends

#[tokio::test(start_paused = true)]
async fn the_readme_activity_failure_example_names_the_activity_and_its_failure() {
    let engine = EmbeddedEngine::in_memory().await.unwrap();
    let mut registry = retrace::workflow::WorkflowRegistry::new();
    registry.register::<Pay>();
    let worker = engine
        .worker("shop")
        .workflows(registry)
        .activity(Decline)
        .start();
    let client = engine.client();
    let pay = client
        .start::<Pay>(StartOptions::new("pay-1", "shop"), 1_999)
        .await
        .unwrap();
    let outcome = pay.outcome().await.unwrap();
    let expected = ("charge".to_string(), "card declined".to_string());
    assert_eq!(failed_activity(&outcome), Some(expected));
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

/// A nightly report that fails while the warehouse's export is not ready
/// (here: its first two attempts).
struct NightlyReport;
impl Workflow for NightlyReport {
    const NAME: &'static str = "nightly-report";
    type Input = String;
    type Output = String;
    async fn run(ctx: WorkflowContext, day: String) -> WorkflowResult<String> {
        if ctx.info().attempt < 3 {
            return Err(WorkflowError::application(
                "NotReady",
                "the export is not ready",
            ));
        }
        Ok(format!("report of {day}, attempt {}", ctx.info().attempt))
    }
}

// README workflow-retries begins
/// Starts tonight's report in an hour, retried as a new run (after 1 min,
/// then 2, 4, ...) up to five attempts in all if it fails.
async fn schedule_report(client: &Client, day: &str) -> Result<String, ClientError> {
    let options = StartOptions::new(format!("report-{day}"), "reports")
        .start_delay_ms(60 * 60 * 1_000)
        .retry(
            RetryPolicy::default()
                .initial_interval_ms(60_000)
                .maximum_attempts(5),
        );
    let report = client
        .start::<NightlyReport>(options, day.to_string())
        .await?;
    report.result().await // follows the retries to the last attempt
}
// README workflow-retries ends

#[tokio::test(start_paused = true)]
async fn the_readme_retry_example_waits_an_hour_then_retries_until_the_report_is_ready() {
    let engine = EmbeddedEngine::in_memory().await.unwrap();
    let mut registry = retrace::workflow::WorkflowRegistry::new();
    registry.register::<NightlyReport>();
    let worker = engine.worker("reports").workflows(registry).start();
    let client = engine.client();
    let began = engine.env().now();
    let report = schedule_report(&client, "2026-12-01").await.unwrap();
    assert_eq!(report, "report of 2026-12-01, attempt 3");
    // An hour of delay, then backoffs of 1 and 2 minutes.
    let elapsed_ms = engine.env().now().millis_since(began);
    assert!(
        (63 * 60_000..64 * 60_000).contains(&elapsed_ms),
        "took {elapsed_ms} ms"
    );
    let runs = client.list_all(None).await.unwrap();
    assert_eq!(runs.len(), 3, "one run per attempt");
    worker.shutdown().await;
}

/// A cleanup that counts its runs.
struct Cleanup;
impl Workflow for Cleanup {
    const NAME: &'static str = "cleanup";
    type Input = ();
    type Output = u64;
    async fn run(ctx: WorkflowContext, (): ()) -> WorkflowResult<u64> {
        let last = ctx.info().last_completion_result.clone();
        Ok(last.and_then(|v| v.as_u64()).unwrap_or(0) + 1)
    }
}

// README cron begins
/// Starts the nightly cleanup at 02:00 UTC every day, until canceled.
async fn schedule_cleanup(client: &Client) -> Result<String, ClientError> {
    let options = StartOptions::new("cleanup", "maintenance").cron("0 2 * * *");
    let first = client.start::<Cleanup>(options, ()).await?;
    Ok(first.run_id)
}
// README cron ends

#[tokio::test(start_paused = true)]
async fn the_readme_cron_example_runs_the_cleanup_at_two_every_night() {
    let engine = EmbeddedEngine::in_memory().await.unwrap();
    let mut registry = retrace::workflow::WorkflowRegistry::new();
    registry.register::<Cleanup>();
    let worker = engine.worker("maintenance").workflows(registry).start();
    let client = engine.client();
    let first = schedule_cleanup(&client).await.unwrap();
    engine.env().sleep_ms(3 * 24 * 3_600 * 1_000).await;
    let runs = client.list_all(None).await.unwrap();
    assert_eq!(
        runs.len(),
        4,
        "three nights done, the fourth waiting: {runs:?}"
    );
    for run in &runs {
        let history = client.history("cleanup", Some(&run.run_id)).await.unwrap();
        let retrace::history::EventKind::WorkflowExecutionStarted(started) =
            &history.events()[0].kind
        else {
            panic!("a run starts with WorkflowExecutionStarted");
        };
        let due_ms = history.events()[0].event_time.as_millis()
            + started.first_workflow_task_backoff_ms.unwrap_or(0);
        assert_eq!(
            due_ms % (24 * 3_600 * 1_000),
            2 * 3_600 * 1_000,
            "02:00 UTC"
        );
    }
    // The cancel reaches the waiting fourth run: this workflow has nothing
    // to cancel, so it completes, and the cron stops there.
    client.cancel("cleanup", None, "done").await.unwrap();
    let outcome = client.outcome("cleanup", Some(&first)).await.unwrap();
    assert_eq!(outcome, RunOutcome::Completed { result: 4.into() });
    engine.env().sleep_ms(2 * 24 * 3_600 * 1_000).await;
    assert_eq!(
        client.list_all(None).await.unwrap().len(),
        4,
        "no run after the cancel"
    );
    worker.shutdown().await;
}

/// Checks a card's number with the issuer: quick, so it runs as a local
/// activity, inside the workflow task, with no task queue in between.
struct CheckCard;
impl Activity for CheckCard {
    const NAME: &'static str = "check_card";
    type Input = String;
    type Output = bool;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(2))
    }
    async fn run(&self, _ctx: ActivityContext, card: String) -> ActivityResult<bool> {
        Ok(card.starts_with('4'))
    }
}

// README local-activities begins
/// Checks the card locally (recorded as a marker, replayed, never run again),
/// then charges it with an ordinary activity.
struct CardPayment;
impl Workflow for CardPayment {
    const NAME: &'static str = "card_payment";
    type Input = String;
    type Output = String;
    async fn run(ctx: WorkflowContext, card: String) -> WorkflowResult<String> {
        let valid = ctx
            .local_activity::<CheckCard>(card.clone())
            .retry(RetryPolicy::default().maximum_attempts(3))
            .await?;
        if !valid {
            return Ok("declined".to_string());
        }
        Ok(ctx.activity::<Charge>(card).await?)
    }
}
// README local-activities ends

/// Charges a card.
struct Charge;
impl Activity for Charge {
    const NAME: &'static str = "charge";
    type Input = String;
    type Output = String;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, _ctx: ActivityContext, card: String) -> ActivityResult<String> {
        Ok(format!("charged {card}"))
    }
}

#[tokio::test(start_paused = true)]
async fn the_readme_local_activity_example_checks_locally_then_charges() {
    let engine = EmbeddedEngine::in_memory().await.unwrap();
    let mut registry = retrace::workflow::WorkflowRegistry::new();
    registry.register::<CardPayment>();
    let worker = engine
        .worker("pay")
        .workflows(registry)
        .activity(CheckCard)
        .activity(Charge)
        .start();
    let client = engine.client();
    let paid = client
        .start::<CardPayment>(StartOptions::new("pay-1", "pay"), "4242".to_string())
        .await
        .unwrap();
    assert_eq!(paid.result().await.unwrap(), "charged 4242");
    let declined = client
        .start::<CardPayment>(StartOptions::new("pay-2", "pay"), "9999".to_string())
        .await
        .unwrap();
    assert_eq!(declined.result().await.unwrap(), "declined");
    let history = declined.history().await.unwrap();
    let kinds: Vec<&str> = history.events().iter().map(|e| e.kind.name()).collect();
    assert!(kinds.contains(&"MarkerRecorded"), "{kinds:?}");
    assert!(!kinds.contains(&"ActivityTaskScheduled"), "{kinds:?}");
    worker.shutdown().await;
}

// README updates begins
/// An account: update `withdraw` is refused (nothing recorded) when the
/// balance cannot cover it, else charges it and answers the new balance.
struct Account;
impl Workflow for Account {
    const NAME: &'static str = "account";
    type Input = u64;
    type Output = u64;
    async fn run(ctx: WorkflowContext, opening: u64) -> WorkflowResult<u64> {
        let balance = Arc::new(Mutex::new(opening));
        let (seen, held, charging) = (balance.clone(), balance.clone(), ctx.clone());
        ctx.update_handler_validated(
            "withdraw",
            move |amount: &u64| match *amount <= *seen.lock().unwrap() {
                true => Ok(()),
                false => Err(format!("cannot withdraw {amount}")),
            },
            move |amount: u64| {
                let (balance, ctx) = (held.clone(), charging.clone());
                async move {
                    ctx.activity::<Ledger>(amount).await?;
                    let mut left = balance.lock().unwrap();
                    *left -= amount;
                    Ok(*left)
                }
            },
        );
        ctx.signal::<()>("close").recv().await?;
        let left = *balance.lock().unwrap();
        Ok(left)
    }
}
// README updates ends

/// Records a withdrawal.
struct Ledger;
impl Activity for Ledger {
    const NAME: &'static str = "ledger";
    type Input = u64;
    type Output = ();
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, _ctx: ActivityContext, _amount: u64) -> ActivityResult<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn the_readme_update_example_withdraws_what_the_balance_covers_and_refuses_the_rest() {
    let engine = EmbeddedEngine::in_memory().await.unwrap();
    let mut registry = retrace::workflow::WorkflowRegistry::new();
    registry.register::<Account>();
    let worker = engine
        .worker("bank")
        .workflows(registry)
        .activity(Ledger)
        .start();
    let client = engine.client();
    let account = client
        .start::<Account>(StartOptions::new("acct-1", "bank"), 100)
        .await
        .unwrap();
    assert_eq!(account.update::<u64>("withdraw", 30).await.unwrap(), 70);
    let refused = account.update::<u64>("withdraw", 500).await.unwrap_err();
    assert!(
        matches!(&refused, ClientError::Update { rejected: true, .. }),
        "{refused:?}"
    );
    let again = client.update_with_id::<u64>("acct-1", None, "withdraw", "w-2", 20);
    assert_eq!(again.await.unwrap(), 50);
    let same = client.update_with_id::<u64>("acct-1", None, "withdraw", "w-2", 20);
    assert_eq!(same.await.unwrap(), 50, "one update id withdraws once");
    account.signal("close", ()).await.unwrap();
    assert_eq!(account.result().await.unwrap(), 50);
    worker.shutdown().await;
}

// README search-attributes begins
/// Marks its progress in a search attribute: list queries find the orders
/// at each stage.
struct Checkout;
impl Workflow for Checkout {
    const NAME: &'static str = "checkout";
    type Input = ();
    type Output = ();
    async fn run(ctx: WorkflowContext, (): ()) -> WorkflowResult<()> {
        let stage = |s: &str| ("Stage".to_string(), SearchValue::Keyword(s.to_string()));
        ctx.upsert_search_attributes([stage("paying")].into())?;
        ctx.sleep(Duration::from_secs(60)).await?;
        ctx.upsert_search_attributes([stage("shipped")].into())?;
        Ok(())
    }
}

/// Starts a checkout for a customer, then lists that customer's running ones.
async fn checkouts_of(client: &Client, customer: &str) -> Result<Vec<RunSummary>, ClientError> {
    let options = StartOptions::new(format!("checkout-{customer}"), "shop")
        .search_attribute("CustomerId", SearchValue::Keyword(customer.to_string()))
        .memo("channel", serde_json::json!("web"));
    client.start::<Checkout>(options, ()).await?;
    let query = format!(
        "WorkflowType = 'checkout' AND ExecutionStatus = 'Running' \
         AND CustomerId = '{customer}' ORDER BY StartTime DESC"
    );
    let request = ListWorkflowsRequest {
        query: Some(query),
        ..Default::default()
    };
    Ok(client.list(request).await?.runs)
}
// README search-attributes ends

#[tokio::test(start_paused = true)]
async fn the_readme_search_attributes_example_finds_a_customers_checkouts() {
    let engine = EmbeddedEngine::in_memory().await.unwrap();
    let mut registry = retrace::workflow::WorkflowRegistry::new();
    registry.register::<Checkout>();
    let worker = engine.worker("shop").workflows(registry).start();
    let client = engine.client();
    let runs = checkouts_of(&client, "c-1").await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].workflow_id, "checkout-c-1");
    assert_eq!(
        runs[0].search_attributes.get("CustomerId"),
        Some(&SearchValue::Keyword("c-1".to_string()))
    );
    assert!(
        checkouts_of(&client, "c-2")
            .await
            .unwrap()
            .iter()
            .all(|r| r.workflow_id == "checkout-c-2")
    );
    // The workflow marks its stage: once they shipped, a query finds them there.
    for id in ["checkout-c-1", "checkout-c-2"] {
        client.handle::<()>(id, None).result().await.unwrap();
    }
    let shipped = ListWorkflowsRequest {
        query: Some("Stage = 'shipped'".to_string()),
        ..Default::default()
    };
    let ids: Vec<String> = client
        .list(shipped)
        .await
        .unwrap()
        .runs
        .into_iter()
        .map(|r| r.workflow_id)
        .collect();
    let mut ids = ids;
    ids.sort();
    assert_eq!(ids, ["checkout-c-1", "checkout-c-2"]);
    worker.shutdown().await;
}

#[test]
fn the_readme_shows_these_examples_verbatim() {
    let readme = include_str!("../README.md");
    for name in [
        "signal-with-start",
        "wait-condition",
        "continue-as-new",
        "signal-external",
        "cancellation-scopes",
        "child-workflows",
        "activity-failure",
        "workflow-retries",
        "cron",
        "local-activities",
        "updates",
        "search-attributes",
    ] {
        let block = format!("```rust\n{}```\n", example(name));
        assert!(
            readme.contains(&block),
            "README.md's {name} example differs from tests/readme_composition.rs; paste:\n{block}"
        );
    }
}
