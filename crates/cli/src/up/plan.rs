//! What `trellis up` will run, decided before anything starts: one
//! workload per replica, each with its own loopback address, its app's
//! command and environment, and its sidecar's arguments. Plain data and
//! pure functions; the I/O is in `preflight` and `supervise`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use trellis_model::mesh::{AppProtocol, Health, Mesh};

/// The sidecar's ports on every workload address (DESIGN.md).
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;
pub const ADMIN_PORT: u16 = 15000;

/// One replica: an app and its sidecar on their own loopback address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `<service>[-<version>]-<replica>`: the xDS node's name and the
    /// prefix of its log lines.
    pub name: String,
    pub service: String,
    /// Index of the service in the Mesh (errors point at it).
    pub service_field: String,
    pub version: Option<String>,
    pub namespace: String,
    pub service_account: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: AppProtocol,
    pub labels: BTreeMap<String, String>,
    /// As written; argv[0] is resolved by `preflight`.
    pub command: Vec<String>,
    /// The file's `env` for it.
    pub env: BTreeMap<String, String>,
    pub health: Health,
}

impl Workload {
    pub fn app(&self) -> SocketAddr {
        SocketAddr::from((self.address, self.port))
    }
    pub fn outbound(&self) -> SocketAddr {
        SocketAddr::from((self.address, OUTBOUND_PORT))
    }
    pub fn inbound(&self) -> SocketAddr {
        SocketAddr::from((self.address, INBOUND_PORT))
    }
    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from((self.address, ADMIN_PORT))
    }
    /// The xDS node id trellis-proxy uses.
    pub fn node(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }

    /// The app's environment on top of the inherited one: the contract of
    /// docs/up.md that demo services rely on.
    pub fn app_env(&self) -> BTreeMap<String, String> {
        let proxy = format!("http://{}", self.outbound());
        let mut env = self.env.clone();
        env.extend([
            ("TRELLIS_SERVICE".into(), self.service.clone()),
            ("TRELLIS_NAMESPACE".into(), self.namespace.clone()),
            ("TRELLIS_WORKLOAD".into(), self.name.clone()),
            (
                "TRELLIS_VERSION".into(),
                self.version.clone().unwrap_or_default(),
            ),
            ("TRELLIS_LISTEN".into(), self.app().to_string()),
            ("TRELLIS_OUTBOUND".into(), self.outbound().to_string()),
            ("HTTP_PROXY".into(), proxy.clone()),
            ("http_proxy".into(), proxy),
            ("NO_PROXY".into(), String::new()),
            ("no_proxy".into(), String::new()),
        ]);
        env
    }

    /// `HEALTH_CHECK` node metadata (docs/xds.md): the control plane probes
    /// the app's port directly, not through the sidecar.
    pub fn health_check_json(&self) -> String {
        let h = &self.health;
        let mut m = serde_json::Map::new();
        match &h.http_get {
            Some(path) => m.insert("http_path".into(), path.clone().into()),
            None => m.insert("tcp".into(), true.into()),
        };
        m.insert("port".into(), self.port.into());
        m.insert(
            "interval".into(),
            format!("{}ms", h.interval.as_millis()).into(),
        );
        m.insert(
            "timeout".into(),
            format!("{}ms", h.timeout.as_millis()).into(),
        );
        m.insert("healthy_threshold".into(), h.healthy_threshold.into());
        m.insert("unhealthy_threshold".into(), h.unhealthy_threshold.into());
        serde_json::Value::Object(m).to_string()
    }

    /// trellis-proxy's arguments: over xDS, certificate from the CA with the
    /// token, the standard ports on its own address, PORTS sending callers
    /// to its inbound listener (so they come through it, with mTLS).
    pub fn sidecar_args(&self, xds: SocketAddr, token_file: &Path) -> Vec<String> {
        let labels = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        vec![
            "sidecar".into(),
            "--xds".into(),
            xds.to_string(),
            "--workload".into(),
            self.name.clone(),
            "--namespace".into(),
            self.namespace.clone(),
            "--labels".into(),
            labels,
            "--service-account".into(),
            self.service_account.clone(),
            "--address".into(),
            self.address.to_string(),
            "--outbound".into(),
            self.outbound().to_string(),
            "--inbound".into(),
            self.inbound().to_string(),
            "--admin".into(),
            self.admin().to_string(),
            "--app".into(),
            self.app().to_string(),
            "--ports".into(),
            format!("{}={INBOUND_PORT}", self.protocol.name()),
            "--health-check".into(),
            self.health_check_json(),
            "--token-file".into(),
            token_file.display().to_string(),
            // One worker: a laptop runs dozens of these.
            "--workers".into(),
            "1".into(),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "--subnet {0}: workload addresses must be loopback IPv4 (127.x.y.0), so that every sidecar can bind the standard ports"
    )]
    NotLoopback(Ipv4Addr),
    #[error(
        "the mesh has {count} workloads, but --subnet {base} leaves room for {room} (127.x.y.1 to 127.x.y.254): pick a lower base"
    )]
    TooMany {
        count: u32,
        base: Ipv4Addr,
        room: u32,
    },
}

