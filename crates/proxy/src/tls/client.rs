//! The outbound side's TLS: origination to meshed peers (ISTIO_MUTUAL: the
//! proxy's own certificate, the peer verified against the mesh roots and
//! its SPIFFE ID against the identities allowed to serve the destination;
//! the DNS name is not checked, as in Istio) and to servers outside the
//! mesh (DestinationRule SIMPLE and MUTUAL, with the usual name checks).

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, SignatureScheme};
use tokio_rustls::TlsConnector;

use super::credentials::{Credentials, CredentialsRx};
use super::spiffe::SpiffeId;

/// The server presented a valid certificate whose identity may not serve
/// this destination (secure naming). Carried inside rustls's error so that
/// the caller can tell it from other handshake failures.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the server's identity {found} is not allowed for this destination (allowed: {allowed})")]
pub struct IdentityNotAllowed {
    pub found: String,
    pub allowed: String,
}

/// Who may serve a destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Allowed {
    /// Any identity of this trust domain (the destination names none).
    TrustDomain(String),
    /// Exactly these.
    Ids(Vec<SpiffeId>),
}

impl Allowed {
    pub fn admits(&self, id: &SpiffeId) -> bool {
        match self {
            Allowed::TrustDomain(td) => id.trust_domain() == td,
            Allowed::Ids(ids) => ids.contains(id),
        }
    }
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allowed::TrustDomain(td) => write!(f, "any identity of trust domain {td}"),
            Allowed::Ids(ids) => {
                let ids: Vec<String> = ids.iter().map(SpiffeId::to_string).collect();
                f.write_str(&ids.join(", "))
            }
        }
    }
}

/// Chain to the mesh roots, then secure naming on the SPIFFE ID.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: rustls::RootCertStore,
    allowed: Allowed,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let id = SpiffeId::from_cert(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let not_allowed = |found: String| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                IdentityNotAllowed {
                    found,
                    allowed: self.allowed.to_string(),
                },
            ))))
        };
        match id {
            Some(id) if self.allowed.admits(&id) => Ok(ServerCertVerified::assertion()),
            Some(id) => Err(not_allowed(id.to_string())),
            None => Err(not_allowed("(none: no spiffe:// URI SAN)".to_string())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("this proxy has no workload certificate (start it with --identity-dir)")]
    NoCredentials,
    #[error("cannot build a TLS client config: {0}")]
    Config(rustls::Error),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("cannot verify servers: {0}")]
    Verifier(String),
}

