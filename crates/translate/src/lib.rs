//! Trellis's validated config plus the workload registry -> Envoy v3 xDS
//! resources: Listener, RouteConfiguration, Cluster, ClusterLoadAssignment.
//!
//! Pure functions over plain data. The reference semantics are
//! trellis-proxy's (`crates/proxy/src/config/compile.rs`): a stock Envoy
//! given these resources routes like trellis-proxy does; what Envoy cannot
//! express is listed in `docs/xds.md`.
//!
//! Work is split so that a control plane with many proxies does the
//! expensive part once:
//!
//! - [`shared`] translates every service once: its clusters and endpoint
//!   assignments (encoded, hashed, behind `Arc`s), and its virtual hosts
//!   without their domains;
//! - [`class_view`] picks, for a class of proxies ([`ViewClass`]: same
//!   namespace, locality, Sidecar, kind and app), what they may see
//!   (`exportTo`, and a Sidecar's egress hosts when given) and adds the
//!   domains the namespace uses for each host; [`own_listeners`] are the
//!   two listeners only one sidecar has (its address); [`view`] is both.
//!   Shared resources are not copied: a [`Snapshot`] holds `Arc`s.
//!
//! [`translate`] does both for one proxy.

pub mod cluster;
pub mod encode;
pub mod endpoint;
pub mod error;
pub mod inline;
pub mod listener;
pub mod names;
pub mod proxyless;
pub mod rbac;
pub mod registry;
pub mod route;
pub mod tls;

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use trellis_model::authorization::AuthorizationPolicySpec;
use trellis_model::host;
use trellis_model::peer_authentication::PeerAuthenticationSpec;
use trellis_model::resource::Object;
use trellis_model::validate::Validated;

pub use encode::Resource;
pub use error::TranslateError;
pub use registry::{Registry, Workload};
pub use trellis_model::sidecar::EgressHost;

use crate::cluster::{ClusterSpec, encode_assignment, encode_cluster};
use crate::endpoint::{EndpointInfo, LocalityPolicy};
use crate::names::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, VIRTUAL_HOST_TYPE};
use crate::route::{PortFilter, VhostBody};

/// The proxy a snapshot is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyIdentity {
    /// The workload's name (the xDS node id).
    pub name: String,
    /// Short names resolve in it, and `exportTo` is checked against it.
    pub namespace: String,
    /// The listeners bind `address:outbound_port` and `address:inbound_port`.
    pub address: IpAddr,
    /// The outbound listener's port: [`names::OUTBOUND_PORT`] (15001) unless
    /// the node asks for another (tests, several proxies on one address).
    pub outbound_port: u16,
    /// The inbound listener's port: [`names::INBOUND_PORT`] (15006) unless
    /// the node asks for another.
    pub inbound_port: u16,
    /// Where the inbound listener forwards: the local app.
    pub app: SocketAddr,
    /// Istio's `region/zone/subzone`: endpoint priorities are relative to it.
    pub locality: Option<String>,
    /// The egress hosts of the Istio `Sidecar` that applies to the proxy's
    /// workload ([`trellis_model::sidecar::egress_hosts`]). `None`: no
    /// Sidecar applies and everything the namespace may see is sent.
    pub egress: Option<Vec<EgressHost>>,
    /// A proxyless gRPC client (node metadata `GENERATOR: grpc`): it gets
    /// named `api_listener`s per service port instead of the sidecar's
    /// two listeners ([`proxyless`]).
    pub proxyless: bool,
    /// The workload's labels: which AuthorizationPolicies and
    /// PeerAuthentications apply to it. `security.istio.io/tlsMode: istio`
    /// says it has a workload certificate (mTLS on its inbound listener).
    pub labels: BTreeMap<String, String>,
    /// The proxy takes its route table's virtual hosts by VHDS (node
    /// metadata `VHDS`; Envoy over delta ADS): its RouteConfiguration holds
    /// none, and each is a VirtualHost resource ([`names::vhds`]).
    pub vhds: bool,
}

/// Istio's `exportTo`: who may see a resource. Empty means everyone.
pub fn visible(export_to: &[String], owner_ns: &str, viewer_ns: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == viewer_ns || (e == "." && owner_ns == viewer_ns))
}

