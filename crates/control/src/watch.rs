//! Watching the config directory (GitOps style): a change is read, validated
//! with the API's resources and swapped in as one store change; a rejected
//! change is logged with every error, and the previous files stay in effect.
//!
//! Polling every 200 ms (path, size, mtime), like the proxy's standalone
//! mode: it sees editors' rename-over-writes, ConfigMap symlink swaps and
//! network filesystems alike, for a few stat calls.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use crate::ControlPlane;
use crate::store::StoreError;

/// Poll `dir` until `stop` is set, feeding changes to the store.
pub fn run(dir: PathBuf, plane: Arc<ControlPlane>, poll: Duration, stop: Arc<AtomicBool>) {
    let mut seen = fingerprint(&dir);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(poll);
        let now = fingerprint(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        reload(&dir, &plane);
    }
}

/// Read the folder and hand it to the store; log what happened.
pub fn reload(dir: &Path, plane: &ControlPlane) {
    let docs = match trellis_model::load_dir_raw(dir) {
        Ok(docs) => docs,
        Err(errors) => {
            for e in errors.iter() {
                tracing::error!(file = %e.file, resource = %e.resource, field = %e.field, reason = %e.reason,
                    "config directory change rejected; the previous files stay in effect");
            }
            plane.with_store(|s| s.files_unreadable(errors));
            return;
        }
    };
    match plane.with_store(|s| s.set_files(docs).map(|c| (c, s.snapshot().generation))) {
        Ok((change, generation)) if !change.is_empty() => {
            tracing::info!(
                dir = %dir.display(),
                created = change.created.len(),
                configured = change.configured.len(),
                deleted = change.deleted.len(),
                generation,
                "config directory reloaded"
            );
        }
        Ok(_) => {}
        Err(StoreError::Invalid { summary, errors }) => {
            tracing::error!(dir = %dir.display(), "{summary}");
            for e in errors.iter() {
                tracing::error!(file = %e.file, resource = %e.resource, field = %e.field, reason = %e.reason,
                    "config directory change rejected");
            }
        }
        Err(e) => tracing::error!(error = %e, "config directory change not stored"),
    }
}

type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// Path, size and modification time of every config file, sorted.
fn fingerprint(dir: &Path) -> Fingerprint {
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

fn walk(dir: &Path, out: &mut Fingerprint) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
        {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk(&path, out);
        } else if trellis_model::load::is_config_file(&path) {
            out.push((path, meta.len(), meta.modified().ok()));
        }
    }
}
