//! Mutual TLS between sidecars: the workload's credentials and where they
//! come from, SPIFFE identities, and the rustls configs of both sides.

pub mod ca_source;
pub mod client;
pub mod credentials;
pub mod identity_dir;
pub mod mode;
pub mod origination;
pub mod server;
pub mod spiffe;

pub use credentials::{Credentials, CredentialsRx, CredentialsTx, provider};
pub use spiffe::SpiffeId;

#[cfg(test)]
mod tests;
