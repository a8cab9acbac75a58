//! Small languages inside Istio's policy fields: the `retryOn` condition list
//! of an HTTP retry policy, and gRPC status code names (fault `grpcStatus`).
//!
//! Pure parsers, so the validator and the proxy agree on what a string means.

/// When to retry, parsed from Istio's `retryOn` (Envoy's `x-envoy-retry-on`
/// and `x-envoy-retry-grpc-on` conditions).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetryOn {
    /// `5xx`: any 5xx response, or no response at all (reset, connect failure, timeout).
    pub five_xx: bool,
    /// `gateway-error`: 502, 503 or 504.
    pub gateway_error: bool,
    /// `reset`: the upstream did not respond (disconnect, reset, read timeout).
    pub reset: bool,
    /// `connect-failure`: the connection to the upstream could not be made.
    pub connect_failure: bool,
    /// `refused-stream`: the upstream refused an HTTP/2 stream (REFUSED_STREAM).
    pub refused_stream: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// `retriable-status-codes` and bare codes: retry when the response has one
    /// of these statuses. Sorted, without duplicates.
    pub status_codes: Vec<u16>,
    /// `cancelled`: gRPC status CANCELLED in the response headers.
    pub grpc_cancelled: bool,
    /// `deadline-exceeded`: gRPC status DEADLINE_EXCEEDED.
    pub grpc_deadline_exceeded: bool,
    /// `internal`: gRPC status INTERNAL.
    pub grpc_internal: bool,
    /// `resource-exhausted`: gRPC status RESOURCE_EXHAUSTED.
    pub grpc_resource_exhausted: bool,
    /// `unavailable`: gRPC status UNAVAILABLE.
    pub grpc_unavailable: bool,
}

/// The condition tokens [`parse_retry_on`] understands, besides bare status codes.
pub const RETRY_ON_TOKENS: [&str; 12] = [
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

impl RetryOn {
    /// What Istio retries on when a route has no `retries`:
    /// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`
    /// with the status code 503.
    pub fn istio_default() -> RetryOn {
        RetryOn {
            connect_failure: true,
            refused_stream: true,
            grpc_unavailable: true,
            grpc_cancelled: true,
            status_codes: vec![503],
            ..RetryOn::default()
        }
    }
}

/// Parse a `retryOn` value: comma-separated conditions, each trimmed. A bare
/// HTTP status code (100 to 599) adds that code to the retriable statuses, as
/// Istio does; `retriable-status-codes` on its own means "the listed codes".
pub fn parse_retry_on(s: &str) -> Result<RetryOn, String> {
    let mut out = RetryOn::default();
    if s.trim().is_empty() {
        return Err(format!(
            "no retry condition given: list one or more of {}, or HTTP status codes, separated by commas",
            RETRY_ON_TOKENS.join(", ")
        ));
    }
    for token in s.split(',').map(str::trim) {
        let flag = match token {
            "5xx" => &mut out.five_xx,
            "gateway-error" => &mut out.gateway_error,
            "reset" => &mut out.reset,
            "connect-failure" => &mut out.connect_failure,
            "refused-stream" => &mut out.refused_stream,
            "retriable-4xx" => &mut out.retriable_4xx,
            "retriable-status-codes" => continue,
            "cancelled" => &mut out.grpc_cancelled,
            "deadline-exceeded" => &mut out.grpc_deadline_exceeded,
            "internal" => &mut out.grpc_internal,
            "resource-exhausted" => &mut out.grpc_resource_exhausted,
            "unavailable" => &mut out.grpc_unavailable,
            _ if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) => {
                match token.parse::<u16>() {
                    Ok(code) if (100..=599).contains(&code) => {
                        if let Err(at) = out.status_codes.binary_search(&code) {
                            out.status_codes.insert(at, code);
                        }
                        continue;
                    }
                    _ => {
                        return Err(format!(
                            "retry condition {token:?} is not an HTTP status code (100 to 599)"
                        ));
                    }
                }
            }
            "" => {
                return Err(format!(
                    "empty retry condition in {s:?}: remove the extra comma"
                ));
            }
            _ => {
                return Err(format!(
                    "unknown retry condition {token:?}: supported are {}, and HTTP status codes such as 503",
                    RETRY_ON_TOKENS.join(", ")
                ));
            }
        };
        *flag = true;
    }
    Ok(out)
}

