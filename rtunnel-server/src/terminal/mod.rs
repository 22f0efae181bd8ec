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
use rtunnel_core::proto::{StreamHeader, StreamKind, TerminalMode, TerminalOpen};
use rtunnel_core::recording::RecordingInfo;
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

mod events;
pub(crate) mod recording;

use recording::{Recorder, Seat};

/// Name of the built-in terminal service in an agent's manifest.
pub(crate) const TERMINAL_SERVICE: &str = "terminal";

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TerminalQuery {
    /// The single-use ticket (`POST .../terminal-ticket`).
    ticket: String,
}

/// What both terminal endpoints take in their query, besides the ticket.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TerminalOptions {
    /// Columns at first (default 80).
    cols: Option<u16>,
    /// Rows at first (default 24).
    rows: Option<u16>,
    /// Attach to this live terminal (from `GET .../terminals`) instead of
    /// starting a shell.
    attach: Option<Uuid>,
    /// `join` (type and see, the default) or `watch` (see only; what a
    /// viewer may do).
    mode: Option<TerminalMode>,
    /// `true`: also send `{"type":"participants",...}` text messages (who
    /// is in a shared terminal), as the console asks.
    events: Option<bool>,
    /// `true`: a new terminal where one participant at a time types.
    moderated: Option<bool>,
}

impl TerminalOptions {
    /// Who opens which terminal, where, at what size (checked).
    fn opened(
        &self,
        session: rtunnel_core::store::SessionRecord,
        holder: Holder,
        user: User,
        peer: SocketAddr,
    ) -> Result<Opened, ApiError> {
        let (cols, rows) = size(self.cols, self.rows)?;
        Ok(Opened {
            session,
            holder,
            user,
            cols,
            rows,
            peer,
            attach: self.attach,
            mode: self.mode,
            events: self.events.unwrap_or(false),
            moderated: self.moderated.unwrap_or(false),
        })
    }
}

/// A browser's text message.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BrowserText {
    Resize {
        cols: u16,
        rows: u16,
    },
    /// The controller of a moderated terminal gives it to `to`.
    HandOver {
        to: String,
    },
    /// An admin takes a moderated terminal over.
    TakeOver,
}

fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(axum::http::StatusCode::CONFLICT, code, message)
}

/// Axum handler of the terminal endpoint.
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}/terminal",
    tag = "sessions",
    params(("id" = String, Path, description = "session id"), TerminalQuery, TerminalOptions),
    responses((status = 101, description = "The browser terminal's WebSocket"), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
// Axum's extractors are the handler's arguments.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn terminal_endpoint(
    State(state): State<Arc<AppState>>,
    State(sessions): State<crate::api::sessions::SessionsApi>,
    Path(id): Path<String>,
    Query(q): Query<TerminalQuery>,
    Query(options): Query<TerminalOptions>,
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
    // A bad size is refused before the ticket is spent.
    size(options.cols, options.rows)?;
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
    let opened = options.opened(session, holder, user, peer)?;
    open_terminal(state, opened, held, ws).await
}

/// Axum handler of the terminal by system, for `rtunnel-agent shell
/// --system NAME`: a bearer token instead of a ticket, the system's
/// current session.
#[utoipa::path(
    get,
    path = "/api/v1/systems/{id}/terminal",
    tag = "systems",
    params(("id" = String, Path, description = "system id or name"), TerminalOptions),
    responses((status = 101, description = "The terminal's WebSocket (as the browser terminal's), on the system's current session"), (status = "default", description = "Refused or failed: the error envelope (`system_not_found`, `no_active_session`, `bearer_required`, ...)", body = crate::error::ErrorBody))
)]
pub(crate) async fn system_terminal_endpoint(
    State(state): State<Arc<AppState>>,
    caller: crate::api::auth::Authenticated,
    Path(id): Path<String>,
    Query(options): Query<TerminalOptions>,
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
    size(options.cols, options.rows)?;
    let session = crate::forward::current_session_of(&state, &caller.user, &id).await?;
    let holder = crate::revocation::Holder::from(&caller);
    let opened = options.opened(session, holder, caller.user, peer)?;
    open_terminal(state, opened, held, ws).await
}

