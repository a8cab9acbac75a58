//! Table tests of the conversion, and the round-trip property: YAML ->
//! `trellis_translate` -> Envoy resources -> [`assemble`] routes like
//! YAML -> `config::compile` (same route, destinations, weights and
//! policies for the same request; same clusters).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as EnvoyCluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use http::HeaderMap;
use trellis_model::validate::Validated;
use trellis_model::{ResourceSet, parse_documents};
use trellis_translate::names::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use trellis_translate::{ProxyIdentity, Registry, Snapshot};

use super::*;
use crate::config::compile;
use crate::route::{RequestView, rewrite_path, select, select_tcp};

fn validated_docs(docs: Vec<trellis_model::resource::Resource>) -> Validated {
    let mut set = ResourceSet::default();
    for d in docs {
        set.push(d);
    }
    trellis_model::validate::validate(&set).unwrap_or_else(|e| panic!("validate: {e}"))
}

fn validated(yaml: &str) -> Validated {
    validated_docs(parse_documents("test.yaml", yaml).unwrap_or_else(|e| panic!("parse: {e}")))
}

fn validated_dir(dir: &Path) -> Validated {
    validated_docs(trellis_model::load_dir(dir).unwrap_or_else(|e| panic!("{e}")))
}

/// Every DNS name resolves to one address, on both paths.
fn fake_dns(_: &str) -> std::io::Result<Vec<IpAddr>> {
    Ok(vec![IpAddr::from([10, 9, 9, 9])])
}

fn via_yaml(v: &Validated, ns: &str, metrics: &Metrics) -> ProxyConfig {
    let locality = Locality::default();
    let ctx = compile::Context {
        namespace: ns,
        locality: &locality,
        metrics,
        previous: None,
        resolve: &fake_dns,
        has_certificate: false,
    };
    compile::compile(v.clone(), &ctx).unwrap_or_else(|e| panic!("compile: {e}"))
}

fn snapshot(v: &Validated, ns: &str) -> Snapshot {
    let address: IpAddr = "127.0.0.10".parse().unwrap();
    let proxy = ProxyIdentity {
        name: "client".into(),
        namespace: ns.into(),
        address,
        outbound_port: 15001,
        inbound_port: 15006,
        app: SocketAddr::new(address, 8080),
        locality: None,
        egress: None,
        proxyless: false,
        labels: Default::default(),
        vhds: false,
    };
    trellis_translate::translate(v, &Registry::default(), &proxy)
}

/// Decodes and converts a snapshot, as the client does response by response.
fn resources(snap: &Snapshot) -> Result<Resources, ConvertError> {
    let mut r = Resources::default();
    let of = |t: &str| snap.of_type(t).into_iter().flatten();
    for (name, res) in of(LISTENER_TYPE) {
        let l =
            Listener::decode(res.any.value.as_slice()).unwrap_or_else(|e| panic!("{name}: {e}"));
        r.listeners.insert(name.clone(), listener(&l)?);
    }
    for (name, res) in of(ROUTE_TYPE) {
        let rc = RouteConfiguration::decode(res.any.value.as_slice())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        r.routes.insert(name.clone(), route_config(&rc)?);
    }
    for (name, res) in of(CLUSTER_TYPE) {
        let c = EnvoyCluster::decode(res.any.value.as_slice())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        r.clusters.insert(name.clone(), cluster(&c)?);
    }
    for (name, res) in of(ENDPOINT_TYPE) {
        let cla = ClusterLoadAssignment::decode(res.any.value.as_slice())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        r.assignments.insert(name.clone(), assignment(&cla)?);
    }
    Ok(r)
}

fn via_xds(v: &Validated, ns: &str, metrics: &Metrics) -> ProxyConfig {
    let r = resources(&snapshot(v, ns)).unwrap_or_else(|e| panic!("convert: {e}"));
    let ctx = Context {
        metrics,
        previous: None,
        resolve: &fake_dns,
        has_certificate: false,
    };
    assemble(&r, &ctx)
}

/// A request that satisfies a match block's literal conditions.
struct Req {
    method: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
}

fn sample(m: Option<&RequestMatch>) -> Req {
    let lit = |s: &StringMatcher| match s {
        StringMatcher::Exact(e) => Some(e.clone()),
        StringMatcher::Prefix(p) => Some(format!("{p}x")),
        StringMatcher::Present => Some("1".into()),
        StringMatcher::Regex(_) => None,
    };
    let mut req = Req {
        method: "GET".into(),
        path: "/".into(),
        query: None,
        headers: HeaderMap::new(),
    };
    let Some(m) = m else { return req };
    if let Some(p) = m.uri.as_ref().and_then(lit) {
        req.path = if p.starts_with('/') {
            p
        } else {
            format!("/{p}")
        };
    }
    if let Some(x) = m.method.as_ref().and_then(lit) {
        req.method = x;
    }
    for (k, s) in &m.headers {
        let v = lit(s).unwrap_or_else(|| "u1".into());
        req.headers.insert(k.clone(), v.parse().unwrap());
    }
    let q: Vec<String> = m
        .query_params
        .iter()
        .map(|(k, s)| format!("{k}={}", lit(s).unwrap_or_default()))
        .collect();
    if !q.is_empty() {
        req.query = Some(q.join("&"));
    }
    req
}

