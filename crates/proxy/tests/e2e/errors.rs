//! Local replies explain themselves: status, `x-trellis-reason`, a body for
//! humans, and a count by reason in /stats/prometheus.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use trellis_testing::{EchoServer, try_send};

use crate::support::*;

/// An upstream that reads a request head and then misbehaves: closes
/// without answering, or answers with a body shorter than promised.
async fn bad_upstream(truncate_body: bool) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                if truncate_body {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten..")
                        .await;
                }
                // Dropping the socket closes the connection.
            });
        }
    });
    addr
}

#[tokio::test]
async fn errors_are_explained_and_counted() {
    let echo = EchoServer::start("reviews-v1").await;
    let reset = bad_upstream(false).await;
    let truncated = bad_upstream(true).await;
    let (down1, down2) = (ClosedPort::new(), ClosedPort::new());
    let services = [
        http_service("reviews", &[echo.addr()]),
        http_service("down", &[down1.addr(), down2.addr()]),
        http_service("empty", &[]),
        http_service("flaky", &[reset]),
        http_service("short", &[truncated]),
    ];
    let vs = virtual_service(
        "reviews",
        &["reviews"],
        "- match: [{uri: {prefix: /slow}}]\n  timeout: 200ms\n  route: [{destination: {host: reviews}}]\n- route: [{destination: {host: reviews}}]\n",
    );
    let proxy = Proxy::start(&[("services.yaml", services.join("---\n")), ("vs.yaml", vs)]).await;

    let r = proxy.get("http://nope.example/x").await;
    r.assert_local(404, "route_not_found");
    assert!(r.text().contains(r#"host "nope.example""#), "{}", r.text());

    let r = proxy.get("http://reviews:1234/x").await;
    r.assert_local(404, "route_not_found");
    assert!(
        r.text().contains("has no port 1234 (its ports: 9080)"),
        "{}",
        r.text()
    );

    let r = proxy.get("http://down:9080/x").await;
    r.assert_local(503, "upstream_connect_failure");
    assert!(
        r.text().contains("connecting to 127.0.0.1:"),
        "{}",
        r.text()
    );

    let r = proxy.get("http://empty:9080/x").await;
    r.assert_local(503, "no_healthy_upstream");
    assert!(
        r.text()
            .contains("outbound|9080||empty.default.svc.cluster.local"),
        "{}",
        r.text()
    );

    let started = Instant::now();
    let r = proxy
        .get_with("http://reviews:9080/slow", &[("x-echo-delay-ms", "2000")])
        .await;
    let took = started.elapsed();
    r.assert_local(504, "upstream_timeout");
    assert!(r.text().contains("route timeout of 200ms"), "{}", r.text());
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(1500),
        "the 200ms timeout fired after {took:?}"
    );
    // Without the delay the same route answers.
    assert_eq!(proxy.get("http://reviews:9080/slow").await.status, 200);

    let r = proxy.get("http://flaky:9080/x").await;
    r.assert_local(502, "upstream_reset");
    assert!(
        r.text().contains("closed or reset the connection"),
        "{}",
        r.text()
    );

    // A body cut short after the headers went out cannot become a local
    // reply; the client must see the response fail, not a short 200.
    let res = try_send(&proxy.h1, get("http://short:9080/x")).await;
    assert!(
        res.is_err(),
        "a truncated upstream body reached the client as complete: {res:?}"
    );

    // The proxy still serves.
    assert_eq!(
        proxy.get("http://reviews:9080/ok").await.upstream(),
        "reviews-v1"
    );

    let metrics = proxy.metrics().await;
    for (reason, n) in [
        ("route_not_found", 2.0),
        ("upstream_connect_failure", 1.0),
        ("no_healthy_upstream", 1.0),
        ("upstream_timeout", 1.0),
        ("upstream_reset", 1.0),
    ] {
        let series =
            format!(r#"trellis_local_replies_total{{direction="outbound",reason="{reason}"}}"#);
        assert_eq!(
            metric_value(&metrics, &series),
            Some(n),
            "{series}\n{metrics}"
        );
    }
    // Errors are counted as 5xx of their route and cluster.
    let series = r#"trellis_requests_total{direction="outbound",route="default/reviews|http[0]",cluster="outbound|9080||reviews.default.svc.cluster.local",code_class="5xx"}"#;
    assert_eq!(metric_value(&metrics, series), Some(1.0), "{metrics}");
}
