//! Listeners: `outbound` on `<address>:15001` (apps send here; routes from
//! RDS `outbound`) and `inbound` on `<address>:15006` (peers send here; it
//! forwards to the local app), as trellis-proxy's sidecar binds them.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLogFilter, ResponseFlagFilter, access_log_filter::FilterSpecifier,
};
use envoy_types::pb::envoy::config::core::v3::{TrafficDirection, header_value_option};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, LocalReplyConfig, Rds, ResponseMapper,
    http_connection_manager::{
        CodecType, ForwardClientCertDetails, RouteSpecifier, SetCurrentClientCertDetails,
        UpgradeConfig,
    },
    http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::Any;

use crate::cluster::ads;
use crate::encode::{self, duration, u32v};
use crate::endpoint::socket_address;
use crate::names::{self, filter as f};
use crate::route::REASON_HEADER;

/// Largest request head trellis-proxy accepts (it answers 431 above it);
/// Envoy's default is 60 KiB.
pub const MAX_REQUEST_HEADERS_KB: u32 = 64;
/// How long the inbound listener waits for a client's first bytes before it
/// treats the connection as a server-first protocol and proxies it as
/// opaque TCP (trellis-proxy's `--inbound-detect-timeout`).
pub const INBOUND_DETECT_TIMEOUT: Duration = Duration::from_millis(100);
/// Key of the inbound listener's `trellis` metadata naming the
/// PeerAuthentication that set its mode.
pub const PEER_AUTHENTICATION_KEY: &str = "peer_authentication";

pub(crate) fn http_filter(name: &str, config: Any) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

/// The outbound HTTP filters, in trellis-proxy's order: the host's rate
/// limit, the route's rate limit, fault injection, then routing. The rate
/// limit and fault filters do nothing unless a virtual host or route
/// carries a per-filter config (none is set here).
fn outbound_filters() -> Vec<HttpFilter> {
    let limiter = |stat: &str| LocalRateLimit {
        stat_prefix: stat.to_string(),
        ..Default::default()
    };
    vec![
        http_filter(
            f::RATE_LIMIT_HOST,
            encode::any(&limiter("trellis_rate_limit_host")),
        ),
        http_filter(
            f::RATE_LIMIT_ROUTE,
            encode::any(&limiter("trellis_rate_limit_route")),
        ),
        http_filter(f::FAULT, encode::any(&HttpFault::default())),
        http_filter(f::ROUTER, encode::any(&router())),
    ]
}

fn router() -> Router {
    Router {
        // trellis-proxy adds no `x-envoy-*` headers to requests or responses.
        suppress_envoy_headers: true,
        ..Default::default()
    }
}

/// Envoy's response flags -> trellis-proxy's `x-trellis-reason` tokens, so a
/// stock Envoy's local replies explain themselves the same way (statuses
/// stay Envoy's). Rate-limited replies get theirs from the rate limit
/// filter's own config.
const REASONS: [(&str, &str); 6] = [
    ("FI", "fault_injected"),
    ("NR", "route_not_found"),
    ("UH", "no_healthy_upstream"),
    ("UO", "overflow"),
    ("UT", "upstream_timeout"),
    ("UF", "upstream_connect_failure"),
];

