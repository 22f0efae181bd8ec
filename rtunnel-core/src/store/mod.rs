//! The durable state of rtunnel, behind traits: users, API tokens, systems,
//! grants ([`IdentityStore`]), support sessions and their manifests
//! ([`SessionStore`]) and the audit log ([`AuditSink`]).
//!
//! Implementation: [`sql::SqlStore`] (features `sqlite`, the embedded
//! default, and `postgres`): one implementation on either database.
//! [`conformance`] holds the checks every implementation must pass.

pub mod conformance;
mod kinds;
#[cfg(feature = "redis")]
pub mod redis;
pub mod routes;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crate::ids::{SessionId, SystemId, UserId};
pub use kinds::{AccessKind, AuditKind};

use crate::proto::ServiceInfo;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The current time in [`Millis`].
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Formats [`Millis`] as RFC 3339 with milliseconds, in UTC.
pub fn rfc3339(ms: Millis) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Errors of a store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A row with the same unique value exists.
    #[error("already exists: {0}")]
    Conflict(String),
    /// The row the operation needs does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The backend failed (connection, disk, corruption).
    #[error("storage backend failure: {0}")]
    Backend(String),
}

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    /// Reaches everything and administers.
    Admin,
    /// Reaches the systems it holds an active grant on.
    Operator,
    /// Reads only.
    Viewer,
}

impl Role {
    /// The role's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!(
                "unknown role {other:?}: expected admin, operator or viewer"
            )),
        }
    }
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Id.
    pub id: UserId,
    /// Unique login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// A disabled user can do nothing.
    pub disabled: bool,
    /// Creation time.
    pub created_at: Millis,
    /// Email address, if known (the launcher's default TSPlus user).
    pub email: Option<String>,
}

/// An active grant of a user on a system, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantRecord {
    /// Id.
    pub id: Uuid,
    /// Who holds it.
    pub user_id: UserId,
    /// On what.
    pub system_id: SystemId,
    /// When it was given.
    pub created_at: Millis,
    /// When it ends by itself, if it does.
    pub expires_at: Option<Millis>,
}

/// An API token as stored: the secret half only as a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRecord {
    /// The public id half of the token.
    pub id: Uuid,
    /// Owner.
    pub user_id: UserId,
    /// Hash of the secret half.
    pub secret_hash: String,
    /// Creation time.
    pub created_at: Millis,
    /// Expiry, if any.
    pub expires_at: Option<Millis>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Millis>,
}

impl ApiTokenRecord {
    /// Whether the token still works at `now`: not revoked, not expired.
    pub fn is_live(&self, now: Millis) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }

    /// `active`, `expired` or `revoked` at `now`.
    pub fn status(&self, now: Millis) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.is_live(now) {
            "active"
        } else {
            "expired"
        }
    }
}

/// An enrolled system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct System {
    /// Id.
    pub id: SystemId,
    /// Unique display name.
    pub name: String,
    /// Public key the agent authenticates with.
    pub key: String,
    /// Hash of the secret; never shown.
    #[serde(skip)]
    pub secret_hash: String,
    /// Creation time.
    pub created_at: Millis,
}

/// State of a support session (see the contract's Words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SessionStatus {
    /// Authenticated, no manifest yet.
    Pending,
    /// Tunnel up with a manifest.
    Active,
    /// Tunnel lost; waiting for the agent to come back.
    GracePeriod,
    /// Tunnel lost and not recovered. Final.
    Expired,
    /// Closed by an operator or at the end of its lifetime. Final.
    Closed,
}

impl SessionRecord {
    /// The state-machine view of this session.
    pub fn lifecycle(&self) -> crate::session::Lifecycle {
        crate::session::Lifecycle {
            status: self.status,
            expires_at: self.expires_at,
            grace_until: self.grace_until,
        }
    }
}

impl SessionStatus {
    /// The status as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Pending => "pending",
            SessionStatus::Active => "active",
            SessionStatus::GracePeriod => "grace_period",
            SessionStatus::Expired => "expired",
            SessionStatus::Closed => "closed",
        }
    }

    /// Whether no further transition is possible.
    pub fn is_final(self) -> bool {
        matches!(self, SessionStatus::Expired | SessionStatus::Closed)
    }
}

