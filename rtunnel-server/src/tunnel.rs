//! `GET /api/v1/tunnel`: where agents connect.
//!
//! HTTP Basic `key:secret` authenticates the system (401 with the envelope
//! and a `tunnel_auth_failed` audit event otherwise, never saying which half
//! was wrong; requests without credentials and attempts over their budget
//! are counted instead, see [`crate::refusals`]). The WebSocket then carries yamux; the agent opens the control
//! stream and says hello, presenting its reconnect token if it is coming
//! back. A valid token within the grace period gets the same session back.
//! A second agent with the system's credentials while the first is still
//! connected takes over its session: the first is told `replaced` and
//! closed, and the session carries on over the new tunnel. Otherwise a new
//! `pending` session starts. The server answers with a fresh
//! single-use reconnect token, the manifest makes the session `active`, and
//! when the tunnel is lost the session enters its grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::upgrade::{NotAnUpgrade, TunnelUpgrade, TunnelWs};
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use rtunnel_auth::secret::{generate_secret, hash_secret, verify_against_nothing, verify_secret};
use rtunnel_core::control::Hello;
use rtunnel_core::frame::read_frame;
use rtunnel_core::ids::{SessionId, SystemId};
use rtunnel_core::link::{self, Incoming, LinkEnd};
use rtunnel_core::mux::{MuxStream, WireMux, shared};
use rtunnel_core::proto::{CloseCode, Control, MAX_CONTROL_FRAME_BYTES, Resume, ServiceInfo};
use rtunnel_core::session::Event;
use rtunnel_core::store::{
    AuditEvent, AuditKind, SessionRecord, SessionStatus, System, now_millis,
};
use rtunnel_core::ws::CLOSE_SESSION_CLOSED;

use std::collections::HashMap;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::api::auth::basic_credentials;
use crate::error::ApiError;
use crate::events::Change;
use crate::ratelimit::{Attempt, Scope};
use crate::registry::{LiveTunnel, describe};
use crate::state::AppState;

/// How long a tunnel request waits for a setup slot
/// ([`ServerConfig::max_tunnel_setups`](crate::ServerConfig)) before it is
/// told to come back later.
const SETUP_QUEUE_WAIT: Duration = Duration::from_secs(2);

/// The `Retry-After` of a busy answer is drawn from this range (seconds),
/// so the agents told to wait do not come back together.
const BUSY_RETRY_SECS: std::ops::RangeInclusive<u64> = 2..=20;

/// After telling an agent to go, how long to wait for it to hang up.
pub(crate) const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Axum handler of the tunnel endpoint.
#[utoipa::path(
    get,
    path = "/api/v1/tunnel",
    tag = "agents",
    responses((status = 101, description = "The tunnel's WebSocket (yamux inside); HTTP Basic `key:secret` of the system"), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(crate) async fn tunnel_endpoint(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    held: Option<axum::Extension<crate::accept::HeldConnection>>,
    headers: HeaderMap,
    ws: Result<TunnelUpgrade, NotAnUpgrade>,
) -> Result<Response, ApiError> {
    let system = authenticate_system(&state, &headers, peer).await?;
    let ws = ws.map_err(NotAnUpgrade::into_api_error)?;
    // Held until the tunnel is active (or failed): one per system, and at
    // most --max-tunnel-setups in all.
    let setup = state.tunnels.setups.admit(system.id).await?;
    let mut event = AuditEvent::new(AuditKind::TunnelConnected);
    event.actor = Some(system.key.clone());
    event.system_id = Some(system.id);
    event.ip_address = Some(peer.ip().to_string());
    state.audit.record(event).await?;
    Ok(ws.on_upgrade(move |socket| async move {
        let _held = held;
        run_tunnel(state, system, peer, socket, setup).await;
    }))
}

/// Tunnels being set up, from the authenticated request to the active
/// tunnel: at most `max_tunnel_setups` in all, and one per system. A new
/// connection of a system that is being set up takes the setup over (the
/// older one is abandoned, as a live tunnel is taken over by the agent's
/// new connection), so one system's credentials never hold more than one
/// slot, however many handshakes they leave hanging. Clones share the
/// slots.
#[derive(Debug, Clone)]
pub(crate) struct Setups {
    slots: Arc<tokio::sync::Semaphore>,
    systems: Arc<std::sync::Mutex<HashMap<SystemId, (u64, CancellationToken)>>>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

/// One tunnel's setup; the slot and the system's turn are given back when
/// dropped.
#[derive(Debug)]
pub(crate) struct Setup {
    _slot: OwnedSemaphorePermit,
    turn: Turn,
}

impl Setup {
    /// Resolves when a newer connection of the system took the setup over.
    pub(crate) async fn superseded(&self) {
        self.turn.superseded.cancelled().await;
    }
}

/// A system's turn to be set up; given back when dropped (unless a newer
/// connection took it over).
#[derive(Debug)]
struct Turn {
    system: SystemId,
    generation: u64,
    superseded: CancellationToken,
    systems: Arc<std::sync::Mutex<HashMap<SystemId, (u64, CancellationToken)>>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut systems = self.systems.lock().unwrap_or_else(|p| p.into_inner());
        if systems
            .get(&self.system)
            .is_some_and(|(g, _)| *g == self.generation)
        {
            systems.remove(&self.system);
        }
    }
}

impl Setups {
    pub(crate) fn new(max: usize) -> Self {
        Setups {
            slots: Arc::new(tokio::sync::Semaphore::new(max)),
            systems: Default::default(),
            next: Default::default(),
        }
    }

    /// A setup for `system`, taking over one in progress for it; 503
    /// `server_busy` with a spread `Retry-After` when no slot comes free in
    /// [`SETUP_QUEUE_WAIT`].
    pub(crate) async fn admit(&self, system: SystemId) -> Result<Setup, ApiError> {
        let generation = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let superseded = CancellationToken::new();
        {
            let mut systems = self.systems.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, older)) = systems.insert(system, (generation, superseded.clone())) {
                older.cancel();
            }
        }
        // Given back if the wait below fails or is cancelled.
        let turn = Turn {
            system,
            generation,
            superseded,
            systems: self.systems.clone(),
        };
        let slot = match tokio::time::timeout(SETUP_QUEUE_WAIT, self.slots.clone().acquire_owned())
            .await
        {
            Ok(Ok(slot)) => slot,
            _ => {
                let wait = Duration::from_secs(rand::random_range(BUSY_RETRY_SECS));
                return Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "server_busy",
                    "the server is setting up many tunnels at once; try again after Retry-After",
                )
                .with_retry_after(wait));
            }
        };
        Ok(Setup { _slot: slot, turn })
    }
}

