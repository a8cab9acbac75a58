//! One simulated proxy: its own TCP connection and gRPC ADS stream (state
//! of the world), subscribing as Envoy does (CDS and LDS wildcard, then EDS
//! for the EDS clusters and RDS for the routes the listeners name),
//! decoding every resource of every response into its typed message and
//! ACKing it. What it observes goes to [`Shared`]: when it first held a
//! full config, when it held every base endpoint, the marker route's weight
//! and when it changed, and which churn workloads it sees.
//!
//! Per proxy it keeps versions, nonces, a count of endpoints per service
//! and the churn addresses it sees: a few KB, never the decoded resources.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster::ClusterDiscoveryType};
use envoy_types::pb::envoy::config::core::v3::{Node, address, socket_address::PortSpecifier};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, route, route_action::ClusterSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use hdrhistogram::Histogram;
use prost::Message;
use tokio::sync::{mpsc, watch};

use crate::mesh::{CHURN_NET, Identity, MARKER_SERVICE, Mesh};

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// What every proxy task shares.
pub struct Shared {
    pub mesh: Mesh,
    pub uri: String,
    pub epoch: Instant,
    /// One per base proxy.
    pub recs: Vec<Rec>,
    /// Per namespace: the base endpoints a proxy there must hold to count
    /// as converged (those of the namespaces it sees).
    expected_by_ns: Vec<u64>,
    /// Per namespace: the base proxies that see a workload joining there.
    observers_by_ns: Vec<u32>,
    pub marker_domain: String,
    pub stats: Stats,
    pub churn: Mutex<ChurnAgg>,
    /// The EDS subscription, shared by the proxies that have the same one.
    eds_names: Mutex<HashMap<u64, Arc<Vec<String>>>>,
}

/// What one base proxy observed; times in ns since `epoch`, 0 = not yet.
#[derive(Default)]
pub struct Rec {
    pub full_at: AtomicU64,
    pub converged_at: AtomicU64,
    pub marker: AtomicI64,
    pub marker_at: AtomicU64,
    pub connected: AtomicBool,
}

#[derive(Default)]
pub struct Stats {
    pub responses: AtomicU64,
    pub resources: AtomicU64,
    pub bytes: AtomicU64,
    /// Resource bytes per type: CDS, LDS, RDS, EDS.
    pub bytes_by_type: [AtomicU64; 4],
    pub connect_errors: AtomicU64,
    pub stream_errors: AtomicU64,
    pub decode_errors: AtomicU64,
    /// The first errors' messages, and how often each came.
    pub errors: Mutex<HashMap<String, u64>>,
}

impl Stats {
    fn error(&self, what: &str, e: &dyn std::fmt::Display) {
        let mut m = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        let key = format!("{what}: {e}");
        if m.len() < 20 || m.contains_key(&key) {
            *m.entry(key).or_default() += 1;
        }
    }
}

/// Churn workloads as the observers see them.
pub struct ChurnAgg {
    /// Added to a leave's time: the control plane's registration grace.
    pub grace_ns: u64,
    pub events: HashMap<u32, ChurnEvent>,
    /// Per (event, observer): µs from the join (leave) to the observer's ACK
    /// of an EDS response with (without) the endpoint.
    pub join: Histogram<u64>,
    pub leave: Histogram<u64>,
}

#[derive(Default, Debug, Clone)]
pub struct ChurnEvent {
    pub joined: Option<u64>,
    pub left: Option<u64>,
    pub join_seen: u32,
    pub join_last: u64,
    pub leave_seen: u32,
    /// The base proxies that see this workload (its namespace is visible
    /// to them).
    pub observers: u32,
    pub leave_last: u64,
}

