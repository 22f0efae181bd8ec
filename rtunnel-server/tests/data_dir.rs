//! The data directory against the real server process: what it creates is
//! its user's alone, and a key file open to every user is refused.

#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::PermissionsExt;

use support::*;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_its_files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    user_with_token(&server, "root", "admin");
    let data = tmp.path().join("data");
    assert_eq!(mode(&data), 0o700);
    for file in [
        "rtunnel.db",
        "rtunnel.db-wal",
        "secret.key",
        "launch.key",
        "node-id",
    ] {
        let path = data.join(file);
        if file == "node-id" && !path.exists() {
            continue;
        }
        assert_eq!(mode(&path), 0o600, "{file}");
    }
    drop(server);

    // A key file every user can read stops the server with a way out.
    let key = data.join("secret.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(server_bin())
        .arg("--data-dir")
        .arg(&data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
}

/// An admin command pointed at a directory without a database refuses,
/// naming the path, instead of creating an empty database whose keys no
/// server knows; `migrate` creates it, after which the command works.
#[test]
fn admin_commands_refuse_a_data_directory_without_a_database() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("elsewhere");
    let run = |args: &[&str]| {
        std::process::Command::new(server_bin())
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["system", "add", "box"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("there is no database at"), "{err}");
    assert!(
        err.contains(&data.join("rtunnel.db").display().to_string())
            || err.contains(&data.display().to_string()),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no key printed");
    assert!(!data.join("rtunnel.db").exists(), "nothing created");
    let out = run(&["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["system", "add", "box"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
