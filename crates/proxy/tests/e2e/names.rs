//! Host names a client may use: short names through the namespace's search
//! list, with and without port, and absolute-form requests (the proxy used
//! as `http_proxy`).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use trellis_testing::EchoServer;

use crate::support::*;

/// One request on a fresh connection with hyper's low-level client, which
/// sends the URI (origin or absolute form) and Host exactly as given.
async fn conn_get(proxy: std::net::SocketAddr, uri: &str, host: &str) -> (u16, serde_json::Value) {
    let stream = TcpStream::connect(proxy).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    // As curl sends it through an http_proxy; the hop-by-hop header stays
    // with the proxy.
    let req = http::Request::get(uri)
        .header("host", host)
        .header("proxy-connection", "Keep-Alive")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = tx.send_request(req).await.expect("send");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
    (status, json)
}

#[tokio::test]
async fn short_names_ports_and_absolute_form() {
    let echo = EchoServer::start("reviews-v1").await;
    let se = service_entry(
        "reviews",
        &[(80, "http", "HTTP"), (9080, "http-alt", "HTTP")],
        &[(echo.addr(), &[])],
    );
    let proxy = Proxy::start(&[("se.yaml", se)]).await;

    for name in [
        "reviews",
        "reviews.default",
        "reviews.default.svc",
        "reviews.default.svc.cluster.local",
        "Reviews.Default",
        "reviews.default.svc.cluster.local.",
    ] {
        for port in ["", ":80", ":9080"] {
            let authority = format!("{name}{port}");
            // Exactly this Host (a pooled client would drop a default :80).
            let (status, j) = conn_get(proxy.outbound(), "/n", &authority).await;
            assert_eq!(status, 200, "{authority}: {j}");
            assert_eq!(j["upstream"], "reviews-v1", "{authority}");
            assert_eq!(j["authority"], authority.as_str(), "{authority}");
            let r = proxy.send_h2(get(&format!("http://{authority}/n"))).await;
            assert_eq!(r.status, 200, "h2 {authority}: {}", r.text());
            assert_eq!(r.upstream(), "reviews-v1", "h2 {authority}");
        }
    }
    // Names that are not this service (another namespace, another name).
    for authority in [
        "reviews.prod:9080",
        "ratings:9080",
        "reviews.default.svc.cluster:9080",
    ] {
        proxy
            .get(&format!("http://{authority}/n"))
            .await
            .assert_local(404, "route_not_found");
    }

    // Absolute form, as an http_proxy client sends it: the URI names the
    // target and wins over the Host header (RFC 9112 §3.2.2).
    let (status, j) = conn_get(
        proxy.outbound(),
        "http://reviews:9080/x?y=1",
        "reviews:9080",
    )
    .await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(
        (j["path"].as_str(), j["query"].as_str()),
        (Some("/x"), Some("y=1")),
        "{j}"
    );
    assert_eq!(j["authority"], "reviews:9080", "{j}");
    assert_eq!(j["version"], "HTTP/1.1", "{j}");
    assert_eq!(
        j["headers"]["proxy-connection"],
        serde_json::Value::Null,
        "{j}"
    );

    let (status, j) = conn_get(
        proxy.outbound(),
        "http://reviews.default/abs",
        "elsewhere.example",
    )
    .await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["path"], "/abs", "{j}");
    assert_eq!(j["authority"], "reviews.default", "{j}");

    let (status, body) = conn_get(
        proxy.outbound(),
        "http://nope.example:9080/x",
        "reviews:9080",
    )
    .await;
    assert_eq!(
        status, 404,
        "the absolute URI names an unknown host: {body}"
    );
}

/// A namespace-wide Istio `Sidecar` limits the hosts the proxy routes to;
/// a host it leaves out answers as unknown.
#[tokio::test]
async fn a_namespace_sidecar_limits_egress_hosts() {
    let reviews = EchoServer::start("reviews").await;
    let ratings = EchoServer::start("ratings").await;
    let api = EchoServer::start("api").await;
    let other_ns = service_entry("ratings", &[(80, "http", "HTTP")], &[(ratings.addr(), &[])])
        .replace("namespace: default", "namespace: other");
    let sidecar = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress:
  - hosts: [./*, '*/api.example.com']
";
    let proxy = Proxy::start(&[
        (
            "a.yaml",
            service_entry("reviews", &[(80, "http", "HTTP")], &[(reviews.addr(), &[])]),
        ),
        ("b.yaml", other_ns),
        (
            "c.yaml",
            service_entry(
                "api.example.com",
                &[(80, "http", "HTTP")],
                &[(api.addr(), &[])],
            ),
        ),
        ("d.yaml", sidecar.to_string()),
    ])
    .await;
    let r = proxy.get("http://reviews/s").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = proxy.get("http://api.example.com/s").await;
    assert_eq!(r.status, 200, "{}", r.text());
    proxy
        .get("http://ratings.other/s")
        .await
        .assert_local(404, "route_not_found");
}
