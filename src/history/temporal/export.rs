//! Retrace events to Temporal's, one function per event group. What Temporal
//! has no field for (the start's request id, a terminated child's reason) is
//! left out; everything else comes back unchanged through the importer.

use serde_json::{Value, json};

use super::import::{CORE_LOCAL_ACTIVITY_MARKER, CORE_PATCH_MARKER, GO_SIDE_EFFECT_MARKER};
use super::wire::{duration, failure, payloads, retry_policy, task_queue};
use crate::history::event::*;
use crate::types::{IdReusePolicy, ParentClosePolicy, RetryState, TimeoutType};
use crate::workflow::{
    LEGACY_PATCH_MARKER_NAME, LOCAL_ACTIVITY_MARKER_NAME, LocalActivityOutcome, PATCH_MARKER_NAME,
    SIDE_EFFECT_MARKER_NAME,
};

fn id(event_id: u64) -> Value {
    json!(event_id.to_string())
}

fn name(name: &str) -> Value {
    json!({ "name": name })
}

fn execution(workflow_id: &str, run_id: Option<&str>) -> Value {
    match run_id {
        Some(run_id) => json!({ "workflowId": workflow_id, "runId": run_id }),
        None => json!({ "workflowId": workflow_id }),
    }
}

/// Sets `key` to `value` when there is one.
fn put(object: &mut Value, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        object[key] = value;
    }
}

pub(super) fn timeout_type(timeout: TimeoutType) -> &'static str {
    match timeout {
        TimeoutType::StartToClose => "TIMEOUT_TYPE_START_TO_CLOSE",
        TimeoutType::ScheduleToStart => "TIMEOUT_TYPE_SCHEDULE_TO_START",
        TimeoutType::ScheduleToClose => "TIMEOUT_TYPE_SCHEDULE_TO_CLOSE",
        TimeoutType::Heartbeat => "TIMEOUT_TYPE_HEARTBEAT",
    }
}

pub(super) fn retry_state(state: RetryState) -> &'static str {
    match state {
        RetryState::NonRetryableFailure => "RETRY_STATE_NON_RETRYABLE_FAILURE",
        RetryState::Timeout => "RETRY_STATE_TIMEOUT",
        RetryState::MaximumAttemptsReached => "RETRY_STATE_MAXIMUM_ATTEMPTS_REACHED",
        RetryState::CancelRequested => "RETRY_STATE_CANCEL_REQUESTED",
        RetryState::RetryPolicyNotSet => "RETRY_STATE_RETRY_POLICY_NOT_SET",
        RetryState::InProgress => "RETRY_STATE_IN_PROGRESS",
    }
}

fn workflow_task_cause(cause: WorkflowTaskFailedCause) -> &'static str {
    use WorkflowTaskFailedCause::*;
    match cause {
        WorkflowWorkerUnhandledFailure => {
            "WORKFLOW_TASK_FAILED_CAUSE_WORKFLOW_WORKER_UNHANDLED_FAILURE"
        }
        NonDeterministicError => "WORKFLOW_TASK_FAILED_CAUSE_NON_DETERMINISTIC_ERROR",
        // Temporal names the command; Retrace's cause does not say which.
        BadCommand => "WORKFLOW_TASK_FAILED_CAUSE_BAD_SCHEDULE_ACTIVITY_ATTRIBUTES",
        // Temporal's cause when a worker gives a task back.
        WorkerShutdown => "WORKFLOW_TASK_FAILED_CAUSE_RESET_STICKY_TASK_QUEUE",
        UnhandledCommand => "WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND",
        ForceCloseCommand => "WORKFLOW_TASK_FAILED_CAUSE_FORCE_CLOSE_COMMAND",
    }
}

