//! The certificate authority: a root it made (ECDSA P-256, kept in the data
//! directory) or the operator's CA (which may be an intermediate), and the
//! signing of workload CSRs into X.509 SVIDs.
//!
//! The CSR contributes its public key and nothing else: its subject, SANs
//! and extensions are ignored, and the one SAN of the certificate is the
//! SPIFFE ID the caller authenticated (from the bootstrap token).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::bundle::{BundleError, Root, hex, pem_cert, system_time};
use crate::files::{self, FileError};
use crate::spiffe::{SpiffeError, SpiffeId, check_trust_domain};

/// A workload certificate's lifetime when the request names none, and the
/// longest it may ask for.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The shortest lifetime issued (shorter requests get this): tests rotate
/// certificates every few seconds.
pub const MIN_LIFETIME: Duration = Duration::from_secs(1);
/// `not_before` is set this far in the past, so a peer whose clock is a
/// little behind accepts a certificate issued a moment ago.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// A created root's lifetime (~10 years).
pub const ROOT_LIFETIME: Duration = Duration::from_secs(3650 * 24 * 3600);

pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const ROOT_KEY_FILE: &str = "root-key.pem";

/// Signs workload certificates. Debug output shows no key.
pub struct Authority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// The signer's not_after: no leaf outlives it.
    signer_not_after: SystemTime,
    /// Between a leaf and the root, PEM, nearest first: the signer when it
    /// is not the root itself, then its issuers.
    intermediates: Vec<String>,
    root: Root,
    /// The operator's CA (`--ca-cert`), as opposed to one made here.
    operator: bool,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("root", &self.root.fingerprint)
            .field("intermediates", &self.intermediates.len())
            .field("operator", &self.operator)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    TrustDomain(#[from] SpiffeError),
    #[error(
        "{} is not a private key rcgen can use (PKCS#8 PEM, e.g. `openssl pkcs8 -topk8 -nocrypt`; ECDSA P-256/P-384, Ed25519 or RSA): {reason}",
        path.display()
    )]
    Key { path: PathBuf, reason: String },
    #[error("{} is not a PEM certificate: {reason}", path.display())]
    Cert { path: PathBuf, reason: String },
    #[error("the key {} does not belong to the certificate {}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("{} (subject {subject}) cannot sign certificates: its basic constraints do not say CA:true", path.display())]
    NotCa { path: PathBuf, subject: String },
    #[error("{} (subject {subject}) expired", path.display())]
    Expired { path: PathBuf, subject: String },
    #[error(
        "the chain is broken: {subject} is not signed by the next certificate ({next}); --ca-chain must list the issuers of --ca-cert in order, up to the root"
    )]
    BrokenChain { subject: String, next: String },
    #[error(
        "the chain of {} does not end in a self-signed root (last: {subject}); give the issuers up to the root with --ca-chain",
        path.display()
    )]
    NoRoot { path: PathBuf, subject: String },
    #[error("cannot make the root: {0}")]
    Generate(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("the CSR is not a PKCS#10 certificate request (PEM or DER): {0}")]
    Parse(String),
    #[error("the CSR's signature does not verify with its own public key")]
    Signature,
    #[error("the CSR's key type is not supported (use ECDSA P-256/P-384, Ed25519 or RSA)")]
    KeyType,
    #[error("the identity {id} is not in this CA's trust domain {trust_domain}")]
    TrustDomain { id: String, trust_domain: String },
    #[error("the CA's signer has expired; give the control plane a new CA")]
    SignerExpired,
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// A signed workload certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// Leaf first, then intermediates, the root last (Istio's order).
    pub chain: Vec<String>,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    pub not_after: SystemTime,
}

