//! Peak-EWMA (a Trellis extension, after Finagle and Linkerd): prefer the
//! endpoint expected to answer soonest.
//!
//! Each endpoint keeps an exponentially weighted moving average of its
//! round-trip times with a decay time constant of [`DECAY`] (10 s):
//!
//! - a sample at or above the current estimate replaces it at once (the
//!   "peak": one slow response is believed immediately);
//! - a lower sample is blended in: `est = est * w + rtt * (1 - w)` with
//!   `w = exp(-elapsed / DECAY)`, `elapsed` being the time since the previous
//!   sample, so quick successive samples move the estimate little and a sample
//!   after a long gap counts almost fully;
//! - between samples the estimate decays towards [`DEFAULT_RTT`] with the same
//!   time constant, so an endpoint penalised by a spike, and then avoided, is
//!   tried again after a while instead of being starved forever.
//!
//! An endpoint with no samples is estimated at [`DEFAULT_RTT`] = 1 ms. It is
//! deliberately optimistic, below most in-mesh latencies, so new endpoints
//! and long-idle ones get probed; the `active + 1` factor of the cost keeps a
//! probe from becoming a flood (10 requests already in flight on it cost as
//! much as an endpoint measured at 10 ms with none).
//!
//! Cost = `estimate × (active / weight + 1)`, i.e. `estimate × (active + 1)`
//! at weight 1. The weight scales the queueing term only, like
//! LEAST_REQUEST's `active / weight`: a weight-3 endpoint is one that can
//! take three times the concurrent requests for the same penalty, not one that
//! answers three times faster. The pick is the power of two choices on cost
//! between two distinct weighted-random candidates (ties go to the first).
//!
//! So with requests in flight the split follows both latency and weight, but
//! at light load (nothing in flight) the endpoint with the lowest estimate
//! wins whatever the weights: that is the point of the policy. Between equally
//! fast endpoints the one answered longest ago has the more decayed, lower
//! estimate, so sequential requests alternate between them.
//!
//! Storage is two atomics: the estimate (f64 bits) and the time of the last
//! sample. A writer updates the estimate with a compare-and-swap and then
//! raises the time stamp; a reader between the two sees the new estimate with
//! the old stamp, i.e. slightly more decayed for a few nanoseconds, which is
//! harmless for a heuristic. No lock is taken on either path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

use super::random::{self, Weights};

/// Estimate of an endpoint that has not answered yet.
pub const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// Time constant of the moving average.
pub const DECAY: Duration = Duration::from_secs(10);

const DEFAULT_RTT_NS: f64 = 1_000_000.0;
const DECAY_NS: f64 = 10_000_000_000.0;

/// How much of the old estimate survives `elapsed_ns`.
fn history_weight(elapsed_ns: f64) -> f64 {
    (-elapsed_ns.max(0.0) / DECAY_NS).exp()
}

/// The estimate `elapsed_ns` after the last sample: decays from `stored_ns`
/// towards the default RTT.
pub(crate) fn estimate(stored_ns: f64, elapsed_ns: f64) -> f64 {
    let w = history_weight(elapsed_ns);
    stored_ns * w + DEFAULT_RTT_NS * (1.0 - w)
}

/// The stored value after a sample of `rtt_ns` taken `elapsed_ns` after the
/// previous one.
pub(crate) fn observe(stored_ns: f64, elapsed_ns: f64, rtt_ns: f64) -> f64 {
    if rtt_ns >= estimate(stored_ns, elapsed_ns) {
        return rtt_ns;
    }
    let w = history_weight(elapsed_ns);
    stored_ns * w + rtt_ns * (1.0 - w)
}

/// What the balancer minimises: `estimate × (active / weight + 1)`.
pub(crate) fn cost(estimate_ns: f64, active: u32, weight: u32) -> f64 {
    estimate_ns * (f64::from(active) / f64::from(weight.max(1)) + 1.0)
}

/// Power of two choices on `cost(i)` among eligible indices. `None` only when
/// no index is eligible.
pub(crate) fn pick(
    weights: &Weights,
    cost: impl Fn(usize) -> f64,
    eligible: impl Fn(usize) -> bool,
    rng: &mut impl Rng,
) -> Option<usize> {
    let a = random::pick(weights, &eligible, rng)?;
    let Some(b) = random::pick_other(weights, a, &eligible, rng) else {
        return Some(a);
    };
    Some(if cost(b) < cost(a) { b } else { a })
}

/// An endpoint's latency state.
#[derive(Debug)]
pub(crate) struct Ewma {
    epoch: Instant,
    /// f64 bits, nanoseconds.
    stored_ns: AtomicU64,
    /// Time of the last sample, nanoseconds since `epoch`.
    stamp_ns: AtomicU64,
}

