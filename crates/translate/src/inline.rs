//! A static Envoy bootstrap from a snapshot: what a proxy would get over
//! ADS, inlined, so that `envoy --mode validate` can check every field the
//! translation emits (and so a snapshot can be run by hand, without a
//! control plane). EDS clusters become STATIC ones with their assignment
//! inlined; the outbound listener gets its route table inline instead of
//! from RDS. Pure: the caller writes the file.

use envoy_types::pb::envoy::config::bootstrap::v3::{Bootstrap, bootstrap::StaticResources};
use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster,
    cluster::{ClusterDiscoveryType, DiscoveryType},
};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter::ConfigType};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use thiserror::Error;

use crate::Snapshot;
use crate::encode::{self, boolv};
use crate::names::{self, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};

#[derive(Debug, Error)]
pub enum InlineError {
    #[error("resource {name} ({type_url}) does not decode: {source}")]
    Decode {
        type_url: String,
        name: String,
        source: prost::DecodeError,
    },
    #[error("listener {listener} wants route configuration {route}, which the snapshot lacks")]
    MissingRoute { listener: String, route: String },
}

fn decode<M: Message + Default>(any: &Any, name: &str) -> Result<M, InlineError> {
    M::decode(any.value.as_slice()).map_err(|source| InlineError::Decode {
        type_url: any.type_url.clone(),
        name: name.to_string(),
        source,
    })
}

/// The snapshot as a bootstrap with only `static_resources`, for node `node_id`.
pub fn static_bootstrap(snap: &Snapshot, node_id: &str) -> Result<Bootstrap, InlineError> {
    let mut listeners = Vec::new();
    for (name, r) in snap.of_type(LISTENER_TYPE).into_iter().flatten() {
        let mut l: Listener = decode(&r.any, name)?;
        inline_routes(&mut l, snap)?;
        listeners.push(l);
    }
    let mut clusters = Vec::new();
    for (name, r) in snap.of_type(CLUSTER_TYPE).into_iter().flatten() {
        let mut c: Cluster = decode(&r.any, name)?;
        if c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)) {
            let service = c
                .eds_cluster_config
                .take()
                .map(|e| e.service_name)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| c.name.clone());
            let cla = match snap.get(ENDPOINT_TYPE, &service) {
                Some(r) => decode(&r.any, &service)?,
                // EDS would leave the cluster without endpoints too.
                None => ClusterLoadAssignment {
                    cluster_name: service,
                    ..Default::default()
                },
            };
            c.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
            c.load_assignment = Some(cla);
        }
        clusters.push(c);
    }
    Ok(Bootstrap {
        node: Some(Node {
            id: node_id.to_string(),
            cluster: "trellis".to_string(),
            ..Default::default()
        }),
        static_resources: Some(StaticResources {
            listeners,
            clusters,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Replaces RDS in the listener's HTTP connection managers with the route
/// table itself. Inline tables are checked against the clusters
/// (`validate_clusters`), so a route to a cluster the snapshot lacks fails
/// validation instead of answering 503 at run time.
fn inline_routes(l: &mut Listener, snap: &Snapshot) -> Result<(), InlineError> {
    let chains = l
        .filter_chains
        .iter_mut()
        .chain(l.default_filter_chain.as_mut());
    for chain in chains {
        for f in &mut chain.filters {
            if f.name != names::filter::HCM {
                continue;
            }
            let Some(ConfigType::TypedConfig(any)) = &mut f.config_type else {
                continue;
            };
            if any.type_url != HttpConnectionManager::type_url() {
                continue;
            }
            let mut hcm: HttpConnectionManager = decode(any, &l.name)?;
            if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
                let r = snap
                    .get(ROUTE_TYPE, &rds.route_config_name)
                    .ok_or_else(|| InlineError::MissingRoute {
                        listener: l.name.clone(),
                        route: rds.route_config_name.clone(),
                    })?;
                let mut rc =
                    crate::route::decode(&r.any.value).map_err(|source| InlineError::Decode {
                        type_url: ROUTE_TYPE.to_string(),
                        name: r.name.clone(),
                        source,
                    })?;
                rc.validate_clusters = Some(boolv(true));
                hcm.route_specifier = Some(RouteSpecifier::RouteConfig(rc));
                *any = encode::any(&hcm);
            }
        }
    }
    Ok(())
}
