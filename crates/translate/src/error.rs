//! What can go wrong in translation. The input is validated config, so these
//! are rare (a value the validator let through that Envoy cannot express):
//! each names the resource and field, and the resource it belongs to is left
//! out of the snapshot instead of failing the whole translation.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TranslateError {
    /// A duration field that does not parse.
    #[error("{resource}: {field}: {reason}")]
    Duration {
        resource: String,
        field: String,
        reason: String,
    },
    /// A route destination or mirror that names no cluster.
    #[error("{resource}: {field}: {reason}")]
    Destination {
        resource: String,
        field: String,
        reason: String,
    },
    /// A value outside what Envoy's field can hold.
    #[error("{resource}: {field}: {reason}")]
    Value {
        resource: String,
        field: String,
        reason: String,
    },
}

impl TranslateError {
    /// The resource the error is about (`Kind namespace/name`).
    pub fn resource(&self) -> &str {
        match self {
            TranslateError::Duration { resource, .. }
            | TranslateError::Destination { resource, .. }
            | TranslateError::Value { resource, .. } => resource,
        }
    }
}

/// Where an error is reported: a resource, and the field path inside it.
#[derive(Debug, Clone)]
pub(crate) struct At {
    pub resource: String,
    pub field: String,
}

impl At {
    pub fn new(resource: impl Into<String>, field: impl Into<String>) -> Self {
        At {
            resource: resource.into(),
            field: field.into(),
        }
    }

    pub fn field(&self, sub: &str) -> At {
        At {
            resource: self.resource.clone(),
            field: if self.field.is_empty() {
                sub.to_string()
            } else {
                format!("{}.{sub}", self.field)
            },
        }
    }

    pub fn duration(&self, value: &str) -> Result<std::time::Duration, TranslateError> {
        trellis_model::duration::parse(value).map_err(|reason| TranslateError::Duration {
            resource: self.resource.clone(),
            field: self.field.clone(),
            reason,
        })
    }

    pub fn destination(&self, reason: impl Into<String>) -> TranslateError {
        TranslateError::Destination {
            resource: self.resource.clone(),
            field: self.field.clone(),
            reason: reason.into(),
        }
    }

    pub fn value(&self, reason: impl Into<String>) -> TranslateError {
        TranslateError::Value {
            resource: self.resource.clone(),
            field: self.field.clone(),
            reason: reason.into(),
        }
    }
}
