//! Connected proxies in the API: `GET /api/v1/proxies`, and the
//! `status.proxies` of each resource.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use trellis_xds::{ConnectionStatus, type_url};

use crate::ControlPlane;
use crate::store::{Key, ProxyRef};
use crate::xds::in_sync;

/// The newest stream of each node (an overlapping reconnect briefly has two).
fn streams(plane: &ControlPlane) -> Vec<ConnectionStatus> {
    let mut by_node: BTreeMap<String, ConnectionStatus> = BTreeMap::new();
    for s in plane
        .xds_server()
        .map(|x| x.connections())
        .unwrap_or_default()
    {
        match by_node.get(&s.connection.node.id) {
            Some(old) if old.connection.id > s.connection.id => {}
            _ => {
                by_node.insert(s.connection.node.id.clone(), s);
            }
        }
    }
    by_node.into_values().collect()
}

/// The proxy on stream `s` ACKed everything it was sent, and what it was
/// sent is the newest config made for it: the stream serves the snapshot
/// the control plane last gave its node (between the two, a new
/// generation's responses are not yet pending and the old ACKs would
/// count).
fn acked(plane: &ControlPlane, s: &ConnectionStatus) -> bool {
    in_sync(s)
        && plane
            .mesh
            .served(&s.connection.node.id)
            .is_some_and(|served| served.taken_by(s))
}

/// The connected proxies that were sent a config holding `key` as it is
/// now: the store generation of the last config a proxy was sent is at
/// least the one where the resource last changed, and the resource is part
/// of that proxy's view (`exportTo`, its Sidecar; [`crate::reach`]).
pub fn holding(plane: &ControlPlane, key: &Key) -> Vec<ProxyRef> {
    let Some(since) = plane.mesh.changed_at(key) else {
        return Vec::new();
    };
    streams(plane)
        .into_iter()
        .filter_map(|s| {
            let (generation, held) = plane.mesh.holds(&s.connection.node.id, key)?;
            (held && generation >= since).then(|| ProxyRef {
                node: s.connection.node.id.clone(),
                generation,
                acked: acked(plane, &s),
            })
        })
        .collect()
}

/// `GET /api/v1/workloads`: the registry.
pub fn workloads(plane: &ControlPlane) -> Value {
    let now = std::time::Instant::now();
    let items: Vec<Value> = plane
        .mesh
        .registrations()
        .into_iter()
        .map(|(node, r)| {
            let (workload, error) = match &r.info {
                Ok(i) => (workload_json(i), Value::Null),
                Err(e) => (Value::Null, json!(e.to_string())),
            };
            json!({
                "node": node,
                "workload": workload,
                "error": error,
                "connected": !r.streams.is_empty(),
                "disconnectedFor": r.gone_since.map(|t| now.saturating_duration_since(t).as_secs_f64()),
            })
        })
        .collect();
    json!({"items": items})
}

fn workload_json(i: &crate::registry::NodeInfo) -> Value {
    let w = &i.workload;
    json!({
        "name": w.name,
        "namespace": w.namespace,
        "serviceAccount": w.service_account,
        "labels": w.labels,
        "addresses": w.addresses,
        "ports": w.ports,
        "locality": w.locality,
        "healthy": w.healthy,
        "address": i.identity.address,
        "outboundPort": i.identity.outbound_port,
        "inboundPort": i.identity.inbound_port,
        "app": i.identity.app,
    })
}

/// Per connected node: the store generation it was last sent, and whether
/// it ACKed everything.
pub fn sync_by_node(plane: &ControlPlane) -> BTreeMap<String, (Option<u64>, bool)> {
    streams(plane)
        .iter()
        .map(|s| {
            let node = s.connection.node.id.clone();
            let generation = plane.mesh.served(&node).map(|x| x.store_generation);
            (node, (generation, acked(plane, s)))
        })
        .collect()
}

