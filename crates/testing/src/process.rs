//! `ProxyProcess`: the real proxy binary as a child process of a test.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tempfile::TempDir;

use crate::client::{http1_client_to, try_send};

/// How long [`ProxyProcess::start`] waits for the addr file by default.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

const POLL: Duration = Duration::from_millis(20);

/// A running proxy. Started with `--addr-file <tmp>` appended to its
/// arguments; the proxy writes that file (atomically, by rename) once its
/// listeners are bound, as JSON such as
/// `{"outbound":"127.0.0.1:p","inbound":"127.0.0.1:p","admin":"127.0.0.1:p"}`.
/// Its stdout and stderr go to one temp file, read back by [`logs`](Self::logs).
///
/// Dropping it kills the process (SIGKILL) and reaps it, so no proxy
/// outlives its test.
pub struct ProxyProcess {
    child: Child,
    addrs: BTreeMap<String, SocketAddr>,
    log_path: PathBuf,
    _dir: TempDir,
}

/// Why a proxy did not come up.
#[derive(Debug)]
pub enum StartError {
    /// The binary could not be run.
    Spawn { bin: PathBuf, error: std::io::Error },
    /// The process exited before writing the addr file.
    Exited { status: ExitStatus, logs: String },
    /// No addr file within the timeout (the process was killed).
    Timeout { after: Duration, logs: String },
    /// The addr file was not the expected JSON (the process was killed).
    BadAddrFile {
        contents: String,
        reason: String,
        logs: String,
    },
}

