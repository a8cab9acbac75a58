//! Circuit-breaker limits of a cluster (Istio `connectionPool`, Envoy
//! `circuit_breakers`): caps on what one cluster may hold open at once, so a
//! slow upstream makes requests fail fast instead of piling up in this
//! proxy and in every caller behind it.
//!
//! | slot | Istio field | held while |
//! |---|---|---|
//! | `Connection` | `tcp.maxConnections` | an upstream connection is open |
//! | `Pending` | `http.http1MaxPendingRequests` | a request waits for a connection |
//! | `Request` | `http.http2MaxRequests` | a request is in flight |
//! | `Retry` | `http.maxRetries` | a retry is in flight (Envoy counts retries outstanding, not per request) |
//!
//! Each counter is one atomic; acquiring is a compare-and-swap loop that
//! never lets a count pass its limit, even transiently, so the limit is
//! exact under any concurrency and a refused caller never disturbs the
//! others. A [`Permit`] gives its slot back when dropped, on every path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// The limits of one cluster. `u32::MAX` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Istio `tcp.maxConnections`: open upstream connections.
    pub max_connections: u32,
    /// Istio `http.http1MaxPendingRequests`: requests waiting for a
    /// connection.
    pub max_pending: u32,
    /// Istio `http.http2MaxRequests`: requests in flight.
    pub max_requests: u32,
    /// Istio `http.maxRetries`: retries in flight across the cluster.
    pub max_retries: u32,
}

/// Unlimited, as Istio configures Envoy when `connectionPool` leaves a field
/// unset (`2^32 - 1`): Envoy's own defaults (1024, 3 retries) surprise
/// users of busy services, and Istio chose not to apply them.
impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: u32::MAX,
            max_pending: u32::MAX,
            max_requests: u32::MAX,
            max_retries: u32::MAX,
        }
    }
}

/// What a [`Permit`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// An open upstream connection.
    Connection,
    /// A request waiting for a connection.
    Pending,
    /// A request in flight.
    Request,
    /// A retry in flight.
    Retry,
}

impl Slot {
    fn index(self) -> usize {
        match self {
            Slot::Connection => 0,
            Slot::Pending => 1,
            Slot::Request => 2,
            Slot::Retry => 3,
        }
    }
}

/// A refused acquisition: which limit was reached, so the local reply and
/// the overflow metric can name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Overflow {
    /// [`Limits::max_connections`] is full.
    #[error("circuit breaker: max_connections reached")]
    MaxConnections,
    /// [`Limits::max_pending`] is full.
    #[error("circuit breaker: max_pending_requests reached")]
    MaxPendingRequests,
    /// [`Limits::max_requests`] is full.
    #[error("circuit breaker: max_requests reached")]
    MaxRequests,
    /// [`Limits::max_retries`] is full.
    #[error("circuit breaker: max_retries reached")]
    MaxRetries,
}

impl Overflow {
    /// The limit's name as Envoy's stats and `x-trellis-reason` detail
    /// spell it, so operators find the setting to raise.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::MaxConnections => "max_connections",
            Overflow::MaxPendingRequests => "max_pending_requests",
            Overflow::MaxRequests => "max_requests",
            Overflow::MaxRetries => "max_retries",
        }
    }

    fn of(slot: Slot) -> Self {
        match slot {
            Slot::Connection => Overflow::MaxConnections,
            Slot::Pending => Overflow::MaxPendingRequests,
            Slot::Request => Overflow::MaxRequests,
            Slot::Retry => Overflow::MaxRetries,
        }
    }
}

/// Current counts, for `/config_dump`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct BreakerCounts {
    /// Connection permits held.
    pub connections: u32,
    /// Pending-request permits held.
    pub pending: u32,
    /// Request permits held.
    pub requests: u32,
    /// Retry permits held.
    pub retries: u32,
}

/// The breaker of one cluster, shared by every worker thread through an
/// `Arc` so the limits hold for the whole proxy, as in Envoy.
#[derive(Debug)]
pub struct Breaker {
    limits: Limits,
    counts: [AtomicU32; 4],
}

impl Breaker {
    /// A breaker with nothing held. Built once per cluster when config
    /// loads; a reload builds a new one (its limits may have changed) while
    /// in-flight permits keep the old one alive until they finish.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            counts: Default::default(),
        }
    }

    /// The configured limits, for `/config_dump`.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn limit(&self, slot: Slot) -> u32 {
        match slot {
            Slot::Connection => self.limits.max_connections,
            Slot::Pending => self.limits.max_pending,
            Slot::Request => self.limits.max_requests,
            Slot::Retry => self.limits.max_retries,
        }
    }

    /// Takes one `kind` slot, or says which limit is full. Lock-free and
    /// allocation-free: a compare-and-swap loop, plus the `Arc` clone the
    /// permit keeps so it can release the slot wherever it is dropped.
    pub fn try_acquire(self: &Arc<Self>, kind: Slot) -> Result<Permit, Overflow> {
        let limit = self.limit(kind);
        // Relaxed is enough: the counter guards no other memory, and every
        // read-modify-write of one atomic is totally ordered, so the limit
        // is exact.
        self.counts[kind.index()]
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .map_err(|_| Overflow::of(kind))?;
        Ok(Permit {
            breaker: Arc::clone(self),
            slot: kind,
        })
    }

    /// Permits held now, for `/config_dump` and gauges. Each count is read
    /// separately, so under load the four are not one instant's snapshot.
    pub fn counts(&self) -> BreakerCounts {
        let get = |s: Slot| self.counts[s.index()].load(Ordering::Relaxed);
        BreakerCounts {
            connections: get(Slot::Connection),
            pending: get(Slot::Pending),
            requests: get(Slot::Request),
            retries: get(Slot::Retry),
        }
    }
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

