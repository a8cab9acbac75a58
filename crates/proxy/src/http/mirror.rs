//! Istio's request mirroring: fire-and-forget copies of a share of a
//! route's requests to another cluster, with `-shadow` appended to the
//! host. A copy never delays or fails the primary request: it runs in its
//! own task, its response is read and thrown away, and it gives up after
//! the route timeout (or [`MIRROR_TIMEOUT`]). A worker keeps at most
//! [`MAX_IN_FLIGHT`] copies in flight, so a mirror target that hangs costs
//! bounded memory and connections; copies over that are skipped and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::Authority;
use http_body_util::BodyExt;

use super::forward;
use super::upstream::{RequestTemplate, shadow_authority};
use crate::route::Mirror;
use crate::telemetry::metrics::MirrorResult;
use crate::worker::Worker;

/// How long a copy may take when the route sets no timeout.
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);
/// Copies in flight per worker.
pub const MAX_IN_FLIGHT: usize = 256;

/// Counts a worker's copies in flight; the guard gives the slot back.
#[derive(Debug, Default)]
pub struct InFlight(Arc<AtomicUsize>);

struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl InFlight {
    fn try_take(&self) -> Option<Slot> {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(self.0.clone());
        (n < MAX_IN_FLIGHT).then_some(slot)
    }
}

/// Send a copy of `template` to the mirror's cluster, in the background.
/// The body must be complete in the template's buffer (or absent).
pub fn spawn(
    w: &Worker,
    m: &Mirror,
    template: &RequestTemplate,
    authority: &Authority,
    route_timeout: Option<Duration>,
) {
    let stats = m.cluster.stats.clone();
    let Some(slot) = w.mirrors.try_take() else {
        stats.mirror(MirrorResult::SkippedLimit);
        return;
    };
    let Some(endpoint) = m.cluster.balancer.pick(None, &[]) else {
        stats.mirror(MirrorResult::Failed);
        return;
    };
    let Some(shadow) = shadow_authority(authority) else {
        stats.mirror(MirrorResult::Failed);
        return;
    };
    let mut req = template.build();
    if forward::set_target(
        &mut req,
        m.cluster.protocol,
        shadow,
        template.path_and_query(),
    )
    .is_err()
    {
        stats.mirror(MirrorResult::Failed);
        return;
    }
    let pool = w.pool.clone();
    let cluster = m.cluster.clone();
    let timeout = route_timeout.unwrap_or(MIRROR_TIMEOUT);
    tokio::spawn(async move {
        let _slot = slot;
        let exchange = async {
            let resp = forward::send(
                &pool,
                cluster.protocol,
                endpoint.addr,
                cluster.tls.for_endpoint(&endpoint.labels).map(|t| &**t),
                &cluster.upstream,
                &cluster.breaker,
                req,
            )
            .await
            .ok()?;
            // Read to the end so the connection goes back to the pool.
            resp.into_body().collect().await.ok()
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Some(_)) => stats.mirror(MirrorResult::Sent),
            _ => stats.mirror(MirrorResult::Failed),
        }
    });
}
