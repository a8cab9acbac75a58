//! Retries in the real binary, against `ChaosServer`: each `retryOn`
//! condition retried until the upstream recovers (and the failures it does
//! not name left alone), `attempts` counted exactly, a retry moving to
//! another endpoint, request bodies replayed intact (and not past the
//! 64 KiB buffer), Istio's default policy, and the keep-alive race: an
//! upstream closing idle connections under the proxy loses no request.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use trellis_testing::{Behavior, ChaosServer, EchoServer, http1_client_to, try_send};

use crate::support::*;

/// `x-chaos-*` request headers: how the upstream misbehaves.
type Chaos = &'static [(&'static str, &'static str)];

fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Bytes) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body)).expect("request")
}

/// The `x-trellis-attempt` header of each request the chaos server got for
/// `key`, in order (`-` when absent: a first try).
fn attempt_headers(chaos: &ChaosServer, key: &str) -> Vec<String> {
    chaos
        .requests()
        .iter()
        .filter(|r| r.key == key)
        .map(|r| {
            r.headers
                .get("x-trellis-attempt")
                .map_or("-".to_string(), |v| v.to_str().unwrap_or("?").to_string())
        })
        .collect()
}

/// `attempts: 3` with one `retryOn` condition per path prefix.
const CONDITION_ROUTES: &str = "\
- match: [{uri: {prefix: /5xx}}]
  retries: {attempts: 3, retryOn: 5xx}
  route: [{destination: {host: flaky}}]
- match: [{uri: {prefix: /gateway}}]
  retries: {attempts: 3, retryOn: gateway-error}
  route: [{destination: {host: flaky}}]
- match: [{uri: {prefix: /reset}}]
  retries: {attempts: 3, retryOn: reset}
  route: [{destination: {host: flaky}}]
- match: [{uri: {prefix: /codes}}]
  retries: {attempts: 3, retryOn: 'retriable-status-codes,418'}
  route: [{destination: {host: flaky}}]
- match: [{uri: {prefix: /4xx}}]
  retries: {attempts: 3, retryOn: retriable-4xx}
  route: [{destination: {host: flaky}}]
";

#[tokio::test]
async fn each_retry_condition_retries_what_it_names_and_nothing_else() {
    let chaos = ChaosServer::start("flaky").await;
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("flaky", &[chaos.addr()])),
        (
            "vs.yaml",
            virtual_service("flaky", &["flaky"], CONDITION_ROUTES),
        ),
    ])
    .await;
    let cluster = "outbound|9080||flaky.default.svc.cluster.local";

    // (method, path = the chaos key, chaos headers, status, upstream attempts)
    let cases: &[(&str, &str, Chaos, u16, u64)] = &[
        (
            "GET",
            "/5xx/500",
            &[("x-chaos-fail-first", "2"), ("x-chaos-status", "500")],
            200,
            3,
        ),
        (
            "GET",
            "/gateway/502",
            &[("x-chaos-fail-first", "1"), ("x-chaos-status", "502")],
            200,
            2,
        ),
        (
            "GET",
            "/gateway/504",
            &[("x-chaos-fail-first", "1"), ("x-chaos-status", "504")],
            200,
            2,
        ),
        (
            "GET",
            "/gateway/500",
            &[("x-chaos-fail-first", "1"), ("x-chaos-status", "500")],
            500,
            1,
        ),
        // POST: a reset GET on a reused connection would be resent as
        // "never sent" whatever the policy; a POST is retried by `reset` only.
        (
            "POST",
            "/reset/closed",
            &[("x-chaos-fail-first", "1"), ("x-chaos-reset", "100")],
            200,
            2,
        ),
        (
            "POST",
            "/reset/503",
            &[("x-chaos-fail-first", "1"), ("x-chaos-status", "503")],
            503,
            1,
        ),
        (
            "GET",
            "/codes/418",
            &[("x-chaos-fail-first", "1"), ("x-chaos-status", "418")],
            200,
            2,
        ),
        (
            "GET",
            "/codes/503",
            &[("x-chaos-fail-first", "1"), ("x-chaos-status", "503")],
            503,
            1,
        ),
        (
            "GET",
            "/4xx/409",
            &[("x-chaos-fail-first", "1"), ("x-chaos-status", "409")],
            200,
            2,
        ),
        (
            "GET",
            "/4xx/429",
            &[("x-chaos-fail-first", "1"), ("x-chaos-status", "429")],
            429,
            1,
        ),
    ];
    for &(method, path, headers, status, attempts) in cases {
        let r = proxy
            .send(request(
                method,
                &format!("http://flaky:9080{path}"),
                headers,
                Bytes::from_static(b"payload"),
            ))
            .await;
        assert_eq!(
            (r.status.as_u16(), chaos.attempts_for(path)),
            (status, attempts),
            "{method} {path}: (status, upstream attempts); body: {}",
            r.text()
        );
        // Every retry says which try it is.
        let want: Vec<String> = (1..=attempts)
            .map(|n| if n == 1 { "-".into() } else { n.to_string() })
            .collect();
        assert_eq!(attempt_headers(&chaos, path), want, "{method} {path}");
        if status == 200 {
            assert_eq!(r.header("x-chaos-attempt"), Some(&*attempts.to_string()));
            assert_eq!(r.header("x-trellis-retried"), None, "{method} {path}");
        }
    }

    let metrics = proxy.metrics().await;
    for (reason, n) in [
        ("5xx", 2.0),
        ("gateway_error", 2.0),
        ("reset", 1.0),
        ("retriable_status_code", 1.0),
        ("retriable_4xx", 1.0),
        ("never_sent", 0.0),
    ] {
        let series = retries_series(cluster, reason);
        assert_eq!(
            metric_value(&metrics, &series).unwrap_or(0.0),
            n,
            "{series}\n{metrics}"
        );
    }
}

