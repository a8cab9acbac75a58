//! `trellis`: the control plane (`trellis control`) and the verbs that talk
//! to it (`apply`, `get`, `delete`, `describe`, `proxy-config`), plus
//! offline `check` and `bootstrap envoy|grpc` (a proxy's or a proxyless gRPC
//! client's bootstrap pointing at the control plane). kubectl's habits:
//! `-f FILE|DIR`, `-n NS`, `-o yaml|json|table`, exit 1 on errors
//! (docs/cli.md).

mod bootstrap;
mod client;
mod describe;
mod files;
mod identity;
mod output;
mod progress;
mod proxy_config;
mod top;
mod up;
mod wait;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use http::Method;
use serde_json::Value;
use trellis_model::{ConfigError, ConfigErrors};

use client::{Client, ClientError, DEFAULT_SERVER};
use output::Format;

/// mimalloc rather than glibc's malloc: with thousands of ADS streams the
/// control plane churns through response buffers, and glibc's arenas kept
/// the peak as RSS and spent a third of the CPU in malloc (bench/SCALE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "trellis",
    version,
    about = "Trellis service mesh: control plane and CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the control plane: config store, HTTP API, workload registry and xDS server.
    Control(ControlArgs),
    /// Create or update resources from files (validated first; all or nothing).
    Apply(ApplyArgs),
    /// Show resources and their status.
    Get(GetArgs),
    /// Delete resources applied through the API: KIND NAME, or those of -f files.
    Delete(DeleteArgs),
    /// Explain a service (endpoints, health, policies, proxies), or show a resource.
    Describe(DescribeArgs),
    /// What the control plane sent a workload's proxy, and what it ACKed.
    ProxyConfig(ProxyConfigArgs),
    /// Validate files offline, as a standalone trellis-proxy would; no control plane needed.
    Check(CheckArgs),
    /// Print a bootstrap that points a proxy at the control plane.
    #[command(subcommand)]
    Bootstrap(BootstrapCommand),
    /// Bootstrap tokens: what a proxy shows to get its certificate.
    #[command(subcommand)]
    Token(identity::TokenCommand),
    /// The certificate authority's roots: list, rotate, remove.
    #[command(subcommand)]
    Ca(identity::CaCommand),
    /// Run a whole mesh on this machine from one Mesh file (docs/up.md).
    Up(up::UpArgs),
    /// Live golden signals per service pair, from every proxy's metrics.
    Top(top::TopArgs),
}

#[derive(Subcommand, Debug)]
enum BootstrapCommand {
    /// An Envoy bootstrap (JSON): node metadata for the workload, ADS from `trellis control`.
    Envoy(EnvoyBootstrapArgs),
    /// A gRPC xDS bootstrap (JSON) for proxyless clients: point
    /// GRPC_XDS_BOOTSTRAP at it and dial `xds:///<service>:<port>`.
    Grpc(GrpcBootstrapArgs),
}

/// The workload a bootstrap registers (node metadata, docs/xds.md).
#[derive(Args, Debug)]
struct WorkloadArgs {
    /// The workload's name.
    #[arg(long)]
    workload: String,
    /// The workload's namespace.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// The workload's labels: k=v,k2=v2.
    #[arg(long, default_value = "")]
    labels: String,
    /// The workload's ports by service port name: http=9080,grpc=9090 (what a
    /// ServiceEntry workloadSelector sends to; unnamed ports use targetPort).
    #[arg(long, default_value = "")]
    ports: String,
    /// The workload's service account.
    #[arg(long, default_value = "default")]
    service_account: String,
}

impl WorkloadArgs {
    fn into_workload(self, address: IpAddr) -> Result<bootstrap::Workload, Failure> {
        Ok(bootstrap::Workload {
            labels: bootstrap::parse_labels(&self.labels).map_err(Failure::new)?,
            ports: bootstrap::parse_ports(&self.ports).map_err(Failure::new)?,
            name: self.workload,
            namespace: self.namespace,
            service_account: self.service_account,
            address,
        })
    }
}

