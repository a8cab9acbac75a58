//! WebSocket: the echo server's `/ws` endpoint and a client for tests.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::echo::{RespBody, State, full, text, upstream_header};

/// A client WebSocket over a plain TCP connection.
pub type WsStream = WebSocketStream<TcpStream>;

/// The handshake response a WebSocket client got (status, headers).
pub type WsResponse = tokio_tungstenite::tungstenite::handshake::client::Response;

const TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.uri().path() == "/ws"
        && req
            .headers()
            .get(UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Answers the upgrade with 101 and echoes messages on the upgraded
/// connection: text as `<name>:<text>`, binary unchanged.
pub(crate) fn upgrade(state: &State, mut req: Request<Incoming>) -> Response<RespBody> {
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) else {
        return text(state, StatusCode::BAD_REQUEST, "missing sec-websocket-key");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let name = state.name.clone();
    state.tasks.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                Message::Text(t) => Message::text(format!("{name}:{}", t.as_str())),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break, // tungstenite answers the close itself
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
        let _ = ws.close(None).await;
    });
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    h.insert("x-upstream", upstream_header(&state.name));
    resp
}

/// Opens a TCP connection to `addr` (an echo server or a proxy listener) and
/// performs the WebSocket handshake for `ws://{host_header}{path}`, so the
/// request is in origin form with `Host: host_header`.
///
/// # Panics
/// If the connection or the handshake fails, or takes over 10 s.
pub async fn ws_connect(addr: SocketAddr, host_header: &str, path: &str) -> (WsStream, WsResponse) {
    let fut = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let req = format!("ws://{host_header}{path}")
            .into_client_request()
            .map_err(|e| format!("bad request ws://{host_header}{path}: {e}"))?;
        tokio_tungstenite::client_async(req, stream)
            .await
            .map_err(|e| format!("websocket handshake via {addr} (Host {host_header}): {e}"))
    };
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(msg)) => panic!("{msg}"),
        Err(_) => {
            panic!("websocket handshake via {addr} (Host {host_header}) took over {TIMEOUT:?}")
        }
    }
}

/// Connects like [`ws_connect`] to `/ws`, sends each message as text and
/// waits for its reply before sending the next, then closes. Returns the
/// replies (binary replies decoded as lossy UTF-8).
///
/// # Panics
/// On any failure, on a missing reply, or on a 10 s wait.
pub async fn ws_roundtrip(addr: SocketAddr, host_header: &str, messages: &[&str]) -> Vec<String> {
    let (mut ws, _resp) = ws_connect(addr, host_header, "/ws").await;
    let mut replies = Vec::with_capacity(messages.len());
    for msg in messages {
        ws.send(Message::text(*msg))
            .await
            .unwrap_or_else(|e| panic!("websocket send {msg:?}: {e}"));
        let reply = loop {
            let next = tokio::time::timeout(TIMEOUT, ws.next())
                .await
                .unwrap_or_else(|_| panic!("no websocket reply to {msg:?} within {TIMEOUT:?}"));
            match next {
                Some(Ok(Message::Text(t))) => break t.as_str().to_owned(),
                Some(Ok(Message::Binary(b))) => break String::from_utf8_lossy(&b).into_owned(),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(frame))) => {
                    panic!("websocket closed ({frame:?}) before replying to {msg:?}")
                }
                Some(Err(e)) => panic!("websocket error waiting for reply to {msg:?}: {e}"),
                None => panic!("websocket ended before replying to {msg:?}"),
            }
        };
        replies.push(reply);
    }
    let _ = tokio::time::timeout(TIMEOUT, ws.close(None)).await;
    // Drain until the peer's close arrives (or the stream ends).
    let _ = tokio::time::timeout(TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    replies
}
