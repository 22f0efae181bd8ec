//! `/api/v1/systems`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use rtunnel_auth::access::Action;
use rtunnel_core::ids::{SessionId, SystemId};
use rtunnel_core::store::{
    AuditEvent, AuditKind, Paged, Role, SessionStatus, System, now_millis, rfc3339,
};
use serde::{Deserialize, Serialize};

use super::auth::{CurrentUser, authorize, require_admin};
use super::extract::Query;
use super::{PageQuery, parse_id};
use crate::enroll::{self, Enrolled};
use crate::error::ApiError;
use crate::events::{Change, SystemChange};
use crate::lifecycle::Lifecycle;
use crate::revocation::Access;
use crate::routing::Tunnels;
use crate::state::Audit;
use crate::state::Stores;

/// A system as the API shows it, with what its newest session says.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct SystemView {
    id: SystemId,
    name: String,
    key: String,
    created_at: String,
    /// Whether its agent is connected now (its newest session is active).
    online: bool,
    /// Its newest session, unless that one ended.
    session: Option<CurrentSession>,
    /// The agent software that connected last (`rtunnel-agent/0.1.0`).
    agent_software: Option<String>,
    /// When its agent last connected.
    last_seen_at: Option<String>,
}

/// A system's session that has not ended.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct CurrentSession {
    id: SessionId,
    status: SessionStatus,
}

