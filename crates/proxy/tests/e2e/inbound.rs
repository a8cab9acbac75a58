//! The inbound listener: HTTP to the app in the caller's protocol,
//! server-first protocols not stalled, other bytes passed through opaquely.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_testing::{
    BannerServer, EchoServer, TcpEchoServer, h2c_client_to, http1_client_to, ws_roundtrip,
};

use crate::support::*;

const DETECT: Duration = Duration::from_millis(100);

async fn proxy_for_app(app: std::net::SocketAddr) -> Proxy {
    Proxy::start_with(
        &[],
        &[
            "--app",
            &app.to_string(),
            "--inbound-detect-timeout",
            "100ms",
        ],
    )
    .await
}

#[tokio::test]
async fn inbound_http1_and_h2c_reach_the_app() {
    let app = EchoServer::start("app").await;
    let proxy = proxy_for_app(app.addr()).await;
    let h1 = http1_client_to(proxy.inbound());
    let h2 = h2c_client_to(proxy.inbound());
    for (client, version) in [(&h1, "HTTP/1.1"), (&h2, "HTTP/2.0")] {
        let r = send_with(client, get("http://app.local:8080/in?q=1"), &proxy.process).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        assert_eq!(j["version"], version, "{j}");
        assert_eq!(j["path"], "/in", "{j}");
        assert_eq!(j["query"], "q=1", "{j}");
        assert_eq!(j["authority"], "app.local:8080", "{j}");
        assert_eq!(r.upstream(), "app");
    }
    // WebSocket upgrades reach the app too.
    let replies = ws_roundtrip(proxy.inbound(), "app.local:8080", &["in-1", "in-2"]).await;
    assert_eq!(replies, ["app:in-1", "app:in-2"]);
    assert_eq!(app.requests(), 3);
    // Two 200s and one 101.
    let metrics = proxy.metrics().await;
    for (class, n) in [("2xx", 2.0), ("1xx", 1.0)] {
        let series = format!(
            r#"trellis_requests_total{{direction="inbound",route="inbound",cluster="inbound|{}|app",code_class="{class}"}}"#,
            app.addr().port()
        );
        assert_eq!(
            metric_value(&metrics, &series),
            Some(n),
            "{series}\n{metrics}"
        );
    }
}

#[tokio::test]
async fn inbound_server_first_protocol_is_not_stalled() {
    let banner = BannerServer::start(b"220 banner.test ESMTP ready\r\n").await;
    let proxy = proxy_for_app(banner.addr()).await;

    let started = Instant::now();
    let mut s = TcpStream::connect(proxy.inbound()).await.expect("connect");
    let want = b"220 banner.test ESMTP ready\r\n";
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("the banner never came: the inbound listener stalled a server-first protocol")
        .expect("read banner");
    let waited = started.elapsed();
    assert_eq!(got, want);
    assert!(
        waited < DETECT + Duration::from_millis(900),
        "banner took {waited:?}; the detect timeout is {DETECT:?}"
    );

    // Then it is a plain byte stream both ways.
    s.write_all(b"EHLO client\r\n").await.expect("write");
    let mut echo = vec![0u8; 13];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .expect("no echo within 5 s")
        .expect("read echo");
    assert_eq!(echo, b"EHLO client\r\n");
    s.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the app's close did not come back")
        .expect("read to end");
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(banner.connections(), 1);
}

#[tokio::test]
async fn inbound_non_http_client_first_bytes_pass_through() {
    let app = TcpEchoServer::start().await;
    let proxy = proxy_for_app(app.addr()).await;

    // The start of a TLS ClientHello: not HTTP, sent before anything is read.
    let hello: Vec<u8> = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ]
    .into_iter()
    .chain((0..200u16).map(|i| (i % 256) as u8))
    .collect();
    let mut s = TcpStream::connect(proxy.inbound()).await.expect("connect");
    s.write_all(&hello).await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("no reply within 5 s")
        .expect("read");
    let want = format!(
        "received {} bytes: {}",
        hello.len(),
        String::from_utf8_lossy(&hello[..64])
    );
    assert_eq!(String::from_utf8_lossy(&out), want);
    assert_eq!(app.connections(), 1);
    let series = r#"trellis_tcp_bytes_total{direction="inbound",cluster="app"}"#;
    let bytes = (hello.len() + want.len()) as f64;
    eventually("inbound tcp byte count", Duration::from_secs(5), || async {
        proxy.metric(series).await.filter(|v| *v == bytes)
    })
    .await;
}

#[tokio::test]
async fn inbound_without_a_reachable_app_is_explained() {
    // No --app at all.
    let proxy = Proxy::start(&[]).await;
    let client = http1_client_to(proxy.inbound());
    send_with(&client, get("http://app.local/x"), &proxy.process)
        .await
        .assert_local(503, "no_app");
    // An --app nothing listens on.
    let closed = ClosedPort::new();
    let proxy = proxy_for_app(closed.addr()).await;
    let client = h2c_client_to(proxy.inbound());
    send_with(&client, get("http://app.local/x"), &proxy.process)
        .await
        .assert_local(503, "upstream_connect_failure");
    let series =
        r#"trellis_local_replies_total{direction="inbound",reason="upstream_connect_failure"}"#;
    assert_eq!(proxy.metric(series).await, Some(1.0));
}
