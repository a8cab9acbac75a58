//! `trellis bootstrap envoy`: an Envoy bootstrap that gets everything else
//! from `trellis control` over ADS. The node metadata carries the workload
//! (docs/xds.md, "Node metadata"), so the control plane registers it and
//! builds its listeners from it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde_json::{Value, json};

/// The workload a bootstrap registers with the control plane.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// Service port name -> the workload's port for it.
    pub ports: BTreeMap<String, u16>,
    pub address: IpAddr,
}

impl Workload {
    /// The node id: unique per workload and namespace.
    pub fn node_id(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }

    /// The node metadata every bootstrap carries (docs/xds.md).
    fn metadata(&self) -> Value {
        json!({
            "NAME": self.name,
            "NAMESPACE": self.namespace,
            "SERVICE_ACCOUNT": self.service_account,
            "LABELS": self.labels,
            "ADDRESS": self.address.to_string(),
            "ADDRESSES": [self.address.to_string()],
            "PORTS": self.ports,
        })
    }
}

/// What an Envoy bootstrap describes.
#[derive(Debug, Clone)]
pub struct EnvoyBootstrap {
    pub workload: Workload,
    pub app: Option<SocketAddr>,
    pub locality: Option<String>,
    pub outbound_port: Option<u16>,
    pub inbound_port: Option<u16>,
    pub xds: SocketAddr,
    pub admin: SocketAddr,
    /// Delta (incremental) ADS instead of state of the world.
    pub delta: bool,
    /// Virtual hosts by VHDS (node metadata `VHDS`; needs `delta`).
    pub vhds: bool,
    /// A bootstrap token, sent as `authorization: Bearer` on the ADS stream:
    /// the control plane then serves the `default` Secret (docs/identity.md).
    pub token: Option<Token>,
}

/// A bootstrap token: a secret, so Debug shows none of it.
#[derive(Clone)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl std::str::FromStr for Token {
    type Err = String;
    fn from_str(s: &str) -> Result<Token, String> {
        let s = s.trim();
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("a token is one word, as `trellis token create` prints it".into());
        }
        Ok(Token(s.to_owned()))
    }
}

/// What a proxyless gRPC client's bootstrap describes (gRFC A27's format,
/// read by grpcio, grpc-go and grpc-java from `GRPC_XDS_BOOTSTRAP`).
#[derive(Debug, Clone)]
pub struct GrpcBootstrap {
    pub workload: Workload,
    pub locality: Option<String>,
    pub xds: SocketAddr,
}

impl GrpcBootstrap {
    pub fn to_json(&self) -> Value {
        let mut md = self.workload.metadata();
        // Istio's key: the control plane sends named api_listeners
        // (translate::proxyless) instead of a sidecar's listeners.
        md["GENERATOR"] = json!("grpc");
        if let Some(l) = &self.locality {
            md["LOCALITY"] = json!(l);
        }
        json!({
            "xds_servers": [{
                "server_uri": self.xds.to_string(),
                // Plaintext on loopback, like every proxy's ADS today.
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {
                "id": self.workload.node_id(),
                "cluster": self.workload.node_id(),
                "metadata": md,
                "locality": locality_json(self.locality.as_deref()),
            },
        })
    }
}

/// `region/zone/subzone` as the node's `locality` object.
fn locality_json(l: Option<&str>) -> Value {
    let mut parts = l.unwrap_or_default().splitn(3, '/');
    let mut out = serde_json::Map::new();
    for key in ["region", "zone", "sub_zone"] {
        if let Some(p) = parts.next().filter(|p| !p.is_empty()) {
            out.insert(key.into(), json!(p));
        }
    }
    Value::Object(out)
}

/// `k=v,k2=v2` -> labels. Empty input: none.
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => Err(format!("label {kv:?} is not key=value")),
        })
        .collect()
}

/// `http=9080,grpc=9090` -> ports.
pub fn parse_ports(s: &str) -> Result<BTreeMap<String, u16>, String> {
    parse_labels(s)?
        .into_iter()
        .map(|(k, v)| {
            v.parse()
                .map(|p| (k.clone(), p))
                .map_err(|_| format!("port {k}={v}: {v:?} is not a port number"))
        })
        .collect()
}