impl std::str::FromStr for SessionStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(SessionStatus::Pending),
            "active" => Ok(SessionStatus::Active),
            "grace_period" => Ok(SessionStatus::GracePeriod),
            "expired" => Ok(SessionStatus::Expired),
            "closed" => Ok(SessionStatus::Closed),
            other => Err(format!("unknown session status {other:?}")),
        }
    }
}

/// A support session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionRecord {
    /// Id.
    pub id: SessionId,
    /// The system whose agent holds the tunnel.
    pub system_id: SystemId,
    /// State.
    pub status: SessionStatus,
    /// When the agent authenticated.
    pub created_at: Millis,
    /// When the manifest arrived.
    pub activated_at: Option<Millis>,
    /// When the session reached a final state.
    pub ended_at: Option<Millis>,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// When its lifetime ends.
    pub expires_at: Millis,
    /// While in `grace_period`: when the agent's chance to come back ends.
    pub grace_until: Option<Millis>,
    /// Hash of the agent's current reconnect token; never shown.
    #[serde(skip)]
    pub reconnect_token_hash: Option<String>,
    /// The agent's address as the server saw it.
    pub agent_addr: Option<String>,
    /// The agent's software string from its hello.
    pub agent_software: Option<String>,
    /// The manifest (empty until active).
    pub services: Vec<ServiceInfo>,
    /// The server node holding (or that last held) its tunnel.
    pub node_id: Option<String>,
}

/// A page request: `page` from 1, `page_size` from 1 to [`MAX_PAGE_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Page number, from 1.
    pub page: u32,
    /// Items per page.
    pub page_size: u32,
}

/// Largest page size a list accepts.
pub const MAX_PAGE_SIZE: u32 = 500;

impl Default for Page {
    fn default() -> Self {
        Page {
            page: 1,
            page_size: 50,
        }
    }
}

impl Page {
    /// Rows to skip.
    pub fn offset(&self) -> i64 {
        i64::from(self.page.saturating_sub(1)) * i64::from(self.page_size)
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Paged<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Page number.
    pub page: u32,
    /// Page size.
    pub page_size: u32,
    /// Items across all pages.
    pub total: u64,
}

/// Order of a session list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionSort {
    /// Newest first.
    #[default]
    CreatedDesc,
    /// Oldest first.
    CreatedAsc,
}

/// Which sessions a list returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Only this status.
    pub status: Option<SessionStatus>,
    /// Only this system.
    pub system_id: Option<SystemId>,
    /// Only systems this user holds an active grant on (for non-admins).
    pub granted_to: Option<UserId>,
    /// Order.
    pub sort: SessionSort,
}

