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
use rtunnel_core::store::{StoreError, User, now_millis};
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

/// Who holds an open connection: the user, and the login whose access
/// token opened it (none for an API token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Holder {
    /// The user.
    pub user_id: Uuid,
    /// The login (refresh family), if opened with an access token.
    pub login: Option<Uuid>,
    /// The API token, if opened with one.
    pub token: Option<Uuid>,
}

impl From<&crate::api::auth::Authenticated> for Holder {
    fn from(a: &crate::api::auth::Authenticated) -> Self {
        Holder {
            user_id: a.user.id,
            login: a.login(),
            token: a.token(),
        }
    }
}

/// Whether `holder` may still connect to `system_id`: the user when yes,
/// `Err` with the refusal code when not (`login_ended` when its login was
/// logged out or revoked, `token_revoked` when its API token was revoked or
/// expired).
pub async fn may_connect(
    state: &AppState,
    holder: Holder,
    system_id: Uuid,
) -> Result<Result<User, &'static str>, StoreError> {
    let now = now_millis();
    if let Some(login) = holder.login {
        let live = state
            .stores
            .logins
            .login(login)
            .await?
            .is_some_and(|l| l.is_live(now));
        if !live {
            return Ok(Err("login_ended"));
        }
    }
    if let Some(token) = holder.token {
        let live = state
            .stores
            .identity
            .api_token(token)
            .await?
            .is_some_and(|t| t.user_id == holder.user_id && t.is_live(now));
        if !live {
            return Ok(Err("token_revoked"));
        }
    }
    let Some(user) = state.stores.identity.user_by_id(holder.user_id).await? else {
        return Ok(Err("forbidden"));
    };
    let has_grant = state
        .stores
        .identity
        .has_grant(user.id, system_id, now)
        .await?;
    let decision = access::decide(&user, Action::Connect, has_grant);
    Ok(if decision.allowed() {
        Ok(user)
    } else {
        Err(decision.code())
    })
}

/// Resolves when `holder` loses the right to connect to `system_id`,
/// with the refusal code.
pub async fn connect_lost(state: &AppState, holder: Holder, system_id: Uuid) -> &'static str {
    let mut changes = state.access.subscribe();
    loop {
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(ACCESS_RECHECK) => {}
        }
        match may_connect(state, holder, system_id).await {
            Ok(Ok(_)) => {}
            Ok(Err(code)) => return code,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check access again; leaving open connections open")
            }
        }
    }
}
