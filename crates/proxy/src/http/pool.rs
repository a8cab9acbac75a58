//! Upstream connections, per worker: HTTP/1.1 keep-alive connections reused
//! one request at a time, and one multiplexed HTTP/2 connection per endpoint.
//!
//! Our own pool rather than hyper-util's client because the proxy must choose
//! the endpoint (the balancer does) while sending the service's authority,
//! and it needs per-cluster settings and to know whether a failed request
//! was ever written (hyper's `try_send_request` hands back a request it
//! never started), which decides whether it can be retried safely.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::reason::ResetKind;
use super::{Body, ProxyError};
use crate::resilience::breaker::{Breaker, Permit, Slot};
use crate::tls::CredentialsRx;
use crate::tls::origination::{Origination, UpstreamIo};

/// An idle HTTP/1.1 connection.
#[derive(Debug)]
struct IdleH1 {
    since: Instant,
    /// This connection's cluster's idle timeout.
    idle_timeout: Duration,
    tx: http1::SendRequest<Body>,
    /// Requests it has carried, for `maxRequestsPerConnection`.
    served: u32,
}

/// The endpoint's HTTP/2 connection; the async lock makes concurrent first
/// requests share one handshake instead of each opening a connection.
type H2Slot = Arc<tokio::sync::Mutex<Option<H2Conn>>>;

#[derive(Debug, Clone)]
struct H2Conn {
    tx: http2::SendRequest<Body>,
    /// Streams opened on it, for `maxRequestsPerConnection`.
    streams: Arc<AtomicU32>,
}

/// Connections are pooled per endpoint and per TLS setting, so plaintext
/// and TLS connections (or two TLS settings) are never mixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PoolKey {
    addr: SocketAddr,
    /// 0: plaintext; else [`Origination::key`].
    tls: u64,
}

impl PoolKey {
    fn new(addr: SocketAddr, tls: Option<&Origination>) -> Self {
        PoolKey {
            addr,
            tls: tls.map_or(0, |t| t.key),
        }
    }
}

/// Connections to all endpoints, owned by one worker.
#[derive(Debug)]
pub struct Pool {
    max_idle_per_endpoint: usize,
    h1_idle: Mutex<HashMap<PoolKey, Vec<IdleH1>>>,
    h2: Mutex<HashMap<PoolKey, H2Slot>>,
    /// The workload certificate, for ISTIO_MUTUAL origination.
    credentials: Option<CredentialsRx>,
    /// Signalled when an HTTP/1.1 connection comes back idle, for requests
    /// waiting at the `maxConnections` limit.
    returned: tokio::sync::Notify,
}

/// How often a request waiting at the `maxConnections` limit looks again.
const PENDING_POLL: Duration = Duration::from_millis(10);

/// How the proxy connects to one cluster's endpoints and keeps the
/// connections: from `DestinationRule.trafficPolicy.connectionPool`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    /// Idle keep-alive connections are closed after this long. The default
    /// is below common upstream keep-alive timeouts (Node.js closes at 5 s),
    /// so the proxy closes first instead of racing the upstream's close.
    pub idle_timeout: Duration,
    /// A connection is retired after this many requests (None: no limit).
    pub max_requests_per_connection: Option<u32>,
    pub keepalive: Option<TcpKeepalive>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(4),
            max_requests_per_connection: None,
            keepalive: None,
        }
    }
}

/// TCP keepalive probes on upstream connections (unset parts: the OS's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TcpKeepalive {
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
    pub probes: Option<u32>,
}

impl Pool {
    pub fn new(max_idle_per_endpoint: usize, credentials: Option<CredentialsRx>) -> Arc<Self> {
        Arc::new(Pool {
            max_idle_per_endpoint,
            credentials,
            h1_idle: Mutex::default(),
            h2: Mutex::default(),
            returned: tokio::sync::Notify::new(),
        })
    }

