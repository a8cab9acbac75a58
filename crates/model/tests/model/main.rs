//! Integration tests of trellis-model through its public API: YAML in,
//! resources or exact errors (file, resource, field path, reason) out.

mod accept;
mod authorization;
mod conflict;
mod load_dir;
mod parse;
mod support;
mod validate;
