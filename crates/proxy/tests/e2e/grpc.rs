//! gRPC through the outbound listener with a real grpcio client.

use trellis_testing::{EchoServer, grpc_client};

use crate::support::*;

#[tokio::test]
async fn grpc_unary_bidi_stream_and_error_status() {
    let echo = EchoServer::start("grpc-v1").await;
    let se = service_entry(
        "grpc-echo",
        &[(50051, "grpc", "GRPC")],
        &[(echo.addr(), &[])],
    );
    let proxy = Proxy::start(&[("se.yaml", se)]).await;
    let authority = "grpc-echo:50051";

    let unary = grpc_client(
        proxy.outbound(),
        authority,
        &["unary", "--message", "hi there"],
    )
    .await;
    assert_eq!(unary["code"], "OK", "{unary}");
    assert_eq!(
        unary["messages"],
        serde_json::json!(["hi there"]),
        "{unary}"
    );
    assert_eq!(
        unary["initial_metadata"]["x-upstream"], "grpc-v1",
        "{unary}"
    );
    // Trailers cross the proxy.
    assert_eq!(
        unary["trailing_metadata"]["x-upstream-trailer"], "grpc-v1",
        "{unary}"
    );

    let stream = grpc_client(proxy.outbound(), authority, &["stream", "--messages", "5"]).await;
    assert_eq!(stream["code"], "OK", "{stream}");
    assert_eq!(
        stream["messages"],
        serde_json::json!(["msg-0", "msg-1", "msg-2", "msg-3", "msg-4"]),
        "{stream}"
    );
    assert_eq!(
        stream["interleaved"], true,
        "each reply must come back before the next message is sent: {stream}"
    );
    assert_eq!(
        stream["trailing_metadata"]["x-upstream-trailer"], "grpc-v1",
        "{stream}"
    );

    let fail = grpc_client(proxy.outbound(), authority, &["fail"]).await;
    assert_eq!(fail["code"], "INTERNAL", "{fail}");
    assert_eq!(fail["details"], "boom", "{fail}");
    assert_eq!(fail["messages"], serde_json::json!([]), "{fail}");

    assert_eq!(echo.requests(), 3);
    let metrics = proxy.metrics().await;
    let series = r#"trellis_requests_total{direction="outbound",route="default|grpc-echo.default.svc.cluster.local:50051",cluster="outbound|50051||grpc-echo.default.svc.cluster.local",code_class="2xx"}"#;
    assert_eq!(metric_value(&metrics, series), Some(3.0), "{metrics}");
}
