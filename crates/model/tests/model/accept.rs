//! Good input validates, and the validated snapshot says what it means.

use trellis_model::networking::{Protocol, SimpleLb};
use trellis_model::{ResourceSet, parse_documents};

use crate::support::{
    base, check, check_with_base, docs, dr, rate_limit, retry_budget, se, trellis_doc, vs,
};

/// A realistic config: one file, a ServiceEntry, a DestinationRule with two
/// subsets and a VirtualService with a header-matched canary route, an 80/20
/// split and a TCP route.
const INFERENCE: &str = r#"
# The inference service: two model versions behind one name.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: inference
  namespace: ml
  labels:
    app: inference
spec:
  hosts:
  - inference
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 8080
    name: http-api
  - number: 9000
    name: stats
    protocol: TCP
  endpoints:
  - address: 127.0.10.1
    labels: {version: v1}
    locality: us-east1/us-east1-b
  - address: 127.0.10.2
    ports: {http-api: 18080}
    labels: {version: v2}
    weight: 2
    serviceAccount: inference
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: inference, namespace: ml}
spec:
  host: inference
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer:
        simple: PEAK_EWMA
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: inference, namespace: ml}
spec:
  hosts:
  - inference
  gateways: [mesh]
  http:
  - name: canary-testers
    match:
    - headers:
        x-canary:
          exact: "true"
      uri:
        prefix: /v1/models
    - queryParams:
        canary: {regex: "yes|1"}
    route:
    - destination:
        host: inference
        subset: v2
        port: {number: 8080}
    timeout: 2s
  - name: split
    route:
    - destination: {host: inference, subset: v1}
      weight: 80
    - destination: {host: inference, subset: v2}
      weight: 20
      headers:
        response:
          add: {x-model: v2}
    headers:
      request:
        set: {x-routed-by: trellis}
        remove: [x-debug]
    retries: null
  tcp:
  - match: [{port: 9000}]
    route:
    - destination:
        host: inference.ml
        port: {number: 9000}
"#;

#[test]
fn a_realistic_file_validates() {
    let rs = parse_documents("inference.yaml", INFERENCE).unwrap();
    assert_eq!(rs.len(), 3);
    let v = trellis_model::validate::validate(&rs.into_iter().collect::<ResourceSet>()).unwrap();

    let host = "inference.ml.svc.cluster.local";
    assert_eq!(v.services.keys().collect::<Vec<_>>(), [host]);
    let svc = &v.services[host];
    assert_eq!(svc.entry, "ml/inference");
    assert_eq!(svc.namespace, "ml");
    let ports: Vec<_> = svc
        .ports
        .iter()
        .map(|p| (p.number, p.name.as_str(), p.protocol))
        .collect();
    assert_eq!(
        ports,
        [
            (8080, "http-api", Protocol::Http),
            (9000, "stats", Protocol::Tcp)
        ]
    );
    assert_eq!(svc.endpoints.len(), 2);

    assert_eq!(v.destination_rules.keys().collect::<Vec<_>>(), [host]);
    let subsets: Vec<_> = v.destination_rules[host]
        .spec
        .subsets
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(subsets, ["v1", "v2"]);

    assert_eq!(v.virtual_services.len(), 1);
    let (hosts, vs) = &v.virtual_services[0];
    assert_eq!(hosts, &[host]);
    assert_eq!(vs.source, "inference.yaml");
    let names: Vec<_> = vs.spec.http.iter().map(|r| r.name.as_deref()).collect();
    assert_eq!(names, [Some("canary-testers"), Some("split")]);
    let weights: Vec<_> = vs.spec.http[1].route.iter().map(|d| d.weight).collect();
    assert_eq!(weights, [Some(80), Some(20)]);
    assert_eq!(vs.spec.tcp.len(), 1);
}

/// Resilience policies on the inference service of [`INFERENCE`]: retries,
/// faults, mirrors, connection pools, outlier detection, a rate limit and a
/// retry budget.
const RESILIENCE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shadow, namespace: ml}
spec:
  hosts: [shadow]
  resolution: STATIC
  ports: [{number: 8080, name: http}]
  endpoints: [{address: 127.0.10.9}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inference, namespace: ml}
