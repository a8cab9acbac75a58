//! Prometheus metrics, served by the admin listener at `/stats/prometheus`.
//! One registry per proxy process, passed down; no global statics.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::resilience::breaker::Overflow;
use crate::resilience::retry::RetryReason;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    outbound,
    inbound,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    pub route: String,
    pub cluster: String,
    pub code_class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub direction: Direction,
    pub cluster: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub direction: Direction,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterReasonLabels {
    pub cluster: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XdsLabels {
    /// `listener`, `route`, `cluster`, `endpoint`.
    pub r#type: &'static str,
    /// `ack` or `nack`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    /// `mtls` or `plaintext`.
    pub transport: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn class_index(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5) - 1)
}

pub struct Metrics {
    pub registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<ClusterLabels, Histogram, fn() -> Histogram>,
    local_replies: Family<ReasonLabels, Counter>,
    pub connections_active: Family<ListenerLabels, Gauge>,
    pub connections_total: Family<ListenerLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub tcp_bytes: Family<ClusterLabels, Counter>,
    retries: Family<ClusterReasonLabels, Counter>,
    retries_denied: Family<ClusterReasonLabels, Counter>,
    overflows: Family<ClusterReasonLabels, Counter>,
    ejections: Family<ClusterReasonLabels, Counter>,
    ejected: Family<ClusterLabels, Gauge>,
    mirrors: Family<ClusterReasonLabels, Counter>,
    faults: Family<ClusterReasonLabels, Counter>,
    rate_limited: Family<PolicyLabels, Counter>,
    xds_updates: Family<XdsLabels, Counter>,
    pub audit_written: Counter,
    pub audit_dropped: Counter,
    inbound_transport: Family<TransportLabels, Counter>,
    inbound_refused: Family<RefusedLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~52 s, doubling: fine enough for sidecar latencies, 20 buckets.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("trellis");
        let requests = Family::default();
        registry.register(
            "requests",
            "HTTP requests by direction, route, cluster and response code class",
            requests.clone(),
        );
        let request_duration: Family<ClusterLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from request received to upstream response headers, by cluster",
            request_duration.clone(),
        );
        let local_replies = Family::default();
        registry.register(
            "local_replies",
            "Responses the proxy generated itself, by reason (the x-trellis-reason header)",
            local_replies.clone(),
        );
        let connections_active = Family::default();
        registry.register(
            "connections_active",
            "Downstream connections open now, by listener",
            connections_active.clone(),
        );
        let connections_total = Family::default();
        registry.register(
            "connections",
            "Downstream connections accepted, by listener",
            connections_total.clone(),
        );
        let config_reloads = Family::default();
        registry.register(
            "config_reloads",
            "Config reloads by result (accepted, rejected)",
            config_reloads.clone(),
        );
        let xds_updates = Family::default();
        registry.register(
            "xds_updates",
            "xDS responses by resource type and result (ack, nack)",
            xds_updates.clone(),
        );
        let tcp_bytes = Family::default();
        registry.register(
            "tcp_bytes",
            "Bytes proxied on opaque TCP connections (both directions), by cluster",
            tcp_bytes.clone(),
        );
        let retries = Family::default();
        registry.register(
            "upstream_retries",
            "Retries sent, by cluster and the retryOn condition that caused them",
            retries.clone(),
        );
        let retries_denied = Family::default();
        registry.register(
            "upstream_retries_denied",
            "Retriable failures not retried, by cluster and why (budget, attempts, max_retries, body, deadline)",
            retries_denied.clone(),
        );
        let overflows = Family::default();
        registry.register(
            "upstream_overflow",
            "Requests refused by a circuit breaker (connectionPool limit), by cluster and limit",
            overflows.clone(),
        );
        let ejections = Family::default();
        registry.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection, by cluster and reason",
            ejections.clone(),
        );
        let ejected = Family::default();
        registry.register(
            "outlier_ejected_endpoints",
            "Endpoints ejected now, by cluster",
            ejected.clone(),
        );
        let mirrors = Family::default();
        registry.register(
            "mirror_requests",
            "Mirrored (shadow) requests by mirror cluster and result (sent, failed, skipped_body, skipped_limit)",
            mirrors.clone(),
        );
        let faults = Family::default();
        registry.register(
            "faults_injected",
            "Requests delayed or aborted by VirtualService fault injection, by cluster and kind",
            faults.clone(),
        );
        let rate_limited = Family::default();
        registry.register(
            "rate_limited",
            "Requests refused by a RateLimitPolicy, by policy",
            rate_limited.clone(),
        );
        let audit_written = Counter::default();
        registry.register(
            "audit_log_lines",
            "Audit log lines written (denials and AUDIT matches)",
            audit_written.clone(),
        );
        let audit_dropped = Counter::default();
        registry.register(
            "audit_log_dropped",
            "Audit log lines dropped because the writer was behind (the request was not slowed)",
            audit_dropped.clone(),
        );
        let inbound_transport = Family::default();
        registry.register(
            "inbound_connections_by_transport",
            "Inbound connections admitted, by transport (mtls, plaintext)",
            inbound_transport.clone(),
        );
        let inbound_refused = Family::default();
        registry.register(
            "inbound_connections_refused",
            "Inbound connections closed before reaching the app, by reason (plaintext_refused, tls_handshake, no_certificate)",
            inbound_refused.clone(),
        );
        Metrics {
            audit_written,
            audit_dropped,
            inbound_transport,
            inbound_refused,
            retries,
            retries_denied,
            overflows,
            ejections,
            ejected,
            mirrors,
            faults,
            rate_limited,
            registry,
            requests,
            request_duration,
            local_replies,
            connections_active,
            connections_total,
            config_reloads,
            tcp_bytes,
            xds_updates,
        }
    }

    /// Handles for one (route, cluster) pair, made once per config load.
    pub fn route_stats(&self, direction: Direction, route: &str, cluster: &str) -> RouteStats {
        let by_class = CODE_CLASSES.map(|code_class| {
            self.requests
                .get_or_create(&RequestLabels {
                    direction,
                    route: route.to_string(),
                    cluster: cluster.to_string(),
                    code_class,
                })
                .clone()
        });
        let duration = self
            .request_duration
            .get_or_create(&ClusterLabels {
                direction,
                cluster: cluster.to_string(),
            })
            .clone();
        RouteStats { by_class, duration }
    }

    pub fn local_reply(&self, direction: Direction, reason: &'static str) {
        self.local_replies
            .get_or_create(&ReasonLabels { direction, reason })
            .inc();
    }

    /// Handles for one cluster's resilience events, made once per config load.
    pub fn cluster_stats(&self, cluster: &str) -> ClusterStats {
        let labels = |reason: &'static str| ClusterReasonLabels {
            cluster: cluster.to_string(),
            reason,
        };
        ClusterStats {
            retries: RetryReason::ALL
                .map(|r| self.retries.get_or_create(&labels(r.as_str())).clone()),
            retries_denied: DENIED.map(|d| self.retries_denied.get_or_create(&labels(d)).clone()),
            overflows: OVERFLOWS.map(|o| self.overflows.get_or_create(&labels(o.as_str())).clone()),
            ejections: EJECTION_REASONS.map(|r| self.ejections.get_or_create(&labels(r)).clone()),
            ejected: self
                .ejected
                .get_or_create(&ClusterLabels {
                    direction: Direction::outbound,
                    cluster: cluster.to_string(),
                })
                .clone(),
            mirrors: MIRROR_RESULTS.map(|r| self.mirrors.get_or_create(&labels(r)).clone()),
            // One label at a time: a Family's guard must be gone before the
            // next get_or_create, which may need its write lock.
            faults: ["delay", "abort"].map(|k| self.faults.get_or_create(&labels(k)).clone()),
        }
    }

    pub fn rate_limited(&self, policy: &str) -> Counter {
        self.rate_limited
            .get_or_create(&PolicyLabels {
                policy: policy.to_string(),
            })
            .clone()
    }

    pub fn tcp_bytes(&self, direction: Direction, cluster: &str) -> Counter {
        self.tcp_bytes
            .get_or_create(&ClusterLabels {
                direction,
                cluster: cluster.to_string(),
            })
            .clone()
    }

    pub fn listener(&self, listener: &'static str) -> (Gauge, Counter) {
        let labels = ListenerLabels { listener };
        (
            self.connections_active.get_or_create(&labels).clone(),
            self.connections_total.get_or_create(&labels).clone(),
        )
    }

    /// An inbound connection admitted over `transport` (`mtls`, `plaintext`).
    pub fn inbound_admitted(&self, transport: &'static str) {
        self.inbound_transport
            .get_or_create(&TransportLabels { transport })
            .inc();
    }

    /// An inbound connection closed before reaching the app, and why.
    pub fn inbound_refused(&self, reason: &'static str) {
        self.inbound_refused
            .get_or_create(&RefusedLabels { reason })
            .inc();
    }

    pub fn reload(&self, accepted: bool) {
        let result = if accepted { "accepted" } else { "rejected" };
        self.config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// One xDS response handled: `kind` is the resource type's short name.
    pub fn xds_update(&self, kind: &'static str, acked: bool) {
        let result = if acked { "ack" } else { "nack" };
        self.xds_updates
            .get_or_create(&XdsLabels {
                r#type: kind,
                result,
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Why a retriable failure was not retried (`upstream_retries_denied` reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The retry budget of the destination was spent.
    Budget,
    /// The route's `attempts` were used up.
    Attempts,
    /// `connectionPool.http.maxRetries` concurrent retries were in flight.
    MaxRetries,
    /// The request body outgrew the replay buffer.
    Body,
    /// The route timeout (or the caller's deadline) left no time.
    Deadline,
    /// A proxy nearer the upstream already retried it.
    RetriedUpstream,
}

const DENIED: [&str; 6] = [
    "budget",
    "attempts",
    "max_retries",
    "body",
    "deadline",
    "retried_upstream",
];

impl Denied {
    fn index(self) -> usize {
        self as usize
    }
}

const OVERFLOWS: [Overflow; 4] = [
    Overflow::MaxConnections,
    Overflow::MaxPendingRequests,
    Overflow::MaxRequests,
    Overflow::MaxRetries,
];

pub const EJECTION_REASONS: [&str; 2] = ["consecutive_5xx", "consecutive_gateway_errors"];
const MIRROR_RESULTS: [&str; 4] = ["sent", "failed", "skipped_body", "skipped_limit"];

/// What happened to a mirrored request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorResult {
    Sent,
    Failed,
    /// Its body was too large to copy.
    SkippedBody,
    /// Too many mirrored requests were already in flight.
    SkippedLimit,
}

/// Pre-made handles for one cluster's resilience events.
#[derive(Debug, Clone)]
pub struct ClusterStats {
    retries: [Counter; RetryReason::ALL.len()],
    retries_denied: [Counter; 6],
    overflows: [Counter; OVERFLOWS.len()],
    ejections: [Counter; 2],
    pub ejected: Gauge,
    mirrors: [Counter; 4],
    faults: [Counter; 2],
}

impl ClusterStats {
    pub fn retry(&self, reason: RetryReason) {
        if let Some(i) = RetryReason::ALL.iter().position(|r| *r == reason) {
            self.retries[i].inc();
        }
    }

    pub fn denied(&self, why: Denied) {
        self.retries_denied[why.index()].inc();
    }

    pub fn overflow(&self, o: Overflow) {
        if let Some(i) = OVERFLOWS.iter().position(|x| *x == o) {
            self.overflows[i].inc();
        }
    }

    pub fn ejection(&self, reason: &str) {
        if let Some(i) = EJECTION_REASONS.iter().position(|r| *r == reason) {
            self.ejections[i].inc();
        }
    }

    pub fn mirror(&self, result: MirrorResult) {
        self.mirrors[result as usize].inc();
    }

    pub fn fault(&self, abort: bool) {
        self.faults[usize::from(abort)].inc();
    }
}

/// Pre-made metric handles for requests on one route to one cluster.
#[derive(Debug, Clone)]
pub struct RouteStats {
    by_class: [Counter; 5],
    duration: Histogram,
}

impl RouteStats {
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.by_class[class_index(status)].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// Keeps `connections_active` right on every exit path: decremented when
/// the last clone is dropped. The connection's task holds one; each request
/// carries a clone in its extensions, so a connection taken over by an
/// upgrade (WebSocket, CONNECT tunnel) stays counted, and drained, until the
/// task splicing it ends, although hyper's connection finished at the 101/200.
#[derive(Debug, Clone)]
pub struct ConnectionGuard {
    _active: Arc<ActiveConnection>,
}

#[derive(Debug)]
struct ActiveConnection(Gauge);

impl ConnectionGuard {
    pub fn new(active: &Gauge, total: &Counter) -> Self {
        active.inc();
        total.inc();
        ConnectionGuard {
            _active: Arc::new(ActiveConnection(active.clone())),
        }
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_counted_until_the_last_guard_goes() {
        let m = Metrics::new();
        let (active, total) = m.listener("outbound");
        let guard = ConnectionGuard::new(&active, &total);
        let upgraded = guard.clone();
        assert_eq!(active.get(), 1);
        drop(guard);
        assert_eq!(
            active.get(),
            1,
            "an upgraded stream keeps the connection open"
        );
        drop(upgraded);
        assert_eq!((active.get(), total.get()), (0, 1));
    }

    #[test]
    fn code_classes() {
        assert_eq!(class_index(101), 0);
        assert_eq!(class_index(200), 1);
        assert_eq!(class_index(302), 2);
        assert_eq!(class_index(404), 3);
        assert_eq!(class_index(503), 4);
        assert_eq!(class_index(999), 4);
    }

    #[test]
    fn route_stats_share_the_family() {
        let m = Metrics::new();
        let a = m.route_stats(Direction::outbound, "r", "c");
        let b = m.route_stats(Direction::outbound, "r", "c");
        a.record(200, Duration::from_millis(1));
        b.record(503, Duration::from_millis(2));
        let text = m.encode();
        assert!(text.contains(r#"trellis_requests_total{direction="outbound",route="r",cluster="c",code_class="2xx"} 1"#), "{text}");
        assert!(text.contains(r#"code_class="5xx"} 1"#), "{text}");
        assert!(
            text.contains(
                r#"trellis_request_duration_seconds_count{direction="outbound",cluster="c"} 2"#
            ),
            "{text}"
        );
    }
}
