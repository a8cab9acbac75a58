//! Clusters: one per (service, port, subset), as trellis-proxy builds them
//! in `config/compile.rs`, with the DestinationRule's traffic policy in
//! Envoy's terms.
//!
//! | Istio | Envoy |
//! |---|---|
//! | `resolution: STATIC` | `type: EDS` over ADS (endpoints in a ClusterLoadAssignment) |
//! | `resolution: DNS`, `DNS_ROUND_ROBIN` | `type: STRICT_DNS`, every address resolved is an endpoint (trellis-proxy's behaviour) |
//! | `loadBalancer.simple` | `lb_policy` (`PEAK_EWMA`: `LEAST_REQUEST` + Trellis metadata) |
//! | `loadBalancer.consistentHash` | `RING_HASH` + the route's `hash_policy` |
//! | `connectionPool` | `circuit_breakers`, `connect_timeout`, `HttpProtocolOptions`, `tcp_keepalive` |
//! | `outlierDetection` | `outlier_detection`, `common_lb_config.healthy_panic_threshold` |
//! | RetryBudget | `metadata.filter_metadata.trellis.retry_budget` |

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlier, UpstreamConnectionOptions,
    circuit_breakers::Thresholds,
    cluster::{
        ClusterDiscoveryType, CommonLbConfig, DiscoveryType, DnsLookupFamily, EdsClusterConfig,
        LbConfig, LbPolicy, RingHashLbConfig,
    },
};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, Http1ProtocolOptions, Http2ProtocolOptions,
    HttpProtocolOptions as CommonHttpOptions, Metadata, TcpKeepalive,
    config_source::ConfigSourceSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::route::v3::route_action::{HashPolicy, hash_policy};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
    http_protocol_options::{ExplicitHttpConfig, UseDownstreamHttpConfig, explicit_http_config},
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::Value;
use prost::Message;
use trellis_model::networking::{
    ConnectionPoolSettings, LoadBalancerSettings, OutlierDetection, PortTrafficPolicy, SimpleLb,
    Subset, TlsMode, TrafficPolicy,
};
use trellis_model::networking::{Protocol, Resolution};
use trellis_model::trellis::RetryBudgetSpec;
use trellis_model::validate::{Port, Service};

use crate::encode::{
    self, duration, metadata_bytes, number_value, put_field, put_sorted_any_map, string_value,
    struct_value, u32v,
};
use crate::endpoint::{self, EndpointInfo, LocalityPolicy};
use crate::error::{At, TranslateError};
use crate::names;

/// Key of `typed_extension_protocol_options` for upstream HTTP settings.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Istio's default TCP connect timeout (trellis-proxy's too).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// trellis-proxy's upstream idle timeout: shorter than common upstream
/// keep-alive timeouts (Istio's default is 1 h). See docs/config.md.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Istio's (and trellis-proxy's) default ring size.
pub const DEFAULT_RING_SIZE: u64 = 1024;

/// The ADS config source every dynamic resource comes from.
pub fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// Istio's precedence for a per-port policy field: the subset's policy over
/// the rule's, and within each a `portLevelSettings` entry over the general
/// one (trellis-proxy's `policy::effective`).
pub(crate) fn effective<'p, T>(
    base: Option<&'p TrafficPolicy>,
    own: Option<&'p TrafficPolicy>,
    port: u16,
    general: impl Fn(&'p TrafficPolicy) -> Option<&'p T>,
    per_port: impl Fn(&'p PortTrafficPolicy) -> Option<&'p T>,
) -> Option<&'p T> {
    let from = |tp: Option<&'p TrafficPolicy>| {
        tp.and_then(|tp| {
            tp.port_level_settings
                .iter()
                .find(|p| p.port.number == u32::from(port))
                .and_then(&per_port)
                .or_else(|| general(tp))
        })
    };
    from(own).or_else(|| from(base))
}

