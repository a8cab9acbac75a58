//! Matching one request attribute against a user's StringMatch.

use regex::Regex;

/// Compiled form of Istio's StringMatch.
#[derive(Debug, Clone)]
pub enum StringMatcher {
    Exact(String),
    Prefix(String),
    /// Anchored at both ends when compiled (Envoy's full-match semantics).
    Regex(Regex),
    /// `{}`: the attribute only has to be present.
    Present,
}

impl StringMatcher {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatcher::Exact(e) => value == e,
            StringMatcher::Prefix(p) => value.starts_with(p.as_str()),
            StringMatcher::Regex(r) => r.is_match(value),
            StringMatcher::Present => true,
        }
    }

    /// Case-insensitive variant for `ignoreUriCase` (exact and prefix only,
    /// as in Istio; a regex carries its own `(?i)`).
    pub fn matches_ignore_case(&self, value: &str) -> bool {
        match self {
            StringMatcher::Exact(e) => value.eq_ignore_ascii_case(e),
            StringMatcher::Prefix(p) => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            other => other.matches(value),
        }
    }

    /// The literal prefix a `rewrite.uri` replaces, when this is a prefix match.
    pub fn prefix(&self) -> Option<&str> {
        match self {
            StringMatcher::Prefix(p) => Some(p),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_matchers() {
        let re = Regex::new("^(?:/api/v[0-9]+)$").unwrap();
        let cases: &[(StringMatcher, &str, bool)] = &[
            (StringMatcher::Exact("/a".into()), "/a", true),
            (StringMatcher::Exact("/a".into()), "/ab", false),
            (StringMatcher::Prefix("/a".into()), "/ab", true),
            (StringMatcher::Prefix("/a".into()), "/b", false),
            (StringMatcher::Regex(re.clone()), "/api/v12", true),
            (StringMatcher::Regex(re), "/api/v12/x", false),
            (StringMatcher::Present, "", true),
        ];
        for (m, v, want) in cases {
            assert_eq!(m.matches(v), *want, "{m:?} on {v:?}");
        }
    }

    #[test]
    fn ignore_case() {
        assert!(StringMatcher::Prefix("/API".into()).matches_ignore_case("/api/x"));
        assert!(StringMatcher::Exact("/Login".into()).matches_ignore_case("/LOGIN"));
        assert!(!StringMatcher::Prefix("/apix".into()).matches_ignore_case("/api"));
    }
}
