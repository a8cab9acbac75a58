//! Responses the proxy makes itself. Each says why, in `x-trellis-reason`
//! (a short stable token, also the `reason` label of
//! `trellis_local_replies_total`) and in a one-line body for humans.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use super::Body;

pub const REASON_HEADER: &str = "x-trellis-reason";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the request names no host (send a Host header or an absolute URI)")]
    MissingHost,
    #[error("no service or VirtualService matches host {host:?}")]
    UnknownHost { host: String },
    #[error("host {host} has no port {port} (its ports: {ports})")]
    UnknownPort {
        host: String,
        port: u16,
        ports: String,
    },
    #[error("no route of {host} matches this request")]
    NoRouteMatch { host: String },
    #[error("port {port} of {host} is not HTTP; open a CONNECT tunnel to it instead")]
    NotHttpPort { host: String, port: u16 },
    #[error(
        "port {port} of {host} is HTTP; send requests to the proxy directly instead of CONNECT"
    )]
    ConnectToHttpPort { host: String, port: u16 },
    #[error("no healthy endpoint in cluster {cluster}")]
    NoHealthyUpstream { cluster: String },
    #[error("connecting to {addr} failed: {source}")]
    ConnectFailed {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with upstream {addr} failed: {detail}")]
    UpstreamTlsHandshake { addr: SocketAddr, detail: String },
    #[error("upstream {addr} is not allowed to serve this destination (secure naming): {detail}")]
    UpstreamIdentityMismatch { addr: SocketAddr, detail: String },
    #[error("cannot originate TLS to {addr}: {detail}")]
    UpstreamTlsUnavailable { addr: SocketAddr, detail: String },
    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("upstream {addr} closed or reset the connection before responding ({kind}): {detail}")]
    UpstreamReset {
        addr: SocketAddr,
        detail: String,
        kind: ResetKind,
    },
    #[error("upstream {addr} did not respond within the route timeout of {timeout:?}")]
    UpstreamTimeout { addr: SocketAddr, timeout: Duration },
    #[error("the caller's deadline (grpc-timeout) of {timeout:?} passed before {addr} responded")]
    DeadlineExceeded { addr: SocketAddr, timeout: Duration },
    #[error("upstream {addr} did not respond within the per-try timeout of {timeout:?}")]
    PerTryTimeout { addr: SocketAddr, timeout: Duration },
    #[error(
        "cluster {cluster} is at its {} limit (DestinationRule connectionPool); the request was not sent",
        limit.as_str()
    )]
    Overflow {
        cluster: String,
        limit: crate::resilience::breaker::Overflow,
    },
    #[error("rate limit of {policy} exceeded (RateLimitPolicy)")]
    RateLimited { policy: String },
    #[error("fault injected by the route's VirtualService (fault.abort)")]
    FaultAbort {
        status: StatusCode,
        grpc: Option<u32>,
    },
    #[error("cluster {cluster} speaks HTTP/2, which cannot carry an HTTP/1.1 Upgrade")]
    UpgradeUnsupported { cluster: String },
    #[error("no application address is configured for inbound traffic (--app)")]
    NoApp,
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// Deliberately vague to the caller (which policy said no is for the
    /// audit log, not for whoever is probing).
    #[error("RBAC: access denied by an AuthorizationPolicy")]
    RbacDenied,
}

/// What is known about a request whose connection failed: decides whether
/// it may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetKind {
    /// It never reached the upstream (hyper had not started writing it).
    NotSent,
    /// A reused keep-alive connection ended with no response at all: the
    /// upstream most likely closed it idle while the request was on its way.
    ClosedIdle,
    /// HTTP/2 REFUSED_STREAM: the server did not process it.
    Refused,
    /// It may have been processed.
    Reset,
}

impl std::fmt::Display for ResetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResetKind::NotSent => "request not sent",
            ResetKind::ClosedIdle => "idle connection closed by the upstream",
            ResetKind::Refused => "stream refused",
            ResetKind::Reset => "after the request was sent",
        })
    }
}

