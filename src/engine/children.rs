//! Starting child workflows, reporting their close to their parent, and
//! applying parent close policies.
//!
//! Everything here is one idempotent step, "reconcile the child initiated at
//! event E of run P", run for a key `(P, E)` from a queue with one loop
//! (one step at a time per key; a key offered while its step runs is run
//! again after it). The step reads the parent's entry for the child
//! ([`super::machine::child`]) and does what is left:
//!
//! | parent | child's entry | does                                                      |
//! |--------|---------------|-----------------------------------------------------------|
//! | open   | initiated     | starts the child (request id `{P}/{E}`), records Started or StartFailed, then as below |
//! | open   | started       | if the child's chain closed, records its close            |
//! | closed | any           | applies the close policy to the chain's open run (found by the run naming P and E as its parent), then drops the entry |
//! | any    | none          | nothing                                                   |
//!
//! Keys are offered when the parent's state has work for them (a child
//! initiated, or the parent closed: see [`offers`]), when a child's chain
//! closes (its run names the key), and at recovery for every child of an
//! open run and the parent of every open child: so a crash anywhere between
//! a parent's command, the child's start, the child's close and the
//! parent's close loses nothing.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};

use tokio::sync::Notify;

use super::machine::child::{self, ChildState};
use super::machine::{self, RunState};
use super::service::Inner;
use crate::api::{ErrorCode, RunOutcome, RunRef, ServiceError};
use crate::history::{EventKind, ParentExecution};
use crate::types::ParentClosePolicy;

/// Runs a child's chain is followed back to find the run its start began.
const CHAIN_RUNS_BACK_MAX: usize = 64;

/// A child: its parent's run id and initiated event id.
pub type ChildKey = (String, u64);

/// Runs of one continue-as-new chain followed to find its close, at most.
const CHAIN_RUNS_MAX: usize = 1_000;

/// Looks for a child's open run when applying a policy (it may continue as
/// new under the terminate), at most.
const OPEN_RUN_LOOKUPS_MAX: usize = 3;

/// Children to reconcile, and those being reconciled.
#[derive(Default)]
pub struct ChildQueue {
    queued: BTreeSet<ChildKey>,
    in_flight: BTreeSet<ChildKey>,
    /// Offered while in flight: run again once done.
    again: BTreeSet<ChildKey>,
}

impl ChildQueue {
    /// Queues `key`; true if the loop must wake for it. A key in flight is
    /// run again after its step if a commit offers it (`again`: the state
    /// changed under the step), not if a load does (the step's own reads
    /// load runs: that would loop).
    pub fn offer(&mut self, key: ChildKey, again: bool) -> bool {
        if self.in_flight.contains(&key) {
            if again {
                self.again.insert(key);
            }
            return false;
        }
        self.queued.insert(key)
    }

    fn take(&mut self) -> Vec<ChildKey> {
        let taken = std::mem::take(&mut self.queued);
        self.in_flight.extend(taken.iter().cloned());
        taken.into_iter().collect()
    }

    /// `key`'s step ended; true if it was offered meanwhile (queued again).
    fn done(&mut self, key: &ChildKey) -> bool {
        self.in_flight.remove(key);
        self.again.remove(key) && self.queued.insert(key.clone())
    }
}

/// The keys a run's state has work for: children to start, a closed
/// parent's policies, and a closed child chain's report to its parent.
/// Offered after every commit, and whenever the run is loaded (a write
/// whose outcome was unknown is found committed by the reload).
pub fn offers(state: &RunState) -> Vec<ChildKey> {
    let closed = state.status.is_closed();
    let mut keys: Vec<ChildKey> = state
        .children
        .iter()
        .filter(|(_, child)| closed || child.started.is_none())
        .map(|(initiated, _)| (state.run_id.clone(), *initiated))
        .collect();
    let chain_closed = closed && state.successor().is_none();
    if let (true, Some(parent)) = (chain_closed, &state.parent) {
        keys.push((parent.run_id.clone(), parent.initiated_event_id));
    }
    keys
}

/// The keys to look at when a run is recovered: every child (one may have
/// closed while the service was down) and its parent (which may have closed).
pub fn recovery_offers(state: &RunState) -> Vec<ChildKey> {
    let mut keys: Vec<ChildKey> = state
        .children
        .keys()
        .map(|initiated| (state.run_id.clone(), *initiated))
        .collect();
    if let Some(parent) = &state.parent {
        keys.push((parent.run_id.clone(), parent.initiated_event_id));
    }
    keys
}

/// Reconciles queued children until the service is dropped.
pub async fn child_loop(weak: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let taken = inner.lock_children().take();
        for key in taken {
            let task = inner.clone();
            inner.env.spawn("service-child", async move {
                task.reconcile_child(&key).await;
                if task.lock_children().done(&key) {
                    task.children_wake.notify_one();
                }
            });
        }
        drop(inner);
        wake.notified().await;
    }
}

