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
    /// The holder's connection thread serving the tunnel (its `--threads`),
    /// if it serves tunnels on threads: a node reaching the tunnel dials
    /// its mesh connection to that thread. A hint; older nodes leave it
    /// out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<u16>,
}

/// A live node and where the others reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id.
    pub node_id: String,
    /// `host:port` of its internal node channel.
    pub address: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_names_the_holder_s_thread_and_reads_without_one() {
        let route = TunnelRoute {
            session_id: SessionId::new(),
            system_id: SystemId::new(),
            node_id: "node-a".into(),
            services: Vec::new(),
            thread: Some(3),
        };
        let json = serde_json::to_value(&route).unwrap();
        assert_eq!(json["thread"], 3);
        assert_eq!(serde_json::from_value::<TunnelRoute>(json).unwrap(), route);
        // An older node's announcement has no thread.
        let older = serde_json::json!({
            "session_id": route.session_id,
            "system_id": route.system_id,
            "node_id": "node-b",
            "services": [],
        });
        let read: TunnelRoute = serde_json::from_value(older).unwrap();
        assert_eq!(read.thread, None);
        let without = TunnelRoute {
            thread: None,
            ..route
        };
        assert!(
            serde_json::to_value(&without)
                .unwrap()
                .get("thread")
                .is_none()
        );
    }
}
