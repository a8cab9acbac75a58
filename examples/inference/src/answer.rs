//! The JSON the stages exchange: requests down the pipeline, and the answer
//! that comes back up, recording which workload served each hop.

use serde::{Deserialize, Serialize};

use crate::settings::Identity;

/// One stage of the pipeline that served a request, as seen by that stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hop {
    pub service: String,
    pub workload: String,
    /// Empty when the service has one deployment.
    pub version: String,
    /// Time spent in this stage, the stages after it included.
    pub ms: f64,
    /// The `x-request-id` and W3C trace id the stage received, so a reader
    /// (or a test) sees that both crossed every hop.
    pub request_id: String,
    pub trace_id: String,
}

impl Hop {
    pub fn new(me: &Identity, ms: f64, request_id: &str, trace_id: &str) -> Hop {
        Hop {
            service: me.service.clone(),
            workload: me.workload.clone(),
            version: me.version.clone(),
            // Tenths of a millisecond are all a reader can use.
            ms: (ms * 10.0).round() / 10.0,
            request_id: request_id.to_string(),
            trace_id: trace_id.to_string(),
        }
    }
}

/// What every stage answers: the result so far and the path, first hop first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub request_id: String,
    pub answer: String,
    /// The model that generated the answer (`slow` / `fast`).
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub input_tokens: usize,
    #[serde(default)]
    pub output_tokens: usize,
    pub path: Vec<Hop>,
}

impl Answer {
    /// The answer as this stage returns it: its own hop goes first, since
    /// it received the request before the stages it called.
    pub fn through(mut self, hop: Hop) -> Answer {
        self.path.insert(0, hop);
        self
    }

    /// The version of `service` that served this request, if it is on the path.
    pub fn version_of(&self, service: &str) -> Option<&str> {
        self.path
            .iter()
            .find(|h| h.service == service)
            .map(|h| h.version.as_str())
    }
}

/// gateway -> preprocess: the user's prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptRequest {
    pub prompt: String,
}

/// preprocess -> inference: the normalised text and its tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub text: String,
    pub tokens: Vec<Token>,
}

/// A token: its text and its id in the (hashed) vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub id: u32,
    pub text: String,
}

/// inference -> postprocess: the generated tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostprocessRequest {
    pub model: String,
    pub tokens: Vec<String>,
}