/// Parse `--subnet`: `127.0.1.0`, or with a `/24`-style suffix (ignored:
/// addresses count up from the base).
pub fn parse_subnet(s: &str) -> Result<Ipv4Addr, String> {
    let ip = s.split('/').next().unwrap_or(s);
    ip.parse()
        .map_err(|_| format!("{s:?} is not an IPv4 base such as 127.0.1.0/24"))
}

/// Every workload of `mesh`, in file order (services, versions, replicas),
/// with addresses counted up from `base` + 1.
pub fn plan(mesh: &Mesh, base: Ipv4Addr) -> Result<Vec<Workload>, PlanError> {
    if base.octets()[0] != 127 {
        return Err(PlanError::NotLoopback(base));
    }
    let first = u32::from(base) + 1;
    // Stay within 127.x.y.1..=127.x.y.254 of the base's /24 and above.
    let room = 254u32.saturating_sub(u32::from(base.octets()[3]))
        + 256 * (255 - u32::from(base.octets()[2]));
    let count = mesh.workload_count();
    if count > room {
        return Err(PlanError::TooMany { count, base, room });
    }
    let mut out = Vec::new();
    let mut next = first;
    for s in &mesh.services {
        for (j, d) in s.deployments.iter().enumerate() {
            for r in 0..d.replicas {
                // Skip .0 and .255 of every /24: network and broadcast
                // addresses confuse people reading logs, if not the kernel.
                while matches!(next & 0xff, 0 | 255) {
                    next += 1;
                }
                let address = Ipv4Addr::from(next);
                next += 1;
                out.push(Workload {
                    name: d.workload_name(&s.name, r),
                    service: s.name.clone(),
                    service_field: match &d.version {
                        Some(_) => format!("{}.versions[{j}]", s.field),
                        None => s.field.clone(),
                    },
                    version: d.version.clone(),
                    namespace: mesh.namespace.clone(),
                    service_account: s.service_account.clone(),
                    address,
                    port: s.port,
                    protocol: s.protocol,
                    labels: d.labels.clone(),
                    command: d.command.clone(),
                    env: d.env.clone(),
                    health: s.health.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// Where `trellis up` keeps a mesh's state when `--state-dir` is not
/// given: `$XDG_STATE_HOME/trellis/up/<mesh>`, else
/// `~/.local/state/trellis/up/<mesh>`.
pub fn default_state_dir(xdg: Option<&str>, home: Option<&str>, mesh: &str) -> Option<PathBuf> {
    let base = match (
        xdg.filter(|s| !s.is_empty()),
        home.filter(|s| !s.is_empty()),
    ) {
        (Some(x), _) => PathBuf::from(x),
        (None, Some(h)) => Path::new(h).join(".local/state"),
        (None, None) => return None,
    };
    Some(base.join("trellis/up").join(mesh))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh() -> Mesh {
        let text = "apiVersion: trellis.dev/v1alpha1
kind: Mesh
metadata: {name: m}
spec:
  namespace: shop
  services:
  - {name: a, port: 8080, command: [trellis-echo], replicas: 2, env: {K: v}}
  - name: b
    port: 9090
    protocol: grpc
    health: {httpGet: /healthz, interval: 500ms}
    command: [x]
    versions: [{name: v1}, {name: v2, replicas: 1}]
";
        trellis_model::mesh::parse_documents("m.yaml", text)
            .unwrap()
            .meshes
            .remove(0)
    }

    #[test]
    fn addresses_count_up_from_the_base_one_per_replica() {
        let w = plan(&mesh(), "127.0.1.0".parse().unwrap()).unwrap();
        let names: Vec<_> = w
            .iter()
            .map(|w| (w.name.as_str(), w.address.to_string()))
            .collect();
        assert_eq!(
            names,
            [
                ("a-0", "127.0.1.1".to_string()),
                ("a-1", "127.0.1.2".to_string()),
                ("b-v1-0", "127.0.1.3".to_string()),
                ("b-v2-0", "127.0.1.4".to_string()),
            ]
        );
        assert_eq!(w[2].service_field, "spec.services[1].versions[0]");
        assert_eq!(w[2].labels["version"], "v1");
        assert_eq!(w[3].node(), "b-v2-0.shop");
        // A base near the end of a /24 skips .255 and .0.
        let w = plan(&mesh(), "127.0.1.253".parse().unwrap()).unwrap();
        let addrs: Vec<_> = w.iter().map(|w| w.address.to_string()).collect();
        assert_eq!(
            addrs,
            ["127.0.1.254", "127.0.2.1", "127.0.2.2", "127.0.2.3"]
        );
    }

    #[test]
    fn bad_bases_are_refused() {
        assert_eq!(
            plan(&mesh(), "10.0.0.0".parse().unwrap()),
            Err(PlanError::NotLoopback("10.0.0.0".parse().unwrap()))
        );
        assert!(matches!(
            plan(&mesh(), "127.0.255.252".parse().unwrap()),
            Err(PlanError::TooMany {
                count: 4,
                room: 2,
                ..
            })
        ));
        assert_eq!(
            parse_subnet("127.0.1.0/24"),
            Ok("127.0.1.0".parse().unwrap())
        );
        assert!(parse_subnet("nope").is_err());
    }

    #[test]
    fn the_app_environment_is_the_contract() {
        let w = &plan(&mesh(), "127.0.1.0".parse().unwrap()).unwrap()[3];
        let env = w.app_env();
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("TRELLIS_SERVICE"), Some("b"));
        assert_eq!(get("TRELLIS_NAMESPACE"), Some("shop"));
        assert_eq!(get("TRELLIS_WORKLOAD"), Some("b-v2-0"));
        assert_eq!(get("TRELLIS_VERSION"), Some("v2"));
        assert_eq!(get("TRELLIS_LISTEN"), Some("127.0.1.4:9090"));
        assert_eq!(get("TRELLIS_OUTBOUND"), Some("127.0.1.4:15001"));
        assert_eq!(get("HTTP_PROXY"), Some("http://127.0.1.4:15001"));
        assert_eq!(get("http_proxy"), Some("http://127.0.1.4:15001"));
        assert_eq!(get("NO_PROXY"), Some(""));
        let a = &plan(&mesh(), "127.0.1.0".parse().unwrap()).unwrap()[0];
        assert_eq!(
            a.app_env().get("TRELLIS_VERSION").map(String::as_str),
            Some("")
        );
        assert_eq!(a.app_env().get("K").map(String::as_str), Some("v"));
    }

    #[test]
    fn the_sidecar_registers_its_inbound_port_and_the_apps_probe() {
        let w = &plan(&mesh(), "127.0.1.0".parse().unwrap()).unwrap()[2];
        let args = w.sidecar_args("127.0.0.1:15010".parse().unwrap(), Path::new("/s/t"));
        let after = |flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].as_str()
        };
        assert_eq!(after("--workload"), "b-v1-0");
        assert_eq!(after("--labels"), "app=b,version=v1");
        assert_eq!(after("--outbound"), "127.0.1.3:15001");
        assert_eq!(after("--inbound"), "127.0.1.3:15006");
        assert_eq!(after("--admin"), "127.0.1.3:15000");
        assert_eq!(after("--app"), "127.0.1.3:9090");
        assert_eq!(after("--ports"), "grpc=15006");
        assert_eq!(after("--token-file"), "/s/t");
        let hc: serde_json::Value = serde_json::from_str(after("--health-check")).unwrap();
        assert_eq!(
            hc,
            serde_json::json!({"http_path": "/healthz", "port": 9090, "interval": "500ms",
                "timeout": "1000ms", "healthy_threshold": 1, "unhealthy_threshold": 2})
        );
        let a = &plan(&mesh(), "127.0.1.0".parse().unwrap()).unwrap()[0];
        let hc: serde_json::Value = serde_json::from_str(&a.health_check_json()).unwrap();
        assert_eq!(hc["tcp"], true);
    }

    #[test]
    fn state_dir_defaults() {
        assert_eq!(
            default_state_dir(Some("/x"), Some("/h"), "m"),
            Some(PathBuf::from("/x/trellis/up/m"))
        );
        assert_eq!(
            default_state_dir(None, Some("/h"), "m"),
            Some(PathBuf::from("/h/.local/state/trellis/up/m"))
        );
        assert_eq!(default_state_dir(Some(""), None, "m"), None);
    }
}
