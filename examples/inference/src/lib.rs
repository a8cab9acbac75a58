//! The AI inference demo: `gateway -> preprocess -> inference (v1 slow,
//! v2 fast) -> postprocess`, and a load generator. Each is a plain HTTP
//! service that knows nothing of the mesh except the environment `trellis
//! up` gives it (`TRELLIS_*`, `HTTP_PROXY`); see README.md.

pub mod answer;
pub mod cli;
pub mod client;
pub mod failure;
pub mod latency;
pub mod load;
pub mod run;
pub mod settings;
pub mod stages;
pub mod text;
pub mod trace;
