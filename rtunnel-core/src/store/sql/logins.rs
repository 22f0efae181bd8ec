//! Logins (refresh token families) on SQLite.

use async_trait::async_trait;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::ids::UserId;

use super::{SqlStore, backend, get, get_uuid};
use crate::store::{Login, LoginStore, Millis, StoreError};

fn login_from(row: &AnyRow) -> Result<Login, StoreError> {
    Ok(Login {
        id: get_uuid(row, "id")?,
        user_id: get_uuid(row, "user_id")?,
        current_jti: get_uuid(row, "current_jti")?,
        created_at: get(row, "created_at")?,
        last_used_at: get(row, "last_used_at")?,
        expires_at: get(row, "expires_at")?,
        revoked_at: get(row, "revoked_at")?,
        revoked_reason: get(row, "revoked_reason")?,
        ip_address: get(row, "ip_address")?,
    })
}

#[async_trait]
impl LoginStore for SqlStore {
    async fn create_login(&self, l: &Login) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO logins (id, user_id, current_jti, created_at, last_used_at, expires_at, \
             revoked_at, revoked_reason, ip_address) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(l.id.to_string())
        .bind(l.user_id.to_string())
        .bind(l.current_jti.to_string())
        .bind(l.created_at)
        .bind(l.last_used_at)
        .bind(l.expires_at)
        .bind(l.revoked_at)
        .bind(&l.revoked_reason)
        .bind(&l.ip_address)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn login(&self, id: Uuid) -> Result<Option<Login>, StoreError> {
        sqlx::query("SELECT * FROM logins WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|r| login_from(&r))
            .transpose()
    }

    async fn rotate_login(
        &self,
        id: Uuid,
        expected_jti: Uuid,
        new_jti: Uuid,
        expires_at: Millis,
        now: Millis,
    ) -> Result<bool, StoreError> {
        // One statement: of two concurrent uses of the same refresh token,
        // exactly one finds its jti still current.
        let done = sqlx::query(
            "UPDATE logins SET current_jti = $3, expires_at = $4, last_used_at = $5 \
             WHERE id = $1 AND current_jti = $2 AND revoked_at IS NULL AND expires_at > $5",
        )
        .bind(id.to_string())
        .bind(expected_jti.to_string())
        .bind(new_jti.to_string())
        .bind(expires_at)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn has_login_from(
        &self,
        user_id: UserId,
        ip_address: &str,
        since: Millis,
    ) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(1 AS BIGINT) FROM logins WHERE user_id = $1 AND ip_address = $2 AND created_at >= $3 LIMIT 1",
        )
        .bind(user_id.to_string())
        .bind(ip_address)
        .bind(since)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(found.is_some())
    }

    async fn revoke_login(&self, id: Uuid, reason: &str, now: Millis) -> Result<bool, StoreError> {
        let change = sqlx::query(
            "UPDATE logins SET revoked_at = $2, revoked_reason = $3 \
             WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(reason);
        Ok(self.taking_access(change).await? == 1)
    }

    async fn revoke_user_logins(
        &self,
        user_id: UserId,
        reason: &str,
        now: Millis,
    ) -> Result<u64, StoreError> {
        let change = sqlx::query(
            "UPDATE logins SET revoked_at = $2, revoked_reason = $3 \
             WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user_id.to_string())
        .bind(now)
        .bind(reason);
        self.taking_access(change).await
    }
}
