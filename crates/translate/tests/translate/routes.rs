//! RouteConfiguration `outbound`: virtual hosts, matches and route actions.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier, route_action::ClusterSpecifier,
    route_action::HostRewriteSpecifier, route_action::hash_policy::PolicySpecifier, route_match,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::Duration;
use trellis_translate::names::filter;

use crate::support::*;

fn secs(s: i64, ms: i32) -> Option<Duration> {
    Some(Duration {
        seconds: s,
        nanos: ms * 1_000_000,
    })
}

fn weighted(a: &envoy_types::pb::envoy::config::route::v3::RouteAction) -> Vec<(String, u32)> {
    match &a.cluster_specifier {
        Some(ClusterSpecifier::WeightedClusters(w)) => w
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.weight.map_or(0, |w| w.value)))
            .collect(),
        Some(ClusterSpecifier::Cluster(c)) => vec![(c.clone(), 100)],
        other => panic!("unexpected cluster specifier {other:?}"),
    }
}

fn vs(http: &str) -> String {
    reviews(&format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
{http}"#
    ))
}

#[test]
fn weighted_split_over_subsets() {
    let snap = snapshot(&vs(r#"
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v2}, weight: 20}
    - {destination: {host: reviews}, weight: 0}
"#));
    let rc = route_config(&snap);
    let vh = vhost(&rc, "reviews:9080");
    assert_eq!(vh.routes.len(), 1);
    let r = &vh.routes[0];
    assert_eq!(r.name, "default/reviews|http[0]");
    // Weight 0 is left out, as Istio does.
    assert_eq!(
        weighted(action(r)),
        [(c(9080, "v1", REVIEWS), 80), (c(9080, "v2", REVIEWS), 20)]
    );
    assert_eq!(
        r.r#match.as_ref().unwrap().path_specifier,
        Some(route_match::PathSpecifier::Prefix("/".into()))
    );
}

#[test]
fn single_destination_is_a_plain_cluster() {
    let snap = snapshot(&vs(
        "  - route: [{destination: {host: reviews, subset: v2}}]\n",
    ));
    let rc = route_config(&snap);
    let a = action(&vhost(&rc, "reviews:9080").routes[0]);
    assert_eq!(
        a.cluster_specifier,
        Some(ClusterSpecifier::Cluster(c(9080, "v2", REVIEWS)))
    );
}

fn header<'m>(hs: &'m [HeaderMatcher], name: &str) -> &'m HeaderMatcher {
    hs.iter()
        .find(|h| h.name == name)
        .unwrap_or_else(|| panic!("no matcher for {name}: {hs:?}"))
}

fn pattern(h: &HeaderMatcher) -> Option<MatchPattern> {
    match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(s)) => s.match_pattern.clone(),
        _ => None,
    }
}

