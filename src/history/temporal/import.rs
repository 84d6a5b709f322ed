//! Temporal events to Retrace's, one function per event group.
//!
//! Ids a Temporal SDK chose (activity ids, timer ids, side effect ids, the
//! `control` of signals, cancel requests and children) are rewritten to the
//! ones Retrace's SDK gives the same commands in the same order ("1", "2", ...
//! per kind), because replay matches commands to events on them.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::wire::{Attrs, Fault};
use crate::history::event::*;
use crate::types::{IdReusePolicy, ParentClosePolicy, RetryState, TimeoutType};
use crate::workflow::{
    LOCAL_ACTIVITY_MARKER_NAME, LocalActivityOutcome, PATCH_MARKER_NAME, SIDE_EFFECT_MARKER_NAME,
};

/// Workflow task timeout Temporal applies when none was set.
const WORKFLOW_TASK_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Marker names of Temporal's SDKs that map to Retrace's markers.
pub(super) const GO_SIDE_EFFECT_MARKER: &str = "SideEffect";
pub(super) const CORE_PATCH_MARKER: &str = "core_patch";
pub(super) const CORE_LOCAL_ACTIVITY_MARKER: &str = "core_local_activity";

/// The conversion's state: the sequences Retrace's SDK would have used.
#[derive(Default)]
pub(super) struct Importer {
    /// The run's workflow id (from the start event, or the placeholder).
    pub workflow_id: String,
    activities: u64,
    side_effects: u64,
    /// Retrace timer id by `TimerStarted` event id.
    timers: BTreeMap<u64, String>,
    /// Retrace `control` by initiated event id (signals and cancel requests
    /// share one sequence, as in Retrace's SDK).
    externals: BTreeMap<u64, String>,
    /// Retrace `control` by `StartChildWorkflowExecutionInitiated` event id.
    children: BTreeMap<u64, String>,
    /// The last `WorkflowTaskCompleted`: the task an update event belongs
    /// to (Temporal's update events do not name it).
    last_completed: u64,
}

fn next(counter: &mut u64) -> String {
    *counter += 1;
    counter.to_string()
}

impl Importer {
    /// The Retrace event of one Temporal event of type `name` (Retrace's name).
    pub fn convert(&mut self, event_id: u64, name: &str, a: Attrs<'_>) -> Result<EventKind, Fault> {
        match name {
            "WorkflowExecutionStarted" => self.started(a).map(EventKind::WorkflowExecutionStarted),
            "MarkerRecorded" => self.marker(a).map(EventKind::MarkerRecorded),
            "UpsertWorkflowSearchAttributes" => Ok(EventKind::UpsertWorkflowSearchAttributes(
                UpsertWorkflowSearchAttributes {
                    search_attributes: super::visibility::decode_search_attributes(
                        a,
                        "searchAttributes",
                    )?,
                    workflow_task_completed_event_id: a.event_id("workflowTaskCompletedEventId")?,
                },
            )),
            "WorkflowPropertiesModified" => Ok(EventKind::WorkflowPropertiesModified(
                WorkflowPropertiesModified {
                    upserted_memo: super::visibility::decode_memo(a, "upsertedMemo")?,
                    workflow_task_completed_event_id: a.event_id("workflowTaskCompletedEventId")?,
                },
            )),
            _ if name.starts_with("WorkflowTask") => {
                if name == "WorkflowTaskCompleted" {
                    self.last_completed = event_id;
                }
                workflow_task_event(name, a)
            }
            _ if name.starts_with("WorkflowExecutionUpdate") => self.update_event(name, a),
            _ if name.starts_with("ActivityTask") => self.activity_event(name, a),
            _ if name.starts_with("Timer") => self.timer_event(event_id, name, a),
            _ if name.contains("External") => self.external_event(event_id, name, a),
            _ if name.contains("Child") => self.child_event(event_id, name, a),
            _ => run_event(name, a),
        }
    }

