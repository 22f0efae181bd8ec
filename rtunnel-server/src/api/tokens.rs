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
#[derive(Debug, Serialize)]
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
pub(super) struct ListQuery {
    user_id: Option<UserId>,
    page: Option<u32>,
    page_size: Option<u32>,
}

/// `GET /api/v1/tokens`: the caller's tokens; an admin's `user_id` picks
/// another user's, and without it an admin sees everyone's.
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

/// `DELETE /api/v1/tokens/{id}`: revokes a token of the caller's (any
/// token, for an admin). 204; 404 `token_not_found` for a token the caller
/// may not see; revoking twice answers 204 again.
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