async fn authenticate_system(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<System, ApiError> {
    let Some((key, secret)) = basic_credentials(headers) else {
        // Anonymous noise: counted and logged in a summary, never audited
        // one by one (see crate::refusals).
        state.refusals.anonymous_tunnel();
        return Err(invalid_credentials());
    };
    let attempt = Attempt::new(Scope::Tunnel, &key, peer.ip());
    let known = state.stores.identity.system_by_key(&key).await?;
    let known_address = match &known {
        Some(system) => last_agent_ip(state, system.id).await == Some(peer.ip()),
        None => false,
    };
    // The failure is reserved before the secret is checked and before any
    // audit is written; a refused attempt is only counted.
    let reservation = match attempt.reserve(state, known_address).await {
        Ok(r) => r,
        Err(limited) => {
            let name: String = key.chars().take(64).collect();
            state
                .refusals
                .throttled(AuditKind::TunnelAuthFailed, &name, attempt.address());
            return Err(limited);
        }
    };
    let system = match known {
        Some(system) if verify_secret(&secret, &system.secret_hash) => Some(system),
        Some(_) => None,
        None => {
            verify_against_nothing(&secret);
            None
        }
    };
    if let Some(system) = system {
        reservation.succeeded(state).await;
        return Ok(system);
    }
    drop(reservation);
    audit_auth_failure(state, &key, peer, "invalid_credentials").await;
    Err(invalid_credentials())
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "invalid system key or secret",
    )
    .with_challenge("Basic")
}

/// The address of the agent of the system's newest session, if any.
async fn last_agent_ip(state: &AppState, system_id: SystemId) -> Option<std::net::IpAddr> {
    let addr = state
        .stores
        .sessions
        .last_agent_addr(system_id)
        .await
        .ok()??;
    addr.parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| addr.parse())
        .ok()
}

