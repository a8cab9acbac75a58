//! Load balancing: which endpoint of a cluster gets a request.
//!
//! A [`Balancer`] is built once per cluster (or subset) when config loads, from
//! plain data: the policy of the DestinationRule's
//! `trafficPolicy.loadBalancer` ([`LbPolicy`]), its `localityLbSetting`
//! ([`LocalityLb`]), the proxy's own [`Locality`] and the endpoints. Picks
//! take `&self` from any thread.
//!
//! A pick:
//! 1. groups: endpoints are split into locality priorities when the balancer
//!    is built (see `locality.rs`); the pick uses the lowest priority that has
//!    an eligible endpoint.
//! 2. eligibility: healthy, not ejected by outlier detection, and not in
//!    `exclude`. Retries pass the endpoints already tried; when every usable
//!    endpoint of every priority has been tried, `exclude` is ignored (a
//!    repeat beats a 503). Excluding the whole best priority sends the retry
//!    to the next one, which is usually what a retry wants. Panic: when fewer
//!    than `min_health_percent` of the cluster's endpoints are healthy and
//!    not ejected, ejections are ignored (Istio's `minHealthPercent`: "outlier
//!    detection will be disabled"), so a cluster whose endpoints all look bad
//!    spreads load over all of them instead of crushing the few left or
//!    answering 503.
//! 3. policy, within the priority (one file each): weighted smooth round
//!    robin, weighted random, least request (power of two choices), peak EWMA
//!    (power of two choices on latency × load), ring hash.
//!
//! The policies are pure functions over a weight table, an eligibility
//! predicate, loads and a random source, table-tested without sockets;
//! [`Balancer::pick`] wires in the endpoints' atomics and a per-thread
//! `SmallRng` (the only mutable state besides the atomics).
//!
//! Cost of a pick in the common case (the first choice is eligible): no
//! allocation, no lock; one `Arc` clone of the result; each eligibility check
//! is two relaxed atomic loads plus a linear scan of `exclude` (empty on first
//! attempts). The panic check is free with `min_health_percent` 0 (the
//! default); otherwise it is an O(n) scan of two atomics per endpoint on
//! each pick. Per policy:
//!
//! | policy | work |
//! |---|---|
//! | round robin | one relaxed `fetch_add` on a counter shared by all threads, then O(1) (table) or O(log n) |
//! | random | one RNG draw, O(log n) binary search on prefix sums |
//! | least request | two draws, two `active` loads |
//! | peak EWMA | two draws, one clock read, per candidate two loads and an `exp()` |
//! | ring hash | O(log ring size) binary search |
//!
//! When the first choice is not eligible, random draws are retried a few
//! times, then a pick falls back to an O(n) scan (no allocation); ring hash
//! walks the ring to the next eligible point. If no priority has an eligible
//! endpoint every pick scans all of them, O(n), and returns `None` (the proxy
//! answers 503 `no_healthy_upstream`).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub mod endpoint;
pub mod hash_key;
mod least_request;
mod locality;
mod peak_ewma;
mod random;
mod ring_hash;
mod round_robin;

pub use endpoint::{Endpoint, Locality, OutlierState, RequestGuard};
pub use hash_key::request_hash;
pub use peak_ewma::{DECAY as PEAK_EWMA_DECAY, DEFAULT_RTT as PEAK_EWMA_DEFAULT_RTT};
pub use ring_hash::{DEFAULT_MINIMUM_RING_SIZE, MAXIMUM_RING_SIZE};

use random::Weights;
use ring_hash::Ring;
use round_robin::RoundRobin;

/// The policy of a cluster, from Istio's `loadBalancer.simple` or
/// `loadBalancer.consistentHash`. The mesh default is `LeastRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LbPolicy {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Power of two choices on `active / weight`.
    #[default]
    LeastRequest,
    /// Weighted random.
    Random,
    /// Power of two choices on `latency estimate × (active + 1) / weight`
    /// (Trellis extension `PEAK_EWMA`).
    PeakEwma,
    /// Consistent hashing on a request key. `minimum_ring_size` 0 means
    /// [`DEFAULT_MINIMUM_RING_SIZE`].
    RingHash {
        key: HashKey,
        minimum_ring_size: u64,
    },
}

/// What a ring-hash request is hashed on; see [`request_hash`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HashKey {
    /// Istio `httpHeaderName`.
    Header(http::HeaderName),
    /// Istio `httpCookie.name`.
    Cookie { name: String },
    /// Istio `useSourceIp`.
    SourceIp,
    /// Istio `httpQueryParameterName`.
    QueryParam(String),
}

/// Istio's `localityLbSetting`. The default is enabled without failover, as
/// in Istio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalityLb {
    pub enabled: bool,
    /// `(from region, to region)`: when the proxy is in `from`, endpoints in
    /// `to` come before other regions.
    pub failover: Vec<(String, String)>,
}

