//! Who is on the other end of an inbound connection: its address and, over
//! mTLS, its verified SPIFFE ID. Made once per connection and handed to
//! the HTTP and TCP inbound paths, authorization and the audit log: the one
//! place to read a caller's identity from.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;

use crate::tls::SpiffeId;

/// Envoy's header for the verified client certificate, set by inbound.
pub const XFCC: &str = "x-forwarded-client-cert";

#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// The peer's SPIFFE ID, from a certificate verified against the mesh
    /// roots, as the text `source.principal` authorization matches (made
    /// once per connection, not per request). None for plaintext peers.
    pub principal: Option<Arc<str>>,
    /// `x-forwarded-client-cert` for requests on this connection, made once.
    xfcc: Option<HeaderValue>,
}

impl PeerInfo {
    pub fn plaintext(addr: SocketAddr) -> PeerInfo {
        PeerInfo {
            addr,
            principal: None,
            xfcc: None,
        }
    }

    /// A peer verified over mTLS; `local` is this proxy's own SPIFFE ID.
    pub fn mtls(addr: SocketAddr, identity: Option<SpiffeId>, local: Option<&str>) -> PeerInfo {
        let principal: Option<Arc<str>> = identity.as_ref().map(|id| Arc::from(id.to_string()));
        let xfcc = principal
            .as_deref()
            .and_then(|id| HeaderValue::try_from(xfcc_value(local, id)).ok());
        PeerInfo {
            addr,
            principal,
            xfcc,
        }
    }

    /// Header hygiene: whatever the caller claimed goes; a verified peer
    /// gets the proxy's own statement of who it is.
    pub fn set_xfcc(&self, headers: &mut http::HeaderMap) {
        headers.remove(XFCC);
        if let Some(v) = &self.xfcc {
            headers.insert(XFCC, v.clone());
        }
    }
}

/// Envoy's format with `By` and `URI` (SANITIZE_SET with the URI detail):
/// `By=<this proxy's SPIFFE ID>;URI=<the peer's>`.
pub fn xfcc_value(local: Option<&str>, peer: &str) -> String {
    match local {
        Some(by) => format!("By={by};URI={peer}"),
        None => format!("URI={peer}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfcc_is_replaced() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut h = http::HeaderMap::new();
        h.insert(
            XFCC,
            HeaderValue::from_static("URI=spiffe://evil/ns/x/sa/admin"),
        );
        PeerInfo::plaintext(addr).set_xfcc(&mut h);
        assert!(h.get(XFCC).is_none(), "a plaintext peer's claim is removed");

        h.insert(
            XFCC,
            HeaderValue::from_static("URI=spiffe://evil/ns/x/sa/admin"),
        );
        let client = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/client").unwrap();
        let peer = PeerInfo::mtls(
            addr,
            Some(client),
            Some("spiffe://cluster.local/ns/default/sa/server"),
        );
        peer.set_xfcc(&mut h);
        assert_eq!(h.get_all(XFCC).iter().count(), 1);
        assert_eq!(
            h[XFCC],
            "By=spiffe://cluster.local/ns/default/sa/server;URI=spiffe://cluster.local/ns/default/sa/client"
        );
    }
}
