//! Config from YAML, proxies, and decoders for the resources under test.

use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, VirtualHost, route,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use trellis_model::validate::{Validated, validate};
use trellis_model::{ResourceSet, parse_documents};
use trellis_translate::names::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use trellis_translate::{ProxyIdentity, Registry, Snapshot, translate};

/// Parse and validate; panics with the errors on invalid config.
pub fn validated(yaml: &str) -> Validated {
    let docs = parse_documents("test.yaml", yaml).unwrap_or_else(|e| panic!("parse: {e}"));
    let mut set = ResourceSet::default();
    for d in docs {
        set.push(d);
    }
    validate(&set).unwrap_or_else(|e| panic!("validate: {e}"))
}

pub fn proxy(namespace: &str) -> ProxyIdentity {
    let address: IpAddr = "127.0.0.10".parse().unwrap();
    ProxyIdentity {
        name: "client".into(),
        namespace: namespace.into(),
        address,
        outbound_port: trellis_translate::names::OUTBOUND_PORT,
        inbound_port: trellis_translate::names::INBOUND_PORT,
        app: SocketAddr::new(address, 8080),
        locality: None,
        egress: None,
        proxyless: false,
        labels: Default::default(),
        vhds: false,
    }
}

/// The snapshot of a proxy in `default`, without registered workloads.
pub fn snapshot(yaml: &str) -> Snapshot {
    translate(&validated(yaml), &Registry::default(), &proxy("default"))
}

fn any<'s>(snap: &'s Snapshot, type_url: &str, name: &str) -> &'s Any {
    &snap
        .get(type_url, name)
        .unwrap_or_else(|| {
            let names: Vec<_> = snap
                .of_type(type_url)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            panic!("no {type_url} named {name:?}; have {names:?}")
        })
        .any
}

pub fn cluster(snap: &Snapshot, name: &str) -> Cluster {
    Cluster::decode(any(snap, CLUSTER_TYPE, name).value.as_slice()).unwrap()
}

pub fn assignment(snap: &Snapshot, name: &str) -> ClusterLoadAssignment {
    ClusterLoadAssignment::decode(any(snap, ENDPOINT_TYPE, name).value.as_slice()).unwrap()
}

pub fn listener(snap: &Snapshot, name: &str) -> Listener {
    Listener::decode(any(snap, LISTENER_TYPE, name).value.as_slice()).unwrap()
}

pub fn route_config(snap: &Snapshot) -> RouteConfiguration {
    RouteConfiguration::decode(any(snap, ROUTE_TYPE, "outbound").value.as_slice()).unwrap()
}

/// The virtual host serving `domain`.
#[track_caller]
pub fn vhost<'r>(rc: &'r RouteConfiguration, domain: &str) -> &'r VirtualHost {
    rc.virtual_hosts
        .iter()
        .find(|v| v.domains.iter().any(|d| d == domain))
        .unwrap_or_else(|| {
            let all: Vec<_> = rc.virtual_hosts.iter().map(|v| &v.domains).collect();
            panic!("no virtual host for {domain}; have {all:?}")
        })
}

#[track_caller]
pub fn action(r: &Route) -> &RouteAction {
    match &r.action {
        Some(route::Action::Route(a)) => a,
        other => panic!("not a route action: {other:?}"),
    }
}

pub fn unpack<M: Message + Default>(a: &Any) -> M {
    M::decode(a.value.as_slice()).unwrap()
}

/// A ServiceEntry for `reviews` in `default` with two versioned endpoints
/// on HTTP port 9080, then `extra` documents.
pub fn reviews(extra: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  resolution: STATIC
  ports: [{{number: 9080, name: http}}]
  endpoints:
  - {{address: 127.0.1.1, labels: {{version: v1}}}}
  - {{address: 127.0.1.2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
{extra}"#
    )
}

pub const REVIEWS: &str = "reviews.default.svc.cluster.local";

pub fn c(port: u16, subset: &str, host: &str) -> String {
    trellis_translate::names::cluster(port, (!subset.is_empty()).then_some(subset), host)
}