/// ISTIO_MUTUAL: our certificate, the mesh roots, secure naming.
pub fn istio_mutual_config(
    creds: &Credentials,
    allowed: Allowed,
    alpn: &[&[u8]],
    provider: &Arc<CryptoProvider>,
) -> Result<ClientConfig, ClientTlsError> {
    let verifier = SpiffeServerVerifier {
        roots: creds.root_store(),
        allowed,
        algs: provider.signature_verification_algorithms,
    };
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(ClientTlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(ClientTlsError::Config)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// `subjectAltNames` for SIMPLE/MUTUAL: the server's certificate must be
/// valid for one of these names (instead of the SNI).
#[derive(Debug)]
struct AnyNameVerifier {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for AnyNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        for name in &self.names {
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
            {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// SIMPLE and MUTUAL: a server outside the mesh, verified by the CA file
/// given and its DNS name (the SNI, or one of `names` when given).
pub fn external_config(
    roots: Vec<CertificateDer<'static>>,
    client: Option<(
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
    names: Vec<ServerName<'static>>,
    alpn: &[&[u8]],
    provider: &Arc<CryptoProvider>,
) -> Result<ClientConfig, ClientTlsError> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r).map_err(ClientTlsError::Config)?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        .map_err(|e| ClientTlsError::Verifier(e.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(ClientTlsError::Config)?;
    let builder = if names.is_empty() {
        builder.with_webpki_verifier(verifier)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyNameVerifier {
                inner: verifier,
                names,
            }))
    };
    let mut config = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(ClientTlsError::Config)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// ISTIO_MUTUAL connectors for one destination, rebuilt when the
/// credentials rotate.
#[derive(Debug)]
pub struct MeshConnector {
    /// With `service_accounts` empty too: any identity of our own trust domain.
    pub allowed_ids: Vec<SpiffeId>,
    /// `(namespace, service account)` of the destination's workloads,
    /// allowed under our own trust domain (Istio's secure naming from
    /// WorkloadEntry `serviceAccount`).
    pub service_accounts: Vec<(String, String)>,
    pub alpn: &'static [&'static [u8]],
    provider: Arc<CryptoProvider>,
    built: Mutex<Option<(Arc<Credentials>, Arc<ClientConfig>)>>,
}

impl MeshConnector {
    pub fn new(
        allowed_ids: Vec<SpiffeId>,
        service_accounts: Vec<(String, String)>,
        alpn: &'static [&'static [u8]],
        provider: Arc<CryptoProvider>,
    ) -> Self {
        MeshConnector {
            allowed_ids,
            service_accounts,
            alpn,
            provider,
            built: Mutex::new(None),
        }
    }

    pub fn connector(&self, creds: Option<&CredentialsRx>) -> Result<TlsConnector, ClientTlsError> {
        let current = creds
            .and_then(|rx| rx.borrow().clone())
            .ok_or(ClientTlsError::NoCredentials)?;
        let mut built = self
            .built
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((c, conn)) = built.as_ref()
            && Arc::ptr_eq(c, &current)
        {
            return Ok(TlsConnector::from(conn.clone()));
        }
        let own = current
            .identity()
            .map_err(|e| ClientTlsError::Verifier(e.to_string()))?;
        let allowed = if self.allowed_ids.is_empty() && self.service_accounts.is_empty() {
            Allowed::TrustDomain(own.trust_domain().to_string())
        } else {
            let mut ids = self.allowed_ids.clone();
            ids.extend(
                self.service_accounts
                    .iter()
                    .filter_map(|(ns, sa)| SpiffeId::istio(own.trust_domain(), ns, sa).ok()),
            );
            Allowed::Ids(ids)
        };
        let config = istio_mutual_config(&current, allowed, self.alpn, &self.provider)?;
        let config = Arc::new(config);
        *built = Some((current, config.clone()));
        Ok(TlsConnector::from(config))
    }
}

impl MeshConnector {
    /// For `/config_dump`: who may serve, as configured.
    pub fn allowed_names(&self) -> Vec<String> {
        self.allowed_ids
            .iter()
            .map(SpiffeId::to_string)
            .chain(
                self.service_accounts
                    .iter()
                    .map(|(ns, sa)| format!("spiffe://<trust-domain>/ns/{ns}/sa/{sa}")),
            )
            .collect()
    }
}

/// The secure-naming failure inside a handshake error, if that is what it was.
pub fn identity_not_allowed(e: &std::io::Error) -> Option<IdentityNotAllowed> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    match inner {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(o))) => {
            o.downcast_ref::<IdentityNotAllowed>().cloned()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_naming_admits() {
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        let a = id("spiffe://cluster.local/ns/default/sa/reviews");
        let b = id("spiffe://cluster.local/ns/default/sa/ratings");
        let other_td = id("spiffe://other.local/ns/default/sa/reviews");
        let td = Allowed::TrustDomain("cluster.local".into());
        assert!(td.admits(&a) && td.admits(&b) && !td.admits(&other_td));
        let only_a = Allowed::Ids(vec![a.clone()]);
        assert!(only_a.admits(&a) && !only_a.admits(&b) && !only_a.admits(&other_td));
        assert_eq!(
            only_a.to_string(),
            "spiffe://cluster.local/ns/default/sa/reviews"
        );
    }
}
