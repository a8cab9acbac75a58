//! Is every workload up? Read from the control plane's view (registered,
//! healthy, config ACKed: `GET /api/v1/workloads` and `/api/v1/proxies`)
//! plus whether the app itself accepts connections (a new registration
//! counts as healthy before its first probe, so the control plane's
//! `healthy` alone would say yes too early). Pure; `mod.rs` fetches.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    pub registered: bool,
    pub healthy: bool,
    pub acked: bool,
    pub app: bool,
}

impl Status {
    pub fn ready(self) -> bool {
        self.registered && self.healthy && self.acked && self.app
    }

    /// `registered, healthy, config ACKed` or what is still missing.
    pub fn describe(self) -> String {
        if self.ready() {
            return "ready (registered, healthy, config ACKed)".to_string();
        }
        let mut waiting = Vec::new();
        if !self.app {
            waiting.push("app not listening yet");
        }
        if !self.registered {
            waiting.push("sidecar not registered");
        } else if !self.healthy {
            waiting.push("unhealthy");
        }
        if self.registered && !self.acked {
            waiting.push("config not ACKed");
        }
        format!("waiting: {}", waiting.join(", "))
    }
}

/// The status of each node id in `nodes`, from the two API answers and the
/// set of nodes whose app accepted a connection.
pub fn statuses(
    nodes: &[String],
    proxies: &Value,
    workloads: &Value,
    app_up: &BTreeSet<String>,
) -> BTreeMap<String, Status> {
    let items = |v: &Value| -> BTreeMap<String, Value> {
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| Some((i["node"].as_str()?.to_string(), i.clone())))
            .collect()
    };
    let proxies = items(proxies);
    let workloads = items(workloads);
    nodes
        .iter()
        .map(|n| {
            let w = workloads.get(n);
            let registered = w.is_some_and(|w| {
                w["connected"].as_bool() == Some(true) && w["workload"].is_object()
            });
            let healthy = w.is_some_and(|w| w["workload"]["healthy"].as_bool() == Some(true));
            // ACKed what it was given, and that is the newest config: a
            // registry change (its own endpoints, say) may still be on
            // its way to the others.
            let acked = proxies.get(n).is_some_and(|p| {
                p["acked"].as_bool() == Some(true)
                    && p["current"].as_bool() == Some(true)
                    && p["error"].is_null()
            });
            (
                n.clone(),
                Status {
                    registered,
                    healthy,
                    acked,
                    app: app_up.contains(n),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ready_needs_all_four() {
        let nodes: Vec<String> = [
            "a-0.default",
            "b-0.default",
            "c-0.default",
            "d-0.default",
            "e-0.default",
        ]
        .map(String::from)
        .to_vec();
        let proxies = json!({"items": [
            {"node": "a-0.default", "acked": true, "current": true, "error": null},
            {"node": "b-0.default", "acked": false, "current": true, "error": null},
            {"node": "c-0.default", "acked": true, "current": true, "error": null},
            // ACKed, but a newer config is on its way.
            {"node": "e-0.default", "acked": true, "current": false, "error": null},
        ]});
        let workloads = json!({"items": [
            {"node": "a-0.default", "connected": true, "workload": {"healthy": true}},
            {"node": "b-0.default", "connected": true, "workload": {"healthy": true}},
            {"node": "c-0.default", "connected": true, "workload": {"healthy": false}},
            {"node": "e-0.default", "connected": true, "workload": {"healthy": true}},
        ]});
        let up: BTreeSet<String> = ["a-0.default", "b-0.default", "c-0.default", "e-0.default"]
            .map(String::from)
            .into();
        let s = statuses(&nodes, &proxies, &workloads, &up);
        assert!(s["a-0.default"].ready());
        assert_eq!(s["b-0.default"].describe(), "waiting: config not ACKed");
        assert_eq!(s["c-0.default"].describe(), "waiting: unhealthy");
        assert_eq!(s["e-0.default"].describe(), "waiting: config not ACKed");
        assert_eq!(
            s["d-0.default"].describe(),
            "waiting: app not listening yet, sidecar not registered"
        );
    }
}
