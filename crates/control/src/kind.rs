//! Kind names as users type them, kubectl-style: `VirtualService`,
//! `virtualservice`, `virtualservices` or the short name `vs`.

use trellis_model::resource::Kind;

/// Istio's short names, and Trellis's for its own kinds.
pub fn short_name(kind: Kind) -> &'static str {
    match kind {
        Kind::ServiceEntry => "se",
        Kind::DestinationRule => "dr",
        Kind::VirtualService => "vs",
        Kind::RateLimitPolicy => "rlp",
        Kind::RetryBudget => "rb",
        // Istio defines none; kubectl users type the name.
        Kind::Sidecar => "sidecar",
        Kind::AuthorizationPolicy => "ap",
        Kind::PeerAuthentication => "pa",
    }
}

fn plural(kind: Kind) -> String {
    let name = kind.name().to_ascii_lowercase();
    match name.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{name}s"),
    }
}

/// The kind a user means, case-insensitively, or None.
pub fn parse(s: &str) -> Option<Kind> {
    let lower = s.to_ascii_lowercase();
    Kind::ALL.into_iter().find(|k| {
        k.name().eq_ignore_ascii_case(&lower) || short_name(*k) == lower || plural(*k) == lower
    })
}

/// One sentence listing the kinds, for errors.
pub fn known() -> String {
    Kind::ALL
        .map(|k| format!("{} ({})", k.name(), short_name(k)))
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_spellings() {
        let cases = [
            ("VirtualService", Some(Kind::VirtualService)),
            ("virtualservice", Some(Kind::VirtualService)),
            ("virtualservices", Some(Kind::VirtualService)),
            ("vs", Some(Kind::VirtualService)),
            ("VS", Some(Kind::VirtualService)),
            ("serviceentries", Some(Kind::ServiceEntry)),
            ("se", Some(Kind::ServiceEntry)),
            ("dr", Some(Kind::DestinationRule)),
            ("destinationrules", Some(Kind::DestinationRule)),
            ("ratelimitpolicies", Some(Kind::RateLimitPolicy)),
            ("retrybudget", Some(Kind::RetryBudget)),
            ("sidecars", Some(Kind::Sidecar)),
            ("Sidecar", Some(Kind::Sidecar)),
            ("authorizationpolicies", Some(Kind::AuthorizationPolicy)),
            ("ap", Some(Kind::AuthorizationPolicy)),
            ("peerauthentications", Some(Kind::PeerAuthentication)),
            ("pa", Some(Kind::PeerAuthentication)),
            ("gateway", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse(s), want, "{s:?}");
        }
    }
}
