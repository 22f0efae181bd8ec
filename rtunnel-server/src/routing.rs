//! Tunnels and routing, as one service: the tunnels live on this node
//! ([`Registry`]), where the others are ([`Cluster`]), how a stream reaches
//! a service behind any of them ([`Streams`]), and how many tunnels may be
//! setting up at once ([`Setups`]).

use std::sync::Arc;

use crate::cluster::Cluster;
use crate::registry::Registry;
use crate::streams::Streams;
use crate::tunnel::Setups;

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
