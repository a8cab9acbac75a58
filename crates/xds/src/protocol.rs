//! What the state-of-the-world ([`crate::sotw`]) and delta ([`crate::delta`])
//! state machines share: subscriptions, events, per-type status, errors.
//! Plain data: no I/O, no clocks, no tokio.

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::google::rpc::Status;

use crate::resource::{MapMemo, Resources, type_url};

/// The name that subscribes to every resource of a type.
pub const WILDCARD: &str = "*";

/// A request the protocol does not allow; the server ends the stream with
/// `INVALID_ARGUMENT` and this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// On an aggregated stream every request must say which type it is about.
    #[error("request has no type_url (required on an aggregated (ADS) stream)")]
    MissingTypeUrl,
}

/// Something a request told the server, for metrics, logs and the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The client applied the response with this nonce.
    Ack {
        /// The type acknowledged.
        type_url: String,
        /// The version it now runs (the response's `version_info` in SotW,
        /// its `system_version_info` in delta).
        version: String,
        /// The response's nonce.
        nonce: String,
    },
    /// The client rejected the response with this nonce and keeps running
    /// what it had.
    Nack(Nack),
    /// A request answering an older response than the last one sent: it is
    /// neither an ACK nor a NACK (the client has not seen the newest
    /// response yet), only its subscription changes count.
    Stale {
        /// The request's type.
        type_url: String,
        /// The nonce it carried.
        nonce: String,
    },
}

/// A rejected response: what was rejected and the client's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    /// The type rejected.
    pub type_url: String,
    /// The version that was rejected (what the server had sent).
    pub rejected_version: String,
    /// The version the client says it still runs (`version_info`).
    pub client_version: String,
    /// The rejected response's nonce.
    pub nonce: String,
    /// `error_detail.code` (a `google.rpc.Code`).
    pub code: i32,
    /// `error_detail.message`: the client's explanation.
    pub message: String,
}

/// What one call into a state machine produced: responses to send, in
/// order, and events to record.
#[derive(Debug)]
pub struct Output<R> {
    /// Responses to write to the stream, in this order.
    pub responses: Vec<R>,
    /// What the requests meant (ACKs, NACKs, stale nonces).
    pub events: Vec<Event>,
}

impl<R> Default for Output<R> {
    fn default() -> Self {
        Output {
            responses: Vec::new(),
            events: Vec::new(),
        }
    }
}

/// One type's last response on one stream and what the client said of it:
/// the ACK/NACK bookkeeping both protocol variants share.
#[derive(Debug, Default)]
pub(crate) struct Acks {
    /// Version and nonce of the last response sent.
    pub(crate) sent: Option<(String, String)>,
    /// Whether `sent` awaits its ACK/NACK.
    pub(crate) pending: bool,
    pub(crate) acked_version: Option<String>,
    /// The last NACK, kept until a later response is ACKed.
    pub(crate) last_nack: Option<Nack>,
    pub(crate) acks: u64,
    pub(crate) nacks: u64,
}

impl Acks {
    /// A request carrying `nonce`: if it answers the pending response, it is
    /// an ACK, or a NACK when it has `error` (the client keeps the version
    /// it ACKed last, which is kept here too). `None` when it answers
    /// nothing pending; what that means differs between the variants.
    pub(crate) fn on_answer(
        &mut self,
        type_url: &str,
        nonce: &str,
        error: Option<&Status>,
        client_version: String,
    ) -> Option<Event> {
        let answers_pending = self.pending && self.sent.as_ref().is_some_and(|(_, n)| n == nonce);
        if !answers_pending {
            return None;
        }
        self.pending = false;
        let version = self
            .sent
            .as_ref()
            .map(|(v, _)| v.clone())
            .unwrap_or_default();
        Some(match error {
            Some(err) => {
                self.nacks += 1;
                let nack = Nack {
                    type_url: type_url.to_string(),
                    rejected_version: version,
                    client_version,
                    nonce: nonce.to_string(),
                    code: err.code,
                    message: err.message.clone(),
                };
                self.last_nack = Some(nack.clone());
                Event::Nack(nack)
            }
            None => {
                self.acks += 1;
                self.acked_version = Some(version.clone());
                self.last_nack = None;
                Event::Ack {
                    type_url: type_url.to_string(),
                    version,
                    nonce: nonce.to_string(),
                }
            }
        })
    }
}

