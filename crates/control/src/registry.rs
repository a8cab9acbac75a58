//! Workload auto-registration: a connecting proxy describes its workload in
//! the xDS node metadata (keys in docs/xds.md, "Node metadata"), and the
//! control plane keeps it in the registry while the proxy is connected, and
//! for a grace period after (so a reconnect does not take the workload's
//! endpoints away from everyone else).
//!
//! Plain data and functions: [`parse_node`] reads a node, [`Registrations`]
//! keeps them keyed by node id (with the ids of the streams holding each),
//! and turns them into a [`trellis_translate::Registry`]. The xDS glue
//! (`xds.rs`) calls it from the server's hooks.
//!
//! **Persistence.** Each registration is also kept in the store (table
//! `registrations`: node id -> [`encode`]d node metadata and last known
//! health), so that a restarted control plane serves every workload's
//! endpoints before its proxy reconnects. [`Registrations`] only notes which
//! node ids changed ([`Registrations::take_unsaved`]); the control plane
//! writes them in batches (`run.rs`), never one transaction per connect.
//! At start, [`Registrations::restore`] registers what was stored as
//! disconnected since the start: served at once, and gone after the
//! registration grace unless its proxy reconnects.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::health::{self, HealthCheck, Probe};
use trellis_translate::names::{INBOUND_PORT, OUTBOUND_PORT};
use trellis_translate::{ProxyIdentity, Registry, Workload};
use trellis_xds::envoy_types::pb::envoy::config::core::v3::Node;
use trellis_xds::envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};

/// The metadata keys (docs/xds.md, "Node metadata").
pub mod keys {
    pub const NAME: &str = "NAME";
    pub const NAMESPACE: &str = "NAMESPACE";
    pub const SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";
    pub const LABELS: &str = "LABELS";
    pub const ADDRESS: &str = "ADDRESS";
    pub const ADDRESSES: &str = "ADDRESSES";
    pub const PORTS: &str = "PORTS";
    pub const APP: &str = "APP";
    pub const LOCALITY: &str = "LOCALITY";
    pub const OUTBOUND_PORT: &str = "OUTBOUND_PORT";
    pub const INBOUND_PORT: &str = "INBOUND_PORT";
    pub const HEALTH_CHECK: &str = "HEALTH_CHECK";
    /// `grpc`: a proxyless gRPC client (Istio's key and value).
    pub const GENERATOR: &str = "GENERATOR";
    /// `istio`: the workload has a certificate and its sidecar terminates
    /// mTLS (Istio's `security.istio.io/tlsMode` label); `disabled` or
    /// absent: plaintext.
    pub const TLS_MODE: &str = "TLS_MODE";
    /// `true`: the proxy takes its route table's virtual hosts by VHDS
    /// (Envoy over delta ADS: `trellis bootstrap envoy --delta --vhds`).
    pub const VHDS: &str = "VHDS";
}

/// Where the inbound listener forwards when the node does not say (`APP`).
pub const DEFAULT_APP: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

/// Why a node's metadata cannot be used. The message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error(
        "node metadata has no {key}; `trellis bootstrap` sets it (see docs/xds.md, Node metadata)"
    )]
    Missing { key: &'static str },
    #[error("node metadata {key} is {value}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: &'static str,
    },
}

/// What one node says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// For the registry; shared with it, so a registry rebuilt after other
    /// workloads changed holds this same `Arc` (see `Registry::workloads`).
    pub workload: Arc<Workload>,
    /// For the proxy's own listeners (`view`).
    pub identity: ProxyIdentity,
    /// The active health check it asks for (`HEALTH_CHECK`), if any.
    pub health_check: Option<HealthCheck>,
}

