//! The ADS stream to the control plane (state of the world).
//!
//! [`Ads`] is the protocol as plain data: it turns each response into the
//! requests to send (an ACK or a NACK, then any new RDS/EDS subscription)
//! and keeps the accepted resources. [`run`] does the I/O on its own thread:
//! it connects, applies a consistent set atomically to the [`Store`], and
//! reconnects with full-jitter exponential backoff. The store is never
//! cleared: while the control plane is away the last good config serves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster as EnvoyCluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::data_source;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use futures_util::StreamExt;
use prost::Message;
use rand::Rng;

use super::convert::{self, ConvertError, Discovery, Resources};
use super::{
    CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, Nack, ROUTE_TYPE, SECRET_TYPE, XdsStatus, kind,
    now_unix,
};
use crate::config::compile::Resolver;
use crate::config::watch::{OutlierSweeps, Store};
use crate::telemetry::metrics::Metrics;

/// Reconnect backoff: full jitter between 0 and `min(MAX, BASE × 2^n)`.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a listener or cluster waits for the routes or endpoints it
/// names before the set is applied without them (Envoy's initial fetch
/// timeout, shorter): a control plane that never sends one must not keep
/// the rest of an update away.
pub const WARMING_TIMEOUT: Duration = Duration::from_secs(1);

/// How often names in DNS clusters are resolved again (as the YAML path).
pub const DNS_REFRESH: Duration = Duration::from_secs(30);

/// gRPC `INVALID_ARGUMENT`, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// Full-jitter exponential backoff for reconnect attempt `n` (0-based);
/// `roll` is uniform in [0, 1).
pub fn backoff(n: u32, roll: f64) -> Duration {
    let cap = BACKOFF_BASE
        .saturating_mul(1u32.checked_shl(n.min(16)).unwrap_or(u32::MAX))
        .min(BACKOFF_MAX);
    cap.mul_f64(roll.clamp(0.0, 1.0))
}

/// Per type: what the proxy asked for and what it accepted.
#[derive(Debug, Default, Clone)]
struct TypeState {
    /// Empty: wildcard (LDS, CDS).
    names: Vec<String>,
    version: String,
    nonce: String,
    /// A response has been accepted for this type.
    received: bool,
    /// A hash of each accepted resource's encoding, by name: a response
    /// that only repeats them (a reconnect re-sends everything) changes
    /// nothing, and is ACKed without a new apply.
    held: BTreeMap<String, u64>,
}

/// The ADS protocol state: subscriptions, versions, nonces, accepted resources.
#[derive(Debug)]
pub struct Ads {
    node: Node,
    types: BTreeMap<&'static str, TypeState>,
    pub resources: Resources,
    /// Something was accepted since the last apply.
    pub dirty: bool,
    /// Requests already sent on this stream (the first carries the node).
    sent_node: bool,
    /// The trust bundle from the `ROOTCA` Secret (PEM), when subscribed.
    pub bundle: Option<Arc<Vec<u8>>>,
}

const TYPES: [&str; 5] = [
    LISTENER_TYPE,
    CLUSTER_TYPE,
    ROUTE_TYPE,
    ENDPOINT_TYPE,
    SECRET_TYPE,
];

/// The Secret holding the mesh's trust bundle (Istio's name).
pub const ROOT_CA: &str = "ROOTCA";

impl Ads {
    /// `sds`: whether to subscribe to the trust bundle (`ROOTCA`), for a
    /// proxy whose certificate comes from the control plane's CA.
    pub fn new(node: Node, sds: bool) -> Self {
        let mut types: BTreeMap<&'static str, TypeState> =
            TYPES.iter().map(|t| (*t, TypeState::default())).collect();
        if sds && let Some(t) = types.get_mut(SECRET_TYPE) {
            t.names = vec![ROOT_CA.to_string()];
        }
        Ads {
            node,
            types,
            resources: Resources::default(),
            dirty: false,
            sent_node: false,
            bundle: None,
        }
    }

