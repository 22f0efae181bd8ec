//! Failure budgets in Redis, shared by every node: one key per budget
//! holding its GCRA "theoretical arrival time" (see
//! [`crate::ratelimit::Rule`]), updated atomically by a Lua script and
//! expiring when the budget has refilled.

use std::time::Duration;

use async_trait::async_trait;

use super::{RedisConnection, backend};
use crate::ratelimit::{RateLimiter, Rule};
use crate::store::{Millis, StoreError};

/// `fail`: tat = max(stored or now, now) + interval, kept until it passes.
/// KEYS[1] the budget; ARGV now, interval (ms).
const FAIL: &str = r"
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
tat = tat + interval
redis.call('SET', KEYS[1], tat, 'PX', math.max(tat - now, 1))
return tat
";

/// [`RateLimiter`] on Redis.
#[derive(Debug, Clone)]
pub struct RedisRateLimiter {
    redis: RedisConnection,
}

impl RedisRateLimiter {
    /// Budgets kept through `redis`.
    pub fn new(redis: RedisConnection) -> Self {
        RedisRateLimiter { redis }
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(
        &self,
        key: &str,
        rule: Rule,
        now: Millis,
    ) -> Result<Option<Duration>, StoreError> {
        let mut conn = self.redis.manager.clone();
        let tat: Option<i64> = redis::cmd("GET")
            .arg(self.redis.key("rl", key))
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(tat.and_then(|tat| rule.wait(tat, now)))
    }

    async fn fail(&self, key: &str, rule: Rule, now: Millis) -> Result<(), StoreError> {
        let mut conn = self.redis.manager.clone();
        let interval = rule.interval.as_millis().min(i64::MAX as u128) as i64;
        redis::cmd("EVAL")
            .arg(FAIL)
            .arg(1)
            .arg(self.redis.key("rl", key))
            .arg(now)
            .arg(interval)
            .query_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(backend)
    }

    async fn reset(&self, key: &str) -> Result<(), StoreError> {
        let mut conn = self.redis.manager.clone();
        redis::cmd("DEL")
            .arg(self.redis.key("rl", key))
            .query_async::<()>(&mut conn)
            .await
            .map_err(backend)
    }
}