#[test]
fn matches_become_route_matches_one_route_per_block() {
    let snap = snapshot(&vs(r#"
  - name: canary
    match:
    - uri: {prefix: /api}
      ignoreUriCase: true
      method: {exact: POST}
      authority: {prefix: reviews}
      scheme: {exact: http}
      headers:
        X-Canary: {exact: "true"}
        x-user: {regex: "u[0-9]+"}
        x-any: {}
      withoutHeaders:
        x-skip: {exact: "1"}
        x-gone: {}
      queryParams:
        debug: {exact: "1"}
        trace: {}
    - uri: {exact: /login}
    - uri: {regex: "/v[0-9]+/.*"}
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"#));
    let rc = route_config(&snap);
    let routes = &vhost(&rc, "reviews:9080").routes;
    assert_eq!(routes.len(), 4, "three blocks of http[0], then http[1]");
    assert!(
        routes[..3]
            .iter()
            .all(|r| r.name == "default/reviews|canary")
    );
    assert_eq!(routes[3].name, "default/reviews|http[1]");

    let m = routes[0].r#match.as_ref().unwrap();
    assert_eq!(
        m.path_specifier,
        Some(route_match::PathSpecifier::Prefix("/api".into()))
    );
    assert_eq!(m.case_sensitive.map(|b| b.value), Some(false));
    assert_eq!(
        pattern(header(&m.headers, ":method")),
        Some(MatchPattern::Exact("POST".into()))
    );
    assert_eq!(
        pattern(header(&m.headers, ":authority")),
        Some(MatchPattern::Prefix("reviews".into()))
    );
    assert_eq!(
        pattern(header(&m.headers, ":scheme")),
        Some(MatchPattern::Exact("http".into()))
    );
    let canary = header(&m.headers, "x-canary");
    assert_eq!(pattern(canary), Some(MatchPattern::Exact("true".into())));
    assert!(!canary.invert_match);
    match pattern(header(&m.headers, "x-user")) {
        Some(MatchPattern::SafeRegex(r)) => assert_eq!(r.regex, "u[0-9]+"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        header(&m.headers, "x-any").header_match_specifier,
        Some(HeaderMatchSpecifier::PresentMatch(true))
    );
    let skip = header(&m.headers, "x-skip");
    assert!(skip.invert_match && skip.treat_missing_header_as_empty);
    let gone = header(&m.headers, "x-gone");
    assert!(gone.invert_match && !gone.treat_missing_header_as_empty);
    assert_eq!(
        gone.header_match_specifier,
        Some(HeaderMatchSpecifier::PresentMatch(true))
    );
    let q: Vec<_> = m
        .query_parameters
        .iter()
        .map(|q| (q.name.as_str(), q.query_parameter_match_specifier.clone()))
        .collect();
    assert_eq!(q.len(), 2);
    assert!(matches!(
        &q[0],
        ("debug", Some(QueryParameterMatchSpecifier::StringMatch(s)))
            if s.match_pattern == Some(MatchPattern::Exact("1".into()))
    ));
    assert_eq!(
        q[1],
        (
            "trace",
            Some(QueryParameterMatchSpecifier::PresentMatch(true))
        )
    );

    let m1 = routes[1].r#match.as_ref().unwrap();
    assert_eq!(
        m1.path_specifier,
        Some(route_match::PathSpecifier::Path("/login".into()))
    );
    assert_eq!(m1.case_sensitive, None);
    match &routes[2].r#match.as_ref().unwrap().path_specifier {
        Some(route_match::PathSpecifier::SafeRegex(r)) => assert_eq!(r.regex, "/v[0-9]+/.*"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn port_matches_pick_the_virtual_host() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api]
  resolution: STATIC
  ports: [{number: 80, name: http}, {number: 8080, name: http-alt}]
  endpoints: [{address: 127.0.2.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api]
  http:
  - match: [{port: 8080, uri: {prefix: /admin}}]
    route: [{destination: {host: api, port: {number: 8080}}}]
  - route: [{destination: {host: api}}]
"#;
    let rc = route_config(&snapshot(yaml));
    let host = "api.default.svc.cluster.local";
    let on_8080 = vhost(&rc, "api:8080");
    assert_eq!(on_8080.routes.len(), 2);
    assert_eq!(
        weighted(action(&on_8080.routes[1])),
        [(c(8080, "", host), 100)]
    );
    // Port 80 never sees the 8080-only block; its catch-all goes to port 80
    // (a destination without a port takes the request's).
    let on_80 = vhost(&rc, "api");
    assert_eq!(on_80.domains.iter().filter(|d| *d == "api:80").count(), 1);
    assert_eq!(on_80.routes.len(), 1);
    assert_eq!(weighted(action(&on_80.routes[0])), [(c(80, "", host), 100)]);
}

#[test]
fn rewrites() {
    let snap = snapshot(&vs(r#"
  - match: [{uri: {prefix: /v1}}]
    rewrite: {uri: /v2}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /old}}]
    rewrite: {uri: /, authority: new.example.com}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {exact: /a}}]
    rewrite: {uri: /b}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {regex: "/r.*"}}]
    rewrite: {uri: /fixed}
    route: [{destination: {host: reviews}}]
  - rewrite: {uriRegexRewrite: {match: "^/x/(.*)$", rewrite: "/y/\\1"}}
    route: [{destination: {host: reviews}}]