#[tokio::test]
async fn a_grpc_status_condition_is_retried_over_h2c() {
    let chaos = ChaosServer::start("grpc-flaky").await;
    let se = service_entry(
        "grpc-flaky",
        &[(50051, "grpc", "GRPC")],
        &[(chaos.addr(), &[])],
    );
    let vs = virtual_service(
        "grpc-flaky",
        &["grpc-flaky"],
        "- retries: {attempts: 2, retryOn: unavailable}\n  route: [{destination: {host: grpc-flaky}}]\n",
    );
    let proxy = Proxy::start(&[("se.yaml", se), ("vs.yaml", vs)]).await;
    let url = "http://grpc-flaky:50051/trellis.test.Chaos/Call";

    // UNAVAILABLE (14) the first time, then the echo.
    let g = grpc_call(
        &proxy,
        url,
        &[
            ("x-chaos-key", "unavailable"),
            ("x-chaos-fail-first", "1"),
            ("x-chaos-grpc-status", "14"),
        ],
        b"hello",
    )
    .await;
    assert_eq!(g.reply.status, 200, "{g:?}");
    assert_eq!(g.grpc_status(), Some(0), "{g:?}");
    assert_eq!(g.messages(), vec![Bytes::from_static(b"hello")], "{g:?}");
    assert_eq!(chaos.attempts_for("unavailable"), 2);
    assert_eq!(attempt_headers(&chaos, "unavailable"), ["-", "2"]);
    assert!(
        chaos
            .requests()
            .iter()
            .all(|r| r.version == http::Version::HTTP_2),
        "the GRPC port is carried over h2c"
    );

    // INTERNAL (13) is not `unavailable`: the caller gets it at once.
    let g = grpc_call(
        &proxy,
        url,
        &[
            ("x-chaos-key", "internal"),
            ("x-chaos-fail-first", "1"),
            ("x-chaos-grpc-status", "13"),
        ],
        b"hello",
    )
    .await;
    assert_eq!(g.grpc_status(), Some(13), "{g:?}");
    assert_eq!(chaos.attempts_for("internal"), 1);

    let cluster = "outbound|50051||grpc-flaky.default.svc.cluster.local";
    assert_eq!(
        proxy
            .metric(&retries_series(cluster, "grpc_unavailable"))
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_connect_failure_is_retried_on_the_endpoint_that_listens() {
    let chaos = ChaosServer::start("half-up").await;
    let closed = ClosedPort::new();
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("half", &[closed.addr(), chaos.addr()])),
        (
            "dr.yaml",
            destination_rule("half", &[], Some("loadBalancer: {simple: ROUND_ROBIN}")),
        ),
        (
            "vs.yaml",
            virtual_service(
                "half",
                &["half"],
                "- retries: {attempts: 1, retryOn: connect-failure}\n  route: [{destination: {host: half}}]\n",
            ),
        ),
    ])
    .await;
    for i in 0..10 {
        let key = format!("k{i}");
        let r = proxy
            .get_with("http://half:9080/x", &[("x-chaos-key", &key)])
            .await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(chaos.attempts_for(&key), 1, "request {i}");
    }
    // Round robin gives the closed port first tries (all of them, in fact:
    // each retry's pick moves the rotation on to the closed port again).
    let cluster = "outbound|9080||half.default.svc.cluster.local";
    let retried = proxy
        .metric(&retries_series(cluster, "connect_failure"))
        .await
        .unwrap_or(0.0);
    assert!(retried >= 1.0, "no connect-failure retry in 10 requests");
}

