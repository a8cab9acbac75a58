//! The routing decision: which route a request takes and where it goes.
//!
//! Plain data compiled from the user's VirtualServices (see
//! `config::compile`) and pure functions over it, so every rule is
//! table-tested without a socket. The I/O lives in `http::outbound`.

pub mod headers;
pub mod matcher;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName};

use crate::cluster::Cluster;
use crate::resilience::fault::FaultPolicy;
use crate::resilience::rate_limit::SharedBucket;
use crate::resilience::retry::RetryPolicy;
use crate::telemetry::metrics::RouteStats;
pub use headers::{HeaderEdits, HeaderOps};
pub use matcher::StringMatcher;

/// Every host the proxy routes, for one listener direction.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Exact names (every alias of a service: `reviews`, `reviews.default`, the FQDN), lowercase.
    hosts: HashMap<String, Arc<VirtualHost>>,
    /// `*.suffix` patterns, most specific (longest) first; `*` last.
    wildcards: Vec<(String, Arc<VirtualHost>)>,
}

impl RouteTable {
    pub fn insert(&mut self, name: &str, vhost: Arc<VirtualHost>) {
        if name.starts_with('*') {
            self.wildcards.push((name.to_string(), vhost));
            self.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        } else {
            self.hosts.entry(name.to_string()).or_insert(vhost);
        }
    }

    /// Find the virtual host for a request's host (no port, any case).
    pub fn find(&self, host: &str) -> Option<&Arc<VirtualHost>> {
        let exact = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.hosts.get(&host.to_ascii_lowercase())
        } else {
            self.hosts.get(host)
        };
        exact.or_else(|| {
            self.wildcards
                .iter()
                .find(|(pattern, _)| {
                    trellis_model::host::matches_pattern(pattern, &host.to_ascii_lowercase())
                })
                .map(|(_, v)| v)
        })
    }

    pub fn hosts(&self) -> impl Iterator<Item = (&String, &Arc<VirtualHost>)> {
        self.hosts
            .iter()
            .chain(self.wildcards.iter().map(|(k, v)| (k, v)))
    }
}

/// What one host serves, per port.
#[derive(Debug)]
pub struct VirtualHost {
    /// The canonical host (FQDN of the service, or the VirtualService host).
    pub name: String,
    /// Ports the host is known to serve (from its ServiceEntry).
    pub ports: Vec<(u16, PortRoutes)>,
    /// For VirtualService hosts that are not services: routes for any port.
    pub any_port: Option<PortRoutes>,
    /// A RateLimitPolicy for the whole host.
    pub rate_limit: Option<RateLimit>,
}

impl VirtualHost {
    pub fn routes_for(&self, port: u16) -> Option<&PortRoutes> {
        self.ports
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, r)| r)
            .or(self.any_port.as_ref())
    }

    pub fn port_list(&self) -> String {
        self.ports
            .iter()
            .map(|(p, _)| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Clone)]
pub enum PortRoutes {
    Http(Arc<[Route]>),
    Tcp(Arc<[TcpRoute]>),
}

#[derive(Debug)]
pub struct Route {
    /// `namespace/virtualservice` plus the route's name or index: the `route` metric label.
    pub name: Arc<str>,
    /// Any one must match; empty matches everything.
    pub matches: Vec<RequestMatch>,
    pub action: RouteAction,
}

/// One `match` block: every present condition must hold.
#[derive(Debug, Default, Clone)]
pub struct RequestMatch {
    pub uri: Option<StringMatcher>,
    pub ignore_uri_case: bool,
    pub scheme: Option<StringMatcher>,
    pub method: Option<StringMatcher>,
    pub authority: Option<StringMatcher>,
    pub headers: Vec<(HeaderName, StringMatcher)>,
    pub without_headers: Vec<(HeaderName, StringMatcher)>,
    pub query_params: Vec<(String, StringMatcher)>,
    pub port: Option<u16>,
}

#[derive(Debug)]
pub struct RouteAction {
    pub destinations: Vec<WeightedDestination>,
    pub total_weight: u32,
    pub rewrite: Option<Rewrite>,
    pub timeout: Option<Duration>,
    pub headers: HeaderOps,
    /// The route's `retries`, or Istio's default policy.
    pub retry: RetryPolicy,
    pub fault: Option<FaultPolicy>,
    pub mirrors: Vec<Mirror>,
    /// A RateLimitPolicy naming this route.
    pub rate_limit: Option<RateLimit>,
}

/// Istio `mirror`/`mirrors`: a copy of a share of the requests.
#[derive(Debug)]
pub struct Mirror {
    pub cluster: Arc<Cluster>,
    /// 0..=100
    pub percent: f64,
}

/// A local token bucket from a RateLimitPolicy.
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// `namespace/name` of the policy (and the route, when per route).
    pub policy: Arc<str>,
    pub bucket: Arc<SharedBucket>,
    pub rejected: prometheus_client::metrics::counter::Counter,
}

