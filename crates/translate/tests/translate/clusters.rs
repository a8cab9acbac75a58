//! Clusters: discovery, load balancing, connection pools, outlier detection,
//! Trellis metadata.

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster,
    cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily, LbConfig, LbPolicy},
};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options::UpstreamProtocolOptions,
    http_protocol_options::explicit_http_config::ProtocolConfig,
};
use envoy_types::pb::google::protobuf::{Duration, Value, value::Kind};
use trellis_translate::cluster::HTTP_PROTOCOL_OPTIONS;

use crate::support::*;

fn secs(s: i64, ms: i32) -> Option<Duration> {
    Some(Duration {
        seconds: s,
        nanos: ms * 1_000_000,
    })
}

/// A service `svc` on `ports` with one endpoint, and a DestinationRule
/// whose `trafficPolicy` is `policy` (none when empty).
fn with_policy(ports: &str, policy: &str) -> String {
    let rule = if policy.is_empty() {
        String::new()
    } else {
        format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc}}
spec:
  host: svc
  trafficPolicy: {policy}
"#
        )
    };
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc}}
spec:
  hosts: [svc]
  resolution: STATIC
  ports: {ports}
  endpoints: [{{address: 127.0.5.1}}]
{rule}"#
    )
}

const SVC: &str = "svc.default.svc.cluster.local";

fn one(policy: &str) -> Cluster {
    let snap = snapshot(&with_policy("[{number: 80, name: http}]", policy));
    cluster(&snap, &c(80, "", SVC))
}

fn trellis_meta(c: &Cluster) -> std::collections::HashMap<String, Value> {
    c.metadata.clone().unwrap().filter_metadata["trellis"]
        .fields
        .clone()
}

fn http_options(c: &Cluster) -> HttpProtocolOptions {
    unpack(&c.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS])
}

#[test]
fn static_services_are_eds_clusters_over_ads() {
    let c0 = one("");
    assert_eq!(
        c0.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
    );
    let eds = c0.eds_cluster_config.unwrap();
    assert_eq!(eds.service_name, c(80, "", SVC));
    let src = eds.eds_config.unwrap();
    assert!(matches!(
        src.config_source_specifier,
        Some(ConfigSourceSpecifier::Ads(_))
    ));
    assert_eq!(src.resource_api_version, 2, "V3");
    assert_eq!(c0.connect_timeout, secs(10, 0));
    assert_eq!(
        c0.lb_policy,
        LbPolicy::LeastRequest as i32,
        "Istio's default"
    );
    assert!(c0.load_assignment.is_none());
    assert!(c0.outlier_detection.is_none());
    assert_eq!(
        c0.common_lb_config
            .unwrap()
            .healthy_panic_threshold
            .unwrap()
            .value,
        0.0
    );
}

#[test]
fn dns_services_are_strict_dns_with_inline_endpoints() {
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [api.example.com]
  resolution: DNS
  ports: [{number: 443, name: tls}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mirrors}
spec:
  hosts: [mirrors.example.com]
  resolution: DNS_ROUND_ROBIN
  ports: [{number: 80, name: http, targetPort: 8080}]
  endpoints: [{address: a.example.com, locality: eu/z1}, {address: b.example.com, weight: 3}]
"#,
    );
    let ext = cluster(&snap, &c(443, "", "api.example.com"));
    assert_eq!(
        ext.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32))
    );
    assert_eq!(ext.dns_lookup_family, DnsLookupFamily::All as i32);
    assert!(
        ext.typed_extension_protocol_options.is_empty(),
        "TLS: opaque"
    );
    let addr = |c: &Cluster| -> Vec<(String, u32, u32, String)> {
        let cla = c.load_assignment.clone().unwrap();
        cla.endpoints
            .iter()
            .flat_map(|l| {
                let zone = l.locality.clone().map(|l| l.zone).unwrap_or_default();
                l.lb_endpoints.iter().map(move |e| {
                    let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                        panic!()
                    };
                    let Some(address::Address::SocketAddress(sa)) =
                        ep.address.clone().unwrap().address
                    else {
                        panic!()
                    };
                    let Some(PortSpecifier::PortValue(p)) = sa.port_specifier else {
                        panic!()
                    };
                    (
                        sa.address,
                        p,
                        e.load_balancing_weight.unwrap().value,
                        zone.clone(),
                    )
                })
            })
            .collect()
    };
    // No endpoints: the host name itself is resolved.
    assert_eq!(
        addr(&ext),
        [("api.example.com".into(), 443, 1, String::new())]
    );
    let m = cluster(&snap, &c(80, "", "mirrors.example.com"));
    let mut got = addr(&m);
    got.sort();
    assert_eq!(
        got,
        [
            ("a.example.com".into(), 8080, 1, "z1".into()),
            ("b.example.com".into(), 8080, 3, String::new())
        ]
    );
    // DNS clusters have no EDS assignment.
    assert!(
        snap.get(
            trellis_translate::names::ENDPOINT_TYPE,
            &c(80, "", "mirrors.example.com")
        )
        .is_none()
    );
}

