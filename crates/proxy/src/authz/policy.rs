//! AuthorizationPolicies compiled for one workload: the ones that apply to
//! it (namespace and labels), with every value parsed once (patterns, CIDRs,
//! ports, `when` keys), split by action so `decide` walks plain vectors.

use std::collections::BTreeMap;
use std::sync::Arc;

use trellis_model::authorization::{
    self as m, Action, AuthorizationPolicySpec, Cidr, ConditionKey, Pattern, parse_port,
};
use trellis_model::resource::Object;
use trellis_model::{ConfigError, ConfigErrors};

/// The policies that apply to this proxy's workload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies {
    pub deny: Vec<Policy>,
    pub allow: Vec<Policy>,
    pub audit: Vec<Policy>,
}

impl Policies {
    /// No policy applies: every request is allowed and nothing is audited,
    /// so the request path skips authorization entirely.
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty() && self.audit.is_empty()
    }

    /// The policies of `all` that apply to a workload in `namespace` with
    /// `labels`, compiled. `all` is validated config, so an error here is a
    /// value validation let through; it is reported, never skipped (a
    /// skipped DENY rule would let traffic in).
    pub fn compile(
        all: &[Object<AuthorizationPolicySpec>],
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Policies, ConfigErrors> {
        let mut out = Policies::default();
        let mut errors = ConfigErrors::default();
        for p in all.iter().filter(|p| m::applies(p, namespace, labels)) {
            match Policy::compile(p) {
                Ok(compiled) => match compiled.action {
                    Action::Deny => out.deny.push(compiled),
                    Action::Allow => out.allow.push(compiled),
                    Action::Audit => out.audit.push(compiled),
                    Action::Custom => errors.push(ConfigError::new(
                        &p.source,
                        format!("AuthorizationPolicy {}", p.key()),
                        "spec.action",
                        "CUSTOM is not supported",
                    )),
                },
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `namespace/name`, shared with every decision and audit line naming it.
    pub name: Arc<str>,
    pub action: Action,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
    /// Uses a field only HTTP requests have (hosts, methods, paths,
    /// request headers): as an ALLOW rule it never matches TCP.
    pub http_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    pub principals: Vec<Pattern>,
    pub not_principals: Vec<Pattern>,
    pub namespaces: Vec<Pattern>,
    pub not_namespaces: Vec<Pattern>,
    pub ip_blocks: Vec<Cidr>,
    pub not_ip_blocks: Vec<Cidr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Operation {
    pub hosts: Vec<Pattern>,
    pub not_hosts: Vec<Pattern>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    pub methods: Vec<Pattern>,
    pub not_methods: Vec<Pattern>,
    pub paths: Vec<Pattern>,
    pub not_paths: Vec<Pattern>,
}

impl Operation {
    /// Uses a field only HTTP requests have.
    pub fn http_only(&self) -> bool {
        [
            &self.hosts,
            &self.not_hosts,
            &self.methods,
            &self.not_methods,
            &self.paths,
            &self.not_paths,
        ]
        .iter()
        .any(|v| !v.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub key: ConditionKey,
    pub values: Values,
    pub not_values: Values,
}

/// A condition's values, typed by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Values {
    Patterns(Vec<Pattern>),
    Cidrs(Vec<Cidr>),
    Ports(Vec<u16>),
}

impl Values {
    pub fn is_empty(&self) -> bool {
        match self {
            Values::Patterns(v) => v.is_empty(),
            Values::Cidrs(v) => v.is_empty(),
            Values::Ports(v) => v.is_empty(),
        }
    }
}

impl Policy {
    pub fn compile(p: &Object<AuthorizationPolicySpec>) -> Result<Policy, ConfigError> {
        let err = |field: String, reason: String| {
            ConfigError::new(
                &p.source,
                format!("AuthorizationPolicy {}", p.key()),
                field,
                reason,
            )
        };
        let patterns = |vs: &[String], at: &str| -> Result<Vec<Pattern>, ConfigError> {
            vs.iter()
                .enumerate()
                .map(|(i, v)| Pattern::parse(v).map_err(|r| err(format!("{at}[{i}]"), r)))
                .collect()
        };
        let cidrs = |vs: &[String], at: &str| -> Result<Vec<Cidr>, ConfigError> {
            vs.iter()
                .enumerate()
                .map(|(i, v)| Cidr::parse(v).map_err(|r| err(format!("{at}[{i}]"), r)))
                .collect()
        };
        let ports = |vs: &[String], at: &str| -> Result<Vec<u16>, ConfigError> {
            vs.iter()
                .enumerate()
                .map(|(i, v)| parse_port(v).map_err(|r| err(format!("{at}[{i}]"), r)))
                .collect()
        };
        let mut rules = Vec::with_capacity(p.spec.rules.len());
        for (i, r) in p.spec.rules.iter().enumerate() {
            let at = format!("spec.rules[{i}]");
            let mut rule = Rule::default();
            for (j, f) in r.from.iter().enumerate() {
                let at = format!("{at}.from[{j}].source");
                let Some(s) = &f.source else {
                    return Err(err(at, "is required".into()));
                };
                rule.from.push(Source {
                    principals: patterns(&s.principals, &format!("{at}.principals"))?,
                    not_principals: patterns(&s.not_principals, &format!("{at}.notPrincipals"))?,
                    namespaces: patterns(&s.namespaces, &format!("{at}.namespaces"))?,
                    not_namespaces: patterns(&s.not_namespaces, &format!("{at}.notNamespaces"))?,
                    ip_blocks: cidrs(&s.ip_blocks, &format!("{at}.ipBlocks"))?,
                    not_ip_blocks: cidrs(&s.not_ip_blocks, &format!("{at}.notIpBlocks"))?,
                });
            }
            for (j, t) in r.to.iter().enumerate() {
                let at = format!("{at}.to[{j}].operation");
                let Some(o) = &t.operation else {
                    return Err(err(at, "is required".into()));
                };
                let op = Operation {
                    hosts: patterns(&o.hosts, &format!("{at}.hosts"))?,
                    not_hosts: patterns(&o.not_hosts, &format!("{at}.notHosts"))?,
                    ports: ports(&o.ports, &format!("{at}.ports"))?,
                    not_ports: ports(&o.not_ports, &format!("{at}.notPorts"))?,
                    methods: patterns(&o.methods, &format!("{at}.methods"))?,
                    not_methods: patterns(&o.not_methods, &format!("{at}.notMethods"))?,
                    paths: patterns(&o.paths, &format!("{at}.paths"))?,
                    not_paths: patterns(&o.not_paths, &format!("{at}.notPaths"))?,
                };
                rule.http_only |= op.http_only();
                rule.to.push(op);
            }
            for (j, c) in r.when.iter().enumerate() {
                let at = format!("{at}.when[{j}]");
                let key = ConditionKey::parse(&c.key).map_err(|r| err(format!("{at}.key"), r))?;
                let typed = |vs: &[String], at: String| -> Result<Values, ConfigError> {
                    Ok(match key {
                        ConditionKey::SourceIp => Values::Cidrs(cidrs(vs, &at)?),
                        ConditionKey::DestinationPort => Values::Ports(ports(vs, &at)?),
                        _ => Values::Patterns(patterns(vs, &at)?),
                    })
                };
                let values = typed(&c.values, format!("{at}.values"))?;
                let not_values = typed(&c.not_values, format!("{at}.notValues"))?;
                rule.http_only |= key.http_only();
                rule.when.push(Condition {
                    key,
                    values,
                    not_values,
                });
            }
            rules.push(rule);
        }
        Ok(Policy {
            name: Arc::from(p.key()),
            action: p.spec.action,
            rules,
        })
    }
}
