//! `GET /api/v1/sessions/{id}/forward`: the operator side of raw TCP.
//!
//! `rtunnel-agent forward` holds one WebSocket here, with yamux on it. Each
//! of its streams names a service in a [`StreamHeader`]; the server checks
//! access again for every stream, opens a stream to the agent, passes the
//! header on, hands the agent's answer back, and relays bytes.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::upgrade::{NotAnUpgrade, TunnelUpgrade, TunnelWs};
use axum::extract::{ConnectInfo, FromRef, Path, State};
use axum::response::Response;
use rtunnel_auth::access::Action;
use rtunnel_core::ids::{SessionId, SystemId};
use rtunnel_core::link;
use rtunnel_core::mux::{MuxStream, WireMux, shared};
use rtunnel_core::proto::{Refusal, RefusalCode, StreamHeader, StreamKind, StreamReply};
use rtunnel_core::relay::relay_chunks_until;
use rtunnel_core::setup::{self, PassReply};
use rtunnel_core::store::{AccessKind, AccessLog, AuditEvent, AuditKind, SessionStatus, User};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::auth::{Authenticated, authorize};
use crate::api::extract::Query;
use crate::error::ApiError;
use crate::registry::TunnelStream;
use crate::revocation::Holder;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ForwardQuery {
    /// Optional: the service the client means to use, checked up front so a
    /// typo fails at connect time rather than on the first connection.
    service: Option<String>,
}

/// Whether `service` can be forwarded: it must be one of the session's, and
/// not the terminal (a PTY speaks its own framing, not a TCP byte stream).
/// The refusal lists what can be forwarded.
fn check_forwardable(
    services: &[rtunnel_core::proto::ServiceInfo],
    service: &str,
) -> Result<(), ApiError> {
    let forwardable: Vec<&str> = services
        .iter()
        .filter(|s| s.kind != StreamKind::Terminal)
        .map(|s| s.name.as_str())
        .collect();
    let list = if forwardable.is_empty() {
        "it has none that can be forwarded".to_owned()
    } else {
        format!("it has {}", forwardable.join(", "))
    };
    match services.iter().find(|s| s.name == service) {
        None => Err(ApiError::not_found(
            "unknown_service",
            format!("the session has no service named {service:?}; {list}"),
        )),
        Some(s) if s.kind == StreamKind::Terminal => Err(ApiError::bad_request(
            "unsupported_kind",
            format!(
                "{service:?} is the agent's terminal, which is opened in the console (or its \
                 terminal page), not through forward; {list}"
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// Axum handler of the forward endpoint.
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}/forward",
    tag = "sessions",
    params(("id" = String, Path, description = "session id"), ForwardQuery),
    responses((status = 101, description = "The forward's WebSocket (yamux inside), for `rtunnel-agent forward`"), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(crate) async fn forward_endpoint(
    State(state): State<Arc<AppState>>,
    caller: Authenticated,
    Path(id): Path<String>,
    Query(q): Query<ForwardQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    held: Option<axum::Extension<crate::accept::HeldConnection>>,
    ws: Result<TunnelUpgrade, NotAnUpgrade>,
) -> Result<Response, ApiError> {
    // Only `rtunnel-agent forward` comes here, with a bearer token: a
    // browser's cookie never opens a forward.
    open_forward(state, caller, &id, q, peer, held, ws).await
}

/// Axum handler of the forward endpoint by system: the system's current
/// session (active, or in its grace period), so `rtunnel-agent forward
/// --system NAME` needs no session id and follows the system to a new
/// session when it reconnects.
#[utoipa::path(
    get,
    path = "/api/v1/systems/{id}/forward",
    tag = "systems",
    params(("id" = String, Path, description = "system id or name"), ForwardQuery),
    responses((status = 101, description = "The forward's WebSocket to the system's current session"), (status = "default", description = "Refused or failed: the error envelope (`system_not_found`, `no_active_session`, ...)", body = crate::error::ErrorBody))
)]
pub(crate) async fn system_forward_endpoint(
    State(state): State<Arc<AppState>>,
    caller: Authenticated,
    Path(id): Path<String>,
    Query(q): Query<ForwardQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    held: Option<axum::Extension<crate::accept::HeldConnection>>,
    ws: Result<TunnelUpgrade, NotAnUpgrade>,
) -> Result<Response, ApiError> {
    let current = current_session_of(&state, &caller.user, &id).await?;
    open_forward(state, caller, &current.id.to_string(), q, peer, held, ws).await
}

/// The current session (active, or in its grace period) of the system
/// named `id` (or with that id), for `user`: 404 `system_not_found` to
/// someone who may not see it, 409 `no_active_session` when its agent is
/// away.
pub(crate) async fn current_session_of(
    state: &AppState,
    user: &User,
    id: &str,
) -> Result<rtunnel_core::store::SessionRecord, ApiError> {
    let identity = &state.stores.identity;
    let system = match id.parse::<Uuid>() {
        Ok(uuid) => identity.system(uuid.into()).await?,
        Err(_) => identity.system_by_name(id).await?,
    };
    let hidden = || ApiError::not_found("system_not_found", format!("no system {id:?}"));
    let system = system.ok_or_else(hidden)?;
    // Someone who may not see the system learns nothing of it.
    match authorize(&state.access, user, Action::Read, system.id).await {
        Ok(()) => {}
        Err(e) if e.status == axum::http::StatusCode::FORBIDDEN => {
            return Err(hidden().with_log_detail(format_args!(
                "user {} holds no grant on system {}",
                user.name, system.name
            )));
        }
        Err(e) => return Err(e),
    }
    state
        .stores
        .sessions
        .latest_session(system.id)
        .await?
        .filter(|s| matches!(s.status, SessionStatus::Active | SessionStatus::GracePeriod))
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "no_active_session",
                format!(
                    "{} has no active session: its agent is not connected",
                    system.name
                ),
            )
        })
}

