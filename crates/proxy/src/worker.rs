//! What every request handler on one worker thread shares.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::watch::Store;
use crate::http::pool::Pool;
use crate::telemetry::metrics::{Direction, Metrics, RouteStats};

#[derive(Debug)]
pub struct Worker {
    pub store: Arc<Store>,
    /// This worker's upstream connections (not shared across threads).
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    /// Where inbound traffic goes: the local application.
    pub app: Option<SocketAddr>,
    /// Requests that never reached a route (unknown host, no match).
    pub unrouted: RouteStats,
    pub inbound: RouteStats,
}

impl Worker {
    pub fn new(
        store: Arc<Store>,
        pool: Arc<Pool>,
        metrics: Arc<Metrics>,
        app: Option<SocketAddr>,
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
            unrouted,
            inbound,
        }
    }
}