fn edits(e: &HeaderEdits) -> String {
    let mut set: Vec<String> = e.set.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    let mut add: Vec<String> = e.add.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    let mut rm: Vec<String> = e.remove.iter().map(|k| k.to_string()).collect();
    set.sort();
    add.sort();
    rm.sort();
    format!("set{set:?} add{add:?} rm{rm:?}")
}

fn ops(h: &HeaderOps) -> String {
    format!("req[{}] resp[{}]", edits(&h.request), edits(&h.response))
}

/// Everything the proxy decides for one request, as text.
fn decide(cfg: &ProxyConfig, host: &str, port: u16, req: &Req) -> String {
    let Some(vh) = cfg.outbound.find(host) else {
        return "no host".into();
    };
    let rl = |r: &Option<RateLimit>| r.is_some();
    let Some(routes) = vh.routes_for(port) else {
        return format!("host {} has no port {port}", vh.name);
    };
    match routes {
        PortRoutes::Tcp(t) => match select_tcp(t, port) {
            None => "tcp: none".into(),
            Some(r) => {
                let d: Vec<String> = r
                    .destinations
                    .iter()
                    .filter(|(w, _)| *w > 0)
                    .map(|(w, c)| format!("{}={w}", c.name))
                    .collect();
                format!("tcp {d:?}")
            }
        },
        PortRoutes::Http(routes) => {
            let authority = if port == 80 {
                host.to_string()
            } else {
                format!("{host}:{port}")
            };
            let view = RequestView {
                method: &req.method,
                scheme: "http",
                authority: &authority,
                path: &req.path,
                query: req.query.as_deref(),
                headers: &req.headers,
                port,
            };
            let Some((route, matched)) = select(routes, &view) else {
                return format!("host rl={} no route", rl(&vh.rate_limit));
            };
            let a = &route.action;
            let dests: Vec<String> = a
                .destinations
                .iter()
                .filter(|d| d.weight > 0)
                .map(|d| format!("{}={} {}", d.cluster.name, d.weight, ops(&d.headers)))
                .collect();
            let retry = if a.retry.retries == 0 {
                format!("no retries, per try {:?}", a.retry.per_try_timeout)
            } else {
                format!("{:?}", a.retry)
            };
            let rewritten = a.rewrite.as_ref().map(|rw| {
                (
                    rw.uri
                        .as_ref()
                        .map(|u| rewrite_path(u, matched, &req.path, req.query.as_deref())),
                    rw.authority.clone(),
                )
            });
            let mirrors: Vec<String> = a
                .mirrors
                .iter()
                .map(|m| format!("{}@{}", m.cluster.name, m.percent))
                .collect();
            format!(
                "host rl={} route {} -> {dests:?} timeout {:?} retry {retry} fault {:?} \
                 mirrors {mirrors:?} rewrite {rewritten:?} headers {} route rl={}",
                rl(&vh.rate_limit),
                route.name,
                a.timeout,
                a.fault,
                ops(&a.headers),
                rl(&a.rate_limit),
            )
        }
    }
}

/// The requests to compare on: for every name and port the YAML path
/// routes, one request per match block, and one that matches nothing.
fn requests(cfg: &ProxyConfig) -> Vec<(String, u16, Req)> {
    let mut out = Vec::new();
    for (name, vh) in cfg.outbound.hosts() {
        let host = name.replace('*', "x");
        let mut ports: Vec<u16> = vh.ports.iter().map(|(p, _)| *p).collect();
        if vh.any_port.is_some() {
            ports.extend([80, 8080, 9999]);
        }
        for port in ports {
            out.push((
                host.clone(),
                port,
                Req {
                    method: "POST".into(),
                    path: "/nothing-matches-this".into(),
                    query: None,
                    headers: HeaderMap::new(),
                },
            ));
            let Some(PortRoutes::Http(routes)) = vh.routes_for(port) else {
                out.push((host.clone(), port, sample(None)));
                continue;
            };
            for r in routes.iter() {
                if r.matches.is_empty() {
                    out.push((host.clone(), port, sample(None)));
                }
                for m in &r.matches {
                    out.push((host.clone(), port, sample(Some(m))));
                }
            }
        }
    }
    out
}

