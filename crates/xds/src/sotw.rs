//! The state-of-the-world ADS protocol for one stream, as a state machine:
//! requests and snapshots in, responses and events out. No I/O.
//!
//! Per type URL it keeps the subscription, the last response sent (version
//! and nonce), whether that response awaits its ACK/NACK, and the last
//! ACKed version. The rules (Envoy's xDS protocol doc):
//!
//! - A Listener or Cluster response carries every subscribed resource of
//!   its type that exists (absence means deletion). For the other types the
//!   first response does, and later ones carry only the subscribed
//!   resources that differ from what the client ACKed last (after a
//!   subscription change, all again). `version_info` is a hash of the names
//!   and versions of the whole subscribed view, so equal content gives an
//!   equal version.
//! - A request whose `response_nonce` is the last one sent for its type is
//!   the ACK (no `error_detail`) or NACK (with one) of that response. Any
//!   other non-empty nonce is stale: the client has not seen the newest
//!   response, so it is not an answer to it. Its resource names are still
//!   taken, since every SotW request carries the full list and requests
//!   arrive in order.
//! - At most one unanswered response per type: while one is pending,
//!   changes wait, and the response sent after the ACK/NACK is computed from
//!   the newest snapshot (so several generations coalesce into one push).
//! - A response goes out only when its content differs from the last one
//!   sent (new snapshot content, or a changed subscription), or to answer
//!   the first request of a type on the stream (so the client can finish
//!   initialising even when there is nothing to send) — unless that first
//!   request is a wildcard-only one from a reconnecting client whose
//!   `version_info` already equals what it would get. After a NACK the
//!   rejected content is therefore not sent again; the next push is the
//!   next different content.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

use crate::protocol::{Acks, Event, Nonces, Output, ProtocolError, Subscription, TypeStatus};
use crate::resource::{Fnv64, Resources, Snapshot, TypeUrl, map_diff, type_url};

pub mod response;
pub use response::SotwResponse;

/// One state-of-the-world ADS stream.
#[derive(Debug)]
pub struct SotwStream {
    snapshot: Arc<Snapshot>,
    types: BTreeMap<TypeUrl, TypeState>,
    nonces: Nonces,
}

#[derive(Debug, Default)]
struct TypeState {
    sub: Subscription,
    /// What was sent last and what the client said of it.
    ack: Acks,
    /// The view version computed last, and what it was computed from (the
    /// type's map in the snapshot): when neither the map (same `Arc`) nor
    /// the subscription changed, the version is reused without hashing the
    /// view again. Cleared when the subscription changes.
    cached: Option<(Option<Arc<Resources>>, String)>,
    /// For types whose responses may carry only what changed (all but
    /// Listener and Cluster): the map of the last push the client ACKed
    /// (it holds that view), and of the push awaiting its answer. Cleared
    /// when the subscription changes, so the next push is complete.
    held: Option<Arc<Resources>>,
    inflight: Option<Arc<Resources>>,
    /// Whether the subscription covers every name of maps with this hash of
    /// names ([`Subscription::covers`]). Cleared when the subscription changes.
    covers: Option<(u64, bool)>,
    /// The type's map the last response was made from: with the
    /// subscription, what the client was sent ([`SotwStream::sent`]). The
    /// same `Arc` as the snapshot's (shared), so it costs a reference.
    sent_from: Option<Arc<Resources>>,
    pushes: u64,
    resources_sent: u64,
}

