//! The control plane behind the ADS server: [`Mesh`] implements
//! `trellis_xds::Snapshots` (what each proxy should hold) and
//! `trellis_xds::XdsHooks` (workload registration, NACK logging).
//!
//! **Generations.** Every accepted store change and every registry change
//! bumps one counter. The expensive translation
//! (`trellis_translate::shared`) runs at most once per generation, lazily,
//! by the first stream that asks after the bump; after a registry-only
//! change it starts from the previous one and retranslates only the
//! services whose endpoints changed (`shared_since`). Each class of
//! proxies (`translate::ViewClass`: namespace, locality, Sidecar, kind,
//! app) gets one `class_view` per generation, converted once; a proxy's
//! snapshot is its class's plus its own two listeners.
//!
//! **Two `Snapshot` types.** translate's snapshot holds `Arc<Resource>` per
//! resource (shared per service); the xDS server's holds one
//! `Arc<Resources>` per type, and skips a type whose `Arc` did not change
//! since the last push. The conversion is here, through a cache keyed by
//! (type, fingerprint of the names and content hashes): proxies that see the
//! same set of a type get the same `Arc` (so 10,000 proxies in one
//! namespace share one cluster map), and a type whose content did not
//! change across generations keeps its `Arc`, so streams skip it without
//! comparing. translate stays free of the xDS server crate.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use trellis_model::ResourceSet;
use trellis_model::resource::Kind;
use trellis_translate::encode::Fnv;
use trellis_translate::names::{CLUSTER_TYPE, INBOUND_APP_CLUSTER, LISTENER_TYPE};
use trellis_translate::{ProxyIdentity, Registry, SharedResources, ViewClass};
use trellis_xds::envoy_types::pb::envoy::config::core::v3::Node;
use trellis_xds::{Connection, ConnectionStatus, Nack, Snapshots, XdsHooks};

use crate::health::HealthCheck;
use crate::registry::{MetadataError, NodeInfo, Registrations};
use crate::store::{self, Key};

/// The shortest time between two generations made by registry changes:
/// [`REGISTRY_COALESCE_PER_WORKLOAD`] per registered workload, within
/// these bounds. A lone change is a generation at once; under churn, each
/// generation costs a registry rebuild and every class's view however few
/// workloads it carries, and that cost grows with the mesh: at 10,000
/// proxies it was ~20 % of the control plane's CPU at 100 ms and the CPUs
/// saturated; at 300 ms churn propagation p99 went from 2.8-3.4 s to
/// 1.4-1.7 s (bench/SCALE.md). Proxies are paced to about a push a second
/// at that size anyway (`push_interval_per_stream`). A small mesh keeps
/// 100 ms: its generations are cheap, and a change waits less.
pub const REGISTRY_COALESCE: Duration = Duration::from_millis(100);
/// See [`REGISTRY_COALESCE`].
pub const REGISTRY_COALESCE_MAX: Duration = Duration::from_millis(300);
/// See [`REGISTRY_COALESCE`]: 300 ms at 10,000 workloads.
pub const REGISTRY_COALESCE_PER_WORKLOAD: Duration = Duration::from_micros(30);

/// The coalescing period for a registry of `workloads`.
fn registry_coalesce(workloads: usize) -> Duration {
    let n = u32::try_from(workloads).unwrap_or(u32::MAX);
    REGISTRY_COALESCE_PER_WORKLOAD
        .saturating_mul(n)
        .clamp(REGISTRY_COALESCE, REGISTRY_COALESCE_MAX)
}

/// The default `--registration-grace`.
pub const DEFAULT_REGISTRATION_GRACE: Duration = Duration::from_secs(30);

/// What a node was last given.
#[derive(Debug, Clone)]
pub struct Served {
    /// The control plane's generation (store and registry changes).
    pub generation: u64,
    /// The store generation inside it.
    pub store_generation: u64,
    /// What the node's view was made for (namespace, labels, Sidecar).
    pub viewer: Arc<crate::reach::Viewer>,
    /// The snapshot itself (weak: the stream holds it): until the stream
    /// serves this one ([`Served::taken_by`]), its versions and ACKs are
    /// those of an older generation.
    pub snapshot: Weak<trellis_xds::Snapshot>,
}

impl Served {
    /// Whether the stream `status` serves this snapshot: then what it says
    /// of ACKs is about this generation.
    pub fn taken_by(&self, status: &ConnectionStatus) -> bool {
        std::ptr::eq(self.snapshot.as_ptr(), Arc::as_ptr(&status.snapshot))
    }
}

/// The proxies' source of config. See the module docs.
#[derive(Debug)]
pub struct Mesh {
    state: Mutex<State>,
    generations: watch::Sender<u64>,
    grace: Duration,
    /// To schedule expiry tasks from a hook (which only gets `&self`).
    me: Weak<Mesh>,
    /// Woken when registrations have changes to persist
    /// ([`Mesh::unsaved_registrations`]).
    saves: tokio::sync::Notify,
    /// Streams authenticated by a bootstrap token, and the `default`
    /// Secret (certificate and key) each gets.
    pub envoy_certs: crate::envoy_certs::EnvoyCerts,
}

