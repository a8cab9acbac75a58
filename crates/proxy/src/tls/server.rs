//! The inbound side's TLS: the proxy's own certificate, and a client
//! certificate required and verified against the mesh roots (Istio's
//! STRICT/PERMISSIVE mTLS). ALPN accepts `h2` and `http/1.1`, so the
//! caller's inner protocol is kept.

use std::sync::{Arc, Mutex};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use super::credentials::{Credentials, CredentialsRx};

pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error("cannot build the client-certificate verifier from the roots: {0}")]
    Verifier(String),
    #[error("cannot use the workload certificate: {0}")]
    Certificate(rustls::Error),
}

/// A server config for one set of credentials.
pub fn server_config(
    creds: &Credentials,
    provider: &Arc<CryptoProvider>,
) -> Result<ServerConfig, ServerTlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(creds.root_store()), provider.clone())
            .build()
            .map_err(|e| ServerTlsError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(ServerTlsError::Certificate)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(ServerTlsError::Certificate)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    Ok(config)
}

#[derive(Debug)]
struct Built {
    creds: Arc<Credentials>,
    config: Arc<ServerConfig>,
    /// Our own SPIFFE ID, for `x-forwarded-client-cert`'s `By`.
    identity: Arc<str>,
}

/// The acceptor for the current credentials, rebuilt only when they
/// change: a handshake after a rotation uses the new certificate, and
/// connections already up are not touched.
#[derive(Debug)]
pub struct ServerTls {
    creds: CredentialsRx,
    provider: Arc<CryptoProvider>,
    built: Mutex<Option<Built>>,
}

impl ServerTls {
    pub fn new(creds: CredentialsRx, provider: Arc<CryptoProvider>) -> Self {
        ServerTls {
            creds,
            provider,
            built: Mutex::new(None),
        }
    }

    /// The acceptor and our own SPIFFE ID. None until credentials exist
    /// (or if they cannot be used, which their source has checked already).
    pub fn acceptor(&self) -> Option<(TlsAcceptor, Arc<str>)> {
        let current = self.creds.borrow().clone()?;
        let mut built = self
            .built
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(b) = built.as_ref()
            && Arc::ptr_eq(&b.creds, &current)
        {
            return Some((TlsAcceptor::from(b.config.clone()), b.identity.clone()));
        }
        let identity: Arc<str> = match current.identity() {
            Ok(id) => id.to_string().into(),
            Err(e) => {
                tracing::warn!(error = %e, "inbound TLS unavailable with the current certificate");
                return None;
            }
        };
        match server_config(&current, &self.provider) {
            Ok(config) => {
                let config = Arc::new(config);
                *built = Some(Built {
                    creds: current,
                    config: config.clone(),
                    identity: identity.clone(),
                });
                Some((TlsAcceptor::from(config), identity))
            }
            Err(e) => {
                tracing::warn!(error = %e, "inbound TLS unavailable with the current certificate");
                None
            }
        }
    }
}
