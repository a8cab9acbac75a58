//! Route policies in Envoy's terms: retries, faults, mirrors' fractions,
//! local rate limits and header edits.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{RetryPolicy, retry_policy};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket, fractional_percent};
use trellis_model::RetryOn;
use trellis_model::networking::{HeaderOperations, HttpRetry};
use trellis_model::policy::grpc_code;
use trellis_model::resource::Object;
use trellis_model::trellis::RateLimitPolicySpec;

use crate::encode::{self, duration, u32v};
use crate::error::{At, TranslateError};

/// Envoy's (and trellis-proxy's) retry backoff: 25 ms base, 250 ms cap.
pub const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(25);
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// Istio's number of host picks a retry makes to avoid a previous host.
pub const HOST_SELECTION_RETRY_MAX_ATTEMPTS: i64 = 5;
/// Envoy's local rate limit refuses fill intervals under 50 ms.
pub const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);
/// The header trellis-proxy explains its local replies with.
pub const REASON_HEADER: &str = "x-trellis-reason";

/// Istio's default retry policy, for routes without `retries`.
pub fn istio_default_retry() -> RetryPolicy {
    retry_policy_for(&RetryOn::istio_default(), 2, None, true, false)
}

pub(super) fn retry_on_string(r: &RetryOn) -> String {
    let tokens = [
        (r.five_xx, "5xx"),
        (r.gateway_error, "gateway-error"),
        (r.reset, "reset"),
        (r.connect_failure, "connect-failure"),
        (r.refused_stream, "refused-stream"),
        (r.retriable_4xx, "retriable-4xx"),
        (r.grpc_unavailable, "unavailable"),
        (r.grpc_cancelled, "cancelled"),
        (r.grpc_deadline_exceeded, "deadline-exceeded"),
        (r.grpc_internal, "internal"),
        (r.grpc_resource_exhausted, "resource-exhausted"),
        (!r.status_codes.is_empty(), "retriable-status-codes"),
    ];
    tokens
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, t)| *t)
        .collect::<Vec<_>>()
        .join(",")
}

fn retry_policy_for(
    on: &RetryOn,
    retries: u32,
    per_try: Option<Duration>,
    ignore_previous_hosts: bool,
    remote_localities: bool,
) -> RetryPolicy {
    let mut p = RetryPolicy {
        retry_on: retry_on_string(on),
        num_retries: Some(u32v(retries)),
        per_try_timeout: per_try.map(duration),
        retriable_status_codes: on.status_codes.iter().map(|c| u32::from(*c)).collect(),
        retry_back_off: Some(retry_policy::RetryBackOff {
            base_interval: Some(duration(RETRY_BACKOFF_BASE)),
            max_interval: Some(duration(RETRY_BACKOFF_MAX)),
        }),
        ..Default::default()
    };
    if ignore_previous_hosts {
        p.retry_host_predicate = vec![retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".to_string(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                encode::any(&PreviousHostsPredicate {}),
            )),
        }];
        p.host_selection_retry_max_attempts = HOST_SELECTION_RETRY_MAX_ATTEMPTS;
    }
    if remote_localities {
        // Retries go to other priorities (localities), as Istio configures
        // `retryRemoteLocalities: true`. Without it a retry stays in the
        // priority the balancer picks from, as in trellis-proxy.
        p.retry_priority = Some(retry_policy::RetryPriority {
            name: "envoy.retry_priorities.previous_priorities".to_string(),
            config_type: Some(retry_policy::retry_priority::ConfigType::TypedConfig(
                encode::any(&PreviousPrioritiesConfig {
                    update_frequency: 2,
                }),
            )),
        });
    }
    p
}

/// `retries` -> Envoy's retry policy. None when the route does not retry.
pub(super) fn retry_policy(
    r: Option<&HttpRetry>,
    at: &At,
) -> Result<Option<RetryPolicy>, TranslateError> {
    let Some(r) = r else {
        return Ok(Some(istio_default_retry()));
    };
    let on = r
        .conditions()
        .map_err(|e| at.field("retries.retryOn").value(e))?;
    let per_try = r
        .per_try_timeout
        .as_deref()
        .map(|t| at.field("retries.perTryTimeout").duration(t))
        .transpose()?
        .filter(|d| !d.is_zero());
    let retries = r.num_retries();
    // A `retries` block without attempts turns retries off (Istio); its
    // perTryTimeout still bounds the one try, as in trellis-proxy.
    if retries == 0 && per_try.is_none() {
        return Ok(None);
    }
    Ok(Some(retry_policy_for(
        &on,
        retries,
        per_try,
        r.retry_ignore_previous_hosts.unwrap_or(true),
        r.retry_remote_localities.unwrap_or(false),
    )))
}

