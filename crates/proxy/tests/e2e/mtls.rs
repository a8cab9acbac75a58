//! Mutual TLS between two real sidecars on loopback: a client-side proxy
//! (outbound) and a server-side proxy (inbound, in front of an echo app),
//! each with an identity directory written by a throwaway CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use trellis_testing::{
    EchoServer, ProxyProcess, StartError, TestCa, Validity, http1_client_to, try_send,
};

use crate::support::*;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";
const TLS_MODE: (&str, &str) = ("security.istio.io/tlsMode", "istio");

/// HTTP on 9080 and HTTP/2 on 9081, both to the server sidecar's inbound.
const PORTS: &[(u16, &str, &str)] = &[(9080, "http", "HTTP"), (9081, "http2", "HTTP2")];

struct Identities {
    dir: TempDir,
}

impl Identities {
    fn new() -> Identities {
        Identities {
            dir: tempfile::Builder::new()
                .prefix("trellis-e2e-identity-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    fn path(&self, who: &str) -> PathBuf {
        self.dir.path().join(who)
    }

    /// Write `who`'s identity directory, issued by `ca`, trusting `trust`.
    fn write(
        &self,
        who: &str,
        ca: &TestCa,
        id: &str,
        validity: Validity,
        extra_trust: &[&TestCa],
    ) -> PathBuf {
        let p = self.path(who);
        ca.write_identity_dir(&p, id, validity, extra_trust);
        p
    }
}

async fn server_proxy(
    app: &EchoServer,
    identity: Option<&Path>,
    files: &[(&str, String)],
) -> Proxy {
    let app_addr = app.addr().to_string();
    let id = identity.map(|p| p.display().to_string());
    let mut extra = vec!["--app", &app_addr, "--inbound-detect-timeout", "100ms"];
    if let Some(id) = &id {
        extra.extend(["--identity-dir", id.as_str()]);
    }
    Proxy::start_with(files, &extra).await
}

async fn client_proxy(identity: Option<&Path>, files: &[(&str, String)]) -> Proxy {
    let id = identity.map(|p| p.display().to_string());
    let mut extra = vec![];
    if let Some(id) = &id {
        extra.extend(["--identity-dir", id.as_str()]);
    }
    Proxy::start_with(files, &extra).await
}

/// The ServiceEntry the client side uses for the server, its endpoint
/// labelled as meshed (auto mTLS), plus `extra` spec lines.
fn reviews(server: &Proxy, extra: &str) -> String {
    let mut se = service_entry("reviews", PORTS, &[(server.inbound(), &[TLS_MODE][..])]);
    se.push_str(extra);
    se
}

fn peer_authentication(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: default}}\nspec: {spec}\n"
    )
}

fn xfcc(j: &serde_json::Value) -> Option<String> {
    j["headers"]["x-forwarded-client-cert"]
        .as_str()
        .map(str::to_string)
}

