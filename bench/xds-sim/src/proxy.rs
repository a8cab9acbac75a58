//! One simulated proxy: its own TCP connection and gRPC ADS stream, state
//! of the world or delta (incremental) as Envoy speaks them, subscribing as
//! Envoy does (CDS and LDS wildcard, then EDS for the EDS clusters and RDS
//! for the routes the listeners name; with `--wire delta-vhds`, VHDS for
//! the virtual hosts of a route table that says `vhds`, with an empty
//! first request as Envoy's), decoding every resource of every
//! response into its typed message and ACKing it. What it observes goes to [`Shared`]: when it first held a
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
    RouteConfiguration, VirtualHost, route, route_action::ClusterSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
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
pub const VIRTUAL_HOST: &str = "type.googleapis.com/envoy.config.route.v3.VirtualHost";
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// Which ADS variant the proxies speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Wire {
    /// State of the world: every ACK repeats the subscribed names.
    Sotw,
    /// Incremental: responses carry what changed, ACKs only a nonce.
    Delta,
    /// Incremental, and route tables' virtual hosts one by one (node
    /// metadata `VHDS`, as `trellis bootstrap envoy --delta --vhds`).
    DeltaVhds,
}

impl Wire {
    pub fn as_str(self) -> &'static str {
        match self {
            Wire::Sotw => "sotw",
            Wire::Delta => "delta",
            Wire::DeltaVhds => "delta-vhds",
        }
    }
}