/// Opens a forward to the session `id` for `caller`.
async fn open_forward(
    state: Arc<AppState>,
    caller: Authenticated,
    id: &str,
    q: ForwardQuery,
    peer: SocketAddr,
    held: Option<axum::Extension<crate::accept::HeldConnection>>,
    ws: Result<TunnelUpgrade, NotAnUpgrade>,
) -> Result<Response, ApiError> {
    if caller.browser {
        return Err(ApiError::forbidden(
            "bearer_required",
            "the forward endpoint takes a bearer token (rtunnel-agent forward), not the console's sign-in",
        ));
    }
    let holder = Holder::from(&caller);
    let user = caller.user;
    let sessions = crate::api::sessions::SessionsApi::from_ref(&state);
    let session = crate::api::sessions::readable(&sessions, &user, id).await?;
    let session_id = session.id;
    authorize(&state.access, &user, Action::Connect, session.system_id).await?;
    // In grace the agent is on its way back: the forward may open, and its
    // streams are told the agent is reconnecting until it is back.
    if !matches!(
        session.status,
        SessionStatus::Active | SessionStatus::GracePeriod
    ) {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "session_not_active",
            format!("the session is {}", session.status.as_str()),
        ));
    }
    if let Some(service) = &q.service {
        check_forwardable(&session.services, service)?;
    }
    let ws = ws.map_err(NotAnUpgrade::into_api_error)?;
    let mut event = AuditEvent::new(AuditKind::ForwardOpened);
    event.actor = Some(user.name.clone());
    event.system_id = Some(session.system_id);
    event.session_id = Some(session_id);
    event.ip_address = Some(peer.ip().to_string());
    event.details = serde_json::json!({"service": q.service});
    state.audit.record(event).await?;
    let system_id = session.system_id;
    // Served on the thread of the connection its streams go on (the
    // tunnel, or the mesh connection to the node holding it), if that is
    // on one: each stream's frames then go from one connection to the
    // other without waking another thread.
    let home = match state.config.threads {
        0 => None,
        _ => state.tunnels.cluster.home_of(session_id).await,
    }
    .map(|home| (home, held.as_ref().map(|held| held.0.clone())));
    Ok(ws.on_upgrade_at(home, move |socket| async move {
        // The connection stays counted under the caps while it lives.
        let _held = held;
        let ctx = Arc::new(ForwardCtx {
            state,
            user,
            holder,
            session_id,
            system_id,
            peer,
            cut: CancellationToken::new(),
        });
        run_forward(ctx, socket).await;
    }))
}

