//! A credentials source: an identity directory (`--identity-dir DIR`) with
//! `cert.pem` (the chain, leaf first), `key.pem` and `roots.pem`, written by
//! whatever issues certificates (cert-manager, a SPIRE agent, a script).
//!
//! Polled like the config folder (path, size, mtime every 200 ms), so it
//! sees rename-over-writes and Kubernetes secret symlink swaps. A set that
//! does not load (a half-written file, a key that does not fit the
//! certificate) is logged with the file and the reason, and the last good
//! set keeps serving; the next poll tries again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::credentials::{Credentials, CredentialsError, CredentialsTx};
use super::spiffe::SpiffeId;

pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";
pub const ROOTS_FILE: &str = "roots.pem";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The PEM error never quotes the file's bytes (they may be a key).
    #[error("{path}: not valid PEM {what}: {reason}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("{path}: holds no {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{dir}: {source}")]
    Credentials {
        dir: PathBuf,
        source: CredentialsError,
    },
}

/// Read and check the directory's three files.
pub fn load(dir: &Path, provider: &CryptoProvider) -> Result<(Credentials, SpiffeId), LoadError> {
    let read = |name: &str| -> Result<(PathBuf, Vec<u8>), LoadError> {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok((path, bytes)),
            Err(source) => Err(LoadError::Read { path, source }),
        }
    };
    let certs =
        |name: &str, what: &'static str| -> Result<Vec<CertificateDer<'static>>, LoadError> {
            let (path, bytes) = read(name)?;
            let certs = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| LoadError::Pem {
                    path: path.clone(),
                    what,
                    reason: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(LoadError::Empty { path, what });
            }
            Ok(certs)
        };
    let chain = certs(CERT_FILE, "certificate")?;
    let roots = certs(ROOTS_FILE, "root certificate")?;
    let (key_path, key_bytes) = read(KEY_FILE)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => LoadError::Empty {
            path: key_path.clone(),
            what: "private key",
        },
        // Only the error's kind: a parse error must not echo key material.
        e => LoadError::Pem {
            path: key_path.clone(),
            what: "private key",
            reason: pem_reason(&e),
        },
    })?;
    warn_if_readable_by_others(&key_path);
    let creds = Credentials { chain, key, roots };
    let id = creds
        .check(provider)
        .map_err(|source| LoadError::Credentials {
            dir: dir.to_path_buf(),
            source,
        })?;
    Ok((creds, id))
}

/// A key others can read is the operator's to fix, not a reason to run
/// without an identity: said loudly, then used.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            mode = format_args!("{:o}", m.permissions().mode() & 0o777),
            "the private key is readable by other users: chmod 600 it"
        );
    }
}

fn pem_reason(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { .. } => "a BEGIN line without its END line".into(),
        E::IllegalSectionStart { .. } => "a malformed BEGIN line".into(),
        E::Base64Decode(_) => "bad base64 inside a PEM block".into(),
        E::Io(e) => e.to_string(),
        E::NoItemsFound => "no PEM block".into(),
        _ => "unreadable PEM".into(),
    }
}

/// What a poll compares: each file's size and mtime (None: missing).
type Fingerprint = [Option<(u64, SystemTime)>; 3];

fn fingerprint(dir: &Path) -> Fingerprint {
    [CERT_FILE, KEY_FILE, ROOTS_FILE].map(|f| {
        std::fs::metadata(dir.join(f))
            .ok()
            .and_then(|m| Some((m.len(), m.modified().ok()?)))
    })
}

/// Loads the directory once; the caller fails to start on an error (a
/// proxy told to have an identity must not come up without one).
pub fn initial(
    dir: &Path,
    provider: &CryptoProvider,
) -> Result<(Arc<Credentials>, SpiffeId), LoadError> {
    let (c, id) = load(dir, provider)?;
    Ok((Arc::new(c), id))
}

/// Poll `dir` until the process exits (or every receiver is gone),
/// publishing each good new set on `tx`.
pub fn watch(dir: PathBuf, provider: Arc<CryptoProvider>, tx: CredentialsTx, poll: Duration) {
    let mut seen = fingerprint(&dir);
    let mut last_error: Option<String> = None;
    loop {
        std::thread::sleep(poll);
        if tx.is_closed() {
            return;
        }
        let now = fingerprint(&dir);
        if now == seen {
            continue;
        }
        match load(&dir, &provider) {
            Ok((creds, id)) => {
                seen = now;
                last_error = None;
                tracing::info!(dir = %dir.display(), identity = %id, "workload certificate reloaded");
                tx.send_replace(Some(Arc::new(creds)));
            }
            Err(e) => {
                // Logged once per distinct error; retried every poll, since
                // a writer may still be midway through the three files.
                let msg = e.to_string();
                if last_error.as_ref() != Some(&msg) {
                    tracing::warn!(error = %msg, "identity files not loaded; keeping the previous certificate");
                    last_error = Some(msg);
                }
            }
        }
    }
}
