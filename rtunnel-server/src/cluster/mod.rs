//! Several server nodes on one database and one Redis.
//!
//! Every node keeps its own agents' tunnels ([`Registry`]). With a Redis
//! (`--redis-url`) the nodes also share:
//! - **where tunnels are**: each node announces itself (its id and the
//!   address of its node mesh) and the route of each of its tunnels,
//!   again every [`HEARTBEAT`], each entry living [`ENTRY_TTL`];
//! - **commands** over pub/sub ([`Command`]): close a session's tunnel,
//!   access changed (check open connections again), a tunnel attached
//!   elsewhere (close the stale copy here);
//! - **the node mesh** ([`mesh`]): an operator on node B reaches the agent
//!   on node A through a stream on the one TLS connection between B and
//!   A's internal listener, both authenticated with the cluster key;
//! - **dead nodes**: sessions still marked active on a node that stopped
//!   announcing itself for [`ENTRY_TTL`] are put in their grace period by
//!   the nodes that remain, so their agents can resume elsewhere.
//!
//! Without Redis the node is alone: routes are the local registry and
//! commands act locally.

mod commands;
pub mod mesh;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtunnel_auth::node::NodeKey;
use rtunnel_core::proto::{CloseCode, Refusal, RefusalCode, ServiceInfo, StreamHeader};
use rtunnel_core::store::now_millis;
use rtunnel_core::store::redis::{
    NodeInfo, RedisConnection, RedisPubSub, RedisRoutes, TunnelRoute,
};
use rtunnel_core::store::{
    Page, SessionFilter, SessionRecord, SessionStatus, SessionStore, StoreError,
};
use uuid::Uuid;

pub use commands::Command;

use crate::registry::{LiveTunnel, Registry, TunnelStream};
use crate::state::AppState;

/// How often a node announces itself and its tunnels.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// How long an announcement lasts: a node silent this long is dead.
pub const ENTRY_TTL: Duration = Duration::from_secs(10);

/// The node's place in its cluster.
pub struct Cluster {
    node_id: String,
    registry: Arc<Registry>,
    live: Option<Shared>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.node_id)
            .field("redis", &self.live.is_some())
            .finish()
    }
}

/// What a node shares with the others.
pub(crate) struct Shared {
    redis: RedisConnection,
    routes: RedisRoutes,
    pubsub: RedisPubSub,
    /// `host:port` of this node's channel, as the others dial it.
    address: String,
    /// This node's end of the node mesh.
    mesh: mesh::Mesh,
    /// The durable record of which node holds each session, for routing
    /// while Redis is away.
    sessions: Arc<dyn SessionStore>,
    /// The channel address of every node last seen announcing itself.
    known_nodes: Mutex<HashMap<String, String>>,
    /// Set when Redis failed, cleared when a heartbeat gets through:
    /// meanwhile tunnels are found by the database without waiting on
    /// Redis first.
    redis_away: AtomicBool,
}

/// Settings of a node that shares a Redis with others.
pub struct Membership {
    /// The shared Redis.
    pub redis: RedisConnection,
    /// `host:port` the other nodes reach this node's channel at.
    pub address: String,
    /// The cluster key every node holds.
    pub key: NodeKey,
    /// The TLS identity derived from it, for the node mesh.
    pub identity: rtunnel_auth::mesh::MeshIdentity,
    /// The shared sessions (which node holds each), for routing while
    /// Redis is away.
    pub sessions: Arc<dyn SessionStore>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("redis", &self.redis)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A node alone.
    pub fn single(node_id: String, registry: Arc<Registry>) -> Self {
        Cluster {
            node_id,
            registry,
            live: None,
        }
    }

