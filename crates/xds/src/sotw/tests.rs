//! Table tests: each scenario is a list of steps (a snapshot, or a request
//! from the client) and, per step, what the server must say back, printed as
//! lines: `push CDS a@1 b@1` (a response and its resources), `ack CDS`,
//! `nack CDS <message>`, `stale CDS`.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status;

use super::{SotwResponse, SotwStream};
use crate::protocol::{Event, Output, ProtocolError};
use crate::testutil::{alias, label, snapshot, strings, url};

#[derive(Clone, Copy, Debug)]
enum Step {
    /// A new snapshot: `(type, name, version)`.
    Snap(&'static [(&'static str, &'static str, &'static str)]),
    /// A request with no nonce (a first request, or a spontaneous one).
    Sub(&'static str, &'static [&'static str]),
    /// The ACK of the last response of the type, with these names.
    Ack(&'static str, &'static [&'static str]),
    /// The NACK of the last response of the type, with this message.
    Nack(&'static str, &'static [&'static str], &'static str),
    /// A request carrying the nonce of an older response than the last.
    Stale(&'static str, &'static [&'static str]),
}
use Step::*;

struct Client {
    stream: SotwStream,
    /// Per type: (nonce, version) of every response received, in order.
    seen: BTreeMap<String, Vec<(String, String)>>,
    acked: BTreeMap<String, String>,
}

impl Client {
    fn new(initial: Step) -> Client {
        let Snap(entries) = initial else {
            panic!("scenarios start with a snapshot")
        };
        Client {
            stream: SotwStream::new(Arc::new(snapshot(entries))),
            seen: BTreeMap::new(),
            acked: BTreeMap::new(),
        }
    }

    fn request(
        &self,
        t: &str,
        names: &[&str],
        nonce: String,
        error: Option<&str>,
    ) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: self.acked.get(url(t)).cloned().unwrap_or_default(),
            node: Some(Node {
                id: "n".into(),
                ..Default::default()
            }),
            resource_names: strings(names),
            type_url: url(t).into(),
            response_nonce: nonce,
            error_detail: error.map(|m| Status {
                code: 3,
                message: m.into(),
                details: vec![],
            }),
            ..Default::default()
        }
    }

    fn last(&self, t: &str) -> (String, String) {
        self.seen
            .get(url(t))
            .and_then(|v| v.last().cloned())
            .unwrap_or_else(|| panic!("no response of {t} to answer"))
    }

    fn step(&mut self, step: Step) -> Vec<String> {
        let out = match step {
            Snap(entries) => self.stream.on_snapshot(Arc::new(snapshot(entries))),
            Sub(t, names) => self.send(self.request(t, names, String::new(), None)),
            Ack(t, names) => {
                let (nonce, version) = self.last(t);
                self.acked.insert(url(t).into(), version);
                self.send(self.request(t, names, nonce, None))
            }
            Nack(t, names, msg) => {
                let (nonce, _) = self.last(t);
                self.send(self.request(t, names, nonce, Some(msg)))
            }
            Stale(t, names) => {
                let seen = &self.seen[url(t)];
                let nonce = seen[seen.len() - 2].0.clone();
                self.send(self.request(t, names, nonce, None))
            }
        };
        self.print(out)
    }

    fn send(&mut self, req: DiscoveryRequest) -> Output<SotwResponse> {
        self.stream.on_request(&req).expect("valid request")
    }

    fn print(&mut self, out: Output<SotwResponse>) -> Vec<String> {
        let mut lines = Vec::new();
        for e in &out.events {
            lines.push(match e {
                Event::Ack { type_url, .. } => format!("ack {}", alias(type_url)),
                Event::Nack(n) => format!("nack {} {}", alias(&n.type_url), n.message),
                Event::Stale { type_url, .. } => format!("stale {}", alias(type_url)),
            });
        }
        for r in out.responses {
            let mut line = format!("push {}", alias(&r.type_url));
            for resource in r.resources() {
                line.push(' ');
                line.push_str(&label(&resource.body));
            }
            self.seen
                .entry(r.type_url.clone())
                .or_default()
                .push((r.nonce.clone(), r.version_info.clone()));
            lines.push(line);
        }
        lines
    }
}

/// A step and the lines it must produce.
type Expect = (Step, &'static [&'static str]);
/// A named list of steps.
type Scenario = (&'static str, &'static [Expect]);

fn run(name: &str, steps: &[Expect]) -> Client {
    let mut client = Client::new(steps[0].0);
    for (i, (step, want)) in steps.iter().enumerate().skip(1) {
        let got = client.step(*step);
        assert_eq!(got, *want, "scenario {name:?}, step {i}: {step:?}");
    }
    client
}

const C1: &[(&str, &str, &str)] = &[("CDS", "a", "1"), ("CDS", "b", "1")];
const C2: &[(&str, &str, &str)] = &[("CDS", "a", "2"), ("CDS", "b", "1")];
const C3: &[(&str, &str, &str)] = &[("CDS", "a", "3"), ("CDS", "b", "1")];

#[test]
fn scenarios() {
    let scenarios: &[Scenario] = &[
        (
            "legacy wildcard: the first empty request gets every cluster; the ACK ends the push",
            &[
                (Snap(C1), &[]),
                (Sub("CDS", &[]), &["push CDS a@1 b@1"]),
                (Ack("CDS", &[]), &["ack CDS"]),
            ],
        ),
        (
            "a changed resource resends the whole type (SotW), an unchanged snapshot nothing",
            &[
                (Snap(C1), &[]),
                (Sub("CDS", &[]), &["push CDS a@1 b@1"]),
                (Ack("CDS", &[]), &["ack CDS"]),
                (Snap(C1), &[]),
                (Snap(C2), &["push CDS a@2 b@1"]),
                (Ack("CDS", &[]), &["ack CDS"]),
            ],
        ),
        (
            "one unacknowledged push per type: newer snapshots wait and coalesce",
            &[
                (Snap(C1), &[]),
                (Sub("CDS", &[]), &["push CDS a@1 b@1"]),
                (Snap(C2), &[]),
                (Snap(C3), &[]),
                (Ack("CDS", &[]), &["ack CDS", "push CDS a@3 b@1"]),
                (Ack("CDS", &[]), &["ack CDS"]),
            ],
        ),
        (
            "a NACK is recorded and the rejected content is not sent again",
            &[
                (Snap(C1), &[]),
                (Sub("CDS", &[]), &["push CDS a@1 b@1"]),
                (Ack("CDS", &[]), &["ack CDS"]),
                (Snap(C2), &["push CDS a@2 b@1"]),
                (
                    Nack("CDS", &[], "bad cluster a"),
                    &["nack CDS bad cluster a"],
                ),
                (Snap(C2), &[]),
                (Snap(C3), &["push CDS a@3 b@1"]),
                (Ack("CDS", &[]), &["ack CDS"]),
            ],
        ),
        (
            "after a NACK, going back to the good content is a push (the client runs it already)",
            &[
                (Snap(C1), &[]),
                (Sub("CDS", &[]), &["push CDS a@1 b@1"]),
                (Ack("CDS", &[]), &["ack CDS"]),
                (Snap(C2), &["push CDS a@2 b@1"]),
                (Nack("CDS", &[], "no"), &["nack CDS no"]),
                (Snap(C1), &["push CDS a@1 b@1"]),
                (Ack("CDS", &[]), &["ack CDS"]),
            ],
        ),
        (
            "a NACK while a newer snapshot waits sends the newer one",
            &[
                (Snap(C1), &[]),
                (Sub("CDS", &[]), &["push CDS a@1 b@1"]),
                (Snap(C2), &[]),
                (Nack("CDS", &[], "no"), &["nack CDS no", "push CDS a@2 b@1"]),
            ],
        ),
        (
            "a stale nonce is neither ACK nor NACK",
            &[
                (Snap(C1), &[]),
                (Sub("CDS", &[]), &["push CDS a@1 b@1"]),
                (Ack("CDS", &[]), &["ack CDS"]),
                (Snap(C2), &["push CDS a@2 b@1"]),
                (Stale("CDS", &[]), &["stale CDS"]),
                (Ack("CDS", &[]), &["ack CDS"]),
            ],
        ),
        (
            "the first request of a type is answered even when there is nothing",
            &[
                (Snap(&[]), &[]),
                (Sub("LDS", &[]), &["push LDS"]),
                (Ack("LDS", &[]), &["ack LDS"]),
                (Snap(&[("LDS", "l", "1")]), &["push LDS l@1"]),
            ],
        ),
        (
            "a deleted listener is a response without it",
            &[
                (Snap(&[("LDS", "l", "1"), ("LDS", "m", "1")]), &[]),
                (Sub("LDS", &[]), &["push LDS l@1 m@1"]),
                (Ack("LDS", &[]), &["ack LDS"]),
                (Snap(&[("LDS", "m", "1")]), &["push LDS m@1"]),
                (Ack("LDS", &[]), &["ack LDS"]),
                (Snap(&[]), &["push LDS"]),
            ],
        ),
        (
            "explicit names: only those are sent; a new name is a push, one that does not exist is not",
            &[
                (
                    Snap(&[("EDS", "x", "1"), ("EDS", "y", "1"), ("EDS", "z", "1")]),
                    &[],
                ),
                (Sub("EDS", &["x"]), &["push EDS x@1"]),
                (Ack("EDS", &["x", "y"]), &["ack EDS", "push EDS x@1 y@1"]),
                (Ack("EDS", &["x", "y", "ghost"]), &["ack EDS"]),
                (
                    Snap(&[("EDS", "x", "1"), ("EDS", "y", "1"), ("EDS", "z", "2")]),
                    &[],
                ),
                (
                    Snap(&[("EDS", "x", "1"), ("EDS", "y", "1"), ("EDS", "ghost", "1")]),
                    &["push EDS ghost@1 x@1 y@1"],
                ),
            ],
        ),
        (
            "once ACKed, EDS pushes carry only what changed; CDS pushes everything",
            &[
                (
                    Snap(&[
                        ("CDS", "a", "1"),
                        ("CDS", "b", "1"),
                        ("EDS", "x", "1"),
                        ("EDS", "y", "1"),
                    ]),
                    &[],
                ),
                (Sub("CDS", &[]), &["push CDS a@1 b@1"]),
                (Ack("CDS", &[]), &["ack CDS"]),
                (Sub("EDS", &["x", "y"]), &["push EDS x@1 y@1"]),
                (Ack("EDS", &["x", "y"]), &["ack EDS"]),
                (
                    Snap(&[
                        ("CDS", "a", "1"),
                        ("CDS", "b", "2"),
                        ("EDS", "x", "1"),
                        ("EDS", "y", "2"),
                    ]),
                    &["push CDS a@1 b@2", "push EDS y@2"],
                ),
                (Ack("EDS", &["x", "y"]), &["ack EDS"]),
                // Other names: the whole subscribed view again.
                (Ack("EDS", &["x"]), &["push EDS x@1"]),
                (Ack("EDS", &["x"]), &["ack EDS"]),
                // A change to a name no longer subscribed stays out of the
                // partial push.
                (
                    Snap(&[
                        ("CDS", "a", "1"),
                        ("CDS", "b", "2"),
                        ("EDS", "x", "2"),
                        ("EDS", "y", "3"),
                    ]),
                    &["push EDS x@2"],
                ),
            ],
        ),
        (
            "after a NACK, the next push is relative to what the client still holds",
            &[
                (Snap(&[("EDS", "x", "1"), ("EDS", "y", "1")]), &[]),
                (Sub("EDS", &["x", "y"]), &["push EDS x@1 y@1"]),
                (Ack("EDS", &["x", "y"]), &["ack EDS"]),
                (
                    Snap(&[("EDS", "x", "2"), ("EDS", "y", "1")]),
                    &["push EDS x@2"],
                ),
                (Nack("EDS", &["x", "y"], "bad x"), &["nack EDS bad x"]),
                (
                    Snap(&[("EDS", "x", "2"), ("EDS", "y", "2")]),
                    &["push EDS x@2 y@2"],
                ),
                (Ack("EDS", &["x", "y"]), &["ack EDS"]),
                (
                    Snap(&[("EDS", "x", "3"), ("EDS", "y", "2")]),
                    &["push EDS x@3"],
                ),
            ],
        ),
        (
            "a resource unsubscribed and subscribed again is sent again",
            &[
                (Snap(&[("EDS", "x", "1"), ("EDS", "y", "1")]), &[]),
                (Sub("EDS", &["x", "y"]), &["push EDS x@1 y@1"]),
                (Ack("EDS", &["x"]), &["ack EDS", "push EDS x@1"]),
                (Ack("EDS", &["x", "y"]), &["ack EDS", "push EDS x@1 y@1"]),
            ],
        ),
        (
            "a name change with the last (answered) nonce is a hint update, not stale",
            &[
                (Snap(&[("RDS", "r1", "1"), ("RDS", "r2", "1")]), &[]),
                (Sub("RDS", &["r1"]), &["push RDS r1@1"]),
                (Ack("RDS", &["r1"]), &["ack RDS"]),
                (Ack("RDS", &["r1", "r2"]), &["push RDS r1@1 r2@1"]),
            ],
        ),
        (
            "names sent with a stale nonce count once the pending push is answered",
            &[
                (Snap(&[("EDS", "x", "1"), ("EDS", "y", "1")]), &[]),
                (Sub("EDS", &["x"]), &["push EDS x@1"]),
                (Ack("EDS", &["x"]), &["ack EDS"]),
                (
                    Snap(&[("EDS", "x", "2"), ("EDS", "y", "1")]),
                    &["push EDS x@2"],
                ),
                (Stale("EDS", &["x", "y"]), &["stale EDS"]),
                (Ack("EDS", &["x", "y"]), &["ack EDS", "push EDS x@2 y@1"]),
            ],
        ),
        (
            "legacy wildcard, then explicit names: only the names (the doc's SotW example)",
            &[
                (Snap(C1), &[]),
                (Sub("CDS", &[]), &["push CDS a@1 b@1"]),
                (Ack("CDS", &["*", "a"]), &["ack CDS"]),
                (Ack("CDS", &["a"]), &["push CDS a@1"]),
                (Ack("CDS", &[]), &["ack CDS", "push CDS"]),
            ],
        ),
        (
            "one generation touching several types goes out CDS, EDS, LDS, RDS",
            &[
                (Snap(&[]), &[]),
                (Sub("RDS", &["r"]), &["push RDS"]),
                (Ack("RDS", &["r"]), &["ack RDS"]),
                (Sub("LDS", &[]), &["push LDS"]),
                (Ack("LDS", &[]), &["ack LDS"]),
                (Sub("CDS", &[]), &["push CDS"]),
                (Ack("CDS", &[]), &["ack CDS"]),
                (Sub("EDS", &["c"]), &["push EDS"]),
                (Ack("EDS", &["c"]), &["ack EDS"]),
                (
                    Snap(&[
                        ("RDS", "r", "1"),
                        ("LDS", "l", "1"),
                        ("EDS", "c", "1"),
                        ("CDS", "c", "1"),
                    ]),
                    &[
                        "push CDS c@1",
                        "push EDS c@1",
                        "push LDS l@1",
                        "push RDS r@1",
                    ],
                ),
            ],
        ),
        (
            "types are independent: a pending CDS push does not hold back LDS",
            &[
                (Snap(C1), &[]),
                (Sub("CDS", &[]), &["push CDS a@1 b@1"]),
                (Sub("LDS", &[]), &["push LDS"]),
                (Ack("LDS", &[]), &["ack LDS"]),
                (
                    Snap(&[("CDS", "a", "2"), ("LDS", "l", "1")]),
                    &["push LDS l@1"],
                ),
                (Ack("CDS", &[]), &["ack CDS", "push CDS a@2"]),
            ],
        ),
    ];
    for (name, steps) in scenarios {
        run(name, steps);
    }
}

#[test]
fn status_shows_versions_pending_and_the_last_nack() {
    let mut c = run(
        "status",
        &[
            (Snap(C1), &[]),
            (Sub("CDS", &[]), &["push CDS a@1 b@1"]),
            (Ack("CDS", &[]), &["ack CDS"]),
            (Snap(C2), &["push CDS a@2 b@1"]),
        ],
    );
    let acked = c.acked[url("CDS")].clone();
    let st = c.stream.status()[url("CDS")].clone();
    assert!(st.wildcard);
    assert!(st.pending);
    assert_eq!(st.acked_version.as_deref(), Some(acked.as_str()));
    assert_ne!(st.sent_version, st.acked_version);
    assert_eq!((st.pushes, st.acks, st.nacks), (2, 1, 0));

    c.step(Nack("CDS", &[], "bad"));
    let st = c.stream.status()[url("CDS")].clone();
    assert!(!st.pending);
    assert_eq!(st.acked_version.as_deref(), Some(acked.as_str()));
    let nack = st.last_nack.expect("nack recorded");
    assert_eq!(nack.message, "bad");
    assert_eq!(Some(nack.rejected_version), st.sent_version);
    assert_eq!(nack.client_version, acked);
}

#[test]
fn versions_are_content_hashes() {
    // Two streams given equal content report equal versions, so a client
    // reconnecting to another server (or after a restart) is not re-sent
    // anything just because the version scheme differs.
    let mut a = SotwStream::new(Arc::new(snapshot(C1)));
    let mut b = SotwStream::new(Arc::new(snapshot(C1)));
    let req = DiscoveryRequest {
        type_url: url("CDS").into(),
        ..Default::default()
    };
    let ra = a.on_request(&req).unwrap().responses.remove(0);
    let rb = b.on_request(&req).unwrap().responses.remove(0);
    assert_eq!(ra.version_info, rb.version_info);
    assert_ne!(ra.nonce, "");
}

#[test]
fn a_subscription_naming_every_resource_has_the_maps_own_version() {
    // The version of a whole map is computed once for every stream that
    // shares it; naming every resource (a sidecar's EDS) must give the same
    // version as naming them one by one would, and a subset another one.
    let version = |snap: &Arc<crate::resource::Snapshot>, names: &[&str]| {
        let mut s = SotwStream::new(snap.clone());
        let req = DiscoveryRequest {
            type_url: url("EDS").into(),
            resource_names: strings(names),
            ..Default::default()
        };
        s.on_request(&req).unwrap().responses.remove(0).version_info
    };
    let one = Arc::new(snapshot(&[("EDS", "x", "1"), ("EDS", "y", "1")]));
    let all = version(&one, &["x", "y"]);
    assert_eq!(version(&one, &["x", "y", "ghost"]), all);
    assert_eq!(version(&one, &["y", "x"]), all);
    let fresh = Arc::new(snapshot(&[("EDS", "x", "1"), ("EDS", "y", "1")]));
    assert_eq!(
        version(&fresh, &["x", "y"]),
        all,
        "not a per-snapshot value"
    );
    assert_ne!(version(&one, &["x"]), all);
    let changed = Arc::new(snapshot(&[("EDS", "x", "1"), ("EDS", "y", "2")]));
    assert_ne!(version(&changed, &["x", "y"]), all);

    // One stream across generations with the same names, then new names.
    let mut s = SotwStream::new(one.clone());
    let mut req = DiscoveryRequest {
        type_url: url("EDS").into(),
        resource_names: strings(&["x", "y"]),
        ..Default::default()
    };
    let first = s.on_request(&req).unwrap().responses.remove(0);
    assert_eq!(first.version_info, all);
    req.response_nonce = first.nonce;
    req.version_info = first.version_info;
    s.on_request(&req).unwrap();
    let pushed = s.on_snapshot(changed.clone()).responses.remove(0);
    assert_eq!(pushed.version_info, version(&changed, &["x", "y"]));
    let three = Arc::new(snapshot(&[
        ("EDS", "x", "1"),
        ("EDS", "y", "2"),
        ("EDS", "z", "1"),
    ]));
    req.response_nonce = pushed.nonce;
    req.version_info = pushed.version_info;
    s.on_request(&req).unwrap();
    // z is not subscribed: the view is x and y, not the whole map.
    let out = s.on_snapshot(three);
    assert!(out.responses.is_empty(), "x and y did not change: {out:?}");
}

#[test]
fn a_request_without_type_url_is_a_protocol_error() {
    let mut s = SotwStream::new(Arc::new(snapshot(C1)));
    let err = s.on_request(&DiscoveryRequest::default()).unwrap_err();
    assert_eq!(err, ProtocolError::MissingTypeUrl);
}

#[test]
fn a_reconnecting_wildcard_client_already_up_to_date_gets_nothing() {
    let first = |snap: &[(&str, &str, &str)], t: &str, names: &[&str], version: &str| {
        let mut s = SotwStream::new(Arc::new(snapshot(snap)));
        let out = s
            .on_request(&DiscoveryRequest {
                type_url: url(t).into(),
                resource_names: strings(names),
                version_info: version.into(),
                ..Default::default()
            })
            .unwrap();
        (s, out.responses)
    };
    // What a client that got C1 runs.
    let (_, r) = first(C1, "CDS", &[], "");
    let v1 = r[0].version_info.clone();

    // Same content: nothing to send; the client is taken as running it.
    let (mut s, r) = first(C1, "CDS", &[], &v1);
    assert!(r.is_empty());
    let st = s.status()[url("CDS")].clone();
    assert_eq!(st.acked_version.as_deref(), Some(v1.as_str()));
    assert!(!st.pending);
    // And a later change is pushed as usual.
    let out = s.on_snapshot(Arc::new(snapshot(C2)));
    assert_eq!(out.responses.len(), 1);

    // Other content, or an explicit `*`: answered in full.
    let (_, r) = first(C2, "CDS", &[], &v1);
    assert_eq!(r.len(), 1);
    let (_, r) = first(C1, "CDS", &["*"], &v1);
    assert!(
        r.is_empty(),
        "an explicit lone `*` is a wildcard-only subscription too"
    );
    // Named subscriptions are always answered: the names may be new.
    let eds = &[("EDS", "x", "1")];
    let (_, r) = first(eds, "EDS", &["x"], "");
    let vx = r[0].version_info.clone();
    let (_, r) = first(eds, "EDS", &["x"], &vx);
    assert_eq!(r.len(), 1);
}

/// `name@version` of what `sent()` says the client was last sent.
fn sent_of(stream: &SotwStream, t: &str) -> Vec<String> {
    stream
        .sent()
        .get(url(t))
        .map(|m| {
            m.iter()
                .map(|(n, r)| format!("{n}@{}", r.version))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sent_is_the_last_response_not_the_newest_snapshot() {
    let mut c = run(
        "sent",
        &[
            (Snap(C1), &[]),
            (Sub("CDS", &[]), &["push CDS a@1 b@1"]),
            // Pending: the newer snapshot waits for the ACK.
            (Snap(C2), &[]),
        ],
    );
    assert_eq!(sent_of(&c.stream, "CDS"), ["a@1", "b@1"]);
    c.step(Ack("CDS", &[]));
    assert_eq!(sent_of(&c.stream, "CDS"), ["a@2", "b@1"]);
    // A type never sent is absent.
    assert!(!c.stream.sent().contains_key(url("EDS")));
}

#[test]
fn sent_keeps_to_the_subscription() {
    let c = run(
        "sent by name",
        &[(Snap(C1), &[]), (Sub("CDS", &["b"]), &["push CDS b@1"])],
    );
    assert_eq!(sent_of(&c.stream, "CDS"), ["b@1"]);
}
