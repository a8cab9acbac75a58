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

/// The acceptor for the current credentials, rebuilt only when they
/// change: a handshake after a rotation uses the new certificate, and
/// connections already up are not touched.
#[derive(Debug)]
pub struct ServerTls {
    creds: CredentialsRx,
    provider: Arc<CryptoProvider>,
    built: Mutex<Option<(Arc<Credentials>, Arc<ServerConfig>)>>,
}

impl ServerTls {
    pub fn new(creds: CredentialsRx, provider: Arc<CryptoProvider>) -> Self {
        ServerTls {
            creds,
            provider,
            built: Mutex::new(None),
        }
    }

    /// None until credentials exist (or if they cannot be used, which their
    /// source has checked already).
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        let current = self.creds.borrow().clone()?;
        let mut built = self
            .built
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((c, a)) = built.as_ref()
            && Arc::ptr_eq(c, &current)
        {
            return Some(TlsAcceptor::from(a.clone()));
        }
        match server_config(&current, &self.provider) {
            Ok(config) => {
                let config = Arc::new(config);
                *built = Some((current, config.clone()));
                Some(TlsAcceptor::from(config))
            }
            Err(e) => {
                tracing::warn!(error = %e, "inbound TLS unavailable with the current certificate");
                None
            }
        }
    }
}
