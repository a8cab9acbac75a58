//! Errors in user config. Each names the file, the resource, the field path and
//! the reason, because the operator reading it has only the YAML in front of them.

use std::fmt;

/// One problem in the user's config. (Deserialize: API clients read it back.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{file}: {resource}: {field}: {reason}")]
pub struct ConfigError {
    /// The file the resource came from (or `<api>` for resources applied through an API).
    pub file: String,
    /// `Kind namespace/name`, or `document N` when the document has no usable identity.
    pub resource: String,
    /// Dotted path to the offending field, e.g. `spec.http[0].route[1].weight`; `-` for the whole document.
    pub field: String,
    /// What is wrong and, where it helps, what would be right.
    pub reason: String,
}

impl ConfigError {
    pub fn new(
        file: impl Into<String>,
        resource: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.into(),
            resource: resource.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Every problem found in one load: we report them all at once rather than
/// making the operator fix them one by one.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} error{} in config", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
