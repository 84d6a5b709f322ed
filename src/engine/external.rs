//! Delivering workflows' signals and cancel requests to other workflows.
//!
//! A request is pending in its sender's state from the write that initiated
//! it (see [`super::machine::external`]). Every sync of a run (after each
//! commit, and when a run is loaded: recovery included) queues its pending
//! requests; one loop takes them from the queue and delivers each in a task
//! of its own (one at a time per request): the target's ordinary signal or
//! cancel transition, with the request's own request id, then the outcome
//! into the sender's history. A delivery that cannot reach storage is tried
//! again with backoff, then left to the next sync or restart; a repeated
//! delivery is de-duplicated by the target (the signal's request id; a
//! second cancel request changes nothing).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};

use tokio::sync::Notify;

use super::machine::external::{Delivery, ExternalAsk, ExternalRequest};
use super::machine::{self, RunState};
use super::service::Inner;
use crate::api::{ErrorCode, Request, RunRef, ServiceError};
use crate::history::ExternalFailedCause;

/// Looks of a workflow id's current run for one delivery (a run that
/// continues as new closes while a delivery finds it).
const CURRENT_RUN_LOOKUPS_MAX: usize = 3;

/// A pending request: its sender's run id and initiated event id.
pub type ExternalKey = (String, u64);

/// Requests to deliver, and those being delivered.
#[derive(Default)]
pub struct ExternalQueue {
    queued: BTreeMap<ExternalKey, ExternalRequest>,
    in_flight: BTreeSet<ExternalKey>,
}

impl ExternalQueue {
    /// Queues the run's pending requests; true if any is new.
    pub fn offer(&mut self, state: &RunState) -> bool {
        let mut added = false;
        for (initiated, request) in &state.externals {
            let key = (state.run_id.clone(), *initiated);
            if !self.in_flight.contains(&key) {
                added |= self.queued.insert(key, request.clone()).is_none();
            }
        }
        added
    }

    fn take(&mut self) -> Vec<(ExternalKey, ExternalRequest)> {
        let taken = std::mem::take(&mut self.queued);
        self.in_flight.extend(taken.keys().cloned());
        taken.into_iter().collect()
    }

    fn done(&mut self, key: &ExternalKey) {
        self.in_flight.remove(key);
    }
}

/// Delivers queued requests until the service is dropped.
pub async fn external_loop(weak: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let taken = inner.lock_externals().take();
        for (key, request) in taken {
            let task = inner.clone();
            inner.env.spawn("service-external", async move {
                task.deliver_external(&key, &request).await;
                task.lock_externals().done(&key);
            });
        }
        drop(inner);
        wake.notified().await;
    }
}

impl Inner {
    /// Delivers one request and records how it went, retrying while storage
    /// does not answer.
    async fn deliver_external(self: &Arc<Self>, key: &ExternalKey, request: &ExternalRequest) {
        let (run_id, initiated) = (key.0.as_str(), key.1);
        let attempts_max = self.config.resync_attempts_max;
        for attempt in 0..attempts_max {
            let recorded = match self.try_deliver(run_id, initiated, request).await {
                Ok(delivery) => {
                    self.transition(run_id, |step| {
                        machine::external::on_delivered(step, initiated, delivery);
                        Ok(())
                    })
                    .await
                }
                Err(error) => Err(error),
            };
            match recorded {
                Ok(()) => return,
                Err(error) if error.code == ErrorCode::NotFound => return,
                Err(error) => {
                    tracing::warn!(run_id, initiated, %error, attempt, "delivery to another workflow failed; retrying");
                }
            }
            self.env.sleep_ms(50u64 << attempt.min(5)).await;
        }
        tracing::error!(
            run_id,
            initiated,
            "gave up delivering to another workflow; it is tried again when the run is loaded"
        );
    }

