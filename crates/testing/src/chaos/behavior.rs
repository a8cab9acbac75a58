//! What a `ChaosServer` does to a request: the global [`Behavior`], its
//! per-request overrides from `x-chaos-*` headers, and the decision, a pure
//! function of the behavior, the attempt number and two dice rolls.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

/// Request headers that override the global [`Behavior`] for one request.
pub(crate) mod header {
    pub(crate) const FAIL: &str = "x-chaos-fail";
    pub(crate) const STATUS: &str = "x-chaos-status";
    pub(crate) const GRPC_STATUS: &str = "x-chaos-grpc-status";
    pub(crate) const FAIL_FIRST: &str = "x-chaos-fail-first";
    pub(crate) const KEY: &str = "x-chaos-key";
    pub(crate) const DELAY: &str = "x-chaos-delay";
    pub(crate) const RESET: &str = "x-chaos-reset";
    pub(crate) const CLOSE_AFTER_HEADERS: &str = "x-chaos-close-after-headers";
    pub(crate) const HANG: &str = "x-chaos-hang";
    pub(crate) const GRPC_REPEAT: &str = "x-chaos-grpc-repeat";
}

/// How a [`ChaosServer`](super::ChaosServer) misbehaves. Set globally with
/// [`ChaosServer::set`](super::ChaosServer::set) or `POST /_chaos` (this
/// struct as JSON; absent fields take their defaults, unknown fields are
/// refused); each `x-chaos-*` request header overrides its field for that
/// request.
///
/// Which misbehaviour a request gets, first match wins:
/// 1. `fail_first > 0`: attempts `1..=fail_first` of the request's key
///    misbehave for sure (hang if `hang`, else reset if `reset_percent > 0`,
///    else close after headers if `close_after_headers`, else fail with
///    `status`/`grpc_status`); later attempts are answered normally. So
///    `fail_first` picks *which* attempts fail, the other knobs *how*.
/// 2. `hang`; 3. reset with `reset_percent`; 4. fail with `fail_percent`;
///    5. `close_after_headers`; 6. the normal answer.
///
/// `delay` applies to every request first, whatever happens next.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behavior {
    /// Percentage (0-100) of requests that fail (`x-chaos-fail`).
    pub fail_percent: f64,
    /// HTTP status of a failure (`x-chaos-status`, default 503).
    pub status: u16,
    /// gRPC status of a failed gRPC call (`x-chaos-grpc-status`): a
    /// trailers-only response (HTTP 200, `grpc-status` in the headers, no
    /// body). `None`: gRPC calls fail with the HTTP `status` like the rest.
    pub grpc_status: Option<u32>,
    /// Fail the first N attempts of every key, then succeed
    /// (`x-chaos-fail-first`; the key is `x-chaos-key`, else the path).
    pub fail_first: u64,
    /// Wait this long before doing anything else (`x-chaos-delay`, in ms;
    /// JSON `delay_ms`).
    #[serde(rename = "delay_ms", with = "millis")]
    pub delay: Duration,
    /// Percentage (0-100) of requests reset without a response
    /// (`x-chaos-reset`): RST_STREAM on HTTP/2, a closed connection on
    /// HTTP/1.1.
    pub reset_percent: f64,
    /// Never answer, until the client goes away or the server stops
    /// (`x-chaos-hang: 1`).
    pub hang: bool,
    /// Send the status and headers (`content-length: 1000`) and a few bytes,
    /// then abort the body (`x-chaos-close-after-headers: 1`).
    pub close_after_headers: bool,
    /// Close an HTTP/1.1 connection idle (between requests, or before the
    /// first) for a random time in `[min, max]`, without a word. Global only;
    /// JSON `idle_close_ms: [min, max]` or `null`.
    #[serde(rename = "idle_close_ms", with = "millis_range")]
    pub idle_close: Option<(Duration, Duration)>,
}

impl Default for Behavior {
    fn default() -> Behavior {
        Behavior {
            fail_percent: 0.0,
            status: 503,
            grpc_status: None,
            fail_first: 0,
            delay: Duration::ZERO,
            reset_percent: 0.0,
            hang: false,
            close_after_headers: false,
            idle_close: None,
        }
    }
}

/// What to do with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Answer,
    Fail,
    Reset,
    CloseAfterHeaders,
    Hang,
}

