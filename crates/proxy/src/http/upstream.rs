//! Sending a routed request to its cluster: attempts, retries, timeouts and
//! circuit breakers. The decisions are the pure functions of `resilience`;
//! this file does the I/O and the bookkeeping around them.
//!
//! One request, in order: the retry budget counts it; each attempt picks an
//! endpoint (not one already tried, where possible), takes a `max_requests`
//! slot, sends within the per-try timeout and what is left of the route
//! timeout, and reports the result to outlier detection. A failure the
//! route's `retryOn` covers is retried after a jittered backoff when the
//! attempts, the budget, `maxRetries`, the body buffer and the deadline all
//! allow it; otherwise the response says that this proxy already decided
//! (`x-trellis-retried`), so proxies further from the upstream do not retry
//! it again and a chain of proxies cannot multiply a storm.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};

use super::reason::ResetKind;
use super::replay::ReplayBody;
use super::{Body, ProxyError, forward};
use crate::balance::Endpoint;
use crate::cluster::Cluster;
use crate::resilience::breaker::{Overflow, Permit, Slot};
use crate::resilience::grpc_timeout;
use crate::resilience::outlier::{self, CallResult};
use crate::resilience::retry::{self, Outcome, RetryPolicy, RetryReason};
use crate::telemetry::metrics::Denied;
use crate::worker::Worker;

/// On a response (or local reply) whose failure this proxy could have
/// retried: how many retries it made. Outer proxies do not retry such a
/// response again.
pub const RETRIED_HEADER: &str = "x-trellis-retried";
/// On every retry sent upstream: which try this is (2 = the first retry).
pub const ATTEMPT_HEADER: &str = "x-trellis-attempt";

/// Requests that provably never reached the upstream are sent again at most
/// this many times, whatever the route's policy; it bounds the loop when
/// every pooled connection turns out closed.
const MAX_RESENDS: u32 = 3;

/// The request as it goes upstream, kept so that it can be sent again.
#[derive(Debug)]
pub struct RequestTemplate {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: TemplateBody,
    pub grpc: bool,
}

#[derive(Debug)]
pub enum TemplateBody {
    Empty,
    /// Each attempt reads a replay of it.
    Replay(ReplayBody),
}

impl RequestTemplate {
    /// From a request already addressed to the upstream (see
    /// `forward::set_target`). A body goes through a replay buffer of
    /// `replay_limit` bytes.
    pub fn new(req: Request<hyper::body::Incoming>, grpc: bool, replay_limit: usize) -> Self {
        let (parts, body) = req.into_parts();
        let body = if http_body::Body::is_end_stream(&body) {
            TemplateBody::Empty
        } else {
            TemplateBody::Replay(ReplayBody::new(body, replay_limit))
        };
        RequestTemplate {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            body,
            grpc,
        }
    }

    /// Can the whole body still be sent again?
    pub fn can_replay(&self) -> bool {
        match &self.body {
            TemplateBody::Empty => true,
            TemplateBody::Replay(b) => b.can_replay(),
        }
    }

    /// Has the client sent all of its body (so a copy holds all of it)?
    pub fn body_complete(&self) -> bool {
        match &self.body {
            TemplateBody::Empty => true,
            TemplateBody::Replay(b) => b.is_complete(),
        }
    }

    pub fn path_and_query(&self) -> PathAndQuery {
        self.uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
    }

    /// A fresh request for one attempt.
    pub fn build(&self) -> Request<Body> {
        let body = match &self.body {
            TemplateBody::Empty => Body::Empty,
            TemplateBody::Replay(b) => Body::Replay(b.replay()),
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }

    fn is_idempotent(&self) -> bool {
        // RFC 9110 §9.2.2: these may be sent again automatically.
        matches!(
            self.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        )
    }
}

/// When the whole request must be answered by.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: Instant,
    pub timeout: Duration,
    /// It came from the caller's `grpc-timeout` (not the route's timeout).
    pub from_caller: bool,
}

