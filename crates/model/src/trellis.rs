//! Trellis's own kinds (`apiVersion: trellis.dev/v1alpha1`): policies Istio's
//! API has no place for. They follow the same rules as the Istio kinds:
//! strict fields, camelCase names, hosts resolved in the resource's namespace.

use serde::{Deserialize, Serialize};

/// The API version of every Trellis kind.
pub const API_VERSION: &str = "trellis.dev/v1alpha1";

/// A local token bucket for requests to `host`: each request takes a token,
/// and a request that finds the bucket empty is refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    /// A service or VirtualService host.
    pub host: String,
    /// Names of HTTP routes (`http[].name`) of the host's VirtualService. Empty:
    /// all requests to the host share one bucket. Otherwise each named route
    /// has its own bucket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    pub token_bucket: TokenBucket,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenBucket {
    /// The bucket's size, and how many tokens it starts with.
    pub max_tokens: u32,
    /// Tokens added every `fillInterval` (up to `maxTokens`); unset means `maxTokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_fill: Option<u32>,
    /// A duration, e.g. `1s`.
    pub fill_interval: String,
}

impl TokenBucket {
    /// Tokens added at each fill: `tokensPerFill`, defaulting to `maxTokens`.
    pub fn fill_tokens(&self) -> u32 {
        self.tokens_per_fill.unwrap_or(self.max_tokens)
    }
}

/// Linkerd's retry budget for one destination host: retries may add at most
/// `retryRatio` of the original requests (counted over `ttl`), plus
/// `minRetriesPerSecond` regardless of the ratio.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryBudgetSpec {
    /// A service host.
    pub host: String,
    #[serde(default = "default_retry_ratio")]
    pub retry_ratio: f64,
    #[serde(default = "default_min_retries_per_second")]
    pub min_retries_per_second: u32,
    #[serde(default = "default_ttl")]
    pub ttl: String,
}

fn default_retry_ratio() -> f64 {
    0.2
}

fn default_min_retries_per_second() -> u32 {
    10
}

fn default_ttl() -> String {
    "10s".to_string()
}
