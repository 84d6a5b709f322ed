use retrace::workflow::{Replayer, RunResult, WorkflowRegistry};

#[test]
fn greeting_replays_its_temporal_history() -> Result<(), Box<dyn std::error::Error>> {
    let mut registry = WorkflowRegistry::new();
    registry.register::<Greeting>(); // the Retrace port of the Temporal workflow
    // temporal workflow show --workflow-id greeting-ana --output json > greeting.json
    let outcome = Replayer::new(registry).replay_file("fixtures/temporal/greeting.json")?;
    let result = serde_json::json!("Hello, Ana! (approved by ops, sent)");
    assert_eq!(outcome.result, Some(RunResult::Completed(result)));
    Ok(())
}
