//! Accepting downstream connections and serving them: protocol detection,
//! then hyper's HTTP/1.1 (with upgrades) or HTTP/2 server, or opaque TCP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::detect::{Detected, detect, detect_read};
use super::rewind::Rewind;
use super::{inbound, outbound};
use crate::peer::PeerInfo;
use crate::telemetry::metrics::ConnectionGuard;
use crate::tls::SpiffeId;
use crate::tls::mode::{self, Admit, InboundMode};
use crate::tls::server::{ALPN_H2, ALPN_HTTP11};
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

/// How long an inbound connection under STRICT may take to send its
/// ClientHello, and the handshake to finish.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    side: Side,
    worker: Arc<Worker>,
    guard: ConnectionGuard,
    shutdown: watch::Receiver<bool>,
) {
    let Side::Inbound { detect_timeout } = side else {
        // An outbound client must speak first; one that never does is closed
        // rather than holding a connection (and a drain) forever.
        let detected = match tokio::time::timeout(FIRST_BYTES_TIMEOUT, detect(&stream, None)).await
        {
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
        let info = Arc::new(PeerInfo::plaintext(peer));
        return serve_io(stream, detected, side, info, worker, guard, shutdown).await;
    };
    let mode = {
        let config = worker.store.current.load();
        mode::inbound_mode(&config.peer_auth, worker.server_tls.is_some())
    };
    // A TLS client speaks at once; waiting longer under STRICT only keeps
    // a slow ClientHello from being taken for a server-first protocol.
    let wait = match mode {
        InboundMode::Strict => TLS_HANDSHAKE_TIMEOUT,
        _ => detect_timeout,
    };
    let detected = match detect(&stream, Some(wait)).await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection failed before its first bytes");
            return;
        }
    };
    let refuse = |reason: &'static str, detail: &dyn std::fmt::Display| {
        worker.metrics.inbound_refused(reason);
        tracing::debug!(%peer, reason, mode = ?mode, %detail, "inbound connection refused");
    };
    match mode::admit(mode, detected) {
        Admit::Refuse(reason) => {
            refuse(reason, &format_args!("first bytes look like {detected:?}"));
        }
        Admit::Plain => {
            worker.metrics.inbound_admitted("plaintext");
            let info = Arc::new(PeerInfo::plaintext(peer));
            serve_io(stream, detected, side, info, worker, guard, shutdown).await;
        }
        Admit::Tls => {
            let Some((acceptor, local)) = worker.server_tls.as_ref().and_then(|t| t.acceptor())
            else {
                refuse(mode::REFUSED_NO_CERTIFICATE, &"no usable certificate");
                return;
            };
            let tls =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return refuse(mode::REFUSED_HANDSHAKE, &e),
                    Err(_) => return refuse(mode::REFUSED_HANDSHAKE, &"handshake timed out"),
                };
            worker.metrics.inbound_admitted("mtls");
            serve_mtls(
                tls,
                peer,
                &local,
                detect_timeout,
                side,
                worker,
                guard,
                shutdown,
            )
            .await;
        }
    }
}

/// Serve a terminated mTLS connection: the verified peer's identity, and
/// the inner protocol from ALPN (or, without ALPN, from its first bytes).
#[allow(
    clippy::too_many_arguments,
    reason = "one call site; the connection's parts, passed down"
)]
async fn serve_mtls(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    local: &str,
    detect_timeout: Duration,
    side: Side,
    worker: Arc<Worker>,
    guard: ConnectionGuard,
    shutdown: watch::Receiver<bool>,
) {
    let conn = tls.get_ref().1;
    let identity = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| SpiffeId::from_cert(c).ok().flatten());
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let info = Arc::new(PeerInfo::mtls(peer, identity, Some(local)));
    tracing::trace!(%peer, identity = ?info.principal, "mTLS peer");
    match alpn.as_deref() {
        Some(ALPN_H2) => serve_io(tls, Detected::Http2, side, info, worker, guard, shutdown).await,
        Some(ALPN_HTTP11) => {
            serve_io(tls, Detected::Http1, side, info, worker, guard, shutdown).await;
        }
        // No ALPN: a tunnel, or a client that did not say. The inside is
        // detected like a plaintext connection.
        _ => {
            let mut tls = tls;
            let mut buf = Vec::new();
            let inner = match detect_read(&mut tls, &mut buf, detect_timeout).await {
                Ok(Detected::Tls) => Detected::Opaque,
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "mTLS connection failed before its first bytes");
                    return;
                }
            };
            let io = Rewind::new(buf.into(), tls);
            serve_io(io, inner, side, info, worker, guard, shutdown).await;
        }
    }
}

/// Serve a connection whose protocol is known, plaintext or inside TLS.
async fn serve_io<I>(
    stream: I,
    detected: Detected,
    side: Side,
    peer: Arc<PeerInfo>,
    worker: Arc<Worker>,
    guard: ConnectionGuard,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn_worker = worker.clone();
    let conn_peer = peer.clone();
    let addr = peer.addr;
    let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let worker = worker.clone();
        let peer = peer.clone();
        req.extensions_mut().insert(guard.clone());
        async move {
            Ok::<_, Infallible>(match side {
                Side::Outbound => outbound::handle(worker, peer.addr, req).await,
                Side::Inbound { .. } => inbound::handle(worker, peer, req).await,
            })
        }
    });
    let peer = addr;
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
        (Detected::Opaque | Detected::Tls, Side::Inbound { .. }) => {
            let stream = io.into_inner();
            // Opaque traffic is authorized once, for the whole connection;
            // a denied one is closed before the app sees a byte.
            if !crate::authz::enforce::check_connection(&conn_worker, &conn_peer) {
                return;
            }
            crate::tcp::to_app(&conn_worker, &conn_peer, stream).await;
        }
        // Outbound garbage goes to the HTTP/1 server too, which answers 400
        // and closes: there is no destination to send opaque bytes to.
        (Detected::Http1 | Detected::Opaque | Detected::Tls, _) => {
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
