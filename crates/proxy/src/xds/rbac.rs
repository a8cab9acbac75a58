//! The inbound listener's RBAC filters -> the authorization engine's
//! policies (`authz::Policies`). It reads the shape trellis-translate writes
//! (Istio's: see crates/translate/src/rbac.rs) and refuses anything else
//! with the field and the reason, which becomes the NACK: a security
//! filter half understood must not be half enforced.
//!
//! The HTTP filters are the source: the engine applies Istio's TCP rule for
//! HTTP-only fields itself, which is what the network filters (for Envoy)
//! encode. The network filters must be there for the same actions.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy as EnvoyPolicy, Principal, Rbac, permission, principal, rbac,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    StringMatcher, path_matcher, string_matcher::MatchPattern,
};
use prost::Message;
use trellis_model::authorization::{Action, Cidr, ConditionKey, Pattern};

use super::convert::ConvertError;
use crate::authz::Policies;
use crate::authz::policy::{Condition, Operation, Policy, Rule, Source, Values};

pub const HCM: &str = "envoy.filters.network.http_connection_manager";
pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";

struct At<'a> {
    name: &'a str,
    field: String,
}

impl At<'_> {
    fn at(&self, f: impl std::fmt::Display) -> At<'_> {
        At {
            name: self.name,
            field: if self.field.is_empty() {
                f.to_string()
            } else {
                format!("{}.{f}", self.field)
            },
        }
    }

    fn err(&self, reason: impl Into<String>) -> ConvertError {
        ConvertError {
            kind: "Listener",
            name: self.name.to_string(),
            field: self.field.clone(),
            reason: reason.into(),
        }
    }
}

/// The policies of the inbound listener's RBAC filters (none: no policy).
pub fn inbound(l: &Listener) -> Result<Policies, ConvertError> {
    let root = At {
        name: &l.name,
        field: String::new(),
    };
    let mut out = Policies::default();
    let mut http_actions = Vec::new();
    let mut network_actions = Vec::new();
    let chains = l
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("filter_chains[{i}]"), c))
        .chain(
            l.default_filter_chain
                .iter()
                .map(|c| ("default_filter_chain".to_string(), c)),
        );
    for (chain_at, chain) in chains {
        for (j, f) in chain.filters.iter().enumerate() {
            let at = root.at(format!("{chain_at}.filters[{j}]"));
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            if f.name == NETWORK_RBAC || any.type_url.ends_with("filters.network.rbac.v3.RBAC") {
                let n = NetworkRbac::decode(any.value.as_slice())
                    .map_err(|e| at.err(format!("does not decode: {e}")))?;
                let rules = n.rules.ok_or_else(|| {
                    at.at("rules")
                        .err("is required (the matcher API is not supported)")
                })?;
                network_actions.push(rules.action);
                continue;
            }
            if f.name != HCM && !any.type_url.ends_with(".HttpConnectionManager") {
                continue;
            }
            let hcm = HttpConnectionManager::decode(any.value.as_slice())
                .map_err(|e| at.err(format!("does not decode: {e}")))?;
            for (k, hf) in hcm.http_filters.iter().enumerate() {
                let at = at.at(format!("http_filters[{k}]"));
                let Some(http_filter::ConfigType::TypedConfig(any)) = &hf.config_type else {
                    continue;
                };
                if hf.name != HTTP_RBAC && !any.type_url.ends_with("filters.http.rbac.v3.RBAC") {
                    continue;
                }
                let h = HttpRbac::decode(any.value.as_slice())
                    .map_err(|e| at.err(format!("does not decode: {e}")))?;
                if h.matcher.is_some() || h.shadow_matcher.is_some() || h.shadow_rules.is_some() {
                    return Err(at.err(
                        "only `rules` is supported (not matcher, shadow_rules or shadow_matcher)",
                    ));
                }
                let rules = h.rules.ok_or_else(|| at.at("rules").err("is required"))?;
                http_actions.push(rules.action);
                add(&mut out, &rules, &at.at("rules"))?;
            }
        }
    }
    http_actions.sort_unstable();
    network_actions.sort_unstable();
    if http_actions != network_actions {
        return Err(root.err(
            "the network RBAC filters (TCP) must be for the same actions as the HTTP ones: \
             trellis-proxy decides TCP from the HTTP filters, with Istio's rule for HTTP-only fields",
        ));
    }
    Ok(out)
}

