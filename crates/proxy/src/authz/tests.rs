//! The authorization table: policies written as users write them (YAML,
//! through trellis-model's parser and validation), requests as plain data,
//! and the decision each must get. No sockets.

use std::collections::BTreeMap;

use http::HeaderMap;
use trellis_model::authorization::Action;
use trellis_model::{ResourceSet, parse_documents};

use super::decide::normalize_path;
use super::*;

const WEB: &str = "spiffe://cluster.local/ns/front/sa/web";
const BATCH: &str = "spiffe://cluster.local/ns/jobs/sa/batch";

/// Policies in `yaml` (documents without apiVersion/kind, see [`ap`]) that
/// apply to workload `app=api` in namespace `shop`.
fn policies(docs: &[String]) -> Policies {
    let text: String = docs.iter().map(|d| format!("---\n{d}")).collect();
    let set: ResourceSet = parse_documents("t.yaml", &text)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .collect();
    let v = trellis_model::validate::validate(&set).unwrap_or_else(|e| panic!("{e}"));
    let labels: BTreeMap<String, String> = [("app".to_string(), "api".to_string())].into();
    Policies::compile(&v.authorization_policies, "shop", &labels).unwrap()
}

/// The same policies the xDS way: trellis-translate's RBAC filters on the
/// inbound listener, read back by the proxy's xDS client (`xds::rbac`).
fn policies_via_xds(docs: &[String]) -> Policies {
    let text: String = docs.iter().map(|d| format!("---\n{d}")).collect();
    let set: ResourceSet = parse_documents("t.yaml", &text)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .collect();
    let v = trellis_model::validate::validate(&set).unwrap_or_else(|e| panic!("{e}"));
    let labels: BTreeMap<String, String> = [("app".to_string(), "api".to_string())].into();
    let applying: Vec<_> = v
        .authorization_policies
        .iter()
        .filter(|p| trellis_model::authorization::applies(p, "shop", &labels))
        .collect();
    let listener = trellis_translate::listener::inbound(
        "127.0.0.1:15006".parse().unwrap(),
        &trellis_translate::rbac::inbound(&applying),
        &trellis_translate::listener::InboundTls::PLAINTEXT,
    );
    crate::xds::rbac::inbound(&listener).unwrap_or_else(|e| panic!("{e}"))
}