    /// `WorkflowExecutionUpdateAccepted` and `…Completed`.
    fn update_event<'a>(&self, name: &str, a: Attrs<'a>) -> Result<EventKind, Fault> {
        let workflow_task_completed_event_id = self.last_completed;
        if workflow_task_completed_event_id == 0 {
            return Err("an update event comes before any WorkflowTaskCompleted".to_string());
        }
        let required = |message: Option<Attrs<'a>>, key: &str| -> Result<Attrs<'a>, Fault> {
            message.ok_or_else(|| format!("missing attribute `{key}`"))
        };
        match name {
            "WorkflowExecutionUpdateAccepted" => {
                let request = required(a.message("acceptedRequest")?, "acceptedRequest")?;
                let meta = required(request.message("meta")?, "acceptedRequest.meta")?;
                let input = required(request.message("input")?, "acceptedRequest.input")?;
                let accepted = WorkflowExecutionUpdateAccepted {
                    update_id: meta.required_string("updateId")?,
                    update_name: input.required_string("name")?,
                    input: input.payloads("args")?,
                    identity: meta.string("identity")?,
                    workflow_task_completed_event_id,
                };
                Ok(EventKind::WorkflowExecutionUpdateAccepted(accepted))
            }
            "WorkflowExecutionUpdateCompleted" => {
                let meta = required(a.message("meta")?, "meta")?;
                let outcome = required(a.message("outcome")?, "outcome")?;
                let outcome = match outcome.failure("failure")? {
                    Some(failure) => UpdateOutcome::Failure(failure),
                    None => UpdateOutcome::Success(outcome.payloads("success")?),
                };
                let completed = WorkflowExecutionUpdateCompleted {
                    update_id: meta.required_string("updateId")?,
                    accepted_event_id: a.event_id("acceptedEventId")?,
                    outcome,
                    workflow_task_completed_event_id,
                };
                Ok(EventKind::WorkflowExecutionUpdateCompleted(completed))
            }
            _ => Err(format!("unknown event type {name}")),
        }
    }

    fn started(&self, a: Attrs<'_>) -> Result<WorkflowExecutionStarted, Fault> {
        let parent = match a.message("parentWorkflowExecution")? {
            None => None,
            Some(_) => {
                let (workflow_id, run_id) = a.execution("parentWorkflowExecution")?;
                Some(ParentExecution {
                    workflow_id,
                    run_id: run_id.unwrap_or_default(),
                    initiated_event_id: a.event_id("parentInitiatedEventId")?,
                })
            }
        };
        Ok(WorkflowExecutionStarted {
            workflow_type: a.name_of("workflowType")?,
            workflow_id: self.workflow_id.clone(),
            task_queue: a.name_of("taskQueue")?,
            input: a.payloads("input")?,
            execution_timeout_ms: a.duration_ms("workflowExecutionTimeout")?,
            workflow_task_timeout_ms: a
                .duration_ms("workflowTaskTimeout")?
                .unwrap_or(WORKFLOW_TASK_TIMEOUT_MS_DEFAULT),
            attempt: a.u32_or("attempt", 1)?,
            identity: a.string("identity")?,
            // Temporal's start event has no request id.
            request_id: String::new(),
            continued_execution_run_id: a.optional_string("continuedExecutionRunId")?,
            parent,
            first_workflow_task_backoff_ms: a
                .duration_ms("firstWorkflowTaskBackoff")?
                .filter(|ms| *ms > 0),
            retry_policy: match a.message("retryPolicy")? {
                None => None,
                Some(_) => Some(Box::new(a.retry_policy("retryPolicy")?)),
            },
            initiator: initiator(a)?,
            continued_failure: a.failure("continuedFailure")?.map(Box::new),
            cron_schedule: a.optional_string("cronSchedule")?.filter(|s| !s.is_empty()),
            last_completion_result: a.optional_payloads("lastCompletionResult")?,
            search_attributes: super::visibility::decode_search_attributes(a, "searchAttributes")?,
            memo: super::visibility::decode_memo(a, "memo")?,
        })
    }

    fn marker(&mut self, a: Attrs<'_>) -> Result<MarkerRecorded, Fault> {
        let name = a.required_string("markerName")?;
        let empty = serde_json::Map::new();
        let details = a.message("details")?.unwrap_or(Attrs(&empty));
        let (marker_name, details) = match name.as_str() {
            GO_SIDE_EFFECT_MARKER => {
                let value = details.payloads("data")?;
                self.side_effects += 1;
                let seq = self.side_effects;
                (
                    SIDE_EFFECT_MARKER_NAME,
                    json!({ "seq": seq, "value": value }),
                )
            }
            CORE_PATCH_MARKER => {
                let id = match details.payloads("patch_id")? {
                    Value::String(id) => id,
                    _ => return Err("patch marker: `patch_id` is not a string".to_string()),
                };
                let deprecated = details.payloads("deprecated")?.as_bool().unwrap_or(false);
                (
                    PATCH_MARKER_NAME,
                    json!({ "patch_id": id, "deprecated": deprecated }),
                )
            }
            CORE_LOCAL_ACTIVITY_MARKER => (
                LOCAL_ACTIVITY_MARKER_NAME,
                local_activity(a, details)?.to_details(),
            ),
            other => return Err(unsupported_marker(other)),
        };
        Ok(MarkerRecorded {
            marker_name: marker_name.to_string(),
            details,
            workflow_task_completed_event_id: a.event_id("workflowTaskCompletedEventId")?,
        })
    }
}

