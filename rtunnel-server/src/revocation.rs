//! Cutting what is already open when access goes.
//!
//! Access is decided when something opens (a forward, each of its streams);
//! this module makes the decision hold for as long as it stays open. Every
//! open forward connection watches its user's right to connect to its
//! system: it checks again whenever this node changes access (a grant
//! revoked through the API: [`AccessWatch::changed`]) and at least every
//! [`ACCESS_RECHECK`] (changes made elsewhere: the admin CLI, another node),
//! and is cut as soon as the answer is no. A store that cannot answer cuts
//! nothing: open connections keep flowing while the database is away.

use std::time::Duration;

use rtunnel_auth::access::{self, Action};
use rtunnel_core::store::{StoreError, now_millis};
use tokio::sync::watch;
use uuid::Uuid;

use crate::state::AppState;

/// Longest time a change made outside this node's API goes unnoticed.
pub const ACCESS_RECHECK: Duration = Duration::from_millis(500);

/// Tells open connections that access may have changed.
#[derive(Debug)]
pub struct AccessWatch {
    epoch: watch::Sender<u64>,
}

impl Default for AccessWatch {
    fn default() -> Self {
        AccessWatch {
            epoch: watch::channel(0).0,
        }
    }
}

impl AccessWatch {
    /// Access changed (a grant revoked, a user disabled, a secret replaced):
    /// every open connection checks again now.
    pub fn changed(&self) {
        self.epoch.send_modify(|e| *e = e.wrapping_add(1));
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }
}

/// Whether `user_id` may still connect to `system_id`; `Err` with the
/// refusal code when not.
pub async fn may_connect(
    state: &AppState,
    user_id: Uuid,
    system_id: Uuid,
) -> Result<Result<(), &'static str>, StoreError> {
    let Some(user) = state.stores.identity.user_by_id(user_id).await? else {
        return Ok(Err("forbidden"));
    };
    let has_grant = state
        .stores
        .identity
        .has_grant(user.id, system_id, now_millis())
        .await?;
    let decision = access::decide(&user, Action::Connect, has_grant);
    Ok(if decision.allowed() {
        Ok(())
    } else {
        Err(decision.code())
    })
}

/// Resolves when `user_id` loses the right to connect to `system_id`,
/// with the refusal code.
pub async fn connect_lost(state: &AppState, user_id: Uuid, system_id: Uuid) -> &'static str {
    let mut changes = state.access.subscribe();
    loop {
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(ACCESS_RECHECK) => {}
        }
        match may_connect(state, user_id, system_id).await {
            Ok(Ok(())) => {}
            Ok(Err(code)) => return code,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check access again; leaving open connections open")
            }
        }
    }
}