fn cluster_summary(c: &Cluster) -> String {
    let mut eps: Vec<String> = c
        .balancer
        .endpoints()
        .iter()
        .map(|e| format!("{} w{} {}", e.addr, e.weight, e.locality))
        .collect();
    eps.sort();
    // Envoy's keepalive settings are whole seconds.
    let keepalive = c.upstream.keepalive.map(|k| {
        let up = |d: Option<Duration>| d.map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
        (up(k.time), up(k.interval), k.probes)
    });
    // Opaque TCP has no request to hash and no HTTP connection reuse: the
    // translation carries neither for TCP ports, and neither matters.
    let (policy, hash, http) = match c.protocol {
        UpstreamProtocol::Opaque => (
            format!("{:?}", std::mem::discriminant(c.balancer.policy())),
            None,
            None,
        ),
        _ => (
            format!("{:?}", c.balancer.policy()),
            c.hash_key.clone(),
            Some((
                c.upstream.idle_timeout,
                c.upstream.max_requests_per_connection,
            )),
        ),
    };
    format!(
        "{:?} {policy} hash {hash:?} connect {:?} http {http:?} keepalive {keepalive:?} {:?} \
         outlier {:?} min health {} budget {:?} {eps:?}",
        c.protocol,
        c.upstream.connect_timeout,
        c.breaker.limits(),
        c.outlier,
        c.balancer.min_health_percent(),
        c.budget.settings(),
    )
}

/// The round-trip property for one config and namespace.
fn assert_round_trip(what: &str, v: &Validated, ns: &str) {
    let metrics = Metrics::new();
    let yaml = via_yaml(v, ns, &metrics);
    let xds = via_xds(v, ns, &metrics);
    let reqs = requests(&yaml);
    assert!(!reqs.is_empty(), "{what}: nothing to compare");
    let mut failures = Vec::new();
    for (host, port, req) in &reqs {
        let a = decide(&yaml, host, *port, req);
        let b = decide(&xds, host, *port, req);
        if a != b {
            failures.push(format!(
                "{host}:{port} {} {}{}\n  yaml: {a}\n  xds:  {b}",
                req.method,
                req.path,
                req.query
                    .as_deref()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default()
            ));
        }
    }
    let names: Vec<&String> = yaml.clusters.keys().collect();
    assert_eq!(
        names,
        xds.clusters.keys().collect::<Vec<_>>(),
        "{what}: cluster names"
    );
    for (name, c) in &yaml.clusters {
        let a = cluster_summary(c);
        let b = cluster_summary(&xds.clusters[name]);
        if a != b {
            failures.push(format!("cluster {name}\n  yaml: {a}\n  xds:  {b}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{what} (namespace {ns}): {} of {} decisions differ:\n{}",
        failures.len(),
        reqs.len() + yaml.clusters.len(),
        failures.join("\n")
    );
}

/// Every feature the translation covers (crates/translate's envoy_validate
/// config), minus what routes differently by design (docs/xds.md
/// "Differences from trellis-proxy").
const EVERYTHING: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews]
  resolution: STATIC
  ports: [{number: 80, name: http}, {number: 9080, name: http-api}, {number: 9090, name: grpc}, {number: 5432, name: tcp-db}]
  endpoints:
  - {address: 127.0.1.1, labels: {version: v1}, locality: us-east/a/r1}
  - {address: 127.0.1.2, labels: {version: v2}, locality: us-east/b, weight: 3}
  - {address: 127.0.1.3, labels: {version: v2}, locality: us-west/a, ports: {http-api: 19080}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting: {failover: [{from: us-east, to: us-west}]}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 2s, tcpKeepalive: {probes: 3, time: 30s, interval: 5s}}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRequestsPerConnection: 50, maxRetries: 3, idleTimeout: 30s}
    outlierDetection: {consecutive5xxErrors: 3, consecutiveGatewayErrors: 2, interval: 5s, baseEjectionTime: 30s, maxEjectionPercent: 50, minHealthPercent: 25}
    portLevelSettings:
    - port: {number: 9090}
      loadBalancer: {consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 2048}}}
  subsets:
  - {name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {simple: PEAK_EWMA}}}
  - {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: s, ttl: 60s, path: /}}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: canary
    match:
    - headers: {x-canary: {exact: "true"}, x-user: {regex: "u[0-9]+"}, x-any: {}}
      withoutHeaders: {x-skip: {prefix: "y"}, x-gone: {}}
      method: {exact: GET}
      authority: {prefix: reviews}
      scheme: {exact: http}
      queryParams: {debug: {exact: "1"}, trace: {}}
      uri: {prefix: /api}
      ignoreUriCase: true
    - uri: {regex: "/v[0-9]+/.*"}
      port: 9080
    route:
    - destination: {host: reviews, subset: v2}
      headers: {request: {set: {x-dest: v2}}, response: {remove: [x-internal]}}
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,gateway-error,reset,retriable-4xx,503,deadline-exceeded", retryRemoteLocalities: true}
    fault:
      delay: {fixedDelay: 100ms, percentage: {value: 0.5}}
      abort: {httpStatus: 503, percentage: {value: 1}}
    headers:
      request: {set: {x-a: "1"}, add: {x-b: "2"}, remove: [x-c]}
      response: {add: {x-d: "4"}}
  - name: rewrites
    match: [{uri: {prefix: /old}}]
    rewrite: {uri: /, authority: new.example.com}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /keep}}]
    rewrite: {uri: /kept}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {exact: /exact}}]
    rewrite: {uri: /other}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {regex: "/r/.*"}}]
    rewrite: {uriRegexRewrite: {match: "^/r/(.*)$", rewrite: "/s/\\1"}}
    route: [{destination: {host: reviews}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 10}}}
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v2}, weight: 20}
    mirrors:
    - {destination: {host: reviews, subset: v1}, percentage: {value: 12.5}}
    retries: {attempts: 0, perTryTimeout: 1s}
  tcp:
  - match: [{port: 5432}]
    route:
    - {destination: {host: reviews, subset: v1, port: {number: 5432}}, weight: 50}
    - {destination: {host: reviews, subset: v2, port: {number: 5432}}, weight: 50}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [api.example.com]
  resolution: DNS
  ports: [{number: 443, name: tls}, {number: 80, name: http}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ext}