/// The attributes of one event, in Temporal's form.
pub(super) fn attributes(kind: &EventKind) -> Value {
    use EventKind::*;
    match kind {
        WorkflowExecutionStarted(a) => started(a),
        WorkflowTaskScheduled(_)
        | WorkflowTaskStarted(_)
        | WorkflowTaskCompleted(_)
        | WorkflowTaskTimedOut(_)
        | WorkflowTaskFailed(_) => workflow_task(kind),
        ActivityTaskScheduled(a) => activity_scheduled(a),
        ActivityTaskStarted(_)
        | ActivityTaskCompleted(_)
        | ActivityTaskFailed(_)
        | ActivityTaskTimedOut(_)
        | ActivityTaskCancelRequested(_)
        | ActivityTaskCanceled(_) => activity(kind),
        TimerStarted(_) | TimerFired(_) | TimerCanceled(_) => timer(kind),
        MarkerRecorded(a) => marker(a),
        SignalExternalWorkflowExecutionInitiated(_)
        | ExternalWorkflowExecutionSignaled(_)
        | SignalExternalWorkflowExecutionFailed(_)
        | RequestCancelExternalWorkflowExecutionInitiated(_)
        | ExternalWorkflowExecutionCancelRequested(_)
        | RequestCancelExternalWorkflowExecutionFailed(_) => external(kind),
        StartChildWorkflowExecutionInitiated(a) => child_initiated(a),
        StartChildWorkflowExecutionFailed(_)
        | ChildWorkflowExecutionStarted(_)
        | ChildWorkflowExecutionCompleted(_)
        | ChildWorkflowExecutionFailed(_)
        | ChildWorkflowExecutionCanceled(_)
        | ChildWorkflowExecutionTimedOut(_)
        | ChildWorkflowExecutionTerminated(_) => child(kind),
        WorkflowExecutionUpdateAccepted(_) | WorkflowExecutionUpdateCompleted(_) => update(kind),
        UpsertWorkflowSearchAttributes(a) => json!({
            "searchAttributes": super::visibility::search_attributes(&a.search_attributes),
            "workflowTaskCompletedEventId": id(a.workflow_task_completed_event_id),
        }),
        WorkflowPropertiesModified(a) => json!({
            "upsertedMemo": super::visibility::memo(&a.upserted_memo),
            "workflowTaskCompletedEventId": id(a.workflow_task_completed_event_id),
        }),
        _ => run(kind),
    }
}

/// An update's events in Temporal's layout: the accepted request nested as
/// its protocol message, the outcome as `success` or `failure`.
fn update(kind: &EventKind) -> Value {
    match kind {
        EventKind::WorkflowExecutionUpdateAccepted(a) => json!({
            "protocolInstanceId": a.update_id,
            "acceptedRequestMessageId": format!("{}/request", a.update_id),
            // The task's WorkflowTaskStarted: what the request was sequenced after.
            "acceptedRequestSequencingEventId": id(a.workflow_task_completed_event_id - 1),
            "acceptedRequest": {
                "meta": { "updateId": a.update_id, "identity": a.identity },
                "input": { "name": a.update_name, "args": payloads(&a.input) },
            },
        }),
        EventKind::WorkflowExecutionUpdateCompleted(a) => {
            let outcome = match &a.outcome {
                UpdateOutcome::Success(result) => json!({ "success": payloads(result) }),
                UpdateOutcome::Failure(f) => json!({ "failure": failure(f) }),
            };
            json!({
                "meta": { "updateId": a.update_id },
                "acceptedEventId": id(a.accepted_event_id),
                "outcome": outcome,
            })
        }
        _ => unreachable!("only update events are passed"),
    }
}

/// The start event; `run_id` goes to `originalExecutionRunId` and
/// `firstExecutionRunId`, where the importer finds it.
pub(super) fn started_with_run(a: &WorkflowExecutionStarted, run_id: &str) -> Value {
    let mut value = started(a);
    value["originalExecutionRunId"] = json!(run_id);
    value["firstExecutionRunId"] = json!(run_id);
    value
}

