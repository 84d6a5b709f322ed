//! Swarm options: the fault probabilities, network shape and clock behaviour of
//! one seed, drawn from the seed (as TigerBeetle's VOPR does), so a campaign over
//! many seeds explores many different worlds. They are printed with every failure.

use std::fmt;

use retrace::types::fnv1a64;

/// How the network fails during the safety phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PartitionMode {
    /// No partitions.
    None,
    /// Links cut both ways.
    Symmetric,
    /// One direction only (requests arrive, replies are lost, or the reverse).
    OneWay,
    /// Messages held (delayed) until the link clears, not dropped.
    Clog,
}

/// The options of one seed.
#[derive(Clone, Debug, PartialEq)]
pub struct Swarm {
    /// Message latency range.
    pub latency_ms_min: u64,
    /// Message latency range.
    pub latency_ms_max: u64,
    /// Chance a message is lost.
    pub loss_rate: f64,
    /// Chance a message is delivered twice.
    pub duplicate_rate: f64,
    /// How partitions happen.
    pub partition_mode: PartitionMode,
    /// Faults in a generated plan, at most.
    pub faults_max: usize,
    /// Chance a storage write fails with an I/O error (nothing written).
    pub storage_io_error_rate: f64,
    /// Chance a committed write reports a timeout (ambiguous commit).
    pub storage_ambiguous_rate: f64,
    /// Storage write latency range.
    pub storage_latency_ms_max: u64,
    /// Chance a storage write stalls (hundreds of ms to seconds).
    pub storage_stall_rate: f64,
    /// Largest clock skew of a node.
    pub clock_skew_ms_max: i64,
    /// Largest clock drift of a node, in parts per million.
    pub clock_drift_ppm_max: i64,
    /// BUGGIFY fault points on.
    pub buggify: bool,
    /// Mixed into each node's clock draw, so seeds with equal bounds still differ.
    pub clock_salt: u64,
    /// Service nodes: 1, or a cluster of several over shared, sharded storage.
    pub services: usize,
}

/// splitmix64 over the seed: the swarm's own stream, independent of madsim's.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[(self.next() % choices.len() as u64) as usize]
    }
}

impl Swarm {
    /// The options of `seed`.
    pub fn from_seed(seed: u64) -> Swarm {
        let mut draws = Draws(seed ^ 0x5157_4152_4d00_0000);
        let latency = draws.pick(&[(1, 2), (1, 10), (1, 50), (5, 200)]);
        Swarm {
            latency_ms_min: latency.0,
            latency_ms_max: latency.1,
            loss_rate: draws.pick(&[0.0, 0.0, 0.01, 0.05]),
            duplicate_rate: draws.pick(&[0.0, 0.01, 0.05]),
            partition_mode: draws.pick(&[
                PartitionMode::None,
                PartitionMode::Symmetric,
                PartitionMode::OneWay,
                PartitionMode::Clog,
            ]),
            faults_max: draws.pick(&[0, 2, 5, 12]),
            storage_io_error_rate: draws.pick(&[0.0, 0.0, 0.005, 0.02]),
            storage_ambiguous_rate: draws.pick(&[0.0, 0.0, 0.005, 0.02]),
            storage_latency_ms_max: draws.pick(&[1, 3, 20]),
            storage_stall_rate: draws.pick(&[0.0, 0.0, 0.01, 0.05]),
            clock_skew_ms_max: draws.pick(&[0, 50, 2_000]),
            clock_drift_ppm_max: draws.pick(&[0, 100, 2_000]),
            buggify: draws.pick(&[false, true]),
            clock_salt: draws.next(),
            services: 1,
        }
    }

    /// A world without faults (for conformance tests and the liveness phase).
    pub fn calm() -> Swarm {
        Swarm {
            latency_ms_min: 1,
            latency_ms_max: 1,
            loss_rate: 0.0,
            duplicate_rate: 0.0,
            partition_mode: PartitionMode::None,
            faults_max: 0,
            storage_io_error_rate: 0.0,
            storage_ambiguous_rate: 0.0,
            storage_latency_ms_max: 1,
            storage_stall_rate: 0.0,
            clock_skew_ms_max: 0,
            clock_drift_ppm_max: 0,
            buggify: false,
            clock_salt: 0,
            services: 1,
        }
    }

    /// The skew and drift of node `name`, fixed for the seed.
    pub fn clock_of(&self, name: &str) -> (i64, i64) {
        let draw = fnv1a64(format!("clock:{name}:{}", self.clock_salt).as_bytes());
        let spread = |max: i64, bits: u64| {
            if max == 0 {
                0
            } else {
                (bits % (2 * max as u64 + 1)) as i64 - max
            }
        };
        (
            spread(self.clock_skew_ms_max, draw),
            spread(self.clock_drift_ppm_max, draw >> 32),
        )
    }

    /// At most how far apart two service nodes' clocks read within
    /// `elapsed_ms` of the start: their skews' difference, plus their
    /// drifts' over the time (both grow apart linearly).
    pub fn service_clock_spread_ms(&self, elapsed_ms: u64) -> u64 {
        let clocks: Vec<(i64, i64)> = (0..self.services)
            .map(|index| self.clock_of(&crate::nodes::service_name(index)))
            .collect();
        let mut spread_ms = 0;
        for (skew_a, drift_a) in &clocks {
            for (skew_b, drift_b) in &clocks {
                let drifted_ms =
                    ((drift_a - drift_b).unsigned_abs() * elapsed_ms).div_ceil(1_000_000);
                spread_ms = spread_ms.max((skew_a - skew_b).unsigned_abs() + drifted_ms);
            }
        }
        spread_ms
    }
}

