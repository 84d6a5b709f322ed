//! One handler per request. Each validates its input, then changes a run only
//! through `Inner::transition` (pure machine + one atomic write).

use std::sync::Arc;

use tokio::sync::oneshot;

use super::eager;
use super::machine::{self, RunState, TaskKey, TaskKind, activity, workflow_task};
use super::matching::{Dispatch, QueueKind};
use super::metrics::{PollOutcome, TaskKindLabel};
use super::service::{Inner, Loaded, record_of, unavailable};
use super::speculation;
use crate::api::*;
use crate::env::{ListQuery, StorageError, WorkflowIdClaim, WriteBatch};
use crate::types::Failure;

/// A run answers queries once its first workflow task completed: before,
/// no state of it is in history (a replay through a task still running may
/// show what a retry of that task, seeing other events, never does). As
/// Temporal's `WorkflowNotReady`: retryable while the run waits for it; a
/// run that closed first never has state to query.
fn check_queryable(state: &RunState) -> Result<(), ServiceError> {
    if state.previous_started_event_id > 0 {
        return Ok(());
    }
    let run_id = &state.run_id;
    if state.status.is_closed() {
        let message = format!(
            "run {run_id} closed before its first workflow task completed: it has no state to query"
        );
        return Err(ServiceError::new(ErrorCode::QueryFailed, message));
    }
    let message = format!(
        "run {run_id} has not completed its first workflow task: it has no state to query yet; retry"
    );
    Err(ServiceError::new(ErrorCode::Unavailable, message))
}

/// Successor runs a request addressed by workflow id follows, at most
/// (each is a run that closed between the request's read and its write).
const FOLLOW_RUNS_MAX: u32 = 8;

fn invalid(message: impl Into<String>) -> ServiceError {
    ServiceError::new(ErrorCode::InvalidArgument, message)
}

/// Keeps the longest prefix of `events` whose payloads fit `bytes_max`
/// (always the first event, so a page makes progress).
fn truncate_to_bytes(events: &mut Vec<crate::history::Event>, bytes_max: u64) {
    let mut total_bytes = 0;
    let keep = events
        .iter()
        .position(|event| {
            let bytes: u64 = event
                .kind
                .payloads()
                .into_iter()
                .map(crate::history::payload_size_bytes)
                .sum();
            total_bytes += bytes;
            total_bytes > bytes_max
        })
        .map_or(events.len(), |first_over| first_over.max(1));
    events.truncate(keep);
}

/// The longest a BUGGIFY-delayed reply waits (`service.reply.delay`).
const REPLY_DELAY_MS_MAX: u64 = 5_000;

impl Inner {
    pub(super) async fn handle(self: Arc<Self>, request: Request) -> Reply {
        let method = request.method();
        if let Err(error) = super::edge::check_request(&request) {
            tracing::debug!(method, code = ?error.code, message = %error.message, "request refused at the edge");
            return Err(error);
        }
        if let Some(workflow_id) = request.workflow_id() {
            self.check_owner(workflow_id)?;
        }
        let reply = match request {
            Request::StartWorkflow(r) => self.start_workflow(r).await.map(Response::StartWorkflow),
            Request::StartChildWorkflow(r) => self
                .start_run(&r.start, Some(&r.parent))
                .await
                .map(Response::StartWorkflow),
            Request::SignalWorkflow(r) => self.signal_workflow(r).await.map(|()| Response::Empty),
            Request::SignalWithStartWorkflow(r) => self
                .signal_with_start(r)
                .await
                .map(Response::SignalWithStartWorkflow),
            Request::QueryWorkflow(r) => self.query_workflow(r).await.map(Response::QueryWorkflow),
            Request::CancelWorkflow(r) => self.cancel_workflow(r).await.map(|()| Response::Empty),
            Request::TerminateWorkflow(r) => {
                self.terminate_workflow(r).await.map(|()| Response::Empty)
            }
            Request::DescribeWorkflow(r) => self
                .describe_workflow(r)
                .await
                .map(Response::DescribeWorkflow),
            Request::ListWorkflows(r) => self.list_workflows(r).await.map(Response::ListWorkflows),
            Request::GetHistory(r) => self.get_history(r).await.map(Response::GetHistory),
            Request::GetResult(r) => self.get_result(r).await.map(Response::GetResult),
            Request::PollWorkflowTask(r) => self
                .poll_workflow_task(r)
                .await
                .map(Response::PollWorkflowTask),
            Request::CompleteWorkflowTask(r) => self
                .complete_workflow_task(r)
                .await
                .map(Response::CompleteWorkflowTask),
            Request::FailWorkflowTask(r) => {
                self.fail_workflow_task(r).await.map(|()| Response::Empty)
            }
            Request::RespondQuery(r) => self.respond_query(r).map(|()| Response::Empty),
            Request::PollActivityTask(r) => self
                .poll_activity_task(r)
                .await
                .map(Response::PollActivityTask),
            Request::RespondActivityTask(r) => self
                .respond_activity_task(r)
                .await
                .map(Response::RespondActivityTask),
            Request::HeartbeatActivityTask(r) => {
                self.heartbeat(r).await.map(Response::HeartbeatActivityTask)
            }
            Request::UpdateWorkflow(r) => {
                self.update_workflow(r).await.map(Response::UpdateWorkflow)
            }
            Request::DescribeTaskQueue(r) => {
                let pollers = self.lock_pollers().describe(r.task_queue.as_deref());
                Ok(Response::DescribeTaskQueue(TaskQueueDescription {
                    pollers,
                }))
            }
        };
        if let Err(error) = &reply {
            tracing::debug!(method, code = ?error.code, message = %error.message, "request refused");
        }
        if self.env.buggify("service.reply.delay") {
            // A reply late enough to outlive its caller's patience: the work is
            // done, the caller retries it (request ids and tokens make that safe).
            let delay_ms = 1 + self.env.random() % REPLY_DELAY_MS_MAX;
            self.env.sleep_ms(delay_ms).await;
        }
        reply
    }

