//! `trellis-xds-sim`: the control-plane scale benchmark's proxies.
//!
//! `trellis-xds-sim config` prints the mesh (ServiceEntries, DestinationRules,
//! VirtualServices) to apply to `trellis control`; `trellis-xds-sim run`
//! connects N simulated proxies, each on its own gRPC ADS stream, and runs
//! the scenarios of bench/README.md ("Control plane at scale"), printing one
//! JSON document of results. `bench/scale` drives both.

mod mesh;
mod procstat;
mod proxy;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use mesh::{MARKER_SERVICE, Mesh, Scope};
use procstat::Sampler;
use proxy::{Role, Shared, Wire};

/// The simulator stands for proxies that would run on other machines, yet
/// it shares the control plane's CPUs: every cycle it spends decoding is
/// taken from the control plane being measured. With glibc's malloc it
/// spent 11.5 s of CPU decoding the 10,000 route tables (~200 virtual hosts
/// each) of one VirtualService change; with mimalloc, as `trellis control`
/// uses, 3.6 s, decoding just as much (bench/SCALE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "trellis-xds-sim",
    about = "Simulated proxies on real ADS streams against trellis control"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone, Copy)]
struct MeshArgs {
    /// Services in the mesh.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Namespaces the services are spread over.
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// What each proxy sees: every service, or its namespace's and the
    /// shared namespace's (a Sidecar per namespace).
    #[arg(long, value_enum, default_value_t = Scope::All)]
    scope: Scope,
}

