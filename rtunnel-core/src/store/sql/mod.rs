//! The SQL store: every store trait on one database, SQLite (the embedded
//! default: one file in the data directory) or PostgreSQL (several server
//! nodes on one database). One implementation serves both through sqlx's
//! `Any` driver: the schema uses portable types only (TEXT UUIDs, BIGINT
//! millisecond timestamps, TEXT JSON, BOOLEAN), the queries `$N`
//! placeholders, and the same migrations run on both.
//!
//! On SQLite, WAL mode and a busy timeout let the admin subcommands write
//! while a server runs on the same file.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::{AnyPoolOptions, AnyRow};
use uuid::Uuid;

use crate::ids::{SessionId, SystemId, UserId};

use super::{
    AccessClose, AccessLog, ApiTokenRecord, GrantRecord, IdentityStore, Millis, Page, Paged,
    SessionFilter, SessionRecord, SessionSort, SessionStatus, SessionStore, StoreError, System,
    User,
};
use crate::proto::ServiceInfo;

mod audit;
mod grants;
mod logins;
mod resources;

use grants::SYSTEM_GRANTS;

/// Access-log entries written by one statement (seven parameters each).
const ENTRIES_PER_STATEMENT: usize = 100;
/// Access-log closes written by one statement (five parameters each, well
/// under SQLite's and PostgreSQL's limits).
const CLOSES_PER_STATEMENT: usize = 100;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sql");

/// Which database a [`SqlStore`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// SQL implementation of every store trait, on SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    /// The access log's writes: on an SQLite file a pool of its own, of
    /// one connection, so they queue here instead of in SQLite's busy wait
    /// and find their pages in one cache (which other connections' commits
    /// still invalidate); otherwise `pool`.
    log_pool: AnyPool,
    backend: Backend,
}

impl SqlStore {
    /// Opens (creating if missing) the SQLite database file at `path` and
    /// applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Backend(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let path = path
            .to_str()
            .ok_or_else(|| StoreError::Backend(format!("not a UTF-8 path: {}", path.display())))?;
        Self::connect(&format!("sqlite://{path}?mode=rwc")).await
    }

    /// Opens the database named by `url`: `sqlite://PATH` (created if
    /// missing) or `postgres://[user[:password]@]host[:port]/database`.
    /// Pending migrations are applied.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::Backend(format!(
                "unsupported database URL {:?}: use sqlite://PATH or postgres://...",
                crate::redact::url(url)
            )));
        };
        let built = match backend {
            Backend::Sqlite => cfg!(feature = "sqlite"),
            Backend::Postgres => cfg!(feature = "postgres"),
        };
        if !built {
            return Err(StoreError::Backend(format!(
                "{} is not in this build (rtunnel-core's `{}` feature)",
                crate::redact::url(url),
                if backend == Backend::Sqlite {
                    "sqlite"
                } else {
                    "postgres"
                }
            )));
        }
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_owned(),
        };
        // A PostgreSQL that is down must turn into a quick 503, not a
        // request hanging on the pool; a busy SQLite file waits longer.
        let acquire = match backend {
            Backend::Sqlite => Duration::from_secs(10),
            Backend::Postgres => Duration::from_secs(3),
        };
        let mut options = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 8 } else { 16 })
            .acquire_timeout(acquire);
        if backend == Backend::Sqlite {
            // An SQLite connection lives in this process and cannot have
            // been cut while idle: the pool's ping before every statement
            // (a round trip to its worker thread, as long as the statement's
            // own) would only double the hand-overs of each write.
            options = options.test_before_acquire(false);
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; \
                         PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL;",
                    )
                    .await?;
                    Ok(())
                })
            });
        }
        if backend == Backend::Postgres {
            // The pool hides why it cannot connect ("pool timed out"): one
            // connection first says it (refused, unknown host, password).
            probe(&url, Duration::from_secs(10)).await?;
        }
        let pool = options.clone().connect(&url).await.map_err(self::backend)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("migration failed: {e}")))?;
        // An in-memory SQLite database is one per connection: the log
        // stays on the pool that has the tables.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let log_pool = if backend == Backend::Sqlite && !in_memory {
            options
                .max_connections(1)
                .connect(&url)
                .await
                .map_err(self::backend)?
        } else {
            pool.clone()
        };
        Ok(SqlStore {
            pool,
            log_pool,
            backend,
        })
    }

    /// Which database this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Writes a consistent copy of an SQLite database to `to` (a new file),
    /// while servers keep using it: SQLite's `VACUUM INTO`, one read
    /// transaction, so the copy is the database at one moment, compacted.
    /// PostgreSQL is backed up with its own tools (`pg_dump`): refused.
    pub async fn backup_to(&self, to: &Path) -> Result<(), StoreError> {
        if self.backend != Backend::Sqlite {
            return Err(StoreError::Backend(
                "a PostgreSQL database is backed up with pg_dump (see docs/OPERATIONS.md)".into(),
            ));
        }
        let path = to
            .to_str()
            .ok_or_else(|| StoreError::Backend(format!("not a UTF-8 path: {}", to.display())))?;
        // SQLite reads `file:` names as URIs (`file:x?mode=memory` would
        // "succeed" and write nothing).
        if path.starts_with("file:") {
            return Err(StoreError::Conflict(format!(
                "{path}: name the file by its path, not a file: URI"
            )));
        }
        // Created here, new and private, so nothing already there (a file,
        // a symlink, dangling or not) is written through; SQLite then fills
        // the empty file.
        let mut create = std::fs::OpenOptions::new();
        create.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut create, 0o600);
        create.open(to).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => StoreError::Conflict(format!(
                "{} exists: a backup is written to a new file",
                to.display()
            )),
            _ => StoreError::Backend(format!("cannot create {}: {e}", to.display())),
        })?;
        let written = sqlx::query("VACUUM INTO $1")
            .bind(path)
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::Backend(format!("cannot write {}: {e}", to.display())));
        let size = std::fs::metadata(to).map(|m| m.len()).unwrap_or(0);
        if written.is_err() || size == 0 {
            let _ = std::fs::remove_file(to);
            written?;
            return Err(StoreError::Backend(format!(
                "{} was left empty",
                to.display()
            )));
        }
        Ok(())
    }

    /// Closes the pools, waiting for connections to finish. A server
    /// flushes its access-log writer first: writes that meet a closed pool
    /// fail.
    pub async fn close(&self) {
        self.log_pool.close().await;
        self.pool.close().await;
    }

    /// Runs `change`, which may take access away, and when it changed
    /// anything moves the access epoch on, in one transaction; the rows it
    /// changed.
    async fn taking_access<'q>(
        &self,
        change: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let changed = change
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        if changed > 0 {
            sqlx::query("UPDATE access_epoch SET epoch = epoch + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(changed)
    }
}

