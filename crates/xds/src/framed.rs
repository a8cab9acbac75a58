//! The ADS gRPC service with responses framed here rather than by tonic's
//! codec. tonic encodes a stream's messages into one buffer that keeps the
//! capacity of the largest message for the life of the stream; an ADS
//! stream lives as long as its proxy and its first CDS response is the
//! whole mesh (about 1 MB at 1,000 services), so 10,000 proxies held 10+
//! GB of idle buffers (bench/SCALE.md). Here a state-of-the-world response
//! is encoded a chunk at a time as HTTP/2 takes it (`sotw/response.rs`,
//! `delta/response.rs`), each chunk freed once written.
//!
//! Requests are decoded here too ([`Requests`]): tonic's `Streaming` keeps
//! a buffer as large as the stream's largest request, and a sidecar's EDS
//! request names every cluster (~60 KB at 1,000 services), repeated in every
//! ACK. The routing, HTTP/2 settings and keep-alive are tonic's server.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::Stream;
use http_body::{Body as _, Frame};
use tokio::sync::mpsc;
use tonic::Status;
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;

use crate::delta::DeltaResponse;
use crate::delta::response::DeltaFrames;
use crate::server::XdsServer;
use crate::sotw::SotwResponse;
use crate::sotw::response::SotwFrames;

const SOTW: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// Largest request accepted (tonic's default).
const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// `AggregatedDiscoveryService` for a tonic server (`add_service`).
#[derive(Clone)]
pub struct FramedAds {
    pub(crate) server: XdsServer,
}

impl NamedService for FramedAds {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;

impl Service<HttpRequest> for FramedAds {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = Ready<Result<HttpResponse, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        let peer = req
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);
        let bearer = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::server::Bearer::from_header);
        let path = req.uri().path().to_string();
        let response = match path.as_str() {
            SOTW => respond(
                self.server
                    .start_sotw(Requests::new(req.into_body()), peer, bearer),
            ),
            DELTA => respond(
                self.server
                    .start_delta(Requests::new(req.into_body()), peer, bearer),
            ),
            other => Status::unimplemented(format!("no method {other}")).into_http(),
        };
        ready(Ok(response))
    }
}

/// A response message as gRPC frame bytes, in one or more chunks.
pub(crate) trait IntoFrames: Send + 'static {
    type Frames: Iterator<Item = Bytes> + Send + Unpin + 'static;
    fn into_frames(self) -> Self::Frames;
}

impl IntoFrames for SotwResponse {
    type Frames = SotwFrames;
    fn into_frames(self) -> SotwFrames {
        SotwResponse::into_frames(self)
    }
}

impl IntoFrames for DeltaResponse {
    type Frames = DeltaFrames;
    fn into_frames(self) -> DeltaFrames {
        DeltaResponse::into_frames(self)
    }
}

fn respond<T: IntoFrames>(rx: mpsc::Receiver<Result<T, Status>>) -> HttpResponse {
    let mut response = http::Response::new(tonic::body::Body::new(FramedBody {
        rx,
        current: None,
        done: false,
    }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// The response body: each message as one length-prefixed gRPC frame, then
/// the status as trailers. hyper polls it only when the HTTP/2 stream has
/// send capacity, so a message's chunks are encoded as the client reads.
struct FramedBody<T: IntoFrames> {
    rx: mpsc::Receiver<Result<T, Status>>,
    /// The rest of the message being written.
    current: Option<T::Frames>,
    done: bool,
}

/// The request messages of a stream, decoded from its HTTP/2 body. Between
/// messages the buffer is released, so an idle stream holds none.
pub(crate) struct Requests<T> {
    body: tonic::body::Body,
    buf: BytesMut,
    done: bool,
    _message: PhantomData<fn() -> T>,
}

impl<T: prost::Message + Default> Requests<T> {
    pub(crate) fn new(body: tonic::body::Body) -> Self {
        Requests {
            body,
            buf: BytesMut::new(),
            done: false,
            _message: PhantomData,
        }
    }

    /// The next whole message in the buffer, if there is one.
    fn decode(&mut self) -> Result<Option<T>, Status> {
        let Some(header) = self.buf.get(..5) else {
            return Ok(None);
        };
        if header[0] != 0 {
            return Err(Status::unimplemented(
                "compressed xDS requests are not supported; send them uncompressed",
            ));
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_REQUEST {
            return Err(Status::resource_exhausted(format!(
                "xDS request of {len} bytes is over the limit of {MAX_REQUEST}"
            )));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let message = T::decode(&self.buf[5..5 + len])
            .map_err(|e| Status::invalid_argument(format!("undecodable xDS request: {e}")))?;
        self.buf.advance(5 + len);
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        Ok(Some(message))
    }
}

impl<T: prost::Message + Default> Stream for Requests<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.decode() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(status) => {
                    self.done = true;
                    self.buf = BytesMut::new();
                    return Poll::Ready(Some(Err(status)));
                }
            }
            if self.done {
                if self.buf.is_empty() {
                    return Poll::Ready(None);
                }
                self.buf = BytesMut::new();
                return Poll::Ready(Some(Err(Status::internal(
                    "xDS request stream ended inside a message",
                ))));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(status)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
                None => self.done = true,
            }
        }
    }
}

fn trailers(status: &Status) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // Only a message that is not a valid header value fails: say so
        // without it.
        let _ = Status::new(status.code(), "").add_header(&mut map);
    }
    map
}

