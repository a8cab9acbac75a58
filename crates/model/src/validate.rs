//! Semantic checks over a whole set of resources: what serde's types cannot
//! say (weights sum to 100, regexes compile, destinations exist, one
//! VirtualService per host). Every problem found is reported, not just the first.
//!
//! The same checks run in the proxy's standalone mode and (later) in the
//! control plane before a resource is accepted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::duration;
use crate::error::{ConfigError, ConfigErrors};
use crate::host;
use crate::networking::*;
use crate::peer_authentication::PeerAuthenticationSpec;
use crate::policy::{self, GRPC_CODES};
use crate::resource::{Object, ResourceSet};
use crate::trellis::{RateLimitPolicySpec, RetryBudgetSpec};

/// Largest compiled regex accepted, so a pathological pattern cannot eat the
/// proxy's memory.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A service known from a ServiceEntry, under its fully qualified host.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Service {
    pub host: String,
    pub namespace: String,
    /// The ServiceEntry that defines it (`namespace/name`).
    pub entry: String,
    pub ports: Vec<Port>,
    pub resolution: Resolution,
    pub endpoints: Vec<WorkloadEntry>,
    /// The host as the ServiceEntry wrote it: what DNS resolution looks up
    /// when the entry lists no endpoints.
    pub written_host: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// ServiceEntry `workloadSelector.labels`: registered workloads with
    /// these labels are endpoints too. Only a control plane has a registry;
    /// a standalone proxy has no workloads to select.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<BTreeMap<String, String>>,
    /// ServiceEntry `subjectAltNames`: who may serve it (secure naming).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Port {
    pub number: u16,
    pub name: String,
    pub protocol: Protocol,
    pub target_port: Option<u16>,
}

impl Service {
    pub fn port(&self, number: u16) -> Option<&Port> {
        self.ports.iter().find(|p| p.number == number)
    }
}

/// A validated snapshot: resources indexed by the host they apply to, with
/// every host reference already resolved to a fully qualified name.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Validated {
    pub services: BTreeMap<String, Service>,
    pub destination_rules: BTreeMap<String, Object<DestinationRuleSpec>>,
    /// VirtualServices with their resolved hosts, in load order.
    pub virtual_services: Vec<(Vec<String>, Object<VirtualServiceSpec>)>,
    /// RateLimitPolicies with their resolved host (a service or VirtualService
    /// host), in load order. At most one host-wide policy per host, and at most
    /// one policy per host and route name.
    pub rate_limits: Vec<(String, Object<RateLimitPolicySpec>)>,
    /// RetryBudgets by their resolved service host (one per host).
    pub retry_budgets: BTreeMap<String, Object<RetryBudgetSpec>>,
    /// Sidecars in load order ([`crate::sidecar::select`] picks one per
    /// workload).
    pub sidecars: Vec<Object<SidecarSpec>>,
    /// AuthorizationPolicies in load order
    /// ([`crate::authorization::applies`] says which apply to a workload).
    pub authorization_policies: Vec<Object<crate::authorization::AuthorizationPolicySpec>>,
    /// PeerAuthentications in load order
    /// ([`crate::peer_authentication::effective`] picks per workload and port).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peer_authentications: Vec<Object<PeerAuthenticationSpec>>,
}

impl Validated {
    /// Resolve a host written in a resource of `namespace` (see [`host::resolve`]).
    pub fn resolve(&self, name: &str, namespace: &str) -> String {
        host::resolve(name, namespace, |h| self.services.contains_key(h))
    }
}

/// Check everything; on success return the indexed snapshot.
pub fn validate(set: &ResourceSet) -> Result<Validated, ConfigErrors> {
    let mut v = Validator {
        errors: ConfigErrors::default(),
        out: Validated::default(),
        host_files: BTreeMap::new(),
        vs_of_host: BTreeMap::new(),
    };
    v.service_entries(&set.service_entries);
    v.destination_rules(&set.destination_rules);
    v.virtual_services(&set.virtual_services);
    v.rate_limit_policies(&set.rate_limit_policies);
    v.retry_budgets(&set.retry_budgets);
    v.sidecars(&set.sidecars);
    v.errors
        .0
        .extend(crate::authorization::validate(&set.authorization_policies));
    v.out.authorization_policies = set.authorization_policies.clone();
    v.peer_authentications(&set.peer_authentications);
    if v.errors.is_empty() {
        Ok(v.out)
    } else {
        Err(v.errors)
    }
}

struct Validator {
    errors: ConfigErrors,
    out: Validated,
    /// The file of the ServiceEntry that defines each host, for conflict messages.
    host_files: BTreeMap<String, String>,
    /// The VirtualService (index into `out.virtual_services`) that routes each
    /// resolved host.
    vs_of_host: BTreeMap<String, usize>,
}

/// What a destination is used for, which decides the ports it may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DestUse {
    HttpRoute,
    TcpRoute,
    Mirror,
}

/// Where an error is reported: the resource and the path built so far.
struct At {
    file: String,
    resource: String,
}

impl At {
    fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::new(&self.file, &self.resource, field, reason)
    }
}

fn at<S>(kind: &str, o: &Object<S>) -> At {
    At {
        file: o.source.clone(),
        resource: format!("{kind} {}", o.key()),
    }
}

impl Validator {
    fn push(&mut self, e: ConfigError) {
        self.errors.push(e);
    }

    // ------------------------------------------------------------ ServiceEntry

