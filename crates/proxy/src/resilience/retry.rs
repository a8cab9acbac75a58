//! Whether a failed attempt may be retried, and how long to wait first.
//!
//! The conditions are Envoy's `retry_on` tokens, which Istio's
//! `HTTPRetry.retryOn` passes through unchanged, so a VirtualService behaves
//! here as it does under Istio. Whether a retry actually happens also depends
//! on the attempt count ([`RetryPolicy::retries`]), the retry budget
//! (`budget.rs`) and the cluster's `max_retries` breaker (`breaker.rs`); the
//! request path combines them.

use std::time::Duration;

/// The retry conditions of a route, one flag per Envoy `retry_on` token,
/// parsed by the model from Istio's `retryOn`. `status_codes` non-empty
/// means Envoy's `retriable-status-codes` with that list.
pub use trellis_model::policy::RetryOn;

/// A route's retry policy (Istio `HTTPRetry`), after config defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (Istio's `attempts`), so at most
    /// `retries + 1` tries in all.
    pub retries: u32,
    /// Istio `perTryTimeout`: each try's own deadline, inside the route
    /// timeout. `None` leaves only the route timeout.
    pub per_try_timeout: Option<Duration>,
    /// Istio `retryOn`: which outcomes are retried; see [`retry_reason`].
    pub retry_on: RetryOn,
    /// Istio `retryRemoteLocalities`: when false a retry stays in the
    /// locality priorities the first try could use.
    pub retry_remote_localities: bool,
    /// Envoy's `previous_hosts` predicate, which Istio always sets: a retry
    /// prefers an endpoint not tried yet, since the one that failed is the
    /// likeliest to fail again.
    pub ignore_previous_hosts: bool,
}

impl RetryPolicy {
    /// The policy Istio applies to every HTTP route that sets no `retries`:
    /// two retries on failures that are safe to repeat because the upstream
    /// did not process the request (connect failure, refused stream, gRPC
    /// `UNAVAILABLE`/`CANCELLED`, HTTP 503), on another endpoint when there
    /// is one.
    pub fn istio_default() -> Self {
        Self {
            retries: 2,
            per_try_timeout: None,
            retry_on: RetryOn {
                connect_failure: true,
                refused_stream: true,
                grpc_unavailable: true,
                grpc_cancelled: true,
                status_codes: vec![503],
                ..RetryOn::default()
            },
            retry_remote_localities: false,
            ignore_previous_hosts: true,
        }
    }
}

/// How one attempt ended, as far as the retry decision cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived. `grpc_status` is the `grpc-status` of a
    /// trailers-only response (the only gRPC status known before the body).
    Response {
        /// The HTTP status.
        status: u16,
        /// `grpc-status` from the response headers, if any.
        grpc_status: Option<u32>,
    },
    /// No connection could be made to the endpoint.
    ConnectFailure,
    /// The HTTP/2 stream was reset with `REFUSED_STREAM`: the upstream says
    /// it did not process the request.
    RefusedStream,
    /// The connection or stream failed after the request may have been
    /// written and before response headers.
    Reset,
    /// The per-try timeout fired before response headers.
    PerTryTimeout,
    /// The request provably never reached the upstream (e.g. a pooled
    /// connection closed before the request was written).
    NeverSent,
}

/// Why an attempt is retried; one value per `retry_on` condition, for the
/// retry metric's `reason` label.
///
/// The variants are in precedence order: when several configured conditions
/// match one outcome, [`retry_reason`] returns the first, i.e. the narrowest
/// condition, because it says most about what went wrong (a 503 retried under
/// `retriable-status-codes: 503` and `5xx` is labelled
/// `retriable_status_code`; a connect failure under `connect-failure` and
/// `5xx` is `connect_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RetryReason {
    /// Always retriable, whatever the policy: the upstream never saw it.
    NeverSent,
    /// `connect-failure`.
    ConnectFailure,
    /// `refused-stream`.
    RefusedStream,
    /// `retriable-status-codes` (Istio: a status code in `retryOn`).
    RetriableStatusCode,
    /// `retriable-4xx` (409).
    Retriable4xx,
    /// `cancelled` (gRPC 1).
    GrpcCancelled,
    /// `deadline-exceeded` (gRPC 4).
    GrpcDeadlineExceeded,
    /// `internal` (gRPC 13).
    GrpcInternal,
    /// `resource-exhausted` (gRPC 8).
    GrpcResourceExhausted,
    /// `unavailable` (gRPC 14).
    GrpcUnavailable,
    /// `reset`: no response at all.
    Reset,
    /// `gateway-error`: 502/503/504, connect failure, per-try timeout.
    GatewayError,
    /// `5xx`: any 5xx or no response at all.
    FiveXx,
}

