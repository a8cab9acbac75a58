//! Golden signals per service pair from two scrapes of the proxies'
//! counters: requests/s, success rate (non-5xx), and p50/p90/p99 latency
//! from the duration histogram's bucket deltas (interpolated inside a
//! bucket, as Prometheus's `histogram_quantile`). Plain data in, rows out.
//!
//! A pair is (source service, destination service): the source is the
//! scraped proxy's workload's service (its `app` label), the destination
//! the service of the outbound cluster (`outbound|port|subset|host`).

use std::collections::BTreeMap;

use super::prom::Sample;

const REQUESTS: &str = "trellis_requests_total";
const BUCKETS: &str = "trellis_request_duration_seconds_bucket";

/// Cumulative totals of one pair at one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PairCounts {
    pub requests: f64,
    pub errors: f64,
    /// Histogram buckets: upper bound -> cumulative count, summed over the
    /// pair's clusters (every cluster has the same bounds).
    pub buckets: BTreeMap<Bound, f64>,
}

/// A bucket bound that sorts (`+Inf` last).
#[derive(Debug, Clone, Copy)]
pub struct Bound(pub f64);
impl PartialEq for Bound {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}
impl Eq for Bound {}
impl PartialOrd for Bound {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bound {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

pub type Pair = (String, String);
pub type Counts = BTreeMap<Pair, PairCounts>;

/// The destination service of an outbound cluster name:
/// `outbound|9080|v1|reviews.default.svc.cluster.local` -> `reviews`
/// (a host outside the mesh's `.svc.cluster.local` is kept whole).
pub fn destination(cluster: &str) -> Option<String> {
    let mut parts = cluster.split('|');
    if parts.next()? != "outbound" {
        return None;
    }
    let host = parts.nth(2)?;
    Some(match host.strip_suffix(".svc.cluster.local") {
        Some(short) => short.split('.').next().unwrap_or(short).to_string(),
        None => host.to_string(),
    })
}

/// Add one proxy's outbound samples to `into`, as sent by `source`.
pub fn add(into: &mut Counts, source: &str, samples: &[Sample]) {
    for s in samples {
        if s.label("direction") != Some("outbound") {
            continue;
        }
        let Some(dst) = s.label("cluster").and_then(destination) else {
            continue;
        };
        let pair = into.entry((source.to_string(), dst)).or_default();
        match s.name.as_str() {
            REQUESTS => {
                pair.requests += s.value;
                if s.label("code_class") == Some("5xx") {
                    pair.errors += s.value;
                }
            }
            BUCKETS => {
                let le = match s.label("le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => match v.parse() {
                        Ok(v) => v,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                *pair.buckets.entry(Bound(le)).or_default() += s.value;
            }
            _ => {}
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub source: String,
    pub destination: String,
    pub rps: f64,
    /// `None` when no request finished in the window.
    pub success: Option<f64>,
    /// Seconds.
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

/// The window between two scrapes `secs` apart. A pair whose counters went
/// down (its proxy restarted) counts from zero.
pub fn rows(prev: &Counts, cur: &Counts, secs: f64) -> Vec<Row> {
    let empty = PairCounts::default();
    cur.iter()
        // A proxy makes its counters at config time: a pair that never
        // carried a request is a route, not traffic.
        .filter(|(_, c)| c.requests > 0.0)
        .map(|(pair, c)| {
            let mut p = prev.get(pair).unwrap_or(&empty);
            if c.requests < p.requests {
                p = &empty;
            }
            let requests = c.requests - p.requests;
            let errors = (c.errors - p.errors).max(0.0);
            let delta: Vec<(f64, f64)> = c
                .buckets
                .iter()
                .map(|(le, n)| {
                    (
                        le.0,
                        (n - p.buckets.get(le).copied().unwrap_or(0.0)).max(0.0),
                    )
                })
                .collect();
            Row {
                source: pair.0.clone(),
                destination: pair.1.clone(),
                rps: if secs > 0.0 { requests / secs } else { 0.0 },
                success: (requests > 0.0).then(|| (requests - errors) / requests),
                p50: quantile(0.5, &delta),
                p90: quantile(0.9, &delta),
                p99: quantile(0.99, &delta),
            }
        })
        .collect()
}

/// `q` of cumulative `buckets` (upper bound, count; sorted, `+Inf` last).
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                // Beyond the largest bound: all we know is "at least".
                return Some(prev.0);
            }
            let width = n - prev.1;
            let frac = if width > 0.0 {
                (rank - prev.1) / width
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, n);
    }
    Some(prev.0)
}

/// The table, fixed columns, sorted by pair.
pub fn render(rows: &[Row]) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |s| format!("{:.1}ms", s * 1000.0));
    let mut out = format!(
        "{:<32} {:>9} {:>8} {:>9} {:>9} {:>9}\n",
        "SOURCE -> DESTINATION", "RPS", "SUCCESS", "P50", "P90", "P99"
    );
    if rows.is_empty() {
        out.push_str("(no requests yet)\n");
    }
    for r in rows {
        out.push_str(&format!(
            "{:<32} {:>9.1} {:>8} {:>9} {:>9} {:>9}\n",
            format!("{} -> {}", r.source, r.destination),
            r.rps,
            r.success
                .map_or_else(|| "-".to_string(), |s| format!("{:.1}%", s * 100.0)),
            ms(r.p50),
            ms(r.p90),
            ms(r.p99),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::prom;

    #[test]
    fn destinations_from_cluster_names() {
        let cases = [
            (
                "outbound|9080|v1|reviews.default.svc.cluster.local",
                Some("reviews"),
            ),
            ("outbound|80||b.shop.svc.cluster.local", Some("b")),
            ("outbound|443||api.example.com", Some("api.example.com")),
            ("inbound|app", None),
            ("outbound|80", None),
            ("", None),
        ];
        for (c, want) in cases {
            assert_eq!(destination(c).as_deref(), want, "{c}");
        }
    }

    fn scrape(requests_2xx: u32, requests_5xx: u32, buckets: &[(&str, u32)]) -> Vec<Sample> {
        let c = "outbound|80|v1|b.default.svc.cluster.local";
        let mut text = format!(
            "trellis_requests_total{{direction=\"outbound\",route=\"r\",cluster=\"{c}\",code_class=\"2xx\"}} {requests_2xx}\n\
             trellis_requests_total{{direction=\"outbound\",route=\"r\",cluster=\"{c}\",code_class=\"5xx\"}} {requests_5xx}\n\
             trellis_requests_total{{direction=\"inbound\",route=\"r\",cluster=\"inbound|app\",code_class=\"2xx\"}} 1000\n"
        );
        for (le, n) in buckets {
            text.push_str(&format!(
                "trellis_request_duration_seconds_bucket{{direction=\"outbound\",cluster=\"{c}\",le=\"{le}\"}} {n}\n"
            ));
        }
        prom::parse(&text)
    }

    #[test]
    fn rates_success_and_quantiles_from_two_scrapes() {
        let mut prev = Counts::new();
        add(
            &mut prev,
            "a",
            &scrape(10, 0, &[("0.001", 10), ("0.002", 10), ("+Inf", 10)]),
        );
        let mut cur = Counts::new();
        // 100 more requests in 2 s: 10 failed; 50 under 1 ms, 40 in 1-2 ms, 10 beyond.
        add(
            &mut cur,
            "a",
            &scrape(100, 10, &[("0.001", 60), ("0.002", 100), ("+Inf", 110)]),
        );
        let r = rows(&prev, &cur, 2.0);
        assert_eq!(r.len(), 1, "inbound is not a pair: {r:?}");
        let r = &r[0];
        assert_eq!((r.source.as_str(), r.destination.as_str()), ("a", "b"));
        assert_eq!(r.rps, 50.0);
        assert_eq!(r.success, Some(0.9));
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-9;
        assert!(close(r.p50, 0.001), "{:?}", r.p50); // rank 50 = the end of the first bucket
        assert!(close(r.p90, 0.002), "{:?}", r.p90); // rank 90 = the end of the second
        assert!(close(r.p99, 0.002), "{:?}", r.p99); // in +Inf: the largest bound
        let text = render(std::slice::from_ref(r));
        assert!(
            text.contains("a -> b") && text.contains("90.0%") && text.contains("1.0ms"),
            "{text}"
        );
    }

    #[test]
    fn a_quiet_pair_and_a_restarted_proxy() {
        let mut prev = Counts::new();
        add(
            &mut prev,
            "a",
            &scrape(500, 0, &[("0.001", 500), ("+Inf", 500)]),
        );
        let quiet = rows(&prev, &prev, 1.0);
        assert_eq!(quiet[0].rps, 0.0);
        assert_eq!(quiet[0].success, None);
        assert_eq!(quiet[0].p50, None);
        let mut never = Counts::new();
        add(&mut never, "a", &scrape(0, 0, &[("+Inf", 0)]));
        assert_eq!(rows(&Counts::new(), &never, 1.0), []);
        let mut restarted = Counts::new();
        add(
            &mut restarted,
            "a",
            &scrape(4, 0, &[("0.001", 4), ("+Inf", 4)]),
        );
        assert_eq!(rows(&prev, &restarted, 1.0)[0].rps, 4.0);
    }

    #[test]
    fn quantile_interpolates_inside_a_bucket() {
        let b = [(0.1, 0.0), (0.2, 100.0), (f64::INFINITY, 100.0)];
        assert!((quantile(0.5, &b).unwrap() - 0.15).abs() < 1e-9);
        assert_eq!(quantile(0.5, &[(f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &[]), None);
    }

    #[test]
    fn proxies_of_one_service_add_up() {
        let mut c = Counts::new();
        add(&mut c, "a", &scrape(3, 1, &[("+Inf", 4)]));
        add(&mut c, "a", &scrape(5, 0, &[("+Inf", 5)]));
        let p = &c[&("a".to_string(), "b".to_string())];
        assert_eq!((p.requests, p.errors), (9.0, 1.0));
        assert_eq!(p.buckets[&Bound(f64::INFINITY)], 9.0);
    }
}