spec:
  host: api.example.com
  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cart, namespace: shop}
spec:
  hosts: [cart]
  resolution: DNS_ROUND_ROBIN
  ports: [{number: 8080, name: http}]
  endpoints: [{address: cart-a.example.com}, {address: 127.0.7.2, locality: eu/z}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart, namespace: shop}
spec:
  host: cart
  trafficPolicy: {loadBalancer: {consistentHash: {httpQueryParameterName: user, minimumRingSize: 64}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wild}
spec:
  hosts: ["*.example.org", "shop.example.net", "*"]
  http:
  - match: [{port: 8080}]
    route: [{destination: {host: reviews, port: {number: 9080}}}]
  - route: [{destination: {host: cart.shop, port: {number: 8080}}}]
---
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: reviews-all}
spec: {host: reviews, tokenBucket: {maxTokens: 100, fillInterval: 1s}}
---
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: reviews-canary}
spec: {host: reviews, routes: [canary], tokenBucket: {maxTokens: 5, tokensPerFill: 1, fillInterval: 10ms}}
---
apiVersion: trellis.dev/v1alpha1
kind: RetryBudget
metadata: {name: reviews}
spec: {host: reviews, retryRatio: 0.5, minRetriesPerSecond: 5, ttl: 30s}
"#;

#[test]
fn round_trip_every_feature() {
    let v = validated(EVERYTHING);
    for ns in ["default", "shop"] {
        assert_round_trip("every feature", &v, ns);
    }
}

#[test]
fn round_trip_examples() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path().join("config");
        if dir.is_dir() {
            let v = validated_dir(&dir);
            assert_round_trip(&dir.display().to_string(), &v, "default");
            seen += 1;
        }
    }
    assert!(seen >= 2, "examples not found under {}", root.display());
}