/// A background fault of the swarm that shrinking can turn off.
pub struct Knob {
    pub name: &'static str,
    /// Whether the swarm has it on.
    pub is_on: fn(&Swarm) -> bool,
    /// Turns it off.
    pub turn_off: fn(&mut Swarm),
}

/// The swarm's background faults, in the order shrinking tries them.
pub const KNOBS: [Knob; 8] = [
    Knob {
        name: "message loss",
        is_on: |s| s.loss_rate > 0.0,
        turn_off: |s| s.loss_rate = 0.0,
    },
    Knob {
        name: "message duplication",
        is_on: |s| s.duplicate_rate > 0.0,
        turn_off: |s| s.duplicate_rate = 0.0,
    },
    Knob {
        name: "buggify",
        is_on: |s| s.buggify,
        turn_off: |s| s.buggify = false,
    },
    Knob {
        name: "storage I/O errors",
        is_on: |s| s.storage_io_error_rate > 0.0,
        turn_off: |s| s.storage_io_error_rate = 0.0,
    },
    Knob {
        name: "ambiguous commits",
        is_on: |s| s.storage_ambiguous_rate > 0.0,
        turn_off: |s| s.storage_ambiguous_rate = 0.0,
    },
    Knob {
        name: "storage stalls",
        is_on: |s| s.storage_stall_rate > 0.0,
        turn_off: |s| s.storage_stall_rate = 0.0,
    },
    Knob {
        name: "clock skew",
        is_on: |s| s.clock_skew_ms_max > 0,
        turn_off: |s| s.clock_skew_ms_max = 0,
    },
    Knob {
        name: "clock drift",
        is_on: |s| s.clock_drift_ppm_max > 0,
        turn_off: |s| s.clock_drift_ppm_max = 0,
    },
];

impl fmt::Display for Swarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "latency={}..{}ms loss={:.1}% duplicate={:.1}% partitions={:?} faults_max={} \
             storage(io_error={:.1}% ambiguous={:.1}% latency<={}ms stalls={:.1}%) clock(skew<=±{}ms drift<=±{}ppm) buggify={} services={}",
            self.latency_ms_min,
            self.latency_ms_max,
            self.loss_rate * 100.0,
            self.duplicate_rate * 100.0,
            self.partition_mode,
            self.faults_max,
            self.storage_io_error_rate * 100.0,
            self.storage_ambiguous_rate * 100.0,
            self.storage_latency_ms_max,
            self.storage_stall_rate * 100.0,
            self.clock_skew_ms_max,
            self.clock_drift_ppm_max,
            if self.buggify { "on" } else { "off" },
            self.services
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_swarm_and_seeds_differ() {
        assert_eq!(Swarm::from_seed(7), Swarm::from_seed(7));
        let distinct: std::collections::BTreeSet<String> =
            (0..50).map(|s| Swarm::from_seed(s).to_string()).collect();
        assert!(
            distinct.len() > 25,
            "seeds explore different worlds: {}",
            distinct.len()
        );
    }

    #[test]
    fn every_knob_turns_its_background_fault_off() {
        let mut on = 0;
        for seed in 0..64 {
            let swarm = Swarm::from_seed(seed);
            for knob in &KNOBS {
                if (knob.is_on)(&swarm) {
                    on += 1;
                    let mut off = swarm.clone();
                    (knob.turn_off)(&mut off);
                    assert!(!(knob.is_on)(&off), "{} stays on", knob.name);
                    assert_ne!(off, swarm);
                }
            }
        }
        assert!(on > 64, "seeds draw background faults: {on}");
        assert!(KNOBS.iter().all(|k| !(k.is_on)(&Swarm::calm())));
    }

    #[test]
    fn clock_skew_stays_within_its_bound() {
        let swarm = Swarm {
            clock_skew_ms_max: 50,
            clock_drift_ppm_max: 100,
            ..Swarm::calm()
        };
        for name in ["service", "worker-0", "worker-1", "client"] {
            let (skew, drift) = swarm.clock_of(name);
            assert!(
                skew.abs() <= 50 && drift.abs() <= 100,
                "{name}: {skew} {drift}"
            );
        }
    }

    #[test]
    fn the_services_clock_spread_bounds_every_pair_and_is_zero_for_one_service() {
        let swarm = Swarm {
            clock_skew_ms_max: 2_000,
            clock_drift_ppm_max: 2_000,
            services: 4,
            ..Swarm::calm()
        };
        let elapsed_ms = 600_000;
        let spread_ms = swarm.service_clock_spread_ms(elapsed_ms);
        let reads = |index: usize| {
            let (skew_ms, drift_ppm) = swarm.clock_of(&crate::nodes::service_name(index));
            skew_ms + drift_ppm * elapsed_ms as i64 / 1_000_000
        };
        let widest = (0..4)
            .flat_map(|a| (0..4).map(move |b| (a, b)))
            .map(|(a, b)| (reads(a) - reads(b)).unsigned_abs())
            .max()
            .expect("pairs");
        assert!(widest > 0, "four drawn clocks differ");
        assert!(spread_ms >= widest, "{spread_ms} < {widest}");
        assert!(spread_ms <= 4_000 + 2 * 4_000 * 600 / 1_000 + 1);
        let one = Swarm {
            services: 1,
            ..swarm
        };
        assert_eq!(one.service_clock_spread_ms(elapsed_ms), 0);
    }
}
