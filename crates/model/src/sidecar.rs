//! Istio's `Sidecar` egress hosts: which Sidecar applies to a workload, and
//! which hosts it lets the workload's proxy see. Plain functions over
//! validated config; the control plane ([`crate::validate::Validated`] +
//! the proxy's namespace and labels) and the standalone proxy use the same.
//!
//! Istio's precedence, which Trellis follows: a Sidecar in the workload's
//! namespace whose `workloadSelector` matches its labels; else the
//! namespace's Sidecar without a selector; else the Sidecar without a
//! selector in the root namespace ([`ROOT_NAMESPACE`]); else none, and the
//! proxy sees everything `exportTo` lets its namespace see.

use std::collections::BTreeMap;

use crate::host;
use crate::networking::SidecarSpec;
use crate::resource::Object;

/// Istio's config root namespace: a Sidecar there without a selector is the
/// mesh-wide default. Istio's name, so Istio YAML works as written.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// One `egress.hosts` entry, `namespace/dnsName`: the namespace is a name,
/// `.` (the proxy's own), `*` (any) or `~` (none); the name is an FQDN,
/// `*.suffix` or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EgressHost {
    pub namespace: String,
    pub host: String,
}

impl EgressHost {
    pub fn parse(s: &str) -> Result<EgressHost, String> {
        let (ns, host) = s.split_once('/').ok_or_else(|| {
            format!("{s:?} must be namespace/host, e.g. \"./*\" or \"*/api.example.com\"")
        })?;
        if ns.is_empty() || host.is_empty() {
            return Err(format!("{s:?} must be namespace/host, both non-empty"));
        }
        if host.contains('/') {
            return Err(format!("{s:?} has more than one '/'"));
        }
        Ok(EgressHost {
            namespace: ns.to_string(),
            host: host.to_ascii_lowercase(),
        })
    }

    /// Does this entry let a proxy in `proxy_ns` see `host` of `host_ns`?
    /// `host` is an FQDN (a service's) or a VirtualService host.
    pub fn allows(&self, proxy_ns: &str, host_ns: &str, host: &str) -> bool {
        let ns_ok = match self.namespace.as_str() {
            "*" => true,
            "." => host_ns == proxy_ns,
            "~" => false,
            n => n == host_ns,
        };
        ns_ok && host::matches_pattern(&self.host, host)
    }
}

/// The Sidecar that applies to a workload in `namespace` with `labels`,
/// from `sidecars` in load order (the first match wins; the control plane
/// orders them oldest first).
pub fn select<'a>(
    sidecars: &'a [Object<SidecarSpec>],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Option<&'a Object<SidecarSpec>> {
    let in_ns = |ns: &str, with_selector: bool| {
        sidecars.iter().find(|s| {
            s.metadata.namespace == ns
                && match (&s.spec.workload_selector, with_selector) {
                    (Some(sel), true) => sel
                        .labels
                        .iter()
                        .all(|(k, v)| labels.get(k).is_some_and(|l| l == v)),
                    (None, false) => true,
                    _ => false,
                }
        })
    };
    in_ns(namespace, true)
        .or_else(|| in_ns(namespace, false))
        .or_else(|| in_ns(ROOT_NAMESPACE, false))
}

/// The egress hosts of the Sidecar that applies, or `None` when none does
/// (or it lists no egress, which Istio reads as no restriction). Entries
/// that do not parse were rejected by validation and are skipped here.
pub fn egress_hosts(
    sidecars: &[Object<SidecarSpec>],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Option<Vec<EgressHost>> {
    let s = select(sidecars, namespace, labels)?;
    if s.spec.egress.is_empty() {
        return None;
    }
    Some(
        s.spec
            .egress
            .iter()
            .flat_map(|e| &e.hosts)
            .filter_map(|h| EgressHost::parse(h).ok())
            .collect(),
    )
}

/// Is `host` of `host_ns` visible through `egress` to a proxy in `proxy_ns`?
/// No egress list: yes.
pub fn allows(egress: Option<&[EgressHost]>, proxy_ns: &str, host_ns: &str, host: &str) -> bool {
    egress.is_none_or(|e| e.iter().any(|e| e.allows(proxy_ns, host_ns, host)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::networking::{IstioEgressListener, WorkloadSelector};
    use crate::resource::Meta;

    fn sidecar(
        ns: &str,
        name: &str,
        selector: Option<&[(&str, &str)]>,
        hosts: &[&str],
    ) -> Object<SidecarSpec> {
        Object {
            metadata: Meta {
                name: name.into(),
                namespace: ns.into(),
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
            },
            spec: SidecarSpec {
                workload_selector: selector.map(|l| WorkloadSelector {
                    labels: l
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                }),
                egress: vec![IstioEgressListener {
                    hosts: hosts.iter().map(|h| h.to_string()).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            source: "test".into(),
        }
    }

    fn labels(l: &[(&str, &str)]) -> BTreeMap<String, String> {
        l.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn precedence_is_selector_then_namespace_then_root() {
        let all = vec![
            sidecar(ROOT_NAMESPACE, "mesh", None, &["./*"]),
            sidecar("shop", "default", None, &["./*"]),
            sidecar("shop", "cart", Some(&[("app", "cart")]), &["*/*"]),
            sidecar("shop", "cart-too", Some(&[("app", "cart")]), &["~/*"]),
        ];
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
        let cases: [Case; 5] = [
            ("shop", &[("app", "cart"), ("v", "1")], Some("cart")),
            ("shop", &[("app", "web")], Some("default")),
            ("shop", &[], Some("default")),
            ("front", &[("app", "cart")], Some("mesh")),
            ("front", &[], Some("mesh")),
        ];
        for (ns, l, want) in cases {
            let got = select(&all, ns, &labels(l)).map(|s| s.metadata.name.as_str());
            assert_eq!(got, want, "{ns} {l:?}");
        }
        assert!(select(&all[1..], "front", &labels(&[])).is_none());
    }

    #[test]
    fn egress_hosts_allow_by_namespace_and_name() {
        let cases = [
            ("./*", "shop", "shop", "orders.shop.svc.cluster.local", true),
            ("./*", "shop", "front", "web.front.svc.cluster.local", false),
            ("*/*.example.com", "shop", "ext", "api.example.com", true),
            ("*/*.example.com", "shop", "ext", "example.com", false),
            (
                "front/web.front.svc.cluster.local",
                "shop",
                "front",
                "web.front.svc.cluster.local",
                true,
            ),
            (
                "front/*",
                "shop",
                "back",
                "db.back.svc.cluster.local",
                false,
            ),
            (
                "~/*",
                "shop",
                "shop",
                "orders.shop.svc.cluster.local",
                false,
            ),
        ];
        for (entry, proxy_ns, host_ns, host, want) in cases {
            let e = EgressHost::parse(entry).unwrap();
            assert_eq!(
                e.allows(proxy_ns, host_ns, host),
                want,
                "{entry} {host_ns}/{host}"
            );
        }
        for bad in ["orders", "/x", "ns/", "a/b/c"] {
            assert!(EgressHost::parse(bad).is_err(), "{bad}");
        }
        assert!(allows(None, "a", "b", "c"));
    }
}