/// The route timeout and the caller's `grpc-timeout`, whichever ends first.
pub fn deadline(
    start: Instant,
    route_timeout: Option<Duration>,
    headers: &HeaderMap,
    grpc: bool,
) -> Option<Deadline> {
    let caller = grpc
        .then(|| headers.get("grpc-timeout"))
        .flatten()
        .and_then(|v| grpc_timeout::parse(v.as_bytes()));
    let timeout = grpc_timeout::effective(route_timeout, caller)?;
    Some(Deadline {
        at: start + timeout,
        timeout,
        from_caller: caller == Some(timeout) && route_timeout != Some(timeout),
    })
}

/// A failed request: the error, and whether this proxy considered retrying
/// it (so its local reply carries [`RETRIED_HEADER`] too).
#[derive(Debug)]
pub struct Failed {
    pub error: ProxyError,
    pub retried: Option<u32>,
}

impl From<ProxyError> for Failed {
    fn from(error: ProxyError) -> Self {
        Failed {
            error,
            retried: None,
        }
    }
}

/// Send the request to `cluster`, retrying as `policy` allows.
pub async fn send(
    w: &Worker,
    cluster: &Cluster,
    policy: &RetryPolicy,
    hash: Option<u64>,
    deadline: Option<Deadline>,
    template: &RequestTemplate,
) -> Result<(Response<Body>, Arc<Endpoint>), Failed> {
    cluster.budget.on_request(Instant::now());
    let mut tried: Vec<SocketAddr> = Vec::new();
    // The first try's endpoint, for retryRemoteLocalities (an Arc clone, not
    // a copy of its locality: nothing is allocated when nothing fails).
    let mut first: Option<Arc<Endpoint>> = None;
    let mut retries = 0u32;
    let mut resends = 0u32;
    // Held while a retry is in flight (`maxRetries` counts concurrent retries).
    let mut _retry_permit: Option<Permit> = None;
    loop {
        let mut endpoint = cluster.balancer.pick(hash, &tried);
        // Istio's retryRemoteLocalities: false keeps retries in the first
        // try's locality; when every endpoint there has been tried, one of
        // them is tried again rather than a remote one.
        if let (Some(first), Some(e)) = (&first, &endpoint)
            && !policy.retry_remote_localities
            && e.locality != first.locality
        {
            endpoint = cluster.balancer.pick(hash, &[]);
        }
        let endpoint = endpoint.ok_or_else(|| ProxyError::NoHealthyUpstream {
            cluster: cluster.name.to_string(),
        })?;
        if first.is_none() {
            first = Some(endpoint.clone());
        }
        let _request = cluster
            .breaker
            .try_acquire(Slot::Request)
            .map_err(|o| overflow(cluster, o))?;
        let mut req = template.build();
        let attempt = retries + resends + 1;
        if attempt > 1 {
            req.headers_mut()
                .insert(ATTEMPT_HEADER, HeaderValue::from(attempt));
        }
        let now = Instant::now();
        if let Some(d) = deadline
            && template.grpc
        {
            let left = d.at.saturating_duration_since(now);
            if let Ok(v) = HeaderValue::from_str(&grpc_timeout::format(left)) {
                req.headers_mut().insert("grpc-timeout", v);
            }
        }

        let guard = endpoint.start_request();
        let result = attempt_once(w, cluster, &endpoint, policy, deadline, now, req).await;
        let outcome = outcome_of(&result, template.is_idempotent());
        if let Some(settings) = &cluster.outlier
            && let Some(call) = call_result(&outcome)
        {
            let endpoints = cluster.balancer.endpoints();
            if let Some(ej) = outlier::record(settings, endpoints, &endpoint, call, now) {
                cluster.stats.ejection(ej.reason);
                cluster.stats.ejected.inc();
                tracing::info!(cluster = %cluster.name, endpoint = %ej.addr, reason = ej.reason,
                    duration = ?ej.duration, "outlier detection ejected an endpoint");
            }
        }
        let reason = outcome
            .as_ref()
            .and_then(|o| retry::retry_reason(&policy.retry_on, o));
        let Some(reason) = reason else {
            return finish(result, guard, now, endpoint, None);
        };
        let already_retried = matches!(&result, Ok(r) if r.headers().contains_key(RETRIED_HEADER));
        let denied = if already_retried {
            Some(Denied::RetriedUpstream)
        } else if reason == RetryReason::NeverSent {
            (resends >= MAX_RESENDS).then_some(Denied::Attempts)
        } else if retries >= policy.retries {
            Some(Denied::Attempts)
        } else if !template.can_replay() {
            Some(Denied::Body)
        } else if deadline.is_some_and(|d| Instant::now() >= d.at) {
            Some(Denied::Deadline)
        } else if !cluster.budget.try_retry(Instant::now()) {
            Some(Denied::Budget)
        } else {
            match cluster.breaker.try_acquire(Slot::Retry) {
                Ok(p) => {
                    _retry_permit = Some(p);
                    None
                }
                Err(_) => Some(Denied::MaxRetries),
            }
        };
        if let Some(why) = denied {
            cluster.stats.denied(why);
            // A response marked upstream keeps the inner proxy's count.
            let mark = (!already_retried).then_some(retries);
            return finish(result, guard, now, endpoint, mark);
        }
        cluster.stats.retry(reason);
        tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr,
            reason = reason.as_str(), attempt, "retrying");
        if let Ok(resp) = result {
            drain(resp);
        }
        drop(guard);
        if policy.ignore_previous_hosts {
            tried.push(endpoint.addr);
        }
        if reason == RetryReason::NeverSent {
            resends += 1;
            continue;
        }
        let pause = retry::backoff(
            retries,
            retry::BACKOFF_BASE,
            retry::BACKOFF_MAX,
            rand::random::<f64>(),
        );
        retries += 1;
        let pause = match deadline {
            Some(d) => pause.min(d.at.saturating_duration_since(Instant::now())),
            None => pause,
        };
        tokio::time::sleep(pause).await;
    }
}