"#));
    let rc = route_config(&snap);
    let rs = &vhost(&rc, "reviews:9080").routes;
    assert_eq!(action(&rs[0]).prefix_rewrite, "/v2");
    assert_eq!(action(&rs[0]).regex_rewrite, None);
    // A replacement ending in `/` must not double the slash after the prefix.
    let slash = action(&rs[1]).regex_rewrite.clone().unwrap();
    assert_eq!(slash.pattern.unwrap().regex, "^/old/?");
    assert_eq!(slash.substitution, "/");
    assert_eq!(
        action(&rs[1]).host_rewrite_specifier,
        Some(HostRewriteSpecifier::HostRewriteLiteral(
            "new.example.com".into()
        ))
    );
    assert_eq!(action(&rs[2]).prefix_rewrite, "/b");
    // Any other match: the whole path is replaced, as trellis-proxy does.
    let whole = action(&rs[3]).regex_rewrite.clone().unwrap();
    assert_eq!(whole.pattern.unwrap().regex, "^.*$");
    assert_eq!(whole.substitution, "/fixed");
    let re = action(&rs[4]).regex_rewrite.clone().unwrap();
    assert_eq!(re.pattern.unwrap().regex, "^/x/(.*)$");
    assert_eq!(re.substitution, "/y/\\1");
}

