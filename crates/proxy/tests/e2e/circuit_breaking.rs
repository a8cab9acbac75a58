//! Circuit breaking (DestinationRule `connectionPool`) in the real binary:
//! requests over a cluster's limits fail at once with 503 `overflow` instead
//! of queueing behind a slow upstream, another destination is not held up by
//! a saturated one, and `maxRequestsPerConnection` retires connections.
//!
//! Requests go over one h2c connection to the proxy where the count matters:
//! one connection is served by one worker, so one upstream pool, and which
//! request waits for which does not depend on how the kernel spread
//! connections over the workers.

use std::time::{Duration, Instant};

use trellis_testing::{ChaosServer, try_send};

use crate::support::*;

/// Within this a refused request must be answered: far below the
/// upstream's delay, so the refusal cannot have waited for it.
const FAST: Duration = Duration::from_millis(500);

fn overflow_series(cluster: &str, reason: &str) -> String {
    format!(r#"trellis_upstream_overflow_total{{cluster="{cluster}",reason="{reason}"}}"#)
}

#[tokio::test]
async fn over_max_connections_one_request_waits_and_the_rest_overflow_at_once() {
    let slow = ChaosServer::start("slow").await;
    let cluster = cluster_9080("slow");
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("slow", &[slow.addr()])),
        (
            "dr.yaml",
            destination_rule(
                "slow",
                &[],
                Some(
                    "connectionPool:\n  tcp: {maxConnections: 1}\n  http: {http1MaxPendingRequests: 1}",
                ),
            ),
        ),
    ])
    .await;
    // Open the one connection the limit allows (it goes back to the pool).
    assert_eq!(
        proxy.send_h2(get("http://slow:9080/warm")).await.upstream(),
        "slow"
    );

    let replies = send_many(&proxy, &proxy.h2, 6, 6, |_| {
        get_headers("http://slow:9080/slow", &[("x-chaos-delay", "1000")])
    })
    .await;
    let (ok, refused): (Vec<_>, Vec<_>) = replies.iter().partition(|t| t.reply.status == 200);
    // One request on the connection, one waiting for it, four refused.
    assert_eq!(ok.len(), 2, "{replies:#?}");
    for t in &refused {
        t.reply.assert_local(503, "overflow");
        assert!(
            t.reply.text().contains("max_pending_requests"),
            "{}",
            t.reply.text()
        );
        assert!(t.took < FAST, "a refusal took {:?}", t.took);
    }
    for t in &ok {
        assert_eq!(t.reply.upstream(), "slow");
    }
    // The waiting request was sent after the first one's response, on the
    // same connection.
    let slowest = ok.iter().map(|t| t.took).max().unwrap_or_default();
    assert!(
        slowest >= Duration::from_millis(2000),
        "the pending request did not wait for the connection: {slowest:?}"
    );
    assert_eq!(slow.connections(), 1, "maxConnections 1 was exceeded");
    assert_eq!(slow.attempts(), 3);
    let series = overflow_series(&cluster, "max_pending_requests");
    assert_eq!(proxy.metric(&series).await, Some(4.0), "{series}");
    // Nothing is left holding a slot.
    let in_use = &proxy.cluster_dump(&cluster).await["circuit_breaker"]["in_use"];
    assert_eq!(
        (&in_use["pending"], &in_use["requests"]),
        (&0.into(), &0.into())
    );
}

#[tokio::test]
async fn over_http2_max_requests_the_rest_overflow_at_once() {
    let slow = ChaosServer::start("slow-h2").await;
    let cluster = cluster_9080("slow-h2");
    let proxy = Proxy::start(&[
        (
            "se.yaml",
            service_entry(
                "slow-h2",
                &[(9080, "http2", "HTTP2")],
                &[(slow.addr(), &[])],
            ),
        ),
        (
            "dr.yaml",
            destination_rule(
                "slow-h2",
                &[],
                Some("connectionPool:\n  http: {http2MaxRequests: 2}"),
            ),
        ),
    ])
    .await;
    let replies = send_many(&proxy, &proxy.h2, 5, 5, |_| {
        get_headers("http://slow-h2:9080/", &[("x-chaos-delay", "1000")])
    })
    .await;
    let (ok, refused): (Vec<_>, Vec<_>) = replies.iter().partition(|t| t.reply.status == 200);
    assert_eq!(ok.len(), 2, "{replies:#?}");
    for t in &refused {
        t.reply.assert_local(503, "overflow");
        assert!(
            t.reply.text().contains("max_requests"),
            "{}",
            t.reply.text()
        );
        assert!(t.took < FAST, "a refusal took {:?}", t.took);
    }
    assert_eq!(slow.attempts(), 2);
    let series = overflow_series(&cluster, "max_requests");
    assert_eq!(proxy.metric(&series).await, Some(3.0), "{series}");
    // The slots come back: the next request goes through.
    assert_eq!(
        proxy.send_h2(get("http://slow-h2:9080/")).await.upstream(),
        "slow-h2"
    );
}