spec:
  host: inference
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 500ms
        tcpKeepalive: {probes: 3, time: 7200s, interval: 75s}
      http:
        http1MaxPendingRequests: 10
        http2MaxRequests: 1000
        maxRequestsPerConnection: 0
        maxRetries: 3
        idleTimeout: 30s
    outlierDetection:
      consecutive5xxErrors: 7
      consecutiveGatewayErrors: 0
      interval: 5m
      baseEjectionTime: 15m
      maxEjectionPercent: 100
      minHealthPercent: 0
    portLevelSettings:
    - port: {number: 9000}
      connectionPool: {tcp: {maxConnections: 5}}
      outlierDetection: {consecutive5xxErrors: 0}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      connectionPool: {http: {http2MaxRequests: 10}}
      outlierDetection: {interval: 1s}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inference, namespace: ml}
spec:
  hosts: [inference]
  http:
  - name: predict
    match: [{uri: {prefix: /v1/predict}}]
    route: [{destination: {host: inference, subset: v1}}]
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: gateway-error,connect-failure,refused-stream,429
      retryRemoteLocalities: true
      retryIgnorePreviousHosts: true
    mirror: {host: shadow}
    mirrorPercentage: {value: 12.5}
  - name: chaos
    match: [{headers: {x-chaos: {exact: "1"}}}]
    route: [{destination: {host: inference, subset: v2, port: {number: 8080}}}]
    fault:
      delay: {fixedDelay: 2s, percentage: {value: 50}}
      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 0.1}}
    retries: {attempts: 0}
  - route: [{destination: {host: inference}}]
    fault:
      delay: {fixedDelay: 100ms, percent: 5}
      abort: {httpStatus: 503}
    mirrors:
    - destination: {host: shadow}
    - destination: {host: inference, subset: v2}
      percentage: {value: 1}
---
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: inference, namespace: ml}
spec:
  host: inference
  tokenBucket: {maxTokens: 1000, fillInterval: 1s}
---
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: predict, namespace: ml}
spec:
  host: inference.ml.svc.cluster.local
  routes: [predict, chaos]
  tokenBucket: {maxTokens: 10, tokensPerFill: 5, fillInterval: 100ms}
---
apiVersion: trellis.dev/v1alpha1
kind: RetryBudget
metadata: {name: inference, namespace: ml}
spec:
  host: inference
  retryRatio: 0.5
  minRetriesPerSecond: 0
  ttl: 60s
---
apiVersion: trellis.dev/v1alpha1
kind: RetryBudget
metadata: {name: shadow, namespace: ml}
spec:
  host: shadow.ml
"#;

#[test]
fn resilience_policies_validate() {
    let mut rs = parse_documents("inference.yaml", INFERENCE).unwrap();
    // The ServiceEntry of INFERENCE, with RESILIENCE's rule and routes.
    rs.retain(|r| r.kind() == trellis_model::resource::Kind::ServiceEntry);
    rs.extend(parse_documents("resilience.yaml", RESILIENCE).unwrap());
    let v = trellis_model::validate::validate(&rs.into_iter().collect::<ResourceSet>())
        .unwrap_or_else(|e| panic!("{e}"));

    let host = "inference.ml.svc.cluster.local";
    let limits: Vec<_> = v
        .rate_limits
        .iter()
        .map(|(h, o)| (h.as_str(), o.key(), o.spec.routes.clone()))
        .collect();
    assert_eq!(
        limits,
        [
            (host, "ml/inference".to_string(), vec![]),
            (
                host,
                "ml/predict".to_string(),
                vec!["predict".to_string(), "chaos".to_string()]
            ),
        ]
    );
    assert_eq!(v.rate_limits[1].1.spec.token_bucket.fill_tokens(), 5);

    let budgets: Vec<_> = v
        .retry_budgets
        .iter()
        .map(|(h, o)| {
            (
                h.as_str(),
                o.spec.retry_ratio,
                o.spec.min_retries_per_second,
                o.spec.ttl.as_str(),
            )
        })
        .collect();
    assert_eq!(
        budgets,
        [
            (host, 0.5, 0, "60s"),
            ("shadow.ml.svc.cluster.local", 0.2, 10, "10s"),
        ]
    );

    let rule = &v.destination_rules[host];
    let pool = rule
        .spec
        .traffic_policy
        .as_ref()
        .unwrap()
        .connection_pool
        .as_ref();
    assert_eq!(
        pool.and_then(|p| p.tcp.as_ref())
            .and_then(|t| t.max_connections),
        Some(100)
    );
    let (_, vs) = &v.virtual_services[0];
    let retries = vs.spec.http[0].retries.as_ref().unwrap();
    let on = retries.conditions().unwrap();
    assert!(on.gateway_error && on.connect_failure && on.refused_stream && !on.five_xx);
    assert_eq!(on.status_codes, [429]);
    assert_eq!(vs.spec.http[2].mirror_policies().len(), 2);
}

