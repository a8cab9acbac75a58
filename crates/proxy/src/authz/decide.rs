//! The authorization decision: a pure function of the compiled policies and
//! what is known about one request (or, for opaque TCP, one connection).
//!
//! Istio's order: a request any DENY rule matches is denied; else, when no
//! ALLOW policy applies to the workload it is allowed; else it is allowed
//! only if some ALLOW rule matches (default deny). AUDIT rules decide
//! nothing; the first that matches is reported so the request is logged.
//!
//! TCP (no HTTP request) follows Istio too: an ALLOW rule that uses an
//! HTTP-only field (hosts, methods, paths, request headers) never matches,
//! and DENY and AUDIT rules match as if their HTTP-only fields were absent,
//! so a policy never lets more through because the traffic is opaque.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use trellis_model::authorization::{Action, ConditionKey, Pattern};

use super::policy::{Condition, Operation, Policies, Policy, Rule, Source, Values};

/// What the decision looks at. Borrowed: building one allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The peer's SPIFFE ID (`spiffe://<td>/ns/<ns>/sa/<sa>`) from mTLS;
    /// None for plaintext peers.
    pub principal: Option<&'a str>,
    pub source_ip: IpAddr,
    /// The workload port the traffic is for.
    pub port: u16,
    /// None for opaque TCP.
    pub http: Option<HttpRequest<'a>>,
}

#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    /// The Host header or `:authority`, as sent (may carry a port).
    pub host: &'a str,
    pub method: &'a str,
    /// The path without the query, dot segments already removed
    /// ([`normalize_path`]).
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// A rule that matched: which policy, which action, which rule (index in
/// `spec.rules`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub policy: Arc<str>,
    pub action: Action,
    pub rule: usize,
}

/// Why the request is allowed or denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// No ALLOW or DENY policy applies to the workload.
    NoPolicy,
    /// Allowed by this ALLOW rule.
    Allowed(Matched),
    /// Denied by this DENY rule.
    Denied(Matched),
    /// ALLOW policies apply and none of their rules matched.
    NoAllowMatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub cause: Cause,
    /// The first AUDIT rule that matched, if any.
    pub audit: Option<Matched>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self.cause, Cause::NoPolicy | Cause::Allowed(_))
    }

    /// The policy that decided, for logs: `None` when none applied or by
    /// default deny.
    pub fn decided_by(&self) -> Option<&Matched> {
        match &self.cause {
            Cause::Allowed(m) | Cause::Denied(m) => Some(m),
            Cause::NoPolicy | Cause::NoAllowMatch => None,
        }
    }
}

pub fn decide(policies: &Policies, req: &Request) -> Decision {
    let audit = first_match(&policies.audit, req);
    let cause = if let Some(m) = first_match(&policies.deny, req) {
        Cause::Denied(m)
    } else if policies.allow.is_empty() {
        Cause::NoPolicy
    } else if let Some(m) = first_match(&policies.allow, req) {
        Cause::Allowed(m)
    } else {
        Cause::NoAllowMatch
    };
    Decision { cause, audit }
}

fn first_match(policies: &[Policy], req: &Request) -> Option<Matched> {
    policies.iter().find_map(|p| {
        p.rules
            .iter()
            .position(|r| rule_matches(p.action, r, req))
            .map(|rule| Matched {
                policy: p.name.clone(),
                action: p.action,
                rule,
            })
    })
}

fn rule_matches(action: Action, rule: &Rule, req: &Request) -> bool {
    if req.http.is_none() && rule.http_only && action == Action::Allow {
        return false;
    }
    (rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, req)))
        && (rule.to.is_empty() || rule.to.iter().any(|o| operation_matches(o, req)))
        && rule.when.iter().all(|c| condition_matches(c, req))
}

/// An empty list is no constraint; a non-empty one must have a match.
fn any<T>(list: &[T], f: impl Fn(&T) -> bool) -> bool {
    list.is_empty() || list.iter().any(f)
}

/// An empty list is no constraint; a non-empty one must have no match.
fn none<T>(list: &[T], f: impl Fn(&T) -> bool) -> bool {
    !list.iter().any(f)
}

/// Istio writes principals without the `spiffe://` scheme.
fn principal<'a>(req: &Request<'a>) -> Option<&'a str> {
    req.principal
        .map(|p| p.strip_prefix("spiffe://").unwrap_or(p))
}