fn add(out: &mut Policies, rules: &Rbac, at: &At) -> Result<(), ConvertError> {
    let action = match rbac::Action::try_from(rules.action) {
        Ok(rbac::Action::Allow) => Action::Allow,
        Ok(rbac::Action::Deny) => Action::Deny,
        Ok(rbac::Action::Log) => Action::Audit,
        Err(_) => {
            return Err(at
                .at("action")
                .err(format!("unknown action {}", rules.action)));
        }
    };
    // Rules by (namespace, name), in index order.
    let mut by_policy: BTreeMap<(String, String), BTreeMap<usize, Rule>> = BTreeMap::new();
    for (key, p) in &rules.policies {
        let at = at.at(format!("policies[{key:?}]"));
        let (ns, name, i) = parse_name(key).ok_or_else(|| {
            at.err("the policy name must be ns[<namespace>]-policy[<name>]-rule[<index>]")
        })?;
        by_policy
            .entry((ns, name))
            .or_default()
            .insert(i, rule(p, &at)?);
    }
    let list = match action {
        Action::Allow => &mut out.allow,
        Action::Deny => &mut out.deny,
        _ => &mut out.audit,
    };
    for ((ns, name), rules) in by_policy {
        if rules.keys().enumerate().any(|(pos, i)| pos != *i) {
            return Err(at.err(format!(
                "the rules of {ns}/{name} must be numbered 0, 1, 2, ... without gaps"
            )));
        }
        list.push(Policy {
            name: Arc::from(format!("{ns}/{name}")),
            action,
            rules: rules.into_values().collect(),
        });
    }
    // An ALLOW filter denies what none of its policies allows, even with
    // no policy at all (an ALLOW policy without rules).
    if action == Action::Allow && out.allow.is_empty() {
        out.allow.push(Policy {
            name: Arc::from("(an ALLOW policy without rules)"),
            action,
            rules: Vec::new(),
        });
    }
    Ok(())
}

/// `ns[<ns>]-policy[<name>]-rule[<i>]`
fn parse_name(key: &str) -> Option<(String, String, usize)> {
    let rest = key.strip_prefix("ns[")?;
    let (ns, rest) = rest.split_once("]-policy[")?;
    let (name, rest) = rest.rsplit_once("]-rule[")?;
    let i = rest.strip_suffix(']')?.parse().ok()?;
    Some((ns.to_string(), name.to_string(), i))
}

fn rule(p: &EnvoyPolicy, at: &At) -> Result<Rule, ConvertError> {
    let shape = || {
        at.err(
            "expected permissions [and_rules: [<to>, <conditions>...]] and principals \
             [and_ids: [<from>, <conditions>...]] (the shape trellis-translate and Istio write)",
        )
    };
    if p.condition.is_some() || p.checked_condition.is_some() {
        return Err(at.at("condition").err("CEL conditions are not supported"));
    }
    let [
        Permission {
            rule: Some(permission::Rule::AndRules(perms)),
        },
    ] = p.permissions.as_slice()
    else {
        return Err(shape());
    };
    let [
        Principal {
            identifier: Some(principal::Identifier::AndIds(ids)),
        },
    ] = p.principals.as_slice()
    else {
        return Err(shape());
    };
    let (Some(to), Some(from)) = (perms.rules.first(), ids.ids.first()) else {
        return Err(shape());
    };
    let mut r = Rule::default();
    let at_to = at.at("permissions[0].and_rules.rules[0]");
    match &to.rule {
        Some(permission::Rule::Any(true)) => {}
        Some(permission::Rule::OrRules(ops)) => {
            for (i, op) in ops.rules.iter().enumerate() {
                r.to.push(operation(op, &at_to.at(format!("or_rules.rules[{i}]")))?);
            }
        }
        _ => return Err(at_to.err("expected any or or_rules (the rule's to entries)")),
    }
    let at_from = at.at("principals[0].and_ids.ids[0]");
    match &from.identifier {
        Some(principal::Identifier::Any(true)) => {}
        Some(principal::Identifier::OrIds(sources)) => {
            for (i, s) in sources.ids.iter().enumerate() {
                r.from
                    .push(source(s, &at_from.at(format!("or_ids.ids[{i}]")))?);
            }
        }
        _ => return Err(at_from.err("expected any or or_ids (the rule's from entries)")),
    }
    for (i, c) in perms.rules.iter().enumerate().skip(1) {
        r.when.push(port_condition(
            c,
            &at.at(format!("permissions[0].and_rules.rules[{i}]")),
        )?);
    }
    for (i, c) in ids.ids.iter().enumerate().skip(1) {
        r.when.push(principal_condition(
            c,
            &at.at(format!("principals[0].and_ids.ids[{i}]")),
        )?);
    }
    r.http_only = r.to.iter().any(Operation::http_only) || r.when.iter().any(|c| c.key.http_only());
    Ok(r)
}

