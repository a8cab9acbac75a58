//! Request ids and trace context: which headers cross every hop, and the
//! W3C `traceparent` each stage sends on (same trace, its own span).

use http::HeaderMap;
use rand::Rng;

/// Headers a stage copies from its request to its call to the next hop,
/// as Istio's documentation asks applications to do: the mesh can only
/// join spans into one trace if the app carries these across.
pub const PROPAGATED: &[&str] = &[
    "x-request-id",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
];

/// The trace context of one request as a stage sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub request_id: String,
    pub trace_id: String,
    /// `traceparent` for the call to the next hop: the same trace, a new
    /// span id (this stage's), sampled flag kept.
    pub outgoing_traceparent: String,
}

/// Reads `x-request-id` and `traceparent`; a missing or malformed one is
/// started here (the first stage, or a client that sent none).
pub fn context(headers: &HeaderMap, rng: &mut impl Rng) -> Context {
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map_or_else(|| hex(rng, 16), str::to_owned);
    let incoming = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    let (trace_id, flags) = incoming.unwrap_or_else(|| (hex(rng, 16), "01".to_string()));
    let span = hex(rng, 8);
    Context {
        outgoing_traceparent: format!("00-{trace_id}-{span}-{flags}"),
        request_id,
        trace_id,
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>` -> (trace id,
/// flags). All-zero ids are invalid (W3C Trace Context, section 3.2).
pub fn parse_traceparent(value: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let [version, trace, parent, flags] = parts.as_slice() else {
        return None;
    };
    let hex_of = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    (*version == "00"
        && hex_of(trace, 32)
        && nonzero(trace)
        && hex_of(parent, 16)
        && nonzero(parent)
        && hex_of(flags, 2))
    .then(|| (trace.to_string(), flags.to_string()))
}

/// `bytes` random bytes as lowercase hex, never all zero.
fn hex(rng: &mut impl Rng, bytes: usize) -> String {
    loop {
        let s: String = (0..bytes)
            .map(|_| format!("{:02x}", rng.random::<u8>()))
            .collect();
        if s.bytes().any(|b| b != b'0') {
            return s;
        }
    }
}
