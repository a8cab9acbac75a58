use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use trellis_testing::{
    EchoServer, h2c_client, h2c_client_to, http1_client, http1_client_to, send, try_send,
};

fn get(uri: &str) -> http::request::Builder {
    Request::get(uri)
}

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

fn json_of(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

#[tokio::test]
async fn http1_request_is_described_as_json() {
    let server = EchoServer::start("alpha").await;
    let uri = format!("http://{}/some/path?x=1&y=two", server.addr());
    let req = get(&uri)
        .header("x-one", "1")
        .header("x-multi", "a")
        .header("X-Multi", "b")
        .body(empty())
        .unwrap();
    let (status, headers, body) = send(&http1_client(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-upstream"], "alpha");
    assert_eq!(headers["content-type"], "application/json");
    let v = json_of(&body);
    assert_eq!(v["upstream"], "alpha");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/some/path");
    assert_eq!(v["query"], "x=1&y=two");
    assert_eq!(v["authority"], server.addr().to_string());
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["headers"]["x-one"], "1");
    assert_eq!(v["headers"]["x-multi"], json!(["a", "b"]));
    assert_eq!(v["headers"]["host"], server.addr().to_string());
    assert_eq!(v["body_len"], 0);
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn http1_fixed_client_sends_host_of_the_uri() {
    let server = EchoServer::start("beta").await;
    let client = http1_client_to(server.addr());
    let req = Request::post("http://svc.test:8080/p")
        .body(Full::new(Bytes::from_static(b"0123456789")))
        .unwrap();
    let (status, _, body) = send(&client, req).await;
    assert_eq!(status, StatusCode::OK);
    let v = json_of(&body);
    assert_eq!(v["authority"], "svc.test:8080");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["query"], Value::Null);
    assert_eq!(v["body_len"], 10);
}

#[tokio::test]
async fn h2c_request_is_described_as_json() {
    let server = EchoServer::start("gamma").await;
    // Dialling the server's own address.
    let req = Request::put(format!("http://{}/h2?q", server.addr()))
        .header("x-one", "1")
        .body(Full::new(Bytes::from_static(b"hello world")))
        .unwrap();
    let (status, headers, body) = send(&h2c_client(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-upstream"], "gamma");
    let v = json_of(&body);
    assert_eq!(v["version"], "HTTP/2.0");
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/h2");
    assert_eq!(v["query"], "q");
    assert_eq!(v["authority"], server.addr().to_string());
    assert_eq!(v["headers"]["x-one"], "1");
    assert_eq!(v["body_len"], 11);

    // Any :authority, through a client pinned to the server.
    let client = h2c_client_to(server.addr());
    let req = get("http://reviews.default.svc/x").body(empty()).unwrap();
    let (_, _, body) = send(&client, req).await;
    let v = json_of(&body);
    assert_eq!(v["authority"], "reviews.default.svc");
    assert_eq!(v["version"], "HTTP/2.0");
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn echo_headers_change_the_response() {
    let server = EchoServer::start("delta").await;
    for client in [http1_client_to(server.addr()), h2c_client_to(server.addr())] {
        let req = get("http://svc/")
            .header("x-echo-status", "503")
            .header("x-echo-response-header", "retry-after=7")
            .header("x-echo-response-header", "x-extra=yes")
            .body(empty())
            .unwrap();
        let (status, headers, body) = send(&client, req).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["retry-after"], "7");
        assert_eq!(headers["x-extra"], "yes");
        assert_eq!(headers["x-upstream"], "delta");
        assert_eq!(json_of(&body)["upstream"], "delta");

        let req = get("http://svc/")
            .header("x-echo-body-bytes", "1000")
            .body(empty())
            .unwrap();
        let (status, headers, body) = send(&client, req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(body.len(), 1000);
        assert!(body.iter().all(|&b| b == b'a'));

        let started = Instant::now();
        let req = get("http://svc/")
            .header("x-echo-delay-ms", "300")
            .body(empty())
            .unwrap();
        let (status, _, _) = send(&client, req).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );

        let req = get("http://svc/")
            .header("x-echo-delay-ms", "soon")
            .body(empty())
            .unwrap();
        let (status, _, body) = send(&client, req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body, "x-echo-delay-ms: expected a number, got \"soon\"");
    }
    assert_eq!(server.requests(), 8);
}

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn echo_body_returns_one_mebibyte_verbatim() {
    let server = EchoServer::start("eps").await;
    let data = pattern(1 << 20);
    for client in [http1_client_to(server.addr()), h2c_client_to(server.addr())] {
        let req = Request::post("http://svc/echo-body")
            .header("content-type", "application/x-test")
            .body(Full::new(data.clone()))
            .unwrap();
        let (status, headers, body) = send(&client, req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-upstream"], "eps");
        assert_eq!(headers["content-type"], "application/x-test");
        assert_eq!(body.len(), data.len());
        assert!(body == data, "echoed body differs");
    }
}

/// Each chunk comes back before the next is sent: the echo truly streams.
#[tokio::test]
async fn echo_body_streams_chunk_by_chunk_over_h2c() {
    let server = EchoServer::start("zeta").await;
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    let body = StreamBody::new(Box::pin(futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
    )));
    let req = Request::builder()
        .method(Method::POST)
        .uri("http://svc/echo-body")
        .body(body)
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    for i in 0..3 {
        let chunk = Bytes::from(format!("chunk-{i};"));
        tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
        let mut got = Vec::new();
        while got.len() < chunk.len() {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("echo of a chunk did not come back before the request ended")
                .expect("body ended early")
                .unwrap();
            got.extend_from_slice(frame.data_ref().unwrap());
        }
        assert_eq!(got, chunk);
    }
    drop(tx);
    // The end of the request ends the response, with nothing more in it.
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test]
async fn dropped_server_stops_listening_and_serving() {
    let server = EchoServer::start("eta").await;
    let addr = server.addr();
    let client = http1_client_to(addr);
    let (status, _, _) = send(&client, get("http://svc/").body(empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    server.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // The pooled keep-alive connection was closed too.
    assert!(
        try_send(&client, get("http://svc/").body(empty()).unwrap())
            .await
            .is_err()
    );

    let server = EchoServer::start("theta").await;
    let addr = server.addr();
    drop(server);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
