//! What `trellis proxy-config -o json|yaml` shows of each resource sent: the
//! Envoy message decoded from its `Any`, as JSON, in Envoy's field names.
//! Not the full proto JSON (envoy-types has no serde): the fields that say
//! where traffic goes (addresses, filter chains and their filters, virtual
//! hosts and routes, cluster discovery and balancing, endpoints and their
//! health), which is what an operator compares with what they applied.
//! Secrets are never decoded here: the caller lists their names only.

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{Address, HealthStatus, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, VirtualHost, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use serde_json::{Value, json};
use trellis_xds::type_url;

/// The JSON view of one resource of `type_url`, or `{"error": ...}` when
/// its bytes do not decode (which would be a bug of translation).
pub fn resource(type_url_: &str, any: &Any) -> Value {
    let decoded = match type_url_ {
        type_url::LISTENER => Listener::decode(any.value.as_slice()).map(|l| listener(&l)),
        type_url::ROUTE => RouteConfiguration::decode(any.value.as_slice()).map(|r| routes(&r)),
        type_url::VIRTUAL_HOST => {
            VirtualHost::decode(any.value.as_slice()).map(|vh| virtual_host(&vh))
        }
        type_url::CLUSTER => Cluster::decode(any.value.as_slice()).map(|c| cluster_json(&c)),
        type_url::ENDPOINT => {
            ClusterLoadAssignment::decode(any.value.as_slice()).map(|c| endpoints(&c))
        }
        other => return json!({"@type": other, "bytes": any.value.len()}),
    };
    decoded.unwrap_or_else(|e| json!({"error": format!("cannot decode the {type_url_}: {e}")}))
}

fn address_json(a: Option<&Address>) -> Value {
    match a.and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => match &s.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => {
                json!(format!("{}:{p}", s.address))
            }
            Some(socket_address::PortSpecifier::NamedPort(p)) => {
                json!(format!("{}:{p}", s.address))
            }
            None => json!(s.address),
        },
        Some(_) => json!("(not a socket address)"),
        None => Value::Null,
    }
}

fn listener(l: &Listener) -> Value {
    let chains: Vec<Value> = l
        .filter_chains
        .iter()
        .map(|c| {
            let filters: Vec<Value> = c
                .filters
                .iter()
                .map(|f| match &f.config_type {
                    Some(filter::ConfigType::TypedConfig(any)) => network_filter(&f.name, any),
                    _ => json!({"name": f.name}),
                })
                .collect();
            let m = c.filter_chain_match.as_ref();
            json!({
                "name": c.name,
                "filterChainMatch": m.map(|m| json!({
                    "destinationPort": m.destination_port.as_ref().map(|p| p.value),
                    "transportProtocol": m.transport_protocol,
                    "applicationProtocols": m.application_protocols,
                })),
                "tls": c.transport_socket.is_some(),
                "filters": filters,
            })
        })
        .collect();
    json!({
        "name": l.name,
        "address": address_json(l.address.as_ref()),
        "listenerFilters": l.listener_filters.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
        "filterChains": chains,
    })
}

fn network_filter(name: &str, any: &Any) -> Value {
    if any.type_url == HttpConnectionManager::type_url() {
        if let Ok(h) = HttpConnectionManager::decode(any.value.as_slice()) {
            let routes = match &h.route_specifier {
                Some(http_connection_manager::RouteSpecifier::Rds(r)) => {
                    json!({"rds": r.route_config_name})
                }
                Some(http_connection_manager::RouteSpecifier::RouteConfig(r)) => {
                    json!({"routeConfig": routes(r)})
                }
                _ => Value::Null,
            };
            return json!({
                "name": name,
                "statPrefix": h.stat_prefix,
                "routes": routes,
                "httpFilters": h.http_filters.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
            });
        }
    } else if any.type_url == TcpProxy::type_url()
        && let Ok(t) = TcpProxy::decode(any.value.as_slice())
    {
        let to = match &t.cluster_specifier {
            Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => json!(c),
            Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => json!(
                w.clusters
                    .iter()
                    .map(|c| json!({"name": c.name, "weight": c.weight}))
                    .collect::<Vec<_>>()
            ),
            None => Value::Null,
        };
        return json!({"name": name, "statPrefix": t.stat_prefix, "cluster": to});
    }
    json!({"name": name, "@type": any.type_url})
}

fn virtual_host(vh: &VirtualHost) -> Value {
    let routes: Vec<Value> = vh
        .routes
        .iter()
        .map(|rt| {
            let matched = rt.r#match.as_ref().and_then(|m| m.path_specifier.as_ref());
            let path = match matched {
                Some(route_match::PathSpecifier::Prefix(p)) => json!({"prefix": p}),
                Some(route_match::PathSpecifier::Path(p)) => json!({"path": p}),
                Some(route_match::PathSpecifier::SafeRegex(re)) => {
                    json!({"safeRegex": re.regex})
                }
                Some(_) => json!("(other)"),
                None => Value::Null,
            };
            let headers: Vec<String> = rt
                .r#match
                .iter()
                .flat_map(|m| m.headers.iter().map(|h| h.name.clone()))
                .collect();
            let action = match &rt.action {
                Some(route::Action::Route(a)) => match &a.cluster_specifier {
                    Some(route_action::ClusterSpecifier::Cluster(c)) => {
                        json!({"cluster": c})
                    }
                    Some(route_action::ClusterSpecifier::WeightedClusters(w)) => json!({
                        "weightedClusters": w.clusters.iter().map(|c| json!({
                            "name": c.name,
                            "weight": c.weight.as_ref().map(|w| w.value),
                        })).collect::<Vec<_>>()
                    }),
                    _ => json!("(other)"),
                },
                Some(route::Action::DirectResponse(d)) => {
                    json!({"directResponse": d.status})
                }
                Some(_) => json!("(other)"),
                None => Value::Null,
            };
            json!({"name": rt.name, "match": path, "headers": headers, "route": action})
        })
        .collect();
    json!({"name": vh.name, "domains": vh.domains, "routes": routes})
}

