//! `GET /api/v1/audit` (admin): the audit log, newest first, filtered by
//! `event`, `session_id`, and a time window `since` (inclusive) to `until`
//! (exclusive), each an RFC 3339 time (`2026-11-22T10:00:00Z`).

use std::time::UNIX_EPOCH;

use axum::Json;
use axum::extract::State;
use rtunnel_core::ids::{SessionId, SystemId};
use rtunnel_core::store::{AuditEvent, AuditFilter, Millis, Paged, rfc3339};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::auth::{CurrentUser, require_admin};
use super::check_page;
use super::extract::Query;
use crate::error::ApiError;
use crate::state::Stores;

/// The query string.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    event: Option<String>,
    session_id: Option<SessionId>,
    since: Option<String>,
    until: Option<String>,
    page: Option<u32>,
    page_size: Option<u32>,
}

/// An event as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct AuditView {
    id: Uuid,
    at: String,
    event: String,
    actor: Option<String>,
    system_id: Option<SystemId>,
    session_id: Option<SessionId>,
    ip_address: Option<String>,
    details: serde_json::Value,
}

impl From<AuditEvent> for AuditView {
    fn from(e: AuditEvent) -> Self {
        AuditView {
            id: e.id,
            at: rfc3339(e.at),
            event: e.event,
            actor: e.actor,
            system_id: e.system_id,
            session_id: e.session_id,
            ip_address: e.ip_address,
            details: e.details,
        }
    }
}

fn parse_time(name: &str, value: Option<&str>) -> Result<Option<Millis>, ApiError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "invalid_query",
            format!("{name} must be an RFC 3339 time such as 2026-11-22T10:00:00Z"),
        )
    };
    if value.len() > 64 {
        return Err(bad());
    }
    let t = humantime::parse_rfc3339_weak(value).map_err(|_| bad())?;
    let ms = t.duration_since(UNIX_EPOCH).map_err(|_| bad())?.as_millis();
    Ok(Some(i64::try_from(ms).map_err(|_| bad())?))
}

#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    params(AuditQuery),
    responses((status = 200, description = "Audit events, newest first", body = Paged<AuditView>), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn list(
    State(stores): State<Stores>,
    CurrentUser(user): CurrentUser,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Paged<AuditView>>, ApiError> {
    require_admin(&user)?;
    let page = check_page(q.page, q.page_size)?;
    if q.event.as_ref().is_some_and(|e| e.len() > 64) {
        return Err(ApiError::bad_request("invalid_query", "event is too long"));
    }
    let filter = AuditFilter {
        event: q.event,
        session_id: q.session_id,
        since: parse_time("since", q.since.as_deref())?,
        until: parse_time("until", q.until.as_deref())?,
    };
    let events = stores.audit_reader.list_audit(&filter, page).await?;
    Ok(Json(Paged {
        items: events.items.into_iter().map(AuditView::from).collect(),
        page: events.page,
        page_size: events.page_size,
        total: events.total,
    }))
}
