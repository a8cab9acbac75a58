//! Istio's `AuthorizationPolicy` (`security.istio.io`): the resource as
//! users write it, the checks serde's types cannot make, which policies apply
//! to a workload, and the value forms rules are written in (string patterns,
//! CIDRs, ports, `when` keys). The decision itself is the proxy's
//! (`trellis_proxy::authz`); everything here is plain data.
//!
//! Field names and meanings follow Istio's reference. Fields Trellis does not
//! implement are rejected at their path with a reason naming what to use
//! instead, never silently ignored: an ignored field in a security policy
//! changes who gets in.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, de::Error as _};

use crate::error::ConfigError;
use crate::resource::Object;
use crate::sidecar::ROOT_NAMESPACE;

/// The API versions of `AuthorizationPolicy` accepted (same schema).
pub const API_VERSIONS: &[&str] = &["security.istio.io/v1", "security.istio.io/v1beta1"];

/// Why an Istio field is refused, and what to use instead.
pub trait Why {
    const WHY: &'static str;
}

/// An Istio field Trellis refuses with a reason of its own (see [`Why`]).
/// Deserializing any value other than `null` fails with that reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported<W>(PhantomData<W>);

impl<'de, W: Why> Deserialize<'de> for Unsupported<W> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d)?;
        Err(D::Error::custom(W::WHY))
    }
}

impl<W> Serialize for Unsupported<W> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestPrincipals;
impl Why for RequestPrincipals {
    const WHY: &'static str = "request principals come from JWTs (RequestAuthentication), which Trellis does not \
         support; use principals or namespaces (the peer's mTLS identity) instead";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteIpBlocks;
impl Why for RemoteIpBlocks {
    const WHY: &'static str = "remote IP blocks come from X-Forwarded-For, which Trellis does not trust; use \
         ipBlocks (the connection's source address) instead";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceAccounts;
impl Why for ServiceAccounts {
    const WHY: &'static str =
        "not supported by Trellis; use principals (\"<trust-domain>/ns/<ns>/sa/<sa>\") instead";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetRef;
impl Why for TargetRef {
    const WHY: &'static str = "policies attached to gateways or services (targetRef) are not supported by \
         Trellis; select workloads with selector.matchLabels instead";
}

/// `spec` of an AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Which workloads of the policy's namespace (every namespace, for a
    /// policy in the root namespace) it applies to; none: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<Unsupported<TargetRef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_refs: Option<Unsupported<TargetRef>>,
    #[serde(default)]
    pub action: Action,
    /// Only meaningful with `CUSTOM`; refused by [`validate`] with a reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<serde_json::Value>,
    /// No rules: an ALLOW policy matches nothing, and so denies everything.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

pub use crate::selector::Selector;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Audit,
    /// Parsed so that it can be refused with a reason, never enforced.
    Custom,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

/// One rule: matches when any `from` matches (or there is none), and any `to`
/// matches (or there is none), and every `when` holds. `rules: [{}]` matches
/// everything.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<From>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<To>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct From {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct To {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// Every field set must match (AND); within a field, any value (OR); a
/// `not*` field matches when none of its values does.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_principals: Option<Unsupported<RequestPrincipals>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_request_principals: Option<Unsupported<RequestPrincipals>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip_blocks: Option<Unsupported<RemoteIpBlocks>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_remote_ip_blocks: Option<Unsupported<RemoteIpBlocks>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<Unsupported<ServiceAccounts>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_service_accounts: Option<Unsupported<ServiceAccounts>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

// ------------------------------------------------------------- value forms

/// Istio's string match forms: `abc` exact, `abc*` prefix, `*abc` suffix,
/// `*` any non-empty value (presence).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

impl Pattern {
    /// A `*` anywhere but the first or last character would be taken
    /// literally by Istio's matcher, which is never what the author meant:
    /// refused.
    pub fn parse(s: &str) -> Result<Pattern, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s == "*" {
            return Ok(Pattern::Present);
        }
        let p = if let Some(rest) = s.strip_prefix('*') {
            Pattern::Suffix(rest.to_string())
        } else if let Some(rest) = s.strip_suffix('*') {
            Pattern::Prefix(rest.to_string())
        } else {
            Pattern::Exact(s.to_string())
        };
        let inner = match &p {
            Pattern::Exact(v) | Pattern::Prefix(v) | Pattern::Suffix(v) => v,
            Pattern::Present => "",
        };
        if inner.contains('*') {
            return Err(format!(
                "{s:?}: '*' is allowed only as the whole value, or as the first or last character \
                 (prefix \"abc*\", suffix \"*abc\")"
            ));
        }
        Ok(p)
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Exact(v) => value == v,
            Pattern::Prefix(v) => value.starts_with(v.as_str()),
            Pattern::Suffix(v) => value.ends_with(v.as_str()),
            Pattern::Present => !value.is_empty(),
        }
    }

    /// The same, ASCII case-insensitively (Istio matches hosts this way).
    pub fn matches_ignore_case(&self, value: &str) -> bool {
        let (v, n) = (value.as_bytes(), value.len());
        match self {
            Pattern::Exact(p) => value.eq_ignore_ascii_case(p),
            Pattern::Prefix(p) => n >= p.len() && v[..p.len()].eq_ignore_ascii_case(p.as_bytes()),
            Pattern::Suffix(p) => {
                n >= p.len() && v[n - p.len()..].eq_ignore_ascii_case(p.as_bytes())
            }
            Pattern::Present => n > 0,
        }
    }
}