impl SystemView {
    /// `s` with its newest session, as the store has it.
    async fn of(stores: &Stores, s: System) -> Result<Self, ApiError> {
        let latest = stores.sessions.latest_session(s.id).await?;
        let online = latest
            .as_ref()
            .is_some_and(|l| l.status == SessionStatus::Active);
        Ok(SystemView {
            id: s.id,
            name: s.name,
            key: s.key,
            created_at: rfc3339(s.created_at),
            online,
            session: latest
                .as_ref()
                .filter(|l| !l.status.is_final())
                .map(|l| CurrentSession {
                    id: l.id,
                    status: l.status,
                }),
            agent_software: latest.as_ref().and_then(|l| l.agent_software.clone()),
            last_seen_at: latest.and_then(|l| l.activated_at).map(rfc3339),
        })
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/systems",
    tag = "systems",
    params(super::PageQuery),
    responses((status = 200, description = "Systems the caller may see", body = Paged<SystemView>), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn list(
    State(stores): State<Stores>,
    CurrentUser(user): CurrentUser,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paged<SystemView>>, ApiError> {
    let page = q.page()?;
    let granted_to = (user.role != Role::Admin).then_some(user.id);
    let systems = stores
        .identity
        .list_systems(granted_to, now_millis(), page)
        .await?;
    let mut items = Vec::with_capacity(systems.items.len());
    for system in systems.items {
        items.push(SystemView::of(&stores, system).await?);
    }
    Ok(Json(Paged {
        items,
        page: systems.page,
        page_size: systems.page_size,
        total: systems.total,
    }))
}

/// The system named by a path id, or 404.
async fn load(stores: &Stores, raw_id: &str) -> Result<System, ApiError> {
    let id = parse_id(raw_id, "system_not_found")?;
    stores
        .identity
        .system(id)
        .await?
        .ok_or_else(|| ApiError::not_found("system_not_found", "no such system"))
}

#[utoipa::path(
    get,
    path = "/api/v1/systems/{id}",
    tag = "systems",
    params(("id" = String, Path, description = "system id")),
    responses((status = 200, description = "The system", body = SystemView), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn show(
    State(stores): State<Stores>,
    State(access): State<Access>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<SystemView>, ApiError> {
    let system = load(&stores, &id).await?;
    // A system the caller holds no grant on is as absent as one that does
    // not exist, as its sessions are.
    match authorize(&access, &user, Action::Read, system.id).await {
        Ok(()) => Ok(Json(SystemView::of(&stores, system).await?)),
        Err(e) if e.status == StatusCode::FORBIDDEN => Err(ApiError::not_found(
            "system_not_found",
            "no such system",
        )
        .with_log_detail(format_args!(
            "user {} holds no grant on system {}",
            user.name, system.name
        ))),
        Err(e) => Err(e),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct CreateSystem {
    name: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/systems",
    tag = "systems",
    request_body = CreateSystem,
    responses((status = 201, description = "Enrolled; the secret is shown only here", body = crate::enroll::Enrolled), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn create(
    State(stores): State<Stores>,
    State(audit): State<Audit>,
    State(tunnels): State<Tunnels>,
    CurrentUser(user): CurrentUser,
    super::extract::Json(body): super::extract::Json<CreateSystem>,
) -> Result<(StatusCode, Json<Enrolled>), ApiError> {
    require_admin(&user)?;
    enroll::validate_name(&body.name)?;
    // Checked first so a taken name is not audited as created; the store
    // still refuses a race.
    if stores.identity.system_by_name(&body.name).await?.is_some() {
        return Err(name_taken());
    }
    let (system, enrolled) = enroll::new_system(&body.name);
    let mut event = AuditEvent::new(AuditKind::SystemCreated);
    event.actor = Some(user.name.clone());
    event.system_id = Some(system.id);
    event.details = serde_json::json!({"name": system.name});
    audit.record(event).await?;
    match stores.identity.create_system(&system).await {
        Ok(()) => {}
        Err(rtunnel_core::store::StoreError::Conflict(_)) => return Err(name_taken()),
        Err(e) => return Err(e.into()),
    }
    announce(&tunnels, system.id, SystemChange::Created).await;
    Ok((StatusCode::CREATED, Json(enrolled)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(super) struct RenameSystem {
    name: String,
}

/// `PATCH /api/v1/systems/{id}` (admin) `{"name"}`: renames a system; its
/// key, secret and sessions stay. 409 `name_taken` if another system has
/// the name.
#[utoipa::path(
    patch,
    path = "/api/v1/systems/{id}",
    tag = "systems",
    params(("id" = String, Path, description = "system id")),
    request_body = RenameSystem,
    responses((status = 200, description = "Renamed", body = SystemView), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn rename(
    State(stores): State<Stores>,
    State(audit): State<Audit>,
    State(tunnels): State<Tunnels>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    super::extract::Json(body): super::extract::Json<RenameSystem>,
) -> Result<Json<SystemView>, ApiError> {
    require_admin(&user)?;
    enroll::validate_name(&body.name)?;
    let system = load(&stores, &id).await?;
    if system.name != body.name {
        if stores.identity.system_by_name(&body.name).await?.is_some() {
            return Err(name_taken());
        }
        let mut event = AuditEvent::new(AuditKind::SystemRenamed);
        event.actor = Some(user.name.clone());
        event.system_id = Some(system.id);
        event.ip_address = Some(peer.ip().to_string());
        event.details = serde_json::json!({"from": system.name, "to": body.name});
        audit.record(event).await?;
        match stores.identity.rename_system(system.id, &body.name).await {
            Ok(_) => {}
            Err(rtunnel_core::store::StoreError::Conflict(_)) => return Err(name_taken()),
            Err(e) => return Err(e.into()),
        }
        announce(&tunnels, system.id, SystemChange::Updated).await;
    }
    let system = load(&stores, &id).await?;
    Ok(Json(SystemView::of(&stores, system).await?))
}

fn name_taken() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "name_taken",
        "another system has this name",
    )
}

/// Tells the console streams that a system changed.
async fn announce(tunnels: &Tunnels, id: rtunnel_core::ids::SystemId, change: SystemChange) {
    tunnels
        .cluster
        .announce(Change::System { id, change })
        .await;
}

/// `DELETE /api/v1/systems/{id}` (admin): the system, its sessions,
/// access logs and grants go; its audit events stay. A live tunnel is told
/// `credentials_revoked` first, so its agent stops instead of retrying.
#[utoipa::path(
    delete,
    path = "/api/v1/systems/{id}",
    tag = "systems",
    params(("id" = String, Path, description = "system id")),
    responses((status = 204, description = "Deleted"), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn delete(
    State(stores): State<Stores>,
    State(audit): State<Audit>,
    State(tunnels): State<Tunnels>,
    State(lifecycle): State<Lifecycle>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
) -> Result<StatusCode, ApiError> {
    require_admin(&user)?;
    let system = load(&stores, &id).await?;
    let mut event = AuditEvent::new(AuditKind::SystemDeleted);
    event.actor = Some(user.name.clone());
    event.system_id = Some(system.id);
    event.ip_address = Some(peer.ip().to_string());
    event.details = serde_json::json!({"name": system.name, "key": system.key});
    audit.record(event).await?;
    lifecycle
        .cut_system(system.id, "the system was deleted")
        .await;
    stores.identity.delete_system(system.id).await?;
    tunnels.cluster.access_changed().await;
    announce(&tunnels, system.id, SystemChange::Deleted).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/systems/{id}/regenerate-secret` (admin): a new secret,
/// answered once. The old one stops working at once: a live tunnel is told
/// `credentials_revoked` (its agent stops until given the new secret) and
/// its session is closed.
#[utoipa::path(
    post,
    path = "/api/v1/systems/{id}/regenerate-secret",
    tag = "systems",
    params(("id" = String, Path, description = "system id")),
    responses((status = 200, description = "The new secret, shown only here", body = crate::enroll::Enrolled), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn regenerate_secret(
    State(stores): State<Stores>,
    State(audit): State<Audit>,
    State(tunnels): State<Tunnels>,
    State(lifecycle): State<Lifecycle>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
) -> Result<Json<Enrolled>, ApiError> {
    require_admin(&user)?;
    let system = load(&stores, &id).await?;
    let secret = rtunnel_auth::secret::generate_secret();
    let mut event = AuditEvent::new(AuditKind::SystemSecretRegenerated);
    event.actor = Some(user.name.clone());
    event.system_id = Some(system.id);
    event.ip_address = Some(peer.ip().to_string());
    event.details = serde_json::json!({"name": system.name});
    audit.record(event).await?;
    stores
        .identity
        .set_system_secret(system.id, &rtunnel_auth::secret::hash_secret(&secret))
        .await?;
    lifecycle
        .cut_system(system.id, "an administrator replaced the system's secret")
        .await;
    tunnels.cluster.access_changed().await;
    announce(&tunnels, system.id, SystemChange::Updated).await;
    Ok(Json(Enrolled {
        id: system.id,
        name: system.name,
        key: system.key,
        secret,
    }))
}
