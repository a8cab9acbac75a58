//! The audit log: one JSON line per denied request or connection, and per
//! AUDIT match. Workers hand entries to a bounded channel and never wait: a
//! full channel drops the entry and counts it
//! (`trellis_audit_log_dropped_total`). The `trellis-audit` thread formats
//! and writes them: to stdout (the default, where container platforms
//! collect and rotate logs) or to a file it rotates by size, keeping a
//! bounded number of files.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use super::decide::{Cause, Decision, Matched};

/// Entries waiting for the writer. A burst of denials beyond this is
/// dropped (and counted) rather than slowing requests down.
const QUEUE: usize = 4096;

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Off,
    Stdout,
    /// A file rotated at `max_bytes`, keeping `max_files` files in all
    /// (`PATH`, `PATH.1`, ... `PATH.<max_files - 1>`).
    File {
        path: PathBuf,
        max_bytes: u64,
        max_files: usize,
    },
}

impl Target {
    /// `off`, `-` (stdout) or a path.
    pub fn parse(s: &str, max_bytes: u64, max_files: usize) -> Target {
        match s {
            "off" => Target::Off,
            "-" => Target::Stdout,
            p => Target::File {
                path: PathBuf::from(p),
                max_bytes,
                max_files: max_files.max(1),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(
        "cannot open the audit log {path}: {source} (check that its folder exists and is writable)"
    )]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot start the audit log thread: {0}")]
    Thread(io::Error),
}

/// Whether the request was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allowed,
    Denied,
}

/// The destination of the audited traffic: this workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `--workload`; None when not given.
    pub name: Option<Arc<str>>,
    pub namespace: Arc<str>,
}

/// One audit event, as the request path hands it over (formatting happens
/// on the writer thread).
#[derive(Debug, Clone)]
pub struct Entry {
    pub time: SystemTime,
    pub principal: Option<Arc<str>>,
    pub source: SocketAddr,
    pub workload: Arc<Workload>,
    pub port: u16,
    /// None for opaque TCP.
    pub http: Option<HttpFields>,
    pub decision: Decision,
}

#[derive(Debug, Clone)]
pub struct HttpFields {
    pub host: String,
    pub method: String,
    pub path: String,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    outcome: Outcome,
    /// `deny_rule`, `no_allow_match` (default deny), `allow_rule`,
    /// `no_policy` (allowed, logged only because an AUDIT rule matched).
    reason: &'static str,
    source: Source<'a>,
    destination: Destination<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<RequestLine<'a>>,
    /// The policy that decided; null for default deny and no policy.
    policy: Option<PolicyRef<'a>>,
    /// The AUDIT policy that matched, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    audit: Option<PolicyRef<'a>>,
}

#[derive(Serialize)]
struct Source<'a> {
    principal: Option<&'a str>,
    address: String,
}

#[derive(Serialize)]
struct Destination<'a> {
    workload: Option<&'a str>,
    namespace: &'a str,
    port: u16,
    protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<&'a str>,
}

#[derive(Serialize)]
struct RequestLine<'a> {
    method: &'a str,
    path: &'a str,
}

#[derive(Serialize)]
struct PolicyRef<'a> {
    name: &'a str,
    action: &'static str,
    rule: usize,
}

impl<'a> From<&'a Matched> for PolicyRef<'a> {
    fn from(m: &'a Matched) -> Self {
        PolicyRef {
            name: &m.policy,
            action: m.action.name(),
            rule: m.rule,
        }
    }
}