#[derive(Subcommand)]
enum Command {
    /// Print the mesh's config (YAML) to apply to the control plane.
    Config(MeshArgs),
    /// Run the scenarios; results as JSON on stdout, progress on stderr.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// The control plane's xDS address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds: SocketAddr,
    /// The control plane's HTTP API (for the VirtualService change).
    #[arg(long, default_value = "127.0.0.1:15014")]
    api: SocketAddr,
    /// Simulated proxies (base workloads).
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// Scenarios, in order: connect (always first), vs, churn.
    #[arg(long, default_value = "connect,vs,churn", value_delimiter = ',')]
    scenarios: Vec<String>,
    /// The ADS variant the proxies speak (Envoy speaks both).
    #[arg(long, value_enum, default_value_t = Wire::Sotw)]
    wire: Wire,
    /// The control plane's pid, to sample its CPU and RSS.
    #[arg(long)]
    control_pid: Option<u32>,
    /// Worker threads of the simulator's runtime [default: CPUs it may use].
    #[arg(long)]
    threads: Option<usize>,
    /// How long to wait for a scenario to converge, seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// VirtualService changes to measure.
    #[arg(long, default_value_t = 5)]
    vs_changes: usize,
    /// Churn: workloads joining per second (each leaves after --churn-lifetime).
    #[arg(long, default_value_t = 50.0)]
    churn_rate: f64,
    /// Churn: seconds of joining.
    #[arg(long, default_value_t = 60.0)]
    churn_secs: f64,
    /// Churn: seconds each churn workload stays.
    #[arg(long, default_value_t = 10.0)]
    churn_lifetime: f64,
    /// The control plane's --registration-grace in seconds: a leave counts
    /// from its stream's end plus this.
    #[arg(long, default_value_t = 0.0)]
    registration_grace: f64,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Config(m) => {
            let mesh = Mesh {
                services: m.services,
                namespaces: m.namespaces,
                scope: m.scope,
            };
            print!("{}", mesh.config());
        }
        Command::Run(a) => {
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            if let Some(t) = a.threads {
                rt.worker_threads(t);
            }
            let rt = rt.enable_all().build().expect("tokio runtime");
            let out = rt.block_on(run(a));
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            // Don't wait for thousands of tasks to wind down.
            rt.shutdown_timeout(Duration::from_millis(100));
        }
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// p50, p99, max of `v` (seconds), nearest rank.
fn dist(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return json!({"n": 0});
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    json!({"n": v.len(), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": v[v.len() - 1], "min": v[0]})
}

fn log(sh: &Shared, msg: &str) {
    eprintln!("[{:8.3}s] {msg}", secs(sh.now()));
}

async fn run(a: RunArgs) -> Value {
    let mesh = Mesh {
        services: a.mesh.services,
        namespaces: a.mesh.namespaces,
        scope: a.mesh.scope,
    };
    let sh = Arc::new(Shared::new(
        mesh,
        a.wire,
        &a.xds.to_string(),
        a.proxies,
        Duration::from_secs_f64(a.registration_grace),
    ));
    let sampler = Sampler::start(a.control_pid, sh.epoch);
    let timeout = Duration::from_secs_f64(a.timeout);
    let mut results = serde_json::Map::new();
    results.insert(
        "params".into(),
        json!({
            "proxies": a.proxies, "services": a.mesh.services, "namespaces": a.mesh.namespaces, "scope": a.mesh.scope.as_str(),
            "threads": a.threads, "churn_rate": a.churn_rate, "churn_secs": a.churn_secs,
            "churn_lifetime": a.churn_lifetime, "registration_grace": a.registration_grace,
            "vs_changes": a.vs_changes, "mode": a.wire.as_str(),
        }),
    );

    // (a) Connect storm: every base proxy at once.
    let (stop_tx, stop_rx) = watch::channel(false);
    let t0 = sh.now();
    let cpu0 = sampler.mark();
    for i in 0..a.proxies {
        tokio::spawn(proxy::run(sh.clone(), Role::Base(i), stop_rx.clone()));
    }
    log(&sh, &format!("connect: {} proxies spawned", a.proxies));
    let deadline = Instant::now() + timeout;
    let (mut all_full_at, mut last_print) = (None, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let full = sh
            .recs
            .iter()
            .filter(|r| r.full_at.load(Relaxed) != 0)
            .count();
        let conv = sh
            .recs
            .iter()
            .filter(|r| r.converged_at.load(Relaxed) != 0)
            .count();
        if full == a.proxies && all_full_at.is_none() {
            all_full_at = Some(sh.now());
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            let conn = sh.recs.iter().filter(|r| r.connected.load(Relaxed)).count();
            log(
                &sh,
                &format!(
                    "connect: connected {conn} full {full} all-endpoints {conv} / {} (responses {}, MB decoded {:.0}, control {})",
                    a.proxies,
                    sh.stats.responses.load(Relaxed),
                    sh.stats.bytes.load(Relaxed) as f64 / 1e6,
                    sampler.now_line(),
                ),
            );
        }
        if conv == a.proxies || Instant::now() > deadline {
            break;
        }
    }
    let t_end = sh.now();
    let cpu1 = sampler.mark();
    let full: Vec<f64> = sh
        .recs
        .iter()
        .map(|r| r.full_at.load(Relaxed))
        .filter(|t| *t != 0)
        .map(|t| secs(t - t0))
        .collect();
    let conv: Vec<f64> = sh
        .recs
        .iter()
        .map(|r| r.converged_at.load(Relaxed))
        .filter(|t| *t != 0)
        .map(|t| secs(t - t0))
        .collect();
    let done = conv.len() == a.proxies;
    log(
        &sh,
        &format!(
            "connect: done={done}, all full after {:?} s, all endpoints after {:.3} s",
            all_full_at.map(|t| secs(t - t0)),
            secs(t_end - t0)
        ),
    );
    let mut connect = json!({
        "complete": done,
        "all_full_s": all_full_at.map(|t| secs(t - t0)),
        "all_endpoints_s": done.then(|| secs(t_end - t0)),
        "full_s": dist(full),
        "all_endpoints_per_proxy_s": dist(conv),
        "control": sampler.window(&cpu0, &cpu1),
        "stats": stats(&sh),
    });
    // Steady state: idle for a few seconds.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = sampler.mark();
    connect["steady_control"] = sampler.window(&cpu1, &idle);
    results.insert("connect".into(), connect);
    if !done {
        results.insert("aborted".into(), json!("connect storm did not converge"));
        results.insert("samples".into(), sampler.series());
        return Value::Object(results);
    }

    for s in &a.scenarios {
        match s.as_str() {
            "connect" => {}
            "vs" => {
                let r = vs_changes(&sh, &a, &sampler, timeout).await;
                results.insert("vs".into(), r);
            }
            "churn" => {
                let r = churn(&sh, &a, &sampler, timeout).await;
                results.insert("churn".into(), r);
            }
            other => eprintln!("unknown scenario {other}"),
        }
    }
    let end = sampler.mark();
    results.insert("final_control".into(), sampler.status());
    results.insert("final_stats".into(), stats(&sh));
    results.insert("whole_run_control".into(), sampler.window(&cpu0, &end));
    results.insert("samples".into(), sampler.series());
    let _ = stop_tx.send(true);
    Value::Object(results)
}

fn stats(sh: &Shared) -> Value {
    let s = &sh.stats;
    json!({
        "responses": s.responses.load(Relaxed),
        "resources": s.resources.load(Relaxed),
        "bytes": s.bytes.load(Relaxed),
        "bytes_by_type": {
            "cds": s.bytes_by_type[0].load(Relaxed),
            "lds": s.bytes_by_type[1].load(Relaxed),
            "rds": s.bytes_by_type[2].load(Relaxed),
            "eds": s.bytes_by_type[3].load(Relaxed),
        },
        "connect_errors": s.connect_errors.load(Relaxed),
        "stream_errors": s.stream_errors.load(Relaxed),
        "decode_errors": s.decode_errors.load(Relaxed),
        "errors": &*s.errors.lock().unwrap_or_else(|e| e.into_inner()),
    })
}

/// (b) Edit the marker service's VirtualService (its first weight), and
/// time until each proxy has ACKed routes with the new weight.
async fn vs_changes(sh: &Arc<Shared>, a: &RunArgs, sampler: &Sampler, timeout: Duration) -> Value {
    let mut changes = Vec::new();
    let mut all = Vec::new();
    let m0 = sampler.mark();
    for k in 0..a.vs_changes {
        let weight: u32 = if k % 2 == 0 { 80 } else { 90 };
        let body = sh.mesh.virtual_service(MARKER_SERVICE, weight);
        let c0 = sampler.mark();
        let rds0 = sh.stats.bytes_by_type[2].load(Relaxed);
        let t0 = sh.now();
        let api = apply(a.api, &body).await;
        let api_s = secs(sh.now() - t0);
        let deadline = Instant::now() + timeout;
        loop {
            let behind = sh
                .recs
                .iter()
                .filter(|r| r.marker.load(Relaxed) != i64::from(weight))
                .count();
            if behind == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let c1 = sampler.mark();
        let rds_bytes = sh.stats.bytes_by_type[2].load(Relaxed) - rds0;
        let lat: Vec<f64> = sh
            .recs
            .iter()
            .filter(|r| r.marker.load(Relaxed) == i64::from(weight))
            .map(|r| secs(r.marker_at.load(Relaxed).saturating_sub(t0)))
            .collect();
        all.extend(lat.iter().copied());
        let d = dist(lat);
        log(sh, &format!("vs change {k} to weight {weight}: {d}"));
        changes.push(json!({
            "weight": weight, "api": api, "api_s": api_s, "acked": d,
            "rds_bytes": rds_bytes,
            "control": sampler.window(&c0, &c1),
        }));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let m1 = sampler.mark();
    json!({"all": dist(all), "changes": changes, "control": sampler.window(&m0, &m1)})
}

/// POST /api/v1/apply; returns the status line.
async fn apply(api: SocketAddr, yaml: &str) -> String {
    let go = async {
        let mut s = tokio::net::TcpStream::connect(api).await?;
        s.set_nodelay(true)?;
        let req = format!(
            "POST /api/v1/apply?file=sim.yaml HTTP/1.1\r\nHost: {api}\r\ncontent-type: application/yaml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{yaml}",
            yaml.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&resp).into_owned())
    };
    match go.await {
        Ok(r) => {
            let status = r.lines().next().unwrap_or("").to_string();
            if !status.contains(" 200") {
                eprintln!("apply failed: {r}");
            }
            status
        }
        Err(e) => format!("error: {e}"),
    }
}

/// (c) Workloads joining at `churn_rate` per second for `churn_secs`, each
/// leaving after `churn_lifetime`: time until each base proxy has ACKed EDS
/// with (without) the endpoint.
async fn churn(sh: &Arc<Shared>, a: &RunArgs, sampler: &Sampler, timeout: Duration) -> Value {
    let c0 = sampler.mark();
    let start = Instant::now();
    let lifetime = Duration::from_secs_f64(a.churn_lifetime);
    let total = (a.churn_rate * a.churn_secs).round() as usize;
    let mut live: VecDeque<(Instant, watch::Sender<bool>)> = VecDeque::new();
    let mut spawned = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut last_print = Instant::now();
    log(
        sh,
        &format!("churn: {total} workloads, {} /s", a.churn_rate),
    );
    while spawned < total || !live.is_empty() {
        tick.tick().await;
        let el = start.elapsed().as_secs_f64();
        let due = ((el * a.churn_rate).floor() as usize).min(total);
        while spawned < due {
            let (tx, rx) = watch::channel(false);
            tokio::spawn(proxy::run(sh.clone(), Role::Churn(spawned), rx));
            live.push_back((Instant::now() + lifetime, tx));
            spawned += 1;
        }
        while live.front().is_some_and(|(t, _)| *t <= Instant::now()) {
            if let Some((_, tx)) = live.pop_front() {
                let _ = tx.send(true);
            }
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            let agg = sh.churn.lock().unwrap_or_else(|e| e.into_inner());
            log(
                sh,
                &format!(
                    "churn: spawned {spawned}, live {}, join p50/p99 {:.3}/{:.3} s ({} obs), leave p50/p99 {:.3}/{:.3} s ({} obs); control {}",
                    live.len(),
                    agg.join.value_at_quantile(0.5) as f64 / 1e6,
                    agg.join.value_at_quantile(0.99) as f64 / 1e6,
                    agg.join.len(),
                    agg.leave.value_at_quantile(0.5) as f64 / 1e6,
                    agg.leave.value_at_quantile(0.99) as f64 / 1e6,
                    agg.leave.len(),
                    sampler.now_line()
                ),
            );
        }
    }
    let c1 = sampler.mark();
    // Let the last leaves reach everyone.
    let deadline = Instant::now() + timeout.min(Duration::from_secs(60));
    loop {
        let pending = {
            let agg = sh.churn.lock().unwrap_or_else(|e| e.into_inner());
            // An observer that saw a join will see its leave.
            agg.events
                .values()
                .filter(|e| e.join_seen > e.leave_seen)
                .count()
        };
        if pending == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c2 = sampler.mark();
    let agg = sh.churn.lock().unwrap_or_else(|e| e.into_inner());
    let h = |h: &hdrhistogram::Histogram<u64>| {
        json!({
            "n": h.len(),
            "p50": h.value_at_quantile(0.5) as f64 / 1e6,
            "p90": h.value_at_quantile(0.9) as f64 / 1e6,
            "p99": h.value_at_quantile(0.99) as f64 / 1e6,
            "max": h.max() as f64 / 1e6,
        })
    };
    let grace = agg.grace_ns;
    let join_all: Vec<f64> = agg
        .events
        .values()
        .filter(|e| e.join_seen >= e.observers)
        .filter_map(|e| Some(secs(e.join_last.saturating_sub(e.joined?))))
        .collect();
    let leave_all: Vec<f64> = agg
        .events
        .values()
        .filter(|e| e.leave_seen >= e.observers)
        .filter_map(|e| Some(secs(e.leave_last.saturating_sub(e.left? + grace))))
        .collect();
    let r = json!({
        "workloads": spawned,
        "events": agg.events.len(),
        "per_proxy_join": h(&agg.join),
        "churn_first_response": h(&agg.first_response),
        "per_proxy_leave": h(&agg.leave),
        "join_seen_by_all": dist(join_all),
        "leave_seen_by_all": dist(leave_all),
        "joins_not_seen_by_all": agg.events.values().filter(|e| e.join_seen < e.observers).count(),
        "leaves_not_seen_by_all": agg.events.values().filter(|e| e.leave_seen < e.observers).count(),
        "control": sampler.window(&c0, &c1),
        "control_drain": sampler.window(&c1, &c2),
    });
    log(sh, &format!("churn: {r}"));
    r
}
