//! Retry budgets (Linkerd's `retryBudget`, from Finagle): retries to a
//! destination may add at most a fixed share of its traffic, plus a small
//! floor per second.
//!
//! A per-request retry count bounds one request, but when an upstream is
//! failing every request retries, and `retries = 2` triples the load on the
//! service least able to take it. A budget bounds the sum: over the last
//! `ttl`, retries may be at most
//!
//! ```text
//! min_per_sec × ttl_secs + ratio × first_tries
//! ```
//!
//! so a healthy service with rare failures retries them all, and a failing
//! one adds at most `ratio` of extra load (plus the floor, which lets a quiet
//! client retry at all).
//!
//! The window is `ttl` split into [`SLOTS`] slots, advanced lazily on each
//! call: O(1) work per call (at most [`SLOTS`] slot resets), no allocation
//! after [`RetryBudget::new`]. Counts expire a slot at a time, so the window
//! covers between `(SLOTS - 1) / SLOTS × ttl` and `ttl` of history.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Slots of the sliding window.
pub const SLOTS: usize = 10;

/// A budget's configuration (Linkerd's `retryRatio`, `minRetriesPerSecond`,
/// `ttl`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSettings {
    /// Retries allowed per first try: 0.2 lets retries add 20% to the load.
    pub ratio: f64,
    /// Retries allowed per second regardless of traffic, so low-traffic
    /// clients can still retry.
    pub min_per_sec: u32,
    /// How long a first try or a retry counts against the budget. Longer
    /// allows burstier retries.
    pub ttl: Duration,
}

/// Linkerd's defaults: 20% extra load, 10 retries a second, a 10 s window.
impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_sec: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

/// What the window holds at one moment, for `/config_dump` and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BudgetSnapshot {
    /// First tries in the window.
    pub requests: u64,
    /// Retries granted in the window.
    pub retries: u64,
    /// Retries that would be granted now.
    pub available: u64,
}

/// A retry budget for one destination, owned by one thread (or wrapped in
/// [`SharedBudget`]).
#[derive(Debug, Clone)]
pub struct RetryBudget {
    settings: BudgetSettings,
    start: Instant,
    /// Length of one slot in nanoseconds, at least 1.
    slot_nanos: u128,
    /// Slot number (since `start`) of the newest slot.
    current: u64,
    requests: [u64; SLOTS],
    retries: [u64; SLOTS],
    total_requests: u64,
    total_retries: u64,
}

impl RetryBudget {
    /// An empty budget whose window starts at `now`. It allows the floor
    /// (`min_per_sec × ttl`) at once, so a client that starts against a
    /// failing upstream can still retry its first requests.
    pub fn new(settings: BudgetSettings, now: Instant) -> Self {
        let slot_nanos = (settings.ttl.as_nanos() / SLOTS as u128).max(1);
        Self {
            settings,
            start: now,
            slot_nanos,
            current: 0,
            requests: [0; SLOTS],
            retries: [0; SLOTS],
            total_requests: 0,
            total_retries: 0,
        }
    }

    /// The settings the budget was made with, for `/config_dump`.
    pub fn settings(&self) -> &BudgetSettings {
        &self.settings
    }

    /// Counts a first try. Retries are not counted here: only original
    /// traffic earns budget, or retries would fund more retries.
    pub fn on_request(&mut self, now: Instant) {
        let i = self.advance(now);
        self.requests[i] += 1;
        self.total_requests += 1;
    }

    /// Whether one more retry fits the budget now; if so it is counted, so
    /// the caller must retry (or at least treat the retry as spent).
    pub fn try_retry(&mut self, now: Instant) -> bool {
        let i = self.advance(now);
        if self.total_retries >= self.limit() {
            return false;
        }
        self.retries[i] += 1;
        self.total_retries += 1;
        true
    }

    /// The window's counts at `now`, without changing the budget (slots
    /// that `now` has expired are left out rather than cleared).
    pub fn snapshot(&self, now: Instant) -> BudgetSnapshot {
        let now_slot = self.slot_at(now).max(self.current);
        let (mut requests, mut retries) = (0, 0);
        for age in 0..SLOTS as u64 {
            // Slot `current - age` is still in the window at `now_slot`?
            let Some(slot) = self.current.checked_sub(age) else {
                break;
            };
            if now_slot - slot < SLOTS as u64 {
                let i = (slot % SLOTS as u64) as usize;
                requests += self.requests[i];
                retries += self.retries[i];
            }
        }
        BudgetSnapshot {
            requests,
            retries,
            available: self.limit_for(requests).saturating_sub(retries),
        }
    }

