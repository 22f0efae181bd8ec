//! `--audit-retention` against the real server: what is older than the
//! retention goes when the server starts (and daily), the rest stays.

#![allow(clippy::unwrap_used)]

mod support;

use rtunnel_core::store::sql::SqlStore;
use rtunnel_core::store::{AuditEvent, AuditSink, now_millis};
use support::*;

const DAY_MS: i64 = 24 * 3600 * 1000;

async fn record_at(dir: &std::path::Path, event: &str, at: i64) {
    let store = SqlStore::open(&dir.join("data/rtunnel.db")).await.unwrap();
    // The event's name is the test's label for it.
    let mut ev = AuditEvent::new(rtunnel_core::store::AuditKind::Login);
    ev.event = event.to_owned();
    ev.at = at;
    store.record(&ev).await.unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_prunes_what_is_older_than_the_retention() {
    let tmp = tempfile::tempdir().unwrap();
    // The database exists once the server has run (or migrate).
    admin(tmp.path(), &["migrate"]);
    let now = now_millis();
    record_at(tmp.path(), "ancient", now - 400 * DAY_MS).await;
    record_at(tmp.path(), "last_month", now - 30 * DAY_MS).await;
    record_at(tmp.path(), "last_week", now - 7 * DAY_MS).await;

    // The default keeps a year.
    let mut server = ServerProc::start(tmp.path(), &[]).await;
    wait_for("the ancient event to be pruned", || async {
        audit_events(tmp.path(), "ancient")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(audit_events(tmp.path(), "last_month").await.len(), 1);
    server.proc.kill();

    let mut server = ServerProc::start(tmp.path(), &["--audit-retention", "14d"]).await;
    wait_for("last month's event to be pruned", || async {
        audit_events(tmp.path(), "last_month")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(audit_events(tmp.path(), "last_week").await.len(), 1);
    assert!(
        server
            .proc
            .log_text()
            .contains("pruned the audit and access logs")
    );
    server.proc.kill();

    // `never` keeps everything; nonsense is refused.
    let server = ServerProc::start(tmp.path(), &["--audit-retention", "never"]).await;
    drop(server);
    assert_eq!(audit_events(tmp.path(), "last_week").await.len(), 1);
    let out = std::process::Command::new(server_bin())
        .args(["--data-dir"])
        .arg(tmp.path().join("data"))
        .args(["--audit-retention", "1h", "migrate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1d"));
}
