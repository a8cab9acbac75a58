//! Tests of the whole [`Balancer`]: policies wired to endpoints, health,
//! exclusion and locality. The policies' own tables are tested in their files.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Uri, header};

use super::*;

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 80))
}

fn ep(i: u8, weight: u32, locality: &str) -> Arc<Endpoint> {
    Arc::new(Endpoint::new(
        addr(i),
        weight,
        Locality::parse(locality),
        BTreeMap::new(),
    ))
}

/// Endpoints 1..=n, weight 1, no locality.
fn eps(n: u8) -> Vec<Arc<Endpoint>> {
    (1..=n).map(|i| ep(i, 1, "")).collect()
}

fn ring(key: HashKey) -> LbPolicy {
    LbPolicy::RingHash {
        key,
        minimum_ring_size: 0,
    }
}

fn all_policies() -> Vec<LbPolicy> {
    vec![
        LbPolicy::RoundRobin,
        LbPolicy::LeastRequest,
        LbPolicy::Random,
        LbPolicy::PeakEwma,
        ring(HashKey::SourceIp),
    ]
}

fn balancer(policy: LbPolicy, endpoints: Vec<Arc<Endpoint>>) -> Balancer {
    Balancer::with_seed(
        policy,
        &LocalityLb::default(),
        &Locality::default(),
        endpoints,
        0,
    )
}

/// The last octet of a test address.
fn octet(a: SocketAddr) -> u8 {
    match a.ip() {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(_) => unreachable!("test endpoints are IPv4"),
    }
}

fn rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

/// A hash for the `k`-th simulated request (ring hash varies it; others ignore it).
fn key(k: u32) -> Option<u64> {
    Some(hash_key::hash_bytes(&k.to_le_bytes()))
}

/// Picks `n` times and counts the last address octet chosen.
fn counts(b: &Balancer, n: u32, exclude: &[SocketAddr], seed: u64) -> BTreeMap<u8, u32> {
    let mut rng = rng(seed);
    let now = Instant::now();
    let mut out = BTreeMap::new();
    for k in 0..n {
        let e = b.pick_with(key(k), exclude, &mut rng, now).expect("a pick");
        *out.entry(octet(e.addr)).or_default() += 1;
    }
    out
}

#[test]
fn defaults() {
    assert_eq!(LbPolicy::default(), LbPolicy::LeastRequest);
    assert_eq!(
        LocalityLb::default(),
        LocalityLb {
            enabled: true,
            failover: vec![]
        }
    );
}

#[test]
fn balancer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Balancer>();
    check::<Arc<Endpoint>>();
    check::<RequestGuard>();
}

#[test]
fn no_endpoints_or_none_healthy_is_none() {
    for policy in all_policies() {
        let empty = balancer(policy.clone(), vec![]);
        assert!(
            empty
                .pick_with(key(1), &[], &mut rng(1), Instant::now())
                .is_none()
        );
        assert!(empty.pick(None, &[]).is_none());

        let b = balancer(policy.clone(), eps(3));
        for e in b.endpoints() {
            e.set_healthy(false);
        }
        for k in 0..50 {
            assert!(
                b.pick_with(key(k), &[], &mut rng(2), Instant::now())
                    .is_none(),
                "{policy:?}"
            );
            assert!(b.pick(None, &[addr(1)]).is_none(), "{policy:?}");
        }
        // One comes back.
        b.endpoints()[1].set_healthy(true);
        for k in 0..50 {
            assert_eq!(b.pick(key(k), &[]).unwrap().addr, addr(2), "{policy:?}");
        }
    }
}

#[test]
fn unhealthy_endpoints_are_skipped() {
    for policy in all_policies() {
        let b = balancer(policy.clone(), eps(4));
        b.endpoints()[2].set_healthy(false);
        let got = counts(&b, 4000, &[], 3);
        assert!(!got.contains_key(&3), "{policy:?}: {got:?}");
        assert_eq!(got.len(), 3, "{policy:?} uses the other three: {got:?}");
    }
}

fn eject(e: &Endpoint, ejected: bool) {
    e.outlier()
        .ejected
        .store(ejected, std::sync::atomic::Ordering::Relaxed);
}

