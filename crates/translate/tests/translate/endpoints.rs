//! ClusterLoadAssignments: localities, weights, health, subsets, priorities.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{
    HealthStatus, address, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, lb_endpoint::HostIdentifier,
};
use trellis_model::validate::Port;
use trellis_translate::endpoint::{self, EndpointInfo, Health, LocalityPolicy};
use trellis_translate::{Registry, Workload, translate};

use crate::support::*;

/// (priority, locality "region/zone/subzone", [(address:port, weight, health)])
type Flat = Vec<(u32, String, Vec<(String, u32, i32)>)>;

fn flat(cla: &ClusterLoadAssignment) -> Flat {
    cla.endpoints
        .iter()
        .map(|l| {
            let loc = l
                .locality
                .clone()
                .map(|l| format!("{}/{}/{}", l.region, l.zone, l.sub_zone))
                .unwrap_or_default();
            let eps = l
                .lb_endpoints
                .iter()
                .map(|e| {
                    let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                        panic!()
                    };
                    let Some(address::Address::SocketAddress(sa)) =
                        ep.address.clone().unwrap().address
                    else {
                        panic!()
                    };
                    let Some(PortSpecifier::PortValue(p)) = sa.port_specifier else {
                        panic!()
                    };
                    (
                        format!("{}:{p}", sa.address),
                        e.load_balancing_weight.unwrap().value,
                        e.health_status,
                    )
                })
                .collect();
            (l.priority, loc, eps)
        })
        .collect()
}

const SE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: inference, namespace: ml}
spec:
  hosts: [inference]
  resolution: STATIC
  ports: [{number: 8080, name: http-api, targetPort: 9000}]
  endpoints:
  - {address: 127.0.10.1, labels: {version: v1}, locality: us-east/a/r1}
  - {address: 127.0.10.2, labels: {version: v2}, locality: us-east/b, ports: {http-api: 18080}, weight: 5}
  - {address: 127.0.10.3, labels: {version: v1}, locality: us-west/a/r1}
  - {address: 127.0.10.4, labels: {version: v1}, locality: eu-west/a/r1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inference, namespace: ml}
spec:
  host: inference
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        failover: [{from: us-east, to: us-west}]
  subsets: [{name: v1, labels: {version: v1}}]
"#;

const HOST: &str = "inference.ml.svc.cluster.local";
const UNKNOWN: i32 = HealthStatus::Unknown as i32;

#[test]
fn grouped_by_locality_with_ports_and_weights() {
    let snap = translate(&validated(SE), &Registry::default(), &proxy("ml"));
    let cla = assignment(&snap, &c(8080, "", HOST));
    assert_eq!(cla.cluster_name, c(8080, "", HOST));
    // A proxy without a locality: one priority.
    assert_eq!(
        flat(&cla),
        [
            (
                0,
                "eu-west/a/r1".into(),
                vec![("127.0.10.4:9000".into(), 1, UNKNOWN)]
            ),
            (
                0,
                "us-east/a/r1".into(),
                vec![("127.0.10.1:9000".into(), 1, UNKNOWN)]
            ),
            (
                0,
                "us-east/b/".into(),
                vec![("127.0.10.2:18080".into(), 5, UNKNOWN)]
            ),
            (
                0,
                "us-west/a/r1".into(),
                vec![("127.0.10.3:9000".into(), 1, UNKNOWN)]
            ),
        ]
    );
    assert!(cla.policy.is_none());
    // The subset keeps the v1 endpoints only.
    let v1 = flat(&assignment(&snap, &c(8080, "v1", HOST)));
    let addrs: Vec<_> = v1
        .iter()
        .flat_map(|(_, _, e)| e.iter().map(|e| e.0.clone()))
        .collect();
    assert_eq!(
        addrs,
        ["127.0.10.4:9000", "127.0.10.1:9000", "127.0.10.3:9000"]
    );
}

#[test]
fn priorities_follow_the_proxys_locality() {
    let v = validated(SE);
    let registry = Registry::new(vec![Workload {
        name: "client".into(),
        namespace: "ml".into(),
        locality: Some("us-east/a/r1".into()),
        healthy: true,
        ..Default::default()
    }]);
    let shared = trellis_translate::shared(&v, &registry);
    let mut p = proxy("ml");
    p.locality = Some("us-east/a/r1".into());
    let snap = trellis_translate::view(&shared, &p);
    let cla = assignment(&snap, &c(8080, "", HOST));
    let pri: Vec<(u32, String)> = flat(&cla).into_iter().map(|(p, l, _)| (p, l)).collect();
    // 0 same subzone, 1 same region (zone b), 2 the failover region, 3 the rest.
    assert_eq!(
        pri,
        [
            (0, "us-east/a/r1".into()),
            (1, "us-east/b/".into()),
            (2, "us-west/a/r1".into()),
            (3, "eu-west/a/r1".into()),
        ]
    );
    assert_eq!(
        cla.policy.unwrap().overprovisioning_factor.unwrap().value,
        endpoint::OVERPROVISIONING_FACTOR
    );
    // A locality the registry does not know is computed on the fly, the same way.
    p.locality = Some("us-west/a/r1".into());
    let west = assignment(&trellis_translate::view(&shared, &p), &c(8080, "", HOST));
    assert_eq!(flat(&west)[0].1, "us-west/a/r1");
    assert_eq!(flat(&west)[0].0, 0);
}

