//! A node that shares a Redis with others (feature `redis`): the routes
//! of every node's tunnels, commands over pub/sub, the node mesh, and the
//! watch on nodes that stop announcing themselves.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtunnel_auth::node::NodeKey;
use rtunnel_core::ids::{SessionId, SystemId};
use rtunnel_core::proto::{Refusal, StreamHeader};
use rtunnel_core::store::now_millis;
use rtunnel_core::store::redis::{
    NodeInfo, RedisConnection, RedisPubSub, RedisRoutes, TunnelRoute,
};
use rtunnel_core::store::{
    AuditKind, Page, SessionFilter, SessionRecord, SessionStatus, SessionStore, StoreError,
};

use super::{Cluster, Command, ENTRY_TTL, HEARTBEAT, RemoteTunnel, Route, commands, mesh};
use crate::registry::Registry;
use crate::revocation::AccessWatch;
use crate::state::AppState;

/// What a node shares with the others.
pub(crate) struct Shared {
    /// This node's id.
    node_id: String,
    redis: RedisConnection,
    routes: RedisRoutes,
    pub(super) pubsub: RedisPubSub,
    /// `host:port` of this node's channel, as the others dial it.
    address: String,
    /// This node's end of the node mesh.
    pub(super) mesh: mesh::Mesh,
    /// The durable record of which node holds each session, for routing
    /// while Redis is away.
    sessions: Arc<dyn SessionStore>,
    /// The channel address of every node last seen announcing itself,
    /// and when its announcement was last read.
    known_nodes: KnownNodes,
    /// Other nodes' routes read lately, used again for a second.
    recent_routes: RecentRoutes,
    /// Set when Redis failed, cleared when a heartbeat gets through:
    /// meanwhile tunnels are found by the database without waiting on
    /// Redis first.
    redis_away: AtomicBool,
}

/// A node whose announcement read within this long is taken as alive
/// without reading it again: a stream to another node's tunnel then costs
/// one Redis round trip (its route), not two. A dead node's announcement
/// lasts [`ENTRY_TTL`] anyway, so this adds at most a tenth to the time
/// a dead node is taken for alive (and the mesh, which cannot reach it,
/// refuses its streams meanwhile).
const NODE_SEEN_FRESH: Duration = Duration::from_secs(1);

/// The other nodes as last read from their announcements: the address of
/// each, and when it was read.
#[derive(Debug, Default)]
struct KnownNodes(Mutex<HashMap<String, (String, Instant)>>);

impl KnownNodes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `node` announced itself; read at `at`.
    fn remember(&self, node: &NodeInfo, at: Instant) {
        self.lock()
            .insert(node.node_id.clone(), (node.address.clone(), at));
    }

    /// The address of `node_id` if its announcement was read less than
    /// [`NODE_SEEN_FRESH`] before `now`.
    fn seen_alive(&self, node_id: &str, now: Instant) -> Option<String> {
        self.lock()
            .get(node_id)
            .filter(|(_, at)| now.saturating_duration_since(*at) < NODE_SEEN_FRESH)
            .map(|(address, _)| address.clone())
    }

    /// The last address of `node_id`, however old.
    fn address(&self, node_id: &str) -> Option<String> {
        self.lock().get(node_id).map(|(address, _)| address.clone())
    }

    fn forget(&self, node_id: &str) {
        self.lock().remove(node_id);
    }
}

/// A route read from Redis less than this long ago is used again without
/// reading it: streams to one tunnel then cost no Redis round trip each.
/// Its holder tells the other nodes when the tunnel ends
/// ([`Command::TunnelDetached`]) and when it starts or its services
/// change ([`Command::TunnelAttached`]): each forgets the route as the
/// message arrives, so this bounds how long a route outlives a message
/// that was lost or is still on its way.
const ROUTE_SEEN_FRESH: Duration = Duration::from_secs(1);

/// The most routes remembered. Stale ones are dropped every heartbeat
/// ([`RecentRoutes::prune`]); a node opening streams to more tunnels than
/// this within a second drops a quarter of them to make room.
const MAX_RECENT_ROUTES: usize = 4096;

/// Other nodes' routes read lately, by session.
#[derive(Debug, Default)]
struct RecentRoutes(Mutex<Recent>);

#[derive(Debug, Default)]
struct Recent {
    routes: HashMap<SessionId, (TunnelRoute, Instant)>,
    /// How many times routes were forgotten since the start: a route read
    /// while one was forgotten may be the one the message said is stale,
    /// and is not kept.
    forgotten: u64,
}

