//! `Worker`: runs workflow code and activities for one task queue.
//!
//! It polls only while it has capacity (bounded workflow tasks and activities in
//! flight), keeps recently seen runs in a bounded cache (a miss replays from
//! history), heartbeats running activities, and shuts down gracefully: it stops
//! polling, lets running tasks finish within a grace period, then asks the rest
//! to stop and gives them back to the service to retry elsewhere.
//!
//! ```no_run
//! # use retrace::env::Env;
//! # use retrace::worker::Worker;
//! # async fn demo(env: Env) {
//! let worker = Worker::builder(env, "orders")
//!     // .workflow::<Checkout>()
//!     // .activity(Charge { bank })
//!     .max_concurrent_activities(16)
//!     .start();
//! // ...
//! worker.shutdown().await;
//! # }
//! ```

mod activities;
mod cache;
mod local_activities;
mod speculation;
mod workflows;

pub use cache::RunCache;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{Notify, Semaphore};

use crate::activity::{Activity, ActivityContext, ActivityRunError};
use crate::api::{ActivityTask, ActivityTaskResult, Request, Response};
use crate::client::ClientError;
use crate::env::Env;
use crate::workflow::{PayloadError, StateDigest, Workflow, WorkflowRegistry};

/// Attempts of a call that carries a task token (completions, results).
pub const RESPOND_ATTEMPTS_MAX: u32 = 5;
/// Consecutive failed polls after which the worker warns.
pub const POLL_FAILURES_WARN: u32 = 5;

/// A type-erased activity.
pub(crate) type ActivityFn = Arc<
    dyn Fn(
            ActivityContext,
            Value,
        ) -> Pin<Box<dyn Future<Output = Result<Value, ActivityRunError>> + Send>>
        + Send
        + Sync,
>;

/// Hooks for tests and the simulator's checkers.
pub trait WorkerObserver: Send + Sync {
    /// A workflow task completed: the live executor's digest, and whether the
    /// code closed the run.
    fn workflow_task_completed(&self, _run_id: &str, _digest: StateDigest, _closed: bool) {}
    /// An activity attempt starts running on this worker.
    fn activity_started(&self, _task: &ActivityTask) {}
    /// An activity attempt stopped running on this worker.
    fn activity_finished(&self, _task: &ActivityTask) {}
    /// The service answered a speculative workflow task: taken, or refused
    /// (the result was then recorded alone).
    fn speculative_workflow_task(&self, _run_id: &str, _taken: bool) {}
    /// The attempt sends a heartbeat (before the request leaves).
    fn activity_heartbeat_sent(&self, _task: &ActivityTask) {}
    /// The attempt sends how it ended (once per attempt, before the request
    /// leaves; retries of the request are not reported again).
    fn activity_result_sent(&self, _task: &ActivityTask, _result: &ActivityTaskResult) {}
    /// The service handed this worker `handed` tasks of `kind` (`"activity"`
    /// or `"workflow"`) in answer to a request that offered room for `room`.
    /// A correct service never hands more than the room offered; the worker
    /// drops the extra ones, so only this hook shows them.
    fn tasks_handed(&self, _run_id: &str, _kind: &'static str, _room: usize, _handed: usize) {}
    /// An attempt of a local activity starts, inside the workflow task
    /// `task` (its `started_event_id` says how much history the worker had).
    fn local_activity_started(
        &self,
        _task: &crate::api::TaskToken,
        _request: &crate::workflow::LocalActivityRequest,
        _attempt: u32,
    ) {
    }
}

/// Limits and timings of a worker. Every bound is `_max`, every duration `_ms`.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The queue polled (workflow and activity tasks).
    pub task_queue: String,
    /// Shown in histories.
    pub identity: String,
    /// Workflow tasks run at once.
    pub workflow_tasks_max: usize,
    /// Activities run at once.
    pub activities_max: usize,
    /// Runs kept in the cache.
    pub cache_runs_max: usize,
    /// Concurrent polls per kind of task.
    pub pollers_max: usize,
    /// Deadline of one poll call (above the service's long-poll timeout).
    pub poll_rpc_timeout_ms: u64,
    /// Deadline of other calls.
    pub rpc_timeout_ms: u64,
    /// How long shutdown lets running tasks finish.
    pub shutdown_grace_ms: u64,
    /// Longest gap between heartbeats sent for an activity without a heartbeat timeout.
    pub heartbeat_throttle_ms_max: u64,
    /// Run the workflow task an activity result schedules before sending the
    /// result, when the run is cached here, and send both in one request
    /// (see [`crate::api::SpeculativeWorkflowTask`]).
    pub speculative_workflow_tasks: bool,
    /// How long a workflow task may run its local activities (attempts and
    /// the backoffs between them); a retry whose backoff ends later waits on
    /// a durable timer instead. Below the workflow task timeout (10 s).
    pub local_activity_window_ms: u64,
}

