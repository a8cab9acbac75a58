//! mTLS from xDS, in the shapes `trellis control` sends (Istio's): a
//! cluster's `transport_socket` / `transport_socket_matches` -> the proxy's
//! [`ClusterTls`], endpoint metadata `tlsMode` -> which endpoints get it,
//! the inbound listener's filter chains -> the PeerAuthentication mode.
//! Anything else is refused with the field's path (the NACK's message).
//!
//! The SDS names `default` (certificate and key) and `ROOTCA` (trust
//! bundle) stand for the proxy's own credentials (`--identity-dir`, or a
//! certificate from the control plane): a cluster or listener naming other
//! secrets is refused, as the proxy has no others.

use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as EnvoyCluster;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TransportSocket, data_source};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    UpstreamTlsContext, common_tls_context::ValidationContextType,
    subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use prost::Message;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use trellis_model::peer_authentication::{Effective, MtlsMode};

use crate::cluster::UpstreamProtocol;
use crate::config::tls::alpn;
use crate::tls::SpiffeId;
use crate::tls::client::{MeshConnector, external_config};
use crate::tls::origination::{ClusterTls, Origination};

pub const SDS_DEFAULT: &str = "default";
pub const SDS_ROOTCA: &str = "ROOTCA";
pub const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
pub const RAW_SOCKET: &str = "envoy.transport_sockets.raw_buffer";
/// Endpoint metadata filter Envoy's `transport_socket_matches` read.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
pub const TLS_MODE_KEY: &str = "tlsMode";
/// Key of the inbound listener's `trellis` metadata naming the
/// PeerAuthentication that set its mode.
pub const PEER_AUTHENTICATION_KEY: &str = "peer_authentication";

/// (field path, reason): the caller adds the resource.
pub type FieldError = (String, String);

fn fe(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    (field.into(), reason.into())
}

/// A cluster's TLS as converted. Equal when the settings are (the
/// origination key is made of them).
#[derive(Debug, Clone, Default)]
pub struct XdsTls(pub ClusterTls);

impl PartialEq for XdsTls {
    fn eq(&self, other: &XdsTls) -> bool {
        match (&self.0, &other.0) {
            (ClusterTls::Plaintext, ClusterTls::Plaintext) => true,
            (ClusterTls::Auto(a), ClusterTls::Auto(b))
            | (ClusterTls::All(a), ClusterTls::All(b)) => a.key == b.key,
            _ => false,
        }
    }
}

/// Whether endpoint metadata says the endpoint's workload has a sidecar
/// that terminates mTLS (`envoy.transport_socket_match: {tlsMode: istio}`).
pub fn endpoint_is_istio(
    metadata: Option<&envoy_types::pb::envoy::config::core::v3::Metadata>,
) -> bool {
    metadata
        .and_then(|m| m.filter_metadata.get(TRANSPORT_SOCKET_MATCH))
        .and_then(|s| s.fields.get(TLS_MODE_KEY))
        .is_some_and(|v| matches!(&v.kind, Some(Kind::StringValue(s)) if s == "istio"))
}

