//! Timeouts in the real binary, against `ChaosServer`: the route timeout
//! (to response headers, over all tries), the per-try timeout that lets a
//! retry rescue a hung attempt, and the gRPC caller's `grpc-timeout`,
//! honoured, combined with the route timeout, and passed on reduced.

use std::time::{Duration, Instant};

use trellis_testing::{ChaosServer, SeenRequest};

use crate::support::*;

/// How far past its timeout a local reply may come on a loaded machine.
const SLACK: Duration = Duration::from_millis(1000);

#[track_caller]
fn assert_took(took: Duration, at_least: Duration, what: &str) {
    assert!(
        took >= at_least && took < at_least + SLACK,
        "{what}: took {took:?}, expected {at_least:?} (+ less than {SLACK:?})"
    );
}

#[tokio::test]
async fn the_route_timeout_answers_504_and_bounds_all_tries() {
    let chaos = ChaosServer::start("slow").await;
    let routes = "\
- match: [{uri: {prefix: /capped}}]
  timeout: 400ms
  retries: {attempts: 10, retryOn: 5xx}
  route: [{destination: {host: slow}}]
- timeout: 300ms
  route: [{destination: {host: slow}}]
";
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("slow", &[chaos.addr()])),
        ("vs.yaml", virtual_service("slow", &["slow"], routes)),
    ])
    .await;

    for misbehave in [("x-chaos-delay", "3000"), ("x-chaos-hang", "1")] {
        let started = Instant::now();
        let r = proxy.get_with("http://slow:9080/x", &[misbehave]).await;
        r.assert_local(504, "upstream_timeout");
        assert!(r.text().contains("route timeout of 300ms"), "{}", r.text());
        assert_took(started.elapsed(), Duration::from_millis(300), misbehave.0);
    }
    // In time, the same route answers.
    let r = proxy
        .get_with("http://slow:9080/x", &[("x-chaos-delay", "50")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Ten retries of 150 ms failures do not outlast the 400 ms route timeout.
    let started = Instant::now();
    let r = proxy
        .get_with(
            "http://slow:9080/capped",
            &[("x-chaos-fail", "100"), ("x-chaos-delay", "150")],
        )
        .await;
    r.assert_local(504, "upstream_timeout");
    assert_took(started.elapsed(), Duration::from_millis(400), "capped");
    let tries = chaos.attempts_for("/capped");
    assert!(
        (2..=3).contains(&tries),
        "{tries} tries in 400 ms of 150 ms each"
    );

    assert_eq!(
        proxy
            .metric(
                r#"trellis_local_replies_total{direction="outbound",reason="upstream_timeout"}"#
            )
            .await,
        Some(3.0)
    );
}

#[tokio::test]
async fn a_per_try_timeout_abandons_a_hung_try_for_a_retry() {
    let chaos = ChaosServer::start("hangs").await;
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("hangs", &[chaos.addr()])),
        (
            "vs.yaml",
            virtual_service(
                "hangs",
                &["hangs"],
                "- retries: {attempts: 2, perTryTimeout: 200ms, retryOn: 5xx}\n  route: [{destination: {host: hangs}}]\n",
            ),
        ),
    ])
    .await;

    // The first try hangs; the second answers.
    let started = Instant::now();
    let r = proxy
        .get_with(
            "http://hangs:9080/x",
            &[
                ("x-chaos-key", "once"),
                ("x-chaos-fail-first", "1"),
                ("x-chaos-hang", "1"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-chaos-attempt"), Some("2"));
    assert_eq!(chaos.attempts_for("once"), 2);
    assert_took(
        started.elapsed(),
        Duration::from_millis(200),
        "one hung try",
    );

    // Every try hangs: three per-try timeouts, and the reply says so.
    let started = Instant::now();
    let r = proxy
        .get_with(
            "http://hangs:9080/x",
            &[
                ("x-chaos-key", "always"),
                ("x-chaos-fail-first", "10"),
                ("x-chaos-hang", "1"),
            ],
        )
        .await;
    r.assert_local(504, "upstream_per_try_timeout");
    assert_eq!(r.header("x-trellis-retried"), Some("2"));
    assert_eq!(chaos.attempts_for("always"), 3);
    assert_took(
        started.elapsed(),
        Duration::from_millis(600),
        "three hung tries",
    );

    let cluster = "outbound|9080||hangs.default.svc.cluster.local";
    assert_eq!(
        proxy.metric(&retries_series(cluster, "5xx")).await,
        Some(3.0)
    );
}

/// The `grpc-timeout` the upstream got with the request of `key`.
fn upstream_grpc_timeout(chaos: &ChaosServer, key: &str) -> Duration {
    let seen: Vec<SeenRequest> = chaos
        .requests()
        .into_iter()
        .filter(|r| r.key == key)
        .collect();
    assert_eq!(seen.len(), 1, "requests with key {key}");
    let v = seen[0]
        .headers
        .get("grpc-timeout")
        .unwrap_or_else(|| panic!("{key}: no grpc-timeout upstream: {:?}", seen[0].headers))
        .to_str()
        .expect("ascii");
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("grpc-timeout {v:?}"));
    match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => panic!("grpc-timeout {v:?}: unknown unit"),
    }
}