fn exported_to_all(export_to: &[String]) -> bool {
    export_to.is_empty() || export_to.iter().any(|e| e == "*")
}

/// One proxy's resources, by type URL ([`names::TYPES`]) and name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub resources: BTreeMap<&'static str, BTreeMap<String, Arc<Resource>>>,
}

impl Snapshot {
    /// The resources of one type (an empty map for a type with none).
    pub fn of_type(&self, type_url: &str) -> Option<&BTreeMap<String, Arc<Resource>>> {
        self.resources.get(type_url)
    }

    pub fn get(&self, type_url: &str, name: &str) -> Option<&Arc<Resource>> {
        self.resources.get(type_url)?.get(name)
    }

    fn insert(&mut self, type_url: &'static str, r: Arc<Resource>) {
        self.resources
            .entry(type_url)
            .or_default()
            .insert(r.name.clone(), r);
    }
}

/// The endpoint assignments of one EDS cluster.
#[derive(Debug, Clone)]
struct Assignments {
    /// As a proxy without a locality (or with locality balancing off) sees it.
    default: Arc<Resource>,
    /// Per proxy locality, for clusters whose endpoints span localities.
    by_locality: BTreeMap<String, Arc<Resource>>,
    /// Set when priorities depend on the proxy's locality: what a locality
    /// not in `by_locality` is computed from.
    sensitive: Option<(Vec<EndpointInfo>, LocalityPolicy)>,
}

impl Assignments {
    fn for_locality(&self, locality: Option<&str>) -> Arc<Resource> {
        let (Some(l), Some((eps, policy))) = (locality.filter(|l| !l.is_empty()), &self.sensitive)
        else {
            return self.default.clone();
        };
        if let Some(r) = self.by_locality.get(l) {
            return r.clone();
        }
        let refs: Vec<&EndpointInfo> = eps.iter().collect();
        let cla = endpoint::load_assignment(&self.default.name, &refs, Some(l), policy);
        Arc::new(Resource::new(
            self.default.name.clone(),
            ENDPOINT_TYPE,
            encode_assignment(&cla),
        ))
    }
}

#[derive(Debug, Clone)]
struct SharedCluster {
    cluster: Arc<Resource>,
    /// EDS clusters only.
    assignments: Option<Assignments>,
    /// `cluster` as proxyless gRPC clients get it, made on first use.
    proxyless: std::sync::OnceLock<Arc<Resource>>,
}

impl SharedCluster {
    fn for_proxy(&self, proxyless: bool) -> Arc<Resource> {
        if !proxyless {
            return self.cluster.clone();
        }
        self.proxyless
            .get_or_init(|| match proxyless::cluster(&self.cluster.any.value) {
                Ok(bytes) => Arc::new(Resource::new(
                    self.cluster.name.clone(),
                    CLUSTER_TYPE,
                    bytes,
                )),
                // Our own encoding: it decodes.
                Err(_) => self.cluster.clone(),
            })
            .clone()
    }
}

/// A virtual host of one port (None: any port) of a host.
#[derive(Debug, Clone)]
struct PortVhost {
    port: Option<u16>,
    /// Without a VirtualService (services only).
    default: Option<VhostBody>,
    /// With the host's VirtualService, when it routes this port.
    routed: Option<VhostBody>,
}

#[derive(Debug, Clone)]
struct SharedService {
    namespace: String,
    export_to: Vec<String>,
    /// Clusters as namespaces that see the DestinationRule get them.
    clusters: Vec<SharedCluster>,
    /// Clusters without the rule, for namespaces it is not exported to
    /// (only computed when the rule is not exported to everyone).
    clusters_without_rule: Option<Vec<SharedCluster>>,
    /// `exportTo` and namespace of the DestinationRule.
    rule_visibility: Option<(Vec<String>, String)>,
    /// `exportTo` and namespace of the VirtualService.
    vs_visibility: Option<(Vec<String>, String)>,
    vhosts: Vec<PortVhost>,
    /// What it was translated from besides the config: per port, its
    /// endpoints ([`shared_since`] reuses the service while they stay).
    endpoints: Vec<Vec<EndpointInfo>>,
    /// The registry's workloads its selector picked, as shared with the
    /// registry: held so that an unchanged `Arc` proves an unchanged
    /// workload (its address cannot be reused while held here).
    selected: Vec<Arc<Workload>>,
    /// What was left out of it, and why.
    errors: Vec<TranslateError>,
}

