//! Route matching: every kind of condition, first match wins, and the
//! explained 404 when nothing matches.

use trellis_testing::EchoServer;

use crate::support::*;

/// Route name -> the condition it tests. Each route goes to its own service
/// (an echo server of the same name), so the answering upstream names the
/// route that matched.
const ROUTES: &str = r#"- name: header-exact
  match:
  - headers: {x-env: {exact: canary}}
  route: [{destination: {host: header-exact}}]
- name: header-prefix
  match:
  - headers: {x-user: {prefix: admin-}}
  route: [{destination: {host: header-prefix}}]
- name: header-regex
  match:
  - headers: {x-build: {regex: 'v[0-9]+\.[0-9]+'}}
  route: [{destination: {host: header-regex}}]
- name: method
  match:
  - method: {exact: DELETE}
  route: [{destination: {host: method}}]
- name: uri-exact
  match:
  - uri: {exact: /exact}
  route: [{destination: {host: uri-exact}}]
- name: uri-prefix
  match:
  - uri: {prefix: /pre/}
  route: [{destination: {host: uri-prefix}}]
- name: uri-regex
  match:
  - uri: {regex: '/items/[0-9]+'}
  route: [{destination: {host: uri-regex}}]
- name: query
  match:
  - queryParams: {debug: {exact: "1"}}
  route: [{destination: {host: query}}]
- name: authority
  match:
  - authority: {prefix: reviews.default.svc}
  route: [{destination: {host: authority}}]
- name: without-headers
  match:
  - uri: {prefix: /wo}
    withoutHeaders: {x-block: {}}
  route: [{destination: {host: without-headers}}]
- name: any-of
  match:
  - uri: {exact: /or-a}
  - uri: {exact: /or-b}
  route: [{destination: {host: any-of}}]
"#;

const NAMES: [&str; 11] = [
    "header-exact",
    "header-prefix",
    "header-regex",
    "method",
    "uri-exact",
    "uri-prefix",
    "uri-regex",
    "query",
    "authority",
    "without-headers",
    "any-of",
];

#[tokio::test]
async fn matches_first_wins_and_no_match_is_404() {
    let reviews = EchoServer::start("reviews").await;
    let mut echoes = Vec::new();
    let mut docs = vec![http_service("reviews", &[reviews.addr()])];
    for name in NAMES {
        let e = EchoServer::start(name).await;
        docs.push(http_service(name, &[e.addr()]));
        echoes.push(e);
    }
    let proxy = Proxy::start(&[
        ("services.yaml", docs.join("---\n")),
        ("vs.yaml", virtual_service("reviews", &["reviews"], ROUTES)),
    ])
    .await;

    // (method, url, headers, expected upstream; None = 404)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: &[Case] = &[
        (
            "GET",
            "http://reviews:9080/x",
            &[("x-env", "canary")],
            Some("header-exact"),
        ),
        (
            "GET",
            "http://reviews:9080/x",
            &[("x-env", "canary2")],
            None,
        ),
        (
            "GET",
            "http://reviews:9080/x",
            &[("x-user", "admin-bob")],
            Some("header-prefix"),
        ),
        (
            "GET",
            "http://reviews:9080/x",
            &[("x-user", "bob-admin")],
            None,
        ),
        (
            "GET",
            "http://reviews:9080/x",
            &[("x-build", "v12.3")],
            Some("header-regex"),
        ),
        // Regexes match the whole value.
        (
            "GET",
            "http://reviews:9080/x",
            &[("x-build", "v1.2.3")],
            None,
        ),
        ("DELETE", "http://reviews:9080/x", &[], Some("method")),
        ("PUT", "http://reviews:9080/x", &[], None),
        ("GET", "http://reviews:9080/exact", &[], Some("uri-exact")),
        ("GET", "http://reviews:9080/exact/more", &[], None),
        (
            "GET",
            "http://reviews:9080/exact?a=b",
            &[],
            Some("uri-exact"),
        ),
        (
            "GET",
            "http://reviews:9080/pre/abc",
            &[],
            Some("uri-prefix"),
        ),
        ("GET", "http://reviews:9080/pre", &[], None),
        (
            "GET",
            "http://reviews:9080/items/42",
            &[],
            Some("uri-regex"),
        ),
        ("GET", "http://reviews:9080/items/42/x", &[], None),
        ("GET", "http://reviews:9080/items/abc", &[], None),
        ("GET", "http://reviews:9080/q?debug=1", &[], Some("query")),
        (
            "GET",
            "http://reviews:9080/q?x=2&debug=1",
            &[],
            Some("query"),
        ),
        ("GET", "http://reviews:9080/q?debug=10", &[], None),
        (
            "GET",
            "http://reviews.default.svc.cluster.local:9080/x",
            &[],
            Some("authority"),
        ),
        ("GET", "http://reviews.default:9080/x", &[], None),
        (
            "GET",
            "http://reviews:9080/wo",
            &[],
            Some("without-headers"),
        ),
        ("GET", "http://reviews:9080/wo", &[("x-block", "1")], None),
        ("GET", "http://reviews:9080/or-a", &[], Some("any-of")),
        ("GET", "http://reviews:9080/or-b", &[], Some("any-of")),
        ("GET", "http://reviews:9080/or-c", &[], None),
        // First match wins: the header route comes before the uri routes,
        // the method route before uri-exact.
        (
            "GET",
            "http://reviews:9080/exact",
            &[("x-env", "canary")],
            Some("header-exact"),
        ),
        ("DELETE", "http://reviews:9080/exact", &[], Some("method")),
        (
            "GET",
            "http://reviews:9080/items/7?debug=1",
            &[],
            Some("uri-regex"),
        ),
        (
            "GET",
            "http://reviews.default.svc.cluster.local:9080/wo",
            &[],
            Some("authority"),
        ),
    ];
    let mut not_found = 0;
    for (method, url, headers, want) in cases {
        let mut b = http::Request::builder().method(*method).uri(*url);
        for (k, v) in *headers {
            b = b.header(*k, *v);
        }
        let r = proxy
            .send(b.body(Default::default()).expect("request"))
            .await;
        let case = format!("{method} {url} {headers:?}");
        match want {
            Some(upstream) => {
                assert_eq!(r.status, 200, "{case}: {}", r.text());
                assert_eq!(r.upstream(), *upstream, "{case}");
                let json = r.json();
                assert_eq!(json["method"], *method, "{case}");
            }
            None => {
                not_found += 1;
                assert_eq!(r.status, 404, "{case}: {}", r.text());
                assert_eq!(r.reason(), Some("route_not_found"), "{case}");
                assert!(
                    r.text()
                        .contains("no route of reviews.default.svc.cluster.local matches"),
                    "{case}: {}",
                    r.text()
                );
            }
        }
    }
    assert_eq!(
        reviews.requests(),
        0,
        "the VirtualService replaces the default route"
    );
    let unrouted = proxy
        .metric(r#"trellis_local_replies_total{direction="outbound",reason="route_not_found"}"#)
        .await;
    assert_eq!(unrouted, Some(not_found as f64));
}