impl<T: IntoFrames> http_body::Body for FramedBody<T> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(frames) = self.current.as_mut() {
            if let Some(chunk) = frames.next() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            self.current = None;
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(message))) => {
                let mut frames = message.into_frames();
                let first = frames.next().unwrap_or_default();
                self.current = Some(frames);
                Poll::Ready(Some(Ok(Frame::data(first))))
            }
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&Status::ok(""))))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
    use futures_util::StreamExt;
    use prost::Message;

    /// `message` as a gRPC frame: uncompressed flag, big-endian length, bytes.
    fn frame<T: prost::Message>(message: &T) -> Bytes {
        let mut buf = vec![0];
        buf.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
        message.encode_raw(&mut buf);
        Bytes::from(buf)
    }

    /// A request body delivered in the given pieces.
    fn body(pieces: Vec<Vec<u8>>) -> tonic::body::Body {
        let frames = futures_util::stream::iter(
            pieces
                .into_iter()
                .map(|p| Ok::<_, Status>(Frame::data(Bytes::from(p)))),
        );
        tonic::body::Body::new(http_body_util::StreamBody::new(frames))
    }

    fn req(names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: "t".into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn requests_split_anywhere_decode_in_order_and_free_the_buffer() {
        let (a, b) = (req(&["x", "y"]), req(&["z"]));
        let wire: Vec<u8> = [frame(&a), frame(&b)].concat();
        // Every split point, including inside the 5-byte header.
        for cut in 1..wire.len() {
            let mut r = Requests::<DiscoveryRequest>::new(body(vec![
                wire[..cut].to_vec(),
                wire[cut..].to_vec(),
            ]));
            assert_eq!(r.next().await.unwrap().unwrap(), a, "cut at {cut}");
            assert_eq!(r.next().await.unwrap().unwrap(), b, "cut at {cut}");
            assert!(r.next().await.is_none());
            assert_eq!(r.buf.capacity(), 0, "nothing kept after the last message");
        }
    }

    #[tokio::test]
    async fn bad_requests_end_the_stream_with_a_reason() {
        let whole = frame(&req(&["x"])).to_vec();
        let mut truncated = Requests::<DiscoveryRequest>::new(body(vec![whole[..4].to_vec()]));
        let err = truncated.next().await.unwrap().unwrap_err();
        assert!(err.message().contains("inside a message"), "{err}");

        let mut compressed = whole.clone();
        compressed[0] = 1;
        let mut r = Requests::<DiscoveryRequest>::new(body(vec![compressed]));
        let err = r.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");

        let mut huge = vec![0u8];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut r = Requests::<DiscoveryRequest>::new(body(vec![huge]));
        let err = r.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    }

    #[test]
    fn a_frame_is_flag_length_message_with_no_spare_capacity() {
        let r = DiscoveryResponse {
            version_info: "v1".into(),
            type_url: "t".into(),
            ..Default::default()
        };
        let f = frame(&r);
        assert_eq!(f[0], 0);
        let len = u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize;
        assert_eq!(len, f.len() - 5);
        assert_eq!(DiscoveryResponse::decode(&f[5..]).unwrap(), r);
    }
}