impl Shared {
    pub fn new(mesh: Mesh, xds: &str, proxies: usize, grace: Duration) -> Shared {
        let hist = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        Shared {
            mesh,
            uri: format!("http://{xds}"),
            epoch: Instant::now(),
            recs: (0..proxies).map(|_| Rec::default()).collect(),
            expected_by_ns: (0..mesh.namespaces)
                .map(|v| {
                    (0..proxies)
                        .filter(|&i| {
                            mesh.sees_ns(v, mesh.ns_index(Identity::base(&mesh, i).service))
                        })
                        .count() as u64
                })
                .collect(),
            observers_by_ns: (0..mesh.namespaces)
                .map(|t| {
                    (0..proxies)
                        .filter(|&i| {
                            mesh.sees_ns(mesh.ns_index(Identity::base(&mesh, i).service), t)
                        })
                        .count() as u32
                })
                .collect(),
            marker_domain: format!("{}:80", mesh.fqdn(MARKER_SERVICE)),
            stats: Stats::default(),
            churn: Mutex::new(ChurnAgg {
                grace_ns: grace.as_nanos() as u64,
                events: HashMap::new(),
                join: hist(),
                leave: hist(),
            }),
            eds_names: Mutex::new(HashMap::new()),
        }
    }

    /// ns since `epoch`, at least 1.
    pub fn now(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    fn intern_eds(&self, names: Vec<String>) -> Arc<Vec<String>> {
        let mut h = 0xcbf29ce484222325u64;
        for n in &names {
            for b in n.bytes().chain([0]) {
                h = (h ^ b as u64).wrapping_mul(0x100000001b3);
            }
        }
        let mut m = self.eds_names.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(&h) {
            Some(a) if **a == names => a.clone(),
            _ => {
                let a = Arc::new(names);
                m.insert(h, a.clone());
                a
            }
        }
    }
}

/// A base proxy (index into `recs`) or a churn workload.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    Base(usize),
    Churn(usize),
}

#[derive(Default)]
struct TypeState {
    version: String,
    nonce: String,
    /// A response was ACKed since the subscription last changed.
    acked: bool,
}

struct Proxy {
    sh: Arc<Shared>,
    role: Role,
    node: Option<Node>,
    cds: TypeState,
    lds: TypeState,
    rds: TypeState,
    eds: TypeState,
    eds_names: Arc<Vec<String>>,
    rds_names: Vec<String>,
    /// Base endpoints per service (whole-service clusters only).
    per_service: Box<[u16]>,
    endpoints: u64,
    /// Churn endpoints held, sorted.
    churn: Vec<u32>,
    /// Churn endpoints per service, as the last assignment of each said.
    churn_by_service: std::collections::HashMap<usize, Vec<u32>>,
    marker: i64,
    /// Base endpoints this proxy must hold to count as converged.
    expected: u64,
}

impl Proxy {
    fn rec(&self) -> Option<&Rec> {
        match self.role {
            Role::Base(i) => self.sh.recs.get(i),
            Role::Churn(_) => None,
        }
    }

    fn request(&mut self, type_url: &str, names: Vec<String>) -> DiscoveryRequest {
        let t = match type_url {
            CLUSTER => &self.cds,
            LISTENER => &self.lds,
            ROUTE => &self.rds,
            _ => &self.eds,
        };
        DiscoveryRequest {
            version_info: t.version.clone(),
            node: self.node.take(),
            resource_names: names,
            type_url: type_url.to_string(),
            response_nonce: t.nonce.clone(),
            ..Default::default()
        }
    }

