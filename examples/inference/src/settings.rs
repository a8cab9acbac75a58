//! Who this process is in the mesh and how it reaches the next hop, from the
//! environment `trellis up` sets (see the README's contract) and flags.
//!
//! Both are resolved by pure functions over a variable lookup, so they are
//! tested without touching the process's environment.

use std::time::Duration;

use thiserror::Error;

/// The workload's identity, recorded in every hop of an answer's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub service: String,
    pub namespace: String,
    pub workload: String,
    /// The version name (`v1`), empty when the service has one deployment.
    pub version: String,
}

impl Identity {
    /// From `TRELLIS_SERVICE`, `TRELLIS_NAMESPACE`, `TRELLIS_WORKLOAD` and
    /// `TRELLIS_VERSION`; outside a mesh (run by hand) the service is the
    /// role's name and the workload `<service>-local`.
    pub fn from_env(default_service: &str, env: impl Fn(&str) -> Option<String>) -> Identity {
        let get = |key: &str| env(key).filter(|v| !v.is_empty());
        let service = get("TRELLIS_SERVICE").unwrap_or_else(|| default_service.to_string());
        let workload = get("TRELLIS_WORKLOAD").unwrap_or_else(|| format!("{service}-local"));
        Identity {
            namespace: get("TRELLIS_NAMESPACE").unwrap_or_else(|| "default".to_string()),
            version: get("TRELLIS_VERSION").unwrap_or_default(),
            service,
            workload,
        }
    }
}

/// How requests for `http://<service>:<port>/...` leave this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// An HTTP proxy (the sidecar's outbound listener as `HTTP_PROXY`): every
    /// connection goes to `host:port`, requests in absolute form.
    Proxy(String),
    /// The sidecar's outbound listener as a plain address
    /// (`TRELLIS_OUTBOUND`): every connection goes there, requests in origin
    /// form with a `Host` header.
    Outbound(String),
    /// No mesh: connect to the URL's host and port (running by hand).
    Direct,
}

impl Via {
    /// The address every connection goes to, if not the URL's.
    pub fn fixed_addr(&self) -> Option<&str> {
        match self {
            Via::Proxy(a) | Via::Outbound(a) => Some(a),
            Via::Direct => None,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error(
        "{source_name}={value:?} is not a plain-HTTP proxy address: expected http://HOST:PORT (the sidecar's outbound listener)"
    )]
    BadProxy { source_name: String, value: String },
    #[error("{source_name}={value:?} is not HOST:PORT (the sidecar's outbound listener)")]
    BadOutbound { source_name: String, value: String },
    #[error("--{flag} {value:?}: {reason}")]
    BadFlag {
        flag: &'static str,
        value: String,
        reason: String,
    },
}

/// Picks the way out. Flags win over the environment; `HTTP_PROXY` (or
/// `http_proxy`) wins over `TRELLIS_OUTBOUND` because every HTTP client
/// honours it, which is the point of the demo: no mesh-specific code.
pub fn resolve_via(
    flag_proxy: Option<&str>,
    flag_outbound: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Via, SettingsError> {
    if let Some(p) = flag_proxy {
        return proxy_addr("--proxy", p).map(Via::Proxy);
    }
    if let Some(o) = flag_outbound {
        return host_port("--outbound", o).map(Via::Outbound);
    }
    for key in ["HTTP_PROXY", "http_proxy"] {
        if let Some(p) = env(key).filter(|v| !v.is_empty()) {
            return proxy_addr(key, &p).map(Via::Proxy);
        }
    }
    if let Some(o) = env("TRELLIS_OUTBOUND").filter(|v| !v.is_empty()) {
        return host_port("TRELLIS_OUTBOUND", &o).map(Via::Outbound);
    }
    Ok(Via::Direct)
}

fn proxy_addr(source_name: &str, value: &str) -> Result<String, SettingsError> {
    let bad = || SettingsError::BadProxy {
        source_name: source_name.to_string(),
        value: value.to_string(),
    };
    let rest = match value.split_once("://") {
        Some(("http", rest)) => rest,
        Some(_) => return Err(bad()),
        None => value,
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '@']) {
        return Err(bad());
    }
    let with_port = if has_port(authority) {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    host_port(source_name, &with_port).map_err(|_| bad())
}

fn has_port(authority: &str) -> bool {
    authority
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && !host.ends_with(':') && !port.is_empty())
}

fn host_port(source_name: &str, value: &str) -> Result<String, SettingsError> {
    // An IPv6 host must be bracketed, so the last ':' is the port's.
    let ok = value.rsplit_once(':').is_some_and(|(host, port)| {
        let host_ok = !host.is_empty()
            && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
        host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if ok {
        Ok(value.to_string())
    } else {
        Err(SettingsError::BadOutbound {
            source_name: source_name.to_string(),
            value: value.to_string(),
        })
    }
}

/// `250ms`, `2s`, `1m`: the forms the mesh file uses too.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("{s:?} has no unit: write e.g. 250ms, 2s or 1m"))?;
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}
