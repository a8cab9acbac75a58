//! `trellis up`: a whole mesh on one machine from one file. Validate
//! everything first (the Mesh, the resources, programs, free ports), then
//! start `trellis control` on a clean store, make a bootstrap token per
//! service account, apply the generated ServiceEntries and the file's
//! resources, start an app and a sidecar per replica, show progress until
//! every workload is ready, print where things are, and keep it all
//! running (restarting crashed children) until Ctrl-C or SIGTERM, which
//! stop apps, then sidecars, then the control plane. See docs/up.md.

mod pdeathsig;
pub mod plan;
mod preflight;
mod progress;
mod supervise;

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use trellis_model::mesh::{self, Mesh};
use trellis_model::{ConfigError, ConfigErrors};

use crate::top;
use plan::Workload;
use supervise::{ChildSpec, Event, RestartPolicy, Supervisor, Tier};

#[derive(Args, Debug)]
pub struct UpArgs {
    /// The Mesh file, or a folder of YAML files holding one Mesh and any
    /// Istio-style resources.
    #[arg(
        short = 'f',
        long = "filename",
        default_value = "examples/inference/mesh.yaml"
    )]
    pub file: PathBuf,
    /// Where logs, tokens and the control plane's store go
    /// [default: $XDG_STATE_HOME/trellis/up/<mesh> or ~/.local/state/trellis/up/<mesh>].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Workload addresses count up from this loopback base (127.0.1.1, ...).
    #[arg(long, default_value = "127.0.1.0/24", value_parser = plan::parse_subnet)]
    pub subnet: Ipv4Addr,
    /// The control plane's xDS address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub xds: SocketAddr,
    /// The control plane's HTTP API address.
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub api: SocketAddr,
    /// Show the live golden-signals table even when stdout is not a terminal.
    #[arg(long)]
    pub watch: bool,
    /// How long to wait for every workload to be ready.
    #[arg(long, default_value = "60s", value_parser = trellis_model::duration::parse)]
    pub ready_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{summary}")]
    Config {
        summary: String,
        errors: ConfigErrors,
    },
    #[error(transparent)]
    Files(#[from] crate::files::FilesError),
    #[error(
        "{files} holds no Mesh (kind: Mesh, apiVersion: trellis.dev/v1alpha1): `trellis up` needs one; see docs/up.md"
    )]
    NoMesh { files: String },
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(
        "trellis-proxy not found beside {exe} nor on PATH: build it (cargo build -p trellis-proxy)"
    )]
    NoProxy { exe: String },
    #[error("cannot find the trellis executable itself: {0}")]
    SelfExe(std::io::Error),
    #[error("neither --state-dir, XDG_STATE_HOME nor HOME says where to keep the mesh's state")]
    NoStateDir,
    #[error("state directory {}: {source}", path.display())]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the control plane did not start within 20 s; its log: {}", log.display())]
    ControlNotUp { log: PathBuf },
    #[error("cannot make a bootstrap token for service account {sa}: {reason}")]
    Token { sa: String, reason: String },
    #[error("applying the mesh's resources failed: {message}")]
    Apply {
        message: String,
        details: Vec<ConfigError>,
    },
    #[error(
        "not every workload was ready within {timeout:?}: {waiting}; logs are in {}",
        logs.display()
    )]
    NotReady {
        timeout: Duration,
        waiting: String,
        logs: PathBuf,
    },
    #[error("interrupted before the mesh was up; everything started was stopped")]
    Interrupted,
}

impl UpError {
    /// The config errors behind it, one per line after the sentence.
    pub fn details(&self) -> Vec<ConfigError> {
        match self {
            UpError::Config { errors, .. } => errors.0.clone(),
            UpError::Apply { details, .. } => details.clone(),
            _ => Vec::new(),
        }
    }
}

fn config_error(stage: &str, errors: ConfigErrors) -> UpError {
    let n = errors.0.len();
    UpError::Config {
        summary: format!(
            "{n} error{} {stage}; nothing was started",
            if n == 1 { "" } else { "s" }
        ),
        errors,
    }
}

/// Everything decided before anything starts.
struct Prepared {
    mesh: Mesh,
    loaded: mesh::Loaded,
    workloads: Vec<Workload>,
    proxy: PathBuf,
    trellis: PathBuf,
    state: PathBuf,
}

pub fn run(a: UpArgs) -> Result<(), UpError> {
    let p = prepare(&a)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(UpError::Runtime)?;
    rt.block_on(orchestrate(&a, p))
}