/// A `core_local_activity` marker (Temporal's Core-based SDKs): its `data`
/// names the sequence number, attempt and type; `result` or the event's
/// `failure` says how it ended.
fn local_activity(a: Attrs<'_>, details: Attrs<'_>) -> Result<LocalActivityOutcome, Fault> {
    let data = details.payloads("data")?;
    let field = |key: &str| data.get(key).filter(|v| !v.is_null());
    let seq = field("seq")
        .and_then(Value::as_u64)
        .ok_or("local activity marker: `data.seq` is not a number")?;
    let activity_type = field("activity_type")
        .and_then(Value::as_str)
        .ok_or("local activity marker: `data.activity_type` is not a string")?;
    let attempt = field("attempt").and_then(Value::as_u64).unwrap_or(1);
    let retry_state = match field("retry_state") {
        None => None,
        Some(state) => Some(
            serde_json::from_value(state.clone())
                .map_err(|e| format!("local activity marker: `data.retry_state`: {e}"))?,
        ),
    };
    Ok(LocalActivityOutcome {
        seq,
        activity_type: activity_type.to_string(),
        attempt: u32::try_from(attempt).map_err(|_| "local activity marker: attempt too large")?,
        result: details.optional_payloads("result")?,
        failure: a.failure("failure")?,
        retry_state,
        backoff_ms: field("backoff_ms").and_then(Value::as_u64),
    })
}

fn unsupported_marker(name: &str) -> Fault {
    let why = match name {
        "Version" => "the Go SDK's GetVersion records integer versions; Retrace's patches \
                      are boolean (`ctx.patched`): port the change to a patch and record \
                      a new history"
            .to_string(),
        "LocalActivity" => "the Go SDK's local activity markers are not read (those of \
                            the Core-based SDKs, `core_local_activity`, are)"
            .to_string(),
        _ => format!(
            "Retrace reads only {GO_SIDE_EFFECT_MARKER:?} (side effects), \
             {CORE_PATCH_MARKER:?} (patches) and {CORE_LOCAL_ACTIVITY_MARKER:?} markers"
        ),
    };
    format!("marker {name:?} does not map to Retrace: {why}")
}

pub(super) fn timeout_type(text: Option<String>) -> Result<TimeoutType, Fault> {
    match text.as_deref() {
        Some("START_TO_CLOSE") => Ok(TimeoutType::StartToClose),
        Some("SCHEDULE_TO_START") => Ok(TimeoutType::ScheduleToStart),
        Some("SCHEDULE_TO_CLOSE") => Ok(TimeoutType::ScheduleToClose),
        Some("HEARTBEAT") => Ok(TimeoutType::Heartbeat),
        Some(other) => Err(format!("unknown timeout type TIMEOUT_TYPE_{other}")),
        None => Err("missing attribute `timeoutType`".to_string()),
    }
}

/// Why a run started in place of another.
fn initiator(a: Attrs<'_>) -> Result<Option<ContinueAsNewInitiator>, Fault> {
    match a
        .enumeration("initiator", "CONTINUE_AS_NEW_INITIATOR_")?
        .as_deref()
    {
        None | Some("UNSPECIFIED") => Ok(None),
        Some("WORKFLOW") => Ok(Some(ContinueAsNewInitiator::Workflow)),
        Some("RETRY") => Ok(Some(ContinueAsNewInitiator::Retry)),
        Some("CRON_SCHEDULE") => Ok(Some(ContinueAsNewInitiator::CronSchedule)),
        Some(other) => Err(format!(
            "initiator CONTINUE_AS_NEW_INITIATOR_{other} has no Retrace equivalent"
        )),
    }
}

