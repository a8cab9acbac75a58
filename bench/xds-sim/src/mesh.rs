//! The simulated mesh: service names, namespaces, each proxy's identity
//! (node metadata) and the config `trellis control` is given.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

/// Every `DR_EVERY`-th service has a DestinationRule (subsets v1, v2) and a
/// VirtualService splitting its traffic between them.
pub const DR_EVERY: usize = 10;
/// The service whose VirtualService the "VS change" scenario edits.
pub const MARKER_SERVICE: usize = 0;
/// First octets of the base proxies' and the churn workloads' addresses.
const BASE_NET: u8 = 10;
pub const CHURN_NET: [u8; 2] = [10, 200];

/// What each proxy sees of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scope {
    /// Every service (no Sidecar): the worst case, ~1.2 MB per proxy at
    /// 1,000 services.
    All,
    /// A `Sidecar` per namespace with egress hosts `./*` and the marker
    /// service's namespace (`ns-0/*`, the "shared services" namespace):
    /// what Istio's scaling guide asks of large meshes.
    Namespace,
}

#[derive(Debug, Clone, Copy)]
pub struct Mesh {
    pub services: usize,
    pub namespaces: usize,
    pub scope: Scope,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Namespace => "namespace",
        }
    }
}

impl Mesh {
    pub fn namespace(&self, svc: usize) -> String {
        format!("ns-{}", self.ns_index(svc))
    }

    pub fn ns_index(&self, svc: usize) -> usize {
        svc % self.namespaces
    }

    /// Whether a proxy in namespace `viewer` gets the services of namespace
    /// `target` (the Sidecars of [`Mesh::config`]).
    pub fn sees_ns(&self, viewer: usize, target: usize) -> bool {
        match self.scope {
            Scope::All => true,
            Scope::Namespace => viewer == target || target == self.ns_index(MARKER_SERVICE),
        }
    }

    pub fn service(&self, svc: usize) -> String {
        format!("svc-{svc:04}")
    }

    pub fn fqdn(&self, svc: usize) -> String {
        format!(
            "{}.{}.svc.cluster.local",
            self.service(svc),
            self.namespace(svc)
        )
    }

    /// The whole config: a ServiceEntry per service (endpoints from the
    /// registry through `workloadSelector`), a DestinationRule and a
    /// VirtualService on every tenth, and with [`Scope::Namespace`] a
    /// Sidecar per namespace.
    pub fn config(&self) -> String {
        let mut out = String::new();
        if self.scope == Scope::Namespace {
            let shared = self.namespace(MARKER_SERVICE);
            for n in 0..self.namespaces {
                let _ = write!(
                    out,
                    "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: ns-{n}}}
spec:
  egress:
  - hosts: [\"./*\", \"{shared}/*\"]
---
"
                );
            }
        }
        for s in 0..self.services {
            let (name, ns, host) = (self.service(s), self.namespace(s), self.fqdn(s));
            let _ = write!(
                out,
                "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: {name}}}}}
---
"
            );
            if s % DR_EVERY == 0 {
                let _ = write!(
                    out,
                    "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {ns}}}
spec:
  host: {host}
  trafficPolicy:
    connectionPool:
      tcp: {{maxConnections: 100, connectTimeout: 1s}}
      http: {{http1MaxPendingRequests: 100, maxRetries: 3}}
    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
{}---
",
                    self.virtual_service(s, 90)
                );
            }
        }
        out
    }

    /// The VirtualService of service `svc` (which must have a
    /// DestinationRule): `weight` % to subset v1, the rest to v2.
    pub fn virtual_service(&self, svc: usize, weight: u32) -> String {
        let (name, ns, host) = (self.service(svc), self.namespace(svc), self.fqdn(svc));
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{host}]
  http:
  - name: canary
    timeout: 5s
    retries: {{attempts: 2, perTryTimeout: 2s, retryOn: 5xx}}
    route:
    - {{destination: {{host: {host}, subset: v1}}, weight: {weight}}}
    - {{destination: {{host: {host}, subset: v2}}, weight: {}}}
",
            100 - weight
        )
    }

    /// The service index in a cluster name, when it is a whole-service
    /// cluster (`outbound|80||svc-0042.ns-2.svc.cluster.local`).
    pub fn plain_cluster_service(name: &str) -> Option<usize> {
        let host = name.strip_prefix("outbound|")?;
        let (_port, rest) = host.split_once('|')?;
        let (subset, fqdn) = rest.split_once('|')?;
        if !subset.is_empty() {
            return None;
        }
        fqdn.strip_prefix("svc-")?.get(..4)?.parse().ok()
    }
}

/// Who a simulated proxy is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub service: usize,
    pub address: Ipv4Addr,
    /// A unique name.
    pub name: String,
}

impl Identity {
    /// Base proxy `i`: a workload of service `i % services`, half of them
    /// `version: v1`, at 10.1.x.y.
    pub fn base(mesh: &Mesh, i: usize) -> Identity {
        let service = i % mesh.services;
        let n = i as u32;
        Identity {
            service,
            address: Ipv4Addr::new(BASE_NET, 1 + (n >> 16) as u8, (n >> 8) as u8, n as u8),
            name: format!("{}-{i}", mesh.service(service)),
        }
    }

    /// Churn workload `k`, at 10.200.x.y.
    pub fn churn(mesh: &Mesh, k: usize) -> Identity {
        let service = (k * 7 + 3) % mesh.services;
        let n = k as u32;
        Identity {
            service,
            address: Ipv4Addr::new(CHURN_NET[0], CHURN_NET[1], (n >> 8) as u8, n as u8),
            name: format!("{}-churn-{k}", mesh.service(service)),
        }
    }

    /// The node a sidecar sends (docs/xds.md "Node metadata"); no
    /// HEALTH_CHECK, so the control plane probes nothing.
    pub fn node(&self, mesh: &Mesh) -> Node {
        let ns = mesh.namespace(self.service);
        let app = mesh.service(self.service);
        let s = |v: &str| Value {
            kind: Some(Kind::StringValue(v.to_string())),
        };
        let st = |fields: Vec<(&str, Value)>| Value {
            kind: Some(Kind::StructValue(Struct {
                fields: fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            })),
        };
        let version = if self.address.octets()[3].is_multiple_of(2) {
            "v1"
        } else {
            "v2"
        };
        let id = format!("{}.{ns}", self.name);
        let fields = vec![
            ("NAME", s(&self.name)),
            ("NAMESPACE", s(&ns)),
            ("SERVICE_ACCOUNT", s(&app)),
            (
                "LABELS",
                st(vec![("app", s(&app)), ("version", s(version))]),
            ),
            ("ADDRESS", s(&self.address.to_string())),
            ("PORTS", st(vec![("http", s("8080"))])),
            ("APP", s("127.0.0.1:8080")),
            ("LOCALITY", s("region-a/zone-1")),
        ];
        Node {
            id: id.clone(),
            cluster: id,
            metadata: Some(Struct {
                fields: fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }),
            user_agent_name: "trellis-xds-sim".into(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_clusters() {
        assert_eq!(
            Mesh::plain_cluster_service("outbound|80||svc-0042.ns-2.svc.cluster.local"),
            Some(42)
        );
        assert_eq!(
            Mesh::plain_cluster_service("outbound|80|v1|svc-0042.ns-2.svc.cluster.local"),
            None
        );
        assert_eq!(Mesh::plain_cluster_service("inbound|app"), None);
    }
}
