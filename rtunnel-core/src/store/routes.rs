//! What the nodes of a cluster tell each other about tunnels: which node
//! holds each session's tunnel and where a node is reached. Plain data, so
//! code that routes streams builds without a Redis client; the Redis
//! registry that keeps them is [`redis::RedisRoutes`](super::redis) (feature
//! `redis`).

use crate::ids::{SessionId, SystemId};
use serde::{Deserialize, Serialize};

use crate::proto::ServiceInfo;

/// Where a session's tunnel lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelRoute {
    /// The support session.
    pub session_id: SessionId,
    /// Its system.
    pub system_id: SystemId,
    /// The node holding the tunnel.
    pub node_id: String,
    /// The agent's manifest.
    pub services: Vec<ServiceInfo>,
}

/// A live node and where the others reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id.
    pub node_id: String,
    /// `host:port` of its internal node channel.
    pub address: String,
}