/// The state of one type on one stream, for the API and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// Whether the client subscribed to everything of this type.
    pub wildcard: bool,
    /// Names subscribed explicitly (besides the wildcard).
    pub names: Vec<String>,
    /// Version of the last response sent.
    pub sent_version: Option<String>,
    /// Nonce of the last response sent.
    pub sent_nonce: Option<String>,
    /// Version of the last response the client ACKed.
    pub acked_version: Option<String>,
    /// Whether a response is awaiting its ACK/NACK (then nothing else of
    /// this type is sent).
    pub pending: bool,
    /// The last NACK, kept until a later response is ACKed.
    pub last_nack: Option<Nack>,
    /// Responses sent.
    pub pushes: u64,
    /// Resources sent, over all responses (a delta client reconnecting
    /// with what it already holds gets none).
    pub resources_sent: u64,
    /// ACKs received.
    pub acks: u64,
    /// NACKs received.
    pub nacks: u64,
}

impl TypeStatus {
    /// The status of a type with this subscription and acknowledgement
    /// state, for either protocol variant.
    pub(crate) fn of(sub: &Subscription, ack: &Acks, pushes: u64, resources_sent: u64) -> Self {
        TypeStatus {
            wildcard: sub.wildcard,
            names: sub.names.iter().cloned().collect(),
            sent_version: ack.sent.as_ref().map(|(v, _)| v.clone()),
            sent_nonce: ack.sent.as_ref().map(|(_, n)| n.clone()),
            acked_version: ack.acked_version.clone(),
            pending: ack.pending,
            last_nack: ack.last_nack.clone(),
            pushes,
            resources_sent,
            acks: ack.acks,
            nacks: ack.nacks,
        }
    }
}

/// Which names of a type a stream wants, with the protocol's wildcard
/// rules (xDS protocol, "How the client specifies what resources to
/// return").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Subscription {
    /// Subscribed to `*` (explicitly, or by the legacy empty request).
    pub(crate) wildcard: bool,
    /// Names subscribed explicitly, never containing `*`. Behind an `Arc`
    /// so streams asking for the same names (every sidecar of a class asks
    /// for the same ~1,200 EDS names at 1,000 services) can share one set:
    /// see [`Subscription::apply_sotw`].
    pub(crate) names: Arc<BTreeSet<String>>,
    /// Whether the client ever named a resource (or `*`) for this type:
    /// from then on an empty list means "nothing", not the legacy wildcard.
    pub(crate) explicit: bool,
}

impl Subscription {
    /// Whether `name` is wanted.
    pub(crate) fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Does the subscription want every name of `map`? Known at once for a
    /// wildcard; otherwise checked name by name once per set of names
    /// (`cache`: the hash of the names last checked, and the answer; the
    /// caller clears it when the subscription changes). Maps of later
    /// generations mostly keep the names and change the content, so a
    /// stream then skips a lookup per changed name (at 10,000 proxies
    /// under churn those lookups were 13 % of the control plane's CPU).
    pub(crate) fn covers(
        &self,
        map: &Resources,
        memo: &MapMemo,
        cache: &mut Option<(u64, bool)>,
    ) -> bool {
        if self.wildcard {
            return true;
        }
        let names = memo.names_hash(map);
        match *cache {
            Some((n, covered)) if n == names => covered,
            _ => {
                let covered = map.keys().all(|k| self.names.contains(k));
                *cache = Some((names, covered));
                covered
            }
        }
    }

    /// Applies a state-of-the-world request's full list of names. Returns
    /// whether the subscription changed.
    ///
    /// Legacy wildcard: while every request so far had no names, an empty
    /// list means `*` (Listener and Cluster only). Once any name was sent,
    /// the list is taken literally: `*` must be listed to keep the wildcard,
    /// and an empty list unsubscribes from everything.
    ///
    /// `common` gives, when asked (only when the names changed), a set
    /// other streams likely ask for too (the names of the type's map in the
    /// current snapshot): if the request names exactly that set, the
    /// subscription shares it instead of holding a copy.
    pub(crate) fn apply_sotw(
        &mut self,
        type_url: &str,
        names: &[String],
        common: impl FnOnce() -> Option<Arc<BTreeSet<String>>>,
    ) -> bool {
        // Every ACK repeats the whole list (a sidecar's EDS: every cluster),
        // and it rarely changes: check that without cloning anything.
        let wildcard = names.iter().any(|n| n == WILDCARD);
        if self.explicit
            && !names.is_empty()
            && wildcard == self.wildcard
            && same_names(&self.names, names)
        {
            return false;
        }
        let before = self.clone();
        if names.is_empty() && !self.explicit {
            self.wildcard = type_url::legacy_wildcard(type_url);
            self.names = Arc::default();
        } else {
            self.explicit = true;
            self.wildcard = wildcard;
            self.names = match common() {
                Some(set) if same_names(&set, names) => set,
                _ => Arc::new(names.iter().filter(|n| *n != WILDCARD).cloned().collect()),
            };
        }
        *self != before
    }
}

