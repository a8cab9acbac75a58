use std::os::unix::fs::PermissionsExt;

use super::*;

fn at(secs: u64) -> SystemTime {
    // 2030-01-01: every generated CA below is valid then.
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000 + secs)
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// A CSR that asks for everything it should not get.
fn greedy_csr() -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["admin.example".to_owned()]).unwrap();
    p.subject_alt_names.push(SanType::URI(
        "spiffe://cluster.local/ns/kube-system/sa/admin"
            .try_into()
            .unwrap(),
    ));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let csr = p.serialize_request(&key).unwrap();
    (key, csr.der().to_vec())
}

fn parse(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Each certificate of `chain` is signed by the next; the last is `root`.
fn assert_chain_verifies(chain: &[String], root: &Root) {
    let ders: Vec<Vec<u8>> = chain.iter().map(|p| parse(p)).collect();
    assert_eq!(ders.last().unwrap(), &root.der);
    let certs: Vec<X509Certificate> = ders
        .iter()
        .map(|d| X509Certificate::from_der(d).unwrap().1)
        .collect();
    for pair in certs.windows(2) {
        pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .expect("each certificate signed by the next");
    }
}

#[test]
fn the_identity_comes_from_the_caller_not_the_csr() {
    let ca = Authority::generate("cluster.local", at(0)).unwrap();
    let (key, csr) = greedy_csr();
    let want = id("spiffe://cluster.local/ns/default/sa/reviews");
    let issued = ca.sign(&csr, &want, None, at(0)).unwrap();
    assert_eq!(issued.chain.len(), 2, "leaf and root");
    assert_chain_verifies(&issued.chain, ca.root());

    let der = parse(&issued.chain[0]);
    assert_eq!(SpiffeId::from_cert_der(&der).unwrap(), want);
    let (_, leaf) = X509Certificate::from_der(&der).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "empty subject: the SAN is critical");
    assert_eq!(san.value.general_names.len(), 1, "no DNS name from the CSR");
    assert!(!leaf.is_ca());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.any);
    assert_eq!(leaf.subject().iter().count(), 0);
    // The CSR's key is certified.
    assert_eq!(
        leaf.public_key().raw,
        key.subject_public_key_info().as_slice()
    );
    assert_eq!(hex(leaf.raw_serial()), issued.serial);
}

#[test]
fn lifetimes() {
    let ca = Authority::generate("cluster.local", at(0)).unwrap();
    let (_, csr) = greedy_csr();
    let who = id("spiffe://cluster.local/ns/a/sa/b");
    let cases = [
        (None, MAX_LIFETIME),
        (Some(Duration::from_secs(3600)), Duration::from_secs(3600)),
        (Some(Duration::from_secs(48 * 3600)), MAX_LIFETIME),
        (Some(Duration::from_secs(2)), Duration::from_secs(2)),
        (Some(Duration::ZERO), MIN_LIFETIME),
    ];
    for (requested, want) in cases {
        let issued = ca.sign(&csr, &who, requested, at(100)).unwrap();
        assert_eq!(issued.not_after, at(100) + want, "{requested:?}");
        let der = parse(&issued.chain[0]);
        let (_, leaf) = X509Certificate::from_der(&der).unwrap();
        let v = leaf.validity();
        assert_eq!(
            v.not_before.timestamp(),
            time::OffsetDateTime::from(at(100) - CLOCK_SKEW).unix_timestamp(),
            "backdated for clock skew"
        );
        assert_eq!(
            v.not_after.timestamp(),
            time::OffsetDateTime::from(at(100) + want).unix_timestamp()
        );
    }
    let a = ca.sign(&csr, &who, None, at(0)).unwrap();
    let b = ca.sign(&csr, &who, None, at(0)).unwrap();
    assert_ne!(a.serial, b.serial, "random serials");
}

#[test]
fn refusals() {
    let ca = Authority::generate("cluster.local", at(0)).unwrap();
    let (_, csr) = greedy_csr();
    let mut bad_sig = csr.clone();
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 0x01;
    let who = id("spiffe://cluster.local/ns/a/sa/b");
    type Is = fn(&SignError) -> bool;
    let cases: Vec<(Vec<u8>, SpiffeId, Is)> = vec![
        (bad_sig, who.clone(), |e| *e == SignError::Signature),
        (b"garbage".to_vec(), who.clone(), |e| {
            matches!(e, SignError::Parse(_))
        }),
        (
            b"-----BEGIN CERTIFICATE REQUEST-----\n!!\n-----END CERTIFICATE REQUEST-----\n"
                .to_vec(),
            who.clone(),
            |e| matches!(e, SignError::Parse(_)),
        ),
        (csr.clone(), id("spiffe://other.domain/ns/a/sa/b"), |e| {
            matches!(e, SignError::TrustDomain { .. })
        }),
    ];
    for (input, who, want) in cases {
        let err = ca.sign(&input, &who, None, at(0)).unwrap_err();
        assert!(want(&err), "{err:?}");
    }
    // PEM works as well as DER.
    let pem = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(&csr)
        }
    );
    assert!(ca.sign(pem.as_bytes(), &who, None, at(0)).is_ok());
}

