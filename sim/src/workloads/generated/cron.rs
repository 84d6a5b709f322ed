//! A cron workflow beside the program's runs: the client starts
//! [`CRON_WORKFLOW_ID`] on an `@every` schedule, its runs count themselves
//! through `last_completion_result`, and the client cancels it later.
//!
//! | promise                                                               | checked by       |
//! |-----------------------------------------------------------------------|------------------|
//! | every run of the id is in one chain from the client's start, each run naming the next in its close | [`chain`] |
//! | each run starts at a slot of the schedule (its start plus its wait)    | [`check_run`]    |
//! | each run's work timer lasts what the program says, and fires no earlier | [`check_work_timer`] |
//! | the next run starts in the write that closes the run before it, at the first slot after that close: no slot runs twice, none is run late, no two runs overlap | [`check_link`] |
//! | run k + 1 is told run k's result, and returns one more                | [`check_link`]   |
//! | the chain ends with the run the cancel reached (canceled, or completed past its last cancelable point); no run asked to cancel is followed | [`check`] |

use std::collections::BTreeMap;
use std::time::Duration;

use retrace::history::{ContinueAsNewInitiator, EventKind, History};
use retrace::workflow::{Workflow, WorkflowContext, WorkflowResult};
use serde::{Deserialize, Serialize};
use serde_json::json;

use retrace::api::ErrorCode;
use retrace::client::ClientError;

use crate::SimClient;

/// The cron workflow's id.
pub const CRON_WORKFLOW_ID: &str = "gen-cron";
/// Tries of the client's cancel, a second apart: faults may fail a try
/// (and the current run may close under it); the cron goes on until one
/// lands, so the client tries past the end of the faults.
const CANCEL_TRIES_MAX: u32 = 120;

/// The cron workflow of a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronSpec {
    /// The schedule is `@every {every_s}s`.
    pub every_s: u64,
    /// Each run's work: a timer of this many milliseconds.
    pub work_ms: u64,
    /// When the client cancels it.
    pub cancel_at_ms: u64,
}

impl CronSpec {
    pub fn schedule(&self) -> String {
        format!("@every {}s", self.every_s)
    }
}

/// The cron workflow: works `input` ms, then returns one more than the
/// last run that completed.
pub struct CronTick;

impl Workflow for CronTick {
    const NAME: &'static str = "cron-tick";
    type Input = u64;
    type Output = u64;
    async fn run(ctx: WorkflowContext, work_ms: u64) -> WorkflowResult<u64> {
        ctx.sleep(Duration::from_millis(work_ms)).await?;
        let last = ctx.info().last_completion_result.as_ref();
        Ok(last.and_then(|v| v.as_u64()).unwrap_or(0) + 1)
    }
}

/// Starts the cron workflow, and cancels it at its time.
pub async fn play(client: &SimClient, spec: CronSpec) -> anyhow::Result<()> {
    let options = retrace::client::StartOptions::new(CRON_WORKFLOW_ID, "sim").cron(spec.schedule());
    client
        .start_by_name(options, CronTick::NAME, json!(spec.work_ms))
        .await?;
    client.sleep_ms(spec.cancel_at_ms).await;
    for _ in 0..CANCEL_TRIES_MAX {
        match client.cancel(CRON_WORKFLOW_ID, None, "generated").await {
            Ok(()) => return Ok(()),
            // The run closed under the request: an earlier try landed
            // (its answer lost) and the cron stopped, or the run gave way
            // to the next (then try again).
            Err(ClientError::Service(e)) if e.code == ErrorCode::RunClosed => {
                let current = client.describe(CRON_WORKFLOW_ID, None).await;
                if current.is_ok_and(|run| run.status.is_closed()) {
                    return Ok(());
                }
            }
            Err(_) => client.sleep_ms(1_000).await,
        }
    }
    anyhow::bail!("the cron workflow could not be canceled in {CANCEL_TRIES_MAX} tries")
}

/// Checks the cron workflow's runs.
pub fn check(spec: CronSpec, histories: &BTreeMap<String, History>, problems: &mut Vec<String>) {
    let runs: Vec<&History> = histories
        .values()
        .filter(|h| h.workflow_id() == CRON_WORKFLOW_ID)
        .collect();
    let chain = match chain(&runs) {
        Ok(chain) => chain,
        Err(problem) => return problems.push(format!("cron: {problem}")),
    };
    let interval_ms = spec.every_s * 1_000;
    for (number, run) in chain.iter().enumerate() {
        check_run(spec, number, run, problems);
    }
    for (number, pair) in chain.windows(2).enumerate() {
        check_link(number, pair[0], pair[1], interval_ms, problems);
    }
    // The cancel may reach a run after its last cancelable point: it then
    // completes, and the cron stops all the same.
    let last = chain[chain.len() - 1];
    let closed = last.close_event().map(|e| e.kind.name());
    let ended = matches!(
        closed,
        Some("WorkflowExecutionCanceled" | "WorkflowExecutionCompleted")
    );
    if !asked_to_cancel(last) || !ended {
        problems.push(format!(
            "cron: its last run ended with {closed:?} (asked to cancel: {}), expected canceled",
            asked_to_cancel(last)
        ));
    }
    for run in &chain[..chain.len() - 1] {
        if asked_to_cancel(run) {
            problems.push(format!(
                "cron: run {} was asked to cancel, yet a run followed it",
                run.run_id()
            ));
        }
    }
}

