//! Resource names and type URLs: the contract between the translation, the
//! xDS server and every proxy. Cluster names follow Istio's (and
//! trellis-proxy's `Cluster::name`): `outbound|<port>|<subset>|<fqdn>`.

/// Type URL of `envoy.config.listener.v3.Listener` (LDS).
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of `envoy.config.route.v3.RouteConfiguration` (RDS).
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Type URL of `envoy.config.cluster.v3.Cluster` (CDS).
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// Type URL of `envoy.config.route.v3.VirtualHost` (VHDS): a proxy that
/// asks for it (node metadata `VHDS`) gets its route table's virtual hosts
/// one by one.
pub const VIRTUAL_HOST_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.VirtualHost";

/// The four resource types every snapshot holds, in the order Envoy wants
/// them pushed (clusters before their endpoints, listeners before their
/// routes); a VHDS proxy's also holds [`VIRTUAL_HOST_TYPE`].
pub const TYPES: [&str; 4] = [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE];

/// The outbound listener (apps send here) and its route configuration.
pub const OUTBOUND: &str = "outbound";
/// The inbound listener (peers send here; it forwards to the local app).
pub const INBOUND: &str = "inbound";
/// The cluster of the local application, behind the inbound listener.
pub const INBOUND_APP_CLUSTER: &str = "inbound|app";
/// Outbound capture port (DESIGN.md).
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound capture port (DESIGN.md).
pub const INBOUND_PORT: u16 = 15006;

/// The key under `metadata.filter_metadata` that holds Trellis-only settings
/// Envoy has no field for (retry budget, PEAK_EWMA, ...).
pub const TRELLIS_METADATA: &str = "trellis";

/// HTTP filter names. Per-route configs (`typed_per_filter_config`) are keyed
/// by these names, so they are part of the contract.
pub mod filter {
    /// Fault injection (`envoy.extensions.filters.http.fault.v3.HTTPFault`).
    pub const FAULT: &str = "envoy.filters.http.fault";
    /// The host-wide RateLimitPolicy's bucket, configured per virtual host.
    pub const RATE_LIMIT_HOST: &str = "trellis.rate_limit.host";
    /// A named route's RateLimitPolicy bucket, configured per route. A second
    /// instance of the local rate limit filter, so that a request to a route
    /// with its own policy takes a token from both buckets, as trellis-proxy
    /// does (with one instance, Envoy's most specific per-route config wins).
    pub const RATE_LIMIT_ROUTE: &str = "trellis.rate_limit.route";
    /// `envoy.extensions.filters.http.router.v3.Router`.
    pub const ROUTER: &str = "envoy.filters.http.router";
    /// `envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager`.
    pub const HCM: &str = "envoy.filters.network.http_connection_manager";
    /// `envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy`.
    pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
    /// `envoy.extensions.filters.http.rbac.v3.RBAC` (AuthorizationPolicy).
    pub const RBAC: &str = "envoy.filters.http.rbac";
    /// `envoy.extensions.filters.network.rbac.v3.RBAC` (AuthorizationPolicy, TCP).
    pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
    /// `envoy.extensions.filters.listener.http_inspector.v3.HttpInspector`.
    pub const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";
    pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
}

/// `outbound|<port>|<subset>|<host>`, as trellis-proxy and Istio name clusters.
pub fn cluster(port: u16, subset: Option<&str>, host: &str) -> String {
    format!("outbound|{port}|{}|{host}", subset.unwrap_or(""))
}

/// Route name of a service port's default route (no VirtualService):
/// trellis-proxy's `route` metric label.
pub fn default_route(host: &str, port: u16) -> String {
    format!("default|{host}:{port}")
}

/// Route name of a VirtualService's `http[index]`: `namespace/name|<route
/// name or http[i]>`, trellis-proxy's `route` metric label.
pub fn vs_route(vs_key: &str, route_name: Option<&str>, index: usize) -> String {
    match route_name {
        Some(n) => format!("{vs_key}|{n}"),
        None => format!("{vs_key}|http[{index}]"),
    }
}

/// A virtual host's VHDS resource name: `<route configuration>/<virtual
/// host>`. Envoy gives a VirtualHost to the route configuration named by
/// what comes before the last `/`, and removes virtual hosts by their own
/// `name`, so that is the same string.
pub fn vhds(route_config: &str, virtual_host: &str) -> String {
    format!("{route_config}/{virtual_host}")
}

/// Name of the virtual host serving `host` on `port` (`*` for any port).
pub fn virtual_host(host: &str, port: Option<u16>) -> String {
    match port {
        Some(p) => format!("{host}:{p}"),
        None => format!("{host}:*"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_match_the_proxy() {
        assert_eq!(
            cluster(9080, Some("v1"), "reviews.default.svc.cluster.local"),
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        );
        assert_eq!(
            cluster(80, None, "api.example.com"),
            "outbound|80||api.example.com"
        );
    }
}
