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

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RetryPolicy, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost, WeightedCluster, header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier, retry_policy, route, route_action,
    route_match, weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher as EnvoyStringMatcher,
    string_matcher::MatchPattern,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket, fractional_percent};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use trellis_model::RetryOn;
use trellis_model::networking::{
    Destination, HeaderOperations, Headers, HttpMatchRequest, HttpRetry, HttpRewrite, HttpRoute,
    StringMatch, VirtualServiceSpec,
};
use trellis_model::policy::grpc_code;
use trellis_model::resource::Object;
use trellis_model::trellis::RateLimitPolicySpec;
use trellis_model::validate::Validated;

use crate::cluster::{effective_lb, hash_policy};
use crate::encode::{self, duration, put_field, put_sorted_any_map, u32v};
use crate::error::{At, TranslateError};
use crate::names::{self, filter};

/// Envoy's (and trellis-proxy's) retry backoff: 25 ms base, 250 ms cap.
pub const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(25);
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// Istio's number of host picks a retry makes to avoid a previous host.
pub const HOST_SELECTION_RETRY_MAX_ATTEMPTS: i64 = 5;
/// Envoy's local rate limit refuses fill intervals under 50 ms.
pub const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);
/// The header trellis-proxy explains its local replies with.
pub const REASON_HEADER: &str = "x-trellis-reason";

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
    /// Deterministic encoding of the VirtualHost, `domains` left empty.
    pub bytes: Vec<u8>,
}

/// Builds a VirtualHost's body: its routes and the host-wide rate limit.
pub fn vhost_body(name: &str, routes: Vec<Route>, host_limit: Option<&Any>) -> VhostBody {
    let mut vh = VirtualHost {
        name: name.to_string(),
        ..Default::default()
    };
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
    let head = RouteConfiguration {
        name: name.to_string(),
        // trellis-proxy applies a route's header edits, then the chosen
        // destination's, so the destination's win; Envoy's default is the
        // opposite order.
        most_specific_header_mutations_wins: true,
        // As RDS does by default: a route to a cluster the proxy does not
        // have answers 503 instead of rejecting the whole table.
        validate_clusters: Some(encode::boolv(false)),
        ..Default::default()
    };
    let mut out = head.encode_to_vec();
    for (body, domains) in vhosts {
        let mut vh = body.bytes.clone();
        for d in domains {
            put_field(&mut vh, 2, d.as_bytes());
        }
        put_field(&mut out, 2, &vh);
    }
    out
}

/// Decodes an assembled RouteConfiguration (tests, and the static-bootstrap helper).
pub fn decode(bytes: &[u8]) -> Result<RouteConfiguration, prost::DecodeError> {
    RouteConfiguration::decode(bytes)
}

/// Istio's default retry policy, for routes without `retries`.
pub fn istio_default_retry() -> RetryPolicy {
    retry_policy_for(&RetryOn::istio_default(), 2, None, true, false)
}

fn retry_on_string(r: &RetryOn) -> String {
    let tokens = [
        (r.five_xx, "5xx"),
        (r.gateway_error, "gateway-error"),
        (r.reset, "reset"),
        (r.connect_failure, "connect-failure"),
        (r.refused_stream, "refused-stream"),
        (r.retriable_4xx, "retriable-4xx"),
        (r.grpc_unavailable, "unavailable"),
        (r.grpc_cancelled, "cancelled"),
        (r.grpc_deadline_exceeded, "deadline-exceeded"),
        (r.grpc_internal, "internal"),
        (r.grpc_resource_exhausted, "resource-exhausted"),
        (!r.status_codes.is_empty(), "retriable-status-codes"),
    ];
    tokens
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, t)| *t)
        .collect::<Vec<_>>()
        .join(",")
}