    fn request(&mut self, type_url: &'static str, error: Option<String>) -> DiscoveryRequest {
        let t = &self.types[type_url];
        let node = (!self.sent_node).then(|| self.node.clone());
        self.sent_node = true;
        DiscoveryRequest {
            version_info: t.version.clone(),
            node,
            resource_names: t.names.clone(),
            type_url: type_url.to_string(),
            response_nonce: t.nonce.clone(),
            error_detail: error.map(|message| Status {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }

    /// The requests that open a stream: LDS and CDS (wildcard), and RDS and
    /// EDS for what the accepted resources already name, each with the
    /// version the proxy holds, so an up-to-date proxy is sent nothing.
    pub fn start(&mut self) -> Vec<DiscoveryRequest> {
        self.sent_node = false;
        let mut out = Vec::new();
        for t in TYPES {
            let st = self.types.get_mut(t).expect("all types");
            // A nonce belongs to the stream that sent it.
            st.nonce.clear();
            let wildcard = t == LISTENER_TYPE || t == CLUSTER_TYPE;
            if wildcard || !st.names.is_empty() {
                out.push(self.request(t, None));
            }
        }
        out
    }

    /// Handles one response: the ACK or NACK to send, then subscription
    /// changes it causes. A NACK keeps everything accepted before.
    pub fn on_response(
        &mut self,
        r: &DiscoveryResponse,
    ) -> (Vec<DiscoveryRequest>, Result<(), String>) {
        let Some(type_url) = TYPES.iter().copied().find(|t| *t == r.type_url) else {
            // Not a type the proxy asked for: nothing to ACK against.
            return (Vec::new(), Err(format!("unexpected type {}", r.type_url)));
        };
        self.types.get_mut(type_url).expect("all types").nonce = r.nonce.clone();
        match self.accept(type_url, &r.resources) {
            Ok(changed) => {
                let st = self.types.get_mut(type_url).expect("all types");
                st.version = r.version_info.clone();
                st.received = true;
                self.dirty |= changed;
                let mut out = vec![self.request(type_url, None)];
                out.extend(self.resubscribe());
                (out, Ok(()))
            }
            Err(msg) => (vec![self.request(type_url, Some(msg.clone()))], Err(msg)),
        }
    }

    /// Converts and keeps the resources of a response; true if any differs
    /// from what was held.
    fn accept(&mut self, type_url: &'static str, resources: &[Any]) -> Result<bool, String> {
        fn decode<M: Message + Default>(a: &Any, what: &str) -> Result<M, String> {
            M::decode(a.value.as_slice()).map_err(|e| format!("{what}: does not decode: {e}"))
        }
        let wrong = |a: &Any| {
            (a.type_url != type_url)
                .then(|| format!("resource of type {} in a {} response", a.type_url, type_url))
        };
        if let Some(e) = resources.iter().find_map(wrong) {
            return Err(e);
        }
        let err = |e: ConvertError| e.to_string();
        let hash = |a: &Any| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            a.value.hash(&mut h);
            h.finish()
        };
        let mut names: Vec<(String, u64)> = Vec::with_capacity(resources.len());
        match type_url {
            LISTENER_TYPE => {
                let mut out = BTreeMap::new();
                for a in resources {
                    let l: Listener = decode(a, "Listener")?;
                    names.push((l.name.clone(), hash(a)));
                    out.insert(l.name.clone(), convert::listener(&l).map_err(err)?);
                }
                self.resources.listeners = out;
            }
            CLUSTER_TYPE => {
                let mut out = BTreeMap::new();
                for a in resources {
                    let c: EnvoyCluster = decode(a, "Cluster")?;
                    names.push((c.name.clone(), hash(a)));
                    out.insert(c.name.clone(), convert::cluster(&c).map_err(err)?);
                }
                self.resources.clusters = out;
            }
            SECRET_TYPE => {
                for a in resources {
                    let secret: Secret = decode(a, "Secret")?;
                    names.push((secret.name.clone(), hash(a)));
                    if secret.name == ROOT_CA {
                        self.bundle = Some(Arc::new(trust_bundle(&secret)?));
                    }
                }
                // Not part of the routing config: nothing to apply.
                let st = self.types.get_mut(type_url).expect("all types");
                st.held.extend(names);
                return Ok(false);
            }
            ROUTE_TYPE => {
                // Non-wildcard types: a response may carry only some of the
                // names; the others keep what they had.
                let mut got = Vec::new();
                for a in resources {
                    let rc: RouteConfiguration = decode(a, "RouteConfiguration")?;
                    names.push((rc.name.clone(), hash(a)));
                    got.push((rc.name.clone(), convert::route_config(&rc).map_err(err)?));
                }
                self.resources.routes.extend(got);
            }
            _ => {
                let mut got = Vec::new();
                for a in resources {
                    let cla: ClusterLoadAssignment = decode(a, "ClusterLoadAssignment")?;
                    names.push((cla.cluster_name.clone(), hash(a)));
                    got.push((
                        cla.cluster_name.clone(),
                        convert::assignment(&cla).map_err(err)?,
                    ));
                }
                self.resources.assignments.extend(got);
            }
        }
        let st = self.types.get_mut(type_url).expect("all types");
        let wildcard = matches!(type_url, LISTENER_TYPE | CLUSTER_TYPE);
        let changed = !st.received
            || (wildcard && names.len() != st.held.len())
            || names.iter().any(|(n, h)| st.held.get(n) != Some(h));
        if wildcard {
            st.held.clear();
        }
        st.held.extend(names);
        Ok(changed)
    }

    fn wanted_routes(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .resources
            .listeners
            .values()
            .filter_map(|l| l.rds.clone())
            .collect();
        set.into_iter().collect()
    }

    fn wanted_endpoints(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .resources
            .clusters
            .values()
            .filter_map(|c| match &c.discovery {
                Discovery::Eds(s) => Some(s.clone()),
                Discovery::Inline(_) => None,
            })
            .collect();
        set.into_iter().collect()
    }

    /// New RDS/EDS requests when the listeners or clusters name other
    /// resources; resources no longer named are dropped.
    fn resubscribe(&mut self) -> Vec<DiscoveryRequest> {
        let mut out = Vec::new();
        for (t, wanted) in [
            (ROUTE_TYPE, self.wanted_routes()),
            (ENDPOINT_TYPE, self.wanted_endpoints()),
        ] {
            if self.types[t].names == wanted {
                continue;
            }
            match t {
                ROUTE_TYPE => self.resources.routes.retain(|k, _| wanted.contains(k)),
                _ => self.resources.assignments.retain(|k, _| wanted.contains(k)),
            }
            self.types.get_mut(t).expect("all types").names = wanted;
            out.push(self.request(t, None));
        }
        out
    }

    /// Names listeners and clusters need that have not arrived yet.
    pub fn missing(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.types[LISTENER_TYPE].received {
            out.push("listeners".to_string());
        }
        if !self.types[CLUSTER_TYPE].received {
            out.push("clusters".to_string());
        }
        for r in self.wanted_routes() {
            if !self.resources.routes.contains_key(&r) {
                out.push(format!("RouteConfiguration {r}"));
            }
        }
        for e in self.wanted_endpoints() {
            if !self.resources.assignments.contains_key(&e) {
                out.push(format!("ClusterLoadAssignment {e}"));
            }
        }
        out
    }

    /// Some cluster has endpoints given by name (STRICT_DNS, LOGICAL_DNS).
    pub fn has_dns(&self) -> bool {
        self.resources
            .clusters
            .values()
            .any(|c| match &c.discovery {
                Discovery::Inline(eps) => eps
                    .iter()
                    .any(|e| e.address.parse::<std::net::IpAddr>().is_err()),
                Discovery::Eds(_) => false,
            })
    }

    /// LDS and CDS have both answered: a set can be applied (after warming).
    pub fn has_base(&self) -> bool {
        self.types[LISTENER_TYPE].received && self.types[CLUSTER_TYPE].received
    }

    fn status(&self, status: &XdsStatus) {
        status.update(|s| {
            for t in TYPES {
                let st = &self.types[t];
                if t == SECRET_TYPE && st.names.is_empty() {
                    // Not subscribed (no CA identity): nothing to show.
                    continue;
                }
                let e = s.types.entry(kind(t)).or_default();
                e.version_acked = st.version.clone();
                e.subscribed = st.names.clone();
                e.resources = match t {
                    LISTENER_TYPE => self.resources.listeners.len(),
                    CLUSTER_TYPE => self.resources.clusters.len(),
                    ROUTE_TYPE => self.resources.routes.len(),
                    SECRET_TYPE => usize::from(self.bundle.is_some()),
                    _ => self.resources.assignments.len(),
                };
            }
        });
    }
}

/// What the xDS thread needs.
pub struct Client {
    /// `http://host:port` of the ADS server.
    pub server: String,
    pub node: Node,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    /// `/ready` waits for `applied_generation` > 0 here.
    pub status: Arc<XdsStatus>,
    pub resolve: Resolver,
    /// Where the trust bundle (`ROOTCA`, PEM) goes, for a proxy whose
    /// certificate comes from the control plane's CA; `None`: no SDS.
    pub bundle: Option<tokio::sync::watch::Sender<Option<Arc<Vec<u8>>>>>,
    /// The bootstrap token, sent as `authorization: Bearer` on the stream
    /// (never logged).
    pub token: Option<Arc<str>>,
    /// Whether the proxy has a workload certificate (auto mTLS needs one).
    pub has_certificate: bool,
}

/// Runs the client on the current thread until the process exits.
pub fn run(client: Client) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the xDS client's runtime");
            return;
        }
    };
    rt.block_on(client.run());
}