/// Reads a node's metadata. Every problem is an error: a proxy whose
/// address cannot be read must not be given listeners somewhere else.
pub fn parse_node(node: &Node) -> Result<NodeInfo, MetadataError> {
    let empty = Struct::default();
    let md = node.metadata.as_ref().unwrap_or(&empty);
    let name = opt_string(md, keys::NAME)?.unwrap_or_else(|| node.id.clone());
    let namespace = opt_string(md, keys::NAMESPACE)?.unwrap_or_else(|| "default".into());
    let service_account =
        opt_string(md, keys::SERVICE_ACCOUNT)?.unwrap_or_else(|| "default".into());
    let address: IpAddr = parse(
        keys::ADDRESS,
        &opt_string(md, keys::ADDRESS)?.ok_or(MetadataError::Missing { key: keys::ADDRESS })?,
        "not an IP address",
    )?;
    let addresses = match md.fields.get(keys::ADDRESSES).and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => vec![address],
        Some(Kind::ListValue(list)) => list
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let key = format!("{}[{i}]", keys::ADDRESSES);
                let s = as_string(&key, v)?;
                parse(&key, &s, "not an IP address")
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid(keys::ADDRESSES, "not a list", "a list of IPs")),
    };
    let app = match opt_string(md, keys::APP)? {
        Some(s) => parse(keys::APP, &s, "not ip:port")?,
        None => DEFAULT_APP,
    };
    let locality = opt_string(md, keys::LOCALITY)?.filter(|l| !l.is_empty());
    let mut labels = string_map(md, keys::LABELS)?;
    match opt_string(md, keys::TLS_MODE)?.as_deref() {
        None | Some("" | "disabled") => {}
        // As a label, like Istio's injected pods: endpoints carry it to
        // callers (auto mTLS) and the proxy's own listeners read it.
        Some("istio") => {
            labels.insert(
                trellis_translate::tls::TLS_MODE_LABEL.to_string(),
                "istio".to_string(),
            );
        }
        Some(other) => {
            return Err(invalid(keys::TLS_MODE, other, "expected istio or disabled"));
        }
    }
    let ports: BTreeMap<String, u16> = string_map(md, keys::PORTS)?
        .into_iter()
        .map(|(k, v)| {
            let key = format!("{}.{k}", keys::PORTS);
            port(&key, &v).map(|p| (k, p))
        })
        .collect::<Result<_, _>>()?;
    let health_check = health_check(md, &ports)?;
    let outbound_port = opt_port(md, keys::OUTBOUND_PORT)?.unwrap_or(OUTBOUND_PORT);
    let inbound_port = opt_port(md, keys::INBOUND_PORT)?.unwrap_or(INBOUND_PORT);
    let proxyless = match opt_string(md, keys::GENERATOR)?.as_deref() {
        None | Some("") => false,
        Some("grpc") => true,
        Some(other) => {
            return Err(invalid(
                keys::GENERATOR,
                other,
                "the only generator is grpc",
            ));
        }
    };
    let vhds = match md.fields.get(keys::VHDS).and_then(|v| v.kind.as_ref()) {
        Some(Kind::BoolValue(b)) => *b,
        _ => match opt_string(md, keys::VHDS)?.as_deref() {
            None | Some("" | "false") => false,
            Some("true") => true,
            Some(other) => return Err(invalid(keys::VHDS, other, "expected true or false")),
        },
    };
    Ok(NodeInfo {
        workload: Arc::new(Workload {
            name: name.clone(),
            namespace: namespace.clone(),
            service_account,
            labels: labels.clone(),
            addresses,
            ports,
            locality: locality.clone(),
            // Healthy until a health check (`HEALTH_CHECK`) says otherwise.
            healthy: true,
        }),
        identity: ProxyIdentity {
            name,
            namespace,
            address,
            outbound_port,
            inbound_port,
            app,
            locality,
            egress: None,
            proxyless,
            labels,
            vhds,
        },
        health_check,
    })
}

/// `HEALTH_CHECK`: `{http_path | tcp, port?, interval?, timeout?,
/// healthy_threshold?, unhealthy_threshold?}`.
fn health_check(
    md: &Struct,
    ports: &BTreeMap<String, u16>,
) -> Result<Option<HealthCheck>, MetadataError> {
    const K: &str = keys::HEALTH_CHECK;
    let hc = match md.fields.get(K).and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => return Ok(None),
        Some(Kind::StructValue(s)) => s,
        Some(other) => return Err(invalid(K, &format!("{other:?}"), "not a struct")),
    };
    let field = |f: &str| -> Result<Option<(String, String)>, MetadataError> {
        let key = format!("{K}.{f}");
        match hc.fields.get(f) {
            None
            | Some(Value {
                kind: None | Some(Kind::NullValue(_)),
            }) => Ok(None),
            Some(Value {
                kind: Some(Kind::BoolValue(b)),
            }) => Ok(Some((key, b.to_string()))),
            Some(v) => as_string(&key, v).map(|s| Some((key, s))),
        }
    };
    let probe = match (field("http_path")?, field("tcp")?) {
        (Some((key, path)), None) => {
            if !path.starts_with('/') {
                return Err(invalid(&key, &format!("{path:?}"), "not a path (/...)"));
            }
            Probe::Http { path }
        }
        (None, Some((_, t))) if t == "true" => Probe::Tcp,
        (None, Some((key, t))) => {
            return Err(invalid(&key, &t, "only `true` (or leave it out)"));
        }
        _ => {
            return Err(invalid(
                K,
                "{..}",
                "needs exactly one of http_path and tcp: true",
            ));
        }
    };
    let port = match field("port")? {
        Some((key, p)) => match ports.get(&p) {
            Some(n) => *n,
            None => parse(&key, &p, "neither a PORTS name nor a port number")?,
        },
        None => match ports.values().next() {
            Some(n) => *n,
            None => return Err(invalid(K, "{..}", "no port, and PORTS is empty")),
        },
    };
    let duration = |f: &str, default: Duration| -> Result<Duration, MetadataError> {
        let Some((key, s)) = field(f)? else {
            return Ok(default);
        };
        let d = parse_duration(&s)
            .ok_or_else(|| invalid(&key, &format!("{s:?}"), "not a duration (5s, 500ms)"))?;
        if d.is_zero() {
            return Err(invalid(&key, &format!("{s:?}"), "must be more than 0"));
        }
        Ok(d)
    };
    let threshold = |f: &str, default: u32| -> Result<u32, MetadataError> {
        let Some((key, s)) = field(f)? else {
            return Ok(default);
        };
        match s.trim().parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(invalid(&key, &format!("{s:?}"), "not a count (1 or more)")),
        }
    };
    Ok(Some(HealthCheck {
        probe,
        port,
        interval: duration("interval", health::DEFAULT_INTERVAL)?,
        timeout: duration("timeout", health::DEFAULT_TIMEOUT)?,
        healthy_threshold: threshold("healthy_threshold", health::DEFAULT_HEALTHY_THRESHOLD)?,
        unhealthy_threshold: threshold("unhealthy_threshold", health::DEFAULT_UNHEALTHY_THRESHOLD)?,
    }))
}

