//! `trellis-proxy`: the data-plane binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use trellis_proxy::balance::Locality;
use trellis_proxy::sidecar::{self, ConfigSource, Settings, StartError, XdsSettings};
use trellis_proxy::telemetry::logging;

#[derive(Parser, Debug)]
#[command(name = "trellis-proxy", version, about = "Trellis data-plane proxy")]
struct Cli {
    /// Log filter: error, warn, info, debug, trace, or per-module directives.
    #[arg(long, default_value = "info", global = true, env = "TRELLIS_LOG")]
    log_level: String,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Per-workload proxy: outbound (app -> services) and inbound (peers -> app).
    Sidecar(SidecarArgs),
}

#[derive(clap::Args, Debug)]
// Exactly one config source: a folder or a control plane.
#[command(group(clap::ArgGroup::new("source").required(true).args(["config_dir", "xds"])))]
struct SidecarArgs {
    /// Folder of Istio YAML (ServiceEntry, DestinationRule, VirtualService), watched for changes.
    #[arg(long)]
    config_dir: Option<PathBuf>,
    /// Get config from a control plane over xDS (ADS, plaintext HTTP/2) at
    /// HOST:PORT instead of a folder, e.g. 127.0.0.1:15010.
    #[arg(long, value_name = "HOST:PORT")]
    xds: Option<String>,
    /// This workload's name: the xDS node is NAME.NAMESPACE (required with
    /// --xds); audit log lines name it as the destination.
    #[arg(long)]
    workload: Option<String>,
    /// The workload's labels, k=v,k2=v2: AuthorizationPolicy and
    /// PeerAuthentication selectors match them (and, with --xds, subsets
    /// select on them).
    #[arg(long, value_parser = parse_labels)]
    labels: Option<std::collections::BTreeMap<String, String>>,
    /// With --xds: the workload's address peers reach it on (default: the
    /// outbound listener's IP).
    #[arg(long)]
    address: Option<std::net::IpAddr>,
    /// With --xds: the workload's service account [default: default].
    #[arg(long)]
    service_account: Option<String>,
    /// Outbound listener: apps send requests here (Host routing, or as http_proxy).
    #[arg(long, default_value = "127.0.0.1:15001")]
    outbound: SocketAddr,
    /// Inbound listener: peers' traffic for the local app.
    #[arg(long, default_value = "127.0.0.1:15006")]
    inbound: SocketAddr,
    /// The local application inbound traffic is forwarded to.
    #[arg(long)]
    app: Option<SocketAddr>,
    /// Admin listener (/ready, /stats/prometheus, /config_dump, /logging).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Worker threads, each with its own listeners and connection pool.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Namespace of this workload: short host names resolve in it.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Locality of this workload, `region/zone/subzone`, for locality-aware balancing.
    #[arg(long, default_value = "")]
    locality: String,
    /// How long inbound waits for a client's first bytes before treating the
    /// connection as a server-first protocol (opaque TCP), e.g. 100ms.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    inbound_detect_timeout: Duration,
    /// On SIGTERM/SIGINT, how long to let in-flight requests finish.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Audit log of denied requests/connections and AUDIT matches, one JSON
    /// line each: `-` for stdout, `off`, or a file path (rotated by size).
    #[arg(long, default_value = "-", value_name = "PATH|-|off")]
    audit_log: String,
    /// With --audit-log PATH: rotate the file when it would pass this size.
    #[arg(long, default_value_t = 10 << 20, value_name = "BYTES")]
    audit_log_max_bytes: u64,
    /// With --audit-log PATH: files kept in all, the live one included.
    #[arg(long, default_value_t = 5, value_name = "N")]
    audit_log_max_files: usize,
    /// Write the bound listener addresses here as JSON once listening (useful with port 0).
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Directory with this workload's certificate chain (cert.pem), key
    /// (key.pem) and trust roots (roots.pem), watched for rotation. With it,
    /// inbound requires mTLS unless a PeerAuthentication says otherwise,
    /// and outbound originates mTLS to meshed destinations.
    #[arg(long, value_name = "DIR")]
    identity_dir: Option<PathBuf>,
    /// With --xds: a file holding the bootstrap token (`trellis token
    /// create`). The proxy then makes its own key, gets its certificate from
    /// the control plane's CA (renewed at half-life) and the trust bundle
    /// over SDS. Keep the file 0600; the token is never logged.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// With --xds: the workload's ports by service port name, http=15006,grpc=9090
    /// (node metadata PORTS: where a ServiceEntry's workloadSelector sends
    /// callers; `trellis up` names its sidecar's inbound port here).
    #[arg(long, value_parser = parse_ports)]
    ports: Option<std::collections::BTreeMap<String, u16>>,
    /// With --xds: ask the control plane to probe this workload (node
    /// metadata HEALTH_CHECK, docs/xds.md), as JSON, e.g.
    /// '{"http_path":"/healthz","port":9090,"interval":"2s"}'.
    #[arg(long, value_parser = parse_health_check, value_name = "JSON")]
    health_check: Option<serde_json::Map<String, serde_json::Value>>,
    /// With --token-file: the certificate lifetime to ask for, e.g. 1h
    /// [default: the CA's, 24h].
    #[arg(long, value_parser = parse_duration)]
    cert_lifetime: Option<Duration>,
}

