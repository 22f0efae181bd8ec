//! Several server nodes on one database and one Redis.
//!
//! Every node keeps its own agents' tunnels ([`Registry`]). With a Redis
//! (`--redis-url`) the nodes also share:
//! - **where tunnels are**: each node announces itself (its id and the
//!   address of its node mesh) and the route of each of its tunnels,
//!   again every [`HEARTBEAT`], each entry living [`ENTRY_TTL`];
//! - **commands** over pub/sub ([`Command`]): close a session's tunnel,
//!   access changed (check open connections again), a tunnel attached
//!   elsewhere (close the stale copy here, forget its route), a tunnel
//!   detached (forget its route);
//! - **the node mesh** ([`mesh`]): an operator on node B reaches the agent
//!   on node A through a stream on the one TLS connection between B and
//!   A's internal listener, both authenticated with the cluster key;
//! - **dead nodes**: sessions still marked active on a node that stopped
//!   announcing itself for [`ENTRY_TTL`] are put in their grace period by
//!   the nodes that remain, so their agents can resume elsewhere.
//!
//! Without Redis the node is alone: routes are the local registry and
//! commands act locally. Built without the `redis` feature, the server is
//! always alone.

#[cfg(not(feature = "redis"))]
mod alone;
mod commands;
#[cfg(feature = "redis")]
pub(crate) mod mesh;
#[cfg(feature = "redis")]
mod shared;

use std::sync::Arc;
use std::time::Duration;

use rtunnel_core::ids::{SessionId, SystemId};
use rtunnel_core::proto::{CloseCode, Refusal, ServiceInfo, StreamHeader};
use rtunnel_core::setup::PassReply;
use rtunnel_core::setup::pipeline::RefusalMap;
use rtunnel_core::store::StoreError;
use rtunnel_core::store::routes::TunnelRoute;

#[cfg(not(feature = "redis"))]
use alone::Shared;
pub(crate) use commands::Command;
#[cfg(feature = "redis")]
pub use shared::Membership;
#[cfg(feature = "redis")]
use shared::Shared;

use crate::events::{Change, Events};
use crate::registry::{LiveTunnel, Registry, TunnelStream};
use crate::revocation::AccessWatch;
use crate::state::AppState;

/// How often a node announces itself and its tunnels.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// How long an announcement lasts: a node silent this long is dead.
pub const ENTRY_TTL: Duration = Duration::from_secs(10);

/// The node's place in its cluster.
pub struct Cluster {
    node_id: String,
    registry: Arc<Registry>,
    /// This node's access watch: a change here is told to the others.
    access: AccessWatch,
    /// This node's subscribers to live changes.
    events: Events,
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

impl Cluster {
    /// A node alone.
    pub fn single(node_id: String, registry: Arc<Registry>, access: AccessWatch) -> Self {
        Cluster {
            node_id,
            registry,
            access,
            events: Events::default(),
            live: None,
        }
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
            Some(live) => live.ping().await,
            None => Ok(()),
        }
    }

    /// Where the tunnel of a session is: on this node, or on another node
    /// that announced it. While Redis is away the database says which node
    /// holds the session and the node's last announced address is used.
    pub async fn route(&self, session_id: SessionId) -> Option<Route> {
        if let Some(t) = self.registry.by_session(session_id) {
            return Some(Route::Local(t));
        }
        self.live.as_ref()?.route(session_id).await
    }

    /// The connection thread that streams to `session_id`'s tunnel are
    /// best served on (`crate::shards`): the tunnel's own, or that of the
    /// mesh connection to the node holding it. `None` off threads, or
    /// while there is no such connection.
    pub(crate) async fn home_of(&self, session_id: SessionId) -> Option<crate::shards::Home> {
        match self.route(session_id).await? {
            Route::Local(tunnel) => tunnel.home.clone(),
            Route::Remote(remote) => self
                .live
                .as_ref()?
                .mesh_home(remote.node_id(), remote.route.thread),
        }
    }

    /// Where the tunnel of a system is.
    pub async fn route_of_system(&self, system_id: SystemId) -> Option<Route> {
        if let Some(t) = self.registry.by_system(system_id) {
            return Some(Route::Local(t));
        }
        self.live.as_ref()?.route_of_system(system_id).await
    }