/// `url` without its password, for messages.
/// Connects once to `url` and closes again, or says why it cannot.
async fn probe(url: &str, within: Duration) -> Result<(), StoreError> {
    use sqlx::Connection;
    let cannot = |why: String| {
        StoreError::Backend(format!(
            "cannot connect to the database at {}: {why}",
            crate::redact::url(url)
        ))
    };
    match tokio::time::timeout(within, sqlx::AnyConnection::connect(url)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(cannot(e.to_string())),
        Err(_) => Err(cannot(format!("no answer within {}s", within.as_secs()))),
    }
}

fn backend(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(db.message().to_owned())
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

fn get<'r, T>(row: &'r AnyRow, col: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(col).map_err(backend)
}

/// A UUID column, as a [`Uuid`] or one of the typed ids.
fn get_uuid<T: From<Uuid>>(row: &AnyRow, col: &str) -> Result<T, StoreError> {
    let s: String = get(row, col)?;
    Uuid::parse_str(&s)
        .map(T::from)
        .map_err(|e| StoreError::Backend(format!("bad uuid in {col}: {e}")))
}

fn parse_enum<T: FromStr<Err = String>>(row: &AnyRow, col: &str) -> Result<T, StoreError> {
    let s: String = get(row, col)?;
    s.parse().map_err(StoreError::Backend)
}

/// The columns of a user. `disabled` is read as an integer: sqlx's `Any`
/// driver does not map SQLite's BOOLEAN columns (writes bind a bool, which
/// both databases take).
macro_rules! user_columns {
    () => {
        "id, name, role, CAST(disabled AS INTEGER) AS disabled, created_at, email"
    };
}

fn user_from(row: &AnyRow) -> Result<User, StoreError> {
    Ok(User {
        id: get_uuid(row, "id")?,
        name: get(row, "name")?,
        role: parse_enum(row, "role")?,
        disabled: get::<i64>(row, "disabled")? != 0,
        created_at: get(row, "created_at")?,
        email: get(row, "email")?,
    })
}