/// `GET /api/v1/sessions/{id}/terminals`: the session's live terminals,
/// as the agent knows them (id, who started it and when, who is in it,
/// whether it waits detached), for attaching again or watching.
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}/terminals",
    tag = "sessions",
    params(("id" = String, Path, description = "session id")),
    responses((status = 200, description = "`{items: [{id, started_by, since, participants: [{name, mode, since}], detached}]}`", body = serde_json::Value), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(crate) async fn list_terminals(
    State(state): State<Arc<AppState>>,
    State(sessions): State<crate::api::sessions::SessionsApi>,
    caller: crate::api::auth::Authenticated,
    Path(id): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let session = crate::api::sessions::readable(&sessions, &caller.user, &id).await?;
    authorize(&state.access, &caller.user, Action::Read, session.system_id).await?;
    if !session
        .services
        .iter()
        .any(|s| s.name == TERMINAL_SERVICE && s.shared)
    {
        return Err(conflict(
            "terminal_unavailable",
            "the agent of this session offers no terminal, or cannot share its terminals: upgrade it",
        ));
    }
    if session.status != SessionStatus::Active {
        return Err(conflict(
            "session_not_active",
            format!("the session is {}", session.status.as_str()),
        ));
    }
    let mut header =
        StreamHeader::new(TERMINAL_SERVICE, StreamKind::Terminal).opened_by(&caller.user.name);
    header.terminal = Some(TerminalOpen {
        cols: 1,
        rows: 1,
        operator: caller.user.name.clone(),
        mode: Some(TerminalMode::Watch),
        attach: None,
        list: true,
        moderated: false,
        positions: false,
    });
    let mut stream = state.tunnels.streams.open(session.id, &header).await?;
    let timeout = state.config.stream_setup_timeout;
    let answer = tokio::time::timeout(timeout, read_msg(&mut stream)).await;
    let items = match answer {
        Ok(Ok(Some(TermMsg::Event(json)))) => events::parse_list(&json),
        _ => None,
    }
    .ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "agent_unavailable",
            "the agent did not list its terminals",
        )
    })?;
    Ok(axum::Json(serde_json::json!({ "items": items })))
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
    attach: Option<Uuid>,
    mode: Option<TerminalMode>,
    events: bool,
    moderated: bool,
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
        attach,
        mode,
        events,
        moderated,
    } = opened;
    let session_id = session.id;
    // Watching needs only to see the system; typing needs to connect.
    let watch = mode == Some(TerminalMode::Watch);
    // A watcher watches a terminal someone started; it starts none.
    if watch && attach.is_none() {
        return Err(ApiError::bad_request(
            "attach_required",
            "watching needs the terminal to watch: attach=ID (GET /api/v1/sessions/{id}/terminals lists them)",
        ));
    }
    let action = if watch { Action::Read } else { Action::Connect };
    authorize(&state.access, &user, action, session.system_id).await?;
    let shared = session
        .services
        .iter()
        .any(|s| s.name == TERMINAL_SERVICE && s.shared);
    if !shared && (attach.is_some() || watch) {
        return Err(conflict(
            "terminal_unavailable",
            "the agent of this session cannot share its terminals (watch, attach): upgrade it",
        ));
    }
    // An agent that shares terminals keeps them across closed tabs.
    let share = shared.then_some(Share {
        mode: mode.unwrap_or(TerminalMode::Join),
        attach,
        moderated,
    });
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
    event.details = serde_json::json!({
        "cols": cols,
        "rows": rows,
        "mode": share.map(|s| s.mode.as_str()),
        "attach": attach,
        "moderated": share.is_some_and(|s| s.moderated && s.attach.is_none()),
    });
    state.audit.record(event).await?;

    let upstream = open_pty(&state, session_id, &user, cols, rows, share).await?;
    let entry = AccessLog::opening(
        session_id,
        AccessKind::Terminal,
        Some(TERMINAL_SERVICE.into()),
        user.name.clone(),
        Some(peer.ip().to_string()),
    );
    state.access_log.open(&entry).await?;
    // From here until the bridge runs, the client may vanish (hyper drops
    // this future, or the upgrade fails): the entry must not stay open.
    let unstarted = Unstarted {
        state: state.clone(),
        entry_id: Some(entry.id),
    };
    let ctx = TerminalCtx {
        state: state.clone(),
        holder,
        user,
        system_id: session.system_id,
        session_id,
        entry_id: entry.id,
        shared: share.is_some(),
        events,
        action,
        cols,
        rows,
    };
    Ok(ws.on_upgrade(move |socket| async move {
        let _held = held;
        unstarted.started();
        bridge(ctx, socket, upstream).await;
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

/// How a participant takes part in a shared terminal.
#[derive(Debug, Clone, Copy)]
struct Share {
    mode: TerminalMode,
    attach: Option<Uuid>,
    moderated: bool,
}

/// Asks the session's agent for a PTY.
async fn open_pty(
    state: &AppState,
    session_id: SessionId,
    user: &User,
    cols: u16,
    rows: u16,
    share: Option<Share>,
) -> Result<TunnelStream, ApiError> {
    let mut header =
        StreamHeader::new(TERMINAL_SERVICE, StreamKind::Terminal).opened_by(&user.name);
    header.terminal = Some(TerminalOpen {
        cols,
        rows,
        operator: user.name.clone(),
        mode: share.map(|s| s.mode),
        attach: share.and_then(|s| s.attach),
        list: false,
        moderated: share.is_some_and(|s| s.moderated),
        // Every participant's bridge on this node records what it brings
        // that the recording lacks: one who falls behind loses nothing.
        positions: share.is_some(),
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
    /// A shared terminal (the agent sends who is in it).
    shared: bool,
    /// The client asked to hear who is in it.
    events: bool,
    /// What the user must keep being allowed: connect, or read to watch.
    action: Action,
    cols: u16,
    rows: u16,
}

/// Where a bridge records: a recording of its own (an agent that does not
/// share terminals), or its seat in the terminal's shared one.
enum Rec {
    Own(Box<Recorder>, Uuid),
    Shared(Seat, (SessionId, Uuid)),
}

impl Rec {
    /// Starts the recording (of this terminal, or joins the node's).
    async fn start(ctx: &TerminalCtx, terminal: Option<Uuid>) -> Rec {
        let state = &ctx.state;
        let new = || async {
            let info = RecordingInfo {
                id: Uuid::new_v4(),
                session_id: ctx.session_id,
                actor: ctx.user.name.clone(),
                started_at: now_millis(),
                ended_at: None,
                bytes: 0,
                truncated: false,
            };
            let sink = match state.recordings.create(&info).await {
                Ok(sink) => Some(sink),
                Err(e) => {
                    // The terminal is audited and logged; a full disk does
                    // not keep an operator out.
                    tracing::error!(error = %e, "cannot start the terminal recording");
                    None
                }
            };
            let title = format!("{} on session {}", ctx.user.name, ctx.session_id);
            (
                info.id,
                Recorder::start(sink, ctx.cols, ctx.rows, &title).await,
            )
        };
        match terminal {
            Some(id) => {
                let key = (ctx.session_id, id);
                Rec::Shared(state.terminal_recordings.join(key, new).await, key)
            }
            None => {
                let (id, recorder) = new().await;
                Rec::Own(Box::new(recorder), id)
            }
        }
    }

    fn id(&self) -> Uuid {
        match self {
            Rec::Own(_, id) => *id,
            Rec::Shared(seat, _) => seat.shared.id,
        }
    }

    async fn output(&mut self, bytes: &[u8]) {
        match self {
            Rec::Own(r, _) => r.output(bytes).await,
            Rec::Shared(seat, _) => seat.output(bytes).await,
        }
    }

    /// Output with its position: recorded where the recording lacks it.
    async fn output_at(&mut self, at: u64, bytes: &[u8]) {
        match self {
            Rec::Own(r, _) => r.output_at(0, at, bytes).await,
            Rec::Shared(seat, _) => seat.output_at(at, bytes).await,
        }
    }

    async fn resize(&mut self, cols: u16, rows: u16) {
        match self {
            Rec::Own(r, _) => r.resize(cols, rows).await,
            Rec::Shared(seat, _) => seat.resize(cols, rows).await,
        }
    }

    async fn marker(&mut self, label: &str) {
        if let Rec::Shared(seat, _) = self {
            seat.marker(label).await;
        }
    }

    /// This bridge records no more (another may take over).
    fn release(&self) {
        if let Rec::Shared(seat, _) = self {
            seat.release();
        }
    }

    async fn finish(self, state: &AppState) {
        match self {
            Rec::Own(mut r, _) => r.finish().await,
            Rec::Shared(seat, terminal) => state.terminal_recordings.leave(terminal, seat).await,
        }
    }
}

/// Who asks for a change of control, where.
struct ControlCtx {
    state: Arc<AppState>,
    user: User,
    system_id: SystemId,
    session_id: SessionId,
    terminal: Option<Uuid>,
    shared: bool,
    control: Arc<std::sync::Mutex<ControlState>>,
}

/// A control request from the browser: checked (a hand-over names someone;
/// only an admin takes over), audited, then the message for the agent,
/// which applies it if the asker may (holds the terminal, for a
/// hand-over). `Err` is the text message telling the browser why not.
async fn control_request(
    ctx: &ControlCtx,
    request: BrowserText,
) -> Result<Option<TermMsg>, String> {
    let refuse = |code: &str, why: &str| {
        serde_json::json!({"type": "error", "code": code, "error": why}).to_string()
    };
    if !ctx.shared {
        return Err(refuse(
            "terminal_unavailable",
            "this terminal is not shared (the agent is too old)",
        ));
    }
    // What the agent would refuse is refused here, before it is audited:
    // the audit log holds requests that could take effect, at most one a
    // second per participant.
    {
        let mut known = ctx.control.lock().unwrap_or_else(|e| e.into_inner());
        if !known.moderated {
            return Err(refuse(
                "not_moderated",
                "this terminal is not moderated: everyone in it may type",
            ));
        }
        if known
            .last_request
            .is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(1))
        {
            return Err(refuse(
                "too_many_requests",
                "one change of control a second",
            ));
        }
        known.last_request = Some(Instant::now());
        if matches!(request, BrowserText::HandOver { .. })
            && known.controller.as_deref() != Some(ctx.user.name.as_str())
        {
            return Err(refuse(
                "forbidden",
                "only the one who has control hands it over",
            ));
        }
    }
    let (op, to) = match request {
        BrowserText::HandOver { to } => {
            let valid =
                !to.is_empty() && to.chars().count() <= 128 && !to.chars().any(char::is_control);
            if !valid {
                return Err(refuse("invalid_body", "hand over to whom?"));
            }
            ("hand_over", Some(to))
        }
        BrowserText::TakeOver => {
            // The role as it is now, not as it was when the terminal opened.
            let admin = ctx
                .state
                .stores
                .identity
                .user_by_id(ctx.user.id)
                .await
                .ok()
                .flatten()
                .is_some_and(|u| !u.disabled && u.role == rtunnel_core::store::Role::Admin);
            if !admin {
                return Err(refuse("forbidden", "only an admin takes a terminal over"));
            }
            ("take_over", None)
        }
        BrowserText::Resize { .. } => return Ok(None),
    };
    let mut event = AuditEvent::new(AuditKind::TerminalControlChanged);
    event.actor = Some(ctx.user.name.clone());
    event.system_id = Some(ctx.system_id);
    event.session_id = Some(ctx.session_id);
    event.details = serde_json::json!({"terminal": ctx.terminal, "op": op, "to": to});
    if ctx.state.audit.record(event).await.is_err() {
        return Err(refuse(
            "audit_unavailable",
            "the change cannot be audited now; try again",
        ));
    }
    let body = serde_json::json!({"op": op, "to": to}).to_string();
    Ok(Some(TermMsg::Control(body.into_bytes())))
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
    /// The browser stopped reading: its queue filled.
    TooSlow,
}

/// How many messages wait for a browser before it is dropped as too slow.
const BROWSER_QUEUE: usize = 1024;

/// How many bytes wait for a browser before it is dropped as too slow: a
/// browser that stops reading holds at most this much of the server's
/// memory (besides its socket's buffers), however large the agent's
/// messages are (a loaded agent reads its terminal in larger chunks).
const BROWSER_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// Writes to the browser from a task of its own.
#[derive(Clone)]
struct BrowserWriter {
    tx: tokio::sync::mpsc::Sender<Message>,
    /// Bytes queued and not yet written.
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// The bytes a message carries.
fn message_bytes(msg: &Message) -> usize {
    match msg {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_) => 0,
    }
}

impl BrowserWriter {
    fn start(
        mut sink: futures::stream::SplitSink<WebSocket, Message>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        use std::sync::atomic::Ordering;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(BROWSER_QUEUE);
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let written = queued.clone();
        let task = tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let n = message_bytes(&msg);
                let sent = sink.send(msg).await;
                written.fetch_sub(n, Ordering::Relaxed);
                if sent.is_err() {
                    break;
                }
            }
        });
        (BrowserWriter { tx, queued }, task)
    }

    /// Queues a message without waiting: a full queue (the browser reads
    /// no more) ends the terminal for it.
    fn push(&self, msg: Message) -> Result<(), End> {
        use std::sync::atomic::Ordering;
        use tokio::sync::mpsc::error::TrySendError;
        let n = message_bytes(&msg);
        let before = self.queued.fetch_add(n, Ordering::Relaxed);
        // One message larger than the budget still goes to an idle browser.
        if before > 0 && before + n > BROWSER_QUEUE_BYTES {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return Err(End::TooSlow);
        }
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queued.fetch_sub(n, Ordering::Relaxed);
                match e {
                    TrySendError::Full(_) => Err(End::TooSlow),
                    TrySendError::Closed(_) => Err(End::BrowserLeft),
                }
            }
        }
    }

    /// Queues a last message, waiting for room (briefly).
    async fn send(&self, msg: Message) {
        use std::sync::atomic::Ordering;
        let n = message_bytes(&msg);
        self.queued.fetch_add(n, Ordering::Relaxed);
        let sent = tokio::time::timeout(std::time::Duration::from_secs(2), self.tx.send(msg)).await;
        if !matches!(sent, Ok(Ok(()))) {
            self.queued.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

/// What a bridge knows of a moderated terminal, from the agent's events.
#[derive(Debug, Default)]
struct ControlState {
    moderated: bool,
    controller: Option<String>,
    last_request: Option<Instant>,
}

impl ControlState {
    fn heard(&mut self, event: &events::Event) {
        if matches!(event.kind, "info" | "joined" | "left" | "control") {
            self.moderated = event.moderated;
            self.controller = event.controller.clone();
        }
    }
}

async fn bridge(ctx: TerminalCtx, socket: WebSocket, upstream: TunnelStream) {
    let opened = Instant::now();
    let (ws_tx, mut ws_rx) = socket.split();
    // The browser is written to by a task of its own, through a bounded
    // queue: a browser that stops reading is dropped, it never holds up
    // reading the agent's stream (and so the recording).
    let (to_browser, writer) = BrowserWriter::start(ws_tx);
    let control = Arc::new(std::sync::Mutex::new(ControlState::default()));
    let (mut up_r, up_w) = tokio::io::split(upstream);
    let up_w = Arc::new(Mutex::new(up_w));
    // A shared terminal says first which one it is: its recording is the
    // one this node keeps for it.
    let mut first = None;
    let mut terminal = None;
    if ctx.shared {
        match read_msg(&mut up_r).await {
            Ok(Some(TermMsg::Event(json))) => {
                if let Some(event) = events::parse(&json) {
                    terminal = event.terminal;
                    control
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .heard(&event);
                    if ctx.events {
                        let _ = to_browser.push(Message::Text(event.to_browser().into()));
                    }
                }
            }
            Ok(Some(other)) => first = Some(other),
            Ok(None) | Err(_) => {}
        }
    }
    let rec = Rec::start(&ctx, terminal).await;
    let recording_id = rec.id();
    let rec = Arc::new(Mutex::new(rec));
    let to_agent = Arc::new(AtomicU64::new(0));
    let from_agent = Arc::new(AtomicU64::new(0));

    // Agent to browser: output, who comes and goes, and the exit code.
    let output = {
        let to_browser = to_browser.clone();
        let control = control.clone();
        let rec = rec.clone();
        let from_agent = from_agent.clone();
        let events_wanted = ctx.events;
        let shared = ctx.shared;
        async move {
            let mut first = first;
            // Where this stream's positioned output is up to.
            let mut positioned: Option<u64> = None;
            loop {
                let msg = match first.take() {
                    Some(msg) => Ok(Some(msg)),
                    None => read_msg(&mut up_r).await,
                };
                match msg {
                    Ok(Some(TermMsg::Output { at, bytes })) => {
                        // Positions only where asked for, and never back:
                        // output a stream went past is not brought again.
                        if !shared || positioned.is_some_and(|end| at < end) {
                            tracing::warn!(
                                at,
                                after = positioned,
                                "the agent broke the terminal protocol: output out of place"
                            );
                            return End::AgentGone;
                        }
                        positioned = Some(at.saturating_add(bytes.len() as u64));
                        from_agent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        rec.lock().await.output_at(at, &bytes).await;
                        if bytes.is_empty() {
                            continue;
                        }
                        if let Err(end) = to_browser.push(Message::Binary(bytes.into())) {
                            return end;
                        }
                    }
                    Ok(Some(TermMsg::Data(bytes))) => {
                        from_agent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        // Once output comes with positions, plain data is
                        // the agent's notice to this view alone.
                        if positioned.is_none() {
                            rec.lock().await.output(&bytes).await;
                        }
                        if let Err(end) = to_browser.push(Message::Binary(bytes.into())) {
                            return end;
                        }
                    }
                    Ok(Some(TermMsg::Event(json))) => {
                        let Some(event) = events::parse(&json) else {
                            continue;
                        };
                        if let Some(label) = event.marker() {
                            rec.lock().await.marker(&label).await;
                        }
                        control
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .heard(&event);
                        if !events_wanted {
                            continue;
                        }
                        if let Err(end) = to_browser.push(Message::Text(event.to_browser().into()))
                        {
                            return end;
                        }
                    }
                    Ok(Some(TermMsg::Exit { code })) => return End::Exited(code),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return End::AgentGone,
                }
            }
        }
    };
    // Browser to agent: keystrokes, resizes, and control requests.
    let control_ctx = ControlCtx {
        state: ctx.state.clone(),
        user: ctx.user.clone(),
        system_id: ctx.system_id,
        session_id: ctx.session_id,
        terminal,
        shared: ctx.shared,
        control: control.clone(),
    };
    // A watcher's keys and sizes are dropped here already.
    let watching = ctx.action == Action::Read;
    let input = {
        let up_w = up_w.clone();
        let rec = rec.clone();
        let to_agent = to_agent.clone();
        let to_browser = to_browser.clone();
        async move {
            while let Some(Ok(msg)) = ws_rx.next().await {
                let msg = match msg {
                    Message::Binary(_) if watching => continue,
                    Message::Binary(b) => TermMsg::Data(b.to_vec()),
                    Message::Text(t) => match serde_json::from_str::<BrowserText>(t.as_str()) {
                        Ok(BrowserText::Resize { .. }) if watching => continue,
                        Ok(BrowserText::Resize { cols, rows })
                            if check_size(cols, rows).is_ok() =>
                        {
                            rec.lock().await.resize(cols, rows).await;
                            TermMsg::Resize { cols, rows }
                        }
                        Ok(BrowserText::Resize { .. }) => continue,
                        Ok(request @ (BrowserText::HandOver { .. } | BrowserText::TakeOver)) => {
                            match control_request(&control_ctx, request).await {
                                Ok(Some(msg)) => msg,
                                Ok(None) => continue,
                                Err(refusal) => {
                                    let _ = to_browser.push(Message::Text(refusal.into()));
                                    continue;
                                }
                            }
                        }
                        // Text that is not a command is typed, as some
                        // clients send keystrokes as text.
                        Err(_) if watching => continue,
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
        code = state.access.lost(ctx.holder, ctx.system_id, ctx.action) => End::Cut(code),
    };
    // Another participant's bridge records from here on.
    rec.lock().await.release();
    // Access went: a shared terminal the user was alone in ends with it,
    // rather than wait detached running what they left behind.
    if ctx.shared && matches!(end, End::Cut(_)) {
        let end_it = TermMsg::Control(br#"{"op":"end"}"#.to_vec());
        let _ = write_msg(&mut *up_w.lock().await, &end_it).await;
    }
    // Closing our half tells the agent to end the shell if it still runs.
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut *up_w.lock().await).await;
    let (close, error) = match &end {
        End::Exited(code) => {
            let exit = serde_json::json!({"type": "exit", "code": code}).to_string();
            to_browser.send(Message::Text(exit.into())).await;
            (Some((1000, "the shell exited")), None)
        }
        End::BrowserLeft => (None, None),
        End::TooSlow => (
            Some((1013, "the browser fell behind the terminal's output")),
            Some("the browser fell behind".to_owned()),
        ),
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
        to_browser.send(Message::Close(Some(frame))).await;
    }
    // What was queued goes out, then the writer ends.
    drop(to_browser);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    match Arc::try_unwrap(rec) {
        Ok(rec) => rec.into_inner().finish(&ctx.state).await,
        Err(_) => tracing::error!("the terminal recording is still in use; not finished"),
    }
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
        "recording_id": recording_id,
        "terminal": terminal,
        "exit_code": match end { End::Exited(c) => Some(c), _ => None },
        "reason": match end {
            End::Exited(_) => "exited",
            End::BrowserLeft => "browser_left",
            End::AgentGone => "agent_gone",
            End::Cut(code) => code,
            End::TooSlow => "browser_too_slow",
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
