//! AuthorizationPolicy: what is accepted, and every refusal at its exact
//! path with a reason (parse errors from serde, semantic ones from
//! `authorization::validate`).

use trellis_model::authorization::{Action, Pattern};
use trellis_model::parse_documents;

use crate::support::{Want, assert_errors, check, want};

const C: &str = "case.yaml";
const AP: &str = "AuthorizationPolicy shop/p";

fn ap(spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: shop}}\nspec: {spec}\n"
    )
}

#[test]
fn accepted_forms() {
    let text = ap(
        "{selector: {matchLabels: {app: web}}, action: DENY, rules: [\
         {from: [{source: {principals: ['cluster.local/ns/a/sa/b'], notNamespaces: [kube-*], ipBlocks: [10.0.0.0/8], notIpBlocks: ['10.1.2.3']}}], \
          to: [{operation: {hosts: ['*.example.com'], notPorts: ['8081'], methods: [GET, POST], paths: ['/api/*'], notPaths: ['*.json']}}], \
          when: [{key: 'request.headers[X-User]', values: [alice]}, {key: source.ip, notValues: [10.9.0.0/16]}, {key: destination.port, values: ['8080']}]}]}",
    );
    let v = check(&[(C, &text)]).unwrap_or_else(|e| panic!("{e}"));
    let p = &v.authorization_policies[0];
    assert_eq!(p.spec.action, Action::Deny);
    assert_eq!(
        p.spec.rules[0].to[0].operation.as_ref().unwrap().methods,
        ["GET", "POST"]
    );

    // v1beta1 too; no action means ALLOW; no rules and `rules: [{}]` both parse.
    let beta = ap("{}").replace("security.istio.io/v1", "security.istio.io/v1beta1");
    let v = check(&[(C, &beta)]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.authorization_policies[0].spec.action, Action::Allow);
    assert!(v.authorization_policies[0].spec.rules.is_empty());
    let v = check(&[(C, &ap("{rules: [{}]}"))]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.authorization_policies[0].spec.rules.len(), 1);
    assert_eq!(
        Pattern::parse("/api/*"),
        Ok(Pattern::Prefix("/api/".into()))
    );
}

/// Fields serde refuses: the error is at the field's path.
#[test]
fn unsupported_fields_refused_at_their_path() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "{rules: [{from: [{source: {requestPrincipals: ['*']}}]}]}",
            "spec.rules[0].from[0].source.requestPrincipals",
            "RequestAuthentication",
        ),
        (
            "{rules: [{from: [{source: {notRequestPrincipals: ['*']}}]}]}",
            "spec.rules[0].from[0].source.notRequestPrincipals",
            "use principals or namespaces",
        ),
        (
            "{rules: [{from: [{source: {remoteIpBlocks: [1.2.3.4]}}]}]}",
            "spec.rules[0].from[0].source.remoteIpBlocks",
            "use ipBlocks",
        ),
        (
            "{rules: [{from: [{source: {notRemoteIpBlocks: [1.2.3.4]}}]}]}",
            "spec.rules[0].from[0].source.notRemoteIpBlocks",
            "X-Forwarded-For",
        ),
        (
            "{targetRef: {kind: Gateway, name: gw}}",
            "spec.targetRef",
            "selector.matchLabels",
        ),
        (
            "{rules: [{to: [{operation: {verbs: [GET]}}]}]}",
            "spec.rules[0].to[0].operation.verbs",
            "unknown field",
        ),
        ("{action: MAYBE}", "spec.action", "unknown variant"),
    ];
    for (spec, field, reason) in cases {
        let errs = parse_documents(C, &ap(spec)).expect_err(spec);
        assert_errors(spec, &errs, &[want(C, AP, field, reason)]);
    }
}

