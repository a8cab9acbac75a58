//! ChaosServer: every misbehaviour as a client sees it, over HTTP/1.1 and
//! h2c, plus counters, the admin API and the `trellis-chaos` program.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_testing::{
    Behavior, ChaosServer, FixedClient, decode_messages, encode_message, grpc_client,
    h2c_client_to, http1_client_to, send, try_send,
};

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

fn get(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::get(format!("http://chaos.test{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(empty()).unwrap()
}

/// An HTTP/1.1 and an h2c client, both pinned to the server.
fn clients(server: &ChaosServer) -> [(&'static str, FixedClient); 2] {
    [
        ("h1", http1_client_to(server.addr())),
        ("h2", h2c_client_to(server.addr())),
    ]
}

fn grpc_call(path: &str, messages: &[&[u8]], headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut body = Vec::new();
    for m in messages {
        body.extend_from_slice(&encode_message(m));
    }
    let mut req = Request::post(format!("http://grpc.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(Bytes::from(body))).unwrap()
}

/// Sends a request and returns status, headers, body and trailers.
async fn send_with_trailers(
    client: &FixedClient,
    req: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Bytes, Option<HeaderMap>) {
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (parts.status, parts.headers, collected.to_bytes(), trailers)
}

/// Writes `request` on a raw connection and reads one response head and its
/// `content-length` body.
async fn raw_exchange(conn: &mut TcpStream, request: &str) -> String {
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.parse().unwrap());
            if body.len() >= len {
                return text;
            }
        }
    }
}

/// True if the server closed `conn` (EOF or reset) within `within`.
async fn closed_by_server(conn: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(within, conn.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => panic!("unexpected bytes from the server"),
        Err(_) => false,
    }
}

const GET: &str = "GET /idle HTTP/1.1\r\nhost: chaos.test\r\n\r\n";

#[tokio::test]
async fn normal_answer_and_counters() {
    let server = ChaosServer::start("calm").await;
    let clients = clients(&server);
    for (proto, client) in &clients {
        let (status, headers, body) = send(client, get("/a", &[("x-custom", proto)])).await;
        assert_eq!(status, StatusCode::OK, "{proto}");
        assert_eq!(body, "ok calm");
        assert_eq!(headers["x-upstream"], "calm");
        assert!(headers.get("x-chaos-injected").is_none());
    }
    let (_, headers, _) = send(&clients[0].1, get("/b", &[("x-chaos-key", "k")])).await;
    assert_eq!(headers["x-chaos-attempt"], "1");
    assert_eq!(server.attempts(), 3);
    assert_eq!(server.attempts_for("/a"), 2);
    assert_eq!(server.attempts_for("k"), 1);
    assert_eq!(server.attempts_for("/b"), 0);
    assert_eq!(server.connections(), 2);
    let seen = server.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].headers["x-custom"], "h1");
    assert_eq!(seen[1].headers["x-custom"], "h2");
    assert_eq!(seen[1].version, http::Version::HTTP_2);
    assert_eq!(seen[2].key, "k");

    server.reset_counts();
    assert_eq!(server.stats(), Default::default());
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn fail_with_status_per_request_and_globally() {
    let server = ChaosServer::start("failing").await;
    for (proto, client) in clients(&server) {
        let (status, headers, body) = send(&client, get("/", &[("x-chaos-fail", "100")])).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{proto}");
        assert_eq!(headers["x-chaos-injected"], "fail");
        assert_eq!(body, "chaos failing: injected 503");
        let h = [("x-chaos-fail", "100"), ("x-chaos-status", "429")];
        let (status, _, _) = send(&client, get("/", &h)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{proto}");
        // A status alone does not fail.
        let (status, _, _) = send(&client, get("/", &[("x-chaos-status", "429")])).await;
        assert_eq!(status, StatusCode::OK, "{proto}");
        // Bad values are explained.
        let (status, _, body) = send(&client, get("/", &[("x-chaos-fail", "150")])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{proto}");
        assert!(
            String::from_utf8_lossy(&body).contains("fail_percent"),
            "{body:?}"
        );
    }
    server.set(Behavior {
        fail_percent: 100.0,
        status: 502,
        ..Behavior::default()
    });
    let (status, _, _) = send(&clients(&server)[1].1, get("/", &[])).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    // Headers override the global behavior.
    let (status, _, _) = send(&clients(&server)[0].1, get("/", &[("x-chaos-fail", "0")])).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn fail_percentage_is_within_five_points() {
    let server = ChaosServer::start("dice").await;
    let client = http1_client_to(server.addr());
    let mut failed = 0;
    for _ in 0..1000 {
        let (status, _, _) = send(&client, get("/", &[("x-chaos-fail", "30")])).await;
        match status {
            StatusCode::SERVICE_UNAVAILABLE => failed += 1,
            StatusCode::OK => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        (250..=350).contains(&failed),
        "{failed} of 1000 failed, want 30%"
    );
    assert_eq!(server.attempts(), 1000);
    // Failures keep HTTP/1.1 connections reusable.
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn fail_first_then_succeed_per_key() {
    let server = ChaosServer::start("flaky").await;
    for (proto, client) in clients(&server) {
        let key = format!("key-{proto}");
        let h = [("x-chaos-fail-first", "2"), ("x-chaos-key", key.as_str())];
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(send(&client, get("/any", &h)).await.0.as_u16());
        }
        assert_eq!(statuses, [503, 503, 200, 200], "{proto}");
        assert_eq!(server.attempts_for(&key), 4);
    }
    // The key defaults to the path; fail-first with a reset resets instead.
    let client = &clients(&server)[1].1;
    let h = [("x-chaos-fail-first", "1"), ("x-chaos-reset", "100")];
    assert!(try_send(client, get("/p", &h)).await.is_err());
    assert_eq!(send(client, get("/p", &h)).await.0, StatusCode::OK);
    assert_eq!(server.attempts_for("/p"), 2);
    // reset_counts starts fail-first over.
    server.reset_counts();
    let h = [("x-chaos-fail-first", "1")];
    assert_eq!(send(client, get("/p", &h)).await.0, 503);
}

#[tokio::test]
async fn reset_is_an_error_h2_keeps_the_connection() {
    let server = ChaosServer::start("resetter").await;
    for (proto, client) in clients(&server) {
        let err = try_send(&client, get("/", &[("x-chaos-reset", "100")]))
            .await
            .unwrap_err();
        let msg = format!("{err:?}");
        eprintln!("{proto} reset seen as: {msg}");
        let (status, _, _) = send(&client, get("/", &[])).await;
        assert_eq!(status, StatusCode::OK, "{proto}");
    }
    // h1: the reset closed the connection, the next request needed a new
    // one; h2: RST_STREAM only, the connection carried on.
    assert_eq!(server.connections(), 3);
    assert_eq!(server.attempts(), 4);

    // On a raw HTTP/1.1 connection: no response byte, just the close.
    let mut conn = TcpStream::connect(server.addr()).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-chaos-reset: 100\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_by_server(&mut conn, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn close_after_headers_is_a_body_error() {
    let server = ChaosServer::start("truncator").await;
    for (proto, client) in clients(&server) {
        let resp = client
            .request(get("/", &[("x-chaos-close-after-headers", "1")]))
            .await
            .unwrap_or_else(|e| panic!("{proto}: headers expected: {e:?}"));
        assert_eq!(resp.status(), StatusCode::OK, "{proto}");
        assert_eq!(resp.headers()["content-length"], "1000");
        assert_eq!(resp.headers()["x-chaos-injected"], "close-after-headers");
        let err = resp.into_body().collect().await.unwrap_err();
        eprintln!("{proto} truncated body seen as: {err:?}");
    }
    assert_eq!(server.attempts(), 2);
}

#[tokio::test]
async fn hang_never_answers_until_the_client_gives_up() {
    let server = ChaosServer::start("sloth").await;
    for (proto, client) in clients(&server) {
        let req = get("/", &[("x-chaos-hang", "1")]);
        let result = tokio::time::timeout(Duration::from_millis(300), client.request(req)).await;
        assert!(result.is_err(), "{proto}: answered");
        // The server still serves others (on h2, the same connection).
        let (status, _, _) = send(&client, get("/", &[])).await;
        assert_eq!(status, StatusCode::OK, "{proto}");
    }
    assert_eq!(server.attempts(), 4);
}

#[tokio::test]
async fn delay_comes_before_the_answer_and_grpc_headers() {
    let server = ChaosServer::start("slow").await;
    for (proto, client) in clients(&server) {
        let started = Instant::now();
        let (status, _, _) = send(&client, get("/", &[("x-chaos-delay", "150")])).await;
        assert_eq!(status, StatusCode::OK);
        assert!(started.elapsed() >= Duration::from_millis(150), "{proto}");
    }
    let client = h2c_client_to(server.addr());
    let started = Instant::now();
    let resp = client
        .request(grpc_call("/svc/M", &[b"m"], &[("x-chaos-delay", "150")]))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(resp.headers()["content-type"], "application/grpc");
}

#[tokio::test]
async fn grpc_echo_streaming_and_trailers_only_failure() {
    let server = ChaosServer::start("rpc").await;
    let client = h2c_client_to(server.addr());
    let (status, headers, body, trailers) =
        send_with_trailers(&client, grpc_call("/pkg.Svc/Unary", &[b"hello"], &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-upstream"], "rpc");
    assert_eq!(
        decode_messages(&body).unwrap(),
        [Bytes::from_static(b"hello")]
    );
    assert_eq!(trailers.unwrap()["grpc-status"], "0");

    // Server streaming: two messages in, each three times out.
    let req = grpc_call(
        "/pkg.Svc/Watch",
        &[b"a", b"b"],
        &[("x-chaos-grpc-repeat", "3")],
    );
    let (_, _, body, trailers) = send_with_trailers(&client, req).await;
    let got: Vec<Bytes> = decode_messages(&body).unwrap();
    assert_eq!(got, ["a", "a", "a", "b", "b", "b"].map(Bytes::from));
    assert_eq!(trailers.unwrap()["grpc-status"], "0");

    let h = [("x-chaos-fail", "100"), ("x-chaos-grpc-status", "14")];
    let (status, headers, body, trailers) =
        send_with_trailers(&client, grpc_call("/pkg.Svc/Unary", &[b"x"], &h)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "14");
    assert!(body.is_empty());
    assert!(trailers.is_none());

    // Without a gRPC status, a gRPC call fails with the HTTP status.
    let h = [("x-chaos-fail", "100")];
    let (status, _, _, _) =
        send_with_trailers(&client, grpc_call("/pkg.Svc/Unary", &[b"x"], &h)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // What arrived is recorded, e.g. a propagated deadline.
    let h = [("grpc-timeout", "250m")];
    send_with_trailers(&client, grpc_call("/pkg.Svc/Unary", &[b"x"], &h)).await;
    let last = server.requests().pop().unwrap();
    assert_eq!(last.headers["grpc-timeout"], "250m");
    assert_eq!(last.uri.path(), "/pkg.Svc/Unary");
}

#[tokio::test]
async fn grpcio_sees_the_injected_status() {
    let server = ChaosServer::start("rpc-py").await;
    let ok = grpc_client(server.addr(), "chaos.test", &["unary", "--message", "hi"]).await;
    assert_eq!(ok["code"], "OK", "{ok}");
    assert_eq!(ok["messages"], json!(["hi"]));
    let args = [
        "unary",
        "--metadata",
        "x-chaos-fail=100",
        "--metadata",
        "x-chaos-grpc-status=14",
    ];
    let out = grpc_client(server.addr(), "chaos.test", &args).await;
    assert_eq!(out["code"], "UNAVAILABLE", "{out}");
    assert_eq!(server.attempts(), 2);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_silently() {
    let server = ChaosServer::start("closer").await;
    server.set(Behavior {
        idle_close: Some((Duration::from_millis(150), Duration::from_millis(200))),
        ..Behavior::default()
    });
    // Busy connection: a request every 30 ms keeps it open well past max.
    let mut busy = TcpStream::connect(server.addr()).await.unwrap();
    for _ in 0..10 {
        let resp = raw_exchange(&mut busy, GET).await;
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
        assert!(!resp.to_lowercase().contains("connection: close"), "{resp}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Then idle past max: closed with no response and no warning.
    assert!(closed_by_server(&mut busy, Duration::from_secs(2)).await);
    // A connection that never sends a request is idle too.
    let mut silent = TcpStream::connect(server.addr()).await.unwrap();
    let started = Instant::now();
    assert!(closed_by_server(&mut silent, Duration::from_secs(2)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(140),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.idle_closes(), 2);

    // h2 connections are not subject to it.
    let h2 = h2c_client_to(server.addr());
    send(&h2, get("/", &[])).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    send(&h2, get("/", &[])).await;
    assert_eq!(server.idle_closes(), 2);

    // Switched off: an idle connection stays.
    server.set(Behavior::default());
    let mut kept = TcpStream::connect(server.addr()).await.unwrap();
    raw_exchange(&mut kept, GET).await;
    assert!(!closed_by_server(&mut kept, Duration::from_millis(250)).await);
}

#[tokio::test]
async fn admin_api_over_http() {
    let server = ChaosServer::start("steered").await;
    let client = http1_client_to(server.addr());
    let post = |path: &str, body: &'static str| {
        Request::post(format!("http://chaos.test{path}"))
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let json_of = |body: &Bytes| -> Value { serde_json::from_slice(body).unwrap() };

    let (status, _, body) = send(&client, get("/_chaos", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json_of(&body),
        serde_json::to_value(Behavior::default()).unwrap()
    );

    let req = post(
        "/_chaos",
        r#"{"fail_percent": 100, "status": 504, "idle_close_ms": [5000, 6000]}"#,
    );
    let (status, _, body) = send(&client, req).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(json_of(&body)["status"], 504);
    assert_eq!(server.behavior().status, 504);
    assert_eq!(
        server.behavior().idle_close,
        Some((Duration::from_secs(5), Duration::from_secs(6)))
    );
    // Admin requests never misbehave and are not counted.
    for path in ["/x", "/x", "/y"] {
        assert_eq!(
            send(&client, get(path, &[])).await.0,
            StatusCode::GATEWAY_TIMEOUT
        );
    }
    let (_, _, body) = send(&client, get("/_chaos/stats", &[])).await;
    assert_eq!(
        json_of(&body),
        json!({"attempts": 3, "connections": 1, "idle_closes": 0, "keys": {"/x": 2, "/y": 1}})
    );
    let (_, _, body) = send(&client, get("/_chaos/requests", &[("x-seen", "no")])).await;
    let requests = json_of(&body);
    assert_eq!(requests.as_array().unwrap().len(), 3);
    assert_eq!(requests[2]["uri"], "/y");
    assert_eq!(requests[2]["key"], "/y");
    assert_eq!(requests[2]["headers"]["host"], "chaos.test");

    let (status, _, body) = send(&client, post("/_chaos/reset", "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&body)["attempts"], 0);
    assert_eq!(server.attempts(), 0);

    for bad in [r#"{"fail_percent": 300}"#, r#"{"fail": 1}"#, "nope"] {
        let (status, _, body) = send(&client, post("/_chaos", bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(body.starts_with(b"invalid behavior: "), "{body:?}");
    }
    assert_eq!(server.behavior().status, 504, "a bad POST changes nothing");
    assert_eq!(send(&client, post("/_chaos/stats", "")).await.0, 405);
    assert_eq!(send(&client, get("/_chaos/nope", &[])).await.0, 404);

    let (_, _, body) = send(&client, post("/_chaos", "{}")).await;
    assert_eq!(
        json_of(&body),
        serde_json::to_value(Behavior::default()).unwrap()
    );
    assert_eq!(send(&client, get("/x", &[])).await.0, StatusCode::OK);
}

#[tokio::test]
async fn trellis_chaos_program() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    /// Kills the program however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_trellis-chaos"))
            .args(["prog", "127.0.0.1:0", "--idle-close", "4000,5000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let addr = line.trim().parse().unwrap();
    let client = http1_client_to(addr);
    let (status, headers, body) = send(&client, get("/", &[])).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, Bytes::from_static(b"ok prog"))
    );
    assert_eq!(headers["x-upstream"], "prog");
    let (_, _, body) = send(&client, get("/_chaos", &[])).await;
    let behavior: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(behavior["idle_close_ms"], json!([4000, 5000]));
    drop(child);

    let out = Command::new(env!("CARGO_BIN_EXE_trellis-chaos"))
        .args(["prog", "127.0.0.1:0", "--idle-close", "9,1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("idle_close: min 9ms > max 1ms"), "{err}");
}