async fn audit_auth_failure(state: &AppState, key: &str, peer: SocketAddr, reason: &str) {
    crate::metrics::global().auth_failed("tunnel");
    let mut event = AuditEvent::new(AuditKind::TunnelAuthFailed);
    event.actor = Some(truncate(key, 64));
    event.ip_address = Some(peer.ip().to_string());
    event.details = serde_json::json!({ "reason": reason });
    state.audit.best_effort(event).await;
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

async fn run_tunnel(
    state: Arc<AppState>,
    system: System,
    peer: SocketAddr,
    socket: TunnelWs,
    setup: Setup,
) {
    let started = std::time::Instant::now();
    let ws = socket;
    let ws_close = ws.close_handle();
    let mux = shared(WireMux::server(ws, &state.mux_config()));
    let incoming = tokio::select! {
        incoming = link::accept(mux, state.config.handshake_timeout) => match incoming {
            Ok(ok) => ok,
            Err(e) => {
                tracing::warn!(system = %system.name, %peer, "tunnel handshake failed: {e}");
                return;
            }
        },
        _ = setup.superseded() => {
            tracing::info!(system = %system.name, %peer, "a newer connection of the system took the setup over");
            return;
        }
    };
    let session_id = match attach_session(&state, &system, incoming.hello(), peer).await {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(system = %system.name, "cannot attach a session: {e}");
            incoming.shutdown();
            return;
        }
    };
    // Every path out of `serve_tunnel` drops or shuts down the link.
    let (reason, tunnel) = match serve_tunnel(
        &state, &system, session_id, incoming, ws_close, setup, started,
    )
    .await
    {
        Ok(ok) => ok,
        Err(reason) => {
            tracing::warn!(system = %system.name, session = %session_id, %peer, "tunnel refused: {reason}");
            (reason, None)
        }
    };
    // Only the last tunnel of a session ends it: a tunnel that was taken
    // over by the agent's new connection leaves the session alone.
    let session_lost = tunnel
        .as_ref()
        .is_none_or(|t| state.tunnels.registry.remove(t));
    if let Some(t) = tunnel.as_ref().filter(|_| session_lost) {
        state.tunnels.cluster.detached(t).await;
    }
    if session_lost {
        let grace_ms = state.config.grace_period.as_millis() as i64;
        state
            .lifecycle
            .apply(session_id, Event::TunnelLost { grace_ms })
            .await;
    }
    let mut event = AuditEvent::new(AuditKind::TunnelDisconnected);
    event.actor = Some(system.key.clone());
    event.system_id = Some(system.id);
    event.session_id = Some(session_id);
    event.ip_address = Some(peer.ip().to_string());
    event.details = serde_json::json!({"reason": reason});
    state.audit.best_effort(event).await;
}

/// The session this tunnel carries: the one the agent resumes, if its
/// token is good and the session can resume, or a new one.
async fn attach_session(
    state: &AppState,
    system: &System,
    hello: &Hello,
    peer: SocketAddr,
) -> Result<SessionId, rtunnel_core::store::StoreError> {
    if let Some(resume) = &hello.resume {
        match try_resume(state, system, resume).await? {
            Ok(()) => {
                let mut event = AuditEvent::new(AuditKind::SessionResumed);
                event.actor = Some(system.key.clone());
                event.system_id = Some(system.id);
                event.session_id = Some(resume.session_id);
                event.ip_address = Some(peer.ip().to_string());
                state.audit.best_effort(event).await;
                tracing::info!(system = %system.name, session = %resume.session_id, "agent resumed its session");
                return Ok(resume.session_id);
            }
            Err(why) => {
                tracing::info!(system = %system.name, session = %resume.session_id, "not resuming: {why}");
            }
        }
    }
    // The system's tunnel may be live here or on another node; either
    // way the new connection takes its session over (the old tunnel is
    // told `replaced` once the new one is live).
    if let Some(live) = state.tunnels.cluster.route_of_system(system.id).await {
        let session_id = live.session_id();
        let mut event = AuditEvent::new(AuditKind::TunnelTakenOver);
        event.actor = Some(system.key.clone());
        event.system_id = Some(system.id);
        event.session_id = Some(session_id);
        event.ip_address = Some(peer.ip().to_string());
        state.audit.best_effort(event).await;
        tracing::info!(system = %system.name, session = %session_id, %peer, "a new agent connection takes over the live session");
        return Ok(session_id);
    }
    let now = now_millis();
    let session = SessionRecord {
        id: SessionId::new(),
        system_id: system.id,
        status: SessionStatus::Pending,
        created_at: now,
        activated_at: None,
        ended_at: None,
        end_reason: None,
        expires_at: now + state.config.session_ttl.as_millis() as i64,
        grace_until: None,
        reconnect_token_hash: None,
        agent_addr: Some(peer.to_string()),
        agent_software: None,
        services: Vec::new(),
        node_id: Some(state.tunnels.cluster.node_id().to_owned()),
    };
    state.stores.sessions.create_session(&session).await?;
    state
        .tunnels
        .cluster
        .announce(Change::Session {
            id: session.id,
            system_id: system.id,
            status: SessionStatus::Pending,
        })
        .await;
    Ok(session.id)
}

