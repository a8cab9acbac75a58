//! Envoy v3 resources -> the proxy's config, in two pure steps:
//!
//! 1. each resource on its own becomes a plain spec ([`listener`],
//!    [`route_config`], [`cluster`], [`assignment`]); anything trellis-proxy
//!    does not implement is a [`ConvertError`] naming the resource and the
//!    field, which the client sends back as the NACK's message;
//! 2. [`assemble`] joins a consistent set of specs (listener, its route
//!    configuration, the clusters and their endpoints) into a
//!    [`ProxyConfig`], keeping endpoint, breaker, budget and rate-limit state
//!    from the previous snapshot as `config::compile` does.
//!
//! The resources are what `trellis-translate` emits (docs/xds.md); the
//! round-trip tests check that YAML -> translate -> convert routes like
//! YAML -> compile.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster as EnvoyCluster,
    cluster::{DiscoveryType, LbConfig, LbPolicy as EnvoyLb},
};
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValueOption, HealthStatus, address, header_value_option::HeaderAppendAction,
    socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, Route as EnvoyRoute, RouteAction as EnvoyRouteAction,
    RouteConfiguration, VirtualHost as EnvoyVhost, header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options::UpstreamProtocolOptions,
    http_protocol_options::explicit_http_config::ProtocolConfig,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher as EnvoyString, string_matcher};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::{Any, Struct, Value, value};
use http::{HeaderName, HeaderValue};
use prost::Message;
use trellis_model::policy::RetryOn;
use trellis_model::validate::compile_regex;

use crate::balance::{Balancer, Endpoint, HashKey, LbPolicy, Locality};
use crate::cluster::{Cluster, UpstreamProtocol};
use crate::config::ProxyConfig;
use crate::config::compile::Resolve;
use crate::http::pool::{TcpKeepalive, UpstreamSettings};
use crate::resilience::breaker::{Breaker, Limits};
use crate::resilience::budget::{BudgetSettings, SharedBudget};
use crate::resilience::fault::{Abort, FaultPolicy};
use crate::resilience::outlier::OutlierSettings;
use crate::resilience::rate_limit::SharedBucket;
use crate::resilience::retry::RetryPolicy;
use crate::route::{
    HeaderEdits, HeaderOps, Mirror, PortRoutes, RateLimit, RequestMatch, Rewrite, Route,
    RouteAction, RouteTable, StringMatcher, TcpRoute, UriRewrite, VirtualHost, WeightedDestination,
};
use crate::telemetry::metrics::{Direction, Metrics};
use crate::tls::origination::{ClusterTls, TLS_MODE_LABEL};

/// Names that are part of the contract with the control plane (docs/xds.md).
pub mod names {
    pub const OUTBOUND: &str = "outbound";
    pub const INBOUND: &str = "inbound";
    pub const INBOUND_APP_CLUSTER: &str = "inbound|app";
    pub const TRELLIS_METADATA: &str = "trellis";
    pub const HCM: &str = "envoy.filters.network.http_connection_manager";
    pub const FAULT: &str = "envoy.filters.http.fault";
    pub const RATE_LIMIT_HOST: &str = "trellis.rate_limit.host";
    pub const RATE_LIMIT_ROUTE: &str = "trellis.rate_limit.route";
    pub const ROUTER: &str = "envoy.filters.http.router";
    pub const HTTP_PROTOCOL_OPTIONS: &str =
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    /// Prefix of a LocalRateLimit's `stat_prefix`; the rest is the policy.
    pub const RATE_LIMIT_STAT_PREFIX: &str = "trellis_rate_limit_";
}

/// A resource trellis-proxy cannot serve: the NACK's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name}: {field}: {reason}")]
pub struct ConvertError {
    /// `Listener`, `RouteConfiguration`, `Cluster`, `ClusterLoadAssignment`.
    pub kind: &'static str,
    pub name: String,
    /// Path of the field inside the resource (`virtual_hosts[2].routes[0].match`).
    pub field: String,
    pub reason: String,
}

/// Where in a resource a conversion is: builds errors that name it.
#[derive(Clone)]
struct At<'a> {
    kind: &'static str,
    name: &'a str,
    field: String,
}

impl<'a> At<'a> {
    fn new(kind: &'static str, name: &'a str) -> Self {
        At {
            kind,
            name,
            field: String::new(),
        }
    }

    fn field(&self, f: &str) -> At<'a> {
        let field = if self.field.is_empty() {
            f.to_string()
        } else if f.starts_with('[') {
            format!("{}{f}", self.field)
        } else {
            format!("{}.{f}", self.field)
        };
        At {
            kind: self.kind,
            name: self.name,
            field,
        }
    }

    fn err(&self, reason: impl Into<String>) -> ConvertError {
        ConvertError {
            kind: self.kind,
            name: self.name.to_string(),
            field: self.field.clone(),
            reason: reason.into(),
        }
    }
}

fn decode_any<M: Message + Default>(any: &Any, at: &At) -> Result<M, ConvertError> {
    M::decode(any.value.as_slice()).map_err(|e| at.err(format!("does not decode: {e}")))
}

fn dur(d: &envoy_types::pb::google::protobuf::Duration) -> Duration {
    let secs = u64::try_from(d.seconds).unwrap_or(0);
    let nanos = u32::try_from(d.nanos).unwrap_or(0);
    Duration::new(secs, nanos)
}

/// A fraction of requests as a percentage, 0 to 100.
fn percent(f: Option<&FractionalPercent>) -> f64 {
    let Some(f) = f else { return 100.0 };
    let denom = match fractional_percent::DenominatorType::try_from(f.denominator) {
        Ok(fractional_percent::DenominatorType::TenThousand) => 10_000.0,
        Ok(fractional_percent::DenominatorType::Million) => 1_000_000.0,
        _ => 100.0,
    };
    (f64::from(f.numerator) / denom * 100.0).min(100.0)
}

// ---------------------------------------------------------------- listeners

/// What a listener asks of the proxy. Listener addresses are not used: the
/// proxy binds where its flags say (`--outbound`, `--inbound`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub name: String,
    /// The RouteConfiguration it routes with (RDS), for `outbound`.
    pub rds: Option<String>,
    /// The AuthorizationPolicies of its RBAC filters, for `inbound`.
    pub authz: Option<crate::authz::Policies>,
    /// The PeerAuthentication mode its filter chains express, for `inbound`.
    pub peer_auth: Option<trellis_model::peer_authentication::Effective>,
}

/// `outbound` is configured from xDS (RDS-routed HTTP); of `inbound` only
/// its RBAC filters (AuthorizationPolicy, `super::rbac`) are used, since the
/// proxy's inbound side forwards to `--app`.
pub fn listener(l: &Listener) -> Result<ListenerSpec, ConvertError> {
    let at = At::new("Listener", &l.name);
    match l.name.as_str() {
        names::INBOUND => Ok(ListenerSpec {
            name: l.name.clone(),
            rds: None,
            authz: Some(super::rbac::inbound(l)?),
            peer_auth: Some(super::tls::inbound(l).map_err(|(f, r)| at.field(&f).err(r))?),
        }),
        names::OUTBOUND => {
            if l.filter_chains.len() != 1 || l.default_filter_chain.is_some() {
                return Err(at
                    .field("filter_chains")
                    .err("exactly one filter chain (an HTTP connection manager) is supported"));
            }
            let chain = &l.filter_chains[0];
            if chain.transport_socket.is_some() {
                return Err(at
                    .field("filter_chains[0].transport_socket")
                    .err("TLS on the outbound listener is not supported"));
            }
            let [f] = chain.filters.as_slice() else {
                return Err(at
                    .field("filter_chains[0].filters")
                    .err("exactly one filter (an HTTP connection manager) is supported"));
            };
            let at = at.field("filter_chains[0].filters[0]");
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                return Err(at.err("needs a typed_config"));
            };
            if f.name != names::HCM && !any.type_url.ends_with(".HttpConnectionManager") {
                return Err(at.field("name").err(format!(
                    "filter {} is not supported (only {})",
                    f.name,
                    names::HCM
                )));
            }
            let hcm: HttpConnectionManager = decode_any(any, &at)?;
            for (i, hf) in hcm.http_filters.iter().enumerate() {
                let known = [
                    names::RATE_LIMIT_HOST,
                    names::RATE_LIMIT_ROUTE,
                    names::FAULT,
                    names::ROUTER,
                ];
                if !known.contains(&hf.name.as_str()) {
                    return Err(at.field(&format!("http_filters[{i}].name")).err(format!(
                        "HTTP filter {} is not supported (supported: {})",
                        hf.name,
                        known.join(", ")
                    )));
                }
            }
            match &hcm.route_specifier {
                Some(RouteSpecifier::Rds(rds)) => Ok(ListenerSpec {
                    name: l.name.clone(),
                    rds: Some(rds.route_config_name.clone()),
                    authz: None,
                    peer_auth: None,
                }),
                _ => Err(at
                    .field("route_specifier")
                    .err("only RDS is supported (routes from a RouteConfiguration)")),
            }
        }
        other => Err(at.err(format!(
            "trellis-proxy serves only the {} and {} listeners, not {other:?}",
            names::OUTBOUND,
            names::INBOUND
        ))),
    }
}

