//! One upstream endpoint: its address, weight and locality from config, and
//! the runtime state the balancer reads (active requests, latency estimate,
//! health, outlier ejection). The state the balancer reads is atomics only,
//! so an `Arc<Endpoint>` is shared by the cluster's balancer and every
//! in-flight request without locks. The state lives on the endpoint, not in
//! the balancer, because a config reload reuses unchanged `Arc<Endpoint>`s:
//! an ejected endpoint stays ejected, and its counters keep counting, across
//! reloads.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::peak_ewma::Ewma;

/// Where an endpoint (or this proxy) runs, as Istio writes it:
/// `region/zone/subzone`. Empty parts are unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    pub fn new(
        region: impl Into<String>,
        zone: impl Into<String>,
        subzone: impl Into<String>,
    ) -> Self {
        Self {
            region: region.into(),
            zone: zone.into(),
            subzone: subzone.into(),
        }
    }

    /// Parses Istio's `region/zone/subzone`. Missing parts are empty
    /// (`"us-east"` is a region only); parts after the third are ignored, as
    /// Istio does.
    pub fn parse(s: &str) -> Self {
        let mut parts = s.split('/');
        let mut next = || parts.next().unwrap_or_default().to_owned();
        Self {
            region: next(),
            zone: next(),
            subzone: next(),
        }
    }

    /// True when nothing is known (all three parts empty).
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }
}

/// `region/zone/subzone` without trailing empty parts, so that
/// `Locality::parse(&l.to_string()) == l`.
impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.zone.is_empty(), self.subzone.is_empty()) {
            (_, false) => write!(f, "{}/{}/{}", self.region, self.zone, self.subzone),
            (false, true) => write!(f, "{}/{}", self.region, self.zone),
            (true, true) => f.write_str(&self.region),
        }
    }
}

/// One upstream endpoint. Built when config loads; shared via `Arc`.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Relative weight, at least 1.
    pub weight: u32,
    pub locality: Locality,
    pub labels: BTreeMap<String, String>,
    active: AtomicU32,
    healthy: AtomicBool,
    ewma: Ewma,
    outlier: OutlierState,
}

impl Endpoint {
    /// A healthy endpoint with no requests. A weight of 0 is raised to 1
    /// (Envoy rejects 0; config validation should too).
    pub fn new(
        addr: SocketAddr,
        weight: u32,
        locality: Locality,
        labels: BTreeMap<String, String>,
    ) -> Self {
        Self {
            addr,
            weight: weight.max(1),
            locality,
            labels,
            active: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            ewma: Ewma::new(Instant::now()),
            outlier: OutlierState::default(),
        }
    }

    /// Requests started and not yet finished or dropped.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Set by health checking; the balancer skips unhealthy endpoints from
    /// its next pick on. Outlier detection has its own flag
    /// ([`is_ejected`](Self::is_ejected)) so the two cannot undo each other.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Ejected by outlier detection (`resilience::outlier`): the balancer
    /// skips it unless the cluster is in panic (see
    /// [`Balancer::with_min_health_percent`](super::Balancer::with_min_health_percent)).
    pub fn is_ejected(&self) -> bool {
        self.outlier.is_ejected()
    }

    /// The endpoint's outlier-detection counters and ejection state.
    pub fn outlier(&self) -> &OutlierState {
        &self.outlier
    }

    /// The peak-EWMA latency estimate at `now` (for `/config_dump` and
    /// tests): the default RTT until a response has been recorded, and decaying
    /// back towards it when no responses arrive.
    pub fn latency_estimate(&self, now: Instant) -> Duration {
        Duration::from_secs_f64(self.ewma.estimate_ns(now) / 1e9)
    }

    pub(crate) fn estimate_ns(&self, now: Instant) -> f64 {
        self.ewma.estimate_ns(now)
    }

    /// Marks a request as started. The guard ends it: dropped, it only
    /// decrements [`active`](Self::active); [`RequestGuard::finish`] also
    /// records the round-trip time into the latency estimate.
    pub fn start_request(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            endpoint: Arc::clone(self),
        }
    }
}

/// Outlier-detection state of one endpoint (Envoy's per-host monitor).
///
/// Only `resilience::outlier` changes it. The counters and the ejected flag
/// are atomics, updated from every worker on every response; the ejection
/// times sit behind a small mutex taken only when an endpoint is ejected or
/// on the periodic sweep, never on a pick.
#[derive(Debug, Default)]
pub struct OutlierState {
    pub(crate) consecutive_5xx: AtomicU32,
    pub(crate) consecutive_gateway: AtomicU32,
    pub(crate) ejected: AtomicBool,
    /// Ejections over the endpoint's life, for `/config_dump`.
    pub(crate) times_ejected: AtomicU32,
    timing: Mutex<EjectionTiming>,
}

/// When an endpoint was ejected and for how long; see [`OutlierState`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct EjectionTiming {
    pub(crate) ejected_at: Option<Instant>,
    pub(crate) duration: Duration,
    pub(crate) unejected_at: Option<Instant>,
    /// Envoy's ejection backoff: the next ejection lasts `base × multiplier`
    /// (after incrementing); decremented for each sweep interval the
    /// endpoint stays in service.
    pub(crate) multiplier: u32,
}

impl OutlierState {
    /// See [`Endpoint::is_ejected`].
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Consecutive 5xx responses (and local failures) since the last success.
    pub fn consecutive_5xx(&self) -> u32 {
        self.consecutive_5xx.load(Ordering::Relaxed)
    }