/// A percentage (0 to 100, fractions allowed) as Envoy's fraction per million.
pub fn fraction(percent: f64) -> FractionalPercent {
    let per_million = (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
    FractionalPercent {
        numerator: per_million,
        denominator: fractional_percent::DenominatorType::Million as i32,
    }
}

fn all_of_them() -> RuntimeFractionalPercent {
    RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: fractional_percent::DenominatorType::Hundred as i32,
        }),
        runtime_key: String::new(),
    }
}

/// `fault` -> the fault filter's per-route config.
pub(super) fn fault(
    f: &trellis_model::networking::HttpFaultInjection,
    at: &At,
) -> Result<HttpFault, TranslateError> {
    let mut out = HttpFault::default();
    if let Some(d) = &f.delay {
        let at = at.field("fault.delay.fixedDelay");
        let fixed = d
            .fixed_delay
            .as_deref()
            .ok_or_else(|| at.value("required"))?;
        out.delay = Some(FaultDelay {
            percentage: Some(fraction(d.effective_percentage())),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(
                at.duration(fixed)?,
            ))),
        });
    }
    if let Some(a) = &f.abort {
        let error = match (a.http_status, a.grpc_status.as_deref()) {
            (Some(s), _) => fault_abort::ErrorType::HttpStatus(
                u32::try_from(s)
                    .map_err(|_| at.field("fault.abort.httpStatus").value("negative"))?,
            ),
            (None, Some(g)) => {
                fault_abort::ErrorType::GrpcStatus(grpc_code(g).ok_or_else(|| {
                    at.field("fault.abort.grpcStatus")
                        .value(format!("unknown gRPC status {g:?}"))
                })?)
            }
            (None, None) => {
                return Err(at
                    .field("fault.abort")
                    .value("needs httpStatus or grpcStatus"));
            }
        };
        out.abort = Some(FaultAbort {
            percentage: Some(fraction(a.effective_percentage())),
            error_type: Some(error),
            ..Default::default()
        });
    }
    Ok(out)
}

/// A RateLimitPolicy's bucket as the local rate limit filter's per-route
/// config. Envoy's buckets are refilled at least every 50 ms: a shorter
/// `fillInterval` is scaled up with its tokens, same rate.
pub fn local_rate_limit(
    o: &Object<RateLimitPolicySpec>,
    route: Option<&str>,
) -> Result<LocalRateLimit, TranslateError> {
    let at = At::new(
        format!("RateLimitPolicy {}", o.key()),
        "spec.tokenBucket.fillInterval",
    );
    let tb = &o.spec.token_bucket;
    let mut interval = at.duration(&tb.fill_interval)?;
    let mut per_fill = tb.fill_tokens();
    if !interval.is_zero() && interval < MIN_FILL_INTERVAL {
        let factor = MIN_FILL_INTERVAL.as_nanos().div_ceil(interval.as_nanos());
        let factor = u32::try_from(factor).unwrap_or(u32::MAX);
        interval = interval.saturating_mul(factor);
        per_fill = per_fill.saturating_mul(factor);
    }
    let policy = match route {
        Some(r) => format!("{}|{r}", o.key()),
        None => o.key(),
    };
    Ok(LocalRateLimit {
        // Stats per policy, as trellis-proxy's `trellis_rate_limited_total{policy}`.
        stat_prefix: format!("trellis_rate_limit_{}", stat_safe(&policy)),
        token_bucket: Some(TokenBucket {
            max_tokens: tb.max_tokens,
            tokens_per_fill: Some(u32v(per_fill)),
            fill_interval: Some(duration(interval)),
        }),
        filter_enabled: Some(all_of_them()),
        filter_enforced: Some(all_of_them()),
        response_headers_to_add: vec![header_option(
            REASON_HEADER,
            "rate_limited",
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        )],
        ..Default::default()
    })
}

/// Envoy stat names use `.` as a separator: keep letters, digits and `_`.
fn stat_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn header_option(name: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_ascii_lowercase(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

/// Header edits: `set` overwrites, `add` appends, `remove` removes (Envoy
/// removes before it adds, as trellis-proxy does).
pub(super) struct Edits {
    pub(super) add: Vec<HeaderValueOption>,
    pub(super) remove: Vec<String>,
}

pub(super) fn edits(ops: Option<&HeaderOperations>) -> Edits {
    let Some(ops) = ops else {
        return Edits {
            add: Vec::new(),
            remove: Vec::new(),
        };
    };
    let mut add: Vec<HeaderValueOption> = ops
        .set
        .iter()
        .map(|(k, v)| header_option(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .collect();
    add.extend(
        ops.add
            .iter()
            .map(|(k, v)| header_option(k, v, HeaderAppendAction::AppendIfExistsOrAdd)),
    );
    Edits {
        add,
        remove: ops.remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
    }
}
