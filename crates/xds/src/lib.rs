//! Trellis's xDS server: Envoy's aggregated discovery service (ADS) v3,
//! state of the world and delta, serving Envoy's own resource types to
//! trellis-proxy, stock Envoy and proxyless gRPC clients.
//!
//! - [`resource`]: [`Snapshot`] (resources by type URL and name, each with
//!   a content version) — what one proxy should hold.
//! - [`snapshots`]: the [`Snapshots`] trait the control plane implements
//!   (a snapshot per node, and a generation counter), and
//!   [`MemorySnapshots`] for tests.
//! - [`sotw`], [`delta`]: the protocol, one state machine per stream, plain
//!   data and functions (no I/O), table-tested.
//! - [`server`]: the ADS service ([`XdsServer`]), one task per stream,
//!   debounced generations, hooks for connect/disconnect/NACK, metrics;
//!   `framed`: the gRPC service, responses framed a chunk at a time
//!   (`chunked`) from the snapshot's shared maps.
//!
//! The behaviour is described in `docs/xds-server.md`.

mod chunked;
mod debounce;
pub mod delta;
mod framed;
pub mod metrics;
pub mod protocol;
pub mod resource;
pub mod server;
pub mod snapshots;
pub mod sotw;

#[cfg(test)]
mod testutil;

pub use envoy_types;

pub use delta::DeltaStream;
pub use metrics::{Mode, XdsMetrics};
pub use protocol::{Event, Nack, Output, ProtocolError, TypeStatus};
pub use resource::{Resource, Resources, Snapshot, TypeUrl, type_url};
pub use server::{
    Bearer, Connection, ConnectionStatus, NoHooks, XdsError, XdsHooks, XdsOptions, XdsServer,
    XdsServerBuilder,
};
pub use snapshots::{MemorySnapshots, Snapshots};
pub use sotw::SotwStream;
