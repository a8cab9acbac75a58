//! The proxy's effective config: an immutable snapshot, swapped atomically on
//! reload. In-flight requests keep the snapshot they started with; new
//! requests (even on old connections) see the new one.

pub mod compile;
pub mod policy;
pub mod tls;
pub mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;
use trellis_model::peer_authentication::Effective;
use trellis_model::validate::Validated;

use crate::cluster::Cluster;
use crate::resilience::budget::SharedBudget;
use crate::resilience::rate_limit::SharedBucket;
use crate::route::RouteTable;

#[derive(Debug, Default)]
pub struct ProxyConfig {
    /// Increments with each accepted reload; shown in `/config_dump`.
    pub generation: u64,
    pub outbound: RouteTable,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// Retry budgets by destination host (kept across reloads).
    pub budgets: BTreeMap<String, Arc<SharedBudget>>,
    /// Rate-limit token buckets by `policy|route|settings` (kept across
    /// reloads while the settings are unchanged).
    pub rate_limits: BTreeMap<String, Arc<SharedBucket>>,
    /// The AuthorizationPolicies that apply to this workload, enforced on
    /// inbound traffic.
    pub authz: crate::authz::Policies,
    /// The validated resources this snapshot was compiled from.
    pub source: Validated,
    /// The PeerAuthentication mode for this workload's inbound port (Unset
    /// when none applies; the listener then defaults by whether the proxy
    /// has a certificate, see `tls::mode`).
    pub peer_auth: Effective,
}

impl ProxyConfig {
    /// The effective config as JSON for `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        let now = std::time::Instant::now();
        let clusters: Vec<_> = self
            .clusters
            .values()
            .map(|c| {
                let endpoints: Vec<_> = c
                    .balancer
                    .endpoints()
                    .iter()
                    .map(|e| {
                        json!({
                            "address": e.addr.to_string(),
                            "weight": e.weight,
                            "locality": e.locality.to_string(),
                            "labels": e.labels,
                            "healthy": e.is_healthy(),
                            "ejected": e.is_ejected(),
                            "times_ejected": e.outlier().times_ejected(),
                            "ejected_for_ms": e.outlier().ejected_until()
                                .map(|t| t.saturating_duration_since(now).as_millis()),
                            "active_requests": e.active(),
                            "latency_estimate_ms": e.latency_estimate(now).as_secs_f64() * 1e3,
                        })
                    })
                    .collect();
                let limits = c.breaker.limits();
                let limit = |v: u32| (v != u32::MAX).then_some(v);
                let budget = c.budget.snapshot(now);
                let budget_settings = c.budget.settings();
                json!({
                    "name": &*c.name,
                    "protocol": c.protocol,
                    "load_balancer": format!("{:?}", c.balancer.policy()),
                    "upstream": c.upstream,
                    "circuit_breaker": {
                        "max_connections": limit(limits.max_connections),
                        "max_pending_requests": limit(limits.max_pending),
                        "max_requests": limit(limits.max_requests),
                        "max_retries": limit(limits.max_retries),
                        "in_use": c.breaker.counts(),
                    },
                    "retry_budget": {
                        "retry_ratio": budget_settings.ratio,
                        "min_retries_per_second": budget_settings.min_per_sec,
                        "ttl_ms": budget_settings.ttl.as_millis(),
                        "window": budget,
                    },
                    "outlier_detection": c.outlier.map(|o| json!({
                        "consecutive_5xx": o.consecutive_5xx,
                        "consecutive_gateway_errors": o.consecutive_gateway,
                        "interval_ms": o.interval.as_millis(),
                        "base_ejection_time_ms": o.base_ejection_time.as_millis(),
                        "max_ejection_percent": o.max_ejection_percent,
                        "min_health_percent": o.min_health_percent,
                    })),
                    "tls": c.tls.describe(),
                    "endpoints": endpoints,
                })
            })
            .collect();
        let mut hosts: Vec<_> = self
            .outbound
            .hosts()
            .map(|(name, vh)| {
                let ports: Vec<_> = vh.ports.iter().map(|(p, _)| p).collect();
                json!({"name": name, "virtual_host": vh.name, "ports": ports, "any_port": vh.any_port.is_some()})
            })
            .collect();
        hosts.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        let names = |ps: &[crate::authz::policy::Policy]| -> Vec<String> {
            ps.iter().map(|p| p.name.to_string()).collect()
        };
        json!({
            "generation": self.generation,
            "authorization": {
                "deny": names(&self.authz.deny),
                "allow": names(&self.authz.allow),
                "audit": names(&self.authz.audit),
            },
            "resources": {
                "authorization_policies": self.source.authorization_policies,
                "services": self.source.services,
                "destination_rules": self.source.destination_rules.values().collect::<Vec<_>>(),
                "virtual_services": self.source.virtual_services.iter().map(|(_, vs)| vs).collect::<Vec<_>>(),
            },
            "peer_authentication": {
                "mode": self.peer_auth.mode.name(),
                "from": self.peer_auth.from,
            },
            "outbound_hosts": hosts,
            "clusters": clusters,
        })
    }
}