fn retry_policy_for(
    on: &RetryOn,
    retries: u32,
    per_try: Option<Duration>,
    ignore_previous_hosts: bool,
    remote_localities: bool,
) -> RetryPolicy {
    let mut p = RetryPolicy {
        retry_on: retry_on_string(on),
        num_retries: Some(u32v(retries)),
        per_try_timeout: per_try.map(duration),
        retriable_status_codes: on.status_codes.iter().map(|c| u32::from(*c)).collect(),
        retry_back_off: Some(retry_policy::RetryBackOff {
            base_interval: Some(duration(RETRY_BACKOFF_BASE)),
            max_interval: Some(duration(RETRY_BACKOFF_MAX)),
        }),
        ..Default::default()
    };
    if ignore_previous_hosts {
        p.retry_host_predicate = vec![retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".to_string(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                encode::any(&PreviousHostsPredicate {}),
            )),
        }];
        p.host_selection_retry_max_attempts = HOST_SELECTION_RETRY_MAX_ATTEMPTS;
    }
    if remote_localities {
        // Retries go to other priorities (localities), as Istio configures
        // `retryRemoteLocalities: true`. Without it a retry stays in the
        // priority the balancer picks from, as in trellis-proxy.
        p.retry_priority = Some(retry_policy::RetryPriority {
            name: "envoy.retry_priorities.previous_priorities".to_string(),
            config_type: Some(retry_policy::retry_priority::ConfigType::TypedConfig(
                encode::any(&PreviousPrioritiesConfig {
                    update_frequency: 2,
                }),
            )),
        });
    }
    p
}

/// `retries` -> Envoy's retry policy. None when the route does not retry.
fn retry_policy(r: Option<&HttpRetry>, at: &At) -> Result<Option<RetryPolicy>, TranslateError> {
    let Some(r) = r else {
        return Ok(Some(istio_default_retry()));
    };
    let on = r
        .conditions()
        .map_err(|e| at.field("retries.retryOn").value(e))?;
    let per_try = r
        .per_try_timeout
        .as_deref()
        .map(|t| at.field("retries.perTryTimeout").duration(t))
        .transpose()?
        .filter(|d| !d.is_zero());
    let retries = r.num_retries();
    // A `retries` block without attempts turns retries off (Istio); its
    // perTryTimeout still bounds the one try, as in trellis-proxy.
    if retries == 0 && per_try.is_none() {
        return Ok(None);
    }
    Ok(Some(retry_policy_for(
        &on,
        retries,
        per_try,
        r.retry_ignore_previous_hosts.unwrap_or(true),
        r.retry_remote_localities.unwrap_or(false),
    )))
}

/// A percentage (0 to 100, fractions allowed) as Envoy's fraction per million.
pub fn fraction(percent: f64) -> FractionalPercent {
    let per_million = (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
    FractionalPercent {
        numerator: per_million,
        denominator: fractional_percent::DenominatorType::Million as i32,
    }
}

fn all_of_them() -> RuntimeFractionalPercent {
    RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: fractional_percent::DenominatorType::Hundred as i32,
        }),
        runtime_key: String::new(),
    }
}

/// `fault` -> the fault filter's per-route config.
fn fault(
    f: &trellis_model::networking::HttpFaultInjection,
    at: &At,
) -> Result<HttpFault, TranslateError> {
    let mut out = HttpFault::default();
    if let Some(d) = &f.delay {
        let at = at.field("fault.delay.fixedDelay");
        let fixed = d
            .fixed_delay
            .as_deref()
            .ok_or_else(|| at.value("required"))?;
        out.delay = Some(FaultDelay {
            percentage: Some(fraction(d.effective_percentage())),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(
                at.duration(fixed)?,
            ))),
        });
    }
    if let Some(a) = &f.abort {
        let error = match (a.http_status, a.grpc_status.as_deref()) {
            (Some(s), _) => fault_abort::ErrorType::HttpStatus(
                u32::try_from(s)
                    .map_err(|_| at.field("fault.abort.httpStatus").value("negative"))?,
            ),
            (None, Some(g)) => {
                fault_abort::ErrorType::GrpcStatus(grpc_code(g).ok_or_else(|| {
                    at.field("fault.abort.grpcStatus")
                        .value(format!("unknown gRPC status {g:?}"))
                })?)
            }
            (None, None) => {
                return Err(at
                    .field("fault.abort")
                    .value("needs httpStatus or grpcStatus"));
            }
        };
        out.abort = Some(FaultAbort {
            percentage: Some(fraction(a.effective_percentage())),
            error_type: Some(error),
            ..Default::default()
        });
    }
    Ok(out)
}

