//! `Client`: start, signal, query, cancel, terminate, result, describe, list,
//! history, each typed.
//!
//! Calls that change a run carry a request id, so the client retries them after
//! a network failure without doing them twice.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::*;
use crate::env::{Env, NetError, RunStatus};
use crate::history::{History, HistoryError, UpdateOutcome};
use crate::workflow::{PayloadError, Workflow};

/// Attempts of one call when the network or storage fails.
pub const CALL_ATTEMPTS_MAX: u32 = 8;
/// Longest wait of one long poll for a run's result.
pub const RESULT_WAIT_MS_MAX: u64 = 60_000;
/// First backoff between attempts (doubled each time, capped at 2 s).
pub const CALL_BACKOFF_MS_INITIAL: u64 = 50;

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The service refused the request.
    #[error("service error: {0}")]
    Service(#[from] ServiceError),
    /// The service could not be reached (after retries).
    #[error("network error: {0}")]
    Network(#[from] NetError),
    /// A payload did not fit its type.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// The run closed without a result.
    #[error("workflow did not complete: {0:?}")]
    Workflow(RunOutcome),
    /// The service's history did not validate.
    #[error("history from the service is not well-formed: {0}")]
    History(#[from] HistoryError),
    /// The service answered with the wrong kind of response.
    #[error("unexpected response: {0}")]
    Unexpected(String),
    /// The update's validator refused it (`rejected`: nothing was recorded)
    /// or its handler returned an error.
    #[error("update {update_id:?} {}: {}", if *rejected { "was rejected" } else { "failed" }, failure.message)]
    Update {
        /// The update.
        update_id: String,
        /// Why.
        failure: Box<crate::types::Failure>,
        /// True if refused by the validator.
        rejected: bool,
    },
}

impl ClientError {
    /// The service's error code, if the service refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Service(error) => Some(error.code),
            _ => None,
        }
    }
}

/// How to start a run.
#[derive(Clone, Debug, PartialEq)]
pub struct StartOptions {
    /// Business id.
    pub workflow_id: String,
    /// Queue of its workflow tasks.
    pub task_queue: String,
    /// Whole-run deadline.
    pub execution_timeout_ms: Option<u64>,
    /// Each workflow task's deadline.
    pub workflow_task_timeout_ms: Option<u64>,
    /// What a closed id may be reused for.
    pub id_reuse_policy: IdReusePolicy,
    /// Wait this long before the first workflow task (Temporal's start delay).
    pub start_delay_ms: Option<u64>,
    /// Retry the workflow as a new run when it fails.
    pub retry_policy: Option<crate::activity::RetryPolicy>,
    /// Start the workflow's runs on this cron schedule (see
    /// [`crate::workflow::CronSchedule`]).
    pub cron_schedule: Option<String>,
    /// Search attributes the run starts with (indexed for list queries).
    pub search_attributes: crate::visibility::SearchAttributes,
    /// The run's memo at start.
    pub memo: crate::visibility::Memo,
}

impl StartOptions {
    /// Options with a workflow id and task queue, defaults otherwise.
    pub fn new(workflow_id: impl Into<String>, task_queue: impl Into<String>) -> StartOptions {
        StartOptions {
            workflow_id: workflow_id.into(),
            task_queue: task_queue.into(),
            execution_timeout_ms: None,
            workflow_task_timeout_ms: None,
            id_reuse_policy: IdReusePolicy::default(),
            start_delay_ms: None,
            retry_policy: None,
            cron_schedule: None,
            search_attributes: Default::default(),
            memo: Default::default(),
        }
    }

    /// The same options with a search attribute set at start (checked by the
    /// service: name, kind, count and size).
    pub fn search_attribute(
        mut self,
        name: impl Into<String>,
        value: crate::visibility::SearchValue,
    ) -> StartOptions {
        self.search_attributes.insert(name.into(), value);
        self
    }

    /// The same options with a memo key set at start.
    pub fn memo(mut self, key: impl Into<String>, value: serde_json::Value) -> StartOptions {
        self.memo.insert(key.into(), value);
        self
    }