// -------------------------------------------------------------------- routes

/// A RouteConfiguration as the proxy sees it.
#[derive(Debug, Clone)]
pub struct RouteConfigSpec {
    pub name: String,
    pub vhosts: Vec<VhostSpec>,
}

/// One Envoy virtual host: one (host, port) of the proxy's RouteTable.
#[derive(Debug, Clone)]
pub struct VhostSpec {
    /// The canonical host (the virtual host's name without `:<port>`).
    pub host: String,
    /// None: any port (`host:*`).
    pub port: Option<u16>,
    /// The names the host is reached by, ports stripped.
    pub aliases: Vec<String>,
    pub rate_limit: Option<LimitSpec>,
    pub routes: RoutesSpec,
}

#[derive(Debug, Clone)]
pub enum RoutesSpec {
    Http(Vec<RouteSpec>),
    /// CONNECT tunnels: weighted clusters.
    Tcp(Vec<(String, u32)>),
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: Arc<str>,
    /// None matches everything (`prefix: /` and nothing else).
    pub matches: Option<RequestMatch>,
    pub destinations: Vec<DestSpec>,
    pub rewrite: Option<Rewrite>,
    pub timeout: Option<Duration>,
    pub headers: HeaderOps,
    pub retry: RetryPolicy,
    pub fault: Option<FaultPolicy>,
    /// (cluster, percent).
    pub mirrors: Vec<(String, f64)>,
    pub rate_limit: Option<LimitSpec>,
    /// The route's hash policies, in order: ring-hash clusters take their key from them.
    pub hash: Vec<HashKey>,
}

#[derive(Debug, Clone)]
pub struct DestSpec {
    pub cluster: String,
    pub weight: u32,
    pub headers: HeaderOps,
}

/// A local token bucket (RateLimitPolicy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSpec {
    /// The policy's name as far as the resource says it (the stat prefix).
    pub policy: String,
    pub max: u32,
    pub per_fill: u32,
    pub interval: Duration,
}

pub fn route_config(rc: &RouteConfiguration) -> Result<RouteConfigSpec, ConvertError> {
    let at = At::new("RouteConfiguration", &rc.name);
    if !rc.most_specific_header_mutations_wins
        && rc.virtual_hosts.iter().any(|v| {
            v.routes.iter().any(|r| {
                !r.request_headers_to_add.is_empty() || !r.response_headers_to_add.is_empty()
            })
        })
    {
        // trellis-proxy applies a destination's edits after its route's.
        return Err(at
            .field("most_specific_header_mutations_wins")
            .err("must be true: a destination's header edits apply after its route's"));
    }
    if !rc.request_headers_to_add.is_empty()
        || !rc.response_headers_to_add.is_empty()
        || !rc.request_headers_to_remove.is_empty()
        || !rc.response_headers_to_remove.is_empty()
    {
        return Err(at
            .field("request/response_headers_to_add/remove")
            .err("header edits on the whole route configuration are not supported"));
    }
    let vhosts = rc
        .virtual_hosts
        .iter()
        .enumerate()
        .map(|(i, vh)| vhost(vh, &at.field(&format!("virtual_hosts[{i}]"))))
        .collect::<Result<_, _>>()?;
    Ok(RouteConfigSpec {
        name: rc.name.clone(),
        vhosts,
    })
}

/// `host:port` -> (host, Some(port)); `host:*` and `host` -> (host, None).
fn split_port(s: &str) -> (&str, Option<Option<u16>>) {
    match s.rsplit_once(':') {
        Some((h, "*")) => (h, Some(None)),
        Some((h, p)) if !h.is_empty() => match p.parse::<u16>() {
            Ok(p) => (h, Some(Some(p))),
            Err(_) => (s, None),
        },
        _ => (s, None),
    }
}

fn vhost(vh: &EnvoyVhost, at: &At) -> Result<VhostSpec, ConvertError> {
    // Virtual hosts are named `<host>:<port>` or `<host>:*` (docs/xds.md).
    let (host, port) = match split_port(&vh.name) {
        (h, Some(p)) => (h.to_string(), p),
        (h, None) => {
            // A name without a port: take the port from the domains, if one.
            let ports: Vec<Option<u16>> =
                vh.domains.iter().filter_map(|d| split_port(d).1).collect();
            let port = ports.first().copied().flatten();
            (h.to_string(), port)
        }
    };
    let mut aliases: Vec<String> = Vec::new();
    for d in &vh.domains {
        let (alias, _) = split_port(d);
        let alias = alias.to_ascii_lowercase();
        if alias == "*" && vh.domains.len() == 1 {
            aliases.push(alias);
            continue;
        }
        if !aliases.contains(&alias) {
            aliases.push(alias);
        }
    }
    if vh.require_tls != 0 {
        return Err(at.field("require_tls").err("TLS is not supported yet"));
    }
    if !vh.request_headers_to_add.is_empty()
        || !vh.response_headers_to_add.is_empty()
        || !vh.request_headers_to_remove.is_empty()
        || !vh.response_headers_to_remove.is_empty()
    {
        return Err(at
            .field("request/response_headers_to_add/remove")
            .err("header edits on a virtual host are not supported"));
    }
    if vh.retry_policy.is_some() || vh.retry_policy_typed_config.is_some() {
        return Err(at
            .field("retry_policy")
            .err("retry policies on a virtual host are not supported (set them per route)"));
    }
    let mut rate_limit = None;
    for (k, any) in &vh.typed_per_filter_config {
        let at = at.field(&format!("typed_per_filter_config[{k}]"));
        match k.as_str() {
            names::RATE_LIMIT_HOST => rate_limit = local_rate_limit(any, &at)?,
            other => {
                return Err(at.err(format!(
                    "per-filter config for {other} on a virtual host is not supported (only {})",
                    names::RATE_LIMIT_HOST
                )));
            }
        }
    }
    let connect = |r: &EnvoyRoute| {
        matches!(
            r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()),
            Some(route_match::PathSpecifier::ConnectMatcher(_))
        )
    };
    let routes = if !vh.routes.is_empty() && vh.routes.iter().all(connect) {
        // A TCP port: the first CONNECT route carries the tunnels.
        let r = &vh.routes[0];
        let at = at.field("routes[0]");
        let Some(route::Action::Route(a)) = &r.action else {
            return Err(at.field("action").err("only route actions are supported"));
        };
        let dests = destinations(a, &at.field("route"))?;
        RoutesSpec::Tcp(dests.into_iter().map(|d| (d.cluster, d.weight)).collect())
    } else {
        let mut out = Vec::new();
        for (i, r) in vh.routes.iter().enumerate() {
            let at = at.field(&format!("routes[{i}]"));
            if connect(r) {
                return Err(at
                    .field("match.connect_matcher")
                    .err("CONNECT routes and HTTP routes in one virtual host are not supported"));
            }
            out.push(http_route(r, &vh.name, i, &at)?);
        }
        RoutesSpec::Http(out)
    };
    Ok(VhostSpec {
        host,
        port,
        aliases,
        rate_limit,
        routes,
    })
}