impl Entry {
    /// The JSON line (without the newline).
    pub fn to_json(&self) -> String {
        let d = &self.decision;
        let (outcome, reason) = match &d.cause {
            Cause::Denied(_) => (Outcome::Denied, "deny_rule"),
            Cause::NoAllowMatch => (Outcome::Denied, "no_allow_match"),
            Cause::Allowed(_) => (Outcome::Allowed, "allow_rule"),
            Cause::NoPolicy => (Outcome::Allowed, "no_policy"),
        };
        let line = Line {
            time: rfc3339(self.time),
            outcome,
            reason,
            source: Source {
                principal: self.principal.as_deref(),
                address: self.source.to_string(),
            },
            destination: Destination {
                workload: self.workload.name.as_deref(),
                namespace: &self.workload.namespace,
                port: self.port,
                protocol: if self.http.is_some() { "http" } else { "tcp" },
                host: self.http.as_ref().map(|h| h.host.as_str()),
            },
            request: self.http.as_ref().map(|h| RequestLine {
                method: &h.method,
                path: &h.path,
            }),
            policy: d.decided_by().map(PolicyRef::from),
            audit: d.audit.as_ref().map(PolicyRef::from),
        };
        // Plain strings and numbers: serializing cannot fail.
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// Does this decision produce an audit line? Denials and AUDIT matches.
pub fn wanted(d: &Decision) -> bool {
    !d.allowed() || d.audit.is_some()
}

/// The handle workers log through. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: SyncSender<Entry>,
    dropped: Counter,
}

impl AuditLog {
    /// Open the target and start the writer thread; `None` when off.
    pub fn start(
        target: &Target,
        dropped: Counter,
        written: Counter,
    ) -> Result<Option<AuditLog>, AuditError> {
        let sink = match target {
            Target::Off => return Ok(None),
            Target::Stdout => Sink::Stdout,
            Target::File {
                path,
                max_bytes,
                max_files,
            } => Sink::File(RotatingFile::open(path, *max_bytes, *max_files).map_err(
                |source| AuditError::Open {
                    path: path.clone(),
                    source,
                },
            )?),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("trellis-audit".into())
            .spawn(move || write_loop(rx, sink, written))
            .map_err(AuditError::Thread)?;
        Ok(Some(AuditLog { tx, dropped }))
    }

    /// Hand an entry to the writer; never blocks.
    pub fn record(&self, entry: Entry) {
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

enum Sink {
    Stdout,
    File(RotatingFile),
}

fn write_loop(rx: Receiver<Entry>, mut sink: Sink, written: Counter) {
    while let Ok(entry) = rx.recv() {
        let mut line = entry.to_json();
        line.push('\n');
        let result = match &mut sink {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(line.as_bytes()).and_then(|()| out.flush())
            }
            Sink::File(f) => f.write_line(line.as_bytes()),
        };
        match result {
            Ok(()) => {
                written.inc();
            }
            // Logged, not fatal: the proxy keeps enforcing without its log.
            Err(e) => tracing::warn!(error = %e, "audit log write failed"),
        };
    }
}

/// A file rotated by size: when a line would take it past `max_bytes`,
/// `PATH.<n>` becomes `PATH.<n+1>` (the oldest beyond `max_files` is
/// deleted) and `PATH` starts again. Created 0640.
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    max_files: usize,
}

impl RotatingFile {
    pub fn open(path: &Path, max_bytes: u64, max_files: usize) -> io::Result<RotatingFile> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes,
            max_files: max_files.max(1),
        })
    }

    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let len = line.len() as u64;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += len;
        Ok(())
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.max_files == 1 {
            // Only the live file is kept: start it over.
            self.file = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&self.path)?;
            self.size = 0;
            return Ok(());
        }
        let oldest = self.rotated(self.max_files - 1);
        match std::fs::remove_file(&oldest) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for n in (1..self.max_files - 1).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// `2026-11-22T17:19:50.123Z` (RFC 3339, UTC, milliseconds).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, "2000-02-29T00:00:00.000Z"),
            (1_795_367_990, "2026-11-22T17:19:50.000Z"),
            (4_107_542_399, "2100-02-28T23:59:59.000Z"),
        ];
        for (secs, want) in cases {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(rfc3339(t), want, "{secs}");
        }
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(rfc3339(t), "1970-01-01T00:00:01.500Z");
    }

    #[test]
    fn rotation_keeps_at_most_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut f = RotatingFile::open(&path, 100, 3).unwrap();
        for i in 0..50 {
            f.write_line(format!("{i:039}\n").as_bytes()).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["audit.log", "audit.log.1", "audit.log.2"]);
        for n in &names {
            let len = std::fs::metadata(dir.path().join(n)).unwrap().len();
            assert!(len <= 100, "{n} is {len} bytes");
        }
        // The newest line is in the live file, the one before it rotated.
        let live = std::fs::read_to_string(&path).unwrap();
        assert!(live.ends_with(&format!("{:039}\n", 49)), "{live}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o137, 0, "mode {mode:o} is wider than 0640");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, _rx) = sync_channel(1);
        let log = AuditLog {
            tx,
            dropped: Counter::default(),
        };
        let entry = Entry {
            time: SystemTime::UNIX_EPOCH,
            principal: None,
            source: "10.0.0.1:5000".parse().unwrap(),
            workload: Arc::new(Workload {
                name: Some("api".into()),
                namespace: "shop".into(),
            }),
            port: 8080,
            http: None,
            decision: Decision {
                cause: Cause::NoAllowMatch,
                audit: None,
            },
        };
        log.record(entry.clone());
        log.record(entry.clone());
        log.record(entry.clone());
        assert_eq!(log.dropped.get(), 2);
        let line: serde_json::Value = serde_json::from_str(&entry.to_json()).unwrap();
        assert_eq!(line["outcome"], "denied");
        assert_eq!(line["reason"], "no_allow_match");
        assert_eq!(line["policy"], serde_json::Value::Null);
        assert_eq!(line["destination"]["protocol"], "tcp");
        assert_eq!(line["source"]["address"], "10.0.0.1:5000");
    }
}
