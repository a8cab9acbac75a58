//! Test support for Trellis: real servers on loopback for the proxy to
//! carry traffic to, clients to drive it, and a handle on the real binaries.
//!
//! Every server binds `127.0.0.1:0` (never a fixed port), reports its
//! address, and stops when dropped.
//!
//! - [`EchoServer`]: HTTP/1.1 and h2c on one port. Any path answers 200 with
//!   `x-upstream: <name>` and a JSON description of the request
//!   (`upstream, method, path, query, authority, version, headers,
//!   body_len`). Request headers make it misbehave: `x-echo-status: 503`,
//!   `x-echo-delay-ms: N`, `x-echo-body-bytes: N` (N bytes of `a`),
//!   `x-echo-response-header: name=value`. `POST /echo-body` streams the
//!   body back. `/ws` is a WebSocket echo (text comes back as
//!   `<name>:<text>`). gRPC (`content-type: application/grpc`):
//!   `/trellis.test.Echo/Unary`, `/Stream` (bidirectional, message by
//!   message), `/Fail` (trailers-only, status 13 `boom`).
//! - [`ChaosServer`]: a misbehaving upstream (HTTP/1.1, h2c, gRPC unary and
//!   server streaming on one port). Normally answers 200 `ok <name>` with
//!   `x-upstream: <name>`, and gRPC calls (`content-type: application/grpc`,
//!   any path) with their messages echoed (each `x-chaos-grpc-repeat` times)
//!   and `grpc-status: 0`. Misbehaviour is set globally ([`Behavior`], with
//!   [`ChaosServer::set`] or `POST /_chaos`) and per request by headers,
//!   which override it: `x-chaos-fail: <percent>` fails with
//!   `x-chaos-status: <code>` (503), or for gRPC with
//!   `x-chaos-grpc-status: <code>` as a trailers-only response;
//!   `x-chaos-fail-first: N` fails attempts 1..=N of the key
//!   (`x-chaos-key`, else the path), then succeeds; `x-chaos-delay: <ms>`;
//!   `x-chaos-reset: <percent>` (RST_STREAM on h2, a closed connection on
//!   HTTP/1.1); `x-chaos-close-after-headers: 1` (head with
//!   `content-length: 1000`, then the body aborts); `x-chaos-hang: 1`.
//!   Globally only, `idle_close: (min, max)` silently closes HTTP/1.1
//!   connections idle for a random time in that range (the keep-alive race
//!   proxies must survive; done by racing hyper's connection future against
//!   an idle deadline, see `chaos/conn.rs`). Counters ([`ChaosServer::attempts`],
//!   `attempts_for`, `connections`, `idle_closes`, `reset_counts`) and the
//!   last 1,000 requests' headers ([`ChaosServer::requests`]). Admin API on
//!   the same port: `GET`/`POST /_chaos` (the [`Behavior`] as JSON),
//!   `GET /_chaos/stats` ([`ChaosStats`]), `POST /_chaos/reset`,
//!   `GET /_chaos/requests`. Also a program, `trellis-chaos NAME ADDR
//!   [--idle-close MIN_MS,MAX_MS]`.
//! - [`TcpEchoServer`]: answers `received <N> bytes: <first 64>` after the
//!   peer's half-close, then closes.
//! - [`BannerServer`]: speaks first, then echoes.
//! - [`TestCa`]: a throwaway CA writing identity directories (SPIFFE
//!   certificates, valid or expired) for mTLS tests.
//! - [`ProxyProcess`]: runs the proxy binary, learns its listeners from
//!   `--addr-file`, captures its output, kills it on drop.
//! - clients: [`http1_client`], [`h2c_client`], the `*_to(addr)` variants
//!   that dial one address whatever the URI, [`send`], [`ws_roundtrip`],
//!   and [`grpc_client`] (Python grpcio, see [`python`]).

mod chaos;
mod client;
mod echo;
mod envoy;
mod grpc;
mod process;
mod python;
mod tasks;
mod tcp;
mod test_ca;
mod ws;

pub use chaos::{Behavior, ChaosServer, ChaosStats, RECORDED_REQUESTS, SeenRequest};
pub use client::{
    FixedClient, FixedConnector, HttpClient, SEND_TIMEOUT, h2c_client, h2c_client_to, http1_client,
    http1_client_to, send, try_send,
};
pub use echo::EchoServer;
pub use envoy::envoy_binary;
pub use grpc::{decode_messages, encode_message};
pub use process::{ProxyCommand, ProxyProcess, START_TIMEOUT, StartError};
pub use python::{grpc_client, grpc_client_script, python, workspace_root, xds_client_script};
pub use tcp::{BannerServer, TcpEchoServer};
pub use test_ca::{Issued, TestCa, Validity};
pub use ws::{WsResponse, WsStream, ws_connect, ws_roundtrip};

/// The error type of client helpers and response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