pub(super) fn retry_state(a: Attrs<'_>) -> Result<RetryState, Fault> {
    match a.enumeration("retryState", "RETRY_STATE_")?.as_deref() {
        None | Some("RETRY_POLICY_NOT_SET") => Ok(RetryState::RetryPolicyNotSet),
        Some("NON_RETRYABLE_FAILURE") => Ok(RetryState::NonRetryableFailure),
        Some("TIMEOUT") => Ok(RetryState::Timeout),
        Some("MAXIMUM_ATTEMPTS_REACHED") => Ok(RetryState::MaximumAttemptsReached),
        Some("CANCEL_REQUESTED") => Ok(RetryState::CancelRequested),
        Some("IN_PROGRESS") => Ok(RetryState::InProgress),
        Some(other) => Err(format!(
            "retry state RETRY_STATE_{other} has no Retrace equivalent"
        )),
    }
}

fn workflow_task_cause(a: Attrs<'_>) -> Result<WorkflowTaskFailedCause, Fault> {
    use WorkflowTaskFailedCause::*;
    let cause = a.enumeration("cause", "WORKFLOW_TASK_FAILED_CAUSE_")?;
    match cause.as_deref() {
        Some("WORKFLOW_WORKER_UNHANDLED_FAILURE") => Ok(WorkflowWorkerUnhandledFailure),
        Some("NON_DETERMINISTIC_ERROR") => Ok(NonDeterministicError),
        Some("UNHANDLED_COMMAND") => Ok(UnhandledCommand),
        Some("FORCE_CLOSE_COMMAND") => Ok(ForceCloseCommand),
        Some("RESET_STICKY_TASK_QUEUE") => Ok(WorkerShutdown),
        Some(bad) if bad.starts_with("BAD_") || bad.ends_with("_DUPLICATE_ID") => Ok(BadCommand),
        Some(other) => Err(format!(
            "workflow task failed cause WORKFLOW_TASK_FAILED_CAUSE_{other} has no Retrace equivalent"
        )),
        None => Err("missing attribute `cause`".to_string()),
    }
}

fn workflow_task_event(name: &str, a: Attrs<'_>) -> Result<EventKind, Fault> {
    let ids = |a: Attrs<'_>| -> Result<(u64, u64), Fault> {
        Ok((
            a.event_id("scheduledEventId")?,
            a.event_id("startedEventId")?,
        ))
    };
    Ok(match name {
        "WorkflowTaskScheduled" => EventKind::WorkflowTaskScheduled(WorkflowTaskScheduled {
            task_queue: a.name_of("taskQueue")?,
            start_to_close_timeout_ms: a
                .duration_ms("startToCloseTimeout")?
                .unwrap_or(WORKFLOW_TASK_TIMEOUT_MS_DEFAULT),
            attempt: a.u32_or("attempt", 1)?,
        }),
        "WorkflowTaskStarted" => EventKind::WorkflowTaskStarted(WorkflowTaskStarted {
            scheduled_event_id: a.event_id("scheduledEventId")?,
            identity: a.string("identity")?,
            request_id: a.string("requestId")?,
        }),
        "WorkflowTaskCompleted" => {
            let (scheduled_event_id, started_event_id) = ids(a)?;
            EventKind::WorkflowTaskCompleted(WorkflowTaskCompleted {
                scheduled_event_id,
                started_event_id,
                identity: a.string("identity")?,
            })
        }
        "WorkflowTaskTimedOut" => {
            let (scheduled_event_id, started_event_id) = ids(a)?;
            let timeout_type = timeout_type(a.enumeration("timeoutType", "TIMEOUT_TYPE_")?)?;
            EventKind::WorkflowTaskTimedOut(WorkflowTaskTimedOut {
                scheduled_event_id,
                started_event_id,
                timeout_type,
            })
        }
        _ => {
            let (scheduled_event_id, started_event_id) = ids(a)?;
            EventKind::WorkflowTaskFailed(WorkflowTaskFailed {
                scheduled_event_id,
                started_event_id,
                cause: workflow_task_cause(a)?,
                failure: a.required_failure("failure")?,
                identity: a.string("identity")?,
            })
        }
    })
}

