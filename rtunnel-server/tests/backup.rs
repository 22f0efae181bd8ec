//! `rtunnel-server backup PATH` while the server runs, and a restore from
//! that copy: the users, systems and tokens are all there, and the agent
//! gets back in with the secret it has.

#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::PermissionsExt;

use support::*;

/// `rtunnel-server backup PATH` on the data directory of `dir`.
fn backup(dir: &std::path::Path, path: &std::path::Path) -> std::process::Output {
    std::process::Command::new(server_bin())
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("backup")
        .arg(path)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serving_restores_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let token = user_with_token(&server, "root", "admin");
    let sys = enroll(&server, "backed-up");
    let agent = start_agent(&server, &sys, "web=127.0.0.1:9", &["--no-terminal"]);
    wait_for("the agent's session", || {
        let text = agent.log_text();
        async move { text.contains("connected to ws:").then_some(()) }
    })
    .await;

    // While the server runs and writes (the agent's session, its audit).
    let copy = tmp.path().join("rtunnel-backup.db");
    let out = backup(tmp.path(), &copy);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("secret.key") && err.contains("launch.key"),
        "{err}"
    );
    let mode = std::fs::metadata(&copy).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the copy is private: {mode:o}");

    // A second backup to the same file is refused, the copy untouched.
    let before = std::fs::read(&copy).unwrap();
    let again = backup(tmp.path(), &copy);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    assert_eq!(std::fs::read(&copy).unwrap(), before);
    // Nor is a symlink followed, even one pointing nowhere yet.
    let link = tmp.path().join("link.db");
    let target = tmp.path().join("elsewhere.db");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let through = backup(tmp.path(), &link);
    assert_eq!(through.status.code(), Some(2));
    assert!(!target.exists(), "nothing written through the link");

    // Restore on a new machine: the copy and the key files in a data
    // directory of their own.
    drop(agent);
    drop(server);
    let restored = tempfile::tempdir().unwrap();
    let data = restored.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(&copy, data.join("rtunnel.db")).unwrap();
    for key in ["secret.key", "launch.key"] {
        std::fs::copy(tmp.path().join("data").join(key), data.join(key)).unwrap();
    }
    let server = ServerProc::start(restored.path(), &[]).await;
    let (status, systems) =
        api_call(server.addr, "GET", "/api/v1/systems", Some(&token), None).await;
    assert_eq!(
        status, 200,
        "the API token of before still works: {systems}"
    );
    assert_eq!(systems["items"][0]["name"], "backed-up");
    let agent = start_agent(&server, &sys, "web=127.0.0.1:9", &["--no-terminal"]);
    wait_for("the agent to get back in with its secret", || {
        let text = agent.log_text();
        async move { text.contains("connected to ws:").then_some(()) }
    })
    .await;
    let (status, users) = api_call(server.addr, "GET", "/api/v1/users", Some(&token), None).await;
    assert_eq!(status, 200);
    assert_eq!(users["items"][0]["name"], "root");
}

#[test]
fn a_postgres_database_is_pointed_to_pg_dump() {
    let Ok(url) = std::env::var("RTUNNEL_TEST_POSTGRES_URL") else {
        assert_ne!(
            std::env::var("RTUNNEL_TEST_SERVICES").as_deref(),
            Ok("required"),
            "RTUNNEL_TEST_POSTGRES_URL is not set"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(server_bin())
        .args(["--database-url", &url, "backup"])
        .arg(tmp.path().join("copy.db"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pg_dump"), "{err}");
}
