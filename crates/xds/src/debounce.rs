//! Debouncing of configuration generations: a burst of changes (a `kubectl
//! apply` of ten files, a node draining fifty workloads) becomes one
//! recomputation per proxy instead of one per change.
//!
//! The rule, as Istio's: publish once the source has been quiet for
//! `quiet`, but never later than `max` after the first unpublished change,
//! so a source that never stops changing still gets pushed.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

/// The decision, apart from the clock and channels.
#[derive(Debug, Clone)]
pub(crate) struct Debouncer {
    quiet: Duration,
    max: Duration,
    /// First and last change not yet published.
    window: Option<(Instant, Instant)>,
}

impl Debouncer {
    pub(crate) fn new(quiet: Duration, max: Duration) -> Debouncer {
        Debouncer {
            quiet,
            max: max.max(quiet),
            window: None,
        }
    }

    /// Notes a change at `now`.
    pub(crate) fn change(&mut self, now: Instant) {
        self.window = Some(match self.window {
            Some((first, _)) => (first, now),
            None => (now, now),
        });
    }

    /// When to publish, if anything is unpublished.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.window
            .map(|(first, last)| (last + self.quiet).min(first + self.max))
    }

    /// Marks everything published.
    pub(crate) fn published(&mut self) {
        self.window = None;
    }
}

/// Copies `input`'s value to `output`, debounced. Ends when `input`'s
/// sender is dropped (after publishing what was pending) or when nobody
/// holds a receiver of `output` any more.
pub(crate) async fn run(
    mut input: watch::Receiver<u64>,
    output: watch::Sender<u64>,
    quiet: Duration,
    max: Duration,
) {
    let mut debouncer = Debouncer::new(quiet, max);
    // Changes made before we started are for streams that will read the
    // current snapshot when they start anyway.
    input.mark_unchanged();
    loop {
        let deadline = debouncer.deadline();
        tokio::select! {
            changed = input.changed() => {
                if changed.is_err() {
                    if debouncer.deadline().is_some() {
                        output.send_replace(*input.borrow());
                    }
                    return;
                }
                debouncer.change(Instant::now());
                if quiet.is_zero() {
                    debouncer.published();
                    output.send_replace(*input.borrow_and_update());
                }
            }
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                debouncer.published();
                output.send_replace(*input.borrow_and_update());
            }
            () = output.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn quiet_period_and_cap() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(100 * MS, 1000 * MS);
        assert_eq!(d.deadline(), None);
        d.change(t0);
        assert_eq!(d.deadline(), Some(t0 + 100 * MS));
        d.change(t0 + 50 * MS);
        assert_eq!(d.deadline(), Some(t0 + 150 * MS));
        // A change every 90 ms forever: capped at first + max.
        for i in 2..20 {
            d.change(t0 + 90 * i * MS);
        }
        assert_eq!(d.deadline(), Some(t0 + 1000 * MS));
        d.published();
        assert_eq!(d.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_publishes_once_after_the_quiet_period() {
        let (tx, rx) = watch::channel(0u64);
        let (out_tx, mut out) = watch::channel(0u64);
        tokio::spawn(run(rx, out_tx, 100 * MS, 1000 * MS));
        tokio::task::yield_now().await;
        let start = Instant::now();
        for g in 1..=5 {
            tx.send_replace(g);
            tokio::time::sleep(20 * MS).await;
        }
        out.changed().await.unwrap();
        assert_eq!(*out.borrow_and_update(), 5);
        // Last change at 80 ms, published 100 ms later.
        assert_eq!(start.elapsed(), 180 * MS);
        // Nothing more without changes.
        let more = tokio::time::timeout(Duration::from_secs(5), out.changed()).await;
        assert!(more.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_that_never_settles_is_published_at_the_cap() {
        let (tx, rx) = watch::channel(0u64);
        let (out_tx, mut out) = watch::channel(0u64);
        tokio::spawn(run(rx, out_tx, 100 * MS, 300 * MS));
        tokio::task::yield_now().await;
        let start = Instant::now();
        let writer = tokio::spawn(async move {
            for g in 1..=100 {
                tx.send_replace(g);
                tokio::time::sleep(50 * MS).await;
            }
        });
        out.changed().await.unwrap();
        assert_eq!(start.elapsed(), 300 * MS);
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn zero_quiet_passes_through() {
        let (tx, rx) = watch::channel(0u64);
        let (out_tx, mut out) = watch::channel(0u64);
        tokio::spawn(run(rx, out_tx, Duration::ZERO, Duration::ZERO));
        tokio::task::yield_now().await;
        let start = Instant::now();
        tx.send_replace(7);
        out.changed().await.unwrap();
        assert_eq!(*out.borrow(), 7);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