    /// A node of a cluster.
    pub fn member(node_id: String, registry: Arc<Registry>, m: Membership) -> Result<Self, String> {
        let mesh = mesh::Mesh::new(node_id.clone(), m.key, &m.identity)?;
        Ok(Cluster {
            node_id,
            registry,
            live: Some(Shared {
                routes: RedisRoutes::new(m.redis.clone()),
                pubsub: RedisPubSub::new(m.redis.clone(), "commands"),
                redis: m.redis,
                address: m.address,
                mesh,
                sessions: m.sessions,
                known_nodes: Mutex::new(HashMap::new()),
                redis_away: AtomicBool::new(false),
            }),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether this node shares a Redis with others.
    pub fn is_shared(&self) -> bool {
        self.live.is_some()
    }

    /// Whether Redis answers (`Ok` when there is none).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.live {
            Some(live) => live.redis.ping().await,
            None => Ok(()),
        }
    }

    /// Where the tunnel of a session is: on this node, or on another node
    /// that announced it. While Redis is away the database says which node
    /// holds the session and the node's last announced address is used.
    pub async fn route(&self, session_id: Uuid) -> Option<Route> {
        if let Some(t) = self.registry.by_session(session_id) {
            return Some(Route::Local(t));
        }
        let live = self.live.as_ref()?;
        match self
            .announced(live, || live.routes.by_session(session_id))
            .await
        {
            Ok(route) => route,
            Err(()) => self.recorded(live, live.sessions.session(session_id).await),
        }
    }

    /// Where the tunnel of a system is.
    pub async fn route_of_system(&self, system_id: Uuid) -> Option<Route> {
        if let Some(t) = self.registry.by_system(system_id) {
            return Some(Route::Local(t));
        }
        let live = self.live.as_ref()?;
        match self
            .announced(live, || live.routes.by_system(system_id))
            .await
        {
            Ok(route) => route,
            Err(()) => {
                let filter = SessionFilter {
                    status: Some(SessionStatus::Active),
                    system_id: Some(system_id),
                    ..SessionFilter::default()
                };
                let active = live
                    .sessions
                    .list_sessions(&filter, now_millis(), Page::default())
                    .await;
                self.recorded(live, active.map(|p| p.items.into_iter().next()))
            }
        }
    }

    /// The route Redis holds (`lookup`), on a node that is alive; `Err`
    /// when Redis is away.
    async fn announced<F, Fut>(&self, live: &Shared, lookup: F) -> Result<Option<Route>, ()>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<TunnelRoute>, StoreError>>,
    {
        if live.redis_away.load(Ordering::Relaxed) {
            return Err(());
        }
        let looked_up: Result<Option<(TunnelRoute, NodeInfo)>, StoreError> = async {
            let route = match lookup().await? {
                Some(route) if route.node_id != self.node_id => route,
                // A route naming this node without a tunnel here is stale.
                _ => return Ok(None),
            };
            Ok(live
                .routes
                .node(&route.node_id)
                .await?
                .map(|node| (route, node)))
        }
        .await;
        match looked_up {
            Ok(Some((route, node))) => {
                live.remember_node(&node);
                Ok(Some(Route::Remote(RemoteTunnel {
                    route,
                    address: node.address,
                })))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::warn!(error = %e, "Redis is away: finding tunnels by the database until it is back");
                live.redis_away.store(true, Ordering::Relaxed);
                Err(())
            }
        }
    }

    /// The route the database records for an active session, on a node
    /// whose address is known (the node mesh checks the rest: a node
    /// without the tunnel answers `tunnel_not_here`).
    fn recorded(
        &self,
        live: &Shared,
        found: Result<Option<SessionRecord>, StoreError>,
    ) -> Option<Route> {
        let record = match found {
            Ok(Some(r)) if r.status == SessionStatus::Active => r,
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look up where a tunnel is");
                return None;
            }
        };
        let node_id = record.node_id.filter(|n| *n != self.node_id)?;
        let address = live.known_node(&node_id)?;
        Some(Route::Remote(RemoteTunnel {
            route: TunnelRoute {
                session_id: record.id,
                system_id: record.system_id,
                node_id,
                services: record.services,
            },
            address,
        }))
    }

    /// Tells the tunnel of a session, wherever it is, to close.
    pub async fn close_tunnel(&self, session_id: Uuid, code: CloseCode, reason: &str) {
        if let Some(t) = self.registry.by_session(session_id) {
            t.close(code, reason).await;
            return;
        }
        self.publish(Command::CloseTunnel {
            session_id,
            code,
            reason: reason.to_owned(),
        })
        .await;
    }

    /// Access changed (a grant revoked, a user disabled, a login ended):
    /// open connections on every node check again now.
    pub async fn access_changed(&self, state: &AppState) {
        state.access.changed();
        self.publish(Command::AccessChanged).await;
    }

    /// A tunnel became live on this node: the others learn where it is
    /// and close any copy of it they still hold.
    pub async fn attached(&self, tunnel: &LiveTunnel) {
        let Some(live) = &self.live else { return };
        if let Err(e) = live.routes.put(&self.route_of(tunnel), ENTRY_TTL).await {
            tracing::warn!(session = %tunnel.session_id, error = %e, "cannot announce a tunnel; the next heartbeat tries again");
        }
        self.publish(Command::TunnelAttached {
            session_id: tunnel.session_id,
            system_id: tunnel.system_id,
        })
        .await;
    }