#[test]
fn locality_balancing_off_is_one_priority() {
    let yaml = SE.replace(
        "      localityLbSetting:\n        failover: [{from: us-east, to: us-west}]",
        "      localityLbSetting: {enabled: false}",
    );
    let mut p = proxy("ml");
    p.locality = Some("us-east/a/r1".into());
    let snap = translate(&validated(&yaml), &Registry::default(), &p);
    let cla = assignment(&snap, &c(8080, "", HOST));
    assert!(flat(&cla).iter().all(|(pri, _, _)| *pri == 0));
}

#[test]
fn registry_workloads_become_endpoints_with_health() {
    // The function behind ServiceEntry workloadSelector, directly.
    let registry = Registry::new(vec![
        Workload {
            name: "a".into(),
            namespace: "ml".into(),
            labels: BTreeMap::from([("app".into(), "inference".into())]),
            addresses: vec!["127.0.20.1".parse().unwrap()],
            ports: BTreeMap::from([("http-api".into(), 18000)]),
            locality: Some("us-east/a".into()),
            healthy: true,
            ..Default::default()
        },
        Workload {
            name: "b".into(),
            namespace: "ml".into(),
            labels: BTreeMap::from([("app".into(), "inference".into())]),
            addresses: vec!["127.0.20.2".parse().unwrap()],
            healthy: false,
            ..Default::default()
        },
        Workload {
            name: "c".into(),
            namespace: "other".into(),
            labels: BTreeMap::from([("app".into(), "inference".into())]),
            addresses: vec!["127.0.20.3".parse().unwrap()],
            healthy: true,
            ..Default::default()
        },
    ]);
    let port = Port {
        number: 8080,
        name: "http-api".into(),
        protocol: trellis_model::networking::Protocol::Http,
        target_port: Some(9000),
    };
    let selector = BTreeMap::from([("app".into(), "inference".into())]);
    let eps = endpoint::workload_endpoints(&registry, "ml", &selector, &port);
    let got: Vec<_> = eps
        .iter()
        .map(|e| (e.address.as_str(), e.port, e.health, e.locality.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("127.0.20.1", 18000, Health::Healthy, "us-east/a"),
            ("127.0.20.2", 9000, Health::Unhealthy, ""),
        ]
    );
    let refs: Vec<&EndpointInfo> = eps.iter().collect();
    let cla = endpoint::load_assignment("x", &refs, None, &LocalityPolicy::default());
    let health: Vec<i32> = flat(&cla)
        .iter()
        .flat_map(|(_, _, e)| e.iter().map(|e| e.2))
        .collect();
    assert_eq!(health.len(), 2);
    assert!(health.contains(&(HealthStatus::Healthy as i32)));
    assert!(health.contains(&(HealthStatus::Unhealthy as i32)));
}

#[test]
fn a_workload_selector_picks_registered_workloads_per_subset() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: ml}
spec:
  hosts: [reviews]
  resolution: STATIC
  ports: [{number: 9080, name: http, targetPort: 9000}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: ml}
spec:
  host: reviews
  subsets: [{name: v2, labels: {version: v2}}]
"#;
    let w = |name: &str, ns: &str, version: &str, addr: &str, port: Option<u16>| Workload {
        name: name.into(),
        namespace: ns.into(),
        labels: BTreeMap::from([
            ("app".into(), "reviews".into()),
            ("version".into(), version.into()),
        ]),
        addresses: vec![addr.parse().unwrap()],
        ports: port.map(|p| ("http".to_string(), p)).into_iter().collect(),
        healthy: true,
        ..Default::default()
    };
    let registry = Registry::new(vec![
        w("r1", "ml", "v1", "127.0.30.1", Some(19080)),
        w("r2", "ml", "v2", "127.0.30.2", None),
        // Another namespace: not selected.
        w("r3", "prod", "v2", "127.0.30.3", None),
    ]);
    let snap = translate(&validated(yaml), &registry, &proxy("ml"));
    let host = "reviews.ml.svc.cluster.local";
    let addrs = |subset: &str| -> Vec<String> {
        flat(&assignment(&snap, &c(9080, subset, host)))
            .into_iter()
            .flat_map(|(_, _, eps)| eps.into_iter().map(|e| e.0))
            .collect()
    };
    assert_eq!(addrs(""), ["127.0.30.1:19080", "127.0.30.2:9000"]);
    assert_eq!(addrs("v2"), ["127.0.30.2:9000"]);
    // Without registered workloads the service has no endpoints (yet).
    let empty = translate(&validated(yaml), &Registry::default(), &proxy("ml"));
    assert!(flat(&assignment(&empty, &c(9080, "", host))).is_empty());
}
