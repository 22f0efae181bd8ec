//! Counting failed attempts (logins, tunnel authentications) per key, so a
//! guesser is slowed down without a real user being locked out for long.
//!
//! Each key has a failure budget refilled continuously (the generic cell
//! rate algorithm): [`Rule::burst`] failures may come at once, after that one
//! more every [`Rule::interval`]. An attempt *reserves* one failure before
//! the password is even checked ([`RateLimiter::reserve`], atomic), so
//! parallel guesses cannot all slip past one check; a success gives it back
//! ([`RateLimiter::refund`]), so a user who types the right password is
//! never counted. The state is one timestamp per key ("theoretical arrival
//! time"), which is what a shared implementation (Redis, for several nodes)
//! stores too. Since only an allowed attempt moves it, a key is never locked
//! for longer than one interval, however hard it is hammered.
//!
//! ```
//! use std::time::Duration;
//! use rtunnel_core::ratelimit::{MemoryRateLimiter, RateLimiter, Rule};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let limiter = MemoryRateLimiter::new();
//! let rule = Rule { burst: 2, interval: Duration::from_secs(60) };
//! let now = 1_000_000;
//! assert_eq!(limiter.reserve("addr:192.0.2.1", rule, now).await.unwrap(), None);
//! assert_eq!(limiter.reserve("addr:192.0.2.1", rule, now).await.unwrap(), None);
//! // Two attempts spent the budget: the next one waits one interval.
//! let wait = limiter.reserve("addr:192.0.2.1", rule, now).await.unwrap();
//! assert_eq!(wait, Some(Duration::from_secs(60)));
//! // A success gives its reservation back.
//! limiter.refund("addr:192.0.2.1", rule, now).await.unwrap();
//! assert_eq!(limiter.reserve("addr:192.0.2.1", rule, now).await.unwrap(), None);
//! # });
//! ```

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::store::{Millis, StoreError};

/// How many failures a key may have, and how fast they are forgiven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Failures allowed back to back.
    pub burst: u32,
    /// One failure is forgiven per interval.
    pub interval: Duration,
}

impl Rule {
    /// The interval in milliseconds.
    pub fn interval_ms(self) -> i64 {
        self.interval.as_millis().min(i64::MAX as u128) as i64
    }

    /// How far ahead of now the arrival time may be while an attempt is
    /// still allowed: the burst's worth of intervals, less one.
    pub fn tolerance_ms(self) -> i64 {
        self.interval_ms()
            .saturating_mul(i64::from(self.burst.saturating_sub(1)))
    }

    /// The wait before the next attempt of a key whose arrival time is
    /// `tat`, or `None` when it may go now.
    pub fn wait(self, tat: Millis, now: Millis) -> Option<Duration> {
        let ahead = tat.saturating_sub(now).saturating_sub(self.tolerance_ms());
        (ahead > 0).then(|| Duration::from_millis(ahead as u64))
    }

    /// The arrival time after one more failure.
    pub fn after_failure(self, tat: Option<Millis>, now: Millis) -> Millis {
        tat.unwrap_or(now)
            .max(now)
            .saturating_add(self.interval_ms())
    }

    /// One reservation: the new arrival time when the budget allows one
    /// more attempt now, else how long to wait (nothing spent).
    pub fn reserve(self, tat: Option<Millis>, now: Millis) -> Result<Millis, Duration> {
        match tat.and_then(|tat| self.wait(tat, now)) {
            Some(wait) => Err(wait),
            None => Ok(self.after_failure(tat, now)),
        }
    }

    /// The arrival time after giving one reservation back; `None` when the
    /// budget is whole again.
    pub fn refund(self, tat: Option<Millis>, now: Millis) -> Option<Millis> {
        let tat = tat?.saturating_sub(self.interval_ms());
        (tat > now).then_some(tat)
    }
}

