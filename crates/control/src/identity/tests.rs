use super::*;

fn csr_for(uri: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    p.serialize_request(&key).unwrap().der().to_vec()
}

fn leaf_id(issued: &Issued) -> String {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(issued.chain[0].as_bytes()).unwrap();
    SpiffeId::from_cert_der(&der).unwrap().to_string()
}

#[test]
fn the_token_names_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let id = Identity::open(dir.path(), &IdentitySettings::default(), now).unwrap();
    let (token, _) = id
        .create_token("default", "reviews", Duration::from_secs(60), now)
        .unwrap();
    let csr = csr_for("spiffe://cluster.local/ns/kube-system/sa/admin");
    let (who, _, issued) = id.issue(Some(&token), &csr, None, now).unwrap();
    assert_eq!(
        who.to_string(),
        "spiffe://cluster.local/ns/default/sa/reviews"
    );
    assert_eq!(leaf_id(&issued), who.to_string());

    let cases: Vec<(Option<&str>, &[u8], SystemTime, &str)> = vec![
        (None, &csr, now, "no_token"),
        (Some("tbt1.e30.AAAA"), &csr, now, "token_bad_signature"),
        (Some("nonsense"), &csr, now, "token_malformed"),
        (
            Some(&token),
            &csr,
            now + Duration::from_secs(61),
            "token_expired",
        ),
        (Some(&token), b"junk", now, "csr_malformed"),
    ];
    for (token, csr, at, want) in cases {
        let err = id.issue(token, csr, None, at).unwrap_err();
        assert_eq!(err.reason(), want, "{err}");
    }
}

#[test]
fn rotation_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let settings = IdentitySettings::default();
    let id = Identity::open(dir.path(), &settings, now).unwrap();
    let first = id.roots();
    assert_eq!(first.len(), 1);
    assert!(first[0].signer);
    let mut bundle = id.bundle();

    let second = id.rotate(now).unwrap();
    assert!(bundle.has_changed().unwrap(), "SDS sees the change");
    assert_eq!(bundle.borrow_and_update().roots().len(), 2);
    let roots = id.roots();
    assert_eq!(
        roots.iter().map(|r| r.signer).collect::<Vec<_>>(),
        [false, true]
    );
    assert_eq!(id.authority().root().fingerprint, second.fingerprint);
    assert!(matches!(
        id.remove_root(&second.fingerprint),
        Err(RootsError::Bundle(BundleError::IsSigner(_)))
    ));

    // A restart keeps the new signer and both roots.
    drop(id);
    let id = Identity::open(dir.path(), &settings, now).unwrap();
    assert_eq!(id.authority().root().fingerprint, second.fingerprint);
    assert_eq!(id.roots().len(), 2);
    id.remove_root(&first[0].fingerprint).unwrap();
    drop(id);
    let id = Identity::open(dir.path(), &settings, now).unwrap();
    assert_eq!(
        id.roots()
            .iter()
            .map(|r| r.fingerprint.clone())
            .collect::<Vec<_>>(),
        [second.fingerprint]
    );
}

#[test]
fn an_operator_ca_is_not_rotated_here() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    // Someone's root, made elsewhere, given as --ca-cert/--ca-key.
    let theirs = tempfile::tempdir().unwrap();
    Authority::load_or_create(theirs.path(), "corp.example", now).unwrap();
    let settings = IdentitySettings {
        trust_domain: "corp.example".into(),
        operator_ca: Some(OperatorCa {
            cert: theirs.path().join("root-cert.pem"),
            key: theirs.path().join("root-key.pem"),
            chain: None,
        }),
    };
    let id = Identity::open(dir.path(), &settings, now).unwrap();
    assert!(matches!(id.rotate(now), Err(RootsError::OperatorCa)));
    assert!(
        !dir.path().join("ca/root-key.pem").exists(),
        "no root of our own"
    );
}
