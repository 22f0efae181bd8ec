//! `/api/v1/sessions`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, FromRef, Path, State};
use rtunnel_auth::access::Action;
use rtunnel_core::ids::{SessionId, SystemId};
use rtunnel_core::proto::ServiceInfo;
use rtunnel_core::store::{
    AuditKind, Paged, Role, SessionFilter, SessionRecord, SessionSort, SessionStatus, SessionStore,
    now_millis, rfc3339,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::auth::{Authenticated, CurrentUser, authorize};
use super::extract::Query;
use super::{PageQuery, parse_id};
use crate::error::ApiError;
use crate::lifecycle::ApplyError;
use crate::lifecycle::Lifecycle;
use crate::revocation::Access;
use crate::state::{AppState, Audit};
use crate::tickets::Tickets;
use rtunnel_core::session::{Event, TransitionError};
use rtunnel_core::store::AuditEvent;

/// What the session routes share: the sessions, the access decision, the
/// audit log.
#[derive(Clone)]
pub(crate) struct SessionsApi {
    sessions: Arc<dyn SessionStore>,
    access: Access,
    audit: Audit,
    access_log: crate::access_log::AccessLogWriter,
}

impl FromRef<Arc<AppState>> for SessionsApi {
    fn from_ref(state: &Arc<AppState>) -> Self {
        SessionsApi {
            sessions: state.stores.sessions.clone(),
            access: state.access.clone(),
            audit: state.audit.clone(),
            access_log: state.access_log.clone(),
        }
    }
}

/// A session as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct SessionView {
    id: SessionId,
    system_id: SystemId,
    status: SessionStatus,
    created_at: String,
    activated_at: Option<String>,
    ended_at: Option<String>,
    end_reason: Option<String>,
    expires_at: String,
    grace_until: Option<String>,
    agent_addr: Option<String>,
    agent_software: Option<String>,
    services: Vec<ServiceInfo>,
    node_id: Option<String>,
}

impl From<SessionRecord> for SessionView {
    fn from(s: SessionRecord) -> Self {
        SessionView {
            id: s.id,
            system_id: s.system_id,
            status: s.status,
            created_at: rfc3339(s.created_at),
            activated_at: s.activated_at.map(rfc3339),
            ended_at: s.ended_at.map(rfc3339),
            end_reason: s.end_reason,
            expires_at: rfc3339(s.expires_at),
            grace_until: s.grace_until.map(rfc3339),
            agent_addr: s.agent_addr,
            agent_software: s.agent_software,
            services: s.services,
            node_id: s.node_id,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    status: Option<String>,
    system_id: Option<String>,
    sort: Option<String>,
    // Not flattened from PageQuery: serde cannot read numbers from a query
    // string through `flatten`.
    page: Option<u32>,
    page_size: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/api/v1/sessions",
    tag = "sessions",
    params(ListQuery),
    responses((status = 200, description = "Sessions the caller may see", body = Paged<SessionView>), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn list(
    State(api): State<SessionsApi>,
    CurrentUser(user): CurrentUser,
    Query(q): Query<ListQuery>,
) -> Result<Json<Paged<SessionView>>, ApiError> {
    let page = super::check_page(q.page, q.page_size)?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<SessionStatus>)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_status", e))?;
    let system_id = q
        .system_id
        .as_deref()
        .map(str::parse::<SystemId>)
        .transpose()
        .map_err(|_| ApiError::bad_request("invalid_system_id", "system_id is not a UUID"))?;
    let sort = match q.sort.as_deref() {
        None | Some("-created_at") => SessionSort::CreatedDesc,
        Some("created_at") => SessionSort::CreatedAsc,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_sort",
                format!("unknown sort {other:?}: use created_at or -created_at"),
            ));
        }
    };
    let filter = SessionFilter {
        status,
        system_id,
        granted_to: (user.role != Role::Admin).then_some(user.id),
        sort,
    };
    let sessions = api
        .sessions
        .list_sessions(&filter, now_millis(), page)
        .await?;
    Ok(Json(Paged {
        items: sessions.items.into_iter().map(SessionView::from).collect(),
        page: sessions.page,
        page_size: sessions.page_size,
        total: sessions.total,
    }))
}