impl StartError {
    /// The proxy's output up to the failure (empty for `Spawn`).
    pub fn logs(&self) -> &str {
        match self {
            StartError::Spawn { .. } => "",
            StartError::Exited { logs, .. }
            | StartError::Timeout { logs, .. }
            | StartError::BadAddrFile { logs, .. } => logs,
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Spawn { bin, error } => write!(f, "cannot run {}: {error}", bin.display()),
            StartError::Exited { status, logs } => {
                write!(
                    f,
                    "proxy exited ({status}) before writing its addr file; output:\n{logs}"
                )
            }
            StartError::Timeout { after, logs } => {
                write!(
                    f,
                    "proxy wrote no addr file within {after:?}; output:\n{logs}"
                )
            }
            StartError::BadAddrFile {
                contents,
                reason,
                logs,
            } => write!(f, "bad addr file ({reason}): {contents:?}; output:\n{logs}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Options for starting a proxy; from [`ProxyProcess::command`].
#[derive(Debug, Clone)]
pub struct ProxyCommand {
    bin: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    timeout: Duration,
}

impl ProxyCommand {
    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the proxy only (the test process's
    /// environment is left alone).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// How long to wait for the addr file (default [`START_TIMEOUT`]).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs the proxy and waits for its addr file.
    pub async fn start(self) -> Result<ProxyProcess, StartError> {
        let dir = tempfile::Builder::new()
            .prefix("trellis-proxy-")
            .tempdir()
            .map_err(|error| self.spawn_error(error))?;
        let addr_file = dir.path().join("addrs.json");
        let log_path = dir.path().join("output.log");
        let log = File::create(&log_path).map_err(|error| self.spawn_error(error))?;
        let log2 = log.try_clone().map_err(|error| self.spawn_error(error))?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .arg("--addr-file")
            .arg(&addr_file)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|error| self.spawn_error(error))?;
        let mut proc = ProxyProcess {
            child,
            addrs: BTreeMap::new(),
            log_path,
            _dir: dir,
        };
        // A real-time deadline, so paused tokio time cannot cut it short.
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Ok(contents) = std::fs::read_to_string(&addr_file) {
                return match parse_addrs(&contents) {
                    Ok(addrs) => {
                        proc.addrs = addrs;
                        Ok(proc)
                    }
                    Err(reason) => Err(StartError::BadAddrFile {
                        contents,
                        reason,
                        logs: proc.kill_for_logs(),
                    }),
                };
            }
            if let Ok(Some(status)) = proc.child.try_wait() {
                return Err(StartError::Exited {
                    status,
                    logs: proc.logs(),
                });
            }
            if Instant::now() >= deadline {
                return Err(StartError::Timeout {
                    after: self.timeout,
                    logs: proc.kill_for_logs(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn spawn_error(&self, error: std::io::Error) -> StartError {
        StartError::Spawn {
            bin: self.bin.clone(),
            error,
        }
    }
}

fn parse_addrs(contents: &str) -> Result<BTreeMap<String, SocketAddr>, String> {
    let value: serde_json::Value =
        serde_json::from_str(contents).map_err(|e| format!("not JSON: {e}"))?;
    let object = value.as_object().ok_or("not a JSON object")?;
    object
        .iter()
        .map(|(name, addr)| {
            let addr = addr
                .as_str()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("{name}: expected \"ip:port\", got {addr}"))?;
            Ok((name.clone(), addr))
        })
        .collect()
}

impl ProxyProcess {
    /// Runs `bin args... --addr-file <tmp>` and waits (up to
    /// [`START_TIMEOUT`]) until the proxy has written the addr file.
    ///
    /// # Panics
    /// If the proxy does not come up; the message holds its output.
    pub async fn start(bin: &Path, args: &[&str]) -> ProxyProcess {
        Self::command(bin)
            .args(args)
            .start()
            .await
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()))
    }

    /// A builder, for environment variables, a different timeout, or to get
    /// the [`StartError`] (to test that bad input makes the proxy exit).
    pub fn command(bin: &Path) -> ProxyCommand {
        ProxyCommand {
            bin: bin.to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            timeout: START_TIMEOUT,
        }
    }

    /// The outbound listener.
    ///
    /// # Panics
    /// If the proxy reported none.
    pub fn outbound(&self) -> SocketAddr {
        self.expect_addr("outbound")
    }

    /// The inbound listener.
    ///
    /// # Panics
    /// If the proxy reported none.
    pub fn inbound(&self) -> SocketAddr {
        self.expect_addr("inbound")
    }

    /// The admin listener.
    ///
    /// # Panics
    /// If the proxy reported none.
    pub fn admin(&self) -> SocketAddr {
        self.expect_addr("admin")
    }

    /// Any listener named in the addr file.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.get(name).copied()
    }

    fn expect_addr(&self, name: &str) -> SocketAddr {
        self.addr(name).unwrap_or_else(|| {
            panic!(
                "the proxy reported no {name:?} listener, only {:?}",
                self.addrs
            )
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the proxy printed so far (stdout and stderr interleaved).
    pub fn logs(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    /// Waits until the logs contain `needle`; false after `timeout`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `GET path` on the admin listener: status and body (lossy UTF-8).
    ///
    /// # Panics
    /// If the request fails; the message holds the proxy's output.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let req = Request::get(format!("http://{}{path}", self.admin()))
            .body(Full::new(Bytes::new()))
            .unwrap_or_else(|e| panic!("bad admin path {path:?}: {e}"));
        match try_send(&http1_client_to(self.admin()), req).await {
            Ok((status, _, body)) => (status.as_u16(), String::from_utf8_lossy(&body).into_owned()),
            Err(e) => panic!("admin GET {path}: {e}; proxy output:\n{}", self.logs()),
        }
    }

    /// Sends SIGTERM (via `kill(1)`), e.g. to test graceful shutdown.
    ///
    /// # Panics
    /// If `kill` cannot be run.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .unwrap_or_else(|e| panic!("running kill: {e}"));
        assert!(
            status.success(),
            "kill -TERM {} failed: {status}",
            self.pid()
        );
    }

    /// Waits up to `timeout` for the process to exit; `None` if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Kills and reaps the process, then returns its output.
    fn kill_for_logs(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.logs()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
