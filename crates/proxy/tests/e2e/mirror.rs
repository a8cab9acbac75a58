//! Request mirroring (VirtualService `mirror`, `mirrorPercentage`,
//! `mirrors`) in the real binary: copies reach the mirror with Host
//! `<host>-shadow`, the caller only ever sees the primary's response, the
//! share mirrored follows the percentage, and a mirror that never answers
//! neither slows the primary nor piles up copies past the per-worker limit.

use std::cell::Cell;
use std::time::{Duration, Instant};

use trellis_testing::{Behavior, ChaosServer};

use crate::support::*;

fn mirrored(cluster: &str, reason: &str) -> String {
    format!(r#"trellis_mirror_requests_total{{cluster="{cluster}",reason="{reason}"}}"#)
}

/// Wait until `server` has seen as many copies as the proxy counts `sent`,
/// and that number has not moved for 200 ms (copies are fire-and-forget, so
/// the last ones may land after the last primary response). Returns it.
async fn settled_copies(proxy: &Proxy, server: &ChaosServer, cluster: &str) -> u64 {
    let last = Cell::new((u64::MAX, Instant::now()));
    let sent = mirrored(cluster, "sent");
    eventually("mirrored copies to settle", Duration::from_secs(5), || {
        let (last, sent) = (&last, &sent);
        async move {
            let n = server.attempts();
            let counted = proxy.metric(sent).await.unwrap_or(0.0) as u64;
            let (prev, since) = last.get();
            if n != prev {
                last.set((n, Instant::now()));
                return None;
            }
            (counted == n && since.elapsed() >= Duration::from_millis(200)).then_some(n)
        }
    })
    .await
}

#[tokio::test]
async fn copies_go_to_the_mirror_with_a_shadow_host() {
    let primary = ChaosServer::start("reviews").await;
    let shadow = ChaosServer::start("shadow").await;
    let shadow2 = ChaosServer::start("shadow2").await;
    // The mirror's answers are thrown away, failures included.
    shadow.set(Behavior {
        fail_percent: 100.0,
        ..Behavior::default()
    });
    let services = [
        http_service("reviews", &[primary.addr()]),
        http_service("ratings", &[primary.addr()]),
        http_service("shadow", &[shadow.addr()]),
        http_service("shadow2", &[shadow2.addr()]),
    ];
    let vs = [
        virtual_service(
            "reviews",
            &["reviews"],
            "- route: [{destination: {host: reviews}}]\n  mirror: {host: shadow}\n  mirrorPercentage: {value: 100}\n",
        ),
        virtual_service(
            "ratings",
            &["ratings"],
            "- route: [{destination: {host: ratings}}]\n  mirrors:\n  - {destination: {host: shadow}, percentage: {value: 100}}\n  - {destination: {host: shadow2}}\n",
        ),
    ];
    let proxy = Proxy::start(&[
        ("se.yaml", services.join("---\n")),
        ("vs.yaml", vs.join("---\n")),
    ])
    .await;

    for i in 0..10 {
        let r = proxy
            .get_with(
                &format!("http://reviews:9080/r/{i}"),
                &[("x-test", "mirror")],
            )
            .await;
        assert_eq!((r.status.as_u16(), r.upstream()), (200, "reviews"));
    }
    assert_eq!(
        settled_copies(&proxy, &shadow, &cluster_9080("shadow")).await,
        10
    );
    let copies = shadow.requests();
    for (i, seen) in copies.iter().enumerate() {
        let host = seen.headers.get("host").and_then(|v| v.to_str().ok());
        assert_eq!(host, Some("reviews-shadow:9080"), "copy {i}: {seen:?}");
        assert!(seen.uri.path().starts_with("/r/"), "{seen:?}");
        assert_eq!(
            seen.headers.get("x-test").and_then(|v| v.to_str().ok()),
            Some("mirror")
        );
    }
    // The primary gets the request with its own Host.
    for seen in primary.requests() {
        let host = seen.headers.get("host").and_then(|v| v.to_str().ok());
        assert_eq!(host, Some("reviews:9080"), "{seen:?}");
    }

    // `mirrors`: each listed destination gets its copy.
    for i in 0..5 {
        let r = proxy.get(&format!("http://ratings:9080/m/{i}")).await;
        assert_eq!((r.status.as_u16(), r.upstream()), (200, "reviews"));
    }
    assert_eq!(
        settled_copies(&proxy, &shadow2, &cluster_9080("shadow2")).await,
        5
    );
    assert_eq!(
        settled_copies(&proxy, &shadow, &cluster_9080("shadow")).await,
        15
    );
    let last = shadow2.requests();
    assert!(
        last.iter()
            .all(|s| s.headers.get("host").and_then(|v| v.to_str().ok())
                == Some("ratings-shadow:9080")),
        "{last:?}"
    );
    assert_eq!(primary.attempts(), 15);
}

#[tokio::test]
async fn a_quarter_of_the_requests_are_mirrored() {
    let primary = ChaosServer::start("reviews").await;
    let shadow = ChaosServer::start("shadow").await;
    let proxy = Proxy::start(&[
        (
            "se.yaml",
            [
                http_service("reviews", &[primary.addr()]),
                http_service("shadow", &[shadow.addr()]),
            ]
            .join("---\n"),
        ),
        (
            "vs.yaml",
            virtual_service(
                "reviews",
                &["reviews"],
                "- route: [{destination: {host: reviews}}]\n  mirror: {host: shadow}\n  mirrorPercentage: {value: 25}\n",
            ),
        ),
    ])
    .await;
    const N: u64 = 400;
    let replies = send_many(&proxy, &proxy.h1, N as usize, 8, |i| {
        get(&format!("http://reviews:9080/{i}"))
    })
    .await;
    assert!(replies.iter().all(|t| t.reply.status == 200));
    let copies = settled_copies(&proxy, &shadow, &cluster_9080("shadow")).await;
    println!("mirrored {copies} of {N}");
    // Expected 100, standard deviation 8.7: 60..=140 is 4.6 of them.
    assert!((60..=140).contains(&copies), "mirrored {copies} of {N}");
    assert_eq!(primary.attempts(), N);
}

#[tokio::test]
async fn a_hanging_mirror_does_not_slow_the_primary() {
    let primary = ChaosServer::start("reviews").await;
    let shadow = ChaosServer::start("shadow").await;
    shadow.set(Behavior {
        hang: true,
        ..Behavior::default()
    });
    let cluster = cluster_9080("shadow");
    let proxy = Proxy::start(&[
        (
            "se.yaml",
            [
                http_service("reviews", &[primary.addr()]),
                http_service("shadow", &[shadow.addr()]),
            ]
            .join("---\n"),
        ),
        (
            "vs.yaml",
            virtual_service(
                "reviews",
                &["reviews"],
                "- route: [{destination: {host: reviews}}]\n  mirror: {host: shadow}\n",
            ),
        ),
    ])
    .await;
    // One h2c connection, so one worker: its limit of 256 copies in flight
    // is reached after 256 requests, and the rest are skipped.
    const N: usize = 300;
    let started = Instant::now();
    let replies = send_many(&proxy, &proxy.h2, N, 8, |i| {
        get(&format!("http://reviews:9080/{i}"))
    })
    .await;
    let elapsed = started.elapsed();
    let slowest = replies.iter().map(|t| t.took).max().unwrap_or_default();
    println!("{N} primaries in {elapsed:?}, slowest {slowest:?}");
    for t in &replies {
        assert_eq!(
            (t.reply.status.as_u16(), t.reply.upstream()),
            (200, "reviews")
        );
    }
    // The copies wait for up to 10 s (no route timeout); the primaries not.
    assert!(
        slowest < Duration::from_millis(500),
        "a primary took {slowest:?}"
    );
    eventually(
        "256 copies to hang at the mirror",
        Duration::from_secs(5),
        || async { (shadow.attempts() == 256).then_some(()) },
    )
    .await;
    let skipped = proxy.metric(&mirrored(&cluster, "skipped_limit")).await;
    let failed = proxy.metric(&mirrored(&cluster, "failed")).await;
    assert_eq!(proxy.metric(&mirrored(&cluster, "sent")).await, Some(0.0));
    if elapsed < Duration::from_secs(9) {
        // No copy can have timed out yet, so none freed its slot.
        assert_eq!(failed, Some(0.0));
        assert_eq!(skipped, Some((N - 256) as f64));
    } else {
        assert!(skipped >= Some(1.0), "{skipped:?}");
    }
    assert_eq!(primary.attempts(), N as u64);
}

#[tokio::test]
async fn request_bodies_are_mirrored_up_to_the_replay_buffer() {
    let primary = ChaosServer::start("reviews").await;
    let shadow = ChaosServer::start("shadow").await;
    let proxy = Proxy::start(&[
        (
            "se.yaml",
            [
                http_service("reviews", &[primary.addr()]),
                http_service("shadow", &[shadow.addr()]),
            ]
            .join("---\n"),
        ),
        (
            "vs.yaml",
            virtual_service(
                "reviews",
                &["reviews"],
                "- route: [{destination: {host: reviews}}]\n  mirror: {host: shadow}\n",
            ),
        ),
    ])
    .await;
    let body = bytes::Bytes::from(vec![b'x'; 10_000]);
    for i in 0..4u32 {
        let req = http::Request::post(format!("http://reviews:9080/post/{i}"))
            .body(http_body_util::Full::new(body.clone()))
            .expect("request");
        let r = if i.is_multiple_of(2) {
            proxy.send(req).await
        } else {
            proxy.send_h2(req).await
        };
        assert_eq!((r.status.as_u16(), r.upstream()), (200, "reviews"));
    }
    let cluster = cluster_9080("shadow");
    assert_eq!(settled_copies(&proxy, &shadow, &cluster).await, 4);
    for seen in shadow.requests() {
        assert_eq!(seen.method, http::Method::POST);
        let len = seen
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok());
        assert_eq!(len, Some("10000"), "{seen:?}");
    }
    // A body past the 64 KiB replay buffer cannot be copied: the primary
    // goes through, the copy is skipped and counted.
    let req = http::Request::post("http://reviews:9080/big")
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'x';
            100_000
        ])))
        .expect("request");
    let r = proxy.send(req).await;
    assert_eq!((r.status.as_u16(), r.upstream()), (200, "reviews"));
    proxy
        .wait_metric(
            &mirrored(&cluster, "skipped_body"),
            1.0,
            Duration::from_secs(2),
        )
        .await;
    assert_eq!(shadow.attempts(), 4);
}
