//! Per-thread counters and latency histograms, merged at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::ErrKind;

pub struct Stats {
    /// Latency charged to the target (see README: intended send time, minus
    /// the load generator's own timer lateness).
    pub latency: Histogram<u64>,
    /// Completion minus intended send time, including the load generator's
    /// own scheduling lateness (open loop only).
    pub from_intended: Histogram<u64>,
    /// How late the load generator sent relative to when it could have (open loop only).
    pub send_lag: Histogram<u64>,
    pub ok: u64,
    /// Requests written to the target (measured window), whatever became of
    /// them. Requests that timed out in the queue, or found no connection,
    /// are errors but were never sent.
    pub sent: u64,
    pub errors: BTreeMap<String, u64>,
    pub body_bytes: u64,
}

fn hist() -> Histogram<u64> {
    // nanoseconds, 1 ns .. 100 s, 3 significant figures
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("constant histogram bounds are valid")
}

fn ns(d: Duration) -> u64 {
    (d.as_nanos() as u64).clamp(1, 100_000_000_000)
}

impl Stats {
    pub fn new() -> Self {
        Self {
            latency: hist(),
            from_intended: hist(),
            send_lag: hist(),
            ok: 0,
            sent: 0,
            errors: BTreeMap::new(),
            body_bytes: 0,
        }
    }

    pub fn ok(&mut self, latency: Duration, body: u64) {
        self.ok += 1;
        self.body_bytes += body;
        let _ = self.latency.record(ns(latency));
    }

    pub fn open_extra(&mut self, from_intended: Duration, send_lag: Duration) {
        let _ = self.from_intended.record(ns(from_intended));
        let _ = self.send_lag.record(ns(send_lag));
    }

    pub fn error(&mut self, kind: &ErrKind) {
        *self.errors.entry(kind.to_string()).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &Stats) {
        let _ = self.latency.add(&other.latency);
        let _ = self.from_intended.add(&other.from_intended);
        let _ = self.send_lag.add(&other.send_lag);
        self.ok += other.ok;
        self.sent += other.sent;
        self.body_bytes += other.body_bytes;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Percentiles in microseconds.
pub fn summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let q = |p: f64| r1(h.value_at_quantile(p) as f64 / 1000.0);
    json!({
        "p50": q(0.50),
        "p90": q(0.90),
        "p99": q(0.99),
        "p99_9": q(0.999),
        "max": r1(h.max() as f64 / 1000.0),
        "min": r1(h.min() as f64 / 1000.0),
        "mean": r1(h.mean() / 1000.0),
    })
}
