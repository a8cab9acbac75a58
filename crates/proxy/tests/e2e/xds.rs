//! trellis-proxy configured over xDS: the real binary against a real
//! `trellis_xds` ADS server serving `trellis_translate` output. Routing
//! (weighted split, header route), updates, a NACK that keeps the last good
//! config, and an outage of the control plane under load.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster::LbPolicy};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use trellis_model::ResourceSet;
use trellis_testing::{EchoServer, ProxyProcess, http1_client_to};
use trellis_translate::names::CLUSTER_TYPE;
use trellis_translate::{ProxyIdentity, Registry};
use trellis_xds::{Connection, MemorySnapshots, Nack, Resource, XdsHooks, XdsOptions, XdsServer};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Recorder {
    connects: AtomicU64,
    nacks: Mutex<Vec<String>>,
}

impl XdsHooks for Recorder {
    fn on_connect(&self, _conn: &Connection) {
        self.connects.fetch_add(1, Ordering::SeqCst);
    }
    fn on_nack(&self, _conn: &Connection, nack: &Nack) {
        self.nacks.lock().unwrap().push(nack.message.clone());
    }
}

/// A running ADS server; `stop` ends it (streams and listener).
struct ControlPlane {
    server: XdsServer,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
}

impl ControlPlane {
    fn start(snapshots: Arc<MemorySnapshots>, hooks: Arc<Recorder>, listener: TcpListener) -> Self {
        let server = XdsServer::builder(snapshots)
            .options(XdsOptions {
                debounce: Duration::from_millis(20),
                ..XdsOptions::default()
            })
            .hooks(hooks)
            .build();
        let (stop, stopped) = oneshot::channel::<()>();
        let s = server.clone();
        let served = tokio::spawn(async move {
            s.serve(listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        ControlPlane {
            server,
            stop: Some(stop),
            served: Some(served),
        }
    }

    async fn stop(&mut self) {
        self.server.close_streams();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.served.take() {
            let _ = tokio::time::timeout(WAIT, h).await;
        }
    }
}

fn config(weights: (u32, u32), canary: SocketAddr, v1: SocketAddr, v2: SocketAddr) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  resolution: STATIC
  ports: [{{number: 9080, name: http}}]
  endpoints:
  - {{address: {}, ports: {{http: {}}}, labels: {{version: v1}}}}
  - {{address: {}, ports: {{http: {}}}, labels: {{version: v2}}}}
  - {{address: {}, ports: {{http: {}}}, labels: {{version: canary}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
  - {{name: canary, labels: {{version: canary}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{x-canary: {{exact: "true"}}}}}}]
    route: [{{destination: {{host: reviews, subset: canary}}}}]
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: {}}}
    - {{destination: {{host: reviews, subset: v2}}, weight: {}}}
"#,
        v1.ip(),
        v1.port(),
        v2.ip(),
        v2.port(),
        canary.ip(),
        canary.port(),
        weights.0,
        weights.1
    )
}

/// The resources `trellis control` would serve this proxy.
fn translated(yaml: &str) -> trellis_xds::Snapshot {
    let docs = trellis_model::parse_documents("test.yaml", yaml).unwrap();
    let mut set = ResourceSet::default();
    for d in docs {
        set.push(d);
    }
    let v = trellis_model::validate::validate(&set).unwrap();
    let address: IpAddr = "127.0.0.1".parse().unwrap();
    let proxy = ProxyIdentity {
        name: "client".into(),
        namespace: "default".into(),
        address,
        outbound_port: 15001,
        inbound_port: 15006,
        app: SocketAddr::new(address, 8080),
        locality: None,
        egress: None,
        proxyless: false,
        labels: Default::default(),
        vhds: false,
    };
    let snap = trellis_translate::translate(&v, &Registry::default(), &proxy);
    let mut out = trellis_xds::Snapshot::new();
    for (type_url, resources) in &snap.resources {
        for (name, r) in resources {
            out.insert(
                type_url,
                name.clone(),
                Resource::with_version(r.any.clone(), r.version()),
            );
        }
    }
    out
}

/// `snap` with one cluster's balancer set to MAGLEV, which trellis-proxy does not implement.
fn with_maglev(mut snap: trellis_xds::Snapshot, name: &str) -> trellis_xds::Snapshot {
    let clusters = snap.of_type(CLUSTER_TYPE).expect("clusters").clone();
    let r = &clusters[name];
    let mut c = Cluster::decode(r.body.value.as_slice()).unwrap();
    c.lb_policy = LbPolicy::Maglev as i32;
    snap.insert(CLUSTER_TYPE, name, Resource::from_message(&c));
    snap
}

/// Listen on `addr` again (its previous socket may linger briefly).
async fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => {
                assert!(Instant::now() < deadline, "rebinding {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn tally(
    proxy: &ProxyProcess,
    n: usize,
    headers: &[(&str, &str)],
) -> BTreeMap<String, usize> {
    let client = http1_client_to(proxy.outbound());
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let mut b = http::Request::get("http://reviews:9080/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let r = send_with(&client, req, proxy).await;
        assert_eq!(r.status, 200, "{}", r.text());
        *seen.entry(r.upstream().to_string()).or_default() += 1;
    }
    seen
}

fn share(counts: &BTreeMap<String, usize>, name: &str) -> f64 {
    let n: usize = counts.values().sum();
    *counts.get(name).unwrap_or(&0) as f64 * 100.0 / n as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_updates_nacks_and_survives_an_outage() {
    let v1 = EchoServer::start("v1").await;
    let v2 = EchoServer::start("v2").await;
    let canary = EchoServer::start("canary").await;
    let snapshots = Arc::new(MemorySnapshots::new(translated(&config(
        (80, 20),
        canary.addr(),
        v1.addr(),
        v2.addr(),
    ))));
    let hooks = Arc::new(Recorder::default());
    // The proxy starts before its control plane: listeners up, not ready.
    let xds_addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = ProxyProcess::command(bin())
        .args([
            "sidecar",
            "--xds",
            &xds_addr.to_string(),
            "--workload",
            "client",
            "--namespace",
            "default",
            "--labels",
            "app=client,version=v1",
            "--outbound",
            "127.0.0.1:0",
            "--inbound",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .start()
        .await
        .unwrap_or_else(|e| panic!("starting trellis-proxy: {e}"));
    assert_eq!(
        proxy.admin_get("/ready").await,
        (503, "no xDS config yet\n".to_string())
    );
    let early = send_with(
        &http1_client_to(proxy.outbound()),
        get("http://reviews:9080/"),
        &proxy,
    )
    .await;
    early.assert_local(404, "route_not_found");
    let listener = rebind(xds_addr).await;
    let mut cp = ControlPlane::start(snapshots.clone(), hooks.clone(), listener);
    eventually("/ready", WAIT, || async {
        (proxy.admin_get("/ready").await.0 == 200).then_some(())
    })
    .await;
    let node = snapshots.node("client.default").expect("node seen");
    let meta = node.metadata.expect("metadata");
    for key in ["NAME", "NAMESPACE", "LABELS", "ADDRESS", "OUTBOUND_PORT"] {
        assert!(
            meta.fields.contains_key(key),
            "node metadata lacks {key}: {meta:?}"
        );
    }

    // A weighted split and a header route.
    let counts = tally(&proxy, 1000, &[]).await;
    assert!((share(&counts, "v1") - 80.0).abs() <= 5.0, "{counts:?}");
    assert!((share(&counts, "v2") - 20.0).abs() <= 5.0, "{counts:?}");
    let counts = tally(&proxy, 20, &[("x-canary", "true")]).await;
    assert_eq!(counts.get("canary"), Some(&20), "{counts:?}");

    // An update is applied within a second.
    let t = Instant::now();
    snapshots.set(translated(&config(
        (0, 100),
        canary.addr(),
        v1.addr(),
        v2.addr(),
    )));
    eventually("the 0/100 split", WAIT, || async {
        (tally(&proxy, 10, &[]).await.get("v2") == Some(&10)).then_some(())
    })
    .await;
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "update applied after {took:?}"
    );

    // A cluster the proxy cannot serve is NACKed, and the last good config
    // keeps routing.
    let good = translated(&config((0, 100), canary.addr(), v1.addr(), v2.addr()));
    let bad = with_maglev(good, "outbound|9080|v1|reviews.default.svc.cluster.local");
    snapshots.set(bad);
    let nack = eventually("a NACK", WAIT, || async {
        hooks.nacks.lock().unwrap().first().cloned()
    })
    .await;
    assert!(
        nack.contains("Cluster outbound|9080|v1|reviews.default.svc.cluster.local")
            && nack.contains("lb_policy: MAGLEV is not supported"),
        "{nack}"
    );
    assert_eq!(tally(&proxy, 20, &[]).await.get("v2"), Some(&20));
    let dump: serde_json::Value =
        serde_json::from_str(&proxy.admin_get("/config_dump").await.1).unwrap();
    let last = &dump["xds"]["types"]["cluster"]["last_nack"]["message"];
    assert!(
        last.as_str().is_some_and(|m| m.contains("MAGLEV")),
        "{dump}"
    );
    let metrics = proxy.admin_get("/stats/prometheus").await.1;
    assert!(
        metric_value(
            &metrics,
            r#"trellis_xds_updates_total{type="cluster",result="nack"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{metrics}"
    );

    // The control plane goes away for a few seconds under load: no request
    // fails, and the proxy reconnects when it is back.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let client = http1_client_to(proxy.outbound());
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = trellis_testing::try_send(&client, get("http://reviews:9080/")).await;
                match r {
                    Ok((status, _, _)) if status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let connects = hooks.connects.load(Ordering::SeqCst);
    cp.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let listener = rebind(xds_addr).await;
    snapshots.set(translated(&config(
        (0, 100),
        canary.addr(),
        v1.addr(),
        v2.addr(),
    )));
    let _cp = ControlPlane::start(snapshots.clone(), hooks.clone(), listener);
    eventually("a reconnect", Duration::from_secs(15), || async {
        (hooks.connects.load(Ordering::SeqCst) > connects).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 100, "only {ok} requests during the outage");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed; proxy:\n{}",
        ok + failed,
        proxy.logs()
    );
    assert!(proxy.logs().contains("xDS stream"), "{}", proxy.logs());
}

#[test]
fn xds_and_config_dir_are_exclusive() {
    let cases: [(&[&str], &str); 11] = [
        (
            &[
                "sidecar",
                "--config-dir",
                "/tmp",
                "--xds",
                "127.0.0.1:1",
                "--workload",
                "a",
            ],
            "cannot be used with",
        ),
        (&["sidecar"], "--config-dir <CONFIG_DIR>|--xds <HOST:PORT>"),
        (
            &["sidecar", "--xds", "127.0.0.1:1"],
            "--xds needs --workload NAME",
        ),
        (
            &["sidecar", "--config-dir", "/tmp", "--service-account", "a"],
            "use them with --xds HOST:PORT",
        ),
        (
            &["sidecar", "--config-dir", "/tmp", "--token-file", "/tmp/t"],
            "use them with --xds HOST:PORT",
        ),
        (
            &["sidecar", "--config-dir", "/tmp", "--ports", "http=15006"],
            "use them with --xds HOST:PORT",
        ),
        (
            &[
                "sidecar",
                "--config-dir",
                "/tmp",
                "--health-check",
                "{\"tcp\":true}",
            ],
            "use them with --xds HOST:PORT",
        ),
        (
            &[
                "sidecar",
                "--xds",
                "127.0.0.1:1",
                "--workload",
                "a",
                "--ports",
                "http=x",
            ],
            "\"x\" (port of http) is not a port number",
        ),
        (
            &[
                "sidecar",
                "--xds",
                "127.0.0.1:1",
                "--workload",
                "a",
                "--health-check",
                "[1]",
            ],
            "expected a JSON object",
        ),
        (
            &[
                "sidecar",
                "--xds",
                "127.0.0.1:1",
                "--workload",
                "a",
                "--identity-dir",
                "/tmp",
                "--token-file",
                "/tmp/t",
            ],
            "not both",
        ),
        (
            &[
                "sidecar",
                "--xds",
                "127.0.0.1:1",
                "--workload",
                "a",
                "--token-file",
                "/nonexistent/token",
            ],
            "cannot read the bootstrap token file /nonexistent/token",
        ),
    ];
    for (args, want) in cases {
        let out = std::process::Command::new(bin())
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// `snap` with the inbound listener's first RBAC policy matching on
/// `remote_ip` (X-Forwarded-For), which trellis-proxy cannot express.
fn with_remote_ip_rbac(mut snap: trellis_xds::Snapshot) -> trellis_xds::Snapshot {
    use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
    use envoy_types::pb::envoy::config::rbac::v3::{Principal, principal};
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, http_filter,
    };
    use trellis_translate::names::LISTENER_TYPE;
    let listeners = snap.of_type(LISTENER_TYPE).expect("listeners").clone();
    let mut l = Listener::decode(listeners["inbound"].body.value.as_slice()).unwrap();
    let Some(filter::ConfigType::TypedConfig(any)) = &mut l.filter_chains[0].filters[0].config_type
    else {
        panic!("no HCM");
    };
    let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    let Some(http_filter::ConfigType::TypedConfig(rbac_any)) = &mut hcm.http_filters[0].config_type
    else {
        panic!("no RBAC filter");
    };
    let mut rbac = Rbac::decode(rbac_any.value.as_slice()).unwrap();
    let policy = rbac
        .rules
        .as_mut()
        .unwrap()
        .policies
        .values_mut()
        .next()
        .unwrap();
    // from: [{source: <remote_ip>}], in the shape translate writes.
    let wrap = |f: fn(principal::Set) -> principal::Identifier, ids: Vec<Principal>| Principal {
        identifier: Some(f(principal::Set { ids })),
    };
    let remote_ip = Principal {
        identifier: Some(principal::Identifier::RemoteIp(Default::default())),
    };
    let field = wrap(principal::Identifier::OrIds, vec![remote_ip]);
    let source = wrap(principal::Identifier::AndIds, vec![field]);
    let from = wrap(principal::Identifier::OrIds, vec![source]);
    policy.principals = vec![wrap(principal::Identifier::AndIds, vec![from])];
    rbac_any.value = rbac.encode_to_vec();
    any.value = hcm.encode_to_vec();
    snap.insert(LISTENER_TYPE, "inbound", Resource::from_message(&l));
    snap
}

/// AuthorizationPolicy as trellis control serves it: RBAC filters on the
/// inbound listener, enforced by the proxy; one it cannot express is
/// NACKed and the last good policies keep being enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_policy_over_xds() {
    let app = EchoServer::start("app").await;
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: readers}
spec:
  rules: [{to: [{operation: {methods: [GET], paths: ["/items*", "/admin*"]}}]}]
"#;
    let snapshots = Arc::new(MemorySnapshots::new(translated(yaml)));
    let hooks = Arc::new(Recorder::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds_addr = listener.local_addr().unwrap();
    let _cp = ControlPlane::start(snapshots.clone(), hooks.clone(), listener);
    let proxy = ProxyProcess::command(bin())
        .args([
            "sidecar",
            "--xds",
            &xds_addr.to_string(),
            "--workload",
            "api",
            "--namespace",
            "default",
            "--app",
            &app.addr().to_string(),
            "--outbound",
            "127.0.0.1:0",
            "--inbound",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .start()
        .await
        .unwrap_or_else(|e| panic!("starting trellis-proxy: {e}"));
    eventually("/ready", WAIT, || async {
        (proxy.admin_get("/ready").await.0 == 200).then_some(())
    })
    .await;
    let inbound = http1_client_to(proxy.inbound());
    let check = |path: &'static str, want: u16| {
        let inbound = &inbound;
        let proxy = &proxy;
        async move {
            let r = send_with(inbound, get(&format!("http://api{path}")), proxy).await;
            if want == 403 {
                r.assert_local(403, "rbac_denied");
            } else {
                assert_eq!(r.status, want, "{path}: {}", r.text());
            }
        }
    };
    check("/items/1", 200).await;
    check("/admin", 403).await; // DENY before ALLOW
    check("/other", 403).await; // default deny

    snapshots.set(with_remote_ip_rbac(translated(yaml)));
    let nack = eventually("a NACK", WAIT, || async {
        hooks.nacks.lock().unwrap().first().cloned()
    })
    .await;
    assert!(
        nack.contains("Listener inbound")
            && nack.contains("principals[0].and_ids.ids[0].or_ids.ids[0].and_ids.ids[0].ids[0]")
            && nack.contains(
                "only authenticated (principals, namespaces), direct_remote_ip and header"
            ),
        "{nack}"
    );
    check("/items/1", 200).await;
    check("/admin", 403).await;
    check("/other", 403).await;
}
