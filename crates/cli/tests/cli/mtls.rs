//! mTLS over xDS: two trellis-proxy sidecars with workload certificates
//! (`--identity-dir`), configured by `trellis control`. Calls between them
//! are mutual TLS (the app sees the caller's SPIFFE ID); the server's
//! inbound side is STRICT by default, so a plaintext client is refused,
//! until a PeerAuthentication PERMISSIVE applied through the API lets it in.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use trellis_testing::{EchoServer, ProxyProcess, TestCa, Validity, http1_client_to, try_send};

use crate::outage::{mesh_yaml, sidecar};
use crate::support::{Control, eventually, write};

const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/reviews";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/productpage";

/// A sidecar over xDS with a workload certificate.
fn mesh_sidecar(
    rt: &tokio::runtime::Runtime,
    xds: &str,
    workload: &str,
    labels: &str,
    service_account: &str,
    identity: &std::path::Path,
    app: Option<SocketAddr>,
) -> ProxyProcess {
    let identity = identity.display().to_string();
    sidecar(
        rt,
        xds,
        workload,
        labels,
        "127.0.0.1",
        app,
        &[
            "--service-account",
            service_account,
            "--identity-dir",
            &identity,
        ],
    )
}

#[test]
fn sidecars_from_the_control_plane_speak_mtls() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(EchoServer::start("reviews-app"));
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let ca = TestCa::new("mesh");
    let (server_dir, client_dir) = (
        files.path().join("server-id"),
        files.path().join("client-id"),
    );
    ca.write_identity_dir(&server_dir, SERVER_ID, Validity::Current, &[]);
    ca.write_identity_dir(&client_dir, CLIENT_ID, Validity::Current, &[]);

    let control = Control::start(data.path(), &[]);
    let server = mesh_sidecar(
        &rt,
        &control.xds,
        "reviews-v1",
        "app=reviews,version=v1",
        "reviews",
        &server_dir,
        Some(app.addr()),
    );
    let client = mesh_sidecar(
        &rt,
        &control.xds,
        "productpage",
        "app=productpage",
        "productpage",
        &client_dir,
        None,
    );
    let mesh = write(
        files.path(),
        "mesh.yaml",
        &mesh_yaml(server.inbound().port()),
    );
    control.cli(&["apply", "-f", mesh.to_str().unwrap()]).ok();

    // Through both sidecars: mTLS, and the app learns who called.
    let outbound = http1_client_to(client.outbound());
    let via_mesh = || {
        let req = Request::get("http://reviews:9080/hello")
            .body(Full::new(Bytes::new()))
            .unwrap();
        rt.block_on(try_send(&outbound, req)).ok()
    };
    let body = eventually("a call through both sidecars", || {
        via_mesh().and_then(|(s, _, b)| (s == 200).then_some(b))
    });
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let xfcc = echoed["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_else(|| panic!("no x-forwarded-client-cert: {echoed}"));
    assert_eq!(xfcc, format!("By={SERVER_ID};URI={CLIENT_ID}"), "{echoed}");

    // The server's inbound side is STRICT (no policy, a certificate): a
    // plaintext client gets no answer.
    let direct = http1_client_to(server.inbound());
    let plaintext = || {
        let req = Request::get("http://reviews:9080/direct")
            .header(
                "x-forwarded-client-cert",
                "URI=spiffe://cluster.local/ns/default/sa/admin",
            )
            .body(Full::new(Bytes::new()))
            .unwrap();
        rt.block_on(try_send(&direct, req))
    };
    let before = app.requests();
    let refused = plaintext();
    assert!(refused.is_err(), "STRICT answered plaintext: {refused:?}");
    assert_eq!(
        app.requests(),
        before,
        "a refused call never reaches the app"
    );

    // PERMISSIVE through the API: plaintext is let in (and its claimed
    // identity removed); mTLS still works.
    let pa = write(
        files.path(),
        "pa.yaml",
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews-permissive}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: PERMISSIVE}
",
    );
    control.cli(&["apply", "-f", pa.to_str().unwrap()]).ok();
    let body = eventually("plaintext let in by PERMISSIVE", || {
        plaintext()
            .ok()
            .and_then(|(s, _, b)| (s == 200).then_some(b))
    });
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        echoed["headers"].get("x-forwarded-client-cert").is_none(),
        "a plaintext caller's claim must not reach the app: {echoed}"
    );
    let (status, _, body) = via_mesh().expect("mTLS still works under PERMISSIVE");
    assert_eq!(status, 200);
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        echoed["headers"]["x-forwarded-client-cert"],
        format!("By={SERVER_ID};URI={CLIENT_ID}")
    );
}
