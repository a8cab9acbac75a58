//! Semantic errors found by `validate()` over a whole set of resources. Each
//! case adds `case.yaml` to the services of `base.yaml` (see `support::base`).

use crate::support::{
    Want, assert_errors, check, check_with_base, docs, dr, rate_limit, retry_budget, se, vs, want,
};

const C: &str = "case.yaml";
const VS: &str = "VirtualService default/vs";
const DR: &str = "DestinationRule default/r";
const SE: &str = "ServiceEntry default/s";
const RL: &str = "RateLimitPolicy default/rl";
const RB: &str = "RetryBudget default/rb";

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

/// A VirtualService for `reviews` with one HTTP route written inline.
fn http(route: &str) -> String {
    vs("vs", &format!("{{hosts: [reviews], http: [{route}]}}"))
}

/// A DestinationRule `r` for `reviews` with a traffic policy written inline.
fn policy(tp: &str) -> String {
    dr(
        "r",
        &format!("{{host: ratings.example.com, trafficPolicy: {tp}}}"),
    )
}

/// A ServiceEntry `s` for `db.example.com` with the given extra spec fields.
fn entry(fields: &str) -> String {
    se("s", &format!("{{hosts: [db.example.com], {fields}}}"))
}

const TO_REVIEWS: &str = "route: [{destination: {host: reviews}}]";

/// `db.example.com`: one port, 5432, TCP. An HTTP route to it without a port
/// sends to that opaque port.
fn db() -> String {
    entry("resolution: DNS, ports: [{number: 5432, name: tcp}]")
}

/// A VirtualService for `reviews` whose first two HTTP routes are named.
fn named_routes() -> String {
    vs(
        "vs",
        "{hosts: [reviews], http: [\
         {name: canary, match: [{headers: {x-canary: {exact: 'true'}}}], route: [{destination: {host: reviews, subset: v2}}]}, \
         {name: default, match: [{uri: {prefix: /}}], route: [{destination: {host: reviews, subset: v1}}]}, \
         {route: [{destination: {host: reviews}}]}]}",
    )
}

const BUCKET: &str = "tokenBucket: {maxTokens: 10, fillInterval: 1s}";

