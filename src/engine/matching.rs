//! Task queues with long-poll matching.
//!
//! A task offered to a queue goes straight to a waiting poller if there is one,
//! else waits in the queue. Tasks are keys derived from run state; a poller that
//! takes a stale key (the task was started, timed out or the run closed)
//! simply takes the next one, so duplicates are harmless. Queries travel on
//! workflow queues beside workflow tasks.
//!
//! Sync match: a transition that schedules a workflow task while a poller
//! waits reserves that poller, starts the task in its own write, and sends it
//! the started task. A poller whose wait ends leaves the queue under the lock;
//! if it is no longer in the queue it was handed work, and it waits for it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tokio::sync::oneshot;

use super::machine::TaskKey;
use crate::api::{QueryTask, WorkflowTask};
use crate::types::Timestamp;

/// Workflow and activity queues of the same name are different queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QueueKind {
    Workflow,
    Activity,
}

/// What a poller receives.
#[derive(Clone, Debug, PartialEq)]
pub enum Dispatch {
    Task(TaskKey),
    /// A query, and when its asker stops waiting (service clock): a poller
    /// that takes it later skips it.
    Query(QueryTask, Timestamp),
    /// A workflow task already started for this poller (sync match).
    Started(Box<WorkflowTask>),
}

/// A poller waiting on a queue.
pub struct Poller {
    id: u64,
    /// Who polls (written into `WorkflowTaskStarted` on a sync match).
    pub identity: String,
    pub sender: oneshot::Sender<Dispatch>,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Dispatch>,
    present: BTreeSet<TaskKey>,
    pollers: VecDeque<Poller>,
}

/// Every queue of the service.
#[derive(Default)]
pub struct Matching {
    queues: BTreeMap<(QueueKind, String), Queue>,
    next_poller_id: u64,
}

impl Matching {
    /// Offers a task or query; a task already waiting in the queue is not added twice.
    pub fn offer(&mut self, kind: QueueKind, name: &str, item: Dispatch) {
        let queue = self.queues.entry((kind, name.to_string())).or_default();
        if let Dispatch::Task(key) = &item
            && queue.present.contains(key)
        {
            return;
        }
        let mut item = item;
        while let Some(poller) = queue.pollers.pop_front() {
            match poller.sender.send(item) {
                Ok(()) => return,
                Err(returned) => item = returned,
            }
        }
        if let Dispatch::Task(key) = &item {
            queue.present.insert(key.clone());
        }
        queue.items.push_back(item);
    }

    /// Takes the next waiting item, or registers a poller to receive one
    /// (its id, to leave with [`Matching::leave`]).
    pub fn take_or_wait(
        &mut self,
        kind: QueueKind,
        name: &str,
        identity: &str,
    ) -> Result<Dispatch, (u64, oneshot::Receiver<Dispatch>)> {
        let queue = self.queues.entry((kind, name.to_string())).or_default();
        if let Some(item) = queue.items.pop_front() {
            if let Dispatch::Task(key) = &item {
                queue.present.remove(key);
            }
            return Ok(item);
        }
        queue.pollers.retain(|poller| !poller.sender.is_closed());
        let (sender, receiver) = oneshot::channel();
        self.next_poller_id += 1;
        let id = self.next_poller_id;
        queue.pollers.push_back(Poller {
            id,
            identity: identity.to_string(),
            sender,
        });
        Err((id, receiver))
    }

    /// The poller `id` stops waiting. False if it was handed work meanwhile
    /// (it must then wait for that work).
    pub fn leave(&mut self, kind: QueueKind, name: &str, id: u64) -> bool {
        let Some(queue) = self.queues.get_mut(&(kind, name.to_string())) else {
            return false;
        };
        let before = queue.pollers.len();
        queue.pollers.retain(|poller| poller.id != id);
        let left = queue.pollers.len() < before;
        if queue.pollers.is_empty() && queue.items.is_empty() {
            // Queues are named by requests: forget the idle ones.
            self.queues.remove(&(kind, name.to_string()));
        }
        left
    }

    /// Reserves a waiting poller of a workflow queue for a sync match.
    pub fn reserve_workflow_poller(&mut self, name: &str) -> Option<Poller> {
        let queue = self
            .queues
            .get_mut(&(QueueKind::Workflow, name.to_string()))?;
        while let Some(poller) = queue.pollers.pop_front() {
            if !poller.sender.is_closed() {
                return Some(poller);
            }
        }
        None
    }

    /// Items waiting in a queue (for tests and describe).
    pub fn backlog(&self, kind: QueueKind, name: &str) -> usize {
        self.queues
            .get(&(kind, name.to_string()))
            .map_or(0, |q| q.items.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::machine::TaskKind;

    fn key(n: u64) -> TaskKey {
        TaskKey {
            run_id: "r".into(),
            task_queue: "q".into(),
            kind: TaskKind::Workflow {
                scheduled_event_id: n,
            },
        }
    }

    #[test]
    fn a_queued_task_is_not_queued_twice() {
        let mut matching = Matching::default();
        matching.offer(QueueKind::Workflow, "q", Dispatch::Task(key(2)));
        matching.offer(QueueKind::Workflow, "q", Dispatch::Task(key(2)));
        assert_eq!(matching.backlog(QueueKind::Workflow, "q"), 1);
        assert_eq!(
            matching.backlog(QueueKind::Activity, "q"),
            0,
            "activity queues are separate"
        );
    }

    #[test]
    fn a_waiting_poller_gets_the_task_directly() {
        let mut matching = Matching::default();
        let Err((_, mut receiver)) = matching.take_or_wait(QueueKind::Activity, "q", "w") else {
            panic!("queue is empty")
        };
        matching.offer(QueueKind::Activity, "q", Dispatch::Task(key(5)));
        assert_eq!(receiver.try_recv().unwrap(), Dispatch::Task(key(5)));
        assert_eq!(matching.backlog(QueueKind::Activity, "q"), 0);
    }

    #[test]
    fn a_gone_poller_does_not_swallow_the_task() {
        let mut matching = Matching::default();
        let Err((_, receiver)) = matching.take_or_wait(QueueKind::Workflow, "q", "w") else {
            panic!("queue is empty")
        };
        drop(receiver);
        matching.offer(QueueKind::Workflow, "q", Dispatch::Task(key(7)));
        assert_eq!(
            matching.take_or_wait(QueueKind::Workflow, "q", "w").ok(),
            Some(Dispatch::Task(key(7)))
        );
    }
}