    /// The same options with a start delay: the run exists at once, its
    /// first workflow task waits `delay_ms`.
    pub fn start_delay_ms(mut self, delay_ms: u64) -> StartOptions {
        self.start_delay_ms = Some(delay_ms);
        self
    }

    /// The same options with a cron schedule (`"0 2 * * *"`, `"@hourly"`,
    /// `"@every 10m"`; UTC): the first run starts at the schedule's first
    /// slot, each next one at the first slot after the previous closed,
    /// until the workflow is canceled or terminated.
    pub fn cron(mut self, schedule: impl Into<String>) -> StartOptions {
        self.cron_schedule = Some(schedule.into());
        self
    }

    /// The same options with a workflow retry policy: a failed run is
    /// retried as a new run of the workflow id, as the policy allows.
    pub fn retry(mut self, policy: crate::activity::RetryPolicy) -> StartOptions {
        self.retry_policy = Some(policy);
        self
    }
}

/// Talks to the service.
#[derive(Clone, Debug)]
pub struct Client {
    env: Env,
    identity: String,
    rpc_timeout_ms: u64,
    call_attempts_max: u32,
}

/// A run, typed by its workflow's output.
#[derive(Clone, Debug)]
pub struct WorkflowHandle<O> {
    client: Client,
    /// Business id.
    pub workflow_id: String,
    /// Run id.
    pub run_id: String,
    _output: PhantomData<fn() -> O>,
}

fn unexpected(response: Response) -> ClientError {
    ClientError::Unexpected(format!("{response:?}"))
}

impl Client {
    /// A client on `env`'s network.
    pub fn new(env: Env) -> Client {
        Client {
            env,
            identity: "client".to_string(),
            rpc_timeout_ms: 90_000,
            call_attempts_max: CALL_ATTEMPTS_MAX,
        }
    }

    /// The environment the client runs on (its clock, network and ids).
    pub fn env(&self) -> &Env {
        &self.env
    }

    /// Sets the identity shown in histories.
    pub fn with_identity(mut self, identity: impl Into<String>) -> Client {
        self.identity = identity.into();
        self
    }

    /// Sets how many times a call is tried when the network or storage fails.
    pub fn with_call_attempts_max(mut self, attempts_max: u32) -> Client {
        self.call_attempts_max = attempts_max.max(1);
        self
    }

    /// Sends a request, retrying network and storage failures with backoff.
    /// Requests that change state carry request ids, so retries are safe.
    pub async fn call(&self, request: Request) -> Result<Response, ClientError> {
        let mut backoff_ms = CALL_BACKOFF_MS_INITIAL;
        let mut attempt = 1;
        loop {
            let sent = self
                .env
                .timeout(self.rpc_timeout_ms, self.env.network.call(request.clone()))
                .await;
            let error = match sent {
                Ok(Ok(Ok(response))) => return Ok(response),
                Ok(Ok(Err(error))) if !error.code.is_transient() => {
                    return Err(error.into());
                }
                Ok(Ok(Err(error))) => ClientError::Service(error),
                Ok(Err(error)) => ClientError::Network(error),
                Err(_) => ClientError::Network(NetError::Timeout),
            };
            if attempt >= self.call_attempts_max {
                return Err(error);
            }
            tracing::debug!(method = request.method(), attempt, %error, "call failed; retrying");
            self.env.sleep_ms(backoff_ms).await;
            backoff_ms = (backoff_ms * 2).min(2_000);
            attempt += 1;
        }
    }

    /// Starts workflow `W`.
    pub async fn start<W: Workflow>(
        &self,
        options: StartOptions,
        input: W::Input,
    ) -> Result<WorkflowHandle<W::Output>, ClientError> {
        let input = PayloadError::encode(|| format!("input of workflow {}", W::NAME), &input)?;
        let workflow_id = options.workflow_id.clone();
        let run_id = self.start_by_name(options, W::NAME, input).await?;
        Ok(self.handle(&workflow_id, Some(&run_id)))
    }