fn prepare(a: &UpArgs) -> Result<Prepared, UpError> {
    let files = crate::files::read(std::slice::from_ref(&a.file))?;
    let loaded = mesh::load(&files).map_err(|e| config_error("in the mesh files", e))?;
    let Some(mesh) = loaded.mesh.clone() else {
        return Err(UpError::NoMesh {
            files: a.file.display().to_string(),
        });
    };
    let mut workloads = plan::plan(&mesh, a.subnet)?;
    let trellis = std::env::current_exe().map_err(UpError::SelfExe)?;
    let dirs = preflight::search_path(trellis.parent(), std::env::var("PATH").ok().as_deref());
    let cwd = std::env::current_dir().unwrap_or_default();
    preflight::resolve_commands(&mesh, &mut workloads, &dirs, &cwd)
        .map_err(|e| config_error("in the mesh's commands", e))?;
    let proxy = preflight::resolve("trellis-proxy", &dirs, &cwd, preflight::is_program)
        .ok_or_else(|| UpError::NoProxy {
            exe: trellis.display().to_string(),
        })?;
    preflight::check_ports(&mesh, &workloads, &[("xds", a.xds), ("api", a.api)])
        .map_err(|e| config_error("with the mesh's addresses", e))?;
    let state = match &a.state_dir {
        Some(d) => d.clone(),
        None => plan::default_state_dir(
            std::env::var("XDG_STATE_HOME").ok().as_deref(),
            std::env::var("HOME").ok().as_deref(),
            &mesh.name,
        )
        .ok_or(UpError::NoStateDir)?,
    };
    clean_state(&state)?;
    Ok(Prepared {
        mesh,
        loaded,
        workloads,
        proxy,
        trellis,
        state,
    })
}

/// Each `up` starts from a clean store: what the file says is the mesh.
/// Only the folders `up` itself makes are removed.
fn clean_state(state: &Path) -> Result<(), UpError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UpError::StateDir { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state)
        .map_err(err(state))?;
    for sub in ["control", "tokens", "logs"] {
        let d = state.join(sub);
        match std::fs::remove_dir_all(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&d)(e)),
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&d)
            .map_err(err(&d))?;
    }
    Ok(())
}

