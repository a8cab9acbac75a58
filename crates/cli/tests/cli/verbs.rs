//! The operator's verbs through the real `trellis` binary: `apply` (created,
//! unchanged, configured; all or nothing; `--wait` for the proxies' ACKs),
//! `get` with kubectl's kind spellings and formats, `delete` by name and
//! `-f`, `describe service` and `proxy-config`, against `trellis control`
//! with real `trellis-proxy` sidecars over xDS.
//!
//! One workload is a bare ADS client instead of a sidecar: it registers an
//! active health check (node metadata `HEALTH_CHECK`, which trellis-proxy
//! does not send) against a port nobody listens on, so the control plane
//! itself finds it unhealthy; and it subscribes to the `ROOTCA` Secret, so
//! `proxy-config` has a Secret to show by name only.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind as PbKind};
use serde_json::Value;
use trellis_testing::EchoServer;

use crate::outage::sidecar;
use crate::support::{Control, SE, eventually, vs, write};

const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

#[test]
fn apply_get_and_delete_speak_kubectl() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let control = Control::start(data.path(), &[]);
    write(files.path(), "10-se.yaml", SE);
    write(files.path(), "20-vs.yaml", &vs("reviews", 80));
    let dir = files.path().to_str().unwrap();

    // created, then unchanged, then configured: one line per resource.
    let out = control.cli(&["apply", "-f", dir]).ok();
    assert_eq!(
        out.stdout,
        "ServiceEntry default/reviews created\nVirtualService default/reviews created\n"
    );
    let out = control.cli(&["apply", "-f", dir]).ok();
    assert_eq!(
        out.stdout,
        "ServiceEntry default/reviews unchanged\nVirtualService default/reviews unchanged\n"
    );
    write(files.path(), "20-vs.yaml", &vs("reviews", 60));
    let out = control.cli(&["apply", "-f", dir]).ok();
    assert_eq!(
        out.stdout,
        "ServiceEntry default/reviews unchanged\nVirtualService default/reviews configured\n"
    );
    let generation =
        |c: &Control| c.cli(&["get", "all", "-o", "json"]).ok().json()["generation"].clone();
    let before = generation(&control);

    // A bad file: exit 1, file: resource: field: reason, and nothing changes,
    // not even the good resources applied with it.
    let bad_dir = tempfile::tempdir().unwrap();
    write(bad_dir.path(), "a-vs.yaml", &vs("reviews", 10));
    let bad = write(
        bad_dir.path(),
        "b-bad.yaml",
        &vs("broken", 100).replace("  http:\n", "  http:\n  - bogus: 1\n"),
    );
    let out = control.cli(&["apply", "-f", bad_dir.path().to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        out.stderr
            .starts_with("error: the change was rejected (1 error); nothing was applied\n"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains(&format!(
            "  {}: VirtualService default/broken: spec.http[0].bogus: ",
            bad.display()
        )),
        "{out:?}"
    );
    assert_eq!(generation(&control), before);
    let v = control
        .cli(&["get", "vs", "reviews", "-o", "json"])
        .ok()
        .json();
    assert_eq!(v["spec"]["http"][0]["route"][0]["weight"], 60, "{v}");

    // get: kinds in any spelling, one or all, json and yaml, -A.
    for kind in ["vs", "VS", "virtualservice", "VirtualServices"] {
        let v = control.cli(&["get", kind, "-o", "json"]).ok().json();
        assert_eq!(v["items"][0]["metadata"]["name"], "reviews", "{kind}: {v}");
    }
    let se = control
        .cli(&["get", "se", "reviews", "-o", "json"])
        .ok()
        .json();
    assert_eq!(se["kind"], "ServiceEntry");
    assert_eq!(se["status"]["accepted"], true);
    let yaml = control.cli(&["get", "dr", "-o", "yaml"]).ok();
    assert!(yaml.stdout.is_empty(), "{yaml:?}");
    let yaml = control
        .cli(&["get", "vs", "reviews", "-o", "yaml"])
        .ok()
        .stdout;
    assert!(
        yaml.contains("kind: VirtualService") && yaml.contains("weight: 60"),
        "{yaml}"
    );
    let table = control.cli(&["get", "se", "-A"]).ok().stdout;
    assert!(
        table.starts_with("NAMESPACE   NAME      STATUS     GENERATION   SOURCE   AGE\n"),
        "{table}"
    );
    assert!(
        table.contains("default     reviews   Accepted   1            api"),
        "{table}"
    );
    let out = control.cli(&["get", "gateways"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .starts_with("error: unknown kind \"gateways\": Trellis understands "),
        "{out:?}"
    );
    let out = control.cli(&["get", "vs", "nope"]);
    assert_eq!(out.code, 1);
    assert_eq!(out.stderr, "error: VirtualService default/nope not found\n");

    // describe of a kind other than service: the resource with its status.
    let out = control.cli(&["describe", "vs", "reviews"]).ok().stdout;
    assert!(
        out.contains("kind: VirtualService") && out.contains("accepted: true"),
        "{out}"
    );

    // delete -f: the files' resources, last first (the VirtualService goes
    // before the ServiceEntry it routes to, else that delete is refused).
    let out = control.cli(&["delete", "-f", dir]).ok();
    assert_eq!(
        out.stdout,
        "VirtualService default/reviews deleted\nServiceEntry default/reviews deleted\n"
    );
    let out = control.cli(&["delete", "vs", "reviews"]);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        "error: VirtualService default/reviews not found\n"
    );
    let out = control.cli(&["delete", "-f", dir]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("error: ServiceEntry default/reviews not found\n"),
        "{out:?}"
    );
    let out = control.cli(&["delete", "frobs", "x"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with("error: unknown kind \"frobs\""),
        "{out:?}"
    );
}

fn string(s: &str) -> PbValue {
    PbValue {
        kind: Some(PbKind::StringValue(s.into())),
    }
}

fn object(fields: &[(&str, PbValue)]) -> PbValue {
    PbValue {
        kind: Some(PbKind::StructValue(Struct {
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        })),
    }
}

/// A workload registered by a bare ADS stream (no listeners of its own),
/// probed by the control plane at `127.0.0.1:<probe_port>`. It ACKs what it
/// gets (clusters, and the `ROOTCA` Secret), as a proxy would.
fn probed_workload(
    rt: &tokio::runtime::Runtime,
    xds: &str,
    name: &str,
    labels: &[(&str, &str)],
    probe_port: u16,
) {
    let node = Node {
        id: format!("{name}.default"),
        metadata: Some(Struct {
            fields: [
                ("NAME", string(name)),
                ("NAMESPACE", string("default")),
                ("SERVICE_ACCOUNT", string(name)),
                (
                    "LABELS",
                    object(
                        &labels
                            .iter()
                            .map(|(k, v)| (*k, string(v)))
                            .collect::<Vec<_>>(),
                    ),
                ),
                (
                    "ADDRESSES",
                    PbValue {
                        kind: Some(PbKind::ListValue(
                            envoy_types::pb::google::protobuf::ListValue {
                                values: vec![string("127.0.0.1")],
                            },
                        )),
                    },
                ),
                ("ADDRESS", string("127.0.0.1")),
                (
                    "PORTS",
                    object(&[("http", string(&probe_port.to_string()))]),
                ),
                (
                    "HEALTH_CHECK",
                    object(&[
                        (
                            "tcp",
                            PbValue {
                                kind: Some(PbKind::BoolValue(true)),
                            },
                        ),
                        ("port", string("http")),
                        ("interval", string("200ms")),
                        ("timeout", string("200ms")),
                    ]),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        }),
        ..Default::default()
    };
    let xds = format!("http://{xds}");
    rt.spawn(async move {
        let mut client = AggregatedDiscoveryServiceClient::connect(xds)
            .await
            .expect("connect");
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let requests =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let request =
            |type_url: &str, names: Vec<String>, version: String, nonce: String| DiscoveryRequest {
                version_info: version,
                node: Some(node.clone()),
                type_url: type_url.into(),
                resource_names: names,
                response_nonce: nonce,
                ..Default::default()
            };
        tx.send(request(CLUSTER, vec![], String::new(), String::new()))
            .await
            .unwrap();
        tx.send(request(
            SECRET,
            vec!["ROOTCA".into()],
            String::new(),
            String::new(),
        ))
        .await
        .unwrap();
        let mut responses = client
            .stream_aggregated_resources(requests)
            .await
            .unwrap()
            .into_inner();
        while let Ok(Some(r)) = responses.message().await {
            let names = if r.type_url == SECRET {
                vec!["ROOTCA".to_string()]
            } else {
                vec![]
            };
            // An ACK: the version and nonce of what it got.
            if tx
                .send(request(&r.type_url, names, r.version_info, r.nonce))
                .await
                .is_err()
            {
                break;
            }
        }
    });
}

fn mesh(inbound_port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: inference}}
spec:
  hosts: [inference]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9090, name: http, protocol: HTTP, targetPort: {inbound_port}}}]
  workloadSelector: {{labels: {{app: inference}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: inference}}
spec:
  host: inference
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: inference}}
spec:
  hosts: [inference]
  http:
  - route:
    - {{destination: {{host: inference, subset: v1}}, weight: 80}}
    - {{destination: {{host: inference, subset: v2}}, weight: 20}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: inference-callers}}
