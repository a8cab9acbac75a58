//! The trust bundle: the roots every proxy trusts. Rotation adds a root
//! (it becomes the signer; the old ones stay trusted while workloads move
//! over), then removes an old one. Persisted as `ca/trust-bundle.pem`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::FromDer;

use crate::files::{self, FileError};

/// The bundle's file inside the CA directory.
pub const BUNDLE_FILE: &str = "trust-bundle.pem";

/// A trusted root certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub der: Vec<u8>,
    pub pem: String,
    /// SHA-256 of the DER, lowercase hex: how roots are named in the API.
    pub fingerprint: String,
    pub subject: String,
    pub not_after: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{what} is not a certificate: {reason}")]
    Parse { what: String, reason: String },
    #[error("{what} (subject {subject}) is not a root: {reason}")]
    NotRoot {
        what: String,
        subject: String,
        reason: &'static str,
    },
    #[error("no trusted root has the fingerprint {0}; list them with `trellis ca roots`")]
    NotFound(String),
    #[error(
        "the root {0} signs workload certificates now: rotate to a new root first (`trellis ca rotate`), then remove this one"
    )]
    IsSigner(String),
    #[error(transparent)]
    File(#[from] FileError),
}

impl Root {
    /// `not_after` as RFC 3339 (UTC), for people and JSON.
    pub fn not_after_rfc3339(&self) -> String {
        time::OffsetDateTime::from(self.not_after)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    }

    /// A self-signed CA certificate; `what` names it in errors.
    pub fn from_der(der: Vec<u8>, what: &str) -> Result<Root, BundleError> {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).map_err(|e| {
            BundleError::Parse {
                what: what.to_owned(),
                reason: e.to_string(),
            }
        })?;
        let subject = cert.subject().to_string();
        let not_root = |reason| BundleError::NotRoot {
            what: what.to_owned(),
            subject: subject.clone(),
            reason,
        };
        if !cert.is_ca() {
            return Err(not_root("its basic constraints do not say CA:true"));
        }
        if cert.verify_signature(None).is_err() {
            return Err(not_root("it is not self-signed"));
        }
        let not_after = system_time(cert.validity().not_after.timestamp());
        let fingerprint = hex(digest::digest(&digest::SHA256, &der).as_ref());
        let pem = pem_cert(&der);
        Ok(Root {
            der,
            pem,
            fingerprint,
            subject,
            not_after,
        })
    }
}

/// The roots, oldest first, no duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Vec<Root>,
}

impl TrustBundle {
    pub fn roots(&self) -> &[Root] {
        &self.roots
    }

    pub fn contains(&self, fingerprint: &str) -> bool {
        self.roots.iter().any(|r| r.fingerprint == fingerprint)
    }

    /// Adds `root` unless it is already there; says whether it was added.
    pub fn add(&mut self, root: Root) -> bool {
        if self.contains(&root.fingerprint) {
            return false;
        }
        self.roots.push(root);
        true
    }

    /// Stops trusting the root with `fingerprint` (hex, any case, colons
    /// allowed), unless it is `signer`'s: certificates it issues next
    /// would not verify anywhere.
    pub fn remove(&mut self, fingerprint: &str, signer: &str) -> Result<Root, BundleError> {
        let want = normalize(fingerprint);
        if want == signer {
            return Err(BundleError::IsSigner(want));
        }
        let i = self
            .roots
            .iter()
            .position(|r| r.fingerprint == want)
            .ok_or(BundleError::NotFound(want))?;
        Ok(self.roots.remove(i))
    }

    /// Every root, PEM, concatenated: what proxies get as `ROOTCA`.
    pub fn to_pem(&self) -> String {
        self.roots.iter().map(|r| r.pem.as_str()).collect()
    }

    /// Parse concatenated PEM certificates, each of which must be a root.
    pub fn from_pem(pem: &[u8], what: &str) -> Result<TrustBundle, BundleError> {
        let mut bundle = TrustBundle::default();
        for (i, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let cert = cert.map_err(|e| BundleError::Parse {
                what: format!("{what} (certificate {})", i + 1),
                reason: e.to_string(),
            })?;
            bundle.add(Root::from_der(
                cert.to_vec(),
                &format!("{what} (certificate {})", i + 1),
            )?);
        }
        Ok(bundle)
    }

    /// The bundle saved in `ca_dir`, if there is one.
    pub fn load(ca_dir: &Path) -> Result<Option<TrustBundle>, BundleError> {
        let path = ca_dir.join(BUNDLE_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let bytes = files::read(&path)?;
        TrustBundle::from_pem(&bytes, &path.display().to_string()).map(Some)
    }

    pub fn save(&self, ca_dir: &Path) -> Result<(), BundleError> {
        files::write_public(&ca_dir.join(BUNDLE_FILE), self.to_pem().as_bytes())?;
        Ok(())
    }
}

pub(crate) fn normalize(fingerprint: &str) -> String {
    fingerprint
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn pem_cert(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

pub(crate) fn system_time(unix: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Authority;

    fn root(td: &str) -> Root {
        Authority::generate(td, SystemTime::now())
            .unwrap()
            .root()
            .clone()
    }

    #[test]
    fn rotation_keeps_old_roots_until_removed() {
        let (a, b) = (root("a.test"), root("b.test"));
        let mut bundle = TrustBundle::default();
        assert!(bundle.add(a.clone()));
        assert!(!bundle.add(a.clone()), "no duplicates");
        assert!(bundle.add(b.clone()));
        // Both trusted while workloads move over, oldest first.
        let pem = bundle.to_pem();
        assert_eq!(pem, format!("{}{}", a.pem, b.pem));
        assert_eq!(
            TrustBundle::from_pem(pem.as_bytes(), "x").unwrap(),
            bundle,
            "PEM round trip"
        );
        // The signer cannot go; the old one can, by any spelling of its fingerprint.
        assert!(matches!(
            bundle.remove(&b.fingerprint, &b.fingerprint),
            Err(BundleError::IsSigner(_))
        ));
        let colons = a
            .fingerprint
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(bundle.remove(&colons, &b.fingerprint).unwrap(), a);
        assert!(matches!(
            bundle.remove(&a.fingerprint, &b.fingerprint),
            Err(BundleError::NotFound(_))
        ));
        assert_eq!(bundle.roots(), &[b]);
    }

    #[test]
    fn persisted() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(TrustBundle::load(dir.path()).unwrap(), None);
        let mut bundle = TrustBundle::default();
        bundle.add(root("a.test"));
        bundle.add(root("b.test"));
        bundle.save(dir.path()).unwrap();
        assert_eq!(TrustBundle::load(dir.path()).unwrap(), Some(bundle));
    }

    #[test]
    fn only_roots() {
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::default()
            .self_signed(&key)
            .unwrap();
        let e = TrustBundle::from_pem(leaf.pem().as_bytes(), "f.pem").unwrap_err();
        assert!(
            e.to_string()
                .contains("f.pem (certificate 1) (subject CN=rcgen self signed cert) is not a root: its basic constraints do not say CA:true"),
            "{e}"
        );
        let e = TrustBundle::from_pem(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "f.pem",
        )
        .unwrap_err();
        assert!(matches!(e, BundleError::Parse { .. }), "{e}");
    }
}
