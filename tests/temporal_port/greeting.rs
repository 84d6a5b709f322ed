/// The Retrace port of the Go workflow `fixtures/temporal/greeting.json` recorded.
struct Greeting;

impl Workflow for Greeting {
    const NAME: &'static str = "greeting";
    type Input = String;
    type Output = String;

    async fn run(ctx: WorkflowContext, name: String) -> WorkflowResult<String> {
        let timeout = Duration::from_secs(10);
        // The Go code passed ("Hello", name): several arguments arrive as one array.
        let greeting = ctx
            .activity_by_name("compose_greeting", json!(["Hello", name]))
            .start_to_close(timeout)
            .await?;
        ctx.sleep(Duration::from_secs(60)).await?;
        let approval: Value = ctx.signal("approve").recv().await?;
        let body = greeting.as_str().unwrap_or_default();
        let sent = ctx
            .activity_by_name("send_email", json!({"to": name, "body": body}))
            .start_to_close(timeout)
            .await?;
        let by = approval["by"].as_str().unwrap_or_default();
        let sent = sent.as_str().unwrap_or_default();
        Ok(format!("{body} (approved by {by}, {sent})"))
    }
}