/// A VirtualService host that is not a service (`*.example.org`, or a name
/// no ServiceEntry defines).
#[derive(Debug, Clone)]
struct SharedHost {
    vs_visibility: (Vec<String>, String),
    vhosts: Vec<PortVhost>,
    errors: Vec<TranslateError>,
}

/// Everything that does not depend on the proxy, computed once.
#[derive(Debug, Clone, Default)]
pub struct SharedResources {
    services: BTreeMap<String, Arc<SharedService>>,
    hosts: Arc<BTreeMap<String, SharedHost>>,
    /// The registry's localities it was translated for.
    localities: Vec<String>,
    /// Resources left out, and why. Validated config should produce none.
    pub errors: Vec<TranslateError>,
    /// Every AuthorizationPolicy; [`own_listeners`] picks those that apply
    /// to the proxy's workload.
    authorization_policies: Arc<Vec<Object<AuthorizationPolicySpec>>>,
    /// Every PeerAuthentication, in precedence order; [`own_listeners`]
    /// picks the one that applies to the proxy's workload.
    peer_authentications: Arc<Vec<Object<PeerAuthenticationSpec>>>,
}

impl SharedResources {
    /// Names of every cluster translated (any namespace's view).
    pub fn cluster_names(&self) -> Vec<String> {
        self.services
            .values()
            .flat_map(|s| s.clusters.iter().map(|c| c.cluster.name.clone()))
            .collect()
    }
}

/// Translates what every proxy shares: per service its clusters, endpoint
/// assignments and virtual hosts; per other VirtualService host its virtual
/// hosts.
pub fn shared(v: &Validated, registry: &Registry) -> SharedResources {
    shared_since(v, registry, None)
}

/// [`shared`], reusing from `prev` every service whose endpoints (and the
/// registry's localities) did not change, and the VirtualService-only hosts.
/// `prev` must come from the same `v`: a control plane passes it when only
/// the registry changed (workloads joining, leaving, changing health), so
/// that a registration costs the services it is an endpoint of, not all.
pub fn shared_since(
    v: &Validated,
    registry: &Registry,
    prev: Option<&SharedResources>,
) -> SharedResources {
    let localities = registry.localities();
    let prev = prev.filter(|p| p.localities == localities);
    let mut services = BTreeMap::new();
    let mut errors = Vec::new();
    for (host, s) in &v.services {
        let selection = || {
            endpoint::workload_selector(s)
                .into_iter()
                .flat_map(|sel| registry.select(&s.namespace, sel))
        };
        let old = prev.and_then(|p| p.services.get(host));
        // The same workloads (same `Arc`s: none re-registered or changed
        // health) give the same endpoints, without building them again.
        // Under churn most services are in that case in every generation.
        if let Some(old) = old.filter(|o| same_workloads(&o.selected, selection())) {
            errors.extend(old.errors.iter().cloned());
            services.insert(host.clone(), old.clone());
            continue;
        }
        let selected: Vec<Arc<Workload>> = selection().cloned().collect();
        let endpoints: Vec<Vec<EndpointInfo>> = s
            .ports
            .iter()
            .map(|p| endpoint::service_endpoints(s, p, registry))
            .collect();
        let service = match old {
            Some(old) if old.endpoints == endpoints => Arc::new(SharedService {
                selected,
                ..(**old).clone()
            }),
            _ => Arc::new(shared_service(v, host, s, endpoints, selected, &localities)),
        };
        errors.extend(service.errors.iter().cloned());
        services.insert(host.clone(), service);
    }
    let hosts = match prev {
        Some(p) => {
            errors.extend(p.hosts.values().flat_map(|h| h.errors.iter().cloned()));
            p.hosts.clone()
        }
        None => {
            let hosts = shared_hosts(v);
            errors.extend(hosts.values().flat_map(|h| h.errors.iter().cloned()));
            Arc::new(hosts)
        }
    };
    let authorization_policies = match prev {
        Some(p) if *p.authorization_policies == v.authorization_policies => {
            p.authorization_policies.clone()
        }
        _ => Arc::new(v.authorization_policies.clone()),
    };
    let peer_authentications = match prev {
        Some(p) if *p.peer_authentications == v.peer_authentications => {
            p.peer_authentications.clone()
        }
        _ => Arc::new(v.peer_authentications.clone()),
    };
    SharedResources {
        services,
        hosts,
        localities,
        errors,
        authorization_policies,
        peer_authentications,
    }
}

