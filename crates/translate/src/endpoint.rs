//! ClusterLoadAssignments: a cluster's endpoints grouped by locality, with
//! weights, health, and locality-failover priorities.
//!
//! Endpoints come from ServiceEntry `endpoints`, and from the registry's
//! workloads that its `workloadSelector` picks ([`workload_selector`],
//! [`workload_endpoints`]), merged by [`service_endpoints`].

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthStatus, Locality, SocketAddress, address, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, cluster_load_assignment,
    lb_endpoint::HostIdentifier,
};
use trellis_model::networking::{LocalityLbSetting, WorkloadEntry};
use trellis_model::validate::{Port, Service};

use crate::encode::u32v;
use crate::registry::Registry;

/// Envoy spills traffic to the next priority as soon as fewer than ~71% of
/// a priority's endpoints are healthy (its default overprovisioning factor
/// of 140%). trellis-proxy keeps all traffic on the best priority while it
/// has any healthy endpoint; a factor of 10000% (100×) comes close: the
/// priority keeps all traffic while at least 1% of it is healthy.
pub const OVERPROVISIONING_FACTOR: u32 = 10_000;

/// What an endpoint's health is known to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// Not checked (ServiceEntry endpoints): Envoy treats it as healthy.
    Unknown,
    Healthy,
    Unhealthy,
}

/// One endpoint of a service port, before it becomes Envoy's `LbEndpoint`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EndpointInfo {
    /// An IP address, or for DNS services a name Envoy resolves.
    pub address: String,
    pub port: u16,
    /// At least 1.
    pub weight: u32,
    /// Istio's `region/zone/subzone`, empty when unknown.
    pub locality: String,
    pub labels: BTreeMap<String, String>,
    pub health: Health,
    /// The workload's service account: who may serve it over mTLS.
    pub service_account: Option<String>,
}

/// Istio's `localityLbSetting` as priorities use it: enabled by default,
/// without failover, as in Istio and trellis-proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalityPolicy {
    pub enabled: bool,
    /// `(from region, to region)`.
    pub failover: Vec<(String, String)>,
}

impl Default for LocalityPolicy {
    fn default() -> Self {
        LocalityPolicy {
            enabled: true,
            failover: Vec::new(),
        }
    }
}

impl LocalityPolicy {
    pub fn from_setting(s: Option<&LocalityLbSetting>) -> Self {
        match s {
            None => LocalityPolicy::default(),
            Some(s) => LocalityPolicy {
                enabled: s.enabled.unwrap_or(true),
                failover: s
                    .failover
                    .iter()
                    .map(|f| (f.from.clone(), f.to.clone()))
                    .collect(),
            },
        }
    }
}

/// The port an endpoint serves a service port on: its own `ports` entry for
/// the port's name, else the port's `targetPort`, else the port's number
/// (trellis-proxy's and Istio's rule).
fn endpoint_port(own: Option<u16>, port: &Port) -> u16 {
    own.or(port.target_port).unwrap_or(port.number)
}

/// Istio's `workloadSelector` of a ServiceEntry: the registry's workloads
/// it selects join the service's endpoints.
pub fn workload_selector(service: &Service) -> Option<&BTreeMap<String, String>> {
    service.workload_selector.as_ref()
}

/// The endpoints of one port of a service: its ServiceEntry `endpoints`,
/// plus the registry's workloads its selector picks. A DNS service without
/// endpoints stands for its own host name.
pub fn service_endpoints(service: &Service, port: &Port, registry: &Registry) -> Vec<EndpointInfo> {
    let mut out: Vec<EndpointInfo> = service
        .endpoints
        .iter()
        .map(|ep| entry_endpoint(ep, port))
        .collect();
    if let Some(selector) = workload_selector(service) {
        out.extend(workload_endpoints(
            registry,
            &service.namespace,
            selector,
            port,
        ));
    }
    if out.is_empty() && service.resolution != trellis_model::networking::Resolution::Static {
        out.push(EndpointInfo {
            address: service.written_host.clone(),
            port: port.target_port.unwrap_or(port.number),
            weight: 1,
            locality: String::new(),
            labels: BTreeMap::new(),
            health: Health::Unknown,
            service_account: None,
        });
    }
    out
}

fn entry_endpoint(ep: &WorkloadEntry, port: &Port) -> EndpointInfo {
    let own = ep
        .ports
        .get(&port.name)
        .and_then(|p| u16::try_from(*p).ok());
    EndpointInfo {
        address: ep.address.clone(),
        port: endpoint_port(own, port),
        // 0 or unset means 1, as in trellis-proxy (Envoy needs at least 1).
        weight: ep.weight.filter(|w| *w > 0).unwrap_or(1),
        locality: ep.locality.clone().unwrap_or_default(),
        labels: ep.labels.clone(),
        health: Health::Unknown,
        service_account: ep.service_account.clone(),
    }
}

/// Endpoints for the workloads a selector in `namespace` picks: one per
/// workload address, with the workload's health from the registry.
pub fn workload_endpoints(
    registry: &Registry,
    namespace: &str,
    selector: &BTreeMap<String, String>,
    port: &Port,
) -> Vec<EndpointInfo> {
    registry
        .select(namespace, selector)
        .flat_map(|w| {
            let p = endpoint_port(w.ports.get(&port.name).copied(), port);
            w.addresses.iter().map(move |ip| EndpointInfo {
                address: ip.to_string(),
                port: p,
                weight: 1,
                locality: w.locality.clone().unwrap_or_default(),
                labels: w.labels.clone(),
                health: if w.healthy {
                    Health::Healthy
                } else {
                    Health::Unhealthy
                },
                service_account: (!w.service_account.is_empty()).then(|| w.service_account.clone()),
            })
        })
        .collect()
}