/// Checks a resume request and moves the session back to `active`.
async fn try_resume(
    state: &AppState,
    system: &System,
    resume: &Resume,
) -> Result<Result<(), String>, rtunnel_core::store::StoreError> {
    let Some(session) = state.stores.sessions.session(resume.session_id).await? else {
        return Ok(Err("no such session".into()));
    };
    let token_ok = match &session.reconnect_token_hash {
        Some(hash) => verify_secret(&resume.token, hash),
        None => verify_against_nothing(&resume.token),
    };
    if session.system_id != system.id || !token_ok {
        return Ok(Err(
            "the reconnect token is not valid for this system".into()
        ));
    }
    let transition = match session.lifecycle().step(Event::Resumed, now_millis()) {
        Ok(t) => t,
        Err(e) => return Ok(Err(e.to_string())),
    };
    // The token is single use: it is replaced before the welcome goes out.
    if !state
        .stores
        .sessions
        .apply_lifecycle(
            session.id,
            session.status,
            None,
            &transition.next,
            None,
            now_millis(),
        )
        .await?
    {
        return Ok(Err("the session changed meanwhile".into()));
    }
    state
        .tunnels
        .cluster
        .announce(Change::Session {
            id: session.id,
            system_id: session.system_id,
            status: transition.next.status,
        })
        .await;
    state
        .lifecycle
        .perform(session.id, &transition.actions)
        .await;
    Ok(Ok(()))
}

/// Runs one tunnel; returns why it ended and the registered tunnel (Err when
/// it never became active). The connection is closed when it returns.
async fn serve_tunnel(
    state: &Arc<AppState>,
    system: &System,
    session_id: SessionId,
    incoming: Incoming,
    ws_close: rtunnel_core::ws::CloseHandle,
    setup: Setup,
    started: std::time::Instant,
) -> Result<(String, Option<Arc<LiveTunnel>>), String> {
    let timeout = state.config.handshake_timeout;
    let heartbeat = state.config.heartbeat_interval;
    let software = incoming.hello().software.clone();
    let token = generate_secret();
    if let Err(e) = state
        .stores
        .sessions
        .set_reconnect_token(session_id, &hash_secret(&token))
        .await
    {
        incoming.shutdown();
        return Err(format!("cannot store the reconnect token: {e}"));
    }
    // From here on, dropping `link` and `driver` ends the connection.
    let (link, mut driver) = incoming
        .welcome(session_id, heartbeat, Some(token))
        .await
        .map_err(|e| format!("handshake failed: {e}"))?;
    let services = tokio::select! {
        services = read_manifest(driver.control_mut(), timeout) => services?,
        _ = setup.superseded() => {
            return Err("a newer connection of the system took the setup over".into());
        }
    };
    state
        .stores
        .sessions
        .activate_session(
            session_id,
            &services,
            &software,
            state.tunnels.cluster.node_id(),
            now_millis(),
        )
        .await
        .map_err(|e| format!("cannot activate the session: {e}"))?;
    // Named as the agent names them in its own log (the terminal included).
    let service_names = services
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(",");
    // Streams find the tunnel from here on, before anyone hears the
    // session is active (and as soon as the database says so).
    let tunnel = Arc::new(LiveTunnel {
        session_id,
        system_id: system.id,
        link: link.clone(),
        services: std::sync::RwLock::new(Arc::new(services)),
        streams: Arc::new(tokio::sync::Semaphore::new(
            state.config.max_streams_per_tunnel,
        )),
        max_streams: state.config.max_streams_per_tunnel,
        shares: Default::default(),
        max_streams_per_user: state.config.streams_per_user(),
        home: crate::shards::here(),
    });
    let replaced = state.tunnels.registry.insert(tunnel.clone());
    // Set up: the slot goes to the next agent, before anything below that
    // waits on another tunnel or on Redis.
    drop(setup);
    state
        .tunnels
        .cluster
        .announce(Change::Session {
            id: session_id,
            system_id: system.id,
            status: SessionStatus::Active,
        })
        .await;
    tracing::info!(
        system = %system.name,
        session = %session_id,
        agent = %software,
        services = %service_names,
        "tunnel active"
    );
    crate::metrics::global().handshake(started.elapsed());
    for old in replaced {
        tracing::info!(system = %system.name, session = %old.session_id, "closing the replaced tunnel");
        old.close(
            CloseCode::Replaced,
            "another agent with the same system credentials connected",
        )
        .await;
    }
    state.tunnels.cluster.attached(&tunnel).await;
    // A later manifest (the agent re-read its services) replaces this one.
    let (manifests, incoming_manifests) = tokio::sync::watch::channel(None);
    let updater = tokio::spawn(follow_manifests(
        state.clone(),
        tunnel.clone(),
        system.name.clone(),
        incoming_manifests,
    ));
    let driver = driver.on_message(move |msg| match msg {
        Control::Manifest { services } => {
            manifests.send_replace(Some(services));
        }
        other => tracing::debug!("control message ignored: {other:?}"),
    });
    // The agent opens no streams to the server: any it tries are reset.
    let end = driver.run(drop).await;
    updater.abort();
    if let LinkEnd::LocalClose(code) = end {
        // Let the close message reach the agent: it hangs up when it reads it.
        let _ = tokio::time::timeout(CLOSE_LINGER, link.closed()).await;
        if code == CloseCode::SessionClosed {
            // If it did not, the WebSocket itself says it: close code 4000,
            // sent instead of yamux's goodbye, which the agent would stop at.
            ws_close.set_code(CLOSE_SESSION_CLOSED, "session closed");
        }
    }
    link.shutdown();
    let reason = match end {
        LinkEnd::PeerClosed { code, reason } if reason.is_empty() => {
            format!("the agent closed the tunnel: {code}")
        }
        LinkEnd::PeerClosed { code, reason } => {
            format!("the agent closed the tunnel: {code} ({reason})")
        }
        LinkEnd::LocalClose(code) => format!("closed by the server: {code}"),
        LinkEnd::HeartbeatTimeout(d) => format!(
            "no heartbeat from the agent for {}",
            humantime::format_duration(std::time::Duration::from_secs(d.as_secs()))
        ),
        LinkEnd::Lost(why) => format!("tunnel lost: {why}"),
    };
    tracing::info!(system = %system.name, session = %session_id, "tunnel ended: {reason}; {}", describe(&tunnel));
    Ok((reason, Some(tunnel)))
}