impl RecentRoutes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The route of `session_id` if it was read less than
    /// [`ROUTE_SEEN_FRESH`] before `now`.
    fn get(&self, session_id: SessionId, now: Instant) -> Option<TunnelRoute> {
        self.lock()
            .routes
            .get(&session_id)
            .filter(|(_, at)| now.saturating_duration_since(*at) < ROUTE_SEEN_FRESH)
            .map(|(route, _)| route.clone())
    }

    /// What to hand [`put`](Self::put) for a route about to be read.
    fn before_reading(&self) -> u64 {
        self.lock().forgotten
    }

    /// `route` was read, starting at `at`, after
    /// [`before_reading`](Self::before_reading) said `ticket`; kept unless
    /// a route was forgotten meanwhile.
    fn put(&self, route: TunnelRoute, at: Instant, ticket: u64) {
        let mut recent = self.lock();
        if recent.forgotten != ticket {
            return;
        }
        let routes = &mut recent.routes;
        if routes.len() >= MAX_RECENT_ROUTES && !routes.contains_key(&route.session_id) {
            routes.retain(|_, (_, read)| at.saturating_duration_since(*read) < ROUTE_SEEN_FRESH);
            if routes.len() >= MAX_RECENT_ROUTES {
                let dropped: Vec<SessionId> =
                    routes.keys().take(MAX_RECENT_ROUTES / 4).copied().collect();
                for id in dropped {
                    routes.remove(&id);
                }
            }
        }
        routes.insert(route.session_id, (route, at));
    }

    /// The route of `session_id` (with `None`, every route) is stale.
    fn forget(&self, session_id: Option<SessionId>) {
        let mut recent = self.lock();
        recent.forgotten += 1;
        match session_id {
            Some(id) => {
                recent.routes.remove(&id);
            }
            None => recent.routes.clear(),
        }
    }

    /// Drops the routes too old to be used again.
    fn prune(&self, now: Instant) {
        self.lock()
            .routes
            .retain(|_, (_, read)| now.saturating_duration_since(*read) < ROUTE_SEEN_FRESH);
    }
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
    /// A node of a cluster.
    pub fn member(
        node_id: String,
        registry: Arc<Registry>,
        access: AccessWatch,
        m: Membership,
    ) -> Result<Self, String> {
        let mesh = mesh::Mesh::new(node_id.clone(), m.key, &m.identity)?;
        Ok(Cluster {
            node_id: node_id.clone(),
            registry,
            access,
            events: Default::default(),
            live: Some(Shared {
                node_id,
                routes: RedisRoutes::new(m.redis.clone()),
                pubsub: RedisPubSub::new(m.redis.clone(), "commands"),
                redis: m.redis,
                address: m.address,
                mesh,
                sessions: m.sessions,
                known_nodes: KnownNodes::default(),
                recent_routes: RecentRoutes::default(),
                redis_away: AtomicBool::new(false),
            }),
        })
    }
}

