//! `trellis control`: the control plane. Today: the config store (resources
//! applied through the HTTP API, persisted in redb, plus a watched config
//! directory), conflict resolution, and the HTTP API. Next (issue 4): the
//! registry, health checking, translation and the xDS server.
//!
//! The seam for the xDS server: [`ControlPlane::subscribe`] gives a
//! `tokio::sync::watch` receiver of [`store::Snapshot`]s — every accepted
//! change publishes a new generation of the effective, validated config —
//! and [`run`] already binds the xDS address and hands its listener to
//! [`serve_xds`], which is where the ADS server plugs in.

pub mod api;
pub mod kind;
pub mod metrics;
mod run;
pub mod store;
pub mod watch;

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch as channel;

pub use run::{Addresses, Settings, StartError, default_data_dir, run, serve_xds};

use metrics::Metrics;
use store::{Snapshot, Store};

/// The shared state of a running control plane: the store (changes are
/// serialized by its mutex), the metrics registry, and the channel of config
/// generations.
#[derive(Debug)]
pub struct ControlPlane {
    store: Mutex<Store>,
    pub metrics: Arc<Metrics>,
    snapshots: channel::Receiver<Arc<Snapshot>>,
}

impl ControlPlane {
    pub fn new(store: Store, metrics: Arc<Metrics>) -> Arc<ControlPlane> {
        let snapshots = store.subscribe();
        Arc::new(ControlPlane {
            store: Mutex::new(store),
            metrics,
            snapshots,
        })
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
