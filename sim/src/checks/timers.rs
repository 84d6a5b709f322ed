//! Both sides of every timer and timeout: never before its deadline, never
//! after its deadline plus a tolerance derived from the fault plan.
//!
//! All times are the service's clock (event times, and the attempt start the
//! service wrote into each activity task). What the history and the workers'
//! record let us bound:
//!
//! | timer / timeout          | deadline                                   | early | late |
//! |--------------------------|--------------------------------------------|-------|------|
//! | user timer               | `TimerStarted` + duration                  | `TimerFired` | its fire or cancel, or the run's close while it was open |
//! | schedule-to-close        | `ActivityTaskScheduled` + timeout          | `ActivityTaskTimedOut` | the activity's close, or the run's close while it was open |
//! | schedule-to-start        | `ActivityTaskScheduled` + timeout (first attempt) | `ActivityTaskTimedOut` | the close of an activity no attempt of which started |
//! | start-to-close           | start of the last attempt + timeout (the start is not in the history: `ActivityTaskStarted` is written at the close; the worker that ran the attempt recorded it) | `ActivityTaskTimedOut` | a close the attempt caused (result, failure, its own timeout) |
//! | heartbeat                | start of the attempt + timeout, for an attempt that never sent a heartbeat (a heartbeat moves the deadline to a time the service alone knows) | `ActivityTaskTimedOut` | as start-to-close; and an attempt before the last that ended by start-to-close although it never heartbeated |
//! | workflow task            | `WorkflowTaskStarted` + its timeout        | `WorkflowTaskTimedOut` | the task's close, or the run's close while it ran |
//! | execution timeout        | `WorkflowExecutionStarted` + timeout       | `WorkflowExecutionTimedOut` | the run's close |
//! | workflow task backoff    | a `WorkflowTaskFailed` of the code (attempt n) + 1 s x 2^(n-1), at most 60 s | the next `WorkflowTaskScheduled` | that event, or the run's close |
//!
//! What cannot be bounded: the heartbeat deadline of an attempt that did
//! heartbeat (the service's time of its last accepted heartbeat is recorded
//! nowhere); the start-to-close and heartbeat deadlines of an attempt no worker
//! received (its task was lost on the way: its start is unknown); and of the
//! attempts before the last, only how the one just before ended
//! (`ActivityTaskStarted.last_failure`), not when.
//!
//! An event that reaches the run while a workflow task runs is buffered and
//! written when the task closes: such an event is on time if the task it
//! waited for started by the deadline's tolerance.
//!
//! The tolerance ([`Tolerance::latest`]) is a base for the timer loop and one
//! write, plus (during the safety phase) room for two failed or stalled
//! writes, plus every window in which the fault plan kept the service from
//! firing timers (crashed and restarting, or its storage in trouble) that
//! overlaps the wait. The liveness phase has no faults: the base alone.

use std::collections::BTreeMap;

use retrace::history::{EventKind, History, WorkflowTaskFailedCause};
use retrace::types::{Failure, TimeoutType, Timestamp};

use super::{ActivityView, Violation, activities, event};
use crate::faults::swarm::Swarm;
use crate::faults::{FaultKind, FaultPlan};
use crate::world::cluster::{AttemptKey, AttemptSeen};
use crate::world::storage::{STALL_MS_MAX, ServiceStarts};

/// Longest a simulated cluster's shard waits for a new owner after its
/// owner fails: its lease, plus a renewal round of the taker.
const CLUSTER_HANDOFF_MS: u64 = crate::world::cluster::CLUSTER_LEASE_MS * 7 / 5;
/// Slack of every timer: the timer loop's wake-up, the run's lock, one write.
pub const TOLERANCE_MS_BASE: u64 = 1_000;
/// How long the service takes to come back once its node restarts (it reloads
/// every run and rebuilds its timers).
pub const RESTART_MS_MAX: u64 = 2_000;
/// How long the service waits before firing again a timer whose write failed.
pub const FAILED_FIRE_RETRY_MS: u64 = 1_000;
/// Failed or stalled writes a timer may meet in a row under background faults.
pub const WRITES_FAILED_MAX: u64 = 2;

/// Maps simulated time (ms since the run began) to the service's clock.
#[derive(Clone, Copy, Debug)]
pub struct ServiceClock {
    /// The service clock now.
    pub now: Timestamp,
    /// Simulated ms since the run began, now.
    pub now_elapsed_ms: u64,
    /// The service clock's drift.
    pub drift_ppm: i64,
}

impl ServiceClock {
    /// The service clock's reading `elapsed_ms` after the run began.
    pub fn at(&self, elapsed_ms: u64) -> u64 {
        let back_ms = i128::from(self.now_elapsed_ms) - i128::from(elapsed_ms);
        let scaled = back_ms * (1_000_000 + i128::from(self.drift_ppm)) / 1_000_000;
        (i128::from(self.now.0) - scaled).max(0) as u64
    }
}

