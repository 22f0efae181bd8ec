//! Grants on SQLite: one shape, two tables (`grants` on systems,
//! `resource_grants` on launcher resources), one implementation.

use uuid::Uuid;

use crate::ids::UserId;

use super::{SqlStore, backend};
use crate::store::{Millis, StoreError};

/// The statements of one grant table; `?1` user, `?2` target.
pub(super) struct GrantTable {
    /// The expiry of the active grant (a row, `NULL` for none), if any.
    until: &'static str,
    insert: &'static str,
    revoke: &'static str,
}

/// Grants of users on systems.
pub(super) const SYSTEM_GRANTS: GrantTable = GrantTable {
    until: "SELECT expires_at FROM grants WHERE user_id = $1 AND system_id = $2 AND revoked_at IS NULL \
            AND (expires_at IS NULL OR expires_at > $3) \
            ORDER BY expires_at IS NULL DESC, expires_at DESC LIMIT 1",
    insert: "INSERT INTO grants (id, user_id, system_id, created_at, expires_at) \
             VALUES ($3, $1, $2, $4, $5)",
    revoke: "UPDATE grants SET revoked_at = $3 \
             WHERE user_id = $1 AND system_id = $2 AND revoked_at IS NULL",
};

/// Grants of users on launcher resources.
pub(super) const RESOURCE_GRANTS: GrantTable = GrantTable {
    until: "SELECT expires_at FROM resource_grants WHERE user_id = $1 AND resource_id = $2 \
            AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $3) \
            ORDER BY expires_at IS NULL DESC, expires_at DESC LIMIT 1",
    insert: "INSERT INTO resource_grants (id, user_id, resource_id, created_at, expires_at) \
             VALUES ($3, $1, $2, $4, $5)",
    revoke: "UPDATE resource_grants SET revoked_at = $3 \
             WHERE user_id = $1 AND resource_id = $2 AND revoked_at IS NULL",
};

impl SqlStore {
    /// Whether `user` holds an active, unexpired grant on `target` at `now`.
    pub(super) async fn has_grant_in(
        &self,
        table: &GrantTable,
        user: UserId,
        target: Uuid,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(self
            .grant_until_in(table, user, target, now)
            .await?
            .is_some())
    }

    /// When `user`'s active grant on `target` ends: `None` without one,
    /// `Some(None)` for one that does not expire.
    pub(super) async fn grant_until_in(
        &self,
        table: &GrantTable,
        user: UserId,
        target: Uuid,
        now: Millis,
    ) -> Result<Option<Option<Millis>>, StoreError> {
        sqlx::query_scalar::<_, Option<i64>>(table.until)
            .bind(user.to_string())
            .bind(target.to_string())
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)
    }

    /// Adds a grant unless an active one exists; true if added.
    pub(super) async fn grant_in(
        &self,
        table: &GrantTable,
        user: UserId,
        target: Uuid,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        if self.has_grant_in(table, user, target, now).await? {
            return Ok(false);
        }
        sqlx::query(table.insert)
            .bind(user.to_string())
            .bind(target.to_string())
            .bind(Uuid::new_v4().to_string())
            .bind(now)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(true)
    }

    /// Revokes the active grant; true if there was one.
    pub(super) async fn revoke_in(
        &self,
        table: &GrantTable,
        user: UserId,
        target: Uuid,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let revoke = sqlx::query(table.revoke)
            .bind(user.to_string())
            .bind(target.to_string())
            .bind(now);
        Ok(self.taking_access(revoke).await? > 0)
    }
}
