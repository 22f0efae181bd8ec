//! Tickets in Redis: `SET key sealed-ticket PXAT expires_at`, taken with
//! `GETDEL`, so a ticket is used once whichever node it is presented to; a
//! ticket not sealed with the cluster key is no ticket.

use async_trait::async_trait;

use super::{RedisConnection, backend};
use crate::store::{Millis, StoreError};
use crate::ticket::{Ticket, TicketStore};

/// [`TicketStore`] on Redis.
#[derive(Debug, Clone)]
pub struct RedisTicketStore {
    redis: RedisConnection,
}

impl RedisTicketStore {
    /// Tickets kept through `redis`.
    pub fn new(redis: RedisConnection) -> Self {
        RedisTicketStore { redis }
    }
}

#[async_trait]
impl TicketStore for RedisTicketStore {
    async fn put(&self, key: String, ticket: Ticket) -> Result<(), StoreError> {
        let value = serde_json::to_string(&ticket)
            .map_err(|e| StoreError::Backend(format!("ticket: {e}")))?;
        let mut conn = self.redis.manager.clone();
        let key = self.redis.key("ticket", &key);
        let value = self.redis.seal(&key, &value);
        // Redis forgets it at its expiry by itself; take checks it too.
        redis::cmd("SET")
            .arg(&key)
            .arg(value)
            .arg("PXAT")
            .arg(ticket.expires_at.max(1))
            .query_async::<()>(&mut conn)
            .await
            .map_err(backend)
    }

    async fn take(&self, key: &str, now: Millis) -> Result<Option<Ticket>, StoreError> {
        let mut conn = self.redis.manager.clone();
        let key = self.redis.key("ticket", key);
        let value: Option<String> = redis::cmd("GETDEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        let Some(value) = value else {
            return Ok(None);
        };
        let Some(value) = self.redis.open(&key, &value) else {
            return Ok(None);
        };
        let ticket: Ticket = serde_json::from_str(value)
            .map_err(|e| StoreError::Backend(format!("a stored ticket is not readable: {e}")))?;
        Ok((ticket.expires_at > now).then_some(ticket))
    }
}