fn started(a: &WorkflowExecutionStarted) -> Value {
    let mut value = json!({
        "workflowType": name(&a.workflow_type),
        "workflowId": a.workflow_id,
        "taskQueue": task_queue(&a.task_queue),
        "input": payloads(&a.input),
        "workflowTaskTimeout": duration(a.workflow_task_timeout_ms),
        "attempt": a.attempt,
        "identity": a.identity,
    });
    let attributes = &a.search_attributes;
    let search_attributes = super::visibility::search_attributes(attributes);
    put(
        &mut value,
        "searchAttributes",
        (!attributes.is_empty()).then_some(search_attributes),
    );
    let memo = (!a.memo.is_empty()).then(|| super::visibility::memo(&a.memo));
    put(&mut value, "memo", memo);
    put(
        &mut value,
        "workflowExecutionTimeout",
        a.execution_timeout_ms.map(duration),
    );
    put(
        &mut value,
        "continuedExecutionRunId",
        a.continued_execution_run_id.as_ref().map(|r| json!(r)),
    );
    put(
        &mut value,
        "firstWorkflowTaskBackoff",
        a.first_workflow_task_backoff_ms.map(duration),
    );
    put(
        &mut value,
        "retryPolicy",
        a.retry_policy.as_deref().map(retry_policy),
    );
    put(
        &mut value,
        "initiator",
        a.initiator.map(|initiator| match initiator {
            ContinueAsNewInitiator::Workflow => json!("CONTINUE_AS_NEW_INITIATOR_WORKFLOW"),
            ContinueAsNewInitiator::Retry => json!("CONTINUE_AS_NEW_INITIATOR_RETRY"),
            ContinueAsNewInitiator::CronSchedule => {
                json!("CONTINUE_AS_NEW_INITIATOR_CRON_SCHEDULE")
            }
        }),
    );
    put(
        &mut value,
        "continuedFailure",
        a.continued_failure.as_deref().map(failure),
    );
    put(
        &mut value,
        "cronSchedule",
        a.cron_schedule.as_ref().map(|s| json!(s)),
    );
    put(
        &mut value,
        "lastCompletionResult",
        a.last_completion_result.as_ref().map(payloads),
    );
    if let Some(parent) = &a.parent {
        value["parentWorkflowExecution"] = execution(&parent.workflow_id, Some(&parent.run_id));
        value["parentInitiatedEventId"] = id(parent.initiated_event_id);
    }
    value
}

fn workflow_task(kind: &EventKind) -> Value {
    match kind {
        EventKind::WorkflowTaskScheduled(a) => json!({
            "taskQueue": task_queue(&a.task_queue),
            "startToCloseTimeout": duration(a.start_to_close_timeout_ms),
            "attempt": a.attempt,
        }),
        EventKind::WorkflowTaskStarted(a) => json!({
            "scheduledEventId": id(a.scheduled_event_id),
            "identity": a.identity,
            "requestId": a.request_id,
        }),
        EventKind::WorkflowTaskCompleted(a) => json!({
            "scheduledEventId": id(a.scheduled_event_id),
            "startedEventId": id(a.started_event_id),
            "identity": a.identity,
        }),
        EventKind::WorkflowTaskTimedOut(a) => json!({
            "scheduledEventId": id(a.scheduled_event_id),
            "startedEventId": id(a.started_event_id),
            "timeoutType": timeout_type(a.timeout_type),
        }),
        EventKind::WorkflowTaskFailed(a) => json!({
            "scheduledEventId": id(a.scheduled_event_id),
            "startedEventId": id(a.started_event_id),
            "cause": workflow_task_cause(a.cause),
            "failure": failure(&a.failure),
            "identity": a.identity,
        }),
        _ => unreachable!("only workflow task events are passed"),
    }
}