/// The cluster's TLS. `protocol` decides the ALPN offered (what the proxy
/// will speak), whatever the resource lists.
pub fn cluster(c: &EnvoyCluster, protocol: UpstreamProtocol) -> Result<XdsTls, FieldError> {
    match (&c.transport_socket, c.transport_socket_matches.as_slice()) {
        (None, []) => Ok(XdsTls(ClusterTls::Plaintext)),
        (Some(_), [_, ..]) => Err(fe(
            "transport_socket_matches",
            "give either transport_socket or transport_socket_matches, not both",
        )),
        (Some(t), []) => {
            let o =
                origination(t, protocol).map_err(|(f, r)| (format!("transport_socket.{f}"), r))?;
            Ok(XdsTls(ClusterTls::All(o)))
        }
        (None, matches) => {
            // Auto mTLS: exactly `{tlsMode: istio}` -> TLS, then a
            // plaintext default for everything else.
            let [istio, plain] = matches else {
                return Err(fe(
                    "transport_socket_matches",
                    "only auto mTLS is supported: a {tlsMode: istio} match with TLS, then a match-all with raw_buffer",
                ));
            };
            let is_tls_mode_istio = |s: Option<&Struct>| {
                s.is_some_and(|s| {
                    s.fields.len() == 1
                        && s.fields.get(TLS_MODE_KEY).is_some_and(
                            |v| matches!(&v.kind, Some(Kind::StringValue(m)) if m == "istio"),
                        )
                })
            };
            if !is_tls_mode_istio(istio.r#match.as_ref()) {
                return Err(fe(
                    "transport_socket_matches[0].match",
                    "must be {tlsMode: istio}",
                ));
            }
            if plain.r#match.as_ref().is_some_and(|m| !m.fields.is_empty()) {
                return Err(fe(
                    "transport_socket_matches[1].match",
                    "must be empty (the plaintext default)",
                ));
            }
            if plain
                .transport_socket
                .as_ref()
                .is_some_and(|t| t.name != RAW_SOCKET)
            {
                return Err(fe(
                    "transport_socket_matches[1].transport_socket.name",
                    format!("must be {RAW_SOCKET}"),
                ));
            }
            let Some(t) = &istio.transport_socket else {
                return Err(fe(
                    "transport_socket_matches[0].transport_socket",
                    "is required",
                ));
            };
            let o = origination(t, protocol).map_err(|(f, r)| {
                (
                    format!("transport_socket_matches[0].transport_socket.{f}"),
                    r,
                )
            })?;
            if o.mode != "ISTIO_MUTUAL" {
                return Err(fe(
                    "transport_socket_matches[0].transport_socket",
                    "auto mTLS uses the workload certificate (SDS default and ROOTCA)",
                ));
            }
            Ok(XdsTls(ClusterTls::Auto(o)))
        }
    }
}

fn upstream_context(t: &TransportSocket) -> Result<UpstreamTlsContext, FieldError> {
    if t.name != TLS_SOCKET {
        return Err(fe(
            "name",
            format!("{:?} is not supported (only {TLS_SOCKET})", t.name),
        ));
    }
    let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
        any,
    )) = &t.config_type
    else {
        return Err(fe("typed_config", "is required"));
    };
    if !any.type_url.ends_with(".UpstreamTlsContext") {
        return Err(fe(
            "typed_config",
            format!("{} is not an UpstreamTlsContext", any.type_url),
        ));
    }
    UpstreamTlsContext::decode(any.value.as_slice())
        .map_err(|e| fe("typed_config", format!("does not decode: {e}")))
}

/// SDS `default` for the certificate, and `ROOTCA` (plus SAN matchers)
/// for validation: the mesh's shape. Returns the URI SANs.
fn mesh_common(c: &CommonTlsContext) -> Result<Option<Vec<String>>, FieldError> {
    let sds_ok = |s: &SdsSecretConfig, want: &str, field: &str| {
        if s.name != want {
            return Err(fe(
                format!("{field}.name"),
                format!(
                    "{:?}: the proxy has only its own credentials, SDS {SDS_DEFAULT} and {SDS_ROOTCA}",
                    s.name
                ),
            ));
        }
        Ok(())
    };
    match c.tls_certificate_sds_secret_configs.as_slice() {
        [] => return Ok(None),
        [s] => sds_ok(
            s,
            SDS_DEFAULT,
            "common_tls_context.tls_certificate_sds_secret_configs[0]",
        )?,
        _ => {
            return Err(fe(
                "common_tls_context.tls_certificate_sds_secret_configs",
                "at most one (SDS default)",
            ));
        }
    }
    let field = "common_tls_context.combined_validation_context";
    let Some(ValidationContextType::CombinedValidationContext(v)) = &c.validation_context_type
    else {
        return Err(fe(
            field,
            "is required with SDS default (ROOTCA and the allowed SANs)",
        ));
    };
    let Some(s) = &v.validation_context_sds_secret_config else {
        return Err(fe(
            format!("{field}.validation_context_sds_secret_config"),
            "is required (ROOTCA)",
        ));
    };
    sds_ok(
        s,
        SDS_ROOTCA,
        &format!("{field}.validation_context_sds_secret_config"),
    )?;
    let sans = match &v.default_validation_context {
        Some(d) => sans(
            d,
            SanType::Uri,
            &format!("{field}.default_validation_context"),
        )?,
        None => Vec::new(),
    };
    Ok(Some(sans))
}

