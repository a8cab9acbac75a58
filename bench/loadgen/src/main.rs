//! trellis-loadgen: the load generator and test upstream of Trellis's benchmark harness.
//!
//! ```text
//! trellis-loadgen --url http://127.0.0.1:8080/ --host upstream.bench --proto h1 \
//!     --rate 1000 --connections 16 --duration 10s --warmup 2s      # open loop
//! trellis-loadgen --url ... --connections 64 --duration 10s        # closed loop (no --rate)
//! trellis-loadgen check --url ... --proto grpc                     # one request, verified
//! trellis-loadgen serve --listen 127.0.0.1:9000                    # h1 + h2c + gRPC echo upstream
//! ```
//! Prints one JSON object (see bench/README.md for the fields).

mod h1;
mod h2;
mod hpack;
mod load;
mod procstat;
mod serve;
mod serve_h2;
mod stats;

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    /// HTTP/1.1, one request in flight per connection
    H1,
    /// HTTP/2 over cleartext with prior knowledge, requests multiplexed
    H2c,
    /// gRPC unary over h2c: POST /trellis.test.Echo/Unary
    Grpc,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::H1 => "h1",
            Proto::H2c => "h2c",
            Proto::Grpc => "grpc",
        })
    }
}

/// Why a request failed; the JSON `errors` object is keyed by `to_string()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrKind {
    Connect,
    Io,
    Closed,
    Parse,
    H2,
    H2Reset,
    Timeout,
    Status(u16),
    BodySize,
    GrpcStatus(String),
    GrpcNoStatus,
    GrpcFrame,
}

impl fmt::Display for ErrKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrKind::Connect => f.write_str("connect"),
            ErrKind::Io => f.write_str("io"),
            ErrKind::Closed => f.write_str("closed"),
            ErrKind::Parse => f.write_str("parse"),
            ErrKind::H2 => f.write_str("h2"),
            ErrKind::H2Reset => f.write_str("h2_reset"),
            ErrKind::Timeout => f.write_str("timeout"),
            ErrKind::Status(s) => write!(f, "status_{s}"),
            ErrKind::BodySize => f.write_str("body_size"),
            ErrKind::GrpcStatus(s) => write!(f, "grpc_status_{s}"),
            ErrKind::GrpcNoStatus => f.write_str("grpc_no_status"),
            ErrKind::GrpcFrame => f.write_str("grpc_frame"),
        }
    }
}

#[derive(Parser)]
#[command(
    name = "trellis-loadgen",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve HTTP/1.1 + h2c (prior knowledge) + gRPC unary echo on one port
    Serve(ServeArgs),
    /// Send one request and verify it (status 2xx, body size, gRPC status); exit 1 if not
    Check(CheckArgs),
}