fn activity_scheduled(a: &ActivityTaskScheduled) -> Value {
    let mut value = json!({
        "activityId": a.activity_id,
        "activityType": name(&a.activity_type),
        "taskQueue": task_queue(&a.task_queue),
        "input": payloads(&a.input),
        "workflowTaskCompletedEventId": id(a.workflow_task_completed_event_id),
        "retryPolicy": retry_policy(&a.retry_policy),
    });
    put(
        &mut value,
        "scheduleToCloseTimeout",
        a.schedule_to_close_timeout_ms.map(duration),
    );
    put(
        &mut value,
        "scheduleToStartTimeout",
        a.schedule_to_start_timeout_ms.map(duration),
    );
    put(
        &mut value,
        "startToCloseTimeout",
        a.start_to_close_timeout_ms.map(duration),
    );
    put(
        &mut value,
        "heartbeatTimeout",
        a.heartbeat_timeout_ms.map(duration),
    );
    value
}

fn activity(kind: &EventKind) -> Value {
    match kind {
        EventKind::ActivityTaskStarted(a) => {
            let mut value = json!({
                "scheduledEventId": id(a.scheduled_event_id),
                "identity": a.identity,
                "attempt": a.attempt,
            });
            put(
                &mut value,
                "lastFailure",
                a.last_failure.as_ref().map(failure),
            );
            value
        }
        EventKind::ActivityTaskCompleted(a) => json!({
            "result": payloads(&a.result),
            "scheduledEventId": id(a.scheduled_event_id),
            "startedEventId": id(a.started_event_id),
            "identity": a.identity,
        }),
        EventKind::ActivityTaskFailed(a) => json!({
            "failure": failure(&a.failure),
            "scheduledEventId": id(a.scheduled_event_id),
            "startedEventId": id(a.started_event_id),
            "identity": a.identity,
            "retryState": retry_state(a.retry_state),
        }),
        EventKind::ActivityTaskTimedOut(a) => activity_timed_out(a),
        EventKind::ActivityTaskCancelRequested(a) => json!({
            "scheduledEventId": id(a.scheduled_event_id),
            "workflowTaskCompletedEventId": id(a.workflow_task_completed_event_id),
        }),
        EventKind::ActivityTaskCanceled(a) => {
            let mut value = json!({
                "latestCancelRequestedEventId": id(a.latest_cancel_requested_event_id),
                "scheduledEventId": id(a.scheduled_event_id),
                "identity": a.identity,
            });
            put(&mut value, "startedEventId", a.started_event_id.map(id));
            put(&mut value, "details", a.details.as_ref().map(payloads));
            value
        }
        _ => unreachable!("only activity events are passed"),
    }
}

fn activity_timed_out(a: &ActivityTaskTimedOut) -> Value {
    let mut info = json!({ "timeoutType": timeout_type(a.timeout_type) });
    put(
        &mut info,
        "lastHeartbeatDetails",
        a.last_heartbeat_details.as_ref().map(payloads),
    );
    // Temporal's failure is the timeout caused by the last attempt's failure.
    let fallback = || {
        let message = format!("activity {} timeout", a.timeout_type);
        crate::types::Failure::timed_out(a.timeout_type, message)
    };
    let timeout = a.failure.clone().unwrap_or_else(fallback);
    let mut timeout = failure(&timeout.with_cause(a.last_failure.clone()));
    timeout["timeoutFailureInfo"] = info;
    let mut value = json!({
        "failure": timeout,
        "scheduledEventId": id(a.scheduled_event_id),
        "retryState": retry_state(a.retry_state),
    });
    put(&mut value, "startedEventId", a.started_event_id.map(id));
    value
}

fn timer(kind: &EventKind) -> Value {
    match kind {
        EventKind::TimerStarted(a) => json!({
            "timerId": a.timer_id,
            "startToFireTimeout": duration(a.start_to_fire_timeout_ms),
            "workflowTaskCompletedEventId": id(a.workflow_task_completed_event_id),
        }),
        EventKind::TimerFired(a) => json!({
            "timerId": a.timer_id,
            "startedEventId": id(a.started_event_id),
        }),
        EventKind::TimerCanceled(a) => json!({
            "timerId": a.timer_id,
            "startedEventId": id(a.started_event_id),
            "workflowTaskCompletedEventId": id(a.workflow_task_completed_event_id),
        }),
        _ => unreachable!("only timer events are passed"),
    }
}