#[test]
fn ejected_endpoints_are_never_picked() {
    // (endpoints, ejected, unhealthy, expected picks)
    type Case = (u8, &'static [usize], &'static [usize], &'static [u8]);
    let cases: &[Case] = &[
        (4, &[1], &[], &[1, 3, 4]),
        (4, &[0, 3], &[], &[2, 3]),
        (4, &[0], &[1], &[3, 4]),
        (3, &[0, 1], &[2], &[]),
        (3, &[0, 1, 2], &[], &[]),
        (1, &[], &[], &[1]),
    ];
    for policy in all_policies() {
        for (n, ejected, unhealthy, want) in cases {
            let b = balancer(policy.clone(), eps(*n));
            for &i in *ejected {
                eject(&b.endpoints()[i], true);
            }
            for &i in *unhealthy {
                b.endpoints()[i].set_healthy(false);
            }
            assert!(!b.in_panic(), "min_health_percent 0 never panics");
            let mut r = rng(7);
            let mut got = std::collections::BTreeSet::new();
            for k in 0..400 {
                if let Some(e) = b.pick_with(key(k), &[], &mut r, Instant::now()) {
                    got.insert(octet(e.addr));
                }
            }
            let want: std::collections::BTreeSet<u8> = want.iter().copied().collect();
            assert_eq!(
                got, want,
                "{policy:?} ejected {ejected:?} unhealthy {unhealthy:?}"
            );
        }
    }
}

#[test]
fn panic_below_min_health_percent_ignores_ejections() {
    // (endpoints, ejected, unhealthy, min_health_percent, panic, expected picks)
    type Case = (
        u8,
        &'static [usize],
        &'static [usize],
        u32,
        bool,
        &'static [u8],
    );
    let cases: &[Case] = &[
        // 2 of 4 usable = 50%: not below 50, so ejections hold.
        (4, &[0, 1], &[], 50, false, &[3, 4]),
        // 1 of 4 usable = 25% < 50: panic, ejected ones are picked again.
        (4, &[0, 1, 2], &[], 50, true, &[1, 2, 3, 4]),
        // Unhealthy endpoints count against health and stay skipped.
        (4, &[0, 1], &[3], 50, true, &[1, 2, 3]),
        // Everything ejected: panic spreads over all rather than a 503.
        (3, &[0, 1, 2], &[], 1, true, &[1, 2, 3]),
        // 0 disables panic even with everything ejected.
        (3, &[0, 1, 2], &[], 0, false, &[]),
        // 100 panics as soon as one endpoint is out.
        (4, &[2], &[], 100, true, &[1, 2, 3, 4]),
        (4, &[], &[], 100, false, &[1, 2, 3, 4]),
        // Istio's example: 10 endpoints, minHealthPercent 70, 3 ejected is fine.
        (10, &[0, 1, 2], &[], 70, false, &[4, 5, 6, 7, 8, 9, 10]),
        (
            10,
            &[0, 1, 2, 3],
            &[],
            70,
            true,
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        ),
    ];
    for policy in all_policies() {
        for &(n, ejected, unhealthy, pct, panic, want) in cases {
            let b = balancer(policy.clone(), eps(n)).with_min_health_percent(pct);
            assert_eq!(b.min_health_percent(), pct);
            for &i in ejected {
                eject(&b.endpoints()[i], true);
            }
            for &i in unhealthy {
                b.endpoints()[i].set_healthy(false);
            }
            let label =
                format!("{policy:?} n {n} ejected {ejected:?} unhealthy {unhealthy:?} {pct}%");
            assert_eq!(b.in_panic(), panic, "{label}");
            let mut r = rng(11);
            let mut got = std::collections::BTreeSet::new();
            for k in 0..2000 {
                if let Some(e) = b.pick_with(key(k), &[], &mut r, Instant::now()) {
                    got.insert(octet(e.addr));
                }
            }
            let want: std::collections::BTreeSet<u8> = want.iter().copied().collect();
            assert_eq!(got, want, "{label}");
        }
    }
}

#[test]
fn exclude_falls_back_to_a_repeat_not_an_ejected_endpoint() {
    for policy in all_policies() {
        let b = balancer(policy.clone(), eps(3));
        eject(&b.endpoints()[0], true);
        // 2 and 3 tried: repeat one of them rather than use the ejected 1.
        let got = counts(&b, 300, &[addr(2), addr(3)], 9);
        assert!(!got.contains_key(&1), "{policy:?}: {got:?}");
        assert_eq!(got.values().sum::<u32>(), 300, "{policy:?}");
        // Un-ejected: it is the untried one again.
        eject(&b.endpoints()[0], false);
        let got = counts(&b, 300, &[addr(2), addr(3)], 9);
        assert_eq!(got, BTreeMap::from([(1, 300)]), "{policy:?}");
    }
}

#[test]
fn exclude_is_honoured_when_alternatives_exist() {
    for policy in all_policies() {
        let b = balancer(policy.clone(), eps(3));
        let got = counts(&b, 500, &[addr(1), addr(3)], 4);
        assert_eq!(got, BTreeMap::from([(2, 500)]), "{policy:?}");

        // Excluded plus unhealthy: the one left.
        b.endpoints()[1].set_healthy(false);
        let got = counts(&b, 500, &[addr(1)], 5);
        assert_eq!(got, BTreeMap::from([(3, 500)]), "{policy:?}");

        // Every healthy endpoint tried: a repeat, never an unhealthy one.
        let got = counts(&b, 500, &[addr(1), addr(3)], 6);
        assert_eq!(got.get(&2), None, "{policy:?}");
        assert_eq!(got.values().sum::<u32>(), 500, "{policy:?}");
    }
}

/// A closed loop: `concurrency` requests in flight, each pick starts one and
/// the oldest finishes (10 ms, the same everywhere). Counts picks per endpoint.
fn closed_loop(b: &Balancer, picks: u32, concurrency: usize, seed: u64) -> BTreeMap<u8, u32> {
    let mut rng = rng(seed);
    let t0 = Instant::now();
    let mut inflight = std::collections::VecDeque::new();
    let mut out = BTreeMap::new();
    for k in 0..picks {
        let now = t0 + Duration::from_millis(u64::from(k));
        let e = b.pick_with(key(k), &[], &mut rng, now).expect("a pick");
        *out.entry(octet(e.addr)).or_default() += 1;
        inflight.push_back(e.start_request());
        if inflight.len() > concurrency {
            inflight
                .pop_front()
                .unwrap()
                .finish_at(Duration::from_millis(10), now);
        }
    }
    out
}

#[test]
fn weighted_distribution_per_policy() {
    // Weights 1:3 over 10,000 picks: within 2 points of 25/75, with 64
    // requests in flight (where the load-aware policies' `active / weight`
    // matters) and with one at a time (ring hash gets 10,000 different keys).
    // One at a time, peak EWMA goes by latency alone; see the next test.
    // With few requests in flight the load-aware policies lean towards the
    // lighter endpoint (with 4 in flight: 28% least request, 33% peak EWMA):
    // integer active counts, and with two endpoints the power of two choices
    // always compares both.
    for policy in all_policies() {
        for concurrency in [64, 0] {
            if concurrency == 0 && policy == LbPolicy::PeakEwma {
                continue;
            }
            let b = balancer(policy.clone(), vec![ep(1, 1, ""), ep(2, 3, "")]);
            let got = closed_loop(&b, 10_000, concurrency, 7);
            let share = f64::from(got.get(&1).copied().unwrap_or(0)) / 10_000.0;
            assert!(
                (share - 0.25).abs() <= 0.02,
                "{policy:?}, {concurrency} in flight: share of weight 1 is {share}: {got:?}"
            );
        }
    }
}

#[test]
fn peak_ewma_at_light_load_goes_by_latency() {
    // One request at a time, the faster endpoint gets (nearly) everything,
    // whatever the weights say.
    let b = balancer(LbPolicy::PeakEwma, vec![ep(1, 1, ""), ep(2, 3, "")]);
    let mut rng = rng(24);
    let t0 = Instant::now();
    let mut fast = 0;
    for k in 0..2000u64 {
        let now = t0 + Duration::from_millis(k);
        let e = b.pick_with(None, &[], &mut rng, now).unwrap();
        let rtt = if e.addr == addr(1) { 5 } else { 10 };
        if e.addr == addr(1) {
            fast += 1;
        }
        e.start_request().finish_at(Duration::from_millis(rtt), now);
    }
    assert!(fast > 1900, "fast endpoint got {fast} of 2000");
}

#[test]
fn round_robin_is_exact_and_smooth() {
    let b = balancer(LbPolicy::RoundRobin, vec![ep(1, 1, ""), ep(2, 3, "")]);
    let mut rng = rng(8);
    let now = Instant::now();
    let seq: Vec<SocketAddr> = (0..10_000)
        .map(|_| b.pick_with(None, &[], &mut rng, now).unwrap().addr)
        .collect();
    let ones = seq.iter().filter(|&&a| a == addr(1)).count();
    assert_eq!(ones, 2500, "exact split");
    for w in seq.windows(4) {
        assert_eq!(
            w.iter().filter(|&&a| a == addr(1)).count(),
            1,
            "every 4 consecutive picks hold weight-1 once: {w:?}"
        );
    }

    // Equal weights: each cycle of 3 visits all three.
    let b = balancer(LbPolicy::RoundRobin, eps(3));
    let seq: Vec<SocketAddr> = (0..300)
        .map(|_| b.pick_with(None, &[], &mut rng, now).unwrap().addr)
        .collect();
    for cycle in seq.chunks(3) {
        let mut c = cycle.to_vec();
        c.sort();
        assert_eq!(c, vec![addr(1), addr(2), addr(3)]);
    }
}

#[test]
fn round_robin_spreads_an_unhealthy_share() {
    // With endpoint 1 down, its picks go to the other three by weight, not
    // all to its successor in the cycle.
    let b = balancer(LbPolicy::RoundRobin, eps(4));
    b.endpoints()[0].set_healthy(false);
    let got = counts(&b, 9000, &[], 9);
    for i in 2..=4 {
        let share = f64::from(got[&i]) / 9000.0;
        assert!((share - 1.0 / 3.0).abs() < 0.02, "endpoint {i}: {share}");
    }
}

#[test]
fn least_request_prefers_idle_endpoints() {
    let b = balancer(LbPolicy::LeastRequest, eps(2));
    let busy: Vec<_> = (0..3).map(|_| b.endpoints()[0].start_request()).collect();
    let got = counts(&b, 1000, &[], 10);
    assert_eq!(got, BTreeMap::from([(2, 1000)]));

    // Once the busy one drains and the other fills up, it flips.
    drop(busy);
    let _other: Vec<_> = (0..2).map(|_| b.endpoints()[1].start_request()).collect();
    let got = counts(&b, 1000, &[], 11);
    assert_eq!(got, BTreeMap::from([(1, 1000)]));
}

#[test]
fn peak_ewma_prefers_fast_and_reacts_to_a_spike() {
    let b = balancer(LbPolicy::PeakEwma, eps(2));
    let (fast, slow) = (&b.endpoints()[0], &b.endpoints()[1]);
    let t0 = Instant::now();
    fast.start_request().finish_at(Duration::from_millis(2), t0);
    slow.start_request()
        .finish_at(Duration::from_millis(20), t0);

    let mut rng = rng(12);
    for _ in 0..200 {
        assert_eq!(b.pick_with(None, &[], &mut rng, t0).unwrap().addr, addr(1));
    }

    // Load counts: 10 requests in flight at 2 ms cost more than one at 20 ms.
    let inflight: Vec<_> = (0..10).map(|_| fast.start_request()).collect();
    assert_eq!(b.pick_with(None, &[], &mut rng, t0).unwrap().addr, addr(2));
    drop(inflight);

    // One 100 ms response on the fast endpoint: the very next pick avoids it.
    let t1 = t0 + Duration::from_millis(5);
    fast.start_request()
        .finish_at(Duration::from_millis(100), t1);
    for _ in 0..200 {
        assert_eq!(b.pick_with(None, &[], &mut rng, t1).unwrap().addr, addr(2));
    }

    // With no further samples the spike decays (towards 1 ms) and the
    // endpoint is tried again: after 30 s its estimate is ~6 ms, below the
    // 20 ms the slow endpoint keeps reporting.
    let t2 = t1 + Duration::from_secs(30);
    slow.start_request()
        .finish_at(Duration::from_millis(20), t2);
    assert!(fast.latency_estimate(t2) < Duration::from_millis(7));
    assert_eq!(b.pick_with(None, &[], &mut rng, t2).unwrap().addr, addr(1));
}

#[test]
fn peak_ewma_probes_new_endpoints() {
    // An endpoint without samples is estimated at the default RTT: cheaper
    // than one measured at 10 ms.
    let b = balancer(LbPolicy::PeakEwma, eps(2));
    let t0 = Instant::now();
    b.endpoints()[0]
        .start_request()
        .finish_at(Duration::from_millis(10), t0);
    assert_eq!(b.endpoints()[1].latency_estimate(t0), PEAK_EWMA_DEFAULT_RTT);
    let got = counts(&b, 100, &[], 13);
    assert_eq!(got, BTreeMap::from([(2, 100)]));
}

#[test]
fn ring_hash_same_key_same_endpoint() {
    let b = balancer(ring(HashKey::SourceIp), eps(5));
    let mut rng = rng(14);
    let now = Instant::now();
    let mut seen = BTreeMap::new();
    for k in 0..500 {
        let first = b.pick_with(key(k), &[], &mut rng, now).unwrap().addr;
        for _ in 0..3 {
            assert_eq!(b.pick_with(key(k), &[], &mut rng, now).unwrap().addr, first);
        }
        *seen.entry(first).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 5, "keys spread over all endpoints");

    // A rebuilt balancer (another proxy, a restart) maps keys the same way.
    let again = balancer(ring(HashKey::SourceIp), eps(5));
    for k in 0..500 {
        assert_eq!(
            again.pick(key(k), &[]).unwrap().addr,
            b.pick(key(k), &[]).unwrap().addr
        );
    }
}

#[test]
fn ring_hash_without_key_is_random() {
    let b = balancer(ring(HashKey::SourceIp), eps(4));
    let mut rng = rng(15);
    let now = Instant::now();
    let mut got = BTreeMap::new();
    for _ in 0..4000 {
        *got.entry(b.pick_with(None, &[], &mut rng, now).unwrap().addr)
            .or_insert(0u32) += 1;
    }
    assert_eq!(got.len(), 4);
    assert!(got.values().all(|&c| (800..1200).contains(&c)), "{got:?}");
}

#[test]
fn ring_hash_from_request_keys() {
    let b = balancer(
        ring(HashKey::Cookie {
            name: "session".into(),
        }),
        eps(5),
    );
    let uri: Uri = "/cart".parse().unwrap();
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let pick_for = |cookie: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        let hash = request_hash(
            &HashKey::Cookie {
                name: "session".into(),
            },
            &headers,
            &uri,
            ip,
        );
        assert!(hash.is_some());
        b.pick(hash, &[]).unwrap().addr
    };
    for user in 0..100 {
        let a = pick_for(&format!("theme=dark; session=user{user}"));
        let b = pick_for(&format!("session=user{user}; lang=en"));
        assert_eq!(a, b, "same session cookie, same endpoint");
    }
}

