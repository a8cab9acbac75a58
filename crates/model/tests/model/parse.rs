//! Structural errors found while reading YAML: each names the file, the
//! resource (or `document N`), the field path and the reason.

use trellis_model::networking::SimpleLb;
use trellis_model::resource::Kind;
use trellis_model::{Resource, parse_documents};

use crate::support::{
    Want, assert_errors, doc, docs, dr, rate_limit, retry_budget, se, trellis_doc, vs, want,
};

const F: &str = "bad.yaml";

const SE_SPEC: &str = "{hosts: [reviews], resolution: DNS, ports: [{number: 80, name: http}]}";
const VS_SPEC: &str = "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}";

struct Case {
    name: &'static str,
    text: String,
    want: Vec<Want<'static>>,
}

fn case(name: &'static str, text: impl Into<String>, want: Vec<Want<'static>>) -> Case {
    Case {
        name,
        text: text.into(),
        want,
    }
}

fn cases() -> Vec<Case> {
    let vsd = "VirtualService default/vs";
    vec![
        case(
            "malformed YAML names line and column",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: [unclosed\nspec: {}\n",
            vec![want(F, "-", "-", "not valid YAML: ")],
        ),
        case(
            "a tab in indentation",
            "apiVersion: networking.istio.io/v1\n\tkind: VirtualService\n",
            vec![want(F, "-", "-", "line 1, column")],
        ),
        case(
            "duplicate key",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nkind: ServiceEntry\n",
            vec![want(
                F,
                "-",
                "-",
                "duplicate mapping key: kind at line 3, column 1",
            )],
        ),
        case(
            "a document that is a list",
            "- apiVersion: networking.istio.io/v1\n- kind: VirtualService\n",
            vec![want(
                F,
                "document 1",
                "-",
                "expected a mapping with apiVersion, kind, metadata and spec",
            )],
        ),
        case(
            "a document that is a scalar, after a good one",
            format!("{}---\njust text\n", vs("vs", VS_SPEC)),
            vec![want(F, "document 2", "-", "expected a mapping")],
        ),
        case(
            "missing kind",
            "apiVersion: networking.istio.io/v1\nmetadata: {name: x}\nspec: {}\n",
            vec![want(F, "document 1", "kind", "missing or not a string")],
        ),
        case(
            "kind not a string",
            "apiVersion: networking.istio.io/v1\nkind: [VirtualService]\nmetadata: {name: x}\nspec: {}\n",
            vec![want(F, "document 1", "kind", "missing or not a string")],
        ),
        case(
            "unknown kind",
            doc("Gateway", "name: gw, namespace: istio-system", "{}"),
            vec![want(
                F,
                "Gateway istio-system/gw",
                "kind",
                "unknown kind \"Gateway\": Trellis understands ServiceEntry, DestinationRule, VirtualService, \
                 RateLimitPolicy, RetryBudget, Sidecar, AuthorizationPolicy, PeerAuthentication",
            )],
        ),
        case(
            "kind is case-sensitive",
            doc("virtualservice", "name: vs", VS_SPEC),
            vec![want(
                F,
                "virtualservice default/vs",
                "kind",
                "unknown kind \"virtualservice\"",
            )],
        ),
        case(
            "wrong apiVersion",
            vs("vs", VS_SPEC).replace("networking.istio.io/v1", "networking.istio.io/v2"),
            vec![want(
                F,
                vsd,
                "apiVersion",
                "\"networking.istio.io/v2\" is not an API version of VirtualService: use one of \
                 networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3",
            )],
        ),
        case(
            "Kubernetes core apiVersion",
            vs("vs", VS_SPEC).replace("networking.istio.io/v1", "v1"),
            vec![want(
                F,
                vsd,
                "apiVersion",
                "\"v1\" is not an API version of VirtualService",
            )],
        ),
        case(
            "missing apiVersion",
            vs("vs", VS_SPEC).replace("apiVersion: networking.istio.io/v1\n", ""),
            vec![want(F, vsd, "apiVersion", "missing or not a string")],
        ),
        case(
            "missing metadata",
            format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nspec: {VS_SPEC}\n"),
            vec![want(
                F,
                "VirtualService (document 1)",
                "metadata",
                "missing",
            )],
        ),
        case(
            "missing spec",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\n",
            vec![want(F, vsd, "spec", "missing")],
        ),
        case(
            "spec is null",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\nspec:\n",
            vec![want(F, vsd, "spec", "invalid type: null")],
        ),
        case(
            "unknown top-level field",
            format!("{}data: {{x: 1}}\n", vs("vs", VS_SPEC)),
            vec![want(F, vsd, "data", "unknown top-level field")],
        ),
        case(
            "metadata without name",
            doc("VirtualService", "namespace: prod", VS_SPEC),
            vec![want(
                F,
                "VirtualService (document 1)",
                "metadata",
                "missing field `name`",
            )],
        ),
        case(
            "empty metadata.name",
            doc("VirtualService", "name: ''", VS_SPEC),
            vec![want(
                F,
                "VirtualService default/",
                "metadata.name",
                "must not be empty",
            )],
        ),
        case(
            "namespace not a DNS label",
            doc("VirtualService", "name: vs, namespace: Prod_1", VS_SPEC),
            vec![want(
                F,
                "VirtualService Prod_1/vs",
                "metadata.namespace",
                "\"Prod_1\" is not a valid namespace name",
            )],
        ),
        case(
            "labels must be strings",
            doc("VirtualService", "name: vs, labels: {version: 2}", VS_SPEC),
            vec![want(
                F,
                vsd,
                "metadata.labels.version",
                "invalid type: integer `2`, expected a string",
            )],
        ),
        case(
            "unknown field at the top of spec",
            vs("vs", "{hosts: [reviews], hostz: [x], http: []}"),
            vec![want(
                F,
                vsd,
                "spec.hostz",
                "unknown field: expected one of `hosts`, `gateways`",
            )],
        ),
        case(
            "unknown field deep in spec",
            vs(
                "vs",
                "{hosts: [reviews], http: [{route: [{destination: {hots: reviews}}]}]}",
            ),
            vec![want(
                F,
                vsd,
                "spec.http[0].route[0].destination.hots",
                "unknown field: expected one of `host`, `subset`, `port`",
            )],
        ),
        case(
            "unknown field in a match (match is the YAML name)",
            vs(
                "vs",
                "{hosts: [reviews], http: [{match: [{path: {exact: /}}], route: [{destination: {host: reviews}}]}]}",
            ),
            vec![want(
                F,
                vsd,
                "spec.http[0].match[0].path",
                "unknown field: expected one of",
            )],
        ),
        case(
            "unknown field in a StringMatch inside a map",
            vs(
                "vs",
                "{hosts: [reviews], http: [{match: [{headers: {x-user: {suffix: bob}}}], route: [{destination: {host: reviews}}]}]}",
            ),
            vec![want(
                F,
                vsd,
                "spec.http[0].match[0].headers.x-user.suffix",
                "unknown field: expected one of `exact`, `prefix`, `regex`",
            )],
        ),
        case(
            "unknown field in a struct with one field",
            dr(
                "r",
                "{host: reviews, trafficPolicy: {portLevelSettings: [{port: {name: http}}]}}",
            ),
            vec![want(
                F,
                "DestinationRule default/r",
                "spec.trafficPolicy.portLevelSettings[0].port.name",
                "unknown field: expected `number`",
            )],
        ),
        case(
            "retry backoff is not supported yet",
            vs(
                "vs",
                "{hosts: [reviews], http: [{retries: {attempts: 3, backoff: 25ms}, route: [{destination: {host: reviews}}]}]}",
            ),
            vec![want(
                F,
                vsd,
                "spec.http[0].retries.backoff",
                "this Istio field is not supported by Trellis yet (see docs/config.md)",
            )],
        ),
        case(
            "unknown field in retries",
            vs(
                "vs",
                "{hosts: [reviews], http: [{retries: {attempts: 3, retryOnn: 5xx}, route: [{destination: {host: reviews}}]}]}",
            ),
            vec![want(
                F,
                vsd,
                "spec.http[0].retries.retryOnn",
                "unknown field: expected one of `attempts`, `perTryTimeout`, `retryOn`, \
                 `retryRemoteLocalities`, `retryIgnorePreviousHosts`, `backoff`",
            )],
        ),
        case(
            "attempts as a string",
            vs(
                "vs",
                "{hosts: [reviews], http: [{retries: {attempts: '3'}, route: [{destination: {host: reviews}}]}]}",
            ),
            vec![want(
                F,
                vsd,
                "spec.http[0].retries.attempts",
                "invalid type: string \"3\", expected i32",
            )],
        ),
        case(
            "an exponential fault delay is not supported yet",
            vs(
                "vs",
                "{hosts: [reviews], http: [{fault: {delay: {exponentialDelay: 1s}}, route: [{destination: {host: reviews}}]}]}",
            ),
            vec![want(
                F,
                vsd,
                "spec.http[0].fault.delay.exponentialDelay",
                "not supported by Trellis yet",
            )],
        ),
        case(
            "an HTTP/2 error fault is not supported yet",
            vs(
                "vs",
                "{hosts: [reviews], http: [{fault: {abort: {http2Error: REFUSED_STREAM}}, route: [{destination: {host: reviews}}]}]}",
            ),
            vec![want(
                F,
                vsd,
                "spec.http[0].fault.abort.http2Error",
                "not supported by Trellis yet",
            )],
        ),
        case(
            "a percentage is a mapping with value",
            vs(
                "vs",
                "{hosts: [reviews], http: [{fault: {abort: {httpStatus: 503, percentage: 50}}, route: [{destination: {host: reviews}}]}]}",
            ),
            vec![want(
                F,
                vsd,
                "spec.http[0].fault.abort.percentage",
                "invalid type: integer `50`, expected struct Percent",
            )],
        ),
        case(
            "a percentage needs its value",
            vs(
                "vs",
                "{hosts: [reviews], http: [{mirror: {host: reviews}, mirrorPercentage: {}, route: [{destination: {host: reviews}}]}]}",
            ),
            vec![want(
                F,
                vsd,
                "spec.http[0].mirrorPercentage",
                "missing field `value`",
            )],
        ),
        case(
            "the deprecated mirrorPercent points to mirrorPercentage",
            vs(
                "vs",
                "{hosts: [reviews], http: [{mirror: {host: reviews}, mirrorPercent: 50, route: [{destination: {host: reviews}}]}]}",
            ),
            vec![want(
                F,
                vsd,
                "spec.http[0].mirrorPercent",
                "mirrorPercent is deprecated in Istio and not supported by Trellis: \
                 write mirrorPercentage: {value: N} instead",
            )],
        ),
        case(
            "a mirrors entry needs a destination",
            vs(
                "vs",
                "{hosts: [reviews], http: [{mirrors: [{percentage: {value: 5}}], route: [{destination: {host: reviews}}]}]}",
            ),
            vec![want(
                F,
                vsd,
                "spec.http[0].mirrors[0]",
                "missing field `destination`",
            )],
        ),
        case(
            "connection pool fields not supported yet",
            dr(
                "r",
                "{host: reviews, trafficPolicy: {connectionPool: {tcp: {maxConnections: 10, idleTimeout: 1h}}}}",
            ),
            vec![want(
                F,
                "DestinationRule default/r",
                "spec.trafficPolicy.connectionPool.tcp.idleTimeout",
                "not supported by Trellis yet",
            )],
        ),
        case(
            "HTTP pool fields not supported yet, port-level",
            dr(
                "r",
                "{host: reviews, trafficPolicy: {portLevelSettings: [{port: {number: 9080}, connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}]}}",
            ),
            vec![want(
                F,
                "DestinationRule default/r",
                "spec.trafficPolicy.portLevelSettings[0].connectionPool.http.h2UpgradePolicy",
                "not supported by Trellis yet",
            )],
        ),
        case(
            "a misspelled connection pool field",
            dr(
                "r",
                "{host: reviews, trafficPolicy: {connectionPool: {http: {http1MaxPendingRequest: 10}}}}",
            ),
            vec![want(
                F,
                "DestinationRule default/r",
                "spec.trafficPolicy.connectionPool.http.http1MaxPendingRequest",
                "unknown field: expected one of `http1MaxPendingRequests`",
            )],
        ),
        case(
            "the deprecated consecutiveErrors in a subset is not supported",
            dr(
                "r",
                "{host: reviews, subsets: [{name: v1, trafficPolicy: {outlierDetection: {consecutiveErrors: 3}}}]}",
            ),
            vec![want(
                F,
                "DestinationRule default/r",
                "spec.subsets[0].trafficPolicy.outlierDetection.consecutiveErrors",
                "not supported by Trellis yet",
            )],
        ),
        case(
            "consecutive5xxErrors is the YAML name",
            dr(
                "r",
                "{host: reviews, trafficPolicy: {outlierDetection: {consecutive5XxErrors: 3}}}",
            ),
            vec![want(
                F,
                "DestinationRule default/r",
                "spec.trafficPolicy.outlierDetection.consecutive5XxErrors",
                "unknown field: expected one of `consecutive5xxErrors`, `consecutiveGatewayErrors`",
            )],
        ),
        case(
            "a negative error count",
            dr(
                "r",
                "{host: reviews, trafficPolicy: {outlierDetection: {consecutiveGatewayErrors: -1}}}",
            ),
            vec![want(
                F,
                "DestinationRule default/r",
                "spec.trafficPolicy.outlierDetection.consecutiveGatewayErrors",
                "invalid value: integer `-1`, expected u32",
            )],
        ),
        case(
            "client TLS credentials from Kubernetes secrets are not supported yet",
            dr(
                "r",
                "{host: reviews, trafficPolicy: {tls: {mode: SIMPLE, credentialName: reviews-ca}}}",
            ),
            vec![want(
                F,
                "DestinationRule default/r",
                "spec.trafficPolicy.tls.credentialName",
                "not supported by Trellis yet",
            )],
        ),
        case(
            "TLS routes are not supported yet",
            vs(
                "vs",
                "{hosts: [reviews], tls: [{match: [{sniHosts: [reviews]}], route: [{destination: {host: reviews}}]}]}",
            ),
            vec![want(F, vsd, "spec.tls", "not supported by Trellis yet")],
        ),
        case(
            "endpoint network is not supported yet",
            se(
                "s",
                "{hosts: [a.example.com], resolution: DNS, ports: [{number: 80, name: http}], endpoints: [{address: a.example.com, network: n1}]}",
            ),
            vec![want(
                F,
                "ServiceEntry default/s",
                "spec.endpoints[0].network",
                "not supported by Trellis yet",
            )],
        ),
        case(
            "maglev is not supported yet",
            dr(
                "r",
                "{host: reviews, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x, maglev: {tableSize: 65537}}}}}",
            ),
            vec![want(
                F,
                "DestinationRule default/r",
                "spec.trafficPolicy.loadBalancer.consistentHash.maglev",
                "not supported by Trellis yet",
            )],
        ),
        case(
            "unknown resolution",
            se(
                "s",
                "{hosts: [a.example.com], resolution: dns, ports: [{number: 80, name: http}]}",
            ),
            vec![want(
                F,
                "ServiceEntry default/s",
                "spec.resolution",
                "unknown variant `dns`, expected one of `NONE`, `STATIC`, `DNS`, `DNS_ROUND_ROBIN`",
            )],
        ),
        case(
            "unknown load-balancing policy",
            dr(
                "r",
                "{host: reviews, trafficPolicy: {loadBalancer: {simple: FASTEST}}}",
            ),
            vec![want(
                F,
                "DestinationRule default/r",
                "spec.trafficPolicy.loadBalancer.simple",
                "unknown variant `FASTEST`",
            )],
        ),
        case(
            "weight as a string",
            vs(
                "vs",
                "{hosts: [reviews], http: [{route: [{destination: {host: reviews}, weight: '100'}]}]}",
            ),
            vec![want(
                F,
                vsd,
                "spec.http[0].route[0].weight",
                "invalid type: string \"100\", expected u32",
            )],
        ),
        case(
            "a timeout written as a bare number",
            vs(
                "vs",
                "{hosts: [reviews], http: [{timeout: 10, route: [{destination: {host: reviews}}]}]}",
            ),
            vec![want(
                F,
                vsd,
                "spec.http[0].timeout",
                "invalid type: integer `10`, expected a string",
            )],
        ),
        case(
            "negative port",
            se(
                "s",
                "{hosts: [a.example.com], resolution: DNS, ports: [{number: -80, name: http}]}",
            ),
            vec![want(
                F,
                "ServiceEntry default/s",
                "spec.ports[0].number",
                "invalid value: integer `-80`, expected u32",
            )],
        ),
        case(
            "a missing required field",
            se("s", "{resolution: DNS, ports: [{number: 80, name: http}]}"),
            vec![want(
                F,
                "ServiceEntry default/s",
                "spec",
                "missing field `hosts`",
            )],
        ),
        // ------------------------------------------------------ Trellis kinds
        case(
            "a Trellis kind under an Istio apiVersion",
            doc("RetryBudget", "name: rb", "{host: reviews}"),
            vec![want(
                F,
                "RetryBudget default/rb",
                "apiVersion",
                "\"networking.istio.io/v1\" is not an API version of RetryBudget: use one of trellis.dev/v1alpha1",
            )],
        ),
        case(
            "an Istio kind under the Trellis apiVersion",
            trellis_doc("VirtualService", "name: vs", VS_SPEC),
            vec![want(
                F,
                vsd,
                "apiVersion",
                "\"trellis.dev/v1alpha1\" is not an API version of VirtualService: use one of \
                 networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3",
            )],
        ),
        case(
            "a RateLimitPolicy without a token bucket",
            rate_limit("rl", "{host: reviews}"),
            vec![want(
                F,
                "RateLimitPolicy default/rl",
                "spec",
                "missing field `tokenBucket`",
            )],
        ),
        case(
            "a misspelled token bucket field",
            rate_limit(
                "rl",
                "{host: reviews, tokenBucket: {maxTokens: 10, fillIntervall: 1s}}",
            ),
            vec![want(
                F,
                "RateLimitPolicy default/rl",
                "spec.tokenBucket.fillIntervall",
                "unknown field: expected one of `maxTokens`, `tokensPerFill`, `fillInterval`",
            )],
        ),
        case(
            "negative maxTokens",
            rate_limit(
                "rl",
                "{host: reviews, tokenBucket: {maxTokens: -1, fillInterval: 1s}}",
            ),
            vec![want(
                F,
                "RateLimitPolicy default/rl",
                "spec.tokenBucket.maxTokens",
                "invalid value: integer `-1`, expected u32",
            )],
        ),
        case(
            "routes must be a list",
            rate_limit(
                "rl",
                "{host: reviews, routes: canary, tokenBucket: {maxTokens: 1, fillInterval: 1s}}",
            ),
            vec![want(
                F,
                "RateLimitPolicy default/rl",
                "spec.routes",
                "invalid type: string \"canary\", expected a sequence",
            )],
        ),
        case(
            "a RetryBudget with an unknown field",
            retry_budget("rb", "{host: reviews, retryPercent: 20}"),
            vec![want(
                F,
                "RetryBudget default/rb",
                "spec.retryPercent",
                "unknown field: expected one of `host`, `retryRatio`, `minRetriesPerSecond`, `ttl`",
            )],
        ),
        case(
            "a RetryBudget without a host",
            retry_budget("rb", "{retryRatio: 0.5}"),
            vec![want(
                F,
                "RetryBudget default/rb",
                "spec",
                "missing field `host`",
            )],
        ),
        case(
            "every bad document is reported, good ones are not",
            docs(&[
                doc("Gateway", "name: gw", "{}"),
                se("good", SE_SPEC),
                vs(
                    "vs",
                    "{hosts: [reviews], http: [{mirror: {host: reviews}, corsPolicy: {allowOrigins: [{exact: '*'}]}, route: [{destination: {host: reviews}}]}]}",
                ),
                "- not a mapping\n".to_string(),
                dr(
                    "r",
                    "{host: reviews, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 10s}}}",
                ),
            ]),
            vec![
                want(F, "Gateway default/gw", "kind", "unknown kind"),
                want(
                    F,
                    vsd,
                    "spec.http[0].corsPolicy",
                    "not supported by Trellis yet",
                ),
                want(F, "document 4", "-", "expected a mapping"),
                want(
                    F,
                    "DestinationRule default/r",
                    "spec.trafficPolicy.loadBalancer.warmupDurationSecs",
                    "not supported by Trellis yet",
                ),
            ],
        ),
    ]
}

#[test]
fn bad_documents_get_exact_errors() {
    for c in cases() {
        match parse_documents(F, &c.text) {
            Ok(rs) => panic!(
                "case {:?} parsed into {} resource(s), want errors",
                c.name,
                rs.len()
            ),
            Err(got) => assert_errors(c.name, &got, &c.want),
        }
    }
}

#[test]
fn malformed_yaml_reason_is_one_line_with_position() {
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: [unclosed\nspec: {}\n";
    let errs = parse_documents("vs.yaml", text).unwrap_err();
    assert_eq!(errs.0.len(), 1, "{errs}");
    let reason = &errs.0[0].reason;
    assert!(reason.starts_with("not valid YAML: "), "{reason}");
    assert!(reason.contains("at line 5, column 5"), "{reason}");
    assert!(!reason.contains('\n'), "{reason:?}");
    // No source snippet pasted into the message.
    assert!(!reason.contains("apiVersion"), "{reason}");
}

#[test]
fn errors_display_file_resource_field_reason() {
    let errs = parse_documents(F, &doc("Gateway", "name: gw", "{}")).unwrap_err();
    assert_eq!(
        errs.to_string(),
        "1 error in config\n  bad.yaml: Gateway default/gw: kind: unknown kind \"Gateway\": \
         Trellis understands ServiceEntry, DestinationRule, VirtualService, RateLimitPolicy, RetryBudget, Sidecar, AuthorizationPolicy, PeerAuthentication"
    );
}

#[test]
fn several_documents_in_one_file() {
    let text = docs(&[
        se("reviews", SE_SPEC),
        dr("reviews", "{host: reviews}"),
        vs("reviews", VS_SPEC),
    ]);
    let rs = parse_documents("f.yaml", &text).unwrap();
    let got: Vec<_> = rs
        .iter()
        .map(|r| (r.kind(), r.display_name(), r.source().to_string()))
        .collect();
    assert_eq!(
        got,
        [
            (
                Kind::ServiceEntry,
                "ServiceEntry default/reviews".to_string(),
                "f.yaml".to_string()
            ),
            (
                Kind::DestinationRule,
                "DestinationRule default/reviews".to_string(),
                "f.yaml".to_string()
            ),
            (
                Kind::VirtualService,
                "VirtualService default/reviews".to_string(),
                "f.yaml".to_string()
            ),
        ]
    );
}

#[test]
fn empty_and_null_documents_are_skipped() {
    for text in ["", "# only a comment\n", "---\n", "---\n---\n...\n", "~\n"] {
        assert_eq!(parse_documents("f.yaml", text).unwrap(), [], "{text:?}");
    }
    // A leading `---`, an empty document between two, and a trailing `---`.
    let text = format!(
        "---\n{}---\n---\n{}---\n",
        se("a", SE_SPEC),
        vs("b", VS_SPEC)
    );
    assert_eq!(parse_documents("f.yaml", &text).unwrap().len(), 2);
}

#[test]
fn every_api_version_of_istio_networking_is_accepted() {
    for v in [
        "networking.istio.io/v1",
        "networking.istio.io/v1beta1",
        "networking.istio.io/v1alpha3",
    ] {
        let text = se("s", SE_SPEC).replace("networking.istio.io/v1", v);
        assert!(parse_documents("f.yaml", &text).is_ok(), "{v}");
    }
}

#[test]
fn metadata_extras_and_status_are_ignored() {
    let text = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
  namespace: shop
  uid: 4d2c7e3a-0000-0000-0000-000000000000
  resourceVersion: \"12345\"
  generation: 3
  creationTimestamp: \"2024-01-01T00:00:00Z\"
  managedFields: [{manager: kubectl}]
  labels: {app: reviews}
  annotations: {note: hello}
spec:
  hosts: [reviews]
  resolution: DNS
  ports: [{number: 80, name: http}]
status:
  conditions: [{type: Reconciled, status: \"True\"}]
";
    let rs = parse_documents("f.yaml", text).unwrap();
    let m = rs[0].meta();
    assert_eq!((m.name.as_str(), m.namespace.as_str()), ("reviews", "shop"));
    assert_eq!(m.labels.get("app").map(String::as_str), Some("reviews"));
    assert_eq!(m.annotations.get("note").map(String::as_str), Some("hello"));
}

#[test]
fn namespace_defaults_to_default() {
    for meta in ["name: s", "name: s, namespace: ''"] {
        let rs = parse_documents("f.yaml", &doc("ServiceEntry", meta, SE_SPEC))
            .unwrap_or_else(|e| panic!("{meta}: {e}"));
        assert_eq!(rs[0].meta().namespace, "default", "{meta}");
    }
}

#[test]
fn null_means_unset_for_unsupported_fields() {
    // `retries: null` (or `~`) is how a generated manifest says "not set".
    let text = vs(
        "vs",
        "{hosts: [reviews], http: [{retries: null, fault: ~, route: [{destination: {host: reviews}}]}]}",
    );
    assert!(parse_documents("f.yaml", &text).is_ok());
}

#[test]
fn peak_ewma_is_a_simple_policy() {
    let rs = parse_documents(
        "f.yaml",
        &dr(
            "r",
            "{host: reviews, trafficPolicy: {loadBalancer: {simple: PEAK_EWMA}}}",
        ),
    )
    .unwrap();
    let Resource::DestinationRule(o) = &rs[0] else {
        panic!("not a DestinationRule")
    };
    let lb = o
        .spec
        .traffic_policy
        .as_ref()
        .and_then(|t| t.load_balancer.as_ref());
    assert_eq!(lb.and_then(|l| l.simple), Some(SimpleLb::PeakEwma));
}

#[test]
fn from_json_uses_the_same_checks() {
    let value = serde_json::json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "vs"},
        "spec": {"hosts": ["reviews"], "http": [{"retries": {"attempts": 2, "backoff": "1s"}}]},
    });
    let e = trellis_model::load::from_json("<api>", value).unwrap_err();
    assert_eq!(
        (e.file.as_str(), e.resource.as_str(), e.field.as_str()),
        (
            "<api>",
            "VirtualService default/vs",
            "spec.http[0].retries.backoff"
        )
    );
}

#[test]
fn trellis_kinds_parse_with_their_defaults() {
    let text = docs(&[
        rate_limit(
            "rl",
            "{host: reviews, tokenBucket: {maxTokens: 100, fillInterval: 1s}}",
        ),
        retry_budget("rb", "{host: reviews}"),
    ]);
    let rs = parse_documents("f.yaml", &text).unwrap();
    let kinds: Vec<_> = rs.iter().map(|r| (r.kind(), r.display_name())).collect();
    assert_eq!(
        kinds,
        [
            (
                Kind::RateLimitPolicy,
                "RateLimitPolicy default/rl".to_string()
            ),
            (Kind::RetryBudget, "RetryBudget default/rb".to_string()),
        ]
    );
    let Resource::RateLimitPolicy(rl) = &rs[0] else {
        panic!("not a RateLimitPolicy")
    };
    assert!(rl.spec.routes.is_empty());
    assert_eq!(rl.spec.token_bucket.tokens_per_fill, None);
    assert_eq!(
        rl.spec.token_bucket.fill_tokens(),
        100,
        "defaults to maxTokens"
    );
    let Resource::RetryBudget(rb) = &rs[1] else {
        panic!("not a RetryBudget")
    };
    assert_eq!(
        (
            rb.spec.retry_ratio,
            rb.spec.min_retries_per_second,
            rb.spec.ttl.as_str()
        ),
        (0.2, 10, "10s")
    );
    assert_eq!(
        Kind::RetryBudget.api_versions(),
        [trellis_model::trellis::API_VERSION]
    );
}

#[test]
fn new_istio_fields_parse_and_default_as_istio_does() {
    let text = vs(
        "vs",
        "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], \
         retries: {attempts: 3, perTryTimeout: 2s, retryRemoteLocalities: true, retryIgnorePreviousHosts: false}, \
         fault: {delay: {fixedDelay: 5s, percent: 10}, abort: {grpcStatus: UNAVAILABLE}}, \
         mirror: {host: reviews, subset: v2}, mirrorPercentage: {value: 12.5}}, \
         {route: [{destination: {host: reviews}}], mirrors: [{destination: {host: reviews}}, {destination: {host: ratings}, percentage: {value: 1}}], \
         fault: {delay: {fixedDelay: 1s, percentage: {value: 0.5}}, abort: {httpStatus: 503}}}]}",
    );
    let rs = parse_documents("f.yaml", &text).unwrap();
    let Resource::VirtualService(o) = &rs[0] else {
        panic!("not a VirtualService")
    };
    let (a, b) = (&o.spec.http[0], &o.spec.http[1]);
    let retries = a.retries.as_ref().unwrap();
    assert_eq!(retries.num_retries(), 3);
    // A `retries` block without attempts disables retries, as in Istio.
    assert_eq!(
        trellis_model::networking::HttpRetry::default().num_retries(),
        0
    );
    // No retryOn: Istio's default conditions.
    assert_eq!(
        retries.conditions().unwrap(),
        trellis_model::RetryOn::istio_default()
    );
    let fault = a.fault.as_ref().unwrap();
    assert_eq!(fault.delay.as_ref().unwrap().effective_percentage(), 10.0);
    let abort = fault.abort.as_ref().unwrap();
    assert_eq!(abort.effective_percentage(), 100.0, "unset means 100");
    assert_eq!(
        abort.grpc_status.as_deref().map(trellis_model::grpc_code),
        Some(Some(14))
    );
    let mirrors = a.mirror_policies();
    assert_eq!(mirrors.len(), 1);
    assert_eq!(mirrors[0].destination.subset.as_deref(), Some("v2"));
    assert_eq!(mirrors[0].effective_percentage(), 12.5);

    let fault = b.fault.as_ref().unwrap();
    assert_eq!(fault.delay.as_ref().unwrap().effective_percentage(), 0.5);
    let pcts: Vec<f64> = b
        .mirror_policies()
        .iter()
        .map(|m| m.effective_percentage())
        .collect();
    assert_eq!(pcts, [100.0, 1.0]);
}
