//! `EchoServer`: an HTTP/1.1 + h2c upstream that describes each request it
//! gets, and misbehaves on demand through `x-echo-*` request headers.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::tasks::Tasks;
use crate::{BoxError, grpc, ws};

/// Response body of the echo server: anything that yields `Bytes`.
pub(crate) type RespBody = UnsyncBoxBody<Bytes, BoxError>;

/// State shared by every connection of one echo server.
pub(crate) struct State {
    pub(crate) name: Arc<str>,
    pub(crate) requests: AtomicU64,
    pub(crate) tasks: Tasks,
}

/// An HTTP upstream for tests. Serves HTTP/1.1 and h2c (prior knowledge) on
/// one loopback port; see the crate docs for what each path does.
///
/// Stops when dropped (or with [`EchoServer::shutdown`]): its listener,
/// connections, streams and WebSockets are all aborted.
pub struct EchoServer {
    addr: SocketAddr,
    state: Arc<State>,
}

impl EchoServer {
    /// Starts an echo server named `name` on `127.0.0.1:0`.
    ///
    /// # Panics
    /// If the listener cannot be bound.
    pub async fn start(name: &str) -> EchoServer {
        Self::start_on(name, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts an echo server named `name` on `bind` (use port 0, e.g. to give
    /// a workload its own loopback address like `127.0.0.2:0`).
    ///
    /// # Panics
    /// If the listener cannot be bound.
    pub async fn start_on(name: &str, bind: SocketAddr) -> EchoServer {
        let listener = TcpListener::bind(bind)
            .await
            .unwrap_or_else(|e| panic!("echo server {name}: bind {bind}: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("echo server {name}: local_addr: {e}"));
        let state = Arc::new(State {
            name: name.into(),
            requests: AtomicU64::new(0),
            tasks: Tasks::default(),
        });
        let accept_state = state.clone();
        state.tasks.spawn(accept_loop(listener, accept_state));
        EchoServer { addr, state }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name given at start (sent back in `x-upstream`).
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// How many requests (HTTP requests, gRPC calls, WebSocket upgrades) this
    /// server has received.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Stops the server and waits until all of its tasks have ended.
    pub async fn shutdown(self) {
        self.state.tasks.shutdown().await;
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.state.tasks.close();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let builder = auto::Builder::new(state.tasks.clone());
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            // Transient accept errors (EMFILE...): back off and go on.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let conn_state = state.clone();
        state.tasks.spawn(async move {
            let service = service_fn(move |req| handle(conn_state.clone(), req));
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let opts = match EchoOptions::from_headers(req.headers()) {
        Ok(opts) => opts,
        Err(msg) => return Ok(text(&state, StatusCode::BAD_REQUEST, msg)),
    };
    if ws::is_upgrade(&req) {
        return Ok(ws::upgrade(&state, req));
    }
    if let Some(delay) = opts.delay {
        tokio::time::sleep(delay).await;
    }
    if grpc::is_grpc(&req) {
        return Ok(grpc::handle(&state, req).await);
    }
    let mut resp = if req.method() == Method::POST && req.uri().path() == "/echo-body" {
        echo_body(req)
    } else if let Some(n) = opts.body_bytes {
        let mut resp = Response::new(full(vec![b'a'; n]));
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        resp
    } else {
        match describe(&state.name, req).await {
            Ok(json) => {
                let mut resp = Response::new(full(json.to_string()));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                resp
            }
            Err(e) => text(
                &state,
                StatusCode::BAD_REQUEST,
                format!("reading request body: {e}"),
            ),
        }
    };
    if let Some(status) = opts.status {
        *resp.status_mut() = status;
    }
    let headers = resp.headers_mut();
    headers.insert("x-upstream", upstream_header(&state.name));
    for (name, value) in opts.response_headers {
        headers.append(name, value);
    }
    Ok(resp)
}

/// What the `x-echo-*` request headers ask for.
#[derive(Default)]
struct EchoOptions {
    status: Option<StatusCode>,
    delay: Option<Duration>,
    body_bytes: Option<usize>,
    response_headers: Vec<(HeaderName, HeaderValue)>,
}

impl EchoOptions {
    fn from_headers(headers: &HeaderMap) -> Result<EchoOptions, String> {
        fn number<T: std::str::FromStr>(
            headers: &HeaderMap,
            name: &str,
        ) -> Result<Option<T>, String> {
            let Some(value) = headers.get(name) else {
                return Ok(None);
            };
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .map(Some)
                .ok_or_else(|| format!("{name}: expected a number, got {value:?}"))
        }
        let status = number::<u16>(headers, "x-echo-status")?
            .map(|code| {
                StatusCode::from_u16(code)
                    .map_err(|_| format!("x-echo-status: invalid status {code}"))
            })
            .transpose()?;
        let delay = number::<u64>(headers, "x-echo-delay-ms")?.map(Duration::from_millis);
        let body_bytes = number::<usize>(headers, "x-echo-body-bytes")?;
        let mut response_headers = Vec::new();
        for value in headers.get_all("x-echo-response-header") {
            let parsed = value
                .to_str()
                .ok()
                .and_then(|v| v.split_once('='))
                .and_then(|(n, v)| {
                    Some((
                        HeaderName::from_bytes(n.trim().as_bytes()).ok()?,
                        HeaderValue::from_str(v.trim()).ok()?,
                    ))
                });
            match parsed {
                Some(pair) => response_headers.push(pair),
                None => {
                    return Err(format!(
                        "x-echo-response-header: expected name=value, got {value:?}"
                    ));
                }
            }
        }
        Ok(EchoOptions {
            status,
            delay,
            body_bytes,
            response_headers,
        })
    }
}

/// `POST /echo-body`: the request body streams back as the response body.
fn echo_body(req: Request<Incoming>) -> Response<RespBody> {
    let content_type = req.headers().get(CONTENT_TYPE).cloned();
    let mut resp = Response::new(req.into_body().map_err(BoxError::from).boxed_unsync());
    if let Some(ct) = content_type {
        resp.headers_mut().insert(CONTENT_TYPE, ct);
    }
    resp
}

/// The JSON description of a request (reads its whole body).
async fn describe(name: &str, req: Request<Incoming>) -> Result<serde_json::Value, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body_len = body.collect().await?.to_bytes().len();
    let authority = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| parts.headers.get(HOST).map(lossy));
    let mut headers = serde_json::Map::new();
    for key in parts.headers.keys() {
        let values: Vec<serde_json::Value> = parts
            .headers
            .get_all(key)
            .iter()
            .map(|v| lossy(v).into())
            .collect();
        let value = match <[_; 1]>::try_from(values) {
            Ok([one]) => one,
            Err(many) => many.into(),
        };
        headers.insert(key.as_str().to_owned(), value);
    }
    Ok(serde_json::json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "authority": authority,
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body_len,
    }))
}

fn lossy(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

pub(crate) fn upstream_header(name: &str) -> HeaderValue {
    HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("invalid-name"))
}

pub(crate) fn full(data: impl Into<Bytes>) -> RespBody {
    Full::new(data.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A plain-text response carrying `x-upstream`.
pub(crate) fn text(
    state: &State,
    status: StatusCode,
    msg: impl Into<String>,
) -> Response<RespBody> {
    let mut resp = Response::new(full(msg.into()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert("x-upstream", upstream_header(&state.name));
    resp
}
