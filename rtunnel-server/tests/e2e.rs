//! End-to-end: real server and agent processes on loopback, driven the way
//! a user drives them.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Setup {
    _tmp: tempfile::TempDir,
    server: ServerProc,
    agent: Proc,
    sys: Enrolled,
    token: String,
    session: String,
}

/// A server, an enrolled system whose agent offers an echo and an HTTP
/// service, and an admin token; waits for the session to be active.
async fn setup() -> Setup {
    setup_with(&[]).await
}

async fn setup_with(server_flags: &[&str]) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), server_flags).await;
    let sys = enroll(&server, "customer-box");
    let token = user_with_token(&server, "alice", "admin");
    let echo = echo_service().await;
    let web = http_service().await;
    let agent = start_agent(&server, &sys, &format!("echo={echo},web={web}"), &[]);
    let session = active_session(&server, &token, &sys.id).await;
    Setup {
        _tmp: tmp,
        server,
        agent,
        sys,
        token,
        session,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_of_random_bytes_come_back_byte_exact() {
    let s = setup().await;
    let (_fwd, local) = start_forward(&s.server, &s.token, &s.session, "echo").await;
    let data = random_bytes(64 * 1024 * 1024);
    let back = echo_through(local, &data).await;
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_connections_through_one_forward_come_back_exact() {
    // 100 at once is past the default of 64 streams per tunnel, and of
    // half of them for one operator.
    let s = setup_with(&[
        "--max-streams-per-tunnel",
        "128",
        "--max-streams-per-user",
        "128",
    ])
    .await;
    let (fwd, local) = start_forward(&s.server, &s.token, &s.session, "echo").await;
    let mut tasks = Vec::new();
    for i in 0..100usize {
        tasks.push(tokio::spawn(async move {
            // Different sizes so streams interleave differently.
            let data = random_bytes(50_000 + i * 3_001);
            let back = echo_through(local, &data).await;
            back == data
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert!(t.await.unwrap(), "connection {i} came back different");
    }
    // One WebSocket for all of them: one forward_opened event.
    let opened = audit_events(&s.server.dir, "forward_opened").await;
    assert_eq!(opened.len(), 1, "forward dialed more than one WebSocket");
    drop(fwd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_get_through_a_forward_gets_the_page() {
    let s = setup().await;
    let (_fwd, local) = start_forward(&s.server, &s.token, &s.session, "web").await;
    let (status, body) = http_get(local, "/", None).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, PAGE);
    // The access log has the connection: who, from where, bytes, times.
    let entry = newest_closed_access(&s.server, &s.token, &s.session).await;
    assert_eq!(entry["kind"], "forward");
    assert_eq!(entry["service"], "web");
    assert_eq!(entry["user"], "alice");
    assert_eq!(entry["ip_address"], "127.0.0.1");
    assert!(entry["opened_at"].is_string());
    assert!(entry["bytes_to_service"].as_u64().unwrap() > 20);
    assert!(entry["bytes_from_service"].as_u64().unwrap() as usize > PAGE.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_api_shows_the_active_session_and_its_manifest() {
    let s = setup().await;
    let (status, body) = http_get(
        s.server.addr,
        &format!("/api/v1/sessions/{}", s.session),
        Some(&s.token),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "active");
    assert_eq!(v["system_id"], s.sys.id.as_str());
    assert!(
        v["agent_software"]
            .as_str()
            .unwrap()
            .starts_with("rtunnel-agent/")
    );
    let (status, body) = http_get(
        s.server.addr,
        &format!("/api/v1/sessions/{}/services", s.session),
        Some(&s.token),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<_> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "web", "terminal"]);
    assert_eq!(v["total"], 3);
    assert_eq!(v["items"][2]["kind"], "terminal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_to_an_unknown_service_fails_with_one_clear_line() {
    let s = setup().await;
    let forward = |service: &'static str| {
        let base = s.server.base_url();
        let token = s.token.clone();
        let session = s.session.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(agent_bin())
                .args(["forward", "--server", &base, "--session", &session])
                .args([
                    "--service",
                    service,
                    "--listen",
                    &format!("127.0.0.1:{}", free_port()),
                ])
                .env("RTUNNEL_TOKEN", token)
                .output()
                .unwrap()
        })
    };
    let out = forward("nope").await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("unknown_service") && last.contains("nope"),
        "{stderr}"
    );
    // It says which services there are (the terminal is not forwarded).
    assert!(last.contains("it has echo, web"), "{stderr}");
    // The terminal is refused at start, not on every connection.
    let out = forward("terminal").await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("unsupported_kind") && last.contains("opened in the console"),
        "{stderr}"
    );
    // The tunnel is untouched.
    let (status, body) = http_get(
        s.server.addr,
        &format!("/api/v1/sessions/{}", s.session),
        Some(&s.token),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"active\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_gets_401_is_audited_and_the_agent_backs_off() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let mut sys = enroll(&server, "box");
    let good_key = sys.key.clone();
    sys.secret = "not-the-secret".into();

    // The raw answer: 401, the envelope, a Basic challenge, and the same
    // message whichever half is wrong.
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let ask = |creds: String| {
        let addr = server.addr;
        async move {
            http_raw(
                addr,
                &format!(
                    "GET /api/v1/tunnel HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\nConnection: close\r\n\r\n",
                    b64(&creds)
                ),
            )
            .await
            .unwrap()
        }
    };
    let (status, wrong_secret) = ask(format!("{good_key}:nope")).await;
    assert_eq!(status, 401);
    let (status2, wrong_key) = ask("sys_doesnotexist:nope".into()).await;
    assert_eq!(status2, 401);
    let strip = |body: &str| {
        let mut v: serde_json::Value = serde_json::from_str(body).unwrap();
        v.as_object_mut().unwrap().remove("trace_id");
        v
    };
    assert_eq!(strip(&wrong_secret), strip(&wrong_key));
    assert_eq!(strip(&wrong_secret)["code"], "invalid_credentials");
    assert_eq!(strip(&wrong_secret)["success"], false);

    // The agent with a wrong secret: 200ms doubling to 1s. In 4 s a hot loop
    // would make hundreds of attempts; backoff makes a handful.
    let before = audit_events(&server.dir, "tunnel_auth_failed").await.len();
    let mut agent = start_agent(&server, &sys, "", &[]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(agent.is_running(), "the agent gave up instead of retrying");
    let failures = audit_events(&server.dir, "tunnel_auth_failed").await;
    let attempts = failures.len() - before;
    assert!((3..=12).contains(&attempts), "{attempts} attempts in 4 s");
    let last = failures.last().unwrap();
    assert_eq!(last.actor.as_deref(), Some(good_key.as_str()));
    assert_eq!(last.ip_address.as_deref(), Some("127.0.0.1"));
    assert!(agent.log_text().contains("check the key and secret"));
}

/// The newest access-log entry of a session, once it has closed.
async fn newest_closed_access(
    server: &ServerProc,
    token: &str,
    session: &str,
) -> serde_json::Value {
    let path = format!("/api/v1/sessions/{session}/logs");
    wait_for("the access log entry to close", || async {
        let (_, body) = http_get(server.addr, &path, Some(token)).await.ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let e = v["items"][0].clone();
        e["closed_at"].is_string().then_some(e)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_the_agent_resumes_the_same_session_and_forward_works_again() {
    let mut s = setup().await;
    let (_fwd, local) = start_forward(&s.server, &s.token, &s.session, "echo").await;
    assert!(echo_through(local, b"before").await == b"before");
    let addr = s.server.addr.to_string();
    s.server.proc.kill();
    let server = ServerProc::start_on(&s.server.dir, &addr, &[]).await;
    // The session the dead process held waits in grace, then its agent
    // comes back with its reconnect token: same session, active again.
    wait_for("the same session to be active again", || async {
        let v = session_status(&server, &s.token, &s.session).await?;
        (v["status"] == "active").then_some(())
    })
    .await;
    assert_eq!(
        active_session(&server, &s.token, &s.sys.id).await,
        s.session
    );
    // The forward started before the crash redials on its next connection.
    let data = random_bytes(1 << 20);
    assert!(echo_through(local, &data).await == data);
    assert_eq!(audit_events(&server.dir, "session_resumed").await.len(), 1);
    assert!(s.agent.is_running());
    assert!(s.agent.log_text().contains("resumed the session"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_the_agent_to_come_back_at_once_to_the_same_session() {
    let mut s = setup().await;
    let addr = s.server.addr.to_string();
    s.server.proc.signal("TERM");
    let status = s.server.proc.wait_exit().await;
    assert!(status.success(), "server exit: {status:?}");
    wait_for("the agent to hear the restart", || {
        let text = s.agent.log_text();
        async move { text.contains("server is restarting").then_some(()) }
    })
    .await;
    let server = ServerProc::start_on(&s.server.dir, &addr, &[]).await;
    wait_for("the same session to be active again", || async {
        let v = session_status(&server, &s.token, &s.session).await?;
        (v["status"] == "active").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_leaves_its_session_in_grace_then_expired() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &["--grace-period", "2s"]).await;
    let sys = enroll(&server, "box");
    let token = user_with_token(&server, "alice", "admin");
    let echo = echo_service().await;
    let mut agent = start_agent(&server, &sys, &format!("echo={echo}"), &[]);
    let session = active_session(&server, &token, &sys.id).await;
    agent.kill();
    let v = wait_for("the session to enter its grace period", || async {
        let v = session_status(&server, &token, &session).await?;
        (v["status"] == "grace_period").then_some(v)
    })
    .await;
    assert!(v["grace_until"].is_string(), "{v}");
    let v = wait_for("the grace period to run out", || async {
        let v = session_status(&server, &token, &session).await?;
        (v["status"] == "expired").then_some(v)
    })
    .await;
    assert_eq!(v["end_reason"], "the agent did not come back in time");
    assert_eq!(audit_events(&server.dir, "session_expired").await.len(), 1);
}

/// Sends a request with a bearer token and optional JSON body.
async fn send(
    server: &ServerProc,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = http_raw(server.addr, &req).await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_session_ends_the_agent_with_exit_0_and_one_log_line() {
    let mut s = setup().await;
    let path = format!("/api/v1/sessions/{}", s.session);
    let (status, v) = send(&s.server, "DELETE", &path, &s.token, "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "closed");
    assert_eq!(v["end_reason"], "closed by an operator");
    let exit = s.agent.wait_exit().await;
    assert_eq!(exit.code(), Some(0), "{}", s.agent.log_text());
    let log = s.agent.log_text();
    let lines: Vec<_> = log
        .lines()
        .filter(|l| l.contains("not reconnecting"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("closed by an operator"), "{log}");
    assert_eq!(
        audit_events(&s.server.dir, "tunnel_connected").await.len(),
        1,
        "the agent reconnected"
    );
    let closed = audit_events(&s.server.dir, "session_closed").await;
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].actor.as_deref(), Some("alice"));
    let (status, v) = send(&s.server, "DELETE", &path, &s.token, "").await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["code"], "session_ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_a_sessions_lifetime_closes_it_the_same_way_and_extend_pushes_it_back() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &["--session-ttl", "3s"]).await;
    let sys = enroll(&server, "box");
    let token = user_with_token(&server, "alice", "admin");
    let mut agent = start_agent(&server, &sys, "", &[]);
    let session = active_session(&server, &token, &sys.id).await;
    let path = format!("/api/v1/sessions/{session}/extend");
    let (status, v) = send(&server, "PATCH", &path, &token, r#"{"hours":0}"#).await;
    assert_eq!((status, v["code"].as_str()), (400, Some("invalid_hours")));
    // Extending pushes the end back by exactly the hours asked.
    let before = session_status(&server, &token, &session).await.unwrap();
    let (status, v) = send(&server, "PATCH", &path, &token, r#"{"hours":1}"#).await;
    assert_eq!(status, 200, "{v}");
    let parse = |v: &serde_json::Value| {
        humantime::parse_rfc3339(v["expires_at"].as_str().unwrap()).unwrap()
    };
    assert_eq!(
        parse(&v).duration_since(parse(&before)).unwrap(),
        Duration::from_secs(3600)
    );
    assert_eq!(audit_events(&server.dir, "session_extended").await.len(), 1);

    // A second session, not extended, ends at its lifetime.
    agent.kill();
    wait_for("grace", || async {
        let v = session_status(&server, &token, &session).await?;
        (v["status"] == "grace_period").then_some(())
    })
    .await;
    let (status, _) = send(
        &server,
        "DELETE",
        &format!("/api/v1/sessions/{session}"),
        &token,
        "",
    )
    .await;
    assert_eq!(status, 200);
    let mut agent = start_agent(&server, &sys, "", &[]);
    let second = wait_for("a new session", || async {
        let id = active_session(&server, &token, &sys.id).await;
        (id != session).then_some(id)
    })
    .await;
    let exit = agent.wait_exit().await;
    assert_eq!(exit.code(), Some(0), "{}", agent.log_text());
    assert!(agent.log_text().contains("session lifetime ended"));
    let v = session_status(&server, &token, &second).await.unwrap();
    assert_eq!(v["status"], "closed");
    assert_eq!(v["end_reason"], "session lifetime ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_transfer_ends_the_operators_connection_and_nothing_hangs() {
    let mut s = setup_with(&["--grace-period", "30s"]).await;
    let (_fwd, local) = start_forward(&s.server, &s.token, &s.session, "echo").await;
    let conn = TcpStream::connect(local).await.unwrap();
    let (mut r, mut w) = conn.into_split();
    // Keep sending; read what comes back.
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        while w.write_all(&chunk).await.is_ok() {}
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    while got < 4 * 1024 * 1024 {
        got += r.read(&mut buf).await.unwrap();
    }
    s.agent.kill();
    // The operator's connection ends (end of file or reset), promptly.
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the operator's connection hung after the agent died"
    );
    writer.abort();
    wait_for("the session to enter grace", || async {
        let v = session_status(&s.server, &s.token, &s.session).await?;
        (v["status"] == "grace_period").then_some(())
    })
    .await;
    // The access log recorded the transfer and its end.
    let entry = newest_closed_access(&s.server, &s.token, &s.session).await;
    assert!(entry["bytes_from_service"].as_u64().unwrap() >= 4 * 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_link_is_noticed_by_both_ends_and_the_session_comes_back_after_it_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    // Dead after three silent 400 ms intervals.
    let server = ServerProc::start(
        tmp.path(),
        &["--heartbeat-interval", "400ms", "--grace-period", "60s"],
    )
    .await;
    let sys = enroll(&server, "box");
    let token = user_with_token(&server, "alice", "admin");
    let proxy = PausableProxy::start(server.addr).await;
    let echo = echo_service().await;
    let url = format!("ws://{}/api/v1/tunnel", proxy.addr);
    let agent = start_agent_at(&server, &url, &sys, &format!("echo={echo}"), &[]);
    let session = active_session(&server, &token, &sys.id).await;

    proxy.pause();
    wait_for("the server to notice the silent link", || async {
        let v = session_status(&server, &token, &session).await?;
        (v["status"] == "grace_period").then_some(())
    })
    .await;
    wait_for("the agent to notice the silent link", || {
        let text = agent.log_text();
        async move { text.contains("no heartbeat from the server").then_some(()) }
    })
    .await;
    proxy.resume();
    wait_for("the same session to be active again", || async {
        let v = session_status(&server, &token, &session).await?;
        (v["status"] == "active").then_some(())
    })
    .await;
    let (_fwd, local) = start_forward(&server, &token, &session, "echo").await;
    assert!(echo_through(local, b"after the pause").await == b"after the pause");
}

#[tokio::test]
async fn bad_configuration_exits_2_with_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |bin: std::path::PathBuf, args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(args)
            .env_remove("RTUNNEL_URL")
            .env_remove("RTUNNEL_KEY")
            .env_remove("RTUNNEL_SECRET");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let data = tmp.path().join("data");
    let data = data.to_str().unwrap();
    let cases = vec![
        (
            agent_bin(),
            vec!["run", "--key", "k"],
            vec![("RTUNNEL_SECRET", "s")],
            "--url is required",
        ),
        (
            agent_bin(),
            vec!["--url", "http://x/api/v1/tunnel", "--key", "k"],
            vec![("RTUNNEL_SECRET", "s")],
            "ws://",
        ),
        (
            agent_bin(),
            vec!["--url", "ws://127.0.0.1:1/api/v1/tunnel", "--key", "k"],
            vec![],
            "secret is required",
        ),
        (
            agent_bin(),
            vec![
                "--url",
                "ws://127.0.0.1:1/api/v1/tunnel",
                "--key",
                "k",
                "--static-services",
                "ssh=nohost",
            ],
            vec![("RTUNNEL_SECRET", "s")],
            "bad service",
        ),
        (
            server_bin(),
            vec!["--data-dir", data, "user", "add", "x", "--role", "god"],
            vec![],
            "unknown role",
        ),
        (
            server_bin(),
            vec!["--data-dir", data, "--heartbeat-interval", "soon"],
            vec![],
            "heartbeat-interval",
        ),
    ];
    for (bin, args, env, want) in cases {
        let out = run(bin, &args, &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} wrote to stdout");
    }
    // Production refuses to invent a signing key.
    let out = run(
        server_bin(),
        &["--data-dir", data, "serve", "--listen", "127.0.0.1:0"],
        &[("RTUNNEL_ENV", "production")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("production"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regenerating_the_secret_stops_the_agent_and_only_the_new_secret_works() {
    let mut s = setup().await;
    let path = format!("/api/v1/systems/{}/regenerate-secret", s.sys.id);
    let (status, v) = api_call(s.server.addr, "POST", &path, Some(&s.token), None).await;
    assert_eq!(status, 200, "{v}");
    let new_secret = v["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, s.sys.secret);
    assert_eq!(v["key"], s.sys.key.as_str());

    // The running agent is told, says so, and stops for good.
    let status = s.agent.wait_exit().await;
    assert_eq!(status.code(), Some(1));
    let log = s.agent.log_text();
    assert!(log.contains("revoked this system's credentials"), "{log}");
    let v = session_status(&s.server, &s.token, &s.session)
        .await
        .unwrap();
    assert_eq!(v["status"], "closed", "{v}");

    // The old secret is refused; the new one connects a new session.
    let old = start_agent(&s.server, &s.sys, "echo=127.0.0.1:9", &[]);
    wait_for("the old secret to be refused", || {
        let log = old.log_text();
        async move { log.contains("401").then_some(()) }
    })
    .await;
    let renewed = Enrolled {
        id: s.sys.id.clone(),
        key: s.sys.key.clone(),
        secret: new_secret,
    };
    let _agent = start_agent(&s.server, &renewed, "echo=127.0.0.1:9", &[]);
    let session = active_session(&s.server, &s.token, &s.sys.id).await;
    assert_ne!(session, s.session);
    assert_eq!(
        audit_events(&s.server.dir, "system_secret_regenerated")
            .await
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_session_of_a_frozen_agent_ends_the_operators_idle_connection() {
    let s = setup().await;
    let (_fwd, local) = start_forward(&s.server, &s.token, &s.session, "echo").await;
    let mut conn = tokio::net::TcpStream::connect(local).await.unwrap();
    conn.write_all(b"ping").await.unwrap();
    let mut four = [0u8; 4];
    conn.read_exact(&mut four).await.unwrap();
    // The agent's host hangs: its TCP stack still answers, the agent does
    // not. The operator's connection is idle.
    s.agent.signal("STOP");
    let path = format!("/api/v1/sessions/{}", s.session);
    let (status, v) = send(&s.server, "DELETE", &path, &s.token, "").await;
    assert_eq!(status, 200, "{v}");
    let mut buf = [0u8; 16];
    let ended = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf)).await;
    s.agent.signal("CONT");
    let read = ended.expect("the operator's connection stayed open after the session closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

/// Settings that waiting cannot fix (a wrong path, TLS to a plain port, a
/// wrong secret) are named with what to do, and the agent goes straight to
/// its longest delay instead of retrying quickly; delays read rounded.
/// Stopped then, it does not speak of a session waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_says_what_is_wrong_when_waiting_cannot_fix_it() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let sys = enroll(&server, "misconfigured");
    let base = server.base_url();
    let wss = base.replace("http://", "wss://");
    let cases = [
        (
            format!("{}/api/v1/tunel", base.replace("http", "ws")),
            None,
            "there is no tunnel endpoint at this URL",
        ),
        (
            format!("{wss}/api/v1/tunnel"),
            None,
            "does not speak TLS on this port: use ws://",
        ),
        (
            server.tunnel_url(),
            Some("not-the-secret"),
            "check the key and secret",
        ),
    ];
    for (url, secret, hint) in cases {
        let mut cmd = agent_command(&url, &sys, "echo=127.0.0.1:9");
        cmd.args([
            "--reconnect-delay",
            "200ms",
            "--max-reconnect-delay",
            "1m 30s",
        ]);
        if let Some(secret) = secret {
            cmd.env("RTUNNEL_SECRET", secret);
        }
        let mut agent = spawn_agent(&server, &mut cmd);
        let line = wait_for(&format!("the agent to say {hint:?}"), || {
            let log = agent.log_text();
            let hint = hint.to_owned();
            async move { log.lines().find(|l| l.contains(&hint)).map(str::to_owned) }
        })
        .await;
        assert!(
            line.contains("trying again in 1m 30s (this will not heal by itself)"),
            "{line}"
        );
        // Stopped now, it says no session waits for it (there never was one).
        agent.signal("TERM");
        assert!(agent.wait_exit().await.success(), "{}", agent.log_text());
        let log = agent.log_text();
        assert!(
            log.contains("stopped before the server gave this agent a session"),
            "{log}"
        );
        assert!(!log.contains("grace period"), "{log}");
    }
}

/// The admin CLI shows what is there, for people and for scripts: users,
/// systems with their agent's state and current session, active grants;
/// and renames a system while its agent stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_lists_users_systems_and_grants_and_renames_a_system() {
    let s = setup().await;
    let json = |args: &[&str]| -> serde_json::Value {
        serde_json::from_str(&s.server.admin(args)).unwrap()
    };

    let v = json(&["system", "list", "--json"]);
    let sys = &v["items"][0];
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(sys["name"], "customer-box");
    assert_eq!(sys["online"], true, "{v}");
    assert_eq!(sys["session"]["id"], s.session.as_str());
    assert_eq!(sys["session"]["status"], "active");
    assert!(
        sys["agent_software"]
            .as_str()
            .unwrap()
            .starts_with("rtunnel-agent/")
    );
    let table = s.server.admin(&["system", "list"]);
    assert!(
        table.starts_with("NAME") && table.contains("customer-box") && table.contains(&s.session),
        "{table}"
    );

    s.server
        .admin(&["user", "add", "olga", "--role", "operator"]);
    s.server
        .admin(&["grant", "olga", "customer-box", "--expires-in", "8h"]);
    let v = json(&["grants", "--json"]);
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["items"][0]["user"], "olga");
    assert_eq!(v["items"][0]["system"], "customer-box");
    assert!(v["items"][0]["expires_at"].is_string(), "{v}");
    assert_eq!(json(&["grants", "--user", "alice", "--json"])["total"], 0);

    let v = json(&["user", "list", "--json"]);
    let names: Vec<_> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "olga"]);
    assert_eq!(v["items"][1]["role"], "operator");

    s.server
        .admin(&["system", "rename", "customer-box", "front-desk"]);
    let v = json(&["system", "list", "--json"]);
    assert_eq!(v["items"][0]["name"], "front-desk");
    assert_eq!(
        v["items"][0]["session"]["id"],
        s.session.as_str(),
        "the agent stays on its session"
    );
    assert_eq!(
        json(&["grants", "--json"])["items"][0]["system"],
        "front-desk"
    );
}

/// The operator's first bytes travel with the stream's header (no round
/// trip), but the server holds them until the connection's access-log
/// entry is written: when the database refuses the entry, the service gets
/// nothing, the operator's connection is closed, and once the database
/// takes entries again the next connection goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_byte_reaches_the_service_before_its_access_log_entry_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let sys = enroll(&server, "customer-box");
    let token = user_with_token(&server, "alice", "admin");
    // A service that keeps whatever reaches it.
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = listener.local_addr().unwrap();
    let kept = received.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    kept.lock().unwrap().extend_from_slice(&buf[..n]);
                    let _ = s.write_all(b"+OK\r\n").await;
                }
            });
        }
    });
    let _agent = start_agent(&server, &sys, &format!("spy={service}"), &[]);
    let session = active_session(&server, &token, &sys.id).await;
    let (_fwd, local) = start_forward(&server, &token, &session, "spy").await;

    // A real database fault, on demand: new access-log entries fail.
    let db = tmp.path().join("data/rtunnel.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_entries BEFORE INSERT ON access_logs \
         BEGIN SELECT RAISE(ABORT, 'the disk is full (test)'); END",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut refused = TcpStream::connect(local).await.unwrap();
    refused.write_all(b"FIRST BYTES\r\n").await.unwrap();
    let mut back = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), refused.read_to_end(&mut back))
        .await
        .expect("the refused connection is closed");
    assert!(ended.is_err() || back.is_empty(), "{back:?}");

    sqlx::query("DROP TRIGGER refuse_entries")
        .execute(&pool)
        .await
        .unwrap();
    let mut allowed = TcpStream::connect(local).await.unwrap();
    allowed.write_all(b"SECOND\r\n").await.unwrap();
    let mut ok = [0u8; 5];
    allowed.read_exact(&mut ok).await.unwrap();
    assert_eq!(&ok, b"+OK\r\n");
    assert_eq!(received.lock().unwrap().as_slice(), b"SECOND\r\n");
    let log = server.proc.log_text();
    assert!(log.contains("cannot write the access log"), "{log}");
}
