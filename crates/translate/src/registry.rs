//! The workloads the control plane knows: filled from the xDS node metadata
//! of connecting proxies (like Istio's WorkloadEntry auto-registration) and
//! from health checks. Plain data; the translation only reads it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// Shared with the control plane's registrations: a registry rebuilt
    /// after one workload changed holds the same `Arc` for every other, so
    /// the translation can tell by pointer which services' endpoints
    /// changed ([`crate::shared_since`]).
    pub workloads: Vec<Arc<Workload>>,
    /// Workload indexes by namespace, label and value, and by namespace, made
    /// on first [`Registry::select`]: a selector looks at the workloads
    /// with its first label, not at every workload of the mesh.
    index: OnceLock<Index>,
}

#[derive(Debug, Clone, Default)]
struct Index {
    /// Namespace -> label -> value -> workloads (nested, so a lookup by
    /// `&str` allocates nothing).
    by_label: HashMap<String, HashMap<String, HashMap<String, Vec<usize>>>>,
    by_namespace: HashMap<String, Vec<usize>>,
}

impl PartialEq for Registry {
    fn eq(&self, other: &Registry) -> bool {
        self.workloads == other.workloads
    }
}

impl Eq for Registry {}

/// One registered workload (a pod, VM or process with a sidecar).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// Where the workload's app accepts connections.
    pub addresses: Vec<IpAddr>,
    /// Port name (as a ServiceEntry's `ports[].name`) -> port number; a
    /// service port the map does not name uses its `targetPort`, else its
    /// number, as for ServiceEntry endpoints.
    pub ports: BTreeMap<String, u16>,
    /// Istio's `region/zone/subzone`.
    pub locality: Option<String>,
    /// From active health checking; an unhealthy workload stays in EDS as
    /// UNHEALTHY, so proxies skip it without forgetting it.
    pub healthy: bool,
}

impl Registry {
    /// The index is built on first use: `workloads` must not change after
    /// a [`Registry::select`] (build a new registry instead, as the control
    /// plane does on every registry change).
    pub fn new(workloads: Vec<Workload>) -> Registry {
        Registry::from_shared(workloads.into_iter().map(Arc::new).collect())
    }

    /// [`Registry::new`] from workloads shared with their registrations.
    pub fn from_shared(workloads: Vec<Arc<Workload>>) -> Registry {
        Registry {
            workloads,
            index: OnceLock::new(),
        }
    }

    fn index(&self) -> &Index {
        self.index.get_or_init(|| {
            let mut ix = Index::default();
            // Rebuilt on every registry change (10 times a second under
            // churn): keys are cloned only when first seen.
            fn slot<'m, V: Default>(map: &'m mut HashMap<String, V>, key: &str) -> &'m mut V {
                if !map.contains_key(key) {
                    map.insert(key.to_owned(), V::default());
                }
                map.get_mut(key).expect("inserted above")
            }
            for (i, w) in self.workloads.iter().enumerate() {
                slot(&mut ix.by_namespace, &w.namespace).push(i);
                let labels = slot(&mut ix.by_label, &w.namespace);
                for (k, v) in &w.labels {
                    slot(slot(labels, k), v).push(i);
                }
            }
            ix
        })
    }

    /// Workloads a `workloadSelector` in `namespace` selects: Istio's rule is
    /// same namespace, and every selector label present with the same value.
    /// An empty selector selects every workload of the namespace. In
    /// registration order.
    pub fn select<'a>(
        &'a self,
        namespace: &'a str,
        selector: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a Arc<Workload>> + 'a {
        let ix = self.index();
        let candidates: &[usize] = match selector.iter().next() {
            Some((k, v)) => ix
                .by_label
                .get(namespace)
                .and_then(|labels| labels.get(k))
                .and_then(|values| values.get(v))
                .map_or(&[], Vec::as_slice),
            None => ix.by_namespace.get(namespace).map_or(&[], Vec::as_slice),
        };
        candidates
            .iter()
            .map(|&i| &self.workloads[i])
            .filter(move |w| {
                w.namespace == namespace && selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))
            })
    }

    /// The distinct localities of registered workloads: the proxies whose
    /// endpoint priorities (locality failover) may differ.
    pub fn localities(&self) -> Vec<String> {
        let mut out: Vec<&str> = self
            .workloads
            .iter()
            .filter_map(|w| w.locality.as_deref())
            .filter(|l| !l.is_empty())
            .collect();
        out.sort_unstable();
        out.dedup();
        out.into_iter().map(str::to_owned).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(name: &str, ns: &str, labels: &[(&str, &str)]) -> Workload {
        Workload {
            name: name.into(),
            namespace: ns.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            healthy: true,
            ..Default::default()
        }
    }

    #[test]
    fn selects_by_namespace_and_labels() {
        let r = Registry::new(vec![
            w("a", "default", &[("app", "reviews"), ("version", "v1")]),
            w("b", "default", &[("app", "reviews"), ("version", "v2")]),
            w("c", "prod", &[("app", "reviews"), ("version", "v1")]),
            w("d", "default", &[("app", "ratings")]),
        ]);
        let names = |ns: &str, sel: &[(&str, &str)]| -> Vec<String> {
            let sel = sel
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            r.select(ns, &sel).map(|w| w.name.clone()).collect()
        };
        assert_eq!(names("default", &[("app", "reviews")]), ["a", "b"]);
        assert_eq!(
            names("default", &[("app", "reviews"), ("version", "v1")]),
            ["a"]
        );
        assert_eq!(names("prod", &[("app", "reviews")]), ["c"]);
        assert_eq!(names("default", &[]), ["a", "b", "d"]);
    }
}