/// How late a timer may fire, from the faults of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Tolerance {
    /// Slack every timer gets.
    pub base_ms: u64,
    /// Slack added while the safety phase's background faults are on.
    pub safety_extra_ms: u64,
    /// When the safety phase ended (service clock).
    pub safety_end: Timestamp,
    /// Windows (service clock, ms) in which the service could not fire timers.
    pub windows: Vec<(u64, u64)>,
    /// How early a timer may seem to fire: in a cluster, a deadline set on
    /// one member's clock may be fired by another's, which reads up to the
    /// services' clock spread ahead (0 with one service).
    pub early_ms: u64,
}

impl Tolerance {
    /// No faults: the base alone.
    #[cfg(test)]
    pub fn calm() -> Tolerance {
        Tolerance {
            base_ms: TOLERANCE_MS_BASE,
            safety_extra_ms: 0,
            safety_end: Timestamp(0),
            windows: Vec::new(),
            early_ms: 0,
        }
    }

    /// The tolerance of a run with `plan`, `swarm` and a safety phase of `safety_ms`.
    pub fn of_run(
        plan: &FaultPlan,
        swarm: &Swarm,
        clock: ServiceClock,
        safety_ms: u64,
    ) -> Tolerance {
        let mut safety_extra_ms = 0;
        if swarm.storage_io_error_rate > 0.0 || swarm.storage_ambiguous_rate > 0.0 {
            safety_extra_ms += WRITES_FAILED_MAX * FAILED_FIRE_RETRY_MS;
        }
        if swarm.storage_stall_rate > 0.0 {
            safety_extra_ms += WRITES_FAILED_MAX * STALL_MS_MAX;
        }
        let mut windows = Vec::new();
        for fault in &plan.faults {
            let (duration_ms, after_ms) = match fault.kind {
                FaultKind::CrashService { down_ms } | FaultKind::TornRow { down_ms } => {
                    (down_ms, RESTART_MS_MAX)
                }
                FaultKind::StorageTrouble { duration_ms, .. } => {
                    (duration_ms, FAILED_FIRE_RETRY_MS + STALL_MS_MAX)
                }
                // A cluster member's shards wait for its leases to end (or
                // for it to come back), then for a member to take them.
                FaultKind::CrashServiceNode {
                    down_ms: duration_ms,
                    ..
                }
                | FaultKind::PauseService { duration_ms, .. }
                | FaultKind::CutFromStorage { duration_ms, .. } => (
                    duration_ms.min(CLUSTER_HANDOFF_MS),
                    RESTART_MS_MAX + CLUSTER_HANDOFF_MS,
                ),
                _ => continue,
            };
            let from_ms = fault.at_ms.min(safety_ms);
            let to_ms = (fault.at_ms + duration_ms).min(safety_ms);
            windows.push((clock.at(from_ms), clock.at(to_ms) + after_ms));
        }
        windows.sort_unstable();
        // In a cluster a renewal that fails (a storage error) can drop a
        // shard for a round, and its timers wait for the rebuild.
        // A member whose clock reads behind fires late by as much.
        let spread_ms = swarm.service_clock_spread_ms(clock.now_elapsed_ms);
        let cluster_ms = if swarm.services > 1 {
            CLUSTER_HANDOFF_MS + spread_ms
        } else {
            0
        };
        Tolerance {
            base_ms: TOLERANCE_MS_BASE + cluster_ms,
            safety_extra_ms,
            safety_end: Timestamp(clock.at(safety_ms)),
            windows,
            early_ms: spread_ms,
        }
    }

    /// The latest a timer due at `deadline` may fire.
    pub fn latest(&self, deadline: Timestamp) -> Timestamp {
        let mut end = deadline.0 + self.base_ms;
        // A write that failed or stalled just before the faults healed still
        // delays timers due shortly after.
        if deadline.0 < self.safety_end.0 + self.safety_extra_ms {
            end += self.safety_extra_ms;
        }
        for &(from, to) in &self.windows {
            if from <= end && to > deadline.0 {
                end += to - from.max(deadline.0);
            }
        }
        assert!(end >= deadline.0 + self.base_ms);
        Timestamp(end)
    }
}

