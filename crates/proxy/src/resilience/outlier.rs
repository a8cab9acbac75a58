//! Outlier detection (Istio `outlierDetection`, Envoy's consecutive-error
//! detectors): an endpoint that keeps failing is ejected from load
//! balancing for a while, so one bad pod stops taking its share of
//! requests before any health check notices.
//!
//! Envoy semantics, without `split_external_local_origin_errors` (Istio
//! never sets it):
//!
//! - Counting ([`record`]): a 5xx response adds one to the endpoint's
//!   consecutive-5xx count; a 502, 503 or 504 also adds one to its
//!   consecutive-gateway-error count, and any other 5xx resets that one. A
//!   local failure (connect failure, reset, timeout) counts as both, as
//!   Envoy maps them to 503/504. Anything else, including 4xx, is a success
//!   and resets both.
//! - Ejection: when a count reaches its threshold the endpoint is ejected at
//!   once, unless that would eject more than `max_ejection_percent` of the
//!   cluster: Envoy's rule is `100 × (ejected + 1) / endpoints ≤
//!   max_ejection_percent` (with its `always_eject_one_host` off, as Istio
//!   leaves it). So with Istio's default 10%, clusters of fewer than 10
//!   endpoints never eject; set `maxEjectionPercent` for small clusters.
//!   The count that fired is reset either way. If both counts fire on one
//!   response the gateway detector wins (Envoy checks it first).
//! - Duration: `base_ejection_time × multiplier`, capped at
//!   `max(base_ejection_time, 300 s)` (Envoy's default `max_ejection_time`).
//!   The multiplier grows by one per ejection (until the cap is passed) and
//!   shrinks by one for each `interval` the endpoint then stays in service,
//!   so a flapping endpoint is ejected for longer and longer and a recovered
//!   one earns its short ejections back.
//! - Un-ejection: [`sweep`], run every `interval`, returns endpoints whose
//!   time is up (so an ejection lasts up to one `interval` longer, as in
//!   Envoy) and resets their counts so a few errors cannot re-eject them.
//! - Panic: the balancer ignores ejections while fewer than
//!   `min_health_percent` of the endpoints are usable
//!   ([`Balancer::with_min_health_percent`](crate::balance::Balancer::with_min_health_percent)).
//!
//! The state lives on each [`Endpoint`] (atomics, plus a small mutex taken
//! only to eject and to sweep), so reloads that keep an endpoint keep its
//! state, and there is no per-cluster object to share.
//!
//! Concurrency: `max_ejection_percent` is checked by setting the endpoint's
//! ejected flag first, then counting the cluster's ejected endpoints and
//! undoing the flag if that is over the limit. Two endpoints ejected at the
//! same instant on two threads may therefore both be refused (they are
//! ejected at their next threshold), and for that instant a pick may see
//! both flags; the settled state never exceeds the limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::balance::Endpoint;

/// Envoy's default `max_ejection_time`; the cap is the larger of this and
/// the base ejection time.
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// Ejection reason when consecutive 5xx responses reached the threshold.
pub const REASON_5XX: &str = "consecutive_5xx";
/// Ejection reason when consecutive 502/503/504 reached the threshold.
pub const REASON_GATEWAY: &str = "consecutive_gateway_errors";

/// A cluster's outlier detection (Istio `trafficPolicy.outlierDetection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierSettings {
    /// Istio `consecutive5xxErrors`; `None` or 0 disables the detector.
    pub consecutive_5xx: Option<u32>,
    /// Istio `consecutiveGatewayErrors`; `None` or 0 disables the detector.
    pub consecutive_gateway: Option<u32>,
    /// Istio `interval`: how often [`sweep`] runs.
    pub interval: Duration,
    /// Istio `baseEjectionTime`.
    pub base_ejection_time: Duration,
    /// Istio `maxEjectionPercent` (0 to 100).
    pub max_ejection_percent: u32,
    /// Istio `minHealthPercent`, applied by the balancer (panic mode).
    pub min_health_percent: u32,
}