/// One held slot of a [`Breaker`]; dropping it gives the slot back, so no
/// error path or cancelled future can leak capacity.
#[derive(Debug)]
#[must_use = "dropping the permit releases the slot at once"]
pub struct Permit {
    breaker: Arc<Breaker>,
    slot: Slot,
}

impl Permit {
    /// Which slot this permit holds (for metrics and tests).
    pub fn slot(&self) -> Slot {
        self.slot
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.breaker.counts[self.slot.index()].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOTS: [Slot; 4] = [Slot::Connection, Slot::Pending, Slot::Request, Slot::Retry];

    fn limits(c: u32, p: u32, r: u32, rt: u32) -> Limits {
        Limits {
            max_connections: c,
            max_pending: p,
            max_requests: r,
            max_retries: rt,
        }
    }

    fn count(c: BreakerCounts, slot: Slot) -> u32 {
        match slot {
            Slot::Connection => c.connections,
            Slot::Pending => c.pending,
            Slot::Request => c.requests,
            Slot::Retry => c.retries,
        }
    }

    #[test]
    fn default_is_unlimited() {
        assert_eq!(
            Limits::default(),
            limits(u32::MAX, u32::MAX, u32::MAX, u32::MAX)
        );
        let b = Arc::new(Breaker::default());
        let permits: Vec<_> = (0..1000)
            .map(|_| b.try_acquire(Slot::Request).expect("unlimited"))
            .collect();
        assert_eq!(b.counts().requests, 1000);
        drop(permits);
        assert_eq!(b.counts(), BreakerCounts::default());
    }

    #[test]
    fn each_limit_is_exact_and_independent() {
        let b = Arc::new(Breaker::new(limits(1, 2, 3, 0)));
        let cases = [
            (
                Slot::Connection,
                1,
                Overflow::MaxConnections,
                "max_connections",
            ),
            (
                Slot::Pending,
                2,
                Overflow::MaxPendingRequests,
                "max_pending_requests",
            ),
            (Slot::Request, 3, Overflow::MaxRequests, "max_requests"),
            (Slot::Retry, 0, Overflow::MaxRetries, "max_retries"),
        ];
        let mut held = Vec::new();
        for (slot, limit, overflow, name) in cases {
            for _ in 0..limit {
                held.push(b.try_acquire(slot).expect("under the limit"));
            }
            let err = b.try_acquire(slot).expect_err("at the limit");
            assert_eq!(err, overflow);
            assert_eq!(err.as_str(), name);
            assert!(err.to_string().contains(name));
            assert_eq!(count(b.counts(), slot), limit, "refusal leaves the count");
        }
        assert_eq!(
            b.counts(),
            BreakerCounts {
                connections: 1,
                pending: 2,
                requests: 3,
                retries: 0
            }
        );
        // Releasing one request frees exactly one request slot.
        let i = held
            .iter()
            .position(|p| p.slot() == Slot::Request)
            .expect("a request permit");
        drop(held.swap_remove(i));
        assert!(b.try_acquire(Slot::Connection).is_err());
        let again = b.try_acquire(Slot::Request).expect("one freed");
        assert!(b.try_acquire(Slot::Request).is_err());
        drop(again);
        drop(held);
        assert_eq!(b.counts(), BreakerCounts::default());
    }

    #[test]
    fn limits_hold_under_concurrency() {
        use std::sync::atomic::AtomicU32;
        const LIMIT: u32 = 3;
        let b = Arc::new(Breaker::new(limits(LIMIT, LIMIT, LIMIT, LIMIT)));
        let inside: [AtomicU32; 4] = Default::default();
        let peak: [AtomicU32; 4] = Default::default();
        let granted = AtomicU32::new(0);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (b, inside, peak, granted) = (&b, &inside, &peak, &granted);
                s.spawn(move || {
                    for k in 0..5_000 {
                        let slot = SLOTS[(t + k) % 4];
                        let i = slot.index();
                        if let Ok(permit) = b.try_acquire(slot) {
                            granted.fetch_add(1, Ordering::Relaxed);
                            let now = inside[i].fetch_add(1, Ordering::SeqCst) + 1;
                            peak[i].fetch_max(now, Ordering::SeqCst);
                            assert!(count(b.counts(), slot) <= LIMIT);
                            std::hint::spin_loop();
                            inside[i].fetch_sub(1, Ordering::SeqCst);
                            drop(permit);
                        }
                    }
                });
            }
        });
        for slot in SLOTS {
            let p = peak[slot.index()].load(Ordering::SeqCst);
            assert!((1..=LIMIT).contains(&p), "{slot:?} peaked at {p}");
        }
        assert!(granted.into_inner() > 0);
        assert_eq!(
            b.counts(),
            BreakerCounts::default(),
            "every permit released"
        );
    }

    #[test]
    fn permits_release_from_other_threads() {
        let b = Arc::new(Breaker::new(limits(1, 1, 1, 1)));
        let p = b.try_acquire(Slot::Retry).expect("free");
        std::thread::spawn(move || drop(p)).join().expect("thread");
        assert!(b.try_acquire(Slot::Retry).is_ok());
    }
}