#[derive(Debug)]
struct State {
    store: Arc<store::Snapshot>,
    /// Store generation at which each effective resource last changed.
    changed_at: HashMap<Key, (u64, u64)>,
    /// Store generation at which the config a [`NodeView`] reads
    /// (Sidecars, AuthorizationPolicies, PeerAuthentications) last changed:
    /// a VirtualService change keeps every node's view.
    node_inputs: u64,
    registrations: Registrations,
    registry: Arc<Registry>,
    generation: u64,
    /// For `generation`; None until a stream asks.
    shared: Option<Arc<SharedResources>>,
    /// The last translation and the store generation it was made from:
    /// when only the registry changed since, the next one starts from it
    /// (`translate::shared_since`).
    last_shared: Option<(u64, Arc<SharedResources>)>,
    /// For `generation`: each class's view (all but a sidecar's own
    /// listeners), converted once and shared by its proxies.
    views: HashMap<ViewClass, Arc<trellis_xds::Snapshot>>,
    cache: HashMap<(&'static str, u64), Cached>,
    served: HashMap<String, Served>,
    /// Per registered node, what its snapshot takes besides its class's
    /// view (identity, Sidecar, class, its own two listeners), kept while
    /// its registration and the stored config are unchanged.
    nodes: HashMap<String, NodeView>,
    /// The health-check prober of each registered workload that asks for
    /// one: what it probes, and the task.
    probers: HashMap<String, Prober>,
    /// When registry changes last became a generation, and whether later
    /// ones wait for a flush ([`Mesh::registry_changed`]).
    last_registry_flush: Instant,
    registry_flush_scheduled: bool,
    /// The Secrets every proxy may ask for (`ROOTCA`: the trust bundle);
    /// added to every class's view.
    secrets: Arc<trellis_xds::Resources>,
}

#[derive(Debug)]
struct Prober {
    check: HealthCheck,
    target: SocketAddr,
    task: tokio::task::AbortHandle,
}

/// What a registered node's snapshot takes besides its class's view: all
/// derived from its registration and the stored config, none from the
/// registry, so kept across registry generations (a connect storm or
/// endpoint churn makes one every 100-300 ms, and each used to compute this
/// again for every stream, under the mesh's lock).
#[derive(Debug, Clone)]
struct NodeView {
    /// [`State::node_inputs`] it was made from.
    inputs: u64,
    /// [`crate::registry::Registration::revision`] it was made from.
    revision: u64,
    facts: Arc<NodeFacts>,
    /// The sidecar's own listeners, once made (`Some(None)`: it has none).
    own: Option<Option<Arc<trellis_xds::Resources>>>,
}

/// A node as [`Mesh::node_view`] found it.
enum NodeParts {
    Usable(NodeView),
    /// No usable registration: a stand-in identity (its class's view
    /// without listeners) and what it may see.
    Unusable(Box<ProxyIdentity>, Arc<crate::reach::Viewer>),
}

#[derive(Debug)]
struct NodeFacts {
    /// The node's identity, with the egress hosts of its Sidecar.
    identity: ProxyIdentity,
    viewer: Arc<crate::reach::Viewer>,
    class: ViewClass,
}

#[derive(Debug)]
struct Cached {
    resources: Arc<trellis_xds::Resources>,
    /// The newest generation that used it; older entries are dropped.
    used: u64,
}

impl Mesh {
    /// `node`'s [`NodeView`], from the cache while its registration and the
    /// stored config are those it was made from.
    fn node_view(st: &mut State, node: &Node) -> NodeParts {
        let inputs = st.node_inputs;
        let registration = st.registrations.get(&node.id);
        let revision = registration.map(|r| r.revision);
        if let (Some(revision), Some(v)) = (revision, st.nodes.get(&node.id))
            && v.revision == revision
            && v.inputs == inputs
        {
            return NodeParts::Usable(v.clone());
        }
        let parsed;
        let info = match registration {
            Some(r) => &r.info,
            None => {
                parsed = crate::registry::parse_node(node);
                &parsed
            }
        };
        // The Sidecar that applies to the workload limits what it sees.
        let (mut identity, labels) = match info {
            Ok(i) => (i.identity.clone(), i.workload.labels.clone()),
            Err(_) => (placeholder_identity(node), BTreeMap::new()),
        };
        let usable = info.is_ok();
        identity.egress = trellis_model::sidecar::egress_hosts(
            &st.store.validated.sidecars,
            &identity.namespace,
            &labels,
        );
        let viewer = Arc::new(crate::reach::Viewer {
            namespace: identity.namespace.clone(),
            labels,
            egress: identity.egress.clone(),
        });
        if !usable {
            return NodeParts::Unusable(Box::new(identity), viewer);
        }
        let view = NodeView {
            inputs,
            revision: revision.unwrap_or(0),
            facts: Arc::new(NodeFacts {
                class: ViewClass::of(&identity),
                identity,
                viewer,
            }),
            own: None,
        };
        // A node that is not registered (yet) is computed each time.
        if revision.is_some() {
            st.nodes.insert(node.id.clone(), view.clone());
        }
        NodeParts::Usable(view)
    }

