//! Shared by the tests: the demo's mesh file read as `trellis up` reads it
//! (the `Mesh` document and the Istio documents), and the ServiceEntries
//! `trellis up` generates for its services.

#![allow(dead_code, reason = "each test binary uses part of this module")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// `examples/inference/`.
pub fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

/// Every YAML document of a file, as JSON values.
pub fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

/// The demo's mesh file: its one `Mesh` document, and the others.
pub struct MeshFile {
    pub mesh: Value,
    pub istio: Vec<Value>,
}

pub fn mesh_file() -> MeshFile {
    let path = example_dir().join("mesh.yaml");
    let (meshes, istio): (Vec<Value>, Vec<Value>) = documents(&path)
        .into_iter()
        .partition(|d| d["kind"] == "Mesh");
    assert_eq!(
        meshes.len(),
        1,
        "mesh.yaml must hold exactly one Mesh document"
    );
    MeshFile {
        mesh: meshes.into_iter().next().unwrap(),
        istio,
    }
}

/// A service of the `Mesh`, the fields these tests rely on.
#[derive(Debug, Clone)]
pub struct MeshService {
    pub name: String,
    pub port: u16,
    pub protocol: String,
    /// (version name or "", command argv), one per deployment.
    pub deployments: Vec<(String, Vec<String>)>,
}

pub fn services(mesh: &Value) -> Vec<MeshService> {
    let list = mesh["spec"]["services"]
        .as_array()
        .expect("Mesh spec.services is a list");
    list.iter()
        .map(|s| {
            let argv = |v: &Value| -> Vec<String> {
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .map(|x| x.as_str().expect("argv strings").to_string())
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let deployments = match s["versions"].as_array() {
                Some(vs) => vs
                    .iter()
                    .map(|v| {
                        let cmd = if v["command"].is_null() {
                            &s["command"]
                        } else {
                            &v["command"]
                        };
                        (
                            v["name"].as_str().expect("version name").to_string(),
                            argv(cmd),
                        )
                    })
                    .collect(),
                None => vec![(String::new(), argv(&s["command"]))],
            };
            MeshService {
                name: s["name"].as_str().expect("service name").to_string(),
                port: u16::try_from(s["port"].as_u64().expect("service port"))
                    .expect("port fits u16"),
                protocol: s["protocol"].as_str().unwrap_or("http").to_string(),
                deployments,
            }
        })
        .collect()
}

fn istio_protocol(protocol: &str) -> &'static str {
    match protocol {
        "http" => "HTTP",
        "http2" => "HTTP2",
        "grpc" => "GRPC",
        "tcp" => "TCP",
        other => panic!("unknown protocol {other:?} in mesh.yaml"),
    }
}

/// The ServiceEntry `trellis up` generates for a service (the agreed
/// format): its registered workloads, selected by `app: <name>`.
pub fn generated_service_entry(s: &MeshService) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": s.name, "namespace": "default"},
        "spec": {
            "hosts": [s.name],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": s.port, "name": s.protocol, "protocol": istio_protocol(&s.protocol)}],
            "workloadSelector": {"labels": {"app": s.name}},
        }
    })
}

/// The same service with static endpoints instead (for a standalone
/// proxy, which has no registry): each (address, version) one endpoint,
/// labelled as `trellis up` labels replicas.
pub fn static_service_entry(s: &MeshService, endpoints: &[(SocketAddr, String)]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(addr, version)| {
            let mut labels = json!({"app": s.name});
            if !version.is_empty() {
                labels["version"] = json!(version);
            }
            json!({
                "address": addr.ip().to_string(),
                "ports": {s.protocol.clone(): addr.port()},
                "labels": labels,
            })
        })
        .collect();
    let mut se = generated_service_entry(s);
    let spec = se["spec"].as_object_mut().expect("spec is an object");
    spec.remove("workloadSelector");
    spec.insert("endpoints".into(), Value::Array(eps));
    se
}
