//! Load balancing in the real binary: consistent hashing and round robin.

use std::collections::{BTreeMap, BTreeSet};

use trellis_testing::EchoServer;

use crate::support::*;

async fn three(prefix: &str) -> Vec<EchoServer> {
    let mut v = Vec::new();
    for i in 0..3 {
        v.push(EchoServer::start(&format!("{prefix}{i}")).await);
    }
    v
}

#[tokio::test]
async fn consistent_hash_on_a_header() {
    let eps = three("ep").await;
    let addrs: Vec<_> = eps.iter().map(|e| e.addr()).collect();
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("reviews", &addrs)),
        (
            "dr.yaml",
            destination_rule(
                "reviews",
                &[],
                Some("loadBalancer:\n  consistentHash:\n    httpHeaderName: x-user"),
            ),
        ),
    ])
    .await;

    // The same user always lands on the same endpoint, on h1 and h2c alike.
    let mut first = BTreeMap::new();
    for user in ["alice", "bob", "carol"] {
        let mut seen = BTreeSet::new();
        for i in 0..50 {
            let req = http::Request::get("http://reviews:9080/h")
                .header("x-user", user)
                .body(Default::default())
                .expect("request");
            let r = if i % 2 == 0 {
                proxy.send(req).await
            } else {
                proxy.send_h2(req).await
            };
            assert_eq!(r.status, 200, "{}", r.text());
            seen.insert(r.upstream().to_string());
        }
        assert_eq!(seen.len(), 1, "user {user} reached {seen:?}");
        first.insert(user, seen.into_iter().next().unwrap());
    }
    // Different users spread over more than one endpoint.
    let mut spread = BTreeSet::new();
    for i in 0..30 {
        let r = proxy
            .get_with("http://reviews:9080/h", &[("x-user", &format!("user-{i}"))])
            .await;
        spread.insert(r.upstream().to_string());
    }
    assert!(spread.len() > 1, "30 users all hashed to {spread:?}");
    // And a user's endpoint is stable over time.
    for (user, ep) in first {
        let r = proxy
            .get_with("http://reviews:9080/h", &[("x-user", user)])
            .await;
        assert_eq!(r.upstream(), ep, "user {user} moved");
    }
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let eps = three("rr").await;
    let addrs: Vec<_> = eps.iter().map(|e| e.addr()).collect();
    let proxy = Proxy::start(&[
        ("se.yaml", http_service("reviews", &addrs)),
        (
            "dr.yaml",
            destination_rule("reviews", &[], Some("loadBalancer:\n  simple: ROUND_ROBIN")),
        ),
    ])
    .await;
    let n = 900;
    let mut counts = BTreeMap::<String, usize>::new();
    for i in 0..n {
        let r = if i % 3 == 0 {
            proxy.send_h2(get("http://reviews:9080/rr")).await
        } else {
            proxy.get("http://reviews:9080/rr").await
        };
        assert_eq!(r.status, 200, "{}", r.text());
        *counts.entry(r.upstream().to_string()).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (ep, c) in &counts {
        let share = *c as f64 / n as f64;
        assert!(
            (share - 1.0 / 3.0).abs() <= 0.05,
            "{ep}: {c} of {n} ({counts:?})"
        );
    }
    let dump = proxy.config_dump().await;
    let lb = dump["config"]["clusters"]
        .as_array()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["name"] == "outbound|9080||reviews.default.svc.cluster.local")
        })
        .map(|c| c["load_balancer"].clone());
    assert_eq!(lb, Some(serde_json::json!("RoundRobin")));
}
