//! The store conformance suite (`rtunnel_core::store::conformance`) against
//! every implementation in this crate: each check on a fresh store.

#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used)]

mod sqlite {
    use rtunnel_core::store::sqlite::SqliteStore;

    /// An empty SQLite store in a temporary directory.
    async fn fresh() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("nested/rtunnel.db"))
            .await
            .unwrap();
        (dir, store)
    }

    rtunnel_core::store_conformance_tests!(fresh);
}