pub(crate) fn effective_lb<'p>(
    base: Option<&'p TrafficPolicy>,
    own: Option<&'p TrafficPolicy>,
    port: u16,
) -> Option<&'p LoadBalancerSettings> {
    effective(
        base,
        own,
        port,
        |t| t.load_balancer.as_ref(),
        |p| p.load_balancer.as_ref(),
    )
}

/// The route `hash_policy` a consistent-hash destination needs (Envoy hashes
/// on the route, balances on the cluster).
pub fn hash_policy(lb: Option<&LoadBalancerSettings>) -> Option<HashPolicy> {
    let ch = lb?.consistent_hash.as_ref()?;
    let spec = if let Some(h) = &ch.http_header_name {
        hash_policy::PolicySpecifier::Header(hash_policy::Header {
            header_name: h.to_ascii_lowercase(),
            ..Default::default()
        })
    } else if let Some(c) = &ch.http_cookie {
        hash_policy::PolicySpecifier::Cookie(hash_policy::Cookie {
            name: c.name.clone(),
            path: c.path.clone().unwrap_or_default(),
            // Istio passes the TTL on; with it Envoy sets the cookie when the
            // request has none (trellis-proxy does not, see docs/xds.md).
            ttl: c
                .ttl
                .as_deref()
                .and_then(|t| trellis_model::duration::parse(t).ok())
                .map(duration),
            ..Default::default()
        })
    } else if let Some(q) = &ch.http_query_parameter_name {
        hash_policy::PolicySpecifier::QueryParameter(hash_policy::QueryParameter {
            name: q.clone(),
        })
    } else {
        hash_policy::PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties {
            source_ip: true,
        })
    };
    Some(HashPolicy {
        policy_specifier: Some(spec),
        terminal: false,
    })
}

/// Which cluster to build: the whole service, or one subset of its DestinationRule.
#[derive(Debug, Clone, Copy)]
pub struct ClusterSpec<'a> {
    pub service: &'a Service,
    pub port: &'a Port,
    /// The DestinationRule's top-level traffic policy, when a rule applies.
    pub rule_policy: Option<&'a TrafficPolicy>,
    /// The subset, for a subset cluster.
    pub subset: Option<&'a Subset>,
    /// The host's RetryBudget (None: the default budget).
    pub budget: Option<&'a RetryBudgetSpec>,
    /// `DestinationRule namespace/name`, for errors.
    pub rule_key: Option<&'a str>,
}

/// A translated cluster, with what its endpoint assignment needs.
#[derive(Debug, Clone)]
pub struct BuiltCluster {
    pub cluster: Cluster,
    /// For EDS clusters: the locality policy their assignments follow.
    pub locality: LocalityPolicy,
    pub eds: bool,
}

impl ClusterSpec<'_> {
    pub fn name(&self) -> String {
        names::cluster(
            self.port.number,
            self.subset.map(|s| s.name.as_str()),
            &self.service.host,
        )
    }

    fn own_policy(&self) -> Option<&TrafficPolicy> {
        self.subset.and_then(|s| s.traffic_policy.as_ref())
    }

    fn at(&self, field: &str) -> At {
        match self.rule_key {
            Some(k) => At::new(format!("DestinationRule {k}"), field),
            None => At::new(format!("ServiceEntry {}", self.service.entry), field),
        }
    }
}