/// `5s`, `500ms`, `1.5s`, or a plain number of seconds.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().ok()?;
    (0.0..1e9)
        .contains(&v)
        .then(|| Duration::from_secs_f64(v * scale))
}

fn invalid(key: &str, value: &str, reason: &'static str) -> MetadataError {
    MetadataError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        reason,
    }
}

fn parse<T: std::str::FromStr>(
    key: &str,
    s: &str,
    reason: &'static str,
) -> Result<T, MetadataError> {
    s.trim()
        .parse()
        .map_err(|_| invalid(key, &format!("{s:?}"), reason))
}

/// A string, or a number written as one (Istio sends every value as a string;
/// protobuf JSON sends numbers as numbers).
fn as_string(key: &str, v: &Value) -> Result<String, MetadataError> {
    match &v.kind {
        Some(Kind::StringValue(s)) => Ok(s.clone()),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.is_finite() => Ok(format!("{n:.0}")),
        other => Err(invalid(key, &format!("{other:?}"), "not a string")),
    }
}

fn opt_string(md: &Struct, key: &'static str) -> Result<Option<String>, MetadataError> {
    match md.fields.get(key) {
        None => Ok(None),
        Some(Value {
            kind: None | Some(Kind::NullValue(_)),
        }) => Ok(None),
        Some(v) => as_string(key, v).map(Some),
    }
}

fn port(key: &str, s: &str) -> Result<u16, MetadataError> {
    parse(key, s, "not a port number (0-65535)")
}

fn opt_port(md: &Struct, key: &'static str) -> Result<Option<u16>, MetadataError> {
    opt_string(md, key)?.map(|s| port(key, &s)).transpose()
}

fn string_map(md: &Struct, key: &'static str) -> Result<BTreeMap<String, String>, MetadataError> {
    match md.fields.get(key).and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => Ok(BTreeMap::new()),
        Some(Kind::StructValue(s)) => s
            .fields
            .iter()
            .map(|(k, v)| as_string(&format!("{key}.{k}"), v).map(|v| (k.clone(), v)))
            .collect(),
        Some(other) => Err(invalid(key, &format!("{other:?}"), "not a struct")),
    }
}

/// One registered node.
#[derive(Debug, Clone)]
pub struct Registration {
    /// What the newest stream of the node said; an error leaves the node
    /// out of the registry and without listeners.
    pub info: Result<NodeInfo, MetadataError>,
    /// The streams (connection ids) of this node that are open now.
    pub streams: BTreeSet<u64>,
    /// When the last stream ended (None while one is open). A registration
    /// restored from the store counts as gone since the start.
    pub gone_since: Option<Instant>,
    /// Read back from the store at start, and no stream of the node has
    /// opened since.
    pub restored: bool,
    /// The node metadata `info` was read from: what is persisted.
    pub metadata: Struct,
    /// Changes whenever `info` is replaced (a stream of the node opened),
    /// unique among every registration of the process: what is derived from
    /// `info` alone can be kept while it is the same.
    pub revision: u64,
}

/// Whether `info` is a healthy workload (an unusable node counts as healthy:
/// it has no health to keep).
fn healthy(info: &Result<NodeInfo, MetadataError>) -> bool {
    info.as_ref().map_or(true, |i| i.workload.healthy)
}

/// Registrations by node id.
#[derive(Debug, Default)]
pub struct Registrations {
    by_node: BTreeMap<String, Registration>,
    /// Node ids whose stored form may be out of date (changed, added or
    /// removed since the last [`Registrations::take_unsaved`]).
    unsaved: BTreeSet<String>,
    /// The last [`Registration::revision`] given.
    revisions: u64,
}

impl Registrations {
    fn next_revision(&mut self) -> u64 {
        self.revisions += 1;
        self.revisions
    }

    /// A stream of `node` opened. Returns whether the registry changed
    /// (a new workload, or one whose metadata changed).
    pub fn connect(&mut self, conn_id: u64, node: &Node) -> bool {
        let info = parse_node(node);
        let metadata = node.metadata.clone().unwrap_or_default();
        let workload =
            |i: &Result<NodeInfo, MetadataError>| i.as_ref().ok().map(|i| i.workload.clone());
        let revision = self.next_revision();
        match self.by_node.get_mut(&node.id) {
            Some(r) => {
                let mut info = info;
                // The same check keeps the health it has found so far (the
                // prober keeps running); a new or no check starts healthy.
                if let (Ok(old), Ok(new)) = (&r.info, &mut info)
                    && old.health_check.is_some()
                    && old.health_check == new.health_check
                {
                    Arc::make_mut(&mut new.workload).healthy = old.workload.healthy;
                }
                let changed = workload(&r.info) != workload(&info);
                // An unchanged workload keeps its `Arc`: the translation
                // reuses its services by pointer.
                if !changed && let (Ok(old), Ok(new)) = (&r.info, &mut info) {
                    new.workload = old.workload.clone();
                }
                if r.metadata != metadata || healthy(&r.info) != healthy(&info) {
                    self.unsaved.insert(node.id.clone());
                }
                r.info = info;
                r.metadata = metadata;
                r.revision = revision;
                r.streams.insert(conn_id);
                r.gone_since = None;
                r.restored = false;
                changed
            }
            None => {
                let changed = info.is_ok();
                self.by_node.insert(
                    node.id.clone(),
                    Registration {
                        info,
                        streams: BTreeSet::from([conn_id]),
                        gone_since: None,
                        restored: false,
                        metadata,
                        revision,
                    },
                );
                self.unsaved.insert(node.id.clone());
                changed
            }
        }
    }

