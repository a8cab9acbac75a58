//! The CA's files: private ones (keys) are created 0600 atomically and
//! refused when others can read them; public ones (certificates, the
//! bundle) are replaced atomically too, so a crash never leaves half a file.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} holds a private key but its mode is {mode:o}: group or others can read it; run `chmod 600 {}` (and check who has seen it)",
        path.display(), path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
}

/// Write `bytes` to `path` readable by its owner only: a temporary file is
/// created with mode 0600 (never wider, not even for a moment), synced, then
/// renamed over `path`.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_atomically(path, bytes, 0o600)
}

/// Write a file others may read (certificates), atomically.
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_atomically(path, bytes, 0o644)
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let err = |source| FileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    // A leftover from a crash may have any mode: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Read a private key file, refusing it when group or others can read it:
/// a key others could read must be treated as leaked, so the operator must
/// look, not the CA silently tighten the mode.
pub fn read_private(path: &Path) -> Result<Vec<u8>, FileError> {
    let meta = std::fs::metadata(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FileError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    read(path)
}

pub fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_exposed_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        write_private(&key, b"secret").unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_private(&key).unwrap(), b"secret");
        // Replacing keeps 0600 and leaves no temporary file behind.
        write_private(&key, b"again").unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        for bad in [0o640, 0o604, 0o644] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(bad)).unwrap();
            let e = read_private(&key).unwrap_err();
            assert!(matches!(e, FileError::Exposed { mode, .. } if mode == bad));
            let msg = e.to_string();
            assert!(msg.contains("chmod 600"), "{msg}");
            assert!(!msg.contains("again"), "{msg}");
        }
    }
}