/// A field of an operation or source: the OR of its values, maybe negated.
fn perm_field(p: &Permission) -> Option<(bool, &[Permission])> {
    match &p.rule {
        Some(permission::Rule::OrRules(set)) => Some((false, &set.rules)),
        Some(permission::Rule::NotRule(inner)) => match &inner.rule {
            Some(permission::Rule::OrRules(set)) => Some((true, &set.rules)),
            _ => None,
        },
        _ => None,
    }
}

fn id_field(p: &Principal) -> Option<(bool, &[Principal])> {
    match &p.identifier {
        Some(principal::Identifier::OrIds(set)) => Some((false, &set.ids)),
        Some(principal::Identifier::NotId(inner)) => match &inner.identifier {
            Some(principal::Identifier::OrIds(set)) => Some((true, &set.ids)),
            _ => None,
        },
        _ => None,
    }
}

/// One value of an operation field, and which field it belongs to.
enum OpLeaf {
    Port(u16),
    Host(Pattern),
    Method(Pattern),
    Path(Pattern),
}

fn op_leaf(p: &Permission, at: &At) -> Result<OpLeaf, ConvertError> {
    match &p.rule {
        Some(permission::Rule::DestinationPort(n)) => u16::try_from(*n)
            .ok()
            .filter(|n| *n != 0)
            .map(OpLeaf::Port)
            .ok_or_else(|| at.err(format!("port {n} is not 1-65535"))),
        Some(permission::Rule::Header(h)) if h.name == ":authority" || h.name == "host" => {
            Ok(OpLeaf::Host(header_pattern(h, true, at)?))
        }
        Some(permission::Rule::Header(h)) if h.name == ":method" => {
            Ok(OpLeaf::Method(header_pattern(h, false, at)?))
        }
        Some(permission::Rule::UrlPath(pm)) => match &pm.rule {
            Some(path_matcher::Rule::Path(sm)) => Ok(OpLeaf::Path(pattern(sm, false, at)?)),
            None => Err(at.err("url_path needs a path matcher")),
        },
        _ => Err(at.err(
            "only destination_port, url_path and the :authority and :method headers are supported in to.operation",
        )),
    }
}

fn operation(p: &Permission, at: &At) -> Result<Operation, ConvertError> {
    let Some(permission::Rule::AndRules(fields)) = &p.rule else {
        return Err(at.err("expected and_rules (the operation's fields)"));
    };
    let mut op = Operation::default();
    let mut seen = Vec::new();
    for (i, f) in fields.rules.iter().enumerate() {
        let at = at.at(format!("and_rules.rules[{i}]"));
        let (not, leaves) = perm_field(f)
            .ok_or_else(|| at.err("expected or_rules, or not_rule of or_rules (one field)"))?;
        let mut kind = None;
        for (k, leaf) in leaves.iter().enumerate() {
            let at = at.at(format!("rules[{k}]"));
            let leaf = op_leaf(leaf, &at)?;
            let this = std::mem::discriminant(&leaf);
            if kind.is_some_and(|k| k != this) {
                return Err(at.err("one field's values must all be of one kind"));
            }
            kind = Some(this);
            match (leaf, not) {
                (OpLeaf::Port(v), false) => op.ports.push(v),
                (OpLeaf::Port(v), true) => op.not_ports.push(v),
                (OpLeaf::Host(v), false) => op.hosts.push(v),
                (OpLeaf::Host(v), true) => op.not_hosts.push(v),
                (OpLeaf::Method(v), false) => op.methods.push(v),
                (OpLeaf::Method(v), true) => op.not_methods.push(v),
                (OpLeaf::Path(v), false) => op.paths.push(v),
                (OpLeaf::Path(v), true) => op.not_paths.push(v),
            }
        }
        if let Some(k) = kind {
            if seen.contains(&(k, not)) {
                return Err(at.err("a field may appear once per operation"));
            }
            seen.push((k, not));
        }
    }
    Ok(op)
}

