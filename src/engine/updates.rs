//! The service's update registry: updates admitted and not yet accepted or
//! rejected, and the callers waiting for updates' outcomes, by run.
//!
//! Nothing here is durable (see `machine::update`): an admitted update that
//! a crash forgets is admitted again by its caller's retry, and an accepted
//! one is in the run's history, where a retry finds it.

use std::collections::BTreeMap;

use tokio::sync::oneshot;

use crate::api::{ErrorCode, ServiceError, UpdateRejection, UpdateRequest, UpdateWorkflowResponse};
use crate::history::UpdateOutcome;

/// Callers one update may have waiting at once; more are refused.
pub const UPDATE_WAITERS_MAX: usize = 64;

/// What a waiting caller receives.
pub(super) type UpdateAnswer = Result<UpdateWorkflowResponse, ServiceError>;

#[derive(Default)]
struct RunUpdates {
    /// Admitted, in arrival order (at most `UPDATES_IN_FLIGHT_MAX`).
    pending: Vec<UpdateRequest>,
    /// Callers by update id.
    waiters: BTreeMap<String, Vec<oneshot::Sender<UpdateAnswer>>>,
}

/// Admitted updates and their callers, by run id.
#[derive(Default)]
pub(super) struct UpdateRegistry {
    runs: BTreeMap<String, RunUpdates>,
}

impl UpdateRegistry {
    /// Admits `update` (once per id) and returns a receiver for its outcome.
    /// `in_flight` is the run's accepted, uncompleted updates.
    pub fn admit(
        &mut self,
        run_id: &str,
        update: &UpdateRequest,
        in_flight: usize,
    ) -> Result<oneshot::Receiver<UpdateAnswer>, ServiceError> {
        let run = self.runs.entry(run_id.to_string()).or_default();
        let known = run.pending.iter().any(|p| p.update_id == update.update_id);
        if !known {
            if run.pending.len() + in_flight >= super::machine::update::UPDATES_IN_FLIGHT_MAX {
                let message = format!(
                    "run {run_id} has {} updates in flight, its limit: retry when one completes",
                    super::machine::update::UPDATES_IN_FLIGHT_MAX
                );
                return Err(ServiceError::new(ErrorCode::ResourceExhausted, message));
            }
            run.pending.push(update.clone());
        }
        Self::waiter(run, run_id, &update.update_id)
    }

    /// A receiver for the outcome of an update the run accepted.
    pub fn wait(
        &mut self,
        run_id: &str,
        update_id: &str,
    ) -> Result<oneshot::Receiver<UpdateAnswer>, ServiceError> {
        let run = self.runs.entry(run_id.to_string()).or_default();
        Self::waiter(run, run_id, update_id)
    }

    fn waiter(
        run: &mut RunUpdates,
        run_id: &str,
        update_id: &str,
    ) -> Result<oneshot::Receiver<UpdateAnswer>, ServiceError> {
        let waiters = run.waiters.entry(update_id.to_string()).or_default();
        waiters.retain(|sender| !sender.is_closed());
        if waiters.len() >= UPDATE_WAITERS_MAX {
            let message = format!(
                "update {update_id:?} of run {run_id} has {UPDATE_WAITERS_MAX} callers waiting, its limit"
            );
            return Err(ServiceError::new(ErrorCode::ResourceExhausted, message));
        }
        let (sender, receiver) = oneshot::channel();
        waiters.push(sender);
        Ok(receiver)
    }

    /// The run's admitted updates not in `accepted`, in arrival order; those
    /// in it (accepted meanwhile) are dropped.
    pub fn pending(
        &mut self,
        run_id: &str,
        accepted: &BTreeMap<String, super::machine::update::UpdateState>,
    ) -> Vec<UpdateRequest> {
        let Some(run) = self.runs.get_mut(run_id) else {
            return Vec::new();
        };
        run.pending.retain(|p| !accepted.contains_key(&p.update_id));
        run.pending.clone()
    }

    /// The run's admitted updates, for a workflow task about to be handed out.
    pub fn pending_for_task(&self, run_id: &str) -> Vec<UpdateRequest> {
        self.runs
            .get(run_id)
            .map(|run| run.pending.clone())
            .unwrap_or_default()
    }

