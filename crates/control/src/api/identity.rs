//! The identity API: bootstrap tokens (`POST /api/v1/tokens`) and the CA's
//! roots (`/api/v1/ca/roots`: list, rotate, remove). docs/api.md.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use crate::ControlPlane;
use crate::identity::RootsError;
use trellis_identity::BundleError;

/// A token's lifetime when the request names none.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Tokens cannot be revoked (yet): their lifetime is capped.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TokenRequest {
    namespace: String,
    service_account: String,
    /// A duration: `90s`, `1h`, `7d`...
    ttl: Option<String>,
}

pub async fn create_token(
    State(plane): State<Arc<ControlPlane>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let req: TokenRequest = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "the body must be {{\"namespace\", \"serviceAccount\", \"ttl\"?}}: {e}"
        ))
    })?;
    let ttl = match &req.ttl {
        None => DEFAULT_TOKEN_TTL,
        Some(t) => trellis_model::duration::parse(t).map_err(|e| bad(format!("ttl: {e}")))?,
    };
    if ttl > MAX_TOKEN_TTL {
        return Err(bad(format!(
            "ttl: {t:?} is longer than the maximum, 30d (tokens cannot be revoked)",
            t = req.ttl.unwrap_or_default()
        )));
    }
    let (token, claims) = plane
        .identity
        .create_token(&req.namespace, &req.service_account, ttl, SystemTime::now())
        .map_err(|e| bad(e.to_string()))?;
    plane.metrics.token_created();
    let spiffe_id = format!(
        "spiffe://{}/ns/{}/sa/{}",
        plane.identity.trust_domain(),
        claims.namespace,
        claims.service_account
    );
    tracing::info!(token_id = %claims.id, spiffe_id = %spiffe_id, expires = claims.expires, "bootstrap token created");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": token,
            "id": claims.id,
            "namespace": claims.namespace,
            "serviceAccount": claims.service_account,
            "spiffeId": spiffe_id,
            "expires": claims.expires,
        })),
    ))
}

pub async fn list_roots(State(plane): State<Arc<ControlPlane>>) -> Json<Value> {
    Json(json!({ "roots": plane.identity.roots() }))
}

pub async fn rotate(
    State(plane): State<Arc<ControlPlane>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let p = plane.clone();
    let root = tokio::task::spawn_blocking(move || p.identity.rotate(SystemTime::now()))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(roots_error)?;
    Ok((StatusCode::CREATED, Json(json!({ "root": root }))))
}

pub async fn remove_root(
    State(plane): State<Arc<ControlPlane>>,
    Path(fingerprint): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let p = plane.clone();
    let root = tokio::task::spawn_blocking(move || p.identity.remove_root(&fingerprint))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(roots_error)?;
    Ok(Json(json!({ "removed": root })))
}

fn roots_error(e: RootsError) -> ApiError {
    let status = match &e {
        RootsError::OperatorCa | RootsError::Bundle(BundleError::IsSigner(_)) => {
            StatusCode::CONFLICT
        }
        RootsError::Bundle(BundleError::NotFound(_)) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status.is_server_error() {
        tracing::error!(error = %e, "CA root change failed");
    }
    ApiError::new(status, e.to_string())
}