fn asked_to_cancel(run: &History) -> bool {
    run.events()
        .iter()
        .any(|e| matches!(e.kind, EventKind::WorkflowExecutionCancelRequested(_)))
}

/// The runs from the client's start, each close naming the next.
fn chain<'h>(runs: &[&'h History]) -> Result<Vec<&'h History>, String> {
    let by_run: BTreeMap<&str, &History> = runs.iter().map(|h| (h.run_id(), *h)).collect();
    let firsts: Vec<&History> = runs
        .iter()
        .copied()
        .filter(|h| {
            h.started()
                .is_some_and(|s| s.continued_execution_run_id.is_none())
        })
        .collect();
    let [first] = firsts[..] else {
        return Err(format!("{} first runs among {}", firsts.len(), runs.len()));
    };
    let mut chain = vec![first];
    while let Some(next) = next_run_id(chain[chain.len() - 1]) {
        let history = by_run
            .get(next)
            .ok_or_else(|| format!("a run names a next run {next} that is not stored"))?;
        chain.push(history);
    }
    if chain.len() != runs.len() {
        return Err(format!(
            "{} runs stored, {} in the chain",
            runs.len(),
            chain.len()
        ));
    }
    Ok(chain)
}

fn next_run_id(history: &History) -> Option<&str> {
    match &history.close_event()?.kind {
        EventKind::WorkflowExecutionCompleted(a) => a.new_execution_run_id.as_deref(),
        EventKind::WorkflowExecutionFailed(a) => a.new_execution_run_id.as_deref(),
        _ => None,
    }
}

/// When the run's first workflow task was due: its start plus its wait.
fn slot_ms(history: &History) -> u64 {
    let wait_ms = history
        .started()
        .and_then(|s| s.first_workflow_task_backoff_ms)
        .unwrap_or(0);
    history.events()[0].event_time.as_millis() + wait_ms
}

fn check_run(spec: CronSpec, number: usize, run: &History, problems: &mut Vec<String>) {
    let Some(started) = run.started() else {
        return problems.push(format!("cron: run {number} has no start"));
    };
    let slot_ms = slot_ms(run);
    if started.cron_schedule != Some(spec.schedule())
        || !slot_ms.is_multiple_of(spec.every_s * 1_000)
    {
        problems.push(format!(
            "cron: run {number} (schedule {:?}) is due at {slot_ms} ms since the epoch, not a slot of {}",
            started.cron_schedule,
            spec.schedule()
        ));
    }
    check_work_timer(spec, number, run, problems);
    if let Some(EventKind::WorkflowExecutionCompleted(c)) = run.close_event().map(|e| &e.kind) {
        let last = started
            .last_completion_result
            .as_ref()
            .and_then(|v| v.as_u64());
        if c.result.as_u64() != Some(last.unwrap_or(0) + 1) {
            problems.push(format!(
                "cron: run {number} returned {} after a last completion of {last:?}",
                c.result
            ));
        }
    }
}

/// The run's work is one timer of `work_ms`, fired no earlier than that.
fn check_work_timer(spec: CronSpec, number: usize, run: &History, problems: &mut Vec<String>) {
    for event in run.events() {
        match &event.kind {
            EventKind::TimerStarted(s) if s.start_to_fire_timeout_ms != spec.work_ms => {
                problems.push(format!(
                    "cron: run {number} started a timer of {} ms, its work is {} ms",
                    s.start_to_fire_timeout_ms, spec.work_ms
                ));
            }
            EventKind::TimerFired(f) => {
                let started = &run.events()[f.started_event_id as usize - 1];
                let waited_ms = event.event_time.millis_since(started.event_time);
                if waited_ms < spec.work_ms {
                    problems.push(format!(
                        "cron: run {number}'s {} ms timer fired after {waited_ms} ms",
                        spec.work_ms
                    ));
                }
            }
            _ => {}
        }
    }
}

fn check_link(
    number: usize,
    earlier: &History,
    later: &History,
    interval_ms: u64,
    problems: &mut Vec<String>,
) {
    let close = earlier
        .close_event()
        .expect("a run with a successor closed");
    let closed_ms = close.event_time.as_millis();
    let expected_slot_ms = (closed_ms / interval_ms + 1) * interval_ms;
    let started = later.started().expect("checked by check_run");
    let result = match &close.kind {
        EventKind::WorkflowExecutionCompleted(c) => Some(c.result.clone()),
        _ => None,
    };
    let checks = [
        (
            later.events()[0].event_time == close.event_time,
            "one write for the close and the start",
        ),
        (
            slot_ms(later) == expected_slot_ms,
            "the first slot after the close",
        ),
        (
            started.initiator == Some(ContinueAsNewInitiator::CronSchedule),
            "the initiator",
        ),
        (
            started.continued_execution_run_id.as_deref() == Some(earlier.run_id()),
            "the link back",
        ),
        (
            result.is_none() || started.last_completion_result == result,
            "the last completion result",
        ),
    ];
    for (holds, what) in checks {
        if !holds {
            problems.push(format!(
                "cron: run {} does not follow run {number} as it should: {what} \
                 (closed at {closed_ms} ms, next due at {} ms)",
                number + 1,
                slot_ms(later)
            ));
        }
    }
}
