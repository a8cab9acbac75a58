//! The HTTP API (`docs/api.md`): apply, list, get and delete resources, plus
//! `/healthz` and `/metrics`. JSON in and out; errors are
//! `{"error": "...", "details": [...]}` ([`error::ApiError`]).
//!
//! Store operations take a mutex and may write to disk, so they run on
//! tokio's blocking pool, never on a runtime worker.

pub mod describe;
mod error;
pub mod identity;
pub mod proxies;
pub mod view;
pub mod xds_json;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use trellis_model::ConfigErrors;
use trellis_model::resource::Kind;

pub use error::ApiError;

use crate::ControlPlane;
use crate::kind;
use crate::store::{API_SOURCE, Incoming, Key, Status, Store};

/// Largest request body: the same limit as a config file.
const MAX_BODY: usize = 16 << 20;

pub fn router(plane: Arc<ControlPlane>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/dashboard", get(dashboard))
        .route("/metrics", get(metrics))
        .route("/api/v1/apply", axum::routing::post(apply))
        .route("/api/v1/proxies", get(list_proxies))
        .route("/api/v1/proxies/{node}/config", get(proxy_config))
        .route("/api/v1/services/{namespace}/{name}", get(describe_service))
        .route(
            "/api/v1/tokens",
            axum::routing::post(identity::create_token),
        )
        .route(
            "/api/v1/ca/roots",
            get(identity::list_roots).post(identity::rotate),
        )
        .route(
            "/api/v1/ca/roots/{fingerprint}",
            axum::routing::delete(identity::remove_root),
        )
        .route("/api/v1/workloads", get(list_workloads))
        .route("/api/v1/resources", get(list_all))
        .route("/api/v1/resources/{kind}", get(list_kind))
        .route(
            "/api/v1/resources/{kind}/{namespace}/{name}",
            get(get_one).delete(delete_one),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(plane)
}

/// Run a store operation on the blocking pool.
async fn with_store<R: Send + 'static>(
    plane: &Arc<ControlPlane>,
    f: impl FnOnce(&mut Store) -> R + Send + 'static,
) -> Result<R, ApiError> {
    let plane = plane.clone();
    tokio::task::spawn_blocking(move || plane.with_store(f))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the store operation failed: {e}"),
            )
        })
}

/// A read-only page over the same JSON as the API, refreshed in the
/// browser (the page holds no data of its own).
async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("dashboard.html"))
}

async fn healthz(State(plane): State<Arc<ControlPlane>>) -> Json<Value> {
    let generation = plane.subscribe().borrow().generation;
    Json(json!({"status": "ok", "generation": generation}))
}

async fn list_proxies(State(plane): State<Arc<ControlPlane>>) -> Json<Value> {
    Json(proxies::list(&plane))
}

#[derive(Debug, Deserialize)]
struct ConfigQuery {
    /// One type only: `listeners`, `routes`, `clusters`, `endpoints`, `secrets`.
    #[serde(rename = "type")]
    kind: Option<String>,
}

async fn proxy_config(
    State(plane): State<Arc<ControlPlane>>,
    Path(node): Path<String>,
    Query(q): Query<ConfigQuery>,
) -> Result<Json<Value>, ApiError> {
    let only = match q.kind.as_deref() {
        None => None,
        Some(t) => Some(proxies::parse_type(t).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown type {t:?}: use listeners, routes, clusters, endpoints or secrets"
                ),
            )
        })?),
    };
    proxies::config(&plane, &node, only).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no proxy with node id {node:?} is connected; `GET /api/v1/proxies` lists those that are"
            ),
        )
    })
}

async fn describe_service(
    State(plane): State<Arc<ControlPlane>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let snapshot = plane.subscribe().borrow().clone();
    let registrations = plane.mesh.registrations();
    let members: Vec<describe::Member<'_>> = registrations
        .iter()
        .filter_map(|(node, r)| {
            r.info.as_ref().ok().map(|i| describe::Member {
                node,
                workload: &i.workload,
            })
        })
        .collect();
    let mut view = describe::service(&snapshot.validated, &members, &namespace, &name)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    for p in &mut view.policies {
        p.proxies = proxies::holding(&plane, &p.resource.key());
    }
    let entry_proxies = proxies::holding(&plane, &view.service_entry.key());
    let streams = proxies::sync_by_node(&plane);
    let mut body = json!(view);
    body["generation"] = json!(snapshot.generation);
    body["serviceEntry"]["proxies"] = json!(entry_proxies);
    if let Some(eps) = body["endpoints"].as_array_mut() {
        for e in eps {
            if let Some(node) = e["node"].as_str() {
                e["proxy"] = match streams.get(node) {
                    Some((generation, acked)) => {
                        json!({"connected": true, "generation": generation, "acked": acked})
                    }
                    None => json!({"connected": false}),
                };
            }
        }
    }
    Ok(Json(body))
}

async fn list_workloads(State(plane): State<Arc<ControlPlane>>) -> Json<Value> {
    Json(proxies::workloads(&plane))
}