fn cases() -> Vec<Case> {
    vec![
        // ----------------------------------------------------- workloadSelector
        case(
            "workloadSelector needs STATIC resolution",
            entry(
                "resolution: DNS, ports: [{number: 80, name: http}], workloadSelector: {labels: {app: a}}",
            ),
            vec![want(
                C,
                SE,
                "spec.workloadSelector",
                "needs resolution: STATIC",
            )],
        ),
        case(
            "workloadSelector and endpoints exclude each other",
            entry(
                "resolution: STATIC, ports: [{number: 80, name: http}], endpoints: [{address: 10.0.0.1}], workloadSelector: {labels: {app: a}}",
            ),
            vec![want(
                C,
                SE,
                "spec.workloadSelector",
                "cannot be used with spec.endpoints",
            )],
        ),
        // ------------------------------------------------------------ weights
        case(
            "weights not summing to 100",
            http(
                "{route: [{destination: {host: reviews, subset: v1}, weight: 70}, {destination: {host: reviews, subset: v2}, weight: 20}]}",
            ),
            vec![want(
                C,
                VS,
                "spec.http[0].route",
                "weights sum to 90; they must sum to 100",
            )],
        ),
        case(
            "weights over 100",
            http(
                "{route: [{destination: {host: reviews, subset: v1}, weight: 80}, {destination: {host: reviews, subset: v2}, weight: 80}]}",
            ),
            vec![want(C, VS, "spec.http[0].route", "weights sum to 160")],
        ),
        case(
            "several destinations, one without a weight",
            http(
                "{route: [{destination: {host: reviews, subset: v1}, weight: 100}, {destination: {host: reviews, subset: v2}}]}",
            ),
            vec![want(
                C,
                VS,
                "spec.http[0].route[1].weight",
                "with several destinations every destination needs a weight, and the weights must sum to 100",
            )],
        ),
        case(
            "several destinations, none with a weight: the first is named",
            http(
                "{route: [{destination: {host: reviews, subset: v1}}, {destination: {host: reviews, subset: v2}}]}",
            ),
            vec![want(
                C,
                VS,
                "spec.http[0].route[0].weight",
                "every destination needs a weight",
            )],
        ),
        case(
            "a single destination with weight 50",
            http("{route: [{destination: {host: reviews}, weight: 50}]}"),
            vec![want(
                C,
                VS,
                "spec.http[0].route[0].weight",
                "a single destination takes all traffic; weight 50 must be 100 or omitted",
            )],
        ),
        case(
            "tcp weights not summing to 100",
            vs(
                "vs",
                "{hosts: [reviews], tcp: [{route: [{destination: {host: reviews, port: {number: 3306}}, weight: 60}, {destination: {host: ratings.example.com}, weight: 60}]}]}",
            ),
            vec![want(C, VS, "spec.tcp[0].route", "weights sum to 120")],
        ),
        case(
            "an HTTP route with no destination",
            http("{match: [{uri: {prefix: /}}]}"),
            vec![want(
                C,
                VS,
                "spec.http[0].route",
                "at least one destination is required",
            )],
        ),
        case(
            "a tcp route with no destination",
            vs("vs", "{hosts: [reviews], tcp: [{match: [{port: 3306}]}]}"),
            vec![want(
                C,
                VS,
                "spec.tcp[0].route",
                "at least one destination is required",
            )],
        ),
        case(
            "a VirtualService without routes",
            vs("vs", "{hosts: [reviews]}"),
            vec![want(C, VS, "spec", "needs http or tcp routes")],
        ),
        // ------------------------------------------------------------ matches
        case(
            "invalid regex in uri",
            http(&format!(
                "{{match: [{{uri: {{regex: '/api/(v1'}}}}], {TO_REVIEWS}}}"
            )),
            vec![want(
                C,
                VS,
                "spec.http[0].match[0].uri.regex",
                "invalid regex \"/api/(v1\": ",
            )],
        ),
        case(
            "invalid regex in a header match",
            http(&format!(
                "{{match: [{{headers: {{x-user: {{regex: '[a-'}}}}}}], {TO_REVIEWS}}}"
            )),
            vec![want(
                C,
                VS,
                "spec.http[0].match[0].headers.x-user.regex",
                "invalid regex \"[a-\"",
            )],
        ),
        case(
            "invalid regex in a query parameter match",
            http(&format!(
                "{{match: [{{}}, {{queryParams: {{id: {{regex: '*'}}}}}}], {TO_REVIEWS}}}"
            )),
            vec![want(
                C,
                VS,
                "spec.http[0].match[1].queryParams.id.regex",
                "invalid regex \"*\"",
            )],
        ),
        case(
            "backreferences are not RE2",
            http(&format!(
                "{{match: [{{uri: {{regex: '(a)\\1'}}}}], {TO_REVIEWS}}}"
            )),
            vec![want(
                C,
                VS,
                "spec.http[0].match[0].uri.regex",
                "invalid regex",
            )],
        ),
        case(
            "StringMatch with exact and prefix",
            http(&format!(
                "{{match: [{{uri: {{exact: /a, prefix: /a}}}}], {TO_REVIEWS}}}"
            )),
            vec![want(
                C,
                VS,
                "spec.http[0].match[0].uri",
                "set exactly one of exact, prefix, regex",
            )],
        ),
        case(
            "StringMatch with all three, in a header",
            http(&format!(
                "{{match: [{{headers: {{x-a: {{exact: a, prefix: a, regex: a}}}}}}], {TO_REVIEWS}}}"
            )),
            vec![want(
                C,
                VS,
                "spec.http[0].match[0].headers.x-a",
                "set exactly one of exact, prefix, regex",
            )],
        ),
        case(
            "empty StringMatch is only a presence test for headers",
            http(&format!("{{match: [{{method: {{}}}}], {TO_REVIEWS}}}")),
            vec![want(
                C,
                VS,
                "spec.http[0].match[0].method",
                "set exactly one of exact, prefix, regex",
            )],
        ),
        case(
            "invalid header name in a match",
            http(&format!(
                "{{match: [{{withoutHeaders: {{'x user': {{exact: a}}}}}}], {TO_REVIEWS}}}"
            )),
            vec![want(
                C,
                VS,
                "spec.http[0].match[0].withoutHeaders.x user",
                "\"x user\" is not a valid header name",
            )],
        ),
        case(
            "match port 0",
            http(&format!("{{match: [{{port: 0}}], {TO_REVIEWS}}}")),
            vec![want(
                C,
                VS,
                "spec.http[0].match[0].port",
                "must be between 1 and 65535",
            )],
        ),
        // ------------------------------------------------------- destinations
        case(
            "destination host that matches no ServiceEntry",
            http("{route: [{destination: {host: details}}]}"),
            vec![want(
                C,
                VS,
                "spec.http[0].route[0].destination.host",
                "\"details\" (resolved to details.default.svc.cluster.local) matches no ServiceEntry",
            )],
        ),
        case(
            "short names resolve in the VirtualService's namespace",
            crate::support::doc(
                "VirtualService",
                "name: vs, namespace: prod",
                "{hosts: [reviews.default], http: [{route: [{destination: {host: reviews}}]}]}",
            ),
            vec![want(
                C,
                "VirtualService prod/vs",
                "spec.http[0].route[0].destination.host",
                "\"reviews\" (resolved to reviews.prod.svc.cluster.local) matches no ServiceEntry",
            )],
        ),
        case(
            "subset not defined",
            http("{route: [{destination: {host: reviews, subset: v3}}]}"),
            vec![want(
                C,
                VS,
                "spec.http[0].route[0].destination.subset",
                "subset \"v3\" is not defined by any DestinationRule for reviews.default.svc.cluster.local",
            )],
        ),
        case(
            "subset of a service without a DestinationRule",
            http("{route: [{destination: {host: ratings.example.com, subset: v1}}]}"),
            vec![want(
                C,
                VS,
                "spec.http[0].route[0].destination.subset",
                "subset \"v1\" is not defined by any DestinationRule for ratings.example.com",
            )],
        ),
        case(
            "destination port that is not a service port",
            http("{route: [{destination: {host: reviews, port: {number: 8080}}}]}"),
            vec![want(
                C,
                VS,
                "spec.http[0].route[0].destination.port.number",
                "service reviews.default.svc.cluster.local has no port 8080 (ports: 9080, 9090, 3306)",
            )],
        ),
        case(
            "destination port out of range",
            http("{route: [{destination: {host: reviews, port: {number: 70000}}}]}"),
            vec![want(
                C,
                VS,
                "spec.http[0].route[0].destination.port.number",
                "must be between 1 and 65535",
            )],
        ),
        case(
            "HTTP route to a TCP port",
            http("{route: [{destination: {host: reviews, port: {number: 3306}}}]}"),
            vec![want(
                C,
                VS,
                "spec.http[0].route[0].destination.port.number",
                "port 3306 of reviews.default.svc.cluster.local is TCP, not HTTP; route it with a tcp route",
            )],
        ),
        // ---------------------------------------------------------- conflicts
        case(
            "two VirtualServices for one host, under different names",
            docs(&[
                vs(
                    "a",
                    &format!("{{hosts: [reviews], http: [{{{TO_REVIEWS}}}]}}"),
                ),
                vs(
                    "b",
                    &format!(
                        "{{hosts: [reviews.default.svc.cluster.local], http: [{{{TO_REVIEWS}}}]}}"
                    ),
                ),
            ]),
            vec![want(
                C,
                "VirtualService default/b",
                "spec.hosts[0]",
                "host reviews.default.svc.cluster.local is already routed by VirtualService default/a (case.yaml); \
                 one VirtualService per host",
            )],
        ),
        case(
            "two DestinationRules for one host",
            dr(
                "r",
                "{host: reviews.default, subsets: [{name: v1, labels: {version: v1}}]}",
            ),
            vec![want(
                C,
                DR,
                "spec.host",
                "DestinationRule default/reviews (base.yaml) already applies to reviews.default.svc.cluster.local; \
                 one DestinationRule per host",
            )],
        ),
        case(
            "DestinationRule for an unknown host",
            dr("r", "{host: details}"),
            vec![want(
                C,
                DR,
                "spec.host",
                "\"details\" (resolved to details.default.svc.cluster.local) matches no ServiceEntry",
            )],
        ),
        case(
            "wildcard DestinationRule",
            dr("r", "{host: '*.example.com'}"),
            vec![want(
                C,
                DR,
                "spec.host",
                "wildcard hosts in DestinationRule are not supported yet",
            )],
        ),
        case(
            "duplicate subset names",
            dr(
                "r",
                "{host: ratings.example.com, subsets: [{name: a}, {name: a}, {name: ''}]}",
            ),
            vec![
                want(C, DR, "spec.subsets[1].name", "duplicate subset \"a\""),
                want(C, DR, "spec.subsets[2].name", "must not be empty"),
            ],
        ),
        // ------------------------------------------------------- ServiceEntry
        case(
            "resolution NONE (Istio's default)",
            entry("ports: [{number: 5432, name: tcp}]"),
            vec![want(
                C,
                SE,
                "spec.resolution",
                "resolution NONE (pass-through to the original destination) is not supported yet; \
                 use STATIC with endpoints, or DNS",
            )],
        ),
        case(
            "STATIC endpoint with a DNS name",
            entry(
                "resolution: STATIC, ports: [{number: 5432, name: tcp}], endpoints: [{address: 10.1.1.1}, {address: db1.example.com}]",
            ),
            vec![want(
                C,
                SE,
                "spec.endpoints[1].address",
                "\"db1.example.com\" is not an IP address; STATIC resolution needs IPs (use resolution: DNS for names)",
            )],
        ),
        case(
            "DNS endpoint that is neither IP nor name",
            entry(
                "resolution: DNS, ports: [{number: 5432, name: tcp}], endpoints: [{address: 'db_1:5432'}, {address: '*.example.com'}, {}]",
            ),
            vec![
                want(
                    C,
                    SE,
                    "spec.endpoints[0].address",
                    "\"db_1:5432\" is neither an IP address nor a DNS name",
                ),
                want(
                    C,
                    SE,
                    "spec.endpoints[1].address",
                    "\"*.example.com\" is neither an IP address nor a DNS name",
                ),
                want(C, SE, "spec.endpoints[2].address", "is required"),
            ],
        ),
        case(
            "endpoint port name not in spec.ports",
            entry(
                "resolution: STATIC, ports: [{number: 5432, name: tcp}, {number: 9187, name: http-metrics}], endpoints: [{address: 10.1.1.1, ports: {tcp: 15432, grpc: 9000, http-metrics: 0}}]",
            ),
            vec![
                want(
                    C,
                    SE,
                    "spec.endpoints[0].ports.grpc",
                    "no port named \"grpc\" in spec.ports (names: http-metrics, tcp)",
                ),
                want(
                    C,
                    SE,
                    "spec.endpoints[0].ports.http-metrics",
                    "must be between 1 and 65535",
                ),
            ],
        ),
        case(
            "bad localities",
            entry(
                "resolution: STATIC, ports: [{number: 5432, name: tcp}], endpoints: [{address: 10.1.1.1, locality: us-east1/a/b/c}, {address: 10.1.1.2, locality: 'us-east1//b'}, {address: 10.1.1.3, locality: ''}, {address: 10.1.1.4, locality: us-east1/us-east1-b/rack1}]",
            ),
            vec![
                want(
                    C,
                    SE,
                    "spec.endpoints[0].locality",
                    "\"us-east1/a/b/c\" is not of the form region/zone/subzone",
                ),
                want(
                    C,
                    SE,
                    "spec.endpoints[1].locality",
                    "\"us-east1//b\" is not of the form region/zone/subzone",
                ),
                want(
                    C,
                    SE,
                    "spec.endpoints[2].locality",
                    "\"\" is not of the form region/zone/subzone",
                ),
            ],
        ),
        case(
            "port 0 and port 70000",
            entry(
                "resolution: DNS, ports: [{number: 0, name: a}, {number: 70000, name: b}, {number: 80, name: http, targetPort: 0}]",
            ),
            vec![
                want(C, SE, "spec.ports[0].number", "must be between 1 and 65535"),
                want(C, SE, "spec.ports[1].number", "must be between 1 and 65535"),
                want(
                    C,
                    SE,
                    "spec.ports[2].targetPort",
                    "must be between 1 and 65535",
                ),
            ],
        ),
        case(
            "duplicate port names and numbers",
            entry(
                "resolution: DNS, ports: [{number: 80, name: http}, {number: 80, name: http-alt}, {number: 81, name: http}, {number: 82, name: ''}]",
            ),
            vec![
                want(C, SE, "spec.ports[1].number", "duplicate port number 80"),
                want(C, SE, "spec.ports[2].name", "duplicate port name \"http\""),
                want(C, SE, "spec.ports[3].name", "must not be empty"),
            ],
        ),
        case(
            "no hosts, no ports",
            se("s", "{hosts: [], resolution: DNS}"),
            vec![
                want(C, SE, "spec.hosts", "at least one host is required"),
                want(C, SE, "spec.ports", "at least one port is required"),
            ],
        ),
        case(
            "unsupported protocol",
            entry(
                "resolution: DNS, ports: [{number: 443, name: https, protocol: HTTPS}, {number: 53, name: dns, protocol: UDP}]",
            ),
            // HTTPS is accepted (carried as TLS); UDP is not.
            vec![want(
                C,
                SE,
                "spec.ports[1].protocol",
                "unknown protocol \"UDP\": expected one of HTTP, HTTP2, GRPC, TCP, TLS, HTTPS",
            )],
        ),
        case(
            "wildcard and invalid hosts",
            se(
                "s",
                "{hosts: ['*.example.com', 'bad_host', 'trailing.dot.'], resolution: DNS, ports: [{number: 80, name: http}]}",
            ),
            vec![
                want(
                    C,
                    SE,
                    "spec.hosts[0]",
                    "wildcard hosts in ServiceEntry are not supported yet",
                ),
                want(
                    C,
                    SE,
                    "spec.hosts[1]",
                    "\"bad_host\" is not a valid DNS name",
                ),
                want(
                    C,
                    SE,
                    "spec.hosts[2]",
                    "\"trailing.dot.\" is not a valid DNS name",
                ),
            ],
        ),
        case(
            "addresses must be IPs or CIDRs",
            entry(
                "resolution: DNS, ports: [{number: 80, name: http}], addresses: [10.0.0.0/8, '::1', 10.0.0.0/33, db.example.com]",
            ),
            vec![
                want(
                    C,
                    SE,
                    "spec.addresses[2]",
                    "\"10.0.0.0/33\" is not an IP address or CIDR",
                ),
                want(
                    C,
                    SE,
                    "spec.addresses[3]",
                    "\"db.example.com\" is not an IP address or CIDR",
                ),
            ],
        ),
        // ------------------------------------------------- timeouts, headers
        case(
            "bad timeout durations",
            vs(
                "vs",
                &format!(
                    "{{hosts: [reviews], http: [{{timeout: '10', {TO_REVIEWS}}}, {{timeout: 10sec, {TO_REVIEWS}}}, {{timeout: '-1s', {TO_REVIEWS}}}, {{timeout: '', {TO_REVIEWS}}}]}}"
                ),
            ),
            vec![
                want(
                    C,
                    VS,
                    "spec.http[0].timeout",
                    "invalid duration \"10\": expected e.g. \"10s\", \"0.5s\", \"250ms\" or \"1m30s\"",
                ),
                want(C, VS, "spec.http[1].timeout", "invalid duration \"10sec\""),
                want(C, VS, "spec.http[2].timeout", "invalid duration \"-1s\""),
                want(C, VS, "spec.http[3].timeout", "empty duration"),
            ],
        ),
        case(
            "setting hop-by-hop and pseudo headers",
            http(
                "{headers: {request: {set: {connection: close, ':authority': x}, add: {Transfer-Encoding: chunked}}, response: {remove: ['bad header']}}, \
                 route: [{destination: {host: reviews}, headers: {response: {set: {x-ok: \"a\\nb\"}}}}]}",
            ),
            vec![
                want(
                    C,
                    VS,
                    "spec.http[0].route[0].headers.response.set.x-ok",
                    "value contains characters not allowed in a header",
                ),
                want(
                    C,
                    VS,
                    "spec.http[0].headers.request.set.:authority",
                    "\":authority\" is not a header name that can be set",
                ),
                want(
                    C,
                    VS,
                    "spec.http[0].headers.request.set.connection",
                    "\"connection\" is a hop-by-hop header the proxy manages",
                ),
                want(
                    C,
                    VS,
                    "spec.http[0].headers.request.add.Transfer-Encoding",
                    "\"Transfer-Encoding\" is a hop-by-hop header the proxy manages",
                ),
                want(
                    C,
                    VS,
                    "spec.http[0].headers.response.remove[0]",
                    "\"bad header\" is not a valid header name",
                ),
            ],
        ),
        case(
            "bad rewrites",
            http(&format!(
                "{{rewrite: {{uri: v2/, uriRegexRewrite: {{match: '(', rewrite: /x}}, authority: 'a b'}}, {TO_REVIEWS}}}"
            )),
            vec![
                want(
                    C,
                    VS,
                    "spec.http[0].rewrite",
                    "set uri or uriRegexRewrite, not both",
                ),
                want(
                    C,
                    VS,
                    "spec.http[0].rewrite.uri",
                    "\"v2/\" must start with '/'",
                ),
                want(
                    C,
                    VS,
                    "spec.http[0].rewrite.uriRegexRewrite.match",
                    "invalid regex \"(\"",
                ),
                want(
                    C,
                    VS,
                    "spec.http[0].rewrite.authority",
                    "\"a b\" is not a valid authority",
                ),
            ],
        ),
        // ----------------------------------------------- exportTo, gateways
        case(
            "bad exportTo on every kind",
            docs(&[
                entry(
                    "resolution: DNS, ports: [{number: 80, name: http}], exportTo: ['*', ., Bad_NS]",
                ),
                dr("r", "{host: db.example.com, exportTo: ['']}"),
                vs(
                    "vs",
                    "{hosts: [db.example.com], exportTo: [prod, '-x'], http: [{route: [{destination: {host: db.example.com}}]}]}",
                ),
            ]),
            vec![
                want(
                    C,
                    SE,
                    "spec.exportTo[2]",
                    "\"Bad_NS\" is not \"*\", \".\" or a namespace name",
                ),
                want(
                    C,
                    DR,
                    "spec.exportTo[0]",
                    "\"\" is not \"*\", \".\" or a namespace name",
                ),
                want(
                    C,
                    VS,
                    "spec.exportTo[1]",
                    "\"-x\" is not \"*\", \".\" or a namespace name",
                ),
            ],
        ),
        case(
            "gateways other than mesh",
            vs(
                "vs",
                &format!(
                    "{{hosts: [reviews], gateways: [mesh, istio-system/ingress], http: [{{{TO_REVIEWS}}}]}}"
                ),
            ),
            vec![want(
                C,
                VS,
                "spec.gateways[1]",
                "gateway \"istio-system/ingress\": only \"mesh\" (sidecars) is supported yet",
            )],
        ),
        case(
            "invalid VirtualService host",
            vs(
                "vs",
                &format!("{{hosts: ['reviews:9080'], http: [{{{TO_REVIEWS}}}]}}"),
            ),
            vec![want(
                C,
                VS,
                "spec.hosts[0]",
                "\"reviews:9080\" is not a valid host (a DNS name, *.suffix or *)",
            )],
        ),
        // ------------------------------------------------------ load balancer
        case(
            "consistentHash with two keys",
            policy("{loadBalancer: {consistentHash: {httpHeaderName: x-user, useSourceIp: true}}}"),
            vec![want(
                C,
                DR,
                "spec.trafficPolicy.loadBalancer.consistentHash",
                "set exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
            )],
        ),
        case(
            "consistentHash with no key",
            policy("{loadBalancer: {consistentHash: {useSourceIp: false}}}"),
            vec![want(
                C,
                DR,
                "spec.trafficPolicy.loadBalancer.consistentHash",
                "set exactly one of",
            )],
        ),
        case(
            "simple and consistentHash both set",
            policy(
                "{loadBalancer: {simple: ROUND_ROBIN, consistentHash: {httpHeaderName: x-user}}}",
            ),
            vec![want(
                C,
                DR,
                "spec.trafficPolicy.loadBalancer",
                "set either simple or consistentHash, not both",
            )],
        ),
        case(
            "PASSTHROUGH",
            policy("{loadBalancer: {simple: PASSTHROUGH}}"),
            vec![want(
                C,
                DR,
                "spec.trafficPolicy.loadBalancer.simple",
                "PASSTHROUGH is not supported yet",
            )],
        ),
        case(
            "bad consistentHash details",
            policy(
                "{loadBalancer: {consistentHash: {httpCookie: {name: '', ttl: 1 day}, ringHash: {minimumRingSize: 0}, minimumRingSize: 1024}}}",
            ),
            vec![
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name",
                    "must not be empty",
                ),
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl",
                    "invalid duration \"1 day\"",
                ),
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.loadBalancer.consistentHash",
                    "set ringHash.minimumRingSize or the deprecated minimumRingSize, not both",
                ),
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.loadBalancer.consistentHash.ringHash.minimumRingSize",
                    "must be between 1 and 8388608",
                ),
            ],
        ),
        case(
            "invalid hash header",
            policy("{loadBalancer: {consistentHash: {httpHeaderName: 'x user'}}}"),
            vec![want(
                C,
                DR,
                "spec.trafficPolicy.loadBalancer.consistentHash.httpHeaderName",
                "\"x user\" is not a valid header name",
            )],
        ),
        case(
            "locality failover must name regions",
            policy(
                "{loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: true, failover: [{from: us-east1, to: us-west1}, {from: us-east1/a, to: eu-west1}]}}}",
            ),
            vec![want(
                C,
                DR,
                "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[1]",
                "from and to must be region names (no zone or subzone)",
            )],
        ),
        case(
            "port-level settings for ports the service lacks",
            policy(
                "{portLevelSettings: [{port: {number: 80}, loadBalancer: {simple: PASSTHROUGH}}, {port: {number: 80}}, {port: {number: 443}}, {port: {number: 0}}]}",
            ),
            vec![
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.portLevelSettings[0].loadBalancer.simple",
                    "PASSTHROUGH is not supported yet",
                ),
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.portLevelSettings[1].port.number",
                    "duplicate settings for port 80",
                ),
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.portLevelSettings[2].port.number",
                    "service ratings.example.com has no port 443",
                ),
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.portLevelSettings[3].port.number",
                    "must be between 1 and 65535",
                ),
            ],
        ),
        case(
            "subset traffic policies are checked too",
            dr(
                "r",
                "{host: ratings.example.com, subsets: [{name: v1, trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST, consistentHash: {useSourceIp: true}}}}]}",
            ),
            vec![want(
                C,
                DR,
                "spec.subsets[0].trafficPolicy.loadBalancer",
                "set either simple or consistentHash, not both",
            )],
        ),
        // ------------------------------------------------------------ retries
        case(
            "bad retries",
            http(&format!(
                "{{retries: {{attempts: -1, perTryTimeout: 0s, retryOn: '5xx,retriable-headers'}}, {TO_REVIEWS}}}"
            )),
            vec![
                want(
                    C,
                    VS,
                    "spec.http[0].retries.attempts",
                    "-1 is negative; use 0 for no retries",
                ),
                want(
                    C,
                    VS,
                    "spec.http[0].retries.perTryTimeout",
                    "\"0s\" must be greater than zero",
                ),
                want(
                    C,
                    VS,
                    "spec.http[0].retries.retryOn",
                    "unknown retry condition \"retriable-headers\": supported are 5xx, gateway-error, reset, \
                     connect-failure, refused-stream, retriable-4xx, retriable-status-codes, cancelled, \
                     deadline-exceeded, internal, resource-exhausted, unavailable, and HTTP status codes such as 503",
                ),
            ],
        ),
        case(
            "retries with an unparsable perTryTimeout and a bad status code",
            http(&format!(
                "{{retries: {{attempts: 2, perTryTimeout: 2 s, retryOn: 'connect-failure, 600'}}, {TO_REVIEWS}}}"
            )),
            vec![
                want(
                    C,
                    VS,
                    "spec.http[0].retries.perTryTimeout",
                    "invalid duration \"2 s\"",
                ),
                want(
                    C,
                    VS,
                    "spec.http[0].retries.retryOn",
                    "retry condition \"600\" is not an HTTP status code (100 to 599)",
                ),
            ],
        ),
        case(
            "an empty retryOn",
            http(&format!(
                "{{retries: {{attempts: 2, retryOn: ''}}, {TO_REVIEWS}}}"
            )),
            vec![want(
                C,
                VS,
                "spec.http[0].retries.retryOn",
                "no retry condition given",
            )],
        ),
        // -------------------------------------------------------------- fault
        case(
            "a fault with neither delay nor abort",
            http(&format!("{{fault: {{}}, {TO_REVIEWS}}}")),
            vec![want(
                C,
                VS,
                "spec.http[0].fault",
                "set delay, abort or both",
            )],
        ),
        case(
            "a delay without fixedDelay, with percent and percentage",
            http(&format!(
                "{{fault: {{delay: {{percent: 50, percentage: {{value: 50}}}}}}, {TO_REVIEWS}}}"
            )),
            vec![
                want(
                    C,
                    VS,
                    "spec.http[0].fault.delay.fixedDelay",
                    "is required (exponentialDelay is not supported yet)",
                ),
                want(
                    C,
                    VS,
                    "spec.http[0].fault.delay",
                    "set percentage or the deprecated percent, not both",
                ),
            ],
        ),
        case(
            "a zero delay and percentages out of range",
            http(&format!(
                "{{fault: {{delay: {{fixedDelay: 0s, percentage: {{value: 100.5}}}}, abort: {{httpStatus: 503, percentage: {{value: -1}}}}}}, {TO_REVIEWS}}}"
            )),
            vec![
                want(
                    C,
                    VS,
                    "spec.http[0].fault.delay.fixedDelay",
                    "\"0s\" must be greater than zero",
                ),
                want(
                    C,
                    VS,
                    "spec.http[0].fault.delay.percentage.value",
                    "100.5 must be between 0 and 100",
                ),
                want(
                    C,
                    VS,
                    "spec.http[0].fault.abort.percentage.value",
                    "-1 must be between 0 and 100",
                ),
            ],
        ),
        case(
            "a deprecated percent out of range, an invalid fixedDelay",
            http(&format!(
                "{{fault: {{delay: {{fixedDelay: '5', percent: 101}}}}, {TO_REVIEWS}}}"
            )),
            vec![
                want(
                    C,
                    VS,
                    "spec.http[0].fault.delay.fixedDelay",
                    "invalid duration \"5\"",
                ),
                want(
                    C,
                    VS,
                    "spec.http[0].fault.delay.percent",
                    "101 must be between 0 and 100",
                ),
            ],
        ),
        case(
            "aborts need exactly one status",
            vs(
                "vs",
                &format!(
                    "{{hosts: [reviews], http: [\
                     {{fault: {{abort: {{httpStatus: 503, grpcStatus: UNAVAILABLE}}}}, {TO_REVIEWS}}}, \
                     {{fault: {{abort: {{percentage: {{value: 10}}}}}}, {TO_REVIEWS}}}]}}"
                ),
            ),
            vec![
                want(
                    C,
                    VS,
                    "spec.http[0].fault.abort",
                    "set exactly one of httpStatus, grpcStatus (http2Error is not supported yet)",
                ),
                want(
                    C,
                    VS,
                    "spec.http[1].fault.abort",
                    "set exactly one of httpStatus, grpcStatus",
                ),
            ],
        ),
        case(
            "abort statuses out of range or unknown",
            vs(
                "vs",
                &format!(
                    "{{hosts: [reviews], http: [\
                     {{fault: {{abort: {{httpStatus: 100}}}}, {TO_REVIEWS}}}, \
                     {{fault: {{abort: {{httpStatus: 600}}}}, {TO_REVIEWS}}}, \
                     {{fault: {{abort: {{grpcStatus: unavailable}}}}, {TO_REVIEWS}}}]}}"
                ),
            ),
            vec![
                want(
                    C,
                    VS,
                    "spec.http[0].fault.abort.httpStatus",
                    "100 must be between 200 and 599",
                ),
                want(
                    C,
                    VS,
                    "spec.http[1].fault.abort.httpStatus",
                    "600 must be between 200 and 599",
                ),
                want(
                    C,
                    VS,
                    "spec.http[2].fault.abort.grpcStatus",
                    "\"unavailable\" is not a gRPC status code name: use one of OK, CANCELLED, UNKNOWN, \
                     INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, \
                     RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, \
                     INTERNAL, UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED",
                ),
            ],
        ),
        // ---------------------------------------------------------- mirroring
        case(
            "mirror destinations are checked like route destinations",
            vs(
                "vs",
                &format!(
                    "{{hosts: [reviews], http: [\
                     {{mirror: {{host: details}}, {TO_REVIEWS}}}, \
                     {{mirror: {{host: reviews, subset: v3}}, {TO_REVIEWS}}}, \
                     {{mirror: {{host: reviews, port: {{number: 8080}}}}, {TO_REVIEWS}}}, \
                     {{mirror: {{host: reviews, port: {{number: 3306}}}}, {TO_REVIEWS}}}, \
                     {{mirrors: [{{destination: {{host: ratings.example.com}}}}, {{destination: {{host: ratings.example.com, subset: v1}}}}], {TO_REVIEWS}}}]}}"
                ),
            ),
            vec![
                want(
                    C,
                    VS,
                    "spec.http[0].mirror.host",
                    "\"details\" (resolved to details.default.svc.cluster.local) matches no ServiceEntry",
                ),
                want(
                    C,
                    VS,
                    "spec.http[1].mirror.subset",
                    "subset \"v3\" is not defined by any DestinationRule for reviews.default.svc.cluster.local",
                ),
                want(
                    C,
                    VS,
                    "spec.http[2].mirror.port.number",
                    "service reviews.default.svc.cluster.local has no port 8080 (ports: 9080, 9090, 3306)",
                ),
                want(
                    C,
                    VS,
                    "spec.http[3].mirror.port.number",
                    "port 3306 of reviews.default.svc.cluster.local is TCP, not HTTP; only HTTP requests can be mirrored",
                ),
                want(
                    C,
                    VS,
                    "spec.http[4].mirrors[1].destination.subset",
                    "subset \"v1\" is not defined by any DestinationRule for ratings.example.com",
                ),
            ],
        ),
        case(
            "mirror and mirrors together; mirrorPercentage without mirror",
            vs(
                "vs",
                &format!(
                    "{{hosts: [reviews], http: [\
                     {{mirror: {{host: reviews}}, mirrors: [{{destination: {{host: reviews}}}}], {TO_REVIEWS}}}, \
                     {{mirrorPercentage: {{value: 10}}, mirrors: [{{destination: {{host: reviews}}}}], {TO_REVIEWS}}}]}}"
                ),
            ),
            vec![
                want(
                    C,
                    VS,
                    "spec.http[0]",
                    "set mirror (with mirrorPercentage) or mirrors, not both",
                ),
                want(
                    C,
                    VS,
                    "spec.http[1].mirrorPercentage",
                    "applies to mirror, which is not set (each entry of mirrors has its own percentage)",
                ),
            ],
        ),
        case(
            "mirror percentages out of range",
            http(&format!(
                "{{mirror: {{host: reviews}}, mirrorPercentage: {{value: 101}}, {TO_REVIEWS}}}, \
                 {{mirrors: [{{destination: {{host: reviews}}, percentage: {{value: 50}}}}, {{destination: {{host: reviews}}, percentage: {{value: -0.1}}}}], {TO_REVIEWS}}}"
            )),
            vec![
                want(
                    C,
                    VS,
                    "spec.http[0].mirrorPercentage.value",
                    "101 must be between 0 and 100",
                ),
                want(
                    C,
                    VS,
                    "spec.http[1].mirrors[1].percentage.value",
                    "-0.1 must be between 0 and 100",
                ),
            ],
        ),
        // ------------------------------------- policies on opaque destinations
        case(
            "mirroring to a service whose only port is TCP",
            docs(&[
                db(),
                http(&format!(
                    "{{mirror: {{host: db.example.com}}, {TO_REVIEWS}}}, \
                     {{mirrors: [{{destination: {{host: db.example.com, port: {{number: 5432}}}}}}], {TO_REVIEWS}}}"
                )),
            ]),
            vec![
                want(
                    C,
                    VS,
                    "spec.http[0].mirror",
                    "mirrored requests would go to port 5432 of db.example.com, which is TCP, not HTTP; \
                     set port to an HTTP port of db.example.com",
                ),
                want(
                    C,
                    VS,
                    "spec.http[1].mirrors[0].destination.port.number",
                    "port 5432 of db.example.com is TCP, not HTTP; only HTTP requests can be mirrored",
                ),
            ],
        ),
        case(
            "retries, fault and mirrors on a route to an opaque port",
            docs(&[
                db(),
                http(
                    "{retries: {attempts: 2}, fault: {abort: {httpStatus: 503}}, mirrors: [{destination: {host: reviews}}], \
                     route: [{destination: {host: reviews, subset: v1}, weight: 90}, {destination: {host: db.example.com}, weight: 10}]}",
                ),
            ]),
            vec![
                want(
                    C,
                    VS,
                    "spec.http[0].retries",
                    "retries cannot be honoured: route[1].destination sends to port 5432 of db.example.com, \
                     which is TCP (opaque bytes, not HTTP requests); set destination.port to an HTTP port of \
                     db.example.com, or remove retries from this route",
                ),
                want(
                    C,
                    VS,
                    "spec.http[0].fault",
                    "fault injection cannot be honoured: route[1].destination sends to port 5432 of db.example.com",
                ),
                want(
                    C,
                    VS,
                    "spec.http[0].mirrors",
                    "mirroring cannot be honoured: route[1].destination sends to port 5432 of db.example.com",
                ),
            ],
        ),
        case(
            "a mirror on a route to a TLS port named by the request's port",
            docs(&[
                se(
                    "s",
                    "{hosts: [db.example.com], resolution: DNS, ports: [{number: 9080, name: tls, protocol: TLS}, {number: 5432, name: tcp}]}",
                ),
                http("{mirror: {host: reviews}, route: [{destination: {host: db.example.com}}]}"),
            ]),
            vec![want(
                C,
                VS,
                "spec.http[0].mirror",
                "mirroring cannot be honoured: route[0].destination sends to port 9080 of db.example.com, which is TLS",
            )],
        ),
        case(
            "retries on a route to an explicit TCP port: the port is the error",
            http(
                "{retries: {attempts: 2}, route: [{destination: {host: reviews, port: {number: 3306}}}]}",
            ),
            vec![want(
                C,
                VS,
                "spec.http[0].route[0].destination.port.number",
                "port 3306 of reviews.default.svc.cluster.local is TCP, not HTTP; route it with a tcp route",
            )],
        ),
        // ------------------------------------------------------ connectionPool
        case(
            "connection pool limits and durations",
            policy(
                "{connectionPool: {tcp: {maxConnections: 0, connectTimeout: 0s, tcpKeepalive: {probes: 3, time: 2h, interval: soon}}, \
                 http: {http1MaxPendingRequests: 0, http2MaxRequests: -5, maxRequestsPerConnection: -1, maxRetries: -1, idleTimeout: 0ms}}}",
            ),
            vec![
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.connectionPool.tcp.maxConnections",
                    "0 must be at least 1 (omit the field for no limit)",
                ),
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
                    "\"0s\" must be greater than zero",
                ),
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.interval",
                    "invalid duration \"soon\"",
                ),
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests",
                    "0 must be at least 1",
                ),
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.connectionPool.http.http2MaxRequests",
                    "-5 must be at least 1",
                ),
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection",
                    "-1 is negative; use 0 (or omit it) for no limit",
                ),
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.connectionPool.http.maxRetries",
                    "-1 is negative; use 0 (or omit it) for Istio's default, no limit",
                ),
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.connectionPool.http.idleTimeout",
                    "\"0ms\" must be greater than zero",
                ),
            ],
        ),
        case(
            "keepalive time of zero",
            policy("{connectionPool: {tcp: {tcpKeepalive: {time: 0s}}}}"),
            vec![want(
                C,
                DR,
                "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time",
                "\"0s\" must be greater than zero",
            )],
        ),
        // ---------------------------------------------------- outlierDetection
        case(
            "outlier detection durations and percents",
            policy(
                "{outlierDetection: {consecutive5xxErrors: 0, interval: 0s, baseEjectionTime: '30', maxEjectionPercent: -1, minHealthPercent: 150}}",
            ),
            vec![
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.outlierDetection.interval",
                    "\"0s\" must be greater than zero",
                ),
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.outlierDetection.baseEjectionTime",
                    "invalid duration \"30\"",
                ),
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
                    "-1 must be between 0 and 100",
                ),
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.outlierDetection.minHealthPercent",
                    "150 must be between 0 and 100",
                ),
            ],
        ),
        case(
            "port-level and subset policies are checked too",
            dr(
                "r",
                "{host: ratings.example.com, trafficPolicy: {portLevelSettings: [{port: {number: 80}, \
                 connectionPool: {tcp: {maxConnections: -1}}, outlierDetection: {maxEjectionPercent: 101}}]}, \
                 subsets: [{name: v1, trafficPolicy: {outlierDetection: {baseEjectionTime: 0s}, connectionPool: {http: {http2MaxRequests: 0}}}}]}",
            ),
            vec![
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.portLevelSettings[0].connectionPool.tcp.maxConnections",
                    "-1 must be at least 1",
                ),
                want(
                    C,
                    DR,
                    "spec.trafficPolicy.portLevelSettings[0].outlierDetection.maxEjectionPercent",
                    "101 must be between 0 and 100",
                ),
                want(
                    C,
                    DR,
                    "spec.subsets[0].trafficPolicy.connectionPool.http.http2MaxRequests",
                    "0 must be at least 1",
                ),
                want(
                    C,
                    DR,
                    "spec.subsets[0].trafficPolicy.outlierDetection.baseEjectionTime",
                    "\"0s\" must be greater than zero",
                ),
            ],
        ),
        // ----------------------------------------------------- RateLimitPolicy
        case(
            "a rate limit for an unknown host",
            rate_limit("rl", &format!("{{host: details, {BUCKET}}}")),
            vec![want(
                C,
                RL,
                "spec.host",
                "\"details\" (resolved to details.default.svc.cluster.local) matches no ServiceEntry or VirtualService host",
            )],
        ),
        case(
            "a rate limit's host resolves in its own namespace",
            crate::support::trellis_doc(
                "RateLimitPolicy",
                "name: rl, namespace: prod",
                &format!("{{host: reviews, {BUCKET}}}"),
            ),
            vec![want(
                C,
                "RateLimitPolicy prod/rl",
                "spec.host",
                "\"reviews\" (resolved to reviews.prod.svc.cluster.local) matches no ServiceEntry or VirtualService host",
            )],
        ),
        case(
            "a rate limit with an invalid host",
            rate_limit("rl", &format!("{{host: 'reviews:9080', {BUCKET}}}")),
            vec![want(
                C,
                RL,
                "spec.host",
                "\"reviews:9080\" is not a valid host (a DNS name, *.suffix or *)",
            )],
        ),
        case(
            "an empty token bucket",
            rate_limit(
                "rl",
                "{host: reviews, tokenBucket: {maxTokens: 0, tokensPerFill: 0, fillInterval: 0s}}",
            ),
            vec![
                want(C, RL, "spec.tokenBucket.maxTokens", "must be at least 1"),
                want(
                    C,
                    RL,
                    "spec.tokenBucket.tokensPerFill",
                    "must be at least 1 (omit it to refill up to maxTokens)",
                ),
                want(
                    C,
                    RL,
                    "spec.tokenBucket.fillInterval",
                    "\"0s\" must be greater than zero",
                ),
            ],
        ),
        case(
            "an unparsable fill interval",
            rate_limit(
                "rl",
                "{host: reviews, tokenBucket: {maxTokens: 5, fillInterval: 1 second}}",
            ),
            vec![want(
                C,
                RL,
                "spec.tokenBucket.fillInterval",
                "invalid duration \"1 second\"",
            )],
        ),
        case(
            "rate-limited routes must be named routes of the host",
            docs(&[
                named_routes(),
                rate_limit(
                    "rl",
                    &format!("{{host: reviews, routes: [canary, nope, canary], {BUCKET}}}"),
                ),
            ]),
            vec![
                want(
                    C,
                    RL,
                    "spec.routes[1]",
                    "VirtualService default/vs (case.yaml) for reviews.default.svc.cluster.local has no http \
                     route named \"nope\"; its http routes are named canary, default",
                ),
                want(C, RL, "spec.routes[2]", "duplicate route \"canary\""),
            ],
        ),
        case(
            "routes of a VirtualService that names none",
            docs(&[
                http(&format!("{{{TO_REVIEWS}}}")),
                rate_limit(
                    "rl",
                    &format!("{{host: reviews, routes: [default], {BUCKET}}}"),
                ),
            ]),
            vec![want(
                C,
                RL,
                "spec.routes[0]",
                "has no http route named \"default\"; it names none of its http routes",
            )],
        ),
        case(
            "routes of a host without a VirtualService",
            rate_limit(
                "rl",
                &format!("{{host: ratings.example.com, routes: [a], {BUCKET}}}"),
            ),
            vec![want(
                C,
                RL,
                "spec.routes[0]",
                "ratings.example.com has no VirtualService, so it has no named routes; \
                 omit routes to limit every request to ratings.example.com",
            )],
        ),
        case(
            "two rate limits for the same host or the same route",
            docs(&[
                named_routes(),
                rate_limit("rl", &format!("{{host: reviews, {BUCKET}}}")),
                rate_limit("rl2", &format!("{{host: reviews.default, {BUCKET}}}")),
                rate_limit(
                    "rl3",
                    &format!("{{host: reviews, routes: [default, canary], {BUCKET}}}"),
                ),
                rate_limit(
                    "rl4",
                    &format!("{{host: reviews, routes: [canary], {BUCKET}}}"),
                ),
            ]),
            vec![
                want(
                    C,
                    "RateLimitPolicy default/rl2",
                    "spec.host",
                    "RateLimitPolicy default/rl (case.yaml) already limits every request to \
                     reviews.default.svc.cluster.local; one host-wide RateLimitPolicy per host",
                ),
                want(
                    C,
                    "RateLimitPolicy default/rl4",
                    "spec.routes[0]",
                    "RateLimitPolicy default/rl3 (case.yaml) already limits route \"canary\" of \
                     reviews.default.svc.cluster.local; one RateLimitPolicy per host and route",
                ),
            ],
        ),
        // --------------------------------------------------------- RetryBudget
        case(
            "a retry budget for an unknown host, or for a host that is only routed",
            docs(&[
                vs(
                    "vs",
                    &format!("{{hosts: [web.example.org], http: [{{{TO_REVIEWS}}}]}}"),
                ),
                retry_budget("rb", "{host: details}"),
                retry_budget("rb2", "{host: web.example.org}"),
            ]),
            vec![
                want(
                    C,
                    RB,
                    "spec.host",
                    "\"details\" (resolved to details.default.svc.cluster.local) matches no ServiceEntry",
                ),
                want(
                    C,
                    "RetryBudget default/rb2",
                    "spec.host",
                    "\"web.example.org\" (resolved to web.example.org) matches no ServiceEntry",
                ),
            ],
        ),
        case(
            "retry ratios and ttls out of range",
            docs(&[
                retry_budget("rb", "{host: reviews, retryRatio: -0.1, ttl: 500ms}"),
                retry_budget(
                    "rb2",
                    "{host: ratings.example.com, retryRatio: 1000.5, ttl: 61s}",
                ),
                retry_budget(
                    "rb3",
                    "{host: db.example.com, retryRatio: 5000, ttl: ten seconds}",
                ),
                db(),
            ]),
            vec![
                want(
                    C,
                    RB,
                    "spec.retryRatio",
                    "-0.1 must be between 0 and 1000 (retries per request: 0.2 allows 20% more requests)",
                ),
                want(C, RB, "spec.ttl", "\"500ms\" must be between 1s and 60s"),
                want(
                    C,
                    "RetryBudget default/rb2",
                    "spec.retryRatio",
                    "1000.5 must be between 0 and 1000",
                ),
                want(
                    C,
                    "RetryBudget default/rb2",
                    "spec.ttl",
                    "\"61s\" must be between 1s and 60s",
                ),
                want(
                    C,
                    "RetryBudget default/rb3",
                    "spec.retryRatio",
                    "5000 must be between 0 and 1000",
                ),
                want(
                    C,
                    "RetryBudget default/rb3",
                    "spec.ttl",
                    "invalid duration \"ten seconds\"",
                ),
            ],
        ),
        case(
            "two retry budgets for one host",
            docs(&[
                retry_budget("rb", "{host: reviews}"),
                retry_budget("rb2", "{host: reviews.default.svc.cluster.local}"),
            ]),
            vec![want(
                C,
                "RetryBudget default/rb2",
                "spec.host",
                "RetryBudget default/rb (case.yaml) already applies to reviews.default.svc.cluster.local; \
                 one RetryBudget per host",
            )],
        ),
        // --------------------------------------------------- all reported
        case(
            "one file with three independent problems gives three errors",
            docs(&[
                vs(
                    "vs",
                    "{hosts: [reviews], http: [{timeout: soon, route: [{destination: {host: reviews, subset: v1}, weight: 50}, {destination: {host: reviews, subset: v2}, weight: 40}]}]}",
                ),
                entry("ports: [{number: 5432, name: tcp}]"),
            ]),
            vec![
                // ServiceEntries are checked first, then DestinationRules, then VirtualServices.
                want(C, SE, "spec.resolution", "resolution NONE"),
                want(C, VS, "spec.http[0].route", "weights sum to 90"),
                want(C, VS, "spec.http[0].timeout", "invalid duration \"soon\""),
            ],
        ),
    ]
}