#[test]
fn load_balancer_policies() {
    let cases: &[(&str, LbPolicy, Option<u64>, Option<&str>)] = &[
        (
            "{loadBalancer: {simple: ROUND_ROBIN}}",
            LbPolicy::RoundRobin,
            None,
            None,
        ),
        (
            "{loadBalancer: {simple: LEAST_REQUEST}}",
            LbPolicy::LeastRequest,
            None,
            None,
        ),
        (
            "{loadBalancer: {simple: LEAST_CONN}}",
            LbPolicy::LeastRequest,
            None,
            None,
        ),
        (
            "{loadBalancer: {simple: RANDOM}}",
            LbPolicy::Random,
            None,
            None,
        ),
        (
            "{loadBalancer: {simple: UNSPECIFIED}}",
            LbPolicy::LeastRequest,
            None,
            None,
        ),
        (
            "{loadBalancer: {simple: PEAK_EWMA}}",
            LbPolicy::LeastRequest,
            None,
            Some("PEAK_EWMA"),
        ),
        (
            "{loadBalancer: {consistentHash: {httpHeaderName: x-user}}}",
            LbPolicy::RingHash,
            Some(1024),
            None,
        ),
        (
            "{loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 4096}}}}",
            LbPolicy::RingHash,
            Some(4096),
            None,
        ),
        (
            "{loadBalancer: {consistentHash: {useSourceIp: true, minimumRingSize: 64}}}",
            LbPolicy::RingHash,
            Some(64),
            None,
        ),
    ];
    for (policy, lb, ring, meta) in cases {
        let c0 = one(policy);
        assert_eq!(c0.lb_policy, *lb as i32, "{policy}");
        let got_ring = match &c0.lb_config {
            Some(LbConfig::RingHashLbConfig(r)) => r.minimum_ring_size.map(|v| v.value),
            _ => None,
        };
        assert_eq!(got_ring, *ring, "{policy}");
        let got_meta = trellis_meta(&c0).get("lb_policy").map(|v| match &v.kind {
            Some(Kind::StringValue(s)) => s.clone(),
            other => panic!("{other:?}"),
        });
        assert_eq!(got_meta.as_deref(), *meta, "{policy}");
    }
}