fn say(line: &str) {
    println!("{line}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

fn print_event(e: &Event) {
    for l in event_lines(e) {
        say(&l);
    }
}

/// What to tell the operator about a child.
fn event_lines(e: &Event) -> Vec<String> {
    match e {
        Event::Started { name, pid } => vec![format!("started {name} (pid {pid})")],
        Event::Crashed {
            name,
            status,
            tail,
            log,
        } => std::iter::once(format!(
            "{name} crashed ({status}); its last lines (all in {}):",
            log.display()
        ))
        .chain(tail.iter().map(|l| format!("    | {l}")))
        .collect(),
        Event::Restarting {
            name,
            after,
            attempt,
        } => vec![format!(
            "restarting {name} in {after:?} (restart {attempt})"
        )],
        Event::GaveUp { name, crashes } => vec![format!(
            "{name} crashed {crashes} times in a row, each within seconds of starting: not restarting it again"
        )],
        Event::SpawnFailed { name, error } => vec![format!("cannot start {name}: {error}")],
    }
}

/// Lines of recent events kept under the live table, which redraws the
/// screen and would otherwise wipe a crash report within a second.
const RECENT_EVENT_LINES: usize = 16;

async fn orchestrate(a: &UpArgs, p: Prepared) -> Result<(), UpError> {
    let (mut sup, mut events) = Supervisor::new(RestartPolicy::default());
    let mut sigint = signal(SignalKind::interrupt()).map_err(UpError::Runtime)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(UpError::Runtime)?;
    let logs = p.state.join("logs");
    say(&format!(
        "mesh {:?}: {} services, {} workloads; state in {}",
        p.mesh.name,
        p.mesh.services.len(),
        p.workloads.len(),
        p.state.display()
    ));
    let result = async {
        sup.start(ChildSpec {
            name: "control".into(),
            tier: Tier::Control,
            program: p.trellis.clone(),
            args: vec![
                "control".into(),
                "--data-dir".into(),
                p.state.join("control").display().to_string(),
                "--xds".into(),
                a.xds.to_string(),
                "--api".into(),
                a.api.to_string(),
            ],
            env: BTreeMap::new(),
            log: logs.join("control.log"),
        });
        let http = top::Http::default();
        let api = format!("http://{}", a.api);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if http.get_json(&format!("{api}/healthz")).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(UpError::ControlNotUp {
                    log: logs.join("control.log"),
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                Some(e) = events.recv() => print_event(&e),
                _ = sigint.recv() => return Err(UpError::Interrupted),
                _ = sigterm.recv() => return Err(UpError::Interrupted),
            }
        }
        say(&format!("control plane up: API {api}, xDS {}", a.xds));
        let tokens = make_tokens(&http, &api, &p).await?;
        apply(&http, &api, &p.loaded).await?;
        for w in &p.workloads {
            sup.start(ChildSpec {
                name: format!("app {}", w.name),
                tier: Tier::App,
                program: PathBuf::from(&w.command[0]),
                args: w.command[1..].to_vec(),
                env: w.app_env(),
                log: logs.join(format!("app-{}.log", w.name)),
            });
            sup.start(ChildSpec {
                name: format!("sidecar {}", w.name),
                tier: Tier::Sidecar,
                program: p.proxy.clone(),
                args: w.sidecar_args(a.xds, &tokens[&w.service_account]),
                env: BTreeMap::new(),
                log: logs.join(format!("sidecar-{}.log", w.name)),
            });
        }
        wait_ready(a, &p, &http, &api, &mut events, &mut sigint, &mut sigterm).await?;
        banner(a, &p);
        let watch = a.watch || std::io::stdout().is_terminal();
        let mut prev = None;
        let mut recent: std::collections::VecDeque<String> = Default::default();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                Some(e) = events.recv() => {
                    for l in event_lines(&e) {
                        say(&l);
                        if recent.len() == RECENT_EVENT_LINES {
                            recent.pop_front();
                        }
                        recent.push_back(l);
                    }
                }
                _ = sigint.recv() => return Ok(()),
                _ = sigterm.recv() => return Ok(()),
                _ = tick.tick(), if watch => {
                    if let Ok(cur) = top::snapshot(&http, a.api).await {
                        if let Some(prev) = &prev {
                            let text = top::table(prev, &cur);
                            if std::io::stdout().is_terminal() {
                                let mut screen = format!("mesh {:?} (Ctrl-C stops it)\n{text}", p.mesh.name);
                                if !recent.is_empty() {
                                    screen.push_str("\nrecent events:\n");
                                    for l in &recent {
                                        screen.push_str(l);
                                        screen.push('\n');
                                    }
                                }
                                top::redraw(&screen);
                            } else {
                                say(&text);
                            }
                        }
                        prev = Some(cur);
                    }
                }
            }
        }
    }
    .await;
    say("stopping: apps, then sidecars, then the control plane");
    tokio::select! {
        () = sup.stop() => {}
        // A second Ctrl-C: no more waiting. Exiting is enough, the kernel
        // SIGKILLs every child (pdeathsig).
        _ = sigint.recv() => {
            say("interrupted again: killing everything");
            std::process::exit(130);
        }
    }
    while let Ok(e) = events.try_recv() {
        if !matches!(e, Event::Started { .. }) {
            print_event(&e);
        }
    }
    say("stopped");
    result
}

async fn make_tokens(
    http: &top::Http,
    api: &str,
    p: &Prepared,
) -> Result<BTreeMap<String, PathBuf>, UpError> {
    let accounts: BTreeSet<&str> = p
        .workloads
        .iter()
        .map(|w| w.service_account.as_str())
        .collect();
    let mut out = BTreeMap::new();
    for sa in accounts {
        let err = |reason: String| UpError::Token {
            sa: sa.to_string(),
            reason,
        };
        // The proxy shows it again at each certificate renewal (half-life
        // of 24 h), so it must outlive a long session: the longest allowed.
        let body = json!({"namespace": p.mesh.namespace, "serviceAccount": sa, "ttl": "720h"});
        let (status, text) = http
            .request(
                http::Method::POST,
                &format!("{api}/api/v1/tokens"),
                Some(body.to_string().into_bytes()),
            )
            .await
            .map_err(err)?;
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        let Some(token) = v["token"].as_str().filter(|_| status == 201) else {
            return Err(err(format!(
                "HTTP {status}: {}",
                v["error"].as_str().unwrap_or("no token in the answer")
            )));
        };
        let path = p.state.join("tokens").join(format!("{sa}.token"));
        write_secret(&path, token).map_err(|e| err(format!("writing {}: {e}", path.display())))?;
        out.insert(sa.to_string(), path);
    }
    Ok(out)
}

