//! The inbound request path: a peer calls the local app through the proxy.

use std::sync::Arc;
use std::time::Instant;

use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use super::forward::{self, is_upgrade, strip_hop_by_hop};
use super::{Body, ProxyError};
use crate::authz::enforce;
use crate::cluster::UpstreamProtocol;
use crate::peer::PeerInfo;
use crate::telemetry::metrics::{ConnectionGuard, Direction};
use crate::worker::Worker;

pub async fn handle(
    w: Arc<Worker>,
    peer: Arc<PeerInfo>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let start = Instant::now();
    let grpc = super::outbound::is_grpc(&req);
    let result = match enforce::check_request(&w, &peer, &req) {
        Ok(()) => {
            peer.set_xfcc(req.headers_mut());
            forward(&w, req).await
        }
        Err(denied) => Err(denied),
    };
    match result {
        Ok(resp) => {
            w.inbound.record(resp.status().as_u16(), start.elapsed());
            resp
        }
        Err(err) => {
            w.inbound.record(err.status().as_u16(), start.elapsed());
            w.metrics.local_reply(Direction::inbound, err.reason());
            err.to_response_for(grpc)
        }
    }
}

async fn forward(w: &Worker, mut req: Request<Incoming>) -> Result<Response<Body>, ProxyError> {
    let app = w.app.ok_or(ProxyError::NoApp)?;
    // The app gets the protocol the caller spoke.
    let protocol = if req.version() == Version::HTTP_2 {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    };
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => match req.headers().get(http::header::HOST) {
            Some(h) => Authority::try_from(h.as_bytes())
                .map_err(|e| ProxyError::BadRequest(format!("invalid Host header: {e}")))?,
            None => Authority::from_static("localhost"),
        },
    };
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let upgrade = is_upgrade(&req);
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let connection = req.extensions().get::<ConnectionGuard>().cloned();
    let mut up = req.map(Body::Incoming);
    strip_hop_by_hop(up.headers_mut(), upgrade);
    forward::set_target(&mut up, protocol, authority, path)?;
    let mut resp = forward::send(
        &w.pool,
        protocol,
        app,
        None,
        &w.app_upstream,
        &w.app_breaker,
        up,
    )
    .await?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(down) = downstream_upgrade {
            let up = hyper::upgrade::on(&mut resp);
            forward::splice_upgrade(
                down,
                up,
                w.metrics.tcp_bytes(Direction::inbound, "app"),
                connection,
            );
        }
    } else {
        strip_hop_by_hop(resp.headers_mut(), false);
    }
    Ok(resp)
}
