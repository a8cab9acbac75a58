//! The admin listener: health, effective config, metrics and log level.
//! Loopback by default; it exposes config, so never bind it publicly.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::watch::Store;
use crate::http::Body;
use crate::telemetry::logging::LogControl;
use crate::telemetry::metrics::Metrics;

pub struct Admin {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub log: Option<LogControl>,
    /// False while draining: `/ready` fails so load balancers stop sending.
    pub ready: Arc<AtomicBool>,
    /// The xDS client's state, when the config comes from a control plane.
    pub xds: Option<Arc<crate::xds::XdsStatus>>,
    /// Static facts for `/config_dump` (listeners, namespace, ...).
    pub info: serde_json::Value,
    /// The workload certificate in use, when the proxy has one.
    pub credentials: Option<crate::tls::CredentialsRx>,
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(&admin, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Body::full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("static"),
    );
    r
}

fn json_response(v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::full(serde_json::to_vec_pretty(v).unwrap_or_default()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("static"),
    );
    r
}

fn handle(admin: &Admin, req: Request<Incoming>) -> Response<Body> {
    let query = req.uri().query().unwrap_or("");
    match req.uri().path() {
        "/ready" => {
            // With xDS, not ready until the first config is applied.
            let waiting = admin
                .xds
                .as_ref()
                .is_some_and(|x| x.snapshot().applied_generation == 0);
            if !admin.ready.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if waiting {
                text(StatusCode::SERVICE_UNAVAILABLE, "no xDS config yet\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        "/live" => text(StatusCode::OK, "live\n"),
        "/config_dump" => {
            let config = admin.store.current.load();
            let rejected = admin.store.rejected.lock().ok().and_then(|r| r.clone());
            json_response(&json!({
                "proxy": admin.info,
                "config": config.dump(),
                "last_rejected": rejected,
                "xds": admin.xds.as_ref().map(|x| x.snapshot()),
                "identity": admin.credentials.as_ref().map(|c| {
                    c.borrow().as_ref().map_or_else(
                        || json!({"status": "waiting for a certificate"}),
                        |c| c.summary(),
                    )
                }),
            }))
        }
        "/stats/prometheus" | "/metrics" => {
            let mut r = text(StatusCode::OK, admin.metrics.encode());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
                    .parse()
                    .expect("static"),
            );
            r
        }
        "/logging" => {
            let Some(log) = &admin.log else {
                return text(StatusCode::NOT_IMPLEMENTED, "logging is not controllable\n");
            };
            let level = query.split('&').find_map(|kv| kv.strip_prefix("level="));
            match (req.method(), level) {
                (_, Some(level)) => match log.set(level) {
                    Ok(()) => {
                        tracing::info!(level, "log level changed");
                        text(StatusCode::OK, format!("level: {}\n", log.current()))
                    }
                    Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                },
                (&Method::GET, None) => text(StatusCode::OK, format!("level: {}\n", log.current())),
                _ => text(
                    StatusCode::BAD_REQUEST,
                    "use /logging?level=<filter>, e.g. level=debug\n",
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "admin endpoints: /ready /live /config_dump /stats/prometheus /logging?level=\n",
        ),
    }
}