    /// A stream ended. The registration stays (see [`Registrations::expire`]).
    pub fn disconnect(&mut self, conn_id: u64, node_id: &str, now: Instant) {
        if let Some(r) = self.by_node.get_mut(node_id) {
            r.streams.remove(&conn_id);
            if r.streams.is_empty() {
                r.gone_since = Some(now);
            }
        }
    }

    /// Removes `node_id` if it has had no stream for `grace`. Returns
    /// whether the registry changed.
    pub fn expire(&mut self, node_id: &str, grace: std::time::Duration, now: Instant) -> bool {
        let due = self.by_node.get(node_id).is_some_and(|r| {
            r.streams.is_empty()
                && r.gone_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= grace)
        });
        if !due {
            return false;
        }
        self.unsaved.insert(node_id.to_string());
        self.by_node.remove(node_id).is_some_and(|r| r.info.is_ok())
    }

    /// The health check found `node_id`'s workload `healthy` or not.
    /// Returns whether the registry changed.
    pub fn set_healthy(&mut self, node_id: &str, healthy: bool) -> bool {
        match self.by_node.get_mut(node_id).map(|r| r.info.as_mut()) {
            Some(Ok(i)) if i.workload.healthy != healthy => {
                Arc::make_mut(&mut i.workload).healthy = healthy;
                self.unsaved.insert(node_id.to_string());
                true
            }
            _ => false,
        }
    }

    /// Registers what the store held (node id, [`encode`]d), as
    /// disconnected since `now`: in the registry at once, and removed by
    /// [`Registrations::expire`] after the grace unless a stream of the node
    /// opens. The health is the last one known. A node id that is already
    /// registered is left alone. Returns the node ids restored, and the
    /// records that could not be read (node id, why): those are forgotten,
    /// and deleted from the store with the next save.
    pub fn restore(
        &mut self,
        stored: Vec<(String, Vec<u8>)>,
        now: Instant,
    ) -> (Vec<String>, Vec<(String, String)>) {
        let (mut restored, mut unreadable) = (Vec::new(), Vec::new());
        for (node_id, bytes) in stored {
            if self.by_node.contains_key(&node_id) {
                continue;
            }
            let (metadata, was_healthy) = match decode(&bytes) {
                Ok(d) => d,
                Err(reason) => {
                    self.unsaved.insert(node_id.clone());
                    unreadable.push((node_id, reason));
                    continue;
                }
            };
            let node = Node {
                id: node_id.clone(),
                metadata: Some(metadata.clone()),
                ..Default::default()
            };
            let mut info = parse_node(&node);
            if let Ok(i) = &mut info {
                Arc::make_mut(&mut i.workload).healthy = was_healthy;
            }
            let revision = self.next_revision();
            self.by_node.insert(
                node_id.clone(),
                Registration {
                    info,
                    streams: BTreeSet::new(),
                    gone_since: Some(now),
                    restored: true,
                    metadata,
                    revision,
                },
            );
            restored.push(node_id);
        }
        (restored, unreadable)
    }

    /// What to write to the store: every node id changed since the last
    /// call, with its [`encode`]d registration, or None to delete it.
    pub fn take_unsaved(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        std::mem::take(&mut self.unsaved)
            .into_iter()
            .map(|id| {
                let bytes = self
                    .by_node
                    .get(&id)
                    .map(|r| encode(&r.metadata, healthy(&r.info)));
                (id, bytes)
            })
            .collect()
    }

    /// A save failed: write these node ids with the next one.
    pub fn mark_unsaved(&mut self, node_ids: impl IntoIterator<Item = String>) {
        self.unsaved.extend(node_ids);
    }

    /// Whether [`Registrations::take_unsaved`] has anything to write.
    pub fn has_unsaved(&self) -> bool {
        !self.unsaved.is_empty()
    }

    pub fn get(&self, node_id: &str) -> Option<&Registration> {
        self.by_node.get(node_id)
    }

    /// How many nodes are registered.
    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    /// Whether no node is registered.
    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }

    /// Every registration, by node id.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Registration)> {
        self.by_node.iter()
    }

    /// The registry translation reads: every registered workload, in node
    /// id order (so equal registrations give equal resources).
    pub fn registry(&self) -> Registry {
        Registry::from_shared(
            self.by_node
                .values()
                .filter_map(|r| r.info.as_ref().ok().map(|i| i.workload.clone()))
                .collect(),
        )
    }
}

/// A registration as stored: JSON, so an operator can read it
/// (`{"metadata": {...node metadata...}, "healthy": true}`). The metadata,
/// not the parsed workload, so a restart parses it with the current rules.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    metadata: serde_json::Map<String, serde_json::Value>,
    healthy: bool,
}

/// A registration's stored form: its node metadata and last known health.
pub fn encode(metadata: &Struct, healthy: bool) -> Vec<u8> {
    let stored = Stored {
        metadata: struct_to_json(metadata),
        healthy,
    };
    // Plain maps of JSON values: serializing cannot fail.
    serde_json::to_vec(&stored).unwrap_or_default()
}

/// The inverse of [`encode`].
pub fn decode(bytes: &[u8]) -> Result<(Struct, bool), String> {
    let stored: Stored = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    Ok((json_to_struct(stored.metadata), stored.healthy))
}

