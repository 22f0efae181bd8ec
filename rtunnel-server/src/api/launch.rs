//! `POST /api/v1/launch`: the session launcher.
//!
//! Authenticated, checked against the caller's active grant on the
//! resource (one access decision, [`rtunnel_auth::access::decide`]),
//! audited as `session_launched` before the URL is handed out, and answered
//! in the launcher contract's shape with its error messages word for word.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use rtunnel_auth::access::{self, Action};
use rtunnel_auth::launch_token::{SESSION_TOKEN_TTL, SessionToken};
use rtunnel_core::ids::SystemId;
use rtunnel_core::store::{AuditEvent, AuditKind, Resource, Role, User, now_millis};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::auth::{Authenticated, authorize};
use crate::error::ApiError;
use crate::launcher::{ConnectionType, Fallbacks, messages, session_url};
use crate::state::AppState;

/// The request, as the contract names its fields.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[derive(utoipa::ToSchema)]
pub(super) struct LaunchRequest {
    resource_id: String,
    connection_type: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/launch",
    tag = "launcher",
    request_body = LaunchRequest,
    responses((status = 200, description = "`{success, sessionUrl, connectionId}`", body = serde_json::Value), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn launch(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Authenticated,
    super::extract::Json(req): super::extract::Json<LaunchRequest>,
) -> Result<Json<Value>, ApiError> {
    let holder = crate::revocation::Holder::from(&caller);
    let user = caller.user;
    let kind = ConnectionType::parse(&req.connection_type).ok_or_else(|| {
        ApiError::bad_request("invalid_connection_type", messages::INVALID_CONNECTION_TYPE)
    })?;
    let denied = |code: &'static str| ApiError::forbidden(code, messages::ACCESS_DENIED);
    // An id that is not a UUID names no resource the caller may launch.
    let resource_id = Uuid::parse_str(&req.resource_id).map_err(|_| denied("no_grant"))?;
    let now = now_millis();
    let has_grant = user.role != Role::Admin
        && state
            .stores
            .resources
            .has_resource_grant(user.id, resource_id, now)
            .await?;
    let decision = access::decide(&user, Action::Connect, has_grant);
    if !decision.allowed() {
        return Err(denied(decision.code()));
    }
    let resource = state
        .stores
        .resources
        .resource(resource_id)
        .await?
        .ok_or_else(|| ApiError::not_found("resource_not_found", "Resource not found"))?;

    let connection_id = Uuid::new_v4();
    let url = match (&resource.system_id, &resource.service, kind) {
        (Some(system_id), Some(service), ConnectionType::Direct) => {
            proxy_url(&state, &user, holder, *system_id, service).await?
        }
        _ => {
            let token = if kind.needs_token() {
                session_token(&state, &user, &resource, connection_id, kind)
            } else {
                String::new()
            };
            let fallbacks = Fallbacks {
                pomerium_base_url: state.config.pomerium_base_url.as_deref(),
                tsplus_base_url: state.config.tsplus_base_url.as_deref(),
            };
            session_url(&resource, kind, &user, &token, &fallbacks)
                .map_err(|m| ApiError::bad_request("no_url_configured", m))?
        }
    };

    // The launch is on record before its URL leaves.
    let mut event = AuditEvent::new(AuditKind::SessionLaunched);
    event.actor = Some(user.name.clone());
    event.system_id = resource.system_id;
    event.ip_address = Some(peer.ip().to_string());
    event.details = json!({
        "user_id": user.id,
        "resource_id": resource.id,
        "resource_name": resource.name,
        "connection_type": kind.as_str(),
        "connection_id": connection_id,
        "ip_address": peer.ip().to_string(),
    });
    state.audit.record(event).await?;
    Ok(Json(json!({
        "success": true,
        "sessionUrl": url,
        "connectionId": connection_id,
    })))
}

fn session_token(
    state: &AppState,
    user: &User,
    resource: &Resource,
    cid: Uuid,
    kind: ConnectionType,
) -> String {
    let iat = now_millis() / 1000;
    state.launch_signer.sign(&SessionToken {
        sub: user.id.to_string(),
        rid: resource.id.to_string(),
        cid: cid.to_string(),
        iat,
        exp: iat + SESSION_TOKEN_TTL.as_secs() as i64,
        ctype: Some(kind.as_str().to_owned()),
    })
}

/// The subdomain proxy URL of a system's service in its live session:
/// `<scheme>://<service>--<session as 32 hex>.<proxy-domain>[:port]/?token=T`.
async fn proxy_url(
    state: &AppState,
    user: &User,
    holder: crate::revocation::Holder,
    system_id: SystemId,
    service: &str,
) -> Result<String, ApiError> {
    authorize(&state.access, user, Action::Connect, system_id)
        .await
        .map_err(|e| ApiError::forbidden(e.code, messages::ACCESS_DENIED))?;
    let tunnel = state
        .tunnels
        .cluster
        .route_of_system(system_id)
        .await
        .filter(|t| t.service(service).is_some())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "session_not_active",
                "the resource's system has no active support session offering this service",
            )
        })?;
    // Bound to the login or API token of the launch, like every proxy token.
    state.tickets.spend_budget(holder.user_id).await?;
    Ok(
        crate::proxy::mint(state, holder, tunnel.session_id(), service)
            .await?
            .url,
    )
}
