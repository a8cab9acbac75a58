//! Host names as Kubernetes DNS resolves them: a short name is looked up
//! through the search list of the namespace it is written in.

/// The cluster DNS suffix. Fixed for now; later read from mesh config.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The fully qualified name Istio gives a short name written in `namespace`:
/// `reviews` -> `reviews.<namespace>.svc.cluster.local`. Names with a dot are
/// left alone here; [`search_list`] covers `reviews.default`.
pub fn qualify(name: &str, namespace: &str) -> String {
    let name = name.to_ascii_lowercase();
    if name.contains('.') || name.starts_with('*') {
        name
    } else {
        format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}")
    }
}

/// The candidates a resolver in `namespace` tries for `name`, in order, like
/// resolv.conf's `search <ns>.svc.cluster.local svc.cluster.local cluster.local`.
pub fn search_list(name: &str, namespace: &str) -> [String; 4] {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    [
        format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}"),
        format!("{name}.svc.{CLUSTER_DOMAIN}"),
        format!("{name}.{CLUSTER_DOMAIN}"),
        name,
    ]
}

/// Resolve a host reference written in a resource of `namespace` against the
/// known service hosts: the first search-list candidate that names a service
/// wins; if none does, the Istio rule ([`qualify`]) decides.
pub fn resolve(name: &str, namespace: &str, is_known: impl Fn(&str) -> bool) -> String {
    let lower = name.to_ascii_lowercase();
    if is_known(&lower) {
        return lower;
    }
    if !lower.starts_with('*') {
        for candidate in search_list(&lower, namespace) {
            if is_known(&candidate) {
                return candidate;
            }
        }
    }
    qualify(&lower, namespace)
}

/// Every name a client in `client_ns` may use for the service `fqdn`
/// (`reviews`, `reviews.default`, `reviews.default.svc`, the FQDN).
pub fn aliases(fqdn: &str, client_ns: &str) -> Vec<String> {
    let suffix = format!(".svc.{CLUSTER_DOMAIN}");
    let mut out = vec![fqdn.to_string()];
    if let Some(name_ns) = fqdn.strip_suffix(&suffix) {
        out.push(format!("{name_ns}.svc"));
        out.push(name_ns.to_string());
        if let Some((name, ns)) = name_ns.split_once('.')
            && ns == client_ns
            && !name.contains('.')
        {
            out.push(name.to_string());
        }
    }
    out
}

/// Does `host` match the pattern (exact, `*.suffix`, or `*`)?
pub fn matches_pattern(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifies_short_names_only() {
        assert_eq!(
            qualify("reviews", "default"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(qualify("Reviews", "prod"), "reviews.prod.svc.cluster.local");
        assert_eq!(qualify("reviews.default", "x"), "reviews.default");
        assert_eq!(qualify("*.example.com", "x"), "*.example.com");
    }

    #[test]
    fn resolves_through_the_search_list() {
        let known = |h: &str| h == "reviews.default.svc.cluster.local" || h == "api.example.com";
        let cases = [
            ("reviews", "default", "reviews.default.svc.cluster.local"),
            (
                "reviews.default",
                "other",
                "reviews.default.svc.cluster.local",
            ),
            (
                "reviews.default.svc",
                "other",
                "reviews.default.svc.cluster.local",
            ),
            (
                "reviews.default.svc.cluster.local",
                "x",
                "reviews.default.svc.cluster.local",
            ),
            ("api.example.com", "default", "api.example.com"),
            ("ratings", "default", "ratings.default.svc.cluster.local"),
            ("unknown.example.org", "default", "unknown.example.org"),
        ];
        for (name, ns, want) in cases {
            assert_eq!(resolve(name, ns, known), want, "{name} in {ns}");
        }
    }

    #[test]
    fn aliases_depend_on_the_client_namespace() {
        let fqdn = "reviews.default.svc.cluster.local";
        assert_eq!(
            aliases(fqdn, "default"),
            [fqdn, "reviews.default.svc", "reviews.default", "reviews"]
        );
        assert_eq!(
            aliases(fqdn, "prod"),
            [fqdn, "reviews.default.svc", "reviews.default"]
        );
        assert_eq!(aliases("api.example.com", "default"), ["api.example.com"]);
    }

    #[test]
    fn wildcard_patterns() {
        assert!(matches_pattern("*", "anything"));
        assert!(matches_pattern("*.example.com", "a.example.com"));
        assert!(!matches_pattern("*.example.com", "example.com"));
        assert!(matches_pattern("a.b", "a.b"));
        assert!(!matches_pattern("a.b", "a.bc"));
    }
}
