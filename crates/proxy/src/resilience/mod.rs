//! Resilience decisions: retries, retry budgets, circuit breakers, outlier
//! detection, fault injection, local rate limits and gRPC deadlines.
//!
//! Every file here is a pure decision over plain data: no sockets, no tokio,
//! no clock reads and no random draws. Time comes in as `Instant` arguments
//! and randomness as numbers, so each rule is table-tested with simulated
//! time. The I/O that acts on a decision (sleeping, replaying a request,
//! writing a local reply, recording metrics) lives in `http/`.
//!
//! | file | decides |
//! |---|---|
//! | `retry.rs` | whether an attempt's outcome may be retried under a route's `retry_on`, and the jittered backoff before it |
//! | `budget.rs` | whether a destination's retries still fit its retry budget (a share of its first tries plus a floor per second) |
//! | `breaker.rs` | whether a cluster may open one more connection, queue one more request, send one more request or retry (Istio `connectionPool` limits) |
//! | `fault.rs` | whether to delay and/or abort a request under a route's fault injection, from two random rolls |
//! | `rate_limit.rs` | whether a request gets a token from a local rate limit's token bucket (Envoy `local_ratelimit`) |
//! | `grpc_timeout.rs` | a gRPC request's deadline: parsing and writing `grpc-timeout`, and the effective timeout with the route's |
//! | `outlier.rs` | whether an endpoint is ejected after consecutive errors, for how long, and when it returns (Istio `outlierDetection`; the state lives on `balance::Endpoint`) |
//!
//! Shared state that workers update concurrently (budgets, breakers, buckets,
//! per-endpoint outlier counters) is atomics or one short `Mutex` per object,
//! never global: each cluster or route owns its own, built when config loads.

pub mod breaker;
pub mod budget;
pub mod fault;
pub mod grpc_timeout;
pub mod outlier;
pub mod rate_limit;
pub mod retry;