fn shared_service(
    v: &Validated,
    host: &String,
    s: &trellis_model::validate::Service,
    endpoints: Vec<Vec<EndpointInfo>>,
    selected: Vec<Arc<Workload>>,
    localities: &[String],
) -> SharedService {
    let mut errors = Vec::new();
    let rule = v.destination_rules.get(host);
    let budget = v.retry_budgets.get(host).map(|b| &b.spec);
    let build = |with_rule: bool, errors: &mut Vec<TranslateError>| {
        let rule = rule.filter(|_| with_rule);
        let mut clusters = Vec::new();
        for (port, eps) in s.ports.iter().zip(&endpoints) {
            let key = rule.map(|r| r.key());
            let base = ClusterSpec {
                service: s,
                port,
                rule_policy: rule.and_then(|r| r.spec.traffic_policy.as_ref()),
                subset: None,
                budget,
                rule_key: key.as_deref(),
            };
            let mut specs = vec![base];
            if let Some(r) = rule {
                specs.extend(r.spec.subsets.iter().map(|sub| ClusterSpec {
                    subset: Some(sub),
                    ..base
                }));
            }
            for spec in specs {
                match shared_cluster(&spec, eps, localities) {
                    Ok(c) => clusters.push(c),
                    Err(e) => errors.push(e),
                }
            }
        }
        clusters
    };
    let clusters = build(true, &mut errors);
    let clusters_without_rule = rule
        .filter(|r| !exported_to_all(&r.spec.export_to))
        .map(|_| build(false, &mut errors));

    let ctx = route::Ctx { v, host };
    let vs = v
        .virtual_services
        .iter()
        .find(|(hosts, _)| hosts.contains(host));
    let host_limit = match ctx.host_rate_limit() {
        Ok(l) => l,
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let mut vhosts = Vec::new();
    for port in &s.ports {
        let http = port.protocol.is_http();
        let limit = host_limit.as_ref().filter(|_| http);
        let name = names::virtual_host(host, Some(port.number));
        let default = route::vhost_body(&name, vec![ctx.default_route(port.number, http)], limit);
        let filter = PortFilter::Port(port.number);
        let routed = vs.and_then(|(_, vs)| {
            let routes = if http {
                (!vs.spec.http.is_empty())
                    .then(|| ctx.http_routes(vs, Some(port.number), filter, &mut errors))
            } else {
                (!vs.spec.tcp.is_empty())
                    .then(|| ctx.tcp_routes(vs, Some(port.number), filter, &mut errors))
            };
            routes.map(|r| route::vhost_body(&name, r, limit))
        });
        vhosts.push(PortVhost {
            port: Some(port.number),
            default: Some(default),
            routed,
        });
    }
    SharedService {
        namespace: s.namespace.clone(),
        export_to: s.export_to.clone(),
        clusters,
        clusters_without_rule,
        rule_visibility: rule.map(|r| (r.spec.export_to.clone(), r.metadata.namespace.clone())),
        vs_visibility: vs.map(|(_, vs)| (vs.spec.export_to.clone(), vs.metadata.namespace.clone())),
        vhosts,
        endpoints,
        selected,
        errors,
    }
}

fn same_workloads<'a>(
    held: &[Arc<Workload>],
    mut now: impl Iterator<Item = &'a Arc<Workload>>,
) -> bool {
    let mut held = held.iter();
    now.all(|w| held.next().is_some_and(|h| Arc::ptr_eq(w, h))) && held.next().is_none()
}