#[test]
fn every_retry_condition_validates() {
    for on in trellis_model::policy::RETRY_ON_TOKENS
        .iter()
        .map(|t| t.to_string())
        .chain(["503".into(), "5xx, 409 ,reset".into(), "100,599".into()])
    {
        let text = vs(
            "vs",
            &format!(
                "{{hosts: [reviews], http: [{{retries: {{attempts: 1, retryOn: '{on}'}}, route: [{{destination: {{host: reviews}}}}]}}]}}"
            ),
        );
        check_with_base(&text).unwrap_or_else(|e| panic!("{on}: {e}"));
    }
}

#[test]
fn percentages_from_0_to_100_validate() {
    for p in ["0", "100", "0.001", "99.999"] {
        let text = vs(
            "vs",
            &format!(
                "{{hosts: [reviews], http: [{{route: [{{destination: {{host: reviews}}}}], \
                 fault: {{delay: {{fixedDelay: 1ms, percentage: {{value: {p}}}}}, abort: {{httpStatus: 200, percentage: {{value: {p}}}}}}}, \
                 mirror: {{host: reviews}}, mirrorPercentage: {{value: {p}}}}}, \
                 {{route: [{{destination: {{host: reviews}}}}], mirrors: [{{destination: {{host: reviews}}, percentage: {{value: {p}}}}}], \
                 fault: {{delay: {{fixedDelay: 1s, percent: {int}}}, abort: {{httpStatus: 599}}}}}}]}}",
                int = p.split('.').next().unwrap()
            ),
        );
        check_with_base(&text).unwrap_or_else(|e| panic!("{p}: {e}"));
    }
}

#[test]
fn policies_on_routes_to_http_ports_validate() {
    // A route to a multi-port service without a port uses the request's
    // port (9080, HTTP): retries, faults and mirrors are fine there.
    let text = vs(
        "vs",
        "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], retries: {attempts: 2}, \
         fault: {abort: {httpStatus: 500, percentage: {value: 1}}}, mirror: {host: ratings.example.com}}]}",
    );
    check_with_base(&text).unwrap();
    // A tcp route may go to the TCP port; policies live on http routes only.
    let text = vs(
        "vs",
        "{hosts: [reviews], tcp: [{route: [{destination: {host: reviews, port: {number: 3306}}}]}]}",
    );
    check_with_base(&text).unwrap();
}

