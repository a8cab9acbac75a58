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
pub struct ListenerLabels {
    pub listener: &'static str,
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
        let tcp_bytes = Family::default();
        registry.register(
            "tcp_bytes",
            "Bytes proxied on opaque TCP connections (both directions), by cluster",
            tcp_bytes.clone(),
        );
        Metrics {
            registry,
            requests,
            request_duration,
            local_replies,
            connections_active,
            connections_total,
            config_reloads,
            tcp_bytes,
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

    pub fn reload(&self, accepted: bool) {
        let result = if accepted { "accepted" } else { "rejected" };
        self.config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
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