impl WorkerOptions {
    /// Defaults for `task_queue`.
    pub fn new(task_queue: &str) -> WorkerOptions {
        WorkerOptions {
            task_queue: task_queue.to_string(),
            identity: format!("worker@{task_queue}"),
            workflow_tasks_max: 16,
            activities_max: 64,
            cache_runs_max: 1_000,
            pollers_max: 2,
            poll_rpc_timeout_ms: 70_000,
            rpc_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            heartbeat_throttle_ms_max: 30_000,
            speculative_workflow_tasks: true,
            local_activity_window_ms: 5_000,
        }
    }
}

/// Counters of a worker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Workflow tasks completed.
    pub workflow_tasks: u64,
    /// Workflow tasks that replayed from history (cache miss).
    pub cache_misses: u64,
    /// Activity attempts run.
    pub activities: u64,
    /// Most activities ever running at once.
    pub activities_peak: usize,
    /// Most workflow tasks ever running at once.
    pub workflow_tasks_peak: usize,
    /// Workflow tasks run speculatively and taken with their activity's result.
    pub speculations_taken: u64,
    /// Speculative workflow tasks the service refused (the history had moved on,
    /// or the clocks disagreed); the result was recorded alone.
    pub speculations_refused: u64,
}

/// Sets up a worker; clone it to start several with the same setup.
#[derive(Clone)]
pub struct WorkerBuilder {
    env: Env,
    options: WorkerOptions,
    workflows: WorkflowRegistry,
    activities: BTreeMap<String, ActivityFn>,
    observer: Option<Arc<dyn WorkerObserver>>,
}

pub(crate) struct Shared {
    pub env: Env,
    pub options: WorkerOptions,
    pub workflows: WorkflowRegistry,
    pub activities: BTreeMap<String, ActivityFn>,
    pub observer: Option<Arc<dyn WorkerObserver>>,
    pub cache: Mutex<RunCache>,
    pub workflow_permits: Arc<Semaphore>,
    pub activity_permits: Arc<Semaphore>,
    pub stopping: AtomicBool,
    pub stop: Notify,
    /// Set by `crash`: every task stops at its next wait, reporting nothing.
    pub crashed: AtomicBool,
    pub crash: Notify,
    pub running_activities: Mutex<BTreeMap<u64, Arc<crate::activity::ActivityShared>>>,
    pub next_activity_slot: AtomicU64,
    pub workflow_tasks: AtomicU64,
    pub cache_misses: AtomicU64,
    pub activities_run: AtomicU64,
    pub activities_now: AtomicUsize,
    pub activities_peak: AtomicUsize,
    pub workflow_tasks_now: AtomicUsize,
    pub workflow_tasks_peak: AtomicUsize,
    pub speculations_taken: AtomicU64,
    pub speculations_refused: AtomicU64,
}

/// A running worker.
#[derive(Clone)]
pub struct Worker {
    shared: Arc<Shared>,
}

impl Worker {
    /// A builder for a worker of `task_queue`.
    pub fn builder(env: Env, task_queue: &str) -> WorkerBuilder {
        WorkerBuilder {
            env,
            options: WorkerOptions::new(task_queue),
            workflows: WorkflowRegistry::new(),
            activities: BTreeMap::new(),
            observer: None,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> WorkerStats {
        let s = &self.shared;
        WorkerStats {
            workflow_tasks: s.workflow_tasks.load(Ordering::Relaxed),
            cache_misses: s.cache_misses.load(Ordering::Relaxed),
            activities: s.activities_run.load(Ordering::Relaxed),
            activities_peak: s.activities_peak.load(Ordering::Relaxed),
            workflow_tasks_peak: s.workflow_tasks_peak.load(Ordering::Relaxed),
            speculations_taken: s.speculations_taken.load(Ordering::Relaxed),
            speculations_refused: s.speculations_refused.load(Ordering::Relaxed),
        }
    }

    /// Empties the run cache (the next task of every run replays from history).
    pub fn clear_cache(&self) {
        let mut cache = self.shared.cache.lock().expect("cache lock");
        *cache = RunCache::new(self.shared.options.cache_runs_max);
    }

    /// Stops the worker as a crash would: every poll, workflow task and
    /// activity stops at its next wait and reports nothing. The service finds
    /// out through timeouts, as it would if the process died.
    pub fn crash(&self) {
        self.shared.crashed.store(true, Ordering::SeqCst);
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.crash.notify_waiters();
        self.shared.stop.notify_waiters();
    }

    /// Stops polling, lets running tasks finish within the grace period, then
    /// asks running activities to stop and gives them back to the service.
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::SeqCst);
        shared.stop.notify_waiters();
        let all_done = async {
            let workflows = shared.options.workflow_tasks_max as u32;
            let activities = shared.options.activities_max as u32;
            let _w = shared.workflow_permits.acquire_many(workflows).await;
            let _a = shared.activity_permits.acquire_many(activities).await;
        };
        futures::pin_mut!(all_done);
        if shared
            .env
            .timeout(shared.options.shutdown_grace_ms, &mut all_done)
            .await
            .is_err()
        {
            let running: Vec<_> = shared
                .running_activities
                .lock()
                .expect("lock")
                .values()
                .cloned()
                .collect();
            tracing::info!(
                activities = running.len(),
                "shutdown grace over: asking activities to stop"
            );
            for activity in running {
                activity.request_cancel(crate::activity::CancelReason::WorkerShutdown);
            }
            let _ = shared
                .env
                .timeout(shared.options.shutdown_grace_ms, all_done)
                .await;
        }
    }
}

