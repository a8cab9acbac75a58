//! Rewrites: the path and authority the upstream sees.

use trellis_testing::EchoServer;

use crate::support::*;

const ROUTES: &str = r#"- match: [{uri: {prefix: /api/v1/}}]
  rewrite: {uri: /v2/}
  route: [{destination: {host: reviews}}]
- match: [{uri: {regex: '/old/.*'}}]
  rewrite:
    uriRegexRewrite: {match: '^/old/([^/]+)/(.*)$', rewrite: '/new/\2/\1'}
  route: [{destination: {host: reviews}}]
- match: [{uri: {prefix: /auth}}]
  rewrite: {authority: 'ratings.internal:8080'}
  route: [{destination: {host: reviews}}]
- match: [{uri: {exact: /whole}}]
  rewrite: {uri: /replaced}
  route: [{destination: {host: reviews}}]
"#;

#[tokio::test]
async fn uri_prefix_regex_and_authority_rewrites() {
    let echo = EchoServer::start("reviews-v1").await;
    // Port 9080 is HTTP/1.1 upstream, 9081 HTTP/2: the authority travels
    // as Host on one and :authority on the other.
    let se = service_entry(
        "reviews",
        &[(9080, "http", "HTTP"), (9081, "http2", "HTTP2")],
        &[(echo.addr(), &[])],
    );
    let proxy = Proxy::start(&[
        ("se.yaml", se),
        ("vs.yaml", virtual_service("reviews", &["reviews"], ROUTES)),
    ])
    .await;

    for port in [9080, 9081] {
        let url = |p: &str| format!("http://reviews:{port}{p}");
        let version = if port == 9080 { "HTTP/1.1" } else { "HTTP/2.0" };

        let j = proxy.get(&url("/api/v1/users?id=7")).await.json();
        assert_eq!(
            (
                j["path"].as_str(),
                j["query"].as_str(),
                j["version"].as_str()
            ),
            (Some("/v2/users"), Some("id=7"), Some(version)),
            "{j}"
        );
        assert_eq!(j["authority"], format!("reviews:{port}"), "{j}");

        let j = proxy.get(&url("/old/a/b/c?x=1")).await.json();
        assert_eq!(j["path"], "/new/b/c/a", "{j}");
        assert_eq!(j["query"], "x=1", "{j}");

        let j = proxy.get(&url("/auth/x")).await.json();
        assert_eq!(j["authority"], "ratings.internal:8080", "{j}");
        assert_eq!(j["path"], "/auth/x", "{j}");

        let j = proxy.get(&url("/whole")).await.json();
        assert_eq!(j["path"], "/replaced", "{j}");

        // The VirtualService owns the host: an unmatched path is a 404.
        proxy
            .get(&url("/other"))
            .await
            .assert_local(404, "route_not_found");
    }
    // Over h2c downstream too.
    let j = proxy
        .send_h2(get("http://reviews:9080/api/v1/h2"))
        .await
        .json();
    assert_eq!(j["path"], "/v2/h2", "{j}");
}
