//! When the next hop fails: what went wrong (`UpstreamFailure`) and the
//! reply a stage sends its caller (`error_reply`), so that the user of the
//! gateway learns which hop failed and why, however deep it was.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The JSON body of every error a stage answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One sentence for the operator.
    pub error: String,
    /// The call that failed, `caller -> callee` (service names).
    pub hop: String,
    /// The status the callee (or its sidecar) answered, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// Why: the sidecar's `x-trellis-reason` when it made the reply
    /// (`rbac_denied`, `upstream_connect_failure`, `fault_injected`, ...),
    /// else this demo's own token (`sidecar_unreachable`, `timeout`,
    /// `bad_response`, `bad_request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub request_id: String,
    /// Workloads the error was passed back through after the failed hop,
    /// nearest first.
    #[serde(default)]
    pub via: Vec<String>,
}

/// A failed call to the next hop.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum UpstreamFailure {
    #[error("cannot connect to {addr}: {detail}")]
    Unreachable {
        addr: String,
        /// True when `addr` is the sidecar, not the callee itself.
        sidecar: bool,
        detail: String,
    },
    #[error("the connection failed mid-request: {detail}")]
    Broken { detail: String },
    #[error("no answer within {after:?}")]
    Timeout { after: Duration },
    #[error("answered {status}")]
    Status {
        status: u16,
        /// The `x-trellis-reason` header: set when the sidecar, not the
        /// callee, made the reply.
        reason: Option<String>,
        body: Bytes,
    },
    #[error("answered 2xx with a body that is not the expected JSON: {detail}")]
    BadBody { detail: String },
}

/// The status and body a stage (`me`, a workload in `service`) answers when
/// its call to `callee` failed.
///
/// Overloaded or unreachable upstreams (503, 504, 429, connection and
/// timeout failures) become 503, which callers may retry; anything else
/// (a refusal such as 403 `rbac_denied`, a 500, nonsense) becomes 502. An
/// error that already came from a deeper stage keeps its hop, reason and
/// status, so the user sees the hop that really failed.
pub fn error_reply(
    service: &str,
    me: &str,
    callee: &str,
    request_id: &str,
    failure: &UpstreamFailure,
) -> (StatusCode, ErrorBody) {
    if let UpstreamFailure::Status {
        status,
        body,
        reason: None,
        ..
    } = failure
        && let Ok(mut inner) = serde_json::from_slice::<ErrorBody>(body)
    {
        inner.via.push(me.to_string());
        let status = match *status {
            502 | 503 => StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
            _ => StatusCode::BAD_GATEWAY,
        };
        return (status, inner);
    }
    let hop = format!("{service} -> {callee}");
    let (status, upstream_status, reason, error) = match failure {
        UpstreamFailure::Unreachable { sidecar, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            Some(if *sidecar {
                "sidecar_unreachable"
            } else {
                "connect_failure"
            }),
            format!("{service} could not call {callee}: {failure}"),
        ),
        UpstreamFailure::Broken { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            Some("connection_broken"),
            format!("{service} lost its call to {callee}: {failure}"),
        ),
        UpstreamFailure::Timeout { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            Some("timeout"),
            format!("{service} gave up on {callee}: {failure}"),
        ),
        UpstreamFailure::Status { status, reason, .. } => {
            let mapped = match status {
                429 | 503 | 504 => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_GATEWAY,
            };
            let by = if reason.is_some() {
                format!("{service}'s sidecar")
            } else {
                callee.to_string()
            };
            let why = reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            (
                mapped,
                Some(*status),
                reason.as_deref(),
                format!("{service} -> {callee} failed: {by} answered {status}{why}"),
            )
        }
        UpstreamFailure::BadBody { .. } => (
            StatusCode::BAD_GATEWAY,
            None,
            Some("bad_response"),
            format!("{callee} {failure}"),
        ),
    };
    (
        status,
        ErrorBody {
            error,
            hop,
            upstream_status,
            reason: reason.map(str::to_owned),
            request_id: request_id.to_string(),
            via: vec![me.to_string()],
        },
    )
}

/// The body of a request this stage refuses itself (bad JSON, empty
/// prompt): 400 with the same shape as upstream errors.
pub fn bad_request(service: &str, me: &str, request_id: &str, why: String) -> ErrorBody {
    ErrorBody {
        error: why,
        hop: format!("client -> {service}"),
        upstream_status: None,
        reason: Some("bad_request".to_string()),
        request_id: request_id.to_string(),
        via: vec![me.to_string()],
    }
}
