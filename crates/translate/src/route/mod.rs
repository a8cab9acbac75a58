//! Routes: VirtualService HTTP and TCP routes, and every service port's
//! default route, in Envoy's terms. One virtual host per (host, port): the
//! proxy routes on the authority's host first and its port second, Envoy on
//! the whole authority, so each port gets its own domains (`reviews:9080`).
//!
//! Virtual hosts are built once per service (see [`crate::shared`]) without
//! their `domains`, which depend on the namespace of the proxy that
//! receives them, and encoded; a proxy's RouteConfiguration is assembled
//! from those encodings ([`assemble`]).
//!
//! | Istio | Envoy |
//! |---|---|
//! | `match[]` (alternatives) | one Envoy route per match block, same action, in order |
//! | `uri` exact / prefix / regex | `path` / `prefix` / `safe_regex`; `ignoreUriCase`: `case_sensitive: false` |
//! | `method`, `scheme`, `authority` | header matchers on `:method`, `:scheme`, `:authority` |
//! | `headers` / `withoutHeaders` | header matchers (`present_match` for `{}`) / the same inverted |
//! | `queryParams` | `query_parameters` |
//! | `port` | decides which per-port virtual host gets the match block |
//! | `route[]` | `cluster`, or `weighted_clusters` (weight 0 dropped; per-destination `headers`) |
//! | `timeout` | `timeout` (unset: `0s`, disabled) and `max_stream_duration.grpc_timeout_header_max` |
//! | `retries` | `retry_policy`; none: Istio's default policy |
//! | `fault` | per-route `HTTPFault` |
//! | `mirror(s)` | `request_mirror_policies` with `runtime_fraction` |
//! | `rewrite` | `prefix_rewrite` / `regex_rewrite` / `host_rewrite_literal` |
//! | `headers` | `request_headers_to_add/remove`, `response_headers_to_add/remove` |
//! | RateLimitPolicy | per-route / per-virtual-host `LocalRateLimit` |
//! | DestinationRule `consistentHash` | `hash_policy` |

mod matching;
mod policy;

pub use policy::{
    HOST_SELECTION_RETRY_MAX_ATTEMPTS, MIN_FILL_INTERVAL, REASON_HEADER, RETRY_BACKOFF_BASE,
    RETRY_BACKOFF_MAX, fraction, istio_default_retry, local_rate_limit,
};

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, RuntimeFractionalPercent,
    config_source::ConfigSourceSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, Vhds, VirtualHost, WeightedCluster, route,
    route_action, route_match, weighted_cluster::ClusterWeight,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use trellis_model::networking::{
    Destination, Headers, HttpMatchRequest, HttpRoute, VirtualServiceSpec,
};
use trellis_model::resource::Object;
use trellis_model::trellis::RateLimitPolicySpec;
use trellis_model::validate::Validated;

use crate::cluster::{effective_lb, hash_policy};
use crate::encode::{self, duration, put_field, put_sorted_any_map, u32v};
use crate::error::{At, TranslateError};
use crate::names::{self, filter};

use matching::{route_match, uri_rewrite};
use policy::{edits, fault, retry_policy};

/// Which `match[].port` conditions a virtual host keeps. Envoy has no port
/// condition: each port has its own virtual host, and a match block goes to
/// the virtual hosts of the port it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortFilter {
    /// Blocks without `port`, and blocks with this port.
    Port(u16),
    /// Blocks without `port` only (a host's any-port virtual host).
    Unconditional,
}

impl PortFilter {
    fn keeps(self, port: Option<u32>) -> bool {
        match (self, port) {
            (_, None) => true,
            (PortFilter::Port(p), Some(q)) => u32::from(p) == q,
            (PortFilter::Unconditional, Some(_)) => false,
        }
    }
}

/// A virtual host without its domains, encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct VhostBody {
    pub name: String,
    /// Deterministic encoding of the VirtualHost, `name` and `domains` left
    /// empty: a route table names it `name`, VHDS `<table>/<name>`.
    pub bytes: Vec<u8>,
}