/// An address block: `10.0.0.1` (one address) or `10.0.0.0/8`, v4 or v6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        crate::validate::parse_cidr(s)
            .map(|(addr, len)| Cidr { addr, len })
            .ok_or_else(|| {
                format!("{s:?} is not an IP address or CIDR block (e.g. 10.0.0.0/8, 2001:db8::/32)")
            })
    }

    /// An IPv4-mapped IPv6 source (`::ffff:10.0.0.1`, as a dual-stack
    /// listener reports v4 peers) matches v4 blocks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A port number as rules write it (a string, 1..=65535).
pub fn parse_port(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?} is not a port number (1-65535)"))
}

/// The `when` keys Trellis evaluates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConditionKey {
    /// `request.headers[<name>]`, the name lowercased. HTTP only.
    RequestHeader(String),
    SourcePrincipal,
    SourceNamespace,
    SourceIp,
    DestinationPort,
}

pub const SUPPORTED_KEYS: &str = "request.headers[<name>], source.principal, source.namespace, \
     source.ip, destination.port";

impl ConditionKey {
    pub fn parse(key: &str) -> Result<ConditionKey, String> {
        Ok(match key {
            "source.principal" => ConditionKey::SourcePrincipal,
            "source.namespace" => ConditionKey::SourceNamespace,
            "source.ip" => ConditionKey::SourceIp,
            "destination.port" => ConditionKey::DestinationPort,
            k => {
                let Some(name) = k
                    .strip_prefix("request.headers[")
                    .and_then(|r| r.strip_suffix(']'))
                else {
                    return Err(format!(
                        "{key:?} is not a condition key Trellis supports; use one of {SUPPORTED_KEYS}"
                    ));
                };
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(format!("{name:?} in {key:?} is not a valid header name"));
                }
                ConditionKey::RequestHeader(name.to_ascii_lowercase())
            }
        })
    }

    /// Only present on HTTP requests (see the TCP rules in docs/authorization.md).
    pub fn http_only(&self) -> bool {
        matches!(self, ConditionKey::RequestHeader(_))
    }
}

// -------------------------------------------------------------- selection

/// Does `policy` apply to a workload in `namespace` with `labels`? Istio's
/// rule: a policy in the root namespace applies in every namespace, any
/// other only in its own; with a selector, only to workloads having all its
/// labels.
pub fn applies(
    policy: &Object<AuthorizationPolicySpec>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let ns = &policy.metadata.namespace;
    (ns == namespace || ns == ROOT_NAMESPACE)
        && policy
            .spec
            .selector
            .as_ref()
            .is_none_or(|s| s.matches(labels))
}

// ------------------------------------------------------------- validation

/// Check every policy; errors name file, resource, field path and reason.
pub fn validate(policies: &[Object<AuthorizationPolicySpec>]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for p in policies {
        let mut err = |field: String, reason: String| {
            errors.push(ConfigError::new(
                &p.source,
                format!("AuthorizationPolicy {}", p.key()),
                field,
                reason,
            ))
        };
        check_policy(&p.spec, &mut err);
    }
    errors
}

