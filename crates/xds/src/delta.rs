//! The incremental ("delta") ADS protocol for one stream, as a state
//! machine: requests and snapshots in, responses and events out. No I/O.
//!
//! Per type URL it keeps the subscription (explicit names and/or `*`), the
//! version of every resource the client holds as far as the server knows
//! (from `initial_resource_versions` on a reconnect, then from what was
//! sent), and whether a response awaits its ACK/NACK. The rules (Envoy's xDS
//! protocol doc, "Incremental xDS"):
//!
//! - A response carries only resources that are new or changed for the
//!   client, plus `removed_resources`: resources the client holds that are
//!   gone (or no longer wanted), and explicitly subscribed names that do not
//!   exist (so the client need not wait for a timeout to learn that).
//! - `resource_names_subscribe` of a name the client already has must still
//!   be answered with the resource (the client may have dropped it), except
//!   in the first request of a type on a stream, where
//!   `initial_resource_versions` says what the client really has.
//! - Legacy wildcard: a first request with neither subscriptions nor
//!   unsubscriptions means `*` for Listener and Cluster. Unlike SotW,
//!   subscribing to a name later keeps `*`; only unsubscribing from `*`
//!   ends it.
//! - Unsubscribing needs no answer, except a name that the wildcard may
//!   also cover: then the client must be told whether to keep it (the
//!   resource again, or its name in `removed_resources`).
//! - Subscription changes count even with a stale nonce; only the ACK/NACK
//!   meaning needs the current nonce.
//! - At most one unanswered response per type; later changes coalesce into
//!   the response sent after the ACK/NACK. A NACKed resource is not sent
//!   again until its version changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use crate::protocol::{
    Acks, Event, Nonces, Output, ProtocolError, Subscription, TypeStatus, WILDCARD,
};
use crate::resource::{Fnv64, Resources, Snapshot, TypeUrl, type_url};

pub mod response;
pub use response::DeltaResponse;

/// One delta ADS stream.
#[derive(Debug)]
pub struct DeltaStream {
    snapshot: Arc<Snapshot>,
    types: BTreeMap<TypeUrl, TypeState>,
    nonces: Nonces,
}

#[derive(Debug, Default)]
struct TypeState {
    sub: Subscription,
    /// Resource versions the client holds (as sent, or as it told us),
    /// while not `in_sync`; empty while it is (then they are those of
    /// `sent_from` that the subscription selects: [`TypeState::known`]).
    /// 10,000 streams each holding a copy of ~500 names and versions took
    /// more memory than the rest of the control plane.
    known: BTreeMap<String, String>,
    /// Explicit names already reported as not existing, so they are not
    /// reported in every response.
    told_absent: BTreeSet<String>,
    /// Whether the subscription covers every name of maps with this hash of
    /// names ([`Subscription::covers`]). Cleared when the subscription
    /// changes.
    covers: Option<(u64, bool)>,
    /// Names the next response must mention (as a resource or as removed):
    /// wildcard clients unsubscribing a specific name.
    must_report: BTreeSet<String>,
    /// Answer the next chance even if there is nothing to say (first
    /// request of the type: the client waits for it to finish initialising).
    force: bool,
    /// Whether something other than the snapshot changed since the last
    /// computation (subscriptions, known versions): then the unchanged-map
    /// shortcut does not apply.
    dirty: bool,
    /// The type's map the last computation used; the same `Arc` again with
    /// nothing dirty means nothing to send, without walking the map.
    computed_from: Option<Arc<Resources>>,
    computed: bool,
    /// The client holds exactly what the subscription selects from
    /// `sent_from` (and `told_absent` and `must_report` are settled): the
    /// next push is then what changed between the two maps, found once per
    /// pair of maps for every stream that holds the same one, not by walking
    /// every name the stream holds; and `known` is not kept.
    in_sync: bool,
    /// What was sent last and what the client said of it.
    ack: Acks,
    /// The type's map of the last response: the bodies of what `known`
    /// names ([`DeltaStream::sent`]).
    sent_from: Option<Arc<Resources>>,
    pushes: u64,
    resources_sent: u64,
}

