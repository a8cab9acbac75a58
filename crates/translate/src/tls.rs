//! Mutual TLS in Envoy's terms, as Istio sends it, so that trellis-proxy
//! and a stock Envoy get the same thing.
//!
//! | Istio | Envoy |
//! |---|---|
//! | auto mTLS (no DestinationRule `tls`) | `transport_socket_matches`: `{tlsMode: istio}` -> TLS (`UpstreamTlsContext`), else `raw_buffer`; endpoints of workloads with a sidecar carry `filter_metadata["envoy.transport_socket_match"] = {tlsMode: istio}` |
//! | DestinationRule `ISTIO_MUTUAL` | `transport_socket`: TLS with SDS `default` and `ROOTCA` |
//! | DestinationRule `SIMPLE` / `MUTUAL` | `transport_socket`: TLS with the rule's files (`filename` data sources) |
//! | DestinationRule `DISABLE` | no transport socket |
//! | PeerAuthentication STRICT / PERMISSIVE / DISABLE | inbound filter chains matching `transport_protocol: tls` (and `raw_buffer`) |
//!
//! Certificates are SDS resources named as Istio names them: `default` (the
//! workload's certificate and key) and `ROOTCA` (the trust bundle), both
//! over ADS.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster::TransportSocketMatch};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, Metadata, TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext, common_tls_context,
    subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::Struct;
use trellis_model::networking::{ClientTlsSettings, Protocol, TlsMode};

use crate::cluster::ads;
use crate::encode::{self, string_value};

/// SDS name of the workload's certificate and key (Istio's).
pub const SDS_DEFAULT: &str = "default";
/// SDS name of the mesh's trust bundle (Istio's).
pub const SDS_ROOTCA: &str = "ROOTCA";
/// Istio's label on a workload whose sidecar terminates mTLS.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// Endpoint metadata filter and key Envoy's `transport_socket_matches` read.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
pub const TLS_MODE_KEY: &str = "tlsMode";
pub const TLS_MODE_ISTIO: &str = "istio";
/// Names of the two auto mTLS matches (Istio's).
pub const MATCH_ISTIO: &str = "tlsMode-istio";
pub const MATCH_DISABLED: &str = "tlsMode-disabled";
/// Transport socket names.
pub const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
pub const RAW_SOCKET: &str = "envoy.transport_sockets.raw_buffer";
/// The trust domain service-account SANs are written in. Istio's default;
/// the control plane does not yet pass its CA's trust domain (docs/mtls.md).
pub const TRUST_DOMAIN: &str = "cluster.local";

/// Whether endpoint labels say the workload has a sidecar with mTLS.
pub fn is_istio(labels: &std::collections::BTreeMap<String, String>) -> bool {
    labels
        .get(TLS_MODE_LABEL)
        .is_some_and(|v| v == TLS_MODE_ISTIO)
}

/// Endpoint metadata for a workload with mTLS (None for the others).
pub fn endpoint_metadata(labels: &std::collections::BTreeMap<String, String>) -> Option<Metadata> {
    is_istio(labels).then(|| Metadata {
        filter_metadata: HashMap::from([(
            TRANSPORT_SOCKET_MATCH.to_string(),
            encode::make_struct(vec![(TLS_MODE_KEY, string_value(TLS_MODE_ISTIO))]),
        )]),
        ..Default::default()
    })
}

/// Istio's SNI for ISTIO_MUTUAL: `outbound_.<port>_.<subset>_.<host>`
/// (a cluster name with `|` is not a DNS name).
pub fn mesh_sni(port: u16, subset: Option<&str>, host: &str) -> String {
    format!("outbound_.{port}_.{}_.{host}", subset.unwrap_or(""))
}

/// What the proxy offers in ALPN: the protocol it will speak to the port
/// (trellis-proxy's `config::tls::alpn`), so a server cannot pick another.
pub fn alpn(protocol: Protocol) -> Vec<String> {
    match protocol {
        Protocol::Http => vec!["http/1.1".into()],
        Protocol::Http2 | Protocol::Grpc => vec!["h2".into()],
        Protocol::Tcp | Protocol::Tls => Vec::new(),
    }
}

/// `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ads()),
    }
}

fn uri_sans(sans: &[String]) -> Vec<SubjectAltNameMatcher> {
    sans.iter()
        .map(|s| SubjectAltNameMatcher {
            san_type: SanType::Uri as i32,
            matcher: Some(exact(s)),
            ..Default::default()
        })
        .collect()
}

