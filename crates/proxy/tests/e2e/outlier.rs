//! Outlier detection (DestinationRule `outlierDetection`) in the real
//! binary: an endpoint that keeps failing stops getting traffic, comes back
//! after its ejection time once it is healthy, and panic mode
//! (`minHealthPercent`) ignores ejections when too few endpoints are left.
//!
//! Routes here turn retries off: Istio's default policy would retry a 503
//! on the other endpoint and hide the failures from the client.

use std::time::{Duration, Instant};

use trellis_testing::{Behavior, ChaosServer};

use crate::support::*;

fn failing() -> Behavior {
    Behavior {
        fail_percent: 100.0,
        ..Behavior::default()
    }
}

/// A VirtualService sending `host` to itself without retries.
fn no_retries(host: &str) -> String {
    virtual_service(
        host,
        &[host],
        &format!("- route: [{{destination: {{host: {host}}}}}]\n  retries: {{attempts: 0}}\n"),
    )
}

fn ejections(cluster: &str) -> String {
    format!(r#"trellis_outlier_ejections_total{{cluster="{cluster}",reason="consecutive_5xx"}}"#)
}

fn ejected_gauge(cluster: &str) -> String {
    format!(r#"trellis_outlier_ejected_endpoints{{cluster="{cluster}"}}"#)
}

/// A reply from one of the endpoints (not a local reply of the proxy).
#[track_caller]
fn from_upstream(r: &Reply) -> &str {
    assert_eq!(r.reason(), None, "a local reply: {}", r.text());
    r.upstream()
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_returns_once_healthy() {
    let good = ChaosServer::start("good").await;
    let bad = ChaosServer::start("bad").await;
    bad.set(failing());
    let cluster = cluster_9080("reviews");
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("reviews", &[good.addr(), bad.addr()])),
        (
            "dr.yaml",
            destination_rule(
                "reviews",
                &[],
                Some(
                    "outlierDetection:\n  consecutive5xxErrors: 3\n  interval: 1s\n  baseEjectionTime: 2s\n  maxEjectionPercent: 50",
                ),
            ),
        ),
        ("vs.yaml", no_retries("reviews")),
    ])
    .await;

    // `bad` gets its share until its third 503 in a row ejects it.
    let mut failures = 0;
    for _ in 0..200 {
        let r = proxy.get("http://reviews:9080/").await;
        match from_upstream(&r) {
            "bad" => {
                assert_eq!(r.status, 503);
                failures += 1;
            }
            _ => assert_eq!(r.status, 200),
        }
        if bad.attempts() == 3 {
            break;
        }
    }
    assert_eq!(failures, 3, "bad was not tried three times in 200 requests");
    let ejected_at = Instant::now();
    assert_eq!(proxy.metric(&ejections(&cluster)).await, Some(1.0));
    let c = proxy.cluster_dump(&cluster).await;
    let bad_addr = bad.addr().to_string();
    let ep = c["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["address"] == bad_addr.as_str()))
        .unwrap_or_else(|| panic!("no endpoint {bad_addr}: {c}"));
    assert_eq!(ep["ejected"], true, "{c}");

    // For the next second (the ejection lasts at least 2 s) every request
    // goes to `good`.
    let mut sent = 0;
    while ejected_at.elapsed() < Duration::from_secs(1) {
        let r = proxy.get("http://reviews:9080/").await;
        assert_eq!((r.status.as_u16(), from_upstream(&r)), (200, "good"));
        sent += 1;
    }
    assert!(sent >= 10, "only {sent} requests in a second");
    assert_eq!(bad.attempts(), 3, "an ejected endpoint got requests");

    // It recovers; after its ejection time the sweep returns it.
    bad.set(Behavior::default());
    let back = eventually(
        "bad to get requests again",
        Duration::from_secs(6),
        || async {
            let r = proxy.get("http://reviews:9080/").await;
            assert_eq!(r.status, 200, "{}", r.text());
            (r.upstream() == "bad").then(|| ejected_at.elapsed())
        },
    )
    .await;
    assert!(
        back >= Duration::from_millis(1900),
        "bad returned {back:?} after its ejection, before baseEjectionTime 2s"
    );
    assert_eq!(proxy.metric(&ejections(&cluster)).await, Some(1.0));
    proxy
        .wait_metric(&ejected_gauge(&cluster), 0.0, Duration::from_secs(3))
        .await;
}

#[tokio::test]
async fn below_min_health_percent_ejections_are_ignored() {
    let servers = [
        ChaosServer::start("panic-1").await,
        ChaosServer::start("panic-2").await,
        ChaosServer::start("strict-1").await,
        ChaosServer::start("strict-2").await,
    ];
    for s in &servers {
        s.set(failing());
    }
    let od = "outlierDetection:\n  consecutive5xxErrors: 3\n  baseEjectionTime: 30s\n  maxEjectionPercent: 100";
    let proxy = Proxy::start(&[
        (
            "se.yaml",
            [
                http_service("panic", &[servers[0].addr(), servers[1].addr()]),
                http_service("strict", &[servers[2].addr(), servers[3].addr()]),
            ]
            .join("---\n"),
        ),
        (
            "dr.yaml",
            [
                destination_rule("panic", &[], Some(&format!("{od}\n  minHealthPercent: 60"))),
                destination_rule("strict", &[], Some(od)),
            ]
            .join("---\n"),
        ),
        (
            "vs.yaml",
            [no_retries("panic"), no_retries("strict")].join("---\n"),
        ),
    ])
    .await;

    // Without panic mode both endpoints are ejected after three failures
    // each, and then no endpoint is left.
    for _ in 0..6 {
        let r = proxy.get("http://strict:9080/").await;
        assert_eq!(r.status, 503);
        from_upstream(&r);
    }
    assert_eq!(
        proxy.metric(&ejections(&cluster_9080("strict"))).await,
        Some(2.0)
    );
    proxy
        .get("http://strict:9080/")
        .await
        .assert_local(503, "no_healthy_upstream");

    // With minHealthPercent 60 an ejection happens the same way, but with
    // fewer than 60% of the endpoints usable the balancer ignores it.
    let panic_ejections = ejections(&cluster_9080("panic"));
    for _ in 0..50 {
        let r = proxy.get("http://panic:9080/").await;
        assert_eq!(r.status, 503);
        from_upstream(&r);
        if proxy
            .metric(&panic_ejections)
            .await
            .is_some_and(|n| n >= 1.0)
        {
            break;
        }
    }
    let c = proxy.cluster_dump(&cluster_9080("panic")).await;
    let ejected = c["endpoints"]
        .as_array()
        .map_or(0, |eps| eps.iter().filter(|e| e["ejected"] == true).count());
    assert!(ejected >= 1, "no endpoint ejected: {c}");
    let before = [servers[0].attempts(), servers[1].attempts()];
    for _ in 0..30 {
        let r = proxy.get("http://panic:9080/").await;
        assert_eq!(r.status, 503);
        assert!(
            from_upstream(&r).starts_with("panic-"),
            "{:?}",
            r.upstream()
        );
    }
    let after = [servers[0].attempts(), servers[1].attempts()];
    assert_eq!(after[0] + after[1], before[0] + before[1] + 30);
    assert!(
        after[0] > before[0] && after[1] > before[1],
        "in panic both endpoints take traffic: {before:?} -> {after:?}"
    );
}

#[tokio::test]
async fn an_ejection_survives_a_reload() {
    let good = ChaosServer::start("good").await;
    let bad = ChaosServer::start("bad").await;
    bad.set(failing());
    let cluster = cluster_9080("reviews");
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("reviews", &[good.addr(), bad.addr()])),
        (
            "dr.yaml",
            destination_rule(
                "reviews",
                &[],
                Some(
                    "outlierDetection:\n  consecutive5xxErrors: 2\n  baseEjectionTime: 30s\n  maxEjectionPercent: 50",
                ),
            ),
        ),
        ("vs.yaml", no_retries("reviews")),
    ])
    .await;
    for _ in 0..200 {
        proxy.get("http://reviews:9080/").await;
        if bad.attempts() == 2 {
            break;
        }
    }
    assert_eq!(proxy.metric(&ejections(&cluster)).await, Some(1.0));
    // A config change elsewhere keeps the endpoint, and so its ejection.
    let g = proxy.generation().await;
    proxy
        .config
        .write("other.yaml", &http_service("other", &[good.addr()]));
    proxy.wait_generation_above(g, Duration::from_secs(5)).await;
    for _ in 0..20 {
        let r = proxy.get("http://reviews:9080/").await;
        assert_eq!((r.status.as_u16(), from_upstream(&r)), (200, "good"));
    }
    assert_eq!(bad.attempts(), 2);
}
