//! Redis implementations of the live state several server nodes share
//! (behind the `redis` feature): single-use tickets, the failure budgets
//! of logins and tunnel authentications, the routing registry (which node
//! is alive and holds which tunnel) and a pub/sub channel for commands to
//! every node.
//!
//! Redis holds only what may be lost: a ticket lives 30 seconds, a route
//! as long as its node keeps announcing it. Every key
//! is under a prefix (`rtunnel:` by default), so one Redis can serve
//! several deployments. Connections go through redis-rs's
//! `ConnectionManager`, which reconnects by itself after Redis restarts.

mod pubsub;
mod ratelimit;
mod routes;
mod tickets;

pub use pubsub::{Delivery, PUBSUB_PING_INTERVAL, RedisPubSub};
pub use ratelimit::RedisRateLimiter;
pub use routes::{NodeInfo, RedisRoutes, TunnelRoute};
pub use tickets::RedisTicketStore;

use super::StoreError;

/// The key prefix used unless told otherwise.
pub const DEFAULT_PREFIX: &str = "rtunnel:";

/// How long connecting to Redis, or one command, may take.
pub const REDIS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A connection to Redis shared by the Redis stores of one server.
#[derive(Clone)]
pub struct RedisConnection {
    client: redis::Client,
    manager: redis::aio::ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisConnection {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`, or
    /// `rediss://` for TLS) with keys under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Backend(format!("bad Redis URL: {e}")))?;
        // Fail fast while Redis is away (one quick retry, then the caller
        // hears the error and decides: 503, fail open, or route by the
        // database); the next command tries to reconnect again.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(std::time::Duration::from_millis(500));
        let manager = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(backend)?;
        Ok(RedisConnection {
            client,
            manager,
            prefix: prefix.to_owned(),
        })
    }

    /// The full key of `name` in `kind` (`rtunnel:ticket:<name>`).
    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}:{name}", self.prefix)
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.manager.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(backend)
    }
}

fn backend(e: redis::RedisError) -> StoreError {
    StoreError::Backend(format!("redis: {e}"))
}
