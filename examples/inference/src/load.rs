//! The built-in load generator: a mesh workload like the others, sending a
//! steady rate of prompts to the gateway through its sidecar.
//!
//! Open loop: a request starts every 1/rate seconds whether or not earlier
//! ones have answered (as real users do; a closed loop would slow down with
//! the system and hide its latency). A concurrency cap bounds what is in
//! flight; a tick that finds the cap reached is counted as skipped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, Method, Uri};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::answer::{Answer, PromptRequest};
use crate::client::Upstream;
use crate::failure::{ErrorBody, UpstreamFailure};

/// Prompts sent in turn.
pub const PROMPTS: &[&str] = &[
    "What is a service mesh?",
    "Summarise   the  canary release of   model v2.",
    "Translate 'hello, world' into French!",
    "Why do retries need a budget?",
    "Explain mutual TLS in one sentence.",
];

/// Outcome counts since the start, shared by the request tasks, the
/// reporter and `GET /stats`.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<Counts>,
}

/// What the load generator has seen. `served_by` counts, per service, the
/// version that served each successful request (`inference` -> `v1` -> n).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// Ticks that found the concurrency cap reached: not sent.
    pub skipped: u64,
    /// Failures by kind: `502 rbac_denied (gateway -> inference)`, `timeout`.
    pub errors: BTreeMap<String, u64>,
    pub served_by: BTreeMap<String, BTreeMap<String, u64>>,
}

/// The result of one request, as the load generator classifies it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok(Answer),
    Failed(String),
}

impl Outcome {
    /// A failure's one-line kind: status, reason and hop when the gateway
    /// answered with the pipeline's error JSON, else what the client saw.
    pub fn from_failure(failure: &UpstreamFailure) -> Outcome {
        Outcome::Failed(match failure {
            UpstreamFailure::Status {
                status,
                reason,
                body,
            } => match (reason, serde_json::from_slice::<ErrorBody>(body)) {
                (Some(r), _) => format!("{status} {r} (at the load generator's sidecar)"),
                (None, Ok(e)) => format!(
                    "{status} {} ({})",
                    e.reason.as_deref().unwrap_or("-"),
                    e.hop
                ),
                (None, Err(_)) => format!("{status}"),
            },
            UpstreamFailure::Unreachable { addr, .. } => format!("cannot connect to {addr}"),
            UpstreamFailure::Broken { .. } => "connection broken".to_string(),
            UpstreamFailure::Timeout { .. } => "timeout".to_string(),
            UpstreamFailure::BadBody { .. } => "bad response body".to_string(),
        })
    }
}

impl Counts {
    pub fn record(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Ok(answer) => {
                self.ok += 1;
                for hop in &answer.path {
                    let version = if hop.version.is_empty() {
                        "-"
                    } else {
                        &hop.version
                    };
                    *self
                        .served_by
                        .entry(hop.service.clone())
                        .or_default()
                        .entry(version.to_string())
                        .or_default() += 1;
                }
            }
            Outcome::Failed(kind) => {
                self.failed += 1;
                *self.errors.entry(kind.clone()).or_default() += 1;
            }
        }
    }

    /// The line printed for a window with errors or skips; `None` when all
    /// went well (the generator is quiet then).
    pub fn report(&self, window: Duration) -> Option<String> {
        if self.failed == 0 && self.skipped == 0 {
            return None;
        }
        let mut line = format!(
            "load: last {}s: {} sent, {} ok, {} failed",
            window.as_secs(),
            self.sent,
            self.ok,
            self.failed
        );
        if self.skipped > 0 {
            line += &format!(
                ", {} not sent (concurrency cap reached: the pipeline is slower than the rate)",
                self.skipped
            );
        }
        let mut errors: Vec<_> = self.errors.iter().collect();
        errors.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (kind, n) in errors {
            line += &format!("; {n}x {kind}");
        }
        Some(line)
    }
}

impl Stats {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Counters stay meaningful even if a holder panicked: keep counting.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Totals since the start.
    pub fn snapshot(&self) -> Counts {
        self.counts().clone()
    }

    fn update(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.counts());
    }
}

/// Settings of a load run.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    pub target: Uri,
    pub rate: f64,
    pub concurrency: usize,
    pub report_every: Duration,
    /// Stop after sending this many (and waiting for their answers).
    pub count: Option<u64>,
}

/// Sends load until `count` is reached (or forever). Errors are reported
/// every `report_every` on stderr.
pub async fn run(settings: LoadSettings, upstream: Upstream, stats: Arc<Stats>) {
    let permits = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / settings.rate));
    // Burst: after a stall (a busy machine) catch up, keeping the offered
    // rate the same over time, which is what open loop means.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut report = tokio::time::interval(settings.report_every);
    report.tick().await;
    let mut last = stats.snapshot();
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if settings.count.is_some_and(|c| n >= c) {
                    break;
                }
                let prompt = PROMPTS[(n % PROMPTS.len() as u64) as usize];
                n += 1;
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    stats.update(|c| c.skipped += 1);
                    continue;
                };
                stats.update(|c| c.sent += 1);
                let (upstream, stats, target) = (upstream.clone(), stats.clone(), settings.target.clone());
                tokio::spawn(async move {
                    let outcome = send_one(&upstream, &target, prompt).await;
                    stats.update(|c| c.record(&outcome));
                    drop(permit);
                });
            }
            _ = report.tick() => {
                let now = stats.snapshot();
                let window = diff(&now, &last);
                last = now;
                if let Some(line) = window.report(settings.report_every) {
                    eprintln!("{line}");
                }
            }
        }
    }
    // Wait for what is in flight.
    let _ = permits
        .acquire_many(settings.concurrency.max(1) as u32)
        .await;
}

async fn send_one(upstream: &Upstream, target: &Uri, prompt: &str) -> Outcome {
    let body = PromptRequest {
        prompt: prompt.to_string(),
    };
    match upstream
        .call::<_, Answer>(Method::POST, target, &HeaderMap::new(), Some(&body))
        .await
    {
        Ok(reply) => Outcome::Ok(reply.body),
        Err(f) => Outcome::from_failure(&f),
    }
}

/// `now - before`, counter by counter.
pub fn diff(now: &Counts, before: &Counts) -> Counts {
    let mut d = Counts {
        sent: now.sent - before.sent,
        ok: now.ok - before.ok,
        failed: now.failed - before.failed,
        skipped: now.skipped - before.skipped,
        ..Counts::default()
    };
    for (k, v) in &now.errors {
        let b = before.errors.get(k).copied().unwrap_or(0);
        if *v > b {
            d.errors.insert(k.clone(), v - b);
        }
    }
    d
}
