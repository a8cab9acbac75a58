//! The whole pipeline through a real trellis-proxy: the four services of
//! the demo (real `trellis-demo` processes), one standalone
//! `trellis-proxy sidecar --config-dir` as every service's `HTTP_PROXY`,
//! configured with the Istio documents of mesh.yaml (plus static
//! ServiceEntries for the services' real ports, which `trellis up` would
//! register instead). The proxy has a certificate, since mesh.yaml's
//! PeerAuthentication is STRICT (a proxy without one rejects that config);
//! mTLS between sidecars and the AuthorizationPolicy need one sidecar per
//! workload, which `trellis up` runs, and are tested there.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use support::*;
use tempfile::TempDir;
use trellis_demo::answer::Answer;
use trellis_demo::failure::ErrorBody;
use trellis_testing::{FixedClient, ProxyProcess, TestCa, Validity, http1_client_to, try_send};

fn demo_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_trellis-demo"))
}

/// trellis-proxy from the same target directory (`cargo test --workspace`
/// builds it), or `TRELLIS_PROXY`.
fn proxy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TRELLIS_PROXY") {
        return p.into();
    }
    let p = demo_bin().with_file_name("trellis-proxy");
    assert!(
        p.exists(),
        "no trellis-proxy at {}: run `cargo build -p trellis-proxy` (cargo test --workspace builds it), or set TRELLIS_PROXY",
        p.display()
    );
    p
}

/// The running demo: the proxy, a config folder it watches, and one
/// process per workload.
struct Pipeline {
    proxy: ProxyProcess,
    config: TempDir,
    _identity: TempDir,
    workloads: BTreeMap<String, ProxyProcess>,
    /// Per service: its endpoints (address, version).
    endpoints: Vec<(MeshService, Vec<(SocketAddr, String)>)>,
    client: FixedClient,
}

impl Pipeline {
    /// Starts the proxy (empty config), every workload of mesh.yaml but
    /// the load generator, then writes the config and waits until a
    /// request crosses the whole pipeline.
    async fn start() -> Pipeline {
        let config = tempfile::Builder::new()
            .prefix("trellis-demo-config-")
            .tempdir()
            .expect("tempdir");
        let dir = config.path().to_str().expect("utf-8 temp path").to_string();
        let identity = tempfile::Builder::new()
            .prefix("trellis-demo-identity-")
            .tempdir()
            .expect("tempdir");
        TestCa::new("demo").write_identity_dir(
            identity.path(),
            "spiffe://cluster.local/ns/default/sa/demo-test",
            Validity::Current,
            &[],
        );
        let proxy = ProxyProcess::start(
            &proxy_bin(),
            &[
                "sidecar",
                "--config-dir",
                &dir,
                "--outbound",
                "127.0.0.1:0",
                "--inbound",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--audit-log",
                "off",
                "--identity-dir",
                identity.path().to_str().expect("utf-8 temp path"),
            ],
        )
        .await;
        let outbound = proxy.outbound();
        let mut workloads = BTreeMap::new();
        let mut endpoints = Vec::new();
        for s in services(&mesh_file().mesh)
            .into_iter()
            .filter(|s| s.name != "load")
        {
            let mut eps = Vec::new();
            for (version, argv) in &s.deployments {
                let workload = if version.is_empty() {
                    format!("{}-0", s.name)
                } else {
                    format!("{}-{version}-0", s.name)
                };
                let p =
                    start_workload(&s.name, &workload, version, &argv[1..], outbound, &[]).await;
                eps.push((p.addr("listen").expect("listen address"), version.clone()));
                workloads.insert(workload, p);
            }
            endpoints.push((s, eps));
        }
        let pipeline = Pipeline {
            client: http1_client_to(outbound),
            proxy,
            config,
            _identity: identity,
            workloads,
            endpoints,
        };
        pipeline.apply(&[]);
        pipeline.wait_until_serving().await;
        pipeline
    }

    /// Writes the proxy's config: static ServiceEntries, mesh.yaml's Istio
    /// documents, and `overlay` replacing documents of the same kind and
    /// name (as `trellis apply` of a variant does). Atomically, by rename.
    fn apply(&self, overlay: &[Value]) {
        let mut docs: Vec<Value> = self
            .endpoints
            .iter()
            .map(|(s, eps)| static_service_entry(s, eps))
            .collect();
        docs.extend(mesh_file().istio);
        for o in overlay {
            docs.retain(|d| {
                !(d["kind"] == o["kind"] && d["metadata"]["name"] == o["metadata"]["name"])
            });
            docs.push(o.clone());
        }
        // JSON is YAML: one document per `---`.
        let text: Vec<String> = docs
            .iter()
            .map(|d| serde_json::to_string_pretty(d).unwrap())
            .collect();
        let tmp = self.config.path().join(".mesh.yaml.tmp");
        std::fs::write(&tmp, text.join("\n---\n")).expect("write config");
        std::fs::rename(&tmp, self.config.path().join("mesh.yaml")).expect("rename config");
    }

