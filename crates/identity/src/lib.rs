//! Workload identity for Trellis: who a workload is ([`SpiffeId`]), the
//! certificate authority that vouches for it ([`Authority`]), the roots
//! every proxy trusts ([`TrustBundle`]), and the bootstrap tokens a proxy
//! shows before it gets a certificate ([`TokenKey`]).
//!
//! Plain data and functions: no sockets, no global state. Time is passed
//! in, so every decision is table-tested. `trellis control` owns the I/O
//! (gRPC, HTTP API, SDS); see docs/identity.md.

pub mod bundle;
pub mod ca;
pub mod files;
pub mod proto;
pub mod spiffe;
pub mod token;

pub use bundle::{BundleError, Root, TrustBundle};
pub use ca::{Authority, CaError, Issued, SignError};
pub use spiffe::{SpiffeError, SpiffeId};
pub use token::{Claims, TokenError, TokenKey};

/// The data directory's subfolder holding the CA's files.
pub const CA_DIR: &str = "ca";
