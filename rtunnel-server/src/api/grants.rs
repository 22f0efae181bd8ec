//! `GET/POST/DELETE /api/v1/grants`: who may reach which system, or launch
//! which resource (admin only).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use rtunnel_core::ids::{SystemId, UserId};
use rtunnel_core::store::{AuditEvent, AuditKind, Paged, now_millis, rfc3339};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::auth::{CurrentUser, require_admin};
use crate::error::ApiError;
use crate::routing::Tunnels;
use crate::state::Audit;
use crate::state::Stores;

/// Longest grant.
pub(super) const MAX_GRANT_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// The body of both methods: a user and exactly one of a system or a
/// resource; `expires_in` (`8h`, `30d`) only when granting.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(super) struct GrantBody {
    user_id: UserId,
    #[serde(default)]
    system_id: Option<SystemId>,
    #[serde(default)]
    resource_id: Option<Uuid>,
    #[serde(default)]
    expires_in: Option<String>,
}

enum Target {
    System(SystemId),
    Resource(Uuid),
}

impl GrantBody {
    async fn check(&self, stores: &Stores) -> Result<Target, ApiError> {
        let bad = |m: &str| ApiError::bad_request("invalid_grant", m.to_owned());
        if stores.identity.user_by_id(self.user_id).await?.is_none() {
            return Err(ApiError::not_found("user_not_found", "no such user"));
        }
        match (self.system_id, self.resource_id) {
            (Some(id), None) => {
                if stores.identity.system(id).await?.is_none() {
                    return Err(ApiError::not_found("system_not_found", "no such system"));
                }
                Ok(Target::System(id))
            }
            (None, Some(id)) => {
                if stores.resources.resource(id).await?.is_none() {
                    return Err(ApiError::not_found(
                        "resource_not_found",
                        "no such resource",
                    ));
                }
                Ok(Target::Resource(id))
            }
            _ => Err(bad("name exactly one of system_id and resource_id")),
        }
    }

    fn expires_at(&self, now: i64) -> Result<Option<i64>, ApiError> {
        let Some(text) = &self.expires_in else {
            return Ok(None);
        };
        let ttl = humantime::parse_duration(text)
            .ok()
            .filter(|d| !d.is_zero() && *d <= MAX_GRANT_TTL)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_grant",
                    "expires_in is a duration like 8h or 30d, at most 366d",
                )
            })?;
        Ok(Some(now + ttl.as_millis() as i64))
    }
}

fn event(name: AuditKind, admin: &str, peer: SocketAddr, body: &GrantBody) -> AuditEvent {
    let mut e = AuditEvent::new(name);
    e.actor = Some(admin.to_owned());
    e.system_id = body.system_id;
    e.ip_address = Some(peer.ip().to_string());
    e.details = json!({"user_id": body.user_id, "resource_id": body.resource_id});
    e
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    user_id: Option<UserId>,
    system_id: Option<SystemId>,
    page: Option<u32>,
    page_size: Option<u32>,
}

/// An active grant on a system, as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct GrantView {
    id: Uuid,
    user_id: UserId,
    system_id: SystemId,
    created_at: String,
    expires_at: Option<String>,
}

/// `GET /api/v1/grants` (admin): active grants on systems, newest first;
/// `user_id` and `system_id` narrow them.
#[utoipa::path(
    get,
    path = "/api/v1/grants",
    tag = "grants",
    params(ListQuery),
    responses((status = 200, description = "Active grants on systems", body = Paged<GrantView>), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn list(
    State(stores): State<Stores>,
    CurrentUser(admin): CurrentUser,
    super::extract::Query(q): super::extract::Query<ListQuery>,
) -> Result<Json<Paged<GrantView>>, ApiError> {
    require_admin(&admin)?;
    let page = super::check_page(q.page, q.page_size)?;
    let grants = stores
        .identity
        .list_grants(q.user_id, q.system_id, now_millis(), page)
        .await?;
    Ok(Json(Paged {
        items: grants
            .items
            .into_iter()
            .map(|g| GrantView {
                id: g.id,
                user_id: g.user_id,
                system_id: g.system_id,
                created_at: rfc3339(g.created_at),
                expires_at: g.expires_at.map(rfc3339),
            })
            .collect(),
        page: grants.page,
        page_size: grants.page_size,
        total: grants.total,
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/grants",
    tag = "grants",
    request_body = GrantBody,
    responses((status = 201, description = "Given (200 when an active grant already existed)", body = serde_json::Value), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn create(
    State(stores): State<Stores>,
    State(audit): State<Audit>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    CurrentUser(admin): CurrentUser,
    super::extract::Json(body): super::extract::Json<GrantBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_admin(&admin)?;
    let target = body.check(&stores).await?;
    let now = now_millis();
    let expires_at = body.expires_at(now)?;
    let mut e = event(AuditKind::GrantCreated, &admin.name, peer, &body);
    e.details["expires_at"] = json!(expires_at.map(rfc3339));
    audit.record(e).await?;
    let created = match target {
        Target::System(id) => {
            stores
                .identity
                .grant(body.user_id, id, expires_at, now)
                .await?
        }
        Target::Resource(id) => {
            stores
                .resources
                .grant_resource(body.user_id, id, expires_at, now)
                .await?
        }
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({
            "user_id": body.user_id,
            "system_id": body.system_id,
            "resource_id": body.resource_id,
            "expires_at": expires_at.map(rfc3339),
            "created": created,
        })),
    ))
}

#[utoipa::path(
    delete,
    path = "/api/v1/grants",
    tag = "grants",
    request_body = GrantBody,
    responses((status = 204, description = "Revoked"), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn revoke(
    State(stores): State<Stores>,
    State(audit): State<Audit>,
    State(tunnels): State<Tunnels>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    CurrentUser(admin): CurrentUser,
    super::extract::Json(body): super::extract::Json<GrantBody>,
) -> Result<StatusCode, ApiError> {
    require_admin(&admin)?;
    let target = body.check(&stores).await?;
    audit
        .record(event(AuditKind::GrantRevoked, &admin.name, peer, &body))
        .await?;
    let now = now_millis();
    let revoked = match target {
        Target::System(id) => stores.identity.revoke(body.user_id, id, now).await?,
        Target::Resource(id) => {
            stores
                .resources
                .revoke_resource(body.user_id, id, now)
                .await?
        }
    };
    if revoked {
        // What the grant let open is cut now, not at the next poll.
        tunnels.cluster.access_changed().await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("grant_not_found", "no active grant"))
    }
}