impl Inner {
    /// One reconcile step, retried with backoff while storage does not answer.
    async fn reconcile_child(self: &Arc<Self>, key: &ChildKey) {
        let (run_id, initiated) = (key.0.as_str(), key.1);
        let attempts_max = self.config.resync_attempts_max;
        for attempt in 0..attempts_max {
            match self.try_reconcile_child(run_id, initiated).await {
                Ok(()) => return,
                Err(error) if error.code == ErrorCode::NotFound => return,
                Err(error) => {
                    tracing::warn!(run_id, initiated, %error, attempt, "child workflow step failed; retrying");
                }
            }
            self.env.sleep_ms(50u64 << attempt.min(5)).await;
        }
        tracing::error!(
            run_id,
            initiated,
            "gave up on a child workflow step; it is tried again when the run is loaded"
        );
    }

    async fn try_reconcile_child(
        self: &Arc<Self>,
        parent_run_id: &str,
        initiated: u64,
    ) -> Result<(), ServiceError> {
        let parent = self.run_snapshot(parent_run_id).await?;
        if self.check_owner(&parent.workflow_id).is_err() {
            // Another member's parent: its own sweep reconciles the child.
            return Ok(());
        }
        let Some(child) = parent.children.get(&initiated).cloned() else {
            return Ok(());
        };
        let parent_ref = child::parent_of(&parent, initiated);
        if parent.status.is_closed() {
            return self.apply_close_policy(&parent, &parent_ref, &child).await;
        }
        let first_run_id = match &child.started {
            Some(started) => started.run_id.clone(),
            None => match self.start_child(&parent, initiated, &child).await? {
                Some(run_id) => run_id,
                None => return Ok(()),
            },
        };
        let closed = self
            .chain_close(&child.workflow_id, &first_run_id, &parent_ref)
            .await?;
        if let Some((run_id, outcome)) = closed {
            self.transition(parent_run_id, |step| {
                child::on_child_closed(step, initiated, &run_id, &outcome);
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    async fn run_snapshot(self: &Arc<Self>, run_id: &str) -> Result<RunState, ServiceError> {
        self.peek_run(run_id).await
    }

    /// Starts the child (or finds the run an earlier try started) and
    /// records it; `None` if its id is taken (recorded as a failed start).
    async fn start_child(
        self: &Arc<Self>,
        parent: &RunState,
        initiated: u64,
        child: &ChildState,
    ) -> Result<Option<String>, ServiceError> {
        let request = child.start_request(parent, initiated);
        let parent_ref = child::parent_of(parent, initiated);
        let started = match self.check_owner(&request.workflow_id) {
            Ok(()) => self.start_run(&request, Some(&parent_ref)).await,
            Err(_) => self.forward_child_start(request, parent_ref).await,
        };
        match started {
            Ok(started) => {
                // A retry finds the chain's current run: record its first.
                let first_run_id = self.first_run_of(&started.run_id).await?;
                self.transition(&parent.run_id, |step| {
                    child::on_started(step, initiated, &first_run_id);
                    Ok(())
                })
                .await?;
                Ok(Some(first_run_id))
            }
            Err(error) if error.code == ErrorCode::AlreadyStarted => {
                tracing::debug!(%error, "child workflow not started");
                self.transition(&parent.run_id, |step| {
                    child::on_start_failed(step, initiated);
                    Ok(())
                })
                .await?;
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// The first run of the chain `run_id` belongs to: its start's
    /// `continued_execution_run_id` followed back (continue-as-new, a retry,
    /// a cron run), at most `CHAIN_RUNS_BACK_MAX` runs.
    async fn first_run_of(&self, run_id: &str) -> Result<String, ServiceError> {
        let mut first = run_id.to_string();
        for _ in 0..CHAIN_RUNS_BACK_MAX {
            let events = self
                .storage
                .read_events(&first, 1, 1)
                .await
                .map_err(|e| super::service::unavailable(&e))?;
            let previous = match events.first().map(|e| &e.kind) {
                Some(EventKind::WorkflowExecutionStarted(started)) => {
                    started.continued_execution_run_id.clone()
                }
                _ => None,
            };
            match previous {
                Some(previous) => first = previous,
                None => return Ok(first),
            }
        }
        tracing::warn!(
            run_id,
            first,
            "a child's chain is longer than we follow back"
        );
        Ok(first)
    }

    /// How the child's chain closed (the run that closed it, and how), if
    /// it did. Its current run is the workflow id's if that names this
    /// parent; else the chain is followed from its first run.
    async fn chain_close(
        self: &Arc<Self>,
        workflow_id: &str,
        first_run_id: &str,
        parent: &ParentExecution,
    ) -> Result<Option<(String, RunOutcome)>, ServiceError> {
        let mut state = match self.own_current_run(workflow_id, parent).await? {
            Some(state) => state,
            None => self.run_snapshot(first_run_id).await?,
        };
        for _ in 0..CHAIN_RUNS_MAX {
            match (&state.outcome, state.successor()) {
                (None, _) => return Ok(None),
                (Some(_), Some(next_run_id)) => {
                    state = self.run_snapshot(next_run_id).await?;
                }
                (Some(outcome), None) => return Ok(Some((state.run_id.clone(), outcome.clone()))),
            }
        }
        let message = format!("child {workflow_id:?}: a chain longer than {CHAIN_RUNS_MAX} runs");
        Err(ServiceError::new(ErrorCode::Unavailable, message))
    }

    /// The workflow id's current run, if it is this parent's child.
    async fn own_current_run(
        self: &Arc<Self>,
        workflow_id: &str,
        parent: &ParentExecution,
    ) -> Result<Option<RunState>, ServiceError> {
        let run = RunRef {
            workflow_id: workflow_id.to_string(),
            run_id: None,
        };
        match self.snapshot(&run).await {
            Ok(state) if state.parent.as_ref() == Some(parent) => Ok(Some(state)),
            Ok(_) => Ok(None),
            Err(error) if error.code == ErrorCode::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The parent closed: terminates or cancels the child's open run (if
    /// any, and its policy says so), then drops the child's entry.
    async fn apply_close_policy(
        self: &Arc<Self>,
        parent: &RunState,
        parent_ref: &ParentExecution,
        child: &ChildState,
    ) -> Result<(), ServiceError> {
        if child.parent_close_policy != ParentClosePolicy::Abandon {
            for _ in 0..OPEN_RUN_LOOKUPS_MAX {
                let Some(open) = self.own_current_run(&child.workflow_id, parent_ref).await? else {
                    break;
                };
                match self.apply_policy_to(parent, child, &open.run_id).await {
                    Err(error) if error.code == ErrorCode::RunClosed => continue,
                    applied => {
                        applied?;
                        break;
                    }
                }
            }
        }
        let initiated = parent_ref.initiated_event_id;
        self.transition(&parent.run_id, |step| {
            child::on_policy_applied(step, initiated);
            Ok(())
        })
        .await
    }

    async fn apply_policy_to(
        self: &Arc<Self>,
        parent: &RunState,
        child: &ChildState,
        run_id: &str,
    ) -> Result<(), ServiceError> {
        let identity = format!("parent workflow run {}", parent.run_id);
        let reason = format!(
            "parent close policy {:?}: the parent run {} of workflow {:?} closed ({})",
            child.parent_close_policy,
            parent.run_id,
            parent.workflow_id,
            parent.status.as_str()
        );
        tracing::debug!(run_id, %reason, "applying a parent close policy");
        if self.check_owner(&child.workflow_id).is_err() {
            return self
                .forward_close_policy(child, run_id, reason, identity)
                .await;
        }
        self.transition(run_id, |step| match child.parent_close_policy {
            ParentClosePolicy::Terminate => {
                machine::run::on_terminate(step, &reason, None, &identity)
            }
            ParentClosePolicy::RequestCancel => {
                machine::run::on_cancel_requested(step, &reason, &identity)
            }
            ParentClosePolicy::Abandon => Ok(()),
        })
        .await
    }
}

impl Inner {
    /// Starts a child on the member that owns its shard.
    async fn forward_child_start(
        &self,
        start: crate::api::StartWorkflowRequest,
        parent: ParentExecution,
    ) -> Result<crate::api::StartWorkflowResponse, ServiceError> {
        let request =
            crate::api::Request::StartChildWorkflow(crate::api::StartChildWorkflowRequest {
                start,
                parent,
            });
        match self.forward(request).await? {
            crate::api::Response::StartWorkflow(started) => Ok(started),
            other => Err(ServiceError::new(
                ErrorCode::Internal,
                format!("a child's start was answered {other:?}"),
            )),
        }
    }

    /// Applies a close policy to a child's run on the member that owns it.
    async fn forward_close_policy(
        &self,
        child: &ChildState,
        run_id: &str,
        reason: String,
        identity: String,
    ) -> Result<(), ServiceError> {
        let run = RunRef {
            workflow_id: child.workflow_id.clone(),
            run_id: Some(run_id.to_string()),
        };
        let request = match child.parent_close_policy {
            ParentClosePolicy::Terminate => {
                crate::api::Request::TerminateWorkflow(crate::api::TerminateWorkflowRequest {
                    run,
                    reason,
                    details: None,
                    identity,
                })
            }
            ParentClosePolicy::RequestCancel => {
                crate::api::Request::CancelWorkflow(crate::api::CancelWorkflowRequest {
                    run,
                    reason,
                    identity,
                })
            }
            ParentClosePolicy::Abandon => return Ok(()),
        };
        self.forward(request).await.map(drop)
    }
}