impl Shared {
    /// Whether Redis answers.
    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        self.redis.ping().await
    }

    /// Where another node's tunnel of a session is: the node that
    /// announced it, or, while Redis is away, the node the database says
    /// holds the session, at its last announced address.
    pub(super) async fn route(&self, session_id: SessionId) -> Option<Route> {
        let now = Instant::now();
        if let Some(route) = self.recent_routes.get(session_id, now)
            && let Some(address) = self.seen_alive(&route.node_id)
        {
            return Some(Route::Remote(RemoteTunnel { route, address }));
        }
        let ticket = self.recent_routes.before_reading();
        match self.announced(|| self.routes.by_session(session_id)).await {
            Ok(route) => {
                if let Some(Route::Remote(remote)) = &route {
                    self.recent_routes.put(remote.route.clone(), now, ticket);
                }
                route
            }
            Err(()) => self.recorded(self.sessions.session(session_id).await),
        }
    }

    /// The tunnel of `session_id` started, ended or changed somewhere
    /// (`None`: anything may have, while no message arrived): the route
    /// read before is stale.
    pub(super) fn route_changed(&self, session_id: Option<SessionId>) {
        self.recent_routes.forget(session_id);
    }

    /// Where another node's tunnel of a system is.
    pub(super) async fn route_of_system(&self, system_id: SystemId) -> Option<Route> {
        match self.announced(|| self.routes.by_system(system_id)).await {
            Ok(route) => route,
            Err(()) => {
                let filter = SessionFilter {
                    status: Some(SessionStatus::Active),
                    system_id: Some(system_id),
                    ..SessionFilter::default()
                };
                let active = self
                    .sessions
                    .list_sessions(&filter, now_millis(), Page::default())
                    .await;
                self.recorded(active.map(|p| p.items.into_iter().next()))
            }
        }
    }

    /// The route Redis holds (`lookup`), on a node that is alive; `Err`
    /// when Redis is away.
    async fn announced<F, Fut>(&self, lookup: F) -> Result<Option<Route>, ()>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<TunnelRoute>, StoreError>>,
    {
        if self.redis_away.load(Ordering::Relaxed) {
            return Err(());
        }
        let looked_up: Result<Option<(TunnelRoute, String)>, StoreError> = async {
            let route = match lookup().await? {
                Some(route) if route.node_id != self.node_id => route,
                // A route naming this node without a tunnel here is stale.
                _ => return Ok(None),
            };
            if let Some(address) = self.seen_alive(&route.node_id) {
                return Ok(Some((route, address)));
            }
            let Some(node) = self.routes.node(&route.node_id).await? else {
                return Ok(None);
            };
            self.remember_node(&node);
            Ok(Some((route, node.address)))
        }
        .await;
        match looked_up {
            Ok(Some((route, address))) => Ok(Some(Route::Remote(RemoteTunnel { route, address }))),
            Ok(None) => Ok(None),
            Err(e) => {
                crate::metrics::global().redis_error();
                tracing::warn!(error = %e, "Redis is away: finding tunnels by the database until it is back");
                self.redis_away.store(true, Ordering::Relaxed);
                Err(())
            }
        }
    }

    /// The route the database records for an active session, on a node
    /// whose address is known (the node mesh checks the rest: a node
    /// without the tunnel answers `tunnel_not_here`).
    fn recorded(&self, found: Result<Option<SessionRecord>, StoreError>) -> Option<Route> {
        let record = match found {
            Ok(Some(r)) if r.status == SessionStatus::Active => r,
            Ok(_) => return None,
            Err(e) => {
                crate::metrics::global().redis_error();
                tracing::warn!(error = %e, "cannot look up where a tunnel is");
                return None;
            }
        };
        let node_id = record.node_id.filter(|n| *n != self.node_id)?;
        let address = self.known_node(&node_id)?;
        Some(Route::Remote(RemoteTunnel {
            route: TunnelRoute {
                session_id: record.id,
                system_id: record.system_id,
                node_id,
                services: record.services,
                // Redis is away: the thread is not known.
                thread: None,
            },
            address,
        }))
    }

    /// Announces a tunnel of this node.
    pub(super) async fn attached(&self, route: &TunnelRoute) {
        if let Err(e) = self.routes.put(route, ENTRY_TTL).await {
            crate::metrics::global().redis_error();
            tracing::warn!(session = %route.session_id, error = %e, "cannot announce a tunnel; the next heartbeat tries again");
        }
    }

    /// Withdraws a tunnel of this node; `false` when Redis failed.
    pub(super) async fn detached(&self, route: &TunnelRoute) -> bool {
        if let Err(e) = self.routes.remove(route).await {
            crate::metrics::global().redis_error();
            tracing::warn!(session = %route.session_id, error = %e, "cannot withdraw a tunnel's route; it expires by itself");
            return false;
        }
        true
    }

    /// Tells the other nodes.
    pub(super) async fn publish(&self, command: Command) {
        commands::publish(self, &self.node_id, command).await;
    }

    /// The connection thread of the mesh connection to `node`, if any.
    pub(super) fn mesh_home(&self, node: &str, thread: Option<u16>) -> Option<crate::shards::Home> {
        self.mesh.home_of(node, thread)
    }

    /// Opens a stream through the node holding `remote`, not waiting for
    /// its answer.
    pub(super) async fn open_pipelined(
        &self,
        remote: &RemoteTunnel,
        header: &StreamHeader,
        timeout: Duration,
    ) -> Result<super::Opening, Refusal> {
        self.mesh.open_pipelined(remote, header, timeout).await
    }

    /// Announcements, commands and dead nodes, until the server shuts down.
    pub(super) async fn run(&self, state: &AppState) {
        tokio::select! {
            _ = heartbeats(state, self) => {}
            _ = commands::listen(state, self) => {}
            _ = watch_nodes(state, self) => {}
        }
    }

    /// Says this node is gone.
    pub(super) async fn leave(&self) {
        if let Err(e) = self.routes.withdraw_node(&self.node_id).await {
            crate::metrics::global().redis_error();
            tracing::warn!(error = %e, "cannot withdraw this node; its entry expires by itself");
        }
    }

    fn remember_node(&self, node: &NodeInfo) {
        self.known_nodes.remember(node, Instant::now());
    }

    fn seen_alive(&self, node_id: &str) -> Option<String> {
        self.known_nodes.seen_alive(node_id, Instant::now())
    }

    fn forget_node(&self, node_id: &str) {
        self.known_nodes.forget(node_id);
    }

    fn known_node(&self, node_id: &str) -> Option<String> {
        self.known_nodes.address(node_id)
    }
}