impl Default for LocalityLb {
    fn default() -> Self {
        Self {
            enabled: true,
            failover: Vec::new(),
        }
    }
}

thread_local! {
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// The balancer of one cluster (or subset). `Send + Sync`; picks are `&self`.
#[derive(Debug)]
pub struct Balancer {
    policy: LbPolicy,
    endpoints: Vec<Arc<Endpoint>>,
    /// Non-empty priority levels, best first.
    levels: Vec<Level>,
    /// Istio `outlierDetection.minHealthPercent`; 0 disables panic.
    min_health_percent: u32,
}

#[derive(Debug)]
struct Level {
    priority: u8,
    endpoints: Vec<Arc<Endpoint>>,
    weights: Weights,
    algo: Algo,
}

#[derive(Debug)]
enum Algo {
    RoundRobin(RoundRobin),
    LeastRequest,
    Random,
    PeakEwma,
    RingHash(Ring),
}

impl Balancer {
    /// Groups `endpoints` by locality priority relative to `local` and
    /// prepares the policy's tables (round-robin cycle, hash ring).
    pub fn new(
        policy: LbPolicy,
        locality_lb: LocalityLb,
        local: &Locality,
        endpoints: Vec<Arc<Endpoint>>,
    ) -> Self {
        Self::with_seed(policy, &locality_lb, local, endpoints, rand::random())
    }

    /// `seed` is where round-robin cycles start.
    fn with_seed(
        policy: LbPolicy,
        locality_lb: &LocalityLb,
        local: &Locality,
        endpoints: Vec<Arc<Endpoint>>,
        seed: u64,
    ) -> Self {
        let mut grouped: [Vec<Arc<Endpoint>>; locality::LEVELS] = Default::default();
        for e in &endpoints {
            let p = locality::priority(local, &e.locality, locality_lb);
            grouped[usize::from(p)].push(Arc::clone(e));
        }
        Self::from_groups(policy, endpoints, grouped, seed)
    }

    /// Endpoints already grouped by priority (0 is best), as an xDS control
    /// plane sends them: it computed the priorities relative to this proxy's
    /// locality, with the failover rules it knows and the proxy does not.
    /// Priorities beyond the last level join the last level.
    pub fn with_priorities(policy: LbPolicy, endpoints: Vec<(u8, Arc<Endpoint>)>) -> Self {
        let mut grouped: [Vec<Arc<Endpoint>>; locality::LEVELS] = Default::default();
        for (p, e) in &endpoints {
            grouped[usize::from(*p).min(locality::LEVELS - 1)].push(Arc::clone(e));
        }
        let all = endpoints.into_iter().map(|(_, e)| e).collect();
        Self::from_groups(policy, all, grouped, rand::random())
    }

    fn from_groups(
        policy: LbPolicy,
        endpoints: Vec<Arc<Endpoint>>,
        grouped: [Vec<Arc<Endpoint>>; locality::LEVELS],
        seed: u64,
    ) -> Self {
        let levels = (0u8..)
            .zip(grouped)
            .filter(|(_, eps)| !eps.is_empty())
            .map(|(priority, eps)| Level::new(priority, eps, &policy, seed))
            .collect();
        Self {
            policy,
            endpoints,
            levels,
            min_health_percent: 0,
        }
    }

    /// Sets Istio's `outlierDetection.minHealthPercent` (0 to 100, default 0:
    /// never panic). Builder-style so `Balancer::new` keeps its signature;
    /// the config layer chains it when a DestinationRule sets outlier
    /// detection: `Balancer::new(..).with_min_health_percent(p)`.
    ///
    /// The share is over all the cluster's endpoints, not per locality
    /// priority: Istio describes it per load-balancing pool. In panic only
    /// ejections are ignored; endpoints marked unhealthy stay skipped
    /// (Envoy would route to those too, but nothing in Trellis marks an
    /// endpoint unhealthy without proof it cannot serve).
    pub fn with_min_health_percent(mut self, percent: u32) -> Self {
        self.min_health_percent = percent;
        self
    }

    /// See [`with_min_health_percent`](Self::with_min_health_percent).
    pub fn min_health_percent(&self) -> u32 {
        self.min_health_percent
    }

    /// Whether ejections are being ignored because fewer than
    /// `min_health_percent` of the endpoints are healthy and not ejected
    /// (for picks, `/config_dump` and a panic gauge).
    pub fn in_panic(&self) -> bool {
        let n = self.endpoints.len() as u64;
        if self.min_health_percent == 0 || n == 0 {
            return false;
        }
        let usable = self
            .endpoints
            .iter()
            .filter(|e| e.is_healthy() && !e.is_ejected())
            .count() as u64;
        100 * usable < u64::from(self.min_health_percent) * n
    }

    /// All endpoints, in the order given.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    pub fn policy(&self) -> &LbPolicy {
        &self.policy
    }

    /// The locality priorities that have endpoints, best first (0 = same
    /// subzone … 4 = elsewhere), for `/config_dump`.
    pub fn priorities(&self) -> impl Iterator<Item = (u8, &[Arc<Endpoint>])> {
        self.levels
            .iter()
            .map(|l| (l.priority, l.endpoints.as_slice()))
    }

    /// Chooses an endpoint. `hash` is the request's consistent-hash key
    /// (from [`request_hash`]; used only by `RingHash`, which picks at random
    /// when it is `None`). `exclude` holds endpoints already tried, avoided
    /// while another usable one exists. `None` when no endpoint is usable
    /// (healthy, and not ejected unless the cluster is in panic).
    pub fn pick(&self, hash: Option<u64>, exclude: &[SocketAddr]) -> Option<Arc<Endpoint>> {
        RNG.with_borrow_mut(|rng| self.pick_inner(hash, exclude, rng, None))
    }

    /// [`pick`](Self::pick) with an explicit random source and clock (read
    /// only by `PeakEwma`): deterministic for tests and simulations.
    pub fn pick_with(
        &self,
        hash: Option<u64>,
        exclude: &[SocketAddr],
        rng: &mut impl Rng,
        now: Instant,
    ) -> Option<Arc<Endpoint>> {
        self.pick_inner(hash, exclude, rng, Some(now))
    }

    fn pick_inner(
        &self,
        hash: Option<u64>,
        exclude: &[SocketAddr],
        rng: &mut impl Rng,
        mut now: Option<Instant>,
    ) -> Option<Arc<Endpoint>> {
        let panic = self.in_panic();
        let usable = |e: &Endpoint| e.is_healthy() && (panic || !e.is_ejected());
        let untried = |e: &Endpoint| usable(e) && !exclude.contains(&e.addr);
        if let Some(e) = self.pick_best_level(hash, &untried, rng, &mut now) {
            return Some(e);
        }
        if exclude.is_empty() {
            return None;
        }
        self.pick_best_level(hash, &usable, rng, &mut now)
    }

    fn pick_best_level(
        &self,
        hash: Option<u64>,
        eligible: &impl Fn(&Endpoint) -> bool,
        rng: &mut impl Rng,
        now: &mut Option<Instant>,
    ) -> Option<Arc<Endpoint>> {
        self.levels.iter().find_map(|level| {
            let i = level.pick(hash, eligible, rng, now)?;
            Some(Arc::clone(&level.endpoints[i]))
        })
    }
}

