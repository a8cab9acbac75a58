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
//! - [`TcpEchoServer`]: answers `received <N> bytes: <first 64>` after the
//!   peer's half-close, then closes.
//! - [`BannerServer`]: speaks first, then echoes.
//! - [`ProxyProcess`]: runs the proxy binary, learns its listeners from
//!   `--addr-file`, captures its output, kills it on drop.
//! - clients: [`http1_client`], [`h2c_client`], the `*_to(addr)` variants
//!   that dial one address whatever the URI, [`send`], [`ws_roundtrip`],
//!   and [`grpc_client`] (Python grpcio, see [`python`]).

mod client;
mod echo;
mod grpc;
mod process;
mod python;
mod tasks;
mod tcp;
mod ws;

pub use client::{
    FixedClient, FixedConnector, HttpClient, SEND_TIMEOUT, h2c_client, h2c_client_to, http1_client,
    http1_client_to, send, try_send,
};
pub use echo::EchoServer;
pub use grpc::{decode_messages, encode_message};
pub use process::{ProxyCommand, ProxyProcess, START_TIMEOUT, StartError};
pub use python::{grpc_client, grpc_client_script, python, workspace_root};
pub use tcp::{BannerServer, TcpEchoServer};
pub use ws::{WsResponse, WsStream, ws_connect, ws_roundtrip};

/// The error type of client helpers and response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