/// True if the event at `index` was written by `latest`, or waited in the
/// buffer of a workflow task that started by then: it is written in the
/// transition that closes that task (or, with the run's close, while the task
/// still runs).
fn on_time(history: &History, index: usize, latest: Timestamp) -> bool {
    let events = history.events();
    let written = &events[index];
    if written.event_time <= latest {
        return true;
    }
    let Some(started_index) = events[..index]
        .iter()
        .rposition(|e| matches!(e.kind, EventKind::WorkflowTaskStarted(_)))
    else {
        return false;
    };
    let started = &events[started_index];
    if started.event_time > latest {
        return false;
    }
    let closed_it = |e: &&retrace::history::Event| match &e.kind {
        EventKind::WorkflowTaskCompleted(a) => a.started_event_id == started.event_id,
        EventKind::WorkflowTaskFailed(a) => a.started_event_id == started.event_id,
        EventKind::WorkflowTaskTimedOut(a) => a.started_event_id == started.event_id,
        _ => false,
    };
    match events[started_index..index].iter().find(closed_it) {
        Some(close) => close.event_time == written.event_time,
        None => true,
    }
}

fn index_of(event_id: u64) -> usize {
    (event_id - 1) as usize
}

/// What the checks of one history share.
struct Timing<'a> {
    history: &'a History,
    tolerance: &'a Tolerance,
    violations: Vec<Violation>,
}

impl Timing<'_> {
    fn early(&mut self, what: &str, fired_id: u64, deadline: Timestamp) {
        let fired = event(self.history, fired_id).expect("an event of the history");
        if fired.event_time.plus_ms(self.tolerance.early_ms) < deadline {
            let message = format!(
                "{what} fired at {}, {} ms before its deadline {deadline}",
                fired.event_time,
                deadline.millis_since(fired.event_time)
            );
            self.violations.push(
                Violation::new("timers never fire early", message).at(self.history, Some(fired_id)),
            );
        }
    }

    /// `what` was due at `deadline`; `by_id` is the event that shows it had
    /// happened (its own event, or a later close that required it).
    fn late(&mut self, what: &str, by_id: u64, deadline: Timestamp) {
        let latest = self.tolerance.latest(deadline);
        if on_time(self.history, index_of(by_id), latest) {
            return;
        }
        let by = event(self.history, by_id).expect("an event of the history");
        let message = format!(
            "{what} was due at {deadline} and must fire by {latest} (tolerance {} ms), but {} (event {by_id}) was written at {} without it, {} ms after the deadline",
            latest.millis_since(deadline),
            by.kind.name(),
            by.event_time,
            by.event_time.millis_since(deadline)
        );
        self.violations
            .push(Violation::new("timers never fire late", message).at(self.history, Some(by_id)));
    }

    /// The event by which something open must have closed: `closed_by`, or
    /// the run's close if it was still open then.
    fn closed_or_run_closed(&self, closed_by: Option<u64>) -> Option<u64> {
        closed_by.or_else(|| self.history.close_event().map(|e| e.event_id))
    }
}

/// No timer or timeout fires before its deadline or after it plus `tolerance`.
pub fn check_timers(
    history: &History,
    tolerance: &Tolerance,
    (attempts, service_starts): (&BTreeMap<AttemptKey, AttemptSeen>, &ServiceStarts),
) -> Vec<Violation> {
    let mut timing = Timing {
        history,
        tolerance,
        violations: Vec::new(),
    };
    check_user_timers(&mut timing);
    check_workflow_tasks(&mut timing);
    check_execution_timeout(&mut timing);
    check_workflow_task_backoff(&mut timing);
    for view in activities(history) {
        check_schedule_timeouts(&mut timing, &view, (attempts, service_starts));
        check_attempt_timeouts(&mut timing, &view, attempts);
    }
    timing.violations
}

fn check_user_timers(timing: &mut Timing<'_>) {
    let mut closes: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
    for e in timing.history.events() {
        match &e.kind {
            EventKind::TimerFired(a) => closes.insert(a.started_event_id, (e.event_id, true)),
            EventKind::TimerCanceled(a) => closes.insert(a.started_event_id, (e.event_id, false)),
            _ => None,
        };
    }
    for e in timing.history.events() {
        let EventKind::TimerStarted(started) = &e.kind else {
            continue;
        };
        let deadline = e.event_time.plus_ms(started.start_to_fire_timeout_ms);
        let what = format!("timer {:?}", started.timer_id);
        let close = closes.get(&e.event_id).copied();
        if let Some((fired_id, true)) = close {
            timing.early(&what, fired_id, deadline);
        }
        if let Some(by_id) = timing.closed_or_run_closed(close.map(|(id, _)| id)) {
            timing.late(&what, by_id, deadline);
        }
    }
}

