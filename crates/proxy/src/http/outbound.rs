//! The outbound request path: the app calls a service through the proxy.
//!
//! authority -> virtual host -> route (first match) -> weighted destination ->
//! endpoint (balancer) -> pooled upstream connection. Decisions are the pure
//! functions of `route` and `balance`; this file only wires them to I/O.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::forward::{self, is_upgrade, strip_hop_by_hop};
use super::replay::DEFAULT_REPLAY_LIMIT;
use super::upstream::{self, RequestTemplate};
use super::{Body, ProxyError, mirror};
use crate::balance::hash_key::request_hash;
use crate::cluster::{Cluster, UpstreamProtocol};
use crate::config::ProxyConfig;
use crate::resilience::fault::Abort;
use crate::route::{self, PortRoutes, RequestView};
use crate::telemetry::metrics::{ConnectionGuard, Direction, MirrorResult, RouteStats};
use crate::worker::Worker;

/// Handle one request; never fails (errors become explained local replies).
pub async fn handle(w: Arc<Worker>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let start = Instant::now();
    let config = w.store.current.load_full();
    let grpc = is_grpc(&req);
    match forward(&w, &config, peer, req, start, grpc).await {
        Ok(resp) => resp,
        Err(f) => {
            let stats = f.stats.unwrap_or(&w.unrouted);
            let err = f.error;
            stats.record(err.status().as_u16(), start.elapsed());
            w.metrics.local_reply(Direction::outbound, err.reason());
            tracing::debug!(reason = err.reason(), error = %err, "local reply");
            let mut resp = err.to_response_for(grpc);
            if let Some(n) = f.retried {
                resp.headers_mut()
                    .insert(upstream::RETRIED_HEADER, HeaderValue::from(n));
            }
            resp
        }
    }
}

/// A request that ends in a local reply: why, the route's metric handles if
/// it got that far, and whether retrying it was considered.
struct Failure<'c> {
    error: ProxyError,
    stats: Option<&'c RouteStats>,
    retried: Option<u32>,
}

impl From<ProxyError> for Failure<'_> {
    fn from(error: ProxyError) -> Self {
        Failure {
            error,
            stats: None,
            retried: None,
        }
    }
}

fn failed(error: ProxyError, stats: &RouteStats) -> Failure<'_> {
    Failure {
        error,
        stats: Some(stats),
        retried: None,
    }
}

