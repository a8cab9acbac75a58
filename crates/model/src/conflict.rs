//! Conflicts between resources that claim the same thing: two VirtualServices
//! routing one host, two DestinationRules (or RetryBudgets) for one host, two
//! ServiceEntries defining one host, two RateLimitPolicies limiting the same
//! requests, two Sidecars without a selector in one namespace.
//!
//! The standalone proxy rejects such a set ([`crate::validate`] reports it):
//! a folder of files is one author's work, and a conflict in it is a mistake.
//! A control plane takes changes from many authors over time, so it accepts
//! both and resolves the conflict the same way every time: the oldest
//! resource (by the order the caller gives, e.g. creation order) wins, the
//! newer one is left out of the effective set, and the conflict is reported.
//! [`resolve`] is that decision, as a pure function; validating the result is
//! the caller's next step.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::host;
use crate::resource::{Kind, Meta, Object, ResourceSet};
use crate::validate::valid_host;

/// Names one resource: kind, namespace, name, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ResourceRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// The file it was read from, or what applied it (e.g. `api`).
    pub source: String,
}

impl ResourceRef {
    pub fn of<S>(kind: Kind, o: &Object<S>) -> Self {
        ResourceRef {
            kind,
            namespace: o.metadata.namespace.clone(),
            name: o.metadata.name.clone(),
            source: o.source.clone(),
        }
    }
}

/// `Kind namespace/name`, the way errors name a resource.
impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// One resource left out because an older one already claims what it claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// The newer resource, left out of the effective set.
    pub loser: ResourceRef,
    /// The older resource, which stays in effect.
    pub winner: ResourceRef,
    /// One sentence an operator can act on, naming what both claim.
    pub reason: String,
}

/// Drop the newer of every pair of conflicting resources. `order` ranks
/// resources (smaller is older); ties are broken by namespace, name and
/// position in `set`, so the result never depends on chance. Resources keep
/// their order in `set`, except Sidecars, which come oldest first (the first
/// one whose selector matches a workload applies). A resource that loses to several older ones gets a
/// [`Conflict`] for each.
///
/// Host references are resolved against the ServiceEntries that survive, as
/// the validator resolves them. Malformed hosts claim nothing here: the
/// validator reports them.
pub fn resolve(
    set: &ResourceSet,
    order: impl Fn(Kind, &Meta) -> u64,
) -> (ResourceSet, Vec<Conflict>) {
    let mut conflicts = Vec::new();
    let mut c = Resolver {
        order: &order,
        conflicts: &mut conflicts,
    };

    let service_entries = c.pick(
        Kind::ServiceEntry,
        &set.service_entries,
        |se| {
            let ns = &se.metadata.namespace;
            se.spec
                .hosts
                .iter()
                .filter(|h| !h.starts_with('*') && valid_host(h))
                .map(|h| host::qualify(h, ns))
                .collect()
        },
        |h, w| {
            format!("host {h} is already defined by {w}, which is older; one ServiceEntry per host")
        },
    );

    let known: BTreeSet<String> = service_entries
        .iter()
        .flat_map(|se| {
            let ns = &se.metadata.namespace;
            se.spec
                .hosts
                .iter()
                .filter(|h| !h.starts_with('*') && valid_host(h))
                .map(|h| host::qualify(h, ns))
        })
        .collect();
    let resolve = |name: &str, ns: &str| host::resolve(name, ns, |h| known.contains(h));

    let destination_rules = c.pick(
        Kind::DestinationRule,
        &set.destination_rules,
        |dr| {
            if dr.spec.host.starts_with('*') {
                return Vec::new();
            }
            vec![resolve(&dr.spec.host, &dr.metadata.namespace)]
        },
        |h, w| format!("{w}, which is older, already applies to {h}; one DestinationRule per host"),
    );

    let virtual_services = c.pick(
        Kind::VirtualService,
        &set.virtual_services,
        |vs| {
            vs.spec
                .hosts
                .iter()
                .filter(|h| *h == "*" || valid_host(h))
                .map(|h| resolve(h, &vs.metadata.namespace))
                .collect()
        },
        |h, w| {
            format!(
                "host {h} is already routed by {w}, which is older; one VirtualService per host"
            )
        },
    );

    let rate_limit_policies = c.pick(
        Kind::RateLimitPolicy,
        &set.rate_limit_policies,
        |rl| {
            let spec = &rl.spec;
            if spec.host != "*" && !valid_host(&spec.host) {
                return Vec::new();
            }
            let h = resolve(&spec.host, &rl.metadata.namespace);
            if spec.routes.is_empty() {
                vec![format!("every request to {h}")]
            } else {
                spec.routes
                    .iter()
                    .map(|r| format!("route {r:?} of {h}"))
                    .collect()
            }
        },
        |what, w| {
            format!(
                "{w}, which is older, already limits {what}; one RateLimitPolicy per host and route"
            )
        },
    );

    let retry_budgets = c.pick(
        Kind::RetryBudget,
        &set.retry_budgets,
        |rb| vec![resolve(&rb.spec.host, &rb.metadata.namespace)],
        |h, w| format!("{w}, which is older, already applies to {h}; one RetryBudget per host"),
    );

    let mut sidecars = c.pick(
        Kind::Sidecar,
        &set.sidecars,
        |sc| {
            if sc.spec.workload_selector.is_some() {
                return Vec::new();
            }
            vec![format!("namespace {}", sc.metadata.namespace)]
        },
        |ns, w| {
            format!(
                "{w}, which is older, already applies to {ns} without a selector; one per namespace"
            )
        },
    );
    // The first Sidecar whose selector matches a workload applies to it
    // (`sidecar::select`), so the oldest must come first.
    sidecars.sort_by_cached_key(|sc| {
        let m = &sc.metadata;
        (order(Kind::Sidecar, m), m.namespace.clone(), m.name.clone())
    });

    let mut peer_authentications = c.pick(
        Kind::PeerAuthentication,
        &set.peer_authentications,
        |pa| {
            if pa.spec.selector.is_some() {
                return Vec::new();
            }
            vec![format!("namespace {}", pa.metadata.namespace)]
        },
        |ns, w| {
            format!(
                "{w}, which is older, already applies to {ns} without a selector; one per namespace"
            )
        },
    );
    // The oldest matching policy applies (`peer_authentication::effective`).
    peer_authentications.sort_by_cached_key(|pa| {
        let m = &pa.metadata;
        (
            order(Kind::PeerAuthentication, m),
            m.namespace.clone(),
            m.name.clone(),
        )
    });

    let resolved = ResourceSet {
        service_entries,
        destination_rules,
        virtual_services,
        rate_limit_policies,
        retry_budgets,
        sidecars,
        // Policies add up (DENY first, then ALLOW): any number may apply
        // to one workload, so there is nothing to conflict over.
        authorization_policies: set.authorization_policies.clone(),
        peer_authentications,
    };
    (resolved, conflicts)
}