#[test]
fn connection_pool() {
    let c0 = one(r#"
    connectionPool:
      tcp: {maxConnections: 4, connectTimeout: 250ms, tcpKeepalive: {probes: 3, time: 1500ms, interval: 10s}}
      http: {http1MaxPendingRequests: 2, http2MaxRequests: 100, maxRequestsPerConnection: 1, maxRetries: 5, idleTimeout: 30s}
"#);
    assert_eq!(c0.connect_timeout, secs(0, 250));
    let t = &c0.circuit_breakers.clone().unwrap().thresholds[0];
    assert_eq!(t.max_connections.unwrap().value, 4);
    assert_eq!(t.max_pending_requests.unwrap().value, 2);
    assert_eq!(t.max_requests.unwrap().value, 100);
    assert_eq!(t.max_retries.unwrap().value, 5);
    let ka = c0
        .upstream_connection_options
        .unwrap()
        .tcp_keepalive
        .unwrap();
    assert_eq!(ka.keepalive_probes.unwrap().value, 3);
    assert_eq!(ka.keepalive_time.unwrap().value, 2, "seconds, rounded up");
    assert_eq!(ka.keepalive_interval.unwrap().value, 10);
    let o = http_options(&c0);
    let common = o.common_http_protocol_options.unwrap();
    assert_eq!(common.idle_timeout, secs(30, 0));
    assert_eq!(common.max_requests_per_connection.unwrap().value, 1);
}

#[test]
fn unset_limits_are_istios_unlimited() {
    let c0 = one("");
    let t = &c0.circuit_breakers.clone().unwrap().thresholds[0];
    for v in [
        t.max_connections,
        t.max_pending_requests,
        t.max_requests,
        t.max_retries,
    ] {
        assert_eq!(v.unwrap().value, u32::MAX);
    }
    let common = http_options(&c0).common_http_protocol_options.unwrap();
    assert_eq!(common.idle_timeout, secs(4, 0), "trellis-proxy's default");
    assert_eq!(common.max_requests_per_connection, None);
}

#[test]
fn upstream_protocol_follows_the_port() {
    let snap = snapshot(&with_policy(
        "[{number: 80, name: http}, {number: 81, name: http2}, {number: 82, name: grpc}, {number: 83, name: tcp}]",
        "",
    ));
    let proto = |port: u16| {
        let c0 = cluster(&snap, &c(port, "", SVC));
        if c0.typed_extension_protocol_options.is_empty() {
            return "opaque";
        }
        match http_options(&c0).upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match e.protocol_config {
                Some(ProtocolConfig::HttpProtocolOptions(_)) => "h1",
                Some(ProtocolConfig::Http2ProtocolOptions(_)) => "h2",
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        [proto(80), proto(81), proto(82), proto(83)],
        ["h1", "h2", "h2", "opaque"]
    );
}

#[test]
fn outlier_detection() {
    let c0 = one(
        "{outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 3, interval: 5s, baseEjectionTime: 1m, maxEjectionPercent: 50, minHealthPercent: 20}}",
    );
    let od = c0.outlier_detection.clone().unwrap();
    assert_eq!(
        od.enforcing_consecutive_5xx.unwrap().value,
        0,
        "0 turns it off"
    );
    assert_eq!(od.consecutive_gateway_failure.unwrap().value, 3);
    assert_eq!(od.enforcing_consecutive_gateway_failure.unwrap().value, 100);
    assert_eq!(od.enforcing_success_rate.unwrap().value, 0);
    assert_eq!(od.interval, secs(5, 0));
    assert_eq!(od.base_ejection_time, secs(60, 0));
    assert_eq!(od.max_ejection_percent.unwrap().value, 50);
    assert_eq!(
        c0.common_lb_config
            .unwrap()
            .healthy_panic_threshold
            .unwrap()
            .value,
        20.0
    );

    let d = one("{outlierDetection: {}}").outlier_detection.unwrap();
    assert_eq!(d.consecutive_5xx.unwrap().value, 5);
    assert_eq!(d.enforcing_consecutive_5xx.unwrap().value, 100);
    assert_eq!(d.enforcing_consecutive_gateway_failure.unwrap().value, 0);
    assert_eq!(d.interval, secs(10, 0));
    assert_eq!(d.base_ejection_time, secs(30, 0));
    assert_eq!(d.max_ejection_percent.unwrap().value, 10);
}

#[test]
fn subset_and_port_level_policies_take_precedence() {
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc}
spec:
  hosts: [svc]
  resolution: STATIC
  ports: [{number: 80, name: http}, {number: 81, name: http-b}]
  endpoints: [{address: 127.0.5.1, labels: {v: "1"}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc}
spec:
  host: svc
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    portLevelSettings:
    - port: {number: 81}
      loadBalancer: {simple: ROUND_ROBIN}
  subsets:
  - name: one
    labels: {v: "1"}
    trafficPolicy: {connectionPool: {tcp: {maxConnections: 7}}}
"#,
    );
    let lb = |name: String| cluster(&snap, &name).lb_policy;
    assert_eq!(lb(c(80, "", SVC)), LbPolicy::Random as i32);
    assert_eq!(lb(c(81, "", SVC)), LbPolicy::RoundRobin as i32);
    // The subset has no loadBalancer of its own: the rule's applies.
    assert_eq!(lb(c(80, "one", SVC)), LbPolicy::Random as i32);
    let sub = cluster(&snap, &c(80, "one", SVC));
    assert_eq!(
        sub.circuit_breakers.unwrap().thresholds[0]
            .max_connections
            .unwrap()
            .value,
        7
    );
    let base = cluster(&snap, &c(80, "", SVC));
    assert_eq!(
        base.circuit_breakers.unwrap().thresholds[0]
            .max_connections
            .unwrap()
            .value,
        u32::MAX
    );
}

#[test]
fn retry_budget_is_trellis_metadata() {
    let number = |v: &Value| match v.kind {
        Some(Kind::NumberValue(n)) => n,
        _ => panic!("{v:?}"),
    };
    let budget = |c: &Cluster| match &trellis_meta(c)["retry_budget"].kind {
        Some(Kind::StructValue(s)) => (
            number(&s.fields["retry_ratio"]),
            number(&s.fields["min_retries_per_second"]),
            match &s.fields["ttl"].kind {
                Some(Kind::StringValue(t)) => t.clone(),
                _ => panic!(),
            },
        ),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        budget(&one("")),
        (0.2, 10.0, "10s".into()),
        "the default budget"
    );
    let yaml = with_policy("[{number: 80, name: http}]", "")
        + r#"---
apiVersion: trellis.dev/v1alpha1
kind: RetryBudget
metadata: {name: svc}
spec: {host: svc, retryRatio: 0.5, minRetriesPerSecond: 3, ttl: 1500ms}
"#;
    let c0 = cluster(&snapshot(&yaml), &c(80, "", SVC));
    assert_eq!(budget(&c0), (0.5, 3.0, "1.5s".into()));
}

#[test]
fn encoding_is_deterministic() {
    // Maps (metadata, protocol options, per-filter configs) are hashed
    // with random seeds; the encoding must not depend on them.
    let yaml = reviews(
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: r
    fault: {delay: {fixedDelay: 1s}, abort: {httpStatus: 500}}
    route: [{destination: {host: reviews}}]
---
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: r}
spec: {host: reviews, routes: [r], tokenBucket: {maxTokens: 1, fillInterval: 1s}}
"#,
    );
    let hashes = || -> Vec<(String, u64)> {
        let snap = snapshot(&yaml);
        snap.resources
            .values()
            .flat_map(|m| m.values().map(|r| (r.name.clone(), r.hash)))
            .collect()
    };
    let first = hashes();
    for _ in 0..5 {
        assert_eq!(hashes(), first);
    }
}
