//! Admin commands next to a running server: `system remove` closes the
//! removed system's tunnel and its agent stops; `user remove` refuses the
//! removed user's token and keeps the last admin; a password typed on a
//! terminal is asked twice and never echoed; a name already taken is said
//! plainly, with what to do instead.

#![allow(clippy::unwrap_used)]

mod support;

use support::*;

fn admin_command(server: &ServerProc, args: &[&str]) -> std::process::Output {
    std::process::Command::new(server_bin())
        .arg("--data-dir")
        .arg(server.dir.join("data"))
        .args(database_args(&server.dir))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_removed_from_the_cli_loses_its_running_tunnel() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let root = user_with_token(&server, "root", "admin");
    let sys = enroll(&server, "old-box");
    let kept = enroll(&server, "kept-box");
    let mut agent = start_agent(&server, &sys, "web=127.0.0.1:9", &["--no-terminal"]);
    let other = start_agent(&server, &kept, "web=127.0.0.1:9", &["--no-terminal"]);
    for a in [&agent, &other] {
        wait_for("the agent's session", || {
            let text = a.log_text();
            async move { text.contains("connected to ws:").then_some(()) }
        })
        .await;
    }

    let out = admin_command(&server, &["system", "remove", "old-box"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Another process deleted it: the running server notices and closes
    // the tunnel; the agent is told its credentials are gone and stops.
    let status = agent.wait_exit().await;
    assert!(!status.success());
    let log = agent.log_text();
    assert!(log.contains("the system was deleted"), "{log}");
    assert!(
        server
            .proc
            .log_text()
            .contains("the system was deleted: closing its tunnel"),
        "{}",
        server.proc.log_text()
    );
    // The other system's tunnel is untouched.
    let (status, systems) =
        api_call(server.addr, "GET", "/api/v1/systems", Some(&root), None).await;
    assert_eq!(status, 200);
    let items = systems["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{systems}");
    assert_eq!(items[0]["name"], "kept-box");
    assert_eq!(items[0]["online"], true, "{systems}");
    let (_, audit) = api_call(
        server.addr,
        "GET",
        "/api/v1/audit?event=system_deleted",
        Some(&root),
        None,
    )
    .await;
    assert_eq!(audit["items"][0]["actor"], "cli", "{audit}");
    assert_eq!(audit["items"][0]["details"]["name"], "old-box", "{audit}");

    // Unknown names are an error, not silence.
    let out = admin_command(&server, &["system", "remove", "old-box"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no system named"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_removed_from_the_cli_is_refused_and_the_last_admin_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let root = user_with_token(&server, "root", "admin");
    let bob = user_with_token(&server, "bob", "operator");
    let sys = enroll(&server, "box");
    server.admin(&["grant", "bob", "box"]);
    let (status, _) = api_call(server.addr, "GET", "/api/v1/systems", Some(&bob), None).await;
    assert_eq!(status, 200);

    let out = admin_command(&server, &["user", "remove", "root"]);
    assert_eq!(out.status.code(), Some(2), "the last admin is kept");
    assert!(String::from_utf8_lossy(&out.stderr).contains("last enabled admin"));

    let out = admin_command(&server, &["user", "remove", "bob"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, v) = api_call(server.addr, "GET", "/api/v1/systems", Some(&bob), None).await;
    assert_eq!(status, 401, "{v}");
    let (_, users) = api_call(server.addr, "GET", "/api/v1/users", Some(&root), None).await;
    let names: Vec<&str> = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["root"]);
    let (_, grants) = api_call(server.addr, "GET", "/api/v1/grants", Some(&root), None).await;
    assert_eq!(grants["total"], 0, "{grants}");
    let (_, audit) = api_call(
        server.addr,
        "GET",
        "/api/v1/audit?event=user_deleted",
        Some(&root),
        None,
    )
    .await;
    assert_eq!(audit["items"][0]["details"]["name"], "bob", "{audit}");
    let _ = sys;
}

/// Runs `args` on a terminal of its own, answering each prompt in turn;
/// returns the exit code and everything the terminal showed.
async fn on_a_terminal(dir: &std::path::Path, args: &[&str], answers: &[&str]) -> (i32, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut pty, pts) = pty_process::open().unwrap();
    let mut child = pty_process::Command::new(server_bin())
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(database_args(dir))
        .args(args)
        .spawn(pts)
        .unwrap();
    let mut shown = String::new();
    let mut buf = [0u8; 1024];
    for (i, answer) in answers.iter().enumerate() {
        let prompt = if i == 0 { "Password: " } else { "Again: " };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while !shown.contains(prompt) {
            let n = tokio::time::timeout_at(deadline, pty.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {prompt:?} prompt; shown: {shown:?}"))
                .unwrap();
            shown.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        pty.write_all(format!("{answer}\n").as_bytes())
            .await
            .unwrap();
        shown = shown.replacen(prompt, "<asked>", 1);
    }
    let status = child.wait().await.unwrap();
    // The rest of what it showed (the pty reads EIO once it is gone).
    while let Ok(Ok(n)) =
        tokio::time::timeout(std::time::Duration::from_secs(2), pty.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        shown.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    (status.code().unwrap_or(-1), shown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_typed_on_a_terminal_is_asked_twice_and_not_echoed() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    server.admin(&["user", "add", "carol", "--role", "operator"]);

    let (code, shown) = on_a_terminal(
        tmp.path(),
        &["user", "passwd", "carol"],
        &["typed-secret-1", "typed-secret-2"],
    )
    .await;
    assert_eq!(code, 2, "{shown}");
    assert!(shown.contains("differ"), "{shown}");

    let (code, shown) = on_a_terminal(
        tmp.path(),
        &["user", "passwd", "carol"],
        &["typed-secret-1", "typed-secret-1"],
    )
    .await;
    assert_eq!(code, 0, "{shown}");
    assert!(
        !shown.contains("typed-secret"),
        "the password was echoed: {shown:?}"
    );
    assert!(shown.contains("password set"), "{shown}");
    let (status, v) = api_call(
        server.addr,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(&serde_json::json!({"username": "carol", "password": "typed-secret-1"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_taken_is_said_plainly_with_what_to_do_instead() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let _ = user_with_token(&server, "alice", "admin");
    let _ = enroll(&server, "box");
    let _ = enroll(&server, "other");
    for (args, hint) in [
        (
            &["user", "add", "alice", "--role", "admin"][..],
            "`rtunnel-server user passwd alice`",
        ),
        (
            &["system", "add", "box"][..],
            "a system named \"box\" exists already",
        ),
        (
            &["system", "rename", "other", "box"][..],
            "another system is named \"box\"",
        ),
    ] {
        let out = admin_command(&server, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(hint), "{args:?}: {err}");
        // The database's own words are not for the administrator.
        assert!(
            !err.contains("UNIQUE") && !err.contains("constraint"),
            "{err}"
        );
    }
}

/// An operator without a grant is told the system and its sessions do not
/// exist (their ids tell nothing); the server's log says why, for the admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_for_want_of_a_grant_is_logged_with_its_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let root = user_with_token(&server, "root", "admin");
    let bob = user_with_token(&server, "bob", "operator");
    let sys = enroll(&server, "box");
    let echo = echo_service().await;
    let _agent = start_agent(&server, &sys, &format!("echo={echo}"), &[]);
    let session = active_session(&server, &root, &sys.id).await;
    for (path, code, why) in [
        (
            format!("/api/v1/systems/{}", sys.id),
            "system_not_found",
            "user bob holds no grant on system box",
        ),
        (
            format!("/api/v1/sessions/{session}"),
            "session_not_found",
            "user bob holds no grant on the session's system",
        ),
    ] {
        let (status, v) = api_call(server.addr, "GET", &path, Some(&bob), None).await;
        assert_eq!((status, v["code"].as_str()), (404, Some(code)), "{v}");
        assert!(
            !v.to_string().contains("grant"),
            "the caller is told nothing: {v}"
        );
        let trace = v["trace_id"].as_str().unwrap().to_owned();
        let line = wait_for("the refusal's log line", || {
            let log = server.proc.log_text();
            let trace = trace.clone();
            async move { log.lines().find(|l| l.contains(&trace)).map(str::to_owned) }
        })
        .await;
        assert!(line.contains(why), "{line}");
    }
}
