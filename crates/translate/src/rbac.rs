//! AuthorizationPolicy -> Envoy RBAC filters on the inbound listener, as
//! Istio generates them: per action one filter (AUDIT as `LOG`, then DENY,
//! then ALLOW, before the router / tcp_proxy), one RBAC policy per rule,
//! named `ns[<ns>]-policy[<name>]-rule[<i>]`. The ALLOW filter is present
//! whenever an ALLOW policy applies, so "no rule matched" is a denial
//! (default deny), even when no ALLOW rule exists.
//!
//! Each rule is one permission and one principal:
//! `permissions: [and_rules: [<to>, <destination.port conditions>...]]`,
//! `principals: [and_ids: [<from>, <other conditions>...]]`, where `<to>`
//! and `<from>` are `any` when the rule has none, else an OR over the
//! entries, each an AND over its fields, each an OR over its values (a
//! `not*` field wrapped in `not_rule` / `not_id`). A condition is an AND
//! of its `values` (OR) and `notValues` (NOT OR). trellis-proxy reads this
//! shape back (`xds/rbac.rs`) and refuses any other.
//!
//! The network (TCP) filters apply Istio's rule for HTTP-only fields
//! (hosts, methods, paths, request headers): an ALLOW rule using one is left
//! out; DENY and AUDIT rules drop those fields.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac, permission, principal, rbac,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    PathMatcher, RegexMatcher, StringMatcher, path_matcher, string_matcher::MatchPattern,
};
use trellis_model::authorization::{
    Action, AuthorizationPolicySpec, Cidr, Condition, ConditionKey, Operation, Pattern, Source,
    parse_port,
};
use trellis_model::resource::Object;

use crate::encode;
use crate::listener::http_filter;
use crate::names::filter as f;

/// Istio's name for the RBAC policy of one rule.
pub fn policy_name(namespace: &str, name: &str, rule: usize) -> String {
    format!("ns[{namespace}]-policy[{name}]-rule[{rule}]")
}

/// The RBAC filters for the inbound listener, in order: HTTP filters go
/// before the router, network filters before tcp_proxy.
#[derive(Debug, Clone, Default)]
pub struct InboundRbac {
    pub http: Vec<HttpFilter>,
    pub network: Vec<Filter>,
}

/// `policies` are those that apply to the proxy's workload
/// ([`trellis_model::authorization::applies`]), validated.
pub fn inbound(policies: &[&Object<AuthorizationPolicySpec>]) -> InboundRbac {
    let mut out = InboundRbac::default();
    for (action, envoy_action, stat) in [
        (Action::Audit, rbac::Action::Log, "audit"),
        (Action::Deny, rbac::Action::Deny, "deny"),
        (Action::Allow, rbac::Action::Allow, "allow"),
    ] {
        let mine: Vec<_> = policies
            .iter()
            .filter(|p| p.spec.action == action)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let rules = |for_tcp: bool| Rbac {
            action: envoy_action as i32,
            policies: mine
                .iter()
                .flat_map(|p| {
                    p.spec.rules.iter().enumerate().filter_map(move |(i, r)| {
                        rule(action, r, for_tcp).map(|policy| {
                            (
                                policy_name(&p.metadata.namespace, &p.metadata.name, i),
                                policy,
                            )
                        })
                    })
                })
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        };
        out.http.push(http_filter(
            f::RBAC,
            encode::any(&HttpRbac {
                rules: Some(rules(false)),
                rules_stat_prefix: format!("trellis_rbac_{stat}_"),
                ..Default::default()
            }),
        ));
        out.network.push(Filter {
            name: f::NETWORK_RBAC.to_string(),
            config_type: Some(filter::ConfigType::TypedConfig(encode::any(&NetworkRbac {
                rules: Some(rules(true)),
                stat_prefix: format!("trellis_rbac_{stat}_"),
                ..Default::default()
            }))),
        });
    }
    out
}

