//! Table tests: each scenario is a list of steps (a snapshot, or a request
//! from the client) and, per step, what the server must say back, printed as
//! lines: `push CDS a@1 -b` (a response: resources sent, `-name` removed),
//! `ack CDS`, `nack CDS <message>`, `stale CDS`.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::rpc::Status;

use super::{DeltaResponse, DeltaStream};
use crate::protocol::{Event, Output, ProtocolError};
use crate::testutil::{alias, label, snapshot, strings, url};

type Entries = &'static [(&'static str, &'static str, &'static str)];
type Names = &'static [&'static str];

#[derive(Clone, Copy, Debug)]
enum Step {
    /// A new snapshot: `(type, name, version)`.
    Snap(Entries),
    /// A request without nonce: (type, subscribe, unsubscribe).
    Sub(&'static str, Names, Names),
    /// A first request on a reconnected stream: (type, subscribe,
    /// initial_resource_versions as (name, version)).
    Init(&'static str, Names, &'static [(&'static str, &'static str)]),
    /// The ACK of the last response of the type, with (subscribe,
    /// unsubscribe).
    Ack(&'static str, Names, Names),
    /// The NACK of the last response of the type.
    Nack(&'static str, &'static str),
    /// A request with the nonce of an older response: (type, subscribe,
    /// unsubscribe).
    Stale(&'static str, Names, Names),
}
use Step::*;

struct Client {
    stream: DeltaStream,
    nonces: BTreeMap<String, Vec<String>>,
}

fn request(t: &str, sub: Names, unsub: Names, nonce: String) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: url(t).into(),
        resource_names_subscribe: strings(sub),
        resource_names_unsubscribe: strings(unsub),
        response_nonce: nonce,
        ..Default::default()
    }
}

impl Client {
    fn new(initial: Step) -> Client {
        let Snap(entries) = initial else {
            panic!("scenarios start with a snapshot")
        };
        Client {
            stream: DeltaStream::new(Arc::new(snapshot(entries))),
            nonces: BTreeMap::new(),
        }
    }

    fn last(&self, t: &str) -> String {
        self.nonces
            .get(url(t))
            .and_then(|v| v.last().cloned())
            .unwrap_or_else(|| panic!("no response of {t} to answer"))
    }

    fn step(&mut self, step: Step) -> Vec<String> {
        let out = match step {
            Snap(entries) => self.stream.on_snapshot(Arc::new(snapshot(entries))),
            Sub(t, sub, unsub) => self.send(request(t, sub, unsub, String::new())),
            Init(t, sub, initial) => {
                let mut req = request(t, sub, &[], String::new());
                req.initial_resource_versions = initial
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect();
                self.send(req)
            }
            Ack(t, sub, unsub) => {
                let nonce = self.last(t);
                self.send(request(t, sub, unsub, nonce))
            }
            Nack(t, msg) => {
                let mut req = request(t, &[], &[], self.last(t));
                req.error_detail = Some(Status {
                    code: 3,
                    message: msg.into(),
                    details: vec![],
                });
                self.send(req)
            }
            Stale(t, sub, unsub) => {
                let seen = &self.nonces[url(t)];
                let nonce = seen[seen.len() - 2].clone();
                self.send(request(t, sub, unsub, nonce))
            }
        };
        self.print(out)
    }

    fn send(&mut self, req: DeltaDiscoveryRequest) -> Output<DeltaResponse> {
        self.stream.on_request(&req).expect("valid request")
    }