    /// Starts a workflow by type name with a JSON input; returns the run id.
    pub async fn start_by_name(
        &self,
        options: StartOptions,
        workflow_type: &str,
        input: Value,
    ) -> Result<String, ClientError> {
        let request = self.start_request(options, workflow_type, input);
        match self.call(Request::StartWorkflow(request)).await? {
            Response::StartWorkflow(started) => Ok(started.run_id),
            other => Err(unexpected(other)),
        }
    }

    /// Signals the running run of `options.workflow_id`, starting workflow
    /// `W` with `input` first if none runs (under `options.id_reuse_policy`),
    /// in one atomic request; retried, it starts and signals once. Returns a
    /// handle on the run signaled and whether this call started it.
    pub async fn signal_with_start<W: Workflow>(
        &self,
        options: StartOptions,
        input: W::Input,
        signal_name: &str,
        signal_input: impl Serialize,
    ) -> Result<(WorkflowHandle<W::Output>, bool), ClientError> {
        let input = PayloadError::encode(|| format!("input of workflow {}", W::NAME), &input)?;
        let signal_input = PayloadError::encode(|| format!("signal {signal_name}"), &signal_input)?;
        let workflow_id = options.workflow_id.clone();
        let started = self
            .signal_with_start_by_name(options, W::NAME, input, signal_name, signal_input)
            .await?;
        let handle = self.handle(&workflow_id, Some(&started.run_id));
        Ok((handle, started.started))
    }

    /// [`Client::signal_with_start`] by workflow type name, with JSON payloads.
    pub async fn signal_with_start_by_name(
        &self,
        options: StartOptions,
        workflow_type: &str,
        input: Value,
        signal_name: &str,
        signal_input: Value,
    ) -> Result<SignalWithStartWorkflowResponse, ClientError> {
        let request = SignalWithStartWorkflowRequest {
            start: self.start_request(options, workflow_type, input),
            signal_name: signal_name.to_string(),
            signal_input,
        };
        match self.call(Request::SignalWithStartWorkflow(request)).await? {
            Response::SignalWithStartWorkflow(started) => Ok(started),
            other => Err(unexpected(other)),
        }
    }

    fn start_request(
        &self,
        options: StartOptions,
        workflow_type: &str,
        input: Value,
    ) -> StartWorkflowRequest {
        StartWorkflowRequest {
            workflow_id: options.workflow_id,
            workflow_type: workflow_type.to_string(),
            task_queue: options.task_queue,
            input,
            execution_timeout_ms: options.execution_timeout_ms,
            workflow_task_timeout_ms: options.workflow_task_timeout_ms,
            id_reuse_policy: options.id_reuse_policy,
            request_id: self.env.new_id(),
            identity: self.identity.clone(),
            start_delay_ms: options.start_delay_ms,
            retry_policy: options.retry_policy,
            cron_schedule: options.cron_schedule,
            search_attributes: options.search_attributes,
            memo: options.memo,
        }
    }

    /// A handle on a run (the current run of the workflow id if `run_id` is `None`).
    pub fn handle<O>(&self, workflow_id: &str, run_id: Option<&str>) -> WorkflowHandle<O> {
        WorkflowHandle {
            client: self.clone(),
            workflow_id: workflow_id.to_string(),
            run_id: run_id.unwrap_or_default().to_string(),
            _output: PhantomData,
        }
    }

    fn run_ref(workflow_id: &str, run_id: &str) -> RunRef {
        let run_id = (!run_id.is_empty()).then(|| run_id.to_string());
        RunRef {
            workflow_id: workflow_id.to_string(),
            run_id,
        }
    }

    /// Sends a signal (delivered once even if this call is retried).
    pub async fn signal(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
        signal_name: &str,
        input: impl Serialize,
    ) -> Result<(), ClientError> {
        let input = PayloadError::encode(|| format!("signal {signal_name}"), &input)?;
        let request = SignalWorkflowRequest {
            run: Self::run_ref(workflow_id, run_id.unwrap_or_default()),
            signal_name: signal_name.to_string(),
            input,
            request_id: self.env.new_id(),
            identity: self.identity.clone(),
        };
        self.call(Request::SignalWorkflow(request))
            .await
            .map(|_| ())
    }