impl VhostBody {
    /// The whole VirtualHost, named `name` and serving `domains` (bytes are
    /// copied, nothing is re-encoded).
    pub fn encode(&self, name: &str, domains: &[String]) -> Vec<u8> {
        let mut vh = Vec::with_capacity(
            self.bytes.len() + name.len() + domains.iter().map(|d| d.len() + 2).sum::<usize>() + 2,
        );
        put_field(&mut vh, 1, name.as_bytes());
        vh.extend_from_slice(&self.bytes);
        for d in domains {
            put_field(&mut vh, 2, d.as_bytes());
        }
        vh
    }
}

/// Builds a VirtualHost's body: its routes and the host-wide rate limit.
pub fn vhost_body(name: &str, routes: Vec<Route>, host_limit: Option<&Any>) -> VhostBody {
    let mut vh = VirtualHost::default();
    if let Some(rl) = host_limit {
        vh.typed_per_filter_config
            .insert(filter::RATE_LIMIT_HOST.to_string(), rl.clone());
    }
    VhostBody {
        name: name.to_string(),
        bytes: encode_vhost(&vh, &routes),
    }
}

/// Deterministic encoding of a VirtualHost whose routes are `routes`.
fn encode_vhost(vh: &VirtualHost, routes: &[Route]) -> Vec<u8> {
    let mut rest = vh.clone();
    let per_filter = std::mem::take(&mut rest.typed_per_filter_config);
    rest.routes.clear();
    let mut out = rest.encode_to_vec();
    for r in routes {
        put_field(&mut out, 3, &encode_route(r));
    }
    put_sorted_any_map(&mut out, 15, &per_filter);
    out
}

fn encode_route(r: &Route) -> Vec<u8> {
    let mut rest = r.clone();
    let per_filter = std::mem::take(&mut rest.typed_per_filter_config);
    let mut out = rest.encode_to_vec();
    put_sorted_any_map(&mut out, 13, &per_filter);
    out
}

/// A RouteConfiguration from encoded virtual hosts and their domains
/// (deterministic, and cheap: bytes are copied, nothing is re-encoded).
pub fn assemble(name: &str, vhosts: &[(&VhostBody, Vec<String>)]) -> Vec<u8> {
    let mut out = table_head(name, None).encode_to_vec();
    for (body, domains) in vhosts {
        put_field(&mut out, 2, &body.encode(&body.name, domains));
    }
    out
}

/// A RouteConfiguration whose virtual hosts come by VHDS over the ADS
/// stream (delta only), each a resource named [`names::vhds`]`(name, ..)`:
/// a change to one host then sends that host, not the table.
pub fn assemble_vhds(name: &str) -> Vec<u8> {
    let vhds = Vhds {
        config_source: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(ConfigSourceSpecifier::Ads(
                AggregatedConfigSource::default(),
            )),
            ..Default::default()
        }),
    };
    table_head(name, Some(vhds)).encode_to_vec()
}

fn table_head(name: &str, vhds: Option<Vhds>) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_string(),
        // trellis-proxy applies a route's header edits, then the chosen
        // destination's, so the destination's win; Envoy's default is the
        // opposite order.
        most_specific_header_mutations_wins: true,
        // As RDS does by default: a route to a cluster the proxy does not
        // have answers 503 instead of rejecting the whole table.
        validate_clusters: Some(encode::boolv(false)),
        vhds,
        ..Default::default()
    }
}

/// Decodes an assembled RouteConfiguration (tests, and the static-bootstrap helper).
pub fn decode(bytes: &[u8]) -> Result<RouteConfiguration, prost::DecodeError> {
    RouteConfiguration::decode(bytes)
}
/// What routes are translated against: the config, the VirtualService (if
/// any) and the rate limits of the host.
pub struct Ctx<'a> {
    pub v: &'a Validated,
    /// The host the virtual host serves (a service FQDN or VirtualService host).
    pub host: &'a str,
}

