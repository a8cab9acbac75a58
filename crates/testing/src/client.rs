//! HTTP clients for tests (hyper_util's legacy client).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::BoxError;

/// A client that dials the host and port of each request's URI.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A client that dials one fixed address whatever the request's URI says.
pub type FixedClient = Client<FixedConnector, Full<Bytes>>;

/// How long [`send`] and [`try_send`] wait for a whole response.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP/1.1 client.
pub fn http1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c client (HTTP/2 with prior knowledge, no TLS).
pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// An HTTP/1.1 client whose connections all go to `addr`: a request for
/// `http://svc.test/path` reaches `addr` in origin form with `Host: svc.test`,
/// as an app's request reaches a transparently captured listener.
pub fn http1_client_to(addr: SocketAddr) -> FixedClient {
    Client::builder(TokioExecutor::new()).build(FixedConnector { addr })
}

/// An h2c client whose connections all go to `addr`: a request for
/// `http://svc.test/path` reaches `addr` with `:authority = svc.test`.
pub fn h2c_client_to(addr: SocketAddr) -> FixedClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(FixedConnector { addr })
}

/// Sends `req` and reads the whole response.
///
/// # Panics
/// If the request fails or the response takes over [`SEND_TIMEOUT`].
pub async fn send<C>(
    client: &Client<C, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Bytes)
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let what = format!("{} {}", req.method(), req.uri());
    try_send(client, req)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Sends `req` and reads the whole response; errors (including a timeout
/// after [`SEND_TIMEOUT`]) are returned, for tests that expect them.
pub async fn try_send<C>(
    client: &Client<C, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, HeaderMap, Bytes), BoxError>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let fut = async {
        let resp = client.request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok::<_, BoxError>((parts.status, parts.headers, body))
    };
    match tokio::time::timeout(SEND_TIMEOUT, fut).await {
        Ok(result) => result,
        Err(_) => Err(format!("no complete response within {SEND_TIMEOUT:?}").into()),
    }
}

/// A connector that always dials one address.
#[derive(Clone, Debug)]
pub struct FixedConnector {
    addr: SocketAddr,
}

impl FixedConnector {
    /// A connector for `addr`.
    pub fn new(addr: SocketAddr) -> FixedConnector {
        FixedConnector { addr }
    }
}

impl tower_service::Service<Uri> for FixedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let addr = self.addr;
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}
