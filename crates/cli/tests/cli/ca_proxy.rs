//! trellis-proxy's certificate from the control plane's CA, through the real
//! binaries: `trellis token create`, then a sidecar with `--token-file`
//! makes its own key, gets a certificate for the token's identity, renews
//! it at half-life, and trusts the bundle the control plane pushes over SDS
//! (two roots during a rotation). Its traffic keeps flowing meanwhile: the
//! inbound listener trellis control sends carries no TLS yet, so having a
//! certificate must not make the sidecar refuse its plaintext peers.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use trellis_testing::{EchoServer, ProxyProcess, http1_client_to, try_send};

use crate::outage::{mesh_yaml, proxy_binary, sidecar};
use crate::support::{Control, eventually, write};

/// A sidecar over xDS whose certificate comes from the CA.
fn sidecar_with_token(
    rt: &tokio::runtime::Runtime,
    xds: &str,
    token_file: &std::path::Path,
    lifetime: &str,
    app: SocketAddr,
) -> ProxyProcess {
    let any = "127.0.0.14:0".to_string();
    let args: Vec<String> = [
        "sidecar",
        "--xds",
        xds,
        "--workload",
        "reviews-1",
        "--namespace",
        "default",
        "--service-account",
        "ignored-by-the-ca",
        "--labels",
        "app=reviews",
        "--app",
        &app.to_string(),
        "--token-file",
        &token_file.display().to_string(),
        "--cert-lifetime",
        lifetime,
        "--outbound",
        &any,
        "--inbound",
        &any,
        "--admin",
        &any,
        "--workers",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    rt.block_on(ProxyProcess::command(&proxy_binary()).args(args).start())
        .unwrap_or_else(|e| panic!("starting trellis-proxy: {e}"))
}

fn identity(rt: &tokio::runtime::Runtime, proxy: &ProxyProcess) -> Value {
    let (status, body) = rt.block_on(proxy.admin_get("/config_dump"));
    assert_eq!(status, 200, "{body}");
    let dump: Value = serde_json::from_str(&body).unwrap();
    dump["identity"].clone()
}

#[test]
fn a_sidecar_gets_renews_and_rotates_its_certificate_from_the_ca() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(EchoServer::start("reviews"));
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&dir.path().join("data"), &[]);
    let token = control
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
        .ok()
        .stdout
        .trim()
        .to_string();
    assert!(!token.is_empty());
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A 4 s certificate: renewed every ~2 s.
    let proxy = sidecar_with_token(&rt, &control.xds, &token_file, "4s", app.addr());
    let first = eventually("a certificate from the CA", || {
        let id = identity(&rt, &proxy);
        id["spiffe_id"].is_string().then_some(id)
    });
    assert_eq!(
        first["spiffe_id"], "spiffe://cluster.local/ns/default/sa/reviews",
        "the token's identity, not the --service-account the node claims: {first}"
    );
    let serial = first["certificate"]["serial"].clone();
    assert!(serial.is_string(), "{first}");
    let renewed = eventually("a renewed certificate", || {
        let id = identity(&rt, &proxy);
        (id["certificate"]["serial"] != serial && id["spiffe_id"].is_string()).then_some(id)
    });
    assert_eq!(renewed["spiffe_id"], first["spiffe_id"]);
    assert!(
        renewed["certificate"]["not_after_unix"].as_i64()
            > first["certificate"]["not_after_unix"].as_i64(),
        "later expiry: {first} -> {renewed}"
    );

    // A root rotation reaches the proxy over SDS: both roots trusted.
    assert_eq!(renewed["trusted_roots"], 1, "{renewed}");
    control.cli(&["ca", "rotate"]).ok();
    eventually("the rotated bundle (two roots)", || {
        (identity(&rt, &proxy)["trusted_roots"] == 2).then_some(())
    });

    // A plaintext peer still reaches it through trellis control's config.
    let client = sidecar(
        &rt,
        &control.xds,
        "productpage",
        "app=productpage",
        "127.0.0.13",
        None,
    );
    let mesh = write(dir.path(), "mesh.yaml", &mesh_yaml(proxy.inbound().port()));
    control.cli(&["apply", "-f", mesh.to_str().unwrap()]).ok();
    let outbound = client.outbound();
    eventually("a request through both sidecars", || {
        let req = Request::get("http://reviews:9080/ok")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = rt
            .block_on(try_send(&http1_client_to(outbound), req))
            .ok()?;
        (r.0 == 200).then_some(())
    });

    // The token never reaches the logs.
    let logs = proxy.logs();
    assert!(!logs.contains(&token), "the token was logged");
    assert!(
        !control.logs().contains(&token),
        "the token was logged by control"
    );
}