    fn service_entries(&mut self, entries: &[Object<ServiceEntrySpec>]) {
        for se in entries {
            let at = at("ServiceEntry", se);
            let ns = &se.metadata.namespace;
            let spec = &se.spec;
            self.export_to(&at, &spec.export_to);
            if spec.hosts.is_empty() {
                self.push(at.err("spec.hosts", "at least one host is required"));
            }
            if spec.ports.is_empty() {
                self.push(at.err("spec.ports", "at least one port is required"));
            }
            let mut ports = Vec::new();
            let mut names = BTreeSet::new();
            let mut numbers = BTreeSet::new();
            for (i, p) in spec.ports.iter().enumerate() {
                let f = format!("spec.ports[{i}]");
                let Some(number) = port_number(p.number) else {
                    self.push(at.err(format!("{f}.number"), "must be between 1 and 65535"));
                    continue;
                };
                if p.name.is_empty() {
                    self.push(at.err(format!("{f}.name"), "must not be empty"));
                } else if !names.insert(p.name.as_str()) {
                    self.push(at.err(
                        format!("{f}.name"),
                        format!("duplicate port name {:?}", p.name),
                    ));
                }
                if !numbers.insert(number) {
                    self.push(at.err(
                        format!("{f}.number"),
                        format!("duplicate port number {number}"),
                    ));
                }
                let target_port = match p.target_port.map(port_number) {
                    Some(None) => {
                        self.push(at.err(format!("{f}.targetPort"), "must be between 1 and 65535"));
                        None
                    }
                    Some(t) => t,
                    None => None,
                };
                match Protocol::of_port(p) {
                    Ok(protocol) => ports.push(Port {
                        number,
                        name: p.name.clone(),
                        protocol,
                        target_port,
                    }),
                    Err(reason) => self.push(at.err(format!("{f}.protocol"), reason)),
                }
            }
            if spec.resolution == Resolution::None {
                self.push(at.err(
                    "spec.resolution",
                    "resolution NONE (pass-through to the original destination) is not supported yet; \
                     use STATIC with endpoints, or DNS",
                ));
            }
            for (i, a) in spec.addresses.iter().enumerate() {
                if parse_cidr(a).is_none() {
                    self.push(at.err(
                        format!("spec.addresses[{i}]"),
                        format!("{a:?} is not an IP address or CIDR"),
                    ));
                }
            }
            for (i, ep) in spec.endpoints.iter().enumerate() {
                let f = format!("spec.endpoints[{i}]");
                if ep.address.is_empty() {
                    self.push(at.err(format!("{f}.address"), "is required"));
                } else if spec.resolution == Resolution::Static
                    && ep.address.parse::<std::net::IpAddr>().is_err()
                {
                    self.push(at.err(
                        format!("{f}.address"),
                        format!("{:?} is not an IP address; STATIC resolution needs IPs (use resolution: DNS for names)", ep.address),
                    ));
                } else if spec.resolution != Resolution::Static
                    && (ep.address.starts_with('*') || !valid_host(&ep.address))
                    && ep.address.parse::<std::net::IpAddr>().is_err()
                {
                    self.push(at.err(
                        format!("{f}.address"),
                        format!("{:?} is neither an IP address nor a DNS name", ep.address),
                    ));
                }
                for (name, number) in &ep.ports {
                    if !names.contains(name.as_str()) {
                        self.push(at.err(
                            format!("{f}.ports.{name}"),
                            format!(
                                "no port named {name:?} in spec.ports (names: {})",
                                join(&names)
                            ),
                        ));
                    }
                    if port_number(*number).is_none() {
                        self.push(
                            at.err(format!("{f}.ports.{name}"), "must be between 1 and 65535"),
                        );
                    }
                }
                if let Some(loc) = &ep.locality
                    && (loc.split('/').count() > 3 || loc.split('/').any(str::is_empty))
                {
                    self.push(at.err(
                        format!("{f}.locality"),
                        format!("{loc:?} is not of the form region/zone/subzone"),
                    ));
                }
            }
            if let Some(sel) = &spec.workload_selector {
                if !spec.endpoints.is_empty() {
                    self.push(at.err(
                        "spec.workloadSelector",
                        "cannot be used with spec.endpoints (as in Istio): list endpoints, or select registered workloads",
                    ));
                }
                if spec.resolution != Resolution::Static {
                    self.push(at.err(
                        "spec.workloadSelector",
                        "needs resolution: STATIC (registered workloads are addresses, not names)",
                    ));
                }
                for k in sel.labels.keys() {
                    if k.is_empty() {
                        self.push(at.err("spec.workloadSelector.labels", "a label name is empty"));
                    }
                }
            }
            if spec.resolution == Resolution::Static && spec.endpoints.is_empty() {
                // Valid in Istio (a service with no endpoints yet); requests get 503 no_healthy_upstream.
            }
            for (i, h) in spec.hosts.iter().enumerate() {
                let f = format!("spec.hosts[{i}]");
                if h.starts_with('*') {
                    self.push(at.err(f, "wildcard hosts in ServiceEntry are not supported yet"));
                    continue;
                }
                if !valid_host(h) {
                    self.push(at.err(f, format!("{h:?} is not a valid DNS name")));
                    continue;
                }
                let fqdn = host::qualify(h, ns);
                if let Some(existing) = self.out.services.get(&fqdn) {
                    let file = self.host_files.get(&fqdn).map_or("", String::as_str);
                    self.push(at.err(
                        f,
                        format!("host {fqdn} is already defined by ServiceEntry {} ({file}); one ServiceEntry per host", existing.entry),
                    ));
                    continue;
                }
                self.host_files.insert(fqdn.clone(), se.source.clone());
                self.out.services.insert(
                    fqdn.clone(),
                    Service {
                        host: fqdn,
                        namespace: ns.clone(),
                        entry: se.key(),
                        ports: ports.clone(),
                        resolution: spec.resolution,
                        endpoints: spec.endpoints.clone(),
                        written_host: h.to_ascii_lowercase(),
                        export_to: spec.export_to.clone(),
                        workload_selector: spec
                            .workload_selector
                            .as_ref()
                            .map(|w| w.labels.clone()),
                        subject_alt_names: spec.subject_alt_names.clone(),
                    },
                );
            }
        }
    }

    // --------------------------------------------------------- DestinationRule

    fn destination_rules(&mut self, rules: &[Object<DestinationRuleSpec>]) {
        for dr in rules {
            let at = at("DestinationRule", dr);
            let spec = &dr.spec;
            self.export_to(&at, &spec.export_to);
            if spec.host.starts_with('*') {
                self.push(at.err(
                    "spec.host",
                    "wildcard hosts in DestinationRule are not supported yet",
                ));
                continue;
            }
            let host = self.out.resolve(&spec.host, &dr.metadata.namespace);
            let Some(service) = self.out.services.get(&host) else {
                self.push(at.err(
                    "spec.host",
                    format!(
                        "{:?} (resolved to {host}) matches no ServiceEntry",
                        spec.host
                    ),
                ));
                continue;
            };
            let service = service.clone();
            if let Some(tp) = &spec.traffic_policy {
                self.traffic_policy(&at, "spec.trafficPolicy", tp, &service);
            }
            let mut names = BTreeSet::new();
            for (i, s) in spec.subsets.iter().enumerate() {
                let f = format!("spec.subsets[{i}]");
                if s.name.is_empty() {
                    self.push(at.err(format!("{f}.name"), "must not be empty"));
                } else if !names.insert(s.name.as_str()) {
                    self.push(at.err(
                        format!("{f}.name"),
                        format!("duplicate subset {:?}", s.name),
                    ));
                }
                if let Some(tp) = &s.traffic_policy {
                    self.traffic_policy(&at, &format!("{f}.trafficPolicy"), tp, &service);
                }
            }
            if let Some(existing) = self.out.destination_rules.get(&host) {
                self.push(at.err(
                    "spec.host",
                    format!(
                        "DestinationRule {} ({}) already applies to {host}; one DestinationRule per host",
                        existing.key(),
                        existing.source
                    ),
                ));
                continue;
            }
            self.out.destination_rules.insert(host, dr.clone());
        }
    }