fn system_from(row: &AnyRow) -> Result<System, StoreError> {
    Ok(System {
        id: get_uuid(row, "id")?,
        name: get(row, "name")?,
        key: get(row, "key")?,
        secret_hash: get(row, "secret_hash")?,
        created_at: get(row, "created_at")?,
    })
}

fn session_from(row: &AnyRow) -> Result<SessionRecord, StoreError> {
    let manifest: String = get(row, "manifest")?;
    let services: Vec<ServiceInfo> = serde_json::from_str(&manifest)
        .map_err(|e| StoreError::Backend(format!("bad manifest: {e}")))?;
    Ok(SessionRecord {
        id: get_uuid(row, "id")?,
        system_id: get_uuid(row, "system_id")?,
        status: parse_enum(row, "status")?,
        created_at: get(row, "created_at")?,
        activated_at: get(row, "activated_at")?,
        ended_at: get(row, "ended_at")?,
        end_reason: get(row, "end_reason")?,
        expires_at: get(row, "expires_at")?,
        grace_until: get(row, "grace_until")?,
        reconnect_token_hash: get(row, "reconnect_token_hash")?,
        agent_addr: get(row, "agent_addr")?,
        agent_software: get(row, "agent_software")?,
        services,
        node_id: get(row, "node_id")?,
    })
}

fn access_from(row: &AnyRow) -> Result<AccessLog, StoreError> {
    let to: i64 = get(row, "bytes_to_service")?;
    let from: i64 = get(row, "bytes_from_service")?;
    Ok(AccessLog {
        id: get_uuid(row, "id")?,
        session_id: get_uuid(row, "session_id")?,
        kind: parse_enum(row, "kind")?,
        service: get(row, "service")?,
        actor: get(row, "actor")?,
        ip_address: get(row, "ip_address")?,
        opened_at: get(row, "opened_at")?,
        closed_at: get(row, "closed_at")?,
        bytes_to_service: to.max(0) as u64,
        bytes_from_service: from.max(0) as u64,
        error: get(row, "error")?,
    })
}

