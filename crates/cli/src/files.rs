//! The files behind `-f`: a file, a folder (its YAML files, recursively,
//! sorted, as the config directory is read), or `-` for standard input.

use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no YAML files (*.yaml, *.yml)", path.display())]
    Empty { path: PathBuf },
    #[error("cannot read standard input: {0}")]
    Stdin(#[source] std::io::Error),
}

/// `(name, content)` of every file the arguments name, in order.
pub fn read(args: &[PathBuf]) -> Result<Vec<(String, String)>, FilesError> {
    let mut out = Vec::new();
    for arg in args {
        if arg.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(FilesError::Stdin)?;
            out.push(("<stdin>".to_string(), text));
            continue;
        }
        let err = |source| FilesError::Read {
            path: arg.clone(),
            source,
        };
        if std::fs::metadata(arg).map_err(err)?.is_dir() {
            let mut files = Vec::new();
            collect(arg, &mut files).map_err(err)?;
            if files.is_empty() {
                return Err(FilesError::Empty { path: arg.clone() });
            }
            files.sort();
            for f in files {
                let text = std::fs::read_to_string(&f).map_err(|source| FilesError::Read {
                    path: f.clone(),
                    source,
                })?;
                out.push((f.display().to_string(), text));
            }
        } else {
            out.push((
                arg.display().to_string(),
                std::fs::read_to_string(arg).map_err(err)?,
            ));
        }
    }
    Ok(out)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect(&path, out)?;
        } else if trellis_model::load::is_config_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}
