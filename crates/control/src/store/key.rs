//! What the store keeps: keys, entries and the status it reports.

use std::fmt;

use serde::Serialize;
use serde_json::Value;
use trellis_model::Resource;
use trellis_model::conflict::{Conflict, ResourceRef};
use trellis_model::resource::Kind;

/// The source of resources applied through the API, as errors and status show it.
pub const API_SOURCE: &str = "api";

/// A resource's identity: kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Key {
        Key {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn of(r: &Resource) -> Key {
        let m = r.meta();
        Key::new(r.kind(), &m.namespace, &m.name)
    }

    /// `kind/namespace/name`: the key in the database.
    pub fn db_key(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }

    pub fn parse_db_key(s: &str) -> Option<Key> {
        let mut parts = s.splitn(3, '/');
        let kind = Kind::parse(parts.next()?)?;
        Some(Key::new(kind, parts.next()?, parts.next()?))
    }

    pub fn is(&self, r: &ResourceRef) -> bool {
        self.kind == r.kind && self.namespace == r.namespace && self.name == r.name
    }
}

/// `Kind namespace/name`, the way errors name a resource.
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// One stored resource: applied through the API (persisted) or read from the
/// config directory (not persisted; the files are the truth).
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: Key,
    /// Parsed; its `source` is [`API_SOURCE`] or the file path.
    pub resource: Resource,
    /// The document as applied or written, as JSON.
    pub document: Value,
    /// Bumped each time the resource's content changes; starts at 1.
    pub generation: u64,
    /// When the store first saw the resource, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Creation order: smaller is older, and the oldest wins a conflict.
    pub order: u64,
}

impl Entry {
    pub fn source(&self) -> &str {
        self.resource.source()
    }

    pub fn from_file(&self) -> bool {
        self.source() != API_SOURCE
    }

    pub fn reference(&self) -> ResourceRef {
        ResourceRef {
            kind: self.key.kind,
            namespace: self.key.namespace.clone(),
            name: self.key.name.clone(),
            source: self.source().to_string(),
        }
    }
}

/// What the store says about one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// In the effective set (proxies get it); false when it lost a conflict.
    pub accepted: bool,
    /// Conflicts it is part of, as loser or winner.
    pub conflicts: Vec<Conflict>,
    /// `api`, or the config-directory file it was read from.
    pub source: String,
    pub generation: u64,
    /// The connected proxies that were sent a config generation holding
    /// this version of the resource. The store leaves it empty; the API
    /// fills it from the xDS server.
    pub proxies: Vec<ProxyRef>,
}

/// A connected proxy, as a resource's status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyRef {
    /// The xDS node id.
    pub node: String,
    /// The store generation of the config it was last sent.
    pub generation: u64,
    /// Whether it ACKed everything it was sent (nothing pending, no NACK).
    pub acked: bool,
}