    /// Sends update `update_name` with a fresh update id and waits for its
    /// handler's result (see [`Client::update_with_id`]).
    pub async fn update<R: DeserializeOwned>(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
        update_name: &str,
        input: impl Serialize,
    ) -> Result<R, ClientError> {
        let update_id = self.env.new_id();
        self.update_with_id(workflow_id, run_id, update_name, &update_id, input)
            .await
    }

    /// Sends update `update_name` as `update_id` and waits for its handler's
    /// result. Sent again with the same id (by this call's retries, or by
    /// the caller after a crash), the handler still runs once: the second
    /// call waits for, or reads back, the first one's outcome.
    pub async fn update_with_id<R: DeserializeOwned>(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
        update_name: &str,
        update_id: &str,
        input: impl Serialize,
    ) -> Result<R, ClientError> {
        let input = PayloadError::encode(|| format!("input of update {update_name}"), &input)?;
        let request = UpdateWorkflowRequest {
            run: Self::run_ref(workflow_id, run_id.unwrap_or_default()),
            update_name: update_name.to_string(),
            input,
            update_id: update_id.to_string(),
            identity: self.identity.clone(),
        };
        let answer = match self.call(Request::UpdateWorkflow(request)).await? {
            Response::UpdateWorkflow(answer) => answer,
            other => return Err(unexpected(other)),
        };
        match answer.outcome {
            UpdateOutcome::Success(result) => Ok(PayloadError::decode(
                || format!("result of update {update_name}"),
                result,
            )?),
            UpdateOutcome::Failure(failure) => Err(ClientError::Update {
                update_id: update_id.to_string(),
                failure: Box::new(failure),
                rejected: answer.rejected,
            }),
        }
    }

    /// Asks the run's query handler `query_name`.
    pub async fn query<R: DeserializeOwned>(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
        query_name: &str,
        args: impl Serialize,
    ) -> Result<R, ClientError> {
        let args = PayloadError::encode(|| format!("arguments of query {query_name}"), &args)?;
        let run = Self::run_ref(workflow_id, run_id.unwrap_or_default());
        let request = QueryWorkflowRequest {
            run,
            query_name: query_name.to_string(),
            args,
        };
        match self.call(Request::QueryWorkflow(request)).await? {
            Response::QueryWorkflow(answer) => Ok(PayloadError::decode(
                || format!("answer of query {query_name}"),
                answer.answer,
            )?),
            other => Err(unexpected(other)),
        }
    }

    /// Asks the run to cancel.
    pub async fn cancel(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
        reason: &str,
    ) -> Result<(), ClientError> {
        let run = Self::run_ref(workflow_id, run_id.unwrap_or_default());
        let request = CancelWorkflowRequest {
            run,
            reason: reason.to_string(),
            identity: self.identity.clone(),
        };
        self.call(Request::CancelWorkflow(request))
            .await
            .map(|_| ())
    }

    /// Closes the run now.
    pub async fn terminate(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
        reason: &str,
    ) -> Result<(), ClientError> {
        let run = Self::run_ref(workflow_id, run_id.unwrap_or_default());
        let request = TerminateWorkflowRequest {
            run,
            reason: reason.to_string(),
            details: None,
            identity: self.identity.clone(),
        };
        self.call(Request::TerminateWorkflow(request))
            .await
            .map(|_| ())
    }

    /// Describes the run.
    pub async fn describe(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
    ) -> Result<RunDescription, ClientError> {
        let run = Self::run_ref(workflow_id, run_id.unwrap_or_default());
        match self.call(Request::DescribeWorkflow(run)).await? {
            Response::DescribeWorkflow(description) => Ok(description),
            other => Err(unexpected(other)),
        }
    }

    /// The workers that polled `task_queue` (every queue if `None`), when
    /// each last polled, and what it serves.
    pub async fn describe_task_queue(
        &self,
        task_queue: Option<&str>,
    ) -> Result<Vec<crate::api::PollerInfo>, ClientError> {
        let request = crate::api::DescribeTaskQueueRequest {
            task_queue: task_queue.map(str::to_string),
        };
        match self.call(Request::DescribeTaskQueue(request)).await? {
            Response::DescribeTaskQueue(description) => Ok(description.pollers),
            other => Err(unexpected(other)),
        }
    }