/// A RateLimitPolicy's bucket as the local rate limit filter's per-route
/// config. Envoy's buckets are refilled at least every 50 ms: a shorter
/// `fillInterval` is scaled up with its tokens, same rate.
pub fn local_rate_limit(
    o: &Object<RateLimitPolicySpec>,
    route: Option<&str>,
) -> Result<LocalRateLimit, TranslateError> {
    let at = At::new(
        format!("RateLimitPolicy {}", o.key()),
        "spec.tokenBucket.fillInterval",
    );
    let tb = &o.spec.token_bucket;
    let mut interval = at.duration(&tb.fill_interval)?;
    let mut per_fill = tb.fill_tokens();
    if !interval.is_zero() && interval < MIN_FILL_INTERVAL {
        let factor = MIN_FILL_INTERVAL.as_nanos().div_ceil(interval.as_nanos());
        let factor = u32::try_from(factor).unwrap_or(u32::MAX);
        interval = interval.saturating_mul(factor);
        per_fill = per_fill.saturating_mul(factor);
    }
    let policy = match route {
        Some(r) => format!("{}|{r}", o.key()),
        None => o.key(),
    };
    Ok(LocalRateLimit {
        // Stats per policy, as trellis-proxy's `trellis_rate_limited_total{policy}`.
        stat_prefix: format!("trellis_rate_limit_{}", stat_safe(&policy)),
        token_bucket: Some(TokenBucket {
            max_tokens: tb.max_tokens,
            tokens_per_fill: Some(u32v(per_fill)),
            fill_interval: Some(duration(interval)),
        }),
        filter_enabled: Some(all_of_them()),
        filter_enforced: Some(all_of_them()),
        response_headers_to_add: vec![header_option(
            REASON_HEADER,
            "rate_limited",
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        )],
        ..Default::default()
    })
}

