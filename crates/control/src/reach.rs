//! Which proxies a resource reaches. `status.proxies` of a resource lists a
//! connected proxy only if the resource is part of what that proxy is sent:
//! its namespace may see it (`exportTo`) and the Sidecar that applies to its
//! workload lets it through (egress hosts). Plain functions over validated
//! config and what the proxy is ([`Viewer`]), mirroring `translate::view`.

use std::collections::BTreeMap;

use trellis_model::resource::Kind;
use trellis_model::sidecar::{self, EgressHost};
use trellis_model::validate::{Service, Validated};
use trellis_translate::visible;

use crate::store::Key;

/// A proxy as visibility sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Viewer {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// The egress hosts of the Sidecar that applies (None: no restriction).
    pub egress: Option<Vec<EgressHost>>,
}

impl Viewer {
    fn sees_service(&self, s: &Service) -> bool {
        visible(&s.export_to, &s.namespace, &self.namespace)
            && self.egress_allows(&s.namespace, &s.host)
    }

    fn egress_allows(&self, host_ns: &str, host: &str) -> bool {
        sidecar::allows(self.egress.as_deref(), &self.namespace, host_ns, host)
    }

    /// A host a route or policy names: a service the proxy sees, or a
    /// VirtualService host (no service) its egress allows.
    fn sees_host(&self, v: &Validated, owner_ns: &str, host: &str) -> bool {
        match v.services.get(host) {
            Some(s) => self.sees_service(s),
            None => self.egress_allows(owner_ns, host),
        }
    }
}

/// Is the resource `key`, as in effect in `v`, part of `viewer`'s config?
/// A resource not in effect (rejected, or losing a conflict) reaches no one.
pub fn reaches(v: &Validated, key: &Key, viewer: &Viewer) -> bool {
    let is = |ns: &str, name: &str| ns == key.namespace && name == key.name;
    let entry = format!("{}/{}", key.namespace, key.name);
    match key.kind {
        Kind::ServiceEntry => v
            .services
            .values()
            .any(|s| s.entry == entry && viewer.sees_service(s)),
        Kind::DestinationRule => v.destination_rules.iter().any(|(host, dr)| {
            is(&dr.metadata.namespace, &dr.metadata.name)
                && visible(
                    &dr.spec.export_to,
                    &dr.metadata.namespace,
                    &viewer.namespace,
                )
                && v.services.get(host).is_some_and(|s| viewer.sees_service(s))
        }),
        Kind::VirtualService => v.virtual_services.iter().any(|(hosts, vs)| {
            let ns = &vs.metadata.namespace;
            is(ns, &vs.metadata.name)
                && visible(&vs.spec.export_to, ns, &viewer.namespace)
                && hosts.iter().any(|h| viewer.sees_host(v, ns, h))
        }),
        Kind::RateLimitPolicy => v.rate_limits.iter().any(|(host, rl)| {
            let ns = &rl.metadata.namespace;
            is(ns, &rl.metadata.name) && viewer.sees_host(v, ns, host)
        }),
        Kind::RetryBudget => v.retry_budgets.iter().any(|(host, rb)| {
            is(&rb.metadata.namespace, &rb.metadata.name)
                && v.services.get(host).is_some_and(|s| viewer.sees_service(s))
        }),
        Kind::Sidecar => sidecar::select(&v.sidecars, &viewer.namespace, &viewer.labels)
            .is_some_and(|s| is(&s.metadata.namespace, &s.metadata.name)),
        Kind::AuthorizationPolicy => v.authorization_policies.iter().any(|p| {
            is(&p.metadata.namespace, &p.metadata.name)
                && trellis_model::authorization::applies(p, &viewer.namespace, &viewer.labels)
        }),
        // Every policy that could decide the proxy's inbound mode reaches
        // it (the port-level choice is made for its app port in its own
        // inbound listener).
        Kind::PeerAuthentication => v.peer_authentications.iter().any(|pa| {
            is(&pa.metadata.namespace, &pa.metadata.name)
                && trellis_model::peer_authentication::considered(
                    pa,
                    &viewer.namespace,
                    &viewer.labels,
                )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_model::{ResourceSet, parse_documents};

    const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: orders, namespace: shop}
spec:
  hosts: [orders]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: secret, namespace: shop}
spec:
  hosts: [secret]
  exportTo: ["."]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.2}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: orders, namespace: shop}
spec:
  host: orders
  exportTo: ["."]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: orders, namespace: shop}
spec:
  hosts: [orders]
  http: [{route: [{destination: {host: orders}}]}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: front}
spec:
  hosts: [web]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.3}]
---
apiVersion: trellis.dev/v1alpha1
kind: RetryBudget
metadata: {name: web, namespace: front}
spec: {host: web}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: narrow, namespace: front}
spec:
  workloadSelector: {labels: {app: narrow}}
  egress: [{hosts: [./*]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh, namespace: istio-system}
spec: {action: DENY, rules: [{to: [{operation: {paths: ["/debug*"]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: narrow-only, namespace: front}
spec: {selector: {matchLabels: {app: narrow}}}
"#;

    fn validated() -> Validated {
        let mut set = ResourceSet::default();
        for d in parse_documents("mesh.yaml", MESH).unwrap() {
            set.push(d);
        }
        trellis_model::validate::validate(&set).unwrap()
    }

    fn viewer(ns: &str, labels: &[(&str, &str)], v: &Validated) -> Viewer {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Viewer {
            namespace: ns.into(),
            egress: sidecar::egress_hosts(&v.sidecars, ns, &labels),
            labels,
        }
    }

    #[test]
    fn resources_reach_the_proxies_that_see_them() {
        let v = validated();
        let shop = viewer("shop", &[], &v);
        let front = viewer("front", &[], &v);
        let narrow = viewer("front", &[("app", "narrow")], &v);
        let cases = [
            (Kind::ServiceEntry, "shop", "orders", [true, true, false]),
            (Kind::ServiceEntry, "shop", "secret", [true, false, false]),
            (
                Kind::DestinationRule,
                "shop",
                "orders",
                [true, false, false],
            ),
            (Kind::VirtualService, "shop", "orders", [true, true, false]),
            (Kind::ServiceEntry, "front", "web", [true, true, true]),
            (Kind::RetryBudget, "front", "web", [true, true, true]),
            (Kind::Sidecar, "front", "narrow", [false, false, true]),
            (
                Kind::AuthorizationPolicy,
                "istio-system",
                "mesh",
                [true, true, true],
            ),
            (
                Kind::AuthorizationPolicy,
                "front",
                "narrow-only",
                [false, false, true],
            ),
            (
                Kind::VirtualService,
                "shop",
                "missing",
                [false, false, false],
            ),
        ];
        for (kind, ns, name, want) in cases {
            let key = Key::new(kind, ns, name);
            let got = [&shop, &front, &narrow].map(|p| reaches(&v, &key, p));
            assert_eq!(got, want, "{kind} {ns}/{name} to shop, front, front+narrow");
        }
    }
}