impl Ewma {
    /// No samples yet: the default RTT, as of `epoch`.
    pub(crate) fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            stored_ns: AtomicU64::new(DEFAULT_RTT_NS.to_bits()),
            stamp_ns: AtomicU64::new(0),
        }
    }

    fn since_epoch_ns(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn estimate_ns(&self, now: Instant) -> f64 {
        let stamp = self.stamp_ns.load(Ordering::Relaxed);
        let stored = f64::from_bits(self.stored_ns.load(Ordering::Relaxed));
        estimate(
            stored,
            self.since_epoch_ns(now).saturating_sub(stamp) as f64,
        )
    }

    pub(crate) fn observe(&self, rtt: Duration, now: Instant) {
        let now_ns = self.since_epoch_ns(now);
        let rtt_ns = rtt.as_secs_f64() * 1e9;
        let mut current = self.stored_ns.load(Ordering::Relaxed);
        loop {
            let elapsed = now_ns.saturating_sub(self.stamp_ns.load(Ordering::Relaxed));
            let next = observe(f64::from_bits(current), elapsed as f64, rtt_ns);
            match self.stored_ns.compare_exchange_weak(
                current,
                next.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        self.stamp_ns.fetch_max(now_ns, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    const MS: f64 = 1e6;
    const S: f64 = 1e9;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn observe_table() {
        let e = (-1.0f64).exp(); // history weight after one time constant
        let cases = [
            // (name, stored, elapsed, rtt, want)
            ("peak replaces", 5.0 * MS, 0.0, 50.0 * MS, 50.0 * MS),
            ("equal replaces", 5.0 * MS, 0.0, 5.0 * MS, 5.0 * MS),
            (
                "lower, no time passed: unchanged",
                50.0 * MS,
                0.0,
                5.0 * MS,
                50.0 * MS,
            ),
            (
                "lower, one time constant later",
                50.0 * MS,
                10.0 * S,
                5.0 * MS,
                50.0 * MS * e + 5.0 * MS * (1.0 - e),
            ),
            (
                "lower, long after: the sample",
                50.0 * MS,
                1000.0 * S,
                5.0 * MS,
                5.0 * MS,
            ),
            (
                "stored below default, idle: compared to decayed estimate",
                0.2 * MS,
                1000.0 * S,
                0.5 * MS,
                0.5 * MS,
            ),
        ];
        for (name, stored, elapsed, rtt, want) in cases {
            let got = observe(stored, elapsed, rtt);
            assert!(close(got, want), "{name}: got {got}, want {want}");
        }
    }

    #[test]
    fn estimate_decays_towards_default() {
        let e = (-1.0f64).exp();
        let cases = [
            (100.0 * MS, 0.0, 100.0 * MS),
            (100.0 * MS, 10.0 * S, 100.0 * MS * e + MS * (1.0 - e)),
            (100.0 * MS, 1000.0 * S, MS),
            (0.1 * MS, 1000.0 * S, MS),
            (MS, 3.0 * S, MS),
        ];
        for (stored, elapsed, want) in cases {
            let got = estimate(stored, elapsed);
            assert!(
                close(got, want),
                "estimate({stored}, {elapsed}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn cost_table() {
        let cases = [
            (MS, 0, 1, MS),
            (MS, 9, 1, 10.0 * MS),
            (10.0 * MS, 0, 1, 10.0 * MS),
            (4.0 * MS, 0, 3, 4.0 * MS), // idle: weight does not matter
            (4.0 * MS, 3, 3, 8.0 * MS),
            (4.0 * MS, 1, 2, 6.0 * MS),
            (4.0 * MS, 2, 0, 12.0 * MS), // weight 0 treated as 1
        ];
        for (est, active, weight, want) in cases {
            assert!(
                close(cost(est, active, weight), want),
                "cost({est}, {active}, {weight})"
            );
        }
    }

    #[test]
    fn atomic_state_follows_the_pure_functions() {
        let t0 = Instant::now();
        let ewma = Ewma::new(t0);
        assert!(close(ewma.estimate_ns(t0), MS), "no samples: default RTT");
        assert!(close(ewma.estimate_ns(t0 + Duration::from_secs(100)), MS));

        ewma.observe(Duration::from_millis(20), t0 + Duration::from_secs(1));
        assert!(close(
            ewma.estimate_ns(t0 + Duration::from_secs(1)),
            20.0 * MS
        ));

        // A 5 ms sample one time constant later blends.
        let t2 = t0 + Duration::from_secs(11);
        ewma.observe(Duration::from_millis(5), t2);
        let e = (-1.0f64).exp();
        let want = 20.0 * MS * e + 5.0 * MS * (1.0 - e);
        assert!(close(ewma.estimate_ns(t2), want));

        // A spike is believed at once.
        let t3 = t2 + Duration::from_millis(1);
        ewma.observe(Duration::from_millis(300), t3);
        assert!(close(ewma.estimate_ns(t3), 300.0 * MS));

        // And forgotten with time: after 10 time constants it is nearly the default.
        let later = ewma.estimate_ns(t3 + Duration::from_secs(100));
        assert!(later < 1.02 * MS, "got {later}");
    }

    #[test]
    fn prefers_the_cheaper_endpoint() {
        let w = Weights::new([1, 1]);
        let costs = [10.0 * MS, MS];
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..1000 {
            assert_eq!(pick(&w, |i| costs[i], |_| true, &mut rng), Some(1));
        }
    }

    #[test]
    fn equal_costs_follow_weights() {
        let w = Weights::new([1, 3]);
        let mut rng = SmallRng::seed_from_u64(8);
        let mut hits = [0u32; 2];
        for _ in 0..10_000 {
            hits[pick(&w, |_| MS, |_| true, &mut rng).unwrap()] += 1;
        }
        let share = f64::from(hits[1]) / 10_000.0;
        assert!((share - 0.75).abs() < 0.02, "share {share}");
    }

    #[test]
    fn skips_ineligible_and_returns_none_when_none_left() {
        let w = Weights::new([1, 1, 1]);
        let mut rng = SmallRng::seed_from_u64(9);
        let costs = [MS, 2.0 * MS, 3.0 * MS];
        for _ in 0..200 {
            assert_eq!(pick(&w, |i| costs[i], |i| i != 0, &mut rng), Some(1));
            assert_eq!(pick(&w, |i| costs[i], |i| i == 2, &mut rng), Some(2));
            assert_eq!(pick(&w, |i| costs[i], |_| false, &mut rng), None);
        }
    }
}