#[test]
fn header_edits_per_route_and_destination() {
    let snap = snapshot(&vs(r#"
  - headers:
      request:
        set: {x-set: a}
        add: {x-add: b}
        remove: [x-remove]
      response:
        set: {x-resp: c}
        remove: [server]
    route:
    - destination: {host: reviews, subset: v1}
      headers: {request: {set: {x-dest: v1}}}
"#));
    let rc = route_config(&snap);
    assert!(rc.most_specific_header_mutations_wins);
    let r = &vhost(&rc, "reviews:9080").routes[0];
    let ops: Vec<_> = r
        .request_headers_to_add
        .iter()
        .map(|o| {
            let h = o.header.as_ref().unwrap();
            (h.key.as_str(), h.value.as_str(), o.append_action)
        })
        .collect();
    assert_eq!(
        ops,
        [
            (
                "x-set",
                "a",
                HeaderAppendAction::OverwriteIfExistsOrAdd as i32
            ),
            ("x-add", "b", HeaderAppendAction::AppendIfExistsOrAdd as i32),
        ]
    );
    assert_eq!(r.request_headers_to_remove, ["x-remove"]);
    assert_eq!(r.response_headers_to_add.len(), 1);
    assert_eq!(r.response_headers_to_remove, ["server"]);
    // A destination with headers stays a weighted cluster to carry them.
    match &action(r).cluster_specifier {
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            assert_eq!(w.clusters.len(), 1);
            let h = w.clusters[0].request_headers_to_add[0]
                .header
                .as_ref()
                .unwrap();
            assert_eq!((h.key.as_str(), h.value.as_str()), ("x-dest", "v1"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn timeouts() {
    let snap = snapshot(&vs(r#"
  - match: [{uri: {prefix: /slow}}]
    timeout: 2.5s
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /zero}}]
    timeout: 0s
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}}]
"#));
    let rc = route_config(&snap);
    let rs = &vhost(&rc, "reviews:9080").routes;
    assert_eq!(action(&rs[0]).timeout, secs(2, 500));
    let msd = action(&rs[0]).max_stream_duration.unwrap();
    assert_eq!(msd.grpc_timeout_header_max, secs(2, 500));
    // No timeout (or 0s): disabled, not Envoy's default 15 s.
    assert_eq!(action(&rs[1]).timeout, secs(0, 0));
    assert_eq!(action(&rs[2]).timeout, secs(0, 0));
    assert_eq!(
        action(&rs[2])
            .max_stream_duration
            .unwrap()
            .grpc_timeout_header_max,
        secs(0, 0)
    );
}

#[test]
fn retries() {
    let snap = snapshot(&vs(r#"
  - match: [{uri: {prefix: /a}}]
    retries: {attempts: 3, perTryTimeout: 250ms, retryOn: "5xx,gateway-error,409,503,reset"}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /b}}]
    retries: {attempts: 1, retryIgnorePreviousHosts: false, retryRemoteLocalities: true}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /c}}]
    retries: {attempts: 0}
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}}]
"#));
    let rc = route_config(&snap);
    let rs = &vhost(&rc, "reviews:9080").routes;

    let a = action(&rs[0]).retry_policy.clone().unwrap();
    assert_eq!(a.num_retries.unwrap().value, 3);
    assert_eq!(a.per_try_timeout, secs(0, 250));
    assert_eq!(a.retry_on, "5xx,gateway-error,reset,retriable-status-codes");
    assert_eq!(a.retriable_status_codes, [409, 503]);
    assert_eq!(a.retry_host_predicate.len(), 1);
    assert_eq!(
        a.retry_host_predicate[0].name,
        "envoy.retry_host_predicates.previous_hosts"
    );
    assert_eq!(a.host_selection_retry_max_attempts, 5);
    let backoff = a.retry_back_off.unwrap();
    assert_eq!(backoff.base_interval, secs(0, 25));
    assert_eq!(backoff.max_interval, secs(0, 250));
    assert!(a.retry_priority.is_none());

    // Unset retryOn: Istio's default conditions.
    let b = action(&rs[1]).retry_policy.clone().unwrap();
    assert_eq!(b.num_retries.unwrap().value, 1);
    assert_eq!(
        b.retry_on,
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    );
    assert!(b.retry_host_predicate.is_empty());
    assert_eq!(
        b.retry_priority.unwrap().name,
        "envoy.retry_priorities.previous_priorities"
    );

    assert_eq!(action(&rs[2]).retry_policy, None, "attempts 0: no retries");

    // No `retries`: Istio's default policy.
    let d = action(&rs[3]).retry_policy.clone().unwrap();
    assert_eq!(d.num_retries.unwrap().value, 2);
    assert_eq!(
        d.retry_on,
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    );
    assert_eq!(d.retriable_status_codes, [503]);
    assert_eq!(d.retry_host_predicate.len(), 1);
}

#[test]
fn mirrors() {
    let snap = snapshot(&vs(r#"
  - match: [{uri: {prefix: /one}}]
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 12.5}
    route: [{destination: {host: reviews, subset: v1}}]
  - mirrors:
    - destination: {host: reviews, subset: v1}
    - destination: {host: reviews, subset: v2}
      percentage: {value: 0.5}
    route: [{destination: {host: reviews}}]
"#));
    let rc = route_config(&snap);
    let rs = &vhost(&rc, "reviews:9080").routes;
    let m = &action(&rs[0]).request_mirror_policies;
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].cluster, c(9080, "v2", REVIEWS));
    let f = m[0]
        .runtime_fraction
        .clone()
        .unwrap()
        .default_value
        .unwrap();
    assert_eq!((f.numerator, f.denominator), (125_000, 2), "per million");
    let ms = &action(&rs[1]).request_mirror_policies;
    let got: Vec<_> = ms
        .iter()
        .map(|m| {
            (
                m.cluster.clone(),
                m.runtime_fraction
                    .clone()
                    .unwrap()
                    .default_value
                    .unwrap()
                    .numerator,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (c(9080, "v1", REVIEWS), 1_000_000),
            (c(9080, "v2", REVIEWS), 5_000)
        ]
    );
}

