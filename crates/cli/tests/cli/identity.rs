//! The CA through the real binaries: `trellis token create`, then
//! `CreateCertificate` over gRPC on the xDS listener with a tonic client,
//! checked with `openssl verify`; rotation through `trellis ca`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tonic::Code;
use trellis_identity::SpiffeId;
use trellis_identity::proto::{
    CREATE_CERTIFICATE, IstioCertificateRequest, IstioCertificateResponse,
};

use crate::support::{Control, http};

/// One CreateCertificate call: the chain, or the gRPC status.
fn create_certificate(
    xds: &str,
    token: Option<&str>,
    csr: &str,
    validity: i64,
) -> Result<Vec<String>, tonic::Status> {
    // Transport failures become statuses too: the caller asserts on codes.
    let fail = |e: &dyn std::fmt::Display| tonic::Status::internal(format!("test client: {e}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(&e))?;
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{xds}"))
            .map_err(|e| fail(&e))?
            .connect()
            .await
            .map_err(|e| fail(&e))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.map_err(|e| fail(&e))?;
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr: csr.to_owned(),
            validity_duration: validity,
            metadata: None,
        });
        if let Some(t) = token {
            let value = format!("Bearer {t}").parse().map_err(|e| fail(&e))?;
            req.metadata_mut().insert("authorization", value);
        }
        grpc.unary(
            req,
            http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .map(|r: tonic::Response<IstioCertificateResponse>| r.into_inner().cert_chain)
    })
}

/// A CSR (PEM) that asks for another workload's identity.
fn greedy_csr() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://cluster.local/ns/kube-system/sa/admin"
            .try_into()
            .unwrap(),
    )];
    p.serialize_request(&key).unwrap().pem().unwrap()
}

fn spiffe_id(cert_pem: &str) -> String {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    SpiffeId::from_cert_der(&der).unwrap().to_string()
}