fn shared_hosts(v: &Validated) -> BTreeMap<String, SharedHost> {
    let mut out = BTreeMap::new();
    for (hosts, vs) in &v.virtual_services {
        for host in hosts.iter().filter(|h| !v.services.contains_key(*h)) {
            let ctx = route::Ctx { v, host };
            let mut errors = Vec::new();
            let limit = match ctx.host_rate_limit() {
                Ok(l) => l,
                Err(e) => {
                    errors.push(e);
                    None
                }
            };
            let http = !vs.spec.http.is_empty();
            let limit = limit.as_ref().filter(|_| http);
            // One virtual host per port a match block names, then one for
            // any port (trellis-proxy evaluates `port` per request).
            let filters = route::match_ports(&vs.spec)
                .into_iter()
                .map(|p| (Some(p), PortFilter::Port(p)))
                .chain([(None, PortFilter::Unconditional)]);
            let mut vhosts = Vec::new();
            for (port, filter) in filters {
                let routes = if http {
                    ctx.http_routes(vs, None, filter, &mut errors)
                } else {
                    ctx.tcp_routes(vs, None, filter, &mut errors)
                };
                let name = names::virtual_host(host, port);
                vhosts.push(PortVhost {
                    port,
                    default: None,
                    routed: Some(route::vhost_body(&name, routes, limit)),
                });
            }
            out.insert(
                host.clone(),
                SharedHost {
                    vs_visibility: (vs.spec.export_to.clone(), vs.metadata.namespace.clone()),
                    vhosts,
                    errors,
                },
            );
        }
    }
    out
}

