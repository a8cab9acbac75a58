//! A real peer: a stock Envoy must accept every field the translation
//! emits. The snapshot is inlined into a static bootstrap
//! (`trellis_translate::inline`), written as binary protobuf (`.pb`, which
//! Envoy reads as such; envoy-types has no JSON support) and checked with
//! `envoy --mode validate`.
//!
//! Envoy is found through `TRELLIS_ENVOY` (scripts/test sets it), else the
//! benchmark's venv, else `envoy` on PATH. Without one the test fails and
//! says how to install it: a skipped check would hide regressions.

use std::process::Command;

use prost::Message;
use trellis_translate::tls::TLS_MODE_LABEL;
use trellis_translate::{Registry, Workload, inline, shared, view};

use crate::support::*;

/// Every feature the translation covers, in one config.
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
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: readers}
spec:
  rules:
  - from: [{source: {principals: [cluster.local/ns/front/sa/web, '*/sa/batch', 'td/*', '*'], namespaces: [front, 'kube-*', '*-prod', '*']}}]
    to: [{operation: {hosts: [api.shop, '*.shop'], ports: ['8080'], methods: [GET, '*'], paths: [/items, '/items/*', '*.json']}}]
    when:
    - {key: 'request.headers[x-user]', values: [alice, '*'], notValues: [mallory]}
    - {key: source.ip, values: [10.0.0.0/8, '2001:db8::/32']}
    - {key: source.principal, notValues: ['*/sa/evil']}
    - {key: source.namespace, values: [front]}
    - {key: destination.port, notValues: ['9000']}
  - from: [{source: {notPrincipals: ['*'], notNamespaces: [evil], ipBlocks: [127.0.0.1], notIpBlocks: [10.9.0.0/16]}}]
    to: [{operation: {notHosts: [bad.shop], notPorts: ['1'], notMethods: [DELETE], notPaths: ['/admin*']}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ['/admin*']}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: watch}
spec:
  action: AUDIT
  rules: [{}]
"#;

#[test]
fn stock_envoy_accepts_the_translation() {
    let v = validated(EVERYTHING);
    let registry = Registry::new(vec![Workload {
        name: "client".into(),
        namespace: "default".into(),
        locality: Some("us-east/a/r1".into()),
        healthy: true,
        ..Default::default()
    }]);
    let s = shared(&v, &registry);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    let mut p = proxy("default");
    p.locality = Some("us-east/a/r1".into());
    let snap = view(&s, &p);
    // The inbound listener really has the three RBAC filters.
    let inbound = listener(&snap, "inbound");
    let hcm = format!("{inbound:?}");
    assert_eq!(
        hcm.matches("envoy.filters.network.rbac").count(),
        3,
        "{hcm}"
    );
    // The config under test really has priorities, rate limits and DNS.
    let cla = assignment(&snap, &c(9080, "", REVIEWS));
    assert!(cla.endpoints.iter().any(|l| l.priority > 0));

    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.yaml");
    std::fs::write(&secrets, "resources: []\n").unwrap();
    envoy_validates(&snap, |b| sds_from_file(b, &secrets));
}

/// Inlines the snapshot, lets `edit` adjust the bootstrap, and runs
/// `envoy --mode validate` on it.
fn envoy_validates(
    snap: &trellis_translate::Snapshot,
    edit: impl FnOnce(&mut envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap),
) {
    let envoy = trellis_testing::envoy_binary();
    let mut bootstrap = inline::static_bootstrap(snap, "client").expect("inline");
    edit(&mut bootstrap);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bootstrap.pb");
    std::fs::write(&file, bootstrap.encode_to_vec()).unwrap();
    let out = Command::new("nice")
        .args(["-n", "19"])
        .arg(&envoy)
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "--concurrency",
            "1",
        ])
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", envoy.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{} --mode validate:\n{stdout}\n{stderr}", envoy.display());
    assert!(
        out.status.success(),
        "envoy rejected the translated config ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("OK"), "{stdout}\n{stderr}");
    // Deprecated fields would break with a later Envoy: keep none.
    assert!(
        !stderr.to_ascii_lowercase().contains("deprecated"),
        "envoy warns about deprecated fields:\n{stderr}"
    );
}

/// mTLS as Istio expresses it: auto mTLS (`transport_socket_matches`),
/// DestinationRule ISTIO_MUTUAL / SIMPLE / MUTUAL / DISABLE, and the
/// inbound listener's STRICT and PERMISSIVE filter chains. The SDS secrets
/// `default` and `ROOTCA` come over ADS, so the bootstrap gets an ADS
/// source (validate mode does not connect to it).
#[test]
fn stock_envoy_accepts_the_mtls_translation() {
    let dir = tempfile::tempdir().unwrap();
    let ca = trellis_testing::TestCa::new("validate");
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
  ports: [{{number: 9080, name: http}}, {{number: 9090, name: grpc}}]
  workloadSelector: {{labels: {{app: reviews}}}}
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
  ports: [{{number: 443, name: tls}}, {{number: 8443, name: https-m}}]
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
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: permissive}}
spec:
  selector: {{matchLabels: {{app: permissive}}}}
  mtls: {{mode: PERMISSIVE}}
