//! Capacity: no worker ran more activities at once than its limit (seen as
//! attempts start), and the service never handed a worker more tasks than the
//! room the worker offered (seen as answers arrive, before the worker drops
//! the extra ones).

use crate::world::cluster::Observed;
use crate::world::lock;

use super::Violation;

/// What the workers saw of their capacity while the run went on.
pub fn check_capacity(observed: &Observed) -> Vec<Violation> {
    let ran = lock(&observed.capacity_violations).clone();
    let handed = lock(&observed.handed_violations).clone();
    let mut violations: Vec<Violation> = ran
        .into_iter()
        .map(|m| Violation::new("worker capacity", m))
        .collect();
    violations.extend(
        handed
            .into_iter()
            .map(|m| Violation::new("tasks within the room offered", m)),
    );
    violations
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use retrace::worker::WorkerObserver;

    use super::*;
    use crate::world::cluster::NodeObserver;

    #[test]
    fn a_service_handing_more_tasks_than_the_room_offered_is_caught() {
        let observed = Arc::new(Observed::default());
        let observer = NodeObserver::new(observed.clone(), "worker-0", 2);
        observer.tasks_handed("run-1", "activity", 2, 2);
        observer.tasks_handed("run-1", "workflow", 1, 1);
        assert!(check_capacity(&observed).is_empty());
        observer.tasks_handed("run-1", "activity", 1, 3);
        observer.tasks_handed("run-2", "workflow", 0, 1);
        let violations = check_capacity(&observed);
        let invariants: Vec<&str> = violations.iter().map(|v| v.invariant).collect();
        assert_eq!(invariants, ["tasks within the room offered"; 2]);
        assert!(
            violations[0].message.contains("3 activity tasks"),
            "{}",
            violations[0]
        );
    }
}