    fn traffic_policy(&mut self, at: &At, f: &str, tp: &TrafficPolicy, service: &Service) {
        if let Some(lb) = &tp.load_balancer {
            self.load_balancer(at, &format!("{f}.loadBalancer"), lb);
        }
        if let Some(cp) = &tp.connection_pool {
            self.connection_pool(at, &format!("{f}.connectionPool"), cp);
        }
        if let Some(od) = &tp.outlier_detection {
            self.outlier_detection(at, &format!("{f}.outlierDetection"), od);
        }
        if let Some(tls) = &tp.tls {
            self.client_tls(at, &format!("{f}.tls"), tls);
        }
        let mut seen = BTreeSet::new();
        for (i, p) in tp.port_level_settings.iter().enumerate() {
            let pf = format!("{f}.portLevelSettings[{i}]");
            match port_number(p.port.number) {
                None => {
                    self.push(at.err(format!("{pf}.port.number"), "must be between 1 and 65535"))
                }
                Some(n) if service.port(n).is_none() => self.push(at.err(
                    format!("{pf}.port.number"),
                    format!("service {} has no port {n}", service.host),
                )),
                Some(n) if !seen.insert(n) => self.push(at.err(
                    format!("{pf}.port.number"),
                    format!("duplicate settings for port {n}"),
                )),
                Some(_) => {}
            }
            if let Some(lb) = &p.load_balancer {
                self.load_balancer(at, &format!("{pf}.loadBalancer"), lb);
            }
            if let Some(cp) = &p.connection_pool {
                self.connection_pool(at, &format!("{pf}.connectionPool"), cp);
            }
            if let Some(od) = &p.outlier_detection {
                self.outlier_detection(at, &format!("{pf}.outlierDetection"), od);
            }
            if let Some(tls) = &p.tls {
                self.client_tls(at, &format!("{pf}.tls"), tls);
            }
        }
    }

    /// What each TLS mode needs and forbids. Files are read (and their
    /// contents checked) by the proxy that uses them.
    fn client_tls(&mut self, at: &At, f: &str, tls: &ClientTlsSettings) {
        let files = [
            ("clientCertificate", &tls.client_certificate),
            ("privateKey", &tls.private_key),
            ("caCertificates", &tls.ca_certificates),
        ];
        let mode = tls.mode.name();
        match tls.mode {
            TlsMode::Disable | TlsMode::IstioMutual => {
                for (name, v) in files {
                    if v.is_some() {
                        self.push(at.err(
                            format!("{f}.{name}"),
                            format!("is not used with mode {mode}: ISTIO_MUTUAL uses the proxy's own certificate and the mesh roots"),
                        ));
                    }
                }
                if tls.mode == TlsMode::Disable
                    && (tls.sni.is_some() || !tls.subject_alt_names.is_empty())
                {
                    self.push(at.err(
                        f.to_string(),
                        "sni and subjectAltNames are not used with mode DISABLE",
                    ));
                }
            }
            TlsMode::Simple | TlsMode::Mutual => {
                if tls.ca_certificates.is_none() {
                    self.push(at.err(
                        format!("{f}.caCertificates"),
                        format!("is required with mode {mode}: Trellis does not use a system trust store"),
                    ));
                }
                let needs_client = tls.mode == TlsMode::Mutual;
                for (name, v) in &files[..2] {
                    match (needs_client, v.is_some()) {
                        (true, false) => {
                            self.push(at.err(format!("{f}.{name}"), "is required with mode MUTUAL"))
                        }
                        (false, true) => self
                            .push(at.err(format!("{f}.{name}"), "is only used with mode MUTUAL")),
                        _ => {}
                    }
                }
            }
        }
        if tls.mode == TlsMode::IstioMutual {
            for (i, san) in tls.subject_alt_names.iter().enumerate() {
                if !san.starts_with("spiffe://") {
                    self.push(at.err(
                        format!("{f}.subjectAltNames[{i}]"),
                        format!("{san:?} is not a SPIFFE ID (spiffe://<trust-domain>/ns/<ns>/sa/<sa>); ISTIO_MUTUAL checks the server's SPIFFE ID"),
                    ));
                }
            }
        }
        for (name, v) in files {
            if v.as_deref().is_some_and(str::is_empty) {
                self.push(at.err(format!("{f}.{name}"), "is empty; give a file path"));
            }
        }
    }

    fn connection_pool(&mut self, at: &At, f: &str, cp: &ConnectionPoolSettings) {
        if let Some(tcp) = &cp.tcp {
            let f = format!("{f}.tcp");
            self.at_least_one(at, &format!("{f}.maxConnections"), tcp.max_connections);
            if let Some(t) = &tcp.connect_timeout {
                self.positive_duration(at, &format!("{f}.connectTimeout"), t);
            }
            if let Some(ka) = &tcp.tcp_keepalive {
                for (name, d) in [("time", &ka.time), ("interval", &ka.interval)] {
                    if let Some(d) = d {
                        self.positive_duration(at, &format!("{f}.tcpKeepalive.{name}"), d);
                    }
                }
            }
        }
        if let Some(http) = &cp.http {
            let f = format!("{f}.http");
            self.at_least_one(
                at,
                &format!("{f}.http1MaxPendingRequests"),
                http.http1_max_pending_requests,
            );
            self.at_least_one(
                at,
                &format!("{f}.http2MaxRequests"),
                http.http2_max_requests,
            );
            if let Some(n) = http.max_requests_per_connection
                && n < 0
            {
                self.push(at.err(
                    format!("{f}.maxRequestsPerConnection"),
                    format!("{n} is negative; use 0 (or omit it) for no limit"),
                ));
            }
            if let Some(n) = http.max_retries
                && n < 0
            {
                self.push(at.err(
                    format!("{f}.maxRetries"),
                    format!("{n} is negative; use 0 (or omit it) for Istio's default, no limit"),
                ));
            }
            if let Some(t) = &http.idle_timeout {
                self.positive_duration(at, &format!("{f}.idleTimeout"), t);
            }
        }
    }