/// A direct plaintext request to a listener; None when the proxy closed the
/// connection without an HTTP response.
async fn plaintext(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> Option<Reply> {
    let client = http1_client_to(addr);
    let req = get_headers("http://reviews:9080/direct", headers);
    try_send(&client, req)
        .await
        .ok()
        .map(|(status, headers, body)| Reply {
            status,
            headers,
            body,
        })
}

#[tokio::test]
async fn sidecars_speak_mtls_and_the_app_sees_the_verified_caller() {
    let ca = TestCa::new("mesh");
    let ids = Identities::new();
    let app = EchoServer::start("app").await;
    let server = server_proxy(
        &app,
        Some(&ids.write("server", &ca, SERVER_ID, Validity::Current, &[])),
        &[],
    )
    .await;
    let client = client_proxy(
        Some(&ids.write("client", &ca, CLIENT_ID, Validity::Current, &[])),
        &[("se.yaml", reviews(&server, ""))],
    )
    .await;

    // The app claims an identity it does not have: the claim is dropped on
    // the way out and replaced by the verified one on the way in.
    let spoof = [(
        "x-forwarded-client-cert",
        "URI=spiffe://cluster.local/ns/kube-system/sa/admin",
    )];
    for (url, version) in [
        ("http://reviews:9080/h1", "HTTP/1.1"),
        ("http://reviews:9081/h2", "HTTP/2.0"),
    ] {
        let r = client.send(get_headers(url, &spoof)).await;
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        let j = r.json();
        assert_eq!(j["version"], version, "ALPN keeps the protocol: {j}");
        assert_eq!(
            xfcc(&j).as_deref(),
            Some(format!("By={SERVER_ID};URI={CLIENT_ID}").as_str()),
            "{j}"
        );
    }
    let m = server.metrics().await;
    let mtls = metric_value(
        &m,
        r#"trellis_inbound_connections_by_transport_total{transport="mtls"}"#,
    );
    assert!(mtls.is_some_and(|n| n >= 2.0), "{m}");
    assert_eq!(
        metric_value(
            &m,
            r#"trellis_inbound_connections_by_transport_total{transport="plaintext"}"#
        ),
        None,
        "{m}"
    );
    let cluster = client
        .cluster_dump("outbound|9080||reviews.default.svc.cluster.local")
        .await;
    assert_eq!(cluster["tls"]["mode"], "AUTO", "{cluster}");
    assert_eq!(
        server.config_dump().await["config"]["peer_authentication"]["mode"],
        "UNSET"
    );
}

#[tokio::test]
async fn strict_is_the_default_and_refuses_plaintext() {
    let ca = TestCa::new("mesh");
    let ids = Identities::new();
    let app = EchoServer::start("app").await;
    let server = server_proxy(
        &app,
        Some(&ids.write("server", &ca, SERVER_ID, Validity::Current, &[])),
        &[],
    )
    .await;

    assert!(
        plaintext(server.inbound(), &[]).await.is_none(),
        "plaintext got a response from STRICT"
    );
    // Silence is not a way around it either (no server-first fallback).
    let mut s = tokio::net::TcpStream::connect(server.inbound())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::io::AsyncReadExt::read(&mut s, &mut buf),
    )
    .await
    .expect("a silent connection to STRICT is closed")
    .unwrap_or(0);
    assert_eq!(n, 0, "the app's bytes reached a plaintext peer");
    assert_eq!(app.requests(), 0);
    server
        .wait_metric(
            r#"trellis_inbound_connections_refused_total{reason="plaintext_refused"}"#,
            2.0,
            Duration::from_secs(5),
        )
        .await;

    // A client proxy without a certificate sends plaintext: refused too.
    let client = client_proxy(None, &[("se.yaml", reviews(&server, ""))]).await;
    let r = client.get("http://reviews:9080/no-cert").await;
    assert!(r.status.is_server_error(), "{} {}", r.status, r.text());
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn foreign_and_expired_client_certificates_are_refused() {
    let ca = TestCa::new("mesh");
    let other = TestCa::new("other");
    let ids = Identities::new();
    let app = EchoServer::start("app").await;
    let server = server_proxy(
        &app,
        Some(&ids.write("server", &ca, SERVER_ID, Validity::Current, &[])),
        &[],
    )
    .await;
    // Both clients trust the mesh CA, so it is the server that refuses them.
    let cases = [
        (
            "foreign",
            ids.write("foreign", &other, CLIENT_ID, Validity::Current, &[&ca]),
        ),
        (
            "expired",
            ids.write("expired", &ca, CLIENT_ID, Validity::Expired, &[]),
        ),
    ];
    let mut refused = 0.0;
    for (what, dir) in cases {
        let client = client_proxy(Some(&dir), &[("se.yaml", reviews(&server, ""))]).await;
        let r = client.get("http://reviews:9080/refused").await;
        assert!(
            r.status.is_server_error(),
            "{what}: {} {}",
            r.status,
            r.text()
        );
        assert!(
            r.reason().is_some(),
            "{what}: a local reply says why: {:?}",
            r.headers
        );
        refused += 1.0;
        let m = server.metrics().await;
        let n = metric_value(
            &m,
            r#"trellis_inbound_connections_refused_total{reason="tls_handshake"}"#,
        )
        .unwrap_or(0.0);
        assert!(n >= refused, "{what}: {m}");
    }
    assert_eq!(app.requests(), 0);
    // The same server accepts a good client (the refusals were about them).
    let good = client_proxy(
        Some(&ids.write("good", &ca, CLIENT_ID, Validity::Current, &[])),
        &[("se.yaml", reviews(&server, ""))],
    )
    .await;
    assert_eq!(good.get("http://reviews:9080/ok").await.status, 200);
}

/// `openssl s_client` against the STRICT inbound: with the client
/// certificate it gets an HTTP answer, without it none.
#[tokio::test]
async fn openssl_without_a_client_certificate_fails() {
    let ca = TestCa::new("mesh");
    let ids = Identities::new();
    let app = EchoServer::start("app").await;
    let server = server_proxy(
        &app,
        Some(&ids.write("server", &ca, SERVER_ID, Validity::Current, &[])),
        &[],
    )
    .await;
    let client_dir = ids.write("client", &ca, CLIENT_ID, Validity::Current, &[]);
    let addr = server.inbound().to_string();
    // std's process in a blocking task: the test runtime has no process driver.
    let s_client = |with_cert: bool| {
        let (addr, dir) = (addr.clone(), client_dir.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut cmd = std::process::Command::new("openssl");
                cmd.args(["s_client", "-connect", &addr, "-alpn", "http/1.1", "-quiet"])
                    .arg("-CAfile")
                    .arg(dir.join("roots.pem"));
                if with_cert {
                    cmd.arg("-cert")
                        .arg(dir.join("cert.pem"))
                        .arg("-key")
                        .arg(dir.join("key.pem"));
                }
                cmd.stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                let mut child = cmd.spawn().expect("openssl is installed");
                let mut stdin = child.stdin.take().unwrap();
                // The server may already have closed (no certificate).
                let _ =
                    stdin.write_all(b"GET /s HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
                let out = child.wait_with_output().unwrap();
                drop(stdin);
                (
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            })
            .await
            .unwrap()
        }
    };
    let (out, err) = s_client(true).await;
    assert!(
        out.contains("HTTP/1.1 200"),
        "with a certificate:\n{out}\n{err}"
    );
    assert!(
        out.contains(CLIENT_ID),
        "the app sees the caller in XFCC:\n{out}"
    );
    let (out, err) = s_client(false).await;
    assert!(
        !out.contains("HTTP/1.1"),
        "without a certificate:\n{out}\n{err}"
    );
    assert!(
        err.to_lowercase().contains("alert") || err.contains("error"),
        "{err}"
    );
    assert_eq!(app.requests(), 1);
}

#[tokio::test]
async fn permissive_accepts_both_and_disable_is_plaintext() {
    let ca = TestCa::new("mesh");
    let ids = Identities::new();
    let app = EchoServer::start("app").await;
    let server_dir = ids.write("server", &ca, SERVER_ID, Validity::Current, &[]);
    let server = server_proxy(
        &app,
        Some(&server_dir),
        &[(
            "pa.yaml",
            peer_authentication("default", "{mtls: {mode: PERMISSIVE}}"),
        )],
    )
    .await;
    let client = client_proxy(
        Some(&ids.write("client", &ca, CLIENT_ID, Validity::Current, &[])),
        &[("se.yaml", reviews(&server, ""))],
    )
    .await;
    let r = client.get("http://reviews:9080/mtls").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        xfcc(&r.json()).as_deref(),
        Some(format!("By={SERVER_ID};URI={CLIENT_ID}").as_str())
    );
    // Plaintext is served, and a claimed XFCC does not survive.
    let r = plaintext(
        server.inbound(),
        &[("x-forwarded-client-cert", "URI=spiffe://x/ns/a/sa/b")],
    )
    .await
    .expect("PERMISSIVE serves plaintext");
    assert_eq!(r.status, 200);
    assert_eq!(xfcc(&r.json()), None);
    let m = server.metrics().await;
    for t in ["mtls", "plaintext"] {
        let series =
            format!(r#"trellis_inbound_connections_by_transport_total{{transport="{t}"}}"#);
        assert!(
            metric_value(&m, &series).is_some_and(|n| n >= 1.0),
            "{series}\n{m}"
        );
    }

    // DISABLE: plaintext only. A client that still originates mTLS is not
    // terminated (its TLS bytes reach the app, which cannot answer them).
    let before = app.requests();
    server.config.write(
        "pa.yaml",
        &peer_authentication("default", "{mtls: {mode: DISABLE}}"),
    );
    eventually("DISABLE applied", Duration::from_secs(5), || async {
        (server.config_dump().await["config"]["peer_authentication"]["mode"] == "DISABLE")
            .then_some(())
    })
    .await;
    let r = plaintext(server.inbound(), &[])
        .await
        .expect("DISABLE serves plaintext");
    assert_eq!(r.status, 200);
    // A mode change applies to new connections (the first client's pooled
    // mTLS connection was admitted under PERMISSIVE): a fresh client.
    drop(client);
    let client = client_proxy(
        Some(&ids.write("client", &ca, CLIENT_ID, Validity::Current, &[])),
        &[("se.yaml", reviews(&server, ""))],
    )
    .await;
    let r = client.get("http://reviews:9080/tls-to-disabled").await;
    assert!(r.status.is_server_error(), "{} {}", r.status, r.text());
    assert_eq!(
        app.requests(),
        before + 1,
        "only the plaintext request reached the app as HTTP"
    );
    // The client side turns mTLS off with a DestinationRule.
    client.config.write(
        "dr.yaml",
        &destination_rule("reviews", &[], Some("tls: {mode: DISABLE}")),
    );
    eventually(
        "the client speaks plaintext",
        Duration::from_secs(5),
        || async {
            let r = client.get("http://reviews:9080/plain").await;
            (r.status == 200).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn secure_naming_refuses_a_server_with_another_identity() {
    let ca = TestCa::new("mesh");
    let ids = Identities::new();
    let app = EchoServer::start("app").await;
    let server = server_proxy(
        &app,
        Some(&ids.write("server", &ca, SERVER_ID, Validity::Current, &[])),
        &[],
    )
    .await;
    let only_reviews = "  subjectAltNames: [\"spiffe://cluster.local/ns/default/sa/reviews\"]\n";
    let client = client_proxy(
        Some(&ids.write("client", &ca, CLIENT_ID, Validity::Current, &[])),
        &[("se.yaml", reviews(&server, only_reviews))],
    )
    .await;
    let r = client.get("http://reviews:9080/wrong-server").await;
    r.assert_local(503, "upstream_identity_mismatch");
    assert!(r.text().contains(SERVER_ID), "{}", r.text());
    assert_eq!(app.requests(), 0);
    client
        .wait_metric(
            r#"trellis_local_replies_total{direction="outbound",reason="upstream_identity_mismatch"}"#,
            1.0,
            Duration::from_secs(5),
        )
        .await;

    // A DestinationRule naming the server's identity wins over the entry.
    client.config.write(
        "dr.yaml",
        &destination_rule(
            "reviews",
            &[],
            Some(&format!(
                "tls: {{mode: ISTIO_MUTUAL, subjectAltNames: [\"{SERVER_ID}\"]}}"
            )),
        ),
    );
    eventually(
        "the DestinationRule's identities apply",
        Duration::from_secs(5),
        || async {
            (client.get("http://reviews:9080/right-server").await.status == 200).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn strict_without_a_certificate_is_a_start_error() {
    let dir = ConfigDir::new();
    dir.write(
        "pa.yaml",
        &peer_authentication("default", "{mtls: {mode: STRICT}}"),
    );
    let err = ProxyProcess::command(bin())
        .args(sidecar_args(dir.path()))
        .start()
        .await
        .err()
        .expect("the proxy started STRICT without a certificate");
    match err {
        StartError::Exited { status, logs } => {
            assert_eq!(status.code(), Some(2), "{logs}");
            for needle in [
                "pa.yaml",
                "PeerAuthentication default/default",
                "spec.mtls.mode",
                "--identity-dir",
            ] {
                assert!(logs.contains(needle), "{needle:?} missing:\n{logs}");
            }
        }
        other => panic!("expected an exit, got {other}"),
    }
}

/// Both sides' certificates are rewritten every 2 s for 12 s while requests
/// flow on short-lived connections (every 5 requests a new handshake): not
/// one request may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_fails_no_request() {
    let ca = TestCa::new("mesh");
    let ids = Identities::new();
    let app = EchoServer::start("app").await;
    let server_dir = ids.write("server", &ca, SERVER_ID, Validity::Current, &[]);
    let client_dir = ids.write("client", &ca, CLIENT_ID, Validity::Current, &[]);
    let server = server_proxy(&app, Some(&server_dir), &[]).await;
    let retire = "connectionPool: {http: {maxRequestsPerConnection: 5}}";
    let client = Arc::new(
        client_proxy(
            Some(&client_dir),
            &[
                ("se.yaml", reviews(&server, "")),
                ("dr.yaml", destination_rule("reviews", &[], Some(retire))),
            ],
        )
        .await,
    );
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(12);
    let mut load = Vec::new();
    for i in 0..4 {
        let (client, ok, failed) = (client.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                let url = format!("http://reviews:9080/rotate/{i}/{n}");
                match try_send(&client.h1, get(&url)).await {
                    Ok((status, _, _)) if status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "{url}: {:?}",
                            other.map(|(s, _, b)| (s, String::from_utf8_lossy(&b).into_owned()))
                        );
                    }
                }
                n += 1;
            }
        }));
    }
    let mut rotations: u32 = 0;
    while Instant::now() + Duration::from_secs(2) < stop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        ca.write_identity_dir(&server_dir, SERVER_ID, Validity::Current, &[]);
        ca.write_identity_dir(&client_dir, CLIENT_ID, Validity::Current, &[]);
        rotations += 1;
    }
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("rotation under load: {ok} ok, {failed} failed, {rotations} rotations");
    assert_eq!(
        failed,
        0,
        "requests failed during rotation; server:\n{}",
        server.process.logs()
    );
    assert!(ok > 200, "too little load to mean anything: {ok}");
    // Each rotation was picked up by both proxies.
    for (who, p) in [("server", &server.process), ("client", &client.process)] {
        let reloads = p.logs().matches("workload certificate reloaded").count();
        assert!(
            reloads + 1 >= rotations as usize,
            "{who} reloaded {reloads} of {rotations}:\n{}",
            p.logs()
        );
    }
    let handshakes = metric_value(
        &server.metrics().await,
        r#"trellis_inbound_connections_by_transport_total{transport="mtls"}"#,
    )
    .unwrap_or(0.0);
    assert!(
        handshakes > f64::from(rotations * 2),
        "connections were not renewed: {handshakes}"
    );
}

