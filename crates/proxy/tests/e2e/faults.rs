//! Fault injection (VirtualService `http[].fault`) in the real binary:
//! aborts at the configured rate, each one explained; delays that really
//! delay; faults limited to the requests a `match` selects; gRPC aborts
//! that a gRPC client sees as a gRPC status.

use std::time::Duration;

use trellis_testing::{ChaosServer, grpc_client};

use crate::support::*;

fn faults(cluster: &str, reason: &str) -> String {
    format!(r#"trellis_faults_injected_total{{cluster="{cluster}",reason="{reason}"}}"#)
}

/// The rate of `hits` in `n` as a percentage.
fn percent(hits: usize, n: usize) -> f64 {
    100.0 * hits as f64 / n as f64
}

#[tokio::test]
async fn abort_30_percent_of_requests() {
    let up = ChaosServer::start("reviews").await;
    let vs = virtual_service(
        "reviews",
        &["reviews"],
        "- fault: {abort: {httpStatus: 503, percentage: {value: 30}}}\n  route: [{destination: {host: reviews}}]\n",
    );
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("reviews", &[up.addr()])),
        ("vs.yaml", vs),
    ])
    .await;

    // 4,000 requests: the binomial standard deviation of the rate is 0.72
    // points, so ±3 points fails a correct proxy about once in 25,000 runs.
    const N: usize = 4000;
    let replies = send_many(&proxy, &proxy.h1, N, 16, |i| {
        get(&format!("http://reviews:9080/{i}"))
    })
    .await;
    let mut aborted = 0;
    for t in &replies {
        if t.reply.status == 200 {
            assert_eq!(t.reply.upstream(), "reviews");
        } else {
            t.reply.assert_local(503, "fault_injected");
            aborted += 1;
        }
    }
    let rate = percent(aborted, N);
    println!("abort rate: {rate:.2}% of {N}");
    assert!((27.0..=33.0).contains(&rate), "abort rate {rate:.2}%");
    // An aborted request never reaches the upstream, and is not retried.
    assert_eq!(up.attempts(), (N - aborted) as u64);
    let cluster = cluster_9080("reviews");
    assert_eq!(
        proxy.metric(&faults(&cluster, "abort")).await,
        Some(aborted as f64)
    );
    assert_eq!(proxy.metric(&faults(&cluster, "delay")).await, Some(0.0));
}

#[tokio::test]
async fn delay_every_request_by_50ms() {
    let up = ChaosServer::start("reviews").await;
    let vs = virtual_service(
        "reviews",
        &["reviews"],
        "- match: [{uri: {prefix: /slow}}]\n  fault: {delay: {fixedDelay: 50ms, percentage: {value: 100}}}\n  route: [{destination: {host: reviews}}]\n\
         - route: [{destination: {host: reviews}}]\n",
    );
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("reviews", &[up.addr()])),
        ("vs.yaml", vs),
    ])
    .await;
    let fault = Duration::from_millis(50);
    let plain = send_many(&proxy, &proxy.h1, 10, 1, |_| {
        get("http://reviews:9080/plain")
    })
    .await;
    let slow = send_many(&proxy, &proxy.h1, 10, 1, |_| {
        get("http://reviews:9080/slow")
    })
    .await;
    for t in plain.iter().chain(&slow) {
        assert_eq!(
            (t.reply.status.as_u16(), t.reply.upstream()),
            (200, "reviews")
        );
    }
    let fastest_plain = plain.iter().map(|t| t.took).min().unwrap_or_default();
    let fastest_slow = slow.iter().map(|t| t.took).min().unwrap_or_default();
    println!("fastest: {fastest_plain:?} without the fault, {fastest_slow:?} with it");
    // Without the fault the same requests are faster than the delay, so the
    // delay is the fault's.
    assert!(fastest_plain < fault, "{fastest_plain:?}");
    assert!(
        fastest_slow >= fault,
        "a delayed request took {fastest_slow:?}"
    );
    assert_eq!(
        proxy
            .metric(&faults(&cluster_9080("reviews"), "delay"))
            .await,
        Some(10.0)
    );
}