    /// A tunnel of this node ended.
    pub async fn detached(&self, tunnel: &LiveTunnel) {
        let Some(live) = &self.live else { return };
        if let Err(e) = live.routes.remove(&self.route_of(tunnel)).await {
            tracing::warn!(session = %tunnel.session_id, error = %e, "cannot withdraw a tunnel's route; it expires by itself");
        }
    }

    fn route_of(&self, tunnel: &LiveTunnel) -> TunnelRoute {
        TunnelRoute {
            session_id: tunnel.session_id,
            system_id: tunnel.system_id,
            node_id: self.node_id.clone(),
            services: tunnel.services.clone(),
        }
    }

    async fn publish(&self, command: Command) {
        if let Some(live) = &self.live {
            commands::publish(live, &self.node_id, command).await;
        }
    }

    /// Runs the node's part of the cluster (announcements, commands, dead
    /// nodes) until the server shuts down. Nothing to do for a node alone.
    pub async fn run(state: Arc<AppState>) {
        let Some(live) = &state.cluster.live else {
            return;
        };
        tokio::select! {
            _ = heartbeats(&state, live) => {}
            _ = commands::listen(&state, live) => {}
            _ = watch_nodes(&state, live) => {}
            _ = state.shutdown.cancelled() => {}
        }
    }

    /// Says this node is gone (after its tunnels were told to go).
    pub async fn leave(&self) {
        if let Some(live) = &self.live
            && let Err(e) = live.routes.withdraw_node(&self.node_id).await
        {
            tracing::warn!(error = %e, "cannot withdraw this node; its entry expires by itself");
        }
    }
}

impl Shared {
    fn remember_node(&self, node: &NodeInfo) {
        let mut known = self.known_nodes.lock().unwrap_or_else(|e| e.into_inner());
        known.insert(node.node_id.clone(), node.address.clone());
    }

    fn forget_node(&self, node_id: &str) {
        let mut known = self.known_nodes.lock().unwrap_or_else(|e| e.into_inner());
        known.remove(node_id);
    }

    fn known_node(&self, node_id: &str) -> Option<String> {
        let known = self.known_nodes.lock().unwrap_or_else(|e| e.into_inner());
        known.get(node_id).cloned()
    }
}

/// Where a session's tunnel is.
#[derive(Debug)]
pub enum Route {
    /// On this node.
    Local(Arc<LiveTunnel>),
    /// On another node.
    Remote(RemoteTunnel),
}

/// A tunnel on another node.
#[derive(Debug)]
pub struct RemoteTunnel {
    route: TunnelRoute,
    address: String,
}

impl RemoteTunnel {
    /// The node holding it.
    pub fn node_id(&self) -> &str {
        &self.route.node_id
    }
}

impl Route {
    /// The session.
    pub fn session_id(&self) -> Uuid {
        match self {
            Route::Local(t) => t.session_id,
            Route::Remote(r) => r.route.session_id,
        }
    }

    /// The manifest entry named `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceInfo> {
        let services = match self {
            Route::Local(t) => &t.services,
            Route::Remote(r) => &r.route.services,
        };
        services.iter().find(|s| s.name == name)
    }

    /// Opens a stream to the agent for `header`, here or through the node
    /// holding the tunnel, within `timeout`.
    pub async fn open_stream(
        &self,
        cluster: &Cluster,
        header: &StreamHeader,
        timeout: Duration,
    ) -> Result<TunnelStream, Refusal> {
        match self {
            Route::Local(t) => t.open_stream(header, timeout).await,
            Route::Remote(r) => {
                // Checked here too, so a bad header costs no node round trip.
                crate::registry::admit(&r.route.services, header)?;
                let live = cluster.live.as_ref().ok_or_else(|| {
                    Refusal::new(
                        RefusalCode::AgentUnavailable,
                        "this node is not in a cluster",
                    )
                })?;
                live.mesh.open(r, header, timeout).await
            }
        }
    }
}

