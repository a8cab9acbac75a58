//! `conflict::resolve`: the oldest of two resources claiming the same thing
//! wins, the newer is left out and reported, and the result validates.

use std::collections::BTreeMap;

use trellis_model::conflict::{Conflict, resolve};
use trellis_model::resource::Kind;
use trellis_model::validate::validate;

use crate::support::{base, docs, dr, parse_all, rate_limit, retry_budget, se, sidecar, vs};

struct Case {
    name: &'static str,
    /// Documents after `base()`, each named `Kind/name` by its position in
    /// `ages` (older first); resources not listed are older than all listed.
    text: String,
    ages: &'static [&'static str],
    /// `(loser, winner, reason substring)`, in report order.
    want: &'static [(&'static str, &'static str, &'static str)],
    /// `Kind/name` of every resource left out.
    dropped: &'static [&'static str],
}

fn route(host: &str, subset: &str) -> String {
    format!(
        "{{hosts: [{host}], http: [{{route: [{{destination: {{host: reviews, subset: {subset}}}}}]}}]}}"
    )
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "no conflict",
            text: docs(&[vs("a", &route("reviews", "v1"))]),
            ages: &["VirtualService/a"],
            want: &[],
            dropped: &[],
        },
        Case {
            name: "two VirtualServices for one host: the older wins",
            text: docs(&[
                vs("new", &route("reviews", "v2")),
                vs("old", &route("reviews", "v1")),
            ]),
            ages: &["VirtualService/old", "VirtualService/new"],
            want: &[(
                "VirtualService default/new",
                "VirtualService default/old",
                "host reviews.default.svc.cluster.local is already routed by VirtualService default/old, which is older; one VirtualService per host",
            )],
            dropped: &["VirtualService/new"],
        },
        Case {
            name: "age decides, not position",
            text: docs(&[
                vs("old", &route("reviews", "v1")),
                vs("new", &route("reviews", "v2")),
            ]),
            ages: &["VirtualService/new", "VirtualService/old"],
            want: &[(
                "VirtualService default/old",
                "VirtualService default/new",
                "already routed by VirtualService default/new",
            )],
            dropped: &["VirtualService/old"],
        },
        Case {
            name: "hosts are compared resolved: short name and FQDN",
            text: docs(&[
                vs("short", &route("reviews", "v1")),
                vs("fqdn", &route("reviews.default.svc.cluster.local", "v2")),
            ]),
            ages: &["VirtualService/short", "VirtualService/fqdn"],
            want: &[(
                "VirtualService default/fqdn",
                "VirtualService default/short",
                "host reviews.default.svc.cluster.local",
            )],
            dropped: &["VirtualService/fqdn"],
        },
        Case {
            name: "a loser claims nothing: a third resource only conflicts with the winner",
            text: docs(&[
                vs("a", &route("reviews", "v1")),
                vs(
                    "b",
                    "{hosts: [reviews, ratings.example.com], http: [{route: [{destination: {host: reviews}}]}]}",
                ),
                vs(
                    "c",
                    "{hosts: [ratings.example.com], http: [{route: [{destination: {host: ratings.example.com}}]}]}",
                ),
            ]),
            ages: &["VirtualService/a", "VirtualService/b", "VirtualService/c"],
            want: &[(
                "VirtualService default/b",
                "VirtualService default/a",
                "host reviews.default.svc.cluster.local",
            )],
            dropped: &["VirtualService/b"],
        },
        Case {
            name: "losing to two older resources reports both",
            text: docs(&[
                vs("a", &route("reviews", "v1")),
                vs(
                    "b",
                    "{hosts: [ratings.example.com], http: [{route: [{destination: {host: ratings.example.com}}]}]}",
                ),
                vs(
                    "c",
                    "{hosts: [reviews, ratings.example.com], http: [{route: [{destination: {host: reviews}}]}]}",
                ),
            ]),
            ages: &["VirtualService/a", "VirtualService/b", "VirtualService/c"],
            want: &[
                (
                    "VirtualService default/c",
                    "VirtualService default/a",
                    "host reviews.default.svc.cluster.local",
                ),
                (
                    "VirtualService default/c",
                    "VirtualService default/b",
                    "host ratings.example.com",
                ),
            ],
            dropped: &["VirtualService/c"],
        },
        Case {
            name: "two DestinationRules for one host",
            text: docs(&[dr(
                "reviews-too",
                "{host: reviews.default.svc.cluster.local, subsets: [{name: v1, labels: {version: v1}}]}",
            )]),
            ages: &["DestinationRule/reviews", "DestinationRule/reviews-too"],
            want: &[(
                "DestinationRule default/reviews-too",
                "DestinationRule default/reviews",
                "DestinationRule default/reviews, which is older, already applies to reviews.default.svc.cluster.local; one DestinationRule per host",
            )],
            dropped: &["DestinationRule/reviews-too"],
        },
        Case {
            name: "a newer DestinationRule does not displace the older one",
            text: docs(&[dr("reviews-too", "{host: reviews}")]),
            ages: &["DestinationRule/reviews-too", "DestinationRule/reviews"],
            want: &[(
                "DestinationRule default/reviews",
                "DestinationRule default/reviews-too",
                "already applies to reviews.default.svc.cluster.local",
            )],
            dropped: &["DestinationRule/reviews"],
        },
        Case {
            name: "two ServiceEntries for one host",
            text: docs(&[se(
                "ratings-too",
                "{hosts: [ratings.example.com], resolution: DNS, ports: [{number: 80, name: http}]}",
            )]),
            ages: &["ServiceEntry/ratings", "ServiceEntry/ratings-too"],
            want: &[(
                "ServiceEntry default/ratings-too",
                "ServiceEntry default/ratings",
                "host ratings.example.com is already defined by ServiceEntry default/ratings, which is older",
            )],
            dropped: &["ServiceEntry/ratings-too"],
        },
        Case {
            name: "two RetryBudgets for one host",
            text: docs(&[
                retry_budget("a", "{host: reviews}"),
                retry_budget("b", "{host: reviews.default}"),
            ]),
            ages: &["RetryBudget/a", "RetryBudget/b"],
            want: &[(
                "RetryBudget default/b",
                "RetryBudget default/a",
                "already applies to reviews.default.svc.cluster.local; one RetryBudget per host",
            )],
            dropped: &["RetryBudget/b"],
        },
        Case {
            name: "two Sidecars without a selector in one namespace; selectors claim nothing",
            text: docs(&[
                sidecar("new", "{egress: [{hosts: ['*/*']}]}"),
                sidecar("old", "{egress: [{hosts: ['./*']}]}"),
                sidecar(
                    "cart",
                    "{workloadSelector: {labels: {app: cart}}, egress: [{hosts: ['./*']}]}",
                ),
                sidecar(
                    "cart-too",
                    "{workloadSelector: {labels: {app: cart}}, egress: [{hosts: ['./*']}]}",
                ),
            ]),
            ages: &[
                "Sidecar/old",
                "Sidecar/new",
                "Sidecar/cart",
                "Sidecar/cart-too",
            ],
            want: &[(
                "Sidecar default/new",
                "Sidecar default/old",
                "already applies to namespace default without a selector; one per namespace",
            )],
            dropped: &["Sidecar/new"],
        },
        Case {
            name: "RateLimitPolicies: host-wide and per-route claims are distinct",
            text: docs(&[
                vs(
                    "a",
                    "{hosts: [reviews], http: [{name: canary, route: [{destination: {host: reviews}}]}]}",
                ),
                rate_limit(
                    "all",
                    "{host: reviews, tokenBucket: {maxTokens: 1, fillInterval: 1s}}",
                ),
                rate_limit(
                    "canary",
                    "{host: reviews, routes: [canary], tokenBucket: {maxTokens: 1, fillInterval: 1s}}",
                ),
                rate_limit(
                    "all-too",
                    "{host: reviews, tokenBucket: {maxTokens: 2, fillInterval: 1s}}",
                ),
            ]),
            ages: &[
                "VirtualService/a",
                "RateLimitPolicy/all",
                "RateLimitPolicy/canary",
                "RateLimitPolicy/all-too",
            ],
            want: &[(
                "RateLimitPolicy default/all-too",
                "RateLimitPolicy default/all",
                "RateLimitPolicy default/all, which is older, already limits every request to reviews.default.svc.cluster.local",
            )],
            dropped: &["RateLimitPolicy/all-too"],
        },
        Case {
            name: "equal ages: namespace and name break the tie",
            text: docs(&[
                vs("b", &route("reviews", "v1")),
                vs("a", &route("reviews", "v2")),
            ]),
            ages: &[],
            want: &[(
                "VirtualService default/b",
                "VirtualService default/a",
                "already routed by VirtualService default/a",
            )],
            dropped: &["VirtualService/b"],
        },
    ]
}

