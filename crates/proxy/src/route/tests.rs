//! Table tests of the routing decision: no sockets.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn view<'a>(
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    h: &'a HeaderMap,
) -> RequestView<'a> {
    RequestView {
        method,
        scheme: "http",
        authority: "reviews:9080",
        path,
        query,
        headers: h,
        port: 9080,
    }
}

fn re(p: &str) -> StringMatcher {
    StringMatcher::Regex(trellis_model::validate::compile_regex(p).unwrap())
}

fn hname(s: &str) -> HeaderName {
    HeaderName::from_bytes(s.as_bytes()).unwrap()
}

#[test]
fn request_match_table() {
    struct Case {
        name: &'static str,
        m: RequestMatch,
        method: &'static str,
        path: &'static str,
        query: Option<&'static str>,
        headers: Vec<(&'static str, &'static str)>,
        want: bool,
    }
    let cases = vec![
        Case {
            name: "empty matches all",
            m: RequestMatch::default(),
            method: "GET",
            path: "/",
            query: None,
            headers: vec![],
            want: true,
        },
        Case {
            name: "uri exact",
            m: RequestMatch {
                uri: Some(StringMatcher::Exact("/a".into())),
                ..Default::default()
            },
            method: "GET",
            path: "/a",
            query: None,
            headers: vec![],
            want: true,
        },
        Case {
            name: "uri exact miss",
            m: RequestMatch {
                uri: Some(StringMatcher::Exact("/a".into())),
                ..Default::default()
            },
            method: "GET",
            path: "/a/b",
            query: None,
            headers: vec![],
            want: false,
        },
        Case {
            name: "uri prefix",
            m: RequestMatch {
                uri: Some(StringMatcher::Prefix("/api".into())),
                ..Default::default()
            },
            method: "GET",
            path: "/api/v1",
            query: None,
            headers: vec![],
            want: true,
        },
        Case {
            name: "uri regex is a full match",
            m: RequestMatch {
                uri: Some(re("/v[0-9]")),
                ..Default::default()
            },
            method: "GET",
            path: "/v1/x",
            query: None,
            headers: vec![],
            want: false,
        },
        Case {
            name: "uri ignore case",
            m: RequestMatch {
                uri: Some(StringMatcher::Prefix("/API".into())),
                ignore_uri_case: true,
                ..Default::default()
            },
            method: "GET",
            path: "/api/x",
            query: None,
            headers: vec![],
            want: true,
        },
        Case {
            name: "method",
            m: RequestMatch {
                method: Some(StringMatcher::Exact("POST".into())),
                ..Default::default()
            },
            method: "GET",
            path: "/",
            query: None,
            headers: vec![],
            want: false,
        },
        Case {
            name: "header exact",
            m: RequestMatch {
                headers: vec![(hname("end-user"), StringMatcher::Exact("jason".into()))],
                ..Default::default()
            },
            method: "GET",
            path: "/",
            query: None,
            headers: vec![("end-user", "jason")],
            want: true,
        },
        Case {
            name: "header absent",
            m: RequestMatch {
                headers: vec![(hname("end-user"), StringMatcher::Exact("jason".into()))],
                ..Default::default()
            },
            method: "GET",
            path: "/",
            query: None,
            headers: vec![],
            want: false,
        },
        Case {
            name: "header prefix",
            m: RequestMatch {
                headers: vec![(hname("x-v"), StringMatcher::Prefix("be".into()))],
                ..Default::default()
            },
            method: "GET",
            path: "/",
            query: None,
            headers: vec![("x-v", "beta-2")],
            want: true,
        },
        Case {
            name: "header regex",
            m: RequestMatch {
                headers: vec![(hname("x-v"), re("v[12]"))],
                ..Default::default()
            },
            method: "GET",
            path: "/",
            query: None,
            headers: vec![("x-v", "v3")],
            want: false,
        },
        Case {
            name: "header present",
            m: RequestMatch {
                headers: vec![(hname("x-debug"), StringMatcher::Present)],
                ..Default::default()
            },
            method: "GET",
            path: "/",
            query: None,
            headers: vec![("x-debug", "")],
            want: true,
        },
        Case {
            name: "repeated header joined by comma",
            m: RequestMatch {
                headers: vec![(hname("x-v"), StringMatcher::Exact("a,b".into()))],
                ..Default::default()
            },
            method: "GET",
            path: "/",
            query: None,
            headers: vec![("x-v", "a"), ("x-v", "b")],
            want: true,
        },
        Case {
            name: "withoutHeaders",
            m: RequestMatch {
                without_headers: vec![(hname("x-canary"), StringMatcher::Present)],
                ..Default::default()
            },
            method: "GET",
            path: "/",
            query: None,
            headers: vec![("x-canary", "1")],
            want: false,
        },
        Case {
            name: "query exact",
            m: RequestMatch {
                query_params: vec![("user".into(), StringMatcher::Exact("bob".into()))],
                ..Default::default()
            },
            method: "GET",
            path: "/",
            query: Some("a=1&user=bob"),
            headers: vec![],
            want: true,
        },
        Case {
            name: "query missing",
            m: RequestMatch {
                query_params: vec![("user".into(), StringMatcher::Exact("bob".into()))],
                ..Default::default()
            },
            method: "GET",
            path: "/",
            query: Some("a=1"),
            headers: vec![],
            want: false,
        },
        Case {
            name: "query regex",
            m: RequestMatch {
                query_params: vec![("id".into(), re("[0-9]+"))],
                ..Default::default()
            },
            method: "GET",
            path: "/",
            query: Some("id=42"),
            headers: vec![],
            want: true,
        },
        Case {
            name: "port",
            m: RequestMatch {
                port: Some(80),
                ..Default::default()
            },
            method: "GET",
            path: "/",
            query: None,
            headers: vec![],
            want: false,
        },
        Case {
            name: "all conditions must hold",
            m: RequestMatch {
                uri: Some(StringMatcher::Prefix("/a".into())),
                method: Some(StringMatcher::Exact("GET".into())),
                headers: vec![(hname("x"), StringMatcher::Exact("1".into()))],
                ..Default::default()
            },
            method: "GET",
            path: "/a",
            query: None,
            headers: vec![("x", "2")],
            want: false,
        },
    ];
    for c in cases {
        let h = headers(&c.headers);
        assert_eq!(
            c.m.matches(&view(c.method, c.path, c.query, &h)),
            c.want,
            "{}",
            c.name
        );
    }
}