#[async_trait]
impl IdentityStore for SqlStore {
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (id, name, role, disabled, created_at, email) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(user.id.to_string())
        .bind(&user.name)
        .bind(user.role.as_str())
        .bind(user.disabled)
        .bind(user.created_at)
        .bind(&user.email)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?
        .map(|r| user_from(&r))
        .transpose()
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?
        .map(|r| user_from(&r))
        .transpose()
    }

    async fn list_users(&self, page: Page) -> Result<Paged<User>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users ORDER BY name LIMIT $1 OFFSET $2"
        ))
        .bind(i64::from(page.page_size))
        .bind(page.offset())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(Paged {
            items: rows.iter().map(user_from).collect::<Result<_, _>>()?,
            page: page.page,
            page_size: page.page_size,
            total: total as u64,
        })
    }

    async fn set_user_disabled(&self, id: UserId, disabled: bool) -> Result<bool, StoreError> {
        let change = sqlx::query("UPDATE users SET disabled = $1 WHERE id = $2")
            .bind(disabled)
            .bind(id.to_string());
        Ok(self.taking_access(change).await? == 1)
    }

    async fn delete_user(&self, id: UserId) -> Result<bool, StoreError> {
        let change = sqlx::query("DELETE FROM users WHERE id = $1").bind(id.to_string());
        Ok(self.taking_access(change).await? == 1)
    }

    async fn set_user_role(&self, id: UserId, role: super::Role) -> Result<bool, StoreError> {
        let change = sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
            .bind(role.as_str())
            .bind(id.to_string());
        Ok(self.taking_access(change).await? == 1)
    }

    async fn set_password_hash(&self, id: UserId, hash: Option<&str>) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn password_hash(&self, id: UserId) -> Result<Option<String>, StoreError> {
        let hash: Option<Option<String>> =
            sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        Ok(hash.flatten())
    }

    async fn create_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_tokens (id, user_id, secret_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token.id.to_string())
        .bind(token.user_id.to_string())
        .bind(&token.secret_hash)
        .bind(token.created_at)
        .bind(token.expires_at)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn api_token(&self, id: Uuid) -> Result<Option<ApiTokenRecord>, StoreError> {
        let Some(row) = sqlx::query("SELECT * FROM api_tokens WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        token_from(&row).map(Some)
    }

    async fn list_api_tokens(
        &self,
        user_id: Option<UserId>,
        page: Page,
    ) -> Result<Paged<ApiTokenRecord>, StoreError> {
        let user = user_id.map(|u| u.to_string());
        let rows = sqlx::query(
            "SELECT * FROM api_tokens WHERE ($1 IS NULL OR user_id = $1) \
             ORDER BY created_at DESC, id LIMIT $2 OFFSET $3",
        )
        .bind(&user)
        .bind(i64::from(page.page_size))
        .bind(page.offset())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_tokens WHERE ($1 IS NULL OR user_id = $1)",
        )
        .bind(&user)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(Paged {
            items: rows.iter().map(token_from).collect::<Result<_, _>>()?,
            page: page.page,
            page_size: page.page_size,
            total: total as u64,
        })
    }

    async fn list_grants(
        &self,
        user_id: Option<UserId>,
        system_id: Option<SystemId>,
        now: Millis,
        page: Page,
    ) -> Result<Paged<GrantRecord>, StoreError> {
        // $1 now, $2 user (NULL: all), $3 system (NULL: all).
        macro_rules! active_grants {
            ($select:literal, $tail:literal) => {
                concat!(
                    $select,
                    " FROM grants WHERE revoked_at IS NULL \
                     AND (expires_at IS NULL OR expires_at > $1) \
                     AND ($2 IS NULL OR user_id = $2) AND ($3 IS NULL OR system_id = $3)",
                    $tail
                )
            };
        }
        let user = user_id.map(|u| u.to_string());
        let system = system_id.map(|s| s.to_string());
        let rows = sqlx::query(active_grants!(
            "SELECT id, user_id, system_id, created_at, expires_at",
            " ORDER BY created_at DESC, id LIMIT $4 OFFSET $5"
        ))
        .bind(now)
        .bind(&user)
        .bind(&system)
        .bind(i64::from(page.page_size))
        .bind(page.offset())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let total: i64 = sqlx::query_scalar(active_grants!("SELECT COUNT(*)", ""))
            .bind(now)
            .bind(&user)
            .bind(&system)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        let items = rows
            .iter()
            .map(|r| {
                Ok(GrantRecord {
                    id: get_uuid(r, "id")?,
                    user_id: get_uuid(r, "user_id")?,
                    system_id: get_uuid(r, "system_id")?,
                    created_at: get(r, "created_at")?,
                    expires_at: get(r, "expires_at")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Paged {
            items,
            page: page.page,
            page_size: page.page_size,
            total: total as u64,
        })
    }

    async fn revoke_api_token(&self, id: Uuid, now: Millis) -> Result<bool, StoreError> {
        let change = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id.to_string())
        .bind(now);
        Ok(self.taking_access(change).await? > 0)
    }

    async fn create_system(&self, system: &System) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO systems (id, name, key, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(system.id.to_string())
        .bind(&system.name)
        .bind(&system.key)
        .bind(&system.secret_hash)
        .bind(system.created_at)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn system(&self, id: SystemId) -> Result<Option<System>, StoreError> {
        sqlx::query("SELECT * FROM systems WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|r| system_from(&r))
            .transpose()
    }

    async fn system_by_name(&self, name: &str) -> Result<Option<System>, StoreError> {
        sqlx::query("SELECT * FROM systems WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|r| system_from(&r))
            .transpose()
    }

    async fn rename_system(&self, id: SystemId, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE systems SET name = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_system_secret(&self, id: SystemId, secret_hash: &str) -> Result<bool, StoreError> {
        let change = sqlx::query("UPDATE systems SET secret_hash = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(secret_hash);
        Ok(self.taking_access(change).await? > 0)
    }

    async fn system_by_key(&self, key: &str) -> Result<Option<System>, StoreError> {
        sqlx::query("SELECT * FROM systems WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|r| system_from(&r))
            .transpose()
    }

    async fn delete_system(&self, id: SystemId) -> Result<bool, StoreError> {
        // Sessions, their access logs and grants go with it (ON DELETE
        // CASCADE); resources tied to it are untied (ON DELETE SET NULL).
        let change = sqlx::query("DELETE FROM systems WHERE id = $1").bind(id.to_string());
        Ok(self.taking_access(change).await? == 1)
    }

    async fn existing_systems(&self, ids: &[SystemId]) -> Result<Vec<SystemId>, StoreError> {
        let mut found = Vec::new();
        for chunk in ids.chunks(ENTRIES_PER_STATEMENT) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!("SELECT id FROM systems WHERE id IN ({})", marks.join(", "));
            // Built from this constant text and numbered placeholders only.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(id.to_string());
            }
            for row in query.fetch_all(&self.pool).await.map_err(backend)? {
                let id: String = get(&row, "id")?;
                found.push(
                    id.parse::<Uuid>()
                        .map_err(|e| StoreError::Backend(format!("bad system id {id:?}: {e}")))?
                        .into(),
                );
            }
        }
        Ok(found)
    }

    async fn list_systems(
        &self,
        granted_to: Option<UserId>,
        now: Millis,
        page: Page,
    ) -> Result<Paged<System>, StoreError> {
        // ?1 user (NULL: everyone), ?2 now, ?3 limit, ?4 offset.
        let user = granted_to.map(|u| u.to_string());
        let rows = sqlx::query(
            "SELECT * FROM systems s WHERE ($1 IS NULL OR EXISTS (SELECT 1 FROM grants g \
             WHERE g.user_id = $1 AND g.system_id = s.id AND g.revoked_at IS NULL \
             AND (g.expires_at IS NULL OR g.expires_at > $2))) \
             ORDER BY s.name LIMIT $3 OFFSET $4",
        )
        .bind(&user)
        .bind(now)
        .bind(i64::from(page.page_size))
        .bind(page.offset())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM systems s WHERE ($1 IS NULL OR EXISTS (SELECT 1 FROM grants g \
             WHERE g.user_id = $1 AND g.system_id = s.id AND g.revoked_at IS NULL \
             AND (g.expires_at IS NULL OR g.expires_at > $2)))",
        )
        .bind(&user)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(Paged {
            items: rows.iter().map(system_from).collect::<Result<_, _>>()?,
            page: page.page,
            page_size: page.page_size,
            total: total as u64,
        })
    }

    async fn grant(
        &self,
        user_id: UserId,
        system_id: SystemId,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.grant_in(
            &SYSTEM_GRANTS,
            user_id,
            system_id.as_uuid(),
            expires_at,
            now,
        )
        .await
    }

    async fn revoke(
        &self,
        user_id: UserId,
        system_id: SystemId,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.revoke_in(&SYSTEM_GRANTS, user_id, system_id.as_uuid(), now)
            .await
    }

    async fn has_grant(
        &self,
        user_id: UserId,
        system_id: SystemId,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.has_grant_in(&SYSTEM_GRANTS, user_id, system_id.as_uuid(), now)
            .await
    }

    async fn grant_until(
        &self,
        user_id: UserId,
        system_id: SystemId,
        now: Millis,
    ) -> Result<Option<Option<Millis>>, StoreError> {
        self.grant_until_in(&SYSTEM_GRANTS, user_id, system_id.as_uuid(), now)
            .await
    }

    async fn access_epoch(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT epoch FROM access_epoch WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)
    }
}

fn token_from(row: &AnyRow) -> Result<ApiTokenRecord, StoreError> {
    Ok(ApiTokenRecord {
        id: get_uuid(row, "id")?,
        user_id: get_uuid(row, "user_id")?,
        secret_hash: get(row, "secret_hash")?,
        created_at: get(row, "created_at")?,
        expires_at: get(row, "expires_at")?,
        revoked_at: get(row, "revoked_at")?,
    })
}

#[async_trait]
impl SessionStore for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        // The access log's own connection too: when only it is stuck, the
        // access log cannot be written, and a writer that took the
        // database for reachable would retry a failed batch entry by entry.
        if self.backend == Backend::Sqlite {
            sqlx::query("SELECT 1")
                .execute(&self.log_pool)
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    async fn create_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        let manifest = serde_json::to_string(&s.services).unwrap_or_else(|_| "[]".into());
        sqlx::query(
            "INSERT INTO sessions (id, system_id, status, created_at, activated_at, ended_at, end_reason, \
             expires_at, agent_addr, agent_software, manifest, grace_until, reconnect_token_hash, node_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(s.id.to_string())
        .bind(s.system_id.to_string())
        .bind(s.status.as_str())
        .bind(s.created_at)
        .bind(s.activated_at)
        .bind(s.ended_at)
        .bind(&s.end_reason)
        .bind(s.expires_at)
        .bind(&s.agent_addr)
        .bind(&s.agent_software)
        .bind(manifest)
        .bind(s.grace_until)
        .bind(&s.reconnect_token_hash)
        .bind(&s.node_id)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn activate_session(
        &self,
        id: SessionId,
        services: &[ServiceInfo],
        agent_software: &str,
        node_id: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        let manifest = serde_json::to_string(services).unwrap_or_else(|_| "[]".into());
        let done = sqlx::query(
            "UPDATE sessions SET status = 'active', manifest = $2, activated_at = COALESCE(activated_at, $3), \
             agent_software = $4, node_id = $5, grace_until = NULL \
             WHERE id = $1 AND status IN ('pending', 'active', 'grace_period')",
        )
        .bind(id.to_string())
        .bind(manifest)
        .bind(now)
        .bind(agent_software)
        .bind(node_id)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("open session {id}")));
        }
        Ok(())
    }

    async fn update_manifest(
        &self,
        id: SessionId,
        services: &[ServiceInfo],
    ) -> Result<bool, StoreError> {
        let manifest = serde_json::to_string(services).unwrap_or_else(|_| "[]".into());
        let done =
            sqlx::query("UPDATE sessions SET manifest = $2 WHERE id = $1 AND status = 'active'")
                .bind(id.to_string())
                .bind(manifest)
                .execute(&self.pool)
                .await
                .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn apply_lifecycle(
        &self,
        id: SessionId,
        from: SessionStatus,
        held_by: Option<&str>,
        next: &crate::session::Lifecycle,
        end_reason: Option<&str>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let ended_at = next.status.is_final().then_some(now);
        let done = sqlx::query(
            "UPDATE sessions SET status = $3, expires_at = $4, grace_until = $5, \
             ended_at = COALESCE($6, ended_at), end_reason = COALESCE($7, end_reason) \
             WHERE id = $1 AND status = $2 AND ($8 IS NULL OR node_id = $8)",
        )
        .bind(id.to_string())
        .bind(from.as_str())
        .bind(next.status.as_str())
        .bind(next.expires_at)
        .bind(next.grace_until)
        .bind(ended_at)
        .bind(end_reason)
        .bind(held_by)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_reconnect_token(&self, id: SessionId, hash: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET reconnect_token_hash = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(hash)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn recover_unfinished(
        &self,
        node_id: &str,
        grace_ms: Millis,
        now: Millis,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let expired = sqlx::query(
            "UPDATE sessions SET status = 'expired', ended_at = $1, \
             end_reason = 'server restarted before the manifest arrived' \
             WHERE status = 'pending' AND (node_id = $2 OR node_id IS NULL)",
        )
        .bind(now)
        .bind(node_id)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let graced = sqlx::query(
            "UPDATE sessions SET status = 'grace_period', grace_until = $1 \
             WHERE status IN ('active', 'grace_period') AND (node_id = $2 OR node_id IS NULL)",
        )
        .bind(now.saturating_add(grace_ms))
        .bind(node_id)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(expired.rows_affected() + graced.rows_affected())
    }

    async fn nodes_holding_sessions(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT node_id FROM sessions \
             WHERE status IN ('pending', 'active') AND node_id IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(|r| get(r, "node_id")).collect()
    }

    async fn open_access(&self, e: &AccessLog) -> Result<(), StoreError> {
        self.open_accesses(std::slice::from_ref(e)).await
    }

    async fn close_access(
        &self,
        id: Uuid,
        closed_at: Millis,
        bytes_to_service: u64,
        bytes_from_service: u64,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE access_logs SET closed_at = $2, bytes_to_service = $3, bytes_from_service = $4, \
             error = $5 WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(closed_at)
        .bind(i64::try_from(bytes_to_service).unwrap_or(i64::MAX))
        .bind(i64::try_from(bytes_from_service).unwrap_or(i64::MAX))
        .bind(error)
        .execute(&self.log_pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn open_accesses(&self, entries: &[AccessLog]) -> Result<(), StoreError> {
        // All of them or none (a failed batch is written again entry by
        // entry, which must not meet half of it): one statement is that on
        // its own; more take a transaction, whose BEGIN and COMMIT are two
        // more round trips to the database.
        if entries.is_empty() {
            return Ok(());
        }
        if entries.len() <= ENTRIES_PER_STATEMENT {
            return insert_accesses(entries)
                .execute(&self.log_pool)
                .await
                .map(drop)
                .map_err(backend);
        }
        let mut tx = self.log_pool.begin().await.map_err(backend)?;
        for chunk in entries.chunks(ENTRIES_PER_STATEMENT) {
            insert_accesses(chunk)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn close_accesses(&self, closes: &[AccessClose]) -> Result<(), StoreError> {
        // One statement per chunk: `UPDATE ... FROM (VALUES ...)` (SQLite
        // 3.33 and PostgreSQL both name the columns column1..column5).
        for chunk in closes.chunks(CLOSES_PER_STATEMENT) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let n = i * 5;
                    format!(
                        "(${}, ${}, ${}, ${}, ${})",
                        n + 1,
                        n + 2,
                        n + 3,
                        n + 4,
                        n + 5
                    )
                })
                .collect();
            let sql = format!(
                "UPDATE access_logs SET closed_at = v.column2, bytes_to_service = v.column3, \
                 bytes_from_service = v.column4, error = v.column5 \
                 FROM (VALUES {}) AS v WHERE access_logs.id = v.column1",
                rows.join(", ")
            );
            // Built from this constant text and numbered placeholders only.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for c in chunk {
                query = query
                    .bind(c.id.to_string())
                    .bind(c.closed_at)
                    .bind(i64::try_from(c.bytes_to_service).unwrap_or(i64::MAX))
                    .bind(i64::try_from(c.bytes_from_service).unwrap_or(i64::MAX))
                    .bind(c.error.clone());
            }
            query.execute(&self.log_pool).await.map_err(backend)?;
        }
        Ok(())
    }

    async fn prune_access(&self, before: Millis) -> Result<u64, StoreError> {
        self.prune_in_batches(
            "DELETE FROM access_logs WHERE id IN \
             (SELECT id FROM access_logs WHERE closed_at < $1 LIMIT $2)",
            before,
        )
        .await
    }

    async fn list_access(
        &self,
        session_id: SessionId,
        page: Page,
    ) -> Result<Paged<AccessLog>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM access_logs WHERE session_id = $1 ORDER BY opened_at DESC, id LIMIT $2 OFFSET $3",
        )
        .bind(session_id.to_string())
        .bind(i64::from(page.page_size))
        .bind(page.offset())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let total: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM access_logs WHERE session_id = $1")
                .bind(session_id.to_string())
                .fetch_one(&self.pool)
                .await
                .map_err(backend)?;
        let items = rows
            .iter()
            .map(access_from)
            .collect::<Result<_, StoreError>>()?;
        Ok(Paged {
            items,
            page: page.page,
            page_size: page.page_size,
            total: total as u64,
        })
    }

    async fn due_sessions(
        &self,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM sessions WHERE status IN ('pending', 'active', 'grace_period') \
             AND (expires_at <= $1 OR (status = 'grace_period' AND grace_until <= $1)) \
             ORDER BY expires_at LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(session_from).collect()
    }

    async fn session(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        sqlx::query("SELECT * FROM sessions WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|r| session_from(&r))
            .transpose()
    }

    async fn latest_session(&self, system: SystemId) -> Result<Option<SessionRecord>, StoreError> {
        // The (system_id, created_at) index answers this; the generic list
        // query's optional filters cannot use it.
        sqlx::query("SELECT * FROM sessions WHERE system_id = $1 ORDER BY created_at DESC LIMIT 1")
            .bind(system.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|r| session_from(&r))
            .transpose()
    }

    async fn list_sessions(
        &self,
        filter: &SessionFilter,
        now: Millis,
        page: Page,
    ) -> Result<Paged<SessionRecord>, StoreError> {
        // ?1 user (NULL: no grant filter), ?2 now, ?3 status, ?4 system, ?5 limit, ?6 offset.
        let sql = match filter.sort {
            SessionSort::CreatedDesc => LIST_SESSIONS_NEWEST_FIRST,
            SessionSort::CreatedAsc => LIST_SESSIONS_OLDEST_FIRST,
        };
        let user = filter.granted_to.map(|u| u.to_string());
        let status = filter.status.map(|s| s.as_str());
        let system = filter.system_id.map(|s| s.to_string());
        let rows = sqlx::query(sql)
            .bind(&user)
            .bind(now)
            .bind(status)
            .bind(&system)
            .bind(i64::from(page.page_size))
            .bind(page.offset())
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let total: i64 = sqlx::query_scalar(COUNT_SESSIONS)
            .bind(&user)
            .bind(now)
            .bind(status)
            .bind(&system)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(Paged {
            items: rows.iter().map(session_from).collect::<Result<_, _>>()?,
            page: page.page,
            page_size: page.page_size,
            total: total as u64,
        })
    }
}

macro_rules! session_list_sql {
    ($select:literal, $tail:literal) => {
        concat!(
            $select,
            " FROM sessions s WHERE ($1 IS NULL OR EXISTS (SELECT 1 FROM grants g \
             WHERE g.user_id = $1 AND g.system_id = s.system_id AND g.revoked_at IS NULL \
             AND (g.expires_at IS NULL OR g.expires_at > $2))) \
             AND ($3 IS NULL OR s.status = $3) AND ($4 IS NULL OR s.system_id = $4)",
            $tail
        )
    };
}
const LIST_SESSIONS_NEWEST_FIRST: &str = session_list_sql!(
    "SELECT *",
    " ORDER BY s.created_at DESC, s.id LIMIT $5 OFFSET $6"
);
const LIST_SESSIONS_OLDEST_FIRST: &str = session_list_sql!(
    "SELECT *",
    " ORDER BY s.created_at ASC, s.id LIMIT $5 OFFSET $6"
);
const COUNT_SESSIONS: &str = session_list_sql!("SELECT COUNT(*)", "");

/// The statement inserting `entries` (at most [`ENTRIES_PER_STATEMENT`]).
fn insert_accesses(
    entries: &[AccessLog],
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    let rows: Vec<String> = (0..entries.len())
        .map(|i| {
            let p: Vec<String> = (1..=7).map(|k| format!("${}", i * 7 + k)).collect();
            format!("({})", p.join(", "))
        })
        .collect();
    let sql = format!(
        "INSERT INTO access_logs (id, session_id, kind, service, actor, ip_address, opened_at) \
         VALUES {}",
        rows.join(", ")
    );
    // Built from this constant text and numbered placeholders only.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for e in entries {
        query = query
            .bind(e.id.to_string())
            .bind(e.session_id.to_string())
            .bind(e.kind.as_str())
            .bind(e.service.clone())
            .bind(e.actor.clone())
            .bind(e.ip_address.clone())
            .bind(e.opened_at);
    }
    query
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::user;

    #[tokio::test]
    async fn database_file_is_created_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/rtunnel.db");
        let u = user("ann", super::super::Role::Admin);
        {
            let s = SqlStore::open(&path).await.unwrap();
            s.create_user(&u).await.unwrap();
            s.close().await;
        }
        assert!(path.exists());
        let s = SqlStore::open(&path).await.unwrap();
        assert_eq!(s.user_by_name("ann").await.unwrap(), Some(u));
    }

    #[tokio::test]
    async fn sqlite_statements_are_not_preceded_by_a_ping() {
        // Each ping is a round trip to the connection's worker thread as
        // long as an access-log insert's own (benches/access_log.rs).
        let dir = tempfile::tempdir().unwrap();
        let s = SqlStore::open(&dir.path().join("rtunnel.db"))
            .await
            .unwrap();
        assert!(!s.pool.options().get_test_before_acquire());
        assert!(!s.log_pool.options().get_test_before_acquire());
    }

    #[tokio::test]
    async fn the_retention_index_holds_closed_entries_only_and_still_serves_retention() {
        // Every connection's open inserts an access-log entry with no
        // `closed_at`: an index of every entry took one B-tree insert more
        // per open, for rows retention never looks up.
        let dir = tempfile::tempdir().unwrap();
        let s = SqlStore::open(&dir.path().join("rtunnel.db"))
            .await
            .unwrap();
        let (sql,): (String,) =
            sqlx::query_as("SELECT sql FROM sqlite_master WHERE name = 'access_logs_closed'")
                .fetch_one(&s.pool)
                .await
                .unwrap();
        assert!(sql.ends_with("WHERE closed_at IS NOT NULL"), "{sql}");
        // The planner must still see that `closed_at < $1` implies the
        // index's condition, or retention would scan the whole table.
        let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
            "EXPLAIN QUERY PLAN SELECT id FROM access_logs WHERE closed_at < $1 LIMIT $2",
        )
        .bind(1_i64)
        .bind(10_i64)
        .fetch_all(&s.pool)
        .await
        .unwrap();
        let detail: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
        assert!(
            detail
                .iter()
                .any(|d| d.contains("USING INDEX access_logs_closed")
                    || d.contains("USING COVERING INDEX access_logs_closed")),
            "{detail:?}"
        );
    }
}