/// Users, API tokens, systems and grants.
#[async_trait]
pub trait IdentityStore: Send + Sync {
    /// Adds a user; [`StoreError::Conflict`] if the name is taken.
    async fn create_user(&self, user: &User) -> Result<(), StoreError>;
    /// Finds a user by name.
    async fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError>;
    /// Finds a user by id.
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError>;
    /// Lists users by name.
    async fn list_users(&self, page: Page) -> Result<Paged<User>, StoreError>;
    /// Disables or enables a user; false if there is no such user.
    async fn set_user_disabled(&self, id: UserId, disabled: bool) -> Result<bool, StoreError>;
    /// Deletes a user with their grants, API tokens and logins (moves the
    /// access epoch: what they opened is cut); false if there is no such
    /// user. Audit events, which name users, stay.
    async fn delete_user(&self, id: UserId) -> Result<bool, StoreError>;
    /// Gives a user another role (moves the access epoch: a role can take
    /// access away); false if there is no such user.
    async fn set_user_role(&self, id: UserId, role: Role) -> Result<bool, StoreError>;
    /// Sets (or with `None` removes) a user's password hash (PHC string);
    /// false if there is no such user.
    async fn set_password_hash(&self, id: UserId, hash: Option<&str>) -> Result<bool, StoreError>;
    /// A user's password hash, if the user has a password.
    async fn password_hash(&self, id: UserId) -> Result<Option<String>, StoreError>;
    /// Stores an API token.
    async fn create_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError>;
    /// Finds an API token by its public id.
    async fn api_token(&self, id: Uuid) -> Result<Option<ApiTokenRecord>, StoreError>;
    /// API tokens, newest first: one user's, or everyone's.
    async fn list_api_tokens(
        &self,
        user_id: Option<UserId>,
        page: Page,
    ) -> Result<Paged<ApiTokenRecord>, StoreError>;
    /// Revokes an API token at `now`; false if there is no such token or it
    /// was revoked already.
    async fn revoke_api_token(&self, id: Uuid, now: Millis) -> Result<bool, StoreError>;
    /// Adds a system; [`StoreError::Conflict`] if the name or key is taken.
    async fn create_system(&self, system: &System) -> Result<(), StoreError>;
    /// Finds a system by id.
    async fn system(&self, id: SystemId) -> Result<Option<System>, StoreError>;
    /// Finds a system by name.
    async fn system_by_name(&self, name: &str) -> Result<Option<System>, StoreError>;
    /// Renames a system ([`StoreError::Conflict`] if the name is taken);
    /// false if there is no such system.
    async fn rename_system(&self, id: SystemId, name: &str) -> Result<bool, StoreError>;
    /// Replaces a system's secret hash; false if there is no such system.
    async fn set_system_secret(&self, id: SystemId, secret_hash: &str) -> Result<bool, StoreError>;
    /// Finds a system by its public key.
    async fn system_by_key(&self, key: &str) -> Result<Option<System>, StoreError>;
    /// Deletes a system with its sessions, access logs and grants; false
    /// if there is no such system. Audit events stay.
    async fn delete_system(&self, id: SystemId) -> Result<bool, StoreError>;
    /// Which of `ids` name a system that exists (a server asks it of its
    /// live tunnels when access changes: a system deleted by another
    /// process loses its tunnel). The default asks one by one.
    async fn existing_systems(&self, ids: &[SystemId]) -> Result<Vec<SystemId>, StoreError> {
        let mut found = Vec::new();
        for id in ids {
            if self.system(*id).await?.is_some() {
                found.push(*id);
            }
        }
        Ok(found)
    }
    /// Lists systems, all or those granted to a user, by name.
    async fn list_systems(
        &self,
        granted_to: Option<UserId>,
        now: Millis,
        page: Page,
    ) -> Result<Paged<System>, StoreError>;
    /// Gives a user access to a system, until `expires_at` if given;
    /// returns false if an active grant already exists.
    async fn grant(
        &self,
        user_id: UserId,
        system_id: SystemId,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<bool, StoreError>;
    /// Takes it away; returns false if there was no active grant.
    async fn revoke(
        &self,
        user_id: UserId,
        system_id: SystemId,
        now: Millis,
    ) -> Result<bool, StoreError>;
    /// Active, unexpired grants on systems at `now`, newest first: one
    /// user's or everyone's, on one system or all.
    async fn list_grants(
        &self,
        user_id: Option<UserId>,
        system_id: Option<SystemId>,
        now: Millis,
        page: Page,
    ) -> Result<Paged<GrantRecord>, StoreError>;
    /// Whether the user holds an active, unexpired grant on the system.
    async fn has_grant(
        &self,
        user_id: UserId,
        system_id: SystemId,
        now: Millis,
    ) -> Result<bool, StoreError>;
    /// When the user's active grant on the system ends: `None` without an
    /// active, unexpired grant, `Some(None)` for one that does not expire.
    async fn grant_until(
        &self,
        user_id: UserId,
        system_id: SystemId,
        now: Millis,
    ) -> Result<Option<Option<Millis>>, StoreError>;
    /// A number that moves on with every change that can take access away
    /// (a grant revoked, a user disabled, a token or login ended, a system
    /// deleted or given a new secret), whoever made it: a server watches it
    /// to hear of changes written by the admin CLI or another node.
    async fn access_epoch(&self) -> Result<i64, StoreError>;
}

/// One login: the family of refresh tokens that started with one
/// `POST /api/v1/auth/login`. Only the newest refresh token of a family
/// (`current_jti`) is good; presenting an older one is a replay and revokes
/// the family, and with it every access token it issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// Id of the family (the `fam` claim of its tokens).
    pub id: Uuid,
    /// Who logged in.
    pub user_id: UserId,
    /// The `jti` of the one refresh token that may still be used.
    pub current_jti: Uuid,
    /// When the login happened.
    pub created_at: Millis,
    /// When its refresh token was last used.
    pub last_used_at: Millis,
    /// When its newest refresh token expires.
    pub expires_at: Millis,
    /// When it was ended (logout, replay, user disabled), if it was.
    pub revoked_at: Option<Millis>,
    /// Why it was ended.
    pub revoked_reason: Option<String>,
    /// The address the login came from.
    pub ip_address: Option<String>,
}