fn check_workflow_tasks(timing: &mut Timing<'_>) {
    let mut closes: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
    for e in timing.history.events() {
        match &e.kind {
            EventKind::WorkflowTaskCompleted(a) => {
                closes.insert(a.started_event_id, (e.event_id, false))
            }
            EventKind::WorkflowTaskFailed(a) => {
                closes.insert(a.started_event_id, (e.event_id, false))
            }
            EventKind::WorkflowTaskTimedOut(a) => {
                closes.insert(a.started_event_id, (e.event_id, true))
            }
            _ => None,
        };
    }
    for e in timing.history.events() {
        let EventKind::WorkflowTaskStarted(started) = &e.kind else {
            continue;
        };
        let Some(EventKind::WorkflowTaskScheduled(scheduled)) =
            event(timing.history, started.scheduled_event_id).map(|s| &s.kind)
        else {
            continue;
        };
        let deadline = e.event_time.plus_ms(scheduled.start_to_close_timeout_ms);
        let what = format!(
            "the timeout of the workflow task started at event {}",
            e.event_id
        );
        let close = closes.get(&e.event_id).copied();
        if let Some((timed_out_id, true)) = close {
            timing.early(&what, timed_out_id, deadline);
        }
        if let Some(by_id) = timing.closed_or_run_closed(close.map(|(id, _)| id)) {
            // The task's own close is never buffered.
            let latest = timing.tolerance.latest(deadline);
            let by = event(timing.history, by_id).expect("an event of the history");
            if by.event_time > latest {
                timing.late(&what, by_id, deadline);
            }
        }
    }
}

fn check_execution_timeout(timing: &mut Timing<'_>) {
    let history = timing.history;
    let (Some(timeout_ms), Some(first)) = (
        history.started().and_then(|s| s.execution_timeout_ms),
        history.events().first(),
    ) else {
        return;
    };
    // The execution timeout counts from the end of the start delay.
    let delay_ms = history
        .started()
        .and_then(|s| s.first_workflow_task_backoff_ms)
        .unwrap_or(0);
    let deadline = first.event_time.plus_ms(delay_ms).plus_ms(timeout_ms);
    let Some(close) = history.close_event() else {
        return;
    };
    let what = "the run's execution timeout";
    if matches!(close.kind, EventKind::WorkflowExecutionTimedOut(_)) {
        timing.early(what, close.event_id, deadline);
    }
    if close.event_time > timing.tolerance.latest(deadline) {
        timing.late(what, close.event_id, deadline);
    }
}

/// Longest backoff before a failed workflow task is retried.
pub const WORKFLOW_TASK_BACKOFF_MS_MAX: u64 = 60_000;

/// The backoff after workflow task attempt `attempt` failed in the workflow's
/// code: 1 s, doubling, at most a minute.
pub fn workflow_task_backoff_ms(attempt: u32) -> u64 {
    assert!(attempt >= 1);
    let doublings = (attempt - 1).min(16);
    (1_000u64 << doublings).min(WORKFLOW_TASK_BACKOFF_MS_MAX)
}

/// A workflow task that failed in the workflow's code is scheduled again
/// after its backoff: not before, not later than the tolerance.
fn check_workflow_task_backoff(timing: &mut Timing<'_>) {
    let history = timing.history;
    let mut attempts = BTreeMap::new();
    for e in history.events() {
        if let EventKind::WorkflowTaskScheduled(a) = &e.kind {
            attempts.insert(e.event_id, a.attempt);
        }
    }
    for (index, e) in history.events().iter().enumerate() {
        let EventKind::WorkflowTaskFailed(failed) = &e.kind else {
            continue;
        };
        let code_failed = matches!(
            failed.cause,
            WorkflowTaskFailedCause::WorkflowWorkerUnhandledFailure
                | WorkflowTaskFailedCause::NonDeterministicError
                | WorkflowTaskFailedCause::BadCommand
        );
        let Some(&attempt) = attempts.get(&failed.scheduled_event_id) else {
            continue;
        };
        if !code_failed || attempt == 0 {
            continue;
        }
        let deadline = e.event_time.plus_ms(workflow_task_backoff_ms(attempt));
        let what = format!(
            "the backoff of workflow task attempt {attempt} (failed at event {})",
            e.event_id
        );
        let next = history.events()[index + 1..].iter().find(|n| {
            matches!(n.kind, EventKind::WorkflowTaskScheduled(_)) || n.kind.is_terminal()
        });
        let Some(next) = next else { continue };
        if matches!(next.kind, EventKind::WorkflowTaskScheduled(_)) {
            timing.early(&what, next.event_id, deadline);
        }
        if next.event_time > timing.tolerance.latest(deadline) {
            timing.late(&what, next.event_id, deadline);
        }
    }
}

fn timed_out(view: &ActivityView<'_>) -> Option<TimeoutType> {
    match &view.close?.kind {
        EventKind::ActivityTaskTimedOut(t) => Some(t.timeout_type),
        _ => None,
    }
}

