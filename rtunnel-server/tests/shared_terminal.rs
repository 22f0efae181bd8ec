//! Terminals that survive a closed tab, and several people in one: a
//! terminal whose viewer left waits detached with its shell (variables,
//! working directory) and its recent screen, listed by `GET
//! .../terminals`; attaching gets both back. A viewer watches what an
//! operator types and cannot type; the terminal has one recording with who
//! joined and left marked in it, and each joining is audited.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// `rtunnel-agent shell` on pipes, with `extra` flags.
fn shell(server: &ServerProc, token: &str, system: &str, extra: &[&str]) -> Child {
    let mut cmd = Command::new(agent_bin());
    cmd.args(["shell", "--server", &server.base_url(), "--system", system])
        .args(extra)
        .env("RTUNNEL_TOKEN", token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "RTUNNEL_PROXY",
    ] {
        cmd.env_remove(var).env_remove(var.to_ascii_lowercase());
    }
    cmd.spawn().unwrap()
}

/// Reads `child`'s stdout into `seen` until it holds `text`.
async fn read_until(child: &mut Child, seen: &mut String, text: &str) {
    let out = child.stdout.as_mut().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    while !seen.contains(text) {
        let n = tokio::time::timeout_at(deadline, out.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("never saw {text:?}; saw {seen:?}"))
            .unwrap();
        assert!(n > 0, "output ended before {text:?}; saw {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

async fn terminals(server: &ServerProc, token: &str, session: &str) -> serde_json::Value {
    let (status, v) = api_call(
        server.addr,
        "GET",
        &format!("/api/v1/sessions/{session}/terminals"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["items"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_terminal_keeps_its_shell_and_a_viewer_watches_without_typing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let root = user_with_token(&server, "root", "admin");
    let vera = user_with_token(&server, "vera", "viewer");
    let sys = enroll(&server, "box");
    server.admin(&["grant", "vera", "box"]);
    let _agent = start_agent(&server, &sys, "", &["--shell", "/bin/sh"]);
    let session = active_session(&server, &root, &sys.id).await;

    // A shell with a variable and a working directory, then the tab closes.
    let mut first = shell(&server, &root, "box", &[]);
    let stdin = first.stdin.as_mut().unwrap();
    stdin
        .write_all(b"MARK=kept-$((6*7)); cd /tmp; echo first-$((1+1))\n")
        .await
        .unwrap();
    let mut seen = String::new();
    read_until(&mut first, &mut seen, "first-2").await;
    first.kill().await.unwrap();
    let listed = wait_for("the terminal to wait detached", || {
        let (server, root, session) = (&server, root.clone(), session.clone());
        async move {
            let items = terminals(server, &root, &session).await;
            (items.as_array()?.len() == 1 && items[0]["detached"] == true).then_some(items)
        }
    })
    .await;
    assert_eq!(listed[0]["started_by"], "root", "{listed}");
    let id = listed[0]["id"].as_str().unwrap().to_owned();

    // Attached again: the recent screen first, then the same shell.
    let mut again = shell(&server, &root, "box", &["--attach", &id]);
    let mut seen = String::new();
    read_until(&mut again, &mut seen, "first-2").await;
    let stdin = again.stdin.as_mut().unwrap();
    stdin.write_all(b"echo \"$MARK in $PWD\"\n").await.unwrap();
    read_until(&mut again, &mut seen, "kept-42 in /tmp").await;

    // A viewer watches: sees what is typed, types nothing.
    let mut watcher = shell(&server, &vera, "box", &["--attach", &id, "--watch"]);
    let mut watched = String::new();
    read_until(&mut watcher, &mut watched, "kept-42 in /tmp").await;
    let _ = watcher
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"echo from-the-$((0+1))-watcher\n")
        .await;
    let stdin = again.stdin.as_mut().unwrap();
    stdin.write_all(b"echo typed-by-$((2+2))\n").await.unwrap();
    read_until(&mut watcher, &mut watched, "typed-by-4").await;
    read_until(&mut again, &mut seen, "typed-by-4").await;
    assert!(!seen.contains("from-the-1-watcher"), "{seen}");
    // The viewer cannot take the keyboard by asking for it.
    let joins = shell(&server, &vera, "box", &["--attach", &id]);
    let out = joins.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("403"), "{stderr}");
    watcher.kill().await.unwrap();

    // The shell ends: everyone attached hears it.
    again
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"exit 5\n")
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), again.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(5));
    wait_for("the terminal to be gone", || {
        let (server, root, session) = (&server, root.clone(), session.clone());
        async move {
            let items = terminals(server, &root, &session).await;
            items.as_array()?.is_empty().then_some(())
        }
    })
    .await;

    // One recording for the terminal, with the viewer's coming and going.
    let (_, recs) = api_call(
        server.addr,
        "GET",
        &format!("/api/v1/sessions/{session}/recordings"),
        Some(&root),
        None,
    )
    .await;
    let recs = recs["items"].as_array().unwrap().clone();
    let mut casts = Vec::new();
    for r in &recs {
        let path = format!("/api/v1/recordings/{}", r["id"].as_str().unwrap());
        let (_, body) = http_get(server.addr, &path, Some(&root)).await.unwrap();
        casts.push(body);
    }
    let shared: Vec<&String> = casts.iter().filter(|c| c.contains("typed-by-4")).collect();
    assert_eq!(
        shared.len(),
        1,
        "one recording holds the attached part: {casts:#?}"
    );
    assert!(
        shared[0].contains("\"m\",\"vera joined (watch)\""),
        "{}",
        shared[0]
    );
    assert!(shared[0].contains("\"m\",\"vera left\""), "{}", shared[0]);
    let (_, audit) = api_call(
        server.addr,
        "GET",
        "/api/v1/audit?event=terminal_opened",
        Some(&root),
        None,
    )
    .await;
    let items = audit["items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .any(|e| e["actor"] == "vera" && e["details"]["mode"] == "watch"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_terminal_ends_after_the_detach_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let root = user_with_token(&server, "root", "admin");
    let sys = enroll(&server, "short");
    let agent = start_agent(
        &server,
        &sys,
        "",
        &["--shell", "/bin/sh", "--terminal-detach-timeout", "1s"],
    );
    let session = active_session(&server, &root, &sys.id).await;
    let mut first = shell(&server, &root, "short", &[]);
    first
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"echo up-$((1+1))\n")
        .await
        .unwrap();
    let mut seen = String::new();
    read_until(&mut first, &mut seen, "up-2").await;
    assert_eq!(
        terminals(&server, &root, &session)
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    first.kill().await.unwrap();
    wait_for("the detached terminal to end", || {
        let (server, root, session) = (&server, root.clone(), session.clone());
        async move {
            let items = terminals(server, &root, &session).await;
            items.as_array()?.is_empty().then_some(())
        }
    })
    .await;
    assert!(
        agent.log_text().contains("nobody attached"),
        "{}",
        agent.log_text()
    );
    // Attaching to it now says it is gone.
    let (status, v) = api_call(
        server.addr,
        "GET",
        &format!("/api/v1/sessions/{session}/terminals"),
        Some(&root),
        None,
    )
    .await;
    assert_eq!(
        (status, v["items"].as_array().map(Vec::len)),
        (200, Some(0))
    );
}
