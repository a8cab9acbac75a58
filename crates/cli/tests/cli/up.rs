//! `trellis up` through the real binaries: a Mesh of two `trellis-echo`
//! services, each replica with its own loopback address and sidecar, on a
//! random `127.x.y.0` base so parallel tests never collide. A request
//! crosses a sidecar to the other service over mTLS; a killed app is
//! reported and restarted; SIGINT stops everything; SIGKILL of `up` leaves
//! no process behind; bad input fails before anything starts.
//!
//! trellis-proxy and trellis-echo are found beside the `trellis` binary
//! under test, as `trellis up` finds them (`cargo test --workspace` builds
//! them; with `-p trellis` run `cargo build -p trellis-proxy -p trellis-testing` first).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{BIN, Control, trellis};

fn require_binaries() {
    for name in ["trellis-proxy", "trellis-echo"] {
        let p = Path::new(BIN).with_file_name(name);
        assert!(
            p.exists(),
            "no {name} at {}: run `cargo build -p trellis-proxy -p trellis-testing` (cargo test --workspace builds them)",
            p.display()
        );
    }
}

/// A `127.x.y` prefix no other test of this run uses (x in 100..=227).
fn random_base() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    let n = h.finish();
    format!("127.{}.{}", 100 + (n % 128), 1 + (n >> 8) % 250)
}

fn mesh(a_extra: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1
kind: Mesh
metadata: {{name: pair}}
spec:
  services:
  - name: a
    port: 8080
    command: [trellis-echo]{a_extra}
  - name: b
    port: 9090
    health: {{httpGet: /, interval: 500ms}}
    command: [trellis-echo]
"
    )
}

/// A running `trellis up`, SIGKILLed on drop (its children die with it).
struct Up {
    child: Child,
    out: PathBuf,
    base: String,
    api: String,
    _dir: tempfile::TempDir,
}

impl Up {
    fn args(dir: &Path, file: &Path, base: &str) -> Vec<String> {
        [
            "up",
            "-f",
            &file.display().to_string(),
            "--state-dir",
            &dir.join("state").display().to_string(),
            "--subnet",
            &format!("{base}.0/24"),
            "--xds",
            &format!("{base}.250:15010"),
            "--api",
            &format!("{base}.250:15014"),
        ]
        .map(String::from)
        .to_vec()
    }

    fn start(yaml: &str) -> Up {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mesh.yaml");
        std::fs::write(&file, yaml).unwrap();
        Up::start_file(dir, &file)
    }