fn string_matcher(sm: &EnvoyString, at: &At) -> Result<StringMatcher, ConvertError> {
    if sm.ignore_case {
        return Err(at
            .field("ignore_case")
            .err("case-insensitive string matches are not supported"));
    }
    match &sm.match_pattern {
        Some(string_matcher::MatchPattern::Exact(e)) => Ok(StringMatcher::Exact(e.clone())),
        Some(string_matcher::MatchPattern::Prefix(p)) => Ok(StringMatcher::Prefix(p.clone())),
        Some(string_matcher::MatchPattern::SafeRegex(r)) => compile_regex(&r.regex)
            .map(StringMatcher::Regex)
            .map_err(|e| at.field("safe_regex").err(e)),
        Some(string_matcher::MatchPattern::Suffix(_)) => {
            Err(at.field("suffix").err("suffix matches are not supported"))
        }
        Some(string_matcher::MatchPattern::Contains(_)) => Err(at
            .field("contains")
            .err("contains matches are not supported")),
        _ => Err(at.err("only exact, prefix and safe_regex matches are supported")),
    }
}

fn header_matcher(h: &HeaderMatcher, at: &At) -> Result<StringMatcher, ConvertError> {
    match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(sm)) => {
            string_matcher(sm, &at.field("string_match"))
        }
        Some(HeaderMatchSpecifier::PresentMatch(true)) => Ok(StringMatcher::Present),
        _ => Err(at.err(
            "only string_match (exact, prefix, safe_regex) and present_match: true are supported",
        )),
    }
}

fn request_match(
    m: &envoy_types::pb::envoy::config::route::v3::RouteMatch,
    at: &At,
) -> Result<Option<RequestMatch>, ConvertError> {
    let mut out = RequestMatch::default();
    let case_sensitive = m.case_sensitive.as_ref().is_none_or(|b| b.value);
    out.uri = match &m.path_specifier {
        // Every path starts with `/`: no condition, as an Istio block without `uri`.
        Some(route_match::PathSpecifier::Prefix(p)) if p == "/" => None,
        Some(route_match::PathSpecifier::Prefix(p)) => Some(StringMatcher::Prefix(p.clone())),
        Some(route_match::PathSpecifier::Path(p)) => Some(StringMatcher::Exact(p.clone())),
        Some(route_match::PathSpecifier::SafeRegex(r)) => Some(
            compile_regex(&r.regex)
                .map(StringMatcher::Regex)
                .map_err(|e| at.field("safe_regex").err(e))?,
        ),
        _ => {
            return Err(at
                .field("path_specifier")
                .err("only prefix, path and safe_regex are supported"));
        }
    };
    out.ignore_uri_case = !case_sensitive;
    if m.grpc.is_some() {
        return Err(at.field("grpc").err("gRPC route matches are not supported"));
    }
    if m.runtime_fraction.is_some() {
        return Err(at
            .field("runtime_fraction")
            .err("runtime fractions are not supported"));
    }
    if m.tls_context.is_some() || !m.dynamic_metadata.is_empty() || !m.filter_state.is_empty() {
        return Err(
            at.err("tls_context, dynamic_metadata and filter_state matches are not supported")
        );
    }
    for (i, h) in m.headers.iter().enumerate() {
        let at = at.field(&format!("headers[{i}]"));
        let sm = header_matcher(h, &at)?;
        let pseudo = match h.name.as_str() {
            ":method" => Some(&mut out.method),
            ":scheme" => Some(&mut out.scheme),
            ":authority" => Some(&mut out.authority),
            _ => None,
        };
        if let Some(slot) = pseudo {
            if h.invert_match {
                return Err(at
                    .field("invert_match")
                    .err(format!("an inverted match on {} is not supported", h.name)));
            }
            *slot = Some(sm);
            continue;
        }
        let name = HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
            .map_err(|e| at.field("name").err(e.to_string()))?;
        if h.invert_match {
            // trellis-proxy's withoutHeaders: a request without the header passes.
            out.without_headers.push((name, sm));
        } else {
            out.headers.push((name, sm));
        }
    }
    for (i, q) in m.query_parameters.iter().enumerate() {
        let at = at.field(&format!("query_parameters[{i}]"));
        let sm = match &q.query_parameter_match_specifier {
            Some(QueryParameterMatchSpecifier::StringMatch(sm)) => {
                string_matcher(sm, &at.field("string_match"))?
            }
            Some(QueryParameterMatchSpecifier::PresentMatch(true)) => StringMatcher::Present,
            _ => return Err(at.err("only string_match and present_match: true are supported")),
        };
        let QueryParameterMatcher { name, .. } = q;
        out.query_params.push((name.clone(), sm));
    }
    let unconditional = out.uri.is_none()
        && out.method.is_none()
        && out.scheme.is_none()
        && out.authority.is_none()
        && out.headers.is_empty()
        && out.without_headers.is_empty()
        && out.query_params.is_empty();
    Ok((!unconditional).then_some(out))
}

fn header_edits(
    add: &[HeaderValueOption],
    remove: &[String],
    at: &At,
) -> Result<HeaderEdits, ConvertError> {
    let mut out = HeaderEdits::default();
    for (i, o) in add.iter().enumerate() {
        let at = at.field(&format!("headers_to_add[{i}]"));
        let Some(h) = &o.header else {
            return Err(at.field("header").err("required"));
        };
        let name = HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes())
            .map_err(|e| at.field("header.key").err(e.to_string()))?;
        let raw = if h.raw_value.is_empty() {
            h.value.as_bytes()
        } else {
            h.raw_value.as_slice()
        };
        let value = HeaderValue::from_bytes(raw)
            .map_err(|e| at.field("header.value").err(e.to_string()))?;
        // Deprecated, but an older control plane may still send it.
        #[allow(deprecated)]
        let legacy_append = o.append.is_some();
        if legacy_append {
            return Err(at
                .field("append")
                .err("the deprecated append field is not supported: use append_action"));
        }
        match HeaderAppendAction::try_from(o.append_action) {
            Ok(HeaderAppendAction::OverwriteIfExistsOrAdd) => out.set.push((name, value)),
            Ok(HeaderAppendAction::AppendIfExistsOrAdd) => out.add.push((name, value)),
            _ => {
                return Err(at.field("append_action").err(
                    "only OVERWRITE_IF_EXISTS_OR_ADD (set) and APPEND_IF_EXISTS_OR_ADD (add) are supported",
                ));
            }
        }
    }
    for r in remove {
        let name = HeaderName::from_bytes(r.to_ascii_lowercase().as_bytes())
            .map_err(|e| at.field("headers_to_remove").err(e.to_string()))?;
        out.remove.push(name);
    }
    Ok(out)
}

fn destinations(a: &EnvoyRouteAction, at: &At) -> Result<Vec<DestSpec>, ConvertError> {
    match &a.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => Ok(vec![DestSpec {
            cluster: c.clone(),
            weight: 100,
            headers: HeaderOps::default(),
        }]),
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            let mut out = Vec::new();
            for (i, c) in w.clusters.iter().enumerate() {
                let at = at.field(&format!("weighted_clusters.clusters[{i}]"));
                if !c.cluster_header.is_empty() {
                    return Err(at.field("cluster_header").err("not supported"));
                }
                if !c.typed_per_filter_config.is_empty() {
                    return Err(at
                        .field("typed_per_filter_config")
                        .err("per-destination filter configs are not supported"));
                }
                out.push(DestSpec {
                    cluster: c.name.clone(),
                    weight: c.weight.as_ref().map_or(0, |w| w.value),
                    headers: HeaderOps {
                        request: header_edits(
                            &c.request_headers_to_add,
                            &c.request_headers_to_remove,
                            &at.field("request"),
                        )?,
                        response: header_edits(
                            &c.response_headers_to_add,
                            &c.response_headers_to_remove,
                            &at.field("response"),
                        )?,
                    },
                });
            }
            Ok(out)
        }
        _ => Err(at
            .field("cluster_specifier")
            .err("only cluster and weighted_clusters are supported")),
    }
}