/// The type a user names (`listeners`, `lds`, `Listener`, ...).
pub fn parse_type(s: &str) -> Option<&'static str> {
    match s.to_ascii_lowercase().as_str() {
        "listeners" | "listener" | "lds" => Some(type_url::LISTENER),
        "routes" | "route" | "routeconfiguration" | "rds" => Some(type_url::ROUTE),
        "virtualhosts" | "virtualhost" | "vhds" => Some(type_url::VIRTUAL_HOST),
        "clusters" | "cluster" | "cds" => Some(type_url::CLUSTER),
        "endpoints" | "endpoint" | "clusterloadassignment" | "eds" => Some(type_url::ENDPOINT),
        "secrets" | "secret" | "secrets-names-only" | "sds" => Some(type_url::SECRET),
        _ => None,
    }
}

/// `GET /api/v1/proxies/{node}/config`: per type, what the node's newest
/// stream was last sent (names, versions, the resources as JSON), and what
/// the proxy said of it. Secrets by name only: their bodies hold private
/// keys. None if the node has no open stream.
pub fn config(plane: &ControlPlane, node: &str, only: Option<&str>) -> Option<Value> {
    let id = streams(plane)
        .into_iter()
        .find(|s| s.connection.node.id == node)?
        .connection
        .id;
    let (status, sent) = plane.xds_server()?.sent(id)?;
    let types: serde_json::Map<String, Value> = status
        .types
        .iter()
        .filter(|(t, _)| only.is_none_or(|o| o == t.as_str()))
        .map(|(t, st)| {
            let secret = t.as_str() == type_url::SECRET;
            let resources: Vec<Value> = sent
                .get(t)
                .into_iter()
                .flatten()
                .map(|(name, r)| {
                    if secret {
                        json!({"name": name, "version": r.version})
                    } else {
                        json!({
                            "name": name,
                            "version": r.version,
                            "resource": super::xds_json::resource(t, &r.body),
                        })
                    }
                })
                .collect();
            (
                type_url::short_name(t).to_string(),
                json!({
                    "typeUrl": t,
                    "sent": st.sent_version,
                    "acked": st.acked_version,
                    "pending": st.pending,
                    "inSync": !st.pending && st.sent_version.is_some() && st.acked_version == st.sent_version,
                    "lastNack": st.last_nack.as_ref().map(|n| json!({
                        "version": n.rejected_version,
                        "message": n.message,
                    })),
                    "resources": resources,
                }),
            )
        })
        .collect();
    let served = plane.mesh.served(node);
    Some(json!({
        "node": node,
        "connection": id,
        "mode": status.connection.mode.as_str(),
        "generation": served.map(|s| s.store_generation),
        "acked": acked(plane, &status),
        "types": types,
    }))
}

/// `GET /api/v1/proxies`.
pub fn list(plane: &ControlPlane) -> Value {
    let items: Vec<Value> = streams(plane)
        .iter()
        .map(|s| {
            let c = &s.connection;
            let info = plane.mesh.node_info(&c.node.id);
            let (workload, error) = match &info {
                Some(Ok(i)) => (workload_json(i), Value::Null),
                Some(Err(e)) => (Value::Null, json!(e.to_string())),
                None => (Value::Null, Value::Null),
            };
            let served = plane.mesh.served(&c.node.id);
            let connected_ms = c
                .connected_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let types: serde_json::Map<String, Value> = s
                .types
                .iter()
                .map(|(t, st)| {
                    (
                        type_url::short_name(t).to_string(),
                        json!({
                            "sent": st.sent_version,
                            "acked": st.acked_version,
                            "pending": st.pending,
                            "pushes": st.pushes,
                            "resourcesSent": st.resources_sent,
                            "acks": st.acks,
                            "nacks": st.nacks,
                            "lastNack": st.last_nack.as_ref().map(|n| json!({
                                "version": n.rejected_version,
                                "message": n.message,
                            })),
                        }),
                    )
                })
                .collect();
            json!({
                "node": c.node.id,
                "connection": c.id,
                "mode": c.mode.as_str(),
                "peer": c.peer,
                "connectedAt": super::view::rfc3339(connected_ms),
                "workload": workload,
                "error": error,
                "generation": served.map(|s| s.store_generation),
                "acked": acked(plane, s),
                "current": plane.mesh.current(&c.node.id),
                "types": types,
            })
        })
        .collect();
    json!({
        "generation": plane.subscribe().borrow().generation,
        "items": items,
    })
}