/// Announces this node and its tunnels every [`HEARTBEAT`].
async fn heartbeats(state: &AppState, live: &Shared) {
    let me = NodeInfo {
        node_id: state.tunnels.cluster.node_id.clone(),
        address: live.address.clone(),
    };
    let mut failing = false;
    let mut ticker = tokio::time::interval(HEARTBEAT);
    loop {
        ticker.tick().await;
        let routes: Vec<TunnelRoute> = state
            .tunnels
            .registry
            .all()
            .iter()
            .map(|t| state.tunnels.cluster.route_of(t))
            .collect();
        let result = match live.routes.announce_node(&me, ENTRY_TTL).await {
            Ok(()) => live.routes.refresh(&routes, ENTRY_TTL).await,
            Err(e) => Err(e),
        };
        live.redis_away.store(result.is_err(), Ordering::Relaxed);
        match result {
            Err(e) if !failing => {
                failing = true;
                crate::metrics::global().redis_error();
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
        live.recent_routes.prune(Instant::now());
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
            if node == state.tunnels.cluster.node_id {
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
            let mut event = rtunnel_core::store::AuditEvent::new(AuditKind::NodeLost);
            event.actor = Some("system".into());
            event.details = serde_json::json!({"node": node, "sessions": n, "seen_by": state.tunnels.cluster.node_id});
            state.audit.best_effort(event).await;
        }
        Err(e) => crate::state::log_store_error("recovering a lost node's sessions", &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_read_alive_within_a_second_is_not_read_again() {
        let known = KnownNodes::default();
        let t0 = Instant::now();
        let node = NodeInfo {
            node_id: "node-a".into(),
            address: "10.0.0.1:7443".into(),
        };
        assert_eq!(known.seen_alive("node-a", t0), None, "never read");
        known.remember(&node, t0);
        let fresh = t0 + NODE_SEEN_FRESH - Duration::from_millis(1);
        assert_eq!(
            known.seen_alive("node-a", fresh).as_deref(),
            Some("10.0.0.1:7443")
        );
        // Past it the announcement is read again (a dead node's is gone),
        // but the address stays known for routing while Redis is away.
        let stale = t0 + NODE_SEEN_FRESH;
        assert_eq!(known.seen_alive("node-a", stale), None);
        assert_eq!(known.address("node-a").as_deref(), Some("10.0.0.1:7443"));
        known.forget("node-a");
        assert_eq!(known.address("node-a"), None);
    }

    fn route(session_id: SessionId, node: &str) -> TunnelRoute {
        TunnelRoute {
            session_id,
            system_id: SystemId::new(),
            node_id: node.into(),
            services: Vec::new(),
            thread: None,
        }
    }

    #[test]
    fn a_route_is_used_again_for_a_second_unless_it_changed() {
        let routes = RecentRoutes::default();
        let t0 = Instant::now();
        let (one, two) = (SessionId::new(), SessionId::new());
        let ticket = routes.before_reading();
        routes.put(route(one, "node-a"), t0, ticket);
        routes.put(route(two, "node-a"), t0, ticket);
        let fresh = t0 + ROUTE_SEEN_FRESH - Duration::from_millis(1);
        assert_eq!(
            routes.get(one, fresh).map(|r| r.node_id).as_deref(),
            Some("node-a")
        );
        assert_eq!(
            routes.get(one, t0 + ROUTE_SEEN_FRESH),
            None,
            "read again after a second"
        );
        // The tunnel ended or moved (`tunnel_detached`, `tunnel_attached`).
        routes.forget(Some(two));
        assert_eq!(routes.get(two, fresh), None);
        // A route read while that message arrived may be the stale one.
        routes.put(route(two, "node-a"), t0, ticket);
        assert_eq!(routes.get(two, fresh), None, "read before the forget");
        let ticket = routes.before_reading();
        routes.put(route(two, "node-b"), t0, ticket);
        assert!(routes.get(two, fresh).is_some());
        routes.forget(None);
        assert_eq!(routes.get(two, fresh), None, "all forgotten");
        // Bounded: stale ones go every heartbeat, and a full map makes
        // room by dropping a quarter.
        let ticket = routes.before_reading();
        routes.put(route(one, "node-a"), t0, ticket);
        routes.prune(t0 + ROUTE_SEEN_FRESH);
        assert!(routes.lock().routes.is_empty());
        let later = t0 + 2 * ROUTE_SEEN_FRESH;
        for _ in 0..MAX_RECENT_ROUTES {
            routes.put(route(SessionId::new(), "node-b"), later, ticket);
        }
        assert_eq!(routes.lock().routes.len(), MAX_RECENT_ROUTES);
        let newest = SessionId::new();
        routes.put(route(newest, "node-c"), later, ticket);
        assert_eq!(routes.lock().routes.len(), MAX_RECENT_ROUTES * 3 / 4 + 1);
        assert!(routes.get(newest, later).is_some());
    }
}