    async fn wait_until_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = self.infer("is it up?").await;
            if matches!(&r, Ok((s, _)) if *s == StatusCode::OK) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the pipeline did not answer 200 within 15s; last: {r:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST http://gateway:8080/v1/infer` through the proxy, as a meshed
    /// client would send it.
    async fn infer(&self, prompt: &str) -> Result<(StatusCode, Value), String> {
        let body = serde_json::json!({"prompt": prompt}).to_string();
        let req = Request::post("http://gateway:8080/v1/infer")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let (status, headers, body) = try_send(&self.client, req)
            .await
            .map_err(|e| e.to_string())?;
        let json: Value = serde_json::from_slice(&body).map_err(|e| {
            format!(
                "{status}: not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        })?;
        if status == StatusCode::OK {
            let rid = headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if json["request_id"] != rid {
                return Err(format!("x-request-id {rid:?} is not the answer's: {json}"));
            }
        }
        Ok((status, json))
    }

    /// Sends `n` prompts over `concurrency` connections; every answer must
    /// be 200 and walk the whole pipeline. Returns the answers.
    async fn run(self: &Arc<Self>, n: usize, concurrency: usize) -> Vec<Answer> {
        let mut tasks = Vec::new();
        for t in 0..concurrency {
            let me = self.clone();
            let count = n / concurrency + usize::from(t < n % concurrency);
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..count {
                    let (status, body) = me
                        .infer(&format!("Prompt {t}-{i}: what is a service mesh?"))
                        .await
                        .unwrap();
                    assert_eq!(status, StatusCode::OK, "{body}\n{}", me.logs());
                    out.push(serde_json::from_value::<Answer>(body).expect("an Answer"));
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("client task"));
        }
        all
    }

    fn logs(&self) -> String {
        let mut s = format!("--- proxy:\n{}", self.proxy.logs());
        for (name, p) in &self.workloads {
            s += &format!("--- {name}:\n{}", p.logs());
        }
        s
    }

    async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.proxy.admin_get("/stats/prometheus").await;
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A demo workload with the environment `trellis up` gives it.
async fn start_workload(
    service: &str,
    workload: &str,
    version: &str,
    args: &[String],
    outbound: SocketAddr,
    extra: &[&str],
) -> ProxyProcess {
    ProxyProcess::command(demo_bin())
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .env("TRELLIS_SERVICE", service)
        .env("TRELLIS_NAMESPACE", "default")
        .env("TRELLIS_WORKLOAD", workload)
        .env("TRELLIS_VERSION", version)
        .env("HTTP_PROXY", format!("http://{outbound}"))
        .env("http_proxy", format!("http://{outbound}"))
        .env("NO_PROXY", "")
        .env("TRELLIS_OUTBOUND", outbound.to_string())
        .start()
        .await
        .unwrap_or_else(|e| panic!("starting {workload}: {e}"))
}

fn variant(name: &str) -> Vec<Value> {
    documents(&example_dir().join("variants").join(name))
}

/// Every hop recorded, in order, by the workloads that exist, with one
/// request id and one trace id throughout.
#[track_caller]
fn assert_whole_path(a: &Answer) {
    let services: Vec<&str> = a.path.iter().map(|h| h.service.as_str()).collect();
    assert_eq!(
        services,
        ["gateway", "preprocess", "inference", "postprocess"],
        "{a:?}"
    );
    let version = a.version_of("inference").unwrap();
    let workloads: Vec<&str> = a.path.iter().map(|h| h.workload.as_str()).collect();
    let inference = format!("inference-{version}-0");
    assert_eq!(
        workloads,
        [
            "gateway-0",
            "preprocess-0",
            inference.as_str(),
            "postprocess-0"
        ],
        "{a:?}"
    );
    let model = match version {
        "v1" => "slow",
        "v2" => "fast",
        other => panic!("unknown inference version {other:?}"),
    };
    assert_eq!(a.model, model, "{a:?}");
    for h in &a.path {
        assert_eq!(h.request_id, a.request_id, "{a:?}");
        assert_eq!(h.trace_id, a.path[0].trace_id, "{a:?}");
        assert_eq!(h.trace_id.len(), 32);
    }
    // Each stage's time includes the stages after it.
    for w in a.path.windows(2) {
        assert!(w[0].ms >= w[1].ms, "{a:?}");
    }
    assert!(
        a.input_tokens > 0 && a.output_tokens > 0 && !a.answer.is_empty(),
        "{a:?}"
    );
}

fn share(answers: &[Answer], version: &str) -> f64 {
    let n = answers
        .iter()
        .filter(|a| a.version_of("inference") == Some(version))
        .count();
    n as f64 * 100.0 / answers.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_splits_80_20_through_the_whole_pipeline() {
    let p = Arc::new(Pipeline::start().await);
    let answers = p.run(400, 8).await;
    assert_eq!(answers.len(), 400);
    for a in &answers {
        assert_whole_path(a);
    }
    // 400 draws at 20%: one standard deviation is 2 points, so ±6 is 3 sigma.
    let v2 = share(&answers, "v2");
    assert!(
        (v2 - 20.0).abs() <= 6.0,
        "v2 served {v2:.1}% of 400, want 20 ± 6"
    );
    assert!((share(&answers, "v1") + v2 - 100.0).abs() < 1e-9);
    // The fast model is faster: v2's inference hop (without the
    // postprocess call it makes) is shorter at the median.
    let median = |v: &str| {
        let mut ms: Vec<f64> = answers
            .iter()
            .filter(|a| a.version_of("inference") == Some(v))
            .map(|a| a.path[2].ms - a.path[3].ms)
            .collect();
        ms.sort_by(f64::total_cmp);
        ms[ms.len() / 2]
    };
    let (slow, fast) = (median("v1"), median("v2"));
    // Medians 40 and 10 ms by design; a busy machine adds to both alike.
    assert!(
        slow - fast > 15.0,
        "v1 median {slow} ms, v2 {fast} ms: want v1 slower by ~30 ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_variants_cut_over_and_inject_faults_that_retries_absorb() {
    let p = Arc::new(Pipeline::start().await);

    // cutover.yaml: every request to v2, once the proxy has reloaded.
    p.apply(&variant("cutover.yaml"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while p
        .run(10, 1)
        .await
        .iter()
        .any(|a| a.version_of("inference") != Some("v2"))
    {
        assert!(
            Instant::now() < deadline,
            "cutover.yaml not in effect after 10s\n{}",
            p.logs()
        );
    }
    let answers = p.run(50, 4).await;
    assert!(
        answers
            .iter()
            .all(|a| a.version_of("inference") == Some("v2"))
    );

    // canary-50.yaml: both versions again, about half each.
    p.apply(&variant("canary-50.yaml"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let answers = p.run(200, 8).await;
    let v1 = share(&answers, "v1");
    // One standard deviation of 200 draws at 50% is 3.5 points.
    assert!(
        (v1 - 50.0).abs() <= 12.0,
        "v1 served {v1:.1}% of 200 with canary-50.yaml"
    );

    // fault.yaml: 20% of calls to postprocess aborted by the sidecar, which
    // the retries on the inference route absorb (3 attempts: ~0.8% fail).
    let retries_before = p.metric("trellis_upstream_retries_total").await;
    p.apply(&variant("fault.yaml"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.metric("trellis_faults_injected_total").await == 0.0 {
        let _ = p.infer("warm up").await;
        assert!(
            Instant::now() < deadline,
            "fault.yaml not in effect after 10s\n{}",
            p.logs()
        );
    }
    let mut ok = 0;
    let mut failed = Vec::new();
    for i in 0..150 {
        let (status, body) = p.infer(&format!("fault {i}")).await.unwrap();
        if status == StatusCode::OK {
            ok += 1;
        } else {
            // What fails despite the retries says where and why.
            let e: ErrorBody = serde_json::from_value(body).expect("the error JSON");
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                (e.hop.as_str(), e.reason.as_deref()),
                ("inference -> postprocess", Some("fault_injected"))
            );
            failed.push(e);
        }
    }
    assert!(
        ok >= 140,
        "{ok}/150 succeeded with retries; failures: {failed:?}"
    );
    let aborts = p.metric("trellis_faults_injected_total").await;
    let retries = p.metric("trellis_upstream_retries_total").await - retries_before;
    assert!(aborts >= 15.0, "faults injected: {aborts}");
    assert!(retries >= 10.0, "retries sent: {retries}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_hop_is_named_with_the_sidecars_reason() {
    let mut p = Pipeline::start().await;
    drop(p.workloads.remove("postprocess-0"));
    let (status, body) = p.infer("anyone there?").await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let e: ErrorBody = serde_json::from_value(body.clone()).expect("the error JSON");
    assert_eq!(e.hop, "inference -> postprocess", "{body}");
    assert_eq!(
        e.reason.as_deref(),
        Some("upstream_connect_failure"),
        "{body}"
    );
    assert_eq!(e.upstream_status, Some(503));
    assert_eq!(e.via.len(), 3, "inference, preprocess, gateway: {body}");
    assert!(e.via[0].starts_with("inference-v"), "{body}");
    assert_eq!(&e.via[1..], ["preprocess-0", "gateway-0"]);
    assert!(
        e.error.contains("inference's sidecar answered 503"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_sends_its_rate_through_the_mesh() {
    let p = Pipeline::start().await;
    let load = services(&mesh_file().mesh)
        .into_iter()
        .find(|s| s.name == "load")
        .expect("load in mesh.yaml");
    let argv = &load.deployments[0].1;
    let mut loadgen = start_workload(
        "load",
        "load-0",
        "",
        &argv[1..],
        p.proxy.outbound(),
        &["--rate", "100", "--count", "100", "--report-every", "1s"],
    )
    .await;
    let (status, health) = {
        let c = trellis_testing::http1_client();
        let req = Request::get(format!(
            "http://{}/healthz",
            loadgen.addr("listen").unwrap()
        ))
        .body(Full::new(Bytes::new()))
        .unwrap();
        let (s, _, b) = try_send(&c, req).await.expect("load generator health");
        (s, String::from_utf8_lossy(&b).into_owned())
    };
    assert_eq!(status, StatusCode::OK, "{health}");
    let start = Instant::now();
    let exit = loadgen.wait_exit(Duration::from_secs(30)).await;
    assert!(
        exit.is_some_and(|s| s.success()),
        "load --count 100 did not finish: {exit:?}\n{}",
        loadgen.logs()
    );
    // Open loop at 100/s: about a second, not a request after another.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let logs = loadgen.logs();
    let totals: Value = logs
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no totals line:\n{logs}"));
    assert_eq!(totals["sent"], 100, "{totals}");
    assert_eq!(totals["ok"], 100, "{totals}\n{}", p.logs());
    assert_eq!(totals["failed"], 0, "{totals}");
    let by_version = &totals["served_by"]["inference"];
    let (v1, v2) = (
        by_version["v1"].as_u64().unwrap_or(0),
        by_version["v2"].as_u64().unwrap_or(0),
    );
    assert_eq!(v1 + v2, 100, "{totals}");
    assert!(v1 > v2, "80/20: {totals}");
    assert!(
        !logs.contains("load: last"),
        "quiet when nothing fails:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_summarises_errors() {
    // No gateway registered: the sidecar answers 404 route_not_found.
    let config = tempfile::Builder::new()
        .prefix("trellis-demo-config-")
        .tempdir()
        .expect("tempdir");
    let proxy = ProxyProcess::start(
        &proxy_bin(),
        &[
            "sidecar",
            "--config-dir",
            config.path().to_str().unwrap(),
            "--outbound",
            "127.0.0.1:0",
            "--inbound",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
    )
    .await;
    let args: Vec<String> = [
        "load",
        "--rate",
        "50",
        "--count",
        "60",
        "--report-every",
        "500ms",
    ]
    .map(String::from)
    .to_vec();
    let mut loadgen = start_workload("load", "load-0", "", &args, proxy.outbound(), &[]).await;
    let exit = loadgen.wait_exit(Duration::from_secs(30)).await;
    assert!(
        exit.is_some_and(|s| s.success()),
        "{exit:?}\n{}",
        loadgen.logs()
    );
    let logs = loadgen.logs();
    assert!(
        logs.contains("failed; ")
            && logs.contains("x 404 route_not_found (at the load generator's sidecar)"),
        "an error summary:\n{logs}"
    );
    let totals: Value = logs
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("totals");
    assert_eq!(
        (totals["sent"].as_u64(), totals["failed"].as_u64()),
        (Some(60), Some(60)),
        "{totals}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_sidecar_a_service_says_so() {
    // An address nothing listens on: bound, then released.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gateway = start_workload(
        "gateway",
        "gateway-0",
        "",
        &["gateway".to_string()],
        dead,
        &[],
    )
    .await;
    let req = Request::get("http://gateway:8080/v1/infer?prompt=hello")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let client = http1_client_to(gateway.addr("listen").unwrap());
    let (status, _, body) = try_send(&client, req).await.expect("the gateway answers");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let e: ErrorBody = serde_json::from_slice(&body).expect("the error JSON");
    assert_eq!(e.hop, "gateway -> preprocess");
    assert_eq!(e.reason.as_deref(), Some("sidecar_unreachable"));
    assert!(
        e.error.contains(&dead.to_string()),
        "names the address: {}",
        e.error
    );
}