impl Importer {
    fn activity_event(&mut self, name: &str, a: Attrs<'_>) -> Result<EventKind, Fault> {
        let scheduled_event_id = a.event_id("scheduledEventId");
        Ok(match name {
            "ActivityTaskScheduled" => EventKind::ActivityTaskScheduled(ActivityTaskScheduled {
                activity_id: next(&mut self.activities),
                activity_type: a.name_of("activityType")?,
                task_queue: a.name_of("taskQueue")?,
                input: a.payloads("input")?,
                schedule_to_close_timeout_ms: a.duration_ms("scheduleToCloseTimeout")?,
                schedule_to_start_timeout_ms: a.duration_ms("scheduleToStartTimeout")?,
                start_to_close_timeout_ms: a.duration_ms("startToCloseTimeout")?,
                heartbeat_timeout_ms: a.duration_ms("heartbeatTimeout")?,
                retry_policy: a.retry_policy("retryPolicy")?,
                workflow_task_completed_event_id: a.event_id("workflowTaskCompletedEventId")?,
            }),
            "ActivityTaskStarted" => EventKind::ActivityTaskStarted(ActivityTaskStarted {
                scheduled_event_id: scheduled_event_id?,
                identity: a.string("identity")?,
                attempt: a.u32_or("attempt", 1)?,
                last_failure: a.failure("lastFailure")?,
            }),
            "ActivityTaskCompleted" => EventKind::ActivityTaskCompleted(ActivityTaskCompleted {
                scheduled_event_id: scheduled_event_id?,
                started_event_id: a.event_id("startedEventId")?,
                result: a.payloads("result")?,
                identity: a.string("identity")?,
            }),
            "ActivityTaskFailed" => EventKind::ActivityTaskFailed(ActivityTaskFailed {
                scheduled_event_id: scheduled_event_id?,
                started_event_id: a.event_id("startedEventId")?,
                failure: a.required_failure("failure")?,
                retry_state: retry_state(a)?,
                identity: a.string("identity")?,
            }),
            "ActivityTaskTimedOut" => activity_timed_out(a)?,
            "ActivityTaskCancelRequested" => {
                EventKind::ActivityTaskCancelRequested(ActivityTaskCancelRequested {
                    scheduled_event_id: scheduled_event_id?,
                    workflow_task_completed_event_id: a.event_id("workflowTaskCompletedEventId")?,
                })
            }
            _ => EventKind::ActivityTaskCanceled(ActivityTaskCanceled {
                scheduled_event_id: scheduled_event_id?,
                started_event_id: a.optional_int("startedEventId")?.filter(|id| *id > 0),
                latest_cancel_requested_event_id: a.event_id("latestCancelRequestedEventId")?,
                details: a.optional_payloads("details")?,
                identity: a.string("identity")?,
            }),
        })
    }

    fn timer_event(&mut self, event_id: u64, name: &str, a: Attrs<'_>) -> Result<EventKind, Fault> {
        if name == "TimerStarted" {
            let timer_id = (self.timers.len() + 1).to_string();
            self.timers.insert(event_id, timer_id.clone());
            let start_to_fire_timeout_ms = a
                .duration_ms("startToFireTimeout")?
                .ok_or("missing attribute `startToFireTimeout`")?;
            return Ok(EventKind::TimerStarted(TimerStarted {
                timer_id,
                start_to_fire_timeout_ms,
                workflow_task_completed_event_id: a.event_id("workflowTaskCompletedEventId")?,
            }));
        }
        let started_event_id = a.event_id("startedEventId")?;
        let timer_id = self.timers.get(&started_event_id).cloned().ok_or_else(|| {
            format!("startedEventId {started_event_id} is not a TimerStarted event")
        })?;
        Ok(match name {
            "TimerFired" => EventKind::TimerFired(TimerFired {
                timer_id,
                started_event_id,
            }),
            _ => EventKind::TimerCanceled(TimerCanceled {
                timer_id,
                started_event_id,
                workflow_task_completed_event_id: a.event_id("workflowTaskCompletedEventId")?,
            }),
        })
    }
}