/// Envoy's (RE2) substitution text -> the regex crate's: `\N` is a group,
/// `\\` a backslash, and `$` is literal in RE2 but not in the regex crate.
fn re2_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                out.push_str(&format!("${{{digits}}}"));
            }
            '\\' if chars.peek() == Some(&'\\') => {
                chars.next();
                out.push('\\');
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

/// Envoy's `retry_on` tokens -> the proxy's conditions.
fn retry_on(s: &str, codes: &[u32], at: &At) -> Result<RetryOn, ConvertError> {
    let mut on = RetryOn::default();
    for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let flag = match token {
            "5xx" => &mut on.five_xx,
            "gateway-error" => &mut on.gateway_error,
            "reset" => &mut on.reset,
            "connect-failure" => &mut on.connect_failure,
            "refused-stream" => &mut on.refused_stream,
            "retriable-4xx" => &mut on.retriable_4xx,
            "unavailable" => &mut on.grpc_unavailable,
            "cancelled" => &mut on.grpc_cancelled,
            "deadline-exceeded" => &mut on.grpc_deadline_exceeded,
            "internal" => &mut on.grpc_internal,
            "resource-exhausted" => &mut on.grpc_resource_exhausted,
            "retriable-status-codes" => continue,
            other => {
                return Err(at
                    .field("retry_on")
                    .err(format!("retry condition {other:?} is not supported")));
            }
        };
        *flag = true;
    }
    if s.split(',').any(|t| t.trim() == "retriable-status-codes") {
        on.status_codes = codes
            .iter()
            .map(|c| {
                u16::try_from(*c)
                    .map_err(|_| at.field("retriable_status_codes").err("out of range"))
            })
            .collect::<Result<_, _>>()?;
    }
    Ok(on)
}

const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
const PREVIOUS_PRIORITIES: &str = "envoy.retry_priorities.previous_priorities";
/// trellis-proxy's backoff (Envoy's defaults): 25 ms base, 250 ms cap.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(25), Duration::from_millis(250));

fn retry_policy(
    p: Option<&envoy_types::pb::envoy::config::route::v3::RetryPolicy>,
    at: &At,
) -> Result<RetryPolicy, ConvertError> {
    let Some(p) = p else {
        // No policy: no retries (Envoy's meaning).
        return Ok(RetryPolicy {
            retries: 0,
            per_try_timeout: None,
            retry_on: RetryOn::default(),
            retry_remote_localities: false,
            ignore_previous_hosts: true,
        });
    };
    let at = at.field("retry_policy");
    let mut ignore_previous_hosts = false;
    for (i, h) in p.retry_host_predicate.iter().enumerate() {
        if h.name != PREVIOUS_HOSTS {
            return Err(at.field(&format!("retry_host_predicate[{i}]")).err(format!(
                "predicate {} is not supported (only {PREVIOUS_HOSTS})",
                h.name
            )));
        }
        ignore_previous_hosts = true;
    }
    let retry_remote_localities = match &p.retry_priority {
        None => false,
        Some(r) if r.name == PREVIOUS_PRIORITIES => true,
        Some(r) => {
            return Err(at.field("retry_priority").err(format!(
                "{} is not supported (only {PREVIOUS_PRIORITIES})",
                r.name
            )));
        }
    };
    if let Some(b) = &p.retry_back_off {
        let base = b.base_interval.as_ref().map(dur);
        let max = b.max_interval.as_ref().map(dur);
        if base.is_some_and(|d| d != BACKOFF.0) || max.is_some_and(|d| d != BACKOFF.1) {
            return Err(at
                .field("retry_back_off")
                .err("only base_interval 25ms and max_interval 250ms are supported"));
        }
    }
    if p.rate_limited_retry_back_off.is_some() || !p.retriable_headers.is_empty() {
        return Err(at.err("rate_limited_retry_back_off and retriable_headers are not supported"));
    }
    Ok(RetryPolicy {
        // Envoy's default is one retry.
        retries: p.num_retries.as_ref().map_or(1, |n| n.value),
        per_try_timeout: p.per_try_timeout.as_ref().map(dur).filter(|d| !d.is_zero()),
        retry_on: retry_on(&p.retry_on, &p.retriable_status_codes, &at)?,
        retry_remote_localities,
        ignore_previous_hosts,
    })
}

fn hash_key(h: &route_action::HashPolicy, at: &At) -> Result<HashKey, ConvertError> {
    use route_action::hash_policy::PolicySpecifier as P;
    match &h.policy_specifier {
        Some(P::Header(h)) => {
            if h.regex_rewrite.is_some() {
                return Err(at.field("header.regex_rewrite").err("not supported"));
            }
            HeaderName::from_bytes(h.header_name.to_ascii_lowercase().as_bytes())
                .map(HashKey::Header)
                .map_err(|e| at.field("header.header_name").err(e.to_string()))
        }
        Some(P::Cookie(c)) => Ok(HashKey::Cookie {
            name: c.name.clone(),
        }),
        Some(P::ConnectionProperties(c)) if c.source_ip => Ok(HashKey::SourceIp),
        Some(P::QueryParameter(q)) => Ok(HashKey::QueryParam(q.name.clone())),
        _ => Err(at.err(
            "only header, cookie, query_parameter and connection_properties.source_ip are supported",
        )),
    }
}

fn fault(any: &Any, at: &At) -> Result<FaultPolicy, ConvertError> {
    let f: HttpFault = decode_any(any, at)?;
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
    let delay = match &f.delay {
        None => None,
        Some(d) => match &d.fault_delay_secifier {
            Some(FaultDelaySecifier::FixedDelay(fd)) => {
                Some((dur(fd), percent(d.percentage.as_ref())))
            }
            _ => {
                return Err(at
                    .field("delay")
                    .err("only fixed_delay is supported (not header_delay)"));
            }
        },
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let what = match &a.error_type {
                Some(fault_abort::ErrorType::HttpStatus(s)) => Abort::Http(
                    u16::try_from(*s)
                        .map_err(|_| at.field("abort.http_status").err("out of range"))?,
                ),
                Some(fault_abort::ErrorType::GrpcStatus(g)) => Abort::Grpc(*g),
                _ => {
                    return Err(at
                        .field("abort")
                        .err("only http_status and grpc_status are supported (not header_abort)"));
                }
            };
            Some((what, percent(a.percentage.as_ref())))
        }
    };
    if !f.upstream_cluster.is_empty() || !f.headers.is_empty() || !f.downstream_nodes.is_empty() {
        return Err(
            at.err("upstream_cluster, headers and downstream_nodes conditions are not supported")
        );
    }
    Ok(FaultPolicy { delay, abort })
}

fn all_of_them(
    f: Option<&envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent>,
) -> bool {
    f.is_none_or(|f| percent(f.default_value.as_ref()) >= 100.0)
}

/// A RateLimitPolicy bucket; None for a filter config without a bucket.
fn local_rate_limit(any: &Any, at: &At) -> Result<Option<LimitSpec>, ConvertError> {
    let rl: LocalRateLimit = decode_any(any, at)?;
    let Some(tb) = &rl.token_bucket else {
        return Ok(None);
    };
    if !all_of_them(rl.filter_enabled.as_ref()) || !all_of_them(rl.filter_enforced.as_ref()) {
        return Err(at
            .field("filter_enabled")
            .err("rate limits that apply to a share of requests are not supported (use 100%)"));
    }
    if !rl.descriptors.is_empty() {
        return Err(at.field("descriptors").err("descriptors are not supported"));
    }
    if rl.status.as_ref().is_some_and(|s| s.code != 429) {
        return Err(at.field("status").err("only 429 is supported"));
    }
    let interval = tb.fill_interval.as_ref().map(dur).unwrap_or_default();
    if interval.is_zero() {
        return Err(at.field("token_bucket.fill_interval").err("required"));
    }
    let policy = rl
        .stat_prefix
        .strip_prefix(names::RATE_LIMIT_STAT_PREFIX)
        .unwrap_or(&rl.stat_prefix)
        .to_string();
    Ok(Some(LimitSpec {
        policy,
        max: tb.max_tokens,
        per_fill: tb.tokens_per_fill.as_ref().map_or(1, |n| n.value),
        interval,
    }))
}

