//! HTTP: serving downstream connections, routing requests and forwarding them
//! upstream over pooled connections.

pub mod body;
pub mod detect;
pub mod forward;
pub mod inbound;
pub mod mirror;
pub mod outbound;
pub mod pool;
pub mod reason;
pub mod replay;
pub mod rewind;
pub mod server;
pub mod upstream;

pub use body::Body;
pub use reason::ProxyError;
