//! Tunnels and routing, as one service: the tunnels live on this node
//! ([`Registry`]), where the others are ([`Cluster`]), how a stream reaches
//! a service behind any of them ([`Streams`]), and how many tunnels may be
//! setting up at once ([`Setups`]).

use std::collections::HashSet;
use std::sync::Arc;

use rtunnel_core::proto::CloseCode;
use rtunnel_core::store::IdentityStore;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::registry::Registry;
use crate::streams::Streams;
use crate::tunnel::Setups;

/// The wait before checking again for deleted systems after a failed check.
const CHECK_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// The tunnels of this node and the way to everyone else's. Clones share
/// everything.
#[derive(Clone)]
pub struct Tunnels {
    /// Live tunnels of this node.
    pub registry: Arc<Registry>,
    /// This node's place among the others (alone without Redis).
    pub cluster: Arc<Cluster>,
    /// Opens streams to agents, wherever their tunnels are.
    pub(crate) streams: Streams,
    /// Tunnels being set up (handshake to active), at most
    /// `max_tunnel_setups`.
    pub(crate) setups: Setups,
}

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnels")
            .field("node", &self.cluster.node_id())
            .field("local", &self.registry.len())
            .finish_non_exhaustive()
    }
}

impl Tunnels {
    /// Ends the tunnels of this node whose system no longer exists, each
    /// time access changes (`changes`, the [`crate::AccessWatch`]), until
    /// `shutdown`. A system deleted through the API has its tunnel closed
    /// at once; one deleted by another process (`rtunnel-server system
    /// remove`, another node) is noticed here within the access poll.
    pub(crate) async fn cut_deleted_systems(
        self,
        identity: Arc<dyn IdentityStore>,
        mut changes: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) {
        // Checked again after a failed check, until one succeeds.
        let mut retry = false;
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(CHECK_RETRY), if retry => {}
                _ = shutdown.cancelled() => return,
            }
            retry = false;
            let live = self.registry.all();
            if live.is_empty() {
                continue;
            }
            let ids: Vec<_> = live.iter().map(|t| t.system_id).collect();
            let existing: HashSet<_> = match identity.existing_systems(&ids).await {
                Ok(found) => found.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check whether the systems of live tunnels still exist; trying again shortly");
                    retry = true;
                    continue;
                }
            };
            for tunnel in live.iter().filter(|t| !existing.contains(&t.system_id)) {
                tracing::info!(system_id = %tunnel.system_id, session = %tunnel.session_id, "the system was deleted: closing its tunnel");
                tunnel
                    .close(CloseCode::CredentialsRevoked, "the system was deleted")
                    .await;
            }
        }
    }

    /// The service over `registry` and `cluster`.
    pub(crate) fn new(
        registry: Arc<Registry>,
        cluster: Arc<Cluster>,
        streams: Streams,
        setups: Setups,
    ) -> Self {
        Tunnels {
            registry,
            cluster,
            streams,
            setups,
        }
    }
}
