//! Where the inbound path asks for a decision: per HTTP request, and once
//! per opaque TCP connection. Builds the decision's view of the traffic
//! (borrowed, no allocation), records the outcome (audit line, reason
//! metric) and says whether to go on. With no policy for this workload it
//! returns at once.

use std::time::SystemTime;

use http::{Request, header};

use super::audit::{self, Entry, HttpFields};
use super::decide::{self, HttpRequest, normalize_path};
use crate::http::ProxyError;
use crate::peer::PeerInfo;
use crate::telemetry::metrics::Direction;
use crate::worker::Worker;

/// May this inbound HTTP request go to the app?
pub fn check_request<B>(w: &Worker, peer: &PeerInfo, req: &Request<B>) -> Result<(), ProxyError> {
    let config = w.store.current.load();
    if config.authz.is_empty() {
        return Ok(());
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("");
    let path = normalize_path(req.uri().path());
    let http = HttpRequest {
        host,
        method: req.method().as_str(),
        path: &path,
        headers: req.headers(),
    };
    let decision = decide::decide(
        &config.authz,
        &decide::Request {
            principal: peer.principal.as_deref(),
            source_ip: peer.addr.ip(),
            port: w.inbound_port,
            http: Some(http),
        },
    );
    let allowed = decision.allowed();
    if audit::wanted(&decision)
        && let Some(log) = &w.audit
    {
        log.record(Entry {
            time: SystemTime::now(),
            principal: peer.principal.clone(),
            source: peer.addr,
            workload: w.workload.clone(),
            port: w.inbound_port,
            http: Some(HttpFields {
                host: host.to_string(),
                method: http.method.to_string(),
                path: path.into_owned(),
            }),
            decision,
        });
    }
    if allowed {
        Ok(())
    } else {
        Err(ProxyError::RbacDenied)
    }
}

/// May this inbound opaque TCP connection reach the app? A `false` is
/// counted as an `rbac_denied` local reply; the caller closes the
/// connection.
pub fn check_connection(w: &Worker, peer: &PeerInfo) -> bool {
    let config = w.store.current.load();
    if config.authz.is_empty() {
        return true;
    }
    let decision = decide::decide(
        &config.authz,
        &decide::Request {
            principal: peer.principal.as_deref(),
            source_ip: peer.addr.ip(),
            port: w.inbound_port,
            http: None,
        },
    );
    let allowed = decision.allowed();
    if !allowed {
        w.metrics
            .local_reply(Direction::inbound, ProxyError::RbacDenied.reason());
        tracing::debug!(peer = %peer.addr, "inbound tcp connection denied by authorization policy");
    }
    if audit::wanted(&decision)
        && let Some(log) = &w.audit
    {
        log.record(Entry {
            time: SystemTime::now(),
            principal: peer.principal.clone(),
            source: peer.addr,
            workload: w.workload.clone(),
            port: w.inbound_port,
            http: None,
            decision,
        });
    }
    allowed
}
