//! The bundled scenarios: what the campaign runner and CI simulate.
//!
//! | name        | what it exercises                                                   |
//! |-------------|---------------------------------------------------------------------|
//! | `small`     | one workflow of three activities, two workers, one fault (the speed benchmark) |
//! | `transfers` | money transfers with timers, signals, parallel activities, many faults |
//! | `messages`  | the order-of-messages example: timer, database, verification, signal, two parallel HTTP fetches, queries |
//! | `generated` | a program drawn from the seed over every engine feature, checked against a reference model |

pub mod generated;
mod messages;
mod small;
mod transfers;

pub use generated::generated;
pub use messages::messages;
pub use small::small;
pub use transfers::transfers;

use crate::Simulation;

/// Every bundled scenario.
pub fn all() -> Vec<Simulation> {
    vec![small(), transfers(), messages(), generated()]
}

/// The bundled scenario called `name`.
pub fn by_name(name: &str) -> Option<Simulation> {
    all().into_iter().find(|s| s.name() == name)
}
