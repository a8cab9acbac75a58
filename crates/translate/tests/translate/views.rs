//! Per-proxy views: visibility (`exportTo`, Sidecar egress hosts), sharing.

use std::sync::Arc;

use trellis_translate::names::{CLUSTER_TYPE, ENDPOINT_TYPE};
use trellis_translate::{EgressHost, ProxyIdentity, Registry, shared, view};

use crate::support::*;

const TWO_NAMESPACES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: orders, namespace: shop}
spec:
  hosts: [orders]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 127.0.6.1, labels: {v: "1"}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: secret, namespace: shop}
spec:
  hosts: [secret]
  exportTo: ["."]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 127.0.6.2}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: orders, namespace: shop}
spec:
  host: orders
  exportTo: ["."]
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets: [{name: one, labels: {v: "1"}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: orders, namespace: shop}
spec:
  hosts: [orders]
  exportTo: ["."]
  http:
  - route: [{destination: {host: orders, subset: one}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: front}
spec:
  hosts: [web]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 127.0.6.3}]
"#;

const ORDERS: &str = "orders.shop.svc.cluster.local";

#[test]
fn export_to_limits_what_other_namespaces_see() {
    let s = shared(&validated(TWO_NAMESPACES), &Registry::default());
    assert!(s.errors.is_empty(), "{:?}", s.errors);

    let own = view(&s, &proxy("shop"));
    let other = view(&s, &proxy("front"));
    let secret = c(80, "", "secret.shop.svc.cluster.local");
    assert!(own.get(CLUSTER_TYPE, &secret).is_some());
    assert!(other.get(CLUSTER_TYPE, &secret).is_none());
    assert!(other.get(ENDPOINT_TYPE, &secret).is_none());

    // The DestinationRule is the shop's own: others get the cluster
    // without its policy and subsets.
    assert_eq!(
        cluster(&own, &c(80, "", ORDERS)).lb_policy,
        envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy::Random as i32
    );
    assert!(own.get(CLUSTER_TYPE, &c(80, "one", ORDERS)).is_some());
    assert_ne!(
        cluster(&other, &c(80, "", ORDERS)).lb_policy,
        envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy::Random as i32
    );
    assert!(other.get(CLUSTER_TYPE, &c(80, "one", ORDERS)).is_none());

    // So is the VirtualService: others get the default route.
    let route_of = |snap: &trellis_translate::Snapshot| {
        let rc = route_config(snap);
        let vh = vhost(&rc, "orders.shop");
        action(&vh.routes[0]).cluster_specifier.clone()
    };
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
    assert_eq!(
        route_of(&own),
        Some(ClusterSpecifier::Cluster(c(80, "one", ORDERS)))
    );
    assert_eq!(
        route_of(&other),
        Some(ClusterSpecifier::Cluster(c(80, "", ORDERS)))
    );
}

#[test]
fn sidecar_egress_hosts_narrow_the_view() {
    let s = shared(&validated(TWO_NAMESPACES), &Registry::default());
    let mut p = proxy("front");
    p.egress = Some(vec![EgressHost::parse("./*").unwrap()]);
    let snap = view(&s, &p);
    let clusters: Vec<&String> = snap.of_type(CLUSTER_TYPE).unwrap().keys().collect();
    assert_eq!(
        clusters,
        ["inbound|app", &c(80, "", "web.front.svc.cluster.local")]
    );
    let rc = route_config(&snap);
    assert_eq!(rc.virtual_hosts.len(), 1);
    vhost(&rc, "web");

    p.egress = Some(vec![EgressHost::parse(&format!("shop/{ORDERS}")).unwrap()]);
    let snap = view(&s, &p);
    assert!(snap.get(CLUSTER_TYPE, &c(80, "", ORDERS)).is_some());
    assert!(
        snap.get(CLUSTER_TYPE, &c(80, "", "web.front.svc.cluster.local"))
            .is_none()
    );

    assert!(EgressHost::parse("no-slash").is_err());
    let e = EgressHost::parse("*/*.example.com").unwrap();
    assert!(e.allows("a", "b", "api.example.com"));
    assert!(!e.allows("a", "b", "example.com"));
    assert!(!EgressHost::parse("~/*").unwrap().allows("a", "a", "x"));
}