/// Read a failed response to its end in the background, so its HTTP/1.1
/// connection goes back to the pool instead of being closed: a storm of
/// retries should not also be a storm of new connections. Small bodies only,
/// and not for long; anything else just closes.
fn drain(resp: Response<Body>) {
    const DRAIN_MAX: u64 = 64 * 1024;
    const DRAIN_TIME: Duration = Duration::from_secs(1);
    let body = resp.into_body();
    if http_body::Body::is_end_stream(&body) {
        return;
    }
    if http_body::Body::size_hint(&body)
        .upper()
        .is_none_or(|n| n > DRAIN_MAX)
    {
        return;
    }
    tokio::spawn(async move {
        use http_body_util::BodyExt;
        let _ = tokio::time::timeout(DRAIN_TIME, body.collect()).await;
    });
}

fn finish(
    result: Result<Response<Body>, ProxyError>,
    guard: crate::balance::RequestGuard,
    started: Instant,
    endpoint: Arc<Endpoint>,
    retried: Option<u32>,
) -> Result<(Response<Body>, Arc<Endpoint>), Failed> {
    match result {
        Ok(mut resp) => {
            guard.finish(started.elapsed());
            if let Some(n) = retried {
                resp.headers_mut()
                    .insert(RETRIED_HEADER, HeaderValue::from(n));
            }
            Ok((resp, endpoint))
        }
        Err(error) => Err(Failed { error, retried }),
    }
}

