//! Terminal recordings (admin): `GET /api/v1/sessions/{id}/recordings` and
//! `GET /api/v1/recordings/{id}` (the asciicast v2 file, streamed).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use rtunnel_core::ids::SessionId;
use rtunnel_core::store::Paged;
use rtunnel_core::store::rfc3339;
use serde::Serialize;
use uuid::Uuid;

use super::auth::{CurrentUser, require_admin};
use super::parse_id;
use crate::error::ApiError;
use crate::state::AppState;
use crate::state::Stores;

/// A recording as the API lists it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct RecordingView {
    id: Uuid,
    session_id: SessionId,
    actor: String,
    started_at: String,
    ended_at: Option<String>,
    bytes: u64,
    truncated: bool,
    url: String,
}

#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}/recordings",
    tag = "recordings",
    params(("id" = String, Path, description = "session id")),
    responses((status = 200, description = "The session's terminal recordings", body = Paged<RecordingView>), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    State(stores): State<Stores>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<Paged<RecordingView>>, ApiError> {
    require_admin(&user)?;
    let session_id = parse_id(&id, "session_not_found")?;
    if stores.sessions.session(session_id).await?.is_none() {
        return Err(ApiError::not_found("session_not_found", "no such session"));
    }
    let found = state
        .recordings
        .list(session_id)
        .await
        .map_err(|e| ApiError::unavailable("recordings_unavailable", e))?;
    let items: Vec<_> = found
        .into_iter()
        .map(|r| RecordingView {
            url: format!("/api/v1/recordings/{}", r.id),
            id: r.id,
            session_id: r.session_id,
            actor: r.actor,
            started_at: rfc3339(r.started_at),
            ended_at: r.ended_at.map(rfc3339),
            bytes: r.bytes,
            truncated: r.truncated,
        })
        .collect();
    let total = items.len();
    Ok(Json(Paged {
        items,
        page: 1,
        page_size: total.max(1) as u32,
        total: total as u64,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/recordings/{id}",
    tag = "recordings",
    params(("id" = String, Path, description = "recording id")),
    responses((status = 200, description = "The recording (asciicast v2)", content_type = "application/x-asciicast", body = String), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn download(
    State(state): State<Arc<AppState>>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&user)?;
    let id = parse_id(&id, "recording_not_found")?;
    let (info, reader) = state
        .recordings
        .open(id)
        .await
        .map_err(|e| ApiError::unavailable("recordings_unavailable", e))?
        .ok_or_else(|| ApiError::not_found("recording_not_found", "no such recording"))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(reader));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-asciicast".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}-{}.cast\"",
                    info.session_id, info.id
                ),
            ),
        ],
        body,
    )
        .into_response())
}