#[test]
fn rate_limits_may_name_virtual_service_hosts_and_share_a_host() {
    let text = docs(&[
        vs(
            "vs",
            "{hosts: ['*.example.org', api.internal], http: [{name: read, route: [{destination: {host: ratings.example.com}}]}, \
             {name: write, route: [{destination: {host: ratings.example.com}}]}]}",
        ),
        rate_limit(
            "a",
            "{host: '*.example.org', tokenBucket: {maxTokens: 1, fillInterval: 1m}}",
        ),
        // One host-wide policy and per-route policies for the same host.
        rate_limit(
            "b",
            "{host: api.internal, tokenBucket: {maxTokens: 100, fillInterval: 1s}}",
        ),
        rate_limit(
            "c",
            "{host: api.internal, routes: [read], tokenBucket: {maxTokens: 50, fillInterval: 1s}}",
        ),
        rate_limit(
            "d",
            "{host: api.internal, routes: [write], tokenBucket: {maxTokens: 5, fillInterval: 1s}}",
        ),
        // A service host without a VirtualService, written short, from its namespace.
        trellis_doc(
            "RateLimitPolicy",
            "name: e, namespace: default",
            "{host: reviews, tokenBucket: {maxTokens: 5, fillInterval: 10s}}",
        ),
        retry_budget("f", "{host: ratings.example.com, retryRatio: 0}"),
        retry_budget("g", "{host: reviews, retryRatio: 1000, ttl: 1s}"),
    ]);
    let v = check_with_base(&text).unwrap_or_else(|e| panic!("{e}"));
    let hosts: Vec<_> = v.rate_limits.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(
        hosts,
        [
            "*.example.org",
            "api.internal",
            "api.internal",
            "api.internal",
            "reviews.default.svc.cluster.local"
        ]
    );
    assert_eq!(
        v.retry_budgets.keys().collect::<Vec<_>>(),
        ["ratings.example.com", "reviews.default.svc.cluster.local"]
    );
}

#[test]
fn short_names_resolve_to_one_service() {
    // From namespace default, these all name reviews.default.svc.cluster.local.
    let forms = [
        "reviews",
        "reviews.default",
        "reviews.default.svc",
        "reviews.default.svc.cluster.local",
        "Reviews.Default",
    ];
    let fqdn = "reviews.default.svc.cluster.local";
    let v = check(&[("base.yaml", &base())]).unwrap();
    for f in forms {
        assert_eq!(v.resolve(f, "default"), fqdn, "{f}");
    }
    // From another namespace the bare name means that namespace's service.
    assert_eq!(
        v.resolve("reviews", "prod"),
        "reviews.prod.svc.cluster.local"
    );
    assert_eq!(v.resolve("reviews.default", "prod"), fqdn);
    // Names that match no service are qualified the Istio way.
    assert_eq!(
        v.resolve("details", "prod"),
        "details.prod.svc.cluster.local"
    );
    assert_eq!(v.resolve("api.example.org", "prod"), "api.example.org");

    // Every form works as a VirtualService host and as a destination.
    for f in forms {
        let text = vs(
            "vs",
            &format!(
                "{{hosts: [{f}], http: [{{route: [\
                 {{destination: {{host: reviews, subset: v1}}, weight: 34}}, \
                 {{destination: {{host: reviews.default, subset: v2}}, weight: 33}}, \
                 {{destination: {{host: {f}, subset: v2}}, weight: 33}}]}}]}}"
            ),
        );
        let v = check_with_base(&text).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(v.virtual_services[0].0, [fqdn], "{f}");
    }

    // And a DestinationRule written with any form applies to the same host.
    let se_only = se(
        "reviews",
        "{hosts: [reviews], resolution: DNS, ports: [{number: 80, name: http}]}",
    );
    for f in forms {
        let v = check(&[(
            "a.yaml",
            &docs(&[se_only.clone(), dr("r", &format!("{{host: {f}}}"))]),
        )])
        .unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(
            v.destination_rules.keys().collect::<Vec<_>>(),
            [fqdn],
            "{f}"
        );
    }
}

#[test]
fn service_entry_hosts_with_dots_are_kept_as_written() {
    let text = se(
        "s",
        "{hosts: [API.Example.com, db.internal], resolution: DNS, ports: [{number: 80, name: http}]}",
    );
    let v = check(&[("a.yaml", &text)]).unwrap();
    assert_eq!(
        v.services.keys().collect::<Vec<_>>(),
        ["api.example.com", "db.internal"]
    );
    assert_eq!(v.resolve("db.internal", "prod"), "db.internal");
}

