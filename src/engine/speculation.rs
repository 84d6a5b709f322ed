//! Speculative workflow tasks: an activity's result and the workflow task it
//! schedules, run by the worker that holds the run and recorded in one write.
//!
//! Without speculation an activity costs two requests and two durable writes:
//! its result (which schedules and eagerly starts a workflow task), then that
//! task's completion. A worker that holds the run at the end of its history
//! knows what the result will append (`ActivityTaskStarted`,
//! `ActivityTaskCompleted`, `WorkflowTaskScheduled`, `WorkflowTaskStarted`),
//! so it appends them itself, runs the code and sends result and commands
//! together. The history is the one the two requests would have written.
//!
//! The service takes the speculation only if the worker saw the history as it
//! is; otherwise it records the result alone, exactly as a plain result:
//!
//! | check                                                        | refused as        |
//! |--------------------------------------------------------------|-------------------|
//! | the worker serves the run's workflow task queue               | `OtherQueue`      |
//! | the result is a completion (failures may retry: no task)      | `NotCompleted`    |
//! | the result fits the payload limit (else the attempt fails)    | `OverLimit`       |
//! | the token names the running attempt                           | `StaleToken`      |
//! | the history has `next_event_id - 1` events (nothing arrived)  | `HistoryMoved`    |
//! | no workflow task is scheduled, started or backing off         | `TaskPending`     |
//! | nothing is buffered and the run is open                       | `TaskPending`     |
//! | attempt start ≤ `started_time` ≤ the service's now            | `ClockSkew`       |
//! | the commands are accepted as a completion would accept them   | `Commands`        |
//! | the commands start no new run (continue-as-new, a retry: the plain task's) | `Commands` |
//!
//! `started_time` is what the code saw as now (`WorkflowTaskStarted`'s time),
//! so the service writes the result and the task's start at that time: the
//! history stays in time order, and a replay sees the same now. A worker whose
//! clock runs ahead of the service's is always refused; it still makes progress
//! through the plain path.

use super::eager::{self, StartedActivity};
use super::machine::{ActivityPhase, Step, activity, workflow_task};
use crate::api::{ActivityTaskResult, ServiceError, SpeculativeWorkflowTask, TaskToken};
use crate::history::{Event, EventKind};
use crate::types::Timestamp;

/// Why a speculative workflow task was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// The worker does not serve the run's workflow task queue.
    OtherQueue,
    /// The result is a failure or cancellation.
    NotCompleted,
    /// The result passes the payload limit: the attempt fails instead.
    OverLimit,
    /// The attempt is not running (the plain path says why).
    StaleToken,
    /// Events were written since the worker's view.
    HistoryMoved { expected: u64, actual: u64 },
    /// A workflow task is pending, events are buffered, or the run closed.
    TaskPending,
    /// The proposed start time is outside `[attempt start, now]`.
    ClockSkew { started_time: Timestamp },
    /// The commands would be rejected (the plain task will say why).
    Commands(String),
}

/// What a taken speculation produced: the activities it started eagerly and
/// the events from its `WorkflowTaskCompleted` on.
pub(super) struct Taken {
    pub eager: Vec<StartedActivity>,
    pub completion_events: Vec<Event>,
}

/// Records the result and the worker's workflow task in `step`, or refuses
/// and leaves `step` untouched. Errors are the result's own (a stale token),
/// as the plain path would return them.
pub(super) fn on_result_with_workflow_task(
    step: &mut Step<'_>,
    token: &TaskToken,
    result: &ActivityTaskResult,
    identity: &str,
    workflow_task_queue: Option<&str>,
    speculation: &SpeculativeWorkflowTask,
    request_id: &str,
) -> Result<Result<Taken, Refused>, ServiceError> {
    assert!(
        step.events.is_empty(),
        "speculation is the first thing a step does"
    );
    if workflow_task_queue != Some(step.state.task_queue.as_str()) {
        return Ok(Err(Refused::OtherQueue));
    }
    if let Err(refused) = check(step, token, result, speculation) {
        return Ok(Err(refused));
    }
    let before = step.state.clone();
    let now = step.now;
    step.now = speculation.started_time;
    activity::on_result(step, token, result.clone(), identity)?;
    let started = eager::start_workflow_task(step, None, identity, request_id)
        .expect("a completed activity schedules a workflow task on an idle run");
    let task_token = started.token().clone();
    assert_eq!(task_token.started_event_id, speculation.next_event_id + 3);
    step.now = now;
    let completed_index = step.events.len();
    let commands = &speculation.commands;
    if let Err(rejection) = workflow_task::on_completed(step, &task_token, commands, identity) {
        *step.state = before;
        step.events.clear();
        return Ok(Err(Refused::Commands(rejection.message)));
    }
    let eager = eager::start_new_activities(step, speculation.eager_activities_max, identity);
    let completion_events = step.events[completed_index..].to_vec();
    assert!(matches!(
        completion_events.first().map(|e| &e.kind),
        Some(EventKind::WorkflowTaskCompleted(_))
    ));
    Ok(Ok(Taken {
        eager,
        completion_events,
    }))
}

