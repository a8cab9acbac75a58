//! `serve`: a tiny upstream answering HTTP/1.1 (hyper) and h2c (prior
//! knowledge, detected from the connection preface; `serve_h2`) on one port. Every request gets
//! `200` with a fixed body, except gRPC unary `POST /trellis.test.Echo/Unary`,
//! which echoes the request message with `grpc-status: 0` in the trailers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::h2::GRPC_PATH;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub fn serve(listen: SocketAddr, body_size: usize) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        println!("listening on {}", listener.local_addr()?);
        let body = Bytes::from(vec![b'x'; body_size]);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(connection(stream, body.clone()));
        }
    })
}

async fn is_h2(stream: &TcpStream) -> Option<bool> {
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != PREFACE[..n] {
            return Some(false);
        }
        if n == PREFACE.len() {
            return Some(true);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn connection(stream: TcpStream, body: Bytes) {
    let Some(h2) = is_h2(&stream).await else {
        return;
    };
    if h2 {
        crate::serve_h2::connection(stream, body).await;
    } else {
        let svc = service_fn(move |req| {
            let body = body.clone();
            async move { Ok::<_, Infallible>(respond(req, body).await) }
        });
        let io = TokioIo::new(stream);
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .serve_connection(io, svc)
            .await;
    }
}

async fn respond(req: Request<Incoming>, body: Bytes) -> Response<RespBody> {
    let grpc = req.uri().path() == GRPC_PATH
        && req
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        let mut resp = Response::new(RespBody::new(body, None));
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("text/plain"));
        return resp;
    }
    let (status, message) = match req.into_body().collect().await {
        Ok(c) => {
            let b = c.to_bytes();
            let ok = b.len() >= 5
                && b[0] == 0
                && u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize + 5 == b.len();
            if ok { ("0", b) } else { ("13", Bytes::new()) }
        }
        Err(_) => ("13", Bytes::new()),
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    let mut resp = Response::new(RespBody::new(message, Some(trailers)));
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    resp
}

pub struct RespBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl RespBody {
    fn new(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            data: (!data.is_empty()).then_some(data),
            trailers,
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let Some(t) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}
