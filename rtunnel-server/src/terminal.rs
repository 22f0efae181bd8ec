//! `GET /api/v1/sessions/{id}/terminal?ticket=T[&cols=C&rows=R]`: the
//! browser terminal.
//!
//! The single-use ticket names the user; access is decided again, the
//! opening is audited, the agent's PTY is asked for, and only then is the
//! WebSocket accepted, so every refusal is an HTTP answer in the envelope.
//! Binary messages from the browser are keystrokes, a text message
//! `{"type":"resize","cols":C,"rows":R}` resizes; binary messages to it are
//! the PTY's output, and `{"type":"exit","code":N}` then close 1000 when the
//! shell ends. Each terminal has an access-log entry and an asciicast
//! recording, and is cut (close 1008) when its user loses access.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use rtunnel_auth::access::Action;
use rtunnel_core::ids::{SessionId, SystemId};
use rtunnel_core::proto::{StreamHeader, StreamKind, TerminalOpen};
use rtunnel_core::recording::{Cast, MAX_RECORDING_BYTES, RecordingInfo, RecordingSink};
use rtunnel_core::store::{
    AccessKind, AccessLog, AuditEvent, AuditKind, SessionStatus, User, now_millis,
};
use rtunnel_core::terminal::{TermMsg, check_size, read_msg, write_msg};
use serde::Deserialize;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::api::auth::authorize;
use crate::api::extract::Query;
use crate::api::parse_id;
use crate::error::ApiError;
use crate::registry::TunnelStream;
use crate::revocation::Holder;
use crate::state::AppState;

/// Name of the built-in terminal service in an agent's manifest.
pub(crate) const TERMINAL_SERVICE: &str = "terminal";

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TerminalQuery {
    ticket: String,
    cols: Option<u16>,
    rows: Option<u16>,
}

/// The terminal's first size (default 80x24).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SizeQuery {
    cols: Option<u16>,
    rows: Option<u16>,
}

/// A browser's text message.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BrowserText {
    Resize { cols: u16, rows: u16 },
}

fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(axum::http::StatusCode::CONFLICT, code, message)
}

/// Axum handler of the terminal endpoint.
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}/terminal",
    tag = "sessions",
    params(("id" = String, Path, description = "session id"), TerminalQuery),
    responses((status = 101, description = "The browser terminal's WebSocket"), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(crate) async fn terminal_endpoint(
    State(state): State<Arc<AppState>>,
    State(sessions): State<crate::api::sessions::SessionsApi>,
    Path(id): Path<String>,
    Query(q): Query<TerminalQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    held: Option<axum::Extension<crate::accept::HeldConnection>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let session_id = parse_id(&id, "session_not_found")?;
    // Not a WebSocket: refuse before the ticket is spent.
    let ws = ws.map_err(|_| {
        ApiError::bad_request(
            "websocket_required",
            "this endpoint only accepts WebSocket upgrades",
        )
    })?;
    let (cols, rows) = size(q.cols, q.rows)?;
    let holder = state.tickets.redeem(&q.ticket, session_id).await?;
    let user = match state.stores.identity.user_by_id(holder.user_id).await? {
        Some(u) if !u.disabled => u,
        _ => return Err(ApiError::unauthorized("the ticket's user is gone")),
    };
    let session = crate::api::sessions::load(&sessions, session_id).await?;
    if let Some(login) = holder.login
        && !state
            .stores
            .logins
            .login(login)
            .await?
            .is_some_and(|l| l.is_live(now_millis()))
    {
        return Err(ApiError::unauthorized(
            "the login that asked for this ticket has ended",
        ));
    }
    if let Some(token) = holder.token
        && !state
            .stores
            .identity
            .api_token(token)
            .await?
            .is_some_and(|t| t.user_id == holder.user_id && t.is_live(now_millis()))
    {
        return Err(ApiError::unauthorized(
            "the API token that asked for this ticket was revoked or has expired",
        ));
    }
    let opened = Opened {
        session,
        holder,
        user,
        cols,
        rows,
        peer,
    };
    open_terminal(state, opened, held, ws).await
}

/// Axum handler of the terminal by system, for `rtunnel-agent shell
/// --system NAME`: a bearer token instead of a ticket, the system's
/// current session.
#[utoipa::path(
    get,
    path = "/api/v1/systems/{id}/terminal",
    tag = "systems",
    params(("id" = String, Path, description = "system id or name"), SizeQuery),
    responses((status = 101, description = "The terminal's WebSocket (as the browser terminal's), on the system's current session"), (status = "default", description = "Refused or failed: the error envelope (`system_not_found`, `no_active_session`, `bearer_required`, ...)", body = crate::error::ErrorBody))
)]
pub(crate) async fn system_terminal_endpoint(
    State(state): State<Arc<AppState>>,
    caller: crate::api::auth::Authenticated,
    Path(id): Path<String>,
    Query(q): Query<SizeQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    held: Option<axum::Extension<crate::accept::HeldConnection>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // A browser's cookie never opens this; the console uses tickets.
    if caller.browser {
        return Err(ApiError::forbidden(
            "bearer_required",
            "this endpoint takes a bearer token (rtunnel-agent shell); the console opens terminals with a ticket",
        ));
    }
    let ws = ws.map_err(|_| {
        ApiError::bad_request(
            "websocket_required",
            "this endpoint only accepts WebSocket upgrades",
        )
    })?;
    let (cols, rows) = size(q.cols, q.rows)?;
    let session = crate::forward::current_session_of(&state, &caller.user, &id).await?;
    let opened = Opened {
        session,
        holder: crate::revocation::Holder::from(&caller),
        user: caller.user,
        cols,
        rows,
        peer,
    };
    open_terminal(state, opened, held, ws).await
}

