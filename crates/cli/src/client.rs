//! A small blocking client of the control plane's HTTP API (`docs/api.md`).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use trellis_model::ConfigError;

/// The control plane's address when neither `--server` nor `TRELLIS_SERVER` says.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:15014";

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{server:?} is not a server URL: use http://HOST:PORT, e.g. {DEFAULT_SERVER}")]
    BadUrl { server: String },
    #[error("cannot reach the control plane at {server}: {reason}; is `trellis control` running?")]
    Unreachable { server: String, reason: String },
    #[error("the control plane at {server} did not answer within {} s", TIMEOUT.as_secs())]
    Timeout { server: String },
    /// The API's own error: its sentence and config errors.
    #[error("{message}")]
    Api {
        status: StatusCode,
        message: String,
        details: Vec<ConfigError>,
    },
    #[error("unexpected answer from the control plane at {server}: {reason}")]
    BadResponse { server: String, reason: String },
    #[error("cannot start the HTTP client: {0}")]
    Runtime(std::io::Error),
}

impl ClientError {
    pub fn details(&self) -> &[ConfigError] {
        match self {
            ClientError::Api { details, .. } => details,
            _ => &[],
        }
    }
}

pub struct Client {
    server: String,
    rt: tokio::runtime::Runtime,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    pub fn new(server: &str) -> Result<Client, ClientError> {
        let server = server.trim_end_matches('/').to_string();
        let base: Uri = server.parse().map_err(|_| ClientError::BadUrl {
            server: server.clone(),
        })?;
        if base.scheme_str() != Some("http") || base.host().is_none() {
            return Err(ClientError::BadUrl { server });
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClientError::Runtime)?;
        let http = HyperClient::builder(TokioExecutor::new()).build_http();
        Ok(Client { server, rt, http })
    }

    /// Send a request and return the JSON body of a 2xx answer; anything
    /// else becomes a [`ClientError`].
    pub fn call(
        &self,
        method: Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Value, ClientError> {
        let uri = format!("{}{path_and_query}", self.server);
        let mut req = Request::builder().method(method).uri(&uri);
        if let Some(ct) = content_type {
            req = req.header(http::header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| ClientError::BadUrl {
                server: self.server.clone(),
            })?;
        let server = &self.server;
        self.rt.block_on(async {
            let answer = tokio::time::timeout(TIMEOUT, async {
                let resp = self
                    .http
                    .request(req)
                    .await
                    .map_err(|e| ClientError::Unreachable {
                        server: server.clone(),
                        reason: root_cause(&e),
                    })?;
                let status = resp.status();
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| ClientError::BadResponse {
                        server: server.clone(),
                        reason: format!("reading the body: {e}"),
                    })?
                    .to_bytes();
                Ok::<_, ClientError>((status, bytes))
            })
            .await
            .map_err(|_| ClientError::Timeout {
                server: server.clone(),
            })??;
            let (status, bytes) = answer;
            let json: Value =
                serde_json::from_slice(&bytes).map_err(|e| ClientError::BadResponse {
                    server: server.clone(),
                    reason: format!("HTTP {status} with a body that is not JSON ({e})"),
                })?;
            if status.is_success() {
                return Ok(json);
            }
            let message = json["error"]
                .as_str()
                .map_or_else(|| format!("HTTP {status}"), str::to_string);
            let details = serde_json::from_value(json["details"].clone()).unwrap_or_default();
            Err(ClientError::Api {
                status,
                message,
                details,
            })
        })
    }
}

/// The innermost cause, lowercased the way errors read in a sentence:
/// "connection refused" rather than "Connection refused (os error 111)".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    if let Some(io) = cur.downcast_ref::<std::io::Error>() {
        let kind = io.kind();
        if kind == std::io::ErrorKind::ConnectionRefused {
            return "connection refused".into();
        }
        let s = io.to_string();
        let s = s.split(" (os error").next().unwrap_or(&s).to_string();
        return lower_first(&s);
    }
    lower_first(&cur.to_string())
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}
