//! Bad input on the listeners: answered with a 4xx or closed cleanly, and
//! the proxy keeps serving.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_testing::{EchoServer, try_send};

use crate::support::*;

/// Write `request` (ignoring a write error: the proxy may answer and close
/// before reading all of it) and read until the proxy closes.
async fn send_and_drain(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Err(_) => panic!(
                "the proxy neither answered nor closed within 10 s; got {:?}",
                String::from_utf8_lossy(&out)
            ),
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            // A reset after unread input is a close too.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Ok(Err(e)) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn still_serves(proxy: &Proxy) {
    let r = proxy.get("http://reviews:9080/after").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream(), "reviews-v1");
}

#[tokio::test]
async fn bad_input_gets_4xx_and_the_proxy_keeps_serving() {
    let echo = EchoServer::start("reviews-v1").await;
    let mut proxy = Proxy::start(&[("se.yaml", http_service("reviews", &[echo.addr()]))]).await;

    // Garbage: binary junk, a line that is not a request, a broken request line.
    for junk in [
        &b"\x00\x01\x02\x03garbage\r\n\r\n"[..],
        b"hello there\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: reviews:9080\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: reviews:9080\r\nbad header line\r\n\r\n",
    ] {
        let answer = send_and_drain(proxy.outbound(), junk).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(junk)
        );
        still_serves(&proxy).await;
    }

    // Oversized request headers (the limit is 64 KiB): 431, then close.
    let big = "a".repeat(100 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: reviews:9080\r\nX-Big: {big}\r\n\r\n");
    let answer = send_and_drain(proxy.outbound(), req.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431 "),
        "100 KiB header got {:?}",
        &answer[..answer.len().min(200)]
    );
    still_serves(&proxy).await;

    // The same over h2c: a 431 for that stream; the connection carries on.
    let req = http::Request::get("http://reviews:9080/big")
        .header("x-big", big.as_str())
        .body(Full::new(Bytes::new()))
        .expect("request");
    match try_send(&proxy.h2, req).await {
        Ok((status, _, _)) => assert_eq!(status, 431),
        Err(e) => panic!("h2c oversized headers: {e}"),
    }
    let r = proxy.send_h2(get("http://reviews:9080/after-big")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        echo.requests() as usize,
        7,
        "no oversized request reached the upstream"
    );

    // No Host at all: explained 400.
    for req in [&b"GET /x HTTP/1.1\r\n\r\n"[..], b"GET /x HTTP/1.0\r\n\r\n"] {
        let (head, body) = raw_request(proxy.outbound(), req).await;
        assert_eq!(status_of(&head), 400, "{head}{body}");
        assert_eq!(
            head_header(&head, "x-trellis-reason"),
            Some("missing_host"),
            "{head}"
        );
        assert!(body.contains("names no host"), "{body}");
    }
    // A Host that is not a valid authority.
    let (head, body) = raw_request(proxy.outbound(), b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n").await;
    assert_eq!(status_of(&head), 400, "{head}{body}");
    assert_eq!(
        head_header(&head, "x-trellis-reason"),
        Some("bad_request"),
        "{head}"
    );
    assert!(body.contains("invalid Host header"), "{body}");

    still_serves(&proxy).await;
    assert!(
        proxy.process.wait_exit(Duration::ZERO).await.is_none(),
        "the proxy died:\n{}",
        proxy.process.logs()
    );
    let logs = proxy.process.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}