/// `openssl verify` of a chain's leaf against `roots` (PEM); its output.
fn openssl_verify(dir: &Path, chain: &[String], roots: &str) -> (bool, String) {
    std::fs::write(dir.join("roots.pem"), roots).unwrap();
    std::fs::write(dir.join("leaf.pem"), &chain[0]).unwrap();
    let middle: String = chain[1..chain.len() - 1].concat();
    std::fs::write(dir.join("untrusted.pem"), &middle).unwrap();
    let mut cmd = Command::new("openssl");
    cmd.arg("verify")
        .arg("-CAfile")
        .arg(dir.join("roots.pem"))
        .args(["-purpose", "sslclient"]);
    if !middle.is_empty() {
        cmd.arg("-untrusted").arg(dir.join("untrusted.pem"));
    }
    let out = cmd.arg(dir.join("leaf.pem")).output().expect("run openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_token_gets_a_certificate_for_its_identity_only() {
    let data = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let control = Control::start(data.path(), &[]);
    let ca = data.path().join("ca");
    assert_eq!(mode(&ca), 0o700);
    assert_eq!(mode(&ca.join("root-key.pem")), 0o600);
    assert_eq!(mode(&ca.join("token.key")), 0o600);

    let out = control
        .cli(&[
            "token",
            "create",
            "--namespace",
            "default",
            "--service-account",
            "reviews",
            "--ttl",
            "1h",
        ])
        .ok();
    let token = out.stdout.trim().to_owned();
    assert!(token.starts_with("tbt1."), "{out:?}");
    assert!(
        out.stderr
            .contains("spiffe://cluster.local/ns/default/sa/reviews"),
        "{out:?}"
    );

    // The CSR asks for kube-system/admin; the certificate says what the token says.
    let chain = create_certificate(&control.xds, Some(&token), &greedy_csr(), 3600).unwrap();
    assert_eq!(chain.len(), 2, "leaf, root");
    assert_eq!(
        spiffe_id(&chain[0]),
        "spiffe://cluster.local/ns/default/sa/reviews"
    );
    let root = std::fs::read_to_string(ca.join("root-cert.pem")).unwrap();
    assert_eq!(chain[1], root, "the chain ends with the root");
    let (ok, text) = openssl_verify(scratch.path(), &chain, &root);
    assert!(ok, "{text}");
    // Another CA's root does not verify it.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _) = trellis_identity::Authority::load_or_create(
        other.path(),
        "cluster.local",
        std::time::SystemTime::now(),
    )
    .unwrap();
    let (ok, text) = openssl_verify(scratch.path(), &chain, &other_ca.root().pem);
    assert!(!ok, "{text}");

    // Refusals, each with a status that says what to fix.
    let expiring = control
        .cli(&[
            "token",
            "create",
            "-n",
            "default",
            "--service-account",
            "reviews",
            "--ttl",
            "1s",
        ])
        .ok()
        .stdout
        .trim()
        .to_owned();
    std::thread::sleep(Duration::from_millis(2100));
    let mut bad_sig = greedy_csr();
    // Flip one base64 character inside the signature (at the end of the
    // PEM). Not the last one before the padding: that one may carry only
    // padding bits, and flipping them changes nothing (the signature's
    // length, hence the padding, varies from key to key).
    let end = bad_sig.find("-----END").unwrap();
    let b = bad_sig.as_bytes();
    let mut i = end - 1;
    while matches!(b[i], b'\n' | b'=') {
        i -= 1;
    }
    i -= 1;
    if b[i] == b'\n' {
        i -= 1;
    }
    let c = b[i];
    bad_sig.replace_range(i..=i, if c == b'A' { "B" } else { "A" });
    let cases: Vec<(Option<&str>, String, Code, &str)> = vec![
        (
            None,
            greedy_csr(),
            Code::Unauthenticated,
            "no bootstrap token",
        ),
        (
            Some("tbt1.e30.AAAA"),
            greedy_csr(),
            Code::Unauthenticated,
            "signature does not verify",
        ),
        (
            Some("garbage"),
            greedy_csr(),
            Code::Unauthenticated,
            "malformed",
        ),
        (
            Some(&expiring),
            greedy_csr(),
            Code::Unauthenticated,
            "expired",
        ),
        (
            Some(&token),
            "not a csr".into(),
            Code::InvalidArgument,
            "not a PKCS#10",
        ),
        (Some(&token), bad_sig, Code::InvalidArgument, ""),
    ];
    for (t, csr, code, message) in cases {
        let status = create_certificate(&control.xds, t, &csr, 0).unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(message), "{status:?}");
        if let Some(t) = t {
            assert!(!status.message().contains(t), "the token is never echoed");
        }
    }

    let (_, _, metrics) = http(&control.api, "GET", "/metrics", "text/plain", "");
    assert!(
        metrics.contains(r#"trellis_control_certificates_total{result="issued",reason=""} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"trellis_control_certificates_total{result="refused",reason="token_expired"} 1"#
        ),
        "{metrics}"
    );
    let logs = control.logs();
    assert!(
        logs.contains("certificate issued")
            && logs.contains("spiffe://cluster.local/ns/default/sa/reviews"),
        "{logs}"
    );
    for secret in [&token, &expiring] {
        assert!(!logs.contains(secret.as_str()), "a token in the logs");
    }
    let key = std::fs::read_to_string(ca.join("root-key.pem")).unwrap();
    assert!(
        !logs.contains(key.lines().nth(1).unwrap()),
        "the key in the logs"
    );
}