    pub fn new(store: Arc<store::Snapshot>, grace: Duration) -> Arc<Mesh> {
        let mut changed_at = HashMap::new();
        update_changed_at(&mut changed_at, &store);
        Arc::new_cyclic(|me| Mesh {
            state: Mutex::new(State {
                node_inputs: store.generation,
                store,
                changed_at,
                registrations: Registrations::default(),
                registry: Arc::new(Registry::default()),
                generation: 1,
                shared: None,
                last_shared: None,
                views: HashMap::new(),
                cache: HashMap::new(),
                served: HashMap::new(),
                nodes: HashMap::new(),
                probers: HashMap::new(),
                last_registry_flush: Instant::now()
                    .checked_sub(REGISTRY_COALESCE_MAX)
                    .unwrap_or_else(Instant::now),
                registry_flush_scheduled: false,
                secrets: Arc::default(),
            }),
            generations: watch::Sender::new(1),
            grace,
            me: me.clone(),
            saves: tokio::sync::Notify::new(),
            envoy_certs: Default::default(),
        })
    }

    /// Follows the store's snapshots until the store goes away.
    pub async fn follow_store(self: Arc<Self>, mut rx: watch::Receiver<Arc<store::Snapshot>>) {
        while rx.changed().await.is_ok() {
            let snap = rx.borrow_and_update().clone();
            let mut st = self.lock();
            if snap.generation == st.store.generation {
                continue;
            }
            self.set_store(&mut st, snap);
        }
    }

    /// Serves a new store snapshot from the next generation on.
    fn set_store(&self, st: &mut State, snap: Arc<store::Snapshot>) {
        if update_changed_at(&mut st.changed_at, &snap) {
            st.node_inputs = snap.generation;
        }
        st.store = snap;
        self.bump(st);
    }