impl RetryReason {
    /// Every reason, in precedence order, so metric handles can be made for
    /// each label when config compiles instead of per request.
    pub const ALL: [RetryReason; 13] = [
        RetryReason::NeverSent,
        RetryReason::ConnectFailure,
        RetryReason::RefusedStream,
        RetryReason::RetriableStatusCode,
        RetryReason::Retriable4xx,
        RetryReason::GrpcCancelled,
        RetryReason::GrpcDeadlineExceeded,
        RetryReason::GrpcInternal,
        RetryReason::GrpcResourceExhausted,
        RetryReason::GrpcUnavailable,
        RetryReason::Reset,
        RetryReason::GatewayError,
        RetryReason::FiveXx,
    ];

    /// The metric label: Envoy's token with `_` for `-`, so dashboards read
    /// like the config that caused the retry.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::NeverSent => "never_sent",
            RetryReason::ConnectFailure => "connect_failure",
            RetryReason::RefusedStream => "refused_stream",
            RetryReason::RetriableStatusCode => "retriable_status_code",
            RetryReason::Retriable4xx => "retriable_4xx",
            RetryReason::GrpcCancelled => "grpc_cancelled",
            RetryReason::GrpcDeadlineExceeded => "grpc_deadline_exceeded",
            RetryReason::GrpcInternal => "grpc_internal",
            RetryReason::GrpcResourceExhausted => "grpc_resource_exhausted",
            RetryReason::GrpcUnavailable => "grpc_unavailable",
            RetryReason::Reset => "reset",
            RetryReason::GatewayError => "gateway_error",
            RetryReason::FiveXx => "5xx",
        }
    }
}

/// gRPC status codes that `retry_on` can name.
const GRPC_CANCELLED: u32 = 1;
const GRPC_DEADLINE_EXCEEDED: u32 = 4;
const GRPC_RESOURCE_EXHAUSTED: u32 = 8;
const GRPC_INTERNAL: u32 = 13;
const GRPC_UNAVAILABLE: u32 = 14;

/// The condition under which `outcome` may be retried, or `None` when the
/// policy does not retry it.
///
/// Envoy's meanings: `5xx` is any 5xx response or no response at all
/// (connect failure, refused stream, reset, per-try timeout); `gateway-error`
/// is 502/503/504 plus connect failures and per-try timeouts (the failures a
/// gateway turns into 503/504 itself); `reset` is no response at all;
/// `retriable-4xx` is 409 only. `NeverSent` is retried under any policy, as
/// Envoy retries a request a pooled connection lost before writing it: the
/// upstream cannot have acted on it. When several conditions match, the first
/// in [`RetryReason`]'s order wins.
pub fn retry_reason(on: &RetryOn, outcome: &Outcome) -> Option<RetryReason> {
    use RetryReason as R;
    let no_response = matches!(
        outcome,
        Outcome::ConnectFailure | Outcome::RefusedStream | Outcome::Reset | Outcome::PerTryTimeout
    );
    let (status, grpc) = match *outcome {
        Outcome::Response {
            status,
            grpc_status,
        } => (Some(status), grpc_status),
        _ => (None, None),
    };
    let five_xx = status.is_some_and(|s| (500..600).contains(&s));
    let gateway = matches!(status, Some(502..=504))
        || matches!(outcome, Outcome::ConnectFailure | Outcome::PerTryTimeout);
    let candidates = [
        (matches!(outcome, Outcome::NeverSent), R::NeverSent),
        (
            on.connect_failure && *outcome == Outcome::ConnectFailure,
            R::ConnectFailure,
        ),
        (
            on.refused_stream && *outcome == Outcome::RefusedStream,
            R::RefusedStream,
        ),
        (
            status.is_some_and(|s| on.status_codes.contains(&s)),
            R::RetriableStatusCode,
        ),
        (on.retriable_4xx && status == Some(409), R::Retriable4xx),
        (
            on.grpc_cancelled && grpc == Some(GRPC_CANCELLED),
            R::GrpcCancelled,
        ),
        (
            on.grpc_deadline_exceeded && grpc == Some(GRPC_DEADLINE_EXCEEDED),
            R::GrpcDeadlineExceeded,
        ),
        (
            on.grpc_internal && grpc == Some(GRPC_INTERNAL),
            R::GrpcInternal,
        ),
        (
            on.grpc_resource_exhausted && grpc == Some(GRPC_RESOURCE_EXHAUSTED),
            R::GrpcResourceExhausted,
        ),
        (
            on.grpc_unavailable && grpc == Some(GRPC_UNAVAILABLE),
            R::GrpcUnavailable,
        ),
        (on.reset && no_response, R::Reset),
        (on.gateway_error && gateway, R::GatewayError),
        (on.five_xx && (five_xx || no_response), R::FiveXx),
    ];
    candidates
        .into_iter()
        .find_map(|(hit, reason)| hit.then_some(reason))
}

