//! Handshakes between the server and client configs over an in-memory pipe,
//! with certificates from a throwaway CA.

use std::sync::Arc;

use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_testing::{TestCa, Validity};

use super::client::{Allowed, identity_not_allowed, istio_mutual_config};
use super::server::server_config;
use super::{Credentials, SpiffeId, provider};

fn creds(ca: &TestCa, id: &str, validity: Validity, trust: &[&TestCa]) -> Credentials {
    let issued = ca.issue(id, validity);
    Credentials {
        chain: CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap(),
        key: PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap(),
        roots: trust
            .iter()
            .map(|t| CertificateDer::from_pem_slice(t.root_pem().as_bytes()).unwrap())
            .collect(),
    }
}

const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER: &str = "spiffe://cluster.local/ns/default/sa/server";

/// Ok(the client's identity as the server saw it) or the client's error.
async fn handshake(
    server: &Credentials,
    client: &Credentials,
    allowed: Allowed,
) -> Result<Option<SpiffeId>, std::io::Error> {
    let p = provider();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(server, &p).unwrap()));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        istio_mutual_config(client, allowed, &[b"h2"], &p).unwrap(),
    ));
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server_side = tokio::spawn(async move {
        let mut s = acceptor.accept(a).await?;
        let id = s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| SpiffeId::from_cert(c).ok().flatten());
        let alpn = s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        s.write_all(b"ok").await?;
        s.flush().await?;
        Ok::<_, std::io::Error>((id, alpn))
    });
    let name = ServerName::try_from("outbound_.9080_._.server.default.svc.cluster.local").unwrap();
    let mut c = connector.connect(name, b).await?;
    let mut buf = [0u8; 2];
    c.read_exact(&mut buf).await?;
    let (id, alpn) = server_side.await.unwrap().expect("server side");
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "ALPN h2 negotiated");
    Ok(id)
}

#[tokio::test]
async fn mutual_tls_and_secure_naming() {
    let ca = TestCa::new("mesh");
    let other = TestCa::new("other");
    let server = creds(&ca, SERVER, Validity::Current, &[&ca]);
    let client = creds(&ca, CLIENT, Validity::Current, &[&ca]);
    let td = || Allowed::TrustDomain("cluster.local".into());
    let only = |s: &str| Allowed::Ids(vec![SpiffeId::parse(s).unwrap()]);

    // Same CA, allowed identity: the server sees the client's SPIFFE ID.
    let seen = handshake(&server, &client, td()).await.unwrap();
    assert_eq!(seen.unwrap().to_string(), CLIENT);
    handshake(&server, &client, only(SERVER)).await.unwrap();

    // Secure naming: a valid server with another identity is refused, and
    // the error says it was the identity.
    let e = handshake(&server, &client, only(CLIENT)).await.unwrap_err();
    let why = identity_not_allowed(&e).expect("an identity error");
    assert_eq!(why.found, SERVER);
    let e = handshake(&server, &client, Allowed::TrustDomain("other.td".into()))
        .await
        .unwrap_err();
    assert!(identity_not_allowed(&e).is_some(), "{e}");

    // A server whose certificate comes from another CA: refused by the client.
    let foreign_server = creds(&other, SERVER, Validity::Current, &[&ca]);
    let e = handshake(&foreign_server, &client, td()).await.unwrap_err();
    assert!(identity_not_allowed(&e).is_none(), "{e}");

    // A client from another CA, or expired: refused by the server.
    let foreign_client = creds(&other, CLIENT, Validity::Current, &[&ca]);
    assert!(handshake(&server, &foreign_client, td()).await.is_err());
    let expired_client = creds(&ca, CLIENT, Validity::Expired, &[&ca]);
    assert!(handshake(&server, &expired_client, td()).await.is_err());
    let expired_server = creds(&ca, SERVER, Validity::Expired, &[&ca]);
    assert!(handshake(&expired_server, &client, td()).await.is_err());
}

#[test]
fn credentials_are_checked_before_use() {
    let ca = TestCa::new("mesh");
    let p = provider();
    let good = creds(&ca, SERVER, Validity::Current, &[&ca]);
    assert_eq!(good.check(&p).unwrap().to_string(), SERVER);
    // A key from another certificate.
    let other = creds(&ca, CLIENT, Validity::Current, &[&ca]);
    let mismatched = Credentials {
        chain: good.chain.clone(),
        key: other.key.clone_key(),
        roots: good.roots.clone(),
    };
    let e = mismatched.check(&p).unwrap_err().to_string();
    assert!(e.contains("does not fit"), "{e}");
    let no_roots = Credentials {
        chain: good.chain.clone(),
        key: good.key.clone_key(),
        roots: vec![],
    };
    assert!(
        no_roots
            .check(&p)
            .unwrap_err()
            .to_string()
            .contains("no trust roots")
    );
}

#[test]
fn identity_dir_loads_and_keeps_failures_readable() {
    let ca = TestCa::new("mesh");
    let dir = tempfile::tempdir().unwrap();
    let p = provider();
    let missing = super::identity_dir::load(dir.path(), &p)
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("cert.pem") && missing.contains("cannot read"),
        "{missing}"
    );

    ca.write_identity_dir(dir.path(), SERVER, Validity::Current, &[]);
    let (_, id) = super::identity_dir::load(dir.path(), &p).unwrap();
    assert_eq!(id.to_string(), SERVER);

    // A key file that is not PEM: named, and its bytes not echoed.
    std::fs::write(
        dir.path().join("key.pem"),
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n",
    )
    .unwrap();
    let bad = super::identity_dir::load(dir.path(), &p)
        .unwrap_err()
        .to_string();
    assert!(bad.contains("key.pem"), "{bad}");
    assert!(!bad.contains("c2VjcmV0"), "key bytes in the error: {bad}");
}

/// The watcher publishes a good new set, and keeps the last good one while
/// the directory holds a bad one.
#[test]
fn identity_dir_watch_rotates_and_keeps_the_last_good_set() {
    use std::time::{Duration, Instant};
    let ca = TestCa::new("mesh");
    let dir = tempfile::tempdir().unwrap();
    ca.write_identity_dir(dir.path(), SERVER, Validity::Current, &[]);
    let p = provider();
    let (first, _) = super::identity_dir::initial(dir.path(), &p).unwrap();
    let (tx, mut rx) = tokio::sync::watch::channel(Some(first.clone()));
    let watched = dir.path().to_path_buf();
    std::thread::spawn(move || {
        super::identity_dir::watch(watched, p, tx, Duration::from_millis(20))
    });
    let current_id = |rx: &tokio::sync::watch::Receiver<Option<Arc<Credentials>>>| {
        rx.borrow()
            .as_ref()
            .unwrap()
            .identity()
            .unwrap()
            .to_string()
    };

    // A certificate that does not fit the key: not published.
    let stray = ca.issue(CLIENT, Validity::Current);
    std::fs::write(dir.path().join("cert.pem"), stray.cert_pem).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!rx.has_changed().unwrap(), "a mismatched set was published");
    assert_eq!(current_id(&rx), SERVER);

    // A complete new set (another identity): published.
    ca.write_identity_dir(dir.path(), CLIENT, Validity::Current, &[]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !rx.has_changed().unwrap() {
        assert!(Instant::now() < deadline, "the new set was not published");
        std::thread::sleep(Duration::from_millis(10));
    }
    rx.borrow_and_update();
    assert_eq!(current_id(&rx), CLIENT);
}