#[test]
fn protocol_is_inferred_from_the_port_name() {
    let text = se(
        "s",
        "{hosts: [multi.example.com], resolution: DNS, ports: [\
         {number: 1, name: http}, {number: 2, name: http-web}, {number: 3, name: http2}, \
         {number: 4, name: grpc}, {number: 5, name: grpc-web}, {number: 6, name: HTTP-upper}, \
         {number: 7, name: tcp-db}, {number: 8, name: tls-sni}, {number: 9, name: redis}, \
         {number: 10, name: https}, {number: 11, name: web, protocol: http}, \
         {number: 12, name: http-raw, protocol: TCP}, {number: 13, name: x, protocol: GRPC-Web}]}",
    );
    let v = check(&[("a.yaml", &text)]).unwrap();
    let got: Vec<_> = v.services["multi.example.com"]
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.protocol))
        .collect();
    use Protocol::*;
    assert_eq!(
        got,
        [
            ("http", Http),
            ("http-web", Http),
            ("http2", Http2),
            ("grpc", Grpc),
            ("grpc-web", Grpc),
            ("HTTP-upper", Http),
            ("tcp-db", Tcp),
            ("tls-sni", Tls),
            ("redis", Tcp),
            ("https", Tls),
            ("web", Http),
            ("http-raw", Tcp),
            ("x", Grpc),
        ]
    );
}

#[test]
fn every_supported_load_balancer_validates() {
    let policies = [
        ("{simple: UNSPECIFIED}", None),
        ("{simple: ROUND_ROBIN}", Some(SimpleLb::RoundRobin)),
        ("{simple: LEAST_REQUEST}", Some(SimpleLb::LeastRequest)),
        ("{simple: LEAST_CONN}", Some(SimpleLb::LeastConn)),
        ("{simple: RANDOM}", Some(SimpleLb::Random)),
        ("{simple: PEAK_EWMA}", Some(SimpleLb::PeakEwma)),
        ("{consistentHash: {httpHeaderName: x-user}}", None),
        (
            "{consistentHash: {httpCookie: {name: session, path: /, ttl: 1h}}}",
            None,
        ),
        (
            "{consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 1024}}}",
            None,
        ),
        (
            "{consistentHash: {httpQueryParameterName: user, minimumRingSize: 64}}",
            None,
        ),
        (
            "{simple: ROUND_ROBIN, localityLbSetting: {enabled: true, failover: [{from: us-east1, to: us-west1}]}}",
            Some(SimpleLb::RoundRobin),
        ),
    ];
    for (lb, simple) in policies {
        let text = dr(
            "r",
            &format!(
                "{{host: ratings.example.com, trafficPolicy: {{loadBalancer: {lb}, \
                 portLevelSettings: [{{port: {{number: 80}}, loadBalancer: {lb}}}]}}}}"
            ),
        );
        let v = check_with_base(&text).unwrap_or_else(|e| panic!("{lb}: {e}"));
        let rule = &v.destination_rules["ratings.example.com"];
        let got = rule
            .spec
            .traffic_policy
            .as_ref()
            .unwrap()
            .load_balancer
            .as_ref()
            .unwrap()
            .simple;
        if let Some(s) = simple {
            assert_eq!(got, Some(s), "{lb}");
        }
    }
}

#[test]
fn istio_and_go_durations_are_accepted() {
    for t in ["10s", "0.5s", "250ms", "1m30s", "0s", "2h", "100us", "1.5s"] {
        let text = vs(
            "vs",
            &format!(
                "{{hosts: [reviews], http: [{{timeout: '{t}', route: [{{destination: {{host: reviews}}}}]}}]}}"
            ),
        );
        check_with_base(&text).unwrap_or_else(|e| panic!("{t}: {e}"));
    }
}

#[test]
fn single_destination_weights_that_mean_all_traffic() {
    for w in ["", ", weight: 100", ", weight: 0"] {
        let text = vs(
            "vs",
            &format!(
                "{{hosts: [reviews], http: [{{route: [{{destination: {{host: reviews}}{w}}}]}}]}}"
            ),
        );
        check_with_base(&text).unwrap_or_else(|e| panic!("{w:?}: {e}"));
    }
    // Zero weights are allowed in a split as long as the sum is 100.
    let text = vs(
        "vs",
        "{hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v1}, weight: 100}, {destination: {host: reviews, subset: v2}, weight: 0}]}]}",
    );
    check_with_base(&text).unwrap();
}

