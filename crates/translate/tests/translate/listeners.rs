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

/// AuthorizationPolicy on the inbound listener, as Istio writes it: per
/// action one RBAC filter (LOG, DENY, ALLOW) before the router and before
/// tcp_proxy, one RBAC policy per rule; for TCP an ALLOW rule with
/// HTTP-only fields is left out and DENY rules drop those fields.
#[test]
fn authorization_policies_become_rbac_filters() {
    use envoy_types::pb::envoy::config::rbac::v3::{permission, rbac};
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
    let snap = snapshot(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: readers}
spec:
  rules:
  - to: [{operation: {methods: [GET]}}]
  - to: [{operation: {ports: ['8080']}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-get}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [GET], ports: ['9000']}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: watch}
spec: {action: AUDIT, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: elsewhere, namespace: other}
spec: {rules: [{}]}
"#,
    );
    let l = listener(&snap, names::INBOUND);
    let http = hcm(&l, 0);
    let names: Vec<&str> = http.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [filter::RBAC, filter::RBAC, filter::RBAC, filter::ROUTER]
    );
    let http_rules: Vec<_> = http
        .http_filters
        .iter()
        .take(3)
        .map(|f| match &f.config_type {
            Some(http_filter::ConfigType::TypedConfig(a)) => {
                unpack::<HttpRbac>(a).rules.expect("rules")
            }
            other => panic!("{other:?}"),
        })
        .collect();
    let actions: Vec<i32> = http_rules.iter().map(|r| r.action).collect();
    assert_eq!(
        actions,
        [rbac::Action::Log, rbac::Action::Deny, rbac::Action::Allow].map(|a| a as i32)
    );
    let mut allow: Vec<&String> = http_rules[2].policies.keys().collect();
    allow.sort();
    assert_eq!(
        allow,
        [
            "ns[default]-policy[readers]-rule[0]",
            "ns[default]-policy[readers]-rule[1]"
        ],
        "only this namespace's policies"
    );

    let tcp = l.default_filter_chain.as_ref().expect("tcp chain");
    let names: Vec<&str> = tcp.filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            filter::NETWORK_RBAC,
            filter::NETWORK_RBAC,
            filter::NETWORK_RBAC,
            filter::TCP_PROXY
        ]
    );
    let tcp_rules: Vec<_> = tcp
        .filters
        .iter()
        .take(3)
        .map(|f| match &f.config_type {
            Some(ConfigType::TypedConfig(a)) => unpack::<NetworkRbac>(a).rules.expect("rules"),
            other => panic!("{other:?}"),
        })
        .collect();
    // The ALLOW rule on methods is left out for TCP; the one on ports stays.
    let allow: Vec<&String> = tcp_rules[2].policies.keys().collect();
    assert_eq!(allow, ["ns[default]-policy[readers]-rule[1]"]);
    // The DENY rule keeps its port and drops its method.
    let deny = &tcp_rules[1].policies["ns[default]-policy[no-get]-rule[0]"];
    let text = format!("{deny:?}");
    assert!(text.contains("DestinationPort(9000)"), "{text}");
    assert!(!text.contains(":method"), "{text}");
    let Some(permission::Rule::AndRules(and)) = &deny.permissions[0].rule else {
        panic!("{deny:?}");
    };
    assert_eq!(and.rules.len(), 1, "to only, no conditions: {deny:?}");

    // No policy: no RBAC filter at all.
    let plain = listener(&snapshot(""), names::INBOUND);
    assert_eq!(hcm(&plain, 0).http_filters.len(), 1);
}
