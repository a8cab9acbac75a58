//! Proxyless gRPC: a Python grpcio client with a bootstrap from `trellis
//! bootstrap grpc` resolves `xds:///<service>:<port>` through `trellis
//! control` and balances and routes with no proxy in the path.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use trellis_testing::EchoServer;
use trellis_testing::{python, xds_client_script};

use crate::support::{Control, eventually, trellis, write};

fn service(v1: SocketAddr, v2: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: greeter}}
spec:
  hosts: [greeter]
  resolution: STATIC
  ports: [{{number: 50051, name: grpc, protocol: GRPC}}]
  endpoints:
  - {{address: {}, ports: {{grpc: {}}}, labels: {{version: v1}}}}
  - {{address: {}, ports: {{grpc: {}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: greeter}}
spec:
  host: greeter
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
",
        v1.ip(),
        v1.port(),
        v2.ip(),
        v2.port()
    )
}

/// `x-canary: yes` goes to v2; the rest is split `v1`% / rest.
fn canary(v1: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: greeter}}
spec:
  hosts: [greeter]
  http:
  - match: [{{headers: {{x-canary: {{exact: 'yes'}}}}}}]
    route: [{{destination: {{host: greeter, subset: v2}}}}]
  - route:
    - {{destination: {{host: greeter, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: greeter, subset: v2}}, weight: {}}}
",
        100 - v1
    )
}

/// Runs xds_client.py: `calls` unary calls on one channel to `target`.
fn calls(bootstrap: &Path, target: &str, calls: u32, extra: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(xds_client_script())
        .args(["--target", target, "--calls", &calls.to_string()])
        .args(extra)
        .env("GRPC_XDS_BOOTSTRAP", bootstrap)
        .output()
        .expect("run python (set TRELLIS_PYTHON?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "xds_client.py failed:\n{stdout}\n{stderr}"
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

fn count(v: &Value, upstream: &str) -> u64 {
    v["by_upstream"][upstream].as_u64().unwrap_or(0)
}

fn no_errors(v: &Value) {
    assert_eq!(v["errors"], serde_json::json!({}), "{v}");
}

#[test]
fn grpcio_resolves_balances_and_routes_over_xds() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (v1, v2) =
        rt.block_on(async { (EchoServer::start("v1").await, EchoServer::start("v2").await) });
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let config = files.path().join("config");
    std::fs::create_dir(&config).unwrap();
    write(&config, "greeter.yaml", &service(v1.addr(), v2.addr()));
    let control = Control::start(data.path(), &["--config-dir", config.to_str().unwrap()]);

    let bootstrap = trellis(&[
        "bootstrap",
        "grpc",
        "--workload",
        "client",
        "--labels",
        "app=client",
        "--xds",
        &control.xds,
    ])
    .ok();
    let bootstrap = write(files.path(), "bootstrap.json", &bootstrap.stdout);

    // No VirtualService: round robin over both endpoints, by short name and
    // by FQDN.
    for target in [
        "xds:///greeter:50051",
        "xds:///greeter.default.svc.cluster.local:50051",
    ] {
        let v = calls(&bootstrap, target, 100, &[]);
        eprintln!("{target}: {v}");
        no_errors(&v);
        assert!(
            count(&v, "v1") >= 40 && count(&v, "v2") >= 40,
            "{target}: {v}"
        );
    }
    // A canary split and a header route, pushed while the client runs.
    write(&config, "canary.yaml", &canary(80));
    let v = calls(
        &bootstrap,
        "xds:///greeter:50051",
        1000,
        &["--until-share", "v1=65"],
    );
    eprintln!("80/20: {v}");
    no_errors(&v);
    // 1,000 calls at 80 %: ±60 is over 4.5 standard deviations.
    assert!((740..=860).contains(&count(&v, "v1")), "{v}");
    let v = calls(
        &bootstrap,
        "xds:///greeter:50051",
        50,
        &["--metadata", "x-canary=yes"],
    );
    no_errors(&v);
    assert_eq!(count(&v, "v2"), 50, "x-canary: yes goes to v2: {v}");

    // A full cut-over.
    write(&config, "canary.yaml", &canary(0));
    let v = calls(
        &bootstrap,
        "xds:///greeter:50051",
        100,
        &["--until-share", "v2=100"],
    );
    no_errors(&v);
    assert_eq!(count(&v, "v2"), 100, "{v}");

    // A Sidecar selecting the client by label takes the service out of its
    // view: the target no longer resolves.
    write(
        &config,
        "sidecar.yaml",
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: client}
spec:
  workloadSelector: {labels: {app: client}}
  egress: [{hosts: [other/*]}]
",
    );
    let v = eventually("the Sidecar to hide greeter", || {
        let v = calls(&bootstrap, "xds:///greeter:50051", 1, &["--timeout", "3"]);
        (count(&v, "v1") + count(&v, "v2") == 0).then_some(v)
    });
    eprintln!("with the Sidecar: {v}");
    drop(control);
}