    fn outlier_detection(&mut self, at: &At, f: &str, od: &OutlierDetection) {
        for (name, d) in [
            ("interval", &od.interval),
            ("baseEjectionTime", &od.base_ejection_time),
        ] {
            if let Some(d) = d {
                self.positive_duration(at, &format!("{f}.{name}"), d);
            }
        }
        for (name, p) in [
            ("maxEjectionPercent", od.max_ejection_percent),
            ("minHealthPercent", od.min_health_percent),
        ] {
            if let Some(p) = p
                && !(0..=100).contains(&p)
            {
                self.push(at.err(
                    format!("{f}.{name}"),
                    format!("{p} must be between 0 and 100"),
                ));
            }
        }
    }

    /// A count Istio requires to be positive; unset means Istio's default.
    fn at_least_one(&mut self, at: &At, f: &str, n: Option<i32>) {
        if let Some(n) = n
            && n < 1
        {
            self.push(at.err(
                f,
                format!("{n} must be at least 1 (omit the field for no limit)"),
            ));
        }
    }

    /// A duration that must parse and be more than zero.
    fn positive_duration(&mut self, at: &At, f: &str, s: &str) -> Option<Duration> {
        match duration::parse(s) {
            Err(e) => {
                self.push(at.err(f, e));
                None
            }
            Ok(d) if d.is_zero() => {
                self.push(at.err(f, format!("{s:?} must be greater than zero")));
                None
            }
            Ok(d) => Some(d),
        }
    }

    /// An Istio Percent: `value` from 0 to 100.
    fn percentage(&mut self, at: &At, f: &str, p: &Percent) {
        if !(0.0..=100.0).contains(&p.value) {
            self.push(at.err(
                format!("{f}.value"),
                format!("{} must be between 0 and 100", p.value),
            ));
        }
    }

