//! The Python interpreter for tests, and the grpcio client script.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The Python interpreter for tests: `$TRELLIS_PYTHON` if set, else
/// `<workspace>/.venv/bin/python` if it exists, else `python3` (from PATH).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TRELLIS_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = workspace_root().join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// Path of `py/grpc_client.py`, a grpcio client of the echo server's
/// `trellis.test.Echo` service.
pub fn grpc_client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py/grpc_client.py")
}

/// Runs `grpc_client.py --target <target> --authority <authority> <args...>`
/// (args such as `["stream", "--messages", "5"]`) and returns the JSON it
/// prints: `{"mode", "code" (e.g. "OK"), "details", "messages": [..],
/// "initial_metadata": {..}, "trailing_metadata": {..}, "interleaved"}`.
/// A gRPC error status is not a failure here: assert on `code`.
///
/// # Panics
/// If the script cannot run, exits non-zero (e.g. grpcio is missing) or
/// prints no JSON.
pub async fn grpc_client(target: SocketAddr, authority: &str, args: &[&str]) -> serde_json::Value {
    let py = python();
    let mut cmd = Command::new(&py);
    cmd.arg(grpc_client_script())
        .arg("--target")
        .arg(target.to_string())
        .arg("--authority")
        .arg(authority)
        .args(args);
    let what = format!("{cmd:?}");
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .unwrap_or_else(|e| {
            panic!(
                "{what}: cannot run {}: {e} (set TRELLIS_PYTHON?)",
                py.display()
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let hint = if stderr.contains("No module named 'grpc'") {
        "\nhint: grpcio is missing for this interpreter: `python3 -m venv .venv && \
         .venv/bin/pip install grpcio` in the workspace, or set TRELLIS_PYTHON"
    } else {
        ""
    };
    assert!(
        output.status.success(),
        "{what} failed ({}); stdout:\n{stdout}\nstderr:\n{stderr}{hint}",
        output.status
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!("{what} printed no JSON ({e}); stdout:\n{stdout}\nstderr:\n{stderr}")
    })
}

/// Path of `py/xds_client.py`, a proxyless grpcio client (`xds:///` targets)
/// that counts which echo server answered each call.
pub fn xds_client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py/xds_client.py")
}
