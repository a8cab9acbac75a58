//! The outbound and inbound listeners, and the inbound app cluster.

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source::ConfigSourceSpecifier, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter::ConfigType};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager,
    http_connection_manager::{CodecType, RouteSpecifier},
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options::UpstreamProtocolOptions,
};
use trellis_translate::cluster::HTTP_PROTOCOL_OPTIONS;
use trellis_translate::names::{self, filter};

use crate::support::*;

fn hcm(l: &Listener, chain: usize) -> HttpConnectionManager {
    let f = &l.filter_chains[chain].filters[0];
    assert_eq!(f.name, filter::HCM);
    match &f.config_type {
        Some(ConfigType::TypedConfig(a)) => {
            assert_eq!(
                a.type_url,
                "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
            );
            unpack(a)
        }
        other => panic!("{other:?}"),
    }
}

fn socket(l: &Listener) -> (String, u32) {
    match l.address.clone().unwrap().address {
        Some(address::Address::SocketAddress(sa)) => match sa.port_specifier {
            Some(PortSpecifier::PortValue(p)) => (sa.address, p),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn outbound_listener_takes_routes_from_ads() {
    let snap = snapshot(&reviews(""));
    let l = listener(&snap, names::OUTBOUND);
    assert_eq!(socket(&l), ("127.0.0.10".into(), 15001));
    let h = hcm(&l, 0);
    assert_eq!(h.codec_type, CodecType::Auto as i32);
    match h.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            assert_eq!(rds.route_config_name, "outbound");
            let src = rds.config_source.unwrap();
            assert!(matches!(
                src.config_source_specifier,
                Some(ConfigSourceSpecifier::Ads(_))
            ));
            assert_eq!(src.resource_api_version, 2);
        }
        other => panic!("{other:?}"),
    }
    let filters: Vec<&str> = h.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        filters,
        [
            filter::RATE_LIMIT_HOST,
            filter::RATE_LIMIT_ROUTE,
            filter::FAULT,
            filter::ROUTER
        ]
    );
    let upgrades: Vec<&str> = h
        .upgrade_configs
        .iter()
        .map(|u| u.upgrade_type.as_str())
        .collect();
    assert_eq!(upgrades, ["websocket", "CONNECT"]);
    assert_eq!(h.max_request_headers_kb.unwrap().value, 64);
    assert!(!h.local_reply_config.unwrap().mappers.is_empty());
}

#[test]
fn inbound_listener_forwards_to_the_app() {
    let snap = snapshot(&reviews(""));
    let l = listener(&snap, names::INBOUND);
    assert_eq!(socket(&l), ("127.0.0.10".into(), 15006));
    assert_eq!(l.listener_filters[0].name, filter::HTTP_INSPECTOR);
    assert!(l.continue_on_listener_filters_timeout);
    assert_eq!(l.listener_filters_timeout.unwrap().nanos, 100_000_000);
    let chain = l.filter_chains[0].filter_chain_match.clone().unwrap();
    assert!(chain.application_protocols.contains(&"h2c".to_string()));
    let h = hcm(&l, 0);
    match h.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => {
            assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
            assert_eq!(
                action(&rc.virtual_hosts[0].routes[0]).cluster_specifier,
                Some(envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier::Cluster(
                    names::INBOUND_APP_CLUSTER.into()
                ))
            );
        }
        other => panic!("{other:?}"),
    }
    // Anything that is not HTTP: opaque TCP to the app.
    assert_eq!(
        l.default_filter_chain.unwrap().filters[0].name,
        filter::TCP_PROXY
    );

    let app = cluster(&snap, names::INBOUND_APP_CLUSTER);
    assert_eq!(
        app.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32))
    );
    let ep = &app.load_assignment.unwrap().endpoints[0].lb_endpoints[0];
    assert!(format!("{ep:?}").contains("127.0.0.10") && format!("{ep:?}").contains("8080"));
    let o: HttpProtocolOptions =
        unpack(&app.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS]);
    assert!(matches!(
        o.upstream_protocol_options,
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_))
    ));
}