impl Login {
    /// Whether the family still stands at `now`.
    pub fn is_live(&self, now: Millis) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// Logins (refresh token families).
#[async_trait]
pub trait LoginStore: Send + Sync {
    /// Stores a new login.
    async fn create_login(&self, login: &Login) -> Result<(), StoreError>;
    /// Finds a login by id.
    async fn login(&self, id: Uuid) -> Result<Option<Login>, StoreError>;
    /// Replaces the current refresh token of a live login, atomically: true
    /// only if `expected_jti` was still current and the login not revoked.
    async fn rotate_login(
        &self,
        id: Uuid,
        expected_jti: Uuid,
        new_jti: Uuid,
        expires_at: Millis,
        now: Millis,
    ) -> Result<bool, StoreError>;
    /// Whether `user_id` logged in from `ip_address` at or after `since`
    /// (so failures of others elsewhere need not slow this address down).
    async fn has_login_from(
        &self,
        user_id: UserId,
        ip_address: &str,
        since: Millis,
    ) -> Result<bool, StoreError>;
    /// Ends a login; false if it was already ended or does not exist.
    async fn revoke_login(&self, id: Uuid, reason: &str, now: Millis) -> Result<bool, StoreError>;
    /// Ends every live login of a user; returns how many.
    async fn revoke_user_logins(
        &self,
        user_id: UserId,
        reason: &str,
        now: Millis,
    ) -> Result<u64, StoreError>;
}

/// Support sessions and their manifests.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Checks that the backend answers (for readiness).
    async fn ping(&self) -> Result<(), StoreError>;
    /// Adds a session (normally `pending`).
    async fn create_session(&self, session: &SessionRecord) -> Result<(), StoreError>;
    /// Stores the manifest, the agent's software string and the node now
    /// holding the tunnel, and makes an open session `active`.
    async fn activate_session(
        &self,
        id: SessionId,
        services: &[ServiceInfo],
        agent_software: &str,
        node_id: &str,
        now: Millis,
    ) -> Result<(), StoreError>;
    /// Replaces the manifest of an `active` session (the agent sent a new
    /// one); returns whether the session was active.
    async fn update_manifest(
        &self,
        id: SessionId,
        services: &[ServiceInfo],
    ) -> Result<bool, StoreError>;
    /// Stores a transition of the state machine, if the session is still in
    /// `from` (compare and set) and, when `held_by` is given, still held by
    /// that node; returns whether it was stored. A final status also
    /// records `now` as its end and `end_reason`.
    async fn apply_lifecycle(
        &self,
        id: SessionId,
        from: SessionStatus,
        held_by: Option<&str>,
        next: &crate::session::Lifecycle,
        end_reason: Option<&str>,
        now: Millis,
    ) -> Result<bool, StoreError>;
    /// Replaces the hash of a session's reconnect token.
    async fn set_reconnect_token(&self, id: SessionId, hash: &str) -> Result<(), StoreError>;
    /// After node `node_id` restarted or died: its sessions, whose tunnels
    /// died with it, go to `grace_period` until `now + grace_ms` (pending
    /// ones expire). Sessions stored before nodes were recorded count as
    /// every node's.
    async fn recover_unfinished(
        &self,
        node_id: &str,
        grace_ms: Millis,
        now: Millis,
    ) -> Result<u64, StoreError>;
    /// The nodes holding `pending` or `active` sessions.
    async fn nodes_holding_sessions(&self) -> Result<Vec<String>, StoreError>;
    /// Sessions not final whose lifetime or grace period has run out.
    async fn due_sessions(&self, now: Millis, limit: u32)
    -> Result<Vec<SessionRecord>, StoreError>;
    /// Records an access as it opens.
    async fn open_access(&self, entry: &AccessLog) -> Result<(), StoreError>;
    /// Records how an access ended.
    async fn close_access(
        &self,
        id: Uuid,
        closed_at: Millis,
        bytes_to_service: u64,
        bytes_from_service: u64,
        error: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Records several accesses as they open, in as few statements as the
    /// store can (the server batches the opens that arrive together): all
    /// of them or, on an error, none. The default writes them one by one
    /// (override it where that promise needs a transaction).
    async fn open_accesses(&self, entries: &[AccessLog]) -> Result<(), StoreError> {
        for e in entries {
            self.open_access(e).await?;
        }
        Ok(())
    }
    /// Records how several accesses ended, in as few statements as the
    /// store can (the server batches the closes of busy sessions). An id
    /// with no entry is skipped. The default closes them one by one.
    async fn close_accesses(&self, closes: &[AccessClose]) -> Result<(), StoreError> {
        for c in closes {
            self.close_access(
                c.id,
                c.closed_at,
                c.bytes_to_service,
                c.bytes_from_service,
                c.error.as_deref(),
            )
            .await?;
        }
        Ok(())
    }
    /// Retention: deletes the access-log entries closed before `before`;
    /// answers how many. Open entries stay, however old.
    async fn prune_access(&self, before: Millis) -> Result<u64, StoreError>;
    /// One page of a session's access log, newest first.
    async fn list_access(
        &self,
        session_id: SessionId,
        page: Page,
    ) -> Result<Paged<AccessLog>, StoreError>;
    /// Finds a session.
    async fn session(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError>;
    /// The address the agent of `system`'s newest session connected from,
    /// if any: asked on every tunnel authentication, so stores answer it
    /// from an index rather than by listing sessions.
    async fn last_agent_addr(&self, system: SystemId) -> Result<Option<String>, StoreError> {
        Ok(self
            .latest_session(system)
            .await?
            .and_then(|s| s.agent_addr))
    }
    /// `system`'s newest session, whatever its status: asked on every
    /// tunnel authentication and for every system a list shows, so stores
    /// answer it from an index rather than by listing sessions.
    async fn latest_session(&self, system: SystemId) -> Result<Option<SessionRecord>, StoreError> {
        let filter = SessionFilter {
            system_id: Some(system),
            ..SessionFilter::default()
        };
        let page = Page {
            page: 1,
            page_size: 1,
        };
        let newest = self.list_sessions(&filter, now_millis(), page).await?;
        Ok(newest.items.into_iter().next())
    }
    /// Lists sessions.
    async fn list_sessions(
        &self,
        filter: &SessionFilter,
        now: Millis,
        page: Page,
    ) -> Result<Paged<SessionRecord>, StoreError>;
}

/// One connection an operator opened through a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessLog {
    /// Id.
    pub id: Uuid,
    /// The session.
    pub session_id: SessionId,
    /// What kind of access.
    pub kind: AccessKind,
    /// The service reached.
    pub service: Option<String>,
    /// Who: the user's name.
    pub actor: String,
    /// From which address.
    pub ip_address: Option<String>,
    /// When it opened.
    pub opened_at: Millis,
    /// When it closed (none while open).
    pub closed_at: Option<Millis>,
    /// Bytes from the operator to the service.
    pub bytes_to_service: u64,
    /// Bytes from the service to the operator.
    pub bytes_from_service: u64,
    /// How it failed, if it did.
    pub error: Option<String>,
}

impl AccessLog {
    /// A new entry with a new id, opened now, with nothing relayed yet.
    ///
    /// ```
    /// use rtunnel_core::ids::SessionId;
    /// use rtunnel_core::store::{AccessKind, AccessLog};
    ///
    /// let session = SessionId::from(uuid::Uuid::new_v4());
    /// let entry = AccessLog::opening(session, AccessKind::Forward, Some("ssh".into()), "alice", None);
    /// assert_eq!(entry.closed_at, None);
    /// assert_eq!(entry.bytes_to_service, 0);
    /// ```
    pub fn opening(
        session_id: SessionId,
        kind: AccessKind,
        service: Option<String>,
        actor: impl Into<String>,
        ip_address: Option<String>,
    ) -> Self {
        AccessLog {
            id: Uuid::new_v4(),
            session_id,
            kind,
            service,
            actor: actor.into(),
            ip_address,
            opened_at: now_millis(),
            closed_at: None,
            bytes_to_service: 0,
            bytes_from_service: 0,
            error: None,
        }
    }
}

/// How one access ended ([`SessionStore::close_accesses`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClose {
    /// The entry's id ([`AccessLog::id`]).
    pub id: Uuid,
    /// When it closed.
    pub closed_at: Millis,
    /// Bytes from the operator to the service.
    pub bytes_to_service: u64,
    /// Bytes from the service to the operator.
    pub bytes_from_service: u64,
    /// How it failed, if it did.
    pub error: Option<String>,
}

