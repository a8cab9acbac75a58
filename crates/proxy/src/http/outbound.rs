//! The outbound request path: the app calls a service through the proxy.
//!
//! authority -> virtual host -> route (first match) -> weighted destination ->
//! endpoint (balancer) -> pooled upstream connection. Decisions are the pure
//! functions of `route` and `balance`; this file only wires them to I/O.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::forward::{self, is_upgrade, strip_hop_by_hop};
use super::{Body, ProxyError};
use crate::balance::hash_key::request_hash;
use crate::cluster::{Cluster, UpstreamProtocol};
use crate::config::ProxyConfig;
use crate::route::{self, PortRoutes, RequestView};
use crate::telemetry::metrics::{ConnectionGuard, Direction, RouteStats};
use crate::worker::Worker;

/// Handle one request; never fails (errors become explained local replies).
pub async fn handle(w: Arc<Worker>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let start = Instant::now();
    let config = w.store.current.load_full();
    match forward(&w, &config, peer, req, start).await {
        Ok(resp) => resp,
        Err((err, stats)) => {
            let stats = stats.unwrap_or(&w.unrouted);
            stats.record(err.status().as_u16(), start.elapsed());
            w.metrics.local_reply(Direction::outbound, err.reason());
            tracing::debug!(reason = err.reason(), error = %err, "local reply");
            err.to_response()
        }
    }
}

type Failure<'c> = (ProxyError, Option<&'c RouteStats>);

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
) -> Result<Response<Body>, Failure<'c>> {
    let authority = authority(&req).map_err(|e| (e, None))?;
    let host = authority.host().trim_end_matches('.');
    let port = authority.port_u16().unwrap_or(80);
    let vhost = config.outbound.find(host).ok_or_else(|| {
        (
            ProxyError::UnknownHost {
                host: host.to_string(),
            },
            None,
        )
    })?;
    let routes = vhost.routes_for(port).ok_or_else(|| {
        (
            ProxyError::UnknownPort {
                host: vhost.name.clone(),
                port,
                ports: vhost.port_list(),
            },
            None,
        )
    })?;

    if req.method() == Method::CONNECT {
        return crate::tcp::connect_tunnel(w, routes, &vhost.name, port, peer, req)
            .await
            .map_err(|e| (e, None));
    }
    let PortRoutes::Http(routes) = routes else {
        return Err((
            ProxyError::NotHttpPort {
                host: vhost.name.clone(),
                port,
            },
            None,
        ));
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
    let (route, matched) = route::select(routes, &view).ok_or_else(|| {
        (
            ProxyError::NoRouteMatch {
                host: vhost.name.clone(),
            },
            None,
        )
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
    let stats = Some(&dest.stats);
    let cluster: &Cluster = &dest.cluster;
    let hash = cluster
        .hash_key
        .as_ref()
        .and_then(|k| request_hash(k, req.headers(), req.uri(), peer.ip()));
    let endpoint = cluster.balancer.pick(hash, &[]).ok_or_else(|| {
        (
            ProxyError::NoHealthyUpstream {
                cluster: cluster.name.to_string(),
            },
            stats,
        )
    })?;

    // Without a rewrite the parsed parts are reused as they are (clones of
    // shared bytes); only a rewrite builds new ones.
    let path_and_query = match action.rewrite.as_ref().and_then(|r| r.uri.as_ref()) {
        Some(rw) => {
            let path = route::rewrite_path(rw, matched, req.uri().path(), req.uri().query());
            PathAndQuery::try_from(path).map_err(|e| {
                (
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
            (
                ProxyError::BadRequest(format!("rewritten authority: {e}")),
                stats,
            )
        })?,
        None => authority,
    };

    let upgrade = is_upgrade(&req);
    if upgrade && cluster.protocol == UpstreamProtocol::Http2 {
        return Err((
            ProxyError::UpgradeUnsupported {
                cluster: cluster.name.to_string(),
            },
            stats,
        ));
    }
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let connection = req.extensions().get::<ConnectionGuard>().cloned();
    let mut up = req.map(Body::Incoming);
    strip_hop_by_hop(up.headers_mut(), upgrade);
    action.headers.request.apply(up.headers_mut());
    dest.headers.request.apply(up.headers_mut());
    forward::set_target(&mut up, cluster.protocol, out_authority, path_and_query)
        .map_err(|e| (e, stats))?;

    let guard = endpoint.start_request();
    let sent = forward::send(&w.pool, cluster.protocol, endpoint.addr, up);
    let result = match action.timeout {
        Some(t) => {
            tokio::time::timeout(t, sent)
                .await
                .unwrap_or(Err(ProxyError::UpstreamTimeout {
                    addr: endpoint.addr,
                    timeout: t,
                }))
        }
        None => sent.await,
    };
    let mut resp = result.map_err(|e| (e, stats))?;
    guard.finish(start.elapsed());
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
