//! `/api/v1/systems`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use rtunnel_auth::access::Action;
use rtunnel_core::store::{AuditEvent, Paged, Role, System, now_millis, rfc3339};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::auth::{CurrentUser, authorize, require_admin};
use super::extract::Query;
use super::{PageQuery, parse_id};
use crate::enroll::{self, Enrolled};
use crate::error::ApiError;
use crate::state::AppState;

/// A system as the API shows it.
#[derive(Debug, Serialize)]
pub(super) struct SystemView {
    id: Uuid,
    name: String,
    key: String,
    created_at: String,
}

impl From<System> for SystemView {
    fn from(s: System) -> Self {
        SystemView {
            id: s.id,
            name: s.name,
            key: s.key,
            created_at: rfc3339(s.created_at),
        }
    }
}

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    CurrentUser(user): CurrentUser,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paged<SystemView>>, ApiError> {
    let page = q.page()?;
    let granted_to = (user.role != Role::Admin).then_some(user.id);
    let systems = state
        .stores
        .identity
        .list_systems(granted_to, now_millis(), page)
        .await?;
    Ok(Json(Paged {
        items: systems.items.into_iter().map(SystemView::from).collect(),
        page: systems.page,
        page_size: systems.page_size,
        total: systems.total,
    }))
}

pub(super) async fn show(
    State(state): State<Arc<AppState>>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<SystemView>, ApiError> {
    let id = parse_id(&id, "system_not_found")?;
    let system = state
        .stores
        .identity
        .system(id)
        .await?
        .ok_or_else(|| ApiError::not_found("system_not_found", "no such system"))?;
    authorize(&state, &user, Action::Read, system.id).await?;
    Ok(Json(system.into()))
}

#[derive(Debug, Deserialize)]
pub(super) struct CreateSystem {
    name: String,
}

pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    CurrentUser(user): CurrentUser,
    super::extract::Json(body): super::extract::Json<CreateSystem>,
) -> Result<(StatusCode, Json<Enrolled>), ApiError> {
    require_admin(&user)?;
    enroll::validate_name(&body.name)?;
    let (system, enrolled) = enroll::new_system(&body.name);
    let mut event = AuditEvent::new("system_created");
    event.actor = Some(user.name.clone());
    event.system_id = Some(system.id);
    event.details = serde_json::json!({"name": system.name});
    state.audit(event).await?;
    state.stores.identity.create_system(&system).await?;
    Ok((StatusCode::CREATED, Json(enrolled)))
}
