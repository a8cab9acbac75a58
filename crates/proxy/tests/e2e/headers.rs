//! Header manipulation at route and destination level, both directions.

use trellis_testing::EchoServer;

use crate::support::*;

const ROUTES: &str = r#"- match: [{uri: {prefix: /hdr}}]
  headers:
    request:
      set: {x-route-set: route}
      add: {x-route-add: added}
      remove: [x-remove-me]
    response:
      set: {x-resp-set: route}
      add: {x-resp-add: added}
      remove: [x-upstream-secret]
  route:
  - destination: {host: reviews}
    headers:
      request:
        set: {x-dest-set: dest}
        add: {x-client: from-dest}
        remove: [x-dest-remove]
      response:
        set: {x-resp-dest: dest}
        add: {x-resp-multi: dest}
        remove: [x-upstream-other]
- route: [{destination: {host: reviews}}]
"#;

fn values(j: &serde_json::Value, name: &str) -> Vec<String> {
    match &j["headers"][name] {
        serde_json::Value::Null => vec![],
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect(),
        other => panic!("header {name}: {other}"),
    }
}

fn resp_values(r: &Reply, name: &str) -> Vec<String> {
    r.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn request_and_response_headers_at_route_and_destination() {
    let echo = EchoServer::start("reviews-v1").await;
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("reviews", &[echo.addr()])),
        ("vs.yaml", virtual_service("reviews", &["reviews"], ROUTES)),
    ])
    .await;
    let upstream_sets: &[(&str, &str)] = &[
        ("x-echo-response-header", "x-upstream-secret=s"),
        ("x-echo-response-header", "x-upstream-other=o"),
        ("x-echo-response-header", "x-resp-set=upstream"),
        ("x-echo-response-header", "x-resp-multi=upstream"),
        ("x-echo-response-header", "x-kept=k"),
    ];
    let client: &[(&str, &str)] = &[
        ("x-remove-me", "1"),
        ("x-route-set", "client"),
        ("x-route-add", "client"),
        ("x-dest-remove", "1"),
        ("x-client", "c"),
        ("x-untouched", "u"),
    ];
    let all: Vec<(&str, &str)> = client.iter().chain(upstream_sets).copied().collect();
    for h2 in [false, true] {
        let mut b = http::Request::get("http://reviews:9080/hdr");
        for (k, v) in &all {
            b = b.header(*k, *v);
        }
        let req = b.body(Default::default()).expect("request");
        let r = if h2 {
            proxy.send_h2(req).await
        } else {
            proxy.send(req).await
        };
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        // Request side, as the upstream saw it.
        assert_eq!(values(&j, "x-remove-me"), Vec::<String>::new(), "{j}");
        assert_eq!(values(&j, "x-route-set"), ["route"], "{j}");
        assert_eq!(values(&j, "x-route-add"), ["client", "added"], "{j}");
        assert_eq!(values(&j, "x-dest-set"), ["dest"], "{j}");
        assert_eq!(values(&j, "x-client"), ["c", "from-dest"], "{j}");
        assert_eq!(values(&j, "x-dest-remove"), Vec::<String>::new(), "{j}");
        assert_eq!(values(&j, "x-untouched"), ["u"], "{j}");
        // Response side, as the client saw it.
        assert_eq!(resp_values(&r, "x-upstream-secret"), Vec::<String>::new());
        assert_eq!(resp_values(&r, "x-upstream-other"), Vec::<String>::new());
        assert_eq!(resp_values(&r, "x-resp-set"), ["route"]);
        assert_eq!(resp_values(&r, "x-resp-add"), ["added"]);
        assert_eq!(resp_values(&r, "x-resp-dest"), ["dest"]);
        assert_eq!(resp_values(&r, "x-resp-multi"), ["upstream", "dest"]);
        assert_eq!(resp_values(&r, "x-kept"), ["k"]);
        assert_eq!(r.upstream(), "reviews-v1");
    }

    // The second route has no header operations: nothing changes.
    let mut b = http::Request::get("http://reviews:9080/plain");
    for (k, v) in &all {
        b = b.header(*k, *v);
    }
    let r = proxy
        .send(b.body(Default::default()).expect("request"))
        .await;
    let j = r.json();
    assert_eq!(values(&j, "x-remove-me"), ["1"], "{j}");
    assert_eq!(values(&j, "x-route-set"), ["client"], "{j}");
    assert_eq!(values(&j, "x-dest-set"), Vec::<String>::new(), "{j}");
    assert_eq!(resp_values(&r, "x-upstream-secret"), ["s"]);
    assert_eq!(resp_values(&r, "x-resp-set"), ["upstream"]);
}