impl Authority {
    /// A new root for `trust_domain`, self-signed, valid from `now` (less
    /// [`CLOCK_SKEW`]) for [`ROOT_LIFETIME`].
    pub fn generate(trust_domain: &str, now: SystemTime) -> Result<Authority, CaError> {
        check_trust_domain(trust_domain)?;
        let gen_err = |e: rcgen::Error| CaError::Generate(e.to_string());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "Trellis root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let start = time::OffsetDateTime::from(now - CLOCK_SKEW);
        params.not_before = start;
        params.not_after = start + ROOT_LIFETIME;
        params.serial_number = Some(random_serial().map_err(CaError::Generate)?);
        let cert = params.self_signed(&key).map_err(gen_err)?;
        let root = Root::from_der(cert.der().to_vec(), "the new root")?;
        Ok(Authority {
            trust_domain: trust_domain.to_owned(),
            signer_not_after: root.not_after,
            issuer: Issuer::new(params, key),
            intermediates: Vec::new(),
            root,
            operator: false,
        })
    }

    /// The root made earlier in `ca_dir`, or a new one saved there (the key
    /// 0600). Says whether it was created.
    pub fn load_or_create(
        ca_dir: &Path,
        trust_domain: &str,
        now: SystemTime,
    ) -> Result<(Authority, bool), CaError> {
        let cert = ca_dir.join(ROOT_CERT_FILE);
        let key = ca_dir.join(ROOT_KEY_FILE);
        if cert.exists() || key.exists() {
            let mut ca = Authority::load(&cert, &key, None, trust_domain, now)?;
            ca.operator = false;
            return Ok((ca, false));
        }
        let ca = Authority::generate(trust_domain, now)?;
        ca.save_root(ca_dir)?;
        Ok((ca, true))
    }

    /// Write a root made here to `ca_dir` (key first: a crash between the
    /// two renames leaves a key without its certificate, which start-up
    /// reports, rather than a certificate whose key is lost).
    pub fn save_root(&self, ca_dir: &Path) -> Result<(), CaError> {
        files::write_private(
            &ca_dir.join(ROOT_KEY_FILE),
            self.issuer.key().serialize_pem().as_bytes(),
        )?;
        files::write_public(&ca_dir.join(ROOT_CERT_FILE), self.root.pem.as_bytes())?;
        Ok(())
    }