fn routes(r: &RouteConfiguration) -> Value {
    let hosts: Vec<Value> = r.virtual_hosts.iter().map(virtual_host).collect();
    json!({"name": r.name, "virtualHosts": hosts})
}

fn cluster_json(c: &Cluster) -> Value {
    let discovery = match &c.cluster_discovery_type {
        Some(cluster::ClusterDiscoveryType::Type(t)) => cluster::DiscoveryType::try_from(*t)
            .map_or_else(|_| json!(t), |t| json!(t.as_str_name())),
        Some(cluster::ClusterDiscoveryType::ClusterType(t)) => json!(t.name),
        None => Value::Null,
    };
    let lb = cluster::LbPolicy::try_from(c.lb_policy)
        .map_or_else(|_| json!(c.lb_policy), |p| json!(p.as_str_name()));
    json!({
        "name": c.name,
        "type": discovery,
        "lbPolicy": lb,
        "edsServiceName": c.eds_cluster_config.as_ref().map(|e| e.service_name.clone()),
        "connectTimeout": c.connect_timeout.as_ref().map(|d| format!("{}.{:03}s", d.seconds, d.nanos / 1_000_000)),
        "tls": c.transport_socket.is_some() || !c.transport_socket_matches.is_empty(),
        "endpoints": c.load_assignment.as_ref().map(endpoints),
    })
}

fn endpoints(c: &ClusterLoadAssignment) -> Value {
    let groups: Vec<Value> = c
        .endpoints
        .iter()
        .map(|g| {
            let eps: Vec<Value> = g
                .lb_endpoints
                .iter()
                .map(|e| {
                    let address = match &e.host_identifier {
                        Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                            address_json(ep.address.as_ref())
                        }
                        _ => Value::Null,
                    };
                    json!({
                        "address": address,
                        "healthStatus": HealthStatus::try_from(e.health_status)
                            .map_or_else(|_| json!(e.health_status), |h| json!(h.as_str_name())),
                        "weight": e.load_balancing_weight.as_ref().map(|w| w.value),
                    })
                })
                .collect();
            json!({
                "locality": g.locality.as_ref().map(|l| format!("{}/{}/{}", l.region, l.zone, l.sub_zone)),
                "priority": g.priority,
                "lbEndpoints": eps,
            })
        })
        .collect();
    json!({"clusterName": c.cluster_name, "endpoints": groups})
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::SocketAddress;
    use envoy_types::pb::envoy::config::endpoint::v3::{Endpoint, LbEndpoint, LocalityLbEndpoints};

    fn any<M: Message + Name>(m: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        }
    }

    fn sock(ip: &str, port: u32) -> Address {
        Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_vhds_virtual_host_shows_as_a_route_tables_does() {
        let vh = VirtualHost {
            name: "outbound/reviews:9080".into(),
            domains: vec!["reviews:9080".into()],
            ..Default::default()
        };
        let table = RouteConfiguration {
            name: "outbound".into(),
            virtual_hosts: vec![vh.clone()],
            ..Default::default()
        };
        let alone = resource(type_url::VIRTUAL_HOST, &any(&vh));
        assert_eq!(alone["name"], "outbound/reviews:9080");
        assert_eq!(
            resource(type_url::ROUTE, &any(&table))["virtualHosts"][0],
            alone
        );
    }

    #[test]
    fn endpoints_show_addresses_and_health() {
        let cla = ClusterLoadAssignment {
            cluster_name: "outbound|9090||inference.default.svc.cluster.local".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(sock("127.0.1.2", 15006)),
                        ..Default::default()
                    })),
                    health_status: HealthStatus::Unhealthy as i32,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = resource(type_url::ENDPOINT, &any(&cla));
        assert_eq!(
            v["endpoints"][0]["lbEndpoints"][0],
            json!({"address": "127.0.1.2:15006", "healthStatus": "UNHEALTHY", "weight": null})
        );
    }

    #[test]
    fn listeners_show_address_chains_and_route_names() {
        let hcm = HttpConnectionManager {
            stat_prefix: "outbound_http".into(),
            route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(
                envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds {
                    route_config_name: "outbound".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let l = Listener {
            name: "outbound".into(),
            address: Some(sock("127.0.1.1", 15001)),
            filter_chains: vec![envoy_types::pb::envoy::config::listener::v3::FilterChain {
                name: "http".into(),
                filters: vec![envoy_types::pb::envoy::config::listener::v3::Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = resource(type_url::LISTENER, &any(&l));
        assert_eq!(v["address"], "127.0.1.1:15001");
        assert_eq!(
            v["filterChains"][0]["filters"][0]["routes"]["rds"],
            "outbound"
        );
        // Garbage is reported, not hidden.
        let bad = Any {
            type_url: Listener::type_url(),
            value: vec![0xff, 0xff],
        };
        assert!(resource(type_url::LISTENER, &bad)["error"].is_string());
    }
}
