//! Trellis's user API: the Istio-compatible resources users write (plus
//! Trellis's own kinds), how they are read from YAML, and the checks that make
//! bad input fail loudly.
//!
//! Everything here is plain data and pure functions. Nothing does I/O except
//! [`load::load_dir`], which reads a folder of YAML files.

pub mod authorization;
pub mod conflict;
pub mod duration;
pub mod error;
pub mod host;
pub mod load;
pub mod mesh;
pub mod networking;
pub mod peer_authentication;
pub mod policy;
pub mod resource;
pub mod selector;
pub mod sidecar;
pub mod trellis;
pub mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use load::{Document, load_dir, load_dir_raw, parse_documents, parse_documents_raw};
pub use policy::{RetryOn, grpc_code, parse_retry_on};
pub use resource::{Meta, Resource, ResourceSet};