    fn print(&mut self, out: Output<DeltaResponse>) -> Vec<String> {
        let mut lines = Vec::new();
        for e in &out.events {
            lines.push(match e {
                Event::Ack { type_url, .. } => format!("ack {}", alias(type_url)),
                Event::Nack(n) => format!("nack {} {}", alias(&n.type_url), n.message),
                Event::Stale { type_url, .. } => format!("stale {}", alias(type_url)),
            });
        }
        for r in out.responses {
            let r = r.to_message();
            let mut line = format!("push {}", alias(&r.type_url));
            for res in &r.resources {
                let body = res.resource.as_ref().expect("resource body");
                assert_eq!(label(body), format!("{}@{}", res.name, res.version));
                line.push(' ');
                line.push_str(&label(body));
            }
            for name in &r.removed_resources {
                line.push_str(" -");
                line.push_str(name);
            }
            self.nonces
                .entry(r.type_url.clone())
                .or_default()
                .push(r.nonce.clone());
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

const C1: Entries = &[("CDS", "a", "1"), ("CDS", "b", "1")];
const C2: Entries = &[("CDS", "a", "2"), ("CDS", "b", "1")];
const C3: Entries = &[("CDS", "a", "3"), ("CDS", "b", "1")];
const NONE: Names = &[];

#[test]
fn scenarios() {
    let scenarios: &[Scenario] = &[
        (
            "legacy wildcard: everything first, then only what changed",
            &[
                (Snap(C1), &[]),
                (Sub("CDS", NONE, NONE), &["push CDS a@1 b@1"]),
                (Ack("CDS", NONE, NONE), &["ack CDS"]),
                (Snap(C1), &[]),
                (Snap(C2), &["push CDS a@2"]),
                (Ack("CDS", NONE, NONE), &["ack CDS"]),
            ],
        ),
        (
            "explicit `*` is the wildcard too",
            &[
                (Snap(C1), &[]),
                (Sub("CDS", &["*"], NONE), &["push CDS a@1 b@1"]),
            ],
        ),
        (
            "deleted resources are removed_resources; added ones are sent alone",
            &[
                (Snap(C1), &[]),
                (Sub("CDS", NONE, NONE), &["push CDS a@1 b@1"]),
                (Ack("CDS", NONE, NONE), &["ack CDS"]),
                (
                    Snap(&[("CDS", "b", "1"), ("CDS", "c", "1")]),
                    &["push CDS c@1 -a"],
                ),
                (Ack("CDS", NONE, NONE), &["ack CDS"]),
            ],
        ),
        (
            "one unacknowledged push per type: later snapshots coalesce",
            &[
                (Snap(C1), &[]),
                (Sub("CDS", NONE, NONE), &["push CDS a@1 b@1"]),
                (Snap(C2), &[]),
                (Snap(&[("CDS", "a", "3")]), &[]),
                (Ack("CDS", NONE, NONE), &["ack CDS", "push CDS a@3 -b"]),
            ],
        ),
        (
            "a NACKed version is not sent again; the next version is",
            &[
                (Snap(C1), &[]),
                (Sub("CDS", NONE, NONE), &["push CDS a@1 b@1"]),
                (Ack("CDS", NONE, NONE), &["ack CDS"]),
                (Snap(C2), &["push CDS a@2"]),
                (Nack("CDS", "bad a"), &["nack CDS bad a"]),
                (Snap(C2), &[]),
                (Snap(C3), &["push CDS a@3"]),
                (Ack("CDS", NONE, NONE), &["ack CDS"]),
            ],
        ),
        (
            "explicit names: only those; a missing one is reported removed, once",
            &[
                (Snap(&[("EDS", "x", "1"), ("EDS", "y", "1")]), &[]),
                (Sub("EDS", &["x", "ghost"], NONE), &["push EDS x@1 -ghost"]),
                (Ack("EDS", NONE, NONE), &["ack EDS"]),
                (
                    Snap(&[("EDS", "x", "2"), ("EDS", "y", "2")]),
                    &["push EDS x@2"],
                ),
                (Ack("EDS", NONE, NONE), &["ack EDS"]),
                (
                    Snap(&[("EDS", "x", "2"), ("EDS", "ghost", "1")]),
                    &["push EDS ghost@1"],
                ),
                (Ack("EDS", NONE, NONE), &["ack EDS"]),
                (Snap(&[("EDS", "x", "2")]), &["push EDS -ghost"]),
            ],
        ),
        (
            "subscribing again to a held resource resends it",
            &[
                (Snap(&[("RDS", "r", "1")]), &[]),
                (Sub("RDS", &["r"], NONE), &["push RDS r@1"]),
                (Ack("RDS", NONE, NONE), &["ack RDS"]),
                (Sub("RDS", &["r"], NONE), &["push RDS r@1"]),
            ],
        ),
        (
            "unsubscribing needs no answer, and the name is forgotten",
            &[
                (Snap(&[("EDS", "x", "1"), ("EDS", "y", "1")]), &[]),
                (Sub("EDS", &["x", "y"], NONE), &["push EDS x@1 y@1"]),
                (Ack("EDS", NONE, &["y"]), &["ack EDS"]),
                (Snap(&[("EDS", "x", "1"), ("EDS", "y", "2")]), &[]),
                (Snap(&[("EDS", "x", "1")]), &[]),
            ],
        ),
        (
            "a stream that wanted every name stops wanting one: its changes stay out",
            &[
                (Snap(&[("EDS", "x", "1"), ("EDS", "y", "1")]), &[]),
                (Sub("EDS", &["x", "y"], NONE), &["push EDS x@1 y@1"]),
                (Ack("EDS", NONE, NONE), &["ack EDS"]),
                (
                    Snap(&[("EDS", "x", "2"), ("EDS", "y", "1")]),
                    &["push EDS x@2"],
                ),
                (Ack("EDS", NONE, &["y"]), &["ack EDS"]),
                (Snap(&[("EDS", "x", "2"), ("EDS", "y", "2")]), &[]),
                (
                    Snap(&[("EDS", "x", "3"), ("EDS", "y", "3")]),
                    &["push EDS x@3"],
                ),
            ],
        ),
        (
            "reconnect: initial_resource_versions are not re-sent, stale ones are",
            &[
                (
                    Snap(&[("EDS", "x", "1"), ("EDS", "y", "2"), ("EDS", "z", "1")]),
                    &[],
                ),
                (
                    Init(
                        "EDS",
                        &["x", "y", "gone"],
                        &[("x", "1"), ("y", "1"), ("gone", "1")],
                    ),
                    &["push EDS y@2 -gone"],
                ),
            ],
        ),
        (
            "reconnect with nothing changed is still answered (the client waits for it)",
            &[
                (Snap(C1), &[]),
                (Init("CDS", NONE, &[("a", "1"), ("b", "1")]), &["push CDS"]),
                (Ack("CDS", NONE, NONE), &["ack CDS"]),
                (Snap(C2), &["push CDS a@2"]),
            ],
        ),
        (
            "wildcard plus a name: unsubscribing the name re-states it (the doc's exception)",
            &[
                (Snap(C1), &[]),
                (Sub("CDS", NONE, NONE), &["push CDS a@1 b@1"]),
                // `a` is resent although held: the client may have dropped it.
                (
                    Ack("CDS", &["a", "zz"], NONE),
                    &["ack CDS", "push CDS a@1 -zz"],
                ),
                (
                    Ack("CDS", NONE, &["a", "zz"]),
                    &["ack CDS", "push CDS a@1 -zz"],
                ),
                (Ack("CDS", NONE, NONE), &["ack CDS"]),
            ],
        ),
        (
            "legacy wildcard survives an explicit subscription; unsubscribing `*` ends it",
            &[
                (Snap(C1), &[]),
                (Sub("CDS", NONE, NONE), &["push CDS a@1 b@1"]),
                (Ack("CDS", &["a"], NONE), &["ack CDS", "push CDS a@1"]),
                (Ack("CDS", NONE, &["*"]), &["ack CDS"]),
                (
                    Snap(&[("CDS", "a", "1"), ("CDS", "b", "2"), ("CDS", "c", "1")]),
                    &[],
                ),
                (Snap(&[("CDS", "a", "2")]), &["push CDS a@2"]),
            ],
        ),
        (
            "no legacy wildcard for EDS: an empty first request gets an empty answer",
            &[
                (Snap(&[("EDS", "x", "1")]), &[]),
                (Sub("EDS", NONE, NONE), &["push EDS"]),
                (Ack("EDS", NONE, NONE), &["ack EDS"]),
                (Snap(&[("EDS", "x", "2")]), &[]),
            ],
        ),
        (
            "subscriptions with a stale nonce count (after the pending ACK)",
            &[
                (Snap(&[("EDS", "x", "1"), ("EDS", "y", "1")]), &[]),
                (Sub("EDS", &["x"], NONE), &["push EDS x@1"]),
                (Ack("EDS", NONE, NONE), &["ack EDS"]),
                (
                    Snap(&[("EDS", "x", "2"), ("EDS", "y", "1")]),
                    &["push EDS x@2"],
                ),
                (Stale("EDS", &["y"], NONE), &["stale EDS"]),
                (Ack("EDS", NONE, NONE), &["ack EDS", "push EDS y@1"]),
            ],
        ),
        (
            "a spontaneous subscription while nothing is pending is answered at once",
            &[
                (Snap(&[("EDS", "x", "1"), ("EDS", "y", "1")]), &[]),
                (Sub("EDS", &["x"], NONE), &["push EDS x@1"]),
                (Ack("EDS", NONE, NONE), &["ack EDS"]),
                (Sub("EDS", &["y"], NONE), &["push EDS y@1"]),
            ],
        ),
        (
            "one generation touching several types goes out CDS, EDS, LDS, RDS",
            &[
                (Snap(&[]), &[]),
                (Sub("RDS", &["r"], NONE), &["push RDS -r"]),
                (Ack("RDS", NONE, NONE), &["ack RDS"]),
                (Sub("LDS", NONE, NONE), &["push LDS"]),
                (Ack("LDS", NONE, NONE), &["ack LDS"]),
                (Sub("EDS", &["c"], NONE), &["push EDS -c"]),
                (Ack("EDS", NONE, NONE), &["ack EDS"]),
                (Sub("CDS", NONE, NONE), &["push CDS"]),
                (Ack("CDS", NONE, NONE), &["ack CDS"]),
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
            "VHDS: Envoy's empty first request is every virtual host; one change sends one",
            &[
                (
                    Snap(&[("VHDS", "outbound/a", "1"), ("VHDS", "outbound/b", "1")]),
                    &[],
                ),
                (
                    Sub("VHDS", NONE, NONE),
                    &["push VHDS outbound/a@1 outbound/b@1"],
                ),
                (Ack("VHDS", NONE, NONE), &["ack VHDS"]),
                (
                    Snap(&[("VHDS", "outbound/a", "2"), ("VHDS", "outbound/b", "1")]),
                    &["push VHDS outbound/a@2"],
                ),
                (Ack("VHDS", NONE, NONE), &["ack VHDS"]),
                (
                    Snap(&[("VHDS", "outbound/a", "2"), ("VHDS", "outbound/c", "1")]),
                    &["push VHDS outbound/c@1 -outbound/b"],
                ),
                // On demand, `<route configuration>/<host>` of a host that
                // does not exist is reported absent.
                (
                    Ack("VHDS", &["outbound/nope"], NONE),
                    &["ack VHDS", "push VHDS -outbound/nope"],
                ),
            ],
        ),
    ];
    for (name, steps) in scenarios {
        run(name, steps);
    }
}

#[test]
fn acks_and_nacks_update_status_and_known_versions() {
    let mut c = run(
        "status",
        &[
            (Snap(C1), &[]),
            (Sub("CDS", NONE, NONE), &["push CDS a@1 b@1"]),
            (Ack("CDS", NONE, NONE), &["ack CDS"]),
            (Snap(C2), &["push CDS a@2"]),
        ],
    );
    let st = c.stream.status()[url("CDS")].clone();
    assert!(st.pending && st.wildcard);
    let acked = st.acked_version.clone().expect("acked");
    c.step(Nack("CDS", "bad"));
    let st = c.stream.status()[url("CDS")].clone();
    assert!(!st.pending);
    assert_eq!(st.acked_version, Some(acked));
    assert_eq!(st.last_nack.map(|n| n.message), Some("bad".to_string()));
    assert_eq!((st.pushes, st.acks, st.nacks), (2, 1, 1));
    // The rejected version counts as held, so it is not resent.
    assert_eq!(
        c.stream.known(url("CDS")).get("a").map(String::as_str),
        Some("2")
    );
}

#[test]
fn a_request_without_type_url_is_a_protocol_error() {
    let mut s = DeltaStream::new(Arc::new(snapshot(C1)));
    let err = s.on_request(&DeltaDiscoveryRequest::default()).unwrap_err();
    assert_eq!(err, ProtocolError::MissingTypeUrl);
}

#[test]
fn sent_is_what_the_client_holds_as_sent() {
    let mut c = run(
        "sent",
        &[
            (Snap(C1), &[]),
            (Sub("CDS", NONE, NONE), &["push CDS a@1 b@1"]),
            (Ack("CDS", NONE, NONE), &["ack CDS"]),
            (Snap(C2), &["push CDS a@2"]),
        ],
    );
    let sent = |c: &Client| -> Vec<String> {
        c.stream.sent()[url("CDS")]
            .iter()
            .map(|(n, r)| format!("{n}@{}", r.version))
            .collect()
    };
    // The delta carried only `a`; the client holds `b` from before.
    assert_eq!(sent(&c), ["a@2", "b@1"]);
    c.step(Nack("CDS", "bad"));
    assert_eq!(sent(&c), ["a@2", "b@1"]);
    assert!(!c.stream.sent().contains_key(url("EDS")));
}

/// Streams sharing one sequence of snapshots, each with its own
/// subscription and ACK timing, against a model of what the client holds:
/// whenever a stream has no response pending, its client holds exactly what
/// its subscription selects from the newest snapshot. Exercises the push
/// computed from the difference of two maps (`in_sync`), shared by streams
/// that held the same map, against the full walk it replaces.
#[test]
fn clients_converge_on_every_snapshot_through_shared_differences() {
    use crate::resource::{Resource, Resources, Snapshot, type_url};
    use envoy_types::pb::google::protobuf::Any;
    use std::collections::BTreeSet;

    // A fixed xorshift: the same sequence on every run.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut roll = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let names: Vec<String> = (0..24).map(|i| format!("r{i:02}")).collect();
    let resource = |name: &str, v: u64| {
        Resource::with_version(
            Any {
                type_url: type_url::ENDPOINT.into(),
                value: format!("{name}@{v}").into_bytes(),
            },
            v.to_string(),
        )
    };
    struct Model {
        stream: DeltaStream,
        sub: BTreeSet<String>,
        wildcard: bool,
        held: BTreeMap<String, String>,
        nonce: Option<String>,
    }
    let apply = |m: &mut Model, out: Output<DeltaResponse>| {
        for r in out.responses {
            let r = r.to_message();
            assert!(m.nonce.is_none(), "two responses pending");
            for res in &r.resources {
                m.held.insert(res.name.clone(), res.version.clone());
            }
            for name in &r.removed_resources {
                m.held.remove(name);
            }
            m.nonce = Some(r.nonce.clone());
        }
    };
    let mut map: Resources = names.iter().map(|n| (n.clone(), resource(n, 0))).collect();
    let mut shared = Arc::new(map.clone());
    let snap = |m: &Arc<Resources>| {
        let mut s = Snapshot::new();
        s.set_type(type_url::ENDPOINT, m.clone());
        Arc::new(s)
    };
    let mut current = snap(&shared);
    let mut models: Vec<Model> = (0..4)
        .map(|i| Model {
            stream: DeltaStream::new(current.clone()),
            sub: names.iter().skip(i).step_by(i + 1).cloned().collect(),
            wildcard: i == 3,
            held: BTreeMap::new(),
            nonce: None,
        })
        .collect();
    for m in &mut models {
        let mut subscribe: Vec<String> = m.sub.iter().cloned().collect();
        if m.wildcard {
            subscribe.push("*".into());
        }
        let req = DeltaDiscoveryRequest {
            type_url: type_url::ENDPOINT.into(),
            resource_names_subscribe: subscribe,
            ..Default::default()
        };
        let out = m.stream.on_request(&req).expect("valid");
        apply(m, out);
    }
    let mut version = 1;
    for step in 0..600 {
        if roll(3) == 0 {
            // A new generation: some resources change, appear or go.
            for _ in 0..=roll(3) {
                let name = &names[roll(names.len() as u64) as usize];
                match roll(4) {
                    0 => {
                        map.remove(name);
                    }
                    _ => {
                        map.insert(name.clone(), resource(name, version));
                    }
                }
                version += 1;
            }
            // Sometimes the generation leaves the map as it was: same Arc.
            if roll(4) != 0 {
                shared = Arc::new(map.clone());
            }
            current = snap(&shared);
            for m in &mut models {
                let out = m.stream.on_snapshot(current.clone());
                apply(m, out);
            }
        }
        for m in &mut models {
            let mut req = DeltaDiscoveryRequest {
                type_url: type_url::ENDPOINT.into(),
                ..Default::default()
            };
            if m.nonce.is_some() && roll(3) != 0 {
                req.response_nonce = m.nonce.take().expect("pending");
            }
            if roll(10) == 0 {
                let name = names[roll(names.len() as u64) as usize].clone();
                if m.sub.remove(&name) {
                    // The client drops what it unsubscribed from, unless
                    // the wildcard keeps it (then the server says which).
                    if !m.wildcard {
                        m.held.remove(&name);
                    }
                    req.resource_names_unsubscribe.push(name);
                } else {
                    m.sub.insert(name.clone());
                    req.resource_names_subscribe.push(name);
                }
            }
            if req.response_nonce.is_empty()
                && req.resource_names_subscribe.is_empty()
                && req.resource_names_unsubscribe.is_empty()
            {
                continue;
            }
            let out = m.stream.on_request(&req).expect("valid");
            apply(m, out);
        }
        for (i, m) in models.iter().enumerate() {
            if m.nonce.is_some() {
                continue;
            }
            let want: BTreeMap<String, String> = shared
                .iter()
                .filter(|(n, _)| m.wildcard || m.sub.contains(*n))
                .map(|(n, r)| (n.clone(), r.version.clone()))
                .collect();
            assert_eq!(m.held, want, "stream {i} after step {step}");
        }
    }
}
