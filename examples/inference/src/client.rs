//! Calling the next hop by its mesh name (`http://inference:9090/...`),
//! through the sidecar as any HTTP client honouring `HTTP_PROXY` does.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use crate::failure::UpstreamFailure;
use crate::settings::Via;

/// Largest response body read from the next hop.
const MAX_BODY: usize = 1 << 20;

/// An HTTP/1.1 client with keep-alive connections, going out as `via` says.
#[derive(Clone)]
pub struct Upstream {
    client: Client<ViaConnector, Full<Bytes>>,
    via: Via,
    timeout: Duration,
}

/// A successful call: the decoded body.
pub struct Reply<T> {
    pub body: T,
}

impl Upstream {
    pub fn new(via: Via, timeout: Duration) -> Upstream {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(ViaConnector { via: via.clone() });
        Upstream {
            client,
            via,
            timeout,
        }
    }

    /// `method url` with `body` as JSON and `headers` added; a 2xx answer's
    /// JSON decoded as `T`, anything else an [`UpstreamFailure`].
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        url: &Uri,
        headers: &HeaderMap,
        body: Option<&B>,
    ) -> Result<Reply<T>, UpstreamFailure> {
        let bytes = match body {
            Some(b) => {
                Bytes::from(serde_json::to_vec(b).map_err(|e| UpstreamFailure::BadBody {
                    detail: format!("cannot encode the request: {e}"),
                })?)
            }
            None => Bytes::new(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(url.clone())
            .body(Full::new(bytes))
            .map_err(|e| UpstreamFailure::BadBody {
                detail: format!("cannot build the request: {e}"),
            })?;
        req.headers_mut().extend(headers.clone());
        if body.is_some() {
            req.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| self.classify(url, &e))?;
            let (parts, body) = resp.into_parts();
            let body = http_body_util::Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| UpstreamFailure::Broken {
                    detail: format!("reading the response body: {e}"),
                })?
                .to_bytes();
            Ok((parts, body))
        };
        let (parts, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| UpstreamFailure::Timeout {
                after: self.timeout,
            })??;
        if !parts.status.is_success() {
            return Err(UpstreamFailure::Status {
                status: parts.status.as_u16(),
                reason: parts
                    .headers
                    .get("x-trellis-reason")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body,
            });
        }
        serde_json::from_slice(&body)
            .map(|body| Reply { body })
            .map_err(|e| UpstreamFailure::BadBody {
                detail: e.to_string(),
            })
    }

    fn classify(&self, url: &Uri, e: &hyper_util::client::legacy::Error) -> UpstreamFailure {
        let detail = error_chain(e);
        if e.is_connect() {
            let (addr, sidecar) = match self.via.fixed_addr() {
                Some(a) => (a.to_string(), true),
                None => (
                    url.authority()
                        .map_or_else(String::new, ToString::to_string),
                    false,
                ),
            };
            UpstreamFailure::Unreachable {
                addr,
                sidecar,
                detail,
            }
        } else {
            UpstreamFailure::Broken { detail }
        }
    }
}

/// The error and its causes on one line: hyper's top-level message alone
/// ("client error (Connect)") does not say what to check.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Dials the sidecar (or the URL's host when there is none), and tells
/// hyper whether it is talking to a proxy: then requests carry the
/// absolute URI (`GET http://inference:9090/v1/generate`), which is how
/// the sidecar's outbound listener learns the destination service.
#[derive(Clone, Debug)]
pub struct ViaConnector {
    via: Via,
}

impl tower_service::Service<Uri> for ViaConnector {
    type Response = ViaStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<ViaStream>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let via = self.via.clone();
        Box::pin(async move {
            let target = match via.fixed_addr() {
                Some(a) => a.to_string(),
                None => {
                    let host = uri.host().ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"))
                    })?;
                    format!("{host}:{}", uri.port_u16().unwrap_or(80))
                }
            };
            let stream = TcpStream::connect(&target).await?;
            stream.set_nodelay(true)?;
            Ok(ViaStream {
                io: TokioIo::new(stream),
                proxy: matches!(via, Via::Proxy(_)),
            })
        })
    }
}

/// A connection to the sidecar or the next hop.
pub struct ViaStream {
    io: TokioIo<TcpStream>,
    proxy: bool,
}

impl Connection for ViaStream {
    fn connected(&self) -> Connected {
        Connected::new().proxy(self.proxy)
    }
}

impl hyper::rt::Read for ViaStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for ViaStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