impl WorkerBuilder {
    /// Registers workflow type `W`.
    pub fn workflow<W: Workflow>(mut self) -> Self {
        self.workflows.register::<W>();
        self
    }

    /// Registers every workflow of `registry`.
    pub fn workflows(mut self, registry: WorkflowRegistry) -> Self {
        self.workflows = registry;
        self
    }

    /// Registers activity `A`, implemented by `activity`.
    pub fn activity<A: Activity>(mut self, activity: A) -> Self {
        let activity = Arc::new(activity);
        let run: ActivityFn = Arc::new(move |ctx, input| {
            let activity = activity.clone();
            Box::pin(async move {
                let what = || format!("input of activity {}", A::NAME);
                let input: A::Input = PayloadError::decode(what, input)
                    .map_err(|e| ActivityRunError::Failed(payload_failure(&e)))?;
                let output = activity.run(ctx, input).await?;
                let what = || format!("result of activity {}", A::NAME);
                PayloadError::encode(what, &output)
                    .map_err(|e| ActivityRunError::Failed(payload_failure(&e)))
            })
        });
        self.activities.insert(A::NAME.to_string(), run);
        self
    }

    /// Changes options.
    pub fn options(mut self, f: impl FnOnce(&mut WorkerOptions)) -> Self {
        f(&mut self.options);
        self
    }

    /// Bounds activities run at once.
    pub fn max_concurrent_activities(self, activities_max: usize) -> Self {
        self.options(|o| o.activities_max = activities_max)
    }

    /// Bounds workflow tasks run at once.
    pub fn max_concurrent_workflow_tasks(self, workflow_tasks_max: usize) -> Self {
        self.options(|o| o.workflow_tasks_max = workflow_tasks_max)
    }

    /// Bounds the run cache.
    pub fn cache_runs_max(self, cache_runs_max: usize) -> Self {
        self.options(|o| o.cache_runs_max = cache_runs_max)
    }

    /// Sets the identity shown in histories.
    pub fn identity(self, identity: &str) -> Self {
        self.options(|o| o.identity = identity.to_string())
    }