fn sans(
    v: &CertificateValidationContext,
    kind: SanType,
    field: &str,
) -> Result<Vec<String>, FieldError> {
    v.match_typed_subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("{field}.match_typed_subject_alt_names[{i}]");
            if m.san_type != kind as i32 {
                return Err(fe(
                    format!("{at}.san_type"),
                    format!("only {} SANs are supported here", kind.as_str_name()),
                ));
            }
            match m.matcher.as_ref().and_then(|m| m.match_pattern.as_ref()) {
                Some(MatchPattern::Exact(s)) => Ok(s.clone()),
                _ => Err(fe(
                    format!("{at}.matcher"),
                    "only exact matches are supported",
                )),
            }
        })
        .collect()
}

fn filename(d: Option<&DataSource>, field: &str) -> Result<Option<String>, FieldError> {
    match d.and_then(|d| d.specifier.as_ref()) {
        None => Ok(None),
        Some(data_source::Specifier::Filename(f)) => Ok(Some(f.clone())),
        Some(_) => Err(fe(field, "only filename data sources are supported")),
    }
}

fn origination(
    t: &TransportSocket,
    protocol: UpstreamProtocol,
) -> Result<Arc<Origination>, FieldError> {
    let ctx = upstream_context(t)?;
    let Some(common) = &ctx.common_tls_context else {
        return Err(fe("typed_config.common_tls_context", "is required"));
    };
    let at = |f: &str| format!("typed_config.{f}");
    let sni = ServerName::try_from(ctx.sni.clone())
        .map_err(|e| fe(at("sni"), format!("{:?}: {e}", ctx.sni)))?;
    if let Some(names) = mesh_common(common).map_err(|(f, r)| (at(&f), r))? {
        // ISTIO_MUTUAL: who may serve is the SAN list (none: our trust domain).
        let ids = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                SpiffeId::parse(n).map_err(|e| {
                    fe(at(&format!("common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names[{i}]")), e.to_string())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let settings = (names.clone(), alpn(protocol));
        return Ok(Arc::new(Origination::mesh(
            sni,
            MeshConnector::new(ids, Vec::new(), alpn(protocol), crate::tls::provider()),
            &settings,
        )));
    }
    // SIMPLE or MUTUAL, from files: read here so a bad file is a NACK.
    let field = "common_tls_context.validation_context";
    let Some(ValidationContextType::ValidationContext(v)) = &common.validation_context_type else {
        return Err(fe(at(field), "is required (trusted_ca as a filename)"));
    };
    let ca = filename(v.trusted_ca.as_ref(), &at(&format!("{field}.trusted_ca")))?
        .ok_or_else(|| fe(at(&format!("{field}.trusted_ca")), "is required"))?;
    let names = sans(v, SanType::Dns, &at(field))?;
    let server_names = names
        .iter()
        .map(|n| {
            ServerName::try_from(n.clone()).map_err(|e| {
                fe(
                    at(&format!("{field}.match_typed_subject_alt_names")),
                    format!("{n:?}: {e}"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let roots = CertificateDer::pem_file_iter(&ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|_| {
            fe(
                at(&format!("{field}.trusted_ca")),
                format!("{ca}: cannot read PEM certificates"),
            )
        })?;
    if roots.is_empty() {
        return Err(fe(
            at(&format!("{field}.trusted_ca")),
            format!("{ca}: holds no certificate"),
        ));
    }
    let (mode, client, files) = match common.tls_certificates.as_slice() {
        [] => ("SIMPLE", None, None),
        [c] => {
            let f = "common_tls_context.tls_certificates[0]";
            let cert = filename(
                c.certificate_chain.as_ref(),
                &at(&format!("{f}.certificate_chain")),
            )?
            .ok_or_else(|| fe(at(&format!("{f}.certificate_chain")), "is required"))?;
            let key = filename(c.private_key.as_ref(), &at(&format!("{f}.private_key")))?
                .ok_or_else(|| fe(at(&format!("{f}.private_key")), "is required"))?;
            let chain = CertificateDer::pem_file_iter(&cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|_| {
                    fe(
                        at(&format!("{f}.certificate_chain")),
                        format!("{cert}: cannot read PEM certificates"),
                    )
                })?;
            // Never the key's bytes in an error: the path only.
            let pk = PrivateKeyDer::from_pem_file(&key).map_err(|_| {
                fe(
                    at(&format!("{f}.private_key")),
                    format!("{key}: cannot read a PEM private key"),
                )
            })?;
            ("MUTUAL", Some((chain, pk)), Some((cert, key)))
        }
        _ => return Err(fe(at("common_tls_context.tls_certificates"), "at most one")),
    };
    let provider = crate::tls::provider();
    let config = external_config(roots, client, server_names, alpn(protocol), &provider)
        .map_err(|e| fe(at("common_tls_context"), e.to_string()))?;
    let settings = (Some(ca), files, names, alpn(protocol));
    Ok(Arc::new(Origination::external(
        mode,
        sni,
        Arc::new(config),
        &settings,
    )))
}

/// The PeerAuthentication mode the inbound listener's chains express: a
/// chain with mTLS and one without is PERMISSIVE, mTLS only STRICT,
/// plaintext only DISABLE. `from` comes from the listener's `trellis`
/// metadata.
pub fn inbound(l: &Listener) -> Result<Effective, FieldError> {
    let chains = l
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("filter_chains[{i}]"), c))
        .chain(
            l.default_filter_chain
                .iter()
                .map(|c| ("default_filter_chain".to_string(), c)),
        );
    let (mut tls, mut plain) = (false, false);
    for (at, chain) in chains {
        match &chain.transport_socket {
            None => plain = true,
            Some(t) => {
                downstream(chain, t).map_err(|(f, r)| (format!("{at}.{f}"), r))?;
                tls = true;
            }
        }
    }
    let mode = match (tls, plain) {
        (true, true) => MtlsMode::Permissive,
        (true, false) => MtlsMode::Strict,
        (false, _) => MtlsMode::Disable,
    };
    let from = l
        .metadata
        .as_ref()
        .and_then(|m| {
            m.filter_metadata
                .get(crate::xds::convert::names::TRELLIS_METADATA)
        })
        .and_then(|s| s.fields.get(PEER_AUTHENTICATION_KEY))
        .and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        });
    Ok(Effective { mode, from })
}

/// An mTLS chain: TLS detected, the workload certificate, clients
/// required to present one the mesh roots sign.
fn downstream(chain: &FilterChain, t: &TransportSocket) -> Result<(), FieldError> {
    if chain
        .filter_chain_match
        .as_ref()
        .is_none_or(|m| m.transport_protocol != "tls")
    {
        return Err(fe(
            "filter_chain_match.transport_protocol",
            "a chain with TLS must match transport_protocol: tls",
        ));
    }
    if t.name != TLS_SOCKET {
        return Err(fe(
            "transport_socket.name",
            format!("{:?} is not supported (only {TLS_SOCKET})", t.name),
        ));
    }
    let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
        any,
    )) = &t.config_type
    else {
        return Err(fe("transport_socket.typed_config", "is required"));
    };
    let d = DownstreamTlsContext::decode(any.value.as_slice()).map_err(|e| {
        fe(
            "transport_socket.typed_config",
            format!("does not decode: {e}"),
        )
    })?;
    if d.require_client_certificate.is_none_or(|b| !b.value) {
        return Err(fe(
            "transport_socket.typed_config.require_client_certificate",
            "must be true: inbound TLS is mutual",
        ));
    }
    let common = d.common_tls_context.as_ref().ok_or_else(|| {
        fe(
            "transport_socket.typed_config.common_tls_context",
            "is required",
        )
    })?;
    match mesh_common(common).map_err(|(f, r)| (format!("transport_socket.typed_config.{f}"), r))? {
        Some(sans) if sans.is_empty() => Ok(()),
        Some(_) => Err(fe(
            "transport_socket.typed_config.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names",
            "not supported inbound: who may call is AuthorizationPolicy's job",
        )),
        None => Err(fe(
            "transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs",
            "must be SDS default: the proxy serves its own certificate",
        )),
    }
}