/// gRPC status codes by their canonical names, as Istio's fault `grpcStatus`
/// takes them (case-sensitive).
pub const GRPC_CODES: [(&str, u32); 17] = [
    ("OK", 0),
    ("CANCELLED", 1),
    ("UNKNOWN", 2),
    ("INVALID_ARGUMENT", 3),
    ("DEADLINE_EXCEEDED", 4),
    ("NOT_FOUND", 5),
    ("ALREADY_EXISTS", 6),
    ("PERMISSION_DENIED", 7),
    ("RESOURCE_EXHAUSTED", 8),
    ("FAILED_PRECONDITION", 9),
    ("ABORTED", 10),
    ("OUT_OF_RANGE", 11),
    ("UNIMPLEMENTED", 12),
    ("INTERNAL", 13),
    ("UNAVAILABLE", 14),
    ("DATA_LOSS", 15),
    ("UNAUTHENTICATED", 16),
];

/// The numeric gRPC status for a code name (`"UNAVAILABLE"` -> 14).
pub fn grpc_code(name: &str) -> Option<u32> {
    GRPC_CODES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, code)| *code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_sets_its_flag() {
        let all = parse_retry_on(&RETRY_ON_TOKENS.join(",")).unwrap();
        assert_eq!(
            all,
            RetryOn {
                five_xx: true,
                gateway_error: true,
                reset: true,
                connect_failure: true,
                refused_stream: true,
                retriable_4xx: true,
                status_codes: vec![],
                grpc_cancelled: true,
                grpc_deadline_exceeded: true,
                grpc_internal: true,
                grpc_resource_exhausted: true,
                grpc_unavailable: true,
            }
        );
    }

    #[test]
    fn status_codes_are_collected_sorted_and_once() {
        let r = parse_retry_on(" 5xx , 503,retriable-status-codes, 429,503 ").unwrap();
        assert!(r.five_xx);
        assert_eq!(r.status_codes, [429, 503]);
        assert!(!r.reset);
        assert_eq!(
            parse_retry_on("retriable-status-codes").unwrap(),
            RetryOn::default()
        );
        assert_eq!(parse_retry_on("100,599").unwrap().status_codes, [100, 599]);
    }

    #[test]
    fn istio_default_is_its_own_string() {
        assert_eq!(
            parse_retry_on(
                "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes,503"
            )
            .unwrap(),
            RetryOn::istio_default()
        );
    }

    #[test]
    fn bad_conditions_are_named() {
        let cases = [
            (
                "5xx,retriable-headers",
                "unknown retry condition \"retriable-headers\": supported are 5xx, gateway-error,",
            ),
            ("5XX", "unknown retry condition \"5XX\""),
            (
                "99",
                "retry condition \"99\" is not an HTTP status code (100 to 599)",
            ),
            ("600", "\"600\" is not an HTTP status code"),
            ("70000", "\"70000\" is not an HTTP status code"),
            ("+503", "unknown retry condition \"+503\""),
            ("5xx,,reset", "empty retry condition in \"5xx,,reset\""),
            ("5xx,", "empty retry condition"),
            ("", "no retry condition given"),
            ("  ", "no retry condition given"),
        ];
        for (input, want) in cases {
            let got = parse_retry_on(input).unwrap_err();
            assert!(got.contains(want), "{input:?}: {got}");
        }
    }

    #[test]
    fn grpc_codes_by_name() {
        assert_eq!(grpc_code("OK"), Some(0));
        assert_eq!(grpc_code("UNAVAILABLE"), Some(14));
        assert_eq!(grpc_code("UNAUTHENTICATED"), Some(16));
        assert_eq!(grpc_code("unavailable"), None);
        assert_eq!(grpc_code("14"), None);
        let codes: Vec<u32> = GRPC_CODES.iter().map(|c| c.1).collect();
        assert_eq!(codes, (0..17).collect::<Vec<_>>());
    }
}
