//! A cluster: one (service, port, subset) the proxy sends traffic to, with
//! its endpoints, balancer and how to talk to them.

use std::sync::Arc;

use crate::balance::{Balancer, HashKey};
use crate::http::pool::UpstreamSettings;
use crate::resilience::breaker::Breaker;
use crate::resilience::budget::SharedBudget;
use crate::resilience::outlier::OutlierSettings;
use crate::telemetry::metrics::ClusterStats;
use crate::tls::origination::ClusterTls;

/// How the proxy speaks to a cluster's endpoints: from the ServiceEntry port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 with prior knowledge (h2c), multiplexed.
    Http2,
    /// Bytes as they come.
    Opaque,
}

#[derive(Debug)]
pub struct Cluster {
    /// Istio's naming: `outbound|9080|v1|reviews.default.svc.cluster.local`.
    pub name: Arc<str>,
    pub protocol: UpstreamProtocol,
    pub balancer: Balancer,
    /// For ring-hash balancing: what in the request is hashed.
    pub hash_key: Option<HashKey>,
    /// Connecting and keeping connections (`connectionPool`).
    pub upstream: UpstreamSettings,
    /// `connectionPool` limits. Kept across reloads while they are unchanged,
    /// so in-flight requests stay counted.
    pub breaker: Arc<Breaker>,
    /// The destination's retry budget, shared by all its clusters (ports,
    /// subsets) and kept across reloads while its settings are unchanged.
    pub budget: Arc<SharedBudget>,
    /// `outlierDetection`, if the DestinationRule sets it.
    pub outlier: Option<OutlierSettings>,
    /// TLS to its endpoints (DestinationRule `tls`, or auto mTLS).
    pub tls: ClusterTls,
    pub stats: ClusterStats,
}

impl Cluster {
    pub fn name(direction: &str, port: u16, subset: Option<&str>, host: &str) -> String {
        format!("{direction}|{port}|{}|{host}", subset.unwrap_or(""))
    }
}
