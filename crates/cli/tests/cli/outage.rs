//! Restart and outage: two trellis-proxy sidecars configured over xDS by
//! `trellis control`, load crossing both (client sidecar outbound -> the
//! `reviews` workload's sidecar inbound -> an echo app), and the control
//! plane stopped for a minute and started again on the same data dir.
//! Nothing fails; the registry is back from the store before any proxy
//! reconnects; every proxy ends up with the config it had.
//!
//! `TRELLIS_OUTAGE_SECS` shortens the outage for local iteration (default
//! and CI: 60). trellis-proxy is `$TRELLIS_PROXY`, else the `trellis-proxy`
//! next to the `trellis` binary under test (`cargo test --workspace` builds
//! both; with `-p trellis` run `cargo build -p trellis-proxy` first).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use trellis_testing::{EchoServer, ProxyProcess, http1_client_to, try_send};

use crate::support::{BIN, Control, eventually, write};

const CLIENT: &str = "productpage.default";
const SERVER: &str = "reviews-v1.default";

pub(crate) fn proxy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TRELLIS_PROXY") {
        return p.into();
    }
    let p = std::path::Path::new(BIN).with_file_name("trellis-proxy");
    assert!(
        p.exists(),
        "no trellis-proxy at {}: run `cargo build -p trellis-proxy` (cargo test --workspace builds it), or set TRELLIS_PROXY",
        p.display()
    );
    p
}

fn outage() -> Duration {
    let secs = std::env::var("TRELLIS_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// `reviews` is whatever workload is labelled `app: reviews`; its port is
/// the workload sidecar's inbound listener (trellis-proxy sends no `PORTS`,
/// so `targetPort`).
pub(crate) fn mesh_yaml(inbound_port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP, targetPort: {inbound_port}}}]
  workloadSelector: {{labels: {{app: reviews}}}}
"
    )
}

