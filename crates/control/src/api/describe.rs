//! `GET /api/v1/services/{namespace}/{name}` (`trellis describe service`):
//! one service as an operator debugging it needs it: where it is defined,
//! its endpoints with their workload and health, and every policy that
//! applies to it or to its workloads. [`service`] is a plain function over
//! the validated config and the registered workloads; the handler adds which
//! proxies hold each policy ([`super::proxies::holding`]).

use std::collections::BTreeMap;

use serde::Serialize;
use trellis_model::resource::{Kind, Object};
use trellis_model::validate::{Port, Service, Validated};
use trellis_model::{authorization, peer_authentication, sidecar};
use trellis_translate::Workload;

use crate::store::{Key, ProxyRef};

/// A registered workload and the node id of its proxy.
#[derive(Debug, Clone)]
pub struct Member<'a> {
    pub node: &'a str,
    pub workload: &'a Workload,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescribeError {
    #[error(
        "no service {host} (from {name:?} in namespace {namespace}); services in {namespace}: {}",
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    )]
    NotFound {
        name: String,
        namespace: String,
        host: String,
        known: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub host: String,
    pub namespace: String,
    /// The ServiceEntry that defines it.
    pub service_entry: Ref,
    pub resolution: String,
    pub ports: Vec<PortView>,
    pub workload_selector: Option<BTreeMap<String, String>>,
    pub endpoints: Vec<EndpointView>,
    pub policies: Vec<PolicyView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ref {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl Ref {
    pub fn key(&self) -> Key {
        Key::new(self.kind, &self.namespace, &self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortView {
    pub number: u16,
    pub name: String,
    pub protocol: String,
    pub target_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    pub address: String,
    /// The service port (its name) and the endpoint's port for it.
    pub port_name: String,
    pub port: u16,
    /// `serviceEntry` (listed in the ServiceEntry) or `workload` (selected
    /// from the registry).
    pub source: &'static str,
    pub workload: Option<String>,
    /// The xDS node id of the workload's proxy.
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `healthy`, `unhealthy` (active health check), or `unknown` (no
    /// health check: ServiceEntry endpoints).
    pub health: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    #[serde(flatten)]
    pub resource: Ref,
    /// Why it applies, in a few words.
    pub why: String,
    /// Filled in by the handler: connected proxies that were sent it.
    pub proxies: Vec<ProxyRef>,
}

/// The service `name` (as a resource in `namespace` would write it: short,
/// `name.namespace` or a full host) as the control plane sees it.
pub fn service(
    v: &Validated,
    workloads: &[Member<'_>],
    namespace: &str,
    name: &str,
) -> Result<ServiceView, DescribeError> {
    let host = v.resolve(name, namespace);
    let Some(s) = v.services.get(&host) else {
        return Err(DescribeError::NotFound {
            name: name.to_string(),
            namespace: namespace.to_string(),
            host,
            known: v
                .services
                .values()
                .filter(|s| s.namespace == namespace)
                .map(|s| s.host.clone())
                .collect(),
        });
    };
    let mut selected: Vec<&Member<'_>> = match &s.workload_selector {
        Some(sel) => workloads
            .iter()
            .filter(|m| {
                m.workload.namespace == s.namespace
                    && sel
                        .iter()
                        .all(|(k, val)| m.workload.labels.get(k) == Some(val))
            })
            .collect(),
        None => Vec::new(),
    };
    // Registrations come in no particular order; operators scan by name.
    selected.sort_by(|a, b| (&a.workload.name, a.node).cmp(&(&b.workload.name, b.node)));
    let (entry_ns, entry_name) = s.entry.split_once('/').unwrap_or(("", &s.entry));
    Ok(ServiceView {
        host: s.host.clone(),
        namespace: s.namespace.clone(),
        service_entry: Ref {
            kind: Kind::ServiceEntry,
            namespace: entry_ns.to_string(),
            name: entry_name.to_string(),
        },
        resolution: serde_json::to_value(s.resolution)
            .ok()
            .and_then(|r| r.as_str().map(str::to_string))
            .unwrap_or_default(),
        ports: s
            .ports
            .iter()
            .map(|p| PortView {
                number: p.number,
                name: p.name.clone(),
                protocol: format!("{:?}", p.protocol).to_ascii_uppercase(),
                target_port: p.target_port,
            })
            .collect(),
        workload_selector: s.workload_selector.clone(),
        endpoints: endpoints(s, &selected),
        policies: policies(v, s, &selected),
    })
}

fn endpoints(s: &Service, selected: &[&Member<'_>]) -> Vec<EndpointView> {
    let mut out = Vec::new();
    for port in &s.ports {
        for ep in &s.endpoints {
            let own = ep
                .ports
                .get(&port.name)
                .and_then(|p| u16::try_from(*p).ok());
            out.push(EndpointView {
                address: ep.address.clone(),
                port_name: port.name.clone(),
                port: endpoint_port(own, port),
                source: "serviceEntry",
                workload: None,
                node: None,
                labels: ep.labels.clone(),
                health: "unknown",
            });
        }
        for m in selected {
            let w = m.workload;
            for ip in &w.addresses {
                out.push(EndpointView {
                    address: ip.to_string(),
                    port_name: port.name.clone(),
                    port: endpoint_port(w.ports.get(&port.name).copied(), port),
                    source: "workload",
                    workload: Some(w.name.clone()),
                    node: Some(m.node.to_string()),
                    labels: w.labels.clone(),
                    health: if w.healthy { "healthy" } else { "unhealthy" },
                });
            }
        }
    }
    out
}

/// translate's rule (`endpoint::service_endpoints`): the endpoint's own
/// port for the port's name, else `targetPort`, else the port's number.
fn endpoint_port(own: Option<u16>, port: &Port) -> u16 {
    own.or(port.target_port).unwrap_or(port.number)
}

fn r<S>(kind: Kind, o: &Object<S>) -> Ref {
    Ref {
        kind,
        namespace: o.metadata.namespace.clone(),
        name: o.metadata.name.clone(),
    }
}

fn policy(resource: Ref, why: String) -> PolicyView {
    PolicyView {
        resource,
        why,
        proxies: Vec::new(),
    }
}

/// Which workloads of `selected` a predicate holds for, as a phrase.
fn which(selected: &[&Member<'_>], holds: impl Fn(&Workload) -> bool) -> Option<String> {
    let names: Vec<&str> = selected
        .iter()
        .filter(|m| holds(m.workload))
        .map(|m| m.workload.name.as_str())
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

fn policies(v: &Validated, s: &Service, selected: &[&Member<'_>]) -> Vec<PolicyView> {
    let host = &s.host;
    let mut out = Vec::new();
    for (hosts, vs) in &v.virtual_services {
        let ns = &vs.metadata.namespace;
        let to_it = |d: &trellis_model::networking::Destination| v.resolve(&d.host, ns) == *host;
        let routes_to = vs.spec.http.iter().any(|h| {
            h.route.iter().any(|d| to_it(&d.destination))
                || h.mirror_policies().iter().any(|m| to_it(&m.destination))
        }) || vs
            .spec
            .tcp
            .iter()
            .any(|t| t.route.iter().any(|d| to_it(&d.destination)));
        let why = match (hosts.contains(host), routes_to) {
            (true, true) => "routes its host, to it",
            (true, false) => "routes its host, elsewhere",
            (false, true) => "routes to it",
            (false, false) => continue,
        };
        out.push(policy(r(Kind::VirtualService, vs), why.into()));
    }
    if let Some(dr) = v.destination_rules.get(host) {
        out.push(policy(
            r(Kind::DestinationRule, dr),
            "traffic policy and subsets for its host".into(),
        ));
    }
    if let Some(rb) = v.retry_budgets.get(host) {
        out.push(policy(
            r(Kind::RetryBudget, rb),
            "retry budget for its host".into(),
        ));
    }
    for (h, rl) in &v.rate_limits {
        if h == host {
            out.push(policy(
                r(Kind::RateLimitPolicy, rl),
                "rate limits for its host".into(),
            ));
        }
    }
    for p in &v.peer_authentications {
        if let Some(ws) = which(selected, |w| {
            peer_authentication::considered(p, &w.namespace, &w.labels)
        }) {
            out.push(policy(
                r(Kind::PeerAuthentication, p),
                format!("mTLS mode of workloads {ws}"),
            ));
        }
    }
    for p in &v.authorization_policies {
        if let Some(ws) = which(selected, |w| {
            authorization::applies(p, &w.namespace, &w.labels)
        }) {
            out.push(policy(
                r(Kind::AuthorizationPolicy, p),
                format!("authorizes requests to workloads {ws}"),
            ));
        }
    }
    for sc in &v.sidecars {
        let picked = |w: &Workload| {
            sidecar::select(&v.sidecars, &w.namespace, &w.labels).is_some_and(|x| {
                x.metadata.namespace == sc.metadata.namespace && x.metadata.name == sc.metadata.name
            })
        };
        if let Some(ws) = which(selected, picked) {
            out.push(policy(
                r(Kind::Sidecar, sc),
                format!("limits what workloads {ws} see"),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;