/// What the proxy does not implement is refused with a message naming the
/// resource and the field (the NACK's `error_detail`).
#[test]
fn unsupported_fields_are_named() {
    use envoy_types::pb::envoy::config::core::v3::TransportSocket;
    use envoy_types::pb::envoy::config::route::v3::{
        RedirectAction, RetryPolicy as EnvoyRetry, Route as R, RouteMatch, VirtualHost as V,
    };
    let v = validated(EVERYTHING);
    let snap = snapshot(&v, "default");
    let base_cluster = |name: &str| {
        EnvoyCluster::decode(snap.get(CLUSTER_TYPE, name).unwrap().any.value.as_slice()).unwrap()
    };
    let name = "outbound|80||reviews.default.svc.cluster.local";

    let mut maglev = base_cluster(name);
    maglev.lb_policy = EnvoyLb::Maglev as i32;
    let mut tls = base_cluster(name);
    tls.transport_socket_matches.clear();
    tls.transport_socket = Some(TransportSocket::default());
    let mut success_rate = base_cluster(name);
    if let Some(od) = success_rate.outlier_detection.as_mut() {
        od.enforcing_success_rate = None;
    }
    let mut original_dst = base_cluster(name);
    original_dst.cluster_discovery_type = Some(
        envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        ),
    );
    let clusters: [(EnvoyCluster, &str); 4] = [
        (maglev, "lb_policy: MAGLEV is not supported"),
        (
            tls,
            "transport_socket.name: \"\" is not supported (only envoy.transport_sockets.tls)",
        ),
        (
            success_rate,
            "outlier_detection.enforcing_success_rate: success-rate ejection",
        ),
        (original_dst, "type: ORIGINAL_DST is not supported"),
    ];
    for (c, want) in clusters {
        let e = cluster(&c).unwrap_err().to_string();
        assert!(e.starts_with(&format!("Cluster {name}: ")), "{e}");
        assert!(e.contains(want), "{e} should contain {want:?}");
    }

    let route = |f: &dyn Fn(&mut R)| {
        let mut r = R {
            name: "r".into(),
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(route::Action::Route(EnvoyRouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster("c".into())),
                ..Default::default()
            })),
            ..Default::default()
        };
        f(&mut r);
        RouteConfiguration {
            name: "outbound".into(),
            most_specific_header_mutations_wins: true,
            virtual_hosts: vec![V {
                name: "a:80".into(),
                domains: vec!["a:80".into(), "a".into()],
                routes: vec![r],
                ..Default::default()
            }],
            ..Default::default()
        }
    };
    let cases: Vec<(RouteConfiguration, &str)> = vec![
        (
            route(&|r| r.action = Some(route::Action::Redirect(RedirectAction::default()))),
            "virtual_hosts[0].routes[0].action: only route actions are supported",
        ),
        (
            route(&|r| {
                r.r#match.as_mut().unwrap().headers.push(HeaderMatcher {
                    name: "x".into(),
                    header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(EnvoyString {
                        match_pattern: Some(string_matcher::MatchPattern::Suffix("z".into())),
                        ignore_case: false,
                    })),
                    ..Default::default()
                })
            }),
            "match.headers[0].string_match.suffix: suffix matches are not supported",
        ),
        (
            route(&|r| {
                if let Some(route::Action::Route(a)) = r.action.as_mut() {
                    a.retry_policy = Some(EnvoyRetry {
                        retry_on: "5xx,envoy-ratelimited".into(),
                        ..Default::default()
                    });
                }
            }),
            "route.retry_policy.retry_on: retry condition \"envoy-ratelimited\" is not supported",
        ),
    ];
    for (rc, want) in cases {
        let e = route_config(&rc).unwrap_err().to_string();
        assert!(e.starts_with("RouteConfiguration outbound: "), "{e}");
        assert!(e.contains(want), "{e} should contain {want:?}");
    }

    let l = Listener {
        name: "sidecar-extra".into(),
        ..Default::default()
    };
    let e = listener(&l).unwrap_err().to_string();
    assert!(
        e.contains("serves only the outbound and inbound listeners"),
        "{e}"
    );

    let cla = ClusterLoadAssignment {
        cluster_name: "c".into(),
        endpoints: vec![
            envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints {
                lb_endpoints: vec![envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(
                        envoy_types::pb::envoy::config::endpoint::v3::Endpoint {
                            address: Some(envoy_types::pb::envoy::config::core::v3::Address {
                                address: Some(address::Address::SocketAddress(
                                    envoy_types::pb::envoy::config::core::v3::SocketAddress {
                                        address: "db.example.com".into(),
                                        port_specifier: Some(PortSpecifier::PortValue(5432)),
                                        ..Default::default()
                                    },
                                )),
                            }),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let e = assignment(&cla).unwrap_err().to_string();
    assert_eq!(
        e,
        "ClusterLoadAssignment c: endpoints[0].lb_endpoints[0].endpoint.address.address: \
         \"db.example.com\" is not an IP address"
    );
}

/// Visibility and names: `exportTo`, short names per namespace, a
/// DestinationRule and a VirtualService exported to one namespace only,
/// retries on status codes, gRPC timeouts, and a destination without a port.
const NAMESPACES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: prod}
spec:
  hosts: [ratings]
  resolution: STATIC
  ports: [{number: 9080, name: grpc-api, protocol: GRPC}]
  endpoints: [{address: 10.0.0.1, labels: {v: a}}, {address: 10.0.0.2, labels: {v: b}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: secret, namespace: prod}
spec:
  hosts: [secret]
  exportTo: ["."]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.1.1}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: prod}
spec:
  host: ratings
  exportTo: ["."]
  trafficPolicy: {loadBalancer: {simple: RANDOM}, connectionPool: {http: {maxRetries: 7}}}
  subsets: [{name: a, labels: {v: a}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: prod}
spec:
  hosts: [ratings]
  exportTo: ["prod"]
  http:
  - match: [{headers: {x-user: {prefix: "admin"}}}]
    route: [{destination: {host: ratings, subset: a}}]
    timeout: 3s
    retries: {attempts: 4, retryOn: "unavailable,resource-exhausted,502,503", retryIgnorePreviousHosts: false}
  - route: [{destination: {host: ratings}}]
    timeout: 0s
"#;

#[test]
fn round_trip_visibility_and_names() {
    let v = validated(NAMESPACES);
    for ns in ["prod", "default"] {
        assert_round_trip("namespaces", &v, ns);
    }
}

/// An update keeps the state of what did not change: endpoints (in-flight
/// counts, ejections), breakers, budgets and rate-limit buckets, as the
/// YAML path does; the control plane's health applies to kept endpoints.
#[test]
fn assemble_keeps_state_across_updates() {
    let metrics = Metrics::new();
    let v = validated(EVERYTHING);
    let mut r = resources(&snapshot(&v, "default")).unwrap();
    let ctx = Context {
        metrics: &metrics,
        previous: None,
        resolve: &fake_dns,
        has_certificate: false,
    };
    let first = assemble(&r, &ctx);
    let name = "outbound|80|v1|reviews.default.svc.cluster.local";
    if let Some(eps) = r.assignments.get_mut(name) {
        for e in eps.iter_mut() {
            e.healthy = false;
        }
    }
    let ctx = Context {
        metrics: &metrics,
        previous: Some(&first),
        resolve: &fake_dns,
        has_certificate: false,
    };
    let second = assemble(&r, &ctx);
    assert_eq!(second.generation, first.generation + 1);
    let (a, b) = (&first.clusters[name], &second.clusters[name]);
    assert!(Arc::ptr_eq(&a.breaker, &b.breaker));
    assert!(Arc::ptr_eq(&a.budget, &b.budget));
    let (ea, eb) = (a.balancer.endpoints(), b.balancer.endpoints());
    assert_eq!(ea.len(), eb.len());
    for (x, y) in ea.iter().zip(eb) {
        assert!(Arc::ptr_eq(x, y), "endpoint {} was rebuilt", x.addr);
        assert!(!y.is_healthy(), "EDS health applies");
    }
    assert_eq!(
        first.rate_limits.keys().collect::<Vec<_>>(),
        second.rate_limits.keys().collect::<Vec<_>>()
    );
    for (k, bucket) in &first.rate_limits {
        assert!(
            Arc::ptr_eq(bucket, &second.rate_limits[k]),
            "bucket {k} was rebuilt"
        );
    }
    // Changed limits get a fresh breaker.
    let mut c = r.clusters[name].clone();
    c.limits.max_connections = 1;
    r.clusters.insert(name.to_string(), c);
    let third = assemble(
        &r,
        &Context {
            metrics: &metrics,
            previous: Some(&second),
            resolve: &fake_dns,
            has_certificate: false,
        },
    );
    assert!(!Arc::ptr_eq(
        &second.clusters[name].breaker,
        &third.clusters[name].breaker
    ));
}

/// Subsets hashing on different keys behind one weighted route: each
/// ring-hash cluster gets its own key back from the route's policies.
const HASH_KEYS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cart}
spec:
  hosts: [cart]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.1, labels: {v: a}}, {address: 10.0.0.2, labels: {v: b}}, {address: 10.0.0.3, labels: {v: c}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart}
spec:
  host: cart
  subsets:
  - {name: a, labels: {v: a}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
  - {name: b, labels: {v: b}, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: session}}}}}
  - {name: c, labels: {v: c}, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart}