#[test]
fn bad_configs_get_exact_errors() {
    for c in cases() {
        match check_with_base(&c.text) {
            Ok(_) => panic!("case {:?} validated, want errors", c.name),
            Err(got) => assert_errors(c.name, &got, &c.want),
        }
    }
}

#[test]
fn duplicate_service_entry_host_across_files_names_both() {
    let a = se(
        "reviews",
        "{hosts: [reviews], resolution: DNS, ports: [{number: 80, name: http}]}",
    );
    let b = crate::support::doc(
        "ServiceEntry",
        "name: reviews-copy, namespace: default",
        "{hosts: [api.example.com, reviews.default.svc.cluster.local], resolution: DNS, ports: [{number: 80, name: http}]}",
    );
    let errs = check(&[("a/reviews.yaml", &a), ("b/copy.yaml", &b)]).unwrap_err();
    assert_errors(
        "duplicate host",
        &errs,
        &[want(
            "b/copy.yaml",
            "ServiceEntry default/reviews-copy",
            "spec.hosts[1]",
            "host reviews.default.svc.cluster.local is already defined by ServiceEntry default/reviews (a/reviews.yaml); \
             one ServiceEntry per host",
        )],
    );
}

#[test]
fn same_short_host_in_two_namespaces_is_two_services() {
    // Trellis qualifies a short ServiceEntry host with the entry's namespace.
    let a = crate::support::doc(
        "ServiceEntry",
        "name: cart, namespace: shop",
        "{hosts: [cart], resolution: DNS, ports: [{number: 80, name: http}]}",
    );
    let b = crate::support::doc(
        "ServiceEntry",
        "name: cart, namespace: test",
        "{hosts: [cart], resolution: DNS, ports: [{number: 80, name: http}]}",
    );
    let v = check(&[("a.yaml", &a), ("b.yaml", &b)]).unwrap();
    assert_eq!(
        v.services.keys().collect::<Vec<_>>(),
        ["cart.shop.svc.cluster.local", "cart.test.svc.cluster.local"]
    );
}