/// Side effects as the Go SDK records them (`side-effect-id`, `data`);
/// patches as the core-based SDKs do (`core_patch`: `patch_id`, `deprecated`).
fn marker(a: &MarkerRecorded) -> Value {
    let field = |key: &str| a.details.get(key).cloned().unwrap_or(Value::Null);
    let (marker_name, details) = if a.marker_name == SIDE_EFFECT_MARKER_NAME {
        let details = json!({
            "side-effect-id": payloads(&field("seq")),
            "data": payloads(&field("value")),
        });
        (GO_SIDE_EFFECT_MARKER, details)
    } else if a.marker_name == PATCH_MARKER_NAME || a.marker_name == LEGACY_PATCH_MARKER_NAME {
        // Retrace's patch marker is Temporal's; an older history's names the
        // patch `id`.
        let id = match a.marker_name == PATCH_MARKER_NAME {
            true => field("patch_id"),
            false => field("id"),
        };
        let details = json!({
            "patch_id": payloads(&id),
            "deprecated": payloads(&field("deprecated")),
        });
        (CORE_PATCH_MARKER, details)
    } else if let Some(exported) = local_activity_marker(a) {
        return exported;
    } else {
        // No SDK of Retrace's records other markers; kept whole, not read back.
        (
            a.marker_name.as_str(),
            json!({ "data": payloads(&a.details) }),
        )
    };
    json!({
        "markerName": marker_name,
        "details": details,
        "workflowTaskCompletedEventId": id(a.workflow_task_completed_event_id),
    })
}

/// A local activity's marker as the Core-based SDKs write it: `data` with
/// its sequence number, attempt and type, `result` or the event's `failure`.
/// `None` for another marker, or one whose details do not decode (it is
/// then kept whole, as unknown markers are).
fn local_activity_marker(a: &MarkerRecorded) -> Option<Value> {
    if a.marker_name != LOCAL_ACTIVITY_MARKER_NAME {
        return None;
    }
    let outcome = LocalActivityOutcome::from_details(&a.details).ok()?;
    let data = json!({
        "seq": outcome.seq,
        "attempt": outcome.attempt,
        "activity_id": outcome.seq.to_string(),
        "activity_type": outcome.activity_type,
        "backoff_ms": outcome.backoff_ms,
        "retry_state": outcome.retry_state,
    });
    let mut details = json!({ "data": payloads(&data) });
    if let Some(result) = &outcome.result {
        details["result"] = payloads(result);
    }
    let mut value = json!({
        "markerName": CORE_LOCAL_ACTIVITY_MARKER,
        "details": details,
        "workflowTaskCompletedEventId": id(a.workflow_task_completed_event_id),
    });
    if let Some(failed) = &outcome.failure {
        value["failure"] = failure(failed);
    }
    Some(value)
}