/// The namespace in a SPIFFE ID `<td>/ns/<ns>/sa/<sa>`.
pub fn namespace_of(principal: &str) -> Option<&str> {
    let mut parts = principal
        .strip_prefix("spiffe://")
        .unwrap_or(principal)
        .split('/');
    parts.next()?;
    (parts.next()? == "ns").then_some(())?;
    parts.next().filter(|ns| !ns.is_empty())
}

/// A pattern over a value the request may not have: absent matches
/// nothing, so a positive list fails and a `not*` list passes (as Envoy's
/// RBAC does for a peer without a certificate).
fn opt_matches(p: &Pattern, v: Option<&str>) -> bool {
    v.is_some_and(|v| p.matches(v))
}

fn source_matches(s: &Source, req: &Request) -> bool {
    let principal = principal(req);
    let ns = principal.and_then(namespace_of);
    any(&s.principals, |p| opt_matches(p, principal))
        && none(&s.not_principals, |p| opt_matches(p, principal))
        && any(&s.namespaces, |p| opt_matches(p, ns))
        && none(&s.not_namespaces, |p| opt_matches(p, ns))
        && any(&s.ip_blocks, |c| c.contains(req.source_ip))
        && none(&s.not_ip_blocks, |c| c.contains(req.source_ip))
}

/// Istio matches hosts case-insensitively, with or without the port.
fn host_matches(p: &Pattern, host: &str) -> bool {
    p.matches_ignore_case(host)
        || host
            .rsplit_once(':')
            .filter(|(h, port)| {
                !h.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
            })
            .is_some_and(|(h, _)| p.matches_ignore_case(h))
}

fn operation_matches(o: &Operation, req: &Request) -> bool {
    let ports = any(&o.ports, |p| *p == req.port) && none(&o.not_ports, |p| *p == req.port);
    // Without HTTP, only a DENY or AUDIT rule gets here: its HTTP fields
    // are ignored.
    let Some(h) = &req.http else {
        return ports;
    };
    ports
        && any(&o.hosts, |p| host_matches(p, h.host))
        && none(&o.not_hosts, |p| host_matches(p, h.host))
        && any(&o.methods, |p| p.matches(h.method))
        && none(&o.not_methods, |p| p.matches(h.method))
        && any(&o.paths, |p| p.matches(h.path))
        && none(&o.not_paths, |p| p.matches(h.path))
}

fn condition_matches(c: &Condition, req: &Request) -> bool {
    // One value check for both lists; `values` must match one, `notValues` none.
    let test = |values: &Values| -> bool {
        match (values, &c.key) {
            (Values::Cidrs(cs), _) => cs.iter().any(|c| c.contains(req.source_ip)),
            (Values::Ports(ps), _) => ps.contains(&req.port),
            (Values::Patterns(ps), key) => {
                let v = match key {
                    ConditionKey::SourcePrincipal => principal(req),
                    ConditionKey::SourceNamespace => principal(req).and_then(namespace_of),
                    ConditionKey::RequestHeader(name) => match &req.http {
                        // Istio joins repeated headers with ',' before
                        // matching; the first value covers the common case
                        // without allocating. (docs/authorization.md)
                        Some(h) => h.headers.get(name.as_str()).and_then(|v| v.to_str().ok()),
                        None => return true,
                    },
                    ConditionKey::SourceIp | ConditionKey::DestinationPort => None,
                };
                ps.iter().any(|p| opt_matches(p, v))
            }
        }
    };
    if req.http.is_none() && c.key.http_only() {
        // Only DENY/AUDIT rules get here on TCP: the condition is ignored.
        return true;
    }
    (c.values.is_empty() || test(&c.values)) && (c.not_values.is_empty() || !test(&c.not_values))
}

/// RFC 3986 `remove_dot_segments` over the path (no query): `/a/./b/../c`
/// is `/a/c`, so `/./admin` cannot slip past a rule on `/admin`. Borrows
/// when there is nothing to remove (the common case).
pub fn normalize_path(path: &str) -> std::borrow::Cow<'_, str> {
    let has_dots = path.split('/').any(|seg| seg == "." || seg == "..");
    if !has_dots {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    std::borrow::Cow::Owned(format!("/{}", out.join("/")))
}