impl EnvoyBootstrap {
    /// The bootstrap as JSON (Envoy reads it as YAML too).
    pub fn to_json(&self) -> Value {
        let mut md = self.workload.metadata();
        if let Some(app) = self.app {
            md["APP"] = json!(app.to_string());
        }
        if let Some(l) = &self.locality {
            md["LOCALITY"] = json!(l);
        }
        if let Some(p) = self.outbound_port {
            md["OUTBOUND_PORT"] = json!(p);
        }
        if let Some(p) = self.inbound_port {
            md["INBOUND_PORT"] = json!(p);
        }
        if self.vhds {
            md["VHDS"] = json!(true);
        }
        let socket = |a: SocketAddr| json!({"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}});
        let mut grpc_service = json!({"envoy_grpc": {"cluster_name": "xds_cluster"}});
        if let Some(t) = &self.token {
            // The bootstrap then holds a secret: write it 0600.
            grpc_service["initial_metadata"] =
                json!([{"key": "authorization", "value": format!("Bearer {}", t.0)}]);
        }
        json!({
            "node": {
                "id": self.workload.node_id(),
                "cluster": self.workload.node_id(),
                "metadata": md,
            },
            "admin": {"address": socket(self.admin)},
            "dynamic_resources": {
                "ads_config": {
                    "api_type": if self.delta { "DELTA_GRPC" } else { "GRPC" },
                    "transport_api_version": "V3",
                    "grpc_services": [grpc_service],
                    // The control plane reads the node from a stream's
                    // first request only; later requests need not repeat it.
                    "set_node_on_first_message_only": true,
                },
                "lds_config": {"ads": {}, "resource_api_version": "V3"},
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
            },
            "static_resources": {"clusters": [{
                "name": "xds_cluster",
                "type": "STATIC",
                "connect_timeout": "1s",
                // ADS is gRPC: HTTP/2 with prior knowledge.
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {
                            // Notice a control plane that vanished without
                            // closing the connection, and reconnect.
                            "connection_keepalive": {"interval": "30s", "timeout": "5s"}
                        }}
                    }
                },
                "load_assignment": {
                    "cluster_name": "xds_cluster",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(self.xds)}}]}]
                }
            }]},
            "layered_runtime": {"layers": [
                // Trellis serves every connection the same way whatever the
                // count; Envoy's overload manager would otherwise warn
                // about an unbounded number of downstream connections.
                {"name": "static", "static_layer": {"overload": {"global_downstream_max_connections": 50000}}}
            ]}
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse() {
        let l = parse_labels("app=reviews, version=v1").unwrap();
        assert_eq!(l["app"], "reviews");
        assert_eq!(l["version"], "v1");
        assert!(parse_labels("").unwrap().is_empty());
        assert!(parse_labels("novalue").is_err());
        assert!(parse_labels("=x").is_err());
    }

    fn workload() -> Workload {
        Workload {
            name: "productpage".into(),
            namespace: "default".into(),
            service_account: "default".into(),
            labels: parse_labels("app=productpage").unwrap(),
            ports: parse_ports("http=9080").unwrap(),
            address: "127.0.0.5".parse().unwrap(),
        }
    }

    #[test]
    fn grpc_bootstrap_is_a27_with_the_generator() {
        let b = GrpcBootstrap {
            workload: workload(),
            locality: Some("eu/eu-1".into()),
            xds: "127.0.0.1:15010".parse().unwrap(),
        }
        .to_json();
        assert_eq!(b["xds_servers"][0]["server_uri"], "127.0.0.1:15010");
        assert_eq!(b["xds_servers"][0]["channel_creds"][0]["type"], "insecure");
        assert_eq!(b["xds_servers"][0]["server_features"][0], "xds_v3");
        assert_eq!(b["node"]["id"], "productpage.default");
        assert_eq!(b["node"]["metadata"]["GENERATOR"], "grpc");
        assert_eq!(b["node"]["metadata"]["ADDRESS"], "127.0.0.5");
        assert_eq!(
            b["node"]["locality"],
            json!({"region": "eu", "zone": "eu-1"})
        );
    }

    #[test]
    fn bootstrap_carries_the_node_metadata_and_the_ads_cluster() {
        let b = EnvoyBootstrap {
            workload: workload(),
            app: Some("127.0.0.5:9080".parse().unwrap()),
            locality: None,
            outbound_port: Some(0),
            inbound_port: None,
            xds: "127.0.0.1:15010".parse().unwrap(),
            admin: "127.0.0.1:15000".parse().unwrap(),
            delta: false,
            vhds: false,
            token: None,
        }
        .to_json();
        assert_eq!(b["node"]["id"], "productpage.default");
        let md = &b["node"]["metadata"];
        assert_eq!(md["ADDRESS"], "127.0.0.5");
        assert_eq!(md["LABELS"]["app"], "productpage");
        assert_eq!(md["APP"], "127.0.0.5:9080");
        assert_eq!(md["OUTBOUND_PORT"], 0);
        assert_eq!(md["PORTS"]["http"], 9080);
        assert!(parse_ports("http=x").is_err());
        assert!(md.get("INBOUND_PORT").is_none());
        assert!(md.get("VHDS").is_none());
        let ads = &b["dynamic_resources"]["ads_config"];
        assert_eq!(ads["api_type"], "GRPC");
        let xds = &b["static_resources"]["clusters"][0];
        assert_eq!(xds["type"], "STATIC");
        assert_eq!(
            xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                ["port_value"],
            15010
        );
    }
}