fn shared_cluster(
    spec: &ClusterSpec,
    endpoints: &[EndpointInfo],
    localities: &[String],
) -> Result<SharedCluster, TranslateError> {
    let built = cluster::build(spec, endpoints)?;
    let name = built.cluster.name.clone();
    let assignments = built.eds.then(|| {
        let eps = endpoint::in_subset(endpoints, spec.subset.map(|s| &s.labels));
        let encode = |local: Option<&str>| {
            let cla = endpoint::load_assignment(&name, &eps, local, &built.locality);
            Arc::new(Resource::new(
                name.clone(),
                ENDPOINT_TYPE,
                encode_assignment(&cla),
            ))
        };
        let default = encode(None);
        let sensitive = endpoint::locality_sensitive(&eps, &built.locality);
        let by_locality = if sensitive {
            localities
                .iter()
                .map(|l| {
                    let r = encode(Some(l));
                    // Share the default's allocation where nothing differs.
                    let r = if r.hash == default.hash {
                        default.clone()
                    } else {
                        r
                    };
                    (l.clone(), r)
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        Assignments {
            default,
            by_locality,
            sensitive: sensitive
                .then(|| (eps.into_iter().cloned().collect(), built.locality.clone())),
        }
    });
    Ok(SharedCluster {
        cluster: Arc::new(Resource::new(
            name.clone(),
            CLUSTER_TYPE,
            encode_cluster(&built.cluster),
        )),
        assignments,
        proxyless: Default::default(),
    })
}

/// A virtual host body for one port (None: any port).
type PortBody<'a> = (Option<u16>, &'a VhostBody);

fn egress_allows(proxy: &ProxyIdentity, host_ns: &str, host: &str) -> bool {
    trellis_model::sidecar::allows(proxy.egress.as_deref(), &proxy.namespace, host_ns, host)
}

/// The part of a proxy's snapshot its [`ViewClass`] decides (all but the
/// sidecar's own listeners): no translation, no re-encoding of shared
/// resources; the route table is assembled from encoded virtual hosts.
/// Only the fields of `proxy` in [`ViewClass`] are read.
pub fn class_view(shared: &SharedResources, proxy: &ProxyIdentity) -> Snapshot {
    let ns = proxy.namespace.as_str();
    let mut snap = Snapshot::default();
    // Host name -> (aliases, per-port virtual hosts), in name order.
    let mut tables: BTreeMap<String, (Vec<String>, Vec<PortBody>)> = BTreeMap::new();

    for (host, s) in &shared.services {
        if !visible(&s.export_to, &s.namespace, ns) || !egress_allows(proxy, &s.namespace, host) {
            continue;
        }
        let rule_seen = s
            .rule_visibility
            .as_ref()
            .is_none_or(|(e, owner)| visible(e, owner, ns));
        let clusters = match (&s.clusters_without_rule, rule_seen) {
            (Some(without), false) => without,
            _ => &s.clusters,
        };
        for c in clusters {
            snap.insert(CLUSTER_TYPE, c.for_proxy(proxy.proxyless));
            if let Some(a) = &c.assignments {
                snap.insert(ENDPOINT_TYPE, a.for_locality(proxy.locality.as_deref()));
            }
        }
        let vs_seen = s
            .vs_visibility
            .as_ref()
            .is_some_and(|(e, owner)| visible(e, owner, ns));
        let vhosts = s
            .vhosts
            .iter()
            .filter_map(|pv| {
                let body = if vs_seen {
                    pv.routed.as_ref().or(pv.default.as_ref())
                } else {
                    pv.default.as_ref()
                };
                body.map(|b| (pv.port, b))
            })
            .collect();
        tables.insert(host.clone(), (host::aliases(host, ns), vhosts));
    }
    for (host, h) in shared.hosts.iter() {
        let (export_to, owner) = &h.vs_visibility;
        if !visible(export_to, owner, ns) || !egress_allows(proxy, owner, host) {
            continue;
        }
        let vhosts = h
            .vhosts
            .iter()
            .filter_map(|pv| pv.routed.as_ref().map(|b| (pv.port, b)))
            .collect();
        tables.insert(host.clone(), (vec![host.clone()], vhosts));
    }

    let aliases: BTreeMap<String, Vec<String>> = tables
        .iter()
        .map(|(h, (a, _))| (h.clone(), a.clone()))
        .collect();
    let claimed = route::claim_aliases(&aliases);
    if proxy.proxyless {
        proxyless_listeners(&mut snap, &tables, &claimed);
        return snap;
    }
    let mut used: HashSet<String> = HashSet::new();
    let mut vhosts: Vec<(&VhostBody, Vec<String>)> = Vec::new();
    for (host, (_, ports)) in &tables {
        let mine = claimed.get(host).map(Vec::as_slice).unwrap_or_default();
        for (port, body) in ports {
            // Envoy rejects a domain in two virtual hosts: a domain goes to
            // the first (a port's virtual host before the any-port one).
            let domains: Vec<String> = route::domains(mine, *port)
                .into_iter()
                .filter(|d| used.insert(d.clone()))
                .collect();
            if !domains.is_empty() {
                vhosts.push((body, domains));
            }
        }
    }
    if proxy.vhds {
        // A VirtualService change then sends one virtual host per proxy,
        // not its whole table (~100 KB at 200 hosts).
        snap.insert(
            ROUTE_TYPE,
            Arc::new(Resource::new(
                names::OUTBOUND,
                ROUTE_TYPE,
                route::assemble_vhds(names::OUTBOUND),
            )),
        );
        for (body, domains) in &vhosts {
            let name = names::vhds(names::OUTBOUND, &body.name);
            let bytes = body.encode(&name, domains);
            snap.insert(
                VIRTUAL_HOST_TYPE,
                Arc::new(Resource::new(name, VIRTUAL_HOST_TYPE, bytes)),
            );
        }
    } else {
        snap.insert(
            ROUTE_TYPE,
            Arc::new(Resource::new(
                names::OUTBOUND,
                ROUTE_TYPE,
                route::assemble(names::OUTBOUND, &vhosts),
            )),
        );
    }

    snap.insert(
        CLUSTER_TYPE,
        Arc::new(Resource::new(
            names::INBOUND_APP_CLUSTER,
            CLUSTER_TYPE,
            encode_cluster(&cluster::inbound_app(proxy.app)),
        )),
    );
    snap
}

/// The resources only this proxy has: a sidecar's two listeners, bound to
/// its own address (none for a proxyless client, whose listeners are named
/// by target). Everything else in its [`view`] is the same for every proxy
/// of its [`ViewClass`].
pub fn own_listeners(shared: &SharedResources, proxy: &ProxyIdentity) -> Vec<Arc<Resource>> {
    use prost::Message;
    if proxy.proxyless {
        return Vec::new();
    }
    let policies: Vec<&Object<AuthorizationPolicySpec>> = shared
        .authorization_policies
        .iter()
        .filter(|p| trellis_model::authorization::applies(p, &proxy.namespace, &proxy.labels))
        .collect();
    let outbound = listener::outbound(SocketAddr::new(proxy.address, proxy.outbound_port));
    // The app's port is the one `portLevelMtls` names (Istio: the
    // workload's port).
    let peer_auth = trellis_model::peer_authentication::effective(
        &shared.peer_authentications,
        &proxy.namespace,
        &proxy.labels,
        Some(proxy.app.port()),
    );
    let inbound = listener::inbound(
        SocketAddr::new(proxy.address, proxy.inbound_port),
        &rbac::inbound(&policies),
        &listener::InboundTls::of(&peer_auth, tls::is_istio(&proxy.labels)),
    );
    vec![
        Arc::new(Resource::new(
            names::OUTBOUND,
            LISTENER_TYPE,
            outbound.encode_to_vec(),
        )),
        Arc::new(Resource::new(
            names::INBOUND,
            LISTENER_TYPE,
            inbound.encode_to_vec(),
        )),
    ]
}

/// What a view depends on besides the shared resources, other than the
/// proxy's own listeners: proxies with equal classes get equal
/// [`class_view`]s, so a control plane computes one per class.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ViewClass {
    pub namespace: String,
    pub locality: Option<String>,
    pub egress: Option<Vec<EgressHost>>,
    pub proxyless: bool,
    pub app: SocketAddr,
    pub vhds: bool,
}

impl ViewClass {
    pub fn of(proxy: &ProxyIdentity) -> ViewClass {
        ViewClass {
            namespace: proxy.namespace.clone(),
            locality: proxy.locality.clone(),
            egress: proxy.egress.clone(),
            proxyless: proxy.proxyless,
            app: proxy.app,
            vhds: proxy.vhds,
        }
    }
}

/// One proxy's snapshot: its class's view plus [`own_listeners`].
pub fn view(shared: &SharedResources, proxy: &ProxyIdentity) -> Snapshot {
    let mut snap = class_view(shared, proxy);
    for l in own_listeners(shared, proxy) {
        snap.insert(LISTENER_TYPE, l);
    }
    snap
}

/// A proxyless client's listeners and route configurations: per service
/// port, a route configuration named `<fqdn>:<port>` and a listener for
/// each name the proxy's namespace resolves to the host (those `claimed`),
/// so `xds:///reviews:9080` and `xds:///reviews.default.svc.cluster.local:9080`
/// both work. Hosts without a port (VirtualService-only hosts) have no
/// gRPC target and are left out.
fn proxyless_listeners(
    snap: &mut Snapshot,
    tables: &BTreeMap<String, (Vec<String>, Vec<PortBody>)>,
    claimed: &BTreeMap<String, Vec<String>>,
) {
    use prost::Message;
    for (host, (_, ports)) in tables {
        let names = claimed.get(host).map(Vec::as_slice).unwrap_or_default();
        for (port, body) in ports {
            let Some(port) = *port else { continue };
            let route_name = proxyless::name(host, port);
            // Bodies come from `route::vhost_body`, so they decode.
            let Ok(routes) = proxyless::route_config(&route_name, body) else {
                continue;
            };
            snap.insert(
                ROUTE_TYPE,
                Arc::new(Resource::new(route_name.clone(), ROUTE_TYPE, routes)),
            );
            for alias in names {
                let name = proxyless::name(alias, port);
                let l = proxyless::listener(&name, &route_name);
                snap.insert(
                    LISTENER_TYPE,
                    Arc::new(Resource::new(name, LISTENER_TYPE, l.encode_to_vec())),
                );
            }
        }
    }
}

/// [`shared`] then [`view`], for one proxy.
pub fn translate(v: &Validated, registry: &Registry, proxy: &ProxyIdentity) -> Snapshot {
    view(&shared(v, registry), proxy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_workloads_means_the_same_arcs_in_the_same_order() {
        let (a, b) = (Arc::new(Workload::default()), Arc::new(Workload::default()));
        let equal_value = Arc::new(Workload::default());
        type Case<'a> = (Vec<&'a Arc<Workload>>, Vec<&'a Arc<Workload>>, bool);
        // (held, now, same?)
        let cases: Vec<Case> = vec![
            (vec![], vec![], true),
            (vec![&a, &b], vec![&a, &b], true),
            (vec![&a, &b], vec![&b, &a], false),
            (vec![&a], vec![&a, &b], false),
            (vec![&a, &b], vec![&a], false),
            (vec![&a], vec![&equal_value], false),
        ];
        for (i, (held, now, want)) in cases.into_iter().enumerate() {
            let held: Vec<Arc<Workload>> = held.into_iter().cloned().collect();
            assert_eq!(same_workloads(&held, now.into_iter()), want, "case {i}");
        }
    }
}
