//! Weighted random choice by prefix sums, the building block of RANDOM,
//! LEAST_REQUEST and PEAK_EWMA (which draw their two candidates here), and the
//! fallback of ROUND_ROBIN and RING_HASH.
//!
//! Eligibility (healthy, not excluded) is a predicate over indices, read at
//! pick time. A pick first draws from the full weight table and rejects an
//! ineligible result, up to [`FAST_ATTEMPTS`] times: O(log n) each, and
//! rejection sampling gives exactly the weighted distribution over the
//! eligible endpoints. If every attempt is rejected (most of the weight is
//! ineligible) it falls back to an exact O(n) scan, still without allocating.

use rand::Rng;

/// Draws from the whole table before scanning for eligible endpoints.
pub(crate) const FAST_ATTEMPTS: usize = 3;

/// Prefix sums of endpoint weights; every weight is at least 1.
#[derive(Debug, Clone)]
pub(crate) struct Weights {
    cum: Vec<u64>,
}

impl Weights {
    pub(crate) fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        let mut total = 0u64;
        let cum = weights
            .into_iter()
            .map(|w| {
                total += u64::from(w.max(1));
                total
            })
            .collect();
        Self { cum }
    }

    pub(crate) fn len(&self) -> usize {
        self.cum.len()
    }

    pub(crate) fn total(&self) -> u64 {
        self.cum.last().copied().unwrap_or(0)
    }

    /// Where index `i`'s share starts in `0..total`.
    pub(crate) fn start(&self, i: usize) -> u64 {
        if i == 0 { 0 } else { self.cum[i - 1] }
    }

    pub(crate) fn weight(&self, i: usize) -> u64 {
        self.cum[i] - self.start(i)
    }

    pub(crate) fn weights(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len()).map(|i| self.weight(i))
    }

    /// The index whose share contains `r` (`r < total`). O(log n).
    pub(crate) fn index_of(&self, r: u64) -> usize {
        self.cum.partition_point(|&c| c <= r)
    }
}

/// A weighted random eligible index; `None` only when none is eligible.
pub(crate) fn pick(
    weights: &Weights,
    eligible: impl Fn(usize) -> bool,
    rng: &mut impl Rng,
) -> Option<usize> {
    if weights.len() == 0 {
        return None;
    }
    for _ in 0..FAST_ATTEMPTS {
        let i = weights.index_of(rng.random_range(0..weights.total()));
        if eligible(i) {
            return Some(i);
        }
    }
    pick_slow(weights, eligible, None, rng)
}

/// A weighted random eligible index other than `first` (the second candidate
/// of the power of two choices); `None` when there is none.
pub(crate) fn pick_other(
    weights: &Weights,
    first: usize,
    eligible: impl Fn(usize) -> bool,
    rng: &mut impl Rng,
) -> Option<usize> {
    if weights.len() < 2 {
        return None;
    }
    // Draw from the table with `first`'s share cut out: exact, no retries.
    let (skip_start, skip_len) = (weights.start(first), weights.weight(first));
    for _ in 0..FAST_ATTEMPTS {
        let mut r = rng.random_range(0..weights.total() - skip_len);
        if r >= skip_start {
            r += skip_len;
        }
        let i = weights.index_of(r);
        if eligible(i) {
            return Some(i);
        }
    }
    pick_slow(weights, eligible, Some(first), rng)
}

