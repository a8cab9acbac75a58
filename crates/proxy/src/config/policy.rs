//! Istio's resilience fields -> the proxy's policy values: retries, faults,
//! connection pools, outlier detection, retry budgets, rate limits. Pure
//! functions over validated resources (the validator already rejected what
//! they cannot convert, so a failure here is a bug, reported as an error
//! rather than a panic).

use std::time::Duration;

use trellis_model::duration;
use trellis_model::networking::{
    ConnectionPoolSettings, HttpFaultInjection, HttpRetry, OutlierDetection, TrafficPolicy,
};
use trellis_model::policy::grpc_code;
use trellis_model::trellis::{RetryBudgetSpec, TokenBucket};

use crate::http::pool::{TcpKeepalive, UpstreamSettings};
use crate::resilience::breaker::Limits;
use crate::resilience::budget::BudgetSettings;
use crate::resilience::fault::{Abort, FaultPolicy};
use crate::resilience::outlier::OutlierSettings;
use crate::resilience::retry::RetryPolicy;

/// A field that failed to convert: (path below the route or policy, reason).
pub type FieldError = (String, String);

fn dur(field: &str, v: &str) -> Result<Duration, FieldError> {
    duration::parse(v).map_err(|e| (field.to_string(), e))
}

/// `retries`, or Istio's default policy when the route sets none.
pub fn retry_policy(r: Option<&HttpRetry>) -> Result<RetryPolicy, FieldError> {
    let Some(r) = r else {
        return Ok(RetryPolicy::istio_default());
    };
    let retry_on = r
        .conditions()
        .map_err(|e| ("retries.retryOn".to_string(), e))?;
    let per_try_timeout = r
        .per_try_timeout
        .as_deref()
        .map(|t| dur("retries.perTryTimeout", t))
        .transpose()?
        .filter(|d| !d.is_zero());
    Ok(RetryPolicy {
        // Istio: a `retries` block without `attempts` turns retries off.
        retries: r.num_retries(),
        per_try_timeout,
        retry_on,
        retry_remote_localities: r.retry_remote_localities.unwrap_or(false),
        ignore_previous_hosts: r.retry_ignore_previous_hosts.unwrap_or(true),
    })
}

pub fn fault_policy(f: &HttpFaultInjection) -> Result<FaultPolicy, FieldError> {
    let delay = match &f.delay {
        Some(d) => {
            let fixed = d
                .fixed_delay
                .as_deref()
                .ok_or(("fault.delay.fixedDelay".to_string(), "required".to_string()))?;
            Some((
                dur("fault.delay.fixedDelay", fixed)?,
                d.effective_percentage(),
            ))
        }
        None => None,
    };
    let abort = match &f.abort {
        Some(a) => {
            let what = match (a.http_status, a.grpc_status.as_deref()) {
                (Some(s), _) => Abort::Http(u16::try_from(s).unwrap_or(500)),
                (None, Some(g)) => Abort::Grpc(grpc_code(g).ok_or((
                    "fault.abort.grpcStatus".to_string(),
                    format!("unknown gRPC status {g:?}"),
                ))?),
                (None, None) => {
                    return Err((
                        "fault.abort".to_string(),
                        "needs httpStatus or grpcStatus".to_string(),
                    ));
                }
            };
            Some((what, a.effective_percentage()))
        }
        None => None,
    };
    Ok(FaultPolicy { delay, abort })
}

/// Istio's precedence for a per-port policy field: the subset's policy over
/// the rule's, and within each a `portLevelSettings` entry over the general
/// one.
pub fn effective<'p, T>(
    base: Option<&'p TrafficPolicy>,
    own: Option<&'p TrafficPolicy>,
    port: u16,
    general: impl Fn(&'p TrafficPolicy) -> Option<&'p T>,
    per_port: impl Fn(&'p trellis_model::networking::PortTrafficPolicy) -> Option<&'p T>,
) -> Option<&'p T> {
    let from = |tp: Option<&'p TrafficPolicy>| {
        tp.and_then(|tp| {
            tp.port_level_settings
                .iter()
                .find(|p| p.port.number == u32::from(port))
                .and_then(&per_port)
                .or_else(|| general(tp))
        })
    };
    from(own).or_else(|| from(base))
}