    /// Installs hooks (tests, simulator checkers).
    pub fn observer(mut self, observer: Arc<dyn WorkerObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Starts polling.
    pub fn start(self) -> Worker {
        let options = self.options;
        assert!(
            options.workflow_tasks_max > 0 && options.activities_max > 0,
            "capacity must be at least 1"
        );
        let shared = Arc::new(Shared {
            env: self.env,
            workflow_permits: Arc::new(Semaphore::new(options.workflow_tasks_max)),
            activity_permits: Arc::new(Semaphore::new(options.activities_max)),
            cache: Mutex::new(RunCache::new(options.cache_runs_max)),
            options,
            workflows: self.workflows,
            activities: self.activities,
            observer: self.observer,
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            crashed: AtomicBool::new(false),
            crash: Notify::new(),
            running_activities: Mutex::new(BTreeMap::new()),
            next_activity_slot: AtomicU64::new(0),
            workflow_tasks: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            activities_run: AtomicU64::new(0),
            activities_now: AtomicUsize::new(0),
            activities_peak: AtomicUsize::new(0),
            workflow_tasks_now: AtomicUsize::new(0),
            workflow_tasks_peak: AtomicUsize::new(0),
            speculations_taken: AtomicU64::new(0),
            speculations_refused: AtomicU64::new(0),
        });
        // At least one poller of each kind per server: each server matches
        // only its own shards' tasks, and a server nobody polls would hold
        // them until a poller came by (the simulator found tasks waiting
        // for minutes behind two pollers and four servers).
        let pollers = shared.options.pollers_max.max(shared.env.network.servers());
        for _ in 0..pollers {
            if !shared.workflows.names().is_empty() {
                shared.spawn(
                    "worker-workflow-poller",
                    workflows::poll_loop(shared.clone()),
                );
            }
            if !shared.activities.is_empty() {
                shared.spawn(
                    "worker-activity-poller",
                    activities::poll_loop(shared.clone()),
                );
            }
        }
        Worker { shared }
    }
}

fn payload_failure(error: &PayloadError) -> crate::types::Failure {
    let mut failure = crate::types::Failure::new("PayloadError", error.to_string());
    failure.non_retryable = true;
    failure
}

impl Shared {
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// One call to the service with the worker's deadline, no retries.
    pub async fn call_once(
        &self,
        request: Request,
        timeout_ms: u64,
    ) -> Result<Response, ClientError> {
        match self
            .env
            .timeout(timeout_ms, self.env.network.call(request))
            .await
        {
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(error))) => Err(ClientError::Service(error)),
            Ok(Err(error)) => Err(ClientError::Network(error)),
            Err(_) => Err(ClientError::Network(crate::env::NetError::Timeout)),
        }
    }

    /// A call that is safe to repeat (it carries a task token): network and
    /// storage failures are retried with backoff, up to `RESPOND_ATTEMPTS_MAX`.
    pub async fn call_idempotent(&self, request: Request) -> Result<Response, ClientError> {
        let mut attempt = 1;
        loop {
            match self
                .call_once(request.clone(), self.options.rpc_timeout_ms)
                .await
            {
                Ok(response) => return Ok(response),
                Err(error) if error.code().is_some_and(|c| !c.is_transient()) => {
                    return Err(error);
                }
                Err(error) if attempt >= RESPOND_ATTEMPTS_MAX => return Err(error),
                Err(error) => {
                    tracing::debug!(%error, attempt, method = request.method(), "call failed; retrying");
                    self.poll_backoff(attempt).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Logs a failed poll: at debug level, and once as a warning when the
    /// service has been unreachable for several polls in a row.
    pub fn log_poll_failure(&self, kind: &str, failures_before: u32, error: &ClientError) {
        if failures_before + 1 == POLL_FAILURES_WARN {
            tracing::warn!(%error, kind, task_queue = self.options.task_queue, "polls keep failing; is the service up?");
        } else {
            tracing::debug!(%error, kind, "poll failed");
        }
    }

    /// A permit if one is free right now (and `wanted`), for eager dispatch.
    pub fn try_permit(
        &self,
        semaphore: &Arc<Semaphore>,
        wanted: bool,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if !wanted || self.is_stopping() {
            return None;
        }
        semaphore.clone().try_acquire_owned().ok()
    }

    /// Up to `count` permits that are free right now, for eager dispatch.
    pub fn try_permits(
        &self,
        semaphore: &Arc<Semaphore>,
        count: usize,
    ) -> Vec<tokio::sync::OwnedSemaphorePermit> {
        let wanted = !self.activities.is_empty();
        (0..count)
            .map_while(|_| self.try_permit(semaphore, wanted))
            .collect()
    }

    /// Waits for a permit, or returns `None` once the worker stops.
    pub async fn permit(
        &self,
        semaphore: &Arc<Semaphore>,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let stopped = self.stop.notified();
        futures::pin_mut!(stopped);
        if self.is_stopping() {
            return None;
        }
        let acquire = semaphore.clone().acquire_owned();
        futures::pin_mut!(acquire);
        match futures::future::select(acquire, stopped).await {
            futures::future::Either::Left((Ok(permit), _)) => Some(permit),
            _ => None,
        }
    }

    /// Runs `call` unless the worker stops first.
    pub async fn unless_stopping<T>(&self, call: impl Future<Output = T>) -> Option<T> {
        let stopped = self.stop.notified();
        futures::pin_mut!(stopped, call);
        if self.is_stopping() {
            return None;
        }
        match futures::future::select(call, stopped).await {
            futures::future::Either::Left((value, _)) => Some(value),
            futures::future::Either::Right(_) => None,
        }
    }

    /// Spawns a task of this worker; it stops at its next wait if the worker crashes.
    pub fn spawn(
        self: &Arc<Self>,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let shared = self.clone();
        self.env.spawn(name, async move {
            let crashed = shared.crash.notified();
            futures::pin_mut!(crashed, task);
            if shared.crashed.load(Ordering::SeqCst) {
                return;
            }
            futures::future::select(task, crashed).await;
        });
    }

    /// Sleeps after a failed poll (bounded backoff).
    pub async fn poll_backoff(&self, failures: u32) {
        let backoff_ms = (100u64 << failures.min(4)).min(1_000);
        self.env.sleep_ms(backoff_ms).await;
    }
}

/// Records the start of a task and tracks the peak.
pub(crate) fn enter(now: &AtomicUsize, peak: &AtomicUsize) {
    let running = now.fetch_add(1, Ordering::SeqCst) + 1;
    peak.fetch_max(running, Ordering::SeqCst);
}