/// What every proxy task shares.
pub struct Shared {
    pub mesh: Mesh,
    pub wire: Wire,
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
    /// How churn workloads' addresses begin (`10.200.`): only those are
    /// parsed.
    pub churn_prefix: String,
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
    /// Resource bytes per type: CDS, LDS, RDS (and VHDS), EDS.
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
    /// Per churn workload: µs from its join to its own first response (the
    /// control plane accepted the stream and registered it): the part of a
    /// join's propagation spent before any observer could be told.
    pub first_response: Histogram<u64>,
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
    pub fn new(mesh: Mesh, wire: Wire, xds: &str, proxies: usize, grace: Duration) -> Shared {
        let hist = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        Shared {
            mesh,
            wire,
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
            churn_prefix: format!("{}.{}.", CHURN_NET[0], CHURN_NET[1]),
            stats: Stats::default(),
            churn: Mutex::new(ChurnAgg {
                grace_ns: grace.as_nanos() as u64,
                events: HashMap::new(),
                join: hist(),
                leave: hist(),
                first_response: hist(),
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
    /// VHDS: subscribed once a route table said `vhds`.
    vhd: TypeState,
    vhds: bool,
    /// Delta only (a SotW response holds every cluster and listener): the
    /// EDS service each held cluster names, the routes each listener names.
    cluster_eds: HashMap<String, Eds>,
    listener_rds: HashMap<String, Vec<String>>,
    /// Sorted.
    eds_names: Arc<Vec<String>>,
    /// Sorted.
    rds_names: Vec<String>,
    /// Base endpoints per service (whole-service clusters only).
    per_service: Box<[u16]>,
    endpoints: u64,
    /// Churn endpoints that appeared and went since the last response
    /// was recorded (`assignments_done`).
    churn_added: Vec<u32>,
    churn_removed: Vec<u32>,
    /// Churn endpoints per service, as the last assignment of each said.
    churn_by_service: HashMap<usize, Vec<u32>>,
    marker: i64,
    /// Base endpoints this proxy must hold to count as converged.
    expected: u64,
}

/// The assignment a held cluster loads (delta only). Mostly under the
/// cluster's own name: not stored twice, as 10,000 proxies of ~240
/// clusters each made that 2.4 million strings.
enum Eds {
    None,
    SameName,
    Named(String),
}

/// What a response changes in the EDS or RDS subscription.
struct Resubscribe {
    subscribe: Vec<String>,
    unsubscribe: Vec<String>,
}

impl Proxy {
    fn new(sh: Arc<Shared>, role: Role, node: Node, expected: u64) -> Proxy {
        Proxy {
            per_service: vec![0; sh.mesh.services].into_boxed_slice(),
            sh,
            role,
            node: Some(node),
            cds: TypeState::default(),
            lds: TypeState::default(),
            rds: TypeState::default(),
            eds: TypeState::default(),
            vhd: TypeState::default(),
            vhds: false,
            cluster_eds: HashMap::new(),
            listener_rds: HashMap::new(),
            eds_names: Arc::new(Vec::new()),
            rds_names: Vec::new(),
            endpoints: 0,
            churn_added: Vec::new(),
            churn_removed: Vec::new(),
            churn_by_service: HashMap::new(),
            marker: 0,
            expected,
        }
    }

    fn rec(&self) -> Option<&Rec> {
        match self.role {
            Role::Base(i) => self.sh.recs.get(i),
            Role::Churn(_) => None,
        }
    }

    fn count<'a>(&self, type_url: &str, bodies: impl Iterator<Item = &'a [u8]>) {
        let st = &self.sh.stats;
        st.responses.fetch_add(1, Relaxed);
        let (mut n, mut bytes) = (0u64, 0u64);
        for b in bodies {
            n += 1;
            bytes += b.len() as u64;
        }
        st.resources.fetch_add(n, Relaxed);
        st.bytes.fetch_add(bytes, Relaxed);
        let slot = match type_url {
            CLUSTER => Some(0),
            LISTENER => Some(1),
            ROUTE | VIRTUAL_HOST => Some(2),
            ENDPOINT => Some(3),
            _ => None,
        };
        if let Some(i) = slot {
            st.bytes_by_type[i].fetch_add(bytes, Relaxed);
        }
    }

    fn state(&mut self, type_url: &str) -> &mut TypeState {
        match type_url {
            CLUSTER => &mut self.cds,
            LISTENER => &mut self.lds,
            ROUTE => &mut self.rds,
            VIRTUAL_HOST => &mut self.vhd,
            _ => &mut self.eds,
        }
    }

    /// A new EDS subscription, if the clusters now name other services;
    /// assignments no longer named are dropped (no response says so).
    fn set_eds(&mut self, mut eds: Vec<String>) -> Option<Resubscribe> {
        eds.sort_unstable();
        eds.dedup();
        if *self.eds_names == eds {
            return None;
        }
        let change = diff(&self.eds_names, &eds);
        for gone in &change.unsubscribe {
            self.assignment_removed(gone);
        }
        self.eds_names = self.sh.intern_eds(eds);
        self.eds.acked = false;
        Some(change)
    }

    /// A new RDS subscription, if the listeners now name other routes.
    fn set_rds(&mut self, mut rds: Vec<String>) -> Option<Resubscribe> {
        rds.sort_unstable();
        rds.dedup();
        if self.rds_names == rds {
            return None;
        }
        let change = diff(&self.rds_names, &rds);
        self.rds_names = rds;
        self.rds.acked = false;
        Some(change)
    }

    /// Applies one RouteConfiguration: the marker's weight, if it has it.
    /// Returns whether its virtual hosts come by VHDS.
    fn route(&mut self, bytes: &[u8]) -> bool {
        let Some(rc) = decode::<RouteConfiguration>(&self.sh, bytes) else {
            return false;
        };
        for vh in &rc.virtual_hosts {
            self.virtual_host(vh);
        }
        rc.vhds.is_some()
    }

    /// Applies one virtual host: the marker's weight, if it is the
    /// marker's.
    fn virtual_host(&mut self, vh: &VirtualHost) {
        if let Some(w) = marker_weight(vh, &self.sh.marker_domain) {
            self.marker = w;
        }
    }

    /// Applies one ClusterLoadAssignment. Assignments may come one at a
    /// time (delta, or a SotW EDS response with only what changed, as the
    /// protocol allows): one not in a response keeps what it had, as in
    /// Envoy.
    fn assignment(&mut self, bytes: &[u8]) {
        let Some(cla) = decode::<ClusterLoadAssignment>(&self.sh, bytes) else {
            return;
        };
        let Some(svc) = Mesh::plain_cluster_service(&cla.cluster_name) else {
            return;
        };
        let mut base = 0u16;
        let mut churn = Vec::new();
        for e in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                continue;
            };
            let Some(address::Address::SocketAddress(sa)) =
                ep.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                continue;
            };
            let _port = matches!(sa.port_specifier, Some(PortSpecifier::PortValue(_)));
            // Only churn addresses are parsed: the others are counted.
            if !sa.address.starts_with(&self.sh.churn_prefix) {
                base += 1;
                continue;
            }
            let Ok(ip) = sa.address.parse::<Ipv4Addr>() else {
                continue;
            };
            churn.push(u32::from(ip));
        }
        self.set_service(svc, base, churn);
    }

