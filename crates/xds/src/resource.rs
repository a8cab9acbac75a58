//! What the server serves: named, versioned resources grouped by type URL,
//! and the snapshot of them that one proxy should hold.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use envoy_types::pb::google::protobuf::Any;

/// A type URL, e.g. [`type_url::CLUSTER`]. Plain strings because clients may
/// ask for any type; the server answers types it has nothing for with an
/// empty set rather than an error.
pub type TypeUrl = String;

/// The type URLs of the resources Trellis serves, and what the protocol
/// treats specially about them.
pub mod type_url {
    /// `envoy.config.listener.v3.Listener` (LDS).
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// `envoy.config.route.v3.VirtualHost` (VHDS, delta only): one virtual
    /// host of a route configuration, named `<route configuration>/<name>`.
    pub const VIRTUAL_HOST: &str = "type.googleapis.com/envoy.config.route.v3.VirtualHost";
    /// `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS).
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

    /// Whether a first request with no resource names means "everything"
    /// (the protocol's legacy wildcard). Listener and Cluster have it: for
    /// EDS and RDS an empty list means "nothing", and Envoy does send empty
    /// EDS/RDS lists when its last cluster or route goes away. VirtualHost
    /// has it too: Envoy's VHDS asks with an empty list (it matches what it
    /// gets against its route configurations by name, `<route
    /// configuration>/<host>`, and keeps the names off the wire), and a
    /// proxy's virtual hosts are exactly those of its route tables.
    pub fn legacy_wildcard(type_url: &str) -> bool {
        type_url == LISTENER || type_url == CLUSTER || type_url == VIRTUAL_HOST
    }

    /// Whether a state-of-the-world response must hold every subscribed
    /// resource (absence means deletion). True for Listener and Cluster; the
    /// server sends the full subscribed set for every type anyway, which the
    /// protocol allows, so this only documents why that is required here.
    pub fn full_state(type_url: &str) -> bool {
        type_url == LISTENER || type_url == CLUSTER
    }

    /// The order in which one generation's changes go out on a stream, so a
    /// proxy learns a cluster before the endpoints, listener or route that
    /// refer to it (the protocol's "make before break"): CDS, EDS, LDS, RDS,
    /// VHDS, SDS, then anything else.
    pub fn push_rank(type_url: &str) -> u8 {
        match type_url {
            CLUSTER => 0,
            ENDPOINT => 1,
            LISTENER => 2,
            ROUTE => 3,
            VIRTUAL_HOST => 4,
            SECRET => 5,
            _ => 6,
        }
    }

    /// The message name after the last `.`, for metric labels and logs
    /// (`Cluster`, `ClusterLoadAssignment`, ...).
    pub fn short_name(type_url: &str) -> &str {
        type_url.rsplit(['.', '/']).next().unwrap_or(type_url)
    }
}

/// One resource as served: its body and a version that changes whenever the
/// body does. Two resources with equal versions are taken to be equal, which
/// is what lets the server skip pushes that would change nothing.
///
/// Debug shows the type, version and size, not the bytes: a Secret's body
/// holds a private key.
#[derive(Clone, PartialEq)]
pub struct Resource {
    /// Opaque to clients; a content hash by default ([`Resource::new`]).
    pub version: String,
    /// The encoded resource (`type_url` inside must match its type's).
    pub body: Any,
}

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resource")
            .field("version", &self.version)
            .field("type_url", &self.body.type_url)
            .field("bytes", &self.body.value.len())
            .finish()
    }
}

impl Resource {
    /// A resource versioned by a hash of its encoded bytes, so rebuilding an
    /// identical resource (another generation, another control-plane
    /// process) yields the same version and nothing is re-sent. Messages
    /// holding protobuf maps (e.g. `Struct`) encode in hash-map order, so an
    /// identical one may hash differently; that costs a redundant push,
    /// never a missed one.
    pub fn new(body: Any) -> Resource {
        let mut h = Fnv64::new();
        h.write(body.type_url.as_bytes());
        h.write(&[0]);
        h.write(&body.value);
        Resource {
            version: h.hex(),
            body,
        }
    }

    /// A resource with a version chosen by the caller (e.g. a store revision).
    pub fn with_version(body: Any, version: impl Into<String>) -> Resource {
        Resource {
            version: version.into(),
            body,
        }
    }

    /// Encodes `msg` as an `Any` of its own type URL, versioned by content.
    pub fn from_message<M: prost::Message + prost::Name>(msg: &M) -> Resource {
        Resource::new(Any {
            type_url: M::type_url(),
            value: msg.encode_to_vec(),
        })
    }
}

/// The resources of one type, by name.
pub type Resources = BTreeMap<String, Resource>;