#[tokio::test]
async fn a_saturated_destination_does_not_hold_up_another() {
    let a = ChaosServer::start("a").await;
    let b = ChaosServer::start("b").await;
    let cluster_a = cluster_9080("a");
    let proxy = Proxy::start(&[
        (
            "se.yaml",
            [
                http_service("a", &[a.addr()]),
                http_service("b", &[b.addr()]),
            ]
            .join("---\n"),
        ),
        (
            "dr.yaml",
            destination_rule(
                "a",
                &[],
                Some(
                    "connectionPool:\n  tcp: {maxConnections: 1}\n  http: {http1MaxPendingRequests: 1}",
                ),
            ),
        ),
    ])
    .await;

    // Two requests to `a` that never get an answer: one holds a's only
    // connection, the other waits for it.
    let hung: Vec<_> = (0..2)
        .map(|_| {
            let client = proxy.h2.clone();
            tokio::spawn(async move {
                try_send(
                    &client,
                    get_headers("http://a:9080/hang", &[("x-chaos-hang", "1")]),
                )
                .await
            })
        })
        .collect();
    eventually(
        "a's connection and its one pending slot in use",
        Duration::from_secs(5),
        || async {
            let c = proxy.cluster_dump(&cluster_a).await;
            let in_use = &c["circuit_breaker"]["in_use"];
            (in_use["connections"] == 1 && in_use["pending"] == 1 && a.attempts() == 1)
                .then_some(())
        },
    )
    .await;
    let started = Instant::now();
    proxy
        .send_h2(get("http://a:9080/more"))
        .await
        .assert_local(503, "overflow");
    assert!(started.elapsed() < FAST, "{:?}", started.elapsed());

    // Meanwhile `b`, on the same client connection and worker, answers at
    // once.
    let replies = send_many(&proxy, &proxy.h2, 40, 4, |i| {
        get(&format!("http://b:9080/{i}"))
    })
    .await;
    for t in &replies {
        assert_eq!(t.reply.status, 200, "{}", t.reply.text());
        assert_eq!(t.reply.upstream(), "b");
        assert!(t.took < FAST, "b took {:?} while a was saturated", t.took);
    }
    assert_eq!(b.attempts(), 40);
    // `a` stayed saturated throughout.
    assert!(hung.iter().all(|h| !h.is_finished()));
    assert_eq!(a.attempts(), 1);
    let series = overflow_series(&cluster_a, "max_pending_requests");
    assert_eq!(proxy.metric(&series).await, Some(1.0), "{series}");
    for h in hung {
        h.abort();
    }
}

#[tokio::test]
async fn max_requests_per_connection_one_opens_a_connection_per_request() {
    let once = ChaosServer::start("once").await;
    let reuse = ChaosServer::start("reuse").await;
    let proxy = Proxy::start(&[
        (
            "se.yaml",
            [
                http_service("once", &[once.addr()]),
                http_service("reuse", &[reuse.addr()]),
            ]
            .join("---\n"),
        ),
        (
            "dr.yaml",
            destination_rule(
                "once",
                &[],
                Some("connectionPool:\n  http: {maxRequestsPerConnection: 1}"),
            ),
        ),
    ])
    .await;
    for i in 0..5 {
        for host in ["once", "reuse"] {
            let r = proxy.send_h2(get(&format!("http://{host}:9080/{i}"))).await;
            assert_eq!(r.upstream(), host);
        }
    }
    assert_eq!(once.attempts(), 5);
    assert_eq!(
        once.connections(),
        5,
        "each request needs its own connection"
    );
    // Without the limit the same requests share one keep-alive connection.
    assert_eq!(reuse.connections(), 1);
}

#[tokio::test]
async fn a_reload_keeps_the_requests_counted_against_unchanged_limits() {
    let a = ChaosServer::start("a").await;
    let cluster_a = cluster_9080("a");
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("a", &[a.addr()])),
        (
            "dr.yaml",
            destination_rule(
                "a",
                &[],
                Some(
                    "connectionPool:\n  tcp: {maxConnections: 1}\n  http: {http1MaxPendingRequests: 1}",
                ),
            ),
        ),
    ])
    .await;
    let hung: Vec<_> = (0..2)
        .map(|_| {
            let client = proxy.h2.clone();
            tokio::spawn(async move {
                try_send(
                    &client,
                    get_headers("http://a:9080/hang", &[("x-chaos-hang", "1")]),
                )
                .await
            })
        })
        .collect();
    eventually("a saturated", Duration::from_secs(5), || async {
        let c = proxy.cluster_dump(&cluster_a).await;
        let in_use = &c["circuit_breaker"]["in_use"];
        (in_use["connections"] == 1 && in_use["pending"] == 1).then_some(())
    })
    .await;
    // An unrelated change reloads the config; `a` is as saturated as before.
    let g = proxy.generation().await;
    proxy
        .config
        .write("other.yaml", &http_service("other", &[a.addr()]));
    proxy.wait_generation_above(g, Duration::from_secs(5)).await;
    let started = Instant::now();
    proxy
        .send_h2(get("http://a:9080/more"))
        .await
        .assert_local(503, "overflow");
    assert!(started.elapsed() < FAST, "{:?}", started.elapsed());
    assert_eq!(a.connections(), 1);
    for h in hung {
        h.abort();
    }
}
