//! The command line: `trellis-demo gateway | preprocess | inference --model
//! slow|fast | postprocess | load`. Public so tests can check that the
//! commands in mesh.yaml parse.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "trellis-demo",
    about = "The AI inference demo's services: gateway -> preprocess -> inference -> postprocess, and a load generator",
    long_about = "The AI inference demo's services: gateway -> preprocess -> inference -> postprocess, and a load generator.\n\n\
Run by `trellis up` (examples/inference/mesh.yaml), each service reads where to listen from TRELLIS_LISTEN, \
who it is from TRELLIS_SERVICE / TRELLIS_WORKLOAD / TRELLIS_VERSION, and calls the next hop by its mesh name \
through its sidecar (HTTP_PROXY, else TRELLIS_OUTBOUND). Flags override the environment.",
    // A flag given twice takes the last value, so a wrapper (a test, a
    // script) can append flags to a mesh file's command.
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Takes POST /v1/infer {"prompt": "..."} (or GET /v1/infer?prompt=...) and calls preprocess.
    Gateway {
        #[command(flatten)]
        common: Common,
        /// The next hop, by its mesh name.
        #[arg(long, default_value = "http://preprocess:8081")]
        next: String,
    },
    /// Normalises and tokenises the prompt, then calls inference.
    Preprocess {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value = "http://inference:9090")]
        next: String,
        /// Longest prompt accepted, in characters after normalising.
        #[arg(long, default_value_t = 4096)]
        max_prompt_chars: usize,
    },
    /// "Runs the model" (a toy, with a realistic latency), then calls postprocess.
    Inference {
        #[command(flatten)]
        common: Common,
        /// slow (v1: ~40 ms) or fast (v2: ~10 ms).
        #[arg(long, value_enum)]
        model: Model,
        /// Median latency in milliseconds [default: 40 for slow, 10 for fast].
        #[arg(long)]
        latency_ms: Option<f64>,
        /// Spread of the log-normal latency (0 = always the median).
        #[arg(long, default_value_t = 0.35)]
        sigma: f64,
        /// Most tokens generated.
        #[arg(long, default_value_t = 32)]
        max_tokens: usize,
        #[arg(long, default_value = "http://postprocess:8082")]
        next: String,
    },
    /// Formats the generated tokens into the answer (the last hop).
    Postprocess {
        #[command(flatten)]
        common: Common,
    },
    /// Sends a steady rate of prompts to the gateway (open loop); prints only error summaries.
    Load {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value = "http://gateway:8080/v1/infer")]
        target: String,
        /// Requests per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Most requests in flight; a request due when this many are waiting is skipped (and counted).
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// How often errors are summarised on stderr, e.g. 5s.
        #[arg(long, default_value = "5s")]
        report_every: String,
        /// Stop after this many requests and print the totals as JSON on stdout.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Model {
    Slow,
    Fast,
}

impl Model {
    pub fn name(self) -> &'static str {
        match self {
            Model::Slow => "slow",
            Model::Fast => "fast",
        }
    }
}

#[derive(Debug, Args)]
pub struct Common {
    /// Where to listen, HOST:PORT [default: TRELLIS_LISTEN, else 127.0.0.1 and the service's port].
    #[arg(long)]
    pub listen: Option<String>,
    /// Write the bound address here as JSON ({"listen": "ip:port"}) once listening (for port 0).
    #[arg(long)]
    pub addr_file: Option<PathBuf>,
    /// Send calls through this HTTP proxy, http://HOST:PORT [default: HTTP_PROXY].
    #[arg(long)]
    pub proxy: Option<String>,
    /// Send calls to this address with a Host header, HOST:PORT [default: TRELLIS_OUTBOUND].
    #[arg(long)]
    pub outbound: Option<String>,
    /// Give up on the next hop after this long, e.g. 10s.
    #[arg(long, default_value = "10s")]
    pub timeout: String,
}

impl Command {
    pub fn common(&self) -> &Common {
        match self {
            Command::Gateway { common, .. }
            | Command::Preprocess { common, .. }
            | Command::Inference { common, .. }
            | Command::Postprocess { common }
            | Command::Load { common, .. } => common,
        }
    }

    /// Where a service listens when run by hand: the ports of mesh.yaml.
    pub fn default_listen(&self) -> &'static str {
        match self {
            Command::Gateway { .. } => "127.0.0.1:8080",
            Command::Preprocess { .. } => "127.0.0.1:8081",
            Command::Inference { .. } => "127.0.0.1:9090",
            Command::Postprocess { .. } => "127.0.0.1:8082",
            Command::Load { .. } => "127.0.0.1:8090",
        }
    }
}