fn route(name: &str, matches: Vec<RequestMatch>) -> Route {
    Route {
        name: name.into(),
        matches,
        action: RouteAction {
            destinations: vec![],
            total_weight: 0,
            rewrite: None,
            timeout: None,
            headers: HeaderOps::default(),
            retry: crate::resilience::retry::RetryPolicy::istio_default(),
            fault: None,
            mirrors: vec![],
            rate_limit: None,
        },
    }
}

#[test]
fn first_matching_route_wins() {
    let routes = vec![
        route(
            "jason",
            vec![RequestMatch {
                headers: vec![(hname("end-user"), StringMatcher::Exact("jason".into()))],
                ..Default::default()
            }],
        ),
        route(
            "api",
            vec![
                RequestMatch {
                    uri: Some(StringMatcher::Prefix("/api".into())),
                    ..Default::default()
                },
                RequestMatch {
                    uri: Some(StringMatcher::Exact("/v1".into())),
                    ..Default::default()
                },
            ],
        ),
        route("catch-all", vec![]),
        route("never", vec![]),
    ];
    let cases = [
        (vec![("end-user", "jason")], "/api", "jason", None),
        (vec![], "/api/x", "api", Some(0)),
        (vec![], "/v1", "api", Some(1)),
        (vec![], "/other", "catch-all", None),
    ];
    for (hs, path, want, want_match) in cases {
        let h = headers(&hs);
        let (r, m) = select(&routes, &view("GET", path, None, &h)).unwrap();
        assert_eq!(&*r.name, want, "{path}");
        let idx = m.map(|m| r.matches.iter().position(|x| std::ptr::eq(x, m)).unwrap());
        if want == "api" {
            assert_eq!(idx, want_match, "{path}");
        }
    }
    let only_api = &routes[1..2];
    let h = HeaderMap::new();
    assert!(select(only_api, &view("GET", "/nope", None, &h)).is_none());
}