#[test]
fn matches_that_validate() {
    let text = vs(
        "vs",
        "{hosts: [reviews], http: [{match: [\
         {uri: {exact: /health}, ignoreUriCase: true},\
         {uri: {regex: '/api/v[0-9]+/.*'}, method: {exact: GET}, scheme: {prefix: http}, authority: {regex: '.*\\.example\\.com'}},\
         {headers: {x-present: {}, x-user: {prefix: bob}}, withoutHeaders: {x-debug: {}}, queryParams: {q: {}}, port: 9080, name: m}\
         ], route: [{destination: {host: reviews}}], rewrite: {uri: /v2/}},\
         {rewrite: {uriRegexRewrite: {match: '^/old/(.*)$', rewrite: '/new/\\1'}, authority: reviews.internal:9080}, route: [{destination: {host: reviews}}]}]}",
    );
    check_with_base(&text).unwrap();
}

#[test]
fn routes_to_hosts_beyond_the_entries() {
    // A VirtualService may name a wildcard or an external host; only its
    // destinations must be known services.
    let text = docs(&[
        vs(
            "a",
            "{hosts: ['*.example.org'], http: [{route: [{destination: {host: ratings.example.com}}]}]}",
        ),
        vs(
            "b",
            "{hosts: ['*'], tcp: [{route: [{destination: {host: reviews, port: {number: 3306}}}]}]}",
        ),
    ]);
    let v = check_with_base(&text).unwrap();
    let hosts: Vec<_> = v.virtual_services.iter().map(|(h, _)| h.clone()).collect();
    assert_eq!(
        hosts,
        [vec!["*.example.org".to_string()], vec!["*".to_string()]]
    );
}

#[test]
fn dns_endpoints_may_be_names_or_ips() {
    let text = se(
        "s",
        "{hosts: [db.example.com], resolution: DNS_ROUND_ROBIN, ports: [{number: 5432, name: tcp, targetPort: 15432}], \
         endpoints: [{address: db1.example.com}, {address: 10.0.0.9}, {address: '::1'}], location: MESH_EXTERNAL, \
         addresses: [192.168.0.0/16, 'fd00::/8'], exportTo: ['.', '*', prod]}",
    );
    let v = check(&[("a.yaml", &text)]).unwrap();
    assert_eq!(
        v.services["db.example.com"].ports[0].target_port,
        Some(15432)
    );
}

#[test]
fn regexes_match_the_whole_value() {
    use trellis_model::validate::compile_regex;
    let re = compile_regex("/api/v[0-9]+").unwrap();
    assert!(re.is_match("/api/v1"));
    assert!(!re.is_match("/api/v1/users"), "no implicit suffix");
    assert!(!re.is_match("/x/api/v1"), "no implicit prefix");
    let alt = compile_regex("a|b").unwrap();
    assert!(
        alt.is_match("b") && !alt.is_match("ab"),
        "alternation is grouped before anchoring"
    );
}

#[test]
fn the_example_in_docs_config_md_validates() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/config.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let start = doc
        .find("```yaml\n")
        .expect("a yaml example in docs/config.md")
        + "```yaml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let rs = parse_documents("docs/config.md", &doc[start..end]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rs.len(), 3);
    let v = trellis_model::validate::validate(&rs.into_iter().collect::<ResourceSet>())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        v.services.keys().collect::<Vec<_>>(),
        ["inference.ml.svc.cluster.local"]
    );
}

#[test]
fn every_yaml_example_in_docs_config_md_validates_together() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/config.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let blocks: Vec<&str> = doc
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(blocks.len() >= 3, "found {} yaml examples", blocks.len());
    let rs =
        parse_documents("docs/config.md", &blocks.join("---\n")).unwrap_or_else(|e| panic!("{e}"));
    let v = trellis_model::validate::validate(&rs.into_iter().collect::<ResourceSet>())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.rate_limits.len(), 2);
    assert_eq!(
        v.retry_budgets.keys().collect::<Vec<_>>(),
        ["inference.ml.svc.cluster.local"]
    );
}
