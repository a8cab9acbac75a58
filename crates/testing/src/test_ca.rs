//! `TestCa`: a throwaway certificate authority for mTLS tests. It writes
//! identity directories (`cert.pem`, `key.pem` (0600), `roots.pem`) the way
//! `trellis-proxy --identity-dir` reads them, with SPIFFE IDs in the URI SAN.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, date_time_ymd,
};

/// A root CA (ECDSA P-256) that issues workload certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// How long an issued certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// rcgen's default: 1975 to 4096.
    Current,
    /// Valid in 2020 only: expired now.
    Expired,
}

impl TestCa {
    /// # Panics
    /// If rcgen cannot make a key or sign (it does not on supported platforms).
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("self-sign CA"),
        }
    }

    pub fn root_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A workload certificate for `spiffe_id` (usable as client and server).
    ///
    /// # Panics
    /// If `spiffe_id` is not a valid URI for a SAN.
    pub fn issue(&self, spiffe_id: &str, validity: Validity) -> Issued {
        let san = SanType::URI(spiffe_id.try_into().expect("SPIFFE ID as an IA5 string"));
        self.issue_for(san, validity)
    }

    /// A certificate for the DNS name `dns`, as a server outside the mesh has.
    ///
    /// # Panics
    /// If `dns` is not a valid DNS name for a SAN.
    pub fn issue_dns(&self, dns: &str) -> Issued {
        let san = SanType::DnsName(dns.try_into().expect("DNS name as an IA5 string"));
        self.issue_for(san, Validity::Current)
    }

    fn issue_for(&self, san: SanType, validity: Validity) -> Issued {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params.subject_alt_names = vec![san];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if validity == Validity::Expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2020, 12, 31);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Write (or rewrite) an identity directory for `spiffe_id`, trusting
    /// this CA's root plus `extra_roots`. Each file is replaced atomically
    /// (write, then rename), the key file created 0600.
    ///
    /// # Panics
    /// On I/O errors.
    pub fn write_identity_dir(
        &self,
        dir: &Path,
        spiffe_id: &str,
        validity: Validity,
        extra_roots: &[&TestCa],
    ) {
        let issued = self.issue(spiffe_id, validity);
        let mut roots = self.root_pem();
        for r in extra_roots {
            roots.push_str(&r.root_pem());
        }
        std::fs::create_dir_all(dir).expect("create identity dir");
        write_atomic(&dir.join("roots.pem"), roots.as_bytes(), 0o644);
        write_atomic(&dir.join("key.pem"), issued.key_pem.as_bytes(), 0o600);
        write_atomic(&dir.join("cert.pem"), issued.cert_pem.as_bytes(), 0o644);
    }
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
    f.write_all(bytes).expect("write identity file");
    f.sync_all().ok();
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