impl Behavior {
    /// Checks ranges: percentages in 0-100, `status` 200-599, and
    /// `idle_close` min <= max.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("fail_percent", self.fail_percent),
            ("reset_percent", self.reset_percent),
        ] {
            if !(0.0..=100.0).contains(&p) {
                return Err(format!("{name}: {p} is not a percentage (0-100)"));
            }
        }
        if !(200..=599).contains(&self.status) {
            return Err(format!("status: {} is not in 200-599", self.status));
        }
        if let Some((min, max)) = self.idle_close
            && min > max
        {
            return Err(format!("idle_close: min {min:?} > max {max:?}"));
        }
        Ok(())
    }

    /// The HTTP status of a failure.
    pub(crate) fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
    }

    /// This behavior with the `x-chaos-*` headers of one request applied.
    pub(crate) fn with_headers(&self, headers: &HeaderMap) -> Result<Behavior, String> {
        let mut b = self.clone();
        if let Some(p) = parse::<f64>(headers, header::FAIL)? {
            b.fail_percent = p;
        }
        if let Some(s) = parse::<u16>(headers, header::STATUS)? {
            b.status = s;
        }
        if let Some(s) = parse::<u32>(headers, header::GRPC_STATUS)? {
            b.grpc_status = Some(s);
        }
        if let Some(n) = parse::<u64>(headers, header::FAIL_FIRST)? {
            b.fail_first = n;
        }
        if let Some(ms) = parse::<u64>(headers, header::DELAY)? {
            b.delay = Duration::from_millis(ms);
        }
        if let Some(p) = parse::<f64>(headers, header::RESET)? {
            b.reset_percent = p;
        }
        if let Some(on) = flag(headers, header::HANG)? {
            b.hang = on;
        }
        if let Some(on) = flag(headers, header::CLOSE_AFTER_HEADERS)? {
            b.close_after_headers = on;
        }
        b.validate()?;
        Ok(b)
    }

    /// The decision for attempt number `attempt` (1-based) of a key, given
    /// two rolls in `[0, 100)` (see the type's docs for the order).
    pub(crate) fn action(&self, attempt: u64, reset_roll: f64, fail_roll: f64) -> Action {
        if self.fail_first > 0 {
            return if attempt > self.fail_first {
                Action::Answer
            } else if self.hang {
                Action::Hang
            } else if self.reset_percent > 0.0 {
                Action::Reset
            } else if self.close_after_headers {
                Action::CloseAfterHeaders
            } else {
                Action::Fail
            };
        }
        if self.hang {
            Action::Hang
        } else if reset_roll < self.reset_percent {
            Action::Reset
        } else if fail_roll < self.fail_percent {
            Action::Fail
        } else if self.close_after_headers {
            Action::CloseAfterHeaders
        } else {
            Action::Answer
        }
    }
}

/// The attempt-counting key of a request: `x-chaos-key`, else the path.
pub(crate) fn key(headers: &HeaderMap, path: &str) -> String {
    headers
        .get(header::KEY)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_else(|| path.to_owned())
}

/// `x-chaos-grpc-repeat: N`: each echoed gRPC message is sent N times.
pub(crate) fn grpc_repeat(headers: &HeaderMap) -> Result<u32, String> {
    Ok(parse(headers, header::GRPC_REPEAT)?.unwrap_or(1))
}

fn parse<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Result<Option<T>, String> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| format!("{name}: expected a number, got {value:?}"))
}

fn flag(headers: &HeaderMap, name: &str) -> Result<Option<bool>, String> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    match value.to_str().map(str::trim) {
        Ok("1" | "true" | "yes") => Ok(Some(true)),
        Ok("0" | "false" | "no") => Ok(Some(false)),
        _ => Err(format!("{name}: expected 1 or 0, got {value:?}")),
    }
}

