//! Who is on the other end of a downstream connection: taken once when the
//! connection is accepted, and handed to everything that decides on the
//! source (authorization, the audit log).

use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// The peer's SPIFFE ID, from its verified mTLS certificate. None for a
    /// plaintext connection (the only kind until inbound mTLS lands: the
    /// TLS handshake is where this gets set).
    pub principal: Option<Arc<str>>,
}

impl PeerInfo {
    pub fn plaintext(addr: SocketAddr) -> Self {
        PeerInfo {
            addr,
            principal: None,
        }
    }
}
