//! Refusals that are counted, not audited one by one.
//!
//! The audit log fails closed: when it cannot be written, nothing opens. So
//! nobody may write to it at will. A request to the tunnel endpoint without
//! credentials is anonymous noise (scanners, health checks of the wrong
//! port): it is counted and logged in a summary, never audited. An attempt
//! refused because its failure budget is spent is counted per address (the
//! names it tried are the attacker's to choose, so they do not make rows of
//! their own: their number and a few of them go in the event), and one audit
//! event per address says how many there were in each
//! [`ServerConfig::refusal_report_interval`] (`tunnel_auth_failed` /
//! `login_failed` with `reason: "rate_limited"`, `attempts`, `names`,
//! `sample_names`). At most [`MAX_THROTTLED_ADDRESSES`] addresses get an event
//! of their own per interval; the rest share one `auth_throttled` event. What
//! is audited one by one is bounded by the budgets (see [`crate::ratelimit`]),
//! which are spent before the audit is written.
//!
//! [`ServerConfig::refusal_report_interval`]: crate::config::ServerConfig::refusal_report_interval

use std::collections::HashMap;
use std::sync::Mutex;

use rtunnel_core::store::{AuditEvent, AuditKind};

use crate::state::AppState;

/// Most addresses (per event) reported one by one per interval; past it,
/// throttled attempts are counted in one event for all the rest.
pub(crate) const MAX_THROTTLED_ADDRESSES: usize = 100;

/// Names kept as samples in one address's event.
const SAMPLE_NAMES: usize = 3;

/// Distinct names counted per address (past it, the count says "at least").
const MAX_COUNTED_NAMES: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Throttled {
    event: AuditKind,
    addr: String,
}

/// What one address tried in one interval.
#[derive(Debug, Default)]
struct Tried {
    attempts: u64,
    names: std::collections::HashSet<String>,
}

#[derive(Debug, Default)]
struct Pending {
    anonymous_tunnel: u64,
    throttled: HashMap<Throttled, Tried>,
    /// Throttled attempts past [`MAX_THROTTLED_ADDRESSES`].
    overflow: u64,
}

/// Refusals waiting to be reported.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    pending: Mutex<Pending>,
}

impl Refusals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Counters only: a panic elsewhere leaves nothing half-changed.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A tunnel request came without credentials.
    pub(crate) fn anonymous_tunnel(&self) {
        self.lock().anonymous_tunnel += 1;
    }

    /// An attempt for `name` from `addr` was refused by its budget;
    /// `event` is the audit event it will be reported as.
    pub(crate) fn throttled(&self, event: AuditKind, name: &str, addr: &str) {
        let key = Throttled {
            event,
            addr: addr.to_owned(),
        };
        let mut pending = self.lock();
        let room = pending.throttled.len() < MAX_THROTTLED_ADDRESSES;
        if !room && !pending.throttled.contains_key(&key) {
            pending.overflow += 1;
            return;
        }
        let tried = pending.throttled.entry(key).or_default();
        tried.attempts += 1;
        if tried.names.len() < MAX_COUNTED_NAMES {
            tried.names.insert(name.chars().take(64).collect());
        }
    }

    /// Writes what was counted since the last report: a log line for the
    /// anonymous requests, one audit event per throttled name and address.
    pub(crate) async fn report(&self, state: &AppState) {
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
                "refused more throttled attempts, from too many addresses to list"
            );
            let mut event = AuditEvent::new(AuditKind::AuthThrottled);
            event.details = serde_json::json!({
                "reason": "rate_limited",
                "attempts": pending.overflow,
                "window_secs": window,
                "note": "from more addresses than are listed one by one",
            });
            state.audit.best_effort(event).await;
        }
        for (key, tried) in pending.throttled {
            let mut samples: Vec<String> = tried.names.iter().cloned().collect();
            samples.sort();
            samples.truncate(SAMPLE_NAMES);
            let mut event = AuditEvent::new(key.event);
            // One name tried: it is the actor; several: none is.
            event.actor = (tried.names.len() == 1).then(|| samples[0].clone());
            event.ip_address = Some(key.addr);
            event.details = serde_json::json!({
                "reason": "rate_limited",
                "attempts": tried.attempts,
                "names": tried.names.len(),
                "sample_names": samples,
                "window_secs": window,
            });
            state.audit.best_effort(event).await;
        }
    }
}

/// Reports every [`ServerConfig::refusal_report_interval`] until shutdown,
/// and once more then.
///
/// [`ServerConfig::refusal_report_interval`]: crate::config::ServerConfig::refusal_report_interval
pub(crate) async fn reporter(state: std::sync::Arc<AppState>) {
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
    fn throttled_attempts_are_counted_per_address_whatever_the_names() {
        let r = Refusals::default();
        for i in 0..1_000 {
            r.throttled(AuditKind::LoginFailed, "ann", "192.0.2.1");
            // Random names from one address make no rows of their own.
            r.throttled(AuditKind::LoginFailed, &format!("guess{i}"), "192.0.2.2");
        }
        r.throttled(AuditKind::LoginFailed, "one-more", "192.0.2.2");
        r.anonymous_tunnel();
        {
            let p = r.lock();
            assert_eq!(p.throttled.len(), 2);
            let one = Throttled {
                event: AuditKind::LoginFailed,
                addr: "192.0.2.1".into(),
            };
            assert_eq!(p.throttled[&one].attempts, 1_000);
            assert_eq!(p.throttled[&one].names.len(), 1);
            let many = Throttled {
                event: AuditKind::LoginFailed,
                addr: "192.0.2.2".into(),
            };
            assert_eq!(p.throttled[&many].attempts, 1_001);
            assert_eq!(p.throttled[&many].names.len(), MAX_COUNTED_NAMES);
        }
        for i in 0..MAX_THROTTLED_ADDRESSES + 5 {
            r.throttled(AuditKind::LoginFailed, "x", &format!("198.51.100.{i}"));
        }
        let p = r.lock();
        assert_eq!(p.throttled.len(), MAX_THROTTLED_ADDRESSES);
        assert_eq!(p.overflow, 7);
        assert_eq!(p.anonymous_tunnel, 1);
    }
}