#[derive(Args, Debug)]
struct GrpcBootstrapArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// The client's address (registered as the workload's; a workloadSelector
    /// that matches its labels sends traffic there).
    #[arg(long, default_value = "127.0.0.1")]
    address: IpAddr,
    /// Istio locality, region/zone/subzone.
    #[arg(long)]
    locality: Option<String>,
    /// The control plane's xDS address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds: SocketAddr,
}

#[derive(Args, Debug)]
struct EnvoyBootstrapArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// The proxy's address: its listeners bind <address>:15001 (outbound) and :15006 (inbound).
    #[arg(long)]
    address: IpAddr,
    /// The local app, where the inbound listener forwards [default: 127.0.0.1:8080].
    #[arg(long)]
    app: Option<SocketAddr>,
    /// Istio locality, region/zone/subzone.
    #[arg(long)]
    locality: Option<String>,
    /// The outbound listener's port instead of 15001 (0: any free port; read it from Envoy's admin).
    #[arg(long)]
    outbound_port: Option<u16>,
    /// The inbound listener's port instead of 15006.
    #[arg(long)]
    inbound_port: Option<u16>,
    /// The control plane's xDS address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds: SocketAddr,
    /// Envoy's admin listener.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Use delta (incremental) ADS instead of state of the world.
    #[arg(long)]
    delta: bool,
    /// Take the route table's virtual hosts one by one (Envoy's VHDS), so a
    /// VirtualService change sends one virtual host, not the whole table.
    /// Envoy supports VHDS over delta ADS only.
    #[arg(long, requires = "delta")]
    vhds: bool,
    /// A bootstrap token (`trellis token create`): Envoy sends it on the ADS
    /// stream and gets the `default` Secret (certificate and key). The
    /// bootstrap then holds a secret: keep the file 0600.
    #[arg(long)]
    token: Option<bootstrap::Token>,
}

#[derive(Args, Debug)]
struct ControlArgs {
    /// Where the store lives [default: $XDG_STATE_HOME/trellis or ~/.local/state/trellis].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A folder of YAML resources, watched for changes (GitOps style).
    #[arg(long)]
    config_dir: Option<PathBuf>,
    /// xDS (ADS over gRPC) listener, plaintext, loopback only.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds: SocketAddr,
    /// HTTP API, /healthz and /metrics.
    #[arg(long, default_value = "127.0.0.1:15014")]
    api: SocketAddr,
    /// Write the bound addresses here as JSON once listening (useful with port 0).
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or target=level directives.
    #[arg(long, default_value = "info", env = "TRELLIS_LOG")]
    log_level: String,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// How long a workload stays registered after its proxy disconnected (e.g. 30s, 1m).
    #[arg(long, default_value = "30s", value_parser = trellis_model::duration::parse)]
    registration_grace: Duration,
    /// Shortest time between two pushes of new config to one proxy (e.g. 0s, 500ms); changes meanwhile go out together.
    #[arg(long, default_value = "0s", value_parser = trellis_model::duration::parse)]
    min_push_interval: Duration,
    /// ...or this much per connected proxy, if longer (100us: 1 s at 10,000 proxies); 0s turns it off.
    #[arg(long, default_value = "100us", value_parser = trellis_model::duration::parse)]
    push_interval_per_stream: Duration,
    /// The trust domain of workload identities (spiffe://<trust-domain>/ns/<ns>/sa/<sa>).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The operator's CA certificate (PEM), a root or an intermediate; otherwise a root is made in the data dir.
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The private key of --ca-cert (PKCS#8 PEM, mode 0600).
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// The issuers of --ca-cert up to the root (PEM, nearest first), when --ca-cert is an intermediate.
    #[arg(long, requires = "ca_cert")]
    ca_chain: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ServerArgs {
    /// The control plane's HTTP API.
    #[arg(long, env = "TRELLIS_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
}

#[derive(Args, Debug)]
struct ApplyArgs {
    /// A YAML file, a folder of them (recursively), or - for standard input. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Validate and report what would change, without changing anything.
    #[arg(long, conflicts_with = "wait")]
    dry_run: bool,
    /// Then wait until every connected proxy was sent the new config and ACKed it.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits (e.g. 30s, 2m).
    #[arg(long, default_value = "60s", value_parser = trellis_model::duration::parse, requires = "wait")]
    timeout: Duration,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Debug)]
struct DescribeArgs {
    /// `service` (svc), or a resource kind (vs, dr, ...).
    kind: String,
    name: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Output format (table: for people; json/yaml: the API's answer).
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Format,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Debug)]
struct ProxyConfigArgs {
    /// The workload's name (as its proxy registered it), or the proxy's xDS node id.
    workload: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// One type only, with each resource's name and version.
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    kind: Option<ConfigType>,
    /// table: names and versions; json/yaml: also the resources themselves
    /// (Secrets by name only).
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Format,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ConfigType {
    Listeners,
    Routes,
    /// The virtual hosts of a proxy that takes them by VHDS.
    VirtualHosts,
    Clusters,
    Endpoints,
    SecretsNamesOnly,
}

impl ConfigType {
    fn query(self) -> &'static str {
        match self {
            ConfigType::Listeners => "listeners",
            ConfigType::Routes => "routes",
            ConfigType::VirtualHosts => "virtualhosts",
            ConfigType::Clusters => "clusters",
            ConfigType::Endpoints => "endpoints",
            ConfigType::SecretsNamesOnly => "secrets",
        }
    }
}

#[derive(Args, Debug)]
struct GetArgs {
    /// A kind (VirtualService, virtualservices, vs, ...) or `all`.
    kind: String,
    /// One resource's name; all of the kind without it.
    name: Option<String>,
    /// Namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with = "name")]
    all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Format,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Debug)]