    /// A new generation at `at`, so streams ask for their snapshot again and
    /// a `default` certificate past half its life is renewed.
    fn renew_at(&self, at: std::time::SystemTime) {
        let (Some(me), Ok(rt)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let wait = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        rt.spawn(async move {
            tokio::time::sleep(wait).await;
            let mut st = me.lock();
            me.bump(&mut st);
        });
    }

    /// Replaces the Secrets served to every proxy (SDS); a new generation.
    pub fn set_secrets(&self, secrets: Arc<trellis_xds::Resources>) {
        let mut st = self.lock();
        st.secrets = secrets;
        self.bump(&mut st);
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// What `node_id` was last given.
    pub fn served(&self, node_id: &str) -> Option<Served> {
        self.lock().served.get(node_id).cloned()
    }

    /// Whether `node_id` was last given the newest generation, with no
    /// registry change waiting to become a generation (coalesced, up to
    /// 300 ms): then nothing newer is on its way to it.
    pub fn current(&self, node_id: &str) -> bool {
        let st = self.lock();
        !st.registry_flush_scheduled
            && st
                .served
                .get(node_id)
                .is_some_and(|s| s.generation == st.generation)
    }

    /// The store generation of what `node_id` was last given, and whether
    /// `key` (as in effect now) is part of it ([`crate::reach`]).
    pub fn holds(&self, node_id: &str, key: &Key) -> Option<(u64, bool)> {
        let st = self.lock();
        let served = st.served.get(node_id)?;
        let held = crate::reach::reaches(&st.store.validated, key, &served.viewer);
        Some((served.store_generation, held))
    }

    /// The store generation at which `key` last changed, if it is in the
    /// effective config.
    pub fn changed_at(&self, key: &Key) -> Option<u64> {
        self.lock().changed_at.get(key).map(|(g, _)| *g)
    }

    /// The node's registration: its metadata, or why it was refused.
    pub fn node_info(&self, node_id: &str) -> Option<Result<NodeInfo, MetadataError>> {
        self.lock()
            .registrations
            .get(node_id)
            .map(|r| r.info.clone())
    }

    /// Every registration (node id, what it said, open streams, since when
    /// it has none), connected or within its grace period.
    pub fn registrations(&self) -> Vec<(String, crate::registry::Registration)> {
        self.lock()
            .registrations
            .iter()
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    }

    /// The registry as translation sees it now.
    pub fn registry(&self) -> Arc<Registry> {
        self.lock().registry.clone()
    }

    fn bump(&self, st: &mut State) {
        st.generation += 1;
        st.shared = None;
        st.views.clear();
        // Keep what the previous generation used: streams still on it
        // convert to the same Arcs, and unchanged types stay skippable.
        let keep_from = st.generation.saturating_sub(1);
        st.cache.retain(|_, c| c.used >= keep_from);
        self.generations.send_replace(st.generation);
    }

    /// Registry changes become generations at most once per
    /// [`REGISTRY_COALESCE`]: the first change after a quiet period at once,
    /// later ones together at the end of the period. A connect storm of
    /// 10,000 proxies is then a few dozen generations, not 10,000 (each
    /// rebuilding the registry and every class's view).
    fn registry_changed(&self, st: &mut State) {
        if st.registry_flush_scheduled {
            return;
        }
        let since = st.last_registry_flush.elapsed();
        let period = registry_coalesce(st.registrations.len());
        let (Some(me), Ok(rt), true) = (
            self.me.upgrade(),
            tokio::runtime::Handle::try_current(),
            since < period,
        ) else {
            self.flush_registry(st);
            return;
        };
        st.registry_flush_scheduled = true;
        rt.spawn(async move {
            tokio::time::sleep(period - since).await;
            let mut st = me.lock();
            st.registry_flush_scheduled = false;
            me.flush_registry(&mut st);
        });
    }

    fn flush_registry(&self, st: &mut State) {
        st.last_registry_flush = Instant::now();
        st.registry = Arc::new(st.registrations.registry());
        self.bump(st);
    }

    /// The health check of `node_id` found it `healthy` or not.
    pub fn set_healthy(&self, node_id: &str, healthy: bool) {
        let mut st = self.lock();
        if st.registrations.set_healthy(node_id, healthy) {
            self.registry_changed(&mut st);
            self.note_unsaved(&st);
        }
    }

    /// Registers what the store held at start (`Store::registrations`), as
    /// disconnected since now: each is in the registry (and every proxy's
    /// EDS) at once, with its last known health, and leaves after the grace
    /// unless its proxy reconnects. Call before serving xDS, inside the
    /// runtime (expiry and probers are tasks). Returns how many.
    pub fn restore(&self, stored: Vec<(String, Vec<u8>)>) -> usize {
        let mut st = self.lock();
        let (restored, unreadable) = st.registrations.restore(stored, Instant::now());
        for (node, reason) in &unreadable {
            tracing::warn!(%node, %reason, "stored registration cannot be read; forgotten");
        }
        for node_id in &restored {
            self.sync_prober(&mut st, node_id);
            self.expire_later(node_id.clone());
        }
        if !restored.is_empty() {
            self.registry_changed(&mut st);
        }
        self.note_unsaved(&st);
        restored.len()
    }

    /// Waits until registrations have changes to persist (returns at once
    /// if some arrived since the last [`Mesh::take_unsaved_registrations`]).
    pub async fn unsaved_registrations(&self) {
        self.saves.notified().await;
    }

    /// The registrations to write to the store: (node id, stored form, or
    /// None to delete). What changed since the last call, coalesced: a
    /// node that changed ten times is one entry.
    pub fn take_unsaved_registrations(&self) -> Vec<(String, Option<Vec<u8>>)> {
        self.lock().registrations.take_unsaved()
    }

    /// A save of these node ids failed: keep them for the next one.
    pub fn retry_unsaved_registrations(&self, node_ids: impl IntoIterator<Item = String>) {
        let mut st = self.lock();
        st.registrations.mark_unsaved(node_ids);
        self.note_unsaved(&st);
    }

    fn note_unsaved(&self, st: &State) {
        if st.registrations.has_unsaved() {
            // Stores a permit if the writer is busy: no change is missed.
            self.saves.notify_one();
        }
    }

    /// Starts, restarts or stops `node_id`'s prober to match its
    /// registration (a check, what it probes).
    fn sync_prober(&self, st: &mut State, node_id: &str) {
        let want = match st.registrations.get(node_id).map(|r| &r.info) {
            Some(Ok(i)) => i.health_check.as_ref().and_then(|c| {
                let ip = *i.workload.addresses.first()?;
                Some((c.clone(), SocketAddr::new(ip, c.port)))
            }),
            _ => None,
        };
        let healthy = matches!(
            st.registrations.get(node_id).map(|r| &r.info),
            Some(Ok(i)) if i.workload.healthy
        );
        if let (Some(p), Some((check, target))) = (st.probers.get(node_id), &want)
            && p.check == *check
            && p.target == *target
        {
            return;
        }
        if let Some(p) = st.probers.remove(node_id) {
            p.task.abort();
        }
        let Some((check, target)) = want else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let run = crate::health::run(
            self.me.clone(),
            node_id.to_string(),
            check.clone(),
            target,
            healthy,
        );
        let task = rt.spawn(run).abort_handle();
        st.probers.insert(
            node_id.to_string(),
            Prober {
                check,
                target,
                task,
            },
        );
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every write is a plain field update: consistent after a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn expire_later(&self, node_id: String) {
        let (Some(me), Ok(rt)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let grace = self.grace;
        rt.spawn(async move {
            tokio::time::sleep(grace).await;
            let mut st = me.lock();
            if st.registrations.expire(&node_id, grace, Instant::now()) {
                tracing::info!(node = %node_id, "workload deregistered (disconnected for the grace period)");
                st.served.remove(&node_id);
                st.nodes.remove(&node_id);
                me.sync_prober(&mut st, &node_id);
                me.registry_changed(&mut st);
            }
            // Also an unusable node's removal, which is no registry change.
            me.note_unsaved(&st);
        });
    }
}

/// Per resource, a hash of its document, to tell which ones a store
/// generation changed. Returns whether one that node views read
/// ([`node_input`]) appeared, changed or went.
fn update_changed_at(changed_at: &mut HashMap<Key, (u64, u64)>, snap: &store::Snapshot) -> bool {
    let now = fingerprints(&snap.resources);
    let mut inputs = false;
    changed_at.retain(|k, _| {
        let kept = now.contains_key(k);
        inputs |= !kept && node_input(k.kind);
        kept
    });
    for (key, hash) in now {
        match changed_at.get(&key) {
            Some((_, h)) if *h == hash => {}
            _ => {
                inputs |= node_input(key.kind);
                changed_at.insert(key, (snap.generation, hash));
            }
        }
    }
    inputs
}

/// Whether a kind is read by [`Mesh::node_view`] (a Sidecar limits what a
/// node sees) or its own listeners (RBAC, inbound mTLS).
fn node_input(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Sidecar | Kind::AuthorizationPolicy | Kind::PeerAuthentication
    )
}

fn fingerprints(set: &ResourceSet) -> HashMap<Key, u64> {
    fn add<S: serde::Serialize>(
        out: &mut HashMap<Key, u64>,
        kind: Kind,
        objects: &[trellis_model::resource::Object<S>],
    ) {
        for o in objects {
            let mut h = Fnv::new();
            // Serializing a parsed resource cannot fail (plain data).
            h.write(&serde_json::to_vec(o).unwrap_or_default());
            out.insert(
                Key::new(kind, &o.metadata.namespace, &o.metadata.name),
                h.finish(),
            );
        }
    }
    let mut out = HashMap::new();
    add(&mut out, Kind::ServiceEntry, &set.service_entries);
    add(&mut out, Kind::DestinationRule, &set.destination_rules);
    add(&mut out, Kind::VirtualService, &set.virtual_services);
    add(&mut out, Kind::RateLimitPolicy, &set.rate_limit_policies);
    add(&mut out, Kind::RetryBudget, &set.retry_budgets);
    add(&mut out, Kind::Sidecar, &set.sidecars);
    add(
        &mut out,
        Kind::AuthorizationPolicy,
        &set.authorization_policies,
    );
    add(
        &mut out,
        Kind::PeerAuthentication,
        &set.peer_authentications,
    );
    out
}

/// A node without usable metadata still gets what its namespace (default)
/// may see, but no listeners: its address is unknown.
fn without_listeners(mut snap: trellis_translate::Snapshot) -> trellis_translate::Snapshot {
    snap.resources.remove(LISTENER_TYPE);
    if let Some(c) = snap.resources.get_mut(CLUSTER_TYPE) {
        c.remove(INBOUND_APP_CLUSTER);
    }
    snap
}

/// translate's resource as the server serves it. translate's hash is the
/// same FNV-1a over type URL and bytes as the server's default version: no
/// need to hash again.
fn served(r: &trellis_translate::Resource) -> trellis_xds::Resource {
    trellis_xds::Resource::with_version(r.any.clone(), r.version())
}

fn placeholder_identity(node: &Node) -> ProxyIdentity {
    ProxyIdentity {
        name: node.id.clone(),
        namespace: "default".into(),
        address: std::net::Ipv4Addr::LOCALHOST.into(),
        outbound_port: 0,
        inbound_port: 0,
        app: crate::registry::DEFAULT_APP,
        locality: None,
        egress: None,
        proxyless: false,
        labels: Default::default(),
        vhds: false,
    }
}

impl State {
    /// translate's snapshot as the xDS server's, sharing per-type maps.
    fn convert(
        &mut self,
        snap: &trellis_translate::Snapshot,
        generation: u64,
    ) -> trellis_xds::Snapshot {
        let mut out = trellis_xds::Snapshot::new();
        for (type_url, map) in &snap.resources {
            let mut h = Fnv::new();
            for (name, r) in map {
                h.write(name.as_bytes());
                h.write(&[0]);
                h.write(&r.hash.to_le_bytes());
            }
            let cached = self
                .cache
                .entry((type_url, h.finish()))
                .or_insert_with(|| Cached {
                    resources: Arc::new(
                        map.iter()
                            .map(|(name, r)| (name.clone(), served(r)))
                            .collect(),
                    ),
                    used: generation,
                });
            cached.used = cached.used.max(generation);
            out.set_type(type_url, cached.resources.clone());
        }
        if !self.secrets.is_empty() {
            out.set_type(trellis_xds::type_url::SECRET, self.secrets.clone());
        }
        out
    }
}

impl Snapshots for Mesh {
    fn snapshot(&self, node: &Node) -> Arc<trellis_xds::Snapshot> {
        let (shared, node_view, cached, generation, store_generation) = {
            let mut st = self.lock();
            let shared = match &st.shared {
                Some(s) => s.clone(),
                None => {
                    // Once per generation, under the lock: streams asking at
                    // the same time wait for this one result.
                    let started = Instant::now();
                    let prev = st
                        .last_shared
                        .as_ref()
                        .filter(|(g, _)| *g == st.store.generation)
                        .map(|(_, s)| s.clone());
                    let s = Arc::new(trellis_translate::shared_since(
                        &st.store.validated,
                        &st.registry,
                        prev.as_deref(),
                    ));
                    st.last_shared = Some((st.store.generation, s.clone()));
                    for e in &s.errors {
                        tracing::warn!(error = %e, "left out of the proxies' config");
                    }
                    tracing::debug!(generation = st.generation, took = ?started.elapsed(), "translated");
                    st.shared = Some(s.clone());
                    s
                }
            };
            let node_view = Self::node_view(&mut st, node);
            let cached = match &node_view {
                NodeParts::Usable(v) => st.views.get(&v.facts.class).cloned(),
                NodeParts::Unusable(..) => None,
            };
            (
                shared,
                node_view,
                cached,
                st.generation,
                st.store.generation,
            )
        };
        // The class's view, unless another proxy of the class already made
        // it for this generation; computed without the lock.
        let class_view = match (cached, &node_view) {
            (Some(v), _) => v,
            (None, NodeParts::Usable(nv)) => {
                let view = trellis_translate::class_view(&shared, &nv.facts.identity);
                let mut st = self.lock();
                let out = Arc::new(st.convert(&view, generation));
                if st.generation == generation {
                    st.views.insert(nv.facts.class.clone(), out.clone());
                }
                out
            }
            (None, NodeParts::Unusable(identity, _)) => {
                let view = without_listeners(trellis_translate::class_view(&shared, identity));
                Arc::new(self.lock().convert(&view, generation))
            }
        };
        let (own, viewer) = match node_view {
            NodeParts::Usable(nv) => {
                let own = match nv.own {
                    Some(own) => own,
                    None => {
                        let made = trellis_translate::own_listeners(&shared, &nv.facts.identity);
                        let own = (!made.is_empty()).then(|| {
                            Arc::new(made.iter().map(|r| (r.name.clone(), served(r))).collect())
                        });
                        let mut st = self.lock();
                        if let Some(v) = st.nodes.get_mut(&node.id)
                            && v.revision == nv.revision
                            && v.inputs == nv.inputs
                        {
                            v.own = Some(own.clone());
                        }
                        own
                    }
                };
                (own, nv.facts.viewer.clone())
            }
            NodeParts::Unusable(_, viewer) => (None, viewer),
        };
        let out = match own {
            None => class_view,
            Some(listeners) => {
                let mut out = (*class_view).clone();
                out.set_type(LISTENER_TYPE, listeners);
                Arc::new(out)
            }
        };
        let out = match self
            .envoy_certs
            .secret(&node.id, std::time::SystemTime::now())
        {
            None => out,
            Some((secret, renew_at)) => {
                if let Some(at) = renew_at {
                    self.renew_at(at);
                }
                let mut with = (*out).clone();
                let mut secrets = with
                    .resources
                    .get(trellis_xds::type_url::SECRET)
                    .map(|m| (**m).clone())
                    .unwrap_or_default();
                secrets.insert(crate::envoy_certs::DEFAULT.to_owned(), secret);
                with.set_type(trellis_xds::type_url::SECRET, Arc::new(secrets));
                Arc::new(with)
            }
        };
        let served = Served {
            generation,
            store_generation,
            viewer,
            snapshot: Arc::downgrade(&out),
        };
        let mut st = self.lock();
        match st.served.get_mut(&node.id) {
            Some(s) => *s = served,
            None => {
                st.served.insert(node.id.clone(), served);
            }
        }
        out
    }

    fn generations(&self) -> watch::Receiver<u64> {
        self.generations.subscribe()
    }
}

impl XdsHooks for Mesh {
    fn on_connect(&self, conn: &Connection) {
        self.envoy_certs.connect(conn, std::time::SystemTime::now());
        // A stream that proved an identity with its token is registered as
        // that identity, whatever its metadata claims: callers' secure
        // naming lists the service accounts of the registered workloads,
        // and the certificate the proxy shows names the token's.
        let node = match self.envoy_certs.authenticated(conn) {
            Some(id) => {
                crate::registry::with_identity(&conn.node, id.namespace(), id.service_account())
            }
            None => conn.node.clone(),
        };
        let mut st = self.lock();
        let changed = st.registrations.connect(conn.id, &node);
        match st.registrations.get(&conn.node.id).map(|r| &r.info) {
            Some(Ok(i)) => tracing::info!(
                node = %conn.node.id,
                connection = conn.id,
                mode = conn.mode.as_str(),
                workload = %format!("{}/{}", i.workload.namespace, i.workload.name),
                address = %i.identity.address,
                "proxy connected"
            ),
            Some(Err(e)) => tracing::warn!(
                node = %conn.node.id,
                connection = conn.id,
                error = %e,
                "proxy connected, but its workload cannot be registered; it gets no listeners"
            ),
            None => {}
        }
        self.sync_prober(&mut st, &conn.node.id);
        if changed {
            self.registry_changed(&mut st);
        }
        self.note_unsaved(&st);
    }

    fn on_disconnect(&self, conn: &Connection) {
        self.envoy_certs.disconnect(conn);
        let gone = {
            let mut st = self.lock();
            st.registrations
                .disconnect(conn.id, &conn.node.id, Instant::now());
            st.registrations
                .get(&conn.node.id)
                .is_some_and(|r| r.streams.is_empty())
        };
        tracing::info!(node = %conn.node.id, connection = conn.id, "proxy disconnected");
        if gone {
            self.expire_later(conn.node.id.clone());
        }
    }

    fn on_nack(&self, conn: &Connection, nack: &Nack) {
        tracing::warn!(
            node = %conn.node.id,
            connection = conn.id,
            r#type = trellis_xds::type_url::short_name(&nack.type_url),
            rejected_version = %nack.rejected_version,
            running_version = %nack.client_version,
            message = %nack.message,
            "proxy rejected its config (NACK); it keeps running its previous one"
        );
    }
}

/// Whether a stream's proxy has ACKed everything it was sent (no response
/// pending, no NACK since).
pub fn in_sync(status: &ConnectionStatus) -> bool {
    status
        .types
        .values()
        .filter(|t| t.sent_version.is_some())
        .all(|t| !t.pending && t.acked_version == t.sent_version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_xds::envoy_types::pb::google::protobuf::{Struct, Value, value::Kind as VKind};

    fn node(id: &str, ns: &str, address: &str) -> Node {
        let s = |v: &str| Value {
            kind: Some(VKind::StringValue(v.into())),
        };
        Node {
            id: id.into(),
            metadata: Some(Struct {
                fields: [("NAMESPACE", s(ns)), ("ADDRESS", s(address))]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }),
            ..Default::default()
        }
    }

    impl Mesh {
        fn on_connect_for_test(&self, conn: u64, node: &Node) {
            let mut st = self.lock();
            if st.registrations.connect(conn, node) {
                self.registry_changed(&mut st);
            }
        }
    }

    fn store_snapshot(generation: u64, yaml: &str) -> Arc<store::Snapshot> {
        let docs = trellis_model::parse_documents("t.yaml", yaml).unwrap();
        let mut resources = ResourceSet::default();
        for d in docs {
            resources.push(d);
        }
        let validated = trellis_model::validate::validate(&resources).unwrap();
        Arc::new(store::Snapshot {
            generation,
            resources,
            validated,
            conflicts: vec![],
        })
    }

    const SE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 10.0.0.1}]
";

    /// A VirtualService for [`SE`]'s host: a change of routes only.
    const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}], timeout: 3s}]