    /// The run a reference names: the given run id, or the workflow id's current run.
    pub(super) async fn resolve(&self, run: &RunRef) -> Result<String, ServiceError> {
        if let Some(run_id) = &run.run_id {
            return Ok(run_id.clone());
        }
        if run.workflow_id.is_empty() {
            return Err(invalid("workflow_id must not be empty"));
        }
        let current = self
            .storage
            .current_run(&run.workflow_id)
            .await
            .map_err(|e| unavailable(&e))?;
        current.ok_or_else(|| {
            ServiceError::new(
                ErrorCode::NotFound,
                format!("no workflow with id {:?}", run.workflow_id),
            )
        })
    }

    /// Applies `f` to the run `run` names. Addressed by workflow id alone,
    /// a run that closed into a successor meanwhile (continue-as-new, a
    /// retry, cron) is followed to the workflow id's current run, as
    /// Temporal does: a signal sent to a workflow is never refused because
    /// its run just continued as new.
    pub(super) async fn transition_current<T>(
        self: &Arc<Self>,
        run: &RunRef,
        f: impl Fn(&mut machine::Step<'_>) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        let mut run_id = self.resolve(run).await?;
        let mut followed = 0;
        loop {
            let error = match self.transition(&run_id, &f).await {
                Err(error) if error.code == ErrorCode::RunClosed && run.run_id.is_none() => error,
                other => return other,
            };
            let current = self.resolve(run).await?;
            if current == run_id || followed == FOLLOW_RUNS_MAX {
                return Err(error);
            }
            (run_id, followed) = (current, followed + 1);
        }
    }

    pub(super) async fn snapshot(self: &Arc<Self>, run: &RunRef) -> Result<RunState, ServiceError> {
        let run_id = self.resolve(run).await?;
        let state = self.peek_run(&run_id).await?;
        if state.workflow_id != run.workflow_id && !run.workflow_id.is_empty() {
            let message = format!(
                "run {run_id} belongs to workflow {:?}, not {:?}",
                state.workflow_id, run.workflow_id
            );
            return Err(ServiceError::new(ErrorCode::NotFound, message));
        }
        Ok(state)
    }

    /// Records the workflow types a poller serves.
    fn note_poller(&self, request: &PollTaskRequest, kind: PollerKind) {
        let now = self.env.now();
        let types = &request.workflow_types;
        self.lock_pollers()
            .note(&request.task_queue, kind, &request.identity, types, now);
    }

    fn note_workflow_types(&self, request: &PollTaskRequest) {
        if request.workflow_types.is_empty() {
            return;
        }
        let now = self.env.now();
        let oldest =
            crate::types::Timestamp(now.0.saturating_sub(self.config.workflow_type_ttl_ms));
        let mut known = self.workflow_types.lock().expect("types lock");
        let queue = known.entry(request.task_queue.clone()).or_default();
        for workflow_type in &request.workflow_types {
            queue.insert(workflow_type.clone(), now);
        }
        // Types and queues no poller advertised lately are forgotten.
        for types in known.values_mut() {
            types.retain(|_, seen| *seen >= oldest);
        }
        known.retain(|_, types| !types.is_empty());
    }

    /// Refuses a type that no recent poller of the queue serves (when some do).
    fn check_workflow_type(&self, request: &StartWorkflowRequest) -> Result<(), ServiceError> {
        let oldest = crate::types::Timestamp(
            self.env
                .now()
                .0
                .saturating_sub(self.config.workflow_type_ttl_ms),
        );
        let known = self.workflow_types.lock().expect("types lock");
        let Some(queue) = known.get(&request.task_queue) else {
            return Ok(());
        };
        let served: Vec<&String> = queue
            .iter()
            .filter(|(_, seen)| **seen >= oldest)
            .map(|(t, _)| t)
            .collect();
        if served.is_empty() || served.contains(&&request.workflow_type) {
            return Ok(());
        }
        let message = format!(
            "no worker polling task queue {:?} runs workflow type {:?} (its workers run {served:?})",
            request.task_queue, request.workflow_type
        );
        Err(ServiceError::new(ErrorCode::UnknownWorkflowType, message))
    }

    async fn start_workflow(
        self: &Arc<Self>,
        request: StartWorkflowRequest,
    ) -> Result<StartWorkflowResponse, ServiceError> {
        machine::run::check_start(&request)?;
        self.check_workflow_type(&request)?;
        self.start_run(&request, None).await
    }

    /// Starts a run (a child of `parent` if named), or answers a retry of
    /// the start that began the workflow id's current run with that run.
    pub(super) async fn start_run(
        self: &Arc<Self>,
        request: &StartWorkflowRequest,
        parent: Option<&crate::history::ParentExecution>,
    ) -> Result<StartWorkflowResponse, ServiceError> {
        for _ in 0..3 {
            let current = self.current_state(&request.workflow_id).await?;
            if let Some((current, existing)) = &current {
                if existing.start_request_id == request.request_id {
                    self.check_same_start(request, existing).await?;
                    return Ok(StartWorkflowResponse {
                        run_id: current.clone(),
                    });
                }
                check_reuse(request, existing)?;
            }
            self.check_open_runs()?;
            let current = current.map(|(run_id, _)| run_id);
            if let Some(started) = self.create_run(request, current, None, parent).await? {
                return Ok(started);
            }
        }
        Err(concurrent_starts())
    }

    /// The workflow id's current run and its state, if it has one.
    async fn current_state(
        self: &Arc<Self>,
        workflow_id: &str,
    ) -> Result<Option<(String, RunState)>, ServiceError> {
        let current = self
            .storage
            .current_run(workflow_id)
            .await
            .map_err(|e| unavailable(&e))?;
        let Some(run_id) = current else {
            return Ok(None);
        };
        let run = RunRef {
            workflow_id: workflow_id.to_string(),
            run_id: Some(run_id.clone()),
        };
        Ok(Some((run_id, self.snapshot(&run).await?)))
    }

    /// Signal-with-start: the signal in the new run's first write, its
    /// payload counted towards the history's total.
    fn add_start_signal(
        &self,
        step: &mut machine::Step<'_>,
        request: &StartWorkflowRequest,
        name: &str,
        input: &serde_json::Value,
    ) -> Result<(), ServiceError> {
        let (identity, request_id) = (&request.identity, &request.request_id);
        machine::run::on_signal(step, name, input.clone(), identity, request_id)?;
        let bytes = crate::history::payload_size_bytes(input);
        step.state.history_payload_bytes += bytes;
        let bytes_max = self.config.history_payload_bytes_max;
        if step.state.history_payload_bytes > bytes_max {
            let message = format!(
                "the signal's {bytes} bytes would start the history over its limit of {bytes_max} payload bytes"
            );
            return Err(ServiceError::new(ErrorCode::HistoryTooLarge, message));
        }
        Ok(())
    }

    /// Signals the running run of the workflow id, or starts one (under the
    /// id reuse policy) with the signal in its first write.
    async fn signal_with_start(
        self: &Arc<Self>,
        request: SignalWithStartWorkflowRequest,
    ) -> Result<SignalWithStartWorkflowResponse, ServiceError> {
        let start = &request.start;
        machine::run::check_start(start)?;
        self.check_workflow_type(start)?;
        let signal = (request.signal_name.as_str(), &request.signal_input);
        for _ in 0..3 {
            let current = self.current_state(&start.workflow_id).await?;
            if let Some((run_id, existing)) = &current {
                if existing.start_request_id == start.request_id {
                    // A retry of the request that started it, signal and all.
                    self.check_same_start(start, existing).await?;
                    return Ok(SignalWithStartWorkflowResponse {
                        run_id: run_id.clone(),
                        started: true,
                    });
                }
                // The signal transition answers a retry whose first try
                // signaled this run as delivered, even once it has closed.
                match self.signal_with_start_to(run_id, &request).await {
                    // Closed since it was read, or closed into a successor
                    // (the workflow id's current run now): read again.
                    Err(e)
                        if e.code == ErrorCode::RunClosed
                            && (!existing.status.is_closed() || existing.successor().is_some()) =>
                    {
                        continue;
                    }
                    Err(e) if e.code == ErrorCode::RunClosed => check_reuse(start, existing)?,
                    signaled => return signaled,
                }
            }
            self.check_open_runs()?;
            let current = current.map(|(run_id, _)| run_id);
            if let Some(started) = self.create_run(start, current, Some(signal), None).await? {
                return Ok(SignalWithStartWorkflowResponse {
                    run_id: started.run_id,
                    started: true,
                });
            }
        }
        Err(concurrent_starts())
    }

    /// The signal of a signal-with-start, to the running run `run_id`.
    async fn signal_with_start_to(
        self: &Arc<Self>,
        run_id: &str,
        request: &SignalWithStartWorkflowRequest,
    ) -> Result<SignalWithStartWorkflowResponse, ServiceError> {
        let start = &request.start;
        self.transition(run_id, |step| {
            machine::run::on_signal(
                step,
                &request.signal_name,
                request.signal_input.clone(),
                &start.identity,
                &start.request_id,
            )
        })
        .await?;
        Ok(SignalWithStartWorkflowResponse {
            run_id: run_id.to_string(),
            started: false,
        })
    }

    fn check_open_runs(&self) -> Result<(), ServiceError> {
        if self.open_run_count() >= self.config.open_runs_max {
            let message = format!(
                "the service holds {} open runs, its limit",
                self.config.open_runs_max
            );
            return Err(ServiceError::new(ErrorCode::ResourceExhausted, message));
        }
        Ok(())
    }

    /// A start whose request id started `existing` must be a retry of that
    /// start: the same type, queue and input. Another request reusing the id
    /// is a conflict, not the old run.
    async fn check_same_start(
        &self,
        request: &StartWorkflowRequest,
        existing: &RunState,
    ) -> Result<(), ServiceError> {
        let first = self
            .storage
            .read_events(&existing.run_id, 1, 1)
            .await
            .map_err(|e| unavailable(&e))?;
        let input = match first.first().map(|e| &e.kind) {
            // A chain's later run has its own input (and maybe type): the
            // retried start began the chain, whose current run answers it.
            Some(crate::history::EventKind::WorkflowExecutionStarted(started))
                if started.continued_execution_run_id.is_some() =>
            {
                return Ok(());
            }
            Some(crate::history::EventKind::WorkflowExecutionStarted(started)) => &started.input,
            _ => return Ok(()),
        };
        let differs = [
            (existing.workflow_type != request.workflow_type).then_some("workflow_type"),
            (existing.task_queue != request.task_queue).then_some("task_queue"),
            (*input != request.input).then_some("input"),
        ];
        let differs: Vec<&str> = differs.into_iter().flatten().collect();
        if differs.is_empty() {
            return Ok(());
        }
        let message = format!(
            "request_id {:?} already started run {} with another {}: a retry must repeat its request exactly",
            request.request_id,
            existing.run_id,
            differs.join(" and ")
        );
        Err(ServiceError::new(ErrorCode::AlreadyStarted, message))
    }

    /// Writes a new run claiming the workflow id from `current`; `None` if a
    /// concurrent start claimed it first (the caller looks again).
    async fn create_run(
        self: &Arc<Self>,
        request: &StartWorkflowRequest,
        current: Option<String>,
        signal: Option<(&str, &serde_json::Value)>,
        parent: Option<&crate::history::ParentExecution>,
    ) -> Result<Option<StartWorkflowResponse>, ServiceError> {
        let run_id = self.env.new_id();
        let now = self.env.now();
        let (mut state, mut events) = machine::run::start(request, &run_id, now, self.limits())?;
        if let Some(parent) = parent {
            machine::child::adopt(&mut state, &mut events, parent);
        }
        // Sync match: a waiting poller gets the first workflow task from this same write.
        let mut step = machine::Step::new(&mut state, now, self.limits());
        step.events = events;
        if let Some((name, input)) = signal {
            self.add_start_signal(&mut step, request, name, input)?;
        }
        let matched = self.sync_match(&mut step);
        let events = std::mem::take(&mut step.events);
        let claim = WorkflowIdClaim {
            workflow_id: request.workflow_id.clone(),
            previous_run_id: current,
        };
        let written = events.clone();
        let batch = WriteBatch {
            fence: None,
            run: record_of(&state, 1),
            expected_version: None,
            events,
            claim: Some(claim),
            buffered: state.buffered.pending_write(),
            next_run: None,
        };
        assert!(state.buffered.is_empty(), "a new run has nothing buffered");
        // Locked from before the write: once it commits, a request that finds
        // the run by its workflow id waits here, rather than loading it and
        // changing (even closing) it under a publish of the state as created.
        let mut slot = self.lock_new_slot(&run_id);
        let outcome = self.write(batch).await;
        match outcome {
            Ok(()) => {
                // Publish first: the matched worker may complete the task at once.
                let task_events = matched.as_ref().map(|(_, started)| {
                    let (from, to) = started.event_range();
                    written[(from - 1) as usize..to as usize].to_vec()
                });
                self.sync(&state);
                slot.loaded = Some(Loaded {
                    recent: Some(written),
                    state,
                    version: 1,
                });
                drop(slot);
                if let (Some((poller, started)), Some(events)) = (matched, task_events) {
                    self.sync_matches
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.metrics.on_dispatched(TaskKindLabel::Workflow);
                    self.hand_over(poller, Box::new(started.into_task(events)));
                }
                Ok(Some(StartWorkflowResponse { run_id }))
            }
            Err(StorageError::WorkflowIdConflict { .. }) => {
                drop(slot);
                self.forget(&run_id);
                Ok(None)
            }
            Err(error) => {
                // The create may have committed (an ambiguous write): reload it
                // (the slot stays unloaded, so any request loads it too).
                drop(slot);
                self.spawn_resync(run_id);
                Err(unavailable(&error))
            }
        }
    }

    async fn signal_workflow(
        self: &Arc<Self>,
        request: SignalWorkflowRequest,
    ) -> Result<(), ServiceError> {
        self.transition_current(&request.run, |step| {
            machine::run::on_signal(
                step,
                &request.signal_name,
                request.input.clone(),
                &request.identity,
                &request.request_id,
            )
        })
        .await
        .map(|_| ())
    }

    async fn cancel_workflow(
        self: &Arc<Self>,
        request: CancelWorkflowRequest,
    ) -> Result<(), ServiceError> {
        self.transition_current(&request.run, |step| {
            machine::run::on_cancel_requested(step, &request.reason, &request.identity)
        })
        .await
    }

    async fn terminate_workflow(
        self: &Arc<Self>,
        request: TerminateWorkflowRequest,
    ) -> Result<(), ServiceError> {
        self.transition_current(&request.run, |step| {
            let details = request.details.clone();
            machine::run::on_terminate(step, &request.reason, details, &request.identity)
        })
        .await
    }

    async fn describe_workflow(
        self: &Arc<Self>,
        run: RunRef,
    ) -> Result<RunDescription, ServiceError> {
        Ok(describe(&self.snapshot(&run).await?))
    }

    async fn list_workflows(
        &self,
        request: ListWorkflowsRequest,
    ) -> Result<ListWorkflowsResponse, ServiceError> {
        let limit = match request.page_size {
            0 => 100,
            size => size.min(self.config.list_page_size_max),
        } as usize;
        let (query, offset) = list_query(&request)?;
        let ordered = query.as_ref().is_some_and(|q| q.order_by.is_some());
        let query = ListQuery {
            status: request.status,
            workflow_type: request.workflow_type,
            after_run_id: if ordered { None } else { request.page_token },
            limit,
            query,
            offset,
        };
        let records = self
            .storage
            .list_runs(query)
            .await
            .map_err(|e| unavailable(&e))?;
        let next_page_token = match ordered {
            // A page of an ordered query goes on from its offset.
            true => (records.len() == limit).then(|| (offset + limit).to_string()),
            false => (records.len() == limit)
                .then(|| records.last().map(|r| r.run_id.clone()))
                .flatten(),
        };
        let runs = records
            .into_iter()
            .map(|r| RunSummary {
                damaged: self.quarantine_reason(&r.run_id),
                workflow_id: r.workflow_id,
                run_id: r.run_id,
                workflow_type: r.workflow_type,
                task_queue: r.task_queue,
                status: r.status,
                start_time: r.start_time,
                close_time: r.close_time,
                search_attributes: r.search_attributes,
            })
            .collect();
        Ok(ListWorkflowsResponse {
            runs,
            next_page_token,
        })
    }

    async fn get_history(
        self: &Arc<Self>,
        request: GetHistoryRequest,
    ) -> Result<GetHistoryResponse, ServiceError> {
        let state = self.snapshot(&request.run).await?;
        let page_size = match request.page_size {
            0 => self.config.history_page_size_max,
            size => size.min(self.config.history_page_size_max),
        };
        let from = request.from_event_id.max(1);
        let read = self
            .storage
            .read_events(&state.run_id, from, page_size as usize)
            .await;
        let mut events = read.map_err(|e| unavailable(&e))?;
        truncate_to_bytes(&mut events, self.config.history_page_bytes_max);
        let next = from + events.len() as u64;
        let next_event_id = (next < state.next_event_id && !events.is_empty()).then_some(next);
        Ok(GetHistoryResponse {
            workflow_id: state.workflow_id,
            run_id: state.run_id,
            events,
            next_event_id,
        })
    }

    async fn get_result(
        self: &Arc<Self>,
        request: GetResultRequest,
    ) -> Result<GetResultResponse, ServiceError> {
        let run_id = self.resolve(&request.run).await?;
        let receiver = {
            let guard = self.lock_run(&run_id).await?;
            let state = &guard.loaded.as_ref().expect("loaded").state;
            if let Some(outcome) = &state.outcome {
                return Ok(GetResultResponse {
                    next_run_id: state.successor().map(str::to_string),
                    run_id,
                    outcome: Some(outcome.clone()),
                });
            }
            let (sender, receiver) = oneshot::channel();
            let mut waiters = self.result_waiters.lock().expect("waiters lock");
            let list = waiters.entry(run_id.clone()).or_default();
            list.retain(|waiter| !waiter.is_closed());
            list.push(sender);
            receiver
        };
        let wait_ms = request.wait_ms.min(self.config.result_wait_ms_max);
        let closed = self
            .env
            .timeout(wait_ms, receiver)
            .await
            .ok()
            .and_then(Result::ok);
        let (outcome, next_run_id) = closed.map_or((None, None), |(o, next)| (Some(o), next));
        Ok(GetResultResponse {
            run_id,
            outcome,
            next_run_id,
        })
    }

    async fn query_workflow(
        self: &Arc<Self>,
        request: QueryWorkflowRequest,
    ) -> Result<QueryWorkflowResponse, ServiceError> {
        let state = self.snapshot(&request.run).await?;
        check_queryable(&state)?;
        let query_id = self.env.new_id();
        let (sender, receiver) = oneshot::channel();
        self.queries
            .lock()
            .expect("queries lock")
            .insert(query_id.clone(), sender);
        let task = QueryTask {
            query_id: query_id.clone(),
            workflow_id: state.workflow_id,
            run_id: state.run_id,
            workflow_type: state.workflow_type,
            query_name: request.query_name,
            args: request.args,
            previous_started_event_id: state.previous_started_event_id,
        };
        self.matching.lock().expect("matching lock").offer(
            QueueKind::Workflow,
            &state.task_queue,
            Dispatch::Query(task, self.env.now().plus_ms(self.config.query_timeout_ms)),
        );
        let answer = self
            .env
            .timeout(self.config.query_timeout_ms, receiver)
            .await;
        self.queries.lock().expect("queries lock").remove(&query_id);
        match answer {
            Ok(Ok(Ok(answer))) => Ok(QueryWorkflowResponse { answer }),
            Ok(Ok(Err(message))) => Err(ServiceError::new(ErrorCode::QueryFailed, message)),
            _ => {
                let message = format!(
                    "no worker of task queue {:?} answered within {} ms",
                    state.task_queue, self.config.query_timeout_ms
                );
                Err(ServiceError::new(ErrorCode::QueryTimeout, message))
            }
        }
    }

    fn respond_query(&self, request: RespondQueryRequest) -> Result<(), ServiceError> {
        let waiter = self
            .queries
            .lock()
            .expect("queries lock")
            .remove(&request.query_id);
        let waiter = waiter.ok_or_else(|| {
            ServiceError::new(
                ErrorCode::NotFound,
                format!("query {} is not waiting (timed out?)", request.query_id),
            )
        })?;
        let _ = waiter.send(request.answer);
        Ok(())
    }

    /// Waits up to the poll timeout for the next item of a queue.
    async fn next_dispatch(
        &self,
        kind: QueueKind,
        task_queue: &str,
        wait_ms: u64,
        identity: &str,
    ) -> Option<Dispatch> {
        let taken = self
            .matching
            .lock()
            .expect("matching lock")
            .take_or_wait(kind, task_queue, identity);
        let (id, mut receiver) = match taken {
            Ok(item) => return Some(item),
            Err(waiting) => waiting,
        };
        let sleep = self.env.sleep_ms(wait_ms);
        match futures::future::select(&mut receiver, sleep).await {
            futures::future::Either::Left((Ok(item), _)) => Some(item),
            futures::future::Either::Left((Err(_), _)) => None,
            futures::future::Either::Right(_) => {
                let left = self
                    .matching
                    .lock()
                    .expect("matching lock")
                    .leave(kind, task_queue, id);
                // Not in the queue any more: it was handed work, which arrives
                // now (or its reservation is dropped).
                if left { None } else { receiver.await.ok() }
            }
        }
    }

    async fn poll_workflow_task(
        self: &Arc<Self>,
        request: PollTaskRequest,
    ) -> Result<PollWorkflowTaskResponse, ServiceError> {
        let began = self.env.now();
        let answer = self.poll_workflow_task_inner(request).await;
        if let Ok(response) = &answer {
            let outcome = match (&response.task, &response.query) {
                (Some(_), _) => PollOutcome::Task,
                (None, Some(_)) => PollOutcome::Query,
                (None, None) => PollOutcome::Empty,
            };
            let waited_ms = self.env.now().millis_since(began);
            self.metrics
                .on_poll(TaskKindLabel::Workflow, outcome, waited_ms);
        }
        answer
    }

    async fn poll_workflow_task_inner(
        self: &Arc<Self>,
        request: PollTaskRequest,
    ) -> Result<PollWorkflowTaskResponse, ServiceError> {
        self.note_workflow_types(&request);
        self.note_poller(&request, PollerKind::Workflow);
        let deadline = self.env.now().plus_ms(self.config.poll_timeout_ms);
        let empty = PollWorkflowTaskResponse {
            task: None,
            query: None,
        };
        if self.env.buggify("service.poll.return_empty") {
            return Ok(empty);
        }
        loop {
            let wait_ms = deadline.millis_since(self.env.now());
            let Some(item) = self
                .next_dispatch(
                    QueueKind::Workflow,
                    &request.task_queue,
                    wait_ms,
                    &request.identity,
                )
                .await
            else {
                return Ok(empty);
            };
            let key = match item {
                Dispatch::Query(_, deadline) if deadline < self.env.now() => continue,
                Dispatch::Query(query, _) => {
                    return Ok(PollWorkflowTaskResponse {
                        task: None,
                        query: Some(query),
                    });
                }
                Dispatch::Started(task) => {
                    return Ok(PollWorkflowTaskResponse {
                        task: Some(*task),
                        query: None,
                    });
                }
                Dispatch::Task(key) => key,
            };
            match self.start_workflow_task(&key, &request.identity).await {
                Ok(Some(task)) => {
                    return Ok(PollWorkflowTaskResponse {
                        task: Some(task),
                        query: None,
                    });
                }
                Ok(None) => continue,
                Err(error) => {
                    // The key left the queue; reloading the run offers it again.
                    tracing::warn!(run_id = key.run_id, %error, "could not start workflow task");
                    self.spawn_resync(key.run_id);
                }
            }
        }
    }

    async fn start_workflow_task(
        self: &Arc<Self>,
        key: &TaskKey,
        identity: &str,
    ) -> Result<Option<WorkflowTask>, ServiceError> {
        let TaskKind::Workflow { scheduled_event_id } = key.kind else {
            unreachable!("workflow queues hold workflow tasks")
        };
        let request_id = self.env.new_id();
        let started = self
            .transition(&key.run_id, |step| {
                Ok(eager::start_workflow_task(
                    step,
                    Some(scheduled_event_id),
                    identity,
                    &request_id,
                ))
            })
            .await?;
        let Some(started) = started else {
            return Ok(None);
        };
        let Some(task) = self.workflow_task_of(started).await else {
            return Ok(None);
        };
        if self.env.buggify("service.workflow_task.lose_response") {
            return Err(ServiceError::new(
                ErrorCode::Unavailable,
                "buggify: workflow task response lost",
            ));
        }
        Ok(Some(task))
    }

    async fn complete_workflow_task(
        self: &Arc<Self>,
        request: CompleteWorkflowTaskRequest,
    ) -> Result<CompleteWorkflowTaskResponse, ServiceError> {
        let token = request.task_token;
        let (rejection, eager, events) = self
            .transition(&token.run_id, |step| {
                // A completion that may start a run (continue-as-new, a
                // retry) gets the new run's id drawn first.
                step.next_run_id = step
                    .state
                    .may_start_next_run(&request.commands)
                    .then(|| self.env.new_id());
                workflow_task::check_token(step.state, &token)?;
                let before = step.state.clone();
                match workflow_task::on_completed(
                    step,
                    &token,
                    &request.commands,
                    &request.identity,
                ) {
                    Ok(()) => {
                        let mut updates = super::service::lock(&self.updates);
                        for rejection in &request.update_rejections {
                            updates.on_rejected(&token.run_id, rejection.clone());
                        }
                        drop(updates);
                        let eager = eager::start_new_activities(
                            step,
                            request.eager_activities_max,
                            &request.identity,
                        );
                        Ok((None, eager, step.events.clone()))
                    }
                    Err(rejection) => {
                        *step.state = before;
                        step.events.clear();
                        step.continued = None;
                        let failure = Failure::new(
                            format!("{:?}", rejection.cause),
                            rejection.message.clone(),
                        );
                        workflow_task::on_failed(
                            step,
                            &token,
                            rejection.cause,
                            failure,
                            &request.identity,
                        );
                        Ok((Some(rejection), Vec::new(), Vec::new()))
                    }
                }
            })
            .await?;
        if let Some(rejection) = rejection {
            // The task was failed, not completed: the worker must not take
            // its commands (or the run's close) as written.
            return Err(match rejection.cause {
                crate::history::WorkflowTaskFailedCause::BadCommand => invalid(format!(
                    "workflow task commands rejected: {}",
                    rejection.message
                )),
                cause => ServiceError::new(
                    ErrorCode::TaskNotFound,
                    format!(
                        "workflow task not completed ({cause:?}): {}",
                        rejection.message
                    ),
                ),
            });
        }
        self.completion_response(eager, events).await
    }

    /// The answer to a workflow task completion: its eager activities and events.
    async fn completion_response(
        self: &Arc<Self>,
        eager: Vec<eager::StartedActivity>,
        events: Vec<crate::history::Event>,
    ) -> Result<CompleteWorkflowTaskResponse, ServiceError> {
        let mut activity_tasks = Vec::with_capacity(eager.len());
        for started in eager {
            activity_tasks.push(self.activity_task_of(started).await?);
        }
        Ok(CompleteWorkflowTaskResponse {
            activity_tasks,
            events,
        })
    }

    async fn fail_workflow_task(
        self: &Arc<Self>,
        request: FailWorkflowTaskRequest,
    ) -> Result<(), ServiceError> {
        let token = request.task_token;
        self.transition(&token.run_id, |step| {
            workflow_task::check_token(step.state, &token)?;
            step.check_failure("workflow task failure", &request.failure)?;
            workflow_task::on_failed(
                step,
                &token,
                request.cause,
                request.failure,
                &request.identity,
            );
            Ok(())
        })
        .await
    }

    async fn poll_activity_task(
        self: &Arc<Self>,
        request: PollTaskRequest,
    ) -> Result<PollActivityTaskResponse, ServiceError> {
        let began = self.env.now();
        let answer = self.poll_activity_task_inner(request).await;
        if let Ok(response) = &answer {
            let outcome = match response.task {
                Some(_) => PollOutcome::Task,
                None => PollOutcome::Empty,
            };
            let waited_ms = self.env.now().millis_since(began);
            self.metrics
                .on_poll(TaskKindLabel::Activity, outcome, waited_ms);
        }
        answer
    }

    async fn poll_activity_task_inner(
        self: &Arc<Self>,
        request: PollTaskRequest,
    ) -> Result<PollActivityTaskResponse, ServiceError> {
        self.note_poller(&request, PollerKind::Activity);
        let deadline = self.env.now().plus_ms(self.config.poll_timeout_ms);
        loop {
            let wait_ms = deadline.millis_since(self.env.now());
            let Some(item) = self
                .next_dispatch(
                    QueueKind::Activity,
                    &request.task_queue,
                    wait_ms,
                    &request.identity,
                )
                .await
            else {
                return Ok(PollActivityTaskResponse { task: None });
            };
            let Dispatch::Task(key) = item else { continue };
            match self.start_activity_task(&key, &request.identity).await {
                Ok(Some(task)) => return Ok(PollActivityTaskResponse { task: Some(task) }),
                Ok(None) => continue,
                Err(error) => {
                    // The key left the queue; reloading the run offers it again.
                    tracing::warn!(run_id = key.run_id, %error, "could not start activity task");
                    self.spawn_resync(key.run_id);
                }
            }
        }
    }

    async fn start_activity_task(
        self: &Arc<Self>,
        key: &TaskKey,
        identity: &str,
    ) -> Result<Option<ActivityTask>, ServiceError> {
        let TaskKind::Activity {
            scheduled_event_id,
            attempt,
        } = key.kind
        else {
            unreachable!("activity queues hold activity tasks")
        };
        let started = self
            .transition(&key.run_id, |step| {
                Ok(eager::start_activity(
                    step,
                    scheduled_event_id,
                    attempt,
                    identity,
                ))
            })
            .await?;
        match started {
            Some(started) => Ok(Some(self.activity_task_of(started).await?)),
            None => Ok(None),
        }
    }

    async fn respond_activity_task(
        self: &Arc<Self>,
        request: RespondActivityTaskRequest,
    ) -> Result<RespondActivityTaskResponse, ServiceError> {
        let token = request.task_token;
        let request_id = self.env.new_id();
        let outcome = self
            .transition(&token.run_id, |step| {
                if let Some(speculation) = &request.speculative_workflow_task {
                    let taken = speculation::on_result_with_workflow_task(
                        step,
                        &token,
                        &request.result,
                        &request.identity,
                        request.eager_workflow_task_queue.as_deref(),
                        speculation,
                        &request_id,
                    )?;
                    match taken {
                        Ok(taken) => return Ok(Recorded::WithWorkflowTask(taken)),
                        Err(refused) => {
                            tracing::debug!(run_id = token.run_id, ?refused, "speculation refused")
                        }
                    }
                }
                activity::on_result(step, &token, request.result, &request.identity)?;
                let serves = request.eager_workflow_task_queue.as_deref()
                    == Some(step.state.task_queue.as_str());
                Ok(Recorded::Alone(
                    serves
                        .then(|| {
                            eager::start_workflow_task(step, None, &request.identity, &request_id)
                        })
                        .flatten(),
                ))
            })
            .await?;
        match outcome {
            Recorded::Alone(started) => {
                let workflow_task = match started {
                    Some(started) => self.workflow_task_of(started).await,
                    None => None,
                };
                Ok(RespondActivityTaskResponse {
                    workflow_task,
                    speculation: None,
                })
            }
            Recorded::WithWorkflowTask(taken) => {
                let completion = self
                    .completion_response(taken.eager, taken.completion_events)
                    .await?;
                Ok(RespondActivityTaskResponse {
                    workflow_task: None,
                    speculation: Some(completion),
                })
            }
        }
    }

    async fn heartbeat(
        self: &Arc<Self>,
        request: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ServiceError> {
        let token = request.task_token;
        let cancel_requested = self
            .transition(&token.run_id, |step| {
                activity::on_heartbeat(step, &token, request.details)
            })
            .await?;
        Ok(HeartbeatResponse { cancel_requested })
    }
}

/// How an activity result was recorded.
enum Recorded {
    /// Alone, with the workflow task it scheduled if started for the worker.
    Alone(Option<eager::StartedWorkflowTask>),
    /// With the worker's speculative workflow task.
    WithWorkflowTask(speculation::Taken),
}

fn concurrent_starts() -> ServiceError {
    ServiceError::new(
        ErrorCode::Unavailable,
        "concurrent starts of this workflow id; retry",
    )
}

fn check_reuse(request: &StartWorkflowRequest, existing: &RunState) -> Result<(), ServiceError> {
    let workflow_id = &request.workflow_id;
    let run_id = &existing.run_id;
    if !existing.status.is_closed() {
        let message = format!("workflow id {workflow_id:?} is running as run {run_id}");
        return Err(ServiceError::new(ErrorCode::AlreadyStarted, message));
    }
    let refused = match request.id_reuse_policy {
        IdReusePolicy::AllowDuplicate => false,
        IdReusePolicy::AllowDuplicateFailedOnly => {
            existing.status == crate::env::RunStatus::Completed
        }
        IdReusePolicy::RejectDuplicate => true,
    };
    if refused {
        let message = format!(
            "workflow id {workflow_id:?} was used by run {run_id} ({}); id reuse policy {:?} refuses a new run",
            existing.status.as_str(),
            request.id_reuse_policy
        );
        return Err(ServiceError::new(ErrorCode::AlreadyStarted, message));
    }
    Ok(())
}

/// The request's parsed list query, and the offset its page token names
/// (pages of an `ORDER BY` query are offsets; others run ids).
fn list_query(
    request: &ListWorkflowsRequest,
) -> Result<(Option<crate::visibility::Query>, usize), ServiceError> {
    let query = match request.query.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(crate::visibility::parse_query(text).map_err(|e| {
            ServiceError::new(ErrorCode::InvalidArgument, format!("bad list query: {e}"))
        })?),
    };
    let ordered = query.as_ref().is_some_and(|q| q.order_by.is_some());
    let offset = match (&request.page_token, ordered) {
        (Some(token), true) => token.parse().map_err(|_| {
            ServiceError::new(
                ErrorCode::InvalidArgument,
                format!("page token {token:?} is not one of this ordered query's"),
            )
        })?,
        _ => 0,
    };
    Ok((query, offset))
}

fn describe(state: &RunState) -> RunDescription {
    let pending_activities = state
        .activities
        .values()
        .map(|a| PendingActivity {
            activity_id: a.activity_id.clone(),
            activity_type: a.activity_type.clone(),
            state: a.phase_name().to_string(),
            attempt: a.attempt,
            last_failure: a.last_failure.clone(),
            heartbeat_details: a.heartbeat_details.clone(),
            last_heartbeat_time: match &a.phase {
                machine::ActivityPhase::Started {
                    last_heartbeat_time,
                    ..
                } => *last_heartbeat_time,
                _ => None,
            },
            next_attempt_time: match &a.phase {
                machine::ActivityPhase::BackingOff { until } => Some(*until),
                _ => None,
            },
            worker_identity: match &a.phase {
                machine::ActivityPhase::Started { identity, .. } => Some(identity.clone()),
                _ => None,
            },
        })
        .collect();
    let pending_timers = state
        .timers
        .iter()
        .map(|(timer_id, timer)| PendingTimer {
            timer_id: timer_id.clone(),
            fire_time: timer.fire_time,
        })
        .collect();
    RunDescription {
        workflow_id: state.workflow_id.clone(),
        run_id: state.run_id.clone(),
        workflow_type: state.workflow_type.clone(),
        task_queue: state.task_queue.clone(),
        status: state.status,
        start_time: state.start_time,
        close_time: state.close_time,
        history_length: state.next_event_id - 1,
        pending_activities,
        pending_timers,
        workflow_task: state.workflow_task.name().map(str::to_string),
        last_workflow_task_failure: state.last_workflow_task_failure.clone(),
        cancel_requested: state.cancel_requested,
        buffered_signals: state
            .buffered
            .iter()
            .filter_map(|kind| match kind {
                crate::history::EventKind::WorkflowExecutionSignaled(a) => Some(BufferedSignal {
                    signal_name: a.signal_name.clone(),
                    input: a.input.clone(),
                    identity: a.identity.clone(),
                }),
                _ => None,
            })
            .collect(),
        search_attributes: state.search_attributes.clone(),
        memo: state.memo.clone(),
    }
}