/// The size asked for, checked.
fn size(cols: Option<u16>, rows: Option<u16>) -> Result<(u16, u16), ApiError> {
    let (cols, rows) = (cols.unwrap_or(80), rows.unwrap_or(24));
    check_size(cols, rows).map_err(|e| ApiError::bad_request("invalid_size", e.to_string()))?;
    Ok((cols, rows))
}

/// Who opens a terminal, where, at what size.
struct Opened {
    session: rtunnel_core::store::SessionRecord,
    holder: crate::revocation::Holder,
    user: User,
    cols: u16,
    rows: u16,
    peer: SocketAddr,
}

/// Checks access and the session, audits, asks the agent for a PTY and
/// bridges it to the WebSocket.
async fn open_terminal(
    state: Arc<AppState>,
    opened: Opened,
    held: Option<axum::Extension<crate::accept::HeldConnection>>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let Opened {
        session,
        holder,
        user,
        cols,
        rows,
        peer,
    } = opened;
    let session_id = session.id;
    authorize(&state.access, &user, Action::Connect, session.system_id).await?;
    match session.status {
        SessionStatus::Active => {}
        SessionStatus::GracePeriod => {
            return Err(conflict(
                "agent_reconnecting",
                "the agent is reconnecting; try again in a moment",
            ));
        }
        other => {
            return Err(conflict(
                "session_not_active",
                format!("the session is {}", other.as_str()),
            ));
        }
    }
    let mut event = AuditEvent::new(AuditKind::TerminalOpened);
    event.actor = Some(user.name.clone());
    event.system_id = Some(session.system_id);
    event.session_id = Some(session_id);
    event.ip_address = Some(peer.ip().to_string());
    event.details = serde_json::json!({"cols": cols, "rows": rows});
    state.audit.record(event).await?;

    let upstream = open_pty(&state, session_id, &user, cols, rows).await?;
    let entry = AccessLog {
        id: Uuid::new_v4(),
        session_id,
        kind: AccessKind::Terminal,
        service: Some(TERMINAL_SERVICE.into()),
        actor: user.name.clone(),
        ip_address: Some(peer.ip().to_string()),
        opened_at: now_millis(),
        closed_at: None,
        bytes_to_service: 0,
        bytes_from_service: 0,
        error: None,
    };
    state.access_log.open(&entry).await?;
    // From here until the bridge runs, the client may vanish (hyper drops
    // this future, or the upgrade fails): the entry must not stay open.
    let unstarted = Unstarted {
        state: state.clone(),
        entry_id: Some(entry.id),
    };
    let info = RecordingInfo {
        id: Uuid::new_v4(),
        session_id,
        actor: user.name.clone(),
        started_at: entry.opened_at,
        ended_at: None,
        bytes: 0,
        truncated: false,
    };
    let recording = match state.recordings.create(&info).await {
        Ok(sink) => Some(sink),
        Err(e) => {
            // The terminal is audited and logged; a full disk does not
            // keep an operator out.
            tracing::error!(error = %e, "cannot start the terminal recording");
            None
        }
    };
    let ctx = TerminalCtx {
        state: state.clone(),
        holder,
        user,
        system_id: session.system_id,
        session_id,
        entry_id: entry.id,
        recording_id: info.id,
    };
    Ok(ws.on_upgrade(move |socket| async move {
        let _held = held;
        unstarted.started();
        let recorder = Recorder::start(recording, cols, rows, &ctx).await;
        bridge(ctx, socket, upstream, recorder).await;
    }))
}

