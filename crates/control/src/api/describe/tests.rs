//! Table tests of `describe::service` over validated YAML and a registry.

use std::collections::BTreeMap;

use trellis_model::{ResourceSet, parse_documents};

use super::*;

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: inference}
spec:
  hosts: [inference]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9090, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: inference}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy}
spec:
  hosts: [legacy]
  resolution: STATIC
  ports: [{number: 80, name: http, targetPort: 8080}]
  endpoints: [{address: 10.0.0.7, labels: {zone: a}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: gateway}
spec:
  hosts: [gateway]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: gateway}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inference}
spec:
  host: inference
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inference}
spec:
  hosts: [inference]
  http:
  - route:
    - {destination: {host: inference, subset: v1}, weight: 80}
    - {destination: {host: inference, subset: v2}, weight: 20}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: gateway}
spec:
  hosts: [gateway]
  http:
  - route: [{destination: {host: gateway}}]
    mirror: {host: inference}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-preprocess}
spec:
  selector: {matchLabels: {app: inference}}
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/preprocess"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gateway-open}
spec:
  selector: {matchLabels: {app: gateway}}
  action: ALLOW
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: v2-only}
spec:
  workloadSelector: {labels: {version: v2}}
  egress: [{hosts: ["./*"]}]
"#;

fn validated() -> Validated {
    let mut set = ResourceSet::default();
    for r in parse_documents("mesh.yaml", MESH).expect("parses") {
        set.push(r);
    }
    trellis_model::validate::validate(&set).expect("valid")
}

fn workload(name: &str, ip: &str, labels: &[(&str, &str)], healthy: bool) -> Workload {
    Workload {
        name: name.into(),
        namespace: "default".into(),
        service_account: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        addresses: vec![ip.parse().unwrap()],
        ports: BTreeMap::from([("http".to_string(), 15006)]),
        locality: None,
        healthy,
    }
}

fn names(p: &[PolicyView]) -> Vec<String> {
    p.iter()
        .map(|p| format!("{:?} {}: {}", p.resource.kind, p.resource.name, p.why))
        .collect()
}

#[test]
fn a_service_with_workloads_lists_endpoints_health_and_policies() {
    let v = validated();
    let ws = [
        workload(
            "inference-v1-0",
            "127.0.1.2",
            &[("app", "inference"), ("version", "v1")],
            true,
        ),
        workload(
            "inference-v2-0",
            "127.0.1.3",
            &[("app", "inference"), ("version", "v2")],
            false,
        ),
        workload("gateway-0", "127.0.1.1", &[("app", "gateway")], true),
    ];
    let members: Vec<Member<'_>> = ws
        .iter()
        .map(|w| Member {
            node: &w.name,
            workload: w,
        })
        .collect();
    let s = service(&v, &members, "default", "inference").expect("found");
    assert_eq!(s.host, "inference.default.svc.cluster.local");
    assert_eq!(s.service_entry.name, "inference");
    assert_eq!(s.resolution, "STATIC");
    assert_eq!(s.ports[0].protocol, "HTTP");
    let eps: Vec<(String, u16, Option<String>, &str)> = s
        .endpoints
        .iter()
        .map(|e| (e.address.clone(), e.port, e.workload.clone(), e.health))
        .collect();
    assert_eq!(
        eps,
        [
            (
                "127.0.1.2".into(),
                15006,
                Some("inference-v1-0".into()),
                "healthy"
            ),
            (
                "127.0.1.3".into(),
                15006,
                Some("inference-v2-0".into()),
                "unhealthy"
            ),
        ]
    );
    assert_eq!(
        names(&s.policies),
        [
            "VirtualService inference: routes its host, to it",
            "VirtualService gateway: routes to it",
            "DestinationRule inference: traffic policy and subsets for its host",
            "PeerAuthentication default: mTLS mode of workloads inference-v1-0, inference-v2-0",
            "AuthorizationPolicy only-preprocess: authorizes requests to workloads inference-v1-0, inference-v2-0",
            "Sidecar v2-only: limits what workloads inference-v2-0 see",
        ]
    );
}

#[test]
fn static_endpoints_have_unknown_health_and_workload_policies_do_not_apply() {
    let v = validated();
    let s = service(&v, &[], "default", "legacy.default").expect("found");
    assert_eq!(s.endpoints.len(), 1);
    let e = &s.endpoints[0];
    assert_eq!(
        (e.address.as_str(), e.port, e.source, e.health),
        ("10.0.0.7", 8080, "serviceEntry", "unknown")
    );
    assert_eq!(e.labels.get("zone").map(String::as_str), Some("a"));
    // No workloads: nothing selects them, so only host-wide policies.
    assert!(s.policies.is_empty(), "{:?}", names(&s.policies));
}

#[test]
fn an_unknown_service_names_the_host_and_the_namespace_services() {
    let v = validated();
    let err = service(&v, &[], "default", "reviews").unwrap_err();
    assert_eq!(
        err.to_string(),
        "no service reviews.default.svc.cluster.local (from \"reviews\" in namespace default); \
         services in default: gateway.default.svc.cluster.local, inference.default.svc.cluster.local, \
         legacy.default.svc.cluster.local"
    );
    let err = service(&v, &[], "shop", "orders").unwrap_err();
    assert!(err.to_string().ends_with("services in shop: none"), "{err}");
}
