//! Upstream connections, per worker: HTTP/1.1 keep-alive connections reused
//! one request at a time, and one multiplexed HTTP/2 connection per endpoint.
//!
//! Our own pool rather than hyper-util's client because the proxy must choose
//! the endpoint (the balancer does) while sending the service's authority, and
//! later issues need per-cluster limits, idle timeouts and "never written"
//! retries, which need the connection in hand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
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

use super::{Body, ProxyError};

/// An idle HTTP/1.1 connection and when it became idle.
type IdleH1 = (Instant, http1::SendRequest<Body>);
/// The endpoint's HTTP/2 connection; the async lock makes concurrent first
/// requests share one handshake instead of each opening a connection.
type H2Slot = Arc<tokio::sync::Mutex<Option<http2::SendRequest<Body>>>>;

/// Connections to all endpoints, owned by one worker.
#[derive(Debug)]
pub struct Pool {
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle_per_endpoint: usize,
    h1_idle: Mutex<HashMap<SocketAddr, Vec<IdleH1>>>,
    h2: Mutex<HashMap<SocketAddr, H2Slot>>,
}

#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    /// Idle keep-alive connections are closed after this long, before common
    /// upstream keep-alive timeouts (Node.js closes at 5 s) can race a request.
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(4),
            max_idle_per_endpoint: 256,
        }
    }
}

impl Pool {
    pub fn new(s: PoolSettings) -> Arc<Self> {
        Arc::new(Pool {
            connect_timeout: s.connect_timeout,
            idle_timeout: s.idle_timeout,
            max_idle_per_endpoint: s.max_idle_per_endpoint,
            h1_idle: Mutex::default(),
            h2: Mutex::default(),
        })
    }

    /// Close idle connections past their time. Run periodically by the worker.
    pub fn sweep(&self) {
        let now = Instant::now();
        if let Ok(mut idle) = self.h1_idle.lock() {
            idle.retain(|_, conns| {
                conns.retain(|(since, tx)| now - *since < self.idle_timeout && !tx.is_closed());
                !conns.is_empty()
            });
        }
        if let Ok(mut h2) = self.h2.lock() {
            h2.retain(|_, slot| match slot.try_lock() {
                Ok(guard) => guard.as_ref().is_some_and(|tx| !tx.is_closed()),
                Err(_) => true,
            });
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TokioIo<TcpStream>, ProxyError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ProxyError::ConnectTimeout {
                addr,
                timeout: self.connect_timeout,
            })?
            .map_err(|source| ProxyError::ConnectFailed { addr, source })?;
        // Latency matters more than packet count on these small requests.
        let _ = stream.set_nodelay(true);
        Ok(TokioIo::new(stream))
    }

    /// Send over HTTP/1.1. The request must already be in origin form with a Host header.
    pub async fn send_h1(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let mut tx = match self.take_idle_h1(addr).await {
            Some(tx) => tx,
            None => {
                let io = self.connect(addr).await?;
                let (tx, conn) = http1::Builder::new()
                    .handshake(io)
                    .await
                    .map_err(|e| reset(addr, &e))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(%addr, error = %e, "upstream HTTP/1.1 connection ended");
                    }
                });
                tx
            }
        };
        let resp = tx.send_request(req).await.map_err(|e| reset(addr, &e))?;
        let upgraded = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        Ok(resp.map(|body| {
            let giveback = (!upgraded).then(|| GiveBack {
                pool: self.clone(),
                addr,
                tx,
            });
            Body::Pooled(PooledBody {
                inner: body,
                giveback,
            })
        }))
    }

    async fn take_idle_h1(&self, addr: SocketAddr) -> Option<http1::SendRequest<Body>> {
        loop {
            let (since, mut tx) = self.h1_idle.lock().ok()?.get_mut(&addr)?.pop()?;
            if since.elapsed() >= self.idle_timeout || tx.is_closed() {
                continue;
            }
            // Ready at once unless the previous response is still being read
            // by hyper's dispatcher; an error means the upstream closed it, and
            // this request was never written to it, so another is safe to use.
            if tx.ready().await.is_ok() {
                return Some(tx);
            }
        }
    }

    fn give_back_h1(&self, addr: SocketAddr, tx: http1::SendRequest<Body>) {
        if tx.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.h1_idle.lock() {
            let conns = idle.entry(addr).or_default();
            if conns.len() < self.max_idle_per_endpoint {
                conns.push((Instant::now(), tx));
            }
        }
    }

    /// Send over HTTP/2 (prior knowledge). The request URI carries the authority.
    pub async fn send_h2(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let slot = {
            // A panic elsewhere cannot leave the map half-updated: use it as is.
            let mut h2 = self
                .h2
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            h2.entry(addr).or_default().clone()
        };
        let mut tx = {
            let mut guard = slot.lock().await;
            match guard.as_ref() {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let io = self.connect(addr).await?;
                    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .keep_alive_interval(Duration::from_secs(30))
                        .handshake(io)
                        .await
                        .map_err(|e| reset(addr, &e))?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
                        }
                    });
                    *guard = Some(tx.clone());
                    tx
                }
            }
        };
        tx.ready().await.map_err(|e| reset(addr, &e))?;
        let resp = tx.send_request(req).await.map_err(|e| reset(addr, &e))?;
        Ok(resp.map(Body::Incoming))
    }
}

fn reset(addr: SocketAddr, e: &hyper::Error) -> ProxyError {
    let mut detail = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    ProxyError::UpstreamReset { addr, detail }
}

#[derive(Debug)]
struct GiveBack {
    pool: Arc<Pool>,
    addr: SocketAddr,
    tx: http1::SendRequest<Body>,
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
            g.pool.give_back_h1(g.addr, g.tx);
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
