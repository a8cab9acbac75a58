//! Where the server gets each proxy's resources: the [`Snapshots`] trait
//! the control plane implements, and [`MemorySnapshots`], a simple
//! implementation for tests and static setups.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::watch;

use crate::resource::Snapshot;

/// The source of every proxy's configuration.
///
/// The server never asks for a snapshot on a timer: it asks when a stream
/// starts, and again on each stream after [`Snapshots::generations`]
/// changes (debounced: a burst of changes costs one recomputation per
/// proxy). So the implementation bumps the generation whenever anything a
/// proxy may see changes, and computes the proxy's view in
/// [`Snapshots::snapshot`], from its node (id, cluster, metadata).
pub trait Snapshots: Send + Sync + 'static {
    /// What `node` should hold now. Called on the stream's task, so it
    /// should be quick (share per-service resources between proxies through
    /// the `Arc`s in [`Snapshot::resources`] rather than rebuild them).
    fn snapshot(&self, node: &Node) -> Arc<Snapshot>;

    /// A receiver whose value changes with every new generation of
    /// configuration. Only changes matter, not the value.
    fn generations(&self) -> watch::Receiver<u64>;
}

/// An in-memory [`Snapshots`]: one snapshot for every node, optionally
/// replaced for specific node ids. Each `set*` call is a new generation.
#[derive(Debug)]
pub struct MemorySnapshots {
    state: Mutex<State>,
    generation: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct State {
    default: Arc<Snapshot>,
    by_node: HashMap<String, Arc<Snapshot>>,
    /// The last node seen per id, so tests can check what a client sent.
    seen: HashMap<String, Node>,
    /// Snapshots asked for, per node id.
    taken: HashMap<String, u64>,
}

impl MemorySnapshots {
    /// Serves `snapshot` to every node.
    pub fn new(snapshot: Snapshot) -> MemorySnapshots {
        MemorySnapshots {
            state: Mutex::new(State {
                default: Arc::new(snapshot),
                ..State::default()
            }),
            generation: watch::Sender::new(0),
        }
    }

    /// Replaces the snapshot of every node without its own.
    pub fn set(&self, snapshot: Snapshot) {
        self.lock().default = Arc::new(snapshot);
        self.bump();
    }

    /// Gives the node with this id its own snapshot.
    pub fn set_for_node(&self, node_id: &str, snapshot: Snapshot) {
        self.lock()
            .by_node
            .insert(node_id.to_string(), Arc::new(snapshot));
        self.bump();
    }

    /// The current generation (0, then +1 per change).
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// The node last seen with this id (from its stream's first request).
    pub fn node(&self, node_id: &str) -> Option<Node> {
        self.lock().seen.get(node_id).cloned()
    }

    /// How many times the server asked for this node's snapshot.
    pub fn taken(&self, node_id: &str) -> u64 {
        self.lock().taken.get(node_id).copied().unwrap_or(0)
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data that is
        // still consistent (every write is a single insert).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Snapshots for MemorySnapshots {
    fn snapshot(&self, node: &Node) -> Arc<Snapshot> {
        let mut state = self.lock();
        state.seen.insert(node.id.clone(), node.clone());
        *state.taken.entry(node.id.clone()).or_default() += 1;
        state
            .by_node
            .get(&node.id)
            .unwrap_or(&state.default)
            .clone()
    }

    fn generations(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Resource, type_url};
    use envoy_types::pb::google::protobuf::Any;

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn per_node_snapshots_and_generations() {
        let s = MemorySnapshots::new(Snapshot::new());
        let mut rx = s.generations();
        assert_eq!(s.generation(), 0);
        let mut special = Snapshot::new();
        special.insert(
            type_url::CLUSTER,
            "c",
            Resource::with_version(Any::default(), "1"),
        );
        s.set_for_node("a", special);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        assert_eq!(s.generation(), 1);
        assert!(s.snapshot(&node("a")).of_type(type_url::CLUSTER).is_some());
        assert!(s.snapshot(&node("b")).of_type(type_url::CLUSTER).is_none());
        assert_eq!(s.node("b").map(|n| n.id), Some("b".to_string()));
        s.set(Snapshot::new());
        assert!(rx.has_changed().unwrap());
    }
}
