//! `trellis apply --wait`: wait until every connected proxy was sent the
//! config of the apply's generation (or a later one) and ACKed it. A proxy
//! the change does not concern is still sent the new generation's snapshot
//! (unchanged for it, so nothing to ACK), so "every proxy" is exactly
//! "every affected proxy" once the control plane has asked them all.

use serde_json::Value;

/// Where the proxies stand, from `GET /api/v1/proxies`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Every connected proxy has the generation and ACKed it.
    Done { proxies: usize },
    /// Some proxies have not yet: how many are done, of how many, and the
    /// node ids of those still waited for.
    Waiting {
        done: usize,
        total: usize,
        waiting: Vec<String>,
    },
    /// A proxy rejected its config: waiting longer would not help.
    Rejected { node: String, reason: String },
}

/// The decision, from the proxies list and the apply's store generation.
pub fn state(proxies: &Value, generation: u64) -> State {
    let items = proxies["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut waiting = Vec::new();
    for p in items {
        let node = p["node"].as_str().unwrap_or("?").to_string();
        let sent = p["generation"].as_u64().is_some_and(|g| g >= generation);
        let nack = p["types"].as_object().and_then(|types| {
            types.iter().find_map(|(t, st)| {
                let rejected = st["lastNack"]["version"].as_str()?;
                // A NACK of what is sent now, not of something older.
                (st["sent"].as_str() == Some(rejected) && !st["pending"].as_bool().unwrap_or(false))
                    .then(|| format!("{t}: {}", st["lastNack"]["message"].as_str().unwrap_or("")))
            })
        });
        if sent && let Some(reason) = nack {
            return State::Rejected { node, reason };
        }
        if !(sent && p["acked"].as_bool().unwrap_or(false)) {
            waiting.push(node);
        }
    }
    if waiting.is_empty() {
        State::Done {
            proxies: items.len(),
        }
    } else {
        State::Waiting {
            done: items.len() - waiting.len(),
            total: items.len(),
            waiting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn proxy(node: &str, generation: u64, acked: bool, nack: Option<&str>) -> Value {
        let sent = "v2";
        json!({
            "node": node,
            "generation": generation,
            "acked": acked,
            "types": {"Listener": {
                "sent": sent,
                "acked": if acked { sent } else { "v1" },
                "pending": nack.is_none() && !acked,
                "lastNack": nack.map(|m| json!({"version": sent, "message": m})),
            }},
        })
    }

    #[test]
    fn waits_for_every_proxy_to_have_and_ack_the_generation() {
        let cases = [
            (vec![], State::Done { proxies: 0 }),
            (
                vec![proxy("a", 5, true, None), proxy("b", 6, true, None)],
                State::Done { proxies: 2 },
            ),
            (
                vec![
                    proxy("a", 4, true, None),
                    proxy("b", 5, false, None),
                    proxy("c", 5, true, None),
                ],
                State::Waiting {
                    done: 1,
                    total: 3,
                    waiting: vec!["a".into(), "b".into()],
                },
            ),
            (
                vec![proxy("a", 5, false, Some("unknown filter"))],
                State::Rejected {
                    node: "a".into(),
                    reason: "Listener: unknown filter".into(),
                },
            ),
            // A NACK of an older generation is not this apply's problem yet.
            (
                vec![proxy("a", 4, false, Some("old"))],
                State::Waiting {
                    done: 0,
                    total: 1,
                    waiting: vec!["a".into()],
                },
            ),
        ];
        for (items, want) in cases {
            assert_eq!(state(&json!({"items": items}), 5), want);
        }
    }
}
