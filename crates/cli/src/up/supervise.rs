//! Running the mesh's processes: each child in its own process group,
//! killed by the kernel if `trellis up` dies (`pdeathsig`), its output
//! prefixed with its name into a log file of its own, restarted with
//! exponential backoff when it crashes (and given up on after too many
//! quick crashes), and stopped in order: apps, then sidecars, then the
//! control plane, each with SIGTERM and, after a timeout, SIGKILL.
//!
//! Must run on a current-thread runtime on the main thread: the kernel
//! sends the parent-death signal when the *thread* that forked the child
//! exits, and the main thread lives exactly as long as `trellis up`.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::pdeathsig;

/// Lines of a child's output kept to show when it crashes.
const TAIL_LINES: usize = 12;

/// How long a stopping child gets between SIGTERM and SIGKILL (a sidecar
/// drains for up to 5 s).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(6);

/// What a child is; the stop order is this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    App,
    Sidecar,
    Control,
}

#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// `app a-0`, `sidecar a-0`, `control`: log prefix and report name.
    pub name: String,
    pub tier: Tier,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Added to the inherited environment.
    pub env: BTreeMap<String, String>,
    pub log: PathBuf,
}

/// What happened to a child, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started {
        name: String,
        pid: u32,
    },
    /// It exited while it should have been running.
    Crashed {
        name: String,
        status: String,
        tail: Vec<String>,
        log: PathBuf,
    },
    Restarting {
        name: String,
        after: Duration,
        attempt: u32,
    },
    GaveUp {
        name: String,
        crashes: u32,
    },
    /// It could not even be started.
    SpawnFailed {
        name: String,
        error: String,
    },
}

/// Restart with exponential backoff; a run shorter than `quick` counts as
/// a quick crash, and `max_quick_crashes` in a row give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub base: Duration,
    pub cap: Duration,
    pub quick: Duration,
    pub max_quick_crashes: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            base: Duration::from_millis(250),
            cap: Duration::from_secs(8),
            quick: Duration::from_secs(10),
            max_quick_crashes: 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Restart { after: Duration },
    GiveUp,
}

impl RestartPolicy {
    /// After a crash of a run that lasted `ran_for`, with `quick_before`
    /// quick crashes in a row before it: what to do, and the new count.
    pub fn decide(&self, quick_before: u32, ran_for: Duration) -> (Decision, u32) {
        // A run that lasted was healthy for a while: start the count again.
        let quick = if ran_for < self.quick {
            quick_before + 1
        } else {
            1
        };
        if ran_for < self.quick && quick >= self.max_quick_crashes {
            return (Decision::GiveUp, quick);
        }
        let exp = quick.saturating_sub(1).min(16);
        let after = self.base.saturating_mul(1 << exp).min(self.cap);
        (Decision::Restart { after }, quick)
    }
}

struct Running {
    tier: Tier,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

pub struct Supervisor {
    children: Vec<Running>,
    events: mpsc::UnboundedSender<Event>,
    policy: RestartPolicy,
}

impl Supervisor {
    pub fn new(policy: RestartPolicy) -> (Supervisor, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        (
            Supervisor {
                children: Vec::new(),
                events,
                policy,
            },
            rx,
        )
    }

    /// Start a child and keep it running until [`Supervisor::stop`].
    pub fn start(&mut self, spec: ChildSpec) {
        let (stop, stop_rx) = watch::channel(false);
        let tier = spec.tier;
        let task = tokio::spawn(keep_running(
            spec,
            stop_rx,
            self.events.clone(),
            self.policy,
        ));
        self.children.push(Running { tier, stop, task });
    }

