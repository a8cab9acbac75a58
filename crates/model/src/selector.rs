//! Istio's `WorkloadSelector` as the security kinds spell it
//! (`selector.matchLabels`): which workloads of the policy's namespace a
//! policy selects.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl Selector {
    /// Whether a workload with `labels` has every label the selector names,
    /// with the same value.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_named_label_with_its_value() {
        let sel = Selector {
            match_labels: labels(&[("app", "reviews")]),
        };
        assert!(sel.matches(&labels(&[("app", "reviews"), ("version", "v1")])));
        assert!(!sel.matches(&labels(&[("app", "ratings")])));
        assert!(!sel.matches(&labels(&[])));
        assert!(
            Selector::default().matches(&labels(&[])),
            "empty selects all"
        );
    }
}