    /// Signals or cancels the target; `Ok(Err(..))` if it does not take it.
    /// A workflow id's current run that closed meanwhile (it continued as
    /// new, say) is looked up again, a few times.
    async fn try_deliver(
        self: &Arc<Self>,
        run_id: &str,
        initiated: u64,
        request: &ExternalRequest,
    ) -> Result<Delivery, ServiceError> {
        let mut closed: Option<String> = None;
        for _ in 0..CURRENT_RUN_LOOKUPS_MAX {
            match self.try_deliver_once(run_id, initiated, request).await? {
                Err(Some(target))
                    if request.run_id.is_none() && closed.as_ref() != Some(&target) =>
                {
                    closed = Some(target);
                }
                Err(_) => break,
                Ok(target) => return Ok(Ok(target)),
            }
        }
        Ok(Err(ExternalFailedCause::ExternalWorkflowExecutionNotFound))
    }

    /// Sends a signal or cancel request to the cluster member that owns the
    /// target's shard (through the service's network, which follows
    /// `NotOwner` to it). The request id makes a repeated signal land once.
    async fn forward_external(
        &self,
        target_run_id: &str,
        request: &ExternalRequest,
        request_id: String,
        identity: String,
    ) -> Result<(), ServiceError> {
        let run = RunRef {
            workflow_id: request.workflow_id.clone(),
            run_id: Some(target_run_id.to_string()),
        };
        let forwarded = match &request.ask {
            ExternalAsk::Signal { signal_name, input } => {
                Request::SignalWorkflow(crate::api::SignalWorkflowRequest {
                    run,
                    signal_name: signal_name.clone(),
                    input: input.clone(),
                    request_id,
                    identity,
                })
            }
            ExternalAsk::Cancel => Request::CancelWorkflow(crate::api::CancelWorkflowRequest {
                run,
                reason: "requested by a workflow".to_string(),
                identity,
            }),
        };
        self.forward(forwarded).await.map(drop)
    }

    /// One try: `Ok(Err(Some(run)))` if `run` was found but is closed,
    /// `Ok(Err(None))` if there is no such run.
    async fn try_deliver_once(
        self: &Arc<Self>,
        run_id: &str,
        initiated: u64,
        request: &ExternalRequest,
    ) -> Result<Result<String, Option<String>>, ServiceError> {
        let not_found = Ok(Err(None));
        let target = RunRef {
            workflow_id: request.workflow_id.clone(),
            run_id: request.run_id.clone(),
        };
        let target_run_id = match self.resolve(&target).await {
            Ok(target_run_id) => target_run_id,
            Err(error) if error.code == ErrorCode::NotFound => return not_found,
            Err(error) => return Err(error),
        };
        let request_id = ExternalRequest::request_id(run_id, initiated);
        let identity = format!("workflow run {run_id}");
        if self.check_owner(&request.workflow_id).is_err() {
            let forwarded = self
                .forward_external(&target_run_id, request, request_id, identity)
                .await;
            return match forwarded {
                Ok(()) => Ok(Ok(target_run_id)),
                Err(error) if error.code == ErrorCode::RunClosed => Ok(Err(Some(target_run_id))),
                Err(error) if error.code == ErrorCode::NotFound => not_found,
                Err(error) => Err(error),
            };
        }
        let outcome = self
            .transition(&target_run_id, |step| {
                if step.state.workflow_id != request.workflow_id {
                    return Err(ServiceError::new(
                        ErrorCode::NotFound,
                        "another workflow's run",
                    ));
                }
                match &request.ask {
                    ExternalAsk::Signal { signal_name, input } => machine::run::on_signal(
                        step,
                        signal_name,
                        input.clone(),
                        &identity,
                        &request_id,
                    )
                    .map(drop),
                    ExternalAsk::Cancel => machine::run::on_cancel_requested(
                        step,
                        "requested by a workflow",
                        &identity,
                    ),
                }
            })
            .await;
        match outcome {
            Ok(()) => Ok(Ok(target_run_id)),
            Err(error) if error.code == ErrorCode::RunClosed => Ok(Err(Some(target_run_id))),
            Err(error) if error.code == ErrorCode::NotFound => not_found,
            Err(error) => Err(error),
        }
    }
}
