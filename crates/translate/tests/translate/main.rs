//! trellis-translate through its public API: YAML config in, Envoy
//! resources out, fields asserted; and a stock Envoy accepting them all
//! (`envoy_validate`).

mod clusters;
mod endpoints;
mod envoy_validate;
mod listeners;
mod mtls;
mod routes;
mod support;
mod views;