    /// One page of runs.
    pub async fn list(
        &self,
        request: ListWorkflowsRequest,
    ) -> Result<ListWorkflowsResponse, ClientError> {
        match self.call(Request::ListWorkflows(request)).await? {
            Response::ListWorkflows(page) => Ok(page),
            other => Err(unexpected(other)),
        }
    }

    /// Every run with the given status (all pages).
    pub async fn list_all(
        &self,
        status: Option<RunStatus>,
    ) -> Result<Vec<RunSummary>, ClientError> {
        let filter = ListWorkflowsRequest {
            status,
            ..Default::default()
        };
        self.list_matching(&filter).await
    }

    /// Every run `filter`'s status and type select (all pages; its page
    /// token and size are the client's).
    pub async fn list_matching(
        &self,
        filter: &ListWorkflowsRequest,
    ) -> Result<Vec<RunSummary>, ClientError> {
        let mut runs = Vec::new();
        let mut page_token = None;
        loop {
            let request = ListWorkflowsRequest {
                page_token,
                page_size: 1_000,
                ..filter.clone()
            };
            let page = self.list(request).await?;
            runs.extend(page.runs);
            match page.next_page_token {
                Some(token) => page_token = Some(token),
                None => return Ok(runs),
            }
        }
    }

    /// The run's whole history, validated.
    pub async fn history(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
    ) -> Result<History, ClientError> {
        let mut from_event_id = 1;
        let mut history: Option<History> = None;
        loop {
            let run = Self::run_ref(workflow_id, run_id.unwrap_or_default());
            let request = GetHistoryRequest {
                run,
                from_event_id,
                page_size: 0,
            };
            let page = match self.call(Request::GetHistory(request)).await? {
                Response::GetHistory(page) => page,
                other => return Err(unexpected(other)),
            };
            let history =
                history.get_or_insert_with(|| History::new(&page.workflow_id, &page.run_id));
            for event in page.events {
                history.append(event)?;
            }
            match page.next_event_id {
                Some(next) => from_event_id = next,
                None => return Ok(history.clone()),
            }
        }
    }

    /// Waits (long-polling) at most `timeout_ms` for the run to close; `None`
    /// if it was still open then. Follows the workflow to the chain's last
    /// run (continue-as-new, retries), as [`Client::outcome`] does.
    pub async fn outcome_within(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
        timeout_ms: u64,
    ) -> Result<Option<RunOutcome>, ClientError> {
        let deadline = self.env.now().plus_ms(timeout_ms);
        let mut run_id = run_id.map(str::to_string);
        loop {
            let left_ms = deadline.millis_since(self.env.now());
            let run = Self::run_ref(workflow_id, run_id.as_deref().unwrap_or_default());
            let request = GetResultRequest {
                run,
                wait_ms: left_ms.min(RESULT_WAIT_MS_MAX),
            };
            let response = match self.call(Request::GetResult(request)).await? {
                Response::GetResult(response) => response,
                other => return Err(unexpected(other)),
            };
            match (successor(&response), response.outcome) {
                (Some(next_run_id), _) => run_id = Some(next_run_id),
                (None, Some(outcome)) => return Ok(Some(outcome)),
                (None, None) if left_ms == 0 => return Ok(None),
                (None, None) => continue,
            }
        }
    }

    /// Waits (long-polling) until the run closes; returns how it closed. A
    /// run that continued as new, or failed and was retried, is followed to
    /// the next run, and so on to the chain's last (as Temporal's SDKs follow
    /// runs): the outcome is never `ContinuedAsNew`, and a failure is the
    /// last attempt's. [`Client::run_outcome`] stops at the run.
    pub async fn outcome(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
    ) -> Result<RunOutcome, ClientError> {
        let mut run_id = run_id.map(str::to_string);
        loop {
            match self.run_closed(workflow_id, run_id.as_deref()).await? {
                (_, Some(next_run_id)) => run_id = Some(next_run_id),
                (outcome, None) => return Ok(outcome),
            }
        }
    }

