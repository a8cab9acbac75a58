//! LEAST_REQUEST, the mesh's default: the power of two choices. Draw two
//! distinct weighted-random candidates and keep the one with the lower
//! effective load `active / weight`; on a tie keep the first, so an idle
//! cluster is split exactly by weight.
//!
//! Two candidates rather than a scan for the global minimum: O(log n) per
//! pick, and it avoids the herd effect where every proxy sends to the same
//! momentarily idle endpoint (Mitzenmacher; Envoy and Linkerd do the same).

use rand::Rng;

use super::random::{self, Weights};

/// True when `b` is strictly less loaded than `a`: `b.active / b.weight <
/// a.active / a.weight`, compared without division.
pub(crate) fn less_loaded(b_active: u32, b_weight: u64, a_active: u32, a_weight: u64) -> bool {
    u128::from(b_active) * u128::from(a_weight) < u128::from(a_active) * u128::from(b_weight)
}

/// The less loaded of two eligible candidates; `None` only when no index is
/// eligible.
pub(crate) fn pick(
    weights: &Weights,
    active: impl Fn(usize) -> u32,
    eligible: impl Fn(usize) -> bool,
    rng: &mut impl Rng,
) -> Option<usize> {
    let a = random::pick(weights, &eligible, rng)?;
    let Some(b) = random::pick_other(weights, a, &eligible, rng) else {
        return Some(a);
    };
    Some(
        if less_loaded(active(b), weights.weight(b), active(a), weights.weight(a)) {
            b
        } else {
            a
        },
    )
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    #[test]
    fn effective_load_table() {
        let cases = [
            // (b_active, b_weight, a_active, a_weight, b wins)
            (0, 1, 1, 1, true),
            (1, 1, 0, 1, false),
            (2, 1, 2, 1, false), // tie keeps a
            (3, 3, 1, 1, false), // 1.0 vs 1.0: tie
            (2, 3, 1, 1, true),  // 0.67 < 1.0
            (4, 3, 1, 1, false), // 1.33 > 1.0
            (0, 1, 0, 5, false), // idle tie
            (u32::MAX, u64::from(u32::MAX), u32::MAX, 1, true),
        ];
        for (ba, bw, aa, aw, want) in cases {
            assert_eq!(less_loaded(ba, bw, aa, aw), want, "b={ba}/{bw} a={aa}/{aw}");
        }
    }

    #[test]
    fn prefers_idle_endpoints() {
        // Endpoint 2 is the only idle one of three: with distinct candidates
        // it wins whenever drawn, i.e. in 2 of 3 pairs.
        let w = Weights::new([1, 1, 1]);
        let active = [5u32, 5, 0];
        let mut rng = SmallRng::seed_from_u64(1);
        let mut hits = [0u32; 3];
        for _ in 0..9_000 {
            hits[pick(&w, |i| active[i], |_| true, &mut rng).unwrap()] += 1;
        }
        let idle = f64::from(hits[2]) / 9_000.0;
        assert!((idle - 2.0 / 3.0).abs() < 0.02, "idle share {idle}");

        // Two endpoints: the busier one is never chosen.
        let w = Weights::new([1, 1]);
        for _ in 0..1000 {
            assert_eq!(pick(&w, |i| [3, 1][i], |_| true, &mut rng), Some(1));
        }
    }

    #[test]
    fn idle_split_follows_weights() {
        let cases: &[(&[u32], &[f64])] = &[
            (&[1, 3], &[0.25, 0.75]),
            (&[1, 1], &[0.5, 0.5]),
            (&[2, 1, 1], &[0.5, 0.25, 0.25]),
        ];
        for (ws, want) in cases {
            let w = Weights::new(ws.iter().copied());
            let mut rng = SmallRng::seed_from_u64(2);
            let mut hits = vec![0u32; ws.len()];
            for _ in 0..10_000 {
                hits[pick(&w, |_| 0, |_| true, &mut rng).unwrap()] += 1;
            }
            for (i, (&h, &want)) in hits.iter().zip(want.iter()).enumerate() {
                let got = f64::from(h) / 10_000.0;
                assert!((got - want).abs() < 0.02, "{ws:?}: index {i} share {got}");
            }
        }
    }

    #[test]
    fn weight_scales_load() {
        // Weight 3 with 2 active (0.67) beats weight 1 with 1 active (1.0).
        let w = Weights::new([1, 3]);
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..1000 {
            assert_eq!(pick(&w, |i| [1, 2][i], |_| true, &mut rng), Some(1));
        }
    }

    #[test]
    fn skips_ineligible() {
        let w = Weights::new([1, 1, 1]);
        let mut rng = SmallRng::seed_from_u64(4);
        for _ in 0..500 {
            // The idle endpoint is unhealthy: the less busy of the others wins.
            assert_eq!(pick(&w, |i| [4, 2, 0][i], |i| i != 2, &mut rng), Some(1));
            assert_eq!(pick(&w, |i| [4, 2, 0][i], |i| i == 0, &mut rng), Some(0));
            assert_eq!(pick(&w, |_| 0, |_| false, &mut rng), None);
        }
    }
}
