//! gRPC over h2c for `EchoServer`: messages are opaque bytes in the standard
//! length-prefixed framing, so no protobuf is needed.

use bytes::{Buf, Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::mpsc;

use crate::BoxError;
use crate::echo::{RespBody, State, upstream_header};

pub(crate) const UNARY: &str = "/trellis.test.Echo/Unary";
pub(crate) const STREAM: &str = "/trellis.test.Echo/Stream";
pub(crate) const FAIL: &str = "/trellis.test.Echo/Fail";

pub(crate) const OK: &str = "0";
pub(crate) const INTERNAL: &str = "13";
const UNIMPLEMENTED: &str = "12";

pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

pub(crate) async fn handle(state: &State, req: Request<Incoming>) -> Response<RespBody> {
    match req.uri().path() {
        UNARY => unary(state, req.into_body()).await,
        STREAM => stream(state, req.into_body()),
        FAIL => trailers_only(&state.name, INTERNAL, "boom"),
        other => trailers_only(
            &state.name,
            UNIMPLEMENTED,
            &format!("unknown method {other}"),
        ),
    }
}

/// Reassembles length-prefixed gRPC messages from arbitrary data chunks.
#[derive(Default)]
pub(crate) struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete message, with its 5-byte prefix.
    pub(crate) fn next_frame(&mut self) -> Option<Bytes> {
        if self.buf.len() < 5 {
            return None;
        }
        let len = (&self.buf[1..5]).get_u32() as usize;
        if self.buf.len() < 5 + len {
            return None;
        }
        Some(self.buf.split_to(5 + len).freeze())
    }

    /// Bytes of an incomplete message left over.
    pub(crate) fn leftover(&self) -> usize {
        self.buf.len()
    }
}

/// Frames `payload` as one uncompressed gRPC message.
pub fn encode_message(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + payload.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(payload);
    out.freeze()
}

/// Splits a buffer of length-prefixed gRPC messages into their payloads;
/// `None` if it ends inside a message.
pub fn decode_messages(data: &[u8]) -> Option<Vec<Bytes>> {
    let mut decoder = Decoder::default();
    decoder.push(data);
    let mut out = Vec::new();
    while let Some(frame) = decoder.next_frame() {
        out.push(frame.slice(5..));
    }
    (decoder.leftover() == 0).then_some(out)
}

/// Response head of a gRPC answer from upstream `name`.
pub(crate) fn headers(name: &str) -> Response<()> {
    let mut resp = Response::new(());
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("x-upstream", upstream_header(name));
    resp
}

/// The trailers ending a call: `grpc-status`, `grpc-message`, `x-upstream-trailer`.
pub(crate) fn trailers(name: &str, status: &str, message: Option<&str>) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", status_value(status));
    if let Some(msg) = message.and_then(|m| HeaderValue::from_str(m).ok()) {
        t.insert("grpc-message", msg);
    }
    t.insert("x-upstream-trailer", upstream_header(name));
    t
}

/// A response whose body is fed frame by frame through a channel.
fn channel_response(state: &State) -> (Response<RespBody>, mpsc::Sender<Frame<Bytes>>) {
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(16);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| (Ok::<_, BoxError>(f), rx))
    });
    let body = StreamBody::new(frames).boxed_unsync();
    (headers(&state.name).map(|()| body), tx)
}

async fn unary(state: &State, body: Incoming) -> Response<RespBody> {
    let data = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return trailers_only(&state.name, INTERNAL, &format!("reading request: {e}")),
    };
    let mut decoder = Decoder::default();
    decoder.push(&data);
    let frames: Vec<Bytes> = std::iter::from_fn(|| decoder.next_frame()).collect();
    if frames.len() != 1 || decoder.leftover() != 0 {
        let msg = format!(
            "unary call needs exactly one message, got {} (+{} stray bytes)",
            frames.len(),
            decoder.leftover()
        );
        return trailers_only(&state.name, INTERNAL, &msg);
    }
    let mut out: Vec<Result<Frame<Bytes>, BoxError>> =
        frames.into_iter().map(|f| Ok(Frame::data(f))).collect();
    out.push(Ok(Frame::trailers(trailers(&state.name, OK, None))));
    let body = StreamBody::new(futures_util::stream::iter(out)).boxed_unsync();
    headers(&state.name).map(|()| body)
}

/// Bidirectional: each message goes back as soon as it is complete.
fn stream(state: &State, mut body: Incoming) -> Response<RespBody> {
    let (resp, tx) = channel_response(state);
    let name = state.name.clone();
    state.tasks.spawn(async move {
        let mut decoder = Decoder::default();
        let end = loop {
            match body.frame().await {
                None => break trailers(&name, OK, None),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        decoder.push(data);
                        while let Some(msg) = decoder.next_frame() {
                            if tx.send(Frame::data(msg)).await.is_err() {
                                return; // the client went away
                            }
                        }
                    }
                }
                Some(Err(e)) => {
                    break trailers(&name, INTERNAL, Some(&format!("reading request: {e}")));
                }
            }
        };
        let end = if decoder.leftover() == 0 {
            end
        } else {
            trailers(&name, INTERNAL, Some("request ended inside a message"))
        };
        let _ = tx.send(Frame::trailers(end)).await;
    });
    resp
}

/// A trailers-only response: status and message in the one HEADERS frame.
pub(crate) fn trailers_only(name: &str, status: &str, message: &str) -> Response<RespBody> {
    let empty = http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = headers(name).map(|()| empty);
    let h = resp.headers_mut();
    h.insert("grpc-status", status_value(status));
    if let Ok(v) = HeaderValue::from_str(message) {
        h.insert("grpc-message", v);
    }
    resp
}

fn status_value(status: &str) -> HeaderValue {
    HeaderValue::from_str(status).unwrap_or_else(|_| HeaderValue::from_static(INTERNAL))
}