fn ap(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

#[derive(Clone, Copy)]
struct Req {
    principal: Option<&'static str>,
    ip: &'static str,
    port: u16,
    /// None: opaque TCP.
    http: Option<(&'static str, &'static str, &'static str)>,
    header: Option<(&'static str, &'static str)>,
}

const GET: Req = Req {
    principal: None,
    ip: "10.0.0.1",
    port: 8080,
    http: Some(("api.shop", "GET", "/items")),
    header: None,
};

impl Req {
    fn method(self, m: &'static str) -> Req {
        let (h, _, p) = self.http.unwrap();
        Req {
            http: Some((h, m, p)),
            ..self
        }
    }
    fn path(self, p: &'static str) -> Req {
        let (h, m, _) = self.http.unwrap();
        Req {
            http: Some((h, m, p)),
            ..self
        }
    }
    fn host(self, h: &'static str) -> Req {
        let (_, m, p) = self.http.unwrap();
        Req {
            http: Some((h, m, p)),
            ..self
        }
    }
    fn from(self, principal: &'static str) -> Req {
        Req {
            principal: Some(principal),
            ..self
        }
    }
    fn ip(self, ip: &'static str) -> Req {
        Req { ip, ..self }
    }
    fn port(self, port: u16) -> Req {
        Req { port, ..self }
    }
    fn tcp(self) -> Req {
        Req { http: None, ..self }
    }
    fn header(self, name: &'static str, value: &'static str) -> Req {
        Req {
            header: Some((name, value)),
            ..self
        }
    }
}

fn run(p: &Policies, r: Req) -> Decision {
    let mut headers = HeaderMap::new();
    if let Some((n, v)) = r.header {
        headers.insert(n, v.parse().unwrap());
    }
    let path = r
        .http
        .map(|(_, _, p)| normalize_path(p.split('?').next().unwrap()).into_owned());
    let req = Request {
        principal: r.principal,
        source_ip: r.ip.parse().unwrap(),
        port: r.port,
        http: r.http.map(|(host, method, _)| HttpRequest {
            host,
            method,
            path: path.as_deref().unwrap(),
            headers: &headers,
        }),
    };
    decide(p, &req)
}

/// One row: policies, request, allowed?, and the deciding `policy#rule`
/// ("" for none).
struct Row {
    name: &'static str,
    docs: Vec<String>,
    req: Req,
    allowed: bool,
    by: &'static str,
}

fn row(name: &'static str, docs: Vec<String>, req: Req, allowed: bool, by: &'static str) -> Row {
    Row {
        name,
        docs,
        req,
        allowed,
        by,
    }
}

fn allow(spec_rules: &str) -> Vec<String> {
    vec![ap("allow", "shop", &format!("{{rules: {spec_rules}}}"))]
}

fn deny(spec_rules: &str) -> Vec<String> {
    vec![ap(
        "deny",
        "shop",
        &format!("{{action: DENY, rules: {spec_rules}}}"),
    )]
}

#[test]
fn authorization_table() {
    let get_only = "[{to: [{operation: {methods: [GET]}}]}]";
    let rows = vec![
        row("no policy: allowed", vec![], GET, true, ""),
        row(
            "allow all with rules: [{}]",
            allow("[{}]"),
            GET,
            true,
            "shop/allow#0",
        ),
        row(
            "ALLOW with no rules matches nothing: default deny",
            vec![ap("allow", "shop", "{}")],
            GET,
            false,
            "",
        ),
        row(
            "methods: GET allowed",
            allow(get_only),
            GET,
            true,
            "shop/allow#0",
        ),
        row(
            "methods: POST default-denied",
            allow(get_only),
            GET.method("POST"),
            false,
            "",
        ),
        row(
            "notMethods",
            allow("[{to: [{operation: {notMethods: [DELETE]}}]}]"),
            GET.method("DELETE"),
            false,
            "",
        ),
        row(
            "path exact",
            allow("[{to: [{operation: {paths: [/items]}}]}]"),
            GET,
            true,
            "shop/allow#0",
        ),
        row(
            "path exact is not a prefix",
            allow("[{to: [{operation: {paths: [/items]}}]}]"),
            GET.path("/items/1"),
            false,
            "",
        ),
        row(
            "path prefix",
            allow("[{to: [{operation: {paths: ['/items/*']}}]}]"),
            GET.path("/items/1"),
            true,
            "shop/allow#0",
        ),
        row(
            "path suffix",
            allow("[{to: [{operation: {paths: ['*.json']}}]}]"),
            GET.path("/a/b.json"),
            true,
            "shop/allow#0",
        ),
        row(
            "path matched without the query",
            allow("[{to: [{operation: {paths: [/items]}}]}]"),
            GET.path("/items?x=1"),
            true,
            "shop/allow#0",
        ),
        row(
            "dot segments removed before matching",
            deny("[{to: [{operation: {paths: ['/admin*']}}]}]"),
            GET.path("/x/../admin"),
            false,
            "shop/deny#0",
        ),
        row(
            "notPaths",
            allow("[{to: [{operation: {notPaths: ['/admin*']}}]}]"),
            GET.path("/admin/x"),
            false,
            "",
        ),
        row(
            "hosts case-insensitive, with port",
            allow("[{to: [{operation: {hosts: [API.shop]}}]}]"),
            GET.host("api.SHOP:8080"),
            true,
            "shop/allow#0",
        ),
        row(
            "hosts suffix",
            allow("[{to: [{operation: {hosts: ['*.shop']}}]}]"),
            GET.host("other.example"),
            false,
            "",
        ),
        row(
            "ports",
            allow("[{to: [{operation: {ports: ['8080']}}]}]"),
            GET,
            true,
            "shop/allow#0",
        ),
        row(
            "ports other",
            allow("[{to: [{operation: {ports: ['9090']}}]}]"),
            GET,
            false,
            "",
        ),
        row(
            "notPorts",
            deny("[{to: [{operation: {notPorts: ['8080']}}]}]"),
            GET.port(9000),
            false,
            "shop/deny#0",
        ),
        row(
            "ipBlocks",
            allow("[{from: [{source: {ipBlocks: [10.0.0.0/24]}}]}]"),
            GET,
            true,
            "shop/allow#0",
        ),
        row(
            "ipBlocks outside",
            allow("[{from: [{source: {ipBlocks: [10.0.0.0/24]}}]}]"),
            GET.ip("10.0.1.1"),
            false,
            "",
        ),
        row(
            "notIpBlocks",
            deny("[{from: [{source: {notIpBlocks: [10.0.0.0/8]}}]}]"),
            GET.ip("192.168.0.1"),
            false,
            "shop/deny#0",
        ),
        row(
            "principals",
            allow("[{from: [{source: {principals: [cluster.local/ns/front/sa/web]}}]}]"),
            GET.from(WEB),
            true,
            "shop/allow#0",
        ),
        row(
            "principals: other identity",
            allow("[{from: [{source: {principals: [cluster.local/ns/front/sa/web]}}]}]"),
            GET.from(BATCH),
            false,
            "",
        ),
        row(
            "principals: plaintext never matches",
            allow("[{from: [{source: {principals: ['*']}}]}]"),
            GET,
            false,
            "",
        ),
        row(
            "principals: '*' is any authenticated peer",
            allow("[{from: [{source: {principals: ['*']}}]}]"),
            GET.from(BATCH),
            true,
            "shop/allow#0",
        ),
        row(
            "principals suffix",
            allow("[{from: [{source: {principals: ['*/sa/web']}}]}]"),
            GET.from(WEB),
            true,
            "shop/allow#0",
        ),
        row(
            "notPrincipals: plaintext passes",
            deny("[{from: [{source: {notPrincipals: ['*']}}]}]"),
            GET,
            false,
            "shop/deny#0",
        ),
        row(
            "namespaces",
            allow("[{from: [{source: {namespaces: [front]}}]}]"),
            GET.from(WEB),
            true,
            "shop/allow#0",
        ),
        row(
            "namespaces other",
            allow("[{from: [{source: {namespaces: [front]}}]}]"),
            GET.from(BATCH),
            false,
            "",
        ),
        row(
            "namespaces prefix",
            allow("[{from: [{source: {namespaces: ['fr*']}}]}]"),
            GET.from(WEB),
            true,
            "shop/allow#0",
        ),
        row(
            "notNamespaces",
            deny("[{from: [{source: {notNamespaces: [front]}}]}]"),
            GET.from(BATCH),
            false,
            "shop/deny#0",
        ),
        row(
            "header condition",
            allow("[{when: [{key: 'request.headers[x-user]', values: [alice]}]}]"),
            GET.header("x-user", "alice"),
            true,
            "shop/allow#0",
        ),
        row(
            "header condition other value",
            allow("[{when: [{key: 'request.headers[x-user]', values: [alice]}]}]"),
            GET.header("x-user", "bob"),
            false,
            "",
        ),
        row(
            "header condition absent",
            allow("[{when: [{key: 'request.headers[x-user]', values: ['*']}]}]"),
            GET,
            false,
            "",
        ),
        row(
            "header notValues",
            deny("[{when: [{key: 'request.headers[x-user]', notValues: [alice]}]}]"),
            GET,
            false,
            "shop/deny#0",
        ),
        row(
            "source.namespace condition",
            allow("[{when: [{key: source.namespace, values: [jobs]}]}]"),
            GET.from(BATCH),
            true,
            "shop/allow#0",
        ),
        row(
            "source.principal condition",
            allow("[{when: [{key: source.principal, values: [cluster.local/ns/jobs/sa/batch]}]}]"),
            GET.from(WEB),
            false,
            "",
        ),
        row(
            "source.ip condition",
            allow("[{when: [{key: source.ip, values: [10.0.0.1]}]}]"),
            GET,
            true,
            "shop/allow#0",
        ),
        row(
            "destination.port condition",
            allow("[{when: [{key: destination.port, notValues: ['8080']}]}]"),
            GET,
            false,
            "",
        ),
        row(
            "AND inside a source",
            allow("[{from: [{source: {namespaces: [front], ipBlocks: [10.9.0.0/16]}}]}]"),
            GET.from(WEB),
            false,
            "",
        ),
        row(
            "OR across from entries",
            allow("[{from: [{source: {namespaces: [nope]}}, {source: {ipBlocks: [10.0.0.1]}}]}]"),
            GET,
            true,
            "shop/allow#0",
        ),
        row(
            "AND across from, to, when",
            allow(
                "[{from: [{source: {ipBlocks: [10.0.0.1]}}], to: [{operation: {methods: [GET]}}], when: [{key: destination.port, values: ['9']}]}]",
            ),
            GET,
            false,
            "",
        ),
        row(
            "second rule matches",
            allow(
                "[{to: [{operation: {methods: [PUT]}}]}, {to: [{operation: {paths: [/items]}}]}]",
            ),
            GET,
            true,
            "shop/allow#1",
        ),
        row(
            "DENY before ALLOW",
            [allow("[{}]"), deny(get_only)].concat(),
            GET,
            false,
            "shop/deny#0",
        ),
        row(
            "DENY not matching, ALLOW matching",
            [allow("[{}]"), deny(get_only)].concat(),
            GET.method("POST"),
            true,
            "shop/allow#0",
        ),
        row(
            "DENY alone does not default-deny",
            deny(get_only),
            GET.method("POST"),
            true,
            "",
        ),
        row(
            "root namespace applies mesh-wide",
            vec![ap(
                "mesh",
                "istio-system",
                "{action: DENY, rules: [{to: [{operation: {paths: ['/debug*']}}]}]}",
            )],
            GET.path("/debug/pprof"),
            false,
            "istio-system/mesh#0",
        ),
        row(
            "other namespace does not apply",
            vec![ap("other", "elsewhere", "{}")],
            GET,
            true,
            "",
        ),
        row(
            "selector not matching does not apply",
            vec![ap("db", "shop", "{selector: {matchLabels: {app: db}}}")],
            GET,
            true,
            "",
        ),
        row(
            "selector matching applies",
            vec![ap("api", "shop", "{selector: {matchLabels: {app: api}}}")],
            GET,
            false,
            "",
        ),
        // TCP: HTTP-only fields.
        row(
            "TCP: ALLOW rule with methods never matches",
            allow(get_only),
            GET.tcp(),
            false,
            "",
        ),
        row(
            "TCP: ALLOW rule with ports matches",
            allow("[{to: [{operation: {ports: ['8080']}}]}]"),
            GET.tcp(),
            true,
            "shop/allow#0",
        ),
        row(
            "TCP: ALLOW rule with header condition never matches",
            allow("[{when: [{key: 'request.headers[x]', values: [v1]}]}]"),
            GET.tcp(),
            false,
            "",
        ),
        row(
            "TCP: DENY ignores methods (denies more)",
            deny(get_only),
            GET.tcp(),
            false,
            "shop/deny#0",
        ),
        row(
            "TCP: DENY keeps its other fields",
            deny(
                "[{from: [{source: {ipBlocks: [10.9.9.9]}}], to: [{operation: {methods: [GET]}}]}]",
            ),
            GET.tcp(),
            true,
            "",
        ),
        row(
            "TCP: DENY ignores header conditions",
            deny("[{when: [{key: 'request.headers[x]', values: [v1]}]}]"),
            GET.tcp(),
            false,
            "shop/deny#0",
        ),
    ];
    let mut failures = Vec::new();
    for r in rows {
        for (how, p) in [
            ("yaml", policies(&r.docs)),
            ("xds", policies_via_xds(&r.docs)),
        ] {
            let d = run(&p, r.req);
            let by = d
                .decided_by()
                .map(|m| format!("{}#{}", m.policy, m.rule))
                .unwrap_or_default();
            if d.allowed() != r.allowed || by != r.by {
                failures.push(format!(
                    "{} ({how}): got allowed={} by={by:?}, want allowed={} by={:?}",
                    r.name,
                    d.allowed(),
                    r.allowed,
                    r.by
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn audit_marks_without_deciding() {
    let docs = [
        ap(
            "watch",
            "shop",
            "{action: AUDIT, rules: [{to: [{operation: {paths: ['/items*']}}]}]}",
        ),
        ap("all", "shop", "{rules: [{}]}"),
    ];
    // Over xDS too: AUDIT is Envoy's LOG action.
    let d = run(&policies_via_xds(&docs), GET);
    assert!(d.allowed());
    assert_eq!(
        d.audit.map(|m| m.policy.to_string()).as_deref(),
        Some("shop/watch")
    );
    let p = policies(&[
        ap(
            "watch",
            "shop",
            "{action: AUDIT, rules: [{to: [{operation: {paths: ['/items*']}}]}]}",
        ),
        ap("all", "shop", "{rules: [{}]}"),
    ]);
    let d = run(&p, GET);
    assert!(d.allowed());
    let audit = d.audit.expect("audited");
    assert_eq!(
        (&*audit.policy, audit.action, audit.rule),
        ("shop/watch", Action::Audit, 0)
    );
    assert!(run(&p, GET.path("/other")).audit.is_none());

    // AUDIT alone is not an ALLOW policy: no default deny.
    let p = policies(&[ap("watch", "shop", "{action: AUDIT, rules: [{}]}")]);
    let d = run(&p, GET.method("DELETE"));
    assert_eq!(d.cause, Cause::NoPolicy);
    assert!(d.audit.is_some());
    // On TCP an AUDIT rule with HTTP fields ignores them, like DENY.
    let p = policies(&[ap(
        "watch",
        "shop",
        "{action: AUDIT, rules: [{to: [{operation: {methods: [GET]}}]}]}",
    )]);
    assert!(run(&p, GET.tcp()).audit.is_some());
}

#[test]
fn no_policy_means_empty() {
    assert!(policies(&[]).is_empty());
    assert!(policies(&[ap("x", "other", "{}")]).is_empty());
    assert!(!policies(&[ap("x", "shop", "{}")]).is_empty());
}

#[test]
fn namespaces_of_principals() {
    let cases = [
        ("spiffe://cluster.local/ns/front/sa/web", Some("front")),
        ("cluster.local/ns/front/sa/web", Some("front")),
        ("spiffe://td/ns//sa/x", None),
        ("spiffe://td/sa/x", None),
        ("", None),
    ];
    for (p, want) in cases {
        assert_eq!(decide::namespace_of(p), want, "{p}");
    }
}

#[test]
fn dot_segments() {
    let cases = [
        ("/a/b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/../../b", "/b"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/", "/"),
        ("/a..b/c", "/a..b/c"),
    ];
    for (path, want) in cases {
        assert_eq!(normalize_path(path), want, "{path}");
    }
}
