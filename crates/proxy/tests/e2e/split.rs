//! Weighted splits over subsets.

use std::collections::BTreeMap;
use std::sync::Arc;

use trellis_testing::EchoServer;

use crate::support::*;

/// Send `n` requests for `url` over `concurrency` keep-alive connections and
/// count which upstream answered each.
async fn tally(
    proxy: &Arc<Proxy>,
    url: &str,
    n: usize,
    concurrency: usize,
) -> BTreeMap<String, usize> {
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let proxy = proxy.clone();
        let url = url.to_string();
        let count = n / concurrency + usize::from(t < n % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut seen = BTreeMap::<String, usize>::new();
            for _ in 0..count {
                let r = proxy.get(&url).await;
                assert_eq!(r.status, 200, "{}", r.text());
                *seen.entry(r.upstream().to_string()).or_default() += 1;
            }
            seen
        }));
    }
    let mut total = BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.expect("client task") {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

#[track_caller]
fn assert_share(counts: &BTreeMap<String, usize>, name: &str, want_percent: f64, n: usize) {
    let got = *counts.get(name).unwrap_or(&0) as f64 * 100.0 / n as f64;
    assert!(
        (got - want_percent).abs() <= 3.0,
        "{name}: {got:.1}% of {n} requests, want {want_percent}% ± 3; all: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_80_20_and_three_way() {
    let v1 = EchoServer::start("v1").await;
    let v2 = EchoServer::start("v2").await;
    let v3 = EchoServer::start("v3").await;
    let host = "reviews";
    let se = service_entry(
        host,
        HTTP_9080,
        &[
            (v1.addr(), &[("version", "v1")]),
            (v2.addr(), &[("version", "v2")]),
            (v3.addr(), &[("version", "v3")]),
        ],
    );
    let proxy = Arc::new(
        Proxy::start(&[
            ("se.yaml", se),
            ("dr.yaml", destination_rule(host, &["v1", "v2", "v3"], None)),
            ("vs.yaml", split_vs(host, &[("v1", 80), ("v2", 20)])),
        ])
        .await,
    );
    // 3000 requests: one standard deviation of the 20% share is 0.73
    // points, so ±3 points is over 4 sigma (not flaky).
    let n = 3000;
    let counts = tally(&proxy, "http://reviews:9080/split", n, 8).await;
    assert_eq!(counts.values().sum::<usize>(), n);
    assert_share(&counts, "v1", 80.0, n);
    assert_share(&counts, "v2", 20.0, n);
    assert_eq!(counts.get("v3"), None, "v3 has weight 0: {counts:?}");

    let g = proxy.generation().await;
    proxy.config.write(
        "vs.yaml",
        &split_vs(host, &[("v1", 50), ("v2", 30), ("v3", 20)]),
    );
    proxy
        .wait_generation_above(g, std::time::Duration::from_secs(5))
        .await;
    // 4000: the 50% share's standard deviation is 0.79 points.
    let n = 4000;
    let counts = tally(&proxy, "http://reviews:9080/split", n, 8).await;
    assert_share(&counts, "v1", 50.0, n);
    assert_share(&counts, "v2", 30.0, n);
    assert_share(&counts, "v3", 20.0, n);
}