";

    #[test]
    fn a_resource_is_held_by_the_proxies_whose_view_has_it() {
        let local = SE.replace("endpoints:", "exportTo: [\".\"]\n  endpoints:");
        let sidecar = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: none, namespace: narrow}
spec:
  egress: [{hosts: [./*]}]
";
        let mesh = Mesh::new(
            store_snapshot(1, &format!("{local}---\n{sidecar}")),
            DEFAULT_REGISTRATION_GRACE,
        );
        for (id, ns) in [("a", "default"), ("b", "other"), ("c", "narrow")] {
            mesh.snapshot(&node(id, ns, "127.0.0.2"));
        }
        let se = Key::new(Kind::ServiceEntry, "default", "reviews");
        let sc = Key::new(Kind::Sidecar, "narrow", "none");
        let held = |id: &str, key: &Key| mesh.holds(id, key).map(|(_, h)| h);
        assert_eq!(held("a", &se), Some(true));
        assert_eq!(held("b", &se), Some(false), "exportTo: [.]");
        assert_eq!(held("c", &se), Some(false));
        assert_eq!(held("c", &sc), Some(true));
        assert_eq!(held("a", &sc), Some(false));
        assert_eq!(held("unknown", &se), None);
    }

    #[test]
    fn proxies_share_per_type_maps_and_unchanged_types_keep_their_arc() {
        let mesh = Mesh::new(store_snapshot(1, SE), DEFAULT_REGISTRATION_GRACE);
        let a = mesh.snapshot(&node("a", "default", "127.0.0.2"));
        let b = mesh.snapshot(&node("b", "default", "127.0.0.3"));
        let c = mesh.snapshot(&node("c", "other", "127.0.0.4"));
        let ty = |s: &trellis_xds::Snapshot, t: &str| s.of_type(t).unwrap().clone();
        let endpoints = trellis_translate::names::ENDPOINT_TYPE;
        let routes = trellis_translate::names::ROUTE_TYPE;
        // Same endpoints for everyone; listeners differ by address; routes
        // by namespace (short names).
        assert!(Arc::ptr_eq(&ty(&a, endpoints), &ty(&c, endpoints)));
        assert!(Arc::ptr_eq(&ty(&a, routes), &ty(&b, routes)));
        assert!(!Arc::ptr_eq(&ty(&a, routes), &ty(&c, routes)));
        assert!(!Arc::ptr_eq(&ty(&a, LISTENER_TYPE), &ty(&b, LISTENER_TYPE)));
        assert_eq!(mesh.served("a").unwrap().store_generation, 1);

        // A new store generation that changes only the routes: the
        // clusters keep their Arc.
        mesh.set_store(
            &mut mesh.lock(),
            store_snapshot(2, &format!("{SE}---\n{VS}")),
        );
        let a2 = mesh.snapshot(&node("a", "default", "127.0.0.2"));
        assert!(Arc::ptr_eq(&ty(&a, CLUSTER_TYPE), &ty(&a2, CLUSTER_TYPE)));
        assert!(!Arc::ptr_eq(&ty(&a, routes), &ty(&a2, routes)));
        assert_eq!(mesh.generation(), 2);
        let key = |k, n: &str| Key::new(k, "default", n);
        assert_eq!(
            mesh.changed_at(&key(Kind::ServiceEntry, "reviews")),
            Some(1)
        );
        assert_eq!(
            mesh.changed_at(&key(Kind::VirtualService, "reviews")),
            Some(2)
        );
    }

    #[test]
    fn registry_changes_coalesce_longer_in_a_larger_mesh() {
        for (workloads, ms) in [
            (0, 100),
            (1_000, 100),
            (5_000, 150),
            (10_000, 300),
            (50_000, 300),
        ] {
            assert_eq!(
                registry_coalesce(workloads),
                Duration::from_millis(ms),
                "{workloads} workloads"
            );
        }
    }

    #[test]
    fn own_listeners_are_reused_until_the_config_or_the_identity_changes() {
        let mesh = Mesh::new(store_snapshot(1, SE), DEFAULT_REGISTRATION_GRACE);
        let listeners = |id: &str, address: &str| {
            let s = mesh.snapshot(&node(id, "default", address));
            s.of_type(LISTENER_TYPE).unwrap().clone()
        };
        mesh.on_connect_for_test(1, &node("a", "default", "127.0.0.2"));
        let first = listeners("a", "127.0.0.2");
        // A registry-only generation (a workload joined elsewhere): the
        // same listeners, not encoded again.
        mesh.on_connect_for_test(2, &node("b", "default", "127.0.0.3"));
        mesh.bump(&mut mesh.lock());
        assert!(Arc::ptr_eq(&first, &listeners("a", "127.0.0.2")));
        // The proxy's identity changed (it reconnected with another address).
        mesh.on_connect_for_test(3, &node("a", "default", "127.0.0.9"));
        let moved = listeners("a", "127.0.0.9");
        assert!(!Arc::ptr_eq(&first, &moved));
        assert_ne!(first, moved);
        // A VirtualService changed: nothing a node's own listeners read.
        mesh.set_store(
            &mut mesh.lock(),
            store_snapshot(2, &format!("{SE}---\n{VS}")),
        );
        assert!(Arc::ptr_eq(&moved, &listeners("a", "127.0.0.9")));
        // An AuthorizationPolicy now selects it.
        let deny = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all}
spec: {action: DENY, rules: [{}]}
";
        let policy = format!("{SE}---\n{VS}---\n{deny}");
        mesh.set_store(&mut mesh.lock(), store_snapshot(3, &policy));
        let policed = listeners("a", "127.0.0.9");
        assert_ne!(moved, policed, "the RBAC filter is in the inbound listener");
        // And goes away again.
        mesh.set_store(
            &mut mesh.lock(),
            store_snapshot(4, &format!("{SE}---\n{VS}")),
        );
        assert_eq!(moved, listeners("a", "127.0.0.9"));
    }

    #[test]
    fn restored_workloads_are_endpoints_before_any_proxy_reconnects() {
        let selected = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  workloadSelector: {labels: {app: reviews}}
";
        let mut reviews = node("reviews-1.default", "default", "127.0.0.7");
        let labels = Value {
            kind: Some(VKind::StructValue(Struct {
                fields: [(
                    "app".to_string(),
                    Value {
                        kind: Some(VKind::StringValue("reviews".into())),
                    },
                )]
                .into_iter()
                .collect(),
            })),
        };
        let md = reviews.metadata.as_mut().unwrap();
        md.fields.insert("LABELS".into(), labels);
        // What the store holds after the first control plane saw it.
        let mut before = Registrations::default();
        before.connect(1, &reviews);
        let stored: Vec<(String, Vec<u8>)> = before
            .take_unsaved()
            .into_iter()
            .filter_map(|(id, b)| Some((id, b?)))
            .collect();

        let endpoints = |mesh: &Mesh| {
            let s = mesh.snapshot(&node("client.default", "default", "127.0.0.2"));
            let cla = &s.of_type(trellis_translate::names::ENDPOINT_TYPE).unwrap()["outbound|9080||reviews.default.svc.cluster.local"];
            format!("{:?}", cla.body.value)
        };
        let fresh = Mesh::new(store_snapshot(1, selected), DEFAULT_REGISTRATION_GRACE);
        let restarted = Mesh::new(store_snapshot(1, selected), DEFAULT_REGISTRATION_GRACE);
        assert_eq!(restarted.restore(stored), 1);
        assert_eq!(restarted.registry().workloads.len(), 1);
        assert!(restarted.take_unsaved_registrations().is_empty());
        // The first client to reconnect gets the same endpoints as before
        // the restart, where a registry from reconnects alone has none.
        let live = Mesh::new(store_snapshot(1, selected), DEFAULT_REGISTRATION_GRACE);
        live.on_connect_for_test(1, &reviews);
        assert_eq!(endpoints(&restarted), endpoints(&live));
        assert_ne!(endpoints(&fresh), endpoints(&live));
    }

    #[test]
    fn a_node_without_an_address_gets_no_listeners() {
        let mesh = Mesh::new(store_snapshot(1, SE), DEFAULT_REGISTRATION_GRACE);
        let mut n = node("x", "default", "127.0.0.2");
        n.metadata.as_mut().unwrap().fields.remove("ADDRESS");
        let s = mesh.snapshot(&n);
        assert!(s.of_type(LISTENER_TYPE).is_none());
        let clusters = s.of_type(CLUSTER_TYPE).unwrap();
        assert!(clusters.contains_key("outbound|9080||reviews.default.svc.cluster.local"));
        assert!(!clusters.contains_key(INBOUND_APP_CLUSTER));
    }
}
