//! `/api/v1/users` (admin): list, create, show, and `PATCH` to disable,
//! enable or set a password.

use super::login::PasswordWork;
use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use rtunnel_core::ids::UserId;
use rtunnel_core::store::{AuditEvent, AuditKind, Paged, Role, StoreError, User, rfc3339};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::{CurrentUser, require_admin};
use super::extract::{Json as JsonBody, Query};
use super::{PageQuery, parse_id};
use crate::enroll;
use crate::error::ApiError;
use crate::routing::Tunnels;
use crate::state::Audit;
use crate::state::Stores;

/// A user as the API shows it (never the password hash).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct UserView {
    id: UserId,
    name: String,
    role: Role,
    email: Option<String>,
    disabled: bool,
    has_password: bool,
    created_at: String,
}

impl UserView {
    fn new(u: User, has_password: bool) -> Self {
        UserView {
            id: u.id,
            name: u.name,
            role: u.role,
            email: u.email,
            disabled: u.disabled,
            has_password,
            created_at: rfc3339(u.created_at),
        }
    }
}

async fn view(stores: &Stores, user: User) -> Result<UserView, ApiError> {
    let has_password = stores.identity.password_hash(user.id).await?.is_some();
    Ok(UserView::new(user, has_password))
}

#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "users",
    params(super::PageQuery),
    responses((status = 200, description = "Users", body = Paged<UserView>), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn list(
    State(stores): State<Stores>,
    CurrentUser(caller): CurrentUser,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paged<UserView>>, ApiError> {
    require_admin(&caller)?;
    let users = stores.identity.list_users(q.page()?).await?;
    let mut items = Vec::with_capacity(users.items.len());
    for u in users.items {
        items.push(view(&stores, u).await?);
    }
    Ok(Json(Paged {
        items,
        page: users.page,
        page_size: users.page_size,
        total: users.total,
    }))
}

/// An audit event of an admin's change to a user.
fn admin_event(
    caller: &User,
    peer: SocketAddr,
    name: AuditKind,
    details: serde_json::Value,
) -> AuditEvent {
    let mut event = AuditEvent::new(name);
    event.actor = Some(caller.name.clone());
    event.ip_address = Some(peer.ip().to_string());
    event.details = details;
    event
}

/// The user named by a path id, or 404.
async fn load(stores: &Stores, raw_id: &str) -> Result<User, ApiError> {
    let id = parse_id(raw_id, "user_not_found")?;
    stores
        .identity
        .user_by_id(id)
        .await?
        .ok_or_else(|| ApiError::not_found("user_not_found", "no such user"))
}

#[utoipa::path(
    get,
    path = "/api/v1/users/{id}",
    tag = "users",
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, description = "The user", body = UserView), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn show(
    State(stores): State<Stores>,
    CurrentUser(caller): CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    require_admin(&caller)?;
    let user = load(&stores, &id).await?;
    Ok(Json(view(&stores, user).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(super) struct CreateUser {
    name: String,
    role: Role,
    email: Option<String>,
    password: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "users",
    request_body = CreateUser,
    responses((status = 201, description = "Created", body = UserView), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn create(
    State(stores): State<Stores>,
    State(audit): State<Audit>,
    State(passwords): State<PasswordWork>,
    CurrentUser(caller): CurrentUser,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    JsonBody(body): JsonBody<CreateUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    require_admin(&caller)?;
    // argon2 takes tens of milliseconds of a core: not on the thread that
    // serves this connection (and others).
    let (user, hash) = passwords
        .run(move || enroll::new_user(&body.name, body.role, body.email, body.password.as_deref()))
        .await??;
    // Checked first so a taken name is not audited as created; the store
    // still refuses a race.
    if stores.identity.user_by_name(&user.name).await?.is_some() {
        return Err(name_taken());
    }
    let details = json!({"user_id": user.id, "name": user.name, "role": user.role});
    audit
        .record(admin_event(&caller, peer, AuditKind::UserCreated, details))
        .await?;
    match stores.identity.create_user(&user).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => return Err(name_taken()),
        Err(e) => return Err(e.into()),
    }
    if let Some(hash) = &hash {
        stores
            .identity
            .set_password_hash(user.id, Some(hash))
            .await?;
    }
    Ok((
        StatusCode::CREATED,
        Json(UserView::new(user, hash.is_some())),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(super) struct UpdateUser {
    disabled: Option<bool>,
    password: Option<String>,
    role: Option<Role>,
}

fn name_taken() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "name_taken",
        "another user has this name",
    )
}

/// `PATCH /api/v1/users/{id}`: `role` (a lesser role cuts what it no
/// longer allows within a second), `disabled` (disabling ends the user's
/// logins and cuts what they have open within a second) and `password`
/// (setting it ends the user's logins and cuts what they opened).
#[utoipa::path(
    patch,
    path = "/api/v1/users/{id}",
    tag = "users",
    params(("id" = String, Path, description = "user id")),
    request_body = UpdateUser,
    responses((status = 200, description = "Changed", body = UserView), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
// An axum handler: each argument is one extractor.
#[allow(clippy::too_many_arguments)]
pub(super) async fn update(
    State(stores): State<Stores>,
    State(audit): State<Audit>,
    State(passwords): State<PasswordWork>,
    State(tunnels): State<Tunnels>,
    CurrentUser(caller): CurrentUser,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateUser>,
) -> Result<Json<UserView>, ApiError> {
    require_admin(&caller)?;
    let user = load(&stores, &id).await?;
    if body.disabled == Some(true) && user.id == caller.id {
        return Err(ApiError::bad_request(
            "cannot_disable_self",
            "an administrator cannot disable their own user",
        ));
    }
    if body.role.is_some_and(|r| r != Role::Admin) && user.id == caller.id {
        return Err(ApiError::bad_request(
            "cannot_demote_self",
            "an administrator cannot take their own admin role away",
        ));
    }
    let hash = match body.password.clone() {
        Some(password) => Some(
            passwords
                .run(move || rtunnel_auth::password::hash_password(&password))
                .await?
                .map_err(|e| ApiError::bad_request("invalid_password", e.to_string()))?,
        ),
        None => None,
    };
    let event_of = |name: AuditKind, details| admin_event(&caller, peer, name, details);
    if let Some(hash) = &hash {
        let event = event_of(
            AuditKind::UserPasswordSet,
            json!({"user_id": user.id, "name": user.name}),
        );
        audit.record(event).await?;
        enroll::set_password(&*stores.identity, &*stores.logins, user.id, Some(hash)).await?;
        tunnels.cluster.access_changed().await;
    }
    if let Some(role) = body.role.filter(|r| *r != user.role) {
        let event = event_of(
            AuditKind::UserRoleChanged,
            json!({"user_id": user.id, "name": user.name, "from": user.role, "to": role}),
        );
        audit.record(event).await?;
        stores.identity.set_user_role(user.id, role).await?;
        tunnels.cluster.access_changed().await;
    }
    if let Some(disabled) = body.disabled.filter(|d| *d != user.disabled) {
        let name = if disabled {
            AuditKind::UserDisabled
        } else {
            AuditKind::UserEnabled
        };
        let event = event_of(name, json!({"user_id": user.id, "name": user.name}));
        audit.record(event).await?;
        enroll::set_disabled(&*stores.identity, &*stores.logins, user.id, disabled).await?;
        tunnels.cluster.access_changed().await;
    }
    let user = load(&stores, &id).await?;
    Ok(Json(view(&stores, user).await?))
}
