//! The proxy's workload credentials, as the TLS layer sees them: a
//! certificate chain, its private key and the trust roots, published on a
//! `watch` channel. Whoever produces them (an identity directory today, the
//! control plane's CA over SDS later) sends a new value; every new handshake
//! uses the newest, and connections already up keep theirs, so a rotation
//! restarts no listener and drops no connection.

use std::fmt;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use super::spiffe::{SpiffeError, SpiffeId};

/// A workload's certificate chain (leaf first), its key and the roots it
/// trusts for peers.
pub struct Credentials {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
}

/// The key is never printed: Debug output ends up in logs.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field(
                "chain",
                &format_args!("{} certificate(s)", self.chain.len()),
            )
            .field("key", &format_args!("<redacted>"))
            .field(
                "roots",
                &format_args!("{} certificate(s)", self.roots.len()),
            )
            .finish()
    }
}

/// What the TLS layer reads: `None` until a source has produced a first set.
pub type CredentialsRx = watch::Receiver<Option<Arc<Credentials>>>;
pub type CredentialsTx = watch::Sender<Option<Arc<Credentials>>>;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("the certificate chain is empty")]
    EmptyChain,
    #[error("no trust roots: peers could not be verified")]
    NoRoots,
    #[error("the private key does not fit the certificate or cannot be used: {0}")]
    Key(rustls::Error),
    #[error("the leaf certificate has no usable SPIFFE ID: {0}")]
    Identity(SpiffeError),
    #[error("the leaf certificate has no spiffe:// URI SAN: it is not a workload certificate")]
    NoIdentity,
    #[error("a trust root cannot be used: {0}")]
    Root(rustls::Error),
}

impl Credentials {
    /// The workload's own SPIFFE ID, from its leaf certificate.
    pub fn identity(&self) -> Result<SpiffeId, CredentialsError> {
        let leaf = self.chain.first().ok_or(CredentialsError::EmptyChain)?;
        SpiffeId::from_cert(leaf)
            .map_err(CredentialsError::Identity)?
            .ok_or(CredentialsError::NoIdentity)
    }

    /// Everything a handshake will need, checked up front so that a bad set
    /// is refused by its source (and the last good one kept) instead of
    /// failing every handshake: a leaf with a SPIFFE ID, a key that matches
    /// it, at least one usable root.
    pub fn check(&self, provider: &CryptoProvider) -> Result<SpiffeId, CredentialsError> {
        let identity = self.identity()?;
        CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), provider)
            .map_err(CredentialsError::Key)?;
        if self.roots.is_empty() {
            return Err(CredentialsError::NoRoots);
        }
        let mut store = rustls::RootCertStore::empty();
        for root in &self.roots {
            store.add(root.clone()).map_err(CredentialsError::Root)?;
        }
        Ok(identity)
    }

    /// What `/config_dump` shows: the identity, the leaf's validity and
    /// serial, and how many roots are trusted. Never the key.
    pub fn summary(&self) -> serde_json::Value {
        let leaf = self
            .chain
            .first()
            .and_then(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
            .map(|(_, cert)| {
                serde_json::json!({
                    "serial": cert.raw_serial_as_string(),
                    "not_before": cert.validity().not_before.to_rfc2822().ok(),
                    "not_after": cert.validity().not_after.to_rfc2822().ok(),
                    "not_after_unix": cert.validity().not_after.timestamp(),
                    "issuer": cert.issuer().to_string(),
                })
            });
        serde_json::json!({
            "spiffe_id": self.identity().ok().map(|id| id.to_string()),
            "certificate": leaf,
            "chain_length": self.chain.len(),
            "trusted_roots": self.roots.len(),
        })
    }

    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut store = rustls::RootCertStore::empty();
        // Checked by `check` before publication; a root that is refused
        // here anyway only narrows what is trusted.
        let (_, _) = store.add_parsable_certificates(self.roots.iter().cloned());
        store
    }
}

/// The crypto every config uses: aws-lc-rs, with the suites that fit ECDSA
/// P-256 workload keys (TLS 1.3's are key-agnostic; TLS 1.2 is limited to
/// ECDHE-ECDSA with AEADs).
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let secret = vec![0x30, 0x42, 0x13, 0x37, 0xde, 0xad];
        let c = Credentials {
            chain: vec![],
            key: PrivateKeyDer::Pkcs8(secret.clone().into()),
            roots: vec![],
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("<redacted>"), "{shown}");
        // Neither as decimal bytes (Vec's Debug) nor as hex.
        assert!(
            !shown.contains("48, 66") && !shown.contains("304213"),
            "{shown}"
        );
    }
}
