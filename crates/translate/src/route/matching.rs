//! Request matching and URI rewrites in Envoy's terms.

use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RouteAction, RouteMatch,
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    route_match,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher as EnvoyStringMatcher,
    string_matcher::MatchPattern,
};
use trellis_model::networking::{HttpMatchRequest, HttpRewrite, StringMatch};

use crate::encode;

fn string_matcher(sm: &StringMatch) -> Option<EnvoyStringMatcher> {
    let pattern = match (&sm.exact, &sm.prefix, &sm.regex) {
        (Some(e), _, _) => MatchPattern::Exact(e.clone()),
        (_, Some(p), _) => MatchPattern::Prefix(p.clone()),
        (_, _, Some(r)) => MatchPattern::SafeRegex(regex(r)),
        _ => return None,
    };
    Some(EnvoyStringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    })
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        engine_type: None,
    }
}

/// A header condition; `{}` means "present". Inverted (`withoutHeaders`),
/// a missing header is matched as an empty value, so that "not `a`" holds
/// for a request without the header, as in trellis-proxy (Envoy would
/// otherwise fail the inverted match on a missing header).
fn header_matcher(name: &str, sm: &StringMatch, invert: bool) -> HeaderMatcher {
    let spec = match string_matcher(sm) {
        Some(m) => HeaderMatchSpecifier::StringMatch(m),
        None => HeaderMatchSpecifier::PresentMatch(true),
    };
    let string = matches!(spec, HeaderMatchSpecifier::StringMatch(_));
    HeaderMatcher {
        name: name.to_ascii_lowercase(),
        invert_match: invert,
        treat_missing_header_as_empty: invert && string,
        header_match_specifier: Some(spec),
    }
}

pub(super) fn route_match(m: Option<&HttpMatchRequest>) -> RouteMatch {
    let Some(m) = m else {
        return RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
            ..Default::default()
        };
    };
    let ignore_case = m.ignore_uri_case.unwrap_or(false);
    let (path, case_applies) = match m.uri.as_ref() {
        Some(StringMatch { exact: Some(e), .. }) => {
            (route_match::PathSpecifier::Path(e.clone()), true)
        }
        Some(StringMatch {
            prefix: Some(p), ..
        }) => (route_match::PathSpecifier::Prefix(p.clone()), true),
        Some(StringMatch { regex: Some(r), .. }) => {
            (route_match::PathSpecifier::SafeRegex(regex(r)), false)
        }
        _ => (route_match::PathSpecifier::Prefix("/".to_string()), false),
    };
    let mut headers = Vec::new();
    for (pseudo, sm) in [
        (":method", &m.method),
        (":scheme", &m.scheme),
        (":authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            headers.push(header_matcher(pseudo, sm, false));
        }
    }
    headers.extend(m.headers.iter().map(|(k, sm)| header_matcher(k, sm, false)));
    headers.extend(
        m.without_headers
            .iter()
            .map(|(k, sm)| header_matcher(k, sm, true)),
    );
    RouteMatch {
        path_specifier: Some(path),
        case_sensitive: (ignore_case && case_applies).then(|| encode::boolv(false)),
        headers,
        query_parameters: m
            .query_params
            .iter()
            .map(|(k, sm)| QueryParameterMatcher {
                name: k.clone(),
                query_parameter_match_specifier: Some(match string_matcher(sm) {
                    Some(m) => QueryParameterMatchSpecifier::StringMatch(m),
                    None => QueryParameterMatchSpecifier::PresentMatch(true),
                }),
            })
            .collect(),
        ..Default::default()
    }
}

/// RE2 substitution text for a literal: `\` starts a group reference there.
fn literal_substitution(s: &str) -> String {
    s.replace('\\', "\\\\")
}

/// `rewrite.uri` for one match block, as trellis-proxy rewrites: after a
/// prefix match the prefix is replaced (without doubling a `/` when the
/// replacement ends in one); otherwise the whole path is replaced. The
/// query string is kept either way.
pub(super) fn uri_rewrite(
    action: &mut RouteAction,
    rw: &HttpRewrite,
    m: Option<&HttpMatchRequest>,
) {
    if let Some(rr) = &rw.uri_regex_rewrite {
        action.regex_rewrite = Some(RegexMatchAndSubstitute {
            pattern: Some(regex(&rr.pattern)),
            substitution: rr.rewrite.clone(),
        });
        return;
    }
    let Some(replacement) = &rw.uri else { return };
    let uri = m.and_then(|m| m.uri.as_ref());
    match uri {
        Some(StringMatch {
            prefix: Some(prefix),
            ..
        }) => {
            if replacement.ends_with('/') {
                // `/v1` -> `/` on `/v1/x` must give `/x`, not `//x`.
                let case = if m.and_then(|m| m.ignore_uri_case).unwrap_or(false) {
                    "(?i)"
                } else {
                    ""
                };
                action.regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(regex(&format!("^{case}{}/?", regex::escape(prefix)))),
                    substitution: literal_substitution(replacement),
                });
            } else {
                action.prefix_rewrite = replacement.clone();
            }
        }
        // Envoy replaces the whole path of an exact (`path`) match.
        Some(StringMatch { exact: Some(_), .. }) => action.prefix_rewrite = replacement.clone(),
        _ => {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex("^.*$")),
                substitution: literal_substitution(replacement),
            });
        }
    }
}