fn http_route(
    r: &EnvoyRoute,
    vhost: &str,
    index: usize,
    at: &At,
) -> Result<RouteSpec, ConvertError> {
    let name: Arc<str> = if r.name.is_empty() {
        format!("{vhost}|routes[{index}]").into()
    } else {
        r.name.as_str().into()
    };
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| at.field("match").err("required"))?;
    let matches = request_match(m, &at.field("match"))?;
    let Some(route::Action::Route(a)) = &r.action else {
        return Err(at
            .field("action")
            .err("only route actions are supported (not redirect or direct_response)"));
    };
    let aat = at.field("route");
    let destinations = destinations(a, &aat)?;
    let rewrite_uri = match (&a.prefix_rewrite, &a.regex_rewrite) {
        (p, None) if p.is_empty() => None,
        (p, None) => {
            if matches!(
                m.path_specifier,
                Some(route_match::PathSpecifier::SafeRegex(_))
            ) {
                return Err(aat
                    .field("prefix_rewrite")
                    .err("a prefix rewrite after a regex match is not supported"));
            }
            Some(UriRewrite::Replace(p.clone()))
        }
        (p, Some(rr)) if p.is_empty() => {
            let pattern = rr.pattern.as_ref().map(|p| p.regex.as_str()).unwrap_or("");
            let re = regex::Regex::new(pattern)
                .map_err(|e| aat.field("regex_rewrite.pattern").err(e.to_string()))?;
            Some(UriRewrite::Regex(re, re2_substitution(&rr.substitution)))
        }
        _ => {
            return Err(aat
                .field("prefix_rewrite")
                .err("prefix_rewrite and regex_rewrite together are not supported"));
        }
    };
    use route_action::HostRewriteSpecifier as H;
    let authority = match &a.host_rewrite_specifier {
        None => None,
        Some(H::HostRewriteLiteral(h)) => Some(
            HeaderValue::from_str(h)
                .map_err(|e| aat.field("host_rewrite_literal").err(e.to_string()))?,
        ),
        Some(_) => {
            return Err(aat
                .field("host_rewrite_specifier")
                .err("only host_rewrite_literal is supported"));
        }
    };
    let rewrite = (rewrite_uri.is_some() || authority.is_some()).then(|| Rewrite {
        uri: rewrite_uri,
        authority,
    });
    // Unset: Envoy's 15 s default route timeout; 0s: none.
    let timeout = match &a.timeout {
        None => Some(Duration::from_secs(15)),
        Some(t) => Some(dur(t)).filter(|d| !d.is_zero()),
    };
    if a.idle_timeout.is_some() {
        return Err(aat
            .field("idle_timeout")
            .err("route idle timeouts are not supported"));
    }
    // trellis-proxy always honours a caller's `grpc-timeout`, capped by the
    // route timeout: the only cap it can express is the route timeout.
    if let Some(msd) = &a.max_stream_duration {
        let cap = msd.grpc_timeout_header_max.as_ref().map(dur);
        if cap.is_some_and(|c| Some(c).filter(|c| !c.is_zero()) != timeout) {
            return Err(aat
                .field("max_stream_duration.grpc_timeout_header_max")
                .err("must equal the route timeout (trellis-proxy caps grpc-timeout by it)"));
        }
        if msd.max_stream_duration.is_some() || msd.grpc_timeout_header_offset.is_some() {
            return Err(aat
                .field("max_stream_duration")
                .err("only grpc_timeout_header_max is supported"));
        }
    }
    let retry = retry_policy(a.retry_policy.as_ref(), &aat)?;
    let mut mirrors = Vec::new();
    for (i, mp) in a.request_mirror_policies.iter().enumerate() {
        let at = aat.field(&format!("request_mirror_policies[{i}]"));
        if mp.cluster.is_empty() {
            return Err(at
                .field("cluster")
                .err("required (cluster_header is not supported)"));
        }
        let pct = mp
            .runtime_fraction
            .as_ref()
            .map_or(100.0, |f| percent(f.default_value.as_ref()));
        mirrors.push((mp.cluster.clone(), pct));
    }
    let hash = a
        .hash_policy
        .iter()
        .enumerate()
        .map(|(i, h)| hash_key(h, &aat.field(&format!("hash_policy[{i}]"))))
        .collect::<Result<_, _>>()?;
    for (i, u) in a.upgrade_configs.iter().enumerate() {
        if !u.upgrade_type.eq_ignore_ascii_case("websocket") {
            return Err(aat.field(&format!("upgrade_configs[{i}]")).err(format!(
                "upgrade {} is not supported on HTTP routes (only websocket)",
                u.upgrade_type
            )));
        }
    }
    let mut fault_policy = None;
    let mut rate_limit = None;
    for (k, any) in &r.typed_per_filter_config {
        let at = at.field(&format!("typed_per_filter_config[{k}]"));
        match k.as_str() {
            names::FAULT => fault_policy = Some(fault(any, &at)?),
            names::RATE_LIMIT_ROUTE => rate_limit = local_rate_limit(any, &at)?,
            other => {
                return Err(at.err(format!(
                    "per-route config for {other} is not supported (only {} and {})",
                    names::FAULT,
                    names::RATE_LIMIT_ROUTE
                )));
            }
        }
    }
    Ok(RouteSpec {
        name,
        matches,
        destinations,
        rewrite,
        timeout,
        headers: HeaderOps {
            request: header_edits(
                &r.request_headers_to_add,
                &r.request_headers_to_remove,
                &at.field("request"),
            )?,
            response: header_edits(
                &r.response_headers_to_add,
                &r.response_headers_to_remove,
                &at.field("response"),
            )?,
        },
        retry,
        fault: fault_policy,
        mirrors,
        rate_limit,
        hash,
    })
}

// ------------------------------------------------------------------ clusters

/// A cluster's balancing policy; ring-hash keys come from the routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LbKind {
    RoundRobin,
    LeastRequest,
    Random,
    PeakEwma,
    RingHash { minimum_ring_size: u64 },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Discovery {
    /// Endpoints from the ClusterLoadAssignment of this name.
    Eds(String),
    /// Endpoints inline, addresses resolved through DNS when not IPs.
    Inline(Vec<EndpointSpec>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    pub name: String,
    pub protocol: UpstreamProtocol,
    pub lb: LbKind,
    pub upstream: UpstreamSettings,
    pub limits: Limits,
    pub outlier: Option<OutlierSettings>,
    pub min_health_percent: u32,
    pub budget: BudgetSettings,
    pub discovery: Discovery,
    /// `transport_socket` (every endpoint) or auto mTLS's
    /// `transport_socket_matches` (endpoints whose metadata says `tlsMode: istio`).
    pub tls: super::tls::XdsTls,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// An IP, or (DNS clusters) a name.
    pub address: String,
    pub port: u16,
    pub weight: u32,
    pub locality: Locality,
    /// 0 is best.
    pub priority: u8,
    pub healthy: bool,
    /// Metadata `envoy.transport_socket_match: {tlsMode: istio}`: the
    /// workload has a sidecar, auto mTLS applies.
    pub tls_mode_istio: bool,
}

/// Envoy's circuit-breaker defaults, for thresholds a cluster leaves unset.
const ENVOY_BREAKER_DEFAULTS: Limits = Limits {
    max_connections: 1024,
    max_pending: 1024,
    max_requests: 1024,
    max_retries: 3,
};

fn struct_field<'s>(s: &'s Struct, key: &str) -> Option<&'s value::Kind> {
    s.fields.get(key).and_then(|v| v.kind.as_ref())
}

fn number(s: &Struct, key: &str) -> Option<f64> {
    match struct_field(s, key) {
        Some(value::Kind::NumberValue(n)) => Some(*n),
        Some(value::Kind::StringValue(v)) => v.parse().ok(),
        _ => None,
    }
}

fn budget(trellis: Option<&Struct>, at: &At) -> Result<BudgetSettings, ConvertError> {
    let d = BudgetSettings::default();
    let Some(Value {
        kind: Some(value::Kind::StructValue(b)),
    }) = trellis.and_then(|t| t.fields.get("retry_budget"))
    else {
        return Ok(d);
    };
    let at = at.field("metadata.filter_metadata.trellis.retry_budget");
    let ttl = match struct_field(b, "ttl") {
        Some(value::Kind::StringValue(s)) => {
            trellis_model::duration::parse(s).map_err(|e| at.field("ttl").err(e))?
        }
        None => d.ttl,
        Some(_) => {
            return Err(at
                .field("ttl")
                .err("must be a duration string, e.g. \"10s\""));
        }
    };
    Ok(BudgetSettings {
        ratio: number(b, "retry_ratio").unwrap_or(d.ratio),
        min_per_sec: number(b, "min_retries_per_second").map_or(d.min_per_sec, |n| n as u32),
        ttl,
    })
}