/// 0600 from the start: the token is never readable by others, not even
/// between create and chmod.
fn write_secret(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// The generated ServiceEntries and every file's resources in one apply,
/// each under its file's name so errors point at it.
async fn apply(http: &top::Http, api: &str, loaded: &mesh::Loaded) -> Result<(), UpError> {
    let join = |docs: &mut dyn Iterator<Item = &Value>| {
        docs.map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let mut files = Vec::new();
    if !loaded.generated.is_empty() {
        files.push(json!({
            "name": mesh::GENERATED_SOURCE,
            "content": join(&mut loaded.generated.iter()),
        }));
    }
    for (name, docs) in &loaded.files {
        if !docs.is_empty() {
            files.push(json!({"name": name, "content": join(&mut docs.iter().map(|d| &d.raw))}));
        }
    }
    if files.is_empty() {
        return Ok(());
    }
    let (status, text) = http
        .request(
            http::Method::POST,
            &format!("{api}/api/v1/apply"),
            Some(json!({"files": files}).to_string().into_bytes()),
        )
        .await
        .map_err(|message| UpError::Apply {
            message,
            details: Vec::new(),
        })?;
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    if !(200..300).contains(&status) {
        return Err(UpError::Apply {
            message: v["error"]
                .as_str()
                .map_or_else(|| format!("HTTP {status}"), str::to_string),
            details: serde_json::from_value(v["details"].clone()).unwrap_or_default(),
        });
    }
    for r in v["results"].as_array().into_iter().flatten() {
        say(&format!(
            "applied {} {}/{}: {}",
            r["kind"].as_str().unwrap_or("?"),
            r["namespace"].as_str().unwrap_or("?"),
            r["name"].as_str().unwrap_or("?"),
            r["action"].as_str().unwrap_or("?")
        ));
    }
    Ok(())
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site; the loop owns the signals"
)]
async fn wait_ready(
    a: &UpArgs,
    p: &Prepared,
    http: &top::Http,
    api: &str,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    sigint: &mut tokio::signal::unix::Signal,
    sigterm: &mut tokio::signal::unix::Signal,
) -> Result<(), UpError> {
    let nodes: Vec<String> = p.workloads.iter().map(Workload::node).collect();
    let terminal = std::io::stdout().is_terminal();
    let deadline = tokio::time::Instant::now() + a.ready_timeout;
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    let mut drawn = 0usize;
    loop {
        let proxies = http
            .get_json(&format!("{api}/api/v1/proxies"))
            .await
            .unwrap_or_default();
        let registered = http
            .get_json(&format!("{api}/api/v1/workloads"))
            .await
            .unwrap_or_default();
        let mut app_up = BTreeSet::new();
        for w in &p.workloads {
            let connect = tokio::net::TcpStream::connect(w.app());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
                app_up.insert(w.node());
            }
        }
        let statuses = progress::statuses(&nodes, &proxies, &registered, &app_up);
        let lines: Vec<(String, String)> = p
            .workloads
            .iter()
            .map(|w| {
                let s = statuses[&w.node()];
                (
                    w.name.clone(),
                    format!("  {:<24} {:<15} {}", w.name, w.address, s.describe()),
                )
            })
            .collect();
        if terminal {
            // Redraw the block in place (an event printed since moves it down).
            if drawn > 0 {
                print!("\x1b[{drawn}A");
            }
            for (_, l) in &lines {
                println!("\x1b[2K{l}");
            }
            drawn = lines.len();
        } else {
            for (name, l) in &lines {
                if shown.get(name) != Some(l) {
                    say(l);
                    shown.insert(name.clone(), l.clone());
                }
            }
        }
        if statuses.values().all(|s| s.ready()) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            let waiting = p
                .workloads
                .iter()
                .filter(|w| !statuses[&w.node()].ready())
                .map(|w| format!("{} ({})", w.name, statuses[&w.node()].describe()))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(UpError::NotReady {
                timeout: a.ready_timeout,
                waiting,
                logs: p.state.join("logs"),
            });
        }
        let sleep = tokio::time::sleep(Duration::from_millis(250));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                Some(e) = events.recv() => {
                    print_event(&e);
                    drawn = 0;
                }
                _ = sigint.recv() => return Err(UpError::Interrupted),
                _ = sigterm.recv() => return Err(UpError::Interrupted),
            }
        }
    }
}

fn banner(a: &UpArgs, p: &Prepared) {
    let api = format!("http://{}", a.api);
    say(&format!(
        "mesh {:?} is up: {} workloads registered, healthy and configured",
        p.mesh.name,
        p.workloads.len()
    ));
    say(&format!(
        "  API         {api}   (trellis get all --server {api})"
    ));
    say(&format!("  metrics     {api}/metrics"));
    say(&format!("  dashboard   {api}/dashboard"));
    say(&format!("  top         trellis top --api {}", a.api));
    say(&format!("  logs        {}", p.state.join("logs").display()));
    say(&format!(
        "  {:<24} {:<22} {}",
        "workload", "app", "sidecar admin (/stats/prometheus, /config_dump)"
    ));
    for w in &p.workloads {
        say(&format!(
            "  {:<24} {:<22} http://{}",
            w.name,
            w.app().to_string(),
            w.admin()
        ));
    }
    say("Ctrl-C stops everything.");
}