/// The checks of the table above, before anything changes.
fn check(
    step: &Step<'_>,
    token: &TaskToken,
    result: &ActivityTaskResult,
    speculation: &SpeculativeWorkflowTask,
) -> Result<(), Refused> {
    let state = &*step.state;
    if state.may_start_next_run(&speculation.commands) {
        return Err(Refused::Commands(
            "a new run (continue-as-new, a retry) is left to the plain workflow task".to_string(),
        ));
    }
    let ActivityTaskResult::Completed(value) = result else {
        return Err(Refused::NotCompleted);
    };
    if step.check_payload("activity result", value).is_err() {
        return Err(Refused::OverLimit);
    }
    if state.next_event_id != speculation.next_event_id {
        return Err(Refused::HistoryMoved {
            expected: speculation.next_event_id,
            actual: state.next_event_id,
        });
    }
    let idle = matches!(state.workflow_task, workflow_task::WorkflowTaskState::None);
    if !idle || !state.buffered.is_empty() || state.status.is_closed() {
        return Err(Refused::TaskPending);
    }
    let attempt_started = match state.activities.get(&token.scheduled_event_id) {
        Some(a) if a.attempt == token.attempt => match a.phase {
            ActivityPhase::Started { started_time, .. } => Some(started_time),
            _ => None,
        },
        _ => None,
    };
    let Some(attempt_started) = attempt_started else {
        return Err(Refused::StaleToken);
    };
    let started_time = speculation.started_time;
    if started_time < attempt_started || started_time > step.now {
        return Err(Refused::ClockSkew { started_time });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::StartWorkflowRequest;
    use crate::engine::machine::{Limits, RunState, run};
    use crate::workflow::{Command, ScheduleActivityTask};

    const LIMITS: Limits = Limits {
        payload_bytes_max: 1 << 20,
        buffered_payload_bytes_max: 4 << 20,
    };

    fn schedule(activity_id: &str) -> Command {
        Command::ScheduleActivityTask(ScheduleActivityTask {
            activity_id: activity_id.to_string(),
            activity_type: "echo".to_string(),
            task_queue: None,
            input: json!(activity_id),
            schedule_to_close_timeout_ms: None,
            schedule_to_start_timeout_ms: None,
            start_to_close_timeout_ms: Some(10_000),
            heartbeat_timeout_ms: None,
            retry_policy: None,
        })
    }

    /// A run whose first workflow task scheduled activity "1", started at
    /// t = 1,000 ms: the history has 5 events, the next is event 6.
    fn run_with_started_activity() -> (RunState, TaskToken) {
        let request = StartWorkflowRequest {
            workflow_id: "w".into(),
            workflow_type: "Flow".into(),
            task_queue: "q".into(),
            input: json!(null),
            execution_timeout_ms: None,
            workflow_task_timeout_ms: None,
            id_reuse_policy: Default::default(),
            request_id: "r".into(),
            identity: "client".into(),
            start_delay_ms: None,
            retry_policy: None,
            cron_schedule: None,
            search_attributes: Default::default(),
            memo: Default::default(),
        };
        let (mut state, _) = run::start(&request, "run", Timestamp(1_000), LIMITS).expect("valid");
        let mut step = Step::new(&mut state, Timestamp(1_000), LIMITS);
        let task =
            eager::start_workflow_task(&mut step, None, "worker", "wt-1").expect("scheduled");
        let token = task.token().clone();
        workflow_task::on_completed(&mut step, &token, &[schedule("1")], "worker").expect("valid");
        let started = eager::start_new_activities(&mut step, 1, "worker");
        assert_eq!(started.len(), 1);
        let activity_token = TaskToken {
            workflow_id: step.state.workflow_id.clone(),
            run_id: "run".into(),
            scheduled_event_id: 5,
            attempt: 1,
            started_event_id: 0,
        };
        assert_eq!(step.state.next_event_id, 6);
        (state, activity_token)
    }

    fn speculation(started_time: u64, commands: Vec<Command>) -> SpeculativeWorkflowTask {
        SpeculativeWorkflowTask {
            next_event_id: 6,
            started_time: Timestamp(started_time),
            commands,
            eager_activities_max: 1,
        }
    }

    fn completed() -> ActivityTaskResult {
        ActivityTaskResult::Completed(json!("done"))
    }

    fn speculate(
        state: &mut RunState,
        token: &TaskToken,
        result: &ActivityTaskResult,
        speculation: &SpeculativeWorkflowTask,
    ) -> (Result<Taken, Refused>, Vec<Event>) {
        let mut step = Step::new(state, Timestamp(2_000), LIMITS);
        let taken = on_result_with_workflow_task(
            &mut step,
            token,
            result,
            "worker",
            Some("q"),
            speculation,
            "wt-2",
        )
        .expect("the token is valid");
        (taken, step.events)
    }

    #[test]
    fn taken_speculation_writes_the_history_of_a_result_and_a_completion() {
        let (mut plain, token) = run_with_started_activity();
        let mut speculated = plain.clone();
        // The plain path: the result at 1,500 ms with the task started for the
        // worker, then the completion at 2,000 ms.
        let mut step = Step::new(&mut plain, Timestamp(1_500), LIMITS);
        activity::on_result(&mut step, &token, completed(), "worker").expect("valid");
        let task = eager::start_workflow_task(&mut step, None, "worker", "wt-2").expect("idle");
        step.now = Timestamp(2_000);
        let task_token = task.token().clone();
        workflow_task::on_completed(&mut step, &task_token, &[schedule("2")], "worker")
            .expect("valid");
        eager::start_new_activities(&mut step, 1, "worker");
        let plain_events = step.events;

        let spec = speculation(1_500, vec![schedule("2")]);
        let (taken, events) = speculate(&mut speculated, &token, &completed(), &spec);
        let taken = taken.expect("the history is where the worker saw it");
        assert_eq!(events, plain_events);
        assert_eq!(speculated, plain);
        assert_eq!(taken.eager.len(), 1, "activity 2 started for the worker");
        let kinds: Vec<&str> = taken
            .completion_events
            .iter()
            .map(|e| e.kind.name())
            .collect();
        assert_eq!(kinds, ["WorkflowTaskCompleted", "ActivityTaskScheduled"]);
        assert_eq!(
            events[3].event_time,
            Timestamp(1_500),
            "the started time the code saw"
        );
    }

    fn assert_refused(spec: &SpeculativeWorkflowTask, result: ActivityTaskResult, why: Refused) {
        let (mut state, token) = run_with_started_activity();
        let before = state.clone();
        let (taken, events) = speculate(&mut state, &token, &result, spec);
        assert_eq!(taken.err(), Some(why));
        assert!(events.is_empty(), "a refusal writes nothing");
        assert_eq!(state, before, "a refusal changes nothing");
    }

    #[test]
    fn speculation_is_refused_when_the_history_moved_on() {
        let mut spec = speculation(1_500, vec![]);
        spec.next_event_id = 5;
        let why = Refused::HistoryMoved {
            expected: 5,
            actual: 6,
        };
        assert_refused(&spec, completed(), why);
    }

    #[test]
    fn speculation_is_refused_when_the_clocks_disagree() {
        for started_time in [999, 2_001] {
            let why = Refused::ClockSkew {
                started_time: Timestamp(started_time),
            };
            assert_refused(&speculation(started_time, vec![]), completed(), why);
        }
    }

    #[test]
    fn speculation_is_refused_for_a_failed_attempt() {
        let failed = ActivityTaskResult::Failed(crate::types::Failure::new("E", "boom"));
        assert_refused(&speculation(1_500, vec![]), failed, Refused::NotCompleted);
    }

    #[test]
    fn speculation_is_refused_for_a_result_over_the_payload_limit() {
        let bytes = LIMITS.payload_bytes_max as usize;
        let over = ActivityTaskResult::Completed(json!("x".repeat(bytes)));
        assert_refused(&speculation(1_500, vec![]), over, Refused::OverLimit);
    }

    #[test]
    fn speculation_is_refused_when_the_commands_would_be() {
        // Activity id "1" is still open in the history when the task completes.
        let spec = speculation(1_500, vec![schedule("1"), schedule("1")]);
        let (mut state, token) = run_with_started_activity();
        let before = state.clone();
        let (taken, events) = speculate(&mut state, &token, &completed(), &spec);
        assert!(matches!(taken, Err(Refused::Commands(_))));
        assert!(events.is_empty());
        assert_eq!(state, before);
    }

    #[test]
    fn speculation_is_refused_while_a_signal_waits_for_its_task() {
        let (mut state, token) = run_with_started_activity();
        let mut step = Step::new(&mut state, Timestamp(1_200), LIMITS);
        run::on_signal(&mut step, "go", json!(1), "client", "s-1").expect("valid");
        let next_event_id = state.next_event_id;
        let mut spec = speculation(1_500, vec![]);
        spec.next_event_id = next_event_id;
        let before = state.clone();
        let (taken, events) = speculate(&mut state, &token, &completed(), &spec);
        assert_eq!(taken.err(), Some(Refused::TaskPending));
        assert!(events.is_empty());
        assert_eq!(state, before);
    }
}
