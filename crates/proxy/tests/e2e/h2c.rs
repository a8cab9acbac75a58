//! HTTP/2 without TLS: h2c downstream, HTTP2 upstream ports, and version
//! translation both ways.

use bytes::Bytes;
use http_body_util::Full;
use trellis_testing::EchoServer;

use crate::support::*;

#[tokio::test]
async fn h2c_and_version_translation() {
    let echo = EchoServer::start("reviews-v1").await;
    let se = service_entry(
        "reviews",
        &[(9080, "http", "HTTP"), (9081, "http2", "HTTP2")],
        &[(echo.addr(), &[])],
    );
    let proxy = Proxy::start(&[("se.yaml", se)]).await;

    // (downstream h2c?, port, version the upstream sees)
    let cases = [
        (true, 9081, "HTTP/2.0"),  // h2c end to end
        (false, 9081, "HTTP/2.0"), // HTTP/1.1 client -> HTTP2 upstream
        (true, 9080, "HTTP/1.1"),  // h2c client -> HTTP/1.1 upstream
        (false, 9080, "HTTP/1.1"),
    ];
    for (h2, port, want) in cases {
        let url = format!("http://reviews:{port}/v?x=1");
        let r = if h2 {
            proxy.send_h2(get(&url)).await
        } else {
            proxy.get(&url).await
        };
        assert_eq!(r.status, 200, "{url} h2={h2}: {}", r.text());
        let j = r.json();
        assert_eq!(j["version"], want, "{url} h2={h2}: {j}");
        assert_eq!(j["path"], "/v", "{j}");
        assert_eq!(j["query"], "x=1", "{j}");
        assert_eq!(j["authority"], format!("reviews:{port}"), "{j}");
        assert_eq!(r.upstream(), "reviews-v1");

        // A large body streams through the translation intact.
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let req = http::Request::post(format!("http://reviews:{port}/echo-body"))
            .header("content-type", "application/octet-stream")
            .body(Full::new(Bytes::from(body.clone())))
            .expect("request");
        let r = if h2 {
            proxy.send_h2(req).await
        } else {
            proxy.send(req).await
        };
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.body.len(),
            body.len(),
            "echoed body length, h2={h2} port={port}"
        );
        assert!(r.body == body, "echoed body differs, h2={h2} port={port}");
    }
    // Each request reached the upstream exactly once.
    assert_eq!(echo.requests(), 8);
}