/// The least time between two manifest changes applied for one tunnel: an
/// agent sending more often has only its latest applied.
const MANIFEST_UPDATE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Applies the manifests an agent sends after the first: stored, put on
/// the live tunnel (streams opened from then on see it), announced to the
/// cluster and to event listeners. Streams already open are left alone.
async fn follow_manifests(
    state: Arc<AppState>,
    tunnel: Arc<LiveTunnel>,
    system: String,
    mut incoming: tokio::sync::watch::Receiver<Option<Vec<ServiceInfo>>>,
) {
    while incoming.changed().await.is_ok() {
        let Some(services) = incoming.borrow_and_update().clone() else {
            continue;
        };
        let before = tunnel.services();
        if *before == services {
            continue;
        }
        match state
            .stores
            .sessions
            .update_manifest(tunnel.session_id, &services)
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(system = %system, session = %tunnel.session_id, error = %e, "cannot store the agent's new services; keeping the old ones");
                tokio::time::sleep(MANIFEST_UPDATE_INTERVAL).await;
                continue;
            }
        }
        let changed = |from: &[ServiceInfo], to: &[ServiceInfo]| -> String {
            let names: Vec<&str> = to
                .iter()
                .filter(|s| !from.iter().any(|f| f.name == s.name))
                .map(|s| s.name.as_str())
                .collect();
            names.join(",")
        };
        let added = changed(&before, &services);
        let removed = changed(&services, &before);
        tunnel.set_services(services);
        tracing::info!(
            system = %system,
            session = %tunnel.session_id,
            added = %added,
            removed = %removed,
            "the agent changed its services"
        );
        state.tunnels.cluster.attached(&tunnel).await;
        state
            .tunnels
            .cluster
            .announce(Change::Session {
                id: tunnel.session_id,
                system_id: tunnel.system_id,
                status: SessionStatus::Active,
            })
            .await;
        tokio::time::sleep(MANIFEST_UPDATE_INTERVAL).await;
    }
}

/// The agent's manifest, the first message after the welcome.
async fn read_manifest(
    control: &mut MuxStream,
    timeout: std::time::Duration,
) -> Result<Vec<ServiceInfo>, String> {
    match tokio::time::timeout(
        timeout,
        read_frame::<Control, _>(control, MAX_CONTROL_FRAME_BYTES),
    )
    .await
    {
        Ok(Ok(Control::Manifest { services })) => Ok(services),
        Ok(Ok(other)) => Err(format!("expected a manifest, got {other:?}")),
        Ok(Err(e)) => {
            let reason = format!("bad manifest: {e}");
            link::send_close(control, CloseCode::ProtocolError, &reason).await;
            Err(reason)
        }
        Err(_) => Err(format!("no manifest within {timeout:?}")),
    }
}
