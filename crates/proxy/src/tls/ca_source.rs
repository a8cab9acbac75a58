//! The workload's credentials from the control plane's CA, the second
//! source next to an identity directory: the proxy makes its own key (it
//! never leaves the process), sends a CSR with its bootstrap token over
//! Istio's CA protocol (`IstioCertificateService/CreateCertificate` on the
//! xDS address), and renews at half-life. The trust roots come from the
//! `ROOTCA` Secret the xDS client receives (SDS), so a root rotation reaches
//! the proxy without a new certificate; until the first `ROOTCA` arrives
//! the root that ends the CA's chain is trusted.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;
use tonic::transport::Channel;
use trellis_identity::proto::{
    CREATE_CERTIFICATE, IstioCertificateRequest, IstioCertificateResponse,
};

use super::credentials::{Credentials, CredentialsError, CredentialsTx};
use super::spiffe::SpiffeId;

/// Why a certificate could not be had (each retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("could not make a key pair or CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("the control plane's CA is unreachable at {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error(
        "the CA refused the CSR ({code:?}): {message}; check the bootstrap token (trellis token create)"
    )]
    Refused { code: tonic::Code, message: String },
    #[error("the CA answered with no certificate")]
    EmptyChain,
    #[error("the CA's certificate {index} is not PEM: {reason}")]
    Pem { index: usize, reason: String },
    #[error("the issued certificate cannot be used: {0}")]
    Unusable(#[from] CredentialsError),
    #[error("the issued certificate's validity cannot be read: {0}")]
    Validity(String),
}

/// What a proxy needs to ask the CA.
#[derive(Clone)]
pub struct CaSettings {
    /// The xDS address (`http://host:port`), where the CA is served too.
    pub endpoint: String,
    /// The bootstrap token; never logged.
    pub token: Arc<str>,
    /// Requested lifetime; `None`: the CA's default (24 h).
    pub lifetime: Option<Duration>,
}

impl std::fmt::Debug for CaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSettings")
            .field("endpoint", &self.endpoint)
            .field("token", &format_args!("<redacted>"))
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// A certificate the CA issued, with its key and when to renew it.
pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub renew_at: SystemTime,
}

/// A fresh ECDSA P-256 key and a PEM CSR for it. The CA takes only the
/// public key from the CSR (the identity comes from the token), so the
/// request names nothing.
pub fn key_and_csr() -> Result<(PrivateKeyDer<'static>, String), rcgen::Error> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    let der = PrivatePkcs8KeyDer::from(key.serialize_der());
    Ok((PrivateKeyDer::Pkcs8(der), csr.pem()?))
}

/// When to renew a certificate valid until `not_after`, received `now`:
/// halfway through what is left of it, and never sooner than a second from
/// now (a clock far off must not make the proxy hammer its CA). What is
/// left, not its whole validity: the CA backdates `not_before` a minute
/// for clock skew, which would otherwise pull renewal a minute early for
/// every certificate, and make a short-lived one renew at once.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> SystemTime {
    let soonest = now + Duration::from_secs(1);
    let start = not_before.max(now);
    match not_after.duration_since(start) {
        Ok(left) if !left.is_zero() => (start + left / 2).max(soonest),
        // Expired or no lifetime at all: ask again.
        _ => soonest,
    }
}

/// One CSR, start to end.
pub async fn obtain(settings: &CaSettings, provider: &CryptoProvider) -> Result<Issued, CaError> {
    let (key, csr) = key_and_csr()?;
    let channel = Channel::from_shared(settings.endpoint.clone())
        .map_err(|e| CaError::Refused {
            code: tonic::Code::InvalidArgument,
            message: format!("bad CA address {}: {e}", settings.endpoint),
        })?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|source| CaError::Connect {
            addr: settings.endpoint.clone(),
            source,
        })?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|source| CaError::Connect {
        addr: settings.endpoint.clone(),
        source,
    })?;
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: settings
            .lifetime
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        metadata: None,
    });
    let bearer = format!("Bearer {}", settings.token)
        .parse()
        .map_err(|_| CaError::Refused {
            code: tonic::Code::InvalidArgument,
            message: "the bootstrap token holds characters a header cannot carry".into(),
        })?;
    request.metadata_mut().insert("authorization", bearer);
    let codec =
        tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default();
    let path = http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE);
    let response = grpc
        .unary(request, path, codec)
        .await
        .map_err(|s| CaError::Refused {
            code: s.code(),
            message: s.message().to_string(),
        })?
        .into_inner();
    let chain = parse_chain(&response.cert_chain)?;
    let leaf = chain.first().ok_or(CaError::EmptyChain)?;
    let (not_before, not_after) = validity(leaf)?;
    // Checked now so a bad answer is retried rather than published.
    let check = Credentials {
        chain: chain.clone(),
        key: key.clone_key(),
        roots: chain.last().cloned().into_iter().collect(),
    };
    check.check(provider)?;
    Ok(Issued {
        renew_at: renew_at(not_before, not_after, SystemTime::now()),
        chain,
        key,
    })
}