#[test]
fn errors_of_every_resource_are_reported_together() {
    // Problems in all three kinds, in three files: nothing stops at the first.
    let files = [
        (
            "1-se.yaml",
            se(
                "s",
                "{hosts: [db.example.com], resolution: DNS, ports: [{number: 0, name: tcp}]}",
            ),
        ),
        (
            "2-dr.yaml",
            dr(
                "r",
                "{host: db.example.com, trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}}",
            ),
        ),
        (
            "3-vs.yaml",
            vs(
                "vs",
                "{hosts: [db.example.com], gateways: [ingress], tcp: [{route: [{destination: {host: db.example.com}, weight: 50}]}]}",
            ),
        ),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(f, t)| (*f, t.as_str())).collect();
    let errs = check(&files).unwrap_err();
    assert_errors(
        "three kinds",
        &errs,
        &[
            want(
                "1-se.yaml",
                SE,
                "spec.ports[0].number",
                "must be between 1 and 65535",
            ),
            want(
                "2-dr.yaml",
                DR,
                "spec.trafficPolicy.loadBalancer.simple",
                "PASSTHROUGH",
            ),
            want("3-vs.yaml", VS, "spec.gateways[0]", "only \"mesh\""),
            want(
                "3-vs.yaml",
                VS,
                "spec.tcp[0].route[0].weight",
                "weight 50 must be 100 or omitted",
            ),
        ],
    );
    assert_eq!(errs.to_string().lines().next(), Some("4 errors in config"));
}