/// One try, within the per-try timeout and the deadline.
async fn attempt_once(
    w: &Worker,
    cluster: &Cluster,
    endpoint: &Endpoint,
    policy: &RetryPolicy,
    deadline: Option<Deadline>,
    now: Instant,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    let addr = endpoint.addr;
    let sent = forward::send(
        &w.pool,
        cluster.protocol,
        addr,
        cluster.tls.for_endpoint(&endpoint.labels).map(|t| &**t),
        &cluster.upstream,
        &cluster.breaker,
        req,
    );
    let left = deadline.map(|d| d.at.saturating_duration_since(now));
    let (limit, per_try) = match (policy.per_try_timeout, left) {
        (Some(p), Some(l)) if p < l => (Some(p), true),
        (_, Some(l)) => (Some(l), false),
        (Some(p), None) => (Some(p), true),
        (None, None) => (None, false),
    };
    // The pool does not know the cluster's name; its overflows get it here.
    let named = |r: Result<Response<Body>, ProxyError>| match r {
        Err(ProxyError::Overflow { limit, .. }) => Err(overflow(cluster, limit)),
        r => r,
    };
    let Some(limit) = limit else {
        return named(sent.await);
    };
    match tokio::time::timeout(limit, sent).await {
        Ok(r) => named(r),
        Err(_) if per_try => Err(ProxyError::PerTryTimeout {
            addr,
            timeout: limit,
        }),
        Err(_) => Err(match deadline {
            Some(d) if d.from_caller => ProxyError::DeadlineExceeded {
                addr,
                timeout: d.timeout,
            },
            Some(d) => ProxyError::UpstreamTimeout {
                addr,
                timeout: d.timeout,
            },
            None => ProxyError::UpstreamTimeout {
                addr,
                timeout: limit,
            },
        }),
    }
}

fn overflow(cluster: &Cluster, o: Overflow) -> ProxyError {
    cluster.stats.overflow(o);
    ProxyError::Overflow {
        cluster: cluster.name.to_string(),
        limit: o,
    }
}

/// What the retry decision and outlier detection see of one try.
fn outcome_of(result: &Result<Response<Body>, ProxyError>, idempotent: bool) -> Option<Outcome> {
    Some(match result {
        Ok(resp) => Outcome::Response {
            status: resp.status().as_u16(),
            grpc_status: resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        },
        // A failed TLS handshake is a connection that could not be made:
        // retried (connect-failure) and counted against the endpoint.
        Err(
            ProxyError::ConnectFailed { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::UpstreamTlsHandshake { .. }
            | ProxyError::UpstreamIdentityMismatch { .. },
        ) => Outcome::ConnectFailure,
        Err(ProxyError::UpstreamReset { kind, .. }) => match kind {
            ResetKind::NotSent => Outcome::NeverSent,
            ResetKind::ClosedIdle if idempotent => Outcome::NeverSent,
            ResetKind::Refused => Outcome::RefusedStream,
            ResetKind::ClosedIdle | ResetKind::Reset => Outcome::Reset,
        },
        Err(ProxyError::PerTryTimeout { .. }) => Outcome::PerTryTimeout,
        Err(_) => return None,
    })
}

/// What outlier detection counts: not requests that never reached the
/// endpoint (a connection it closed while idle is not a failure of it).
fn call_result(outcome: &Option<Outcome>) -> Option<CallResult> {
    match outcome.as_ref()? {
        Outcome::Response { status, .. } if *status >= 500 => Some(CallResult::Status(*status)),
        Outcome::Response { .. } => Some(CallResult::Success),
        Outcome::NeverSent => None,
        Outcome::ConnectFailure
        | Outcome::RefusedStream
        | Outcome::Reset
        | Outcome::PerTryTimeout => Some(CallResult::LocalFailure),
    }
}

/// The authority a mirror sends: the host with `-shadow` appended, as Istio
/// (Envoy) does, so the mirror target can tell shadow traffic apart.
pub fn shadow_authority(a: &Authority) -> Option<Authority> {
    let shadow = match a.port() {
        Some(p) => format!("{}-shadow:{}", a.host(), p),
        None => format!("{}-shadow", a.host()),
    };
    Authority::try_from(shadow).ok()
}