/// `Duration` as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// `Option<(Duration, Duration)>` as `[min_ms, max_ms]` or `null`.
mod millis_range {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    fn ms(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn serialize<S: Serializer>(
        range: &Option<(Duration, Duration)>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        range.map(|(min, max)| [ms(min), ms(max)]).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<(Duration, Duration)>, D::Error> {
        let range = Option::<[u64; 2]>::deserialize(d)?;
        Ok(range.map(|[min, max]| (Duration::from_millis(min), Duration::from_millis(max))))
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn headers_override_the_global_behavior() {
        let global = Behavior {
            fail_percent: 10.0,
            status: 500,
            delay: Duration::from_millis(5),
            hang: true,
            ..Behavior::default()
        };
        let b = global
            .with_headers(&headers(&[
                ("x-chaos-fail", "25.5"),
                ("x-chaos-status", "429"),
                ("x-chaos-grpc-status", "14"),
                ("x-chaos-fail-first", "2"),
                ("x-chaos-delay", "40"),
                ("x-chaos-reset", "3"),
                ("x-chaos-hang", "0"),
                ("x-chaos-close-after-headers", "true"),
            ]))
            .unwrap();
        let want = Behavior {
            fail_percent: 25.5,
            status: 429,
            grpc_status: Some(14),
            fail_first: 2,
            delay: Duration::from_millis(40),
            reset_percent: 3.0,
            hang: false,
            close_after_headers: true,
            idle_close: None,
        };
        assert_eq!(b, want);
        // No headers: the global behavior as is.
        assert_eq!(global.with_headers(&HeaderMap::new()).unwrap(), global);
    }

    #[test]
    fn bad_headers_are_explained() {
        for (pairs, want) in [
            (
                &[("x-chaos-fail", "lots")][..],
                "x-chaos-fail: expected a number",
            ),
            (
                &[("x-chaos-fail", "101")],
                "fail_percent: 101 is not a percentage",
            ),
            (
                &[("x-chaos-reset", "-1")],
                "reset_percent: -1 is not a percentage",
            ),
            (&[("x-chaos-status", "99")], "status: 99 is not in 200-599"),
            (
                &[("x-chaos-hang", "maybe")],
                "x-chaos-hang: expected 1 or 0",
            ),
        ] {
            let err = Behavior::default()
                .with_headers(&headers(pairs))
                .unwrap_err();
            assert!(err.starts_with(want), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn action_order() {
        use Action::*;
        let b = |f: fn(&mut Behavior)| {
            let mut b = Behavior::default();
            f(&mut b);
            b
        };
        // (behavior, attempt, reset roll, fail roll, expected)
        let cases = [
            (b(|_| {}), 1, 0.0, 0.0, Answer),
            (b(|b| b.fail_percent = 30.0), 1, 50.0, 29.9, Fail),
            (b(|b| b.fail_percent = 30.0), 1, 50.0, 30.0, Answer),
            (b(|b| b.fail_percent = 100.0), 1, 50.0, 99.99, Fail),
            (b(|b| b.reset_percent = 30.0), 1, 10.0, 0.0, Reset),
            (b(|b| b.reset_percent = 30.0), 1, 30.0, 0.0, Answer),
            (b(|b| b.hang = true), 1, 99.0, 99.0, Hang),
            (
                b(|b| b.close_after_headers = true),
                7,
                99.0,
                99.0,
                CloseAfterHeaders,
            ),
            (
                b(|b| {
                    b.fail_percent = 50.0;
                    b.close_after_headers = true;
                }),
                1,
                99.0,
                10.0,
                Fail,
            ),
            // fail_first: attempts 1..=N misbehave for sure, then answer.
            (b(|b| b.fail_first = 2), 1, 99.0, 99.0, Fail),
            (b(|b| b.fail_first = 2), 2, 99.0, 99.0, Fail),
            (b(|b| b.fail_first = 2), 3, 0.0, 0.0, Answer),
            (
                b(|b| {
                    b.fail_first = 1;
                    b.reset_percent = 1.0;
                }),
                1,
                99.0,
                99.0,
                Reset,
            ),
            (
                b(|b| {
                    b.fail_first = 1;
                    b.hang = true;
                }),
                2,
                0.0,
                0.0,
                Answer,
            ),
            (
                b(|b| {
                    b.fail_first = 1;
                    b.close_after_headers = true;
                }),
                1,
                0.0,
                0.0,
                CloseAfterHeaders,
            ),
        ];
        for (i, (behavior, attempt, reset, fail, want)) in cases.into_iter().enumerate() {
            assert_eq!(behavior.action(attempt, reset, fail), want, "case {i}");
        }
    }

    #[test]
    fn json_shape() {
        let b: Behavior = serde_json::from_str(
            r#"{"fail_percent": 20, "delay_ms": 15, "idle_close_ms": [100, 300]}"#,
        )
        .unwrap();
        assert_eq!(b.fail_percent, 20.0);
        assert_eq!(b.status, 503);
        assert_eq!(b.delay, Duration::from_millis(15));
        assert_eq!(
            b.idle_close,
            Some((Duration::from_millis(100), Duration::from_millis(300)))
        );
        let json = serde_json::to_value(Behavior::default()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "fail_percent": 0.0, "status": 503, "grpc_status": null,
                "fail_first": 0, "delay_ms": 0, "reset_percent": 0.0,
                "hang": false, "close_after_headers": false, "idle_close_ms": null,
            })
        );
        let err = serde_json::from_str::<Behavior>(r#"{"fail": 1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `fail`"), "{err}");
    }
}
