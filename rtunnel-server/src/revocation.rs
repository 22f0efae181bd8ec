//! Access, decided once and watched.
//!
//! Access is decided when something opens (a forward and each of its
//! streams, a proxied request, a terminal); this module makes the decision
//! hold for as long as it stays open, without asking the database again
//! for every connection. One [`AccessWatch`] per node says when access may
//! have changed:
//!
//! - at once for changes made through this node's API ([`AccessWatch::changed`]);
//! - through the cluster's `access_changed` command for the other nodes'
//!   (in a cluster);
//! - within [`ACCESS_POLL`] for anything else (the admin CLI, an embedder,
//!   a node that could not publish): every change that can take access
//!   away moves the database's access epoch on ([`IdentityStore::access_epoch`]),
//!   which one task per node reads ([`Access::watch_epoch`]).
//!
//! A yes is cached per holder and system until the watch moves or its own
//! end (a grant's, token's or login's expiry) comes; a no is not cached. Every
//! open connection waits on the watch ([`Access::connect_lost`]) and is cut as soon
//! as the answer is no. A store that cannot answer cuts nothing: open
//! connections keep flowing while the database is away.
//!
//! [`IdentityStore::access_epoch`]: rtunnel_core::store::IdentityStore::access_epoch

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtunnel_auth::access::{self, Action};
use rtunnel_core::ids::{SystemId, UserId};
use rtunnel_core::store::{IdentityStore, LoginStore, Millis, Role, StoreError, User, now_millis};
use rtunnel_core::token::TokenSigner;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Longest time a change written elsewhere (the admin CLI, another
/// machine) goes unnoticed: how often a node reads the access epoch.
pub const ACCESS_POLL: Duration = Duration::from_millis(500);

/// How long to wait before asking a store that failed again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Most decisions cached; the cache starts over when full.
const MAX_CACHED: usize = 16_384;

/// Says when access may have changed, and keeps the decisions taken since.
/// Clones share one watch.
#[derive(Debug, Clone)]
pub struct AccessWatch {
    epoch: watch::Sender<u64>,
    cache: Arc<Mutex<HashMap<(Holder, SystemId), Cached>>>,
}

#[derive(Debug, Clone)]
struct Cached {
    epoch: u64,
    access: Granted,
}

impl Default for AccessWatch {
    fn default() -> Self {
        AccessWatch {
            epoch: watch::channel(0).0,
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl AccessWatch {
    /// Access changed (a grant revoked, a user disabled, a secret replaced):
    /// decisions are taken again, and every open connection checks now.
    pub fn changed(&self) {
        self.lock().clear();
        self.epoch.send_modify(|e| *e = e.wrapping_add(1));
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    fn current(&self) -> u64 {
        *self.epoch.borrow()
    }

    fn cached(&self, key: &(Holder, SystemId), now: Millis) -> Option<Granted> {
        let epoch = self.current();
        let cache = self.lock();
        let hit = cache.get(key)?;
        let fresh = hit.epoch == epoch && hit.access.until.is_none_or(|until| now < until);
        fresh.then(|| hit.access.clone())
    }

    /// Keeps a yes. A no is not kept: access given (a grant, a user
    /// enabled) moves no epoch, and a no is the rare path.
    fn remember(&self, key: (Holder, SystemId), epoch: u64, access: Granted) {
        let mut cache = self.lock();
        // A change that came in while deciding makes this decision stale.
        if self.current() != epoch {
            return;
        }
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, Cached { epoch, access });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Holder, SystemId), Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Who holds an open connection: the user, and the login whose access
/// token opened it (none for an API token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Holder {
    /// The user.
    pub user_id: UserId,
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

/// A yes: the user, and until when it holds unless something changes (the
/// first of its grant's, token's and login's ends).
#[derive(Debug, Clone)]
pub(crate) struct Granted {
    /// The user, as the decision saw them.
    pub user: User,
    /// When the decision must be taken again.
    pub until: Option<Millis>,
}

/// Access control as a service: who a bearer token is (see
/// `api::auth`), what they may do, decisions kept while nothing changes,
/// and the watch that cuts open connections when something does. Clones
/// share everything.
#[derive(Clone)]
pub struct Access {
    watch: AccessWatch,
    pub(crate) identity: Arc<dyn IdentityStore>,
    pub(crate) logins: Arc<dyn LoginStore>,
    pub(crate) signer: Arc<dyn TokenSigner>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").finish_non_exhaustive()
    }
}

impl Access {
    /// Decisions from `identity` and `logins`, tokens checked with
    /// `signer`, open connections told by `watch`.
    pub fn new(
        watch: AccessWatch,
        identity: Arc<dyn IdentityStore>,
        logins: Arc<dyn LoginStore>,
        signer: Arc<dyn TokenSigner>,
    ) -> Self {
        Access {
            watch,
            identity,
            logins,
            signer,
        }
    }

    /// The watch open connections wait on.
    pub fn watch(&self) -> &AccessWatch {
        &self.watch
    }

    /// Whether `holder` may still connect to `system_id`: the user when yes,
    /// `Err` with the refusal code when not (`login_ended` when its login was
    /// logged out or revoked, `token_revoked` when its API token was revoked or
    /// expired).
    pub(crate) async fn may_connect(
        &self,
        holder: Holder,
        system_id: SystemId,
    ) -> Result<Result<User, &'static str>, StoreError> {
        Ok(self.decide(holder, system_id).await?.map(|a| a.user))
    }

    /// The decision for `holder` on `system_id`: from the cache while nothing
    /// changed, else from the stores.
    pub(crate) async fn decide(
        &self,
        holder: Holder,
        system_id: SystemId,
    ) -> Result<Result<Granted, &'static str>, StoreError> {
        let now = now_millis();
        let key = (holder, system_id);
        if let Some(access) = self.watch.cached(&key, now) {
            return Ok(Ok(access));
        }
        let epoch = self.watch.current();
        let decision = self
            .decide_now(holder, system_id, now, Action::Connect)
            .await?;
        if let Ok(access) = &decision {
            self.watch.remember(key, epoch, access.clone());
        }
        Ok(decision)
    }

    async fn decide_now(
        &self,
        holder: Holder,
        system_id: SystemId,
        now: Millis,
        action: Action,
    ) -> Result<Result<Granted, &'static str>, StoreError> {
        let mut until: Option<Millis> = None;
        let mut ends = |at: Millis| until = Some(until.map_or(at, |u| u.min(at)));
        if let Some(login) = holder.login {
            match self.logins.login(login).await? {
                Some(l) if l.is_live(now) => ends(l.expires_at),
                _ => return Ok(Err("login_ended")),
            }
        }
        if let Some(token) = holder.token {
            match self.identity.api_token(token).await? {
                Some(t) if t.user_id == holder.user_id && t.is_live(now) => {
                    if let Some(at) = t.expires_at {
                        ends(at);
                    }
                }
                _ => return Ok(Err("token_revoked")),
            }
        }
        let Some(user) = self.identity.user_by_id(holder.user_id).await? else {
            return Ok(Err("forbidden"));
        };
        // An admin's access does not hang on grants.
        let grant = if user.role == Role::Admin {
            None
        } else {
            self.identity.grant_until(user.id, system_id, now).await?
        };
        if let Some(Some(at)) = grant {
            ends(at);
        }
        let decision = access::decide(&user, action, grant.is_some());
        Ok(if decision.allowed() {
            Ok(Granted { user, until })
        } else {
            Err(decision.code())
        })
    }

    /// Resolves when `holder` loses the right to connect to `system_id`,
    /// with the refusal code. Waits on the node's [`AccessWatch`] and on the
    /// decision's own end; asks the stores only then.
    pub(crate) async fn connect_lost(&self, holder: Holder, system_id: SystemId) -> &'static str {
        self.lost(holder, system_id, Action::Connect).await
    }

    /// Like [`Self::connect_lost`], for `action` (a watcher needs only to
    /// see the system: [`Action::Read`]; decided without the cache, which
    /// holds connect decisions).
    pub(crate) async fn lost(
        &self,
        holder: Holder,
        system_id: SystemId,
        action: Action,
    ) -> &'static str {
        let mut changes = self.watch.subscribe();
        loop {
            changes.borrow_and_update();
            let decided = if action == Action::Connect {
                self.decide(holder, system_id).await
            } else {
                self.decide_now(holder, system_id, now_millis(), action)
                    .await
            };
            let wait = match decided {
                Ok(Ok(access)) => access.until.map(|until| {
                    Duration::from_millis(until.saturating_sub(now_millis()).max(0) as u64)
                }),
                Ok(Err(code)) => return code,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check access again; leaving open connections open");
                    Some(STORE_RETRY)
                }
            };
            match wait {
                Some(wait) => {
                    tokio::select! {
                        _ = changes.changed() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                None => {
                    if changes.changed().await.is_err() {
                        // The watch is gone with the server.
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }

    /// Reads the database's access epoch every [`ACCESS_POLL`] and tells this
    /// node's [`AccessWatch`] when it moved, until `shutdown`: how changes
    /// written elsewhere (the admin CLI, another node that could not publish)
    /// reach open connections.
    pub(crate) async fn watch_epoch(self, shutdown: CancellationToken) {
        let mut last: Option<i64> = None;
        let mut failing = false;
        let mut ticker = tokio::time::interval(ACCESS_POLL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            match self.identity.access_epoch().await {
                Ok(epoch) => {
                    if failing {
                        failing = false;
                        tracing::info!("reading the access epoch again");
                    }
                    if last.is_some_and(|l| l != epoch) {
                        tracing::debug!(epoch, "access changed in the database");
                        self.watch.changed();
                    }
                    last = Some(epoch);
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot read the access epoch; retrying");
                }
                Err(_) => {}
            }
        }
    }
}
