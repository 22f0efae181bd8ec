//! The routing registry of a cluster: which node is alive and where it can
//! be reached, and which node holds each session's tunnel.
//!
//! Every entry lives only as long as its node keeps it alive: a node
//! re-announces itself and its tunnels every few seconds with a time to
//! live, so a node that dies disappears by itself. A tunnel's entry is
//! written under its session and its system; replacing or removing one only
//! succeeds for the node that wrote it, so a node that lost a tunnel to
//! another never erases the newer entry.

use std::time::Duration;

use crate::ids::{SessionId, SystemId};
use serde::Serialize;

use super::{RedisConnection, backend};
use crate::store::StoreError;
pub use crate::store::routes::{NodeInfo, TunnelRoute};

/// Writes `ARGV[1]` unless the key holds another node's or session's route.
/// Values are sealed (`<43-byte mac>.<json>`): the JSON starts at byte 45.
/// KEYS[1]; ARGV route, node, session, ttl (ms).
const KEEP: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  local ok, r = pcall(cjson.decode, string.sub(v, 45))
  if not ok then r = {} end
  if r.node_id ~= ARGV[2] or r.session_id ~= ARGV[3] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
return 1
";

/// Deletes the key if it holds this node's route of this session.
/// KEYS[1]; ARGV node, session.
const REMOVE: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  local ok, r = pcall(cjson.decode, string.sub(v, 45))
  if not ok then return 0 end
  if r.node_id == ARGV[1] and r.session_id == ARGV[2] then return redis.call('DEL', KEYS[1]) end
end
return 0
";

/// Routes refreshed per round trip at most.
const REFRESH_BATCH: usize = 256;

/// The routing registry on Redis.
#[derive(Debug, Clone)]
pub struct RedisRoutes {
    redis: RedisConnection,
}

impl RedisRoutes {
    /// A registry kept through `redis`.
    pub fn new(redis: RedisConnection) -> Self {
        RedisRoutes { redis }
    }

    /// Says `node` is alive for the next `ttl`.
    pub async fn announce_node(&self, node: &NodeInfo, ttl: Duration) -> Result<(), StoreError> {
        let mut conn = self.redis.manager.clone();
        let key = self.redis.key("node", &node.node_id);
        let value = self.redis.seal(&key, &to_json(node)?);
        redis::cmd("SET")
            .arg(&key)
            .arg(value)
            .arg("PX")
            .arg(millis(ttl))
            .query_async::<()>(&mut conn)
            .await
            .map_err(backend)
    }

    /// A node that is alive, if it is.
    pub async fn node(&self, node_id: &str) -> Result<Option<NodeInfo>, StoreError> {
        self.get_json(self.redis.key("node", node_id)).await
    }

    /// Says `node_id` is gone (a clean shutdown).
    pub async fn withdraw_node(&self, node_id: &str) -> Result<(), StoreError> {
        let mut conn = self.redis.manager.clone();
        redis::cmd("DEL")
            .arg(self.redis.key("node", node_id))
            .query_async::<()>(&mut conn)
            .await
            .map_err(backend)
    }

    /// Records a new tunnel, replacing whatever route its session or system
    /// had (the tunnel that held them is being replaced).
    pub async fn put(&self, route: &TunnelRoute, ttl: Duration) -> Result<(), StoreError> {
        let value = to_json(route)?;
        let mut conn = self.redis.manager.clone();
        let mut pipe = redis::pipe();
        for key in self.keys(route) {
            let sealed = self.redis.seal(&key, &value);
            pipe.cmd("SET")
                .arg(key)
                .arg(sealed)
                .arg("PX")
                .arg(millis(ttl))
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await.map_err(backend)
    }

    /// Keeps `routes` alive for another `ttl` (writing them again if Redis
    /// lost them), except where another node's route has replaced them.
    pub async fn refresh(&self, routes: &[TunnelRoute], ttl: Duration) -> Result<(), StoreError> {
        let mut conn = self.redis.manager.clone();
        for batch in routes.chunks(REFRESH_BATCH) {
            let mut pipe = redis::pipe();
            for route in batch {
                let value = to_json(route)?;
                for key in self.keys(route) {
                    let sealed = self.redis.seal(&key, &value);
                    pipe.cmd("EVAL")
                        .arg(KEEP)
                        .arg(1)
                        .arg(key)
                        .arg(sealed)
                        .arg(&route.node_id)
                        .arg(route.session_id.to_string())
                        .arg(millis(ttl))
                        .ignore();
                }
            }
            pipe.query_async::<()>(&mut conn).await.map_err(backend)?;
        }
        Ok(())
    }

    /// Removes a route, unless another node's has replaced it.
    pub async fn remove(&self, route: &TunnelRoute) -> Result<(), StoreError> {
        let mut conn = self.redis.manager.clone();
        let mut pipe = redis::pipe();
        for key in self.keys(route) {
            pipe.cmd("EVAL")
                .arg(REMOVE)
                .arg(1)
                .arg(key)
                .arg(&route.node_id)
                .arg(route.session_id.to_string())
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await.map_err(backend)
    }

    /// The route of a session's tunnel.
    pub async fn by_session(
        &self,
        session_id: SessionId,
    ) -> Result<Option<TunnelRoute>, StoreError> {
        self.get_json(self.redis.key("route:session", &session_id.to_string()))
            .await
    }

    /// The route of a system's tunnel.
    pub async fn by_system(&self, system_id: SystemId) -> Result<Option<TunnelRoute>, StoreError> {
        self.get_json(self.redis.key("route:system", &system_id.to_string()))
            .await
    }

    fn keys(&self, route: &TunnelRoute) -> [String; 2] {
        [
            self.redis
                .key("route:session", &route.session_id.to_string()),
            self.redis.key("route:system", &route.system_id.to_string()),
        ]
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: String,
    ) -> Result<Option<T>, StoreError> {
        let mut conn = self.redis.manager.clone();
        let value: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        value
            .as_deref()
            .and_then(|v| self.redis.open(&key, v))
            .map(|v| {
                serde_json::from_str(v)
                    .map_err(|e| StoreError::Backend(format!("an entry is not readable: {e}")))
            })
            .transpose()
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(format!("encoding: {e}")))
}

fn millis(d: Duration) -> u64 {
    d.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}
