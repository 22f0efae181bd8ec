//! The audit log on SQLite: [`AuditSink`] and [`AuditReader`].

use async_trait::async_trait;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{SqlStore, backend, get, get_uuid};
use crate::store::{
    AuditEvent, AuditFilter, AuditReader, AuditSink, Millis, Page, Paged, StoreError,
};

fn event_from(row: &AnyRow) -> Result<AuditEvent, StoreError> {
    let opt_uuid = |col: &str| -> Result<Option<Uuid>, StoreError> {
        let s: Option<String> = get(row, col)?;
        Ok(s.and_then(|s| Uuid::parse_str(&s).ok()))
    };
    let details: String = get(row, "details")?;
    Ok(AuditEvent {
        id: get_uuid(row, "id")?,
        at: get(row, "at")?,
        event: get(row, "event")?,
        actor: get(row, "actor")?,
        system_id: opt_uuid("system_id")?.map(Into::into),
        session_id: opt_uuid("session_id")?.map(Into::into),
        ip_address: get(row, "ip_address")?,
        details: serde_json::from_str(&details).unwrap_or_default(),
    })
}

#[async_trait]
impl AuditSink for SqlStore {
    async fn record(&self, ev: &AuditEvent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_events (id, at, event, actor, system_id, session_id, ip_address, details) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(ev.id.to_string())
        .bind(ev.at)
        .bind(&ev.event)
        .bind(&ev.actor)
        .bind(ev.system_id.map(|u| u.to_string()))
        .bind(ev.session_id.map(|u| u.to_string()))
        .bind(&ev.ip_address)
        .bind(ev.details.to_string())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }
}

/// `?1` event, `?2` session, `?3` since, `?4` until; NULL matches all.
macro_rules! audit_where {
    () => {
        "WHERE ($1 IS NULL OR event = $1) AND ($2 IS NULL OR session_id = $2) \
         AND ($3 IS NULL OR at >= $3) AND ($4 IS NULL OR at < $4)"
    };
}
const LIST: &str = concat!(
    "SELECT * FROM audit_events ",
    audit_where!(),
    " ORDER BY at DESC, id DESC LIMIT $5 OFFSET $6"
);
const COUNT: &str = concat!("SELECT COUNT(*) FROM audit_events ", audit_where!());

#[async_trait]
impl AuditReader for SqlStore {
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        page: Page,
    ) -> Result<Paged<AuditEvent>, StoreError> {
        let session = filter.session_id.map(|s| s.to_string());
        let rows = sqlx::query(LIST)
            .bind(&filter.event)
            .bind(&session)
            .bind(filter.since)
            .bind(filter.until)
            .bind(i64::from(page.page_size))
            .bind(page.offset())
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let total: i64 = sqlx::query_scalar(COUNT)
            .bind(&filter.event)
            .bind(&session)
            .bind(filter.since)
            .bind(filter.until)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(Paged {
            items: rows.iter().map(event_from).collect::<Result<_, _>>()?,
            page: page.page,
            page_size: page.page_size,
            total: total as u64,
        })
    }

    async fn prune_audit(&self, before: Millis) -> Result<u64, StoreError> {
        self.prune_in_batches(
            "DELETE FROM audit_events WHERE id IN \
             (SELECT id FROM audit_events WHERE at < $1 LIMIT $2)",
            before,
        )
        .await
    }
}

/// Rows deleted by one statement of a prune: small enough that the writes
/// of a busy server wait only briefly.
const PRUNE_BATCH: i64 = 5_000;

impl SqlStore {
    /// Runs `sql` (binding `before` and the batch size) until it deletes
    /// less than a whole batch; answers how many rows went.
    pub(super) async fn prune_in_batches(
        &self,
        sql: &'static str,
        before: Millis,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let deleted = sqlx::query(sql)
                .bind(before)
                .bind(PRUNE_BATCH)
                .execute(&self.pool)
                .await
                .map_err(backend)?
                .rows_affected();
            total += deleted;
            if deleted < PRUNE_BATCH as u64 {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }
}

impl SqlStore {
    /// Audit events of one kind, oldest first (for tests and tools).
    pub async fn audit_events(&self, event: &str) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query("SELECT * FROM audit_events WHERE event = $1 ORDER BY at, id")
            .bind(event)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(event_from).collect()
    }
}
