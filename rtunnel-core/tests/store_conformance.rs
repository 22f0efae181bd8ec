//! The store conformance suite (`rtunnel_core::store::conformance`) against
//! every implementation in this crate: each check on a fresh store, on
//! SQLite and on the real PostgreSQL `scripts/test.sh` starts.

#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used)]

mod sqlite {
    use rtunnel_core::store::sql::SqlStore;

    /// An empty SQLite store in a temporary directory.
    async fn fresh() -> Option<(tempfile::TempDir, SqlStore)> {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::open(&dir.path().join("nested/rtunnel.db"))
            .await
            .unwrap();
        Some((dir, store))
    }

    rtunnel_core::store_conformance_tests!(fresh);
}

mod postgres {
    use rtunnel_core::store::sql::{Backend, SqlStore};

    /// An empty PostgreSQL store: a new database on the test server (the
    /// throwaway cluster goes away with the test run). `None` (skipped,
    /// said on stderr) without one, unless `scripts/test.sh` requires it.
    async fn fresh() -> Option<((), SqlStore)> {
        let url = match std::env::var("RTUNNEL_TEST_POSTGRES_URL") {
            Ok(url) => url,
            Err(_) if std::env::var("RTUNNEL_TEST_SERVICES").as_deref() == Ok("required") => {
                panic!("RTUNNEL_TEST_POSTGRES_URL is not set: run ./scripts/test.sh")
            }
            Err(_) => {
                eprintln!("skipped: no RTUNNEL_TEST_POSTGRES_URL (./scripts/test.sh starts one)");
                return None;
            }
        };
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::postgres::PgPool::connect(&url).await.unwrap();
        // The name is ours: a fixed prefix and hex.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let base = url.rsplit_once('/').unwrap().0;
        let store = SqlStore::connect(&format!("{base}/{name}")).await.unwrap();
        assert_eq!(store.backend(), Backend::Postgres);
        Some(((), store))
    }

    rtunnel_core::store_conformance_tests!(fresh);
}
