//! Checks at the edge: every request's identifiers and free payloads are
//! refused here, before any handler reads storage, if they are empty where an
//! id is required, longer than the service keeps, or nested deeper than what
//! holds them could be read back. Pure: no state, no I/O.
//!
//! | field                                                            | rule                       |
//! |------------------------------------------------------------------|----------------------------|
//! | `request_id` (start, signal)                                     | not empty, ≤ `REQUEST_ID_BYTES_MAX` |
//! | `workflow_id`, `workflow_type`, `task_queue` (start)             | not empty, ≤ `ID_BYTES_MAX` |
//! | `task_queue` (polls), `signal_name`, `query_name`                | not empty, ≤ `ID_BYTES_MAX` |
//! | `workflow_id`, `run_id` of a run reference; `identity`           | ≤ `ID_BYTES_MAX`           |
//! | `reason` (cancel, terminate)                                     | ≤ `REASON_BYTES_MAX`       |
//! | `execution_timeout_ms`, `workflow_task_timeout_ms`, `start_delay_ms` (start) | ≤ `RUN_TIMEOUT_MS_MAX` |
//! | `cron_schedule` (start)                                          | ≤ `CRON_SCHEDULE_BYTES_MAX` |
//! | `retry_policy.non_retryable_error_types` (start)                 | ≤ `RETRY_TYPES_COUNT_MAX`, each ≤ `ID_BYTES_MAX` |
//! | query `args` (never stored, still bounded)                       | ≤ `PAYLOAD_DEPTH_MAX` deep |
//!
//! Stored payloads (inputs, signals, results, details) are checked by the run
//! machine against the size and depth limits, where they enter a run.

use crate::api::{ErrorCode, Request, RunRef, ServiceError};

/// Bytes of a workflow id, run id, type, task queue, signal or query name, identity.
pub const ID_BYTES_MAX: usize = 1_000;
/// Bytes of a request id.
pub const REQUEST_ID_BYTES_MAX: usize = 256;
/// Bytes of a cancel or terminate reason.
pub const REASON_BYTES_MAX: usize = 4_096;
/// A run's execution timeout or workflow task timeout: 100 years. Timers and
/// activity timeouts in workflow code are not refused: their deadlines
/// saturate at the end of year 9999 (`Timestamp::plus_ms`), i.e. never.
pub const RUN_TIMEOUT_MS_MAX: u64 = 100 * 365 * 24 * 3_600 * 1_000;

/// Failure types a workflow retry policy may list as non-retryable.
pub const RETRY_TYPES_COUNT_MAX: usize = 64;

fn invalid(message: String) -> ServiceError {
    ServiceError::new(ErrorCode::InvalidArgument, message)
}

/// `text` is at most `max` bytes (and not empty if `required`).
fn check_text(field: &str, text: &str, required: bool, max: usize) -> Result<(), ServiceError> {
    if required && text.is_empty() {
        return Err(invalid(format!("{field} must not be empty")));
    }
    if text.len() > max {
        let bytes = text.len();
        return Err(invalid(format!(
            "{field} is {bytes} bytes, more than the limit of {max} bytes"
        )));
    }
    Ok(())
}

fn check_id(field: &str, text: &str) -> Result<(), ServiceError> {
    check_text(field, text, true, ID_BYTES_MAX)
}

fn check_run(run: &RunRef) -> Result<(), ServiceError> {
    check_text("workflow_id", &run.workflow_id, false, ID_BYTES_MAX)?;
    check_text(
        "run_id",
        run.run_id.as_deref().unwrap_or_default(),
        false,
        ID_BYTES_MAX,
    )
}

fn check_timeout(field: &str, timeout_ms: Option<u64>) -> Result<(), ServiceError> {
    match timeout_ms {
        Some(ms) if ms > RUN_TIMEOUT_MS_MAX => Err(invalid(format!(
            "{field} is {ms} ms, more than the limit of {RUN_TIMEOUT_MS_MAX} ms (100 years)"
        ))),
        _ => Ok(()),
    }
}

fn check_identity(identity: &str) -> Result<(), ServiceError> {
    check_text("identity", identity, false, ID_BYTES_MAX)
}

fn check_start(r: &crate::api::StartWorkflowRequest) -> Result<(), ServiceError> {
    check_id("workflow_id", &r.workflow_id)?;
    check_id("workflow_type", &r.workflow_type)?;
    check_id("task_queue", &r.task_queue)?;
    check_text("request_id", &r.request_id, true, REQUEST_ID_BYTES_MAX)?;
    check_timeout("execution_timeout_ms", r.execution_timeout_ms)?;
    check_timeout("workflow_task_timeout_ms", r.workflow_task_timeout_ms)?;
    check_timeout("start_delay_ms", r.start_delay_ms)?;
    let cron = r.cron_schedule.as_deref().unwrap_or_default();
    check_text(
        "cron_schedule",
        cron,
        false,
        crate::workflow::CRON_SCHEDULE_BYTES_MAX,
    )?;
    if let Some(policy) = &r.retry_policy {
        let types = &policy.non_retryable_error_types;
        if types.len() > RETRY_TYPES_COUNT_MAX {
            return Err(invalid(format!(
                "retry_policy.non_retryable_error_types lists {} types, more than the limit of {RETRY_TYPES_COUNT_MAX}",
                types.len()
            )));
        }
        for failure_type in types {
            check_id("retry_policy.non_retryable_error_types[]", failure_type)?;
        }
    }
    check_identity(&r.identity)
}