    /// Close idle connections past their time. Run periodically by the worker.
    pub fn sweep(&self) {
        let now = Instant::now();
        if let Ok(mut idle) = self.h1_idle.lock() {
            idle.retain(|_, conns| {
                conns.retain(|c| now - c.since < c.idle_timeout && !c.tx.is_closed());
                !conns.is_empty()
            });
        }
        if let Ok(mut h2) = self.h2.lock() {
            h2.retain(|_, slot| match slot.try_lock() {
                Ok(guard) => guard.as_ref().is_some_and(|c| !c.tx.is_closed()),
                Err(_) => true,
            });
        }
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        tls: Option<&Origination>,
        settings: &UpstreamSettings,
    ) -> Result<TokioIo<UpstreamIo>, ProxyError> {
        let timeout = settings.connect_timeout;
        let started = Instant::now();
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ProxyError::ConnectTimeout { addr, timeout })?
            .map_err(|source| ProxyError::ConnectFailed { addr, source })?;
        // Latency matters more than packet count on these small requests.
        let _ = stream.set_nodelay(true);
        if let Some(k) = settings.keepalive {
            let mut ka = socket2::TcpKeepalive::new();
            if let Some(t) = k.time {
                ka = ka.with_time(t);
            }
            if let Some(i) = k.interval {
                ka = ka.with_interval(i);
            }
            if let Some(p) = k.probes {
                ka = ka.with_retries(p);
            }
            if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&ka) {
                tracing::debug!(%addr, error = %e, "could not set TCP keepalive");
            }
        }
        // The handshake counts against the connect timeout: to the caller
        // both are "could not get a connection".
        let left = timeout.saturating_sub(started.elapsed());
        let io = tokio::time::timeout(
            left,
            UpstreamIo::secure(addr, stream, tls, self.credentials.as_ref()),
        )
        .await
        .map_err(|_| ProxyError::ConnectTimeout { addr, timeout })??;
        Ok(TokioIo::new(io))
    }

    /// Send over HTTP/1.1. The request must already be in origin form with a Host header.
    pub async fn send_h1(
        self: &Arc<Self>,
        addr: SocketAddr,
        tls: Option<&Origination>,
        settings: &UpstreamSettings,
        breaker: &Arc<Breaker>,
        req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let key = PoolKey::new(addr, tls);
        let (mut tx, served, reused) = self.h1_connection(key, tls, settings, breaker).await?;
        let resp = tx.try_send_request(req).await.map_err(|e| {
            // hyper hands the request back when it never started writing
            // it. A reused connection that ends with no response at all was
            // most likely closed idle by the upstream as we wrote: we see
            // either its FIN (an incomplete message) or, when our request
            // was still unread in its socket as it closed, the RST its
            // kernel sends then.
            let kind = if e.message().is_some() {
                ResetKind::NotSent
            } else if reused && (e.error().is_incomplete_message() || closed_by_peer(e.error())) {
                ResetKind::ClosedIdle
            } else {
                ResetKind::Reset
            };
            reset(addr, e.error(), kind)
        })?;
        let served = served + 1;
        let upgraded = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        let retire = settings
            .max_requests_per_connection
            .is_some_and(|max| served >= max);
        let idle_timeout = settings.idle_timeout;
        Ok(resp.map(|body| {
            let giveback = (!upgraded && !retire).then(|| GiveBack {
                pool: self.clone(),
                key,
                tx,
                served,
                idle_timeout,
            });
            Body::Pooled(PooledBody {
                inner: body,
                giveback,
            })
        }))
    }

    /// An idle connection, else a new one if `maxConnections` allows, else
    /// wait (as a pending request, `http1MaxPendingRequests`) for either,
    /// at most the connect timeout.
    async fn h1_connection(
        &self,
        key: PoolKey,
        tls: Option<&Origination>,
        settings: &UpstreamSettings,
        breaker: &Arc<Breaker>,
    ) -> Result<(http1::SendRequest<Body>, u32, bool), ProxyError> {
        let addr = key.addr;
        let give_up = Instant::now() + settings.connect_timeout;
        let mut _pending: Option<Permit> = None;
        loop {
            if let Some((tx, served)) = self.take_idle_h1(key).await {
                return Ok((tx, served, true));
            }
            let overflow = match breaker.try_acquire(Slot::Connection) {
                Ok(slot) => {
                    let io = self.connect(addr, tls, settings).await?;
                    let (tx, conn) = http1::Builder::new()
                        .handshake(io)
                        .await
                        .map_err(|e| reset(addr, &e, ResetKind::NotSent))?;
                    tokio::spawn(async move {
                        // The slot is the connection's for as long as it lives.
                        let _slot = slot;
                        if let Err(e) = conn.with_upgrades().await {
                            tracing::debug!(%addr, error = %e, "upstream HTTP/1.1 connection ended");
                        }
                    });
                    return Ok((tx, 0, false));
                }
                Err(o) => o,
            };
            if _pending.is_none() {
                _pending = Some(breaker.try_acquire(Slot::Pending).map_err(|limit| {
                    ProxyError::Overflow {
                        cluster: String::new(),
                        limit,
                    }
                })?);
            }
            let now = Instant::now();
            if now >= give_up {
                return Err(ProxyError::Overflow {
                    cluster: String::new(),
                    limit: overflow,
                });
            }
            // A connection coming back to this worker's pool wakes us; a slot
            // freed by another worker or a closed connection is seen by
            // polling, which is fine for a path that only runs at the limit.
            let wait = (give_up - now).min(PENDING_POLL);
            tokio::select! {
                _ = self.returned.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn take_idle_h1(&self, key: PoolKey) -> Option<(http1::SendRequest<Body>, u32)> {
        loop {
            let mut c = self.h1_idle.lock().ok()?.get_mut(&key)?.pop()?;
            if c.since.elapsed() >= c.idle_timeout || c.tx.is_closed() {
                continue;
            }
            // Ready at once unless the previous response is still being read
            // by hyper's dispatcher; an error means the upstream closed it, and
            // this request was never written to it, so another is safe to use.
            if c.tx.ready().await.is_ok() {
                return Some((c.tx, c.served));
            }
        }
    }

    fn give_back_h1(&self, g: GiveBack) {
        if g.tx.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.h1_idle.lock() {
            let conns = idle.entry(g.key).or_default();
            if conns.len() < self.max_idle_per_endpoint {
                conns.push(IdleH1 {
                    since: Instant::now(),
                    idle_timeout: g.idle_timeout,
                    tx: g.tx,
                    served: g.served,
                });
            }
        }
        self.returned.notify_waiters();
    }

    /// Send over HTTP/2 (prior knowledge). The request URI carries the authority.
    /// HTTP/2 connections are not counted against `maxConnections`: each
    /// worker keeps one multiplexed connection per endpoint, and
    /// `http2MaxRequests` bounds the load on it.
    pub async fn send_h2(
        &self,
        addr: SocketAddr,
        tls: Option<&Origination>,
        settings: &UpstreamSettings,
        _breaker: &Arc<Breaker>,
        req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let slot = {
            // A panic elsewhere cannot leave the map half-updated: use it as is.
            let mut h2 = self
                .h2
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            h2.entry(PoolKey::new(addr, tls)).or_default().clone()
        };
        let conn = {
            let mut guard = slot.lock().await;
            let usable = guard.as_ref().filter(|c| {
                !c.tx.is_closed()
                    && settings
                        .max_requests_per_connection
                        .is_none_or(|max| c.streams.load(Ordering::Relaxed) < max)
            });
            match usable {
                Some(c) => c.clone(),
                None => {
                    // A retired connection finishes its open streams and
                    // closes when its last handle is gone.
                    let io = self.connect(addr, tls, settings).await?;
                    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .keep_alive_interval(Duration::from_secs(30))
                        .handshake(io)
                        .await
                        .map_err(|e| reset(addr, &e, ResetKind::NotSent))?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
                        }
                    });
                    let c = H2Conn {
                        tx,
                        streams: Arc::default(),
                    };
                    *guard = Some(c.clone());
                    c
                }
            }
        };
        let mut tx = conn.tx;
        conn.streams.fetch_add(1, Ordering::Relaxed);
        tx.ready()
            .await
            .map_err(|e| reset(addr, &e, ResetKind::NotSent))?;
        let resp = tx.try_send_request(req).await.map_err(|e| {
            let kind = if e.message().is_some() {
                ResetKind::NotSent
            } else if h2_reason(e.error()) == Some(h2::Reason::REFUSED_STREAM) {
                ResetKind::Refused
            } else {
                ResetKind::Reset
            };
            reset(addr, e.error(), kind)
        })?;
        Ok(resp.map(Body::Incoming))
    }
}