fn local_reply_config() -> LocalReplyConfig {
    LocalReplyConfig {
        mappers: REASONS
            .iter()
            .map(|(flag, reason)| ResponseMapper {
                filter: Some(AccessLogFilter {
                    filter_specifier: Some(FilterSpecifier::ResponseFlagFilter(
                        ResponseFlagFilter {
                            flags: vec![flag.to_string()],
                        },
                    )),
                }),
                headers_to_add: vec![
                    envoy_types::pb::envoy::config::core::v3::HeaderValueOption {
                        header: Some(envoy_types::pb::envoy::config::core::v3::HeaderValue {
                            key: REASON_HEADER.to_string(),
                            value: reason.to_string(),
                            ..Default::default()
                        }),
                        append_action:
                            header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn hcm_filter(hcm: &HttpConnectionManager) -> Filter {
    Filter {
        name: f::HCM.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(encode::any(hcm))),
    }
}

/// The outbound listener of a proxy, bound at `address` (normally
/// `<proxy address>:15001`).
pub fn outbound(address: SocketAddr) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: names::OUTBOUND.to_string(),
        // HTTP/1.1 or HTTP/2 (prior knowledge) by the first bytes, as
        // trellis-proxy's protocol detection.
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: names::OUTBOUND.to_string(),
        })),
        http_filters: outbound_filters(),
        // WebSocket upgrades pass through; CONNECT opens the TCP tunnels
        // that routes of TCP ports serve.
        upgrade_configs: vec![
            UpgradeConfig {
                upgrade_type: "websocket".to_string(),
                ..Default::default()
            },
            UpgradeConfig {
                upgrade_type: "CONNECT".to_string(),
                ..Default::default()
            },
        ],
        max_request_headers_kb: Some(u32v(MAX_REQUEST_HEADERS_KB)),
        local_reply_config: Some(local_reply_config()),
        ..Default::default()
    };
    Listener {
        name: names::OUTBOUND.to_string(),
        address: Some(socket_address(&address.ip().to_string(), address.port())),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![FilterChain {
            filters: vec![hcm_filter(&hcm)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// What the inbound listener accepts (PeerAuthentication, and whether the
/// workload has an identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundTls {
    pub mode: InboundMode,
    /// The PeerAuthentication that decided (`namespace/name`), if one did:
    /// put in the listener's `trellis` metadata for `/config_dump`.
    pub from: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundMode {
    /// As without a mesh (DISABLE, or no identity).
    Plaintext,
    /// mTLS when the client starts TLS, plaintext otherwise.
    Permissive,
    /// mTLS only: the listener has no plaintext chain.
    Strict,
}

impl InboundTls {
    pub const PLAINTEXT: InboundTls = InboundTls {
        mode: InboundMode::Plaintext,
        from: None,
    };

    /// The mode for the effective PeerAuthentication; with no policy,
    /// STRICT for a workload with an identity (zero trust by default) and
    /// plaintext for one without (trellis-proxy's `tls::mode`).
    pub fn of(
        policy: &trellis_model::peer_authentication::Effective,
        has_identity: bool,
    ) -> InboundTls {
        use trellis_model::peer_authentication::MtlsMode;
        let mode = match (policy.mode, has_identity) {
            (_, false) | (MtlsMode::Disable, _) => InboundMode::Plaintext,
            (MtlsMode::Permissive, true) => InboundMode::Permissive,
            (MtlsMode::Strict | MtlsMode::Unset, true) => InboundMode::Strict,
        };
        InboundTls {
            mode,
            from: policy.from.clone(),
        }
    }
}

/// The inbound listener of a proxy at `address`: HTTP (either version) is
/// forwarded to the `inbound|app` cluster in the caller's protocol; a
/// connection that sends something else, or nothing within 100 ms (a
/// server-first protocol), is proxied as opaque TCP, as trellis-proxy does.
///
/// `rbac` (AuthorizationPolicy) goes before the router and before tcp_proxy.
///
/// With mTLS (`tls`), connections starting with a TLS ClientHello are
/// terminated with the workload certificate (SDS `default`, clients
/// verified against `ROOTCA`) and then served the same way; STRICT has no
/// plaintext chain, so Envoy closes anything else.
pub fn inbound(address: SocketAddr, rbac: &crate::rbac::InboundRbac, tls: &InboundTls) -> Listener {
    let route_config = RouteConfiguration {
        name: names::INBOUND.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: names::INBOUND.to_string(),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                name: names::INBOUND.to_string(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        names::INBOUND_APP_CLUSTER.to_string(),
                    )),
                    // The caller's proxy owns timeouts and retries.
                    timeout: Some(duration(Duration::ZERO)),
                    upgrade_configs: vec![route_action::UpgradeConfig {
                        upgrade_type: "websocket".to_string(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        stat_prefix: names::INBOUND.to_string(),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(RouteSpecifier::RouteConfig(route_config)),
        http_filters: rbac
            .http
            .iter()
            .cloned()
            .chain([http_filter(f::ROUTER, encode::any(&router()))])
            .collect(),
        upgrade_configs: vec![UpgradeConfig {
            upgrade_type: "websocket".to_string(),
            ..Default::default()
        }],
        max_request_headers_kb: Some(u32v(MAX_REQUEST_HEADERS_KB)),
        ..Default::default()
    };
    let tcp = TcpProxy {
        stat_prefix: names::INBOUND.to_string(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(
            names::INBOUND_APP_CLUSTER.to_string(),
        )),
        ..Default::default()
    };
    let tcp_filters: Vec<Filter> = rbac
        .network
        .iter()
        .cloned()
        .chain([Filter {
            name: f::TCP_PROXY.to_string(),
            config_type: Some(filter::ConfigType::TypedConfig(encode::any(&tcp))),
        }])
        .collect();
    let plain_protocol = |mode: InboundMode| match mode {
        InboundMode::Permissive => "raw_buffer".to_string(),
        _ => String::new(),
    };
    let mut listener_filters = Vec::new();
    let mut chains = Vec::new();
    if tls.mode != InboundMode::Plaintext {
        listener_filters.push(ListenerFilter {
            name: f::TLS_INSPECTOR.to_string(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(encode::any(
                &TlsInspector::default(),
            ))),
            ..Default::default()
        });
        let socket = crate::tls::tls_socket(&crate::tls::downstream_mesh());
        let mtls_hcm = HttpConnectionManager {
            // The app learns who called: `By=<us>;Hash=..;URI=<caller>`.
            forward_client_cert_details: ForwardClientCertDetails::SanitizeSet as i32,
            set_current_client_cert_details: Some(SetCurrentClientCertDetails {
                uri: true,
                ..Default::default()
            }),
            ..hcm.clone()
        };
        chains.push(FilterChain {
            name: "mtls-http".to_string(),
            filter_chain_match: Some(FilterChainMatch {
                transport_protocol: "tls".to_string(),
                application_protocols: vec!["h2".to_string(), "http/1.1".to_string()],
                ..Default::default()
            }),
            filters: vec![hcm_filter(&mtls_hcm)],
            transport_socket: Some(socket.clone()),
            ..Default::default()
        });
        chains.push(FilterChain {
            name: "mtls-tcp".to_string(),
            filter_chain_match: Some(FilterChainMatch {
                transport_protocol: "tls".to_string(),
                ..Default::default()
            }),
            filters: tcp_filters.clone(),
            transport_socket: Some(socket),
            ..Default::default()
        });
    }
    listener_filters.push(ListenerFilter {
        name: f::HTTP_INSPECTOR.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(encode::any(
            &HttpInspector {},
        ))),
        ..Default::default()
    });
    let plaintext = tls.mode != InboundMode::Strict;
    if plaintext {
        chains.push(FilterChain {
            name: "http".to_string(),
            filter_chain_match: Some(FilterChainMatch {
                transport_protocol: plain_protocol(tls.mode),
                application_protocols: vec![
                    "http/1.0".to_string(),
                    "http/1.1".to_string(),
                    "h2c".to_string(),
                ],
                ..Default::default()
            }),
            filters: vec![hcm_filter(&hcm)],
            ..Default::default()
        });
    }
    Listener {
        name: names::INBOUND.to_string(),
        address: Some(socket_address(&address.ip().to_string(), address.port())),
        traffic_direction: TrafficDirection::Inbound as i32,
        listener_filters,
        listener_filters_timeout: Some(duration(INBOUND_DETECT_TIMEOUT)),
        continue_on_listener_filters_timeout: true,
        filter_chains: chains,
        default_filter_chain: plaintext.then(|| FilterChain {
            name: "tcp".to_string(),
            filters: tcp_filters,
            ..Default::default()
        }),
        metadata: tls.from.as_ref().map(|from| {
            envoy_types::pb::envoy::config::core::v3::Metadata {
                filter_metadata: std::collections::HashMap::from([(
                    names::TRELLIS_METADATA.to_string(),
                    encode::make_struct(vec![(
                        PEER_AUTHENTICATION_KEY,
                        encode::string_value(from.clone()),
                    )]),
                )]),
                ..Default::default()
            }
        }),
        ..Default::default()
    }
}