/// Istio's defaults for fields left out of a given `outlierDetection`:
/// 5 consecutive 5xx, gateway detector off, sweep every 10 s, 30 s base
/// ejection, at most 10% ejected, panic disabled (0%).
impl Default for OutlierSettings {
    fn default() -> Self {
        Self {
            consecutive_5xx: Some(5),
            consecutive_gateway: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }
}

/// The cap on one ejection: `max(base_ejection_time, 300 s)`, as Envoy
/// raises its default cap when the base alone exceeds it.
pub fn max_ejection_time(settings: &OutlierSettings) -> Duration {
    settings.base_ejection_time.max(MAX_EJECTION_TIME)
}

/// How one request to an endpoint ended, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// A non-5xx response.
    Success,
    /// Connect failure, reset or timeout: no response from the endpoint.
    LocalFailure,
    /// A response with this status (5xx counts as a failure, anything else
    /// as a success).
    Status(u16),
}

/// An endpoint just ejected, for the log line and the ejection metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// The ejected endpoint.
    pub addr: SocketAddr,
    /// [`REASON_5XX`] or [`REASON_GATEWAY`].
    pub reason: &'static str,
    /// How long it stays out (the sweep returns it at the first interval
    /// after that).
    pub duration: Duration,
}

/// Records `result` for `endpoint` (one of the cluster's `endpoints`), and
/// ejects it when a detector's threshold is reached and the cluster's
/// `max_ejection_percent` allows. Returns the ejection, if one happened.
///
/// Cheap on the common path (a success with zero counts is two loads); the
/// O(endpoints) scan and a per-endpoint lock happen only when a threshold
/// is reached.
pub fn record(
    settings: &OutlierSettings,
    endpoints: &[Arc<Endpoint>],
    endpoint: &Endpoint,
    result: CallResult,
    now: Instant,
) -> Option<Ejection> {
    let state = endpoint.outlier();
    let (five_xx, gateway) = match result {
        CallResult::Success => (false, false),
        CallResult::LocalFailure => (true, true),
        CallResult::Status(s) => ((500..600).contains(&s), matches!(s, 502..=504)),
    };
    if !five_xx {
        reset(&state.consecutive_5xx);
        reset(&state.consecutive_gateway);
        return None;
    }
    let gateway_count = if gateway {
        state.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
    } else {
        reset(&state.consecutive_gateway);
        0
    };
    let five_xx_count = state.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
    let detectors = [
        (
            gateway_count,
            settings.consecutive_gateway,
            &state.consecutive_gateway,
            REASON_GATEWAY,
        ),
        (
            five_xx_count,
            settings.consecutive_5xx,
            &state.consecutive_5xx,
            REASON_5XX,
        ),
    ];
    for (count, threshold, counter, reason) in detectors {
        let Some(threshold) = threshold.filter(|&t| t > 0) else {
            continue;
        };
        // `>=` rather than Envoy's `==`, so a threshold lowered by a reload
        // below a running count still fires. An already ejected endpoint
        // (still picked in panic) keeps counting without re-ejection.
        if count < threshold || state.is_ejected() {
            continue;
        }
        let ejection = eject(settings, endpoints, endpoint, reason, now);
        counter.store(0, Ordering::Relaxed);
        if ejection.is_some() {
            return ejection;
        }
    }
    None
}

/// Un-ejects the endpoints whose ejection time is up at `now` and returns
/// their addresses; lowers the ejection multiplier of endpoints that have
/// been back in service for at least an `interval`. Call every
/// `settings.interval` (the proxy's timer; nothing here sleeps).
pub fn sweep(
    settings: &OutlierSettings,
    endpoints: &[Arc<Endpoint>],
    now: Instant,
) -> Vec<SocketAddr> {
    let mut unejected = Vec::new();
    for e in endpoints {
        let state = e.outlier();
        if state.times_ejected() == 0 {
            continue; // never ejected: nothing to un-eject or decay
        }
        let mut t = state.timing();
        if state.is_ejected() {
            let due = t
                .ejected_at
                .is_none_or(|at| now.saturating_duration_since(at) >= t.duration);
            if due {
                state.ejected.store(false, Ordering::Relaxed);
                state.consecutive_5xx.store(0, Ordering::Relaxed);
                state.consecutive_gateway.store(0, Ordering::Relaxed);
                t.unejected_at = Some(now);
                unejected.push(e.addr);
            }
        } else if t
            .unejected_at
            .is_some_and(|back| now.saturating_duration_since(back) >= settings.interval)
        {
            t.multiplier = t.multiplier.saturating_sub(1);
        }
    }
    unejected
}