#[test]
fn created_root_is_kept_private_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, created) = Authority::load_or_create(dir.path(), "cluster.local", at(0)).unwrap();
    assert!(created);
    let key_path = dir.path().join(ROOT_KEY_FILE);
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let key_pem = std::fs::read_to_string(&key_path).unwrap();
    assert!(!format!("{ca:?}").contains(key_pem.lines().nth(1).unwrap()));

    let (again, created) = Authority::load_or_create(dir.path(), "cluster.local", at(10)).unwrap();
    assert!(!created);
    assert!(!again.is_operator());
    assert_eq!(again.root(), ca.root());
    // The reloaded CA signs certificates that chain to the same root.
    let (_, csr) = greedy_csr();
    let issued = again
        .sign(&csr, &id("spiffe://cluster.local/ns/a/sa/b"), None, at(10))
        .unwrap();
    assert_chain_verifies(&issued.chain, ca.root());

    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = Authority::load_or_create(dir.path(), "cluster.local", at(0)).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
    assert!(!err.to_string().contains(key_pem.lines().nth(1).unwrap()));
}

/// Writes an operator CA: root -> intermediate (the signer).
struct OperatorFiles {
    dir: tempfile::TempDir,
    root: Authority,
}

impl OperatorFiles {
    fn new() -> OperatorFiles {
        let dir = tempfile::tempdir().unwrap();
        let root = Authority::generate("corp.example", at(0)).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, "Trellis intermediate");
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = time::OffsetDateTime::from(at(0));
        p.not_after = time::OffsetDateTime::from(at(365 * 24 * 3600));
        let inter = p.signed_by(&key, &root.issuer).unwrap();
        let d = dir.path();
        std::fs::write(d.join("ca-cert.pem"), inter.pem()).unwrap();
        files::write_private(&d.join("ca-key.pem"), key.serialize_pem().as_bytes()).unwrap();
        std::fs::write(d.join("root-cert.pem"), &root.root().pem).unwrap();
        std::fs::write(
            d.join("cert-chain.pem"),
            format!("{}{}", inter.pem(), root.root().pem),
        )
        .unwrap();
        OperatorFiles { dir, root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn load(&self, cert: &str, key: &str, chain: Option<&str>) -> Result<Authority, CaError> {
        Authority::load(
            &self.path(cert),
            &self.path(key),
            chain.map(|c| self.path(c)).as_deref(),
            "corp.example",
            at(60),
        )
    }
}

#[test]
fn intermediate_signer() {
    let f = OperatorFiles::new();
    // The chain file may hold only the issuers, or start with the signer
    // (Istio's cert-chain.pem).
    for chain in ["root-cert.pem", "cert-chain.pem"] {
        let ca = f.load("ca-cert.pem", "ca-key.pem", Some(chain)).unwrap();
        assert!(ca.is_operator());
        assert_eq!(ca.root(), f.root.root());
        let (_, csr) = greedy_csr();
        let issued = ca
            .sign(&csr, &id("spiffe://corp.example/ns/a/sa/b"), None, at(60))
            .unwrap();
        assert_eq!(issued.chain.len(), 3, "leaf, intermediate, root");
        assert_chain_verifies(&issued.chain, f.root.root());
    }
    // The leaf never outlives its signer.
    let ca = f
        .load("ca-cert.pem", "ca-key.pem", Some("root-cert.pem"))
        .unwrap();
    let (_, csr) = greedy_csr();
    let near_end = at(365 * 24 * 3600 - 10);
    let issued = ca
        .sign(&csr, &id("spiffe://corp.example/ns/a/sa/b"), None, near_end)
        .unwrap();
    assert_eq!(issued.not_after, at(365 * 24 * 3600));
    assert_eq!(
        ca.sign(
            &csr,
            &id("spiffe://corp.example/ns/a/sa/b"),
            None,
            at(366 * 24 * 3600)
        ),
        Err(SignError::SignerExpired)
    );
}

#[test]
fn operator_ca_refusals() {
    let f = OperatorFiles::new();
    // Another root, and a plain (non-CA) certificate with its key.
    let other = Authority::generate("corp.example", at(0)).unwrap();
    std::fs::write(f.path("other-root.pem"), &other.root().pem).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::default().self_signed(&leaf_key).unwrap();
    std::fs::write(f.path("leaf.pem"), leaf.pem()).unwrap();
    files::write_private(&f.path("leaf-key.pem"), leaf_key.serialize_pem().as_bytes()).unwrap();
    std::fs::write(f.path("open-key.pem"), "x").unwrap();
    std::fs::set_permissions(
        f.path("open-key.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    files::write_private(&f.path("junk-key.pem"), b"junk").unwrap();

    let cases: &[(&str, &str, Option<&str>, &str)] = &[
        (
            "ca-cert.pem",
            "ca-key.pem",
            None,
            "does not end in a self-signed root",
        ),
        (
            "ca-cert.pem",
            "ca-key.pem",
            Some("other-root.pem"),
            "the chain is broken",
        ),
        (
            "ca-cert.pem",
            "leaf-key.pem",
            Some("root-cert.pem"),
            "does not belong to the certificate",
        ),
        ("leaf.pem", "leaf-key.pem", None, "cannot sign certificates"),
        ("ca-cert.pem", "open-key.pem", None, "chmod 600"),
        ("ca-cert.pem", "junk-key.pem", None, "is not a private key"),
        ("missing.pem", "ca-key.pem", None, "cannot read"),
    ];
    for (cert, key, chain, want) in cases {
        let err = f.load(cert, key, *chain).unwrap_err().to_string();
        assert!(err.contains(want), "{cert} {key} {chain:?}: {err}");
    }
    let expired = Authority::load(
        &f.path("ca-cert.pem"),
        &f.path("ca-key.pem"),
        Some(&f.path("root-cert.pem")),
        "corp.example",
        at(400 * 24 * 3600),
    )
    .unwrap_err();
    assert!(matches!(expired, CaError::Expired { .. }), "{expired}");
}