fn key(c: &Conflict) -> (String, String) {
    (c.loser.to_string(), c.winner.to_string())
}

#[test]
fn oldest_wins_and_every_conflict_is_reported() {
    for c in cases() {
        let set = parse_all(&[("base.yaml", &base()), ("case.yaml", &c.text)]);
        let ages: BTreeMap<String, u64> = c
            .ages
            .iter()
            .enumerate()
            .map(|(i, k)| (k.to_string(), i as u64 + 1))
            .collect();
        let (resolved, conflicts) = resolve(&set, |kind, meta| {
            ages.get(&format!("{kind}/{}", meta.name))
                .copied()
                .unwrap_or(0)
        });
        let got: Vec<_> = conflicts.iter().map(key).collect();
        let want: Vec<_> = c
            .want
            .iter()
            .map(|(l, w, _)| (l.to_string(), w.to_string()))
            .collect();
        assert_eq!(got, want, "case {:?}", c.name);
        for (g, (_, _, reason)) in conflicts.iter().zip(c.want) {
            assert!(
                g.reason.contains(reason),
                "case {:?}: reason {:?} lacks {reason:?}",
                c.name,
                g.reason
            );
        }
        assert_eq!(
            set.len() - resolved.len(),
            c.dropped.len(),
            "case {:?}: dropped count",
            c.name
        );
        let kept = |kind: Kind, name: &str| -> bool {
            match kind {
                Kind::ServiceEntry => resolved
                    .service_entries
                    .iter()
                    .any(|o| o.metadata.name == name),
                Kind::DestinationRule => resolved
                    .destination_rules
                    .iter()
                    .any(|o| o.metadata.name == name),
                Kind::VirtualService => resolved
                    .virtual_services
                    .iter()
                    .any(|o| o.metadata.name == name),
                Kind::RateLimitPolicy => resolved
                    .rate_limit_policies
                    .iter()
                    .any(|o| o.metadata.name == name),
                Kind::RetryBudget => resolved
                    .retry_budgets
                    .iter()
                    .any(|o| o.metadata.name == name),
                Kind::Sidecar => resolved.sidecars.iter().any(|o| o.metadata.name == name),
                Kind::AuthorizationPolicy => resolved
                    .authorization_policies
                    .iter()
                    .any(|o| o.metadata.name == name),
                Kind::PeerAuthentication => resolved
                    .peer_authentications
                    .iter()
                    .any(|o| o.metadata.name == name),
            }
        };
        for d in c.dropped {
            let (kind, name) = d.split_once('/').unwrap();
            assert!(
                !kept(Kind::parse(kind).unwrap(), name),
                "case {:?}: {d} should be dropped",
                c.name
            );
        }
        if let Err(e) = validate(&resolved) {
            panic!("case {:?}: the resolved set should validate: {e}", c.name);
        }
    }
}

#[test]
fn the_validator_still_rejects_conflicts() {
    // The standalone proxy's behaviour is unchanged: conflicts are errors there.
    let set = parse_all(&[
        ("base.yaml", &base()),
        (
            "case.yaml",
            &docs(&[
                vs("a", &route("reviews", "v1")),
                vs("b", &route("reviews", "v2")),
            ]),
        ),
    ]);
    let errs = validate(&set).unwrap_err();
    assert!(
        errs.to_string().contains("one VirtualService per host"),
        "{errs}"
    );
}

#[test]
fn resolution_keeps_load_order() {
    let set = parse_all(&[
        ("base.yaml", &base()),
        (
            "case.yaml",
            &docs(&[
                vs("z", &route("reviews", "v1")),
                vs("a", &route("ratings.example.com", "v1")),
            ]),
        ),
    ]);
    let (resolved, conflicts) = resolve(&set, |_, _| 0);
    assert!(conflicts.is_empty());
    let names: Vec<_> = resolved
        .virtual_services
        .iter()
        .map(|o| o.metadata.name.as_str())
        .collect();
    assert_eq!(names, ["z", "a"]);
}
