//! The bundled scenarios: what the campaign runner and CI simulate.
//!
//! | name        | what it exercises                                                   |
//! |-------------|---------------------------------------------------------------------|
//! | `small`     | one workflow of three activities, two workers, one fault (the speed benchmark) |
//! | `transfers` | money transfers with timers, signals, parallel activities, many faults |
//! | `messages`  | the order-of-messages example: timer, database, verification, signal, two parallel HTTP fetches, queries |
//! | `generated` | a program drawn from the seed over every engine feature, checked against a reference model |
//! | `cluster`   | transfers on 2 to 5 services over one sharded storage, with service crashes, stalls past the lease and storage cut-offs |
//! | `generated-cluster` | the generated program on 2 to 5 services over one sharded storage, with the cluster's faults |

pub mod generated;
mod messages;
mod small;
mod transfers;

pub use generated::{generated, generated_cluster};
pub use messages::messages;
pub use small::small;
pub use transfers::{cluster, transfers};

use crate::Simulation;

/// Every bundled scenario.
pub fn all() -> Vec<Simulation> {
    vec![
        small(),
        transfers(),
        messages(),
        generated(),
        cluster(),
        generated_cluster(),
    ]
}

/// The bundled scenario called `name`.
pub fn by_name(name: &str) -> Option<Simulation> {
    all().into_iter().find(|s| s.name() == name)
}