#[tokio::test]
async fn attempts_are_counted_exactly() {
    let chaos = ChaosServer::start("down").await;
    let routes = "\
- match: [{uri: {prefix: /two}}]
  retries: {attempts: 2, retryOn: 5xx}
  route: [{destination: {host: down}}]
- match: [{uri: {prefix: /zero}}]
  retries: {attempts: 0, retryOn: 5xx}
  route: [{destination: {host: down}}]
- match: [{uri: {prefix: /unset}}]
  retries: {retryOn: 5xx}
  route: [{destination: {host: down}}]
";
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("down", &[chaos.addr()])),
        ("vs.yaml", virtual_service("down", &["down"], routes)),
    ])
    .await;
    // (path, upstream tries, x-trellis-retried)
    for (path, tries, retried) in [("/two", 3, "2"), ("/zero", 1, "0"), ("/unset", 1, "0")] {
        let r = proxy
            .get_with(
                &format!("http://down:9080{path}"),
                &[("x-chaos-fail", "100")],
            )
            .await;
        assert_eq!(r.status, 503, "{path}: {}", r.text());
        assert_eq!(chaos.attempts_for(path), tries, "{path}");
        assert_eq!(r.header("x-trellis-retried"), Some(retried), "{path}");
    }
    assert_eq!(attempt_headers(&chaos, "/two"), ["-", "2", "3"]);
    let cluster = "outbound|9080||down.default.svc.cluster.local";
    let metrics = proxy.metrics().await;
    for (series, n) in [
        (retries_series(cluster, "5xx"), 2.0),
        (denied_series(cluster, "attempts"), 3.0),
    ] {
        assert_eq!(metric_value(&metrics, &series), Some(n), "{series}");
    }
}

#[tokio::test]
async fn a_retry_goes_to_another_endpoint() {
    let bad = ChaosServer::start("bad").await;
    bad.set(Behavior {
        fail_percent: 100.0,
        ..Behavior::default()
    });
    let good = ChaosServer::start("good").await;
    // Random picks: only the retry's exclusion of the failed endpoint keeps
    // it from being picked again.
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("pair", &[bad.addr(), good.addr()])),
        (
            "dr.yaml",
            destination_rule("pair", &[], Some("loadBalancer: {simple: RANDOM}")),
        ),
        (
            "vs.yaml",
            virtual_service(
                "pair",
                &["pair"],
                "- retries: {attempts: 5, retryOn: 5xx}\n  route: [{destination: {host: pair}}]\n",
            ),
        ),
    ])
    .await;
    for i in 0..20 {
        let key = format!("k{i}");
        let r = proxy
            .get_with("http://pair:9080/x", &[("x-chaos-key", &key)])
            .await;
        assert_eq!(
            (r.status.as_u16(), r.upstream()),
            (200, "good"),
            "request {i}"
        );
        let at_bad = bad.attempts_for(&key);
        assert!(
            at_bad <= 1,
            "request {i} went to the failing endpoint {at_bad} times"
        );
        assert_eq!(good.attempts_for(&key), 1, "request {i}");
        let want = if at_bad == 1 { ["2"] } else { ["-"] };
        assert_eq!(attempt_headers(&good, &key), want, "request {i}");
    }
    assert!(
        bad.attempts() >= 1,
        "no first try picked the failing endpoint"
    );
    println!(
        "{} of 20 first tries failed and were retried elsewhere",
        bad.attempts()
    );
}