/// Where failure budgets are kept: in process for one node, shared (Redis)
/// for several.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// How long `key` must wait before its next attempt under `rule`;
    /// `None` when it may try now.
    async fn check(
        &self,
        key: &str,
        rule: Rule,
        now: Millis,
    ) -> Result<Option<Duration>, StoreError>;

    /// Atomically spends one attempt of `key`'s budget if it allows one now
    /// (`None`); otherwise answers how long to wait and spends nothing.
    async fn reserve(
        &self,
        key: &str,
        rule: Rule,
        now: Millis,
    ) -> Result<Option<Duration>, StoreError>;

    /// Gives one reserved attempt back (the attempt succeeded).
    async fn refund(&self, key: &str, rule: Rule, now: Millis) -> Result<(), StoreError>;

    /// Forgets `key` (after a success).
    async fn reset(&self, key: &str) -> Result<(), StoreError>;
}

/// Most keys a [`MemoryRateLimiter`] holds; when full, keys whose budget is
/// whole again are dropped, then the ones closest to whole.
pub const MAX_TRACKED_KEYS: usize = 100_000;

/// Failure budgets in process memory, bounded to [`MAX_TRACKED_KEYS`].
#[derive(Debug, Default)]
pub struct MemoryRateLimiter {
    keys: Mutex<HashMap<String, Millis>>,
    capacity: usize,
}

impl MemoryRateLimiter {
    /// An empty limiter holding up to [`MAX_TRACKED_KEYS`] keys.
    pub fn new() -> Self {
        Self::with_capacity(MAX_TRACKED_KEYS)
    }

    /// An empty limiter holding up to `capacity` keys.
    pub fn with_capacity(capacity: usize) -> Self {
        MemoryRateLimiter {
            keys: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Millis>> {
        // The map holds no invariant a panic could break.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn check(
        &self,
        key: &str,
        rule: Rule,
        now: Millis,
    ) -> Result<Option<Duration>, StoreError> {
        Ok(self.lock().get(key).and_then(|tat| rule.wait(*tat, now)))
    }

    async fn reserve(
        &self,
        key: &str,
        rule: Rule,
        now: Millis,
    ) -> Result<Option<Duration>, StoreError> {
        let mut keys = self.lock();
        let tat = match rule.reserve(keys.get(key).copied(), now) {
            Ok(tat) => tat,
            Err(wait) => return Ok(Some(wait)),
        };
        if !keys.contains_key(key) && keys.len() >= self.capacity {
            // A key whose arrival time has passed has its whole budget back:
            // forgetting it changes nothing.
            keys.retain(|_, tat| *tat > now);
            if keys.len() >= self.capacity
                && let Some(oldest) = keys
                    .iter()
                    .min_by_key(|(_, tat)| **tat)
                    .map(|(k, _)| k.clone())
            {
                keys.remove(&oldest);
            }
        }
        keys.insert(key.to_owned(), tat);
        Ok(None)
    }

    async fn refund(&self, key: &str, rule: Rule, now: Millis) -> Result<(), StoreError> {
        let mut keys = self.lock();
        match rule.refund(keys.get(key).copied(), now) {
            Some(tat) => keys.insert(key.to_owned(), tat),
            None => keys.remove(key),
        };
        Ok(())
    }

    async fn reset(&self, key: &str) -> Result<(), StoreError> {
        self.lock().remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: Rule = Rule {
        burst: 3,
        interval: Duration::from_secs(10),
    };

    #[tokio::test]
    async fn the_memory_limiter_meets_the_rate_limit_checks() {
        let l = MemoryRateLimiter::new();
        crate::store::conformance::rate_limits_allow_a_burst_then_one_failure_per_interval(&l)
            .await;
    }

    #[tokio::test]
    async fn the_key_table_stays_bounded() {
        let l = MemoryRateLimiter::with_capacity(100);
        for i in 0..1_000 {
            l.reserve(&format!("user:{i}"), RULE, 1_000 + i)
                .await
                .unwrap();
        }
        assert_eq!(l.len(), 100);
        // The newest keys are the ones kept.
        assert!(l.check("user:999", RULE, 1_999).await.unwrap().is_none());
        l.reserve("user:999", RULE, 1_999).await.unwrap();
        l.reserve("user:999", RULE, 1_999).await.unwrap();
        assert!(l.check("user:999", RULE, 1_999).await.unwrap().is_some());
    }
}
