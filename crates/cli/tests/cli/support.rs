//! Running the real `trellis` binary: a control plane on port 0 in a temp
//! data dir, and CLI commands against it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_trellis");

pub const SE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2}}
";

/// A VirtualService for `reviews` splitting `v1`% / rest by weight.
pub fn vs(name: &str, v1: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{destination: {{host: reviews}}, weight: {v1}}}
    - {{destination: {{host: reviews}}, weight: {}}}
",
        100 - v1
    )
}

/// A running `trellis control`, killed on drop.
pub struct Control {
    child: Child,
    pub api: String,
    /// The xDS listener (`ip:port`).
    pub xds: String,
    pub log: PathBuf,
    pub started_in: Duration,
    _run: tempfile::TempDir,
}

impl Control {
    /// Start on `data_dir` with extra arguments; wait for the addr file.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Control {
        Self::try_start(data_dir, extra)
            .unwrap_or_else(|logs| panic!("trellis control did not start:\n{logs}"))
    }

    /// Like [`Control::start`], but the logs on failure instead of a panic.
    pub fn try_start(data_dir: &Path, extra: &[&str]) -> Result<Control, String> {
        let run = tempfile::tempdir().map_err(|e| e.to_string())?;
        let addr_file = run.path().join("addrs.json");
        let log = run.path().join("control.log");
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let begin = Instant::now();
        // A test may pin the xDS address (a restart on the same one).
        let xds: &[&str] = if extra.contains(&"--xds") {
            &[]
        } else {
            &["--xds", "127.0.0.1:0"]
        };
        let mut child = Command::new(BIN)
            .arg("control")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--api", "127.0.0.1:0"])
            .args(xds)
            .arg("--addr-file")
            .arg(&addr_file)
            .args(extra)
            .env("TRELLIS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(out))
            .spawn()
            .map_err(|e| format!("spawn {BIN}: {e}"))?;
        let deadline = begin + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file) {
                let v: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| format!("addr file {text:?} is not JSON: {e}"))?;
                let api = format!("http://{}", v["api"].as_str().expect("api address"));
                let xds = v["xds"].as_str().expect("xds address").to_string();
                return Ok(Control {
                    child,
                    api,
                    xds,
                    log,
                    _run: run,
                    started_in: begin.elapsed(),
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "exited with {status}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!(
                    "no addr file after 20 s:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Run a CLI command against this control plane.
    pub fn cli(&self, args: &[&str]) -> Run {
        trellis(&[args, &["--server", &self.api]].concat())
    }

    /// Send a signal (by pid) and wait for the exit.
    pub fn stop(mut self, signal: &str) -> ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -{signal} {pid}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "trellis control did not exit after SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The result of one CLI run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "command failed:\n{self:?}");
        self
    }

    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{self:?}"))
    }
}

pub fn trellis(args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(BIN)
        .args(args)
        .env_remove("TRELLIS_SERVER")
        .stdin(Stdio::null())
        .output()
        .expect("run trellis");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Write `text` to `dir/name` atomically (temp file, then rename), as the
/// watcher expects of editors and ConfigMap swaps.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// Poll `f` until it returns Some, for up to 10 s.
#[track_caller]
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 request over a plain socket: `(status, content type, body)`.
pub fn http(
    base: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the API");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head[9..12].parse().expect("a status code");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}