fn run(kind: &EventKind) -> Value {
    match kind {
        EventKind::WorkflowExecutionSignaled(a) => json!({
            "signalName": a.signal_name,
            "input": payloads(&a.input),
            "identity": a.identity,
        }),
        EventKind::WorkflowExecutionCancelRequested(a) => json!({
            "cause": a.cause,
            "identity": a.identity,
        }),
        EventKind::WorkflowExecutionCompleted(a) => {
            let mut value = json!({
                "result": payloads(&a.result),
                "workflowTaskCompletedEventId": id(a.workflow_task_completed_event_id),
            });
            put(
                &mut value,
                "newExecutionRunId",
                a.new_execution_run_id.as_ref().map(|r| json!(r)),
            );
            value
        }
        EventKind::WorkflowExecutionFailed(a) => {
            let mut value = json!({
                "failure": failure(&a.failure),
                "retryState": retry_state(a.retry_state.unwrap_or(RetryState::RetryPolicyNotSet)),
                "workflowTaskCompletedEventId": id(a.workflow_task_completed_event_id),
            });
            put(
                &mut value,
                "newExecutionRunId",
                a.new_execution_run_id.as_ref().map(|r| json!(r)),
            );
            value
        }
        EventKind::WorkflowExecutionTimedOut(a) => {
            json!({ "retryState": retry_state(a.retry_state) })
        }
        EventKind::WorkflowExecutionCanceled(a) => {
            let mut value = json!({
                "workflowTaskCompletedEventId": id(a.workflow_task_completed_event_id),
            });
            put(&mut value, "details", a.details.as_ref().map(payloads));
            value
        }
        EventKind::WorkflowExecutionTerminated(a) => {
            let mut value = json!({ "reason": a.reason, "identity": a.identity });
            put(&mut value, "details", a.details.as_ref().map(payloads));
            value
        }
        EventKind::WorkflowExecutionContinuedAsNew(a) => continued_as_new(a),
        _ => unreachable!("only run events are passed"),
    }
}

fn continued_as_new(a: &WorkflowExecutionContinuedAsNew) -> Value {
    let mut value = json!({
        "newExecutionRunId": a.new_execution_run_id,
        "workflowType": name(&a.workflow_type),
        "taskQueue": task_queue(&a.task_queue),
        "input": payloads(&a.input),
        "workflowTaskTimeout": duration(a.workflow_task_timeout_ms),
        "workflowTaskCompletedEventId": id(a.workflow_task_completed_event_id),
        "initiator": "CONTINUE_AS_NEW_INITIATOR_WORKFLOW",
    });
    // What is left of the execution timeout, in the run timeout's place.
    put(
        &mut value,
        "workflowRunTimeout",
        a.execution_timeout_ms.map(duration),
    );
    value
}

const SIGNAL_NOT_FOUND: &str =
    "SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_FAILED_CAUSE_EXTERNAL_WORKFLOW_EXECUTION_NOT_FOUND";
const CANCEL_NOT_FOUND: &str =
    "CANCEL_EXTERNAL_WORKFLOW_EXECUTION_FAILED_CAUSE_EXTERNAL_WORKFLOW_EXECUTION_NOT_FOUND";

fn external(kind: &EventKind) -> Value {
    match kind {
        EventKind::SignalExternalWorkflowExecutionInitiated(a) => json!({
            "workflowExecution": execution(&a.workflow_id, a.run_id.as_deref()),
            "signalName": a.signal_name,
            "input": payloads(&a.input),
            "control": a.control,
            "workflowTaskCompletedEventId": id(a.workflow_task_completed_event_id),
        }),
        EventKind::ExternalWorkflowExecutionSignaled(a) => json!({
            "initiatedEventId": id(a.initiated_event_id),
            "workflowExecution": execution(&a.workflow_id, Some(&a.run_id)),
            "control": a.control,
        }),
        EventKind::SignalExternalWorkflowExecutionFailed(a) => json!({
            "cause": SIGNAL_NOT_FOUND,
            "initiatedEventId": id(a.initiated_event_id),
            "workflowExecution": execution(&a.workflow_id, a.run_id.as_deref()),
            "control": a.control,
        }),
        EventKind::RequestCancelExternalWorkflowExecutionInitiated(a) => json!({
            "workflowExecution": execution(&a.workflow_id, a.run_id.as_deref()),
            "control": a.control,
            "workflowTaskCompletedEventId": id(a.workflow_task_completed_event_id),
        }),
        EventKind::ExternalWorkflowExecutionCancelRequested(a) => json!({
            "initiatedEventId": id(a.initiated_event_id),
            "workflowExecution": execution(&a.workflow_id, Some(&a.run_id)),
        }),
        EventKind::RequestCancelExternalWorkflowExecutionFailed(a) => json!({
            "cause": CANCEL_NOT_FOUND,
            "initiatedEventId": id(a.initiated_event_id),
            "workflowExecution": execution(&a.workflow_id, a.run_id.as_deref()),
            "control": a.control,
        }),
        _ => unreachable!("only external events are passed"),
    }
}

