//! Active health checking of registered workloads (node metadata
//! `HEALTH_CHECK`, docs/xds.md "Node metadata"): one prober task per
//! registered workload that asks for a check, started and stopped with the
//! registration by [`crate::xds::Mesh`]. A probe is an HTTP GET (2xx/3xx is
//! a success) or a TCP connect, within the timeout; [`observe`] turns probe
//! results into the workload's health (consecutive-success and -failure
//! thresholds), and a change flips `healthy` in the registry (a new
//! generation, so EDS is pushed again).

use std::net::SocketAddr;
use std::sync::Weak;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::xds::Mesh;

/// What to probe (parsed from `HEALTH_CHECK`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: Probe,
    /// The workload's port to probe.
    pub port: u16,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy workload healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy workload unhealthy.
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// GET this path; 2xx and 3xx are healthy.
    Http { path: String },
    /// A TCP connect.
    Tcp,
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 2;

/// A workload's health and its current run of equal probe results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub healthy: bool,
    pub successes: u32,
    pub failures: u32,
}

impl Tally {
    /// A new registration starts healthy (as without a check).
    pub const START: Tally = Tally {
        healthy: true,
        successes: 0,
        failures: 0,
    };
}

/// The decision: `t` after one probe that succeeded (`ok`) or not.
pub fn observe(t: Tally, ok: bool, healthy_threshold: u32, unhealthy_threshold: u32) -> Tally {
    if ok {
        let successes = t.successes.saturating_add(1);
        Tally {
            healthy: t.healthy || successes >= healthy_threshold,
            successes,
            failures: 0,
        }
    } else {
        let failures = t.failures.saturating_add(1);
        Tally {
            healthy: t.healthy && failures < unhealthy_threshold,
            successes: 0,
            failures,
        }
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn http_client() -> HttpClient {
    // No pooled connections: every probe opens its own, as a new peer would.
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// One probe of `target`: whether it succeeded within the timeout.
pub async fn probe_once(client: &HttpClient, check: &HealthCheck, target: SocketAddr) -> bool {
    let attempt = async {
        match &check.probe {
            Probe::Tcp => tokio::net::TcpStream::connect(target).await.is_ok(),
            Probe::Http { path } => {
                let Ok(uri) = format!("http://{target}{path}").parse::<hyper::Uri>() else {
                    return false;
                };
                match client.get(uri).await {
                    Ok(resp) => {
                        let s = resp.status();
                        s.is_success() || s.is_redirection()
                    }
                    Err(_) => false,
                }
            }
        }
    };
    tokio::time::timeout(check.timeout, attempt)
        .await
        .unwrap_or(false)
}

/// Probes `target` every interval until the mesh goes away (or the task is
/// aborted), reporting every change of health to the mesh. Starts from
/// `healthy`: a new registration is healthy; one restored from the store
/// keeps its last known health until `healthy_threshold` successes (or
/// `unhealthy_threshold` failures) say otherwise.
pub async fn run(
    mesh: Weak<Mesh>,
    node_id: String,
    check: HealthCheck,
    target: SocketAddr,
    healthy: bool,
) {
    let client = http_client();
    let mut tally = Tally {
        healthy,
        ..Tally::START
    };
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if mesh.strong_count() == 0 {
            return;
        }
        let ok = probe_once(&client, &check, target).await;
        let next = observe(
            tally,
            ok,
            check.healthy_threshold,
            check.unhealthy_threshold,
        );
        if next.healthy != tally.healthy {
            let Some(mesh) = mesh.upgrade() else { return };
            tracing::info!(node = %node_id, %target, healthy = next.healthy, "workload health changed");
            mesh.set_healthy(&node_id, next.healthy);
        }
        tally = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        // (start healthy?, results, healthy threshold, unhealthy threshold, want healthy after each)
        type Case = (bool, &'static [bool], u32, u32, &'static [bool]);
        let cases: &[Case] = &[
            (true, &[false, false], 1, 2, &[true, false]),
            (true, &[false, true, false], 1, 2, &[true, true, true]),
            (true, &[false], 1, 1, &[false]),
            (false, &[true], 1, 2, &[true]),
            (
                false,
                &[true, false, true, true],
                2,
                2,
                &[false, false, false, true],
            ),
            (
                true,
                &[false, false, false, true],
                1,
                3,
                &[true, true, false, true],
            ),
            (true, &[true, true], 1, 2, &[true, true]),
        ];
        for (start, results, ht, ut, want) in cases {
            let mut t = Tally {
                healthy: *start,
                ..Tally::START
            };
            let got: Vec<bool> = results
                .iter()
                .map(|ok| {
                    t = observe(t, *ok, *ht, *ut);
                    t.healthy
                })
                .collect();
            assert_eq!(&got, want, "start {start}, results {results:?}, {ht}/{ut}");
        }
    }

    fn check(probe: Probe) -> HealthCheck {
        HealthCheck {
            probe,
            port: 0,
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(500),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
        }
    }

    #[tokio::test]
    async fn probes_tcp_and_http() {
        let client = http_client();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        assert!(probe_once(&client, &check(Probe::Tcp), addr).await);
        // An HTTP server that answers each request with the status its path names.
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let status = req.split(' ').nth(1).unwrap_or("/500")[1..].to_string();
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        for (path, want) in [
            ("/200", true),
            ("/302", true),
            ("/404", false),
            ("/503", false),
        ] {
            let c = check(Probe::Http { path: path.into() });
            assert_eq!(probe_once(&client, &c, addr).await, want, "{path}");
        }
        // Nothing listening.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(!probe_once(&client, &check(Probe::Tcp), closed).await);
        let c = check(Probe::Http {
            path: "/200".into(),
        });
        assert!(!probe_once(&client, &c, closed).await);
    }
}