impl SotwStream {
    /// A stream that will serve `snapshot` until told of a newer one.
    pub fn new(snapshot: Arc<Snapshot>) -> SotwStream {
        SotwStream {
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
        req: &DiscoveryRequest,
    ) -> Result<Output<SotwResponse>, ProtocolError> {
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
                req.version_info.clone(),
            ) {
                // The client holds what it ACKed; after a NACK it still
                // holds what it had.
                let inflight = state.inflight.take();
                if matches!(event, Event::Ack { .. }) {
                    state.held = inflight;
                }
                out.events.push(event);
            } else if state
                .ack
                .sent
                .as_ref()
                .is_none_or(|(_, n)| *n != req.response_nonce)
            {
                // Same nonce as the last (already answered) response is a
                // resource-hint update, not stale: only other nonces are.
                out.events.push(Event::Stale {
                    type_url: req.type_url.clone(),
                    nonce: req.response_nonce.clone(),
                });
            }
        }

        let snapshot = &self.snapshot;
        let common = || match (
            snapshot.of_type(&req.type_url),
            snapshot.memo_of(&req.type_url),
        ) {
            (Some(map), Some(memo)) => Some(memo.name_set(map)),
            _ => None,
        };
        if state
            .sub
            .apply_sotw(&req.type_url, &req.resource_names, common)
        {
            state.cached = None;
            state.covers = None;
            // What the client holds was sent for the old names.
            state.held = None;
            state.inflight = None;
        }

        let mut force = first;
        if first && state.sub.wildcard && state.sub.names.is_empty() && !req.version_info.is_empty()
        {
            // A client reconnecting (to this or a restarted server) says
            // which version it runs. For a wildcard-only subscription that
            // is the whole story (the protocol doc allows skipping then),
            // and versions are content hashes: if it matches, the client
            // already runs exactly this, so there is nothing to send. Saves
            // a full push per proxy after a control-plane restart.
            let version = current_version(&self.snapshot, &req.type_url, state);
            if version == req.version_info {
                state.ack.sent = Some((version.clone(), String::new()));
                state.ack.acked_version = Some(version);
                force = false;
            }
        }

