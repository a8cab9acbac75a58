//! Reading resources from YAML: a folder of files, each holding any number of
//! `---`-separated documents.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ConfigError, ConfigErrors};
use crate::resource::{Kind, Meta, Object, Resource, default_namespace};
use crate::validate::valid_label;

/// Largest config file accepted: a guard against a stray multi-gigabyte file
/// in the watched folder, not a limit anyone should meet.
const MAX_FILE_BYTES: u64 = 16 << 20;

/// Parse every document of one YAML text. All problems are collected.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Resource>, ConfigErrors> {
    Ok(parse_documents_raw(file, text)?
        .into_iter()
        .map(|d| d.resource)
        .collect())
}

/// A parsed resource together with the document as written (as JSON), for
/// stores that keep and show resources as they were applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub resource: Resource,
    pub raw: Value,
}

/// Like [`parse_documents`], keeping each document as written.
pub fn parse_documents_raw(file: &str, text: &str) -> Result<Vec<Document>, ConfigErrors> {
    let docs = parse_yaml(file, text)?;
    let mut errors = ConfigErrors::default();
    let mut out = Vec::with_capacity(docs.len());
    for (i, doc) in docs.into_iter().enumerate() {
        match parse_resource(file, i + 1, doc.clone()) {
            Ok(resource) => out.push(Document { resource, raw: doc }),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The documents of one YAML text, as JSON values.
pub(crate) fn parse_yaml(file: &str, text: &str) -> Result<Vec<Value>, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    match serde_saphyr::from_multiple(text) {
        Ok(docs) => Ok(docs),
        Err(e) => {
            errors.push(ConfigError::new(
                file,
                "-",
                "-",
                // The message without the source snippet: it names line and
                // column, and the snippet would be mangled onto one line.
                format!(
                    "not valid YAML: {}",
                    one_line(&e.without_snippet().to_string())
                        .replace(", set DuplicateKeyPolicy in Options if acceptable", "")
                ),
            ));
            Err(errors)
        }
    }
}

/// Read every `*.yaml` / `*.yml` file under `dir` (recursively, sorted by
/// path; hidden files and editor backups skipped) and parse all documents.
pub fn load_dir(dir: &Path) -> Result<Vec<Resource>, ConfigErrors> {
    Ok(load_dir_raw(dir)?.into_iter().map(|d| d.resource).collect())
}

/// Like [`load_dir`], keeping each document as written.
pub fn load_dir_raw(dir: &Path) -> Result<Vec<Document>, ConfigErrors> {
    let mut files = Vec::new();
    let mut errors = ConfigErrors::default();
    if let Err(e) = collect_files(dir, &mut files) {
        errors.push(ConfigError::new(
            dir.display().to_string(),
            "-",
            "-",
            format!("cannot read config directory: {e}"),
        ));
        return Err(errors);
    }
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let name = path.display().to_string();
        let text = match read_limited(&path) {
            Ok(t) => t,
            Err(reason) => {
                errors.push(ConfigError::new(name, "-", "-", reason));
                continue;
            }
        };
        match parse_documents_raw(&name, &text) {
            Ok(rs) => out.extend(rs),
            Err(es) => errors.0.extend(es.0),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Is this a file the loader reads? Exposed so watchers agree with the loader.
pub fn is_config_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && !name.ends_with('~')
        && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if entry.file_type()?.is_dir() {
            collect_files(&path, out)?;
        } else if is_config_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

fn read_limited(path: &Path) -> Result<String, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read file: {e}"))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(format!(
            "file is {len} bytes; config files are limited to {MAX_FILE_BYTES} bytes"
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read file: {e}"))?;
    String::from_utf8(bytes).map_err(|e| format!("file is not UTF-8: {e}"))
}

pub(crate) fn parse_resource(
    file: &str,
    index: usize,
    doc: Value,
) -> Result<Resource, ConfigError> {
    let anon = format!("document {index}");
    let Value::Object(mut map) = doc else {
        return Err(ConfigError::new(
            file,
            anon,
            "-",
            "expected a mapping with apiVersion, kind, metadata and spec",
        ));
    };
    let field_str = |map: &serde_json::Map<String, Value>, key: &str| {
        map.get(key).and_then(Value::as_str).map(str::to_owned)
    };
    let Some(kind_name) = field_str(&map, "kind") else {
        return Err(ConfigError::new(
            file,
            anon,
            "kind",
            "missing or not a string",
        ));
    };
    let name_hint = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(|n| {
            let ns = map
                .get("metadata")
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .filter(|ns| !ns.is_empty())
                .unwrap_or("default");
            format!("{kind_name} {ns}/{n}")
        })
        .unwrap_or_else(|| format!("{kind_name} ({anon})"));
    let err = |field: &str, reason: String| ConfigError::new(file, &name_hint, field, reason);

    if kind_name == crate::mesh::KIND {
        // The one kind a control plane or proxy is never given.
        return Err(err(
            "kind",
            "a Mesh is run by `trellis up`, not applied: run `trellis up -f FILE` (it applies the other resources of the file itself), or remove the Mesh document".into(),
        ));
    }
    let Some(kind) = Kind::parse(&kind_name) else {
        return Err(err(
            "kind",
            format!(
                "unknown kind {kind_name:?}: Trellis understands {}",
                Kind::ALL.map(Kind::name).join(", ")
            ),
        ));
    };
    match field_str(&map, "apiVersion") {
        Some(v) if kind.api_versions().contains(&v.as_str()) => {}
        Some(v) => {
            return Err(err(
                "apiVersion",
                format!(
                    "{v:?} is not an API version of {kind}: use one of {}",
                    kind.api_versions().join(", ")
                ),
            ));
        }
        None => return Err(err("apiVersion", "missing or not a string".into())),
    }
    map.remove("apiVersion");
    map.remove("kind");
    // Status is written by controllers, not by users; it never changes behaviour.
    map.remove("status");
    let metadata = map
        .remove("metadata")
        .ok_or_else(|| err("metadata", "missing".into()))?;
    let spec = map
        .remove("spec")
        .ok_or_else(|| err("spec", "missing".into()))?;
    if let Some(extra) = map.keys().next() {
        return Err(err(extra, "unknown top-level field".into()));
    }
    let mut metadata: Meta = typed(metadata, "metadata").map_err(|(f, r)| err(&f, r))?;
    if metadata.name.is_empty() {
        return Err(err("metadata.name", "must not be empty".into()));
    }
    // As kubectl does, an empty namespace means the default one. The namespace
    // becomes part of host names (`reviews.<ns>.svc.cluster.local`), so it
    // must be a DNS label.
    if metadata.namespace.is_empty() {
        metadata.namespace = default_namespace();
    }
    if !valid_label(&metadata.namespace) {
        return Err(err(
            "metadata.namespace",
            format!(
                "{:?} is not a valid namespace name (lowercase letters, digits and '-', at most 63 characters)",
                metadata.namespace
            ),
        ));
    }
    let source = file.to_string();
    Ok(match kind {
        Kind::ServiceEntry => Resource::ServiceEntry(Object {
            spec: typed(spec, "spec").map_err(|(f, r)| err(&f, r))?,
            metadata,
            source,
        }),
        Kind::DestinationRule => Resource::DestinationRule(Object {
            spec: typed(spec, "spec").map_err(|(f, r)| err(&f, r))?,
            metadata,
            source,
        }),
        Kind::VirtualService => Resource::VirtualService(Object {
            spec: typed(spec, "spec").map_err(|(f, r)| err(&f, r))?,
            metadata,
            source,
        }),
        Kind::RateLimitPolicy => Resource::RateLimitPolicy(Object {
            spec: typed(spec, "spec").map_err(|(f, r)| err(&f, r))?,
            metadata,
            source,
        }),
        Kind::RetryBudget => Resource::RetryBudget(Object {
            spec: typed(spec, "spec").map_err(|(f, r)| err(&f, r))?,
            metadata,
            source,
        }),
        Kind::Sidecar => Resource::Sidecar(Object {
            spec: typed(spec, "spec").map_err(|(f, r)| err(&f, r))?,
            metadata,
            source,
        }),
        Kind::AuthorizationPolicy => Resource::AuthorizationPolicy(Object {
            spec: typed(spec, "spec").map_err(|(f, r)| err(&f, r))?,
            metadata,
            source,
        }),
        Kind::PeerAuthentication => Resource::PeerAuthentication(Object {
            spec: typed(spec, "spec").map_err(|(f, r)| err(&f, r))?,
            metadata,
            source,
        }),
    })
}

/// Deserialize with the path of the failing field, e.g. `spec.http[0].route`.
pub(crate) fn typed<T: DeserializeOwned>(value: Value, root: &str) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let mut reason = e.inner().to_string();
        let mut path = if inner == "." || inner.is_empty() {
            root.to_string()
        } else {
            format!("{root}.{inner}")
        };
        // Name the unknown field itself in the path (serde_path_to_error
        // already ends the path with it; older versions stop at the parent).
        if let Some(field) = reason
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
        {
            if !path.ends_with(&format!(".{field}")) {
                path = format!("{path}.{field}");
            }
            reason = format!(
                "unknown field: {}",
                reason.split_once(", ").map_or("", |x| x.1)
            );
        }
        (path, reason)
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Deserialize a value that must be a mapping into `T` (used by other crates
/// that receive resources as JSON).
pub fn from_json(file: &str, value: Value) -> Result<Resource, ConfigError> {
    parse_resource(file, 1, value)
}