/// Ejects `endpoint` if `max_ejection_percent` allows; see the module docs
/// for the rule and the concurrency argument. Holding the endpoint's timing
/// lock throughout keeps [`sweep`] from un-ejecting it halfway.
fn eject(
    settings: &OutlierSettings,
    endpoints: &[Arc<Endpoint>],
    endpoint: &Endpoint,
    reason: &'static str,
    now: Instant,
) -> Option<Ejection> {
    let state = endpoint.outlier();
    let mut t = state.timing();
    if state
        .ejected
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return None;
    }
    let mut listed = false;
    let mut others = 0u64;
    for e in endpoints {
        if std::ptr::eq(e.as_ref(), endpoint) {
            listed = true;
        } else if e.is_ejected() {
            others += 1;
        }
    }
    let total = endpoints.len() as u64 + u64::from(!listed);
    let max_percent = u64::from(settings.max_ejection_percent.min(100));
    if 100 * (others + 1) > max_percent * total {
        state.ejected.store(false, Ordering::Relaxed);
        return None;
    }
    let base = settings.base_ejection_time;
    let max = max_ejection_time(settings);
    // Envoy grows the multiplier only while the ejection is not yet past
    // the cap, so a long-flapping endpoint recovers in a bounded number of
    // clean intervals.
    if base.saturating_mul(t.multiplier) < max.saturating_add(base) {
        t.multiplier = t.multiplier.saturating_add(1);
    }
    let duration = base.saturating_mul(t.multiplier).min(max);
    t.ejected_at = Some(now);
    t.duration = duration;
    state.times_ejected.fetch_add(1, Ordering::Relaxed);
    Some(Ejection {
        addr: endpoint.addr,
        reason,
        duration,
    })
}

