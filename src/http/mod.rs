//! The service over HTTP/JSON: an axum server ([`HttpServer`]) for the
//! `retrace server` process, and a [`Network`](crate::env::Network)
//! ([`HttpNetwork`]) for workers and clients in other processes.
//!
//! # Protocol
//!
//! One route per request: `POST /api/v1/{method}`, where `{method}` is
//! [`Request::method`] (`/api/v1/StartWorkflow`). The body is the request's
//! inner struct as JSON (`StartWorkflowRequest`); a success is `200` with the
//! response's inner struct (`StartWorkflowResponse`, `{}` for
//! [`Response::Empty`]). A refusal is `{"code": "<snake_case ErrorCode>",
//! "message": "..."}` with [`ErrorCode::http_status`](crate::api::ErrorCode::http_status).
//! Long polls (`PollWorkflowTask`, `PollActivityTask`, `GetResult`,
//! `QueryWorkflow`) are ordinary requests the service holds. `GET /healthz`
//! answers `{"status": "ok"}` without a token. `GET /api/v1/cluster`
//! answers a cluster server's [`ClusterView`](crate::env::lease::ClusterView)
//! (members and shard leases), `invalid_argument` on a single server.
//!
//! ```
//! use retrace::api::{Request, RunRef};
//! use retrace::http::{decode_request, encode_request};
//!
//! let request = Request::DescribeWorkflow(RunRef { workflow_id: "g1".into(), run_id: None });
//! let body = encode_request(&request);
//! assert_eq!(body, br#"{"workflow_id":"g1","run_id":null}"#);
//! assert_eq!(decode_request("DescribeWorkflow", &body).unwrap(), request);
//! ```
//!
//! # Security
//!
//! The server binds 127.0.0.1 unless told otherwise. Binding any other address
//! needs a bearer token; with a token, every API request must carry
//! `Authorization: Bearer <token>`. There is no TLS: put a TLS-terminating
//! proxy in front of a server reachable from other machines.

mod client;
mod server;
mod ui;

pub use client::{HttpNetwork, network_over};
pub use server::{
    BODY_ENVELOPE_BYTES, BODY_PAYLOADS_MAX, ClusterSource, HttpConfig, HttpListener, HttpServer,
    body_bytes_max_for,
};

use std::net::SocketAddr;

use serde::Serialize;

use crate::api::{Request, Response};

/// Path prefix of the API routes.
pub const API_PREFIX: &str = "/api/v1/";
/// `GET /api/v1/cluster`: a cluster server's members and shard leases.
pub const CLUSTER_PATH: &str = "cluster";

/// Why the HTTP server or client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// A non-loopback address without a token would expose the service.
    #[error(
        "refusing to listen on {address}: it is not a loopback address, so a bearer token is \
         required (pass --token or set RETRACE_TOKEN), or listen on 127.0.0.1"
    )]
    TokenRequired {
        /// The address asked for.
        address: SocketAddr,
    },
    /// An empty token would accept `Authorization: Bearer `.
    #[error("the bearer token must not be empty")]
    EmptyToken,
    /// The token cannot be sent in an HTTP header.
    #[error("the bearer token must be printable ASCII without spaces")]
    BadToken,
    /// The address could not be bound.
    #[error("cannot listen on {address}: {message}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// What the OS said.
        message: String,
    },
    /// The service URL is not usable.
    #[error("bad service address {url:?}: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
}

/// Why a request body was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecodeRequestError {
    /// No such method.
    #[error("unknown method {method:?}; known methods: {}", METHODS.join(", "))]
    UnknownMethod {
        /// The method asked for.
        method: String,
    },
    /// The body is not JSON of the method's request shape.
    #[error("body of {method} is not a valid {shape}: {source}")]
    Malformed {
        /// The method.
        method: &'static str,
        /// The request struct expected.
        shape: &'static str,
        /// What serde said, with line and column.
        source: serde_json::Error,
    },
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("protocol types always encode")
}

/// Defines, from one list of (method, request struct), the method names and
/// the request codec, so they cannot disagree.
macro_rules! methods {
    ($(($method:ident, $shape:ident)),* $(,)?) => {
        /// Every method of the API, in [`Request`]'s order.
        pub const METHODS: &[&str] = &[$(stringify!($method)),*];

        /// Decodes the body of `POST /api/v1/{method}`.
        pub fn decode_request(method: &str, body: &[u8]) -> Result<Request, DecodeRequestError> {
            match method {
                $(stringify!($method) => serde_json::from_slice::<crate::api::$shape>(body)
                    .map(Request::$method)
                    .map_err(|source| DecodeRequestError::Malformed {
                        method: stringify!($method),
                        shape: stringify!($shape),
                        source,
                    }),)*
                _ => Err(DecodeRequestError::UnknownMethod { method: method.to_string() }),
            }
        }

        /// The body of `POST /api/v1/{request.method()}`: the inner struct as JSON.
        pub fn encode_request(request: &Request) -> Vec<u8> {
            match request {
                $(Request::$method(inner) => to_json(inner),)*
            }
        }
    };
}

