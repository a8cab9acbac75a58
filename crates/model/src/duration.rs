//! Durations as Istio writes them: protobuf JSON (`"1.5s"`) and Go-style
//! (`"100ms"`, `"1m30s"`), which `kubectl` users also type.

use std::time::Duration;

/// Parse `"10s"`, `"0.5s"`, `"250ms"`, `"1m30s"`, `"2h"`, `"100us"`, `"5ns"`.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let bad = || {
        format!("invalid duration {s:?}: expected e.g. \"10s\", \"0.5s\", \"250ms\" or \"1m30s\"")
    };
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_end == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    if !total.is_finite() || total > 1e9 {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_and_go_forms() {
        let cases = [
            ("10s", Duration::from_secs(10)),
            ("0.5s", Duration::from_millis(500)),
            ("250ms", Duration::from_millis(250)),
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("100us", Duration::from_micros(100)),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for input in ["", "s", "10", "10 s", "ten seconds", "1x", "-1s"] {
            assert!(parse(input).is_err(), "{input:?} should be rejected");
        }
    }
}
