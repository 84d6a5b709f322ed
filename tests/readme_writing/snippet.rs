use std::time::Duration;
use retrace::activity::{Activity, ActivityContext, ActivityOptions, ActivityResult, RetryPolicy, retryable};
use retrace::workflow::{Workflow, WorkflowContext, WorkflowResult, join};

struct Charge { bank: BankClient }
impl Activity for Charge {
    const NAME: &'static str = "charge";
    type Input = Order;
    type Output = ChargeId;
    fn options() -> ActivityOptions {
        ActivityOptions::default().start_to_close(Duration::from_secs(10))
    }
    async fn run(&self, ctx: ActivityContext, order: Order) -> ActivityResult<ChargeId> {
        // the same key on every retry, so the bank applies the charge once
        self.bank.charge(ctx.idempotency_key(), order.amount_cents).await.map_err(retryable)
    }
}

struct Checkout;
impl Workflow for Checkout {
    const NAME: &'static str = "checkout";
    type Input = Order;
    type Output = Receipt;
    async fn run(ctx: WorkflowContext, order: Order) -> WorkflowResult<Receipt> {
        ctx.sleep(Duration::from_secs(5)).await?;                         // durable timer
        let charge = ctx.activity::<Charge>(order.clone())
            .retry(RetryPolicy::default().maximum_attempts(5))
            .await?;
        let approval: Approval = ctx.signal("approve").recv().await?;     // buffered signal
        let (label, mail) = join(ctx.activity::<Ship>(order.clone()), ctx.activity::<Email>(order)).await;
        Ok(Receipt { charge, approval, label: label?, mail: mail? })
    }
}