fn limit(v: Option<i32>) -> u32 {
    v.and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(u32::MAX)
}

/// `connectionPool` -> how connections are made and kept, and the limits.
pub fn connection_pool(
    cp: Option<&ConnectionPoolSettings>,
) -> Result<(UpstreamSettings, Limits), FieldError> {
    let mut up = UpstreamSettings::default();
    let mut limits = Limits::default();
    let Some(cp) = cp else {
        return Ok((up, limits));
    };
    if let Some(tcp) = &cp.tcp {
        limits.max_connections = limit(tcp.max_connections);
        if let Some(t) = tcp.connect_timeout.as_deref() {
            up.connect_timeout = dur("connectionPool.tcp.connectTimeout", t)?;
        }
        if let Some(k) = &tcp.tcp_keepalive {
            up.keepalive = Some(TcpKeepalive {
                time: k
                    .time
                    .as_deref()
                    .map(|t| dur("connectionPool.tcp.tcpKeepalive.time", t))
                    .transpose()?,
                interval: k
                    .interval
                    .as_deref()
                    .map(|t| dur("connectionPool.tcp.tcpKeepalive.interval", t))
                    .transpose()?,
                probes: k.probes,
            });
        }
    }
    if let Some(http) = &cp.http {
        limits.max_pending = limit(http.http1_max_pending_requests);
        limits.max_requests = limit(http.http2_max_requests);
        limits.max_retries = match http.max_retries {
            // Istio: maxRetries 0 is "unset" (unlimited), as for the others.
            Some(n) if n > 0 => u32::try_from(n).unwrap_or(u32::MAX),
            _ => u32::MAX,
        };
        up.max_requests_per_connection = http
            .max_requests_per_connection
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0);
        if let Some(t) = http.idle_timeout.as_deref() {
            up.idle_timeout = dur("connectionPool.http.idleTimeout", t)?;
        }
    }
    Ok((up, limits))
}

/// `outlierDetection` -> the detector's settings, Istio's defaults filled in.
pub fn outlier(od: &OutlierDetection) -> Result<OutlierSettings, FieldError> {
    let d = OutlierSettings::default();
    let pct = |v: Option<i32>, default: u32| v.map_or(default, |v| u32::try_from(v).unwrap_or(0));
    Ok(OutlierSettings {
        // 0 disables a counter, as in Istio.
        consecutive_5xx: match od.consecutive_5xx_errors {
            Some(0) => None,
            Some(n) => Some(n),
            None => d.consecutive_5xx,
        },
        consecutive_gateway: od.consecutive_gateway_errors.filter(|n| *n > 0),
        interval: match od.interval.as_deref() {
            Some(t) => dur("outlierDetection.interval", t)?,
            None => d.interval,
        },
        base_ejection_time: match od.base_ejection_time.as_deref() {
            Some(t) => dur("outlierDetection.baseEjectionTime", t)?,
            None => d.base_ejection_time,
        },
        max_ejection_percent: pct(od.max_ejection_percent, d.max_ejection_percent),
        min_health_percent: pct(od.min_health_percent, d.min_health_percent),
    })
}

pub fn budget(rb: Option<&RetryBudgetSpec>) -> Result<BudgetSettings, FieldError> {
    let Some(rb) = rb else {
        return Ok(BudgetSettings::default());
    };
    Ok(BudgetSettings {
        ratio: rb.retry_ratio,
        min_per_sec: rb.min_retries_per_second,
        ttl: dur("spec.ttl", &rb.ttl)?,
    })
}

