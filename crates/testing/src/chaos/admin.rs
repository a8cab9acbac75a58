//! The admin API of a `ChaosServer`, under `/_chaos` on its own port (so a
//! server run as `trellis-chaos` can be steered). Admin requests are never
//! counted and never misbehave.
//!
//! - `GET /_chaos`: the global [`Behavior`] as JSON.
//! - `POST /_chaos`: replace it (JSON body; absent fields take defaults);
//!   answers the new behavior, or 400 with the reason.
//! - `GET /_chaos/stats`: the counters ([`ChaosStats`](super::ChaosStats)).
//! - `POST /_chaos/reset`: zero the counters and forget recorded requests;
//!   answers the (zeroed) stats.
//! - `GET /_chaos/requests`: the recorded requests, oldest first:
//!   `[{"method", "uri", "version", "key", "headers": {name: value | [values]}}]`.

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Serialize;

use super::behavior::Behavior;
use super::handle::text;
use super::{SeenRequest, State};
use crate::echo::{RespBody, full};

const ROOT: &str = "/_chaos";

pub(crate) fn is_admin(path: &str) -> bool {
    path.strip_prefix(ROOT)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

pub(crate) async fn handle(state: &State, req: Request<Incoming>) -> Response<RespBody> {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/_chaos") => json(&*state.behavior.borrow()),
        (Method::POST | Method::PUT, "/_chaos") => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return text(state, StatusCode::BAD_REQUEST, format!("reading body: {e}"));
                }
            };
            let parsed = serde_json::from_slice::<Behavior>(&body)
                .map_err(|e| e.to_string())
                .and_then(|b| b.validate().map(|()| b));
            match parsed {
                Ok(behavior) => {
                    state.behavior.send_replace(behavior.clone());
                    json(&behavior)
                }
                Err(e) => text(
                    state,
                    StatusCode::BAD_REQUEST,
                    format!("invalid behavior: {e}\n"),
                ),
            }
        }
        (Method::GET, "/_chaos/stats") => json(&state.stats()),
        (Method::POST, "/_chaos/reset") => {
            state.reset();
            json(&state.stats())
        }
        (Method::GET, "/_chaos/requests") => {
            let requests: Vec<serde_json::Value> =
                state.requests().iter().map(SeenRequest::to_json).collect();
            json(&requests)
        }
        (method, "/_chaos" | "/_chaos/stats" | "/_chaos/reset" | "/_chaos/requests") => text(
            state,
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} not allowed on {path}\n"),
        ),
        _ => text(
            state,
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {path}\n"),
        ),
    }
}

fn json<T: Serialize + ?Sized>(value: &T) -> Response<RespBody> {
    let body = serde_json::to_vec(value).unwrap_or_else(|e| e.to_string().into_bytes());
    let mut resp = Response::new(full(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