#[test]
fn ring_hash_retry_goes_elsewhere_and_flapping_keeps_others_put() {
    let b = balancer(ring(HashKey::SourceIp), eps(5));
    let mut rng = rng(16);
    let now = Instant::now();
    let before: Vec<_> = (0..2000)
        .map(|k| b.pick_with(key(k), &[], &mut rng, now).unwrap().addr)
        .collect();
    for (k, &first) in (0..).zip(&before) {
        let retry = b.pick_with(key(k), &[first], &mut rng, now).unwrap().addr;
        assert_ne!(retry, first);
    }
    b.endpoints()[2].set_healthy(false);
    for (k, &first) in (0..).zip(&before) {
        let now_addr = b.pick_with(key(k), &[], &mut rng, now).unwrap().addr;
        if first == addr(3) {
            assert_ne!(now_addr, addr(3));
        } else {
            assert_eq!(now_addr, first, "key {k} moved off a healthy endpoint");
        }
    }
}

fn local_us_east() -> Locality {
    Locality::parse("us-east/a/r1")
}

/// One endpoint per priority: 1 same subzone, 2 same zone, 3 same region,
/// 4 failover region, 5 elsewhere.
fn spread() -> Vec<Arc<Endpoint>> {
    vec![
        ep(5, 1, "eu-west/x/y"),
        ep(4, 1, "us-west/b/r1"),
        ep(3, 1, "us-east/b/r1"),
        ep(2, 1, "us-east/a/r2"),
        ep(1, 1, "us-east/a/r1"),
    ]
}

