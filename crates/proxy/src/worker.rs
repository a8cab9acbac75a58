//! What every request handler on one worker thread shares.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::authz::audit::{AuditLog, Workload};
use crate::config::watch::Store;
use crate::http::pool::{Pool, UpstreamSettings};
use crate::resilience::breaker::{Breaker, Limits};
use crate::telemetry::metrics::{Direction, Metrics, RouteStats};
use crate::tls::CredentialsRx;
use crate::tls::server::ServerTls;

#[derive(Debug)]
pub struct Worker {
    pub store: Arc<Store>,
    /// This worker's upstream connections (not shared across threads).
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    /// Where inbound traffic goes: the local application.
    pub app: Option<SocketAddr>,
    /// How connections to the app are made and kept.
    pub app_upstream: UpstreamSettings,
    /// No limits on the app (yet): inbound connectionPool settings are a
    /// later feature.
    pub app_breaker: Arc<Breaker>,
    /// This worker's mirrored requests in flight.
    pub mirrors: crate::http::mirror::InFlight,
    /// Requests that never reached a route (unknown host, no match).
    pub unrouted: RouteStats,
    pub inbound: RouteStats,
    /// This workload, as audit lines name the destination.
    pub workload: Arc<Workload>,
    /// The workload port inbound traffic is for, as authorization sees it
    /// (`ports`, `destination.port`): the app's port, the one Istio
    /// policies name; the inbound listener's port when there is no app.
    pub inbound_port: u16,
    /// Where denials and AUDIT matches are logged; None when off.
    pub audit: Option<AuditLog>,
    /// The workload's certificate (`--identity-dir`); None: no mTLS.
    pub credentials: Option<CredentialsRx>,
    /// Inbound mTLS, when there are credentials.
    pub server_tls: Option<ServerTls>,
}

/// What a worker needs to know about the workload it serves.
#[derive(Debug, Clone)]
pub struct WorkloadContext {
    pub workload: Arc<Workload>,
    pub inbound_port: u16,
    pub audit: Option<AuditLog>,
}

impl Worker {
    pub fn new(
        store: Arc<Store>,
        pool: Arc<Pool>,
        metrics: Arc<Metrics>,
        app: Option<SocketAddr>,
        cx: WorkloadContext,
        credentials: Option<CredentialsRx>,
    ) -> Self {
        let unrouted = metrics.route_stats(Direction::outbound, "", "");
        let inbound_cluster = app.map_or_else(
            || "inbound|none".to_string(),
            |a| format!("inbound|{}|app", a.port()),
        );
        let inbound = metrics.route_stats(Direction::inbound, "inbound", &inbound_cluster);
        Worker {
            store,
            pool,
            metrics,
            app,
            app_upstream: UpstreamSettings::default(),
            app_breaker: Arc::new(Breaker::new(Limits::default())),
            mirrors: Default::default(),
            unrouted,
            inbound,
            workload: cx.workload,
            inbound_port: cx.inbound_port,
            audit: cx.audit,
            server_tls: credentials
                .clone()
                .map(|c| ServerTls::new(c, crate::tls::provider())),
            credentials,
        }
    }
}