/// Loads a session the user may read, or answers 404: a session of a
/// system the caller holds no grant on is as absent as one that does not
/// exist (its id tells nothing).
pub(crate) async fn readable(
    api: &SessionsApi,
    user: &rtunnel_core::store::User,
    raw_id: &str,
) -> Result<SessionRecord, ApiError> {
    let session = load(api, parse_id(raw_id, "session_not_found")?).await?;
    match authorize(&api.access, user, Action::Read, session.system_id).await {
        Ok(()) => Ok(session),
        Err(e) if e.status == axum::http::StatusCode::FORBIDDEN => Err(ApiError::not_found(
            "session_not_found",
            "no such session",
        )
        .with_log_detail(format_args!(
            "user {} holds no grant on the session's system {}",
            user.name, session.system_id
        ))),
        // A store that cannot answer is a 503, not a missing session.
        Err(e) => Err(e),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "session id")),
    responses((status = 200, description = "The session", body = SessionView), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn show(
    State(api): State<SessionsApi>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    Ok(Json(readable(&api, &user, &id).await?.into()))
}

#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}/services",
    tag = "sessions",
    params(("id" = String, Path, description = "session id"), super::PageQuery),
    responses((status = 200, description = "The agent's services", body = Paged<ServiceInfo>), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn services(
    State(api): State<SessionsApi>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paged<ServiceInfo>>, ApiError> {
    let page = q.page()?;
    let session = readable(&api, &user, &id).await?;
    let total = session.services.len() as u64;
    let items = session
        .services
        .into_iter()
        .skip(page.offset() as usize)
        .take(page.page_size as usize)
        .collect();
    Ok(Json(Paged {
        items,
        page: page.page,
        page_size: page.page_size,
        total,
    }))
}

/// Maps a refused lifecycle change to the API's answer.
fn lifecycle_error(e: ApplyError) -> ApiError {
    match e {
        ApplyError::NotFound => ApiError::not_found("session_not_found", "no such session"),
        ApplyError::Refused(TransitionError::BadExtension) => {
            ApiError::bad_request("invalid_hours", "hours must be positive")
        }
        ApplyError::Refused(e) => ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "session_ended",
            e.to_string(),
        ),
        ApplyError::Conflict => ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "session_changed",
            "the session changed meanwhile; try again",
        ),
        ApplyError::Store(e) => e.into(),
    }
}

/// Loads a session the user may manage (close, extend) and audits the action
/// before it happens.
async fn manageable(
    api: &SessionsApi,
    user: &rtunnel_core::store::User,
    raw_id: &str,
    event: AuditKind,
    peer: std::net::SocketAddr,
    details: serde_json::Value,
) -> Result<SessionRecord, ApiError> {
    open_session_for(
        api,
        user,
        raw_id,
        Action::ManageSession,
        event,
        peer,
        details,
    )
    .await
}

/// A session that has not ended, on which `user` may do `action`, with
/// `event` stored in the audit log (503 and nothing done if it cannot be).
async fn open_session_for(
    api: &SessionsApi,
    user: &rtunnel_core::store::User,
    raw_id: &str,
    action: Action,
    event: AuditKind,
    peer: std::net::SocketAddr,
    details: serde_json::Value,
) -> Result<SessionRecord, ApiError> {
    let session = usable_session(api, user, raw_id, action).await?;
    audit_on(api, user, &session, event, peer, details).await?;
    Ok(session)
}

/// A session that has not ended, on which `user` may do `action`.
async fn usable_session(
    api: &SessionsApi,
    user: &rtunnel_core::store::User,
    raw_id: &str,
    action: Action,
) -> Result<SessionRecord, ApiError> {
    let session = readable(api, user, raw_id).await?;
    authorize(&api.access, user, action, session.system_id).await?;
    if session.status.is_final() {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "session_ended",
            format!("the session is {}", session.status.as_str()),
        ));
    }
    Ok(session)
}