/// One rule as an RBAC policy; `None`: left out (an ALLOW rule with
/// HTTP-only fields, for TCP).
fn rule(action: Action, r: &trellis_model::authorization::Rule, for_tcp: bool) -> Option<Policy> {
    let http_only =
        r.to.iter()
            .filter_map(|t| t.operation.as_ref())
            .any(op_http_only)
            || r.when
                .iter()
                .any(|c| ConditionKey::parse(&c.key).is_ok_and(|k| k.http_only()));
    if for_tcp && http_only && action == Action::Allow {
        return None;
    }
    // Validated config parses; if a value ever did not, the rule fails
    // closed: an ALLOW rule matches nothing, a DENY or AUDIT rule everything.
    let fail_closed = || {
        let any = action != Action::Allow;
        Policy {
            permissions: vec![perm(permission::Rule::Any(true))],
            principals: vec![if any {
                id(principal::Identifier::Any(true))
            } else {
                id(principal::Identifier::NotId(Box::new(id(
                    principal::Identifier::Any(true),
                ))))
            }],
            ..Default::default()
        }
    };
    let to = if r.to.is_empty() {
        perm(permission::Rule::Any(true))
    } else {
        let ops: Option<Vec<Permission>> =
            r.to.iter()
                .map(|t| t.operation.as_ref().and_then(|o| operation(o, for_tcp)))
                .collect();
        let Some(ops) = ops else {
            return Some(fail_closed());
        };
        perm(permission::Rule::OrRules(permission::Set { rules: ops }))
    };
    let from = if r.from.is_empty() {
        id(principal::Identifier::Any(true))
    } else {
        let sources: Option<Vec<Principal>> = r
            .from
            .iter()
            .map(|f| f.source.as_ref().and_then(source))
            .collect();
        let Some(sources) = sources else {
            return Some(fail_closed());
        };
        id(principal::Identifier::OrIds(principal::Set {
            ids: sources,
        }))
    };
    let mut perms = vec![to];
    let mut ids = vec![from];
    for c in &r.when {
        let Ok(key) = ConditionKey::parse(&c.key) else {
            return Some(fail_closed());
        };
        if for_tcp && key.http_only() {
            continue;
        }
        match condition(&key, c) {
            Some(Side::Permission(p)) => perms.push(p),
            Some(Side::Principal(p)) => ids.push(p),
            None => return Some(fail_closed()),
        }
    }
    Some(Policy {
        permissions: vec![perm(permission::Rule::AndRules(permission::Set {
            rules: perms,
        }))],
        principals: vec![id(principal::Identifier::AndIds(principal::Set { ids }))],
        ..Default::default()
    })
}

fn op_http_only(o: &Operation) -> bool {
    [
        &o.hosts,
        &o.not_hosts,
        &o.methods,
        &o.not_methods,
        &o.paths,
        &o.not_paths,
    ]
    .iter()
    .any(|v| !v.is_empty())
}

fn perm(rule: permission::Rule) -> Permission {
    Permission { rule: Some(rule) }
}

fn id(identifier: principal::Identifier) -> Principal {
    Principal {
        identifier: Some(identifier),
    }
}

/// A field: OR over its values, negated for a `not*` field. Empty: none.
fn perm_field<T>(
    values: &[String],
    not: bool,
    parse: impl Fn(&str) -> Option<T>,
    leaf: impl Fn(T) -> Permission,
) -> Option<Option<Permission>> {
    if values.is_empty() {
        return Some(None);
    }
    let rules: Option<Vec<Permission>> = values.iter().map(|v| parse(v).map(&leaf)).collect();
    let or = perm(permission::Rule::OrRules(permission::Set { rules: rules? }));
    Some(Some(if not {
        perm(permission::Rule::NotRule(Box::new(or)))
    } else {
        or
    }))
}

fn id_field<T>(
    values: &[String],
    not: bool,
    parse: impl Fn(&str) -> Option<T>,
    leaf: impl Fn(T) -> Principal,
) -> Option<Option<Principal>> {
    if values.is_empty() {
        return Some(None);
    }
    let ids: Option<Vec<Principal>> = values.iter().map(|v| parse(v).map(&leaf)).collect();
    let or = id(principal::Identifier::OrIds(principal::Set { ids: ids? }));
    Some(Some(if not {
        id(principal::Identifier::NotId(Box::new(or)))
    } else {
        or
    }))
}

fn pattern(v: &str) -> Option<Pattern> {
    Pattern::parse(v).ok()
}

fn cidr(v: &str) -> Option<Cidr> {
    Cidr::parse(v).ok()
}

fn port(v: &str) -> Option<u16> {
    parse_port(v).ok()
}

/// A string matcher for a pattern; `*` (present) is `.+`, as Istio writes it.
pub fn string_matcher(p: &Pattern, ignore_case: bool) -> StringMatcher {
    let pattern = match p {
        Pattern::Exact(v) => MatchPattern::Exact(v.clone()),
        Pattern::Prefix(v) => MatchPattern::Prefix(v.clone()),
        Pattern::Suffix(v) => MatchPattern::Suffix(v.clone()),
        Pattern::Present => MatchPattern::SafeRegex(RegexMatcher {
            regex: ".+".to_string(),
            engine_type: None,
        }),
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    }
}

fn header(name: &str, p: &Pattern, ignore_case: bool) -> HeaderMatcher {
    let spec = match p {
        Pattern::Present => header_matcher::HeaderMatchSpecifier::PresentMatch(true),
        p => header_matcher::HeaderMatchSpecifier::StringMatch(string_matcher(p, ignore_case)),
    };
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

fn cidr_range(c: Cidr) -> CidrRange {
    CidrRange {
        address_prefix: c.addr.to_string(),
        prefix_len: Some(encode::u32v(u32::from(c.len))),
    }
}

/// A principal (written without `spiffe://`) as the peer certificate's URI
/// SAN matcher.
fn principal_leaf(p: Pattern) -> Principal {
    let with_scheme = match p {
        Pattern::Exact(v) => Pattern::Exact(format!("spiffe://{v}")),
        Pattern::Prefix(v) => Pattern::Prefix(format!("spiffe://{v}")),
        other => other,
    };
    authenticated(string_matcher(&with_scheme, false))
}

/// A namespace as a regex over the peer's SPIFFE ID, as Istio matches it.
fn namespace_leaf(p: Pattern) -> Principal {
    let ns = match &p {
        Pattern::Exact(v) => regex::escape(v),
        Pattern::Prefix(v) => format!("{}[^/]*", regex::escape(v)),
        Pattern::Suffix(v) => format!("[^/]*{}", regex::escape(v)),
        Pattern::Present => "[^/]+".to_string(),
    };
    authenticated(StringMatcher {
        match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
            regex: format!(".*/ns/{ns}/.*"),
            engine_type: None,
        })),
        ignore_case: false,
    })
}