/// The endpoints a subset's labels select (all of them for the whole service).
pub fn in_subset<'e>(
    endpoints: &'e [EndpointInfo],
    labels: Option<&BTreeMap<String, String>>,
) -> Vec<&'e EndpointInfo> {
    endpoints
        .iter()
        .filter(|ep| labels.is_none_or(|l| l.iter().all(|(k, v)| ep.labels.get(k) == Some(v))))
        .collect()
}

/// `region/zone/subzone` split as Istio and trellis-proxy do: missing parts
/// are empty, parts after the third ignored.
pub fn parse_locality(s: &str) -> Locality {
    let mut parts = s.split('/');
    let mut next = || parts.next().unwrap_or_default().to_string();
    Locality {
        region: next(),
        zone: next(),
        sub_zone: next(),
    }
}

fn locality_is_empty(l: &Locality) -> bool {
    l.region.is_empty() && l.zone.is_empty() && l.sub_zone.is_empty()
}

/// trellis-proxy's locality priority of an endpoint for a proxy at `local`:
/// 0 same subzone, 1 same zone, 2 same region, 3 a `failover` target of the
/// proxy's region, 4 anywhere else; everything is 0 when locality load
/// balancing is off or the proxy's locality is unknown.
pub fn priority(local: &Locality, endpoint: &Locality, policy: &LocalityPolicy) -> u8 {
    if !policy.enabled || locality_is_empty(local) {
        return 0;
    }
    if endpoint.region == local.region {
        if endpoint.zone != local.zone {
            2
        } else if endpoint.sub_zone != local.sub_zone {
            1
        } else {
            0
        }
    } else if policy
        .failover
        .iter()
        .any(|(from, to)| *from == local.region && *to == endpoint.region)
    {
        3
    } else {
        4
    }
}

/// Does the assignment depend on where the proxy is? Only when locality
/// load balancing is on and the endpoints are not all in one locality.
pub fn locality_sensitive(endpoints: &[&EndpointInfo], policy: &LocalityPolicy) -> bool {
    policy.enabled
        && endpoints
            .iter()
            .any(|e| endpoints.first().is_some_and(|f| f.locality != e.locality))
}

fn lb_endpoint(ep: &EndpointInfo) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(socket_address(&ep.address, ep.port)),
            ..Default::default()
        })),
        health_status: match ep.health {
            Health::Unknown => HealthStatus::Unknown,
            Health::Healthy => HealthStatus::Healthy,
            Health::Unhealthy => HealthStatus::Unhealthy,
        } as i32,
        load_balancing_weight: Some(u32v(ep.weight)),
        metadata: crate::tls::endpoint_metadata(&ep.labels),
    }
}

pub(crate) fn socket_address(address: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// The assignment of `cluster_name` as a proxy at `local` sees it:
/// endpoints grouped by (priority, locality), priorities numbered from 0
/// without gaps (Envoy requires that), in a stable order.
pub fn load_assignment(
    cluster_name: &str,
    endpoints: &[&EndpointInfo],
    local: Option<&str>,
    policy: &LocalityPolicy,
) -> ClusterLoadAssignment {
    let local = parse_locality(local.unwrap_or_default());
    // (priority, locality) -> endpoints, in sorted order.
    let mut groups: BTreeMap<(u8, String), Vec<&EndpointInfo>> = BTreeMap::new();
    for ep in endpoints {
        let p = priority(&local, &parse_locality(&ep.locality), policy);
        groups.entry((p, ep.locality.clone())).or_default().push(ep);
    }
    let mut levels: Vec<u8> = groups.keys().map(|(p, _)| *p).collect();
    levels.dedup();
    let compact = |p: u8| levels.iter().position(|l| *l == p).unwrap_or(0) as u32;
    let localities = groups
        .into_iter()
        .map(|((p, locality), eps)| LocalityLbEndpoints {
            // Always present, empty when unknown: gRPC rejects a group
            // without one.
            locality: Some(parse_locality(&locality)),
            // Envoy ignores locality weights unless the cluster enables
            // locality-weighted balancing; gRPC clients skip a locality
            // without one. The sum keeps endpoint weights meaningful across
            // localities.
            load_balancing_weight: Some(u32v(
                eps.iter()
                    .map(|e| e.weight.max(1))
                    .fold(0u32, u32::saturating_add),
            )),
            lb_endpoints: eps.into_iter().map(lb_endpoint).collect(),
            priority: compact(p),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_string(),
        endpoints: localities,
        policy: (levels.len() > 1).then(|| cluster_load_assignment::Policy {
            overprovisioning_factor: Some(u32v(OVERPROVISIONING_FACTOR)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_table_matches_the_proxy() {
        let policy = LocalityPolicy {
            enabled: true,
            failover: vec![
                ("us-east".into(), "us-west".into()),
                ("eu-west".into(), "eu-central".into()),
            ],
        };
        let cases = [
            ("us-east/a/r1", "us-east/a/r1", 0),
            ("us-east/a/r1", "us-east/a/r2", 1),
            ("us-east/a/r1", "us-east/a", 1),
            ("us-east/a/r1", "us-east/b/r1", 2),
            ("us-east/a/r1", "us-west/a/r1", 3),
            ("us-east/a/r1", "eu-central/a/r1", 4),
            ("us-east/a/r1", "", 4),
            ("", "us-east/a/r1", 0),
        ];
        for (local, ep, want) in cases {
            let got = priority(&parse_locality(local), &parse_locality(ep), &policy);
            assert_eq!(got, want, "local {local:?}, endpoint {ep:?}");
        }
        let off = LocalityPolicy {
            enabled: false,
            failover: vec![],
        };
        assert_eq!(
            priority(&parse_locality("a/b/c"), &parse_locality("x"), &off),
            0
        );
    }
}