    /// What one service's assignment now holds: the running endpoint count,
    /// and the churn endpoints it gained and lost.
    fn set_service(&mut self, svc: usize, base: u16, mut churn: Vec<u32>) {
        if let Some(c) = self.per_service.get_mut(svc) {
            self.endpoints = self.endpoints - u64::from(*c) + u64::from(base);
            *c = base;
        }
        churn.sort_unstable();
        let old: &[u32] = self.churn_by_service.get(&svc).map_or(&[], Vec::as_slice);
        self.churn_added
            .extend(churn.iter().filter(|a| old.binary_search(a).is_err()));
        self.churn_removed
            .extend(old.iter().filter(|a| churn.binary_search(a).is_err()));
        if churn.is_empty() {
            self.churn_by_service.remove(&svc);
        } else {
            self.churn_by_service.insert(svc, churn);
        }
    }

    fn assignment_removed(&mut self, name: &str) {
        let Some(svc) = Mesh::plain_cluster_service(name) else {
            return;
        };
        self.set_service(svc, 0, Vec::new());
    }

    /// After a response's assignments: the churn workloads it showed
    /// appearing and going.
    fn assignments_done(&mut self) {
        let added = std::mem::take(&mut self.churn_added);
        let removed = std::mem::take(&mut self.churn_removed);
        self.observe_churn(added, removed);
    }

    fn sotw_request(&mut self, type_url: &str, names: Vec<String>) -> DiscoveryRequest {
        let node = self.node.take();
        let t = self.state(type_url);
        DiscoveryRequest {
            version_info: t.version.clone(),
            node,
            resource_names: names,
            type_url: type_url.to_string(),
            response_nonce: t.nonce.clone(),
            ..Default::default()
        }
    }

    /// Decodes a SotW response; returns the ACK, then any new subscription.
    fn on_sotw(&mut self, r: DiscoveryResponse) -> Vec<DiscoveryRequest> {
        self.count(&r.type_url, r.resources.iter().map(|a| a.value.as_slice()));
        let mut out = Vec::new();
        match r.type_url.as_str() {
            CLUSTER => {
                let eds = r
                    .resources
                    .iter()
                    .filter_map(|a| cluster_eds(&self.sh, &a.value))
                    .filter_map(|(_, eds)| eds)
                    .collect();
                self.cds = TypeState {
                    version: r.version_info,
                    nonce: r.nonce,
                    acked: true,
                };
                out.push(self.sotw_request(CLUSTER, Vec::new()));
                if self.set_eds(eds).is_some() {
                    let names = (*self.eds_names).clone();
                    out.push(self.sotw_request(ENDPOINT, names));
                }
            }
            LISTENER => {
                let rds = r
                    .resources
                    .iter()
                    .filter_map(|a| listener_rds(&self.sh, &a.value))
                    .flat_map(|(_, rds)| rds)
                    .collect();
                self.lds = TypeState {
                    version: r.version_info,
                    nonce: r.nonce,
                    acked: true,
                };
                out.push(self.sotw_request(LISTENER, Vec::new()));
                if self.set_rds(rds).is_some() {
                    let names = self.rds_names.clone();
                    out.push(self.sotw_request(ROUTE, names));
                }
            }
            ROUTE => {
                for a in &r.resources {
                    self.route(&a.value);
                }
                self.rds = TypeState {
                    version: r.version_info,
                    nonce: r.nonce,
                    acked: true,
                };
                let names = self.rds_names.clone();
                out.push(self.sotw_request(ROUTE, names));
            }
            ENDPOINT => {
                for a in &r.resources {
                    self.assignment(&a.value);
                }
                self.assignments_done();
                self.eds = TypeState {
                    version: r.version_info,
                    nonce: r.nonce,
                    acked: true,
                };
                let names = (*self.eds_names).clone();
                out.push(self.sotw_request(ENDPOINT, names));
            }
            _ => {}
        }
        out
    }