#[test]
fn weighted_pick_covers_the_range() {
    let w = [80, 20];
    assert_eq!(pick_weighted(w, 0), Some(0));
    assert_eq!(pick_weighted(w, 79), Some(0));
    assert_eq!(pick_weighted(w, 80), Some(1));
    assert_eq!(pick_weighted(w, 99), Some(1));
    assert_eq!(pick_weighted(w, 100), None);
    assert_eq!(pick_weighted([0, 100], 0), Some(1));
    // Every roll lands in proportion to the weights.
    let mut counts = [0u32; 3];
    for roll in 0..100 {
        counts[pick_weighted([50, 30, 20], roll).unwrap()] += 1;
    }
    assert_eq!(counts, [50, 30, 20]);
}

#[test]
fn uri_rewrites() {
    let prefix = RequestMatch {
        uri: Some(StringMatcher::Prefix("/v1/".into())),
        ..Default::default()
    };
    let exact = RequestMatch {
        uri: Some(StringMatcher::Exact("/login".into())),
        ..Default::default()
    };
    let replace = |s: &str| UriRewrite::Replace(s.into());
    // (rewrite, the match that held, path, query, want)
    type Case<'a> = (
        UriRewrite,
        Option<&'a RequestMatch>,
        &'a str,
        Option<&'a str>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            replace("/v2/"),
            Some(&prefix),
            "/v1/items",
            None,
            "/v2/items",
        ),
        (
            replace("/"),
            Some(&prefix),
            "/v1/items",
            Some("a=1"),
            "/items?a=1",
        ),
        (replace("/auth"), Some(&exact), "/login", None, "/auth"),
        (replace("/all"), None, "/anything/here", None, "/all"),
        (
            UriRewrite::Regex(
                regex::Regex::new("^/service/([^/]+)(/.*)$").unwrap(),
                "${2}/${1}".into(),
            ),
            None,
            "/service/foo/v1/api",
            None,
            "/v1/api/foo",
        ),
    ];
    for (rw, m, path, q, want) in cases {
        assert_eq!(rewrite_path(&rw, m, path, q), want, "{path}");
    }
}

#[test]
fn query_params_are_raw_and_first_wins() {
    assert_eq!(query_param(Some("a=1&b=2&a=3"), "a"), Some("1"));
    assert_eq!(query_param(Some("flag&b=2"), "flag"), Some(""));
    assert_eq!(query_param(Some("q=a%20b"), "q"), Some("a%20b"));
    assert_eq!(query_param(None, "a"), None);
}

#[test]
fn route_table_finds_exact_then_most_specific_wildcard() {
    let vh = |n: &str| {
        Arc::new(VirtualHost {
            name: n.into(),
            ports: vec![],
            any_port: None,
            rate_limit: None,
        })
    };
    let mut t = RouteTable::default();
    t.insert("reviews", vh("reviews-fqdn"));
    t.insert("*", vh("star"));
    t.insert("*.example.com", vh("example"));
    t.insert("*.api.example.com", vh("api"));
    let cases = [
        ("reviews", "reviews-fqdn"),
        ("REVIEWS", "reviews-fqdn"),
        ("x.example.com", "example"),
        ("v1.api.example.com", "api"),
        ("other.org", "star"),
    ];
    for (host, want) in cases {
        assert_eq!(t.find(host).unwrap().name, want, "{host}");
    }
}

#[test]
fn tcp_route_by_port() {
    let routes = [
        TcpRoute {
            ports: vec![5432],
            destinations: vec![],
            total_weight: 0,
        },
        TcpRoute {
            ports: vec![],
            destinations: vec![],
            total_weight: 7,
        },
    ];
    assert_eq!(select_tcp(&routes, 5432).unwrap().ports, vec![5432]);
    assert_eq!(select_tcp(&routes, 6379).unwrap().total_weight, 7);
}