struct ForwardCtx {
    state: Arc<AppState>,
    user: User,
    holder: Holder,
    session_id: SessionId,
    system_id: SystemId,
    peer: SocketAddr,
    /// Cancelled when the user loses access: the connection and its
    /// streams are cut.
    cut: CancellationToken,
}

async fn run_forward(ctx: Arc<ForwardCtx>, socket: TunnelWs) {
    let state = &ctx.state;
    let mux = shared(WireMux::server(socket, &state.mux_config()));
    let incoming = match link::accept(mux, state.config.handshake_timeout).await {
        Ok(ok) => ok,
        Err(e) => {
            tracing::info!(user = %ctx.user.name, session = %ctx.session_id, "forward handshake failed: {e}");
            return;
        }
    };
    let heartbeat = state.config.heartbeat_interval;
    let Ok((link, driver)) = incoming.welcome(ctx.session_id, heartbeat, None).await else {
        return;
    };
    let watcher = tokio::spawn(watch_access(ctx.clone()));
    let streams = ctx.clone();
    tokio::select! {
        end = driver.run(move |stream| {
            tokio::spawn(serve_stream(streams.clone(), stream));
        }) => {
            tracing::debug!(user = %ctx.user.name, "forward link ended: {end}");
        }
        _ = ctx.cut.cancelled() => {}
        _ = state.shutdown.cancelled() => {}
    }
    watcher.abort();
    // Closing the connection ends every stream relayed over it.
    link.shutdown();
    tracing::info!(user = %ctx.user.name, session = %ctx.session_id, peer = %ctx.peer, "forward connection ended");
}

/// Cuts the forward as soon as its user may no longer connect, audited
/// `access_cut`.
async fn watch_access(ctx: Arc<ForwardCtx>) {
    let state = &ctx.state;
    let code = state.access.connect_lost(ctx.holder, ctx.system_id).await;
    tracing::info!(user = %ctx.user.name, session = %ctx.session_id, "access gone ({code}): cutting the forward");
    let mut event = AuditEvent::new(AuditKind::AccessCut);
    event.actor = Some(ctx.user.name.clone());
    event.system_id = Some(ctx.system_id);
    event.session_id = Some(ctx.session_id);
    event.ip_address = Some(ctx.peer.ip().to_string());
    event.details = serde_json::json!({"kind": AccessKind::Forward, "reason": code});
    state.audit.best_effort(event).await;
    ctx.cut.cancel();
}