    fn delta_request(&mut self, type_url: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node: self.node.take(),
            type_url: type_url.to_string(),
            ..Default::default()
        }
    }

    fn delta_subscribe(&mut self, type_url: &str, change: Resubscribe) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            resource_names_subscribe: change.subscribe,
            resource_names_unsubscribe: change.unsubscribe,
            ..self.delta_request(type_url)
        }
    }

    /// Decodes a delta response; returns the ACK (the nonce alone), then
    /// any subscription change.
    fn on_delta(&mut self, r: DeltaDiscoveryResponse) -> Vec<DeltaDiscoveryRequest> {
        let bodies = r.resources.iter().filter_map(|x| x.resource.as_ref());
        self.count(&r.type_url, bodies.clone().map(|a| a.value.as_slice()));
        let mut change = None;
        let mut opened = None;
        match r.type_url.as_str() {
            CLUSTER => {
                for a in bodies {
                    if let Some((name, eds)) = cluster_eds(&self.sh, &a.value) {
                        let eds = match eds {
                            None => Eds::None,
                            Some(e) if e == name => Eds::SameName,
                            Some(e) => Eds::Named(e),
                        };
                        self.cluster_eds.insert(name, eds);
                    }
                }
                for name in &r.removed_resources {
                    self.cluster_eds.remove(name);
                }
                let eds = self
                    .cluster_eds
                    .iter()
                    .filter_map(|(name, eds)| match eds {
                        Eds::None => None,
                        Eds::SameName => Some(name.clone()),
                        Eds::Named(e) => Some(e.clone()),
                    })
                    .collect();
                change = self.set_eds(eds).map(|c| (ENDPOINT, c));
            }
            LISTENER => {
                for a in bodies {
                    if let Some((name, rds)) = listener_rds(&self.sh, &a.value) {
                        self.listener_rds.insert(name, rds);
                    }
                }
                for name in &r.removed_resources {
                    self.listener_rds.remove(name);
                }
                let rds = self.listener_rds.values().flatten().cloned().collect();
                change = self.set_rds(rds).map(|c| (ROUTE, c));
            }
            ROUTE => {
                let mut vhds = false;
                for a in bodies {
                    vhds |= self.route(&a.value);
                }
                // As Envoy: a VHDS subscription per table that says so,
                // opened with an empty request.
                if vhds && !self.vhds {
                    self.vhds = true;
                    opened = Some(self.delta_request(VIRTUAL_HOST));
                }
            }
            VIRTUAL_HOST => {
                for a in bodies {
                    if let Some(vh) = decode::<VirtualHost>(&self.sh, &a.value) {
                        self.virtual_host(&vh);
                    }
                }
            }
            ENDPOINT => {
                for a in bodies {
                    self.assignment(&a.value);
                }
                for name in &r.removed_resources {
                    self.assignment_removed(name);
                }
                self.assignments_done();
            }
            _ => return Vec::new(),
        }
        let type_url = r.type_url;
        let st = self.state(&type_url);
        st.acked = true;
        st.nonce = r.nonce;
        let ack = DeltaDiscoveryRequest {
            response_nonce: st.nonce.clone(),
            ..self.delta_request(&type_url)
        };
        let mut out = vec![ack];
        if let Some((t, c)) = change {
            out.push(self.delta_subscribe(t, c));
        }
        out.extend(opened);
        out
    }

    /// After the ACKs went out: records what the proxy now holds.
    fn record(&self) {
        let Some(rec) = self.rec() else { return };
        let now = self.sh.now();
        let full = self.cds.acked
            && self.lds.acked
            && (self.rds_names.is_empty() || self.rds.acked)
            && (!self.vhds || self.vhd.acked)
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

    /// A churn workload's first response: time since its join.
    fn first_response(&self) {
        let Some(node) = self.node_address() else {
            return;
        };
        let now = self.sh.now();
        let mut agg = self.sh.churn.lock().unwrap_or_else(|e| e.into_inner());
        let joined = agg.events.get(&node).and_then(|ev| ev.joined);
        if let Some(j) = joined {
            let _ = agg
                .first_response
                .record(now.saturating_sub(j).max(1000) / 1000);
        }
    }

    fn node_address(&self) -> Option<u32> {
        match self.role {
            Role::Churn(k) => Some(u32::from(Identity::churn(&self.sh.mesh, k).address)),
            Role::Base(_) => None,
        }
    }

    fn observe_churn(&mut self, added: Vec<u32>, removed: Vec<u32>) {
        if !matches!(self.role, Role::Base(_)) || (added.is_empty() && removed.is_empty()) {
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

/// The first weight of the first route of `vh`, if it is the marker
/// service's virtual host.
fn marker_weight(vh: &VirtualHost, domain: &str) -> Option<i64> {
    if !vh.domains.iter().any(|d| d == domain) {
        return None;
    }
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

/// A cluster's name and, if it is an EDS cluster, the service name its
/// assignment goes by.
fn cluster_eds(sh: &Shared, bytes: &[u8]) -> Option<(String, Option<String>)> {
    let c = decode::<Cluster>(sh, bytes)?;
    // EDS = 3
    if c.cluster_discovery_type != Some(ClusterDiscoveryType::Type(3)) {
        return Some((c.name, None));
    }
    let service_name = c
        .eds_cluster_config
        .map(|e| e.service_name)
        .filter(|s| !s.is_empty());
    let eds = service_name.unwrap_or_else(|| c.name.clone());
    Some((c.name, Some(eds)))
}

/// A listener's name and the route configurations its HTTP connection
/// managers load over RDS.
fn listener_rds(sh: &Shared, bytes: &[u8]) -> Option<(String, Vec<String>)> {
    let l = decode::<Listener>(sh, bytes)?;
    let mut rds = Vec::new();
    for f in l.filter_chains.iter().flat_map(|c| &c.filters) {
        if let Some(filter::ConfigType::TypedConfig(tc)) = &f.config_type
            && tc.type_url == HCM
            && let Some(h) = decode::<HttpConnectionManager>(sh, &tc.value)
            && let Some(RouteSpecifier::Rds(rds_cfg)) = h.route_specifier
        {
            rds.push(rds_cfg.route_config_name);
        }
    }
    Some((l.name, rds))
}

/// From one sorted name list to another: what to subscribe and unsubscribe.
fn diff(old: &[String], new: &[String]) -> Resubscribe {
    Resubscribe {
        subscribe: new
            .iter()
            .filter(|n| old.binary_search(n).is_err())
            .cloned()
            .collect(),
        unsubscribe: old
            .iter()
            .filter(|n| new.binary_search(n).is_err())
            .cloned()
            .collect(),
    }
}

/// One ADS variant's requests and responses, for [`exchange`].
trait Variant: Sized + Send + 'static {
    type Resp: Send + 'static;
    /// The requests that open the stream: Envoy's start, CDS then LDS,
    /// both wildcard.
    fn first(p: &mut Proxy) -> Vec<Self>;
    fn handle(p: &mut Proxy, r: Self::Resp) -> Vec<Self>;
    fn open(
        client: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
        requests: impl futures_util::Stream<Item = Self> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<tonic::Streaming<Self::Resp>, tonic::Status>> + Send;
}

impl Variant for DiscoveryRequest {
    type Resp = DiscoveryResponse;
    fn first(p: &mut Proxy) -> Vec<Self> {
        vec![
            p.sotw_request(CLUSTER, Vec::new()),
            p.sotw_request(LISTENER, Vec::new()),
        ]
    }
    fn handle(p: &mut Proxy, r: DiscoveryResponse) -> Vec<Self> {
        p.on_sotw(r)
    }
    async fn open(
        client: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
        requests: impl futures_util::Stream<Item = Self> + Send + 'static,
    ) -> Result<tonic::Streaming<DiscoveryResponse>, tonic::Status> {
        Ok(client
            .stream_aggregated_resources(requests)
            .await?
            .into_inner())
    }
}

impl Variant for DeltaDiscoveryRequest {
    type Resp = DeltaDiscoveryResponse;
    fn first(p: &mut Proxy) -> Vec<Self> {
        vec![p.delta_request(CLUSTER), p.delta_request(LISTENER)]
    }
    fn handle(p: &mut Proxy, r: DeltaDiscoveryResponse) -> Vec<Self> {
        p.on_delta(r)
    }
    async fn open(
        client: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
        requests: impl futures_util::Stream<Item = Self> + Send + 'static,
    ) -> Result<tonic::Streaming<DeltaDiscoveryResponse>, tonic::Status> {
        Ok(client
            .delta_aggregated_resources(requests)
            .await?
            .into_inner())
    }
}

/// How a stream ended.
enum Ended {
    /// `stop` turned true: the proxy is done.
    Stopped,
    /// The stream failed or the server ended it: reconnect.
    Broken,
}

/// Runs one proxy until `stop` turns true (then its stream is dropped and
/// its connection closed). Reconnects after errors.
pub async fn run(sh: Arc<Shared>, role: Role, mut stop: watch::Receiver<bool>) {
    let ident = match role {
        Role::Base(i) => Identity::base(&sh.mesh, i),
        Role::Churn(k) => Identity::churn(&sh.mesh, k),
    };
    let mut node = ident.node(&sh.mesh);
    if sh.wire == Wire::DeltaVhds
        && let Some(md) = node.metadata.as_mut()
    {
        let yes = envoy_types::pb::google::protobuf::Value {
            kind: Some(envoy_types::pb::google::protobuf::value::Kind::BoolValue(
                true,
            )),
        };
        md.fields.insert("VHDS".to_string(), yes);
    }
    let expected = sh.expected_by_ns[sh.mesh.ns_index(ident.service)];
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
        let p = Proxy::new(sh.clone(), role, node.clone(), expected);
        if let Role::Churn(_) = role {
            let addr = u32::from(ident.address);
            let mut agg = sh.churn.lock().unwrap_or_else(|e| e.into_inner());
            let ev = agg.events.entry(addr).or_default();
            ev.joined = Some(sh.now());
            ev.observers = sh.observers_by_ns[sh.mesh.ns_index(ident.service)];
        }
        let ended = match sh.wire {
            Wire::Sotw => exchange::<DiscoveryRequest>(&mut client, p, &mut stop).await,
            Wire::Delta | Wire::DeltaVhds => {
                exchange::<DeltaDiscoveryRequest>(&mut client, p, &mut stop).await
            }
        };
        match ended {
            Ended::Stopped => {
                if let Role::Churn(_) = role {
                    let addr = u32::from(ident.address);
                    let mut agg = sh.churn.lock().unwrap_or_else(|e| e.into_inner());
                    agg.events.entry(addr).or_default().left = Some(sh.now());
                }
                return;
            }
            Ended::Broken => attempt = 0,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One ADS stream: the opening requests, then each response decoded and
/// answered, until `stop` or an error.
async fn exchange<V: Variant>(
    client: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    mut p: Proxy,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let sh = p.sh.clone();
    let (tx, mut rx) = mpsc::channel::<V>(8);
    for r in V::first(&mut p) {
        let _ = tx.try_send(r);
    }
    let requests = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let opened = tokio::select! {
        r = V::open(client, requests) => r,
        _ = stop.wait_for(|s| *s) => return Ended::Stopped,
    };
    let mut responses = match opened {
        Ok(r) => r,
        Err(e) => {
            sh.stats.stream_errors.fetch_add(1, Relaxed);
            sh.stats.error("stream start", &e);
            return Ended::Broken;
        }
    };
    if let Some(rec) = p.rec() {
        rec.connected.store(true, Relaxed);
    }
    let mut first_response = matches!(p.role, Role::Churn(_));
    loop {
        let msg = tokio::select! {
            m = responses.message() => m,
            _ = stop.wait_for(|s| *s) => return Ended::Stopped,
        };
        match msg {
            Ok(Some(r)) => {
                if std::mem::take(&mut first_response) {
                    p.first_response();
                }
                for req in V::handle(&mut p, r) {
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
                return Ended::Broken;
            }
        }
    }
}
