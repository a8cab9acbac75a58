//! The one body type the proxy moves around: no boxing per request.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use super::pool::PooledBody;
use super::replay::ReplayBody;

#[derive(Debug)]
pub enum Body {
    Empty,
    /// A body the proxy made (local replies).
    Full(Option<Bytes>),
    /// Straight from the other side.
    Incoming(Incoming),
    /// An upstream response body that hands its connection back to the pool at its end.
    Pooled(PooledBody),
    /// A request body kept for retries and mirrors.
    Replay(ReplayBody),
}

impl Body {
    pub fn full(b: impl Into<Bytes>) -> Self {
        Body::Full(Some(b.into()))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Incoming(b) => Pin::new(b).poll_frame(cx),
            Body::Pooled(b) => Pin::new(b).poll_frame(cx),
            Body::Replay(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Incoming(b) => b.is_end_stream(),
            Body::Pooled(b) => b.is_end_stream(),
            Body::Replay(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(b) => b.size_hint(),
            Body::Pooled(b) => b.size_hint(),
            Body::Replay(b) => b.size_hint(),
        }
    }
}