/// Exact weighted choice among eligible indices (minus `skip`): two O(n)
/// passes, no allocation.
fn pick_slow(
    weights: &Weights,
    eligible: impl Fn(usize) -> bool,
    skip: Option<usize>,
    rng: &mut impl Rng,
) -> Option<usize> {
    let ok = |i: usize| Some(i) != skip && eligible(i);
    let total: u64 = (0..weights.len())
        .filter(|&i| ok(i))
        .map(|i| weights.weight(i))
        .sum();
    if total == 0 {
        return None;
    }
    let mut r = rng.random_range(0..total);
    let mut last = None;
    for i in (0..weights.len()).filter(|&i| ok(i)) {
        let w = weights.weight(i);
        if r < w {
            return Some(i);
        }
        r -= w;
        last = Some(i);
    }
    // Health flipped between the two passes; any eligible index will do.
    last
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    const PICKS: u32 = 10_000;

    /// Shares of each index over `PICKS` picks.
    fn shares(mut f: impl FnMut() -> Option<usize>, n: usize) -> Vec<f64> {
        let mut hits = vec![0u32; n];
        for _ in 0..PICKS {
            hits[f().expect("an eligible index")] += 1;
        }
        hits.iter()
            .map(|&h| f64::from(h) / f64::from(PICKS))
            .collect()
    }

    fn assert_shares(got: &[f64], want: &[f64], tol: f64, what: &str) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol,
                "{what}: index {i} share {g:.4}, want {w:.4}"
            );
        }
    }

    #[test]
    fn prefix_sums() {
        let w = Weights::new([2, 0, 5]);
        assert_eq!(w.len(), 3);
        assert_eq!(w.total(), 8, "weight 0 counts as 1");
        assert_eq!(w.weights().collect::<Vec<_>>(), vec![2, 1, 5]);
        let cases = [(0, 0), (1, 0), (2, 1), (3, 2), (7, 2)];
        for (r, want) in cases {
            assert_eq!(w.index_of(r), want, "index_of({r})");
        }
        assert_eq!(Weights::new([]).total(), 0);
    }

    #[test]
    fn weighted_distribution() {
        let cases: &[(&[u32], &[f64])] = &[
            (&[1, 3], &[0.25, 0.75]),
            (&[1, 1, 1, 1], &[0.25, 0.25, 0.25, 0.25]),
            (&[1, 2, 7], &[0.1, 0.2, 0.7]),
            (&[100, 300], &[0.25, 0.75]),
        ];
        for (seed, (ws, want)) in cases.iter().enumerate() {
            let w = Weights::new(ws.iter().copied());
            let mut rng = SmallRng::seed_from_u64(seed as u64);
            let got = shares(|| pick(&w, |_| true, &mut rng), ws.len());
            assert_shares(&got, want, 0.02, &format!("weights {ws:?}"));
        }
    }

    #[test]
    fn ineligible_share_is_spread_by_weight() {
        // Index 1 ineligible: the rest keep their 1:2 ratio. Index 0
        // ineligible with 97% of the weight: the exact slow path does it.
        let cases: &[(&[u32], usize, &[f64])] = &[
            (&[1, 1, 2], 1, &[1.0 / 3.0, 0.0, 2.0 / 3.0]),
            (&[97, 1, 2], 0, &[0.0, 1.0 / 3.0, 2.0 / 3.0]),
        ];
        for (ws, bad, want) in cases {
            let w = Weights::new(ws.iter().copied());
            let mut rng = SmallRng::seed_from_u64(3);
            let got = shares(|| pick(&w, |i| i != *bad, &mut rng), ws.len());
            assert_shares(&got, want, 0.02, &format!("weights {ws:?} without {bad}"));
        }
    }

    #[test]
    fn none_when_nothing_eligible() {
        let mut rng = SmallRng::seed_from_u64(4);
        let w = Weights::new([1, 2, 3]);
        assert_eq!(pick(&w, |_| false, &mut rng), None);
        assert_eq!(pick(&Weights::new([]), |_| true, &mut rng), None);
        assert_eq!(pick_other(&w, 0, |i| i == 0, &mut rng), None);
        assert_eq!(pick_other(&Weights::new([5]), 0, |_| true, &mut rng), None);
    }

    #[test]
    fn other_never_returns_first_and_follows_remaining_weights() {
        let w = Weights::new([1, 6, 3]);
        let mut rng = SmallRng::seed_from_u64(5);
        let got = shares(|| pick_other(&w, 1, |_| true, &mut rng), 3);
        assert_shares(&got, &[0.25, 0.0, 0.75], 0.02, "other than 1");
        // Only one other eligible index: always it.
        for _ in 0..100 {
            assert_eq!(pick_other(&w, 0, |i| i != 2, &mut rng), Some(1));
        }
    }
}
