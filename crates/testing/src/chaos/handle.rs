//! One request to a `ChaosServer`: count it, decide, then answer or
//! misbehave.
//!
//! How hyper turns the misbehaviours into wire events:
//! - reset: the service returns an error. hyper's HTTP/2 server then sends
//!   RST_STREAM (INTERNAL_ERROR) for that stream only; its HTTP/1.1 server
//!   ends the connection without writing a byte of response (the socket is
//!   closed; with request bytes still unread the kernel sends a TCP RST).
//! - close after headers: the response body yields a few bytes, waits a
//!   moment (so hyper flushes the head and those bytes), then an error:
//!   HTTP/1.1 closes the connection short of the `content-length`, HTTP/2
//!   resets the stream.
//! - hang: the service future never completes; hyper drops it when the
//!   client goes away (EOF on HTTP/1.1, RST_STREAM on HTTP/2).

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use rand::Rng;

use super::behavior::{self, Action, Behavior};
use super::conn::Busy;
use super::{State, admin};
use crate::echo::{RespBody, full, upstream_header};
use crate::{BoxError, grpc};

/// Response header naming the misbehaviour a response carries
/// (`fail`), absent on normal answers.
const INJECTED: &str = "x-chaos-injected";
/// Response header: the attempt number of the request's key.
const ATTEMPT: &str = "x-chaos-attempt";
/// The `content-length` announced by close-after-headers.
const PROMISED_LEN: &str = "1000";

/// The error that makes hyper reset the stream or close the connection.
#[derive(Debug)]
pub(crate) struct Injected(&'static str);

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chaos: {}", self.0)
    }
}

impl std::error::Error for Injected {}

/// A response body that holds its connection's [`Busy`] guard (HTTP/1.1)
/// until hyper is done with it.
pub(crate) struct Guarded {
    body: RespBody,
    _busy: Option<Busy>,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The service of every connection. `busy` marks the request in progress
/// on an HTTP/1.1 connection (for idle close) until the response is done.
pub(crate) async fn handle(
    state: Arc<State>,
    busy: Option<Busy>,
    req: Request<Incoming>,
) -> Result<Response<Guarded>, Injected> {
    let resp = respond(&state, req).await?;
    Ok(resp.map(|body| Guarded { body, _busy: busy }))
}

async fn respond(state: &State, req: Request<Incoming>) -> Result<Response<RespBody>, Injected> {
    if admin::is_admin(req.uri().path()) {
        return Ok(admin::handle(state, req).await);
    }
    let key = behavior::key(req.headers(), req.uri().path());
    let attempt = state.record(&req, key);
    let global = state.behavior.borrow().clone();
    let behavior = match global.with_headers(req.headers()) {
        Ok(b) => b,
        Err(msg) => return Ok(text(state, StatusCode::BAD_REQUEST, msg)),
    };
    let repeat = match behavior::grpc_repeat(req.headers()) {
        Ok(n) => n,
        Err(msg) => return Ok(text(state, StatusCode::BAD_REQUEST, msg)),
    };
    if !behavior.delay.is_zero() {
        tokio::time::sleep(behavior.delay).await;
    }
    let (reset_roll, fail_roll) = {
        let mut rng = rand::rng();
        (rng.random_range(0.0..100.0), rng.random_range(0.0..100.0))
    };
    let is_grpc = grpc::is_grpc(&req);
    let mut resp = match behavior.action(attempt, reset_roll, fail_roll) {
        Action::Hang => std::future::pending().await,
        Action::Reset => return Err(Injected("reset")),
        Action::Fail => {
            drain(req.into_body()).await;
            fail(state, &behavior, is_grpc)
        }
        Action::CloseAfterHeaders => {
            drain(req.into_body()).await;
            close_after_headers(state, is_grpc)
        }
        Action::Answer if is_grpc => grpc_echo(state, req.into_body(), repeat).await,
        Action::Answer => {
            drain(req.into_body()).await;
            text(state, StatusCode::OK, format!("ok {}", state.name))
        }
    };
    resp.headers_mut()
        .insert(ATTEMPT, HeaderValue::from(attempt));
    Ok(resp)
}

/// Reads and drops a request body (so an HTTP/1.1 connection stays
/// reusable).
async fn drain(body: Incoming) {
    let _ = body.collect().await;
}

fn fail(state: &State, behavior: &Behavior, is_grpc: bool) -> Response<RespBody> {
    let mut resp = match behavior.grpc_status.filter(|_| is_grpc) {
        Some(code) => {
            grpc::trailers_only(&state.name, &code.to_string(), "chaos: injected failure")
        }
        None => {
            let status = behavior.status_code();
            let msg = format!("chaos {}: injected {}", state.name, status.as_u16());
            text(state, status, msg)
        }
    };
    resp.headers_mut()
        .insert(INJECTED, HeaderValue::from_static("fail"));
    resp
}

/// Status and headers promising 1,000 bytes, a few bytes, then an error.
fn close_after_headers(state: &State, is_grpc: bool) -> Response<RespBody> {
    let frames = futures_util::stream::unfold(0u8, |step| async move {
        match step {
            0 => Some((Ok(Frame::data(Bytes::from_static(b"partial"))), 1)),
            1 => {
                // Let hyper flush the head and the first bytes.
                tokio::time::sleep(Duration::from_millis(10)).await;
                Some((Err(BoxError::from("chaos: body aborted after headers")), 2))
            }
            _ => None,
        }
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    let content_type = if is_grpc {
        "application/grpc"
    } else {
        "text/plain"
    };
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CONTENT_LENGTH, HeaderValue::from_static(PROMISED_LEN));
    h.insert("x-upstream", upstream_header(&state.name));
    h.insert(INJECTED, HeaderValue::from_static("close-after-headers"));
    resp
}

/// Unary and server streaming: the whole request is read, then each of its
/// messages comes back `repeat` times, then `grpc-status: 0`.
async fn grpc_echo(state: &State, body: Incoming, repeat: u32) -> Response<RespBody> {
    let data = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let msg = format!("reading request: {e}");
            return grpc::trailers_only(&state.name, grpc::INTERNAL, &msg);
        }
    };
    let mut decoder = grpc::Decoder::default();
    decoder.push(&data);
    let messages: Vec<Bytes> = std::iter::from_fn(|| decoder.next_frame()).collect();
    if decoder.leftover() != 0 {
        let msg = format!(
            "request ends inside a message ({} bytes)",
            decoder.leftover()
        );
        return grpc::trailers_only(&state.name, grpc::INTERNAL, &msg);
    }
    let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = Vec::new();
    for message in messages {
        for _ in 0..repeat {
            frames.push(Ok(Frame::data(message.clone())));
        }
    }
    frames.push(Ok(Frame::trailers(grpc::trailers(
        &state.name,
        grpc::OK,
        None,
    ))));
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
    grpc::headers(&state.name).map(|()| body)
}

/// A plain-text response carrying `x-upstream`.
pub(crate) fn text(
    state: &State,
    status: StatusCode,
    msg: impl Into<String>,
) -> Response<RespBody> {
    let mut resp = Response::new(full(msg.into()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert("x-upstream", upstream_header(&state.name));
    resp
}
