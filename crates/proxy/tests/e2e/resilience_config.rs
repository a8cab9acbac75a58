//! Resilience config the proxy cannot honour is refused through the real
//! binary, naming file, resource, field and reason: at startup the proxy
//! exits with code 2; on a hot reload the change is rejected and the last
//! good config, resilience policies included, keeps serving.

use std::time::Duration;

use trellis_testing::{ChaosServer, ProxyProcess, StartError};

use crate::support::*;

const REJECTED: &str = r#"trellis_config_reloads_total{result="rejected"}"#;

/// One config the proxy cannot honour, written as `bad.yaml` next to
/// [`services`].
struct Bad {
    what: &'static str,
    yaml: String,
    resource: &'static str,
    field: &'static str,
    reason: &'static str,
}

/// `reviews` (HTTP 9080) and `db` (TCP 5432 only), both on `addr`.
fn services(addr: std::net::SocketAddr) -> String {
    [
        http_service("reviews", &[addr]),
        service_entry("db", &[(5432, "tcp", "TCP")], &[(addr, &[])]),
    ]
    .join("---\n")
}

/// A VirtualService for `reviews` with one HTTP route: `extra` fields, then
/// the route to `to`.
fn reviews_route(extra: &str, to: &str) -> String {
    virtual_service(
        "reviews",
        &["reviews"],
        &format!("- {extra}\n  route: [{{destination: {{host: {to}}}}}]\n"),
    )
}

fn cases() -> Vec<Bad> {
    vec![
        Bad {
            what: "retries on an HTTP route to a TCP port",
            yaml: reviews_route("retries: {attempts: 2}", "db"),
            resource: "VirtualService default/reviews",
            field: "spec.http[0].retries",
            reason: "retries cannot be honoured: route[0].destination sends to port 5432 of db.default.svc.cluster.local, which is TCP",
        },
        Bad {
            what: "an unknown retryOn condition",
            yaml: reviews_route(
                "retries: {attempts: 2, retryOn: '5xx,retriable-headers'}",
                "reviews",
            ),
            resource: "VirtualService default/reviews",
            field: "spec.http[0].retries.retryOn",
            reason: "unknown retry condition \"retriable-headers\": supported are 5xx",
        },
        Bad {
            what: "an abort percentage over 100",
            yaml: reviews_route(
                "fault: {abort: {httpStatus: 503, percentage: {value: 150}}}",
                "reviews",
            ),
            resource: "VirtualService default/reviews",
            field: "spec.http[0].fault.abort.percentage.value",
            reason: "150 must be between 0 and 100",
        },
        Bad {
            what: "a mirror percentage over 100",
            yaml: reviews_route(
                "mirror: {host: reviews}\n  mirrorPercentage: {value: 101}",
                "reviews",
            ),
            resource: "VirtualService default/reviews",
            field: "spec.http[0].mirrorPercentage.value",
            reason: "101 must be between 0 and 100",
        },
        Bad {
            what: "a negative fault delay",
            yaml: reviews_route("fault: {delay: {fixedDelay: -50ms}}", "reviews"),
            resource: "VirtualService default/reviews",
            field: "spec.http[0].fault.delay.fixedDelay",
            reason: "invalid duration \"-50ms\"",
        },
        Bad {
            what: "a negative outlier detection interval",
            yaml: destination_rule(
                "reviews",
                &[],
                Some("outlierDetection: {consecutive5xxErrors: 3, interval: -1s}"),
            ),
            resource: "DestinationRule default/reviews",
            field: "spec.trafficPolicy.outlierDetection.interval",
            reason: "invalid duration \"-1s\"",
        },
        Bad {
            what: "a negative connect timeout",
            yaml: destination_rule(
                "reviews",
                &[],
                Some("connectionPool: {tcp: {connectTimeout: -2s}}"),
            ),
            resource: "DestinationRule default/reviews",
            field: "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
            reason: "invalid duration \"-2s\"",
        },
        Bad {
            what: "a negative rate limit fill interval",
            yaml: rate_limit_policy("rl", "reviews", &[], "{maxTokens: 5, fillInterval: -1s}"),
            resource: "RateLimitPolicy default/rl",
            field: "spec.tokenBucket.fillInterval",
            reason: "invalid duration \"-1s\"",
        },
    ]
}

