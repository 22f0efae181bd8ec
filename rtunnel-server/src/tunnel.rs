//! `GET /api/v1/tunnel`: where agents connect.
//!
//! HTTP Basic `key:secret` authenticates the system (401 with the envelope
//! and a `tunnel_auth_failed` audit event otherwise, never saying which half
//! was wrong). The WebSocket then carries yamux; the agent opens the control
//! stream, says hello and sends its manifest, and the session goes from
//! `pending` to `active`. When the tunnel ends the session ends with it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use rtunnel_auth::secret::{verify_against_nothing, verify_secret};
use rtunnel_core::control::{ControlChannel, ControlEnd, send_welcome, server_handshake};
use rtunnel_core::frame::read_frame;
use rtunnel_core::mux::{Mux, YamuxMux};
use rtunnel_core::proto::{CloseCode, Control, MAX_CONTROL_FRAME_BYTES};
use rtunnel_core::store::{AuditEvent, SessionRecord, SessionStatus, System, now_millis};
use rtunnel_core::ws::{MAX_WS_MESSAGE_BYTES, WsStream};
use uuid::Uuid;

use crate::api::auth::basic_credentials;
use crate::error::ApiError;
use crate::registry::{LiveTunnel, describe};
use crate::state::AppState;

/// After telling an agent to go, how long to wait for it to hang up.
pub(crate) const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Axum handler of the tunnel endpoint.
pub(crate) async fn tunnel_endpoint(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let system = authenticate_system(&state, &headers, peer).await?;
    let ws = ws.map_err(|_| {
        ApiError::bad_request(
            "websocket_required",
            "this endpoint only accepts WebSocket upgrades",
        )
    })?;
    let now = now_millis();
    let session = SessionRecord {
        id: Uuid::new_v4(),
        system_id: system.id,
        status: SessionStatus::Pending,
        created_at: now,
        activated_at: None,
        ended_at: None,
        end_reason: None,
        expires_at: now + state.config.session_ttl.as_millis() as i64,
        agent_addr: Some(peer.to_string()),
        agent_software: None,
        services: Vec::new(),
    };
    let mut event = AuditEvent::new("tunnel_connected");
    event.actor = Some(system.key.clone());
    event.system_id = Some(system.id);
    event.session_id = Some(session.id);
    event.ip_address = Some(peer.ip().to_string());
    state.audit(event).await?;
    Ok(ws
        .max_message_size(MAX_WS_MESSAGE_BYTES)
        .max_frame_size(MAX_WS_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            // Created only once the upgrade succeeded, so a client that
            // vanishes mid-upgrade leaves no pending session behind.
            if let Err(e) = state.stores.sessions.create_session(&session).await {
                crate::state::log_store_error("creating a session", &e);
                return;
            }
            run_tunnel(state, system, session.id, peer, socket).await;
        }))
}

