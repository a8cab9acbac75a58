//! API errors: a status code, one sentence, and the config errors behind it,
//! as JSON: `{"error": "...", "details": [{"file", "resource", "field", "reason"}]}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use trellis_model::ConfigError;

use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub details: Vec<ConfigError>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            details: Vec::new(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let status = match &e {
            StoreError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
            StoreError::ManagedByFile { .. } => StatusCode::CONFLICT,
            StoreError::Locked { .. }
            | StoreError::Storage { .. }
            | StoreError::Io { .. }
            | StoreError::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "store failure");
        }
        ApiError {
            status,
            message: e.to_string(),
            details: e.details().to_vec(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.message,
            "details": self.details,
        });
        (self.status, Json(body)).into_response()
    }
}