/// A sidecar over xDS on its own loopback address (ports 0: tests never
/// take fixed ports), with `extra` flags (an identity, say).
pub(crate) fn sidecar(
    rt: &tokio::runtime::Runtime,
    xds: &str,
    workload: &str,
    labels: &str,
    ip: &str,
    app: Option<SocketAddr>,
    extra: &[&str],
) -> ProxyProcess {
    let any = format!("{ip}:0");
    let mut args = vec![
        "sidecar".to_string(),
        "--xds".into(),
        xds.into(),
        "--workload".into(),
        workload.into(),
        "--namespace".into(),
        "default".into(),
        "--labels".into(),
        labels.into(),
        "--outbound".into(),
        any.clone(),
        "--inbound".into(),
        any.clone(),
        "--admin".into(),
        any,
        "--workers".into(),
        "1".into(),
    ];
    if let Some(app) = app {
        args.extend(["--app".into(), app.to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    rt.block_on(ProxyProcess::command(&proxy_binary()).args(args).start())
        .unwrap_or_else(|e| panic!("starting trellis-proxy {workload}: {e}"))
}

fn get_json(control: &Control, path: &str) -> Value {
    let (status, _, body) = crate::support::http(&control.api, "GET", path, "", "");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// Each node's ACKed version per type, once both proxies are connected and
/// have ACKed everything they were sent.
fn acked_versions(control: &Control) -> Option<Vec<(String, String, Value)>> {
    let v = get_json(control, "/api/v1/proxies");
    let items = v["items"].as_array()?;
    let mut out = Vec::new();
    for node in [CLIENT, SERVER] {
        let p = items.iter().find(|p| p["node"] == node)?;
        if p["acked"] != true {
            return None;
        }
        for (ty, t) in p["types"].as_object()? {
            out.push((node.to_string(), ty.clone(), t["acked"].clone()));
        }
    }
    Some(out)
}

/// What a proxy's `/config_dump` says it holds: the version ACKed per type
/// and the generation of the last config it applied.
fn proxy_config(rt: &tokio::runtime::Runtime, proxy: &ProxyProcess) -> (Value, Value) {
    let (status, body) = rt.block_on(proxy.admin_get("/config_dump"));
    assert_eq!(status, 200, "{body}");
    let dump: Value = serde_json::from_str(&body).unwrap();
    let versions: serde_json::Map<String, Value> = dump["xds"]["types"]
        .as_object()
        .map(|types| {
            types
                .iter()
                .map(|(t, s)| (t.clone(), s["version_acked"].clone()))
                .collect()
        })
        .unwrap_or_default();
    (
        Value::Object(versions),
        dump["xds"]["applied_generation"].clone(),
    )
}

/// Closed-loop load through `outbound` for `reviews:9080` from `workers`
/// concurrent clients until `stop`; counts successes and failures, and
/// keeps the first failures for the message.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(outbound: SocketAddr, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, ok, failed, failures) =
                (stop.clone(), ok.clone(), failed.clone(), failures.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let client = http1_client_to(outbound);
                    let begin = Instant::now();
                    let mut tasks = tokio::task::JoinSet::new();
                    for _ in 0..workers {
                        let (client, stop, ok, failed, failures) = (
                            client.clone(),
                            stop.clone(),
                            ok.clone(),
                            failed.clone(),
                            failures.clone(),
                        );
                        tasks.spawn(async move {
                            while !stop.load(Ordering::Relaxed) {
                                let req = Request::get("http://reviews:9080/load")
                                    .body(Full::new(Bytes::new()))
                                    .unwrap();
                                let r = tokio::time::timeout(
                                    Duration::from_secs(5),
                                    try_send(&client, req),
                                )
                                .await;
                                let why = match r {
                                    Ok(Ok((s, h, _)))
                                        if s == 200
                                            && h.get("x-upstream")
                                                .is_some_and(|v| v == "reviews") =>
                                    {
                                        ok.fetch_add(1, Ordering::Relaxed);
                                        continue;
                                    }
                                    Ok(Ok((s, h, body))) => format!(
                                        "{s} {:?} {}",
                                        h.get("x-trellis-reason"),
                                        String::from_utf8_lossy(&body)
                                    ),
                                    Ok(Err(e)) => e.to_string(),
                                    Err(_) => "no answer within 5 s".to_string(),
                                };
                                failed.fetch_add(1, Ordering::Relaxed);
                                let mut f = failures.lock().unwrap();
                                if f.len() < 10 {
                                    f.push(format!("at {:?}: {why}", begin.elapsed()));
                                }
                            }
                        });
                    }
                    while tasks.join_next().await.is_some() {}
                });
            })
        };
        Load {
            stop,
            ok,
            failed,
            failures,
            thread: Some(thread),
        }
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let (ok, failed) = self.counts();
        (ok, failed, self.failures.lock().unwrap().clone())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_minute_without_the_control_plane_under_load_fails_nothing() {
    let outage = outage();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(EchoServer::start("reviews"));
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let control = Control::start(data.path(), &[]);
    let xds = control.xds.clone();

    let server = sidecar(
        &rt,
        &xds,
        "reviews-v1",
        "app=reviews,version=v1",
        "127.0.0.12",
        Some(app.addr()),
        &[],
    );
    let client = sidecar(
        &rt,
        &xds,
        "productpage",
        "app=productpage",
        "127.0.0.11",
        None,
        &[],
    );
    let mesh = write(
        files.path(),
        "mesh.yaml",
        &mesh_yaml(server.inbound().port()),
    );
    control.cli(&["apply", "-f", mesh.to_str().unwrap()]).ok();

    // Through both proxies: the client's outbound, the workload's inbound.
    let outbound = client.outbound();
    eventually("a request through both sidecars", || {
        let req = Request::get("http://reviews:9080/first")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = rt
            .block_on(try_send(&http1_client_to(outbound), req))
            .ok()?;
        (r.0 == 200).then_some(())
    });
    let before = eventually("both proxies to ACK", || acked_versions(&control));
    let client_before = proxy_config(&rt, &client);
    let server_before = proxy_config(&rt, &server);
    let inbound_before = app.requests();

    let load = Load::start(outbound, 4);
    std::thread::sleep(Duration::from_millis(500));
    let status = control.stop("TERM");
    assert!(status.success(), "exit status {status}");
    let down = Instant::now();
    let (at_stop, _) = load.counts();
    std::thread::sleep(outage);
    let (at_start, failed_while_down) = load.counts();

    // Started again on the same data dir and xDS address. Right away,
    // before the proxies come back (their backoff is up to 10 s), the
    // registry already holds both workloads: it came from the store.
    let control = Control::start(data.path(), &["--xds", &xds]);
    let w = get_json(&control, "/api/v1/workloads");
    let restarted = Instant::now();
    let items = w["items"].as_array().unwrap();
    let nodes: Vec<&str> = items.iter().filter_map(|i| i["node"].as_str()).collect();
    assert_eq!(nodes, [CLIENT, SERVER], "{w}");
    let not_back = items.iter().filter(|i| i["connected"] == false).count();
    for i in items {
        assert!(
            i["error"].is_null() && i["workload"]["healthy"] == true,
            "{w}"
        );
    }
    let logs = control.logs();
    assert!(
        logs.contains("registry restored from the store") && logs.contains("workloads=2"),
        "{logs}"
    );

    let after = eventually("both proxies to reconnect and ACK", || {
        acked_versions(&control)
    });
    let reconnected_in = restarted.elapsed();
    let w = get_json(&control, "/api/v1/workloads");
    assert!(
        w["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["connected"] == true),
        "{w}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed, failures) = load.finish();
    eprintln!(
        "outage {outage:?}: {ok} requests ok, {failed} failed ({} during the outage, {failed_while_down} failed then); \
         {not_back} of 2 workloads listed from the store before their proxy reconnected; \
         both reconnected and ACKed {reconnected_in:?} after the restart ({:?} after the stop)",
        at_start - at_stop,
        down.elapsed() - Duration::from_millis(500),
    );
    assert_eq!(failed, 0, "failed requests: {failures:#?}");
    assert!(
        at_start - at_stop > 100,
        "the load ran during the outage: {}",
        at_start - at_stop
    );
    assert!(
        app.requests() > inbound_before + ok / 2,
        "through the workload's sidecar"
    );

    // The same config: the same ACKed version of every type, on the
    // control plane's side and the proxies'.
    assert_eq!(before, after, "ACKed versions in /api/v1/proxies");
    let client_after = proxy_config(&rt, &client);
    let server_after = proxy_config(&rt, &server);
    assert_eq!(client_before.0, client_after.0, "client /config_dump");
    assert_eq!(server_before.0, server_after.0, "server /config_dump");
    eprintln!(
        "applied generation before/after: client {}/{}, server {}/{}",
        client_before.1, client_after.1, server_before.1, server_after.1
    );
    // What a reconnect re-sends unchanged is ACKed, not applied again.
    assert_eq!(
        client_before.1, client_after.1,
        "client re-applied its config"
    );
    assert_eq!(
        server_before.1, server_after.1,
        "server re-applied its config"
    );
    drop(client);
    drop(server);
}

#[test]
fn a_restored_workload_whose_proxy_never_returns_leaves_after_the_grace() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let grace = ["--registration-grace", "2s"];
    let control = Control::start(data.path(), &grace);
    let proxy = sidecar(
        &rt,
        &control.xds,
        "ratings",
        "app=ratings",
        "127.0.0.13",
        None,
        &[],
    );
    eventually("the workload to register", || {
        let w = get_json(&control, "/api/v1/workloads");
        (w["items"][0]["connected"] == true).then_some(())
    });
    // The control plane stops, and the proxy goes away for good meanwhile.
    assert!(control.stop("TERM").success());
    drop(proxy);

    let control = Control::start(data.path(), &grace);
    let started = Instant::now();
    let w = get_json(&control, "/api/v1/workloads");
    assert_eq!(w["items"][0]["node"], "ratings.default", "{w}");
    assert_eq!(w["items"][0]["connected"], false, "{w}");
    eventually("the restored workload to leave after the grace", || {
        let w = get_json(&control, "/api/v1/workloads");
        w["items"]
            .as_array()
            .is_some_and(Vec::is_empty)
            .then_some(())
    });
    let took = started.elapsed();
    eprintln!("restored workload removed {took:?} after the start (grace 2 s)");
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert!(
        control
            .logs()
            .contains("deregistered (disconnected for the grace period)"),
        "{}",
        control.logs()
    );
    // The removal is stored too: the next start restores nothing.
    assert!(control.stop("TERM").success());
    let control = Control::start(data.path(), &grace);
    let w = get_json(&control, "/api/v1/workloads");
    assert_eq!(w["items"], serde_json::json!([]), "{w}");
}
