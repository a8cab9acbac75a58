//! Compile validated resources into the proxy's runtime tables: route tables
//! keyed by every name a client may use, clusters with their balancers, and
//! metric handles made once here so requests never build labels.
//!
//! Pure apart from DNS, which is passed in as a function.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderName, HeaderValue};
use trellis_model::networking::{
    self as m, Destination, HttpMatchRequest, HttpRoute, LoadBalancerSettings, Protocol,
    Resolution, SimpleLb, StringMatch, TrafficPolicy,
};
use trellis_model::sidecar::{self, EgressHost};
use trellis_model::validate::{Port, Service, Validated, compile_regex};
use trellis_model::{ConfigError, ConfigErrors, host};

use super::ProxyConfig;
use crate::balance::{Balancer, Endpoint, HashKey, LbPolicy, Locality, LocalityLb};
use crate::cluster::{Cluster, UpstreamProtocol};
use crate::resilience::breaker::{Breaker, Limits};
use crate::resilience::budget::{BudgetSettings, SharedBudget};
use crate::resilience::rate_limit::SharedBucket;
use crate::resilience::retry::RetryPolicy;

use super::policy;
use crate::route::{
    HeaderEdits, HeaderOps, Mirror, PortRoutes, RateLimit, RequestMatch, Rewrite, Route,
    RouteAction, RouteTable, StringMatcher, TcpRoute, UriRewrite, VirtualHost, WeightedDestination,
};
use crate::telemetry::metrics::{Direction, Metrics};

/// The workload entry a DNS service without endpoints stands for: its own host name.
static NO_LABELS: m::WorkloadEntry = m::WorkloadEntry {
    address: String::new(),
    ports: BTreeMap::new(),
    labels: BTreeMap::new(),
    locality: None,
    weight: None,
    service_account: None,
    network: None,
};

/// One cluster to build for a port: the whole service or a subset, its own
/// traffic policy, and the labels selecting its endpoints.
type Variant<'a> = (
    Option<&'a str>,
    Option<&'a TrafficPolicy>,
    Option<&'a BTreeMap<String, String>>,
);

/// Looks up a DNS name (for `resolution: DNS`).
pub type Resolve<'a> = &'a dyn Fn(&str) -> std::io::Result<Vec<IpAddr>>;

/// An owned resolver, as the config thread keeps it.
pub type Resolver = Box<dyn Fn(&str) -> std::io::Result<Vec<IpAddr>> + Send>;

pub struct Context<'a> {
    /// The namespace of the workload this proxy serves: short names resolve in it.
    pub namespace: &'a str,
    pub locality: &'a Locality,
    pub metrics: &'a Metrics,
    /// The snapshot being replaced: endpoints that did not change keep their
    /// state (in-flight counts, latency estimates, health).
    pub previous: Option<&'a ProxyConfig>,
    pub resolve: Resolve<'a>,
    /// The proxy has a workload certificate: auto mTLS to meshed endpoints,
    /// and ISTIO_MUTUAL is possible.
    pub has_certificate: bool,
}

/// The system resolver (blocking; the config thread calls it, never a worker).
pub fn system_resolve(name: &str) -> std::io::Result<Vec<IpAddr>> {
    use std::net::ToSocketAddrs;
    let mut ips: Vec<IpAddr> = (name, 0).to_socket_addrs()?.map(|a| a.ip()).collect();
    ips.sort();
    ips.dedup();
    Ok(ips)
}

pub fn compile(v: Validated, ctx: &Context) -> Result<ProxyConfig, ConfigErrors> {
    let mut c = Compiler {
        ctx,
        v: &v,
        clusters: BTreeMap::new(),
        budgets: BTreeMap::new(),
        rate_limits: BTreeMap::new(),
        egress: trellis_model::sidecar::egress_hosts(&v.sidecars, ctx.namespace, &BTreeMap::new()),
        errors: ConfigErrors::default(),
    };
    c.build_clusters();
    let outbound = c.build_routes();
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    Ok(ProxyConfig {
        generation: ctx.previous.map_or(1, |p| p.generation + 1),
        outbound,
        clusters: c.clusters,
        budgets: c.budgets,
        rate_limits: c.rate_limits,
        // Per workload (labels): set by the loader, which knows them.
        authz: Default::default(),
        source: v,
        peer_auth: Default::default(),
    })
}

