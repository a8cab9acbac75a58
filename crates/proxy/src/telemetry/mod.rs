//! Metrics and logs. Handles are created when config is compiled, so the
//! request path only increments atomics: no label allocation per request.

pub mod logging;
pub mod metrics;
