//! Starting and stopping `trellis control`: the data directory, the store,
//! the registry restored from it and the writer that keeps it there, the
//! listeners, the config-directory watcher, signals.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use trellis_model::ConfigErrors;

use crate::ControlPlane;
use crate::identity::{Identity, IdentityError, IdentitySettings};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// The database file inside the data directory.
pub const DB_FILE: &str = "store.redb";

/// How long registry changes gather before they are written to the store
/// (one transaction, one fsync): a connect storm of 10,000 proxies is a few
/// writes, not 10,000, and the hooks never wait for the disk.
pub const SAVE_REGISTRATIONS_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct Settings {
    /// Holds the store (0700; the database file is 0600).
    pub data_dir: PathBuf,
    /// A folder of YAML watched for changes; its resources join the API's.
    pub config_dir: Option<PathBuf>,
    /// The xDS (ADS over gRPC, plaintext) listener.
    pub xds: SocketAddr,
    /// The HTTP API, `/healthz` and `/metrics`.
    pub api: SocketAddr,
    /// Where to write the bound addresses as JSON once listening.
    pub addr_file: Option<PathBuf>,
    /// How often the config directory is polled.
    pub poll: Duration,
    /// How long a workload stays registered after its proxy disconnected.
    pub registration_grace: Duration,
    /// Shortest time between two pushes of new config to one proxy...
    pub min_push_interval: Duration,
    /// ...or this much per connected proxy, if longer.
    pub push_interval_per_stream: Duration,
    /// The trust domain and where the CA comes from.
    pub identity: IdentitySettings,
}

/// The per-user state directory: `$XDG_STATE_HOME/trellis`, else
/// `~/.local/state/trellis`. The caller passes the environment's values.
pub fn default_data_dir(xdg_state_home: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
    match (
        xdg_state_home.filter(|s| !s.is_empty()),
        home.filter(|s| !s.is_empty()),
    ) {
        (Some(x), _) => Some(Path::new(x).join("trellis")),
        (None, Some(h)) => Some(Path::new(h).join(".local/state/trellis")),
        (None, None) => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{summary}\n{errors}")]
    Config {
        summary: String,
        errors: ConfigErrors,
    },
    #[error(transparent)]
    Store(StoreError),
    #[error("cannot listen on {addr} for the {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the address file {}: {source}", path.display())]
    AddrFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl From<StoreError> for StartError {
    fn from(e: StoreError) -> StartError {
        match e {
            StoreError::Invalid { summary, errors } => StartError::Config { summary, errors },
            e => StartError::Store(e),
        }
    }
}

/// The addresses actually bound (port 0 resolved).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Addresses {
    pub api: SocketAddr,
    pub xds: SocketAddr,
}

/// Run until SIGINT or SIGTERM.
pub fn run(settings: Settings) -> Result<(), StartError> {
    create_private_dir(&settings.data_dir)?;
    let files = match &settings.config_dir {
        Some(dir) => {
            Some(
                trellis_model::load_dir_raw(dir).map_err(|errors| StartError::Config {
                    summary: format!("the config directory {} is not valid", dir.display()),
                    errors,
                })?,
            )
        }
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let store = Store::open(&settings.data_dir.join(DB_FILE), files, metrics.clone())?;
    let generation = store.snapshot().generation;
    // Not fatal: the registry then fills from reconnects, as before.
    let stored_registrations = store.registrations().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the stored registrations; the registry starts empty");
        Vec::new()
    });
    let started = std::time::Instant::now();
    let identity = Arc::new(Identity::open(
        &settings.data_dir,
        &settings.identity,
        std::time::SystemTime::now(),
    )?);
    tracing::debug!(elapsed = ?started.elapsed(), "identity loaded");
    let plane = ControlPlane::new(
        store,
        metrics,
        settings.registration_grace,
        identity.clone(),
    );

    let bind = |what, addr| listen(addr).map_err(|source| StartError::Bind { what, addr, source });
    let api_listener = bind("HTTP API", settings.api)?;
    let xds_listener = bind("xDS server", settings.xds)?;
    let local = |l: &std::net::TcpListener, what, addr| {
        l.local_addr()
            .map_err(|source| StartError::Bind { what, addr, source })
    };
    let addrs = Addresses {
        api: local(&api_listener, "HTTP API", settings.api)?,
        xds: local(&xds_listener, "xDS server", settings.xds)?,
    };

    let stop = Arc::new(AtomicBool::new(false));
    if let Some(dir) = settings.config_dir.clone() {
        let (plane, stop, poll) = (plane.clone(), stop.clone(), settings.poll);
        std::thread::Builder::new()
            .name("trellis-config-watch".into())
            .spawn(move || crate::watch::run(dir, plane, poll, stop))
            .map_err(StartError::Runtime)?;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("trellis-control")
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let result = rt.block_on(async {
        let api = tokio::net::TcpListener::from_std(api_listener).map_err(StartError::Runtime)?;
        let xds = tokio::net::TcpListener::from_std(xds_listener).map_err(StartError::Runtime)?;
        let (shutdown_tx, mut shutdown_rx) = tokio::sync::watch::channel(false);
        let router = crate::api::router(plane.clone());
        let server = tokio::spawn(async move {
            axum::serve(api, router)
                .with_graceful_shutdown(async move {
                    let _ = shutdown_rx.wait_for(|s| *s).await;
                })
                .await
        });
        tokio::spawn(plane.mesh.clone().follow_store(plane.subscribe()));
        tokio::spawn(crate::sds::follow_bundle(
            plane.mesh.clone(),
            identity.bundle(),
        ));
        // Before the first stream: whoever reconnects first already gets
        // every workload's endpoints.
        let restored = plane.mesh.restore(stored_registrations);
        if restored > 0 {
            tracing::info!(
                workloads = restored,
                grace = ?settings.registration_grace,
                "registry restored from the store; each leaves after the grace unless its proxy reconnects"
            );
        }
        let (saver_stop, saver_stopped) = tokio::sync::watch::channel(false);
        let saver = tokio::spawn(save_registrations(plane.clone(), saver_stopped));
        let xds_server = trellis_xds::XdsServer::builder(plane.mesh.clone())
            .options(trellis_xds::XdsOptions {
                min_push_interval: settings.min_push_interval,
                push_interval_per_stream: settings.push_interval_per_stream,
                ..trellis_xds::XdsOptions::default()
            })
            .hooks(plane.mesh.clone())
            .metrics(plane.metrics.xds.clone())
            .build();
        plane.set_xds_server(xds_server.clone());
        let ca_service = crate::ca_service::CaService::new(identity, plane.metrics.clone());
        let mut xds_shutdown = shutdown_tx.subscribe();
        let xds_task = tokio::spawn(async move {
            let stop = async move {
                let _ = xds_shutdown.wait_for(|s| *s).await;
            };
            if let Err(e) = xds_server.serve_with(xds, ca_service, stop).await {
                tracing::error!(error = %e, "the xDS server stopped");
            }
        });
        tracing::info!(
            data_dir = %settings.data_dir.display(),
            config_dir = settings.config_dir.as_ref().map(|d| d.display().to_string()),
            generation,
            "store open"
        );
        tracing::info!(listener = "api", addr = %addrs.api, "listening");
        tracing::info!(listener = "xds", addr = %addrs.xds, "listening");
        if let Some(path) = &settings.addr_file {
            write_addr_file(path, &addrs).map_err(|source| StartError::AddrFile {
                path: path.clone(),
                source,
            })?;
        }
        wait_for_signal().await;
        tracing::info!("stopping");
        let _ = shutdown_tx.send(true);
        // In-flight API requests get a moment to finish; a store change in
        // progress completes (or not) atomically either way.
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        // ADS streams are ended by the server's shutdown; proxies keep their
        // config and reconnect to the next control plane.
        let _ = tokio::time::timeout(Duration::from_secs(1), xds_task).await;
        // Whatever the registry changed last is written before exiting.
        let _ = saver_stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), saver).await;
        Ok(())
    });
    stop.store(true, Ordering::Relaxed);
    rt.shutdown_timeout(Duration::from_secs(1));
    tracing::info!("stopped");
    result
}