struct Resolver<'a, F> {
    order: &'a F,
    conflicts: &'a mut Vec<Conflict>,
}

impl<F: Fn(Kind, &Meta) -> u64> Resolver<'_, F> {
    /// Keep each object of one kind whose claims no older object of that kind
    /// holds. `claims` lists what an object claims (e.g. its resolved hosts);
    /// `reason` words a conflict from the claim and the winner.
    fn pick<S: Clone>(
        &mut self,
        kind: Kind,
        objs: &[Object<S>],
        claims: impl Fn(&Object<S>) -> Vec<String>,
        reason: impl Fn(&str, &ResourceRef) -> String,
    ) -> Vec<Object<S>> {
        let mut by_age: Vec<usize> = (0..objs.len()).collect();
        by_age.sort_by_cached_key(|&i| {
            let m = &objs[i].metadata;
            (
                (self.order)(kind, m),
                m.namespace.clone(),
                m.name.clone(),
                i,
            )
        });
        let mut owner: BTreeMap<String, usize> = BTreeMap::new();
        let mut keep = vec![false; objs.len()];
        for i in by_age {
            let mine = claims(&objs[i]);
            // The first claim taken by each distinct older owner.
            let mut lost_to: Vec<(usize, &str)> = Vec::new();
            for claim in &mine {
                if let Some(&w) = owner.get(claim)
                    && w != i
                    && !lost_to.iter().any(|(o, _)| *o == w)
                {
                    lost_to.push((w, claim));
                }
            }
            if lost_to.is_empty() {
                for claim in mine.iter() {
                    owner.entry(claim.clone()).or_insert(i);
                }
                keep[i] = true;
                continue;
            }
            let loser = ResourceRef::of(kind, &objs[i]);
            for (w, claim) in lost_to {
                let winner = ResourceRef::of(kind, &objs[w]);
                self.conflicts.push(Conflict {
                    reason: reason(claim, &winner),
                    loser: loser.clone(),
                    winner,
                });
            }
        }
        objs.iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(o, _)| o.clone())
            .collect()
    }
}