#[test]
fn faults() {
    let snap = snapshot(&vs(r#"
  - match: [{headers: {x-test: {exact: delay}}}]
    fault:
      delay: {fixedDelay: 5s, percentage: {value: 10}}
      abort: {httpStatus: 503, percentage: {value: 50}}
    route: [{destination: {host: reviews}}]
  - match: [{headers: {x-test: {exact: grpc}}}]
    fault: {abort: {grpcStatus: UNAVAILABLE}}
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}}]
"#));
    let rc = route_config(&snap);
    let rs = &vhost(&rc, "reviews:9080").routes;
    let f: HttpFault = unpack(&rs[0].typed_per_filter_config[filter::FAULT]);
    let d = f.delay.unwrap();
    assert_eq!(d.percentage.unwrap().numerator, 100_000);
    assert_eq!(
        d.fault_delay_secifier,
        Some(fault_delay::FaultDelaySecifier::FixedDelay(Duration {
            seconds: 5,
            nanos: 0
        }))
    );
    let a = f.abort.unwrap();
    assert_eq!(a.error_type, Some(fault_abort::ErrorType::HttpStatus(503)));
    assert_eq!(a.percentage.unwrap().numerator, 500_000);
    let g: HttpFault = unpack(&rs[1].typed_per_filter_config[filter::FAULT]);
    let ga = g.abort.unwrap();
    assert_eq!(ga.error_type, Some(fault_abort::ErrorType::GrpcStatus(14)));
    assert_eq!(ga.percentage.unwrap().numerator, 1_000_000, "unset is 100%");
    assert!(g.delay.is_none());
    assert!(rs[2].typed_per_filter_config.is_empty());
}

#[test]
fn rate_limits_per_host_and_per_route() {
    let snap = snapshot(&vs(r#"
  - name: canary
    match: [{headers: {x-canary: {exact: "1"}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews}}]
---
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: reviews}
spec:
  host: reviews
  tokenBucket: {maxTokens: 100, fillInterval: 1s}
---
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: canary}
spec:
  host: reviews
  routes: [canary]
  tokenBucket: {maxTokens: 10, tokensPerFill: 1, fillInterval: 10ms}
"#));
    let rc = route_config(&snap);
    let vh = vhost(&rc, "reviews:9080");
    let host: LocalRateLimit = unpack(&vh.typed_per_filter_config[filter::RATE_LIMIT_HOST]);
    let tb = host.token_bucket.unwrap();
    assert_eq!(tb.max_tokens, 100);
    assert_eq!(tb.tokens_per_fill.unwrap().value, 100, "unset: maxTokens");
    assert_eq!(tb.fill_interval, secs(1, 0));
    assert_eq!(
        host.filter_enabled
            .unwrap()
            .default_value
            .unwrap()
            .numerator,
        100
    );
    assert_eq!(
        host.filter_enforced
            .unwrap()
            .default_value
            .unwrap()
            .numerator,
        100
    );
    let reason = host.response_headers_to_add[0].header.clone().unwrap();
    assert_eq!(
        (reason.key.as_str(), reason.value.as_str()),
        ("x-trellis-reason", "rate_limited")
    );
    assert_eq!(host.stat_prefix, "trellis_rate_limit_default_reviews");

    let route: LocalRateLimit =
        unpack(&vh.routes[0].typed_per_filter_config[filter::RATE_LIMIT_ROUTE]);
    let tb = route.token_bucket.unwrap();
    // 1 token / 10 ms is refilled as 5 tokens / 50 ms (Envoy's minimum).
    assert_eq!(tb.max_tokens, 10);
    assert_eq!(tb.tokens_per_fill.unwrap().value, 5);
    assert_eq!(tb.fill_interval, secs(0, 50));
    assert!(vh.routes[1].typed_per_filter_config.is_empty());
}