#[derive(Args)]
struct Target {
    /// Where to connect and which path to request, e.g. http://127.0.0.1:8080/
    #[arg(long)]
    url: Option<String>,
    /// Host header (HTTP/1.1) or :authority (h2c, gRPC) to send; default: the URL's
    #[arg(long)]
    host: Option<String>,
    #[arg(long, value_enum, default_value_t = Proto::H1)]
    proto: Proto,
    /// Fail requests whose body (h1/h2c) is not this many bytes
    #[arg(long)]
    expect_bytes: Option<u64>,
    /// Size of the gRPC request message (the upstream echoes it)
    #[arg(long, default_value_t = 1024)]
    grpc_message_bytes: usize,
    /// Per-request timeout
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
struct LoadArgs {
    #[command(flatten)]
    target: Target,
    /// Open loop at this total rate (req/s), spread evenly over the connections.
    /// Without it: closed loop, as fast as the connections go.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, short = 'c', default_value_t = 16)]
    connections: usize,
    /// Closed loop h2c/gRPC: concurrent streams per connection
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Measured time, after the warmup: 10, 10s, 500ms, 1m
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before measuring (not recorded)
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Worker threads, each a current-thread runtime owning connections round-robin
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Report utime+stime of this process over the measured window (repeatable)
    #[arg(long = "cpu-pid")]
    cpu_pids: Vec<u32>,
    /// A label copied into the JSON
    #[arg(long)]
    label: Option<String>,
    /// Also write the JSON to this file
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Size of the body of non-gRPC responses
    #[arg(long, default_value_t = 1024)]
    body_size: usize,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    target: Target,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

struct Resolved {
    addr: SocketAddr,
    authority: String,
    path: String,
}

fn resolve(t: &Target) -> Result<Resolved, String> {
    let url = t.url.as_deref().ok_or("--url is required")?;
    let uri: http::Uri = url.parse().map_err(|e| format!("bad --url {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("--url {url:?}: only http:// is supported"));
    }
    let auth = uri
        .authority()
        .ok_or_else(|| format!("--url {url:?} has no host"))?;
    let port = auth.port_u16().unwrap_or(80);
    let addr = (auth.host(), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", auth.host()))?
        .next()
        .ok_or_else(|| format!("no address for {}", auth.host()))?;
    let authority = t.host.clone().unwrap_or_else(|| auth.to_string());
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok(Resolved {
        addr,
        authority,
        path,
    })
}

fn h1_request(r: &Resolved) -> Bytes {
    Bytes::from(format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: trellis-loadgen\r\nAccept: */*\r\n\r\n",
        r.path, r.authority
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Some(Cmd::Serve(a)) => {
            serve::serve(a.listen, a.body_size).map_err(|e| format!("serve: {e}"))
        }
        Some(Cmd::Check(a)) => check(&a.target),
        None => run_load(cli.load),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(t: &Target) -> Result<(), String> {
    let r = resolve(t)?;
    let tmpl = h2::H2Template::new(
        &r.authority,
        &r.path,
        t.proto == Proto::Grpc,
        t.grpc_message_bytes,
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result: Result<(u16, u64), ErrKind> = rt.block_on(async {
        let fut = async {
            match t.proto {
                Proto::H1 => {
                    let mut c = h1::H1Conn::connect(r.addr)
                        .await
                        .map_err(|_| ErrKind::Connect)?;
                    let resp = c.request(&h1_request(&r)).await?;
                    Ok((resp.status, resp.body_len))
                }
                _ => {
                    let resp = h2::one_request(r.addr, &tmpl).await?;
                    Ok((resp.status, resp.body_len))
                }
            }
        };
        tokio::time::timeout(t.timeout, fut)
            .await
            .unwrap_or(Err(ErrKind::Timeout))
    });
    let verdict = match &result {
        Ok((status, _)) if !(200..300).contains(status) => Err(ErrKind::Status(*status)),
        Ok((_, n)) if t.proto == Proto::Grpc && *n != tmpl.grpc_msg_len => Err(ErrKind::BodySize),
        Ok((_, n)) if t.proto != Proto::Grpc && t.expect_bytes.is_some_and(|e| e != *n) => {
            Err(ErrKind::BodySize)
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e.clone()),
    };
    let out = json!({
        "proto": t.proto.to_string(),
        "url": t.url,
        "host": r.authority,
        "status": result.as_ref().ok().map(|x| x.0),
        "body_bytes": result.as_ref().ok().map(|x| x.1),
        "ok": verdict.is_ok(),
        "error": verdict.as_ref().err().map(|e| e.to_string()),
    });
    println!("{out}");
    verdict.map_err(|e| format!("check failed: {e}"))
}

fn run_load(a: LoadArgs) -> Result<(), String> {
    let r = resolve(&a.target)?;
    if a.connections == 0 || a.threads == 0 {
        return Err("--connections and --threads must be at least 1".into());
    }
    if let Some(rate) = a.rate
        && !(rate > 0.0 && rate.is_finite())
    {
        return Err("--rate must be a positive number".into());
    }
    if a.duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    let h2 = h2::H2Template::new(
        &r.authority,
        &r.path,
        a.target.proto == Proto::Grpc,
        a.target.grpc_message_bytes,
    )?;
    // time to open the connections before the schedule starts
    let start = Instant::now() + Duration::from_millis(100 + 2 * a.connections as u64);
    let measure_start = start + a.warmup;
    let end = measure_start + a.duration;
    let plan = Arc::new(load::Plan {
        proto: a.target.proto,
        addr: r.addr,
        rate: a.rate,
        connections: a.connections,
        streams: a.streams,
        threads: a.threads.min(a.connections),
        start,
        measure_start,
        end,
        timeout: a.target.timeout,
        expect_bytes: a.target.expect_bytes,
        h1_request: h1_request(&r),
        h2,
    });

    // sample CPU times of the watched processes and of ourselves at the edges of the window
    let pids: Vec<String> = a.cpu_pids.iter().map(|p| p.to_string()).collect();
    let sampler = std::thread::spawn(move || {
        let sample = |pids: &[String]| -> Vec<Option<Duration>> {
            let mut v: Vec<_> = pids.iter().map(|p| procstat::cpu_time(p)).collect();
            v.push(procstat::cpu_time("self"));
            v
        };
        std::thread::sleep(measure_start.saturating_duration_since(Instant::now()));
        let t0 = Instant::now();
        let before = sample(&pids);
        let cpus_before = procstat::cpu_ticks();
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        let after = sample(&pids);
        let cpus_after = procstat::cpu_ticks();
        let wall = t0.elapsed();
        // whole-machine busy fraction of each CPU over the window
        let cpus: Vec<serde_json::Value> = cpus_before
            .iter()
            .zip(&cpus_after)
            .filter(|(b, a)| b.0 == a.0 && a.2 > b.2)
            .map(|(b, a)| json!({"cpu": a.0, "busy": ((a.1 - b.1) as f64 / (a.2 - b.2) as f64 * 1000.0).round() / 1000.0}))
            .collect();
        let deltas: Vec<Option<Duration>> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| Some(a.as_ref()?.saturating_sub((*b)?)))
            .collect();
        (deltas, wall, cpus)
    });

    let stats = load::run(plan.clone());
    let (deltas, wall, cpus) = sampler.join().map_err(|_| "cpu sampler thread panicked")?;

    let secs = a.duration.as_secs_f64();
    let errors = stats.error_total();
    let requests = stats.ok + errors;
    let per_req = |d: Duration| {
        if requests == 0 {
            serde_json::Value::Null
        } else {
            json!((d.as_secs_f64() * 1e6 / requests as f64 * 10.0).round() / 10.0)
        }
    };
    let cpu: Vec<_> = a
        .cpu_pids
        .iter()
        .zip(&deltas)
        .map(|(pid, d)| match d {
            Some(d) => json!({
                "pid": pid,
                "cpu_s": d.as_secs_f64(),
                "cpu_util": d.as_secs_f64() / wall.as_secs_f64(),
                "us_per_request": per_req(*d),
            }),
            None => json!({"pid": pid, "error": "process not found"}),
        })
        .collect();
    let self_cpu = deltas.last().copied().flatten().unwrap_or_default();
    let open = a.rate.is_some();
    let out = json!({
        "label": a.label,
        "proto": a.target.proto.to_string(),
        "url": a.target.url,
        "host": r.authority,
        "mode": if open { "open" } else { "closed" },
        "target_rate": a.rate,
        "connections": a.connections,
        "streams": if open || a.target.proto == Proto::H1 { 1 } else { a.streams.max(1) },
        "threads": plan.threads,
        "warmup_s": a.warmup.as_secs_f64(),
        "duration_s": secs,
        "requests": requests,
        "ok": stats.ok,
        "sent": stats.sent,
        "errors": stats.errors,
        "error_total": errors,
        "achieved_rps": (requests as f64 / secs).round(),
        "ok_rps": (stats.ok as f64 / secs).round(),
        "body_bytes": stats.body_bytes,
        "latency_us": stats::summary(&stats.latency),
        "latency_from_intended_us": if open { stats::summary(&stats.from_intended) } else { serde_json::Value::Null },
        "send_lag_us": if open { stats::summary(&stats.send_lag) } else { serde_json::Value::Null },
        "cpu": cpu,
        "loadgen_cpu_s": self_cpu.as_secs_f64(),
        "cpu_busy": cpus,
        "loadgen_us_per_request": per_req(self_cpu),
    });
    let text = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
    println!("{text}");
    if let Some(path) = &a.out {
        std::fs::write(path, format!("{text}\n"))
            .map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    Ok(())
}