enum IdLeaf {
    Principal(Pattern),
    Namespace(Pattern),
    Ip(Cidr),
    Header(String, Pattern),
}

fn id_leaf(p: &Principal, at: &At) -> Result<IdLeaf, ConvertError> {
    match &p.identifier {
        Some(principal::Identifier::Authenticated(a)) => {
            let sm = a
                .principal_name
                .as_ref()
                .ok_or_else(|| at.err("authenticated needs principal_name"))?;
            if let Some(MatchPattern::SafeRegex(r)) = &sm.match_pattern
                && let Some(ns) = namespace_regex(&r.regex)
            {
                return Ok(IdLeaf::Namespace(ns));
            }
            let p = pattern(sm, false, at)?;
            let p = match p {
                Pattern::Exact(v) => Pattern::Exact(strip_scheme(v, at)?),
                Pattern::Prefix(v) => Pattern::Prefix(strip_scheme(v, at)?),
                other => other,
            };
            Ok(IdLeaf::Principal(p))
        }
        Some(principal::Identifier::DirectRemoteIp(c)) => {
            let addr: IpAddr = c
                .address_prefix
                .parse()
                .map_err(|_| at.err(format!("{:?} is not an IP address", c.address_prefix)))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len = c.prefix_len.as_ref().map_or(max, |l| l.value);
            let len = u8::try_from(len)
                .ok()
                .filter(|l| u32::from(*l) <= max)
                .ok_or_else(|| at.err(format!("prefix_len {len} is too long")))?;
            Ok(IdLeaf::Ip(Cidr { addr, len }))
        }
        Some(principal::Identifier::Header(h)) => Ok(IdLeaf::Header(
            h.name.to_ascii_lowercase(),
            header_pattern(h, false, at)?,
        )),
        _ => Err(at.err(
            "only authenticated (principals, namespaces), direct_remote_ip and header are supported",
        )),
    }
}

fn strip_scheme(v: String, at: &At) -> Result<String, ConvertError> {
    v.strip_prefix("spiffe://")
        .map(str::to_string)
        .ok_or_else(|| at.err(format!("principal {v:?} is not a spiffe:// ID")))
}

/// `.*/ns/<ns>/.*` as translate writes namespaces: the pattern back.
fn namespace_regex(regex: &str) -> Option<Pattern> {
    let inner = regex.strip_prefix(".*/ns/")?.strip_suffix("/.*")?;
    let unescape = |s: &str| -> Option<String> {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?),
                '[' | ']' | '*' | '+' | '.' | '?' | '(' | ')' | '|' | '^' | '$' | '{' | '}' => {
                    return None;
                }
                c => out.push(c),
            }
        }
        Some(out)
    };
    if inner == "[^/]+" {
        return Some(Pattern::Present);
    }
    if let Some(p) = inner.strip_suffix("[^/]*") {
        return unescape(p).map(Pattern::Prefix);
    }
    if let Some(s) = inner.strip_prefix("[^/]*") {
        return unescape(s).map(Pattern::Suffix);
    }
    unescape(inner).map(Pattern::Exact)
}

