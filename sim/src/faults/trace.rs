//! The fault trace: every fault injected into one seed's world, in order, with
//! its simulated time, so a report can show what happened around a failure and
//! a campaign can count faults by kind.
//!
//! | kind prefix     | what it records                                               | shrinkable |
//! |-----------------|---------------------------------------------------------------|------------|
//! | plan kinds      | `crash_worker`, `partition`, ...: the fault plan's faults       | yes (plan) |
//! | `net:`          | `loss`, `duplicate`, `partition_drop` of one message (`from->to`) | loss, duplicate: yes (swarm) |
//! | `buggify:`      | a BUGGIFY site that fired, and on which node                  | yes (swarm) |
//! | `storage:`      | `io_error`, `ambiguous`, `stall` of one write (with its run)  | yes (swarm, or the plan's storage trouble) |
//! | `clock:`        | a node's skew and drift, at t=0                               | yes (swarm) |
//! | `deploy`        | a worker restarted with new workflow code (`upgrade_at`)      | no: the scenario's own |

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Entries a trace keeps; later ones are counted, not kept.
pub const FAULT_TRACE_EVENTS_MAX: usize = 10_000;

/// One injected fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultEvent {
    /// Simulated milliseconds since the seed's world began.
    pub at_ms: u64,
    /// What kind (`net:loss`, `crash_worker`, `buggify:service.reply.delay`, ...).
    pub kind: String,
    /// Where: the link, node or fault plan entry.
    pub detail: String,
    /// The run it touched, when the fault knows it (storage faults do).
    pub run_id: Option<String>,
}

impl std::fmt::Display for FaultEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, ms) = (self.at_ms / 1_000, self.at_ms % 1_000);
        write!(f, "t={s:>5}.{ms:03}s  {:<36} {}", self.kind, self.detail)?;
        if let Some(run_id) = &self.run_id {
            write!(f, " (run {run_id})")?;
        }
        Ok(())
    }
}

impl FaultEvent {
    /// The event as JSON, for the failure directory.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"at_ms": self.at_ms, "kind": self.kind, "detail": self.detail, "run_id": self.run_id})
    }
}

#[derive(Default)]
struct Entries {
    events: Vec<FaultEvent>,
    dropped: u64,
    counts: BTreeMap<String, u64>,
}

/// The faults of one seed's world (shared by its network, storage and nodes).
#[derive(Default)]
pub struct FaultTrace {
    entries: Mutex<Entries>,
}

impl FaultTrace {
    /// Records a fault at `at_ms`.
    pub fn record(&self, at_ms: u64, kind: &str, detail: String, run_id: Option<&str>) {
        let mut entries = self.entries.lock().expect("fault trace lock");
        *entries.counts.entry(kind.to_string()).or_default() += 1;
        if entries.events.len() >= FAULT_TRACE_EVENTS_MAX {
            entries.dropped += 1;
            return;
        }
        debug_assert!(entries.events.last().is_none_or(|e| e.at_ms <= at_ms));
        entries.events.push(FaultEvent {
            at_ms,
            kind: kind.to_string(),
            detail,
            run_id: run_id.map(str::to_string),
        });
    }

    /// Faults recorded, by kind (every fault, kept or not).
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.entries
            .lock()
            .expect("fault trace lock")
            .counts
            .clone()
    }

    /// The kept entries, in time order, and how many were not kept.
    pub fn events(&self) -> (Vec<FaultEvent>, u64) {
        let entries = self.entries.lock().expect("fault trace lock");
        (entries.events.clone(), entries.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_keeps_its_first_entries_and_counts_every_one() {
        let trace = FaultTrace::default();
        let total = FAULT_TRACE_EVENTS_MAX as u64 + 5;
        for at_ms in 0..total {
            trace.record(at_ms, "net:loss", "a->b".to_string(), None);
        }
        trace.record(total, "storage:io_error", String::new(), Some("r1"));
        let (events, dropped) = trace.events();
        assert_eq!(events.len(), FAULT_TRACE_EVENTS_MAX);
        assert_eq!(dropped, 6);
        assert_eq!(trace.counts()["net:loss"], total);
        assert_eq!(trace.counts()["storage:io_error"], 1);
    }
}