#[test]
fn consistent_hash_sets_the_route_hash_policy() {
    let cases = [
        ("{httpHeaderName: X-User}", "header"),
        ("{httpCookie: {name: session, ttl: 60s, path: /}}", "cookie"),
        ("{useSourceIp: true}", "source_ip"),
        ("{httpQueryParameterName: user}", "query"),
    ];
    for (hash, kind) in cases {
        let yaml = format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cart}}
spec:
  hosts: [cart]
  resolution: STATIC
  ports: [{{number: 80, name: http}}]
  endpoints: [{{address: 127.0.3.1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: cart}}
spec:
  host: cart
  trafficPolicy: {{loadBalancer: {{consistentHash: {hash}}}}}
"#
        );
        let rc = route_config(&snapshot(&yaml));
        let a = action(&vhost(&rc, "cart").routes[0]);
        assert_eq!(a.hash_policy.len(), 1, "{kind}");
        match (kind, a.hash_policy[0].policy_specifier.clone().unwrap()) {
            ("header", PolicySpecifier::Header(h)) => assert_eq!(h.header_name, "x-user"),
            ("cookie", PolicySpecifier::Cookie(c)) => {
                assert_eq!((c.name.as_str(), c.path.as_str()), ("session", "/"));
                assert_eq!(c.ttl, secs(60, 0));
            }
            ("source_ip", PolicySpecifier::ConnectionProperties(p)) => assert!(p.source_ip),
            ("query", PolicySpecifier::QueryParameter(q)) => assert_eq!(q.name, "user"),
            (kind, other) => panic!("{kind}: {other:?}"),
        }
    }
}

#[test]
fn default_routes_without_a_virtual_service() {
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db]
  resolution: STATIC
  ports: [{number: 8080, name: http}, {number: 5432, name: tcp-pg}]
  endpoints: [{address: 127.0.4.1}]
"#,
    );
    let rc = route_config(&snap);
    let host = "db.default.svc.cluster.local";
    let http = &vhost(&rc, "db:8080").routes;
    assert_eq!(http.len(), 1);
    assert_eq!(http[0].name, format!("default|{host}:8080"));
    let a = action(&http[0]);
    assert_eq!(
        a.cluster_specifier,
        Some(ClusterSpecifier::Cluster(c(8080, "", host)))
    );
    assert_eq!(a.timeout, secs(0, 0));
    assert_eq!(
        a.retry_policy.clone().unwrap().num_retries.unwrap().value,
        2
    );
    // A TCP port is served as CONNECT tunnels, as trellis-proxy does.
    let tcp = &vhost(&rc, "db:5432").routes;
    assert_eq!(
        tcp[0].r#match.clone().unwrap().path_specifier,
        Some(route_match::PathSpecifier::ConnectMatcher(
            route_match::ConnectMatcher {}
        ))
    );
    let ta = action(&tcp[0]);
    assert_eq!(
        ta.cluster_specifier,
        Some(ClusterSpecifier::Cluster(c(5432, "", host)))
    );
    assert_eq!(ta.upgrade_configs[0].upgrade_type, "CONNECT");
    assert!(ta.upgrade_configs[0].connect_config.is_some());
    assert!(ta.retry_policy.is_none());
}

#[test]
fn tcp_routes_split_connect_tunnels() {
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db]
  resolution: STATIC
  ports: [{number: 5432, name: tcp}]
  endpoints: [{address: 127.0.4.1, labels: {role: primary}}, {address: 127.0.4.2, labels: {role: replica}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db}
spec:
  host: db
  subsets: [{name: primary, labels: {role: primary}}, {name: replica, labels: {role: replica}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db]
  tcp:
  - match: [{port: 5432}]
    route:
    - {destination: {host: db, subset: primary}, weight: 90}
    - {destination: {host: db, subset: replica}, weight: 10}
"#,
    );
    let rc = route_config(&snap);
    let host = "db.default.svc.cluster.local";
    let r = &vhost(&rc, "db:5432").routes;
    assert_eq!(r.len(), 1);
    assert_eq!(
        weighted(action(&r[0])),
        [
            (c(5432, "primary", host), 90),
            (c(5432, "replica", host), 10)
        ]
    );
}