/// Outlier detection's sweeps, which the config watcher runs in YAML mode.
pub fn run_outlier_sweeps(store: Arc<Store>) {
    let mut sweeps = OutlierSweeps::default();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        sweeps.run(&store.current.load(), Instant::now());
    }
}

enum StreamEnd {
    Connect(String),
    Closed(String),
}

impl Client {
    async fn run(self) {
        self.status.update(|s| s.server = self.server.clone());
        let mut ads = Ads::new(self.node.clone(), self.bundle.is_some());
        let mut attempt = 0u32;
        loop {
            let started = Instant::now();
            let (end, got_response) = self.stream(&mut ads).await;
            self.status.update(|s| s.connected = false);
            // A stream that worked resets the backoff.
            if got_response || started.elapsed() > BACKOFF_MAX {
                attempt = 0;
            }
            let wait = backoff(attempt, rand::rng().random::<f64>());
            attempt = attempt.saturating_add(1);
            match end {
                StreamEnd::Connect(e) => {
                    tracing::info!(server = %self.server, error = %e, retry_in = ?wait, "xDS server unreachable; serving the last good config")
                }
                StreamEnd::Closed(e) => {
                    tracing::info!(server = %self.server, reason = %e, retry_in = ?wait, "xDS stream closed; serving the last good config")
                }
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// One ADS stream, until it fails. Returns why, and whether any
    /// response arrived.
    async fn stream(&self, ads: &mut Ads) -> (StreamEnd, bool) {
        let endpoint = match tonic::transport::Endpoint::from_shared(self.server.clone()) {
            Ok(e) => e
                .connect_timeout(Duration::from_secs(2))
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5)),
            Err(e) => return (StreamEnd::Connect(e.to_string()), false),
        };
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => return (StreamEnd::Connect(error_chain(&e)), false),
        };
        let mut grpc = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<DiscoveryRequest>();
        let requests =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        for r in ads.start() {
            let _ = tx.send(r);
        }
        let mut request = tonic::Request::new(requests);
        if let Some(token) = &self.token {
            match format!("Bearer {token}").parse() {
                Ok(v) => {
                    request.metadata_mut().insert("authorization", v);
                }
                Err(_) => {
                    return (
                        StreamEnd::Connect(
                            "the bootstrap token holds characters a header cannot carry".into(),
                        ),
                        false,
                    );
                }
            }
        }
        let mut responses = match grpc.stream_aggregated_resources(request).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                return (
                    StreamEnd::Connect(format!("{}: {}", e.code(), e.message())),
                    false,
                );
            }
        };
        tracing::info!(server = %self.server, "xDS stream open");
        self.status.update(|s| s.connected = true);
        let mut got = false;
        let mut warming_since: Option<Instant> = None;
        let mut dns_due = Instant::now() + DNS_REFRESH;
        loop {
            let warming = warming_since.map(|t| t + WARMING_TIMEOUT);
            let dns = ads.has_dns().then_some(dns_due);
            let deadline = match (warming, dns) {
                (Some(w), Some(d)) => Some(w.min(d)),
                (w, d) => w.or(d),
            };
            let next = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d.into(), responses.next())
                        .await
                        .ok(),
                    None => Some(responses.next().await),
                }
            };
            match next.await {
                // Warming timed out (apply what is there), or DNS names
                // are due to be resolved again (re-assemble: endpoints whose
                // addresses did not change keep their state).
                None => {
                    let now = Instant::now();
                    if dns.is_some_and(|d| d <= now) {
                        dns_due = now + DNS_REFRESH;
                        ads.dirty = true;
                    }
                    if warming.is_some_and(|w| w <= now) {
                        warming_since = None;
                        self.apply(ads, true);
                    } else if warming_since.is_none() {
                        self.apply(ads, false);
                    }
                }
                Some(None) => {
                    return (StreamEnd::Closed("the server ended the stream".into()), got);
                }
                Some(Some(Err(e))) => {
                    return (
                        StreamEnd::Closed(format!("{}: {}", e.code(), e.message())),
                        got,
                    );
                }
                Some(Some(Ok(resp))) => {
                    got = true;
                    let k = kind(&resp.type_url);
                    let (reqs, result) = ads.on_response(&resp);
                    match &result {
                        Ok(()) => {
                            self.metrics.xds_update(k, true);
                            tracing::debug!(r#type = k, version = %resp.version_info, resources = resp.resources.len(), "xDS update accepted");
                        }
                        Err(msg) => {
                            self.metrics.xds_update(k, false);
                            tracing::warn!(r#type = k, version = %resp.version_info, error = %msg, "xDS update rejected (NACK); keeping the last good config");
                            self.status.update(|s| {
                                s.types.entry(k).or_default().last_nack = Some(Nack {
                                    version: resp.version_info.clone(),
                                    message: msg.clone(),
                                    at_unix_secs: now_unix(),
                                });
                            });
                        }
                    }
                    for r in reqs {
                        if tx.send(r).is_err() {
                            return (StreamEnd::Closed("request stream closed".into()), got);
                        }
                    }
                    ads.status(&self.status);
                    if let Some(tx) = &self.bundle {
                        let new = ads.bundle.clone();
                        tx.send_if_modified(|held| {
                            let changed = match (&*held, &new) {
                                (Some(a), Some(b)) => a != b,
                                (None, None) => false,
                                _ => true,
                            };
                            if changed {
                                *held = new;
                            }
                            changed
                        });
                    }
                    if ads.dirty && ads.has_base() {
                        if ads.missing().is_empty() {
                            self.apply(ads, false);
                            warming_since = None;
                        } else if warming_since.is_none() {
                            warming_since = Some(Instant::now());
                        }
                    }
                }
            }
        }
    }

    /// Builds the config from the accepted resources and swaps it in.
    fn apply(&self, ads: &mut Ads, forced: bool) {
        if !ads.dirty || !ads.has_base() {
            return;
        }
        let missing = ads.missing();
        if forced && !missing.is_empty() {
            tracing::warn!(missing = ?missing, "applying xDS config without resources the control plane has not sent");
        }
        let previous = self.store.current.load_full();
        let ctx = convert::Context {
            metrics: &self.metrics,
            previous: Some(&previous),
            resolve: &*self.resolve,
            has_certificate: self.has_certificate,
        };
        let config = convert::assemble(&ads.resources, &ctx);
        let generation = config.generation;
        let clusters = config.clusters.len();
        self.store.current.store(Arc::new(config));
        ads.dirty = false;
        self.metrics.reload(true);
        let first = self.status.snapshot().applied_generation == 0;
        self.status.update(|s| {
            s.applied_generation = generation;
            s.waiting_for = missing;
        });
        if first {
            tracing::info!(generation, clusters, "first xDS config applied; ready");
        } else {
            tracing::debug!(generation, clusters, "xDS config applied");
        }
    }
}