spec:
  hosts: [cart]
  http:
  - route:
    - {destination: {host: cart, subset: a}, weight: 34}
    - {destination: {host: cart, subset: b}, weight: 33}
    - {destination: {host: cart, subset: c}, weight: 33}
"#;

#[test]
fn round_trip_hash_keys_per_subset() {
    assert_round_trip("hash keys", &validated(HASH_KEYS), "default");
}

// ----------------------------------------------------------------- mTLS

/// Per cluster: its TLS `describe()`, and per endpoint address the TLS
/// mode it gets (None: plaintext).
type TlsParts = BTreeMap<String, (serde_json::Value, Vec<(String, Option<&'static str>)>)>;

/// The TLS parts of a config.
fn tls_parts(cfg: &ProxyConfig) -> TlsParts {
    cfg.clusters
        .iter()
        .map(|(name, c)| {
            let mut eps: Vec<(String, Option<&'static str>)> = c
                .balancer
                .endpoints()
                .iter()
                .map(|e| {
                    (
                        e.addr.to_string(),
                        c.tls.for_endpoint(&e.labels).map(|o| o.mode),
                    )
                })
                .collect();
            eps.sort();
            (name.clone(), (c.tls.describe(), eps))
        })
        .collect()
}

#[test]
fn tls_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let ca = trellis_testing::TestCa::new("rt");
    let issued = ca.issue_dns("api.example.com");
    let (roots, cert, key) = (
        dir.path().join("roots.pem"),
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    );
    std::fs::write(&roots, ca.root_pem()).unwrap();
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  resolution: STATIC
  subjectAltNames: [spiffe://cluster.local/ns/default/sa/reviews]
  ports: [{{number: 9080, name: http}}, {{number: 9090, name: grpc}}, {{number: 5432, name: tcp}}]
  endpoints:
  - {{address: 127.0.1.1, labels: {{version: v1, security.istio.io/tlsMode: istio}}}}
  - {{address: 127.0.1.2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}, trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/default/sa/v1]}}}}}}
  - {{name: v2, labels: {{version: v2}}, trafficPolicy: {{tls: {{mode: DISABLE}}}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext}}
spec:
  hosts: [api.example.com]
  resolution: DNS
  ports: [{{number: 443, name: tls}}, {{number: 8443, name: http-m}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ext}}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {roots}, subjectAltNames: [api.example.com]}}
    portLevelSettings:
    - port: {{number: 8443}}
      tls: {{mode: MUTUAL, caCertificates: {roots}, clientCertificate: {cert}, privateKey: {key}, sni: m.example.com}}