struct DeleteArgs {
    /// A kind (VirtualService, virtualservices, vs, ...).
    #[arg(required_unless_present = "files", requires = "name")]
    kind: Option<String>,
    name: Option<String>,
    /// Delete the resources these files define (a file, a folder, or -), last first.
    #[arg(short = 'f', long = "filename", conflicts_with_all = ["kind", "name"])]
    files: Vec<PathBuf>,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Check that the delete would be accepted, without deleting.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// A YAML file, a folder of them (recursively), or - for standard input. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
}

/// A failed command: one sentence, then the config errors behind it.
struct Failure {
    message: String,
    details: Vec<ConfigError>,
    code: u8,
}

impl Failure {
    fn new(message: impl std::fmt::Display) -> Failure {
        Failure {
            message: message.to_string(),
            details: Vec::new(),
            code: 1,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure {
            details: e.details().to_vec(),
            message: e.to_string(),
            code: 1,
        }
    }
}

impl From<files::FilesError> for Failure {
    fn from(e: files::FilesError) -> Failure {
        Failure::new(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Control(a) => control(a),
        Command::Apply(a) => apply(a),
        Command::Get(a) => get(a),
        Command::Delete(a) => delete(a),
        Command::Describe(a) => describe(a),
        Command::ProxyConfig(a) => proxy_config(a),
        Command::Check(a) => check(a),
        Command::Bootstrap(BootstrapCommand::Envoy(a)) => bootstrap_envoy(a),
        Command::Bootstrap(BootstrapCommand::Grpc(a)) => bootstrap_grpc(a),
        Command::Token(c) => identity::token(c),
        Command::Ca(c) => identity::ca(c),
        Command::Up(a) => up::run(a).map_err(|e| Failure {
            details: e.details(),
            ..Failure::new(e)
        }),
        Command::Top(a) => top::run(a).map_err(Failure::new),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            for d in &f.details {
                eprintln!("  {d}");
            }
            ExitCode::from(f.code)
        }
    }
}

fn control(a: ControlArgs) -> Result<(), Failure> {
    init_logging(&a.log_level, a.log_json).map_err(|e| Failure {
        code: 2,
        ..Failure::new(e)
    })?;
    let data_dir = match a.data_dir {
        Some(d) => d,
        None => trellis_control::default_data_dir(
            std::env::var("XDG_STATE_HOME").ok().as_deref(),
            std::env::var("HOME").ok().as_deref(),
        )
        .ok_or_else(|| {
            Failure::new("no --data-dir given, and neither XDG_STATE_HOME nor HOME is set")
        })?,
    };
    let settings = trellis_control::Settings {
        data_dir,
        config_dir: a.config_dir,
        xds: a.xds,
        api: a.api,
        addr_file: a.addr_file,
        poll: Duration::from_millis(200),
        registration_grace: a.registration_grace,
        min_push_interval: a.min_push_interval,
        push_interval_per_stream: a.push_interval_per_stream,
        identity: trellis_control::identity::IdentitySettings {
            trust_domain: a.trust_domain,
            operator_ca: a.ca_cert.zip(a.ca_key).map(|(cert, key)| {
                trellis_control::identity::OperatorCa {
                    cert,
                    key,
                    chain: a.ca_chain,
                }
            }),
        },
    };
    trellis_control::run(settings).map_err(|e| match e {
        trellis_control::StartError::Config { summary, errors } => Failure {
            message: format!("cannot start: {summary}"),
            details: errors.0,
            code: 2,
        },
        e => Failure::new(format!("cannot start: {e}")),
    })
}

fn bootstrap_envoy(a: EnvoyBootstrapArgs) -> Result<(), Failure> {
    let b = bootstrap::EnvoyBootstrap {
        workload: a.workload.into_workload(a.address)?,
        app: a.app,
        locality: a.locality,
        outbound_port: a.outbound_port,
        inbound_port: a.inbound_port,
        xds: a.xds,
        admin: a.admin,
        delta: a.delta,
        vhds: a.vhds,
        token: a.token,
    };
    print_json(&b.to_json())
}

fn bootstrap_grpc(a: GrpcBootstrapArgs) -> Result<(), Failure> {
    let b = bootstrap::GrpcBootstrap {
        workload: a.workload.into_workload(a.address)?,
        locality: a.locality,
        xds: a.xds,
    };
    print_json(&b.to_json())
}

fn print_json(v: &Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| Failure::new(format!("cannot print the bootstrap: {e}")))?;
    println!("{text}");
    Ok(())
}

