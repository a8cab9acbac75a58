//! A request body that can be sent more than once, for retries and mirrors.
//!
//! The first attempt streams the client's body through as it arrives and
//! keeps a copy of up to `limit` bytes. A later attempt (or a mirror) replays
//! the copy and then continues with whatever the client has not sent yet. A
//! body longer than `limit` stops being copied; from then on nothing can
//! replay it, and the caller gives up on retrying (`can_replay`). Only one
//! handle reads at a time: a retry starts after the previous attempt ended.
//!
//! Linkerd's `ReplayBody` works the same way; this one is smaller because
//! the proxy never reads two handles concurrently.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

/// Request bodies up to this size are kept for retries (Envoy's default
/// per-request retry buffer is 64 KiB too). Larger ones are not retried.
pub const DEFAULT_REPLAY_LIMIT: usize = 64 * 1024;

#[derive(Debug)]
struct Shared<B> {
    /// What has come from the client so far (while `copied`).
    chunks: Vec<Bytes>,
    copied_bytes: usize,
    /// False once the body outgrew the limit: the copy is incomplete.
    copied: bool,
    limit: usize,
    /// The client's body, with whichever handle reads it now.
    source: Option<B>,
    trailers: Option<HeaderMap>,
    /// The client's body has ended (all of it is in `chunks` if `copied`).
    complete: bool,
}

/// One reader of a replayable body (generic over the source so tests can
/// feed it without a connection).
#[derive(Debug)]
pub struct ReplayBody<B = Incoming> {
    shared: Arc<Mutex<Shared<B>>>,
    /// Next chunk of the copy this handle returns.
    next: usize,
    trailers_sent: bool,
}

impl<B: http_body::Body<Data = Bytes> + Unpin> ReplayBody<B> {
    pub fn new(body: B, limit: usize) -> Self {
        let complete = body.is_end_stream();
        ReplayBody {
            shared: Arc::new(Mutex::new(Shared {
                chunks: Vec::new(),
                copied_bytes: 0,
                copied: true,
                limit,
                source: Some(body),
                trailers: None,
                complete,
            })),
            next: 0,
            trailers_sent: false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared<B>> {
        // Poisoning would mean a panic mid-frame; the data is still coherent.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Can another attempt still send the whole body?
    pub fn can_replay(&self) -> bool {
        self.lock().copied
    }

    /// Has the client sent all of its body (so a copy is complete)?
    pub fn is_complete(&self) -> bool {
        let s = self.lock();
        s.complete && s.copied
    }

    /// A new handle that starts from the beginning. Call only after the
    /// previous reader is done with it (its attempt ended).
    pub fn replay(&self) -> ReplayBody<B> {
        ReplayBody {
            shared: Arc::clone(&self.shared),
            next: 0,
            trailers_sent: false,
        }
    }
}

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for ReplayBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let mut s = this.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if s.copied && this.next < s.chunks.len() {
            let chunk = s.chunks[this.next].clone();
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if s.complete {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(t) = s.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        }
        let Some(source) = s.source.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(source).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        if s.copied {
                            if s.copied_bytes + data.len() > s.limit {
                                s.copied = false;
                                s.chunks = Vec::new();
                            } else {
                                s.copied_bytes += data.len();
                                s.chunks.push(data.clone());
                                this.next = s.chunks.len();
                            }
                        }
                        Frame::data(data)
                    }
                    Err(frame) => {
                        if let Some(t) = frame.trailers_ref() {
                            s.trailers = Some(t.clone());
                            this.trailers_sent = true;
                        }
                        frame
                    }
                };
                if s.source.as_ref().is_some_and(|b| b.is_end_stream()) {
                    s.complete = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                s.complete = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.lock();
        s.complete
            && (!s.copied || self.next >= s.chunks.len())
            && (self.trailers_sent || s.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        // Only a handle that has returned nothing yet knows what is left:
        // the copy plus what the client has still to send. hyper uses it
        // for Content-Length when the request has none.
        let s = self.lock();
        if self.next != 0 || !s.copied {
            return SizeHint::default();
        }
        let copied = s.copied_bytes as u64;
        match s.source.as_ref() {
            _ if s.complete => SizeHint::with_exact(copied),
            Some(b) => {
                let rest = b.size_hint();
                match rest.exact() {
                    Some(n) => SizeHint::with_exact(copied + n),
                    None => {
                        let mut h = SizeHint::new();
                        h.set_lower(copied + rest.lower());
                        h
                    }
                }
            }
            None => SizeHint::with_exact(copied),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures_util::stream;
    use http_body::Body as _;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    type Source = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    fn source(chunks: &[&'static str], trailers: bool) -> Source {
        let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", "0".parse().unwrap());
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(stream::iter(frames))
    }

    async fn read_all<B>(b: B) -> (Vec<u8>, Option<HeaderMap>)
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Debug,
    {
        let collected = b.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes().to_vec(), trailers)
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_retry_sends_the_same_body_and_trailers() {
        block_on(async {
            let first = ReplayBody::new(source(&["ab", "cd"], true), 16);
            let again = first.replay();
            let (bytes, trailers) = read_all(first).await;
            assert_eq!(bytes, b"abcd");
            assert_eq!(trailers.unwrap()["grpc-status"], "0");
            assert!(again.can_replay() && again.is_complete());
            assert_eq!(again.size_hint().exact(), Some(4));
            let (bytes, trailers) = read_all(again).await;
            assert_eq!(bytes, b"abcd");
            assert_eq!(trailers.unwrap()["grpc-status"], "0");
        });
    }

    #[test]
    fn a_retry_after_a_partial_read_continues_from_the_client() {
        block_on(async {
            let mut first = ReplayBody::new(source(&["ab", "cd", "ef"], false), 16);
            let again = first.replay();
            let frame = first.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "ab");
            drop(first); // the attempt failed after one chunk
            assert!(again.can_replay() && !again.is_complete());
            let (bytes, _) = read_all(again).await;
            assert_eq!(bytes, b"abcdef");
        });
    }

    #[test]
    fn a_body_over_the_limit_cannot_be_replayed() {
        block_on(async {
            let first = ReplayBody::new(source(&["0123456789", "0123456789"], false), 16);
            let again = first.replay();
            let (bytes, _) = read_all(first).await;
            assert_eq!(bytes.len(), 20, "the first attempt still gets all of it");
            assert!(!again.can_replay());
        });
    }

    #[test]
    fn an_empty_body_replays_as_empty() {
        block_on(async {
            let first = ReplayBody::new(source(&[], false), 16);
            let again = first.replay();
            assert_eq!(read_all(first).await.0, b"");
            assert!(again.is_complete());
            assert_eq!(read_all(again).await.0, b"");
        });
    }
}
