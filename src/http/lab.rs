//! The pattern lab over HTTP: `POST /v1/lab/runs` and `GET /v1/lab/runs/{id}` (docs/API.md,
//! "The pattern lab"). The runs themselves are made by the load generators of `src/lab/`,
//! which this layer may not name: they reach it through `LabRunner` (in `state.rs`), a trait
//! object the application installs in the state's `LabSlot` once its listener is bound (the lab measures the
//! hub through that listener, like any client).

use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;

use super::auth::Caller;
use super::error::ApiError;
use super::extract::{self, path_param};
use super::state::{AppState, LabRunner, LabStartError};
use crate::model::LabSpec;

/// Largest body of `POST /v1/lab/runs`.
const MAX_BODY: usize = 16 << 10;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/lab/runs", extract::body_limit(post(create), MAX_BODY))
        .route("/v1/lab/runs/{id}", get(show))
}

fn default_rate() -> f64 {
    1.0
}
fn default_duration() -> String {
    "10s".into()
}
fn default_poll() -> String {
    "1s".into()
}
fn default_size() -> u64 {
    100
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    patterns: Vec<String>,
    clients: u64,
    #[serde(default = "default_rate")]
    rate: f64,
    #[serde(default = "default_duration")]
    duration: String,
    #[serde(default = "default_poll")]
    poll_interval: String,
    #[serde(default = "default_size")]
    size: u64,
}

/// The lab's runner, or the problem when the lab is off: `404`, as if the routes did not
/// exist, so a hub that does not run the lab shows nothing of it.
fn runner(state: &AppState) -> Result<&Arc<dyn LabRunner>, ApiError> {
    if !state.options.lab_enabled {
        return Err(ApiError::not_found(
            "the pattern lab is off on this hub (lab.enabled = false)",
        ));
    }
    state
        .lab
        .get()
        .ok_or_else(|| ApiError::lab_unavailable("the pattern lab is not running on this hub"))
}

#[utoipa::path(
    post,
    path = "/v1/lab/runs",
    tag = "lab",
    summary = "Start a pattern-lab run",
    description = "Needs admin and lab.enabled. Measures each pattern in turn; progress and results on _lab.{id}.",
    responses(
        (status = 202, description = "The run started: {\"id\",\"state\":\"running\"}"),
        (status = 400, description = "A bad body", content_type = "application/problem+json"),
        (status = 404, description = "The lab is off", content_type = "application/problem+json"),
        (status = 409, description = "Another run is going on", content_type = "application/problem+json"),
    )
)]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let runner = runner(&state)?;
    caller.admin()?;
    let bytes = extract::body(body, MAX_BODY)?;
    let body: RunBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the body: {e}; expected {{\"patterns\":[…],\"clients\":N,\"rate\":R,\"duration\":\"10s\",\"poll_interval\":\"1s\",\"size\":100}}"
        ))
    })?;
    let spec = LabSpec::new(
        &body.patterns,
        body.clients,
        body.rate,
        &body.duration,
        &body.poll_interval,
        body.size,
    )
    .map_err(ApiError::bad_request)?;
    let token = extract::header_str(&headers, "authorization")?
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let id = runner.start(spec, token).map_err(|e| match e {
        LabStartError::Busy(m) => ApiError::lab_busy(m),
        LabStartError::Unavailable(m) => ApiError::lab_unavailable(m),
    })?;
    Ok((
        StatusCode::ACCEPTED,
        [(axum::http::header::LOCATION, format!("/v1/lab/runs/{id}"))],
        Json(serde_json::json!({ "id": id, "state": "running" })),
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/lab/runs/{id}",
    tag = "lab",
    summary = "A pattern-lab run",
    description = "{\"id\",\"state\":\"running|done|failed\",\"patterns\":{…}}",
    params(("id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run and the figures of its finished patterns"),
        (status = 404, description = "No such run, or the lab is off", content_type = "application/problem+json"),
    )
)]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let runner = runner(&state)?;
    caller.admin()?;
    let id = path_param(id)?;
    match runner.show(&id) {
        Some(run) => Ok(Json(run).into_response()),
        None => Err(ApiError::not_found(format!("no lab run {id:?}"))),
    }
}