fn child_initiated(a: &StartChildWorkflowExecutionInitiated) -> Value {
    let parent_close = match a.parent_close_policy {
        ParentClosePolicy::Terminate => "PARENT_CLOSE_POLICY_TERMINATE",
        ParentClosePolicy::RequestCancel => "PARENT_CLOSE_POLICY_REQUEST_CANCEL",
        ParentClosePolicy::Abandon => "PARENT_CLOSE_POLICY_ABANDON",
    };
    let reuse = match a.workflow_id_reuse_policy {
        IdReusePolicy::AllowDuplicate => "WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE",
        IdReusePolicy::AllowDuplicateFailedOnly => {
            "WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE_FAILED_ONLY"
        }
        IdReusePolicy::RejectDuplicate => "WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE",
    };
    let mut value = json!({
        "workflowId": a.workflow_id,
        "workflowType": name(&a.workflow_type),
        "taskQueue": task_queue(&a.task_queue),
        "input": payloads(&a.input),
        "parentClosePolicy": parent_close,
        "workflowIdReusePolicy": reuse,
        "control": a.control,
        "workflowTaskCompletedEventId": id(a.workflow_task_completed_event_id),
    });
    put(
        &mut value,
        "workflowExecutionTimeout",
        a.execution_timeout_ms.map(duration),
    );
    put(
        &mut value,
        "workflowTaskTimeout",
        a.workflow_task_timeout_ms.map(duration),
    );
    value
}

/// The fields every child outcome event has.
fn child_closed(initiated: u64, started: u64, workflow_id: &str, run_id: &str) -> Value {
    json!({
        "initiatedEventId": id(initiated),
        "startedEventId": id(started),
        "workflowExecution": execution(workflow_id, Some(run_id)),
    })
}

fn child(kind: &EventKind) -> Value {
    use EventKind::*;
    match kind {
        StartChildWorkflowExecutionFailed(a) => json!({
            "workflowId": a.workflow_id,
            "workflowType": name(&a.workflow_type),
            "cause": "START_CHILD_WORKFLOW_EXECUTION_FAILED_CAUSE_WORKFLOW_ALREADY_EXISTS",
            "control": a.control,
            "initiatedEventId": id(a.initiated_event_id),
        }),
        ChildWorkflowExecutionStarted(a) => json!({
            "initiatedEventId": id(a.initiated_event_id),
            "workflowExecution": execution(&a.workflow_id, Some(&a.run_id)),
            "workflowType": name(&a.workflow_type),
        }),
        ChildWorkflowExecutionCompleted(a) => {
            let mut value = child_closed(
                a.initiated_event_id,
                a.started_event_id,
                &a.workflow_id,
                &a.run_id,
            );
            value["result"] = payloads(&a.result);
            value
        }
        ChildWorkflowExecutionFailed(a) => {
            let mut value = child_closed(
                a.initiated_event_id,
                a.started_event_id,
                &a.workflow_id,
                &a.run_id,
            );
            value["failure"] = failure(&a.failure);
            value
        }
        ChildWorkflowExecutionCanceled(a) => {
            let mut value = child_closed(
                a.initiated_event_id,
                a.started_event_id,
                &a.workflow_id,
                &a.run_id,
            );
            put(&mut value, "details", a.details.as_ref().map(payloads));
            value
        }
        ChildWorkflowExecutionTimedOut(a) => child_closed(
            a.initiated_event_id,
            a.started_event_id,
            &a.workflow_id,
            &a.run_id,
        ),
        ChildWorkflowExecutionTerminated(a) => child_closed(
            a.initiated_event_id,
            a.started_event_id,
            &a.workflow_id,
            &a.run_id,
        ),
        _ => unreachable!("only child events are passed"),
    }
}
