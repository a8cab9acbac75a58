//! The ADS gRPC service with responses framed here rather than by tonic's
//! codec. tonic encodes a stream's messages into one buffer that keeps the
//! capacity of the largest message for the life of the stream; an ADS
//! stream lives as long as its proxy and its first CDS response is the
//! whole mesh (about 1 MB at 1,000 services), so 10,000 proxies held 10+
//! GB of idle buffers (bench/SCALE.md). Here each response is encoded into
//! a buffer of its exact size, handed to h2 and freed once written.
//!
//! Requests are still decoded by tonic (`Streaming` with the prost
//! decoder); the routing, HTTP/2 settings and keep-alive are tonic's server.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use tokio::sync::mpsc;
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;
use tonic::{Status, Streaming};

use crate::server::XdsServer;

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
            SOTW => {
                let requests = Streaming::new_request(
                    tonic_prost::ProstDecoder::default(),
                    req.into_body(),
                    None,
                    Some(MAX_REQUEST),
                );
                respond(self.server.start_sotw(requests, peer, bearer))
            }
            DELTA => {
                let requests = Streaming::new_request(
                    tonic_prost::ProstDecoder::default(),
                    req.into_body(),
                    None,
                    Some(MAX_REQUEST),
                );
                respond(self.server.start_delta(requests, peer, bearer))
            }
            other => Status::unimplemented(format!("no method {other}")).into_http(),
        };
        ready(Ok(response))
    }
}

fn respond<T: prost::Message + Send + 'static>(
    rx: mpsc::Receiver<Result<T, Status>>,
) -> HttpResponse {
    let mut response = http::Response::new(tonic::body::Body::new(FramedBody { rx, done: false }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// The response body: each message as one length-prefixed gRPC frame, then
/// the status as trailers.
struct FramedBody<T> {
    rx: mpsc::Receiver<Result<T, Status>>,
    done: bool,
}

/// `message` as a gRPC frame: uncompressed flag, big-endian length, bytes.
pub(crate) fn frame<T: prost::Message>(message: &T) -> Bytes {
    let len = message.encoded_len();
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    // A message over 4 GiB cannot be framed; prost would have failed first.
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    message.encode_raw(&mut buf);
    Bytes::from(buf)
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

impl<T: prost::Message + Send + 'static> http_body::Body for FramedBody<T> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(message))) => Poll::Ready(Some(Ok(Frame::data(frame(&message))))),
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
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use prost::Message;

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
