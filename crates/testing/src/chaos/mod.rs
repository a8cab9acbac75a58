//! `ChaosServer`: an HTTP/1.1 + h2c + gRPC upstream that misbehaves on
//! demand (failures, resets, truncated bodies, hangs, delays, silently
//! closed idle connections) and counts every attempt, for retry, timeout
//! and connection-pool tests.
//!
//! - `behavior.rs`: the knobs ([`Behavior`]), header overrides, the decision.
//! - `handle.rs`: one request: count, decide, answer or misbehave.
//! - `conn.rs`: one connection: h2c or HTTP/1.1, and the idle-close timer.
//! - `admin.rs`: `/_chaos` endpoints.

mod admin;
mod behavior;
mod conn;
mod handle;

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::{HeaderMap, Method, Request, Uri, Version};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use behavior::Behavior;

use crate::tasks::Tasks;

/// How many requests [`ChaosServer::requests`] remembers.
pub const RECORDED_REQUESTS: usize = 1000;

/// A misbehaving upstream for tests. Serves HTTP/1.1 and h2c (prior
/// knowledge) on one loopback port, and gRPC unary and server-streaming
/// calls; see the crate docs for the `x-chaos-*` headers and the `/_chaos`
/// admin API, and [`Behavior`] for what each knob does.
///
/// Stops when dropped (or with [`ChaosServer::shutdown`]): its listener,
/// connections and hung requests are all aborted.
pub struct ChaosServer {
    addr: SocketAddr,
    state: Arc<State>,
}

/// Counters of a [`ChaosServer`] (`GET /_chaos/stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChaosStats {
    /// Requests received (admin requests excluded), whatever became of them.
    pub attempts: u64,
    /// Accepted TCP connections (admin ones included).
    pub connections: u64,
    /// HTTP/1.1 connections closed by the idle rule.
    pub idle_closes: u64,
    /// Attempts per key (`x-chaos-key`, else the path).
    pub keys: BTreeMap<String, u64>,
}

/// One request as it arrived (see [`ChaosServer::requests`]).
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    /// The attempt-counting key: `x-chaos-key`, else the path.
    pub key: String,
    pub headers: HeaderMap,
}

impl SeenRequest {
    fn to_json(&self) -> serde_json::Value {
        let mut headers = serde_json::Map::new();
        for name in self.headers.keys() {
            let values: Vec<serde_json::Value> = self
                .headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into())
                .collect();
            let value = match <[_; 1]>::try_from(values) {
                Ok([one]) => one,
                Err(many) => many.into(),
            };
            headers.insert(name.as_str().to_owned(), value);
        }
        serde_json::json!({
            "method": self.method.as_str(),
            "uri": self.uri.to_string(),
            "version": format!("{:?}", self.version),
            "key": self.key,
            "headers": headers,
        })
    }
}

/// State shared by every connection of one chaos server.
pub(crate) struct State {
    name: Arc<str>,
    /// The global behavior; connections watch it for `idle_close` changes.
    behavior: watch::Sender<Behavior>,
    counts: Mutex<Counts>,
    tasks: Tasks,
}

#[derive(Default)]
struct Counts {
    stats: ChaosStats,
    requests: VecDeque<SeenRequest>,
}

impl State {
    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts and records a request; returns its attempt number for `key`.
    fn record<B>(&self, req: &Request<B>, key: String) -> u64 {
        let mut counts = self.counts();
        counts.stats.attempts += 1;
        let n = counts.stats.keys.entry(key.clone()).or_default();
        *n += 1;
        let attempt = *n;
        if counts.requests.len() == RECORDED_REQUESTS {
            counts.requests.pop_front();
        }
        counts.requests.push_back(SeenRequest {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            key,
            headers: req.headers().clone(),
        });
        attempt
    }

    fn count_connection(&self) {
        self.counts().stats.connections += 1;
    }

    fn count_idle_close(&self) {
        self.counts().stats.idle_closes += 1;
    }

    fn stats(&self) -> ChaosStats {
        self.counts().stats.clone()
    }

    fn requests(&self) -> Vec<SeenRequest> {
        self.counts().requests.iter().cloned().collect()
    }

    fn reset(&self) {
        *self.counts() = Counts::default();
    }
}

impl ChaosServer {
    /// Starts a chaos server named `name` on `127.0.0.1:0`, behaving well
    /// until told otherwise.
    ///
    /// # Panics
    /// If the listener cannot be bound.
    pub async fn start(name: &str) -> ChaosServer {
        Self::start_on(name, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a chaos server named `name` on `bind` (use port 0).
    ///
    /// # Panics
    /// If the listener cannot be bound.
    pub async fn start_on(name: &str, bind: SocketAddr) -> ChaosServer {
        let listener = TcpListener::bind(bind)
            .await
            .unwrap_or_else(|e| panic!("chaos server {name}: bind {bind}: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("chaos server {name}: local_addr: {e}"));
        let state = Arc::new(State {
            name: name.into(),
            behavior: watch::Sender::new(Behavior::default()),
            counts: Mutex::default(),
            tasks: Tasks::default(),
        });
        state.tasks.spawn(accept_loop(listener, state.clone()));
        ChaosServer { addr, state }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name given at start (sent back in `x-upstream` and `ok <name>`).
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Replaces the global behavior (requests already past their decision
    /// are not affected; `idle_close` applies to idle connections at once).
    ///
    /// # Panics
    /// If the behavior is invalid (see [`Behavior::validate`]).
    pub fn set(&self, behavior: Behavior) {
        if let Err(e) = behavior.validate() {
            panic!("chaos server {}: invalid behavior: {e}", self.state.name);
        }
        self.state.behavior.send_replace(behavior);
    }

    /// The global behavior.
    pub fn behavior(&self) -> Behavior {
        self.state.behavior.borrow().clone()
    }

    /// Requests received (admin requests excluded), including failed, reset
    /// and hung ones.
    pub fn attempts(&self) -> u64 {
        self.state.counts().stats.attempts
    }

    /// Requests received with this key (`x-chaos-key`, else the path).
    pub fn attempts_for(&self, key: &str) -> u64 {
        self.state
            .counts()
            .stats
            .keys
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Accepted TCP connections.
    pub fn connections(&self) -> u64 {
        self.state.counts().stats.connections
    }

    /// HTTP/1.1 connections the server closed because they sat idle.
    pub fn idle_closes(&self) -> u64 {
        self.state.counts().stats.idle_closes
    }

    /// All counters at once.
    pub fn stats(&self) -> ChaosStats {
        self.state.stats()
    }

    /// The last [`RECORDED_REQUESTS`] requests (admin ones excluded), oldest
    /// first, with their headers as they arrived.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.state.requests()
    }

    /// Zeroes every counter (so `fail_first` counts start again) and
    /// forgets the recorded requests. The behavior is kept.
    pub fn reset_counts(&self) {
        self.state.reset();
    }

    /// Stops the server and waits until all of its tasks have ended.
    pub async fn shutdown(self) {
        self.state.tasks.shutdown().await;
    }
}

impl Drop for ChaosServer {
    fn drop(&mut self) {
        self.state.tasks.close();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            // Transient accept errors (EMFILE...): back off and go on.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        state.count_connection();
        state.tasks.spawn(conn::serve(state.clone(), stream));
    }
}