/// Writes registry changes to the store until `stop`, then once more: after
/// the first change it waits [`SAVE_REGISTRATIONS_EVERY`] for more, then
/// writes everything that changed in one transaction (coalesced per node).
/// A failed write is retried with the next one, a second later.
async fn save_registrations(
    plane: Arc<ControlPlane>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let mut stopping = tokio::select! {
            () = plane.mesh.unsaved_registrations() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if !stopping {
            stopping = tokio::select! {
                () = tokio::time::sleep(SAVE_REGISTRATIONS_EVERY) => false,
                _ = stop.wait_for(|s| *s) => true,
            };
        }
        let changes = plane.mesh.take_unsaved_registrations();
        if !changes.is_empty() {
            let p = plane.clone();
            let saved = tokio::task::spawn_blocking(move || {
                let r = p.with_store(|s| s.save_registrations(&changes));
                (changes, r)
            })
            .await;
            match saved {
                Ok((changes, Ok(()))) => {
                    tracing::debug!(registrations = changes.len(), "registry saved");
                }
                Ok((changes, Err(e))) => {
                    tracing::warn!(error = %e, registrations = changes.len(), "cannot save the registry; retrying");
                    plane
                        .mesh
                        .retry_unsaved_registrations(changes.into_iter().map(|(id, _)| id));
                    if !stopping {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the registry save task failed"),
            }
        }
        if stopping {
            return;
        }
    }
}

/// Create `dir` (and missing parents) readable by its owner only, and make
/// sure an existing one is too: it holds the store (and later the CA keys).
fn create_private_dir(dir: &Path) -> Result<(), StartError> {
    let err = |source| StartError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode() & 0o777;
    if mode != 0o700 {
        tracing::info!(dir = %dir.display(), mode = format!("{mode:o}"), "data directory made private (0700)");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// Written once every listener is bound, atomically (rename).
fn write_addr_file(path: &Path, addrs: &Addresses) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(addrs)?)?;
    std::fs::rename(tmp, path)
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

/// How many connections may wait to be accepted. std's `bind` asks for 128:
/// 10,000 proxies reconnecting at once (a control-plane restart) would
/// overflow it and see resets. The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::default_data_dir;
    use std::path::PathBuf;

    #[test]
    fn data_dir_follows_xdg() {
        let cases = [
            (Some("/x/state"), Some("/home/u"), Some("/x/state/trellis")),
            (
                Some(""),
                Some("/home/u"),
                Some("/home/u/.local/state/trellis"),
            ),
            (None, Some("/home/u"), Some("/home/u/.local/state/trellis")),
            (None, None, None),
        ];
        for (xdg, home, want) in cases {
            assert_eq!(default_data_dir(xdg, home), want.map(PathBuf::from));
        }
    }
}
