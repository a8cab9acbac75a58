use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use trellis_testing::{EchoServer, ws_connect, ws_roundtrip};

#[tokio::test]
async fn websocket_echo_prefixes_text_with_the_name() {
    let server = EchoServer::start("ws-up").await;
    let replies = ws_roundtrip(server.addr(), "chat.test", &["hello", "second", ""]).await;
    assert_eq!(replies, ["ws-up:hello", "ws-up:second", "ws-up:"]);
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn websocket_echo_returns_binary_unchanged() {
    let server = EchoServer::start("ws-bin").await;
    let (mut ws, resp) = ws_connect(server.addr(), "chat.test", "/ws").await;
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["x-upstream"], "ws-bin");
    let payload: Vec<u8> = (0..=255u8).collect();
    ws.send(Message::Binary(payload.clone().into()))
        .await
        .unwrap();
    match ws.next().await {
        Some(Ok(Message::Binary(got))) => assert_eq!(got.as_ref(), payload.as_slice()),
        other => panic!("expected a binary echo, got {other:?}"),
    }
    ws.close(None).await.unwrap();
}
