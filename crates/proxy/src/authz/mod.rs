//! Istio AuthorizationPolicy in the data plane: the policies that apply to
//! this workload compiled to plain data (`policy`), the pure decision
//! (`decide`), and the audit log of denials and AUDIT matches (`audit`).
//! Enforcement is in the inbound path: per request for HTTP
//! (`http/inbound.rs`), per connection for opaque TCP (`http/server.rs`).
//! See docs/authorization.md.

pub mod audit;
pub mod decide;
pub mod enforce;
pub mod policy;

#[cfg(test)]
mod tests;

pub use decide::{Cause, Decision, HttpRequest, Matched, Request, decide};
pub use policy::Policies;