fn check_policy(spec: &AuthorizationPolicySpec, err: &mut dyn FnMut(String, String)) {
    if spec.action == Action::Custom {
        err(
            "spec.action".into(),
            "CUSTOM (an external authorization service) is not supported by Trellis; use ALLOW or \
             DENY rules, or put the external check in the application"
                .into(),
        );
    }
    if spec.provider.is_some() {
        err(
            "spec.provider".into(),
            "a provider is only used by action CUSTOM, which Trellis does not support; remove it and \
             use ALLOW or DENY rules"
                .into(),
        );
    }
    for (k, v) in spec.selector.iter().flat_map(|s| &s.match_labels) {
        if k.is_empty() {
            err(
                "spec.selector.matchLabels".into(),
                format!("label key for value {v:?} must not be empty"),
            );
        }
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            let at = format!("{at}.from[{j}].source");
            match &from.source {
                None => err(
                    at,
                    "is required in each from entry (Istio's rule too)".into(),
                ),
                Some(s) => check_source(s, &at, err),
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let at = format!("{at}.to[{j}].operation");
            match &to.operation {
                None => err(at, "is required in each to entry (Istio's rule too)".into()),
                Some(o) => check_operation(o, &at, err),
            }
        }
        for (j, c) in rule.when.iter().enumerate() {
            check_condition(c, &format!("{at}.when[{j}]"), err);
        }
    }
}

fn each(
    values: &[String],
    at: &str,
    field: &str,
    check: impl Fn(&str) -> Result<(), String>,
    err: &mut dyn FnMut(String, String),
) {
    for (i, v) in values.iter().enumerate() {
        if let Err(reason) = check(v) {
            err(format!("{at}.{field}[{i}]"), reason);
        }
    }
}

fn pattern(v: &str) -> Result<(), String> {
    Pattern::parse(v).map(drop)
}

fn cidr(v: &str) -> Result<(), String> {
    Cidr::parse(v).map(drop)
}

fn port(v: &str) -> Result<(), String> {
    parse_port(v).map(drop)
}

fn path(v: &str) -> Result<(), String> {
    if v.contains('{') {
        return Err(format!(
            "{v:?}: path templates ({{*}}, {{**}}) are not supported by Trellis; use the prefix \
             (\"/api/*\") or suffix (\"*.json\") form"
        ));
    }
    pattern(v)
}

fn check_source(s: &Source, at: &str, err: &mut dyn FnMut(String, String)) {
    let all = [
        &s.principals,
        &s.not_principals,
        &s.namespaces,
        &s.not_namespaces,
        &s.ip_blocks,
        &s.not_ip_blocks,
    ];
    if all.iter().all(|v| v.is_empty()) {
        err(
            at.into(),
            "must set at least one of principals, notPrincipals, namespaces, notNamespaces, \
             ipBlocks, notIpBlocks (an empty source is an error in Istio too)"
                .into(),
        );
    }
    each(&s.principals, at, "principals", pattern, err);
    each(&s.not_principals, at, "notPrincipals", pattern, err);
    each(&s.namespaces, at, "namespaces", pattern, err);
    each(&s.not_namespaces, at, "notNamespaces", pattern, err);
    each(&s.ip_blocks, at, "ipBlocks", cidr, err);
    each(&s.not_ip_blocks, at, "notIpBlocks", cidr, err);
}

fn check_operation(o: &Operation, at: &str, err: &mut dyn FnMut(String, String)) {
    let all = [
        &o.hosts,
        &o.not_hosts,
        &o.ports,
        &o.not_ports,
        &o.methods,
        &o.not_methods,
        &o.paths,
        &o.not_paths,
    ];
    if all.iter().all(|v| v.is_empty()) {
        err(
            at.into(),
            "must set at least one of hosts, notHosts, ports, notPorts, methods, notMethods, paths, \
             notPaths (an empty operation is an error in Istio too)"
                .into(),
        );
    }
    each(&o.hosts, at, "hosts", pattern, err);
    each(&o.not_hosts, at, "notHosts", pattern, err);
    each(&o.ports, at, "ports", port, err);
    each(&o.not_ports, at, "notPorts", port, err);
    each(&o.methods, at, "methods", pattern, err);
    each(&o.not_methods, at, "notMethods", pattern, err);
    each(&o.paths, at, "paths", path, err);
    each(&o.not_paths, at, "notPaths", path, err);
}