    /// Waits (long-polling) until this one run closes; returns how it closed,
    /// `ContinuedAsNew` included.
    pub async fn run_outcome(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
    ) -> Result<RunOutcome, ClientError> {
        Ok(self.run_closed(workflow_id, run_id).await?.0)
    }

    /// How the run closed, and the run that carries its workflow on.
    async fn run_closed(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
    ) -> Result<(RunOutcome, Option<String>), ClientError> {
        loop {
            let run = Self::run_ref(workflow_id, run_id.unwrap_or_default());
            let request = GetResultRequest {
                run,
                wait_ms: RESULT_WAIT_MS_MAX,
            };
            let response = match self.call(Request::GetResult(request)).await? {
                Response::GetResult(response) => response,
                other => return Err(unexpected(other)),
            };
            let next_run_id = successor(&response);
            if let Some(outcome) = response.outcome {
                return Ok((outcome, next_run_id));
            }
        }
    }
}

/// The run a closed run's workflow goes on in (servers that predate
/// `next_run_id` name only a continue-as-new's, in its outcome).
fn successor(response: &GetResultResponse) -> Option<String> {
    match (&response.next_run_id, &response.outcome) {
        (Some(next_run_id), Some(_)) => Some(next_run_id.clone()),
        (_, Some(RunOutcome::ContinuedAsNew { new_run_id })) => Some(new_run_id.clone()),
        _ => None,
    }
}

impl<O: DeserializeOwned> WorkflowHandle<O> {
    fn run_id(&self) -> Option<&str> {
        (!self.run_id.is_empty()).then_some(self.run_id.as_str())
    }

    /// Waits for the run's result; a run that did not complete is an error
    /// carrying its outcome.
    pub async fn result(&self) -> Result<O, ClientError> {
        match self
            .client
            .outcome(&self.workflow_id, self.run_id())
            .await?
        {
            RunOutcome::Completed { result } => Ok(PayloadError::decode(
                || format!("result of workflow {}", self.workflow_id),
                result,
            )?),
            other => Err(ClientError::Workflow(other)),
        }
    }

    /// Waits for the run to close; returns how it closed.
    pub async fn outcome(&self) -> Result<RunOutcome, ClientError> {
        self.client.outcome(&self.workflow_id, self.run_id()).await
    }

    /// Sends a signal.
    pub async fn signal(
        &self,
        signal_name: &str,
        input: impl Serialize,
    ) -> Result<(), ClientError> {
        self.client
            .signal(&self.workflow_id, self.run_id(), signal_name, input)
            .await
    }

    /// Sends an update and waits for its handler's result.
    pub async fn update<R: DeserializeOwned>(
        &self,
        update_name: &str,
        input: impl Serialize,
    ) -> Result<R, ClientError> {
        self.client
            .update(&self.workflow_id, self.run_id(), update_name, input)
            .await
    }

    /// Asks a query.
    pub async fn query<R: DeserializeOwned>(
        &self,
        query_name: &str,
        args: impl Serialize,
    ) -> Result<R, ClientError> {
        self.client
            .query(&self.workflow_id, self.run_id(), query_name, args)
            .await
    }

    /// Asks the run to cancel.
    pub async fn cancel(&self, reason: &str) -> Result<(), ClientError> {
        self.client
            .cancel(&self.workflow_id, self.run_id(), reason)
            .await
    }

    /// Closes the run now.
    pub async fn terminate(&self, reason: &str) -> Result<(), ClientError> {
        self.client
            .terminate(&self.workflow_id, self.run_id(), reason)
            .await
    }

    /// Describes the run.
    pub async fn describe(&self) -> Result<RunDescription, ClientError> {
        self.client.describe(&self.workflow_id, self.run_id()).await
    }

    /// The run's history.
    pub async fn history(&self) -> Result<History, ClientError> {
        self.client.history(&self.workflow_id, self.run_id()).await
    }
}
