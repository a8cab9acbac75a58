//! The envelope every resource shares (`apiVersion`, `kind`, `metadata`) and
//! the set of resources a proxy or control plane works from.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::authorization::AuthorizationPolicySpec;
use crate::networking::{DestinationRuleSpec, ServiceEntrySpec, SidecarSpec, VirtualServiceSpec};
use crate::peer_authentication::PeerAuthenticationSpec;
use crate::trellis::{RateLimitPolicySpec, RetryBudgetSpec};

/// Kubernetes object metadata, the part Trellis uses. Other metadata fields
/// (uid, resourceVersion, ...) are accepted and dropped: they belong to
/// whatever stored the object, not to its meaning.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Meta {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

pub fn default_namespace() -> String {
    "default".to_string()
}

/// The kinds Trellis understands: Istio's networking kinds and Trellis's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    ServiceEntry,
    DestinationRule,
    VirtualService,
    RateLimitPolicy,
    RetryBudget,
    Sidecar,
    AuthorizationPolicy,
    PeerAuthentication,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::ServiceEntry,
        Kind::DestinationRule,
        Kind::VirtualService,
        Kind::RateLimitPolicy,
        Kind::RetryBudget,
        Kind::Sidecar,
        Kind::AuthorizationPolicy,
        Kind::PeerAuthentication,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::ServiceEntry => "ServiceEntry",
            Kind::DestinationRule => "DestinationRule",
            Kind::VirtualService => "VirtualService",
            Kind::RateLimitPolicy => "RateLimitPolicy",
            Kind::RetryBudget => "RetryBudget",
            Kind::Sidecar => "Sidecar",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
        }
    }

    pub fn parse(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == kind)
    }

    /// API groups/versions accepted for this kind. Istio's kinds: v1 and the
    /// older versions still found in the wild, which have the same schema.
    /// Trellis's kinds: [`crate::trellis::API_VERSION`].
    pub fn api_versions(self) -> &'static [&'static str] {
        match self {
            Kind::ServiceEntry | Kind::DestinationRule | Kind::VirtualService | Kind::Sidecar => &[
                "networking.istio.io/v1",
                "networking.istio.io/v1beta1",
                "networking.istio.io/v1alpha3",
            ],
            Kind::PeerAuthentication => &["security.istio.io/v1", "security.istio.io/v1beta1"],
            Kind::RateLimitPolicy | Kind::RetryBudget => &[crate::trellis::API_VERSION],
            Kind::AuthorizationPolicy => crate::authorization::API_VERSIONS,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A resource as the user wrote it, with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Object<S> {
    pub metadata: Meta,
    pub spec: S,
    /// The file it was read from (`<api>` when applied through an API).
    #[serde(skip)]
    pub source: String,
}

impl<S> Object<S> {
    /// `namespace/name`
    pub fn key(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind")]
#[allow(
    clippy::large_enum_variant,
    reason = "a Resource lives only between parsing and ResourceSet::push, once per config load; \
              boxing would only add noise to every match"
)]
pub enum Resource {
    ServiceEntry(Object<ServiceEntrySpec>),
    DestinationRule(Object<DestinationRuleSpec>),
    VirtualService(Object<VirtualServiceSpec>),
    RateLimitPolicy(Object<RateLimitPolicySpec>),
    RetryBudget(Object<RetryBudgetSpec>),
    Sidecar(Object<SidecarSpec>),
    AuthorizationPolicy(Object<AuthorizationPolicySpec>),
    PeerAuthentication(Object<PeerAuthenticationSpec>),
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::ServiceEntry(_) => Kind::ServiceEntry,
            Resource::DestinationRule(_) => Kind::DestinationRule,
            Resource::VirtualService(_) => Kind::VirtualService,
            Resource::RateLimitPolicy(_) => Kind::RateLimitPolicy,
            Resource::RetryBudget(_) => Kind::RetryBudget,
            Resource::Sidecar(_) => Kind::Sidecar,
            Resource::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Resource::PeerAuthentication(_) => Kind::PeerAuthentication,
        }
    }

    pub fn meta(&self) -> &Meta {
        match self {
            Resource::ServiceEntry(o) => &o.metadata,
            Resource::DestinationRule(o) => &o.metadata,
            Resource::VirtualService(o) => &o.metadata,
            Resource::RateLimitPolicy(o) => &o.metadata,
            Resource::RetryBudget(o) => &o.metadata,
            Resource::Sidecar(o) => &o.metadata,
            Resource::AuthorizationPolicy(o) => &o.metadata,
            Resource::PeerAuthentication(o) => &o.metadata,
        }
    }

    pub fn source(&self) -> &str {
        match self {
            Resource::ServiceEntry(o) => &o.source,
            Resource::DestinationRule(o) => &o.source,
            Resource::VirtualService(o) => &o.source,
            Resource::RateLimitPolicy(o) => &o.source,
            Resource::RetryBudget(o) => &o.source,
            Resource::Sidecar(o) => &o.source,
            Resource::AuthorizationPolicy(o) => &o.source,
            Resource::PeerAuthentication(o) => &o.source,
        }
    }

    /// Say where the resource came from (a file, or e.g. `api`): errors name it.
    pub fn set_source(&mut self, source: impl Into<String>) {
        let source = source.into();
        match self {
            Resource::ServiceEntry(o) => o.source = source,
            Resource::DestinationRule(o) => o.source = source,
            Resource::VirtualService(o) => o.source = source,
            Resource::RateLimitPolicy(o) => o.source = source,
            Resource::RetryBudget(o) => o.source = source,
            Resource::Sidecar(o) => o.source = source,
            Resource::AuthorizationPolicy(o) => o.source = source,
            Resource::PeerAuthentication(o) => o.source = source,
        }
    }

    /// `Kind namespace/name`, the way errors name a resource.
    pub fn display_name(&self) -> String {
        let m = self.meta();
        format!("{} {}/{}", self.kind(), m.namespace, m.name)
    }
}

