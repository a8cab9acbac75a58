//! Local rate limiting: Envoy's token bucket (`local_ratelimit`), which
//! sheds load at this proxy without a round trip to a rate-limit service.
//!
//! Envoy semantics: the bucket starts full (`max_tokens`); every whole
//! `fill_interval` adds `tokens_per_fill`, never beyond `max_tokens`; each
//! request takes one token or is refused (the caller answers 429). Refills
//! happen in whole intervals counted from when the bucket was made, like
//! Envoy's fill timer, so a partial interval adds nothing yet but is not
//! lost either. The bucket is refilled lazily on each call from the time
//! passed in, so an idle bucket costs nothing.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One token bucket, owned by one thread (or wrapped in [`SharedBucket`]).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    max_tokens: u32,
    tokens_per_fill: u32,
    fill_interval: Duration,
    tokens: u32,
    /// Start of the current, not yet complete, fill interval.
    last_fill: Instant,
}

impl TokenBucket {
    /// A full bucket, so a proxy that restarts does not refuse its first
    /// burst. A zero `fill_interval` is treated as one nanosecond (Envoy
    /// rejects zero at config time; this just keeps the arithmetic total).
    pub fn new(
        max_tokens: u32,
        tokens_per_fill: u32,
        fill_interval: Duration,
        now: Instant,
    ) -> Self {
        Self {
            max_tokens,
            tokens_per_fill,
            fill_interval: fill_interval.max(Duration::from_nanos(1)),
            tokens: max_tokens,
            last_fill: now,
        }
    }

    /// Takes one token if there is one. `false` means rate limited.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    /// Tokens left at `now` (after refilling), for `/config_dump` and tests.
    pub fn tokens(&mut self, now: Instant) -> u32 {
        self.refill(now);
        self.tokens
    }

    /// The bucket's capacity, i.e. the largest burst it allows.
    pub fn max_tokens(&self) -> u32 {
        self.max_tokens
    }

    /// Adds `tokens_per_fill` for each whole interval since `last_fill` and
    /// moves `last_fill` forward by those intervals, keeping the partial
    /// one. Saturating throughout, so a bucket idle for years just ends up
    /// full. A clock that goes backwards adds nothing.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_fill).as_nanos();
        let interval = self.fill_interval.as_nanos();
        let fills = elapsed / interval;
        if fills == 0 {
            return;
        }
        let added = u128::from(self.tokens_per_fill).saturating_mul(fills);
        let tokens = u128::from(self.tokens).saturating_add(added);
        self.tokens = u32::try_from(tokens.min(u128::from(self.max_tokens))).unwrap_or(u32::MAX);
        // `elapsed % interval` < `fill_interval`, so it fits a u64 of nanos.
        let partial = u64::try_from(elapsed % interval).unwrap_or(u64::MAX);
        self.last_fill = now
            .checked_sub(Duration::from_nanos(partial))
            .unwrap_or(now);
    }
}

/// A [`TokenBucket`] shared by the worker threads, since a limit set for
/// the proxy must hold across all of them. Each call holds the lock for a
/// few integer operations.
#[derive(Debug)]
pub struct SharedBucket(Mutex<TokenBucket>);

impl SharedBucket {
    /// See [`TokenBucket::new`].
    pub fn new(
        max_tokens: u32,
        tokens_per_fill: u32,
        fill_interval: Duration,
        now: Instant,
    ) -> Self {
        Self(Mutex::new(TokenBucket::new(
            max_tokens,
            tokens_per_fill,
            fill_interval,
            now,
        )))
    }

    /// See [`TokenBucket::try_take`].
    pub fn try_take(&self, now: Instant) -> bool {
        self.lock().try_take(now)
    }

    /// See [`TokenBucket::tokens`].
    pub fn tokens(&self, now: Instant) -> u32 {
        self.lock().tokens(now)
    }

