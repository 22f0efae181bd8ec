//! A 5xx of the real server keeps its internals in the log under the
//! trace id it answers with. (The envelope on every route is tested in
//! process, in `tests/api.rs`.)

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Value, json};
use support::*;

fn assert_envelope(v: &Value, code: &str, context: &str) {
    assert_eq!(v["success"], false, "{context}: {v}");
    assert_eq!(v["code"], code, "{context}: {v}");
    assert_eq!(
        v["trace_id"].as_str().map(str::len),
        Some(16),
        "{context}: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_keeps_its_internals_in_the_log_under_its_trace_id() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let admin = user_with_token(&server, "root", "admin");

    // Take the audit table away under the running server: a real database
    // fault, on demand.
    let db = tmp.path().join("data/rtunnel.db");
    let url = format!("sqlite://{}", db.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("ALTER TABLE audit_events RENAME TO audit_events_away")
        .execute(&pool)
        .await
        .unwrap();

    let create = |name: &'static str| {
        let admin = admin.clone();
        let addr = server.addr;
        async move {
            let body = json!({ "name": name });
            api_call(addr, "POST", "/api/v1/systems", Some(&admin), Some(&body)).await
        }
    };
    let (status, v) = create("while-broken").await;
    assert_eq!(status, 503, "{v}");
    assert_envelope(&v, "audit_unavailable", "POST /api/v1/systems");
    let text = v.to_string();
    assert!(
        !text.contains("audit_events") && !text.contains("sqlite") && !text.contains("table"),
        "no internals in a 5xx: {text}"
    );
    let trace_id = v["trace_id"].as_str().unwrap().to_owned();
    let line = wait_for("the log line of the failure", || {
        let log = server.proc.log_text();
        let trace_id = trace_id.clone();
        async move {
            log.lines()
                .find(|l| l.contains(&trace_id))
                .map(str::to_owned)
        }
    })
    .await;
    assert!(
        line.contains("audit_events"),
        "the detail is in the log: {line}"
    );
    // Nothing was created while the audit could not be written.
    let (_, v) = api_call(server.addr, "GET", "/api/v1/systems", Some(&admin), None).await;
    assert_eq!(v["total"], 0, "{v}");

    // Put it back: the server recovers by itself.
    sqlx::query("ALTER TABLE audit_events_away RENAME TO audit_events")
        .execute(&pool)
        .await
        .unwrap();
    let (status, v) = create("after").await;
    assert_eq!(status, 201, "{v}");
}

/// A misspelled log level is refused by both binaries, saying what a filter
/// looks like, instead of silently logging nothing.
#[test]
fn a_misspelled_log_level_is_an_error_not_silence() {
    let tmp = tempfile::tempdir().unwrap();
    for (bin, args) in [
        (
            server_bin(),
            vec!["--data-dir", tmp.path().to_str().unwrap(), "migrate"],
        ),
        (
            agent_bin(),
            vec![
                "run",
                "--url",
                "ws://127.0.0.1:9/api/v1/tunnel",
                "--key",
                "k",
            ],
        ),
    ] {
        let out = std::process::Command::new(&bin)
            .args(&args)
            .env("RTUNNEL_LOG", "inof")
            .env("RTUNNEL_SECRET", "s")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bin:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("unknown log level \"inof\""), "{bin:?}: {err}");
        assert!(
            err.contains("error, warn, info, debug, trace, off"),
            "{err}"
        );
    }
    // A correct one still works.
    let out = std::process::Command::new(server_bin())
        .args(["--data-dir", tmp.path().to_str().unwrap(), "migrate"])
        .env("RTUNNEL_LOG", "warn,rtunnel_server=debug")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PostgreSQL that refuses connections is named as such, not as "pool
/// timed out".
#[test]
fn a_database_that_refuses_connections_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!(
        "postgres://rtunnel:secret@127.0.0.1:{}/rtunnel",
        free_port()
    );
    let out = std::process::Command::new(server_bin())
        .args([
            "--data-dir",
            tmp.path().to_str().unwrap(),
            "--database-url",
            &url,
            "migrate",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to the database at postgres://rtunnel:***@127.0.0.1:"),
        "{err}"
    );
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert!(!err.contains("secret"), "the password stays out: {err}");
    assert!(!err.contains("pool timed out"), "{err}");
}

/// Without a token, `forward` and `shell` name both ways to give one, and
/// where an admin gets one (clap's own message names only the flag).
#[test]
fn a_missing_api_token_names_the_variable_and_where_to_get_one() {
    for args in [
        &[
            "forward",
            "--server",
            "http://127.0.0.1:9",
            "--system",
            "box",
            "--service",
            "ssh",
        ][..],
        &["shell", "--server", "http://127.0.0.1:9", "--system", "box"][..],
    ] {
        // Unset, and set but empty.
        for token in [None, Some("")] {
            let mut cmd = std::process::Command::new(agent_bin());
            cmd.args(args).env_remove("RTUNNEL_TOKEN");
            if let Some(t) = token {
                cmd.env("RTUNNEL_TOKEN", t);
            }
            let out = cmd.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains("set RTUNNEL_TOKEN"), "{args:?}: {err}");
            assert!(
                err.contains("rtunnel-server token create"),
                "{args:?}: {err}"
            );
            // Nothing was given on the command line to warn about.
            assert!(!err.contains("command line"), "{args:?}: {err}");
        }
    }
}
