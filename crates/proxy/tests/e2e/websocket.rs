//! WebSocket (HTTP/1.1 Upgrade) through the outbound listener.

use std::time::Duration;

use trellis_testing::{EchoServer, ws_connect, ws_roundtrip};

use crate::support::*;

#[tokio::test]
async fn websocket_through_outbound() {
    let echo = EchoServer::start("ws-v1").await;
    let se = service_entry(
        "chat",
        &[(9080, "http", "HTTP"), (9081, "http2", "HTTP2")],
        &[(echo.addr(), &[])],
    );
    let proxy = Proxy::start(&[("se.yaml", se)]).await;

    let replies = ws_roundtrip(proxy.outbound(), "chat:9080", &["hello", "world", "третий"]).await;
    assert_eq!(replies, ["ws-v1:hello", "ws-v1:world", "ws-v1:третий"]);
    // Two at once, on separate connections.
    let (a, b) = tokio::join!(
        ws_roundtrip(proxy.outbound(), "chat.default:9080", &["a1", "a2"]),
        ws_roundtrip(proxy.outbound(), "chat:9080", &["b1"]),
    );
    assert_eq!(
        (a, b),
        (
            vec!["ws-v1:a1".to_string(), "ws-v1:a2".into()],
            vec!["ws-v1:b1".to_string()]
        )
    );

    // An upgraded connection is still an open downstream connection.
    let active = r#"trellis_connections_active{listener="outbound"}"#;
    eventually(
        "the closed websockets to leave connections_active",
        Duration::from_secs(5),
        || async { (proxy.metric(active).await == Some(0.0)).then_some(()) },
    )
    .await;
    let (ws, resp) = ws_connect(proxy.outbound(), "chat:9080", "/ws").await;
    assert_eq!(resp.status(), 101);
    assert_eq!(
        proxy.metric(active).await,
        Some(1.0),
        "an open websocket is an active connection"
    );
    drop(ws);
    eventually(
        "the dropped websocket to leave connections_active",
        Duration::from_secs(5),
        || async { (proxy.metric(active).await == Some(0.0)).then_some(()) },
    )
    .await;

    // The upgraded bytes are counted once each connection ends.
    let series = r#"trellis_tcp_bytes_total{direction="outbound",cluster="outbound|9080||chat.default.svc.cluster.local"}"#;
    eventually(
        "tcp bytes of the websocket connections",
        Duration::from_secs(5),
        || async { proxy.metric(series).await.filter(|v| *v > 0.0) },
    )
    .await;

    // An HTTP/2 upstream cannot carry an HTTP/1.1 Upgrade: explained 502.
    let (head, body) = raw_request(
        proxy.outbound(),
        b"GET /ws HTTP/1.1\r\nHost: chat:9081\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 502, "{head}{body}");
    assert_eq!(
        head_header(&head, "x-trellis-reason"),
        Some("upgrade_unsupported"),
        "{head}"
    );
}
