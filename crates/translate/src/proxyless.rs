//! Resources for proxyless gRPC clients (grpcio, grpc-go, grpc-java with an
//! xDS bootstrap from `trellis bootstrap grpc`).
//!
//! A channel to `xds:///reviews:9080` asks LDS for the listener named
//! `reviews:9080` (the target, not a wildcard), and follows it: the listener
//! is an `api_listener` whose HttpConnectionManager names a route
//! configuration over RDS; the routes name clusters (CDS), the clusters
//! their endpoints (EDS). So a proxyless view holds, per visible service
//! port, one listener per name the client's namespace may use for the host
//! (`reviews`, `reviews.default`, `reviews.default.svc`, the FQDN) and one
//! route configuration per service port, named `<fqdn>:<port>`.
//!
//! The routes are the sidecar's (weighted splits, header matches, retries,
//! timeouts via `max_stream_duration`, faults), minus what gRPC does not
//! implement and would NACK: per-filter configs other than fault injection
//! (the rate limit filters have no gRPC implementation). Clusters are the
//! sidecar's with the balancer gRPC has in its place ([`cluster`]).

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster::LbPolicy};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds, http_connection_manager::RouteSpecifier,
};
use prost::Message;

use crate::cluster::ads;
use crate::encode;
use crate::listener::http_filter;
use crate::names::filter as f;
use crate::route::VhostBody;

/// The name of a listener (and of the route configuration behind it) for
/// `host` on `port`, as a gRPC target names it: `xds:///<host>:<port>`.
pub fn name(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

/// The `api_listener` a gRPC channel to `xds:///<listener>` resolves: its
/// routes come over RDS from `route_config`.
pub fn listener(listener: &str, route_config: &str) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: listener.to_string(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config.to_string(),
        })),
        // gRPC implements these two (gRFC A33, fault injection; the router
        // must come last).
        http_filters: vec![
            http_filter(f::FAULT, encode::any(&HttpFault::default())),
            http_filter(f::ROUTER, encode::any(&Router::default())),
        ],
        ..Default::default()
    };
    Listener {
        name: listener.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(encode::any(&hcm)),
        }),
        ..Default::default()
    }
}

/// The route configuration `name` for a gRPC client: one virtual host
/// matching any authority (the channel has one target), with `body`'s
/// routes. Errors only if `body` does not decode, which would be a bug in
/// [`crate::route::vhost_body`].
pub fn route_config(name: &str, body: &VhostBody) -> Result<Vec<u8>, prost::DecodeError> {
    let mut vh = VirtualHost::decode(body.bytes.as_slice())?;
    vh.name.clone_from(&body.name);
    vh.domains = vec!["*".to_string()];
    // At most the fault config is left in each map, so the encoding stays
    // deterministic (prost writes HashMaps in iteration order).
    vh.typed_per_filter_config.retain(|k, _| k == f::FAULT);
    for r in &mut vh.routes {
        r.typed_per_filter_config.retain(|k, _| k == f::FAULT);
    }
    Ok(RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![vh],
        ..Default::default()
    }
    .encode_to_vec())
}

/// A sidecar's cluster (encoded) as a gRPC client can take it: gRPC
/// balances with ROUND_ROBIN or RING_HASH only, and NACKs a cluster naming
/// another policy. LEAST_REQUEST (Istio's default), RANDOM and PEAK_EWMA
/// become ROUND_ROBIN, MAGLEV becomes RING_HASH. Everything else is kept:
/// gRPC honours circuit breakers and outlier detection, and ignores the
/// HTTP protocol options and Trellis metadata.
pub fn cluster(encoded: &[u8]) -> Result<Vec<u8>, prost::DecodeError> {
    let mut c = Cluster::decode(encoded)?;
    let policy = match LbPolicy::try_from(c.lb_policy) {
        Ok(LbPolicy::RoundRobin | LbPolicy::RingHash) => return Ok(encoded.to_vec()),
        Ok(LbPolicy::Maglev) => LbPolicy::RingHash,
        _ => LbPolicy::RoundRobin,
    };
    c.lb_policy = policy as i32;
    Ok(crate::cluster::encode_cluster(&c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::{Route, route};
    use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;

    #[test]
    fn clusters_get_a_balancer_grpc_has() {
        let cases = [
            (LbPolicy::LeastRequest, LbPolicy::RoundRobin),
            (LbPolicy::Random, LbPolicy::RoundRobin),
            (LbPolicy::RoundRobin, LbPolicy::RoundRobin),
            (LbPolicy::RingHash, LbPolicy::RingHash),
            (LbPolicy::Maglev, LbPolicy::RingHash),
        ];
        for (sidecar, grpc) in cases {
            let c = Cluster {
                name: "outbound|9080||reviews".into(),
                lb_policy: sidecar as i32,
                ..Default::default()
            };
            let out = Cluster::decode(cluster(&c.encode_to_vec()).unwrap().as_slice()).unwrap();
            assert_eq!(out.lb_policy, grpc as i32, "{sidecar:?}");
            assert_eq!(out.name, c.name);
        }
    }

    #[test]
    fn the_listener_is_an_api_listener_over_rds() {
        let l = listener("reviews:9080", "reviews.default.svc.cluster.local:9080");
        assert_eq!(l.name, "reviews:9080");
        assert!(l.address.is_none(), "a proxyless listener binds nothing");
        let any = l.api_listener.unwrap().api_listener.unwrap();
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier else {
            panic!("not RDS")
        };
        assert_eq!(
            rds.route_config_name,
            "reviews.default.svc.cluster.local:9080"
        );
        let names: Vec<&str> = hcm.http_filters.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, [f::FAULT, f::ROUTER], "router last");
    }

    #[test]
    fn the_route_config_keeps_routes_and_drops_what_grpc_lacks() {
        let limit = encode::any(&LocalRateLimit::default());
        let fault = encode::any(&HttpFault::default());
        let mut r = Route {
            name: "r".into(),
            action: Some(route::Action::Route(Default::default())),
            ..Default::default()
        };
        r.typed_per_filter_config
            .insert(f::RATE_LIMIT_ROUTE.into(), limit.clone());
        r.typed_per_filter_config.insert(f::FAULT.into(), fault);
        let body = crate::route::vhost_body("reviews:9080", vec![r], Some(&limit));
        let rc =
            RouteConfiguration::decode(route_config("x:9080", &body).unwrap().as_slice()).unwrap();
        assert_eq!(rc.name, "x:9080");
        let vh = &rc.virtual_hosts[0];
        assert_eq!(vh.domains, ["*"]);
        assert!(vh.typed_per_filter_config.is_empty(), "host rate limit");
        let keys: Vec<&String> = vh.routes[0].typed_per_filter_config.keys().collect();
        assert_eq!(keys, [f::FAULT]);
    }
}