/// Everything one proxy should hold, by type URL. Each type's map is behind
/// an `Arc` so a control plane can share one map among every proxy that gets
/// the same set, and so a stream can tell in O(1) that a type did not change
/// between two generations (same `Arc`: nothing to compare).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Resources by type URL, then by name.
    pub resources: BTreeMap<TypeUrl, Arc<Resources>>,
    /// Per type, what streams compute from its map, computed once and
    /// shared by every clone of the snapshot (a control plane clones one
    /// snapshot per class of proxies, for thousands of them); replaced
    /// whenever the map is.
    memo: BTreeMap<TypeUrl, Arc<MapMemo>>,
}

/// Facts about one type's map, each computed on first use.
#[derive(Debug, Default)]
pub(crate) struct MapMemo {
    /// The version of the whole map (every resource subscribed).
    pub(crate) full_version: OnceLock<String>,
    /// A hash of the map's names: a stream whose subscription covered one
    /// set of names knows it covers another map with the same set.
    names_hash: OnceLock<u64>,
    /// Every name of the map, in order: the names of a response that
    /// carries the whole map, shared by every stream that sends it.
    all_names: OnceLock<Arc<Vec<String>>>,
    /// The same names as a set: the subscription of every stream that asks
    /// for exactly the map (`Subscription::apply_sotw`).
    name_set: OnceLock<Arc<BTreeSet<String>>>,
    /// The difference from an older map, for the last older map asked
    /// about: the streams sharing this map mostly hold the same older one.
    diff: Mutex<Option<DiffFrom>>,
}

/// What changed from one map to a newer one.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct MapDiff {
    /// The names of the newer map that the older lacks or has another
    /// version of. A workload joining changes one assignment; a partial
    /// push then carries that one, not all of them.
    pub(crate) changed: Arc<Vec<String>>,
    /// The names of the older map that the newer lacks (delta's
    /// `removed_resources`).
    pub(crate) removed: Vec<String>,
}

/// [`MapDiff`] from `held` to `now`: one ordered walk of both maps.
pub(crate) fn map_diff(held: &Resources, now: &Resources) -> MapDiff {
    let mut changed = Vec::new();
    let mut removed = Vec::new();
    let mut old = held.iter().peekable();
    for (name, r) in now {
        while let Some((n, _)) = old.next_if(|(n, _)| *n < name) {
            removed.push(n.clone());
        }
        match old.next_if(|(n, _)| *n == name) {
            Some((_, o)) if o.version == r.version => {}
            _ => changed.push(name.clone()),
        }
    }
    removed.extend(old.map(|(n, _)| n.clone()));
    MapDiff {
        changed: Arc::new(changed),
        removed,
    }
}

/// An older map, and what a newer one changed since it.
type DiffFrom = (Arc<Resources>, Arc<MapDiff>);

impl MapMemo {
    /// A hash of every name of `map` (the map this memo is for), once.
    pub(crate) fn names_hash(&self, map: &Resources) -> u64 {
        *self.names_hash.get_or_init(|| {
            let mut h = Fnv64::new();
            for name in map.keys() {
                h.write_str(name);
            }
            h.finish()
        })
    }

    /// Every name of `map` as a set, built once.
    pub(crate) fn name_set(&self, map: &Resources) -> Arc<BTreeSet<String>> {
        self.name_set
            .get_or_init(|| Arc::new(map.keys().cloned().collect()))
            .clone()
    }

    /// Every name of `map` (the map this memo is for), listed once.
    pub(crate) fn all_names(&self, map: &Resources) -> Arc<Vec<String>> {
        self.all_names
            .get_or_init(|| Arc::new(map.keys().cloned().collect()))
            .clone()
    }

    /// [`map_diff`] from `held` to `now` (the map this memo is for),
    /// computed once per `held` map.
    pub(crate) fn diff_since(&self, held: &Arc<Resources>, now: &Resources) -> Arc<MapDiff> {
        let mut cached = self.diff.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((old, diff)) = cached.as_ref()
            && Arc::ptr_eq(old, held)
        {
            return diff.clone();
        }
        let diff = Arc::new(map_diff(held, now));
        *cached = Some((held.clone(), diff.clone()));
        diff
    }
}

impl Snapshot {
    /// An empty snapshot: every type has no resources.
    pub fn new() -> Snapshot {
        Snapshot::default()
    }

    /// Adds or replaces one resource.
    pub fn insert(&mut self, type_url: &str, name: impl Into<String>, resource: Resource) {
        let map = self.resources.entry(type_url.to_string()).or_default();
        Arc::make_mut(map).insert(name.into(), resource);
        self.memo.insert(type_url.to_string(), Arc::default());
    }

    /// Adds or replaces one resource encoded from an Envoy message, under the
    /// message's own type URL.
    pub fn insert_message<M: prost::Message + prost::Name>(
        &mut self,
        name: impl Into<String>,
        msg: &M,
    ) {
        self.insert(&M::type_url(), name, Resource::from_message(msg));
    }