#[derive(Debug)]
pub struct WeightedDestination {
    pub weight: u32,
    pub cluster: Arc<Cluster>,
    pub headers: HeaderOps,
    pub stats: RouteStats,
}

#[derive(Debug, Clone)]
pub struct Rewrite {
    pub uri: Option<UriRewrite>,
    pub authority: Option<http::HeaderValue>,
}

#[derive(Debug, Clone)]
pub enum UriRewrite {
    /// Istio's `rewrite.uri`: replaces the matched prefix, or the whole path
    /// when the match was not a prefix match.
    Replace(String),
    /// `uriRegexRewrite`: every match of the regex in the path is replaced.
    Regex(regex::Regex, String),
}

#[derive(Debug)]
pub struct TcpRoute {
    /// Ports this route applies to; empty = all.
    pub ports: Vec<u16>,
    pub destinations: Vec<(u32, Arc<Cluster>)>,
    pub total_weight: u32,
}

/// The parts of a request routing looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The destination port the request was addressed to.
    pub port: u16,
}

impl RequestMatch {
    pub fn matches(&self, req: &RequestView) -> bool {
        if let Some(p) = self.port
            && p != req.port
        {
            return false;
        }
        if let Some(uri) = &self.uri {
            let ok = if self.ignore_uri_case {
                uri.matches_ignore_case(req.path)
            } else {
                uri.matches(req.path)
            };
            if !ok {
                return false;
            }
        }
        let simple = [
            (&self.method, req.method),
            (&self.scheme, req.scheme),
            (&self.authority, req.authority),
        ];
        if simple
            .iter()
            .any(|(m, v)| m.as_ref().is_some_and(|m| !m.matches(v)))
        {
            return false;
        }
        if !self
            .headers
            .iter()
            .all(|(name, m)| header_matches(req.headers, name, m))
        {
            return false;
        }
        if self
            .without_headers
            .iter()
            .any(|(name, m)| header_matches(req.headers, name, m))
        {
            return false;
        }
        self.query_params
            .iter()
            .all(|(name, m)| query_param(req.query, name).is_some_and(|v| m.matches(v)))
    }
}

/// Envoy's rule: a header sent several times is matched as its values joined by ",".
fn header_matches(headers: &HeaderMap, name: &HeaderName, m: &StringMatcher) -> bool {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return false;
    };
    let Some(second) = values.next() else {
        return first.to_str().is_ok_and(|v| m.matches(v));
    };
    let mut joined = String::new();
    for v in [first, second].into_iter().chain(values) {
        let Ok(v) = v.to_str() else { return false };
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(v);
    }
    m.matches(&joined)
}

/// The raw (not percent-decoded) value of the first `name` parameter.
pub fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// First route whose match holds (Istio: first match wins), with the match
/// block that held (rewrites depend on it).
pub fn select<'r>(
    routes: &'r [Route],
    req: &RequestView,
) -> Option<(&'r Route, Option<&'r RequestMatch>)> {
    routes.iter().find_map(|route| {
        if route.matches.is_empty() {
            return Some((route, None));
        }
        route
            .matches
            .iter()
            .find(|m| m.matches(req))
            .map(|m| (route, Some(m)))
    })
}

/// Pick an index by weight: `roll` is uniform in `0..total`.
pub fn pick_weighted(weights: impl IntoIterator<Item = u32>, roll: u32) -> Option<usize> {
    let mut acc = 0u32;
    weights.into_iter().position(|w| {
        acc += w;
        roll < acc
    })
}

/// The path (with query) after a rewrite.
pub fn rewrite_path(
    rewrite: &UriRewrite,
    matched: Option<&RequestMatch>,
    path: &str,
    query: Option<&str>,
) -> String {
    let new_path = match rewrite {
        UriRewrite::Replace(replacement) => {
            match matched
                .and_then(|m| m.uri.as_ref())
                .and_then(StringMatcher::prefix)
            {
                Some(prefix) if path.len() >= prefix.len() => {
                    let rest = &path[prefix.len()..];
                    // `/v1/` -> `/` on `/v1/x` gives `/x`, not `//x`.
                    if replacement.ends_with('/') && rest.starts_with('/') {
                        format!("{replacement}{}", &rest[1..])
                    } else {
                        format!("{replacement}{rest}")
                    }
                }
                _ => replacement.clone(),
            }
        }
        UriRewrite::Regex(re, replacement) => {
            re.replace_all(path, replacement.as_str()).into_owned()
        }
    };
    match query {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    }
}

/// TCP: the first route whose ports include `port`.
pub fn select_tcp(routes: &[TcpRoute], port: u16) -> Option<&TcpRoute> {
    routes
        .iter()
        .find(|r| r.ports.is_empty() || r.ports.contains(&port))
}

#[cfg(test)]
mod tests;