/// (max tokens, tokens per fill, fill interval).
pub fn token_bucket(tb: &TokenBucket) -> Result<(u32, u32, Duration), FieldError> {
    Ok((
        tb.max_tokens,
        tb.fill_tokens(),
        dur("spec.tokenBucket.fillInterval", &tb.fill_interval)?,
    ))
}

#[cfg(test)]
mod tests {
    use trellis_model::networking::{FaultAbort, FaultDelay, HttpSettings, TcpSettings};

    use super::*;

    #[test]
    fn no_retries_block_is_istios_default() {
        let p = retry_policy(None).unwrap();
        assert_eq!(p, RetryPolicy::istio_default());
        assert_eq!(p.retries, 2);
    }

    #[test]
    fn retries_block_fills_in_defaults() {
        let cases: [(HttpRetry, u32, Option<Duration>, bool); 3] = [
            (
                HttpRetry {
                    attempts: Some(3),
                    retry_on: Some("5xx".into()),
                    ..Default::default()
                },
                3,
                None,
                true,
            ),
            (
                HttpRetry {
                    attempts: Some(0),
                    per_try_timeout: Some("250ms".into()),
                    ..Default::default()
                },
                0,
                Some(Duration::from_millis(250)),
                false,
            ),
            (HttpRetry::default(), 0, None, false),
        ];
        for (r, retries, per_try, five_xx) in cases {
            let p = retry_policy(Some(&r)).unwrap();
            assert_eq!(p.retries, retries, "{r:?}");
            assert_eq!(p.per_try_timeout, per_try, "{r:?}");
            assert_eq!(p.retry_on.five_xx, five_xx, "{r:?}");
        }
    }

    #[test]
    fn fault_percentages_default_to_all() {
        let f = HttpFaultInjection {
            delay: Some(FaultDelay {
                fixed_delay: Some("5s".into()),
                percent: Some(10),
                ..Default::default()
            }),
            abort: Some(FaultAbort {
                grpc_status: Some("UNAVAILABLE".into()),
                ..Default::default()
            }),
        };
        let p = fault_policy(&f).unwrap();
        assert_eq!(p.delay, Some((Duration::from_secs(5), 10.0)));
        assert_eq!(p.abort, Some((Abort::Grpc(14), 100.0)));
    }

    #[test]
    fn connection_pool_limits_and_settings() {
        let cp = ConnectionPoolSettings {
            tcp: Some(TcpSettings {
                max_connections: Some(4),
                connect_timeout: Some("250ms".into()),
                ..Default::default()
            }),
            http: Some(HttpSettings {
                http1_max_pending_requests: Some(2),
                http2_max_requests: Some(100),
                max_requests_per_connection: Some(1),
                max_retries: Some(0),
                idle_timeout: Some("1s".into()),
                ..Default::default()
            }),
        };
        let (up, limits) = connection_pool(Some(&cp)).unwrap();
        assert_eq!(limits.max_connections, 4);
        assert_eq!(limits.max_pending, 2);
        assert_eq!(limits.max_requests, 100);
        assert_eq!(limits.max_retries, u32::MAX);
        assert_eq!(up.connect_timeout, Duration::from_millis(250));
        assert_eq!(up.idle_timeout, Duration::from_secs(1));
        assert_eq!(up.max_requests_per_connection, Some(1));
        let (up, limits) = connection_pool(None).unwrap();
        assert_eq!(
            (up, limits),
            (UpstreamSettings::default(), Limits::default())
        );
    }

    #[test]
    fn outlier_zero_disables_a_counter() {
        let od = OutlierDetection {
            consecutive_5xx_errors: Some(0),
            consecutive_gateway_errors: Some(3),
            ..Default::default()
        };
        let s = outlier(&od).unwrap();
        assert_eq!(s.consecutive_5xx, None);
        assert_eq!(s.consecutive_gateway, Some(3));
        let s = outlier(&OutlierDetection::default()).unwrap();
        assert_eq!(s.consecutive_5xx, Some(5));
    }
}
