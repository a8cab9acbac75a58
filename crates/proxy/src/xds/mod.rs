//! trellis-proxy as an xDS client: its config from a control plane over ADS
//! (state of the world) instead of a folder of YAML.
//!
//! - `convert`: Envoy resources -> the proxy's config (pure, table-tested);
//!   what the proxy does not implement is an error that becomes a NACK.
//! - `rbac`: the inbound listener's RBAC filters -> AuthorizationPolicy
//!   decisions' data (`authz::Policies`), NACKing what it cannot express.
//! - `client`: the ADS stream: subscriptions, ACK/NACK, applying a
//!   consistent set atomically, reconnecting with jittered backoff while the
//!   last good config keeps serving.
//!
//! See docs/xds.md, "trellis-proxy as an xDS client".

pub mod client;
pub mod convert;
pub mod rbac;
pub mod tls;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Short name of a type URL, for logs, metrics and `/config_dump`.
pub fn kind(type_url: &str) -> &'static str {
    match type_url {
        LISTENER_TYPE => "listener",
        ROUTE_TYPE => "route",
        CLUSTER_TYPE => "cluster",
        ENDPOINT_TYPE => "endpoint",
        SECRET_TYPE => "secret",
        _ => "unknown",
    }
}

/// What `/config_dump` shows of the xDS client.
#[derive(Debug, Default)]
pub struct XdsStatus(Mutex<StatusInner>);

#[derive(Debug, Default, Clone, Serialize)]
pub struct StatusInner {
    pub server: String,
    pub connected: bool,
    /// Per type (`listener`, `route`, `cluster`, `endpoint`).
    pub types: BTreeMap<&'static str, TypeStatus>,
    /// Generation of the last config applied from xDS (0: none yet).
    pub applied_generation: u64,
    /// Resources a listener or cluster needs that have not arrived.
    pub waiting_for: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct TypeStatus {
    pub version_acked: String,
    pub resources: usize,
    pub subscribed: Vec<String>,
    pub last_nack: Option<Nack>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Nack {
    pub version: String,
    pub message: String,
    pub at_unix_secs: u64,
}

impl XdsStatus {
    pub fn update(&self, f: impl FnOnce(&mut StatusInner)) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g);
    }

    pub fn snapshot(&self) -> StatusInner {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