#[tokio::test]
async fn a_grpc_callers_deadline_is_honoured_and_passed_on() {
    let chaos = ChaosServer::start("grpc-slow").await;
    let se = service_entry(
        "grpc-slow",
        &[(50051, "grpc", "GRPC")],
        &[(chaos.addr(), &[])],
    );
    let routes = "\
- match: [{headers: {x-route: {exact: capped}}}]
  timeout: 150ms
  route: [{destination: {host: grpc-slow}}]
- route: [{destination: {host: grpc-slow}}]
";
    let vs = virtual_service("grpc-slow", &["grpc-slow"], routes);
    let proxy = Proxy::start(&[("se.yaml", se), ("vs.yaml", vs)]).await;
    let url = "http://grpc-slow:50051/trellis.test.Chaos/Call";

    // The caller's 200 ms pass: DEADLINE_EXCEEDED, trailers-only.
    let g = grpc_call(
        &proxy,
        url,
        &[
            ("grpc-timeout", "200m"),
            ("x-chaos-key", "short"),
            ("x-chaos-delay", "3000"),
        ],
        b"ping",
    )
    .await;
    assert_eq!(
        (g.reply.status.as_u16(), g.grpc_status(), g.reply.reason()),
        (200, Some(4), Some("upstream_timeout")),
        "{g:?}"
    );
    assert!(g.trailers.is_none(), "a trailers-only reply: {g:?}");
    assert!(
        g.reply
            .header("grpc-message")
            .is_some_and(|m| m.contains("grpc-timeout")),
        "{g:?}"
    );
    assert_took(g.took, Duration::from_millis(200), "grpc-timeout 200m");
    // The upstream was told what was left of the 200 ms, not more.
    let left = upstream_grpc_timeout(&chaos, "short");
    assert!(
        left < Duration::from_millis(200) && left > Duration::from_millis(50),
        "upstream grpc-timeout {left:?}"
    );

    // The route's 150 ms are shorter than the caller's 5 s: they win, and
    // the upstream hears of them.
    let g = grpc_call(
        &proxy,
        url,
        &[
            ("grpc-timeout", "5S"),
            ("x-route", "capped"),
            ("x-chaos-key", "capped"),
            ("x-chaos-delay", "3000"),
        ],
        b"ping",
    )
    .await;
    assert_eq!(
        (g.grpc_status(), g.reply.reason()),
        (Some(4), Some("upstream_timeout")),
        "{g:?}"
    );
    assert_took(g.took, Duration::from_millis(150), "route timeout 150ms");
    let left = upstream_grpc_timeout(&chaos, "capped");
    assert!(
        left <= Duration::from_millis(150),
        "upstream grpc-timeout {left:?}"
    );

    // Within the deadline the call succeeds, the deadline still passed on.
    let g = grpc_call(
        &proxy,
        url,
        &[
            ("grpc-timeout", "2S"),
            ("x-chaos-key", "in-time"),
            ("x-chaos-delay", "50"),
        ],
        b"ping",
    )
    .await;
    assert_eq!(g.grpc_status(), Some(0), "{g:?}");
    assert_eq!(g.messages(), [&b"ping"[..]], "{g:?}");
    let left = upstream_grpc_timeout(&chaos, "in-time");
    assert!(
        left < Duration::from_secs(2) && left > Duration::from_secs(1),
        "upstream grpc-timeout {left:?}"
    );
}