fn check_condition(c: &Condition, at: &str, err: &mut dyn FnMut(String, String)) {
    let key = match ConditionKey::parse(&c.key) {
        Ok(k) => k,
        Err(reason) => {
            err(format!("{at}.key"), reason);
            return;
        }
    };
    if c.values.is_empty() && c.not_values.is_empty() {
        err(
            at.into(),
            format!("sets neither values nor notValues for key {:?}", c.key),
        );
    }
    let check: fn(&str) -> Result<(), String> = match key {
        ConditionKey::SourceIp => cidr,
        ConditionKey::DestinationPort => port,
        _ => pattern,
    };
    each(&c.values, at, "values", check, err);
    each(&c.not_values, at, "notValues", check, err);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let cases: &[(&str, &str, bool)] = &[
            ("/api", "/api", true),
            ("/api", "/api/x", false),
            ("/api/*", "/api/x", true),
            ("/api/*", "/api", false),
            ("*.json", "/a/b.json", true),
            ("*.json", "/a/b.jsonx", false),
            ("*", "x", true),
            ("*", "", false),
        ];
        for (p, v, want) in cases {
            assert_eq!(Pattern::parse(p).unwrap().matches(v), *want, "{p} {v}");
        }
        assert!(
            Pattern::parse("Example.COM*")
                .unwrap()
                .matches_ignore_case("example.com:80")
        );
        assert!(
            Pattern::parse("*.Example.com")
                .unwrap()
                .matches_ignore_case("a.example.COM")
        );
        for bad in ["", "a*b", "**a", "*a*"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidrs() {
        let cases: &[(&str, &str, bool)] = &[
            ("10.0.0.0/8", "10.1.2.3", true),
            ("10.0.0.0/8", "11.1.2.3", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("0.0.0.0/0", "1.2.3.4", true),
            ("10.0.0.0/8", "::ffff:10.0.0.1", true),
            ("2001:db8::/32", "2001:db8::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("::/0", "10.0.0.1", false),
        ];
        for (c, ip, want) in cases {
            let cidr = Cidr::parse(c).unwrap();
            assert_eq!(cidr.contains(ip.parse().unwrap()), *want, "{c} {ip}");
        }
        for bad in ["10.0.0.0/33", "ten", "10.0.0.0/", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn condition_keys() {
        assert_eq!(
            ConditionKey::parse("request.headers[X-User]"),
            Ok(ConditionKey::RequestHeader("x-user".into()))
        );
        assert_eq!(
            ConditionKey::parse("destination.port"),
            Ok(ConditionKey::DestinationPort)
        );
        let e = ConditionKey::parse("request.auth.claims[iss]").unwrap_err();
        assert!(e.contains("source.principal"), "{e}");
        assert!(ConditionKey::parse("request.headers[a b]").is_err());
    }

    fn policy(ns: &str, selector: Option<&[(&str, &str)]>) -> Object<AuthorizationPolicySpec> {
        Object {
            metadata: crate::Meta {
                name: "p".into(),
                namespace: ns.into(),
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
            },
            spec: AuthorizationPolicySpec {
                selector: selector.map(|l| Selector {
                    match_labels: l
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                }),
                ..Default::default()
            },
            source: "f.yaml".into(),
        }
    }

    #[test]
    fn which_policies_apply() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let web: &[(&str, &str)] = &[("app", "web")];
        let db: &[(&str, &str)] = &[("app", "db")];
        let cases = [
            (policy("shop", None), true),
            (policy("shop", Some(web)), true),
            (policy("shop", Some(db)), false),
            (policy("other", None), false),
            (policy("istio-system", None), true),
            (policy("istio-system", Some(web)), true),
            (policy("istio-system", Some(db)), false),
            (policy("shop", Some(&[])), true),
        ];
        for (i, (p, want)) in cases.iter().enumerate() {
            assert_eq!(applies(p, "shop", &labels), *want, "case {i}");
        }
    }
}