pub fn cluster(c: &EnvoyCluster) -> Result<ClusterSpec, ConvertError> {
    let at = At::new("Cluster", &c.name);
    if !c.health_checks.is_empty() {
        return Err(at
            .field("health_checks")
            .err("active health checks are not supported (the control plane checks health and sends it in EDS)"));
    }
    if c.load_balancing_policy.is_some() {
        return Err(at
            .field("load_balancing_policy")
            .err("not supported: use lb_policy"));
    }
    let trellis = c
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get(names::TRELLIS_METADATA));
    let lb = match EnvoyLb::try_from(c.lb_policy) {
        Ok(EnvoyLb::RoundRobin) => LbKind::RoundRobin,
        Ok(EnvoyLb::Random) => LbKind::Random,
        Ok(EnvoyLb::LeastRequest) => match trellis.and_then(|t| struct_field(t, "lb_policy")) {
            Some(value::Kind::StringValue(p)) if p == "PEAK_EWMA" => LbKind::PeakEwma,
            None => LbKind::LeastRequest,
            Some(other) => {
                return Err(at
                    .field("metadata.filter_metadata.trellis.lb_policy")
                    .err(format!("{other:?} is not a known policy (PEAK_EWMA)")));
            }
        },
        Ok(EnvoyLb::RingHash) => {
            let size = match &c.lb_config {
                Some(LbConfig::RingHashLbConfig(r)) => {
                    r.minimum_ring_size.as_ref().map_or(1024, |s| s.value)
                }
                _ => 1024,
            };
            LbKind::RingHash {
                minimum_ring_size: size,
            }
        }
        Ok(other) => {
            return Err(at.field("lb_policy").err(format!(
                "{} is not supported (ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH are)",
                other.as_str_name()
            )));
        }
        Err(_) => {
            return Err(at
                .field("lb_policy")
                .err(format!("unknown value {}", c.lb_policy)));
        }
    };

    let mut upstream = UpstreamSettings {
        // Envoy's default connect timeout.
        connect_timeout: c
            .connect_timeout
            .as_ref()
            .map_or(Duration::from_secs(5), dur),
        ..UpstreamSettings::default()
    };
    if let Some(k) = c
        .upstream_connection_options
        .as_ref()
        .and_then(|o| o.tcp_keepalive.as_ref())
    {
        upstream.keepalive = Some(TcpKeepalive {
            time: k
                .keepalive_time
                .as_ref()
                .map(|s| Duration::from_secs(u64::from(s.value))),
            interval: k
                .keepalive_interval
                .as_ref()
                .map(|s| Duration::from_secs(u64::from(s.value))),
            probes: k.keepalive_probes.as_ref().map(|p| p.value),
        });
    }
    let mut protocol = UpstreamProtocol::Opaque;
    for (k, any) in &c.typed_extension_protocol_options {
        let at = at.field(&format!("typed_extension_protocol_options[{k}]"));
        if k != names::HTTP_PROTOCOL_OPTIONS {
            return Err(at.err(format!(
                "only {} is supported",
                names::HTTP_PROTOCOL_OPTIONS
            )));
        }
        let o: HttpProtocolOptions = decode_any(any, &at)?;
        protocol = match &o.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match &e.protocol_config {
                Some(ProtocolConfig::HttpProtocolOptions(_)) => UpstreamProtocol::Http1,
                Some(ProtocolConfig::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
                _ => {
                    return Err(at
                        .field("explicit_http_config")
                        .err("only HTTP/1.1 and HTTP/2 (prior knowledge) are supported"));
                }
            },
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_))
                if c.name == names::INBOUND_APP_CLUSTER =>
            {
                UpstreamProtocol::Http1
            }
            _ => {
                return Err(at
                    .field("upstream_protocol_options")
                    .err("only explicit_http_config is supported on outbound clusters"));
            }
        };
        if let Some(common) = &o.common_http_protocol_options {
            // Envoy's default idle timeout is 1 h.
            upstream.idle_timeout = common
                .idle_timeout
                .as_ref()
                .map_or(Duration::from_secs(3600), dur);
            upstream.max_requests_per_connection = common
                .max_requests_per_connection
                .as_ref()
                .map(|n| n.value)
                .filter(|n| *n > 0);
        }
    }

    let mut limits = ENVOY_BREAKER_DEFAULTS;
    if let Some(cb) = &c.circuit_breakers {
        for (i, t) in cb.thresholds.iter().enumerate() {
            if t.priority != 0 {
                return Err(at
                    .field(&format!("circuit_breakers.thresholds[{i}].priority"))
                    .err("only DEFAULT priority thresholds are supported"));
            }
            if t.retry_budget.is_some() {
                return Err(at
                    .field(&format!("circuit_breakers.thresholds[{i}].retry_budget"))
                    .err(
                        "Envoy's retry budget is not supported: use Trellis metadata retry_budget",
                    ));
            }
            let v = |f: &Option<envoy_types::pb::google::protobuf::UInt32Value>, d: u32| {
                f.as_ref().map_or(d, |v| v.value)
            };
            limits = Limits {
                max_connections: v(&t.max_connections, 1024),
                max_pending: v(&t.max_pending_requests, 1024),
                max_requests: v(&t.max_requests, 1024),
                max_retries: v(&t.max_retries, 3),
            };
        }
    }

    let panic_threshold = c
        .common_lb_config
        .as_ref()
        .map_or(Some(50.0), |l| {
            Some(l.healthy_panic_threshold.as_ref().map_or(50.0, |p| p.value))
        })
        .unwrap_or(50.0);
    let min_health_percent = panic_threshold.clamp(0.0, 100.0) as u32;
    let outlier = match &c.outlier_detection {
        None => None,
        Some(od) => {
            let at = at.field("outlier_detection");
            let u = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, d: u32| {
                v.as_ref().map_or(d, |v| v.value)
            };
            // Envoy's defaults: success-rate ejection enforced at 100%.
            if u(&od.enforcing_success_rate, 100) > 0 {
                return Err(at.field("enforcing_success_rate").err(
                    "success-rate ejection is not supported: set enforcing_success_rate to 0",
                ));
            }
            if u(&od.enforcing_failure_percentage, 0) > 0
                || u(&od.enforcing_failure_percentage_local_origin, 0) > 0
            {
                return Err(at
                    .field("enforcing_failure_percentage")
                    .err("failure-percentage ejection is not supported"));
            }
            if od.split_external_local_origin_errors {
                return Err(at
                    .field("split_external_local_origin_errors")
                    .err("not supported"));
            }
            let d = OutlierSettings::default();
            let five = u(&od.enforcing_consecutive_5xx, 100) > 0;
            let gateway = u(&od.enforcing_consecutive_gateway_failure, 0) > 0;
            Some(OutlierSettings {
                consecutive_5xx: five.then(|| u(&od.consecutive_5xx, 5)).filter(|n| *n > 0),
                consecutive_gateway: gateway
                    .then(|| u(&od.consecutive_gateway_failure, 5))
                    .filter(|n| *n > 0),
                interval: od.interval.as_ref().map_or(d.interval, dur),
                base_ejection_time: od
                    .base_ejection_time
                    .as_ref()
                    .map_or(d.base_ejection_time, dur),
                max_ejection_percent: u(&od.max_ejection_percent, 10),
                min_health_percent,
            })
        }
    };

    use envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType as T;
    let kind = match &c.cluster_discovery_type {
        None => DiscoveryType::Static,
        Some(T::Type(t)) => DiscoveryType::try_from(*t).unwrap_or(DiscoveryType::OriginalDst),
        Some(T::ClusterType(ct)) => {
            return Err(at
                .field("cluster_type")
                .err(format!("custom cluster type {} is not supported", ct.name)));
        }
    };
    let discovery = match kind {
        DiscoveryType::Eds => {
            let service = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| c.name.clone());
            Discovery::Eds(service)
        }
        DiscoveryType::Static | DiscoveryType::StrictDns | DiscoveryType::LogicalDns => {
            let cla = c.load_assignment.clone().unwrap_or_default();
            Discovery::Inline(endpoints(
                &cla,
                &at.field("load_assignment"),
                kind != DiscoveryType::Static,
            )?)
        }
        other => {
            return Err(at.field("type").err(format!(
                "{} is not supported (EDS, STATIC, STRICT_DNS, LOGICAL_DNS are)",
                other.as_str_name()
            )));
        }
    };
    let tls = super::tls::cluster(c, protocol).map_err(|(f, r)| at.field(&f).err(r))?;
    Ok(ClusterSpec {
        name: c.name.clone(),
        tls,
        protocol,
        lb,
        upstream,
        limits,
        outlier,
        // Without outlier detection nothing ejects, so panic never applies.
        min_health_percent: if c.outlier_detection.is_some() {
            min_health_percent
        } else {
            0
        },
        budget: budget(trellis, &at)?,
        discovery,
    })
}

