//! Locality-aware priorities (Istio's `localityLbSetting`): keep traffic as
//! close as possible, and fail over outwards only when nothing closer is
//! healthy.
//!
//! Relative to the proxy's own locality an endpoint's priority is
//!
//! | priority | endpoint is in |
//! |---|---|
//! | 0 | the same region, zone and subzone |
//! | 1 | the same region and zone |
//! | 2 | the same region |
//! | 3 | a region that a `failover` entry names as the target for ours |
//! | 4 | anywhere else |
//!
//! The balancer picks from the lowest priority with a healthy endpoint. When
//! locality load balancing is disabled, or the proxy's locality is unknown
//! (all empty), every endpoint has priority 0. Parts are compared as written,
//! so an endpoint with an unknown locality is "anywhere else".
//!
//! Differences from Envoy: all traffic goes to the best priority while it has
//! any healthy endpoint (Envoy spills a share over as soon as fewer than
//! ~71% of a priority's endpoints are healthy, its overprovisioning factor);
//! `distribute` and `failoverPriority` are not supported (the config layer
//! rejects them).

use super::LocalityLb;
use super::endpoint::Locality;

/// Number of distinct priorities.
pub(crate) const LEVELS: usize = 5;

/// The priority of an endpoint at `endpoint` for a proxy at `local`.
pub(crate) fn priority(local: &Locality, endpoint: &Locality, lb: &LocalityLb) -> u8 {
    if !lb.enabled || local.is_empty() {
        return 0;
    }
    if endpoint.region == local.region {
        if endpoint.zone != local.zone {
            2
        } else if endpoint.subzone != local.subzone {
            1
        } else {
            0
        }
    } else if lb
        .failover
        .iter()
        .any(|(from, to)| *from == local.region && *to == endpoint.region)
    {
        3
    } else {
        4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(failover: &[(&str, &str)]) -> LocalityLb {
        LocalityLb {
            enabled: true,
            failover: failover
                .iter()
                .map(|(f, t)| (f.to_string(), t.to_string()))
                .collect(),
        }
    }

    #[test]
    fn priority_table() {
        let failover = lb(&[("us-east", "us-west"), ("eu-west", "eu-central")]);
        let cases = [
            // (local, endpoint, priority)
            ("us-east/a/r1", "us-east/a/r1", 0),
            ("us-east/a/r1", "us-east/a/r2", 1),
            ("us-east/a/r1", "us-east/a", 1),
            ("us-east/a/r1", "us-east/b/r1", 2),
            ("us-east/a/r1", "us-east", 2),
            ("us-east/a/r1", "us-west/a/r1", 3),
            ("us-east/a/r1", "eu-central/a/r1", 4), // failover of another region
            ("us-east/a/r1", "eu-west/a/r1", 4),
            ("us-east/a/r1", "", 4), // unknown endpoint locality
            ("us-east/a", "us-east/a", 0),
            ("us-east/a", "us-east/a/r1", 1),
            ("us-east", "us-east/b/c", 2),
            ("eu-west/x/y", "eu-central/x/y", 3),
            ("", "us-east/a/r1", 0), // unknown local locality: one level
            ("", "", 0),
        ];
        for (local, ep, want) in cases {
            let got = priority(&Locality::parse(local), &Locality::parse(ep), &failover);
            assert_eq!(got, want, "local {local:?}, endpoint {ep:?}");
        }
    }

    #[test]
    fn several_failover_targets() {
        let lb = lb(&[("us-east", "us-west"), ("us-east", "us-central")]);
        let local = Locality::parse("us-east/a/b");
        for (ep, want) in [("us-west", 3), ("us-central", 3), ("eu-west", 4)] {
            assert_eq!(priority(&local, &Locality::parse(ep), &lb), want, "{ep}");
        }
    }

    #[test]
    fn disabled_is_one_level() {
        let disabled = LocalityLb {
            enabled: false,
            failover: vec![("us-east".into(), "us-west".into())],
        };
        let local = Locality::parse("us-east/a/r1");
        for ep in ["us-east/a/r1", "us-east/b", "us-west", "eu-west/x/y", ""] {
            assert_eq!(priority(&local, &Locality::parse(ep), &disabled), 0, "{ep}");
        }
    }

    #[test]
    fn default_is_enabled_without_failover() {
        let d = LocalityLb::default();
        assert!(d.enabled);
        assert!(d.failover.is_empty());
    }
}