/// All resources of one config snapshot, split by kind, in load order
/// (files sorted by path, documents in file order).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResourceSet {
    pub service_entries: Vec<Object<ServiceEntrySpec>>,
    pub destination_rules: Vec<Object<DestinationRuleSpec>>,
    pub virtual_services: Vec<Object<VirtualServiceSpec>>,
    pub rate_limit_policies: Vec<Object<RateLimitPolicySpec>>,
    pub retry_budgets: Vec<Object<RetryBudgetSpec>>,
    pub sidecars: Vec<Object<SidecarSpec>>,
    pub authorization_policies: Vec<Object<AuthorizationPolicySpec>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_authentications: Vec<Object<PeerAuthenticationSpec>>,
}

impl ResourceSet {
    pub fn push(&mut self, r: Resource) {
        match r {
            Resource::ServiceEntry(o) => self.service_entries.push(o),
            Resource::DestinationRule(o) => self.destination_rules.push(o),
            Resource::VirtualService(o) => self.virtual_services.push(o),
            Resource::RateLimitPolicy(o) => self.rate_limit_policies.push(o),
            Resource::RetryBudget(o) => self.retry_budgets.push(o),
            Resource::Sidecar(o) => self.sidecars.push(o),
            Resource::AuthorizationPolicy(o) => self.authorization_policies.push(o),
            Resource::PeerAuthentication(o) => self.peer_authentications.push(o),
        }
    }

    pub fn len(&self) -> usize {
        self.service_entries.len()
            + self.destination_rules.len()
            + self.virtual_services.len()
            + self.rate_limit_policies.len()
            + self.retry_budgets.len()
            + self.sidecars.len()
            + self.authorization_policies.len()
            + self.peer_authentications.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FromIterator<Resource> for ResourceSet {
    fn from_iter<I: IntoIterator<Item = Resource>>(iter: I) -> Self {
        let mut set = ResourceSet::default();
        for r in iter {
            set.push(r);
        }
        set
    }
}
