//! ROUND_ROBIN, weighted and smooth: endpoints with weights 5:1:1 are picked
//! `a a b a c a a`, not `a a a a a b c` (nginx's smooth weighted round robin;
//! Envoy's EDF scheduler gives the same interleaving).
//!
//! The order of one whole cycle is fixed when the balancer is built, so a pick
//! is one relaxed `fetch_add` on a shared counter plus a lookup: no lock, no
//! per-pick state beyond the counter. Three shapes, by cost:
//!
//! - equal weights: index `k mod n`;
//! - otherwise, weights divided by their gcd, a cycle of at most
//!   [`TABLE_MAX`] picks: the nginx sequence, precomputed (4 bytes a pick,
//!   built in O(cycle × n));
//! - longer cycles (odd weights such as 2000:6001): the k-th pick is the
//!   position `k × step mod total` in the prefix-sum table, `step` coprime to
//!   `total` and close to `total / φ`. Each position is visited once a cycle,
//!   so the split is exact, and the golden-ratio stride spreads consecutive
//!   picks over the table (the three-distance theorem), so endpoints
//!   interleave. O(log n) per pick, O(1) extra memory.
//!
//! The counter starts at a random offset (chosen by the caller) so proxies
//! that load the same config do not all send their first request to the same
//! endpoint. When the scheduled endpoint is not eligible (unhealthy or
//! excluded) that pick is a weighted random pick among the eligible ones, so
//! an unhealthy endpoint's share is spread over the others by weight instead
//! of all landing on its successor.

use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;

use super::random::{self, Weights};

/// Longest cycle that is precomputed as a table.
pub(crate) const TABLE_MAX: u64 = 4096;

#[derive(Debug)]
pub(crate) struct RoundRobin {
    order: Order,
    next: AtomicU64,
}

#[derive(Debug)]
enum Order {
    /// Equal weights over `n` endpoints.
    Rotate(u64),
    /// One precomputed smooth cycle.
    Table(Vec<u32>),
    /// Golden-ratio stride over `total` units of `unit` weight each.
    Stride { unit: u64, total: u64, step: u64 },
}

impl RoundRobin {
    /// `start` is the first value of the pick counter.
    pub(crate) fn new(weights: &Weights, start: u64) -> Self {
        let n = weights.len() as u64;
        let first = weights.weights().next().unwrap_or(1);
        let order = if weights.weights().all(|w| w == first) {
            Order::Rotate(n)
        } else {
            let unit = weights.weights().fold(0, gcd);
            let total = weights.total() / unit;
            if total <= TABLE_MAX {
                let reduced: Vec<u64> = weights.weights().map(|w| w / unit).collect();
                Order::Table(smooth_cycle(&reduced))
            } else {
                Order::Stride {
                    unit,
                    total,
                    step: golden_step(total),
                }
            }
        };
        Self {
            order,
            next: AtomicU64::new(start),
        }
    }

    /// The endpoint index of the `k`-th pick. Pure; `weights` must be the
    /// table this was built from, with at least one entry.
    pub(crate) fn slot(&self, weights: &Weights, k: u64) -> usize {
        match &self.order {
            Order::Rotate(n) => (k % n) as usize,
            Order::Table(cycle) => cycle[(k % cycle.len() as u64) as usize] as usize,
            Order::Stride { unit, total, step } => {
                let pos = (u128::from(k % total) * u128::from(*step) % u128::from(*total)) as u64;
                weights.index_of(pos * unit)
            }
        }
    }

    /// The next endpoint in the cycle, or a weighted random eligible one when
    /// it is not eligible; `None` only when none is.
    pub(crate) fn pick(
        &self,
        weights: &Weights,
        eligible: impl Fn(usize) -> bool,
        rng: &mut impl Rng,
    ) -> Option<usize> {
        if weights.len() == 0 {
            return None;
        }
        let i = self.slot(weights, self.next.fetch_add(1, Ordering::Relaxed));
        if eligible(i) {
            return Some(i);
        }
        random::pick(weights, eligible, rng)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One cycle of nginx's smooth weighted round robin: each pick, every
/// endpoint's current weight grows by its weight; the largest (first on ties)
/// is picked and loses the total. O(total × n).
pub(crate) fn smooth_cycle(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let total_i = total as i64;
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += w as i64;
        }
        let best = argmax_first(&current);
        current[best] -= total_i;
        cycle.push(best as u32);
    }
    cycle
}