"#,
        roots = roots.display(),
        cert = cert.display(),
        key = key.display(),
    );
    let v = validated(&yaml);
    for has_certificate in [true, false] {
        let metrics = Metrics::new();
        let locality = Locality::default();
        let yaml_cfg = compile::compile(
            v.clone(),
            &compile::Context {
                namespace: "default",
                locality: &locality,
                metrics: &metrics,
                previous: None,
                resolve: &fake_dns,
                has_certificate,
            },
        )
        .map(|c| tls_parts(&c));
        let r = resources(&snapshot(&v, "default")).unwrap_or_else(|e| panic!("convert: {e}"));
        let xds_cfg = assemble(
            &r,
            &Context {
                metrics: &metrics,
                previous: None,
                resolve: &fake_dns,
                has_certificate,
            },
        );
        let xds = tls_parts(&xds_cfg);
        match yaml_cfg {
            Ok(yaml) => {
                assert_eq!(yaml, xds, "has_certificate={has_certificate}");
            }
            // ISTIO_MUTUAL needs a certificate with --config-dir: over xDS
            // the same cluster fails its handshakes instead (the control
            // plane cannot know). Everything else is as with a certificate.
            Err(e) => {
                assert!(!has_certificate, "{e}");
                assert!(e.to_string().contains("ISTIO_MUTUAL"), "{e}");
                let auto = &xds[&format!("outbound|9080||{}", "reviews.default.svc.cluster.local")];
                assert_eq!(
                    auto.0["mode"], "DISABLE",
                    "no certificate: auto mTLS is plaintext"
                );
            }
        }
        if has_certificate {
            // The data really is there: auto picks the labelled endpoint only.
            let auto = &xds["outbound|9080||reviews.default.svc.cluster.local"];
            assert_eq!(auto.0["mode"], "AUTO");
            assert_eq!(
                auto.1,
                [
                    ("127.0.1.1:9080".to_string(), Some("ISTIO_MUTUAL")),
                    ("127.0.1.2:9080".to_string(), None)
                ]
            );
            assert_eq!(xds["outbound|443||api.example.com"].0["mode"], "SIMPLE");
            assert_eq!(xds["outbound|8443||api.example.com"].0["mode"], "MUTUAL");
            assert_eq!(
                xds["outbound|8443||api.example.com"].0["sni"],
                "m.example.com"
            );
        }
    }
}

