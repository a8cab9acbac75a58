//! RING_HASH: a consistent hash ring, Ketama-style (Istio `consistentHash`).
//!
//! Endpoint `addr` with weight `w` gets `w × V` points on a 64-bit ring, at
//! the hashes of `"{addr}_0"`, `"{addr}_1"`, … (Envoy's naming); a request key
//! maps to the first point at or after its hash, wrapping around.
//!
//! `V`, the points per unit of weight, is the smallest power of two with
//! `V × total_weight >= minimum_ring_size` (Envoy instead scales the ring so
//! its size is just above the minimum). The difference matters for
//! consistency: an endpoint's points depend only on its address, its weight
//! and `V`, and `V` stays put as long as the total weight does not cross a
//! power-of-two fraction of the minimum ring size. Adding an endpoint then
//! only adds its points, so the only keys that move are those that move to
//! it; removing one only moves the keys it owned (Envoy's rescaling moves a
//! few percent of other keys on every change). When `V` does change (the
//! total weight going from 7 to 8, 15 to 16, … with the default 1024) every
//! endpoint gains or loses points and more keys move, as with any rebuild.
//!
//! The ring holds at most [`MAXIMUM_RING_SIZE`] points (Envoy's default
//! limit), 12 bytes each; total weights above it get `max(1, w × max / total)`
//! points each. A pick is a binary search, O(log ring size).
//!
//! Unhealthy or excluded endpoints are skipped by walking clockwise to the
//! next eligible point, which is exactly where the keys would go if the
//! endpoint were removed from the ring: an endpoint flapping does not move
//! anyone else's keys.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;

use super::hash_key::Hasher64;

/// Istio's and Envoy's default `minimumRingSize`.
pub const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;
/// Upper bound on points in one ring (Envoy's default `maximum_ring_size`).
pub const MAXIMUM_RING_SIZE: u64 = 8 * 1024 * 1024;

/// Points per unit of weight; see the module docs. A `minimum_ring_size` of 0
/// means the default.
pub(crate) fn points_per_weight(total_weight: u64, minimum_ring_size: u64) -> u64 {
    let min = match minimum_ring_size {
        0 => DEFAULT_MINIMUM_RING_SIZE,
        m => m.min(MAXIMUM_RING_SIZE),
    };
    let total = total_weight.max(1);
    let mut v = 1u64;
    while v.saturating_mul(total) < min {
        v *= 2;
    }
    while v > 1 && v.saturating_mul(total) > MAXIMUM_RING_SIZE {
        v /= 2;
    }
    v
}

/// Points of an endpoint of weight `w` in a ring of total weight `total`.
pub(crate) fn point_count(w: u32, total: u64, v: u64) -> u64 {
    let w = u64::from(w.max(1));
    if total > MAXIMUM_RING_SIZE {
        ((u128::from(w) * u128::from(MAXIMUM_RING_SIZE) / u128::from(total)) as u64).max(1)
    } else {
        w * v
    }
}

/// The hash of an endpoint's `i`-th point.
fn point_hash(addr: SocketAddr, i: u64) -> u64 {
    let mut h = Hasher64::new();
    // Writing into the hasher cannot fail.
    let _ = write!(h, "{addr}_{i}");
    h.finish()
}

pub(crate) struct Ring {
    /// Sorted point hashes.
    hashes: Vec<u64>,
    /// `owners[p]`: the index (into the input) of the endpoint owning point `p`.
    owners: Vec<u32>,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("points", &self.hashes.len())
            .finish()
    }
}

impl Ring {
    /// A ring over `(address, weight)` pairs; owners are indices into them.
    pub(crate) fn new(endpoints: &[(SocketAddr, u32)], minimum_ring_size: u64) -> Self {
        let total: u64 = endpoints.iter().map(|&(_, w)| u64::from(w.max(1))).sum();
        let v = points_per_weight(total, minimum_ring_size);
        let count = |w: u32| point_count(w, total, v);
        let size: u64 = endpoints.iter().map(|&(_, w)| count(w)).sum();
        let mut points = Vec::with_capacity(size as usize);
        for (owner, &(addr, w)) in endpoints.iter().enumerate() {
            for i in 0..count(w) {
                points.push((point_hash(addr, i), owner as u32));
            }
        }
        points.sort_unstable();
        let (hashes, owners) = points.into_iter().unzip();
        Self { hashes, owners }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }

    /// The first point at or after `hash`, wrapping past the end.
    pub(crate) fn position(&self, hash: u64) -> usize {
        let p = self.hashes.partition_point(|&h| h < hash);
        if p == self.hashes.len() { 0 } else { p }
    }

    /// The owner of the first eligible point at or after `hash`; `None` when
    /// none of the `n` endpoints is eligible. O(log size) when the first point
    /// is eligible; otherwise an O(n) check that some endpoint is, then a walk.
    pub(crate) fn pick(
        &self,
        hash: u64,
        n: usize,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if self.hashes.is_empty() {
            return None;
        }
        let start = self.position(hash);
        let first = self.owners[start] as usize;
        if eligible(first) {
            return Some(first);
        }
        if !(0..n).any(&eligible) {
            return None;
        }
        let len = self.owners.len();
        (1..len)
            .map(|step| self.owners[(start + step) % len] as usize)
            .find(|&i| eligible(i))
    }
}

#[cfg(test)]
mod tests {
    use super::super::hash_key::hash_bytes;
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 8080))
    }

    fn keys(n: usize) -> Vec<u64> {
        (0..n)
            .map(|k| hash_bytes(format!("key-{k}").as_bytes()))
            .collect()
    }

    /// The address each key maps to.
    fn owners(eps: &[(SocketAddr, u32)], ring: &Ring, keys: &[u64]) -> Vec<SocketAddr> {
        keys.iter()
            .map(|&k| eps[ring.pick(k, eps.len(), |_| true).unwrap()].0)
            .collect()
    }

    fn equal(n: u8) -> Vec<(SocketAddr, u32)> {
        (1..=n).map(|i| (addr(i), 1)).collect()
    }

    #[test]
    fn points_per_weight_table() {
        let cases = [
            // (total weight, minimum ring size, V)
            (1, 1024, 1024),
            (4, 1024, 256),
            (5, 1024, 256),
            (6, 1024, 256),
            (7, 1024, 256),
            (8, 1024, 128),
            (1000, 1024, 2),
            (1024, 1024, 1),
            (5000, 1024, 1),
            (5, 0, 256), // 0 means the default
            (3, 100, 64),
            (1, u64::MAX, MAXIMUM_RING_SIZE),
            (3, MAXIMUM_RING_SIZE, 2 * 1024 * 1024), // capped at the maximum
        ];
        for (total, min, want) in cases {
            assert_eq!(points_per_weight(total, min), want, "W={total} min={min}");
        }
    }

    #[test]
    fn points_are_proportional_to_weight() {
        let eps = [(addr(1), 1), (addr(2), 3)];
        let ring = Ring::new(&eps, 1024);
        assert_eq!(ring.len(), 1024);
        let of = |o: u32| ring.owners.iter().filter(|&&x| x == o).count();
        assert_eq!((of(0), of(1)), (256, 768));
        assert!(ring.hashes.is_sorted());

        let ring = Ring::new(&equal(3), 10);
        assert_eq!(ring.len(), 12, "at least the minimum: 3 × 4");

        // Total weight above the maximum: scaled down, at least 1 point each.
        let max = MAXIMUM_RING_SIZE;
        let cases = [
            // (weight, total weight, V, points)
            (3, 4, 256, 768),
            (0, 4, 256, 256),
            (u32::MAX, 2 * max, 1, u64::from(u32::MAX) / 2),
            (1, 4 * max, 1, 1),
            (4, 4 * max, 1, 1),
            (8, 4 * max, 1, 2),
        ];
        for (w, total, v, want) in cases {
            assert_eq!(point_count(w, total, v), want, "w={w} W={total} V={v}");
        }
    }

    #[test]
    fn position_wraps() {
        let ring = Ring::new(&equal(2), 8);
        let first = ring.hashes[0];
        let last = *ring.hashes.last().unwrap();
        assert_eq!(ring.position(first), 0);
        assert_eq!(ring.position(first.wrapping_sub(1)), 0);
        assert_eq!(ring.position(first + 1), 1);
        assert_eq!(ring.position(last), ring.len() - 1);
        if last < u64::MAX {
            assert_eq!(ring.position(last + 1), 0, "past the last point wraps");
        }
    }

    #[test]
    fn same_key_same_endpoint_whatever_the_input_order() {
        let eps = equal(5);
        let mut reversed = eps.clone();
        reversed.reverse();
        let ks = keys(2000);
        let a = owners(&eps, &Ring::new(&eps, 1024), &ks);
        let b = owners(&reversed, &Ring::new(&reversed, 1024), &ks);
        assert_eq!(a, b);
        assert_eq!(
            a,
            owners(&eps, &Ring::new(&eps, 1024), &ks),
            "deterministic"
        );
    }

    #[test]
    fn keys_spread_by_weight() {
        let ks = keys(10_000);
        let cases: &[(&[u32], &[f64])] = &[
            (&[1, 1, 1, 1, 1], &[0.2, 0.2, 0.2, 0.2, 0.2]),
            (&[1, 3], &[0.25, 0.75]),
            (&[1, 2, 1], &[0.25, 0.5, 0.25]),
        ];
        for (ws, want) in cases {
            let eps: Vec<_> = ws
                .iter()
                .enumerate()
                .map(|(i, &w)| (addr(i as u8 + 1), w))
                .collect();
            let ring = Ring::new(&eps, 1024);
            let mut hits = vec![0u32; eps.len()];
            for &k in &ks {
                hits[ring.pick(k, eps.len(), |_| true).unwrap()] += 1;
            }
            for (i, (&h, &w)) in hits.iter().zip(want.iter()).enumerate() {
                let share = f64::from(h) / ks.len() as f64;
                assert!(
                    (share - w).abs() <= 0.03,
                    "{ws:?}: endpoint {i} share {share:.3}, want {w}"
                );
            }
        }
    }

    #[test]
    fn adding_an_endpoint_only_moves_keys_to_it() {
        let ks = keys(10_000);
        let five = equal(5);
        let six = equal(6);
        let before = owners(&five, &Ring::new(&five, 1024), &ks);
        let after = owners(&six, &Ring::new(&six, 1024), &ks);
        let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
        assert!(
            moved.iter().all(|(_, a)| **a == addr(6)),
            "every moved key moved to the new endpoint"
        );
        let share = moved.len() as f64 / ks.len() as f64;
        assert!(
            (share - 1.0 / 6.0).abs() < 0.03,
            "moved {share:.3}, want about 1/6"
        );
    }

    #[test]
    fn removing_an_endpoint_only_moves_its_keys() {
        let ks = keys(10_000);
        let five = equal(5);
        let four: Vec<_> = five
            .iter()
            .copied()
            .filter(|&(a, _)| a != addr(3))
            .collect();
        let before = owners(&five, &Ring::new(&five, 1024), &ks);
        let after = owners(&four, &Ring::new(&four, 1024), &ks);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if *b == addr(3) {
                moved += 1;
                assert_ne!(*a, addr(3));
            } else {
                assert_eq!(a, b, "a key of a remaining endpoint moved");
            }
        }
        let share = f64::from(moved) / ks.len() as f64;
        assert!(
            (share - 0.2).abs() < 0.03,
            "moved {share:.3}, want about 1/5"
        );
    }

    #[test]
    fn raising_a_weight_only_moves_keys_to_that_endpoint() {
        let ks = keys(10_000);
        let before_eps = equal(5);
        let mut after_eps = before_eps.clone();
        after_eps[0].1 = 2; // total 5 -> 6: V stays 256
        let before = owners(&before_eps, &Ring::new(&before_eps, 1024), &ks);
        let after = owners(&after_eps, &Ring::new(&after_eps, 1024), &ks);
        for (b, a) in before.iter().zip(&after) {
            assert!(a == b || *a == addr(1), "{b} -> {a}");
        }
    }

    #[test]
    fn ineligible_endpoint_is_skipped_as_if_removed() {
        let ks = keys(10_000);
        let five = equal(5);
        let four: Vec<_> = five
            .iter()
            .copied()
            .filter(|&(a, _)| a != addr(3))
            .collect();
        let ring5 = Ring::new(&five, 1024);
        let ring4 = Ring::new(&four, 1024);
        for &k in &ks {
            let skipped = five[ring5.pick(k, 5, |i| five[i].0 != addr(3)).unwrap()].0;
            let removed = four[ring4.pick(k, 4, |_| true).unwrap()].0;
            assert_eq!(skipped, removed);
        }
    }

    #[test]
    fn none_when_nothing_eligible() {
        let ring = Ring::new(&equal(3), 1024);
        for k in keys(100) {
            assert_eq!(ring.pick(k, 3, |_| false), None);
            assert_eq!(ring.pick(k, 3, |i| i == 1), Some(1));
        }
        assert_eq!(Ring::new(&[], 1024).pick(1, 0, |_| true), None);
    }
}