/// Envoy stat names use `.` as a separator: keep letters, digits and `_`.
fn stat_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn header_option(name: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_ascii_lowercase(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

/// Header edits: `set` overwrites, `add` appends, `remove` removes (Envoy
/// removes before it adds, as trellis-proxy does).
struct Edits {
    add: Vec<HeaderValueOption>,
    remove: Vec<String>,
}

fn edits(ops: Option<&HeaderOperations>) -> Edits {
    let Some(ops) = ops else {
        return Edits {
            add: Vec::new(),
            remove: Vec::new(),
        };
    };
    let mut add: Vec<HeaderValueOption> = ops
        .set
        .iter()
        .map(|(k, v)| header_option(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .collect();
    add.extend(
        ops.add
            .iter()
            .map(|(k, v)| header_option(k, v, HeaderAppendAction::AppendIfExistsOrAdd)),
    );
    Edits {
        add,
        remove: ops.remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
    }
}

fn string_matcher(sm: &StringMatch) -> Option<EnvoyStringMatcher> {
    let pattern = match (&sm.exact, &sm.prefix, &sm.regex) {
        (Some(e), _, _) => MatchPattern::Exact(e.clone()),
        (_, Some(p), _) => MatchPattern::Prefix(p.clone()),
        (_, _, Some(r)) => MatchPattern::SafeRegex(regex(r)),
        _ => return None,
    };
    Some(EnvoyStringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    })
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        engine_type: None,
    }
}

/// A header condition; `{}` means "present". Inverted (`withoutHeaders`),
/// a missing header is matched as an empty value, so that "not `a`" holds
/// for a request without the header, as in trellis-proxy (Envoy would
/// otherwise fail the inverted match on a missing header).
fn header_matcher(name: &str, sm: &StringMatch, invert: bool) -> HeaderMatcher {
    let spec = match string_matcher(sm) {
        Some(m) => HeaderMatchSpecifier::StringMatch(m),
        None => HeaderMatchSpecifier::PresentMatch(true),
    };
    let string = matches!(spec, HeaderMatchSpecifier::StringMatch(_));
    HeaderMatcher {
        name: name.to_ascii_lowercase(),
        invert_match: invert,
        treat_missing_header_as_empty: invert && string,
        header_match_specifier: Some(spec),
    }
}

fn route_match(m: Option<&HttpMatchRequest>) -> RouteMatch {
    let Some(m) = m else {
        return RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
            ..Default::default()
        };
    };
    let ignore_case = m.ignore_uri_case.unwrap_or(false);
    let (path, case_applies) = match m.uri.as_ref() {
        Some(StringMatch { exact: Some(e), .. }) => {
            (route_match::PathSpecifier::Path(e.clone()), true)
        }
        Some(StringMatch {
            prefix: Some(p), ..
        }) => (route_match::PathSpecifier::Prefix(p.clone()), true),
        Some(StringMatch { regex: Some(r), .. }) => {
            (route_match::PathSpecifier::SafeRegex(regex(r)), false)
        }
        _ => (route_match::PathSpecifier::Prefix("/".to_string()), false),
    };
    let mut headers = Vec::new();
    for (pseudo, sm) in [
        (":method", &m.method),
        (":scheme", &m.scheme),
        (":authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            headers.push(header_matcher(pseudo, sm, false));
        }
    }
    headers.extend(m.headers.iter().map(|(k, sm)| header_matcher(k, sm, false)));
    headers.extend(
        m.without_headers
            .iter()
            .map(|(k, sm)| header_matcher(k, sm, true)),
    );
    RouteMatch {
        path_specifier: Some(path),
        case_sensitive: (ignore_case && case_applies).then(|| encode::boolv(false)),
        headers,
        query_parameters: m
            .query_params
            .iter()
            .map(|(k, sm)| QueryParameterMatcher {
                name: k.clone(),
                query_parameter_match_specifier: Some(match string_matcher(sm) {
                    Some(m) => QueryParameterMatchSpecifier::StringMatch(m),
                    None => QueryParameterMatchSpecifier::PresentMatch(true),
                }),
            })
            .collect(),
        ..Default::default()
    }
}

/// RE2 substitution text for a literal: `\` starts a group reference there.
fn literal_substitution(s: &str) -> String {
    s.replace('\\', "\\\\")
}

/// `rewrite.uri` for one match block, as trellis-proxy rewrites: after a
/// prefix match the prefix is replaced (without doubling a `/` when the
/// replacement ends in one); otherwise the whole path is replaced. The
/// query string is kept either way.
fn uri_rewrite(action: &mut RouteAction, rw: &HttpRewrite, m: Option<&HttpMatchRequest>) {
    if let Some(rr) = &rw.uri_regex_rewrite {
        action.regex_rewrite = Some(RegexMatchAndSubstitute {
            pattern: Some(regex(&rr.pattern)),
            substitution: rr.rewrite.clone(),
        });
        return;
    }
    let Some(replacement) = &rw.uri else { return };
    let uri = m.and_then(|m| m.uri.as_ref());
    match uri {
        Some(StringMatch {
            prefix: Some(prefix),
            ..
        }) => {
            if replacement.ends_with('/') {
                // `/v1` -> `/` on `/v1/x` must give `/x`, not `//x`.
                let case = if m.and_then(|m| m.ignore_uri_case).unwrap_or(false) {
                    "(?i)"
                } else {
                    ""
                };
                action.regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(regex(&format!("^{case}{}/?", regex::escape(prefix)))),
                    substitution: literal_substitution(replacement),
                });
            } else {
                action.prefix_rewrite = replacement.clone();
            }
        }
        // Envoy replaces the whole path of an exact (`path`) match.
        Some(StringMatch { exact: Some(_), .. }) => action.prefix_rewrite = replacement.clone(),
        _ => {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex("^.*$")),
                substitution: literal_substitution(replacement),
            });
        }
    }
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