    /// `trellis up -f file`, its state in `dir`.
    fn start_file(dir: tempfile::TempDir, file: &Path) -> Up {
        require_binaries();
        let base = random_base();
        let out = dir.path().join("up.out");
        let log = std::fs::File::create(&out).unwrap();
        let child = Command::new(BIN)
            .args(Self::args(dir.path(), file, &base))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("run trellis up");
        let api = format!("{base}.250:15014");
        Up {
            child,
            out,
            base,
            api,
            _dir: dir,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Wait until the output holds `needle` (or `up` exits).
    #[track_caller]
    fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "trellis up exited ({status}) before {needle:?}:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {timeout:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The address of a workload, from its progress line
    /// (`  NAME   ADDRESS   ready ...`).
    fn address(&self, workload: &str) -> String {
        self.output()
            .lines()
            .find_map(|l| {
                let mut cols = l.split_whitespace();
                (cols.next() == Some(workload)).then(|| cols.next().map(str::to_owned))?
            })
            .unwrap_or_else(|| panic!("no address for {workload}:\n{}", self.output()))
    }

    /// The pid of every child it reported starting.
    fn pids(&self) -> Vec<(String, u32)> {
        started(&self.output())
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "trellis up still running after {timeout:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `started NAME (pid N)` lines.
fn started(out: &str) -> Vec<(String, u32)> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("started ")?;
            let (name, pid) = rest.rsplit_once(" (pid ")?;
            Some((name.to_string(), pid.trim_end_matches(')').parse().ok()?))
        })
        .collect()
}

/// Gone, or a zombie nobody reaps (a container's init may not): either way
/// it runs no more.
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[track_caller]
fn all_dead_within(pids: &[(String, u32)], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<_> = pids.iter().filter(|(_, p)| !dead(*p)).collect();
        if alive.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still running: {alive:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET `path` through the sidecar outbound at `via` for `host`: (status, head+body).
fn get_via(via: &str, host: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(via).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.get(9..12)?.parse().ok()?;
    Some((status, raw))
}

#[test]
fn up_serves_restarts_a_crashed_app_and_stops_cleanly_on_sigint() {
    let mut up = Up::start(&mesh(""));
    up.wait_for("is up: 2 workloads", Duration::from_secs(90));
    let out = up.output();
    assert!(
        out.contains("applied ServiceEntry default/a: created"),
        "{out}"
    );
    assert!(
        out.contains(&format!("http://{}.1:15000", up.base)),
        "{out}"
    );

    // a's sidecar -> b's sidecar (mTLS: b's app sees a's SPIFFE ID) -> b's app.
    let a_out = format!("{}.1:15001", up.base);
    let (status, raw) = get_via(&a_out, "b:9090", "/hello").expect("a request through a's sidecar");
    assert_eq!(status, 200, "{raw}");
    assert!(raw.contains("x-upstream: b-0"), "{raw}");
    assert!(
        raw.contains("URI=spiffe://cluster.local/ns/default/sa/a"),
        "the call was not mTLS from a: {raw}"
    );

    // Callers are sent to the sidecar's inbound port (PORTS), not to the app.
    let (_, _, body) = crate::support::http(
        &format!("http://{}", up.api),
        "GET",
        "/api/v1/workloads",
        "",
        "",
    );
    let workloads: serde_json::Value = serde_json::from_str(&body).unwrap();
    let a = workloads["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["node"] == "a-0.default")
        .unwrap_or_else(|| panic!("a-0 not registered: {workloads}"));
    assert_eq!(
        a["workload"]["ports"],
        serde_json::json!({"http": 15006}),
        "{a}"
    );
    assert_eq!(a["workload"]["labels"]["app"], "a", "{a}");

    // trellis top sees the pair, from the proxies' own metrics.
    let load = std::thread::spawn({
        let a_out = a_out.clone();
        move || {
            for _ in 0..40 {
                let _ = get_via(&a_out, "b:9090", "/");
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    });
    let top = trellis(&["top", "--api", &up.api, "--once"]).ok();
    load.join().unwrap();
    let row = top
        .stdout
        .lines()
        .find(|l| l.starts_with("a -> b"))
        .unwrap_or_else(|| panic!("no a -> b row:\n{}", top.stdout));
    assert!(row.contains("100.0%"), "{row}");

    // Kill a's app: reported with its exit and last lines, restarted.
    let (_, app) = *up
        .pids()
        .iter()
        .find(|(n, _)| n == "app a-0")
        .expect("app a-0 started");
    assert!(
        Command::new("kill")
            .args(["-KILL", &app.to_string()])
            .status()
            .unwrap()
            .success()
    );
    up.wait_for(
        "app a-0 crashed (killed by signal 9)",
        Duration::from_secs(10),
    );
    up.wait_for(
        "restarting app a-0 in 250ms (restart 1)",
        Duration::from_secs(10),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.pids().iter().filter(|(n, _)| n == "app a-0").count() < 2 {
        assert!(Instant::now() < deadline, "not restarted:\n{}", up.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = up.output();
    assert!(
        out.contains("    | trellis-echo: a-0 listening on"),
        "no tail: {out}"
    );

    // SIGINT: everything stops, in order, and nothing is left.
    let pids = up.pids();
    assert_eq!(
        pids.len(),
        6,
        "control, 2 apps, 2 sidecars, the restart: {pids:?}"
    );
    up.signal("INT");
    let status = up.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", up.output());
    let out = up.output();
    assert!(
        out.contains("stopping: apps, then sidecars, then the control plane\nstopped"),
        "{out}"
    );
    all_dead_within(&pids, Duration::from_secs(1));
}

#[test]
fn sigkill_of_up_leaves_no_process_behind() {
    let mut up = Up::start(&mesh(""));
    up.wait_for("is up: 2 workloads", Duration::from_secs(90));
    let pids = up.pids();
    assert_eq!(pids.len(), 5, "{pids:?}");
    up.signal("KILL");
    up.wait_exit(Duration::from_secs(5));
    // The kernel sends each child SIGKILL when its parent dies (pdeathsig).
    all_dead_within(&pids, Duration::from_secs(5));
}

/// An app that keeps crashing: each crash reported with its last lines,
/// restarted with growing delays, given up on; the mesh is then not ready
/// in time, `up` says which workload waits for what, and stops the rest.
#[test]
fn a_crash_loop_is_given_up_and_up_fails_cleanly() {
    let yaml = format!(
        "{}  - name: c\n    port: 7070\n    command: [sh, -c, 'echo boom on $TRELLIS_LISTEN; exit 3']\n",
        mesh("")
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, yaml).unwrap();
    require_binaries();
    let base = random_base();
    let mut args = Up::args(dir.path(), &file, &base);
    args.extend(["--ready-timeout".to_string(), "8s".to_string()]);
    let run = trellis(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(run.code, 1, "{run:?}");
    let out = &run.stdout;
    assert!(out.contains("app c-0 crashed (exit code 3)"), "{out}");
    assert!(
        out.contains(&format!("    | boom on {base}.3:7070")),
        "{out}"
    );
    for (delay, n) in [("250ms", 1), ("500ms", 2), ("1s", 3), ("2s", 4)] {
        assert!(
            out.contains(&format!("restarting app c-0 in {delay} (restart {n})")),
            "{out}"
        );
    }
    assert!(out.contains("app c-0 crashed 5 times in a row"), "{out}");
    assert!(
        run.stderr.contains(
            "not every workload was ready within 8s: c-0 (waiting: app not listening yet"
        ),
        "{run:?}"
    );
    assert!(
        out.ends_with("stopping: apps, then sidecars, then the control plane\nstopped\n"),
        "{out}"
    );
    all_dead_within(&started(out), Duration::from_secs(1));
}

/// An app that ignores SIGTERM holds the stop until SIGKILL after the
/// timeout; a second Ctrl-C does not wait: `up` exits at once and the
/// kernel kills every child.
#[test]
fn a_second_ctrl_c_kills_everything_at_once() {
    let echo = Path::new(BIN).with_file_name("trellis-echo");
    let yaml = mesh("").replace(
        "command: [trellis-echo]\n  - name: b",
        &format!(
            "command: [sh, -c, \"trap '' TERM; exec {}\"]\n  - name: b",
            echo.display()
        ),
    );
    let mut up = Up::start(&yaml);
    up.wait_for("is up: 2 workloads", Duration::from_secs(90));
    let pids = up.pids();
    up.signal("INT");
    up.wait_for("stopping: apps, then sidecars", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(1));
    let (_, app) = pids.iter().find(|(n, _)| n == "app a-0").unwrap();
    assert!(
        !dead(*app),
        "a-0 ignores SIGTERM, so it should still run:\n{}",
        up.output()
    );
    assert!(!up.output().contains("stopped"), "{}", up.output());
    up.signal("INT");
    let status = up.wait_exit(Duration::from_secs(3));
    assert_eq!(status.code(), Some(130), "{}", up.output());
    assert!(
        up.output()
            .contains("interrupted again: killing everything"),
        "{}",
        up.output()
    );
    all_dead_within(&pids, Duration::from_secs(5));
}

/// Each bad file fails with exit 1, names the file, the service and the
/// problem, and starts nothing.
#[test]
fn bad_input_fails_before_anything_starts() {
    require_binaries();
    let base = random_base();
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind(format!("{base}.1:8080")).expect("hold a's port");
    let cases: &[(&str, String, &[&str])] = &[
        (
            "missing command",
            mesh("").replace("    command: [trellis-echo]\n  - name: b", "  - name: b"),
            &["Mesh pair: spec.services[0].command: service \"a\" has no command"],
        ),
        (
            "duplicate service",
            mesh("").replace("name: b", "name: a"),
            &["spec.services[1].name: service \"a\" is defined twice"],
        ),
        (
            "unknown field",
            mesh("\n    replica: 2"),
            &["spec.services[0].replica: service \"a\": unknown field"],
        ),
        (
            "program not found",
            mesh("").replace(
                "command: [trellis-echo]\n  - name: b",
                "command: [no-such-program-here]\n  - name: b",
            ),
            &[
                "spec.services[0].command: service \"a\": program \"no-such-program-here\" not found",
            ],
        ),
        (
            "port in use",
            mesh(""),
            &[
                "spec.services[0].port: service \"a\"",
                &format!("{base}.1:8080 (the app of workload a-0) is in use"),
            ],
        ),
    ];
    for (what, yaml, needles) in cases {
        let file = dir.path().join("mesh.yaml");
        std::fs::write(&file, yaml).unwrap();
        let args = Up::args(dir.path(), &file, &base);
        let run = trellis(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(run.code, 1, "{what}: {run:?}");
        assert!(
            run.stderr.contains("nothing was started"),
            "{what}: {run:?}"
        );
        let file_name = file.display().to_string();
        assert!(
            run.stderr.contains(&format!("{file_name}: Mesh pair: ")),
            "{what}: {run:?}"
        );
        for n in *needles {
            assert!(run.stderr.contains(n), "{what}: no {n:?} in {run:?}");
        }
        assert!(!run.stdout.contains("started"), "{what}: {run:?}");
    }
    drop(held);
}

#[test]
fn check_validates_a_mesh_and_apply_refuses_one() {
    let dir = tempfile::tempdir().unwrap();
    let vs = "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b}
spec:
  hosts: [b]
  http: [{route: [{destination: {host: b}}], retries: {attempts: 2}}]
";
    let file = dir.path().join("mesh.yaml");
    // The VirtualService routes to b, which only the Mesh defines.
    std::fs::write(&file, format!("{}{vs}", mesh(""))).unwrap();
    let f = file.display().to_string();
    let run = trellis(&["check", "-f", &f]).ok();
    assert_eq!(
        run.stdout,
        "1 resource in 1 file is valid (and Mesh pair: 2 services, 2 workloads)\n"
    );
    std::fs::write(&file, mesh("").replace("port: 9090", "port: 15006")).unwrap();
    let run = trellis(&["check", "-f", &f]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(
            "Mesh pair: spec.services[1].port: service \"b\": port 15006 is taken by the sidecar"
        ),
        "{run:?}"
    );

    let data = tempfile::tempdir().unwrap();
    let control = Control::start(data.path(), &[]);
    std::fs::write(&file, mesh("")).unwrap();
    let run = control.cli(&["apply", "-f", &f]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("Mesh default/pair: kind: a Mesh is run by `trellis up`, not applied"),
        "{run:?}"
    );
}

/// The demo of examples/inference, as `trellis up` runs it with no
/// arguments: the 80/20 canary holds through the whole pipeline (gateway
/// -> preprocess -> inference -> postprocess, every hop through sidecars
/// over STRICT mTLS), the AuthorizationPolicy lets only preprocess call
/// inference, and Ctrl-C leaves no process behind.
#[test]
fn the_inference_demo_splits_80_20_end_to_end_and_refuses_the_gateway() {
    let demo = Path::new(BIN).with_file_name("trellis-demo");
    assert!(
        demo.exists(),
        "no trellis-demo at {}: cargo test --workspace builds it",
        demo.display()
    );
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/inference/mesh.yaml");
    let mut up = Up::start_file(tempfile::tempdir().unwrap(), &file);
    up.wait_for("is up", Duration::from_secs(120));

    // Requests from the load generator's sidecar, as its own calls go.
    let load = format!("{}:15001", up.address("load-0"));
    let requests = 400;
    let threads = 8;
    let versions: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let load = load.clone();
                s.spawn(move || {
                    (t..requests)
                        .step_by(threads)
                        .map(|i| {
                            let path = format!("/v1/infer?prompt=split-{i}");
                            let (status, raw) = get_via(&load, "gateway:8080", &path)
                                .expect("the gateway answers through the load's sidecar");
                            assert_eq!(status, 200, "{raw}");
                            let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
                            let answer: serde_json::Value =
                                serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw}"));
                            let hops: Vec<&str> = answer["path"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|h| h["service"].as_str().unwrap())
                                .collect();
                            for service in ["gateway", "preprocess", "inference", "postprocess"] {
                                assert!(hops.contains(&service), "no {service} hop: {body}");
                            }
                            answer["path"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .find(|h| h["service"] == "inference")
                                .and_then(|h| h["version"].as_str())
                                .unwrap()
                                .to_string()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let v1 = versions.iter().filter(|v| *v == "v1").count();
    let v2 = versions.iter().filter(|v| *v == "v2").count();
    assert_eq!(v1 + v2, requests, "{versions:?}");
    // Binomial(400, 0.8): sd 2 points, so 6 points either way is 3 sd.
    let share = 100.0 * v1 as f64 / requests as f64;
    assert!(
        (74.0..=86.0).contains(&share),
        "v1 served {share:.1}% ({v1}/{requests}), v2 {v2}"
    );

    // The gateway calling inference directly: its sidecar originates mTLS
    // with the gateway's identity, and inference's sidecar refuses it.
    let gateway = format!("{}:15001", up.address("gateway-0"));
    let (status, raw) = get_via(&gateway, "inference:9090", "/v1/infer?prompt=direct").unwrap();
    assert_eq!(status, 403, "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains("x-trellis-reason: rbac_denied"),
        "{raw}"
    );
    // The same call from preprocess is allowed.
    let preprocess = format!("{}:15001", up.address("preprocess-0"));
    let (status, raw) = get_via(&preprocess, "inference:9090", "/v1/infer?prompt=ok").unwrap();
    assert_ne!(status, 403, "{raw}");
    assert!(!raw.to_ascii_lowercase().contains("rbac_denied"), "{raw}");

    let pids = up.pids();
    assert!(
        pids.len() >= 13,
        "control plus 6 apps and 6 sidecars: {pids:?}"
    );
    up.signal("INT");
    assert!(
        up.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        up.output()
    );
    all_dead_within(&pids, Duration::from_secs(5));
}