fn source(p: &Principal, at: &At) -> Result<Source, ConvertError> {
    let Some(principal::Identifier::AndIds(fields)) = &p.identifier else {
        return Err(at.err("expected and_ids (the source's fields)"));
    };
    let mut s = Source::default();
    for (i, f) in fields.ids.iter().enumerate() {
        let at = at.at(format!("and_ids.ids[{i}]"));
        let (not, leaves) = id_field(f)
            .ok_or_else(|| at.err("expected or_ids, or not_id of or_ids (one field)"))?;
        for (k, leaf) in leaves.iter().enumerate() {
            let at = at.at(format!("ids[{k}]"));
            match (id_leaf(leaf, &at)?, not) {
                (IdLeaf::Principal(v), false) => s.principals.push(v),
                (IdLeaf::Principal(v), true) => s.not_principals.push(v),
                (IdLeaf::Namespace(v), false) => s.namespaces.push(v),
                (IdLeaf::Namespace(v), true) => s.not_namespaces.push(v),
                (IdLeaf::Ip(v), false) => s.ip_blocks.push(v),
                (IdLeaf::Ip(v), true) => s.not_ip_blocks.push(v),
                (IdLeaf::Header(..), _) => {
                    return Err(at.err("headers are conditions (when), not source fields"));
                }
            }
        }
    }
    Ok(s)
}

fn port_condition(p: &Permission, at: &At) -> Result<Condition, ConvertError> {
    let Some(permission::Rule::AndRules(parts)) = &p.rule else {
        return Err(at.err("expected and_rules (a destination.port condition)"));
    };
    let (mut values, mut not_values) = (Vec::new(), Vec::new());
    for (i, part) in parts.rules.iter().enumerate() {
        let at = at.at(format!("and_rules.rules[{i}]"));
        let (not, leaves) =
            perm_field(part).ok_or_else(|| at.err("expected or_rules or not_rule"))?;
        for leaf in leaves {
            let OpLeaf::Port(port) = op_leaf(leaf, &at)? else {
                return Err(at.err("only destination_port conditions are supported here"));
            };
            if not { &mut not_values } else { &mut values }.push(port);
        }
    }
    Ok(Condition {
        key: ConditionKey::DestinationPort,
        values: Values::Ports(values),
        not_values: Values::Ports(not_values),
    })
}

fn principal_condition(p: &Principal, at: &At) -> Result<Condition, ConvertError> {
    let Some(principal::Identifier::AndIds(parts)) = &p.identifier else {
        return Err(at.err("expected and_ids (a condition)"));
    };
    let mut key: Option<ConditionKey> = None;
    let (mut values, mut not_values) = (Vec::new(), Vec::new());
    for (i, part) in parts.ids.iter().enumerate() {
        let at = at.at(format!("and_ids.ids[{i}]"));
        let (not, leaves) = id_field(part).ok_or_else(|| at.err("expected or_ids or not_id"))?;
        for leaf in leaves {
            let leaf = id_leaf(leaf, &at)?;
            let k = match &leaf {
                IdLeaf::Principal(_) => ConditionKey::SourcePrincipal,
                IdLeaf::Namespace(_) => ConditionKey::SourceNamespace,
                IdLeaf::Ip(_) => ConditionKey::SourceIp,
                IdLeaf::Header(name, _) => ConditionKey::RequestHeader(name.clone()),
            };
            if key.as_ref().is_some_and(|old| *old != k) {
                return Err(at.err("one condition's values must all be for one key"));
            }
            key = Some(k);
            if not { &mut not_values } else { &mut values }.push(leaf);
        }
    }
    let key = key.ok_or_else(|| at.err("a condition needs values"))?;
    let typed = |leaves: Vec<IdLeaf>| -> Values {
        if key == ConditionKey::SourceIp {
            Values::Cidrs(
                leaves
                    .into_iter()
                    .filter_map(|l| match l {
                        IdLeaf::Ip(c) => Some(c),
                        _ => None,
                    })
                    .collect(),
            )
        } else {
            Values::Patterns(
                leaves
                    .into_iter()
                    .filter_map(|l| match l {
                        IdLeaf::Principal(p) | IdLeaf::Namespace(p) | IdLeaf::Header(_, p) => {
                            Some(p)
                        }
                        IdLeaf::Ip(_) => None,
                    })
                    .collect(),
            )
        }
    };
    Ok(Condition {
        values: typed(values),
        not_values: typed(not_values),
        key,
    })
}