/// One audit event (see the contract's Audit).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    /// Id.
    pub id: Uuid,
    /// When.
    pub at: Millis,
    /// What, as a stable snake_case name (`tunnel_auth_failed`, ...).
    pub event: String,
    /// Who: a user name, a system key, or `system`.
    pub actor: Option<String>,
    /// The system concerned.
    pub system_id: Option<SystemId>,
    /// The session concerned.
    pub session_id: Option<SessionId>,
    /// The address the request came from.
    pub ip_address: Option<String>,
    /// Anything else, as JSON.
    pub details: serde_json::Value,
}

impl AuditEvent {
    /// A new event happening now with empty details.
    pub fn new(kind: AuditKind) -> Self {
        AuditEvent {
            id: Uuid::new_v4(),
            at: now_millis(),
            event: kind.as_str().to_owned(),
            actor: None,
            system_id: None,
            session_id: None,
            ip_address: None,
            details: serde_json::Value::Object(Default::default()),
        }
    }
}

/// A launcher resource: a machine or application operators launch sessions
/// to, through an external gateway (Guacamole, TSPlus) or, when tied to a
/// system and service, through rtunnel's own proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    /// Id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// Address of the machine (the `direct` fallback URL, and TSPlus's
    /// default target host).
    pub ip_address: Option<String>,
    /// The launcher's metadata keys (`external_url`, `pomerium_url`,
    /// `guacamole_connection_id`, `rdp_connection_id`, `ssh_connection_id`,
    /// `tsplus_url`, `tsplus_user`, `target_host`), a JSON object.
    pub metadata: serde_json::Value,
    /// The system whose service this resource is, if any.
    pub system_id: Option<SystemId>,
    /// That service's name.
    pub service: Option<String>,
    /// Creation time.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
}