fn argmax_first(values: &[i64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// A step coprime to `total` near `total / φ`.
pub(crate) fn golden_step(total: u64) -> u64 {
    if total <= 2 {
        return 1;
    }
    const INV_PHI: f64 = 0.618_033_988_749_895;
    let target = ((total as f64 * INV_PHI).round() as u64).clamp(1, total - 1);
    for d in 0..total {
        for c in [target.saturating_add(d), target.saturating_sub(d)] {
            if (1..total).contains(&c) && gcd(c, total) == 1 {
                return c;
            }
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    /// The first `n` picks of a fresh cycle.
    fn sequence(weights: &[u32], n: u64) -> Vec<usize> {
        let w = Weights::new(weights.iter().copied());
        let rr = RoundRobin::new(&w, 0);
        (0..n).map(|k| rr.slot(&w, k)).collect()
    }

    /// Largest gap, over every prefix and endpoint, between picks so far and
    /// the ideal `prefix × weight / total`. Bursts make it large.
    fn discrepancy(seq: &[usize], weights: &[u32]) -> f64 {
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let mut counts = vec![0u32; weights.len()];
        let mut worst = 0.0f64;
        for (len, &i) in (1u32..).zip(seq) {
            counts[i] += 1;
            for (c, &w) in counts.iter().zip(weights) {
                let ideal = f64::from(len) * f64::from(w) / total;
                worst = worst.max((f64::from(*c) - ideal).abs());
            }
        }
        worst
    }

    #[test]
    fn nginx_reference_sequences() {
        let cases: &[(&[u64], &[u32])] = &[
            (&[5, 1, 1], &[0, 0, 1, 0, 2, 0, 0]), // nginx's own example: a a b a c a a
            (&[1, 2, 3], &[2, 1, 0, 2, 1, 2]),
            (&[1, 3], &[1, 0, 1, 1]),
            (&[2, 3], &[1, 0, 1, 0, 1]),
            (&[1], &[0]),
        ];
        for (weights, want) in cases {
            assert_eq!(smooth_cycle(weights), *want, "weights {weights:?}");
        }
    }

    #[test]
    fn shape_by_weights() {
        let cases: &[(&[u32], &str)] = &[
            (&[1, 1, 1], "rotate"),
            (&[7, 7], "rotate"),
            (&[1, 3], "table 4"),
            (&[100, 300], "table 4"), // divided by the gcd
            (&[4001, 95], "table 4096"),
            (&[4001, 96], "stride"),
            (&[2000, 6001], "stride"),
        ];
        for (weights, want) in cases {
            let rr = RoundRobin::new(&Weights::new(weights.iter().copied()), 0);
            let got = match &rr.order {
                Order::Rotate(_) => "rotate".to_string(),
                Order::Table(t) => format!("table {}", t.len()),
                Order::Stride { .. } => "stride".to_string(),
            };
            assert_eq!(got, *want, "weights {weights:?}");
        }
    }

    #[test]
    fn exact_per_cycle_and_smooth() {
        // (weights, cycle length, largest allowed discrepancy)
        let cases: &[(&[u32], u64, f64)] = &[
            (&[1, 1, 1, 1], 4, 1.0),
            (&[1, 3], 4, 1.0),
            (&[5, 1, 1], 7, 1.0),
            (&[1, 2, 3], 6, 1.0),
            (&[3, 2, 1, 1], 7, 1.0),
            (&[1, 2, 4, 8], 15, 1.0),
            (&[100, 1, 1], 102, 1.0),
            (&[200, 600], 4, 1.0),
            (&[17, 5, 11, 3, 9], 45, 1.0),
            // Stride: cycles too long for a table.
            (&[2000, 6001], 8001, 3.0),
            (&[3001, 1000, 7], 4008, 3.0),
            (&[3001, 1000, 97], 4098, 3.0),
            (&[5000, 1], 5001, 3.0),
        ];
        for (weights, cycle, bound) in cases {
            let seq = sequence(weights, 2 * cycle);
            for (i, &w) in weights.iter().enumerate() {
                let per_cycle = seq[..*cycle as usize].iter().filter(|&&x| x == i).count() as u64;
                let reduced =
                    u64::from(w) * cycle / weights.iter().map(|&w| u64::from(w)).sum::<u64>();
                assert_eq!(
                    per_cycle, reduced,
                    "weights {weights:?}: endpoint {i} once per unit"
                );
            }
            assert_eq!(
                seq[..*cycle as usize],
                seq[*cycle as usize..],
                "weights {weights:?} repeat"
            );
            let d = discrepancy(&seq, weights);
            assert!(
                d <= *bound + 1e-9,
                "weights {weights:?}: discrepancy {d:.2} > {bound}"
            );
        }
    }

    #[test]
    fn a_burst_would_fail_the_smoothness_measure() {
        // The measure used above is not vacuous: `b b b a` for 1:3 is fine
        // (0.75), the batched `a a b b b b b b` for 2:6 is not.
        assert!(discrepancy(&[1, 1, 1, 0], &[1, 3]) <= 1.0);
        assert!(discrepancy(&[0, 0, 1, 1, 1, 1, 1, 1], &[2, 6]) > 1.0);
    }

    #[test]
    fn golden_step_is_coprime_and_near_total_over_phi() {
        let cases = [
            (1, 1),
            (2, 1),
            (3, 2),
            (4, 3),
            (5, 3),
            (6, 5),
            (7, 4),
            (8, 5),
            (10, 7),
        ];
        for (total, want) in cases {
            assert_eq!(golden_step(total), want, "total {total}");
        }
        for total in [
            4097u64,
            8001,
            65_536,
            1_000_000,
            3 * 5 * 7 * 11 * 13 * 17 * 19,
        ] {
            let step = golden_step(total);
            assert_eq!(gcd(step, total), 1, "total {total}");
            let ratio = step as f64 / total as f64;
            assert!((ratio - 0.618).abs() < 0.001, "total {total}: step {step}");
        }
    }

    #[test]
    fn counter_starts_at_the_offset() {
        let w = Weights::new([1, 2, 3]);
        let fresh = RoundRobin::new(&w, 0);
        let offset = RoundRobin::new(&w, 4);
        let mut rng = SmallRng::seed_from_u64(1);
        for k in 4..20 {
            assert_eq!(offset.pick(&w, |_| true, &mut rng), Some(fresh.slot(&w, k)));
        }
        // The counter wraps without a hiccup in the cycle.
        let wrap = RoundRobin::new(&w, u64::MAX);
        assert_eq!(
            wrap.pick(&w, |_| true, &mut rng),
            Some(fresh.slot(&w, u64::MAX))
        );
    }

    #[test]
    fn ineligible_slot_falls_back_to_eligible() {
        let w = Weights::new([1, 1, 1]);
        let rr = RoundRobin::new(&w, 0);
        let mut rng = SmallRng::seed_from_u64(2);
        let mut hits = [0u32; 3];
        for _ in 0..3000 {
            hits[rr.pick(&w, |i| i != 0, &mut rng).unwrap()] += 1;
        }
        assert_eq!(hits[0], 0);
        // Endpoint 0's third is split between 1 and 2, not handed to 1 alone.
        assert!((1400..1600).contains(&hits[1]), "{hits:?}");
        assert_eq!(rr.pick(&w, |_| false, &mut rng), None);
        assert_eq!(
            RoundRobin::new(&Weights::new([]), 0).pick(&Weights::new([]), |_| true, &mut rng),
            None
        );
    }
}