methods!(
    (StartWorkflow, StartWorkflowRequest),
    (StartChildWorkflow, StartChildWorkflowRequest),
    (SignalWorkflow, SignalWorkflowRequest),
    (SignalWithStartWorkflow, SignalWithStartWorkflowRequest),
    (QueryWorkflow, QueryWorkflowRequest),
    (CancelWorkflow, CancelWorkflowRequest),
    (TerminateWorkflow, TerminateWorkflowRequest),
    (DescribeWorkflow, RunRef),
    (ListWorkflows, ListWorkflowsRequest),
    (GetHistory, GetHistoryRequest),
    (GetResult, GetResultRequest),
    (PollWorkflowTask, PollTaskRequest),
    (CompleteWorkflowTask, CompleteWorkflowTaskRequest),
    (FailWorkflowTask, FailWorkflowTaskRequest),
    (RespondQuery, RespondQueryRequest),
    (PollActivityTask, PollTaskRequest),
    (RespondActivityTask, RespondActivityTaskRequest),
    (HeartbeatActivityTask, HeartbeatRequest),
    (DescribeTaskQueue, DescribeTaskQueueRequest),
    (UpdateWorkflow, UpdateWorkflowRequest),
);

/// The method a response answers, or `None` for [`Response::Empty`].
fn response_method(response: &Response) -> Option<&'static str> {
    Some(match response {
        Response::Empty => return None,
        Response::StartWorkflow(_) => "StartWorkflow",
        Response::SignalWithStartWorkflow(_) => "SignalWithStartWorkflow",
        Response::QueryWorkflow(_) => "QueryWorkflow",
        Response::DescribeWorkflow(_) => "DescribeWorkflow",
        Response::ListWorkflows(_) => "ListWorkflows",
        Response::GetHistory(_) => "GetHistory",
        Response::GetResult(_) => "GetResult",
        Response::PollWorkflowTask(_) => "PollWorkflowTask",
        Response::PollActivityTask(_) => "PollActivityTask",
        Response::HeartbeatActivityTask(_) => "HeartbeatActivityTask",
        Response::CompleteWorkflowTask(_) => "CompleteWorkflowTask",
        Response::RespondActivityTask(_) => "RespondActivityTask",
        Response::DescribeTaskQueue(_) => "DescribeTaskQueue",
        Response::UpdateWorkflow(_) => "UpdateWorkflow",
    })
}

/// True if `response` is the kind of response `method` gets.
pub fn response_fits(method: &str, response: &Response) -> bool {
    let method = match method {
        "StartChildWorkflow" => "StartWorkflow",
        other => other,
    };
    match response_method(response) {
        Some(answered) => answered == method,
        None => !METHODS_WITH_RESPONSE_BODY.contains(&method),
    }
}

/// Methods whose success is never [`Response::Empty`].
const METHODS_WITH_RESPONSE_BODY: [&str; 14] = [
    "UpdateWorkflow",
    "CompleteWorkflowTask",
    "RespondActivityTask",
    "StartWorkflow",
    "SignalWithStartWorkflow",
    "QueryWorkflow",
    "DescribeWorkflow",
    "ListWorkflows",
    "GetHistory",
    "GetResult",
    "PollWorkflowTask",
    "PollActivityTask",
    "HeartbeatActivityTask",
    "DescribeTaskQueue",
];

/// The body of a success: the response's inner struct as JSON (`{}` for `Empty`).
pub fn encode_response(response: &Response) -> Vec<u8> {
    match response {
        Response::Empty => b"{}".to_vec(),
        Response::StartWorkflow(inner) => to_json(inner),
        Response::SignalWithStartWorkflow(inner) => to_json(inner),
        Response::QueryWorkflow(inner) => to_json(inner),
        Response::DescribeWorkflow(inner) => to_json(inner),
        Response::ListWorkflows(inner) => to_json(inner),
        Response::GetHistory(inner) => to_json(inner),
        Response::GetResult(inner) => to_json(inner),
        Response::PollWorkflowTask(inner) => to_json(inner),
        Response::PollActivityTask(inner) => to_json(inner),
        Response::HeartbeatActivityTask(inner) => to_json(inner),
        Response::CompleteWorkflowTask(inner) => to_json(inner),
        Response::RespondActivityTask(inner) => to_json(inner),
        Response::DescribeTaskQueue(inner) => to_json(inner),
        Response::UpdateWorkflow(inner) => to_json(inner),
    }
}