/// The PEM roots of a `ROOTCA` Secret (a validation context with inline
/// trusted CAs); anything else there is an error the NACK names.
fn trust_bundle(secret: &Secret) -> Result<Vec<u8>, String> {
    let Some(secret::Type::ValidationContext(vc)) = &secret.r#type else {
        return Err(format!(
            "Secret {}: expected a validation_context with the trust bundle",
            secret.name
        ));
    };
    let pem = match vc.trusted_ca.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(b)) => b.clone(),
        Some(data_source::Specifier::InlineString(s)) => s.clone().into_bytes(),
        _ => {
            return Err(format!(
                "Secret {}: validation_context.trusted_ca must be inline bytes or an inline string",
                secret.name
            ));
        }
    };
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "Secret {}: validation_context.trusted_ca holds no PEM certificate",
            secret.name
        ));
    }
    Ok(pem)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, filter};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, Rds, http_connection_manager::RouteSpecifier,
    };

    use super::*;

    fn any<M: Message>(type_url: &str, m: &M) -> Any {
        Any {
            type_url: type_url.to_string(),
            value: m.encode_to_vec(),
        }
    }

    fn response(
        type_url: &str,
        version: &str,
        nonce: &str,
        resources: Vec<Any>,
    ) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: version.into(),
            resources,
            type_url: type_url.into(),
            nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn outbound_listener() -> Listener {
        let hcm = HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                route_config_name: "outbound".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        Listener {
            name: "outbound".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(any(
                        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        &hcm,
                    ))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn root_ca(trusted_ca: &[u8]) -> Secret {
        use envoy_types::pb::envoy::config::core::v3::DataSource;
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CertificateValidationContext;
        Secret {
            name: ROOT_CA.into(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(DataSource {
                        specifier: Some(data_source::Specifier::InlineBytes(trusted_ca.to_vec())),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )),
        }
    }

    #[test]
    fn the_trust_bundle_comes_over_sds_and_a_bad_one_is_nacked() {
        let mut ads = Ads::new(Node::default(), true);
        let start = ads.start();
        let sds = start
            .iter()
            .find(|r| r.type_url == SECRET_TYPE)
            .expect("a proxy with a CA identity subscribes to the bundle");
        assert_eq!(sds.resource_names, [ROOT_CA]);
        let pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let (reqs, result) = ads.on_response(&response(
            SECRET_TYPE,
            "v1",
            "n1",
            vec![any(SECRET_TYPE, &root_ca(pem))],
        ));
        assert_eq!(result, Ok(()));
        assert!(reqs[0].error_detail.is_none(), "ACK");
        assert_eq!(ads.bundle.as_deref().map(Vec::as_slice), Some(&pem[..]));
        assert!(!ads.dirty, "a bundle is not routing config");

        let (reqs, result) = ads.on_response(&response(
            SECRET_TYPE,
            "v2",
            "n2",
            vec![any(SECRET_TYPE, &root_ca(b"not a certificate"))],
        ));
        let err = result.unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
        assert!(reqs[0].error_detail.is_some(), "NACK");
        assert_eq!(reqs[0].version_info, "v1", "the last good version");
        assert_eq!(
            ads.bundle.as_deref().map(Vec::as_slice),
            Some(&pem[..]),
            "kept"
        );

        // Without a CA identity the proxy asks for no Secret.
        let mut plain = Ads::new(Node::default(), false);
        assert!(plain.start().iter().all(|r| r.type_url != SECRET_TYPE));
    }

    #[test]
    fn ack_subscribe_and_nack_with_the_last_good_version() {
        let mut ads = Ads::new(
            Node {
                id: "a.default".into(),
                ..Default::default()
            },
            false,
        );
        let start = ads.start();
        let types: Vec<&str> = start.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(
            types,
            [LISTENER_TYPE, CLUSTER_TYPE],
            "wildcard LDS and CDS first"
        );
        assert!(
            start[0].node.is_some() && start[1].node.is_none(),
            "node on the first request only"
        );
        assert!(start.iter().all(|r| r.resource_names.is_empty()));

        // A listener: ACK (its version and nonce), then RDS for its routes.
        let (reqs, r) = ads.on_response(&response(
            LISTENER_TYPE,
            "v1",
            "n1",
            vec![any(LISTENER_TYPE, &outbound_listener())],
        ));
        assert_eq!(r, Ok(()));
        assert_eq!(reqs.len(), 2);
        assert_eq!(
            (
                reqs[0].type_url.as_str(),
                reqs[0].version_info.as_str(),
                reqs[0].response_nonce.as_str()
            ),
            (LISTENER_TYPE, "v1", "n1")
        );
        assert!(reqs[0].error_detail.is_none());
        assert_eq!(reqs[1].type_url, ROUTE_TYPE);
        assert_eq!(reqs[1].resource_names, ["outbound"]);
        assert_eq!(ads.missing(), ["clusters", "RouteConfiguration outbound"]);

        // A cluster the proxy cannot serve: NACK with the previous (empty)
        // version, this nonce, and the reason.
        let bad = EnvoyCluster {
            name: "outbound|80||x".into(),
            lb_policy: LbPolicy::Maglev as i32,
            ..Default::default()
        };
        let (reqs, r) = ads.on_response(&response(
            CLUSTER_TYPE,
            "c1",
            "n2",
            vec![any(CLUSTER_TYPE, &bad)],
        ));
        let msg = r.unwrap_err();
        assert!(
            msg.starts_with("Cluster outbound|80||x: lb_policy: MAGLEV is not supported"),
            "{msg}"
        );
        assert_eq!(reqs.len(), 1);
        assert_eq!(
            (
                reqs[0].version_info.as_str(),
                reqs[0].response_nonce.as_str()
            ),
            ("", "n2")
        );
        assert_eq!(
            reqs[0].error_detail.as_ref().map(|e| e.message.as_str()),
            Some(msg.as_str())
        );

        // Reconnecting asks again for what it holds, with its versions.
        let again = ads.start();
        let got: Vec<(&str, &str, usize)> = again
            .iter()
            .map(|r| {
                (
                    r.type_url.as_str(),
                    r.version_info.as_str(),
                    r.resource_names.len(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (LISTENER_TYPE, "v1", 0),
                (CLUSTER_TYPE, "", 0),
                (ROUTE_TYPE, "", 1)
            ]
        );
        assert!(again.iter().all(|r| r.response_nonce.is_empty()));

        // The control plane re-sends the same listener on the new stream:
        // ACKed, nothing new to apply. A changed one is.
        ads.dirty = false;
        let (reqs, r) = ads.on_response(&response(
            LISTENER_TYPE,
            "v1",
            "n3",
            vec![any(LISTENER_TYPE, &outbound_listener())],
        ));
        assert_eq!((r, reqs[0].response_nonce.as_str()), (Ok(()), "n3"));
        assert!(!ads.dirty, "a repeat is not a change");
        let mut changed = outbound_listener();
        changed.stat_prefix = "other".into();
        let (_, r) = ads.on_response(&response(
            LISTENER_TYPE,
            "v2",
            "n4",
            vec![any(LISTENER_TYPE, &changed)],
        ));
        assert_eq!(r, Ok(()));
        assert!(ads.dirty);
    }

    #[test]
    fn backoff_is_capped_full_jitter() {
        assert_eq!(backoff(0, 0.0), Duration::ZERO);
        assert_eq!(backoff(0, 0.5), Duration::from_millis(50));
        assert_eq!(backoff(3, 0.5), Duration::from_millis(400));
        assert_eq!(backoff(30, 0.5), Duration::from_secs(5));
        assert!(backoff(7, 0.999) <= BACKOFF_MAX);
    }
}