        if !state.ack.pending
            && let Some(resp) = push(
                &self.snapshot,
                &req.type_url,
                state,
                &mut self.nonces,
                force,
            )
        {
            out.responses.push(resp);
        }
        Ok(out)
    }

    /// Takes a newer snapshot and returns the responses it calls for: one
    /// per type whose subscribed content changed and that has no response
    /// pending, in make-before-break order (CDS, EDS, LDS, RDS, ...).
    pub fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Output<SotwResponse> {
        self.snapshot = snapshot;
        let mut out = Output::default();
        let mut order: Vec<&TypeUrl> = self.types.keys().collect();
        order.sort_by_key(|t| type_url::push_rank(t));
        let order: Vec<TypeUrl> = order.into_iter().cloned().collect();
        for t in order {
            let Some(state) = self.types.get_mut(&t) else {
                continue;
            };
            if state.ack.pending {
                continue;
            }
            if let Some(resp) = push(&self.snapshot, &t, state, &mut self.nonces, false) {
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

    /// Per type, the resources of the last response sent: what the client
    /// holds once it ACKs (or rejected, if it NACKed), as sent, not as the
    /// newest snapshot would make them.
    pub fn sent(&self) -> BTreeMap<TypeUrl, Resources> {
        self.types
            .iter()
            .filter(|(_, s)| s.ack.sent.is_some())
            .map(|(t, s)| {
                let held = s
                    .sent_from
                    .as_deref()
                    .map(|m| {
                        view(Some(m), &s.sub)
                            .map(|(n, r)| (n.clone(), r.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                (t.clone(), held)
            })
            .collect()
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
}

/// Builds the response for `type_url` if its content differs from the last
/// one sent (or `force`), and records it as pending.
fn push(
    snapshot: &Snapshot,
    type_url: &str,
    state: &mut TypeState,
    nonces: &mut Nonces,
    force: bool,
) -> Option<SotwResponse> {
    let source = snapshot.of_type(type_url).cloned();
    let version = current_version(snapshot, type_url, state);
    let unchanged = state.ack.sent.as_ref().is_some_and(|(v, _)| *v == version);
    if unchanged && !force {
        return None;
    }
    let names: Arc<Vec<String>> = match (&state.held, &source) {
        (Some(held), Some(now)) if partial_allowed(type_url) => {
            let memo = snapshot.memo_of(type_url);
            let changed = match memo {
                Some(memo) => memo.diff_since(held, now).changed.clone(),
                None => map_diff(held, now).changed,
            };
            // Changed names are names of `now`: all wanted when it is covered.
            let covered = memo.is_some_and(|m| state.sub.covers(now, m, &mut state.covers));
            if covered || changed.iter().all(|n| state.sub.wants(n)) {
                // The common case: shared by every stream that held `held`.
                changed
            } else {
                Arc::new(
                    changed
                        .iter()
                        .filter(|n| state.sub.wants(n))
                        .cloned()
                        .collect(),
                )
            }
        }
        (_, Some(map)) => match snapshot.memo_of(type_url) {
            Some(memo) if state.sub.covers(map, memo, &mut state.covers) => memo.all_names(map),
            _ => Arc::new(
                view(Some(map), &state.sub)
                    .map(|(n, _)| n.clone())
                    .collect(),
            ),
        },
        (_, None) => Arc::default(),
    };
    let response = SotwResponse::new(
        version.clone(),
        type_url.to_string(),
        nonces.next(),
        source.clone(),
        names,
    );
    state.sent_from.clone_from(&source);
    state.inflight = source.filter(|_| partial_allowed(type_url));
    state.resources_sent += response.len() as u64;
    state.ack.sent = Some((version, response.nonce.clone()));
    state.ack.pending = true;
    state.pushes += 1;
    Some(response)
}

fn partial_allowed(type_url: &str) -> bool {
    type_url != type_url::LISTENER && type_url != type_url::CLUSTER
}

/// The version of what `state`'s subscription selects in `snapshot`,
/// reusing the cached one when neither the type's map nor the subscription
/// changed.
fn current_version(snapshot: &Snapshot, type_url: &str, state: &mut TypeState) -> String {
    let source = snapshot.of_type(type_url).cloned();
    match &state.cached {
        Some((cached_source, v)) if same_map(cached_source, &source) => v.clone(),
        _ => {
            let v = match (&source, snapshot.memo_of(type_url)) {
                // Subscribed to the whole map (wildcard, or a sidecar's
                // EDS naming every cluster): the map's own version, hashed
                // once for every stream that shares the map.
                (Some(map), Some(memo)) if state.sub.covers(map, memo, &mut state.covers) => memo
                    .full_version
                    .get_or_init(|| {
                        let all = Subscription {
                            wildcard: true,
                            ..Subscription::default()
                        };
                        view_version(Some(map), &all)
                    })
                    .clone(),
                _ => view_version(source.as_deref(), &state.sub),
            };
            state.cached = Some((source, v.clone()));
            v
        }
    }
}

fn same_map(a: &Option<Arc<Resources>>, b: &Option<Arc<Resources>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// The subscribed resources that exist, in name order. Walks whichever is
/// smaller: the subscribed names or the type's map.
fn view<'a>(
    resources: Option<&'a Resources>,
    sub: &'a Subscription,
) -> Box<dyn Iterator<Item = (&'a String, &'a crate::resource::Resource)> + 'a> {
    let Some(resources) = resources else {
        return Box::new(std::iter::empty());
    };
    if sub.wildcard || sub.names.len() > resources.len() {
        Box::new(resources.iter().filter(|(n, _)| sub.wants(n)))
    } else {
        Box::new(sub.names.iter().filter_map(|n| resources.get_key_value(n)))
    }
}

/// The version of a view: a hash of its names and versions in order.
fn view_version(resources: Option<&Resources>, sub: &Subscription) -> String {
    let mut h = Fnv64::new();
    for (name, r) in view(resources, sub) {
        h.write_str(name);
        h.write_str(&r.version);
    }
    h.hex()
}

#[cfg(test)]
mod tests;
