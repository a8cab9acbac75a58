//! Fault injection (Istio `HTTPFaultInjection`): delay or abort a share of
//! a route's requests, to test how callers cope with a slow or failing
//! dependency without breaking the dependency.
//!
//! The two faults are rolled independently, as Envoy does: a request can be
//! delayed, aborted, both, or neither. When both apply the caller waits the
//! delay and then answers with the abort (Envoy's order), so the caller sees
//! a slow failure.

use std::time::Duration;

/// How an aborted request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// Istio `abort.httpStatus`: a local reply with this status.
    Http(u16),
    /// Istio `abort.grpcStatus`: a trailers-only gRPC reply (HTTP 200) with
    /// this `grpc-status`.
    Grpc(u32),
}

/// A route's faults, each with the percentage of requests it applies to
/// (Istio `percentage.value`, 0 to 100, fractions allowed).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultPolicy {
    /// Istio `delay.fixedDelay` and its percentage.
    pub delay: Option<(Duration, f64)>,
    /// Istio `abort` and its percentage.
    pub abort: Option<(Abort, f64)>,
}

/// What to do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultDecision {
    /// Wait this long before doing anything else.
    pub delay: Option<Duration>,
    /// Then answer locally with this instead of forwarding.
    pub abort: Option<Abort>,
}

/// Decides one request's faults from two independent uniform rolls in
/// `[0, 100)`, so tests can pick the rolls and the request path draws them.
///
/// A fault applies when its roll is below its percentage, which makes
/// percentages exact over uniform rolls. The ends are fixed whatever the
/// roll: 0% (or NaN, or negative) never applies and 100% (or more) always
/// does, because operators write those to mean "off" and "every request".
pub fn decide(f: &FaultPolicy, delay_roll: f64, abort_roll: f64) -> FaultDecision {
    FaultDecision {
        delay: f
            .delay
            .and_then(|(d, pct)| applies(pct, delay_roll).then_some(d)),
        abort: f
            .abort
            .and_then(|(a, pct)| applies(pct, abort_roll).then_some(a)),
    }
}

fn applies(percent: f64, roll: f64) -> bool {
    if percent.is_nan() || percent <= 0.0 {
        false
    } else {
        percent >= 100.0 || roll < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentage_table() {
        let cases = [
            // (percent, roll, applies)
            (0.0, 0.0, false),
            (0.0, -5.0, false),
            (0.0, 99.9, false),
            (100.0, 0.0, true),
            (100.0, 99.999, true),
            (100.0, 100.0, true),
            (100.0, f64::NAN, true),
            (150.0, 200.0, true),
            (50.0, 49.999, true),
            (50.0, 50.0, false),
            (50.0, 0.0, true),
            (0.1, 0.05, true),
            (0.1, 0.1, false),
            (-1.0, 0.0, false),
            (f64::NAN, 0.0, false),
            (50.0, f64::NAN, false),
        ];
        for (pct, roll, want) in cases {
            assert_eq!(applies(pct, roll), want, "{pct}% with roll {roll}");
        }
    }

    #[test]
    fn delay_and_abort_roll_independently() {
        let d = Duration::from_millis(300);
        let f = FaultPolicy {
            delay: Some((d, 10.0)),
            abort: Some((Abort::Http(503), 20.0)),
        };
        let cases = [
            (5.0, 5.0, Some(d), Some(Abort::Http(503))),
            (5.0, 50.0, Some(d), None),
            (50.0, 15.0, None, Some(Abort::Http(503))),
            (50.0, 50.0, None, None),
        ];
        for (dr, ar, delay, abort) in cases {
            assert_eq!(
                decide(&f, dr, ar),
                FaultDecision { delay, abort },
                "rolls {dr} {ar}"
            );
        }
    }

    #[test]
    fn no_faults_configured() {
        let none = FaultPolicy::default();
        assert_eq!(decide(&none, 0.0, 0.0), FaultDecision::default());
        let grpc = FaultPolicy {
            delay: None,
            abort: Some((Abort::Grpc(14), 100.0)),
        };
        assert_eq!(
            decide(&grpc, 0.0, 99.0),
            FaultDecision {
                delay: None,
                abort: Some(Abort::Grpc(14))
            }
        );
    }

    #[test]
    fn share_over_uniform_rolls_matches_the_percentage() {
        let f = FaultPolicy {
            delay: Some((Duration::from_millis(1), 12.5)),
            abort: Some((Abort::Http(500), 0.5)),
        };
        let n = 100_000;
        let rolls = (0..n).map(|k| f64::from(k) * 100.0 / f64::from(n));
        let (mut delays, mut aborts) = (0, 0);
        for r in rolls {
            let d = decide(&f, r, r);
            delays += u32::from(d.delay.is_some());
            aborts += u32::from(d.abort.is_some());
        }
        assert_eq!(delays, 12_500);
        assert_eq!(aborts, 500);
    }
}
