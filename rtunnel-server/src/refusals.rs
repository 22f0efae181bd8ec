//! Refusals that are counted, not audited one by one.
//!
//! The audit log fails closed: when it cannot be written, nothing opens. So
//! nobody may write to it at will. A request to the tunnel endpoint without
//! credentials is anonymous noise (scanners, health checks of the wrong
//! port): it is counted and logged in a summary, never audited. An attempt
//! refused because its failure budget is spent is counted per name and
//! address, and one audit event per name and address says how many there
//! were in each [`ServerConfig::refusal_report_interval`]
//! (`tunnel_auth_failed` / `login_failed` with `reason: "rate_limited"` and
//! `attempts`). What is audited one by one is bounded by the budgets
//! (see [`crate::ratelimit`]), which are spent before the audit is written.
//!
//! [`ServerConfig::refusal_report_interval`]: crate::config::ServerConfig::refusal_report_interval

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rtunnel_core::store::AuditEvent;

use crate::state::AppState;

/// Most names and addresses counted in one interval; past it, throttled
/// attempts are counted in one line for all the rest.
pub const MAX_THROTTLED_KEYS: usize = 10_000;

/// The counts since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefusalCounts {
    /// Tunnel requests without credentials.
    pub anonymous_tunnel: u64,
    /// Attempts refused because a failure budget was spent.
    pub throttled: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Throttled {
    event: &'static str,
    name: String,
    addr: String,
}

#[derive(Debug, Default)]
struct Pending {
    anonymous_tunnel: u64,
    throttled: HashMap<Throttled, u64>,
    /// Throttled attempts past [`MAX_THROTTLED_KEYS`].
    overflow: u64,
}

/// Counts of refusals, and what is waiting to be reported.
#[derive(Debug, Default)]
pub struct Refusals {
    anonymous_tunnel: AtomicU64,
    throttled: AtomicU64,
    pending: Mutex<Pending>,
}

impl Refusals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Counters only: a panic elsewhere leaves nothing half-changed.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A tunnel request came without credentials.
    pub fn anonymous_tunnel(&self) {
        self.anonymous_tunnel.fetch_add(1, Ordering::Relaxed);
        self.lock().anonymous_tunnel += 1;
    }

    /// An attempt for `name` from `addr` was refused by its budget;
    /// `event` is the audit event it will be reported as.
    pub fn throttled(&self, event: &'static str, name: &str, addr: &str) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        let key = Throttled {
            event,
            name: name.chars().take(64).collect(),
            addr: addr.to_owned(),
        };
        let mut pending = self.lock();
        let room = pending.throttled.len() < MAX_THROTTLED_KEYS;
        match pending.throttled.get_mut(&key) {
            Some(n) => *n += 1,
            None if room => {
                pending.throttled.insert(key, 1);
            }
            None => pending.overflow += 1,
        }
    }

    /// The counts since the server started.
    pub fn counts(&self) -> RefusalCounts {
        RefusalCounts {
            anonymous_tunnel: self.anonymous_tunnel.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
        }
    }

    /// Writes what was counted since the last report: a log line for the
    /// anonymous requests, one audit event per throttled name and address.
    pub async fn report(&self, state: &AppState) {
        let pending = std::mem::take(&mut *self.lock());
        let window = state.config.refusal_report_interval.as_secs();
        if pending.anonymous_tunnel > 0 {
            tracing::info!(
                requests = pending.anonymous_tunnel,
                window_secs = window,
                "refused tunnel requests without credentials"
            );
        }
        if pending.overflow > 0 {
            tracing::warn!(
                attempts = pending.overflow,
                window_secs = window,
                "refused more throttled attempts, from too many names and addresses to list"
            );
            let mut event = AuditEvent::new("auth_throttled");
            event.details = serde_json::json!({
                "reason": "rate_limited",
                "attempts": pending.overflow,
                "window_secs": window,
                "note": "from more names and addresses than are listed one by one",
            });
            state.audit_best_effort(event).await;
        }
        for (key, attempts) in pending.throttled {
            let mut event = AuditEvent::new(key.event);
            event.actor = Some(key.name);
            event.ip_address = Some(key.addr);
            event.details = serde_json::json!({
                "reason": "rate_limited",
                "attempts": attempts,
                "window_secs": window,
            });
            state.audit_best_effort(event).await;
        }
    }
}

/// Reports every [`ServerConfig::refusal_report_interval`] until shutdown,
/// and once more then.
///
/// [`ServerConfig::refusal_report_interval`]: crate::config::ServerConfig::refusal_report_interval
pub async fn reporter(state: std::sync::Arc<AppState>) {
    let mut tick = tokio::time::interval(state.config.refusal_report_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => state.refusals.report(&state).await,
            _ = state.shutdown.cancelled() => {
                state.refusals.report(&state).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_attempts_are_counted_per_name_and_address_and_bounded() {
        let r = Refusals::default();
        for _ in 0..1_000 {
            r.throttled("login_failed", "ann", "192.0.2.1");
        }
        r.throttled("login_failed", "bob", "192.0.2.1");
        r.anonymous_tunnel();
        {
            let p = r.lock();
            assert_eq!(p.throttled.len(), 2);
            let ann = Throttled {
                event: "login_failed",
                name: "ann".into(),
                addr: "192.0.2.1".into(),
            };
            assert_eq!(p.throttled[&ann], 1_000);
        }
        for i in 0..MAX_THROTTLED_KEYS + 5 {
            r.throttled("login_failed", &format!("u{i}"), "192.0.2.1");
        }
        let p = r.lock();
        assert_eq!(p.throttled.len(), MAX_THROTTLED_KEYS);
        assert_eq!(p.overflow, 7);
        drop(p);
        assert_eq!(
            r.counts(),
            RefusalCounts {
                anonymous_tunnel: 1,
                throttled: 1_001 + MAX_THROTTLED_KEYS as u64 + 5,
            }
        );
    }
}