    /// Stop everything, tier by tier (apps, sidecars, control); each child
    /// gets SIGTERM, then SIGKILL after [`STOP_TIMEOUT`].
    pub async fn stop(self) {
        let mut by_tier: BTreeMap<Tier, Vec<Running>> = BTreeMap::new();
        for r in self.children {
            by_tier.entry(r.tier).or_default().push(r);
        }
        for (_, group) in by_tier {
            for r in &group {
                let _ = r.stop.send(true);
            }
            for r in group {
                let _ = r.task.await;
            }
        }
    }
}

fn log_file(path: &PathBuf) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

type Tail = Arc<Mutex<VecDeque<String>>>;

/// Copy one of the child's streams into its log, each line prefixed with
/// its name, keeping the last lines for a crash report.
async fn copy_lines(
    stream: impl AsyncRead + Unpin,
    prefix: String,
    log: Arc<Mutex<std::fs::File>>,
    tail: Tail,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        if let Ok(mut f) = log.lock() {
            let _ = writeln!(f, "{prefix} | {line}");
        }
        if let Ok(mut t) = tail.lock() {
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line.to_string());
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

fn signal_group(pid: u32, signal: rustix::process::Signal) {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    // The child leads its own group (process_group(0)), so this reaches
    // whatever it started too.
    let _ = rustix::process::kill_process_group(pid, signal);
}

async fn keep_running(
    spec: ChildSpec,
    mut stop: watch::Receiver<bool>,
    events: mpsc::UnboundedSender<Event>,
    policy: RestartPolicy,
) {
    let mut quick = 0;
    let mut attempt = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let log = match log_file(&spec.log) {
            Ok(f) => Arc::new(Mutex::new(f)),
            Err(e) => {
                let _ = events.send(Event::SpawnFailed {
                    name: spec.name.clone(),
                    error: format!("cannot open its log {}: {e}", spec.log.display()),
                });
                return;
            }
        };
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        pdeathsig::kill_with_parent(&mut cmd);
        let started = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = events.send(Event::SpawnFailed {
                    name: spec.name.clone(),
                    error: format!("cannot run {}: {e}", spec.program.display()),
                });
                return;
            }
        };
        let pid = child.id().unwrap_or_default();
        let _ = events.send(Event::Started {
            name: spec.name.clone(),
            pid,
        });
        let tail: Tail = Arc::default();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(copy_lines(
                out,
                spec.name.clone(),
                log.clone(),
                tail.clone(),
            )));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(copy_lines(
                err,
                spec.name.clone(),
                log.clone(),
                tail.clone(),
            )));
        }
        let exited = tokio::select! {
            s = child.wait() => Some(s),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(status) = exited else {
            signal_group(pid, rustix::process::Signal::TERM);
            if tokio::time::timeout(STOP_TIMEOUT, child.wait())
                .await
                .is_err()
            {
                signal_group(pid, rustix::process::Signal::KILL);
                let _ = child.wait().await;
            }
            // Whatever it left in its group goes with it.
            signal_group(pid, rustix::process::Signal::KILL);
            drain(readers).await;
            return;
        };
        drain(readers).await;
        let ran_for = started.elapsed();
        let status = status.map_or_else(|e| format!("lost track of it ({e})"), describe);
        let lines: Vec<String> = tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        let _ = events.send(Event::Crashed {
            name: spec.name.clone(),
            status,
            tail: lines,
            log: spec.log.clone(),
        });
        // Anything it started dies with it, so the restart finds its ports free.
        signal_group(pid, rustix::process::Signal::KILL);
        let (decision, q) = policy.decide(quick, ran_for);
        quick = q;
        match decision {
            Decision::GiveUp => {
                let _ = events.send(Event::GaveUp {
                    name: spec.name.clone(),
                    crashes: quick,
                });
                return;
            }
            Decision::Restart { after } => {
                attempt += 1;
                let _ = events.send(Event::Restarting {
                    name: spec.name.clone(),
                    after,
                    attempt,
                });
                tokio::select! {
                    _ = tokio::time::sleep(after) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

/// Let the output readers finish (the pipes close when the process and
/// anything it started are gone), but not forever.
async fn drain(readers: Vec<JoinHandle<()>>) {
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_millis(500), r).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_then_gives_up() {
        let p = RestartPolicy::default();
        let q = Duration::from_millis(100);
        let mut n = 0;
        let mut delays = Vec::new();
        loop {
            let (d, next) = p.decide(n, q);
            n = next;
            match d {
                Decision::Restart { after } => delays.push(after.as_millis()),
                Decision::GiveUp => break,
            }
        }
        assert_eq!(delays, [250, 500, 1000, 2000]);
        assert_eq!(n, 5);
        let capped = RestartPolicy {
            max_quick_crashes: 100,
            ..p
        };
        assert_eq!(
            capped.decide(10, q).0,
            Decision::Restart {
                after: Duration::from_secs(8)
            }
        );
    }

    #[test]
    fn a_long_run_resets_the_count() {
        let p = RestartPolicy::default();
        assert_eq!(
            p.decide(4, Duration::from_secs(60)),
            (
                Decision::Restart {
                    after: Duration::from_millis(250)
                },
                1
            )
        );
    }
}