fn authenticated(m: StringMatcher) -> Principal {
    id(principal::Identifier::Authenticated(
        principal::Authenticated {
            principal_name: Some(m),
        },
    ))
}

fn ip_leaf(c: Cidr) -> Principal {
    id(principal::Identifier::DirectRemoteIp(cidr_range(c)))
}

fn port_leaf(p: u16) -> Permission {
    perm(permission::Rule::DestinationPort(u32::from(p)))
}

fn host_leaf(p: Pattern) -> Permission {
    perm(permission::Rule::Header(header(":authority", &p, true)))
}

fn method_leaf(p: Pattern) -> Permission {
    perm(permission::Rule::Header(header(":method", &p, false)))
}

fn path_leaf(p: Pattern) -> Permission {
    perm(permission::Rule::UrlPath(PathMatcher {
        rule: Some(path_matcher::Rule::Path(string_matcher(&p, false))),
    }))
}

/// An operation: AND over its fields. For TCP its HTTP-only fields are
/// dropped; with nothing left it matches any connection.
fn operation(o: &Operation, for_tcp: bool) -> Option<Permission> {
    let mut fields = vec![
        perm_field(&o.ports, false, port, port_leaf)?,
        perm_field(&o.not_ports, true, port, port_leaf)?,
    ];
    if !for_tcp {
        fields.extend([
            perm_field(&o.hosts, false, pattern, host_leaf)?,
            perm_field(&o.not_hosts, true, pattern, host_leaf)?,
            perm_field(&o.methods, false, pattern, method_leaf)?,
            perm_field(&o.not_methods, true, pattern, method_leaf)?,
            perm_field(&o.paths, false, pattern, path_leaf)?,
            perm_field(&o.not_paths, true, pattern, path_leaf)?,
        ]);
    }
    let rules: Vec<Permission> = fields.into_iter().flatten().collect();
    Some(if rules.is_empty() {
        perm(permission::Rule::Any(true))
    } else {
        perm(permission::Rule::AndRules(permission::Set { rules }))
    })
}

fn source(s: &Source) -> Option<Principal> {
    let fields = [
        id_field(&s.principals, false, pattern, principal_leaf)?,
        id_field(&s.not_principals, true, pattern, principal_leaf)?,
        id_field(&s.namespaces, false, pattern, namespace_leaf)?,
        id_field(&s.not_namespaces, true, pattern, namespace_leaf)?,
        id_field(&s.ip_blocks, false, cidr, ip_leaf)?,
        id_field(&s.not_ip_blocks, true, cidr, ip_leaf)?,
    ];
    let ids: Vec<Principal> = fields.into_iter().flatten().collect();
    Some(id(principal::Identifier::AndIds(principal::Set { ids })))
}

enum Side {
    Permission(Permission),
    Principal(Principal),
}

fn condition(key: &ConditionKey, c: &Condition) -> Option<Side> {
    Some(match key {
        ConditionKey::DestinationPort => {
            let rules: Vec<Permission> = [
                perm_field(&c.values, false, port, port_leaf)?,
                perm_field(&c.not_values, true, port, port_leaf)?,
            ]
            .into_iter()
            .flatten()
            .collect();
            Side::Permission(perm(permission::Rule::AndRules(permission::Set { rules })))
        }
        key => {
            let name = match key {
                ConditionKey::RequestHeader(n) => n.clone(),
                _ => String::new(),
            };
            let ids: Vec<Principal> = match key {
                ConditionKey::SourceIp => [
                    id_field(&c.values, false, cidr, ip_leaf)?,
                    id_field(&c.not_values, true, cidr, ip_leaf)?,
                ],
                ConditionKey::SourcePrincipal => [
                    id_field(&c.values, false, pattern, principal_leaf)?,
                    id_field(&c.not_values, true, pattern, principal_leaf)?,
                ],
                ConditionKey::SourceNamespace => [
                    id_field(&c.values, false, pattern, namespace_leaf)?,
                    id_field(&c.not_values, true, pattern, namespace_leaf)?,
                ],
                _ => {
                    let leaf =
                        |p: Pattern| id(principal::Identifier::Header(header(&name, &p, false)));
                    [
                        id_field(&c.values, false, pattern, leaf)?,
                        id_field(&c.not_values, true, pattern, leaf)?,
                    ]
                }
            }
            .into_iter()
            .flatten()
            .collect();
            Side::Principal(id(principal::Identifier::AndIds(principal::Set { ids })))
        }
    })
}
