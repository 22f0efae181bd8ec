//! The access log's cost per connection on the embedded SQLite store.
//!
//! Every operator connection writes an entry before its first byte and
//! closes it after the last. The server's writer groups them: under load a
//! batch of a few opens goes in one statement, and their closes in another.
//! Each iteration here is one such round: `BATCH` opens, then their closes,
//! on an SQLite file that already holds `HISTORY` entries (a server keeps
//! weeks of them).
//!
//! Time-ordered ids (UUIDv7, so the index on the id grows at its end
//! instead of at a random page) were measured here against the random ones
//! and made no difference at 100,000 entries: see docs/PERFORMANCE.md.

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use rtunnel_core::store::conformance::{pending_session, system};
use rtunnel_core::store::sql::SqlStore;
use rtunnel_core::store::{
    AccessClose, AccessKind, AccessLog, IdentityStore, SessionRecord, SessionStore, now_millis,
};
use tokio::runtime::Runtime;

/// Entries opened (then closed) per iteration.
const BATCH: usize = 4;
/// Entries in the file before measuring.
const HISTORY: usize = 20_000;

struct Rig {
    _tmp: tempfile::TempDir,
    store: SqlStore,
    session: SessionRecord,
}

async fn rig() -> Rig {
    let tmp = tempfile::tempdir().unwrap();
    let store = SqlStore::open(&tmp.path().join("rtunnel.db"))
        .await
        .unwrap();
    let system = system("bench");
    store.create_system(&system).await.unwrap();
    let session = pending_session(system.id);
    store.create_session(&session).await.unwrap();
    let rig = Rig {
        _tmp: tmp,
        store,
        session,
    };
    for _ in 0..HISTORY / 100 {
        round(&rig, 100).await;
    }
    rig
}

fn entry(session: &SessionRecord) -> AccessLog {
    AccessLog::opening(
        session.id,
        AccessKind::Forward,
        Some("ssh".into()),
        "alice",
        Some("127.0.0.1".into()),
    )
}

/// `n` connections: their opens in one batch, then their closes.
async fn round(rig: &Rig, n: usize) {
    let entries: Vec<AccessLog> = (0..n).map(|_| entry(&rig.session)).collect();
    rig.store.open_accesses(&entries).await.unwrap();
    let closes: Vec<AccessClose> = entries
        .iter()
        .map(|e| AccessClose {
            id: e.id,
            closed_at: now_millis(),
            bytes_to_service: 6,
            bytes_from_service: 7,
            error: None,
        })
        .collect();
    rig.store.close_accesses(&closes).await.unwrap();
}

fn benches(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let rig = rt.block_on(rig());
    c.bench_function("access_log/open_and_close_4", |b| {
        b.iter(|| rt.block_on(round(&rig, BATCH)))
    });
    rt.block_on(rig.store.close());
}

criterion_group!(access_log, benches);
criterion_main!(access_log);