fn parse_chain(pems: &[String]) -> Result<Vec<CertificateDer<'static>>, CaError> {
    use rustls_pki_types::pem::PemObject;
    let mut out = Vec::new();
    for (index, pem) in pems.iter().enumerate() {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            out.push(cert.map_err(|e| CaError::Pem {
                index,
                reason: e.to_string(),
            })?);
        }
    }
    if out.is_empty() {
        return Err(CaError::EmptyChain);
    }
    Ok(out)
}

fn validity(leaf: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), CaError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| CaError::Validity(e.to_string()))?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    Ok((
        at(cert.validity().not_before),
        at(cert.validity().not_after),
    ))
}

/// The trust bundle as the xDS client publishes it: the `ROOTCA` Secret's
/// PEM, `None` until it arrives.
pub type BundleRx = watch::Receiver<Option<Arc<Vec<u8>>>>;

/// The certificates of a PEM bundle (unparsable blocks are skipped: the
/// xDS client already refused a bundle with no certificate at all).
pub fn bundle_roots(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// Keeps `tx` holding a valid certificate from the CA and the newest trust
/// bundle. Runs until `tx` has no receiver.
pub async fn run(
    settings: CaSettings,
    provider: Arc<CryptoProvider>,
    mut bundle: BundleRx,
    tx: CredentialsTx,
) {
    let mut failures = 0u32;
    let mut current: Option<Issued> = None;
    let mut bundle_open = true;
    loop {
        let due = current
            .as_ref()
            .is_none_or(|c| SystemTime::now() >= c.renew_at);
        if due {
            match obtain(&settings, &provider).await {
                Ok(issued) => {
                    failures = 0;
                    current = Some(issued);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = crate::xds::client::backoff(failures, rand::random());
                    tracing::warn!(error = %e, retry_in = ?wait, "no new workload certificate; keeping the current one, if any");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => continue,
                        () = tx.closed() => return,
                    }
                }
            }
        }
        let Some(issued) = current.as_ref() else {
            continue;
        };
        let roots = bundle
            .borrow_and_update()
            .as_deref()
            .map(|pem| bundle_roots(pem))
            .filter(|r| !r.is_empty())
            // Until SDS delivers the bundle: the root that ends our chain.
            .unwrap_or_else(|| issued.chain.last().cloned().into_iter().collect());
        let creds = Credentials {
            chain: issued.chain.clone(),
            key: issued.key.clone_key(),
            roots,
        };
        match creds.check(&provider) {
            Ok(id) => {
                log_issued(&id, issued, due);
                tx.send_replace(Some(Arc::new(creds)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "certificate or trust bundle refused; keeping the previous credentials");
            }
        }
        let sleep = issued
            .renew_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            changed = bundle.changed(), if bundle_open => {
                // No more bundles (the xDS client is gone): keep renewing.
                bundle_open = changed.is_ok();
            }
            () = tx.closed() => return,
        }
    }
}

fn log_issued(id: &SpiffeId, issued: &Issued, renewed: bool) {
    let renew_in = issued
        .renew_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    if renewed {
        tracing::info!(identity = %id, renew_in = ?renew_in, "workload certificate from the control plane's CA");
    } else {
        tracing::info!(identity = %id, "trust bundle updated");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_at_half_life_never_in_the_past() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (s, min, day) = (
            Duration::from_secs(1),
            Duration::from_secs(60),
            Duration::from_secs(86_400),
        );
        assert_eq!(renew_at(t0, t0 + day, t0), t0 + day / 2);
        // Backdated a minute for skew: half of what is left, not of the whole.
        assert_eq!(renew_at(t0 - min, t0 + day, t0), t0 + day / 2);
        assert_eq!(renew_at(t0 - min, t0 + 4 * s, t0), t0 + 2 * s);
        // Half-life already past (a late start, a clock jump): a second from now.
        assert_eq!(renew_at(t0, t0 + day, t0 + day), t0 + day + s);
        // Nonsense validity: still a second from now, not a loop.
        assert_eq!(renew_at(t0 + day, t0, t0), t0 + s);
        assert_eq!(renew_at(t0, t0 + s / 2, t0), t0 + s);
    }

    #[test]
    fn a_csr_names_nothing_and_its_key_is_p256() {
        let (key, csr) = key_and_csr().unwrap();
        assert!(
            csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
            "{csr}"
        );
        let PrivateKeyDer::Pkcs8(der) = key else {
            panic!("PKCS#8 expected")
        };
        assert!(!der.secret_pkcs8_der().is_empty());
    }

    #[test]
    fn settings_debug_hides_the_token() {
        let s = CaSettings {
            endpoint: "http://127.0.0.1:15010".into(),
            token: Arc::from("v1.secret-token"),
            lifetime: None,
        };
        assert!(!format!("{s:?}").contains("secret-token"));
    }
}
