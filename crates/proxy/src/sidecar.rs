//! Sidecar mode: outbound and inbound listeners for one workload, plus admin
//! and the config watcher.
//!
//! Threads: `trellis-worker-N` (one single-threaded tokio runtime each, with
//! its own outbound/inbound listener sockets via SO_REUSEPORT and its own
//! upstream pool: no cross-thread hand-offs on the request path),
//! `trellis-config` (polls the config folder, compiles, swaps), and the main
//! thread (admin listener, signals, drain).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use crate::admin::{self, Admin};
use crate::authz::audit::{self, AuditLog, Workload};
use crate::balance::Locality;
use crate::config::compile::system_resolve;
use crate::config::watch::{Loader, Store};
use crate::http::pool::Pool;
use crate::http::server::{self, Side};
use crate::telemetry::logging::LogControl;
use crate::telemetry::metrics::Metrics;
use crate::worker::{Worker, WorkloadContext};

/// Idle HTTP/1.1 connections kept per endpoint and worker; more are closed
/// when they come back.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// Where the config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A folder of Istio YAML, watched.
    Dir(PathBuf),
    /// A control plane over ADS.
    Xds(XdsSettings),
}

/// `--xds` and the workload facts sent in the node metadata (docs/xds.md).
#[derive(Debug, Clone)]
pub struct XdsSettings {
    /// `host:port` of the ADS server (plaintext HTTP/2).
    pub server: String,
    pub workload: String,
    pub service_account: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// The workload's address (default: the outbound listener's IP).
    pub address: Option<std::net::IpAddr>,
    /// The bootstrap token (`--token-file`): the certificate then comes
    /// from the control plane's CA, renewed at half-life, and the trust
    /// bundle over SDS. Never logged.
    pub token: Option<Arc<str>>,
    /// The certificate lifetime to ask for (`--cert-lifetime`); None: the
    /// CA's default (24 h).
    pub cert_lifetime: Option<Duration>,
    /// Node metadata `PORTS`: service port name -> the workload's port.
    pub ports: std::collections::BTreeMap<String, u16>,
    /// Node metadata `HEALTH_CHECK`, passed through as written.
    pub health_check: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub config: ConfigSource,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub app: Option<SocketAddr>,
    pub workers: usize,
    pub namespace: String,
    /// The workload's name (`--workload`): xDS node id, audit lines.
    pub workload: Option<String>,
    /// The workload's labels: AuthorizationPolicy and PeerAuthentication
    /// selectors (and, over xDS, subsets) match on them.
    pub labels: std::collections::BTreeMap<String, String>,
    pub audit: audit::Target,
    pub locality: Locality,
    pub inbound_detect_timeout: Duration,
    pub drain_timeout: Duration,
    pub addr_file: Option<PathBuf>,
    /// The workload's certificate, key and trust roots (`cert.pem`,
    /// `key.pem`, `roots.pem`), watched; None: no mTLS.
    pub identity_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(trellis_model::ConfigErrors),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Audit(#[from] audit::AuditError),
    #[error("cannot start a thread or runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot load the workload certificate: {0}")]
    Identity(crate::tls::identity_dir::LoadError),
    #[error("cannot write the address file {path}: {source}")]
    AddrFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Bind `count` sockets on one address with SO_REUSEPORT, so each worker
/// accepts on its own and the kernel spreads connections. With port 0 the
/// first bind picks the port and the rest join it.
fn bind_shared(
    what: &'static str,
    addr: SocketAddr,
    count: usize,
) -> Result<Vec<std::net::TcpListener>, StartError> {
    let bind = |addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let domain = socket2::Domain::for_address(addr);
        let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        Ok(s.into())
    };
    let err = |addr, source| StartError::Bind { what, addr, source };
    let first = bind(addr).map_err(|e| err(addr, e))?;
    let actual = first.local_addr().map_err(|e| err(addr, e))?;
    let mut out = vec![first];
    for _ in 1..count {
        out.push(bind(actual).map_err(|e| err(actual, e))?);
    }
    Ok(out)
}

pub fn run(settings: Settings, log: Option<LogControl>) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    // The certificate comes first: a proxy told to have an identity does
    // not come up without one, and the config check needs to know.
    let credentials = match &settings.identity_dir {
        Some(dir) => {
            let provider = crate::tls::provider();
            let (creds, id) =
                crate::tls::identity_dir::initial(dir, &provider).map_err(StartError::Identity)?;
            tracing::info!(dir = %dir.display(), identity = %id, "workload certificate loaded");
            let (tx, rx) = watch::channel(Some(creds));
            let dir = dir.clone();
            std::thread::Builder::new()
                .name("trellis-identity".into())
                .spawn(move || {
                    crate::tls::identity_dir::watch(dir, provider, tx, Duration::from_millis(200))
                })
                .map_err(StartError::Runtime)?;
            Some(rx)
        }
        None => None,
    };
    // Over xDS with a bootstrap token: the certificate comes from the
    // control plane's CA. Until the first one arrives the inbound side
    // refuses mTLS (no certificate) and `/ready` says so through xDS.
    let (credentials, bundle) = match (&settings.config, credentials) {
        (ConfigSource::Xds(x), None) if x.token.is_some() => {
            let (creds_tx, creds_rx) = watch::channel(None);
            let (bundle_tx, bundle_rx) = watch::channel(None);
            let ca = crate::tls::ca_source::CaSettings {
                endpoint: format!("http://{}", x.server),
                token: x.token.clone().unwrap_or_else(|| Arc::from("")),
                lifetime: x.cert_lifetime,
            };
            let provider = crate::tls::provider();
            std::thread::Builder::new()
                .name("trellis-identity".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(crate::tls::ca_source::run(
                            ca, provider, bundle_rx, creds_tx,
                        )),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start the certificate renewer")
                        }
                    }
                })
                .map_err(StartError::Runtime)?;
            (Some(creds_rx), Some(bundle_tx))
        }
        (_, credentials) => (credentials, None),
    };
    let loader = match &settings.config {
        ConfigSource::Dir(dir) => {
            let loader = Loader {
                dir: dir.clone(),
                namespace: settings.namespace.clone(),
                labels: settings.labels.clone(),
                locality: settings.locality.clone(),
                metrics: metrics.clone(),
                resolve: Box::new(system_resolve),
                app_port: settings.app.map(|a| a.port()),
                has_certificate: credentials.is_some(),
            };
            Some(loader)
        }
        ConfigSource::Xds(_) => None,
    };
    let initial = match &loader {
        Some(loader) => {
            let initial = loader.load(None).map_err(StartError::Config)?;
            tracing::info!(
                dir = %loader.dir.display(),
                services = initial.source.services.len(),
                clusters = initial.clusters.len(),
                "config loaded"
            );
            initial
        }
        // Listeners come up at once; routes arrive over xDS (404 until
        // then, and `/ready` says 503).
        None => crate::config::ProxyConfig::default(),
    };
    let store = Arc::new(Store::new(initial));
    let workers = settings.workers.max(1);
    let outbound = bind_shared("outbound", settings.outbound, workers)?;
    let inbound = bind_shared("inbound", settings.inbound, workers)?;
    let admin_listener =
        std::net::TcpListener::bind(settings.admin).map_err(|source| StartError::Bind {
            what: "admin",
            addr: settings.admin,
            source,
        })?;
    admin_listener
        .set_nonblocking(true)
        .map_err(StartError::Runtime)?;
    let addrs = [
        (
            "outbound",
            outbound[0].local_addr().map_err(StartError::Runtime)?,
        ),
        (
            "inbound",
            inbound[0].local_addr().map_err(StartError::Runtime)?,
        ),
        (
            "admin",
            admin_listener.local_addr().map_err(StartError::Runtime)?,
        ),
    ];

    let workload = WorkloadContext {
        workload: Arc::new(Workload {
            name: settings.workload.as_deref().map(Arc::from),
            namespace: Arc::from(settings.namespace.as_str()),
        }),
        inbound_port: settings.app.map_or(addrs[1].1.port(), |a| a.port()),
        audit: AuditLog::start(
            &settings.audit,
            metrics.audit_dropped.clone(),
            metrics.audit_written.clone(),
        )?,
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    for (i, (out_l, in_l)) in outbound.into_iter().zip(inbound).enumerate() {
        let worker = Arc::new(Worker::new(
            store.clone(),
            Pool::new(MAX_IDLE_PER_ENDPOINT, credentials.clone()),
            metrics.clone(),
            settings.app,
            workload.clone(),
            credentials.clone(),
        ));
        let shutdown = shutdown_rx.clone();
        let detect_timeout = settings.inbound_detect_timeout;
        std::thread::Builder::new()
            .name(format!("trellis-worker-{i}"))
            .spawn(move || run_worker(worker, out_l, in_l, detect_timeout, shutdown))
            .map_err(StartError::Runtime)?;
    }

    let ready = Arc::new(AtomicBool::new(true));
    let xds_status = match (&settings.config, loader) {
        (_, Some(loader)) => {
            std::thread::Builder::new()
                .name("trellis-config".into())
                .spawn({
                    let store = store.clone();
                    move || {
                        crate::config::watch::run(
                            loader,
                            store,
                            Duration::from_millis(200),
                            Duration::from_secs(30),
                        )
                    }
                })
                .map_err(StartError::Runtime)?;
            None
        }
        (ConfigSource::Xds(x), None) => {
            let status = Arc::new(crate::xds::XdsStatus::default());
            let client = crate::xds::client::Client {
                server: format!("http://{}", x.server),
                node: node(&settings, x, &addrs),
                store: store.clone(),
                metrics: metrics.clone(),
                status: status.clone(),
                resolve: Box::new(system_resolve),
                bundle,
                token: x.token.clone(),
                has_certificate: credentials.is_some(),
            };
            std::thread::Builder::new()
                .name("trellis-xds".into())
                .spawn(move || crate::xds::client::run(client))
                .map_err(StartError::Runtime)?;
            std::thread::Builder::new()
                .name("trellis-outlier".into())
                .spawn({
                    let store = store.clone();
                    move || crate::xds::client::run_outlier_sweeps(store)
                })
                .map_err(StartError::Runtime)?;
            Some(status)
        }
        (ConfigSource::Dir(_), None) => unreachable!("a folder always has a loader"),
    };
    let admin = Arc::new(Admin {
        store,
        metrics: metrics.clone(),
        log,
        ready: ready.clone(),
        xds: xds_status,
        info: json!({
            "mode": "sidecar",
            "namespace": settings.namespace,
            "locality": settings.locality.to_string(),
            "workers": workers,
            "app": settings.app.map(|a| a.to_string()),
            "listeners": addrs.iter().map(|(k, v)| (k.to_string(), json!(v.to_string()))).collect::<serde_json::Map<_, _>>(),
        }),
        credentials: credentials.clone(),
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(admin_listener).map_err(StartError::Runtime)?;
        tokio::spawn(admin::serve(listener, admin));
        for (name, addr) in &addrs {
            tracing::info!(listener = name, %addr, "listening");
        }
        if let Some(path) = &settings.addr_file {
            write_addr_file(path, &addrs).map_err(|source| StartError::AddrFile { path: path.clone(), source })?;
        }
        wait_for_signal().await;
        tracing::info!(timeout = ?settings.drain_timeout, "draining: no new connections, finishing in-flight requests");
        ready.store(false, Ordering::Relaxed);
        let _ = shutdown_tx.send(true);
        let deadline = tokio::time::Instant::now() + settings.drain_timeout;
        while tokio::time::Instant::now() < deadline {
            let open: i64 = ["outbound", "inbound"].iter().map(|l| metrics.listener(l).0.get()).sum();
            if open == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!("stopped");
        Ok(())
    })
}

fn run_worker(
    worker: Arc<Worker>,
    outbound: std::net::TcpListener,
    inbound: std::net::TcpListener,
    detect_timeout: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "worker runtime failed to start");
            std::process::exit(1);
        }
    };
    rt.block_on(async move {
        let (Ok(out_l), Ok(in_l)) = (
            tokio::net::TcpListener::from_std(outbound),
            tokio::net::TcpListener::from_std(inbound),
        ) else {
            tracing::error!("worker could not register its listeners");
            std::process::exit(1);
        };
        let pool = worker.pool.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                pool.sweep();
            }
        });
        let a = tokio::spawn(server::accept_loop(
            out_l,
            Side::Outbound,
            worker.clone(),
            shutdown.clone(),
        ));
        let b = tokio::spawn(server::accept_loop(
            in_l,
            Side::Inbound { detect_timeout },
            worker,
            shutdown,
        ));
        let _ = tokio::join!(a, b);
        // Keep serving open connections until the main thread exits the process.
        std::future::pending::<()>().await;
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// Written once every listener is bound, atomically (rename), so a reader
/// never sees half a file. Tests and `trellis up` use it with port 0.
/// The xDS node: id `<name>.<namespace>` and the metadata keys of
/// docs/xds.md ("Node metadata"), with the listeners' actual ports.
fn node(
    settings: &Settings,
    x: &XdsSettings,
    addrs: &[(&str, SocketAddr)],
) -> envoy_types::pb::envoy::config::core::v3::Node {
    use envoy_types::pb::envoy::config::core::v3::{Locality as NodeLocality, Node};
    use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let n = |v: u16| Value {
        kind: Some(Kind::NumberValue(f64::from(v))),
    };
    let port = |name: &str| addrs.iter().find(|(k, _)| *k == name).map(|(_, a)| *a);
    let outbound = port("outbound").unwrap_or(settings.outbound);
    let inbound = port("inbound").unwrap_or(settings.inbound);
    let address = x.address.unwrap_or(outbound.ip());
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("NAME", s(&x.workload));
    fields.insert("NAMESPACE", s(&settings.namespace));
    fields.insert("SERVICE_ACCOUNT", s(&x.service_account));
    fields.insert(
        "LABELS",
        Value {
            kind: Some(Kind::StructValue(Struct {
                fields: x.labels.iter().map(|(k, v)| (k.clone(), s(v))).collect(),
            })),
        },
    );
    fields.insert("ADDRESS", s(&address.to_string()));
    fields.insert(
        "ADDRESSES",
        Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![s(&address.to_string())],
            })),
        },
    );
    if let Some(app) = settings.app {
        fields.insert("APP", s(&app.to_string()));
    }
    if !settings.locality.is_empty() {
        fields.insert("LOCALITY", s(&settings.locality.to_string()));
    }
    if settings.identity_dir.is_some() || x.token.is_some() {
        // The control plane gives this workload mTLS listeners and tells
        // its callers to use TLS (Istio's `security.istio.io/tlsMode`).
        fields.insert("TLS_MODE", s("istio"));
    }
    if !x.ports.is_empty() {
        fields.insert(
            "PORTS",
            Value {
                kind: Some(Kind::StructValue(Struct {
                    fields: x.ports.iter().map(|(k, p)| (k.clone(), n(*p))).collect(),
                })),
            },
        );
    }
    if let Some(hc) = &x.health_check {
        fields.insert(
            "HEALTH_CHECK",
            json_to_value(&serde_json::Value::Object(hc.clone())),
        );
    }
    fields.insert("OUTBOUND_PORT", n(outbound.port()));
    fields.insert("INBOUND_PORT", n(inbound.port()));
    let id = format!("{}.{}", x.workload, settings.namespace);
    Node {
        id: id.clone(),
        cluster: id,
        metadata: Some(Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }),
        locality: (!settings.locality.is_empty()).then(|| NodeLocality {
            region: settings.locality.region.clone(),
            zone: settings.locality.zone.clone(),
            sub_zone: settings.locality.subzone.clone(),
        }),
        user_agent_name: "trellis-proxy".to_string(),
        ..Default::default()
    }
}

/// JSON as a protobuf `Value`, for metadata given as JSON (`--health-check`).
fn json_to_value(v: &serde_json::Value) -> envoy_types::pb::google::protobuf::Value {
    use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(m) => Kind::StructValue(Struct {
            fields: m
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

fn write_addr_file(path: &std::path::Path, addrs: &[(&str, SocketAddr)]) -> std::io::Result<()> {
    let map: serde_json::Map<String, serde_json::Value> = addrs
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_string())))
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&map)?)?;
    std::fs::rename(tmp, path)
}