/// Zeroes a counter without writing when it is already zero, so successes
/// (the common case) do not bounce the cache line between workers.
fn reset(counter: &AtomicU32) {
    if counter.load(Ordering::Relaxed) != 0 {
        counter.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::balance::{Balancer, LbPolicy, Locality, LocalityLb};

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i as u8], 80))
    }

    /// Endpoints 10.0.0.1..=n.
    fn eps(n: usize) -> Vec<Arc<Endpoint>> {
        (1..=n)
            .map(|i| {
                Arc::new(Endpoint::new(
                    addr(i),
                    1,
                    Locality::default(),
                    BTreeMap::new(),
                ))
            })
            .collect()
    }

    fn settings(five_xx: Option<u32>, gateway: Option<u32>, max_percent: u32) -> OutlierSettings {
        OutlierSettings {
            consecutive_5xx: five_xx,
            consecutive_gateway: gateway,
            max_ejection_percent: max_percent,
            ..OutlierSettings::default()
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ejected(endpoints: &[Arc<Endpoint>]) -> Vec<SocketAddr> {
        endpoints
            .iter()
            .filter(|e| e.is_ejected())
            .map(|e| e.addr)
            .collect()
    }

    /// Feeds `results` to endpoint 0 and returns the index of each result
    /// that ejected it, with the reason.
    fn run(s: &OutlierSettings, results: &[CallResult]) -> Vec<(usize, &'static str)> {
        let endpoints = eps(10);
        let t0 = Instant::now();
        results
            .iter()
            .enumerate()
            .filter_map(|(i, &r)| {
                record(s, &endpoints, &endpoints[0], r, t0).map(|e| (i, e.reason))
            })
            .collect()
    }

    #[test]
    fn istio_defaults() {
        let d = OutlierSettings::default();
        assert_eq!(d.consecutive_5xx, Some(5));
        assert_eq!(d.consecutive_gateway, None);
        assert_eq!(d.interval, secs(10));
        assert_eq!(d.base_ejection_time, secs(30));
        assert_eq!(d.max_ejection_percent, 10);
        assert_eq!(d.min_health_percent, 0);
        assert_eq!(max_ejection_time(&d), secs(300));
        let long = OutlierSettings {
            base_ejection_time: secs(600),
            ..d
        };
        assert_eq!(max_ejection_time(&long), secs(600));
    }

    #[test]
    fn counting_table() {
        use CallResult::{LocalFailure as L, Status as S, Success as Ok};
        let five = settings(Some(3), None, 100);
        let gateway = settings(None, Some(3), 100);
        let both = settings(Some(3), Some(3), 100);
        let off = settings(None, None, 100);
        let zero = settings(Some(0), Some(0), 100);
        type Case<'a> = (
            &'a OutlierSettings,
            &'a [CallResult],
            &'a [(usize, &'a str)],
        );
        let cases: &[Case] = &[
            // Exactly at the threshold, not before.
            (&five, &[S(500), S(500)], &[]),
            (&five, &[S(500), S(500), S(500)], &[(2, REASON_5XX)]),
            (&five, &[S(500), S(503), S(599)], &[(2, REASON_5XX)]),
            (&five, &[L, L, L], &[(2, REASON_5XX)]),
            (&five, &[S(501), L, S(504)], &[(2, REASON_5XX)]),
            // A success resets; 4xx and 1xx-3xx are successes.
            (&five, &[S(500), S(500), Ok, S(500), S(500)], &[]),
            (&five, &[S(500), S(500), S(404), S(500), S(500)], &[]),
            (
                &five,
                &[S(500), S(500), S(200), S(500), S(500), S(500)],
                &[(5, REASON_5XX)],
            ),
            (&five, &[S(500), S(500), S(499), S(500)], &[]),
            (&five, &[S(500), S(500), S(600), S(500)], &[]),
            // Gateway: 502-504 and local failures; another 5xx resets it.
            (&gateway, &[S(502), S(503), S(504)], &[(2, REASON_GATEWAY)]),
            (&gateway, &[L, S(503), L], &[(2, REASON_GATEWAY)]),
            (&gateway, &[S(502), S(502), S(500), S(502), S(502)], &[]),
            (&gateway, &[S(502), S(502), S(501), S(502)], &[]),
            (&gateway, &[S(500), S(500), S(500), S(500)], &[]),
            // Both at once: the gateway detector wins.
            (&both, &[S(503), S(503), S(503)], &[(2, REASON_GATEWAY)]),
            (&both, &[S(500), S(503), S(503)], &[(2, REASON_5XX)]),
            // Disabled detectors.
            (&off, &[S(500); 20], &[]),
            (&zero, &[S(503); 20], &[]),
        ];
        for (s, results, want) in cases {
            assert_eq!(run(s, results), *want, "{s:?} {results:?}");
        }
    }

    #[test]
    fn ejection_resets_its_counter_and_ejected_endpoints_keep_counting() {
        let s = settings(Some(2), None, 100);
        let endpoints = eps(4);
        let e = &endpoints[0];
        let t0 = Instant::now();
        let fail = CallResult::Status(500);
        assert!(record(&s, &endpoints, e, fail, t0).is_none());
        let ej = record(&s, &endpoints, e, fail, t0).expect("ejected");
        assert_eq!(ej.addr, addr(1));
        assert_eq!(ej.duration, secs(30));
        assert_eq!(e.outlier().consecutive_5xx(), 0);
        assert!(e.is_ejected());
        // Still picked in panic: failures count but cannot re-eject.
        for _ in 0..5 {
            assert!(record(&s, &endpoints, e, fail, t0).is_none());
        }
        assert_eq!(e.outlier().consecutive_5xx(), 5);
        assert_eq!(e.outlier().times_ejected(), 1);
        assert_eq!(e.outlier().ejected_until(), Some(t0 + secs(30)));
    }

    #[test]
    fn max_ejection_percent_is_envoys_rule() {
        // (endpoints, max_ejection_percent, how many can be ejected)
        let cases = [
            (10, 10, 1),
            (10, 20, 2),
            (10, 25, 2),
            (9, 10, 0), // 100 × 1 / 9 = 11% > 10%: Istio's default ejects nothing
            (5, 10, 0),
            (5, 20, 1),
            (3, 34, 1),
            (3, 66, 1),
            (3, 67, 2),
            (3, 100, 3),
            (1, 100, 1),
            (1, 99, 0),
            (4, 0, 0),
            (4, 250, 4), // above 100 is 100
        ];
        for (n, pct, want) in cases {
            let s = settings(Some(1), None, pct);
            let endpoints = eps(n);
            let t0 = Instant::now();
            let mut got = 0;
            for e in &endpoints {
                if record(&s, &endpoints, e, CallResult::LocalFailure, t0).is_some() {
                    got += 1;
                }
            }
            assert_eq!(got, want, "{n} endpoints at {pct}%");
            assert_eq!(ejected(&endpoints).len(), want, "{n} endpoints at {pct}%");
            // A refused ejection reset the count: one more failure retries.
            let refused = endpoints.iter().find(|e| !e.is_ejected());
            if let Some(e) = refused {
                assert_eq!(e.outlier().consecutive_5xx(), 0);
            }
        }
    }

    #[test]
    fn endpoint_missing_from_the_list_counts_towards_the_total() {
        let s = settings(Some(1), None, 50);
        let listed = eps(1);
        let stray = eps(2).remove(1);
        let t0 = Instant::now();
        // 1 of 2 (the list plus the stray) = 50%: allowed.
        assert!(record(&s, &listed, &stray, CallResult::LocalFailure, t0).is_some());
        // The list alone: 1 of 1 = 100% > 50%, refused.
        assert!(record(&s, &listed, &listed[0], CallResult::LocalFailure, t0).is_none());
    }

    /// Fails endpoint 0 until ejected at `at`, then sweeps until it is back;
    /// returns the ejection's duration and when it came back.
    fn eject_and_wait(
        s: &OutlierSettings,
        endpoints: &[Arc<Endpoint>],
        at: Instant,
    ) -> (Duration, Instant) {
        let threshold = s.consecutive_5xx.unwrap_or(1);
        let mut ejection = None;
        for _ in 0..threshold {
            ejection = record(s, endpoints, &endpoints[0], CallResult::Status(503), at);
        }
        let ejection = ejection.expect("ejected at the threshold");
        let mut now = at;
        loop {
            now += s.interval;
            if sweep(s, endpoints, now) == [addr(1)] {
                return (ejection.duration, now);
            }
            assert!(endpoints[0].is_ejected());
        }
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_and_is_capped() {
        let s = settings(Some(2), None, 100);
        let endpoints = eps(2);
        let mut now = Instant::now();
        let mut durations = Vec::new();
        for _ in 0..13 {
            // Re-eject right after coming back: no clean interval to decay.
            let (d, back) = eject_and_wait(&s, &endpoints, now);
            assert!(back - now >= d, "not back before its time");
            assert!(back - now < d + s.interval, "back within one sweep");
            durations.push(d.as_secs());
            now = back;
        }
        assert_eq!(
            durations,
            [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300, 300]
        );
        assert_eq!(endpoints[0].outlier().times_ejected(), 13);
        assert_eq!(
            endpoints[0].outlier().ejection_multiplier(),
            11,
            "Envoy stops at cap + base"
        );
        // A base above 300 s raises the cap to the base.
        let long = OutlierSettings {
            base_ejection_time: secs(400),
            ..s
        };
        let endpoints = eps(2);
        let (d1, back) = eject_and_wait(&long, &endpoints, Instant::now());
        let (d2, _) = eject_and_wait(&long, &endpoints, back);
        assert_eq!((d1, d2), (secs(400), secs(400)));
    }

    #[test]
    fn unejection_after_time_resets_counts() {
        let s = OutlierSettings {
            consecutive_5xx: Some(3),
            consecutive_gateway: Some(5),
            max_ejection_percent: 100,
            ..OutlierSettings::default()
        };
        let endpoints = eps(3);
        let e = &endpoints[0];
        let t0 = Instant::now();
        for r in [502, 502, 500] {
            record(&s, &endpoints, e, CallResult::Status(r), t0);
        }
        assert!(e.is_ejected());
        // A 502 in panic keeps counting.
        record(&s, &endpoints, e, CallResult::Status(502), t0);
        assert_eq!(e.outlier().consecutive_gateway_errors(), 1);
        assert!(sweep(&s, &endpoints, t0 + secs(10)).is_empty());
        assert!(sweep(&s, &endpoints, t0 + secs(29)).is_empty());
        assert_eq!(sweep(&s, &endpoints, t0 + secs(30)), [addr(1)]);
        assert!(!e.is_ejected());
        assert_eq!(e.outlier().consecutive_5xx(), 0);
        assert_eq!(e.outlier().consecutive_gateway_errors(), 0);
        assert_eq!(e.outlier().ejected_until(), None);
        assert!(sweep(&s, &endpoints, t0 + secs(40)).is_empty(), "once");
    }

    #[test]
    fn multiplier_decays_after_clean_intervals() {
        let s = settings(Some(1), None, 100);
        let endpoints = eps(2);
        let e = &endpoints[0];
        let t0 = Instant::now();
        let (_, back) = eject_and_wait(&s, &endpoints, t0);
        let (_, back) = eject_and_wait(&s, &endpoints, back);
        let (d3, back) = eject_and_wait(&s, &endpoints, back);
        assert_eq!(d3, secs(90));
        assert_eq!(e.outlier().ejection_multiplier(), 3);
        // A sweep at the moment of return does not decay; each later one does.
        sweep(&s, &endpoints, back);
        assert_eq!(e.outlier().ejection_multiplier(), 3);
        sweep(&s, &endpoints, back + s.interval);
        assert_eq!(e.outlier().ejection_multiplier(), 2);
        sweep(&s, &endpoints, back + s.interval * 2);
        assert_eq!(e.outlier().ejection_multiplier(), 1);
        // The next ejection is base × 2, not × 4.
        let (d4, _) = eject_and_wait(&s, &endpoints, back + s.interval * 2);
        assert_eq!(d4, secs(60));
        // Decay stops at zero.
        let endpoints = eps(2);
        let (_, back) = eject_and_wait(&s, &endpoints, t0);
        for k in 1..5 {
            sweep(&s, &endpoints, back + s.interval * k);
        }
        assert_eq!(endpoints[0].outlier().ejection_multiplier(), 0);
        let (d, _) = eject_and_wait(&s, &endpoints, back + s.interval * 5);
        assert_eq!(d, secs(30));
    }

    fn picks(b: &Balancer, n: usize) -> BTreeSet<SocketAddr> {
        (0..n)
            .filter_map(|_| b.pick(None, &[]))
            .map(|e| e.addr)
            .collect()
    }

    fn all_policies() -> [LbPolicy; 4] {
        [
            LbPolicy::RoundRobin,
            LbPolicy::LeastRequest,
            LbPolicy::Random,
            LbPolicy::PeakEwma,
        ]
    }

    #[test]
    fn balancer_skips_ejected_endpoints_until_swept_back() {
        let s = settings(Some(2), None, 50);
        for policy in all_policies() {
            let endpoints = eps(4);
            let b = Balancer::new(
                policy.clone(),
                LocalityLb::default(),
                &Locality::default(),
                endpoints.clone(),
            )
            .with_min_health_percent(s.min_health_percent);
            let t0 = Instant::now();
            let all: BTreeSet<_> = (1..=4).map(addr).collect();
            // (endpoint failing twice, endpoints the balancer may pick after)
            let steps: [(usize, &[usize]); 3] = [(0, &[2, 3, 4]), (2, &[2, 4]), (1, &[2, 4])];
            for (i, want) in steps {
                for _ in 0..2 {
                    record(&s, &endpoints, &endpoints[i], CallResult::LocalFailure, t0);
                }
                let want: BTreeSet<_> = want.iter().map(|&k| addr(k)).collect();
                assert_eq!(picks(&b, 400), want, "{policy:?} after failing {i}");
            }
            // 50% max: the third ejection was refused.
            assert_eq!(ejected(&endpoints), [addr(1), addr(3)]);
            assert_eq!(sweep(&s, &endpoints, t0 + secs(30)), [addr(1), addr(3)]);
            assert_eq!(picks(&b, 400), all, "{policy:?} all back");
        }
    }

    #[test]
    fn balancer_panics_below_min_health_percent() {
        // 4 endpoints, all may be ejected; panic below 50% usable.
        let s = OutlierSettings {
            min_health_percent: 50,
            ..settings(Some(1), None, 100)
        };
        for policy in all_policies() {
            let endpoints = eps(4);
            let b = Balancer::new(
                policy.clone(),
                LocalityLb::default(),
                &Locality::default(),
                endpoints.clone(),
            )
            .with_min_health_percent(s.min_health_percent);
            let t0 = Instant::now();
            let fail =
                |i: usize| record(&s, &endpoints, &endpoints[i], CallResult::Status(503), t0);
            assert!(fail(0).is_some() && fail(1).is_some());
            assert!(!b.in_panic(), "2 of 4 usable is not below 50%");
            let healthy: BTreeSet<_> = [addr(3), addr(4)].into();
            assert_eq!(picks(&b, 400), healthy, "{policy:?}");
            assert!(fail(2).is_some());
            assert!(b.in_panic(), "1 of 4 usable");
            let all: BTreeSet<_> = (1..=4).map(addr).collect();
            assert_eq!(
                picks(&b, 400),
                all,
                "{policy:?}: ejections ignored in panic"
            );
            // Without min_health_percent the same state never picks them.
            let strict = Balancer::new(
                policy.clone(),
                LocalityLb::default(),
                &Locality::default(),
                endpoints.clone(),
            );
            assert_eq!(picks(&strict, 400), [addr(4)].into(), "{policy:?}");
        }
    }

    #[test]
    fn a_reload_that_keeps_endpoints_keeps_their_ejection() {
        let s = settings(Some(1), None, 100);
        let endpoints = eps(3);
        let t0 = Instant::now();
        record(&s, &endpoints, &endpoints[1], CallResult::LocalFailure, t0);
        // The reload builds a new balancer from the same Arcs.
        let reloaded = Balancer::new(
            LbPolicy::RoundRobin,
            LocalityLb::default(),
            &Locality::default(),
            endpoints.clone(),
        );
        assert_eq!(picks(&reloaded, 100), [addr(1), addr(3)].into());
        assert_eq!(sweep(&s, &endpoints, t0 + secs(30)), [addr(2)]);
        assert_eq!(picks(&reloaded, 100).len(), 3);
    }

    #[test]
    fn concurrent_failures_never_settle_above_max_percent() {
        let s = settings(Some(3), Some(3), 30);
        let endpoints = eps(10);
        let t0 = Instant::now();
        let ejections = AtomicU32::new(0);
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (endpoints, ejections) = (&endpoints, &ejections);
                scope.spawn(move || {
                    for k in 0..2000 {
                        let e = &endpoints[(t * 7 + k) % 10];
                        let r = if k % 11 == 0 {
                            CallResult::Success
                        } else {
                            CallResult::LocalFailure
                        };
                        if record(&s, endpoints, e, r, t0).is_some() {
                            ejections.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let n = ejected(&endpoints).len();
        assert!(n <= 3, "{n} ejected, max 30% of 10");
        assert_eq!(
            n as u32,
            ejections.into_inner(),
            "each ejection reported once"
        );
    }
}