/// Closes a terminal's access-log entry if the terminal never started.
struct Unstarted {
    state: Arc<AppState>,
    entry_id: Option<Uuid>,
}

impl Unstarted {
    /// The bridge runs and will close the entry itself.
    fn started(mut self) {
        self.entry_id = None;
    }
}

impl Drop for Unstarted {
    fn drop(&mut self) {
        let Some(id) = self.entry_id.take() else {
            return;
        };
        let why = "the browser left before the terminal opened";
        self.state.access_log.close(id, 0, 0, Some(why.into()));
    }
}

/// Asks the session's agent for a PTY.
async fn open_pty(
    state: &AppState,
    session_id: SessionId,
    user: &User,
    cols: u16,
    rows: u16,
) -> Result<TunnelStream, ApiError> {
    let mut header =
        StreamHeader::new(TERMINAL_SERVICE, StreamKind::Terminal).opened_by(&user.name);
    header.terminal = Some(TerminalOpen {
        cols,
        rows,
        operator: user.name.clone(),
    });
    Ok(state.tunnels.streams.open(session_id, &header).await?)
}

struct TerminalCtx {
    state: Arc<AppState>,
    holder: Holder,
    user: User,
    system_id: SystemId,
    session_id: SessionId,
    entry_id: Uuid,
    recording_id: Uuid,
}

/// Writes the terminal's asciicast recording, up to its size limit.
struct Recorder {
    sink: Option<Box<dyn RecordingSink>>,
    cast: Cast,
    started: Instant,
    bytes: u64,
    truncated: bool,
}