/// Launcher resources and who may launch them.
#[async_trait]
pub trait ResourceStore: Send + Sync {
    /// Adds a resource; [`StoreError::Conflict`] if the name is taken.
    async fn create_resource(&self, resource: &Resource) -> Result<(), StoreError>;
    /// Finds a resource.
    async fn resource(&self, id: Uuid) -> Result<Option<Resource>, StoreError>;
    /// Finds a resource by its unique name.
    async fn resource_by_name(&self, name: &str) -> Result<Option<Resource>, StoreError>;
    /// Lists resources by name.
    async fn list_resources(&self, page: Page) -> Result<Paged<Resource>, StoreError>;
    /// Replaces a resource's fields; false if it does not exist.
    async fn update_resource(&self, resource: &Resource) -> Result<bool, StoreError>;
    /// Deletes a resource and its grants; false if it did not exist.
    async fn delete_resource(&self, id: Uuid) -> Result<bool, StoreError>;
    /// Lets a user launch a resource, until `expires_at` if given; returns
    /// false if an active grant already exists.
    async fn grant_resource(
        &self,
        user_id: UserId,
        resource_id: Uuid,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<bool, StoreError>;
    /// Takes it away; false if there was no active grant.
    async fn revoke_resource(
        &self,
        user_id: UserId,
        resource_id: Uuid,
        now: Millis,
    ) -> Result<bool, StoreError>;
    /// Whether the user holds an active, unexpired grant on the resource.
    async fn has_resource_grant(
        &self,
        user_id: UserId,
        resource_id: Uuid,
        now: Millis,
    ) -> Result<bool, StoreError>;
}

/// Which audit events to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this kind (`session_launched`, ...).
    pub event: Option<String>,
    /// Only events of this session.
    pub session_id: Option<SessionId>,
    /// Only events at or after this time.
    pub since: Option<Millis>,
    /// Only events before this time.
    pub until: Option<Millis>,
}

/// Reading the audit log back, newest first.
#[async_trait]
pub trait AuditReader: Send + Sync {
    /// One page of the events matching `filter`, newest first.
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        page: Page,
    ) -> Result<Paged<AuditEvent>, StoreError>;

    /// Retention: deletes the events older than `before`; answers how many.
    async fn prune_audit(&self, before: Millis) -> Result<u64, StoreError>;
}

/// Where audit events go. Access opens only after `record` succeeds.
#[async_trait]
pub trait AuditSink: Send + Sync {
    /// Stores one event durably.
    async fn record(&self, event: &AuditEvent) -> Result<(), StoreError>;
}
