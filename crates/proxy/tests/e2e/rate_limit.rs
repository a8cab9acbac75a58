//! Local rate limiting (Trellis `RateLimitPolicy`) in the real binary: a
//! token bucket for a whole host or for named routes, shared by the
//! proxy's workers, refilled every `fillInterval`; requests over it get 429
//! `rate_limited` and are counted by policy.

use std::time::Duration;

use trellis_testing::ChaosServer;

use crate::support::*;

fn limited(policy: &str) -> String {
    format!(r#"trellis_rate_limited_total{{policy="{policy}"}}"#)
}

/// `GET url`, over HTTP/1.1 and h2c in turn so that both workers (and so
/// the bucket they share) are exercised.
async fn get_alternating(proxy: &Proxy, url: &str, i: usize) -> Reply {
    if i.is_multiple_of(2) {
        proxy.get(url).await
    } else {
        proxy.send_h2(get(url)).await
    }
}

#[tokio::test]
async fn a_host_wide_bucket_lets_five_through_then_refuses() {
    let up = ChaosServer::start("details").await;
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("details", &[up.addr()])),
        (
            "rl.yaml",
            rate_limit_policy("rl", "details", &[], "{maxTokens: 5, fillInterval: 1h}"),
        ),
    ])
    .await;
    for i in 0..5 {
        let r = get_alternating(&proxy, &format!("http://details:9080/{i}"), i).await;
        assert_eq!(
            (r.status.as_u16(), r.upstream()),
            (200, "details"),
            "request {i}"
        );
    }
    for i in 5..8 {
        let r = get_alternating(&proxy, &format!("http://details:9080/{i}"), i).await;
        r.assert_local(429, "rate_limited");
        assert!(r.text().contains("default/rl"), "{}", r.text());
    }
    assert_eq!(up.attempts(), 5, "a refused request reached the upstream");
    assert_eq!(proxy.metric(&limited("default/rl")).await, Some(3.0));
}

#[tokio::test]
async fn a_per_route_bucket_limits_only_its_route() {
    let up = ChaosServer::start("reviews").await;
    let vs = virtual_service(
        "reviews",
        &["reviews"],
        "- name: canary\n  match: [{headers: {x-canary: {exact: 'true'}}}]\n  route: [{destination: {host: reviews}}]\n\
         - name: main\n  route: [{destination: {host: reviews}}]\n",
    );
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("reviews", &[up.addr()])),
        ("vs.yaml", vs),
        (
            "rl.yaml",
            rate_limit_policy(
                "rl-canary",
                "reviews",
                &["canary"],
                "{maxTokens: 2, fillInterval: 1h}",
            ),
        ),
    ])
    .await;
    let canary = [("x-canary", "true")];
    for _ in 0..2 {
        let r = proxy.get_with("http://reviews:9080/", &canary).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for _ in 0..3 {
        proxy
            .get_with("http://reviews:9080/", &canary)
            .await
            .assert_local(429, "rate_limited");
        // The other route of the same host is not limited.
        for _ in 0..5 {
            let r = proxy.get("http://reviews:9080/").await;
            assert_eq!((r.status.as_u16(), r.upstream()), (200, "reviews"));
        }
    }
    assert_eq!(up.attempts(), 2 + 15);
    assert_eq!(
        proxy.metric(&limited("default/rl-canary|canary")).await,
        Some(3.0)
    );
}

#[tokio::test]
async fn the_bucket_refills_after_its_fill_interval() {
    let up = ChaosServer::start("ratings").await;
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("ratings", &[up.addr()])),
        (
            "rl.yaml",
            rate_limit_policy("rl", "ratings", &[], "{maxTokens: 2, fillInterval: 500ms}"),
        ),
    ])
    .await;
    // Empty the bucket (a refill may land in between on a slow machine, so
    // take tokens until one is refused).
    let mut passed = 0;
    loop {
        let r = proxy.get("http://ratings:9080/").await;
        if r.status == 429 {
            r.assert_local(429, "rate_limited");
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        passed += 1;
        assert!(passed <= 4, "the bucket of 2 let {passed} requests through");
    }
    assert!(passed >= 2, "a full bucket of 2 let only {passed} through");
    // After a fill interval requests pass again.
    eventually("the bucket to refill", Duration::from_secs(3), || async {
        let r = proxy.get("http://ratings:9080/").await;
        (r.status == 200).then_some(())
    })
    .await;
    assert!(proxy.metric(&limited("default/rl")).await >= Some(1.0));
    assert_eq!(up.attempts() as usize, passed + 1);
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_bucket() {
    let up = ChaosServer::start("details").await;
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("details", &[up.addr()])),
        (
            "rl.yaml",
            rate_limit_policy("rl", "details", &[], "{maxTokens: 3, fillInterval: 1h}"),
        ),
    ])
    .await;
    for _ in 0..3 {
        assert_eq!(proxy.get("http://details:9080/").await.status, 200);
    }
    proxy
        .get("http://details:9080/")
        .await
        .assert_local(429, "rate_limited");
    // An unrelated change: the bucket must not come back full, or every
    // config push would hand out a fresh burst.
    let g = proxy.generation().await;
    proxy
        .config
        .write("other.yaml", &http_service("other", &[up.addr()]));
    proxy.wait_generation_above(g, Duration::from_secs(5)).await;
    proxy
        .get("http://details:9080/")
        .await
        .assert_local(429, "rate_limited");
    // A changed bucket is a new bucket, full.
    proxy.config.write(
        "rl.yaml",
        &rate_limit_policy("rl", "details", &[], "{maxTokens: 4, fillInterval: 1h}"),
    );
    eventually("the new bucket", Duration::from_secs(5), || async {
        (proxy.get("http://details:9080/").await.status == 200).then_some(())
    })
    .await;
    assert_eq!(up.attempts(), 4);
}