    /// Retries allowed in the window, rounded down (a fraction of a retry
    /// is not a retry).
    fn limit(&self) -> u64 {
        self.limit_for(self.total_requests)
    }

    fn limit_for(&self, requests: u64) -> u64 {
        let floor = f64::from(self.settings.min_per_sec) * self.settings.ttl.as_secs_f64();
        let ratio = if self.settings.ratio.is_finite() {
            self.settings.ratio.max(0.0)
        } else {
            0.0
        };
        // `as` saturates: an absurd ratio means "unlimited", not a panic.
        (floor + ratio * requests as f64) as u64
    }

    /// The slot number `now` falls in.
    fn slot_at(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        u64::try_from(elapsed / self.slot_nanos).unwrap_or(u64::MAX)
    }

    /// Moves the window to `now`, clearing slots that fell out of it, and
    /// returns the index of the current slot. A clock that goes backwards
    /// counts into the newest slot.
    fn advance(&mut self, now: Instant) -> usize {
        let slot = self.slot_at(now);
        if slot > self.current {
            let steps = (slot - self.current).min(SLOTS as u64) as usize;
            let base = (self.current % SLOTS as u64) as usize;
            for k in 1..=steps {
                let i = (base + k) % SLOTS;
                self.total_requests -= self.requests[i];
                self.total_retries -= self.retries[i];
                self.requests[i] = 0;
                self.retries[i] = 0;
            }
            self.current = slot;
        }
        (self.current % SLOTS as u64) as usize
    }
}

/// A [`RetryBudget`] shared by the proxy's worker threads, since one
/// destination's budget must count the traffic of all of them. Each call
/// holds the lock for a few arithmetic operations.
#[derive(Debug)]
pub struct SharedBudget(Mutex<RetryBudget>);

impl SharedBudget {
    /// See [`RetryBudget::new`].
    pub fn new(settings: BudgetSettings, now: Instant) -> Self {
        Self(Mutex::new(RetryBudget::new(settings, now)))
    }

    /// See [`RetryBudget::on_request`].
    pub fn on_request(&self, now: Instant) {
        self.lock().on_request(now);
    }

    /// See [`RetryBudget::try_retry`].
    pub fn try_retry(&self, now: Instant) -> bool {
        self.lock().try_retry(now)
    }

    /// See [`RetryBudget::snapshot`].
    pub fn snapshot(&self, now: Instant) -> BudgetSnapshot {
        self.lock().snapshot(now)
    }

    /// See [`RetryBudget::settings`].
    pub fn settings(&self) -> BudgetSettings {
        *self.lock().settings()
    }