    fn load_balancer(&mut self, at: &At, f: &str, lb: &LoadBalancerSettings) {
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            self.push(at.err(f, "set either simple or consistentHash, not both"));
        }
        if lb.simple == Some(SimpleLb::Passthrough) {
            self.push(at.err(format!("{f}.simple"), "PASSTHROUGH is not supported yet"));
        }
        if let Some(ch) = &lb.consistent_hash {
            let keys = [
                ch.http_header_name.is_some(),
                ch.http_cookie.is_some(),
                ch.use_source_ip == Some(true),
                ch.http_query_parameter_name.is_some(),
            ];
            if keys.iter().filter(|k| **k).count() != 1 {
                self.push(at.err(
                    format!("{f}.consistentHash"),
                    "set exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
                ));
            }
            if let Some(h) = &ch.http_header_name
                && http_header_name(h).is_none()
            {
                self.push(at.err(
                    format!("{f}.consistentHash.httpHeaderName"),
                    format!("{h:?} is not a valid header name"),
                ));
            }
            if let Some(c) = &ch.http_cookie {
                if c.name.is_empty() {
                    self.push(at.err(
                        format!("{f}.consistentHash.httpCookie.name"),
                        "must not be empty",
                    ));
                }
                if let Some(ttl) = &c.ttl
                    && let Err(e) = duration::parse(ttl)
                {
                    self.push(at.err(format!("{f}.consistentHash.httpCookie.ttl"), e));
                }
            }
            if ch.ring_hash.is_some() && ch.minimum_ring_size.is_some() {
                self.push(at.err(
                    format!("{f}.consistentHash"),
                    "set ringHash.minimumRingSize or the deprecated minimumRingSize, not both",
                ));
            }
            let size = ch
                .ring_hash
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(ch.minimum_ring_size);
            if let Some(size) = size
                && !(1..=8_388_608).contains(&size)
            {
                self.push(at.err(
                    format!("{f}.consistentHash.ringHash.minimumRingSize"),
                    "must be between 1 and 8388608",
                ));
            }
        }
        if let Some(loc) = &lb.locality_lb_setting {
            for (i, fo) in loc.failover.iter().enumerate() {
                if fo.from.is_empty()
                    || fo.to.is_empty()
                    || fo.from.contains('/')
                    || fo.to.contains('/')
                {
                    self.push(at.err(
                        format!("{f}.localityLbSetting.failover[{i}]"),
                        "from and to must be region names (no zone or subzone)",
                    ));
                }
            }
        }
    }

    // ---------------------------------------------------------- VirtualService

    fn virtual_services(&mut self, vss: &[Object<VirtualServiceSpec>]) {
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        for vs in vss {
            let at = at("VirtualService", vs);
            let ns = vs.metadata.namespace.as_str();
            let spec = &vs.spec;
            self.export_to(&at, &spec.export_to);
            for (i, g) in spec.gateways.iter().enumerate() {
                if g != "mesh" {
                    self.push(at.err(
                        format!("spec.gateways[{i}]"),
                        format!("gateway {g:?}: only \"mesh\" (sidecars) is supported yet"),
                    ));
                }
            }
            if spec.hosts.is_empty() {
                self.push(at.err("spec.hosts", "at least one host is required"));
            }
            if spec.http.is_empty() && spec.tcp.is_empty() {
                self.push(at.err("spec", "needs http or tcp routes"));
            }
            let mut hosts = Vec::new();
            for (i, h) in spec.hosts.iter().enumerate() {
                let f = format!("spec.hosts[{i}]");
                if h != "*" && !valid_host(h) {
                    self.push(at.err(
                        f,
                        format!("{h:?} is not a valid host (a DNS name, *.suffix or *)"),
                    ));
                    continue;
                }
                let resolved = self.out.resolve(h, ns);
                if let Some(other) = owner.get(&resolved) {
                    self.push(at.err(
                        f,
                        format!("host {resolved} is already routed by VirtualService {other}; one VirtualService per host"),
                    ));
                    continue;
                }
                owner.insert(resolved.clone(), format!("{} ({})", vs.key(), vs.source));
                self.vs_of_host
                    .insert(resolved.clone(), self.out.virtual_services.len());
                hosts.push(resolved);
            }
            // The ports an HTTP route of this VirtualService serves: the HTTP
            // ports of its service hosts, and "any port" (None) for the others.
            let request_ports: Vec<Option<u16>> = hosts
                .iter()
                .flat_map(|h| match self.out.services.get(h) {
                    Some(s) => s
                        .ports
                        .iter()
                        .filter(|p| p.protocol.is_http())
                        .map(|p| Some(p.number))
                        .collect(),
                    None => vec![None],
                })
                .collect();
            for (i, r) in spec.http.iter().enumerate() {
                self.http_route(&at, ns, &format!("spec.http[{i}]"), r, &request_ports);
            }
            for (i, r) in spec.tcp.iter().enumerate() {
                let f = format!("spec.tcp[{i}]");
                for (j, m) in r.matches.iter().enumerate() {
                    if let Some(p) = m.port
                        && port_number(p).is_none()
                    {
                        self.push(at.err(
                            format!("{f}.match[{j}].port"),
                            "must be between 1 and 65535",
                        ));
                    }
                }
                if r.route.is_empty() {
                    self.push(at.err(format!("{f}.route"), "at least one destination is required"));
                }
                let dests: Vec<_> = r.route.iter().map(|d| (&d.destination, d.weight)).collect();
                self.destinations(&at, ns, &f, &dests, DestUse::TcpRoute);
            }
            self.out.virtual_services.push((hosts, vs.clone()));
        }
    }

    fn http_route(
        &mut self,
        at: &At,
        ns: &str,
        f: &str,
        r: &HttpRoute,
        request_ports: &[Option<u16>],
    ) {
        for (j, m) in r.matches.iter().enumerate() {
            let mf = format!("{f}.match[{j}]");
            for (name, sm) in [
                ("uri", &m.uri),
                ("scheme", &m.scheme),
                ("method", &m.method),
                ("authority", &m.authority),
            ] {
                if let Some(sm) = sm {
                    self.string_match(at, &format!("{mf}.{name}"), sm, false);
                }
            }
            for (kind, map) in [
                ("headers", &m.headers),
                ("withoutHeaders", &m.without_headers),
            ] {
                for (h, sm) in map {
                    if http_header_name(h).is_none() {
                        self.push(at.err(
                            format!("{mf}.{kind}.{h}"),
                            format!("{h:?} is not a valid header name"),
                        ));
                    }
                    self.string_match(at, &format!("{mf}.{kind}.{h}"), sm, true);
                }
            }
            for (q, sm) in &m.query_params {
                self.string_match(at, &format!("{mf}.queryParams.{q}"), sm, true);
            }
            if let Some(p) = m.port
                && port_number(p).is_none()
            {
                self.push(at.err(format!("{mf}.port"), "must be between 1 and 65535"));
            }
        }
        if r.route.is_empty() {
            self.push(at.err(format!("{f}.route"), "at least one destination is required"));
        }
        let dests: Vec<_> = r.route.iter().map(|d| (&d.destination, d.weight)).collect();
        self.destinations(at, ns, f, &dests, DestUse::HttpRoute);
        for (k, d) in r.route.iter().enumerate() {
            if let Some(h) = &d.headers {
                self.headers(at, &format!("{f}.route[{k}].headers"), h);
            }
        }
        if let Some(h) = &r.headers {
            self.headers(at, &format!("{f}.headers"), h);
        }
        if let Some(t) = &r.timeout
            && let Err(e) = duration::parse(t)
        {
            self.push(at.err(format!("{f}.timeout"), e));
        }
        if let Some(rw) = &r.rewrite {
            if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
                self.push(at.err(
                    format!("{f}.rewrite"),
                    "set uri or uriRegexRewrite, not both",
                ));
            }
            if let Some(uri) = &rw.uri
                && !uri.starts_with('/')
            {
                self.push(at.err(
                    format!("{f}.rewrite.uri"),
                    format!("{uri:?} must start with '/'"),
                ));
            }
            if let Some(rr) = &rw.uri_regex_rewrite
                && let Err(e) = compile_regex(&rr.pattern)
            {
                self.push(at.err(format!("{f}.rewrite.uriRegexRewrite.match"), e));
            }
            if let Some(a) = &rw.authority
                && http::uri::Authority::try_from(a.as_str()).is_err()
            {
                self.push(at.err(
                    format!("{f}.rewrite.authority"),
                    format!("{a:?} is not a valid authority"),
                ));
            }
        }
        if let Some(retries) = &r.retries {
            self.retries(at, &format!("{f}.retries"), retries);
        }
        if let Some(fault) = &r.fault {
            self.fault(at, &format!("{f}.fault"), fault);
        }
        self.mirrors(at, ns, f, r, request_ports);
        // Retries, faults and mirrors act on HTTP requests: a route whose
        // destination is an opaque port cannot honour them.
        let policies = [
            ("retries", "retries", r.retries.is_some()),
            ("fault", "fault injection", r.fault.is_some()),
            ("mirror", "mirroring", r.mirror.is_some()),
            (
                "mirrors",
                "mirroring",
                r.mirrors.as_ref().is_some_and(|m| !m.is_empty()),
            ),
        ];
        if policies.iter().any(|p| p.2) {
            let opaque = r.route.iter().enumerate().find_map(|(k, d)| {
                self.implicit_opaque_port(ns, &d.destination, request_ports)
                    .map(|(host, port)| (k, host, port))
            });
            if let Some((k, host, port)) = opaque {
                for (name, what, _) in policies.iter().filter(|p| p.2) {
                    self.push(at.err(
                        format!("{f}.{name}"),
                        format!(
                            "{what} cannot be honoured: route[{k}].destination sends to port {} of {host}, \
                             which is {} (opaque bytes, not HTTP requests); set destination.port to an \
                             HTTP port of {host}, or remove {name} from this route",
                            port.number,
                            port.protocol.name()
                        ),
                    ));
                }
            }
        }
    }

    fn retries(&mut self, at: &At, f: &str, r: &HttpRetry) {
        if let Some(n) = r.attempts
            && n < 0
        {
            self.push(at.err(
                format!("{f}.attempts"),
                format!("{n} is negative; use 0 for no retries"),
            ));
        }
        if let Some(t) = &r.per_try_timeout {
            self.positive_duration(at, &format!("{f}.perTryTimeout"), t);
        }
        if let Some(on) = &r.retry_on
            && let Err(e) = policy::parse_retry_on(on)
        {
            self.push(at.err(format!("{f}.retryOn"), e));
        }
    }

    fn fault(&mut self, at: &At, f: &str, fault: &HttpFaultInjection) {
        if fault.delay.is_none() && fault.abort.is_none() {
            self.push(at.err(f, "set delay, abort or both"));
        }
        if let Some(d) = &fault.delay {
            let df = format!("{f}.delay");
            match &d.fixed_delay {
                Some(t) => {
                    self.positive_duration(at, &format!("{df}.fixedDelay"), t);
                }
                None => self.push(at.err(
                    format!("{df}.fixedDelay"),
                    "is required (exponentialDelay is not supported yet)",
                )),
            }
            if let Some(p) = &d.percentage {
                self.percentage(at, &format!("{df}.percentage"), p);
            }
            if let Some(p) = d.percent
                && !(0..=100).contains(&p)
            {
                self.push(at.err(
                    format!("{df}.percent"),
                    format!("{p} must be between 0 and 100"),
                ));
            }
            if d.percentage.is_some() && d.percent.is_some() {
                self.push(at.err(df, "set percentage or the deprecated percent, not both"));
            }
        }
        if let Some(a) = &fault.abort {
            let af = format!("{f}.abort");
            if a.http_status.is_some() == a.grpc_status.is_some() {
                self.push(at.err(
                    &af,
                    "set exactly one of httpStatus, grpcStatus (http2Error is not supported yet)",
                ));
            }
            if let Some(s) = a.http_status
                && !(200..=599).contains(&s)
            {
                self.push(at.err(
                    format!("{af}.httpStatus"),
                    format!("{s} must be between 200 and 599"),
                ));
            }
            if let Some(g) = &a.grpc_status
                && policy::grpc_code(g).is_none()
            {
                self.push(at.err(
                    format!("{af}.grpcStatus"),
                    format!(
                        "{g:?} is not a gRPC status code name: use one of {}",
                        join(GRPC_CODES.iter().map(|c| c.0))
                    ),
                ));
            }
            if let Some(p) = &a.percentage {
                self.percentage(at, &format!("{af}.percentage"), p);
            }
        }
    }

    fn mirrors(
        &mut self,
        at: &At,
        ns: &str,
        f: &str,
        r: &HttpRoute,
        request_ports: &[Option<u16>],
    ) {
        if r.mirror.is_some() && r.mirrors.is_some() {
            self.push(at.err(f, "set mirror (with mirrorPercentage) or mirrors, not both"));
        }
        if r.mirror_percentage.is_some() && r.mirror.is_none() {
            self.push(at.err(
                format!("{f}.mirrorPercentage"),
                "applies to mirror, which is not set (each entry of mirrors has its own percentage)",
            ));
        }
        if let Some(p) = &r.mirror_percentage {
            self.percentage(at, &format!("{f}.mirrorPercentage"), p);
        }
        let mut targets = Vec::new();
        if let Some(d) = &r.mirror {
            targets.push((format!("{f}.mirror"), d));
        }
        for (i, m) in r.mirrors.iter().flatten().enumerate() {
            targets.push((format!("{f}.mirrors[{i}].destination"), &m.destination));
            if let Some(p) = &m.percentage {
                self.percentage(at, &format!("{f}.mirrors[{i}].percentage"), p);
            }
        }
        for (df, d) in targets {
            self.destination(at, ns, &df, d, DestUse::Mirror);
            if let Some((host, port)) = self.implicit_opaque_port(ns, d, request_ports) {
                self.push(at.err(
                    df,
                    format!(
                        "mirrored requests would go to port {} of {host}, which is {}, not HTTP; \
                         set port to an HTTP port of {host}",
                        port.number,
                        port.protocol.name()
                    ),
                ));
            }
        }
    }

    /// For a destination without a port, the first non-HTTP port it may send
    /// to, picked as the proxy picks it: the request's port if the service
    /// has it, else the service's only port. (A destination with a port is
    /// checked by [`Validator::destination`].)
    fn implicit_opaque_port(
        &self,
        ns: &str,
        d: &Destination,
        request_ports: &[Option<u16>],
    ) -> Option<(String, Port)> {
        if d.port.is_some() {
            return None;
        }
        let host = self.out.resolve(&d.host, ns);
        let service = self.out.services.get(&host)?;
        request_ports
            .iter()
            .filter_map(|rp| match rp.and_then(|q| service.port(q)) {
                Some(p) => Some(p),
                None if service.ports.len() == 1 => service.ports.first(),
                None => None,
            })
            .find(|p| !p.protocol.is_http())
            .map(|p| (host.clone(), p.clone()))
    }

    fn destinations(
        &mut self,
        at: &At,
        ns: &str,
        f: &str,
        dests: &[(&Destination, Option<u32>)],
        usage: DestUse,
    ) {
        if dests.len() == 1 {
            if let Some(w) = dests[0].1
                && w != 100
                && w != 0
            {
                self.push(at.err(
                    format!("{f}.route[0].weight"),
                    format!(
                        "a single destination takes all traffic; weight {w} must be 100 or omitted"
                    ),
                ));
            }
        } else if !dests.is_empty() {
            let missing: Vec<_> = dests
                .iter()
                .enumerate()
                .filter(|(_, d)| d.1.is_none())
                .map(|(i, _)| i)
                .collect();
            let sum: u64 = dests.iter().map(|d| u64::from(d.1.unwrap_or(0))).sum();
            if !missing.is_empty() {
                self.push(at.err(
                    format!("{f}.route[{}].weight", missing[0]),
                    "with several destinations every destination needs a weight, and the weights must sum to 100",
                ));
            } else if sum != 100 {
                self.push(at.err(
                    format!("{f}.route"),
                    format!("weights sum to {sum}; they must sum to 100"),
                ));
            }
        }
        for (k, (d, _)) in dests.iter().enumerate() {
            self.destination(at, ns, &format!("{f}.route[{k}].destination"), d, usage);
        }
    }

    /// One destination at `df`: its host is a known service, its port one of
    /// the service's (an HTTP port unless it is a tcp route's), its subset
    /// defined by the host's DestinationRule.
    fn destination(&mut self, at: &At, ns: &str, df: &str, d: &Destination, usage: DestUse) {
        let host = self.out.resolve(&d.host, ns);
        let Some(service) = self.out.services.get(&host) else {
            self.push(at.err(
                format!("{df}.host"),
                format!("{:?} (resolved to {host}) matches no ServiceEntry", d.host),
            ));
            return;
        };
        if let Some(p) = d.port {
            match port_number(p.number) {
                None => {
                    self.push(at.err(format!("{df}.port.number"), "must be between 1 and 65535"))
                }
                Some(n) => match service.port(n) {
                    None => self.push(at.err(
                        format!("{df}.port.number"),
                        format!(
                            "service {host} has no port {n} (ports: {})",
                            join(service.ports.iter().map(|p| p.number))
                        ),
                    )),
                    Some(port) if usage != DestUse::TcpRoute && !port.protocol.is_http() => {
                        let fix = if usage == DestUse::Mirror {
                            "only HTTP requests can be mirrored"
                        } else {
                            "route it with a tcp route"
                        };
                        self.push(at.err(
                            format!("{df}.port.number"),
                            format!(
                                "port {n} of {host} is {}, not HTTP; {fix}",
                                port.protocol.name()
                            ),
                        ))
                    }
                    Some(_) => {}
                },
            }
        }
        if let Some(subset) = &d.subset {
            let defined = self
                .out
                .destination_rules
                .get(&host)
                .is_some_and(|dr| dr.spec.subsets.iter().any(|s| &s.name == subset));
            if !defined {
                self.push(at.err(
                    format!("{df}.subset"),
                    format!("subset {subset:?} is not defined by any DestinationRule for {host}"),
                ));
            }
        }
    }

    // --------------------------------------------------------- Trellis kinds

    fn rate_limit_policies(&mut self, policies: &[Object<RateLimitPolicySpec>]) {
        // (host, route name or None for host-wide) -> the policy that claimed it.
        let mut claimed: BTreeMap<(String, Option<String>), String> = BTreeMap::new();
        for rl in policies {
            let at = at("RateLimitPolicy", rl);
            let ns = rl.metadata.namespace.as_str();
            let spec = &rl.spec;
            let bucket = &spec.token_bucket;
            if bucket.max_tokens == 0 {
                self.push(at.err("spec.tokenBucket.maxTokens", "must be at least 1"));
            }
            if bucket.tokens_per_fill == Some(0) {
                self.push(at.err(
                    "spec.tokenBucket.tokensPerFill",
                    "must be at least 1 (omit it to refill up to maxTokens)",
                ));
            }
            self.positive_duration(&at, "spec.tokenBucket.fillInterval", &bucket.fill_interval);
            if spec.host != "*" && !valid_host(&spec.host) {
                self.push(at.err(
                    "spec.host",
                    format!(
                        "{:?} is not a valid host (a DNS name, *.suffix or *)",
                        spec.host
                    ),
                ));
                continue;
            }
            let host = self.out.resolve(&spec.host, ns);
            // The host's VirtualService, `namespace/name (file)`, and its route names.
            let vs: Option<(String, Vec<String>)> = self.vs_of_host.get(&host).map(|i| {
                let vs = &self.out.virtual_services[*i].1;
                let names = vs.spec.http.iter().filter_map(|r| r.name.clone());
                (format!("{} ({})", vs.key(), vs.source), names.collect())
            });
            if vs.is_none() && !self.out.services.contains_key(&host) {
                self.push(at.err(
                    "spec.host",
                    format!(
                        "{:?} (resolved to {host}) matches no ServiceEntry or VirtualService host",
                        spec.host
                    ),
                ));
                continue;
            }
            let me = format!("{} ({})", rl.key(), rl.source);
            if spec.routes.is_empty() {
                match claimed.get(&(host.clone(), None)) {
                    Some(other) => self.push(at.err(
                        "spec.host",
                        format!(
                            "RateLimitPolicy {other} already limits every request to {host}; \
                             one host-wide RateLimitPolicy per host"
                        ),
                    )),
                    None => {
                        claimed.insert((host.clone(), None), me.clone());
                    }
                }
            }
            let mut seen = BTreeSet::new();
            for (i, name) in spec.routes.iter().enumerate() {
                let f = format!("spec.routes[{i}]");
                if !seen.insert(name.as_str()) {
                    self.push(at.err(f, format!("duplicate route {name:?}")));
                    continue;
                }
                match &vs {
                    Some((vs, names)) if !names.contains(name) => {
                        let known = if names.is_empty() {
                            "it names none of its http routes".to_string()
                        } else {
                            format!("its http routes are named {}", join(names))
                        };
                        self.push(at.err(
                            f,
                            format!(
                                "VirtualService {vs} for {host} has no http route named {name:?}; {known}"
                            ),
                        ));
                        continue;
                    }
                    Some(_) => {}
                    None => {
                        self.push(at.err(
                            f,
                            format!(
                                "{host} has no VirtualService, so it has no named routes; \
                                 omit routes to limit every request to {host}"
                            ),
                        ));
                        continue;
                    }
                }
                let key = (host.clone(), Some(name.clone()));
                match claimed.get(&key) {
                    Some(other) => self.push(at.err(
                        f,
                        format!(
                            "RateLimitPolicy {other} already limits route {name:?} of {host}; \
                             one RateLimitPolicy per host and route"
                        ),
                    )),
                    None => {
                        claimed.insert(key, me.clone());
                    }
                }
            }
            self.out.rate_limits.push((host, rl.clone()));
        }
    }

    fn peer_authentications(&mut self, policies: &[Object<PeerAuthenticationSpec>]) {
        for (i, pa) in policies.iter().enumerate() {
            let at = at("PeerAuthentication", pa);
            let mut ok = true;
            if !pa.spec.port_level_mtls.is_empty() && pa.spec.selector.is_none() {
                self.push(at.err(
                    "spec.portLevelMtls",
                    "needs spec.selector: port-level modes apply to the ports of selected workloads (as in Istio)",
                ));
                ok = false;
            }
            for port in pa.spec.port_level_mtls.keys() {
                if !port.parse::<u16>().is_ok_and(|p| p > 0) {
                    self.push(at.err(
                        format!("spec.portLevelMtls.{port}"),
                        "is not a port number (1-65535)",
                    ));
                    ok = false;
                }
            }
            if pa.spec.selector.is_none()
                && let Some(older) = policies[..i].iter().find(|o| {
                    o.metadata.namespace == pa.metadata.namespace && o.spec.selector.is_none()
                })
            {
                self.push(at.err(
                    "spec.selector",
                    format!(
                        "PeerAuthentication {} ({}) already applies to namespace {} without a selector; one per namespace",
                        older.key(),
                        older.source,
                        pa.metadata.namespace
                    ),
                ));
                ok = false;
            }
            if ok {
                self.out.peer_authentications.push(pa.clone());
            }
        }
    }

    fn sidecars(&mut self, sidecars: &[Object<SidecarSpec>]) {
        for (i, sc) in sidecars.iter().enumerate() {
            let at = at("Sidecar", sc);
            for (j, e) in sc.spec.egress.iter().enumerate() {
                if e.hosts.is_empty() {
                    self.push(at.err(
                        format!("spec.egress[{j}].hosts"),
                        "is empty; list the hosts this workload may call, e.g. \"./*\"",
                    ));
                }
                for (k, h) in e.hosts.iter().enumerate() {
                    if let Err(e) = crate::sidecar::EgressHost::parse(h) {
                        self.push(at.err(format!("spec.egress[{j}].hosts[{k}]"), e));
                    }
                }
            }
            if sc.spec.workload_selector.is_none()
                && let Some(older) = sidecars[..i].iter().find(|o| {
                    o.metadata.namespace == sc.metadata.namespace
                        && o.spec.workload_selector.is_none()
                })
            {
                self.push(at.err(
                    "spec.workloadSelector",
                    format!(
                        "Sidecar {} ({}) already applies to namespace {} without a selector; one per namespace",
                        older.key(),
                        older.source,
                        sc.metadata.namespace
                    ),
                ));
                continue;
            }
            self.out.sidecars.push(sc.clone());
        }
    }

    fn retry_budgets(&mut self, budgets: &[Object<RetryBudgetSpec>]) {
        for rb in budgets {
            let at = at("RetryBudget", rb);
            let spec = &rb.spec;
            if !(spec.retry_ratio.is_finite() && (0.0..=1000.0).contains(&spec.retry_ratio)) {
                self.push(at.err(
                    "spec.retryRatio",
                    format!(
                        "{} must be between 0 and 1000 (retries per request: 0.2 allows 20% more requests)",
                        spec.retry_ratio
                    ),
                ));
            }
            match duration::parse(&spec.ttl) {
                Err(e) => self.push(at.err("spec.ttl", e)),
                Ok(d) if d < Duration::from_secs(1) || d > Duration::from_secs(60) => {
                    self.push(at.err(
                        "spec.ttl",
                        format!("{:?} must be between 1s and 60s", spec.ttl),
                    ))
                }
                Ok(_) => {}
            }
            let host = self.out.resolve(&spec.host, &rb.metadata.namespace);
            if !self.out.services.contains_key(&host) {
                self.push(at.err(
                    "spec.host",
                    format!(
                        "{:?} (resolved to {host}) matches no ServiceEntry",
                        spec.host
                    ),
                ));
                continue;
            }
            if let Some(existing) = self.out.retry_budgets.get(&host) {
                self.push(at.err(
                    "spec.host",
                    format!(
                        "RetryBudget {} ({}) already applies to {host}; one RetryBudget per host",
                        existing.key(),
                        existing.source
                    ),
                ));
                continue;
            }
            self.out.retry_budgets.insert(host, rb.clone());
        }
    }

    fn string_match(&mut self, at: &At, f: &str, sm: &StringMatch, presence_ok: bool) {
        let set = [sm.exact.is_some(), sm.prefix.is_some(), sm.regex.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if set > 1 || (set == 0 && !presence_ok) {
            self.push(at.err(f, "set exactly one of exact, prefix, regex"));
        }
        if let Some(re) = &sm.regex
            && let Err(e) = compile_regex(re)
        {
            self.push(at.err(format!("{f}.regex"), e));
        }
    }

    fn headers(&mut self, at: &At, f: &str, h: &Headers) {
        for (side, ops) in [("request", &h.request), ("response", &h.response)] {
            let Some(ops) = ops else { continue };
            for (op, map) in [("set", &ops.set), ("add", &ops.add)] {
                for (name, value) in map {
                    let hf = format!("{f}.{side}.{op}.{name}");
                    if http_header_name(name).is_none() || name.starts_with(':') {
                        self.push(at.err(
                            &hf,
                            format!("{name:?} is not a header name that can be set"),
                        ));
                    } else if is_hop_by_hop(name) {
                        self.push(at.err(
                            &hf,
                            format!("{name:?} is a hop-by-hop header the proxy manages"),
                        ));
                    }
                    if http::HeaderValue::from_str(value).is_err() {
                        self.push(at.err(&hf, "value contains characters not allowed in a header"));
                    }
                }
            }
            for (i, name) in ops.remove.iter().enumerate() {
                if http_header_name(name).is_none() {
                    self.push(at.err(
                        format!("{f}.{side}.remove[{i}]"),
                        format!("{name:?} is not a valid header name"),
                    ));
                }
            }
        }
    }

    fn export_to(&mut self, at: &At, export_to: &[String]) {
        for (i, e) in export_to.iter().enumerate() {
            if e != "*" && e != "." && !valid_label(e) {
                self.push(at.err(
                    format!("spec.exportTo[{i}]"),
                    format!("{e:?} is not \"*\", \".\" or a namespace name"),
                ));
            }
        }
    }
}

/// Compile a user regex the way Istio/Envoy match it: RE2 syntax, whole value.
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            format!(
                "invalid regex {pattern:?}: {}",
                e.to_string().lines().last().unwrap_or("")
            )
        })
}

fn port_number(n: u32) -> Option<u16> {
    u16::try_from(n).ok().filter(|n| *n != 0)
}

fn http_header_name(name: &str) -> Option<http::HeaderName> {
    http::HeaderName::from_bytes(name.as_bytes()).ok()
}

pub fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

/// A DNS label: lowercase letters, digits and `-`, 1 to 63 characters.
pub(crate) fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS name, optionally with a `*.` prefix (case-insensitive).
pub fn valid_host(h: &str) -> bool {
    let h = h.to_ascii_lowercase();
    let h = h.strip_prefix("*.").unwrap_or(&h);
    !h.is_empty() && h.len() <= 253 && h.split('.').all(valid_label)
}

/// `10.0.0.1` or `10.0.0.0/8` (v4 or v6).
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = ip.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some((ip, len))
}

fn join<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
