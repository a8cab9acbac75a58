//! How long the toy model "thinks": a log-normal distribution around a
//! median, like real model-serving latency (most requests near the median,
//! a tail to the right). Sampled from a seed, so one request id always gets
//! the same latency on one workload: a rerun reproduces a slow request.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A latency distribution: log-normal with `median` and shape `sigma`,
/// clamped to [median/4, median*8] so one unlucky draw cannot stall a demo.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub median: Duration,
    pub sigma: f64,
}

impl Latency {
    /// v1, the bigger model: ~40 ms, p99 ~90 ms.
    pub const SLOW: Latency = Latency {
        median: Duration::from_millis(40),
        sigma: 0.35,
    };
    /// v2, the distilled model: ~10 ms, p99 ~23 ms.
    pub const FAST: Latency = Latency {
        median: Duration::from_millis(10),
        sigma: 0.35,
    };

    /// The latency for the request with this seed.
    pub fn sample(&self, seed: u64) -> Duration {
        let mut rng = StdRng::seed_from_u64(seed);
        // Box-Muller: a standard normal from two uniforms in (0, 1].
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let median = self.median.as_secs_f64();
        let secs = (median * (self.sigma * z).exp()).clamp(median / 4.0, median * 8.0);
        Duration::from_secs_f64(secs)
    }
}