    /// Consecutive 502/503/504 responses (and local failures).
    pub fn consecutive_gateway_errors(&self) -> u32 {
        self.consecutive_gateway.load(Ordering::Relaxed)
    }

    /// How many times outlier detection has ejected this endpoint.
    pub fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Ordering::Relaxed)
    }

    /// The multiplier of the base ejection time the endpoint has earned.
    pub fn ejection_multiplier(&self) -> u32 {
        self.timing().multiplier
    }

    /// When the current ejection ends (the sweep after it un-ejects), or
    /// `None` when not ejected.
    pub fn ejected_until(&self) -> Option<Instant> {
        if !self.is_ejected() {
            return None;
        }
        let t = self.timing();
        t.ejected_at.and_then(|at| at.checked_add(t.duration))
    }

    /// The timing is plain data written in one assignment, so a panic
    /// elsewhere while the lock was held cannot leave it half-updated; a
    /// poisoned lock is used as is.
    pub(crate) fn timing(&self) -> MutexGuard<'_, EjectionTiming> {
        self.timing.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An in-flight request on an endpoint; see [`Endpoint::start_request`].
#[derive(Debug)]
#[must_use = "dropping the guard ends the request at once"]
pub struct RequestGuard {
    endpoint: Arc<Endpoint>,
}

impl RequestGuard {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Ends the request and records its round-trip time (time to response
    /// headers is what Linkerd uses) into the endpoint's peak-EWMA estimate.
    pub fn finish(self, rtt: Duration) {
        self.finish_at(rtt, Instant::now());
    }

    /// [`finish`](Self::finish) with an explicit clock, for tests and callers
    /// that already read the time.
    pub fn finish_at(self, rtt: Duration, now: Instant) {
        self.endpoint.ewma.observe(rtt, now);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.endpoint.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::super::peak_ewma::DEFAULT_RTT;
    use super::*;

    fn ep(port: u16) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            1,
            Locality::default(),
            BTreeMap::new(),
        ))
    }

    #[test]
    fn locality_parse() {
        let cases = [
            (
                "us-east/us-east-1a/rack7",
                ("us-east", "us-east-1a", "rack7"),
            ),
            ("us-east/us-east-1a", ("us-east", "us-east-1a", "")),
            ("us-east", ("us-east", "", "")),
            ("", ("", "", "")),
            ("us-east//rack7", ("us-east", "", "rack7")),
            ("a/b/c/d", ("a", "b", "c")),
        ];
        for (input, (r, z, s)) in cases {
            assert_eq!(Locality::parse(input), Locality::new(r, z, s), "{input:?}");
        }
        assert!(Locality::parse("").is_empty());
        assert!(!Locality::parse("//x").is_empty());
    }

    #[test]
    fn locality_display_round_trips() {
        for s in [
            "us-east/us-east-1a/rack7",
            "us-east/us-east-1a",
            "us-east",
            "",
            "r//s",
        ] {
            let l = Locality::parse(s);
            assert_eq!(l.to_string(), s);
            assert_eq!(Locality::parse(&l.to_string()), l);
        }
    }

    #[test]
    fn new_endpoint_defaults() {
        let addr = SocketAddr::from(([10, 0, 0, 1], 80));
        let e = Endpoint::new(addr, 0, Locality::parse("r/z"), BTreeMap::new());
        assert_eq!(e.weight, 1, "weight 0 is raised to 1");
        assert_eq!(e.active(), 0);
        assert!(e.is_healthy());
        e.set_healthy(false);
        assert!(!e.is_healthy());
        e.set_healthy(true);
        assert!(e.is_healthy());
        assert_eq!(e.latency_estimate(Instant::now()), DEFAULT_RTT);
        assert!(!e.is_ejected());
        assert_eq!(e.outlier().consecutive_5xx(), 0);
        assert_eq!(e.outlier().consecutive_gateway_errors(), 0);
        assert_eq!(e.outlier().times_ejected(), 0);
        assert_eq!(e.outlier().ejection_multiplier(), 0);
        assert_eq!(e.outlier().ejected_until(), None);
        assert_eq!(
            Endpoint::new(addr, 7, Locality::default(), BTreeMap::new()).weight,
            7
        );
    }

    #[test]
    fn guard_counts_active_requests() {
        let e = ep(1);
        let g1 = e.start_request();
        let g2 = e.start_request();
        let g3 = e.start_request();
        assert_eq!(e.active(), 3);
        drop(g1);
        assert_eq!(e.active(), 2);
        g2.finish(Duration::from_millis(3));
        assert_eq!(e.active(), 1);
        assert!(Arc::ptr_eq(g3.endpoint(), &e));
        drop(g3);
        assert_eq!(e.active(), 0);
    }

    #[test]
    fn finish_records_latency_and_drop_does_not() {
        let e = ep(1);
        let now = Instant::now();
        drop(e.start_request());
        assert_eq!(e.latency_estimate(now), DEFAULT_RTT, "drop records nothing");
        e.start_request().finish_at(Duration::from_millis(40), now);
        let est = e.latency_estimate(now);
        assert!(
            (est.as_secs_f64() - 0.040).abs() < 1e-6,
            "a slower sample replaces the estimate at once, got {est:?}"
        );
    }

    #[test]
    fn guards_work_across_threads() {
        let e = ep(1);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        e.start_request().finish(Duration::from_micros(100));
                    }
                });
            }
        });
        assert_eq!(e.active(), 0);
    }
}