struct Compiler<'a> {
    ctx: &'a Context<'a>,
    v: &'a Validated,
    clusters: BTreeMap<String, Arc<Cluster>>,
    /// Retry budgets by destination host.
    budgets: BTreeMap<String, Arc<SharedBudget>>,
    /// Rate-limit buckets by policy (and route), see [`ProxyConfig::rate_limits`].
    rate_limits: BTreeMap<String, Arc<SharedBucket>>,
    /// Egress hosts of the Sidecar that applies: a standalone proxy knows
    /// its namespace but not its labels, so a namespace-wide (or root
    /// namespace) Sidecar; `None`: no restriction.
    egress: Option<Vec<EgressHost>>,
    errors: ConfigErrors,
}

/// Istio's `exportTo`: who may see a resource. Empty means everyone.
fn visible(export_to: &[String], owner_ns: &str, viewer_ns: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == viewer_ns || (e == "." && owner_ns == viewer_ns))
}

impl Compiler<'_> {
    fn services(&self) -> impl Iterator<Item = &Service> {
        self.v.services.values()
    }

    fn service_visible(&self, s: &Service) -> bool {
        visible(&s.export_to, &s.namespace, self.ctx.namespace)
            && self.egress_allows(&s.namespace, &s.host)
    }

    fn egress_allows(&self, host_ns: &str, host: &str) -> bool {
        sidecar::allows(self.egress.as_deref(), self.ctx.namespace, host_ns, host)
    }

    fn build_clusters(&mut self) {
        let services: Vec<Service> = self
            .services()
            .filter(|s| self.service_visible(s))
            .cloned()
            .collect();
        for s in &services {
            let dr = self.v.destination_rules.get(&s.host).filter(|dr| {
                visible(
                    &dr.spec.export_to,
                    &dr.metadata.namespace,
                    self.ctx.namespace,
                )
            });
            let endpoints = match self.endpoints(s) {
                Ok(e) => e,
                Err(reason) => {
                    self.errors.push(ConfigError::new(
                        "-",
                        format!("ServiceEntry {}", s.entry),
                        "spec.endpoints",
                        reason,
                    ));
                    continue;
                }
            };
            for port in &s.ports {
                let base_policy = dr.and_then(|d| d.spec.traffic_policy.as_ref());
                let mut variants: Vec<Variant> = vec![(None, base_policy, None)];
                if let Some(dr) = dr {
                    for subset in &dr.spec.subsets {
                        variants.push((
                            Some(&subset.name),
                            subset.traffic_policy.as_ref(),
                            Some(&subset.labels),
                        ));
                    }
                }
                let budget = self.budget(&s.host);
                for (subset, policy, labels) in variants {
                    let name = Cluster::name("outbound", port.number, subset, &s.host);
                    let lb = effective_lb(base_policy, policy, port.number);
                    let pool = policy::effective(
                        base_policy,
                        policy,
                        port.number,
                        |t| t.connection_pool.as_ref(),
                        |p| p.connection_pool.as_ref(),
                    );
                    let outlier = policy::effective(
                        base_policy,
                        policy,
                        port.number,
                        |t| t.outlier_detection.as_ref(),
                        |p| p.outlier_detection.as_ref(),
                    );
                    let dr_err = |(field, reason): policy::FieldError| {
                        let dr = dr.expect("only a DestinationRule has policies");
                        ConfigError::new(
                            &dr.source,
                            format!("DestinationRule {}", dr.key()),
                            format!("spec.trafficPolicy...{field}"),
                            reason,
                        )
                    };
                    let tls_setting = policy::effective(
                        base_policy,
                        policy,
                        port.number,
                        |t| t.tls.as_ref(),
                        |p| p.tls.as_ref(),
                    );
                    let destination = super::tls::Destination {
                        service: s,
                        port: port.number,
                        subset,
                        protocol: upstream_protocol(port.protocol),
                    };
                    let tls = match super::tls::cluster_tls(
                        tls_setting,
                        &destination,
                        self.ctx.has_certificate,
                    ) {
                        Ok(t) => t,
                        Err((field, reason)) => {
                            // Auto mTLS errors come from the ServiceEntry.
                            self.errors.push(match dr {
                                Some(dr) if tls_setting.is_some() => ConfigError::new(
                                    &dr.source,
                                    format!("DestinationRule {}", dr.key()),
                                    format!("spec.trafficPolicy...{field}"),
                                    reason,
                                ),
                                _ => ConfigError::new(
                                    "-",
                                    format!("ServiceEntry {}", s.entry),
                                    "spec.subjectAltNames",
                                    reason,
                                ),
                            });
                            continue;
                        }
                    };
                    let (upstream, limits) = match policy::connection_pool(pool) {
                        Ok(x) => x,
                        Err(e) => {
                            self.errors.push(dr_err(e));
                            continue;
                        }
                    };
                    let outlier = match outlier.map(policy::outlier).transpose() {
                        Ok(x) => x,
                        Err(e) => {
                            self.errors.push(dr_err(e));
                            continue;
                        }
                    };
                    let eps = endpoints
                        .iter()
                        .filter(|(_, ep)| {
                            labels
                                .is_none_or(|l| l.iter().all(|(k, v)| ep.labels.get(k) == Some(v)))
                        })
                        .flat_map(|(addrs, ep)| {
                            let p = ep
                                .ports
                                .get(&port.name)
                                .copied()
                                .map(u16::try_from)
                                .and_then(Result::ok);
                            let p = p.or(port.target_port).unwrap_or(port.number);
                            addrs.iter().map(move |ip| (SocketAddr::new(*ip, p), *ep))
                        })
                        .map(|(addr, ep)| self.endpoint(&name, addr, ep))
                        .collect();
                    let (lb_kind, locality_lb, hash_key) = lb_policy(lb);
                    let min_health = outlier.as_ref().map_or(0, |o| o.min_health_percent);
                    let cluster = Cluster {
                        name: name.clone().into(),
                        protocol: upstream_protocol(port.protocol),
                        balancer: Balancer::new(lb_kind, locality_lb, self.ctx.locality, eps)
                            .with_min_health_percent(min_health),
                        hash_key,
                        upstream,
                        breaker: self.breaker(&name, limits),
                        budget: budget.clone(),
                        outlier,
                        tls,
                        stats: self.ctx.metrics.cluster_stats(&name),
                    };
                    self.clusters.insert(name, Arc::new(cluster));
                }
            }
        }
    }

    /// Each workload entry with the addresses it resolves to.
    fn endpoints<'s>(
        &self,
        s: &'s Service,
    ) -> Result<Vec<(Vec<IpAddr>, &'s m::WorkloadEntry)>, String> {
        let mut out = Vec::new();
        if s.endpoints.is_empty() && s.resolution != Resolution::Static {
            let ips = (self.ctx.resolve)(&s.written_host)
                .map_err(|e| format!("cannot resolve host {:?}: {e}", s.written_host))?;
            out.push((ips, &NO_LABELS));
        }
        for ep in &s.endpoints {
            let ips = match ep.address.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => (self.ctx.resolve)(&ep.address).map_err(|e| {
                    format!("cannot resolve endpoint address {:?}: {e}", ep.address)
                })?,
            };
            out.push((ips, ep));
        }
        Ok(out)
    }

    /// The destination's retry budget: one per host, shared by its clusters;
    /// the previous snapshot's is kept while its settings are unchanged, so
    /// a reload does not hand a storm a fresh allowance.
    fn budget(&mut self, host: &str) -> Arc<SharedBudget> {
        if let Some(b) = self.budgets.get(host) {
            return b.clone();
        }
        let spec = self.v.retry_budgets.get(host);
        let settings = match policy::budget(spec.map(|o| &o.spec)) {
            Ok(s) => s,
            Err((field, reason)) => {
                let o = spec.expect("only a RetryBudget can fail");
                self.errors.push(ConfigError::new(
                    &o.source,
                    format!("RetryBudget {}", o.key()),
                    field,
                    reason,
                ));
                BudgetSettings::default()
            }
        };
        let budget = self
            .ctx
            .previous
            .and_then(|p| p.budgets.get(host))
            .filter(|b| b.settings() == settings)
            .cloned()
            .unwrap_or_else(|| Arc::new(SharedBudget::new(settings, Instant::now())));
        self.budgets.insert(host.to_string(), budget.clone());
        budget
    }

    /// The cluster's circuit breaker, kept from the previous snapshot while
    /// its limits are unchanged so in-flight requests stay counted.
    fn breaker(&self, cluster: &str, limits: Limits) -> Arc<Breaker> {
        self.ctx
            .previous
            .and_then(|p| p.clusters.get(cluster))
            .map(|c| c.breaker.clone())
            .filter(|b| *b.limits() == limits)
            .unwrap_or_else(|| Arc::new(Breaker::new(limits)))
    }

    /// The RateLimitPolicy for `host` and `route` (None: host-wide), if any.
    fn rate_limit(&mut self, host: &str, route: Option<&str>) -> Option<RateLimit> {
        let (_, o) = self.v.rate_limits.iter().find(|(h, o)| {
            h == host
                && match route {
                    Some(r) => o.spec.routes.iter().any(|x| x == r),
                    None => o.spec.routes.is_empty(),
                }
        })?;
        let (max, per_fill, interval) = match policy::token_bucket(&o.spec.token_bucket) {
            Ok(b) => b,
            Err((field, reason)) => {
                self.errors.push(ConfigError::new(
                    &o.source,
                    format!("RateLimitPolicy {}", o.key()),
                    field,
                    reason,
                ));
                return None;
            }
        };
        let policy = match route {
            Some(r) => format!("{}|{r}", o.key()),
            None => o.key(),
        };
        // Kept across reloads while the bucket's settings are unchanged.
        let key = format!("{policy}|{max}|{per_fill}|{interval:?}");
        let bucket = self
            .rate_limits
            .get(&key)
            .or_else(|| self.ctx.previous.and_then(|p| p.rate_limits.get(&key)))
            .cloned()
            .unwrap_or_else(|| {
                Arc::new(SharedBucket::new(max, per_fill, interval, Instant::now()))
            });
        self.rate_limits.insert(key, bucket.clone());
        Some(RateLimit {
            rejected: self.ctx.metrics.rate_limited(&policy),
            policy: policy.into(),
            bucket,
        })
    }

    /// Reuse the previous snapshot's endpoint when nothing about it changed, so
    /// its in-flight count, latency estimate and health carry over.
    fn endpoint(&self, cluster: &str, addr: SocketAddr, ep: &m::WorkloadEntry) -> Arc<Endpoint> {
        let weight = ep.weight.filter(|w| *w > 0).unwrap_or(1);
        let locality = ep
            .locality
            .as_deref()
            .map(Locality::parse)
            .unwrap_or_default();
        if let Some(prev) = self.ctx.previous.and_then(|p| p.clusters.get(cluster))
            && let Some(e) = prev.balancer.endpoints().iter().find(|e| {
                e.addr == addr
                    && e.weight == weight
                    && e.locality == locality
                    && e.labels == ep.labels
            })
        {
            return e.clone();
        }
        Arc::new(Endpoint::new(addr, weight, locality, ep.labels.clone()))
    }

    fn build_routes(&mut self) -> RouteTable {
        let mut vhosts: BTreeMap<String, VirtualHost> = BTreeMap::new();
        // Defaults: every visible service routes to itself, per port.
        let services: Vec<Service> = self
            .services()
            .filter(|s| self.service_visible(s))
            .cloned()
            .collect();
        for s in &services {
            let ports = s
                .ports
                .iter()
                .map(|p| {
                    let cluster = self.cluster(&s.host, p.number, None);
                    let routes = match cluster {
                        Some(cluster) if p.protocol.is_http() => PortRoutes::Http(
                            vec![self.default_route(&s.host, p.number, cluster)].into(),
                        ),
                        Some(cluster) => PortRoutes::Tcp(
                            vec![TcpRoute {
                                ports: vec![],
                                destinations: vec![(100, cluster)],
                                total_weight: 100,
                            }]
                            .into(),
                        ),
                        None => PortRoutes::Http(Vec::new().into()),
                    };
                    (p.number, routes)
                })
                .collect();
            vhosts.insert(
                s.host.clone(),
                VirtualHost {
                    name: s.host.clone(),
                    ports,
                    any_port: None,
                    rate_limit: self.rate_limit(&s.host, None),
                },
            );
        }
        // VirtualServices replace the defaults of the hosts they name.
        for (hosts, vs) in &self.v.virtual_services {
            if !visible(
                &vs.spec.export_to,
                &vs.metadata.namespace,
                self.ctx.namespace,
            ) {
                continue;
            }
            for host in hosts {
                let service = self
                    .v
                    .services
                    .get(host)
                    .filter(|s| self.service_visible(s))
                    .cloned();
                match service {
                    Some(service) => {
                        let ports = service
                            .ports
                            .iter()
                            .map(|p| (p.number, self.vs_port_routes(vs, p, host)))
                            .collect::<Vec<_>>();
                        let vh = vhosts
                            .get_mut(host)
                            .expect("every visible service has a vhost");
                        for (number, routes) in ports {
                            if let Some(routes) = routes
                                && let Some(slot) = vh.ports.iter_mut().find(|(p, _)| *p == number)
                            {
                                slot.1 = routes;
                            }
                        }
                    }
                    // A service this proxy does not see: nothing to route
                    // to (as the control plane's translation).
                    None if self.v.services.contains_key(host) => {}
                    None if !self.egress_allows(&vs.metadata.namespace, host) => {}
                    None => {
                        let any_port = if vs.spec.http.is_empty() {
                            self.tcp_routes(vs, None).map(|r| PortRoutes::Tcp(r.into()))
                        } else {
                            Some(PortRoutes::Http(self.http_routes(vs, None, host).into()))
                        };
                        vhosts.insert(
                            host.clone(),
                            VirtualHost {
                                name: host.clone(),
                                ports: Vec::new(),
                                any_port,
                                rate_limit: self.rate_limit(host, None),
                            },
                        );
                    }
                }
            }
        }
        let mut table = RouteTable::default();
        for (name, vh) in vhosts {
            let vh = Arc::new(vh);
            if self.v.services.contains_key(&name) {
                for alias in host::aliases(&name, self.ctx.namespace) {
                    table.insert(&alias, vh.clone());
                }
            } else {
                table.insert(&name, vh);
            }
        }
        table
    }

    /// Routes a VirtualService gives one port of one of its service hosts;
    /// None keeps the default.
    fn vs_port_routes(
        &mut self,
        vs: &trellis_model::resource::Object<m::VirtualServiceSpec>,
        port: &Port,
        host: &str,
    ) -> Option<PortRoutes> {
        if port.protocol.is_http() {
            (!vs.spec.http.is_empty())
                .then(|| PortRoutes::Http(self.http_routes(vs, Some(port.number), host).into()))
        } else {
            self.tcp_routes(vs, Some(port.number))
                .map(|r| PortRoutes::Tcp(r.into()))
        }
    }

    fn default_route(&self, host: &str, port: u16, cluster: Arc<Cluster>) -> Route {
        let name = format!("default|{host}:{port}");
        let stats = self
            .ctx
            .metrics
            .route_stats(Direction::outbound, &name, &cluster.name);
        Route {
            name: name.into(),
            matches: Vec::new(),
            action: RouteAction {
                destinations: vec![WeightedDestination {
                    weight: 100,
                    cluster,
                    headers: HeaderOps::default(),
                    stats,
                }],
                total_weight: 100,
                rewrite: None,
                timeout: None,
                headers: HeaderOps::default(),
                retry: RetryPolicy::istio_default(),
                fault: None,
                mirrors: Vec::new(),
                rate_limit: None,
            },
        }
    }

    fn cluster(&self, host: &str, port: u16, subset: Option<&str>) -> Option<Arc<Cluster>> {
        self.clusters
            .get(&Cluster::name("outbound", port, subset, host))
            .cloned()
    }

    fn http_routes(
        &mut self,
        vs: &trellis_model::resource::Object<m::VirtualServiceSpec>,
        port: Option<u16>,
        host: &str,
    ) -> Vec<Route> {
        let ns = vs.metadata.namespace.as_str();
        let mut routes = Vec::new();
        for (i, r) in vs.spec.http.iter().enumerate() {
            let f = format!("spec.http[{i}]");
            let name = format!(
                "{}|{}",
                vs.key(),
                r.name.clone().unwrap_or_else(|| format!("http[{i}]"))
            );
            match self.http_route(ns, &name, r, port) {
                Ok(mut route) => {
                    if let Some(rn) = r.name.as_deref() {
                        route.action.rate_limit = self.rate_limit(host, Some(rn));
                    }
                    routes.push(route)
                }
                Err((field, reason)) => self.errors.push(ConfigError::new(
                    &vs.source,
                    format!("VirtualService {}", vs.key()),
                    format!("{f}.{field}"),
                    reason,
                )),
            }
        }
        routes
    }

    fn http_route(
        &self,
        ns: &str,
        name: &str,
        r: &HttpRoute,
        port: Option<u16>,
    ) -> Result<Route, (String, String)> {
        let matches = r
            .matches
            .iter()
            .enumerate()
            .map(|(j, m)| request_match(m).map_err(|(f, e)| (format!("match[{j}].{f}"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        let single = r.route.len() == 1;
        let mut destinations = Vec::new();
        for (k, d) in r.route.iter().enumerate() {
            let cluster = self
                .destination_cluster(ns, &d.destination, port)
                .map_err(|e| (format!("route[{k}].destination"), e))?;
            let weight = if single { 100 } else { d.weight.unwrap_or(0) };
            let stats = self
                .ctx
                .metrics
                .route_stats(Direction::outbound, name, &cluster.name);
            let headers = header_ops(d.headers.as_ref());
            destinations.push(WeightedDestination {
                weight,
                cluster,
                headers,
                stats,
            });
        }
        let total_weight = destinations.iter().map(|d| d.weight).sum();
        let rewrite = r
            .rewrite
            .as_ref()
            .map(|rw| -> Result<Rewrite, (String, String)> {
                let uri = match (&rw.uri, &rw.uri_regex_rewrite) {
                    (Some(u), _) => Some(UriRewrite::Replace(u.clone())),
                    (None, Some(rr)) => {
                        let re = regex::Regex::new(&rr.pattern).map_err(|e| {
                            ("rewrite.uriRegexRewrite.match".to_string(), e.to_string())
                        })?;
                        Some(UriRewrite::Regex(re, re2_replacement(&rr.rewrite)))
                    }
                    (None, None) => None,
                };
                let authority = rw
                    .authority
                    .as_deref()
                    .map(HeaderValue::from_str)
                    .transpose()
                    .map_err(|e| ("rewrite.authority".to_string(), e.to_string()))?;
                Ok(Rewrite { uri, authority })
            })
            .transpose()?;
        let timeout = r
            .timeout
            .as_deref()
            .map(trellis_model::duration::parse)
            .transpose()
            .map_err(|e| ("timeout".to_string(), e))?
            .filter(|d| !d.is_zero());
        let retry = policy::retry_policy(r.retries.as_ref())?;
        let fault = r.fault.as_ref().map(policy::fault_policy).transpose()?;
        let mut mirrors = Vec::new();
        for (k, mp) in r.mirror_policies().iter().enumerate() {
            let cluster = self
                .destination_cluster(ns, &mp.destination, port)
                .map_err(|e| (format!("mirrors[{k}].destination"), e))?;
            mirrors.push(Mirror {
                cluster,
                percent: mp.effective_percentage(),
            });
        }
        Ok(Route {
            name: name.into(),
            matches,
            action: RouteAction {
                destinations,
                total_weight,
                rewrite,
                timeout,
                headers: header_ops(r.headers.as_ref()),
                retry,
                fault,
                mirrors,
                rate_limit: None,
            },
        })
    }

    /// The cluster a destination names. Its port: the one given, else the
    /// request's port if the service has it, else the service's only port.
    fn destination_cluster(
        &self,
        ns: &str,
        d: &Destination,
        request_port: Option<u16>,
    ) -> Result<Arc<Cluster>, String> {
        let host = self.v.resolve(&d.host, ns);
        let service = self
            .v
            .services
            .get(&host)
            .filter(|s| self.service_visible(s))
            .ok_or_else(|| {
                format!(
                    "host {host} is not visible to namespace {}",
                    self.ctx.namespace
                )
            })?;
        let port = match (d.port.map(|p| p.number as u16), request_port) {
            (Some(p), _) => p,
            (None, Some(p)) if service.port(p).is_some() => p,
            (None, _) if service.ports.len() == 1 => service.ports[0].number,
            (None, _) => {
                return Err(format!(
                    "port is required: {host} has several ports ({})",
                    service
                        .ports
                        .iter()
                        .map(|p| p.number.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        };
        self.cluster(&host, port, d.subset.as_deref())
            .ok_or_else(|| format!("no cluster for {host} port {port} subset {:?}", d.subset))
    }

    fn tcp_routes(
        &mut self,
        vs: &trellis_model::resource::Object<m::VirtualServiceSpec>,
        port: Option<u16>,
    ) -> Option<Vec<TcpRoute>> {
        if vs.spec.tcp.is_empty() {
            return None;
        }
        let ns = vs.metadata.namespace.as_str();
        let mut out = Vec::new();
        for (i, r) in vs.spec.tcp.iter().enumerate() {
            let ports: Vec<u16> = r
                .matches
                .iter()
                .filter_map(|m| m.port.map(|p| p as u16))
                .collect();
            if let Some(p) = port
                && !ports.is_empty()
                && !ports.contains(&p)
            {
                continue;
            }
            let mut destinations = Vec::new();
            for (k, d) in r.route.iter().enumerate() {
                match self.destination_cluster(ns, &d.destination, port) {
                    Ok(c) => destinations.push((
                        if r.route.len() == 1 {
                            100
                        } else {
                            d.weight.unwrap_or(0)
                        },
                        c,
                    )),
                    Err(reason) => self.errors.push(ConfigError::new(
                        &vs.source,
                        format!("VirtualService {}", vs.key()),
                        format!("spec.tcp[{i}].route[{k}].destination"),
                        reason,
                    )),
                }
            }
            let total_weight = destinations.iter().map(|d| d.0).sum();
            out.push(TcpRoute {
                ports,
                destinations,
                total_weight,
            });
        }
        Some(out)
    }
}

fn upstream_protocol(p: Protocol) -> UpstreamProtocol {
    match p {
        Protocol::Http => UpstreamProtocol::Http1,
        Protocol::Http2 | Protocol::Grpc => UpstreamProtocol::Http2,
        Protocol::Tcp | Protocol::Tls => UpstreamProtocol::Opaque,
    }
}

/// Istio's precedence: the subset's policy over the rule's, and within each a
/// port-level setting over the general one.
fn effective_lb<'p>(
    base: Option<&'p TrafficPolicy>,
    own: Option<&'p TrafficPolicy>,
    port: u16,
) -> Option<&'p LoadBalancerSettings> {
    let from = |tp: Option<&'p TrafficPolicy>| {
        tp.and_then(|tp| {
            tp.port_level_settings
                .iter()
                .find(|p| p.port.number == u32::from(port))
                .and_then(|p| p.load_balancer.as_ref())
                .or(tp.load_balancer.as_ref())
        })
    };
    from(own).or_else(|| from(base))
}

fn lb_policy(lb: Option<&LoadBalancerSettings>) -> (LbPolicy, LocalityLb, Option<HashKey>) {
    let locality = lb
        .and_then(|l| l.locality_lb_setting.as_ref())
        .map(|l| LocalityLb {
            enabled: l.enabled.unwrap_or(true),
            failover: l
                .failover
                .iter()
                .map(|f| (f.from.clone(), f.to.clone()))
                .collect(),
        })
        .unwrap_or(LocalityLb {
            enabled: true,
            failover: Vec::new(),
        });
    let Some(lb) = lb else {
        return (LbPolicy::LeastRequest, locality, None);
    };
    if let Some(ch) = &lb.consistent_hash {
        let key = if let Some(h) = &ch.http_header_name {
            HashKey::Header(
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .expect("validated header name"),
            )
        } else if let Some(c) = &ch.http_cookie {
            HashKey::Cookie {
                name: c.name.clone(),
            }
        } else if let Some(q) = &ch.http_query_parameter_name {
            HashKey::QueryParam(q.clone())
        } else {
            HashKey::SourceIp
        };
        let size = ch
            .ring_hash
            .as_ref()
            .and_then(|r| r.minimum_ring_size)
            .or(ch.minimum_ring_size)
            .unwrap_or(1024);
        return (
            LbPolicy::RingHash {
                key: key.clone(),
                minimum_ring_size: size,
            },
            locality,
            Some(key),
        );
    }
    let policy = match lb.simple {
        Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
        Some(SimpleLb::Random) => LbPolicy::Random,
        Some(SimpleLb::PeakEwma) => LbPolicy::PeakEwma,
        _ => LbPolicy::LeastRequest,
    };
    (policy, locality, None)
}

fn string_matcher(sm: &StringMatch) -> Result<StringMatcher, String> {
    Ok(match (&sm.exact, &sm.prefix, &sm.regex) {
        (Some(e), _, _) => StringMatcher::Exact(e.clone()),
        (_, Some(p), _) => StringMatcher::Prefix(p.clone()),
        (_, _, Some(r)) => StringMatcher::Regex(compile_regex(r)?),
        _ => StringMatcher::Present,
    })
}

fn request_match(m: &HttpMatchRequest) -> Result<RequestMatch, (String, String)> {
    let one = |name: &str, sm: &Option<StringMatch>| {
        sm.as_ref()
            .map(string_matcher)
            .transpose()
            .map_err(|e| (name.to_string(), e))
    };
    let headers = |kind: &str, map: &BTreeMap<String, StringMatch>| {
        map.iter()
            .map(|(k, sm)| {
                let name = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                    .map_err(|e| (format!("{kind}.{k}"), e.to_string()))?;
                Ok((
                    name,
                    string_matcher(sm).map_err(|e| (format!("{kind}.{k}"), e))?,
                ))
            })
            .collect::<Result<Vec<_>, (String, String)>>()
    };
    Ok(RequestMatch {
        uri: one("uri", &m.uri)?,
        ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
        scheme: one("scheme", &m.scheme)?,
        method: one("method", &m.method)?,
        authority: one("authority", &m.authority)?,
        headers: headers("headers", &m.headers)?,
        without_headers: headers("withoutHeaders", &m.without_headers)?,
        query_params: m
            .query_params
            .iter()
            .map(|(k, sm)| {
                Ok((
                    k.clone(),
                    string_matcher(sm).map_err(|e| (format!("queryParams.{k}"), e))?,
                ))
            })
            .collect::<Result<_, (String, String)>>()?,
        port: m.port.map(|p| p as u16),
    })
}

fn header_edits(ops: Option<&m::HeaderOperations>) -> HeaderEdits {
    let Some(ops) = ops else {
        return HeaderEdits::default();
    };
    // Names and values were validated; anything unparsable cannot reach here.
    let pairs = |map: &BTreeMap<String, String>| {
        map.iter()
            .filter_map(|(k, v)| {
                Some((
                    HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect()
    };
    HeaderEdits {
        set: pairs(&ops.set),
        add: pairs(&ops.add),
        remove: ops
            .remove
            .iter()
            .filter_map(|k| HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok())
            .collect(),
    }
}

fn header_ops(h: Option<&m::Headers>) -> HeaderOps {
    HeaderOps {
        request: header_edits(h.and_then(|h| h.request.as_ref())),
        response: header_edits(h.and_then(|h| h.response.as_ref())),
    }
}

/// Istio writes regex rewrites in RE2 syntax (`\1`); the regex crate wants `${1}`.
fn re2_replacement(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                out.push_str(&format!("${{{digits}}}"));
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

/// DNS services whose endpoints should be re-resolved periodically.
pub fn has_dns(v: &Validated) -> bool {
    v.services
        .values()
        .any(|s| s.resolution != Resolution::Static)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn re2_group_references() {
        assert_eq!(re2_replacement(r"/v2/\1"), "/v2/${1}");
        assert_eq!(re2_replacement(r"/\1/\12"), "/${1}/${12}");
        assert_eq!(re2_replacement("/cost$"), "/cost$$");
    }

    #[test]
    fn export_to() {
        assert!(visible(&[], "a", "b"));
        assert!(visible(&["*".into()], "a", "b"));
        assert!(visible(&[".".into()], "a", "a"));
        assert!(!visible(&[".".into()], "a", "b"));
        assert!(visible(&["b".into()], "a", "b"));
    }
}