/// Bytes that show where a corruption happened (not one repeated byte).
fn patterned(len: usize) -> Bytes {
    (0..len)
        .map(|i| b"0123456789abcdefghijklmnopqrstuvwxyz"[(i * 7 + i / 36) % 36])
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn a_retried_post_sends_the_same_body_again() {
    // The chaos server reads the whole body and fails; the echo server
    // sends back what it got.
    let chaos = ChaosServer::start("eats-bodies").await;
    chaos.set(Behavior {
        fail_percent: 100.0,
        ..Behavior::default()
    });
    let echo = EchoServer::start("echo").await;
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("upload", &[chaos.addr(), echo.addr()])),
        (
            "dr.yaml",
            destination_rule("upload", &[], Some("loadBalancer: {simple: ROUND_ROBIN}")),
        ),
        (
            "vs.yaml",
            virtual_service(
                "upload",
                &["upload"],
                "- retries: {attempts: 2, retryOn: 5xx}\n  route: [{destination: {host: upload}}]\n",
            ),
        ),
    ])
    .await;
    let sizes = [1, 1000, 16 * 1024 + 3, 60 * 1024, 64 * 1024];
    let mut sent = 0;
    // Until at least three bodies went to the failing endpoint first.
    while chaos.attempts() < 3 {
        assert!(
            sent < 40,
            "the failing endpoint got {} of {sent} first tries",
            chaos.attempts()
        );
        let body = patterned(sizes[sent % sizes.len()]);
        let r = proxy
            .send(request(
                "POST",
                "http://upload:9080/echo-body",
                &[],
                body.clone(),
            ))
            .await;
        assert_eq!(
            (r.status.as_u16(), r.upstream()),
            (200, "echo"),
            "{}",
            r.text()
        );
        assert!(
            r.body == body,
            "POST of {} bytes came back as {} bytes, first difference at {:?}",
            body.len(),
            r.body.len(),
            r.body.iter().zip(body.iter()).position(|(a, b)| a != b)
        );
        sent += 1;
    }
    let cluster = "outbound|9080||upload.default.svc.cluster.local";
    assert_eq!(
        proxy.metric(&retries_series(cluster, "5xx")).await,
        Some(chaos.attempts() as f64),
        "every request the failing endpoint saw was retried"
    );
}

#[tokio::test]
async fn a_body_over_the_replay_buffer_is_not_retried() {
    let chaos = ChaosServer::start("big").await;
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("big", &[chaos.addr()])),
        (
            "vs.yaml",
            virtual_service(
                "big",
                &["big"],
                "- retries: {attempts: 3, retryOn: 5xx}\n  route: [{destination: {host: big}}]\n",
            ),
        ),
    ])
    .await;
    // 64 KiB fits the buffer exactly; one byte more does not.
    for (len, status, tries) in [
        (64 * 1024, 200, 2),
        (64 * 1024 + 1, 503, 1),
        (300_000, 503, 1),
    ] {
        let key = format!("len-{len}");
        let r = proxy
            .send(request(
                "POST",
                "http://big:9080/upload",
                &[("x-chaos-key", &key), ("x-chaos-fail-first", "1")],
                patterned(len),
            ))
            .await;
        assert_eq!(
            (r.status.as_u16(), chaos.attempts_for(&key)),
            (status, tries),
            "{len} bytes: (status, upstream attempts); {}",
            r.text()
        );
        if status == 503 {
            assert_eq!(r.header("x-trellis-retried"), Some("0"), "{len} bytes");
        }
    }
    let cluster = "outbound|9080||big.default.svc.cluster.local";
    assert_eq!(
        proxy.metric(&denied_series(cluster, "body")).await,
        Some(2.0)
    );
}

