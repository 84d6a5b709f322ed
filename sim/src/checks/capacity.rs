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