fn activity_timed_out(a: Attrs<'_>) -> Result<EventKind, Fault> {
    let failure = a.message("failure")?.ok_or("missing attribute `failure`")?;
    let info = failure
        .message("timeoutFailureInfo")?
        .ok_or("missing attribute `failure.timeoutFailureInfo`")?;
    // Temporal's failure is the timeout caused by the last attempt's
    // failure; Retrace keeps the two apart.
    let mut timeout = a.required_failure("failure")?;
    let last_failure = timeout.cause.take().map(|cause| *cause);
    Ok(EventKind::ActivityTaskTimedOut(ActivityTaskTimedOut {
        scheduled_event_id: a.event_id("scheduledEventId")?,
        started_event_id: a.optional_int("startedEventId")?.filter(|id| *id > 0),
        timeout_type: timeout_type(info.enumeration("timeoutType", "TIMEOUT_TYPE_")?)?,
        retry_state: retry_state(a)?,
        last_failure,
        last_heartbeat_details: info.optional_payloads("lastHeartbeatDetails")?,
        failure: Some(timeout),
    }))
}

fn run_event(name: &str, a: Attrs<'_>) -> Result<EventKind, Fault> {
    let completed_by = || a.event_id("workflowTaskCompletedEventId");
    Ok(match name {
        "WorkflowExecutionSignaled" => {
            EventKind::WorkflowExecutionSignaled(WorkflowExecutionSignaled {
                signal_name: a.required_string("signalName")?,
                input: a.payloads("input")?,
                identity: a.string("identity")?,
            })
        }
        "WorkflowExecutionCancelRequested" => {
            EventKind::WorkflowExecutionCancelRequested(WorkflowExecutionCancelRequested {
                cause: a.string("cause")?,
                identity: a.string("identity")?,
            })
        }
        "WorkflowExecutionCompleted" => {
            EventKind::WorkflowExecutionCompleted(WorkflowExecutionCompleted {
                result: a.payloads("result")?,
                workflow_task_completed_event_id: completed_by()?,
                new_execution_run_id: a.optional_string("newExecutionRunId")?,
            })
        }
        "WorkflowExecutionFailed" => EventKind::WorkflowExecutionFailed(WorkflowExecutionFailed {
            failure: a.required_failure("failure")?,
            workflow_task_completed_event_id: completed_by()?,
            retry_state: Some(retry_state(a)?).filter(|s| *s != RetryState::RetryPolicyNotSet),
            new_execution_run_id: a.optional_string("newExecutionRunId")?,
        }),
        "WorkflowExecutionTimedOut" => {
            EventKind::WorkflowExecutionTimedOut(WorkflowExecutionTimedOut {
                retry_state: retry_state(a)?,
            })
        }
        "WorkflowExecutionCanceled" => {
            EventKind::WorkflowExecutionCanceled(WorkflowExecutionCanceled {
                details: a.optional_payloads("details")?,
                workflow_task_completed_event_id: completed_by()?,
            })
        }
        "WorkflowExecutionTerminated" => {
            EventKind::WorkflowExecutionTerminated(WorkflowExecutionTerminated {
                reason: a.string("reason")?,
                details: a.optional_payloads("details")?,
                identity: a.string("identity")?,
            })
        }
        _ => EventKind::WorkflowExecutionContinuedAsNew(WorkflowExecutionContinuedAsNew {
            new_execution_run_id: a.required_string("newExecutionRunId")?,
            workflow_type: a.name_of("workflowType")?,
            task_queue: a.name_of("taskQueue")?,
            input: a.payloads("input")?,
            // Temporal's continue-as-new carries a run timeout, not what is
            // left of the execution timeout: Retrace reads one as the other.
            execution_timeout_ms: a.duration_ms("workflowRunTimeout")?,
            workflow_task_timeout_ms: a
                .duration_ms("workflowTaskTimeout")?
                .unwrap_or(WORKFLOW_TASK_TIMEOUT_MS_DEFAULT),
            workflow_task_completed_event_id: completed_by()?,
        }),
    })
}

fn external_cause(a: Attrs<'_>) -> Result<ExternalFailedCause, Fault> {
    let cause = a.string("cause")?;
    if cause.ends_with("EXTERNAL_WORKFLOW_EXECUTION_NOT_FOUND") {
        return Ok(ExternalFailedCause::ExternalWorkflowExecutionNotFound);
    }
    Err(format!("cause {cause:?} has no Retrace equivalent"))
}