/// Envoy's default base retry interval.
pub const BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Envoy's default cap on a retry's backoff: ten times the base.
pub const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// The wait before retry number `retry_index` (0 for the first retry):
/// exponential with full jitter, `unit × min(max, base × 2^retry_index)`.
///
/// Full jitter (a uniform draw from zero to the ceiling) spreads the retries
/// of many clients that failed together, so they do not hit the upstream
/// again in lockstep; the exponential ceiling backs off from an upstream
/// that keeps failing. `unit` is the caller's random draw in `[0, 1)`;
/// values outside are clamped (NaN counts as 0) so a bad draw cannot panic
/// or wait past `max`. Large `retry_index` values saturate at `max`.
/// (Envoy draws from `[0, (2^(n+1) - 1) × base]`; the simpler doubling here
/// has the same growth and cap.)
pub fn backoff(retry_index: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let ceiling = 1u32
        .checked_shl(retry_index)
        .and_then(|factor| base.checked_mul(factor))
        .map_or(max, |d| d.min(max));
    let unit = if unit.is_nan() {
        0.0
    } else {
        unit.clamp(0.0, 1.0)
    };
    ceiling.mul_f64(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16) -> Outcome {
        Outcome::Response {
            status,
            grpc_status: None,
        }
    }

    fn grpc(code: u32) -> Outcome {
        Outcome::Response {
            status: 200,
            grpc_status: Some(code),
        }
    }

    fn only(f: impl FnOnce(&mut RetryOn)) -> RetryOn {
        let mut on = RetryOn::default();
        f(&mut on);
        on
    }

    #[test]
    fn each_token_alone() {
        use Outcome as O;
        use RetryReason as R;
        let five_xx = only(|o| o.five_xx = true);
        let gateway = only(|o| o.gateway_error = true);
        let reset = only(|o| o.reset = true);
        let connect = only(|o| o.connect_failure = true);
        let refused = only(|o| o.refused_stream = true);
        let r4xx = only(|o| o.retriable_4xx = true);
        let codes = only(|o| o.status_codes = vec![429, 503]);
        let cancelled = only(|o| o.grpc_cancelled = true);
        let deadline = only(|o| o.grpc_deadline_exceeded = true);
        let internal = only(|o| o.grpc_internal = true);
        let exhausted = only(|o| o.grpc_resource_exhausted = true);
        let unavailable = only(|o| o.grpc_unavailable = true);
        let none = RetryOn::default();
        let cases: &[(&RetryOn, Outcome, Option<RetryReason>)] = &[
            // 5xx: any 5xx response, or no response at all.
            (&five_xx, resp(500), Some(R::FiveXx)),
            (&five_xx, resp(503), Some(R::FiveXx)),
            (&five_xx, resp(599), Some(R::FiveXx)),
            (&five_xx, resp(499), None),
            (&five_xx, resp(600), None),
            (&five_xx, resp(200), None),
            (&five_xx, O::ConnectFailure, Some(R::FiveXx)),
            (&five_xx, O::RefusedStream, Some(R::FiveXx)),
            (&five_xx, O::Reset, Some(R::FiveXx)),
            (&five_xx, O::PerTryTimeout, Some(R::FiveXx)),
            // gateway-error: 502-504, connect failure, per-try timeout.
            (&gateway, resp(502), Some(R::GatewayError)),
            (&gateway, resp(503), Some(R::GatewayError)),
            (&gateway, resp(504), Some(R::GatewayError)),
            (&gateway, resp(500), None),
            (&gateway, resp(501), None),
            (&gateway, resp(505), None),
            (&gateway, O::ConnectFailure, Some(R::GatewayError)),
            (&gateway, O::PerTryTimeout, Some(R::GatewayError)),
            (&gateway, O::Reset, None),
            (&gateway, O::RefusedStream, None),
            // reset: no response at all.
            (&reset, O::Reset, Some(R::Reset)),
            (&reset, O::ConnectFailure, Some(R::Reset)),
            (&reset, O::RefusedStream, Some(R::Reset)),
            (&reset, O::PerTryTimeout, Some(R::Reset)),
            (&reset, resp(503), None),
            // connect-failure, refused-stream: only themselves.
            (&connect, O::ConnectFailure, Some(R::ConnectFailure)),
            (&connect, O::Reset, None),
            (&connect, O::RefusedStream, None),
            (&connect, resp(503), None),
            (&refused, O::RefusedStream, Some(R::RefusedStream)),
            (&refused, O::Reset, None),
            (&refused, O::ConnectFailure, None),
            // retriable-4xx: 409 only.
            (&r4xx, resp(409), Some(R::Retriable4xx)),
            (&r4xx, resp(429), None),
            (&r4xx, resp(400), None),
            // retriable-status-codes: exactly the listed ones.
            (&codes, resp(429), Some(R::RetriableStatusCode)),
            (&codes, resp(503), Some(R::RetriableStatusCode)),
            (&codes, resp(502), None),
            (&codes, O::Reset, None),
            // gRPC: by grpc-status.
            (&cancelled, grpc(1), Some(R::GrpcCancelled)),
            (&deadline, grpc(4), Some(R::GrpcDeadlineExceeded)),
            (&internal, grpc(13), Some(R::GrpcInternal)),
            (&exhausted, grpc(8), Some(R::GrpcResourceExhausted)),
            (&unavailable, grpc(14), Some(R::GrpcUnavailable)),
            (&unavailable, grpc(13), None),
            (&unavailable, grpc(0), None),
            (&unavailable, resp(503), None),
            (&unavailable, O::Reset, None),
            (&cancelled, grpc(14), None),
            // Nothing configured: nothing retried, except NeverSent.
            (&none, resp(503), None),
            (&none, O::ConnectFailure, None),
            (&none, O::Reset, None),
            (&none, O::PerTryTimeout, None),
            (&none, O::NeverSent, Some(R::NeverSent)),
            (&connect, O::NeverSent, Some(R::NeverSent)),
        ];
        for (on, outcome, want) in cases {
            assert_eq!(retry_reason(on, outcome), *want, "{on:?} {outcome:?}");
        }
    }

    #[test]
    fn precedence_is_the_narrowest_condition() {
        use Outcome as O;
        use RetryReason as R;
        let all = RetryOn {
            five_xx: true,
            gateway_error: true,
            reset: true,
            connect_failure: true,
            refused_stream: true,
            retriable_4xx: true,
            status_codes: vec![503, 409],
            grpc_cancelled: true,
            grpc_deadline_exceeded: true,
            grpc_internal: true,
            grpc_resource_exhausted: true,
            grpc_unavailable: true,
        };
        let cases = [
            (O::NeverSent, R::NeverSent),
            (O::ConnectFailure, R::ConnectFailure),
            (O::RefusedStream, R::RefusedStream),
            (O::Reset, R::Reset),
            (O::PerTryTimeout, R::Reset),
            (resp(503), R::RetriableStatusCode),
            (resp(409), R::RetriableStatusCode),
            (resp(502), R::GatewayError),
            (resp(500), R::FiveXx),
            (
                O::Response {
                    status: 503,
                    grpc_status: Some(14),
                },
                R::RetriableStatusCode,
            ),
            (
                O::Response {
                    status: 500,
                    grpc_status: Some(13),
                },
                R::GrpcInternal,
            ),
            (grpc(14), R::GrpcUnavailable),
        ];
        for (outcome, want) in cases {
            assert_eq!(retry_reason(&all, &outcome), Some(want), "{outcome:?}");
        }
        // Without the narrow tokens, the broad ones take over.
        let broad = RetryOn {
            five_xx: true,
            gateway_error: true,
            ..RetryOn::default()
        };
        assert_eq!(
            retry_reason(&broad, &O::ConnectFailure),
            Some(R::GatewayError)
        );
        assert_eq!(retry_reason(&broad, &O::Reset), Some(R::FiveXx));
        assert_eq!(retry_reason(&broad, &resp(504)), Some(R::GatewayError));
    }

    #[test]
    fn reasons_are_ordered_and_labelled_once() {
        let mut labels: Vec<_> = RetryReason::ALL.iter().map(|r| r.as_str()).collect();
        assert!(RetryReason::ALL.windows(2).all(|w| w[0] < w[1]));
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), RetryReason::ALL.len());
        for (r, s) in [
            (RetryReason::FiveXx, "5xx"),
            (RetryReason::GatewayError, "gateway_error"),
            (RetryReason::NeverSent, "never_sent"),
            (RetryReason::RetriableStatusCode, "retriable_status_code"),
        ] {
            assert_eq!(r.as_str(), s);
        }
    }

    #[test]
    fn istio_default_policy() {
        let p = RetryPolicy::istio_default();
        assert_eq!(p.retries, 2);
        assert!(p.ignore_previous_hosts);
        assert!(!p.retry_remote_localities);
        assert_eq!(p.per_try_timeout, None);
        let cases = [
            (Outcome::ConnectFailure, Some(RetryReason::ConnectFailure)),
            (Outcome::RefusedStream, Some(RetryReason::RefusedStream)),
            (resp(503), Some(RetryReason::RetriableStatusCode)),
            (grpc(14), Some(RetryReason::GrpcUnavailable)),
            (grpc(1), Some(RetryReason::GrpcCancelled)),
            (resp(500), None),
            (resp(502), None),
            (Outcome::Reset, None),
            (Outcome::PerTryTimeout, None),
            (grpc(4), None),
        ];
        for (outcome, want) in cases {
            assert_eq!(retry_reason(&p.retry_on, &outcome), want, "{outcome:?}");
        }
    }

    #[test]
    fn backoff_table() {
        let ms = Duration::from_millis;
        let cases = [
            // (retry_index, unit, want)
            (0, 0.0, ms(0)),
            (0, 0.5, Duration::from_micros(12_500)),
            (1, 0.5, ms(25)),
            (2, 0.5, ms(50)),
            (3, 0.5, ms(100)),
            (4, 0.5, ms(125)), // 400 ms capped at 250
            (10, 0.5, ms(125)),
            (31, 0.5, ms(125)),
            (32, 0.5, ms(125)), // 2^32 does not fit a u32: saturates
            (u32::MAX, 0.5, ms(125)),
            (2, 1.0, ms(100)),
            (2, 7.0, ms(100)), // clamped to 1
            (2, -1.0, ms(0)),
            (2, f64::NAN, ms(0)),
            (2, f64::INFINITY, ms(100)),
        ];
        for (i, unit, want) in cases {
            assert_eq!(
                backoff(i, BACKOFF_BASE, BACKOFF_MAX, unit),
                want,
                "retry {i} unit {unit}"
            );
        }
        // A huge base cannot overflow the multiplication.
        let huge = Duration::from_secs(u64::MAX / 2);
        assert_eq!(backoff(5, huge, Duration::MAX, 0.0), Duration::ZERO);
        assert_eq!(backoff(5, huge, ms(7), 1.0), ms(7));
        assert_eq!(BACKOFF_MAX, BACKOFF_BASE * 10);
    }

    #[test]
    fn backoff_never_exceeds_the_ceiling() {
        for i in 0..40 {
            for k in 0..100 {
                let unit = f64::from(k) / 100.0;
                let d = backoff(i, BACKOFF_BASE, BACKOFF_MAX, unit);
                assert!(d < BACKOFF_MAX || (d == BACKOFF_MAX && unit >= 1.0));
                let ceiling = BACKOFF_BASE
                    .saturating_mul(1u32.checked_shl(i).unwrap_or(u32::MAX))
                    .min(BACKOFF_MAX);
                assert!(d <= ceiling, "retry {i} unit {unit}: {d:?}");
            }
        }
    }
}