/// One operator connection: check, connect through the agent, relay.
///
/// Nothing waits a round trip it need not: the operator's first bytes
/// came behind the header, the header goes on to the agent at once, and
/// the access-log entry is written while the agent dials its service.
/// Only then does the relay start: the held bytes go to the agent (which
/// holds them until it has dialed), and the agent's answer goes back to
/// the operator ahead of anything else.
async fn serve_stream(ctx: Arc<ForwardCtx>, mut stream: MuxStream) {
    let timeout = ctx.state.config.stream_setup_timeout;
    let Some(header) = setup::accept_header(&mut stream, timeout).await else {
        return;
    };
    let mut upstream = match open_upstream(&ctx, &header).await {
        Ok(ok) => ok,
        Err(refusal) => {
            log_refusal(&ctx, &header, &refusal);
            setup::refuse(&mut stream, refusal.into()).await;
            return;
        }
    };
    // The access log entry exists before any byte flows.
    let entry = AccessLog::opening(
        ctx.session_id,
        AccessKind::Forward,
        Some(header.service.clone()),
        ctx.user.name.clone(),
        Some(ctx.peer.ip().to_string()),
    );
    let access_log = &ctx.state.access_log;
    if let Err(e) = access_log.open(&entry).await {
        tracing::error!(error = %e, "cannot write the access log");
        let reply = StreamReply::refused(
            RefusalCode::Unavailable,
            "the access log could not be written",
        );
        setup::refuse(&mut stream, reply).await;
        return;
    }
    let opened = std::time::Instant::now();
    // A cut ends the relay itself: the streams of a closed yamux connection
    // are not woken, so waiting for them to fail would wait forever.
    let outcome = relay_chunks_until(&mut stream, &mut upstream, ctx.cut.cancelled()).await;
    let error = match upstream.outcome() {
        Some(Err(refusal)) => {
            // The agent said no after the entry was written: it is closed
            // with the refusal, and no byte reached the service.
            log_refusal(&ctx, &header, refusal);
            access_log.close(
                entry.id,
                0,
                0,
                Some(format!("refused ({}): {refusal}", refusal.code)),
            );
            return;
        }
        _ if ctx.cut.is_cancelled() => Some("access revoked".to_owned()),
        None => Some("closed before the agent answered".to_owned()),
        Some(Ok(())) => outcome.result.as_ref().err().map(ToString::to_string),
    };
    // Without an answer the agent passed nothing on to the service.
    let to_service = match upstream.outcome() {
        Some(Ok(())) => outcome.a_to_b,
        _ => 0,
    };
    // The agent's answer went to the operator ahead of the service's bytes.
    let from_service = outcome.b_to_a.saturating_sub(upstream.answer_bytes());
    access_log.close(entry.id, to_service, from_service, error.clone());
    tracing::info!(
        user = %ctx.user.name,
        session = %ctx.session_id,
        service = %header.service,
        bytes_to_service = to_service,
        bytes_from_service = from_service,
        duration_ms = opened.elapsed().as_millis() as u64,
        error,
        "forwarded connection closed"
    );
}

fn log_refusal(ctx: &ForwardCtx, header: &StreamHeader, refusal: &Refusal) {
    tracing::info!(
        user = %ctx.user.name,
        service = %header.service,
        code = %refusal.code,
        "stream refused: {refusal}"
    );
}

/// Checks access again and opens a stream to the agent, its answer to
/// come as the stream's first bytes.
async fn open_upstream(
    ctx: &ForwardCtx,
    header: &StreamHeader,
) -> Result<PassReply<TunnelStream>, Refusal> {
    if header.kind != StreamKind::Tcp {
        return Err(Refusal::new(
            RefusalCode::UnsupportedKind,
            "forward carries tcp streams only",
        ));
    }
    // Access is decided for every stream: a revoked grant or disabled user
    // stops new connections at once.
    let state = &ctx.state;
    let decision = state
        .access
        .may_connect(ctx.holder, ctx.system_id)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "access check failed");
            Refusal::new(
                RefusalCode::Unavailable,
                "the access check could not be made",
            )
        })?;
    if let Err(code) = decision {
        let code = RefusalCode::of_denial(code).unwrap_or(RefusalCode::Forbidden);
        crate::metrics::global().stream_refused(code.as_str());
        return Err(Refusal::new(code, "access denied"));
    }
    // The agent hears a header this server built, never the operator's:
    // only the service name is taken from it, and the stream is `tcp`.
    let header =
        StreamHeader::new(header.service.clone(), StreamKind::Tcp).opened_by(&ctx.user.name);
    state
        .tunnels
        .streams
        .open_pipelined(ctx.session_id, &header)
        .await
}