/// Announces this node and its tunnels every [`HEARTBEAT`].
async fn heartbeats(state: &AppState, live: &Shared) {
    let me = NodeInfo {
        node_id: state.cluster.node_id.clone(),
        address: live.address.clone(),
    };
    let mut failing = false;
    let mut ticker = tokio::time::interval(HEARTBEAT);
    loop {
        ticker.tick().await;
        let routes: Vec<TunnelRoute> = state
            .registry
            .all()
            .iter()
            .map(|t| state.cluster.route_of(t))
            .collect();
        let result = match live.routes.announce_node(&me, ENTRY_TTL).await {
            Ok(()) => live.routes.refresh(&routes, ENTRY_TTL).await,
            Err(e) => Err(e),
        };
        live.redis_away.store(result.is_err(), Ordering::Relaxed);
        match result {
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot announce this node and its tunnels; retrying every heartbeat");
            }
            Ok(()) if failing => {
                failing = false;
                tracing::info!(tunnels = routes.len(), "announcing this node again");
            }
            _ => {}
        }
    }
}

/// Puts the sessions of nodes that stopped announcing themselves in their
/// grace period. A node must be missing for [`ENTRY_TTL`] as seen from
/// here, so a Redis that restarted (and forgot every node until their next
/// heartbeat) kills nobody.
async fn watch_nodes(state: &AppState, live: &Shared) {
    let mut missing_since: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut ticker = tokio::time::interval(HEARTBEAT);
    loop {
        ticker.tick().await;
        let holding = match state.stores.sessions.nodes_holding_sessions().await {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the nodes holding sessions");
                continue;
            }
        };
        let now = tokio::time::Instant::now();
        let mut still_missing = HashMap::new();
        for node in holding {
            if node == state.cluster.node_id {
                continue;
            }
            match live.routes.node(&node).await {
                Ok(Some(info)) => live.remember_node(&info),
                Ok(None) => {
                    live.forget_node(&node);
                    let since = missing_since.get(&node).copied().unwrap_or(now);
                    if now.duration_since(since) >= ENTRY_TTL {
                        recover_node(state, &node).await;
                    } else {
                        still_missing.insert(node, since);
                    }
                }
                Err(e) => {
                    // Nothing is known while Redis is away: start over.
                    tracing::debug!(error = %e, "cannot check the other nodes");
                    still_missing.clear();
                    break;
                }
            }
        }
        missing_since = still_missing;
    }
}

async fn recover_node(state: &AppState, node: &str) {
    let grace_ms = state.config.grace_period.as_millis() as i64;
    match state
        .stores
        .sessions
        .recover_unfinished(node, grace_ms, now_millis())
        .await
    {
        Ok(n) => {
            tracing::warn!(
                node,
                sessions = n,
                "a node stopped announcing itself: its sessions wait for their agents"
            );
            let mut event = rtunnel_core::store::AuditEvent::new("node_lost");
            event.actor = Some("system".into());
            event.details =
                serde_json::json!({"node": node, "sessions": n, "seen_by": state.cluster.node_id});
            state.audit_best_effort(event).await;
        }
        Err(e) => crate::state::log_store_error("recovering a lost node's sessions", &e),
    }
}

/// A valid node id: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= rtunnel_auth::node::MAX_NODE_ID_LEN
        && id.bytes().all(rtunnel_auth::node::is_node_id_byte)
}

/// This node's id: `configured`, or the one kept in `<data-dir>/node-id`
/// (created on first start), so it stays the same across restarts.
pub fn resolve_node_id(
    configured: Option<&str>,
    data_dir: &std::path::Path,
) -> Result<String, String> {
    if let Some(id) = configured {
        return if valid_node_id(id) {
            Ok(id.to_owned())
        } else {
            Err(format!(
                "--node-id {id:?}: use 1 to 64 letters, digits, '.', '_' or '-'"
            ))
        };
    }
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if valid_node_id(s.trim()) => Ok(s.trim().to_owned()),
        Ok(_) => Err(format!("{} does not hold a valid node id", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("node-{}", rtunnel_auth::secret::generate_hex(4));
            std::fs::create_dir_all(data_dir)
                .and_then(|()| std::fs::write(&path, format!("{id}\n")))
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The address other nodes dial: `advertise`, or the bound address of the
/// node listener when it names one host.
pub fn advertised_address(advertise: Option<&str>, bound: SocketAddr) -> Result<String, String> {
    match advertise {
        Some(a) if !a.is_empty() => Ok(a.to_owned()),
        _ if bound.ip().is_unspecified() => Err(format!(
            "--node-listen {bound} does not say where other nodes reach this one: set --node-advertise HOST:PORT"
        )),
        _ => Ok(bound.to_string()),
    }
}