    /// The bucket is consistent after any panic (its updates cannot panic
    /// halfway), so a poisoned lock is used as is instead of turning every
    /// later request into a panic.
    fn lock(&self) -> std::sync::MutexGuard<'_, TokenBucket> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl From<TokenBucket> for SharedBucket {
    fn from(b: TokenBucket) -> Self {
        Self(Mutex::new(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn take_all(b: &mut TokenBucket, now: Instant) -> u32 {
        let mut n = 0;
        while b.try_take(now) {
            n += 1;
            assert!(n <= b.max_tokens(), "never more than the bucket holds");
        }
        n
    }

    #[test]
    fn starts_full_and_bursts_up_to_max() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 2, ms(100), t0);
        assert_eq!(b.tokens(t0), 10);
        assert_eq!(take_all(&mut b, t0), 10);
        assert!(!b.try_take(t0));
    }

    #[test]
    fn refills_in_whole_intervals() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 2, ms(100), t0);
        assert_eq!(take_all(&mut b, t0), 10);
        let cases = [
            // (ms since t0, tokens available then, having taken all before)
            (50, 0),  // a partial interval adds nothing
            (99, 0),  //
            (100, 2), // one whole interval
            (150, 0), // still inside the second interval
            (199, 0), //
            (200, 2), // the partial 100..150 counted towards this fill
            (450, 4), // two more whole intervals (300, 400)
            (500, 2),
        ];
        for (at, want) in cases {
            assert_eq!(take_all(&mut b, t0 + ms(at)), want, "at {at} ms");
        }
    }

    #[test]
    fn long_idle_caps_at_max() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5, 1, ms(10), t0);
        assert_eq!(take_all(&mut b, t0), 5);
        assert_eq!(b.tokens(t0 + ms(30)), 3);
        let year = t0 + Duration::from_secs(365 * 86_400);
        assert_eq!(b.tokens(year), 5);
        assert_eq!(take_all(&mut b, year), 5);
        // The interval phase survives the long idle: fills stay on the grid.
        assert_eq!(b.tokens(year + ms(9)), 0);
        assert_eq!(b.tokens(year + ms(10)), 1);
    }

    #[test]
    fn huge_fill_values_saturate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(u32::MAX, u32::MAX, Duration::from_nanos(1), t0);
        assert!(b.try_take(t0));
        assert_eq!(b.tokens(t0 + Duration::from_secs(1_000_000)), u32::MAX);
    }

    #[test]
    fn steady_rate_is_tokens_per_interval() {
        // 10 tokens a second, burst 10; a client asking every 10 ms for 10 s.
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 10, Duration::from_secs(1), t0);
        let granted = (0..1000).filter(|k| b.try_take(t0 + ms(k * 10))).count();
        assert_eq!(
            granted,
            10 + 9 * 10,
            "the initial burst plus one fill per second"
        );
    }

    #[test]
    fn zero_sizes() {
        let t0 = Instant::now();
        let mut empty = TokenBucket::new(0, 5, ms(1), t0);
        assert!(!empty.try_take(t0 + ms(100)), "max 0 always refuses");
        let mut no_fill = TokenBucket::new(2, 0, ms(1), t0);
        assert_eq!(take_all(&mut no_fill, t0 + ms(100)), 2);
        assert_eq!(take_all(&mut no_fill, t0 + ms(200)), 0);
        let mut zero_interval = TokenBucket::new(3, 1, Duration::ZERO, t0);
        assert_eq!(take_all(&mut zero_interval, t0), 3);
        assert_eq!(zero_interval.tokens(t0 + Duration::from_nanos(2)), 2);
    }

    #[test]
    fn clock_going_backwards_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(2, 1, ms(10), t0);
        assert_eq!(take_all(&mut b, t0), 2);
        assert!(!b.try_take(t0 - Duration::from_secs(5)));
        assert_eq!(b.tokens(t0 + ms(10)), 1);
    }

    #[test]
    fn shared_bucket_is_exact_across_threads() {
        let t0 = Instant::now();
        let b = SharedBucket::new(100, 1, Duration::from_secs(1), t0);
        let granted = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if b.try_take(t0) {
                            granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.into_inner(), 100);
        assert_eq!(b.tokens(t0 + Duration::from_secs(3)), 3);
        let from = SharedBucket::from(TokenBucket::new(1, 1, ms(1), t0));
        assert!(from.try_take(t0));
        assert!(!from.try_take(t0));
    }
}