#[tokio::test]
async fn a_fault_for_one_user_only() {
    let up = ChaosServer::start("ratings").await;
    let vs = virtual_service(
        "ratings",
        &["ratings"],
        "- match: [{headers: {end-user: {exact: jason}}}]\n  fault: {abort: {httpStatus: 500, percentage: {value: 100}}}\n  route: [{destination: {host: ratings}}]\n\
         - route: [{destination: {host: ratings}}]\n",
    );
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("ratings", &[up.addr()])),
        ("vs.yaml", vs),
    ])
    .await;
    for _ in 0..10 {
        proxy
            .get_with("http://ratings:9080/", &[("end-user", "jason")])
            .await
            .assert_local(500, "fault_injected");
        for others in [&[("end-user", "alice")][..], &[("end-user", "jason2")], &[]] {
            let r = proxy.get_with("http://ratings:9080/", others).await;
            assert_eq!(
                (r.status.as_u16(), r.reason(), r.upstream()),
                (200, None, "ratings"),
                "{others:?}"
            );
        }
    }
    assert_eq!(up.attempts(), 30);
    assert_eq!(
        proxy
            .metric(&faults(&cluster_9080("ratings"), "abort"))
            .await,
        Some(10.0)
    );
}

#[tokio::test]
async fn grpc_abort_gives_a_grpc_status() {
    let up = ChaosServer::start("grpc-up").await;
    let se = service_entry("grpc-svc", &[(50051, "grpc", "GRPC")], &[(up.addr(), &[])]);
    let vs = virtual_service(
        "grpc-svc",
        &["grpc-svc"],
        "- fault: {abort: {grpcStatus: UNAVAILABLE}}\n  route: [{destination: {host: grpc-svc}}]\n",
    );
    let proxy = Proxy::start(&[("se.yaml", se), ("vs.yaml", vs)]).await;

    let call = grpc_client(
        proxy.outbound(),
        "grpc-svc:50051",
        &["unary", "--message", "hi"],
    )
    .await;
    assert_eq!(call["code"], "UNAVAILABLE", "{call}");
    assert_eq!(call["messages"], serde_json::json!([]), "{call}");

    // On the wire: a trailers-only gRPC response, HTTP 200, grpc-status 14.
    let req = http::Request::post("http://grpc-svc:50051/trellis.test.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"\0\0\0\0\x02hi",
        )))
        .expect("request");
    let r = proxy.send_h2(req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("14"), "{:?}", r.headers);
    assert_eq!(r.reason(), Some("fault_injected"));
    assert_eq!(up.attempts(), 0, "an aborted call reached the upstream");
}

#[tokio::test]
async fn a_fault_delay_does_not_use_up_the_route_timeout() {
    let up = ChaosServer::start("reviews").await;
    // As in Envoy, where the fault filter waits before the router starts the
    // route's timeout: the timeout covers the upstream, not the injected delay.
    let vs = virtual_service(
        "reviews",
        &["reviews"],
        "- fault: {delay: {fixedDelay: 300ms}}\n  timeout: 200ms\n  route: [{destination: {host: reviews}}]\n",
    );
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("reviews", &[up.addr()])),
        ("vs.yaml", vs),
    ])
    .await;
    let t = send_many(&proxy, &proxy.h1, 1, 1, |_| get("http://reviews:9080/")).await;
    let t = &t[0];
    assert_eq!(
        (t.reply.status.as_u16(), t.reply.reason()),
        (200, None),
        "{}",
        t.reply.text()
    );
    assert!(t.took >= Duration::from_millis(300), "{:?}", t.took);
    // The timeout still bounds the upstream's part.
    let t = send_many(&proxy, &proxy.h1, 1, 1, |_| {
        get_headers("http://reviews:9080/", &[("x-chaos-delay", "1000")])
    })
    .await;
    let t = &t[0];
    t.reply.assert_local(504, "upstream_timeout");
    assert!(
        t.took >= Duration::from_millis(500) && t.took < Duration::from_millis(1000),
        "{:?}",
        t.took
    );
}
