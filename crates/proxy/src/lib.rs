//! trellis-proxy: the Trellis data plane. See ARCHITECTURE.md for the map.

pub mod admin;
pub mod authz;
pub mod balance;
pub mod cluster;
pub mod config;
pub mod http;
pub mod peer;
pub mod resilience;
pub mod route;
pub mod sidecar;
pub mod tcp;
pub mod telemetry;
pub mod tls;
pub mod worker;
pub mod xds;