    /// The budget's counts stay consistent even if a thread panicked while
    /// holding the lock (every update is a few integer writes that cannot
    /// panic halfway), so a poisoned lock is used as is rather than taking
    /// retries down with it.
    fn lock(&self) -> std::sync::MutexGuard<'_, RetryBudget> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl From<RetryBudget> for SharedBudget {
    fn from(b: RetryBudget) -> Self {
        Self(Mutex::new(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ratio: f64, min_per_sec: u32, ttl_secs: u64) -> BudgetSettings {
        BudgetSettings {
            ratio,
            min_per_sec,
            ttl: Duration::from_secs(ttl_secs),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults_are_linkerds() {
        let d = BudgetSettings::default();
        assert_eq!(d.ratio, 0.2);
        assert_eq!(d.min_per_sec, 10);
        assert_eq!(d.ttl, Duration::from_secs(10));
    }

    #[test]
    fn min_per_sec_allows_a_burst_at_startup() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(BudgetSettings::default(), t0);
        let granted = (0..1000).filter(|_| b.try_retry(t0)).count();
        assert_eq!(granted, 100, "10/s × 10 s with no traffic yet");
        assert_eq!(
            b.snapshot(t0),
            BudgetSnapshot {
                requests: 0,
                retries: 100,
                available: 0
            }
        );
    }

    #[test]
    fn ratio_alone() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(settings(0.2, 0, 10), t0);
        assert!(!b.try_retry(t0), "no traffic, no floor: nothing");
        for _ in 0..4 {
            b.on_request(t0);
        }
        assert!(!b.try_retry(t0), "0.8 of a retry is none");
        b.on_request(t0);
        assert!(b.try_retry(t0), "5 × 0.2 = 1");
        assert!(!b.try_retry(t0));
        for _ in 0..10 {
            b.on_request(t0);
        }
        assert_eq!(b.snapshot(t0).available, 2);
    }

    #[test]
    fn table() {
        // (ratio, min_per_sec, ttl_secs, first tries, retries granted)
        let cases = [
            (0.2, 10, 10, 0, 100),
            (0.2, 10, 10, 1000, 300),
            (0.2, 10, 1, 1000, 210),
            (0.0, 0, 10, 1000, 0),
            (1.0, 0, 10, 7, 7),
            (2.0, 1, 3, 5, 13),
            (0.25, 0, 10, 3, 0),
            (f64::NAN, 1, 10, 100, 10),
            (-1.0, 1, 10, 100, 10),
        ];
        for (ratio, min, ttl, requests, want) in cases {
            let t0 = Instant::now();
            let mut b = RetryBudget::new(settings(ratio, min, ttl), t0);
            for _ in 0..requests {
                b.on_request(t0);
            }
            let granted = (0..10_000).filter(|_| b.try_retry(t0)).count();
            assert_eq!(granted, want, "ratio {ratio} min {min} ttl {ttl}");
        }
    }

    #[test]
    fn counts_expire_after_ttl() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(settings(0.0, 1, 10), t0);
        let granted = (0..100).filter(|_| b.try_retry(t0)).count();
        assert_eq!(granted, 10);
        assert!(!b.try_retry(t0 + ms(9_999)), "still inside the window");
        let s = b.snapshot(t0 + Duration::from_secs(10));
        assert_eq!(s.retries, 0, "the first slot left the window");
        assert_eq!(s.available, 10);
        assert!(b.try_retry(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn requests_expire_slot_by_slot() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(settings(1.0, 0, 10), t0);
        // One first try per second for 10 s: one per slot.
        for s in 0..10 {
            b.on_request(t0 + Duration::from_secs(s));
        }
        // At second s the window is slots s-9..=s (9 to 10 s of history).
        for s in 9..=21 {
            let now = t0 + Duration::from_secs(s);
            let want = 19u64.saturating_sub(s);
            assert_eq!(b.snapshot(now).requests, want, "snapshot at {s} s");
            let mut advanced = b.clone();
            advanced.on_request(now);
            assert_eq!(advanced.total_requests, want + 1, "advanced at {s} s");
        }
    }

    #[test]
    fn long_idle_clears_everything() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(settings(0.5, 1, 10), t0);
        for _ in 0..100 {
            b.on_request(t0);
            b.try_retry(t0);
        }
        let later = t0 + Duration::from_secs(86_400 * 365);
        assert_eq!(
            b.snapshot(later),
            BudgetSnapshot {
                requests: 0,
                retries: 0,
                available: 10
            }
        );
    }

    #[test]
    fn clock_going_backwards_counts_into_the_newest_slot() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(settings(0.0, 1, 10), t0 + Duration::from_secs(5));
        assert!(b.try_retry(t0));
        assert_eq!(b.snapshot(t0).retries, 1);
    }

    /// 100 failing first tries a second for 60 s, each wanting a retry:
    /// each 10 s window grants `0.2 × 1000 + 10 × 10 = 300` retries.
    #[test]
    fn steady_failure_converges_to_ratio_plus_floor() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(BudgetSettings::default(), t0);
        let mut per_window = [0u32; 6];
        for k in 0..6000u64 {
            let now = t0 + ms(k * 10);
            b.on_request(now);
            if b.try_retry(now) {
                per_window[(k / 1000) as usize] += 1;
            }
        }
        // The first window spends the floor at once, then earns the rest;
        // later ones reuse the retries that expire with each slot.
        assert_eq!(per_window, [300; 6]);
        let snap = b.snapshot(t0 + ms(59_990));
        assert!(snap.retries <= 100 + snap.requests / 5, "{snap:?}");
    }

    #[test]
    fn shared_budget_across_threads() {
        let t0 = Instant::now();
        let b = SharedBudget::new(settings(0.0, 5, 10), t0);
        let granted = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        b.on_request(t0);
                        if b.try_retry(t0) {
                            granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.into_inner(), 50);
        let snap = b.snapshot(t0);
        assert_eq!((snap.requests, snap.retries, snap.available), (400, 50, 0));
        assert_eq!(b.settings().min_per_sec, 5);
    }

    #[test]
    fn shared_budget_survives_a_poisoned_lock() {
        let t0 = Instant::now();
        let b = SharedBudget::from(RetryBudget::new(settings(0.0, 1, 10), t0));
        let _ = std::thread::scope(|s| {
            s.spawn(|| {
                let _guard = b.0.lock();
                panic!("poison the lock");
            })
            .join()
        });
        assert!(b.0.is_poisoned());
        assert!(b.try_retry(t0));
        assert_eq!(b.snapshot(t0).retries, 1);
    }
}
