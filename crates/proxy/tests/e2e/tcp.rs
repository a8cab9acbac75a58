//! Opaque TCP through `CONNECT host:port` tunnels, with half-close carried
//! both ways.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_testing::{EchoServer, TcpEchoServer};

use crate::support::*;

/// `CONNECT target` on a new connection; returns it once the proxy said 200.
pub async fn open_tunnel(proxy: std::net::SocketAddr, target: &str) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .expect("write CONNECT");
    let (head, early) = read_head(&mut s).await;
    assert_eq!(status_of(&head), 200, "CONNECT {target}: {head}");
    assert!(
        early.is_empty(),
        "bytes before the client sent any: {early:?}"
    );
    s
}

/// Send `payload` on an open tunnel, half-close, and read everything that
/// comes back until the upstream closes.
pub async fn half_close_exchange(mut s: TcpStream, payload: &[u8]) -> String {
    s.write_all(payload).await.expect("write payload");
    // Half-close: the upstream answers only after it sees our FIN.
    s.shutdown().await.expect("shutdown write half");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the upstream's reply and close did not come back within 10 s")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

async fn tunnel(proxy: std::net::SocketAddr, target: &str, payload: &[u8]) -> String {
    half_close_exchange(open_tunnel(proxy, target).await, payload).await
}

#[tokio::test]
async fn connect_tunnel_carries_half_close_both_ways() {
    let tcp = TcpEchoServer::start().await;
    let web = EchoServer::start("web-v1").await;
    let down = ClosedPort::new();
    let proxy = Proxy::start(&[
        (
            "db.yaml",
            service_entry("db", &[(7000, "tcp", "TCP")], &[(tcp.addr(), &[])]),
        ),
        ("web.yaml", http_service("web", &[web.addr()])),
        (
            "db-down.yaml",
            service_entry("db-down", &[(7000, "tcp", "TCP")], &[(down.addr(), &[])]),
        ),
    ])
    .await;

    // While the tunnel is open its connection counts as active.
    let open = open_tunnel(proxy.outbound(), "db:7000").await;
    let active = r#"trellis_connections_active{listener="outbound"}"#;
    assert_eq!(
        proxy.metric(active).await,
        Some(1.0),
        "an open tunnel is an active connection"
    );
    let reply = half_close_exchange(open, b"hello through the tunnel").await;
    assert_eq!(reply, "received 24 bytes: hello through the tunnel");
    eventually(
        "the closed tunnel to leave connections_active",
        Duration::from_secs(5),
        || async { (proxy.metric(active).await == Some(0.0)).then_some(()) },
    )
    .await;

    // A larger payload, and the FQDN; bytes are counted exactly.
    let big: Vec<u8> = b"0123456789abcdef"
        .iter()
        .copied()
        .cycle()
        .take(300_000)
        .collect();
    let reply = tunnel(proxy.outbound(), "db.default.svc.cluster.local:7000", &big).await;
    assert_eq!(
        reply,
        format!(
            "received 300000 bytes: {}",
            String::from_utf8_lossy(&big[..64])
        )
    );
    assert_eq!(tcp.connections(), 2);
    let series = r#"trellis_tcp_bytes_total{direction="outbound",cluster="outbound|7000||db.default.svc.cluster.local"}"#;
    let want =
        (24 + "received 24 bytes: hello through the tunnel".len() + 300_000 + reply.len()) as f64;
    eventually("tcp byte count", Duration::from_secs(5), || async {
        proxy.metric(series).await.filter(|v| *v == want)
    })
    .await;

    // CONNECT to an HTTP port: explained 400, the connection is not tunnelled.
    let (head, body) = raw_request(
        proxy.outbound(),
        b"CONNECT web:9080 HTTP/1.1\r\nHost: web:9080\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 400, "{head}{body}");
    assert_eq!(
        head_header(&head, "x-trellis-reason"),
        Some("connect_to_http_port"),
        "{head}"
    );
    assert!(
        body.contains("port 9080 of web.default.svc.cluster.local is HTTP"),
        "{body}"
    );
    assert_eq!(web.requests(), 0);

    // A tunnel to a host that is not known, and to one whose endpoint is down.
    for (target, status, reason) in [
        ("nope.example:7000", 404, "route_not_found"),
        ("db-down:7000", 503, "upstream_connect_failure"),
    ] {
        let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        let (head, body) = raw_request(proxy.outbound(), req.as_bytes()).await;
        assert_eq!(status_of(&head), status, "CONNECT {target}: {head}{body}");
        assert_eq!(
            head_header(&head, "x-trellis-reason"),
            Some(reason),
            "{head}"
        );
    }

    // The reverse: a plain HTTP request to the TCP port.
    let r = proxy.get("http://db:7000/").await;
    r.assert_local(400, "not_http_port");
    assert_eq!(tcp.connections(), 2);
}