/// An EDS resource's endpoints.
pub fn assignment(cla: &ClusterLoadAssignment) -> Result<Vec<EndpointSpec>, ConvertError> {
    endpoints(
        cla,
        &At::new("ClusterLoadAssignment", &cla.cluster_name),
        false,
    )
}

fn endpoints(
    cla: &ClusterLoadAssignment,
    at: &At,
    names_allowed: bool,
) -> Result<Vec<EndpointSpec>, ConvertError> {
    if !cla.named_endpoints.is_empty() {
        return Err(at.field("named_endpoints").err("not supported"));
    }
    let mut out = Vec::new();
    for (i, group) in cla.endpoints.iter().enumerate() {
        let at = at.field(&format!("endpoints[{i}]"));
        let priority = u8::try_from(group.priority).unwrap_or(u8::MAX);
        let locality = group
            .locality
            .as_ref()
            .map(|l| Locality::new(&l.region, &l.zone, &l.sub_zone))
            .unwrap_or_default();
        for (j, lb) in group.lb_endpoints.iter().enumerate() {
            let at = at.field(&format!("lb_endpoints[{j}]"));
            let Some(HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
                return Err(at.err("only inline endpoints are supported (not endpoint_name)"));
            };
            let Some(address::Address::SocketAddress(sa)) =
                ep.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                return Err(at
                    .field("endpoint.address")
                    .err("only socket addresses are supported"));
            };
            let port = match &sa.port_specifier {
                Some(PortSpecifier::PortValue(p)) => u16::try_from(*p)
                    .map_err(|_| at.field("endpoint.address.port_value").err("out of range"))?,
                _ => {
                    return Err(at
                        .field("endpoint.address.port_value")
                        .err("required (named ports are not supported)"));
                }
            };
            if !names_allowed && sa.address.parse::<IpAddr>().is_err() {
                return Err(at
                    .field("endpoint.address.address")
                    .err(format!("{:?} is not an IP address", sa.address)));
            }
            let healthy = !matches!(
                HealthStatus::try_from(lb.health_status),
                Ok(HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout)
            );
            out.push(EndpointSpec {
                address: sa.address.clone(),
                port,
                weight: lb
                    .load_balancing_weight
                    .as_ref()
                    .map_or(1, |w| w.value)
                    .max(1),
                locality: locality.clone(),
                priority,
                healthy,
                tls_mode_istio: super::tls::endpoint_is_istio(lb.metadata.as_ref()),
            });
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------ assembly

/// A consistent set: what [`assemble`] needs.
#[derive(Debug, Default, Clone)]
pub struct Resources {
    pub listeners: BTreeMap<String, ListenerSpec>,
    pub routes: BTreeMap<String, RouteConfigSpec>,
    pub clusters: BTreeMap<String, ClusterSpec>,
    pub assignments: BTreeMap<String, Vec<EndpointSpec>>,
}

pub struct Context<'a> {
    pub metrics: &'a Metrics,
    /// The snapshot being replaced: unchanged endpoints, breakers, budgets
    /// and buckets keep their state.
    pub previous: Option<&'a ProxyConfig>,
    /// For inline endpoints that are names (DNS clusters).
    pub resolve: Resolve<'a>,
    /// Whether the proxy has a workload certificate: without one, auto
    /// mTLS is plaintext (as with `--config-dir`).
    pub has_certificate: bool,
}

struct Assembler<'a> {
    ctx: &'a Context<'a>,
    budgets: BTreeMap<String, Arc<SharedBudget>>,
    rate_limits: BTreeMap<String, Arc<SharedBucket>>,
}

/// The labels auto mTLS reads ([`ClusterTls::for_endpoint`]); xDS
/// endpoints carry no others (subsets are clusters of their own).
fn labels(ep: &EndpointSpec) -> BTreeMap<String, String> {
    if ep.tls_mode_istio {
        BTreeMap::from([(TLS_MODE_LABEL.to_string(), "istio".to_string())])
    } else {
        BTreeMap::new()
    }
}

/// The destination host of `outbound|port|subset|host` (budgets are per host).
fn cluster_host(name: &str) -> &str {
    name.rsplit('|').next().unwrap_or(name)
}

/// Joins a consistent set into the proxy's config. Clusters a route names
/// but the set lacks get no endpoints (503, as Envoy answers a route to an
/// unknown cluster); a DNS name that does not resolve gives no endpoints
/// (logged), as the proxy cannot reject part of an accepted update.
pub fn assemble(r: &Resources, ctx: &Context) -> ProxyConfig {
    let mut a = Assembler {
        ctx,
        budgets: BTreeMap::new(),
        rate_limits: BTreeMap::new(),
    };
    let route_configs: Vec<&RouteConfigSpec> = r
        .listeners
        .values()
        .filter_map(|l| l.rds.as_ref())
        .filter_map(|n| r.routes.get(n))
        .collect();
    let keys = ring_hash_keys(&route_configs, &r.clusters);
    let mut clusters = BTreeMap::new();
    for (name, c) in &r.clusters {
        if name == names::INBOUND_APP_CLUSTER {
            continue;
        }
        let eps = match &c.discovery {
            Discovery::Eds(service) => r.assignments.get(service).cloned().unwrap_or_default(),
            Discovery::Inline(eps) => eps.clone(),
        };
        let built = a.cluster(c, &eps, keys.get(name.as_str()));
        clusters.insert(name.clone(), Arc::new(built));
    }
    let mut table = RouteTable::default();
    for rc in route_configs {
        a.route_table(rc, &clusters, &mut table);
    }
    ProxyConfig {
        generation: ctx.previous.map_or(1, |p| p.generation + 1),
        outbound: table,
        clusters,
        budgets: a.budgets,
        rate_limits: a.rate_limits,
        authz: r
            .listeners
            .get(names::INBOUND)
            .and_then(|l| l.authz.clone())
            .unwrap_or_default(),
        source: Default::default(),
        // No inbound listener yet: the proxy's default (STRICT with a certificate).
        peer_auth: r
            .listeners
            .get(names::INBOUND)
            .and_then(|l| l.peer_auth.clone())
            .unwrap_or_default(),
    }
}

/// The key each ring-hash cluster hashes on. Envoy puts hash policies on
/// routes, the proxy on clusters; the translation writes a route's policies
/// in destination order, one per distinct key. A route with one policy
/// gives it to all its ring-hash destinations (unambiguous, and every
/// default route is such a route); otherwise the policies are matched to
/// the ring-hash destinations in order.
fn ring_hash_keys<'r>(
    route_configs: &[&'r RouteConfigSpec],
    clusters: &BTreeMap<String, ClusterSpec>,
) -> HashMap<&'r str, HashKey> {
    let ring = |name: &str| {
        clusters
            .get(name)
            .is_some_and(|c| matches!(c.lb, LbKind::RingHash { .. }))
    };
    let routes = || {
        route_configs
            .iter()
            .flat_map(|rc| rc.vhosts.iter())
            .filter_map(|vh| match &vh.routes {
                RoutesSpec::Http(rs) => Some(rs.iter()),
                RoutesSpec::Tcp(_) => None,
            })
            .flatten()
    };
    let mut keys: HashMap<&str, HashKey> = HashMap::new();
    for route in routes().filter(|r| r.hash.len() == 1) {
        for d in route.destinations.iter().filter(|d| ring(&d.cluster)) {
            keys.entry(d.cluster.as_str())
                .or_insert_with(|| route.hash[0].clone());
        }
    }
    for route in routes().filter(|r| r.hash.len() > 1) {
        let ringed = route.destinations.iter().filter(|d| ring(&d.cluster));
        for (d, k) in ringed.zip(route.hash.iter()) {
            keys.entry(d.cluster.as_str()).or_insert_with(|| k.clone());
        }
    }
    keys
}

