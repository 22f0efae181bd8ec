//! `/api/v1/tokens`: API tokens. Everyone lists and revokes their own;
//! admins everyone's (`?user_id=` to pick one user). A revoked token is
//! refused at once, and what was opened with it (forwards, terminals,
//! proxy cookies) is cut within a second, on every node.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use rtunnel_core::ids::UserId;
use rtunnel_core::store::{
    ApiTokenRecord, AuditEvent, AuditKind, Paged, Role, now_millis, rfc3339,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::auth::Authenticated;
use super::extract::Query;
use super::{check_page, parse_id};
use crate::error::ApiError;
use crate::routing::Tunnels;
use crate::state::Audit;
use crate::state::Stores;

/// An API token as the API shows it (never its secret).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TokenView {
    id: Uuid,
    user_id: UserId,
    created_at: String,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    /// `active`, `expired` or `revoked`.
    status: &'static str,
}

impl TokenView {
    pub(crate) fn new(t: &ApiTokenRecord, now: i64) -> Self {
        TokenView {
            id: t.id,
            user_id: t.user_id,
            created_at: rfc3339(t.created_at),
            expires_at: t.expires_at.map(rfc3339),
            revoked_at: t.revoked_at.map(rfc3339),
            status: t.status(now),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    user_id: Option<UserId>,
    page: Option<u32>,
    page_size: Option<u32>,
}

/// `GET /api/v1/tokens`: the caller's tokens; an admin's `user_id` picks
/// another user's, and without it an admin sees everyone's.
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "tokens",
    params(ListQuery),
    responses((status = 200, description = "API tokens (never their secrets)", body = Paged<TokenView>), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn list(
    State(stores): State<Stores>,
    caller: Authenticated,
    Query(q): Query<ListQuery>,
) -> Result<Json<Paged<TokenView>>, ApiError> {
    let page = check_page(q.page, q.page_size)?;
    let admin = caller.user.role == Role::Admin;
    let user = match (admin, q.user_id) {
        (true, picked) => picked,
        (false, Some(other)) if other != caller.user.id => {
            return Err(ApiError::forbidden(
                "forbidden",
                "only admins list other users' tokens",
            ));
        }
        (false, _) => Some(caller.user.id),
    };
    let tokens = stores.identity.list_api_tokens(user, page).await?;
    let now = now_millis();
    Ok(Json(Paged {
        items: tokens
            .items
            .iter()
            .map(|t| TokenView::new(t, now))
            .collect(),
        page: tokens.page,
        page_size: tokens.page_size,
        total: tokens.total,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(super) struct CreateToken {
    /// Whose (an admin may name another user; default the caller).
    user_id: Option<UserId>,
    /// How long it lasts (`30d`, `8h`; default: until revoked).
    expires_in: Option<String>,
}

/// Longest lifetime asked for a new token.
const MAX_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(3 * 366 * 24 * 3600);

/// `POST /api/v1/tokens` `{"user_id"?, "expires_in"?}`: a new API token,
/// shown once (`token`); an admin may make one for another user. Audited
/// as `api_token_created` before it exists.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "tokens",
    request_body = CreateToken,
    responses((status = 201, description = "The token, with `token` shown only here", body = serde_json::Value), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn create(
    State(stores): State<Stores>,
    State(audit): State<Audit>,
    caller: Authenticated,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    super::extract::Json(body): super::extract::Json<CreateToken>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    // A token cannot outlive the credential that made it: an API token
    // does not mint API tokens (a leaked one would otherwise become many).
    if caller.token().is_some() {
        return Err(ApiError::forbidden(
            "login_required",
            "API tokens are made from a signed-in session (the console, or an access token), not with another API token",
        ));
    }
    let owner = match body.user_id {
        Some(id) if id != caller.user.id => {
            if caller.user.role != Role::Admin {
                return Err(ApiError::forbidden(
                    "forbidden",
                    "only admins make tokens for other users",
                ));
            }
            let user = stores
                .identity
                .user_by_id(id)
                .await?
                .ok_or_else(|| ApiError::not_found("user_not_found", "no such user"))?;
            if user.disabled {
                return Err(ApiError::bad_request(
                    "user_disabled",
                    "this user is disabled; enable them first",
                ));
            }
            user
        }
        _ => caller.user.clone(),
    };
    let now = now_millis();
    let expires_at = match body.expires_in.as_deref() {
        None => None,
        Some(text) => {
            let ttl = humantime::parse_duration(text)
                .ok()
                .filter(|d| !d.is_zero() && *d <= MAX_TOKEN_TTL)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_expires_in",
                        "expires_in is a duration like 8h or 30d, at most 3 years",
                    )
                })?;
            Some(now + ttl.as_millis() as i64)
        }
    };
    let (record, token) = crate::enroll::new_api_token(owner.id, expires_at);
    let mut event = AuditEvent::new(AuditKind::ApiTokenCreated);
    event.actor = Some(caller.user.name.clone());
    event.ip_address = Some(peer.ip().to_string());
    event.details = serde_json::json!({
        "token_id": record.id,
        "user": owner.name,
        "expires_at": expires_at.map(rfc3339),
    });
    audit.record(event).await?;
    stores.identity.create_api_token(&record).await?;
    let mut view = serde_json::to_value(TokenView::new(&record, now))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    view["token"] = serde_json::Value::String(token);
    Ok((StatusCode::CREATED, Json(view)))
}

/// `DELETE /api/v1/tokens/{id}`: revokes a token of the caller's (any
/// token, for an admin). 204; 404 `token_not_found` for a token the caller
/// may not see; revoking twice answers 204 again.
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "tokens",
    params(("id" = String, Path, description = "token id")),
    responses((status = 204, description = "Revoked"), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn revoke(
    State(stores): State<Stores>,
    State(audit): State<Audit>,
    State(tunnels): State<Tunnels>,
    caller: Authenticated,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "token_not_found")?;
    let not_found = || ApiError::not_found("token_not_found", "no such token");
    let token = stores.identity.api_token(id).await?.ok_or_else(not_found)?;
    if token.user_id != caller.user.id && caller.user.role != Role::Admin {
        return Err(not_found());
    }
    if token.revoked_at.is_some() {
        return Ok(StatusCode::NO_CONTENT);
    }
    let mut event = AuditEvent::new(AuditKind::ApiTokenRevoked);
    event.actor = Some(caller.user.name.clone());
    event.ip_address = Some(peer.ip().to_string());
    event.details = serde_json::json!({"token_id": token.id, "user_id": token.user_id});
    audit.record(event).await?;
    stores.identity.revoke_api_token(id, now_millis()).await?;
    // What was opened with it checks again now, here and on every node.
    tunnels.cluster.access_changed().await;
    Ok(StatusCode::NO_CONTENT)
}