/// gRPC callers get gRPC-style local replies (`grpc-status`, not an HTTP status).
pub(super) fn is_grpc(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The request's authority: absolute-form or HTTP/2 URI first, else Host.
fn authority(req: &Request<Incoming>) -> Result<Authority, ProxyError> {
    if let Some(a) = req.uri().authority() {
        return Ok(a.clone());
    }
    let host = req
        .headers()
        .get(header::HOST)
        .ok_or(ProxyError::MissingHost)?;
    Authority::try_from(host.as_bytes())
        .map_err(|e| ProxyError::BadRequest(format!("invalid Host header: {e}")))
}

async fn forward<'c>(
    w: &Worker,
    config: &'c ProxyConfig,
    peer: SocketAddr,
    mut req: Request<Incoming>,
    start: Instant,
    grpc: bool,
) -> Result<Response<Body>, Failure<'c>> {
    let authority = authority(&req)?;
    let host = authority.host().trim_end_matches('.');
    let port = authority.port_u16().unwrap_or(80);
    let vhost = config
        .outbound
        .find(host)
        .ok_or_else(|| ProxyError::UnknownHost {
            host: host.to_string(),
        })?;
    let routes = vhost
        .routes_for(port)
        .ok_or_else(|| ProxyError::UnknownPort {
            host: vhost.name.clone(),
            port,
            ports: vhost.port_list(),
        })?;

    if req.method() == Method::CONNECT {
        return Ok(crate::tcp::connect_tunnel(w, routes, &vhost.name, port, peer, req).await?);
    }
    let PortRoutes::Http(routes) = routes else {
        return Err(ProxyError::NotHttpPort {
            host: vhost.name.clone(),
            port,
        }
        .into());
    };

    let view = RequestView {
        method: req.method().as_str(),
        scheme: "http",
        authority: authority.as_str(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
        port,
    };
    let (route, matched) =
        route::select(routes, &view).ok_or_else(|| ProxyError::NoRouteMatch {
            host: vhost.name.clone(),
        })?;
    let action = &route.action;
    let dest = match action.destinations.len() {
        1 => &action.destinations[0],
        _ => {
            let roll = rand::random_range(0..action.total_weight.max(1));
            let i = route::pick_weighted(action.destinations.iter().map(|d| d.weight), roll)
                .unwrap_or(0);
            &action.destinations[i]
        }
    };
    let stats = &dest.stats;
    let cluster: &Cluster = &dest.cluster;

    for limit in [&vhost.rate_limit, &action.rate_limit]
        .into_iter()
        .flatten()
    {
        if !limit.bucket.try_take(Instant::now()) {
            limit.rejected.inc();
            return Err(failed(
                ProxyError::RateLimited {
                    policy: limit.policy.to_string(),
                },
                stats,
            ));
        }
    }
    if let Some(fault) = &action.fault {
        let d = crate::resilience::fault::decide(
            fault,
            rand::random::<f64>() * 100.0,
            rand::random::<f64>() * 100.0,
        );
        if let Some(delay) = d.delay {
            cluster.stats.fault(false);
            tokio::time::sleep(delay).await;
        }
        if let Some(abort) = d.abort {
            cluster.stats.fault(true);
            let (status, grpc_code) = match abort {
                Abort::Http(s) => (
                    StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    None,
                ),
                Abort::Grpc(c) => (StatusCode::OK, Some(c)),
            };
            return Err(failed(
                ProxyError::FaultAbort {
                    status,
                    grpc: grpc_code,
                },
                stats,
            ));
        }
    }

    let hash = cluster
        .hash_key
        .as_ref()
        .and_then(|k| request_hash(k, req.headers(), req.uri(), peer.ip()));

    // Without a rewrite the parsed parts are reused as they are (clones of
    // shared bytes); only a rewrite builds new ones.
    let path_and_query = match action.rewrite.as_ref().and_then(|r| r.uri.as_ref()) {
        Some(rw) => {
            let path = route::rewrite_path(rw, matched, req.uri().path(), req.uri().query());
            PathAndQuery::try_from(path).map_err(|e| {
                failed(
                    ProxyError::BadRequest(format!("rewritten path: {e}")),
                    stats,
                )
            })?
        }
        None => req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    let out_authority = match action.rewrite.as_ref().and_then(|r| r.authority.as_ref()) {
        Some(a) => Authority::try_from(a.as_bytes()).map_err(|e| {
            failed(
                ProxyError::BadRequest(format!("rewritten authority: {e}")),
                stats,
            )
        })?,
        None => authority,
    };

    let upgrade = is_upgrade(&req);
    if upgrade && cluster.protocol == UpstreamProtocol::Http2 {
        return Err(failed(
            ProxyError::UpgradeUnsupported {
                cluster: cluster.name.to_string(),
            },
            stats,
        ));
    }
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let connection = req.extensions().get::<ConnectionGuard>().cloned();
    strip_hop_by_hop(req.headers_mut(), upgrade);
    // An app cannot vouch for a client certificate: only the inbound
    // proxy that verified one sets this header.
    req.headers_mut().remove(crate::peer::XFCC);
    action.headers.request.apply(req.headers_mut());
    dest.headers.request.apply(req.headers_mut());
    forward::set_target(
        &mut req,
        cluster.protocol,
        out_authority.clone(),
        path_and_query,
    )
    .map_err(|e| failed(e, stats))?;
    // The route timeout starts now, after any injected delay, as Envoy's
    // router starts it after the fault filter: a delay must not use it up.
    let deadline = upstream::deadline(Instant::now(), action.timeout, req.headers(), grpc);
    let template = RequestTemplate::new(req, grpc, DEFAULT_REPLAY_LIMIT);

    // Mirrors of body-less requests go at once; others once the body has
    // been read (after the primary), since the copy is what they send.
    let mirrors: Vec<&route::Mirror> = action
        .mirrors
        .iter()
        .filter(|m| rand::random::<f64>() * 100.0 < m.percent)
        .collect();
    let body_now = template.body_complete();
    if body_now {
        for m in &mirrors {
            mirror::spawn(w, m, &template, &out_authority, action.timeout);
        }
    }
    let sent = upstream::send(w, cluster, &action.retry, hash, deadline, &template).await;
    if !body_now {
        for m in &mirrors {
            if template.body_complete() {
                mirror::spawn(w, m, &template, &out_authority, action.timeout);
            } else {
                m.cluster.stats.mirror(MirrorResult::SkippedBody);
            }
        }
    }
    let (mut resp, _endpoint) = sent.map_err(|f| Failure {
        error: f.error,
        stats: Some(stats),
        retried: f.retried,
    })?;
    dest.stats.record(resp.status().as_u16(), start.elapsed());

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(down) = downstream_upgrade {
            let up = hyper::upgrade::on(&mut resp);
            forward::splice_upgrade(
                down,
                up,
                w.metrics.tcp_bytes(Direction::outbound, &cluster.name),
                connection,
            );
        }
    } else {
        strip_hop_by_hop(resp.headers_mut(), false);
    }
    action.headers.response.apply(resp.headers_mut());
    dest.headers.response.apply(resp.headers_mut());
    Ok(resp)
}
