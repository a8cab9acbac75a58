//! SIGTERM: stop accepting, finish what is in flight, exit 0.

use std::time::{Duration, Instant};

use trellis_testing::{EchoServer, TcpEchoServer, h2c_client_to, http1_client_to, try_send};

use crate::support::*;

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let echo = EchoServer::start("reviews-v1").await;
    let mut proxy = Proxy::start_with(
        &[("se.yaml", http_service("reviews", &[echo.addr()]))],
        &["--drain-timeout", "10s"],
    )
    .await;
    let outbound = proxy.outbound();

    // Idle keep-alive connections (HTTP/1.1 and h2c) that must not hold up
    // the exit: the proxy closes them when it drains.
    let (idle_h1, idle_h2) = (http1_client_to(outbound), h2c_client_to(outbound));
    for client in [&idle_h1, &idle_h2] {
        let r = send_with(client, get("http://reviews:9080/warm"), &proxy.process).await;
        assert_eq!(r.status, 200);
    }

    // One slow request on each protocol.
    let slow = |client: trellis_testing::FixedClient| {
        tokio::spawn(async move {
            let req = http::Request::get("http://reviews:9080/slow")
                .header("x-echo-delay-ms", "1500")
                .body(Default::default())
                .expect("request");
            try_send(&client, req).await
        })
    };
    let slow_h1 = slow(http1_client_to(outbound));
    let slow_h2 = slow(h2c_client_to(outbound));
    // They are in flight once the upstream has them.
    eventually(
        "the slow requests to reach the upstream",
        Duration::from_secs(5),
        || async { (echo.requests() == 4).then_some(()) },
    )
    .await;

    let term = Instant::now();
    proxy.process.sigterm();
    // Draining: not ready any more, and no new connections.
    eventually(
        "/ready to fail while draining",
        Duration::from_secs(1),
        || async {
            (proxy.process.admin_get("/ready").await == (503, "draining\n".into())).then_some(())
        },
    )
    .await;
    eventually(
        "the outbound listener to close",
        Duration::from_secs(1),
        || async {
            tokio::net::TcpStream::connect(outbound)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;

    for (name, task) in [("h1", slow_h1), ("h2c", slow_h2)] {
        let (status, headers, body) = task.await.expect("client task").unwrap_or_else(|e| {
            panic!(
                "the in-flight {name} request failed during the drain: {e}\n{}",
                proxy.process.logs()
            )
        });
        assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&body));
        assert_eq!(headers["x-upstream"], "reviews-v1");
    }

    let exit = proxy
        .process
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the proxy did not exit after draining:\n{}",
                proxy.process.logs()
            )
        });
    let took = term.elapsed();
    assert_eq!(exit.code(), Some(0), "{}", proxy.process.logs());
    // It left as soon as the work was done, not at the 10 s drain timeout.
    assert!(took < Duration::from_secs(4), "exit {took:?} after SIGTERM");
    let logs = proxy.process.logs();
    assert!(logs.contains("draining"), "{logs}");
    assert!(logs.contains("stopped"), "{logs}");
    drop((idle_h1, idle_h2));
}

#[tokio::test]
async fn sigterm_lets_an_open_tunnel_finish() {
    let tcp = TcpEchoServer::start().await;
    let mut proxy = Proxy::start_with(
        &[(
            "db.yaml",
            service_entry("db", &[(7000, "tcp", "TCP")], &[(tcp.addr(), &[])]),
        )],
        &["--drain-timeout", "10s"],
    )
    .await;
    let tunnel = crate::tcp::open_tunnel(proxy.outbound(), "db:7000").await;

    let term = Instant::now();
    proxy.process.sigterm();
    eventually(
        "/ready to fail while draining",
        Duration::from_secs(1),
        || async { (proxy.process.admin_get("/ready").await.0 == 503).then_some(()) },
    )
    .await;
    // The tunnel opened before the signal still carries bytes both ways.
    let reply = crate::tcp::half_close_exchange(tunnel, b"after sigterm").await;
    assert_eq!(
        reply,
        "received 13 bytes: after sigterm",
        "{}",
        proxy.process.logs()
    );

    let exit = proxy
        .process
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the proxy did not exit after the tunnel closed:\n{}",
                proxy.process.logs()
            )
        });
    assert_eq!(exit.code(), Some(0), "{}", proxy.process.logs());
    assert!(
        term.elapsed() < Duration::from_secs(4),
        "exit {:?} after SIGTERM",
        term.elapsed()
    );
}