/// Decodes the body of a success to `method`.
pub fn decode_response(method: &str, body: &[u8]) -> Result<Response, serde_json::Error> {
    use serde_json::from_slice;
    let response = match method {
        "StartWorkflow" | "StartChildWorkflow" => Response::StartWorkflow(from_slice(body)?),
        "SignalWithStartWorkflow" => Response::SignalWithStartWorkflow(from_slice(body)?),
        "QueryWorkflow" => Response::QueryWorkflow(from_slice(body)?),
        "UpdateWorkflow" => Response::UpdateWorkflow(from_slice(body)?),
        "DescribeWorkflow" => Response::DescribeWorkflow(from_slice(body)?),
        "ListWorkflows" => Response::ListWorkflows(from_slice(body)?),
        "GetHistory" => Response::GetHistory(from_slice(body)?),
        "GetResult" => Response::GetResult(from_slice(body)?),
        "PollWorkflowTask" => Response::PollWorkflowTask(from_slice(body)?),
        "PollActivityTask" => Response::PollActivityTask(from_slice(body)?),
        "HeartbeatActivityTask" => Response::HeartbeatActivityTask(from_slice(body)?),
        "CompleteWorkflowTask" => Response::CompleteWorkflowTask(from_slice(body)?),
        "RespondActivityTask" => Response::RespondActivityTask(from_slice(body)?),
        "DescribeTaskQueue" => Response::DescribeTaskQueue(from_slice(body)?),
        _ => {
            from_slice::<serde_json::Map<String, serde_json::Value>>(body)?;
            Response::Empty
        }
    };
    assert!(response_fits(method, &response) || !METHODS.contains(&method));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::*;

    #[test]
    fn every_request_variant_has_a_method_and_round_trips() {
        let run = RunRef {
            workflow_id: "w".into(),
            run_id: Some("r".into()),
        };
        let poll = PollTaskRequest {
            task_queue: "q".into(),
            identity: "i".into(),
            workflow_types: vec!["t".into()],
        };
        let requests = [
            Request::DescribeWorkflow(run.clone()),
            Request::ListWorkflows(ListWorkflowsRequest::default()),
            Request::PollWorkflowTask(poll.clone()),
            Request::PollActivityTask(poll),
            Request::GetResult(GetResultRequest { run, wait_ms: 5 }),
            Request::SignalWithStartWorkflow(SignalWithStartWorkflowRequest {
                start: StartWorkflowRequest {
                    workflow_id: "w".into(),
                    workflow_type: "t".into(),
                    task_queue: "q".into(),
                    input: serde_json::json!({"n": 1}),
                    execution_timeout_ms: Some(5),
                    workflow_task_timeout_ms: None,
                    id_reuse_policy: IdReusePolicy::RejectDuplicate,
                    request_id: "r".into(),
                    identity: "i".into(),
                    start_delay_ms: None,
                    retry_policy: None,
                    cron_schedule: None,
                    search_attributes: Default::default(),
                    memo: Default::default(),
                },
                signal_name: "s".into(),
                signal_input: serde_json::json!([1, 2]),
            }),
            Request::DescribeTaskQueue(DescribeTaskQueueRequest {
                task_queue: Some("q".into()),
            }),
            Request::UpdateWorkflow(UpdateWorkflowRequest {
                run: RunRef {
                    workflow_id: "w".into(),
                    run_id: None,
                },
                update_name: "u".into(),
                input: serde_json::json!([3]),
                update_id: "id".into(),
                identity: "i".into(),
            }),
        ];
        let Request::SignalWithStartWorkflow(with_start) = &requests[5] else {
            unreachable!("the sixth is a signal-with-start")
        };
        let start = with_start.start.clone();
        for request in requests {
            let method = request.method();
            assert!(METHODS.contains(&method), "{method} is routed");
            let body = encode_request(&request);
            assert_eq!(decode_request(method, &body).unwrap(), request);
        }
        let child = Request::StartChildWorkflow(crate::api::StartChildWorkflowRequest {
            start,
            parent: crate::history::ParentExecution {
                workflow_id: "p".into(),
                run_id: "r".into(),
                initiated_event_id: 5,
            },
        });
        let body = encode_request(&child);
        assert_eq!(decode_request("StartChildWorkflow", &body).unwrap(), child);
        assert!(response_fits(
            "StartChildWorkflow",
            &Response::StartWorkflow(crate::api::StartWorkflowResponse { run_id: "r".into() })
        ));
        assert_eq!(METHODS.len(), 20);
    }

    #[test]
    fn a_malformed_body_names_the_shape_line_and_column() {
        let error = decode_request("StartWorkflow", b"{\n \"workflow_id\": 3}").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("StartWorkflowRequest"), "{message}");
        assert!(message.contains("line 2 column"), "{message}");
        let error = decode_request("Nope", b"{}").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("StartWorkflow, StartChildWorkflow, SignalWorkflow"),
            "{error}"
        );
    }

    #[test]
    fn responses_decode_to_the_variant_of_their_method() {
        let started = Response::StartWorkflow(StartWorkflowResponse { run_id: "r".into() });
        let body = encode_response(&started);
        assert_eq!(decode_response("StartWorkflow", &body).unwrap(), started);
        assert_eq!(
            decode_response("SignalWorkflow", b"{}").unwrap(),
            Response::Empty
        );
        assert!(decode_response("SignalWorkflow", b"[]").is_err());
        assert!(response_fits("SignalWorkflow", &Response::Empty));
        assert!(!response_fits("StartWorkflow", &Response::Empty));
        assert!(!response_fits("GetResult", &started));
    }
}
