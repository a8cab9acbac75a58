//! Turning a downstream request into an upstream one, and upgrades.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::pool::{Pool, UpstreamSettings};
use super::{Body, ProxyError};
use crate::cluster::UpstreamProtocol;
use crate::resilience::breaker::Breaker;
use crate::telemetry::metrics::ConnectionGuard;
use crate::tls::origination::Origination;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus
/// whatever the Connection header lists.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::TRANSFER_ENCODING,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TRAILER,
    ] {
        headers.remove(name);
    }
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// Is this an HTTP/1.1 protocol upgrade (WebSocket and friends)?
pub fn is_upgrade(req: &Request<hyper::body::Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Address the request to the upstream in the form its protocol wants:
/// HTTP/1.1 origin form with a Host header, HTTP/2 with the authority in the
/// URI. Reuses the parsed parts; the Host header is only rewritten when it
/// differs (absolute-form requests, rewrites, HTTP/2 callers).
pub fn set_target<B>(
    req: &mut Request<B>,
    protocol: UpstreamProtocol,
    authority: Authority,
    path_and_query: PathAndQuery,
) -> Result<(), ProxyError> {
    match protocol {
        UpstreamProtocol::Http2 => {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(authority);
            parts.path_and_query = Some(path_and_query);
            *req.uri_mut() = Uri::from_parts(parts)
                .map_err(|e| ProxyError::BadRequest(format!("cannot build upstream URI: {e}")))?;
            *req.version_mut() = Version::HTTP_2;
            req.headers_mut().remove(header::HOST);
        }
        UpstreamProtocol::Http1 | UpstreamProtocol::Opaque => {
            *req.uri_mut() = Uri::from(path_and_query);
            *req.version_mut() = Version::HTTP_11;
            let host_matches = req
                .headers()
                .get(header::HOST)
                .is_some_and(|h| h.as_bytes() == authority.as_str().as_bytes());
            if !host_matches {
                let host = HeaderValue::from_str(authority.as_str())
                    .map_err(|e| ProxyError::BadRequest(format!("invalid authority: {e}")))?;
                req.headers_mut().insert(header::HOST, host);
            }
        }
    }
    Ok(())
}

pub async fn send(
    pool: &Arc<Pool>,
    protocol: UpstreamProtocol,
    addr: SocketAddr,
    tls: Option<&Origination>,
    settings: &UpstreamSettings,
    breaker: &Arc<Breaker>,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    match protocol {
        UpstreamProtocol::Http2 => pool.send_h2(addr, tls, settings, breaker, req).await,
        UpstreamProtocol::Http1 | UpstreamProtocol::Opaque => {
            pool.send_h1(addr, tls, settings, breaker, req).await
        }
    }
}

/// After a 101 on both sides, join the two upgraded connections. `connection`
/// keeps the downstream connection counted (and drained) while they run.
pub fn splice_upgrade(
    downstream: OnUpgrade,
    upstream: OnUpgrade,
    bytes: prometheus_client::metrics::counter::Counter,
    connection: Option<ConnectionGuard>,
) {
    tokio::spawn(async move {
        let _connection = connection;
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut down = TokioIo::new(down);
        let mut up = TokioIo::new(up);
        match tokio::io::copy_bidirectional(&mut down, &mut up).await {
            Ok((a, b)) => {
                bytes.inc_by(a + b);
            }
            Err(e) => tracing::debug!(error = %e, "upgraded connection ended"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-app"], "kept");

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }
}