    /// Tells the tunnel of a session, wherever it is, to close.
    pub async fn close_tunnel(&self, session_id: SessionId, code: CloseCode, reason: &str) {
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
    pub async fn access_changed(&self) {
        self.access.changed();
        self.publish(Command::AccessChanged).await;
    }

    /// The subscribers to live changes on this node.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Tells every subscriber, on every node, that something changed.
    pub async fn announce(&self, change: Change) {
        self.events.local(change.clone());
        self.publish(Command::Changed { change }).await;
    }

    /// A tunnel became live on this node: the others learn where it is
    /// and close any copy of it they still hold.
    pub async fn attached(&self, tunnel: &LiveTunnel) {
        let Some(live) = &self.live else { return };
        live.route_changed(Some(tunnel.session_id));
        live.attached(&self.route_of(tunnel)).await;
        live.publish(Command::TunnelAttached {
            session_id: tunnel.session_id,
            system_id: tunnel.system_id,
        })
        .await;
    }

    /// A tunnel of this node ended.
    pub async fn detached(&self, tunnel: &LiveTunnel) {
        if let Some(live) = &self.live {
            live.route_changed(Some(tunnel.session_id));
            // With Redis away the route was not withdrawn and the message
            // would not get through either: the others' copies of it end
            // within a second anyway, and this tunnel's end waits on no
            // second Redis timeout.
            if live.detached(&self.route_of(tunnel)).await {
                live.publish(Command::TunnelDetached {
                    session_id: tunnel.session_id,
                })
                .await;
            }
        }
    }

    fn route_of(&self, tunnel: &LiveTunnel) -> TunnelRoute {
        TunnelRoute {
            session_id: tunnel.session_id,
            system_id: tunnel.system_id,
            node_id: self.node_id.clone(),
            services: tunnel.services().to_vec(),
            thread: tunnel
                .home
                .as_ref()
                .and_then(|home| u16::try_from(home.index()).ok()),
        }
    }

    async fn publish(&self, command: Command) {
        if let Some(live) = &self.live {
            live.publish(command).await;
        }
    }

    /// Runs the node's part of the cluster (announcements, commands, dead
    /// nodes) until the server shuts down. Nothing to do for a node alone.
    pub async fn run(state: Arc<AppState>) {
        let Some(live) = &state.tunnels.cluster.live else {
            return;
        };
        tokio::select! {
            _ = live.run(&state) => {}
            _ = state.shutdown.cancelled() => {}
        }
    }

    /// Says this node is gone (after its tunnels were told to go).
    pub async fn leave(&self) {
        if let Some(live) = &self.live {
            live.leave().await;
        }
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
    /// Where the node mesh reaches the node (read by the mesh only).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
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
    pub fn session_id(&self) -> SessionId {
        match self {
            Route::Local(t) => t.session_id,
            Route::Remote(r) => r.route.session_id,
        }
    }

    /// The session's system.
    pub fn system_id(&self) -> rtunnel_core::ids::SystemId {
        match self {
            Route::Local(t) => t.system_id,
            Route::Remote(r) => r.route.system_id,
        }
    }

    /// The manifest entry named `name`.
    pub fn service(&self, name: &str) -> Option<ServiceInfo> {
        match self {
            Route::Local(t) => t.service(name),
            Route::Remote(r) => r.route.services.iter().find(|s| s.name == name).cloned(),
        }
    }

    /// Opens a stream to the agent for `header`, here or through the node
    /// holding the tunnel, and sends the header without waiting for the
    /// answer: the payload may follow at once, and the answer is due
    /// within `timeout` (see [`Opening`]).
    pub(crate) async fn open_pipelined(
        &self,
        cluster: &Cluster,
        header: &StreamHeader,
        timeout: Duration,
    ) -> Result<Opening, Refusal> {
        match self {
            Route::Local(t) => {
                let stream = t.open_pipelined(header, timeout).await?;
                let session_id = t.session_id;
                Ok(Opening {
                    stream,
                    map: Box::new(move |e| crate::registry::agent_refusal(session_id, e)),
                    timeout,
                })
            }
            Route::Remote(r) => {
                Self::live(cluster, r, header)?
                    .open_pipelined(r, header, timeout)
                    .await
            }
        }
    }

    /// This node's part of the cluster, for a stream to `remote`.
    fn live<'a>(
        cluster: &'a Cluster,
        remote: &RemoteTunnel,
        header: &StreamHeader,
    ) -> Result<&'a Shared, Refusal> {
        // Checked here too, so a bad header costs no node round trip.
        crate::registry::admit(&remote.route.services, header)?;
        cluster.live.as_ref().ok_or_else(|| {
            Refusal::new(
                rtunnel_core::proto::RefusalCode::AgentUnavailable,
                "this node is not in a cluster",
            )
        })
    }
}

/// A stream whose header is on its way to the agent and whose answer is
/// still to come (see [`Route::open_pipelined`]).
pub(crate) struct Opening {
    /// The stream, header sent.
    pub(crate) stream: TunnelStream,
    /// What the operator is told when the answer is not `ok`.
    pub(crate) map: RefusalMap,
    /// How long the answer may take (past `pending`).
    pub(crate) timeout: Duration,
}

impl Opening {
    /// The stream, giving the answer (mapped) as its first bytes.
    pub(crate) fn pass_reply(self) -> PassReply<TunnelStream> {
        PassReply::new(self.stream, self.timeout, self.map)
    }
}

/// A valid node id: 1 to 64 of `[A-Za-z0-9._-]`.
pub(crate) fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= rtunnel_auth::node::MAX_NODE_ID_LEN
        && id.bytes().all(rtunnel_auth::node::is_node_id_byte)
}

/// This node's id: `configured`, or the one kept in `<data-dir>/node-id`
/// (created on first start), so it stays the same across restarts.
pub(crate) fn resolve_node_id(
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
#[cfg(feature = "redis")]
pub(crate) fn advertised_address(
    advertise: Option<&str>,
    bound: std::net::SocketAddr,
) -> Result<String, String> {
    match advertise {
        Some(a) if !a.is_empty() => Ok(a.to_owned()),
        _ if bound.ip().is_unspecified() => Err(format!(
            "--node-listen {bound} does not say where other nodes reach this one: set --node-advertise HOST:PORT"
        )),
        _ => Ok(bound.to_string()),
    }
}