#[tokio::test]
async fn without_a_retry_policy_istios_default_retries_503_twice() {
    let chaos = ChaosServer::start("plain").await;
    let proxy = Proxy::start(&[("se.yaml", http_service("plain", &[chaos.addr()]))]).await;
    // (key, chaos headers, status, upstream attempts)
    let cases: &[(&str, Chaos, u16, u64)] = &[
        ("always-503", &[("x-chaos-fail", "100")], 503, 3),
        ("recovers", &[("x-chaos-fail-first", "2")], 200, 3),
        (
            "always-500",
            &[("x-chaos-fail", "100"), ("x-chaos-status", "500")],
            500,
            1,
        ),
        (
            "always-502",
            &[("x-chaos-fail", "100"), ("x-chaos-status", "502")],
            502,
            1,
        ),
    ];
    for &(key, headers, status, tries) in cases {
        let mut h = vec![("x-chaos-key", key)];
        h.extend_from_slice(headers);
        let r = proxy.get_with("http://plain:9080/x", &h).await;
        assert_eq!(
            (r.status.as_u16(), chaos.attempts_for(key)),
            (status, tries),
            "{key}: (status, upstream attempts)"
        );
    }
    let cluster = "outbound|9080||plain.default.svc.cluster.local";
    assert_eq!(
        proxy
            .metric(&retries_series(cluster, "retriable_status_code"))
            .await,
        Some(4.0)
    );
}

/// The keep-alive race: the upstream closes idle connections at random
/// moments, so the proxy now and then writes a request onto a connection the
/// upstream has just closed. Such a request never reached the upstream (or,
/// for an idempotent one, got no response at all) and must be sent again on
/// another connection, even with retries turned off.
#[tokio::test]
async fn the_keep_alive_race_loses_no_request() {
    const CLIENTS: usize = 10;
    const PER_CLIENT: usize = 220;
    let chaos = ChaosServer::start("closer").await;
    chaos.set(Behavior {
        idle_close: Some((Duration::from_millis(5), Duration::from_millis(50))),
        ..Behavior::default()
    });
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("closer", &[chaos.addr()])),
        (
            "vs.yaml",
            virtual_service(
                "closer",
                &["closer"],
                "- retries: {attempts: 0}\n  route: [{destination: {host: closer}}]\n",
            ),
        ),
    ])
    .await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        // One keep-alive connection per client, one request at a time.
        let client = http1_client_to(proxy.outbound());
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..PER_CLIENT {
                let pause = rand::random_range(0..=60);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let url = format!("http://closer:9080/c{c}/r{i}");
                match try_send(&client, get(&url)).await {
                    Ok((status, headers, body)) if status != 200 => failures.push(format!(
                        "{url}: {status} {:?} {}",
                        headers.get("x-trellis-reason"),
                        String::from_utf8_lossy(&body)
                    )),
                    Ok(_) => {}
                    Err(e) => failures.push(format!("{url}: {e}")),
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.expect("client task"));
    }
    let took = started.elapsed();
    let n = CLIENTS * PER_CLIENT;
    let cluster = "outbound|9080||closer.default.svc.cluster.local";
    let resent = proxy
        .metric(&retries_series(cluster, "never_sent"))
        .await
        .unwrap_or(0.0);
    println!(
        "keep-alive race: {} failures of {n} requests in {took:.1?}; upstream closed {} idle \
         connections of {}; the proxy resent {resent} requests",
        failures.len(),
        chaos.idle_closes(),
        chaos.connections(),
    );
    assert!(
        failures.is_empty(),
        "{} of {n} requests failed, e.g. {:?}; proxy output:\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        proxy.process.logs()
    );
    // Resent requests had not reached it: it served each request once.
    assert_eq!(chaos.attempts(), n as u64, "upstream attempts");
    assert!(
        chaos.idle_closes() > 100,
        "the upstream closed only {} idle connections: the race was not run",
        chaos.idle_closes()
    );
}