/// Builds the cluster. `endpoints` are the service port's endpoints (only
/// DNS clusters inline them; EDS clusters get theirs from [`endpoint`]).
pub fn build(
    spec: &ClusterSpec,
    endpoints: &[EndpointInfo],
) -> Result<BuiltCluster, TranslateError> {
    let name = spec.name();
    let (base, own, port) = (spec.rule_policy, spec.own_policy(), spec.port.number);
    let lb = effective_lb(base, own, port);
    let pool = effective(
        base,
        own,
        port,
        |t| t.connection_pool.as_ref(),
        |p| p.connection_pool.as_ref(),
    );
    let outlier = effective(
        base,
        own,
        port,
        |t| t.outlier_detection.as_ref(),
        |p| p.outlier_detection.as_ref(),
    );
    let at = spec.at("spec.trafficPolicy");
    let locality = LocalityPolicy::from_setting(lb.and_then(|l| l.locality_lb_setting.as_ref()));
    let mut trellis: Vec<(&str, Value)> = vec![("retry_budget", retry_budget(spec)?)];

    let mut c = Cluster {
        name: name.clone(),
        connect_timeout: Some(duration(connect_timeout(pool, &at)?)),
        circuit_breakers: Some(circuit_breakers(pool)),
        ..Default::default()
    };

    // Load balancing.
    let (policy, ring) = match lb {
        Some(l) if l.consistent_hash.is_some() => {
            let ch = l.consistent_hash.as_ref();
            let size = ch
                .and_then(|c| c.ring_hash.as_ref().and_then(|r| r.minimum_ring_size))
                .or(ch.and_then(|c| c.minimum_ring_size))
                .unwrap_or(DEFAULT_RING_SIZE);
            (LbPolicy::RingHash, Some(size))
        }
        Some(l) => match l.simple {
            Some(SimpleLb::RoundRobin) => (LbPolicy::RoundRobin, None),
            Some(SimpleLb::Random) => (LbPolicy::Random, None),
            Some(SimpleLb::PeakEwma) => {
                // Envoy has no peak-EWMA balancer: least request (power of
                // two choices) is the closest; trellis-proxy reads the policy
                // from the metadata.
                trellis.push(("lb_policy", string_value("PEAK_EWMA")));
                (LbPolicy::LeastRequest, None)
            }
            // UNSPECIFIED and the deprecated LEAST_CONN mean LEAST_REQUEST, Istio's default.
            _ => (LbPolicy::LeastRequest, None),
        },
        None => (LbPolicy::LeastRequest, None),
    };
    c.lb_policy = policy as i32;
    if let Some(size) = ring {
        c.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
            minimum_ring_size: Some(envoy_types::pb::google::protobuf::UInt64Value { value: size }),
            ..Default::default()
        }));
    }

    // Outlier detection, and the panic threshold it brings
    // (`minHealthPercent`; 0 without outlier detection: never panic, as
    // trellis-proxy, where Envoy's default would be 50%).
    let min_health = match outlier {
        Some(od) => {
            let (envoy, min_health) = outlier_detection(od, &at.field("outlierDetection"))?;
            c.outlier_detection = Some(envoy);
            min_health
        }
        None => 0,
    };
    c.common_lb_config = Some(CommonLbConfig {
        healthy_panic_threshold: Some(Percent {
            value: f64::from(min_health),
        }),
        ..Default::default()
    });

    // Connections.
    if let Some(tcp) = pool.and_then(|p| p.tcp.as_ref())
        && let Some(k) = &tcp.tcp_keepalive
    {
        let secs = |v: &Option<String>, f: &str| -> Result<Option<u32>, TranslateError> {
            v.as_deref()
                .map(|t| at.field(f).duration(t).map(ceil_secs))
                .transpose()
        };
        c.upstream_connection_options = Some(UpstreamConnectionOptions {
            tcp_keepalive: Some(TcpKeepalive {
                keepalive_probes: k.probes.map(u32v),
                keepalive_time: secs(&k.time, "connectionPool.tcp.tcpKeepalive.time")?.map(u32v),
                keepalive_interval: secs(&k.interval, "connectionPool.tcp.tcpKeepalive.interval")?
                    .map(u32v),
            }),
            ..Default::default()
        });
    }
    if spec.port.protocol.is_http() {
        let options = http_protocol_options(spec.port.protocol, pool, &at)?;
        c.typed_extension_protocol_options
            .insert(HTTP_PROTOCOL_OPTIONS.to_string(), encode::any(&options));
    }

    // Discovery.
    let eds = spec.service.resolution == Resolution::Static;
    if eds {
        c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
        c.eds_cluster_config = Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.clone(),
        });
    } else {
        c.cluster_discovery_type =
            Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
        // Every address a name resolves to, as the proxy's resolver returns them.
        c.dns_lookup_family = DnsLookupFamily::All as i32;
        // `dns_refresh_rate` (trellis-proxy re-resolves every 30 s) is
        // deprecated in Envoy's Cluster: Envoy's default, 5 s, applies.
        let labels = spec.subset.map(|s| &s.labels);
        let eps = endpoint::in_subset(endpoints, labels);
        // Inline assignments are shared by every proxy: no per-proxy
        // locality priorities for DNS clusters (docs/xds.md).
        c.load_assignment = Some(endpoint::load_assignment(
            &name,
            &eps,
            None,
            &LocalityPolicy::default(),
        ));
    }

    crate::tls::apply(&mut c, upstream_tls(spec, endpoints));

    c.metadata = Some(Metadata {
        filter_metadata: HashMap::from([(
            names::TRELLIS_METADATA.to_string(),
            encode::make_struct(trellis),
        )]),
        ..Default::default()
    });
    Ok(BuiltCluster {
        cluster: c,
        locality,
        eds,
    })
}

