//! Istio's `PeerAuthentication` (`security.istio.io`): whether a workload's
//! inbound side requires mutual TLS, and which one applies to a workload.
//!
//! Istio's precedence, which Trellis follows: a policy in the workload's
//! namespace whose `selector` matches its labels (the oldest if several),
//! then the namespace's policy without a selector, then the one without a
//! selector in the root namespace ([`crate::sidecar::ROOT_NAMESPACE`]). A
//! level whose mode is `UNSET` (or absent) inherits from the next one down;
//! `portLevelMtls` (only with a selector) overrides for one port. When
//! nothing decides, the caller's default applies (Trellis: STRICT when the
//! proxy has a certificate, plaintext when it has none).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::resource::Object;
use crate::sidecar::ROOT_NAMESPACE;

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    /// Keyed by the workload's port number (as a string in YAML maps).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<String, Mtls>,
}

pub use crate::selector::Selector;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mtls {
    #[serde(default)]
    pub mode: MtlsMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent level.
    #[default]
    Unset,
    /// Plaintext only (TLS bytes are passed to the app as they are).
    Disable,
    /// mTLS and plaintext both accepted.
    Permissive,
    /// mTLS only.
    Strict,
}

impl MtlsMode {
    pub fn name(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

/// The mode that applies and the policy that set it (`namespace/name`, or
/// None when no policy decided and the caller's default applies).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Effective {
    pub mode: MtlsMode,
    pub from: Option<String>,
}

/// Whether `policy` is one of those [`effective`] weighs for a workload in
/// `namespace` with `labels`: one selecting it in its namespace, its
/// namespace's, or the root namespace's mesh-wide one.
pub fn considered(
    policy: &Object<PeerAuthenticationSpec>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let ns = &policy.metadata.namespace;
    match &policy.spec.selector {
        None => ns == namespace || ns == ROOT_NAMESPACE,
        Some(sel) => ns == namespace && sel.matches(labels),
    }
}

/// The effective mode for port `port` of a workload in `namespace` with
/// `labels`. `policies` must be in precedence order (oldest first, as
/// conflict resolution leaves them). `Unset` with `from: None` means no
/// policy decided.
pub fn effective(
    policies: &[Object<PeerAuthenticationSpec>],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    port: Option<u16>,
) -> Effective {
    let wide = |ns: &str| {
        policies
            .iter()
            .find(|p| p.metadata.namespace == ns && p.spec.selector.is_none())
    };
    let selected = policies.iter().find(|p| {
        p.metadata.namespace == namespace
            && p.spec.selector.as_ref().is_some_and(|s| s.matches(labels))
    });
    let port_key = port.map(|p| p.to_string());
    // Most specific first; the first level that sets a mode decides.
    let mut levels: Vec<(MtlsMode, &Object<PeerAuthenticationSpec>)> = Vec::new();
    if let Some(p) = selected {
        if let Some(m) = port_key
            .as_ref()
            .and_then(|k| p.spec.port_level_mtls.get(k))
        {
            levels.push((m.mode, p));
        }
        levels.push((p.spec.mtls.unwrap_or_default().mode, p));
    }
    for p in [wide(namespace), wide(ROOT_NAMESPACE)]
        .into_iter()
        .flatten()
    {
        levels.push((p.spec.mtls.unwrap_or_default().mode, p));
    }
    levels
        .into_iter()
        .find(|(m, _)| *m != MtlsMode::Unset)
        .map_or(
            Effective {
                mode: MtlsMode::Unset,
                from: None,
            },
            |(mode, p)| Effective {
                mode,
                from: Some(p.key()),
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Meta;

    fn pa(
        ns: &str,
        name: &str,
        selector: Option<&[(&str, &str)]>,
        mode: MtlsMode,
        ports: &[(u16, MtlsMode)],
    ) -> Object<PeerAuthenticationSpec> {
        Object {
            metadata: Meta {
                name: name.into(),
                namespace: ns.into(),
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
            },
            spec: PeerAuthenticationSpec {
                selector: selector.map(|s| Selector {
                    match_labels: s
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                }),
                mtls: Some(Mtls { mode }),
                port_level_mtls: ports
                    .iter()
                    .map(|(p, m)| (p.to_string(), Mtls { mode: *m }))
                    .collect(),
            },
            source: "test.yaml".into(),
        }
    }

    /// (what, policies, port, mode, decided by)
    type Case<'a> = (
        &'a str,
        Vec<&'a Object<PeerAuthenticationSpec>>,
        Option<u16>,
        MtlsMode,
        Option<&'a str>,
    );

    #[test]
    fn istio_precedence() {
        use MtlsMode::*;
        let labels: BTreeMap<String, String> = [("app".to_string(), "reviews".to_string())].into();
        let mesh = pa("istio-system", "mesh", None, Strict, &[]);
        let ns = pa("shop", "ns", None, Permissive, &[]);
        let ns_unset = pa("shop", "ns", None, Unset, &[]);
        let wl = pa(
            "shop",
            "wl",
            Some(&[("app", "reviews")]),
            Disable,
            &[(8080, Strict)],
        );
        let wl_unset = pa(
            "shop",
            "wl",
            Some(&[("app", "reviews")]),
            Unset,
            &[(8080, Unset)],
        );
        let other_wl = pa("shop", "other", Some(&[("app", "ratings")]), Disable, &[]);
        let elsewhere = pa("other", "ns", None, Disable, &[]);
        let cases: Vec<Case> = vec![
            ("nothing", vec![], Some(80), Unset, None),
            (
                "mesh-wide",
                vec![&mesh],
                Some(80),
                Strict,
                Some("istio-system/mesh"),
            ),
            (
                "namespace over mesh",
                vec![&mesh, &ns],
                Some(80),
                Permissive,
                Some("shop/ns"),
            ),
            (
                "namespace unset inherits",
                vec![&mesh, &ns_unset],
                Some(80),
                Strict,
                Some("istio-system/mesh"),
            ),
            (
                "selector over namespace",
                vec![&mesh, &ns, &wl],
                Some(80),
                Disable,
                Some("shop/wl"),
            ),
            (
                "port level over selector",
                vec![&mesh, &ns, &wl],
                Some(8080),
                Strict,
                Some("shop/wl"),
            ),
            (
                "selector unset inherits",
                vec![&mesh, &ns, &wl_unset],
                Some(8080),
                Permissive,
                Some("shop/ns"),
            ),
            (
                "selector not matching",
                vec![&ns, &other_wl],
                Some(80),
                Permissive,
                Some("shop/ns"),
            ),
            ("other namespace", vec![&elsewhere], Some(80), Unset, None),
            ("no port known", vec![&wl], None, Disable, Some("shop/wl")),
        ];
        for (what, policies, port, mode, from) in cases {
            let owned: Vec<_> = policies.into_iter().cloned().collect();
            let got = effective(&owned, "shop", &labels, port);
            assert_eq!(got.mode, mode, "{what}");
            assert_eq!(got.from.as_deref(), from, "{what}");
        }
    }
}