impl Importer {
    /// The control of the initiating event `initiated` from `controls`.
    fn control_of(controls: &BTreeMap<u64, String>, a: Attrs<'_>) -> Result<(u64, String), Fault> {
        let initiated = a.event_id("initiatedEventId")?;
        let control = controls.get(&initiated).cloned().ok_or_else(|| {
            format!("initiatedEventId {initiated} does not name an initiated event of this kind")
        })?;
        Ok((initiated, control))
    }

    fn external_event(
        &mut self,
        event_id: u64,
        name: &str,
        a: Attrs<'_>,
    ) -> Result<EventKind, Fault> {
        let (workflow_id, run_id) = a.execution("workflowExecution")?;
        if name.ends_with("Initiated") {
            let control = (self.externals.len() + 1).to_string();
            self.externals.insert(event_id, control.clone());
            let workflow_task_completed_event_id = a.event_id("workflowTaskCompletedEventId")?;
            return Ok(match name {
                "SignalExternalWorkflowExecutionInitiated" => {
                    EventKind::SignalExternalWorkflowExecutionInitiated(
                        SignalExternalWorkflowExecutionInitiated {
                            workflow_id,
                            run_id,
                            signal_name: a.required_string("signalName")?,
                            input: a.payloads("input")?,
                            control,
                            workflow_task_completed_event_id,
                        },
                    )
                }
                _ => EventKind::RequestCancelExternalWorkflowExecutionInitiated(
                    RequestCancelExternalWorkflowExecutionInitiated {
                        workflow_id,
                        run_id,
                        control,
                        workflow_task_completed_event_id,
                    },
                ),
            });
        }
        let (initiated_event_id, control) = Self::control_of(&self.externals, a)?;
        Ok(match name {
            "ExternalWorkflowExecutionSignaled" => {
                EventKind::ExternalWorkflowExecutionSignaled(ExternalWorkflowExecutionSignaled {
                    initiated_event_id,
                    workflow_id,
                    run_id: run_id.unwrap_or_default(),
                    control,
                })
            }
            "ExternalWorkflowExecutionCancelRequested" => {
                EventKind::ExternalWorkflowExecutionCancelRequested(
                    ExternalWorkflowExecutionCancelRequested {
                        initiated_event_id,
                        workflow_id,
                        run_id: run_id.unwrap_or_default(),
                        control,
                    },
                )
            }
            "SignalExternalWorkflowExecutionFailed" => {
                EventKind::SignalExternalWorkflowExecutionFailed(
                    SignalExternalWorkflowExecutionFailed {
                        initiated_event_id,
                        workflow_id,
                        run_id,
                        cause: external_cause(a)?,
                        control,
                    },
                )
            }
            _ => EventKind::RequestCancelExternalWorkflowExecutionFailed(
                RequestCancelExternalWorkflowExecutionFailed {
                    initiated_event_id,
                    workflow_id,
                    run_id,
                    cause: external_cause(a)?,
                    control,
                },
            ),
        })
    }
}

fn parent_close_policy(a: Attrs<'_>) -> Result<ParentClosePolicy, Fault> {
    match a
        .enumeration("parentClosePolicy", "PARENT_CLOSE_POLICY_")?
        .as_deref()
    {
        None | Some("TERMINATE") => Ok(ParentClosePolicy::Terminate),
        Some("REQUEST_CANCEL") => Ok(ParentClosePolicy::RequestCancel),
        Some("ABANDON") => Ok(ParentClosePolicy::Abandon),
        Some(other) => Err(format!(
            "unknown parent close policy PARENT_CLOSE_POLICY_{other}"
        )),
    }
}

fn id_reuse_policy(a: Attrs<'_>) -> Result<IdReusePolicy, Fault> {
    let policy = a.enumeration("workflowIdReusePolicy", "WORKFLOW_ID_REUSE_POLICY_")?;
    match policy.as_deref() {
        None | Some("ALLOW_DUPLICATE") => Ok(IdReusePolicy::AllowDuplicate),
        Some("ALLOW_DUPLICATE_FAILED_ONLY") => Ok(IdReusePolicy::AllowDuplicateFailedOnly),
        Some("REJECT_DUPLICATE") => Ok(IdReusePolicy::RejectDuplicate),
        Some(other) => Err(format!(
            "workflow id reuse policy WORKFLOW_ID_REUSE_POLICY_{other} has no Retrace equivalent"
        )),
    }
}