fn header_pattern(h: &HeaderMatcher, ignore_case: bool, at: &At) -> Result<Pattern, ConvertError> {
    if h.invert_match {
        return Err(at.err("invert_match is not supported (use not_rule / not_id)"));
    }
    match &h.header_match_specifier {
        Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true)) => Ok(Pattern::Present),
        Some(header_matcher::HeaderMatchSpecifier::StringMatch(sm)) => pattern(sm, ignore_case, at),
        _ => Err(at.err("only string_match and present_match headers are supported")),
    }
}

/// Istio's forms: exact, prefix, suffix, and `.+` (present).
fn pattern(sm: &StringMatcher, ignore_case: bool, at: &At) -> Result<Pattern, ConvertError> {
    if sm.ignore_case != ignore_case {
        return Err(at.err(if ignore_case {
            "hosts are matched ignoring case (ignore_case: true)"
        } else {
            "ignore_case is supported for hosts only"
        }));
    }
    match &sm.match_pattern {
        Some(MatchPattern::Exact(v)) => Ok(Pattern::Exact(v.clone())),
        Some(MatchPattern::Prefix(v)) => Ok(Pattern::Prefix(v.clone())),
        Some(MatchPattern::Suffix(v)) => Ok(Pattern::Suffix(v.clone())),
        Some(MatchPattern::SafeRegex(r)) if r.regex == ".+" => Ok(Pattern::Present),
        _ => {
            Err(at.err("only exact, prefix, suffix and the \".+\" regex (any value) are supported"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    use envoy_types::pb::envoy::r#type::matcher::v3::{PathMatcher, StringMatcher};
    use trellis_model::{ResourceSet, parse_documents};

    /// The inbound listener trellis-translate makes for these policies (all
    /// of namespace `default`).
    fn listener(yaml: &str) -> Listener {
        let set: ResourceSet = parse_documents("t.yaml", yaml)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .collect();
        let v = trellis_model::validate::validate(&set).unwrap_or_else(|e| panic!("{e}"));
        let all: Vec<_> = v.authorization_policies.iter().collect();
        trellis_translate::listener::inbound(
            "127.0.0.1:15006".parse().unwrap(),
            &trellis_translate::rbac::inbound(&all),
            &trellis_translate::listener::InboundTls::PLAINTEXT,
        )
    }

    const ONE: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {rules: [{from: [{source: {principals: [td/ns/a/sa/b]}}], to: [{operation: {paths: [/x]}}]}]}\n";

    /// Change the first HTTP RBAC filter of `l`.
    fn edit(mut l: Listener, f: impl FnOnce(&mut HttpRbac)) -> Listener {
        let Some(filter::ConfigType::TypedConfig(any)) =
            &mut l.filter_chains[0].filters[0].config_type
        else {
            panic!("no HCM");
        };
        let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        let Some(http_filter::ConfigType::TypedConfig(rbac_any)) =
            &mut hcm.http_filters[0].config_type
        else {
            panic!("no RBAC");
        };
        let mut rbac = HttpRbac::decode(rbac_any.value.as_slice()).unwrap();
        f(&mut rbac);
        rbac_any.value = rbac.encode_to_vec();
        any.value = hcm.encode_to_vec();
        l
    }

    fn first_policy(r: &mut HttpRbac) -> &mut EnvoyPolicy {
        r.rules
            .as_mut()
            .unwrap()
            .policies
            .values_mut()
            .next()
            .unwrap()
    }

    /// The path leaf of the rule in [`ONE`].
    fn path_leaf(r: &mut HttpRbac) -> &mut PathMatcher {
        let p = first_policy(r);
        let Some(permission::Rule::AndRules(and)) = &mut p.permissions[0].rule else {
            panic!()
        };
        let Some(permission::Rule::OrRules(ops)) = &mut and.rules[0].rule else {
            panic!()
        };
        let Some(permission::Rule::AndRules(fields)) = &mut ops.rules[0].rule else {
            panic!()
        };
        let Some(permission::Rule::OrRules(values)) = &mut fields.rules[0].rule else {
            panic!()
        };
        let Some(permission::Rule::UrlPath(pm)) = &mut values.rules[0].rule else {
            panic!()
        };
        pm
    }

    fn principal_leaf(r: &mut HttpRbac) -> &mut StringMatcher {
        let p = first_policy(r);
        let Some(principal::Identifier::AndIds(and)) = &mut p.principals[0].identifier else {
            panic!()
        };
        let Some(principal::Identifier::OrIds(sources)) = &mut and.ids[0].identifier else {
            panic!()
        };
        let Some(principal::Identifier::AndIds(fields)) = &mut sources.ids[0].identifier else {
            panic!()
        };
        let Some(principal::Identifier::OrIds(values)) = &mut fields.ids[0].identifier else {
            panic!()
        };
        let Some(principal::Identifier::Authenticated(a)) = &mut values.ids[0].identifier else {
            panic!()
        };
        a.principal_name.as_mut().unwrap()
    }

    #[test]
    fn what_the_engine_cannot_express_is_refused() {
        type Edit = Box<dyn FnOnce(&mut HttpRbac)>;
        let cases: Vec<(&str, Edit, &str)> = vec![
            (
                "the matcher API",
                Box::new(|r| r.matcher = Some(Default::default())),
                "only `rules` is supported",
            ),
            (
                "a CEL condition",
                Box::new(|r| first_policy(r).condition = Some(Default::default())),
                "CEL conditions are not supported",
            ),
            (
                "a policy name not Istio's",
                Box::new(|r| {
                    let rules = r.rules.as_mut().unwrap();
                    let p = rules.policies.drain().next().unwrap().1;
                    rules.policies.insert("my-policy".into(), p);
                }),
                "ns[<namespace>]-policy[<name>]-rule[<index>]",
            ),
            (
                "a path matched ignoring case",
                Box::new(|r| {
                    if let Some(path_matcher::Rule::Path(sm)) = &mut path_leaf(r).rule {
                        sm.ignore_case = true;
                    }
                }),
                "ignore_case is supported for hosts only",
            ),
            (
                "a path regex",
                Box::new(|r| {
                    path_leaf(r).rule = Some(path_matcher::Rule::Path(StringMatcher {
                        match_pattern: Some(MatchPattern::SafeRegex(Default::default())),
                        ignore_case: false,
                    }))
                }),
                "only exact, prefix, suffix",
            ),
            (
                "a principal that is not a SPIFFE ID",
                Box::new(|r| {
                    principal_leaf(r).match_pattern = Some(MatchPattern::Exact("bob".into()))
                }),
                "is not a spiffe:// ID",
            ),
            (
                "a permission kind the engine lacks",
                Box::new(|r| {
                    first_policy(r).permissions = vec![Permission {
                        rule: Some(permission::Rule::AndRules(permission::Set {
                            rules: vec![Permission {
                                rule: Some(permission::Rule::Matcher(
                                    TypedExtensionConfig::default(),
                                )),
                            }],
                        })),
                    }]
                }),
                "expected any or or_rules",
            ),
        ];
        for (what, change, want) in cases {
            let l = edit(listener(ONE), change);
            let err = inbound(&l).expect_err(what);
            assert!(err.to_string().contains(want), "{what}: {err}");
            assert!(
                err.to_string().starts_with("Listener inbound: "),
                "{what}: {err}"
            );
        }
        // The unchanged listener converts.
        assert_eq!(inbound(&listener(ONE)).unwrap().allow.len(), 1);
    }

    #[test]
    fn network_filters_must_match_the_http_ones() {
        let mut l = listener(ONE);
        l.default_filter_chain
            .as_mut()
            .unwrap()
            .filters
            .retain(|f| f.name != NETWORK_RBAC);
        let err = inbound(&l).unwrap_err();
        assert!(err.to_string().contains("same actions"), "{err}");
    }

    #[test]
    fn namespace_regexes_read_back() {
        let cases = [
            (".*/ns/front/.*", Some(Pattern::Exact("front".into()))),
            (
                ".*/ns/kube\\-[^/]*/.*",
                Some(Pattern::Prefix("kube-".into())),
            ),
            (".*/ns/[^/]*prod/.*", Some(Pattern::Suffix("prod".into()))),
            (".*/ns/[^/]+/.*", Some(Pattern::Present)),
            (".*/ns/a.b/.*", None),
            ("spiffe://x", None),
        ];
        for (re, want) in cases {
            assert_eq!(namespace_regex(re), want, "{re}");
        }
    }
}
