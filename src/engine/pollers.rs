//! The pollers each task queue has seen: who polled, for which kind of task,
//! when last, serving which workflow types. Read by `DescribeTaskQueue` (the
//! Web UI's task queue page, the CLI's warning when no worker polls a run's
//! queue). Bounded: past [`POLLERS_MAX`] the one that polled longest ago is
//! forgotten. Times are the service's (`Env`), so the simulator sees them.

use std::collections::BTreeMap;

use crate::api::{PollerInfo, PollerKind};
use crate::types::Timestamp;

/// Pollers remembered, at most.
pub const POLLERS_MAX: usize = 1_000;

/// (task queue, kind, identity).
type PollerKey = (String, PollerKind, String);

/// Pollers seen, with when each last polled and the types it serves.
#[derive(Debug, Default)]
pub struct PollerLog {
    seen: BTreeMap<PollerKey, (Timestamp, Vec<String>)>,
}

impl PollerLog {
    /// Notes a poll of `task_queue` for `kind` tasks by `identity` at `now`.
    pub fn note(
        &mut self,
        task_queue: &str,
        kind: PollerKind,
        identity: &str,
        workflow_types: &[String],
        now: Timestamp,
    ) {
        let key = (task_queue.to_string(), kind, identity.to_string());
        self.seen.insert(key, (now, workflow_types.to_vec()));
        while self.seen.len() > POLLERS_MAX {
            let oldest = self
                .seen
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(key, _)| key.clone())
                .expect("more than the limit: not empty");
            self.seen.remove(&oldest);
        }
        debug_assert!(self.seen.len() <= POLLERS_MAX);
    }

    /// The pollers of `task_queue` (of every queue if `None`), by queue, the
    /// latest first within one.
    pub fn describe(&self, task_queue: Option<&str>) -> Vec<PollerInfo> {
        let mut pollers: Vec<PollerInfo> = self
            .seen
            .iter()
            .filter(|((queue, _, _), _)| task_queue.is_none_or(|q| q == queue))
            .map(|((queue, kind, identity), (at, types))| PollerInfo {
                task_queue: queue.clone(),
                kind: *kind,
                identity: identity.clone(),
                last_poll_time: *at,
                workflow_types: types.clone(),
            })
            .collect();
        pollers.sort_by(|a, b| {
            (
                &a.task_queue,
                std::cmp::Reverse(a.last_poll_time),
                &a.identity,
            )
                .cmp(&(
                    &b.task_queue,
                    std::cmp::Reverse(b.last_poll_time),
                    &b.identity,
                ))
        });
        pollers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poller_is_listed_with_its_last_poll_and_the_oldest_is_forgotten_past_the_limit() {
        let mut log = PollerLog::default();
        for i in 0..=POLLERS_MAX as u64 {
            log.note(
                "q",
                PollerKind::Activity,
                &format!("w{i}"),
                &[],
                Timestamp(i),
            );
        }
        log.note(
            "q",
            PollerKind::Workflow,
            "w5",
            &["greet".into()],
            Timestamp(10_000),
        );
        let all = log.describe(Some("q"));
        assert_eq!(all.len(), POLLERS_MAX);
        assert_eq!(all[0].identity, "w5");
        assert_eq!(all[0].workflow_types, ["greet"]);
        assert!(
            !all.iter().any(|p| p.identity == "w0"),
            "the oldest went first"
        );
        assert!(log.describe(Some("other")).is_empty());
    }
}
