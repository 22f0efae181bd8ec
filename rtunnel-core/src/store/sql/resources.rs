//! [`ResourceStore`] on SQLite: launcher resources and their grants.

use async_trait::async_trait;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::ids::{SystemId, UserId};

use super::grants::RESOURCE_GRANTS;
use super::{SqlStore, backend, get, get_uuid};
use crate::store::{Millis, Page, Paged, Resource, ResourceStore, StoreError};

fn resource_from(row: &AnyRow) -> Result<Resource, StoreError> {
    let metadata: String = get(row, "metadata")?;
    let system_id: Option<String> = get(row, "system_id")?;
    Ok(Resource {
        id: get_uuid(row, "id")?,
        name: get(row, "name")?,
        ip_address: get(row, "ip_address")?,
        metadata: serde_json::from_str(&metadata)
            .map_err(|e| StoreError::Backend(format!("bad resource metadata: {e}")))?,
        system_id: system_id
            .map(|s| Uuid::parse_str(&s).map(SystemId::from))
            .transpose()
            .map_err(|e| StoreError::Backend(format!("bad uuid in system_id: {e}")))?,
        service: get(row, "service")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

impl SqlStore {
    /// The resource whose unique column `col` (`id` or `name`) is `value`.
    async fn resource_where(&self, col: &str, value: &str) -> Result<Option<Resource>, StoreError> {
        let sql = match col {
            "id" => "SELECT * FROM resources WHERE id = $1",
            _ => "SELECT * FROM resources WHERE name = $1",
        };
        sqlx::query(sql)
            .bind(value)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .as_ref()
            .map(resource_from)
            .transpose()
    }
}

#[async_trait]
impl ResourceStore for SqlStore {
    async fn create_resource(&self, r: &Resource) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO resources (id, name, ip_address, metadata, system_id, service, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(r.id.to_string())
        .bind(&r.name)
        .bind(&r.ip_address)
        .bind(r.metadata.to_string())
        .bind(r.system_id.map(|s| s.to_string()))
        .bind(&r.service)
        .bind(r.created_at)
        .bind(r.updated_at)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn resource(&self, id: Uuid) -> Result<Option<Resource>, StoreError> {
        self.resource_where("id", &id.to_string()).await
    }

    async fn resource_by_name(&self, name: &str) -> Result<Option<Resource>, StoreError> {
        self.resource_where("name", name).await
    }

    async fn list_resources(&self, page: Page) -> Result<Paged<Resource>, StoreError> {
        let rows = sqlx::query("SELECT * FROM resources ORDER BY name LIMIT $1 OFFSET $2")
            .bind(i64::from(page.page_size))
            .bind(page.offset())
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM resources")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(Paged {
            items: rows.iter().map(resource_from).collect::<Result<_, _>>()?,
            page: page.page,
            page_size: page.page_size,
            total: total as u64,
        })
    }

    async fn update_resource(&self, r: &Resource) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE resources SET name = $2, ip_address = $3, metadata = $4, system_id = $5, \
             service = $6, updated_at = $7 WHERE id = $1",
        )
        .bind(r.id.to_string())
        .bind(&r.name)
        .bind(&r.ip_address)
        .bind(r.metadata.to_string())
        .bind(r.system_id.map(|s| s.to_string()))
        .bind(&r.service)
        .bind(r.updated_at)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_resource(&self, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM resources WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn grant_resource(
        &self,
        user_id: UserId,
        resource_id: Uuid,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.grant_in(&RESOURCE_GRANTS, user_id, resource_id, expires_at, now)
            .await
    }

    async fn revoke_resource(
        &self,
        user_id: UserId,
        resource_id: Uuid,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.revoke_in(&RESOURCE_GRANTS, user_id, resource_id, now)
            .await
    }

    async fn has_resource_grant(
        &self,
        user_id: UserId,
        resource_id: Uuid,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.has_grant_in(&RESOURCE_GRANTS, user_id, resource_id, now)
            .await
    }
}
