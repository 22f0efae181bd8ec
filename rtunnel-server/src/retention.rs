//! `--audit-retention`: how long the audit log and the access log are kept.
//!
//! Once at start and then daily, audit events older than the retention
//! and access-log entries closed before it are deleted (in batches, so a
//! busy server's writes wait only briefly). Open access-log entries stay,
//! however old. Every node of a cluster prunes; the deletes are idempotent.

use std::sync::Arc;
use std::time::Duration;

use rtunnel_core::store::{StoreError, now_millis};

use crate::state::AppState;

/// The default retention: a year.
pub(crate) const DEFAULT_RETENTION: Duration = Duration::from_secs(365 * 24 * 3600);

/// How often the logs are pruned.
pub(crate) const PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// What one prune deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pruned {
    /// Audit events.
    pub audit_events: u64,
    /// Closed access-log entries.
    pub access_logs: u64,
}

/// Deletes what is older than `retention`.
pub(crate) async fn prune(state: &AppState, retention: Duration) -> Result<Pruned, StoreError> {
    let age = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let before = now_millis().saturating_sub(age);
    Ok(Pruned {
        audit_events: state.stores.audit_reader.prune_audit(before).await?,
        access_logs: state.stores.sessions.prune_access(before).await?,
    })
}

/// Prunes at start and every [`PRUNE_EVERY`] until shutdown; nothing when
/// the retention is off.
pub(crate) async fn pruner(state: Arc<AppState>) {
    let Some(retention) = state.config.audit_retention else {
        return;
    };
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.shutdown.cancelled() => return,
        }
        match prune(&state, retention).await {
            Ok(p) if p == Pruned::default() => {}
            Ok(p) => tracing::info!(
                audit_events = p.audit_events,
                access_logs = p.access_logs,
                retention = %humantime::format_duration(retention),
                "pruned the audit and access logs"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot prune the audit and access logs; trying again tomorrow")
            }
        }
    }
}