#[test]
fn domains_are_every_alias_with_port_and_bare_for_80() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web}
spec:
  hosts: [web]
  resolution: STATIC
  ports: [{number: 80, name: http}, {number: 9090, name: http-admin}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [api.example.com]
  resolution: DNS
  ports: [{number: 443, name: tls}]
"#;
    let rc = route_config(&snapshot(yaml));
    let fqdn = "web.default.svc.cluster.local";
    assert_eq!(
        vhost(&rc, "web").domains,
        [
            format!("{fqdn}:80"),
            fqdn.to_string(),
            "web.default.svc:80".into(),
            "web.default.svc".into(),
            "web.default:80".into(),
            "web.default".into(),
            "web:80".into(),
            "web".into(),
        ]
    );
    assert_eq!(vhost(&rc, "web:9090").domains.len(), 4);
    assert_eq!(vhost(&rc, "web:9090").name, format!("{fqdn}:9090"));
    assert_eq!(
        vhost(&rc, "api.example.com:443").domains,
        ["api.example.com:443"]
    );
    // Short names are only for clients in the service's namespace.
    let other = trellis_translate::translate(&validated(yaml), &Default::default(), &proxy("prod"));
    let rc = route_config(&other);
    assert!(
        rc.virtual_hosts
            .iter()
            .all(|v| !v.domains.contains(&"web".to_string()))
    );
    vhost(&rc, "web.default");
}

#[test]
fn alias_collisions_are_resolved_as_the_proxy_does() {
    // `reviews.default` is a host of its own (a dotted ServiceEntry host is
    // kept as written) and an alias of reviews.default.svc.cluster.local:
    // it goes to the first host in name order, as in trellis-proxy's
    // RouteTable, and never to two virtual hosts (Envoy rejects that).
    let yaml = reviews(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: literal}
spec:
  hosts: [reviews.default]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 127.0.9.9}]
"#,
    );
    let rc = route_config(&snapshot(&yaml));
    let mut all: Vec<&String> = rc.virtual_hosts.iter().flat_map(|v| &v.domains).collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "a domain is in two virtual hosts");
    let vh = vhost(&rc, "reviews.default:9080");
    assert_eq!(vh.name, "reviews.default:9080");
    assert_eq!(
        action(&vh.routes[0]).cluster_specifier,
        Some(ClusterSpecifier::Cluster(c(9080, "", "reviews.default")))
    );
    assert_eq!(vhost(&rc, "reviews:9080").name, format!("{REVIEWS}:9080"));
}

#[test]
fn virtual_service_hosts_that_are_not_services() {
    let yaml = reviews(
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wild}
spec:
  hosts: ["*.example.org", "shop.example.net"]
  http:
  - match: [{port: 8080}]
    route: [{destination: {host: reviews, subset: v2, port: {number: 9080}}}]
  - route: [{destination: {host: reviews}}]
"#,
    );
    let rc = route_config(&snapshot(&yaml));
    let any = vhost(&rc, "*.example.org");
    assert_eq!(any.domains, ["*.example.org"]);
    assert_eq!(any.routes.len(), 1, "the port-8080 block is not here");
    assert_eq!(
        weighted(action(&any.routes[0])),
        [(c(9080, "", REVIEWS), 100)]
    );
    assert_eq!(vhost(&rc, "*.example.org:8080").routes.len(), 2);
    assert_eq!(
        vhost(&rc, "shop.example.net").domains,
        ["shop.example.net", "shop.example.net:*"]
    );
    assert_eq!(vhost(&rc, "shop.example.net:8080").routes.len(), 2);
}