/// Opaque TCP (a CONNECT tunnel on the client side) rides mTLS too: no
/// ALPN, the inside detected as opaque and spliced to the app, half-close
/// carried through both TLS layers.
#[tokio::test]
async fn opaque_tcp_rides_mtls() {
    let ca = TestCa::new("mesh");
    let ids = Identities::new();
    let app = trellis_testing::TcpEchoServer::start().await;
    let app_addr = app.addr().to_string();
    let server_dir = ids
        .write("server", &ca, SERVER_ID, Validity::Current, &[])
        .display()
        .to_string();
    let server = Proxy::start_with(
        &[],
        &[
            "--app",
            &app_addr,
            "--inbound-detect-timeout",
            "100ms",
            "--identity-dir",
            &server_dir,
        ],
    )
    .await;
    let client = client_proxy(
        Some(&ids.write("client", &ca, CLIENT_ID, Validity::Current, &[])),
        &[(
            "db.yaml",
            service_entry(
                "db",
                &[(7000, "tcp", "TCP")],
                &[(server.inbound(), &[TLS_MODE][..])],
            ),
        )],
    )
    .await;
    let tunnel = crate::tcp::open_tunnel(client.outbound(), "db:7000").await;
    let reply = crate::tcp::half_close_exchange(tunnel, b"secret bytes").await;
    assert_eq!(reply, "received 12 bytes: secret bytes");
    assert_eq!(app.connections(), 1);
    let m = server.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"trellis_inbound_connections_by_transport_total{transport="mtls"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

/// `openssl s_server -www` on a free loopback port: a TLS server outside
/// the mesh (HTTP/1.0 status page). Killed on drop.
struct OpensslServer {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl OpensslServer {
    fn start(cert: &Path, key: &Path, require_client_ca: Option<&Path>) -> OpensslServer {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new("openssl");
        cmd.args([
            "s_server",
            "-accept",
            "127.0.0.1:0",
            "-www",
            "-naccept",
            "100",
        ])
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key);
        if let Some(ca) = require_client_ca {
            cmd.arg("-Verify")
                .arg("1")
                .arg("-verify_return_error")
                .arg("-CAfile")
                .arg(ca);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl is installed");
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let addr = loop {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "s_server exited");
            if let Some(a) = line.trim().strip_prefix("ACCEPT ") {
                break a.parse().expect("s_server's address");
            }
        };
        // Keep reading its output so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).unwrap_or(0) > 0 {
                sink.clear();
            }
        });
        OpensslServer { child, addr }
    }
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// DestinationRule SIMPLE and MUTUAL to a server outside the mesh, verified
/// with the CA file and the SNI; failures explained.
#[tokio::test]
async fn simple_and_mutual_tls_to_an_external_server() {
    let ca = TestCa::new("external");
    let other = TestCa::new("other");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p.display().to_string()
    };
    let server = ca.issue_dns("api.example.com");
    let (cert, key) = (
        write("server.pem", &server.cert_pem),
        write("server-key.pem", &server.key_pem),
    );
    let ca_file = write("ca.pem", &ca.root_pem());
    let other_ca = write("other.pem", &other.root_pem());
    let client = ca.issue_dns("client.example.com");
    let (client_cert, client_key) = (
        write("client.pem", &client.cert_pem),
        write("client-key.pem", &client.key_pem),
    );

    let simple = OpensslServer::start(Path::new(&cert), Path::new(&key), None);
    let mutual = OpensslServer::start(Path::new(&cert), Path::new(&key), Some(Path::new(&ca_file)));
    let entry = |host: &str, addr: std::net::SocketAddr| {
        service_entry(host, &[(443, "http", "HTTP")], &[(addr, &[][..])])
    };
    let dr = |host: &str, tls: &str| destination_rule(host, &[], Some(&format!("tls: {tls}")));
    let proxy = Proxy::start(&[
        ("simple.yaml", entry("simple.example.com", simple.addr)),
        ("simple-dr.yaml", dr("simple.example.com", &format!("{{mode: SIMPLE, caCertificates: {ca_file}, sni: api.example.com}}"))),
        ("wrong-ca.yaml", entry("wrong-ca.example.com", simple.addr)),
        ("wrong-ca-dr.yaml", dr("wrong-ca.example.com", &format!("{{mode: SIMPLE, caCertificates: {other_ca}, sni: api.example.com}}"))),
        ("wrong-name.yaml", entry("wrong-name.example.com", simple.addr)),
        ("wrong-name-dr.yaml", dr("wrong-name.example.com", &format!("{{mode: SIMPLE, caCertificates: {ca_file}}}"))),
        ("sans.yaml", entry("sans.example.com", simple.addr)),
        ("sans-dr.yaml", dr("sans.example.com", &format!("{{mode: SIMPLE, caCertificates: {ca_file}, subjectAltNames: [other.example.com, api.example.com]}}"))),
        ("mutual.yaml", entry("mutual.example.com", mutual.addr)),
        ("mutual-dr.yaml", dr("mutual.example.com", &format!("{{mode: MUTUAL, caCertificates: {ca_file}, sni: api.example.com, clientCertificate: {client_cert}, privateKey: {client_key}}}"))),
        ("no-client-cert.yaml", entry("no-client-cert.example.com", mutual.addr)),
        ("no-client-cert-dr.yaml", dr("no-client-cert.example.com", &format!("{{mode: SIMPLE, caCertificates: {ca_file}, sni: api.example.com}}"))),
    ])
    .await;
    for host in ["simple", "sans", "mutual"] {
        let r = proxy.get(&format!("http://{host}.example.com:443/")).await;
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        assert!(r.text().contains("s_server"), "{host}: {}", r.text());
    }
    for (host, why) in [
        ("wrong-ca", "UnknownIssuer"),
        ("wrong-name", "not valid for name"),
    ] {
        let r = proxy.get(&format!("http://{host}.example.com:443/")).await;
        r.assert_local(503, "upstream_tls_handshake");
        assert!(r.text().contains(why), "{host}: {}", r.text());
    }
    // MUTUAL's server refuses a client without a certificate.
    let r = proxy.get("http://no-client-cert.example.com:443/").await;
    assert!(r.status.is_server_error(), "{} {}", r.status, r.text());

    // A missing file is a reload error at the field's path; the last good
    // config keeps serving.
    let before = proxy.generation().await;
    proxy.config.write(
        "simple-dr.yaml",
        &dr(
            "simple.example.com",
            "{mode: SIMPLE, caCertificates: /nonexistent/ca.pem}",
        ),
    );
    eventually(
        "the bad reload to be rejected",
        Duration::from_secs(5),
        || async {
            let (_, body) = proxy.process.admin_get("/config_dump").await;
            body.contains("/nonexistent/ca.pem").then_some(body)
        },
    )
    .await;
    assert_eq!(proxy.generation().await, before);
    assert!(
        proxy
            .process
            .logs()
            .contains("spec.trafficPolicy...tls.caCertificates"),
        "{}",
        proxy.process.logs()
    );
    assert_eq!(
        proxy.get("http://simple.example.com:443/").await.status,
        200
    );
}
