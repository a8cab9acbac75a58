//! The echo server against a real gRPC client (Python grpcio).

use serde_json::json;
use trellis_testing::{EchoServer, grpc_client};

#[tokio::test]
async fn grpc_unary_echoes_the_message_with_trailers() {
    let server = EchoServer::start("grpc-a").await;
    let out = grpc_client(
        server.addr(),
        "echo.grpc.test",
        &["unary", "--message", "ping-1"],
    )
    .await;
    assert_eq!(out["code"], "OK", "{out}");
    assert_eq!(out["messages"], json!(["ping-1"]));
    assert_eq!(out["initial_metadata"]["x-upstream"], "grpc-a");
    assert_eq!(out["trailing_metadata"]["x-upstream-trailer"], "grpc-a");
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn grpc_stream_echoes_each_message_as_it_arrives() {
    let server = EchoServer::start("grpc-b").await;
    let out = grpc_client(
        server.addr(),
        "echo.grpc.test",
        &["stream", "--messages", "5"],
    )
    .await;
    assert_eq!(out["code"], "OK", "{out}");
    assert_eq!(
        out["messages"],
        json!(["msg-0", "msg-1", "msg-2", "msg-3", "msg-4"])
    );
    assert_eq!(
        out["interleaved"], true,
        "replies did not come back message by message: {out}"
    );
    assert_eq!(out["trailing_metadata"]["x-upstream-trailer"], "grpc-b");
}

#[tokio::test]
async fn grpc_fail_is_a_trailers_only_internal_error() {
    let server = EchoServer::start("grpc-c").await;
    let out = grpc_client(server.addr(), "echo.grpc.test", &["fail"]).await;
    assert_eq!(out["code"], "INTERNAL", "{out}");
    assert_eq!(out["details"], "boom");
    assert_eq!(out["messages"], json!([]));
}

#[tokio::test]
async fn grpc_unknown_method_is_unimplemented() {
    // Not reachable through the script's modes: use framing helpers over h2c.
    use bytes::Bytes;
    use http::Request;
    use http_body_util::Full;
    use trellis_testing::{decode_messages, encode_message, h2c_client_to, send};

    let server = EchoServer::start("grpc-d").await;
    let client = h2c_client_to(server.addr());
    let req = Request::post("http://echo.grpc.test/trellis.test.Echo/Nope")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(encode_message(b"x")))
        .unwrap();
    let (status, headers, body) = send(&client, req).await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "12");
    assert_eq!(
        headers["grpc-message"],
        "unknown method /trellis.test.Echo/Nope"
    );
    assert!(body.is_empty());

    let req = Request::post("http://echo.grpc.test/trellis.test.Echo/Unary")
        .header("content-type", "application/grpc")
        .body(Full::new(encode_message(b"raw bytes")))
        .unwrap();
    let (status, headers, body) = send(&client, req).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(
        decode_messages(&body).unwrap(),
        vec![Bytes::from_static(b"raw bytes")]
    );
}