/// The bootstrap token from its file: one line, whitespace trimmed. The
/// error names the file, never its content.
fn read_token(path: &std::path::Path) -> Result<std::sync::Arc<str>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the bootstrap token file {}: {e}",
            path.display()
        )
    })?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(format!(
            "{}: expected one bootstrap token (from `trellis token create`) on one line",
            path.display()
        ));
    }
    Ok(std::sync::Arc::from(token))
}

fn parse_labels(s: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("label {kv:?} must be key=value")),
        })
        .collect()
}

fn parse_ports(s: &str) -> Result<std::collections::BTreeMap<String, u16>, String> {
    s.split(',')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("{kv:?} is not name=port"))?;
            let port: u16 = v
                .parse()
                .map_err(|_| format!("{v:?} (port of {k}) is not a port number"))?;
            Ok((k.to_string(), port))
        })
        .collect()
}

/// Only the shape is checked here; the control plane checks the keys and
/// says what is wrong on `GET /api/v1/proxies`.
fn parse_health_check(s: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str(s) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err("expected a JSON object, e.g. {\"tcp\":true,\"port\":9090}".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    trellis_model::duration::parse(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = match logging::init(&cli.log_level, cli.log_json) {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("trellis-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.mode {
        Mode::Sidecar(a) => {
            let xds_only = a.address.is_some()
                || a.service_account.is_some()
                || a.token_file.is_some()
                || a.cert_lifetime.is_some()
                || a.ports.is_some()
                || a.health_check.is_some();
            let config = match (a.config_dir, a.xds) {
                (Some(_), None) if xds_only => {
                    eprintln!(
                        "trellis-proxy: --address, --service-account, --ports, --health-check, --token-file and --cert-lifetime concern a control plane: use them with --xds HOST:PORT"
                    );
                    return ExitCode::from(2);
                }
                (Some(dir), None) => ConfigSource::Dir(dir),
                (None, Some(server)) => {
                    let Some(workload) = a.workload.clone() else {
                        eprintln!("trellis-proxy: --xds needs --workload NAME");
                        return ExitCode::from(2);
                    };
                    if a.identity_dir.is_some() && a.token_file.is_some() {
                        eprintln!(
                            "trellis-proxy: give --identity-dir (certificate files) or --token-file (a certificate from the control plane's CA), not both"
                        );
                        return ExitCode::from(2);
                    }
                    let token = match &a.token_file {
                        Some(path) => match read_token(path) {
                            Ok(t) => Some(t),
                            Err(e) => {
                                eprintln!("trellis-proxy: {e}");
                                return ExitCode::from(2);
                            }
                        },
                        None => None,
                    };
                    ConfigSource::Xds(XdsSettings {
                        server,
                        workload,
                        service_account: a.service_account.unwrap_or_else(|| "default".to_string()),
                        labels: a.labels.clone().unwrap_or_default(),
                        address: a.address,
                        token,
                        cert_lifetime: a.cert_lifetime,
                        ports: a.ports.clone().unwrap_or_default(),
                        health_check: a.health_check.clone(),
                    })
                }
                _ => {
                    eprintln!(
                        "trellis-proxy: give either --config-dir DIR or --xds HOST:PORT, not both"
                    );
                    return ExitCode::from(2);
                }
            };
            let settings = Settings {
                config,
                outbound: a.outbound,
                inbound: a.inbound,
                admin: a.admin,
                app: a.app,
                workers: a.workers,
                namespace: a.namespace,
                workload: a.workload,
                labels: a.labels.unwrap_or_default(),
                audit: trellis_proxy::authz::audit::Target::parse(
                    &a.audit_log,
                    a.audit_log_max_bytes,
                    a.audit_log_max_files,
                ),
                locality: Locality::parse(&a.locality),
                inbound_detect_timeout: a.inbound_detect_timeout,
                drain_timeout: a.drain_timeout,
                addr_file: a.addr_file,
                identity_dir: a.identity_dir,
            };
            match sidecar::run(settings, log) {
                Ok(()) => ExitCode::SUCCESS,
                Err(StartError::Config(errors)) => {
                    eprintln!("trellis-proxy: cannot start: {errors}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("trellis-proxy: cannot start: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