#[test]
fn rotation_keeps_old_certificates_trusted_until_the_old_root_goes() {
    let data = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let control = Control::start(data.path(), &[]);
    let token = control
        .cli(&["token", "create", "-n", "shop", "--service-account", "cart"])
        .ok()
        .stdout
        .trim()
        .to_owned();
    let before = create_certificate(&control.xds, Some(&token), &greedy_csr(), 0).unwrap();
    let roots = |c: &Control| {
        let (status, _, body) = http(&c.api, "GET", "/api/v1/ca/roots", "", "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["roots"].clone()
    };
    let old = roots(&control)[0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();

    let out = control.cli(&["ca", "rotate"]).ok();
    assert!(out.stdout.contains("signs from now on"), "{out:?}");
    let listed = control.cli(&["ca", "roots"]).ok().stdout;
    assert_eq!(
        listed.lines().count(),
        3,
        "a header and two roots:\n{listed}"
    );
    let now = roots(&control);
    let new = now[1]["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(now[1]["signer"], true);
    assert_eq!(now[0]["signer"], false);

    let after = create_certificate(&control.xds, Some(&token), &greedy_csr(), 0).unwrap();
    assert_eq!(
        after.last(),
        Some(&std::fs::read_to_string(data.path().join("ca/root-cert.pem")).unwrap())
    );
    // Both certificates verify against the bundle while workloads move over.
    let bundle = std::fs::read_to_string(data.path().join("ca/trust-bundle.pem")).unwrap();
    for chain in [&before, &after] {
        let (ok, text) = openssl_verify(scratch.path(), chain, &bundle);
        assert!(ok, "{text}");
    }

    let refused = control.cli(&["ca", "remove", &new]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("rotate to a new root first"),
        "{refused:?}"
    );
    control.cli(&["ca", "remove", &old]).ok();
    let bundle = std::fs::read_to_string(data.path().join("ca/trust-bundle.pem")).unwrap();
    assert!(!openssl_verify(scratch.path(), &before, &bundle).0);
    assert!(openssl_verify(scratch.path(), &after, &bundle).0);

    // A restart keeps the new signer and the bundle.
    drop(control);
    let control = Control::start(data.path(), &[]);
    let now = roots(&control);
    assert_eq!(now.as_array().unwrap().len(), 1);
    assert_eq!(now[0]["fingerprint"], new.as_str());
}

#[test]
fn a_readable_ca_key_stops_the_start() {
    let data = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    trellis_identity::Authority::load_or_create(
        theirs.path(),
        "corp.example",
        std::time::SystemTime::now(),
    )
    .unwrap();
    let key = theirs.path().join("root-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cert = theirs.path().join("root-cert.pem");
    let ca_flags = [
        "--trust-domain",
        "corp.example",
        "--ca-cert",
        cert.to_str().unwrap(),
        "--ca-key",
        key.to_str().unwrap(),
    ];
    let err = Control::try_start(data.path(), &ca_flags)
        .err()
        .expect("refused");
    assert!(err.contains("chmod 600"), "{err}");
    assert!(
        !err.contains(
            std::fs::read_to_string(&key)
                .unwrap()
                .lines()
                .nth(1)
                .unwrap()
        )
    );

    // With the mode fixed, certificates name the operator's trust domain.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let control = Control::start(data.path(), &ca_flags);
    let token = control
        .cli(&["token", "create", "-n", "a", "--service-account", "b"])
        .ok()
        .stdout
        .trim()
        .to_owned();
    let chain = create_certificate(&control.xds, Some(&token), &greedy_csr(), 0).unwrap();
    assert_eq!(spiffe_id(&chain[0]), "spiffe://corp.example/ns/a/sa/b");
    assert_eq!(chain[1], std::fs::read_to_string(&cert).unwrap());
    assert!(!data.path().join("ca/root-key.pem").exists());
    let refused = control.cli(&["ca", "rotate"]);
    assert!(refused.stderr.contains("the operator's"), "{refused:?}");
}

/// The PEM inside a `ROOTCA` Secret of an SDS response.
fn rootca_pem(resp: &envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse) -> String {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
    use prost::Message;
    assert_eq!(resp.resources.len(), 1, "{resp:?}");
    let s = Secret::decode(resp.resources[0].value.as_slice()).unwrap();
    assert_eq!(s.name, "ROOTCA");
    let Some(secret::Type::ValidationContext(v)) = s.r#type else {
        panic!("ROOTCA is not a validation context: {s:?}")
    };
    let Some(Specifier::InlineBytes(pem)) = v.trusted_ca.and_then(|d| d.specifier) else {
        panic!("ROOTCA has no inline trusted_ca")
    };
    String::from_utf8(pem).unwrap()
}

async fn next_response<T>(responses: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("an SDS response in time")
        .expect("stream open")
        .expect("a response")
}

#[test]
fn the_trust_bundle_is_served_and_pushed_over_sds() {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;

    const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    let data = tempfile::tempdir().unwrap();
    let control = Control::start(data.path(), &[]);
    let bundle_file = data.path().join("ca/trust-bundle.pem");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client =
            AggregatedDiscoveryServiceClient::connect(format!("http://{}", control.xds))
                .await
                .expect("connect");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let requests =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let request = |version: &str, nonce: &str| DiscoveryRequest {
            version_info: version.into(),
            node: Some(Node {
                id: "sds-test".into(),
                ..Default::default()
            }),
            type_url: SECRET.into(),
            resource_names: vec!["ROOTCA".into()],
            response_nonce: nonce.into(),
            ..Default::default()
        };
        tx.send(request("", "")).await.unwrap();
        let mut responses = client
            .stream_aggregated_resources(requests)
            .await
            .unwrap()
            .into_inner();
        let first = next_response(&mut responses).await;
        assert_eq!(
            rootca_pem(&first),
            std::fs::read_to_string(&bundle_file).unwrap()
        );
        tx.send(request(&first.version_info, &first.nonce))
            .await
            .unwrap();

        let rotated = tokio::task::spawn_blocking({
            let api = control.api.clone();
            move || crate::support::trellis(&["ca", "rotate", "--server", &api])
        })
        .await
        .unwrap();
        assert_eq!(rotated.code, 0, "{rotated:?}");
        let second = next_response(&mut responses).await;
        let pem = rootca_pem(&second);
        assert_eq!(pem, std::fs::read_to_string(&bundle_file).unwrap());
        assert_eq!(
            pem.matches("BEGIN CERTIFICATE").count(),
            2,
            "old and new root"
        );
        assert!(pem.starts_with(&rootca_pem(&first)), "the old root stays");
    });
}

/// Run a shell command in `dir`; panics with its output on failure.
fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{script}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_operator_intermediate_made_with_openssl_signs() {
    let data = tempfile::tempdir().unwrap();
    let pki = tempfile::tempdir().unwrap();
    // What an operator does with openssl: a root, and an intermediate for the mesh.
    sh(
        pki.path(),
        "umask 077
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out root-key.pem 2>/dev/null
        openssl req -x509 -new -key root-key.pem -subj '/O=corp/CN=Corp root' -days 30 \
          -addext basicConstraints=critical,CA:true -addext keyUsage=critical,keyCertSign,cRLSign \
          -out root-cert.pem
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca-key.pem 2>/dev/null
        openssl req -new -key ca-key.pem -subj '/O=corp/CN=Mesh intermediate' -out ca.csr
        printf 'basicConstraints=critical,CA:true,pathlen:0\\nkeyUsage=critical,keyCertSign,cRLSign\\n' > ext.cnf
        openssl x509 -req -in ca.csr -CA root-cert.pem -CAkey root-key.pem -CAcreateserial \
          -days 10 -extfile ext.cnf -out ca-cert.pem 2>/dev/null",
    );
    let p = |n: &str| pki.path().join(n).to_str().unwrap().to_owned();
    let args = [
        "--trust-domain",
        "corp.example",
        "--ca-cert",
        &p("ca-cert.pem"),
        "--ca-key",
        &p("ca-key.pem"),
    ];
    // Without its chain the intermediate cannot be used: the error says what to add.
    let err = Control::try_start(data.path(), &args)
        .err()
        .expect("refused");
    assert!(err.contains("--ca-chain"), "{err}");

    let chain_arg = p("root-cert.pem");
    let control = Control::start(
        data.path(),
        &[&args[..], &["--ca-chain", &chain_arg]].concat(),
    );
    let token = control
        .cli(&["token", "create", "-n", "pay", "--service-account", "api"])
        .ok()
        .stdout
        .trim()
        .to_owned();
    let chain = create_certificate(&control.xds, Some(&token), &greedy_csr(), 600).unwrap();
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(spiffe_id(&chain[0]), "spiffe://corp.example/ns/pay/sa/api");
    let root = std::fs::read_to_string(pki.path().join("root-cert.pem")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let (ok, text) = openssl_verify(scratch.path(), &chain, &root);
    assert!(ok, "{text}");
    // The bundle holds the operator's root, not the intermediate.
    let bundle = std::fs::read_to_string(data.path().join("ca/trust-bundle.pem")).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 1);
    let (ok, text) = openssl_verify(scratch.path(), &chain, &bundle);
    assert!(ok, "{text}");
}

/// The Secrets (name -> decoded) one ADS stream gets when it asks for
/// `default` and `ROOTCA`, with or without a bearer token.
fn secrets_for(
    xds: &str,
    token: Option<&str>,
) -> std::collections::BTreeMap<
    String,
    envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
> {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use prost::Message;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{xds}"))
            .await
            .expect("connect");
        let first = DiscoveryRequest {
            node: Some(Node {
                id: format!("secrets-{}", token.map_or(0, str::len)),
                ..Default::default()
            }),
            type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into(),
            resource_names: vec!["default".into(), "ROOTCA".into()],
            ..Default::default()
        };
        // The first request, then silence: the stream stays open.
        let requests = futures_util::StreamExt::chain(
            futures_util::stream::iter(vec![first]),
            futures_util::stream::pending(),
        );
        let mut req = tonic::Request::new(requests);
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let mut responses = client
            .stream_aggregated_resources(req)
            .await
            .unwrap()
            .into_inner();
        let resp = next_response(&mut responses).await;
        resp.resources
            .iter()
            .map(|a| {
                let s = Secret::decode(a.value.as_slice()).unwrap();
                (s.name.clone(), s)
            })
            .collect()
    })
}