#[test]
fn sidecar_egress_hosts_are_checked() {
    use crate::support::{check, docs, sidecar};
    let text = docs(&[
        sidecar("ok", "{egress: [{hosts: ['./*', '*/api.example.com']}]}"),
        sidecar(
            "bad",
            "{workloadSelector: {labels: {app: a}}, egress: [{hosts: [reviews]}, {hosts: []}]}",
        ),
        sidecar("again", "{egress: [{hosts: ['~/*']}]}"),
    ]);
    let errs: Vec<String> = check(&[("s.yaml", &text)])
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    let has = |parts: &[&str]| errs.iter().any(|e| parts.iter().all(|p| e.contains(p)));
    assert!(
        has(&[
            "Sidecar default/bad",
            "spec.egress[0].hosts[0]",
            "must be namespace/host"
        ]),
        "{errs:?}"
    );
    assert!(
        has(&["Sidecar default/bad", "spec.egress[1].hosts", "is empty"]),
        "{errs:?}"
    );
    assert!(
        has(&[
            "Sidecar default/again",
            "spec.workloadSelector",
            "Sidecar default/ok",
            "one per namespace"
        ]),
        "{errs:?}"
    );
    assert_eq!(errs.len(), 3, "{errs:?}");

    // What Trellis does not implement fails at parse time, at its path.
    let err = trellis_model::parse_documents(
        "p.yaml",
        &sidecar("port", "{egress: [{hosts: ['./*'], port: {number: 80}}]}"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("spec.egress[0].port") && err.contains("not supported"),
        "{err}"
    );
}

#[test]
fn peer_authentications_are_checked() {
    use crate::support::{check, docs, peer_auth};
    let text = docs(&[
        peer_auth("shop", "ns", "{mtls: {mode: STRICT}}"),
        peer_auth(
            "shop",
            "wl",
            "{selector: {matchLabels: {app: a}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {'8080': {mode: DISABLE}, 'x': {mode: STRICT}}}",
        ),
        peer_auth("web", "ports", "{portLevelMtls: {'80': {mode: DISABLE}}}"),
        peer_auth("shop", "again", "{mtls: {mode: DISABLE}}"),
        peer_auth("istio-system", "mesh", "{}"),
    ]);
    let errs: Vec<String> = check(&[("pa.yaml", &text)])
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    let has = |parts: &[&str]| errs.iter().any(|e| parts.iter().all(|p| e.contains(p)));
    for want in [
        &[
            "pa.yaml",
            "PeerAuthentication shop/wl",
            "spec.portLevelMtls.x",
            "not a port number",
        ][..],
        &[
            "PeerAuthentication web/ports",
            "spec.portLevelMtls",
            "needs spec.selector",
        ],
        &[
            "PeerAuthentication shop/again",
            "spec.selector",
            "shop/ns",
            "one per namespace",
        ],
    ] {
        assert!(has(want), "{want:?} not in {errs:?}");
    }
    assert_eq!(errs.len(), 3, "{errs:?}");

    // Unknown modes and fields fail at parse time, at their path.
    for (spec, path) in [
        ("{mtls: {mode: OPTIONAL}}", "spec.mtls.mode"),
        (
            "{mtls: {mode: STRICT, minProtocolVersion: TLSV1_3}}",
            "spec.mtls.minProtocolVersion",
        ),
        (
            "{selector: {matchExpressions: []}}",
            "spec.selector.matchExpressions",
        ),
        ("{targetRefs: []}", "spec.targetRefs"),
    ] {
        let err = trellis_model::parse_documents("p.yaml", &peer_auth("shop", "x", spec))
            .unwrap_err()
            .to_string();
        assert!(err.contains(path), "{spec}: {err}");
    }
    let ok = check(&[(
        "pa.yaml",
        &peer_auth("shop", "ok", "{mtls: {mode: PERMISSIVE}}"),
    )])
    .unwrap();
    assert_eq!(ok.peer_authentications.len(), 1);
}

#[test]
fn client_tls_settings_are_checked() {
    use crate::support::{check_with_base, dr};
    let cases = [
        (
            "{mode: ISTIO_MUTUAL, subjectAltNames: ['spiffe://cluster.local/ns/default/sa/reviews']}",
            vec![],
        ),
        (
            "{mode: SIMPLE, caCertificates: /etc/ca.pem, sni: api.example.com}",
            vec![],
        ),
        (
            "{mode: MUTUAL, caCertificates: /ca.pem, clientCertificate: /c.pem, privateKey: /k.pem}",
            vec![],
        ),
        ("{mode: DISABLE}", vec![]),
        (
            "{mode: ISTIO_MUTUAL, caCertificates: /ca.pem}",
            vec![(
                "spec.trafficPolicy.tls.caCertificates",
                "not used with mode ISTIO_MUTUAL",
            )],
        ),
        (
            "{mode: ISTIO_MUTUAL, subjectAltNames: [reviews.default]}",
            vec![(
                "spec.trafficPolicy.tls.subjectAltNames[0]",
                "not a SPIFFE ID",
            )],
        ),
        (
            "{mode: SIMPLE}",
            vec![(
                "spec.trafficPolicy.tls.caCertificates",
                "required with mode SIMPLE",
            )],
        ),
        (
            "{mode: SIMPLE, caCertificates: /ca.pem, privateKey: /k.pem}",
            vec![(
                "spec.trafficPolicy.tls.privateKey",
                "only used with mode MUTUAL",
            )],
        ),
        (
            "{mode: MUTUAL, caCertificates: /ca.pem}",
            vec![
                (
                    "spec.trafficPolicy.tls.clientCertificate",
                    "required with mode MUTUAL",
                ),
                (
                    "spec.trafficPolicy.tls.privateKey",
                    "required with mode MUTUAL",
                ),
            ],
        ),
        (
            "{mode: SIMPLE, caCertificates: ''}",
            vec![("spec.trafficPolicy.tls.caCertificates", "is empty")],
        ),
    ];
    for (tls, want) in cases {
        let text = dr(
            "r",
            &format!("{{host: ratings.example.com, trafficPolicy: {{tls: {tls}}}}}"),
        );
        match check_with_base(&text) {
            Ok(_) => assert!(want.is_empty(), "{tls}: accepted, want {want:?}"),
            Err(errs) => {
                let got: Vec<(String, String)> = errs
                    .0
                    .iter()
                    .map(|e| (e.field.clone(), e.reason.clone()))
                    .collect();
                assert_eq!(got.len(), want.len(), "{tls}: {got:?}");
                for ((field, reason), (wf, wr)) in got.iter().zip(&want) {
                    assert_eq!(field, wf, "{tls}");
                    assert!(reason.contains(wr), "{tls}: {reason}");
                }
            }
        }
    }
}