"#,
        roots = roots.display(),
        cert = cert.display(),
        key = key.display(),
    );
    let v = validated(&yaml);
    let mesh = |name: &str, labels: &[(&str, &str)]| Workload {
        name: name.into(),
        namespace: "default".into(),
        service_account: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([(TLS_MODE_LABEL.to_string(), "istio".to_string())])
            .collect(),
        addresses: vec!["127.0.3.1".parse().unwrap()],
        healthy: true,
        ..Default::default()
    };
    let registry = Registry::new(vec![
        mesh("reviews", &[("app", "reviews"), ("version", "v1")]),
        Workload {
            name: "legacy".into(),
            namespace: "default".into(),
            labels: [("app".to_string(), "reviews".to_string())].into(),
            addresses: vec!["127.0.3.2".parse().unwrap()],
            healthy: true,
            ..Default::default()
        },
    ]);
    let s = shared(&v, &registry);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    // Validate mode has no ADS stream for static clusters: the SDS
    // references read the same secrets from a file instead.
    let secrets = dir.path().join("secrets.yaml");
    let leaf = ca.issue(
        "spiffe://cluster.local/ns/default/sa/client",
        trellis_testing::Validity::Current,
    );
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("          {l}\n"))
            .collect::<String>()
    };
    std::fs::write(
        &secrets,
        format!(
            "resources:\n\
             - \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: default\n  tls_certificate:\n    certificate_chain:\n      inline_string: |\n{}    private_key:\n      inline_string: |\n{}\
             - \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: ROOTCA\n  validation_context:\n    trusted_ca:\n      inline_string: |\n{}",
            indent(&leaf.cert_pem).replace("          ", "        "),
            indent(&leaf.key_pem).replace("          ", "        "),
            indent(&ca.root_pem()).replace("          ", "        "),
        ),
    )
    .unwrap();
    let from_file = |b: &mut envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap| {
        sds_from_file(b, &secrets)
    };
    for (labels, chains) in [
        (
            vec![("app", "strict")],
            ["mtls-http", "mtls-tcp"].as_slice(),
        ),
        (
            vec![("app", "permissive")],
            ["mtls-http", "mtls-tcp", "http"].as_slice(),
        ),
    ] {
        let mut p = proxy("default");
        p.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([(TLS_MODE_LABEL.to_string(), "istio".to_string())])
            .collect();
        let snap = view(&s, &p);
        let inbound = listener(&snap, "inbound");
        let names: Vec<&str> = inbound
            .filter_chains
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, chains);
        envoy_validates(&snap, from_file);
    }
}

/// Points every SDS reference of the bootstrap's transport sockets at
/// `path` (a file of `Secret`s) instead of ADS.
fn sds_from_file(
    b: &mut envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap,
    path: &std::path::Path,
) {
    use envoy_types::pb::envoy::config::core::v3::{
        ConfigSource, PathConfigSource, TransportSocket, config_source::ConfigSourceSpecifier,
        transport_socket::ConfigType,
    };
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext,
        common_tls_context::ValidationContextType,
    };
    let source = ConfigSource {
        resource_api_version: 2,
        config_source_specifier: Some(ConfigSourceSpecifier::PathConfigSource(PathConfigSource {
            path: path.display().to_string(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let fix_common = |c: &mut CommonTlsContext| {
        for s in &mut c.tls_certificate_sds_secret_configs {
            s.sds_config = Some(source.clone());
        }
        if let Some(ValidationContextType::CombinedValidationContext(v)) =
            &mut c.validation_context_type
            && let Some(s) = &mut v.validation_context_sds_secret_config
        {
            s.sds_config = Some(source.clone());
        }
    };
    let fix = |t: &mut TransportSocket| {
        let Some(ConfigType::TypedConfig(any)) = &mut t.config_type else {
            return;
        };
        if any.type_url.ends_with("UpstreamTlsContext") {
            let mut u = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
            u.common_tls_context.as_mut().map(&fix_common);
            any.value = u.encode_to_vec();
        } else if any.type_url.ends_with("DownstreamTlsContext") {
            let mut d = DownstreamTlsContext::decode(any.value.as_slice()).unwrap();
            d.common_tls_context.as_mut().map(&fix_common);
            any.value = d.encode_to_vec();
        }
    };
    let statics = b.static_resources.as_mut().unwrap();
    for c in &mut statics.clusters {
        c.transport_socket.as_mut().map(&fix);
        for m in &mut c.transport_socket_matches {
            m.transport_socket.as_mut().map(&fix);
        }
    }
    for l in &mut statics.listeners {
        for chain in l
            .filter_chains
            .iter_mut()
            .chain(l.default_filter_chain.as_mut())
        {
            chain.transport_socket.as_mut().map(&fix);
        }
    }
}
