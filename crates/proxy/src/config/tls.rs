//! DestinationRule `tls` and auto mTLS -> how a cluster's connections are
//! secured ([`ClusterTls`]). SIMPLE and MUTUAL read their PEM files here,
//! on the config thread, so a missing or bad file is a config error with
//! the field's path, and the last good config keeps serving.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use trellis_model::networking::{ClientTlsSettings, TlsMode};
use trellis_model::validate::Service;

use super::policy::FieldError;
use crate::cluster::UpstreamProtocol;
use crate::tls::SpiffeId;
use crate::tls::client::{MeshConnector, external_config};
use crate::tls::origination::{ClusterTls, Origination, mesh_sni};
use crate::tls::server::{ALPN_H2, ALPN_HTTP11};

/// What the proxy offers in ALPN: the protocol it will speak, so the
/// server cannot pick another (an HTTP/1.1 cluster stays HTTP/1.1; opaque
/// TCP offers nothing).
pub fn alpn(protocol: UpstreamProtocol) -> &'static [&'static [u8]] {
    match protocol {
        UpstreamProtocol::Http2 => &[ALPN_H2],
        UpstreamProtocol::Http1 => &[ALPN_HTTP11],
        UpstreamProtocol::Opaque => &[],
    }
}

/// One cluster (service, port, subset)'s TLS.
pub struct Destination<'a> {
    pub service: &'a Service,
    pub port: u16,
    pub subset: Option<&'a str>,
    pub protocol: UpstreamProtocol,
}

pub fn cluster_tls(
    setting: Option<&ClientTlsSettings>,
    d: &Destination,
    has_certificate: bool,
) -> Result<ClusterTls, FieldError> {
    let provider = crate::tls::provider();
    let Some(tls) = setting else {
        // Istio's auto mTLS: only a proxy with a certificate can.
        return Ok(if has_certificate {
            ClusterTls::Auto(Arc::new(mesh(&[], d)?))
        } else {
            ClusterTls::Plaintext
        });
    };
    match tls.mode {
        TlsMode::Disable => Ok(ClusterTls::Plaintext),
        TlsMode::IstioMutual if !has_certificate => Err((
            "tls.mode".into(),
            "ISTIO_MUTUAL needs this proxy's workload certificate: start it with --identity-dir DIR"
                .into(),
        )),
        TlsMode::IstioMutual => Ok(ClusterTls::All(Arc::new(mesh(&tls.subject_alt_names, d)?))),
        TlsMode::Simple | TlsMode::Mutual => {
            let sni_name = tls.sni.clone().unwrap_or_else(|| d.service.host.clone());
            let sni = ServerName::try_from(sni_name.clone())
                .map_err(|e| ("tls.sni".to_string(), format!("{sni_name:?}: {e}")))?;
            let names = tls
                .subject_alt_names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    ServerName::try_from(n.clone()).map_err(|e| {
                        (format!("tls.subjectAltNames[{i}]"), format!("{n:?}: {e}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let ca_path = tls.ca_certificates.as_deref().unwrap_or_default();
            let roots = read_certs("tls.caCertificates", ca_path)?;
            let client = match tls.mode {
                TlsMode::Mutual => {
                    let cert_path = tls.client_certificate.as_deref().unwrap_or_default();
                    let key_path = tls.private_key.as_deref().unwrap_or_default();
                    let chain = read_certs("tls.clientCertificate", cert_path)?;
                    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
                        (
                            "tls.privateKey".to_string(),
                            // The error's kind only: never the key's bytes.
                            format!("{key_path}: cannot read a PEM private key ({})", pem_kind(&e)),
                        )
                    })?;
                    Some((chain, key))
                }
                _ => None,
            };
            let config = external_config(roots, client, names, alpn(d.protocol), &provider)
                .map_err(|e| ("tls".to_string(), e.to_string()))?;
            let mode = tls.mode.name();
            let settings = (
                &tls.ca_certificates,
                &tls.client_certificate,
                &tls.private_key,
                &tls.subject_alt_names,
                alpn(d.protocol),
            );
            Ok(ClusterTls::All(Arc::new(Origination::external(
                mode,
                sni,
                Arc::new(config),
                &settings,
            ))))
        }
    }
}

/// ISTIO_MUTUAL to this destination. Who may serve it: the
/// DestinationRule's `subjectAltNames`, else the ServiceEntry's, plus the
/// service accounts of its workload entries; none: any identity of the
/// mesh's trust domain.
fn mesh(dr_names: &[String], d: &Destination) -> Result<Origination, FieldError> {
    let (names, field) = if dr_names.is_empty() {
        (&d.service.subject_alt_names, "ServiceEntry subjectAltNames")
    } else {
        (&dr_names.to_vec(), "tls.subjectAltNames")
    };
    let ids = names
        .iter()
        .map(|n| SpiffeId::parse(n).map_err(|e| (field.to_string(), e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut accounts: Vec<(String, String)> = if dr_names.is_empty() {
        d.service
            .endpoints
            .iter()
            .filter_map(|e| e.service_account.clone())
            .map(|sa| (d.service.namespace.clone(), sa))
            .collect()
    } else {
        Vec::new()
    };
    accounts.sort();
    accounts.dedup();
    let sni = mesh_sni(d.port, d.subset, &d.service.host).ok_or_else(|| {
        (
            "host".to_string(),
            format!("{} does not make a valid SNI", d.service.host),
        )
    })?;
    let settings = (names.clone(), accounts.clone(), alpn(d.protocol));
    Ok(Origination::mesh(
        sni,
        MeshConnector::new(ids, accounts, alpn(d.protocol), crate::tls::provider()),
        &settings,
    ))
}

fn read_certs(field: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, FieldError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            (
                field.to_string(),
                format!("{path}: cannot read PEM certificates ({})", pem_kind(&e)),
            )
        })?;
    if certs.is_empty() {
        return Err((field.to_string(), format!("{path}: holds no certificate")));
    }
    Ok(certs)
}

fn pem_kind(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::Io(io) => io.to_string(),
        E::NoItemsFound => "no PEM block of the right type".into(),
        E::Base64Decode(_) => "bad base64".into(),
        E::MissingSectionEnd { .. } => "a BEGIN line without its END line".into(),
        E::IllegalSectionStart { .. } => "a malformed BEGIN line".into(),
        _ => "unreadable PEM".into(),
    }
}
