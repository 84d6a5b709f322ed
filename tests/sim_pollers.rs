//! A workflow task sync-matched to a poller that left is given back at once
//! (WorkflowTaskFailed, cause WorkerShutdown, failure type PollerGone) and
//! the run still closes; the simulator's abandoned requests make it happen.

use retrace::history::{EventKind, WorkflowTaskFailedCause};
use retrace_sim::workloads;

#[test]
fn a_task_matched_to_a_poller_that_left_is_given_back_and_the_run_still_closes() {
    let runner = workloads::transfers().into_runner();
    let mut given_back = 0;
    for seed in 0..2_000 {
        let result = runner.run_seed(seed);
        assert!(result.passed(), "seed {seed}: {:?}", result.violations);
        for history in result.histories.values() {
            given_back += history
                .events()
                .iter()
                .filter(|e| {
                    matches!(&e.kind, EventKind::WorkflowTaskFailed(a)
                        if a.cause == WorkflowTaskFailedCause::WorkerShutdown && a.failure.failure_type == "PollerGone")
                })
                .count();
            assert!(history.is_closed(), "seed {seed}: every run closes");
        }
        if given_back > 0 {
            return;
        }
    }
    panic!("no seed of 2,000 abandoned a sync-matched poll: the give-back path is untested");
}