/// The cluster's TLS: DestinationRule `tls` (the subset's, port-level
/// settings first), else Istio's auto mTLS when one of its endpoints has a
/// sidecar with mTLS.
fn upstream_tls(spec: &ClusterSpec, endpoints: &[EndpointInfo]) -> crate::tls::Upstream {
    use crate::tls::{self, Upstream};
    let (base, own, port) = (spec.rule_policy, spec.own_policy(), spec.port.number);
    let setting = effective(base, own, port, |t| t.tls.as_ref(), |p| p.tls.as_ref());
    let alpn = tls::alpn(spec.port.protocol);
    let host = &spec.service.host;
    let mesh = |rule_names: &[String]| {
        // Who may serve: the rule's names, else the ServiceEntry's plus the
        // service accounts of its workloads (Istio's secure naming).
        let mut sans: Vec<String> = if rule_names.is_empty() {
            let mut accounts: Vec<String> = endpoints
                .iter()
                .filter_map(|e| e.service_account.as_deref())
                .map(|sa| tls::spiffe_id(&spec.service.namespace, sa))
                .collect();
            accounts.sort();
            accounts.dedup();
            spec.service
                .subject_alt_names
                .iter()
                .cloned()
                .chain(accounts)
                .collect()
        } else {
            rule_names.to_vec()
        };
        sans.dedup();
        let sni = tls::mesh_sni(port, spec.subset.map(|s| s.name.as_str()), host);
        tls::upstream_mesh(sni, &sans, alpn.clone())
    };
    match setting.map(|t| t.mode) {
        // Auto mTLS only where an endpoint can take it: a cluster of
        // plaintext workloads (or external hosts) stays as it was, with no
        // dependency on SDS secrets a proxy without identity never gets.
        // Endpoint changes re-translate the service, so this follows them.
        None if endpoint::in_subset(endpoints, spec.subset.map(|s| &s.labels))
            .iter()
            .any(|e| tls::is_istio(&e.labels)) =>
        {
            Upstream::Auto(mesh(&[]))
        }
        None => Upstream::Plaintext,
        Some(TlsMode::Disable) => Upstream::Plaintext,
        Some(TlsMode::IstioMutual) => Upstream::All(mesh(
            &setting
                .map(|t| t.subject_alt_names.clone())
                .unwrap_or_default(),
        )),
        Some(TlsMode::Simple | TlsMode::Mutual) => {
            let t = setting.expect("matched Some");
            Upstream::All(tls::upstream_external(t, host, alpn.clone()))
        }
    }
}