fn struct_to_json(s: &Struct) -> serde_json::Map<String, serde_json::Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect()
}

fn value_to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => J::Null,
        // NaN and infinities have no JSON form (nor a meaning here).
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(J::Null, J::Number),
        Some(Kind::StringValue(s)) => J::String(s.clone()),
        Some(Kind::BoolValue(b)) => J::Bool(*b),
        Some(Kind::StructValue(s)) => J::Object(struct_to_json(s)),
        Some(Kind::ListValue(l)) => J::Array(l.values.iter().map(value_to_json).collect()),
    }
}

fn json_to_struct(m: serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: m.into_iter().map(|(k, v)| (k, json_to_value(v))).collect(),
    }
}

fn json_to_value(v: serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        J::Object(m) => Kind::StructValue(json_to_struct(m)),
    };
    Value { kind: Some(kind) }
}

/// `node` with its metadata's `NAMESPACE` and `SERVICE_ACCOUNT` set to an
/// identity its stream proved (a bootstrap token). A claim that differs is
/// overridden, with a warning: metadata is what a proxy says, the token
/// what the CA vouches for.
pub fn with_identity(node: &Node, namespace: &str, service_account: &str) -> Node {
    use envoy_types::pb::google::protobuf::{Value, value::Kind};
    let mut node = node.clone();
    let md = node.metadata.get_or_insert_with(Default::default);
    for (key, proved) in [
        (keys::NAMESPACE, namespace),
        (keys::SERVICE_ACCOUNT, service_account),
    ] {
        let claimed = md.fields.get(key).and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.as_str()),
            _ => None,
        });
        if let Some(claimed) = claimed
            && claimed != proved
        {
            tracing::warn!(
                node = %node.id,
                key,
                claimed,
                proved,
                "node metadata differs from the identity its bootstrap token proves; registering the token's"
            );
        }
        md.fields.insert(
            key.to_string(),
            Value {
                kind: Some(Kind::StringValue(proved.to_string())),
            },
        );
    }
    node
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn s(v: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(v.into())),
        }
    }

    fn n(v: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(v)),
        }
    }

    fn st(fields: &[(&str, Value)]) -> Value {
        Value {
            kind: Some(Kind::StructValue(Struct {
                fields: fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            })),
        }
    }

    fn node(id: &str, fields: &[(&str, Value)]) -> Node {
        let Some(Kind::StructValue(md)) = st(fields).kind else {
            unreachable!()
        };
        Node {
            id: id.into(),
            metadata: Some(md),
            ..Default::default()
        }
    }

    #[test]
    fn a_proved_identity_replaces_the_claimed_one() {
        let claimed = node(
            "reviews-1.prod",
            &[
                ("NAME", s("reviews-1")),
                ("NAMESPACE", s("prod")),
                ("SERVICE_ACCOUNT", s("admin")),
                ("ADDRESS", s("10.0.0.1")),
            ],
        );
        let info = parse_node(&with_identity(&claimed, "prod", "reviews")).unwrap();
        assert_eq!(info.workload.service_account, "reviews");
        assert_eq!(info.identity.namespace, "prod");
        // Nothing claimed: the proof fills it in.
        let bare = node("x.default", &[("NAME", s("x")), ("ADDRESS", s("10.0.0.2"))]);
        let info = parse_node(&with_identity(&bare, "shop", "cart")).unwrap();
        assert_eq!(
            (
                info.identity.namespace.as_str(),
                info.workload.service_account.as_str()
            ),
            ("shop", "cart")
        );
    }

    #[test]
    fn reads_every_key() {
        let info = parse_node(&node(
            "reviews-1.prod",
            &[
                ("NAME", s("reviews-1")),
                ("NAMESPACE", s("prod")),
                ("SERVICE_ACCOUNT", s("reviews")),
                ("LABELS", st(&[("app", s("reviews")), ("version", s("v2"))])),
                ("ADDRESS", s("127.0.0.7")),
                (
                    "ADDRESSES",
                    Value {
                        kind: Some(Kind::ListValue(ListValue {
                            values: vec![s("127.0.0.7"), s("::1")],
                        })),
                    },
                ),
                ("PORTS", st(&[("http", n(9080.0)), ("grpc", s("9090"))])),
                ("APP", s("127.0.0.7:9080")),
                ("LOCALITY", s("eu/west/a")),
                ("OUTBOUND_PORT", n(0.0)),
                ("INBOUND_PORT", s("16006")),
            ],
        ))
        .unwrap();
        let w = &info.workload;
        assert_eq!(
            (w.name.as_str(), w.namespace.as_str()),
            ("reviews-1", "prod")
        );
        assert_eq!(w.service_account, "reviews");
        assert_eq!(w.labels["version"], "v2");
        assert_eq!(w.addresses.len(), 2);
        assert_eq!((w.ports["http"], w.ports["grpc"]), (9080, 9090));
        assert_eq!(w.locality.as_deref(), Some("eu/west/a"));
        let p = &info.identity;
        assert_eq!(p.address.to_string(), "127.0.0.7");
        assert_eq!((p.outbound_port, p.inbound_port), (0, 16006));
        assert_eq!(p.app.to_string(), "127.0.0.7:9080");
    }

    #[test]
    fn defaults_and_errors() {
        let info = parse_node(&node("w", &[("ADDRESS", s("10.1.2.3"))])).unwrap();
        assert_eq!(info.workload.name, "w");
        assert_eq!(info.workload.namespace, "default");
        assert_eq!(info.workload.service_account, "default");
        assert_eq!(info.workload.addresses, vec![info.identity.address]);
        assert_eq!(info.identity.app, DEFAULT_APP);
        assert_eq!(
            (info.identity.outbound_port, info.identity.inbound_port),
            (15001, 15006)
        );

        let cases = [
            (node("w", &[]), "node metadata has no ADDRESS"),
            (
                node("w", &[("ADDRESS", s("nope"))]),
                "node metadata ADDRESS is \"nope\": not an IP address",
            ),
            (
                node(
                    "w",
                    &[("ADDRESS", s("10.0.0.1")), ("OUTBOUND_PORT", n(70000.0))],
                ),
                "node metadata OUTBOUND_PORT is \"70000\": not a port number",
            ),
            (
                node("w", &[("ADDRESS", s("10.0.0.1")), ("LABELS", s("a=b"))]),
                "node metadata LABELS is",
            ),
            (
                node("w", &[("ADDRESS", s("10.0.0.1")), ("APP", s("8080"))]),
                "node metadata APP is \"8080\": not ip:port",
            ),
        ];
        for (node, want) in cases {
            let err = parse_node(&node).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        }
    }

    #[test]
    fn tls_mode_becomes_istios_label() {
        let label = |v: Option<&str>| {
            let mut md = vec![("ADDRESS", s("10.0.0.1"))];
            if let Some(v) = v {
                md.push(("TLS_MODE", s(v)));
            }
            parse_node(&node("w", &md)).map(|i| {
                let (w, id) = (
                    i.workload.labels.get("security.istio.io/tlsMode").cloned(),
                    i.identity.labels.get("security.istio.io/tlsMode").cloned(),
                );
                assert_eq!(w, id, "the registry and the proxy's own listeners agree");
                w
            })
        };
        assert_eq!(label(Some("istio")), Ok(Some("istio".to_string())));
        assert_eq!(label(Some("disabled")), Ok(None));
        assert_eq!(label(None), Ok(None));
        let err = label(Some("mutual")).unwrap_err().to_string();
        assert!(
            err.contains("TLS_MODE") && err.contains("istio or disabled"),
            "{err}"
        );
    }

    #[test]
    fn vhds_is_asked_for_with_a_bool_or_its_string() {
        let vhds = |v: Option<Value>| {
            let mut md = vec![("ADDRESS", s("10.0.0.1"))];
            if let Some(v) = v {
                md.push(("VHDS", v));
            }
            parse_node(&node("w", &md)).map(|i| i.identity.vhds)
        };
        let b = |b: bool| Value {
            kind: Some(Kind::BoolValue(b)),
        };
        assert_eq!(vhds(None), Ok(false));
        assert_eq!(vhds(Some(b(true))), Ok(true));
        assert_eq!(vhds(Some(b(false))), Ok(false));
        assert_eq!(vhds(Some(s("true"))), Ok(true));
        assert_eq!(vhds(Some(s("false"))), Ok(false));
        let err = vhds(Some(s("yes"))).unwrap_err().to_string();
        assert!(
            err.contains("VHDS") && err.contains("true or false"),
            "{err}"
        );
    }

    #[test]
    fn health_check() {
        let with = |hc: Value| {
            parse_node(&node(
                "w",
                &[
                    ("ADDRESS", s("10.0.0.1")),
                    ("PORTS", st(&[("http", n(8080.0)), ("admin", s("9901"))])),
                    ("HEALTH_CHECK", hc),
                ],
            ))
            .map(|i| i.health_check)
        };
        // Defaults: the first PORTS entry (by name), 5s, 1s, 1, 2.
        let hc = with(st(&[("http_path", s("/healthz"))])).unwrap().unwrap();
        assert_eq!(
            hc,
            HealthCheck {
                probe: Probe::Http {
                    path: "/healthz".into()
                },
                port: 9901,
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(1),
                healthy_threshold: 1,
                unhealthy_threshold: 2,
            }
        );
        let hc = with(st(&[
            (
                "tcp",
                Value {
                    kind: Some(Kind::BoolValue(true)),
                },
            ),
            ("port", s("http")),
            ("interval", s("500ms")),
            ("timeout", n(2.0)),
            ("healthy_threshold", s("3")),
            ("unhealthy_threshold", n(4.0)),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(hc.probe, Probe::Tcp);
        assert_eq!((hc.port, hc.interval), (8080, Duration::from_millis(500)));
        assert_eq!(hc.timeout, Duration::from_secs(2));
        assert_eq!((hc.healthy_threshold, hc.unhealthy_threshold), (3, 4));
        assert_eq!(
            with(st(&[("tcp", s("true")), ("port", n(7000.0))]))
                .unwrap()
                .unwrap()
                .port,
            7000
        );
        let errors = [
            (
                st(&[]),
                "node metadata HEALTH_CHECK is {..}: needs exactly one",
            ),
            (s("tcp"), "node metadata HEALTH_CHECK is"),
            (
                st(&[("http_path", s("healthz"))]),
                "node metadata HEALTH_CHECK.http_path is",
            ),
            (
                st(&[("tcp", s("true")), ("port", s("grpc"))]),
                "node metadata HEALTH_CHECK.port is",
            ),
            (
                st(&[("tcp", s("true")), ("interval", s("5m"))]),
                "node metadata HEALTH_CHECK.interval is",
            ),
            (
                st(&[("tcp", s("true")), ("timeout", s("0s"))]),
                "node metadata HEALTH_CHECK.timeout is",
            ),
            (
                st(&[("tcp", s("true")), ("unhealthy_threshold", n(0.0))]),
                "node metadata HEALTH_CHECK.unhealthy_threshold is",
            ),
        ];
        for (hc, want) in errors {
            let err = with(hc).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        }
        // Without PORTS, a port must be given.
        let err = parse_node(&node(
            "w",
            &[
                ("ADDRESS", s("10.0.0.1")),
                ("HEALTH_CHECK", st(&[("tcp", s("true"))])),
            ],
        ))
        .unwrap_err();
        assert!(err.to_string().contains("PORTS is empty"), "{err}");
    }

    #[test]
    fn health_is_kept_across_a_reconnect_with_the_same_check() {
        let mut r = Registrations::default();
        let a = node(
            "a",
            &[
                ("ADDRESS", s("10.0.0.1")),
                ("HEALTH_CHECK", st(&[("tcp", s("true")), ("port", n(80.0))])),
            ],
        );
        assert!(r.connect(1, &a));
        assert!(r.set_healthy("a", false));
        assert!(!r.set_healthy("a", false), "no change");
        assert!(!r.registry().workloads[0].healthy);
        assert!(!r.connect(2, &a), "same metadata, same health");
        assert!(!r.registry().workloads[0].healthy);
        // Without the check, it is healthy again.
        assert!(r.connect(3, &node("a", &[("ADDRESS", s("10.0.0.1"))])));
        assert!(r.registry().workloads[0].healthy);
        assert!(!r.set_healthy("nobody", false));
    }

    #[test]
    fn a_reconnect_within_the_grace_keeps_the_workload() {
        let mut r = Registrations::default();
        let a = node("a", &[("ADDRESS", s("10.0.0.1"))]);
        let t0 = Instant::now();
        let grace = Duration::from_secs(30);
        assert!(r.connect(1, &a), "a new workload changes the registry");
        let before = r.registry().workloads[0].clone();
        // The new stream opens before the old one is noticed as gone.
        assert!(!r.connect(2, &a), "same metadata: no change");
        assert!(
            Arc::ptr_eq(&before, &r.registry().workloads[0]),
            "the same Arc, so the translation reuses its services"
        );
        r.disconnect(1, "a", t0);
        assert!(r.get("a").unwrap().gone_since.is_none(), "stream 2 is open");
        r.disconnect(2, "a", t0);
        assert!(!r.expire("a", grace, t0 + Duration::from_secs(29)));
        assert!(!r.connect(3, &a) && r.registry().workloads.len() == 1);
        // Once gone for the whole grace, it leaves.
        r.disconnect(3, "a", t0 + Duration::from_secs(40));
        assert!(!r.expire("a", grace, t0 + Duration::from_secs(60)));
        assert!(r.expire("a", grace, t0 + Duration::from_secs(70)));
        assert!(r.registry().workloads.is_empty());
    }

    /// What `take_unsaved` returns, as (node id, stored?) pairs.
    fn unsaved(r: &mut Registrations) -> Vec<(String, bool)> {
        r.take_unsaved()
            .into_iter()
            .map(|(id, b)| (id, b.is_some()))
            .collect()
    }

    #[test]
    fn only_what_changes_the_stored_form_is_saved() {
        let a = node("a", &[("ADDRESS", s("10.0.0.1"))]);
        let a2 = node("a", &[("ADDRESS", s("10.0.0.2"))]);
        let checked = node(
            "a",
            &[
                ("ADDRESS", s("10.0.0.2")),
                ("HEALTH_CHECK", st(&[("tcp", s("true")), ("port", n(80.0))])),
            ],
        );
        let t0 = Instant::now();
        type Step = fn(&mut Registrations, &[&Node], Instant);
        // (what, the step, what is to be saved: node id, stored or deleted)
        type Case = (&'static str, Step, &'static [(&'static str, bool)]);
        let cases: &[Case] = &[
            (
                "a new node",
                |r, n, _| {
                    let _ = r.connect(1, n[0]);
                },
                &[("a", true)],
            ),
            (
                "a reconnect, same metadata",
                |r, n, _| {
                    let _ = r.connect(2, n[0]);
                },
                &[],
            ),
            ("a disconnect", |r, _, t| r.disconnect(2, "a", t), &[]),
            (
                "new metadata",
                |r, n, _| {
                    let _ = r.connect(3, n[1]);
                },
                &[("a", true)],
            ),
            (
                "a check is added",
                |r, n, _| {
                    let _ = r.connect(4, n[2]);
                },
                &[("a", true)],
            ),
            (
                "health changes",
                |r, _, _| {
                    let _ = r.set_healthy("a", false);
                },
                &[("a", true)],
            ),
            (
                "health stays",
                |r, _, _| {
                    let _ = r.set_healthy("a", false);
                },
                &[],
            ),
            (
                "not due yet",
                |r, _, t| {
                    let _ = r.expire("a", Duration::from_secs(30), t);
                },
                &[],
            ),
            (
                "expired",
                |r, _, t| {
                    for c in 1..=4 {
                        r.disconnect(c, "a", t);
                    }
                    let _ = r.expire("a", Duration::from_secs(30), t + Duration::from_secs(31));
                },
                &[("a", false)],
            ),
            (
                "an unusable node is kept too",
                |r, _, _| {
                    let _ = r.connect(5, &node("b", &[]));
                },
                &[("b", true)],
            ),
        ];
        let mut r = Registrations::default();
        for (what, step, want) in cases {
            step(&mut r, &[&a, &a2, &checked], t0);
            let want: Vec<(String, bool)> = want.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            assert_eq!(unsaved(&mut r), want, "{what}");
            assert!(!r.has_unsaved(), "{what}: taken");
        }
        // A failed save is written with the next one.
        r.mark_unsaved(["b".to_string()]);
        assert_eq!(unsaved(&mut r), vec![("b".to_string(), true)]);
    }

    #[test]
    fn the_stored_form_round_trips() {
        let md = node(
            "x",
            &[
                ("ADDRESS", s("10.0.0.1")),
                ("PORTS", st(&[("http", n(9080.0))])),
                (
                    "ADDRESSES",
                    Value {
                        kind: Some(Kind::ListValue(ListValue {
                            values: vec![s("10.0.0.1"), s("::1")],
                        })),
                    },
                ),
                (
                    "HEALTH_CHECK",
                    st(&[(
                        "tcp",
                        Value {
                            kind: Some(Kind::BoolValue(true)),
                        },
                    )]),
                ),
                (
                    "EMPTY",
                    Value {
                        kind: Some(Kind::NullValue(0)),
                    },
                ),
            ],
        )
        .metadata
        .unwrap();
        for healthy in [true, false] {
            let bytes = encode(&md, healthy);
            assert_eq!(decode(&bytes), Ok((md.clone(), healthy)));
        }
        let text = String::from_utf8(encode(&md, true)).unwrap();
        assert!(text.contains(r#""ADDRESS":"10.0.0.1""#), "{text}");
        assert!(decode(b"nope").is_err());
        assert!(decode(br#"{"metadata": 3, "healthy": true}"#).is_err());
    }

    #[test]
    fn a_restored_registration_is_served_at_once_and_expires_unless_it_reconnects() {
        let a = node(
            "a",
            &[
                ("ADDRESS", s("10.0.0.1")),
                ("HEALTH_CHECK", st(&[("tcp", s("true")), ("port", n(80.0))])),
            ],
        );
        let b = node("b", &[("ADDRESS", s("10.0.0.2"))]);
        // Before the restart: a (found unhealthy) and b; c never reconnects.
        let mut before = Registrations::default();
        before.connect(1, &a);
        before.connect(2, &b);
        before.connect(3, &node("c", &[("ADDRESS", s("10.0.0.3"))]));
        before.set_healthy("a", false);
        let mut stored: Vec<(String, Vec<u8>)> = before
            .take_unsaved()
            .into_iter()
            .filter_map(|(id, b)| Some((id, b?)))
            .collect();
        stored.push(("garbled".into(), b"{".to_vec()));

        // After: everything is in the registry before any proxy reconnects.
        let t0 = Instant::now();
        let grace = Duration::from_secs(30);
        let mut r = Registrations::default();
        let (restored, unreadable) = r.restore(stored.clone(), t0);
        assert_eq!(restored, ["a", "b", "c"]);
        assert_eq!(unreadable.len(), 1);
        assert_eq!(unreadable[0].0, "garbled");
        assert_eq!(
            r.registry(),
            before.registry(),
            "same workloads, same health"
        );
        assert!(!r.registry().workloads[0].healthy, "a's last known health");
        let ra = r.get("a").unwrap();
        assert!(ra.restored && ra.streams.is_empty() && ra.gone_since == Some(t0));
        // Only the unreadable record is to be written (deleted).
        assert_eq!(unsaved(&mut r), vec![("garbled".to_string(), false)]);
        // Restoring again (or over a live registration) changes nothing.
        assert_eq!(r.restore(stored, t0).0.len(), 0);
        assert_eq!(unsaved(&mut r), vec![("garbled".to_string(), false)]);

        // a and b reconnect with what they had: no change, nothing to save;
        // a keeps its health (same check).
        assert!(!r.connect(10, &a));
        assert!(!r.connect(11, &b));
        assert!(!r.get("a").unwrap().restored);
        assert!(!r.registry().workloads[0].healthy);
        assert!(!r.has_unsaved());
        // c is gone after the grace, counted from the start.
        assert!(!r.expire("c", grace, t0 + Duration::from_secs(29)));
        assert!(
            !r.expire("a", grace, t0 + Duration::from_secs(31)),
            "reconnected"
        );
        assert!(r.expire("c", grace, t0 + Duration::from_secs(30)));
        assert_eq!(r.registry().workloads.len(), 2);
        assert_eq!(unsaved(&mut r), vec![("c".to_string(), false)]);
    }

    #[test]
    fn changed_metadata_changes_the_registry() {
        let mut r = Registrations::default();
        assert!(r.connect(1, &node("a", &[("ADDRESS", s("10.0.0.1"))])));
        assert!(r.connect(2, &node("a", &[("ADDRESS", s("10.0.0.2"))])));
        // An unusable node is kept (for the API) but not in the registry.
        assert!(!r.connect(3, &node("b", &[])));
        assert!(r.get("b").unwrap().info.is_err());
        assert_eq!(r.registry().workloads.len(), 1);
    }
}