fn failover_lb() -> LocalityLb {
    LocalityLb {
        enabled: true,
        failover: vec![("us-east".into(), "us-west".into())],
    }
}

#[test]
fn locality_priorities_are_grouped() {
    let b = Balancer::with_seed(
        LbPolicy::Random,
        &failover_lb(),
        &local_us_east(),
        spread(),
        0,
    );
    let got: Vec<(u8, Vec<SocketAddr>)> = b
        .priorities()
        .map(|(p, eps)| (p, eps.iter().map(|e| e.addr).collect()))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, vec![addr(1)]),
            (1, vec![addr(2)]),
            (2, vec![addr(3)]),
            (3, vec![addr(4)]),
            (4, vec![addr(5)]),
        ]
    );
    assert_eq!(b.endpoints().len(), 5);
    assert_eq!(
        b.endpoints()[0].addr,
        addr(5),
        "endpoints() keeps input order"
    );
}

#[test]
fn locality_fails_over_level_by_level() {
    for policy in all_policies() {
        let b = Balancer::with_seed(
            policy.clone(),
            &failover_lb(),
            &local_us_east(),
            spread(),
            0,
        );
        let by_addr = |i: u8| b.endpoints().iter().find(|e| e.addr == addr(i)).unwrap();
        // With endpoints 1..down unhealthy, all traffic goes to `down + 1`.
        for down in 0..5u8 {
            for i in 1..=down {
                by_addr(i).set_healthy(false);
            }
            let got = counts(&b, 300, &[], 17);
            assert_eq!(
                got,
                BTreeMap::from([(down + 1, 300)]),
                "{policy:?}, {down} down"
            );
        }
        by_addr(5).set_healthy(false);
        assert!(b.pick(key(1), &[]).is_none(), "{policy:?}");
        // Recovery of a closer level takes traffic back.
        by_addr(2).set_healthy(true);
        assert_eq!(counts(&b, 100, &[], 18), BTreeMap::from([(2, 100)]));
    }
}