impl Level {
    fn new(priority: u8, endpoints: Vec<Arc<Endpoint>>, policy: &LbPolicy, seed: u64) -> Self {
        let weights = Weights::new(endpoints.iter().map(|e| e.weight));
        let algo = match policy {
            LbPolicy::RoundRobin => Algo::RoundRobin(RoundRobin::new(&weights, seed)),
            LbPolicy::LeastRequest => Algo::LeastRequest,
            LbPolicy::Random => Algo::Random,
            LbPolicy::PeakEwma => Algo::PeakEwma,
            LbPolicy::RingHash {
                minimum_ring_size, ..
            } => {
                let points: Vec<_> = endpoints.iter().map(|e| (e.addr, e.weight)).collect();
                Algo::RingHash(Ring::new(&points, *minimum_ring_size))
            }
        };
        Self {
            priority,
            endpoints,
            weights,
            algo,
        }
    }

    /// An eligible index of this level; `None` only when none is eligible.
    fn pick(
        &self,
        hash: Option<u64>,
        eligible: &impl Fn(&Endpoint) -> bool,
        rng: &mut impl Rng,
        now: &mut Option<Instant>,
    ) -> Option<usize> {
        let ok = |i: usize| eligible(&self.endpoints[i]);
        match &self.algo {
            Algo::RoundRobin(rr) => rr.pick(&self.weights, ok, rng),
            Algo::Random => random::pick(&self.weights, ok, rng),
            Algo::LeastRequest => {
                least_request::pick(&self.weights, |i| self.endpoints[i].active(), ok, rng)
            }
            Algo::PeakEwma => {
                let now = *now.get_or_insert_with(Instant::now);
                let cost = |i: usize| {
                    let e = &self.endpoints[i];
                    peak_ewma::cost(e.estimate_ns(now), e.active(), e.weight)
                };
                peak_ewma::pick(&self.weights, cost, ok, rng)
            }
            Algo::RingHash(ring) => match hash {
                Some(h) => ring.pick(h, self.endpoints.len(), ok),
                None => random::pick(&self.weights, ok, rng),
            },
        }
    }
}

#[cfg(test)]
mod tests;
