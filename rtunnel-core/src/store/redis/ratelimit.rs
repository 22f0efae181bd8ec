//! Failure budgets in Redis, shared by every node: one key per budget
//! holding its GCRA "theoretical arrival time" (see
//! [`crate::ratelimit::Rule`]), updated atomically by a Lua script and
//! expiring when the budget has refilled.

use std::time::Duration;

use async_trait::async_trait;

use super::{RedisConnection, backend};
use crate::ratelimit::{RateLimiter, Rule};
use crate::store::{Millis, StoreError};

/// `reserve`: when the stored arrival time leaves room (tat - now <=
/// tolerance), tat = max(tat, now) + interval, kept until it passes, and 0
/// is answered; otherwise the wait in ms, nothing changed ([`Rule::reserve`]).
/// KEYS[1] the budget; ARGV now, interval, tolerance (ms).
const RESERVE: &str = r"
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local ahead = tat - now - tolerance
if ahead > 0 then return ahead end
tat = tat + interval
redis.call('SET', KEYS[1], tat, 'PX', math.max(tat - now, 1))
return 0
";

/// `refund`: tat - interval, deleted when that has passed ([`Rule::refund`]).
/// KEYS[1] the budget; ARGV now, interval (ms).
const REFUND: &str = r"
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
tat = tat - interval
if tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], tat, 'PX', tat - now)
end
return 0
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

    async fn reserve(
        &self,
        key: &str,
        rule: Rule,
        now: Millis,
    ) -> Result<Option<Duration>, StoreError> {
        let mut conn = self.redis.manager.clone();
        let (interval, tolerance) = (rule.interval_ms(), rule.tolerance_ms());
        let wait: i64 = redis::cmd("EVAL")
            .arg(RESERVE)
            .arg(1)
            .arg(self.redis.key("rl", key))
            .arg(now)
            .arg(interval)
            .arg(tolerance)
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok((wait > 0).then(|| Duration::from_millis(wait as u64)))
    }

    async fn refund(&self, key: &str, rule: Rule, now: Millis) -> Result<(), StoreError> {
        let mut conn = self.redis.manager.clone();
        redis::cmd("EVAL")
            .arg(REFUND)
            .arg(1)
            .arg(self.redis.key("rl", key))
            .arg(now)
            .arg(rule.interval_ms())
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