    /// The workflow's validator refused an update: its callers are told.
    pub fn on_rejected(&mut self, run_id: &str, rejection: UpdateRejection) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        let before = run.pending.len();
        run.pending.retain(|p| p.update_id != rejection.update_id);
        if run.pending.len() == before {
            return; // Not admitted here (answered already, or a stale task).
        }
        let answer = UpdateWorkflowResponse {
            run_id: run_id.to_string(),
            outcome: UpdateOutcome::Failure(rejection.failure),
            rejected: true,
        };
        Self::answer(run, &rejection.update_id, Ok(answer));
        self.prune(run_id);
    }

    /// The run accepted an update: it is no longer pending.
    pub fn on_accepted(&mut self, run_id: &str, update_id: &str) {
        if let Some(run) = self.runs.get_mut(run_id) {
            run.pending.retain(|p| p.update_id != update_id);
        }
        self.prune(run_id);
    }

    /// An update's handler returned: its callers get the outcome.
    pub fn on_completed(&mut self, run_id: &str, update_id: &str, outcome: &UpdateOutcome) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        let answer = UpdateWorkflowResponse {
            run_id: run_id.to_string(),
            outcome: outcome.clone(),
            rejected: false,
        };
        Self::answer(run, update_id, Ok(answer));
        self.prune(run_id);
    }

    /// Forgets a run with nothing admitted and nobody waiting.
    fn prune(&mut self, run_id: &str) {
        let idle = self.runs.get(run_id).is_some_and(|run| {
            run.pending.is_empty()
                && run
                    .waiters
                    .values()
                    .all(|w| w.iter().all(|s| s.is_closed()))
        });
        if idle {
            self.runs.remove(run_id);
        }
    }

    /// The run closed: every update still admitted or running ends with it.
    pub fn on_closed(&mut self, run_id: &str, status: &str) {
        let Some(mut run) = self.runs.remove(run_id) else {
            return;
        };
        for (update_id, waiters) in std::mem::take(&mut run.waiters) {
            // One the run never accepted may go to its successor: the
            // caller's retry, addressed by workflow id, finds it.
            let admitted = run.pending.iter().any(|p| p.update_id == update_id);
            let error = if admitted {
                let message = format!(
                    "run {run_id} closed ({status}) before accepting update {update_id:?}; retry"
                );
                ServiceError::new(ErrorCode::Unavailable, message)
            } else {
                let message =
                    format!("run {run_id} closed ({status}) before update {update_id:?} completed");
                ServiceError::new(ErrorCode::RunClosed, message)
            };
            for waiter in waiters {
                let _ = waiter.send(Err(error.clone()));
            }
        }
    }

    fn answer(run: &mut RunUpdates, update_id: &str, answer: UpdateAnswer) {
        for waiter in run.waiters.remove(update_id).unwrap_or_default() {
            let _ = waiter.send(answer.clone());
        }
    }
}

/// What a caller of an update waits for.
enum Admitted {
    /// Its outcome is the event at this id.
    Completed(u64),
    /// Its answer comes through this receiver.
    Waiting(oneshot::Receiver<UpdateAnswer>),
    /// The run accepted it and closed before it completed (never followed
    /// to a successor run: its handler ran here).
    Orphaned(ServiceError),
}

impl super::service::Inner {
    /// `UpdateWorkflow`: admits the update (or finds it), then waits for its
    /// outcome up to `result_wait_ms_max`; past that the caller retries
    /// with the same update id.
    pub(super) async fn update_workflow(
        self: &std::sync::Arc<Self>,
        request: crate::api::UpdateWorkflowRequest,
    ) -> UpdateAnswer {
        let update = UpdateRequest {
            update_id: request.update_id.clone(),
            update_name: request.update_name.clone(),
            input: request.input.clone(),
            identity: request.identity.clone(),
        };
        let (run_id, admitted) = self
            .transition_current(&request.run, |step| {
                let run_id = step.state.run_id.clone();
                Ok((run_id, self.admit_update(step, &update)?))
            })
            .await?;
        let receiver = match admitted {
            Admitted::Completed(event_id) => return self.completed_update(&run_id, event_id).await,
            Admitted::Waiting(receiver) => receiver,
            Admitted::Orphaned(error) => return Err(error),
        };
        let wait_ms = self.config.result_wait_ms_max;
        match self.env.timeout(wait_ms, receiver).await {
            Ok(Ok(answer)) => answer,
            _ => Err(ServiceError::new(
                ErrorCode::Unavailable,
                format!(
                    "update {:?} of run {run_id} has not completed within {wait_ms} ms; retry with the same update id",
                    update.update_id
                ),
            )),
        }
    }

    /// In the run's transition: the update's completion, or a receiver for
    /// it (admitting it first if the run has not accepted it).
    fn admit_update(
        &self,
        step: &mut super::machine::Step<'_>,
        update: &UpdateRequest,
    ) -> Result<Admitted, ServiceError> {
        let run_id = step.state.run_id.clone();
        let mut registry = super::service::lock(&self.updates);
        if let Some(state) = step.state.updates.get(&update.update_id) {
            match state.completed_event_id {
                Some(event_id) => return Ok(Admitted::Completed(event_id)),
                None if step.state.status.is_closed() => {
                    let message = format!(
                        "run {run_id} closed ({}) before update {:?} completed",
                        step.state.status.as_str(),
                        update.update_id
                    );
                    let error = ServiceError::new(ErrorCode::RunClosed, message);
                    return Ok(Admitted::Orphaned(error));
                }
                None => {
                    return registry
                        .wait(&run_id, &update.update_id)
                        .map(Admitted::Waiting);
                }
            }
        }
        super::machine::run::refuse_closed(step.state)?;
        step.check_payload("update input", &update.input)?;
        let in_flight = super::machine::update::in_flight(step.state);
        registry
            .admit(&run_id, update, in_flight)
            .map(Admitted::Waiting)
    }

    /// The outcome of a completed update, read back from its event.
    async fn completed_update(&self, run_id: &str, event_id: u64) -> UpdateAnswer {
        let events = self
            .storage
            .read_events(run_id, event_id, 1)
            .await
            .map_err(|e| super::service::unavailable(&e))?;
        match events.first().map(|event| &event.kind) {
            Some(crate::history::EventKind::WorkflowExecutionUpdateCompleted(a)) => {
                Ok(UpdateWorkflowResponse {
                    run_id: run_id.to_string(),
                    outcome: a.outcome.clone(),
                    rejected: false,
                })
            }
            _ => Err(ServiceError::new(
                ErrorCode::DataCorrupt,
                format!("run {run_id}: event {event_id} is not the update's completion"),
            )),
        }
    }
}