    /// Decodes a response; returns the ACK, then any new subscription.
    fn on_response(&mut self, r: DiscoveryResponse) -> Vec<DiscoveryRequest> {
        let st = &self.sh.stats;
        st.responses.fetch_add(1, Relaxed);
        st.resources.fetch_add(r.resources.len() as u64, Relaxed);
        let bytes = r.resources.iter().map(|a| a.value.len() as u64).sum();
        st.bytes.fetch_add(bytes, Relaxed);
        let slot = match r.type_url.as_str() {
            CLUSTER => Some(0),
            LISTENER => Some(1),
            ROUTE => Some(2),
            ENDPOINT => Some(3),
            _ => None,
        };
        if let Some(i) = slot {
            st.bytes_by_type[i].fetch_add(bytes, Relaxed);
        }
        let mut out = Vec::new();
        match r.type_url.as_str() {
            CLUSTER => {
                let mut eds = Vec::new();
                for a in &r.resources {
                    let Some(c) = decode::<Cluster>(&self.sh, &a.value) else {
                        continue;
                    };
                    // EDS = 3
                    if c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(3)) {
                        let service_name = c
                            .eds_cluster_config
                            .map(|e| e.service_name)
                            .filter(|s| !s.is_empty());
                        eds.push(service_name.unwrap_or(c.name));
                    }
                }
                eds.sort();
                self.cds = TypeState {
                    version: r.version_info,
                    nonce: r.nonce,
                    acked: true,
                };
                out.push(self.request(CLUSTER, Vec::new()));
                if *self.eds_names != eds {
                    self.eds_names = self.sh.intern_eds(eds);
                    self.eds.acked = false;
                    out.push(self.request(ENDPOINT, (*self.eds_names).clone()));
                }
            }
            LISTENER => {
                let mut rds = Vec::new();
                for a in &r.resources {
                    let Some(l) = decode::<Listener>(&self.sh, &a.value) else {
                        continue;
                    };
                    for f in l.filter_chains.iter().flat_map(|c| &c.filters) {
                        if let Some(filter::ConfigType::TypedConfig(tc)) = &f.config_type
                            && tc.type_url == HCM
                            && let Some(h) = decode::<HttpConnectionManager>(&self.sh, &tc.value)
                            && let Some(RouteSpecifier::Rds(rds_cfg)) = h.route_specifier
                        {
                            rds.push(rds_cfg.route_config_name);
                        }
                    }
                }
                rds.sort();
                rds.dedup();
                self.lds = TypeState {
                    version: r.version_info,
                    nonce: r.nonce,
                    acked: true,
                };
                out.push(self.request(LISTENER, Vec::new()));
                if self.rds_names != rds {
                    self.rds_names = rds;
                    self.rds.acked = false;
                    out.push(self.request(ROUTE, self.rds_names.clone()));
                }
            }
            ROUTE => {
                for a in &r.resources {
                    let Some(rc) = decode::<RouteConfiguration>(&self.sh, &a.value) else {
                        continue;
                    };
                    if let Some(w) = marker_weight(&rc, &self.sh.marker_domain) {
                        self.marker = w;
                    }
                }
                self.rds = TypeState {
                    version: r.version_info,
                    nonce: r.nonce,
                    acked: true,
                };
                out.push(self.request(ROUTE, self.rds_names.clone()));
            }
            ENDPOINT => {
                // Endpoints may come partially (the protocol allows a SotW
                // EDS response to carry only the assignments that changed):
                // an assignment not in the response keeps what it had, as
                // in Envoy.
                for a in &r.resources {
                    let Some(cla) = decode::<ClusterLoadAssignment>(&self.sh, &a.value) else {
                        continue;
                    };
                    let Some(svc) = Mesh::plain_cluster_service(&cla.cluster_name) else {
                        continue;
                    };
                    let mut base = 0u16;
                    let mut churn = Vec::new();
                    for e in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
                        let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier
                        else {
                            continue;
                        };
                        let Some(address::Address::SocketAddress(sa)) =
                            ep.address.as_ref().and_then(|a| a.address.as_ref())
                        else {
                            continue;
                        };
                        let _port = matches!(sa.port_specifier, Some(PortSpecifier::PortValue(_)));
                        let Ok(ip) = sa.address.parse::<Ipv4Addr>() else {
                            continue;
                        };
                        let o = ip.octets();
                        if o[..2] == CHURN_NET {
                            churn.push(u32::from(ip));
                        } else {
                            base += 1;
                        }
                    }
                    if let Some(c) = self.per_service.get_mut(svc) {
                        *c = base;
                    }
                    if churn.is_empty() {
                        self.churn_by_service.remove(&svc);
                    } else {
                        self.churn_by_service.insert(svc, churn);
                    }
                }
                self.endpoints = self.per_service.iter().map(|c| *c as u64).sum();
                let mut churn: Vec<u32> =
                    self.churn_by_service.values().flatten().copied().collect();
                churn.sort_unstable();
                self.observe_churn(churn);
                self.eds = TypeState {
                    version: r.version_info,
                    nonce: r.nonce,
                    acked: true,
                };
                out.push(self.request(ENDPOINT, (*self.eds_names).clone()));
            }
            _ => {}
        }
        out
    }

    /// After the ACKs went out: records what the proxy now holds.
    fn record(&self) {
        let Some(rec) = self.rec() else { return };
        let now = self.sh.now();
        let full = self.cds.acked
            && self.lds.acked
            && (self.rds_names.is_empty() || self.rds.acked)
            && (self.eds_names.is_empty() || self.eds.acked);
        if full && rec.full_at.load(Relaxed) == 0 {
            rec.full_at.store(now, Relaxed);
        }
        if full && rec.converged_at.load(Relaxed) == 0 && self.endpoints >= self.expected {
            rec.converged_at.store(now, Relaxed);
        }
        if rec.marker.load(Relaxed) != self.marker {
            rec.marker.store(self.marker, Relaxed);
            rec.marker_at.store(now, Relaxed);
        }
    }

    fn observe_churn(&mut self, now_held: Vec<u32>) {
        if !matches!(self.role, Role::Base(_)) || (now_held.is_empty() && self.churn.is_empty()) {
            self.churn = now_held;
            return;
        }
        let added: Vec<u32> = now_held
            .iter()
            .filter(|a| self.churn.binary_search(a).is_err())
            .copied()
            .collect();
        let removed: Vec<u32> = self
            .churn
            .iter()
            .filter(|a| now_held.binary_search(a).is_err())
            .copied()
            .collect();
        self.churn = now_held;
        if added.is_empty() && removed.is_empty() {
            return;
        }
        let now = self.sh.now();
        let mut agg = self.sh.churn.lock().unwrap_or_else(|e| e.into_inner());
        let agg = &mut *agg;
        for a in added {
            if let Some(ev) = agg.events.get_mut(&a)
                && let Some(j) = ev.joined
            {
                let _ = agg.join.record(now.saturating_sub(j).max(1000) / 1000);
                ev.join_seen += 1;
                ev.join_last = now;
            }
        }
        for a in removed {
            if let Some(ev) = agg.events.get_mut(&a)
                && let Some(l) = ev.left
            {
                let _ = agg
                    .leave
                    .record(now.saturating_sub(l + agg.grace_ns).max(1000) / 1000);
                ev.leave_seen += 1;
                ev.leave_last = now;
            }
        }
    }
}