/// Whether an attempt of the activity started by `latest` (an attempt still
/// running when the run closes leaves no `ActivityTaskStarted`): one a
/// worker ran, or one the service started that no worker saw (its task lost
/// on the way, or its start committed by a write that reported a timeout).
fn attempt_started_by(
    timing: &Timing<'_>,
    view: &ActivityView<'_>,
    (attempts, service_starts): (&BTreeMap<AttemptKey, AttemptSeen>, &ServiceStarts),
    latest: Timestamp,
) -> bool {
    let run_id = timing.history.run_id().to_string();
    let scheduled_id = view.scheduled.event_id;
    let range = (run_id.clone(), scheduled_id, 0)..=(run_id, scheduled_id, u32::MAX);
    let seen_by_worker = attempts
        .range(range.clone())
        .any(|(_, seen)| seen.started_time <= latest);
    seen_by_worker
        || service_starts
            .range(range)
            .any(|(_, started)| *started <= latest)
}

fn check_schedule_timeouts(
    timing: &mut Timing<'_>,
    view: &ActivityView<'_>,
    attempts: (&BTreeMap<AttemptKey, AttemptSeen>, &ServiceStarts),
) {
    let scheduled_time = view.scheduled.event_time;
    let close_id = view.close.map(|e| e.event_id);
    let name = &view.attrs.activity_id;
    if let Some(timeout_ms) = view.attrs.schedule_to_close_timeout_ms {
        let deadline = scheduled_time.plus_ms(timeout_ms);
        let what = format!("activity {name:?} schedule-to-close timeout");
        if let (Some(TimeoutType::ScheduleToClose), Some(id)) = (timed_out(view), close_id) {
            timing.early(&what, id, deadline);
        }
        if let Some(by_id) = timing.closed_or_run_closed(close_id) {
            timing.late(&what, by_id, deadline);
        }
    }
    if let Some(timeout_ms) = view.attrs.schedule_to_start_timeout_ms {
        // The first attempt waits from the schedule; later ones from their
        // backoff's end, which is later: the early side holds for all.
        let deadline = scheduled_time.plus_ms(timeout_ms);
        let what = format!("activity {name:?} schedule-to-start timeout");
        if let (Some(TimeoutType::ScheduleToStart), Some(id)) = (timed_out(view), close_id) {
            timing.early(&what, id, deadline);
        }
        if view.started.is_none()
            && !attempt_started_by(timing, view, attempts, timing.tolerance.latest(deadline))
            && let Some(by_id) = timing.closed_or_run_closed(close_id)
        {
            timing.late(&what, by_id, deadline);
        }
    }
}

