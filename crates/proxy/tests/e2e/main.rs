//! End-to-end tests of the real `trellis-proxy` binary over loopback: Istio
//! YAML in a temp folder, the proxy started on it with port 0 listeners, real
//! upstream servers from `trellis-testing`, and assertions on what arrives
//! where. One module per feature; helpers in `support`.

mod support;

mod admin;
mod authz;
mod authz_mtls;
mod bad_input;
mod balance;
mod circuit_breaking;
mod errors;
mod faults;
mod grpc;
mod h2c;
mod headers;
mod inbound;
mod invalid_config;
mod matching;
mod mirror;
mod mtls;
mod names;
mod outlier;
mod rate_limit;
mod reload;
mod resilience_config;
mod retries;
mod retry_budget;
mod rewrite;
mod shutdown;
mod split;
mod tcp;
mod timeouts;
mod websocket;
mod xds;