impl Recorder {
    async fn start(
        sink: Option<Box<dyn RecordingSink>>,
        cols: u16,
        rows: u16,
        ctx: &TerminalCtx,
    ) -> Self {
        let mut r = Recorder {
            sink,
            cast: Cast::new(cols, rows),
            started: Instant::now(),
            bytes: 0,
            truncated: false,
        };
        let title = format!("{} on session {}", ctx.user.name, ctx.session_id);
        let header = r.cast.header(now_millis() / 1000, &title);
        r.write(header).await;
        r
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    async fn output(&mut self, bytes: &[u8]) {
        let t = self.now();
        if let Some(line) = self.cast.output(t, bytes) {
            self.write(line).await;
        }
    }

    async fn resize(&mut self, cols: u16, rows: u16) {
        let t = self.now();
        let line = self.cast.resize(t, cols, rows);
        self.write(line).await;
    }

    async fn write(&mut self, line: String) {
        let Some(sink) = self.sink.as_mut() else {
            return;
        };
        if self.bytes + line.len() as u64 + 1 > MAX_RECORDING_BYTES {
            self.truncated = true;
            self.finish().await;
            return;
        }
        self.bytes += line.len() as u64 + 1;
        if let Err(e) = sink.line(&line).await {
            tracing::error!(error = %e, "terminal recording stopped");
            self.sink = None;
        }
    }

    async fn finish(&mut self) {
        if let Some(sink) = self.sink.take()
            && let Err(e) = sink.finish(now_millis(), self.truncated).await
        {
            tracing::error!(error = %e, "cannot complete the terminal recording");
        }
    }
}

/// How a terminal ended.
enum End {
    /// The shell exited with this code.
    Exited(i32),
    /// The browser went away.
    BrowserLeft,
    /// The agent's stream ended without an exit (tunnel lost, session closed).
    AgentGone,
    /// Access was lost.
    Cut(&'static str),
}

async fn bridge(ctx: TerminalCtx, socket: WebSocket, upstream: TunnelStream, recorder: Recorder) {
    let opened = Instant::now();
    let (ws_tx, mut ws_rx) = socket.split();
    let ws_tx = Arc::new(Mutex::new(ws_tx));
    let (mut up_r, up_w) = tokio::io::split(upstream);
    let up_w = Arc::new(Mutex::new(up_w));
    let recorder = Arc::new(Mutex::new(recorder));
    let to_agent = Arc::new(AtomicU64::new(0));
    let from_agent = Arc::new(AtomicU64::new(0));

    // Agent to browser: output and the exit code.
    let output = {
        let ws_tx = ws_tx.clone();
        let recorder = recorder.clone();
        let from_agent = from_agent.clone();
        async move {
            loop {
                match read_msg(&mut up_r).await {
                    Ok(Some(TermMsg::Data(bytes))) => {
                        from_agent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        recorder.lock().await.output(&bytes).await;
                        let sent = ws_tx.lock().await.send(Message::Binary(bytes.into())).await;
                        if sent.is_err() {
                            return End::BrowserLeft;
                        }
                    }
                    Ok(Some(TermMsg::Exit { code })) => return End::Exited(code),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return End::AgentGone,
                }
            }
        }
    };
    // Browser to agent: keystrokes and resizes.
    let input = {
        let up_w = up_w.clone();
        let recorder = recorder.clone();
        let to_agent = to_agent.clone();
        async move {
            while let Some(Ok(msg)) = ws_rx.next().await {
                let msg = match msg {
                    Message::Binary(b) => TermMsg::Data(b.to_vec()),
                    Message::Text(t) => match serde_json::from_str::<BrowserText>(t.as_str()) {
                        Ok(BrowserText::Resize { cols, rows })
                            if check_size(cols, rows).is_ok() =>
                        {
                            recorder.lock().await.resize(cols, rows).await;
                            TermMsg::Resize { cols, rows }
                        }
                        Ok(BrowserText::Resize { .. }) => continue,
                        // Text that is not a command is typed, as some
                        // clients send keystrokes as text.
                        Err(_) => TermMsg::Data(t.as_bytes().to_vec()),
                    },
                    Message::Close(_) => break,
                    _ => continue,
                };
                if let TermMsg::Data(b) = &msg {
                    to_agent.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                if write_msg(&mut *up_w.lock().await, &msg).await.is_err() {
                    return End::AgentGone;
                }
            }
            End::BrowserLeft
        }
    };
    let state = &ctx.state;
    let end = tokio::select! {
        end = output => end,
        end = input => end,
        code = state.access.connect_lost(ctx.holder, ctx.system_id) => End::Cut(code),
    };
    // Closing our half tells the agent to end the shell if it still runs.
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut *up_w.lock().await).await;
    let (close, error) = match &end {
        End::Exited(code) => {
            let exit = serde_json::json!({"type": "exit", "code": code}).to_string();
            let _ = ws_tx.lock().await.send(Message::Text(exit.into())).await;
            (Some((1000, "the shell exited")), None)
        }
        End::BrowserLeft => (None, None),
        End::AgentGone => (
            Some((1011, "the agent went away")),
            Some("the agent went away".to_owned()),
        ),
        End::Cut(_) => (
            Some((1008, "access revoked")),
            Some("access revoked".to_owned()),
        ),
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = ws_tx.lock().await.send(Message::Close(Some(frame))).await;
    }
    recorder.lock().await.finish().await;
    let (to, from) = (
        to_agent.load(Ordering::Relaxed),
        from_agent.load(Ordering::Relaxed),
    );
    state
        .access_log
        .close(ctx.entry_id, to, from, error.clone());
    let mut event = AuditEvent::new(AuditKind::TerminalClosed);
    event.actor = Some(ctx.user.name.clone());
    event.system_id = Some(ctx.system_id);
    event.session_id = Some(ctx.session_id);
    event.details = serde_json::json!({
        "recording_id": ctx.recording_id,
        "exit_code": match end { End::Exited(c) => Some(c), _ => None },
        "reason": match end {
            End::Exited(_) => "exited",
            End::BrowserLeft => "browser_left",
            End::AgentGone => "agent_gone",
            End::Cut(code) => code,
        },
        "bytes_in": to,
        "bytes_out": from,
    });
    state.audit.best_effort(event).await;
    tracing::info!(
        user = %ctx.user.name,
        session = %ctx.session_id,
        bytes_in = to,
        bytes_out = from,
        duration_ms = opened.elapsed().as_millis() as u64,
        "terminal closed"
    );
}
