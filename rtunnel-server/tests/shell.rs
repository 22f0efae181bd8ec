//! `rtunnel-agent shell --system NAME`: the agent's terminal in the
//! operator's own terminal. On a real PTY: raw mode while it runs and the
//! terminal restored after, the local size at start and every resize, the
//! remote shell's exit code. Without a terminal (a pipe) it still runs
//! commands; its own failures exit 255 with the server's reason.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The local terminal's line settings: (canonical, echo).
fn line_mode(pty: &pty_process::Pty) -> (bool, bool) {
    use rustix::termios::LocalModes;
    let t = rustix::termios::tcgetattr(pty).unwrap();
    (
        t.local_modes.contains(LocalModes::ICANON),
        t.local_modes.contains(LocalModes::ECHO),
    )
}

/// Reads from the pty into `shown` until it holds `text`.
async fn read_until(pty: &mut pty_process::Pty, shown: &mut String, text: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    while !shown.contains(text) {
        let n = tokio::time::timeout_at(deadline, pty.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("never showed {text:?}; shown: {shown:?}"))
            .unwrap();
        shown.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_shell_runs_in_the_local_terminal_sized_and_raw() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let token = user_with_token(&server, "root", "admin");
    let sys = enroll(&server, "box");
    let _agent = start_agent(&server, &sys, "", &[]);
    active_session(&server, &token, &sys.id).await;

    let (mut pty, pts) = pty_process::open().unwrap();
    pty.resize(pty_process::Size::new(30, 100)).unwrap();
    let cooked = line_mode(&pty);
    assert_eq!(cooked, (true, true), "a fresh terminal is cooked");
    let mut cmd = pty_process::Command::new(agent_bin())
        .args(["shell", "--server", &server.base_url(), "--system", "box"])
        .env("RTUNNEL_TOKEN", &token);
    for var in proxy_vars() {
        cmd = cmd.env_remove(var);
    }
    let mut child = cmd.spawn(pts).unwrap();
    // Raw: no local echo, no line editing (the remote side does both).
    wait_for("the local terminal to be raw", || {
        let mode = line_mode(&pty);
        async move { (mode == (false, false)).then_some(()) }
    })
    .await;
    let mut shown = String::new();
    pty.write_all(b"stty size; echo MARK-$((6*7))\r")
        .await
        .unwrap();
    read_until(&mut pty, &mut shown, "MARK-42").await;
    assert!(shown.contains("30 100"), "the size at start: {shown:?}");

    // The operator's window grows: the remote terminal follows.
    pty.resize(pty_process::Size::new(40, 120)).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !shown.contains("40 120") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never resized: {shown:?}"
        );
        pty.write_all(b"stty size\r").await.unwrap();
        let mut buf = [0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), pty.read(&mut buf)).await {
            shown.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    pty.write_all(b"exit 7\r").await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(7), "the remote exit code: {shown:?}");
    assert_eq!(line_mode(&pty), cooked, "the terminal is restored");

    let (_, audit) = api_call(
        server.addr,
        "GET",
        "/api/v1/audit?event=terminal_opened",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(audit["items"][0]["actor"], "root", "{audit}");
    assert_eq!(audit["items"][0]["details"]["cols"], 100, "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_commands_still_run_and_failures_say_why() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let token = user_with_token(&server, "root", "admin");
    let viewer = user_with_token(&server, "vera", "viewer");
    let sys = enroll(&server, "piped");
    let _agent = start_agent(&server, &sys, "", &[]);
    active_session(&server, &token, &sys.id).await;

    let shell = |system: &str, token: &str| {
        let mut cmd = tokio::process::Command::new(agent_bin());
        cmd.args(["shell", "--server", &server.base_url(), "--system", system])
            .env("RTUNNEL_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        clear_proxy_env_tokio(&mut cmd);
        cmd.spawn().unwrap()
    };
    let mut child = shell("piped", &token);
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"echo MARK-$((6*7)); exit 3\n")
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("MARK-42"), "{stdout}");
    assert_eq!(out.status.code(), Some(3), "{stdout}");

    // A viewer with a grant may see the system, not open its terminal.
    server.admin(&["grant", "vera", "piped"]);
    for (system, token, why) in [
        ("nope", token.as_str(), "system_not_found"),
        ("piped", viewer.as_str(), "403"),
    ] {
        let out = shell(system, token).wait_with_output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{system}: {stderr}");
        assert!(
            stderr.contains(why) && stderr.lines().count() == 1,
            "{system}: {stderr}"
        );
    }
}

fn clear_proxy_env_tokio(cmd: &mut tokio::process::Command) {
    clear_proxy_env(cmd.as_std_mut());
}