async fn metrics(State(plane): State<Arc<ControlPlane>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        plane.metrics.encode(),
    )
        .into_response()
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {uri}; the API is described in docs/api.md"),
    )
}

#[derive(Debug, Deserialize)]
struct ApplyQuery {
    #[serde(default)]
    dry_run: bool,
    /// What to call the body in errors (e.g. its file name).
    file: Option<String>,
}

/// The JSON form of an apply: several named files at once, so errors name
/// the file each resource came from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyFiles {
    files: Vec<ApplyFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyFile {
    name: String,
    content: String,
}

async fn apply(
    State(plane): State<Arc<ControlPlane>>,
    Query(q): Query<ApplyQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let files: Vec<ApplyFile> = if is_json {
        serde_json::from_slice::<ApplyFiles>(&body)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the JSON body is not {{\"files\": [{{\"name\": ..., \"content\": ...}}]}}: {e}"
                    ),
                )
            })?
            .files
    } else {
        let content = String::from_utf8(body.to_vec()).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "the request body is not UTF-8 text",
            )
        })?;
        vec![ApplyFile {
            name: q.file.clone().unwrap_or_else(|| API_SOURCE.to_string()),
            content,
        }]
    };
    let mut incoming = Vec::new();
    let mut errors = ConfigErrors::default();
    for f in files {
        match trellis_model::parse_documents_raw(&f.name, &f.content) {
            Ok(docs) => incoming.extend(docs.into_iter().map(|doc| Incoming {
                file: f.name.clone(),
                doc,
            })),
            Err(es) => errors.0.extend(es.0),
        }
    }
    if !errors.is_empty() {
        if !q.dry_run {
            plane.metrics.apply(false);
        }
        let n = errors.0.len();
        return Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!(
                "the change was rejected ({n} error{}); nothing was applied",
                if n == 1 { "" } else { "s" }
            ),
            details: errors.0,
        });
    }
    if incoming.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the request holds no resources (an empty YAML document?)",
        ));
    }
    let dry_run = q.dry_run;
    let (results, generation) = with_store(&plane, move |s| {
        s.apply(incoming, dry_run)
            .map(|r| (r, s.snapshot().generation))
    })
    .await??;
    for a in &results {
        tracing::info!(resource = %a.key, action = %a.action, accepted = a.status.accepted, dry_run, "apply");
    }
    Ok(Json(json!({
        "dryRun": dry_run,
        "generation": generation,
        "results": results.iter().map(view::applied).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    namespace: Option<String>,
}

async fn list_all(
    State(plane): State<Arc<ControlPlane>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    list(plane, None, q.namespace).await
}

async fn list_kind(
    State(plane): State<Arc<ControlPlane>>,
    Path(kind): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let kind = parse_kind(&kind)?;
    list(plane, Some(kind), q.namespace).await
}

async fn list(
    plane: Arc<ControlPlane>,
    kind: Option<Kind>,
    namespace: Option<String>,
) -> Result<Json<Value>, ApiError> {
    let p = plane.clone();
    with_store(&plane, move |s| {
        let items: Vec<Value> = s
            .list(kind, namespace.as_deref())
            .iter()
            .map(|(e, st)| view::resource(e, &with_proxies(&p, &e.key, st.clone())))
            .collect();
        let snapshot = s.snapshot();
        let mut body = json!({
            "generation": snapshot.generation,
            "items": items,
        });
        if kind.is_none() {
            body["conflicts"] = json!(snapshot.conflicts);
            if let Some(errors) = s.file_errors() {
                body["configDirErrors"] = json!(errors.0);
            }
        }
        Json(body)
    })
    .await
}

async fn get_one(
    State(plane): State<Arc<ControlPlane>>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let key = Key::new(parse_kind(&kind)?, namespace, name);
    let p = plane.clone();
    with_store(&plane, move |s| match s.get(&key) {
        Some((e, st)) => Ok(Json(view::resource(e, &with_proxies(&p, &key, st)))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{key} not found"),
        )),
    })
    .await?
}

#[derive(Debug, Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    dry_run: bool,
}

async fn delete_one(
    State(plane): State<Arc<ControlPlane>>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<Value>, ApiError> {
    let key = Key::new(parse_kind(&kind)?, namespace, name);
    let dry_run = q.dry_run;
    let k = key.clone();
    let generation = with_store(&plane, move |s| {
        s.delete(&k, dry_run).map(|()| s.snapshot().generation)
    })
    .await??;
    tracing::info!(resource = %key, dry_run, "delete");
    Ok(Json(json!({
        "kind": key.kind,
        "namespace": key.namespace,
        "name": key.name,
        "action": "deleted",
        "dryRun": dry_run,
        "generation": generation,
    })))
}

/// A resource's status with the proxies holding it (only accepted
/// resources reach proxies).
fn with_proxies(plane: &ControlPlane, key: &Key, mut status: Status) -> Status {
    if status.accepted {
        status.proxies = proxies::holding(plane, key);
    }
    status
}

fn parse_kind(s: &str) -> Result<Kind, ApiError> {
    kind::parse(s).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown kind {s:?}: Trellis understands {}", kind::known()),
        )
    })
}