/// Stores `event` by `user` on `session` (503 if it cannot be).
async fn audit_on(
    api: &SessionsApi,
    user: &rtunnel_core::store::User,
    session: &SessionRecord,
    event: AuditKind,
    peer: std::net::SocketAddr,
    details: serde_json::Value,
) -> Result<(), ApiError> {
    let mut ev = AuditEvent::new(event);
    ev.actor = Some(user.name.clone());
    ev.system_id = Some(session.system_id);
    ev.session_id = Some(session.id);
    ev.ip_address = Some(peer.ip().to_string());
    ev.details = details;
    api.audit.record(ev).await
}

#[utoipa::path(
    delete,
    path = "/api/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "session id")),
    responses((status = 200, description = "Closed", body = SessionView), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn close(
    State(api): State<SessionsApi>,
    State(lifecycle): State<Lifecycle>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
) -> Result<Json<SessionView>, ApiError> {
    let session = manageable(
        &api,
        &user,
        &id,
        AuditKind::SessionClosed,
        peer,
        serde_json::json!({}),
    )
    .await?;
    lifecycle
        .try_apply(session.id, Event::OperatorClosed)
        .await
        .map_err(lifecycle_error)?;
    tracing::info!(user = %user.name, session = %session.id, "session closed by an operator");
    Ok(Json(reload(&api, session.id).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct ExtendBody {
    hours: i64,
}

/// Longest single extension.
pub(crate) const MAX_EXTEND_HOURS: i64 = 24 * 30;

#[utoipa::path(
    patch,
    path = "/api/v1/sessions/{id}/extend",
    tag = "sessions",
    params(("id" = String, Path, description = "session id")),
    request_body = ExtendBody,
    responses((status = 200, description = "Extended", body = SessionView), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn extend(
    State(api): State<SessionsApi>,
    State(lifecycle): State<Lifecycle>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    super::extract::Json(body): super::extract::Json<ExtendBody>,
) -> Result<Json<SessionView>, ApiError> {
    if !(1..=MAX_EXTEND_HOURS).contains(&body.hours) {
        return Err(ApiError::bad_request(
            "invalid_hours",
            format!("hours must be between 1 and {MAX_EXTEND_HOURS}"),
        ));
    }
    let details = serde_json::json!({"hours": body.hours});
    let session = manageable(&api, &user, &id, AuditKind::SessionExtended, peer, details).await?;
    let by_ms = body.hours * 3_600_000;
    lifecycle
        .try_apply(session.id, Event::Extended { by_ms })
        .await
        .map_err(lifecycle_error)?;
    Ok(Json(reload(&api, session.id).await?))
}

async fn reload(api: &SessionsApi, id: SessionId) -> Result<SessionView, ApiError> {
    Ok(load(api, id).await?.into())
}

/// A session by id, or 404 `session_not_found`.
pub(crate) async fn load(api: &SessionsApi, id: SessionId) -> Result<SessionRecord, ApiError> {
    api.sessions
        .session(id)
        .await?
        .ok_or_else(|| ApiError::not_found("session_not_found", "no such session"))
}

#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}/logs",
    tag = "sessions",
    params(("id" = String, Path, description = "session id"), super::PageQuery),
    responses((status = 200, description = "The access log, newest first", body = Paged<AccessLogView>), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn logs(
    State(api): State<SessionsApi>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paged<AccessLogView>>, ApiError> {
    let page = q.page()?;
    let session = readable(&api, &user, &id).await?;
    // This node's closes still queued are written first: a connection that
    // ended before the request shows as closed.
    api.access_log.flush().await;
    let logs = api.sessions.list_access(session.id, page).await?;
    Ok(Json(Paged {
        items: logs.items.into_iter().map(AccessLogView::from).collect(),
        page: logs.page,
        page_size: logs.page_size,
        total: logs.total,
    }))
}

/// An access-log entry as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct AccessLogView {
    id: Uuid,
    kind: rtunnel_core::store::AccessKind,
    service: Option<String>,
    user: String,
    ip_address: Option<String>,
    opened_at: String,
    closed_at: Option<String>,
    bytes_to_service: u64,
    bytes_from_service: u64,
    error: Option<String>,
}

impl From<rtunnel_core::store::AccessLog> for AccessLogView {
    fn from(a: rtunnel_core::store::AccessLog) -> Self {
        AccessLogView {
            id: a.id,
            kind: a.kind,
            service: a.service,
            user: a.actor,
            ip_address: a.ip_address,
            opened_at: rfc3339(a.opened_at),
            closed_at: a.closed_at.map(rfc3339),
            bytes_to_service: a.bytes_to_service,
            bytes_from_service: a.bytes_from_service,
            error: a.error,
        }
    }
}

/// `POST /api/v1/sessions/{id}/terminal-ticket`: a single-use ticket for
/// the browser terminal's WebSocket, good for 30 s, bound to the session and
/// the caller.
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{id}/terminal-ticket",
    tag = "sessions",
    params(("id" = String, Path, description = "session id")),
    responses((status = 200, description = "`{ticket, expires_in}`: single use, 30 s", body = serde_json::Value), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn terminal_ticket(
    State(api): State<SessionsApi>,
    State(tickets): State<Tickets>,
    caller: Authenticated,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // Seeing the system is enough for a ticket: a viewer's ticket only
    // watches (the terminal endpoint checks `connect` for anything else).
    let session = usable_session(&api, &caller.user, &id, Action::Read).await?;
    let holder = crate::revocation::Holder::from(&caller);
    // Issued first, so the audit log never says "issued" for a ticket the
    // store refused; a ticket whose event cannot be stored is never handed
    // out (and expires unused).
    let ticket = tickets.issue(session.id, holder).await?;
    let details = serde_json::json!({});
    audit_on(
        &api,
        &caller.user,
        &session,
        AuditKind::TerminalTicketIssued,
        peer,
        details,
    )
    .await?;
    Ok(Json(serde_json::json!({
        "ticket": ticket,
        "expires_in": rtunnel_core::ticket::TICKET_TTL.as_secs(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(super) struct ProxyTokenRequest {
    service: String,
}

/// `POST /api/v1/sessions/{id}/proxy-token`: a proxy token and URL for one
/// service of the session, bound to the caller (and their login).
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{id}/proxy-token",
    tag = "sessions",
    params(("id" = String, Path, description = "session id")),
    request_body = ProxyTokenRequest,
    responses((status = 200, description = "`{url, token, expires_in}` for the subdomain proxy", body = serde_json::Value), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn proxy_token(
    State(api): State<SessionsApi>,
    State(state): State<Arc<AppState>>,
    caller: Authenticated,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    super::extract::Json(body): super::extract::Json<ProxyTokenRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // The service is checked before anything is audited.
    let session = readable(&api, &caller.user, &id).await?;
    if !crate::proxy::proxiable(&session, &body.service) {
        return Err(crate::proxy::not_proxiable(&session, &body.service));
    }
    // The budget first: a refused request writes no audit row.
    state.tickets.spend_budget(caller.user.id).await?;
    let session = open_session_for(
        &api,
        &caller.user,
        &id,
        Action::Connect,
        AuditKind::ProxyTokenIssued,
        peer,
        serde_json::json!({"service": body.service}),
    )
    .await?;
    let holder = crate::revocation::Holder::from(&caller);
    let grant = crate::proxy::mint(&state, holder, session.id, &body.service).await?;
    Ok(Json(serde_json::json!({
        "url": grant.url,
        "token": grant.token,
        "expires_in": grant.expires_in.as_secs(),
    })))
}