#[test]
fn inbound_mode_round_trip() {
    use crate::tls::mode::{InboundMode, inbound_mode};
    use trellis_model::peer_authentication::effective;
    let pa = |name: &str, selector: &str, mode: &str| {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}}}\nspec:\n{selector}  mtls: {{mode: {mode}}}\n"
        )
    };
    let cases = [
        ("no policy", String::new(), InboundMode::Strict, None),
        (
            "PERMISSIVE",
            pa("ns", "", "PERMISSIVE"),
            InboundMode::Permissive,
            Some("default/ns"),
        ),
        (
            "STRICT",
            pa("ns", "", "STRICT"),
            InboundMode::Strict,
            Some("default/ns"),
        ),
        (
            "DISABLE by selector",
            pa("wl", "  selector: {matchLabels: {app: web}}\n", "DISABLE"),
            InboundMode::Plaintext,
            Some("default/wl"),
        ),
    ];
    for (what, policies, want, from) in cases {
        let v = validated(&format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: s}}\nspec: {{hosts: [s], resolution: STATIC, ports: [{{number: 80, name: http}}]}}\n{policies}"
        ));
        let address: IpAddr = "127.0.0.10".parse().unwrap();
        let labels: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            (TLS_MODE_LABEL.to_string(), "istio".to_string()),
        ]
        .into();
        let proxy = ProxyIdentity {
            name: "web".into(),
            namespace: "default".into(),
            address,
            outbound_port: 15001,
            inbound_port: 15006,
            app: SocketAddr::new(address, 8080),
            locality: None,
            egress: None,
            proxyless: false,
            labels: labels.clone(),
            vhds: false,
        };
        let snap = trellis_translate::translate(&v, &Registry::default(), &proxy);
        let r = resources(&snap).unwrap_or_else(|e| panic!("{what}: {e}"));
        let metrics = Metrics::new();
        let cfg = assemble(
            &r,
            &Context {
                metrics: &metrics,
                previous: None,
                resolve: &fake_dns,
                has_certificate: true,
            },
        );
        // Standalone: the loader's `effective` for the app's port.
        let standalone = effective(&v.peer_authentications, "default", &labels, Some(8080));
        assert_eq!(inbound_mode(&cfg.peer_auth, true), want, "{what}");
        assert_eq!(inbound_mode(&standalone, true), want, "{what}");
        assert_eq!(cfg.peer_auth.from.as_deref(), from, "{what}");
    }
}

#[test]
fn tls_shapes_it_cannot_serve_are_nacked() {
    use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, UpstreamTlsContext,
    };
    let v = validated(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {hosts: [s], resolution: STATIC, ports: [{number: 80, name: http}], endpoints: [{address: 127.0.1.1, labels: {security.istio.io/tlsMode: istio}}]}\n",
    );
    let snap = snapshot(&v, "default");
    let name = "outbound|80||s.default.svc.cluster.local";
    let base =
        EnvoyCluster::decode(snap.get(CLUSTER_TYPE, name).unwrap().any.value.as_slice()).unwrap();
    let socket = |any: Any| TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any)),
    };
    let any = |type_url: &str, value: Vec<u8>| Any {
        type_url: format!("type.googleapis.com/{type_url}"),
        value,
    };
    let upstream = |sds: &str| {
        any(
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            UpstreamTlsContext {
                common_tls_context: Some(CommonTlsContext {
                    tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                        name: sds.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                sni: "s".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        )
    };
    let mut other_secret = base.clone();
    other_secret.transport_socket_matches.clear();
    other_secret.transport_socket = Some(socket(upstream("my-cert")));
    let mut bad_match = base.clone();
    bad_match.transport_socket_matches[0].r#match = Some(Struct::default());
    let mut both = base.clone();
    both.transport_socket = Some(socket(upstream("default")));
    let mut not_tls = base.clone();
    not_tls.transport_socket_matches.clear();
    not_tls.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.alts".into(),
        config_type: None,
    });
    let cases = [
        (
            other_secret,
            "transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name",
        ),
        (bad_match, "transport_socket_matches[0].match"),
        (both, "transport_socket_matches"),
        (not_tls, "transport_socket.name"),
    ];
    for (c, field) in cases {
        let e = cluster(&c).expect_err(field);
        assert_eq!((e.kind, e.field.as_str()), ("Cluster", field), "{e}");
    }

    // An inbound TLS chain that does not require client certificates.
    let mut p = ProxyIdentity {
        name: "web".into(),
        namespace: "default".into(),
        address: "127.0.0.10".parse().unwrap(),
        outbound_port: 15001,
        inbound_port: 15006,
        app: "127.0.0.10:8080".parse().unwrap(),
        locality: None,
        egress: None,
        proxyless: false,
        labels: Default::default(),
        vhds: false,
    };
    p.labels.insert(TLS_MODE_LABEL.into(), "istio".into());
    let snap = trellis_translate::translate(&v, &Registry::default(), &p);
    let mut l = Listener::decode(
        snap.get(LISTENER_TYPE, "inbound")
            .unwrap()
            .any
            .value
            .as_slice(),
    )
    .unwrap();
    let d = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext::default()),
        ..Default::default()
    };
    l.filter_chains[0].transport_socket = Some(socket(any(
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        d.encode_to_vec(),
    )));
    let e = listener(&l).expect_err("no client certificate required");
    assert_eq!(
        e.field,
        "filter_chains[0].transport_socket.typed_config.require_client_certificate"
    );
}