#[test]
fn shared_resources_are_shared_not_copied() {
    let s = shared(&validated(TWO_NAMESPACES), &Registry::default());
    let a = view(&s, &proxy("front"));
    let mut other = proxy("front");
    other.address = "127.0.0.11".parse().unwrap();
    let b = view(&s, &other);
    let name = c(80, "", "web.front.svc.cluster.local");
    assert!(Arc::ptr_eq(
        a.get(CLUSTER_TYPE, &name).unwrap(),
        b.get(CLUSTER_TYPE, &name).unwrap()
    ));
    assert!(Arc::ptr_eq(
        a.get(ENDPOINT_TYPE, &name).unwrap(),
        b.get(ENDPOINT_TYPE, &name).unwrap()
    ));
    // Same namespace, same routes: equal content, equal hash.
    let rt = trellis_translate::names::ROUTE_TYPE;
    assert_eq!(
        a.get(rt, "outbound").unwrap().hash,
        b.get(rt, "outbound").unwrap().hash
    );
    // Different addresses: different listeners.
    let lt = trellis_translate::names::LISTENER_TYPE;
    assert_ne!(
        a.get(lt, "outbound").unwrap().hash,
        b.get(lt, "outbound").unwrap().hash
    );
    assert_eq!(a.get(lt, "outbound").unwrap().version().len(), 16);
}

#[test]
fn a_proxyless_client_gets_named_api_listeners_and_grpc_clusters() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
    use trellis_translate::names::{LISTENER_TYPE, ROUTE_TYPE};
    let s = shared(&validated(TWO_NAMESPACES), &Registry::default());
    let mut p = proxy("shop");
    p.proxyless = true;
    let snap = view(&s, &p);

    // Every name the shop resolves to orders, on its port; none of the
    // sidecar's listeners (they would bind addresses).
    let listeners: Vec<&String> = snap.of_type(LISTENER_TYPE).unwrap().keys().collect();
    for name in [
        "orders:80",
        "orders.shop:80",
        "orders.shop.svc:80",
        "orders.shop.svc.cluster.local:80",
        "secret:80",
        "web.front:80",
    ] {
        assert!(
            listeners.iter().any(|l| *l == name),
            "{name}: {listeners:?}"
        );
    }
    assert!(
        !listeners
            .iter()
            .any(|l| *l == "outbound" || *l == "inbound")
    );
    assert!(!listeners.iter().any(|l| *l == "web:80"), "web is front's");
    // One route table per service port, named by the FQDN; the shop sees
    // its VirtualService.
    let rc: RouteConfiguration = unpack(
        &snap
            .get(ROUTE_TYPE, "orders.shop.svc.cluster.local:80")
            .expect("route table")
            .any,
    );
    assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
    assert_eq!(
        action(&rc.virtual_hosts[0].routes[0]).cluster_specifier,
        Some(ClusterSpecifier::Cluster(c(80, "one", ORDERS)))
    );
    assert!(snap.get(ROUTE_TYPE, "outbound").is_none());
    // RANDOM is not a gRPC balancer: round robin instead.
    assert_eq!(
        cluster(&snap, &c(80, "", ORDERS)).lb_policy,
        LbPolicy::RoundRobin as i32
    );
    // The sidecar view of the same shared resources is untouched.
    assert_eq!(
        cluster(&view(&s, &proxy("shop")), &c(80, "", ORDERS)).lb_policy,
        LbPolicy::Random as i32
    );
}

