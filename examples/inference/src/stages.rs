//! The four services of the pipeline as request handlers:
//! `gateway -> preprocess -> inference -> postprocess`. Each reads its
//! request, does its part (see `text`), calls the next hop through the
//! sidecar, and answers with the path so far.
//!
//! Handlers take any body type, so the ones that need no next hop (health,
//! postprocess, refusals) are tested without sockets.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::answer::{Answer, GenerateRequest, Hop, PostprocessRequest, PromptRequest};
use crate::client::Upstream;
use crate::failure::{ErrorBody, bad_request, error_reply};
use crate::latency::Latency;
use crate::settings::Identity;
use crate::text;
use crate::trace::{self, PROPAGATED};

/// Largest request body a stage reads.
pub const MAX_REQUEST_BODY: usize = 64 << 10;

/// What a stage does, with its settings.
#[derive(Debug, Clone)]
pub enum Role {
    Gateway {
        next: Uri,
    },
    Preprocess {
        next: Uri,
        max_prompt_chars: usize,
    },
    Inference {
        next: Uri,
        model: String,
        latency: Latency,
        max_tokens: usize,
    },
    Postprocess,
    /// The load generator: serves only its health and counters.
    Load {
        stats: std::sync::Arc<crate::load::Stats>,
    },
}

impl Role {
    /// The service this role is when `TRELLIS_SERVICE` does not say.
    pub fn default_service(&self) -> &'static str {
        match self {
            Role::Gateway { .. } => "gateway",
            Role::Preprocess { .. } => "preprocess",
            Role::Inference { .. } => "inference",
            Role::Postprocess => "postprocess",
            Role::Load { .. } => "load",
        }
    }
}

/// One running service: who it is, what it does, how it calls the next hop.
pub struct Stage {
    pub me: Identity,
    pub role: Role,
    pub upstream: Upstream,
}

type Reply = Response<Full<Bytes>>;

