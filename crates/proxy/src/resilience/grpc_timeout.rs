//! The `grpc-timeout` request header: the client's deadline, which the
//! proxy honours (the route timeout never waits longer than the client
//! will) and forwards upstream reduced by the time already spent, so the
//! server can stop working on a call nobody waits for.
//!
//! Wire format (gRPC over HTTP/2 spec): `TimeoutValue TimeoutUnit`, the
//! value 1 to 8 ASCII digits, the unit one of `H` (hours), `M` (minutes),
//! `S` (seconds), `m` (milliseconds), `u` (microseconds), `n` (nanoseconds).

use std::time::Duration;

/// Largest value the header can carry (8 digits).
const MAX_VALUE: u64 = 99_999_999;

/// The header's duration, or `None` if the value is not exactly 1–8 ASCII
/// digits followed by one unit letter (no spaces, signs or other units).
/// A malformed header is ignored rather than rejected, as gRPC servers do,
/// so a buggy client loses its deadline but not its call.
///
/// `0` is accepted and means "already expired": [`effective`] then picks
/// zero, and the request times out at once. (Envoy instead treats a zero
/// `grpc-timeout` as no deadline; a gRPC client only sends it when its
/// deadline has passed, so nothing is waiting for the answer.)
pub fn parse(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    // At most 99_999_999 hours: ~3.6e11 s, far inside a Duration.
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The header value for `d`: the finest unit whose value fits in 8 digits,
/// rounded up, as grpc-go writes it.
///
/// Rounding up can lengthen the deadline by less than one of the chosen
/// unit, and since that unit is the finest that fits, by at most 0.001% of
/// the deadline (past 8 digits of one unit there are 5 of the next);
/// rounding down could shorten a tiny deadline to `0`, which means
/// "expired". A zero duration is `0n`. Durations beyond 99,999,999 hours
/// (about 11,400 years) are written as that maximum.
pub fn format(d: Duration) -> String {
    const UNITS: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let nanos = d.as_nanos();
    for (unit, c) in UNITS {
        let value = nanos.div_ceil(unit);
        if value <= u128::from(MAX_VALUE) {
            return format!("{value}{c}");
        }
    }
    format!("{MAX_VALUE}H")
}

/// The timeout to apply to a gRPC request: the smaller of the route's and
/// the client's, since waiting past the client's deadline serves no one and
/// a client cannot lift an operator's limit. `None` when neither is set.
pub fn effective(
    route_timeout: Option<Duration>,
    grpc_timeout: Option<Duration>,
) -> Option<Duration> {
    match (route_timeout, grpc_timeout) {
        (Some(r), Some(g)) => Some(r.min(g)),
        (r, g) => r.or(g),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let s = Duration::from_secs;
        let cases: &[(&[u8], Option<Duration>)] = &[
            (b"1H", Some(s(3600))),
            (b"2M", Some(s(120))),
            (b"30S", Some(s(30))),
            (b"100m", Some(Duration::from_millis(100))),
            (b"250u", Some(Duration::from_micros(250))),
            (b"7n", Some(Duration::from_nanos(7))),
            (b"0S", Some(Duration::ZERO)),
            (b"00000001m", Some(Duration::from_millis(1))),
            (b"99999999H", Some(s(99_999_999 * 3600))),
            (b"99999999n", Some(Duration::from_nanos(99_999_999))),
            // Malformed.
            (b"", None),
            (b"S", None),
            (b"1", None),
            (b"10", None),
            (b"123456789S", None), // 9 digits
            (b"1s", None),         // units are case-sensitive
            (b"1h", None),
            (b"1U", None),
            (b"1N", None),
            (b"1x", None),
            (b" 1S", None),
            (b"1S ", None),
            (b"1 S", None),
            (b"+1S", None),
            (b"-1S", None),
            (b"1.5S", None),
            (b"1SS", None),
            (b"\xff1S", None),
            ("１S".as_bytes(), None), // fullwidth digit
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), *want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn format_table() {
        let cases = [
            (Duration::ZERO, "0n"),
            (Duration::from_nanos(1), "1n"),
            (Duration::from_nanos(99_999_999), "99999999n"),
            (Duration::from_nanos(100_000_000), "100000u"),
            (Duration::from_nanos(100_000_001), "100001u"), // rounded up
            (Duration::from_millis(100), "100000u"),
            (Duration::from_secs(1), "1000000u"),
            (Duration::from_secs(99), "99000000u"),
            (Duration::from_secs(100), "100000m"),
            (Duration::from_secs(100_000), "100000S"),
            (Duration::from_secs(100_000_000), "1666667M"),
            (Duration::from_secs(6_000_000_000), "1666667H"),
            (Duration::from_secs(99_999_999 * 3600), "99999999H"),
            (Duration::MAX, "99999999H"),
        ];
        for (d, want) in cases {
            assert_eq!(format(d), want, "{d:?}");
        }
    }

    #[test]
    fn format_round_trips_without_shortening() {
        let samples = [
            Duration::from_nanos(1),
            Duration::from_nanos(123_456_789),
            Duration::from_micros(999_999_999),
            Duration::from_millis(1_234_567),
            Duration::new(3, 1),
            Duration::new(86_400 * 30, 17),
            Duration::new(9_999_999_999, 999_999_999),
        ];
        for d in samples {
            let s = format(d);
            assert!(s.len() <= 9, "{s}");
            let back = parse(s.as_bytes()).expect("own output parses");
            assert!(back >= d, "{d:?} -> {s} -> {back:?}");
            let slack = back - d;
            assert!(
                slack.as_secs_f64() <= d.as_secs_f64() * 1e-5 + 1e-9,
                "{d:?} -> {s}: lengthened by {slack:?}"
            );
        }
    }

    #[test]
    fn effective_is_the_smaller() {
        let ms = Duration::from_millis;
        let cases = [
            (None, None, None),
            (Some(ms(500)), None, Some(ms(500))),
            (None, Some(ms(200)), Some(ms(200))),
            (Some(ms(500)), Some(ms(200)), Some(ms(200))),
            (Some(ms(100)), Some(ms(200)), Some(ms(100))),
            (Some(ms(100)), Some(Duration::ZERO), Some(Duration::ZERO)),
        ];
        for (route, grpc, want) in cases {
            assert_eq!(effective(route, grpc), want, "{route:?} {grpc:?}");
        }
    }
}
