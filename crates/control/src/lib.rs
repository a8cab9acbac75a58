//! `trellis control`: the control plane. The config store (resources
//! applied through the HTTP API, persisted in redb, plus a watched config
//! directory), conflict resolution, the HTTP API, workload registration
//! from xDS node metadata ([`registry`], persisted in the store), active
//! health checks ([`health`]), and the ADS server fed by
//! `trellis-translate` ([`xds::Mesh`]); [`reach`] says which proxies a
//! resource reaches.
//!
//! The store publishes every accepted change on a `tokio::sync::watch`
//! channel ([`ControlPlane::subscribe`]); [`xds::Mesh`] follows it, and
//! [`run`] serves ADS on the xDS address with it.

pub mod api;
pub mod ca_service;
pub mod envoy_certs;
pub mod health;
pub mod identity;
pub mod kind;
pub mod metrics;
pub mod reach;
pub mod registry;
mod run;
pub mod sds;
pub mod store;
pub mod watch;
pub mod xds;

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::watch as channel;

pub use run::{Addresses, Settings, StartError, default_data_dir, run};

use metrics::Metrics;
use store::{Snapshot, Store};

/// The shared state of a running control plane: the store (changes are
/// serialized by its mutex), the metrics registry, the channel of config
/// generations, the proxies' config ([`xds::Mesh`]) and the ADS server.
pub struct ControlPlane {
    store: Mutex<Store>,
    pub metrics: Arc<Metrics>,
    snapshots: channel::Receiver<Arc<Snapshot>>,
    /// Registry and per-proxy snapshots; the ADS server's source and hooks.
    pub mesh: Arc<xds::Mesh>,
    /// The CA, the trust bundle and the bootstrap-token key.
    pub identity: Arc<identity::Identity>,
    /// Set once the ADS server is built (it needs a running Tokio runtime).
    xds: OnceLock<trellis_xds::XdsServer>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("store", &self.store)
            .field("mesh", &self.mesh)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// `registration_grace`: how long a workload stays registered after its
    /// proxy's last xDS stream ended.
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        registration_grace: Duration,
        identity: Arc<identity::Identity>,
    ) -> Arc<ControlPlane> {
        let snapshots = store.subscribe();
        let mesh = xds::Mesh::new(snapshots.borrow().clone(), registration_grace);
        mesh.envoy_certs
            .set_identity(identity.clone(), metrics.clone());
        Arc::new(ControlPlane {
            store: Mutex::new(store),
            metrics,
            snapshots,
            mesh,
            identity,
            xds: OnceLock::new(),
        })
    }

    /// The ADS server, once [`run`] has started it.
    pub fn xds_server(&self) -> Option<&trellis_xds::XdsServer> {
        self.xds.get()
    }

    /// Records the ADS server (the first one wins).
    pub fn set_xds_server(&self, server: trellis_xds::XdsServer) {
        let _ = self.xds.set(server);
    }

    /// Every new effective config, starting with the current one. The xDS
    /// server subscribes here.
    pub fn subscribe(&self) -> channel::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }

    /// Run `f` with the store locked. Blocking (it may write to disk): call
    /// it from a blocking thread, not from an async task.
    pub fn with_store<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        // A panic while holding the lock cannot leave the store half-changed:
        // every change swaps in new state only after it has been committed.
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut store)
    }
}