/// The cluster behind the inbound listener: the local app, spoken to in the
/// caller's protocol (trellis-proxy's `http/inbound.rs`).
pub fn inbound_app(app: std::net::SocketAddr) -> Cluster {
    let options = HttpProtocolOptions {
        common_http_protocol_options: Some(CommonHttpOptions {
            idle_timeout: Some(duration(DEFAULT_IDLE_TIMEOUT)),
            ..Default::default()
        }),
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                UseDownstreamHttpConfig {
                    http_protocol_options: Some(Http1ProtocolOptions::default()),
                    http2_protocol_options: Some(Http2ProtocolOptions::default()),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    };
    let app_ep = EndpointInfo {
        address: app.ip().to_string(),
        port: app.port(),
        weight: 1,
        locality: String::new(),
        labels: BTreeMap::new(),
        health: endpoint::Health::Unknown,
        service_account: None,
    };
    Cluster {
        name: names::INBOUND_APP_CLUSTER.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
        // trellis-proxy puts no limits on the inbound side.
        circuit_breakers: Some(circuit_breakers(None)),
        load_assignment: Some(endpoint::load_assignment(
            names::INBOUND_APP_CLUSTER,
            &[&app_ep],
            None,
            &LocalityPolicy::default(),
        )),
        typed_extension_protocol_options: HashMap::from([(
            HTTP_PROTOCOL_OPTIONS.to_string(),
            encode::any(&options),
        )]),
        ..Default::default()
    }
}

/// The deterministic encoding of a cluster (see [`encode`]).
pub fn encode_cluster(c: &Cluster) -> Vec<u8> {
    let mut rest = c.clone();
    let metadata = rest.metadata.take();
    let options = std::mem::take(&mut rest.typed_extension_protocol_options);
    let mut out = rest.encode_to_vec();
    if let Some(m) = metadata {
        put_field(&mut out, 25, &metadata_bytes(&m));
    }
    put_sorted_any_map(&mut out, 36, &options);
    out
}

/// The assignment of an EDS cluster, encoded (it has no map fields).
pub fn encode_assignment(cla: &ClusterLoadAssignment) -> Vec<u8> {
    cla.encode_to_vec()
}

fn ceil_secs(d: Duration) -> u32 {
    // Envoy's keepalive settings are whole seconds; round up so a setting
    // never becomes 0 (the OS default).
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u32::try_from(s.max(1)).unwrap_or(u32::MAX)
}

fn connect_timeout(
    pool: Option<&ConnectionPoolSettings>,
    at: &At,
) -> Result<Duration, TranslateError> {
    match pool
        .and_then(|p| p.tcp.as_ref())
        .and_then(|t| t.connect_timeout.as_deref())
    {
        Some(t) => at.field("connectionPool.tcp.connectTimeout").duration(t),
        None => Ok(DEFAULT_CONNECT_TIMEOUT),
    }
}

/// An unset, zero or negative limit is Istio's default: no limit (2^32-1).
fn limit(v: Option<i32>) -> u32 {
    v.and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(u32::MAX)
}

fn circuit_breakers(pool: Option<&ConnectionPoolSettings>) -> CircuitBreakers {
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    CircuitBreakers {
        thresholds: vec![Thresholds {
            // Envoy's defaults (1024 connections, 3 retries, ...) would limit
            // what the user left unlimited; Istio writes 2^32-1 instead.
            max_connections: Some(u32v(limit(tcp.and_then(|t| t.max_connections)))),
            max_pending_requests: Some(u32v(limit(
                http.and_then(|h| h.http1_max_pending_requests),
            ))),
            max_requests: Some(u32v(limit(http.and_then(|h| h.http2_max_requests)))),
            max_retries: Some(u32v(limit(http.and_then(|h| h.max_retries)))),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn http_protocol_options(
    protocol: Protocol,
    pool: Option<&ConnectionPoolSettings>,
    at: &At,
) -> Result<HttpProtocolOptions, TranslateError> {
    let http = pool.and_then(|p| p.http.as_ref());
    let idle = match http.and_then(|h| h.idle_timeout.as_deref()) {
        Some(t) => at.field("connectionPool.http.idleTimeout").duration(t)?,
        None => DEFAULT_IDLE_TIMEOUT,
    };
    let max_requests = http
        .and_then(|h| h.max_requests_per_connection)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0);
    let protocol_config = if protocol.is_h2() {
        explicit_http_config::ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default())
    } else {
        explicit_http_config::ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default())
    };
    Ok(HttpProtocolOptions {
        common_http_protocol_options: Some(CommonHttpOptions {
            idle_timeout: Some(duration(idle)),
            max_requests_per_connection: max_requests.map(u32v),
            ..Default::default()
        }),
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(protocol_config),
                },
            ),
        ),
        ..Default::default()
    })
}