/// Start-to-close and heartbeat timeouts of the attempts the workers recorded.
fn check_attempt_timeouts(
    timing: &mut Timing<'_>,
    view: &ActivityView<'_>,
    attempts: &BTreeMap<AttemptKey, AttemptSeen>,
) {
    let Some((_, started)) = view.started else {
        return;
    };
    let run_id = timing.history.run_id().to_string();
    let scheduled_id = view.scheduled.event_id;
    let name = &view.attrs.activity_id;
    let start_to_close_ms = view.attrs.start_to_close_timeout_ms;
    let heartbeat_ms = view.attrs.heartbeat_timeout_ms;
    if started.attempt > 1
        && started.last_failure == Some(Failure::timeout(TimeoutType::StartToClose))
        && let (Some(heartbeat_ms), Some(stc_ms)) = (heartbeat_ms, start_to_close_ms)
        && let Some(previous) = attempts.get(&(run_id.clone(), scheduled_id, started.attempt - 1))
        && previous.heartbeats == 0
    {
        let heartbeat_latest = timing
            .tolerance
            .latest(previous.started_time.plus_ms(heartbeat_ms));
        if heartbeat_latest < previous.started_time.plus_ms(stc_ms) {
            let message = format!(
                "activity {name:?} attempt {} ended by its {stc_ms} ms start-to-close timeout, but it sent no heartbeat: its {heartbeat_ms} ms heartbeat timeout should have ended it by {heartbeat_latest}",
                started.attempt - 1
            );
            let at = view.started.map(|(e, _)| e.event_id);
            timing
                .violations
                .push(Violation::new("timers never fire late", message).at(timing.history, at));
        }
    }
    let Some(seen) = attempts.get(&(run_id, scheduled_id, started.attempt)) else {
        return;
    };
    let Some(close) = view.close else { return };
    let attempt_ended_it = match &close.kind {
        EventKind::ActivityTaskCompleted(_) | EventKind::ActivityTaskFailed(_) => true,
        EventKind::ActivityTaskCanceled(c) => !c.identity.is_empty(),
        EventKind::ActivityTaskTimedOut(t) => matches!(
            t.timeout_type,
            TimeoutType::StartToClose | TimeoutType::Heartbeat
        ),
        _ => false,
    };
    let attempt = started.attempt;
    if let Some(stc_ms) = start_to_close_ms {
        let deadline = seen.started_time.plus_ms(stc_ms);
        let what = format!("activity {name:?} attempt {attempt} start-to-close timeout");
        if timed_out(view) == Some(TimeoutType::StartToClose) {
            timing.early(&what, close.event_id, deadline);
        }
        if attempt_ended_it {
            timing.late(&what, close.event_id, deadline);
        }
    }
    if let Some(heartbeat_ms) = heartbeat_ms {
        // Heartbeats only move the deadline later.
        let deadline = seen.started_time.plus_ms(heartbeat_ms);
        let what = format!(
            "activity {name:?} attempt {attempt} heartbeat timeout ({} heartbeats sent)",
            seen.heartbeats
        );
        if timed_out(view) == Some(TimeoutType::Heartbeat) {
            timing.early(&what, close.event_id, deadline);
        }
        if attempt_ended_it && seen.heartbeats == 0 {
            timing.late(&what, close.event_id, deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use retrace::history::{
        ActivityTaskScheduled, ActivityTaskStarted, ActivityTaskTimedOut, HistoryBuilder,
    };
    use retrace::types::RetryState;
    use serde_json::json;

    use super::*;

    fn no_attempts() -> BTreeMap<AttemptKey, AttemptSeen> {
        BTreeMap::new()
    }

    fn invariants(violations: &[Violation]) -> Vec<&'static str> {
        violations.iter().map(|v| v.invariant).collect()
    }

    /// A timer of 1 s that fires `fired_after_ms` after it started, while no
    /// workflow task runs.
    fn timer_history(fired_after_ms: u64) -> History {
        let mut builder = HistoryBuilder::new("sleepy", json!(null));
        builder.add_full_workflow_task();
        let started = builder.add_timer_started("t", 1_000);
        builder.advance_ms(fired_after_ms);
        builder.add_timer_fired("t", started);
        builder.build()
    }

    #[test]
    fn a_timer_firing_within_its_tolerance_passes_and_one_firing_later_is_caught() {
        let on_time = timer_history(1_000 + TOLERANCE_MS_BASE);
        assert!(
            check_timers(
                &on_time,
                &Tolerance::calm(),
                (&no_attempts(), &ServiceStarts::new())
            )
            .is_empty()
        );
        let late = timer_history(1_000 + TOLERANCE_MS_BASE + 1);
        let violations = check_timers(
            &late,
            &Tolerance::calm(),
            (&no_attempts(), &ServiceStarts::new()),
        );
        assert_eq!(invariants(&violations), ["timers never fire late"]);
        let early = timer_history(999);
        let violations = check_timers(
            &early,
            &Tolerance::calm(),
            (&no_attempts(), &ServiceStarts::new()),
        );
        assert_eq!(invariants(&violations), ["timers never fire early"]);
    }

    #[test]
    fn a_timer_buffered_behind_a_workflow_task_started_in_time_is_on_time() {
        let mut builder = HistoryBuilder::new("sleepy", json!(null));
        builder.add_full_workflow_task();
        let started = builder.add_timer_started("t", 1_000);
        builder.add(EventKind::WorkflowExecutionSignaled(
            retrace::history::WorkflowExecutionSignaled {
                signal_name: "poke".into(),
                input: json!(null),
                identity: "client".into(),
            },
        ));
        builder.advance_ms(900);
        builder.add_workflow_task_scheduled();
        builder.add_workflow_task_started();
        // The timer fires while the task runs; its event waits for the close.
        builder.advance_ms(5_000);
        builder.add_workflow_task_completed();
        builder.add_timer_fired("t", started);
        let history = builder.build();
        assert!(
            check_timers(
                &history,
                &Tolerance::calm(),
                (&no_attempts(), &ServiceStarts::new())
            )
            .is_empty()
        );
    }

    #[test]
    fn the_fault_plans_downtime_overlapping_the_wait_widens_the_tolerance() {
        let tolerance = Tolerance {
            windows: vec![(500, 4_500), (10_000, 11_000)],
            ..Tolerance::calm()
        };
        let deadline = Timestamp(1_000);
        // 3.5 s of downtime after the deadline, then the base; the later window
        // starts after that and does not count.
        assert_eq!(
            tolerance.latest(deadline),
            Timestamp(1_000 + 3_500 + TOLERANCE_MS_BASE)
        );
        let clock = ServiceClock {
            now: Timestamp(50_000),
            now_elapsed_ms: 40_000,
            drift_ppm: 0,
        };
        assert_eq!(clock.at(0), 10_000, "the clock's origin");
    }

    /// An activity with a 1 s heartbeat and a 30 s start-to-close timeout
    /// whose only attempt ended at `ended_after_ms` with `timeout_type`.
    fn heartbeat_history(timeout_type: TimeoutType, ended_after_ms: u64) -> History {
        let mut builder = HistoryBuilder::new("beats", json!(null));
        let completed = builder.add_full_workflow_task();
        let scheduled = builder.add(EventKind::ActivityTaskScheduled(ActivityTaskScheduled {
            activity_id: "1".into(),
            activity_type: "slow".into(),
            task_queue: "default".into(),
            input: json!(null),
            schedule_to_close_timeout_ms: None,
            schedule_to_start_timeout_ms: None,
            start_to_close_timeout_ms: Some(30_000),
            heartbeat_timeout_ms: Some(1_000),
            retry_policy: retrace::activity::RetryPolicy::default()
                .normalized()
                .unwrap(),
            workflow_task_completed_event_id: completed,
        }));
        builder.advance_ms(ended_after_ms);
        let started = builder.add(EventKind::ActivityTaskStarted(ActivityTaskStarted {
            scheduled_event_id: scheduled,
            identity: "worker-0".into(),
            attempt: 1,
            last_failure: None,
        }));
        builder.add(EventKind::ActivityTaskTimedOut(ActivityTaskTimedOut {
            scheduled_event_id: scheduled,
            started_event_id: Some(started),
            timeout_type,
            retry_state: RetryState::Timeout,
            last_failure: None,
            last_heartbeat_details: None,
            failure: None,
        }));
        builder.build()
    }

    fn attempt_started_at_schedule(
        history: &History,
        heartbeats: u32,
    ) -> BTreeMap<AttemptKey, AttemptSeen> {
        let scheduled = history.events()[4].clone();
        assert!(matches!(
            scheduled.kind,
            EventKind::ActivityTaskScheduled(_)
        ));
        let seen = AttemptSeen {
            node: "worker-0".into(),
            started_time: scheduled.event_time,
            heartbeats,
            result: None,
        };
        BTreeMap::from([((history.run_id().to_string(), scheduled.event_id, 1), seen)])
    }

    #[test]
    fn an_attempt_that_never_heartbeats_must_end_by_its_heartbeat_timeout_not_start_to_close() {
        let history = heartbeat_history(TimeoutType::StartToClose, 30_000);
        let silent = attempt_started_at_schedule(&history, 0);
        let violations = check_timers(
            &history,
            &Tolerance::calm(),
            (&silent, &ServiceStarts::new()),
        );
        assert_eq!(invariants(&violations), ["timers never fire late"]);
        assert!(
            violations[0].message.contains("heartbeat timeout"),
            "{}",
            violations[0]
        );
        // An attempt that heartbeated may run to its start-to-close timeout.
        let beating = attempt_started_at_schedule(&history, 20);
        assert!(
            check_timers(
                &history,
                &Tolerance::calm(),
                (&beating, &ServiceStarts::new())
            )
            .is_empty()
        );
        // Without the worker's record of the attempt the start is unknown.
        assert!(
            check_timers(
                &history,
                &Tolerance::calm(),
                (&no_attempts(), &ServiceStarts::new())
            )
            .is_empty()
        );
    }

    #[test]
    fn a_heartbeat_timeout_is_bounded_on_both_sides() {
        let on_time = heartbeat_history(TimeoutType::Heartbeat, 1_200);
        let silent = attempt_started_at_schedule(&on_time, 0);
        assert!(
            check_timers(
                &on_time,
                &Tolerance::calm(),
                (&silent, &ServiceStarts::new())
            )
            .is_empty()
        );
        let early = heartbeat_history(TimeoutType::Heartbeat, 400);
        let silent = attempt_started_at_schedule(&early, 0);
        let violations = check_timers(&early, &Tolerance::calm(), (&silent, &ServiceStarts::new()));
        assert_eq!(invariants(&violations), ["timers never fire early"]);
    }

    #[test]
    fn a_start_to_close_timeout_that_fires_late_is_caught() {
        let history = heartbeat_history(TimeoutType::StartToClose, 30_000 + 5_000);
        let beating = attempt_started_at_schedule(&history, 20);
        let violations = check_timers(
            &history,
            &Tolerance::calm(),
            (&beating, &ServiceStarts::new()),
        );
        assert_eq!(invariants(&violations), ["timers never fire late"]);
        assert!(
            violations[0].message.contains("start-to-close"),
            "{}",
            violations[0]
        );
    }

    /// A first workflow task that failed in the code, the next one
    /// scheduled `retried_after_ms` later.
    fn backoff_history(retried_after_ms: u64) -> History {
        let mut builder = HistoryBuilder::new("crashy", json!(null));
        builder.add_workflow_task_scheduled();
        builder.add_workflow_task_started();
        builder.add_workflow_task_failed(
            WorkflowTaskFailedCause::WorkflowWorkerUnhandledFailure,
            Failure::new("Panic", "boom"),
        );
        builder.advance_ms(retried_after_ms);
        builder.add(EventKind::WorkflowTaskScheduled(
            retrace::history::WorkflowTaskScheduled {
                task_queue: "default".into(),
                start_to_close_timeout_ms: 10_000,
                attempt: 2,
            },
        ));
        builder.build()
    }

    #[test]
    fn a_failed_workflow_task_is_retried_after_its_backoff_and_not_much_later() {
        assert_eq!(
            (1..=8).map(workflow_task_backoff_ms).collect::<Vec<_>>(),
            [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
        );
        let kept = backoff_history(1_000);
        assert!(
            check_timers(
                &kept,
                &Tolerance::calm(),
                (&no_attempts(), &ServiceStarts::new())
            )
            .is_empty()
        );
        let hurried = backoff_history(999);
        let violations = check_timers(
            &hurried,
            &Tolerance::calm(),
            (&no_attempts(), &ServiceStarts::new()),
        );
        assert_eq!(invariants(&violations), ["timers never fire early"]);
        let forgotten = backoff_history(1_000 + TOLERANCE_MS_BASE + 1);
        let violations = check_timers(
            &forgotten,
            &Tolerance::calm(),
            (&no_attempts(), &ServiceStarts::new()),
        );
        assert_eq!(invariants(&violations), ["timers never fire late"]);
    }

    #[test]
    fn the_tolerance_of_a_run_counts_the_service_crash_of_its_plan() {
        use crate::faults::{Fault, FaultKind, FaultPlan};
        let plan = FaultPlan {
            faults: vec![Fault {
                at_ms: 1_000,
                kind: FaultKind::CrashService { down_ms: 3_000 },
            }],
        };
        let clock = ServiceClock {
            now: Timestamp(100_000),
            now_elapsed_ms: 100_000,
            drift_ppm: 0,
        };
        let tolerance = Tolerance::of_run(&plan, &Swarm::calm(), clock, 10_000);
        assert_eq!(tolerance.windows, [(1_000, 4_000 + RESTART_MS_MAX)]);
        assert_eq!(
            tolerance.safety_extra_ms, 0,
            "a calm swarm has no background storage faults"
        );
        // Due during the crash: the rest of the downtime and the restart count.
        assert_eq!(
            tolerance.latest(Timestamp(2_000)),
            Timestamp(2_000 + 2_000 + RESTART_MS_MAX + TOLERANCE_MS_BASE)
        );
        // Due after it: the base alone.
        assert_eq!(
            tolerance.latest(Timestamp(20_000)),
            Timestamp(20_000 + TOLERANCE_MS_BASE)
        );
    }

    #[test]
    fn a_run_that_outlives_its_execution_timeout_is_caught() {
        let mut builder = HistoryBuilder::new("long", json!(null));
        builder.add_full_workflow_task();
        builder.advance_ms(5_000);
        builder.add_full_workflow_task();
        builder.add_workflow_execution_completed(json!(1));
        let mut history = builder.build();
        let mut events = history.events().to_vec();
        let EventKind::WorkflowExecutionStarted(started) = &mut events[0].kind else {
            unreachable!("the first event starts the run")
        };
        started.execution_timeout_ms = Some(2_000);
        history = History::from_events(history.workflow_id(), history.run_id(), events).unwrap();
        let violations = check_timers(
            &history,
            &Tolerance::calm(),
            (&no_attempts(), &ServiceStarts::new()),
        );
        assert_eq!(invariants(&violations), ["timers never fire late"]);
        assert!(violations[0].message.contains("execution timeout"));
    }

    /// An activity with a 1 s schedule-to-start timeout, scheduled and left
    /// open until the run is terminated 5 s later.
    fn unstarted_history() -> History {
        let mut builder = HistoryBuilder::new("waits", json!(null));
        let completed = builder.add_full_workflow_task();
        builder.add(EventKind::ActivityTaskScheduled(ActivityTaskScheduled {
            activity_id: "1".into(),
            activity_type: "slow".into(),
            task_queue: "default".into(),
            input: json!(null),
            schedule_to_close_timeout_ms: None,
            schedule_to_start_timeout_ms: Some(1_000),
            start_to_close_timeout_ms: Some(30_000),
            heartbeat_timeout_ms: None,
            retry_policy: retrace::activity::RetryPolicy::default()
                .normalized()
                .unwrap(),
            workflow_task_completed_event_id: completed,
        }));
        builder.advance_ms(5_000);
        builder.add_workflow_execution_terminated("test");
        builder.build()
    }

    #[test]
    fn schedule_to_start_is_late_unless_an_attempt_started_even_one_no_worker_saw() {
        let history = unstarted_history();
        let none = check_timers(
            &history,
            &Tolerance::calm(),
            (&no_attempts(), &ServiceStarts::new()),
        );
        assert_eq!(invariants(&none), ["timers never fire late"]);
        let scheduled = &history.events()[4];
        let key = (history.run_id().to_string(), scheduled.event_id, 1);
        let started = ServiceStarts::from([(key, scheduled.event_time.plus_ms(10))]);
        let lost = check_timers(&history, &Tolerance::calm(), (&no_attempts(), &started));
        assert!(
            lost.is_empty(),
            "the service started it; its task never reached a worker"
        );
    }
}
