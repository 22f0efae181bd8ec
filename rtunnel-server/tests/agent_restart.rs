//! An agent restarted within the grace period gets its session back from
//! its state file (`--state-dir`): stopped with SIGTERM, the session waits
//! in its grace period; started again, the same session is active, so the
//! operators' forwards and links that name it keep working. Without it the
//! session is new, and `forward --system NAME` finds it by itself.

#![allow(clippy::unwrap_used)]

mod support;

use support::*;

async fn session_status(server: &ServerProc, token: &str, id: &str) -> String {
    let (status, v) = api_call(
        server.addr,
        "GET",
        &format!("/api/v1/sessions/{id}"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["status"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_resumes_its_session_from_its_state_file() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let token = user_with_token(&server, "root", "admin");
    let sys = enroll(&server, "restarted");
    let state = tmp.path().join("agent-state");
    let state_arg = state.to_str().unwrap();
    let echo = echo_service().await;
    let services = format!("echo={echo}");
    let mut agent = start_agent(&server, &sys, &services, &["--state-dir", state_arg]);
    let session = active_session(&server, &token, &sys.id).await;
    assert!(state.join("session.json").exists());

    // Stopped as systemd stops it: the session waits for the agent.
    agent.signal("TERM");
    let status = agent.wait_exit().await;
    assert!(status.success(), "SIGTERM is a clean exit: {status:?}");
    let log = agent.log_text();
    assert!(log.contains("SIGTERM"), "{log}");
    wait_for("the session to wait in its grace period", || {
        let server = &server;
        let (token, session) = (token.clone(), session.clone());
        async move {
            (session_status(server, &token, &session).await == "grace_period").then_some(())
        }
    })
    .await;

    // Started again with the same state directory: the same session.
    let again = start_agent(&server, &sys, &services, &["--state-dir", state_arg]);
    wait_for("the agent to resume", || {
        let text = again.log_text();
        async move { text.contains("resumed the session").then_some(()) }
    })
    .await;
    assert_eq!(session_status(&server, &token, &session).await, "active");
    let (_forward, local) = start_forward(&server, &token, &session, "echo").await;
    assert_eq!(echo_through(local, b"still here").await, b"still here");

    // Without the state directory a restart starts a new session.
    drop(again);
    let fresh = start_agent(&server, &sys, &services, &[]);
    wait_for("a new session", || {
        let text = fresh.log_text();
        async move { text.contains("connected to ws:").then_some(()) }
    })
    .await;
    let newer = active_session(&server, &token, &sys.id).await;
    assert_ne!(newer, session);

    // `forward --system` finds the system's current session by itself.
    let (_by_name, local) = start_forward_to_system(&server, &token, "restarted", "echo").await;
    assert_eq!(echo_through(local, b"by name").await, b"by name");
    for (system, code) in [
        ("no-such-box", "no system"),
        ("idle-box", "no active session"),
    ] {
        if system == "idle-box" {
            enroll(&server, system);
        }
        let out = std::process::Command::new(agent_bin())
            .args([
                "forward",
                "--server",
                &server.base_url(),
                "--system",
                system,
            ])
            .args(["--service", "echo", "--listen", "127.0.0.1:0"])
            .env("RTUNNEL_TOKEN", &token)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(code), "{system}: {err}");
    }
}