#[test]
fn a_registry_change_retranslates_only_the_services_it_touches() {
    use std::collections::BTreeMap;
    use trellis_translate::{Workload, shared_since};
    let yaml = format!(
        "{TWO_NAMESPACES}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: shop}}
spec:
  hosts: [api]
  resolution: STATIC
  ports: [{{number: 80, name: http}}]
  workloadSelector: {{labels: {{app: api}}}}
"
    );
    let v = validated(&yaml);
    let workload = |name: &str, ip: &str| Workload {
        name: name.into(),
        namespace: "shop".into(),
        labels: BTreeMap::from([("app".into(), "api".into())]),
        addresses: vec![ip.parse().unwrap()],
        healthy: true,
        ..Default::default()
    };
    let one = Registry::new(vec![workload("a", "127.0.7.1")]);
    let two = Registry::new(vec![workload("a", "127.0.7.1"), workload("b", "127.0.7.2")]);
    let before = shared(&v, &one);
    let after = shared_since(&v, &two, Some(&before));
    let p = proxy("shop");
    let (b, a) = (view(&before, &p), view(&after, &p));
    let api = c(80, "", "api.shop.svc.cluster.local");
    // The untouched service keeps its allocations; the touched one has the
    // new endpoint.
    assert!(Arc::ptr_eq(
        b.get(CLUSTER_TYPE, &c(80, "", ORDERS)).unwrap(),
        a.get(CLUSTER_TYPE, &c(80, "", ORDERS)).unwrap()
    ));
    assert_eq!(assignment(&b, &api).endpoints[0].lb_endpoints.len(), 1);
    assert_eq!(assignment(&a, &api).endpoints[0].lb_endpoints.len(), 2);
    // Same result as translating from scratch.
    let fresh = view(&shared(&v, &two), &p);
    for (ty, map) in &fresh.resources {
        let hashes = |s: &trellis_translate::Snapshot| -> Vec<(String, u64)> {
            s.of_type(ty)
                .unwrap()
                .iter()
                .map(|(n, r)| (n.clone(), r.hash))
                .collect()
        };
        assert_eq!(hashes(&a), hashes(&fresh), "{ty}");
        assert!(!map.is_empty());
    }

    // The same workloads again (the same `Arc`s, as the control plane's
    // registrations keep them): the service is reused as it was.
    let again = Registry::from_shared(two.workloads.clone());
    let same = shared_since(&v, &again, Some(&after));
    let s = view(&same, &p);
    assert!(Arc::ptr_eq(
        a.get(ENDPOINT_TYPE, &api).unwrap(),
        s.get(ENDPOINT_TYPE, &api).unwrap()
    ));
    // One turns unhealthy (a new `Arc` with the change): its endpoint says so.
    let mut sick = two.workloads.clone();
    Arc::make_mut(&mut sick[1]).healthy = false;
    let after_sick = shared_since(&v, &Registry::from_shared(sick), Some(&same));
    let health: Vec<i32> = assignment(&view(&after_sick, &p), &api).endpoints[0]
        .lb_endpoints
        .iter()
        .map(|e| e.health_status)
        .collect();
    assert_eq!(health, [1, 2], "HEALTHY, UNHEALTHY");
}

/// A proxy that asks for VHDS gets the same virtual hosts as one that does
/// not, one resource each (`outbound/<virtual host>`, also its `name`),
/// and a route table that holds none and points at ADS for them.
#[test]
fn vhds_sends_the_route_tables_virtual_hosts_one_by_one() {
    use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
    use prost::Message;
    use trellis_translate::names::VIRTUAL_HOST_TYPE;

    let v = validated(TWO_NAMESPACES);
    let shared = shared(&v, &Registry::default());
    let plain = view(&shared, &proxy("shop"));
    let vhds = view(
        &shared,
        &ProxyIdentity {
            vhds: true,
            ..proxy("shop")
        },
    );
    assert!(plain.of_type(VIRTUAL_HOST_TYPE).is_none());

    let table = route_config(&plain);
    let head = route_config(&vhds);
    assert!(head.virtual_hosts.is_empty());
    let source = head.vhds.and_then(|v| v.config_source).unwrap();
    assert!(matches!(
        source.config_source_specifier,
        Some(ConfigSourceSpecifier::Ads(_))
    ));
    // Everything else about the table is the same.
    assert_eq!(
        RouteConfiguration {
            vhds: None,
            ..route_config(&vhds)
        },
        RouteConfiguration {
            virtual_hosts: vec![],
            ..table.clone()
        }
    );

    let sent = vhds.of_type(VIRTUAL_HOST_TYPE).unwrap();
    assert_eq!(sent.len(), table.virtual_hosts.len());
    assert!(table.virtual_hosts.len() >= 2, "{table:?}");
    for want in &table.virtual_hosts {
        let name = format!("outbound/{}", want.name);
        let r = sent.get(&name).unwrap_or_else(|| panic!("no {name}"));
        let got = VirtualHost::decode(r.any.value.as_slice()).unwrap();
        assert_eq!(
            got,
            VirtualHost {
                name: name.clone(),
                ..want.clone()
            }
        );
    }
    // Everything but routes is the same resource.
    for t in [CLUSTER_TYPE, ENDPOINT_TYPE] {
        assert_eq!(plain.of_type(t), vhds.of_type(t), "{t}");
    }
}