#[tokio::test]
async fn refuses_to_start_with_config_it_cannot_honour() {
    let addr = "127.0.0.1:1".parse().expect("addr");
    for bad in cases() {
        let dir = ConfigDir::new();
        dir.write("se.yaml", &services(addr));
        dir.write("bad.yaml", &bad.yaml);
        let err = ProxyProcess::command(bin())
            .args(sidecar_args(dir.path()))
            .start()
            .await
            .err()
            .unwrap_or_else(|| panic!("the proxy started with {}", bad.what));
        let StartError::Exited { status, logs } = err else {
            panic!("{}: expected the proxy to exit, got: {err}", bad.what);
        };
        assert_eq!(status.code(), Some(2), "{}: {logs}", bad.what);
        assert!(logs.contains("cannot start"), "{}: {logs}", bad.what);
        let file = dir.file("bad.yaml").display().to_string();
        for needle in [file.as_str(), bad.resource, bad.field, bad.reason] {
            assert!(
                logs.contains(needle),
                "{}: {needle:?} missing from:\n{logs}",
                bad.what
            );
        }
    }
}

/// The good VirtualService for `reviews`, with resilience policies of its
/// own so that "the last good config keeps serving" covers them: /teapot is
/// aborted with 418, the rest goes through without retries.
fn good_routes() -> String {
    virtual_service(
        "reviews",
        &["reviews"],
        "- match: [{uri: {prefix: /teapot}}]\n  fault: {abort: {httpStatus: 418}}\n  route: [{destination: {host: reviews}}]\n\
         - retries: {attempts: 0}\n  route: [{destination: {host: reviews}}]\n",
    )
}

/// The good config is in force: its routes, fault and retry policy.
async fn serves_good_config(proxy: &Proxy, up: &ChaosServer) {
    let r = proxy.get("http://reviews:9080/ok").await;
    assert_eq!((r.status.as_u16(), r.upstream()), (200, "reviews"));
    proxy
        .get("http://reviews:9080/teapot")
        .await
        .assert_local(418, "fault_injected");
    // No retries: a failure reaches the caller after one attempt.
    let before = up.attempts();
    let r = proxy
        .get_with("http://reviews:9080/fail", &[("x-chaos-fail", "100")])
        .await;
    assert_eq!((r.status.as_u16(), r.reason()), (503, None), "{}", r.text());
    assert_eq!(up.attempts(), before + 1);
}

#[tokio::test]
async fn a_reload_it_cannot_honour_is_rejected_and_the_last_good_config_serves() {
    let up = ChaosServer::start("reviews").await;
    let proxy = Proxy::start(&[("se.yaml", services(up.addr())), ("vs.yaml", good_routes())]).await;
    let mut serving = proxy.generation().await;
    serves_good_config(&proxy, &up).await;

    let mut rejected = 0.0;
    for bad in cases() {
        // The VirtualService cases replace the good one; the others sit
        // beside it.
        let file = if bad.resource.starts_with("VirtualService") {
            "vs.yaml"
        } else {
            "bad.yaml"
        };
        proxy.config.write(file, &bad.yaml);
        rejected += 1.0;
        proxy
            .wait_metric(REJECTED, rejected, Duration::from_secs(5))
            .await;
        let dump = proxy.config_dump().await;
        let errors = dump["last_rejected"]["errors"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(errors.len(), 1, "{}: {}", bad.what, dump["last_rejected"]);
        let e = &errors[0];
        let path = proxy.config.file(file).display().to_string();
        assert_eq!(e["file"], path.as_str(), "{}: {e}", bad.what);
        assert_eq!(e["resource"], bad.resource, "{}: {e}", bad.what);
        assert_eq!(e["field"], bad.field, "{}: {e}", bad.what);
        assert!(
            e["reason"].as_str().unwrap_or("").contains(bad.reason),
            "{}: {e}",
            bad.what
        );
        let logs = proxy.process.logs();
        assert!(
            logs.lines().any(|l| l.contains("config rejected")
                && l.contains(&path)
                && l.contains(bad.field)
                && l.contains(&format!("still serving generation {serving}"))),
            "{}: no log line names the file, the field and the generation kept:\n{logs}",
            bad.what
        );
        assert_eq!(proxy.generation().await, serving, "{}", bad.what);
        serves_good_config(&proxy, &up).await;

        // Put the good config back before the next case.
        if file == "bad.yaml" {
            proxy.config.remove("bad.yaml");
        } else {
            proxy.config.write("vs.yaml", &good_routes());
        }
        serving = proxy
            .wait_generation_above(serving, Duration::from_secs(5))
            .await;
        serves_good_config(&proxy, &up).await;
    }
}