/// Refuses `request` if an identifier or free payload breaks a rule above.
pub fn check_request(request: &Request) -> Result<(), ServiceError> {
    match request {
        Request::StartWorkflow(r) => check_start(r),
        Request::StartChildWorkflow(r) => {
            check_start(&r.start)?;
            check_id("parent.workflow_id", &r.parent.workflow_id)?;
            check_id("parent.run_id", &r.parent.run_id)
        }
        Request::SignalWithStartWorkflow(r) => {
            check_start(&r.start)?;
            check_id("signal_name", &r.signal_name)
        }
        Request::SignalWorkflow(r) => {
            check_run(&r.run)?;
            check_id("signal_name", &r.signal_name)?;
            check_text("request_id", &r.request_id, true, REQUEST_ID_BYTES_MAX)?;
            check_identity(&r.identity)
        }
        Request::QueryWorkflow(r) => {
            check_run(&r.run)?;
            check_id("query_name", &r.query_name)?;
            super::machine::check_depth("query args", &r.args)
        }
        Request::CancelWorkflow(r) => {
            check_run(&r.run)?;
            check_text("reason", &r.reason, false, REASON_BYTES_MAX)?;
            check_identity(&r.identity)
        }
        Request::TerminateWorkflow(r) => {
            check_run(&r.run)?;
            check_text("reason", &r.reason, false, REASON_BYTES_MAX)?;
            check_identity(&r.identity)
        }
        Request::UpdateWorkflow(r) => {
            check_run(&r.run)?;
            check_id("update_name", &r.update_name)?;
            let id_bytes_max = super::machine::update::UPDATE_ID_BYTES_MAX;
            check_text("update_id", &r.update_id, true, id_bytes_max)?;
            check_identity(&r.identity)?;
            super::machine::check_depth("update input", &r.input)
        }
        Request::DescribeWorkflow(run) => check_run(run),
        Request::GetHistory(r) => check_run(&r.run),
        Request::GetResult(r) => check_run(&r.run),
        Request::PollWorkflowTask(r) | Request::PollActivityTask(r) => {
            check_id("task_queue", &r.task_queue)?;
            check_identity(&r.identity)
        }
        Request::DescribeTaskQueue(r) => check_text(
            "task_queue",
            r.task_queue.as_deref().unwrap_or_default(),
            false,
            ID_BYTES_MAX,
        ),
        Request::ListWorkflows(_)
        | Request::CompleteWorkflowTask(_)
        | Request::FailWorkflowTask(_)
        | Request::RespondQuery(_)
        | Request::RespondActivityTask(_)
        | Request::HeartbeatActivityTask(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PollTaskRequest, SignalWorkflowRequest};
    use serde_json::json;

    fn signal(request_id: &str, input: serde_json::Value) -> Request {
        Request::SignalWorkflow(SignalWorkflowRequest {
            run: RunRef {
                workflow_id: "w".into(),
                run_id: None,
            },
            signal_name: "go".into(),
            input,
            request_id: request_id.into(),
            identity: String::new(),
        })
    }

    #[test]
    fn a_signal_needs_a_request_id_of_bounded_length() {
        let empty = check_request(&signal("", json!(1))).unwrap_err();
        assert_eq!(empty.code, ErrorCode::InvalidArgument);
        assert!(empty.message.contains("request_id must not be empty"));
        let long = "r".repeat(REQUEST_ID_BYTES_MAX + 1);
        let too_long = check_request(&signal(&long, json!(1))).unwrap_err();
        assert!(
            too_long
                .message
                .contains("257 bytes, more than the limit of 256")
        );
        assert!(check_request(&signal("r1", json!(1))).is_ok());
    }

    #[test]
    fn an_update_needs_a_name_and_an_id_of_bounded_length() {
        use crate::engine::machine::update::UPDATE_ID_BYTES_MAX;
        let update = |name: &str, update_id: &str| {
            Request::UpdateWorkflow(crate::api::UpdateWorkflowRequest {
                run: RunRef {
                    workflow_id: "w".into(),
                    run_id: None,
                },
                update_name: name.into(),
                input: json!(1),
                update_id: update_id.into(),
                identity: String::new(),
            })
        };
        let longest = "u".repeat(UPDATE_ID_BYTES_MAX);
        assert!(check_request(&update("add", &longest)).is_ok());
        let too_long = "u".repeat(UPDATE_ID_BYTES_MAX + 1);
        let refused = check_request(&update("add", &too_long)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::InvalidArgument);
        assert!(refused.message.contains("update_id"), "{}", refused.message);
        let nameless = check_request(&update("", "u-1")).unwrap_err();
        assert!(
            nameless.message.contains("update_name must not be empty"),
            "{}",
            nameless.message
        );
    }

    #[test]
    fn a_poll_needs_a_task_queue() {
        let poll = |task_queue: &str| {
            Request::PollActivityTask(PollTaskRequest {
                task_queue: task_queue.into(),
                identity: "w".into(),
                workflow_types: Vec::new(),
            })
        };
        let error = check_request(&poll("")).unwrap_err();
        assert!(error.message.contains("task_queue must not be empty"));
        assert!(check_request(&poll("q")).is_ok());
    }
}
