//! Accepting downstream connections and serving them: protocol detection,
//! then hyper's HTTP/1.1 (with upgrades) or HTTP/2 server, or opaque TCP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::detect::{Detected, detect};
use super::{inbound, outbound};
use crate::peer::PeerInfo;
use crate::telemetry::metrics::ConnectionGuard;
use crate::worker::Worker;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Outbound,
    /// Waits this long for a client's first bytes before treating the
    /// connection as a server-first protocol.
    Inbound {
        detect_timeout: Duration,
    },
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Outbound => "outbound",
            Side::Inbound { .. } => "inbound",
        }
    }
}

/// Largest request head accepted; larger gets 431 (HTTP/1.1) or a stream
/// error (HTTP/2). Envoy's default is 60 KiB.
const MAX_HEADER_BYTES: usize = 64 * 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new outbound connection may stay silent. (Inbound gives up much
/// sooner and treats silence as a server-first protocol.)
const FIRST_BYTES_TIMEOUT: Duration = HEADER_READ_TIMEOUT;

pub async fn accept_loop(
    listener: TcpListener,
    side: Side,
    worker: Arc<Worker>,
    shutdown: watch::Receiver<bool>,
) {
    let (active, total) = worker.metrics.listener(side.label());
    let mut stop = shutdown.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let guard = ConnectionGuard::new(&active, &total);
                let worker = worker.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(serve(stream, peer, side, worker, guard, shutdown));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, don't spin.
                tracing::warn!(listener = side.label(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    side: Side,
    worker: Arc<Worker>,
    guard: ConnectionGuard,
    mut shutdown: watch::Receiver<bool>,
) {
    let wait = match side {
        Side::Outbound => None,
        Side::Inbound { detect_timeout } => Some(detect_timeout),
    };
    // An outbound client must speak first; one that never does is closed
    // rather than holding a connection (and a drain) forever.
    let detected = match tokio::time::timeout(FIRST_BYTES_TIMEOUT, detect(&stream, wait)).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection failed before its first bytes");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "closing a connection that sent nothing");
            return;
        }
    };
    // The one place the peer's identity is taken. mTLS sets the principal
    // here from the verified certificate; until then every peer is plaintext.
    let peer_info = PeerInfo::plaintext(peer);
    let conn_worker = worker.clone();
    let conn_peer = peer_info.clone();
    let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let worker = worker.clone();
        let peer_info = peer_info.clone();
        req.extensions_mut().insert(guard.clone());
        async move {
            Ok::<_, Infallible>(match side {
                Side::Outbound => outbound::handle(worker, peer, req).await,
                Side::Inbound { .. } => inbound::handle(worker, peer_info, req).await,
            })
        }
    });
    let io = TokioIo::new(stream);
    match (detected, side) {
        (Detected::Http2, _) => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(MAX_HEADER_BYTES as u32)
                .serve_connection(io, svc);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP/2 connection ended with an error");
            }
        }
        (Detected::Opaque, Side::Inbound { .. }) => {
            let stream = io.into_inner();
            // Opaque traffic is authorized once, for the whole connection;
            // a denied one is closed before the app sees a byte.
            if !crate::authz::enforce::check_connection(&conn_worker, &conn_peer) {
                return;
            }
            crate::tcp::to_app(&conn_worker, stream).await;
        }
        // Outbound garbage goes to the HTTP/1 server too, which answers 400
        // and closes: there is no destination to send opaque bytes to.
        (Detected::Http1 | Detected::Opaque, _) => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                // The hard limit on the head; max_buf_size alone is only
                // checked while the head is incomplete, so a head that
                // arrives in a few large reads could pass it.
                .max_header_size(MAX_HEADER_BYTES)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(io, svc)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP/1 connection ended with an error");
            }
        }
    }
}