/// Is this hyper error the peer's RST (or a write after it closed)?
fn closed_by_peer(e: &hyper::Error) -> bool {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
            );
        }
        src = s.source();
    }
    false
}

/// The HTTP/2 error code behind a hyper error, if the peer sent one.
fn h2_reason(e: &hyper::Error) -> Option<h2::Reason> {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(h2e) = s.downcast_ref::<h2::Error>() {
            return h2e.reason();
        }
        src = s.source();
    }
    None
}

fn reset(addr: SocketAddr, e: &hyper::Error, kind: ResetKind) -> ProxyError {
    let mut detail = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    ProxyError::UpstreamReset { addr, detail, kind }
}

#[derive(Debug)]
struct GiveBack {
    pool: Arc<Pool>,
    key: PoolKey,
    tx: http1::SendRequest<Body>,
    served: u32,
    idle_timeout: Duration,
}

/// An HTTP/1.1 response body; when it has been read to the end its
/// connection goes back to the pool for the next request.
#[derive(Debug)]
pub struct PooledBody {
    inner: Incoming,
    giveback: Option<GiveBack>,
}

impl PooledBody {
    fn finish(&mut self) {
        if let Some(g) = self.giveback.take() {
            let pool = g.pool.clone();
            pool.give_back_h1(g);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => this.giveback = None,
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body nobody read (HEAD, 204) is complete already; anything else
        // dropped half-read leaves the connection unusable, so it closes.
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}