#[test]
fn semantic_errors() {
    let cases: Vec<(&str, Vec<Want<'static>>)> = vec![
        (
            "{action: CUSTOM, provider: {name: ext}}",
            vec![
                want(
                    C,
                    AP,
                    "spec.action",
                    "CUSTOM (an external authorization service) is not supported",
                ),
                want(C, AP, "spec.provider", "only used by action CUSTOM"),
            ],
        ),
        (
            "{rules: [{from: [{}]}]}",
            vec![want(C, AP, "spec.rules[0].from[0].source", "is required")],
        ),
        (
            "{rules: [{from: [{source: {}}]}]}",
            vec![want(
                C,
                AP,
                "spec.rules[0].from[0].source",
                "at least one of principals",
            )],
        ),
        (
            "{rules: [{to: [{operation: {}}]}]}",
            vec![want(
                C,
                AP,
                "spec.rules[0].to[0].operation",
                "at least one of hosts",
            )],
        ),
        (
            "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/8, 300.1.1.1]}}]}]}",
            vec![want(
                C,
                AP,
                "spec.rules[0].from[0].source.ipBlocks[1]",
                "not an IP address or CIDR",
            )],
        ),
        (
            "{rules: [{from: [{source: {notIpBlocks: [10.0.0.0/40]}}]}]}",
            vec![want(
                C,
                AP,
                "spec.rules[0].from[0].source.notIpBlocks[0]",
                "not an IP address or CIDR",
            )],
        ),
        (
            "{rules: [{to: [{operation: {ports: ['80', http]}}]}]}",
            vec![want(
                C,
                AP,
                "spec.rules[0].to[0].operation.ports[1]",
                "not a port number",
            )],
        ),
        (
            "{rules: [{to: [{operation: {notPorts: ['0']}}]}]}",
            vec![want(
                C,
                AP,
                "spec.rules[0].to[0].operation.notPorts[0]",
                "not a port number",
            )],
        ),
        (
            "{rules: [{to: [{operation: {paths: ['/a/*/b']}}]}]}",
            vec![want(
                C,
                AP,
                "spec.rules[0].to[0].operation.paths[0]",
                "'*' is allowed only",
            )],
        ),
        (
            "{rules: [{to: [{operation: {paths: ['/a/{*}/b']}}]}]}",
            vec![want(
                C,
                AP,
                "spec.rules[0].to[0].operation.paths[0]",
                "path templates",
            )],
        ),
        (
            "{rules: [{to: [{operation: {methods: ['']}}]}]}",
            vec![want(
                C,
                AP,
                "spec.rules[0].to[0].operation.methods[0]",
                "must not be empty",
            )],
        ),
        (
            "{rules: [{from: [{source: {principals: ['a*b']}}]}]}",
            vec![want(
                C,
                AP,
                "spec.rules[0].from[0].source.principals[0]",
                "'*' is allowed only",
            )],
        ),
        (
            "{rules: [{when: [{key: 'request.auth.claims[iss]', values: [x]}]}]}",
            vec![want(
                C,
                AP,
                "spec.rules[0].when[0].key",
                "request.headers[<name>], source.principal",
            )],
        ),
        (
            "{rules: [{when: [{key: source.principal}]}]}",
            vec![want(
                C,
                AP,
                "spec.rules[0].when[0]",
                "neither values nor notValues",
            )],
        ),
        (
            "{rules: [{when: [{key: source.ip, values: [nope]}]}]}",
            vec![want(
                C,
                AP,
                "spec.rules[0].when[0].values[0]",
                "not an IP address",
            )],
        ),
        (
            "{rules: [{when: [{key: destination.port, notValues: ['99999']}]}]}",
            vec![want(
                C,
                AP,
                "spec.rules[0].when[0].notValues[0]",
                "not a port number",
            )],
        ),
        (
            "{rules: [{}, {when: [{key: 'request.headers[a b]', values: [x]}]}]}",
            vec![want(
                C,
                AP,
                "spec.rules[1].when[0].key",
                "not a valid header name",
            )],
        ),
    ];
    for (spec, wants) in cases {
        let errs = check(&[(C, &ap(spec))]).expect_err(spec);
        assert_errors(spec, &errs, &wants);
    }
}

#[test]
fn wrong_api_group_is_refused() {
    let text = ap("{}").replace("security.istio.io/v1", "networking.istio.io/v1");
    let errs = parse_documents(C, &text).unwrap_err();
    assert_errors(
        "group",
        &errs,
        &[want(
            C,
            AP,
            "apiVersion",
            "use one of security.istio.io/v1, security.istio.io/v1beta1",
        )],
    );
}
