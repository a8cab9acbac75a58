//! Opaque TCP: bytes proxied as they come, with half-close carried through
//! (a FIN from one side shuts down writing to the other, and the reverse
//! direction keeps flowing until it closes too).

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::http::{Body, ProxyError};
use crate::peer::PeerInfo;
use crate::route::{self, PortRoutes};
use crate::telemetry::metrics::{ConnectionGuard, Direction};
use crate::tls::origination::UpstreamIo;
use crate::worker::Worker;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Copy both ways until both sides have closed; returns bytes moved.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> u64
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::io::copy_bidirectional(a, b).await {
        Ok((x, y)) => x + y,
        Err(e) => {
            tracing::debug!(error = %e, "tcp connection ended with an error");
            0
        }
    }
}

pub async fn connect(addr: SocketAddr) -> Result<TcpStream, ProxyError> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ProxyError::ConnectTimeout {
            addr,
            timeout: CONNECT_TIMEOUT,
        })?
        .map_err(|source| ProxyError::ConnectFailed { addr, source })?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// `CONNECT host:port`: open a tunnel to an opaque (TCP/TLS) port of a
/// service, chosen by its tcp routes and balancer. Answers 200 once the
/// upstream connection is up, so a failure is still an explained HTTP error.
pub async fn connect_tunnel(
    w: &Worker,
    routes: &PortRoutes,
    host: &str,
    port: u16,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let PortRoutes::Tcp(routes) = routes else {
        return Err(ProxyError::ConnectToHttpPort {
            host: host.to_string(),
            port,
        });
    };
    let tcp_route = route::select_tcp(routes, port).ok_or_else(|| ProxyError::NoRouteMatch {
        host: host.to_string(),
    })?;
    let roll = rand::random_range(0..tcp_route.total_weight.max(1));
    let i = route::pick_weighted(tcp_route.destinations.iter().map(|d| d.0), roll).unwrap_or(0);
    let cluster = &tcp_route.destinations[i].1;
    let endpoint =
        cluster
            .balancer
            .pick(None, &[])
            .ok_or_else(|| ProxyError::NoHealthyUpstream {
                cluster: cluster.name.to_string(),
            })?;
    let tcp = connect(endpoint.addr).await?;
    let tls = cluster.tls.for_endpoint(&endpoint.labels).map(|t| &**t);
    let mut upstream = UpstreamIo::secure(endpoint.addr, tcp, tls, w.credentials.as_ref()).await?;
    let bytes = w.metrics.tcp_bytes(Direction::outbound, &cluster.name);
    let guard = endpoint.start_request();
    // Keeps the downstream connection counted (and drained) while the tunnel runs.
    let connection = req.extensions().get::<ConnectionGuard>().cloned();
    tokio::spawn(async move {
        let _guards = (guard, connection);
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let mut down = TokioIo::new(upgraded);
                bytes.inc_by(splice(&mut down, &mut upstream).await);
            }
            Err(e) => tracing::debug!(%peer, error = %e, "CONNECT tunnel was not established"),
        }
    });
    Ok(Response::new(Body::Empty))
}

/// Inbound opaque connection: straight to the app.
pub async fn to_app<S>(w: &Worker, peer: &PeerInfo, mut stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(app) = w.app else {
        w.metrics
            .local_reply(Direction::inbound, ProxyError::NoApp.reason());
        return;
    };
    match connect(app).await {
        Ok(mut upstream) => {
            let n = splice(&mut stream, &mut upstream).await;
            w.metrics.tcp_bytes(Direction::inbound, "app").inc_by(n);
        }
        Err(e) => {
            w.metrics.local_reply(Direction::inbound, e.reason());
            tracing::debug!(peer = %peer.addr, error = %e, "inbound tcp: app unreachable");
        }
    }
}