impl Importer {
    fn child_initiated(&mut self, event_id: u64, a: Attrs<'_>) -> Result<EventKind, Fault> {
        let control = (self.children.len() + 1).to_string();
        self.children.insert(event_id, control.clone());
        Ok(EventKind::StartChildWorkflowExecutionInitiated(
            StartChildWorkflowExecutionInitiated {
                workflow_id: a.required_string("workflowId")?,
                workflow_type: a.name_of("workflowType")?,
                task_queue: a.name_of("taskQueue")?,
                input: a.payloads("input")?,
                execution_timeout_ms: a.duration_ms("workflowExecutionTimeout")?,
                workflow_task_timeout_ms: a.duration_ms("workflowTaskTimeout")?,
                parent_close_policy: parent_close_policy(a)?,
                workflow_id_reuse_policy: id_reuse_policy(a)?,
                control,
                workflow_task_completed_event_id: a.event_id("workflowTaskCompletedEventId")?,
            },
        ))
    }

    fn child_start_failed(&self, a: Attrs<'_>) -> Result<EventKind, Fault> {
        let (initiated_event_id, control) = Self::control_of(&self.children, a)?;
        let cause = a.string("cause")?;
        if !cause.ends_with("WORKFLOW_ALREADY_EXISTS") {
            return Err(format!("cause {cause:?} has no Retrace equivalent"));
        }
        Ok(EventKind::StartChildWorkflowExecutionFailed(
            StartChildWorkflowExecutionFailed {
                initiated_event_id,
                workflow_id: a.required_string("workflowId")?,
                workflow_type: a.name_of("workflowType")?,
                cause: StartChildFailedCause::WorkflowAlreadyExists,
                control,
            },
        ))
    }

    fn child_event(&mut self, event_id: u64, name: &str, a: Attrs<'_>) -> Result<EventKind, Fault> {
        match name {
            "StartChildWorkflowExecutionInitiated" => return self.child_initiated(event_id, a),
            "StartChildWorkflowExecutionFailed" => return self.child_start_failed(a),
            _ => {}
        }
        let (initiated_event_id, _) = Self::control_of(&self.children, a)?;
        let (workflow_id, run_id) = a.execution("workflowExecution")?;
        let run_id = run_id.unwrap_or_default();
        if name == "ChildWorkflowExecutionStarted" {
            return Ok(EventKind::ChildWorkflowExecutionStarted(
                ChildWorkflowExecutionStarted {
                    initiated_event_id,
                    workflow_id,
                    run_id,
                    workflow_type: a.name_of("workflowType")?,
                },
            ));
        }
        let started_event_id = a.event_id("startedEventId")?;
        child_closed(
            name,
            a,
            (initiated_event_id, started_event_id, workflow_id, run_id),
        )
    }
}

fn child_closed(
    name: &str,
    a: Attrs<'_>,
    (initiated_event_id, started_event_id, workflow_id, run_id): (u64, u64, String, String),
) -> Result<EventKind, Fault> {
    Ok(match name {
        "ChildWorkflowExecutionCompleted" => {
            EventKind::ChildWorkflowExecutionCompleted(ChildWorkflowExecutionCompleted {
                initiated_event_id,
                started_event_id,
                workflow_id,
                run_id,
                result: a.payloads("result")?,
            })
        }
        "ChildWorkflowExecutionFailed" => {
            EventKind::ChildWorkflowExecutionFailed(ChildWorkflowExecutionFailed {
                initiated_event_id,
                started_event_id,
                workflow_id,
                run_id,
                failure: a.required_failure("failure")?,
            })
        }
        "ChildWorkflowExecutionCanceled" => {
            EventKind::ChildWorkflowExecutionCanceled(ChildWorkflowExecutionCanceled {
                initiated_event_id,
                started_event_id,
                workflow_id,
                run_id,
                details: a.optional_payloads("details")?,
            })
        }
        "ChildWorkflowExecutionTimedOut" => {
            EventKind::ChildWorkflowExecutionTimedOut(ChildWorkflowExecutionTimedOut {
                initiated_event_id,
                started_event_id,
                workflow_id,
                run_id,
            })
        }
        _ => EventKind::ChildWorkflowExecutionTerminated(ChildWorkflowExecutionTerminated {
            initiated_event_id,
            started_event_id,
            workflow_id,
            run_id,
            // Temporal's event has no reason.
            reason: String::new(),
        }),
    })
}
