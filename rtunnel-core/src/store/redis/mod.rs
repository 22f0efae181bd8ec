//! Redis implementations of the live state several server nodes share
//! (behind the `redis` feature): single-use tickets, the failure budgets
//! of logins and tunnel authentications, the routing registry (which node
//! is alive and holds which tunnel) and a pub/sub channel for commands to
//! every node.
//!
//! Every value and message is sealed with a key derived from the cluster
//! key and checked when read back ([`Seal`]): a value someone else wrote
//! into Redis is ignored.
//!
//! Redis holds only what may be lost: a ticket lives 30 seconds, a route
//! as long as its node keeps announcing it. Every key
//! is under a prefix (`rtunnel:` by default), so one Redis can serve
//! several deployments. Connections go through redis-rs's
//! `ConnectionManager`, which reconnects by itself after Redis restarts.

mod pubsub;
mod ratelimit;
mod routes;
mod seal;
mod tickets;

pub use pubsub::{Delivery, PUBSUB_PING_INTERVAL, RedisPubSub};
pub use ratelimit::RedisRateLimiter;
pub use routes::{NodeInfo, RedisRoutes, TunnelRoute};
pub use seal::{MAX_MESSAGE_AGE_MS, Seal};
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
    seal: Seal,
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
    /// `rediss://` for TLS) with keys under `prefix`, sealing what it writes
    /// with `seal` (the same on every node).
    pub async fn connect(url: &str, prefix: &str, seal: Seal) -> Result<Self, StoreError> {
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
            seal,
        })
    }

    /// The full key of `name` in `kind` (`rtunnel:ticket:<name>`).
    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}:{name}", self.prefix)
    }

    /// `payload` sealed for the full key `key`.
    fn seal(&self, key: &str, payload: &str) -> String {
        self.seal.seal(key, payload)
    }

    /// The payload of a value read from `key`, if it verifies; a value that
    /// does not is logged and treated as absent.
    fn open<'a>(&self, key: &str, value: &'a str) -> Option<&'a str> {
        let opened = self.seal.open(key, value);
        if opened.is_none() {
            tracing::warn!(%key, "ignoring a value in Redis that is not sealed with the cluster key");
        }
        opened
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