/// Istio's OutlierDetection in Envoy's terms, and `minHealthPercent`.
fn outlier_detection(
    od: &OutlierDetection,
    at: &At,
) -> Result<(EnvoyOutlier, u32), TranslateError> {
    let pct = |v: Option<i32>, default: u32| v.map_or(default, |v| u32::try_from(v).unwrap_or(0));
    let consecutive_5xx = match od.consecutive_5xx_errors {
        // 0 turns the counter off: Envoy keeps counting, but never ejects.
        Some(0) => None,
        Some(n) => Some(n),
        None => Some(5),
    };
    let gateway = od.consecutive_gateway_errors.filter(|n| *n > 0);
    let interval = match od.interval.as_deref() {
        Some(t) => at.field("interval").duration(t)?,
        None => Duration::from_secs(10),
    };
    let base = match od.base_ejection_time.as_deref() {
        Some(t) => at.field("baseEjectionTime").duration(t)?,
        None => Duration::from_secs(30),
    };
    let envoy = EnvoyOutlier {
        consecutive_5xx: Some(u32v(consecutive_5xx.unwrap_or(0))),
        enforcing_consecutive_5xx: Some(u32v(if consecutive_5xx.is_some() { 100 } else { 0 })),
        consecutive_gateway_failure: Some(u32v(gateway.unwrap_or(0))),
        // Envoy does not enforce gateway failures by default; Istio (and
        // trellis-proxy) eject on them when the field is set.
        enforcing_consecutive_gateway_failure: Some(u32v(if gateway.is_some() { 100 } else { 0 })),
        // Success-rate ejection is on by default in Envoy; Istio has no
        // such field and turns it off.
        enforcing_success_rate: Some(u32v(0)),
        interval: Some(duration(interval)),
        base_ejection_time: Some(duration(base)),
        max_ejection_percent: Some(u32v(pct(od.max_ejection_percent, 10))),
        ..Default::default()
    };
    Ok((envoy, pct(od.min_health_percent, 0)))
}

/// The host's retry budget (Linkerd's model: a ratio of requests over a
/// window plus a floor per second). Envoy's `retry_budget` limits
/// concurrent retries instead, a different quantity, so it is carried as
/// Trellis metadata, defaults filled in.
fn retry_budget(spec: &ClusterSpec) -> Result<Value, TranslateError> {
    let (ratio, min, ttl) = match spec.budget {
        Some(b) => {
            let at = At::new(format!("RetryBudget for {}", spec.service.host), "spec.ttl");
            (
                b.retry_ratio,
                b.min_retries_per_second,
                at.duration(&b.ttl)?,
            )
        }
        None => (0.2, 10, Duration::from_secs(10)),
    };
    Ok(struct_value(vec![
        ("retry_ratio", number_value(ratio)),
        ("min_retries_per_second", number_value(f64::from(min))),
        ("ttl", string_value(format!("{}s", ttl.as_secs_f64()))),
    ]))
}