/// A route destination resolved to a cluster.
struct Dest {
    cluster: String,
    weight: u32,
    headers: Option<Headers>,
    hash: Option<route_action::HashPolicy>,
}

impl Ctx<'_> {
    /// The cluster a destination names, as trellis-proxy resolves it: its
    /// port is the one given, else the request's port if the service has
    /// it, else the service's only port.
    fn destination(
        &self,
        ns: &str,
        d: &Destination,
        request_port: Option<u16>,
        at: &At,
    ) -> Result<(String, Option<route_action::HashPolicy>), TranslateError> {
        let host = self.v.resolve(&d.host, ns);
        let service = self
            .v
            .services
            .get(&host)
            .ok_or_else(|| at.destination(format!("host {host} is not a known service")))?;
        let port = match (d.port.map(|p| u16::try_from(p.number)), request_port) {
            (Some(Ok(p)), _) => p,
            (Some(Err(_)), _) => return Err(at.destination("port out of range")),
            (None, Some(p)) if service.port(p).is_some() => p,
            (None, _) if service.ports.len() == 1 => service.ports[0].number,
            (None, _) => {
                return Err(at.destination(format!(
                    "port is required: {host} has several ports ({})",
                    service
                        .ports
                        .iter()
                        .map(|p| p.number.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        };
        let rule = self.v.destination_rules.get(&host);
        let base = rule.and_then(|r| r.spec.traffic_policy.as_ref());
        let own = d.subset.as_deref().and_then(|name| {
            rule.and_then(|r| r.spec.subsets.iter().find(|s| s.name == name))
                .and_then(|s| s.traffic_policy.as_ref())
        });
        let hash = hash_policy(effective_lb(base, own, port));
        Ok((names::cluster(port, d.subset.as_deref(), &host), hash))
    }

    /// The RateLimitPolicy of this host and `route` (None: host-wide).
    pub fn rate_limit(&self, route: Option<&str>) -> Option<&Object<RateLimitPolicySpec>> {
        self.v
            .rate_limits
            .iter()
            .find(|(h, o)| {
                h == self.host
                    && match route {
                        Some(r) => o.spec.routes.iter().any(|x| x == r),
                        None => o.spec.routes.is_empty(),
                    }
            })
            .map(|(_, o)| o)
    }

    /// The host-wide rate limit as a per-filter config.
    pub fn host_rate_limit(&self) -> Result<Option<Any>, TranslateError> {
        self.rate_limit(None)
            .map(|o| local_rate_limit(o, None).map(|rl| encode::any(&rl)))
            .transpose()
    }

    /// The default route of a service port: everything to the port's
    /// cluster, with Istio's default retries (HTTP), or CONNECT tunnels to
    /// it (TCP and TLS ports, which trellis-proxy serves only as tunnels).
    pub fn default_route(&self, port: u16, http: bool) -> Route {
        let (cluster, hash) = self
            .destination(
                "",
                &Destination {
                    host: self.host.to_string(),
                    subset: None,
                    port: Some(trellis_model::networking::PortSelector {
                        number: u32::from(port),
                    }),
                },
                Some(port),
                &At::new("", ""),
            )
            .unwrap_or_else(|_| (names::cluster(port, None, self.host), None));
        let name = names::default_route(self.host, port);
        if !http {
            return connect_route(name, vec![(cluster, 100)]);
        }
        Route {
            name,
            r#match: Some(route_match(None)),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
                timeout: Some(duration(Duration::ZERO)),
                max_stream_duration: Some(max_stream_duration(None)),
                retry_policy: Some(istio_default_retry()),
                hash_policy: hash.into_iter().collect(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    /// A VirtualService's HTTP routes for one virtual host. `request_port`
    /// is the port requests arrive on (None for a host that is not a
    /// service: any port). Routes that fail to translate are reported in
    /// `errors` and left out.
    pub fn http_routes(
        &self,
        vs: &Object<VirtualServiceSpec>,
        request_port: Option<u16>,
        filter: PortFilter,
        errors: &mut Vec<TranslateError>,
    ) -> Vec<Route> {
        let mut out = Vec::new();
        for (i, r) in vs.spec.http.iter().enumerate() {
            let at = At::new(
                format!("VirtualService {}", vs.key()),
                format!("spec.http[{i}]"),
            );
            match self.http_route(vs, i, r, request_port, filter, &at) {
                Ok(routes) => out.extend(routes),
                Err(e) => errors.push(e),
            }
        }
        out
    }

    fn http_route(
        &self,
        vs: &Object<VirtualServiceSpec>,
        index: usize,
        r: &HttpRoute,
        request_port: Option<u16>,
        filter: PortFilter,
        at: &At,
    ) -> Result<Vec<Route>, TranslateError> {
        let blocks: Vec<Option<&HttpMatchRequest>> = if r.matches.is_empty() {
            vec![None]
        } else {
            r.matches
                .iter()
                .filter(|m| filter.keeps(m.port))
                .map(Some)
                .collect()
        };
        if blocks.is_empty() {
            return Ok(Vec::new());
        }
        let ns = vs.metadata.namespace.as_str();
        let single = r.route.len() == 1;
        let mut dests = Vec::new();
        for (k, d) in r.route.iter().enumerate() {
            let (cluster, hash) = self.destination(
                ns,
                &d.destination,
                request_port,
                &at.field(&format!("route[{k}].destination")),
            )?;
            dests.push(Dest {
                cluster,
                weight: if single { 100 } else { d.weight.unwrap_or(0) },
                headers: d.headers.clone(),
                hash,
            });
        }
        let mut action = RouteAction {
            cluster_specifier: Some(cluster_specifier(&dests)),
            ..Default::default()
        };
        // Every destination's hash key, in order and without repeats (one
        // key in the usual case; Envoy hashes on all of them).
        for d in &dests {
            if let Some(h) = &d.hash
                && !action.hash_policy.contains(h)
            {
                action.hash_policy.push(h.clone());
            }
        }
        let timeout = r
            .timeout
            .as_deref()
            .map(|t| at.field("timeout").duration(t))
            .transpose()?
            .filter(|d| !d.is_zero());
        // 0s disables Envoy's default 15 s route timeout (Istio does the same).
        action.timeout = Some(duration(timeout.unwrap_or(Duration::ZERO)));
        action.max_stream_duration = Some(max_stream_duration(timeout));
        action.retry_policy = retry_policy(r.retries.as_ref(), at)?;
        for (k, m) in r.mirror_policies().iter().enumerate() {
            let (cluster, _) = self.destination(
                ns,
                &m.destination,
                request_port,
                &at.field(&format!("mirrors[{k}].destination")),
            )?;
            action
                .request_mirror_policies
                .push(route_action::RequestMirrorPolicy {
                    cluster,
                    runtime_fraction: Some(RuntimeFractionalPercent {
                        default_value: Some(fraction(m.effective_percentage())),
                        runtime_key: String::new(),
                    }),
                    ..Default::default()
                });
        }
        if let Some(a) = r.rewrite.as_ref().and_then(|rw| rw.authority.as_ref()) {
            action.host_rewrite_specifier = Some(
                route_action::HostRewriteSpecifier::HostRewriteLiteral(a.clone()),
            );
        }
        let mut per_filter: HashMap<String, Any> = HashMap::new();
        if let Some(f) = &r.fault {
            per_filter.insert(filter::FAULT.to_string(), encode::any(&fault(f, at)?));
        }
        if let Some(name) = r.name.as_deref()
            && let Some(o) = self.rate_limit(Some(name))
        {
            per_filter.insert(
                filter::RATE_LIMIT_ROUTE.to_string(),
                encode::any(&local_rate_limit(o, Some(name))?),
            );
        }
        let req = edits(r.headers.as_ref().and_then(|h| h.request.as_ref()));
        let resp = edits(r.headers.as_ref().and_then(|h| h.response.as_ref()));
        let name = names::vs_route(&vs.key(), r.name.as_deref(), index);
        Ok(blocks
            .into_iter()
            .map(|m| {
                let mut action = action.clone();
                if let Some(rw) = &r.rewrite {
                    uri_rewrite(&mut action, rw, m);
                }
                Route {
                    name: name.clone(),
                    r#match: Some(route_match(m)),
                    action: Some(route::Action::Route(action)),
                    typed_per_filter_config: per_filter.clone(),
                    request_headers_to_add: req.add.clone(),
                    request_headers_to_remove: req.remove.clone(),
                    response_headers_to_add: resp.add.clone(),
                    response_headers_to_remove: resp.remove.clone(),
                    ..Default::default()
                }
            })
            .collect())
    }

    /// A VirtualService's TCP routes for one virtual host: the first route
    /// whose `match` ports include the port (or that has none), as CONNECT
    /// tunnels; trellis-proxy carries opaque TCP only through CONNECT.
    pub fn tcp_routes(
        &self,
        vs: &Object<VirtualServiceSpec>,
        request_port: Option<u16>,
        filter: PortFilter,
        errors: &mut Vec<TranslateError>,
    ) -> Vec<Route> {
        let ns = vs.metadata.namespace.as_str();
        for (i, r) in vs.spec.tcp.iter().enumerate() {
            let ports: Vec<u32> = r.matches.iter().filter_map(|m| m.port).collect();
            let applies = ports.is_empty()
                || match filter {
                    PortFilter::Port(p) => ports.contains(&u32::from(p)),
                    PortFilter::Unconditional => false,
                };
            if !applies {
                continue;
            }
            let at = At::new(
                format!("VirtualService {}", vs.key()),
                format!("spec.tcp[{i}]"),
            );
            let single = r.route.len() == 1;
            let mut dests = Vec::new();
            for (k, d) in r.route.iter().enumerate() {
                match self.destination(
                    ns,
                    &d.destination,
                    request_port,
                    &at.field(&format!("route[{k}].destination")),
                ) {
                    Ok((c, _)) => dests.push((c, if single { 100 } else { d.weight.unwrap_or(0) })),
                    Err(e) => {
                        errors.push(e);
                        return Vec::new();
                    }
                }
            }
            return vec![connect_route(format!("{}|tcp[{i}]", vs.key()), dests)];
        }
        Vec::new()
    }
}

/// `max_stream_duration`: the caller's `grpc-timeout` is honoured, capped
/// by the route timeout (trellis-proxy takes the smaller of the two).
fn max_stream_duration(timeout: Option<Duration>) -> route_action::MaxStreamDuration {
    route_action::MaxStreamDuration {
        grpc_timeout_header_max: Some(duration(timeout.unwrap_or(Duration::ZERO))),
        ..Default::default()
    }
}

fn cluster_specifier(dests: &[Dest]) -> route_action::ClusterSpecifier {
    let weighted: Vec<&Dest> = dests.iter().filter(|d| d.weight > 0).collect();
    if let [only] = weighted.as_slice()
        && only.headers.is_none()
    {
        return route_action::ClusterSpecifier::Cluster(only.cluster.clone());
    }
    route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
        clusters: weighted
            .into_iter()
            .map(|d| {
                let req = edits(d.headers.as_ref().and_then(|h| h.request.as_ref()));
                let resp = edits(d.headers.as_ref().and_then(|h| h.response.as_ref()));
                ClusterWeight {
                    name: d.cluster.clone(),
                    weight: Some(u32v(d.weight)),
                    request_headers_to_add: req.add,
                    request_headers_to_remove: req.remove,
                    response_headers_to_add: resp.add,
                    response_headers_to_remove: resp.remove,
                    ..Default::default()
                }
            })
            .collect(),
        ..Default::default()
    })
}

/// A route that accepts CONNECT and tunnels the bytes to the clusters.
fn connect_route(name: String, dests: Vec<(String, u32)>) -> Route {
    let weighted: Vec<(String, u32)> = dests.into_iter().filter(|(_, w)| *w > 0).collect();
    let spec = match weighted.as_slice() {
        [(only, _)] => route_action::ClusterSpecifier::Cluster(only.clone()),
        _ => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: weighted
                .into_iter()
                .map(|(name, w)| ClusterWeight {
                    name,
                    weight: Some(u32v(w)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    Route {
        name,
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::ConnectMatcher(
                route_match::ConnectMatcher {},
            )),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(spec),
            timeout: Some(duration(Duration::ZERO)),
            upgrade_configs: vec![route_action::UpgradeConfig {
                upgrade_type: "CONNECT".to_string(),
                connect_config: Some(route_action::upgrade_config::ConnectConfig::default()),
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The domains of one virtual host: each alias with `:port`, and without a
/// port for port 80 (trellis-proxy reads a missing port as 80). A host's
/// any-port virtual host (None) matches any port: `host` and the prefix
/// wildcard `host:*`; a wildcard host (`*.example.org`) can only be matched
/// without a port there (Envoy allows one `*` per domain).
pub fn domains(aliases: &[String], port: Option<u16>) -> Vec<String> {
    let mut out = Vec::new();
    for a in aliases {
        match port {
            Some(p) => {
                out.push(format!("{a}:{p}"));
                // A wildcard's port-less domain stays with its any-port
                // virtual host, which also serves other ports.
                if p == 80 && !a.starts_with('*') {
                    out.push(a.clone());
                }
            }
            None => {
                out.push(a.clone());
                if !a.starts_with('*') {
                    out.push(format!("{a}:*"));
                }
            }
        }
    }
    out
}

/// The sorted distinct ports VirtualService HTTP and TCP match blocks name.
pub fn match_ports(vs: &VirtualServiceSpec) -> Vec<u16> {
    let mut ports: Vec<u16> = vs
        .http
        .iter()
        .flat_map(|r| r.matches.iter().filter_map(|m| m.port))
        .chain(
            vs.tcp
                .iter()
                .flat_map(|r| r.matches.iter().filter_map(|m| m.port)),
        )
        .filter_map(|p| u16::try_from(p).ok())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// A route table's domains, deduplicated as trellis-proxy's RouteTable does:
/// hosts in name order, each host's aliases in order, and an alias belongs
/// to the first host that claims it (Envoy rejects a domain in two virtual
/// hosts). `hosts` gives, per host name, its aliases.
pub fn claim_aliases(hosts: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    let mut claimed = std::collections::HashSet::new();
    hosts
        .iter()
        .map(|(host, aliases)| {
            let mine = aliases
                .iter()
                .filter(|a| claimed.insert((*a).clone()))
                .cloned()
                .collect();
            (host.clone(), mine)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use trellis_model::RetryOn;

    use super::policy::retry_on_string;
    use super::*;

    #[test]
    fn fractions_are_per_million() {
        assert_eq!(fraction(12.5).numerator, 125_000);
        assert_eq!(fraction(100.0).numerator, 1_000_000);
        assert_eq!(fraction(0.0001).numerator, 1);
    }

    #[test]
    fn domains_per_port() {
        let a = vec!["reviews".to_string(), "reviews.default".to_string()];
        assert_eq!(
            domains(&a, Some(9080)),
            ["reviews:9080", "reviews.default:9080"]
        );
        assert_eq!(
            domains(&a, Some(80)),
            [
                "reviews:80",
                "reviews",
                "reviews.default:80",
                "reviews.default"
            ]
        );
        assert_eq!(
            domains(&["*.example.org".to_string(), "x.org".to_string()], None),
            ["*.example.org", "x.org", "x.org:*"]
        );
    }

    #[test]
    fn retry_on_of_istio_default() {
        assert_eq!(
            retry_on_string(&RetryOn::istio_default()),
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
        );
    }
}
