//! One accepted connection of a `ChaosServer`: protocol detection (the h2c
//! preface or HTTP/1.1), then hyper's http2 or http1 server, and for
//! HTTP/1.1 the idle-close timer.
//!
//! Idle close: hyper's own timers do not fit (`header_read_timeout` answers
//! 408; a close must be silent, as when a real server's keep-alive timeout
//! fires). So the connection future is raced against an idle deadline:
//! a per-connection [`Activity`] (a `watch` channel) counts the requests in
//! progress; a [`Busy`] guard is taken when the service is called and
//! dropped with the response body (after its last frame) or with the
//! service future. Each time the count drops to zero a new random idle time
//! in `[min, max]` is drawn; if no request starts before it ends, the
//! connection future is dropped, which closes the socket with no response
//! and no `Connection: close`. The time before the first request counts as
//! idle too.

use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::State;
use super::handle::handle;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Requests in progress on one HTTP/1.1 connection, and when the count last
/// changed (`generation` tells idle periods apart).
#[derive(Clone, Copy)]
struct Load {
    busy: usize,
    since: Instant,
    generation: u64,
}

/// The request activity of one connection.
#[derive(Clone)]
pub(crate) struct Activity(Arc<watch::Sender<Load>>);

impl Activity {
    fn new() -> Activity {
        Activity(Arc::new(watch::Sender::new(Load {
            busy: 0,
            since: Instant::now(),
            generation: 0,
        })))
    }

    /// Marks a request in progress until the guard is dropped.
    pub(crate) fn busy(&self) -> Busy {
        self.change(1);
        Busy(self.clone())
    }

    fn change(&self, up: isize) {
        self.0.send_modify(|load| {
            load.busy = load.busy.saturating_add_signed(up);
            load.since = Instant::now();
            load.generation += 1;
        });
    }
}

/// A request in progress (see [`Activity::busy`]).
pub(crate) struct Busy(Activity);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.change(-1);
    }
}

/// Serves one accepted connection until it ends, is idle-closed, or the
/// server stops.
pub(crate) async fn serve(state: Arc<State>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // Before the first byte a connection is idle: the idle rule applies.
    let first_idle = state.behavior.borrow().idle_close.map(random_in);
    let detected = match first_idle {
        Some(idle) => match tokio::time::timeout(idle, detect(&mut stream)).await {
            Ok(detected) => detected,
            Err(_) => {
                state.count_idle_close();
                return;
            }
        },
        None => detect(&mut stream).await,
    };
    let Ok(Some((is_h2, prefix))) = detected else {
        return;
    };
    let io = TokioIo::new(Prefixed { prefix, stream });
    if is_h2 {
        let executor = state.tasks.clone();
        let service = service_fn(move |req| handle(state.clone(), None, req));
        let _ = http2::Builder::new(executor)
            .serve_connection(io, service)
            .await;
    } else {
        serve_h1(state, io).await;
    }
}

async fn serve_h1(state: Arc<State>, io: TokioIo<Prefixed>) {
    let activity = Activity::new();
    let service_state = state.clone();
    let service_activity = activity.clone();
    let service =
        service_fn(move |req| handle(service_state.clone(), Some(service_activity.busy()), req));
    let mut conn = pin!(http1::Builder::new().serve_connection(io, service));
    let mut load_rx = activity.0.subscribe();
    let mut behavior_rx = state.behavior.subscribe();
    // The idle deadline drawn for the current idle period and range.
    let mut drawn: Option<(u64, (Duration, Duration), Instant)> = None;
    loop {
        let load = *load_rx.borrow_and_update();
        let range = behavior_rx.borrow_and_update().idle_close;
        let deadline = match range {
            Some(range) if load.busy == 0 => match drawn {
                Some((generation, r, at)) if generation == load.generation && r == range => {
                    Some(at)
                }
                _ => {
                    let at = load.since + random_in(range);
                    drawn = Some((load.generation, range, at));
                    Some(at)
                }
            },
            _ => None,
        };
        let idle = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = conn.as_mut() => return,
            () = idle => {
                // Dropping the connection future closes the socket silently.
                state.count_idle_close();
                return;
            }
            _ = load_rx.changed() => {}
            _ = behavior_rx.changed() => {}
        }
    }
}

fn random_in((min, max): (Duration, Duration)) -> Duration {
    if min >= max {
        min
    } else {
        rand::rng().random_range(min..=max)
    }
}

/// Reads until the first bytes tell HTTP/2 (the preface) from HTTP/1.1.
/// `Ok(None)`: closed before any byte.
async fn detect(stream: &mut TcpStream) -> io::Result<Option<(bool, Bytes)>> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.len() >= H2_PREFACE.len() {
            return Ok(Some((buf.starts_with(H2_PREFACE), buf.freeze())));
        }
        if !H2_PREFACE.starts_with(&buf) {
            return Ok(Some((false, buf.freeze())));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            // Closed: nothing to serve (or a torn request hyper would reject).
            return Ok(None);
        }
    }
}

/// A stream whose first reads replay the bytes taken by detection.
struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