spec:
  selector: {{matchLabels: {{app: inference}}}}
  rules: [{{to: [{{operation: {{methods: [GET, POST]}}}}]}}]
"#
    )
}

#[test]
fn describe_proxy_config_and_apply_wait_see_the_proxies() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(EchoServer::start("inference-v1"));
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let control = Control::start(data.path(), &[]);
    let v1 = sidecar(
        &rt,
        &control.xds,
        "inference-v1",
        "app=inference,version=v1",
        "127.0.0.1",
        Some(app.addr()),
        &[],
    );
    let _caller = sidecar(
        &rt,
        &control.xds,
        "preprocess",
        "app=preprocess",
        "127.0.0.1",
        None,
        &[],
    );
    // A port with nothing behind it: v2's health check fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    probed_workload(
        &rt,
        &control.xds,
        "inference-v2",
        &[("app", "inference"), ("version", "v2")],
        closed,
    );
    let proxies = |c: &Control| -> Value {
        let (status, _, body) = crate::support::http(&c.api, "GET", "/api/v1/proxies", "", "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    eventually("three proxies connected", || {
        (proxies(&control)["items"].as_array().map_or(0, Vec::len) == 3).then_some(())
    });

    // apply --wait returns once every proxy has the new generation ACKed.
    let f = write(files.path(), "mesh.yaml", &mesh(v1.inbound().port()));
    let out = control
        .cli(&[
            "apply",
            "--wait",
            "--timeout",
            "20s",
            "-f",
            f.to_str().unwrap(),
        ])
        .ok();
    assert!(
        out.stdout
            .contains("VirtualService default/inference created"),
        "{out:?}"
    );
    assert!(out.stderr.ends_with("3 proxies ACKed\n"), "{out:?}");
    let generation = control.cli(&["get", "all", "-o", "json"]).ok().json()["generation"]
        .as_u64()
        .unwrap();
    for p in proxies(&control)["items"].as_array().unwrap() {
        assert!(p["generation"].as_u64().unwrap() >= generation, "{p}");
        assert_eq!(p["acked"], true, "{p}");
    }
    // Nothing to apply: nothing to wait for, at once.
    let out = control
        .cli(&["apply", "--wait", "-f", f.to_str().unwrap()])
        .ok();
    assert!(
        out.stdout
            .contains("VirtualService default/inference unchanged"),
        "{out:?}"
    );

    // describe service: both endpoints, v2 unhealthy by the control plane's
    // own probe; the VirtualService, DestinationRule and AuthorizationPolicy,
    // and the proxies that have them.
    let described = eventually("inference-v2 found unhealthy", || {
        let v = control
            .cli(&["describe", "service", "inference", "-o", "json"])
            .ok()
            .json();
        let health: Vec<(String, String)> = v["endpoints"]
            .as_array()?
            .iter()
            .map(|e| {
                (
                    e["workload"].as_str().unwrap_or("").to_string(),
                    e["health"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        (health
            == [
                ("inference-v1".to_string(), "healthy".to_string()),
                ("inference-v2".to_string(), "unhealthy".to_string()),
            ])
        .then_some(v)
    });
    assert_eq!(described["host"], "inference.default.svc.cluster.local");
    assert_eq!(described["endpoints"][0]["port"], v1.inbound().port());
    assert_eq!(described["endpoints"][0]["node"], "inference-v1.default");
    let policy = |kind: &str| -> Value {
        described["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["kind"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} in {described}"))
    };
    let nodes = |p: &Value| -> Vec<String> {
        let mut n: Vec<String> = p["proxies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["node"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    assert_eq!(policy("VirtualService")["name"], "inference");
    assert_eq!(policy("DestinationRule")["name"], "inference");
    let ap = policy("AuthorizationPolicy");
    assert_eq!(ap["name"], "inference-callers");
    // It selects the inference workloads; only their proxies get it.
    assert_eq!(
        nodes(&ap),
        ["inference-v1.default", "inference-v2.default"],
        "{ap}"
    );
    let text = control.cli(&["describe", "svc", "inference"]).ok().stdout;
    assert!(
        text.starts_with("Name:           inference.default.svc.cluster.local\n"),
        "{text}"
    );
    assert!(text.contains("inference-v2   unhealthy"), "{text}");
    assert!(
        text.contains("  AuthorizationPolicy   default/inference-callers"),
        "{text}"
    );
    let out = control.cli(&["describe", "service", "ratings"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with("error: no service ratings.default.svc.cluster.local (from \"ratings\" in namespace default); services in default: inference.default.svc.cluster.local"),
        "{out:?}"
    );

    // proxy-config: what v1's sidecar was sent, versions ACKed, the
    // listeners by name, and the resources themselves in JSON.
    let table = control.cli(&["proxy-config", "inference-v1"]).ok().stdout;
    assert!(
        table.starts_with("Node inference-v1.default: generation "),
        "{table}"
    );
    assert!(table.contains("everything sent is ACKed"), "{table}");
    let listeners = control
        .cli(&["proxy-config", "inference-v1", "--type", "listeners"])
        .ok()
        .stdout;
    assert!(
        listeners.contains("\nListener:\n")
            && listeners.contains("  inbound ")
            && listeners.contains("  outbound "),
        "{listeners}"
    );
    assert!(!listeners.contains("Cluster"), "{listeners}");
    // Health changes are new generations: wait for the one with v2
    // unhealthy to be ACKed.
    let v = eventually("v1's sidecar to ACK v2 as UNHEALTHY", || {
        let v = control
            .cli(&["proxy-config", "inference-v1", "-o", "json"])
            .ok()
            .json();
        let eds = v["types"]["ClusterLoadAssignment"]["resources"].to_string();
        (v["acked"] == true && eds.contains("UNHEALTHY")).then_some(v)
    });
    let l = &v["types"]["Listener"];
    assert_eq!(l["sent"], l["acked"], "{l}");
    assert_eq!(l["inSync"], true);
    assert_eq!(l["lastNack"], Value::Null);
    let inbound = l["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "inbound")
        .unwrap_or_else(|| panic!("no inbound listener in {l}"));
    assert_eq!(
        inbound["resource"]["address"],
        v1.inbound().to_string(),
        "{inbound}"
    );
    // The inbound listener carries the AuthorizationPolicy as RBAC.
    assert!(
        inbound.to_string().contains("envoy.filters.http.rbac"),
        "{inbound}"
    );
    // The v2 workload's Secret: its name and version, never its content.
    let v = control
        .cli(&["proxy-config", "inference-v2", "-o", "json"])
        .ok()
        .json();
    let secrets = &v["types"]["Secret"]["resources"];
    assert_eq!(secrets[0]["name"], "ROOTCA", "{v}");
    assert!(secrets[0]["version"].is_string(), "{v}");
    assert_eq!(secrets[0]["resource"], Value::Null, "{v}");
    assert!(!v.to_string().contains("BEGIN"), "{v}");
    let yaml = control
        .cli(&[
            "proxy-config",
            "inference-v2",
            "--type",
            "secrets-names-only",
            "-o",
            "yaml",
        ])
        .ok()
        .stdout;
    assert!(
        yaml.contains("name: ROOTCA") && !yaml.contains("Cluster"),
        "{yaml}"
    );
    let out = control.cli(&["proxy-config", "reviews"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with(
            "error: no connected proxy runs workload \"reviews\" in namespace default; connected: "
        ),
        "{out:?}"
    );
}

/// The dashboard is a page over the API: it is served as HTML, and every
/// API path it reads answers JSON with the fields it shows.
#[test]
fn the_dashboard_page_reads_api_paths_that_answer() {
    let dir = tempfile::tempdir().unwrap();
    let control = crate::support::Control::start(dir.path(), &[]);
    let (status, content_type, page) =
        crate::support::http(&control.api, "GET", "/dashboard", "", "");
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    for path in ["/api/v1/workloads", "/api/v1/proxies", "/api/v1/resources"] {
        assert!(
            page.contains(&format!("\"{path}\"")),
            "the page reads {path}"
        );
        let (status, _, body) = crate::support::http(&control.api, "GET", path, "", "");
        assert_eq!(status, 200, "{path}: {body}");
        let json: Value = serde_json::from_str(&body).unwrap();
        assert!(json["items"].is_array(), "{path}: {body}");
    }
}