impl ProxyError {
    /// The stable token users grep for and alert on.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::MissingHost => "missing_host",
            ProxyError::UnknownHost { .. } | ProxyError::UnknownPort { .. } => "route_not_found",
            ProxyError::NoRouteMatch { .. } => "route_not_found",
            ProxyError::NotHttpPort { .. } => "not_http_port",
            ProxyError::ConnectToHttpPort { .. } => "connect_to_http_port",
            ProxyError::NoHealthyUpstream { .. } => "no_healthy_upstream",
            ProxyError::ConnectFailed { .. } => "upstream_connect_failure",
            ProxyError::ConnectTimeout { .. } => "upstream_connect_timeout",
            ProxyError::UpstreamTlsHandshake { .. } => "upstream_tls_handshake",
            ProxyError::UpstreamIdentityMismatch { .. } => "upstream_identity_mismatch",
            ProxyError::UpstreamTlsUnavailable { .. } => "upstream_tls_unavailable",
            ProxyError::UpstreamReset { .. } => "upstream_reset",
            ProxyError::UpstreamTimeout { .. } | ProxyError::DeadlineExceeded { .. } => {
                "upstream_timeout"
            }
            ProxyError::PerTryTimeout { .. } => "upstream_per_try_timeout",
            ProxyError::Overflow { .. } => "overflow",
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::FaultAbort { .. } => "fault_injected",
            ProxyError::UpgradeUnsupported { .. } => "upgrade_unsupported",
            ProxyError::NoApp => "no_app",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::RbacDenied => "rbac_denied",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingHost | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UnknownHost { .. }
            | ProxyError::UnknownPort { .. }
            | ProxyError::NoRouteMatch { .. } => StatusCode::NOT_FOUND,
            ProxyError::NotHttpPort { .. } | ProxyError::ConnectToHttpPort { .. } => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::NoHealthyUpstream { .. }
            | ProxyError::ConnectFailed { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::UpstreamTlsHandshake { .. }
            | ProxyError::UpstreamIdentityMismatch { .. }
            | ProxyError::UpstreamTlsUnavailable { .. }
            | ProxyError::NoApp => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamReset { .. } | ProxyError::UpgradeUnsupported { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout { .. }
            | ProxyError::DeadlineExceeded { .. }
            | ProxyError::PerTryTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Overflow { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::FaultAbort { status, .. } => *status,
            ProxyError::RbacDenied => StatusCode::FORBIDDEN,
        }
    }

    /// The gRPC status a gRPC caller gets instead of the HTTP status:
    /// Envoy's mapping of HTTP statuses, except that timeouts are
    /// DEADLINE_EXCEEDED and rate limits RESOURCE_EXHAUSTED, which is what
    /// gRPC clients act on.
    pub fn grpc_status(&self) -> u32 {
        match self {
            ProxyError::FaultAbort {
                grpc: Some(code), ..
            } => *code,
            ProxyError::UpstreamTimeout { .. }
            | ProxyError::DeadlineExceeded { .. }
            | ProxyError::PerTryTimeout { .. } => 4,
            ProxyError::RateLimited { .. } => 8,
            _ => match self.status().as_u16() {
                400 => 13,
                401 => 16,
                403 => 7,
                404 => 12,
                429 | 502..=504 => 14,
                _ => 2,
            },
        }
    }

    /// The response sent to the client: for a gRPC request, a trailers-only
    /// gRPC response (HTTP 200, `grpc-status` and `grpc-message` in the
    /// headers), since gRPC clients ignore HTTP statuses.
    pub fn to_response_for(&self, grpc: bool) -> Response<Body> {
        if !grpc {
            return self.to_response();
        }
        let mut resp = Response::new(Body::Empty);
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(self.grpc_status()));
        // grpc-message is percent-encoded; ours are plain ASCII, so only the
        // characters outside the printable range (and '%') need escaping.
        let msg: String = self
            .to_string()
            .chars()
            .map(|c| match c {
                ' '..='~' if c != '%' => c.to_string(),
                c => format!("%{:02X}", c as u32 & 0xff),
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&msg) {
            h.insert("grpc-message", v);
        }
        h.insert(REASON_HEADER, HeaderValue::from_static(self.reason()));
        resp
    }

    /// The response sent to the client.
    pub fn to_response(&self) -> Response<Body> {
        let mut resp = Response::new(Body::full(format!("{self}\n")));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(REASON_HEADER, HeaderValue::from_static(self.reason()));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_local_reply_says_why() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let cases = [
            (
                ProxyError::UnknownHost { host: "x".into() },
                404,
                "route_not_found",
            ),
            (
                ProxyError::NoHealthyUpstream {
                    cluster: "c".into(),
                },
                503,
                "no_healthy_upstream",
            ),
            (
                ProxyError::ConnectFailed {
                    addr,
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                },
                503,
                "upstream_connect_failure",
            ),
            (
                ProxyError::UpstreamReset {
                    addr,
                    detail: "eof".into(),
                    kind: ResetKind::Reset,
                },
                502,
                "upstream_reset",
            ),
            (
                ProxyError::UpstreamTimeout {
                    addr,
                    timeout: Duration::from_secs(1),
                },
                504,
                "upstream_timeout",
            ),
            (ProxyError::RbacDenied, 403, "rbac_denied"),
            (
                ProxyError::UpstreamTlsHandshake {
                    addr,
                    detail: "unknown CA".into(),
                },
                503,
                "upstream_tls_handshake",
            ),
            (
                ProxyError::UpstreamIdentityMismatch {
                    addr,
                    detail: "spiffe://x".into(),
                },
                503,
                "upstream_identity_mismatch",
            ),
        ];
        for (err, status, reason) in cases {
            let resp = err.to_response();
            assert_eq!(resp.status().as_u16(), status, "{err}");
            assert_eq!(resp.headers()[REASON_HEADER], reason, "{err}");
        }
        // gRPC callers see PERMISSION_DENIED.
        assert_eq!(ProxyError::RbacDenied.grpc_status(), 7);
    }
}