impl Stage {
    pub async fn handle<B>(&self, req: Request<B>) -> Reply
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let start = Instant::now();
        let ctx = trace::context(req.headers(), &mut rand::rng());
        let mut resp = self.route(req, &ctx, start).await;
        if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
            resp.headers_mut().insert("x-request-id", v);
        }
        resp
    }

    async fn route<B>(&self, req: Request<B>, ctx: &trace::Context, start: Instant) -> Reply
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path().to_string();
        if path == "/healthz" {
            return self.health(req.method());
        }
        let endpoint = match &self.role {
            Role::Gateway { .. } => "/v1/infer",
            Role::Preprocess { .. } => "/v1/preprocess",
            Role::Inference { .. } => "/v1/generate",
            Role::Postprocess => "/v1/postprocess",
            Role::Load { stats } if path == "/stats" => {
                return json(StatusCode::OK, &stats.snapshot());
            }
            Role::Load { .. } => "/healthz",
        };
        if path != endpoint {
            return self.refuse(
                StatusCode::NOT_FOUND,
                ctx,
                format!(
                    "{} serves {endpoint} and /healthz, not {path}",
                    self.me.service
                ),
            );
        }
        let gateway_get = matches!(self.role, Role::Gateway { .. }) && req.method() == Method::GET;
        if req.method() != Method::POST && !gateway_get {
            return self.refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                ctx,
                format!("{} {endpoint} takes POST with a JSON body", self.me.service),
            );
        }
        let headers = self.forwarded_headers(req.headers(), ctx);
        match &self.role {
            Role::Gateway { next } => {
                let prompt = if gateway_get {
                    req.uri()
                        .query()
                        .and_then(|q| text::query_param(q, "prompt"))
                        .unwrap_or_default()
                } else {
                    match self.read_json::<PromptRequest, _>(req, ctx).await {
                        Ok(p) => p.prompt,
                        Err(r) => return r,
                    }
                };
                if prompt.trim().is_empty() {
                    return self.refuse(
                        StatusCode::BAD_REQUEST,
                        ctx,
                        "empty prompt: POST {\"prompt\": \"...\"} or GET /v1/infer?prompt=..."
                            .to_string(),
                    );
                }
                let url = join(next, "/v1/preprocess");
                let answer = self
                    .call_next(&url, "preprocess", &headers, &PromptRequest { prompt }, ctx)
                    .await;
                self.finish(answer, ctx, start, |a| a)
            }
            Role::Preprocess {
                next,
                max_prompt_chars,
            } => {
                let p = match self.read_json::<PromptRequest, _>(req, ctx).await {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                let normalised = text::normalise(&p.prompt);
                let chars = normalised.chars().count();
                if chars == 0 || chars > *max_prompt_chars {
                    return self.refuse(
                        StatusCode::BAD_REQUEST,
                        ctx,
                        format!(
                            "the prompt has {chars} characters after normalising; between 1 and {max_prompt_chars} are accepted"
                        ),
                    );
                }
                let tokens = text::tokenise(&normalised);
                let n = tokens.len();
                let url = join(next, "/v1/generate");
                let body = GenerateRequest {
                    text: normalised,
                    tokens,
                };
                let answer = self
                    .call_next(&url, "inference", &headers, &body, ctx)
                    .await;
                self.finish(answer, ctx, start, |mut a| {
                    a.input_tokens = n;
                    a
                })
            }
            Role::Inference {
                next,
                model,
                latency,
                max_tokens,
            } => {
                let g = match self.read_json::<GenerateRequest, _>(req, ctx).await {
                    Ok(g) => g,
                    Err(r) => return r,
                };
                tokio::time::sleep(self.think_time(latency, &ctx.request_id)).await;
                let tokens = text::generate(model, &g.tokens, *max_tokens);
                let url = join(next, "/v1/postprocess");
                let body = PostprocessRequest {
                    model: model.clone(),
                    tokens,
                };
                let answer = self
                    .call_next(&url, "postprocess", &headers, &body, ctx)
                    .await;
                self.finish(answer, ctx, start, |mut a| {
                    a.model = model.clone();
                    a
                })
            }
            Role::Postprocess => {
                let p = match self.read_json::<PostprocessRequest, _>(req, ctx).await {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                let answer = Answer {
                    request_id: ctx.request_id.clone(),
                    answer: text::format_answer(&p.tokens),
                    model: p.model,
                    input_tokens: 0,
                    output_tokens: p.tokens.len(),
                    path: Vec::new(),
                };
                self.finish(Ok(answer), ctx, start, |a| a)
            }
            Role::Load { .. } => self.health(&Method::GET),
        }
    }

    /// The model's latency for this request: seeded by request id and
    /// workload, so the same request on the same replica takes as long again.
    fn think_time(&self, latency: &Latency, request_id: &str) -> Duration {
        let seed = u64::from(text::fnv1a(request_id.as_bytes())) << 32
            | u64::from(text::fnv1a(self.me.workload.as_bytes()));
        latency.sample(seed)
    }

    fn health(&self, method: &Method) -> Reply {
        if method != Method::GET && method != Method::HEAD {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                &serde_json::json!({"error": "GET /healthz"}),
            );
        }
        json(
            StatusCode::OK,
            &serde_json::json!({
                "status": "ok",
                "service": self.me.service,
                "workload": self.me.workload,
                "version": self.me.version,
            }),
        )
    }

    /// The headers for the call to the next hop: the trace headers as
    /// received, the request id (made here if the client sent none) and
    /// this stage's `traceparent`.
    fn forwarded_headers(&self, incoming: &HeaderMap, ctx: &trace::Context) -> HeaderMap {
        let mut out = HeaderMap::new();
        for name in PROPAGATED {
            if let Some(v) = incoming.get(*name) {
                out.insert(*name, v.clone());
            }
        }
        if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
            out.insert("x-request-id", v);
        }
        if let Ok(v) = HeaderValue::from_str(&ctx.outgoing_traceparent) {
            out.insert("traceparent", v);
        }
        out
    }

    async fn read_json<T: DeserializeOwned, B>(
        &self,
        req: Request<B>,
        ctx: &trace::Context,
    ) -> Result<T, Reply>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let body = http_body_util::Limited::new(req.into_body(), MAX_REQUEST_BODY)
            .collect()
            .await
            .map_err(|e| {
                self.refuse(
                    StatusCode::BAD_REQUEST,
                    ctx,
                    format!("cannot read the request body (at most {MAX_REQUEST_BODY} bytes): {e}"),
                )
            })?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| {
            self.refuse(
                StatusCode::BAD_REQUEST,
                ctx,
                format!(
                    "the request body is not the JSON {} expects: {e}",
                    self.me.service
                ),
            )
        })
    }

    async fn call_next<B: Serialize>(
        &self,
        url: &Uri,
        callee: &str,
        headers: &HeaderMap,
        body: &B,
        ctx: &trace::Context,
    ) -> Result<Answer, (StatusCode, ErrorBody)> {
        self.upstream
            .call::<B, Answer>(Method::POST, url, headers, Some(body))
            .await
            .map(|r| r.body)
            .map_err(|f| {
                error_reply(
                    &self.me.service,
                    &self.me.workload,
                    callee,
                    &ctx.request_id,
                    &f,
                )
            })
    }

    fn finish(
        &self,
        answer: Result<Answer, (StatusCode, ErrorBody)>,
        ctx: &trace::Context,
        start: Instant,
        edit: impl FnOnce(Answer) -> Answer,
    ) -> Reply {
        match answer {
            Ok(a) => {
                let ms = start.elapsed().as_secs_f64() * 1000.0;
                let hop = Hop::new(&self.me, ms, &ctx.request_id, &ctx.trace_id);
                let mut a = edit(a).through(hop);
                a.request_id.clone_from(&ctx.request_id);
                json(StatusCode::OK, &a)
            }
            Err((status, body)) => json(status, &body),
        }
    }

    fn refuse(&self, status: StatusCode, ctx: &trace::Context, why: String) -> Reply {
        json(
            status,
            &bad_request(&self.me.service, &self.me.workload, &ctx.request_id, why),
        )
    }
}

/// `base` (`http://inference:9090`) with `path`.
fn join(base: &Uri, path: &str) -> Uri {
    let s = format!("{}{path}", base.to_string().trim_end_matches('/'));
    s.parse().unwrap_or_else(|_| base.clone())
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Reply {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|e| {
        format!("{{\"error\":\"cannot encode the answer: {e}\"}}").into_bytes()
    });
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
