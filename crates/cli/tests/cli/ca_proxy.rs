//! Certificates from the control plane's CA, through the real binaries:
//! `trellis token create`, then sidecars with `--token-file` make their own
//! keys, get certificates for their tokens' identities, renew them at
//! half-life, trust the bundle pushed over SDS (two roots during a
//! rotation), and speak mTLS to each other over xDS config: the app sees
//! the caller's SPIFFE ID, and short certificates renewed every ~2 s and a
//! root rotation under continuous load fail no request.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use trellis_testing::{EchoServer, ProxyProcess, http1_client_to, try_send};

use crate::outage::{mesh_yaml, sidecar};
use crate::support::{Control, eventually, write};

/// A token for `default/<sa>`, in a 0600 file.
fn token_file(control: &Control, dir: &Path, sa: &str) -> (String, PathBuf) {
    let run = control
        .cli(&[
            "token",
            "create",
            "--namespace",
            "default",
            "--service-account",
            sa,
            "--ttl",
            "1h",
        ])
        .ok();
    let token = run.stdout.trim().to_string();
    assert!(!token.is_empty(), "{run:?}");
    let path = dir.join(format!("{sa}.token"));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (token, path)
}

/// A sidecar over xDS whose certificate comes from the CA (4 s ones,
/// renewed every ~2 s), on its own loopback address.
fn sidecar_with_token(
    rt: &tokio::runtime::Runtime,
    xds: &str,
    workload: &str,
    token_file: &Path,
    ip: &str,
    app: Option<SocketAddr>,
) -> ProxyProcess {
    let token_file = token_file.display().to_string();
    sidecar(
        rt,
        xds,
        workload,
        &format!("app={workload}"),
        ip,
        app,
        &[
            // What the node claims; the certificate says what the token says.
            "--service-account",
            "ignored-by-the-ca",
            "--token-file",
            &token_file,
            "--cert-lifetime",
            "4s",
        ],
    )
}

fn identity(rt: &tokio::runtime::Runtime, proxy: &ProxyProcess) -> Value {
    let (status, body) = rt.block_on(proxy.admin_get("/config_dump"));
    assert_eq!(status, 200, "{body}");
    let dump: Value = serde_json::from_str(&body).unwrap();
    dump["identity"].clone()
}

fn has_identity(rt: &tokio::runtime::Runtime, proxy: &ProxyProcess) -> Option<Value> {
    let id = identity(rt, proxy);
    id["spiffe_id"].is_string().then_some(id)
}

#[test]
fn sidecars_get_renew_and_rotate_ca_certificates_and_speak_mtls_throughout() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(EchoServer::start("reviews"));
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&dir.path().join("data"), &[]);
    let (server_token, server_file) = token_file(&control, dir.path(), "reviews");
    let (client_token, client_file) = token_file(&control, dir.path(), "productpage");

    let server = sidecar_with_token(
        &rt,
        &control.xds,
        "reviews",
        &server_file,
        "127.0.0.14",
        Some(app.addr()),
    );
    let client = sidecar_with_token(
        &rt,
        &control.xds,
        "productpage",
        &client_file,
        "127.0.0.13",
        None,
    );
    let first = eventually("a certificate from the CA", || has_identity(&rt, &server));
    assert_eq!(
        first["spiffe_id"], "spiffe://cluster.local/ns/default/sa/reviews",
        "the token's identity, not the service account the node claims: {first}"
    );
    eventually("the client's certificate", || has_identity(&rt, &client));

    let mesh = write(dir.path(), "mesh.yaml", &mesh_yaml(server.inbound().port()));
    control.cli(&["apply", "-f", mesh.to_str().unwrap()]).ok();
    let outbound = http1_client_to(client.outbound());
    let call = || {
        let req = Request::get("http://reviews:9080/hello")
            .body(Full::new(Bytes::new()))
            .unwrap();
        rt.block_on(try_send(&outbound, req)).ok()
    };
    let body = eventually("a call through both sidecars", || {
        call().and_then(|(s, _, b)| (s == 200).then_some(b))
    });
    let echoed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        echoed["headers"]["x-forwarded-client-cert"],
        "By=spiffe://cluster.local/ns/default/sa/reviews;URI=spiffe://cluster.local/ns/default/sa/productpage",
        "mTLS with the CA's certificates: {echoed}"
    );

    // Continuous calls while both certificates are renewed (every ~2 s)
    // and the CA's root is rotated: not one fails.
    let serial = identity(&rt, &server)["certificate"]["serial"].clone();
    let (mut ok, mut failed) = (0u32, Vec::new());
    let mut rotated = false;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(7) {
        if !rotated && start.elapsed() > Duration::from_secs(2) {
            control.cli(&["ca", "rotate"]).ok();
            rotated = true;
        }
        match call() {
            Some((s, _, _)) if s == 200 => ok += 1,
            other => failed.push(format!("{other:?}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok > 50, "only {ok} calls");
    let now = identity(&rt, &server);
    assert_ne!(
        now["certificate"]["serial"], serial,
        "renewed during the calls: {now}"
    );
    assert_eq!(now["spiffe_id"], first["spiffe_id"]);
    eventually("the rotated bundle (two roots) on both sides", || {
        (identity(&rt, &server)["trusted_roots"] == 2
            && identity(&rt, &client)["trusted_roots"] == 2)
            .then_some(())
    });
    eprintln!("{ok} calls through mTLS while certificates renewed and the root rotated, 0 failed");

    // The tokens never reach the logs.
    for token in [&server_token, &client_token] {
        assert!(
            !server.logs().contains(token.as_str()),
            "a token was logged"
        );
        assert!(
            !client.logs().contains(token.as_str()),
            "a token was logged"
        );
        assert!(
            !control.logs().contains(token.as_str()),
            "control logged a token"
        );
    }
}