impl Assembler<'_> {
    fn cluster(&mut self, c: &ClusterSpec, eps: &[EndpointSpec], key: Option<&HashKey>) -> Cluster {
        let (policy, hash_key) = match &c.lb {
            LbKind::RoundRobin => (LbPolicy::RoundRobin, None),
            LbKind::LeastRequest => (LbPolicy::LeastRequest, None),
            LbKind::Random => (LbPolicy::Random, None),
            LbKind::PeakEwma => (LbPolicy::PeakEwma, None),
            LbKind::RingHash { minimum_ring_size } => {
                // No route gives a key: hash on the caller, Envoy's fallback is random.
                let key = key.cloned().unwrap_or(HashKey::SourceIp);
                (
                    LbPolicy::RingHash {
                        key: key.clone(),
                        minimum_ring_size: *minimum_ring_size,
                    },
                    Some(key),
                )
            }
        };
        let mut endpoints = Vec::new();
        for ep in eps {
            let ips = match ep.address.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => match (self.ctx.resolve)(&ep.address) {
                    Ok(ips) => ips,
                    Err(e) => {
                        tracing::warn!(cluster = %c.name, address = %ep.address, error = %e, "cannot resolve endpoint");
                        continue;
                    }
                },
            };
            for ip in ips {
                let e = self.endpoint(&c.name, SocketAddr::new(ip, ep.port), ep);
                endpoints.push((ep.priority, e));
            }
        }
        let host = cluster_host(&c.name).to_string();
        let budget = self.budget(&host, c.budget);
        Cluster {
            name: c.name.as_str().into(),
            protocol: c.protocol,
            balancer: Balancer::with_priorities(policy, endpoints)
                .with_min_health_percent(c.min_health_percent),
            hash_key,
            upstream: c.upstream.clone(),
            breaker: self.breaker(&c.name, c.limits),
            budget,
            outlier: c.outlier,
            tls: match &c.tls.0 {
                ClusterTls::Auto(_) if !self.ctx.has_certificate => ClusterTls::Plaintext,
                t => t.clone(),
            },
            stats: self.ctx.metrics.cluster_stats(&c.name),
        }
    }

    /// Reuses the previous snapshot's endpoint when nothing about it changed,
    /// so its in-flight count, latency estimate and ejection carry over; the
    /// control plane's health applies either way.
    fn endpoint(&self, cluster: &str, addr: SocketAddr, ep: &EndpointSpec) -> Arc<Endpoint> {
        let e = self
            .ctx
            .previous
            .and_then(|p| p.clusters.get(cluster))
            .and_then(|prev| {
                prev.balancer
                    .endpoints()
                    .iter()
                    .find(|e| {
                        e.addr == addr
                            && e.weight == ep.weight
                            && e.locality == ep.locality
                            && e.labels == labels(ep)
                    })
                    .cloned()
            })
            .unwrap_or_else(|| {
                Arc::new(Endpoint::new(
                    addr,
                    ep.weight,
                    ep.locality.clone(),
                    labels(ep),
                ))
            });
        e.set_healthy(ep.healthy);
        e
    }

    fn budget(&mut self, host: &str, settings: BudgetSettings) -> Arc<SharedBudget> {
        if let Some(b) = self.budgets.get(host) {
            return b.clone();
        }
        let b = self
            .ctx
            .previous
            .and_then(|p| p.budgets.get(host))
            .filter(|b| b.settings() == settings)
            .cloned()
            .unwrap_or_else(|| Arc::new(SharedBudget::new(settings, Instant::now())));
        self.budgets.insert(host.to_string(), b.clone());
        b
    }

    fn breaker(&self, cluster: &str, limits: Limits) -> Arc<Breaker> {
        self.ctx
            .previous
            .and_then(|p| p.clusters.get(cluster))
            .map(|c| c.breaker.clone())
            .filter(|b| *b.limits() == limits)
            .unwrap_or_else(|| Arc::new(Breaker::new(limits)))
    }

    /// One bucket per policy and settings, however many virtual hosts or
    /// routes carry it (Envoy would keep one per config), as the YAML path.
    fn rate_limit(&mut self, l: &LimitSpec) -> RateLimit {
        let key = format!("{}|{}|{}|{:?}", l.policy, l.max, l.per_fill, l.interval);
        let bucket = self
            .rate_limits
            .get(&key)
            .or_else(|| self.ctx.previous.and_then(|p| p.rate_limits.get(&key)))
            .cloned()
            .unwrap_or_else(|| {
                Arc::new(SharedBucket::new(
                    l.max,
                    l.per_fill,
                    l.interval,
                    Instant::now(),
                ))
            });
        self.rate_limits.insert(key, bucket.clone());
        RateLimit {
            rejected: self.ctx.metrics.rate_limited(&l.policy),
            policy: l.policy.as_str().into(),
            bucket,
        }
    }

    fn cluster_ref(&self, clusters: &BTreeMap<String, Arc<Cluster>>, name: &str) -> Arc<Cluster> {
        clusters.get(name).cloned().unwrap_or_else(|| {
            // Not sent (not visible to this proxy): no endpoints, 503.
            Arc::new(Cluster {
                name: name.into(),
                protocol: UpstreamProtocol::Http1,
                balancer: Balancer::with_priorities(LbPolicy::LeastRequest, Vec::new()),
                hash_key: None,
                upstream: UpstreamSettings::default(),
                breaker: Arc::new(Breaker::new(Limits::default())),
                budget: Arc::new(SharedBudget::new(BudgetSettings::default(), Instant::now())),
                outlier: None,
                tls: Default::default(),
                stats: self.ctx.metrics.cluster_stats(name),
            })
        })
    }

    fn route(&mut self, r: &RouteSpec, clusters: &BTreeMap<String, Arc<Cluster>>) -> Route {
        let destinations: Vec<WeightedDestination> = r
            .destinations
            .iter()
            .map(|d| {
                let cluster = self.cluster_ref(clusters, &d.cluster);
                WeightedDestination {
                    weight: d.weight,
                    stats: self.ctx.metrics.route_stats(
                        Direction::outbound,
                        &r.name,
                        &cluster.name,
                    ),
                    cluster,
                    headers: d.headers.clone(),
                }
            })
            .collect();
        let total_weight = destinations.iter().map(|d| d.weight).sum();
        Route {
            name: r.name.clone(),
            matches: r.matches.iter().cloned().collect(),
            action: RouteAction {
                destinations,
                total_weight,
                rewrite: r.rewrite.clone(),
                timeout: r.timeout,
                headers: r.headers.clone(),
                retry: r.retry.clone(),
                fault: r.fault,
                mirrors: r
                    .mirrors
                    .iter()
                    .map(|(c, percent)| Mirror {
                        cluster: self.cluster_ref(clusters, c),
                        percent: *percent,
                    })
                    .collect(),
                rate_limit: r.rate_limit.as_ref().map(|l| self.rate_limit(l)),
            },
        }
    }

    fn route_table(
        &mut self,
        rc: &RouteConfigSpec,
        clusters: &BTreeMap<String, Arc<Cluster>>,
        table: &mut RouteTable,
    ) {
        // Envoy's virtual hosts are per (host, port); the proxy's per host.
        let mut hosts: BTreeMap<&str, (VirtualHost, Vec<String>)> = BTreeMap::new();
        for vh in &rc.vhosts {
            let routes = match &vh.routes {
                RoutesSpec::Http(rs) => {
                    PortRoutes::Http(rs.iter().map(|r| self.route(r, clusters)).collect())
                }
                RoutesSpec::Tcp(dests) => {
                    let destinations: Vec<(u32, Arc<Cluster>)> = dests
                        .iter()
                        .map(|(c, w)| (*w, self.cluster_ref(clusters, c)))
                        .collect();
                    PortRoutes::Tcp(
                        vec![TcpRoute {
                            ports: Vec::new(),
                            total_weight: destinations.iter().map(|d| d.0).sum(),
                            destinations,
                        }]
                        .into(),
                    )
                }
            };
            let rate_limit = vh.rate_limit.as_ref().map(|l| self.rate_limit(l));
            let (entry, aliases) = hosts.entry(vh.host.as_str()).or_insert_with(|| {
                (
                    VirtualHost {
                        name: vh.host.clone(),
                        ports: Vec::new(),
                        any_port: None,
                        rate_limit: None,
                    },
                    Vec::new(),
                )
            });
            if entry.rate_limit.is_none() {
                entry.rate_limit = rate_limit;
            }
            match vh.port {
                Some(p) => entry.ports.push((p, routes)),
                None => entry.any_port = Some(routes),
            }
            for a in &vh.aliases {
                if !aliases.contains(a) {
                    aliases.push(a.clone());
                }
            }
        }
        for (_, (vh, aliases)) in hosts {
            let vh = Arc::new(vh);
            for a in aliases {
                table.insert(&a, vh.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests;