fn decode<M: Message + Default>(sh: &Shared, bytes: &[u8]) -> Option<M> {
    match M::decode(bytes) {
        Ok(m) => Some(m),
        Err(_) => {
            sh.stats.decode_errors.fetch_add(1, Relaxed);
            None
        }
    }
}

/// The first weight of the first route of the marker service's virtual host.
fn marker_weight(rc: &RouteConfiguration, domain: &str) -> Option<i64> {
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|vh| vh.domains.iter().any(|d| d == domain))?;
    let Some(route::Action::Route(ra)) = vh.routes.first()?.action.as_ref() else {
        return None;
    };
    match ra.cluster_specifier.as_ref()? {
        ClusterSpecifier::WeightedClusters(wc) => {
            Some(wc.clusters.first()?.weight.map_or(0, |w| w.value as i64))
        }
        _ => Some(-1),
    }
}

/// Runs one proxy until `stop` turns true (then its stream is dropped and
/// its connection closed). Reconnects after errors.
pub async fn run(sh: Arc<Shared>, role: Role, mut stop: watch::Receiver<bool>) {
    let ident = match role {
        Role::Base(i) => Identity::base(&sh.mesh, i),
        Role::Churn(k) => Identity::churn(&sh.mesh, k),
    };
    let node = ident.node(&sh.mesh);
    let mut attempt = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let endpoint = match tonic::transport::Endpoint::from_shared(sh.uri.clone()) {
            Ok(e) => e
                .connect_timeout(Duration::from_secs(60))
                .tcp_nodelay(true)
                .initial_stream_window_size(4 << 20)
                .initial_connection_window_size(4 << 20),
            Err(_) => return,
        };
        let channel = tokio::select! {
            c = endpoint.connect() => c,
            _ = stop.wait_for(|s| *s) => return,
        };
        let channel = match channel {
            Ok(c) => c,
            Err(e) => {
                sh.stats.connect_errors.fetch_add(1, Relaxed);
                sh.stats.error("connect", &e);
                attempt += 1;
                let wait = Duration::from_millis(100 * u64::from(attempt.min(20)));
                tokio::select! {
                    () = tokio::time::sleep(wait) => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        };
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20);
        let mut p = Proxy {
            sh: sh.clone(),
            role,
            node: Some(node.clone()),
            cds: TypeState::default(),
            lds: TypeState::default(),
            rds: TypeState::default(),
            eds: TypeState::default(),
            eds_names: Arc::new(Vec::new()),
            rds_names: Vec::new(),
            per_service: vec![0; sh.mesh.services].into_boxed_slice(),
            endpoints: 0,
            churn: Vec::new(),
            churn_by_service: std::collections::HashMap::new(),
            marker: 0,
            expected: sh.expected_by_ns[sh.mesh.ns_index(ident.service)],
        };
        let (tx, mut rx) = mpsc::channel::<DiscoveryRequest>(8);
        // Envoy's start: CDS, then LDS, both wildcard (no names).
        let first = [
            p.request(CLUSTER, Vec::new()),
            p.request(LISTENER, Vec::new()),
        ];
        for r in first {
            let _ = tx.try_send(r);
        }
        if let Role::Churn(k) = role {
            let addr = u32::from(ident.address);
            let mut agg = sh.churn.lock().unwrap_or_else(|e| e.into_inner());
            let ev = agg.events.entry(addr).or_default();
            ev.joined = Some(sh.now());
            ev.observers = sh.observers_by_ns[sh.mesh.ns_index(ident.service)];
            let _ = k;
        }
        let requests = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let resp = tokio::select! {
            r = client.stream_aggregated_resources(requests) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let mut responses = match resp {
            Ok(r) => r.into_inner(),
            Err(e) => {
                sh.stats.stream_errors.fetch_add(1, Relaxed);
                sh.stats.error("stream start", &e);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if let Some(rec) = p.rec() {
            rec.connected.store(true, Relaxed);
        }
        attempt = 0;
        loop {
            let msg = tokio::select! {
                m = responses.message() => m,
                _ = stop.wait_for(|s| *s) => {
                    if let Role::Churn(_) = role {
                        let addr = u32::from(ident.address);
                        let mut agg = sh.churn.lock().unwrap_or_else(|e| e.into_inner());
                        agg.events.entry(addr).or_default().left = Some(sh.now());
                    }
                    return;
                }
            };
            match msg {
                Ok(Some(r)) => {
                    for req in p.on_response(r) {
                        if tx.send(req).await.is_err() {
                            break;
                        }
                    }
                    p.record();
                }
                Ok(None) | Err(_) => {
                    sh.stats.stream_errors.fetch_add(1, Relaxed);
                    match &msg {
                        Err(e) => sh.stats.error("stream", e),
                        _ => sh.stats.error("stream", &"ended by the server"),
                    }
                    if let Some(rec) = p.rec() {
                        rec.connected.store(false, Relaxed);
                    }
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