    /// The operator's CA: `cert` signs (a root, or an intermediate whose
    /// issuers up to the root are in `chain`, nearest first), `key` is its
    /// private key (refused if group or others can read it).
    pub fn load(
        cert: &Path,
        key: &Path,
        chain: Option<&Path>,
        trust_domain: &str,
        now: SystemTime,
    ) -> Result<Authority, CaError> {
        check_trust_domain(trust_domain)?;
        let key_pem = files::read_private(key)?;
        let key_pair = std::str::from_utf8(&key_pem)
            .map_err(|e| e.to_string())
            .and_then(|s| KeyPair::from_pem(s).map_err(|e| e.to_string()))
            .map_err(|reason| CaError::Key {
                path: key.to_path_buf(),
                reason,
            })?;
        let signer = read_certs(cert)?
            .into_iter()
            .next()
            .ok_or_else(|| CaError::Cert {
                path: cert.to_path_buf(),
                reason: "no certificate in it".into(),
            })?;
        let mut all = vec![signer.clone()];
        if let Some(chain) = chain {
            // Istio's cert-chain.pem starts with the signer itself.
            all.extend(read_certs(chain)?.into_iter().filter(|c| *c != signer));
        }
        let parsed = all
            .iter()
            .map(|der| {
                X509Certificate::from_der(der)
                    .map(|(_, c)| c)
                    .map_err(|e| CaError::Cert {
                        path: cert.to_path_buf(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let first = &parsed[0];
        if first.public_key().raw != key_pair.subject_public_key_info().as_slice() {
            return Err(CaError::KeyMismatch {
                key: key.to_path_buf(),
                cert: cert.to_path_buf(),
            });
        }
        if !first.is_ca() {
            return Err(CaError::NotCa {
                path: cert.to_path_buf(),
                subject: first.subject().to_string(),
            });
        }
        let now_unix = time::OffsetDateTime::from(now).unix_timestamp();
        for c in &parsed {
            if c.validity().not_after.timestamp() <= now_unix {
                return Err(CaError::Expired {
                    path: chain.unwrap_or(cert).to_path_buf(),
                    subject: c.subject().to_string(),
                });
            }
        }
        for pair in parsed.windows(2) {
            if pair[0]
                .verify_signature(Some(pair[1].public_key()))
                .is_err()
            {
                return Err(CaError::BrokenChain {
                    subject: pair[0].subject().to_string(),
                    next: pair[1].subject().to_string(),
                });
            }
        }
        let last = &parsed[parsed.len() - 1];
        if last.verify_signature(None).is_err() {
            return Err(CaError::NoRoot {
                path: cert.to_path_buf(),
                subject: last.subject().to_string(),
            });
        }
        let signer_not_after = system_time(first.validity().not_after.timestamp());
        let root_what = chain.unwrap_or(cert).display().to_string();
        let root = Root::from_der(all[all.len() - 1].to_vec(), &root_what)?;
        let intermediates = all[..all.len() - 1].iter().map(|d| pem_cert(d)).collect();
        let issuer = Issuer::from_ca_cert_der(&signer, key_pair).map_err(|e| CaError::Cert {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Authority {
            trust_domain: trust_domain.to_owned(),
            issuer,
            signer_not_after,
            intermediates,
            root,
            operator: true,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root this CA's certificates chain to.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// Whether the operator gave this CA (`--ca-cert`), rather than it being
    /// made in the data directory.
    pub fn is_operator(&self) -> bool {
        self.operator
    }

    /// Sign `csr` (PEM or DER) for `id`. `requested`: the lifetime asked
    /// for (None: [`MAX_LIFETIME`]); clamped to [`MIN_LIFETIME`]..=[`MAX_LIFETIME`]
    /// and to the signer's own expiry.
    pub fn sign(
        &self,
        csr: &[u8],
        id: &SpiffeId,
        requested: Option<Duration>,
        now: SystemTime,
    ) -> Result<Issued, SignError> {
        if id.trust_domain() != self.trust_domain {
            return Err(SignError::TrustDomain {
                id: id.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let public_key = csr_public_key(csr)?;
        if now >= self.signer_not_after {
            return Err(SignError::SignerExpired);
        }
        let lifetime = requested
            .unwrap_or(MAX_LIFETIME)
            .clamp(MIN_LIFETIME, MAX_LIFETIME);
        let not_after = (now + lifetime).min(self.signer_not_after);

        let mut params = CertificateParams::default();
        // Empty subject, identity in the (then critical) SAN: what Istio issues.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            id.to_string()
                .try_into()
                .map_err(|e: rcgen::Error| SignError::Sign(e.to_string()))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = time::OffsetDateTime::from(now - CLOCK_SKEW);
        params.not_after = time::OffsetDateTime::from(not_after);
        let serial = random_serial().map_err(SignError::Sign)?;
        let serial_hex = hex(serial.as_ref());
        params.serial_number = Some(serial);
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| SignError::Sign(e.to_string()))?;
        let mut chain = Vec::with_capacity(self.intermediates.len() + 2);
        chain.push(cert.pem());
        chain.extend(self.intermediates.iter().cloned());
        chain.push(self.root.pem.clone());
        Ok(Issued {
            chain,
            serial: serial_hex,
            // Whole seconds: what the certificate says.
            not_after: system_time(time::OffsetDateTime::from(not_after).unix_timestamp()),
        })
    }
}

/// The public key of a CSR whose own signature verifies. Nothing else of the
/// CSR is read: a workload asks for a key to be certified, not for a name.
fn csr_public_key(csr: &[u8]) -> Result<SubjectPublicKeyInfo, SignError> {
    let der = if csr.starts_with(b"-----BEGIN") {
        CertificateSigningRequestDer::from_pem_slice(csr)
            .map_err(|e| SignError::Parse(e.to_string()))?
    } else {
        CertificateSigningRequestDer::from(csr.to_vec())
    };
    let (_, req) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| SignError::Parse(e.to_string()))?;
    req.verify_signature().map_err(|_| SignError::Signature)?;
    SubjectPublicKeyInfo::from_der(req.certification_request_info.subject_pki.raw)
        .map_err(|_| SignError::KeyType)
}

/// 16 random bytes, positive (high bit clear) and never zero-led to a
/// shorter encoding: RFC 5280 serials, unique without a counter.
fn random_serial() -> Result<SerialNumber, String> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "no randomness from the system".to_owned())?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let bytes = files::read(path)?;
    CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::Cert {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests;