/// Is `names` (less any `*`) exactly `set`? Answered without allocating
/// when the names come sorted without repeats (as trellis-proxy and the
/// simulator send them); `false` (meaning: build the set the slow way) when
/// they do not. One comparison per name: the set iterates in strictly
/// increasing order, so names equal to it one by one are sorted and
/// distinct too. (At 10,000 proxies every EDS ACK repeats ~240 names: this
/// function was 9 % of the control plane's CPU under churn, about half of
/// it a second comparison per name that checked the order.)
fn same_names(set: &BTreeSet<String>, names: &[String]) -> bool {
    let mut given = names.iter().filter(|n| *n != WILDCARD);
    let mut mine = set.iter();
    loop {
        match (given.next(), mine.next()) {
            (None, None) => return true,
            (Some(g), Some(m)) if g == m => {}
            _ => return false,
        }
    }
}

/// Makes nonces unique within a stream. The client only compares them for
/// equality; a counter is enough, and readable in logs.
#[derive(Debug, Default)]
pub(crate) struct Nonces(u64);

impl Nonces {
    pub(crate) fn next(&mut self) -> String {
        self.0 += 1;
        self.0.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::type_url::{CLUSTER, ENDPOINT};

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn same_names_is_exact_and_order_sensitive() {
        let set: BTreeSet<String> = names(&["a", "b", "c"]).into_iter().collect();
        // (names given, same as the set?)
        let cases: &[(&[&str], bool)] = &[
            (&["a", "b", "c"], true),
            (&["a", "*", "b", "c"], true),
            (&["a", "b"], false),
            (&["a", "b", "c", "d"], false),
            (&["b", "a", "c"], false),
            (&["a", "a", "b", "c"], false),
            (&["a", "b", "b"], false),
            (&[], false),
        ];
        for (given, want) in cases {
            assert_eq!(same_names(&set, &names(given)), *want, "{given:?}");
        }
        assert!(same_names(&BTreeSet::new(), &[]));
    }

    /// The protocol doc's SotW example, step by step.
    #[test]
    fn sotw_wildcard_rules() {
        // (type, requests in order, wildcard after, names after)
        type Case = (
            &'static str,
            &'static [&'static [&'static str]],
            bool,
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            (CLUSTER, &[&[]], true, &[]),
            (CLUSTER, &[&[], &[]], true, &[]),
            (CLUSTER, &[&[], &["*", "A"]], true, &["A"]),
            (CLUSTER, &[&[], &["*", "A"], &["A"]], false, &["A"]),
            (CLUSTER, &[&[], &["*", "A"], &["A"], &[]], false, &[]),
            (CLUSTER, &[&["A"], &[]], false, &[]),
            (CLUSTER, &[&["*"]], true, &[]),
            // No legacy wildcard for EDS: empty means nothing.
            (ENDPOINT, &[&[]], false, &[]),
            (ENDPOINT, &[&["a", "b"]], false, &["a", "b"]),
            // An explicit `*` is honoured for any type.
            (ENDPOINT, &[&["*"]], true, &[]),
        ];
        for (type_url, requests, wildcard, want) in cases {
            let mut s = Subscription::default();
            for r in *requests {
                s.apply_sotw(type_url, &names(r), || None);
            }
            assert_eq!(s.wildcard, *wildcard, "{type_url} {requests:?}");
            assert_eq!(
                s.names.iter().map(String::as_str).collect::<Vec<_>>(),
                *want,
                "{type_url} {requests:?}"
            );
        }
    }

    #[test]
    fn a_subscription_to_the_common_set_shares_it() {
        let common: Arc<BTreeSet<String>> = Arc::new(["a", "b"].map(String::from).into());
        let mut s = Subscription::default();
        assert!(s.apply_sotw(ENDPOINT, &names(&["a", "b"]), || Some(common.clone())));
        assert!(Arc::ptr_eq(&s.names, &common), "shared, not copied");
        // The same list again is no change and keeps sharing.
        assert!(!s.apply_sotw(ENDPOINT, &names(&["a", "b"]), || Some(common.clone())));
        assert!(Arc::ptr_eq(&s.names, &common));
        // Another list gets its own set.
        assert!(s.apply_sotw(ENDPOINT, &names(&["a"]), || Some(common.clone())));
        assert!(!Arc::ptr_eq(&s.names, &common));
        assert_eq!(s.names.len(), 1);
        // Unsorted input is compared the slow way: a copy, still correct.
        let mut u = Subscription::default();
        assert!(u.apply_sotw(ENDPOINT, &names(&["b", "a"]), || Some(common.clone())));
        assert_eq!(*u.names, *common);
    }

    #[test]
    fn sotw_reports_changes_only() {
        let mut s = Subscription::default();
        assert!(s.apply_sotw(CLUSTER, &[], || None));
        assert!(!s.apply_sotw(CLUSTER, &[], || None));
        assert!(s.apply_sotw(CLUSTER, &names(&["*", "a"]), || None));
        assert!(!s.apply_sotw(CLUSTER, &names(&["a", "*"]), || None));
    }
}
