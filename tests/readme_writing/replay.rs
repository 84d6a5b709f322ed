use retrace::workflow::{Replayer, WorkflowRegistry};

#[test]
fn checkout_replays_its_saved_history() -> Result<(), Box<dyn std::error::Error>> {
    let mut registry = WorkflowRegistry::new();
    registry.register::<Checkout>();
    let outcome = Replayer::new(registry).replay_file("fixtures/histories/checkout.json")?;
    // Err(ReplayError::NonDeterminism(..)) names the event id, what the history has,
    // what the code produced, and the compared key (kind, id, type, input hash).
    assert!(outcome.result.is_some(), "the saved run closed");
    Ok(())
}