#[test]
fn without_failover_other_regions_share_the_last_level() {
    let b = Balancer::with_seed(
        LbPolicy::Random,
        &LocalityLb::default(),
        &local_us_east(),
        spread(),
        0,
    );
    for i in 0..3 {
        b.endpoints()[2 + i].set_healthy(false); // endpoints 3, 2, 1
    }
    let got = counts(&b, 4000, &[], 19);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![4, 5]);
    assert!(got.values().all(|&c| (1800..2200).contains(&c)), "{got:?}");
}

#[test]
fn locality_off_or_unknown_is_one_level() {
    let off = LocalityLb {
        enabled: false,
        failover: vec![],
    };
    let cases = [
        ("disabled", off, local_us_east()),
        ("unknown local", failover_lb(), Locality::default()),
    ];
    for (name, lb, local) in cases {
        let b = Balancer::with_seed(LbPolicy::Random, &lb, &local, spread(), 0);
        assert_eq!(b.priorities().count(), 1, "{name}");
        let got = counts(&b, 5000, &[], 20);
        assert_eq!(got.len(), 5, "{name}: {got:?}");
        assert!(
            got.values().all(|&c| (850..1150).contains(&c)),
            "{name}: {got:?}"
        );
    }
}

#[test]
fn exclude_prefers_the_same_level_then_spills() {
    let eps = vec![
        ep(1, 1, "us-east/a/r1"),
        ep(2, 1, "us-east/a/r1"),
        ep(3, 1, "us-west/a/r1"),
    ];
    let b = Balancer::with_seed(
        LbPolicy::LeastRequest,
        &failover_lb(),
        &local_us_east(),
        eps,
        0,
    );
    assert_eq!(counts(&b, 200, &[addr(1)], 21), BTreeMap::from([(2, 200)]));
    assert_eq!(
        counts(&b, 200, &[addr(1), addr(2)], 22),
        BTreeMap::from([(3, 200)])
    );
    // All tried: back to the best level.
    let got = counts(&b, 400, &[addr(1), addr(2), addr(3)], 23);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
}

#[test]
fn pick_with_the_thread_rng_from_many_threads() {
    for policy in [LbPolicy::Random, LbPolicy::LeastRequest] {
        let b = balancer(policy.clone(), eps(4));
        let seen: Vec<BTreeMap<SocketAddr, u32>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut seen = BTreeMap::new();
                        for _ in 0..2000 {
                            let e = b.pick(None, &[]).expect("a pick");
                            *seen.entry(e.addr).or_insert(0) += 1;
                            e.start_request().finish(Duration::from_micros(50));
                        }
                        seen
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for s in &seen {
            assert_eq!(s.values().sum::<u32>(), 2000, "{policy:?}");
            // Shares are only checked for random: a thread preempted while it
            // holds a request keeps least request off that endpoint for a
            // whole time slice.
            if policy == LbPolicy::Random {
                assert!(s.values().all(|&c| (400..600).contains(&c)), "{s:?}");
            }
        }
        assert!(b.endpoints().iter().all(|e| e.active() == 0), "{policy:?}");
    }
}