fn dns_sans(sans: &[String]) -> Vec<SubjectAltNameMatcher> {
    sans.iter()
        .map(|s| SubjectAltNameMatcher {
            san_type: SanType::Dns as i32,
            matcher: Some(exact(s)),
            ..Default::default()
        })
        .collect()
}

fn exact(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(s.to_string())),
        ..Default::default()
    }
}

/// The workload certificate and the mesh roots, from SDS; `sans` (URI,
/// exact) are who may be on the other end (none: anyone the roots sign).
fn mesh_common(sans: &[String], alpn: Vec<String>) -> CommonTlsContext {
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(SDS_DEFAULT)],
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: uri_sans(sans),
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(SDS_ROOTCA)),
                    ..Default::default()
                },
            ),
        ),
        alpn_protocols: alpn,
        ..Default::default()
    }
}

/// ISTIO_MUTUAL to one cluster.
pub fn upstream_mesh(sni: String, sans: &[String], alpn: Vec<String>) -> UpstreamTlsContext {
    UpstreamTlsContext {
        common_tls_context: Some(mesh_common(sans, alpn)),
        sni,
        ..Default::default()
    }
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

/// SIMPLE or MUTUAL: the rule's files, by name (the proxy reads them; Envoy
/// too). `sni` defaults to the host, as trellis-proxy does; SANs are DNS
/// names there.
pub fn upstream_external(
    tls: &ClientTlsSettings,
    host: &str,
    alpn: Vec<String>,
) -> UpstreamTlsContext {
    let tls_certificates = match (&tls.mode, &tls.client_certificate, &tls.private_key) {
        (TlsMode::Mutual, Some(cert), Some(key)) => vec![TlsCertificate {
            certificate_chain: Some(file(cert)),
            private_key: Some(file(key)),
            ..Default::default()
        }],
        _ => Vec::new(),
    };
    UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates,
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: tls.ca_certificates.as_deref().map(file),
                        match_typed_subject_alt_names: dns_sans(&tls.subject_alt_names),
                        ..Default::default()
                    },
                ),
            ),
            alpn_protocols: alpn,
            ..Default::default()
        }),
        sni: tls.sni.clone().unwrap_or_else(|| host.to_string()),
        ..Default::default()
    }
}

/// The inbound side of mTLS: the client must present a certificate the
/// mesh roots sign.
pub fn downstream_mesh() -> DownstreamTlsContext {
    DownstreamTlsContext {
        common_tls_context: Some(mesh_common(&[], vec!["h2".into(), "http/1.1".into()])),
        require_client_certificate: Some(encode::boolv(true)),
        ..Default::default()
    }
}

pub fn tls_socket<M: prost::Message + prost::Name>(context: &M) -> TransportSocket {
    TransportSocket {
        name: TLS_SOCKET.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(encode::any(
            context,
        ))),
    }
}

fn raw_socket() -> TransportSocket {
    TransportSocket {
        name: RAW_SOCKET.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(encode::any(
            &RawBuffer {},
        ))),
    }
}

/// How a cluster's connections are secured.
#[derive(Debug, Clone, PartialEq)]
pub enum Upstream {
    Plaintext,
    /// Auto mTLS: TLS to endpoints whose workload has a sidecar.
    Auto(UpstreamTlsContext),
    /// Every endpoint.
    All(UpstreamTlsContext),
}

/// Sets the cluster's transport socket(s).
pub fn apply(c: &mut Cluster, tls: Upstream) {
    match tls {
        Upstream::Plaintext => {}
        Upstream::All(ctx) => c.transport_socket = Some(tls_socket(&ctx)),
        Upstream::Auto(ctx) => {
            c.transport_socket_matches = vec![
                TransportSocketMatch {
                    name: MATCH_ISTIO.to_string(),
                    r#match: Some(encode::make_struct(vec![(
                        TLS_MODE_KEY,
                        string_value(TLS_MODE_ISTIO),
                    )])),
                    transport_socket: Some(tls_socket(&ctx)),
                },
                TransportSocketMatch {
                    name: MATCH_DISABLED.to_string(),
                    r#match: Some(Struct::default()),
                    transport_socket: Some(raw_socket()),
                },
            ];
        }
    }
}