fn init_logging(level: &str, json: bool) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_new(level).map_err(|e| format!("invalid --log-level {level:?}: {e}"))?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
}

fn apply(a: ApplyArgs) -> Result<(), Failure> {
    let mut progress = progress::Progress::new();
    progress.update("reading files...");
    let files = files::read(&a.files)?;
    progress.update(&format!(
        "applying {} file{}...",
        files.len(),
        if files.len() == 1 { "" } else { "s" }
    ));
    let body = serde_json::json!({
        "files": files
            .iter()
            .map(|(name, content)| serde_json::json!({"name": name, "content": content}))
            .collect::<Vec<_>>(),
    });
    let client = Client::new(&a.server.server)?;
    let path = if a.dry_run {
        "/api/v1/apply?dry_run=true"
    } else {
        "/api/v1/apply"
    };
    let answer = client.call(
        Method::POST,
        path,
        Some("application/json"),
        serde_json::to_vec(&body).unwrap_or_default(),
    );
    progress.clear();
    let answer = answer?;
    let suffix = if a.dry_run { " (dry run)" } else { "" };
    for r in answer["results"].as_array().into_iter().flatten() {
        let name = format!(
            "{} {}/{}",
            r["kind"].as_str().unwrap_or("?"),
            r["namespace"].as_str().unwrap_or("?"),
            r["name"].as_str().unwrap_or("?")
        );
        let action = r["action"].as_str().unwrap_or("?");
        let status = &r["status"];
        if status["accepted"].as_bool().unwrap_or(true) {
            println!("{name} {action}{suffix}");
        } else {
            // Stored, but an older resource keeps what it claims.
            let reasons: Vec<&str> = status["conflicts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["loser"]["name"] == r["name"] && c["loser"]["kind"] == r["kind"])
                .filter_map(|c| c["reason"].as_str())
                .collect();
            println!(
                "{name} {action}{suffix}, but not in effect: {}",
                reasons.join("; ")
            );
        }
    }
    if a.wait {
        let generation = answer["generation"].as_u64().ok_or_else(|| {
            Failure::new("the control plane's answer to the apply has no generation to wait for")
        })?;
        wait_for_acks(&client, generation, a.timeout)?;
    }
    Ok(())
}

/// `apply --wait`: poll the proxies until all have `generation` ACKed.
fn wait_for_acks(client: &Client, generation: u64, timeout: Duration) -> Result<(), Failure> {
    let mut progress = progress::Progress::new();
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let proxies = client.call(Method::GET, "/api/v1/proxies", None, Vec::new())?;
        match wait::state(&proxies, generation) {
            wait::State::Done { proxies } => {
                progress.clear();
                eprintln!(
                    "generation {generation}: {proxies} prox{} ACKed",
                    if proxies == 1 { "y" } else { "ies" }
                );
                return Ok(());
            }
            wait::State::Rejected { node, reason } => {
                progress.clear();
                return Err(Failure::new(format!(
                    "proxy {node} rejected the config of generation {generation} (NACK) and keeps its previous one: {reason}"
                )));
            }
            wait::State::Waiting {
                done,
                total,
                waiting,
            } => {
                if std::time::Instant::now() >= deadline {
                    progress.clear();
                    return Err(Failure::new(format!(
                        "{done} of {total} proxies ACKed generation {generation} within {} s; still waiting for {}",
                        timeout.as_secs_f64(),
                        waiting.join(", ")
                    )));
                }
                progress.update(&format!(
                    "waiting for proxies to ACK generation {generation}: {done}/{total}"
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn get(a: GetArgs) -> Result<(), Failure> {
    let client = Client::new(&a.server.server)?;
    let all_kinds = a.kind.eq_ignore_ascii_case("all");
    let kind = if all_kinds {
        None
    } else {
        Some(trellis_control::kind::parse(&a.kind).ok_or_else(|| {
            Failure::new(format!(
                "unknown kind {:?}: Trellis understands {}, or `all`",
                a.kind,
                trellis_control::kind::known()
            ))
        })?)
    };
    let (path, single) = match (&a.name, kind) {
        (Some(name), Some(kind)) => (
            format!("/api/v1/resources/{kind}/{}/{name}", a.namespace),
            true,
        ),
        (Some(_), None) => return Err(Failure::new("`get all` takes no name; name a kind")),
        (None, kind) => {
            let base = match kind {
                Some(k) => format!("/api/v1/resources/{k}"),
                None => "/api/v1/resources".to_string(),
            };
            if a.all_namespaces {
                (base, false)
            } else {
                (format!("{base}?namespace={}", a.namespace), false)
            }
        }
    };
    let body = client.call(Method::GET, &path, None, Vec::new())?;
    if !single && a.output == Format::Table && body["items"].as_array().is_none_or(Vec::is_empty) {
        if a.all_namespaces {
            eprintln!("No resources found.");
        } else {
            eprintln!("No resources found in {} namespace.", a.namespace);
        }
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    print!(
        "{}",
        output::render(a.output, &body, single, all_kinds, a.all_namespaces, now)
    );
    if all_kinds && a.output == Format::Table {
        print_config_dir_errors(&body);
    }
    Ok(())
}

fn print_config_dir_errors(body: &Value) {
    if let Ok(errors) = serde_json::from_value::<Vec<ConfigError>>(body["configDirErrors"].clone())
        && !errors.is_empty()
    {
        eprintln!(
            "warning: the last config directory change was rejected; the previous files stay in effect:"
        );
        for e in errors {
            eprintln!("  {e}");
        }
    }
}

fn parse_kind(s: &str) -> Result<trellis_model::resource::Kind, Failure> {
    trellis_control::kind::parse(s).ok_or_else(|| {
        Failure::new(format!(
            "unknown kind {s:?}: Trellis understands {}",
            trellis_control::kind::known()
        ))
    })
}

fn delete(a: DeleteArgs) -> Result<(), Failure> {
    let targets: Vec<(trellis_model::resource::Kind, String, String)> = if a.files.is_empty() {
        let (Some(kind), Some(name)) = (&a.kind, &a.name) else {
            return Err(Failure::new("name a KIND and a NAME, or files with -f"));
        };
        vec![(parse_kind(kind)?, a.namespace.clone(), name.clone())]
    } else {
        let mut out = Vec::new();
        let mut errors = ConfigErrors::default();
        for (name, text) in files::read(&a.files)? {
            match trellis_model::parse_documents(&name, &text) {
                Ok(rs) => out.extend(rs.iter().map(|r| {
                    let m = r.meta();
                    (r.kind(), m.namespace.clone(), m.name.clone())
                })),
                Err(es) => errors.0.extend(es.0),
            }
        }
        if !errors.is_empty() {
            return Err(Failure {
                message: "cannot read the resources to delete; nothing was deleted".into(),
                details: errors.0,
                code: 1,
            });
        }
        // Last first: what refers to a resource usually comes after it.
        out.reverse();
        out
    };
    let client = Client::new(&a.server.server)?;
    let suffix = if a.dry_run { " (dry run)" } else { "" };
    let mut failed: Option<Failure> = None;
    for (kind, namespace, name) in targets {
        let mut path = format!("/api/v1/resources/{kind}/{namespace}/{name}");
        if a.dry_run {
            path.push_str("?dry_run=true");
        }
        match client.call(Method::DELETE, &path, None, Vec::new()) {
            Ok(_) => println!("{kind} {namespace}/{name} deleted{suffix}"),
            // One failure does not stop the others (kubectl's habit); each
            // is reported, and the exit code says something failed.
            Err(e) if !a.files.is_empty() => {
                eprintln!("error: {e}");
                for d in e.details() {
                    eprintln!("  {d}");
                }
                failed = Some(Failure::new("some resources were not deleted"));
            }
            Err(e) => return Err(e.into()),
        }
    }
    failed.map_or(Ok(()), Err)
}

fn describe(a: DescribeArgs) -> Result<(), Failure> {
    let client = Client::new(&a.server.server)?;
    let lower = a.kind.to_ascii_lowercase();
    if matches!(lower.as_str(), "service" | "services" | "svc") {
        let body = client.call(
            Method::GET,
            &format!("/api/v1/services/{}/{}", a.namespace, a.name),
            None,
            Vec::new(),
        )?;
        match a.output {
            Format::Table => print!("{}", describe::service(&body)),
            f => print!("{}", output::render(f, &body, true, false, false, 0)),
        }
        return Ok(());
    }
    let kind = parse_kind(&a.kind).map_err(|f| Failure {
        message: format!("{} (or `service`)", f.message),
        ..f
    })?;
    let body = client.call(
        Method::GET,
        &format!("/api/v1/resources/{kind}/{}/{}", a.namespace, a.name),
        None,
        Vec::new(),
    )?;
    // A resource is best read as the YAML it was applied as, with its status.
    let format = if a.output == Format::Table {
        Format::Yaml
    } else {
        a.output
    };
    print!("{}", output::render(format, &body, true, false, false, 0));
    Ok(())
}

fn proxy_config(a: ProxyConfigArgs) -> Result<(), Failure> {
    let client = Client::new(&a.server.server)?;
    let proxies = client.call(Method::GET, "/api/v1/proxies", None, Vec::new())?;
    let node =
        proxy_config::pick_node(&proxies, &a.workload, &a.namespace).map_err(Failure::new)?;
    let mut path = format!("/api/v1/proxies/{}/config", encode_path(&node));
    if let Some(t) = a.kind {
        path.push_str("?type=");
        path.push_str(t.query());
    }
    let body = client.call(Method::GET, &path, None, Vec::new())?;
    match a.output {
        Format::Table => print!("{}", proxy_config::table(&body, a.kind.is_some())),
        f => print!("{}", output::render(f, &body, true, false, false, 0)),
    }
    Ok(())
}

/// A node id as one path segment: percent-encode what is not unreserved.
fn encode_path(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn check(a: CheckArgs) -> Result<(), Failure> {
    let files = files::read(&a.files)?;
    // A Mesh (`trellis up`) is validated too, with the ServiceEntries it
    // would generate, so a file that `up` runs checks clean here.
    let loaded = trellis_model::mesh::load(&files).map_err(|errors| {
        let n = errors.0.len();
        Failure {
            message: format!("{n} error{} in config", if n == 1 { "" } else { "s" }),
            details: errors.0,
            code: 1,
        }
    })?;
    let r = loaded.set.len() - loaded.generated.len();
    let f = files.len();
    let mesh = match &loaded.mesh {
        Some(m) => format!(
            " (and Mesh {}: {} services, {} workloads)",
            m.name,
            m.services.len(),
            m.workload_count()
        ),
        None => String::new(),
    };
    println!(
        "{r} resource{} in {f} file{} valid{mesh}",
        if r == 1 { "" } else { "s" },
        if f == 1 { " is" } else { "s are" }
    );
    Ok(())
}