impl TypeState {
    /// The version of `name` the client holds, as far as the server knows.
    fn known(&self, name: &str) -> Option<&str> {
        if self.in_sync {
            self.sent_from
                .as_deref()
                .and_then(|m| m.get(name))
                .filter(|_| self.sub.wants(name))
                .map(|r| r.version.as_str())
        } else {
            self.known.get(name).map(String::as_str)
        }
    }

    /// Every held name and version.
    fn known_all(&self) -> BTreeMap<String, String> {
        if !self.in_sync {
            return self.known.clone();
        }
        self.sent_from
            .as_deref()
            .map(|m| {
                m.iter()
                    .filter(|(n, _)| self.sub.wants(n))
                    .map(|(n, r)| (n.clone(), r.version.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Makes `known` explicit before the subscription changes what it
    /// selects.
    fn leave_sync(&mut self) {
        if self.in_sync {
            self.known = self.known_all();
            self.in_sync = false;
        }
    }
}

impl DeltaStream {
    /// A stream that will serve `snapshot` until told of a newer one.
    pub fn new(snapshot: Arc<Snapshot>) -> DeltaStream {
        DeltaStream {
            snapshot,
            types: BTreeMap::new(),
            nonces: Nonces::default(),
        }
    }

    /// Handles one request from the client.
    ///
    /// # Errors
    /// [`ProtocolError`] if the request is not valid on an ADS stream; the
    /// stream should then be closed.
    pub fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
    ) -> Result<Output<DeltaResponse>, ProtocolError> {
        if req.type_url.is_empty() {
            return Err(ProtocolError::MissingTypeUrl);
        }
        let mut out = Output::default();
        let first = !self.types.contains_key(&req.type_url);
        let state = self.types.entry(req.type_url.clone()).or_default();

        if !req.response_nonce.is_empty() {
            if let Some(event) = state.ack.on_answer(
                &req.type_url,
                &req.response_nonce,
                req.error_detail.as_ref(),
                String::new(),
            ) {
                out.events.push(event);
            } else {
                out.events.push(Event::Stale {
                    type_url: req.type_url.clone(),
                    nonce: req.response_nonce.clone(),
                });
            }
        }

        if !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty() {
            state.covers = None;
            if !first {
                state.leave_sync();
            }
        }
        if first {
            state.force = true;
            state.dirty = true;
            state.in_sync = false;
            state.known.extend(
                req.initial_resource_versions
                    .iter()
                    .map(|(n, v)| (n.clone(), v.clone())),
            );
            if req.resource_names_subscribe.is_empty()
                && req.resource_names_unsubscribe.is_empty()
                && type_url::legacy_wildcard(&req.type_url)
            {
                state.sub.wildcard = true;
            }
        }
        for name in &req.resource_names_subscribe {
            state.dirty = true;
            state.sub.explicit = true;
            if name == WILDCARD {
                state.sub.wildcard = true;
                continue;
            }
            Arc::make_mut(&mut state.sub.names).insert(name.clone());
            state.told_absent.remove(name);
            if !first {
                // The client may have dropped it while staying subscribed.
                state.known.remove(name);
            }
        }
        for name in &req.resource_names_unsubscribe {
            state.dirty = true;
            if name == WILDCARD {
                state.sub.wildcard = false;
                // What the wildcard alone brought, the client drops with it.
                let names = &state.sub.names;
                state.known.retain(|n, _| names.contains(n));
                continue;
            }
            Arc::make_mut(&mut state.sub.names).remove(name);
            state.told_absent.remove(name);
            state.known.remove(name);
            if state.sub.wildcard {
                state.must_report.insert(name.clone());
            }
        }

        if !state.ack.pending
            && let Some(resp) = push(&self.snapshot, &req.type_url, state, &mut self.nonces)
        {
            out.responses.push(resp);
        }
        Ok(out)
    }

    /// Takes a newer snapshot and returns the responses it calls for: one
    /// per type with changes for the client and no response pending, in
    /// make-before-break order (CDS, EDS, LDS, RDS, ...).
    pub fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Output<DeltaResponse> {
        self.snapshot = snapshot;
        let mut out = Output::default();
        let mut order: Vec<TypeUrl> = self.types.keys().cloned().collect();
        order.sort_by_key(|t| type_url::push_rank(t));
        for t in order {
            let Some(state) = self.types.get_mut(&t) else {
                continue;
            };
            if state.ack.pending {
                continue;
            }
            if let Some(resp) = push(&self.snapshot, &t, state, &mut self.nonces) {
                out.responses.push(resp);
            }
        }
        out
    }

    /// Whether every type has a response awaiting its ACK/NACK: then no
    /// newer snapshot can be pushed until the client answers.
    pub fn awaiting_all(&self) -> bool {
        !self.types.is_empty() && self.types.values().all(|s| s.ack.pending)
    }

    /// The snapshot being served.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// Per-type state, for the API and tests.
    pub fn status(&self) -> BTreeMap<TypeUrl, TypeStatus> {
        self.types
            .iter()
            .map(|(t, s)| {
                let status = TypeStatus::of(&s.sub, &s.ack, s.pushes, s.resources_sent);
                (t.clone(), status)
            })
            .collect()
    }

    /// Per type, the resources the client holds as they were sent: those of
    /// `known` whose version is the one in the map of the last response
    /// (versions a client announced itself but was never sent are left out).
    pub fn sent(&self) -> BTreeMap<TypeUrl, Resources> {
        self.types
            .iter()
            .filter(|(_, s)| s.ack.sent.is_some())
            .map(|(t, s)| {
                let held = s
                    .sent_from
                    .as_deref()
                    .map(|m| {
                        m.iter()
                            .filter(|(n, r)| s.known(n) == Some(r.version.as_str()))
                            .map(|(n, r)| (n.clone(), r.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                (t.clone(), held)
            })
            .collect()
    }

    /// The resource versions the server believes the client holds for a
    /// type (for tests and debugging).
    pub fn known(&self, type_url: &str) -> BTreeMap<String, String> {
        self.types
            .get(type_url)
            .map(TypeState::known_all)
            .unwrap_or_default()
    }
}

/// Computes what the client lacks for `type_url` and, if anything (or
/// `force`), builds the response and records it as sent and pending.
fn push(
    snapshot: &Snapshot,
    type_url: &str,
    state: &mut TypeState,
    nonces: &mut Nonces,
) -> Option<DeltaResponse> {
    let source = snapshot.of_type(type_url).cloned();
    let same_source = state.computed
        && match (&state.computed_from, &source) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
    if same_source && !state.dirty && !state.force {
        return None;
    }
    state.computed = true;
    state.computed_from = source.clone();
    let dirty = std::mem::take(&mut state.dirty);
    if state.in_sync
        && !dirty
        && !state.force
        && let (Some(held), Some(now), Some(memo)) =
            (&state.sent_from, &source, snapshot.memo_of(type_url))
    {
        let diff = memo.diff_since(held, now);
        // Changed names are names of `now`: all wanted when it is covered.
        let all = state.sub.covers(now, memo, &mut state.covers);
        let updates: Vec<(&String, &crate::resource::Resource)> = diff
            .changed
            .iter()
            .filter(|n| all || state.sub.wants(n))
            .filter_map(|n| now.get_key_value(n))
            .collect();
        let removed: BTreeSet<String> = diff
            .removed
            .iter()
            .filter(|n| state.sub.wants(n))
            .cloned()
            .collect();
        if updates.is_empty() && removed.is_empty() {
            // The client holds exactly this map's view too.
            state.sent_from = source;
            return None;
        }
        // Every changed name: the list every stream holding `held` shares.
        let shared = all.then(|| diff.changed.clone());
        let source = source.clone();
        return Some(respond(
            type_url, state, nonces, updates, shared, removed, source,
        ));
    }
    // The full walk below reads and edits `known`.
    state.leave_sync();
    let empty = Resources::new();
    let resources = source.as_deref().unwrap_or(&empty);

    let mut updates: Vec<(&String, &crate::resource::Resource)> = Vec::new();
    let wanted: Box<dyn Iterator<Item = (&String, &crate::resource::Resource)>> =
        if state.sub.wildcard || state.sub.names.len() > resources.len() {
            Box::new(resources.iter().filter(|(n, _)| state.sub.wants(n)))
        } else {
            Box::new(
                state
                    .sub
                    .names
                    .iter()
                    .filter_map(|n| resources.get_key_value(n)),
            )
        };
    for (name, r) in wanted {
        if state.known.get(name) != Some(&r.version) || state.must_report.contains(name) {
            updates.push((name, r));
        }
    }

    let mut removed: BTreeSet<String> = BTreeSet::new();
    // Held but gone or no longer wanted.
    for name in state.known.keys() {
        if !(state.sub.wants(name) && resources.contains_key(name)) {
            removed.insert(name.clone());
        }
    }
    // Asked for by name but not existing: say so once.
    for name in state.sub.names.iter() {
        if !resources.contains_key(name) && !state.told_absent.contains(name) {
            removed.insert(name.clone());
        }
    }
    // Unsubscribed under a wildcard and not covered by it.
    for name in &state.must_report {
        if !(state.sub.wants(name) && resources.contains_key(name)) {
            removed.insert(name.clone());
        }
    }

    if updates.is_empty() && removed.is_empty() && !state.force {
        // The client holds exactly this map's view.
        if source.is_some() {
            state.in_sync = true;
            state.known.clear();
        }
        state.must_report.clear();
        state.sent_from = source;
        return None;
    }
    let source = source.clone();
    Some(respond(
        type_url, state, nonces, updates, None, removed, source,
    ))
}

/// Records `updates` and `removed` as sent (the client holds them once it
/// answers) and builds the response. `shared`: the names of `updates` as a
/// list other streams hold too, sent instead of a copy.
fn respond(
    type_url: &str,
    state: &mut TypeState,
    nonces: &mut Nonces,
    updates: Vec<(&String, &crate::resource::Resource)>,
    shared: Option<Arc<Vec<String>>>,
    removed: BTreeSet<String>,
    source: Option<Arc<Resources>>,
) -> DeltaResponse {
    // Once answered, the client holds the subscription's view of `source`:
    // `known` need not be kept.
    let sync = source.is_some();
    let mut h = Fnv64::new();
    let mut copied = Vec::with_capacity(if shared.is_some() { 0 } else { updates.len() });
    for (name, r) in &updates {
        h.write_str(name);
        h.write_str(&r.version);
        if !sync {
            state.known.insert((*name).clone(), r.version.clone());
        }
        state.told_absent.remove(*name);
        if shared.is_none() {
            copied.push((*name).clone());
        }
    }
    let names = shared.unwrap_or_else(|| Arc::new(copied));
    for name in &removed {
        h.write_str("-");
        h.write_str(name);
        if !sync {
            state.known.remove(name);
        }
        if state.sub.names.contains(name) {
            state.told_absent.insert(name.clone());
        }
    }
    state.must_report.clear();
    state.force = false;
    state.resources_sent += names.len() as u64;

    if sync {
        state.known.clear();
    }
    state.in_sync = sync;
    state.sent_from.clone_from(&source);
    let nonce = nonces.next();
    let version = h.hex();
    state.ack.sent = Some((version.clone(), nonce.clone()));
    state.ack.pending = true;
    state.pushes += 1;
    DeltaResponse::new(
        version,
        type_url.to_string(),
        nonce,
        source,
        names,
        removed.into_iter().collect(),
    )
}

#[cfg(test)]
mod tests;