#[test]
fn only_a_stream_with_a_valid_token_gets_the_default_secret() {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret;
    let data = tempfile::tempdir().unwrap();
    let control = Control::start(data.path(), &[]);
    let token = control
        .cli(&["token", "create", "-n", "shop", "--service-account", "cart"])
        .ok()
        .stdout
        .trim()
        .to_owned();

    let got = secrets_for(&control.xds, Some(&token));
    assert_eq!(got.keys().collect::<Vec<_>>(), ["ROOTCA", "default"]);
    let Some(secret::Type::TlsCertificate(tls)) = &got["default"].r#type else {
        panic!("default is not a TLS certificate: {:?}", got["default"]);
    };
    let bytes = |d: &Option<envoy_types::pb::envoy::config::core::v3::DataSource>| match d
        .as_ref()
        .and_then(|d| d.specifier.clone())
    {
        Some(Specifier::InlineBytes(b)) => String::from_utf8(b).unwrap(),
        other => panic!("not inline bytes: {other:?}"),
    };
    let chain = bytes(&tls.certificate_chain);
    let key = bytes(&tls.private_key);
    assert_eq!(spiffe_id(&chain), "spiffe://cluster.local/ns/shop/sa/cart");
    // The key is the certificate's, and the chain verifies to the root.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    std::fs::write(dir.path().join("cert.pem"), &chain).unwrap();
    let pubkey = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    assert_eq!(
        pubkey(&["pkey", "-in", "key.pem", "-pubout"]),
        pubkey(&["x509", "-in", "cert.pem", "-noout", "-pubkey"])
    );
    let root = std::fs::read_to_string(data.path().join("ca/root-cert.pem")).unwrap();
    let (ok, text) = openssl_verify(dir.path(), &[chain.clone(), root.clone()], &root);
    assert!(ok, "{text}");

    // No token, or one that does not verify: the trust bundle only.
    for t in [None, Some("tbt1.e30.AAAA")] {
        let got = secrets_for(&control.xds, t);
        assert_eq!(got.keys().collect::<Vec<_>>(), ["ROOTCA"], "{t:?}");
    }
    let (_, _, metrics) = http(&control.api, "GET", "/metrics", "text/plain", "");
    for line in [
        r#"trellis_control_certificates_total{result="issued",reason=""} 1"#,
        r#"trellis_control_certificates_total{result="refused",reason="token_bad_signature"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    let logs = control.logs();
    assert!(logs.contains("token refused"), "{logs}");
    assert!(!logs.contains(&token), "the token in the logs");
    assert!(
        !logs.contains(key.lines().nth(1).unwrap()),
        "the key in the logs"
    );
}