async fn authenticate_system(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<System, ApiError> {
    let creds = basic_credentials(headers);
    let system = match &creds {
        Some((key, secret)) => match state.stores.identity.system_by_key(key).await? {
            Some(system) if verify_secret(secret, &system.secret_hash) => Some(system),
            Some(_) => None,
            None => {
                verify_against_nothing(secret);
                None
            }
        },
        None => None,
    };
    if let Some(system) = system {
        return Ok(system);
    }
    let mut event = AuditEvent::new("tunnel_auth_failed");
    event.actor = creds.as_ref().map(|(key, _)| truncate(key, 64));
    event.ip_address = Some(peer.ip().to_string());
    event.details = serde_json::json!({
        "reason": if creds.is_some() { "invalid_credentials" } else { "missing_credentials" },
    });
    state.audit_best_effort(event).await;
    Err(ApiError::new(
        axum::http::StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "invalid system key or secret",
    )
    .with_challenge("Basic"))
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

async fn run_tunnel(
    state: Arc<AppState>,
    system: System,
    session_id: Uuid,
    peer: SocketAddr,
    socket: WebSocket,
) {
    let mux = Arc::new(YamuxMux::server(WsStream::new(socket), &state.mux_config()));
    let reason = match serve_tunnel(&state, &system, session_id, mux.clone()).await {
        Ok(reason) => reason,
        Err(reason) => {
            tracing::warn!(system = %system.name, %session_id, %peer, "tunnel refused: {reason}");
            reason
        }
    };
    mux.close();
    state.registry.remove(session_id);
    let status = SessionStatus::Expired;
    if let Err(e) = state
        .stores
        .sessions
        .end_session(session_id, status, &reason, now_millis())
        .await
    {
        crate::state::log_store_error("ending a session", &e);
    }
    let mut event = AuditEvent::new("tunnel_disconnected");
    event.actor = Some(system.key.clone());
    event.system_id = Some(system.id);
    event.session_id = Some(session_id);
    event.ip_address = Some(peer.ip().to_string());
    event.details = serde_json::json!({"reason": reason});
    state.audit_best_effort(event).await;
}

/// Runs one tunnel; returns why it ended (Err when it never became active).
async fn serve_tunnel(
    state: &Arc<AppState>,
    system: &System,
    session_id: Uuid,
    mux: Arc<YamuxMux>,
) -> Result<String, String> {
    let timeout = state.config.handshake_timeout;
    let heartbeat = state.config.heartbeat_interval;
    let (mut control, hello) = server_handshake(&*mux, timeout)
        .await
        .map_err(|e| format!("handshake failed: {e}"))?;
    send_welcome(&mut control, session_id, heartbeat)
        .await
        .map_err(|e| format!("handshake failed: {e}"))?;
    let services = match tokio::time::timeout(
        timeout,
        read_frame::<Control, _>(&mut control, MAX_CONTROL_FRAME_BYTES),
    )
    .await
    {
        Ok(Ok(Control::Manifest { services })) => services,
        Ok(Ok(other)) => return Err(format!("expected a manifest, got {other:?}")),
        Ok(Err(e)) => {
            let reason = format!("bad manifest: {e}");
            let _ = rtunnel_core::frame::write_frame(
                &mut control,
                &Control::Close {
                    code: CloseCode::ProtocolError,
                    reason: reason.clone(),
                },
            )
            .await;
            return Err(reason);
        }
        Err(_) => return Err(format!("no manifest within {timeout:?}")),
    };
    state
        .stores
        .sessions
        .activate_session(session_id, &services, &hello.software, now_millis())
        .await
        .map_err(|e| format!("cannot activate the session: {e}"))?;
    tracing::info!(
        system = %system.name,
        %session_id,
        agent = %hello.software,
        services = services.len(),
        "tunnel active"
    );
    let channel = ControlChannel::new();
    let tunnel = Arc::new(LiveTunnel {
        session_id,
        system_id: system.id,
        mux: mux.clone(),
        services,
        control: channel.outbox.clone(),
    });
    if let Some(old) = state.registry.insert(tunnel.clone()) {
        tracing::info!(system = %system.name, old = %old.session_id, "a new agent connection replaces the old one");
        old.close(
            CloseCode::Replaced,
            "another agent with the same system credentials connected",
        )
        .await;
    }
    let end = tokio::select! {
        end = channel.run(control, heartbeat, |_| {}) => end,
        _ = mux.closed() => ControlEnd::Lost("tunnel connection closed".into()),
    };
    if let ControlEnd::LocalClose(_) = end {
        // Let the close message reach the agent: it hangs up when it reads it.
        let _ = tokio::time::timeout(CLOSE_LINGER, mux.closed()).await;
    }
    let reason = match end {
        ControlEnd::PeerClosed { code, reason } => {
            format!("agent closed the tunnel ({code:?}): {reason}")
        }
        ControlEnd::LocalClose(code) => format!("closed by the server ({code:?})"),
        ControlEnd::HeartbeatTimeout(d) => format!("no heartbeat from the agent for {d:?}"),
        ControlEnd::Lost(why) => format!("tunnel lost: {why}"),
    };
    tracing::info!(system = %system.name, %session_id, "tunnel ended: {reason}; {}", describe(&tunnel));
    Ok(reason)
}