    /// Builder form of [`Snapshot::insert_message`].
    pub fn with_message<M: prost::Message + prost::Name>(
        mut self,
        name: impl Into<String>,
        msg: &M,
    ) -> Snapshot {
        self.insert_message(name, msg);
        self
    }

    /// Replaces a whole type (sharing the map with other snapshots).
    pub fn set_type(&mut self, type_url: &str, resources: Arc<Resources>) {
        self.resources.insert(type_url.to_string(), resources);
        self.memo.insert(type_url.to_string(), Arc::default());
    }

    pub(crate) fn memo_of(&self, type_url: &str) -> Option<&MapMemo> {
        self.memo.get(type_url).map(Arc::as_ref)
    }

    /// The resources of one type, if the snapshot has that type.
    pub fn of_type(&self, type_url: &str) -> Option<&Arc<Resources>> {
        self.resources.get(type_url)
    }
}

/// FNV-1a, 64 bit: a fixed, documented function, so versions computed by
/// one control-plane process match those of the next one (std's hasher is
/// allowed to change between Rust releases). Not for adversarial input; a
/// collision costs one skipped push of a resource whose content changed,
/// at odds of about 2^-64 per change.
#[derive(Clone, Copy)]
pub(crate) struct Fnv64(u64);

impl Fnv64 {
    pub(crate) fn new() -> Fnv64 {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Writes a string and a separator, so ("ab","c") and ("a","bc") differ.
    pub(crate) fn write_str(&mut self, s: &str) {
        self.write(s.as_bytes());
        self.write(&[0xff]);
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }

    pub(crate) fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_version_is_stable_and_tracks_the_body() {
        let a = Resource::new(Any {
            type_url: type_url::CLUSTER.into(),
            value: vec![1, 2, 3],
        });
        let b = Resource::new(Any {
            type_url: type_url::CLUSTER.into(),
            value: vec![1, 2, 3],
        });
        let c = Resource::new(Any {
            type_url: type_url::CLUSTER.into(),
            value: vec![1, 2, 4],
        });
        assert_eq!(a.version, b.version);
        assert_ne!(a.version, c.version);
        // Standard FNV-1a ("a" is the published test vector).
        let mut h = Fnv64::new();
        h.write(b"a");
        assert_eq!(h.hex(), "af63dc4c8601ec8c");
        // Fixed across processes and releases: this exact value.
        let empty = Resource::new(Any {
            type_url: String::new(),
            value: vec![],
        });
        assert_eq!(empty.version, "af63bd4c8601b7df");
    }

    #[test]
    fn map_diff_names_what_changed_appeared_and_went() {
        let map = |entries: &[(&str, &str)]| -> Resources {
            entries
                .iter()
                .map(|(n, v)| (n.to_string(), Resource::with_version(Any::default(), *v)))
                .collect()
        };
        let strings = |l: &[&str]| -> Vec<String> { l.iter().map(|s| s.to_string()).collect() };
        let held = map(&[("a", "1"), ("b", "1"), ("d", "1"), ("f", "1")]);
        let now = map(&[("b", "2"), ("c", "1"), ("d", "1"), ("e", "1")]);
        let diff = map_diff(&held, &now);
        assert_eq!(*diff.changed, strings(&["b", "c", "e"]));
        assert_eq!(diff.removed, strings(&["a", "f"]));
        assert_eq!(map_diff(&now, &now), MapDiff::default());
        let all = map_diff(&Resources::new(), &now);
        assert_eq!(*all.changed, strings(&["b", "c", "d", "e"]));
        assert!(map_diff(&now, &Resources::new()).changed.is_empty());
        assert_eq!(
            map_diff(&now, &Resources::new()).removed,
            strings(&["b", "c", "d", "e"])
        );
    }

    #[test]
    fn short_names_and_ranks() {
        assert_eq!(
            type_url::short_name(type_url::ENDPOINT),
            "ClusterLoadAssignment"
        );
        assert_eq!(type_url::short_name("weird"), "weird");
        let mut types = [
            type_url::ROUTE,
            type_url::LISTENER,
            type_url::ENDPOINT,
            type_url::CLUSTER,
        ];
        types.sort_by_key(|t| type_url::push_rank(t));
        assert_eq!(
            types,
            [
                type_url::CLUSTER,
                type_url::ENDPOINT,
                type_url::LISTENER,
                type_url::ROUTE
            ]
        );
    }

    #[test]
    fn snapshot_insert_shares_nothing_it_mutates() {
        let mut a = Snapshot::new();
        a.insert(
            type_url::CLUSTER,
            "c1",
            Resource::with_version(Any::default(), "1"),
        );
        let b = a.clone();
        a.insert(
            type_url::CLUSTER,
            "c2",
            Resource::with_version(Any::default(), "1"),
        );
        assert_eq!(a.of_type(type_url::CLUSTER).map(|m| m.len()), Some(2));
        assert_eq!(b.of_type(type_url::CLUSTER).map(|m| m.len()), Some(1));
    }
}
