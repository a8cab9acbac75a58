//! AuthorizationPolicy through `trellis control`: the policy in its config
//! directory reaches the sidecar whose labels it selects (as RBAC filters on
//! its inbound listener) and is enforced there on requests that crossed a
//! client sidecar; `trellis get` shows which proxies it reaches.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use trellis_testing::{EchoServer, http1_client_to, try_send};

use crate::outage::{mesh_yaml, sidecar};
use crate::support::{Control, eventually, write};

const POLICIES: &str = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-readers}
spec:
  selector: {matchLabels: {app: reviews}}
  rules: [{to: [{operation: {methods: [GET], paths: ["/ok*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: elsewhere}
spec:
  selector: {matchLabels: {app: ratings}}
  action: DENY
  rules: [{}]
"#;

#[test]
fn policies_from_the_control_plane_are_enforced_where_they_select() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(EchoServer::start("reviews-app"));
    let data = tempfile::tempdir().unwrap();
    let cfg = tempfile::tempdir().unwrap();
    // The server sidecar's inbound port is only known once it runs: start
    // it first, then write the mesh with it.
    let control = Control::start(data.path(), &["--config-dir", cfg.path().to_str().unwrap()]);
    let server = sidecar(
        &rt,
        &control.xds,
        "reviews-v1",
        "app=reviews,version=v1",
        "127.0.0.1",
        Some(app.addr()),
        &[],
    );
    let client = sidecar(
        &rt,
        &control.xds,
        "productpage",
        "app=productpage",
        "127.0.0.1",
        None,
        &[],
    );
    write(
        cfg.path(),
        "mesh.yaml",
        &format!("{}{POLICIES}", mesh_yaml(server.inbound().port())),
    );

    let outbound = http1_client_to(client.outbound());
    let status = |path: &str| -> (u16, Option<String>) {
        let req = Request::get(format!("http://reviews:9080{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        match rt.block_on(try_send(&outbound, req)) {
            Ok((s, h, _)) => (
                s.as_u16(),
                h.get("x-trellis-reason")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            ),
            Err(e) => (0, Some(e.to_string())),
        }
    };
    // Once the config is everywhere, GET /ok passes and the rest is denied
    // by the reviews sidecar (the client's outbound passes the 403 on).
    eventually("GET /ok allowed through both sidecars", || {
        (status("/ok/1").0 == 200).then_some(())
    });
    eventually("GET /nope denied by default deny", || {
        (status("/nope") == (403, Some("rbac_denied".to_string()))).then_some(())
    });
    // A /nope sent before the reviews sidecar had the policy may have
    // reached the app (the client's sidecar can have its config first);
    // from now on only allowed requests do.
    let before = app.requests();
    assert_eq!(status("/ok/2").0, 200);
    assert_eq!(status("/nope").0, 403);
    assert_eq!(
        app.requests(),
        before + 1,
        "denied requests never reach the app"
    );

    // The policy reaches the reviews sidecar only; the one for `ratings`
    // reaches no proxy.
    let get = |name: &str| {
        control
            .cli(&["get", "authorizationpolicies", name, "-o", "json"])
            .ok()
            .json()
    };
    let readers = get("reviews-readers");
    assert_eq!(readers["status"]["accepted"], true, "{readers}");
    let nodes = |v: &serde_json::Value| -> Vec<String> {
        v["status"]["proxies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["node"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(nodes(&readers), ["reviews-v1.default"], "{readers}");
    let elsewhere = get("elsewhere");
    assert!(nodes(&elsewhere).is_empty(), "{elsewhere}");
}
